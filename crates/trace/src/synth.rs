//! Synthesize a new trace from a seed trace (`trace synthesize`).
//!
//! The seed trace is read as a prefix tree of hash ids: each request is a path from the root.
//! The leading blocks of a path that occur more than once in the trace are its *shared
//! prefix* (its place in the tree); the rest is its *unique prompt*. A synthetic request is a
//! seed request with its shared prefix stretched by `prefix_len_multiplier` (every shared
//! block becomes ⌊m⌋ or ⌈m⌉ blocks with ids derived from the original, so equal ids still
//! mean identical 512-token blocks and every request that shared a prefix still shares the
//! stretched one) and its unique prompt stretched by `prompt_len_multiplier` (fresh ids).
//!
//! Arrivals keep the seed's pattern exactly: synthetic request `i` takes the arrival time of
//! seed request `i` (repeating the trace end to end when more requests are asked for),
//! divided by `speedup_ratio`. Its content is sampled (seeded) from the seed requests within
//! `sample_window` positions of `i`, so the mix of requests and the temporal locality of
//! prefix reuse (multi-turn sessions) follow the original timeline. Unlike Dynamo's
//! `datagen synthesize`, which samples the shared path and the unique-prompt length
//! independently, a request keeps its own pairing of context and prompt length, so the ISL
//! distribution and its spread are preserved.
//!
//! `max_isl` drops requests whose stretched length exceeds it and samples a fitting
//! neighbour for that arrival instead. Dropping (rather than clipping the prompt) keeps every
//! length in the output one that the stretched workload really produces: clipping would pile
//! requests up at exactly `max_isl` and cut shared prefixes short. It keeps the arrival count
//! and pattern, so the request rate is the seed's.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rustc_hash::FxHashMap;
use serde::Serialize;

use crate::error::TraceError;
use crate::record::{Trace, TraceRequest, blocks_for};

/// Parameters of `trace synthesize`. Defaults reproduce the seed trace's statistics.
#[derive(Clone, Debug, Serialize)]
pub struct SynthConfig {
    /// Requests to generate (default: as many as the seed trace has).
    pub num_requests: Option<usize>,
    /// Stretch shared prefixes by this factor (> 0).
    pub prefix_len_multiplier: f64,
    /// Stretch unique prompt parts by this factor (> 0).
    pub prompt_len_multiplier: f64,
    /// Replicate the prefix tree into this many independent copies; each request lands in a
    /// random copy, so fewer requests share a root.
    pub prefix_root_multiplier: u32,
    /// Drop requests longer than this (tokens) and sample a fitting neighbour instead.
    pub max_isl: Option<u32>,
    /// Divide arrival times by this (2.0 = twice the request rate).
    pub speedup_ratio: f64,
    /// Sample each request's content among the seed requests this many positions around it
    /// (0 = keep the seed request at that position).
    pub sample_window: usize,
    pub seed: u64,
}

impl Default for SynthConfig {
    fn default() -> Self {
        Self {
            num_requests: None,
            prefix_len_multiplier: 1.0,
            prompt_len_multiplier: 1.0,
            prefix_root_multiplier: 1,
            max_isl: None,
            speedup_ratio: 1.0,
            sample_window: 64,
            seed: 0,
        }
    }
}

impl SynthConfig {
    /// The output file name `trace synthesize` uses when `-o` is not given, encoding the
    /// parameters (same shape as Dynamo's datagen names, plus count and seed).
    pub fn default_file_name(&self, input: &std::path::Path, num_requests: usize) -> String {
        let name = input
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "trace".into());
        let stem = name
            .strip_suffix(".gz")
            .unwrap_or(&name)
            .trim_end_matches(".jsonl")
            .trim_end_matches(".json");
        let mut out = format!(
            "{stem}_synth_{:.2}x{}+{:.2}_speedup{}",
            self.prefix_len_multiplier,
            self.prefix_root_multiplier,
            self.prompt_len_multiplier,
            self.speedup_ratio
        );
        if let Some(m) = self.max_isl {
            out.push_str(&format!("_maxisl{m}"));
        }
        out.push_str(&format!("_n{num_requests}_seed{}.jsonl", self.seed));
        out
    }

    fn validate(&self) -> Result<(), TraceError> {
        let bad = |m: String| Err(TraceError::Param(m));
        let pos = |v: f64| v.is_finite() && v > 0.0;
        if !pos(self.prefix_len_multiplier) || self.prefix_len_multiplier > 1000.0 {
            return bad(format!(
                "--prefix-len-multiplier must be in (0, 1000], got {}",
                self.prefix_len_multiplier
            ));
        }
        if !pos(self.prompt_len_multiplier) || self.prompt_len_multiplier > 1000.0 {
            return bad(format!(
                "--prompt-len-multiplier must be in (0, 1000], got {}",
                self.prompt_len_multiplier
            ));
        }
        if self.prefix_root_multiplier == 0 || self.prefix_root_multiplier > 1_000_000 {
            return bad(format!(
                "--prefix-root-multiplier must be in 1..=1000000, got {}",
                self.prefix_root_multiplier
            ));
        }
        if !pos(self.speedup_ratio) {
            return bad(format!(
                "--speedup-ratio must be positive, got {}",
                self.speedup_ratio
            ));
        }
        if let Some(n) = self.num_requests
            && (n == 0 || n > crate::limits::MAX_SYNTH_REQUESTS)
        {
            return bad(format!(
                "--num-requests must be in 1..={}, got {n}",
                crate::limits::MAX_SYNTH_REQUESTS
            ));
        }
        if self.speedup_ratio > 1e6 {
            return bad(format!(
                "--speedup-ratio must be at most 1e6, got {:?}",
                self.speedup_ratio
            ));
        }
        if self.max_isl == Some(0) {
            return bad("--max-isl must be at least 1".into());
        }
        Ok(())
    }
}

/// What `synthesize` did, for the user.
#[derive(Clone, Debug, Serialize)]
pub struct SynthReport {
    pub requests: usize,
    /// Seed requests whose stretched length exceeds `max_isl`.
    pub seed_requests_over_max_isl: usize,
    /// Arrivals whose sampled content was over `max_isl` and was re-sampled.
    pub resampled: usize,
}

/// A seed request reduced to what synthesis needs.
struct Shape {
    /// Leading blocks that occur more than once in the seed trace.
    shared: usize,
    /// The whole prompt is shared and its last block is partial with this many tokens.
    shared_tail_tokens: Option<u32>,
    /// Tokens after the shared prefix.
    unique_tokens: u32,
}

/// Generate a trace from `seed_trace` (see the module docs for the model).
pub fn synthesize(
    seed_trace: &Trace,
    cfg: &SynthConfig,
) -> Result<(Trace, SynthReport), TraceError> {
    synthesize_within(seed_trace, cfg, crate::memory::budget_bytes())
}

/// [`synthesize`], refusing (before allocating) output that would need more than
/// `memory_budget` bytes (`None`: no check).
pub fn synthesize_within(
    seed_trace: &Trace,
    cfg: &SynthConfig,
    memory_budget: Option<u64>,
) -> Result<(Trace, SynthReport), TraceError> {
    cfg.validate()?;
    let src = &seed_trace.requests;
    if src.is_empty() {
        return Err(TraceError::Param("the seed trace has no requests".into()));
    }
    let bs = seed_trace.block_size;
    let m = cfg.prefix_len_multiplier;
    let p = cfg.prompt_len_multiplier;

    let mut refs: FxHashMap<u64, u32> = FxHashMap::default();
    let mut max_id = 0u64;
    for r in src {
        for &h in &r.hash_ids {
            *refs.entry(h).or_default() += 1;
            max_id = max_id.max(h);
        }
    }
    let shapes: Vec<Shape> = src
        .iter()
        .map(|r| {
            let shared = r.hash_ids.iter().take_while(|h| refs[*h] > 1).count();
            let all = shared == r.hash_ids.len() && shared == blocks_for(r.input_length, bs);
            let shared_tokens = (shared as u64 * bs as u64).min(r.input_length as u64) as u32;
            Shape {
                shared,
                shared_tail_tokens: all.then(|| r.block_tokens(shared.saturating_sub(1), bs)),
                unique_tokens: r.input_length - shared_tokens,
            }
        })
        .collect();

    // Shared block at depth d becomes blocks ⌊(d+1)m⌋ − ⌊dm⌋: depends on depth only, and an
    // id has one depth (equal ids have equal prefixes), so equal ids stay equal.
    let stretched = |d: usize| (d as f64 * m).floor() as usize;
    let new_isl = |s: &Shape| -> u64 {
        let blocks = stretched(s.shared) as u64;
        match s.shared_tail_tokens {
            Some(tail) if blocks > 0 => (blocks - 1) * bs as u64 + tail as u64,
            Some(tail) => tail as u64,
            None => blocks * bs as u64 + ((s.unique_tokens as f64 * p).round() as u64).max(1),
        }
    };
    // Stretched requests never exceed the loader's bound (it would refuse to read them back).
    let max_isl = cfg
        .max_isl
        .unwrap_or(crate::limits::MAX_TOKENS)
        .min(crate::limits::MAX_TOKENS) as u64;
    let fits: Vec<bool> = shapes.iter().map(|s| new_isl(s) <= max_isl).collect();
    let over = fits.iter().filter(|f| !**f).count();
    if over == src.len() {
        return Err(TraceError::Param(format!(
            "no request of the seed trace fits --max-isl {} after stretching (shortest would be {} tokens)",
            max_isl,
            shapes.iter().map(new_isl).min().unwrap_or(0)
        )));
    }
    // Memory of the output, estimated from the fitting seed requests' stretched sizes.
    let n_out_est = cfg.num_requests.unwrap_or(src.len()) as u64;
    let (fit_n, fit_blocks) = shapes
        .iter()
        .zip(&fits)
        .filter(|(_, f)| **f)
        .fold((0u64, 0u64), |(n, b), (s, _)| {
            (n + 1, b + new_isl(s).div_ceil(bs as u64))
        });
    let per_request = std::mem::size_of::<TraceRequest>() as u64 + 8 * fit_blocks / fit_n.max(1);
    crate::memory::check(
        n_out_est.saturating_mul(per_request),
        memory_budget,
        &format!("synthesizing {n_out_est} requests"),
    )
    .map_err(TraceError::Param)?;

    let k = m.ceil().max(1.0) as u64; // id slots per original id
    let tree_ids = (max_id + 1) * k; // id space of one copy of the tree
    let mut fresh = tree_ids * cfg.prefix_root_multiplier as u64;
    let n_src = src.len();
    let n_out = cfg.num_requests.unwrap_or(n_src);
    let t0 = src[0].timestamp;
    let span = src[n_src - 1].timestamp - t0;
    let lap = span
        + if n_src > 1 {
            span / (n_src - 1) as f64
        } else {
            1000.0
        };
    let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
    let mut out = Vec::with_capacity(n_out);
    let mut resampled = 0usize;
    let w = cfg.sample_window / 2;

    for i in 0..n_out {
        let pos = i % n_src;
        let timestamp = ((src[pos].timestamp - t0) + (i / n_src) as f64 * lap) / cfg.speedup_ratio;
        let (lo, hi) = (pos.saturating_sub(w), (pos + w).min(n_src - 1));
        let mut j = if hi > lo {
            rng.random_range(lo..=hi)
        } else {
            pos
        };
        if !fits[j] {
            resampled += 1;
            j = pick_fitting(&fits, lo, hi, pos, &mut rng);
        }
        let r = &src[j];
        let s = &shapes[j];
        let root = if cfg.prefix_root_multiplier > 1 {
            rng.random_range(0..cfg.prefix_root_multiplier) as u64
        } else {
            0
        };
        let isl = new_isl(s);
        let mut ids = Vec::with_capacity(blocks_for(isl.min(u32::MAX as u64) as u32, bs));
        for (d, &h) in r.hash_ids[..s.shared].iter().enumerate() {
            for slot in 0..(stretched(d + 1) - stretched(d)) as u64 {
                ids.push(root * tree_ids + h * k + slot);
            }
        }
        let need = blocks_for(isl as u32, bs);
        while ids.len() < need {
            ids.push(fresh);
            fresh += 1;
        }
        out.push(TraceRequest::new(
            timestamp.round(),
            isl as u32,
            r.output_length,
            ids,
        ));
    }
    Ok((
        Trace {
            requests: out,
            block_size: bs,
        },
        SynthReport {
            requests: n_out,
            seed_requests_over_max_isl: over,
            resampled,
        },
    ))
}

/// A fitting seed request: uniformly among those in `[lo, hi]`, else the nearest to `pos`.
fn pick_fitting(fits: &[bool], lo: usize, hi: usize, pos: usize, rng: &mut ChaCha8Rng) -> usize {
    let in_window = fits[lo..=hi].iter().filter(|f| **f).count();
    if in_window > 0 {
        let nth = rng.random_range(0..in_window);
        return (lo..=hi).filter(|&x| fits[x]).nth(nth).unwrap_or(pos);
    }
    (1..fits.len())
        .flat_map(|d| [pos.checked_sub(d), Some(pos + d)])
        .flatten()
        .find(|&x| x < fits.len() && fits[x])
        .unwrap_or(pos)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analyze::analyze;

    fn seed() -> Trace {
        // Block size 4. Two requests share [1,2]; the third is alone.
        Trace {
            requests: vec![
                TraceRequest::new(0.0, 10, 5, vec![1, 2, 3]),
                TraceRequest::new(100.0, 11, 6, vec![1, 2, 4]),
                TraceRequest::new(300.0, 7, 7, vec![5, 6]),
            ],
            block_size: 4,
        }
    }

    #[test]
    fn identity_parameters_reproduce_the_statistics() {
        let s = seed();
        let cfg = SynthConfig {
            sample_window: 0,
            ..Default::default()
        };
        let (t, rep) = synthesize(&s, &cfg).unwrap();
        assert_eq!(rep.requests, 3);
        let (a, b) = (analyze(&s), analyze(&t));
        assert_eq!(a.input_length, b.input_length);
        assert_eq!(a.blocks.unique_blocks, b.blocks.unique_blocks);
        assert_eq!(a.blocks.block_hit_rate, b.blocks.block_hit_rate);
        assert_eq!(t.requests[2].timestamp, 300.0);
    }

    #[test]
    fn prefix_and_prompt_multipliers_stretch_the_right_parts() {
        let cfg = SynthConfig {
            prefix_len_multiplier: 2.0,
            prompt_len_multiplier: 3.0,
            sample_window: 0,
            ..Default::default()
        };
        let (t, _) = synthesize(&seed(), &cfg).unwrap();
        // r0: shared 2 blocks -> 4 blocks (16 tokens) + unique 2 tokens × 3 = 6 -> 22.
        assert_eq!(t.requests[0].input_length, 22);
        assert_eq!(t.requests[0].hash_ids.len(), 6);
        // Shared prefix identical between r0 and r1, tails distinct.
        assert_eq!(t.requests[0].hash_ids[..4], t.requests[1].hash_ids[..4]);
        assert_ne!(t.requests[0].hash_ids[4], t.requests[1].hash_ids[4]);
        // r2 shares nothing: 7 × 3 = 21 tokens, all fresh ids.
        assert_eq!(t.requests[2].input_length, 21);
        let b = analyze(&t).blocks;
        assert_eq!(b.reused_blocks, 4);
    }

    #[test]
    fn max_isl_drops_and_resamples_and_root_multiplier_splits_trees() {
        let cfg = SynthConfig {
            num_requests: Some(200),
            max_isl: Some(10),
            prefix_root_multiplier: 4,
            sample_window: 8,
            speedup_ratio: 2.0,
            seed: 7,
            ..Default::default()
        };
        let (t, rep) = synthesize(&seed(), &cfg).unwrap();
        assert_eq!(t.requests.len(), 200);
        assert!(t.requests.iter().all(|r| r.input_length <= 10));
        assert_eq!(rep.seed_requests_over_max_isl, 1);
        let roots: std::collections::HashSet<u64> =
            t.requests.iter().map(|r| r.hash_ids[0]).collect();
        assert!(roots.len() > 2, "requests spread over several tree copies");
        // Timestamps repeat the seed's pattern, halved, and stay sorted.
        assert_eq!(t.requests[1].timestamp, 50.0);
        assert!(
            t.requests
                .windows(2)
                .all(|w| w[0].timestamp <= w[1].timestamp)
        );
        // Deterministic for a seed.
        assert_eq!(synthesize(&seed(), &cfg).unwrap().0, t);
    }

    #[test]
    fn outputs_that_cannot_fit_in_memory_are_refused_before_allocating() {
        // 10^9 requests: over the documented cap.
        let cfg = SynthConfig {
            num_requests: Some(1_000_000_000),
            ..Default::default()
        };
        let e = synthesize(&seed(), &cfg).unwrap_err().to_string();
        assert!(e.contains("--num-requests must be in 1..=100000000"), "{e}");
        // Within the cap but over the memory budget: refused with the estimate.
        let cfg = SynthConfig {
            num_requests: Some(50_000_000),
            ..Default::default()
        };
        let e = synthesize_within(&seed(), &cfg, Some(1 << 30))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("synthesizing 50000000 requests needs about")
                && e.contains("more than the 1.00 GiB available"),
            "{e}"
        );
        // Stretching past the loader's token bound drops the request like --max-isl would.
        let cfg = SynthConfig {
            prompt_len_multiplier: 1000.0,
            prefix_len_multiplier: 1000.0,
            ..Default::default()
        };
        let huge = Trace {
            requests: vec![TraceRequest::new(0.0, 20_000, 5, (0..40).collect())],
            block_size: 512,
        };
        let e = synthesize(&huge, &cfg).unwrap_err().to_string();
        assert!(e.contains("no request of the seed trace fits"), "{e}");
    }

    #[test]
    fn bad_parameters_are_refused() {
        for cfg in [
            SynthConfig {
                prefix_len_multiplier: 0.0,
                ..Default::default()
            },
            SynthConfig {
                prompt_len_multiplier: f64::NAN,
                ..Default::default()
            },
            SynthConfig {
                prefix_root_multiplier: 0,
                ..Default::default()
            },
            SynthConfig {
                speedup_ratio: -1.0,
                ..Default::default()
            },
            SynthConfig {
                num_requests: Some(0),
                ..Default::default()
            },
            SynthConfig {
                max_isl: Some(1),
                ..Default::default()
            },
        ] {
            assert!(
                matches!(synthesize(&seed(), &cfg), Err(TraceError::Param(_))),
                "{cfg:?}"
            );
        }
    }

    #[test]
    fn default_name_encodes_parameters() {
        let cfg = SynthConfig {
            prefix_len_multiplier: 16.0,
            prompt_len_multiplier: 10.0,
            max_isl: Some(110_000),
            ..Default::default()
        };
        assert_eq!(
            cfg.default_file_name(
                std::path::Path::new("data/mooncake_conversation.jsonl.gz"),
                10_000
            ),
            "mooncake_conversation_synth_16.00x1+10.00_speedup1_maxisl110000_n10000_seed0.jsonl"
        );
    }
}
