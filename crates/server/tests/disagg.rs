//! Disaggregated prefill/decode serving over real HTTP on loopback: both protocols, conditional
//! disaggregation, readiness and the failure cases.

mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{Value, json};
use switchyard_engine::Role;
use switchyard_server::serve::{PdProtocol, ServeArgs, start_serve};
use switchyard_server::worker::{WorkerArgs, WorkerHandle, start_worker};

async fn role_worker(
    role: Role,
    speedup: f64,
    tweak: impl FnOnce(&mut WorkerArgs),
) -> WorkerHandle {
    let mut args = WorkerArgs {
        speedup,
        ..WorkerArgs::default()
    };
    tweak(&mut args);
    let mut cfg = engine_cfg();
    cfg.role = role;
    start_worker(&args, cfg).await.expect("worker starts")
}

fn serve_args(workers: Vec<String>, protocol: PdProtocol) -> ServeArgs {
    ServeArgs {
        workers,
        router: Some("kv".into()),
        kv_feed: Some("approximate".into()),
        health_interval: 0.2,
        pd_protocol: protocol,
        expose_worker_urls: true,
        ..ServeArgs::default()
    }
}

/// One value of a worker's Prometheus metric.
async fn metric(url: &str, name: &str) -> f64 {
    let (_, m) = get(&format!("{url}/metrics")).await;
    m.lines()
        .find_map(|l| l.strip_prefix(&format!("switchyard_worker_{name} ")))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in {m}"))
}

async fn wait_metric(url: &str, name: &str, want: f64) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let v = metric(url, name).await;
        if v == want {
            return;
        }
        assert!(Instant::now() < deadline, "{name} = {v}, want {want}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn completion(prompt_base: u32, n: u32, max_tokens: u32, stream: bool) -> String {
    format!(
        r#"{{"model":"Qwen3-32B","prompt":{},"max_tokens":{max_tokens},"stream":{stream},"stream_options":{}}}"#,
        tokens(prompt_base, n),
        if stream {
            r#"{"include_usage":true}"#
        } else {
            "null"
        }
    )
}

/// The common end-to-end check for both protocols: a long prompt goes prefill -> decode, a
/// short one and a repeat (cached on the decode worker) stay on the decode worker.
async fn end_to_end(protocol: PdProtocol) {
    let p = role_worker(Role::Prefill, 1e6, |_| {}).await;
    let d = role_worker(Role::Decode, 1e6, |_| {}).await;
    let s = start_serve(&serve_args(
        vec![
            format!("{},role=prefill", p.url()),
            format!("{},role=decode", d.url()),
        ],
        protocol,
    ))
    .await
    .unwrap();
    let (st, body) = get(&format!("{}/ready", s.url())).await;
    assert_eq!(st, 200, "{body}");

    // 2,000 uncached tokens: over the 512-token local-prefill threshold -> remote prefill.
    let r = client()
        .post(format!("{}/v1/completions", s.url()))
        .header("content-type", "application/json")
        .body(completion(1000, 2000, 12, true))
        .send()
        .await
        .unwrap();
    let status = r.status();
    assert_eq!(status, 200, "{}", r.text().await.unwrap());
    assert_eq!(r.headers()["x-switchyard-placement"], "remote");
    assert_eq!(r.headers()["x-switchyard-prefill-worker"], p.url().as_str());
    assert_eq!(r.headers()["x-switchyard-worker"], d.url().as_str());
    let text = r.text().await.unwrap();
    let data = sse_data(&text);
    let chunks: Vec<Value> = data
        .iter()
        .filter(|d| *d != "[DONE]")
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    let tokens_out = chunks
        .iter()
        .filter(|c| c["choices"][0]["text"].is_string())
        .count();
    assert_eq!(tokens_out, 12, "{text}");
    let usage = &chunks.last().unwrap()["usage"];
    assert_eq!(usage["prompt_tokens"], 2000);
    assert_eq!(usage["completion_tokens"], 12);
    assert_eq!(data.last().unwrap(), "[DONE]");
    // The decode worker pulled the KV and the prefill worker freed it.
    assert_eq!(metric(&d.url(), "kv_transfers_total").await, 1.0);
    assert_eq!(
        metric(&d.url(), "kv_transfer_bytes_total").await,
        2000.0 * 262_144.0,
        "uncached tokens x Qwen3-32B's KV bytes per token"
    );
    wait_metric(&p.url(), "kv_held_requests", 0.0).await;
    assert_eq!(metric(&p.url(), "kv_pulls_served_total").await, 1.0);

    // Short prompt: prefilled on the decode worker.
    let (st, v, h) = post(
        &format!("{}/v1/completions", s.url()),
        &completion(90_000, 100, 3, false),
    )
    .await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(h["x-switchyard-placement"], "local");
    assert_eq!(v["usage"]["completion_tokens"], 3);
    // The long prompt again: the decode worker caches it now -> local as well.
    let (st, v, h) = post(
        &format!("{}/v1/completions", s.url()),
        &completion(1000, 2000, 3, false),
    )
    .await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(h["x-switchyard-placement"], "local");
    assert_eq!(metric(&d.url(), "local_prefills_total").await, 2.0);
    assert_eq!(metric(&p.url(), "http_requests_total").await, 1.0);
    let (_, m) = get(&format!("{}/metrics", s.url())).await;
    assert!(
        m.contains("switchyard_pd_requests_total{placement=\"remote\"} 1"),
        "{m}"
    );
    assert!(
        m.contains("switchyard_pd_requests_total{placement=\"local\"} 2"),
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vllm_protocol_end_to_end() {
    end_to_end(PdProtocol::Vllm).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sglang_protocol_end_to_end() {
    end_to_end(PdProtocol::Sglang).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefill_worker_speaks_vllms_protocol() {
    let p = role_worker(Role::Prefill, 1e6, |_| {}).await;
    let d = role_worker(Role::Decode, 1e6, |_| {}).await;
    // The router's prefill request.
    let body = json!({"model": "Qwen3-32B", "prompt": serde_json::from_str::<Value>(&tokens(5, 64)).unwrap(),
        "max_tokens": 1, "kv_transfer_params": {"do_remote_decode": true, "do_remote_prefill": false}});
    let (st, v, _) = post(&format!("{}/v1/completions", p.url()), &body.to_string()).await;
    assert_eq!(st, 200, "{v}");
    let k = &v["kv_transfer_params"];
    assert_eq!(k["do_remote_prefill"], true);
    assert_eq!(k["remote_host"], "127.0.0.1");
    assert_eq!(k["remote_port"], p.addr.port());
    assert_eq!(
        k["remote_block_ids"].as_array().unwrap().len(),
        4,
        "64 tokens / 16"
    );
    assert_eq!(v["usage"]["completion_tokens"], 1);
    assert_eq!(metric(&p.url(), "kv_held_requests").await, 1.0);
    // A prompt that is not the one prefilled: rejected, nothing reserved.
    let wrong = json!({"model": "Qwen3-32B", "prompt": serde_json::from_str::<Value>(&tokens(5, 80)).unwrap(),
        "max_tokens": 4, "kv_transfer_params": k});
    let (st, v, _) = post(&format!("{}/v1/completions", d.url()), &wrong.to_string()).await;
    assert_eq!(st, 400, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("64 tokens"),
        "{v}"
    );
    // The decode side with the returned params.
    let body = json!({"model": "Qwen3-32B", "prompt": serde_json::from_str::<Value>(&tokens(5, 64)).unwrap(),
        "max_tokens": 4, "kv_transfer_params": k});
    let (st, v, _) = post(&format!("{}/v1/completions", d.url()), &body.to_string()).await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["usage"]["completion_tokens"], 4);
    wait_metric(&p.url(), "kv_held_requests", 0.0).await;
    // Pulled once: a second decode with the same params finds nothing.
    let (st, v, _) = post(&format!("{}/v1/completions", d.url()), &body.to_string()).await;
    assert_eq!(st, 502, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("no KV is held"),
        "{v}"
    );
    // A prefill worker does not pull.
    let (st, _, _) = post(&format!("{}/v1/completions", p.url()), &body.to_string()).await;
    assert_eq!(st, 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unpulled_kv_is_freed_after_the_hold_timeout() {
    let p = role_worker(Role::Prefill, 1e6, |a| a.kv_hold_timeout = 0.3).await;
    let body = json!({"model": "Qwen3-32B", "prompt": serde_json::from_str::<Value>(&tokens(5, 64)).unwrap(),
        "max_tokens": 1, "kv_transfer_params": {"do_remote_decode": true}});
    let (st, _, _) = post(&format!("{}/v1/completions", p.url()), &body.to_string()).await;
    assert_eq!(st, 200);
    assert_eq!(metric(&p.url(), "kv_held_requests").await, 1.0);
    wait_metric(&p.url(), "kv_held_requests", 0.0).await;
    assert_eq!(metric(&p.url(), "kv_hold_timeouts_total").await, 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefill_failure_never_starts_the_decode_side() {
    for protocol in [PdProtocol::Vllm, PdProtocol::Sglang] {
        let bad = failing_upstream().await;
        let d = role_worker(Role::Decode, 1e6, |a| a.kv_pull_wait = 2.0).await;
        let s = start_serve(&serve_args(
            vec![
                format!("{bad},role=prefill"),
                format!("{},role=decode", d.url()),
            ],
            protocol,
        ))
        .await
        .unwrap();
        let (st, v, _) = post(
            &format!("{}/v1/completions", s.url()),
            &completion(1, 2000, 4, true),
        )
        .await;
        assert_eq!(st, 502, "{protocol:?}: {v}");
        assert!(
            v["error"]["message"].as_str().unwrap().contains("prefill"),
            "{v}"
        );
        // Nothing left running on the decode worker (SGLang's decode request was cancelled).
        wait_metric(&d.url(), "num_requests_running", 0.0).await;
        wait_metric(&d.url(), "num_requests_awaiting_kv", 0.0).await;
        if protocol == PdProtocol::Vllm {
            assert_eq!(metric(&d.url(), "http_requests_total").await, 0.0);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decode_failure_after_transfer_gives_an_error_event_and_frees_the_prefill() {
    let p = role_worker(Role::Prefill, 1e6, |_| {}).await;
    // Real time: 2,000 output tokens take ~40 s, so the decode worker dies mid-stream.
    let d = role_worker(Role::Decode, 1.0, |_| {}).await;
    let s = start_serve(&serve_args(
        vec![
            format!("{},role=prefill", p.url()),
            format!("{},role=decode", d.url()),
        ],
        PdProtocol::Vllm,
    ))
    .await
    .unwrap();
    let mut r = client()
        .post(format!("{}/v1/completions", s.url()))
        .header("content-type", "application/json")
        .body(completion(1, 2000, 2000, true))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let first = r.chunk().await.unwrap().unwrap();
    assert!(first.starts_with(b"data: "));
    // The transfer is complete (a token came out): the prefill's copy is freed.
    wait_metric(&p.url(), "kv_held_requests", 0.0).await;
    d.shutdown();
    let mut rest = String::new();
    while let Ok(Some(c)) = r.chunk().await {
        rest.push_str(&String::from_utf8_lossy(&c));
    }
    let last = sse_data(&rest).pop().unwrap_or_default();
    let err: Value = serde_json::from_str(&last).unwrap_or(Value::Null);
    assert_eq!(err["error"]["type"], "server_error", "{rest}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_prefill_worker_does_not_leak_decode_capacity() {
    let p = role_worker(Role::Prefill, 1e6, |_| {}).await;
    let d = role_worker(Role::Decode, 1e6, |_| {}).await;
    let body = json!({"model": "Qwen3-32B", "prompt": serde_json::from_str::<Value>(&tokens(5, 640)).unwrap(),
        "max_tokens": 1, "kv_transfer_params": {"do_remote_decode": true}});
    let (st, v, _) = post(&format!("{}/v1/completions", p.url()), &body.to_string()).await;
    assert_eq!(st, 200);
    // The prefill worker dies while holding the KV.
    p.shutdown();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let body = json!({"model": "Qwen3-32B", "prompt": serde_json::from_str::<Value>(&tokens(5, 640)).unwrap(),
        "max_tokens": 4, "kv_transfer_params": v["kv_transfer_params"]});
    let (st, v, _) = post(&format!("{}/v1/completions", d.url()), &body.to_string()).await;
    assert_eq!(st, 502, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("KV transfer failed"),
        "{v}"
    );
    assert_eq!(metric(&d.url(), "num_requests_awaiting_kv").await, 0.0);
    assert_eq!(metric(&d.url(), "num_requests_running").await, 0.0);
    assert_eq!(metric(&d.url(), "kv_cache_usage_ratio").await, 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_needs_a_prefill_and_a_decode_worker() {
    let d = role_worker(Role::Decode, 1e6, |_| {}).await;
    let s = start_serve(&serve_args(
        vec![format!("{},role=decode", d.url())],
        PdProtocol::Vllm,
    ))
    .await
    .unwrap();
    let (st, body) = get(&format!("{}/ready", s.url())).await;
    assert_eq!(st, 503, "{body}");
    assert!(body.contains("prefill"), "{body}");
    // Still served meanwhile: the decode worker prefills locally.
    let (st, v, h) = post(
        &format!("{}/v1/completions", s.url()),
        &completion(1, 2000, 2, false),
    )
    .await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(h["x-switchyard-placement"], "local");
    let p = role_worker(Role::Prefill, 1e6, |_| {}).await;
    let (st, v, _) = post(
        &format!("{}/v1/workers", s.url()),
        &json!({"url": p.url(), "role": "prefill"}).to_string(),
    )
    .await;
    assert_eq!(st, 201, "{v}");
    let (st, body) = get(&format!("{}/ready", s.url())).await;
    assert_eq!(st, 200, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disaggregated_recipe_serves_end_to_end() {
    let recipe = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../recipes/qwen3-32b-h200/disagg-kv.toml");
    let s = start_serve(&ServeArgs {
        config: Some(recipe),
        speedup: 1e6,
        ..ServeArgs::default()
    })
    .await
    .unwrap();
    let roles: Vec<Role> = s.local_workers.iter().map(|w| w.role).collect();
    assert_eq!(roles.iter().filter(|r| **r == Role::Prefill).count(), 6);
    assert_eq!(roles.iter().filter(|r| **r == Role::Decode).count(), 2);
    let (st, body) = get(&format!("{}/ready", s.url())).await;
    assert_eq!(st, 200, "{body}");
    let (st, v, h) = post(
        &format!("{}/v1/completions", s.url()),
        &completion(7, 4096, 8, false),
    )
    .await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(h["x-switchyard-placement"], "remote");
    assert_eq!(v["usage"]["completion_tokens"], 8);
    let (st, v, _) = post(
        &format!("{}/v1/chat/completions", s.url()),
        r#"{"model":"Qwen3-32B","messages":[{"role":"user","content":"hello"}],"max_tokens":5}"#,
    )
    .await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["usage"]["completion_tokens"], 5);
}

/// A client cannot aim the decode workers at a host of its choosing: the P/D fields are the
/// router's, rejected from clients with a 400 naming the field, and such requests never reach
/// a worker or count against its health.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_cannot_set_the_routers_pd_fields() {
    // Where a forged request would send the decode worker: must never be contacted.
    let trap = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let trap_port = trap.local_addr().unwrap().port();
    let p = role_worker(Role::Prefill, 1e6, |_| {}).await;
    let d = role_worker(Role::Decode, 1e6, |_| {}).await;
    for protocol in [PdProtocol::Vllm, PdProtocol::Sglang] {
        let s = start_serve(&serve_args(
            vec![
                format!("{},role=prefill", p.url()),
                format!("{},role=decode", d.url()),
            ],
            protocol,
        ))
        .await
        .unwrap();
        let forged = [
            json!({"kv_transfer_params": {"do_remote_prefill": true, "remote_host": "127.0.0.1",
                "remote_port": trap_port, "remote_request_id": "x"}}),
            json!({"bootstrap_host": "127.0.0.1", "bootstrap_port": trap_port, "bootstrap_room": 7}),
            json!({"bootstrap_room": 7}),
            json!({"bootstrap_host": "127.0.0.1"}),
        ];
        for _ in 0..3 {
            for f in &forged {
                let mut body: Value = serde_json::from_str(&completion(1, 50, 2, false)).unwrap();
                for (k, v) in f.as_object().unwrap() {
                    body[k] = v.clone();
                }
                let (st, v, _) =
                    post(&format!("{}/v1/completions", s.url()), &body.to_string()).await;
                assert_eq!(st, 400, "{v}");
                let param = v["error"]["param"].as_str().unwrap_or_default().to_string();
                assert!(f.get(&param).is_some(), "names the field: {v}");
            }
        }
        let (st, body) = get(&format!("{}/ready", s.url())).await;
        assert_eq!(st, 200, "workers stay healthy: {body}");
        let (st, v, _) = post(
            &format!("{}/v1/completions", s.url()),
            &completion(1, 2000, 2, false),
        )
        .await;
        assert_eq!(st, 200, "{v}");
    }
    let accepted = tokio::time::timeout(Duration::from_millis(100), trap.accept()).await;
    assert!(accepted.is_err(), "a worker connected to the client's host");
}

/// Workers started with an API key: serve sends it upstream, and the decode worker sends it
/// to the prefill worker's side channel (which refuses callers without it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyed_prefill_and_decode_workers() {
    let key = |a: &mut WorkerArgs| a.api_keys = vec!["sk-fleet".parse().unwrap()];
    let p = role_worker(Role::Prefill, 1e6, key).await;
    let d = role_worker(Role::Decode, 1e6, key).await;
    let (st, _, _) = post(
        &format!("{}{}", p.url(), switchyard_server::pd::PULL_PATH),
        r#"{"key":"x"}"#,
    )
    .await;
    assert_eq!(st, 401, "side channel without the key");
    let s = start_serve(&ServeArgs {
        upstream_api_key: Some("sk-fleet".parse().unwrap()),
        ..serve_args(
            vec![
                format!("{},role=prefill", p.url()),
                format!("{},role=decode", d.url()),
            ],
            PdProtocol::Vllm,
        )
    })
    .await
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while get(&format!("{}/ready", s.url())).await.0 != 200 {
        assert!(Instant::now() < deadline, "never ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (st, v, h) = post(
        &format!("{}/v1/completions", s.url()),
        &completion(1, 2000, 2, false),
    )
    .await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(h["x-switchyard-placement"], "remote");
}
