//! `serve` in front of simulated workers, over real HTTP and ZMQ on loopback.

mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;
use switchyard_server::serve::{ServeArgs, start_serve};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn args(workers: Vec<String>, policy: &str) -> ServeArgs {
    ServeArgs {
        workers,
        router: Some(policy.into()),
        health_interval: 0.2,
        expose_worker_urls: true,
        ..ServeArgs::default()
    }
}

async fn workers_json(base: &str) -> Value {
    let (s, body) = get(&format!("{base}/v1/workers")).await;
    assert_eq!(s, 200);
    serde_json::from_str(&body).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kv_aware_routing_follows_the_cache() {
    let ws = [worker(1e6, true).await, worker(1e6, true).await];
    let specs = ws
        .iter()
        .map(|w| format!("{},kv-events={}", w.url(), w.kv_events.as_ref().unwrap()))
        .collect();
    let s = start_serve(&args(specs, "kv")).await.unwrap();
    let base = s.url();
    // A long shared prefix (64 blocks), then per-request suffixes.
    let prefix: Vec<u32> = (10_000..11_024).collect();
    let req = |suffix: u32| {
        let mut p = prefix.clone();
        p.extend(suffix * 100..suffix * 100 + 40);
        format!(
            r#"{{"model":"Qwen3-32B","prompt":{},"max_tokens":3}}"#,
            serde_json::to_string(&p).unwrap()
        )
    };
    // PUB/SUB drops events until the subscription is established (as with vLLM), so repeat
    // the first request until its worker's BlockStored events reached the index.
    let deadline = Instant::now() + Duration::from_secs(10);
    let cached_on: Vec<String> = 'outer: loop {
        let (st, v, _) = post(&format!("{base}/v1/completions"), &req(1)).await;
        assert_eq!(st, 200, "{v}");
        for _ in 0..20 {
            let j = workers_json(&base).await;
            let on: Vec<String> = j["data"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|w| w["cached_blocks"].as_u64().unwrap() >= 64)
                .map(|w| w["id"].to_string())
                .collect();
            if !on.is_empty() {
                break 'outer on;
            }
            assert!(
                Instant::now() < deadline,
                "no KV events reached the index: {j}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    for i in 2..8 {
        let (st, v, h) = post(&format!("{base}/v1/completions"), &req(i)).await;
        assert_eq!(st, 200, "{v}");
        let id = h["x-switchyard-worker-id"].to_str().unwrap().to_string();
        assert!(
            cached_on.contains(&id),
            "request {i} went to {id}, cache on {cached_on:?}"
        );
        let overlap: u32 = h["x-switchyard-overlap-blocks"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!(overlap >= 64, "overlap {overlap}");
        assert!(
            v["usage"]["prompt_tokens_details"]["cached_tokens"]
                .as_u64()
                .unwrap()
                >= 1024
        );
    }
    let (_, m) = get(&format!("{base}/metrics")).await;
    assert!(!m.contains("status=\"5"), "{m}");
    assert!(m.contains("switchyard_kv_event_seq_gaps_total 0"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_worker_unknown_model_retry_and_admin_api() {
    let s = start_serve(&args(vec![], "round-robin")).await.unwrap();
    let base = s.url();
    let body = r#"{"model":"Qwen3-32B","prompt":"hello","max_tokens":2}"#;
    let (st, v, _) = post(&format!("{base}/v1/completions"), body).await;
    assert_eq!(st, 503, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("no healthy")
    );
    let (st, _, _) = post(&format!("{base}/v1/completions"), "{bad").await;
    assert_eq!(st, 400);
    let (st, v, _) = post(&format!("{base}/v1/unknown"), "{}").await;
    assert_eq!(st, 404);
    assert!(v["error"]["message"].is_string(), "{v}");
    let small = ServeArgs {
        max_body_bytes: 1000,
        ..args(vec![], "kv")
    };
    let s2 = start_serve(&small).await.unwrap();
    let (st, v, _) = post(
        &format!("{}/v1/chat/completions", s2.url()),
        &format!(
            r#"{{"model":"m","messages":[{{"role":"user","content":"{}"}}]}}"#,
            "x".repeat(2000)
        ),
    )
    .await;
    assert_eq!(st, 413, "{v}");

    // A dead worker (nothing listens there) and a live one, added at runtime.
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let live = worker(1e6, false).await;
    let (st, v, _) = post(
        &format!("{base}/v1/workers"),
        &format!(r#"{{"url":"http://{dead}"}}"#),
    )
    .await;
    assert_eq!(st, 201, "{v}");
    assert_eq!(v["healthy"], false);
    let (st, v, _) = post(
        &format!("{base}/v1/workers"),
        &format!(r#"{{"url":"{}"}}"#, live.url()),
    )
    .await;
    assert_eq!(st, 201);
    let live_id = v["id"].as_u64().unwrap();
    let (st, _, _) = post(&format!("{base}/v1/workers"), r#"{"url":"ftp://x"}"#).await;
    assert_eq!(st, 400);

    let (st, v, _) = post(
        &format!("{base}/v1/completions"),
        r#"{"model":"gpt-9","prompt":"x"}"#,
    )
    .await;
    assert_eq!(st, 404, "{v}");
    for _ in 0..4 {
        let (st, v, h) = post(&format!("{base}/v1/completions"), body).await;
        assert_eq!(st, 200, "{v}");
        assert_eq!(h["x-switchyard-worker-id"], live_id.to_string().as_str());
        assert_eq!(v["usage"]["completion_tokens"], 2);
    }
    let (_, models) = get(&format!("{base}/v1/models")).await;
    assert!(models.contains("Qwen3-32B"));

    // Remove the live worker: 503 again.
    let r = client()
        .delete(format!("{base}/v1/workers/{live_id}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let (st, _, _) = post(&format!("{base}/v1/completions"), body).await;
    assert_eq!(st, 503);
    let r = client()
        .delete(format!("{base}/v1/workers/999"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
}

/// An upstream that sends headers and one SSE event, then drops the connection.
async fn dying_upstream() -> String {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut buf = vec![0u8; 65536];
                let n = s.read(&mut buf).await.unwrap_or(0);
                let req = String::from_utf8_lossy(&buf[..n]).to_string();
                let resp = if req.starts_with("GET /v1/models") {
                    let b = r#"{"object":"list","data":[{"id":"Qwen3-32B","object":"model"}]}"#;
                    format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{b}",
                        b.len()
                    )
                } else {
                    "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n\
                     f\r\ndata: {\"a\":1}\n\n\r\n"
                        .to_string()
                };
                let _ = s.write_all(resp.as_bytes()).await;
                if req.starts_with("POST") {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                // Dropped mid-body (no terminating chunk).
            });
        }
    });
    format!("http://{addr}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_dying_mid_stream_gives_an_sse_error_event() {
    let up = dying_upstream().await;
    let s = start_serve(&args(vec![up], "round-robin")).await.unwrap();
    let r = client()
        .post(format!("{}/v1/completions", s.url()))
        .header("content-type", "application/json")
        .body(r#"{"model":"Qwen3-32B","prompt":"hi","stream":true}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let body = r.text().await.unwrap();
    let data = sse_data(&body);
    assert_eq!(data[0], r#"{"a":1}"#);
    let err: Value = serde_json::from_str(data.last().unwrap()).unwrap();
    assert_eq!(err["error"]["type"], "server_error", "{body}");
    let j = workers_json(&s.url()).await;
    assert_eq!(j["data"][0]["upstream_errors"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_disconnect_propagates_through_serve() {
    let w = worker(1.0, false).await;
    let s = start_serve(&args(vec![w.url()], "least-load"))
        .await
        .unwrap();
    let mut r = client()
        .post(format!("{}/v1/chat/completions", s.url()))
        .header("content-type", "application/json")
        .body(r#"{"model":"Qwen3-32B","messages":[{"role":"user","content":"hi"}],"max_tokens":2000,"stream":true}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let first = r.chunk().await.unwrap().unwrap();
    assert!(first.starts_with(b"data: "));
    let j = workers_json(&s.url()).await;
    assert_eq!(j["data"][0]["load"]["active_requests"], 1);
    drop(r);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (_, m) = get(&format!("{}/metrics", w.url())).await;
        let j = workers_json(&s.url()).await;
        if m.contains("switchyard_worker_num_requests_running 0")
            && j["data"][0]["load"]["active_requests"] == 0
        {
            break;
        }
        assert!(Instant::now() < deadline, "still running: {m} {j}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deployment_file_starts_its_workers() {
    let recipe = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../recipes/qwen3-32b-h200/agg-round-robin.toml");
    let a = ServeArgs {
        config: Some(recipe),
        speedup: 1e6,
        ..ServeArgs::default()
    };
    let s = start_serve(&a).await.unwrap();
    assert_eq!(s.local_workers.len(), 8);
    let mut seen = std::collections::BTreeSet::new();
    for i in 0..16 {
        let (st, v, h) = post(
            &format!("{}/v1/completions", s.url()),
            &format!(r#"{{"model":"Qwen3-32B","prompt":"request {i}","max_tokens":1}}"#),
        )
        .await;
        assert_eq!(st, 200, "{v}");
        seen.insert(h["x-switchyard-worker-id"].to_str().unwrap().to_string());
    }
    // Round-robin over 8 workers.
    assert_eq!(seen.len(), 8);
    let j = workers_json(&s.url()).await;
    assert_eq!(j["policy"], "round-robin");
    assert!(
        j["data"]
            .as_array()
            .unwrap()
            .iter()
            .all(|w| w["requests_routed"] == 2)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unhealthy_worker_comes_back_when_it_answers() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let s = start_serve(&args(vec![format!("http://127.0.0.1:{port}")], "kv"))
        .await
        .unwrap();
    let body = r#"{"model":"Qwen3-32B","prompt":"hello","max_tokens":2}"#;
    let (st, _, _) = post(&format!("{}/v1/completions", s.url()), body).await;
    assert_eq!(st, 503);
    // The engine starts on that port later; the health check (every 0.2 s) brings it in.
    let wargs = switchyard_server::worker::WorkerArgs {
        port,
        speedup: 1e6,
        ..Default::default()
    };
    let _w = switchyard_server::worker::start_worker(&wargs, engine_cfg())
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (st, v, _) = post(&format!("{}/v1/completions", s.url()), body).await;
        if st == 200 {
            assert_eq!(v["usage"]["completion_tokens"], 2);
            break;
        }
        assert_eq!(st, 503);
        assert!(Instant::now() < deadline, "worker never became healthy");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(workers_json(&s.url()).await["data"][0]["healthy"], true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn approximate_feed_routes_by_its_own_decisions() {
    // Workers without events: the router remembers where it sent each prefix.
    let ws = [worker(1e6, false).await, worker(1e6, false).await];
    let s = start_serve(&ServeArgs {
        kv_feed: Some("approximate".into()),
        ..args(ws.iter().map(|w| w.url()).collect(), "kv")
    })
    .await
    .unwrap();
    let prefix = tokens(50_000, 512);
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..5 {
        let (st, v, h) = post(
            &format!("{}/v1/completions", s.url()),
            &format!(r#"{{"model":"Qwen3-32B","prompt":{prefix},"max_tokens":1}}"#),
        )
        .await;
        assert_eq!(st, 200, "{v}");
        seen.insert(h["x-switchyard-worker-id"].to_str().unwrap().to_string());
    }
    assert_eq!(seen.len(), 1, "{seen:?}");
    let bad = start_serve(&ServeArgs {
        kv_feed: Some("psychic".into()),
        ..ServeArgs::default()
    })
    .await;
    assert!(bad.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sequence_gap_clears_the_workers_index_entries() {
    use switchyard_kv::wire::{WireBatch, WireEncoding, WireEvent, encode_batch};
    use zeromq::{Socket, SocketSend, ZmqMessage};

    let w = worker(1e6, false).await;
    let mut publisher = zeromq::PubSocket::new();
    let ep = publisher
        .bind("tcp://127.0.0.1:0")
        .await
        .unwrap()
        .to_string();
    let s = start_serve(&args(vec![format!("{},kv-events={ep}", w.url())], "kv"))
        .await
        .unwrap();
    let stored = |first: u32, blocks: u32| {
        let tokens: Vec<u32> = (first..first + 16 * blocks).collect();
        encode_batch(
            &WireBatch {
                ts: 0.0,
                events: vec![WireEvent::BlockStored {
                    block_hashes: (0..blocks as u64)
                        .map(|i| u64::MAX - first as u64 - i)
                        .collect(),
                    parent_block_hash: None,
                    token_ids: tokens,
                    block_size: 16,
                    lora_id: None,
                    medium: None,
                }],
                dp_rank: None,
            },
            WireEncoding::Map,
        )
    };
    let frame = |seq: u64, payload: Vec<u8>| {
        ZmqMessage::try_from(vec![
            axum::body::Bytes::new(),
            axum::body::Bytes::copy_from_slice(&seq.to_be_bytes()),
            axum::body::Bytes::from(payload),
        ])
        .unwrap()
    };
    let cached = |j: &Value| j["data"][0]["cached_blocks"].as_u64().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut seq = 0;
    loop {
        publisher.send(frame(seq, stored(1, 4))).await.unwrap();
        seq += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
        if cached(&workers_json(&s.url()).await) == 4 {
            break;
        }
        assert!(Instant::now() < deadline, "events never arrived");
    }
    // Skip 3 sequence numbers: the router cannot know what it missed, so it drops this
    // worker's entries and rebuilds from the events that follow.
    publisher
        .send(frame(seq + 3, stored(1000, 2)))
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let j = workers_json(&s.url()).await;
        if j["data"][0]["kv_event_seq_gaps"] == 1 {
            assert_eq!(cached(&j), 2, "{j}");
            break;
        }
        assert!(Instant::now() < deadline, "gap not detected: {j}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_before_the_first_byte_are_retried_elsewhere() {
    let bad = failing_upstream().await;
    let good = worker(1e6, false).await;
    let s = start_serve(&args(vec![bad, good.url()], "round-robin"))
        .await
        .unwrap();
    for _ in 0..6 {
        let (st, v, h) = post(
            &format!("{}/v1/completions", s.url()),
            r#"{"model":"Qwen3-32B","prompt":"hi","max_tokens":1}"#,
        )
        .await;
        assert_eq!(st, 200, "{v}");
        assert_eq!(h["x-switchyard-worker"], good.url().as_str());
    }
    let (_, m) = get(&format!("{}/metrics", s.url())).await;
    let retries: u64 = m
        .lines()
        .find_map(|l| l.strip_prefix("switchyard_retries_total "))
        .unwrap()
        .parse()
        .unwrap();
    // Tried first at most until the circuit breaker (3 consecutive 5xx) took it out.
    assert!((1..=6).contains(&retries), "{m}");
    // With only the failing worker, the client gets a 502 naming the cause.
    let s2 = start_serve(&args(vec![failing_upstream().await], "round-robin"))
        .await
        .unwrap();
    let (st, v, _) = post(
        &format!("{}/v1/completions", s2.url()),
        r#"{"model":"Qwen3-32B","prompt":"hi","max_tokens":1}"#,
    )
    .await;
    assert_eq!(st, 502, "{v}");
    assert!(
        v["error"]["message"].as_str().unwrap().contains("500"),
        "{v}"
    );
}

const MODELS: &str = r#"{"object":"list","data":[{"id":"Qwen3-32B","object":"model"}]}"#;

/// A wedged engine: answers its model list on a kept-alive connection, but a generation
/// request gets nothing (`after_headers`: the headers and one SSE event, then nothing), and
/// the socket stays open. With `stop_accepting`, only the first connection is ever accepted
/// (an engine out of file descriptors): later connections wait in the kernel's backlog.
async fn wedged_upstream(after_headers: bool, stop_accepting: bool) -> String {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        loop {
            let Ok((s, _)) = l.accept().await else {
                return;
            };
            held.push(tokio::spawn(async move {
                let mut s = s;
                let mut buf = vec![0u8; 65536];
                loop {
                    let n = s.read(&mut buf).await.unwrap_or(0);
                    if n == 0 {
                        return;
                    }
                    if buf[..n].starts_with(b"GET") {
                        let r = format!(
                            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{MODELS}",
                            MODELS.len()
                        );
                        let _ = s.write_all(r.as_bytes()).await;
                        continue;
                    }
                    if after_headers {
                        let _ = s
                            .write_all(
                                b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\nf\r\ndata: {\"a\":1}\n\n\r\n",
                            )
                            .await;
                    }
                    tokio::time::sleep(Duration::from_secs(3600)).await;
                }
            }));
            if stop_accepting {
                // Keep serving the first connection; never accept again.
                std::future::pending::<()>().await;
            }
        }
    });
    format!("http://{addr}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wedged_worker_times_out_and_the_request_goes_elsewhere() {
    let wedged = wedged_upstream(false, false).await;
    let good = worker(1e6, false).await;
    let s = start_serve(&ServeArgs {
        upstream_first_byte_timeout: 0.5,
        ..args(vec![wedged.clone(), good.url()], "round-robin")
    })
    .await
    .unwrap();
    let t = Instant::now();
    for _ in 0..4 {
        let (st, v, h) = post(
            &format!("{}/v1/completions", s.url()),
            r#"{"model":"Qwen3-32B","prompt":"hi","max_tokens":1}"#,
        )
        .await;
        assert_eq!(st, 200, "{v}");
        assert_eq!(h["x-switchyard-worker"], good.url().as_str());
    }
    assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
    assert!(metric(&s.url(), "switchyard_upstream_timeouts_total").await >= 1.0);
    // Alone, the wedged worker gives a 502 after the timeout instead of hanging.
    let s2 = start_serve(&ServeArgs {
        upstream_first_byte_timeout: 0.5,
        max_attempts: 1,
        ..args(vec![wedged], "round-robin")
    })
    .await
    .unwrap();
    let (st, v, _) = post(
        &format!("{}/v1/completions", s2.url()),
        r#"{"model":"Qwen3-32B","prompt":"hi","max_tokens":1}"#,
    )
    .await;
    assert_eq!(st, 502, "{v}");
    assert!(
        v["error"]["message"].as_str().unwrap().contains("within"),
        "{v}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_that_stalls_ends_with_an_sse_error() {
    let up = wedged_upstream(true, false).await;
    let s = start_serve(&ServeArgs {
        upstream_idle_timeout: 0.5,
        ..args(vec![up], "round-robin")
    })
    .await
    .unwrap();
    let t = Instant::now();
    let r = client()
        .post(format!("{}/v1/completions", s.url()))
        .header("content-type", "application/json")
        .body(r#"{"model":"Qwen3-32B","prompt":"hi","stream":true}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let body = r.text().await.unwrap();
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    let data = sse_data(&body);
    assert_eq!(data[0], r#"{"a":1}"#);
    let err: Value = serde_json::from_str(data.last().unwrap()).unwrap();
    assert!(
        err["error"]["message"]
            .as_str()
            .unwrap()
            .contains("no data for"),
        "{body}"
    );
}

/// The health check opens a fresh connection each time: a worker that stopped accepting
/// connections is marked down even though an old pooled connection still answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_that_stops_accepting_fails_its_health_check() {
    let up = wedged_upstream(false, true).await;
    let s = start_serve(&args(vec![up], "round-robin")).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(8);
    for want in [true, false] {
        loop {
            let j = workers_json(&s.url()).await;
            if j["data"][0]["healthy"] == want {
                break;
            }
            assert!(Instant::now() < deadline, "healthy != {want}: {j}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

async fn send(
    method: reqwest::Method,
    url: &str,
    key: Option<&str>,
    content_type: &str,
    body: &str,
) -> (u16, Value, reqwest::header::HeaderMap) {
    let mut r = client()
        .request(method, url)
        .header("content-type", content_type)
        .body(body.to_string());
    if let Some(k) = key {
        r = r.bearer_auth(k);
    }
    let r = r.send().await.unwrap();
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    let text = r.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
        headers,
    )
}

const HI: &str = r#"{"model":"Qwen3-32B","prompt":"hi","max_tokens":1}"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_keys_guard_the_api_and_probes_stay_open() {
    use reqwest::Method;
    let w = worker(1e6, false).await;
    let s = start_serve(&ServeArgs {
        api_keys: vec!["sk-one".parse().unwrap(), "sk-two".parse().unwrap()],
        metrics_need_key: true,
        ..args(vec![w.url()], "round-robin")
    })
    .await
    .unwrap();
    let url = format!("{}/v1/completions", s.url());
    for key in [None, Some("sk-three"), Some("sk-on")] {
        let (st, v, h) = send(Method::POST, &url, key, "application/json", HI).await;
        assert_eq!(st, 401, "{key:?}: {v}");
        assert_eq!(h["www-authenticate"], "Bearer");
        assert_eq!(v["error"]["type"], "invalid_request_error", "{v}");
    }
    for key in ["sk-one", "sk-two"] {
        let (st, v, _) = send(Method::POST, &url, Some(key), "application/json", HI).await;
        assert_eq!(st, 200, "{v}");
    }
    let models = format!("{}/v1/models", s.url());
    assert_eq!(send(Method::GET, &models, None, "", "").await.0, 401);
    assert_eq!(get(&format!("{}/health", s.url())).await.0, 200);
    assert_eq!(get(&format!("{}/ready", s.url())).await.0, 200);
    let m = format!("{}/metrics", s.url());
    assert_eq!(send(Method::GET, &m, None, "", "").await.0, 401);
    assert_eq!(send(Method::GET, &m, Some("sk-one"), "", "").await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_api_needs_loopback_or_the_admin_key_and_json() {
    use reqwest::Method;
    let w = worker(1e6, false).await;
    let w2 = worker(1e6, false).await;
    let add = serde_json::json!({"url": w2.url()}).to_string();
    // Default: loopback only, JSON only (a cross-site form post is text/plain).
    let s = start_serve(&ServeArgs {
        host: "0.0.0.0".into(),
        ..args(vec![w.url()], "round-robin")
    })
    .await
    .unwrap();
    let port = s.url().rsplit(':').next().unwrap().to_string();
    let workers = format!("http://127.0.0.1:{port}/v1/workers");
    let (st, v, _) = send(Method::POST, &workers, None, "text/plain", &add).await;
    assert_eq!(st, 415, "{v}");
    let (st, v, _) = send(Method::POST, &workers, None, "application/json", &add).await;
    assert_eq!(st, 201, "{v}");
    // From a non-loopback address of this machine, when it has one.
    let udp = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
    let outside = udp
        .connect("192.0.2.1:9")
        .ok()
        .and_then(|_| udp.local_addr().ok())
        .map(|a| a.ip())
        .filter(|ip| !ip.is_loopback() && !ip.is_unspecified());
    match outside {
        Some(ip) => {
            let remote = format!("http://{ip}:{port}/v1/workers");
            let (st, v, _) = send(Method::POST, &remote, None, "application/json", &add).await;
            assert_eq!(st, 403, "{v}");
            assert!(
                v["error"]["message"]
                    .as_str()
                    .unwrap()
                    .contains("--admin-key")
            );
            assert_eq!(send(Method::GET, &remote, None, "", "").await.0, 403);
            // The user API is not the admin API.
            let (st, v, _) = send(
                Method::POST,
                &format!("http://{ip}:{port}/v1/completions"),
                None,
                "application/json",
                HI,
            )
            .await;
            assert_eq!(st, 200, "{v}");
        }
        None => switchyard_testkit::skip(
            "serve: admin API refused from a non-loopback address",
            "this machine has no non-loopback address",
            "a network interface with an address",
        ),
    }
    // With an admin key: required from anywhere, loopback included; client keys do not do.
    let s = start_serve(&ServeArgs {
        admin_keys: vec!["adm".parse().unwrap()],
        api_keys: vec!["sk-user".parse().unwrap()],
        ..args(vec![w.url()], "round-robin")
    })
    .await
    .unwrap();
    let workers = format!("{}/v1/workers", s.url());
    for key in [None, Some("sk-user")] {
        let (st, v, _) = send(Method::POST, &workers, key, "application/json", &add).await;
        assert_eq!(st, 401, "{key:?}: {v}");
    }
    let (st, v, _) = send(
        Method::POST,
        &workers,
        Some("adm"),
        "application/json",
        &add,
    )
    .await;
    assert_eq!(st, 201, "{v}");
    let id = v["id"].as_u64().unwrap();
    let one = format!("{workers}/{id}");
    assert_eq!(send(Method::DELETE, &one, None, "", "").await.0, 401);
    assert_eq!(send(Method::DELETE, &one, Some("adm"), "", "").await.0, 204);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyed_workers_need_serves_upstream_key() {
    use switchyard_server::worker::{WorkerArgs, start_worker};
    let w = start_worker(
        &WorkerArgs {
            speedup: 1e6,
            api_keys: vec!["sk-fleet".parse().unwrap()],
            ..WorkerArgs::default()
        },
        engine_cfg(),
    )
    .await
    .unwrap();
    let (st, _, _) = post(&format!("{}/v1/completions", w.url()), HI).await;
    assert_eq!(st, 401, "the worker itself is guarded");
    assert_eq!(get(&format!("{}/health", w.url())).await.0, 200);
    // Without the key serve never sees it healthy; with it, requests flow.
    let s = start_serve(&args(vec![w.url()], "round-robin"))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (st, v, _) = post(&format!("{}/v1/completions", s.url()), HI).await;
    assert_eq!(st, 503, "{v}");
    let s = start_serve(&ServeArgs {
        upstream_api_key: Some("sk-fleet".parse().unwrap()),
        ..args(vec![w.url()], "round-robin")
    })
    .await
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (st, v, _) = post(&format!("{}/v1/completions", s.url()), HI).await;
        if st == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "{st} {v}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The registry deduplicates, validates, caps, and forgets admin-added workers that stay
/// down, while the deployment's own (--worker) entries stay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_worker_registry_has_limits() {
    let w = worker(1e6, false).await;
    let dead_static = format!("http://127.0.0.1:{}", free_port());
    let s = start_serve(&ServeArgs {
        max_workers: 3,
        drop_unhealthy_after: 0.5,
        ..args(vec![w.url(), dead_static.clone()], "round-robin")
    })
    .await
    .unwrap();
    let add = |url: String| {
        let base = s.url();
        async move {
            post(
                &format!("{base}/v1/workers"),
                &serde_json::json!({ "url": url }).to_string(),
            )
            .await
        }
    };
    let (st, v, _) = add(format!("{}/", w.url())).await;
    assert_eq!(st, 409, "duplicate: {v}");
    for bad in [
        "http://user:pw@127.0.0.1:1",
        "http://127.0.0.1:1/?q=1",
        "http://",
        "ftp://127.0.0.1:1",
    ] {
        let (st, v, _) = add(bad.to_string()).await;
        assert_eq!(st, 400, "{bad}: {v}");
    }
    let dead_runtime = format!("http://127.0.0.1:{}", free_port());
    let (st, v, _) = add(dead_runtime.clone()).await;
    assert_eq!(st, 201, "{v}");
    let (st, v, _) = add(format!("http://127.0.0.1:{}", free_port())).await;
    assert_eq!(st, 429, "full: {v}");
    // The admin-added dead worker goes; the configured dead one stays.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let j = workers_json(&s.url()).await;
        let urls: Vec<&str> = j["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|w| w["url"].as_str().unwrap())
            .collect();
        if !urls.contains(&dead_runtime.as_str()) {
            assert!(urls.contains(&dead_static.as_str()), "{urls:?}");
            assert_eq!(urls.len(), 2, "{urls:?}");
            break;
        }
        assert!(Instant::now() < deadline, "never dropped: {urls:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        metric(&s.url(), "switchyard_workers_dropped_total").await,
        1.0
    );
    // Duplicate flags are refused at start.
    let e = start_serve(&args(vec![w.url(), w.url()], "round-robin"))
        .await
        .err()
        .expect("duplicate --worker refused");
    assert!(e.to_string().contains("already registered"), "{e}");
}

/// Idle and trickling clients cannot exhaust the frontend: past the connection cap new
/// sockets are closed at once, and sockets that send no complete headers are closed after
/// --header-timeout, after which /health answers again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_sockets_are_capped_and_timed_out() {
    let w = worker(1e6, false).await;
    let s = start_serve(&ServeArgs {
        max_connections: 20,
        header_timeout: 2.0,
        ..args(vec![w.url()], "round-robin")
    })
    .await
    .unwrap();
    let addr = s.addr;
    let mut idle = Vec::new();
    for i in 0..40 {
        let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
        if i % 2 == 0 {
            // Trickled, never finished headers.
            let _ = c.write_all(b"GET /health HTTP/1.1\r\nhost: x\r\n").await;
        }
        idle.push(c);
    }
    // Over the cap: the 21st and later sockets are closed by the server.
    let mut closed = 0;
    for c in idle.iter_mut().skip(20) {
        let mut b = [0u8; 1];
        // EOF, or a reset for a socket whose unread bytes the server discarded.
        if let Ok(Ok(0) | Err(_)) =
            tokio::time::timeout(Duration::from_millis(300), c.read(&mut b)).await
        {
            closed += 1;
        }
    }
    assert_eq!(closed, 20, "sockets over the cap are closed");
    // After the header timeout the first 20 are gone too and /health answers.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let (st, _) = get(&format!("{}/health", s.url())).await;
    assert_eq!(st, 200);
    for c in idle.iter_mut().take(20) {
        let mut b = [0u8; 64];
        let r = tokio::time::timeout(Duration::from_millis(500), c.read(&mut b)).await;
        assert!(
            matches!(r, Ok(Ok(_)) | Ok(Err(_))),
            "an idle socket is still held open"
        );
    }
}

/// Overload gets fast 429s with Retry-After, globally and per worker, and admitted
/// requests complete.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overload_gets_fast_429s() {
    let w = worker(1.0, false).await; // real time: requests take a while
    for (global, per_worker) in [(2u64, 100u64), (100, 2)] {
        let s = start_serve(&ServeArgs {
            max_inflight: global,
            max_inflight_per_worker: per_worker,
            ..args(vec![w.url()], "round-robin")
        })
        .await
        .unwrap();
        let url = format!("{}/v1/completions", s.url());
        let body = r#"{"model":"Qwen3-32B","prompt":"hi","max_tokens":40}"#;
        let calls: Vec<_> = (0..10)
            .map(|_| {
                let url = url.clone();
                tokio::spawn(async move {
                    let t = Instant::now();
                    let r = client()
                        .post(&url)
                        .header("content-type", "application/json")
                        .body(body)
                        .send()
                        .await
                        .unwrap();
                    let st = r.status().as_u16();
                    let retry = r.headers().get("retry-after").cloned();
                    let v: Value = r.json().await.unwrap_or(Value::Null);
                    (st, retry, v, t.elapsed())
                })
            })
            .collect();
        let mut ok = 0;
        let mut busy = 0;
        for c in calls {
            let (st, retry, v, took) = c.await.unwrap();
            match st {
                200 => ok += 1,
                429 => {
                    busy += 1;
                    assert_eq!(retry.unwrap(), "1");
                    assert_eq!(v["error"]["type"], "rate_limit_error", "{v}");
                    assert!(took < Duration::from_millis(300), "429 is fast: {took:?}");
                }
                _ => panic!("{st}: {v}"),
            }
        }
        assert_eq!(ok, 2, "global {global}, per worker {per_worker}");
        assert_eq!(busy, 8);
        // Slots are given back once the answers are sent.
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(s.inflight(), 0);
    }
}

/// Internal worker addresses stay internal unless asked for; response ids are unique across
/// workers; a wrong method gets a JSON 405; the simulated worker refuses what it cannot honour;
/// an answer that fails mid-stream is not counted as a 200.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_production_papercuts() {
    let ws = [worker(1e6, false).await, worker(1e6, false).await];
    let s = start_serve(&ServeArgs {
        expose_worker_urls: false,
        ..args(ws.iter().map(|w| w.url()).collect(), "round-robin")
    })
    .await
    .unwrap();
    let mut ids = std::collections::HashSet::new();
    for _ in 0..6 {
        let (st, v, h) = post(&format!("{}/v1/completions", s.url()), HI).await;
        assert_eq!(st, 200, "{v}");
        assert!(h.get("x-switchyard-worker").is_none(), "{h:?}");
        assert!(h.get("x-switchyard-worker-id").is_some());
        assert!(ids.insert(v["id"].as_str().unwrap().to_string()), "{v}");
    }
    let r = client()
        .get(format!("{}/v1/completions", s.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 405);
    let v: Value = r.json().await.unwrap();
    assert!(
        v["error"]["message"].as_str().unwrap().contains("GET"),
        "{v}"
    );
    for (field, value) in [
        ("tools", serde_json::json!([{"type": "function"}])),
        (
            "response_format",
            serde_json::json!({"type": "json_object"}),
        ),
        ("logprobs", serde_json::json!(true)),
    ] {
        let mut body: Value = serde_json::from_str(HI).unwrap();
        body[field] = value;
        let (st, v, _) = post(
            &format!("{}/v1/completions", ws[0].url()),
            &body.to_string(),
        )
        .await;
        assert_eq!(st, 400, "{v}");
        assert_eq!(v["error"]["param"], field, "{v}");
    }
    // A failure mid-stream, with the URL hidden from the client.
    let up = dying_upstream().await;
    let s = start_serve(&ServeArgs {
        expose_worker_urls: false,
        ..args(vec![up.clone()], "round-robin")
    })
    .await
    .unwrap();
    let r = client()
        .post(format!("{}/v1/completions", s.url()))
        .header("content-type", "application/json")
        .body(r#"{"model":"Qwen3-32B","prompt":"hi","stream":true}"#)
        .send()
        .await
        .unwrap();
    let body = r.text().await.unwrap();
    assert!(!body.contains(&up), "{body}");
    assert!(body.contains("#0"), "{body}");
    let (_, m) = get(&format!("{}/metrics", s.url())).await;
    assert!(
        m.contains("switchyard_requests_total{status=\"502\"} 1"),
        "{m}"
    );
    assert!(
        !m.contains("switchyard_requests_total{status=\"200\"} 1"),
        "{m}"
    );
}

/// A worker whose KV events use another block size than the router hashes with is a
/// configuration error said loudly: a metric, and `/ready` 503 with the reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_block_size_mismatch_is_loud() {
    use switchyard_server::worker::{WorkerArgs, start_worker};
    let mut cfg = engine_cfg();
    cfg.block_size = 32;
    let w = start_worker(
        &WorkerArgs {
            speedup: 1e6,
            kv_events: Some("tcp://127.0.0.1:0".into()),
            ..WorkerArgs::default()
        },
        cfg,
    )
    .await
    .unwrap();
    let spec = format!("{},kv-events={}", w.url(), w.kv_events.clone().unwrap());
    let s = start_serve(&args(vec![spec], "kv")).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let _ = complete_ids(&s.url(), &(0..200).collect::<Vec<u32>>()).await;
        let (st, body) = get(&format!("{}/ready", s.url())).await;
        if st == 503 && body.contains("32-token blocks") {
            break;
        }
        assert!(Instant::now() < deadline, "{st} {body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(metric(&s.url(), "switchyard_kv_block_size_mismatch_total").await >= 1.0);
}

/// Per-key rate limits: a key's minute allowance, then 429 with the wait in `Retry-After`;
/// other keys are not affected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_key_rate_limits() {
    use reqwest::Method;
    let w = worker(1e6, false).await;
    let s = start_serve(&ServeArgs {
        api_keys: vec!["sk-a".parse().unwrap(), "sk-b".parse().unwrap()],
        rate_limit_rpm: 3,
        ..args(vec![w.url()], "round-robin")
    })
    .await
    .unwrap();
    let url = format!("{}/v1/completions", s.url());
    for _ in 0..3 {
        let (st, v, _) = send(Method::POST, &url, Some("sk-a"), "application/json", HI).await;
        assert_eq!(st, 200, "{v}");
    }
    let (st, v, h) = send(Method::POST, &url, Some("sk-a"), "application/json", HI).await;
    assert_eq!(st, 429, "{v}");
    let retry: u64 = h["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=20).contains(&retry), "{retry}");
    let (st, v, _) = send(Method::POST, &url, Some("sk-b"), "application/json", HI).await;
    assert_eq!(st, 200, "another key: {v}");
    // Limits need keys to be per-key.
    let e = start_serve(&ServeArgs {
        rate_limit_tpm: 1000,
        ..args(vec![w.url()], "round-robin")
    })
    .await
    .err()
    .expect("refused without keys");
    assert!(e.to_string().contains("per API key"), "{e}");
}
