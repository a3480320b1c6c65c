//! Prints the calibration table of docs/calibration.md, the sensitivity runs, and the seed
//! deployments' capacities and step times.
//!
//! `cargo run --release -p switchyard-engine --example calibrate`

use switchyard_engine::closed_loop::{ClosedLoop, ClosedLoopResult, run};
use switchyard_engine::{BatchShape, Catalog, Engine, EngineConfig, KvDtype, WeightDtype};

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

/// Latency loops (more requests than clients) run as a benchmark measures them in steady
/// state (`ClosedLoop::steady`: warm-up wave not counted, clients out of phase); throughput
/// runs (every request queued at once) as they are.
fn measure(cat: &Catalog, c: &EngineConfig, w: &ClosedLoop) -> (ClosedLoopResult, String) {
    let mut e = Engine::new(cat, c).expect("engine");
    let w = if w.requests > w.clients {
        w.steady(&e)
    } else {
        *w
    };
    let r = run(&mut e, &w).expect("run");
    (r, e.description().to_string())
}

/// The textbook closed loop (all clients start together, every request counted).
fn measure_lockstep(cat: &Catalog, c: &EngineConfig, w: &ClosedLoop) -> (ClosedLoopResult, String) {
    let mut e = Engine::new(cat, c).expect("engine");
    let r = run(&mut e, w).expect("run");
    (r, e.description().to_string())
}

fn err(model: f64, reference: f64) -> String {
    format!("{:+.1}%", (model / reference - 1.0) * 100.0)
}

fn main() {
    let cat = Catalog::builtin().expect("catalog");
    println!("| reference | measured | model | error |\n|---|---|---|---|");
    let qwen = cfg("H100-SXM", "Qwen3-32B", WeightDtype::Bf16, 2, "vllm");
    let (r, d1) = measure(&cat, &qwen, &ClosedLoop::new(32, 320, 1024, 1024));
    println!(
        "| Qwen3-32B BF16, H100 TP2, vLLM, 1024/1024, c=32: TTFT | 236.8 ms | {:.1} ms | {} |",
        r.mean_ttft * 1e3,
        err(r.mean_ttft * 1e3, 236.8)
    );
    println!(
        "| Qwen3-32B BF16, H100 TP2, vLLM, 1024/1024, c=32: TPOT | 20.06 ms | {:.2} ms | {} |",
        r.mean_tpot * 1e3,
        err(r.mean_tpot * 1e3, 20.06)
    );
    let ds = cfg("H200", "DeepSeek-V3", WeightDtype::Fp8, 8, "sglang");
    let (r, d2) = measure(&cat, &ds, &ClosedLoop::new(16, 160, 1024, 1024));
    println!(
        "| DeepSeek-V3 FP8, H200 TP8, SGLang, 1024/1024, c=16: TTFT | 285.9 ms | {:.1} ms | {} |",
        r.mean_ttft * 1e3,
        err(r.mean_ttft * 1e3, 285.9)
    );
    println!(
        "| DeepSeek-V3 FP8, H200 TP8, SGLang, 1024/1024, c=16: TPOT | 16.63 ms | {:.2} ms | {} |",
        r.mean_tpot * 1e3,
        err(r.mean_tpot * 1e3, 16.63)
    );
    let mut descs = vec![d1, d2];
    for (gpu, model, name, reference) in [
        (
            "H100-SXM",
            "Llama-3.1-8B",
            "Llama-3.1-8B FP8, 1x H100",
            15_220.0,
        ),
        (
            "H200",
            "Llama-3.1-8B",
            "Llama-3.1-8B FP8, 1x H200",
            17_744.0,
        ),
        (
            "H200",
            "Llama-3.1-70B",
            "Llama-3.3-70B FP8, 1x H200",
            2_909.0,
        ),
    ] {
        let c = EngineConfig {
            kv_dtype: KvDtype::Fp8,
            max_num_seqs: Some(2048),
            ..cfg(gpu, model, WeightDtype::Fp8, 1, "trtllm")
        };
        let (r, d) = measure(&cat, &c, &ClosedLoop::new(3000, 3000, 1000, 1000));
        println!(
            "| {name}, TensorRT-LLM, 1000/1000 max throughput | {reference:.0} tok/s | {:.0} tok/s | {} |",
            r.output_throughput,
            err(r.output_throughput, reference)
        );
        descs.push(d);
    }
    println!();
    for d in &descs {
        println!("- {d}");
    }

    println!(
        "\nFurther references (DeepSeek-V3 B200 TPOT calibrates trtllm moe_efficiency; the rest are out-of-sample):"
    );
    println!("| reference | measured | model | error |\n|---|---|---|---|");
    let oos: Vec<(&str, EngineConfig, ClosedLoop, f64, f64)> = vec![
        (
            "Qwen3-32B BF16, H100 TP2, SGLang, 1024/128, c=64",
            cfg("H100-SXM", "Qwen3-32B", WeightDtype::Bf16, 2, "sglang"),
            ClosedLoop::new(64, 640, 1024, 128),
            2530.0,
            30.1,
        ),
        (
            "Qwen3-32B FP8, H100 TP1, TensorRT-LLM, 1024/128, c=32",
            cfg("H100-SXM", "Qwen3-32B", WeightDtype::Fp8, 1, "trtllm"),
            ClosedLoop::new(32, 320, 1024, 128),
            357.0,
            36.2,
        ),
        (
            "DeepSeek-V3 FP8, B200 TP8, TensorRT-LLM, 1024/8192, c=32",
            EngineConfig {
                kv_dtype: KvDtype::Fp8,
                ..cfg("B200", "DeepSeek-V3", WeightDtype::Fp8, 8, "trtllm")
            },
            ClosedLoop::new(32, 64, 1024, 8192),
            262.0,
            16.4,
        ),
    ];
    for (name, c, w, ttft, tpot) in &oos {
        let (r, _) = measure(&cat, c, w);
        println!(
            "| {name}: TTFT | {ttft} ms | {:.1} ms | {} |",
            r.mean_ttft * 1e3,
            err(r.mean_ttft * 1e3, *ttft)
        );
        println!(
            "| {name}: TPOT | {tpot} ms | {:.2} ms | {} |",
            r.mean_tpot * 1e3,
            err(r.mean_tpot * 1e3, *tpot)
        );
    }
    for (gpu, model, w, tp, name, reference) in [
        (
            "H100-SXM",
            "Llama-3.1-70B",
            WeightDtype::Fp8,
            2,
            "Llama-3.3-70B FP8, H100 TP2",
            4_205.0,
        ),
        (
            "B200",
            "Llama-3.1-70B",
            WeightDtype::Nvfp4,
            1,
            "Llama-3.3-70B NVFP4, 1x B200",
            7_007.0,
        ),
    ] {
        let c = EngineConfig {
            kv_dtype: KvDtype::Fp8,
            max_num_seqs: Some(2048),
            ..cfg(gpu, model, w, tp, "trtllm")
        };
        let (r, _) = measure(&cat, &c, &ClosedLoop::new(3000, 3000, 1000, 1000));
        println!(
            "| {name}, TensorRT-LLM, 1000/1000 max throughput | {reference:.0} tok/s | {:.0} tok/s | {} |",
            r.output_throughput,
            err(r.output_throughput, reference)
        );
    }

    println!(
        "\nSensitivity of the Qwen3-32B vLLM reference, textbook closed loop (TTFT ms / TPOT ms):"
    );
    println!("| budget | turnaround 0 | 0-40 ms | 0-2 s |\n|---|---|---|---|");
    for budget in [2048u32, 4096, 8192] {
        let mut row = format!("| {budget} |");
        for t in [0.0, 0.04, 2.0] {
            let c = EngineConfig {
                max_num_batched_tokens: Some(budget),
                ..qwen.clone()
            };
            let mut w = ClosedLoop::new(32, 320, 1024, 1024);
            w.turnaround = (0.0, t);
            let (r, _) = measure_lockstep(&cat, &c, &w);
            row += &format!(" {:.0} / {:.2} |", r.mean_ttft * 1e3, r.mean_tpot * 1e3);
        }
        println!("{row}");
    }
    println!(
        "\nSensitivity of the DeepSeek-V3 SGLang reference, textbook closed loop (TTFT ms / TPOT ms):"
    );
    println!("| turnaround 0 | 0-40 ms | 0-2 s |\n|---|---|---|");
    let mut row = "|".to_string();
    for t in [0.0, 0.04, 2.0] {
        let mut w = ClosedLoop::new(16, 160, 1024, 1024);
        w.turnaround = (0.0, t);
        let (r, _) = measure_lockstep(&cat, &ds, &w);
        row += &format!(" {:.0} / {:.2} |", r.mean_ttft * 1e3, r.mean_tpot * 1e3);
    }
    println!("{row}");

    println!("\nSeed deployments:");
    let seeds = [
        cfg("H200", "Qwen3-32B", WeightDtype::Bf16, 2, "vllm"),
        EngineConfig {
            dp: 8,
            ep: 8,
            kv_dtype: KvDtype::Fp8,
            ..cfg("GB200", "DeepSeek-V3.2", WeightDtype::Nvfp4, 1, "trtllm")
        },
    ];
    for c in &seeds {
        let e = Engine::new(&cat, c).expect("seed");
        println!("- {}", e.description());
        let ranks = e.dp_ranks() as usize;
        for (batch, ctx) in [(1u32, 1_000u64), (32, 12_000), (128, 12_000)] {
            let per_rank = batch.div_ceil(ranks as u32).max(1);
            let shape = BatchShape {
                decode_seqs: per_rank,
                decode_ctx: per_rank as u64 * ctx,
                decode_ctx_clipped: per_rank as u64 * ctx.min(2048),
                logits: per_rank,
                ..Default::default()
            };
            let shapes = vec![shape; ranks];
            println!(
                "  decode step, {per_rank} seqs/rank at {ctx} context: {:.2} ms",
                e.step_time(&shapes) * 1e3
            );
        }
        let mut p = BatchShape::default();
        let k = if c.model.contains("3.2") {
            2048
        } else {
            u64::MAX
        };
        p.add_chunk(0, 8192, k, true);
        let mut shapes = vec![BatchShape::default(); ranks];
        shapes[0] = p;
        println!(
            "  one 8192-token prefill chunk (one rank): {:.1} ms",
            e.step_time(&shapes) * 1e3
        );
        let mut p = BatchShape::default();
        p.add_chunk(100_000, 8192, k, false);
        shapes[0] = p;
        println!(
            "  an 8192-token chunk on top of 100k cached tokens: {:.1} ms",
            e.step_time(&shapes) * 1e3
        );
    }
}
