//! Interoperability with third-party Python clients (`scripts/interop.py`): the official
//! `openai` client through `serve`, a pyzmq+msgpack subscriber of worker events, a pyzmq
//! publisher of vLLM-format events feeding `serve`'s index, and vLLM's replay protocol both
//! ways (a pyzmq client of our worker's replay socket; a pyzmq replay socket repairing a gap
//! in `serve`'s stream).
//!
//! Python comes from `$SWITCHYARD_PYTHON`, else `target/venv/bin/python` (created by
//! `.ci/run`). Without it the tests are skipped, unless `CI` is set (then they fail).

mod common;

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;
use switchyard_server::serve::{ServeArgs, start_serve};
use switchyard_server::worker::{EventEncoding, WorkerArgs, start_worker};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The interpreter with openai/pyzmq/msgpack, or `None` (skip) outside CI.
fn python() -> Option<PathBuf> {
    let p = std::env::var_os("SWITCHYARD_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target/venv/bin/python"));
    if p.exists() {
        return Some(p);
    }
    switchyard_testkit::skip(
        "server python_interop",
        &format!("{} not found", p.display()),
        "bash scripts/test.sh (creates target/venv with openai, pyzmq, msgpack), or set SWITCHYARD_PYTHON",
    );
    None
}

/// Run `scripts/interop.py ARGS` to completion on a blocking thread; panic with its output on
/// failure.
async fn run_py(py: PathBuf, args: Vec<String>) {
    let out = tokio::task::spawn_blocking(move || {
        Command::new(py)
            .arg(root().join("scripts/interop.py"))
            .args(&args)
            .output()
            .expect("python runs")
    })
    .await
    .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "interop.py failed:\n{text}");
    eprintln!("{text}");
}

/// The openai client against a disaggregated deployment (the seed experiments' 6 prefill +
/// 2 decode recipe), with each P/D protocol.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_client_through_disaggregated_serve() {
    let Some(py) = python() else { return };
    for protocol in [
        switchyard_server::serve::PdProtocol::Vllm,
        switchyard_server::serve::PdProtocol::Sglang,
    ] {
        let s = start_serve(&ServeArgs {
            config: Some(root().join("recipes/qwen3-32b-h200/disagg-kv.toml")),
            speedup: 1e4,
            pd_protocol: protocol,
            ..ServeArgs::default()
        })
        .await
        .unwrap();
        run_py(py.clone(), vec!["openai".into(), "--base".into(), s.url()]).await;
        let (_, m) = get(&format!("{}/metrics", s.url())).await;
        // The client's long prompts went through a prefill worker.
        let remote: f64 = m
            .lines()
            .find_map(|l| l.strip_prefix("switchyard_pd_requests_total{placement=\"remote\"} "))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0);
        assert!(remote >= 1.0, "{protocol:?}: no remote prefill:\n{m}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_client_through_serve() {
    let Some(py) = python() else { return };
    let ws = [worker(1e4, true).await, worker(1e4, true).await];
    let specs = ws
        .iter()
        .map(|w| format!("{},kv-events={}", w.url(), w.kv_events.as_ref().unwrap()))
        .collect();
    let s = start_serve(&ServeArgs {
        workers: specs,
        router: Some("kv".into()),
        ..ServeArgs::default()
    })
    .await
    .unwrap();
    run_py(py, vec!["openai".into(), "--base".into(), s.url()]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pyzmq_subscriber_decodes_worker_events() {
    let Some(py) = python() else { return };
    for enc in [EventEncoding::Positional, EventEncoding::Map] {
        let args = WorkerArgs {
            speedup: 1e6,
            kv_events: Some("tcp://127.0.0.1:0".into()),
            kv_events_encoding: enc,
            ..WorkerArgs::default()
        };
        let w = start_worker(&args, engine_cfg()).await.unwrap();
        let name = if enc == EventEncoding::Map {
            "map"
        } else {
            "positional"
        };
        run_py(
            py.clone(),
            vec![
                "subscribe".into(),
                "--endpoint".into(),
                w.kv_events.clone().unwrap(),
                "--http".into(),
                w.url(),
                "--encoding".into(),
                name.into(),
            ],
        )
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_publishers_drive_the_index_in_both_encodings() {
    let Some(py) = python() else { return };
    // Two workers without their own events; each "publishes" through a Python process
    // emitting vLLM-format events for a different prefix, in a different encoding.
    let ws = [worker(1e6, false).await, worker(1e6, false).await];
    let ports = [free_port(), free_port()];
    let mut children = Vec::new();
    for (i, enc) in ["positional", "map"].iter().enumerate() {
        let child = Command::new(&py)
            .arg(root().join("scripts/interop.py"))
            .args([
                "publish",
                "--bind",
                &format!("tcp://127.0.0.1:{}", ports[i]),
                "--encoding",
                enc,
                "--first-token",
                &(100_000 * (i + 1)).to_string(),
                "--blocks",
                "8",
                "--seconds",
                "30",
            ])
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        children.push(KillOnDrop(child));
    }
    let specs = (0..2)
        .map(|i| format!("{},kv-events=tcp://127.0.0.1:{}", ws[i].url(), ports[i]))
        .collect();
    let s = start_serve(&ServeArgs {
        workers: specs,
        router: Some("kv".into()),
        health_interval: 0.2,
        expose_worker_urls: true,
        ..ServeArgs::default()
    })
    .await
    .unwrap();
    let base = s.url();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (_, body) = get(&format!("{base}/v1/workers")).await;
        let j: Value = serde_json::from_str(&body).unwrap();
        let cached: Vec<u64> = j["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|w| w["cached_blocks"].as_u64().unwrap())
            .collect();
        if cached == [8, 8] {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "index never saw both publishers: {j}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for (i, w) in ws.iter().enumerate() {
        // The published prefix (8 blocks) plus a private tail.
        let first = 100_000 * (i as u32 + 1);
        let mut p: Vec<u32> = (first..first + 128).collect();
        p.extend(1..20);
        let (st, v, h) = complete_ids(&base, &p).await;
        assert_eq!(st, 200, "{v}");
        assert_eq!(h["x-switchyard-worker"], w.url().as_str());
        assert_eq!(h["x-switchyard-overlap-blocks"], "8");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pyzmq_replay_client_reads_the_worker_buffer() {
    let Some(py) = python() else { return };
    let args = WorkerArgs {
        speedup: 1e6,
        kv_events: Some("tcp://127.0.0.1:0".into()),
        kv_events_replay: Some("tcp://127.0.0.1:0".into()),
        ..WorkerArgs::default()
    };
    let w = start_worker(&args, engine_cfg()).await.unwrap();
    run_py(
        py,
        vec![
            "replay".into(),
            "--endpoint".into(),
            w.kv_events_replay.clone().unwrap(),
            "--http".into(),
            w.url(),
        ],
    )
    .await;
}

/// A vLLM-style publisher (pyzmq) whose first two batches went out before `serve` existed
/// and whose third is lost on the live stream: `serve` gets all of them by replay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_replay_socket_repairs_a_lost_batch() {
    let Some(py) = python() else { return };
    let w = worker(1e6, false).await;
    let (port, replay) = (free_port(), free_port());
    let child = Command::new(&py)
        .arg(root().join("scripts/interop.py"))
        .args([
            "publish-replay",
            "--bind",
            &format!("tcp://127.0.0.1:{port}"),
            "--replay",
            &format!("tcp://127.0.0.1:{replay}"),
            "--first-token",
            "300000",
            "--seconds",
            "30",
        ])
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let _child = KillOnDrop(child);
    let s = start_serve(&ServeArgs {
        workers: vec![format!(
            "{},kv-events=tcp://127.0.0.1:{port},replay=tcp://127.0.0.1:{replay}",
            w.url()
        )],
        router: Some("kv".into()),
        health_interval: 0.2,
        ..ServeArgs::default()
    })
    .await
    .unwrap();
    let base = s.url();
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut seen_eight = false;
    loop {
        let (_, body) = get(&format!("{base}/v1/workers")).await;
        let j: Value = serde_json::from_str(&body).unwrap();
        let cached = j["data"][0]["cached_blocks"].as_u64().unwrap();
        // First the 8 blocks published before serve started, then 8 more across the gap.
        seen_eight |= cached == 8;
        if cached == 16 {
            assert_eq!(j["data"][0]["kv_index"], "complete", "{j}");
            assert_eq!(j["data"][0]["kv_event_seq_gaps"], 1, "{j}");
            break;
        }
        assert!(Instant::now() < deadline, "gap never repaired: {j}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(seen_eight, "the pre-start batches were not replayed first");
    // The repaired prefix routes: 8 blocks of the batch lost live plus the one after it.
    let p: Vec<u32> = (310_000..310_000 + 128).chain(1..20).collect();
    let (st, v, h) = complete_ids(&base, &p).await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(h["x-switchyard-overlap-blocks"], "8");
}

struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A child process killed on drop.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// SGLang's own router (`sglang-router` from PyPI) in front of our workers: it discovers them
/// (`/health`, `/server_info`, `/model_info`), rewrites and forwards OpenAI requests, and
/// streams their answers; our workers must serve all of it correctly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sglang_router_in_front_of_our_workers() {
    let Some(py) = python() else { return };
    let has_router = Command::new(&py)
        .args(["-c", "import sglang_router"])
        .status()
        .is_ok_and(|s| s.success());
    if !has_router {
        switchyard_testkit::skip(
            "server python_interop: sglang-router",
            "sglang-router is not installed in the interop venv",
            "bash scripts/test.sh (pip installs sglang-router into target/venv)",
        );
        return;
    }
    let ws = [worker(1e4, false).await, worker(1e4, false).await];
    for w in &ws {
        let (st, info) = get(&format!("{}/server_info", w.url())).await;
        assert_eq!(st, 200, "{info}");
        assert!(info.contains("\"dp_size\""), "{info}");
    }
    let port = free_port();
    let mut cmd = Command::new(&py);
    cmd.args([
        "-m",
        "sglang_router.launch_router",
        "--host",
        "127.0.0.1",
        "--port",
        &port.to_string(),
        "--prometheus-port",
        &free_port().to_string(),
        "--policy",
        "cache_aware",
        "--worker-urls",
    ])
    .args(ws.iter().map(|w| w.url()))
    .stdout(Stdio::null())
    .stderr(Stdio::null());
    let _router = Child(cmd.spawn().expect("sglang router starts"));
    let base = format!("http://127.0.0.1:{port}");
    let body = r#"{"model":"Qwen3-32B","prompt":"Hello from SGLang's router","max_tokens":5,"some_unknown_field":1}"#;
    let deadline = Instant::now() + Duration::from_secs(60);
    let v = loop {
        if let Ok(r) = client()
            .post(format!("{base}/v1/completions"))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            && r.status() == 200
        {
            break r.json::<Value>().await.unwrap();
        }
        assert!(Instant::now() < deadline, "sglang router never served");
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    assert_eq!(v["usage"]["completion_tokens"], 5, "{v}");
    assert_eq!(v["choices"][0]["finish_reason"], "length", "{v}");
    // Chat, streamed with usage, through the router.
    let r = client()
        .post(format!("{base}/v1/chat/completions"))
        .header("content-type", "application/json")
        .body(
            r#"{"model":"Qwen3-32B","messages":[{"role":"user","content":"hi"}],"max_completion_tokens":7,"stream":true,"stream_options":{"include_usage":true}}"#,
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let text = r.text().await.unwrap();
    let data = sse_data(&text);
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"), "{text}");
    let usage: Value = serde_json::from_str(&data[data.len() - 2]).unwrap();
    assert_eq!(usage["usage"]["completion_tokens"], 7, "{text}");
}
