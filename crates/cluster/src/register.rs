//! Worker registration: a lease-bound record in etcd, kept alive in the background.
//!
//! A worker (or the sidecar next to a real engine) owns one key, `<prefix><id>`, attached to a
//! lease. The key lives exactly as long as the lease is kept alive:
//! - process crash / network partition: keep-alives stop, etcd deletes the key within the TTL;
//! - clean shutdown ([`Registration::shutdown`]): the lease is revoked, the key disappears now;
//! - health-gated (sidecar): when the engine's `/health` fails `failures` times in a row, the
//!   lease is revoked; the record comes back once the engine is healthy again;
//! - etcd outage: keep-alives fail, the task reconnects with backoff, reuses the lease if it
//!   survived (etcd restores leases on restart), otherwise grants a new one and re-puts the
//!   same record.

use std::time::Duration;

use clap::Args;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::backoff::Backoff;
use crate::etcd::EtcdClient;
use crate::record::{Role, WorkerRecord};
use crate::{ClusterError, DEFAULT_PREFIX, log, parse_etcd_endpoints};

/// Health gating for the sidecar: the lease is kept alive only while `GET url` answers 200.
#[derive(Clone, Debug)]
pub struct HealthGate {
    /// Full URL probed, e.g. `http://vllm-0:8000/health`.
    pub url: String,
    /// Time between probes.
    pub interval: Duration,
    /// Consecutive failed probes before the lease is revoked (1 = at the first failure).
    pub failures: u32,
    /// Per-probe timeout (a hung engine counts as a failure).
    pub timeout: Duration,
}

impl HealthGate {
    /// Gate on `{base_url}/health` with the defaults: probe every 2 s, revoke after 2 failures,
    /// 1 s timeout per probe.
    pub fn new(base_url: &str) -> Self {
        HealthGate {
            url: format!("{}/health", base_url.trim_end_matches('/')),
            interval: Duration::from_secs(2),
            failures: 2,
            timeout: Duration::from_secs(1),
        }
    }
}

/// Registration settings; [`RegisterConfig::new`] holds the defaults.
#[derive(Clone, Debug)]
pub struct RegisterConfig {
    /// etcd endpoints (`http://HOST:PORT`), e.g. from [`parse_etcd_endpoints`].
    pub endpoints: Vec<String>,
    /// Key prefix; the record lives at `<prefix><record.id>`.
    pub prefix: String,
    /// Lease TTL in seconds: how long a dead worker can stay listed. etcd raises TTLs below its
    /// minimum (about 2 s with default election settings) to that minimum.
    pub ttl_secs: u32,
    /// Sidecar mode: keep the lease only while the engine is healthy.
    pub health: Option<HealthGate>,
    /// Timeout of each etcd request.
    pub request_timeout: Duration,
    /// Reconnect backoff bounds.
    pub backoff_min: Duration,
    pub backoff_max: Duration,
}

impl RegisterConfig {
    /// Defaults: prefix [`DEFAULT_PREFIX`], TTL 10 s, no health gate, 2 s request timeout,
    /// reconnect backoff 200 ms doubling to 5 s.
    pub fn new(endpoints: Vec<String>) -> Self {
        RegisterConfig {
            endpoints,
            prefix: DEFAULT_PREFIX.to_string(),
            ttl_secs: 10,
            health: None,
            request_timeout: Duration::from_secs(2),
            backoff_min: Duration::from_millis(200),
            backoff_max: Duration::from_secs(5),
        }
    }

    /// Defaults for `etcd://HOST:PORT[,HOST:PORT...]` (the `--register` flag's value).
    pub fn from_url(url: &str) -> Result<Self, ClusterError> {
        Ok(RegisterConfig::new(parse_etcd_endpoints(url)?))
    }
}

/// Where a registration stands (observable through [`Registration::state`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RegistrationState {
    /// Starting: not yet registered.
    Connecting,
    /// The record is in etcd, bound to this lease, and being kept alive.
    Registered { lease: i64 },
    /// Health-gated and the engine is unhealthy: the record has been withdrawn.
    Unhealthy,
    /// etcd unreachable: retrying. The record disappears when the lease expires.
    Degraded { error: String },
    /// Shut down (lease revoked if etcd was reachable).
    Stopped,
}

/// A running registration. Dropping it stops the keep-alives without revoking the lease (the
/// record then disappears within the TTL, as after a crash); [`Registration::shutdown`] leaves
/// cleanly.
pub struct Registration {
    key: String,
    state: watch::Receiver<RegistrationState>,
    stop: watch::Sender<bool>,
    task: Option<JoinHandle<()>>,
}

impl Registration {
    /// Validate and start registering in the background (needs a Tokio runtime). Returns at
    /// once; watch [`Registration::state`] or call [`Registration::wait_registered`].
    pub fn start(cfg: RegisterConfig, record: WorkerRecord) -> Result<Registration, ClusterError> {
        record.validate()?;
        if cfg.endpoints.is_empty() {
            return Err(ClusterError::Config("no etcd endpoints".into()));
        }
        if cfg.ttl_secs == 0 {
            return Err(ClusterError::Config(
                "lease TTL must be at least 1 s".into(),
            ));
        }
        if let Some(g) = &cfg.health {
            if g.failures == 0 || g.interval.is_zero() {
                return Err(ClusterError::Config(
                    "health gate needs failures >= 1 and a non-zero interval".into(),
                ));
            }
            if !(g.url.starts_with("http://") || g.url.starts_with("https://")) {
                return Err(ClusterError::Config(format!(
                    "health URL {:?} must be http(s)://",
                    g.url
                )));
            }
        }
        let key = format!("{}{}", cfg.prefix, record.id);
        let (state_tx, state) = watch::channel(RegistrationState::Connecting);
        let (stop, stop_rx) = watch::channel(false);
        let value = record.to_json();
        let task = tokio::spawn(run(cfg, key.clone(), value, state_tx, stop_rx));
        Ok(Registration {
            key,
            state,
            stop,
            task: Some(task),
        })
    }

    /// The etcd key this registration owns.
    pub fn key(&self) -> &str {
        &self.key
    }

    pub fn state(&self) -> watch::Receiver<RegistrationState> {
        self.state.clone()
    }

    /// Wait until the record is in etcd (or `timeout`); returns the lease id.
    pub async fn wait_registered(&self, timeout: Duration) -> Option<i64> {
        let mut rx = self.state.clone();
        let fut = async {
            loop {
                if let RegistrationState::Registered { lease } = *rx.borrow_and_update() {
                    return Some(lease);
                }
                if rx.changed().await.is_err() {
                    return None;
                }
            }
        };
        tokio::time::timeout(timeout, fut).await.ok().flatten()
    }

    /// Leave cleanly: revoke the lease (the record disappears from every watcher at once).
    /// Bounded: if etcd is unreachable this gives up after the request timeout.
    pub async fn shutdown(mut self) {
        let _ = self.stop.send(true);
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// A client for `endpoints`. Nothing is sent yet: the first request finds out whether etcd
/// is there.
pub(crate) fn connect(
    endpoints: &[String],
    request_timeout: Duration,
) -> Result<EtcdClient, ClusterError> {
    Ok(EtcdClient::new(endpoints, request_timeout)?)
}

/// Why the keep-alive loop ended.
enum Exit {
    Stop,
    /// The lease expired under us (etcd said TTL 0): grant a new one.
    Expired,
    Unhealthy,
    Lost(String),
}

async fn run(
    cfg: RegisterConfig,
    key: String,
    value: Vec<u8>,
    state: watch::Sender<RegistrationState>,
    mut stop: watch::Receiver<bool>,
) {
    let http = reqwest::Client::new();
    let mut backoff = Backoff::new(cfg.backoff_min, cfg.backoff_max);
    let mut client: Option<EtcdClient> = None;
    let mut lease: Option<i64> = None;
    let ttl = i64::from(cfg.ttl_secs);
    // Keep-alive at a third of the TTL: two may be lost before the lease expires.
    let ka_every =
        Duration::from_millis(u64::from(cfg.ttl_secs) * 1000 / 3).max(Duration::from_millis(300));
    let mut logged_error: Option<String> = None;

    loop {
        if *stop.borrow() {
            break;
        }
        // Gate: a sidecar registers only a healthy engine.
        if let Some(g) = &cfg.health
            && !probe(&http, g).await
        {
            if state.borrow().clone() != RegistrationState::Unhealthy {
                log(
                    "register",
                    format_args!("{key}: engine at {} not healthy; not registered", g.url),
                );
            }
            state.send_replace(RegistrationState::Unhealthy);
            if wait_or_stop(&mut stop, g.interval).await {
                break;
            }
            continue;
        }
        let c = match client.as_ref() {
            Some(c) => c,
            None => match connect(&cfg.endpoints, cfg.request_timeout) {
                Ok(c) => client.insert(c),
                Err(e) => {
                    degraded(&state, &key, &mut logged_error, e.to_string());
                    if wait_or_stop(&mut stop, backoff.next_delay()).await {
                        break;
                    }
                    continue;
                }
            },
        };
        let id = match ensure_registered(c, &mut lease, ttl, &key, &value).await {
            Ok(id) => id,
            Err(e) => {
                degraded(&state, &key, &mut logged_error, e);
                // Drop pooled connections: the next attempt dials afresh.
                client = None;
                if wait_or_stop(&mut stop, backoff.next_delay()).await {
                    break;
                }
                continue;
            }
        };
        if logged_error.take().is_some() {
            log(
                "register",
                format_args!("{key}: registered again (lease {id:x})"),
            );
        }
        state.send_replace(RegistrationState::Registered { lease: id });
        backoff.reset();

        match keep_alive(c, id, ka_every, &cfg, &http, &mut stop).await {
            Exit::Stop => break,
            Exit::Expired => {
                lease = None;
                log(
                    "register",
                    format_args!("{key}: lease {id:x} expired; registering anew"),
                );
            }
            Exit::Unhealthy => {
                // Withdraw now rather than after the TTL: routers stop sending at once.
                let _ = c.lease_revoke(id).await;
                lease = None;
                if let Some(g) = &cfg.health {
                    log(
                        "register",
                        format_args!("{key}: {} failing; withdrew the record", g.url),
                    );
                }
                state.send_replace(RegistrationState::Unhealthy);
            }
            Exit::Lost(e) => {
                degraded(&state, &key, &mut logged_error, e);
                client = None;
                if wait_or_stop(&mut stop, backoff.next_delay()).await {
                    break;
                }
            }
        }
    }
    // Clean leave: revoke so watchers drop the worker now, not after the TTL.
    if let (Some(id), Some(c)) = (lease, client.as_ref()) {
        let _ = c.lease_revoke(id).await;
    }
    state.send_replace(RegistrationState::Stopped);
}

fn degraded(
    state: &watch::Sender<RegistrationState>,
    key: &str,
    logged: &mut Option<String>,
    error: String,
) {
    // Log the first failure of an outage, not every retry.
    if logged.is_none() {
        log(
            "register",
            format_args!("{key}: etcd unavailable ({error}); retrying"),
        );
    }
    *logged = Some(error.clone());
    state.send_replace(RegistrationState::Degraded { error });
}

/// Reuse the lease if it survived, else grant one; then put the record bound to it. Every
/// request is bounded by the client's request timeout.
async fn ensure_registered(
    c: &EtcdClient,
    lease: &mut Option<i64>,
    ttl: i64,
    key: &str,
    value: &[u8],
) -> Result<i64, String> {
    if let Some(id) = *lease {
        let alive = c.lease_time_to_live(id).await.map_err(|e| e.to_string())? > 0;
        if !alive {
            *lease = None;
        }
    }
    let id = match *lease {
        Some(id) => id,
        None => {
            let g = c.lease_grant(ttl).await.map_err(|e| e.to_string())?;
            *lease = Some(g.id);
            g.id
        }
    };
    c.put(key, value, Some(id))
        .await
        .map_err(|e| e.to_string())?;
    Ok(id)
}

async fn keep_alive(
    c: &EtcdClient,
    id: i64,
    every: Duration,
    cfg: &RegisterConfig,
    http: &reqwest::Client,
    stop: &mut watch::Receiver<bool>,
) -> Exit {
    let mut ka = tokio::time::interval(every);
    ka.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let health_every = cfg
        .health
        .as_ref()
        .map(|g| g.interval)
        .unwrap_or(Duration::from_secs(3600));
    let mut hc = tokio::time::interval(health_every);
    hc.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    hc.tick().await; // the gate just passed
    let mut failures = 0u32;
    loop {
        tokio::select! {
            r = stop.changed() => {
                if r.is_err() || *stop.borrow() {
                    return Exit::Stop;
                }
            }
            _ = ka.tick() => {
                // One renewal per request (bounded by the request timeout); TTL 0 means etcd
                // no longer knows the lease.
                match c.lease_keep_alive(id).await {
                    Ok(ttl) if ttl > 0 => {}
                    Ok(_) => return Exit::Expired,
                    Err(e) => return Exit::Lost(e.to_string()),
                }
            }
            _ = hc.tick(), if cfg.health.is_some() => {
                if let Some(g) = &cfg.health {
                    if probe(http, g).await {
                        failures = 0;
                    } else {
                        failures += 1;
                        if failures >= g.failures {
                            return Exit::Unhealthy;
                        }
                    }
                }
            }
        }
    }
}

async fn probe(http: &reqwest::Client, g: &HealthGate) -> bool {
    matches!(
        http.get(&g.url).timeout(g.timeout).send().await,
        Ok(r) if r.status() == reqwest::StatusCode::OK
    )
}

/// Sleep `d` unless asked to stop; true if stopping.
async fn wait_or_stop(stop: &mut watch::Receiver<bool>, d: Duration) -> bool {
    if *stop.borrow() {
        return true;
    }
    tokio::select! {
        r = stop.changed() => r.is_err() || *stop.borrow(),
        _ = tokio::time::sleep(d) => false,
    }
}

// ----- `switchyard register` ------------------------------------------------------------------

/// Register an existing engine server (vLLM, SGLang, `switchyard worker`) in etcd and keep it
/// registered while its `/health` answers 200 — the sidecar next to a real engine.
#[derive(Args, Clone, Debug)]
pub struct RegisterArgs {
    /// The engine's OpenAI-compatible base URL as frontends should reach it.
    #[arg(long)]
    pub url: String,
    /// Serving role: aggregated, prefill or decode.
    #[arg(long, default_value = "aggregated")]
    pub role: Role,
    /// The engine's vLLM-format KV events endpoint (ZMQ PUB), e.g. tcp://vllm-0:5557.
    #[arg(long, value_name = "tcp://HOST:PORT")]
    pub kv_events: Option<String>,
    /// The engine's KV-event replay endpoint (vLLM `--kv-events-config`
    /// `replay_endpoint`, ZMQ ROUTER), e.g. tcp://vllm-0:5558: frontends fetch missed events
    /// from it and rebuild their index after a restart.
    #[arg(long, value_name = "tcp://HOST:PORT")]
    pub kv_events_replay: Option<String>,
    /// etcd endpoints: etcd://HOST:2379[,HOST:2379...].
    #[arg(long, default_value = "etcd://127.0.0.1:2379")]
    pub etcd: String,
    /// Key prefix of worker records.
    #[arg(long, default_value = DEFAULT_PREFIX)]
    pub prefix: String,
    /// Worker id (key suffix); default derived from --url (e.g. vllm-0.vllm-8000).
    #[arg(long)]
    pub id: Option<String>,
    /// Served model name, recorded for frontends and operators.
    #[arg(long)]
    pub model: Option<String>,
    /// Data-parallel ranks behind --url.
    #[arg(long, default_value_t = 1)]
    pub dp_size: u32,
    /// Lease TTL in seconds: how long a dead engine can stay listed.
    #[arg(long, default_value_t = 10)]
    pub ttl: u32,
    /// Seconds between health probes of {url}/health.
    #[arg(long, default_value_t = 2.0)]
    pub health_interval: f64,
    /// Consecutive failed probes before the record is withdrawn.
    #[arg(long, default_value_t = 2)]
    pub health_failures: u32,
    /// Health path probed on --url.
    #[arg(long, default_value = "/health")]
    pub health_path: String,
    /// Register without health gating (the lease lives as long as this process).
    #[arg(long)]
    pub no_health_check: bool,
}

impl RegisterArgs {
    /// The registration this command line describes.
    pub fn to_config(&self) -> Result<(RegisterConfig, WorkerRecord), ClusterError> {
        let mut cfg = RegisterConfig::new(parse_etcd_endpoints(&self.etcd)?);
        cfg.prefix = self.prefix.clone();
        cfg.ttl_secs = self.ttl;
        let mut record = WorkerRecord::new(&self.url, self.role);
        if let Some(id) = &self.id {
            record.id = id.clone();
        }
        record.kv_events = self.kv_events.clone();
        record.kv_events_replay = self.kv_events_replay.clone();
        record.model = self.model.clone();
        record.dp_size = self.dp_size;
        record.validate()?;
        if !self.no_health_check {
            if !(self.health_interval.is_finite() && self.health_interval > 0.0) {
                return Err(ClusterError::Config(format!(
                    "--health-interval must be positive seconds (got {})",
                    self.health_interval
                )));
            }
            let interval = Duration::from_secs_f64(self.health_interval.min(3600.0));
            let path = if self.health_path.starts_with('/') {
                self.health_path.clone()
            } else {
                format!("/{}", self.health_path)
            };
            cfg.health = Some(HealthGate {
                url: format!("{}{}", record.url, path),
                interval,
                failures: self.health_failures.max(1),
                timeout: interval.min(Duration::from_secs(2)),
            });
        }
        Ok((cfg, record))
    }
}

/// `switchyard register`: run until SIGINT/SIGTERM, then revoke the lease.
pub async fn run_register(args: RegisterArgs) -> Result<(), ClusterError> {
    let (cfg, record) = args.to_config()?;
    let endpoints = cfg.endpoints.join(",");
    let gate = cfg.health.as_ref().map(|g| g.url.clone());
    let reg = Registration::start(cfg, record)?;
    log(
        "register",
        format_args!(
            "{} -> etcd {endpoints}{}",
            reg.key(),
            gate.map(|u| format!(" (while {u} answers 200)"))
                .unwrap_or_default()
        ),
    );
    let mut st = reg.state();
    let watch_states = async {
        let mut last = String::new();
        loop {
            let now = match &*st.borrow_and_update() {
                RegistrationState::Registered { lease } => format!("registered (lease {lease:x})"),
                RegistrationState::Unhealthy => "engine unhealthy: withdrawn".to_string(),
                RegistrationState::Degraded { .. } => "etcd unavailable: retrying".to_string(),
                RegistrationState::Connecting => "connecting".to_string(),
                RegistrationState::Stopped => "stopped".to_string(),
            };
            if now != last {
                log("register", format_args!("{now}"));
                last = now;
            }
            if st.changed().await.is_err() {
                return;
            }
        }
    };
    tokio::select! {
        _ = watch_states => {}
        _ = shutdown_signal() => {}
    }
    reg.shutdown().await;
    log("register", format_args!("lease revoked; bye"));
    Ok(())
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: RegisterArgs,
    }

    #[test]
    fn args_to_config() {
        let cli = Cli::parse_from([
            "register",
            "--url",
            "http://vllm-0:8000/",
            "--role",
            "prefill",
            "--kv-events",
            "tcp://vllm-0:5557",
            "--etcd",
            "etcd://e1:2379,e2:2379",
            "--ttl",
            "4",
            "--health-interval",
            "0.5",
        ]);
        let (cfg, rec) = cli.args.to_config().unwrap();
        assert_eq!(cfg.endpoints, vec!["http://e1:2379", "http://e2:2379"]);
        assert_eq!(cfg.ttl_secs, 4);
        assert_eq!(rec.id, "vllm-0-8000");
        assert_eq!(rec.role, Role::Prefill);
        let g = cfg.health.unwrap();
        assert_eq!(g.url, "http://vllm-0:8000/health");
        assert_eq!(g.interval, Duration::from_millis(500));
        assert_eq!(g.failures, 2);

        let cli = Cli::parse_from(["register", "--url", "http://h:1", "--no-health-check"]);
        let (cfg, rec) = cli.args.to_config().unwrap();
        assert!(cfg.health.is_none());
        assert_eq!(rec.role, Role::Aggregated);
        assert_eq!(cfg.endpoints, vec!["http://127.0.0.1:2379"]);
    }

    #[test]
    fn bad_args_are_errors() {
        for argv in [
            vec!["register", "--url", "h:1"],
            vec!["register", "--url", "http://h:1", "--etcd", "etcd://nope"],
            vec!["register", "--url", "http://h:1", "--health-interval", "0"],
            vec!["register", "--url", "http://h:1", "--kv-events", "h:5557"],
            vec!["register", "--url", "http://h:1", "--id", "a/b"],
        ] {
            let cli = Cli::parse_from(argv.clone());
            assert!(cli.args.to_config().is_err(), "{argv:?}");
        }
        assert!(Cli::try_parse_from(["register", "--url", "http://h", "--role", "boss"]).is_err());
    }

    #[tokio::test]
    async fn start_validates() {
        let rec = WorkerRecord::new("http://h:1", Role::Aggregated);
        assert!(Registration::start(RegisterConfig::new(vec![]), rec.clone()).is_err());
        let mut cfg = RegisterConfig::new(vec!["http://127.0.0.1:1".into()]);
        cfg.ttl_secs = 0;
        assert!(Registration::start(cfg, rec).is_err());
    }
}
