//! Trace statistics. Definitions follow the analyzer of Dynamo's prefix data generator
//! (`datagen analyze`) where it has one, so numbers can be compared; each is documented on
//! its field and in `switchyard trace analyze --help`.

use rustc_hash::FxHashMap;
use serde::Serialize;

use crate::hist::Histogram;
use crate::record::Trace;
use switchyard_metrics::Stats;

/// Everything `trace analyze` reports.
#[derive(Clone, Debug, Serialize)]
pub struct Analysis {
    /// Tokens per `hash_id` block.
    pub block_size: u32,
    pub requests: usize,
    /// Last arrival − first arrival.
    pub span_secs: f64,
    /// requests / span.
    pub request_rate: f64,
    /// Σ input_length / span.
    pub input_tokens_per_sec: f64,
    /// Σ output_length / span.
    pub output_tokens_per_sec: f64,
    /// `None` only for an empty trace (which `load` refuses).
    pub input_length: Option<Stats>,
    pub output_length: Option<Stats>,
    pub blocks: BlockStats,
    /// Input lengths in tokens (half-octave bins).
    pub input_length_histogram: Histogram,
    /// Per-request prefix-hit length in tokens with an infinite cache (half-octave bins).
    pub prefix_hit_histogram: Histogram,
}

/// Block reuse and prefix-cache statistics.
#[derive(Clone, Debug, Serialize)]
pub struct BlockStats {
    /// Σ len(hash_ids): every block reference of every request.
    pub total_block_refs: u64,
    /// Distinct hash ids.
    pub unique_blocks: u64,
    /// Distinct hash ids that appear in more than one request.
    pub reused_blocks: u64,
    /// reused_blocks / unique_blocks.
    pub reused_fraction: f64,
    /// Repeated references / all references = (total_block_refs − unique_blocks) / total_block_refs.
    pub cache_efficiency: f64,
    /// Infinite-cache hit rate over block references: a reference hits when an earlier
    /// request already had that block (anywhere in its prompt).
    pub block_hit_rate: f64,
    /// The same, weighted by the tokens each block covers (a partial last block counts its
    /// actual tokens), over all input tokens.
    pub token_hit_rate: f64,
    /// Mean over requests of (leading blocks an earlier request had) / len(hash_ids): a cache
    /// that only matches prefixes, as engines do. `datagen`'s "theoretical hit rate".
    pub prefix_hit_rate: f64,
    /// Mean per-request prefix-hit length in tokens (leading blocks an earlier request had).
    pub avg_prefix_hit_tokens: f64,
    /// Mean shared context per request: block_size × (blocks of the request that occur more
    /// than once in the whole trace), or the whole input_length when all of them do.
    /// `datagen`'s "context length".
    pub avg_context_tokens: f64,
    /// Mean of input_length − context: `datagen`'s "unique prompt length".
    pub avg_unique_prompt_tokens: f64,
    /// Σ context / Σ input_length: the share of input tokens that come from shared context.
    pub shared_prefix_ratio: f64,
    /// Distinct first blocks shared by at least two requests (`datagen`'s prefix groups).
    pub prefix_groups: u64,
}

#[derive(Clone, Copy)]
struct BlockInfo {
    first_req: u32,
    last_req: u32,
    refs: u32,
}

/// Compute all statistics of a trace in two linear passes.
pub fn analyze(trace: &Trace) -> Analysis {
    let bs = trace.block_size;
    let reqs = &trace.requests;
    let total_refs: usize = reqs.iter().map(|r| r.hash_ids.len()).sum();
    let mut blocks: FxHashMap<u64, BlockInfo> =
        FxHashMap::with_capacity_and_hasher(total_refs / 2 + 16, Default::default());

    let mut hit_refs = 0u64;
    let mut hit_tokens = 0u64;
    let mut prefix_hit_frac_sum = 0.0;
    let mut prefix_hit_tokens = Vec::with_capacity(reqs.len());
    let mut first_block_reqs: FxHashMap<u64, u32> = FxHashMap::default();

    for (i, r) in reqs.iter().enumerate() {
        let i = i as u32;
        let mut in_prefix = true;
        let mut prefix_blocks = 0usize;
        let mut prefix_tokens = 0u64;
        for (j, &h) in r.hash_ids.iter().enumerate() {
            let e = blocks.entry(h).or_insert(BlockInfo {
                first_req: i,
                last_req: u32::MAX,
                refs: 0,
            });
            e.refs += 1;
            let hit = e.first_req < i;
            e.last_req = i;
            let tokens = r.block_tokens(j, bs) as u64;
            if hit {
                hit_refs += 1;
                hit_tokens += tokens;
            }
            if in_prefix && hit {
                prefix_blocks += 1;
                prefix_tokens += tokens;
            } else {
                in_prefix = false;
            }
        }
        if let Some(&h0) = r.hash_ids.first() {
            *first_block_reqs.entry(h0).or_default() += 1;
        }
        if !r.hash_ids.is_empty() {
            prefix_hit_frac_sum += prefix_blocks as f64 / r.hash_ids.len() as f64;
        }
        prefix_hit_tokens.push(prefix_tokens as f64);
    }

    // Second pass: shared context needs each block's total reference count.
    let mut context_sum = 0u64;
    for r in reqs {
        let shared = r.hash_ids.iter().filter(|h| blocks[*h].refs > 1).count();
        let needed = crate::record::blocks_for(r.input_length, bs);
        context_sum += if shared == r.hash_ids.len() && shared >= needed {
            r.input_length as u64
        } else {
            (shared as u64 * bs as u64).min(r.input_length as u64)
        };
    }

    let n = reqs.len().max(1) as f64;
    let input_sum: u64 = reqs.iter().map(|r| r.input_length as u64).sum();
    let output_sum: u64 = reqs.iter().map(|r| r.output_length as u64).sum();
    let unique = blocks.len() as u64;
    let reused = blocks
        .values()
        .filter(|b| b.first_req != b.last_req)
        .count() as u64;
    let span = trace.span_secs();
    let per_sec = |x: f64| if span > 0.0 { x / span } else { 0.0 };
    let ratio = |a: f64, b: f64| if b > 0.0 { a / b } else { 0.0 };
    let inputs: Vec<f64> = reqs.iter().map(|r| r.input_length as f64).collect();
    let outputs: Vec<f64> = reqs.iter().map(|r| r.output_length as f64).collect();

    Analysis {
        block_size: bs,
        requests: reqs.len(),
        span_secs: span,
        request_rate: per_sec(reqs.len() as f64),
        input_tokens_per_sec: per_sec(input_sum as f64),
        output_tokens_per_sec: per_sec(output_sum as f64),
        input_length_histogram: Histogram::log2(&inputs, bs as f64, 2),
        prefix_hit_histogram: Histogram::log2(&prefix_hit_tokens, bs as f64, 2),
        input_length: Stats::from_slice(&inputs),
        output_length: Stats::from_slice(&outputs),
        blocks: BlockStats {
            total_block_refs: total_refs as u64,
            unique_blocks: unique,
            reused_blocks: reused,
            reused_fraction: ratio(reused as f64, unique as f64),
            cache_efficiency: ratio(total_refs as f64 - unique as f64, total_refs as f64),
            block_hit_rate: ratio(hit_refs as f64, total_refs as f64),
            token_hit_rate: ratio(hit_tokens as f64, input_sum as f64),
            prefix_hit_rate: prefix_hit_frac_sum / n,
            avg_prefix_hit_tokens: prefix_hit_tokens.iter().sum::<f64>() / n,
            avg_context_tokens: context_sum as f64 / n,
            avg_unique_prompt_tokens: (input_sum - context_sum) as f64 / n,
            shared_prefix_ratio: ratio(context_sum as f64, input_sum as f64),
            prefix_groups: first_block_reqs.values().filter(|&&c| c >= 2).count() as u64,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::TraceRequest;

    fn trace(rows: &[(f64, u32, u32, &[u64])]) -> Trace {
        Trace {
            requests: rows
                .iter()
                .map(|&(t, i, o, h)| TraceRequest::new(t, i, o, h.to_vec()))
                .collect(),
            block_size: 4,
        }
    }

    #[test]
    fn hand_computed_small_trace() {
        // Block size 4. r0: [1,2,3] (10 tokens: 4,4,2); r1: [1,2,4] (12: 4,4,4); r2: [5,2] (6: 4,2)
        let t = trace(&[
            (0.0, 10, 5, &[1, 2, 3]),
            (1000.0, 12, 3, &[1, 2, 4]),
            (2000.0, 6, 1, &[5, 2]),
        ]);
        let a = analyze(&t);
        let b = &a.blocks;
        assert_eq!(a.requests, 3);
        assert_eq!(a.span_secs, 2.0);
        assert_eq!(a.request_rate, 1.5);
        assert_eq!(a.input_tokens_per_sec, 14.0);
        assert_eq!(b.total_block_refs, 8);
        assert_eq!(b.unique_blocks, 5);
        assert_eq!(b.reused_blocks, 2); // ids 1 and 2
        assert_eq!(b.cache_efficiency, 3.0 / 8.0);
        // Hits: r1 blocks 1,2; r2 block 2 (anywhere). 3 of 8 references.
        assert_eq!(b.block_hit_rate, 3.0 / 8.0);
        // Hit tokens: r1 4+4, r2 block 2 covers 2 tokens -> 10 of 28.
        assert_eq!(b.token_hit_rate, 10.0 / 28.0);
        // Prefix hits: r0 0/3, r1 2/3, r2 0/2 (its first block is new).
        assert!((b.prefix_hit_rate - (2.0 / 3.0) / 3.0).abs() < 1e-12);
        assert!((b.avg_prefix_hit_tokens - 8.0 / 3.0).abs() < 1e-12);
        // Context: r0 has 2 shared blocks -> 8; r1 -> 8; r2 has 1 -> 4. Sum 20 of 28 tokens.
        assert!((b.avg_context_tokens - 20.0 / 3.0).abs() < 1e-12);
        assert!((b.avg_unique_prompt_tokens - 8.0 / 3.0).abs() < 1e-12);
        assert!((b.shared_prefix_ratio - 20.0 / 28.0).abs() < 1e-12);
        assert_eq!(b.prefix_groups, 1);
        assert_eq!(a.input_length.unwrap().max, 12.0);
    }

    #[test]
    fn fully_shared_request_counts_its_whole_length() {
        let t = trace(&[(0.0, 6, 1, &[1, 2]), (0.0, 6, 1, &[1, 2])]);
        let b = analyze(&t).blocks;
        assert_eq!(b.avg_context_tokens, 6.0);
        assert_eq!(b.shared_prefix_ratio, 1.0);
    }
}
