//! Running a benchmark: readiness probe, dispatch (fixed schedule, open-loop rate, closed
//! loop), collection, progress, cancellation.
//!
//! Timing design (2-core machines included):
//! - Open loop (trace schedule or `--request-rate`): a dedicated OS thread owns the schedule.
//!   It builds the next request body *before* its send time, sleeps with the OS timer (spinning
//!   the last ~100 us; tokio's timer has 1 ms granularity, too coarse for sub-millisecond
//!   dispatch) until a short lead before it (a tenth of the gap, at most 0.5 ms), and spawns the
//!   request task, which yields on a running worker until the exact send time. The task stamps
//!   `sent` right before handing the request to the connection pool, so the recorded dispatch
//!   lag includes every client-side delay (thread wake-up, runtime queueing).
//! - Closed loop (`--concurrency N` alone): N tasks, each sending its next request as soon as
//!   the previous one finished; a request's `scheduled` time is the moment the previous one
//!   finished, so dispatch lag is the client's turnaround.
//! - Each request task reads its own stream; results are pushed once per request.

use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use switchyard_metrics::{ChunkGaps, RequestRecord, Stats, quantize};
use tokio::sync::{Semaphore, watch};

use crate::args::{BenchArgs, ProgressMode};
use crate::arrival::Gaps;
use crate::client::{
    BodyBuilder, Client, Clock, RequestMeta, build_headers, http_client, secs_to_duration,
};
use crate::error::BenchError;
use crate::priority::RealtimeGuard;
use crate::workload::Workload;

/// Stops a running benchmark (Ctrl-C, tests). Cloneable; stopping twice is harmless.
#[derive(Debug, Clone)]
pub struct StopHandle {
    flag: Arc<AtomicBool>,
    tx: Arc<watch::Sender<bool>>,
}

impl StopHandle {
    pub fn new() -> StopHandle {
        StopHandle {
            flag: Arc::new(AtomicBool::new(false)),
            tx: Arc::new(watch::channel(false).0),
        }
    }
    /// Stop sending, abandon requests in flight, and return what was collected.
    pub fn stop(&self) {
        self.flag.store(true, Ordering::SeqCst);
        self.tx.send_replace(true);
    }
    pub fn is_stopped(&self) -> bool {
        self.flag.load(Ordering::SeqCst)
    }
    async fn stopped(&self) {
        let mut rx = self.tx.subscribe();
        let _ = rx.wait_for(|s| *s).await;
    }
}

impl Default for StopHandle {
    fn default() -> Self {
        Self::new()
    }
}

/// One finished request plus what only the client knows.
#[derive(Debug, Clone)]
pub(crate) struct Sample {
    pub record: RequestRecord,
    /// When the client was first allowed to send it: the scheduled time, or later when a
    /// `--concurrency` cap made it wait for a slot.
    pub slot: f64,
    /// Open loop: how late the dispatcher thread woke up to hand it over (seconds).
    pub woke: Option<f64>,
}

/// Client-side facts about the run (not request metrics).
#[derive(Debug, Clone, Serialize)]
pub struct ClientStats {
    /// `sent - scheduled` over all records, seconds (includes waiting for a concurrency slot).
    pub dispatch_lag: Option<Stats>,
    /// `sent - max(scheduled, slot acquired)`: the client's own overhead, seconds.
    pub dispatch_overhead: Option<Stats>,
    /// Open loop: how late the dispatcher thread woke up to hand each request over (its target
    /// is a short lead before the send time), seconds. The OS scheduler's share of the dispatch
    /// lag when it exceeds the lead.
    pub dispatcher_wake: Option<Stats>,
    /// Open loop: the dispatcher thread's scheduling (see [`crate::priority`]).
    pub dispatcher_priority: Option<String>,
    /// Time spent waiting for a `--concurrency` slot (capped open-loop runs), seconds.
    pub client_queue: Option<Stats>,
    /// Requests in flight when the run was stopped (not in the statistics).
    pub abandoned: u64,
    /// Requests of the workload never sent (stopped early or `--duration`).
    pub not_sent: Option<u64>,
    /// The run was interrupted (Ctrl-C or stop handle).
    pub interrupted: bool,
    /// Wall-clock time (Unix seconds) at the run's time zero.
    pub started_unix: f64,
    /// Successful requests whose output token count came from the server's usage.
    pub usage_reported: u64,
    /// Successful requests whose usage reported cached prompt tokens
    /// (`prompt_tokens_details.cached_tokens`; vLLM needs `--enable-prompt-tokens-details`).
    pub cached_reported: u64,
}

/// What the run produced, before reporting.
#[derive(Debug)]
pub struct RunResult {
    pub records: Vec<RequestRecord>,
    /// Per record (same order): seconds spent waiting for a `--concurrency` slot.
    pub client_queue: Vec<f64>,
    pub client: ClientStats,
    pub model: String,
    pub endpoint_url: String,
    pub workload: Workload,
}

struct Shared {
    client: Client,
    clock: Clock,
    body: BodyBuilder,
    stop: StopHandle,
    cap: Option<Arc<Semaphore>>,
    samples: Mutex<Vec<Sample>>,
    in_flight: AtomicU64,
    dispatched: AtomicU64,
    ok: AtomicU64,
    failed: AtomicU64,
    abandoned: AtomicU64,
    output_tokens: AtomicU64,
    ttfts: Mutex<Vec<f64>>,
    /// Set by the open-loop dispatcher once it knows its scheduling.
    dispatcher_priority: Mutex<Option<String>>,
}

impl Shared {
    fn finish(&self, mut s: Sample) {
        quantize_record(&mut s.record);
        s.slot = quantize(s.slot, TIME_RESOLUTION);
        s.woke = s.woke.map(|w| quantize(w, TIME_RESOLUTION));
        if s.record.is_ok() {
            self.ok.fetch_add(1, Ordering::Relaxed);
            self.output_tokens
                .fetch_add(u64::from(s.record.output_tokens), Ordering::Relaxed);
            if let Some(t) = s.record.ttft()
                && let Ok(mut v) = self.ttfts.lock()
            {
                v.push(t);
            }
        } else {
            self.failed.fetch_add(1, Ordering::Relaxed);
        }
        if let Ok(mut v) = self.samples.lock() {
            v.push(s);
        }
    }
}

/// Times are stored at microsecond resolution: far finer than any latency we report, and it
/// keeps `requests.jsonl` compact (`0.013022`, not `0.013022022162962998`).
pub const TIME_RESOLUTION: f64 = 1e6;

fn quantize_record(r: &mut RequestRecord) {
    let q = |x: f64| quantize(x, TIME_RESOLUTION);
    r.scheduled = q(r.scheduled);
    r.sent = q(r.sent);
    r.finish = q(r.finish);
    r.first_token = r.first_token.map(q);
    if !r.gaps.is_empty() {
        let mut g = ChunkGaps::new();
        for x in r.gaps.iter() {
            g.push(q(x));
        }
        r.gaps = g;
    }
}

/// Normalise the base URL: no trailing slash, no trailing `/v1` (users paste OpenAI base URLs).
pub fn base_url(url: &str) -> Result<String, BenchError> {
    let parsed = reqwest::Url::parse(url)
        .map_err(|e| BenchError::Arg(format!("--url `{url}` is not a URL: {e}")))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(BenchError::Arg(format!(
            "--url `{url}`: only http:// and https:// are supported"
        )));
    }
    let mut s = url.trim_end_matches('/').to_string();
    if s.ends_with("/v1") {
        s.truncate(s.len() - 3);
    }
    Ok(s)
}

/// GET /v1/models until it answers (or `wait` runs out); returns the model ids listed.
pub async fn probe(
    http: &reqwest::Client,
    base: &str,
    wait: Duration,
) -> Result<Vec<String>, BenchError> {
    let url = format!("{base}/v1/models");
    let deadline = Instant::now() + wait;
    loop {
        let attempt = http.get(&url).timeout(Duration::from_secs(10)).send().await;
        let retry_cause = match attempt {
            Ok(resp) => {
                let status = resp.status();
                if status.is_success() {
                    let v: serde_json::Value = resp.json().await.unwrap_or_default();
                    let ids = v["data"]
                        .as_array()
                        .map(|a| {
                            a.iter()
                                .filter_map(|m| m["id"].as_str().map(str::to_string))
                                .collect()
                        })
                        .unwrap_or_default();
                    return Ok(ids);
                }
                if status == reqwest::StatusCode::NOT_FOUND
                    || status == reqwest::StatusCode::METHOD_NOT_ALLOWED
                {
                    // Reachable, but without a model list: fine if --model is given.
                    return Ok(Vec::new());
                }
                if status == reqwest::StatusCode::UNAUTHORIZED
                    || status == reqwest::StatusCode::FORBIDDEN
                {
                    return Err(BenchError::NotReady {
                        url,
                        cause: format!(
                            "HTTP {status}: authentication failed; pass --api-key (or OPENAI_API_KEY) or -H"
                        ),
                    });
                }
                format!("HTTP {status}")
            }
            Err(e) => {
                let mut msg = e.to_string();
                if let Some(s) = std::error::Error::source(&e) {
                    msg = format!("{msg}: {s}");
                }
                if Instant::now() >= deadline {
                    return Err(BenchError::Unreachable {
                        url: base.to_string(),
                        cause: msg,
                    });
                }
                msg
            }
        };
        if Instant::now() >= deadline {
            return Err(BenchError::NotReady {
                url,
                cause: retry_cause,
            });
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Sleep until `target` with sub-millisecond precision; `false` if stopped meanwhile.
fn sleep_until_precise(target: Instant, stop: &StopHandle) -> bool {
    const SPIN: Duration = Duration::from_micros(100);
    loop {
        if stop.is_stopped() {
            return false;
        }
        let now = Instant::now();
        if now >= target {
            return true;
        }
        let left = target - now;
        if left > SPIN {
            // Wake up in time to re-check the stop flag at least every 50 ms. Spinning longer
            // does not help on a busy machine: the scheduler then preempts the spinner (tried:
            // 3 ms of spinning tripled the p99 wake-up delay under load).
            std::thread::sleep((left - SPIN).min(Duration::from_millis(50)));
        } else {
            std::hint::spin_loop();
        }
    }
}

/// Run a benchmark to completion (or until `stop`). No report, no files.
pub async fn execute(
    args: &BenchArgs,
    workload: Workload,
    stop: StopHandle,
) -> Result<RunResult, BenchError> {
    let extra = match &args.extra {
        None => None,
        Some(s) => match serde_json::from_str::<serde_json::Value>(s) {
            Ok(serde_json::Value::Object(m)) => {
                for k in ["prompt", "messages"] {
                    if m.contains_key(k) {
                        return Err(BenchError::Arg(format!(
                            "--extra may not set `{k}`: prompts come from the workload"
                        )));
                    }
                }
                Some(m)
            }
            Ok(_) => {
                return Err(BenchError::Arg(format!(
                    "--extra must be a JSON object, got `{s}`"
                )));
            }
            Err(e) => return Err(BenchError::Arg(format!("--extra is not valid JSON: {e}"))),
        },
    };
    if !(args.timeout.is_finite() && args.timeout > 0.0) {
        return Err(BenchError::Arg(
            "--timeout must be a positive number".into(),
        ));
    }
    if !(args.wait_ready.is_finite() && args.wait_ready >= 0.0) {
        return Err(BenchError::Arg("--wait-ready must be >= 0".into()));
    }
    if !(args.grace.is_finite() && args.grace >= 0.0) {
        return Err(BenchError::Arg("--grace must be >= 0".into()));
    }
    if let Some(d) = args.duration
        && !(d.is_finite() && d > 0.0)
    {
        return Err(BenchError::Arg(
            "--duration must be a positive number".into(),
        ));
    }
    if args.concurrency == Some(0) {
        return Err(BenchError::Arg("--concurrency must be at least 1".into()));
    }
    let gaps = match args.request_rate {
        Some(r) => Some(Gaps::new(r, args.arrival, args.burstiness, args.seed)?),
        None => None,
    };
    if gaps.is_some() && workload.fixed_schedule {
        return Err(BenchError::Arg(
            "--request-rate does not apply to trace replay (it follows the trace's timestamps; use --speedup)"
                .into(),
        ));
    }
    let base = base_url(&args.url)?;
    let headers = build_headers(args)?;
    let http = http_client(headers, secs_to_duration(args.timeout))?;

    // Reachability and model, before anything is scheduled.
    let models = probe(&http, &base, secs_to_duration(args.wait_ready)).await?;
    let model = match &args.model {
        Some(m) => m.clone(),
        None => models.first().cloned().ok_or_else(|| {
            BenchError::Model(format!(
                "{base}/v1/models lists no model; pass --model NAME"
            ))
        })?,
    };

    let stream = !args.no_stream;
    let body = BodyBuilder::new(
        args.endpoint,
        workload.prompt,
        workload.renderer.clone(),
        &model,
        stream,
        extra.as_ref(),
    );
    let endpoint_url = format!("{base}{}", args.endpoint.path());
    let closed_loop = args.concurrency.is_some() && gaps.is_none() && !workload.fixed_schedule;
    let cap = if closed_loop {
        None
    } else {
        args.concurrency
            .map(|n| Arc::new(Semaphore::new(n as usize)))
    };
    // Time zero a little in the future, so the first sends are not late by setup work.
    let clock = Clock {
        epoch: Instant::now() + Duration::from_millis(20),
    };
    let started_unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
        + 0.020;
    let shared = Arc::new(Shared {
        client: Client {
            http,
            url: endpoint_url.clone(),
            stream,
            cached_reported: Arc::new(AtomicU64::new(0)),
        },
        clock,
        body,
        stop: stop.clone(),
        cap,
        samples: Mutex::new(Vec::new()),
        in_flight: AtomicU64::new(0),
        dispatched: AtomicU64::new(0),
        ok: AtomicU64::new(0),
        failed: AtomicU64::new(0),
        abandoned: AtomicU64::new(0),
        output_tokens: AtomicU64::new(0),
        ttfts: Mutex::new(Vec::new()),
        dispatcher_priority: Mutex::new(None),
    });

    let progress = spawn_progress(args.progress, shared.clone(), workload.count);
    let grace = secs_to_duration(args.grace);
    let workload = Arc::new(workload);

    if closed_loop {
        let n = args.concurrency.unwrap_or(1);
        let next = Arc::new(AtomicU64::new(0));
        let mut tasks = Vec::with_capacity(n as usize);
        for _ in 0..n {
            tasks.push(tokio::spawn(closed_worker(
                shared.clone(),
                workload.clone(),
                next.clone(),
                args.duration,
            )));
        }
        let all = async {
            for t in tasks {
                let _ = t.await;
            }
        };
        let limit = args
            .duration
            .map(|d| secs_to_duration(d).saturating_add(grace))
            .unwrap_or(Duration::MAX);
        tokio::select! {
            _ = all => {}
            _ = tokio::time::sleep(limit.min(Duration::from_secs(86400 * 365))) => stop.stop(),
            _ = stop.stopped() => {}
        }
    } else {
        let handle = tokio::runtime::Handle::current();
        let (sh, wl, dur) = (shared.clone(), workload.clone(), args.duration);
        let realtime = args.realtime;
        let dispatcher =
            tokio::task::spawn_blocking(move || dispatch_open(sh, wl, gaps, dur, realtime, handle));
        tokio::select! {
            _ = dispatcher => {}
            _ = stop.stopped() => {}
        }
        // Wait for the requests in flight, at most `grace`.
        let deadline = Instant::now() + grace;
        while shared.in_flight.load(Ordering::SeqCst) > 0 && !stop.is_stopped() {
            if Instant::now() >= deadline {
                stop.stop();
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    let interrupted = stop.is_stopped();
    stop.stop(); // abandon anything left (after a grace timeout)
    // Let abandoned tasks observe the stop and unwind.
    let settle = Instant::now() + Duration::from_secs(2);
    while shared.in_flight.load(Ordering::SeqCst) > 0 && Instant::now() < settle {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    if let Some(p) = progress {
        p.abort();
        let _ = p.await;
        if args.progress != ProgressMode::Off && std::io::stderr().is_terminal() {
            eprintln!();
        }
    }

    let mut samples = std::mem::take(
        &mut *shared
            .samples
            .lock()
            .map_err(|_| BenchError::Arg("internal error: a request task panicked".into()))?,
    );
    samples.sort_by_key(|s| s.record.id);
    let dispatched = shared.dispatched.load(Ordering::SeqCst);
    let cached_reported = shared.client.cached_reported.load(Ordering::SeqCst);
    let mut client = client_stats(
        &samples,
        shared.abandoned.load(Ordering::SeqCst) + shared.in_flight.load(Ordering::SeqCst),
        workload.count.map(|n| n.saturating_sub(dispatched)),
        interrupted,
        started_unix,
    );
    client.cached_reported = cached_reported;
    client.dispatcher_priority = shared
        .dispatcher_priority
        .lock()
        .ok()
        .and_then(|p| p.clone());
    let client_queue = samples
        .iter()
        .map(|s| (s.slot - s.record.scheduled).max(0.0))
        .collect();
    let records = samples.into_iter().map(|s| s.record).collect();
    let workload = Arc::try_unwrap(workload).unwrap_or_else(|w| (*w).clone());
    Ok(RunResult {
        records,
        client_queue,
        client,
        model,
        endpoint_url,
        workload,
    })
}

fn client_stats(
    samples: &[Sample],
    abandoned: u64,
    not_sent: Option<u64>,
    interrupted: bool,
    started_unix: f64,
) -> ClientStats {
    let mut lag: Vec<f64> = samples.iter().map(|s| s.record.dispatch_lag()).collect();
    let mut overhead: Vec<f64> = samples
        .iter()
        .map(|s| s.record.sent - s.slot.max(s.record.scheduled))
        .collect();
    let mut wake: Vec<f64> = samples.iter().filter_map(|s| s.woke).collect();
    let mut queue: Vec<f64> = samples
        .iter()
        .filter(|s| s.slot > s.record.scheduled)
        .map(|s| s.slot - s.record.scheduled)
        .collect();
    ClientStats {
        dispatch_lag: Stats::from_values(&mut lag),
        dispatch_overhead: Stats::from_values(&mut overhead),
        client_queue: Stats::from_values(&mut queue),
        dispatcher_wake: Stats::from_values(&mut wake),
        dispatcher_priority: None,
        abandoned,
        not_sent,
        interrupted,
        started_unix,
        usage_reported: samples
            .iter()
            .filter(|s| s.record.is_ok() && !s.record.output_tokens_estimated)
            .count() as u64,
        cached_reported: 0,
    }
}

/// Longest head start a request task gets before its send time (seconds).
const LEAD_MAX: f64 = 0.000_5;

/// The open-loop dispatcher (runs on its own OS thread).
fn dispatch_open(
    shared: Arc<Shared>,
    workload: Arc<Workload>,
    mut gaps: Option<Gaps>,
    duration: Option<f64>,
    realtime: bool,
    handle: tokio::runtime::Handle,
) {
    // Dropped (previous policy restored) when this pooled thread is done dispatching.
    let priority = RealtimeGuard::acquire(realtime);
    if let Ok(mut p) = shared.dispatcher_priority.lock() {
        *p = Some(priority.priority().describe());
    }
    let mut t = 0.0;
    let mut i: u64 = 0;
    let mut prev_at = 0.0;
    while let Some(req) = workload.get(i) {
        let at = match req.at {
            Some(at) => at,
            None => {
                if i > 0
                    && let Some(g) = gaps.as_mut()
                {
                    t += g.next_gap();
                }
                t
            }
        };
        if duration.is_some_and(|d| at > d) {
            break;
        }
        let body = shared.body.build(&req);
        let meta = RequestMeta {
            id: req.id,
            input_len: req.input_len,
        };
        // Hand the request to the runtime a little early (a tenth of the gap, at most
        // LEAD_MAX): its task then waits for the exact time on an already-running worker, so
        // neither this thread's nor a parked worker's wake-up delay makes the send late.
        // Measured on a loaded 2-core machine: halves the median lag (40 -> 15 us at 1000
        // req/s); the p99 there is set by OS preemption either way.
        let lead = (at - prev_at).clamp(0.0, LEAD_MAX * 10.0) / 10.0;
        prev_at = at;
        let wake_at = at - lead;
        if !sleep_until_precise(shared.clock.instant(wake_at), &shared.stop) {
            break;
        }
        let woke_late = (shared.clock.now() - wake_at).max(0.0);
        shared.in_flight.fetch_add(1, Ordering::SeqCst);
        shared.dispatched.fetch_add(1, Ordering::SeqCst);
        handle.spawn(open_request(shared.clone(), meta, body, at, woke_late));
        i += 1;
    }
}

async fn open_request(
    shared: Arc<Shared>,
    meta: RequestMeta,
    body: Vec<u8>,
    scheduled: f64,
    woke_late: f64,
) {
    let stop = shared.stop.clone();
    let work = async {
        // Handed over early: wait for the exact send time without giving up the worker for
        // long (tokio's timer is too coarse for this).
        let target = shared.clock.instant(scheduled);
        while Instant::now() < target {
            tokio::task::yield_now().await;
        }
        let (slot, _permit) = match &shared.cap {
            // A free slot means no client queueing; otherwise the slot time is when one freed.
            Some(cap) => match cap.clone().try_acquire_owned() {
                Ok(p) => (scheduled, Some(p)),
                Err(_) => {
                    let p = cap.clone().acquire_owned().await.ok();
                    (shared.clock.now().max(scheduled), p)
                }
            },
            None => (scheduled, None),
        };
        let mut record = shared.client.execute(&shared.clock, meta, body).await;
        record.scheduled = scheduled;
        Sample {
            record,
            slot,
            woke: Some(woke_late),
        }
    };
    tokio::select! {
        s = work => shared.finish(s),
        _ = stop.stopped() => { shared.abandoned.fetch_add(1, Ordering::SeqCst); }
    }
    shared.in_flight.fetch_sub(1, Ordering::SeqCst);
}

async fn closed_worker(
    shared: Arc<Shared>,
    workload: Arc<Workload>,
    next: Arc<AtomicU64>,
    duration: Option<f64>,
) {
    // Every user sends its first request at time zero.
    let wait = shared.clock.epoch.saturating_duration_since(Instant::now());
    if !wait.is_zero() {
        tokio::time::sleep(wait).await;
    }
    // tokio's timer is coarse (1 ms): the first request counts from when the user woke up.
    let mut scheduled = shared.clock.now().max(0.0);
    loop {
        if shared.stop.is_stopped() {
            return;
        }
        let i = next.fetch_add(1, Ordering::SeqCst);
        let Some(req) = workload.get(i) else { return };
        if duration.is_some_and(|d| shared.clock.now() > d) {
            return;
        }
        let body = shared.body.build(&req);
        let meta = RequestMeta {
            id: req.id,
            input_len: req.input_len,
        };
        shared.in_flight.fetch_add(1, Ordering::SeqCst);
        shared.dispatched.fetch_add(1, Ordering::SeqCst);
        let stop = shared.stop.clone();
        let outcome = tokio::select! {
            r = shared.client.execute(&shared.clock, meta, body) => Some(r),
            _ = stop.stopped() => None,
        };
        shared.in_flight.fetch_sub(1, Ordering::SeqCst);
        match outcome {
            Some(mut record) => {
                record.scheduled = scheduled.min(record.sent);
                let finish = record.finish;
                shared.finish(Sample {
                    slot: record.scheduled,
                    woke: None,
                    record,
                });
                scheduled = finish;
            }
            None => {
                shared.abandoned.fetch_add(1, Ordering::SeqCst);
                return;
            }
        }
    }
}

fn spawn_progress(
    mode: ProgressMode,
    shared: Arc<Shared>,
    total: Option<u64>,
) -> Option<tokio::task::JoinHandle<()>> {
    let tty = std::io::stderr().is_terminal();
    let (period, redraw) = match mode {
        ProgressMode::Off => return None,
        ProgressMode::Auto if tty => (Duration::from_millis(500), true),
        _ => (Duration::from_secs(10), false),
    };
    Some(tokio::spawn(async move {
        let mut tick = tokio::time::interval(period);
        tick.tick().await;
        let (mut last_t, mut last_done, mut last_tok) = (0.0f64, 0u64, 0u64);
        loop {
            tick.tick().await;
            let now = shared.clock.now();
            let ok = shared.ok.load(Ordering::Relaxed);
            let failed = shared.failed.load(Ordering::Relaxed);
            let done = ok + failed;
            let tok = shared.output_tokens.load(Ordering::Relaxed);
            let dt = (now - last_t).max(1e-9);
            let rate = (done - last_done) as f64 / dt;
            let tok_rate = (tok - last_tok) as f64 / dt;
            (last_t, last_done, last_tok) = (now, done, tok);
            let p50 = shared.ttfts.lock().ok().and_then(|v| {
                let mut v = v.clone();
                switchyard_metrics::Stats::from_values(&mut v).map(|s| s.p50)
            });
            let line = format!(
                "[{:>7.1}s] sent {}{} | done {} (failed {}) | in flight {} | {:.1} req/s, {:.0} out tok/s | TTFT p50 {}",
                now.max(0.0),
                shared.dispatched.load(Ordering::Relaxed),
                total.map_or(String::new(), |t| format!("/{t}")),
                done,
                failed,
                shared.in_flight.load(Ordering::Relaxed),
                rate,
                tok_rate,
                p50.map_or("n/a".to_string(), |p| format!("{:.1} ms", p * 1000.0)),
            );
            let mut err = std::io::stderr().lock();
            if redraw {
                let _ = write!(err, "\r\x1b[2K{line}");
            } else {
                let _ = writeln!(err, "{line}");
            }
            let _ = err.flush();
        }
    }))
}
