//! One measured row → an engine configuration and a closed-loop benchmark → the model's TTFT
//! and TPOT.
//!
//! What a row says and what it leaves open (the choices here are documented in
//! `docs/calibration.md`):
//!
//! - Clients: the run's concurrency (else `batch_size × attention_dp`); each sends the next
//!   fixed-length request when its previous one finishes, as the measuring benchmark does.
//! - The engine admits all of them: `max_num_seqs` = clients per attention-DP rank
//!   (AIConfigurator's `batch_size` is the engine's batch limit in these runs).
//! - Weights from `gemm_quant_mode` (else `precision`); KV cache in FP8 for NVFP4 checkpoints
//!   (their quantisation config says so) and for TensorRT-LLM's FP8 checkpoints, BF16
//!   otherwise.
//! - Everything else is the engine profile's default.

use std::sync::atomic::{AtomicUsize, Ordering};

use switchyard_engine::closed_loop::{self, ClosedLoop};
use switchyard_engine::{Catalog, Engine, EngineConfig, EngineError, KvDtype, WeightDtype};

use crate::silicon::SiliconRow;

/// Requests per client: the first wave (the warm-up, not counted) and two measured ones.
pub const ROUNDS: u32 = 3;

/// Why a row is not compared.
#[derive(Clone, Debug, PartialEq)]
pub enum Skip {
    /// A GPU the catalog does not have.
    Gpu(String),
    /// A model the catalog does not have.
    Model(String),
    /// A weight format the engine model does not have (INT4, MXFP4 mislabelled as NVFP4...).
    Quant(String),
    /// Parallel degrees that do not describe a deployment (inconsistent or unset columns).
    Parallelism(String),
    /// No concurrency recorded.
    Concurrency,
    /// The engine model refused a configuration the real engine ran: a model error, counted.
    Refused(String),
    /// The simulated run thrashed (preemption and recompute without end) where the measured
    /// run did not: a model error, counted.
    Thrashing(String),
}

impl Case {
    /// Sequence-steps the closed loop simulates (requests x output tokens): its run time.
    pub fn seq_steps(&self) -> u64 {
        self.workload.requests as u64 * self.workload.output_tokens as u64
    }
}

impl Skip {
    /// Short label for counting.
    pub fn kind(&self) -> &'static str {
        match self {
            Skip::Gpu(_) => "GPU not in the catalog",
            Skip::Model(_) => "model not in the catalog",
            Skip::Quant(_) => "weight format not modelled",
            Skip::Parallelism(_) => "inconsistent parallelism columns",
            Skip::Concurrency => "no concurrency recorded",
            Skip::Refused(_) => "refused by the engine model (a model error)",
            Skip::Thrashing(_) => "thrashed under KV pressure (a model error)",
        }
    }
}

impl std::fmt::Display for Skip {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Skip::Gpu(s)
            | Skip::Model(s)
            | Skip::Quant(s)
            | Skip::Parallelism(s)
            | Skip::Refused(s)
            | Skip::Thrashing(s) => write!(f, "{}: {s}", self.kind()),
            Skip::Concurrency => f.write_str(self.kind()),
        }
    }
}

/// A row as something the engine model can run.
#[derive(Clone, Debug, PartialEq)]
pub struct Case {
    pub cfg: EngineConfig,
    pub workload: ClosedLoop,
}

/// The model's answer for one row.
#[derive(Clone, Debug, PartialEq)]
pub struct Prediction {
    pub ttft_ms: f64,
    pub tpot_ms: f64,
}

/// Catalog GPU name of an AIConfigurator system, and its GPUs per NVLink node.
fn gpu_of(system: &str) -> Option<(&'static str, u32)> {
    Some(match system {
        "h100_sxm" => ("H100-SXM", 8),
        "h200_sxm" => ("H200", 8),
        "b200_sxm" => ("B200", 8),
        "gb200" => ("GB200", 72),
        _ => return None,
    })
}

fn weights_of(r: &SiliconRow, hopper: bool) -> Result<WeightDtype, Skip> {
    let q = if r.gemm_quant.is_empty() {
        r.precision.as_str()
    } else {
        r.gemm_quant.as_str()
    };
    let w = match q {
        "" | "bf16" | "bfloat16" | "float16" => WeightDtype::Bf16,
        "fp8" | "fp8_block" => WeightDtype::Fp8,
        "nvfp4" | "fp4" => WeightDtype::Nvfp4,
        other => return Err(Skip::Quant(other.to_string())),
    };
    if w == WeightDtype::Nvfp4 && hopper {
        // Hopper has no FP4 tensor cores; these rows are MXFP4 checkpoints on a W4A16 path.
        return Err(Skip::Quant("NVFP4 label on Hopper".into()));
    }
    Ok(w)
}

/// Map a row to an engine configuration and workload.
pub fn case(cat: &Catalog, r: &SiliconRow) -> Result<Case, Skip> {
    let (gpu, node) = gpu_of(&r.system).ok_or_else(|| Skip::Gpu(r.system.clone()))?;
    let model = cat
        .model(&r.model_path)
        .map_err(|_| Skip::Model(r.model_path.clone()))?;
    let weight_dtype = weights_of(r, gpu.starts_with('H'))?;
    let kv_dtype = match (weight_dtype, r.backend.as_str()) {
        (WeightDtype::Nvfp4, _) | (WeightDtype::Fp8, "trtllm") => KvDtype::Fp8,
        _ => KvDtype::Bf16,
    };
    let tp = r.tp.unwrap_or(1);
    let moe = model.moe.is_some();
    // Attention DP only exists for MoE models (the engines replicate a dense model instead).
    let dp = if moe { r.attention_dp.unwrap_or(1) } else { 1 };
    let gpus = tp * dp;
    if gpus > node {
        return Err(Skip::Parallelism(format!(
            "tp {tp} x attention dp {dp} > {node} GPUs per node"
        )));
    }
    let heads = model
        .gqa
        .as_ref()
        .map(|g| g.q_heads)
        .or(model.mla.as_ref().map(|a| a.heads))
        .unwrap_or(1);
    if heads % tp != 0 {
        // Upstream rows whose `tp` column holds a product of degrees (e.g. 72 on GB200).
        return Err(Skip::Parallelism(format!(
            "tp {tp} does not divide the model's {heads} attention heads"
        )));
    }
    let ep = if moe { r.moe_ep.unwrap_or(1) } else { 1 };
    if moe {
        let moe_tp = r.moe_tp.unwrap_or(gpus / ep.max(1));
        if moe_tp * ep != gpus {
            return Err(Skip::Parallelism(format!(
                "moe tp {moe_tp} x ep {ep} != {gpus} GPUs"
            )));
        }
    }
    let clients = r
        .concurrency
        .or_else(|| r.batch_size.map(|b| b * dp))
        .ok_or(Skip::Concurrency)?;
    if clients == 0 {
        return Err(Skip::Concurrency);
    }
    // The engine's default token budget, raised where the run had more clients per rank
    // than it (the engines require budget >= running sequences).
    let per_rank = clients.div_ceil(dp).max(1);
    let gpu_gib = cat.gpu(gpu).map(|g| g.memory_gib).unwrap_or(80.0);
    let default_budget = cat
        .engine(&r.backend)
        .map(|p| p.defaults.limits_for(gpu_gib).max_num_batched_tokens)
        .unwrap_or(8192);
    let cfg = EngineConfig {
        gpu: gpu.into(),
        model: model.name.clone(),
        weight_dtype,
        kv_dtype,
        tp,
        dp,
        ep,
        engine: r.backend.clone(),
        max_num_seqs: Some(per_rank),
        max_num_batched_tokens: (per_rank > default_budget).then_some(per_rank),
        max_model_len: Some(r.isl + r.osl),
        kv_events: false,
        prefix_caching: false,
        ..EngineConfig::default()
    };
    let mut workload = ClosedLoop::new(clients, clients * ROUNDS, r.isl, r.osl);
    // A run without preemption takes about ROUNDS x (osl + prefill steps); ten times that
    // means the scheduler thrashes (recomputing preempted requests), which the measured run
    // did not: reported as a model error instead of simulated for minutes.
    let prefill_steps =
        (clients as u64 * r.isl as u64).div_ceil(default_budget.max(per_rank) as u64);
    workload.max_steps = 10 * ROUNDS as u64 * (r.osl as u64 + prefill_steps + 16);
    Ok(Case { cfg, workload })
}

/// Run one row through the engine model.
pub fn predict(cat: &Catalog, r: &SiliconRow) -> Result<Prediction, Skip> {
    let c = case(cat, r)?;
    let mut e = Engine::new(cat, &c.cfg).map_err(|e| Skip::Refused(e.to_string()))?;
    // The benchmarks warm up before they measure: the first wave (all clients arriving at
    // once, every prompt queued behind the others) is run but not counted, and the clients
    // are out of phase by then (`ClosedLoop::steady`).
    let w = c.workload.steady(&e);
    let out = closed_loop::run(&mut e, &w).map_err(|err| match err {
        EngineError::StepBudget(_) => Skip::Thrashing(e.description().to_string()),
        other => Skip::Refused(other.to_string()),
    })?;
    Ok(Prediction {
        ttft_ms: out.mean_ttft * 1e3,
        tpot_ms: out.mean_tpot * 1e3,
    })
}

/// [`predict`] for every row, on `threads` threads; results in row order.
pub fn predict_all(
    cat: &Catalog,
    rows: &[SiliconRow],
    threads: usize,
) -> Vec<Result<Prediction, Skip>> {
    let next = AtomicUsize::new(0);
    let mut out: Vec<Option<Result<Prediction, Skip>>> = vec![None; rows.len()];
    let chunks: Vec<Vec<(usize, Result<Prediction, Skip>)>> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..threads.max(1))
            .map(|_| {
                s.spawn(|| {
                    let mut done = Vec::new();
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= rows.len() {
                            break;
                        }
                        done.push((i, predict(cat, &rows[i])));
                    }
                    done
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| w.join().expect("prediction thread panicked"))
            .collect()
    });
    for (i, r) in chunks.into_iter().flatten() {
        out[i] = Some(r);
    }
    out.into_iter()
        .map(|r| r.expect("every row predicted"))
        .collect()
}
