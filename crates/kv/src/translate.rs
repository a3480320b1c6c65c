//! Engine hash -> router hash translation for live engines.
//!
//! Engines name blocks with their own hashes (vLLM: SHA-256 or Python `hash` based, per
//! version and config), which the router cannot reproduce from a request's tokens. The router
//! therefore recomputes its own chained hashes from the `token_ids` a `BlockStored` event
//! carries, and remembers, per worker, which router hash each engine hash stands for, so that
//! later events naming engine hashes (`parent_block_hash`, `BlockRemoved`) can be translated.
//! The simulator does not need this: simulated engines use the router's hashes directly.

use rustc_hash::FxHashMap;

use crate::hash::BlockHasher;
use crate::index::WorkerKey;
use crate::{BlockHash, KvEvent};

/// Why an engine event could not be (fully) translated. The translated part is still usable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TranslateIssue {
    /// `token_ids` do not cover `block_hashes.len()` full blocks; extra hashes were dropped.
    MissingTokens,
    /// The parent engine hash is unknown (events lost, or the block was evicted): the event
    /// cannot be attached to a prefix and is dropped.
    UnknownParent,
}

/// Per-worker map from engine block hashes to router block hashes.
#[derive(Clone, Debug, Default)]
pub struct EngineHashTranslator {
    workers: FxHashMap<WorkerKey, FxHashMap<u64, BlockHash>>,
    scratch: Vec<BlockHash>,
}

impl EngineHashTranslator {
    /// Empty.
    pub fn new() -> Self {
        Self::default()
    }

    /// Translate a `BlockStored`: `engine_blocks[i]` covers
    /// `token_ids[i*bs .. (i+1)*bs]` (bs = the hasher's block size, which must equal the
    /// engine's). Returns the router-space event (or `None` when nothing is usable) and any
    /// issue met.
    pub fn stored(
        &mut self,
        worker: WorkerKey,
        engine_parent: Option<u64>,
        engine_blocks: &[u64],
        token_ids: &[u32],
        hasher: &BlockHasher,
    ) -> (Option<KvEvent>, Option<TranslateIssue>) {
        let map = self.workers.entry(worker).or_default();
        let parent = match engine_parent {
            None => None,
            Some(p) => match map.get(&p) {
                Some(&r) => Some(r),
                None => return (None, Some(TranslateIssue::UnknownParent)),
            },
        };
        self.scratch.clear();
        hasher.extend_into(parent, token_ids, &mut self.scratch);
        let n = engine_blocks.len().min(self.scratch.len());
        let issue = (n < engine_blocks.len()).then_some(TranslateIssue::MissingTokens);
        if n == 0 {
            return (None, issue);
        }
        for (&e, &r) in engine_blocks[..n].iter().zip(&self.scratch) {
            map.insert(e, r);
        }
        let ev = KvEvent::Stored {
            parent,
            blocks: self.scratch[..n].to_vec(),
        };
        (Some(ev), issue)
    }

    /// Translate a `BlockRemoved`. Unknown engine hashes are skipped (and counted: the number
    /// skipped is returned).
    pub fn removed(&mut self, worker: WorkerKey, engine_blocks: &[u64]) -> (KvEvent, usize) {
        let mut blocks = Vec::with_capacity(engine_blocks.len());
        let mut unknown = 0;
        if let Some(map) = self.workers.get_mut(&worker) {
            for e in engine_blocks {
                match map.remove(e) {
                    Some(r) => blocks.push(r),
                    None => unknown += 1,
                }
            }
        } else {
            unknown = engine_blocks.len();
        }
        (KvEvent::Removed { blocks }, unknown)
    }

    /// `AllBlocksCleared` or worker removal: forget the worker's mapping.
    pub fn clear_worker(&mut self, worker: WorkerKey) {
        self.workers.remove(&worker);
    }

    /// Engine hashes remembered for `worker`.
    pub fn len(&self, worker: WorkerKey) -> usize {
        self.workers.get(&worker).map_or(0, |m| m.len())
    }

    /// Nothing remembered for any worker.
    pub fn is_empty(&self) -> bool {
        self.workers.values().all(|m| m.is_empty())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Overlaps, PrefixIndex};

    #[test]
    fn engine_events_land_in_router_hash_space() {
        let h = BlockHasher::new(4).unwrap();
        let w = WorkerKey::new(3, 0);
        let toks: Vec<u32> = (0..16).collect();
        let router = h.hash(&toks);
        let mut t = EngineHashTranslator::new();
        let mut idx = PrefixIndex::new();
        // Engine hashes are arbitrary (here: huge values), sent in two events.
        let (e1, i1) = t.stored(w, None, &[u64::MAX, 5], &toks[..8], &h);
        assert_eq!(i1, None);
        idx.apply_event(w, &e1.unwrap());
        let (e2, _) = t.stored(w, Some(5), &[77, 78], &toks[8..], &h);
        idx.apply_event(w, &e2.unwrap());
        let mut out = Overlaps::new();
        idx.find_matches(&router, &mut out);
        assert_eq!(out.get(w), 4);
        let (rm, unknown) = t.removed(w, &[78, 1234]);
        assert_eq!(unknown, 1);
        assert_eq!(
            rm,
            KvEvent::Removed {
                blocks: vec![router[3]]
            }
        );
        idx.apply_event(w, &rm);
        idx.find_matches(&router, &mut out);
        assert_eq!(out.get(w), 3);
        assert_eq!(
            t.stored(w, Some(999), &[1], &toks[..4], &h),
            (None, Some(TranslateIssue::UnknownParent))
        );
        let (e, issue) = t.stored(w, None, &[1, 2, 3], &toks[..9], &h);
        assert_eq!(issue, Some(TranslateIssue::MissingTokens));
        assert!(matches!(e, Some(KvEvent::Stored { ref blocks, .. }) if blocks.len() == 2));
        t.clear_worker(w);
        assert!(t.is_empty());
    }
}
