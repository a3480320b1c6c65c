//! `switchyard worker`: one simulated engine replica behind vLLM's OpenAI-compatible HTTP API,
//! publishing vLLM-format KV events over ZMQ.
//!
//! One task owns the [`Engine`] and drives it in real time: it runs a step, sleeps until the
//! step's simulated end (divided by `--speedup`), then delivers that step's tokens to the
//! requests' response streams and publishes its KV events. Commands (admit, abort) are handled
//! while it sleeps, so a new request joins the next step, as in a real continuous-batching
//! engine.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use clap::{Args, ValueEnum};
use futures_util::stream;
use rustc_hash::{FxHashMap, FxHashSet};
use serde_json::json;
use switchyard_cluster::{
    DEFAULT_PREFIX, RegisterArgs, RegisterConfig, Registration, WorkerRecord,
};
use switchyard_engine::{
    Catalog, Engine, EngineConfig, EngineLoad, EngineStats, FinishReason, Request, Role,
};
use switchyard_kv::wire::{WireBatch, WireEncoding, WireEvent, encode_batch};
use switchyard_kv::{BlockHasher, KvEvent};
use switchyard_sim::network::Network;
use tokio::sync::{mpsc, oneshot};

use crate::auth::{Keys, Secret, require_key};
use crate::events::{EventPublisher, PublisherConfig, start_publisher};
use crate::openai::{ApiError, Endpoint, ParsedRequest, parse_request, read_body};
use crate::pd::{self, PullInfo, RemoteKv};
use crate::tokenizer::{Tokenization, filler_piece, filler_text};

/// KV-event payload encoding on the wire.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum EventEncoding {
    /// msgspec array_like structs (vLLM before #42892; most consumers).
    #[default]
    Positional,
    /// Tagged maps `{"type": "BlockStored", ...}` (newer vLLM, SGLang).
    Map,
}

impl From<EventEncoding> for WireEncoding {
    fn from(e: EventEncoding) -> Self {
        match e {
            EventEncoding::Positional => WireEncoding::Positional,
            EventEncoding::Map => WireEncoding::Map,
        }
    }
}

/// Run a simulated engine replica behind a vLLM-compatible OpenAI HTTP API.
#[derive(Args, Clone, Debug)]
pub struct WorkerArgs {
    /// Address to listen on.
    #[arg(long, default_value = "0.0.0.0")]
    pub host: String,
    /// HTTP port.
    #[arg(long, default_value_t = 8001)]
    pub port: u16,
    /// Engine configuration file (TOML: gpu, model, tp, engine, block_size, max_num_seqs, ...;
    /// the `[engine]` table format of deployment files). Flags below override it.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// GPU from the catalog (e.g. H200, H100, B200, GB200).
    #[arg(long)]
    pub gpu: Option<String>,
    /// Model from the catalog (e.g. Qwen3-32B).
    #[arg(long)]
    pub model: Option<String>,
    /// Tensor parallelism.
    #[arg(long)]
    pub tp: Option<u32>,
    /// Engine profile (vllm, sglang, trtllm).
    #[arg(long)]
    pub engine: Option<String>,
    /// Extra catalog directory (GPU/model/engine TOML files).
    #[arg(long, value_name = "DIR")]
    pub catalog: Option<PathBuf>,
    /// Model name served on the API (default: the catalog model name).
    #[arg(long)]
    pub served_model_name: Option<String>,
    /// Simulated GPU time runs this many times faster than real time (1e9: no delay).
    #[arg(long, default_value_t = 1.0)]
    pub speedup: f64,
    /// Publish KV events on this ZMQ endpoint (e.g. tcp://*:5557).
    #[arg(long, value_name = "ENDPOINT")]
    pub kv_events: Option<String>,
    /// Serve vLLM's KV-event replay protocol on this ZMQ endpoint (ROUTER, e.g. tcp://*:5558):
    /// a frontend that missed events, or restarted, fetches the last --kv-events-buffer
    /// batches from the sequence number it names. Needs --kv-events.
    #[arg(long, value_name = "ENDPOINT", requires = "kv_events")]
    pub kv_events_replay: Option<String>,
    /// Event batches kept for replay (vLLM's `buffer_steps`).
    #[arg(long, default_value_t = crate::events::DEFAULT_REPLAY_BUFFER, value_name = "N")]
    pub kv_events_buffer: usize,
    /// KV-event msgpack encoding.
    #[arg(long, value_enum, default_value_t = EventEncoding::Positional)]
    pub kv_events_encoding: EventEncoding,
    /// ZMQ topic frame of KV events.
    #[arg(long, default_value = "")]
    pub kv_events_topic: String,
    /// `max_tokens` when a request gives none.
    #[arg(long, default_value_t = 16)]
    pub default_max_tokens: u32,
    /// Largest accepted request body, bytes.
    #[arg(long, default_value_t = 16 << 20)]
    pub max_body_bytes: usize,
    /// Engine role (overrides the file): `aggregated`; `prefill` (computes prompts and holds
    /// their KV for a decode worker to pull; answers with vLLM's `kv_transfer_params`);
    /// `decode` (pulls the KV named by `kv_transfer_params` or SGLang's bootstrap fields, or
    /// prefills locally when a request names none).
    #[arg(long)]
    pub role: Option<String>,
    /// Host put in `kv_transfer_params` so decode workers can reach this one (default:
    /// --host, or 127.0.0.1 when that is a wildcard address).
    #[arg(long)]
    pub advertise_host: Option<String>,
    /// Prefill role: seconds a finished prefill's KV waits to be pulled before it is freed
    /// (vLLM's VLLM_NIXL_ABORT_REQUEST_TIMEOUT default).
    #[arg(long, default_value_t = 480.0)]
    pub kv_hold_timeout: f64,
    /// Seconds a KV pull waits for a prefill that is still running (SGLang sends the
    /// prefill and decode requests at once).
    #[arg(long, default_value_t = 60.0)]
    pub kv_pull_wait: f64,
    /// NIC bandwidth per GPU for KV transfers, GB/s (default: the GPU's catalog value).
    #[arg(long)]
    pub nic_gb_s: Option<f64>,
    /// Achieved share of NIC line rate in KV transfers.
    #[arg(long, default_value_t = switchyard_sim::config::defaults::NIC_EFFICIENCY)]
    pub kv_link_efficiency: f64,
    /// Fixed setup time of one KV transfer, ms of simulated time.
    #[arg(long, default_value_t = switchyard_sim::config::defaults::TRANSFER_SETUP_MS)]
    pub kv_setup_ms: f64,
    /// Register this worker in etcd (`etcd://HOST:2379[,HOST:2379...]`) under a lease kept
    /// alive while it runs and revoked on Ctrl-C/SIGTERM: `serve --discovery` frontends route
    /// to it. The record carries `http://<advertise host>:<port>`, the role, the KV-events
    /// endpoint (a wildcard bind address replaced by the advertise host) and the model.
    #[arg(long, value_name = "etcd://HOST:PORT")]
    pub register: Option<String>,
    /// etcd key prefix of worker records.
    #[arg(long, default_value = DEFAULT_PREFIX)]
    pub register_prefix: String,
    /// Lease TTL, seconds: how long a crashed worker can stay listed.
    #[arg(long, default_value_t = 10)]
    pub register_ttl: u32,
    /// Worker id in etcd (default: from the advertised URL, e.g. `10.0.0.7-8001`).
    #[arg(long)]
    pub register_id: Option<String>,
    /// Tokenizer for text and chat prompts: a Hugging Face `tokenizer.json` or a model
    /// directory (default: the built-in o200k_base). Use the engines' own so the router's
    /// block hashes match what they cache.
    #[arg(long, value_name = "PATH")]
    pub tokenizer: Option<PathBuf>,
    /// Chat template: a `.jinja` file, a `tokenizer_config.json` or a model directory
    /// (default: the one next to `--tokenizer`, else ChatML).
    #[arg(long, value_name = "PATH")]
    pub chat_template: Option<PathBuf>,
    /// API key callers must send as `Authorization: Bearer KEY` on /v1/* and the P/D side
    /// channel (vLLM's `--api-key`; repeatable, or comma-separated in $SWITCHYARD_API_KEY).
    /// The first key is also what this worker sends to its prefill peers, so a fleet shares
    /// one. /health and /metrics stay open.
    #[arg(
        long = "api-key",
        value_name = "KEY",
        env = "SWITCHYARD_API_KEY",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub api_keys: Vec<Secret>,
    /// File of API keys, one per line (`#` comments), in addition to --api-key.
    #[arg(long, value_name = "FILE")]
    pub api_key_file: Option<PathBuf>,
    /// Most client connections open at once (more are closed on accept). 0: the open-file
    /// limit (raised to its hard limit at start) minus a quarter.
    #[arg(long, default_value_t = 0)]
    pub max_connections: usize,
    /// Seconds a connection may take to send a request's headers, idle keep-alive time
    /// included.
    #[arg(long, default_value_t = crate::serve::DEFAULT_HEADER_TIMEOUT_S, value_name = "SECS")]
    pub header_timeout: f64,
    /// On SIGTERM/Ctrl-C: seconds to let requests in flight finish, after deregistering from
    /// etcd (with --register) and closing the listener. A second signal exits at once.
    #[arg(long, default_value_t = crate::serve::DEFAULT_DRAIN_TIMEOUT_S, value_name = "SECS")]
    pub drain_timeout: f64,
}

impl Default for WorkerArgs {
    fn default() -> Self {
        Self {
            host: "127.0.0.1".into(),
            port: 0,
            config: None,
            gpu: None,
            model: None,
            tp: None,
            engine: None,
            catalog: None,
            served_model_name: None,
            speedup: 1.0,
            kv_events: None,
            kv_events_replay: None,
            kv_events_buffer: crate::events::DEFAULT_REPLAY_BUFFER,
            kv_events_encoding: EventEncoding::Positional,
            kv_events_topic: String::new(),
            default_max_tokens: 16,
            max_body_bytes: 16 << 20,
            role: None,
            advertise_host: None,
            kv_hold_timeout: 480.0,
            kv_pull_wait: 60.0,
            nic_gb_s: None,
            kv_link_efficiency: switchyard_sim::config::defaults::NIC_EFFICIENCY,
            kv_setup_ms: switchyard_sim::config::defaults::TRANSFER_SETUP_MS,
            register: None,
            register_prefix: DEFAULT_PREFIX.to_string(),
            register_ttl: 10,
            register_id: None,
            tokenizer: None,
            chat_template: None,
            api_keys: vec![],
            api_key_file: None,
            max_connections: 0,
            header_timeout: crate::serve::DEFAULT_HEADER_TIMEOUT_S,
            drain_timeout: crate::serve::DEFAULT_DRAIN_TIMEOUT_S,
        }
    }
}

impl WorkerArgs {
    /// The engine configuration: file, then flag overrides.
    pub fn engine_config(&self) -> anyhow::Result<EngineConfig> {
        let mut cfg = match &self.config {
            Some(p) => {
                let text = std::fs::read_to_string(p)
                    .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", p.display()))?;
                toml::from_str::<EngineConfig>(&text)
                    .map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))?
            }
            None => EngineConfig::default(),
        };
        if let Some(g) = &self.gpu {
            cfg.gpu = g.clone();
        }
        if let Some(m) = &self.model {
            cfg.model = m.clone();
        }
        if let Some(tp) = self.tp {
            cfg.tp = tp;
        }
        if let Some(e) = &self.engine {
            cfg.engine = e.clone();
        }
        if let Some(r) = &self.role {
            cfg.role =
                serde_json::from_value(serde_json::Value::String(r.clone())).map_err(|_| {
                    anyhow::anyhow!("--role {r:?}: expected aggregated, prefill or decode")
                })?;
        }
        Ok(cfg)
    }
}

/// Blocking entry point for the CLI: run until Ctrl-C.
pub fn run_worker(args: WorkerArgs) -> anyhow::Result<()> {
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async move {
        let cfg = args.engine_config()?;
        let h = start_worker(&args, cfg).await?;
        eprintln!(
            "switchyard worker: {} on http://{}{}",
            h.model,
            h.addr,
            h.kv_events
                .as_deref()
                .map(|e| format!(", KV events on {e}"))
                .unwrap_or_default()
        );
        if let Some(r) = &h.kv_events_replay {
            eprintln!(
                "  KV-event replay on {r} (last {} batches)",
                args.kv_events_buffer
            );
        }
        let reg = match &args.register {
            Some(url) => Some(register_worker(&h, &args, url)?),
            None => None,
        };
        crate::serve::shutdown_signal().await;
        let mut h = h;
        let drain = async {
            if let Some(reg) = reg {
                // Revoke first: frontends stop sending here now instead of after the lease
                // TTL, while what they already sent finishes.
                reg.shutdown().await;
            }
            h.drain(Duration::from_secs_f64(args.drain_timeout.clamp(0.0, 86_400.0)))
                .await
        };
        eprintln!(
            "switchyard worker: draining (up to {} s; signal again to exit now)",
            args.drain_timeout
        );
        tokio::select! {
            done = drain => {
                if !done {
                    eprintln!("switchyard worker: drain timeout; exiting with requests in flight");
                }
            }
            _ = crate::serve::shutdown_signal() => eprintln!("switchyard worker: second signal; exiting now"),
        }
        Ok(())
    })
}

/// Start registering a running worker in etcd as `args` (`--register*`) describe. Keep the
/// [`Registration`]: `shutdown().await` revokes the lease; dropping it stops the keep-alives
/// and lets the lease expire (what a crash looks like).
pub fn register_worker(
    h: &WorkerHandle,
    args: &WorkerArgs,
    etcd: &str,
) -> anyhow::Result<Registration> {
    let mut cfg = RegisterConfig::from_url(etcd).map_err(|e| anyhow::anyhow!("--register: {e}"))?;
    cfg.prefix = args.register_prefix.clone();
    cfg.ttl_secs = args.register_ttl;
    let mut rec = h.record();
    if let Some(id) = &args.register_id {
        rec.id = id.clone();
    }
    let reg =
        Registration::start(cfg, rec.clone()).map_err(|e| anyhow::anyhow!("--register: {e}"))?;
    eprintln!(
        "  registering in etcd {etcd} as {} ({} {}, KV events {}, lease TTL {} s)",
        reg.key(),
        rec.role,
        rec.url,
        rec.kv_events.as_deref().unwrap_or("off"),
        args.register_ttl
    );
    Ok(reg)
}

/// Blocking entry point of `switchyard register` (the sidecar next to a real engine).
pub fn run_register(args: RegisterArgs) -> anyhow::Result<()> {
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(switchyard_cluster::run_register(args))
        .map_err(|e| anyhow::anyhow!("{e}"))
}

/// A running worker.
#[derive(Debug)]
pub struct WorkerHandle {
    /// Bound HTTP address.
    pub addr: SocketAddr,
    /// Bound KV-event endpoint (`tcp://IP:PORT`), when publishing.
    pub kv_events: Option<String>,
    /// Bound KV-event replay endpoint, when serving replay.
    pub kv_events_replay: Option<String>,
    /// Served model name.
    pub model: String,
    /// Engine role.
    pub role: Role,
    /// Host other machines reach this worker at (`--advertise-host`, else the bound address,
    /// or 127.0.0.1 for a wildcard bind).
    pub advertise_host: String,
    server: tokio::task::JoinHandle<()>,
    driver: tokio::task::JoinHandle<()>,
    shutdown: tokio::sync::watch::Sender<bool>,
}

impl WorkerHandle {
    /// `http://addr`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
    /// The etcd record frontends route by: advertised URL, role, a connectable KV-events
    /// endpoint, the served model.
    pub fn record(&self) -> WorkerRecord {
        let host = bracket_v6(&self.advertise_host);
        let role = match self.role {
            Role::Aggregated => switchyard_cluster::Role::Aggregated,
            Role::Prefill => switchyard_cluster::Role::Prefill,
            Role::Decode => switchyard_cluster::Role::Decode,
        };
        let mut r = WorkerRecord::new(&format!("http://{host}:{}", self.addr.port()), role);
        r.kv_events = self
            .kv_events
            .as_deref()
            .map(|ep| connectable_endpoint(ep, &host));
        r.kv_events_replay = self
            .kv_events_replay
            .as_deref()
            .map(|ep| connectable_endpoint(ep, &host));
        r.model = Some(self.model.clone());
        r
    }

    /// Stop serving (simulates a crash: open connections are dropped).
    pub fn shutdown(&self) {
        self.server.abort();
        self.driver.abort();
    }

    /// Graceful shutdown: close the listener, let requests in flight finish (up to
    /// `timeout`). Returns whether they all did.
    pub async fn drain(&mut self, timeout: Duration) -> bool {
        let _ = self.shutdown.send(true);
        tokio::time::timeout(timeout, &mut self.server)
            .await
            .is_ok()
    }
}

impl Drop for WorkerHandle {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Start a worker on the current tokio runtime with `cfg` (other settings from `args`).
pub async fn start_worker(args: &WorkerArgs, cfg: EngineConfig) -> anyhow::Result<WorkerHandle> {
    anyhow::ensure!(
        args.speedup.is_finite() && args.speedup > 0.0,
        "--speedup must be a positive number (got {})",
        args.speedup
    );
    let catalog = Catalog::load(args.catalog.as_deref())?;
    // Load the default tokenizer now (~0.3 s), not on the first request.
    tokio::task::spawn_blocking(|| {
        let _ = crate::tokenizer::default_bpe();
    });
    for (name, v) in [
        ("--kv-hold-timeout", args.kv_hold_timeout),
        ("--kv-pull-wait", args.kv_pull_wait),
        ("--kv-link-efficiency", args.kv_link_efficiency),
    ] {
        anyhow::ensure!(
            v.is_finite() && v > 0.0,
            "{name} must be positive (got {v})"
        );
    }
    anyhow::ensure!(
        args.kv_setup_ms.is_finite() && args.kv_setup_ms >= 0.0,
        "--kv-setup-ms must be >= 0 (got {})",
        args.kv_setup_ms
    );
    let tokenization =
        crate::serve::load_tokenization(args.tokenizer.as_deref(), args.chat_template.as_deref())?;
    let mut cfg = cfg;
    cfg.kv_events = args.kv_events.is_some();
    let engine = Engine::new(&catalog, &cfg)?;
    let nic = match args.nic_gb_s {
        Some(n) => {
            anyhow::ensure!(
                n.is_finite() && n > 0.0,
                "--nic-gb-s must be positive (got {n})"
            );
            n
        }
        None => catalog.gpu(&cfg.gpu)?.nic_gb_s,
    };
    // One link per DP rank: a request's KV lives on its rank's TP GPUs and moves over their
    // NICs (as in the simulator).
    let link_bw = nic * 1e9 * args.kv_link_efficiency * cfg.tp as f64;
    let model = args
        .served_model_name
        .clone()
        .unwrap_or_else(|| cfg.model.clone());
    anyhow::ensure!(
        args.kv_events_replay.is_none() || args.kv_events.is_some(),
        "--kv-events-replay needs --kv-events (replay recovers that stream)"
    );
    anyhow::ensure!(
        args.kv_events_buffer > 0,
        "--kv-events-buffer must be at least 1"
    );
    let (publisher, kv_events, kv_events_replay) = match &args.kv_events {
        Some(ep) => {
            let p = start_publisher(PublisherConfig {
                endpoint: ep.clone(),
                topic: args.kv_events_topic.clone(),
                replay_endpoint: args.kv_events_replay.clone(),
                buffer: args.kv_events_buffer,
            })
            .await?;
            (Some(p.publisher), Some(p.endpoint), p.replay_endpoint)
        }
        None => (None, None, None),
    };
    let listener = tokio::net::TcpListener::bind((args.host.as_str(), args.port))
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {}:{}: {e}", args.host, args.port))?;
    let addr = listener.local_addr()?;
    let advertise_host: String = match &args.advertise_host {
        Some(h) => h.clone(),
        None if addr.ip().is_unspecified() => "127.0.0.1".into(),
        None => addr.ip().to_string(),
    };
    let engine_id = format!(
        "sy-{:x}-{}",
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64),
        addr.port()
    );
    let keys = Keys::load(&args.api_keys, args.api_key_file.as_deref())?;
    let client = reqwest::Client::builder()
        .default_headers(crate::auth::upstream_header(keys.first().as_ref()).unwrap_or_default())
        .connect_timeout(Duration::from_secs(2))
        .tcp_nodelay(true)
        .build()?;
    let (cmd_tx, cmd_rx) = mpsc::unbounded_channel();
    let snapshot = Arc::new(Mutex::new(Snapshot {
        load: engine.load(),
        stats: *engine.stats(),
    }));
    let shared = Arc::new(Shared {
        model: model.clone(),
        max_model_len: engine.max_model_len(),
        hasher: BlockHasher::new(engine.block_size())?,
        cmd: cmd_tx,
        next_id: AtomicU64::new(1),
        id_salt: rand::random(),
        dp_ranks: engine.dp_ranks(),
        default_max_tokens: args.default_max_tokens.max(1),
        created: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        snapshot: snapshot.clone(),
        requests: AtomicU64::new(0),
        rejected: AtomicU64::new(0),
        max_body: args.max_body_bytes,
        role: cfg.role,
        advertise: (advertise_host.clone(), addr.port()),
        engine_id: engine_id.clone(),
        tp: cfg.tp,
        client: client.clone(),
        pull_wait: Duration::from_secs_f64(args.kv_pull_wait),
        pd_counters: Arc::new(PdCounters::default()),
        tokenization,
    });
    let pd = Pd::new(
        &engine,
        link_bw,
        args.kv_setup_ms / 1e3,
        engine_id,
        Duration::from_secs_f64(args.kv_hold_timeout),
        Duration::from_secs_f64(args.kv_pull_wait),
        client,
        shared.pd_counters.clone(),
    );
    let driver = Driver {
        engine,
        reqs: FxHashMap::default(),
        blocks: FxHashMap::default(),
        block_size: shared.hasher.block_size() as usize,
        publisher: publisher.map(|p| (p, args.kv_events_encoding.into())),
        snapshot,
        pd,
        was_busy: false,
    };
    let driver = tokio::spawn(driver.run(cmd_rx, args.speedup));
    let app = worker_router(shared, keys);
    let limits = crate::http::ConnLimits::from_flags(args.max_connections, args.header_timeout)
        .map_err(anyhow::Error::msg)?;
    let (shutdown, shutdown_rx) = tokio::sync::watch::channel(false);
    let server = tokio::spawn(crate::http::serve(listener, app, limits, shutdown_rx));
    Ok(WorkerHandle {
        addr,
        kv_events,
        kv_events_replay,
        model,
        role: cfg.role,
        advertise_host,
        server,
        driver,
        shutdown,
    })
}

fn bracket_v6(host: &str) -> String {
    if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]")
    } else {
        host.to_string()
    }
}

/// `tcp://0.0.0.0:5557` (or `*`, `[::]`) -> `tcp://HOST:5557`: a bind address is not where
/// anyone else connects. Specific addresses are kept.
fn connectable_endpoint(ep: &str, host: &str) -> String {
    let Some(rest) = ep.strip_prefix("tcp://") else {
        return ep.to_string();
    };
    match rest.rsplit_once(':') {
        Some(("*" | "0.0.0.0" | "[::]" | "::" | "", port)) => {
            format!("tcp://{host}:{port}")
        }
        _ => ep.to_string(),
    }
}

fn worker_router(shared: Arc<Shared>, keys: Keys) -> Router {
    Router::new()
        .route("/v1/models", get(models))
        .route("/v1/completions", post(completions))
        .route("/v1/chat/completions", post(chat))
        .route("/model_info", get(model_info))
        .route("/get_model_info", get(model_info))
        .route("/server_info", get(server_info))
        .route("/get_server_info", get(server_info))
        .route(crate::pd::PULL_PATH, post(kv_pull))
        .route(crate::pd::RELEASE_PATH, post(kv_release))
        .route_layer(axum::middleware::from_fn_with_state(keys, require_key))
        .route("/health", get(|| async { StatusCode::OK }))
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::disable())
        .with_state(shared)
}

pub(crate) async fn method_not_allowed(
    method: axum::http::Method,
    uri: axum::http::Uri,
) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("{method} is not allowed on {}", uri.path()),
    )
}

pub(crate) async fn not_found(uri: axum::http::Uri) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        format!("no route for {}", uri.path()),
    )
}

#[derive(Clone, Copy, Debug)]
struct Snapshot {
    load: EngineLoad,
    stats: EngineStats,
}

#[derive(Debug)]
struct Shared {
    /// Random per process: makes response ids unique across workers.
    id_salt: u64,
    /// Data-parallel ranks of the engine.
    dp_ranks: u32,
    model: String,
    max_model_len: u32,
    hasher: BlockHasher,
    cmd: mpsc::UnboundedSender<Cmd>,
    next_id: AtomicU64,
    default_max_tokens: u32,
    created: u64,
    snapshot: Arc<Mutex<Snapshot>>,
    requests: AtomicU64,
    rejected: AtomicU64,
    max_body: usize,
    role: Role,
    /// (host, port) named in `kv_transfer_params`.
    advertise: (String, u16),
    engine_id: String,
    tp: u32,
    client: reqwest::Client,
    pull_wait: Duration,
    pd_counters: Arc<PdCounters>,
    /// Tokenizer and chat template of text/chat prompts.
    tokenization: Tokenization,
}

enum Cmd {
    Admit {
        id: u64,
        tokens: Vec<u32>,
        hashes: Vec<u64>,
        /// Tokens the engine generates (decode role with remote KV: one more than the client
        /// sees, the first having been made by the prefill worker).
        engine_out: u32,
        /// Tokens streamed to the client.
        max_out: u32,
        /// The DP rank the router chose (`None`: the engine picks the least loaded).
        dp_rank: Option<u32>,
        mode: Mode,
        tx: mpsc::UnboundedSender<Tok>,
        reply: oneshot::Sender<Result<u32, String>>,
    },
    Abort(u64),
    /// A decode worker asks for the KV under `key` (answers when held).
    Pull {
        key: String,
        reply: oneshot::Sender<Result<PullInfo, String>>,
    },
    /// A decode worker no longer needs the KV under `key`.
    Release {
        key: String,
    },
}

/// How a request enters the engine.
enum Mode {
    /// Aggregated engine.
    Normal,
    /// Decode role without remote KV: prefill here, then decode (conditional disaggregation).
    Local,
    /// Prefill role: compute the prompt, then hold the KV under `key` for a pull (no key: a
    /// plain request sent to a prefill worker; its KV is freed at once).
    Prefill { key: Option<String> },
    /// Decode role: the KV comes from a prefill worker.
    Remote { remote: RemoteKv, info: PullInfo },
}

#[derive(Debug, PartialEq)]
enum Tok {
    Token,
    Done,
}

struct ReqState {
    tx: mpsc::UnboundedSender<Tok>,
    hashes: Vec<u64>,
    sent: u32,
    max_out: u32,
}

/// Token ids of a block the engine may report as stored (vLLM events carry them).
struct BlockTokens {
    tokens: Box<[u32]>,
    /// Live requests naming this block.
    refs: u32,
    /// Reported stored (and not removed since).
    stored: bool,
}

/// P/D counters shown on `/metrics`.
#[derive(Debug, Default)]
struct PdCounters {
    held: AtomicU64,
    transfers_in_flight: AtomicU64,
    transfers_done: AtomicU64,
    transfer_bytes: AtomicU64,
    pulls_served: AtomicU64,
    pull_failures: AtomicU64,
    hold_timeouts: AtomicU64,
    local_prefills: AtomicU64,
}

/// KV a prefill worker holds for a decode worker.
struct Held {
    id: u64,
    prompt_tokens: u32,
    rank: u32,
    deadline: Instant,
}

/// Where a pull's answer goes.
type PullReply = oneshot::Sender<Result<PullInfo, String>>;

/// A decode worker's incoming transfer.
struct Xfer {
    remote: RemoteKv,
    /// Network link of the source engine.
    link: usize,
    started: bool,
}

/// Prefill/decode state of one worker: held KV (prefill role), incoming transfers over the
/// shared-link network model in simulated time (decode role).
struct Pd {
    hold_timeout: Duration,
    pull_wait: Duration,
    held: FxHashMap<String, Held>,
    /// Prefills in progress that will be held: engine id -> key, and back.
    prefilling: FxHashMap<u64, String>,
    prefilling_keys: FxHashMap<String, u64>,
    /// Keys released while still prefilling (free them as soon as they finish).
    released_early: FxHashSet<String>,
    /// Pulls waiting for their prefill to finish.
    waiters: FxHashMap<String, Vec<(Instant, PullReply)>>,
    net: Network,
    net_now: f64,
    own_links: Vec<usize>,
    remote_links: FxHashMap<String, usize>,
    xfers: FxHashMap<u64, Xfer>,
    kv_bytes_per_token: f64,
    link_bw: f64,
    engine_id: String,
    client: reqwest::Client,
    counters: Arc<PdCounters>,
    last_sweep: Instant,
    done: Vec<switchyard_sim::network::Completed>,
}

/// How often held KV and waiting pulls are checked against their deadlines.
const SWEEP_EVERY: Duration = Duration::from_millis(200);

impl Pd {
    #[allow(clippy::too_many_arguments)]
    fn new(
        engine: &Engine,
        link_bw: f64,
        setup: f64,
        engine_id: String,
        hold_timeout: Duration,
        pull_wait: Duration,
        client: reqwest::Client,
        counters: Arc<PdCounters>,
    ) -> Self {
        let ranks = engine.dp_ranks() as usize;
        Self {
            hold_timeout,
            pull_wait,
            held: FxHashMap::default(),
            prefilling: FxHashMap::default(),
            prefilling_keys: FxHashMap::default(),
            released_early: FxHashSet::default(),
            waiters: FxHashMap::default(),
            net: Network::new(vec![link_bw; ranks], setup),
            net_now: 0.0,
            own_links: (0..ranks).collect(),
            remote_links: FxHashMap::default(),
            xfers: FxHashMap::default(),
            kv_bytes_per_token: engine.kv_bytes_per_token() as f64,
            link_bw,
            engine_id,
            client,
            counters,
            last_sweep: Instant::now(),
            done: Vec::new(),
        }
    }

    fn pull_info(&self, prompt_tokens: u32, rank: u32) -> PullInfo {
        PullInfo {
            prompt_tokens,
            link_bytes_per_s: self.link_bw,
            engine_id: format!("{}/{}", self.engine_id, rank),
        }
    }

    fn remote_link(&mut self, info: &PullInfo) -> usize {
        if let Some(&l) = self.remote_links.get(&info.engine_id) {
            return l;
        }
        let bw = if info.link_bytes_per_s.is_finite() && info.link_bytes_per_s > 0.0 {
            info.link_bytes_per_s
        } else {
            self.link_bw
        };
        let l = self.net.add_link(bw);
        self.remote_links.insert(info.engine_id.clone(), l);
        l
    }

    /// Tell a prefill worker its KV is no longer needed (off the driver task).
    fn release_remote(&self, remote: RemoteKv) {
        let client = self.client.clone();
        tokio::spawn(async move {
            let _ = pd::release(&client, &remote).await;
        });
    }

    fn answer_waiters(&mut self, key: &str, r: Result<PullInfo, String>) {
        if let Some(ws) = self.waiters.remove(key) {
            for (_, tx) in ws {
                let _ = tx.send(r.clone());
            }
        }
    }
}

struct Driver {
    engine: Engine,
    reqs: FxHashMap<u64, ReqState>,
    blocks: FxHashMap<u64, BlockTokens>,
    block_size: usize,
    publisher: Option<(EventPublisher, WireEncoding)>,
    snapshot: Arc<Mutex<Snapshot>>,
    pd: Pd,
    /// The engine ran steps back to back until now (the next one starts where the last
    /// ended, not when the driver woke up: timer lateness must not accumulate).
    was_busy: bool,
}

/// Real-time lateness up to which back-to-back steps keep the engine's own timeline.
const CATCH_UP: Duration = Duration::from_millis(25);

impl Driver {
    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Cmd>, speedup: f64) {
        let t0 = Instant::now();
        let sim_now = |t0: Instant| t0.elapsed().as_secs_f64() * speedup;
        let at_sim = |t: f64| t0 + Duration::from_secs_f64((t / speedup).min(1e9));
        let mut since_yield = 0u32;
        loop {
            while let Ok(cmd) = rx.try_recv() {
                self.handle(cmd, sim_now(t0));
            }
            let now = sim_now(t0);
            self.complete_transfers(now);
            self.sweep();
            let busy_until = self.engine.busy_until();
            let step_at = if self.was_busy
                && busy_until <= now
                && now - busy_until <= CATCH_UP.as_secs_f64() * speedup
            {
                busy_until
            } else {
                now
            };
            let out = self.engine.step(step_at);
            if out.scheduled_tokens == 0 && !out.is_visible() {
                // Idle (or blocked on memory): wait for a command, a transfer or a deadline.
                self.was_busy = false;
                self.publish_snapshot();
                let xfer = self.pd.net.next_completion().map(at_sim);
                let sweep = (!self.pd.held.is_empty() || !self.pd.waiters.is_empty())
                    .then(|| self.pd.last_sweep + SWEEP_EVERY);
                let wake = match (xfer, sweep) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                };
                match wake {
                    Some(w) => tokio::select! {
                        cmd = rx.recv() => match cmd {
                            Some(cmd) => self.handle(cmd, sim_now(t0)),
                            None => return,
                        },
                        _ = tokio::time::sleep_until(w.into()) => {}
                    },
                    None => match rx.recv().await {
                        Some(cmd) => self.handle(cmd, sim_now(t0)),
                        None => return,
                    },
                }
                continue;
            }
            self.was_busy = true;
            let wake = at_sim(out.end);
            // Handle commands and finish transfers while the step "runs" on the GPU.
            loop {
                if Instant::now() >= wake {
                    break;
                }
                let until = match self.pd.net.next_completion().map(at_sim) {
                    Some(x) if x < wake => x,
                    _ => wake,
                };
                tokio::select! {
                    _ = tokio::time::sleep_until(until.into()) => {
                        let t = sim_now(t0).min(out.end);
                        self.complete_transfers(t);
                    }
                    cmd = rx.recv() => match cmd {
                        Some(cmd) => self.handle(cmd, sim_now(t0).min(out.end)),
                        None => return,
                    },
                }
            }
            // Events first: they need the token ids of blocks whose requests finish in this
            // step (forgotten below), and routers should know a cache before clients see
            // the tokens it produced.
            if !out.kv_events.is_empty() {
                self.publish_events(&out.kv_events);
            }
            for &id in out.first_tokens.iter().chain(&out.decoded) {
                self.send_token(id);
            }
            for f in &out.finished {
                if f.reason == FinishReason::PrefillDone {
                    self.prefill_done(f.id);
                }
                if let Some(r) = self.reqs.get_mut(&f.id) {
                    let target = f.output_tokens.min(r.max_out);
                    while r.sent < target {
                        r.sent += 1;
                        let _ = r.tx.send(Tok::Token);
                    }
                    let _ = r.tx.send(Tok::Done);
                }
                self.forget(f.id);
            }
            for kr in &out.kv_reserved {
                self.start_transfer(kr.id, kr.dp_rank, kr.cached_tokens, out.end);
            }
            self.publish_snapshot();
            since_yield += 1;
            if since_yield >= 16 {
                // At huge speedups steps never sleep: let the HTTP tasks run.
                since_yield = 0;
                tokio::task::yield_now().await;
            }
        }
    }

    fn publish_snapshot(&self) {
        if let Ok(mut s) = self.snapshot.lock() {
            s.load = self.engine.load();
            s.stats = *self.engine.stats();
        }
    }

    fn handle(&mut self, cmd: Cmd, now: f64) {
        match cmd {
            Cmd::Admit {
                id,
                tokens,
                hashes,
                engine_out,
                max_out,
                dp_rank,
                mode,
                tx,
                reply,
            } => {
                let req = Request {
                    id,
                    prompt_tokens: tokens.len() as u32,
                    block_hashes: hashes.clone(),
                    max_output_tokens: engine_out,
                    dp_rank,
                };
                let admitted = match &mode {
                    Mode::Local => self.engine.admit_local(req, now),
                    _ => self.engine.admit(req, now),
                };
                match admitted {
                    Ok(info) => {
                        // Like vLLM: at least one prompt token is always computed.
                        let bs = self.block_size as u32;
                        let max_hit = (tokens.len() as u32).saturating_sub(1) / bs * bs;
                        let cached = self
                            .engine
                            .cached_prefix_tokens(info.dp_rank, &hashes)
                            .min(max_hit);
                        for (i, &h) in hashes.iter().enumerate() {
                            let b = self.blocks.entry(h).or_insert_with(|| BlockTokens {
                                tokens: tokens[i * self.block_size..(i + 1) * self.block_size]
                                    .into(),
                                refs: 0,
                                stored: false,
                            });
                            b.refs += 1;
                        }
                        self.reqs.insert(
                            id,
                            ReqState {
                                tx,
                                hashes,
                                sent: 0,
                                max_out,
                            },
                        );
                        match mode {
                            Mode::Normal => {}
                            Mode::Local => {
                                self.pd
                                    .counters
                                    .local_prefills
                                    .fetch_add(1, Ordering::Relaxed);
                            }
                            Mode::Prefill { key: Some(key) } => {
                                self.pd.prefilling.insert(id, key.clone());
                                self.pd.prefilling_keys.insert(key, id);
                            }
                            Mode::Prefill { key: None } => {}
                            Mode::Remote { remote, info: pi } => {
                                let link = self.pd.remote_link(&pi);
                                self.pd.xfers.insert(
                                    id,
                                    Xfer {
                                        remote,
                                        link,
                                        started: false,
                                    },
                                );
                                if let Some(c) = info.kv_reserved {
                                    self.start_transfer(id, info.dp_rank, c, now);
                                }
                            }
                        }
                        let _ = reply.send(Ok(cached));
                    }
                    Err(e) => {
                        if let Mode::Remote { remote, .. } = mode {
                            self.pd.release_remote(remote);
                        }
                        let _ = reply.send(Err(e.to_string()));
                    }
                }
            }
            Cmd::Abort(id) => {
                if self.reqs.contains_key(&id) {
                    self.engine.abort(id);
                    self.forget(id);
                }
            }
            Cmd::Pull { key, reply } => {
                let timeout = self.pd.hold_timeout;
                if let Some(h) = self.pd.held.get_mut(&key) {
                    // Being pulled: keep it for another full timeout.
                    h.deadline = Instant::now() + timeout;
                    let (prompt_tokens, rank) = (h.prompt_tokens, h.rank);
                    let info = self.pd.pull_info(prompt_tokens, rank);
                    self.pd
                        .counters
                        .pulls_served
                        .fetch_add(1, Ordering::Relaxed);
                    let _ = reply.send(Ok(info));
                } else if self.pd.prefilling_keys.contains_key(&key) || key.starts_with("room:") {
                    // Still prefilling, or (SGLang) the prefill request has not arrived yet.
                    let deadline = Instant::now() + self.pd.pull_wait;
                    self.pd
                        .waiters
                        .entry(key)
                        .or_default()
                        .push((deadline, reply));
                } else {
                    self.pd
                        .counters
                        .pull_failures
                        .fetch_add(1, Ordering::Relaxed);
                    let _ = reply.send(Err(format!(
                        "no KV is held for {key:?} (released, timed out or never prefilled here)"
                    )));
                }
            }
            Cmd::Release { key } => {
                if let Some(h) = self.pd.held.remove(&key) {
                    let _ = self.engine.release(h.id);
                    self.pd.counters.held.fetch_sub(1, Ordering::Relaxed);
                } else if self.pd.prefilling_keys.contains_key(&key) {
                    self.pd.released_early.insert(key);
                }
            }
        }
    }

    /// Prefill role: request `id`'s prompt is computed; hold its KV under its key.
    fn prefill_done(&mut self, id: u64) {
        let Some(key) = self.pd.prefilling.remove(&id) else {
            // Nobody will pull it.
            let _ = self.engine.release(id);
            return;
        };
        self.pd.prefilling_keys.remove(&key);
        if self.pd.released_early.remove(&key) {
            let _ = self.engine.release(id);
            return;
        }
        let (prompt_tokens, rank) = self.engine.request_placement(id).unwrap_or((0, 0));
        let held = Held {
            id,
            prompt_tokens,
            rank,
            deadline: Instant::now() + self.pd.hold_timeout,
        };
        let info = self.pd.pull_info(held.prompt_tokens, held.rank);
        self.pd.held.insert(key.clone(), held);
        self.pd.counters.held.fetch_add(1, Ordering::Relaxed);
        if self.pd.waiters.contains_key(&key) {
            self.pd
                .counters
                .pulls_served
                .fetch_add(1, Ordering::Relaxed);
            self.pd.answer_waiters(&key, Ok(info));
        }
    }

    /// Decode role: KV blocks for `id` are reserved; move the uncached part of its prompt.
    fn start_transfer(&mut self, id: u64, rank: u32, cached: u32, at: f64) {
        let prompt = self.engine.request_placement(id).map_or(0, |p| p.0);
        let Some(x) = self.pd.xfers.get_mut(&id) else {
            return;
        };
        if x.started {
            return;
        }
        x.started = true;
        let bytes = prompt.saturating_sub(cached) as f64 * self.pd.kv_bytes_per_token;
        let dst = self.pd.own_links.get(rank as usize).copied().unwrap_or(0);
        let src = x.link;
        // The network model needs non-decreasing times.
        let at = at.max(self.pd.net_now);
        self.pd.net_now = at;
        self.pd.net.start(id, src, dst, bytes, at);
        let c = &self.pd.counters;
        c.transfers_in_flight.fetch_add(1, Ordering::Relaxed);
        c.transfer_bytes.fetch_add(bytes as u64, Ordering::Relaxed);
    }

    /// Transfers that ended by `now`: the KV is here; the prefill worker may free its copy.
    fn complete_transfers(&mut self, now: f64) {
        if self.pd.net.in_flight() == 0 {
            return;
        }
        let now = now.max(self.pd.net_now);
        self.pd.net_now = now;
        let mut done = std::mem::take(&mut self.pd.done);
        self.pd.net.advance(now, &mut done);
        for c in &done {
            let c_ = &self.pd.counters;
            c_.transfers_in_flight.fetch_sub(1, Ordering::Relaxed);
            c_.transfers_done.fetch_add(1, Ordering::Relaxed);
            if let Some(x) = self.pd.xfers.remove(&c.id) {
                self.pd.release_remote(x.remote);
            }
            let _ = self.engine.kv_arrived(c.id, c.at);
        }
        done.clear();
        self.pd.done = done;
    }

    /// Free held KV nobody pulled in time; fail pulls that waited too long.
    fn sweep(&mut self) {
        if self.pd.last_sweep.elapsed() < SWEEP_EVERY {
            return;
        }
        let now = Instant::now();
        self.pd.last_sweep = now;
        let expired: Vec<String> = self
            .pd
            .held
            .iter()
            .filter(|(_, h)| h.deadline <= now)
            .map(|(k, _)| k.clone())
            .collect();
        for k in expired {
            if let Some(h) = self.pd.held.remove(&k) {
                let _ = self.engine.release(h.id);
                let c = &self.pd.counters;
                c.held.fetch_sub(1, Ordering::Relaxed);
                c.hold_timeouts.fetch_add(1, Ordering::Relaxed);
            }
        }
        // A dropped waiter's pull sees its channel closed: "timed out waiting".
        self.pd.waiters.retain(|_, ws| {
            ws.retain(|(deadline, _)| *deadline > now);
            !ws.is_empty()
        });
    }

    fn send_token(&mut self, id: u64) {
        let Some(r) = self.reqs.get_mut(&id) else {
            return;
        };
        if r.sent >= r.max_out {
            return;
        }
        r.sent += 1;
        if r.tx.send(Tok::Token).is_err() {
            // The client went away: free the engine's resources now.
            self.engine.abort(id);
            self.forget(id);
        }
    }

    fn forget(&mut self, id: u64) {
        if let Some(r) = self.reqs.remove(&id) {
            for h in r.hashes {
                if let Some(b) = self.blocks.get_mut(&h) {
                    b.refs = b.refs.saturating_sub(1);
                    if b.refs == 0 && !b.stored {
                        self.blocks.remove(&h);
                    }
                }
            }
        }
        // Decode role: a transfer still pending or in flight is dropped, and the prefill
        // worker told to free its copy.
        if let Some(x) = self.pd.xfers.remove(&id) {
            if x.started && self.pd.net.cancel(id, self.pd.net_now) {
                self.pd
                    .counters
                    .transfers_in_flight
                    .fetch_sub(1, Ordering::Relaxed);
            }
            self.pd.release_remote(x.remote);
        }
        // Prefill role: aborted before its prefill finished.
        if let Some(key) = self.pd.prefilling.remove(&id) {
            self.pd.prefilling_keys.remove(&key);
            self.pd.released_early.remove(&key);
            self.pd
                .answer_waiters(&key, Err(format!("the prefill of {key:?} was aborted")));
        }
    }

    fn publish_events(&mut self, events: &[switchyard_engine::RankedKvEvent]) {
        let ts = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        let mut batch: Option<WireBatch> = None;
        for ev in events {
            let wire = self.wire_event(&ev.event);
            if let Some(b) = &mut batch
                && b.dp_rank == Some(ev.dp_rank)
            {
                b.events.push(wire);
                continue;
            }
            if let Some(b) = batch.take() {
                self.emit(&b);
            }
            batch = Some(WireBatch {
                ts,
                events: vec![wire],
                dp_rank: Some(ev.dp_rank),
            });
        }
        if let Some(b) = batch {
            self.emit(&b);
        }
    }

    fn emit(&self, b: &WireBatch) {
        if let Some((p, enc)) = &self.publisher {
            p.publish(encode_batch(b, *enc));
        }
    }

    fn wire_event(&mut self, ev: &KvEvent) -> WireEvent {
        match ev {
            KvEvent::Stored { parent, blocks } => {
                let mut token_ids = Vec::with_capacity(blocks.len() * self.block_size);
                let mut complete = true;
                for h in blocks {
                    match self.blocks.get_mut(h) {
                        Some(b) if complete => {
                            b.stored = true;
                            token_ids.extend_from_slice(&b.tokens);
                        }
                        // Tokens unknown: consumers see fewer tokens than blocks.
                        _ => complete = false,
                    }
                }
                WireEvent::BlockStored {
                    block_hashes: blocks.clone(),
                    parent_block_hash: *parent,
                    token_ids,
                    block_size: self.block_size as u32,
                    lora_id: None,
                    medium: Some("GPU".into()),
                }
            }
            KvEvent::Removed { blocks } => {
                for h in blocks {
                    if let Some(b) = self.blocks.get_mut(h) {
                        b.stored = false;
                        if b.refs == 0 {
                            self.blocks.remove(h);
                        }
                    }
                }
                WireEvent::BlockRemoved {
                    block_hashes: blocks.clone(),
                    medium: Some("GPU".into()),
                }
            }
            KvEvent::AllCleared => {
                self.blocks.retain(|_, b| {
                    b.stored = false;
                    b.refs > 0
                });
                WireEvent::AllBlocksCleared
            }
        }
    }
}

/// Sends `Abort` if the response is dropped before the engine finished the request.
struct AbortGuard {
    id: u64,
    cmd: mpsc::UnboundedSender<Cmd>,
    armed: bool,
}

impl Drop for AbortGuard {
    fn drop(&mut self) {
        if self.armed {
            let _ = self.cmd.send(Cmd::Abort(self.id));
        }
    }
}

async fn models(State(s): State<Arc<Shared>>) -> Response {
    axum::Json(json!({
        "object": "list",
        "data": [{
            "id": s.model,
            "object": "model",
            "created": s.created,
            "owned_by": "switchyard",
            "root": s.model,
            "max_model_len": s.max_model_len,
        }]
    }))
    .into_response()
}

/// SGLang's `/model_info` (and the older `/get_model_info`): what its router reads when a
/// worker joins.
async fn model_info(State(s): State<Arc<Shared>>) -> Response {
    axum::Json(json!({
        "model_path": s.model,
        "tokenizer_path": null,
        "is_generation": true,
        "served_model_name": s.model,
    }))
    .into_response()
}

/// SGLang's `/server_info` (and `/get_server_info`): the parallel layout and limits.
async fn server_info(State(s): State<Arc<Shared>>) -> Response {
    let kv_tokens = s
        .snapshot
        .lock()
        .map(|g| g.load.kv_blocks_total * u64::from(s.hasher.block_size()))
        .unwrap_or(0);
    axum::Json(json!({
        "model_path": s.model,
        "served_model_name": s.model,
        "tp_size": s.tp,
        "dp_size": s.dp_ranks,
        "page_size": s.hasher.block_size(),
        "context_length": s.max_model_len,
        "max_total_num_tokens": kv_tokens,
        "version": concat!("switchyard-", env!("CARGO_PKG_VERSION")),
    }))
    .into_response()
}

async fn completions(
    State(s): State<Arc<Shared>>,
    headers: axum::http::HeaderMap,
    body: Body,
) -> Response {
    generate(s, Endpoint::Completions, &headers, body)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

async fn chat(
    State(s): State<Arc<Shared>>,
    headers: axum::http::HeaderMap,
    body: Body,
) -> Response {
    generate(s, Endpoint::Chat, &headers, body)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

/// The DP rank a router asked for: vLLM's `X-data-parallel-rank` header, or SGLang's
/// `data_parallel_rank` body field. Out of range is the caller's error.
fn requested_rank(
    headers: &axum::http::HeaderMap,
    body: &[u8],
    ranks: u32,
) -> Result<Option<u32>, ApiError> {
    let from_header = headers
        .get(crate::serve::DP_RANK_HEADER)
        .map(|v| {
            v.to_str()
                .ok()
                .and_then(|v| v.trim().parse::<u32>().ok())
                .ok_or_else(|| ApiError::bad("X-data-parallel-rank must be a rank number"))
        })
        .transpose()?;
    let rank = match from_header {
        Some(r) => Some(r),
        None => serde_json::from_slice::<serde_json::Value>(body)
            .ok()
            .and_then(|v| v.get("data_parallel_rank").and_then(|r| r.as_u64()))
            .map(|r| u32::try_from(r).unwrap_or(u32::MAX)),
    };
    if let Some(r) = rank
        && r >= ranks
    {
        return Err(ApiError::bad(format!(
            "data-parallel rank {r} does not exist (this engine has {ranks})"
        ))
        .with_param("data_parallel_rank"));
    }
    Ok(rank)
}

async fn generate(
    s: Arc<Shared>,
    ep: Endpoint,
    headers: &axum::http::HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    s.requests.fetch_add(1, Ordering::Relaxed);
    let r = match read_body(body, s.max_body).await {
        Ok(body) => match requested_rank(headers, &body, s.dp_ranks) {
            Ok(rank) => admit(&s, ep, &body, rank).await,
            Err(e) => Err(e),
        },
        Err(e) => Err(e),
    };
    if r.is_err() {
        s.rejected.fetch_add(1, Ordering::Relaxed);
    }
    let (p, adm) = r?;
    let prompt_len = adm.prompt_tokens;
    let ctx = Ctx {
        // Unique across workers and restarts (a per-process random prefix), as OpenAI's are.
        id: format!(
            "{}-{:016x}{:x}",
            if ep == Endpoint::Chat {
                "chatcmpl"
            } else {
                "cmpl"
            },
            s.id_salt,
            adm.guard.id
        ),
        model: serde_json::to_string(&s.model).unwrap_or_else(|_| "\"\"".into()),
        created: s.created,
        chat: ep == Endpoint::Chat,
        usage: json!({
            "prompt_tokens": prompt_len,
            "completion_tokens": adm.max_out,
            "total_tokens": prompt_len + adm.max_out,
            "prompt_tokens_details": {"cached_tokens": adm.cached},
        }),
        kv_params: adm.kv_params,
    };
    if !p.stream {
        let mut rx = adm.rx;
        let mut guard = adm.guard;
        let mut n = 0;
        while let Some(t) = rx.recv().await {
            match t {
                Tok::Token => n += 1,
                Tok::Done => break,
            }
        }
        guard.armed = false;
        if n < adm.max_out {
            return Err(ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "the engine stopped before finishing the request",
            ));
        }
        let text = filler_text(n);
        let choice = if ctx.chat {
            json!({"index": 0, "message": {"role": "assistant", "content": text},
                   "logprobs": null, "finish_reason": "length"})
        } else {
            json!({"index": 0, "text": text, "logprobs": null, "finish_reason": "length"})
        };
        let mut body = json!({
            "id": ctx.id,
            "object": if ctx.chat { "chat.completion" } else { "text_completion" },
            "created": ctx.created,
            "model": s.model,
            "choices": [choice],
            "usage": ctx.usage,
        });
        if let Some(k) = ctx.kv_params {
            body["kv_transfer_params"] = k;
        }
        return Ok(axum::Json(body).into_response());
    }
    let st = StreamState {
        rx: adm.rx,
        guard: adm.guard,
        ctx,
        i: 0,
        max_out: adm.max_out,
        include_usage: p.include_usage,
        phase: Phase::Start,
    };
    let body = stream::unfold(st, |mut st| async move {
        let chunk = st.next_chunk().await?;
        Some((Ok::<_, std::convert::Infallible>(Bytes::from(chunk)), st))
    });
    Ok(Response::builder()
        .header(header::CONTENT_TYPE, "text/event-stream")
        .header(header::CACHE_CONTROL, "no-cache")
        .body(Body::from_stream(body))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response()))
}

struct Admitted {
    rx: mpsc::UnboundedReceiver<Tok>,
    guard: AbortGuard,
    prompt_tokens: u32,
    max_out: u32,
    cached: u32,
    /// Prefill role (vLLM): the response's `kv_transfer_params`.
    kv_params: Option<serde_json::Value>,
}

async fn admit(
    s: &Shared,
    ep: Endpoint,
    body: &[u8],
    dp_rank: Option<u32>,
) -> Result<(ParsedRequest, Admitted), ApiError> {
    let p = parse_request(body, ep)?;
    if let Some(field) = p.unsupported {
        return Err(ApiError::bad(format!(
            "`{field}` is not supported by the simulated worker (it generates filler text)"
        ))
        .with_param(field));
    }
    if p.model != s.model {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("The model `{}` does not exist.", p.model),
        )
        .with_param("model"));
    }
    let tokens = s
        .tokenization
        .prompt_tokens_async(&p.prompt)
        .await
        .map_err(|e| ApiError::bad(e.to_string()))?;
    let mut max_out = p.max_tokens.unwrap_or(s.default_max_tokens);
    if s.role == Role::Prefill {
        // A prefill worker makes exactly the first token, whatever was asked.
        max_out = 1;
    }
    let total = tokens.len() as u64 + max_out as u64;
    if total > s.max_model_len as u64 {
        return Err(ApiError::bad(format!(
            "This model's maximum context length is {} tokens. However, you requested {} tokens \
             ({} in the prompt, {} in the completion). Please reduce the length of the prompt \
             or the completion.",
            s.max_model_len,
            total,
            tokens.len(),
            max_out
        )));
    }
    let hashes = s.hasher.hash(&tokens);
    let id = s.next_id.fetch_add(1, Ordering::Relaxed);
    let remote = if s.role == Role::Decode {
        RemoteKv::from_fields(&p.disagg)?
    } else {
        None
    };
    let mut engine_out = max_out;
    let mut kv_params = None;
    let mode = match s.role {
        Role::Aggregated => Mode::Normal,
        Role::Prefill => {
            let pulls = p
                .disagg
                .kv_transfer_params
                .as_ref()
                .and_then(|k| k.get("do_remote_prefill"))
                .and_then(serde_json::Value::as_bool)
                == Some(true);
            if pulls {
                return Err(ApiError::bad(
                    "this is a prefill worker: it computes prompts and does not pull KV \
                     (send the request with kv_transfer_params to a decode worker)",
                )
                .with_param("kv_transfer_params"));
            }
            let key = if let Some(b) = &p.disagg.bootstrap {
                Some(pd::room_key(b.room))
            } else if p
                .disagg
                .kv_transfer_params
                .as_ref()
                .and_then(|k| k.get("do_remote_decode"))
                .and_then(serde_json::Value::as_bool)
                == Some(true)
            {
                Some(format!("{}-{id}", s.engine_id))
            } else {
                None
            };
            if let Some(k) = &key
                && p.disagg.bootstrap.is_none()
            {
                let (host, port) = &s.advertise;
                kv_params = Some(pd::prefill_response_params(
                    host,
                    *port,
                    k,
                    &s.engine_id,
                    &hashes,
                    s.tp,
                ));
            }
            Mode::Prefill { key }
        }
        Role::Decode => match remote {
            None => Mode::Local,
            Some(remote) => {
                let info = pd::pull(&s.client, &remote, s.pull_wait)
                    .await
                    .map_err(|e| {
                        s.pd_counters.pull_failures.fetch_add(1, Ordering::Relaxed);
                        ApiError::new(StatusCode::BAD_GATEWAY, format!("KV transfer failed: {e}"))
                    })?;
                if info.prompt_tokens != tokens.len() as u32 {
                    return Err(ApiError::bad(format!(
                        "kv_transfer_params refer to a prompt of {} tokens; this request's \
                         prompt has {} tokens",
                        info.prompt_tokens,
                        tokens.len()
                    ))
                    .with_param("kv_transfer_params"));
                }
                // The prefill worker made the first token; this engine makes the rest and
                // streams every token the client sees.
                engine_out = max_out + 1;
                Mode::Remote { remote, info }
            }
        },
    };
    let (tx, rx) = mpsc::unbounded_channel();
    let (reply, wait) = oneshot::channel();
    let prompt_len = tokens.len() as u32;
    let unavailable = || ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "engine is not running");
    s.cmd
        .send(Cmd::Admit {
            id,
            tokens,
            hashes,
            engine_out,
            max_out,
            dp_rank,
            mode,
            tx,
            reply,
        })
        .map_err(|_| unavailable())?;
    let cached = wait
        .await
        .map_err(|_| unavailable())?
        .map_err(|e| ApiError::bad(format!("request rejected by the engine: {e}")))?;
    Ok((
        p,
        Admitted {
            rx,
            guard: AbortGuard {
                id,
                cmd: s.cmd.clone(),
                armed: true,
            },
            prompt_tokens: prompt_len,
            max_out,
            cached,
            kv_params,
        },
    ))
}

struct Ctx {
    id: String,
    /// JSON-encoded model name.
    model: String,
    created: u64,
    chat: bool,
    usage: serde_json::Value,
    kv_params: Option<serde_json::Value>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Phase {
    Start,
    Tokens,
    Usage,
    Done,
    End,
}

struct StreamState {
    rx: mpsc::UnboundedReceiver<Tok>,
    guard: AbortGuard,
    ctx: Ctx,
    i: u32,
    max_out: u32,
    include_usage: bool,
    phase: Phase,
}

impl StreamState {
    fn chunk(&self, text: &str, role: bool, finish: bool) -> String {
        let c = &self.ctx;
        let fin = if finish { "\"length\"" } else { "null" };
        if c.chat {
            let delta = if role {
                "{\"role\":\"assistant\",\"content\":\"\"}".to_string()
            } else {
                format!("{{\"content\":\"{text}\"}}")
            };
            format!(
                "data: {{\"id\":\"{}\",\"object\":\"chat.completion.chunk\",\"created\":{},\"model\":{},\"choices\":[{{\"index\":0,\"delta\":{delta},\"logprobs\":null,\"finish_reason\":{fin}}}]}}\n\n",
                c.id, c.created, c.model
            )
        } else {
            format!(
                "data: {{\"id\":\"{}\",\"object\":\"text_completion\",\"created\":{},\"model\":{},\"choices\":[{{\"index\":0,\"text\":\"{text}\",\"logprobs\":null,\"finish_reason\":{fin}}}]}}\n\n",
                c.id, c.created, c.model
            )
        }
    }

    async fn next_chunk(&mut self) -> Option<String> {
        loop {
            match self.phase {
                Phase::Start => {
                    self.phase = Phase::Tokens;
                    if self.ctx.chat {
                        return Some(self.chunk("", true, false));
                    }
                }
                Phase::Tokens => match self.rx.recv().await {
                    Some(Tok::Token) if self.i < self.max_out => {
                        let i = self.i;
                        self.i += 1;
                        return Some(self.chunk(filler_piece(i), false, self.i == self.max_out));
                    }
                    Some(Tok::Token) => {}
                    Some(Tok::Done) => {
                        self.guard.armed = false;
                        self.phase = Phase::Usage;
                    }
                    None => {
                        self.phase = Phase::End;
                        return Some(
                            "data: {\"error\":{\"message\":\"the engine stopped\",\"type\":\"server_error\",\"code\":500}}\n\n"
                                .into(),
                        );
                    }
                },
                Phase::Usage => {
                    self.phase = Phase::Done;
                    if self.include_usage || self.ctx.kv_params.is_some() {
                        let c = &self.ctx;
                        let obj = if c.chat {
                            "chat.completion.chunk"
                        } else {
                            "text_completion"
                        };
                        let mut extra = String::new();
                        if self.include_usage {
                            extra.push_str(&format!(",\"usage\":{}", c.usage));
                        }
                        if let Some(k) = &c.kv_params {
                            extra.push_str(&format!(",\"kv_transfer_params\":{k}"));
                        }
                        return Some(format!(
                            "data: {{\"id\":\"{}\",\"object\":\"{obj}\",\"created\":{},\"model\":{},\"choices\":[]{extra}}}\n\n",
                            c.id, c.created, c.model
                        ));
                    }
                }
                Phase::Done => {
                    self.phase = Phase::End;
                    return Some("data: [DONE]\n\n".into());
                }
                Phase::End => return None,
            }
        }
    }
}

/// `POST /kv_transfer/pull {"key"}`: the KV's prompt length and this engine's link, once held.
async fn kv_pull(State(s): State<Arc<Shared>>, body: Bytes) -> Response {
    let Ok(k) = serde_json::from_slice::<pd::KeyBody>(&body) else {
        return ApiError::unprocessable("key", "expected {\"key\": \"...\"}").into_response();
    };
    if s.role != Role::Prefill {
        return ApiError::bad("this worker is not a prefill worker: it holds no KV to pull")
            .into_response();
    }
    let (reply, wait) = oneshot::channel();
    if s.cmd.send(Cmd::Pull { key: k.key, reply }).is_err() {
        return ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "engine is not running")
            .into_response();
    }
    match wait.await {
        Ok(Ok(info)) => axum::Json(info).into_response(),
        Ok(Err(e)) => ApiError::new(StatusCode::NOT_FOUND, e).into_response(),
        Err(_) => {
            s.pd_counters.pull_failures.fetch_add(1, Ordering::Relaxed);
            ApiError::new(
                StatusCode::GATEWAY_TIMEOUT,
                "timed out waiting for the prefill to finish",
            )
            .into_response()
        }
    }
}

/// `POST /kv_transfer/release {"key"}`: the decode side has the KV (or gave up): free it.
async fn kv_release(State(s): State<Arc<Shared>>, body: Bytes) -> Response {
    let Ok(k) = serde_json::from_slice::<pd::KeyBody>(&body) else {
        return ApiError::unprocessable("key", "expected {\"key\": \"...\"}").into_response();
    };
    if s.cmd.send(Cmd::Release { key: k.key }).is_err() {
        return ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "engine is not running")
            .into_response();
    }
    StatusCode::NO_CONTENT.into_response()
}

async fn metrics(State(s): State<Arc<Shared>>) -> Response {
    let snap = s.snapshot.lock().map(|g| *g).ok();
    let mut out = String::new();
    let mut put = |name: &str, kind: &str, help: &str, v: f64| {
        out.push_str(&format!(
            "# HELP switchyard_worker_{name} {help}\n# TYPE switchyard_worker_{name} {kind}\nswitchyard_worker_{name} {v}\n"
        ));
    };
    put(
        "http_requests_total",
        "counter",
        "Generation requests received.",
        s.requests.load(Ordering::Relaxed) as f64,
    );
    put(
        "http_requests_rejected_total",
        "counter",
        "Generation requests rejected (bad input, engine rejection).",
        s.rejected.load(Ordering::Relaxed) as f64,
    );
    if let Some(sn) = snap {
        let l = sn.load;
        let st = sn.stats;
        put(
            "num_requests_running",
            "gauge",
            "Sequences prefilling or decoding.",
            l.running as f64,
        );
        put(
            "num_requests_waiting",
            "gauge",
            "Sequences waiting to start.",
            l.waiting as f64,
        );
        let usage = if l.kv_blocks_total == 0 {
            0.0
        } else {
            l.kv_blocks_used as f64 / l.kv_blocks_total as f64
        };
        put(
            "kv_cache_usage_ratio",
            "gauge",
            "Fraction of KV blocks in use.",
            usage,
        );
        put(
            "kv_blocks_total",
            "gauge",
            "KV blocks (all DP ranks).",
            l.kv_blocks_total as f64,
        );
        put(
            "prefix_cache_hit_rate",
            "gauge",
            "Prompt tokens served from the prefix cache / prompt tokens.",
            st.prefix_hit_rate(),
        );
        put(
            "prompt_tokens_total",
            "counter",
            "Prompt tokens of started requests.",
            st.prompt_tokens as f64,
        );
        put(
            "cached_prompt_tokens_total",
            "counter",
            "Prompt tokens hit in the prefix cache.",
            st.cached_prompt_tokens as f64,
        );
        put(
            "generation_tokens_total",
            "counter",
            "Generated tokens.",
            st.generated_tokens as f64,
        );
        put("steps_total", "counter", "Engine steps.", st.steps as f64);
        put(
            "num_requests_awaiting_kv",
            "gauge",
            "Decode role: requests waiting for their KV transfer.",
            l.awaiting_kv as f64,
        );
        put(
            "num_prefill_tokens_pending",
            "gauge",
            "Prompt tokens not yet computed of waiting and prefilling requests.",
            l.pending_prefill_tokens as f64,
        );
        put(
            "busy_seconds_total",
            "counter",
            "Simulated GPU busy time.",
            st.busy_time,
        );
        put(
            "requests_finished_total",
            "counter",
            "Requests finished.",
            st.finished as f64,
        );
        put(
            "preemptions_total",
            "counter",
            "Sequences preempted.",
            st.preemptions as f64,
        );
    }
    let c = &s.pd_counters;
    let ld = |a: &AtomicU64| a.load(Ordering::Relaxed) as f64;
    for (name, kind, help, v) in [
        (
            "kv_held_requests",
            "gauge",
            "Prefill role: finished prefills holding KV for a pull.",
            ld(&c.held),
        ),
        (
            "kv_hold_timeouts_total",
            "counter",
            "Prefill role: held KV freed by the hold timeout.",
            ld(&c.hold_timeouts),
        ),
        (
            "kv_pulls_served_total",
            "counter",
            "Prefill role: KV pulls answered.",
            ld(&c.pulls_served),
        ),
        (
            "kv_pull_failures_total",
            "counter",
            "KV pulls that failed (unknown key, timeout, unreachable prefill).",
            ld(&c.pull_failures),
        ),
        (
            "kv_transfers_in_flight",
            "gauge",
            "Decode role: KV transfers in progress.",
            ld(&c.transfers_in_flight),
        ),
        (
            "kv_transfers_total",
            "counter",
            "Decode role: KV transfers completed.",
            ld(&c.transfers_done),
        ),
        (
            "kv_transfer_bytes_total",
            "counter",
            "Decode role: KV bytes transferred (simulated).",
            ld(&c.transfer_bytes),
        ),
        (
            "local_prefills_total",
            "counter",
            "Decode role: requests prefilled locally (no remote KV).",
            ld(&c.local_prefills),
        ),
    ] {
        out.push_str(&format!(
            "# HELP switchyard_worker_{name} {help}\n# TYPE switchyard_worker_{name} {kind}\nswitchyard_worker_{name} {v}\n"
        ));
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcard_endpoints_become_connectable() {
        for (ep, want) in [
            ("tcp://*:5557", "tcp://10.0.0.7:5557"),
            ("tcp://0.0.0.0:5557", "tcp://10.0.0.7:5557"),
            ("tcp://[::]:5557", "tcp://10.0.0.7:5557"),
            ("tcp://127.0.0.1:5557", "tcp://127.0.0.1:5557"),
            ("tcp://vllm-0:5557", "tcp://vllm-0:5557"),
            ("ipc:///tmp/x", "ipc:///tmp/x"),
        ] {
            assert_eq!(connectable_endpoint(ep, "10.0.0.7"), want, "{ep}");
        }
        assert_eq!(bracket_v6("fd00::7"), "[fd00::7]");
        assert_eq!(bracket_v6("[fd00::7]"), "[fd00::7]");
        assert_eq!(bracket_v6("vllm-0"), "vllm-0");
    }

    #[tokio::test]
    async fn record_advertises_a_reachable_worker() {
        let args = WorkerArgs {
            host: "0.0.0.0".into(),
            kv_events: Some("tcp://*:0".into()),
            advertise_host: Some("10.1.2.3".into()),
            role: Some("prefill".into()),
            ..WorkerArgs::default()
        };
        let h = start_worker(&args, args.engine_config().unwrap())
            .await
            .unwrap();
        let r = h.record();
        let port = h.addr.port();
        assert_eq!(r.url, format!("http://10.1.2.3:{port}"));
        assert_eq!(r.id, format!("10.1.2.3-{port}"));
        assert_eq!(r.role, switchyard_cluster::Role::Prefill);
        let ev = r.kv_events.clone().unwrap();
        assert!(
            ev.starts_with("tcp://10.1.2.3:") && !ev.ends_with(":0"),
            "{ev}"
        );
        assert_eq!(r.model.as_deref(), Some(h.model.as_str()));
        assert!(r.validate().is_ok());
    }
}
