//! Cost of one `PerfModel::step_time` call with and without the measured kernel curves
//! (same process, same load): `cargo run --release -p switchyard-engine --example stepcost`.

use std::hint::black_box;
use std::time::Instant;

use switchyard_engine::{BatchShape, Catalog, EngineConfig, PerfModel, WeightDtype};

fn main() {
    let cat = Catalog::builtin().expect("catalog");
    for (gpu, model, tp, w) in [
        ("H200", "Qwen3-32B", 2, WeightDtype::Bf16),
        ("H200", "DeepSeek-V3", 8, WeightDtype::Fp8),
    ] {
        let cfg = EngineConfig {
            gpu: gpu.into(),
            model: model.into(),
            tp,
            weight_dtype: w,
            ..EngineConfig::default()
        };
        let g = cat.gpu(gpu).unwrap();
        let m = cat.model(model).unwrap();
        let p = cat.engine(&cfg.engine).unwrap();
        for (name, k) in [("factors", None), ("kernel curves", cat.kernels(&g.name))] {
            let pm = PerfModel::new(g, m, &cfg, p, k);
            let mut shapes = Vec::new();
            for i in 0..64u64 {
                let mut b = BatchShape {
                    decode_seqs: 1 + (i % 200) as u32,
                    decode_ctx: 1000 * (1 + i % 200),
                    decode_ctx_clipped: 1000 * (1 + i % 200),
                    logits: 1 + (i % 200) as u32,
                    ..Default::default()
                };
                if i % 4 == 0 {
                    b.add_chunk(0, 512 * (1 + i % 16), u64::MAX, true);
                }
                shapes.push(b);
            }
            let n = 2_000_000;
            let t0 = Instant::now();
            let mut acc = 0.0;
            for i in 0..n {
                acc += pm.step_time(black_box(&shapes[i % 64..i % 64 + 1]));
            }
            let ns = t0.elapsed().as_nanos() as f64 / n as f64;
            println!("{model} {name}: {ns:.1} ns per step_time ({acc:.3})");
        }
    }
}
