//! The engine state machine: continuous batching with chunked prefill, paged KV blocks with
//! prefix caching, preemption, disaggregated roles, and a fast multi-step path.

use std::collections::VecDeque;

use rustc_hash::FxHashMap;
use switchyard_kv::{BlockHash, KvEvent};

use crate::blocks::BlockPool;
use crate::catalog::{Admission, Batching, Catalog, EngineProfile};
use crate::config::{EngineConfig, Role};
use crate::error::EngineError;
use crate::model::{MemoryPlan, ParamCounts, memory_plan};
use crate::perf::{BatchShape, PerfModel};

const GIB: f64 = 1024.0 * 1024.0 * 1024.0;

/// A request as the engine sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    /// Caller-chosen id, unique among the requests the engine currently holds.
    pub id: u64,
    /// Prompt length in tokens (> 0).
    pub prompt_tokens: u32,
    /// Chained hashes of the prompt's FULL engine blocks (`block_size` tokens each), in order;
    /// at most `prompt_tokens / block_size` of them. Fewer (or none) is allowed: only hashed
    /// blocks are prefix-cached.
    pub block_hashes: Vec<BlockHash>,
    /// Output tokens to generate (> 0; the engine generates exactly this many, like
    /// `ignore_eos`). Decode role: including the first token made by the prefill worker
    /// (with [`Engine::admit_local`] this engine makes every token, the first included).
    pub max_output_tokens: u32,
    /// Data-parallel rank to run on; `None` lets the engine pick the least-loaded rank.
    pub dp_rank: Option<u32>,
}

/// What [`Engine::admit`] decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AdmitInfo {
    /// The DP rank (scheduler) the request was placed on.
    pub dp_rank: u32,
    /// Decode role only: `Some(cached_tokens)` when KV blocks were reserved right away, so the
    /// transfer of `prompt_tokens - cached_tokens` tokens may start now. `None`: reservation
    /// comes later, reported in [`StepOutcome::kv_reserved`]. Always `None` for
    /// [`Engine::admit_local`] (nothing is transferred).
    pub kv_reserved: Option<u32>,
}

/// Why a request left the engine.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FinishReason {
    /// Generated `max_output_tokens`.
    Length,
    /// Prefill role: the first token is out; the KV stays allocated until [`Engine::release`].
    PrefillDone,
}

/// A request that finished in this step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Finished {
    pub id: u64,
    pub output_tokens: u32,
    pub reason: FinishReason,
}

/// Decode role: KV blocks were reserved for a request; its transfer may start.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KvReserved {
    pub id: u64,
    pub dp_rank: u32,
    /// Prompt tokens already present in this engine's prefix cache (no need to transfer).
    pub cached_tokens: u32,
}

/// A KV event with the DP rank whose cache it describes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RankedKvEvent {
    pub dp_rank: u32,
    pub event: KvEvent,
}

/// What one engine step did. Tokens listed here are emitted at `end`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct StepOutcome {
    /// When the step started and ended (seconds, caller's epoch).
    pub start: f64,
    pub end: f64,
    /// Tokens computed in the step (prefill chunks + decodes).
    pub scheduled_tokens: u64,
    /// Requests that emitted a non-first token. Only [`Engine::step`] fills this list;
    /// `decoded_count` is always set.
    pub decoded: Vec<u64>,
    pub decoded_count: u32,
    /// Requests that left the waiting queue for the first time (their queueing ended at `start`).
    ///
    /// Decode role: requests whose first client-visible token is emitted at `end` — a
    /// transferred request joining the decode batch, or a locally prefilled one
    /// ([`Engine::admit_local`]) finishing its prefill (also listed in `first_tokens`).
    pub started: Vec<u64>,
    /// Requests whose first output token was emitted.
    pub first_tokens: Vec<u64>,
    /// Requests that finished.
    pub finished: Vec<Finished>,
    /// Requests preempted (KV freed, back to waiting, recomputed later).
    pub preempted: Vec<u64>,
    /// Decode role: reservations made in this step.
    pub kv_reserved: Vec<KvReserved>,
    /// Prefix-cache changes, in order (empty when `kv_events` is off).
    pub kv_events: Vec<RankedKvEvent>,
}

impl StepOutcome {
    pub fn duration(&self) -> f64 {
        self.end - self.start
    }

    /// Whether anything happened that a driver must react to (everything except plain
    /// decode tokens and silent chunk progress).
    pub fn is_visible(&self) -> bool {
        !(self.started.is_empty()
            && self.first_tokens.is_empty()
            && self.finished.is_empty()
            && self.preempted.is_empty()
            && self.kv_reserved.is_empty()
            && self.kv_events.is_empty())
    }

    fn clear(&mut self) {
        self.start = 0.0;
        self.end = 0.0;
        self.scheduled_tokens = 0;
        self.decoded.clear();
        self.decoded_count = 0;
        self.started.clear();
        self.first_tokens.clear();
        self.finished.clear();
        self.preempted.clear();
        self.kv_reserved.clear();
        self.kv_events.clear();
    }
}

/// Result of [`Engine::advance_until`].
#[derive(Clone, Debug, PartialEq)]
pub struct Advance {
    /// Steps executed.
    pub steps: u64,
    /// The engine is busy until this time (end of the last step, or the start time).
    pub time: f64,
    /// The visible step that stopped the run, if that is why it stopped.
    pub outcome: Option<StepOutcome>,
    /// Stopped because there was nothing to run.
    pub idle: bool,
}

/// Instantaneous load, summed over DP ranks.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct EngineLoad {
    /// Sequences being prefilled or decoded.
    pub running: u32,
    /// Sequences waiting to start (incl. preempted ones; decode role: waiting for KV blocks).
    pub waiting: u32,
    /// Decode role: reserved, waiting for the KV transfer (or ready to join).
    pub awaiting_kv: u32,
    /// Prefill role: finished, KV held until released.
    pub held: u32,
    pub kv_blocks_used: u64,
    pub kv_blocks_total: u64,
    /// Prompt tokens not yet computed of waiting and prefilling requests.
    pub pending_prefill_tokens: u64,
}

/// Cumulative counters.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct EngineStats {
    pub steps: u64,
    /// Σ step durations (seconds).
    pub busy_time: f64,
    pub admitted: u64,
    pub finished: u64,
    /// Prompt tokens of started requests, and how many of them hit the prefix cache.
    pub prompt_tokens: u64,
    pub cached_prompt_tokens: u64,
    /// Tokens computed by prefill chunks (incl. recomputation after preemption).
    pub prefill_tokens: u64,
    pub generated_tokens: u64,
    pub preemptions: u64,
}

impl EngineStats {
    /// Fraction of started prompt tokens served from the prefix cache.
    pub fn prefix_hit_rate(&self) -> f64 {
        if self.prompt_tokens == 0 {
            0.0
        } else {
            self.cached_prompt_tokens as f64 / self.prompt_tokens as f64
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum St {
    Waiting,
    Prefilling,
    Decoding,
    AwaitingKv,
    Ready,
    Held,
}

#[derive(Clone, Debug)]
struct Seq {
    id: u64,
    prompt: u32,
    max_out: u32,
    hashes: Vec<BlockHash>,
    blocks: Vec<u32>,
    generated: u32,
    /// Tokens whose KV is computed (stale while decoding: the `Dec` entry is authoritative).
    computed: u32,
    /// Prompt blocks already registered in the prefix cache.
    registered: u32,
    rank: u32,
    order: u64,
    state: St,
    started: bool,
    /// Decode role: prefilled here ([`Engine::admit_local`]) instead of receiving its KV.
    local: bool,
}

/// Hot per-decoding-sequence state, kept contiguous for the decode loop.
#[derive(Clone, Copy, Debug)]
struct Dec {
    id: u64,
    order: u64,
    slot: u32,
    /// Free token slots in the allocated blocks.
    room: u32,
    /// Tokens still to emit.
    remaining: u32,
    /// Computed tokens (attention length of the next decode = ctx + 1).
    ctx: u32,
}

#[derive(Clone, Debug)]
struct Rank {
    pool: BlockPool,
    waiting: VecDeque<u32>,
    prefilling: Vec<u32>,
    /// Decoding sequences, sorted by admission order (newest last).
    dec: Vec<Dec>,
    ready: VecDeque<u32>,
    awaiting: u32,
    held: u32,
    /// Running sums over `dec`: Σ(ctx+1), and for sparse attention the unsaturated part.
    dec_sum: u64,
    unsat_n: u32,
    unsat_sum: u64,
    events: Vec<KvEvent>,
    done: Vec<u32>,
    /// Σ (prompt + generated − computed) over sequences this rank still has to prefill
    /// (waiting and prefilling; recomputes included; decode-role reservations excluded).
    pending: u64,
    /// Last prefix lookup of a waiting head: (slot, pool epoch, hash limit) -> (hit, free
    /// hits). A head blocked on KV is re-examined every step; with long prompts the lookup
    /// would cost thousands of hash probes per step.
    memo: Option<(u32, u64, usize, usize, u32)>,
}

/// Fill in the engine's defaults for the limits a configuration leaves open: the device tier's
/// `max_num_seqs` (never above the token budget, as vLLM caps it) and
/// `max_num_batched_tokens` (split across DP ranks where the engine does so).
fn resolve_limits(
    cfg: &EngineConfig,
    gpu: &crate::catalog::GpuSpec,
    prof: &EngineProfile,
) -> EngineConfig {
    let d = &prof.defaults;
    let lim = d.limits_for(gpu.memory_gib);
    let mut c = cfg.clone();
    let budget = *c
        .max_num_batched_tokens
        .get_or_insert(if d.budget_per_dp_rank {
            (lim.max_num_batched_tokens / cfg.dp.max(1)).max(1)
        } else {
            lim.max_num_batched_tokens
        });
    c.max_num_seqs.get_or_insert(lim.max_num_seqs.min(budget));
    c
}

/// One simulated engine worker (one scheduler per DP rank, stepping in lockstep).
#[derive(Clone, Debug)]
pub struct Engine {
    cfg: EngineConfig,
    profile: EngineProfile,
    plan: MemoryPlan,
    perf: PerfModel,
    description: String,
    max_len: u32,
    bs: u32,
    sparse_k: u32,
    kv_bytes_per_token: u64,
    ranks: Vec<Rank>,
    shapes: Vec<BatchShape>,
    slab: Vec<Option<Seq>>,
    free_slots: Vec<u32>,
    ids: FxHashMap<u64, u32>,
    next_order: u64,
    busy_until: f64,
    out: StepOutcome,
    pending: Vec<RankedKvEvent>,
    stats: EngineStats,
}

fn fmt_int(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, ch) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

impl Engine {
    /// Build an engine from the catalog. Validates names, knobs, parallelism and memory.
    pub fn new(catalog: &Catalog, cfg: &EngineConfig) -> Result<Engine, EngineError> {
        let gpu = catalog.gpu(&cfg.gpu)?;
        let model = catalog.model(&cfg.model)?;
        let profile = catalog.engine(&cfg.engine)?.clone();
        let bad = |s: String| Err(EngineError::InvalidConfig(s));
        cfg.check_bounds()
            .map_err(|e| EngineError::InvalidConfig(e.message))?;
        let cfg = &resolve_limits(cfg, gpu, &profile);
        if cfg.tp > gpu.nvlink_domain {
            return bad(format!(
                "tp {} exceeds the {}-GPU NVLink domain of {}: tensor parallelism across NVLink domains is not modelled (use dp/ep for wide expert parallelism, or more workers)",
                cfg.tp, gpu.nvlink_domain, gpu.name
            ));
        }
        if cfg.seq_limit() == 0 {
            return bad("max_num_seqs must be >= 1".into());
        }
        if cfg.token_budget() < cfg.seq_limit() {
            return bad(format!(
                "max_num_batched_tokens ({}) must be >= max_num_seqs ({}) so every running sequence can decode each step",
                cfg.token_budget(),
                cfg.seq_limit()
            ));
        }
        if let Some(f) = cfg.memory_fraction
            && !(f > 0.0 && f <= 1.0)
        {
            return bad(format!("memory_fraction must be in (0, 1], got {f}"));
        }
        let max_len = cfg.max_model_len.unwrap_or(model.max_context);
        if max_len == 0 || max_len > model.max_context {
            return bad(format!(
                "max_model_len {max_len} must be in 1..={} ({}'s context length)",
                model.max_context, model.name
            ));
        }
        if let Some(g) = &model.gqa {
            if g.q_heads % cfg.tp != 0 {
                return Err(EngineError::DoesNotFit(format!(
                    "TP{} does not divide {}'s {} query heads",
                    cfg.tp, model.name, g.q_heads
                )));
            }
            if !g.kv_heads.is_multiple_of(cfg.tp) && !cfg.tp.is_multiple_of(g.kv_heads) {
                return Err(EngineError::DoesNotFit(format!(
                    "TP{} and {}'s {} KV heads: one must divide the other",
                    cfg.tp, model.name, g.kv_heads
                )));
            }
        }
        if let Some(a) = &model.mla
            && a.heads % cfg.tp != 0
        {
            return Err(EngineError::DoesNotFit(format!(
                "TP{} does not divide {}'s {} attention heads",
                cfg.tp, model.name, a.heads
            )));
        }
        match &model.moe {
            None => {
                if cfg.dp > 1 || cfg.ep > 1 {
                    return bad(format!(
                        "{} is a dense model: data-parallel attention (dp={}) and expert parallel (ep={}) apply to MoE models; run separate workers instead",
                        model.name, cfg.dp, cfg.ep
                    ));
                }
            }
            Some(e) => {
                let g = cfg.gpus();
                if !g.is_multiple_of(cfg.ep) {
                    return Err(EngineError::DoesNotFit(format!(
                        "EP{} does not divide the worker's {} GPUs (tp {} x dp {})",
                        cfg.ep, g, cfg.tp, cfg.dp
                    )));
                }
                if e.experts % cfg.ep != 0 {
                    return Err(EngineError::DoesNotFit(format!(
                        "EP{} does not divide {}'s {} routed experts",
                        cfg.ep, model.name, e.experts
                    )));
                }
            }
        }
        let mut plan = memory_plan(gpu, model, cfg, &profile);
        if let Some(n) = cfg.num_gpu_blocks_override {
            if n == 0 {
                return bad("num_gpu_blocks_override must be >= 1".into());
            }
            plan.blocks_per_rank = n;
            plan.tokens_per_rank = n as u64 * cfg.block_size as u64;
        }
        let worker_blocks = plan.blocks_per_rank as u64 * cfg.dp as u64;
        if plan.blocks_per_rank > crate::blocks::MAX_BLOCKS
            || worker_blocks > crate::config::limits::MAX_BLOCKS_PER_WORKER
        {
            return bad(format!(
                "{} KV blocks per worker ({} per scheduler x dp {}) exceed the supported {} (raise block_size)",
                fmt_int(worker_blocks),
                fmt_int(plan.blocks_per_rank as u64),
                cfg.dp,
                fmt_int(crate::config::limits::MAX_BLOCKS_PER_WORKER)
            ));
        }
        let par = format!("TP{} DP{} EP{}", cfg.tp, cfg.dp, cfg.ep);
        if plan.kv_bytes <= 0.0 || plan.blocks_per_rank == 0 {
            return Err(EngineError::DoesNotFit(format!(
                "{} {} on {}x {} ({par}): weights {:.1} GiB/GPU + activations {:.1} GiB + reserve {:.1} GiB leave {:.2} GiB for the KV cache ({}: budget {:.1} of {:.1} GiB)",
                model.name,
                cfg.weight_dtype.name(),
                cfg.gpus(),
                gpu.name,
                plan.weight_bytes / GIB,
                plan.activation_bytes / GIB,
                plan.reserve_bytes / GIB,
                plan.kv_bytes / GIB,
                profile.name,
                plan.budget_bytes / GIB,
                gpu.memory_gib,
            )));
        }
        if profile.defaults.refuse_short_kv
            && cfg.num_gpu_blocks_override.is_none()
            && plan.tokens_per_rank < max_len as u64
        {
            // vLLM V1 refuses to start when one request of max_model_len does not fit.
            return Err(EngineError::DoesNotFit(format!(
                "{} {} on {}x {} ({par}): the KV cache holds {} tokens per scheduler, fewer than max_model_len {max_len}; {} would not start (lower max_model_len, or use more GPUs or FP8 KV)",
                model.name,
                cfg.weight_dtype.name(),
                cfg.gpus(),
                gpu.name,
                fmt_int(plan.tokens_per_rank),
                profile.name,
            )));
        }
        let perf = PerfModel::new(gpu, model, cfg, &profile, catalog.kernels(&gpu.name));
        let params = ParamCounts::of(model);
        let role = match cfg.role {
            Role::Aggregated => "aggregated",
            Role::Prefill => "prefill",
            Role::Decode => "decode",
        };
        let description = format!(
            "{} {} (KV {}, {:.0}B params) on {}x {} {par}, {} {role}: weights {:.1} GiB/GPU, KV {:.1} GiB/GPU = {} tokens ({} blocks of {}) per scheduler x {} = {} tokens",
            model.name,
            cfg.weight_dtype.name(),
            cfg.kv_dtype.name(),
            params.total() / 1e9,
            cfg.gpus(),
            gpu.name,
            profile.name,
            plan.weight_bytes / GIB,
            plan.kv_bytes / GIB,
            fmt_int(plan.tokens_per_rank),
            fmt_int(plan.blocks_per_rank as u64),
            cfg.block_size,
            cfg.dp,
            fmt_int(plan.tokens_per_rank * cfg.dp as u64),
        );
        let sparse_k = model.dsa.as_ref().map(|d| d.top_k).unwrap_or(u32::MAX);
        let ranks = (0..cfg.dp)
            .map(|_| Rank {
                pool: BlockPool::new(plan.blocks_per_rank),
                waiting: VecDeque::new(),
                prefilling: Vec::new(),
                dec: Vec::new(),
                ready: VecDeque::new(),
                awaiting: 0,
                held: 0,
                dec_sum: 0,
                unsat_n: 0,
                unsat_sum: 0,
                events: Vec::new(),
                done: Vec::new(),
                pending: 0,
                memo: None,
            })
            .collect();
        Ok(Engine {
            cfg: cfg.clone(),
            profile,
            plan,
            perf,
            description,
            max_len,
            bs: cfg.block_size,
            sparse_k,
            kv_bytes_per_token: crate::model::kv_bytes_per_token(model, cfg.kv_dtype),
            ranks,
            shapes: vec![BatchShape::default(); cfg.dp as usize],
            slab: Vec::new(),
            free_slots: Vec::new(),
            ids: FxHashMap::default(),
            next_order: 0,
            busy_until: f64::NEG_INFINITY,
            out: StepOutcome::default(),
            pending: Vec::new(),
            stats: EngineStats::default(),
        })
    }

    /// One line: model, hardware, parallelism, KV capacity.
    pub fn description(&self) -> &str {
        &self.description
    }
    pub fn config(&self) -> &EngineConfig {
        &self.cfg
    }
    pub fn profile(&self) -> &EngineProfile {
        &self.profile
    }
    pub fn memory_plan(&self) -> &MemoryPlan {
        &self.plan
    }
    pub fn perf_model(&self) -> &PerfModel {
        &self.perf
    }
    /// Host memory this engine's simulator state takes at most, in bytes (its KV pools; see
    /// [`crate::config::limits::POOL_BYTES_PER_BLOCK`]): what a fleet of clones will need.
    pub fn host_bytes_estimate(&self) -> u64 {
        self.kv_capacity_blocks() * crate::config::limits::POOL_BYTES_PER_BLOCK
            + std::mem::size_of::<Engine>() as u64
    }
    /// Number of schedulers (DP ranks).
    pub fn dp_ranks(&self) -> u32 {
        self.cfg.dp
    }
    /// KV capacity of the whole worker in tokens (all DP ranks).
    pub fn kv_capacity_tokens(&self) -> u64 {
        self.plan.tokens_per_rank * self.cfg.dp as u64
    }
    /// KV capacity of the whole worker in blocks (all DP ranks).
    pub fn kv_capacity_blocks(&self) -> u64 {
        self.plan.blocks_per_rank as u64 * self.cfg.dp as u64
    }
    /// KV bytes of one token of the whole model (all layers and heads, unsharded, DSA indexer
    /// included): what a disaggregated KV transfer moves per token.
    pub fn kv_bytes_per_token(&self) -> u64 {
        self.kv_bytes_per_token
    }
    /// Tokens per KV block.
    pub fn block_size(&self) -> u32 {
        self.bs
    }
    /// Effective context cap (prompt + output).
    pub fn max_model_len(&self) -> u32 {
        self.max_len
    }
    /// End of the last step (or −∞ before the first).
    pub fn busy_until(&self) -> f64 {
        self.busy_until
    }
    pub fn stats(&self) -> &EngineStats {
        &self.stats
    }
    /// Drop the whole prefix cache (blocks in use stay allocated but private); emits
    /// `AllCleared` per rank with the next step.
    pub fn reset_prefix_cache(&mut self) {
        for (r, rank) in self.ranks.iter_mut().enumerate() {
            rank.pool.clear_cache();
            if self.cfg.kv_events {
                self.pending.push(RankedKvEvent {
                    dp_rank: r as u32,
                    event: KvEvent::AllCleared,
                });
            }
        }
    }

    /// The caller names blocks by grouped ids ([`switchyard_kv::grouped`], as the simulator
    /// does): lay the prefix caches out for them. Behaviour is unchanged; runs of blocks get
    /// cheaper.
    pub fn use_grouped_block_ids(&mut self) {
        for r in &mut self.ranks {
            r.pool.use_grouped_ids();
        }
    }

    /// Turn KV event production on or off at runtime.
    pub fn set_kv_events(&mut self, on: bool) {
        self.cfg.kv_events = on;
    }

    /// Current load over all DP ranks.
    pub fn load(&self) -> EngineLoad {
        let mut l = EngineLoad::default();
        for r in 0..self.ranks.len() {
            let x = self.rank_load(r as u32);
            l.running += x.running;
            l.waiting += x.waiting;
            l.awaiting_kv += x.awaiting_kv;
            l.held += x.held;
            l.kv_blocks_used += x.kv_blocks_used;
            l.kv_blocks_total += x.kv_blocks_total;
            l.pending_prefill_tokens += x.pending_prefill_tokens;
        }
        l
    }

    /// Load of one DP rank (zeros for an out-of-range rank).
    pub fn rank_load(&self, rank: u32) -> EngineLoad {
        let Some(r) = self.ranks.get(rank as usize) else {
            return EngineLoad::default();
        };
        EngineLoad {
            running: (r.dec.len() + r.prefilling.len()) as u32,
            waiting: r.waiting.len() as u32,
            awaiting_kv: r.awaiting + r.ready.len() as u32,
            held: r.held,
            kv_blocks_used: (r.pool.total() - r.pool.free()) as u64,
            kv_blocks_total: r.pool.total() as u64,
            pending_prefill_tokens: r.pending,
        }
    }

    /// Internal consistency check (running sums vs. a recount, block accounting). For tests.
    #[doc(hidden)]
    pub fn check_invariants(&self) -> Result<(), String> {
        let k = self.sparse_k as u64;
        for (i, r) in self.ranks.iter().enumerate() {
            let sum: u64 = r.dec.iter().map(|d| d.ctx as u64 + 1).sum();
            let unsat: Vec<u64> = r
                .dec
                .iter()
                .map(|d| d.ctx as u64 + 1)
                .filter(|&a| a < k)
                .collect();
            if sum != r.dec_sum
                || unsat.len() as u32 != r.unsat_n
                || unsat.iter().sum::<u64>() != r.unsat_sum
            {
                return Err(format!(
                    "rank {i}: running sums ({}, {}, {}) != recount ({sum}, {}, {})",
                    r.dec_sum,
                    r.unsat_n,
                    r.unsat_sum,
                    unsat.len(),
                    unsat.iter().sum::<u64>()
                ));
            }
            if r.dec.windows(2).any(|w| w[0].order >= w[1].order) {
                return Err(format!("rank {i}: decode list not in admission order"));
            }
            let mut held_blocks = 0u64;
            for s in self.slab.iter().flatten().filter(|s| s.rank as usize == i) {
                held_blocks += s.blocks.len() as u64;
            }
            let used = (r.pool.total() - r.pool.free()) as u64;
            let pending: u64 = r
                .waiting
                .iter()
                .chain(r.prefilling.iter())
                .filter_map(|&s| self.slab[s as usize].as_ref())
                .filter(|q| self.cfg.role != Role::Decode || q.generated > 0 || q.local)
                .map(|q| (q.prompt + q.generated - q.computed) as u64)
                .sum();
            if let Some((slot, epoch, len, hit, free_hits)) = r.memo
                && epoch == r.pool.epoch()
            {
                let q = self.slab[slot as usize]
                    .as_ref()
                    .ok_or(format!("rank {i}: memo for a freed slot {slot}"))?;
                let fresh = r.pool.lookup(&q.hashes[..len.min(q.hashes.len())]);
                if fresh != (hit, free_hits) {
                    return Err(format!(
                        "rank {i}: stale prefix memo {:?} != {fresh:?}",
                        (hit, free_hits)
                    ));
                }
            }
            if pending != r.pending {
                return Err(format!(
                    "rank {i}: pending prefill {} != recount {pending}",
                    r.pending
                ));
            }
            if held_blocks < used {
                return Err(format!(
                    "rank {i}: {used} blocks in use but requests hold {held_blocks}"
                ));
            }
        }
        Ok(())
    }

    /// Step duration the model predicts for hypothetical batches (one shape per DP rank).
    pub fn step_time(&self, shapes: &[BatchShape]) -> f64 {
        self.perf.step_time(shapes)
    }

    /// Longest cached prefix (in tokens) of these block hashes on a DP rank.
    pub fn cached_prefix_tokens(&self, rank: u32, hashes: &[BlockHash]) -> u32 {
        match self.ranks.get(rank as usize) {
            Some(r) if self.cfg.prefix_caching => r.pool.lookup(hashes).0 as u32 * self.bs,
            _ => 0,
        }
    }

    fn blocks_for(&self, tokens: u64) -> u64 {
        tokens.div_ceil(self.bs as u64)
    }

    /// Prompt length and DP rank of a request the engine holds.
    pub fn request_placement(&self, id: u64) -> Option<(u32, u32)> {
        let slot = *self.ids.get(&id)?;
        self.slab[slot as usize]
            .as_ref()
            .map(|s| (s.prompt, s.rank))
    }

    /// Accept a request at time `now`. Rejects (without side effects) requests that are
    /// malformed, exceed the context length, or could never fit in one scheduler's KV cache.
    pub fn admit(&mut self, req: Request, now: f64) -> Result<AdmitInfo, EngineError> {
        self.admit_inner(req, now, false)
    }

    /// Accept a request that this engine prefills itself and then decodes, exactly like an
    /// aggregated engine would: prefix-cache reuse, chunked prefill within the token budget
    /// (FCFS with the other waiting requests), then decoding. This is conditional
    /// disaggregation's local path on a decode-role engine: no KV reservation and no
    /// [`Engine::kv_arrived`]; `max_output_tokens` counts every output token, the first one
    /// included (it is made here). The first token is reported in `first_tokens` and — the
    /// decode role's "first client-visible token" signal — in `started` of the step that ends
    /// the prefill. On an aggregated engine this is [`Engine::admit`]; a prefill-role engine
    /// rejects it (it never decodes).
    pub fn admit_local(&mut self, req: Request, now: f64) -> Result<AdmitInfo, EngineError> {
        match self.cfg.role {
            Role::Prefill => Err(EngineError::Rejected {
                id: req.id,
                reason: "a prefill-role engine does not decode: admit it with `admit`".into(),
            }),
            Role::Aggregated => self.admit_inner(req, now, false),
            Role::Decode => self.admit_inner(req, now, true),
        }
    }

    fn admit_inner(
        &mut self,
        req: Request,
        now: f64,
        local: bool,
    ) -> Result<AdmitInfo, EngineError> {
        let _ = now;
        let id = req.id;
        let reject = |reason: String| Err(EngineError::Rejected { id, reason });
        if self.ids.contains_key(&id) {
            return reject("duplicate request id".into());
        }
        if req.prompt_tokens == 0 {
            return reject("empty prompt".into());
        }
        if req.max_output_tokens == 0 {
            return reject("max_output_tokens must be >= 1".into());
        }
        if self.cfg.role == Role::Decode && !local && req.max_output_tokens < 2 {
            return reject("a decode-role engine needs max_output_tokens >= 2 (the prefill worker made the first)".into());
        }
        let full_blocks = req.prompt_tokens / self.bs;
        if req.block_hashes.len() as u64 > full_blocks as u64 {
            return reject(format!(
                "{} block hashes for a {}-token prompt: at most {} full blocks of {}",
                req.block_hashes.len(),
                req.prompt_tokens,
                full_blocks,
                self.bs
            ));
        }
        let total = req.prompt_tokens as u64 + req.max_output_tokens as u64;
        if total > self.max_len as u64 {
            return reject(format!(
                "prompt {} + max output {} = {total} tokens exceeds the context length {}",
                req.prompt_tokens, req.max_output_tokens, self.max_len
            ));
        }
        // A prefill-role engine only ever holds the prompt.
        let held = if self.cfg.role == Role::Prefill {
            req.prompt_tokens as u64
        } else {
            total
        };
        let need = self.blocks_for(held);
        if need > self.plan.blocks_per_rank as u64 {
            return reject(format!(
                "needs {need} KV blocks ({held} tokens) but one scheduler holds only {} blocks ({} tokens)",
                self.plan.blocks_per_rank, self.plan.tokens_per_rank
            ));
        }
        let rank = match req.dp_rank {
            Some(r) if r >= self.cfg.dp => {
                return reject(format!(
                    "dp_rank {r} out of range (engine has {} ranks)",
                    self.cfg.dp
                ));
            }
            Some(r) => r,
            None => self.pick_rank(),
        };
        let seq = Seq {
            id,
            prompt: req.prompt_tokens,
            max_out: req.max_output_tokens,
            hashes: req.block_hashes,
            blocks: Vec::new(),
            generated: 0,
            computed: 0,
            registered: 0,
            rank,
            order: 0,
            state: St::Waiting,
            started: false,
            local,
        };
        let slot = match self.free_slots.pop() {
            Some(s) => {
                self.slab[s as usize] = Some(seq);
                s
            }
            None => {
                self.slab.push(Some(seq));
                (self.slab.len() - 1) as u32
            }
        };
        self.ids.insert(id, slot);
        self.stats.admitted += 1;
        let mut kv_reserved = None;
        if self.cfg.role == Role::Decode && !local && self.ranks[rank as usize].waiting.is_empty() {
            kv_reserved = self.try_reserve(rank as usize, slot);
        }
        if kv_reserved.is_none() {
            let rk = &mut self.ranks[rank as usize];
            rk.waiting.push_back(slot);
            if self.cfg.role != Role::Decode || local {
                rk.pending += req.prompt_tokens as u64;
            }
        }
        Ok(AdmitInfo {
            dp_rank: rank,
            kv_reserved,
        })
    }

    /// Least-loaded rank (running + waiting + awaiting), lowest index on ties.
    fn pick_rank(&self) -> u32 {
        let mut best = 0;
        let mut best_load = usize::MAX;
        for (i, r) in self.ranks.iter().enumerate() {
            let l = r.dec.len()
                + r.prefilling.len()
                + r.waiting.len()
                + r.ready.len()
                + r.awaiting as usize;
            if l < best_load {
                best = i;
                best_load = l;
            }
        }
        best as u32
    }

    /// Decode role: reserve blocks for a waiting request if possible.
    fn try_reserve(&mut self, r: usize, slot: u32) -> Option<u32> {
        let bs = self.bs;
        let seq = self.slab[slot as usize].as_ref()?;
        let total = match self.profile.admission {
            Admission::ReserveFull => seq.prompt + seq.max_out,
            Admission::OnDemand => seq.prompt + 1,
        };
        let rank = &mut self.ranks[r];
        let (hit, free_hits) = if self.cfg.prefix_caching {
            memo_lookup(rank, slot, &seq.hashes)
        } else {
            (0, 0)
        };
        let need = total.div_ceil(bs) - hit as u32;
        if rank.pool.free() < need + free_hits {
            return None;
        }
        let seq = self.slab[slot as usize].as_mut()?;
        let ev = if self.cfg.kv_events {
            Some(&mut rank.events)
        } else {
            None
        };
        for h in &seq.hashes[..hit] {
            seq.blocks.push(rank.pool.acquire_cached(*h));
        }
        // Enough blocks: checked above (prefix hits on free blocks leave the free queue).
        rank.pool.alloc_n(need, &mut seq.blocks, ev);
        seq.computed = hit as u32 * bs;
        seq.registered = hit as u32;
        seq.state = St::AwaitingKv;
        seq.started = true;
        rank.awaiting += 1;
        self.stats.prompt_tokens += seq.prompt as u64;
        self.stats.cached_prompt_tokens += seq.computed as u64;
        Some(seq.computed)
    }

    /// Decode role: the KV of a reserved request is now present (transfer complete). It joins
    /// the decode batch at the next step; its prompt blocks enter the prefix cache.
    pub fn kv_arrived(&mut self, id: u64, now: f64) -> Result<(), EngineError> {
        let _ = now;
        let slot = *self.ids.get(&id).ok_or(EngineError::BadRequestState {
            id,
            reason: "unknown request".into(),
        })?;
        let seq = self.slab[slot as usize]
            .as_mut()
            .ok_or(EngineError::BadRequestState {
                id,
                reason: "unknown request".into(),
            })?;
        if seq.state != St::AwaitingKv {
            return Err(EngineError::BadRequestState {
                id,
                reason: format!(
                    "kv_arrived in state {:?} (expected a KV reservation)",
                    seq.state
                ),
            });
        }
        let r = seq.rank as usize;
        let rank = &mut self.ranks[r];
        seq.computed = seq.prompt;
        seq.generated = 1;
        seq.state = St::Ready;
        let full = (seq.prompt / self.bs).min(seq.hashes.len() as u32);
        if self.cfg.prefix_caching {
            let mut evs = Vec::new();
            register_blocks(
                &mut rank.pool,
                seq,
                full,
                self.cfg.kv_events.then_some(&mut evs),
            );
            self.pending
                .extend(evs.into_iter().map(|event| RankedKvEvent {
                    dp_rank: r as u32,
                    event,
                }));
        }
        rank.awaiting -= 1;
        rank.ready.push_back(slot);
        Ok(())
    }

    /// Prefill role: the KV of a finished request has been transferred; free its blocks (they
    /// stay in the prefix cache until evicted).
    pub fn release(&mut self, id: u64) -> Result<(), EngineError> {
        let slot = *self.ids.get(&id).ok_or(EngineError::BadRequestState {
            id,
            reason: "unknown request".into(),
        })?;
        let held = self.slab[slot as usize]
            .as_ref()
            .is_some_and(|s| s.state == St::Held);
        if !held {
            return Err(EngineError::BadRequestState {
                id,
                reason: "release of a request that is not holding KV after prefill".into(),
            });
        }
        let r = self.slab[slot as usize]
            .as_ref()
            .map(|s| s.rank)
            .unwrap_or(0) as usize;
        self.ranks[r].held -= 1;
        self.remove(slot);
        Ok(())
    }

    /// Drop a request in any state (client went away); frees its KV. Returns whether it existed.
    pub fn abort(&mut self, id: u64) -> bool {
        let Some(&slot) = self.ids.get(&id) else {
            return false;
        };
        let Some(seq) = self.slab[slot as usize].as_ref() else {
            return false;
        };
        let (r, state) = (seq.rank as usize, seq.state);
        let to_prefill = (seq.prompt + seq.generated - seq.computed) as u64;
        let counted = self.cfg.role != Role::Decode || seq.generated > 0 || seq.local;
        let k = self.sparse_k;
        let rank = &mut self.ranks[r];
        if counted && matches!(state, St::Waiting | St::Prefilling) {
            rank.pending -= to_prefill;
        }
        match state {
            St::Waiting => rank.waiting.retain(|&s| s != slot),
            St::Prefilling => rank.prefilling.retain(|&s| s != slot),
            St::Decoding => {
                if let Some(i) = rank.dec.iter().position(|d| d.slot == slot) {
                    let d = rank.dec.remove(i);
                    sub_dec(rank, d.ctx, k);
                }
            }
            St::AwaitingKv => rank.awaiting -= 1,
            St::Ready => rank.ready.retain(|&s| s != slot),
            St::Held => rank.held -= 1,
        }
        self.remove(slot);
        true
    }

    /// Free a request's blocks (reverse order, so its tail is evicted first) and its slot.
    fn remove(&mut self, slot: u32) {
        if let Some(seq) = self.slab[slot as usize].take() {
            for r in &mut self.ranks {
                if r.memo.is_some_and(|m| m.0 == slot) {
                    r.memo = None;
                }
            }
            self.ranks[seq.rank as usize]
                .pool
                .release_all_rev(&seq.blocks);
            self.ids.remove(&seq.id);
            self.free_slots.push(slot);
        }
    }

    /// Run one step starting at `max(now, busy_until)`. With nothing to run, returns an empty
    /// outcome with `end == start` and changes nothing.
    pub fn step(&mut self, now: f64) -> StepOutcome {
        let start = now.max(self.busy_until);
        self.step_core(start, true);
        std::mem::take(&mut self.out)
    }

    /// Run steps back to back from `max(now, busy_until)` while they start before `t_limit`,
    /// stopping after the first visible step ([`StepOutcome::is_visible`]) or when idle.
    /// Bit-identical to calling [`Engine::step`] with each previous step's end.
    pub fn advance_until(&mut self, now: f64, t_limit: f64) -> Advance {
        self.advance_bounded(now, t_limit, u64::MAX)
    }

    /// [`Engine::advance_until`] that also stops after `max_steps` steps (e.g. to report
    /// progress, or to bound the work per call).
    pub fn advance_bounded(&mut self, now: f64, t_limit: f64, max_steps: u64) -> Advance {
        self.advance_inner(now, t_limit, max_steps, None)
    }

    /// [`Engine::advance_until`] that also appends every executed step's end time to
    /// `step_ends` (8 bytes per step). Every decoding request emits a token at each of these
    /// times, so a driver can derive per-token gaps (ITL) without stopping at every step.
    pub fn advance_recording(
        &mut self,
        now: f64,
        t_limit: f64,
        step_ends: &mut Vec<f64>,
    ) -> Advance {
        self.advance_inner(now, t_limit, u64::MAX, Some(step_ends))
    }

    fn advance_inner(
        &mut self,
        now: f64,
        t_limit: f64,
        max_steps: u64,
        mut rec: Option<&mut Vec<f64>>,
    ) -> Advance {
        let mut t = now.max(self.busy_until);
        let mut steps = 0;
        loop {
            if t >= t_limit || steps >= max_steps {
                return Advance {
                    steps,
                    time: t,
                    outcome: None,
                    idle: false,
                };
            }
            if !self.step_core(t, false) {
                return Advance {
                    steps,
                    time: t,
                    outcome: None,
                    idle: true,
                };
            }
            steps += 1;
            t = self.out.end;
            if let Some(v) = rec.as_deref_mut()
                && self.out.scheduled_tokens > 0
            {
                v.push(t);
            }
            if self.out.is_visible() {
                return Advance {
                    steps,
                    time: t,
                    outcome: Some(std::mem::take(&mut self.out)),
                    idle: false,
                };
            }
        }
    }

    /// One step. Returns false when there was nothing to do (no state change).
    fn step_core(&mut self, start: f64, collect: bool) -> bool {
        self.out.clear();
        self.out.start = start;
        self.out.kv_events.append(&mut self.pending);
        for r in 0..self.ranks.len() {
            self.schedule_rank(r, collect);
        }
        let mut tokens = 0;
        for s in &self.shapes {
            tokens += s.tokens();
        }
        self.out.scheduled_tokens = tokens;
        let dur = if tokens > 0 {
            self.perf.step_time(&self.shapes)
        } else {
            0.0
        };
        self.out.end = start + dur;
        if tokens == 0 && !self.out.is_visible() {
            return false;
        }
        if tokens > 0 {
            self.busy_until = self.out.end;
            self.stats.steps += 1;
            self.stats.busy_time += dur;
        }
        true
    }

    fn schedule_rank(&mut self, r: usize, collect: bool) {
        self.shapes[r] = BatchShape::default();
        if self.cfg.role == Role::Decode {
            self.decode_role_intake(r);
        }
        match self.profile.batching {
            Batching::Mixed => {
                self.decode_phase(r, collect);
                self.prefill_phase(r, collect);
            }
            Batching::PrefillFirst => {
                self.prefill_phase(r, collect);
                if self.shapes[r].prefill_chunks == 0 {
                    self.decode_phase(r, collect);
                }
            }
        }
        // Free finished requests after scheduling (the engine frees after the forward pass).
        let done = std::mem::take(&mut self.ranks[r].done);
        for &slot in &done {
            self.remove(slot);
        }
        let mut done = done;
        done.clear();
        self.ranks[r].done = done;
        let rank = &mut self.ranks[r];
        if !rank.events.is_empty() {
            self.out
                .kv_events
                .extend(rank.events.drain(..).map(|event| RankedKvEvent {
                    dp_rank: r as u32,
                    event,
                }));
        }
    }

    /// Decode role: ready requests join the batch; waiting ones get KV reservations (FCFS).
    fn decode_role_intake(&mut self, r: usize) {
        let k = self.sparse_k;
        loop {
            let rank = &self.ranks[r];
            if rank.dec.len() + rank.prefilling.len() >= self.cfg.seq_limit() as usize {
                break;
            }
            let Some(slot) = self.ranks[r].ready.pop_front() else {
                break;
            };
            let Some(seq) = self.slab[slot as usize].as_mut() else {
                continue;
            };
            seq.state = St::Decoding;
            seq.order = self.next_order;
            self.next_order += 1;
            let d = Dec {
                id: seq.id,
                order: seq.order,
                slot,
                room: seq.blocks.len() as u32 * self.bs - seq.computed,
                remaining: seq.max_out - seq.generated,
                ctx: seq.computed,
            };
            let rank = &mut self.ranks[r];
            add_dec(rank, d.ctx, k);
            // Visible: the request's first decode token comes out at the end of this step
            // (the first token the client sees in a disaggregated flow).
            self.out.started.push(d.id);
            rank.dec.push(d);
        }
        while let Some(&slot) = self.ranks[r].waiting.front() {
            // A preempted sequence or a local-prefill request at the head is prefilled here by
            // the prefill phase (FCFS: it blocks reservations behind it).
            if self.slab[slot as usize]
                .as_ref()
                .is_none_or(|q| q.generated > 0 || q.local)
            {
                break;
            }
            match self.try_reserve(r, slot) {
                Some(cached) => {
                    self.ranks[r].waiting.pop_front();
                    let id = self.slab[slot as usize].as_ref().map(|s| s.id).unwrap_or(0);
                    self.out.kv_reserved.push(KvReserved {
                        id,
                        dp_rank: r as u32,
                        cached_tokens: cached,
                    });
                }
                None => break,
            }
        }
    }

    /// All decoding sequences emit one token. Allocation failures preempt the newest running
    /// sequence (recompute), possibly the one that needed the block.
    ///
    /// The common case (no block needed, not finishing) is a tight in-place loop over the
    /// contiguous `dec` array; block allocation and preemption take the slow path.
    fn decode_phase(&mut self, r: usize, collect: bool) {
        let k = self.sparse_k;
        let done_before = self.ranks[r].done.len();
        let mut i = 0usize;
        let mut w = 0usize;
        let mut crossings = 0u32;
        loop {
            {
                let rank = &mut self.ranks[r];
                let decoded = &mut self.out.decoded;
                let dec = &mut rank.dec;
                let done = &mut rank.done;
                let n = dec.len();
                while i < n {
                    let mut e = dec[i];
                    if e.room == 0 {
                        break;
                    }
                    e.room -= 1;
                    e.ctx += 1;
                    e.remaining -= 1;
                    crossings += (e.ctx.wrapping_add(1) == k) as u32;
                    if collect {
                        decoded.push(e.id);
                    }
                    if e.remaining == 0 {
                        done.push(e.slot);
                        // `computed` carries the final ctx for the sum fix-up below.
                        if let Some(s) = self.slab[e.slot as usize].as_mut() {
                            s.computed = e.ctx;
                            s.generated = s.max_out;
                        }
                    } else {
                        dec[w] = e;
                        w += 1;
                    }
                    i += 1;
                }
                if i >= n {
                    break;
                }
            }
            // dec[i] needs a block.
            if !self.alloc_for_decode(r, i) {
                break; // it was preempted itself (it was the newest): nothing after it
            }
        }
        let rank = &mut self.ranks[r];
        // Entries processed in this pass (a self-preemption stops at i); the sums, before
        // this step's increments, describe exactly them.
        let n_dec = i as u32;
        let shape = &mut self.shapes[r];
        shape.decode_seqs = n_dec;
        shape.decode_ctx = rank.dec_sum;
        shape.decode_ctx_clipped = if k == u32::MAX {
            rank.dec_sum
        } else {
            rank.unsat_sum + k as u64 * (n_dec - rank.unsat_n) as u64
        };
        shape.logits += n_dec;
        // Every processed sequence advanced by one token.
        rank.dec_sum += n_dec as u64;
        rank.unsat_sum += rank.unsat_n as u64;
        rank.unsat_n -= crossings;
        rank.unsat_sum -= crossings as u64 * k as u64;
        let finished = rank.done.len() - done_before;
        for j in done_before..rank.done.len() {
            let slot = rank.done[j];
            if let Some(s) = self.slab[slot as usize].as_ref() {
                sub_dec(rank, s.computed, k);
                self.out.finished.push(Finished {
                    id: s.id,
                    output_tokens: s.max_out,
                    reason: FinishReason::Length,
                });
            }
        }
        self.stats.finished += finished as u64;
        rank.dec.truncate(w);
        self.stats.generated_tokens += n_dec as u64;
        self.out.decoded_count += n_dec;
    }

    /// Give `dec[i]` one more block, preempting the newest running sequences as needed.
    /// False when `dec[i]` itself was preempted.
    fn alloc_for_decode(&mut self, r: usize, i: usize) -> bool {
        let k = self.sparse_k;
        let kv_events = self.cfg.kv_events;
        let me = self.ranks[r].dec[i];
        loop {
            let rank = &mut self.ranks[r];
            let ev = if kv_events {
                Some(&mut rank.events)
            } else {
                None
            };
            if let Some(b) = rank.pool.alloc(ev) {
                if let Some(s) = self.slab[me.slot as usize].as_mut() {
                    s.blocks.push(b);
                }
                rank.dec[i].room = self.bs;
                return true;
            }
            // Newest running: the tail of `dec` (index >= i) or the newest prefilling one.
            let dec_tail = rank.dec.last().map(|d| d.order).unwrap_or(0);
            let pre_tail = rank
                .prefilling
                .last()
                .and_then(|&s| self.slab[s as usize].as_ref())
                .map(|s| s.order);
            match pre_tail {
                Some(o) if o > dec_tail => {
                    let s = self.ranks[r].prefilling.pop().unwrap_or(0);
                    self.preempt(r, s);
                }
                _ => {
                    let rank = &mut self.ranks[r];
                    let Some(d) = rank.dec.pop() else {
                        return false;
                    };
                    sub_dec(rank, d.ctx, k);
                    if let Some(s) = self.slab[d.slot as usize].as_mut() {
                        s.computed = d.ctx;
                        s.generated = s.max_out - d.remaining;
                    }
                    self.preempt(r, d.slot);
                    if d.order == me.order {
                        return false;
                    }
                }
            }
        }
    }

    /// Move a sequence (already out of the running lists, sums fixed) back to waiting.
    fn preempt(&mut self, r: usize, slot: u32) {
        let Some(seq) = self.slab[slot as usize].as_mut() else {
            return;
        };
        let rank = &mut self.ranks[r];
        rank.pool.release_all_rev(&seq.blocks);
        rank.pending += match seq.state {
            St::Prefilling => seq.computed as u64,
            _ => (seq.prompt + seq.generated) as u64,
        };
        seq.blocks.clear();
        seq.computed = 0;
        seq.registered = 0;
        seq.state = St::Waiting;
        rank.waiting.push_front(slot);
        self.out.preempted.push(seq.id);
        self.stats.preemptions += 1;
    }

    /// Continue running prefills, then start waiting requests FCFS, within the token budget.
    fn prefill_phase(&mut self, r: usize, collect: bool) {
        let decode_role = self.cfg.role == Role::Decode;
        let mut budget = self.cfg.token_budget() as u64 - self.shapes[r].decode_seqs as u64;
        let mut idx = 0;
        while budget > 0 && idx < self.ranks[r].prefilling.len() {
            let slot = self.ranks[r].prefilling[idx];
            match self.run_chunk(r, idx, slot, &mut budget, collect) {
                ChunkResult::Kept => idx += 1,
                ChunkResult::Left => {}
                ChunkResult::Stop => break,
            }
        }
        // Admissions.
        while budget > 0 {
            let rank = &self.ranks[r];
            if rank.dec.len() + rank.prefilling.len() >= self.cfg.seq_limit() as usize {
                break;
            }
            let Some(&slot) = rank.waiting.front() else {
                break;
            };
            // A decode-role engine prefills only its own preempted sequences (recompute) and
            // local-prefill requests; the others wait for a KV reservation.
            if decode_role
                && self.slab[slot as usize]
                    .as_ref()
                    .is_none_or(|q| q.generated == 0 && !q.local)
            {
                break;
            }
            if !self.try_start(r, slot, budget) {
                break;
            }
            self.ranks[r].waiting.pop_front();
            self.ranks[r].prefilling.push(slot);
            let idx = self.ranks[r].prefilling.len() - 1;
            if let ChunkResult::Stop = self.run_chunk(r, idx, slot, &mut budget, collect) {
                break;
            }
        }
    }

    /// Allocate blocks for a waiting request's prefix hit and first chunk (or, with
    /// `reserve_full`, its whole lifetime). False (no change) when blocks are short.
    fn try_start(&mut self, r: usize, slot: u32, budget: u64) -> bool {
        let bs = self.bs;
        let Some(seq) = self.slab[slot as usize].as_ref() else {
            return false;
        };
        let target = seq.prompt + seq.generated;
        // At least one token must be computed to produce logits.
        let max_hit = ((target - 1) / bs) as usize;
        let rank = &mut self.ranks[r];
        let (hit, free_hits) = if self.cfg.prefix_caching {
            memo_lookup(rank, slot, &seq.hashes[..seq.hashes.len().min(max_hit)])
        } else {
            (0, 0)
        };
        let hit_tokens = hit as u32 * bs;
        let chunk = ((target - hit_tokens) as u64).min(budget) as u32;
        let alloc_tokens = match (self.profile.admission, self.cfg.role) {
            (Admission::ReserveFull, Role::Prefill) => target,
            (Admission::ReserveFull, _) => seq.prompt + seq.max_out,
            (Admission::OnDemand, _) => hit_tokens + chunk,
        };
        let need = alloc_tokens.div_ceil(bs) - hit as u32;
        if rank.pool.free() < need + free_hits {
            return false;
        }
        let kv_events = self.cfg.kv_events;
        let rank = &mut self.ranks[r];
        let Some(seq) = self.slab[slot as usize].as_mut() else {
            return false;
        };
        for h in &seq.hashes[..hit] {
            seq.blocks.push(rank.pool.acquire_cached(*h));
        }
        // Enough blocks: checked above.
        rank.pool
            .alloc_n(need, &mut seq.blocks, kv_events.then_some(&mut rank.events));
        seq.computed = hit_tokens;
        rank.pending -= hit_tokens as u64;
        seq.registered = hit as u32;
        seq.state = St::Prefilling;
        seq.order = self.next_order;
        self.next_order += 1;
        if !seq.started {
            seq.started = true;
            // Decode role (local prefill): `started` is reported with the first token.
            if self.cfg.role != Role::Decode {
                self.out.started.push(seq.id);
            }
            self.stats.prompt_tokens += seq.prompt as u64;
            self.stats.cached_prompt_tokens += hit_tokens.min(seq.prompt) as u64;
        }
        true
    }

    /// Run one prefill chunk of `prefilling[idx]`.
    fn run_chunk(
        &mut self,
        r: usize,
        idx: usize,
        slot: u32,
        budget: &mut u64,
        collect: bool,
    ) -> ChunkResult {
        let bs = self.bs;
        let k = self.sparse_k;
        let kv_events = self.cfg.kv_events;
        let (computed, target, have) = match self.slab[slot as usize].as_ref() {
            Some(s) => (s.computed, s.prompt + s.generated, s.blocks.len() as u32),
            None => return ChunkResult::Stop,
        };
        let c = ((target - computed) as u64).min(*budget) as u32;
        let mut need = (computed + c).div_ceil(bs).saturating_sub(have);
        // What the free queue has, in one batch (same order as one by one); preemption below
        // only once it runs dry.
        let now = need.min(self.ranks[r].pool.free());
        if now > 0 {
            let rank = &mut self.ranks[r];
            if let Some(s) = self.slab[slot as usize].as_mut() {
                rank.pool
                    .alloc_n(now, &mut s.blocks, kv_events.then_some(&mut rank.events));
            }
            need -= now;
        }
        for _ in 0..need {
            loop {
                let rank = &mut self.ranks[r];
                let ev = if kv_events {
                    Some(&mut rank.events)
                } else {
                    None
                };
                if let Some(b) = rank.pool.alloc(ev) {
                    if let Some(s) = self.slab[slot as usize].as_mut() {
                        s.blocks.push(b);
                    }
                    break;
                }
                // Short of blocks: preempt the newest prefilling sequence (this one at worst).
                let Some(victim) = self.ranks[r].prefilling.pop() else {
                    return ChunkResult::Stop;
                };
                self.preempt(r, victim);
                if victim == slot {
                    return ChunkResult::Stop;
                }
            }
        }
        let completes = computed + c == target;
        self.shapes[r].add_chunk(computed as u64, c as u64, k as u64, completes);
        *budget -= c as u64;
        self.stats.prefill_tokens += c as u64;
        let rank = &mut self.ranks[r];
        rank.pending -= c as u64;
        let Some(seq) = self.slab[slot as usize].as_mut() else {
            return ChunkResult::Stop;
        };
        seq.computed += c;
        if self.cfg.prefix_caching {
            let full = (seq.computed / bs).min(seq.hashes.len() as u32);
            register_blocks(
                &mut rank.pool,
                seq,
                full,
                kv_events.then_some(&mut rank.events),
            );
        }
        if !completes {
            return ChunkResult::Kept;
        }
        rank.prefilling.remove(idx);
        seq.generated += 1;
        self.stats.generated_tokens += 1;
        if seq.generated == 1 {
            self.out.first_tokens.push(seq.id);
            if self.cfg.role == Role::Decode {
                self.out.started.push(seq.id);
            }
        } else if collect {
            self.out.decoded.push(seq.id);
        }
        let prefill_role = self.cfg.role == Role::Prefill;
        if seq.generated >= seq.max_out || prefill_role {
            self.out.finished.push(Finished {
                id: seq.id,
                output_tokens: seq.generated,
                reason: if prefill_role {
                    FinishReason::PrefillDone
                } else {
                    FinishReason::Length
                },
            });
            self.stats.finished += 1;
            if prefill_role {
                seq.state = St::Held;
                rank.held += 1;
            } else {
                rank.done.push(slot);
            }
            return ChunkResult::Left;
        }
        seq.state = St::Decoding;
        let d = Dec {
            id: seq.id,
            order: seq.order,
            slot,
            room: seq.blocks.len() as u32 * bs - seq.computed,
            remaining: seq.max_out - seq.generated,
            ctx: seq.computed,
        };
        add_dec(rank, d.ctx, k);
        let pos = rank.dec.partition_point(|x| x.order < d.order);
        rank.dec.insert(pos, d);
        ChunkResult::Left
    }
}

enum ChunkResult {
    /// Still prefilling (stays at its index).
    Kept,
    /// Left the prefilling list (finished prefill or preempted); the next one moved into idx.
    Left,
    /// Stop scheduling prefills this step.
    Stop,
}

/// Register newly full prompt blocks `seq.registered..full` in the prefix cache and record a
/// `Stored` event per run of newly cached blocks.
fn register_blocks(
    pool: &mut BlockPool,
    seq: &mut Seq,
    full: u32,
    mut events: Option<&mut Vec<KvEvent>>,
) {
    let mut run: Vec<BlockHash> = Vec::new();
    let mut parent: Option<BlockHash> = None;
    for j in seq.registered..full {
        let j = j as usize;
        if let Some(&ahead) = seq.hashes.get(j + 16)
            && j + 16 < full as usize
        {
            pool.prefetch_hash(ahead);
        }
        let h = seq.hashes[j];
        let fresh = pool.register(seq.blocks[j], h);
        if let Some(ev) = events.as_deref_mut() {
            if fresh {
                if run.is_empty() {
                    parent = if j == 0 {
                        None
                    } else {
                        Some(seq.hashes[j - 1])
                    };
                }
                run.push(h);
            } else if !run.is_empty() {
                ev.push(KvEvent::Stored {
                    parent,
                    blocks: std::mem::take(&mut run),
                });
            }
        }
    }
    if let Some(ev) = events
        && !run.is_empty()
    {
        ev.push(KvEvent::Stored {
            parent,
            blocks: run,
        });
    }
    seq.registered = seq.registered.max(full);
}

/// Prefix lookup memoized on (slot, pool epoch, slice length).
fn memo_lookup(rank: &mut Rank, slot: u32, hashes: &[BlockHash]) -> (usize, u32) {
    let epoch = rank.pool.epoch();
    if let Some((s, e, l, hit, free_hits)) = rank.memo
        && s == slot
        && e == epoch
        && l == hashes.len()
    {
        return (hit, free_hits);
    }
    let (hit, free_hits) = rank.pool.lookup(hashes);
    rank.memo = Some((slot, epoch, hashes.len(), hit, free_hits));
    (hit, free_hits)
}

fn add_dec(rank: &mut Rank, ctx: u32, k: u32) {
    let a = ctx as u64 + 1;
    rank.dec_sum += a;
    if a < k as u64 {
        rank.unsat_n += 1;
        rank.unsat_sum += a;
    }
}

fn sub_dec(rank: &mut Rank, ctx: u32, k: u32) {
    let a = ctx as u64 + 1;
    rank.dec_sum -= a;
    if a < k as u64 {
        rank.unsat_n -= 1;
        rank.unsat_sum -= a;
    }
}
