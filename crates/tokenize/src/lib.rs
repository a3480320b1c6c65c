//! Tokenization for real models.
//!
//! - [`Tokenizer`]: the built-in default (tiktoken's `o200k_base`, bundled in the binary: no
//!   download) or a Hugging Face `tokenizer.json` loaded with the `tokenizers` crate (a file, or
//!   a model directory as Hugging Face lays it out).
//! - [`ChatTemplate`]: the model's Jinja chat template (from `tokenizer_config.json`,
//!   `chat_template.jinja` or a standalone file), rendered with minijinja the way
//!   `transformers`' `apply_chat_template` does (`trim_blocks`, `lstrip_blocks`,
//!   `raise_exception`, `strftime_now`, `tojson`, Python string/dict methods), or a ChatML
//!   default when the model has none.
//! - [`WordPieces`]: words that are exactly one token each and stay one token each when
//!   concatenated, so that generated text has an exact token count under a given tokenizer
//!   (what `switchyard bench` builds text prompts from).
//!
//! Everything returns [`TokenizeError`] (naming the file and the problem); nothing panics on
//! user input.

mod error;
mod template;
mod tokenizer;
mod words;

pub use error::TokenizeError;
pub use template::{ChatTemplate, strftime};
pub use tokenizer::{BUILTIN_NAMES, O200K_VOCAB_SIZE, Tokenizer};
pub use words::WordPieces;

pub mod testing;
