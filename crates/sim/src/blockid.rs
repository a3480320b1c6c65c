//! Dense block identities for the simulator.
//!
//! The engines and the router only ever compare block hashes for equality, and a trace
//! request's engine-block hash is a function of (the trace ids of its prefix, its offset in its
//! trace block). So instead of hashing every 16-token block (xxh3 per block, then random
//! memory access in every table keyed by it), the simulator interns each trace-level chain
//! node — (parent node, trace id) — once, and names engine block `s` of node `c` by
//! `c << SUB_BITS | s`. Equal ids ⇔ equal hashes (up to 64-bit collisions of the real ones),
//! so every decision is the one real hashes give. The blocks of one trace block get adjacent
//! ids, which the pool's and the index's tables keep adjacent in memory (see their `home`).
//!
//! The live system keeps the real hashes: this is a simulator-only representation.

use rustc_hash::FxHashMap;
use switchyard_kv::{BlockHash, TraceBlockMapper};

/// Low bits of an id: the engine block's index inside its trace block. Five bits cover the
/// usual 512-token trace blocks of 16-token engine blocks; larger ratios take more bits.
const MIN_SUB_BITS: u32 = switchyard_kv::grouped::GROUP_BITS;

pub(crate) struct BlockIds {
    mapper: TraceBlockMapper,
    /// Engine blocks per trace block when that divides exactly (else the real hashes are used).
    per: Option<u64>,
    sub_bits: u32,
    nodes: FxHashMap<(u64, u64), u64>,
}

impl BlockIds {
    /// Grouped ids when `grouped` and the trace block is a whole number of engine blocks;
    /// otherwise the real hashes.
    pub(crate) fn new(mapper: TraceBlockMapper, trace_block: u32, grouped: bool) -> BlockIds {
        let b = mapper.engine_block_size() as u64;
        let tb = trace_block as u64;
        let per = (grouped && tb.is_multiple_of(b) && tb >= b).then_some(tb / b);
        let sub_bits = per.map_or(MIN_SUB_BITS, |p| {
            (64 - (p - 1).leading_zeros()).max(MIN_SUB_BITS)
        });
        BlockIds {
            mapper,
            per,
            sub_bits,
            nodes: FxHashMap::default(),
        }
    }

    /// Whether ids are grouped ([`switchyard_kv::grouped`]): the blocks of a trace block
    /// share everything but their low bits.
    pub(crate) fn grouped(&self) -> bool {
        self.per.is_some()
    }

    /// Clears `out` and fills it with the request's engine block ids (as many as
    /// [`TraceBlockMapper::map_into`] gives hashes).
    pub(crate) fn map_into(
        &mut self,
        hash_ids: &[u64],
        input_length: u32,
        out: &mut Vec<BlockHash>,
    ) {
        let Some(per) = self.per else {
            self.mapper.map_into(hash_ids, input_length, out);
            return;
        };
        out.clear();
        let n = self.mapper.num_blocks(hash_ids.len(), input_length);
        out.reserve(n);
        // Node 0 is the root; interned nodes are 1, 2, ...
        let mut node = 0u64;
        let mut left = n as u64;
        for &id in hash_ids {
            if left == 0 {
                break;
            }
            let next = self.nodes.len() as u64 + 1;
            node = *self.nodes.entry((node, id)).or_insert(next);
            let take = per.min(left);
            let base = node << self.sub_bits;
            out.extend((0..take).map(|s| base | s));
            left -= take;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Ids are equal exactly where the real hashes are.
    #[test]
    fn ids_mirror_hash_equality() {
        let reqs: [(&[u64], u32); 5] = [
            (&[1, 2, 3], 1536),
            (&[1, 2, 4], 1400),
            (&[1, 2, 3], 1300),
            (&[5, 2, 3], 1536),
            (&[1], 100),
        ];
        for (bs, tb) in [(16u32, 512u32), (32, 512), (8, 512), (16, 100)] {
            let mapper = TraceBlockMapper::with_trace_block_size(bs, tb).unwrap();
            let mut ids = BlockIds::new(mapper, tb, true);
            let mut pairs: Vec<(BlockHash, BlockHash)> = Vec::new();
            let mut out = Vec::new();
            for (h, len) in reqs {
                let real = mapper.map(h, len);
                ids.map_into(h, len, &mut out);
                assert_eq!(out.len(), real.len());
                pairs.extend(real.iter().copied().zip(out.iter().copied()));
            }
            for &(a, x) in &pairs {
                for &(b, y) in &pairs {
                    assert_eq!(a == b, x == y, "bs {bs} tb {tb}");
                }
            }
        }
    }
}
