//! Discovery: watch the worker prefix in etcd and turn it into membership events.
//!
//! Protocol: read the whole prefix (a snapshot at revision R), emit the difference against
//! what this watcher already knew, then watch from R+1 so no change between the read and
//! the watch is lost. On any etcd failure the last known membership stays (routing goes on
//! with it), the health channel says `Degraded` since when, and the loop reconnects with
//! backoff; after reconnecting it re-reads the snapshot and emits only the difference —
//! removals for workers whose keys vanished meanwhile (expired leases), upserts for new or
//! changed ones.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::backoff::Backoff;
use crate::etcd::{EventType, KeyValue};
use crate::record::WorkerRecord;
use crate::register::connect;
use crate::{ClusterError, DEFAULT_PREFIX, LinkHealth, LinkState, log, set_health};

/// A change in the set of registered workers.
#[derive(Clone, Debug, PartialEq)]
pub enum MembershipEvent {
    /// A worker appeared, or its record changed (e.g. it restarted: new `started_at_ms`).
    Upsert(WorkerRecord),
    /// The worker with this id is gone (lease expired or revoked, key deleted, record invalid).
    Remove(String),
}

/// Discovery settings; [`DiscoveryConfig::new`] holds the defaults.
#[derive(Clone, Debug)]
pub struct DiscoveryConfig {
    pub endpoints: Vec<String>,
    pub prefix: String,
    /// Timeout of each etcd request (snapshot read, liveness probe).
    pub request_timeout: Duration,
    /// How often the watcher checks etcd is still answering (a watch on an idle prefix is
    /// silent, so without this a dead etcd would go unnoticed until the next change).
    pub probe_interval: Duration,
    pub backoff_min: Duration,
    pub backoff_max: Duration,
}

impl DiscoveryConfig {
    /// Defaults: prefix [`DEFAULT_PREFIX`], 2 s request timeout, probe every 2 s, reconnect
    /// backoff 200 ms doubling to 5 s.
    pub fn new(endpoints: Vec<String>) -> Self {
        DiscoveryConfig {
            endpoints,
            prefix: DEFAULT_PREFIX.to_string(),
            request_timeout: Duration::from_secs(2),
            probe_interval: Duration::from_secs(2),
            backoff_min: Duration::from_millis(200),
            backoff_max: Duration::from_secs(5),
        }
    }

    /// Defaults for `etcd://HOST:PORT[,HOST:PORT...]` (the `--discovery` flag's value).
    pub fn from_url(url: &str) -> Result<Self, ClusterError> {
        Ok(DiscoveryConfig::new(crate::parse_etcd_endpoints(url)?))
    }
}

/// A running watch of the worker prefix. Dropping it stops the watch.
pub struct Discovery {
    events: mpsc::UnboundedReceiver<MembershipEvent>,
    health: watch::Receiver<LinkHealth>,
    members: Arc<Mutex<BTreeMap<String, WorkerRecord>>>,
    task: JoinHandle<()>,
}

impl Discovery {
    /// Start watching (needs a Tokio runtime). Returns at once; the first events are the
    /// current members once etcd answers.
    pub fn watch(cfg: DiscoveryConfig) -> Result<Discovery, ClusterError> {
        if cfg.endpoints.is_empty() {
            return Err(ClusterError::Config("no etcd endpoints".into()));
        }
        if cfg.prefix.is_empty() {
            // An empty prefix would watch the whole keyspace.
            return Err(ClusterError::Config("empty discovery prefix".into()));
        }
        let (tx, events) = mpsc::unbounded_channel();
        let (health_tx, health) = watch::channel(LinkHealth::connecting());
        let members = Arc::new(Mutex::new(BTreeMap::new()));
        let task = tokio::spawn(run(cfg, tx, health_tx, members.clone()));
        Ok(Discovery {
            events,
            health,
            members,
            task,
        })
    }

    /// The next membership change; `None` only if the watch task ended (it does not on its
    /// own: outages are retried forever).
    pub async fn recv(&mut self) -> Option<MembershipEvent> {
        self.events.recv().await
    }

    /// A change if one is ready now.
    pub fn try_recv(&mut self) -> Option<MembershipEvent> {
        self.events.try_recv().ok()
    }

    /// Connection state: `Connected`, or `Degraded` since when (membership frozen meanwhile).
    pub fn health(&self) -> watch::Receiver<LinkHealth> {
        self.health.clone()
    }

    /// The last known members (what the events so far add up to, plus any not yet received).
    pub fn members(&self) -> Vec<WorkerRecord> {
        self.members
            .lock()
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default()
    }
}

impl Drop for Discovery {
    fn drop(&mut self) {
        self.task.abort();
    }
}

struct Watcher {
    prefix: String,
    known: Arc<Mutex<BTreeMap<String, WorkerRecord>>>,
    tx: mpsc::UnboundedSender<MembershipEvent>,
}

impl Watcher {
    /// The worker id of a key under our prefix; nested keys are not ours.
    fn id_of<'a>(&self, key: &'a [u8]) -> Option<&'a str> {
        let k = std::str::from_utf8(key).ok()?;
        let id = k.strip_prefix(self.prefix.as_str())?;
        (!id.is_empty() && !id.contains('/')).then_some(id)
    }

    fn parse(&self, key: &[u8], value: &[u8]) -> Option<(String, Option<WorkerRecord>)> {
        let id = self.id_of(key)?;
        match WorkerRecord::from_json(id, value) {
            Ok(r) => Some((id.to_string(), Some(r))),
            Err(e) => {
                log(
                    "discovery",
                    format_args!("skipping bad record at {}{id}: {e}", self.prefix),
                );
                Some((id.to_string(), None))
            }
        }
    }

    fn emit(&self, events: Vec<MembershipEvent>) {
        for ev in events {
            let _ = self.tx.send(ev);
        }
    }

    fn snapshot(&self, kvs: &[KeyValue]) {
        let mut snap = BTreeMap::new();
        for kv in kvs {
            if let Some((id, Some(r))) = self.parse(&kv.key, &kv.value) {
                snap.insert(id, r);
            }
        }
        let evs = match self.known.lock() {
            Ok(mut known) => diff(&mut known, snap),
            Err(_) => return,
        };
        self.emit(evs);
    }

    fn put(&self, key: &[u8], value: &[u8]) {
        let Some((id, rec)) = self.parse(key, value) else {
            return;
        };
        let ev = {
            let Ok(mut known) = self.known.lock() else {
                return;
            };
            match rec {
                Some(r) => {
                    if known.get(&id) == Some(&r) {
                        None // re-registration with the same record: nothing changed
                    } else {
                        known.insert(id, r.clone());
                        Some(MembershipEvent::Upsert(r))
                    }
                }
                // A valid record overwritten by garbage: that worker is no longer routable.
                None => known.remove(&id).map(|_| MembershipEvent::Remove(id)),
            }
        };
        if let Some(ev) = ev {
            let _ = self.tx.send(ev);
        }
    }

    fn delete(&self, key: &[u8]) {
        let Some(id) = self.id_of(key) else { return };
        let removed = self
            .known
            .lock()
            .ok()
            .and_then(|mut k| k.remove(id))
            .is_some();
        if removed {
            let _ = self.tx.send(MembershipEvent::Remove(id.to_string()));
        }
    }
}

/// Bring `known` to `snapshot`, returning the events that do it: removals first (a worker
/// that vanished), then upserts (new or changed records), each in id order.
pub(crate) fn diff(
    known: &mut BTreeMap<String, WorkerRecord>,
    snapshot: BTreeMap<String, WorkerRecord>,
) -> Vec<MembershipEvent> {
    let mut out = Vec::new();
    let gone: Vec<String> = known
        .keys()
        .filter(|id| !snapshot.contains_key(*id))
        .cloned()
        .collect();
    for id in gone {
        known.remove(&id);
        out.push(MembershipEvent::Remove(id));
    }
    for (id, r) in snapshot {
        if known.get(&id) != Some(&r) {
            known.insert(id, r.clone());
            out.push(MembershipEvent::Upsert(r));
        }
    }
    out
}

async fn run(
    cfg: DiscoveryConfig,
    tx: mpsc::UnboundedSender<MembershipEvent>,
    health: watch::Sender<LinkHealth>,
    known: Arc<Mutex<BTreeMap<String, WorkerRecord>>>,
) {
    let w = Watcher {
        prefix: cfg.prefix.clone(),
        known,
        tx,
    };
    let mut backoff = Backoff::new(cfg.backoff_min, cfg.backoff_max);
    let mut outage_logged = false;
    loop {
        let mut connected = false;
        let err = match session(&cfg, &w, &health, &mut backoff, &mut connected).await {
            Ok(()) => return, // consumer dropped
            Err(e) => e,
        };
        if connected {
            outage_logged = false;
        }
        if !outage_logged {
            // Log the start of an outage once, not every retry.
            let n = w.known.lock().map(|k| k.len()).unwrap_or(0);
            log(
                "discovery",
                format_args!(
                    "etcd unavailable ({err}); keeping the last {n} known workers, retrying"
                ),
            );
            outage_logged = true;
        }
        set_health(&health, LinkState::Degraded, Some(err));
        if w.tx.is_closed() {
            return;
        }
        tokio::time::sleep(backoff.next_delay()).await;
    }
}

/// One connected session: snapshot, then watch until something fails. `Ok` only when the
/// consumer is gone.
async fn session(
    cfg: &DiscoveryConfig,
    w: &Watcher,
    health: &watch::Sender<LinkHealth>,
    backoff: &mut Backoff,
    connected: &mut bool,
) -> Result<(), String> {
    // Each request (and the watch setup) is bounded by the request timeout.
    let c = connect(&cfg.endpoints, cfg.request_timeout).map_err(|e| e.to_string())?;
    let snap = c
        .get_prefix(&cfg.prefix)
        .await
        .map_err(|e| format!("snapshot read: {e}"))?;
    let mut stream = c
        .watch_prefix(&cfg.prefix, snap.revision + 1)
        .await
        .map_err(|e| format!("watch create: {e}"))?;
    w.snapshot(&snap.kvs);
    *connected = true;
    let was_degraded = health.borrow().state == LinkState::Degraded;
    set_health(health, LinkState::Connected, None);
    if was_degraded {
        let n = w.known.lock().map(|k| k.len()).unwrap_or(0);
        log(
            "discovery",
            format_args!("etcd back; {n} workers registered"),
        );
    }
    backoff.reset();

    let mut probe = tokio::time::interval(cfg.probe_interval);
    probe.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    probe.tick().await;
    loop {
        if w.tx.is_closed() {
            return Ok(());
        }
        tokio::select! {
            msg = stream.message() => {
                let resp = match msg {
                    Ok(Some(r)) => r,
                    Ok(None) => return Err("watch stream ended".into()),
                    Err(e) => return Err(format!("watch: {e}")),
                };
                if resp.canceled {
                    // Compacted past our revision, or the server dropped the watch: a fresh
                    // snapshot repairs whatever we missed.
                    let e = crate::etcd::EtcdError::WatchCanceled {
                        reason: resp.cancel_reason,
                        compact_revision: resp.compact_revision,
                    };
                    return Err(e.to_string());
                }
                for ev in &resp.events {
                    match ev.event_type {
                        EventType::Put => w.put(&ev.kv.key, &ev.kv.value),
                        EventType::Delete => w.delete(&ev.kv.key),
                    }
                }
            }
            _ = probe.tick() => {
                // A cheap linearizable read: proves there is a quorum behind the watch (an
                // idle watch is silent, and a partition sends no RST).
                if let Err(e) = c.count_prefix(&cfg.prefix).await {
                    return Err(format!("probe: {e}"));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::Role;

    fn rec(id: &str, url: &str) -> WorkerRecord {
        let mut r = WorkerRecord::new(url, Role::Aggregated);
        r.id = id.into();
        r.started_at_ms = 1;
        r
    }

    #[test]
    fn diff_emits_removals_then_upserts() {
        let mut known = BTreeMap::new();
        known.insert("a".to_string(), rec("a", "http://a:1"));
        known.insert("b".to_string(), rec("b", "http://b:1"));
        known.insert("c".to_string(), rec("c", "http://c:1"));
        let mut snap = BTreeMap::new();
        snap.insert("a".to_string(), rec("a", "http://a:1")); // unchanged
        let mut c2 = rec("c", "http://c:1");
        c2.started_at_ms = 2; // restarted
        snap.insert("c".to_string(), c2.clone());
        snap.insert("d".to_string(), rec("d", "http://d:1")); // new
        let evs = diff(&mut known, snap.clone());
        assert_eq!(
            evs,
            vec![
                MembershipEvent::Remove("b".into()),
                MembershipEvent::Upsert(c2),
                MembershipEvent::Upsert(rec("d", "http://d:1")),
            ]
        );
        assert_eq!(known, snap);
        // Idempotent.
        assert!(diff(&mut known, snap).is_empty());
    }

    #[test]
    fn watcher_skips_bad_and_foreign_keys() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let w = Watcher {
            prefix: "/p/".into(),
            known: Arc::new(Mutex::new(BTreeMap::new())),
            tx,
        };
        let good = rec("w1", "http://h:1");
        w.put(b"/p/w1", &good.to_json());
        w.put(b"/p/w1", &good.to_json()); // same record again: no event
        w.put(b"/p/nested/x", &good.to_json()); // not a worker key
        w.put(b"/other/w2", &good.to_json());
        w.put(b"/p/w3", b"{broken");
        assert_eq!(rx.try_recv().ok(), Some(MembershipEvent::Upsert(good)));
        assert!(rx.try_recv().is_err());
        // Garbage over a good record removes it; deleting an unknown key says nothing.
        w.put(b"/p/w1", b"[]");
        assert_eq!(
            rx.try_recv().ok(),
            Some(MembershipEvent::Remove("w1".into()))
        );
        w.delete(b"/p/w1");
        w.delete(b"/p/w9");
        assert!(rx.try_recv().is_err());
    }
}
