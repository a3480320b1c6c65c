//! Model arithmetic: parameter counts, KV bytes per token, weights and KV capacity per GPU.

use crate::catalog::{DeviceLimits, EngineProfile, GpuSpec, MemoryRule, ModelSpec};
use crate::config::{EngineConfig, KvDtype};

const GIB: f64 = 1024.0 * 1024.0 * 1024.0;

/// Parameter counts by where they live (they shard differently).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct ParamCounts {
    /// Input embedding (vocab x hidden).
    pub embedding: f64,
    /// Output projection (0 when tied to the embedding).
    pub lm_head: f64,
    /// Attention projections over all layers (incl. the DSA indexer).
    pub attention: f64,
    /// Dense MLPs: every layer of a dense model, or the first dense layers of an MoE model.
    pub dense_ffn: f64,
    /// Shared experts and routers over all MoE layers.
    pub shared_ffn: f64,
    /// Parameters of one routed expert.
    pub per_expert: f64,
    /// Routed experts over all MoE layers.
    pub routed: f64,
    /// Routed-expert parameters one token touches (top-k per MoE layer).
    pub active_routed: f64,
    /// Number of MoE layers.
    pub moe_layers: u32,
}

impl ParamCounts {
    pub fn of(m: &ModelSpec) -> ParamCounts {
        let h = m.hidden as f64;
        let l = m.layers as f64;
        let mut attn_layer = 0.0;
        if let Some(g) = &m.gqa {
            let q = (g.q_heads * g.head_dim) as f64;
            let kv = (g.kv_heads * g.head_dim) as f64;
            attn_layer = h * q + 2.0 * h * kv + q * h;
        }
        if let Some(a) = &m.mla {
            let heads = a.heads as f64;
            let qk = (a.qk_nope_dim + a.qk_rope_dim) as f64;
            let q = if a.q_lora_rank > 0 {
                h * a.q_lora_rank as f64 + a.q_lora_rank as f64 * heads * qk
            } else {
                h * heads * qk
            };
            let kv_a = h * (a.kv_lora_rank + a.qk_rope_dim) as f64;
            let kv_b = a.kv_lora_rank as f64 * heads * (a.qk_nope_dim + a.v_head_dim) as f64;
            let o = heads * a.v_head_dim as f64 * h;
            attn_layer = q + kv_a + kv_b + o;
            if let Some(d) = &m.dsa {
                let ih = d.index_heads as f64;
                let id = d.index_head_dim as f64;
                let q_in = if a.q_lora_rank > 0 {
                    a.q_lora_rank as f64
                } else {
                    h
                };
                attn_layer += q_in * ih * id + h * id + h * ih;
            }
        }
        let embedding = m.vocab as f64 * h;
        let lm_head = if m.tie_embeddings { 0.0 } else { embedding };
        let mut p = ParamCounts {
            embedding,
            lm_head,
            attention: attn_layer * l,
            ..Default::default()
        };
        if let Some(d) = &m.dense_ffn {
            p.dense_ffn = 3.0 * h * d.intermediate as f64 * l;
        }
        if let Some(e) = &m.moe {
            let moe_layers = m.layers - e.dense_layers;
            p.moe_layers = moe_layers;
            p.dense_ffn = 3.0 * h * e.dense_intermediate as f64 * e.dense_layers as f64;
            p.per_expert = 3.0 * h * e.expert_intermediate as f64;
            p.routed = p.per_expert * e.experts as f64 * moe_layers as f64;
            p.active_routed = p.per_expert * e.top_k as f64 * moe_layers as f64;
            p.shared_ffn =
                (p.per_expert * e.shared_experts as f64 + h * e.experts as f64) * moe_layers as f64;
        }
        p
    }

    /// All parameters (embedding counted once if tied).
    pub fn total(&self) -> f64 {
        self.embedding
            + self.lm_head
            + self.attention
            + self.dense_ffn
            + self.shared_ffn
            + self.routed
    }

    /// Parameters touched per token (MoE: only the top-k routed experts), embeddings included.
    pub fn active(&self) -> f64 {
        self.total() - self.routed + self.active_routed
    }
}

/// KV-cache bytes per token for the whole model (all layers, unsharded), including the DSA
/// indexer cache.
pub fn kv_bytes_per_token(m: &ModelSpec, kv: KvDtype) -> u64 {
    let l = m.layers as u64;
    let mut per_layer = 0u64;
    if let Some(g) = &m.gqa {
        let b = match kv {
            KvDtype::Bf16 => 2,
            KvDtype::Fp8 => 1,
        };
        per_layer = 2 * g.kv_heads as u64 * g.head_dim as u64 * b;
    }
    if let Some(a) = &m.mla {
        per_layer = match kv {
            KvDtype::Bf16 => (a.kv_lora_rank + a.qk_rope_dim) as u64 * 2,
            // vLLM's fp8_ds_mla layout: FP8 latent, one f32 scale per 128 values, BF16 RoPE part.
            KvDtype::Fp8 => {
                a.kv_lora_rank as u64
                    + (a.kv_lora_rank as u64).div_ceil(128) * 4
                    + a.qk_rope_dim as u64 * 2
            }
        };
    }
    per_layer * l + indexer_bytes_per_token(m)
}

/// DSA indexer key cache per token (all layers): FP8 key + one f32 scale per layer.
pub fn indexer_bytes_per_token(m: &ModelSpec) -> u64 {
    m.dsa
        .as_ref()
        .map(|d| (d.index_head_dim as u64 + 4) * m.layers as u64)
        .unwrap_or(0)
}

/// KV bytes per token held by each GPU of a rank: GQA heads shard over TP down to one head
/// per GPU (beyond that they are replicated); the MLA latent is not sharded at all.
pub fn kv_bytes_per_token_per_gpu(m: &ModelSpec, kv: KvDtype, tp: u32) -> u64 {
    match &m.gqa {
        Some(g) => {
            let heads_per_gpu = (g.kv_heads / tp.max(1)).max(1) as u64;
            let full = kv_bytes_per_token(m, kv);
            full / g.kv_heads as u64 * heads_per_gpu
        }
        None => kv_bytes_per_token(m, kv),
    }
}

/// Memory layout of one GPU of a worker, and the resulting KV capacity.
#[derive(Clone, Debug, PartialEq)]
pub struct MemoryPlan {
    /// Device memory, bytes.
    pub device_bytes: f64,
    /// Budget = device memory x memory fraction, bytes.
    pub budget_bytes: f64,
    /// Weights resident on one GPU, bytes.
    pub weight_bytes: f64,
    /// Activation estimate at the full token budget, bytes.
    pub activation_bytes: f64,
    /// Engine profile's fixed reserve (CUDA graphs, NCCL buffers...), bytes.
    pub reserve_bytes: f64,
    /// What is left for the KV cache, bytes (may be negative: does not fit).
    pub kv_bytes: f64,
    /// KV bytes one token occupies on one GPU.
    pub kv_bytes_per_token_gpu: u64,
    /// KV capacity of one scheduler (DP rank), tokens (a multiple of the block size).
    pub tokens_per_rank: u64,
    /// KV capacity of one scheduler (DP rank), blocks.
    pub blocks_per_rank: u32,
}

/// Weights on one GPU. Embedding and LM head stay BF16 and are vocab-parallel over TP;
/// attention, dense MLPs and shared experts shard over TP (replicated across DP ranks);
/// routed experts shard over all `tp*dp` GPUs (EP-way by expert, the rest within experts).
pub fn weight_bytes_per_gpu(p: &ParamCounts, cfg: &EngineConfig) -> f64 {
    let tp = cfg.tp.max(1) as f64;
    let g = cfg.gpus().max(1) as f64;
    let w = cfg.weight_dtype;
    (p.embedding + p.lm_head) * 2.0 / tp
        + p.attention * w.attn_bytes() / tp
        + (p.dense_ffn + p.shared_ffn) * w.ffn_bytes() / tp
        + p.routed * w.ffn_bytes() / g
}

/// Peak activation memory estimate per GPU at the full token budget: a few hidden-sized
/// buffers plus the widest MLP intermediate per token, plus FP32 logits for every sequence.
pub fn activation_bytes_per_gpu(m: &ModelSpec, cfg: &EngineConfig) -> f64 {
    let tp = cfg.tp.max(1) as f64;
    let h = m.hidden as f64;
    let ffn = match (&m.dense_ffn, &m.moe) {
        (Some(d), _) => d.intermediate as f64,
        (_, Some(e)) => (e.dense_intermediate as f64).max((e.top_k * e.expert_intermediate) as f64),
        _ => 0.0,
    };
    cfg.token_budget() as f64 * 2.0 * (4.0 * h + 2.0 * ffn / tp)
        + cfg.seq_limit() as f64 * m.vocab as f64 / tp * 4.0
}

/// SGLang's default `mem_fraction_static` (server_args, 0.5.x): the device minus a reserve that
/// grows with the chunk size, the CUDA-graph batch and the parallel degrees (MiB), at least
/// 10 GiB on GPUs over 60 GB.
pub fn sglang_static_fraction(gpu: &GpuSpec, cfg: &EngineConfig, lim: &DeviceLimits) -> f64 {
    let gpu_mib = gpu.memory_gib * 1024.0;
    let tp = cfg.tp.max(1) as f64;
    let dp = cfg.dp.max(1) as f64;
    let graph_bs = if cfg.tp >= 4 {
        lim.cuda_graph_max_bs.max(512)
    } else {
        lim.cuda_graph_max_bs
    } as f64;
    let chunk = lim.max_num_batched_tokens.max(2048) as f64;
    let mut reserved = 512.0 + chunk * 1.5 + graph_bs * 2.0 + tp / 8.0 * 1024.0;
    if cfg.dp > 1 {
        reserved += graph_bs * dp * 3.0;
        if graph_bs > 300.0 {
            reserved += graph_bs * dp * 1.5;
        }
    }
    if gpu.memory_gib * GIB > 60e9 {
        reserved = reserved.max(10240.0);
    }
    ((gpu_mib - reserved) / gpu_mib).clamp(0.05, 0.95)
}

/// The per-GPU memory plan under the engine's own rule (does not validate; see
/// [`crate::Engine::new`]). `cfg` must be resolved (limits filled in).
pub fn memory_plan(
    gpu: &GpuSpec,
    m: &ModelSpec,
    cfg: &EngineConfig,
    prof: &EngineProfile,
) -> MemoryPlan {
    let p = ParamCounts::of(m);
    let device_bytes = gpu.memory_gib * GIB;
    let weight_bytes = weight_bytes_per_gpu(&p, cfg);
    let activation_bytes = activation_bytes_per_gpu(m, cfg);
    let d = &prof.defaults;
    let reserve_bytes = prof.memory_reserve_gib * GIB;
    let (budget_bytes, kv_bytes) = match d.memory {
        MemoryRule::TotalFraction => {
            let budget = device_bytes * cfg.memory_fraction.unwrap_or(d.memory_fraction);
            (
                budget,
                budget - weight_bytes - activation_bytes - reserve_bytes,
            )
        }
        MemoryRule::FreeFraction => {
            let f = cfg.memory_fraction.unwrap_or(d.memory_fraction);
            let free = device_bytes - weight_bytes - activation_bytes - reserve_bytes;
            (device_bytes, f * free)
        }
        MemoryRule::StaticFraction => {
            let lim = d.limits_for(gpu.memory_gib);
            let f = cfg
                .memory_fraction
                .unwrap_or_else(|| sglang_static_fraction(gpu, cfg, &lim));
            let budget = device_bytes * f;
            (budget, budget - weight_bytes)
        }
    };
    let per_tok = kv_bytes_per_token_per_gpu(m, cfg.kv_dtype, cfg.tp);
    let bs = cfg.block_size.max(1) as u64;
    let blocks = if kv_bytes > 0.0 && per_tok > 0 {
        ((kv_bytes / per_tok as f64).floor() as u64 / bs).min(u32::MAX as u64 - 1)
    } else {
        0
    };
    MemoryPlan {
        device_bytes,
        budget_bytes,
        weight_bytes,
        activation_bytes,
        reserve_bytes,
        kv_bytes,
        kv_bytes_per_token_gpu: per_tok,
        tokens_per_rank: blocks * bs,
        blocks_per_rank: blocks as u32,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::Catalog;

    fn approx(a: f64, b: f64, rel: f64) -> bool {
        ((a - b) / b).abs() <= rel
    }

    #[test]
    fn parameter_counts_match_published_sizes() {
        let c = Catalog::builtin().unwrap();
        let q = ParamCounts::of(c.model("Qwen3-32B").unwrap());
        assert!(approx(q.total(), 32.76e9, 0.01), "{}", q.total());
        let l8 = ParamCounts::of(c.model("Llama-3.1-8B").unwrap());
        assert!(approx(l8.total(), 8.03e9, 0.01), "{}", l8.total());
        let l70 = ParamCounts::of(c.model("Llama-3.1-70B").unwrap());
        assert!(approx(l70.total(), 70.55e9, 0.01), "{}", l70.total());
        let ds = ParamCounts::of(c.model("DeepSeek-V3").unwrap());
        assert!(approx(ds.total(), 671e9, 0.01), "{}", ds.total());
        assert!(approx(ds.active(), 37.5e9, 0.03), "{}", ds.active());
        // Attention of one DeepSeek layer: 187M parameters (q_a, q_b, kv_a, kv_b, o).
        assert!(approx(ds.attention / 61.0, 187.0e6, 0.01));
    }

    #[test]
    fn kv_bytes_per_token_match_hand_computation() {
        let c = Catalog::builtin().unwrap();
        // 64 layers x 2 (K,V) x 8 heads x 128 x 2 B.
        assert_eq!(
            kv_bytes_per_token(c.model("Qwen3-32B").unwrap(), KvDtype::Bf16),
            262_144
        );
        assert_eq!(
            kv_bytes_per_token(c.model("llama-3.1-8b").unwrap(), KvDtype::Fp8),
            65_536
        );
        assert_eq!(
            kv_bytes_per_token(c.model("Llama-3.1-70B").unwrap(), KvDtype::Bf16),
            327_680
        );
        // 61 x 576 x 2 B and 61 x 656 B (fp8_ds_mla).
        assert_eq!(
            kv_bytes_per_token(c.model("DeepSeek-V3").unwrap(), KvDtype::Bf16),
            70_272
        );
        assert_eq!(
            kv_bytes_per_token(c.model("DeepSeek-V3").unwrap(), KvDtype::Fp8),
            40_016
        );
        // V3.2 adds 61 x 132 B of indexer keys.
        assert_eq!(
            kv_bytes_per_token(c.model("DeepSeek-V3.2").unwrap(), KvDtype::Bf16),
            70_272 + 8_052
        );
        // GQA shards over TP down to one KV head per GPU; MLA does not shard.
        let q = c.model("Qwen3-32B").unwrap();
        assert_eq!(kv_bytes_per_token_per_gpu(q, KvDtype::Bf16, 2), 131_072);
        assert_eq!(kv_bytes_per_token_per_gpu(q, KvDtype::Bf16, 8), 32_768);
        assert_eq!(kv_bytes_per_token_per_gpu(q, KvDtype::Bf16, 16), 32_768);
        let d = c.model("DeepSeek-V3").unwrap();
        assert_eq!(kv_bytes_per_token_per_gpu(d, KvDtype::Bf16, 8), 70_272);
    }

    #[test]
    fn weights_per_gpu_for_qwen_tp2() {
        let c = Catalog::builtin().unwrap();
        let m = c.model("Qwen3-32B").unwrap();
        let cfg = EngineConfig {
            tp: 2,
            ..EngineConfig::default()
        };
        let w = weight_bytes_per_gpu(&ParamCounts::of(m), &cfg);
        // 32.76 B params x 2 B / 2 GPUs.
        assert!(approx(w, 32.76e9, 0.01), "{w}");
    }
}
