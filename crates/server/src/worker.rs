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
use rustc_hash::FxHashMap;
use serde_json::json;
use switchyard_engine::{Catalog, Engine, EngineConfig, EngineLoad, EngineStats, Request};
use switchyard_kv::wire::{WireBatch, WireEncoding, WireEvent, encode_batch};
use switchyard_kv::{BlockHasher, KvEvent};
use tokio::sync::{mpsc, oneshot};

use crate::events::{EventPublisher, start_publisher};
use crate::openai::{ApiError, Endpoint, ParsedRequest, parse_request, read_body};
use crate::tokenizer::{filler_piece, filler_text, prompt_tokens_async};

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
            kv_events_encoding: EventEncoding::Positional,
            kv_events_topic: String::new(),
            default_max_tokens: 16,
            max_body_bytes: 16 << 20,
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
        tokio::signal::ctrl_c().await?;
        Ok(())
    })
}

/// A running worker.
#[derive(Debug)]
pub struct WorkerHandle {
    /// Bound HTTP address.
    pub addr: SocketAddr,
    /// Bound KV-event endpoint (`tcp://IP:PORT`), when publishing.
    pub kv_events: Option<String>,
    /// Served model name.
    pub model: String,
    server: tokio::task::JoinHandle<()>,
    driver: tokio::task::JoinHandle<()>,
}

impl WorkerHandle {
    /// `http://addr`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
    /// Stop serving (simulates a crash: open connections are dropped).
    pub fn shutdown(&self) {
        self.server.abort();
        self.driver.abort();
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
    let mut cfg = cfg;
    cfg.kv_events = args.kv_events.is_some();
    let engine = Engine::new(&catalog, &cfg)?;
    let model = args
        .served_model_name
        .clone()
        .unwrap_or_else(|| cfg.model.clone());
    let (publisher, kv_events) = match &args.kv_events {
        Some(ep) => {
            let (p, bound) = start_publisher(ep, args.kv_events_topic.clone()).await?;
            (Some(p), Some(bound))
        }
        None => (None, None),
    };
    let listener = tokio::net::TcpListener::bind((args.host.as_str(), args.port))
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {}:{}: {e}", args.host, args.port))?;
    let addr = listener.local_addr()?;
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
        default_max_tokens: args.default_max_tokens.max(1),
        created: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        snapshot: snapshot.clone(),
        requests: AtomicU64::new(0),
        rejected: AtomicU64::new(0),
        max_body: args.max_body_bytes,
    });
    let driver = Driver {
        engine,
        reqs: FxHashMap::default(),
        blocks: FxHashMap::default(),
        block_size: shared.hasher.block_size() as usize,
        publisher: publisher.map(|p| (p, args.kv_events_encoding.into())),
        snapshot,
    };
    let driver = tokio::spawn(driver.run(cmd_rx, args.speedup));
    let app = worker_router(shared);
    let server = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok(WorkerHandle {
        addr,
        kv_events,
        model,
        server,
        driver,
    })
}

fn worker_router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/v1/models", get(models))
        .route("/v1/completions", post(completions))
        .route("/v1/chat/completions", post(chat))
        .route("/health", get(|| async { StatusCode::OK }))
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .layer(DefaultBodyLimit::disable())
        .with_state(shared)
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
}

enum Cmd {
    Admit {
        id: u64,
        tokens: Vec<u32>,
        hashes: Vec<u64>,
        max_out: u32,
        tx: mpsc::UnboundedSender<Tok>,
        reply: oneshot::Sender<Result<u32, String>>,
    },
    Abort(u64),
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

struct Driver {
    engine: Engine,
    reqs: FxHashMap<u64, ReqState>,
    blocks: FxHashMap<u64, BlockTokens>,
    block_size: usize,
    publisher: Option<(EventPublisher, WireEncoding)>,
    snapshot: Arc<Mutex<Snapshot>>,
}

impl Driver {
    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Cmd>, speedup: f64) {
        let t0 = Instant::now();
        let sim_now = |t0: Instant| t0.elapsed().as_secs_f64() * speedup;
        let mut since_yield = 0u32;
        loop {
            while let Ok(cmd) = rx.try_recv() {
                self.handle(cmd, sim_now(t0));
            }
            let out = self.engine.step(sim_now(t0));
            if out.scheduled_tokens == 0 && !out.is_visible() {
                // Idle (or blocked on memory): wait for the next command.
                self.publish_snapshot();
                match rx.recv().await {
                    Some(cmd) => self.handle(cmd, sim_now(t0)),
                    None => return,
                }
                continue;
            }
            let wake = t0 + Duration::from_secs_f64(out.end / speedup);
            // Handle commands while the step "runs" on the GPU.
            loop {
                if Instant::now() >= wake {
                    break;
                }
                tokio::select! {
                    _ = tokio::time::sleep_until(wake.into()) => break,
                    cmd = rx.recv() => match cmd {
                        Some(cmd) => self.handle(cmd, sim_now(t0)),
                        None => return,
                    },
                }
            }
            for &id in out.first_tokens.iter().chain(&out.decoded) {
                self.send_token(id);
            }
            for f in &out.finished {
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
            if !out.kv_events.is_empty() {
                self.publish_events(&out.kv_events);
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
                max_out,
                tx,
                reply,
            } => {
                let req = Request {
                    id,
                    prompt_tokens: tokens.len() as u32,
                    block_hashes: hashes.clone(),
                    max_output_tokens: max_out,
                    dp_rank: None,
                };
                match self.engine.admit(req, now) {
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
                        let _ = reply.send(Ok(cached));
                    }
                    Err(e) => {
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
        }
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

async fn completions(State(s): State<Arc<Shared>>, body: Body) -> Response {
    generate(s, Endpoint::Completions, body)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

async fn chat(State(s): State<Arc<Shared>>, body: Body) -> Response {
    generate(s, Endpoint::Chat, body)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

async fn generate(s: Arc<Shared>, ep: Endpoint, body: Body) -> Result<Response, ApiError> {
    s.requests.fetch_add(1, Ordering::Relaxed);
    let r = match read_body(body, s.max_body).await {
        Ok(body) => admit(&s, ep, &body).await,
        Err(e) => Err(e),
    };
    if r.is_err() {
        s.rejected.fetch_add(1, Ordering::Relaxed);
    }
    let (p, adm) = r?;
    let prompt_len = adm.prompt_tokens;
    let ctx = Ctx {
        id: format!(
            "{}-{}",
            if ep == Endpoint::Chat {
                "chatcmpl"
            } else {
                "cmpl"
            },
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
        return Ok(axum::Json(json!({
            "id": ctx.id,
            "object": if ctx.chat { "chat.completion" } else { "text_completion" },
            "created": ctx.created,
            "model": s.model,
            "choices": [choice],
            "usage": ctx.usage,
        }))
        .into_response());
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
}

async fn admit(
    s: &Shared,
    ep: Endpoint,
    body: &[u8],
) -> Result<(ParsedRequest, Admitted), ApiError> {
    let p = parse_request(body, ep)?;
    if p.model != s.model {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("The model `{}` does not exist.", p.model),
        )
        .with_param("model"));
    }
    let tokens = prompt_tokens_async(&p.prompt).await;
    let max_out = p.max_tokens.unwrap_or(s.default_max_tokens);
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
    let (tx, rx) = mpsc::unbounded_channel();
    let (reply, wait) = oneshot::channel();
    let prompt_len = tokens.len() as u32;
    let unavailable = || ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "engine is not running");
    s.cmd
        .send(Cmd::Admit {
            id,
            tokens,
            hashes,
            max_out,
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
                    if self.include_usage {
                        let c = &self.ctx;
                        let obj = if c.chat {
                            "chat.completion.chunk"
                        } else {
                            "text_completion"
                        };
                        return Some(format!(
                            "data: {{\"id\":\"{}\",\"object\":\"{obj}\",\"created\":{},\"model\":{},\"choices\":[],\"usage\":{}}}\n\n",
                            c.id, c.created, c.model, c.usage
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
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out).into_response()
}
