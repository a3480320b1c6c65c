//! `switchyard report DIR [DIR...]`: re-render or compare saved `lab` and `bench` runs.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::Args;
use switchyard_metrics::{ReportRun, RequestRecord, Slo, Summary, SummaryOptions, TimeSeries};

pub const REPORT_HELP: &str = "\
Re-render or compare saved runs. Each DIR is a results folder written by `switchyard bench --out`
(one run: requests.jsonl) or by `switchyard lab ab` (two runs: requests-a.jsonl and
requests-b.jsonl). Every statistic is recomputed from the per-request records with the metrics
crate, so a live benchmark and a simulation compare with identical definitions. Prints the
side-by-side table (ratios against the first run) and writes one HTML report with all runs.

Examples:
  switchyard report results/ab-qwen3-32b-h200
  switchyard report runs/live-disagg results/ab-qwen3-32b-h200 --goodput ttft:2000,itl:25";

#[derive(Args)]
pub struct ReportArgs {
    /// Results folders (bench --out, lab ab -o).
    #[arg(required = true)]
    pub dirs: Vec<PathBuf>,
    /// SLOs for goodput, overriding the saved ones (e.g. `ttft:2000,itl:25`).
    #[arg(long)]
    pub goodput: Option<String>,
    /// HTML report to write.
    #[arg(long, short = 'o', default_value = "switchyard-report.html")]
    pub out: PathBuf,
}

/// One run loaded from disk.
struct Loaded {
    label: String,
    records: Vec<RequestRecord>,
    series: Vec<TimeSeries>,
    slo: Option<Slo>,
    gpu_busy: Option<f64>,
    /// What was replayed: the trace (`lab`: its hash; `bench`: its path — only runs of the same
    /// tool are compared on it) and the speedup, when saved.
    trace: Option<(&'static str, String)>,
    speedup: Option<f64>,
}

fn read(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("{}: cannot read", path.display()))
}

fn records(path: &Path) -> Result<Vec<RequestRecord>> {
    switchyard_metrics::parse_records_jsonl(&read(path)?)
        .with_context(|| format!("{}", path.display()))
}

fn series(path: &Path) -> Result<Vec<TimeSeries>> {
    if !path.exists() {
        return Ok(Vec::new());
    }
    serde_json::from_str(&read(path)?).with_context(|| format!("{}", path.display()))
}

fn slo_of(v: &serde_json::Value) -> Option<Slo> {
    v.as_str().and_then(|s| s.parse().ok())
}

fn load_dir(dir: &Path) -> Result<Vec<Loaded>> {
    let summary: serde_json::Value = match read(&dir.join("summary.json")) {
        Ok(text) => serde_json::from_str(&text)
            .with_context(|| format!("{}/summary.json", dir.display()))?,
        Err(_) => serde_json::Value::Null,
    };
    let dir_name = dir
        .file_name()
        .map_or("run".into(), |n| n.to_string_lossy().into_owned());
    if dir.join("requests.jsonl").exists() {
        let s = &summary["summary"];
        return Ok(vec![Loaded {
            label: s["label"]
                .as_str()
                .filter(|l| !l.is_empty())
                .unwrap_or(&dir_name)
                .to_string(),
            records: records(&dir.join("requests.jsonl"))?,
            series: series(&dir.join("series.json"))?,
            slo: slo_of(&s["goodput"]["slo"]),
            gpu_busy: s["gpu_busy_fraction"].as_f64(),
            trace: summary["config"]["trace"]
                .as_str()
                .map(|t| ("bench", t.to_string())),
            speedup: summary["config"]["speedup"].as_f64(),
        }]);
    }
    if dir.join("requests-a.jsonl").exists() {
        let mut out = Vec::new();
        for (i, key) in ["a", "b"].iter().enumerate() {
            let run = &summary["runs"][i];
            out.push(Loaded {
                label: run["name"].as_str().unwrap_or(key).to_string(),
                records: records(&dir.join(format!("requests-{key}.jsonl")))?,
                series: series(&dir.join(format!("series-{key}.json")))?,
                slo: slo_of(&summary["goodput"]),
                gpu_busy: run["summary"]["gpu_busy_fraction"].as_f64(),
                trace: summary["trace"]["hash"]
                    .as_str()
                    .map(|t| ("lab", t.to_string())),
                speedup: summary["speedup"].as_f64(),
            });
        }
        return Ok(out);
    }
    bail!(
        "{}: not a results folder (expected requests.jsonl from `bench --out`, or requests-a.jsonl and requests-b.jsonl from `lab ab`)",
        dir.display()
    )
}

/// Why the runs are not a like-for-like comparison (empty when they replayed the same
/// workload, as far as the saved folders tell): different request counts, traces or speedups.
fn workload_differences(runs: &[Loaded]) -> Vec<String> {
    let Some(first) = runs.first() else {
        return Vec::new();
    };
    let mut out = Vec::new();
    let differ = |f: &dyn Fn(&Loaded) -> Option<String>| -> Option<String> {
        let vals: Vec<(String, String)> = runs
            .iter()
            .filter_map(|r| f(r).map(|v| (r.label.clone(), v)))
            .collect();
        let distinct = vals.iter().any(|(_, v)| *v != vals[0].1);
        distinct.then(|| {
            vals.iter()
                .map(|(l, v)| format!("{l}: {v}"))
                .collect::<Vec<_>>()
                .join(", ")
        })
    };
    if let Some(d) = differ(&|r| Some(r.records.len().to_string())) {
        out.push(format!("the runs have different request counts ({d})"));
    }
    for kind in ["lab", "bench"] {
        let trace = |r: &Loaded| r.trace.clone().filter(|t| t.0 == kind).map(|t| t.1);
        if let Some(d) = differ(&trace) {
            out.push(format!("the {kind} runs replayed different traces ({d})"));
        }
    }
    if let Some(d) = differ(&|r| r.speedup.map(|x| format!("{x}x"))) {
        out.push(format!("the runs replayed at different speedups ({d})"));
    }
    if !out.is_empty() {
        out.push(format!(
            "ratios against {} compare different workloads, not deployments; re-run on the same trace, request count and speedup",
            first.label
        ));
    }
    out
}

pub fn run(args: ReportArgs) -> Result<()> {
    let override_slo: Option<Slo> = match &args.goodput {
        Some(s) => Some(s.parse().context("--goodput")?),
        None => None,
    };
    let mut runs = Vec::new();
    for d in &args.dirs {
        runs.extend(load_dir(d)?);
    }
    // Same label twice (two lab folders): qualify by position.
    for i in 0..runs.len() {
        if runs.iter().filter(|r| r.label == runs[i].label).count() > 1 {
            runs[i].label = format!("{}#{}", runs[i].label, i + 1);
        }
    }
    let summaries: Vec<Summary> = runs
        .iter()
        .map(|r| {
            let mut s = Summary::from_records(
                &r.records,
                &SummaryOptions {
                    label: r.label.clone(),
                    slo: override_slo.clone().or_else(|| r.slo.clone()),
                    span: None,
                },
            )?;
            s.gpu_busy_fraction = r.gpu_busy;
            Ok(s)
        })
        .collect::<Result<_>>()?;
    let refs: Vec<&Summary> = summaries.iter().collect();
    let warnings = workload_differences(&runs);
    for w in &warnings {
        eprintln!("warning: {w}");
    }
    if !warnings.is_empty() {
        println!(
            "WARNING: different workloads; the ratios and verdict below are not a like-for-like comparison.\n"
        );
    }
    if refs.len() == 1 {
        print!("{}", switchyard_metrics::render_compact_table(refs[0]));
    } else {
        print!("{}", switchyard_metrics::render_comparison(&refs));
    }
    let report_runs: Vec<ReportRun> = runs
        .iter()
        .zip(&summaries)
        .map(|(r, s)| ReportRun {
            summary: s,
            records: &r.records,
            series: &r.series,
        })
        .collect();
    let title = format!(
        "Switchyard report — {}",
        runs.iter()
            .map(|r| r.label.as_str())
            .collect::<Vec<_>>()
            .join(" vs ")
    );
    std::fs::write(
        &args.out,
        switchyard_metrics::render_html_with_warnings(&title, &[], &warnings, &report_runs),
    )
    .with_context(|| format!("{}: cannot write", args.out.display()))?;
    println!("\nwrote {}", args.out.display());
    Ok(())
}
