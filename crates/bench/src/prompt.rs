//! Deterministic prompt content.
//!
//! Every prompt is a sequence of *blocks*; a block is identified by a 64-bit key and its
//! content is a pure function of `(seed, key, position)`. Equal keys therefore give identical
//! blocks (a server's prefix cache hits exactly where the trace says it should) and distinct
//! keys give distinct blocks (collisions are as likely as 64-bit hash collisions, and a
//! whole-block collision needs every position to agree).
//!
//! Two renderings:
//! - **tokens**: token ids in `[TOKEN_ID_MIN, vocab_size)`, sent as a JSON array on
//!   `/v1/completions`. Exact: the server sees exactly these tokens, no tokenizer involved.
//!   Ids below [`TOKEN_ID_MIN`] are avoided because most vocabularies keep special and byte
//!   tokens there.
//! - **text**: one common English word per token, each with a leading space (`" the"`,
//!   `" water"`): in GPT-, Llama- and Qwen-style BPE vocabularies each of these words is a
//!   single token, so a block of `k` words is close to `k` tokens. It is an approximation: the
//!   server's tokenizer decides, and the chat template adds its own tokens. Reported input
//!   tokens come from the server's `usage.prompt_tokens` whenever it sends them.
//!
//! With the served model's tokenizer (`--tokenizer`), both renderings draw from the same set of
//! words that are exactly one token each under it ([`WordPieces`]): the token ids are those
//! words' ids and the text is their decoding, so a block of `k` positions is exactly `k` tokens
//! in both forms, and token boundaries fall between words (a block tokenizes the same whatever
//! precedes it: equal keys are equal token blocks at the server too).

use std::sync::Arc;

use switchyard_tokenize::WordPieces;

/// Lowest token id used in token-id prompts.
pub const TOKEN_ID_MIN: u32 = 1000;

/// splitmix64 finaliser: a fast, well-mixed 64-bit permutation.
#[inline]
pub fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Combine values into one key (order matters).
#[inline]
pub fn key(parts: &[u64]) -> u64 {
    parts
        .iter()
        .fold(0x5357_4954_4348_5944u64, |acc, &p| mix(acc ^ mix(p)))
}

/// Key spaces, so that e.g. the random dataset's shared prefix can never equal a trace block.
pub mod space {
    pub const TRACE: u64 = 1;
    /// Tail of a trace request with fewer `hash_ids` than its length needs: unique per request.
    pub const TRACE_TAIL: u64 = 2;
    pub const RANDOM_PREFIX: u64 = 3;
    pub const RANDOM_BODY: u64 = 4;
    pub const GROUP_SYSTEM: u64 = 5;
    pub const GROUP_QUESTION: u64 = 6;
}

/// One block of a prompt: `len` tokens of content `key`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Block {
    pub key: u64,
    pub len: u32,
}

/// How prompts are rendered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Renderer {
    pub seed: u64,
    /// Token ids are drawn from `[TOKEN_ID_MIN, vocab_size)` (without `words`).
    pub vocab_size: u32,
    /// The served model's single-token words: token ids and words are drawn from these
    /// instead (exact token counts for text).
    pub words: Option<Arc<WordPieces>>,
}

impl Renderer {
    /// Token ids from `[TOKEN_ID_MIN, vocab_size)`, text from [`WORDS`].
    pub fn new(seed: u64, vocab_size: u32) -> Renderer {
        Renderer {
            seed,
            vocab_size,
            words: None,
        }
    }

    /// Token ids and text from a tokenizer's single-token words.
    pub fn with_words(seed: u64, words: Arc<WordPieces>) -> Renderer {
        Renderer {
            seed,
            vocab_size: 0,
            words: Some(words),
        }
    }

    /// Per-block base of the position hash (hoisted out of the per-token loop).
    #[inline]
    fn base(&self, block_key: u64) -> u64 {
        mix(self.seed ^ block_key)
    }

    /// Map a 64-bit hash to `[0, n)` by multiply-shift (no division; n < 2^32).
    #[inline]
    fn reduce(v: u64, n: u64) -> u64 {
        ((v >> 32) * n) >> 32
    }

    /// Index into the tokenizer's words of position `pos` (hash `h`): the first word of a
    /// block is one that is also a single token without its leading space, so a prompt that
    /// starts with it (a chat message, sent without the leading space) keeps its exact length.
    #[inline]
    fn word_index(w: &WordPieces, h: u64, pos: u32) -> usize {
        if pos == 0 && !w.bare.is_empty() {
            w.bare[Self::reduce(h, w.bare.len() as u64) as usize] as usize
        } else {
            Self::reduce(h, w.ids.len() as u64) as usize
        }
    }

    #[inline]
    fn token_from(&self, base: u64, pos: u32) -> u32 {
        let h = mix(base ^ u64::from(pos));
        match &self.words {
            // WordPieces are never empty (built values have at least one word).
            Some(w) => w.ids[Self::word_index(w, h, pos)],
            None => {
                let span = u64::from(self.vocab_size.saturating_sub(TOKEN_ID_MIN).max(1));
                TOKEN_ID_MIN + Self::reduce(h, span) as u32
            }
        }
    }

    #[inline]
    fn word_from(&self, base: u64, pos: u32) -> &str {
        let h = mix(base ^ u64::from(pos));
        match &self.words {
            // Each word is " " + letters: the same position picks the same id and word.
            Some(w) => &w.words[Self::word_index(w, h, pos)][1..],
            None => WORDS[Self::reduce(h, WORDS.len() as u64) as usize],
        }
    }

    /// Token id at `pos` of block `key`.
    pub fn token(&self, block_key: u64, pos: u32) -> u32 {
        self.token_from(self.base(block_key), pos)
    }

    /// Word at `pos` of block `key` (without the leading space).
    pub fn word(&self, block_key: u64, pos: u32) -> &str {
        self.word_from(self.base(block_key), pos)
    }

    /// Append the JSON array of token ids of `blocks` to `out` (`[12,345,...]`).
    pub fn write_token_array(&self, blocks: &[Block], out: &mut Vec<u8>) {
        out.push(b'[');
        let mut first = true;
        let mut num = itoa_buf();
        for b in blocks {
            let base = self.base(b.key);
            for p in 0..b.len {
                if !first {
                    out.push(b',');
                }
                first = false;
                out.extend_from_slice(fmt_u32(self.token_from(base, p), &mut num));
            }
        }
        out.push(b']');
    }

    /// Token ids of `blocks` as a vector (tests, inspection).
    pub fn tokens(&self, blocks: &[Block]) -> Vec<u32> {
        blocks
            .iter()
            .flat_map(|b| (0..b.len).map(move |p| self.token(b.key, p)))
            .collect()
    }

    /// Text of `blocks`: every word preceded by one space.
    pub fn text(&self, blocks: &[Block]) -> String {
        let n: u32 = blocks.iter().map(|b| b.len).sum();
        let mut s = String::with_capacity(n as usize * 6);
        for b in blocks {
            let base = self.base(b.key);
            for p in 0..b.len {
                s.push(' ');
                s.push_str(self.word_from(base, p));
            }
        }
        s
    }
}

fn itoa_buf() -> [u8; 10] {
    [0; 10]
}

#[inline]
fn fmt_u32(mut v: u32, buf: &mut [u8; 10]) -> &[u8] {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    &buf[i..]
}

/// Split `input_len` tokens into a trace request's blocks: one per hash id of `block_size`
/// tokens, the last one partial; ids beyond the prompt are ignored; a prompt longer than its
/// ids cover gets a unique tail keyed by `request_key`.
pub fn trace_blocks(
    hash_ids: &[u64],
    input_len: u32,
    block_size: u32,
    request_key: u64,
) -> Vec<Block> {
    let mut blocks = Vec::with_capacity(hash_ids.len() + 1);
    let mut left = input_len;
    for &h in hash_ids {
        if left == 0 {
            break;
        }
        let len = left.min(block_size);
        blocks.push(Block {
            key: key(&[space::TRACE, h]),
            len,
        });
        left -= len;
    }
    if left > 0 {
        blocks.push(Block {
            key: key(&[space::TRACE_TAIL, request_key]),
            len: left,
        });
    }
    blocks
}

/// Escape `s` as a JSON string literal into `out`.
pub fn write_json_str(s: &str, out: &mut Vec<u8>) {
    // Writing a &str into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, s);
}

/// Common English words, each a single token with a leading space in the BPE vocabularies of
/// current open models (GPT-2/cl100k/o200k, Llama 2/3, Qwen 2/3). 256 entries: one byte of
/// entropy per token.
pub const WORDS: [&str; 256] = [
    "the", "of", "and", "to", "in", "is", "was", "that", "for", "on", "with", "as", "by", "at",
    "from", "his", "her", "they", "this", "which", "or", "had", "not", "but", "are", "have", "one",
    "were", "all", "their", "an", "has", "been", "more", "would", "there", "when", "who", "will",
    "also", "its", "into", "only", "other", "new", "some", "time", "could", "these", "two", "may",
    "first", "then", "do", "any", "like", "my", "now", "over", "such", "our", "man", "me", "even",
    "most", "made", "after", "well", "did", "many", "before", "must", "through", "back", "years",
    "where", "much", "your", "way", "down", "should", "because", "long", "each", "just", "state",
    "people", "those", "how", "too", "little", "good", "world", "very", "still", "own", "see",
    "men", "work", "here", "between", "both", "life", "being", "under", "never", "day", "same",
    "another", "know", "while", "last", "might", "us", "great", "old", "year", "off", "come",
    "since", "against", "go", "came", "right", "used", "take", "three", "small", "found", "part",
    "house", "water", "city", "light", "high", "star", "every", "school", "hand", "point", "home",
    "night", "number", "place", "group", "market", "week", "money", "music", "power", "story",
    "table", "river", "paper", "party", "field", "train", "green", "black", "white", "red", "blue",
    "open", "short", "early", "young", "large", "local", "human", "major", "public", "north",
    "south", "west", "east", "body", "book", "game", "line", "name", "side", "road", "door",
    "head", "face", "fact", "word", "area", "team", "idea", "kind", "case", "form", "level",
    "order", "plan", "price", "rate", "role", "rule", "sense", "size", "space", "stage", "start",
    "step", "stock", "system", "term", "test", "text", "type", "unit", "value", "view", "voice",
    "wall", "war", "wind", "window", "woman", "car", "cost", "data", "death", "ship", "energy",
    "event", "film", "fire", "food", "force", "free", "full", "half", "health", "heart", "history",
    "horse", "hour", "issue", "job", "land", "law", "lead", "list", "love", "model", "month",
    "moon", "news", "note", "page", "pay", "play", "post",
];

#[cfg(test)]
mod tests {
    use super::*;

    const R: Renderer = Renderer {
        seed: 0,
        vocab_size: 32000,
        words: None,
    };

    #[test]
    fn equal_hash_ids_share_blocks_distinct_ids_do_not() {
        let a = trace_blocks(&[46, 47], 655, 512, 1);
        let b = trace_blocks(&[46, 48, 49], 1100, 512, 2);
        assert_eq!(a.iter().map(|b| b.len).collect::<Vec<_>>(), vec![512, 143]);
        assert_eq!(
            b.iter().map(|b| b.len).collect::<Vec<_>>(),
            vec![512, 512, 76]
        );
        let ta = R.tokens(&a);
        let tb = R.tokens(&b);
        assert_eq!(ta.len(), 655);
        assert_eq!(tb.len(), 1100);
        // Same first block, token for token.
        assert_eq!(ta[..512], tb[..512]);
        // Different second blocks: almost every position differs.
        let same = (512..655).filter(|&i| ta[i] == tb[i]).count();
        assert!(same < 5, "{same} equal positions in distinct blocks");
        // A partial block is the prefix of the same id's full block.
        let short = trace_blocks(&[47], 10, 512, 3);
        assert_eq!(R.tokens(&short)[..], ta[512..522]);
        assert!(ta.iter().all(|&t| (TOKEN_ID_MIN..32000).contains(&t)));
    }

    #[test]
    fn seed_changes_content_and_tail_is_unique() {
        let other = Renderer {
            seed: 1,
            ..R.clone()
        };
        let b = trace_blocks(&[5], 100, 512, 0);
        assert_ne!(R.tokens(&b), other.tokens(&b));
        // Too few hash ids: the rest is unique per request.
        let x = trace_blocks(&[5], 600, 512, 10);
        let y = trace_blocks(&[5], 600, 512, 11);
        assert_eq!(x.len(), 2);
        assert_ne!(x[1].key, y[1].key);
        assert_eq!(x[0], y[0]);
        // Too many: ignored.
        assert_eq!(trace_blocks(&[1, 2, 3], 512, 512, 0).len(), 1);
    }

    #[test]
    fn json_array_matches_tokens_and_text_has_one_word_per_token() {
        let blocks = trace_blocks(&[1, 2], 700, 512, 0);
        let mut out = Vec::new();
        R.write_token_array(&blocks, &mut out);
        let parsed: Vec<u32> = serde_json::from_slice(&out).unwrap();
        assert_eq!(parsed, R.tokens(&blocks));
        let text = R.text(&blocks);
        assert_eq!(text.split(' ').filter(|w| !w.is_empty()).count(), 700);
        assert!(text.starts_with(' '));
        let mut empty = Vec::new();
        R.write_token_array(&[], &mut empty);
        assert_eq!(empty, b"[]");
        let mut buf = itoa_buf();
        assert_eq!(fmt_u32(0, &mut buf), b"0");
        assert_eq!(fmt_u32(u32::MAX, &mut buf), b"4294967295");
    }
}
