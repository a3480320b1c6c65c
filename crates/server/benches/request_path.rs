//! CPU cost of `serve`'s per-request work without the network: parse + validate the body,
//! tokenize, hash blocks, route over 64 workers; and decoding a vLLM KV-event batch.
//!
//! `cargo bench -p switchyard-server --bench request_path -- --warm-up-time 1 --measurement-time 3`

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use switchyard_kv::wire::{WireBatch, WireEncoding, WireEvent, decode_batch, encode_batch};
use switchyard_kv::{BlockHasher, KvEvent, WorkerKey};
use switchyard_route::{Router, RouterConfig};
use switchyard_server::openai::{Endpoint, parse_request};
use switchyard_server::tokenizer::prompt_tokens;

fn bench(c: &mut Criterion) {
    let hasher = BlockHasher::new(16).unwrap();
    let workers: Vec<WorkerKey> = (0..64).map(|i| WorkerKey::new(i, 0)).collect();
    let mut router = Router::new(RouterConfig::default()).unwrap();
    // Each worker caches a distinct 4k-token prefix.
    for (i, w) in workers.iter().enumerate() {
        let toks: Vec<u32> = (0..4096).map(|t| (i as u32) * 10_000 + t).collect();
        router.apply_event(
            *w,
            &KvEvent::Stored {
                parent: None,
                blocks: hasher.hash(&toks),
            },
        );
    }
    let toks: Vec<u32> = (0..4096).map(|t| 7 * 10_000 + t).collect();
    let ids_body = format!(
        r#"{{"model":"m","prompt":{},"max_tokens":64,"stream":true}}"#,
        serde_json::to_string(&toks).unwrap()
    );
    let text: String = (0..500).map(|i| format!("word{i} ")).collect();
    let chat_body = format!(
        r#"{{"model":"m","messages":[{{"role":"user","content":"{text}"}}],"max_tokens":64}}"#
    );
    let _ = prompt_tokens(&switchyard_server::openai::Prompt::Text("warm".into()));

    c.bench_function("token-id prompt (4k): parse+hash+route/64", |b| {
        b.iter(|| {
            let p = parse_request(ids_body.as_bytes(), Endpoint::Completions).unwrap();
            let t = prompt_tokens(&p.prompt);
            let h = hasher.hash(&t);
            let (d, ticket) = router.route(&h, t.len() as u32, &workers, 0.0).unwrap();
            router.finish(ticket).unwrap();
            black_box(d.worker)
        })
    });
    c.bench_function(
        "chat text (~1.5k tokens): parse+tokenize+hash+route/64",
        |b| {
            b.iter(|| {
                let p = parse_request(chat_body.as_bytes(), Endpoint::Chat).unwrap();
                let t = prompt_tokens(&p.prompt);
                let h = hasher.hash(&t);
                let (d, ticket) = router.route(&h, t.len() as u32, &workers, 0.0).unwrap();
                router.finish(ticket).unwrap();
                black_box(d.worker)
            })
        },
    );
    let batch = WireBatch {
        ts: 1.0,
        events: (0..32)
            .map(|i| WireEvent::BlockStored {
                block_hashes: (0..4).map(|j| u64::MAX - i * 4 - j).collect(),
                parent_block_hash: Some(i),
                token_ids: (0..64).collect(),
                block_size: 16,
                lora_id: None,
                medium: Some("GPU".into()),
            })
            .collect(),
        dp_rank: Some(0),
    };
    for enc in [WireEncoding::Positional, WireEncoding::Map] {
        let bytes = encode_batch(&batch, enc);
        c.bench_function(&format!("decode 32 BlockStored ({enc:?})"), |b| {
            b.iter(|| black_box(decode_batch(&bytes).unwrap().batch.events.len()))
        });
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
