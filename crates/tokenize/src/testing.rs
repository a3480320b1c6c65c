//! Small real tokenizers for tests and examples: trained in memory with the `tokenizers`
//! crate, no download.

use std::path::Path;

use tokenizers::models::TrainerWrapper;
use tokenizers::models::bpe::{BPE, BpeTrainerBuilder};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::{AddedToken, DecoderWrapper, PreTokenizerWrapper};

use crate::error::TokenizeError;

/// Special tokens of [`train_byte_level_bpe`]'s tokenizers (ChatML and Llama 3 markers).
pub const SPECIAL_TOKENS: [&str; 6] = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|begin_of_text|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
];

/// Deterministic English-like training text: `sentences` sentences over a 160-word
/// vocabulary.
pub fn corpus(sentences: usize) -> Vec<String> {
    const W: [&str; 40] = [
        "the", "of", "and", "to", "in", "is", "was", "that", "for", "on", "with", "as", "by", "at",
        "from", "they", "this", "which", "or", "had", "not", "but", "are", "have", "one", "were",
        "all", "their", "an", "has", "been", "more", "would", "there", "when", "who", "will",
        "also", "its", "into",
    ];
    const N: [&str; 40] = [
        "time", "people", "water", "city", "light", "house", "school", "river", "paper", "train",
        "market", "music", "power", "story", "table", "field", "world", "model", "token", "cache",
        "router", "worker", "engine", "server", "request", "prompt", "block", "queue", "batch",
        "memory", "system", "number", "value", "energy", "window", "moon", "horse", "book", "door",
        "road",
    ];
    const V: [&str; 40] = [
        "runs", "makes", "takes", "sends", "holds", "finds", "keeps", "moves", "reads", "writes",
        "builds", "opens", "closes", "starts", "stops", "turns", "shows", "plays", "pays", "leads",
        "serves", "routes", "caches", "counts", "splits", "joins", "loads", "saves", "waits",
        "checks", "drops", "picks", "walks", "grows", "falls", "sings", "calls", "asks", "tells",
        "gives",
    ];
    const A: [&str; 40] = [
        "quick", "lazy", "green", "black", "white", "red", "blue", "open", "short", "early",
        "young", "large", "local", "human", "major", "public", "north", "south", "west", "east",
        "small", "great", "old", "new", "long", "little", "good", "high", "free", "full", "half",
        "fast", "slow", "warm", "cold", "dark", "bright", "quiet", "loud", "soft",
    ];
    let mut state: u64 = 42;
    let mut next = |n: usize| {
        state = state
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        ((state >> 33) % n as u64) as usize
    };
    (0..sentences)
        .map(|i| {
            let mut s = String::new();
            for k in 0..6 + next(8) {
                if k > 0 {
                    s.push(' ');
                }
                let w = match k % 4 {
                    0 => W[next(40)],
                    1 => A[next(40)],
                    2 => N[next(40)],
                    _ => V[next(40)],
                };
                s.push_str(w);
            }
            s.push_str(if i % 5 == 0 { "? " } else { ". " });
            s
        })
        .collect()
}

/// Train a byte-level BPE tokenizer (the GPT-2 / Llama 3 / Qwen family: byte-level
/// pre-tokenizer and decoder, no prefix space) of about `vocab_size` tokens on `texts`, with
/// [`SPECIAL_TOKENS`] as special added tokens.
pub fn train_byte_level_bpe(
    texts: &[String],
    vocab_size: usize,
) -> Result<tokenizers::Tokenizer, TokenizeError> {
    let err = |e: tokenizers::Error| TokenizeError::Tokenizer {
        path: "<in memory>".into(),
        message: e.to_string(),
    };
    let mut tok = tokenizers::Tokenizer::new(BPE::default());
    let bl = ByteLevel::default().add_prefix_space(false);
    tok.with_pre_tokenizer(Some(PreTokenizerWrapper::from(bl)));
    tok.with_decoder(Some(DecoderWrapper::from(bl)));
    let specials: Vec<AddedToken> = SPECIAL_TOKENS
        .iter()
        .map(|s| AddedToken::from(*s, true))
        .collect();
    let mut trainer: TrainerWrapper = BpeTrainerBuilder::new()
        .vocab_size(vocab_size)
        .min_frequency(2)
        .show_progress(false)
        .special_tokens(specials)
        .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
        .build()
        .into();
    tok.train(&mut trainer, texts.iter()).map_err(err)?;
    Ok(tok)
}

/// Write a Hugging Face model directory: `tokenizer.json` from [`train_byte_level_bpe`] and,
/// when given, a `tokenizer_config.json` with `chat_template` and ChatML-style BOS/EOS.
pub fn write_model_dir(
    dir: &Path,
    vocab_size: usize,
    chat_template: Option<&str>,
) -> Result<(), TokenizeError> {
    let tok = train_byte_level_bpe(&corpus(2000), vocab_size)?;
    let file = dir.join("tokenizer.json");
    tok.save(&file, false)
        .map_err(|e| TokenizeError::Tokenizer {
            path: file.clone(),
            message: e.to_string(),
        })?;
    if let Some(t) = chat_template {
        let config = serde_json::json!({
            "bos_token": null,
            "eos_token": {"content": "<|im_end|>", "special": true},
            "chat_template": t,
        });
        let path = dir.join("tokenizer_config.json");
        std::fs::write(&path, config.to_string()).map_err(|e| TokenizeError::Tokenizer {
            path,
            message: format!("cannot write: {e}"),
        })?;
    }
    Ok(())
}
