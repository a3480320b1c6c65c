//! Engine step throughput.
//!
//! `cargo bench -p switchyard-engine -- --warm-up-time 1 --measurement-time 3`
//! (`-- mooncake` for the trace replay only)

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use switchyard_engine::closed_loop::{ClosedLoop, run};
use switchyard_engine::{Catalog, Engine, EngineConfig, KvDtype, Request, WeightDtype};

const STEPS: u64 = 10_000;

/// An engine with `batch` sequences decoding (prefill done), KV events off.
fn decoding_engine(batch: u32) -> Engine {
    let cat = Catalog::builtin().expect("catalog");
    let cfg = EngineConfig {
        gpu: "H200".into(),
        model: "Llama-3.1-8B".into(),
        weight_dtype: WeightDtype::Fp8,
        kv_dtype: KvDtype::Fp8,
        kv_events: false,
        // Room for every sequence to run 10,000+ steps without preemption.
        num_gpu_blocks_override: Some(batch * 700),
        ..EngineConfig::default()
    };
    let mut e = Engine::new(&cat, &cfg).expect("engine");
    for i in 0..batch {
        e.admit(
            Request {
                id: i as u64,
                prompt_tokens: 128 + i,
                block_hashes: Vec::new(),
                max_output_tokens: 11_000,
                dp_rank: None,
            },
            0.0,
        )
        .expect("admit");
    }
    // Prefill everything (visible steps), leaving a pure decode batch.
    while e.load().waiting > 0 || e.stats().generated_tokens < batch as u64 {
        e.step(0.0);
    }
    e
}

fn decode_only(c: &mut Criterion) {
    let mut g = c.benchmark_group("decode_only_10k_steps");
    for batch in [8u32, 256] {
        let base = decoding_engine(batch);
        g.throughput(Throughput::Elements(STEPS));
        g.bench_function(format!("batch_{batch}"), |b| {
            b.iter_batched(
                || base.clone(),
                |mut e| {
                    let a = e.advance_bounded(0.0, f64::INFINITY, STEPS);
                    assert_eq!(a.steps, STEPS);
                    e
                },
                BatchSize::LargeInput,
            )
        });
    }
    g.finish();
}

fn mixed_chunked_prefill(c: &mut Criterion) {
    // 64 clients, 2,048-token prompts chunked by a 2,048 budget next to the decodes, 256
    // output tokens: every ~8th step carries a prefill chunk.
    let cat = Catalog::builtin().expect("catalog");
    let cfg = EngineConfig {
        gpu: "H100-SXM".into(),
        model: "Qwen3-32B".into(),
        tp: 2,
        max_num_batched_tokens: Some(2048),
        kv_events: false,
        ..EngineConfig::default()
    };
    let w = ClosedLoop::new(64, 1000, 2048, 256);
    let steps = {
        let mut e = Engine::new(&cat, &cfg).expect("engine");
        run(&mut e, &w).expect("run").steps
    };
    let mut g = c.benchmark_group("mixed_chunked_prefill");
    g.throughput(Throughput::Elements(steps));
    g.bench_function(format!("closed_loop_64x1000_{steps}_steps"), |b| {
        b.iter_batched(
            || Engine::new(&cat, &cfg).expect("engine"),
            |mut e| run(&mut e, &w).expect("run"),
            BatchSize::LargeInput,
        )
    });
    g.finish();
}

/// The first `n` requests of the bundled Mooncake conversation trace (12k-token prompts on
/// average), block hashes mapped to 16-token engine blocks as `lab` does.
fn trace_requests(n: usize) -> Vec<(f64, Request)> {
    use std::io::BufRead as _;
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../data/mooncake_conversation.jsonl.gz"
    );
    let file = std::fs::File::open(path).expect("bundled trace");
    let reader = std::io::BufReader::new(flate2::read::GzDecoder::new(file));
    let mapper = switchyard_kv::TraceBlockMapper::new(16).expect("mapper");
    let mut out = Vec::new();
    for (i, line) in reader.lines().take(n).enumerate() {
        let v: serde_json::Value = serde_json::from_str(&line.expect("line")).expect("json");
        let ids: Vec<u64> = v["hash_ids"]
            .as_array()
            .expect("hash_ids")
            .iter()
            .filter_map(|x| x.as_u64())
            .collect();
        let input = v["input_length"].as_u64().expect("input") as u32;
        let mut hashes = Vec::new();
        mapper.map_into(&ids, input, &mut hashes);
        out.push((
            v["timestamp"].as_f64().expect("timestamp") / 1000.0,
            Request {
                id: i as u64,
                prompt_tokens: input,
                block_hashes: hashes,
                max_output_tokens: v["output_length"].as_u64().expect("output").max(1) as u32,
                dp_rank: Some(0),
            },
        ));
    }
    out
}

/// Replay arrivals round-robin over `engines` (each advanced to every arrival, as `lab` does).
fn replay(engines: &mut [Engine], reqs: &[(f64, Request)]) -> u64 {
    let mut steps = 0;
    let mut run = |e: &mut Engine, limit: f64| {
        let mut now = e.busy_until();
        loop {
            let a = e.advance_until(now, limit);
            steps += a.steps;
            match a.outcome {
                Some(o) => now = o.end,
                None => return,
            }
        }
    };
    for (k, (t, r)) in reqs.iter().enumerate() {
        for e in engines.iter_mut() {
            run(e, *t);
        }
        let w = k % engines.len();
        engines[w].admit(r.clone(), *t).expect("admit");
    }
    for e in engines.iter_mut() {
        run(e, f64::INFINITY);
    }
    steps
}

fn trace_replay(c: &mut Criterion) {
    // Prefix-cache bookkeeping dominates here: ~750 blocks allocated, registered, freed and
    // later evicted per request, in pools of ~47k blocks per worker (KV events on).
    let cat = Catalog::builtin().expect("catalog");
    let cfg = EngineConfig {
        gpu: "H200".into(),
        model: "Qwen3-32B".into(),
        tp: 2,
        ..EngineConfig::default()
    };
    let reqs = trace_requests(1500);
    let workers = 4;
    let fresh = || -> Vec<Engine> {
        (0..workers)
            .map(|_| Engine::new(&cat, &cfg).expect("engine"))
            .collect()
    };
    let blocks: u64 = reqs.iter().map(|r| r.1.block_hashes.len() as u64).sum();
    let mut g = c.benchmark_group("mooncake_trace_replay");
    g.sample_size(10);
    g.throughput(Throughput::Elements(blocks));
    g.bench_function(format!("{}_requests_{workers}_workers", reqs.len()), |b| {
        b.iter_batched(fresh, |mut e| replay(&mut e, &reqs), BatchSize::LargeInput)
    });
    g.finish();
}

criterion_group!(benches, decode_only, mixed_chunked_prefill, trace_replay);
criterion_main!(benches);
