//! Hand-checked index behaviour: extreme hash values, hybrid merging, memory reporting.

use switchyard_kv::{
    ApproxConfig, BlockHasher, IndexMode, KvEvent, KvIndexer, Overlaps, PrefixIndex, WorkerKey,
};

#[test]
fn extreme_hash_values_are_ordinary_keys() {
    let mut idx = PrefixIndex::new();
    let w = WorkerKey::new(u64::MAX, 7);
    let chain = [0u64, u64::MAX, i64::MAX as u64 + 1, 1];
    idx.apply_event(
        w,
        &KvEvent::Stored {
            parent: None,
            blocks: chain.to_vec(),
        },
    );
    let mut out = Overlaps::new();
    idx.find_matches(&chain, &mut out);
    assert_eq!(out.get(w), 4);
    idx.apply_event(
        w,
        &KvEvent::Removed {
            blocks: vec![u64::MAX],
        },
    );
    idx.find_matches(&chain, &mut out);
    assert_eq!(out.get(w), 1, "removing block 1 takes its descendants");
    assert_eq!(idx.num_blocks(), 1);
    assert_eq!(idx.counters().blocks_cascaded, 2);
    idx.check_invariants().unwrap();
}

#[test]
fn overlaps_by_hand_with_branches() {
    // a-b-c-d held by w1; a-b held by w2; a-b-x held by w3 (branch).
    let (a, b, c, d, x) = (10, 11, 12, 13, 99);
    let (w1, w2, w3) = (
        WorkerKey::new(1, 0),
        WorkerKey::new(2, 0),
        WorkerKey::new(2, 1),
    );
    let mut idx = PrefixIndex::new();
    idx.store(w1, None, &[a, b, c, d]);
    idx.store(w2, None, &[a, b]);
    idx.store(w3, None, &[a, b]);
    idx.store(w3, Some(b), &[x]);
    let mut out = Overlaps::new();
    idx.find_matches(&[a, b, c, d, 14], &mut out);
    assert_eq!(out.as_slice(), &[(w1, 4), (w2, 2), (w3, 2)]);
    idx.find_matches(&[a, b, x], &mut out);
    assert_eq!(out.as_slice(), &[(w1, 2), (w2, 2), (w3, 3)]);
    idx.find_matches(&[77], &mut out);
    assert!(out.is_empty());
    // w2 re-stores a block under the wrong parent: rejected, counted, nothing changes.
    idx.store(w2, None, &[c]);
    assert_eq!(idx.counters().parent_mismatch, 1);
    assert!(!idx.contains(w2, c));
    // Unknown parent.
    idx.store(w2, Some(c), &[d]);
    assert_eq!(idx.counters().unknown_parent, 1);
    // Remove the worker: its blocks go, later events are ignored and counted.
    idx.remove_worker(w1);
    idx.store(w1, None, &[a]);
    assert_eq!(idx.counters().removed_worker_events, 1);
    idx.find_matches(&[a, b, c, d], &mut out);
    assert_eq!(out.as_slice(), &[(w2, 2), (w3, 2)]);
    assert_eq!(idx.num_blocks(), 3, "{:?}", idx.counters());
    idx.add_worker(w1);
    idx.store(w1, None, &[a]);
    assert_eq!(idx.worker_blocks(w1), 1);
    idx.check_invariants().unwrap();
    assert!(idx.memory_bytes() > 0);
}

#[test]
fn per_worker_cap_bounds_memory() {
    let mut idx = PrefixIndex::new().with_max_blocks_per_worker(3);
    let w = WorkerKey::new(1, 0);
    idx.store(w, None, &[1, 2, 3, 4, 5]);
    assert_eq!(idx.worker_blocks(w), 3);
    assert_eq!(idx.num_blocks(), 3);
    assert_eq!(idx.counters().over_capacity, 1);
    assert_eq!(idx.counters().blocks_dropped, 2);
    idx.check_invariants().unwrap();
}

#[test]
fn hybrid_takes_the_larger_of_events_and_predictions() {
    let cfg = ApproxConfig {
        ttl_secs: 5.0,
        max_blocks_per_worker: 1000,
    };
    let mut k = KvIndexer::new(IndexMode::Hybrid, cfg).unwrap();
    let h = BlockHasher::new(16)
        .unwrap()
        .hash(&(0..1600).collect::<Vec<u32>>());
    let (w1, w2) = (WorkerKey::new(1, 0), WorkerKey::new(2, 0));
    k.apply_event(
        w1,
        &KvEvent::Stored {
            parent: None,
            blocks: h[..30].to_vec(),
        },
    );
    k.record_routing(w1, &h[..50], 0.0); // routed, not yet confirmed by events
    k.record_routing(w2, &h[..10], 0.0);
    let mut out = Overlaps::new();
    k.find_matches(&h, 1.0, &mut out);
    assert_eq!(out.as_slice(), &[(w1, 50), (w2, 10)]);
    // Predictions expire; events stay.
    k.find_matches(&h, 10.0, &mut out);
    assert_eq!(out.as_slice(), &[(w1, 30)]);
    // Batched application gives the same answer.
    let mut b = KvIndexer::new(IndexMode::Hybrid, cfg).unwrap();
    b.apply_events(&[
        (
            w1,
            KvEvent::Stored {
                parent: None,
                blocks: h[..20].to_vec(),
            },
        ),
        (
            w1,
            KvEvent::Stored {
                parent: Some(h[19]),
                blocks: h[20..30].to_vec(),
            },
        ),
        (
            w2,
            KvEvent::Stored {
                parent: None,
                blocks: h[..5].to_vec(),
            },
        ),
        (w2, KvEvent::Removed { blocks: vec![h[3]] }),
    ]);
    b.find_matches(&h, 10.0, &mut out);
    assert_eq!(out.as_slice(), &[(w1, 30), (w2, 3)]);
    // AllCleared drops both.
    k.record_routing(w1, &h, 11.0);
    k.apply_event(w1, &KvEvent::AllCleared);
    k.find_matches(&h, 11.0, &mut out);
    assert!(out.is_empty());
    // Exact mode ignores predictions; approximate mode ignores events.
    let mut e = KvIndexer::new(IndexMode::Exact, cfg).unwrap();
    e.record_routing(w1, &h, 0.0);
    e.find_matches(&h, 0.0, &mut out);
    assert!(out.is_empty());
    let mut a = KvIndexer::new(IndexMode::Approximate, cfg).unwrap();
    a.apply_event(
        w1,
        &KvEvent::Stored {
            parent: None,
            blocks: h.clone(),
        },
    );
    a.find_matches(&h, 0.0, &mut out);
    assert!(out.is_empty());
    assert!(ApproxIndexBad::check());
}

struct ApproxIndexBad;
impl ApproxIndexBad {
    fn check() -> bool {
        let bad = ApproxConfig {
            ttl_secs: 0.0,
            max_blocks_per_worker: 1,
        };
        KvIndexer::new(IndexMode::Approximate, bad).is_err()
    }
}
