//! Fidelity against published measurements (closed loop, fixed lengths), within ±15% unless a
//! test says why not (`within_tol`). Since the step model takes GEMM, fused-MoE, all-reduce and
//! decode-attention costs from measured kernel tables and is checked against the 3,619-row
//! silicon sample (crates/calibrate, docs/calibration.md), these hand-picked points are no
//! longer what the profiles are tuned on; the wider tolerances below record where the
//! measured kernels disagree with them.
//! The same runs are tabulated in docs/calibration.md
//! (`cargo run --release -p switchyard-engine --example calibrate`).

use switchyard_engine::closed_loop::{ClosedLoop, ClosedLoopResult, run};
use switchyard_engine::{Catalog, Engine, EngineConfig, KvDtype, WeightDtype};

const TOL: f64 = 0.15;

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

fn measure(c: &EngineConfig, w: ClosedLoop) -> ClosedLoopResult {
    let cat = Catalog::builtin().unwrap();
    let mut e = Engine::new(&cat, c).unwrap();
    let r = run(&mut e, &w).unwrap();
    e.check_invariants().unwrap();
    println!("{}\n  {r:?}", e.description());
    r
}

/// A latency benchmark in steady state (warm-up wave not counted, clients out of phase), as
/// the silicon-sample calibration runs them.
fn measure_steady(c: &EngineConfig, w: ClosedLoop) -> ClosedLoopResult {
    let cat = Catalog::builtin().unwrap();
    let mut e = Engine::new(&cat, c).unwrap();
    let w = w.steady(&e);
    let r = run(&mut e, &w).unwrap();
    e.check_invariants().unwrap();
    println!("{}\n  {r:?}", e.description());
    r
}

fn within(what: &str, model: f64, reference: f64) {
    within_tol(what, model, reference, TOL)
}

fn within_tol(what: &str, model: f64, reference: f64, tol: f64) {
    let err = model / reference - 1.0;
    println!(
        "{what}: model {model:.3} vs reference {reference:.3} ({:+.1}%)",
        err * 100.0
    );
    assert!(
        err.abs() <= tol,
        "{what}: model {model:.4} vs reference {reference:.4} ({:+.1}%)",
        err * 100.0
    );
}

/// Qwen3-32B BF16, H100 TP2, vLLM 0.12, 1024/1024, 32 concurrent: TTFT 236.8 ms, TPOT 20.06 ms.
#[test]
fn qwen3_32b_h100_tp2_vllm() {
    // In steady state (clients out of phase) the prefill budget no longer matters here: each
    // step carries about one prompt. vLLM's own default.
    let c = cfg("H100-SXM", "Qwen3-32B", WeightDtype::Bf16, 2, "vllm");
    let r = measure_steady(&c, ClosedLoop::new(32, 320, 1024, 1024));
    // -34% (157 ms): the same bias as the silicon sample's H100 vLLM Qwen3-32B cell (-30%
    // on the training part), whose best request overhead would be ~190 ms where the
    // vLLM-wide fit is 100 ms. Recorded, not tuned away.
    within_tol("TTFT", r.mean_ttft * 1e3, 236.8, 0.40);
    within("TPOT", r.mean_tpot * 1e3, 20.06);
}

/// DeepSeek-V3 FP8, H200 TP8, SGLang 0.5.9, 1024/1024, 16 concurrent: TTFT 285.9, TPOT 16.63 ms.
#[test]
fn deepseek_v3_h200_tp8_sglang() {
    let c = cfg("H200", "DeepSeek-V3", WeightDtype::Fp8, 8, "sglang");
    let r = measure_steady(&c, ClosedLoop::new(16, 160, 1024, 1024));
    within("TTFT", r.mean_ttft * 1e3, 285.9);
    within("TPOT", r.mean_tpot * 1e3, 16.63);
}

fn trtllm_max_throughput(gpu: &str, model: &str) -> f64 {
    // trtllm-bench queues every request at once; FP8 weights and FP8 KV cache.
    let c = EngineConfig {
        kv_dtype: KvDtype::Fp8,
        max_num_seqs: Some(2048),
        ..cfg(gpu, model, WeightDtype::Fp8, 1, "trtllm")
    };
    measure(&c, ClosedLoop::new(3000, 3000, 1000, 1000)).output_throughput
}

/// TensorRT-LLM max throughput, 1000/1000, Llama-3.1-8B FP8 on one H100: 15,220 output tok/s.
/// The model is ~17% low: at the ~500-sequence decode batches of this run the measured
/// TensorRT-LLM FP8 GEMMs for Llama-8B's shapes reach only 32-37% of peak (AIConfigurator's
/// table), where the old single factor assumed 60%.
#[test]
fn llama_8b_h100_trtllm_throughput() {
    within_tol(
        "output tok/s",
        trtllm_max_throughput("H100-SXM", "Llama-3.1-8B"),
        15_220.0,
        0.20,
    );
}

/// Same on one H200: 17,744 output tok/s.
#[test]
fn llama_8b_h200_trtllm_throughput() {
    within(
        "output tok/s",
        trtllm_max_throughput("H200", "Llama-3.1-8B"),
        17_744.0,
    );
}

/// Llama-3.3-70B (Llama-3.1-70B shape) FP8 on one H200: 2,909 output tok/s. ~24% low, for the
/// same reason as the 8B run on H100 (measured FP8 GEMM efficiency at these batch sizes).
#[test]
fn llama_70b_h200_trtllm_throughput() {
    within_tol(
        "output tok/s",
        trtllm_max_throughput("H200", "Llama-3.1-70B"),
        2_909.0,
        0.28,
    );
}

/// DeepSeek-V3 FP8, B200 TP8, TensorRT-LLM, 1024/8192, 32 concurrent: TPOT 16.4 ms. Calibrates
/// the TensorRT-LLM profile's MoE kernel efficiency (the seed's DeepSeek-V3.2 path). Its TTFT
/// (262 ms) is not matched: see docs/calibration.md.
#[test]
fn deepseek_v3_b200_tp8_trtllm_tpot() {
    let c = EngineConfig {
        kv_dtype: KvDtype::Fp8,
        ..cfg("B200", "DeepSeek-V3", WeightDtype::Fp8, 8, "trtllm")
    };
    let r = measure(&c, ClosedLoop::new(32, 64, 1024, 8192));
    within("TPOT", r.mean_tpot * 1e3, 16.4);
}
