//! Tight decode loop for instruction-count profiling: `perf stat -e instructions:u`.
use switchyard_engine::{Catalog, Engine, EngineConfig, KvDtype, Request, WeightDtype};

fn main() {
    let batch: u32 = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(8);
    let steps: u64 = std::env::args()
        .nth(2)
        .and_then(|s| s.parse().ok())
        .unwrap_or(1_000_000);
    let cat = Catalog::builtin().expect("catalog");
    let cfg = EngineConfig {
        gpu: "H200".into(),
        model: "Llama-3.1-8B".into(),
        weight_dtype: WeightDtype::Fp8,
        kv_dtype: KvDtype::Fp8,
        kv_events: false,
        max_model_len: Some(131072),
        num_gpu_blocks_override: Some(batch * 8000),
        ..EngineConfig::default()
    };
    let mut e = Engine::new(&cat, &cfg).expect("engine");
    for i in 0..batch {
        let r = Request {
            id: i as u64,
            prompt_tokens: 128,
            block_hashes: vec![],
            max_output_tokens: 120_000,
            dp_rank: None,
        };
        e.admit(r, 0.0).expect("admit");
    }
    // Prefill (visible steps) first, then time the pure decode stretch.
    let mut now = 0.0;
    while e.load().pending_prefill_tokens > 0 {
        now = e.step(now).end;
    }
    let mut best = f64::INFINITY;
    for _ in 0..5 {
        let mut x = e.clone();
        let t0 = std::time::Instant::now();
        let a = x.advance_bounded(now, f64::INFINITY, steps);
        let dt = t0.elapsed().as_secs_f64();
        assert_eq!(a.steps, steps);
        best = best.min(dt * 1e9 / steps as f64);
    }
    println!(
        "batch {batch}: {best:.1} ns/step, {:.2} ns/request-step (best of 5 x {steps} steps)",
        best / batch as f64
    );
}
