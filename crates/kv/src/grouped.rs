//! Block-hash maps for two kinds of keys.
//!
//! Real block hashes are uniformly random: a flat open-addressing table ([`BlockTable`]) costs
//! one cache line per key and is the right choice. A simulator can instead name blocks by
//! *grouped ids* — `group << GROUP_BITS | i`, the `i`-th block of a run that always appears
//! together (the engine blocks of one trace block, see `switchyard-sim`). [`GroupedTable`]
//! keeps a group's values in one 128-byte record found by one probe of a flat table, so the
//! dozens of operations a run of blocks takes touch two cache lines instead of one miss per
//! block. [`BlockMap`] picks one layout per map; both are exact maps.

use std::cell::Cell;

use crate::BlockHash;
use crate::table::BlockTable;

/// Low bits of a grouped id: the block's index in its group.
pub const GROUP_BITS: u32 = 5;
const GROUP: usize = 1 << GROUP_BITS;
const EMPTY: u32 = u32::MAX;

#[derive(Clone, Copy, Debug)]
#[repr(C, align(64))]
struct Group {
    vals: [u32; GROUP],
}

const EMPTY_GROUP: Group = Group {
    vals: [EMPTY; GROUP],
};

/// Map from grouped ids to `u32` values (never `u32::MAX`). See the module docs.
#[derive(Clone, Debug)]
pub struct GroupedTable {
    /// Group key (`id >> GROUP_BITS`) -> index into `groups`.
    outer: BlockTable,
    groups: Vec<Group>,
    /// Keys present per group (parallel to `groups`).
    used: Vec<u8>,
    free: Vec<u32>,
    len: usize,
    /// The last group looked up, (group key, index): consecutive operations usually touch
    /// the same group, and this skips the outer probe for them. Reset when a group is freed.
    last: Cell<(BlockHash, u32)>,
}

const NO_GROUP: (BlockHash, u32) = (BlockHash::MAX, u32::MAX);

impl Default for GroupedTable {
    fn default() -> Self {
        Self {
            outer: BlockTable::new(),
            groups: Vec::new(),
            used: Vec::new(),
            free: Vec::new(),
            len: 0,
            last: Cell::new(NO_GROUP),
        }
    }
}

impl GroupedTable {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn memory_bytes(&self) -> usize {
        self.outer.memory_bytes()
            + self.groups.capacity() * std::mem::size_of::<Group>()
            + self.used.capacity()
            + self.free.capacity() * 4
    }

    #[inline(always)]
    fn split(key: BlockHash) -> (BlockHash, usize) {
        (key >> GROUP_BITS, (key as usize) & (GROUP - 1))
    }

    #[inline]
    pub fn prefetch(&self, key: BlockHash) {
        self.outer.prefetch(key >> GROUP_BITS);
    }

    #[inline]
    fn find(&self, hi: BlockHash) -> Option<u32> {
        let (k, g) = self.last.get();
        if k == hi {
            return Some(g);
        }
        let g = self.outer.get(hi)?;
        self.last.set((hi, g));
        Some(g)
    }

    #[inline]
    pub fn get(&self, key: BlockHash) -> Option<u32> {
        let (hi, lo) = Self::split(key);
        let g = self.find(hi)?;
        let v = self.groups[g as usize].vals[lo];
        (v != EMPTY).then_some(v)
    }

    /// The value for `key`, or insert `make()`'s. Returns (value, inserted).
    #[inline]
    pub fn get_or_insert_with(
        &mut self,
        key: BlockHash,
        make: impl FnOnce() -> u32,
    ) -> (u32, bool) {
        let (hi, lo) = Self::split(key);
        let g = self.group_or_insert(hi);
        let slot = &mut self.groups[g].vals[lo];
        if *slot != EMPTY {
            return (*slot, false);
        }
        let v = make();
        debug_assert!(v != EMPTY);
        *slot = v;
        self.used[g] += 1;
        self.len += 1;
        (v, true)
    }

    /// Insert unless the key is present. True when inserted.
    #[inline]
    pub fn insert_new(&mut self, key: BlockHash, val: u32) -> bool {
        self.get_or_insert_with(key, || val).1
    }

    /// Map `key` to its *position* `group index << GROUP_BITS | low bits` (below
    /// [`Self::positions`]) unless present. Returns (position, inserted). A caller can keep
    /// per-key records in an array indexed by position: a group's records are then adjacent,
    /// and a position is free again once its key is removed.
    #[inline]
    pub fn insert_pos(&mut self, key: BlockHash) -> (u32, bool) {
        let (hi, lo) = Self::split(key);
        let g = self.group_or_insert(hi);
        let pos = ((g << GROUP_BITS) | lo) as u32;
        self.get_or_insert_with(key, || pos)
    }

    /// Upper bound of the positions [`Self::insert_pos`] has handed out.
    pub fn positions(&self) -> usize {
        self.groups.len() << GROUP_BITS
    }

    fn group_or_insert(&mut self, hi: BlockHash) -> usize {
        if let Some(g) = self.find(hi) {
            return g as usize;
        }
        let (groups, used, free) = (&mut self.groups, &mut self.used, &mut self.free);
        let (g, _) = self.outer.get_or_insert_with(hi, || match free.pop() {
            Some(g) => g,
            None => {
                groups.push(EMPTY_GROUP);
                used.push(0);
                (groups.len() - 1) as u32
            }
        });
        self.last.set((hi, g));
        g as usize
    }

    pub fn remove(&mut self, key: BlockHash) -> Option<u32> {
        let (hi, lo) = Self::split(key);
        let g = self.find(hi)? as usize;
        let v = std::mem::replace(&mut self.groups[g].vals[lo], EMPTY);
        if v == EMPTY {
            return None;
        }
        self.len -= 1;
        self.used[g] -= 1;
        if self.used[g] == 0 {
            self.outer.remove(hi);
            self.free.push(g as u32);
            self.last.set(NO_GROUP);
        }
        Some(v)
    }

    pub fn clear(&mut self) {
        *self = Self::default();
    }
}

/// A block-hash map in the layout that suits its keys: [`BlockMap::Flat`] for real hashes,
/// [`BlockMap::Grouped`] for grouped ids (see the module docs).
#[derive(Clone, Debug)]
pub enum BlockMap {
    Flat(BlockTable),
    Grouped(GroupedTable),
}

impl Default for BlockMap {
    fn default() -> Self {
        BlockMap::Flat(BlockTable::new())
    }
}

macro_rules! both {
    ($self:expr, $t:ident => $e:expr) => {
        match $self {
            BlockMap::Flat($t) => $e,
            BlockMap::Grouped($t) => $e,
        }
    };
}

impl BlockMap {
    /// An empty map for random hashes with room for `n` keys.
    pub fn flat(n: usize) -> Self {
        BlockMap::Flat(BlockTable::with_capacity(n))
    }

    /// An empty map for grouped ids.
    pub fn grouped() -> Self {
        BlockMap::Grouped(GroupedTable::new())
    }

    pub fn is_grouped(&self) -> bool {
        matches!(self, BlockMap::Grouped(_))
    }

    #[inline]
    pub fn len(&self) -> usize {
        both!(self, t => t.len())
    }

    #[inline]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn memory_bytes(&self) -> usize {
        both!(self, t => t.memory_bytes())
    }

    /// Room for `n` more keys (flat layout; a grouped map grows per group).
    pub fn reserve(&mut self, n: usize) {
        if let BlockMap::Flat(t) = self {
            t.reserve(n);
        }
    }

    #[inline]
    pub fn prefetch(&self, key: BlockHash) {
        both!(self, t => t.prefetch(key))
    }

    #[inline]
    pub fn get(&self, key: BlockHash) -> Option<u32> {
        both!(self, t => t.get(key))
    }

    #[inline]
    pub fn get_or_insert_with(
        &mut self,
        key: BlockHash,
        make: impl FnOnce() -> u32,
    ) -> (u32, bool) {
        both!(self, t => t.get_or_insert_with(key, make))
    }

    #[inline]
    pub fn insert_new(&mut self, key: BlockHash, val: u32) -> bool {
        self.get_or_insert_with(key, || val).1
    }

    #[inline]
    pub fn remove(&mut self, key: BlockHash) -> Option<u32> {
        both!(self, t => t.remove(key))
    }

    /// Empty the map, keeping its layout.
    pub fn clear(&mut self) {
        match self {
            BlockMap::Flat(t) => t.clear(),
            BlockMap::Grouped(t) => t.clear(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn both_layouts_behave_like_a_map_under_churn() {
        for mut t in [BlockMap::flat(0), BlockMap::grouped()] {
            let mut m: HashMap<u64, u32> = HashMap::new();
            let mut x = 1u64;
            for step in 0..100_000u32 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                // Few groups, several keys each, so groups fill, empty and get reused.
                let key = ((x % 97) << GROUP_BITS) | ((x >> 32) % 7);
                match x % 5 {
                    0..=2 => {
                        let (v, ins) = t.get_or_insert_with(key, || step);
                        let e = m.entry(key).or_insert(step);
                        assert_eq!((v, ins), (*e, *e == step));
                    }
                    _ => assert_eq!(t.remove(key), m.remove(&key)),
                }
                assert_eq!(t.len(), m.len());
            }
            for (k, v) in &m {
                assert_eq!(t.get(*k), Some(*v));
            }
            t.clear();
            assert!(t.is_empty());
            assert_eq!(t.get(m.keys().next().copied().unwrap_or(0)), None);
        }
    }
}
