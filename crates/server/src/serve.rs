//! `switchyard serve`: OpenAI-compatible frontend + router in front of engine workers
//! (real vLLM/SGLang or `switchyard worker`).
//!
//! Request path: validate -> token ids (given, or the default tokenizer) -> chained block
//! hashes -> the routing core picks a worker -> the body is forwarded unchanged and the
//! upstream response streamed back chunk by chunk. Failures before the first byte (connection
//! refused, 5xx) are retried on another worker; after it, the client gets an SSE error event.
//! Dropping the client connection drops the upstream one, which cancels the engine request.
//!
//! KV path: one task per worker subscribes to its ZMQ KV events, decodes both vLLM encodings,
//! recomputes the router's hashes from `token_ids`, and feeds the index. Where the worker
//! offers vLLM's replay socket, missed batches (a sequence gap, a reconnect, this frontend
//! starting after the worker) are fetched from it and applied in order, and an engine restart
//! is recognised; without replay, or when its buffer no longer reaches back, that worker's
//! entries are cleared and rebuilt from new events (`kv_stream` has the rules).
//!
//! Cluster path (optional, `switchyard-cluster`): `--discovery` watches worker records in etcd
//! and adds/removes workers as their leases come and go; `--nats` shares this replica's
//! routing predictions and in-flight counts with the other replicas and folds theirs into the
//! router (see `docs/cluster.md` for the consistency model).

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::from_fn_with_state;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use clap::Args;
use futures_util::{Stream, StreamExt, stream};
use rustc_hash::FxHashMap;
use serde::Deserialize;
use serde_json::{Value, json};
use switchyard_cluster::{
    DEFAULT_PREFIX, DEFAULT_SUBJECT_PREFIX, Discovery, DiscoveryConfig, Fanout, FanoutConfig,
    LinkHealth, LinkState, MembershipEvent, Prediction, default_replica_id,
};
use switchyard_engine::Role;
use switchyard_kv::wire::{WireEvent, decode_batch};
use switchyard_kv::{BlockHasher, EngineHashTranslator, KvEvent, WorkerKey};
use switchyard_route::{
    Decision, KvFeed, PairDecision, PairGuards, PolicyKind, RouteGuard, Router as Core,
    RouterConfig, SharedRouter,
};
use tokio::sync::{Notify, mpsc, watch};

use crate::auth::{KeyId, Keys, Secret, admin_only, require_key};
use crate::events::{AbortOnDrop, request_replay, split_frames, subscribe_once_notify};
use crate::http::{ConnLimits, Slot, hold_until_sent};
use crate::kv_stream::{Batch, Cursor, IndexState, Live, Plan, fingerprint};
use crate::openai::{ApiError, Endpoint, parse_request, read_body};
use crate::tokenizer::Tokenization;
use crate::worker::{WorkerArgs, WorkerHandle, method_not_allowed, not_found, start_worker};

/// Run the OpenAI-compatible frontend and router.
#[derive(Args, Clone, Debug)]
pub struct ServeArgs {
    /// Address to listen on.
    #[arg(long, default_value = "0.0.0.0")]
    pub host: String,
    /// HTTP port.
    #[arg(long, default_value_t = 8000)]
    pub port: u16,
    /// An upstream worker:
    /// `URL[,kv-events=tcp://HOST:PORT][,replay=tcp://HOST:PORT][,role=aggregated|prefill|decode][,dp=N]`.
    /// `dp=N`: the engine runs N attention-DP ranks; the router picks (worker, rank) as `lab`
    /// does and sends the rank as `X-data-parallel-rank` (vLLM, SGLang).
    /// `replay=` is the engine's KV-event replay socket (vLLM's `replay_endpoint`): missed
    /// events are fetched from it instead of forgetting the worker's cache. Repeatable.
    #[arg(long = "worker", value_name = "SPEC")]
    pub workers: Vec<String>,
    /// Deployment file (the simulator's TOML): starts the simulated workers it describes
    /// in-process on loopback ports, and takes its `[router]` table.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Routing policy: round-robin, random, least-load, power-of-two, kv (overrides the file).
    #[arg(long)]
    pub router: Option<String>,
    /// Where cache knowledge comes from: `events` (workers' ZMQ streams), `approximate` (the
    /// router's own decisions, for engines without events) or `hybrid` (overrides the file).
    #[arg(long)]
    pub kv_feed: Option<String>,
    /// KV block size in tokens; must equal the engines' (default: the file's, else 16).
    #[arg(long)]
    pub block_size: Option<u32>,
    /// Speedup of the simulated workers started from `--config`.
    #[arg(long, default_value_t = 1.0)]
    pub speedup: f64,
    /// Seconds between worker health checks.
    #[arg(long, default_value_t = 2.0)]
    pub health_interval: f64,
    /// Attempts per request (other workers are tried when one fails before the first byte).
    #[arg(long, default_value_t = 3)]
    pub max_attempts: u32,
    /// Largest accepted request body, bytes.
    #[arg(long, default_value_t = 16 << 20)]
    pub max_body_bytes: usize,
    /// Seconds a worker may take to start its answer (response headers; for a non-streamed
    /// request that is the whole generation). A worker that misses it counts as failed and the
    /// request is retried on another one, as before the first byte.
    #[arg(long, default_value_t = DEFAULT_FIRST_BYTE_TIMEOUT_S, value_name = "SECS")]
    pub upstream_first_byte_timeout: f64,
    /// Seconds a started answer may go without a byte from the worker; then the client gets
    /// an error (an SSE error event when streaming) and the worker is marked down until its
    /// next successful health check.
    #[arg(long, default_value_t = DEFAULT_IDLE_TIMEOUT_S, value_name = "SECS")]
    pub upstream_idle_timeout: f64,
    /// Prefill/decode protocol of the workers: `vllm` (prefill first with
    /// `kv_transfer_params`, then decode with the returned params) or `sglang` (both at once
    /// with `bootstrap_host`/`bootstrap_port`/`bootstrap_room`).
    #[arg(long, value_enum, default_value_t = PdProtocol::Vllm)]
    pub pd_protocol: PdProtocol,
    /// Discover workers registered in etcd (`etcd://HOST:2379[,HOST:2379...]`, written by
    /// `switchyard worker --register` or the `switchyard register` sidecar): they join and
    /// leave routing live, alongside `--worker` and `POST /v1/workers`.
    #[arg(long, value_name = "etcd://HOST:PORT")]
    pub discovery: Option<String>,
    /// Key prefix of worker records in etcd.
    #[arg(long, default_value = DEFAULT_PREFIX)]
    pub discovery_prefix: String,
    /// Share routing state with the other `serve` replicas of this fleet over NATS
    /// (`nats://HOST:4222`): approximate-mode predictions and in-flight request counts.
    #[arg(long, value_name = "nats://HOST:PORT")]
    pub nats: Option<String>,
    /// NATS subject prefix (replicas sharing one fleet use the same).
    #[arg(long, default_value = DEFAULT_SUBJECT_PREFIX)]
    pub nats_subject_prefix: String,
    /// This replica's id on NATS, unique per replica, `[A-Za-z0-9_-]` (default:
    /// `<hostname>-<port>`; the pod name on Kubernetes).
    #[arg(long)]
    pub replica_id: Option<String>,
    /// With `--discovery` or `--nats`: seconds a starting replica waits at most to be warm
    /// (membership read from etcd and subscribed to every worker's KV events); `/ready`
    /// answers 503 until then.
    #[arg(long, default_value_t = 5.0)]
    pub warmup_timeout: f64,
    /// Poll every worker's Prometheus `/metrics` this often (seconds) and route on the load
    /// the engine itself reports (running, waiting, KV blocks in use; vLLM, SGLang and
    /// `switchyard worker` names), plus what was dispatched since. Makes the requests of every
    /// frontend (and of clients bypassing them) visible. 0: off (own bookkeeping only).
    #[arg(long, default_value_t = 0.0, value_name = "SECS")]
    pub engine_metrics_interval: f64,
    /// Tokenizer for text and chat prompts: a Hugging Face `tokenizer.json` or a model
    /// directory (default: the built-in o200k_base). Use the engines' own so the router's
    /// block hashes match what they cache.
    #[arg(long, value_name = "PATH")]
    pub tokenizer: Option<PathBuf>,
    /// Chat template: a `.jinja` file, a `tokenizer_config.json` or a model directory
    /// (default: the one next to `--tokenizer`, else ChatML).
    #[arg(long, value_name = "PATH")]
    pub chat_template: Option<PathBuf>,
    /// API key clients must send as `Authorization: Bearer KEY` on /v1/models, completions
    /// and chat (repeatable, or comma-separated in $SWITCHYARD_API_KEY). Without any key the
    /// API is open. /health and /ready never need one.
    #[arg(
        long = "api-key",
        value_name = "KEY",
        env = "SWITCHYARD_API_KEY",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub api_keys: Vec<Secret>,
    /// File of client API keys, one per line (`#` comments), in addition to --api-key.
    #[arg(long, value_name = "FILE")]
    pub api_key_file: Option<PathBuf>,
    /// Requests per minute allowed per client API key (a token bucket: bursts up to a
    /// minute's allowance); beyond, 429 with `Retry-After`. Needs --api-key. 0: unlimited.
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub rate_limit_rpm: u32,
    /// Tokens per minute allowed per client API key: prompt tokens (estimated) plus the
    /// requested `max_tokens`, charged when the request is admitted. 0: unlimited.
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub rate_limit_tpm: u64,
    /// Require a client API key on /metrics too.
    #[arg(long)]
    pub metrics_need_key: bool,
    /// Key for the admin API (`/v1/workers`: list, add, remove workers), from any address.
    /// Without one, the admin API answers loopback clients only. Repeatable, or
    /// comma-separated in $SWITCHYARD_ADMIN_KEY.
    #[arg(
        long = "admin-key",
        value_name = "KEY",
        env = "SWITCHYARD_ADMIN_KEY",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub admin_keys: Vec<Secret>,
    /// Most client connections open at once (more are closed on accept). 0: the open-file
    /// limit (raised to its hard limit at start) minus a quarter for upstream connections.
    #[arg(long, default_value_t = 0)]
    pub max_connections: usize,
    /// Seconds a client connection may take to send a request's headers, counted from when
    /// the server starts waiting for them (so also the idle time allowed between keep-alive
    /// requests).
    #[arg(long, default_value_t = DEFAULT_HEADER_TIMEOUT_S, value_name = "SECS")]
    pub header_timeout: f64,
    /// Most generation requests in flight through this frontend; beyond it clients get 429
    /// with `Retry-After` at once instead of queueing.
    #[arg(long, default_value_t = DEFAULT_MAX_INFLIGHT)]
    pub max_inflight: u64,
    /// Most requests in flight on one worker; a full worker is not a candidate, and when
    /// every worker is full clients get 429 with `Retry-After`. Set it near what a worker
    /// serves well (its `max_num_seqs` plus a short queue) to keep admitted requests fast
    /// under overload.
    #[arg(long, default_value_t = DEFAULT_MAX_INFLIGHT_PER_WORKER)]
    pub max_inflight_per_worker: u64,
    /// Tell clients which worker served them by URL (`x-switchyard-worker`,
    /// `x-switchyard-prefill-worker` headers and error messages). Off by default: internal
    /// addresses stay internal and workers are named by id (`x-switchyard-worker-id`).
    #[arg(long)]
    pub expose_worker_urls: bool,
    /// On SIGTERM/Ctrl-C: seconds to let requests in flight finish (readiness fails and the
    /// listener closes first). A second signal exits at once.
    #[arg(long, default_value_t = DEFAULT_DRAIN_TIMEOUT_S, value_name = "SECS")]
    pub drain_timeout: f64,
    /// Most workers the registry holds (flags, admin API and discovery together); a
    /// registration beyond it is refused.
    #[arg(long, default_value_t = DEFAULT_MAX_WORKERS)]
    pub max_workers: usize,
    /// Seconds a worker added through the admin API may stay unhealthy (or never become
    /// healthy) before it is dropped from the registry. Workers from --worker flags and
    /// --config stay (they are the deployment); discovered ones follow their etcd lease.
    #[arg(long, default_value_t = DEFAULT_DROP_UNHEALTHY_S, value_name = "SECS")]
    pub drop_unhealthy_after: f64,
    /// Key sent to the workers as `Authorization: Bearer KEY` (their `--api-key`), on
    /// requests and health checks.
    #[arg(
        long,
        value_name = "KEY",
        env = "SWITCHYARD_UPSTREAM_API_KEY",
        hide_env_values = true
    )]
    pub upstream_api_key: Option<Secret>,
}

/// A positive, finite number of seconds from a flag (at most a day).
fn timeout_arg(flag: &str, secs: f64) -> anyhow::Result<Duration> {
    anyhow::ensure!(
        secs > 0.0 && secs <= 86_400.0,
        "{flag} must be between 0 and 86400 seconds, got {secs}"
    );
    Ok(Duration::from_secs_f64(secs))
}

/// Default of `--header-timeout` (serve and worker).
pub const DEFAULT_HEADER_TIMEOUT_S: f64 = 30.0;
/// Default of `--max-inflight`.
pub const DEFAULT_MAX_INFLIGHT: u64 = 4096;
/// Default of `--max-inflight-per-worker` (vLLM's `max_num_seqs` on large GPUs).
pub const DEFAULT_MAX_INFLIGHT_PER_WORKER: u64 = 1024;

/// Default of `--drain-timeout` (serve and worker): Kubernetes' default grace period is 30 s.
pub const DEFAULT_DRAIN_TIMEOUT_S: f64 = 25.0;

/// Default of `--max-workers`.
pub const DEFAULT_MAX_WORKERS: usize = 1024;
/// Default of `--drop-unhealthy-after`.
pub const DEFAULT_DROP_UNHEALTHY_S: f64 = 600.0;

/// Default of `--upstream-first-byte-timeout`: long enough for a non-streamed generation of
/// several thousand tokens.
pub const DEFAULT_FIRST_BYTE_TIMEOUT_S: f64 = 300.0;
/// Default of `--upstream-idle-timeout`: far above any step time, even under preemption.
pub const DEFAULT_IDLE_TIMEOUT_S: f64 = 60.0;

/// How a disaggregated request reaches its prefill and decode workers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum PdProtocol {
    /// vLLM (NIXL connector): sequential, `kv_transfer_params` handed from prefill to decode.
    #[default]
    Vllm,
    /// SGLang: both requests at once, joined by a random `bootstrap_room`.
    Sglang,
}

impl Default for ServeArgs {
    fn default() -> Self {
        Self {
            host: "127.0.0.1".into(),
            port: 0,
            workers: vec![],
            config: None,
            router: None,
            kv_feed: None,
            block_size: None,
            speedup: 1.0,
            health_interval: 2.0,
            max_attempts: 3,
            max_body_bytes: 16 << 20,
            upstream_first_byte_timeout: DEFAULT_FIRST_BYTE_TIMEOUT_S,
            upstream_idle_timeout: DEFAULT_IDLE_TIMEOUT_S,
            pd_protocol: PdProtocol::Vllm,
            discovery: None,
            discovery_prefix: DEFAULT_PREFIX.to_string(),
            nats: None,
            nats_subject_prefix: DEFAULT_SUBJECT_PREFIX.to_string(),
            replica_id: None,
            warmup_timeout: 5.0,
            engine_metrics_interval: 0.0,
            tokenizer: None,
            chat_template: None,
            api_keys: vec![],
            api_key_file: None,
            metrics_need_key: false,
            rate_limit_rpm: 0,
            rate_limit_tpm: 0,
            admin_keys: vec![],
            upstream_api_key: None,
            max_workers: DEFAULT_MAX_WORKERS,
            drain_timeout: DEFAULT_DRAIN_TIMEOUT_S,
            expose_worker_urls: false,
            max_connections: 0,
            header_timeout: DEFAULT_HEADER_TIMEOUT_S,
            max_inflight: DEFAULT_MAX_INFLIGHT,
            max_inflight_per_worker: DEFAULT_MAX_INFLIGHT_PER_WORKER,
            drop_unhealthy_after: DEFAULT_DROP_UNHEALTHY_S,
        }
    }
}

/// A parsed `--worker` spec.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct WorkerSpec {
    pub url: String,
    #[serde(default)]
    pub kv_events: Option<String>,
    /// vLLM's KV-event replay socket (ZMQ ROUTER), for catching up after missed events.
    #[serde(default, alias = "replay")]
    pub kv_events_replay: Option<String>,
    #[serde(default = "default_role")]
    pub role: String,
    /// SGLang prefill workers: the bootstrap port (default: the URL's port, which is where a
    /// simulated worker answers; real SGLang servers use 8998 unless configured otherwise).
    #[serde(default)]
    pub bootstrap_port: Option<u16>,
    /// Data-parallel (attention-DP) ranks behind this URL: the router chooses a rank and
    /// sends it with the request (`X-data-parallel-rank`, as vLLM and SGLang accept it).
    #[serde(default, alias = "dp")]
    pub dp_size: Option<u32>,
}

fn default_role() -> String {
    "aggregated".into()
}

impl std::str::FromStr for WorkerSpec {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let mut parts = s.split(',');
        let url = parts.next().unwrap_or_default().trim().to_string();
        let mut spec = WorkerSpec {
            url,
            kv_events: None,
            kv_events_replay: None,
            role: default_role(),
            bootstrap_port: None,
            dp_size: None,
        };
        for p in parts {
            match p.split_once('=') {
                Some(("kv-events" | "kv_events", v)) => spec.kv_events = Some(v.to_string()),
                Some(("replay" | "kv-events-replay" | "kv_events_replay", v)) => {
                    spec.kv_events_replay = Some(v.to_string());
                }
                Some(("role", v)) => spec.role = v.to_string(),
                Some(("dp" | "dp-size" | "dp_size", v)) => {
                    spec.dp_size = Some(
                        v.parse()
                            .map_err(|_| format!("dp={v:?} is not a number of ranks"))?,
                    );
                }
                Some(("bootstrap-port" | "bootstrap_port", v)) => {
                    spec.bootstrap_port = Some(
                        v.parse()
                            .map_err(|_| format!("bootstrap-port={v:?} is not a port number"))?,
                    );
                }
                _ => {
                    return Err(format!(
                        "bad worker option {p:?} in {s:?} (expected kv-events=tcp://HOST:PORT, replay=tcp://HOST:PORT, role=..., dp=N or bootstrap-port=N)"
                    ));
                }
            }
        }
        spec.validate()?;
        Ok(spec)
    }
}

impl WorkerSpec {
    fn validate(&mut self) -> Result<(), String> {
        self.url = self.url.trim_end_matches('/').to_string();
        if !(self.url.starts_with("http://") || self.url.starts_with("https://")) {
            return Err(format!(
                "worker URL must start with http:// or https:// (got {:?})",
                self.url
            ));
        }
        if self.url.len() > 2048 {
            return Err("worker URL is longer than 2048 bytes".into());
        }
        let u = reqwest::Url::parse(&self.url)
            .map_err(|e| format!("worker URL {:?} is not a URL: {e}", self.url))?;
        if u.host_str().is_none_or(str::is_empty)
            || !u.username().is_empty()
            || u.password().is_some()
            || u.query().is_some()
            || u.fragment().is_some()
        {
            return Err(format!(
                "worker URL {:?} must be scheme://host[:port][/path], without credentials, query or fragment",
                self.url
            ));
        }
        if self.dp_size.is_some_and(|d| d == 0 || d > MAX_DP_RANKS) {
            return Err(format!(
                "worker {}: dp must be between 1 and {MAX_DP_RANKS}",
                self.url
            ));
        }
        if !matches!(self.role.as_str(), "aggregated" | "prefill" | "decode") {
            return Err(format!(
                "unknown role {:?} (aggregated, prefill or decode)",
                self.role
            ));
        }
        for (name, ep) in [
            ("kv-events", &self.kv_events),
            ("replay", &self.kv_events_replay),
        ] {
            if let Some(ep) = ep
                && !ep.starts_with("tcp://")
            {
                return Err(format!(
                    "{name} endpoint must be tcp://HOST:PORT (got {ep:?})"
                ));
            }
        }
        if self.kv_events_replay.is_some() && self.kv_events.is_none() {
            return Err(format!(
                "worker {}: replay= needs kv-events= (replay recovers that event stream)",
                self.url
            ));
        }
        Ok(())
    }
}

fn role_name(r: Role) -> &'static str {
    match r {
        Role::Aggregated => "aggregated",
        Role::Prefill => "prefill",
        Role::Decode => "decode",
    }
}

/// Blocking entry point for the CLI: run until Ctrl-C.
pub fn run_serve(args: ServeArgs) -> anyhow::Result<()> {
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async move {
        let mut h = start_serve(&args).await?;
        eprintln!(
            "switchyard serve: http://{} ({} workers, policy {})",
            h.addr,
            h.state.workers.read().map(|w| w.len()).unwrap_or(0),
            h.state.policy
        );
        for w in &h.local_workers {
            eprintln!(
                "  simulated {} worker {} ({}), KV events {}",
                role_name(w.role),
                w.url(),
                w.model,
                w.kv_events.as_deref().unwrap_or("off")
            );
        }
        if let Some(d) = &args.discovery {
            eprintln!(
                "  discovering workers in etcd {d} under {}",
                args.discovery_prefix
            );
        }
        if let Some(f) = &h.state.cluster.fanout {
            eprintln!(
                "  sharing routing state over NATS {} as replica {}",
                args.nats.as_deref().unwrap_or(""),
                f.replica_id()
            );
        }
        eprintln!(
            "  limits: {} client connections, {} s for headers/idle keep-alive, {} requests in flight ({} per worker)",
            h.limits.max_connections,
            h.limits.header_timeout.as_secs_f64(),
            args.max_inflight,
            args.max_inflight_per_worker
        );
        shutdown_signal().await;
        let timeout = timeout_arg("--drain-timeout", args.drain_timeout)?;
        eprintln!(
            "switchyard serve: draining ({} in flight, up to {} s; signal again to exit now)",
            h.inflight(),
            args.drain_timeout
        );
        tokio::select! {
            done = h.drain(timeout) => {
                if !done {
                    eprintln!("switchyard serve: drain timeout; exiting with requests in flight");
                }
            }
            _ = shutdown_signal() => eprintln!("switchyard serve: second signal; exiting now"),
        }
        Ok(())
    })
}

/// `--tokenizer` / `--chat-template` (the built-in o200k_base and ChatML without them).
pub(crate) fn load_tokenization(
    tokenizer: Option<&std::path::Path>,
    chat_template: Option<&std::path::Path>,
) -> anyhow::Result<Tokenization> {
    Tokenization::load(tokenizer, chat_template)
        .map_err(|e| anyhow::anyhow!("--tokenizer/--chat-template: {e}"))
}

/// Ctrl-C or SIGTERM (what Kubernetes sends).
pub(crate) async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}

/// A running frontend.
pub struct ServeHandle {
    pub addr: SocketAddr,
    /// The client connection limits in force (resolved defaults).
    pub limits: ConnLimits,
    shutdown: watch::Sender<bool>,
    /// Simulated workers started from a deployment file.
    pub local_workers: Vec<WorkerHandle>,
    state: Arc<ServeState>,
    server: tokio::task::JoinHandle<()>,
    /// Discovery watch and prediction intake (they own the etcd watch and the NATS stream).
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl ServeHandle {
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Graceful shutdown: `/ready` turns 503 at once, the listener closes, requests in flight
    /// finish (up to `timeout`); then background tasks stop. Returns whether everything in
    /// flight finished in time.
    pub async fn drain(&mut self, timeout: Duration) -> bool {
        self.state.draining.store(true, Ordering::Relaxed);
        let _ = self.shutdown.send(true);
        let done = tokio::time::timeout(timeout, &mut self.server)
            .await
            .is_ok();
        for w in &mut self.local_workers {
            w.drain(timeout).await;
        }
        done
    }

    /// Requests in flight through this frontend.
    pub fn inflight(&self) -> u64 {
        self.state.inflight.load(Ordering::Relaxed)
    }

    /// The replica id used on NATS (with `--nats`).
    pub fn replica_id(&self) -> Option<&str> {
        self.state.cluster.fanout.as_ref().map(|f| f.replica_id())
    }
}

impl Drop for ServeHandle {
    fn drop(&mut self) {
        self.server.abort();
        for t in &self.tasks {
            t.abort();
        }
        if let Ok(ws) = self.state.workers.read() {
            for w in ws.iter() {
                w.stop();
            }
        }
    }
}

/// Start the frontend (and any simulated workers of `--config`) on the current runtime.
pub async fn start_serve(args: &ServeArgs) -> anyhow::Result<ServeHandle> {
    let mut specs: Vec<WorkerSpec> = Vec::new();
    for w in &args.workers {
        specs.push(
            w.parse()
                .map_err(|e: String| anyhow::anyhow!("--worker: {e}"))?,
        );
    }
    let mut router_cfg = RouterConfig::default();
    let mut local = Vec::new();
    if let Some(path) = &args.config {
        let dep = switchyard_sim::Deployment::load(path)?;
        router_cfg = dep.router.clone();
        if dep.network.transfer == switchyard_sim::TransferMode::Layerwise {
            eprintln!(
                "warning: {}: transfer = \"layerwise\" is modelled by `lab` only; the live workers transfer after the prefill",
                path.display()
            );
        }
        for g in &dep.groups {
            for _ in 0..g.count {
                let wargs = WorkerArgs {
                    host: "127.0.0.1".into(),
                    port: 0,
                    speedup: args.speedup,
                    kv_events: Some("tcp://127.0.0.1:0".into()),
                    kv_events_replay: Some("tcp://127.0.0.1:0".into()),
                    // This frontend lives and dies with these workers: replay only fills
                    // gaps, so a short buffer bounds the memory of many in-process workers.
                    kv_events_buffer: LOCAL_REPLAY_BUFFER,
                    nic_gb_s: dep.network.nic_gb_s,
                    kv_link_efficiency: dep.network.efficiency,
                    kv_setup_ms: dep.network.setup_ms,
                    tokenizer: args.tokenizer.clone(),
                    chat_template: args.chat_template.clone(),
                    ..WorkerArgs::default()
                };
                let h = start_worker(&wargs, g.engine.clone()).await?;
                specs.push(WorkerSpec {
                    url: h.url(),
                    kv_events: h.kv_events.clone(),
                    kv_events_replay: h.kv_events_replay.clone(),
                    role: role_name(g.engine.role).into(),
                    bootstrap_port: None,
                    dp_size: Some(g.engine.dp),
                });
                local.push(h);
            }
        }
    }
    if let Some(p) = &args.router {
        router_cfg.policy = p.parse::<PolicyKind>()?;
    }
    let has_pd = specs.iter().any(|s| s.role != "aggregated");
    if has_pd && router_cfg.policy != PolicyKind::Kv {
        // Said once, loudly: the (prefill, decode) pair is always chosen cache-aware, as in
        // `lab`; the policy only applies to aggregated deployments.
        eprintln!(
            "warning: router policy {:?} does not apply to a disaggregated deployment: prefill/decode pairs are chosen KV-aware (as `lab` does)",
            format!("{:?}", router_cfg.policy).to_lowercase()
        );
    }
    if let Some(f) = &args.kv_feed {
        router_cfg.kv_feed = serde_json::from_value(Value::String(f.clone())).map_err(|_| {
            anyhow::anyhow!("--kv-feed {f:?}: expected events, approximate or hybrid")
        })?;
    }
    if let Some(bs) = args.block_size {
        router_cfg.block_size = bs;
    }
    anyhow::ensure!(args.max_attempts >= 1, "--max-attempts must be at least 1");
    anyhow::ensure!(
        args.warmup_timeout >= 0.0 && args.warmup_timeout.is_finite(),
        "--warmup-timeout must be >= 0 seconds"
    );
    let discovery_cfg = match &args.discovery {
        Some(url) => {
            let mut c =
                DiscoveryConfig::from_url(url).map_err(|e| anyhow::anyhow!("--discovery: {e}"))?;
            c.prefix = args.discovery_prefix.clone();
            Some(c)
        }
        None => None,
    };
    anyhow::ensure!(
        args.health_interval > 0.0 && args.health_interval.is_finite(),
        "--health-interval must be positive"
    );
    let hasher = BlockHasher::new(router_cfg.block_size)?;
    // Load the default tokenizer now (~0.3 s), not on the first request.
    tokio::task::spawn_blocking(|| {
        let _ = crate::tokenizer::default_bpe();
    });
    let tokenization = load_tokenization(args.tokenizer.as_deref(), args.chat_template.as_deref())?;
    let core = Core::new(router_cfg.clone())?;
    let policy = core.policy_name();
    let listener = tokio::net::TcpListener::bind((args.host.as_str(), args.port))
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {}:{}: {e}", args.host, args.port))?;
    let addr = listener.local_addr()?;
    // Connects in the background: a NATS server that is down now is retried.
    let (fanout, predictions) = match &args.nats {
        Some(url) => {
            let id = args
                .replica_id
                .clone()
                .unwrap_or_else(|| default_replica_id(addr.port()));
            let mut c = FanoutConfig::new(url, &id);
            c.subject_prefix = args.nats_subject_prefix.clone();
            let mut f = Fanout::connect_with(c)
                .await
                .map_err(|e| anyhow::anyhow!("--nats: {e}"))?;
            let rx = f.take_predictions();
            (Some(Arc::new(f)), rx)
        }
        None => (None, None),
    };
    let discovery = match discovery_cfg {
        Some(c) => Some(Discovery::watch(c).map_err(|e| anyhow::anyhow!("--discovery: {e}"))?),
        None => None,
    };
    let clustered = fanout.is_some() || discovery.is_some();
    let client_keys = Keys::load(&args.api_keys, args.api_key_file.as_deref())?;
    anyhow::ensure!(
        (args.rate_limit_rpm == 0 && args.rate_limit_tpm == 0) || !client_keys.is_empty(),
        "--rate-limit-rpm/--rate-limit-tpm are per API key: give --api-key (or --api-key-file) too"
    );
    let admin_keys = Keys::load(&args.admin_keys, None)?;
    let upstream_auth =
        crate::auth::upstream_header(args.upstream_api_key.as_ref()).unwrap_or_default();
    let state = Arc::new(ServeState {
        workers: RwLock::new(Vec::new()),
        next_id: AtomicU64::new(0),
        router: SharedRouter::new(core),
        hasher,
        client: reqwest::Client::builder()
            .default_headers(upstream_auth.clone())
            .connect_timeout(Duration::from_secs(2))
            .pool_max_idle_per_host(256)
            .tcp_nodelay(true)
            .build()?,
        // A fresh connection per probe: a worker that stopped accepting (wedged, out of file
        // descriptors) must fail its check, not pass on an old pooled connection.
        probe: reqwest::Client::builder()
            .default_headers(upstream_auth)
            .timeout(Duration::from_secs(2))
            .pool_max_idle_per_host(0)
            .build()?,
        policy,
        metrics: Metrics::default(),
        t0: Instant::now(),
        max_attempts: args.max_attempts,
        max_body: args.max_body_bytes,
        first_byte_timeout: timeout_arg(
            "--upstream-first-byte-timeout",
            args.upstream_first_byte_timeout,
        )?,
        idle_timeout: timeout_arg("--upstream-idle-timeout", args.upstream_idle_timeout)?,
        draining: AtomicBool::new(false),
        expose_urls: args.expose_worker_urls,
        needs_tokens: router_cfg.policy == PolicyKind::Kv,
        rate_limits: Mutex::new(crate::ratelimit::RateLimiter::new(
            crate::ratelimit::Limits {
                requests_per_min: (args.rate_limit_rpm > 0).then_some(args.rate_limit_rpm),
                tokens_per_min: (args.rate_limit_tpm > 0).then_some(args.rate_limit_tpm),
            },
        )),
        max_workers: args.max_workers,
        inflight: Arc::new(AtomicU64::new(0)),
        max_inflight: args.max_inflight.max(1),
        max_inflight_per_worker: args.max_inflight_per_worker.max(1),
        drop_unhealthy_after: timeout_arg("--drop-unhealthy-after", args.drop_unhealthy_after)?,
        pd_protocol: args.pd_protocol,
        rng: Mutex::new(<rand::rngs::StdRng as rand::SeedableRng>::from_os_rng()),
        share_predictions: router_cfg.kv_feed != KvFeed::Events,
        tokenization,
        cluster: Cluster {
            etcd: discovery.as_ref().map(Discovery::health),
            fanout,
            discovered: Mutex::new(FxHashMap::default()),
            membership_loaded: AtomicBool::new(discovery.is_none()),
            clustered,
            warm_deadline: Instant::now() + Duration::from_secs_f64(args.warmup_timeout),
            warm: AtomicBool::new(false),
            predictions_applied: AtomicU64::new(0),
            predictions_unknown_worker: AtomicU64::new(0),
            joins: AtomicU64::new(0),
            leaves: AtomicU64::new(0),
        },
    });
    for s in specs {
        if let Some(e) = state.refuse_registration(&s.url) {
            anyhow::bail!("--worker {}: {}", s.url, e.message);
        }
        state.add_worker(s, false).await;
    }
    let mut tasks = Vec::new();
    if let Some(d) = discovery {
        tasks.push(tokio::spawn(watch_membership(Arc::downgrade(&state), d)));
    }
    if let Some(rx) = predictions {
        tasks.push(tokio::spawn(apply_predictions(Arc::downgrade(&state), rx)));
    }
    let api = Router::new()
        .route("/v1/models", get(models))
        .route("/v1/completions", post(completions))
        .route("/v1/chat/completions", post(chat))
        .route_layer(from_fn_with_state(client_keys.clone(), require_key));
    let admin = Router::new()
        .route("/v1/workers", get(list_workers).post(add_worker))
        .route("/v1/workers/{id}", delete(remove_worker))
        .route_layer(from_fn_with_state(admin_keys, admin_only));
    let mut metrics_route = Router::new().route("/metrics", get(metrics));
    if args.metrics_need_key {
        metrics_route = metrics_route.route_layer(from_fn_with_state(client_keys, require_key));
    }
    let app = Router::new()
        .merge(api)
        .merge(admin)
        .merge(metrics_route)
        .route("/health", get(|| async { StatusCode::OK }))
        .route("/ready", get(ready))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::disable())
        .with_state(state.clone());
    anyhow::ensure!(
        args.engine_metrics_interval >= 0.0 && args.engine_metrics_interval.is_finite(),
        "--engine-metrics-interval must be >= 0 seconds"
    );
    if args.engine_metrics_interval > 0.0 {
        let st = Arc::downgrade(&state);
        let every = Duration::from_secs_f64(args.engine_metrics_interval);
        tasks.push(tokio::spawn(poll_engine_metrics(st, every)));
    }
    let hc_state = Arc::downgrade(&state);
    let interval = Duration::from_secs_f64(args.health_interval);
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(interval).await;
            let Some(st) = hc_state.upgrade() else { return };
            let ws: Vec<_> = st.workers.read().map(|w| w.clone()).unwrap_or_default();
            let checks = ws.iter().map(|w| st.check(w));
            futures_util::future::join_all(checks).await;
            st.drop_long_unhealthy();
        }
    });
    let limits = ConnLimits::from_flags(args.max_connections, args.header_timeout)
        .map_err(anyhow::Error::msg)?;
    let (shutdown, shutdown_rx) = watch::channel(false);
    let server = tokio::spawn(crate::http::serve(listener, app, limits, shutdown_rx));
    Ok(ServeHandle {
        limits,
        shutdown,
        addr,
        local_workers: local,
        state,
        server,
        tasks,
    })
}

// ----- state --------------------------------------------------------------------------------

struct WorkerEntry {
    id: u64,
    spec: WorkerSpec,
    healthy: AtomicBool,
    /// Was healthy at least once (a later recovery means its event stream must be redone).
    ever_healthy: AtomicBool,
    routed: AtomicU64,
    errors: AtomicU64,
    /// Failures before the first byte since the last success.
    consecutive_failures: AtomicU64,
    models: Mutex<Vec<String>>,
    reconnect: Notify,
    subscriber: Mutex<Option<tokio::task::JoinHandle<()>>>,
    events: AtomicU64,
    seq_gaps: AtomicU64,
    /// The KV-event subscription is connected (events published from now on arrive).
    subscribed: AtomicBool,
    /// How complete its index entries are ([`IndexState`]).
    index_state: AtomicU8,
    /// Highest DP rank seen in its events (its index entries live under ranks 0..=this).
    max_rank: AtomicU32,
    /// The etcd record id, for workers that came from `--discovery`.
    discovered_as: Option<String>,
    /// Added through the admin API (dropped after staying unhealthy too long).
    runtime: bool,
    /// Requests in flight on it through this frontend.
    inflight: Arc<AtomicU64>,
    /// The block size of its KV events when it differs from the router's (0: none seen).
    foreign_block_size: AtomicU32,
    /// Since when it has been failing health checks (ms since the state's start; 0 = healthy).
    unhealthy_since_ms: AtomicU64,
}

impl WorkerEntry {
    /// Rank 0's key: where engine-wide facts (its reported load) are kept.
    fn key(&self) -> WorkerKey {
        WorkerKey::new(self.id, 0)
    }

    /// DP ranks to route over: the configured size, or more if its events show more.
    fn ranks(&self) -> u32 {
        self.spec
            .dp_size
            .unwrap_or(1)
            .max(self.max_rank.load(Ordering::Relaxed) + 1)
    }

    /// One routing candidate per DP rank, as the simulator builds them.
    fn keys(&self) -> impl Iterator<Item = WorkerKey> + '_ {
        (0..self.ranks()).map(|r| WorkerKey::new(self.id, r))
    }
    fn index_state(&self) -> IndexState {
        IndexState::from_u8(self.index_state.load(Ordering::Relaxed))
    }
    fn stop(&self) {
        if let Ok(mut s) = self.subscriber.lock()
            && let Some(h) = s.take()
        {
            h.abort();
        }
    }
}

struct ServeState {
    workers: RwLock<Vec<Arc<WorkerEntry>>>,
    next_id: AtomicU64,
    router: SharedRouter,
    hasher: BlockHasher,
    client: reqwest::Client,
    probe: reqwest::Client,
    policy: &'static str,
    metrics: Metrics,
    t0: Instant,
    max_attempts: u32,
    max_body: usize,
    first_byte_timeout: Duration,
    idle_timeout: Duration,
    /// Shutting down: `/ready` answers 503.
    draining: AtomicBool,
    /// `--expose-worker-urls`.
    expose_urls: bool,
    /// The policy reads block hashes (KV-aware): prompts are tokenized.
    needs_tokens: bool,
    /// Per-key limits (`--rate-limit-rpm`, `--rate-limit-tpm`).
    rate_limits: Mutex<crate::ratelimit::RateLimiter>,
    max_workers: usize,
    drop_unhealthy_after: Duration,
    /// Generation requests in flight through this frontend, and the bounds.
    inflight: Arc<AtomicU64>,
    max_inflight: u64,
    max_inflight_per_worker: u64,
    pd_protocol: PdProtocol,
    /// Bootstrap rooms (SGLang).
    rng: Mutex<rand::rngs::StdRng>,
    /// Publish routing predictions to the other replicas (approximate/hybrid feeds: in
    /// events mode every replica reads the same engine events, predictions add nothing).
    share_predictions: bool,
    /// Tokenizer and chat template of text/chat prompts.
    tokenization: Tokenization,
    cluster: Cluster,
}

/// Membership from etcd and fan-out state (both optional).
struct Cluster {
    /// Discovery link health (`--discovery`).
    etcd: Option<watch::Receiver<LinkHealth>>,
    /// NATS fan-out (`--nats`).
    fanout: Option<Arc<Fanout>>,
    /// etcd record id -> worker id, for workers that came from discovery.
    discovered: Mutex<FxHashMap<String, u64>>,
    /// The first membership snapshot has been applied (true without discovery).
    membership_loaded: AtomicBool,
    /// Started with `--discovery` or `--nats`: readiness waits for warm-up.
    clustered: bool,
    warm_deadline: Instant,
    /// Latched once warm (a worker joining later does not make the replica cold).
    warm: AtomicBool,
    predictions_applied: AtomicU64,
    predictions_unknown_worker: AtomicU64,
    joins: AtomicU64,
    leaves: AtomicU64,
}

/// One routed request's load on one worker: the router's RAII guard plus, with NATS fan-out,
/// this replica's in-flight count shared with the other replicas (+1 when booked, −1 when
/// dropped: completion, failure, client gone).
struct Booking {
    guard: RouteGuard,
    _shared: Option<SharedInflight>,
    _slot: Slot,
}

impl Booking {
    fn prefill_done(&self) {
        self.guard.prefill_done();
    }
}

struct SharedInflight {
    fan: Arc<Fanout>,
    worker: String,
    rank: u32,
}

impl Drop for SharedInflight {
    fn drop(&mut self) {
        self.fan.inflight_add(&self.worker, self.rank, -1);
    }
}

impl ServeState {
    fn now(&self) -> f64 {
        self.t0.elapsed().as_secs_f64()
    }

    async fn add_worker(self: &Arc<Self>, spec: WorkerSpec, runtime: bool) -> Arc<WorkerEntry> {
        let w = self.insert_worker(spec, None, runtime);
        self.check(&w).await;
        w
    }

    /// Why a new registration of `url` is refused, if it is: already registered, or the
    /// registry is full.
    fn refuse_registration(&self, url: &str) -> Option<ApiError> {
        let ws = self.workers.read().ok()?;
        if let Some(w) = ws.iter().find(|w| w.spec.url == url) {
            return Some(ApiError::new(
                StatusCode::CONFLICT,
                format!("worker {url} is already registered (id {})", w.id),
            ));
        }
        (ws.len() >= self.max_workers).then(|| {
            ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                format!(
                    "the worker registry is full ({} workers, --max-workers)",
                    self.max_workers
                ),
            )
        })
    }

    /// Drop workers added through the admin API that have failed their health checks for
    /// longer than `--drop-unhealthy-after`.
    fn drop_long_unhealthy(&self) {
        let now = self.ms();
        let limit = self.drop_unhealthy_after.as_millis() as u64;
        let stale: Vec<u64> = self
            .workers
            .read()
            .map(|ws| {
                ws.iter()
                    .filter(|w| w.runtime)
                    .filter(|w| {
                        let since = w.unhealthy_since_ms.load(Ordering::Relaxed);
                        since != 0 && now.saturating_sub(since) >= limit
                    })
                    .map(|w| w.id)
                    .collect()
            })
            .unwrap_or_default();
        for id in stale {
            if self.remove_worker(id) {
                self.metrics.workers_dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Milliseconds since this state was created, at least 1 (0 marks "not set").
    fn ms(&self) -> u64 {
        (self.t0.elapsed().as_millis() as u64).max(1)
    }

    /// Register a worker: listed at once, routed once a health check passes (it starts
    /// unhealthy), its KV-event subscription started.
    fn insert_worker(
        self: &Arc<Self>,
        spec: WorkerSpec,
        discovered_as: Option<String>,
        runtime: bool,
    ) -> Arc<WorkerEntry> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let w = Arc::new(WorkerEntry {
            id,
            spec,
            healthy: AtomicBool::new(false),
            ever_healthy: AtomicBool::new(false),
            routed: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            consecutive_failures: AtomicU64::new(0),
            models: Mutex::new(Vec::new()),
            reconnect: Notify::new(),
            subscriber: Mutex::new(None),
            events: AtomicU64::new(0),
            seq_gaps: AtomicU64::new(0),
            subscribed: AtomicBool::new(false),
            index_state: AtomicU8::new(IndexState::Pending as u8),
            max_rank: AtomicU32::new(0),
            discovered_as,
            runtime,
            inflight: Arc::new(AtomicU64::new(0)),
            foreign_block_size: AtomicU32::new(0),
            unhealthy_since_ms: AtomicU64::new(self.ms()),
        });
        {
            let mut r = self.router.lock();
            for k in w.keys() {
                r.add_worker(k);
            }
        }
        if let Some(ep) = w.spec.kv_events.clone() {
            let h = tokio::spawn(subscriber(Arc::downgrade(self), w.clone(), ep));
            if let Ok(mut s) = w.subscriber.lock() {
                *s = Some(h);
            }
        }
        if let Ok(mut ws) = self.workers.write() {
            ws.push(w.clone());
        }
        w
    }

    /// Apply one etcd membership change.
    fn apply_membership(self: &Arc<Self>, ev: MembershipEvent) {
        match ev {
            MembershipEvent::Upsert(rec) => {
                // A changed record (typically a restarted worker: new incarnation) replaces
                // the old entry, whose cache and event stream are gone.
                let old = self.lock_discovered().remove(&rec.id);
                if let Some(old) = old {
                    self.remove_worker(old);
                }
                let spec = WorkerSpec {
                    url: rec.url.trim_end_matches('/').to_string(),
                    kv_events: rec.kv_events.clone(),
                    kv_events_replay: rec.kv_events_replay.clone(),
                    role: rec.role.as_str().to_string(),
                    bootstrap_port: None,
                    dp_size: Some(rec.dp_size.max(1)),
                };
                if let Some(e) = self.refuse_registration(&spec.url) {
                    eprintln!(
                        "switchyard serve: etcd worker {} ({}) not added: {}",
                        rec.id, spec.url, e.message
                    );
                    return;
                }
                let w = self.insert_worker(spec, Some(rec.id.clone()), false);
                self.lock_discovered().insert(rec.id.clone(), w.id);
                self.cluster.joins.fetch_add(1, Ordering::Relaxed);
                eprintln!(
                    "switchyard serve: worker {} joined from etcd: {} {}",
                    rec.id, rec.role, rec.url
                );
                // Health check off the membership path: a dead worker whose lease has not
                // expired yet must not delay the next change.
                let st = self.clone();
                tokio::spawn(async move { st.check(&w).await });
            }
            MembershipEvent::Remove(id) => {
                let wid = self.lock_discovered().remove(&id);
                if let Some(wid) = wid {
                    self.remove_worker(wid);
                    self.cluster.leaves.fetch_add(1, Ordering::Relaxed);
                    eprintln!("switchyard serve: worker {id} left (etcd record gone)");
                }
            }
        }
    }

    fn lock_discovered(&self) -> std::sync::MutexGuard<'_, FxHashMap<String, u64>> {
        self.cluster
            .discovered
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// Warm: the membership is read (with discovery) and every worker's KV-event
    /// subscription is connected and its index rebuilt (replayed where the worker offers
    /// replay) — or the warm-up timeout passed. Latched.
    fn is_warm(&self) -> bool {
        if self.cluster.warm.load(Ordering::Relaxed) {
            return true;
        }
        let subscribed = self
            .workers
            .read()
            .map(|ws| {
                ws.iter().filter(|w| w.spec.kv_events.is_some()).all(|w| {
                    w.subscribed.load(Ordering::Relaxed) && w.index_state() != IndexState::Pending
                })
            })
            .unwrap_or(false);
        let warm = (self.cluster.membership_loaded.load(Ordering::Relaxed) && subscribed)
            || Instant::now() >= self.cluster.warm_deadline;
        if warm {
            self.cluster.warm.store(true, Ordering::Relaxed);
        }
        warm
    }

    /// Route among `pool` (with peers' in-flight counts blended in first).
    fn route(
        &self,
        hashes: &[u64],
        tokens: u32,
        pool: &[Arc<WorkerEntry>],
    ) -> Result<(Decision, RouteGuard), ApiError> {
        self.blend_peer_load(&[pool]);
        let keys: Vec<WorkerKey> = pool.iter().flat_map(|w| w.keys()).collect();
        self.router
            .route(hashes, tokens, &keys, self.now())
            .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))
    }

    /// Route a (prefill, decode) pair (with peers' in-flight counts blended in first).
    fn route_pair(
        &self,
        hashes: &[u64],
        tokens: u32,
        prefill: &[Arc<WorkerEntry>],
        decode: &[Arc<WorkerEntry>],
    ) -> Result<(PairDecision, PairGuards), ApiError> {
        self.blend_peer_load(&[prefill, decode]);
        let pkeys: Vec<WorkerKey> = prefill.iter().flat_map(|w| w.keys()).collect();
        let dkeys: Vec<WorkerKey> = decode.iter().flat_map(|w| w.keys()).collect();
        self.router
            .route_pair(hashes, tokens, &pkeys, &dkeys, self.now())
            .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))
    }

    /// The other replicas' in-flight requests on these workers, as they last told us.
    fn blend_peer_load(&self, pools: &[&[Arc<WorkerEntry>]]) {
        let Some(f) = &self.cluster.fanout else {
            return;
        };
        let counts: Vec<(WorkerKey, u32)> = pools
            .iter()
            .flat_map(|p| p.iter())
            .flat_map(|w| {
                w.keys()
                    .map(|k| (k, f.remote_inflight(&w.spec.url, k.dp_rank)))
                    .collect::<Vec<_>>()
            })
            .collect();
        let mut r = self.router.lock();
        for (k, n) in counts {
            r.set_external_load(k, n);
        }
    }

    /// Attach the fan-out side to a routed request's guard: tell the other replicas (the
    /// prediction, in approximate/hybrid modes, and +1 in flight; −1 when it ends).
    fn book(&self, guard: RouteGuard, w: &Target, hashes: &[u64]) -> Booking {
        let rank = w.rank;
        let shared = self.cluster.fanout.as_ref().map(|f| {
            if self.share_predictions && !hashes.is_empty() {
                f.publish_prediction(&w.spec.url, rank, hashes);
            }
            f.inflight_add(&w.spec.url, rank, 1);
            SharedInflight {
                fan: f.clone(),
                worker: w.spec.url.clone(),
                rank,
            }
        });
        Booking {
            guard,
            _shared: shared,
            _slot: Slot::take(&w.inflight),
        }
    }

    fn remove_worker(&self, id: u64) -> bool {
        let removed = self.workers.write().ok().and_then(|mut ws| {
            let i = ws.iter().position(|w| w.id == id)?;
            Some(ws.remove(i))
        });
        match removed {
            Some(w) => {
                w.stop();
                // Its cache entries (every DP rank it reported) and its load go.
                let mut r = self.router.lock();
                for rank in 0..w.ranks() {
                    r.remove_worker(WorkerKey::new(w.id, rank));
                }
                true
            }
            None => false,
        }
    }

    /// Probe `/v1/models`: health and served model names.
    async fn check(&self, w: &WorkerEntry) {
        let r = self
            .probe
            .get(format!("{}/v1/models", w.spec.url))
            .send()
            .await;
        let models = match r {
            Ok(r) if r.status().is_success() => r.json::<Value>().await.ok().map(|v| {
                v["data"]
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .filter_map(|m| m["id"].as_str().map(String::from))
                            .collect::<Vec<_>>()
                    })
                    .unwrap_or_default()
            }),
            _ => None,
        };
        match models {
            Some(m) => {
                w.unhealthy_since_ms.store(0, Ordering::Relaxed);
                if let Ok(mut g) = w.models.lock() {
                    *g = m;
                }
                if !w.healthy.swap(true, Ordering::Relaxed)
                    && w.ever_healthy.swap(true, Ordering::Relaxed)
                {
                    // Back after being down: resubscribe to its events (a restarted engine
                    // starts a new stream; the old connection may hang).
                    w.reconnect.notify_one();
                }
            }
            None => {
                w.healthy.store(false, Ordering::Relaxed);
                let _ = w.unhealthy_since_ms.compare_exchange(
                    0,
                    self.ms(),
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                );
            }
        }
    }

    /// Any prefill or decode worker registered: requests take the P/D path.
    fn is_disaggregated(&self) -> bool {
        self.workers
            .read()
            .map(|ws| ws.iter().any(|w| w.spec.role != "aggregated"))
            .unwrap_or(false)
    }

    fn count_decision(&self, overlap_blocks: u32, attempt: u32) {
        self.metrics.decisions.fetch_add(1, Ordering::Relaxed);
        self.metrics
            .overlap_blocks
            .fetch_add(overlap_blocks as u64, Ordering::Relaxed);
        if attempt > 0 {
            self.metrics.retries.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// POST a body to a worker. Connection failures and 5xx answers are errors (counted; the
    /// worker is marked down on connection failure or after repeated 5xx); anything else,
    /// 4xx included, is the worker's answer.
    async fn send(&self, t: &Target, path: &str, body: Bytes) -> Result<reqwest::Response, String> {
        let w: &WorkerEntry = t;
        let mut post = self
            .client
            .post(format!("{}{path}", w.spec.url))
            .header(header::CONTENT_TYPE, "application/json");
        if w.ranks() > 1 {
            // The rank the router chose, the way vLLM and SGLang take it.
            post = post.header(DP_RANK_HEADER, t.rank);
        }
        let sent = tokio::time::timeout(self.first_byte_timeout, post.body(body).send()).await;
        let Ok(sent) = sent else {
            w.errors.fetch_add(1, Ordering::Relaxed);
            self.metrics.upstream_errors.fetch_add(1, Ordering::Relaxed);
            self.metrics
                .upstream_timeouts
                .fetch_add(1, Ordering::Relaxed);
            self.note_failure(w);
            return Err(format!(
                "worker {} did not start answering within {:.0} s",
                self.name(w),
                self.first_byte_timeout.as_secs_f64()
            ));
        };
        match sent {
            Ok(r) if r.status().is_server_error() => {
                w.errors.fetch_add(1, Ordering::Relaxed);
                self.metrics.upstream_errors.fetch_add(1, Ordering::Relaxed);
                self.note_failure(w);
                let status = r.status();
                let v: Value = r.json().await.unwrap_or(Value::Null);
                let msg = v["error"]["message"].as_str().unwrap_or("");
                Err(format!("worker {} answered {status} {msg}", self.name(w)))
            }
            Ok(r) => {
                w.routed.fetch_add(1, Ordering::Relaxed);
                w.consecutive_failures.store(0, Ordering::Relaxed);
                Ok(r)
            }
            Err(e) => {
                w.errors.fetch_add(1, Ordering::Relaxed);
                self.metrics.upstream_errors.fetch_add(1, Ordering::Relaxed);
                if e.is_connect() {
                    w.healthy.store(false, Ordering::Relaxed);
                }
                Err(format!("worker {}: {e}", self.name(w)))
            }
        }
    }

    /// How clients see a worker: its URL with `--expose-worker-urls`, else its id.
    fn name(&self, w: &WorkerEntry) -> String {
        if self.expose_urls {
            w.spec.url.clone()
        } else {
            format!("#{}", w.id)
        }
    }

    /// The worker is below `--max-inflight-per-worker`.
    fn has_room(&self, w: &WorkerEntry) -> bool {
        w.inflight.load(Ordering::Relaxed) < self.max_inflight_per_worker
    }

    /// Circuit breaker: a worker failing every request leaves the candidate set until its
    /// next successful health check.
    fn note_failure(&self, w: &WorkerEntry) {
        if w.consecutive_failures.fetch_add(1, Ordering::Relaxed) + 1 >= MAX_CONSECUTIVE_FAILURES {
            w.healthy.store(false, Ordering::Relaxed);
            w.consecutive_failures.store(0, Ordering::Relaxed);
        }
    }

    /// Some healthy worker serves `model`, or none reports any model (then anything goes).
    /// Per request: stops at the first match instead of collecting every worker's list.
    fn serves_model(&self, model: &str) -> bool {
        let Ok(ws) = self.workers.read() else {
            return true;
        };
        let mut any = false;
        for w in ws.iter().filter(|w| w.healthy.load(Ordering::Relaxed)) {
            if let Ok(m) = w.models.lock() {
                if m.iter().any(|n| n == model) {
                    return true;
                }
                any |= !m.is_empty();
            }
        }
        !any
    }

    fn models(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        if let Ok(ws) = self.workers.read() {
            for w in ws.iter().filter(|w| w.healthy.load(Ordering::Relaxed)) {
                if let Ok(m) = w.models.lock() {
                    for name in m.iter() {
                        if !out.contains(name) {
                            out.push(name.clone());
                        }
                    }
                }
            }
        }
        out
    }
}

// ----- cluster: etcd membership, NATS predictions ------------------------------------------------

/// Apply etcd membership changes until the handle is dropped. The first snapshot counts as
/// "membership loaded" once discovery reports connected (it sends the snapshot's events
/// before it flips its health, so they are all queued by then).
async fn watch_membership(state: std::sync::Weak<ServeState>, mut disc: Discovery) {
    let mut health = disc.health();
    let mut loaded = false;
    loop {
        if !loaded && health.borrow_and_update().connects > 0 {
            let Some(st) = state.upgrade() else { return };
            while let Some(ev) = disc.try_recv() {
                st.apply_membership(ev);
            }
            st.cluster.membership_loaded.store(true, Ordering::Relaxed);
            loaded = true;
        }
        tokio::select! {
            ev = disc.recv() => {
                let Some(ev) = ev else { return };
                let Some(st) = state.upgrade() else { return };
                st.apply_membership(ev);
            }
            r = health.changed() => {
                if r.is_err() {
                    return;
                }
            }
        }
    }
}

/// Fold the other replicas' routing predictions into the approximate index. Workers are
/// named by URL on the wire (the same on every replica).
async fn apply_predictions(state: std::sync::Weak<ServeState>, mut rx: mpsc::Receiver<Prediction>) {
    let mut batch: Vec<Prediction> = Vec::new();
    while let Some(p) = rx.recv().await {
        batch.push(p);
        while batch.len() < 256 {
            match rx.try_recv() {
                Ok(p) => batch.push(p),
                Err(_) => break,
            }
        }
        let Some(st) = state.upgrade() else { return };
        let ws: Vec<_> = st.workers.read().map(|w| w.clone()).unwrap_or_default();
        let now = st.now();
        let (mut applied, mut unknown) = (0, 0);
        {
            let mut r = st.router.lock();
            for p in batch.drain(..) {
                match ws.iter().find(|w| w.spec.url == p.worker) {
                    Some(w) if p.dp_rank < MAX_DP_RANKS => {
                        r.record_prediction(WorkerKey::new(w.id, p.dp_rank), &p.hashes, now);
                        applied += 1;
                    }
                    _ => unknown += 1,
                }
            }
        }
        let c = &st.cluster;
        c.predictions_applied.fetch_add(applied, Ordering::Relaxed);
        c.predictions_unknown_worker
            .fetch_add(unknown, Ordering::Relaxed);
    }
}

// ----- engine load from the engines' own /metrics ------------------------------------------------

async fn poll_engine_metrics(state: std::sync::Weak<ServeState>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(st) = state.upgrade() else { return };
        let ws: Vec<_> = st.workers.read().map(|w| w.clone()).unwrap_or_default();
        let polls = ws.iter().map(|w| {
            let st = st.clone();
            async move {
                let r = st
                    .probe
                    .get(format!("{}/metrics", w.spec.url))
                    .timeout(every.max(Duration::from_millis(200)))
                    .send()
                    .await;
                let text = match r {
                    Ok(r) if r.status().is_success() => r.text().await.ok(),
                    _ => None,
                };
                let bs = st.hasher.block_size();
                if let Some(load) = text.as_deref().and_then(|t| parse_engine_load(t, bs)) {
                    st.router.lock().report_load(w.key(), load, st.now());
                }
            }
        });
        futures_util::future::join_all(polls).await;
    }
}

/// Sum of every sample of `name` (all label sets: DP ranks, models).
fn prom_sum(text: &str, name: &str) -> Option<f64> {
    let mut found = None;
    for line in text.lines() {
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        // The name must end here (`vllm:num_requests_running_total` is another metric).
        let rest = match rest.as_bytes().first() {
            Some(b'{') => rest.rsplit_once('}').map_or("", |x| x.1),
            Some(b' ') => rest,
            _ => continue,
        };
        if let Some(v) = rest
            .split_whitespace()
            .next()
            .and_then(|v| v.parse::<f64>().ok())
            .filter(|v| v.is_finite())
        {
            *found.get_or_insert(0.0) += v;
        }
    }
    found
}

/// A label's value on the first sample of `name` (`vllm:cache_config_info{num_gpu_blocks="N"}`).
fn prom_label(text: &str, name: &str, label: &str) -> Option<f64> {
    let line = text
        .lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with('{'))?;
    let pat = format!("{label}=\"");
    let i = line.find(&pat)? + pat.len();
    line[i..].split('"').next()?.parse().ok()
}

/// The load an engine reports on its Prometheus page: vLLM (`vllm:num_requests_running`,
/// `vllm:num_requests_waiting`, `vllm:kv_cache_usage_perc` × `num_gpu_blocks` of
/// `vllm:cache_config_info`), SGLang (`sglang:num_running_reqs`, `sglang:num_queue_reqs`,
/// `sglang:num_used_tokens` in blocks of `block_size` tokens) or `switchyard worker`. `None`
/// when the page has none of these.
pub(crate) fn parse_engine_load(
    text: &str,
    block_size: u32,
) -> Option<switchyard_route::EngineLoad> {
    let as_u32 = |v: f64| v.max(0.0).min(f64::from(u32::MAX)).round() as u32;
    let as_u64 = |v: f64| v.max(0.0).round() as u64;
    if let Some(running) = prom_sum(text, "switchyard_worker_num_requests_running") {
        let waiting = prom_sum(text, "switchyard_worker_num_requests_waiting").unwrap_or(0.0);
        let total = prom_sum(text, "switchyard_worker_kv_blocks_total").unwrap_or(0.0);
        let usage = prom_sum(text, "switchyard_worker_kv_cache_usage_ratio").unwrap_or(0.0);
        return Some(switchyard_route::EngineLoad {
            running_requests: as_u32(running),
            waiting_requests: as_u32(waiting),
            active_blocks: as_u64(usage * total),
            prefill_tokens: prom_sum(text, "switchyard_worker_num_prefill_tokens_pending")
                .map(as_u64),
        });
    }
    if let Some(running) = prom_sum(text, "vllm:num_requests_running") {
        let waiting = prom_sum(text, "vllm:num_requests_waiting").unwrap_or(0.0);
        let usage = prom_sum(text, "vllm:kv_cache_usage_perc")
            .or_else(|| prom_sum(text, "vllm:gpu_cache_usage_perc"))
            .unwrap_or(0.0);
        let blocks = prom_label(text, "vllm:cache_config_info", "num_gpu_blocks").unwrap_or(0.0);
        return Some(switchyard_route::EngineLoad {
            running_requests: as_u32(running),
            waiting_requests: as_u32(waiting),
            active_blocks: as_u64(usage * blocks),
            prefill_tokens: None,
        });
    }
    if let Some(running) = prom_sum(text, "sglang:num_running_reqs") {
        let waiting = prom_sum(text, "sglang:num_queue_reqs").unwrap_or(0.0);
        // SGLang reports token slots; the router counts blocks of its block size.
        let used = prom_sum(text, "sglang:num_used_tokens").unwrap_or(0.0);
        return Some(switchyard_route::EngineLoad {
            running_requests: as_u32(running),
            waiting_requests: as_u32(waiting),
            active_blocks: as_u64(used / f64::from(block_size.max(1))),
            prefill_tokens: None,
        });
    }
    None
}

fn link_json(h: &LinkHealth) -> Value {
    json!({
        "state": h.state.as_str(),
        "since_unix": h.since_unix(),
        "for_s": h.for_duration().as_secs_f64(),
        "connects": h.connects,
        "last_error": h.last_error,
    })
}

// ----- KV events ------------------------------------------------------------------------------

/// Replay buffer of the simulated workers `serve --config` starts in its own process.
const LOCAL_REPLAY_BUFFER: usize = 1_000;

/// Longest the subscriber waits for each replay message; after it the missed events count
/// as lost.
const REPLAY_IDLE: Duration = Duration::from_secs(3);
/// A stream silent this long is checked by a replay from its last batch (workers with
/// replay): the pure-Rust ZMQ SUB never notices a publisher that went away, so an engine
/// that restarted between health checks, or a dropped subscription, shows up here.
const IDLE_PROBE: Duration = Duration::from_secs(5);
/// Replay rounds per catch-up when answers come with holes (libzmq's ROUTER drops beyond
/// its 1000-message send queue); each round continues where the last stopped.
const MAX_REPLAY_ROUNDS: usize = 32;

/// What the subscriber does next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Flow {
    Go,
    /// The engine restarted: the subscription (to its previous incarnation) and whatever it
    /// queued are stale.
    Resubscribe,
    /// The frontend is gone.
    Stop,
}

async fn subscriber(state: std::sync::Weak<ServeState>, w: Arc<WorkerEntry>, endpoint: String) {
    let mut feed = Feed {
        state,
        replay: w.spec.kv_events_replay.clone(),
        w: w.clone(),
        translator: EngineHashTranslator::new(),
        cursor: Cursor::default(),
        max_rank: 0,
    };
    loop {
        let (tx, mut rx) = mpsc::channel(1024);
        let ep = endpoint.clone();
        w.subscribed.store(false, Ordering::Relaxed);
        let (on_tx, on_rx) = tokio::sync::oneshot::channel::<()>();
        let connected = w.clone();
        // Aborted with this task (worker removed) or on resubscribe.
        let _sub = AbortOnDrop(Some(tokio::spawn(async move {
            let on = move || {
                connected.subscribed.store(true, Ordering::Relaxed);
                let _ = on_tx.send(());
            };
            let _ = subscribe_once_notify(&ep, tx, Duration::from_millis(200), on).await;
        })));
        // Subscribed before replaying: whatever is published after the replay's snapshot
        // then arrives live (and what arrives twice is recognised).
        let subscribed = tokio::select! {
            r = on_rx => r.is_ok(),
            _ = w.reconnect.notified() => false,
        };
        if subscribed {
            let mut flow = feed.on_connected().await;
            while flow == Flow::Go {
                tokio::select! {
                    msg = tokio::time::timeout(IDLE_PROBE, rx.recv()) => match msg {
                        Ok(Some(msg)) => {
                            let Ok((seq, payload)) = split_frames(msg) else {
                                if let Some(st) = feed.state.upgrade() {
                                    st.metrics.event_errors.fetch_add(1, Ordering::Relaxed);
                                }
                                continue;
                            };
                            flow = feed.on_live(seq, payload).await;
                        }
                        Ok(None) => break,
                        Err(_) => flow = feed.on_idle().await,
                    },
                    _ = w.reconnect.notified() => break,
                }
            }
            if flow == Flow::Stop {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// One worker's event stream as applied to the index.
struct Feed {
    state: std::sync::Weak<ServeState>,
    w: Arc<WorkerEntry>,
    replay: Option<String>,
    translator: EngineHashTranslator,
    cursor: Cursor,
    max_rank: u32,
}

impl Feed {
    fn set(&self, s: IndexState) {
        self.w.index_state.store(s as u8, Ordering::Relaxed);
    }

    fn index_state(&self) -> IndexState {
        self.w.index_state()
    }

    fn apply(&mut self, st: &ServeState, seq: u64, payload: &[u8]) {
        self.cursor.applied(seq, fingerprint(payload));
        if let Some(r) = apply_payload(st, &self.w, &mut self.translator, payload) {
            self.max_rank = self.max_rank.max(r);
            self.w.max_rank.fetch_max(r, Ordering::Relaxed);
        }
    }

    fn apply_all(&mut self, st: &ServeState, batches: Vec<Batch>) {
        for (seq, p) in batches {
            self.apply(st, seq, &p);
        }
    }

    /// Forget the worker's entries (its cache state is no longer known).
    fn clear(&mut self, st: &ServeState) {
        resync(st, &self.w, &mut self.translator, self.max_rank);
        self.cursor.reset();
    }

    /// A (re)connected subscription: fetch what was missed meanwhile — everything, the first
    /// time — or, without replay, forget what may be stale.
    async fn on_connected(&mut self) -> Flow {
        if let Some(ep) = self.replay.clone() {
            return match self.catch_up(&ep).await {
                // Already resubscribed to the new incarnation: go on.
                Flow::Resubscribe => Flow::Go,
                f => f,
            };
        }
        let Some(st) = self.state.upgrade() else {
            return Flow::Stop;
        };
        if self.cursor.last().is_some() {
            self.clear(&st);
            self.set(IndexState::Partial);
        } else if self.index_state() == IndexState::Pending {
            self.set(IndexState::Unknown);
        }
        Flow::Go
    }

    /// Nothing arrived for a while: with replay, check the stream is still the same one.
    async fn on_idle(&mut self) -> Flow {
        match self.replay.clone() {
            Some(ep) => self.catch_up(&ep).await,
            None => Flow::Go,
        }
    }

    /// Replay from the last applied batch (or from 0) and apply what it means.
    async fn catch_up(&mut self, ep: &str) -> Flow {
        let mut restarted = false;
        for _ in 0..MAX_REPLAY_ROUNDS {
            let r = request_replay(ep, self.cursor.replay_from(), REPLAY_IDLE).await;
            let Some(st) = self.state.upgrade() else {
                return Flow::Stop;
            };
            let m = &st.metrics;
            m.replays.fetch_add(1, Ordering::Relaxed);
            let batches = match r {
                Ok(b) => b,
                Err(e) => {
                    m.replay_failures.fetch_add(1, Ordering::Relaxed);
                    if self.index_state() != IndexState::Partial {
                        eprintln!(
                            "switchyard serve: worker {}: KV-event replay failed ({e}); its index entries are rebuilt from live events",
                            self.w.spec.url
                        );
                    }
                    if self.cursor.last().is_some() {
                        self.clear(&st);
                        self.set(IndexState::Partial);
                    } else if restarted {
                        self.set(IndexState::Partial);
                    } else {
                        self.set(IndexState::Unknown);
                    }
                    return Flow::Go;
                }
            };
            m.replayed_batches
                .fetch_add(batches.len() as u64, Ordering::Relaxed);
            let more = match self.cursor.plan(batches) {
                Plan::Continue { apply, more } => {
                    self.apply_all(&st, apply);
                    more
                }
                Plan::Restarted => {
                    // Its cache started over: so do its entries; then replay it from 0.
                    m.engine_restarts.fetch_add(1, Ordering::Relaxed);
                    self.clear(&st);
                    if restarted {
                        self.set(IndexState::Partial);
                        return Flow::Resubscribe;
                    }
                    restarted = true;
                    true
                }
                Plan::Lost(apply) => {
                    self.clear(&st);
                    self.cursor.settled(apply.first().map(|(s, _)| *s));
                    self.set(IndexState::Partial);
                    self.apply_all(&st, apply);
                    // Anything further was cut at a hole: fetch it next round.
                    true
                }
                Plan::Fresh {
                    apply,
                    complete,
                    more,
                } => {
                    self.cursor.settled(apply.first().map(|(s, _)| *s));
                    self.apply_all(&st, apply);
                    // After a restart the engine's whole history was replayed: complete
                    // again even if an earlier loss had made it partial.
                    if complete && (restarted || self.index_state() != IndexState::Partial) {
                        self.set(IndexState::Complete);
                    } else if !complete {
                        self.set(IndexState::Partial);
                    }
                    more
                }
            };
            if !more {
                return if restarted {
                    Flow::Resubscribe
                } else {
                    Flow::Go
                };
            }
        }
        if restarted {
            Flow::Resubscribe
        } else {
            Flow::Go
        }
    }

    async fn on_live(&mut self, seq: u64, payload: Bytes) -> Flow {
        let fp = fingerprint(&payload);
        let first = self.cursor.last().is_none();
        match self.cursor.classify(seq, fp) {
            Live::Apply => {
                let Some(st) = self.state.upgrade() else {
                    return Flow::Stop;
                };
                if first && self.replay.is_none() && self.index_state() == IndexState::Unknown {
                    // Followed from the engine's first batch: nothing was missed.
                    if seq == 0 {
                        self.set(IndexState::Complete);
                    }
                }
                self.apply(&st, seq, &payload);
                return Flow::Go;
            }
            Live::Duplicate => {
                if let Some(st) = self.state.upgrade() {
                    st.metrics.duplicates.fetch_add(1, Ordering::Relaxed);
                }
                return Flow::Go;
            }
            Live::Gap => {
                let Some(st) = self.state.upgrade() else {
                    return Flow::Stop;
                };
                self.w.seq_gaps.fetch_add(1, Ordering::Relaxed);
                st.metrics.seq_gaps.fetch_add(1, Ordering::Relaxed);
                if self.replay.is_none() {
                    self.clear(&st);
                    self.set(IndexState::Partial);
                }
            }
            Live::Restarted => {
                let Some(st) = self.state.upgrade() else {
                    return Flow::Stop;
                };
                st.metrics.engine_restarts.fetch_add(1, Ordering::Relaxed);
                self.clear(&st);
                if self.replay.is_none() {
                    // A restarted engine starts empty and numbers from 0.
                    self.set(if seq == 0 {
                        IndexState::Complete
                    } else {
                        IndexState::Partial
                    });
                }
            }
        }
        if let Some(ep) = self.replay.clone() {
            match self.catch_up(&ep).await {
                Flow::Go => {}
                f => return f,
            }
        }
        let Some(st) = self.state.upgrade() else {
            return Flow::Stop;
        };
        // Usually the replay delivered this batch already.
        match self.cursor.classify(seq, fp) {
            Live::Duplicate => {}
            Live::Apply => self.apply(&st, seq, &payload),
            Live::Gap | Live::Restarted => {
                // The replay could not cover it.
                self.clear(&st);
                self.set(IndexState::Partial);
                self.apply(&st, seq, &payload);
            }
        }
        Flow::Go
    }
}

/// DP ranks above this in an event batch are treated as garbage.
const MAX_DP_RANKS: u32 = 1024;

/// The request header naming the DP rank to run on (vLLM's `X-data-parallel-rank`; SGLang's
/// data-parallel controller reads it too). Shared with the simulated worker.
pub const DP_RANK_HEADER: &str = "x-data-parallel-rank";

/// Forget what `w` (DP ranks `0..=max_rank`) caches: events were lost. Only the cache
/// entries go; its load tracking stays.
fn resync(st: &ServeState, w: &WorkerEntry, translator: &mut EngineHashTranslator, max_rank: u32) {
    let mut r = st.router.lock();
    for rank in 0..=max_rank {
        let key = WorkerKey::new(w.id, rank);
        translator.clear_worker(key);
        r.apply_event(key, &KvEvent::AllCleared);
    }
}

fn apply_payload(
    st: &ServeState,
    w: &WorkerEntry,
    translator: &mut EngineHashTranslator,
    payload: &[u8],
) -> Option<u32> {
    let m = &st.metrics;
    let d = match decode_batch(payload) {
        Ok(d) => d,
        Err(_) => {
            m.event_errors.fetch_add(1, Ordering::Relaxed);
            return None;
        }
    };
    m.event_batches.fetch_add(1, Ordering::Relaxed);
    let now_unix = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    if d.batch.ts > 0.0 {
        m.event_lag.observe((now_unix - d.batch.ts).max(0.0));
    }
    let rank = d.batch.dp_rank.unwrap_or(0);
    if rank >= MAX_DP_RANKS {
        m.event_errors.fetch_add(1, Ordering::Relaxed);
        return None;
    }
    let key = WorkerKey::new(w.id, rank);
    let bs = st.hasher.block_size();
    let mut out = Vec::with_capacity(d.batch.events.len());
    for ev in &d.batch.events {
        w.events.fetch_add(1, Ordering::Relaxed);
        m.events.fetch_add(1, Ordering::Relaxed);
        match ev {
            WireEvent::BlockStored {
                block_hashes,
                parent_block_hash,
                token_ids,
                block_size,
                medium,
                ..
            } => {
                if medium.as_deref().is_some_and(|x| x != "GPU") {
                    continue; // offload tiers are not what the router matches against
                }
                if *block_size != bs {
                    m.event_errors.fetch_add(1, Ordering::Relaxed);
                    m.block_size_mismatches.fetch_add(1, Ordering::Relaxed);
                    if w.foreign_block_size.swap(*block_size, Ordering::Relaxed) != *block_size {
                        eprintln!(
                            "switchyard serve: ERROR: worker {} publishes KV events in {block_size}-token blocks but the router hashes {bs}-token blocks: its cache is invisible to KV-aware routing (start serve with --block-size {block_size}); /ready is 503 until fixed",
                            w.spec.url
                        );
                    }
                    continue;
                }
                let (ev, issue) =
                    translator.stored(key, *parent_block_hash, block_hashes, token_ids, &st.hasher);
                if issue.is_some() {
                    m.event_issues.fetch_add(1, Ordering::Relaxed);
                }
                if let Some(ev) = ev {
                    out.push((key, ev));
                }
            }
            WireEvent::BlockRemoved {
                block_hashes,
                medium,
            } => {
                if medium.as_deref().is_some_and(|x| x != "GPU") {
                    continue;
                }
                let (ev, _) = translator.removed(key, block_hashes);
                out.push((key, ev));
            }
            WireEvent::AllBlocksCleared => {
                translator.clear_worker(key);
                out.push((key, KvEvent::AllCleared));
            }
        }
    }
    if !out.is_empty() {
        st.router.lock().apply_events(&out);
    }
    Some(key.dp_rank)
}

// ----- HTTP: admin ---------------------------------------------------------------------------

fn worker_json(st: &ServeState, w: &WorkerEntry) -> Value {
    let r = st.router.lock();
    let snap = r.snapshot(w.key(), st.now());
    let blocks = r.index().worker_blocks(w.key());
    drop(r);
    json!({
        "id": w.id,
        "url": w.spec.url,
        "role": w.spec.role,
        "kv_events": w.spec.kv_events,
        "kv_events_replay": w.spec.kv_events_replay,
        "healthy": w.healthy.load(Ordering::Relaxed),
        "models": w.models.lock().map(|m| m.clone()).unwrap_or_default(),
        "load": {
            "active_requests": snap.active_requests,
            "prefill_tokens": snap.prefill_tokens,
            "active_blocks": snap.active_blocks,
            "engine_reported": snap.engine_reported,
        },
        "cached_blocks": blocks,
        "requests_routed": w.routed.load(Ordering::Relaxed),
        "upstream_errors": w.errors.load(Ordering::Relaxed),
        "kv_events_received": w.events.load(Ordering::Relaxed),
        "kv_event_seq_gaps": w.seq_gaps.load(Ordering::Relaxed),
        "kv_events_subscribed": w.spec.kv_events.is_some().then(|| w.subscribed.load(Ordering::Relaxed)),
        "kv_index": w.spec.kv_events.is_some().then(|| w.index_state().as_str()),
        "discovered_as": w.discovered_as,
    })
}

async fn list_workers(State(st): State<Arc<ServeState>>) -> Response {
    let ws: Vec<_> = st.workers.read().map(|w| w.clone()).unwrap_or_default();
    let data: Vec<Value> = ws.iter().map(|w| worker_json(&st, w)).collect();
    axum::Json(json!({"object": "list", "policy": st.policy, "data": data})).into_response()
}

async fn add_worker(State(st): State<Arc<ServeState>>, body: Bytes) -> Response {
    let mut spec: WorkerSpec = match serde_json::from_slice(&body) {
        Ok(s) => s,
        Err(e) => {
            return ApiError::unprocessable(
                "body",
                format!("expected {{\"url\": ..., \"kv_events\"?: ..., \"role\"?: ...}}: {e}"),
            )
            .into_response();
        }
    };
    if let Err(e) = spec.validate() {
        return ApiError::bad(e).into_response();
    }
    if let Some(e) = st.refuse_registration(&spec.url) {
        return e.into_response();
    }
    let w = st.add_worker(spec, true).await;
    (StatusCode::CREATED, axum::Json(worker_json(&st, &w))).into_response()
}

async fn remove_worker(State(st): State<Arc<ServeState>>, Path(id): Path<String>) -> Response {
    let Ok(id) = id.parse::<u64>() else {
        return ApiError::bad(format!("worker id must be an integer (got {id:?})")).into_response();
    };
    if st.remove_worker(id) {
        StatusCode::NO_CONTENT.into_response()
    } else {
        ApiError::new(StatusCode::NOT_FOUND, format!("no worker with id {id}")).into_response()
    }
}

/// `GET /ready`: 200 when requests can be served (a healthy aggregated worker; for a
/// disaggregated deployment a healthy prefill AND a healthy decode worker), else 503.
async fn ready(State(st): State<Arc<ServeState>>) -> Response {
    let ws: Vec<_> = st.workers.read().map(|w| w.clone()).unwrap_or_default();
    let count = |role: &str| {
        ws.iter()
            .filter(|w| w.spec.role == role && w.healthy.load(Ordering::Relaxed))
            .count()
    };
    let (a, p, d) = (count("aggregated"), count("prefill"), count("decode"));
    let disagg = st.is_disaggregated();
    let (ok, reason) = if disagg {
        (
            p > 0 && d > 0,
            "a disaggregated deployment needs at least one healthy prefill and one healthy decode worker",
        )
    } else {
        (a > 0, "no healthy worker")
    };
    // Warm-up gates readiness only for replicas of a fleet (`--discovery`/`--nats`): the
    // others take the traffic meanwhile. A lone frontend serves at once.
    let warm = st.is_warm();
    let mismatch = ws.iter().find_map(|w| {
        let b = w.foreign_block_size.load(Ordering::Relaxed);
        (b != 0).then(|| (w.id, b))
    });
    let mismatch_reason = mismatch.map(|(id, b)| {
        format!(
            "configuration error: worker #{id} publishes KV events in {b}-token blocks, the router hashes {}-token blocks (--block-size)",
            st.hasher.block_size()
        )
    });
    let (ok, reason) = if st.draining.load(Ordering::Relaxed) {
        (
            false,
            "draining: shutting down, finishing the requests in flight",
        )
    } else if let Some(r) = &mismatch_reason {
        (false, r.as_str())
    } else if ok && st.cluster.clustered && !warm {
        (
            false,
            "warming up: reading the membership, subscribing to the workers' KV events and replaying them",
        )
    } else {
        (ok, reason)
    };
    // etcd or NATS being down degrades routing quality, not availability: still 200.
    let mut links = serde_json::Map::new();
    let mut degraded = Vec::new();
    if let Some(h) = &st.cluster.etcd {
        let h = h.borrow().clone();
        if h.state != LinkState::Connected {
            degraded.push("etcd");
        }
        let mut v = link_json(&h);
        v["workers"] = json!(st.lock_discovered().len());
        links.insert("etcd".into(), v);
    }
    if let Some(f) = &st.cluster.fanout {
        let h = f.health().borrow().clone();
        if h.state != LinkState::Connected {
            degraded.push("nats");
        }
        let mut v = link_json(&h);
        v["replica_id"] = json!(f.replica_id());
        v["peers"] = json!(f.live_peers());
        links.insert("nats".into(), v);
    }
    let mut kv_index = serde_json::Map::new();
    for w in ws.iter().filter(|w| w.spec.kv_events.is_some()) {
        let k = w.index_state().as_str();
        let n = kv_index.get(k).and_then(Value::as_u64).unwrap_or(0);
        kv_index.insert(k.into(), json!(n + 1));
    }
    let body = json!({
        "ready": ok,
        "warm": warm,
        "kv_index": kv_index,
        "mode": if disagg { "disaggregated" } else { "aggregated" },
        "healthy": {"aggregated": a, "prefill": p, "decode": d},
        "reason": if ok { Value::Null } else { json!(reason) },
        "degraded": !degraded.is_empty(),
        "degraded_links": degraded,
        "links": links,
    });
    let status = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, axum::Json(body)).into_response()
}

async fn models(State(st): State<Arc<ServeState>>) -> Response {
    let data: Vec<Value> = st
        .models()
        .into_iter()
        .map(|m| json!({"id": m, "object": "model", "owned_by": "switchyard"}))
        .collect();
    axum::Json(json!({"object": "list", "data": data})).into_response()
}

// ----- HTTP: proxy ---------------------------------------------------------------------------

async fn completions(
    State(st): State<Arc<ServeState>>,
    key: Option<axum::Extension<KeyId>>,
    body: Body,
) -> Response {
    proxy(st, Endpoint::Completions, key.map(|k| k.0), body).await
}

async fn chat(
    State(st): State<Arc<ServeState>>,
    key: Option<axum::Extension<KeyId>>,
    body: Body,
) -> Response {
    proxy(st, Endpoint::Chat, key.map(|k| k.0), body).await
}

async fn proxy(st: Arc<ServeState>, ep: Endpoint, key: Option<KeyId>, body: Body) -> Response {
    let start = Instant::now();
    let Some(slot) = Slot::try_take(&st.inflight, st.max_inflight) else {
        st.metrics.count_status(429);
        return too_busy(format!(
            "this frontend has {} requests in flight (--max-inflight); retry shortly",
            st.max_inflight
        ));
    };
    let r = match read_body(body, st.max_body).await {
        Ok(body) => proxy_inner(&st, ep, key, body, start).await,
        Err(e) => Err(e),
    };
    let mut resp = r.unwrap_or_else(IntoResponse::into_response);
    if resp.status() == StatusCode::TOO_MANY_REQUESTS {
        resp.headers_mut()
            .entry(header::RETRY_AFTER)
            .or_insert(HeaderValue::from_static("1"));
    }
    st.metrics.count_status(resp.status().as_u16());
    hold_until_sent(resp, slot)
}

/// 429 with `Retry-After`, OpenAI-style body.
fn too_busy(msg: String) -> Response {
    let mut r = ApiError::new(StatusCode::TOO_MANY_REQUESTS, msg).into_response();
    r.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    r
}

async fn proxy_inner(
    st: &Arc<ServeState>,
    ep: Endpoint,
    key: Option<KeyId>,
    body: Bytes,
    start: Instant,
) -> Result<Response, ApiError> {
    let p = parse_request(&body, ep)?;
    if let Some(KeyId(k)) = key {
        let tokens = u64::from(estimate_tokens(&p.prompt)) + u64::from(p.max_tokens.unwrap_or(0));
        let mut rl = st.rate_limits.lock().unwrap_or_else(|e| e.into_inner());
        if let Err(wait) = rl.check(k, tokens, st.now()) {
            let mut r = too_busy(format!(
                "rate limit of this API key reached (--rate-limit-rpm/--rate-limit-tpm); retry in {:.1} s",
                wait.as_secs_f64()
            ));
            r.headers_mut().insert(
                header::RETRY_AFTER,
                HeaderValue::from(wait.as_secs_f64().ceil().max(1.0) as u64),
            );
            return Ok(r);
        }
    }
    if let Some(field) = p.disagg.present {
        return Err(ApiError::bad(format!(
            "`{field}` is set by the router for prefill/decode disaggregation; clients may not send it"
        ))
        .with_param(field));
    }
    let disagg = st.is_disaggregated();
    let full = std::sync::atomic::AtomicUsize::new(0);
    let healthy = |role: &str| -> Vec<Arc<WorkerEntry>> {
        st.workers
            .read()
            .map(|ws| {
                ws.iter()
                    .filter(|w| w.spec.role == role && w.healthy.load(Ordering::Relaxed))
                    .filter(|w| {
                        let room = st.has_room(w);
                        full.fetch_add(usize::from(!room), Ordering::Relaxed);
                        room
                    })
                    .cloned()
                    .collect()
            })
            .unwrap_or_default()
    };
    let candidates = healthy(if disagg { "decode" } else { "aggregated" });
    if candidates.is_empty() && full.load(Ordering::Relaxed) > 0 {
        return Err(ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            format!(
                "every worker has {} requests in flight (--max-inflight-per-worker); retry shortly",
                st.max_inflight_per_worker
            ),
        ));
    }
    if candidates.is_empty() {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            if disagg {
                "no healthy decode worker is available (disaggregated deployment)"
            } else {
                "no healthy aggregated worker is available; add one with --worker URL or POST /v1/workers"
            },
        ));
    }
    if !st.serves_model(&p.model) {
        let known = st.models();
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!(
                "The model `{}` does not exist. Served: {}",
                p.model,
                known.join(", ")
            ),
        )
        .with_param("model"));
    }
    // Only cache-aware routing (and the P/D pair choice, which is cache-aware) reads block
    // hashes; the other policies get by with a token estimate, so text prompts are not
    // tokenized on the request path for them (the engine tokenizes anyway).
    let (n_tokens, hashes) = if st.needs_tokens || disagg {
        let tokens = st
            .tokenization
            .prompt_tokens_async(&p.prompt)
            .await
            .map_err(|e| ApiError::bad(e.to_string()))?;
        let hashes = st.hasher.hash(&tokens);
        (tokens.len() as u32, hashes)
    } else {
        (estimate_tokens(&p.prompt), Vec::new())
    };
    let req = Req {
        ep,
        body: &body,
        tokens: n_tokens,
        hashes: &hashes,
        stream: p.stream,
        start,
    };
    if disagg {
        let prefill = healthy("prefill");
        return match st.pd_protocol {
            PdProtocol::Vllm => proxy_vllm_pd(st, &req, &prefill, &candidates).await,
            PdProtocol::Sglang => proxy_sglang_pd(st, &req, &prefill, &candidates).await,
        };
    }
    let mut tried: Vec<u64> = Vec::new();
    let mut last_err = String::new();
    for attempt in 0..st.max_attempts {
        let pool = untried(&candidates, &tried);
        if pool.is_empty() {
            break;
        }
        let t_route = Instant::now();
        let (decision, guard) = st.route(&hashes, req.tokens, &pool)?;
        let route_us = t_route.elapsed().as_micros() as u64;
        let w = pick(&pool, decision.worker)?;
        let guard = st.book(guard, &w, &hashes);
        st.count_decision(decision.overlap_blocks(), attempt);
        tried.push(w.id);
        match st.send(&w, ep.path(), body.clone()).await {
            Ok(resp) => {
                let mut headers = HeaderMap::new();
                headers.insert(
                    "x-switchyard-overlap-blocks",
                    HeaderValue::from(decision.overlap_blocks()),
                );
                headers.insert("x-switchyard-route-us", HeaderValue::from(route_us));
                return Ok(relay(st, &req, resp, w.w, guard, None, headers));
            }
            Err(e) => last_err = e,
        }
    }
    Err(all_failed(tried.len(), &last_err))
}

/// Prompt tokens without a tokenizer (~4 bytes per token for text), for load accounting by
/// policies that do not look at the cache.
fn estimate_tokens(p: &crate::openai::Prompt) -> u32 {
    use crate::openai::Prompt;
    let n = match p {
        Prompt::Tokens(t) => t.len(),
        Prompt::Text(s) => s.len().div_ceil(4),
        Prompt::Chat(m) => m
            .iter()
            .map(|(r, c)| (r.len() + c.len()).div_ceil(4) + 4)
            .sum(),
    };
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// What the proxy paths share about one client request.
struct Req<'a> {
    ep: Endpoint,
    body: &'a Bytes,
    tokens: u32,
    hashes: &'a [u64],
    stream: bool,
    start: Instant,
}

fn untried(ws: &[Arc<WorkerEntry>], tried: &[u64]) -> Vec<Arc<WorkerEntry>> {
    ws.iter()
        .filter(|w| !tried.contains(&w.id) && w.healthy.load(Ordering::Relaxed))
        .cloned()
        .collect()
}

/// A routed destination: the worker and the DP rank the router chose on it.
#[derive(Clone)]
struct Target {
    w: Arc<WorkerEntry>,
    rank: u32,
}

impl std::ops::Deref for Target {
    type Target = WorkerEntry;
    fn deref(&self) -> &WorkerEntry {
        &self.w
    }
}

fn pick(pool: &[Arc<WorkerEntry>], key: WorkerKey) -> Result<Target, ApiError> {
    pool.iter()
        .find(|w| w.id == key.worker && key.dp_rank < w.ranks())
        .map(|w| Target {
            w: w.clone(),
            rank: key.dp_rank,
        })
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "router chose an unknown worker",
            )
        })
}

fn all_failed(attempts: usize, last_err: &str) -> ApiError {
    ApiError::new(
        StatusCode::BAD_GATEWAY,
        format!("all {attempts} attempt(s) failed before the first byte; last error: {last_err}"),
    )
}

/// Start streaming an upstream response to the client. `hold` (a prefill worker's load) is
/// released at the first byte.
fn relay(
    st: &Arc<ServeState>,
    req: &Req<'_>,
    resp: reqwest::Response,
    w: Arc<WorkerEntry>,
    guard: Booking,
    hold: Option<Booking>,
    mut headers: HeaderMap,
) -> Response {
    let status = resp.status();
    if let Some(ct) = resp.headers().get(header::CONTENT_TYPE) {
        headers.insert(header::CONTENT_TYPE, ct.clone());
    }
    if st.expose_urls
        && let Ok(v) = HeaderValue::from_str(&w.spec.url)
    {
        headers.insert("x-switchyard-worker", v);
    }
    headers.insert("x-switchyard-worker-id", HeaderValue::from(w.id));
    headers.insert(
        "x-switchyard-upstream-ms",
        HeaderValue::from(req.start.elapsed().as_millis() as u64),
    );
    let relay = Relay {
        upstream: Box::pin(resp.bytes_stream()),
        guard: Some(guard),
        hold,
        first: true,
        start: req.start,
        st: st.clone(),
        worker: w,
        sse: req.stream,
        ok: status.is_success(),
        done: false,
        at_boundary: true,
    };
    let body = stream::unfold(relay, |mut r| async move {
        let item = r.next().await?;
        Some((Ok::<_, std::convert::Infallible>(item), r))
    });
    let mut out = Response::new(Body::from_stream(body));
    *out.status_mut() = status;
    *out.headers_mut() = headers;
    out
}

fn set_placement(
    st: &ServeState,
    headers: &mut HeaderMap,
    prefill: Option<&WorkerEntry>,
    local: bool,
) {
    headers.insert(
        "x-switchyard-placement",
        HeaderValue::from_static(if local { "local" } else { "remote" }),
    );
    if let Some(p) = prefill {
        headers.insert("x-switchyard-prefill-worker-id", HeaderValue::from(p.id));
        if st.expose_urls
            && let Ok(v) = HeaderValue::from_str(&p.spec.url)
        {
            headers.insert("x-switchyard-prefill-worker", v);
        }
    }
}

/// A JSON body with some fields replaced.
fn with_fields(body: &Bytes, set: &[(&str, Value)], remove: &[&str]) -> Result<Bytes, ApiError> {
    let mut v: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad(format!("invalid JSON body: {e}")))?;
    if let Some(o) = v.as_object_mut() {
        for k in remove {
            o.remove(*k);
        }
        for (k, val) in set {
            o.insert((*k).to_string(), val.clone());
        }
    }
    Ok(Bytes::from(serde_json::to_vec(&v).unwrap_or_default()))
}

/// vLLM's P/D flow: prefill (`max_tokens: 1`, `kv_transfer_params.do_remote_decode`), then
/// the original request plus the returned `kv_transfer_params` to the decode worker, whose
/// stream goes to the client. Below the local-prefill threshold the decode worker gets the
/// request as is and prefills it itself.
async fn proxy_vllm_pd(
    st: &Arc<ServeState>,
    req: &Req<'_>,
    prefill: &[Arc<WorkerEntry>],
    decode: &[Arc<WorkerEntry>],
) -> Result<Response, ApiError> {
    let (d, guards) = st.route_pair(req.hashes, req.tokens, prefill, decode)?;
    st.count_decision(d.decode.overlap_blocks(), 0);
    let mut dw = pick(decode, d.decode.worker)?;
    let mut decode_guard = st.book(guards.decode, &dw, req.hashes);
    let mut body = req.body.clone();
    let mut prefill_hold = None;
    let mut prefill_worker = None;
    if let Some(pd) = &d.prefill {
        st.metrics.pd_remote.fetch_add(1, Ordering::Relaxed);
        let t_prefill = Instant::now();
        let mut pw = pick(prefill, pd.worker)?;
        let mut pguard = guards.prefill.map(|g| st.book(g, &pw, req.hashes));
        let prefill_body = with_fields(
            req.body,
            &[
                ("max_tokens", json!(1)),
                ("stream", json!(false)),
                ("kv_transfer_params", crate::pd::prefill_request_params()),
            ],
            &["stream_options", "max_completion_tokens"],
        )?;
        let mut tried = vec![pw.id];
        let params = loop {
            match st.send(&pw, req.ep.path(), prefill_body.clone()).await {
                Ok(r) if r.status().is_success() => {
                    match tokio::time::timeout(st.idle_timeout, r.json::<Value>())
                        .await
                        .map_err(|_| "no data within --upstream-idle-timeout".to_string())
                        .and_then(|r| r.map_err(|e| e.to_string()))
                    {
                        Ok(v) => match v.get("kv_transfer_params") {
                            Some(k) if k.is_object() => break k.clone(),
                            _ => {
                                st.metrics
                                    .pd_prefill_failures
                                    .fetch_add(1, Ordering::Relaxed);
                                return Err(ApiError::new(
                                    StatusCode::BAD_GATEWAY,
                                    format!(
                                        "prefill worker {} answered without kv_transfer_params \
                                     (is it running with a KV connector, e.g. --kv-transfer-config NixlConnector?)",
                                        st.name(&pw)
                                    ),
                                ));
                            }
                        },
                        Err(e) => {
                            st.metrics
                                .pd_prefill_failures
                                .fetch_add(1, Ordering::Relaxed);
                            return Err(ApiError::new(
                                StatusCode::BAD_GATEWAY,
                                format!(
                                    "prefill worker {}: unreadable response: {e}",
                                    st.name(&pw)
                                ),
                            ));
                        }
                    }
                }
                // A client error (bad request, prompt too long) is the client's answer.
                Ok(r) => return Err(passthrough_error(r).await),
                Err(e) => {
                    st.metrics
                        .pd_prefill_failures
                        .fetch_add(1, Ordering::Relaxed);
                    let retry = untried(prefill, &tried);
                    if tried.len() as u32 >= st.max_attempts || retry.is_empty() {
                        return Err(ApiError::new(
                            StatusCode::BAD_GATEWAY,
                            format!(
                                "prefill failed on {} worker(s), the decode side was not started; last error: {e}",
                                tried.len()
                            ),
                        ));
                    }
                    let (rd, g) = st.route(req.hashes, req.tokens, &retry)?;
                    st.metrics.retries.fetch_add(1, Ordering::Relaxed);
                    pw = pick(&retry, rd.worker)?;
                    pguard = Some(st.book(g, &pw, req.hashes));
                    tried.push(pw.id);
                }
            }
        };
        st.metrics
            .pd_prefill
            .observe(t_prefill.elapsed().as_secs_f64());
        if let Some(g) = &pguard {
            g.prefill_done();
        }
        // Its KV stays allocated until the decode worker has pulled it: keep the load until
        // the decode side's first byte.
        prefill_hold = pguard;
        prefill_worker = Some(pw);
        body = with_fields(req.body, &[("kv_transfer_params", params)], &[])?;
    } else {
        st.metrics.pd_local.fetch_add(1, Ordering::Relaxed);
    }
    let mut tried = vec![dw.id];
    loop {
        match st.send(&dw, req.ep.path(), body.clone()).await {
            Ok(resp) => {
                let mut headers = HeaderMap::new();
                set_placement(
                    st,
                    &mut headers,
                    prefill_worker.as_deref(),
                    d.prefill.is_none(),
                );
                headers.insert(
                    "x-switchyard-overlap-blocks",
                    HeaderValue::from(d.decode.overlap_blocks()),
                );
                return Ok(relay(
                    st,
                    req,
                    resp,
                    dw.w,
                    decode_guard,
                    prefill_hold,
                    headers,
                ));
            }
            Err(e) => {
                // The prefill's KV is still held: another decode worker can pull it.
                let retry = untried(decode, &tried);
                if tried.len() as u32 >= st.max_attempts || retry.is_empty() {
                    return Err(all_failed(tried.len(), &e));
                }
                let (rd, g) = st.route(req.hashes, req.tokens, &retry)?;
                st.metrics.retries.fetch_add(1, Ordering::Relaxed);
                dw = pick(&retry, rd.worker)?;
                decode_guard = st.book(g, &dw, req.hashes);
                tried.push(dw.id);
            }
        }
    }
}

/// SGLang's P/D flow: the same request to the prefill and the decode worker at once, joined by
/// a random bootstrap room; the decode response is streamed. A prefill failure before the
/// decode side answers cancels the decode request.
async fn proxy_sglang_pd(
    st: &Arc<ServeState>,
    req: &Req<'_>,
    prefill: &[Arc<WorkerEntry>],
    decode: &[Arc<WorkerEntry>],
) -> Result<Response, ApiError> {
    let mut tried_p: Vec<u64> = Vec::new();
    let mut tried_d: Vec<u64> = Vec::new();
    let mut last_err = String::new();
    for attempt in 0..st.max_attempts {
        let pool_p = untried(prefill, &tried_p);
        let pool_d = untried(decode, &tried_d);
        if pool_d.is_empty() {
            break;
        }
        let (d, guards) = st.route_pair(req.hashes, req.tokens, &pool_p, &pool_d)?;
        st.count_decision(d.decode.overlap_blocks(), attempt);
        let dw = pick(&pool_d, d.decode.worker)?;
        let dguard = st.book(guards.decode, &dw, req.hashes);
        let Some(pdec) = &d.prefill else {
            // Local prefill: the decode worker gets the request as is.
            st.metrics.pd_local.fetch_add(1, Ordering::Relaxed);
            tried_d.push(dw.id);
            match st.send(&dw, req.ep.path(), req.body.clone()).await {
                Ok(resp) => {
                    let mut headers = HeaderMap::new();
                    set_placement(st, &mut headers, None, true);
                    return Ok(relay(st, req, resp, dw.w, dguard, None, headers));
                }
                Err(e) => {
                    last_err = e;
                    continue;
                }
            }
        };
        st.metrics.pd_remote.fetch_add(1, Ordering::Relaxed);
        let pw = pick(&pool_p, pdec.worker)?;
        let pguard = guards.prefill.map(|g| st.book(g, &pw, req.hashes));
        let (host, port) = bootstrap_of(&pw);
        let room = {
            let mut rng = st.rng.lock().unwrap_or_else(|e| e.into_inner());
            rand::Rng::random_range(&mut *rng, 0..(1u64 << 63))
        };
        let body = with_fields(
            req.body,
            &[
                ("bootstrap_host", json!(host)),
                ("bootstrap_port", json!(port)),
                ("bootstrap_room", json!(room)),
            ],
            &[],
        )?;
        let t_prefill = Instant::now();
        let prefill_task = {
            let st = st.clone();
            let pw = pw.clone();
            let body = body.clone();
            let path = req.ep.path();
            tokio::spawn(async move {
                let r = match st.send(&pw, path, body).await {
                    Ok(r) if r.status().is_success() => {
                        // Drain: the prefill's own output is not the client's.
                        r.bytes()
                            .await
                            .map(|_| ())
                            .map_err(|e| format!("prefill worker {}: {e}", st.name(&pw)))
                    }
                    Ok(r) => Err(format!(
                        "prefill worker {} answered {}",
                        st.name(&pw),
                        r.status()
                    )),
                    Err(e) => Err(e),
                };
                if r.is_ok() {
                    st.metrics
                        .pd_prefill
                        .observe(t_prefill.elapsed().as_secs_f64());
                } else {
                    st.metrics
                        .pd_prefill_failures
                        .fetch_add(1, Ordering::Relaxed);
                }
                drop(pguard);
                r
            })
        };
        tried_d.push(dw.id);
        let dw2 = dw.clone();
        let decode_fut = st.send(&dw2, req.ep.path(), body);
        tokio::pin!(decode_fut);
        let mut prefill_task = prefill_task;
        let mut prefill_result: Option<Result<(), String>> = None;
        let decode_resp = loop {
            tokio::select! {
                r = &mut prefill_task, if prefill_result.is_none() => {
                    let r = r.unwrap_or_else(|e| Err(format!("prefill task: {e}")));
                    if let Err(e) = &r {
                        // The decode side is cancelled by dropping its request.
                        tried_p.push(pw.id);
                        last_err = format!("prefill failed ({e}); the decode request was cancelled");
                        break None;
                    }
                    prefill_result = Some(r);
                }
                r = &mut decode_fut => break Some(r),
            }
        };
        let Some(decode_resp) = decode_resp else {
            continue;
        };
        match decode_resp {
            Ok(resp) => {
                let mut headers = HeaderMap::new();
                set_placement(st, &mut headers, Some(&pw), false);
                let abort = prefill_result.is_none().then(|| {
                    // Still prefilling: if it fails now, end the client's stream with an error.
                    let (tx, rx) = tokio::sync::oneshot::channel();
                    tokio::spawn(async move {
                        if let Ok(Err(e)) = prefill_task.await {
                            let _ = tx.send(e);
                        }
                    });
                    rx
                });
                let mut out = relay(st, req, resp, dw.w, dguard, None, headers);
                if let Some(rx) = abort
                    && req.stream
                {
                    out = out.map(|b| with_abort(b, rx));
                }
                return Ok(out);
            }
            Err(e) => {
                // The decode side often fails *because* the prefill did (its KV pull): if the
                // prefill has failed too, report that, the root cause.
                last_err = e;
                if prefill_result.is_none()
                    && let Ok(Ok(Err(pe))) =
                        tokio::time::timeout(Duration::from_secs(1), &mut prefill_task).await
                {
                    tried_p.push(pw.id);
                    last_err = format!("prefill failed ({pe}); the decode side failed: {last_err}");
                }
                prefill_task.abort();
            }
        }
    }
    Err(all_failed(tried_d.len(), &last_err))
}

/// Where an SGLang decode worker reaches a prefill worker's bootstrap server.
fn bootstrap_of(w: &WorkerEntry) -> (String, u16) {
    let rest = w
        .spec
        .url
        .split_once("://")
        .map_or(w.spec.url.as_str(), |x| x.1);
    let hostport = rest.split('/').next().unwrap_or(rest);
    let (host, port) = match hostport.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || hostport.starts_with('[') => {
            (h.trim_matches(['[', ']']).to_string(), p.parse().ok())
        }
        _ => (hostport.to_string(), None),
    };
    let default = if w.spec.url.starts_with("https") {
        443
    } else {
        80
    };
    (host, w.spec.bootstrap_port.or(port).unwrap_or(default))
}

/// An upstream 4xx, passed on to the client.
async fn passthrough_error(r: reqwest::Response) -> ApiError {
    let status = StatusCode::from_u16(r.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
    let v: Value = r.json().await.unwrap_or(Value::Null);
    let msg = v["error"]["message"]
        .as_str()
        .map_or_else(|| format!("upstream answered {status}"), String::from);
    ApiError::new(status, msg)
}

/// End a streamed body with an SSE error event if `rx` fires first (SGLang: the prefill failed
/// while the decode side was already streaming). A dropped sender means the prefill succeeded.
fn with_abort(body: Body, rx: tokio::sync::oneshot::Receiver<String>) -> Body {
    let s = body.into_data_stream();
    let out = stream::unfold((s, Some(rx), false), |(mut s, rx, done)| async move {
        if done {
            return None;
        }
        let Some(mut r) = rx else {
            return s.next().await.map(|i| (i, (s, None, false)));
        };
        tokio::select! {
            biased;
            e = &mut r => match e {
                Ok(msg) => {
                    let err = json!({"error": {"message": format!("prefill failed: {msg}"),
                        "type": "server_error", "param": null, "code": 502}});
                    Some((Ok(Bytes::from(format!("\n\ndata: {err}\n\n"))), (s, None, true)))
                }
                Err(_) => s.next().await.map(|i| (i, (s, None, false))),
            },
            item = s.next() => item.map(|i| (i, (s, Some(r), false))),
        }
    });
    Body::from_stream(out)
}

/// Consecutive 5xx answers after which a worker is taken out until its next health check.
const MAX_CONSECUTIVE_FAILURES: u64 = 3;

type ByteStream = std::pin::Pin<Box<dyn Stream<Item = reqwest::Result<Bytes>> + Send>>;

/// Streams the upstream body to the client, updating load and latency metrics.
struct Relay {
    upstream: ByteStream,
    guard: Option<Booking>,
    /// A prefill worker's load, held until the decode side's first byte.
    hold: Option<Booking>,
    first: bool,
    start: Instant,
    st: Arc<ServeState>,
    worker: Arc<WorkerEntry>,
    sse: bool,
    ok: bool,
    done: bool,
    /// The bytes sent so far end at an SSE event boundary.
    at_boundary: bool,
}

impl Relay {
    async fn next(&mut self) -> Option<Bytes> {
        if self.done {
            return None;
        }
        let idle = self.st.idle_timeout;
        let next = match tokio::time::timeout(idle, self.upstream.next()).await {
            Ok(n) => n.map(|r| r.map_err(|e| e.to_string())),
            Err(_) => {
                self.st
                    .metrics
                    .upstream_timeouts
                    .fetch_add(1, Ordering::Relaxed);
                Some(Err(format!(
                    "no data for {:.0} s (--upstream-idle-timeout)",
                    idle.as_secs_f64()
                )))
            }
        };
        match next {
            Some(Ok(b)) => {
                if self.first {
                    self.first = false;
                    self.hold = None;
                    if let Some(g) = &self.guard {
                        g.prefill_done();
                    }
                    if self.ok {
                        self.st
                            .metrics
                            .ttft
                            .observe(self.start.elapsed().as_secs_f64());
                    }
                }
                if !b.is_empty() {
                    self.at_boundary = b.ends_with(b"\n\n");
                }
                Some(b)
            }
            Some(Err(e)) => {
                self.done = true;
                self.guard = None;
                self.hold = None;
                self.worker.errors.fetch_add(1, Ordering::Relaxed);
                self.st
                    .metrics
                    .upstream_errors
                    .fetch_add(1, Ordering::Relaxed);
                self.st
                    .metrics
                    .midstream_errors
                    .fetch_add(1, Ordering::Relaxed);
                // Mark down now; the health check brings it back if it recovers.
                self.worker.healthy.store(false, Ordering::Relaxed);
                if self.ok {
                    // Counted as 200 when the answer started; it ended as a failure.
                    self.st.metrics.recount(200, 502);
                }
                let msg = json!({"error": {
                    "message": format!("upstream worker {} failed mid-response: {e}", self.st.name(&self.worker)),
                    "type": "server_error", "param": null, "code": 502}});
                let sep = if self.at_boundary { "" } else { "\n\n" };
                Some(Bytes::from(if self.sse {
                    format!("{sep}data: {msg}\n\n")
                } else {
                    msg.to_string()
                }))
            }
            None => {
                self.done = true;
                self.guard = None;
                if self.ok {
                    self.st
                        .metrics
                        .e2e
                        .observe(self.start.elapsed().as_secs_f64());
                }
                None
            }
        }
    }
}

// ----- metrics -------------------------------------------------------------------------------

/// Cumulative Prometheus histogram with fixed buckets (seconds).
struct Histogram {
    inner: Mutex<(Vec<u64>, f64, u64)>,
}

const BUCKETS: [f64; 16] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0,
];

impl Default for Histogram {
    fn default() -> Self {
        Self {
            inner: Mutex::new((vec![0; BUCKETS.len()], 0.0, 0)),
        }
    }
}

impl Histogram {
    fn observe(&self, v: f64) {
        if let Ok(mut g) = self.inner.lock() {
            if let Some(i) = BUCKETS.iter().position(|&b| v <= b) {
                g.0[i] += 1;
            }
            g.1 += v;
            g.2 += 1;
        }
    }
    fn render(&self, out: &mut String, name: &str, help: &str) {
        let Ok(g) = self.inner.lock() else { return };
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        let mut cum = 0;
        for (b, c) in BUCKETS.iter().zip(&g.0) {
            cum += c;
            let _ = writeln!(out, "{name}_bucket{{le=\"{b}\"}} {cum}");
        }
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {}", g.2);
        let _ = writeln!(out, "{name}_sum {}\n{name}_count {}", g.1, g.2);
    }
}

#[derive(Default)]
struct Metrics {
    by_status: Mutex<FxHashMap<u16, u64>>,
    ttft: Histogram,
    e2e: Histogram,
    event_lag: Histogram,
    decisions: AtomicU64,
    overlap_blocks: AtomicU64,
    retries: AtomicU64,
    upstream_errors: AtomicU64,
    midstream_errors: AtomicU64,
    upstream_timeouts: AtomicU64,
    block_size_mismatches: AtomicU64,
    workers_dropped: AtomicU64,
    events: AtomicU64,
    event_batches: AtomicU64,
    event_errors: AtomicU64,
    event_issues: AtomicU64,
    seq_gaps: AtomicU64,
    /// Replay requests sent, failed (no answer), batches they delivered.
    replays: AtomicU64,
    replay_failures: AtomicU64,
    replayed_batches: AtomicU64,
    /// Live batches already applied from a replay.
    duplicates: AtomicU64,
    /// Engines seen restarting (sequence numbers reused with other content).
    engine_restarts: AtomicU64,
    /// Disaggregated requests by where they were prefilled.
    pd_remote: AtomicU64,
    pd_local: AtomicU64,
    pd_prefill_failures: AtomicU64,
    /// Prefill phase (vLLM: prefill response; SGLang: prefill stream end).
    pd_prefill: Histogram,
}

impl Metrics {
    fn count_status(&self, s: u16) {
        if let Ok(mut m) = self.by_status.lock() {
            *m.entry(s).or_default() += 1;
        }
    }

    /// Move one request from status `from` to `to` (an answer that failed mid-stream).
    fn recount(&self, from: u16, to: u16) {
        if let Ok(mut m) = self.by_status.lock() {
            if let Some(n) = m.get_mut(&from) {
                *n = n.saturating_sub(1);
            }
            *m.entry(to).or_default() += 1;
        }
    }
}

async fn metrics(State(st): State<Arc<ServeState>>) -> Response {
    let m = &st.metrics;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# HELP switchyard_requests_total Requests answered, by HTTP status.\n# TYPE switchyard_requests_total counter"
    );
    if let Ok(s) = m.by_status.lock() {
        let mut v: Vec<_> = s.iter().collect();
        v.sort();
        for (code, n) in v {
            let _ = writeln!(out, "switchyard_requests_total{{status=\"{code}\"}} {n}");
        }
    }
    m.ttft.render(
        &mut out,
        "switchyard_ttft_seconds",
        "Time to the first upstream byte.",
    );
    m.e2e.render(
        &mut out,
        "switchyard_e2e_seconds",
        "Time to the last upstream byte.",
    );
    m.pd_prefill.render(
        &mut out,
        "switchyard_pd_prefill_seconds",
        "Disaggregated requests: time to the prefill worker's response.",
    );
    m.event_lag.render(
        &mut out,
        "switchyard_kv_event_lag_seconds",
        "Receive time minus the batch's publish timestamp.",
    );
    let counter = |out: &mut String, name: &str, help: &str, labels: &str, v: u64| {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} counter\n{name}{labels} {v}"
        );
    };
    let policy = format!("{{policy=\"{}\"}}", st.policy);
    let ld = |a: &AtomicU64| a.load(Ordering::Relaxed);
    counter(
        &mut out,
        "switchyard_routing_decisions_total",
        "Routing decisions.",
        &policy,
        ld(&m.decisions),
    );
    counter(
        &mut out,
        "switchyard_routing_overlap_blocks_total",
        "Cached prefix blocks on the chosen workers.",
        &policy,
        ld(&m.overlap_blocks),
    );
    let _ = writeln!(
        out,
        "# HELP switchyard_pd_requests_total Disaggregated requests by prefill placement (local: conditional disaggregation kept the prefill on the decode worker).\n# TYPE switchyard_pd_requests_total counter\nswitchyard_pd_requests_total{{placement=\"remote\"}} {}\nswitchyard_pd_requests_total{{placement=\"local\"}} {}",
        ld(&m.pd_remote),
        ld(&m.pd_local)
    );
    counter(
        &mut out,
        "switchyard_pd_prefill_failures_total",
        "Prefill requests that failed (connection, 5xx, missing kv_transfer_params).",
        "",
        ld(&m.pd_prefill_failures),
    );
    counter(
        &mut out,
        "switchyard_retries_total",
        "Attempts after the first.",
        "",
        ld(&m.retries),
    );
    counter(
        &mut out,
        "switchyard_upstream_errors_total",
        "Upstream failures (connect, 5xx, mid-stream).",
        "",
        ld(&m.upstream_errors),
    );
    counter(
        &mut out,
        "switchyard_upstream_midstream_errors_total",
        "Upstream failures after the first byte.",
        "",
        ld(&m.midstream_errors),
    );
    counter(
        &mut out,
        "switchyard_upstream_timeouts_total",
        "Upstream answers that missed --upstream-first-byte-timeout or --upstream-idle-timeout.",
        "",
        ld(&m.upstream_timeouts),
    );
    counter(
        &mut out,
        "switchyard_workers_dropped_total",
        "Admin-API workers dropped after failing health checks for --drop-unhealthy-after.",
        "",
        ld(&m.workers_dropped),
    );
    counter(
        &mut out,
        "switchyard_kv_events_total",
        "KV events received.",
        "",
        ld(&m.events),
    );
    counter(
        &mut out,
        "switchyard_kv_event_batches_total",
        "KV event batches received.",
        "",
        ld(&m.event_batches),
    );
    counter(
        &mut out,
        "switchyard_kv_event_errors_total",
        "Undecodable KV event messages or block-size mismatches.",
        "",
        ld(&m.event_errors),
    );
    counter(
        &mut out,
        "switchyard_kv_block_size_mismatch_total",
        "KV events in blocks of another size than the router hashes (a configuration error).",
        "",
        ld(&m.block_size_mismatches),
    );
    counter(
        &mut out,
        "switchyard_kv_event_translate_issues_total",
        "BlockStored events with unknown parents or missing tokens.",
        "",
        ld(&m.event_issues),
    );
    counter(
        &mut out,
        "switchyard_kv_event_seq_gaps_total",
        "Sequence gaps in workers' KV-event streams (repaired by replay where offered, else the worker's entries are cleared).",
        "",
        ld(&m.seq_gaps),
    );
    counter(
        &mut out,
        "switchyard_kv_event_replays_total",
        "Replay requests to workers' KV-event replay sockets (start, reconnect, gap, restart).",
        "",
        ld(&m.replays),
    );
    counter(
        &mut out,
        "switchyard_kv_event_replay_failures_total",
        "Replay requests without an answer (timeout, refused, malformed).",
        "",
        ld(&m.replay_failures),
    );
    counter(
        &mut out,
        "switchyard_kv_event_replayed_batches_total",
        "Event batches received through replay.",
        "",
        ld(&m.replayed_batches),
    );
    counter(
        &mut out,
        "switchyard_kv_event_duplicates_total",
        "Live event batches skipped because a replay had delivered them.",
        "",
        ld(&m.duplicates),
    );
    counter(
        &mut out,
        "switchyard_engine_restarts_total",
        "Engine restarts recognised in KV-event streams (the worker's entries are rebuilt).",
        "",
        ld(&m.engine_restarts),
    );
    let (blocks, healthy, total) = {
        let r = st.router.lock();
        let b = r.index().exact().num_blocks() + r.index().predicted().num_blocks();
        drop(r);
        let ws = st.workers.read().map(|w| w.clone()).unwrap_or_default();
        let h = ws
            .iter()
            .filter(|w| w.healthy.load(Ordering::Relaxed))
            .count();
        (b, h, ws.len())
    };
    let _ = writeln!(
        out,
        "# HELP switchyard_index_blocks Blocks in the KV index.\n# TYPE switchyard_index_blocks gauge\nswitchyard_index_blocks {blocks}\n# HELP switchyard_workers Workers by health.\n# TYPE switchyard_workers gauge\nswitchyard_workers{{healthy=\"true\"}} {healthy}\nswitchyard_workers{{healthy=\"false\"}} {}",
        total - healthy
    );
    render_cluster_metrics(&st, &mut out);
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out).into_response()
}

fn render_cluster_metrics(st: &ServeState, out: &mut String) {
    let c = &st.cluster;
    let state_gauge = |out: &mut String, name: &str, help: &str, h: &LinkHealth| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
        for s in [
            LinkState::Connecting,
            LinkState::Connected,
            LinkState::Degraded,
        ] {
            let _ = writeln!(
                out,
                "{name}{{state=\"{}\"}} {}",
                s.as_str(),
                u8::from(h.state == s)
            );
        }
        let _ = writeln!(
            out,
            "# HELP {name}_since_seconds Unix time the current state was entered.\n# TYPE {name}_since_seconds gauge\n{name}_since_seconds {}",
            h.since_unix()
        );
        let _ = writeln!(
            out,
            "# HELP {name}_connects_total Successful (re)connections.\n# TYPE {name}_connects_total counter\n{name}_connects_total {}",
            h.connects
        );
    };
    let ld = |a: &AtomicU64| a.load(Ordering::Relaxed);
    let _ = writeln!(
        out,
        "# HELP switchyard_warm 1 once the replica is warm (membership read, KV events subscribed and replayed).\n# TYPE switchyard_warm gauge\nswitchyard_warm {}",
        u8::from(st.is_warm())
    );
    if let Some(h) = &c.etcd {
        let h = h.borrow().clone();
        state_gauge(
            out,
            "switchyard_discovery_state",
            "etcd discovery link state (1 for the current one; degraded: serving the last known membership).",
            &h,
        );
        let _ = writeln!(
            out,
            "# HELP switchyard_discovered_workers Workers currently known from etcd.\n# TYPE switchyard_discovered_workers gauge\nswitchyard_discovered_workers {}\n# HELP switchyard_discovery_changes_total Workers joined and left through etcd.\n# TYPE switchyard_discovery_changes_total counter\nswitchyard_discovery_changes_total{{change=\"join\"}} {}\nswitchyard_discovery_changes_total{{change=\"leave\"}} {}",
            st.lock_discovered().len(),
            ld(&c.joins),
            ld(&c.leaves)
        );
    }
    if let Some(f) = &c.fanout {
        let h = f.health().borrow().clone();
        state_gauge(
            out,
            "switchyard_fanout_state",
            "NATS fan-out link state (1 for the current one; degraded: routing on local state).",
            &h,
        );
        let s = f.stats();
        let _ = writeln!(
            out,
            "# HELP switchyard_fanout_notes_total Fan-out notes by outcome.\n# TYPE switchyard_fanout_notes_total counter"
        );
        for (k, v) in [
            ("published", s.published),
            ("dropped", s.dropped),
            ("received", s.received),
            ("own_ignored", s.own_ignored),
            ("decode_error", s.decode_errors),
            ("prediction_dropped", s.predictions_dropped),
        ] {
            let _ = writeln!(out, "switchyard_fanout_notes_total{{outcome=\"{k}\"}} {v}");
        }
        let _ = writeln!(
            out,
            "# HELP switchyard_fanout_seq_gaps_total Gaps in peers' load-note sequences (repaired by their next snapshot).\n# TYPE switchyard_fanout_seq_gaps_total counter\nswitchyard_fanout_seq_gaps_total {}",
            s.seq_gaps
        );
        let _ = writeln!(
            out,
            "# HELP switchyard_fanout_predictions_applied_total Peers' predictions folded into the approximate index (unknown_worker: not in this replica's fleet).\n# TYPE switchyard_fanout_predictions_applied_total counter\nswitchyard_fanout_predictions_applied_total{{worker=\"known\"}} {}\nswitchyard_fanout_predictions_applied_total{{worker=\"unknown\"}} {}",
            ld(&c.predictions_applied),
            ld(&c.predictions_unknown_worker)
        );
        let peers = f.live_peers().len();
        let remote: u64 = f
            .remote_inflight_all()
            .iter()
            .map(|(_, _, n)| u64::from(*n))
            .sum();
        let _ = writeln!(
            out,
            "# HELP switchyard_fanout_peers Other replicas heard from within the expiry window.\n# TYPE switchyard_fanout_peers gauge\nswitchyard_fanout_peers {peers}\n# HELP switchyard_fanout_peer_inflight Requests the other replicas have in flight on this fleet.\n# TYPE switchyard_fanout_peer_inflight gauge\nswitchyard_fanout_peer_inflight {remote}"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn engine_load_from_prometheus_pages() {
        let vllm = "# HELP vllm:num_requests_running x\n\
            vllm:num_requests_running{engine=\"0\",model_name=\"m\"} 3.0\n\
            vllm:num_requests_running{engine=\"1\",model_name=\"m\"} 2.0\n\
            vllm:num_requests_running_total 99\n\
            vllm:num_requests_waiting{engine=\"0\",model_name=\"m\"} 4\n\
            vllm:kv_cache_usage_perc{engine=\"0\",model_name=\"m\"} 0.25\n\
            vllm:cache_config_info{block_size=\"16\",num_gpu_blocks=\"1000\"} 1.0\n";
        let l = parse_engine_load(vllm, 16).unwrap();
        assert_eq!((l.running_requests, l.waiting_requests), (5, 4));
        assert_eq!(l.active_blocks, 250);
        assert_eq!(l.prefill_tokens, None);
        let sg = "sglang:num_running_reqs{model_name=\"m\"} 7\nsglang:num_queue_reqs{model_name=\"m\"} 1\nsglang:num_used_tokens{model_name=\"m\"} 3200\n";
        let l = parse_engine_load(sg, 16).unwrap();
        assert_eq!(
            (l.running_requests, l.waiting_requests, l.active_blocks),
            (7, 1, 200)
        );
        let sy = "switchyard_worker_num_requests_running 2\nswitchyard_worker_num_requests_waiting 1\n\
            switchyard_worker_kv_blocks_total 4096\nswitchyard_worker_kv_cache_usage_ratio 0.5\n\
            switchyard_worker_num_prefill_tokens_pending 300\n";
        let l = parse_engine_load(sy, 16).unwrap();
        assert_eq!(
            (l.running_requests, l.waiting_requests, l.active_blocks),
            (2, 1, 2048)
        );
        assert_eq!(l.prefill_tokens, Some(300));
        assert_eq!(parse_engine_load("up 1\nvllm:other 3\n", 16), None);
        assert_eq!(
            parse_engine_load("vllm:num_requests_running NaN\n", 16),
            None
        );
    }

    #[test]
    fn worker_specs() {
        let s: WorkerSpec = "http://h:8001/,kv-events=tcp://h:5557,role=aggregated"
            .parse()
            .unwrap();
        assert_eq!(s.url, "http://h:8001");
        assert_eq!(s.kv_events.as_deref(), Some("tcp://h:5557"));
        assert!("h:8001".parse::<WorkerSpec>().is_err());
        assert!("http://h,role=boss".parse::<WorkerSpec>().is_err());
        assert!("http://h,foo".parse::<WorkerSpec>().is_err());
        let s: WorkerSpec = "http://h:8001,kv-events=tcp://h:5557,replay=tcp://h:5558"
            .parse()
            .unwrap();
        assert_eq!(s.kv_events_replay.as_deref(), Some("tcp://h:5558"));
        // Replay without the stream it repairs, or not over TCP: refused with the reason.
        let e = "http://h,replay=tcp://h:5558"
            .parse::<WorkerSpec>()
            .unwrap_err();
        assert!(e.contains("needs kv-events"), "{e}");
        assert!(
            "http://h,kv-events=tcp://h:1,replay=h:2"
                .parse::<WorkerSpec>()
                .is_err()
        );
    }
}
