//! Prints the calibration table (docs/calibration.md) and the seed deployments' capacities.
//! `cargo run --release -p switchyard-engine --example calibrate`

use switchyard_engine::closed_loop::{ClosedLoop, run};
use switchyard_engine::{Catalog, Engine, EngineConfig, KvDtype, WeightDtype};

fn cfg(gpu: &str, model: &str, w: WeightDtype, tp: u32, engine: &str) -> EngineConfig {
    EngineConfig {
        gpu: gpu.into(),
        model: model.into(),
        weight_dtype: w,
        tp,
        engine: engine.into(),
        ..EngineConfig::default()
    }
}

fn main() {
    let cat = Catalog::builtin().expect("catalog");
    let refs: Vec<(&str, EngineConfig, ClosedLoop, &str, f64)> = vec![
        (
            "Qwen3-32B BF16 H100 TP2 vLLM 1024/1024 c32",
            EngineConfig {
                max_num_batched_tokens: 2048,
                ..cfg("H100-SXM", "Qwen3-32B", WeightDtype::Bf16, 2, "vllm")
            },
            ClosedLoop::new(32, 320, 1024, 1024),
            "ttft+tpot",
            0.0,
        ),
        (
            "DeepSeek-V3 FP8 H200 TP8 SGLang 1024/1024 c16",
            cfg("H200", "DeepSeek-V3", WeightDtype::Fp8, 8, "sglang"),
            ClosedLoop::new(16, 160, 1024, 1024),
            "ttft+tpot",
            0.0,
        ),
        (
            "Llama-3.1-8B FP8 H100 TP1 TRT-LLM 1000/1000 max tput",
            EngineConfig {
                kv_dtype: KvDtype::Fp8,
                max_num_seqs: 2048,
                ..cfg("H100-SXM", "Llama-3.1-8B", WeightDtype::Fp8, 1, "trtllm")
            },
            ClosedLoop::new(3000, 3000, 1000, 1000),
            "tput",
            15220.0,
        ),
        (
            "Llama-3.1-8B FP8 H200 TP1 TRT-LLM 1000/1000 max tput",
            EngineConfig {
                kv_dtype: KvDtype::Fp8,
                max_num_seqs: 2048,
                ..cfg("H200", "Llama-3.1-8B", WeightDtype::Fp8, 1, "trtllm")
            },
            ClosedLoop::new(3000, 3000, 1000, 1000),
            "tput",
            17744.0,
        ),
        (
            "Llama-3.3-70B FP8 H200 TP1 TRT-LLM 1000/1000 max tput",
            EngineConfig {
                kv_dtype: KvDtype::Fp8,
                max_num_seqs: 2048,
                ..cfg("H200", "Llama-3.1-70B", WeightDtype::Fp8, 1, "trtllm")
            },
            ClosedLoop::new(3000, 3000, 1000, 1000),
            "tput",
            2909.0,
        ),
    ];
    let jit: Option<f64> = std::env::args().nth(1).and_then(|s| s.parse().ok());
    for (name, c, w, _kind, _ref) in &refs {
        let mut w = *w;
        if let Some(j) = jit {
            w.turnaround = (0.0, j);
        }
        let w = &w;
        let mut c = c.clone();
        if let Ok(b) = std::env::var("BUDGET") {
            c.max_num_batched_tokens = b.parse().unwrap();
        }
        let c = &c;
        let mut e = Engine::new(&cat, c).expect("engine");
        let t0 = std::time::Instant::now();
        let r = run(&mut e, w).expect("run");
        println!(
            "{name}\n  {}\n  TTFT {:.1} ms  TPOT {:.2} ms  out {:.0} tok/s  steps {}  preempt {}  ({:.2}s wall)",
            e.description(),
            r.mean_ttft * 1e3,
            r.mean_tpot * 1e3,
            r.output_throughput,
            r.steps,
            r.preemptions,
            t0.elapsed().as_secs_f64()
        );
    }
    for c in [
        cfg("H200", "Qwen3-32B", WeightDtype::Bf16, 2, "vllm"),
        EngineConfig {
            dp: 8,
            ep: 8,
            kv_dtype: KvDtype::Fp8,
            ..cfg("GB200", "DeepSeek-V3.2", WeightDtype::Nvfp4, 1, "trtllm")
        },
    ] {
        match Engine::new(&cat, &c) {
            Ok(e) => println!("seed: {}", e.description()),
            Err(err) => println!("seed error: {err}"),
        }
    }
}
