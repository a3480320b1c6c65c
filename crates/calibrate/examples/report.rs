//! Prints the silicon-sample tables of docs/calibration.md (train and test parts, skip counts).
//!
//! `cargo run --release -p switchyard-calibrate --example report`
//! Optional: `-- --rows N` (first N rows only, for a quick look), `-- --csv FILE` (per-row
//! predictions as CSV), `-- --why` (the rows the model refused or thrashed on, to stderr),
//! `-- --bounds FILE` (write the gate's bounds for the current errors), `-- --aic FILE`
//! (AIConfigurator's predictions, from scripts/aic-estimate.sh: its error on the same rows).

use std::time::Instant;

use switchyard_calibrate::predict::{self, predict_all};
use switchyard_calibrate::report::{Evaluation, markdown, pct_error};
use switchyard_calibrate::silicon;
use switchyard_calibrate::split::{Part, part};
use switchyard_engine::Catalog;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let arg = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1).cloned())
    };
    let cat = Catalog::builtin().expect("catalog");
    let mut rows = silicon::bundled().expect("bundled silicon sample");
    if let Some(n) = arg("--rows") {
        rows.truncate(n.parse().expect("--rows N"));
    }
    if let Some(max) = arg("--max-seq-steps") {
        let max: u64 = max.parse().expect("--max-seq-steps N");
        rows.retain(|r| predict::case(&cat, r).map_or(true, |c| c.seq_steps() <= max));
    }
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let t0 = Instant::now();
    let preds = predict_all(&cat, &rows, threads);
    let secs = t0.elapsed().as_secs_f64();
    let name = |r: &silicon::SiliconRow| {
        cat.model(&r.model_path)
            .map(|m| m.name.clone())
            .unwrap_or_else(|_| r.model_path.clone())
    };
    let ev = Evaluation::new(&rows, &preds, name);
    if let Some(path) = arg("--csv") {
        let mut out = String::from(
            "id,part,system,backend,model,isl,osl,concurrency,ttft_ms,pred_ttft_ms,tpot_ms,pred_tpot_ms,ttft_err_pct,tpot_err_pct\n",
        );
        for (r, p) in rows.iter().zip(&preds) {
            if let Ok(p) = p {
                out.push_str(&format!(
                    "{},{},{},{},{},{},{},{},{:.3},{:.3},{:.4},{:.4},{:.1},{:.1}\n",
                    r.id,
                    part(r).name(),
                    r.system,
                    r.backend,
                    name(r),
                    r.isl,
                    r.osl,
                    r.concurrency.unwrap_or(0),
                    r.ttft_ms,
                    p.ttft_ms,
                    r.tpot_ms,
                    p.tpot_ms,
                    pct_error(p.ttft_ms, r.ttft_ms),
                    pct_error(p.tpot_ms, r.tpot_ms)
                ));
            }
        }
        std::fs::write(&path, out).expect("write --csv");
    }
    println!(
        "{} rows: {} compared, {} skipped ({:.1} s on {threads} threads, {} requests per client)\n",
        rows.len(),
        ev.compared,
        rows.len() - ev.compared,
        secs,
        predict::ROUNDS
    );
    println!("### Test part (never fitted on)\n");
    println!("{}", markdown(&ev, Part::Test));
    println!("### Training part\n");
    println!("{}", markdown(&ev, Part::Train));
    if args.iter().any(|a| a == "--why") {
        for (r, p) in rows.iter().zip(&preds) {
            if let Err(e @ (predict::Skip::Refused(_) | predict::Skip::Thrashing(_))) = p {
                eprintln!("{}: {e}", r.id);
            }
        }
    }
    if let Some(path) = arg("--bounds") {
        std::fs::write(&path, switchyard_calibrate::gate::bounds_toml(&ev))
            .expect("write --bounds");
    }
    if let Some(path) = arg("--aic") {
        let text = std::fs::read_to_string(&path).expect("read --aic");
        let peer = switchyard_calibrate::report::parse_peer(&text);
        println!("### Against AIConfigurator's estimator (test rows both predicted)\n");
        println!(
            "{}",
            switchyard_calibrate::report::peer_markdown(&rows, &preds, &peer)
        );
    }
    println!("### Rows not compared\n\n| reason | rows |\n|---|---|");
    for (k, n) in &ev.skipped {
        println!("| {k} | {n} |");
    }
}
