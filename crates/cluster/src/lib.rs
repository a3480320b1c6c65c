//! Switchyard beyond one machine: the distributed-infrastructure layer.
//!
//! - **Membership through etcd.** A worker (or the `switchyard register` sidecar in front of a
//!   real engine) writes a [`WorkerRecord`] as JSON under a key prefix, attached to a lease it
//!   keeps alive ([`Registration`]). Frontends watch the prefix ([`Discovery`]) and get a
//!   stream of [`MembershipEvent`]s: a full snapshot first, then live changes. An expired lease
//!   (crashed worker, failed health checks) deletes the key, which reaches every frontend as a
//!   `Remove`.
//! - **Fan-out through NATS.** Active-active frontend replicas share router state that is not
//!   visible in the engines' own KV events: approximate-mode predictions ("I just routed this
//!   prefix to worker W") and their in-flight request counts ([`Fanout`]).
//!
//! Every background task here survives its infrastructure going away: it logs, reports a
//! degraded [`LinkHealth`] on a `watch` channel, keeps the last known state, and reconnects with
//! backoff. Nothing panics on bad input from the network.
//!
//! See `docs/cluster.md` for the consistency model and failure modes.
//!
//! # Wiring (what `serve` and `worker` call)
//!
//! ```no_run
//! use switchyard_cluster::*;
//! # async fn demo() -> Result<(), ClusterError> {
//! // worker --register etcd://127.0.0.1:2379
//! let mut rec = WorkerRecord::new("http://127.0.0.1:8001", Role::Prefill);
//! rec.kv_events = Some("tcp://127.0.0.1:5557".into());
//! let reg = Registration::start(RegisterConfig::from_url("etcd://127.0.0.1:2379")?, rec)?;
//! // ... on SIGTERM: reg.shutdown().await (revokes the lease).
//!
//! // serve --discovery etcd://127.0.0.1:2379
//! let mut disc = Discovery::watch(DiscoveryConfig::from_url("etcd://127.0.0.1:2379")?)?;
//! let etcd_health = disc.health(); // watch::Receiver<LinkHealth>, for /ready and /metrics
//! tokio::spawn(async move {
//!     while let Some(ev) = disc.recv().await {
//!         match ev {
//!             MembershipEvent::Upsert(r) => { /* add or replace worker r.id: r.worker_spec() */ }
//!             MembershipEvent::Remove(id) => { /* remove worker id and its KV entries */ }
//!         }
//!     }
//! });
//!
//! // serve --nats nats://127.0.0.1:4222
//! let mut fan = Fanout::connect("nats://127.0.0.1:4222", &default_replica_id(8000), "switchyard").await?;
//! let mut predictions = fan.take_predictions().expect("first take");
//! fan.publish_prediction("http://127.0.0.1:8001", 0, &[0x1234, 0x5678]); // after routing
//! fan.inflight_add("http://127.0.0.1:8001", 0, 1);  // request started
//! fan.inflight_add("http://127.0.0.1:8001", 0, -1); // request finished
//! let others = fan.remote_inflight("http://127.0.0.1:8001", 0); // add to the load estimate
//! # let _ = (reg, etcd_health, others, predictions.recv().await);
//! # Ok(()) }
//! ```

mod backoff;
pub mod discovery;
pub mod etcd;
pub mod fanout;
pub mod record;
pub mod register;

pub use discovery::{Discovery, DiscoveryConfig, MembershipEvent};
pub use fanout::{Fanout, FanoutConfig, FanoutStats, Prediction, default_replica_id};
pub use record::{Role, WorkerRecord};
pub use register::{
    HealthGate, RegisterArgs, RegisterConfig, Registration, RegistrationState, run_register,
};

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Default etcd key prefix for worker records (`<prefix><worker id>`).
pub const DEFAULT_PREFIX: &str = "/switchyard/workers/";
/// Default NATS subject prefix for frontend fan-out.
pub const DEFAULT_SUBJECT_PREFIX: &str = "switchyard";

/// Errors of this crate (configuration and protocol; transient outages are not errors, they
/// are [`LinkHealth`] states).
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error(
        "bad etcd endpoint {0:?}: expected etcd://HOST:PORT[,HOST:PORT...] or http://HOST:PORT"
    )]
    BadEndpoint(String),
    #[error("bad NATS URL {0:?}: expected nats://HOST:PORT")]
    BadNatsUrl(String),
    #[error("invalid worker record: {0}")]
    BadRecord(String),
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("etcd: {0}")]
    Etcd(#[from] etcd::EtcdError),
    #[error("NATS: {0}")]
    Nats(String),
    #[error("note decoding: {0}")]
    Decode(&'static str),
}

/// Connection state of a link to etcd or NATS, as reported on a `watch` channel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinkState {
    /// Never connected yet (startup).
    Connecting,
    /// Connected and up to date.
    Connected,
    /// Was connected or tried to, and is not now: serving continues on the last known state.
    Degraded,
}

impl LinkState {
    pub fn as_str(self) -> &'static str {
        match self {
            LinkState::Connecting => "connecting",
            LinkState::Connected => "connected",
            LinkState::Degraded => "degraded",
        }
    }
}

/// Health of one link (etcd discovery or NATS fan-out).
#[derive(Clone, Debug, PartialEq)]
pub struct LinkHealth {
    pub state: LinkState,
    /// When `state` was entered (wall clock, for `/ready` and metrics).
    pub since: SystemTime,
    /// The error that caused the last transition to `Degraded`, if any.
    pub last_error: Option<String>,
    /// Number of successful (re)connections so far.
    pub connects: u64,
}

impl LinkHealth {
    pub(crate) fn connecting() -> Self {
        LinkHealth {
            state: LinkState::Connecting,
            since: SystemTime::now(),
            last_error: None,
            connects: 0,
        }
    }

    pub fn is_connected(&self) -> bool {
        self.state == LinkState::Connected
    }

    /// How long the link has been in its current state.
    pub fn for_duration(&self) -> Duration {
        SystemTime::now()
            .duration_since(self.since)
            .unwrap_or_default()
    }

    /// `since` as seconds since the Unix epoch.
    pub fn since_unix(&self) -> f64 {
        self.since
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0)
    }
}

/// Update a health channel only on state changes (so `changed()` means something), keeping
/// the connect count.
pub(crate) fn set_health(
    tx: &tokio::sync::watch::Sender<LinkHealth>,
    state: LinkState,
    err: Option<String>,
) {
    tx.send_if_modified(|h| {
        if h.state == state {
            if err.is_some() && h.last_error != err {
                h.last_error = err;
                return true;
            }
            return false;
        }
        h.state = state;
        h.since = SystemTime::now();
        if state == LinkState::Connected {
            h.connects += 1;
        } else if err.is_some() {
            h.last_error = err;
        }
        true
    });
}

/// Parse `etcd://HOST:PORT[,HOST:PORT...]` (each item may also carry its own `etcd://`,
/// `http://` or no scheme) into the `http://HOST:PORT` endpoints the etcd client takes.
pub fn parse_etcd_endpoints(s: &str) -> Result<Vec<String>, ClusterError> {
    let mut out = Vec::new();
    for item in s.split(',') {
        let item = item.trim();
        if item.is_empty() {
            continue;
        }
        let hostport = item
            .strip_prefix("etcd://")
            .or_else(|| item.strip_prefix("http://"))
            .unwrap_or(item)
            .trim_end_matches('/');
        if item.starts_with("https://") {
            // TLS to etcd would need client certificates wired through; not supported yet.
            return Err(ClusterError::BadEndpoint(format!(
                "{item} (TLS endpoints are not supported)"
            )));
        }
        let ok = match hostport.rsplit_once(':') {
            Some((host, port)) => {
                !host.is_empty() && !host.contains('/') && port.parse::<u16>().is_ok_and(|p| p > 0)
            }
            None => false,
        };
        if !ok {
            return Err(ClusterError::BadEndpoint(item.to_string()));
        }
        out.push(format!("http://{hostport}"));
    }
    if out.is_empty() {
        return Err(ClusterError::BadEndpoint(s.to_string()));
    }
    Ok(out)
}

/// Seconds since the Unix epoch (wall clock; only for records and note timestamps).
pub(crate) fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

pub(crate) fn log(component: &str, msg: std::fmt::Arguments<'_>) {
    let mut line = msg.to_string();
    // Transport errors nest several sources; a log line needs the first few.
    if line.len() > 240 {
        let mut cut = 240;
        while !line.is_char_boundary(cut) {
            cut -= 1;
        }
        line.truncate(cut);
        line.push('…');
    }
    eprintln!("switchyard-cluster {component}: {line}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_parse() {
        assert_eq!(
            parse_etcd_endpoints("etcd://127.0.0.1:2379").unwrap(),
            vec!["http://127.0.0.1:2379"]
        );
        assert_eq!(
            parse_etcd_endpoints("etcd://a:1,b:2, etcd://c:3/").unwrap(),
            vec!["http://a:1", "http://b:2", "http://c:3"]
        );
        assert_eq!(
            parse_etcd_endpoints("http://etcd.default.svc:2379").unwrap(),
            vec!["http://etcd.default.svc:2379"]
        );
        for bad in [
            "",
            "etcd://",
            "etcd://host",
            "etcd://host:0",
            "etcd://host:99999",
            "https://h:2379",
            "etcd://:2379",
        ] {
            assert!(parse_etcd_endpoints(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn health_transitions_count_connects() {
        let (tx, rx) = tokio::sync::watch::channel(LinkHealth::connecting());
        set_health(&tx, LinkState::Degraded, Some("refused".into()));
        assert_eq!(rx.borrow().state, LinkState::Degraded);
        assert_eq!(rx.borrow().last_error.as_deref(), Some("refused"));
        set_health(&tx, LinkState::Connected, None);
        set_health(&tx, LinkState::Connected, None);
        assert_eq!(rx.borrow().connects, 1);
        // The last error stays visible after recovery (useful in /ready), connects counts.
        assert_eq!(rx.borrow().last_error.as_deref(), Some("refused"));
        set_health(&tx, LinkState::Degraded, Some("reset".into()));
        set_health(&tx, LinkState::Connected, None);
        assert_eq!(rx.borrow().connects, 2);
    }
}
