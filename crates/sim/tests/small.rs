//! End-to-end simulations of small deployments with hand-checkable outcomes.

use switchyard_engine::Catalog;
use switchyard_sim::{Deployment, RunOptions, simulate};
use switchyard_trace::{Trace, TraceRequest};

fn trace(n: usize, gap_ms: f64) -> Trace {
    Trace {
        requests: (0..n)
            .map(|i| {
                TraceRequest::new(
                    i as f64 * gap_ms,
                    2048,
                    64,
                    vec![
                        0,
                        1000 + i as u64 * 3,
                        1001 + i as u64 * 3,
                        1002 + i as u64 * 3,
                    ],
                )
            })
            .collect(),
        block_size: 512,
    }
}

const AGG: &str = r#"
name = "agg"
[engine]
gpu = "H200"
model = "Qwen3-32B"
tp = 2
[[group]]
role = "aggregated"
count = 2
[router]
policy = "round-robin"
"#;

const DISAGG: &str = r#"
name = "disagg"
[engine]
gpu = "H200"
model = "Qwen3-32B"
tp = 2
[[group]]
role = "prefill"
count = 1
[[group]]
role = "decode"
count = 1
[router]
policy = "kv"
"#;

fn run(toml: &str, t: &Trace) -> switchyard_sim::SimOutput {
    let dep = Deployment::parse(toml, "test.toml").unwrap();
    let cat = Catalog::builtin().unwrap();
    simulate(&dep, &cat, t, &RunOptions::default(), &mut |_, _| {}).unwrap()
}

#[test]
fn aggregated_completes_every_request() {
    let out = run(AGG, &trace(10, 500.0));
    for r in &out.records {
        assert!(r.is_ok(), "{r:?}");
        assert_eq!(r.gaps.len(), 63);
        assert!(r.first_token.unwrap() > r.sent);
    }
}

#[test]
fn disaggregated_completes_every_request_with_a_transfer() {
    let out = run(DISAGG, &trace(10, 500.0));
    for r in &out.records {
        assert!(r.is_ok(), "{r:?}");
        assert!(r.kv_transfer.unwrap() > 0.0, "{r:?}");
        assert_eq!(r.prefill_worker, Some(0));
        assert_eq!(r.decode_worker, Some(1));
    }
}

#[test]
fn disaggregated_gaps_cover_every_output_token() {
    let out = run(DISAGG, &trace(5, 300.0));
    for r in &out.records {
        assert_eq!(r.gaps.len(), 63, "{r:?}");
        let tpot = r.tpot().unwrap();
        assert!(tpot > 0.005 && tpot < 0.05, "{tpot}");
    }
}

#[test]
fn same_seed_same_records() {
    let t = trace(40, 50.0);
    let a = run(DISAGG, &t);
    let b = run(DISAGG, &t);
    assert_eq!(a.records, b.records);
    let c = run(AGG, &t);
    let d = run(AGG, &t);
    assert_eq!(c.records, d.records);
}

#[test]
fn kv_aware_routing_follows_the_cached_prefix() {
    // Two aggregated workers, KV-aware. Requests share a long prefix: after the first one
    // lands, the rest follow it while load allows, and hit the cache.
    let toml = AGG.replace("policy = \"round-robin\"", "policy = \"kv\"");
    let t = Trace {
        requests: (0..6)
            .map(|i| {
                TraceRequest::new(
                    i as f64 * 2000.0,
                    8192,
                    16,
                    (0..16).map(|k| if k < 15 { k } else { 100 + i }).collect(),
                )
            })
            .collect(),
        block_size: 512,
    };
    let out = run(&toml, &t);
    let first = out.records[0].prefill_worker;
    for r in &out.records[1..] {
        assert_eq!(r.prefill_worker, first, "{r:?}");
        assert!(r.cached_tokens >= 14 * 512, "{r:?}");
    }
}

#[test]
fn requests_over_the_context_are_rejected_not_lost() {
    let toml = AGG.replace("tp = 2", "tp = 2\nmax_model_len = 1024");
    let out = run(&toml, &trace(3, 100.0));
    assert!(out.records.iter().all(|r| !r.is_ok()));
    assert_eq!(out.routing.rejected, 3);
    let s = switchyard_metrics::Summary::from_records(&out.records, &Default::default()).unwrap();
    assert_eq!(s.completed, 0);
    assert_eq!(s.errors.get("rejected"), Some(&3));
}

#[test]
fn bad_deployments_name_the_problem() {
    let cat = Catalog::builtin().unwrap();
    let e =
        Deployment::parse(&AGG.replace("[router]", "[router]\nbogus = 1"), "d.toml").unwrap_err();
    assert!(
        e.to_string().starts_with("d.toml: ") && e.to_string().contains("bogus"),
        "{e}"
    );
    let e = Deployment::parse(&AGG.replace("count = 2", "count = 0"), "d.toml").unwrap_err();
    assert!(
        e.to_string().contains("count must be in 1..=10000, got 0"),
        "{e}"
    );
    let e = Deployment::parse(
        &AGG.replace("role = \"aggregated\"", "role = \"prefill\""),
        "d.toml",
    )
    .unwrap_err();
    assert!(
        e.to_string().contains("both a prefill and a decode group"),
        "{e}"
    );
    let e = Deployment::parse("name = 'x'", "d.toml").unwrap_err();
    assert!(e.to_string().contains("no worker groups"), "{e}");
    let e = Deployment::parse(&AGG.replace("tp = 2", "tp = 2\nflux = 3"), "d.toml").unwrap_err();
    assert!(e.to_string().contains("flux"), "{e}");
    // Parses, but cannot be built: TP3 does not divide Qwen3-32B's 64 query heads.
    let dep = Deployment::parse(&AGG.replace("tp = 2", "tp = 3"), "d.toml").unwrap();
    let err = simulate(
        &dep,
        &cat,
        &trace(1, 1.0),
        &RunOptions::default(),
        &mut |_, _| {},
    )
    .err()
    .unwrap()
    .to_string();
    assert!(err.contains("[[group]] #1") && err.contains("TP3"), "{err}");
    // Does not fit: Llama-3.1-70B BF16 on one H100.
    let dep = Deployment::parse(
        &AGG.replace("gpu = \"H200\"", "gpu = \"H100-SXM\"")
            .replace("model = \"Qwen3-32B\"", "model = \"Llama-3.1-70B\"")
            .replace("tp = 2", "tp = 1"),
        "d.toml",
    )
    .unwrap();
    let err = simulate(
        &dep,
        &cat,
        &trace(1, 1.0),
        &RunOptions::default(),
        &mut |_, _| {},
    )
    .err()
    .unwrap()
    .to_string();
    assert!(err.contains("fit"), "{err}");
}

#[test]
fn layerwise_transfer_overlaps_the_prefill() {
    let t = trace(5, 1000.0);
    let after = run(DISAGG, &t);
    let lw = run(
        &format!("{DISAGG}\n[network]\ntransfer = \"layerwise\"\n"),
        &t,
    );
    for (a, b) in after.records.iter().zip(&lw.records) {
        let (xa, xb) = (a.kv_transfer.unwrap(), b.kv_transfer.unwrap());
        assert!(xb < xa, "layerwise {xb} should beat after-prefill {xa}");
        assert!(b.ttft().unwrap() < a.ttft().unwrap());
    }
    // A slow NIC makes the transfer visible in TTFT: 2048 tokens x 256 KiB at 1 GB/s x 2 GPUs.
    let slow = run(
        &format!("{DISAGG}\n[network]\nnic_gb_s = 1.0\nefficiency = 1.0\n"),
        &t,
    );
    let x = slow.records[0].kv_transfer.unwrap();
    let expect = 0.001 + 2048.0 * 262_144.0 / 2e9;
    assert!((x - expect).abs() < 1e-3, "{x} vs {expect}");
}

#[test]
fn next_turn_with_a_short_uncached_tail_prefills_on_the_decode_worker() {
    // Turn 2 repeats turn 1's 16 blocks and adds 100 tokens: below the default 512-token
    // threshold of uncached tokens on the decode worker that holds turn 1.
    let t = Trace {
        requests: vec![
            TraceRequest::new(0.0, 8192, 8, (0..16).collect()),
            TraceRequest::new(5000.0, 8292, 8, (0..17).collect()),
        ],
        block_size: 512,
    };
    let out = run(DISAGG, &t);
    assert_eq!(out.routing.local_prefills, 1);
    let (r0, r1) = (&out.records[0], &out.records[1]);
    assert!(r0.is_ok() && r1.is_ok(), "{r0:?} {r1:?}");
    assert_eq!(r0.prefill_worker, Some(0));
    assert!(r0.kv_transfer.is_some());
    assert_eq!(r1.prefill_worker, None);
    assert_eq!(r1.kv_transfer, None);
    assert_eq!(r1.cached_tokens, 8192);
    assert_eq!(r1.gaps.len(), 7);
    // No transfer, ~100 tokens of prefill: far quicker to the first token than turn 1.
    assert!(r1.ttft().unwrap() < r0.ttft().unwrap() / 2.0);
    // With the threshold at 0, the prefill pool is always used.
    let always = run(
        &DISAGG.replace(
            "policy = \"kv\"",
            "policy = \"kv\"\nlocal_prefill_threshold = 0",
        ),
        &t,
    );
    assert_eq!(always.routing.local_prefills, 0);
    assert!(always.records[1].kv_transfer.is_some());
}

/// The simulator's grouped block ids give exactly the results real chained hashes give: the
/// first 600 requests of the bundled trace (shared prefixes, partial trace blocks, evictions
/// once caches fill), through a KV-aware disaggregated deployment fed by KV events.
#[test]
fn grouped_block_ids_match_real_hashes() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../data/mooncake_conversation.jsonl.gz");
    let mut t = switchyard_trace::load(&path, &switchyard_trace::LoadOptions::default())
        .unwrap()
        .trace;
    t.requests.truncate(600);
    // Small caches so that eviction (and its Removed events) happens within 600 requests.
    let toml = DISAGG.replace("tp = 2", "tp = 2\nnum_gpu_blocks_override = 8000");
    let dep = Deployment::parse(&toml, "t.toml").unwrap();
    let cat = Catalog::builtin().unwrap();
    let run = |real: bool| {
        let opts = RunOptions {
            real_block_hashes: real,
            ..RunOptions::default()
        };
        simulate(&dep, &cat, &t, &opts, &mut |_, _| {}).unwrap()
    };
    let (grouped, real) = (run(false), run(true));
    assert!(grouped.routing.kv_events_applied > 0);
    assert_eq!(
        grouped.routing.kv_events_applied,
        real.routing.kv_events_applied
    );
    assert_eq!(
        grouped.routing.mean_overlap_blocks,
        real.routing.mean_overlap_blocks
    );
    assert_eq!(
        switchyard_metrics::records_to_jsonl(&grouped.records),
        switchyard_metrics::records_to_jsonl(&real.records)
    );
}
