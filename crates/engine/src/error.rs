//! The engine crate's error type.

use thiserror::Error;

/// Everything that can go wrong building or driving an [`crate::Engine`].
#[derive(Debug, Error, Clone, PartialEq)]
pub enum EngineError {
    /// A catalog file could not be parsed or is inconsistent.
    #[error("catalog file {file}: {reason}")]
    Catalog { file: String, reason: String },
    /// A catalog directory could not be read (the only I/O this crate does, at load time).
    #[error("cannot read catalog directory {dir}: {reason}")]
    CatalogDir { dir: String, reason: String },
    /// Unknown GPU / model / engine profile name.
    #[error("unknown {kind} '{name}'; known: {known}")]
    UnknownName {
        kind: &'static str,
        name: String,
        known: String,
    },
    /// The configuration is invalid (bad knob values, unsupported dtype/parallelism...).
    #[error("invalid engine configuration: {0}")]
    InvalidConfig(String),
    /// The model does not fit on the GPUs with this parallelism.
    #[error("does not fit: {0}")]
    DoesNotFit(String),
    /// A request was refused at admission.
    #[error("request {id} rejected: {reason}")]
    Rejected { id: u64, reason: String },
    /// A driver's step budget ran out before the workload finished (e.g. a closed loop that
    /// thrashes on preemption far beyond any real run's length).
    #[error("gave up after {0} engine steps")]
    StepBudget(u64),
    /// The caller referred to a request the engine does not know (or in the wrong state).
    #[error("request {id}: {reason}")]
    BadRequestState { id: u64, reason: String },
}
