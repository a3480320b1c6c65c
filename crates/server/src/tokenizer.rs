//! Default tokenizer (tiktoken's o200k_base, bundled: no download), the default chat rendering,
//! and the simulated worker's deterministic filler text.

use tiktoken_rs::CoreBPE;

use crate::openai::Prompt;

/// The built-in tokenizer (loaded once, on first use; ~0.3 s).
pub fn default_bpe() -> &'static CoreBPE {
    tiktoken_rs::o200k_base_singleton()
}

/// Render chat messages without a model template (ChatML-style, which most instruct models
/// use): `<|im_start|>{role}\n{content}<|im_end|>\n` per message, then the assistant header.
pub fn render_chat(messages: &[(String, String)]) -> String {
    let mut s = String::new();
    for (role, content) in messages {
        s.push_str("<|im_start|>");
        s.push_str(role);
        s.push('\n');
        s.push_str(content);
        s.push_str("<|im_end|>\n");
    }
    s.push_str("<|im_start|>assistant\n");
    s
}

/// Token ids of a prompt (token-id prompts pass through).
pub fn prompt_tokens(p: &Prompt) -> Vec<u32> {
    match p {
        Prompt::Tokens(t) => t.clone(),
        Prompt::Text(s) => default_bpe().encode_ordinary(s),
        Prompt::Chat(m) => default_bpe().encode_ordinary(&render_chat(m)),
    }
}

/// Text longer than this (bytes) is tokenized on the blocking pool, not on a runtime thread.
const INLINE_TOKENIZE_BYTES: usize = 16 << 10;

/// [`prompt_tokens`] that keeps long texts off the async runtime threads.
pub async fn prompt_tokens_async(p: &Prompt) -> Vec<u32> {
    let len = match p {
        Prompt::Tokens(_) => 0,
        Prompt::Text(s) => s.len(),
        Prompt::Chat(m) => m.iter().map(|(r, c)| r.len() + c.len()).sum(),
    };
    if len <= INLINE_TOKENIZE_BYTES {
        return prompt_tokens(p);
    }
    let owned = p.clone();
    match tokio::task::spawn_blocking(move || prompt_tokens(&owned)).await {
        Ok(t) => t,
        Err(_) => prompt_tokens(p),
    }
}

/// Filler words, each exactly one o200k token with its leading space, and staying one token
/// per word when concatenated (checked in tests), so a text of `n` pieces is `n` tokens.
const FILLER: [&str; 16] = [
    " the", " quick", " brown", " fox", " jumps", " over", " a", " lazy", " dog", " and", " runs",
    " far", " into", " the", " green", " field",
];

/// The `i`-th generated token's text (deterministic).
pub fn filler_piece(i: u32) -> &'static str {
    FILLER[i as usize % FILLER.len()]
}

/// `n` tokens of filler text.
pub fn filler_text(n: u32) -> String {
    (0..n).map(filler_piece).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filler_has_exact_token_counts() {
        for w in FILLER {
            assert_eq!(default_bpe().encode_ordinary(w).len(), 1, "{w:?}");
        }
        for n in [1, 2, 15, 16, 17, 100] {
            assert_eq!(
                default_bpe().encode_ordinary(&filler_text(n)).len(),
                n as usize
            );
        }
    }

    #[test]
    fn chat_rendering_and_token_passthrough() {
        assert_eq!(prompt_tokens(&Prompt::Tokens(vec![5, 6])), vec![5, 6]);
        let r = render_chat(&[("user".into(), "hi".into())]);
        assert_eq!(r, "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n");
        assert!(!prompt_tokens(&Prompt::Chat(vec![("user".into(), "hi".into())])).is_empty());
    }
}
