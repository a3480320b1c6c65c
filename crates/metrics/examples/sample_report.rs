//! Render the reports for two synthetic runs (an A/B comparison) and one single run.
//!
//! `cargo run -p switchyard-metrics --example sample_report -- /tmp` writes
//! `report.html` (A vs B), `report-single.html` and prints the text reports.

#[path = "../tests/sample/mod.rs"]
mod sample;

use switchyard_metrics::{
    ReportRun, RequestRecord, Status, Summary, SummaryOptions, render_compact_table,
    render_comparison, render_html, render_vllm_report,
};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::args().nth(1).unwrap_or_else(|| "/tmp".into());
    let a = sample::run(3000, 5.0, &sample::agg(), 1);
    let b = sample::run(3000, 5.0, &sample::disagg(), 1);
    let slo = Some("ttft:2000,itl:25".parse()?);
    let mut sa = Summary::from_records(
        &a,
        &SummaryOptions {
            label: "agg-round-robin".into(),
            slo: slo.clone(),
            span: None,
        },
    )?;
    sa.gpu_busy_fraction = Some(0.62);
    let mut sb = Summary::from_records(
        &b,
        &SummaryOptions {
            label: "disagg-kv".into(),
            slo,
            span: None,
        },
    )?;
    sb.gpu_busy_fraction = Some(0.55);
    let workers_a: Vec<String> = (0..8).map(|i| format!("agg-{i}")).collect();
    let workers_b: Vec<String> = (0..6)
        .map(|i| format!("prefill-{i}"))
        .chain((0..2).map(|i| format!("decode-{i}")))
        .collect();
    let wa: Vec<&str> = workers_a.iter().map(String::as_str).collect();
    let wb: Vec<&str> = workers_b.iter().map(String::as_str).collect();
    let ta = sample::series(&wa, 2, sa.start.unwrap_or(0.0), sa.end.unwrap_or(0.0));
    let tb = sample::series(&wb, 3, sb.start.unwrap_or(0.0), sb.end.unwrap_or(0.0));

    print!("{}", render_vllm_report(&sb, &[]));
    println!();
    print!("{}", render_compact_table(&sb));
    println!();
    print!("{}", render_comparison(&[&sa, &sb]));

    let html = render_html(
        "Switchyard lab ab: qwen3-32b-h200 (synthetic sample)",
        &[
            ReportRun {
                summary: &sa,
                records: &a,
                series: &ta,
            },
            ReportRun {
                summary: &sb,
                records: &b,
                series: &tb,
            },
        ],
    );
    std::fs::write(format!("{dir}/report.html"), html)?;
    let single = render_html(
        "Switchyard bench (synthetic sample)",
        &[ReportRun {
            summary: &sb,
            records: &b,
            series: &[],
        }],
    );
    std::fs::write(format!("{dir}/report-single.html"), single)?;
    std::fs::write(
        format!("{dir}/summary.json"),
        serde_json::to_string_pretty(&sb)?,
    )?;
    // A run where everything failed: every statistic must read "n/a", not 0 or NaN.
    let failed: Vec<RequestRecord> = (0..50u32)
        .map(|i| {
            let t = f64::from(i);
            RequestRecord::failed(
                u64::from(i),
                t,
                t + 30.0,
                1000,
                Status::error("timeout", "no response in 30 s"),
            )
        })
        .collect();
    let sf = Summary::from_records(
        &failed,
        &SummaryOptions {
            label: "all-failed".into(),
            slo: Some("ttft:2000".parse()?),
            span: None,
        },
    )?;
    print!("{}", render_vllm_report(&sf, &[]));
    let html = render_html(
        "All requests failed (sample)",
        &[ReportRun {
            summary: &sf,
            records: &failed,
            series: &[],
        }],
    );
    std::fs::write(format!("{dir}/report-failed.html"), html)?;
    eprintln!("wrote {dir}/report.html, {dir}/report-single.html, {dir}/summary.json");
    Ok(())
}
