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
//! lag_ms = 5.0        # (what feeds the index is [router] kv_feed: events | approximate | hybrid)
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

/// Bounds of every numeric field of a deployment file, in one place (`docs/limits.md` lists
/// them). Engine fields (`[engine]`, `[group.engine]`) have theirs in [`engine`]; the router's
/// are checked by `RouterConfig::validate`.
pub mod limits {
    pub use switchyard_engine::config::limits as engine;
    /// A deployment file is a few hundred bytes; anything over this is not one.
    pub const MAX_FILE_BYTES: u64 = 1 << 20;
    /// Workers of one `[[group]]`.
    pub const MAX_COUNT: u32 = 10_000;
    /// Workers of the whole deployment.
    pub const MAX_WORKERS: u32 = 10_000;
    /// GPUs of the whole deployment (Σ count × tp × dp).
    pub const MAX_GPUS: u64 = 100_000;
    /// `[events] lag_ms`, closed range: up to a minute.
    pub const LAG_MS: (f64, f64) = (0.0, 60_000.0);
    /// `[network] setup_ms`, closed range: up to 10 s per transfer.
    pub const SETUP_MS: (f64, f64) = (0.0, 10_000.0);
    /// `[network] efficiency`, (0, 1].
    pub const EFFICIENCY: (f64, f64) = (0.0, 1.0);
    /// `[network] nic_gb_s` per GPU, closed range: 0.1 GB/s (~1 Gb/s) to 10 TB/s.
    pub const NIC_GB_S: (f64, f64) = (0.1, 10_000.0);
}

/// A whole deployment: worker groups, router, KV-event feed and network.
#[derive(Clone, Debug)]
pub struct Deployment {
    pub name: String,
    /// The file it was read from, as given (names it in errors).
    pub file: String,
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
        let meta = std::fs::metadata(path).map_err(|e| SimError::Config {
            file: path.display().to_string(),
            message: format!("cannot read: {e}"),
        })?;
        if meta.len() > limits::MAX_FILE_BYTES {
            return Err(SimError::Config {
                file: path.display().to_string(),
                message: format!(
                    "{} bytes is not a deployment file (at most {} bytes)",
                    meta.len(),
                    limits::MAX_FILE_BYTES
                ),
            });
        }
        let text = std::fs::read_to_string(path).map_err(|e| SimError::Config {
            file: path.display().to_string(),
            message: format!("cannot read: {e}"),
        })?;
        Self::parse(&text, &path.display().to_string())
    }

    /// Parse a deployment from TOML text; `file` names it in errors (with `:line:column` for
    /// a value out of its bounds).
    pub fn parse(text: &str, file: &str) -> Result<Self, SimError> {
        let err = |message: String| SimError::Config {
            file: file.to_string(),
            message,
        };
        if text.len() as u64 > limits::MAX_FILE_BYTES {
            return Err(err(format!(
                "{} bytes is not a deployment file (at most {} bytes)",
                text.len(),
                limits::MAX_FILE_BYTES
            )));
        }
        let loc = Locator::new(text);
        if loc.looks_like_recipe() {
            return Err(err(
                "this is a `lab ab` recipe (a, b, goodput, [trace]), not a deployment file: pass one of the deployment files it names (its `a` or `b`)".into(),
            ));
        }
        let raw: RawDeployment =
            toml::from_str(text).map_err(|e| err(e.to_string().trim_end().to_string()))?;
        // A value out of bounds: `file:line:column` of the value when it can be found.
        let at = |path: &[&[Key]], message: String| SimError::Config {
            file: match path.iter().find_map(|p| loc.find(p)) {
                Some(pos) => format!("{file}:{pos}"),
                None => file.to_string(),
            },
            message,
        };
        if raw.groups.is_empty() {
            return Err(err(
                "no worker groups: add at least one [[group]] with a count".into(),
            ));
        }
        let mut groups = Vec::with_capacity(raw.groups.len());
        let (mut workers, mut gpus) = (0u64, 0u64);
        for (i, g) in raw.groups.into_iter().enumerate() {
            let count_at = [Key::T("group"), Key::I(i), Key::T("count")];
            if g.count == 0 || g.count > limits::MAX_COUNT {
                return Err(at(
                    &[&count_at],
                    format!(
                        "[[group]] #{}: count must be in 1..={}, got {}",
                        i + 1,
                        limits::MAX_COUNT,
                        g.count
                    ),
                ));
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
            if let Err(e) = engine.check_bounds() {
                return Err(at(
                    &[
                        &[
                            Key::T("group"),
                            Key::I(i),
                            Key::T("engine"),
                            Key::T(e.field),
                        ],
                        &[Key::T("engine"), Key::T(e.field)],
                    ],
                    format!("[[group]] #{} engine: {}", i + 1, e.message),
                ));
            }
            workers += g.count as u64;
            gpus += g.count as u64 * engine.gpus() as u64;
            if workers > limits::MAX_WORKERS as u64 || gpus > limits::MAX_GPUS {
                return Err(at(
                    &[&count_at],
                    format!(
                        "too large: {workers} workers on {gpus} GPUs by [[group]] #{} (at most {} workers and {} GPUs per deployment)",
                        i + 1,
                        limits::MAX_WORKERS,
                        limits::MAX_GPUS
                    ),
                ));
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
        let range = |table: &'static str,
                     field: &'static str,
                     v: f64,
                     (lo, hi): (f64, f64),
                     lo_open: bool| {
            let ok = v.is_finite() && v <= hi && if lo_open { v > lo } else { v >= lo };
            if ok {
                Ok(())
            } else {
                Err(at(
                    &[&[Key::T(table), Key::T(field)]],
                    format!(
                        "[{table}] {field} must be in {}{lo}, {hi}], got {v:?}",
                        if lo_open { "(" } else { "[" }
                    ),
                ))
            }
        };
        range("events", "lag_ms", raw.events.lag_ms, limits::LAG_MS, false)?;
        range(
            "network",
            "setup_ms",
            raw.network.setup_ms,
            limits::SETUP_MS,
            false,
        )?;
        range(
            "network",
            "efficiency",
            raw.network.efficiency,
            limits::EFFICIENCY,
            true,
        )?;
        if let Some(b) = raw.network.nic_gb_s {
            range("network", "nic_gb_s", b, limits::NIC_GB_S, false)?;
        }
        raw.router
            .validate()
            .map_err(|e| at(&[&[Key::T("router")]], format!("[router] {e}")))?;
        // What the router hashes with and how it breaks ties, resolved here, once, for `lab`,
        // `serve --config` and anything else that reads the file: the engines' KV block size
        // (a router hashing with another size matches no KV event) and one seed.
        let mut router = raw.router;
        let block_size = groups[0].engine.block_size;
        if let Some(i) = groups
            .iter()
            .position(|g| g.engine.block_size != block_size)
        {
            return Err(err(format!(
                "every group must use the same KV block_size (group #1 has {block_size}, group #{} has {})",
                i + 1,
                groups[i].engine.block_size
            )));
        }
        let bs_at = [Key::T("router"), Key::T("block_size")];
        if loc.find(&bs_at).is_some() && router.block_size != block_size {
            return Err(at(
                &[&bs_at],
                format!(
                    "[router] block_size {} differs from the engines' block_size {block_size}: the router must hash prompts in the engines' blocks (leave it out; it follows the engines)",
                    router.block_size
                ),
            ));
        }
        router.block_size = block_size;
        let router_seed_at = [Key::T("router"), Key::T("seed")];
        let seed = match (raw.seed, loc.find(&router_seed_at).is_some()) {
            (Some(s), true) if s != router.seed => {
                return Err(at(
                    &[&router_seed_at],
                    format!(
                        "two seeds: seed = {s} and [router] seed = {}; keep one (the top-level seed seeds the whole deployment)",
                        router.seed
                    ),
                ));
            }
            (Some(s), _) => s,
            (None, true) => router.seed,
            (None, false) => defaults::SEED,
        };
        router.seed = seed;
        // `[events] mode` is the older spelling of `[router] kv_feed`: one knob, applied.
        let mode_at = [Key::T("events"), Key::T("mode")];
        if loc.find(&mode_at).is_some() {
            let feed = match raw.events.mode {
                EventMode::Exact => switchyard_route::KvFeed::Events,
                EventMode::Approximate => switchyard_route::KvFeed::Approximate,
            };
            if loc.find(&[Key::T("router"), Key::T("kv_feed")]).is_some() && router.kv_feed != feed
            {
                return Err(at(
                    &[&mode_at],
                    "[events] mode contradicts [router] kv_feed; keep only [router] kv_feed (events | approximate | hybrid)".into(),
                ));
            }
            router.kv_feed = feed;
        }
        Ok(Deployment {
            name: raw.name.unwrap_or_else(|| {
                Path::new(file)
                    .file_stem()
                    .map(|s| s.to_string_lossy().into_owned())
                    .unwrap_or_else(|| "deployment".into())
            }),
            file: file.to_string(),
            description: raw.description,
            groups,
            router,
            events: raw.events,
            network: raw.network,
            seed,
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

/// One step of a path into the TOML document: a table key or an array index.
#[derive(Clone, Copy)]
enum Key {
    T(&'static str),
    I(usize),
}

/// Finds where a value is written, for `file:line:column` in errors.
struct Locator<'a> {
    text: &'a str,
    doc: Option<toml::Spanned<toml::de::DeTable<'a>>>,
}

impl<'a> Locator<'a> {
    fn new(text: &'a str) -> Self {
        Locator {
            text,
            doc: toml::de::DeTable::parse(text).ok(),
        }
    }

    /// True when the top level has a recipe's keys (`a`, `b` and `goodput` or `[trace]`).
    fn looks_like_recipe(&self) -> bool {
        let Some(doc) = &self.doc else { return false };
        let has = |k: &str| doc.get_ref().iter().any(|(key, _)| key.get_ref() == k);
        has("a") && has("b") && (has("goodput") || has("trace")) && !has("group")
    }

    /// `line:column` (1-based) of the value at `path`.
    fn find(&self, path: &[Key]) -> Option<String> {
        use toml::de::DeValue;
        let doc = self.doc.as_ref()?;
        let mut span = doc.span();
        let mut table = Some(doc.get_ref());
        let mut array: Option<&[toml::Spanned<DeValue<'_>>]> = None;
        for k in path {
            let v = match *k {
                Key::T(name) => table?
                    .iter()
                    .find(|(key, _)| key.get_ref() == name)
                    .map(|(_, v)| v)?,
                Key::I(i) => array?.get(i)?,
            };
            span = v.span();
            (table, array) = match v.get_ref() {
                DeValue::Table(t) => (Some(t), None),
                DeValue::Array(a) => (None, Some(&a[..])),
                _ => (None, None),
            };
        }
        let before = self.text.get(..span.start)?;
        let line = before.matches('\n').count() + 1;
        let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
        Some(format!("{line}:{col}"))
    }
}
