#![allow(dead_code)]
//! Helpers shared by the loopback tests.

use std::time::Duration;

use serde_json::Value;
use switchyard_engine::EngineConfig;
use switchyard_server::worker::{WorkerArgs, WorkerHandle, start_worker};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A small, fast engine: Qwen3-32B TP2 on H200 with a tiny KV cache so tests stay cheap.
pub fn engine_cfg() -> EngineConfig {
    EngineConfig {
        num_gpu_blocks_override: Some(4096),
        ..EngineConfig::default()
    }
}

pub async fn worker(speedup: f64, events: bool) -> WorkerHandle {
    let args = WorkerArgs {
        speedup,
        kv_events: events.then(|| "tcp://127.0.0.1:0".to_string()),
        ..WorkerArgs::default()
    };
    start_worker(&args, engine_cfg())
        .await
        .expect("worker starts")
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

pub async fn post(url: &str, body: &str) -> (u16, Value, reqwest::header::HeaderMap) {
    let r = client()
        .post(url)
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    let text = r.text().await.unwrap();
    let v = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, v, headers)
}

pub async fn get(url: &str) -> (u16, String) {
    let r = client().get(url).send().await.unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

/// The `data:` payloads of an SSE body.
pub fn sse_data(body: &str) -> Vec<String> {
    body.split("\n\n")
        .filter_map(|e| e.strip_prefix("data: "))
        .map(String::from)
        .collect()
}

/// A prompt of `n` token ids starting at `base`.
pub fn tokens(base: u32, n: u32) -> String {
    let v: Vec<String> = (base..base + n).map(|t| t.to_string()).collect();
    format!("[{}]", v.join(","))
}

/// Healthy by its model list, but every generation fails with 500.
pub async fn failing_upstream() -> String {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut buf = vec![0u8; 1 << 20];
                let n = s.read(&mut buf).await.unwrap_or(0);
                let get = buf[..n].starts_with(b"GET");
                let (status, b) = if get {
                    (
                        "200 OK",
                        r#"{"object":"list","data":[{"id":"Qwen3-32B","object":"model"}]}"#,
                    )
                } else {
                    (
                        "500 Internal Server Error",
                        r#"{"error":{"message":"boom"}}"#,
                    )
                };
                let resp = format!(
                    "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{b}",
                    b.len()
                );
                let _ = s.write_all(resp.as_bytes()).await;
            });
        }
    });
    format!("http://{addr}")
}

/// A loopback port free at the time of asking.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One value of a Prometheus metric at `{base}/metrics` (`name` with its labels, if any);
/// panics when the page has no such line.
pub async fn metric(base: &str, name: &str) -> f64 {
    let (_, text) = get(&format!("{base}/metrics")).await;
    text.lines()
        .find_map(|l| {
            // The whole name: `x_total` must not match `x_total_sum`.
            let rest = l.strip_prefix(name.trim_end())?.strip_prefix(' ')?;
            rest.trim().parse().ok()
        })
        .unwrap_or_else(|| panic!("no metric {name} in\n{text}"))
}

/// `POST {base}/v1/completions` of a token-id prompt with `max_tokens: 1`.
pub async fn complete_ids(base: &str, prompt: &[u32]) -> (u16, Value, reqwest::header::HeaderMap) {
    post(
        &format!("{base}/v1/completions"),
        &format!(
            r#"{{"model":"Qwen3-32B","prompt":{},"max_tokens":1}}"#,
            serde_json::to_string(prompt).unwrap()
        ),
    )
    .await
}
