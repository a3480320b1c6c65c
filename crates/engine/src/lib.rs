//! A simulated LLM inference engine replica (vLLM-, SGLang- or TensorRT-LLM-like) as a pure
//! state machine: hardware/model catalog, step-time model, continuous-batching scheduler with
//! chunked prefill, and a paged KV cache with prefix caching.
//!
//! No I/O (except reading a user catalog directory at load time), no clock: time is an `f64`
//! of seconds passed in by the caller. Calibration: `docs/calibration.md`.
//!
//! # Driving an engine
//!
//! ```
//! use switchyard_engine::{Catalog, Engine, EngineConfig, Request};
//!
//! let catalog = Catalog::load(None).unwrap(); // built-in files (+ a user dir if given)
//! let cfg: EngineConfig = toml::from_str("gpu = \"H200\"\nmodel = \"Qwen3-32B\"\ntp = 2\n").unwrap();
//! let mut engine = Engine::new(&catalog, &cfg).unwrap();
//! println!("{}", engine.description()); // KV capacity etc.
//!
//! engine
//!     .admit(Request { id: 1, prompt_tokens: 1000, block_hashes: vec![], max_output_tokens: 50, dp_rank: None }, 0.0)
//!     .unwrap();
//! // Run until something visible happens (first token, finish, KV event...) or until the
//! // next external event (an arrival at t = 5.0).
//! let mut now = 0.0;
//! loop {
//!     let adv = engine.advance_until(now, 5.0);
//!     match adv.outcome {
//!         Some(step) => {
//!             now = step.end;
//!             if !step.finished.is_empty() {
//!                 break;
//!             }
//!         }
//!         None => break, // idle, or the next step would start at/after t_limit
//!     }
//! }
//! assert_eq!(engine.stats().finished, 1);
//! ```

pub mod catalog;
pub mod closed_loop;
pub mod config;
mod error;
pub mod model;
pub mod perf;

mod blocks;
mod engine;

pub use catalog::{
    Admission, AllreduceCurve, AttentionFloor, Batching, Catalog, DeviceLimits, EngineDefaults,
    EngineProfile, GemmCurve, GpuSpec, KernelTables, MemoryRule, ModelSpec, MoeCurve,
};
pub use config::{EngineConfig, KvDtype, OutOfBounds, Role, WeightDtype};
pub use engine::{
    AdmitInfo, Advance, Engine, EngineLoad, EngineStats, FinishReason, Finished, KvReserved,
    RankedKvEvent, Request, StepOutcome,
};
pub use error::EngineError;
pub use perf::{BatchShape, PerfModel};
