//! Engine configuration: what a deployment file says about one engine worker.

use serde::Deserialize;

/// All defaults in one place.
pub mod defaults {
    /// GPU type (catalog name).
    pub const GPU: &str = "H200";
    /// Model (catalog name).
    pub const MODEL: &str = "Qwen3-32B";
    /// Engine profile (catalog name).
    pub const ENGINE: &str = "vllm";
    // The token budget (`max_num_batched_tokens`), the running-sequence limit (`max_num_seqs`)
    // and the memory fraction default to the engine's own, which depend on the device: the
    // `[defaults]` table of each engine profile (data/catalog/engines/*.toml).
    /// Tokens per KV block (vLLM `block_size`).
    pub const BLOCK_SIZE: u32 = 16;
    /// Tensor / data (attention) / expert parallel degrees.
    pub const TP: u32 = 1;
    pub const DP: u32 = 1;
    pub const EP: u32 = 1;
    /// Prefix caching on, KV events on.
    pub const PREFIX_CACHING: bool = true;
    pub const KV_EVENTS: bool = true;
}

/// Bounds of every numeric field of [`EngineConfig`], in one place (`docs/limits.md` lists them
/// with the deployment file's own). [`EngineConfig::check_bounds`] applies the ones that need no
/// catalog; [`crate::Engine::new`] adds those that depend on the GPU and model (TP at most the
/// GPU's NVLink domain, `max_model_len` at most the model's context, the KV pool's size).
pub mod limits {
    /// `tp`, `dp`, `ep`: at least 1, at most this many (and `tp` at most the GPU's NVLink
    /// domain: tensor parallelism across nodes is not modelled).
    pub const MAX_PARALLEL: u32 = 1024;
    /// GPUs of one worker (`tp × dp`).
    pub const MAX_GPUS_PER_WORKER: u32 = 1024;
    /// `max_num_batched_tokens` (vLLM's largest practical budgets are ~64k).
    pub const MAX_BATCHED_TOKENS: u32 = 1 << 24;
    /// `max_num_seqs` per scheduler (vLLM's default is 256–1024).
    pub const MAX_NUM_SEQS: u32 = 1 << 16;
    /// `block_size` in tokens.
    pub const MAX_BLOCK_SIZE: u32 = 1024;
    /// KV blocks of one worker, all DP ranks (from the memory plan or
    /// `num_gpu_blocks_override × dp`): 72 GB200s of DeepSeek's MLA KV hold ~11 M.
    pub const MAX_BLOCKS_PER_WORKER: u64 = 1 << 25;
    /// Host memory the simulator's KV pool takes per block (entry, free queue, hash table),
    /// for the memory estimate made before a deployment's workers are built.
    pub const POOL_BYTES_PER_BLOCK: u64 = 48;
}

/// A field of an [`EngineConfig`] out of its bounds: which field, and why.
#[derive(Clone, Debug, PartialEq)]
pub struct OutOfBounds {
    pub field: &'static str,
    pub message: String,
}

/// Weight precision of the linear layers.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum WeightDtype {
    #[default]
    Bf16,
    Fp8,
    /// 4-bit NVFP4 (E2M1 + an FP8 scale per 16 values) for the MLP / expert weights; attention
    /// projections stay FP8 as in NVIDIA's published NVFP4 checkpoints.
    Nvfp4,
}

impl WeightDtype {
    /// Bytes per parameter for MLP/expert weights.
    pub fn ffn_bytes(self) -> f64 {
        match self {
            WeightDtype::Bf16 => 2.0,
            WeightDtype::Fp8 => 1.0,
            WeightDtype::Nvfp4 => 0.5625,
        }
    }
    /// Bytes per parameter for attention projections.
    pub fn attn_bytes(self) -> f64 {
        match self {
            WeightDtype::Bf16 => 2.0,
            WeightDtype::Fp8 | WeightDtype::Nvfp4 => 1.0,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            WeightDtype::Bf16 => "BF16",
            WeightDtype::Fp8 => "FP8",
            WeightDtype::Nvfp4 => "NVFP4",
        }
    }
}

/// KV-cache precision.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum KvDtype {
    #[default]
    Bf16,
    Fp8,
}

impl KvDtype {
    pub fn name(self) -> &'static str {
        match self {
            KvDtype::Bf16 => "BF16",
            KvDtype::Fp8 => "FP8",
        }
    }
}

/// What the worker does in a deployment.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Prefill and decode on the same engine.
    #[default]
    Aggregated,
    /// Prefill only: a request finishes after its first token and keeps its KV blocks until
    /// [`crate::Engine::release`] (the transfer to a decode worker finished).
    Prefill,
    /// Decode only: a request reserves KV blocks, waits for [`crate::Engine::kv_arrived`],
    /// then decodes from its second token on.
    Decode,
}

/// One engine worker's configuration. Embeddable in a deployment TOML; unknown keys are errors.
///
/// ```toml
/// gpu = "H200"
/// model = "Qwen3-32B"
/// weight_dtype = "bf16"    # bf16 | fp8 | nvfp4
/// kv_dtype = "bf16"        # bf16 | fp8
/// tp = 2                   # tensor parallel
/// dp = 1                   # data-parallel attention ranks (MoE models only)
/// ep = 1                   # expert parallel (divides tp*dp and the expert count)
/// engine = "vllm"          # vllm | sglang | trtllm (or a user profile)
/// # max_num_batched_tokens = 8192  # default: the engine's for this GPU (profile [defaults])
/// # max_num_seqs = 1024            # default: the engine's for this GPU
/// block_size = 16
/// # memory_fraction = 0.9          # the engine's own knob: vLLM gpu_memory_utilization,
///                                  # SGLang mem_fraction_static, TRT-LLM free_gpu_memory_fraction
/// role = "aggregated"      # aggregated | prefill | decode
/// # max_model_len = 32768  # default: the model's max context
/// prefix_caching = true
/// kv_events = true
/// # num_gpu_blocks_override = 1000
/// ```
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct EngineConfig {
    pub gpu: String,
    pub model: String,
    pub weight_dtype: WeightDtype,
    pub kv_dtype: KvDtype,
    pub tp: u32,
    pub dp: u32,
    pub ep: u32,
    pub engine: String,
    /// Token budget per step; `None` = the engine's default for the GPU.
    pub max_num_batched_tokens: Option<u32>,
    /// Running sequences per scheduler; `None` = the engine's default for the GPU.
    pub max_num_seqs: Option<u32>,
    pub block_size: u32,
    /// The engine's memory knob, with the engine's meaning (see [`crate::catalog::MemoryRule`]);
    /// `None` = the engine's default.
    pub memory_fraction: Option<f64>,
    pub role: Role,
    /// Context cap (prompt + output); `None` = the model's `max_context`.
    pub max_model_len: Option<u32>,
    /// Reuse cached prompt blocks across requests.
    pub prefix_caching: bool,
    /// Produce `KvEvent`s (turn off when nobody consumes them; saves work).
    pub kv_events: bool,
    /// Use exactly this many KV blocks per scheduler instead of the memory plan's count
    /// (vLLM `num_gpu_blocks_override`; for tests and for matching a real engine's log).
    pub num_gpu_blocks_override: Option<u32>,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            gpu: defaults::GPU.into(),
            model: defaults::MODEL.into(),
            weight_dtype: WeightDtype::Bf16,
            kv_dtype: KvDtype::Bf16,
            tp: defaults::TP,
            dp: defaults::DP,
            ep: defaults::EP,
            engine: defaults::ENGINE.into(),
            max_num_batched_tokens: None,
            max_num_seqs: None,
            block_size: defaults::BLOCK_SIZE,
            memory_fraction: None,
            role: Role::Aggregated,
            max_model_len: None,
            prefix_caching: defaults::PREFIX_CACHING,
            kv_events: defaults::KV_EVENTS,
            num_gpu_blocks_override: None,
        }
    }
}

impl EngineConfig {
    /// Token budget per step (resolved configurations always have one).
    pub fn token_budget(&self) -> u32 {
        self.max_num_batched_tokens.unwrap_or(8192)
    }
    /// Running-sequence limit per scheduler (resolved configurations always have one).
    pub fn seq_limit(&self) -> u32 {
        self.max_num_seqs.unwrap_or(256)
    }
    /// Check every numeric field against [`limits`] (the bounds that need no catalog).
    pub fn check_bounds(&self) -> Result<(), OutOfBounds> {
        let oob = |field: &'static str, message: String| Err(OutOfBounds { field, message });
        for (field, v) in [("tp", self.tp), ("dp", self.dp), ("ep", self.ep)] {
            if v == 0 || v > limits::MAX_PARALLEL {
                return oob(
                    field,
                    format!("{field} must be in 1..={}, got {v}", limits::MAX_PARALLEL),
                );
            }
        }
        let gpus = self.tp as u64 * self.dp as u64;
        if gpus > limits::MAX_GPUS_PER_WORKER as u64 {
            return oob(
                "dp",
                format!(
                    "one worker may span at most {} GPUs, tp {} x dp {} = {gpus}",
                    limits::MAX_GPUS_PER_WORKER,
                    self.tp,
                    self.dp
                ),
            );
        }
        if let Some(v) = self.max_num_batched_tokens
            && (v == 0 || v > limits::MAX_BATCHED_TOKENS)
        {
            return oob(
                "max_num_batched_tokens",
                format!(
                    "max_num_batched_tokens must be in 1..={}, got {v}",
                    limits::MAX_BATCHED_TOKENS
                ),
            );
        }
        if let Some(v) = self.max_num_seqs
            && (v == 0 || v > limits::MAX_NUM_SEQS)
        {
            return oob(
                "max_num_seqs",
                format!(
                    "max_num_seqs must be in 1..={}, got {v}",
                    limits::MAX_NUM_SEQS
                ),
            );
        }
        if self.block_size == 0 || self.block_size > limits::MAX_BLOCK_SIZE {
            return oob(
                "block_size",
                format!(
                    "block_size must be in 1..={}, got {}",
                    limits::MAX_BLOCK_SIZE,
                    self.block_size
                ),
            );
        }
        if let Some(f) = self.memory_fraction
            && !(f > 0.0 && f <= 1.0)
        {
            return oob(
                "memory_fraction",
                format!("memory_fraction must be in (0, 1], got {f:?}"),
            );
        }
        if self.max_model_len == Some(0) {
            return oob("max_model_len", "max_model_len must be >= 1".into());
        }
        if let Some(n) = self.num_gpu_blocks_override {
            let total = n as u64 * self.dp as u64;
            if n == 0 || total > limits::MAX_BLOCKS_PER_WORKER {
                return oob(
                    "num_gpu_blocks_override",
                    format!(
                        "num_gpu_blocks_override must be >= 1 and at most {} blocks per worker (x dp {}), got {n}",
                        limits::MAX_BLOCKS_PER_WORKER,
                        self.dp
                    ),
                );
            }
        }
        Ok(())
    }

    /// Number of GPUs one worker spans.
    pub fn gpus(&self) -> u32 {
        self.tp.saturating_mul(self.dp)
    }
}
