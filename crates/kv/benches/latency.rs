//! Per-call latency distribution (p50 / p99) of the overlap query and of hashing, and the
//! ingestion rate, on the same realistic index as the criterion benches. Criterion reports
//! means; the targets are percentiles. Run:
//! `cargo bench -p switchyard-kv --bench latency`.

use std::hint::black_box;
use std::time::Instant;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use switchyard_kv::{BlockHasher, Overlaps};

mod common;
use common::*;

/// On-CPU nanoseconds of this thread (Linux schedstat), so that time spent preempted by other
/// processes on a shared machine is not counted. `None` elsewhere.
fn cpu_ns() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    s.split_whitespace().next()?.parse().ok()
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    v[((v.len() - 1) as f64 * p).round() as usize]
}

fn report(name: &str, mut ns: Vec<f64>) {
    let (p50, p99, min) = (pct(&mut ns, 0.5), pct(&mut ns, 0.99), ns[0]);
    println!(
        "{name:<44} p50 {:>8.2} µs   p99 {:>8.2} µs   min {:>8.2} µs",
        p50 / 1e3,
        p99 / 1e3,
        min / 1e3
    );
}

fn main() {
    // `cargo bench` passes `--bench`; ignore arguments.
    let (mut idx, req) = setup();
    println!(
        "index: {} blocks, {} memberships, {:.1} MiB ({:.0} B/block)",
        idx.num_blocks(),
        idx.num_memberships(),
        idx.memory_bytes() as f64 / (1 << 20) as f64,
        idx.memory_bytes() as f64 / idx.num_blocks() as f64
    );
    let mut out = Overlaps::new();
    let mut ns = Vec::with_capacity(20_000);
    for _ in 0..20_000 {
        let t = Instant::now();
        idx.find_matches(black_box(&req), &mut out);
        ns.push(t.elapsed().as_nanos() as f64);
    }
    assert_eq!(out.max() as usize, DEEPEST);
    report("find_matches (2,048 blocks, 30 holders)", ns);

    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let toks: Vec<u32> = (0..32_768).map(|_| rng.random_range(0..150_000)).collect();
    let h = BlockHasher::new(16).unwrap();
    let mut hashes = Vec::with_capacity(2048);
    let mut ns = Vec::with_capacity(20_000);
    for _ in 0..20_000 {
        let t = Instant::now();
        h.hash_into(black_box(&toks), &mut hashes);
        ns.push(t.elapsed().as_nanos() as f64);
    }
    report("hash 32,768 tokens (block size 16)", ns);

    let (stores, removes, blocks) = churn_events();
    let mut rates = Vec::new();
    let mut cpu_rates = Vec::new();
    for _ in 0..30 {
        let t = Instant::now();
        let c0 = cpu_ns();
        for (w, e) in &stores {
            idx.apply_event(*w, e);
        }
        for (w, e) in &removes {
            idx.apply_event(*w, e);
        }
        rates.push(blocks as f64 / t.elapsed().as_secs_f64() / 1e6);
        if let (Some(a), Some(b)) = (c0, cpu_ns()) {
            cpu_rates.push(blocks as f64 / ((b - a) as f64 / 1e9) / 1e6);
        }
    }
    cpu_rates.sort_by(f64::total_cmp);
    if !cpu_rates.is_empty() {
        println!(
            "ingest one event at a time, on-CPU time     median {:.1} M blocks/s",
            cpu_rates[cpu_rates.len() / 2]
        );
    }
    rates.sort_by(f64::total_cmp);
    let (one_med, one_best) = (rates[rates.len() / 2], rates[rates.len() - 1]);
    let mut rates = Vec::new();
    for _ in 0..30 {
        let t = Instant::now();
        idx.apply_events(&stores);
        idx.apply_events(&removes);
        rates.push(blocks as f64 / t.elapsed().as_secs_f64() / 1e6);
    }
    rates.sort_by(f64::total_cmp);
    println!(
        "ingest one event at a time (apply_event)    median {one_med:.1} M blocks/s   best {one_best:.1} M blocks/s"
    );
    println!(
        "ingest batched (apply_events)               median {:.1} M blocks/s   best {:.1} M blocks/s",
        rates[rates.len() / 2],
        rates[rates.len() - 1]
    );
    idx.check_invariants().unwrap();
}
