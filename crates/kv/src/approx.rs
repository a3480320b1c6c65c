//! The approximate index (the router's own routing decisions as predicted cache contents) and
//! [`KvIndexer`], the one object a router talks to whatever the feed.
//!
//! Engines that publish no KV events still cache prefixes. Recording "I sent this request's
//! blocks to worker w at time t" predicts that w now caches them; the prediction expires after
//! a TTL and each worker keeps at most a fixed number of predicted blocks (least recently routed
//! evicted first). With engines that *do* publish events, a short-TTL prediction covers the gap
//! between the routing decision and the engine's `BlockStored` (sibling bursts: best-of-N,
//! agent fan-out), and the exact index takes over once events arrive.
//!
//! Predictions stay prefix-closed by construction: routing a request touches its whole chain at
//! once, so a parent is never older than its child, and within one decision the deepest blocks
//! are evicted first.

use std::collections::VecDeque;

use rustc_hash::FxHashMap;

use crate::index::{Overlaps, PrefixIndex, WorkerKey};
use crate::{BlockHash, KvError, KvEvent};

/// Knobs of the approximate index. Defaults in [`ApproxConfig::DEFAULT`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ApproxConfig {
    /// Seconds a predicted block lives after the last decision that touched it.
    pub ttl_secs: f64,
    /// Predicted blocks kept per worker (LRU beyond that). Set it to the engine's number of KV
    /// blocks when known.
    pub max_blocks_per_worker: usize,
}

impl ApproxConfig {
    /// 120 s TTL (what Dynamo's approximate mode uses: long enough for multi-turn chat, short
    /// enough to forget cold prefixes), 65,536 blocks per worker (1 Mi tokens at 16-token
    /// blocks, the order of one H200's KV capacity for a 32B model).
    pub const DEFAULT: ApproxConfig = ApproxConfig {
        ttl_secs: 120.0,
        max_blocks_per_worker: 65_536,
    };

    /// Reject settings that cannot work.
    pub fn validate(&self) -> Result<(), KvError> {
        if !(self.ttl_secs.is_finite() && self.ttl_secs > 0.0) {
            return Err(KvError::InvalidApproxConfig(
                "ttl_secs must be finite and > 0",
            ));
        }
        if self.max_blocks_per_worker == 0 {
            return Err(KvError::InvalidApproxConfig(
                "max_blocks_per_worker must be >= 1",
            ));
        }
        Ok(())
    }
}

impl Default for ApproxConfig {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// One routing decision: its blocks in chain order (popped from the back = deepest first).
#[derive(Clone, Debug)]
struct Record {
    tick: u64,
    time: f64,
    hashes: Vec<BlockHash>,
}

#[derive(Clone, Debug, Default)]
struct WorkerLru {
    /// Block -> tick of the latest decision that touched it.
    entries: FxHashMap<BlockHash, u64>,
    /// Decisions, oldest first. Hashes refreshed by a later decision are stale here (their
    /// tick no longer matches) and are skipped lazily.
    queue: VecDeque<Record>,
    /// Hashes across `queue` (stale ones included), to trigger compaction.
    queued: usize,
}

/// Predicted cache contents with TTL and per-worker LRU capacity. See the module docs.
#[derive(Clone, Debug)]
pub struct ApproxIndex {
    index: PrefixIndex,
    lru: FxHashMap<WorkerKey, WorkerLru>,
    config: ApproxConfig,
    tick: u64,
    now: f64,
    spare: Vec<Vec<BlockHash>>,
}

impl ApproxIndex {
    /// An empty approximate index.
    pub fn new(config: ApproxConfig) -> Result<Self, KvError> {
        config.validate()?;
        Ok(Self {
            index: PrefixIndex::new(),
            lru: FxHashMap::default(),
            config,
            tick: 0,
            now: f64::NEG_INFINITY,
            spare: Vec::new(),
        })
    }

    /// The configuration in use.
    pub fn config(&self) -> &ApproxConfig {
        &self.config
    }

    /// Record that the request with chained `hashes` (from its first block) was routed to
    /// `worker` at time `now` (seconds; a time earlier than one already seen counts as that
    /// one, so the clock never runs backwards).
    pub fn record(&mut self, worker: WorkerKey, hashes: &[BlockHash], now: f64) {
        self.expire(now);
        if hashes.is_empty() {
            return;
        }
        self.tick += 1;
        let tick = self.tick;
        let mut buf = self.spare.pop().unwrap_or_default();
        buf.clear();
        buf.extend_from_slice(hashes);
        let lru = self.lru.entry(worker).or_default();
        for &h in hashes {
            lru.entries.insert(h, tick);
        }
        lru.queued += buf.len();
        lru.queue.push_back(Record {
            tick,
            time: self.now,
            hashes: buf,
        });
        self.index.add_worker(worker);
        self.index.store(worker, None, hashes);
        let cap = self.config.max_blocks_per_worker;
        while self.lru.get(&worker).is_some_and(|l| l.entries.len() > cap) {
            if !self.evict_one(worker) {
                break;
            }
        }
        self.maybe_compact(worker);
    }

    /// Drop every prediction older than the TTL at time `now`.
    pub fn expire(&mut self, now: f64) {
        if now > self.now {
            self.now = now;
        }
        let deadline = self.now - self.config.ttl_secs;
        // Collect first: eviction needs `&mut self`.
        let mut due: Vec<WorkerKey> = Vec::new();
        for (w, l) in &self.lru {
            if l.queue.front().is_some_and(|r| r.time <= deadline) {
                due.push(*w);
            }
        }
        for w in due {
            while self
                .lru
                .get(&w)
                .and_then(|l| l.queue.front())
                .is_some_and(|r| r.time <= deadline)
            {
                self.evict_front_record(w);
            }
        }
    }

    /// Per worker, leading blocks of `hashes` predicted cached at time `now`.
    pub fn find_matches(&mut self, hashes: &[BlockHash], now: f64, out: &mut Overlaps) {
        self.expire(now);
        self.index.find_matches(hashes, out);
    }

    /// Forget `worker`'s predictions (it left, or its engine cleared its cache).
    pub fn clear_worker(&mut self, worker: WorkerKey) {
        if let Some(mut l) = self.lru.remove(&worker) {
            for r in l.queue.drain(..) {
                self.spare.push(r.hashes);
            }
        }
        self.index.clear_worker(worker);
    }

    /// Predicted blocks for `worker`.
    pub fn worker_blocks(&self, worker: WorkerKey) -> u64 {
        self.index.worker_blocks(worker)
    }

    /// Distinct predicted blocks.
    pub fn num_blocks(&self) -> usize {
        self.index.num_blocks()
    }

    /// Approximate heap bytes held.
    pub fn memory_bytes(&self) -> usize {
        let lru: usize = self
            .lru
            .values()
            .map(|l| {
                l.entries.capacity() * 17 * 8 / 7
                    + l.queue
                        .iter()
                        .map(|r| r.hashes.capacity() * 8 + 40)
                        .sum::<usize>()
            })
            .sum();
        self.index.memory_bytes() + lru
    }

    /// See [`PrefixIndex::use_grouped_ids`].
    pub fn use_grouped_ids(&mut self) {
        self.index.use_grouped_ids();
    }

    /// The underlying prefix index (for inspection).
    pub fn index(&self) -> &PrefixIndex {
        &self.index
    }

    /// Evict `worker`'s least recently routed block; false when it has none.
    fn evict_one(&mut self, worker: WorkerKey) -> bool {
        let Some(l) = self.lru.get_mut(&worker) else {
            return false;
        };
        loop {
            let Some(front) = l.queue.front_mut() else {
                return false;
            };
            match front.hashes.pop() {
                None => {
                    if let Some(r) = l.queue.pop_front() {
                        self.spare.push(r.hashes);
                    }
                }
                Some(h) => {
                    l.queued -= 1;
                    let tick = front.tick;
                    if front.hashes.is_empty()
                        && let Some(r) = l.queue.pop_front()
                    {
                        self.spare.push(r.hashes);
                    }
                    if l.entries.get(&h) == Some(&tick) {
                        l.entries.remove(&h);
                        self.index.remove(worker, &[h]);
                        return true;
                    }
                }
            }
        }
    }

    /// Evict what is left of `worker`'s oldest decision (its non-stale blocks, deepest first).
    fn evict_front_record(&mut self, worker: WorkerKey) {
        let Some(l) = self.lru.get_mut(&worker) else {
            return;
        };
        let Some(mut r) = l.queue.pop_front() else {
            return;
        };
        l.queued -= r.hashes.len();
        while let Some(h) = r.hashes.pop() {
            if l.entries.get(&h) == Some(&r.tick) {
                l.entries.remove(&h);
                self.index.remove(worker, &[h]);
            }
        }
        self.spare.push(r.hashes);
    }

    /// Drop stale hashes from the queue once they outnumber the live ones.
    fn maybe_compact(&mut self, worker: WorkerKey) {
        let Some(l) = self.lru.get_mut(&worker) else {
            return;
        };
        if l.queued <= 2 * l.entries.len() + 4096 {
            return;
        }
        let entries = &l.entries;
        let mut queued = 0;
        for r in l.queue.iter_mut() {
            let tick = r.tick;
            r.hashes.retain(|h| entries.get(h) == Some(&tick));
            queued += r.hashes.len();
        }
        l.queue.retain(|r| !r.hashes.is_empty());
        l.queued = queued;
    }
}

/// Where the router's picture of worker caches comes from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum IndexMode {
    /// Engine KV events only (vLLM / SGLang with `--kv-events-config`, simulated workers).
    #[default]
    Exact,
    /// The router's own decisions only, with TTL + LRU (engines that publish nothing).
    Approximate,
    /// Both: events, plus short-lived predictions of decisions the events have not confirmed
    /// yet; a worker's overlap is the larger of the two.
    Hybrid,
}

/// The router-facing index: exact, approximate or both, behind one interface.
#[derive(Clone, Debug)]
pub struct KvIndexer {
    mode: IndexMode,
    exact: PrefixIndex,
    predicted: ApproxIndex,
    scratch: Overlaps,
}

impl KvIndexer {
    /// An empty indexer. `approx` configures predictions (unused in [`IndexMode::Exact`]).
    pub fn new(mode: IndexMode, approx: ApproxConfig) -> Result<Self, KvError> {
        Ok(Self {
            mode,
            exact: PrefixIndex::new(),
            predicted: ApproxIndex::new(approx)?,
            scratch: Overlaps::new(),
        })
    }

    /// The feed in use.
    pub fn mode(&self) -> IndexMode {
        self.mode
    }

    /// Apply an engine event (ignored in [`IndexMode::Approximate`]). An `AllCleared` also
    /// drops the worker's predictions.
    pub fn apply_event(&mut self, worker: WorkerKey, event: &KvEvent) {
        if self.mode == IndexMode::Approximate {
            return;
        }
        self.exact.apply_event(worker, event);
        if matches!(event, KvEvent::AllCleared) && self.mode == IndexMode::Hybrid {
            self.predicted.clear_worker(worker);
        }
    }

    /// Apply a batch of engine events in order (faster than one by one on a large index; see
    /// [`PrefixIndex::apply_events`]).
    pub fn apply_events(&mut self, events: &[(WorkerKey, KvEvent)]) {
        if self.mode == IndexMode::Approximate {
            return;
        }
        self.exact.apply_events(events);
        if self.mode == IndexMode::Hybrid {
            for (w, e) in events {
                if matches!(e, KvEvent::AllCleared) {
                    self.predicted.clear_worker(*w);
                }
            }
        }
    }

    /// Record a routing decision as a prediction (no-op in [`IndexMode::Exact`]).
    pub fn record_routing(&mut self, worker: WorkerKey, hashes: &[BlockHash], now: f64) {
        if self.mode != IndexMode::Exact {
            self.predicted.record(worker, hashes, now);
        }
    }

    /// Per worker, the leading blocks of `hashes` it holds (or is predicted to hold) at `now`.
    pub fn find_matches(&mut self, hashes: &[BlockHash], now: f64, out: &mut Overlaps) {
        match self.mode {
            IndexMode::Exact => self.exact.find_matches(hashes, out),
            IndexMode::Approximate => self.predicted.find_matches(hashes, now, out),
            IndexMode::Hybrid => {
                self.exact.find_matches(hashes, out);
                let mut scratch = std::mem::take(&mut self.scratch);
                self.predicted.find_matches(hashes, now, &mut scratch);
                out.merge_max(&scratch);
                self.scratch = scratch;
            }
        }
    }

    /// A worker left the fleet: forget its blocks and predictions.
    pub fn remove_worker(&mut self, worker: WorkerKey) {
        self.exact.remove_worker(worker);
        self.predicted.clear_worker(worker);
    }

    /// A worker (re)joined: accept its events again after a [`Self::remove_worker`].
    pub fn add_worker(&mut self, worker: WorkerKey) {
        self.exact.add_worker(worker);
    }

    /// Cached blocks the index attributes to `worker` (exact, or predicted when approximate).
    pub fn worker_blocks(&self, worker: WorkerKey) -> u64 {
        match self.mode {
            IndexMode::Approximate => self.predicted.worker_blocks(worker),
            _ => self.exact.worker_blocks(worker),
        }
    }

    /// Key both indexes by grouped ids ([`PrefixIndex::use_grouped_ids`]).
    pub fn use_grouped_ids(&mut self) {
        self.exact.use_grouped_ids();
        self.predicted.use_grouped_ids();
    }

    /// The exact index (counters, sizes).
    pub fn exact(&self) -> &PrefixIndex {
        &self.exact
    }

    /// The prediction index.
    pub fn predicted(&self) -> &ApproxIndex {
        &self.predicted
    }

    /// Approximate heap bytes of both indexes.
    pub fn memory_bytes(&self) -> usize {
        self.exact.memory_bytes() + self.predicted.memory_bytes()
    }
}
