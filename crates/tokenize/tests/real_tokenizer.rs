//! Opt-in check against a real model's tokenizer on disk (nothing is downloaded):
//! `SWITCHYARD_TOKENIZER=/path/to/model-dir cargo test -p switchyard-tokenize --test
//! real_tokenizer -- --nocapture`. Without the variable the test does nothing.

use std::time::Instant;

use switchyard_tokenize::{ChatTemplate, O200K_VOCAB_SIZE, Tokenizer, WordPieces};

#[test]
fn real_tokenizer_from_env() {
    let Some(path) = std::env::var_os("SWITCHYARD_TOKENIZER") else {
        eprintln!("SWITCHYARD_TOKENIZER not set: skipped");
        return;
    };
    let t0 = Instant::now();
    let tok = Tokenizer::load(&path).unwrap();
    eprintln!(
        "loaded {} ({} ids) in {:.0} ms",
        tok.name(),
        tok.vocab_size(),
        t0.elapsed().as_secs_f64() * 1e3
    );
    let text = "Switchyard routes requests to the worker that already holds their prefix. \
                Ünïcödé, numbers 12345, code `fn main() {}` and emoji 🚂.\n\n  Indented line.";
    let ids = tok.encode(text).unwrap();
    assert_eq!(tok.decode(&ids).unwrap(), text);
    if tok.vocab_size() == O200K_VOCAB_SIZE {
        // A conversion of o200k_base: must agree with the built-in token for token.
        assert_eq!(ids, Tokenizer::o200k().encode(text).unwrap());
    }
    let t0 = Instant::now();
    let w = WordPieces::build(&tok).unwrap();
    eprintln!(
        "{} single-token words (exact: {}) in {:.0} ms",
        w.len(),
        w.exact,
        t0.elapsed().as_secs_f64() * 1e3
    );
    assert!(w.exact);
    let long: String = (0..32_000)
        .map(|i| w.words[(i * 7919) % w.len()].as_str())
        .collect();
    let t0 = Instant::now();
    assert_eq!(tok.count(&long).unwrap(), 32_000);
    eprintln!(
        "encoded 32,000 words in {:.1} ms",
        t0.elapsed().as_secs_f64() * 1e3
    );
    match ChatTemplate::for_model(tok.path().unwrap_or(path.as_ref())).unwrap() {
        Some(t) => eprintln!(
            "chat template {}: {:?}",
            t.name(),
            t.render(&[("user", "hi")]).unwrap()
        ),
        None => eprintln!("no chat template in the model directory"),
    }
}
