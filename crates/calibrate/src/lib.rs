//! How far the engine model is from real GPUs, measured on data it was not fitted to.
//!
//! The measurements are AIConfigurator's `silicon_sample.csv` (NVIDIA, Apache-2.0; provenance
//! in `data/calibration/README.md`): real serving runs of vLLM, SGLang and TensorRT-LLM with
//! their TTFT and TPOT at one concurrency each. This crate
//!
//! - loads the bundled, normalised copy ([`silicon`]);
//! - splits it by configuration into a training part and a test part that is never fitted on
//!   ([`split`]);
//! - turns each row into an engine configuration and a closed-loop benchmark, runs the engine
//!   model on it in virtual time and compares ([`predict`]);
//! - aggregates absolute percentage errors per (GPU, engine, model) cell ([`report`]).
//!
//! `cargo run --release -p switchyard-calibrate --example report` regenerates the tables of
//! `docs/calibration.md`; `tests/accuracy.rs` holds the test split's errors to recorded bounds.

pub mod gate;
pub mod predict;
pub mod report;
pub mod silicon;
pub mod split;

mod error;

pub use error::CalibrateError;
