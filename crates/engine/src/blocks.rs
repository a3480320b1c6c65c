//! Paged KV block pool with prefix caching (vLLM-style).
//!
//! Every block sits either in use (refcount > 0) or in one free queue ordered by release time.
//! Freed blocks keep their hash, so a later request can reuse them until allocation pops them
//! from the queue head (LRU eviction, which emits `Removed`). All operations are O(1)
//! (amortized) except prefix lookup (O(prefix blocks)).
//!
//! Layout, for speed (a long prompt allocates, registers and frees hundreds of blocks, each a
//! cache miss in a pool of ~50k blocks):
//! - one 16-byte [`Entry`] per block (hash, refcount + "cached" flag, queue stamp), so touching
//!   a block touches one cache line;
//! - the free queue is a ring of block ids with lazy deletion: taking a cached block out of
//!   the middle of the queue (a prefix hit) only bumps its refcount, and the stale ring item is
//!   skipped when it reaches the head (its stamp no longer matches). Popping the head walks a
//!   sequential array instead of chasing linked-list pointers;
//! - the hash -> block map is open addressing with linear probing over 16-byte slots, indexed
//!   by a multiplicative (Fibonacci) hash of the block hash, with backward-shift deletion: no
//!   tombstones, a fixed capacity of at least twice the block count (never resizes), and
//!   usually one cache line per operation.

use std::collections::VecDeque;

use switchyard_kv::grouped::GroupedTable;
use switchyard_kv::{BlockHash, KvEvent};

/// Hint the CPU to pull the cache line at `p` (no-op off x86-64). Pool operations are bound by
/// memory latency (random blocks, random table slots); issuing the loads of upcoming
/// operations early overlaps those misses.
#[inline(always)]
fn prefetch<T>(p: *const T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch is only a hint: it never faults and has no architectural effect,
    // whatever the address.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(p.cast());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

/// How far ahead `alloc_n` prefetches block entries, and table slots of their hashes.
const AHEAD_ENTRY: usize = 32;
const AHEAD_SLOT: usize = 16;

/// Largest supported pool (ring stamps are 32-bit; see [`BlockPool::compact`]).
pub(crate) const MAX_BLOCKS: u32 = 1 << 30;

/// Refcount bits of [`Entry::rc`]; the top bit says the block holds a cached hash.
const RC_MASK: u32 = 0x7fff_ffff;
const CACHED: u32 = 0x8000_0000;

#[derive(Clone, Copy, Debug, Default)]
#[repr(C, align(16))]
struct Entry {
    /// Valid when `rc & CACHED`.
    hash: BlockHash,
    /// Refcount | CACHED.
    rc: u32,
    /// Ring stamp (low 32 bits of the sequence number) of the block's live free-queue item;
    /// meaningful only while the refcount is 0.
    stamp: u32,
}

#[derive(Clone, Copy, Debug)]
#[repr(C, align(16))]
struct Slot {
    key: BlockHash,
    /// Block index, or `EMPTY`.
    val: u32,
}

const EMPTY: u32 = u32::MAX;
const EMPTY_SLOT: Slot = Slot { key: 0, val: EMPTY };

/// Hash -> block map: linear probing, backward-shift deletion, fixed power-of-two capacity.
#[derive(Clone, Debug)]
struct Table {
    slots: Vec<Slot>,
    mask: usize,
    shift: u32,
}

impl Table {
    fn with_capacity_for(n: u32) -> Table {
        // Load factor <= 1/2 when every block holds a hash.
        let cap = (2 * n as usize).next_power_of_two().max(16);
        Table {
            // Allocated by the first insert: a simulator that keys the pool by grouped ids
            // never uses it, and pools are large (16 bytes x 2 x blocks).
            slots: Vec::new(),
            mask: cap - 1,
            shift: 64 - cap.trailing_zeros(),
        }
    }

    /// Home slot: Fibonacci hashing spreads structured keys (small integers, ids in the high
    /// bits) as well as random ones, at the cost of one multiply.
    #[inline]
    fn home(&self, key: BlockHash) -> usize {
        (key.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> self.shift) as usize
    }

    #[inline]
    fn get(&self, key: BlockHash) -> Option<u32> {
        if self.slots.is_empty() {
            return None;
        }
        let mut i = self.home(key);
        loop {
            let s = self.slots[i];
            if s.val == EMPTY {
                return None;
            }
            if s.key == key {
                return Some(s.val);
            }
            i = (i + 1) & self.mask;
        }
    }

    /// Insert unless the key is present. True when inserted.
    #[inline]
    fn insert_new(&mut self, key: BlockHash, val: u32) -> bool {
        if self.slots.is_empty() {
            self.slots = vec![EMPTY_SLOT; self.mask + 1];
        }
        let mut i = self.home(key);
        loop {
            let s = &mut self.slots[i];
            if s.val == EMPTY {
                *s = Slot { key, val };
                return true;
            }
            if s.key == key {
                return false;
            }
            i = (i + 1) & self.mask;
        }
    }

    /// Remove a present key.
    #[inline]
    fn remove(&mut self, key: BlockHash) {
        if self.slots.is_empty() {
            debug_assert!(false, "removing from an empty table");
            return;
        }
        let mask = self.mask;
        let mut i = self.home(key);
        loop {
            let s = self.slots[i];
            if s.val == EMPTY {
                debug_assert!(false, "removing an absent key");
                return;
            }
            if s.key == key {
                break;
            }
            i = (i + 1) & mask;
        }
        // Backward shift: pull later members of the cluster into the hole when their home
        // slot does not lie cyclically in (hole, j].
        let mut j = i;
        loop {
            j = (j + 1) & mask;
            let s = self.slots[j];
            if s.val == EMPTY {
                break;
            }
            let h = self.home(s.key);
            if (j.wrapping_sub(h) & mask) >= (j.wrapping_sub(i) & mask) {
                self.slots[i] = s;
                i = j;
            }
        }
        self.slots[i] = EMPTY_SLOT;
    }

    /// Warm the home slot of `key` and, when the home slot ends its cache line, the next line
    /// (removal's backward shift always reads the next slot; probes continue there too).
    #[inline]
    fn prefetch(&self, key: BlockHash) {
        if self.slots.is_empty() {
            return;
        }
        let i = self.home(key);
        let p = self.slots.as_ptr().wrapping_add(i);
        prefetch(p);
        let next = self.slots.as_ptr().wrapping_add((i + 1) & self.mask);
        if (next as usize) >> 6 != (p as usize) >> 6 {
            prefetch(next);
        }
    }

    fn clear(&mut self) {
        self.slots.fill(EMPTY_SLOT);
    }
}

/// The pool's hash -> block map: [`Table`] for real hashes, or a grouped table when the
/// driver names blocks by grouped ids (the simulator: a run of blocks then shares one record).
#[derive(Clone, Debug)]
enum Map {
    Flat(Table),
    Grouped(GroupedTable),
}

macro_rules! both {
    ($self:expr, $t:ident => $e:expr) => {
        match $self {
            Map::Flat($t) => $e,
            Map::Grouped($t) => $e,
        }
    };
}

impl Map {
    #[inline]
    fn get(&self, key: BlockHash) -> Option<u32> {
        both!(self, t => t.get(key))
    }
    #[inline]
    fn insert_new(&mut self, key: BlockHash, val: u32) -> bool {
        both!(self, t => t.insert_new(key, val))
    }
    #[inline]
    fn remove(&mut self, key: BlockHash) {
        match self {
            Map::Flat(t) => t.remove(key),
            Map::Grouped(t) => {
                let _ = t.remove(key);
            }
        }
    }
    #[inline]
    fn prefetch(&self, key: BlockHash) {
        both!(self, t => t.prefetch(key))
    }
    fn clear(&mut self) {
        both!(self, t => t.clear())
    }
}

#[derive(Clone, Debug)]
pub(crate) struct BlockPool {
    entries: Vec<Entry>,
    /// Free queue (oldest first) with lazy deletion: an item is live iff its block is free and
    /// its stamp matches the item's sequence number.
    ring: VecDeque<u32>,
    /// Sequence number of `ring.front()`.
    head_seq: u64,
    free_len: u32,
    table: Map,
    /// Scratch: hashes evicted by one `alloc_n`.
    evicted: Vec<BlockHash>,
    /// Bumped whenever a prefix lookup's answer could change (a hash appears or disappears,
    /// a cached block enters or leaves the free queue), so callers can memoize lookups.
    epoch: u64,
}

impl BlockPool {
    /// A pool of `n` blocks (`n <= MAX_BLOCKS`, checked by the engine).
    pub fn new(n: u32) -> BlockPool {
        debug_assert!(n <= MAX_BLOCKS);
        BlockPool {
            entries: (0..n)
                .map(|b| Entry {
                    hash: 0,
                    rc: 0,
                    stamp: b,
                })
                .collect(),
            ring: (0..n).collect(),
            head_seq: 0,
            free_len: n,
            table: Map::Flat(Table::with_capacity_for(n)),
            evicted: Vec::new(),
            epoch: 0,
        }
    }

    /// Key the hash map by grouped ids ([`switchyard_kv::grouped`]); same contents.
    pub fn use_grouped_ids(&mut self) {
        if matches!(self.table, Map::Grouped(_)) {
            return;
        }
        let mut t = GroupedTable::new();
        for (b, e) in self.entries.iter().enumerate() {
            if e.rc & CACHED != 0 {
                t.insert_new(e.hash, b as u32);
            }
        }
        self.table = Map::Grouped(t);
    }

    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    pub fn total(&self) -> u32 {
        self.entries.len() as u32
    }

    /// Blocks that can be allocated now (free, including cached-but-unused ones).
    pub fn free(&self) -> u32 {
        self.free_len
    }

    #[inline]
    fn push_tail(&mut self, b: u32) {
        let seq = self.head_seq + self.ring.len() as u64;
        self.entries[b as usize].stamp = seq as u32;
        self.ring.push_back(b);
        self.free_len += 1;
        // Stale items accumulate when cached blocks are reused without pressure; bound the
        // ring so stamps stay unambiguous (ring length < 2^32) and memory stays O(blocks).
        if self.ring.len() > 2 * self.entries.len() + 64 {
            self.compact();
        }
    }

    /// Drop stale ring items, renumbering the live ones from the same head sequence.
    fn compact(&mut self) {
        let mut live = VecDeque::with_capacity(self.entries.len());
        for (seq, &b) in (self.head_seq..).zip(self.ring.iter()) {
            let e = &mut self.entries[b as usize];
            if e.rc & RC_MASK == 0 && e.stamp == seq as u32 {
                e.stamp = (self.head_seq + live.len() as u64) as u32;
                live.push_back(b);
            }
        }
        debug_assert_eq!(live.len(), self.free_len as usize);
        self.ring = live;
    }

    /// Leading blocks of `hashes` that are cached, and how many of those sit in the free
    /// queue (reusing them takes them out of it).
    pub fn lookup(&self, hashes: &[BlockHash]) -> (usize, u32) {
        let mut free_hits = 0;
        for (i, &h) in hashes.iter().enumerate() {
            match self.table.get(h) {
                Some(b) => {
                    if self.entries[b as usize].rc & RC_MASK == 0 {
                        free_hits += 1;
                    }
                }
                None => return (i, free_hits),
            }
        }
        (hashes.len(), free_hits)
    }

    /// Take a reference to the cached block with this hash (it must exist).
    pub fn acquire_cached(&mut self, h: BlockHash) -> u32 {
        let Some(b) = self.table.get(h) else {
            debug_assert!(false, "acquire_cached of an uncached hash");
            return 0;
        };
        let e = &mut self.entries[b as usize];
        if e.rc & RC_MASK == 0 {
            // Its ring item goes stale (skipped when popped).
            self.free_len -= 1;
            self.epoch += 1;
        }
        e.rc += 1;
        b
    }

    /// Pop the least recently freed block; evicts its hash (recorded in `events`).
    #[inline]
    pub fn alloc(&mut self, events: Option<&mut Vec<KvEvent>>) -> Option<u32> {
        if self.free_len == 0 {
            return None;
        }
        let b = self.pop_live();
        self.take(b, events);
        Some(b)
    }

    /// Allocate `n` blocks (`n <= free()`) into `out`, exactly as `n` calls of [`Self::alloc`].
    ///
    /// Two passes so that memory latency overlaps: pop the blocks (the ring is a sequential
    /// array, so their entries are prefetched well ahead) collecting the hashes they evict,
    /// then remove those from the table (slots known from a sequential array: prefetched
    /// ahead too). Only the table's contents matter to later operations, not the order of
    /// removals, so this is indistinguishable from one-by-one allocation.
    pub fn alloc_n(&mut self, n: u32, out: &mut Vec<u32>, events: Option<&mut Vec<KvEvent>>) {
        debug_assert!(n <= self.free_len);
        let n = n.min(self.free_len);
        out.reserve(n as usize);
        let mut evicted = std::mem::take(&mut self.evicted);
        evicted.clear();
        for _ in 0..n {
            if let Some(&f) = self.ring.get(AHEAD_ENTRY) {
                prefetch(self.entries.as_ptr().wrapping_add(f as usize));
            }
            let b = self.pop_live();
            let e = &mut self.entries[b as usize];
            if e.rc & CACHED != 0 {
                evicted.push(e.hash);
            }
            e.rc = 1;
            out.push(b);
        }
        for &h in evicted.iter().take(AHEAD_SLOT) {
            self.table.prefetch(h);
        }
        for k in 0..evicted.len() {
            if let Some(&h) = evicted.get(k + AHEAD_SLOT) {
                self.table.prefetch(h);
            }
            self.table.remove(evicted[k]);
        }
        self.epoch += evicted.len() as u64;
        if let Some(ev) = events
            && !evicted.is_empty()
        {
            match ev.last_mut() {
                Some(KvEvent::Removed { blocks }) => blocks.extend_from_slice(&evicted),
                _ => ev.push(KvEvent::Removed {
                    blocks: evicted.clone(),
                }),
            }
        }
        self.evicted = evicted;
    }

    /// Pop ring items until a live one (there is one: `free_len > 0`).
    #[inline]
    fn pop_live(&mut self) -> u32 {
        loop {
            let Some(b) = self.ring.pop_front() else {
                debug_assert!(false, "free_len > 0 with an empty ring");
                return 0;
            };
            let seq = self.head_seq;
            self.head_seq += 1;
            let e = &self.entries[b as usize];
            if e.rc & RC_MASK == 0 && e.stamp == seq as u32 {
                self.free_len -= 1;
                return b;
            }
        }
    }

    /// Mark a just-popped free block in use, evicting its cached hash.
    #[inline]
    fn take(&mut self, b: u32, events: Option<&mut Vec<KvEvent>>) {
        let e = &mut self.entries[b as usize];
        let cached = e.rc & CACHED != 0;
        e.rc = 1;
        if cached {
            let h = e.hash;
            self.table.remove(h);
            self.epoch += 1;
            if let Some(ev) = events {
                match ev.last_mut() {
                    Some(KvEvent::Removed { blocks }) => blocks.push(h),
                    _ => ev.push(KvEvent::Removed { blocks: vec![h] }),
                }
            }
        }
    }

    /// Drop one reference; at zero the block joins the free queue tail (still cached).
    #[inline]
    pub fn release(&mut self, b: u32) {
        let e = &mut self.entries[b as usize];
        debug_assert!(e.rc & RC_MASK > 0);
        e.rc -= 1;
        if e.rc & RC_MASK == 0 {
            if e.rc & CACHED != 0 {
                self.epoch += 1;
            }
            self.push_tail(b);
        }
    }

    /// Warm the table slot of a hash about to be registered or looked up.
    #[inline]
    pub fn prefetch_hash(&self, h: BlockHash) {
        self.table.prefetch(h);
    }

    /// Release every block of a sequence, last first (its tail is evicted first), as
    /// [`Self::release`] one by one.
    pub fn release_all_rev(&mut self, blocks: &[u32]) {
        for (k, &b) in blocks.iter().enumerate().rev() {
            if let Some(&ahead) = k.checked_sub(AHEAD_SLOT).and_then(|a| blocks.get(a)) {
                prefetch(self.entries.as_ptr().wrapping_add(ahead as usize));
            }
            self.release(b);
        }
    }

    /// Give block `b` (in use) the hash `h`. False when another block already holds `h`
    /// (the block then stays private, like vLLM's duplicate blocks).
    #[inline]
    pub fn register(&mut self, b: u32, h: BlockHash) -> bool {
        let e = &mut self.entries[b as usize];
        if e.rc & CACHED != 0 || !self.table.insert_new(h, b) {
            return false;
        }
        e.hash = h;
        e.rc |= CACHED;
        self.epoch += 1;
        true
    }

    /// Forget every cached hash (blocks in use keep their data but become private).
    pub fn clear_cache(&mut self) {
        self.table.clear();
        for e in &mut self.entries {
            e.rc &= RC_MASK;
        }
        self.epoch += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    #[test]
    fn lru_eviction_order_and_events() {
        let mut p = BlockPool::new(3);
        let mut ev = Vec::new();
        let a = p.alloc(Some(&mut ev)).unwrap();
        let b = p.alloc(Some(&mut ev)).unwrap();
        assert!(p.register(a, 10));
        assert!(p.register(b, 11));
        assert!(!p.register(b, 10), "duplicate hash stays private");
        assert_eq!(p.free(), 1);
        // Free b first, then a: b is least recently freed after the never-used block 2.
        p.release(b);
        p.release(a);
        assert_eq!(p.free(), 3);
        assert_eq!(p.lookup(&[10, 11, 12]), (2, 2));
        assert_eq!(p.alloc(Some(&mut ev)).unwrap(), 2);
        assert!(ev.is_empty());
        assert_eq!(p.alloc(Some(&mut ev)).unwrap(), b);
        assert_eq!(ev, vec![KvEvent::Removed { blocks: vec![11] }]);
        // Hash 10 still cached: reuse takes it out of the free queue.
        assert_eq!(p.lookup(&[10, 11]), (1, 1));
        assert_eq!(p.acquire_cached(10), a);
        assert_eq!(p.free(), 0);
        assert!(p.alloc(None).is_none());
    }

    #[test]
    fn reuse_without_pressure_compacts_the_ring() {
        // Block 0 cached and reused 1,000 times while nothing is allocated: each reuse leaves a
        // stale ring item; the ring stays bounded and the LRU order is kept.
        let mut p = BlockPool::new(4);
        let a = p.alloc(None).unwrap();
        assert!(p.register(a, 7));
        p.release(a);
        for _ in 0..1000 {
            assert_eq!(p.acquire_cached(7), a);
            p.release(a);
            assert!(p.ring.len() <= 2 * 4 + 64);
        }
        assert_eq!(p.free(), 4);
        // Never-used blocks 1, 2, 3 first, then the cached one (evicting its hash).
        let mut ev = Vec::new();
        let mut out = Vec::new();
        p.alloc_n(4, &mut out, Some(&mut ev));
        assert_eq!(out, vec![1, 2, 3, a]);
        assert_eq!(ev, vec![KvEvent::Removed { blocks: vec![7] }]);
        assert_eq!(p.free(), 0);
    }

    #[test]
    fn table_backward_shift_keeps_clusters_reachable() {
        // 16 slots; keys chosen to collide and wrap around the end of the table.
        let mut t = Table::with_capacity_for(8);
        let mut keys: Vec<u64> = Vec::new();
        let mut k = 0u64;
        while keys.len() < 8 {
            k += 1;
            if t.home(k) >= 13 || t.home(k) == 0 {
                keys.push(k);
            }
        }
        for (v, &k) in keys.iter().enumerate() {
            assert!(t.insert_new(k, v as u32));
            assert!(!t.insert_new(k, 99));
        }
        for r in 0..keys.len() {
            t.remove(keys[r]);
            assert_eq!(t.get(keys[r]), None);
            for (v, &k) in keys.iter().enumerate().skip(r + 1) {
                assert_eq!(t.get(k), Some(v as u32), "key {k} after removing {r}");
            }
        }
        assert!(t.slots.iter().all(|s| s.val == EMPTY));
    }

    /// The previous implementation (doubly linked free list + hashbrown map), kept as the
    /// model the fast pool must match operation by operation.
    struct Model {
        refcnt: Vec<u32>,
        hash: Vec<Option<BlockHash>>,
        queue: VecDeque<u32>,
        map: std::collections::HashMap<BlockHash, u32>,
    }

    impl Model {
        fn new(n: u32) -> Model {
            Model {
                refcnt: vec![0; n as usize],
                hash: vec![None; n as usize],
                queue: (0..n).collect(),
                map: Default::default(),
            }
        }
        fn lookup(&self, hashes: &[BlockHash]) -> (usize, u32) {
            let mut free_hits = 0;
            for (i, h) in hashes.iter().enumerate() {
                match self.map.get(h) {
                    Some(&b) => free_hits += (self.refcnt[b as usize] == 0) as u32,
                    None => return (i, free_hits),
                }
            }
            (hashes.len(), free_hits)
        }
        fn acquire_cached(&mut self, h: BlockHash) -> u32 {
            let b = self.map[&h];
            if self.refcnt[b as usize] == 0 {
                self.queue.retain(|&x| x != b);
            }
            self.refcnt[b as usize] += 1;
            b
        }
        fn alloc(&mut self, ev: &mut Vec<KvEvent>) -> Option<u32> {
            let b = self.queue.pop_front()?;
            self.refcnt[b as usize] = 1;
            if let Some(h) = self.hash[b as usize].take() {
                self.map.remove(&h);
                match ev.last_mut() {
                    Some(KvEvent::Removed { blocks }) => blocks.push(h),
                    _ => ev.push(KvEvent::Removed { blocks: vec![h] }),
                }
            }
            Some(b)
        }
        fn release(&mut self, b: u32) {
            self.refcnt[b as usize] -= 1;
            if self.refcnt[b as usize] == 0 {
                self.queue.push_back(b);
            }
        }
        fn register(&mut self, b: u32, h: BlockHash) -> bool {
            if self.map.contains_key(&h) || self.hash[b as usize].is_some() {
                return false;
            }
            self.map.insert(h, b);
            self.hash[b as usize] = Some(h);
            true
        }
    }

    #[test]
    fn matches_the_linked_list_model_under_random_operations() {
        for seed in 0..20u64 {
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            let n = rng.random_range(1..200u32);
            let mut p = BlockPool::new(n);
            let mut m = Model::new(n);
            let (mut ev_p, mut ev_m) = (Vec::new(), Vec::new());
            // Blocks held (with multiplicity), as a request would.
            let mut held: Vec<u32> = Vec::new();
            // Small key space so hashes collide, get reused, and cluster in the table.
            let key = |rng: &mut ChaCha8Rng| -> u64 {
                match rng.random_range(0..3) {
                    0 => rng.random_range(0..64u64),
                    1 => rng.random_range(0..64u64) << 40,
                    _ => rng.random::<u64>() | u64::MAX << 60,
                }
            };
            for step in 0..4000 {
                match rng.random_range(0..10) {
                    0..=2 => {
                        let k = rng.random_range(0..8u32);
                        if rng.random_bool(0.5) && k <= p.free() {
                            let mut out = Vec::new();
                            p.alloc_n(k, &mut out, Some(&mut ev_p));
                            for &b in &out {
                                assert_eq!(m.alloc(&mut ev_m), Some(b), "seed {seed} step {step}");
                            }
                            held.extend(out);
                        } else {
                            let a = p.alloc(Some(&mut ev_p));
                            assert_eq!(a, m.alloc(&mut ev_m), "seed {seed} step {step}");
                            held.extend(a);
                        }
                    }
                    3..=5 if !held.is_empty() => {
                        let i = rng.random_range(0..held.len());
                        let b = held.swap_remove(i);
                        p.release(b);
                        m.release(b);
                    }
                    6 | 7 if !held.is_empty() => {
                        let b = held[rng.random_range(0..held.len())];
                        let h = key(&mut rng);
                        assert_eq!(p.register(b, h), m.register(b, h));
                    }
                    8 => {
                        let hs: Vec<u64> =
                            (0..rng.random_range(0..6)).map(|_| key(&mut rng)).collect();
                        let before = p.epoch();
                        assert_eq!(p.lookup(&hs), m.lookup(&hs));
                        assert_eq!(p.epoch(), before);
                        if let Some(&h) = hs.first()
                            && m.map.contains_key(&h)
                        {
                            let b = p.acquire_cached(h);
                            assert_eq!(b, m.acquire_cached(h));
                            held.push(b);
                        }
                    }
                    _ => {
                        if rng.random_bool(0.01) {
                            p.clear_cache();
                            m.map.clear();
                            m.hash.fill(None);
                        }
                    }
                }
                assert_eq!(p.free() as usize, m.queue.len());
                assert_eq!(ev_p, ev_m);
                assert!(p.ring.len() <= 2 * n as usize + 65);
            }
        }
    }
}
