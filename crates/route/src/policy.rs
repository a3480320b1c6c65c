//! Routing policies: choose one of a borrowed slice of candidates.
//!
//! Every policy returns a [`Decision`] that explains itself: the chosen index and worker, why,
//! and per candidate its overlap, load and (for cost-based policies) cost. The same value feeds
//! logs, metrics and the simulator's reports.

use std::fmt;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use switchyard_kv::WorkerKey;

use crate::RouteError;
use crate::config::{PolicyKind, RouterConfig};
use crate::load::LoadSnapshot;

/// The request as policies see it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RequestInfo {
    /// Prompt length in tokens.
    pub input_tokens: u32,
    /// KV block size in tokens (≥ 1).
    pub block_size: u32,
}

impl RequestInfo {
    /// KV blocks the prompt occupies (partial last block included).
    pub fn prompt_blocks(&self) -> u64 {
        u64::from(self.input_tokens).div_ceil(u64::from(self.block_size.max(1)))
    }

    /// Prompt tokens a worker holding `overlap_blocks` leading blocks must still compute.
    pub fn uncached_tokens(&self, overlap_blocks: u32) -> u64 {
        let cached = u64::from(overlap_blocks) * u64::from(self.block_size);
        u64::from(self.input_tokens).saturating_sub(cached)
    }
}

/// One eligible worker with everything a policy may use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Candidate {
    /// The worker (and DP rank).
    pub worker: WorkerKey,
    /// Its load now.
    pub load: LoadSnapshot,
    /// Leading prompt blocks it holds in cache.
    pub overlap_blocks: u32,
}

/// Per-candidate detail of a decision.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Scored {
    /// The worker.
    pub worker: WorkerKey,
    /// Leading prompt blocks cached on it.
    pub overlap_blocks: u32,
    /// Its load when the decision was made.
    pub load: LoadSnapshot,
    /// Cost (cost-based policies only; lower is better).
    pub cost: Option<f64>,
    /// Selection probability (temperature sampling only).
    pub probability: Option<f64>,
}

/// Why the chosen candidate won.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Reason {
    /// Only one candidate.
    Only,
    /// Round-robin turn (the counter value).
    RoundRobin { turn: u64 },
    /// Uniform random draw.
    Random,
    /// Lowest load; `tied` candidates shared it (random among them).
    LeastLoad { tied: usize },
    /// Power of two choices: the two sampled candidate indices.
    PowerOfTwo { sampled: [usize; 2] },
    /// Lowest cost; `tied` candidates shared the cost after the load tie-break.
    LowestCost { tied: usize },
    /// Sampled from softmax(−cost / temperature).
    Sampled { temperature: f64 },
}

/// A routing decision that explains itself.
#[derive(Clone, Debug, PartialEq)]
pub struct Decision {
    /// Index of the chosen candidate in the slice passed to the policy.
    pub index: usize,
    /// The chosen worker.
    pub worker: WorkerKey,
    /// Policy name.
    pub policy: &'static str,
    /// Why.
    pub reason: Reason,
    /// Every candidate, in input order.
    pub candidates: Vec<Scored>,
}

impl Decision {
    /// The chosen candidate's detail.
    pub fn chosen(&self) -> &Scored {
        &self.candidates[self.index]
    }

    /// Leading blocks cached on the chosen worker.
    pub fn overlap_blocks(&self) -> u32 {
        self.chosen().overlap_blocks
    }
}

impl fmt::Display for Decision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = self.chosen();
        write!(
            f,
            "{} -> worker {} ({:?}; overlap {} blocks, {} active req, {} active blocks",
            self.policy,
            self.worker,
            self.reason,
            c.overlap_blocks,
            c.load.active_requests,
            c.load.active_blocks
        )?;
        if let Some(cost) = c.cost {
            write!(f, ", cost {cost:.1}")?;
            let runner_up = self
                .candidates
                .iter()
                .enumerate()
                .filter(|(i, _)| *i != self.index)
                .filter_map(|(_, s)| s.cost.map(|x| (x, s.worker)))
                .min_by(|a, b| a.0.total_cmp(&b.0));
            if let Some((x, w)) = runner_up {
                write!(f, "; runner-up {w} cost {x:.1}")?;
            }
        }
        write!(f, ")")
    }
}

/// A routing policy. Implementations may keep state (counters, a seeded RNG), never I/O.
pub trait Policy: Send {
    /// Name for logs and reports.
    fn name(&self) -> &'static str;
    /// Pick one of `candidates` (non-empty, else [`RouteError::NoCandidates`]).
    fn choose(
        &mut self,
        req: &RequestInfo,
        candidates: &[Candidate],
    ) -> Result<Decision, RouteError>;
}

fn scored(candidates: &[Candidate]) -> Vec<Scored> {
    candidates
        .iter()
        .map(|c| Scored {
            worker: c.worker,
            overlap_blocks: c.overlap_blocks,
            load: c.load,
            cost: None,
            probability: None,
        })
        .collect()
}

fn decide(
    policy: &'static str,
    index: usize,
    reason: Reason,
    candidates: &[Candidate],
    detail: Vec<Scored>,
) -> Decision {
    Decision {
        index,
        worker: candidates[index].worker,
        policy,
        reason,
        candidates: detail,
    }
}

/// Index of the minimum of `key` over `0..n`, ties broken uniformly at random (reservoir
/// sampling: one pass, no allocation). Returns (index, number tied).
fn argmin_random_tie<K: PartialOrd>(
    n: usize,
    rng: &mut ChaCha8Rng,
    mut key: impl FnMut(usize) -> K,
) -> (usize, usize) {
    let mut best = 0;
    let mut best_key = key(0);
    let mut tied = 1usize;
    for i in 1..n {
        let k = key(i);
        if k < best_key {
            best = i;
            best_key = k;
            tied = 1;
        } else if k == best_key {
            tied += 1;
            if rng.random_range(0..tied) == 0 {
                best = i;
            }
        }
    }
    (best, tied)
}

/// Cycle through the candidates.
#[derive(Clone, Debug, Default)]
pub struct RoundRobin {
    next: u64,
}

impl Policy for RoundRobin {
    fn name(&self) -> &'static str {
        "round-robin"
    }
    fn choose(&mut self, _: &RequestInfo, c: &[Candidate]) -> Result<Decision, RouteError> {
        if c.is_empty() {
            return Err(RouteError::NoCandidates);
        }
        let turn = self.next;
        self.next = self.next.wrapping_add(1);
        let i = (turn % c.len() as u64) as usize;
        Ok(decide(
            self.name(),
            i,
            Reason::RoundRobin { turn },
            c,
            scored(c),
        ))
    }
}

/// Uniformly random (seeded).
#[derive(Clone, Debug)]
pub struct RandomPolicy {
    rng: ChaCha8Rng,
}

impl RandomPolicy {
    /// Seeded.
    pub fn new(seed: u64) -> Self {
        Self {
            rng: ChaCha8Rng::seed_from_u64(seed),
        }
    }
}

impl Policy for RandomPolicy {
    fn name(&self) -> &'static str {
        "random"
    }
    fn choose(&mut self, _: &RequestInfo, c: &[Candidate]) -> Result<Decision, RouteError> {
        if c.is_empty() {
            return Err(RouteError::NoCandidates);
        }
        let i = self.rng.random_range(0..c.len());
        Ok(decide(self.name(), i, Reason::Random, c, scored(c)))
    }
}

/// Fewest active requests; ties: fewest active blocks, then random.
#[derive(Clone, Debug)]
pub struct LeastLoad {
    rng: ChaCha8Rng,
}

impl LeastLoad {
    /// Seeded (for tie-breaks).
    pub fn new(seed: u64) -> Self {
        Self {
            rng: ChaCha8Rng::seed_from_u64(seed),
        }
    }
}

impl Policy for LeastLoad {
    fn name(&self) -> &'static str {
        "least-load"
    }
    fn choose(&mut self, _: &RequestInfo, c: &[Candidate]) -> Result<Decision, RouteError> {
        if c.is_empty() {
            return Err(RouteError::NoCandidates);
        }
        let (i, tied) = argmin_random_tie(c.len(), &mut self.rng, |i| {
            (c[i].load.active_requests, c[i].load.active_blocks)
        });
        let reason = if c.len() == 1 {
            Reason::Only
        } else {
            Reason::LeastLoad { tied }
        };
        Ok(decide(self.name(), i, reason, c, scored(c)))
    }
}

/// Two distinct random candidates; the less loaded (by [`LoadSnapshot::key`]) wins.
#[derive(Clone, Debug)]
pub struct PowerOfTwo {
    rng: ChaCha8Rng,
}

impl PowerOfTwo {
    /// Seeded.
    pub fn new(seed: u64) -> Self {
        Self {
            rng: ChaCha8Rng::seed_from_u64(seed),
        }
    }
}

impl Policy for PowerOfTwo {
    fn name(&self) -> &'static str {
        "power-of-two"
    }
    fn choose(&mut self, _: &RequestInfo, c: &[Candidate]) -> Result<Decision, RouteError> {
        match c.len() {
            0 => Err(RouteError::NoCandidates),
            1 => Ok(decide(self.name(), 0, Reason::Only, c, scored(c))),
            n => {
                let a = self.rng.random_range(0..n);
                let mut b = self.rng.random_range(0..n - 1);
                if b >= a {
                    b += 1;
                }
                let i = if c[b].load.key() < c[a].load.key() {
                    b
                } else {
                    a
                };
                Ok(decide(
                    self.name(),
                    i,
                    Reason::PowerOfTwo { sampled: [a, b] },
                    c,
                    scored(c),
                ))
            }
        }
    }
}

/// KV-cache-aware: cost = `overlap_weight × prefill_blocks + decode_blocks`, where
/// `prefill_blocks = (pending prefill tokens + this request's uncached tokens) / block_size` and
/// `decode_blocks = active blocks + this request's prompt blocks`. Lowest cost wins; at
/// temperature 0 ties go to the lower load ([`LoadSnapshot::key`]), then to a seeded random
/// pick; with temperature T > 0 the worker is sampled with probability ∝ exp(−cost / T).
#[derive(Clone, Debug)]
pub struct KvAware {
    /// Weight of prefill blocks.
    pub overlap_weight: f64,
    /// Softmax temperature in blocks (0 = argmin).
    pub temperature: f64,
    rng: ChaCha8Rng,
}

impl KvAware {
    /// With explicit knobs.
    pub fn new(overlap_weight: f64, temperature: f64, seed: u64) -> Self {
        Self {
            overlap_weight,
            temperature,
            rng: ChaCha8Rng::seed_from_u64(seed),
        }
    }

    /// The cost of sending `req` to `c`.
    pub fn cost(&self, req: &RequestInfo, c: &Candidate) -> f64 {
        kv_cost(self.overlap_weight, req, c)
    }
}

/// `overlap_weight × prefill_blocks + decode_blocks` (see [`KvAware`]).
pub fn kv_cost(overlap_weight: f64, req: &RequestInfo, c: &Candidate) -> f64 {
    let bs = f64::from(req.block_size.max(1));
    let prefill =
        (c.load.prefill_tokens as f64 + req.uncached_tokens(c.overlap_blocks) as f64) / bs;
    let decode = c.load.active_blocks as f64 + req.prompt_blocks() as f64;
    overlap_weight * prefill + decode
}

impl Policy for KvAware {
    fn name(&self) -> &'static str {
        "kv"
    }
    fn choose(&mut self, req: &RequestInfo, c: &[Candidate]) -> Result<Decision, RouteError> {
        if c.is_empty() {
            return Err(RouteError::NoCandidates);
        }
        let mut detail = scored(c);
        let mut min = f64::INFINITY;
        for (s, cand) in detail.iter_mut().zip(c) {
            let cost = self.cost(req, cand);
            min = min.min(cost);
            s.cost = Some(cost);
        }
        let cost_of = |d: &[Scored], i: usize| d[i].cost.unwrap_or(f64::INFINITY);
        if self.temperature > 0.0 && c.len() > 1 {
            // Softmax over -(cost - min)/T: shifting by the minimum keeps exp() in range.
            let mut total = 0.0;
            for s in detail.iter_mut() {
                let w = (-(s.cost.unwrap_or(f64::INFINITY) - min) / self.temperature).exp();
                s.probability = Some(w);
                total += w;
            }
            for s in detail.iter_mut() {
                s.probability = s.probability.map(|w| w / total);
            }
            let mut x = self.rng.random::<f64>();
            let mut pick = c.len() - 1;
            for (i, s) in detail.iter().enumerate() {
                let p = s.probability.unwrap_or(0.0);
                if x < p {
                    pick = i;
                    break;
                }
                x -= p;
            }
            let reason = Reason::Sampled {
                temperature: self.temperature,
            };
            return Ok(decide(self.name(), pick, reason, c, detail));
        }
        // Costs within a relative 1e-9 of each other are equal (float noise, not preference).
        let tol = 1e-9 * min.abs().max(1.0);
        let (i, tied) = argmin_random_tie(c.len(), &mut self.rng, |i| {
            let near_min = cost_of(&detail, i) <= min + tol;
            (!near_min, c[i].load.key())
        });
        let reason = if c.len() == 1 {
            Reason::Only
        } else {
            Reason::LowestCost { tied }
        };
        Ok(decide(self.name(), i, reason, c, detail))
    }
}

/// The policy `config` names, seeded from `config.seed`.
pub fn build_policy(config: &RouterConfig) -> Box<dyn Policy> {
    match config.policy {
        PolicyKind::RoundRobin => Box::new(RoundRobin::default()),
        PolicyKind::Random => Box::new(RandomPolicy::new(config.seed)),
        PolicyKind::LeastLoad => Box::new(LeastLoad::new(config.seed)),
        PolicyKind::PowerOfTwo => Box::new(PowerOfTwo::new(config.seed)),
        PolicyKind::Kv => Box::new(KvAware::new(
            config.overlap_weight,
            config.temperature,
            config.seed,
        )),
    }
}
