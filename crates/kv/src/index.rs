//! The exact prefix index: which worker holds which cached blocks, fed by engine events.
//!
//! # Structure
//! One node per distinct block hash (a slab of 32-byte nodes plus an `FxHashMap` from hash to
//! slot), linked to its parent and its children, with a bitset of the workers holding it.
//! Workers are interned to dense slots; slots 0..63 live inline in the node, higher slots in a
//! side table (only fleets of more than 64 (worker, dp-rank) pairs pay for it).
//!
//! # Invariant: holdings are prefix-closed
//! A worker that holds a block holds its parent: a store whose parent the worker does not hold
//! is dropped (and counted), and a removal takes the block's descendants on that worker with it
//! (engines cannot use a block whose parent is gone). Hence along any chain the set of holders
//! only shrinks, and an overlap query finds the depth where each worker drops out by bisection
//! over the request's blocks — O(k·log(n/k)) lookups for k distinct drop-out depths, instead of
//! a walk over all n blocks.
//!
//! # Bad input
//! Unknown parents, parent mismatches, duplicate stores, removals of blocks a worker does not
//! hold, events from removed workers and stores beyond the per-worker cap are skipped and
//! counted in [`IndexCounters`]; the index stays consistent. Nothing panics on event content.

use std::fmt;

use rustc_hash::{FxHashMap, FxHashSet};

use crate::grouped::BlockMap;
use crate::{BlockHash, KvEvent};

/// An engine instance's id (as assigned by discovery / configuration).
pub type WorkerId = u64;

/// A cache owner: an engine instance and its data-parallel rank (attention-DP engines have one
/// KV cache per rank, each publishing its own events).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct WorkerKey {
    /// Engine instance.
    pub worker: WorkerId,
    /// Data-parallel rank inside the instance (0 when the engine has no attention DP).
    pub dp_rank: u32,
}

impl WorkerKey {
    /// `(worker, dp_rank)`.
    pub const fn new(worker: WorkerId, dp_rank: u32) -> Self {
        Self { worker, dp_rank }
    }
}

impl From<WorkerId> for WorkerKey {
    fn from(worker: WorkerId) -> Self {
        Self { worker, dp_rank: 0 }
    }
}

impl fmt::Display for WorkerKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.dp_rank == 0 {
            write!(f, "{}", self.worker)
        } else {
            write!(f, "{}/dp{}", self.worker, self.dp_rank)
        }
    }
}

/// Anomaly and activity counters (monotonic; export them as metrics).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IndexCounters {
    /// Events passed to [`PrefixIndex::apply_event`].
    pub events: u64,
    /// Worker-block memberships added by stores.
    pub blocks_stored: u64,
    /// Memberships removed because the block was named in a removal.
    pub blocks_removed: u64,
    /// Memberships removed because an ancestor was removed (prefix closure).
    pub blocks_cascaded: u64,
    /// Store events whose parent the worker does not hold (the event is dropped).
    pub unknown_parent: u64,
    /// Stores naming a block already indexed under a different parent (rest of event dropped).
    pub parent_mismatch: u64,
    /// Blocks dropped by the two anomalies above or by the capacity cap.
    pub blocks_dropped: u64,
    /// Stored blocks the worker already held (idempotent).
    pub duplicate_store: u64,
    /// Removals of blocks the worker does not hold.
    pub unknown_removal: u64,
    /// Events from workers removed with [`PrefixIndex::remove_worker`] (ignored).
    pub removed_worker_events: u64,
    /// Stores refused because the worker reached `max_blocks_per_worker`.
    pub over_capacity: u64,
    /// Internal repairs (children found under a node being freed). Should stay 0.
    pub repairs: u64,
}

/// Per-worker overlap result of a query: the number of leading request blocks each worker
/// holds. Only workers with a non-zero overlap are listed. Reuse one value across queries to
/// avoid allocation.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Overlaps {
    /// Sorted by worker key.
    entries: Vec<(WorkerKey, u32)>,
}

impl Overlaps {
    /// Empty result.
    pub fn new() -> Self {
        Self::default()
    }

    /// Leading blocks `worker` holds (0 when it holds none).
    pub fn get(&self, worker: WorkerKey) -> u32 {
        match self.entries.binary_search_by_key(&worker, |e| e.0) {
            Ok(i) => self.entries[i].1,
            Err(_) => 0,
        }
    }

    /// `(worker, overlap)` pairs with overlap > 0, sorted by worker.
    pub fn iter(&self) -> impl Iterator<Item = (WorkerKey, u32)> + '_ {
        self.entries.iter().copied()
    }

    /// Entries as a slice, sorted by worker.
    pub fn as_slice(&self) -> &[(WorkerKey, u32)] {
        &self.entries
    }

    /// Number of workers with a non-zero overlap.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// No worker holds the first block.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The largest overlap (0 when empty).
    pub fn max(&self) -> u32 {
        self.entries.iter().map(|e| e.1).max().unwrap_or(0)
    }

    /// Forget everything.
    pub fn clear(&mut self) {
        self.entries.clear();
    }

    /// Per worker, keep the larger of the two overlaps (used to combine exact and predicted).
    pub fn merge_max(&mut self, other: &Overlaps) {
        if other.entries.is_empty() {
            return;
        }
        for &(w, o) in &other.entries {
            match self.entries.binary_search_by_key(&w, |e| e.0) {
                Ok(i) => self.entries[i].1 = self.entries[i].1.max(o),
                Err(i) => self.entries.insert(i, (w, o)),
            }
        }
    }

    fn push_unsorted(&mut self, w: WorkerKey, o: u32) {
        self.entries.push((w, o));
    }

    fn finish(&mut self) {
        self.entries.sort_unstable_by_key(|e| e.0);
    }
}

const NIL: u32 = u32::MAX;

/// How many blocks ahead of the current one ingestion prefetches table slots.
const PREFETCH: usize = 16;

/// A block. `mask` holds slots 0..63; a node with no holder is free (or about to be).
#[derive(Clone, Copy, Debug)]
struct Node {
    hash: BlockHash,
    mask: u64,
    parent: u32,
    first_child: u32,
    next: u32,
    prev: u32,
}

impl Node {
    const FREE: Node = Node {
        hash: 0,
        mask: 0,
        parent: NIL,
        first_child: NIL,
        next: NIL,
        prev: NIL,
    };
}

/// Default cap on blocks per worker: 4 Mi blocks (64 Mi tokens at 16-token blocks) is above
/// the KV capacity of any single GPU engine today, so only a misbehaving publisher hits it.
pub const DEFAULT_MAX_BLOCKS_PER_WORKER: u64 = 1 << 22;

/// The exact prefix index. See the module docs.
#[derive(Clone, Debug)]
pub struct PrefixIndex {
    map: BlockMap,
    nodes: Vec<Node>,
    free: Vec<u32>,
    /// Words 1.. of the holder bitset (slots 64..) for nodes that have such holders.
    wide: FxHashMap<u32, Vec<u64>>,
    slots: FxHashMap<WorkerKey, u32>,
    slot_keys: Vec<Option<WorkerKey>>,
    slot_blocks: Vec<u64>,
    free_slots: Vec<u32>,
    removed: FxHashSet<WorkerKey>,
    counters: IndexCounters,
    memberships: u64,
    max_blocks_per_worker: u64,
    stack: Vec<u32>,
    order: Vec<u32>,
}

impl Default for PrefixIndex {
    fn default() -> Self {
        Self::new()
    }
}

impl PrefixIndex {
    /// An empty index with the default per-worker cap.
    pub fn new() -> Self {
        Self {
            map: BlockMap::default(),
            nodes: Vec::new(),
            free: Vec::new(),
            wide: FxHashMap::default(),
            slots: FxHashMap::default(),
            slot_keys: Vec::new(),
            slot_blocks: Vec::new(),
            free_slots: Vec::new(),
            removed: FxHashSet::default(),
            counters: IndexCounters::default(),
            memberships: 0,
            max_blocks_per_worker: DEFAULT_MAX_BLOCKS_PER_WORKER,
            stack: Vec::new(),
            order: Vec::new(),
        }
    }

    /// An empty index with room for `blocks` distinct blocks before reallocating.
    pub fn with_capacity(blocks: usize) -> Self {
        let mut s = Self::new();
        s.map.reserve(blocks);
        s.nodes.reserve(blocks);
        s
    }

    /// Key blocks by grouped ids (see [`crate::grouped`]): for a simulator whose block
    /// "hashes" are `group << GROUP_BITS | i` ids; any keys stay correct, only speed changes.
    /// Only an empty index switches (nodes live at their keys' positions); otherwise this is
    /// a no-op.
    pub fn use_grouped_ids(&mut self) {
        if self.map.is_grouped() || !self.map.is_empty() {
            return;
        }
        self.map = BlockMap::grouped();
        self.nodes.clear();
        self.free.clear();
    }

    /// Cap the blocks one worker may hold (stores beyond it are dropped and counted).
    pub fn with_max_blocks_per_worker(mut self, cap: u64) -> Self {
        self.max_blocks_per_worker = cap;
        self
    }

    // ----- events ---------------------------------------------------------------------------

    /// Apply one engine event for `worker`. Never fails: anomalies are counted.
    pub fn apply_event(&mut self, worker: WorkerKey, event: &KvEvent) {
        match event {
            KvEvent::Stored { parent, blocks } => self.store(worker, *parent, blocks),
            KvEvent::Removed { blocks } => self.remove(worker, blocks),
            KvEvent::AllCleared => self.clear_worker(worker),
        }
    }

    /// Apply a batch of events in order (what one engine message carries, or everything
    /// received since the last call). Same result as [`Self::apply_event`] one by one, faster
    /// on a large index: while one event is applied, the table slots of the next one are
    /// prefetched, so its cache misses overlap with useful work.
    pub fn apply_events(&mut self, events: &[(WorkerKey, KvEvent)]) {
        if let Some((_, first)) = events.first() {
            self.prefetch_event(first);
        }
        for (j, (w, e)) in events.iter().enumerate() {
            if let Some((_, next)) = events.get(j + 1) {
                self.prefetch_event(next);
            }
            match e {
                KvEvent::Stored { parent, blocks } => self.store_inner(*w, *parent, blocks, true),
                KvEvent::Removed { blocks } => self.remove_inner(*w, blocks, true),
                KvEvent::AllCleared => self.clear_worker(*w),
            }
        }
    }

    fn prefetch_event(&self, e: &KvEvent) {
        if let KvEvent::Stored { blocks, .. } | KvEvent::Removed { blocks } = e {
            for &h in blocks.iter().take(PREFETCH) {
                self.map.prefetch(h);
            }
        }
    }

    /// `worker` cached `blocks` (in chain order) after `parent` (`None`: from the start).
    pub fn store(&mut self, worker: WorkerKey, parent: Option<BlockHash>, blocks: &[BlockHash]) {
        self.store_inner(worker, parent, blocks, false);
    }

    fn store_inner(
        &mut self,
        worker: WorkerKey,
        parent: Option<BlockHash>,
        blocks: &[BlockHash],
        prefetched: bool,
    ) {
        self.counters.events += 1;
        if self.removed.contains(&worker) {
            self.counters.removed_worker_events += 1;
            return;
        }
        let Some(slot) = self.slot_or_insert(worker) else {
            return;
        };
        let mut prev = match parent {
            None => NIL,
            Some(p) => match self.map.get(p) {
                Some(i) if self.has(i, slot) => i,
                _ => {
                    self.counters.unknown_parent += 1;
                    self.counters.blocks_dropped += blocks.len() as u64;
                    return;
                }
            },
        };
        let s = slot as usize;
        if !prefetched {
            for &h in blocks.iter().take(PREFETCH) {
                self.map.prefetch(h);
            }
        }
        for (k, &h) in blocks.iter().enumerate() {
            if let Some(&ahead) = blocks.get(k + PREFETCH) {
                self.map.prefetch(ahead);
            }
            if self.slot_blocks[s] >= self.max_blocks_per_worker && self.map.get(h).is_none() {
                self.counters.over_capacity += 1;
                self.counters.blocks_dropped += (blocks.len() - k) as u64;
                return;
            }
            let (i, inserted) = match &mut self.map {
                // Grouped ids: the node lives at the key's position, next to its group's.
                BlockMap::Grouped(t) => {
                    let (i, inserted) = t.insert_pos(h);
                    if inserted {
                        if self.nodes.len() < t.positions() {
                            self.nodes.resize(t.positions(), Node::FREE);
                        }
                        link_new(&mut self.nodes, i, h, prev);
                    }
                    (i, inserted)
                }
                map => {
                    let (nodes, free) = (&mut self.nodes, &mut self.free);
                    map.get_or_insert_with(h, || alloc(nodes, free, h, prev))
                }
            };
            if !inserted && self.nodes[i as usize].parent != prev {
                self.counters.parent_mismatch += 1;
                self.counters.blocks_dropped += (blocks.len() - k) as u64;
                return;
            }
            if self.has(i, slot) {
                self.counters.duplicate_store += 1;
            } else {
                if self.slot_blocks[s] >= self.max_blocks_per_worker {
                    self.counters.over_capacity += 1;
                    self.counters.blocks_dropped += (blocks.len() - k) as u64;
                    // The node may have just been created with no holder: free it again.
                    if self.node_is_empty(i) {
                        self.unlink(i);
                        self.free_node(i);
                    }
                    return;
                }
                self.set(i, slot);
                self.slot_blocks[s] += 1;
                self.memberships += 1;
                self.counters.blocks_stored += 1;
            }
            prev = i;
        }
    }

    /// `worker` evicted `blocks`; their descendants on `worker` go too (prefix closure).
    pub fn remove(&mut self, worker: WorkerKey, blocks: &[BlockHash]) {
        self.remove_inner(worker, blocks, false);
    }

    fn remove_inner(&mut self, worker: WorkerKey, blocks: &[BlockHash], prefetched: bool) {
        self.counters.events += 1;
        if self.removed.contains(&worker) {
            self.counters.removed_worker_events += 1;
            return;
        }
        let Some(&slot) = self.slots.get(&worker) else {
            self.counters.unknown_removal += blocks.len() as u64;
            return;
        };
        if !prefetched {
            for &h in blocks.iter().take(PREFETCH) {
                self.map.prefetch(h);
            }
        }
        for (k, &h) in blocks.iter().enumerate() {
            if let Some(&ahead) = blocks.get(k + PREFETCH) {
                self.map.prefetch(ahead);
            }
            match self.map.get(h) {
                Some(i) if self.has(i, slot) => self.remove_subtree(slot, i),
                _ => self.counters.unknown_removal += 1,
            }
        }
    }

    /// `worker` dropped its whole cache (`AllBlocksCleared`). The worker stays registered.
    pub fn clear_worker(&mut self, worker: WorkerKey) {
        self.counters.events += 1;
        if self.removed.contains(&worker) {
            self.counters.removed_worker_events += 1;
            return;
        }
        if let Some(&slot) = self.slots.get(&worker) {
            self.clear_slot(slot);
        }
    }

    /// Forget `worker` entirely (it left the fleet). Later events from it are ignored and
    /// counted until [`Self::add_worker`] registers it again. O(indexed blocks).
    pub fn remove_worker(&mut self, worker: WorkerKey) {
        if let Some(slot) = self.slots.remove(&worker) {
            self.clear_slot(slot);
            self.slot_keys[slot as usize] = None;
            self.slot_blocks[slot as usize] = 0;
            self.free_slots.push(slot);
        }
        self.removed.insert(worker);
    }

    /// Register `worker` (again): lifts the tombstone left by [`Self::remove_worker`]. Workers
    /// are otherwise registered implicitly by their first store.
    pub fn add_worker(&mut self, worker: WorkerKey) {
        self.removed.remove(&worker);
        self.slot_or_insert(worker);
    }

    // ----- queries --------------------------------------------------------------------------

    /// For a request's chained block hashes, the number of leading blocks each worker holds.
    /// Clears `out` first. Stops as soon as no worker matches.
    pub fn find_matches(&self, hashes: &[BlockHash], out: &mut Overlaps) {
        out.clear();
        let n = hashes.len();
        if n == 0 {
            return;
        }
        let Some(first) = self.map.get(hashes[0]) else {
            return;
        };
        let groups = self.slot_keys.len().div_ceil(64);
        for g in 0..groups {
            let s0 = self.word(first, g);
            if s0 == 0 {
                continue;
            }
            let last = n - 1;
            let s_last = if last == 0 {
                s0
            } else {
                self.word_at(hashes, last, g) & s0
            };
            self.emit(g, s_last, n, out);
            if last > 0 {
                self.bisect(hashes, g, 0, s0, last, s_last, out);
            }
        }
        out.finish();
    }

    /// Leading blocks of `hashes` that `worker` holds (binary search; O(log n) lookups).
    pub fn overlap(&self, worker: WorkerKey, hashes: &[BlockHash]) -> usize {
        let Some(&slot) = self.slots.get(&worker) else {
            return 0;
        };
        let holds = |k: usize| self.map.get(hashes[k]).is_some_and(|i| self.has(i, slot));
        // Largest m with holds(0..m): by prefix closure `holds` is monotone.
        let (mut lo, mut hi) = (0usize, hashes.len());
        while lo < hi {
            let mid = lo + (hi - lo).div_ceil(2);
            if holds(mid - 1) {
                lo = mid;
            } else {
                hi = mid - 1;
            }
        }
        lo
    }

    /// Does `worker` hold `block`?
    pub fn contains(&self, worker: WorkerKey, block: BlockHash) -> bool {
        match (self.slots.get(&worker), self.map.get(block)) {
            (Some(&s), Some(i)) => self.has(i, s),
            _ => false,
        }
    }

    /// Distinct blocks indexed.
    pub fn num_blocks(&self) -> usize {
        self.map.len()
    }

    /// Worker-block memberships (the sum of every worker's block count).
    pub fn num_memberships(&self) -> u64 {
        self.memberships
    }

    /// Blocks `worker` holds.
    pub fn worker_blocks(&self, worker: WorkerKey) -> u64 {
        self.slots
            .get(&worker)
            .map_or(0, |&s| self.slot_blocks[s as usize])
    }

    /// Registered workers (any order).
    pub fn workers(&self) -> impl Iterator<Item = WorkerKey> + '_ {
        self.slot_keys.iter().flatten().copied()
    }

    /// Anomaly and activity counters.
    pub fn counters(&self) -> &IndexCounters {
        &self.counters
    }

    /// Approximate heap bytes held (hash map buckets, node slab, side tables).
    pub fn memory_bytes(&self) -> usize {
        use std::mem::size_of;
        let buckets = |cap: usize| {
            if cap == 0 {
                0
            } else {
                (cap * 8 / 7).next_power_of_two()
            }
        };
        let map = self.map.memory_bytes();
        let nodes = self.nodes.capacity() * size_of::<Node>();
        let wide = buckets(self.wide.capacity()) * (size_of::<(u32, Vec<u64>)>() + 1)
            + self.wide.values().map(|v| v.capacity() * 8).sum::<usize>();
        let slots = buckets(self.slots.capacity()) * (size_of::<(WorkerKey, u32)>() + 1)
            + self.slot_keys.capacity() * size_of::<Option<WorkerKey>>()
            + self.slot_blocks.capacity() * 8;
        map + nodes + wide + slots + (self.free.capacity() + self.stack.capacity()) * 4
    }

    /// Full structural check, O(indexed blocks): for tests and debugging.
    pub fn check_invariants(&self) -> Result<(), String> {
        let mut live = 0usize;
        let mut per_slot = vec![0u64; self.slot_keys.len()];
        for (i, n) in self.nodes.iter().enumerate() {
            let i = i as u32;
            if self.node_is_empty(i) {
                continue;
            }
            live += 1;
            if self.map.get(n.hash) != Some(i) {
                return Err(format!("node {i} not in map"));
            }
            for (s, c) in per_slot.iter_mut().enumerate() {
                if self.has(i, s as u32) {
                    if self.slot_keys[s].is_none() {
                        return Err(format!("node {i} held by free slot {s}"));
                    }
                    *c += 1;
                    if n.parent != NIL && !self.has(n.parent, s as u32) {
                        return Err(format!("slot {s} holds {i} but not its parent"));
                    }
                }
            }
            let mut c = n.first_child;
            let mut prev = NIL;
            while c != NIL {
                let cn = &self.nodes[c as usize];
                if cn.parent != i || cn.prev != prev {
                    return Err(format!("bad child link {i} -> {c}"));
                }
                prev = c;
                c = cn.next;
            }
        }
        if live != self.map.len() {
            return Err(format!("{live} live nodes, {} map entries", self.map.len()));
        }
        if per_slot != self.slot_blocks {
            return Err(format!(
                "slot counts {per_slot:?} vs {:?}",
                self.slot_blocks
            ));
        }
        if per_slot.iter().sum::<u64>() != self.memberships {
            return Err("membership count".into());
        }
        Ok(())
    }

    // ----- internals ------------------------------------------------------------------------

    fn slot_or_insert(&mut self, worker: WorkerKey) -> Option<u32> {
        if let Some(&s) = self.slots.get(&worker) {
            return Some(s);
        }
        if self.removed.contains(&worker) {
            return None;
        }
        let s = match self.free_slots.pop() {
            Some(s) => {
                self.slot_keys[s as usize] = Some(worker);
                self.slot_blocks[s as usize] = 0;
                s
            }
            None => {
                self.slot_keys.push(Some(worker));
                self.slot_blocks.push(0);
                (self.slot_keys.len() - 1) as u32
            }
        };
        self.slots.insert(worker, s);
        Some(s)
    }

    #[inline]
    fn has(&self, i: u32, slot: u32) -> bool {
        if slot < 64 {
            self.nodes[i as usize].mask >> slot & 1 != 0
        } else {
            self.wide
                .get(&i)
                .and_then(|v| v.get((slot / 64 - 1) as usize))
                .is_some_and(|w| w >> (slot % 64) & 1 != 0)
        }
    }

    fn set(&mut self, i: u32, slot: u32) {
        if slot < 64 {
            self.nodes[i as usize].mask |= 1 << slot;
        } else {
            let v = self.wide.entry(i).or_default();
            let w = (slot / 64 - 1) as usize;
            if v.len() <= w {
                v.resize(w + 1, 0);
            }
            v[w] |= 1 << (slot % 64);
        }
    }

    fn clear_bit(&mut self, i: u32, slot: u32) {
        if slot < 64 {
            self.nodes[i as usize].mask &= !(1 << slot);
        } else if let Some(v) = self.wide.get_mut(&i) {
            if let Some(w) = v.get_mut((slot / 64 - 1) as usize) {
                *w &= !(1 << (slot % 64));
            }
            if v.iter().all(|&w| w == 0) {
                self.wide.remove(&i);
            }
        }
    }

    #[inline]
    fn node_is_empty(&self, i: u32) -> bool {
        self.nodes[i as usize].mask == 0 && (self.wide.is_empty() || !self.wide.contains_key(&i))
    }

    /// Word `g` (slots 64g..64g+63) of node `i`'s holder set.
    #[inline]
    fn word(&self, i: u32, g: usize) -> u64 {
        if g == 0 {
            self.nodes[i as usize].mask
        } else {
            self.wide
                .get(&i)
                .and_then(|v| v.get(g - 1))
                .copied()
                .unwrap_or(0)
        }
    }

    #[inline]
    fn word_at(&self, hashes: &[BlockHash], k: usize, g: usize) -> u64 {
        match self.map.get(hashes[k]) {
            Some(i) => self.word(i, g),
            None => 0,
        }
    }

    /// Holders at `lo` are `s_lo`, at `hi` are `s_hi ⊆ s_lo`; record where each worker of
    /// `s_lo \ s_hi` drops out. Sets are monotone along the chain, so equal ends mean nothing
    /// changes in between. (If a caller's hashes are not a chain of the index's hash space the
    /// result degrades to an approximation, never a panic: `s_mid` is clamped into
    /// `[s_hi, s_lo]`.)
    #[allow(clippy::too_many_arguments)]
    fn bisect(
        &self,
        hashes: &[BlockHash],
        g: usize,
        lo: usize,
        s_lo: u64,
        hi: usize,
        s_hi: u64,
        out: &mut Overlaps,
    ) {
        if s_lo == s_hi {
            return;
        }
        if hi - lo == 1 {
            self.emit(g, s_lo & !s_hi, lo + 1, out);
            return;
        }
        let mid = lo + (hi - lo) / 2;
        let s_mid = (self.word_at(hashes, mid, g) & s_lo) | s_hi;
        self.bisect(hashes, g, lo, s_lo, mid, s_mid, out);
        self.bisect(hashes, g, mid, s_mid, hi, s_hi, out);
    }

    fn emit(&self, g: usize, mut bits: u64, overlap: usize, out: &mut Overlaps) {
        while bits != 0 {
            let b = bits.trailing_zeros() as usize;
            bits &= bits - 1;
            if let Some(Some(w)) = self.slot_keys.get(g * 64 + b) {
                out.push_unsorted(*w, overlap as u32);
            }
        }
    }

    /// Remove `slot` from node `i` and from all of `i`'s descendants it holds.
    fn remove_subtree(&mut self, slot: u32, i: u32) {
        if self.nodes[i as usize].first_child == NIL {
            // A leaf (the usual case: engines evict a chain tail first): no walk needed.
            self.counters.blocks_removed += 1;
            self.clear_bit(i, slot);
            self.slot_blocks[slot as usize] -= 1;
            self.memberships -= 1;
            if self.node_is_empty(i) {
                self.unlink(i);
                self.free_node(i);
            }
            return;
        }
        let mut stack = std::mem::take(&mut self.stack);
        let mut order = std::mem::take(&mut self.order);
        stack.clear();
        order.clear();
        stack.push(i);
        // Pre-order collection; processing it in reverse visits children before parents.
        while let Some(x) = stack.pop() {
            order.push(x);
            let mut c = self.nodes[x as usize].first_child;
            while c != NIL {
                if self.has(c, slot) {
                    stack.push(c);
                }
                c = self.nodes[c as usize].next;
            }
        }
        self.counters.blocks_removed += 1;
        self.counters.blocks_cascaded += order.len() as u64 - 1;
        for &x in order.iter().rev() {
            self.clear_bit(x, slot);
            self.slot_blocks[slot as usize] -= 1;
            self.memberships -= 1;
            if self.node_is_empty(x) {
                self.unlink(x);
                self.free_node(x);
            }
        }
        self.stack = stack;
        self.order = order;
    }

    /// Remove `slot` from every node (AllCleared / worker removal). O(indexed blocks).
    fn clear_slot(&mut self, slot: u32) {
        if self.slot_blocks[slot as usize] == 0 {
            return;
        }
        let mut empties = std::mem::take(&mut self.order);
        empties.clear();
        let held: Vec<u32> = if slot < 64 {
            let bit = 1u64 << slot;
            (0..self.nodes.len() as u32)
                .filter(|&i| self.nodes[i as usize].mask & bit != 0)
                .collect()
        } else {
            self.wide
                .keys()
                .copied()
                .filter(|&i| self.has(i, slot))
                .collect()
        };
        for &i in &held {
            self.clear_bit(i, slot);
            if self.node_is_empty(i) {
                empties.push(i);
            }
        }
        self.memberships -= held.len() as u64;
        self.slot_blocks[slot as usize] = 0;
        // Empty nodes form whole subtrees; only their tops hang under surviving parents.
        for &e in &empties {
            let p = self.nodes[e as usize].parent;
            if p != NIL && !self.node_is_empty(p) {
                self.unlink(e);
            }
        }
        for &e in &empties {
            // Detach links so free_node's sanity check sees no children.
            let n = &mut self.nodes[e as usize];
            n.first_child = NIL;
            n.parent = NIL;
            self.free_node(e);
        }
        self.order = empties;
    }

    /// Take node `i` out of its parent's child list.
    fn unlink(&mut self, i: u32) {
        let Node {
            parent, next, prev, ..
        } = self.nodes[i as usize];
        if parent != NIL {
            if prev != NIL {
                self.nodes[prev as usize].next = next;
            } else {
                self.nodes[parent as usize].first_child = next;
            }
            if next != NIL {
                self.nodes[next as usize].prev = prev;
            }
        }
        let n = &mut self.nodes[i as usize];
        n.parent = NIL;
        n.next = NIL;
        n.prev = NIL;
    }

    fn free_node(&mut self, i: u32) {
        // By prefix closure an empty node has no children; if one somehow does, turn the
        // children into roots rather than leave dangling links.
        let mut c = self.nodes[i as usize].first_child;
        while c != NIL {
            self.counters.repairs += 1;
            let next = self.nodes[c as usize].next;
            let cn = &mut self.nodes[c as usize];
            cn.parent = NIL;
            cn.next = NIL;
            cn.prev = NIL;
            c = next;
        }
        let hash = self.nodes[i as usize].hash;
        self.map.remove(hash);
        if !self.wide.is_empty() {
            self.wide.remove(&i);
        }
        self.nodes[i as usize] = Node::FREE;
        // A grouped map owns node positions (freed with the key above).
        if !self.map.is_grouped() {
            self.free.push(i);
        }
    }
}

/// New node under `parent` (pushed at the front of its child list).
fn alloc(nodes: &mut Vec<Node>, free: &mut Vec<u32>, hash: BlockHash, parent: u32) -> u32 {
    let i = match free.pop() {
        Some(i) => i,
        None => {
            nodes.push(Node::FREE);
            (nodes.len() - 1) as u32
        }
    };
    link_new(nodes, i, hash, parent);
    i
}

/// Make free slot `i` a new node under `parent` (at the front of its child list).
fn link_new(nodes: &mut [Node], i: u32, hash: BlockHash, parent: u32) {
    nodes[i as usize] = Node {
        hash,
        parent,
        next: if parent == NIL {
            NIL
        } else {
            nodes[parent as usize].first_child
        },
        ..Node::FREE
    };
    if parent != NIL {
        let old = nodes[parent as usize].first_child;
        if old != NIL {
            nodes[old as usize].prev = i;
        }
        nodes[parent as usize].first_child = i;
    }
}
