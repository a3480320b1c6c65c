//! Discrete-event simulation of an LLM serving deployment in virtual time.
//!
//! A trace's requests arrive at their timestamps; the routing core (`switchyard-route`, the
//! code `switchyard serve` runs) picks a worker — or a prefill/decode pair — from the same
//! prefix index and load bookkeeping the live router keeps; simulated engines
//! (`switchyard-engine`) run continuous batching step by step; for disaggregation the prompt's
//! KV moves over shared NIC links ([`network`]). Every request yields a
//! [`switchyard_metrics::RequestRecord`], so `lab` and `bench` share one set of definitions.
//!
//! Time advances in epochs between arrivals. Within an epoch engines never interact except
//! through KV transfers, which are processed in time order: prefill-capable engines first,
//! then transfer completions, then decode engines, each engine running every step that starts
//! before the epoch ends. Router-visible effects (first tokens, completions, KV events after
//! their lag) queue in a time-ordered inbox applied just before each routing decision, so a
//! decision at time `t` sees exactly what had happened by `t`.

mod blockid;
pub mod config;
pub mod network;
mod sim;

pub use config::{Deployment, EventsConfig, Group, NetworkConfig, TransferMode};
pub use sim::{RoutingReport, RunOptions, SimOutput, WorkerReport, simulate};

/// Everything that can stop a simulation, each naming its source.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error("{file}: {message}")]
    Config { file: String, message: String },
    /// A group's engine cannot be built. `file` is the deployment file; the engine's error is
    /// part of this message, not a separate cause (so `{:#}` prints it once).
    #[error("{file}: [[group]] #{group} ({role}): {error}")]
    Engine {
        file: String,
        group: usize,
        role: String,
        error: switchyard_engine::EngineError,
    },
    #[error("{file}: {message}")]
    Invalid { file: String, message: String },
    /// The run would need more memory than there is (estimated before allocating).
    #[error("{file}: {message}")]
    TooLarge { file: String, message: String },
    #[error("{0}")]
    Route(#[from] switchyard_route::RouteError),
    #[error("{0}")]
    Kv(#[from] switchyard_kv::KvError),
}
