//! Shared setup of the kv benches: the realistic index.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use switchyard_kv::{BlockHash, BlockHasher, KvEvent, PrefixIndex, WorkerKey};

pub const WORKERS: u64 = 64;
pub const TARGET_BLOCKS: usize = 1_000_000;
pub const REQ_BLOCKS: usize = 2048;
pub const HOLDERS: usize = 30;
pub const DEEPEST: usize = 1920;

pub fn random_chain(
    rng: &mut ChaCha8Rng,
    hasher: &BlockHasher,
    parent: Option<BlockHash>,
    n: usize,
) -> Vec<BlockHash> {
    let toks: Vec<u32> = (0..n * 16).map(|_| rng.random_range(0..150_000)).collect();
    let mut out = Vec::new();
    hasher.extend_into(parent, &toks, &mut out);
    out
}

/// The populated index and the request. Holder `k` holds the first `depth(k)` request blocks;
/// every worker also holds private 512-block chains (a third branching off a shared system
/// prompt) until the
/// index has ~1M distinct blocks.
pub fn setup() -> (PrefixIndex, Vec<BlockHash>) {
    let mut rng = ChaCha8Rng::seed_from_u64(42);
    let hasher = BlockHasher::new(16).unwrap();
    let req = random_chain(&mut rng, &hasher, None, REQ_BLOCKS);
    let sys = random_chain(&mut rng, &hasher, None, 64);
    let mut idx = PrefixIndex::with_capacity(TARGET_BLOCKS + 100_000);
    for k in 0..HOLDERS {
        let depth = 64 + (DEEPEST - 64) * k / (HOLDERS - 1);
        let w = WorkerKey::new(k as u64 * 2, 0);
        idx.store(w, None, &req[..depth]);
    }
    let mut w = 0u64;
    while idx.num_blocks() < TARGET_BLOCKS {
        let worker = WorkerKey::new(w % WORKERS, 0);
        w += 1;
        // A third of the private chains share a prefix of a common system prompt.
        let (parent, prefix) = if rng.random_bool(0.33) {
            let d = rng.random_range(1..64usize);
            (Some(sys[d - 1]), &sys[..d])
        } else {
            (None, &sys[..0])
        };
        if !prefix.is_empty() {
            idx.store(worker, None, prefix);
        }
        let chain = random_chain(&mut rng, &hasher, parent, 512);
        idx.store(worker, parent, &chain);
    }
    (idx, req)
}

/// Ingestion workload: 2,048 store events of fresh 32-block chains over the 64 workers, and the
/// matching leaf-first removals. Returns (stores, removes, blocks in both).
#[allow(clippy::type_complexity)]
pub fn churn_events() -> (Vec<(WorkerKey, KvEvent)>, Vec<(WorkerKey, KvEvent)>, u64) {
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let hasher = BlockHasher::new(16).unwrap();
    let mut stores = Vec::new();
    let mut removes = Vec::new();
    let mut blocks = 0u64;
    for i in 0..2048u64 {
        let w = WorkerKey::new(i % WORKERS, 0);
        let chain = random_chain(&mut rng, &hasher, None, 32);
        blocks += 2 * chain.len() as u64;
        stores.push((
            w,
            KvEvent::Stored {
                parent: None,
                blocks: chain.clone(),
            },
        ));
        let mut rev = chain;
        rev.reverse(); // engines evict leaves first
        removes.push((w, KvEvent::Removed { blocks: rev }));
    }
    (stores, removes, blocks)
}
