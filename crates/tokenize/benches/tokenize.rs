//! Encoding speed: a 32k-token prompt with the built-in o200k_base and with a Hugging Face
//! byte-level BPE tokenizer (trained in memory; also a real one from disk with
//! `SWITCHYARD_TOKENIZER=/path/to/model-dir`), plus a chat template render and the
//! single-token word scan of o200k.

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use switchyard_tokenize::testing::{corpus, train_byte_level_bpe};
use switchyard_tokenize::{ChatTemplate, Tokenizer, WordPieces};

/// About `tokens` tokens of English-like text under `tok`.
fn text_of(tok: &Tokenizer, tokens: usize) -> String {
    let sentences = corpus(20_000);
    let mut s = String::new();
    let mut i = 0;
    while tok.count(&s).unwrap_or(0) < tokens {
        // Grow in chunks, then check the count (counting every sentence would be quadratic).
        for _ in 0..200 {
            s.push_str(&sentences[i % sentences.len()]);
            i += 1;
        }
    }
    s
}

fn bench(c: &mut Criterion) {
    let o200k = Tokenizer::o200k();
    let hf = Tokenizer::from_hf(
        train_byte_level_bpe(&corpus(5_000), 4_000).expect("train"),
        "bpe-4k",
    );
    // A real model's tokenizer from disk, if given: SWITCHYARD_TOKENIZER=/path/to/model-dir.
    let real = std::env::var_os("SWITCHYARD_TOKENIZER").and_then(|p| Tokenizer::load(p).ok());
    let mut toks = vec![("o200k", &o200k), ("hf_bpe", &hf)];
    if let Some(r) = &real {
        toks.push(("hf_file", r));
    }
    let mut g = c.benchmark_group("encode_32k");
    for (name, tok) in toks {
        let text = text_of(tok, 32_000);
        let n = tok.count(&text).unwrap_or(0);
        eprintln!("{name}: {} bytes, {n} tokens", text.len());
        g.throughput(Throughput::Elements(n as u64));
        g.bench_function(name, |b| b.iter(|| tok.encode(black_box(&text))));
    }
    g.finish();

    let qwen3 = include_str!("../tests/fixtures/qwen3.jinja");
    let tmpl =
        ChatTemplate::from_source(qwen3, "qwen3", None, Some("<|im_end|>")).expect("template");
    let msgs: Vec<(String, String)> = (0..8)
        .map(|i| {
            let role = if i % 2 == 0 { "user" } else { "assistant" };
            (
                role.to_string(),
                format!("message {i} with some words in it"),
            )
        })
        .collect();
    c.bench_function("render_qwen3_8_messages", |b| {
        b.iter(|| tmpl.render(black_box(&msgs)))
    });
    c.bench_function("word_pieces_o200k", |b| {
        b.iter(|| WordPieces::build(black_box(&o200k)))
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(10);
    targets = bench
}
criterion_main!(benches);
