//! Hashing, trace mapping, overlap query and event ingestion at the realistic sizes:
//! 64 workers, ~1,000,000 blocks indexed, a 2,048-block request whose prefix is held by 30
//! workers to depths spread up to 1,920 blocks.

use std::hint::black_box;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use switchyard_kv::{BlockHasher, KvEvent, Overlaps, PrefixIndex, TraceBlockMapper, WorkerKey};

mod common;
use common::*;

fn bench_hash(c: &mut Criterion) {
    let mut g = c.benchmark_group("hash");
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let toks: Vec<u32> = (0..32_768).map(|_| rng.random_range(0..150_000)).collect();
    let h = BlockHasher::new(16).unwrap();
    let mut out = Vec::with_capacity(2048);
    g.throughput(Throughput::Elements(toks.len() as u64));
    g.bench_function("tokens_32768_bs16", |b| {
        b.iter(|| {
            h.hash_into(black_box(&toks), &mut out);
            black_box(out.len())
        })
    });
    // A typical conversation-trace request: 24 ids (~12k tokens) -> 750 engine blocks.
    let ids: Vec<u64> = (0..24).map(|i| 1000 + i).collect();
    let m = TraceBlockMapper::new(16).unwrap();
    g.throughput(Throughput::Elements(m.num_blocks(ids.len(), 12_000) as u64));
    g.bench_function("trace_request_12k_tokens_bs16", |b| {
        b.iter(|| {
            m.map_into(black_box(&ids), 12_000, &mut out);
            black_box(out.len())
        })
    });
    g.finish();
}

fn bench_index(c: &mut Criterion) {
    let (mut idx, req) = setup();
    eprintln!(
        "index: {} blocks, {} memberships, {:.1} MiB",
        idx.num_blocks(),
        idx.num_memberships(),
        idx.memory_bytes() as f64 / (1 << 20) as f64
    );
    let mut out = Overlaps::new();
    idx.find_matches(&req, &mut out);
    assert_eq!(
        out.len(),
        HOLDERS
            + out
                .iter()
                .filter(|(w, _)| w.worker % 2 == 1 || w.worker >= 60)
                .count()
    );
    assert_eq!(out.max() as usize, DEEPEST);

    let mut g = c.benchmark_group("index");
    g.bench_function("find_matches_2048_blocks_1M_indexed", |b| {
        b.iter(|| {
            idx.find_matches(black_box(&req), &mut out);
            black_box(out.len())
        })
    });

    // Ingestion: store a batch of fresh 32-block chains (some continuing the request's prefix),
    // then remove them again, so the index stays at ~1M blocks across iterations.
    let (stores, removes, blocks) = churn_events();
    g.throughput(Throughput::Elements(blocks));
    g.bench_function("ingest_store_then_remove_65k_blocks", |b| {
        b.iter(|| {
            for (w, e) in &stores {
                idx.apply_event(*w, e);
            }
            for (w, e) in &removes {
                idx.apply_event(*w, e);
            }
        })
    });
    // Store-only into a fresh index (no removal work): pure insertion rate.
    let fresh_events: Vec<(WorkerKey, KvEvent)> = stores.clone();
    g.throughput(Throughput::Elements(blocks / 2));
    g.bench_function("ingest_store_only_fresh_index_32k_blocks", |b| {
        b.iter_batched(
            || PrefixIndex::with_capacity(70_000),
            |mut fresh| {
                for (w, e) in &fresh_events {
                    fresh.apply_event(*w, e);
                }
                fresh
            },
            BatchSize::LargeInput,
        )
    });
    g.finish();
}

criterion_group!(benches, bench_hash, bench_index);
criterion_main!(benches);
