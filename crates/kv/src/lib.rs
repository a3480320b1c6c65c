//! KV-cache block identity, KV events and the prefix index.
//!
//! Pure data structures: no I/O, no clock. The live server and the simulator both feed this
//! crate, so a routing decision in `lab` is the one `serve` would make.
//!
//! * [`hash`]: chained block hashes of token ids, and the mapping of Mooncake trace
//!   `hash_ids` onto engine-size blocks.
//! * [`index`]: the exact prefix index fed by engine [`KvEvent`]s, answering "how many leading
//!   blocks of this request does each worker hold".
//! * [`approx`]: the approximate index (the router's own routing decisions as predicted cache
//!   contents, with TTL and per-worker LRU capacity) and [`KvIndexer`], which combines both.
//! * [`translate`]: engine-hash -> router-hash translation for live engines' events.

pub mod approx;
mod error;
pub mod grouped;
pub mod hash;
pub mod index;
pub mod table;
pub mod translate;
pub mod wire;

pub use approx::{ApproxConfig, ApproxIndex, IndexMode, KvIndexer};
pub use error::KvError;
pub use hash::{BlockHasher, TraceBlockMapper};
pub use index::{IndexCounters, Overlaps, PrefixIndex, WorkerId, WorkerKey};
pub use translate::{EngineHashTranslator, TranslateIssue};

/// A chained block hash: it names the block's tokens *and* its whole prefix, so equal hashes
/// mean equal prefixes. Engines may send values above `i64::MAX`; they are plain `u64` here.
pub type BlockHash = u64;

/// What an engine reports about its prefix cache (vLLM's `BlockStored` / `BlockRemoved` /
/// `AllBlocksCleared`), in the router's own hash space.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KvEvent {
    /// Blocks newly cached, in chain order. `parent` is the hash of the block just before
    /// `blocks[0]` (`None` when the first block starts the sequence).
    Stored {
        parent: Option<BlockHash>,
        blocks: Vec<BlockHash>,
    },
    /// Blocks evicted from the cache.
    Removed { blocks: Vec<BlockHash> },
    /// The engine dropped its whole cache.
    AllCleared,
}

impl KvEvent {
    /// Number of blocks the event names (0 for [`KvEvent::AllCleared`]); the unit of the
    /// ingestion-rate metric.
    pub fn num_blocks(&self) -> usize {
        match self {
            KvEvent::Stored { blocks, .. } | KvEvent::Removed { blocks } => blocks.len(),
            KvEvent::AllCleared => 0,
        }
    }
}
