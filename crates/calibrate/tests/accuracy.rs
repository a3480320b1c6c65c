//! The accuracy gate (docs/calibration.md): runs the engine model on the test part of the
//! measured silicon sample and fails if any gated cell's median |error| exceeds its bound in
//! data/calibration/bounds.toml.

use switchyard_calibrate::predict::predict_all;
use switchyard_calibrate::report::{Evaluation, stats};
use switchyard_calibrate::silicon;
use switchyard_calibrate::split::{Part, part};
use switchyard_engine::Catalog;

#[derive(serde::Deserialize)]
struct Bounds {
    all: Pair,
    cell: Vec<Cell>,
}

#[derive(serde::Deserialize)]
struct Pair {
    ttft: f64,
    tpot: f64,
}

#[derive(serde::Deserialize)]
struct Cell {
    system: String,
    backend: String,
    model: String,
    ttft: f64,
    tpot: f64,
}

#[test]
fn test_split_errors_stay_within_recorded_bounds() {
    let text = include_str!("../../../data/calibration/bounds.toml");
    let bounds: Bounds = toml::from_str(text).expect("data/calibration/bounds.toml parses");
    let cat = Catalog::builtin().unwrap();
    let rows: Vec<_> = silicon::bundled()
        .unwrap()
        .into_iter()
        .filter(|r| part(r) == Part::Test)
        .collect();
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let preds = predict_all(&cat, &rows, threads);
    let ev = Evaluation::new(&rows, &preds, |r| {
        cat.model(&r.model_path)
            .map(|m| m.name.clone())
            .unwrap_or_default()
    });
    let mut failures = Vec::new();
    let check = |failures: &mut Vec<String>, what: String, got: f64, bound: f64| {
        eprintln!("{what}: median |err| {got:.1}% (bound {bound}%)");
        if got.is_nan() || got > bound {
            failures.push(format!("{what}: {got:.1}% > {bound}%"));
        }
    };
    let all = ev.overall(Part::Test);
    check(
        &mut failures,
        "all TTFT".into(),
        stats(&all.ttft).median_abs,
        bounds.all.ttft,
    );
    check(
        &mut failures,
        "all TPOT".into(),
        stats(&all.tpot).median_abs,
        bounds.all.tpot,
    );
    assert!(!bounds.cell.is_empty(), "no gated cells in bounds.toml");
    for b in &bounds.cell {
        let key = ev.cells.iter().find(|((p, k), _)| {
            *p == Part::Test && k.system == b.system && k.backend == b.backend && k.model == b.model
        });
        let Some((_, e)) = key else {
            failures.push(format!(
                "{} {} {}: gated cell has no compared test rows any more",
                b.system, b.backend, b.model
            ));
            continue;
        };
        let name = format!("{} {} {}", b.system, b.backend, b.model);
        check(
            &mut failures,
            format!("{name} TTFT"),
            stats(&e.ttft).median_abs,
            b.ttft,
        );
        check(
            &mut failures,
            format!("{name} TPOT"),
            stats(&e.tpot).median_abs,
            b.tpot,
        );
    }
    assert!(
        failures.is_empty(),
        "accuracy regressed:\n{}",
        failures.join("\n")
    );
}

/// The split is by configuration: no configuration has rows on both sides.
#[test]
fn split_keeps_each_configuration_on_one_side() {
    use std::collections::HashMap;
    let rows = silicon::bundled().unwrap();
    let mut side: HashMap<String, Part> = HashMap::new();
    for r in &rows {
        let p = part(r);
        let prev = side.insert(switchyard_calibrate::split::config_key(r), p);
        assert!(prev.is_none_or(|q| q == p), "{} split across parts", r.id);
    }
    let test = rows.iter().filter(|r| part(r) == Part::Test).count();
    let frac = test as f64 / rows.len() as f64;
    assert!((0.2..0.4).contains(&frac), "test fraction {frac}");
}

/// Bad input: a malformed CSV names the file and line.
#[test]
fn malformed_rows_are_reported_with_file_and_line() {
    let header = "id,system,backend,backend_version,model_path,precision,gemm_quant_mode,moe_quant_mode,isl,osl,concurrency,batch_size,tp,attention_dp,moe_tp,moe_ep,ttft_ms,tpot_ms";
    let good = "a,h200_sxm,vllm,0.12.0,Qwen/Qwen3-32B,,,,1024,1024,8,8,2,,,,100.0,10.0";
    let ok = silicon::parse(&format!("{header}\n{good}\n"), "x.csv").unwrap();
    assert_eq!(ok.len(), 1);
    assert_eq!(ok[0].tp, Some(2));
    let e = silicon::parse(
        &format!(
            "{header}\n{good}\n{}\n",
            good.replace("1024,1024", "1024,many")
        ),
        "x.csv",
    )
    .unwrap_err()
    .to_string();
    assert!(e.starts_with("x.csv:3:") && e.contains("osl"), "{e}");
    let e = silicon::parse(&format!("{header}\na,b\n"), "x.csv")
        .unwrap_err()
        .to_string();
    assert!(e.starts_with("x.csv:2:"), "{e}");
    let e = silicon::parse("id,system\n", "x.csv")
        .unwrap_err()
        .to_string();
    assert!(e.contains("missing column"), "{e}");
    let e = silicon::parse(
        &format!("{header}\n{}\n", good.replace("100.0", "-1")),
        "x.csv",
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("ttft_ms"), "{e}");
}

/// Every row with a catalog GPU and model either maps to a configuration or is skipped with
/// a reason; the mapping follows the documented choices.
#[test]
fn row_mapping_follows_the_documented_choices() {
    use switchyard_calibrate::predict::{Skip, case};
    use switchyard_engine::{KvDtype, WeightDtype};
    let cat = Catalog::builtin().unwrap();
    let header = "id,system,backend,backend_version,model_path,precision,gemm_quant_mode,moe_quant_mode,isl,osl,concurrency,batch_size,tp,attention_dp,moe_tp,moe_ep,ttft_ms,tpot_ms";
    let row = |s: &str| {
        silicon::parse(&format!("{header}\n{s}\n"), "t")
            .unwrap()
            .remove(0)
    };
    let c = case(
        &cat,
        &row("a,h200_sxm,trtllm,1,deepseek-ai/DeepSeek-R1,fp8,fp8,fp8,1024,1024,64,8,1,8,1,8,1,1"),
    )
    .unwrap();
    assert_eq!((c.cfg.tp, c.cfg.dp, c.cfg.ep), (1, 8, 8));
    assert_eq!(c.cfg.max_num_seqs, Some(8));
    assert_eq!(
        (c.cfg.weight_dtype, c.cfg.kv_dtype),
        (WeightDtype::Fp8, KvDtype::Fp8)
    );
    assert_eq!(c.workload.clients, 64);
    let c = case(
        &cat,
        &row("a,h100_sxm,vllm,1,Qwen/Qwen3-32B,,,,1024,128,32,32,2,,,,1,1"),
    )
    .unwrap();
    assert_eq!(
        (c.cfg.weight_dtype, c.cfg.kv_dtype),
        (WeightDtype::Bf16, KvDtype::Bf16)
    );
    assert!(matches!(
        case(
            &cat,
            &row(
                "a,h200_sxm,trtllm,1,deepseek-ai/DeepSeek-R1,fp8,fp8,fp8,1024,1024,16,16,64,1,8,8,1,1"
            )
        ),
        Err(Skip::Parallelism(_))
    ));
    assert!(matches!(
        case(
            &cat,
            &row("a,h200_sxm,vllm,1,openai/gpt-oss-120b,fp4,nvfp4,nvfp4,1024,1024,8,8,8,,,,1,1")
        ),
        Err(Skip::Model(_))
    ));
    assert!(matches!(
        case(
            &cat,
            &row("a,h200_sxm,vllm,1,Qwen/Qwen3-32B,fp4,nvfp4,nvfp4,1024,1024,8,8,8,,,,1,1")
        ),
        Err(Skip::Quant(_))
    ));
    assert!(matches!(
        case(
            &cat,
            &row("a,b300_sxm,vllm,1,Qwen/Qwen3-32B,,,,1024,1024,8,8,8,,,,1,1")
        ),
        Err(Skip::Gpu(_))
    ));
}
