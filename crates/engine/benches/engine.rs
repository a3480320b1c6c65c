//! Engine step throughput.
//!
//! `cargo bench -p switchyard-engine -- --warm-up-time 1 --measurement-time 3`

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
        max_num_batched_tokens: 2048,
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

criterion_group!(benches, decode_only, mixed_chunked_prefill);
criterion_main!(benches);
