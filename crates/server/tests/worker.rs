//! `worker` over real HTTP and ZMQ on loopback.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;
use switchyard_kv::BlockHasher;
use switchyard_kv::wire::{WireEvent, decode_batch};
use switchyard_server::events::split_frames;
use switchyard_server::tokenizer::default_bpe;
use zeromq::{Socket, SocketRecv};

#[tokio::test]
async fn completions_chat_usage_and_cache_hits() {
    let w = worker(1e6, false).await;
    let base = w.url();
    let (s, body) = get(&format!("{base}/v1/models")).await;
    assert_eq!(s, 200);
    let models: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(models["data"][0]["id"], "Qwen3-32B");

    // Token-id prompt, non-streaming: exact usage, filler text of exactly 5 tokens.
    let req = format!(
        r#"{{"model":"Qwen3-32B","prompt":{},"max_tokens":5}}"#,
        tokens(1000, 64)
    );
    let (s, v, _) = post(&format!("{base}/v1/completions"), &req).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["object"], "text_completion");
    assert_eq!(v["usage"]["prompt_tokens"], 64);
    assert_eq!(v["usage"]["completion_tokens"], 5);
    assert_eq!(v["usage"]["total_tokens"], 69);
    assert_eq!(v["usage"]["prompt_tokens_details"]["cached_tokens"], 0);
    assert_eq!(v["choices"][0]["finish_reason"], "length");
    let text = v["choices"][0]["text"].as_str().unwrap();
    assert_eq!(default_bpe().encode_ordinary(text).len(), 5);

    // Same prompt again: its 4 full blocks (16 tokens each) are cached; like vLLM, the last
    // block is recomputed (at least one prompt token must be).
    let (_, v, _) = post(&format!("{base}/v1/completions"), &req).await;
    assert_eq!(v["usage"]["prompt_tokens_details"]["cached_tokens"], 48);

    // Streaming chat with usage.
    let req = r#"{"model":"Qwen3-32B","messages":[{"role":"user","content":"Hello there"}],
        "max_completion_tokens":7,"stream":true,"stream_options":{"include_usage":true}}"#;
    let r = client()
        .post(format!("{base}/v1/chat/completions"))
        .header("content-type", "application/json")
        .body(req)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "text/event-stream");
    let body = r.text().await.unwrap();
    let data = sse_data(&body);
    assert_eq!(data.last().unwrap(), "[DONE]");
    let chunks: Vec<Value> = data[..data.len() - 1]
        .iter()
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    // role chunk + 7 tokens + usage chunk
    assert_eq!(chunks.len(), 9);
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let content: String = chunks[1..8]
        .iter()
        .map(|c| c["choices"][0]["delta"]["content"].as_str().unwrap())
        .collect();
    assert_eq!(default_bpe().encode_ordinary(&content).len(), 7);
    assert_eq!(chunks[7]["choices"][0]["finish_reason"], "length");
    assert_eq!(chunks[8]["usage"]["completion_tokens"], 7);
    assert!(chunks[8]["choices"].as_array().unwrap().is_empty());

    let (s, m) = get(&format!("{base}/metrics")).await;
    assert_eq!(s, 200);
    assert!(
        m.contains("switchyard_worker_generation_tokens_total 17"),
        "{m}"
    );
    assert!(m.contains("switchyard_worker_num_requests_running 0"));
    assert!(m.contains("switchyard_worker_prefix_cache_hit_rate"));
}

#[tokio::test]
async fn bad_input_gets_openai_errors() {
    let w = worker(1e6, false).await;
    let base = w.url();
    let url = format!("{base}/v1/completions");
    let (_, models) = get(&format!("{base}/v1/models")).await;
    let max_len = serde_json::from_str::<Value>(&models).unwrap()["data"][0]["max_model_len"]
        .as_u64()
        .unwrap();
    let over = format!(r#"{{"model":"Qwen3-32B","prompt":"hi","max_tokens":{max_len}}}"#);
    let fits = format!(
        r#"{{"model":"Qwen3-32B","prompt":[1],"max_tokens":{}}}"#,
        max_len - 1
    );
    let cases: Vec<(&str, u16)> = vec![
        ("{not json", 400),
        (r#"{"prompt":"hi"}"#, 422),
        (r#"{"model":"Qwen3-32B","prompt":5}"#, 422),
        (r#"{"model":"nope","prompt":"hi"}"#, 404),
        (
            r#"{"model":"Qwen3-32B","prompt":"hi","max_tokens":-3}"#,
            400,
        ),
        (
            r#"{"model":"Qwen3-32B","prompt":"hi","max_tokens":1000000000}"#,
            400,
        ),
        // One token over the context length.
        (&over, 400),
    ];
    for (body, want) in cases {
        let (s, v, _) = post(&url, body).await;
        assert_eq!(s, want, "{body} -> {v}");
        assert!(
            v["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "{v}"
        );
    }
    let (s, v, _) = post(
        &format!("{base}/v1/chat/completions"),
        r#"{"model":"Qwen3-32B"}"#,
    )
    .await;
    assert_eq!(s, 422);
    assert_eq!(v["error"]["param"], "messages");
    let (s, _, _) = post(&format!("{base}/v1/nothing"), "{}").await;
    assert_eq!(s, 404);
    let huge = format!(
        r#"{{"model":"Qwen3-32B","prompt":"{}"}}"#,
        "a".repeat(17 << 20)
    );
    let (s, v, _) = post(&url, &huge).await;
    assert_eq!(s, 413);
    assert_eq!(v["error"]["type"], "request_too_large", "{v}");
    // Within the context but larger than this engine's whole KV cache (4096 blocks): the
    // engine's own rejection, as a 400.
    let (s, v, _) = post(&url, &fits).await;
    if max_len > 4096 * 16 {
        assert_eq!(s, 400, "{v}");
        assert!(
            v["error"]["message"]
                .as_str()
                .unwrap()
                .contains("KV blocks"),
            "{v}"
        );
    }
    // Still serving.
    let (s, _, _) = post(
        &url,
        r#"{"model":"Qwen3-32B","prompt":"hi","max_tokens":2}"#,
    )
    .await;
    assert_eq!(s, 200);
}

#[tokio::test]
async fn publishes_vllm_kv_events_with_token_ids() {
    let w = worker(1e6, true).await;
    let ep = w.kv_events.clone().unwrap();
    let mut sub = zeromq::SubSocket::new();
    sub.connect(&ep).await.unwrap();
    sub.subscribe("").await.unwrap();
    // PUB/SUB joins are asynchronous: send requests until events flow.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut stored = None;
    let mut last_seq = None;
    let mut prompts: Vec<Vec<u32>> = Vec::new();
    while stored.is_none() && Instant::now() < deadline {
        // Fresh prompts: a repeated one would hit the cache and store nothing.
        let base = 500 + 100 * prompts.len() as u32;
        let prompt: Vec<u32> = (base..base + 48).collect(); // 3 full blocks
        let body = format!(
            r#"{{"model":"Qwen3-32B","prompt":{},"max_tokens":2}}"#,
            serde_json::to_string(&prompt).unwrap()
        );
        prompts.push(prompt);
        let (s, _, _) = post(&format!("{}/v1/completions", w.url()), &body).await;
        assert_eq!(s, 200);
        while let Ok(Ok(msg)) = tokio::time::timeout(Duration::from_millis(200), sub.recv()).await {
            let (seq, payload) = split_frames(msg).unwrap();
            if let Some(l) = last_seq {
                assert_eq!(seq, l + 1);
            }
            last_seq = Some(seq);
            let d = decode_batch(&payload).unwrap();
            assert_eq!(d.batch.dp_rank, Some(0));
            for e in d.batch.events {
                if let WireEvent::BlockStored { .. } = e {
                    stored = Some(e);
                }
            }
        }
    }
    let Some(WireEvent::BlockStored {
        block_hashes,
        parent_block_hash,
        token_ids,
        block_size,
        medium,
        ..
    }) = stored
    else {
        panic!("no BlockStored event received");
    };
    assert_eq!(block_size, 16);
    assert_eq!(parent_block_hash, None);
    assert!(prompts.contains(&token_ids), "{token_ids:?}");
    assert_eq!(block_hashes, BlockHasher::new(16).unwrap().hash(&token_ids));
    assert_eq!(medium.as_deref(), Some("GPU"));
}

#[tokio::test]
async fn client_disconnect_aborts_the_engine_request() {
    // Real time: 1000 tokens take seconds.
    let w = worker(1.0, false).await;
    let r = client()
        .post(format!("{}/v1/completions", w.url()))
        .header("content-type", "application/json")
        .body(r#"{"model":"Qwen3-32B","prompt":"hello","max_tokens":1000,"stream":true}"#)
        .send()
        .await
        .unwrap();
    let mut r = r;
    let first = r.chunk().await.unwrap().unwrap();
    assert!(first.starts_with(b"data: "));
    let (_, m) = get(&format!("{}/metrics", w.url())).await;
    assert!(
        m.contains("switchyard_worker_num_requests_running 1"),
        "{m}"
    );
    drop(r);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (_, m) = get(&format!("{}/metrics", w.url())).await;
        if m.contains("switchyard_worker_num_requests_running 0") {
            break;
        }
        assert!(Instant::now() < deadline, "request still running: {m}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
