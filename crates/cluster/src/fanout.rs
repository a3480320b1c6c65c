//! Fan-out between active-active frontend replicas over NATS core subjects.
//!
//! What is shared, and why: every replica subscribes to every engine's KV events itself, so
//! the exact prefix index needs no sharing. Two things are invisible in those events and would
//! make N replicas each believe they own the fleet:
//! - **predictions** (approximate mode, engines without KV events): "replica A just routed
//!   these block hashes to worker W", so replica B's approximate index learns it too;
//! - **in-flight counts**: each replica's requests outstanding per worker, so B's load
//!   estimate includes A's traffic.
//!
//! Lost messages must not leave permanent error, so in-flight state is carried as
//! *absolute snapshots* (each replica publishes all its counts every `snapshot_interval`, and
//! receivers replace that replica's whole table) with immediate *deltas* in between for
//! latency. A lost delta is wrong for at most one snapshot interval; a replica that dies stops
//! snapshotting and its counts expire after `expiry`. Deltas and snapshots of one replica go
//! on one subject, so NATS keeps them in publication order. Predictions are hints that the
//! receiving index ages out on its own; a lost one costs one less-informed routing decision.
//!
//! Publishing never blocks the request path: notes go through a bounded queue to a publisher
//! task and are dropped (and counted) when the queue is full or NATS is down.
//!
//! Wire format (little-endian, versioned; ~40 bytes + 8 per block hash):
//! `"SY" version:u8 kind:u8 replica:str8 incarnation:u64 seq:u64 at:f64` then
//! - kind 1 prediction: `worker:str16 dp_rank:u32 n:u32 hash:u64 × n`
//! - kind 2 in-flight delta: `worker:str16 dp_rank:u32 delta:i32`
//! - kind 3 in-flight snapshot: `expiry_ms:u32 n:u32 (worker:str16 dp_rank:u32 count:u32) × n`

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use tokio::sync::{Notify, mpsc, watch};
use tokio::task::JoinHandle;

use crate::{
    ClusterError, DEFAULT_SUBJECT_PREFIX, LinkHealth, LinkState, log, set_health, unix_now,
};

/// A routing prediction from another replica.
#[derive(Clone, Debug, PartialEq)]
pub struct Prediction {
    /// The replica that routed the request.
    pub replica: String,
    /// Fleet-wide worker identity (the worker URL, or its etcd record id — the same choice on
    /// every replica).
    pub worker: String,
    pub dp_rank: u32,
    /// The request's chained block hashes (the router's own hashes, prefix order).
    pub hashes: Vec<u64>,
    /// When the sender routed it (sender's wall clock, Unix seconds).
    pub at: f64,
}

/// A replica id unique on one machine and across pods: `<hostname>-<port>` (Kubernetes sets
/// the hostname to the pod name), reduced to `[A-Za-z0-9_-]`.
pub fn default_replica_id(port: u16) -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .unwrap_or_else(|| "replica".to_string());
    let mut id: String = host
        .trim()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '-'
            }
        })
        .take(100)
        .collect();
    if id.is_empty() {
        id.push_str("replica");
    }
    format!("{id}-{port}")
}

/// Fan-out settings; [`FanoutConfig::new`] holds the defaults.
#[derive(Clone, Debug)]
pub struct FanoutConfig {
    /// `nats://HOST:PORT` (comma-separated list allowed).
    pub url: String,
    /// This replica's id: unique per live replica, `[A-Za-z0-9_-]` (a NATS subject token).
    pub replica_id: String,
    /// Subject prefix: notes go to `<prefix>.predict.<replica>` and `<prefix>.load.<replica>`.
    pub subject_prefix: String,
    /// How often each replica publishes its absolute in-flight counts.
    pub snapshot_interval: Duration,
    /// Peers' counts are dropped this long after their last snapshot.
    pub expiry: Duration,
    /// After this long without a first connection, health turns `Degraded`.
    pub connect_timeout: Duration,
    /// Outgoing and incoming queue capacities (notes beyond them are dropped and counted).
    pub queue: usize,
}

impl FanoutConfig {
    /// Defaults: subject prefix [`DEFAULT_SUBJECT_PREFIX`], snapshots every 1 s, expiry 3 s,
    /// connect timeout 2 s, queues of 8192 notes.
    pub fn new(url: &str, replica_id: &str) -> Self {
        FanoutConfig {
            url: url.to_string(),
            replica_id: replica_id.to_string(),
            subject_prefix: DEFAULT_SUBJECT_PREFIX.to_string(),
            snapshot_interval: Duration::from_secs(1),
            expiry: Duration::from_secs(3),
            connect_timeout: Duration::from_secs(2),
            queue: 8192,
        }
    }
}

/// Counters (monotonic since connect).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FanoutStats {
    pub published: u64,
    /// Notes not sent: queue full or NATS disconnected.
    pub dropped: u64,
    pub received: u64,
    /// Notes from this replica id (another process with the same id, or echo) ignored.
    pub own_ignored: u64,
    pub decode_errors: u64,
    /// Predictions received but not taken fast enough by the consumer.
    pub predictions_dropped: u64,
    /// Gaps in a peer's load-note sequence (repaired by its next snapshot).
    pub seq_gaps: u64,
}

#[derive(Default)]
struct Counters {
    published: AtomicU64,
    dropped: AtomicU64,
    received: AtomicU64,
    own_ignored: AtomicU64,
    decode_errors: AtomicU64,
    predictions_dropped: AtomicU64,
    seq_gaps: AtomicU64,
}

/// One peer replica's in-flight table as last reported.
struct PeerLoad {
    incarnation: u64,
    last_seq: u64,
    expires: Instant,
    counts: HashMap<String, HashMap<u32, i64>>,
}

#[derive(Default)]
struct Shared {
    local: Mutex<HashMap<String, HashMap<u32, i64>>>,
    peers: Mutex<HashMap<String, PeerLoad>>,
    counters: Counters,
}

enum Outgoing {
    Prediction {
        worker: String,
        dp_rank: u32,
        hashes: Vec<u64>,
        at: f64,
    },
    Delta {
        worker: String,
        dp_rank: u32,
        delta: i32,
        at: f64,
    },
}

/// A connected (or connecting) fan-out endpoint. Dropping it stops its tasks.
pub struct Fanout {
    replica: String,
    out: mpsc::Sender<Outgoing>,
    predictions: Option<mpsc::Receiver<Prediction>>,
    health: watch::Receiver<LinkHealth>,
    shared: Arc<Shared>,
    tasks: Vec<JoinHandle<()>>,
}

impl Fanout {
    /// Connect with the defaults of [`FanoutConfig::new`]. Returns at once even if NATS is
    /// down (health says `Degraded` and the client keeps retrying).
    pub async fn connect(
        url: &str,
        replica_id: &str,
        subject_prefix: &str,
    ) -> Result<Fanout, ClusterError> {
        let mut cfg = FanoutConfig::new(url, replica_id);
        cfg.subject_prefix = subject_prefix.to_string();
        Fanout::connect_with(cfg).await
    }

    pub async fn connect_with(cfg: FanoutConfig) -> Result<Fanout, ClusterError> {
        validate(&cfg)?;
        let (health_tx, health) = watch::channel(LinkHealth::connecting());
        let health_tx = Arc::new(health_tx);
        let resnap = Arc::new(Notify::new());
        let cb_health = health_tx.clone();
        let cb_resnap = resnap.clone();
        let opts = async_nats::ConnectOptions::new()
            .name(format!("switchyard-serve-{}", cfg.replica_id))
            // Our own notes are never delivered back to us.
            .no_echo()
            .retry_on_initial_connect()
            .connection_timeout(cfg.connect_timeout)
            .ping_interval(Duration::from_secs(5))
            // Reconnect fast (routers want state back quickly); capped so an outage of many
            // replicas does not hammer the server.
            .reconnect_delay_callback(|attempts| {
                let ms = 100u64.saturating_mul(1u64 << attempts.min(5) as u32);
                Duration::from_millis(ms.min(2000))
            })
            .event_callback(move |ev| {
                let h = cb_health.clone();
                let r = cb_resnap.clone();
                async move {
                    match ev {
                        async_nats::Event::Connected => {
                            set_health(&h, LinkState::Connected, None);
                            // Peers may have expired us meanwhile: re-announce at once.
                            r.notify_one();
                        }
                        async_nats::Event::Disconnected => {
                            set_health(&h, LinkState::Degraded, Some("disconnected".into()));
                        }
                        async_nats::Event::Closed => {
                            set_health(&h, LinkState::Degraded, Some("connection closed".into()));
                        }
                        _ => {}
                    }
                }
            });
        let addrs: Vec<async_nats::ServerAddr> = cfg
            .url
            .split(',')
            .map(|u| u.trim().parse::<async_nats::ServerAddr>())
            .collect::<Result<_, _>>()
            .map_err(|_| ClusterError::BadNatsUrl(cfg.url.clone()))?;
        let client = opts
            .connect(addrs)
            .await
            .map_err(|e| ClusterError::Nats(e.to_string()))?;
        let predict_sub = client
            .subscribe(format!("{}.predict.*", cfg.subject_prefix))
            .await
            .map_err(|e| ClusterError::Nats(e.to_string()))?;
        let load_sub = client
            .subscribe(format!("{}.load.*", cfg.subject_prefix))
            .await
            .map_err(|e| ClusterError::Nats(e.to_string()))?;

        let shared = Arc::new(Shared::default());
        let incarnation: u64 = rand::random();
        let (out, out_rx) = mpsc::channel(cfg.queue.max(16));
        let (pred_tx, predictions) = mpsc::channel(cfg.queue.max(16));
        let mut tasks = Vec::new();
        tasks.push(tokio::spawn(publisher(
            client.clone(),
            cfg.clone(),
            incarnation,
            shared.clone(),
            out_rx,
            resnap,
        )));
        tasks.push(tokio::spawn(receive_predictions(
            predict_sub,
            cfg.replica_id.clone(),
            shared.clone(),
            pred_tx,
        )));
        tasks.push(tokio::spawn(receive_load(
            load_sub,
            cfg.replica_id.clone(),
            shared.clone(),
            cfg.expiry,
        )));
        // Initial connection watchdog: "connecting" turns "degraded" after the timeout.
        {
            let h = health_tx.clone();
            let url = cfg.url.clone();
            let t = cfg.connect_timeout;
            tasks.push(tokio::spawn(async move {
                tokio::time::sleep(t).await;
                if h.borrow().state == LinkState::Connecting {
                    log(
                        "fanout",
                        format_args!(
                            "no NATS server at {url} yet; serving on local state, retrying"
                        ),
                    );
                    set_health(
                        &h,
                        LinkState::Degraded,
                        Some(format!("cannot connect to {url}")),
                    );
                }
            }));
        }
        if client.connection_state() == async_nats::connection::State::Connected {
            set_health(&health_tx, LinkState::Connected, None);
        }
        // Keep the client alive as long as the tasks (they hold clones).
        drop(client);
        Ok(Fanout {
            replica: cfg.replica_id,
            out,
            predictions: Some(predictions),
            health,
            shared,
            tasks,
        })
    }

    pub fn replica_id(&self) -> &str {
        &self.replica
    }

    /// Tell the other replicas this request's prefix went to `worker` (approximate mode).
    /// Never blocks; dropped if the queue is full or NATS is down.
    pub fn publish_prediction(&self, worker: &str, dp_rank: u32, hashes: &[u64]) {
        self.send(Outgoing::Prediction {
            worker: worker.to_string(),
            dp_rank,
            hashes: hashes.to_vec(),
            at: unix_now(),
        });
    }

    /// This replica's in-flight count for `worker` changed by `delta` (+1 when a request is
    /// routed, -1 when it completes or fails). Kept locally for the periodic snapshots and
    /// sent at once as a delta. Never blocks.
    pub fn inflight_add(&self, worker: &str, dp_rank: u32, delta: i32) {
        if delta == 0 {
            return;
        }
        if let Ok(mut l) = self.shared.local.lock() {
            let ranks = l.entry(worker.to_string()).or_default();
            let c = ranks.entry(dp_rank).or_insert(0);
            *c += i64::from(delta);
            if *c == 0 {
                ranks.remove(&dp_rank);
                if ranks.is_empty() {
                    l.remove(worker);
                }
            }
        }
        self.send(Outgoing::Delta {
            worker: worker.to_string(),
            dp_rank,
            delta,
            at: unix_now(),
        });
    }

    fn send(&self, o: Outgoing) {
        if self.out.try_send(o).is_err() {
            self.shared.counters.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The stream of other replicas' predictions (taken once; later calls get `None`). If
    /// nobody takes it, predictions are dropped and counted.
    pub fn take_predictions(&mut self) -> Option<mpsc::Receiver<Prediction>> {
        self.predictions.take()
    }

    /// Sum of the other live replicas' in-flight requests on `worker`/`dp_rank`.
    pub fn remote_inflight(&self, worker: &str, dp_rank: u32) -> u32 {
        let now = Instant::now();
        let Ok(peers) = self.shared.peers.lock() else {
            return 0;
        };
        let mut sum = 0i64;
        for p in peers.values().filter(|p| p.expires > now) {
            if let Some(c) = p.counts.get(worker).and_then(|r| r.get(&dp_rank)) {
                sum += (*c).max(0);
            }
        }
        u32::try_from(sum).unwrap_or(u32::MAX)
    }

    /// All remote in-flight counts: `(worker, dp_rank, sum over live peers)`, sorted.
    pub fn remote_inflight_all(&self) -> Vec<(String, u32, u32)> {
        let now = Instant::now();
        let mut acc: HashMap<(String, u32), i64> = HashMap::new();
        if let Ok(peers) = self.shared.peers.lock() {
            for p in peers.values().filter(|p| p.expires > now) {
                for (w, ranks) in &p.counts {
                    for (r, c) in ranks {
                        *acc.entry((w.clone(), *r)).or_insert(0) += (*c).max(0);
                    }
                }
            }
        }
        let mut v: Vec<(String, u32, u32)> = acc
            .into_iter()
            .filter(|(_, c)| *c > 0)
            .map(|((w, r), c)| (w, r, u32::try_from(c).unwrap_or(u32::MAX)))
            .collect();
        v.sort();
        v
    }

    /// This replica's own in-flight count as tracked for snapshots.
    pub fn local_inflight(&self, worker: &str, dp_rank: u32) -> i64 {
        self.shared
            .local
            .lock()
            .ok()
            .and_then(|l| l.get(worker).and_then(|r| r.get(&dp_rank)).copied())
            .unwrap_or(0)
    }

    /// Replica ids heard from within the expiry window.
    pub fn live_peers(&self) -> Vec<String> {
        let now = Instant::now();
        let mut v: Vec<String> = self
            .shared
            .peers
            .lock()
            .map(|p| {
                p.iter()
                    .filter(|(_, l)| l.expires > now)
                    .map(|(k, _)| k.clone())
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }

    pub fn health(&self) -> watch::Receiver<LinkHealth> {
        self.health.clone()
    }

    pub fn stats(&self) -> FanoutStats {
        let c = &self.shared.counters;
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        FanoutStats {
            published: g(&c.published),
            dropped: g(&c.dropped),
            received: g(&c.received),
            own_ignored: g(&c.own_ignored),
            decode_errors: g(&c.decode_errors),
            predictions_dropped: g(&c.predictions_dropped),
            seq_gaps: g(&c.seq_gaps),
        }
    }
}

impl Drop for Fanout {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

fn validate(cfg: &FanoutConfig) -> Result<(), ClusterError> {
    let token_ok = |s: &str| {
        !s.is_empty()
            && s.len() <= 128
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    if !token_ok(&cfg.replica_id) {
        return Err(ClusterError::Config(format!(
            "replica id {:?} must be 1-128 characters of [A-Za-z0-9_-]",
            cfg.replica_id
        )));
    }
    if cfg.subject_prefix.is_empty() || !cfg.subject_prefix.split('.').all(token_ok) {
        return Err(ClusterError::Config(format!(
            "subject prefix {:?} must be dot-separated [A-Za-z0-9_-] tokens",
            cfg.subject_prefix
        )));
    }
    if cfg.snapshot_interval.is_zero() || cfg.expiry <= cfg.snapshot_interval {
        return Err(ClusterError::Config(
            "fan-out expiry must exceed a non-zero snapshot interval".into(),
        ));
    }
    for u in cfg.url.split(',') {
        let u = u.trim();
        if !(u.starts_with("nats://") || u.starts_with("tls://")) || u.len() <= "nats://".len() {
            return Err(ClusterError::BadNatsUrl(cfg.url.clone()));
        }
    }
    Ok(())
}

async fn publisher(
    client: async_nats::Client,
    cfg: FanoutConfig,
    incarnation: u64,
    shared: Arc<Shared>,
    mut rx: mpsc::Receiver<Outgoing>,
    resnap: Arc<Notify>,
) {
    let predict_subject = format!("{}.predict.{}", cfg.subject_prefix, cfg.replica_id);
    let load_subject = format!("{}.load.{}", cfg.subject_prefix, cfg.replica_id);
    let expiry_ms = u32::try_from(cfg.expiry.as_millis()).unwrap_or(u32::MAX);
    // One sequence per subject: receivers check gaps per subject (only load notes need it).
    let mut predict_seq = 0u64;
    let mut load_seq = 0u64;
    let mut tick = tokio::time::interval(cfg.snapshot_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let c = &shared.counters;
    let connected = |client: &async_nats::Client| {
        client.connection_state() == async_nats::connection::State::Connected
    };
    loop {
        let (subject, note) = tokio::select! {
            o = rx.recv() => {
                let Some(o) = o else { return };
                if !connected(&client) {
                    // Stale by the time NATS is back; the next snapshot carries the truth.
                    c.dropped.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                match o {
                    Outgoing::Prediction { worker, dp_rank, hashes, at } => {
                        predict_seq += 1;
                        let h = Header { replica: &cfg.replica_id, incarnation, seq: predict_seq, at };
                        (&predict_subject, encode_prediction(&h, &worker, dp_rank, &hashes))
                    }
                    Outgoing::Delta { worker, dp_rank, delta, at } => {
                        load_seq += 1;
                        let h = Header { replica: &cfg.replica_id, incarnation, seq: load_seq, at };
                        (&load_subject, encode_delta(&h, &worker, dp_rank, delta))
                    }
                }
            }
            _ = tick.tick() => {
                if !connected(&client) { continue; }
                load_seq += 1;
                let h = Header { replica: &cfg.replica_id, incarnation, seq: load_seq, at: unix_now() };
                (&load_subject, snapshot_note(&h, &shared, expiry_ms))
            }
            _ = resnap.notified() => {
                load_seq += 1;
                let h = Header { replica: &cfg.replica_id, incarnation, seq: load_seq, at: unix_now() };
                (&load_subject, snapshot_note(&h, &shared, expiry_ms))
            }
        };
        match client.publish(subject.clone(), note.into()).await {
            Ok(()) => c.published.fetch_add(1, Ordering::Relaxed),
            Err(_) => c.dropped.fetch_add(1, Ordering::Relaxed),
        };
    }
}

fn snapshot_note(h: &Header<'_>, shared: &Shared, expiry_ms: u32) -> Vec<u8> {
    let entries: Vec<(String, u32, u32)> = shared
        .local
        .lock()
        .map(|l| {
            l.iter()
                .flat_map(|(w, ranks)| {
                    ranks
                        .iter()
                        .filter(|(_, c)| **c > 0)
                        .map(|(r, c)| (w.clone(), *r, u32::try_from(*c).unwrap_or(u32::MAX)))
                })
                .collect()
        })
        .unwrap_or_default();
    encode_snapshot(h, expiry_ms, &entries)
}

async fn receive_predictions(
    mut sub: async_nats::Subscriber,
    me: String,
    shared: Arc<Shared>,
    tx: mpsc::Sender<Prediction>,
) {
    let c = &shared.counters;
    while let Some(msg) = sub.next().await {
        c.received.fetch_add(1, Ordering::Relaxed);
        match decode(&msg.payload) {
            Ok(Note {
                header,
                body:
                    Body::Prediction {
                        worker,
                        dp_rank,
                        hashes,
                    },
            }) => {
                if header.replica == me {
                    c.own_ignored.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                let p = Prediction {
                    replica: header.replica,
                    worker,
                    dp_rank,
                    hashes,
                    at: header.at,
                };
                if tx.try_send(p).is_err() {
                    c.predictions_dropped.fetch_add(1, Ordering::Relaxed);
                }
            }
            _ => {
                c.decode_errors.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

async fn receive_load(
    mut sub: async_nats::Subscriber,
    me: String,
    shared: Arc<Shared>,
    expiry: Duration,
) {
    let c = &shared.counters;
    while let Some(msg) = sub.next().await {
        c.received.fetch_add(1, Ordering::Relaxed);
        let Ok(note) = decode(&msg.payload) else {
            c.decode_errors.fetch_add(1, Ordering::Relaxed);
            continue;
        };
        if note.header.replica == me {
            c.own_ignored.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        let now = Instant::now();
        let Ok(mut peers) = shared.peers.lock() else {
            return;
        };
        apply_load(&mut peers, note, now, &c.seq_gaps, &c.decode_errors, expiry);
        // Forget long-dead peers (their counts are already ignored once expired).
        peers.retain(|_, p| p.expires + Duration::from_secs(60) > now);
    }
}

/// Fold one load note into the peer tables.
fn apply_load(
    peers: &mut HashMap<String, PeerLoad>,
    note: Note,
    now: Instant,
    seq_gaps: &AtomicU64,
    errors: &AtomicU64,
    default_expiry: Duration,
) {
    let Note { header, body } = note;
    let peer = peers.entry(header.replica).or_insert_with(|| PeerLoad {
        incarnation: header.incarnation,
        last_seq: header.seq.saturating_sub(1),
        // Until its first snapshot, a peer's deltas count for one expiry window.
        expires: now + default_expiry,
        counts: HashMap::new(),
    });
    if peer.incarnation != header.incarnation {
        // The replica restarted: its old requests died with it.
        peer.incarnation = header.incarnation;
        peer.counts.clear();
        peer.last_seq = header.seq.saturating_sub(1);
    }
    if header.seq <= peer.last_seq {
        return; // duplicate or reordered: a newer state already applied
    }
    if header.seq != peer.last_seq + 1 {
        seq_gaps.fetch_add(1, Ordering::Relaxed);
    }
    peer.last_seq = header.seq;
    match body {
        Body::Delta {
            worker,
            dp_rank,
            delta,
        } => {
            *peer
                .counts
                .entry(worker)
                .or_default()
                .entry(dp_rank)
                .or_insert(0) += i64::from(delta);
        }
        Body::Snapshot { expiry_ms, entries } => {
            peer.counts.clear();
            for (w, r, n) in entries {
                peer.counts.entry(w).or_default().insert(r, i64::from(n));
            }
            peer.expires = now + Duration::from_millis(u64::from(expiry_ms));
        }
        Body::Prediction { .. } => {
            errors.fetch_add(1, Ordering::Relaxed);
        }
    }
}

// ----- codec ------------------------------------------------------------------------------

const MAGIC: [u8; 2] = *b"SY";
const VERSION: u8 = 1;
const KIND_PREDICTION: u8 = 1;
const KIND_DELTA: u8 = 2;
const KIND_SNAPSHOT: u8 = 3;
/// Bound on decoded collection sizes (a hostile length cannot make us allocate gigabytes).
const MAX_ITEMS: usize = 1 << 20;

pub(crate) struct Header<'a> {
    pub replica: &'a str,
    pub incarnation: u64,
    pub seq: u64,
    pub at: f64,
}

#[derive(Debug, PartialEq)]
pub(crate) struct OwnedHeader {
    pub replica: String,
    pub incarnation: u64,
    pub seq: u64,
    pub at: f64,
}

#[derive(Debug, PartialEq)]
pub(crate) enum Body {
    Prediction {
        worker: String,
        dp_rank: u32,
        hashes: Vec<u64>,
    },
    Delta {
        worker: String,
        dp_rank: u32,
        delta: i32,
    },
    Snapshot {
        expiry_ms: u32,
        entries: Vec<(String, u32, u32)>,
    },
}

#[derive(Debug, PartialEq)]
pub(crate) struct Note {
    pub header: OwnedHeader,
    pub body: Body,
}

fn put_header(buf: &mut Vec<u8>, kind: u8, h: &Header<'_>) {
    buf.extend_from_slice(&MAGIC);
    buf.push(VERSION);
    buf.push(kind);
    let r = &h.replica.as_bytes()[..h.replica.len().min(255)];
    buf.push(r.len() as u8);
    buf.extend_from_slice(r);
    buf.extend_from_slice(&h.incarnation.to_le_bytes());
    buf.extend_from_slice(&h.seq.to_le_bytes());
    buf.extend_from_slice(&h.at.to_le_bytes());
}

fn put_str16(buf: &mut Vec<u8>, s: &str) {
    let b = &s.as_bytes()[..s.len().min(u16::MAX as usize)];
    buf.extend_from_slice(&(b.len() as u16).to_le_bytes());
    buf.extend_from_slice(b);
}

pub(crate) fn encode_prediction(
    h: &Header<'_>,
    worker: &str,
    dp_rank: u32,
    hashes: &[u64],
) -> Vec<u8> {
    let mut buf = Vec::with_capacity(40 + h.replica.len() + worker.len() + 8 * hashes.len());
    put_header(&mut buf, KIND_PREDICTION, h);
    put_str16(&mut buf, worker);
    buf.extend_from_slice(&dp_rank.to_le_bytes());
    let n = hashes.len().min(MAX_ITEMS);
    buf.extend_from_slice(&(n as u32).to_le_bytes());
    for x in &hashes[..n] {
        buf.extend_from_slice(&x.to_le_bytes());
    }
    buf
}

pub(crate) fn encode_delta(h: &Header<'_>, worker: &str, dp_rank: u32, delta: i32) -> Vec<u8> {
    let mut buf = Vec::with_capacity(48 + h.replica.len() + worker.len());
    put_header(&mut buf, KIND_DELTA, h);
    put_str16(&mut buf, worker);
    buf.extend_from_slice(&dp_rank.to_le_bytes());
    buf.extend_from_slice(&delta.to_le_bytes());
    buf
}

pub(crate) fn encode_snapshot(
    h: &Header<'_>,
    expiry_ms: u32,
    entries: &[(String, u32, u32)],
) -> Vec<u8> {
    let mut buf = Vec::with_capacity(48 + entries.len() * 48);
    put_header(&mut buf, KIND_SNAPSHOT, h);
    buf.extend_from_slice(&expiry_ms.to_le_bytes());
    let n = entries.len().min(MAX_ITEMS);
    buf.extend_from_slice(&(n as u32).to_le_bytes());
    for (w, r, c) in &entries[..n] {
        put_str16(&mut buf, w);
        buf.extend_from_slice(&r.to_le_bytes());
        buf.extend_from_slice(&c.to_le_bytes());
    }
    buf
}

struct Reader<'a> {
    b: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], ClusterError> {
        if self.b.len() < n {
            return Err(ClusterError::Decode("truncated note"));
        }
        let (h, t) = self.b.split_at(n);
        self.b = t;
        Ok(h)
    }
    fn u8(&mut self) -> Result<u8, ClusterError> {
        Ok(self.take(1)?[0])
    }
    fn arr<const N: usize>(&mut self) -> Result<[u8; N], ClusterError> {
        let s = self.take(N)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }
    fn u16(&mut self) -> Result<u16, ClusterError> {
        Ok(u16::from_le_bytes(self.arr()?))
    }
    fn u32(&mut self) -> Result<u32, ClusterError> {
        Ok(u32::from_le_bytes(self.arr()?))
    }
    fn u64(&mut self) -> Result<u64, ClusterError> {
        Ok(u64::from_le_bytes(self.arr()?))
    }
    fn str(&mut self, len: usize) -> Result<String, ClusterError> {
        let s = self.take(len)?;
        std::str::from_utf8(s)
            .map(str::to_string)
            .map_err(|_| ClusterError::Decode("string is not UTF-8"))
    }
    fn count(&mut self, item_size: usize) -> Result<usize, ClusterError> {
        let n = self.u32()? as usize;
        // Each item needs at least item_size bytes: reject counts the payload cannot hold.
        if n > MAX_ITEMS || n.saturating_mul(item_size) > self.b.len() {
            return Err(ClusterError::Decode("item count exceeds the note"));
        }
        Ok(n)
    }
}

pub(crate) fn decode(b: &[u8]) -> Result<Note, ClusterError> {
    let mut r = Reader { b };
    if r.arr::<2>()? != MAGIC {
        return Err(ClusterError::Decode("not a switchyard note"));
    }
    if r.u8()? != VERSION {
        return Err(ClusterError::Decode("unsupported note version"));
    }
    let kind = r.u8()?;
    let rlen = r.u8()? as usize;
    let header = OwnedHeader {
        replica: r.str(rlen)?,
        incarnation: r.u64()?,
        seq: r.u64()?,
        at: f64::from_le_bytes(r.arr()?),
    };
    let body = match kind {
        KIND_PREDICTION => {
            let wl = r.u16()? as usize;
            let worker = r.str(wl)?;
            let dp_rank = r.u32()?;
            let n = r.count(8)?;
            let mut hashes = Vec::with_capacity(n);
            for _ in 0..n {
                hashes.push(r.u64()?);
            }
            Body::Prediction {
                worker,
                dp_rank,
                hashes,
            }
        }
        KIND_DELTA => {
            let wl = r.u16()? as usize;
            let worker = r.str(wl)?;
            let dp_rank = r.u32()?;
            let delta = i32::from_le_bytes(r.arr()?);
            Body::Delta {
                worker,
                dp_rank,
                delta,
            }
        }
        KIND_SNAPSHOT => {
            let expiry_ms = r.u32()?;
            let n = r.count(10)?;
            let mut entries = Vec::with_capacity(n);
            for _ in 0..n {
                let wl = r.u16()? as usize;
                let w = r.str(wl)?;
                entries.push((w, r.u32()?, r.u32()?));
            }
            Body::Snapshot { expiry_ms, entries }
        }
        _ => return Err(ClusterError::Decode("unknown note kind")),
    };
    if !r.b.is_empty() {
        return Err(ClusterError::Decode("trailing bytes"));
    }
    Ok(Note { header, body })
}

/// Encode/decode entry points for benchmarks and the fuzz harness (not part of the stable API).
#[doc(hidden)]
pub mod codec_bench {
    /// Whether `b` decodes as a note; never panics, whatever the bytes.
    pub fn decodes(b: &[u8]) -> bool {
        super::decode(b).is_ok()
    }

    pub fn encode_prediction(replica: &str, worker: &str, hashes: &[u64]) -> Vec<u8> {
        let h = super::Header {
            replica,
            incarnation: 7,
            seq: 1,
            at: 1.0,
        };
        super::encode_prediction(&h, worker, 0, hashes)
    }
    pub fn decode_len(b: &[u8]) -> usize {
        match super::decode(b) {
            Ok(super::Note {
                body: super::Body::Prediction { hashes, .. },
                ..
            }) => hashes.len(),
            _ => 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hdr(seq: u64) -> Header<'static> {
        Header {
            replica: "a",
            incarnation: 9,
            seq,
            at: 12.5,
        }
    }

    #[test]
    fn codec_round_trips() {
        let b = encode_prediction(&hdr(3), "http://w:1", 2, &[1, u64::MAX, 42]);
        // 2+1+1 + 1+1 + 8+8+8 header, 2+10 worker, 4 rank, 4 n, 24 hashes
        assert_eq!(b.len(), 30 + 12 + 8 + 24);
        let n = decode(&b).unwrap();
        assert_eq!(
            n.header,
            OwnedHeader {
                replica: "a".into(),
                incarnation: 9,
                seq: 3,
                at: 12.5
            }
        );
        assert_eq!(
            n.body,
            Body::Prediction {
                worker: "http://w:1".into(),
                dp_rank: 2,
                hashes: vec![1, u64::MAX, 42]
            }
        );
        let d = decode(&encode_delta(&hdr(4), "w", 0, -1)).unwrap();
        assert_eq!(
            d.body,
            Body::Delta {
                worker: "w".into(),
                dp_rank: 0,
                delta: -1
            }
        );
        let e = vec![("w1".to_string(), 0, 3), ("w2".to_string(), 1, 1)];
        let s = decode(&encode_snapshot(&hdr(5), 3000, &e)).unwrap();
        assert_eq!(
            s.body,
            Body::Snapshot {
                expiry_ms: 3000,
                entries: e
            }
        );
    }

    #[test]
    fn codec_rejects_garbage_without_panicking() {
        let good = encode_prediction(&hdr(1), "w", 0, &[1, 2, 3]);
        for cut in 0..good.len() {
            assert!(decode(&good[..cut]).is_err(), "prefix of {cut} bytes");
        }
        let mut trailing = good.clone();
        trailing.push(0);
        assert!(decode(&trailing).is_err());
        let mut bad_magic = good.clone();
        bad_magic[0] = b'X';
        assert!(decode(&bad_magic).is_err());
        // A count claiming 2^30 hashes in a short note.
        let mut huge = encode_prediction(&hdr(1), "w", 0, &[]);
        let n = huge.len();
        huge[n - 4..].copy_from_slice(&(1u32 << 30).to_le_bytes());
        assert!(decode(&huge).is_err());
        // Deterministic pseudo-random junk.
        let mut x = 0x9e3779b97f4a7c15u64;
        for len in 0..200 {
            let junk: Vec<u8> = (0..len)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                })
                .collect();
            let _ = decode(&junk);
        }
    }

    fn note(seq: u64, incarnation: u64, body: Body) -> Note {
        Note {
            header: OwnedHeader {
                replica: "b".into(),
                incarnation,
                seq,
                at: 0.0,
            },
            body,
        }
    }

    #[test]
    fn snapshots_repair_lost_deltas_and_restarts_reset() {
        let mut peers = HashMap::new();
        let gaps = AtomicU64::new(0);
        let errs = AtomicU64::new(0);
        let now = Instant::now();
        let delta = |d| Body::Delta {
            worker: "w".into(),
            dp_rank: 0,
            delta: d,
        };
        apply_load(
            &mut peers,
            note(1, 1, delta(1)),
            now,
            &gaps,
            &errs,
            Duration::from_secs(3),
        );
        apply_load(
            &mut peers,
            note(2, 1, delta(1)),
            now,
            &gaps,
            &errs,
            Duration::from_secs(3),
        );
        // seq 3 (a -1) is lost.
        apply_load(
            &mut peers,
            note(4, 1, delta(1)),
            now,
            &gaps,
            &errs,
            Duration::from_secs(3),
        );
        assert_eq!(gaps.load(Ordering::Relaxed), 1);
        assert_eq!(peers["b"].counts["w"][&0], 3); // wrong by the lost -1 ...
        let snap = Body::Snapshot {
            expiry_ms: 3000,
            entries: vec![("w".into(), 0, 2)],
        };
        apply_load(
            &mut peers,
            note(5, 1, snap),
            now,
            &gaps,
            &errs,
            Duration::from_secs(3),
        );
        assert_eq!(peers["b"].counts["w"][&0], 2); // ... until the next snapshot
        // A duplicate/old note is ignored.
        apply_load(
            &mut peers,
            note(5, 1, delta(5)),
            now,
            &gaps,
            &errs,
            Duration::from_secs(3),
        );
        assert_eq!(peers["b"].counts["w"][&0], 2);
        // Restarted peer (new incarnation, seq from 1): old counts are gone.
        apply_load(
            &mut peers,
            note(1, 2, delta(1)),
            now,
            &gaps,
            &errs,
            Duration::from_secs(3),
        );
        assert_eq!(peers["b"].counts["w"][&0], 1);
        assert_eq!(peers["b"].expires, now + Duration::from_secs(3));
    }

    #[test]
    fn default_replica_id_is_a_valid_token() {
        let id = default_replica_id(8000);
        assert!(id.ends_with("-8000"), "{id}");
        assert!(
            validate(&FanoutConfig::new("nats://h:4222", &id)).is_ok(),
            "{id}"
        );
    }

    #[test]
    fn config_validation() {
        let ok = FanoutConfig::new("nats://127.0.0.1:4222", "replica-1");
        assert!(validate(&ok).is_ok());
        let mut bad = ok.clone();
        bad.replica_id = "a.b".into();
        assert!(validate(&bad).is_err());
        let mut bad = ok.clone();
        bad.subject_prefix = "x.>".into();
        assert!(validate(&bad).is_err());
        let mut bad = ok.clone();
        bad.url = "127.0.0.1:4222".into();
        assert!(validate(&bad).is_err());
        let mut bad = ok;
        bad.expiry = bad.snapshot_interval;
        assert!(validate(&bad).is_err());
    }
}
