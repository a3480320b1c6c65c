//! The tokenizer: tiktoken's o200k_base (built in) or a Hugging Face `tokenizer.json`.

use std::fmt;
use std::path::{Path, PathBuf};

use tiktoken_rs::CoreBPE;

use crate::error::TokenizeError;

/// Ids of o200k_base: 199,998 ordinary tokens (0..=199,997) and the special tokens
/// `<|endoftext|>` (199,999) and `<|endofprompt|>` (200,018); ids in between are unassigned.
pub const O200K_VOCAB_SIZE: usize = 200_019;
const O200K_ORDINARY: u32 = 199_998;
const O200K_SPECIAL: [u32; 2] = [199_999, 200_018];

/// What `--tokenizer` may say to select the built-in tokenizer.
pub const BUILTIN_NAMES: [&str; 2] = ["o200k_base", "o200k"];

/// File names of a Hugging Face model directory.
pub(crate) const TOKENIZER_JSON: &str = "tokenizer.json";

/// A tokenizer: the built-in default or a Hugging Face one. Cheap to share (`Arc`), `Send +
/// Sync`; encoding takes `&self`.
pub struct Tokenizer {
    inner: Inner,
    name: String,
    /// The `tokenizer.json` this was loaded from (`None` for the built-in).
    path: Option<PathBuf>,
    /// Special token ids, sorted.
    special: Vec<u32>,
    /// One past the largest id.
    vocab_size: usize,
}

enum Inner {
    O200k(&'static CoreBPE),
    Hf(Box<tokenizers::Tokenizer>),
}

impl fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tokenizer")
            .field("name", &self.name)
            .field("vocab_size", &self.vocab_size())
            .finish()
    }
}

impl Default for Tokenizer {
    fn default() -> Self {
        Tokenizer::o200k()
    }
}

impl Tokenizer {
    /// The built-in tokenizer: tiktoken's o200k_base (GPT-4o's), bundled in the binary. The
    /// first call builds its tables (~0.3 s); later calls share them.
    pub fn o200k() -> Tokenizer {
        Tokenizer {
            inner: Inner::O200k(tiktoken_rs::o200k_base_singleton()),
            name: "o200k_base".into(),
            path: None,
            special: O200K_SPECIAL.to_vec(),
            vocab_size: O200K_VOCAB_SIZE,
        }
    }

    /// Load a Hugging Face tokenizer: `path` is a `tokenizer.json` file, or a model directory
    /// containing one (as `huggingface-cli download` or `save_pretrained` lay it out).
    /// Truncation and padding settings in the file are dropped: a router must see every token.
    /// The names `o200k_base` and `o200k` (when no such file exists) select the built-in.
    pub fn load(path: impl AsRef<Path>) -> Result<Tokenizer, TokenizeError> {
        let path = path.as_ref();
        if BUILTIN_NAMES.iter().any(|n| path == Path::new(n)) && !path.exists() {
            return Ok(Tokenizer::o200k());
        }
        let file = resolve_tokenizer_json(path)?;
        let bytes = std::fs::read(&file).map_err(|source| TokenizeError::Read {
            path: file.clone(),
            source,
        })?;
        let mut tok = tokenizers::Tokenizer::from_bytes(&bytes).map_err(|e| {
            // Tell "not JSON at all" from "JSON, but not a tokenizer we can build".
            match serde_json::from_slice::<serde::de::IgnoredAny>(&bytes) {
                Err(j) => TokenizeError::Json {
                    path: file.clone(),
                    message: j.to_string(),
                },
                Ok(_) => TokenizeError::Tokenizer {
                    path: file.clone(),
                    message: e.to_string(),
                },
            }
        })?;
        tok.with_truncation(None)
            .map_err(|e| TokenizeError::Tokenizer {
                path: file.clone(),
                message: e.to_string(),
            })?
            .with_padding(None);
        let name = file.display().to_string();
        let mut t = Tokenizer::from_hf(tok, name);
        t.path = Some(file);
        Ok(t)
    }

    /// Wrap a `tokenizers` tokenizer built in memory (named `name`).
    pub fn from_hf(tok: tokenizers::Tokenizer, name: impl Into<String>) -> Tokenizer {
        let added = tok.get_added_tokens_decoder();
        let mut special: Vec<u32> = added
            .iter()
            .filter(|(_, a)| a.special)
            .map(|(&id, _)| id)
            .collect();
        special.sort_unstable();
        // Added tokens may sit beyond the model's vocabulary, not always contiguously.
        let vocab_size = added
            .keys()
            .map(|&id| id as usize + 1)
            .max()
            .unwrap_or(0)
            .max(tok.get_vocab_size(true));
        Tokenizer {
            inner: Inner::Hf(Box::new(tok)),
            name: name.into(),
            path: None,
            special,
            vocab_size,
        }
    }

    /// `o200k_base`, or the path of the `tokenizer.json`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The `tokenizer.json` this was loaded from (`None`: built in or built in memory).
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// Whether this is the built-in o200k_base.
    pub fn is_builtin(&self) -> bool {
        matches!(self.inner, Inner::O200k(_))
    }

    /// One past the largest token id (added and special tokens included).
    pub fn vocab_size(&self) -> usize {
        self.vocab_size
    }

    /// Token ids of `text`, without adding special tokens (no BOS: the chat template writes
    /// its own). Special-token text in `text` (e.g. `<|im_start|>` rendered by a template) is
    /// recognised by Hugging Face tokenizers, as `transformers` and vLLM do; o200k_base
    /// encodes everything as ordinary text.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, TokenizeError> {
        match &self.inner {
            Inner::O200k(b) => Ok(b.encode_ordinary(text)),
            Inner::Hf(t) => t
                .encode_fast(text, false)
                .map(|e| e.get_ids().to_vec())
                .map_err(|e| self.codec(format!("cannot encode: {e}"))),
        }
    }

    /// Number of tokens of `text` ([`Tokenizer::encode`]'s length).
    pub fn count(&self, text: &str) -> Result<usize, TokenizeError> {
        self.encode(text).map(|t| t.len())
    }

    /// Text of `ids` (special tokens included; invalid UTF-8 from partial byte tokens
    /// replaced by U+FFFD). Ids outside the vocabulary are an error.
    pub fn decode(&self, ids: &[u32]) -> Result<String, TokenizeError> {
        match &self.inner {
            Inner::O200k(b) => {
                if let Some(bad) = ids
                    .iter()
                    .find(|&&i| i >= O200K_ORDINARY && !O200K_SPECIAL.contains(&i))
                {
                    return Err(self.codec(format!("token id {bad} is not in the vocabulary")));
                }
                // Ids checked above: the lookup inside cannot fail.
                let bytes: Vec<u8> = b._decode_native_and_split(ids.to_vec()).flatten().collect();
                Ok(String::from_utf8_lossy(&bytes).into_owned())
            }
            Inner::Hf(t) => {
                let n = self.vocab_size;
                if let Some(bad) = ids.iter().find(|&&i| i as usize >= n) {
                    return Err(self.codec(format!(
                        "token id {bad} is not in the vocabulary ({n} tokens)"
                    )));
                }
                t.decode(ids, false)
                    .map_err(|e| self.codec(format!("cannot decode: {e}")))
            }
        }
    }

    /// Whether `id` is a special token (o200k: `<|endoftext|>`, `<|endofprompt|>`; Hugging
    /// Face: an added token marked special).
    pub fn is_special(&self, id: u32) -> bool {
        self.special.binary_search(&id).is_ok()
    }

    fn codec(&self, message: String) -> TokenizeError {
        TokenizeError::Codec {
            name: self.name.clone(),
            message,
        }
    }
}

/// `path` itself if it is a file, `path/tokenizer.json` if it is a directory.
fn resolve_tokenizer_json(path: &Path) -> Result<PathBuf, TokenizeError> {
    let meta = std::fs::metadata(path).map_err(|source| TokenizeError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    if !meta.is_dir() {
        return Ok(path.to_path_buf());
    }
    let file = path.join(TOKENIZER_JSON);
    if file.is_file() {
        return Ok(file);
    }
    Err(TokenizeError::MissingFile {
        dir: path.to_path_buf(),
        file: TOKENIZER_JSON,
        hint: if path.join("tokenizer.model").exists() || path.join("vocab.json").exists() {
            " (only a slow tokenizer is there; convert it once with transformers: AutoTokenizer.from_pretrained(DIR).save_pretrained(DIR) writes tokenizer.json)"
        } else {
            " (pass a Hugging Face model directory or the tokenizer.json file itself)"
        },
    })
}
