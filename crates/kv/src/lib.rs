//! KV-cache block identity, KV events and the prefix index.
//!
//! Pure data structures: no I/O, no clock. The live server and the simulator both feed this
//! crate, so a routing decision in `lab` is the one `serve` would make.

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
