use thiserror::Error;

/// Errors of the `kv` crate. Bad *events* are never errors (they are counted in
/// [`crate::IndexCounters`] and skipped); these are configuration mistakes.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum KvError {
    /// A block size of zero tokens.
    #[error("block size must be at least 1 token (got {0})")]
    ZeroBlockSize(u32),
    /// An approximate-index setting that cannot work.
    #[error("invalid approximate-index config: {0}")]
    InvalidApproxConfig(&'static str),
}
