//! Hot paths of the client: building a request body (before the send time) and parsing a
//! streamed response (per chunk, after its timestamp is taken).

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use std::hint::black_box;
use switchyard_bench::prompt::{Renderer, trace_blocks};
use switchyard_bench::sse::SseParser;

fn bodies(c: &mut Criterion) {
    let r = Renderer::new(0, 32000);
    // A typical Mooncake conversation request: 12,000 tokens in 24 blocks.
    let ids: Vec<u64> = (0..24).collect();
    let blocks = trace_blocks(&ids, 12_000, 512, 0);
    let mut g = c.benchmark_group("body");
    g.throughput(Throughput::Elements(12_000));
    g.bench_function("token_ids_12k", |b| {
        b.iter(|| {
            let mut out = Vec::with_capacity(80_000);
            r.write_token_array(black_box(&blocks), &mut out);
            out
        })
    });
    g.bench_function("text_12k", |b| b.iter(|| r.text(black_box(&blocks))));
    g.finish();
}

fn sse(c: &mut Criterion) {
    let mut stream = Vec::new();
    for i in 0..1000 {
        stream.extend_from_slice(
            format!(
                "data: {{\"id\":\"cmpl-1\",\"object\":\"text_completion\",\"created\":0,\"model\":\"m\",\"choices\":[{{\"index\":0,\"text\":\" tok{i}\",\"logprobs\":null,\"finish_reason\":null}}]}}\n\n"
            )
            .as_bytes(),
        );
    }
    let mut g = c.benchmark_group("sse");
    g.throughput(Throughput::Elements(1000));
    g.bench_function("frame_1000_events_in_1400B_reads", |b| {
        b.iter(|| {
            let mut p = SseParser::new();
            let mut n = 0usize;
            for piece in stream.chunks(1400) {
                let _ = p.feed(piece, |d| {
                    n += d.len();
                    true
                });
            }
            n
        })
    });
    g.bench_function("frame_and_parse_json_1000_events", |b| {
        b.iter(|| {
            let mut p = SseParser::new();
            let mut n = 0usize;
            for piece in stream.chunks(1400) {
                let _ = p.feed(piece, |d| {
                    if let Ok(v) = serde_json::from_str::<serde_json::Value>(d) {
                        n += v["choices"][0]["text"].as_str().map_or(0, str::len);
                    }
                    true
                });
            }
            n
        })
    });
    g.finish();
}

criterion_group!(benches, bodies, sse);
criterion_main!(benches);
