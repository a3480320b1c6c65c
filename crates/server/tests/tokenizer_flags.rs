//! `--tokenizer` / `--chat-template` on `serve` and `worker`: text prompts are tokenized with
//! the model's own tokenizer, so the router's block hashes match the engine's KV events.

mod common;

use std::time::Duration;

use common::{client, engine_cfg};
use serde_json::Value;
use switchyard_server::ServeArgs;
use switchyard_server::serve::start_serve;
use switchyard_server::tokenizer::Tokenization;
use switchyard_server::worker::{WorkerArgs, start_worker};

const TEMPLATE: &str = "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content | trim }}<|im_end|>\n{% endfor %}\
    {% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}";

async fn post(url: &str, body: &str) -> (u16, Value, u32) {
    let r = client()
        .post(url)
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    let st = r.status().as_u16();
    let overlap = r
        .headers()
        .get("x-switchyard-overlap-blocks")
        .and_then(|v| v.to_str().ok()?.parse().ok())
        .unwrap_or(0);
    (st, r.json().await.unwrap_or(Value::Null), overlap)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn model_tokenizer_on_serve_and_worker_makes_text_prompts_hit_the_cache() {
    let dir = tempfile::tempdir().unwrap();
    switchyard_tokenize::testing::write_model_dir(dir.path(), 600, Some(TEMPLATE)).unwrap();
    let model_tok = Tokenization::load(Some(dir.path()), None).unwrap();
    let w = start_worker(
        &WorkerArgs {
            speedup: 1e4,
            kv_events: Some("tcp://127.0.0.1:0".into()),
            tokenizer: Some(dir.path().to_path_buf()),
            ..WorkerArgs::default()
        },
        engine_cfg(),
    )
    .await
    .unwrap();
    let spec = format!("{},kv-events={}", w.url(), w.kv_events.clone().unwrap());
    let serve = |tokenizer: Option<std::path::PathBuf>| {
        let spec = spec.clone();
        async move {
            start_serve(&ServeArgs {
                workers: vec![spec],
                router: Some("kv".into()),
                tokenizer,
                ..ServeArgs::default()
            })
            .await
            .unwrap()
        }
    };
    let matched = serve(Some(dir.path().to_path_buf())).await;
    let builtin = serve(None).await;
    tokio::time::sleep(Duration::from_millis(300)).await; // KV-event subscriptions

    // Chat: rendered with the model directory's template, counted with its tokenizer.
    let chat = r#"{"model":"Qwen3-32B","max_tokens":2,"messages":[{"role":"user","content":"  the router  "}]}"#;
    let (st, v, _) = post(&format!("{}/v1/chat/completions", matched.url()), chat).await;
    assert_eq!(st, 200, "{v}");
    let want = model_tok
        .prompt_tokens(&switchyard_server::openai::Prompt::Chat(vec![(
            "user".into(),
            "  the router  ".into(),
        )]))
        .unwrap();
    assert_eq!(v["usage"]["prompt_tokens"], want.len());

    // A long text prompt, twice: with the engine's tokenizer the router's hashes match the
    // engine's events, so the second request finds the first one's blocks...
    let text = format!(
        r#"{{"model":"Qwen3-32B","max_tokens":2,"prompt":"{}"}}"#,
        " the router sends requests".repeat(60)
    );
    let url = format!("{}/v1/completions", matched.url());
    assert_eq!(post(&url, &text).await.0, 200);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (st, _, overlap) = post(&url, &text).await;
    assert_eq!(st, 200);
    assert!(
        overlap >= 10,
        "overlap {overlap} blocks with matching tokenizers"
    );
    // ... while a router tokenizing with another vocabulary never does.
    let (st, _, overlap) = post(&format!("{}/v1/completions", builtin.url()), &text).await;
    assert_eq!(st, 200);
    assert_eq!(
        overlap, 0,
        "mismatched tokenizers cannot match cache blocks"
    );

    // Bad paths fail at start, naming the file; a template that rejects the conversation
    // is the client's 400.
    let e = start_serve(&ServeArgs {
        tokenizer: Some(dir.path().join("missing")),
        ..ServeArgs::default()
    })
    .await
    .err()
    .expect("missing tokenizer is an error");
    assert!(e.to_string().contains("missing"), "{e}");
    let jinja = dir.path().join("strict.jinja");
    std::fs::write(&jinja, "{{ raise_exception('no system messages') }}").unwrap();
    let strict = start_serve(&ServeArgs {
        workers: vec![w.url()],
        chat_template: Some(jinja),
        ..ServeArgs::default()
    })
    .await
    .unwrap();
    let (st, v, _) = post(&format!("{}/v1/chat/completions", strict.url()), chat).await;
    assert_eq!(st, 400, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("no system messages"),
        "{v}"
    );
}
