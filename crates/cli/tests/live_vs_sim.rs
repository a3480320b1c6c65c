//! The same deployment file in `lab` (virtual time) and in `serve` (real time, simulated
//! workers `--speedup X` times faster, the trace replayed by `bench` X times faster): the
//! live TTFT/TPOT distributions, scaled back by X, must be close to the simulator's.
//!
//! Why they can differ at all: the live run has real event lag (ZMQ) and HTTP hops instead of
//! the simulator's fixed 5 ms, timer granularity (~1 ms of real time = X ms simulated), and
//! scheduling noise from sharing 2 cores with the test runner; routing decisions that depend
//! on who finished first can then differ for near-ties. The tolerances below are what holds
//! on this machine with margin (see the printed table); the statistic compared is the one a
//! user reads (mean and p50/p90), not per-request equality. Observed (two runs, debug build):
//! TTFT mean +0.9% / +2.1%, p50 −2.9% / +5.6%, p90 −2.1% / +8.3%; TPOT within 2.5%.

use std::path::PathBuf;

use clap::Parser;
use switchyard_bench::{BenchArgs, StopHandle};
use switchyard_metrics::{Stats, Summary, SummaryOptions};
use switchyard_server::serve::{ServeArgs, start_serve};
use switchyard_sim::{Deployment, RunOptions, simulate};

#[derive(Parser)]
struct BenchCli {
    #[command(flatten)]
    bench: BenchArgs,
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Trace slice: the first `n` requests of the bundled conversation trace.
fn slice(n: usize) -> switchyard_trace::Trace {
    let loaded = switchyard_trace::load(
        &root().join("data/mooncake_conversation.jsonl.gz"),
        &Default::default(),
    )
    .unwrap();
    let mut t = loaded.trace;
    t.requests.truncate(n);
    t
}

fn rel(live: f64, sim: f64) -> f64 {
    (live - sim).abs() / sim
}

#[test]
fn live_serve_matches_the_simulator_on_the_same_recipe() {
    const N: usize = 200;
    // Live time runs X times faster than simulated time.
    const X: f64 = 2.0;
    let recipe = root().join("recipes/qwen3-32b-h200/disagg-kv.toml");
    let dep = Deployment::load(&recipe).unwrap();
    let catalog = switchyard_engine::Catalog::load(None).unwrap();
    let trace = slice(N);
    let sim = simulate(
        &dep,
        &catalog,
        &trace,
        &RunOptions::default(),
        &mut |_, _| {},
    )
    .unwrap();
    let sim_sum = Summary::from_records(&sim.records, &SummaryOptions::default()).unwrap();

    let dir = tempfile::tempdir().unwrap();
    let trace_path = dir.path().join("slice.jsonl");
    switchyard_trace::write_jsonl(&trace_path, &trace).unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let live_sum = rt.block_on(async {
        let s = start_serve(&ServeArgs {
            config: Some(recipe.clone()),
            speedup: X,
            ..ServeArgs::default()
        })
        .await
        .unwrap();
        let cli = BenchCli::try_parse_from([
            "bench",
            "--url",
            &s.url(),
            "--trace",
            trace_path.to_str().unwrap(),
            "--speedup",
            &X.to_string(),
            "--prompt",
            "tokens",
            "--progress",
            "off",
        ])
        .unwrap();
        let out = switchyard_bench::run(&cli.bench, StopHandle::new())
            .await
            .unwrap();
        out.summary
    });
    assert_eq!(live_sum.completed, N as u64, "{:?}", live_sum.errors);
    assert_eq!(sim_sum.completed, N as u64);

    let scale = |s: &Stats| (s.mean * X, s.p50 * X, s.p90 * X);
    let (lt, st) = (
        scale(live_sum.ttft.as_ref().unwrap()),
        sim_sum.ttft.unwrap(),
    );
    let (lp, sp) = (
        scale(live_sum.tpot.as_ref().unwrap()),
        sim_sum.tpot.unwrap(),
    );
    println!("metric (ms, simulated time)   lab      live     diff");
    for (name, l, s) in [
        ("TTFT mean", lt.0, st.mean),
        ("TTFT p50", lt.1, st.p50),
        ("TTFT p90", lt.2, st.p90),
        ("TPOT mean", lp.0, sp.mean),
        ("TPOT p50", lp.1, sp.p50),
        ("TPOT p90", lp.2, sp.p90),
    ] {
        println!(
            "{name:<28} {:>8.1} {:>8.1} {:>+7.1}%",
            s * 1e3,
            l * 1e3,
            (l - s) / s * 100.0
        );
    }
    // TPOT: a per-request average over hundreds of steps; timer lateness does not accumulate.
    assert!(
        rel(lp.0, sp.mean) < 0.10,
        "TPOT mean {} vs {}",
        lp.0,
        sp.mean
    );
    assert!(rel(lp.1, sp.p50) < 0.10, "TPOT p50 {} vs {}", lp.1, sp.p50);
    // TTFT: hundreds of ms of prefill + transfer, plus real HTTP hops and event lag.
    assert!(
        rel(lt.0, st.mean) < 0.15,
        "TTFT mean {} vs {}",
        lt.0,
        st.mean
    );
    // The median of 200 TTFTs is the least stable statistic: it moved by up to 19% between
    // runs while the mean stayed within 2.2% (requests near it flip between a cache hit and
    // a miss, or local and remote prefill, when near-tied routing breaks differently).
    assert!(rel(lt.1, st.p50) < 0.25, "TTFT p50 {} vs {}", lt.1, st.p50);
    assert!(rel(lt.2, st.p90) < 0.25, "TTFT p90 {} vs {}", lt.2, st.p90);
}

/// `n` requests in groups of four that share a 12-block (6,144-token) prefix, one every
/// 150 ms: KV-aware routing sends a group's followers to the rank that holds its prefix.
fn shared_prefixes(n: usize) -> switchyard_trace::Trace {
    let requests = (0..n)
        .map(|i| {
            // Members of a group arrive n/4 requests (n/4 × 150 ms) apart: by then the
            // first one's prefix is cached and its KV events are in.
            let group = (i % (n / 4)) as u64;
            let mut hash_ids: Vec<u64> = (0..12).map(|b| group * 1000 + b).collect();
            hash_ids.push(1_000_000 + i as u64);
            switchyard_trace::TraceRequest {
                timestamp: i as f64 * 150.0,
                input_length: 12 * 512 + 100,
                output_length: 40,
                hash_ids,
                session_id: None,
                delay: None,
                text_input: None,
            }
        })
        .collect();
    switchyard_trace::Trace {
        requests,
        block_size: 512,
    }
}

/// Routing on (worker, DP rank) live as in the simulator: two workers with four attention-DP
/// ranks each and KV-aware routing. Were the ranks invisible to live routing (every worker
/// keyed at rank 0), the cache on ranks 1-3 would not attract requests and the live prefix-hit
/// rate would fall far below the lab's. Compares the per-worker placement counts and the hit
/// rate.
#[test]
fn dp_ranks_route_live_as_in_the_lab() {
    const N: usize = 160;
    const X: f64 = 2.0;
    let dir = tempfile::tempdir().unwrap();
    let dep_path = dir.path().join("dp4.toml");
    std::fs::write(
        &dep_path,
        r#"name = "dp4-kv"
[engine]
gpu = "H200"
model = "Qwen3-235B-A22B"
weight_dtype = "fp8"
tp = 1
dp = 4
ep = 4
engine = "vllm"
[[group]]
role = "aggregated"
count = 2
[router]
policy = "kv"
"#,
    )
    .unwrap();
    let dep = Deployment::load(&dep_path).unwrap();
    let catalog = switchyard_engine::Catalog::load(None).unwrap();
    let trace = shared_prefixes(N);
    let sim = simulate(
        &dep,
        &catalog,
        &trace,
        &RunOptions::default(),
        &mut |_, _| {},
    )
    .unwrap();
    let sim_sum = Summary::from_records(&sim.records, &SummaryOptions::default()).unwrap();
    let trace_path = dir.path().join("slice.jsonl");
    switchyard_trace::write_jsonl(&trace_path, &trace).unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (live_sum, placed) = rt.block_on(async {
        let s = start_serve(&ServeArgs {
            config: Some(dep_path.clone()),
            speedup: X,
            ..ServeArgs::default()
        })
        .await
        .unwrap();
        let cli = BenchCli::try_parse_from([
            "bench",
            "--url",
            &s.url(),
            "--trace",
            trace_path.to_str().unwrap(),
            "--speedup",
            &X.to_string(),
            "--prompt",
            "tokens",
            "--progress",
            "off",
        ])
        .unwrap();
        let out = switchyard_bench::run(&cli.bench, StopHandle::new())
            .await
            .unwrap();
        let ws: serde_json::Value = reqwest::get(format!("{}/v1/workers", s.url()))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let placed: Vec<u64> = ws["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|w| w["requests_routed"].as_u64().unwrap())
            .collect();
        (out.summary, placed)
    });
    println!(
        "completed lab {} live {} (live errors {:?})",
        sim_sum.completed, live_sum.completed, live_sum.errors
    );
    let lab_placed: Vec<u64> = sim.workers.iter().map(|w| w.requests).collect();
    let (hl, hs) = (
        live_sum.prefix_cache_hit_rate.unwrap(),
        sim_sum.prefix_cache_hit_rate.unwrap(),
    );
    println!(
        "placement lab {lab_placed:?} live {placed:?}; prefix hit rate lab {hs:.3} live {hl:.3}"
    );
    for (l, s) in placed.iter().zip(&lab_placed) {
        assert!(
            (*l as f64 - *s as f64).abs() <= 0.2 * N as f64,
            "placement lab {lab_placed:?} vs live {placed:?}"
        );
    }
    // The two hit rates are not counted the same way yet (the lab counts a request's cached
    // tokens when it is routed, the worker when the engine starts it, with vLLM's one-token
    // cap; issue #17 item 3), and a follower that arrives while its group's prefill is still
    // running can miss live where the lab's event timing lets it hit: live is below the lab
    // by 0.04-0.12 in runs so far. Rank-blind routing gives about 0.3 x the lab's rate (0.141
    // vs 0.437), so this bound still tells the two apart.
    assert!(
        hl >= 0.6 * hs && hl <= hs + 0.05,
        "prefix hit rate lab {hs:.3} vs live {hl:.3}"
    );
}
