//! Routing policies, load tracking and prefill/decode pair selection. Pure: no I/O, no clock
//! (time is a parameter), seeded randomness — the simulator and the live server make the same
//! decision for the same inputs.
//!
//! Entry points:
//! * [`Router`]: the single-threaded core (KV index + load tracker + policy). The simulator
//!   drives it with the explicit [`Ticket`] API.
//! * [`SharedRouter`]: `Arc<Mutex<Router>>` handing out [`RouteGuard`]s for the live server.
//! * [`Policy`] and its implementations, usable on their own over a `&[Candidate]`.
//! * [`RouterConfig`]: every knob, parseable from a TOML `[router]` table.

pub mod config;
pub mod disagg;
mod error;
pub mod load;
pub mod policy;
mod router;

pub use config::{KvFeed, PolicyKind, RouterConfig};
pub use disagg::{PairDecision, PairSelector, PrefillPlacement};
pub use error::RouteError;
pub use load::{EngineLoad, LoadSnapshot, LoadTracker, Ticket};
pub use policy::{
    Candidate, Decision, KvAware, LeastLoad, Policy, PowerOfTwo, RandomPolicy, Reason, RequestInfo,
    RoundRobin, Scored, build_policy, kv_cost,
};
pub use router::{PairGuards, PairTickets, RouteGuard, Router, SharedRouter};
