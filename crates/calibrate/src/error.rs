use thiserror::Error;

#[derive(Debug, Error)]
pub enum CalibrateError {
    #[error("{file}:{line}: {reason}")]
    Parse {
        file: String,
        line: usize,
        reason: String,
    },
    #[error("{file}: {reason}")]
    Read { file: String, reason: String },
}
