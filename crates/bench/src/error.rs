use std::path::PathBuf;

/// Everything that stops a benchmark from starting or from writing its results. Problems of
/// individual requests are not errors: they are recorded per request, counted by kind and
/// the run continues.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("invalid argument: {0}")]
    Arg(String),
    #[error(transparent)]
    Trace(#[from] switchyard_trace::TraceError),
    #[error(transparent)]
    Tokenizer(#[from] switchyard_tokenize::TokenizeError),
    #[error("{path}: {message}")]
    Dataset { path: PathBuf, message: String },
    #[error(
        "cannot reach {url}: {cause}\n  Is the server running and listening there? Use --wait-ready SECS to wait for it to come up."
    )]
    Unreachable { url: String, cause: String },
    #[error("{url} is not ready: {cause}")]
    NotReady { url: String, cause: String },
    #[error("{0}")]
    Model(String),
    #[error("cannot start the runtime: {0}")]
    Runtime(std::io::Error),
    #[error(transparent)]
    Metrics(#[from] switchyard_metrics::MetricsError),
    #[error("{path}: cannot write: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}
