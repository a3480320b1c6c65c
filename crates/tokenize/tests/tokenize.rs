//! Loading real tokenizer files and chat templates from disk, as a Hugging Face model
//! directory lays them out, and the error paths.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use serde_json::json;
use switchyard_tokenize::testing::{SPECIAL_TOKENS, write_model_dir};
use switchyard_tokenize::{ChatTemplate, TokenizeError, Tokenizer, WordPieces};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn read_fixture(name: &str) -> String {
    std::fs::read_to_string(fixture(name)).unwrap()
}

/// One trained model directory shared by the tests (training takes a moment).
fn model_dir() -> &'static Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| {
        let d = tempfile::tempdir().unwrap();
        write_model_dir(d.path(), 800, Some(&read_fixture("qwen3.jinja"))).unwrap();
        d
    })
    .path()
}

#[test]
fn hf_tokenizer_from_dir_and_file_round_trips() {
    let dir = model_dir();
    let t = Tokenizer::load(dir).unwrap();
    let f = Tokenizer::load(dir.join("tokenizer.json")).unwrap();
    assert!(!t.is_builtin());
    assert!(t.name().ends_with("tokenizer.json"), "{}", t.name());
    assert_eq!(t.path(), Some(dir.join("tokenizer.json").as_path()));
    assert!((300..=800).contains(&t.vocab_size()), "{}", t.vocab_size());

    let text = "the quick router sends a request to the worker. Unseen: zebra 42 ünïcödé!";
    let ids = t.encode(text).unwrap();
    assert_eq!(ids, f.encode(text).unwrap());
    // Byte-level BPE: everything round-trips, unseen words included.
    assert_eq!(t.decode(&ids).unwrap(), text);
    // Frequent words of the training text are single tokens, rare ones are split.
    assert_eq!(t.count(" the").unwrap(), 1);
    assert_eq!(t.count(" router").unwrap(), 1);
    assert!(t.count(" zebra").unwrap() > 1);
    // No special tokens added (no BOS), but special-token text is recognised.
    assert_eq!(t.count("").unwrap(), 0);
    let im = t.encode("<|im_start|>user\nhi<|im_end|>").unwrap();
    let start = t.encode("<|im_start|>").unwrap();
    assert_eq!(start.len(), 1);
    assert!(t.is_special(start[0]));
    assert_eq!(im[0], start[0]);
    assert!(!t.is_special(t.encode(" the").unwrap()[0]));
    // Every special token is in the vocabulary.
    for s in SPECIAL_TOKENS {
        assert_eq!(t.count(s).unwrap(), 1, "{s}");
    }
    // Out-of-vocabulary ids are an error, not a panic.
    let e = t.decode(&[u32::MAX]).unwrap_err().to_string();
    assert!(e.contains("not in the vocabulary"), "{e}");
}

#[test]
fn o200k_builtin() {
    let t = Tokenizer::o200k();
    assert!(t.is_builtin());
    assert_eq!(t.name(), "o200k_base");
    assert_eq!(t.vocab_size(), 200_019);
    let text = "Hello, world! Switchyard routes requests.";
    let ids = t.encode(text).unwrap();
    assert_eq!(t.decode(&ids).unwrap(), text);
    assert_eq!(t.count(" the quick brown fox").unwrap(), 4);
    // Special tokens decode; unassigned ids and ids past the end are errors.
    assert_eq!(t.decode(&[199_999]).unwrap(), "<|endoftext|>");
    assert_eq!(t.decode(&[200_018]).unwrap(), "<|endofprompt|>");
    assert!(t.decode(&[199_997]).is_ok());
    assert!(t.decode(&[199_998]).is_err());
    assert!(t.decode(&[200_019]).is_err());
    assert!(Tokenizer::load("o200k_base").unwrap().is_builtin());
    assert!(Tokenizer::load("o200k").unwrap().is_builtin());
    // Special-token text is ordinary text for the built-in (as before).
    assert!(t.count("<|endoftext|>").unwrap() > 1);
}

#[test]
fn bad_paths_name_the_file_and_the_problem() {
    let d = tempfile::tempdir().unwrap();
    // Missing file.
    let missing = d.path().join("nope.json");
    let e = Tokenizer::load(&missing).unwrap_err();
    assert!(matches!(e, TokenizeError::Read { .. }), "{e:?}");
    assert!(e.to_string().contains("nope.json"), "{e}");
    // A directory without tokenizer.json.
    let e = Tokenizer::load(d.path()).unwrap_err().to_string();
    assert!(e.contains("no tokenizer.json"), "{e}");
    std::fs::write(d.path().join("tokenizer.model"), b"x").unwrap();
    let e = Tokenizer::load(d.path()).unwrap_err().to_string();
    assert!(e.contains("save_pretrained"), "{e}");
    // Garbage.
    let garbage = d.path().join("garbage.json");
    std::fs::write(&garbage, b"{\"model\": [1, 2,").unwrap();
    let e = Tokenizer::load(&garbage).unwrap_err();
    assert!(matches!(e, TokenizeError::Json { .. }), "{e:?}");
    assert!(e.to_string().contains("garbage.json"), "{e}");
    // JSON, but not a tokenizer.
    let wrong = d.path().join("wrong.json");
    std::fs::write(&wrong, br#"{"model": {"type": "Nonsense"}}"#).unwrap();
    let e = Tokenizer::load(&wrong).unwrap_err();
    assert!(matches!(e, TokenizeError::Tokenizer { .. }), "{e:?}");
    assert!(e.to_string().contains("wrong.json"), "{e}");

    // Templates: syntax error, missing template, bad config shapes.
    let bad = d.path().join("bad.jinja");
    std::fs::write(&bad, "{% for m in messages %}{{ m.content }").unwrap();
    let e = ChatTemplate::load(&bad).unwrap_err();
    assert!(matches!(e, TokenizeError::Template { .. }), "{e:?}");
    assert!(e.to_string().contains("bad.jinja"), "{e}");
    assert!(e.to_string().contains("syntax error"), "{e}");
    let e = ChatTemplate::load(d.path().join("absent.jinja"))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("absent.jinja") && e.contains("cannot read"),
        "{e}"
    );
    let cfg = d.path().join("tokenizer_config.json");
    std::fs::write(&cfg, r#"{"bos_token": "<s>"}"#).unwrap();
    let e = ChatTemplate::load(&cfg).unwrap_err().to_string();
    assert!(e.contains("no \"chat_template\""), "{e}");
    assert!(ChatTemplate::for_model(d.path()).unwrap().is_none());
    let e = ChatTemplate::load(d.path()).unwrap_err().to_string();
    assert!(e.contains("no chat template"), "{e}");
    std::fs::write(&cfg, r#"{"chat_template": 5}"#).unwrap();
    assert!(ChatTemplate::load(&cfg).is_err());
    std::fs::write(
        &cfg,
        r#"{"chat_template": [{"name": "tool_use", "template": "x"}]}"#,
    )
    .unwrap();
    let e = ChatTemplate::load(&cfg).unwrap_err().to_string();
    assert!(e.contains("tool_use") && e.contains("default"), "{e}");
    std::fs::write(&cfg, "not json").unwrap();
    let e = ChatTemplate::for_model(d.path()).unwrap_err();
    assert!(matches!(e, TokenizeError::Json { .. }), "{e:?}");
}

#[test]
fn qwen3_template_from_model_dir() {
    let t = ChatTemplate::for_model(model_dir()).unwrap().unwrap();
    assert!(t.name().ends_with("tokenizer_config.json"));
    let conv = [
        ("system", "You are helpful."),
        ("user", "Hi"),
        ("assistant", "<think>\nhmm\n</think>\n\nHello!"),
        ("user", "Bye"),
    ];
    let expected = "<|im_start|>system\nYou are helpful.<|im_end|>\n\
                    <|im_start|>user\nHi<|im_end|>\n\
                    <|im_start|>assistant\nHello!<|im_end|>\n\
                    <|im_start|>user\nBye<|im_end|>\n\
                    <|im_start|>assistant\n";
    assert_eq!(t.render(&conv).unwrap(), expected);
    // Same through the JSON path, content as a list of text parts.
    let msgs = vec![
        json!({"role": "system", "content": "You are helpful."}),
        json!({"role": "user", "content": [{"type": "text", "text": "Hi"}]}),
        json!({"role": "assistant", "content": "<think>\nhmm\n</think>\n\nHello!"}),
        json!({"role": "user", "content": [{"type": "text", "text": "Bye"}]}),
    ];
    assert_eq!(t.render_json(&msgs, None).unwrap(), expected);
    // chat_template_kwargs.
    let kw = json!({"enable_thinking": false});
    let r = t.render_json(&msgs[3..], kw.as_object()).unwrap();
    assert_eq!(
        r,
        "<|im_start|>user\nBye<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
    );
    // Tools and tool calls: tojson with Python's separators and no HTML escaping.
    let kw =
        json!({"tools": [{"type": "function", "function": {"name": "f", "description": "a < b"}}]});
    let msgs = vec![
        json!({"role": "user", "content": "call f"}),
        json!({"role": "assistant", "content": null, "tool_calls": [{"function": {"name": "f", "arguments": {"x": 1}}}]}),
        json!({"role": "tool", "content": "42"}),
    ];
    let r = t.render_json(&msgs, kw.as_object()).unwrap();
    assert!(
        r.contains(r#"{"function": {"description": "a < b", "name": "f"}, "type": "function"}"#),
        "{r}"
    );
    assert!(
        r.contains("<tool_call>\n{\"name\": \"f\", \"arguments\": {\"x\": 1}}\n</tool_call>"),
        "{r}"
    );
    assert!(
        r.ends_with("<|im_start|>user\n<tool_response>\n42\n</tool_response><|im_end|>\n<|im_start|>assistant\n"),
        "{r}"
    );
    // The rendered prompt tokenizes with the special tokens as single ids.
    let tok = Tokenizer::load(model_dir()).unwrap();
    let ids = tok.encode(&t.render(&[("user", "Hi")]).unwrap()).unwrap();
    let im_start = tok.encode("<|im_start|>").unwrap()[0];
    assert_eq!(ids.iter().filter(|&&i| i == im_start).count(), 2);
}

#[test]
fn llama3_template_with_bos_date_and_tools() {
    let d = tempfile::tempdir().unwrap();
    // The list-of-templates form, with the default picked.
    let config = json!({
        "bos_token": "<|begin_of_text|>",
        "eos_token": "<|eot_id|>",
        "chat_template": [
            {"name": "tool_use", "template": "unused"},
            {"name": "default", "template": read_fixture("llama3.jinja")},
        ],
    });
    std::fs::write(d.path().join("tokenizer_config.json"), config.to_string()).unwrap();
    let t = ChatTemplate::load(d.path()).unwrap();
    let msgs = vec![
        json!({"role": "system", "content": "  Be brief. "}),
        json!({"role": "user", "content": "Hi "}),
    ];
    let kw = json!({"date_string": "26 Jul 2024"});
    assert_eq!(
        t.render_json(&msgs, kw.as_object()).unwrap(),
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n\
         Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\n\
         Be brief.<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>\
         <|start_header_id|>assistant<|end_header_id|>\n\n"
    );
    // Without date_string: strftime_now gives today's date ("%d %b %Y").
    let r = t.render(&[("user", "Hi")]).unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let today = switchyard_tokenize::strftime("%d %b %Y", now).unwrap();
    assert!(r.contains(&format!("Today Date: {today}\n")), "{r}");
    // Tools go into the first user message, pretty-printed.
    let kw = json!({"date_string": "1 Jan 2025", "tools": [{"name": "f", "parameters": {}}]});
    let r = t
        .render_json(&[json!({"role": "user", "content": "go"})], kw.as_object())
        .unwrap();
    assert!(r.contains("Environment: ipython\n"), "{r}");
    assert!(
        r.contains("{\n    \"name\": \"f\",\n    \"parameters\": {}\n}\n\ngo<|eot_id|>"),
        "{r}"
    );
    // raise_exception from the template: a render error naming the template.
    let kw = json!({"tools": [{"name": "f"}]});
    let only_system = [json!({"role": "system", "content": "s"})];
    let e = t.render_json(&only_system, kw.as_object()).unwrap_err();
    assert!(matches!(e, TokenizeError::Render { .. }), "{e:?}");
    let e = e.to_string();
    assert!(e.contains("no first user message"), "{e}");
    assert!(e.contains("tokenizer_config.json"), "{e}");

    // A standalone .jinja file picks BOS/EOS from the tokenizer_config.json next to it.
    let jinja = d.path().join("chat_template.jinja");
    std::fs::write(
        &jinja,
        "{{ bos_token }}{{ messages[0].content }}{{ eos_token }}",
    )
    .unwrap();
    let t = ChatTemplate::load(&jinja).unwrap();
    assert_eq!(
        t.render(&[("user", "x")]).unwrap(),
        "<|begin_of_text|>x<|eot_id|>"
    );
    // ... and chat_template.jinja takes precedence in the directory.
    let t = ChatTemplate::for_model(d.path()).unwrap().unwrap();
    assert!(t.name().ends_with("chat_template.jinja"));
}

#[test]
fn role_alternation_errors_and_bad_messages() {
    // Mistral/Llama 2 style: rejects non-alternating conversations.
    let src = "{{ bos_token }}{% for message in messages %}\
        {% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}\
        {{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}\
        {% endif %}\
        {% if message['role'] == 'user' %}{{ '[INST] ' + message['content'].strip() + ' [/INST]' }}\
        {% else %}{{ message['content'] + eos_token }}{% endif %}{% endfor %}";
    let t = ChatTemplate::from_source(src, "mistral", Some("<s>"), Some("</s>")).unwrap();
    assert_eq!(
        t.render(&[("user", " a "), ("assistant", "b"), ("user", "c")])
            .unwrap(),
        "<s>[INST] a [/INST]b</s>[INST] c [/INST]"
    );
    let e = t
        .render(&[("user", "a"), ("user", "b")])
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("roles must alternate") && e.contains("mistral"),
        "{e}"
    );

    let chatml = ChatTemplate::default();
    for bad in [
        json!("hi"),
        json!({"content": "no role"}),
        json!({"role": "user", "content": 5}),
        json!({"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}),
        json!({"role": "user", "content": [{"text": "no type"}]}),
    ] {
        let e = chatml
            .render_json(std::slice::from_ref(&bad), None)
            .unwrap_err();
        assert!(matches!(e, TokenizeError::Messages(_)), "{bad}: {e:?}");
    }
}

#[test]
fn chatml_default() {
    let t = ChatTemplate::chatml();
    assert!(t.is_builtin());
    assert_eq!(
        t.render(&[("system", "s"), ("user", "hi")]).unwrap(),
        "<|im_start|>system\ns<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    );
    let j = t
        .render_json(
            &[json!({"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]})],
            None,
        )
        .unwrap();
    assert_eq!(
        j,
        "<|im_start|>user\na\nb<|im_end|>\n<|im_start|>assistant\n"
    );
}

#[test]
fn word_pieces_give_exact_counts() {
    for tok in [Tokenizer::load(model_dir()).unwrap(), Tokenizer::o200k()] {
        let w = WordPieces::build(&tok).unwrap();
        assert!(w.exact, "{}", tok.name());
        assert!(w.len() >= 100, "{}: {} words", tok.name(), w.len());
        assert_eq!(w.ids.len(), w.words.len());
        // Ids decode to their words, and any sequence of them is one token per word, with
        // each word's token unchanged by its neighbours.
        let pick: Vec<usize> = (0..500).map(|i| (i * 7919 + 13) % w.len()).collect();
        let ids: Vec<u32> = pick.iter().map(|&i| w.ids[i]).collect();
        let text: String = pick.iter().map(|&i| w.words[i].as_str()).collect();
        assert_eq!(tok.decode(&ids).unwrap(), text);
        assert_eq!(tok.encode(&format!("x{text}")).unwrap()[1..], ids[..]);
        assert!(w.words.iter().all(|s| s.starts_with(' ') && s.len() >= 3));
        // Bare words: one token at the start of a text, and the rest still one per word.
        assert!(w.bare.len() >= 20, "{}: {} bare", tok.name(), w.bare.len());
        for &b in w.bare.iter().take(200) {
            let first = &w.words[b as usize][1..];
            assert_eq!(
                tok.count(&format!("{first}{text}")).unwrap(),
                501,
                "{first}"
            );
        }
    }
    let o = WordPieces::build(&Tokenizer::o200k()).unwrap();
    assert!(o.len() > 10_000, "{}", o.len());
}

#[test]
fn word_pieces_with_a_sentencepiece_style_tokenizer() {
    // Llama 2 / Mistral style: Metaspace ("▁word") instead of byte-level, a prefix space on
    // the first word only.
    use tokenizers::decoders::metaspace::Metaspace as MetaDec;
    use tokenizers::models::TrainerWrapper;
    use tokenizers::models::bpe::{BPE, BpeTrainerBuilder};
    use tokenizers::pre_tokenizers::metaspace::{Metaspace, PrependScheme};
    let mut hf = tokenizers::Tokenizer::new(BPE::default());
    hf.with_pre_tokenizer(Some(Metaspace::new('▁', PrependScheme::First, true)));
    hf.with_decoder(Some(MetaDec::new('▁', PrependScheme::First, true)));
    let mut trainer: TrainerWrapper = BpeTrainerBuilder::new()
        .vocab_size(600)
        .show_progress(false)
        .build()
        .into();
    let corpus = switchyard_tokenize::testing::corpus(2000);
    hf.train(&mut trainer, corpus.iter()).unwrap();
    let tok = Tokenizer::from_hf(hf, "metaspace-bpe");
    let w = WordPieces::build(&tok).unwrap();
    assert!(w.exact);
    assert!(w.len() >= 100, "{}", w.len());
    let pick: Vec<usize> = (0..300).map(|i| (i * 31 + 7) % w.len()).collect();
    let ids: Vec<u32> = pick.iter().map(|&i| w.ids[i]).collect();
    let text: String = pick.iter().map(|&i| w.words[i].as_str()).collect();
    // Mid-text, one token per word; at the very start the text's leading space is dropped by
    // the decoder, and the tokenizer puts it back.
    assert_eq!(tok.encode(&format!("x{text}")).unwrap()[1..], ids[..]);
    assert_eq!(tok.encode(text.trim_start()).unwrap(), ids);
    assert_eq!(tok.decode(&ids).unwrap(), text.trim_start());
}
