//! The block-hash -> node-slot table of the prefix index: open addressing with linear probing
//! and backward-shift deletion (no tombstones), 16-byte slots.
//!
//! Why not `HashMap`: ingestion into a ~1M-block index is bound by cache misses, one per block
//! looked up. With a flat table the slot a key lands in is known from the key alone, so the
//! index can prefetch the slots of the next blocks of an event while it works on the current
//! one, overlapping the misses. Keys are already hash values; a Fibonacci multiply spreads any
//! remaining structure (engine-provided hashes need not be uniform).

use crate::BlockHash;

const EMPTY: u32 = u32::MAX;

#[derive(Clone, Copy, Debug)]
struct Slot {
    key: BlockHash,
    val: u32,
}

const FREE: Slot = Slot { key: 0, val: EMPTY };

/// Map from block hashes to `u32` values (never `u32::MAX`).
#[derive(Clone, Debug)]
pub struct BlockTable {
    slots: Vec<Slot>,
    shift: u32,
    len: usize,
}

impl Default for BlockTable {
    fn default() -> Self {
        Self::new()
    }
}

impl BlockTable {
    pub fn new() -> Self {
        Self::with_capacity(0)
    }

    /// Room for `n` keys before growing (load factor ≤ 5/8).
    pub fn with_capacity(n: usize) -> Self {
        let want = (n * 8 / 5 + 1).next_power_of_two().max(16);
        Self {
            slots: vec![FREE; want],
            shift: 64 - want.trailing_zeros(),
            len: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Remove every key, keeping the capacity.
    pub fn clear(&mut self) {
        self.slots.fill(FREE);
        self.len = 0;
    }

    pub fn reserve(&mut self, additional: usize) {
        let need = self.len + additional;
        if need * 8 > self.slots.len() * 5 {
            self.rehash((need * 8 / 5 + 1).next_power_of_two());
        }
    }

    pub fn memory_bytes(&self) -> usize {
        self.slots.capacity() * std::mem::size_of::<Slot>()
    }

    #[inline(always)]
    fn home(&self, key: BlockHash) -> usize {
        (key.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> self.shift) as usize
    }

    #[inline(always)]
    fn mask(&self) -> usize {
        self.slots.len() - 1
    }

    /// Hint the CPU to fetch `key`'s home slot.
    #[inline(always)]
    pub fn prefetch(&self, key: BlockHash) {
        #[cfg(target_arch = "x86_64")]
        {
            let p = self.slots.as_ptr().wrapping_add(self.home(key));
            // SAFETY: a prefetch is a hint; it never faults and reads nothing observable. The
            // address is inside the slot array (home() < len).
            unsafe {
                std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(p.cast());
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = key;
    }

    #[inline]
    pub fn get(&self, key: BlockHash) -> Option<u32> {
        let m = self.mask();
        let mut i = self.home(key);
        loop {
            let s = self.slots[i];
            if s.val == EMPTY {
                return None;
            }
            if s.key == key {
                return Some(s.val);
            }
            i = (i + 1) & m;
        }
    }

    /// The value for `key`, or insert `make()`'s. Returns (value, inserted).
    #[inline]
    pub fn get_or_insert_with(
        &mut self,
        key: BlockHash,
        make: impl FnOnce() -> u32,
    ) -> (u32, bool) {
        if (self.len + 1) * 8 > self.slots.len() * 5 {
            self.rehash(self.slots.len() * 2);
        }
        let m = self.mask();
        let mut i = self.home(key);
        loop {
            let s = self.slots[i];
            if s.val == EMPTY {
                let v = make();
                self.slots[i] = Slot { key, val: v };
                self.len += 1;
                return (v, true);
            }
            if s.key == key {
                return (s.val, false);
            }
            i = (i + 1) & m;
        }
    }

    /// Remove `key`; backward-shift the cluster behind it so lookups never need tombstones.
    pub fn remove(&mut self, key: BlockHash) -> Option<u32> {
        let m = self.mask();
        let mut i = self.home(key);
        loop {
            let s = self.slots[i];
            if s.val == EMPTY {
                return None;
            }
            if s.key == key {
                break;
            }
            i = (i + 1) & m;
        }
        let val = self.slots[i].val;
        let mut hole = i;
        let mut j = (i + 1) & m;
        loop {
            let s = self.slots[j];
            if s.val == EMPTY {
                break;
            }
            // Move s into the hole if its home is not in (hole, j] (cyclically).
            let h = self.home(s.key);
            let dist_home = j.wrapping_sub(h) & m;
            let dist_hole = j.wrapping_sub(hole) & m;
            if dist_home >= dist_hole {
                self.slots[hole] = s;
                hole = j;
            }
            j = (j + 1) & m;
        }
        self.slots[hole] = FREE;
        self.len -= 1;
        Some(val)
    }

    fn rehash(&mut self, new_len: usize) {
        let new_len = new_len.max(16);
        let old = std::mem::replace(&mut self.slots, vec![FREE; new_len]);
        self.shift = 64 - new_len.trailing_zeros();
        let m = self.mask();
        for s in old.into_iter().filter(|s| s.val != EMPTY) {
            let mut i = self.home(s.key);
            while self.slots[i].val != EMPTY {
                i = (i + 1) & m;
            }
            self.slots[i] = s;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn behaves_like_a_map_under_churn() {
        let mut t = BlockTable::new();
        let mut m: HashMap<u64, u32> = HashMap::new();
        let mut x = 1u64;
        for step in 0..200_000u32 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            // Small key space (plus clustered keys) so inserts, hits and removals all happen.
            let key = if step % 3 == 0 {
                x % 512
            } else {
                (x % 4096) << 52
            };
            if x % 5 < 3 {
                let (v, ins) = t.get_or_insert_with(key, || step);
                let e = m.entry(key).or_insert(step);
                assert_eq!((v, ins), (*e, *e == step));
            } else {
                assert_eq!(t.remove(key), m.remove(&key));
            }
            assert_eq!(t.len(), m.len());
        }
        for (k, v) in &m {
            assert_eq!(t.get(*k), Some(*v));
        }
        assert_eq!(t.get(u64::MAX), m.get(&u64::MAX).copied());
    }
}
