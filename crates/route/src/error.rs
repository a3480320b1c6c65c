use thiserror::Error;

/// Errors of the `route` crate.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum RouteError {
    /// The candidate list was empty (no healthy/eligible worker).
    #[error("no candidate worker to route to")]
    NoCandidates,
    /// A ticket that was already finished (or belongs to a removed worker's past).
    #[error("unknown or already finished load ticket")]
    StaleTicket,
    /// A configuration value that cannot work; the message names the field.
    #[error("invalid router config: {0}")]
    InvalidConfig(String),
    /// From the KV layer.
    #[error(transparent)]
    Kv(#[from] switchyard_kv::KvError),
}
