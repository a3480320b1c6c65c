//! The hardware / model / engine-profile catalog.
//!
//! Data lives in TOML files, not literals: the built-in files under `data/catalog/` are embedded
//! at compile time, and a user directory (same layout: `gpus/`, `models/`, `engines/`) can add
//! entries or override built-in ones by name at load time.

use std::fmt::Write as _;
use std::path::Path;

use serde::Deserialize;

use crate::error::EngineError;

/// One GPU type. Throughputs are dense (no structured sparsity) per-GPU peaks.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct GpuSpec {
    pub name: String,
    #[serde(default)]
    pub aliases: Vec<String>,
    #[serde(default)]
    pub description: String,
    pub bf16_tflops: f64,
    pub fp8_tflops: f64,
    /// 0 when the GPU has no FP4 tensor cores (NVFP4 weights then run weight-only).
    #[serde(default)]
    pub fp4_tflops: f64,
    /// Device memory as the driver reports it, GiB.
    pub memory_gib: f64,
    /// HBM bandwidth, TB/s (10^12 B/s).
    pub hbm_tb_s: f64,
    /// NVLink bandwidth per GPU, one direction, GB/s.
    pub nvlink_gb_s: f64,
    /// How many GPUs share one NVLink domain (8 for HGX nodes, 72 for NVL72).
    pub nvlink_domain: u32,
    /// Scale-out (RDMA NIC) bandwidth per GPU, GB/s.
    pub nic_gb_s: f64,
}

/// GQA / MHA attention shape.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct GqaSpec {
    pub q_heads: u32,
    pub kv_heads: u32,
    pub head_dim: u32,
}

/// Multi-head latent attention (DeepSeek).
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct MlaSpec {
    pub heads: u32,
    pub q_lora_rank: u32,
    pub kv_lora_rank: u32,
    pub qk_nope_dim: u32,
    pub qk_rope_dim: u32,
    pub v_head_dim: u32,
}

/// DeepSeek sparse attention: a lightning indexer picks `top_k` tokens per query.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DsaSpec {
    pub top_k: u32,
    pub index_heads: u32,
    pub index_head_dim: u32,
}

/// A dense gated MLP (gate, up, down projections).
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DenseFfnSpec {
    pub intermediate: u32,
}

/// Mixture of experts. The first `dense_layers` layers use a dense MLP instead.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct MoeSpec {
    pub dense_layers: u32,
    pub dense_intermediate: u32,
    pub experts: u32,
    pub top_k: u32,
    pub shared_experts: u32,
    pub expert_intermediate: u32,
}

/// One model architecture. Exactly one of `gqa`/`mla` and one of `dense_ffn`/`moe` is set.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ModelSpec {
    pub name: String,
    #[serde(default)]
    pub aliases: Vec<String>,
    #[serde(default)]
    pub description: String,
    pub layers: u32,
    pub hidden: u32,
    pub vocab: u32,
    #[serde(default)]
    pub tie_embeddings: bool,
    /// Maximum context length (prompt + output) in tokens.
    pub max_context: u32,
    pub gqa: Option<GqaSpec>,
    pub mla: Option<MlaSpec>,
    pub dsa: Option<DsaSpec>,
    pub dense_ffn: Option<DenseFfnSpec>,
    pub moe: Option<MoeSpec>,
}

/// How an engine forms batches.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Batching {
    /// vLLM / TensorRT-LLM: all running decodes first, then prefill chunks fill the budget.
    Mixed,
    /// SGLang: if a waiting request can start, run a prefill-only batch; otherwise decode.
    PrefillFirst,
}

/// When KV blocks are committed to a request.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Admission {
    /// Allocate blocks as tokens are computed; preempt (recompute) the newest when short.
    OnDemand,
    /// Admit only with blocks for prompt + max output reserved (TensorRT-LLM
    /// GUARANTEED_NO_EVICT); running requests never preempt.
    ReserveFull,
}

/// Engine behaviour and calibration factors (one file per engine, see `docs/calibration.md`).
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct EngineProfile {
    pub name: String,
    #[serde(default)]
    pub aliases: Vec<String>,
    #[serde(default)]
    pub description: String,
    pub batching: Batching,
    pub admission: Admission,
    pub gemm_efficiency: f64,
    pub attention_efficiency: f64,
    pub memory_efficiency: f64,
    /// Grouped expert GEMMs (fused MoE kernels) relative to dense GEMMs: scales both the
    /// compute and the bandwidth efficiency of the MoE layers.
    pub moe_efficiency: f64,
    pub link_efficiency: f64,
    pub allreduce_latency_us: f64,
    pub alltoall_latency_us: f64,
    pub alltoall_overlap: f64,
    pub step_overhead_us: f64,
    pub per_sequence_overhead_us: f64,
    pub per_prefill_overhead_us: f64,
    /// Latency a client sees outside the engine's step loop (HTTP, tokenization, handing the
    /// request to the scheduler, detokenizing and streaming the first chunk), in ms: added to
    /// TTFT and end-to-end latency, not to TPOT, and it does not occupy the GPU. Applied by
    /// the closed-loop driver (calibration); not yet by `lab`/`serve`.
    #[serde(default)]
    pub request_overhead_ms: f64,
    pub memory_reserve_gib: f64,
    /// The engine's own defaults (batch limits by device, how it sizes the KV cache).
    #[serde(default)]
    pub defaults: EngineDefaults,
}

/// How an engine turns its memory knob into a KV-cache size (per GPU).
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum MemoryRule {
    /// vLLM `gpu_memory_utilization`: KV = fraction x device − weights − activation peak −
    /// reserve.
    #[default]
    TotalFraction,
    /// TensorRT-LLM `free_gpu_memory_fraction`: KV = fraction x (device − weights − activation
    /// peak − reserve).
    FreeFraction,
    /// SGLang `mem_fraction_static`: weights + KV = fraction x device; activations, CUDA graphs
    /// and the rest live in the remainder. Without an explicit fraction it follows SGLang's
    /// formula from the GPU size, chunk size, CUDA-graph batch and parallel degrees.
    StaticFraction,
}

/// Batch limits that apply from a device size on.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DeviceLimits {
    /// Applies to GPUs with at least this much memory (GiB); the last matching entry wins.
    pub min_gpu_gib: f64,
    pub max_num_seqs: u32,
    pub max_num_batched_tokens: u32,
    /// Largest CUDA-graph batch (SGLang's `cuda_graph_max_bs`, part of its memory formula).
    #[serde(default)]
    pub cuda_graph_max_bs: u32,
}

/// An engine's defaults (the `[defaults]` table of its profile).
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct EngineDefaults {
    pub memory: MemoryRule,
    /// Default memory fraction (ignored by `static_fraction`, which computes its own).
    pub memory_fraction: f64,
    /// Batch limits by device size, ascending `min_gpu_gib`.
    pub limits: Vec<DeviceLimits>,
    /// The token budget is split across data-parallel attention ranks (SGLang divides
    /// `chunked_prefill_size` by the DP size).
    #[serde(default)]
    pub budget_per_dp_rank: bool,
    /// Refuse to start when the KV cache cannot hold one request of `max_model_len` (vLLM).
    #[serde(default)]
    pub refuse_short_kv: bool,
}

impl Default for EngineDefaults {
    /// What a profile without a `[defaults]` table gets: 256 sequences, 8,192 tokens, 90% of
    /// the device.
    fn default() -> Self {
        EngineDefaults {
            memory: MemoryRule::TotalFraction,
            memory_fraction: 0.9,
            limits: vec![DeviceLimits {
                min_gpu_gib: 0.0,
                max_num_seqs: 256,
                max_num_batched_tokens: 8192,
                cuda_graph_max_bs: 0,
            }],
            budget_per_dp_rank: false,
            refuse_short_kv: false,
        }
    }
}

impl EngineDefaults {
    /// The limits that apply on a GPU with this much memory.
    pub fn limits_for(&self, gpu_gib: f64) -> DeviceLimits {
        self.limits
            .iter()
            .rev()
            .find(|l| gpu_gib >= l.min_gpu_gib)
            .or(self.limits.first())
            .copied()
            .unwrap_or(DeviceLimits {
                min_gpu_gib: 0.0,
                max_num_seqs: 256,
                max_num_batched_tokens: 8192,
                cuda_graph_max_bs: 0,
            })
    }
}

/// Measured kernel curves of one GPU (`data/catalog/kernels/*.toml`, derived from
/// AIConfigurator's perf database by `scripts/kernel_curves.py`): where a curve exists for the
/// engine and weight format, the step model uses it instead of the profile's efficiency factor.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct KernelTables {
    /// Catalog GPU name.
    pub gpu: String,
    #[serde(default)]
    pub gemm: Vec<GemmCurve>,
    #[serde(default)]
    pub moe: Vec<MoeCurve>,
    #[serde(default)]
    pub allreduce: Vec<AllreduceCurve>,
    #[serde(default)]
    pub attention: Vec<AttentionFloor>,
}

/// The decode-attention kernel's fixed cost per layer (its latency at batch 1 and a short
/// context), paid on top of streaming the KV cache.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AttentionFloor {
    pub engine: String,
    #[serde(default)]
    pub source: String,
    pub decode_floor_us: f64,
}

/// Achieved fraction of the dense tensor peak of linear layers, by tokens in the step.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct GemmCurve {
    pub engine: String,
    /// `bf16`, `fp8` or `nvfp4` (weights).
    pub dtype: String,
    #[serde(default)]
    pub source: String,
    pub tokens: Vec<f64>,
    pub efficiency: Vec<f64>,
}

/// Achieved fraction of the tensor peak of a fused-MoE layer, by tokens routed per expert
/// (tokens x top_k / experts).
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct MoeCurve {
    pub engine: String,
    pub dtype: String,
    /// The split it was measured with: experts tensor-parallel over `tp` GPUs and
    /// expert-parallel over `ep` (the layer spans tp x ep GPUs).
    pub tp: u32,
    pub ep: u32,
    #[serde(default)]
    pub source: String,
    pub tokens_per_expert: Vec<f64>,
    pub efficiency: Vec<f64>,
}

/// Latency of one BF16 all-reduce over `gpus` GPUs by message size.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AllreduceCurve {
    pub engine: String,
    pub gpus: u32,
    #[serde(default)]
    pub source: String,
    pub bytes: Vec<f64>,
    pub us: Vec<f64>,
}

impl KernelTables {
    /// The GEMM curve for this engine and weight format (another engine's on the same GPU when
    /// the engine has none).
    pub fn gemm_for(&self, engine: &str, dtype: &str) -> Option<&GemmCurve> {
        pick(&self.gemm, engine, |c| c.dtype == dtype, |c| &c.engine)
    }
    /// The MoE curve for this engine and format measured with the split closest to
    /// (`tp`, `ep`) in log2 distance (the engine's own, else another engine's).
    pub fn moe_for(&self, engine: &str, dtype: &str, tp: u32, ep: u32) -> Option<&MoeCurve> {
        let l = |x: u32| f64::from(x.max(1)).log2();
        let dist = |c: &MoeCurve| (l(c.tp) - l(tp)).abs() + (l(c.ep) - l(ep)).abs();
        let best = |own: bool| {
            self.moe
                .iter()
                .filter(|c| c.dtype == dtype && (!own || c.engine.eq_ignore_ascii_case(engine)))
                .min_by(|a, b| dist(a).total_cmp(&dist(b)))
        };
        best(true).or_else(|| best(false))
    }
    pub fn allreduce_for(&self, engine: &str, gpus: u32) -> Option<&AllreduceCurve> {
        pick(&self.allreduce, engine, |c| c.gpus == gpus, |c| &c.engine)
    }
    pub fn attention_for(&self, engine: &str) -> Option<&AttentionFloor> {
        pick(&self.attention, engine, |_| true, |c| &c.engine)
    }
}

fn pick<'a, T>(
    list: &'a [T],
    engine: &str,
    ok: impl Fn(&T) -> bool,
    eng: impl Fn(&T) -> &str,
) -> Option<&'a T> {
    let e = engine.to_ascii_lowercase();
    list.iter()
        .filter(|c| ok(c))
        .find(|c| eng(c).eq_ignore_ascii_case(&e))
        .or_else(|| list.iter().find(|c| ok(c)))
}

macro_rules! builtin {
    ($($path:literal),* $(,)?) => {
        &[$(($path, include_str!(concat!("../../../data/catalog/", $path)))),*]
    };
}

/// Built-in catalog files, embedded at compile time: (relative path, contents).
const BUILTIN: &[(&str, &str)] = builtin!(
    "gpus/h100-sxm.toml",
    "gpus/h200.toml",
    "gpus/b200.toml",
    "gpus/gb200.toml",
    "models/qwen3-32b.toml",
    "models/llama-3.1-8b.toml",
    "models/llama-3.1-70b.toml",
    "models/deepseek-v3.toml",
    "models/deepseek-v3.2.toml",
    "models/qwen3-235b-a22b.toml",
    "models/minimax-m2.5.toml",
    "engines/vllm.toml",
    "engines/sglang.toml",
    "engines/trtllm.toml",
    "kernels/h100-sxm.toml",
    "kernels/h200.toml",
    "kernels/b200.toml",
    "kernels/gb200.toml",
);

/// Everything the engine model knows about hardware, models and engines.
#[derive(Clone, Debug, Default)]
pub struct Catalog {
    pub gpus: Vec<GpuSpec>,
    pub models: Vec<ModelSpec>,
    pub engines: Vec<EngineProfile>,
    /// Measured kernel curves, one entry per GPU.
    pub kernels: Vec<KernelTables>,
}

fn parse<T: for<'de> Deserialize<'de>>(file: &str, text: &str) -> Result<T, EngineError> {
    toml::from_str(text).map_err(|e| EngineError::Catalog {
        file: file.to_string(),
        reason: e.to_string(),
    })
}

/// Insert or replace (by case-insensitive name) keeping insertion order.
fn upsert<T>(list: &mut Vec<T>, item: T, name: impl Fn(&T) -> &str) {
    let key = name(&item).to_ascii_lowercase();
    match list
        .iter()
        .position(|x| name(x).to_ascii_lowercase() == key)
    {
        Some(i) => list[i] = item,
        None => list.push(item),
    }
}

fn find<'a, T>(
    list: &'a [T],
    kind: &'static str,
    want: &str,
    name: impl Fn(&T) -> &str,
    aliases: impl Fn(&T) -> &[String],
) -> Result<&'a T, EngineError> {
    let w = want.to_ascii_lowercase();
    list.iter()
        .find(|x| name(x).to_ascii_lowercase() == w)
        .or_else(|| {
            list.iter()
                .find(|x| aliases(x).iter().any(|a| a.to_ascii_lowercase() == w))
        })
        .ok_or_else(|| EngineError::UnknownName {
            kind,
            name: want.to_string(),
            known: list.iter().map(name).collect::<Vec<_>>().join(", "),
        })
}

impl Catalog {
    /// The built-in catalog only.
    pub fn builtin() -> Result<Catalog, EngineError> {
        let mut c = Catalog::default();
        for (path, text) in BUILTIN {
            c.add_file(path, text)?;
        }
        Ok(c)
    }

    /// The built-in catalog, plus (overriding by name) every `*.toml` under
    /// `extra_dir/{gpus,models,engines}/` when given. Missing subdirectories are fine.
    pub fn load(extra_dir: Option<&Path>) -> Result<Catalog, EngineError> {
        let mut c = Catalog::builtin()?;
        if let Some(dir) = extra_dir {
            if !dir.is_dir() {
                return Err(EngineError::CatalogDir {
                    dir: dir.display().to_string(),
                    reason: "not a directory".into(),
                });
            }
            for sub in ["gpus", "models", "engines", "kernels"] {
                let d = dir.join(sub);
                if !d.is_dir() {
                    continue;
                }
                let rd = std::fs::read_dir(&d).map_err(|e| EngineError::CatalogDir {
                    dir: d.display().to_string(),
                    reason: e.to_string(),
                })?;
                let mut files: Vec<_> = rd
                    .filter_map(|e| e.ok().map(|e| e.path()))
                    .filter(|p| p.extension().is_some_and(|x| x == "toml"))
                    .collect();
                files.sort(); // deterministic override order
                for p in files {
                    let text = std::fs::read_to_string(&p).map_err(|e| EngineError::Catalog {
                        file: p.display().to_string(),
                        reason: e.to_string(),
                    })?;
                    let rel = format!("{sub}/{}", p.file_name().unwrap_or_default().display());
                    c.add_file_named(&p.display().to_string(), &rel, &text)?;
                }
            }
        }
        Ok(c)
    }

    fn add_file(&mut self, rel: &str, text: &str) -> Result<(), EngineError> {
        self.add_file_named(&format!("<builtin>/data/catalog/{rel}"), rel, text)
    }

    /// Add one catalog file; `rel` decides its kind by its directory (`gpus/`, `models/`,
    /// `engines/`), `shown` is the name used in error messages.
    pub fn add_file_named(
        &mut self,
        shown: &str,
        rel: &str,
        text: &str,
    ) -> Result<(), EngineError> {
        if rel.starts_with("gpus/") {
            let g: GpuSpec = parse(shown, text)?;
            validate_gpu(&g).map_err(|reason| EngineError::Catalog {
                file: shown.into(),
                reason,
            })?;
            upsert(&mut self.gpus, g, |x| &x.name);
        } else if rel.starts_with("models/") {
            let m: ModelSpec = parse(shown, text)?;
            validate_model(&m).map_err(|reason| EngineError::Catalog {
                file: shown.into(),
                reason,
            })?;
            upsert(&mut self.models, m, |x| &x.name);
        } else if rel.starts_with("engines/") {
            let e: EngineProfile = parse(shown, text)?;
            validate_profile(&e).map_err(|reason| EngineError::Catalog {
                file: shown.into(),
                reason,
            })?;
            upsert(&mut self.engines, e, |x| &x.name);
        } else if rel.starts_with("kernels/") {
            let k: KernelTables = parse(shown, text)?;
            validate_kernels(&k).map_err(|reason| EngineError::Catalog {
                file: shown.into(),
                reason,
            })?;
            upsert(&mut self.kernels, k, |x| &x.gpu);
        } else {
            return Err(EngineError::Catalog {
                file: shown.into(),
                reason: "catalog files live under gpus/, models/, engines/ or kernels/".into(),
            });
        }
        Ok(())
    }

    /// Look up a GPU by name or alias (case-insensitive).
    pub fn gpu(&self, name: &str) -> Result<&GpuSpec, EngineError> {
        find(&self.gpus, "GPU", name, |x| &x.name, |x| &x.aliases)
    }

    /// Look up a model by name or alias (case-insensitive).
    pub fn model(&self, name: &str) -> Result<&ModelSpec, EngineError> {
        find(&self.models, "model", name, |x| &x.name, |x| &x.aliases)
    }

    /// The measured kernel curves of a GPU (by its catalog name), if any.
    pub fn kernels(&self, gpu: &str) -> Option<&KernelTables> {
        self.kernels
            .iter()
            .find(|k| k.gpu.eq_ignore_ascii_case(gpu))
    }

    /// Look up an engine profile by name or alias (case-insensitive).
    pub fn engine(&self, name: &str) -> Result<&EngineProfile, EngineError> {
        find(
            &self.engines,
            "engine profile",
            name,
            |x| &x.name,
            |x| &x.aliases,
        )
    }

    /// The catalog as plain-text tables (for `switchyard catalog`).
    pub fn render_table(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "GPUs");
        let _ = writeln!(
            s,
            "  {:<10} {:>8} {:>8} {:>8} {:>9} {:>8} {:>10} {:>7} {:>8}",
            "name",
            "BF16 TF",
            "FP8 TF",
            "FP4 TF",
            "mem GiB",
            "HBM TB/s",
            "NVLink GB/s",
            "domain",
            "NIC GB/s"
        );
        for g in &self.gpus {
            let fp4 = if g.fp4_tflops > 0.0 {
                format!("{:.0}", g.fp4_tflops)
            } else {
                "-".into()
            };
            let _ = writeln!(
                s,
                "  {:<10} {:>8.0} {:>8.0} {:>8} {:>9.1} {:>8.2} {:>10.0} {:>7} {:>8.0}",
                g.name,
                g.bf16_tflops,
                g.fp8_tflops,
                fp4,
                g.memory_gib,
                g.hbm_tb_s,
                g.nvlink_gb_s,
                g.nvlink_domain,
                g.nic_gb_s
            );
        }
        let _ = writeln!(s, "\nModels");
        let _ = writeln!(
            s,
            "  {:<14} {:>6} {:>6} {:>16} {:>22} {:>8} {:>9} {:>8} {:>13}",
            "name",
            "layers",
            "hidden",
            "attention",
            "ffn",
            "params",
            "active",
            "max ctx",
            "KV B/tok bf16"
        );
        for m in &self.models {
            let attn = match (&m.gqa, &m.mla) {
                (Some(g), _) => format!("GQA {}/{}x{}", g.q_heads, g.kv_heads, g.head_dim),
                (_, Some(a)) => {
                    let dsa = m
                        .dsa
                        .as_ref()
                        .map(|d| format!("+DSA{}", d.top_k))
                        .unwrap_or_default();
                    format!("MLA {}h{}", a.heads, dsa)
                }
                _ => "-".into(),
            };
            let ffn = match (&m.dense_ffn, &m.moe) {
                (Some(d), _) => format!("dense {}", d.intermediate),
                (_, Some(e)) => format!(
                    "MoE {}e top{}+{} x{}",
                    e.experts, e.top_k, e.shared_experts, e.expert_intermediate
                ),
                _ => "-".into(),
            };
            let p = crate::model::ParamCounts::of(m);
            let _ = writeln!(
                s,
                "  {:<14} {:>6} {:>6} {:>16} {:>22} {:>7.1}B {:>8.1}B {:>8} {:>13}",
                m.name,
                m.layers,
                m.hidden,
                attn,
                ffn,
                p.total() / 1e9,
                p.active() / 1e9,
                m.max_context,
                crate::model::kv_bytes_per_token(m, crate::config::KvDtype::Bf16)
            );
        }
        let _ = writeln!(s, "\nEngine profiles");
        let _ = writeln!(
            s,
            "  {:<8} {:<14} {:<12} {:>6} {:>6} {:>6} {:>10} description",
            "name", "batching", "admission", "eta_g", "eta_a", "eta_m", "step us"
        );
        for e in &self.engines {
            let _ = writeln!(
                s,
                "  {:<8} {:<14} {:<12} {:>6.2} {:>6.2} {:>6.2} {:>10.0} {}",
                e.name,
                format!("{:?}", e.batching),
                format!("{:?}", e.admission),
                e.gemm_efficiency,
                e.attention_efficiency,
                e.memory_efficiency,
                e.step_overhead_us,
                e.description
            );
        }
        s
    }
}

fn positive(what: &str, v: f64) -> Result<(), String> {
    if v.is_finite() && v > 0.0 {
        Ok(())
    } else {
        Err(format!("{what} must be a positive number, got {v}"))
    }
}

fn validate_gpu(g: &GpuSpec) -> Result<(), String> {
    positive("bf16_tflops", g.bf16_tflops)?;
    positive("fp8_tflops", g.fp8_tflops)?;
    positive("memory_gib", g.memory_gib)?;
    positive("hbm_tb_s", g.hbm_tb_s)?;
    positive("nvlink_gb_s", g.nvlink_gb_s)?;
    positive("nic_gb_s", g.nic_gb_s)?;
    if !(g.fp4_tflops.is_finite() && g.fp4_tflops >= 0.0) {
        return Err("fp4_tflops must be >= 0".into());
    }
    if g.nvlink_domain == 0 {
        return Err("nvlink_domain must be >= 1".into());
    }
    Ok(())
}

fn validate_model(m: &ModelSpec) -> Result<(), String> {
    if m.layers == 0 || m.hidden == 0 || m.vocab == 0 || m.max_context == 0 {
        return Err("layers, hidden, vocab and max_context must be > 0".into());
    }
    match (&m.gqa, &m.mla) {
        (Some(g), None) => {
            if g.q_heads == 0 || g.kv_heads == 0 || g.head_dim == 0 || g.q_heads % g.kv_heads != 0 {
                return Err("gqa: heads must be > 0 and q_heads a multiple of kv_heads".into());
            }
            if m.dsa.is_some() {
                return Err("dsa (sparse attention) is only modelled on top of mla".into());
            }
        }
        (None, Some(a)) => {
            if a.heads == 0 || a.kv_lora_rank == 0 {
                return Err("mla: heads and kv_lora_rank must be > 0".into());
            }
        }
        _ => return Err("exactly one of [gqa] or [mla] must be given".into()),
    }
    match (&m.dense_ffn, &m.moe) {
        (Some(d), None) if d.intermediate > 0 => {}
        (None, Some(e)) => {
            if e.experts == 0 || e.top_k == 0 || e.top_k > e.experts || e.expert_intermediate == 0 {
                return Err(
                    "moe: need experts > 0, 0 < top_k <= experts, expert_intermediate > 0".into(),
                );
            }
            if e.dense_layers > m.layers {
                return Err("moe: dense_layers exceeds layers".into());
            }
            if e.dense_layers > 0 && e.dense_intermediate == 0 {
                return Err("moe: dense_intermediate must be > 0 when dense_layers > 0".into());
            }
        }
        _ => {
            return Err(
                "exactly one of [dense_ffn] (intermediate > 0) or [moe] must be given".into(),
            );
        }
    }
    Ok(())
}

fn validate_curve(what: &str, xs: &[f64], ys: &[f64]) -> Result<(), String> {
    if xs.len() < 2 || xs.len() != ys.len() {
        return Err(format!(
            "{what}: needs at least 2 points and as many values as points"
        ));
    }
    if xs.windows(2).any(|w| w[1] <= w[0]) || xs[0] <= 0.0 {
        return Err(format!("{what}: points must be positive and increasing"));
    }
    if ys.iter().any(|y| !(y.is_finite() && *y > 0.0)) {
        return Err(format!("{what}: values must be positive"));
    }
    Ok(())
}

fn validate_kernels(k: &KernelTables) -> Result<(), String> {
    for c in &k.gemm {
        validate_curve(
            &format!("gemm {} {}", c.engine, c.dtype),
            &c.tokens,
            &c.efficiency,
        )?;
    }
    for c in &k.moe {
        validate_curve(
            &format!("moe {} {}", c.engine, c.dtype),
            &c.tokens_per_expert,
            &c.efficiency,
        )?;
    }
    for c in &k.allreduce {
        validate_curve(
            &format!("allreduce {} {}", c.engine, c.gpus),
            &c.bytes,
            &c.us,
        )?;
    }
    for a in &k.attention {
        if !(a.decode_floor_us.is_finite() && a.decode_floor_us >= 0.0) {
            return Err(format!(
                "attention {}: decode_floor_us must be >= 0",
                a.engine
            ));
        }
    }
    Ok(())
}

fn validate_profile(e: &EngineProfile) -> Result<(), String> {
    for (n, v) in [
        ("gemm_efficiency", e.gemm_efficiency),
        ("attention_efficiency", e.attention_efficiency),
        ("memory_efficiency", e.memory_efficiency),
        ("moe_efficiency", e.moe_efficiency),
        ("link_efficiency", e.link_efficiency),
    ] {
        if !(v.is_finite() && v > 0.0 && v <= 1.0) {
            return Err(format!("{n} must be in (0, 1], got {v}"));
        }
    }
    if !(e.alltoall_overlap.is_finite() && (0.0..=1.0).contains(&e.alltoall_overlap)) {
        return Err("alltoall_overlap must be in [0, 1]".into());
    }
    for (n, v) in [
        ("allreduce_latency_us", e.allreduce_latency_us),
        ("alltoall_latency_us", e.alltoall_latency_us),
        ("step_overhead_us", e.step_overhead_us),
        ("per_sequence_overhead_us", e.per_sequence_overhead_us),
        ("per_prefill_overhead_us", e.per_prefill_overhead_us),
        ("request_overhead_ms", e.request_overhead_ms),
        ("memory_reserve_gib", e.memory_reserve_gib),
    ] {
        if !(v.is_finite() && v >= 0.0) {
            return Err(format!("{n} must be >= 0, got {v}"));
        }
    }
    Ok(())
}
