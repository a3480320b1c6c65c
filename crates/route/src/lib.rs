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
//!
//! The simulator's loop, end to end:
//!
//! ```
//! use switchyard_kv::{KvEvent, TraceBlockMapper, WorkerKey};
//! use switchyard_route::{Router, RouterConfig};
//!
//! let mut router = Router::new(RouterConfig::default())?; // policy "kv", block size 16
//! let mapper = TraceBlockMapper::new(router.config().block_size)?;
//! let workers: Vec<WorkerKey> = (0..4).map(|i| WorkerKey::new(i, 0)).collect();
//! let mut hashes = Vec::new();
//!
//! // Request 1 (Mooncake row: hash_ids + input_length) -> engine-size block hashes.
//! mapper.map_into(&[7, 8, 9], 1400, &mut hashes);
//! let (decision, ticket) = router.route(&hashes, 1400, &workers, 0.0)?;
//! // ... the simulated engine prefills and publishes what it cached:
//! router.apply_event(decision.worker, &KvEvent::Stored { parent: None, blocks: hashes.clone() });
//! router.first_token(ticket)?; // at the first token
//! router.finish(ticket)?;      // at completion (or cancellation)
//!
//! // Request 2 shares the first two trace blocks: it goes where they are cached.
//! mapper.map_into(&[7, 8, 10], 1500, &mut hashes);
//! let d2 = router.choose(&hashes, 1500, &workers, 1.0)?;
//! assert_eq!(d2.worker, decision.worker);
//! assert_eq!(d2.overlap_blocks(), 64); // 2 × 512 tokens / 16
//!
//! // Disaggregated: a (prefill, decode) pair, with conditional local prefill.
//! let (pair, t) = router.route_pair(&hashes, 1500, &workers[..2], &workers[2..], 2.0)?;
//! if let Some(p) = t.prefill { router.finish(p)?; } // prefill + KV transfer done
//! router.first_token(t.decode)?;
//! router.finish(t.decode)?;
//! # let _ = pair;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

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
