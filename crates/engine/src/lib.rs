//! A simulated LLM inference engine replica (vLLM-, SGLang- or TensorRT-LLM-like) as a pure
//! state machine: hardware/model catalog, step-time model, continuous-batching scheduler with
//! chunked prefill, and a paged KV cache with prefix caching.
//!
//! No I/O (except reading a user catalog directory at load time), no clock: time is an `f64`
//! of seconds passed in by the caller.

pub mod catalog;
pub mod config;
mod error;
pub mod model;
pub mod perf;

pub use catalog::{Admission, Batching, Catalog, EngineProfile, GpuSpec, ModelSpec};
pub use config::{EngineConfig, KvDtype, Role, WeightDtype};
pub use error::EngineError;
pub use perf::{BatchShape, PerfModel};

mod blocks;
pub mod closed_loop;
mod engine;
pub use engine::{
    AdmitInfo, Advance, Engine, EngineLoad, EngineStats, FinishReason, Finished, KvReserved,
    RankedKvEvent, Request, StepOutcome,
};
