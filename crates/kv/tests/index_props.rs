//! Property tests: the prefix index (and the approximate index) answer exactly as brute-force
//! models do, under random event sequences that include every kind of bad input.

use std::collections::{HashMap, HashSet};

use proptest::prelude::*;
use switchyard_kv::{
    ApproxConfig, ApproxIndex, BlockHash, KvEvent, Overlaps, PrefixIndex, WorkerKey,
};

/// A fixed universe of chained blocks: node i has parent `parent[i]` (a hash determines its
/// parent, as with real chained hashes). Hashes are spread over all 64 bits, so about half are
/// above i64::MAX.
struct Universe {
    parent: Vec<Option<usize>>,
    /// Name blocks by grouped ids (a simulator's `group << 5 | i`, several nodes per group)
    /// instead of spread-out hashes; the index then uses its grouped layout.
    grouped: bool,
}

const N: usize = 48;

fn hash_of(i: usize) -> BlockHash {
    let mut z = (i as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 31)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z ^ (z >> 29)
}

impl Universe {
    fn hash(&self, i: usize) -> BlockHash {
        if self.grouped {
            (((i / 6) as u64 + 1) << switchyard_kv::grouped::GROUP_BITS) | (i % 6) as u64
        } else {
            hash_of(i)
        }
    }

    fn new(seed: u64, grouped: bool) -> Self {
        let mut s = seed | 1;
        let mut parent = Vec::with_capacity(N);
        for i in 0..N {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            // A few roots, otherwise attach to an earlier node (deep-ish chains).
            parent.push(if i < 3 {
                None
            } else {
                Some(i - 1 - (s as usize % i.min(4)))
            });
        }
        Self { parent, grouped }
    }

    fn path(&self, leaf: usize) -> Vec<usize> {
        let mut p = vec![leaf];
        let mut x = leaf;
        while let Some(q) = self.parent[x] {
            p.push(q);
            x = q;
        }
        p.reverse();
        p
    }
}

#[derive(Default)]
struct Model {
    parent_of: HashMap<BlockHash, Option<BlockHash>>,
    held: HashMap<WorkerKey, HashSet<BlockHash>>,
    removed: HashSet<WorkerKey>,
    unknown_parent: u64,
    parent_mismatch: u64,
    duplicate_store: u64,
    unknown_removal: u64,
    removed_worker_events: u64,
}

impl Model {
    fn holds(&self, w: WorkerKey, h: BlockHash) -> bool {
        self.held.get(&w).is_some_and(|s| s.contains(&h))
    }

    fn gc(&mut self) {
        let live: HashSet<BlockHash> = self.held.values().flatten().copied().collect();
        self.parent_of.retain(|h, _| live.contains(h));
    }

    fn store(&mut self, w: WorkerKey, parent: Option<BlockHash>, blocks: &[BlockHash]) {
        if self.removed.contains(&w) {
            self.removed_worker_events += 1;
            return;
        }
        if let Some(p) = parent
            && !self.holds(w, p)
        {
            self.unknown_parent += 1;
            return;
        }
        let mut prev = parent;
        for &h in blocks {
            match self.parent_of.get(&h) {
                Some(&p) if p != prev => {
                    self.parent_mismatch += 1;
                    return;
                }
                Some(_) => {}
                None => {
                    self.parent_of.insert(h, prev);
                }
            }
            if !self.held.entry(w).or_default().insert(h) {
                self.duplicate_store += 1;
            }
            prev = Some(h);
        }
    }

    fn remove(&mut self, w: WorkerKey, blocks: &[BlockHash]) {
        if self.removed.contains(&w) {
            self.removed_worker_events += 1;
            return;
        }
        for &h in blocks {
            if !self.holds(w, h) {
                self.unknown_removal += 1;
                continue;
            }
            let set = self.held.get(&w).cloned().unwrap_or_default();
            let doomed: Vec<BlockHash> = set
                .iter()
                .copied()
                .filter(|&b| {
                    let mut x = Some(b);
                    while let Some(y) = x {
                        if y == h {
                            return true;
                        }
                        x = self.parent_of.get(&y).copied().flatten();
                    }
                    false
                })
                .collect();
            let s = self.held.get_mut(&w).unwrap();
            for b in doomed {
                s.remove(&b);
            }
        }
        self.gc();
    }

    fn clear(&mut self, w: WorkerKey) {
        if self.removed.contains(&w) {
            self.removed_worker_events += 1;
            return;
        }
        self.held.remove(&w);
        self.gc();
    }

    fn remove_worker(&mut self, w: WorkerKey) {
        self.held.remove(&w);
        self.removed.insert(w);
        self.gc();
    }

    fn overlap(&self, w: WorkerKey, q: &[BlockHash]) -> u32 {
        q.iter().take_while(|&&h| self.holds(w, h)).count() as u32
    }
}

#[derive(Clone, Debug)]
enum Op {
    /// Store root_path(leaf)[from..] with its true parent, or an unknown parent.
    Store {
        w: usize,
        leaf: usize,
        from: usize,
        bogus_parent: bool,
    },
    /// Re-store a (maybe indexed) non-root block with parent None: a contradicting parent.
    BadParent {
        w: usize,
        node: usize,
    },
    Remove {
        w: usize,
        nodes: Vec<usize>,
    },
    Clear {
        w: usize,
    },
    RemoveWorker {
        w: usize,
    },
    AddWorker {
        w: usize,
    },
    Query {
        leaf: usize,
    },
}

fn op(workers: usize) -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => (0..workers, 0..N, 0..6usize, prop::bool::weighted(0.1))
            .prop_map(|(w, leaf, from, bogus_parent)| Op::Store { w, leaf, from, bogus_parent }),
        1 => (0..workers, 0..N).prop_map(|(w, node)| Op::BadParent { w, node }),
        3 => (0..workers, prop::collection::vec(0..N, 1..4)).prop_map(|(w, nodes)| Op::Remove { w, nodes }),
        1 => (0..workers).prop_map(|w| Op::Clear { w }),
        1 => (0..workers).prop_map(|w| Op::RemoveWorker { w }),
        1 => (0..workers).prop_map(|w| Op::AddWorker { w }),
        3 => (0..N).prop_map(|leaf| Op::Query { leaf }),
    ]
}

fn key(w: usize) -> WorkerKey {
    // Exercise data-parallel ranks too.
    WorkerKey::new((w / 3) as u64, (w % 3) as u32)
}

fn check_query(idx: &PrefixIndex, model: &Model, u: &Universe, leaf: usize, workers: usize) {
    let q: Vec<BlockHash> = u.path(leaf).into_iter().map(|i| u.hash(i)).collect();
    let mut out = Overlaps::new();
    idx.find_matches(&q, &mut out);
    for w in 0..workers {
        let want = model.overlap(key(w), &q);
        assert_eq!(out.get(key(w)), want, "worker {w} leaf {leaf} query {q:?}");
        assert_eq!(
            idx.overlap(key(w), &q) as u32,
            want,
            "single-worker overlap {w}"
        );
    }
    assert!(out.iter().all(|(_, o)| o > 0));
}

fn run(seed: u64, workers: usize, ops: Vec<Op>, grouped: bool) {
    let u = Universe::new(seed, grouped);
    let mut idx = PrefixIndex::new();
    if grouped {
        idx.use_grouped_ids();
    }
    let mut model = Model::default();
    for op in ops {
        match op {
            Op::Store {
                w,
                leaf,
                from,
                bogus_parent,
            } => {
                let path = u.path(leaf);
                let from = from.min(path.len() - 1);
                let blocks: Vec<BlockHash> = path[from..].iter().map(|&i| u.hash(i)).collect();
                let parent = if bogus_parent {
                    Some(0xDEAD_BEEF_0000_0000 | leaf as u64)
                } else if from == 0 {
                    None
                } else {
                    Some(u.hash(path[from - 1]))
                };
                let ev = KvEvent::Stored {
                    parent,
                    blocks: blocks.clone(),
                };
                idx.apply_event(key(w), &ev);
                model.store(key(w), parent, &blocks);
            }
            Op::BadParent { w, node } => {
                // Only contradict blocks the index already knows (a fresh block with a wrong
                // parent would be a hash collision, which chained hashes rule out).
                if u.parent[node].is_some() && model.parent_of.contains_key(&u.hash(node)) {
                    let ev = KvEvent::Stored {
                        parent: None,
                        blocks: vec![u.hash(node)],
                    };
                    idx.apply_event(key(w), &ev);
                    model.store(key(w), None, &[u.hash(node)]);
                }
            }
            Op::Remove { w, nodes } => {
                let blocks: Vec<BlockHash> = nodes.iter().map(|&i| u.hash(i)).collect();
                idx.apply_event(
                    key(w),
                    &KvEvent::Removed {
                        blocks: blocks.clone(),
                    },
                );
                model.remove(key(w), &blocks);
            }
            Op::Clear { w } => {
                idx.apply_event(key(w), &KvEvent::AllCleared);
                model.clear(key(w));
            }
            Op::RemoveWorker { w } => {
                idx.remove_worker(key(w));
                model.remove_worker(key(w));
            }
            Op::AddWorker { w } => {
                idx.add_worker(key(w));
                model.removed.remove(&key(w));
            }
            Op::Query { leaf } => check_query(&idx, &model, &u, leaf, workers),
        }
        idx.check_invariants().unwrap();
        for w in 0..workers {
            let n = model.held.get(&key(w)).map_or(0, |s| s.len()) as u64;
            assert_eq!(idx.worker_blocks(key(w)), n);
        }
        assert_eq!(idx.num_blocks(), model.parent_of.len());
    }
    for leaf in 0..N {
        check_query(&idx, &model, &u, leaf, workers);
    }
    let c = idx.counters();
    assert_eq!(c.unknown_parent, model.unknown_parent);
    assert_eq!(c.parent_mismatch, model.parent_mismatch);
    assert_eq!(c.duplicate_store, model.duplicate_store);
    assert_eq!(c.unknown_removal, model.unknown_removal);
    assert_eq!(c.removed_worker_events, model.removed_worker_events);
    assert_eq!(c.repairs, 0);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn index_matches_model_few_workers(seed in any::<u64>(), ops in prop::collection::vec(op(5), 1..120)) {
        run(seed, 5, ops, false);
    }

    #[test]
    fn grouped_index_matches_model(seed in any::<u64>(), ops in prop::collection::vec(op(5), 1..120)) {
        run(seed, 5, ops, true);
    }

    #[test]
    fn index_matches_model_many_workers(seed in any::<u64>(), ops in prop::collection::vec(op(140), 1..200)) {
        // More than 64 (worker, rank) slots: exercises the wide holder sets.
        run(seed, 140, ops, false);
    }
}

// ----- approximate index ---------------------------------------------------------------------

#[derive(Clone, Debug)]
enum AOp {
    Record { w: usize, leaf: usize, dt: u8 },
    Query { leaf: usize, dt: u8 },
    Clear { w: usize },
}

fn aop() -> impl Strategy<Value = AOp> {
    prop_oneof![
        4 => (0..4usize, 0..N, 0..20u8).prop_map(|(w, leaf, dt)| AOp::Record { w, leaf, dt }),
        3 => (0..N, 0..20u8).prop_map(|(leaf, dt)| AOp::Query { leaf, dt }),
        1 => (0..4usize).prop_map(|w| AOp::Clear { w }),
    ]
}

/// Brute force: per worker, block -> (tick, time, depth); LRU evicts min (tick, -depth).
#[derive(Default)]
struct AModel {
    held: HashMap<usize, HashMap<BlockHash, (u64, f64, usize)>>,
    tick: u64,
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn approx_matches_model(seed in any::<u64>(), cap in 1usize..24, ops in prop::collection::vec(aop(), 1..150)) {
        let u = Universe::new(seed, false);
        let ttl = 30.0;
        let mut idx = ApproxIndex::new(ApproxConfig { ttl_secs: ttl, max_blocks_per_worker: cap }).unwrap();
        let mut m = AModel::default();
        let mut now = 0.0f64;
        let mut out = Overlaps::new();
        for op in ops {
            match op {
                AOp::Record { w, leaf, dt } => {
                    now += f64::from(dt);
                    let path: Vec<BlockHash> = u.path(leaf).into_iter().map(|i| u.hash(i)).collect();
                    idx.record(key(w), &path, now);
                    m.tick += 1;
                    let held = m.held.entry(w).or_default();
                    held.retain(|_, v| v.1 + ttl > now);
                    for (d, &h) in path.iter().enumerate() {
                        held.insert(h, (m.tick, now, d));
                    }
                    while held.len() > cap {
                        let victim = *held
                            .iter()
                            .min_by_key(|(_, v)| (v.0, std::cmp::Reverse(v.2)))
                            .unwrap()
                            .0;
                        held.remove(&victim);
                    }
                }
                AOp::Query { leaf, dt } => {
                    now += f64::from(dt);
                    let q: Vec<BlockHash> = u.path(leaf).into_iter().map(|i| u.hash(i)).collect();
                    idx.find_matches(&q, now, &mut out);
                    for w in 0..4 {
                        let want = m.held.get(&w).map_or(0, |h| {
                            q.iter().take_while(|b| h.get(b).is_some_and(|v| v.1 + ttl > now)).count()
                        }) as u32;
                        prop_assert_eq!(out.get(key(w)), want, "worker {} leaf {}", w, leaf);
                    }
                }
                AOp::Clear { w } => {
                    idx.clear_worker(key(w));
                    m.held.remove(&w);
                }
            }
            idx.index().check_invariants().unwrap();
            for w in 0..4 {
                prop_assert!(idx.worker_blocks(key(w)) <= cap as u64);
            }
        }
    }
}
