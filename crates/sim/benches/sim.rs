//! Whole-simulation throughput, so regressions in the engine, the index or the loop show up.
//!
//! `cargo bench -p switchyard-sim` (`-- ab` or `-- dsv32` for one group). Slices of the two
//! built-in recipes: the first 2,000 requests of the bundled Mooncake trace through both
//! default A/B deployments, and the first 1,000 requests of the dsv32 recipe's synthesized
//! trace through its disaggregated KV-aware deployment.

use std::path::{Path, PathBuf};
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use switchyard_engine::Catalog;
use switchyard_sim::{Deployment, RunOptions, simulate};
use switchyard_trace::{LoadOptions, SynthConfig, Trace};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn bundled(n: usize) -> Trace {
    let path = repo().join("data/mooncake_conversation.jsonl.gz");
    let mut t = switchyard_trace::load(&path, &LoadOptions::default())
        .expect("bundled trace")
        .trace;
    t.requests.truncate(n);
    t
}

fn deployment(recipe: &str, file: &str) -> Deployment {
    Deployment::load(&repo().join("recipes").join(recipe).join(file)).expect("deployment")
}

fn run(dep: &Deployment, cat: &Catalog, trace: &Trace) -> u64 {
    let out =
        simulate(dep, cat, trace, &RunOptions::default(), &mut |_, _| {}).expect("simulation");
    out.steps
}

fn ab(c: &mut Criterion) {
    let cat = Catalog::builtin().expect("catalog");
    let trace = bundled(2_000);
    let mut g = c.benchmark_group("ab_qwen3_32b_2000_requests");
    g.sample_size(10).measurement_time(Duration::from_secs(10));
    g.throughput(Throughput::Elements(trace.requests.len() as u64));
    for file in ["agg-round-robin.toml", "disagg-kv.toml"] {
        let dep = deployment("qwen3-32b-h200", file);
        g.bench_function(dep.name.clone(), |b| b.iter(|| run(&dep, &cat, &trace)));
    }
    g.finish();
}

fn dsv32(c: &mut Criterion) {
    let cat = Catalog::builtin().expect("catalog");
    // The recipe's synthesis (recipes/dsv32-gb200/recipe.toml), cut to its first requests.
    let cfg = SynthConfig {
        num_requests: Some(1_000),
        prefix_len_multiplier: 16.0,
        prompt_len_multiplier: 10.0,
        max_isl: Some(110_000),
        seed: 0,
        ..SynthConfig::default()
    };
    let (trace, _) = switchyard_trace::synthesize(&bundled(usize::MAX), &cfg).expect("synthesis");
    let dep = deployment("dsv32-gb200", "disagg-kv.toml");
    let mut g = c.benchmark_group("dsv32_gb200_1000_requests");
    g.sample_size(10).measurement_time(Duration::from_secs(10));
    g.throughput(Throughput::Elements(trace.requests.len() as u64));
    g.bench_function(dep.name.clone(), |b| b.iter(|| run(&dep, &cat, &trace)));
    g.finish();
}

criterion_group!(benches, ab, dsv32);
criterion_main!(benches);
