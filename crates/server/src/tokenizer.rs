//! Tokenization of prompts: the default tokenizer (tiktoken's o200k_base, bundled: no
//! download) with the default chat rendering (ChatML), or a model's own Hugging Face tokenizer
//! and chat template ([`Tokenization`], from `--tokenizer PATH` / `--chat-template PATH`); and
//! the simulated worker's deterministic filler text.

use std::path::Path;
use std::sync::Arc;

use tiktoken_rs::CoreBPE;

pub use switchyard_tokenize::{ChatTemplate, TokenizeError, Tokenizer};

use crate::openai::Prompt;

/// The tokenizer and chat template a service uses for text prompts. Cheap to clone (two
/// `Arc`s): hold one in the service state.
#[derive(Clone, Debug)]
pub struct Tokenization {
    pub tokenizer: Arc<Tokenizer>,
    pub template: Arc<ChatTemplate>,
}

impl Default for Tokenization {
    fn default() -> Self {
        Tokenization::builtin()
    }
}

impl Tokenization {
    /// o200k_base and ChatML: what [`prompt_tokens`] does.
    pub fn builtin() -> Tokenization {
        Tokenization {
            tokenizer: Arc::new(Tokenizer::o200k()),
            template: Arc::new(ChatTemplate::chatml()),
        }
    }

    /// From the command line: `tokenizer` is a `tokenizer.json` or a Hugging Face model
    /// directory (`None` or `o200k_base`: the built-in); `chat_template` a `.jinja` file, a
    /// `tokenizer_config.json` or a model directory (`None`: the template that comes with the
    /// tokenizer, if its directory has one, else ChatML).
    pub fn load(
        tokenizer: Option<&Path>,
        chat_template: Option<&Path>,
    ) -> Result<Tokenization, TokenizeError> {
        let tok = match tokenizer {
            Some(p) => Tokenizer::load(p)?,
            None => Tokenizer::o200k(),
        };
        let template = match (chat_template, tok.path()) {
            (Some(t), _) => ChatTemplate::load(t)?,
            (None, Some(json)) => ChatTemplate::for_model(json)?.unwrap_or_default(),
            (None, None) => ChatTemplate::chatml(),
        };
        Ok(Tokenization {
            tokenizer: Arc::new(tok),
            template: Arc::new(template),
        })
    }

    /// One line for the startup log: `tokenizer o200k_base, chat template chatml (built-in)`.
    pub fn describe(&self) -> String {
        format!(
            "tokenizer {}, chat template {}",
            self.tokenizer.name(),
            self.template.name()
        )
    }

    /// [`prompt_tokens_with`] with this tokenizer and template.
    pub fn prompt_tokens(&self, p: &Prompt) -> Result<Vec<u32>, TokenizeError> {
        prompt_tokens_with(&self.tokenizer, &self.template, p)
    }

    /// [`prompt_tokens_with_async`] with this tokenizer and template.
    pub async fn prompt_tokens_async(&self, p: &Prompt) -> Result<Vec<u32>, TokenizeError> {
        prompt_tokens_with_async(&self.tokenizer, &self.template, p).await
    }
}

/// Token ids of a prompt with a given tokenizer and chat template (token-id prompts pass
/// through; chat messages are rendered with the template, generation prompt included). Errors
/// are the client's (a template rejecting the conversation, text the tokenizer cannot encode):
/// answer 400 with the message.
pub fn prompt_tokens_with(
    tok: &Tokenizer,
    tmpl: &ChatTemplate,
    p: &Prompt,
) -> Result<Vec<u32>, TokenizeError> {
    match p {
        Prompt::Tokens(t) => Ok(t.clone()),
        Prompt::Text(s) => tok.encode(s),
        Prompt::Chat(m) => tok.encode(&tmpl.render(m)?),
    }
}

/// [`prompt_tokens_with`] that keeps long texts off the async runtime threads.
pub async fn prompt_tokens_with_async(
    tok: &Arc<Tokenizer>,
    tmpl: &Arc<ChatTemplate>,
    p: &Prompt,
) -> Result<Vec<u32>, TokenizeError> {
    if prompt_bytes(p) <= INLINE_TOKENIZE_BYTES {
        return prompt_tokens_with(tok, tmpl, p);
    }
    let (t, m, owned) = (Arc::clone(tok), Arc::clone(tmpl), p.clone());
    match tokio::task::spawn_blocking(move || prompt_tokens_with(&t, &m, &owned)).await {
        Ok(r) => r,
        Err(_) => prompt_tokens_with(tok, tmpl, p),
    }
}

/// Render chat messages with a template (the model's, or [`ChatTemplate::chatml`], which
/// gives exactly [`render_chat`]).
pub fn render_chat_with(
    tmpl: &ChatTemplate,
    messages: &[(String, String)],
) -> Result<String, TokenizeError> {
    tmpl.render(messages)
}

fn prompt_bytes(p: &Prompt) -> usize {
    match p {
        Prompt::Tokens(_) => 0,
        Prompt::Text(s) => s.len(),
        Prompt::Chat(m) => m.iter().map(|(r, c)| r.len() + c.len()).sum(),
    }
}

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
    if prompt_bytes(p) <= INLINE_TOKENIZE_BYTES {
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

    #[test]
    fn builtin_tokenization_matches_the_default_path() {
        let t = Tokenization::builtin();
        let chat = Prompt::Chat(vec![
            ("system".into(), "be brief".into()),
            ("user".into(), "hello there".into()),
        ]);
        for p in [
            Prompt::Tokens(vec![1, 2, 3]),
            Prompt::Text("The quick brown fox.".into()),
            chat,
        ] {
            assert_eq!(t.prompt_tokens(&p).unwrap(), prompt_tokens(&p));
        }
        let m = vec![("user".to_string(), "hi".to_string())];
        assert_eq!(render_chat_with(&t.template, &m).unwrap(), render_chat(&m));
        assert_eq!(
            t.describe(),
            "tokenizer o200k_base, chat template chatml (built-in)"
        );
    }

    #[tokio::test]
    async fn model_directory_tokenizer_and_template() {
        let dir = tempfile::tempdir().unwrap();
        let template = "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content | trim }}<|im_end|>\n{% endfor %}\
            {% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}";
        switchyard_tokenize::testing::write_model_dir(dir.path(), 600, Some(template)).unwrap();
        let t = Tokenization::load(Some(dir.path()), None).unwrap();
        assert!(!t.tokenizer.is_builtin());
        assert!(t.template.name().ends_with("tokenizer_config.json"));
        let p = Prompt::Chat(vec![("user".into(), "  the router  ".into())]);
        let ids = t.prompt_tokens(&p).unwrap();
        // <|im_start|> user \n the router <|im_end|> \n <|im_start|> assistant \n
        let text = t.tokenizer.decode(&ids).unwrap();
        assert_eq!(
            text,
            "<|im_start|>user\nthe router<|im_end|>\n<|im_start|>assistant\n"
        );
        let im_start = t.tokenizer.encode("<|im_start|>").unwrap();
        assert_eq!(ids[0], im_start[0]);
        // Long prompts take the blocking pool and give the same answer.
        let long = Prompt::Text(" the router".repeat(5000));
        let a = t.prompt_tokens_async(&long).await.unwrap();
        assert_eq!(a, t.prompt_tokens(&long).unwrap());
        assert_eq!(a.len(), 10_000);
        // An explicit --chat-template wins; a broken one is an error naming the file.
        let jinja = dir.path().join("other.jinja");
        std::fs::write(&jinja, "{{ messages[0].content }}").unwrap();
        let t = Tokenization::load(Some(dir.path()), Some(&jinja)).unwrap();
        assert_eq!(t.template.render(&[("user", "x")]).unwrap(), "x");
        std::fs::write(&jinja, "{{ messages[0].content ").unwrap();
        let e = Tokenization::load(Some(dir.path()), Some(&jinja)).unwrap_err();
        assert!(e.to_string().contains("other.jinja"), "{e}");
        let e = Tokenization::load(Some(&dir.path().join("missing")), None).unwrap_err();
        assert!(e.to_string().contains("missing"), "{e}");
        // A template that rejects the conversation: an error for the client.
        std::fs::write(&jinja, "{{ raise_exception('no system messages') }}").unwrap();
        let t = Tokenization::load(None, Some(&jinja)).unwrap();
        assert!(t.tokenizer.is_builtin());
        let e = t.prompt_tokens(&p).unwrap_err().to_string();
        assert!(e.contains("no system messages"), "{e}");
    }
}
