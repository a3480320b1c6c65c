//! Statistics over 100k request records: the cost `lab` and `bench` pay once per run.

#[path = "../tests/sample/mod.rs"]
mod sample;

use criterion::{Criterion, criterion_group, criterion_main};
use std::hint::black_box;
use switchyard_metrics::{
    ChunkGaps, ReportRun, RequestRecord, Stats, Summary, SummaryOptions, render_html,
};

/// Live-like: every chunk gap distinct (one run per gap), `mean_out` tokens on average.
fn live_records(n: u64, mean_out: f64) -> Vec<RequestRecord> {
    let mut rng = sample::Rng::new(7);
    let mut t = 0.0;
    (0..n)
        .map(|id| {
            t += rng.exp(0.01);
            let ttft = rng.lognormal(0.3, 0.8);
            let out = 2 + rng.exp(mean_out - 2.0) as u32;
            let mut gaps = ChunkGaps::new();
            let mut last = t + ttft;
            for _ in 1..out {
                let g = 0.02 * (0.7 + 0.6 * rng.uniform());
                gaps.push(g);
                last += g;
            }
            let mut r = RequestRecord::ok(id, t, t + ttft, last, 2000, out);
            r.gaps = gaps;
            r
        })
        .collect()
}

/// Simulator-like: 343 tokens on average, decode steps of equal length in runs of ~16.
fn sim_records(n: u64) -> Vec<RequestRecord> {
    let mut rng = sample::Rng::new(8);
    let mut t = 0.0;
    (0..n)
        .map(|id| {
            t += rng.exp(0.3);
            let ttft = rng.lognormal(0.5, 0.9);
            let out = 2 + rng.exp(341.0) as u32;
            let mut gaps = ChunkGaps::new();
            let mut last = t + ttft;
            let mut left = out - 1;
            while left > 0 {
                let k = left.min(16);
                let g = 0.02 * (0.7 + 0.6 * rng.uniform());
                gaps.push_run(g, k);
                last += g * f64::from(k);
                left -= k;
            }
            let mut r = RequestRecord::ok(id, t, t + ttft, last, 12_000, out);
            r.gaps = gaps;
            r
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    let opts = SummaryOptions {
        label: "bench".into(),
        slo: Some("ttft:2000,itl:25".parse().expect("valid SLO")),
        span: None,
    };
    // The Mooncake conversation trace's shape: 12,031 requests, 343 output tokens on average,
    // every gap distinct (the worst case for a simulated run).
    let trace = live_records(12_031, 343.0);
    let gaps: usize = trace.iter().map(|r| r.gaps.len()).sum();
    eprintln!("trace-like: 12,031 records, {gaps} distinct gaps");
    c.bench_function("summary_12k_trace_like_records", |b| {
        b.iter(|| Summary::from_records(black_box(&trace), &opts).expect("valid"))
    });
    let summary = Summary::from_records(&trace, &opts).expect("valid");
    c.bench_function("render_html_2x12k_records", |b| {
        b.iter(|| {
            let run = ReportRun {
                summary: &summary,
                records: &trace,
                series: &[],
            };
            render_html("bench", black_box(&[run, run]))
        })
    });
    drop(trace);
    let live = live_records(100_000, 64.0);
    let gaps: usize = live.iter().map(|r| r.gaps.len()).sum();
    eprintln!("live: 100k records, {gaps} chunk gaps");
    c.bench_function("summary_100k_live_records", |b| {
        b.iter(|| Summary::from_records(black_box(&live), &opts).expect("valid"))
    });
    drop(live);
    let sim = sim_records(100_000);
    let gaps: usize = sim.iter().map(|r| r.gaps.len()).sum();
    eprintln!("sim: 100k records, {gaps} token gaps");
    c.bench_function("summary_100k_sim_records", |b| {
        b.iter(|| Summary::from_records(black_box(&sim), &opts).expect("valid"))
    });
    let ttfts: Vec<f64> = sim.iter().filter_map(|r| r.ttft()).collect();
    c.bench_function("stats_100k_values", |b| {
        b.iter(|| Stats::from_slice(black_box(&ttfts)))
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(10);
    targets = bench
}
criterion_main!(benches);
