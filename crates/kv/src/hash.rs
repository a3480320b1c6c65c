//! Chained block hashing.
//!
//! A block's hash covers its tokens *and* its parent's hash, so two equal hashes name two equal
//! prefixes. That single property is what makes the prefix index cheap: a block hash is a key
//! for a whole prefix, not just for 16 tokens.
//!
//! Construction (two steps, so the expensive one is not serialised along the chain):
//! 1. local hash: XXH3-64 (seed 0) over the little-endian bytes of the block's `u32` token ids.
//!    Blocks are independent here, so the CPU overlaps several of them.
//! 2. chain: `h[i] = fold_mul(h[i-1] ^ K1, local[i] ^ K2)` (128-bit multiply, high ^ low half;
//!    the wyhash mixing step), with `h[-1]` = the root seed ([`HASH_SEED`] or derived from a salt,
//!    so the salt is folded into the first block and thereby into every block after it).
//!
//! Only step 2 sits on the dependency chain, at a few cycles per block: 2,048 blocks of 16 tokens
//! hash in well under the time one seeded XXH3 call per block would take.
//!
//! Partial trailing blocks are never hashed: engines don't cache them either.

use xxhash_rust::xxh3::{xxh3_64, xxh3_64_with_seed};

use crate::{BlockHash, KvError};

/// The fixed seed of the first block of every unsalted chain. Changing it changes every hash
/// the router computes; it is part of the router's identity, not a tuning knob.
pub const HASH_SEED: u64 = 1337;

/// vLLM's default KV block size in tokens.
pub const DEFAULT_BLOCK_SIZE: u32 = 16;

/// Tokens per `hash_ids` entry in Mooncake-format traces.
pub const TRACE_BLOCK_TOKENS: u32 = 512;

/// Seed of a chain's first block: [`HASH_SEED`], or derived from a salt (LoRA adapter name,
/// `cache_salt`, ...) so that different salts never share a single block. Empty salt = no salt.
pub fn root_seed(salt: &[u8]) -> u64 {
    if salt.is_empty() {
        HASH_SEED
    } else {
        // Mix through XXH3 so related salts ("a", "b") give unrelated chains.
        xxh3_64_with_seed(salt, HASH_SEED) ^ 0x9E37_79B9_7F4A_7C15
    }
}

/// Hashes token ids into chained block hashes. Cheap to copy; holds no buffers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockHasher {
    block_size: u32,
    root: u64,
}

impl BlockHasher {
    /// A hasher for `block_size`-token blocks with no salt.
    pub fn new(block_size: u32) -> Result<Self, KvError> {
        if block_size == 0 {
            return Err(KvError::ZeroBlockSize(block_size));
        }
        Ok(Self {
            block_size,
            root: HASH_SEED,
        })
    }

    /// The same hasher with `salt` folded into the first block (and therefore into every block
    /// of the chain). An empty salt means no salt.
    pub fn with_salt(self, salt: &[u8]) -> Self {
        Self {
            root: root_seed(salt),
            ..self
        }
    }

    /// Tokens per block.
    pub fn block_size(&self) -> u32 {
        self.block_size
    }

    /// Number of full blocks in `num_tokens` tokens (the number of hashes produced).
    pub fn num_blocks(&self, num_tokens: usize) -> usize {
        num_tokens / self.block_size as usize
    }

    /// Clears `out` and fills it with the chained hashes of every full block of `tokens`.
    pub fn hash_into(&self, tokens: &[u32], out: &mut Vec<BlockHash>) {
        out.clear();
        self.extend_into(None, tokens, out);
    }

    /// Appends the hashes of `tokens`' full blocks to `out`, continuing the chain after block
    /// `parent` (`None`: the tokens start a sequence). This is how an engine hashes newly
    /// completed blocks of a running sequence without rehashing the prompt.
    pub fn extend_into(&self, parent: Option<BlockHash>, tokens: &[u32], out: &mut Vec<BlockHash>) {
        let bs = self.block_size as usize;
        let n = tokens.len() / bs;
        out.reserve(n);
        let mut h = parent.unwrap_or(self.root);
        for block in tokens.chunks_exact(bs) {
            h = chain(h, local_hash(block));
            out.push(h);
        }
    }

    /// Convenience: the chained hashes of `tokens` in a new vector.
    pub fn hash(&self, tokens: &[u32]) -> Vec<BlockHash> {
        let mut out = Vec::new();
        self.hash_into(tokens, &mut out);
        out
    }
}

/// Step 2: fold a block's local hash into its parent's chained hash.
#[inline(always)]
pub fn chain(parent: u64, local: u64) -> u64 {
    let x = u128::from(parent ^ 0x9E37_79B9_7F4A_7C15) * u128::from(local ^ 0xD6E8_FEB8_6659_FD93);
    (x as u64) ^ ((x >> 64) as u64)
}

/// Step 1: XXH3-64 (default secret, seed 0: the fast path at every block size) of the tokens'
/// little-endian bytes.
#[inline]
pub fn local_hash(tokens: &[u32]) -> u64 {
    #[cfg(target_endian = "little")]
    {
        // SAFETY: `u8` has alignment 1 and every bit pattern is a valid `u8`; the byte slice
        // covers exactly the memory of `tokens` and lives no longer than the borrow. On a
        // little-endian target these are the tokens' little-endian bytes.
        let bytes = unsafe {
            std::slice::from_raw_parts(tokens.as_ptr().cast::<u8>(), std::mem::size_of_val(tokens))
        };
        xxh3_64(bytes)
    }
    #[cfg(not(target_endian = "little"))]
    {
        let bytes: Vec<u8> = tokens.iter().flat_map(|t| t.to_le_bytes()).collect();
        xxh3_64(&bytes)
    }
}

/// Maps Mooncake trace requests (`hash_ids`, one id per 512-token trace block, plus
/// `input_length`) onto engine-size chained block hashes, without materialising tokens.
///
/// Token `t` of a request is identified by `(hash_ids[t / 512], t % 512)`: equal ids mean equal
/// token content, and a partial last trace block is the prefix of the full block with the same
/// id. Engine block `j` covers tokens `[j·b, (j+1)·b)`; its local hash is XXH3 of (trace id,
/// token offset), chained exactly like token blocks (a block straddling trace blocks chains one
/// step per trace id it touches). Consequently equal trace-id prefixes give equal
/// engine-hash prefixes, and only full engine blocks are produced (`⌊input_length / b⌋`,
/// capped by the tokens the ids cover).
///
/// Cost: one 16-byte XXH3 per engine block, no allocation once `out` has grown.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TraceBlockMapper {
    engine_block: u32,
    trace_block: u32,
    root: u64,
}

impl TraceBlockMapper {
    /// Mapper for the standard 512-token trace blocks onto `engine_block_size`-token blocks.
    pub fn new(engine_block_size: u32) -> Result<Self, KvError> {
        Self::with_trace_block_size(engine_block_size, TRACE_BLOCK_TOKENS)
    }

    /// Mapper for traces whose ids stand for `trace_block_size` tokens each.
    pub fn with_trace_block_size(
        engine_block_size: u32,
        trace_block_size: u32,
    ) -> Result<Self, KvError> {
        if engine_block_size == 0 {
            return Err(KvError::ZeroBlockSize(engine_block_size));
        }
        if trace_block_size == 0 {
            return Err(KvError::ZeroBlockSize(trace_block_size));
        }
        Ok(Self {
            engine_block: engine_block_size,
            trace_block: trace_block_size,
            root: HASH_SEED,
        })
    }

    /// The same mapper with a salt folded into every chain (e.g. one per LoRA adapter).
    pub fn with_salt(self, salt: &[u8]) -> Self {
        Self {
            root: root_seed(salt),
            ..self
        }
    }

    /// Engine block size in tokens.
    pub fn engine_block_size(&self) -> u32 {
        self.engine_block
    }

    /// Number of engine blocks [`Self::map_into`] produces for this request.
    pub fn num_blocks(&self, num_hash_ids: usize, input_length: u32) -> usize {
        let covered = num_hash_ids as u64 * u64::from(self.trace_block);
        let tokens = u64::from(input_length).min(covered);
        (tokens / u64::from(self.engine_block)) as usize
    }

    /// Clears `out` and fills it with the request's engine block hashes.
    pub fn map_into(&self, hash_ids: &[u64], input_length: u32, out: &mut Vec<BlockHash>) {
        out.clear();
        let n = self.num_blocks(hash_ids.len(), input_length);
        if n == 0 {
            return;
        }
        out.reserve(n);
        let b = u64::from(self.engine_block);
        let tb = u64::from(self.trace_block);
        let mut h = self.root;
        if tb % b == 0 {
            // Fast path (the usual case: 16, 32, 64 ... divide 512): every engine block lies
            // inside one trace block.
            let per = (tb / b) as usize;
            let mut left = n;
            for &id in hash_ids {
                let take = per.min(left);
                for sub in 0..take {
                    h = chain(h, mix(id, sub as u64 * b));
                    out.push(h);
                }
                left -= take;
                if left == 0 {
                    break;
                }
            }
        } else {
            // General path: an engine block may straddle trace blocks; fold every id it touches.
            for j in 0..n as u64 {
                let start = j * b;
                let end = start + b; // exclusive
                let k0 = (start / tb) as usize;
                let k1 = ((end - 1) / tb) as usize;
                h = chain(h, mix(hash_ids[k0], start % tb));
                for &id in &hash_ids[k0 + 1..=k1] {
                    h = chain(h, mix(id, u64::MAX));
                }
                out.push(h);
            }
        }
    }

    /// Convenience: the request's engine block hashes in a new vector.
    pub fn map(&self, hash_ids: &[u64], input_length: u32) -> Vec<BlockHash> {
        let mut out = Vec::new();
        self.map_into(hash_ids, input_length, &mut out);
        out
    }
}

/// Local hash of one engine block of a trace request: (trace id, token offset in its block).
#[inline]
fn mix(id: u64, offset: u64) -> u64 {
    let mut buf = [0u8; 16];
    buf[..8].copy_from_slice(&id.to_le_bytes());
    buf[8..].copy_from_slice(&offset.to_le_bytes());
    xxh3_64(&buf)
}

/// Deterministic synthetic token ids for a trace request: token `t` is a function of
/// `(hash_ids[t / trace_block], t % trace_block)` only, so prompts built from equal id prefixes
/// share token prefixes (and therefore [`BlockHasher`] hash prefixes). Used when a trace is
/// replayed against a live engine that needs real token ids. Ids are below `vocab_size`
/// (at least 1). Clears `out` first; produces `min(input_length, ids × trace_block)` tokens.
pub fn synthetic_tokens(
    hash_ids: &[u64],
    input_length: u32,
    trace_block: u32,
    vocab_size: u32,
    out: &mut Vec<u32>,
) {
    out.clear();
    if trace_block == 0 {
        return;
    }
    let vocab = u64::from(vocab_size.max(1));
    let mut left = input_length as usize;
    for &id in hash_ids {
        let take = (trace_block as usize).min(left);
        let base = xxh3_64_with_seed(&id.to_le_bytes(), HASH_SEED);
        for off in 0..take as u64 {
            // splitmix64 finaliser over (id-hash, offset): cheap and well spread.
            let mut z = base.wrapping_add(off.wrapping_mul(0x9E37_79B9_7F4A_7C15));
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            out.push((z % vocab) as u32);
        }
        left -= take;
        if left == 0 {
            break;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_block_size_is_an_error() {
        assert_eq!(BlockHasher::new(0), Err(KvError::ZeroBlockSize(0)));
        assert!(TraceBlockMapper::new(0).is_err());
        assert!(TraceBlockMapper::with_trace_block_size(16, 0).is_err());
    }

    #[test]
    fn first_block_is_xxh3_of_le_bytes_with_fixed_seed() {
        let h = BlockHasher::new(2).unwrap();
        let got = h.hash(&[1, 2, 3, 4, 5]);
        // Hand-built expectation: local = XXH3(LE bytes), chained from the root seed 1337.
        let l0 = xxh3_64(&[1, 0, 0, 0, 2, 0, 0, 0]);
        let l1 = xxh3_64(&[3, 0, 0, 0, 4, 0, 0, 0]);
        let fold = |a: u64, b: u64| {
            let x = (a ^ 0x9E37_79B9_7F4A_7C15) as u128 * (b ^ 0xD6E8_FEB8_6659_FD93) as u128;
            (x as u64) ^ ((x >> 64) as u64)
        };
        let b0 = fold(1337, l0);
        let b1 = fold(b0, l1);
        assert_eq!(
            got,
            vec![b0, b1],
            "trailing partial block must not be hashed"
        );
    }

    #[test]
    fn chaining_distinguishes_equal_blocks_with_different_prefixes() {
        let h = BlockHasher::new(4).unwrap();
        let a = h.hash(&[1, 1, 1, 1, 7, 7, 7, 7]);
        let b = h.hash(&[2, 2, 2, 2, 7, 7, 7, 7]);
        assert_ne!(a[1], b[1]);
        let c = h.hash(&[1, 1, 1, 1, 7, 7, 7, 7, 9, 9, 9, 9]);
        assert_eq!(&c[..2], &a[..]);
    }

    #[test]
    fn extend_continues_the_chain() {
        let h = BlockHasher::new(4).unwrap();
        let toks: Vec<u32> = (0..40).collect();
        let full = h.hash(&toks);
        let mut part = h.hash(&toks[..16]);
        let parent = part.last().copied();
        h.extend_into(parent, &toks[16..], &mut part);
        assert_eq!(part, full);
    }

    #[test]
    fn salt_changes_every_block_and_empty_salt_is_none() {
        let toks: Vec<u32> = (0..64).collect();
        let plain = BlockHasher::new(16).unwrap();
        let a = plain.with_salt(b"lora-a").hash(&toks);
        let b = plain.with_salt(b"lora-b").hash(&toks);
        let p = plain.hash(&toks);
        assert_eq!(plain.with_salt(b"").hash(&toks), p);
        for i in 0..4 {
            assert_ne!(a[i], p[i]);
            assert_ne!(a[i], b[i]);
        }
    }

    #[test]
    fn trace_mapping_counts_only_full_engine_blocks() {
        let m = TraceBlockMapper::new(16).unwrap();
        // 2 ids, 700 tokens: 43 full 16-token blocks (688 tokens).
        assert_eq!(m.map(&[5, 6], 700).len(), 43);
        // input_length larger than the ids cover: capped at 2 × 512 tokens.
        assert_eq!(m.map(&[5, 6], 5000).len(), 64);
        assert_eq!(m.map(&[], 100).len(), 0);
        assert_eq!(m.map(&[5], 15).len(), 0);
        assert_eq!(m.num_blocks(2, 700), 43);
    }

    #[test]
    fn equal_trace_prefixes_give_equal_engine_prefixes() {
        let m = TraceBlockMapper::new(16).unwrap();
        let a = m.map(&[1, 2, 3], 1536);
        let b = m.map(&[1, 2, 4], 1536);
        assert_eq!(a.len(), 96);
        assert_eq!(a[..64], b[..64]);
        assert!(a[64..].iter().zip(&b[64..]).all(|(x, y)| x != y));
        // A partial last trace block is a prefix of the full one with the same id.
        let c = m.map(&[1, 2, 3], 1300);
        assert_eq!(c[..], a[..81]);
        // Different first id: nothing shared.
        let d = m.map(&[9, 2, 3], 1536);
        assert!(a.iter().zip(&d).all(|(x, y)| x != y));
    }

    #[test]
    fn general_path_agrees_with_fast_path_and_handles_straddling() {
        // 16 divides 512: compare the fast path with the general one via a 3-token trace block
        // identity trick is impossible, so check the general path's own invariants instead.
        let m = TraceBlockMapper::with_trace_block_size(24, 512).unwrap();
        let a = m.map(&[1, 2, 3], 1536);
        assert_eq!(a.len(), 64);
        let b = m.map(&[1, 2, 4], 1536);
        // Blocks fully inside the first 1024 tokens: 1024/24 = 42 full ones.
        assert_eq!(a[..42], b[..42]);
        // Block 42 covers tokens 1008..1032, straddling ids 2 and 3/4: must differ.
        assert_ne!(a[42], b[42]);
        // Engine blocks larger than a trace block.
        let big = TraceBlockMapper::with_trace_block_size(1024, 512).unwrap();
        let x = big.map(&[1, 2, 3, 4], 2048);
        let y = big.map(&[1, 2, 3, 5], 2048);
        assert_eq!(x.len(), 2);
        assert_eq!(x[0], y[0]);
        assert_ne!(x[1], y[1]);
    }

    #[test]
    fn fast_path_matches_the_general_formula() {
        // Recompute the divisible case by the general per-block formula.
        let m = TraceBlockMapper::new(64).unwrap();
        let ids = [10u64, 20, 30];
        let got = m.map(&ids, 1500);
        let mut h = HASH_SEED;
        let mut want = Vec::new();
        for j in 0..(1500 / 64) as u64 {
            let start = j * 64;
            h = chain(h, mix(ids[(start / 512) as usize], start % 512));
            want.push(h);
        }
        assert_eq!(got, want);
    }

    #[test]
    fn synthetic_tokens_share_prefixes_like_ids() {
        let mut a = Vec::new();
        let mut b = Vec::new();
        synthetic_tokens(&[1, 2], 1000, 512, 32000, &mut a);
        synthetic_tokens(&[1, 3], 1000, 512, 32000, &mut b);
        assert_eq!(a.len(), 1000);
        assert_eq!(a[..512], b[..512]);
        assert_ne!(a[512..], b[512..]);
        assert!(a.iter().all(|&t| t < 32000));
        let h = BlockHasher::new(16).unwrap();
        assert_eq!(h.hash(&a)[..32], h.hash(&b)[..32]);
    }
}
