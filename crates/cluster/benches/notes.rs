//! Cost of encoding/decoding a fan-out prediction note, against JSON for comparison.
//! Run: cargo bench -p switchyard-cluster --bench notes -- --warm-up-time 1 --measurement-time 3

use criterion::{Criterion, criterion_group, criterion_main};
use serde::{Deserialize, Serialize};
use std::hint::black_box;
use switchyard_cluster::fanout::codec_bench;

#[derive(Serialize, Deserialize)]
struct JsonPrediction {
    replica: String,
    worker: String,
    dp_rank: u32,
    hashes: Vec<u64>,
    at: f64,
}

fn bench(c: &mut Criterion) {
    for n in [16usize, 64, 256] {
        let hashes: Vec<u64> = (0..n as u64)
            .map(|i| i.wrapping_mul(0x9e37_79b9_7f4a_7c15))
            .collect();
        let bin = codec_bench::encode_prediction("replica-0", "http://10.0.0.7:8000", &hashes);
        let j = JsonPrediction {
            replica: "replica-0".into(),
            worker: "http://10.0.0.7:8000".into(),
            dp_rank: 0,
            hashes: hashes.clone(),
            at: 1_795_300_000.123,
        };
        let json = serde_json::to_vec(&j).unwrap_or_default();
        eprintln!(
            "{n} hashes: binary note {} B, JSON {} B",
            bin.len(),
            json.len()
        );
        c.bench_function(&format!("prediction_{n}/binary_encode"), |b| {
            b.iter(|| {
                codec_bench::encode_prediction(
                    black_box("replica-0"),
                    "http://10.0.0.7:8000",
                    black_box(&hashes),
                )
            })
        });
        c.bench_function(&format!("prediction_{n}/binary_decode"), |b| {
            b.iter(|| codec_bench::decode_len(black_box(&bin)))
        });
        c.bench_function(&format!("prediction_{n}/json_encode"), |b| {
            b.iter(|| serde_json::to_vec(black_box(&j)))
        });
        c.bench_function(&format!("prediction_{n}/json_decode"), |b| {
            b.iter(|| {
                serde_json::from_slice::<JsonPrediction>(black_box(&json)).map(|p| p.hashes.len())
            })
        });
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
