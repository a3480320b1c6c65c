//! Prefill/decode disaggregation: choosing a (prefill, decode) pair, and when to skip the
//! prefill pool altogether.
//!
//! # Pair choice
//! The decode worker is chosen first, by decode load: `active blocks + pending local prefill
//! blocks`; ties go to the worker that already caches more of the prompt (less KV to transfer),
//! then to fewer active requests, then to a seeded random pick. The prefill worker is then
//! chosen by KV cost over the prefill pool: `overlap_weight × (pending prefill tokens + this
//! request's uncached tokens on it) / block_size` (prefill workers hold KV only until the
//! transfer completes, so their decode blocks do not count); ties: fewer active requests, then
//! random. The two choices are joint in that the decode worker's cache decides both whether a
//! prefill worker is used at all and how much KV must move (`transfer_tokens`).
//!
//! # Conditional disaggregation (default threshold 512 tokens)
//! If fewer than `local_prefill_threshold` prompt tokens are uncached on the chosen decode
//! worker, the decode worker prefills them itself. Why 512:
//! * Remote prefill has a fixed price that does not shrink with the prompt: an extra request
//!   hop, queueing in the prefill pool, and a KV-transfer handshake (vLLM's NIXL path is
//!   sequential: decode waits for the prefill response). For a few hundred tokens that price
//!   exceeds the compute it saves.
//! * Local prefill is paid by every request decoding on that worker, as a longer step. A
//!   512-token chunk fits in one scheduler step (vLLM's default token budget is 8,192), so it
//!   lengthens at most one step; for a 32B dense model on H100/H200-class GPUs with TP2 that is
//!   about 10–30 ms once, versus an ITL SLO of 25 ms per token — a single bounded blip.
//!   Dynamo's experimental default (2,048 uncached tokens and < 70 % uncached) would cost ~4×
//!   that in one step and can break a 25 ms ITL SLO for the whole batch.
//! * Multi-turn chat is the case that matters: the next turn's new text is usually well under
//!   512 tokens and the history is already cached on the decode worker that served the previous
//!   turn, so it stays there with no transfer at all.
//!
//! Set it to 0 to always use the prefill pool. If the prefill pool is empty the decode worker
//! prefills locally whatever the threshold.

use std::cmp::Reverse;

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use crate::RouteError;
use crate::policy::{Candidate, Decision, Reason, RequestInfo, Scored};

/// Where the prompt is prefilled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PrefillPlacement {
    /// On the chosen prefill worker; KV is transferred to the decode worker.
    Remote,
    /// On the decode worker: few uncached tokens there.
    LocalBelowThreshold {
        /// Uncached tokens on the decode worker.
        uncached_tokens: u64,
        /// The configured threshold.
        threshold: u32,
    },
    /// On the decode worker: no prefill worker is available.
    LocalNoPrefillWorkers,
}

/// A disaggregated routing decision.
#[derive(Clone, Debug, PartialEq)]
pub struct PairDecision {
    /// The decode worker choice (over the decode candidates).
    pub decode: Decision,
    /// The prefill worker choice (over the prefill candidates); `None` when prefill is local.
    pub prefill: Option<Decision>,
    /// Why prefill happens where it does.
    pub placement: PrefillPlacement,
    /// Prompt tokens the decode worker does not have cached.
    pub uncached_on_decode: u64,
    /// Prompt tokens the prefill worker must compute (when remote).
    pub uncached_on_prefill: Option<u64>,
    /// Prompt tokens whose KV moves from prefill to decode worker (0 when local): what the
    /// decode worker does not already cache.
    pub transfer_tokens: u64,
}

impl PairDecision {
    /// True when the decode worker prefills locally.
    pub fn is_local(&self) -> bool {
        self.prefill.is_none()
    }
}

/// Joint (prefill, decode) selection with conditional disaggregation. See the module docs.
#[derive(Clone, Debug)]
pub struct PairSelector {
    /// Weight of prefill work in the prefill cost (scales every prefill cost equally, so it
    /// only matters for reports; kept for symmetry with the aggregated KV cost).
    pub overlap_weight: f64,
    /// Local-prefill threshold in uncached tokens (0 = always remote).
    pub local_prefill_threshold: u32,
    rng: ChaCha8Rng,
}

impl PairSelector {
    /// Seeded.
    pub fn new(overlap_weight: f64, local_prefill_threshold: u32, seed: u64) -> Self {
        Self {
            overlap_weight,
            local_prefill_threshold,
            // A different stream from the aggregated policy's, so both can share one seed.
            rng: ChaCha8Rng::seed_from_u64(seed ^ 0x00D1_5A66),
        }
    }

    /// Choose the pair. `decode` must be non-empty; `prefill` may be empty (local prefill).
    pub fn choose(
        &mut self,
        req: &RequestInfo,
        prefill: &[Candidate],
        decode: &[Candidate],
    ) -> Result<PairDecision, RouteError> {
        if decode.is_empty() {
            return Err(RouteError::NoCandidates);
        }
        let bs = f64::from(req.block_size.max(1));
        let mut d_detail: Vec<Scored> = decode
            .iter()
            .map(|c| Scored {
                worker: c.worker,
                overlap_blocks: c.overlap_blocks,
                load: c.load,
                cost: Some(c.load.active_blocks as f64 + c.load.prefill_tokens as f64 / bs),
                probability: None,
            })
            .collect();
        let (di, dtied) = argmin_ties(decode.len(), &mut self.rng, |i| {
            (
                Ord(d_detail[i].cost.unwrap_or(f64::INFINITY)),
                Reverse(decode[i].overlap_blocks),
                decode[i].load.active_requests,
            )
        });
        let d = &decode[di];
        let uncached_on_decode = req.uncached_tokens(d.overlap_blocks);
        let decode_decision = Decision {
            index: di,
            worker: d.worker,
            policy: "disagg-decode",
            reason: if decode.len() == 1 {
                Reason::Only
            } else {
                Reason::LowestCost { tied: dtied }
            },
            candidates: std::mem::take(&mut d_detail),
        };
        let local = if prefill.is_empty() {
            Some(PrefillPlacement::LocalNoPrefillWorkers)
        } else if uncached_on_decode < u64::from(self.local_prefill_threshold) {
            Some(PrefillPlacement::LocalBelowThreshold {
                uncached_tokens: uncached_on_decode,
                threshold: self.local_prefill_threshold,
            })
        } else {
            None
        };
        if let Some(placement) = local {
            return Ok(PairDecision {
                decode: decode_decision,
                prefill: None,
                placement,
                uncached_on_decode,
                uncached_on_prefill: None,
                transfer_tokens: 0,
            });
        }
        let p_detail: Vec<Scored> = prefill
            .iter()
            .map(|c| Scored {
                worker: c.worker,
                overlap_blocks: c.overlap_blocks,
                load: c.load,
                cost: Some(
                    self.overlap_weight
                        * (c.load.prefill_tokens as f64
                            + req.uncached_tokens(c.overlap_blocks) as f64)
                        / bs,
                ),
                probability: None,
            })
            .collect();
        let (pi, ptied) = argmin_ties(prefill.len(), &mut self.rng, |i| {
            (
                Ord(p_detail[i].cost.unwrap_or(f64::INFINITY)),
                prefill[i].load.active_requests,
            )
        });
        let p = &prefill[pi];
        Ok(PairDecision {
            decode: decode_decision,
            prefill: Some(Decision {
                index: pi,
                worker: p.worker,
                policy: "disagg-prefill",
                reason: if prefill.len() == 1 {
                    Reason::Only
                } else {
                    Reason::LowestCost { tied: ptied }
                },
                candidates: p_detail,
            }),
            placement: PrefillPlacement::Remote,
            uncached_on_decode,
            uncached_on_prefill: Some(req.uncached_tokens(p.overlap_blocks)),
            transfer_tokens: uncached_on_decode,
        })
    }
}

/// Total order on costs (NaN never arises: costs are sums of finite, non-negative terms).
#[derive(Clone, Copy, Debug, PartialEq)]
struct Ord(f64);
impl Eq for Ord {}
impl PartialOrd for Ord {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(std::cmp::Ord::cmp(self, o))
    }
}
impl std::cmp::Ord for Ord {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        self.0.total_cmp(&o.0)
    }
}

fn argmin_ties<K: std::cmp::Ord>(
    n: usize,
    rng: &mut ChaCha8Rng,
    mut key: impl FnMut(usize) -> K,
) -> (usize, usize) {
    use rand::Rng;
    let mut best = 0;
    let mut best_key = key(0);
    let mut tied = 1usize;
    for i in 1..n {
        let k = key(i);
        match k.cmp(&best_key) {
            std::cmp::Ordering::Less => {
                best = i;
                best_key = k;
                tied = 1;
            }
            std::cmp::Ordering::Equal => {
                tied += 1;
                if rng.random_range(0..tied) == 0 {
                    best = i;
                }
            }
            std::cmp::Ordering::Greater => {}
        }
    }
    (best, tied)
}
