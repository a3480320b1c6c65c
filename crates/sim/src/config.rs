//! Deployment files (TOML): the same file drives `lab` (virtual time) and `serve` (real time).
//!
//! ```toml
//! name = "disagg-kv"
//! description = "6 prefill + 2 decode TP2 workers, KV-aware routing"
//!
//! [engine]            # shared by every group; see EngineConfig for each field and default
//! gpu = "H200"
//! model = "Qwen3-32B"
//! tp = 2
//! engine = "vllm"
//!
//! [[group]]
//! role = "prefill"    # aggregated | prefill | decode
//! count = 6
//!
//! [[group]]
//! role = "decode"
//! count = 2
//! [group.engine]      # per-group overrides of [engine]
//! max_num_batched_tokens = 2048
//!
//! [router]            # see switchyard_route::RouterConfig
//! policy = "kv"
//!
//! [events]            # how engines' KV events reach the router
//! mode = "exact"      # exact | approximate (router predicts from its own decisions)
//! lag_ms = 5.0
//!
//! [network]           # KV transfer between prefill and decode workers
//! setup_ms = 1.0
//! efficiency = 0.85
//! # nic_gb_s = 50.0         # per GPU; default: the GPU's catalog value
//! transfer = "after-prefill" # or "layerwise" (streamed while the prefill computes)
//! ```

use std::path::Path;

use serde::{Deserialize, Serialize};
use switchyard_engine::{EngineConfig, Role};
use switchyard_route::RouterConfig;

use crate::SimError;

/// Defaults of the deployment file's own fields (engine and router defaults live in their crates).
pub mod defaults {
    /// KV events reach the router this long after the engine emits them (ZMQ + decode).
    pub const EVENT_LAG_MS: f64 = 5.0;
    /// Fixed cost of setting up one KV transfer (NIXL handshake, descriptor exchange).
    pub const TRANSFER_SETUP_MS: f64 = 1.0;
    /// Share of NIC line rate a KV transfer achieves.
    pub const NIC_EFFICIENCY: f64 = 0.85;
    pub const SEED: u64 = 0;
}

/// A whole deployment: worker groups, router, KV-event feed and network.
#[derive(Clone, Debug)]
pub struct Deployment {
    pub name: String,
    pub description: String,
    pub groups: Vec<Group>,
    pub router: RouterConfig,
    pub events: EventsConfig,
    pub network: NetworkConfig,
    pub seed: u64,
    /// The file as written, echoed into reports.
    pub source: String,
}

/// `count` identical workers.
#[derive(Clone, Debug)]
pub struct Group {
    pub count: u32,
    pub engine: EngineConfig,
}

#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum EventMode {
    /// The index is fed by the engines' KV events (vLLM/SGLang publish them).
    #[default]
    Exact,
    /// Engines publish nothing: the router records its own decisions as predicted cache
    /// contents (TTL + capacity bounded).
    Approximate,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct EventsConfig {
    pub mode: EventMode,
    /// Delay between an engine emitting a KV event and the router applying it, in ms.
    pub lag_ms: f64,
}

impl Default for EventsConfig {
    fn default() -> Self {
        Self {
            mode: EventMode::Exact,
            lag_ms: defaults::EVENT_LAG_MS,
        }
    }
}

/// When the prefill worker's KV starts moving.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum TransferMode {
    /// After the prefill finishes (vLLM's NIXL connector: the decode worker pulls the KV once
    /// the prefill response is back).
    #[default]
    AfterPrefill,
    /// Layer by layer while the prefill computes (TensorRT-LLM / Mooncake-style layer-wise
    /// streaming): when the prefill ends, only what the link could not carry during it remains,
    /// and at least the last layer's share.
    Layerwise,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct NetworkConfig {
    /// Per-transfer setup latency in ms.
    pub setup_ms: f64,
    /// Achieved share of NIC line rate.
    pub efficiency: f64,
    /// NIC bandwidth per GPU in GB/s; default: the GPU's catalog value.
    pub nic_gb_s: Option<f64>,
    /// `after-prefill` (default) or `layerwise` (overlapped with the prefill).
    pub transfer: TransferMode,
}

impl Default for NetworkConfig {
    fn default() -> Self {
        Self {
            setup_ms: defaults::TRANSFER_SETUP_MS,
            efficiency: defaults::NIC_EFFICIENCY,
            nic_gb_s: None,
            transfer: TransferMode::AfterPrefill,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDeployment {
    name: Option<String>,
    #[serde(default)]
    description: String,
    #[serde(default)]
    engine: toml::Table,
    #[serde(rename = "group", default)]
    groups: Vec<RawGroup>,
    #[serde(default)]
    router: RouterConfig,
    #[serde(default)]
    events: EventsConfig,
    #[serde(default)]
    network: NetworkConfig,
    #[serde(default)]
    seed: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGroup {
    role: Option<Role>,
    count: u32,
    #[serde(default)]
    engine: toml::Table,
}

impl Deployment {
    /// Read and validate a deployment file. Errors name the file and the field.
    pub fn load(path: &Path) -> Result<Self, SimError> {
        let text = std::fs::read_to_string(path).map_err(|e| SimError::Config {
            file: path.display().to_string(),
            message: format!("cannot read: {e}"),
        })?;
        Self::parse(&text, &path.display().to_string())
    }

    /// Parse a deployment from TOML text; `file` names it in errors.
    pub fn parse(text: &str, file: &str) -> Result<Self, SimError> {
        let err = |message: String| SimError::Config {
            file: file.to_string(),
            message,
        };
        let raw: RawDeployment =
            toml::from_str(text).map_err(|e| err(e.to_string().trim_end().to_string()))?;
        if raw.groups.is_empty() {
            return Err(err(
                "no worker groups: add at least one [[group]] with a count".into(),
            ));
        }
        let mut groups = Vec::with_capacity(raw.groups.len());
        for (i, g) in raw.groups.into_iter().enumerate() {
            if g.count == 0 {
                return Err(err(format!(
                    "group {} ([[group]] #{}): count must be at least 1",
                    i,
                    i + 1
                )));
            }
            let mut table = raw.engine.clone();
            for (k, v) in g.engine {
                table.insert(k, v);
            }
            let mut engine: EngineConfig =
                toml::Value::Table(table)
                    .try_into()
                    .map_err(|e: toml::de::Error| {
                        err(format!(
                            "[[group]] #{} engine: {}",
                            i + 1,
                            e.to_string().trim_end()
                        ))
                    })?;
            if let Some(role) = g.role {
                engine.role = role;
            }
            groups.push(Group {
                count: g.count,
                engine,
            });
        }
        let roles = |r: Role| groups.iter().any(|g| g.engine.role == r);
        if roles(Role::Prefill) != roles(Role::Decode) {
            return Err(err(
                "a disaggregated deployment needs both a prefill and a decode group".into(),
            ));
        }
        if raw.events.lag_ms < 0.0 || !raw.events.lag_ms.is_finite() {
            return Err(err(format!(
                "[events] lag_ms must be >= 0, got {}",
                raw.events.lag_ms
            )));
        }
        if !(raw.network.efficiency > 0.0 && raw.network.efficiency <= 1.0) {
            return Err(err(format!(
                "[network] efficiency must be in (0, 1], got {}",
                raw.network.efficiency
            )));
        }
        if raw.network.setup_ms < 0.0 || raw.network.nic_gb_s.is_some_and(|b| b <= 0.0) {
            return Err(err(
                "[network] setup_ms must be >= 0 and nic_gb_s > 0".into()
            ));
        }
        Ok(Deployment {
            name: raw.name.unwrap_or_else(|| {
                Path::new(file)
                    .file_stem()
                    .map(|s| s.to_string_lossy().into_owned())
                    .unwrap_or_else(|| "deployment".into())
            }),
            description: raw.description,
            groups,
            router: raw.router,
            events: raw.events,
            network: raw.network,
            seed: raw.seed.unwrap_or(defaults::SEED),
            source: text.to_string(),
        })
    }

    /// True when prefill and decode run on separate workers.
    pub fn is_disaggregated(&self) -> bool {
        self.groups.iter().any(|g| g.engine.role == Role::Prefill)
    }

    /// Total workers.
    pub fn workers(&self) -> u32 {
        self.groups.iter().map(|g| g.count).sum()
    }

    /// Total GPUs.
    pub fn gpus(&self) -> u32 {
        self.groups.iter().map(|g| g.count * g.engine.gpus()).sum()
    }
}
