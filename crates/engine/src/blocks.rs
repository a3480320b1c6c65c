//! Paged KV block pool with prefix caching (vLLM-style).
//!
//! Every block sits either in use (refcount > 0) or in one free queue ordered by release time.
//! Freed blocks keep their hash, so a later request can reuse them until allocation pops them
//! from the queue head (LRU eviction, which emits `Removed`). All operations are O(1) except
//! prefix lookup (O(prefix blocks)).

use rustc_hash::FxHashMap;
use switchyard_kv::{BlockHash, KvEvent};

const NIL: u32 = u32::MAX;

#[derive(Clone, Debug)]
pub(crate) struct BlockPool {
    refcnt: Vec<u32>,
    hash: Vec<Option<BlockHash>>,
    prev: Vec<u32>,
    next: Vec<u32>,
    head: u32,
    tail: u32,
    free_len: u32,
    map: FxHashMap<BlockHash, u32>,
    /// Bumped whenever a prefix lookup's answer could change (a hash appears or disappears,
    /// a cached block enters or leaves the free queue), so callers can memoize lookups.
    epoch: u64,
}

impl BlockPool {
    pub fn new(n: u32) -> BlockPool {
        let mut p = BlockPool {
            refcnt: vec![0; n as usize],
            hash: vec![None; n as usize],
            prev: vec![NIL; n as usize],
            next: vec![NIL; n as usize],
            head: NIL,
            tail: NIL,
            free_len: 0,
            map: FxHashMap::default(),
            epoch: 0,
        };
        for b in 0..n {
            p.push_tail(b);
        }
        p
    }

    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    pub fn total(&self) -> u32 {
        self.refcnt.len() as u32
    }

    /// Blocks that can be allocated now (free, including cached-but-unused ones).
    pub fn free(&self) -> u32 {
        self.free_len
    }

    fn push_tail(&mut self, b: u32) {
        let i = b as usize;
        self.prev[i] = self.tail;
        self.next[i] = NIL;
        if self.tail == NIL {
            self.head = b;
        } else {
            self.next[self.tail as usize] = b;
        }
        self.tail = b;
        self.free_len += 1;
    }

    fn unlink(&mut self, b: u32) {
        let i = b as usize;
        let (p, n) = (self.prev[i], self.next[i]);
        if p == NIL {
            self.head = n;
        } else {
            self.next[p as usize] = n;
        }
        if n == NIL {
            self.tail = p;
        } else {
            self.prev[n as usize] = p;
        }
        self.prev[i] = NIL;
        self.next[i] = NIL;
        self.free_len -= 1;
    }

    /// Leading blocks of `hashes` that are cached, and how many of those sit in the free
    /// queue (reusing them takes them out of it).
    pub fn lookup(&self, hashes: &[BlockHash]) -> (usize, u32) {
        let mut free_hits = 0;
        for (i, h) in hashes.iter().enumerate() {
            match self.map.get(h) {
                Some(&b) => {
                    if self.refcnt[b as usize] == 0 {
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
        let b = self.map[&h];
        if self.refcnt[b as usize] == 0 {
            self.unlink(b);
            self.epoch += 1;
        }
        self.refcnt[b as usize] += 1;
        b
    }

    /// Pop the least recently freed block; evicts its hash (recorded in `events`).
    pub fn alloc(&mut self, events: Option<&mut Vec<KvEvent>>) -> Option<u32> {
        let b = self.head;
        if b == NIL {
            return None;
        }
        self.unlink(b);
        self.refcnt[b as usize] = 1;
        if let Some(h) = self.hash[b as usize].take() {
            self.map.remove(&h);
            self.epoch += 1;
            if let Some(ev) = events {
                match ev.last_mut() {
                    Some(KvEvent::Removed { blocks }) => blocks.push(h),
                    _ => ev.push(KvEvent::Removed { blocks: vec![h] }),
                }
            }
        }
        Some(b)
    }

    /// Drop one reference; at zero the block joins the free queue tail (still cached).
    pub fn release(&mut self, b: u32) {
        let i = b as usize;
        debug_assert!(self.refcnt[i] > 0);
        self.refcnt[i] -= 1;
        if self.refcnt[i] == 0 {
            self.push_tail(b);
            if self.hash[i].is_some() {
                self.epoch += 1;
            }
        }
    }

    /// Give block `b` (in use) the hash `h`. False when another block already holds `h`
    /// (the block then stays private, like vLLM's duplicate blocks).
    pub fn register(&mut self, b: u32, h: BlockHash) -> bool {
        if self.map.contains_key(&h) || self.hash[b as usize].is_some() {
            return false;
        }
        self.map.insert(h, b);
        self.hash[b as usize] = Some(h);
        self.epoch += 1;
        true
    }

    /// Forget every cached hash (blocks in use keep their data but become private).
    pub fn clear_cache(&mut self) {
        self.map.clear();
        for h in &mut self.hash {
            *h = None;
        }
        self.epoch += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
