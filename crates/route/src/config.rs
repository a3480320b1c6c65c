//! All router knobs in one struct, with their defaults in one place ([`RouterConfig::default`]).
//!
//! Parses straight from a TOML `[router]` table (unknown keys are an error, so a typo never
//! silently falls back to a default):
//!
//! ```toml
//! [router]
//! policy = "kv"            # round-robin | random | least-load | power-of-two | kv
//! block_size = 16          # must equal the engines' KV block size
//! overlap_weight = 1.0
//! temperature = 0.0
//! kv_feed = "events"       # events | approximate | hybrid
//! ```

use std::fmt;
use std::str::FromStr;

use serde::Deserialize;
use switchyard_kv::{ApproxConfig, IndexMode};

use crate::RouteError;

/// Which policy picks the worker.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PolicyKind {
    /// Cycle through the candidates.
    RoundRobin,
    /// Uniformly at random (seeded).
    Random,
    /// Fewest active requests; ties: fewest active KV blocks, then random.
    LeastLoad,
    /// Two random candidates, the less loaded of them.
    PowerOfTwo,
    /// KV-cache aware: lowest `overlap_weight × prefill blocks + active decode blocks`.
    #[default]
    #[serde(alias = "kv-aware")]
    Kv,
}

impl PolicyKind {
    /// Every policy, in documentation order.
    pub const ALL: [PolicyKind; 5] = [
        PolicyKind::RoundRobin,
        PolicyKind::Random,
        PolicyKind::LeastLoad,
        PolicyKind::PowerOfTwo,
        PolicyKind::Kv,
    ];

    /// The name used in config files, CLI flags and reports.
    pub fn name(self) -> &'static str {
        match self {
            PolicyKind::RoundRobin => "round-robin",
            PolicyKind::Random => "random",
            PolicyKind::LeastLoad => "least-load",
            PolicyKind::PowerOfTwo => "power-of-two",
            PolicyKind::Kv => "kv",
        }
    }
}

impl fmt::Display for PolicyKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for PolicyKind {
    type Err = RouteError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let norm = s.trim().to_ascii_lowercase().replace('_', "-");
        match norm.as_str() {
            "round-robin" | "rr" => Ok(PolicyKind::RoundRobin),
            "random" => Ok(PolicyKind::Random),
            "least-load" | "least-loaded" => Ok(PolicyKind::LeastLoad),
            "power-of-two" | "p2c" => Ok(PolicyKind::PowerOfTwo),
            "kv" | "kv-aware" => Ok(PolicyKind::Kv),
            _ => Err(RouteError::InvalidConfig(format!(
                "unknown policy {s:?} (expected one of: round-robin, random, least-load, power-of-two, kv)"
            ))),
        }
    }
}

/// Where the router learns what each worker has cached.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum KvFeed {
    /// Engine KV events (vLLM/SGLang `--kv-events-config`, simulated workers).
    #[default]
    Events,
    /// The router's own decisions as predictions (engines that publish nothing).
    Approximate,
    /// Events plus short-lived predictions covering the event delay.
    Hybrid,
}

impl From<KvFeed> for IndexMode {
    fn from(f: KvFeed) -> Self {
        match f {
            KvFeed::Events => IndexMode::Exact,
            KvFeed::Approximate => IndexMode::Approximate,
            KvFeed::Hybrid => IndexMode::Hybrid,
        }
    }
}

/// Every router knob. Defaults are documented per field and live in [`Default`] only.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RouterConfig {
    /// Routing policy. Default `kv`.
    pub policy: PolicyKind,
    /// Tokens per KV block; must equal the engines' block size (vLLM default 16), or overlaps
    /// silently read as zero. Default 16.
    pub block_size: u32,
    /// Weight of prefill work against decode load in the KV cost. 1.0 (default) weighs one
    /// block to prefill like one block held for decode; larger values chase cache hits harder,
    /// 0 ignores the cache entirely (pure decode-load balancing).
    pub overlap_weight: f64,
    /// Softmax temperature over costs, in blocks. 0 (default): always the lowest cost; with
    /// T > 0 a worker whose cost is T blocks above the best is e^-1 times as likely to be
    /// picked. Spreads load when many workers hold the same prefix.
    pub temperature: f64,
    /// Seed of every random choice (random, power-of-two, tie-breaks, sampling). Default 0.
    pub seed: u64,
    /// Source of cache knowledge. Default `events`.
    pub kv_feed: KvFeed,
    /// TTL of predictions in `approximate` mode, seconds. Default 120.
    pub approx_ttl_secs: f64,
    /// Predicted blocks kept per worker (LRU) in `approximate`/`hybrid` modes. Default 65,536
    /// (1 Mi tokens at 16-token blocks); set it to the engines' KV block count when known.
    pub approx_max_blocks_per_worker: usize,
    /// TTL of predictions in `hybrid` mode, seconds: how long a routing decision counts as
    /// cached before the engine's own event confirms it. Default 10 (covers queueing plus a
    /// long prefill; stale predictions only cost one misrouted request).
    pub predicted_ttl_secs: f64,
    /// Engine-reported load older than this (seconds) is ignored in favour of the router's own
    /// estimate. Default 5.
    pub engine_load_max_age_secs: f64,
    /// Conditional disaggregation: when fewer than this many prompt tokens are uncached on the
    /// chosen decode worker, it prefills locally instead of using a prefill worker. 0 disables
    /// (always remote prefill). Default 512 — see [`crate::disagg`] for the reasoning.
    pub local_prefill_threshold: u32,
}

impl Default for RouterConfig {
    fn default() -> Self {
        Self {
            policy: PolicyKind::Kv,
            block_size: 16,
            overlap_weight: 1.0,
            temperature: 0.0,
            seed: 0,
            kv_feed: KvFeed::Events,
            approx_ttl_secs: ApproxConfig::DEFAULT.ttl_secs,
            approx_max_blocks_per_worker: ApproxConfig::DEFAULT.max_blocks_per_worker,
            predicted_ttl_secs: 10.0,
            engine_load_max_age_secs: 5.0,
            local_prefill_threshold: 512,
        }
    }
}

impl RouterConfig {
    /// Check every field; the error names the offending one.
    pub fn validate(&self) -> Result<(), RouteError> {
        let bad = |m: &str| Err(RouteError::InvalidConfig(m.to_string()));
        if self.block_size == 0 {
            return bad("block_size must be >= 1");
        }
        if !(self.overlap_weight.is_finite() && self.overlap_weight >= 0.0) {
            return bad("overlap_weight must be finite and >= 0");
        }
        if !(self.temperature.is_finite() && self.temperature >= 0.0) {
            return bad("temperature must be finite and >= 0");
        }
        if !(self.approx_ttl_secs.is_finite() && self.approx_ttl_secs > 0.0) {
            return bad("approx_ttl_secs must be finite and > 0");
        }
        if !(self.predicted_ttl_secs.is_finite() && self.predicted_ttl_secs > 0.0) {
            return bad("predicted_ttl_secs must be finite and > 0");
        }
        if self.approx_max_blocks_per_worker == 0 {
            return bad("approx_max_blocks_per_worker must be >= 1");
        }
        if self.engine_load_max_age_secs.is_nan() || self.engine_load_max_age_secs < 0.0 {
            return bad("engine_load_max_age_secs must be >= 0");
        }
        Ok(())
    }

    /// The approximate-index settings implied by `kv_feed`.
    pub fn approx_config(&self) -> ApproxConfig {
        ApproxConfig {
            ttl_secs: match self.kv_feed {
                KvFeed::Hybrid => self.predicted_ttl_secs,
                _ => self.approx_ttl_secs,
            },
            max_blocks_per_worker: self.approx_max_blocks_per_worker,
        }
    }
}
