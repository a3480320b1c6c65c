//! Live serving: `switchyard serve` (an OpenAI-compatible frontend and router built on the
//! routing core) and `switchyard worker` (the engine model behind vLLM's OpenAI HTTP API,
//! publishing vLLM-format KV events over ZMQ).
//!
//! * [`worker`]: [`run_worker`] / [`worker::start_worker`].
//! * [`serve`]: [`run_serve`] / [`serve::start_serve`].
//! * [`events`]: ZMQ PUB/SUB transport of KV events and vLLM's replay protocol (codec:
//!   `switchyard_kv::wire`; the replay service itself is `replay_server`); [`kv_stream`]: sequence bookkeeping of one worker's stream.
//! * [`openai`]: request parsing and OpenAI-style errors; [`tokenizer`]: default tokenizer.

pub mod auth;
pub mod events;
pub mod http;
pub mod kv_stream;
pub mod openai;
pub mod pd;
pub mod ratelimit;
mod replay_server;
pub mod tokenizer;
pub mod worker;

pub use switchyard_cluster::RegisterArgs;
pub use worker::{WorkerArgs, run_register, run_worker};
pub mod serve;

pub use serve::{ServeArgs, run_serve};
