//! Words that are one token each under a given tokenizer, for text of exact token counts.

use crate::error::TokenizeError;
use crate::tokenizer::Tokenizer;

/// Text put before a candidate word when testing it, so that the word is seen mid-text (with
/// its leading space) as it will be in a prompt, not at the start (where SentencePiece-style
/// tokenizers add a prefix space).
const PROBE: &str = "x";
/// Words used in the concatenation check.
const CHECK_WORDS: usize = 4096;

/// Words that are exactly one token each under a tokenizer, each with its leading space
/// (`" the"`), ordered by token id. Text made by concatenating them tokenizes to one token per
/// word (checked on a sample: [`WordPieces::exact`]), so `decode(ids)` of ids drawn from
/// [`WordPieces::ids`] is text with a known token count whose token boundaries fall between
/// words: a block of such text tokenizes the same whatever precedes or follows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WordPieces {
    /// Token id of each word.
    pub ids: Vec<u32>,
    /// The words, each `" "` + 2 to 12 ASCII lowercase letters.
    pub words: Vec<String>,
    /// Indices (into `ids`/`words`) of the words that are also one token without their
    /// leading space: safe first words of a text that starts without a space (a chat message
    /// after its header).
    pub bare: Vec<u32>,
    /// Whether a 4096-word concatenation tokenized to exactly one token per word (false for
    /// tokenizers that merge across spaces; counts are then approximate).
    pub exact: bool,
}

impl WordPieces {
    /// Find the single-token words of `tok` (a pass over the whole vocabulary: ~0.1-1 s for
    /// 150k-200k tokens). An error if there are none.
    pub fn build(tok: &Tokenizer) -> Result<WordPieces, TokenizeError> {
        let probe = tok.encode(PROBE)?;
        let probe_text = tok.decode(&probe)?;
        let mut ids = Vec::new();
        let mut words = Vec::new();
        let mut bare = Vec::new();
        let mut seq = probe.clone();
        seq.push(0);
        let mut text = String::with_capacity(16);
        for id in 0..tok.vocab_size() as u32 {
            if tok.is_special(id) {
                continue;
            }
            *seq.last_mut().unwrap_or(&mut 0) = id;
            // Unassigned ids (gaps in o200k) fail to decode: not words.
            let Ok(decoded) = tok.decode(&seq) else {
                continue;
            };
            let Some(word) = decoded.strip_prefix(probe_text.as_str()) else {
                continue;
            };
            if !is_plain_word(word) {
                continue;
            }
            text.clear();
            text.push_str(PROBE);
            text.push_str(word);
            if tok.encode(&text)? != seq {
                continue;
            }
            if tok.count(&word[1..])? == 1 {
                bare.push(ids.len() as u32);
            }
            ids.push(id);
            words.push(word.to_string());
        }
        if ids.is_empty() {
            return Err(TokenizeError::Codec {
                name: tok.name().to_string(),
                message: "no vocabulary entry is a plain word (a space and 2-12 ASCII letters) encoded as one token; cannot build text of exact token counts".into(),
            });
        }
        let exact = check_concatenation(tok, &probe, &words)?;
        Ok(WordPieces {
            ids,
            words,
            bare,
            exact,
        })
    }

    /// Number of words.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// Whether there are none (never, for a built value).
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }
}

fn is_plain_word(w: &str) -> bool {
    let Some(letters) = w.strip_prefix(' ') else {
        return false;
    };
    (2..=12).contains(&letters.len()) && letters.bytes().all(|b| b.is_ascii_lowercase())
}

/// Concatenate a deterministic pseudo-random sequence of words and check the count.
fn check_concatenation(
    tok: &Tokenizer,
    probe: &[u32],
    words: &[String],
) -> Result<bool, TokenizeError> {
    let mut text = String::from(PROBE);
    let mut state: u64 = 0x5EED;
    for _ in 0..CHECK_WORDS {
        // xorshift64*: any well-spread sequence will do.
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        let r = state.wrapping_mul(0x2545_F491_4F6C_DD1D);
        text.push_str(&words[((r >> 32) % words.len() as u64) as usize]);
    }
    Ok(tok.count(&text)? == probe.len() + CHECK_WORDS)
}
