use std::path::PathBuf;

/// Everything that can go wrong loading or using a tokenizer or a chat template.
#[derive(Debug, thiserror::Error)]
pub enum TokenizeError {
    /// A file or directory that does not exist or cannot be read.
    #[error("{path}: cannot read: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// A directory without the file we need in it.
    #[error("{dir}: no {file} in this directory{hint}")]
    MissingFile {
        dir: PathBuf,
        file: &'static str,
        hint: &'static str,
    },
    /// A file that is not valid JSON (or not the JSON shape expected).
    #[error("{path}: invalid JSON: {message}")]
    Json { path: PathBuf, message: String },
    /// Valid JSON that the `tokenizers` crate cannot build a tokenizer from.
    #[error("{path}: not a usable Hugging Face tokenizer: {message}")]
    Tokenizer { path: PathBuf, message: String },
    /// A chat template that does not compile (syntax error), or a config without one.
    #[error("{path}: chat template: {message}")]
    Template { path: PathBuf, message: String },
    /// The template failed while rendering (e.g. its own `raise_exception`: "Conversation
    /// roles must alternate user/assistant/...").
    #[error("chat template {name}: {message}")]
    Render { name: String, message: String },
    /// Messages the template cannot take (wrong types, unsupported content parts).
    #[error("invalid chat messages: {0}")]
    Messages(String),
    /// Encoding or decoding failed (e.g. an id outside the vocabulary).
    #[error("{name}: {message}")]
    Codec { name: String, message: String },
}
