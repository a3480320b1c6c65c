//! A full KV-aware decision for a 32K-token prompt (hash 32,768 tokens + overlap query over a
//! ~1M-block index + cost over 64 workers), and the policies alone over 64 candidates.

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use switchyard_kv::{BlockHash, BlockHasher, KvEvent, WorkerKey};
use switchyard_route::{
    Candidate, LoadSnapshot, Policy, PolicyKind, RequestInfo, Router, RouterConfig, build_policy,
};

const WORKERS: u64 = 64;
const HOLDERS: usize = 30;
const DEEPEST: usize = 1920;

fn tokens(rng: &mut ChaCha8Rng, n: usize) -> Vec<u32> {
    (0..n).map(|_| rng.random_range(0..150_000)).collect()
}

fn populated_router() -> (Router, Vec<u32>, Vec<WorkerKey>) {
    let mut rng = ChaCha8Rng::seed_from_u64(42);
    let h = BlockHasher::new(16).unwrap();
    let prompt = tokens(&mut rng, 32_768);
    let req = h.hash(&prompt);
    let mut r = Router::new(RouterConfig::default()).unwrap();
    let workers: Vec<WorkerKey> = (0..WORKERS).map(|i| WorkerKey::new(i, 0)).collect();
    for k in 0..HOLDERS {
        let depth = 64 + (DEEPEST - 64) * k / (HOLDERS - 1);
        r.apply_event(
            workers[k * 2],
            &KvEvent::Stored {
                parent: None,
                blocks: req[..depth].to_vec(),
            },
        );
    }
    let mut i = 0u64;
    let mut out: Vec<BlockHash> = Vec::new();
    while r.index().exact().num_blocks() < 1_000_000 {
        h.hash_into(&tokens(&mut rng, 512 * 16), &mut out);
        r.apply_event(
            workers[(i % WORKERS) as usize],
            &KvEvent::Stored {
                parent: None,
                blocks: out.clone(),
            },
        );
        i += 1;
    }
    // Some load everywhere, so costs differ.
    for (j, &w) in workers.iter().enumerate() {
        for _ in 0..(j % 5) {
            let hs = h.hash(&tokens(&mut rng, 2048));
            let _ = r.route(&hs, 2048, &[w], 0.0).unwrap();
        }
    }
    (r, prompt, workers)
}

fn bench(c: &mut Criterion) {
    let (mut r, prompt, workers) = populated_router();
    let h = BlockHasher::new(16).unwrap();
    let mut hashes = Vec::with_capacity(2048);
    h.hash_into(&prompt, &mut hashes);
    let d = r
        .choose(&hashes, prompt.len() as u32, &workers, 1.0)
        .unwrap();
    eprintln!("decision: {d}");
    // Per-call percentiles (criterion reports means, which include preemption on a busy box).
    let mut ns: Vec<f64> = (0..5000)
        .map(|_| {
            let t = std::time::Instant::now();
            h.hash_into(black_box(&prompt), &mut hashes);
            let d = r
                .choose(&hashes, prompt.len() as u32, &workers, 1.0)
                .unwrap();
            black_box(d.index);
            t.elapsed().as_nanos() as f64
        })
        .collect();
    ns.sort_by(f64::total_cmp);
    eprintln!(
        "full kv decision (hash 32K tokens + query + 64-worker cost): p50 {:.2} µs, p99 {:.2} µs",
        ns[ns.len() / 2] / 1e3,
        ns[ns.len() * 99 / 100] / 1e3
    );
    let mut g = c.benchmark_group("route");
    g.bench_function("kv_decision_32k_tokens_64_workers_1M_blocks", |b| {
        b.iter(|| {
            h.hash_into(black_box(&prompt), &mut hashes);
            let d = r
                .choose(&hashes, prompt.len() as u32, &workers, 1.0)
                .unwrap();
            black_box(d.index)
        })
    });
    let req = RequestInfo {
        input_tokens: 32_768,
        block_size: 16,
    };
    let cands: Vec<Candidate> = (0..64u64)
        .map(|i| Candidate {
            worker: WorkerKey::new(i, 0),
            load: LoadSnapshot {
                active_requests: (i % 7) as u32,
                prefill_tokens: i * 100,
                active_blocks: i * 37 % 1000,
                engine_reported: false,
            },
            overlap_blocks: ((i * 131) % 2048) as u32,
        })
        .collect();
    for kind in PolicyKind::ALL {
        let mut p: Box<dyn Policy> = build_policy(&RouterConfig {
            policy: kind,
            ..RouterConfig::default()
        });
        g.bench_function(format!("policy_{kind}_64_candidates"), |b| {
            b.iter(|| black_box(p.choose(&req, black_box(&cands)).unwrap().index))
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
