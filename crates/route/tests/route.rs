//! Policies, pair selection, the router core and the RAII guards, with hand-computed answers.

use switchyard_kv::{BlockHasher, KvEvent, WorkerKey};
use switchyard_route::*;

fn w(i: u64) -> WorkerKey {
    WorkerKey::new(i, 0)
}

fn cand(i: u64, overlap: u32, requests: u32, blocks: u64, prefill: u64) -> Candidate {
    Candidate {
        worker: w(i),
        load: LoadSnapshot {
            active_requests: requests,
            prefill_tokens: prefill,
            active_blocks: blocks,
            engine_reported: false,
        },
        overlap_blocks: overlap,
    }
}

const REQ: RequestInfo = RequestInfo {
    input_tokens: 1600,
    block_size: 16,
};

#[test]
fn kv_cost_by_hand() {
    // A: 80 of 100 blocks cached, 500 active blocks: 1.0 × 320/16 + (500 + 100) = 620.
    // B: nothing cached, 100 active blocks:          1.0 × 1600/16 + (100 + 100) = 300.
    let c = [cand(1, 80, 3, 500, 0), cand(2, 0, 1, 100, 0)];
    assert_eq!(kv_cost(1.0, &REQ, &c[0]), 620.0);
    assert_eq!(kv_cost(1.0, &REQ, &c[1]), 300.0);
    let d = KvAware::new(1.0, 0.0, 0).choose(&REQ, &c).unwrap();
    assert_eq!(d.worker, w(2));
    assert_eq!(d.chosen().cost, Some(300.0));
    // Weight 10: A = 200 + 600 = 800, B = 1000 + 200 = 1200: the cache wins.
    let d = KvAware::new(10.0, 0.0, 0).choose(&REQ, &c).unwrap();
    assert_eq!(d.worker, w(1));
    assert_eq!(d.candidates[1].cost, Some(1200.0));
    // Pending prefill counts as prefill work: B with 2,000 tokens queued costs 425.
    let c2 = [cand(1, 80, 3, 500, 0), cand(2, 0, 1, 100, 2000)];
    assert_eq!(kv_cost(1.0, &REQ, &c2[1]), 425.0);
    let text = d.to_string();
    assert!(
        text.contains("kv -> worker 1") && text.contains("runner-up 2 cost 1200.0"),
        "{text}"
    );
}

#[test]
fn kv_ties_go_to_lower_load_then_random_but_seeded() {
    // Equal cost: A has 10 active blocks + 20 uncached blocks... build equal costs explicitly.
    // A: overlap 50 -> 50 prefill blocks + (50 + 100) = 200; B: overlap 0 -> 100 + (0 + 100) = 200.
    let c = [cand(1, 50, 5, 50, 0), cand(2, 0, 2, 0, 0)];
    assert_eq!(kv_cost(1.0, &REQ, &c[0]), kv_cost(1.0, &REQ, &c[1]));
    let d = KvAware::new(1.0, 0.0, 7).choose(&REQ, &c).unwrap();
    assert_eq!(d.worker, w(2), "tie -> fewer active requests");
    // Full ties: random, but the same seed gives the same sequence, and all get picked.
    let same = [
        cand(1, 0, 0, 0, 0),
        cand(2, 0, 0, 0, 0),
        cand(3, 0, 0, 0, 0),
    ];
    let run = |seed| {
        let mut p = KvAware::new(1.0, 0.0, seed);
        (0..60)
            .map(|_| p.choose(&REQ, &same).unwrap().index)
            .collect::<Vec<_>>()
    };
    let a = run(3);
    assert_eq!(a, run(3));
    assert!((0..3).all(|i| a.contains(&i)));
    assert!(matches!(
        KvAware::new(1.0, 0.0, 3)
            .choose(&REQ, &same)
            .unwrap()
            .reason,
        Reason::LowestCost { tied: 3 }
    ));
}

#[test]
fn kv_temperature_samples_by_softmax() {
    // Costs 300 and 310 at T = 10: p(B) = 1 / (1 + e^-1) = 0.731.
    let c = [cand(1, 0, 0, 110, 0), cand(2, 0, 0, 100, 0)];
    let mut p = KvAware::new(1.0, 10.0, 1);
    let d = p.choose(&REQ, &c).unwrap();
    let pb = d.candidates[1].probability.unwrap();
    assert!((pb - 1.0 / (1.0 + (-1.0f64).exp())).abs() < 1e-12);
    let n = 20_000;
    let hits = (0..n)
        .filter(|_| p.choose(&REQ, &c).unwrap().index == 1)
        .count();
    let frac = hits as f64 / n as f64;
    assert!((frac - pb).abs() < 0.02, "{frac} vs {pb}");
}

#[test]
fn simple_policies() {
    let c = [
        cand(1, 0, 4, 10, 0),
        cand(2, 0, 2, 50, 0),
        cand(3, 0, 2, 40, 0),
    ];
    let mut rr = RoundRobin::default();
    let picks: Vec<_> = (0..4).map(|_| rr.choose(&REQ, &c).unwrap().index).collect();
    assert_eq!(picks, vec![0, 1, 2, 0]);
    // Least-load: 2 requests tie, fewer blocks wins -> worker 3.
    assert_eq!(LeastLoad::new(0).choose(&REQ, &c).unwrap().worker, w(3));
    // Power of two never picks the most loaded of its pair, and with 2 candidates always
    // picks the lighter one.
    let two = [cand(1, 0, 4, 10, 0), cand(2, 0, 2, 50, 0)];
    let mut p2 = PowerOfTwo::new(5);
    for _ in 0..50 {
        assert_eq!(p2.choose(&REQ, &two).unwrap().worker, w(2));
    }
    let mut r = RandomPolicy::new(9);
    let mut seen = [0; 3];
    for _ in 0..300 {
        seen[r.choose(&REQ, &c).unwrap().index] += 1;
    }
    assert!(seen.iter().all(|&s| s > 60), "{seen:?}");
    for mut p in PolicyKind::ALL.map(|k| {
        build_policy(&RouterConfig {
            policy: k,
            ..RouterConfig::default()
        })
    }) {
        assert_eq!(p.choose(&REQ, &[]), Err(RouteError::NoCandidates));
        assert_eq!(p.choose(&REQ, &c[..1]).unwrap().index, 0);
    }
}

#[test]
fn pair_selection_and_conditional_disaggregation() {
    let mut s = PairSelector::new(1.0, 512, 0);
    // Decode: D1 has 200 active blocks, D2 has 100 -> D2. D2 caches 90 of 100 blocks:
    // 1600 - 1440 = 160 uncached tokens < 512 -> local prefill.
    let decode = [cand(11, 0, 1, 200, 0), cand(12, 90, 1, 100, 0)];
    let prefill = [cand(1, 0, 0, 0, 0), cand(2, 50, 0, 0, 0)];
    let d = s.choose(&REQ, &prefill, &decode).unwrap();
    assert_eq!(d.decode.worker, w(12));
    assert!(d.is_local());
    assert_eq!(
        d.placement,
        PrefillPlacement::LocalBelowThreshold {
            uncached_tokens: 160,
            threshold: 512
        }
    );
    // D2 caches only 10 blocks: 1440 uncached -> remote. Prefill: P1 1600/16 = 100,
    // P2 (1600 - 800)/16 = 50 -> P2. Transfer what D2 lacks: 1440 tokens.
    let decode = [cand(11, 0, 1, 200, 0), cand(12, 10, 1, 100, 0)];
    let d = s.choose(&REQ, &prefill, &decode).unwrap();
    assert_eq!(d.placement, PrefillPlacement::Remote);
    let p = d.prefill.as_ref().unwrap();
    assert_eq!(p.worker, w(2));
    assert_eq!(p.chosen().cost, Some(50.0));
    assert_eq!(d.uncached_on_prefill, Some(800));
    assert_eq!(d.transfer_tokens, 1440);
    // Decode ties on load go to the larger cache.
    let decode = [cand(11, 5, 1, 100, 0), cand(12, 30, 1, 100, 0)];
    assert_eq!(
        s.choose(&REQ, &prefill, &decode).unwrap().decode.worker,
        w(12)
    );
    // Threshold 0 = always remote; empty prefill pool = always local.
    let mut always = PairSelector::new(1.0, 0, 0);
    let decode = [cand(12, 100, 1, 100, 0)];
    assert!(!always.choose(&REQ, &prefill, &decode).unwrap().is_local());
    let d = always.choose(&REQ, &[], &decode).unwrap();
    assert_eq!(d.placement, PrefillPlacement::LocalNoPrefillWorkers);
    assert_eq!(s.choose(&REQ, &prefill, &[]), Err(RouteError::NoCandidates));
}

#[test]
fn router_routes_to_cached_worker_and_tracks_load() {
    let mut r = Router::new(RouterConfig::default()).unwrap();
    let h = BlockHasher::new(16).unwrap();
    let toks: Vec<u32> = (0..1600).collect();
    let hashes = h.hash(&toks);
    let workers = [w(1), w(2), w(3)];
    // Worker 2 caches the first 80 blocks.
    r.apply_event(
        w(2),
        &KvEvent::Stored {
            parent: None,
            blocks: hashes[..80].to_vec(),
        },
    );
    let (d, t) = r.route(&hashes, 1600, &workers, 0.0).unwrap();
    assert_eq!(d.worker, w(2));
    assert_eq!(d.overlap_blocks(), 80);
    // Booked: 320 uncached tokens, 100 blocks.
    let s = r.snapshot(w(2), 0.0);
    assert_eq!(
        (s.active_requests, s.prefill_tokens, s.active_blocks),
        (1, 320, 100)
    );
    r.first_token(t).unwrap();
    assert_eq!(r.snapshot(w(2), 0.0).prefill_tokens, 0);
    r.finish(t).unwrap();
    assert_eq!(r.snapshot(w(2), 0.0), LoadSnapshot::default());
    assert_eq!(r.finish(t), Err(RouteError::StaleTicket));
    assert_eq!(
        r.choose(&hashes, 1600, &[], 0.0),
        Err(RouteError::NoCandidates)
    );
}

#[test]
fn approximate_mode_learns_from_its_own_decisions() {
    let cfg = RouterConfig {
        kv_feed: KvFeed::Approximate,
        approx_ttl_secs: 60.0,
        ..RouterConfig::default()
    };
    let mut r = Router::new(cfg).unwrap();
    let hashes = BlockHasher::new(16)
        .unwrap()
        .hash(&(0..3200).collect::<Vec<u32>>());
    let workers = [w(1), w(2)];
    let (first, t) = r.route(&hashes, 3200, &workers, 0.0).unwrap();
    r.finish(t).unwrap();
    // Same prompt again: the predicted cache pulls it to the same worker.
    let (again, t) = r.route(&hashes, 3200, &workers, 1.0).unwrap();
    assert_eq!(again.worker, first.worker);
    assert_eq!(again.overlap_blocks(), 200);
    r.finish(t).unwrap();
    // After the TTL the prediction is gone.
    let d = r.choose(&hashes, 3200, &workers, 100.0).unwrap();
    assert_eq!(d.overlap_blocks(), 0);
}

#[test]
fn predictions_from_other_routers_feed_the_approximate_index_only() {
    let hashes = BlockHasher::new(16)
        .unwrap()
        .hash(&(0..3200).collect::<Vec<u32>>());
    let workers = [w(1), w(2), w(3)];
    for (feed, expect) in [
        (KvFeed::Approximate, 200),
        (KvFeed::Hybrid, 200),
        (KvFeed::Events, 0),
    ] {
        let cfg = RouterConfig {
            kv_feed: feed,
            approx_ttl_secs: 60.0,
            predicted_ttl_secs: 60.0,
            ..RouterConfig::default()
        };
        let mut r = Router::new(cfg).unwrap();
        // Replica B routed this prompt to worker 3: replica A (this router) never did.
        r.record_prediction(w(3), &hashes, 0.0);
        let d = r.choose(&hashes, 3200, &workers, 1.0).unwrap();
        assert_eq!(d.candidates[2].overlap_blocks, expect, "{feed:?}");
        if expect > 0 {
            assert_eq!(d.worker, w(3), "{feed:?}");
        }
        // Nothing was booked: a prediction is not load.
        assert_eq!(r.load().in_flight(), 0);
        assert_eq!(r.snapshot(w(3), 1.0), LoadSnapshot::default());
        // The prediction ages out like the router's own.
        let d = r.choose(&hashes, 3200, &workers, 100.0).unwrap();
        assert_eq!(d.candidates[2].overlap_blocks, 0, "{feed:?}");
    }
}

#[test]
fn external_load_steers_least_load_away_from_busy_peers() {
    let cfg = RouterConfig {
        policy: PolicyKind::LeastLoad,
        ..RouterConfig::default()
    };
    let mut r = Router::new(cfg).unwrap();
    let workers = [w(1), w(2)];
    // Another replica has 4 requests on worker 1, this one 1 on worker 2.
    r.set_external_load(w(1), 4);
    let (_, t) = r.route(&[], 16, &[w(2)], 0.0).unwrap();
    assert_eq!(r.snapshot(w(1), 0.0).active_requests, 4);
    assert_eq!(r.snapshot(w(2), 0.0).active_requests, 1);
    let d = r.choose(&[], 16, &workers, 0.0).unwrap();
    assert_eq!(d.worker, w(2));
    // The peer's requests finish: worker 1 is the idle one now.
    r.set_external_load(w(1), 0);
    let d = r.choose(&[], 16, &workers, 0.0).unwrap();
    assert_eq!(d.worker, w(1));
    r.finish(t).unwrap();
}

#[test]
fn route_pair_books_both_sides() {
    let mut r = Router::new(RouterConfig::default()).unwrap();
    let hashes = BlockHasher::new(16)
        .unwrap()
        .hash(&(0..1600).collect::<Vec<u32>>());
    let (d, t) = r.route_pair(&hashes, 1600, &[w(1)], &[w(10)], 0.0).unwrap();
    assert!(!d.is_local());
    let p = t.prefill.unwrap();
    assert_eq!(r.snapshot(w(1), 0.0).prefill_tokens, 1600);
    assert_eq!(r.snapshot(w(10), 0.0).active_blocks, 100);
    assert_eq!(r.snapshot(w(10), 0.0).prefill_tokens, 0);
    r.finish(p).unwrap();
    r.first_token(t.decode).unwrap();
    r.finish(t.decode).unwrap();
    assert_eq!(r.load().in_flight(), 0);
}

#[test]
fn guards_release_load_on_every_exit_path() {
    let shared = SharedRouter::new(Router::new(RouterConfig::default()).unwrap());
    let hashes = BlockHasher::new(16)
        .unwrap()
        .hash(&(0..320).collect::<Vec<u32>>());
    {
        let (_d, g) = shared.route(&hashes, 320, &[w(1)], 0.0).unwrap();
        assert_eq!(shared.lock().snapshot(w(1), 0.0).active_requests, 1);
        g.prefill_done();
        assert_eq!(shared.lock().snapshot(w(1), 0.0).prefill_tokens, 0);
    } // dropped: completion
    assert_eq!(shared.lock().load().in_flight(), 0);
    // Cancellation by unwinding.
    let s2 = shared.clone();
    let h2 = hashes.clone();
    let r = std::thread::spawn(move || {
        let (_d, _g) = s2.route(&h2, 320, &[w(1)], 0.0).unwrap();
        panic!("client went away");
    })
    .join();
    assert!(r.is_err());
    assert_eq!(shared.lock().load().in_flight(), 0);
    let (_d, guards) = shared
        .route_pair(&hashes, 320, &[w(1)], &[w(2)], 0.0)
        .unwrap();
    assert!(
        guards.prefill.is_none(),
        "320 uncached tokens < 512: local prefill"
    );
    assert_eq!(shared.lock().load().in_flight(), 1);
    drop(guards);
    assert_eq!(shared.lock().load().in_flight(), 0);
    assert_eq!(shared.lock().load().stale_ticket_uses(), 0);
}

#[test]
fn config_parses_from_toml_router_table() {
    #[derive(serde::Deserialize)]
    struct File {
        router: RouterConfig,
    }
    let f: File = toml::from_str(
        "[router]\npolicy = \"power-of-two\"\nblock_size = 64\ntemperature = 0.5\nkv_feed = \"hybrid\"\n",
    )
    .unwrap();
    assert_eq!(f.router.policy, PolicyKind::PowerOfTwo);
    assert_eq!(f.router.block_size, 64);
    assert_eq!(
        f.router.overlap_weight, 1.0,
        "unset keys keep their defaults"
    );
    assert_eq!(f.router.kv_feed, KvFeed::Hybrid);
    let err = toml::from_str::<File>("[router]\nblok_size = 64\n")
        .err()
        .unwrap();
    assert!(err.to_string().contains("blok_size"), "{err}");
    assert!(toml::from_str::<File>("[router]\npolicy = \"fastest\"\n").is_err());
    let bad = RouterConfig {
        block_size: 0,
        ..RouterConfig::default()
    };
    assert!(
        matches!(Router::new(bad), Err(RouteError::InvalidConfig(m)) if m.contains("block_size"))
    );
    assert_eq!(
        "least_load".parse::<PolicyKind>().unwrap(),
        PolicyKind::LeastLoad
    );
    assert_eq!("kv".parse::<PolicyKind>().unwrap().to_string(), "kv");
}
