//! vLLM's KV-event replay between real workers and `serve` on loopback: a frontend that
//! starts after its workers rebuilds their index entries from the replay buffer, and an
//! engine restarted behind the same address is recognised and its stale entries dropped.

mod common;

use std::time::{Duration, Instant};

use common::{complete_ids, engine_cfg, free_port, get, metric};
use serde_json::Value;
use switchyard_server::serve::{ServeArgs, start_serve};
use switchyard_server::worker::{WorkerArgs, WorkerHandle, start_worker};

async fn replay_worker(port: u16, events: u16, replay: Option<u16>) -> WorkerHandle {
    let args = WorkerArgs {
        host: "127.0.0.1".into(),
        port,
        speedup: 1e6,
        kv_events: Some(format!("tcp://127.0.0.1:{events}")),
        kv_events_replay: replay.map(|p| format!("tcp://127.0.0.1:{p}")),
        ..WorkerArgs::default()
    };
    start_worker(&args, engine_cfg())
        .await
        .expect("worker starts")
}

/// 64-token prompt (4 blocks of 16) starting at token `base`.
async fn complete(url: &str, base: u32) -> reqwest::header::HeaderMap {
    let prompt: Vec<u32> = (base..base + 64).collect();
    let (st, v, h) = complete_ids(url, &prompt).await;
    assert_eq!(st, 200, "{v}");
    h
}

async fn workers_json(base: &str) -> Vec<Value> {
    let (_, body) = get(&format!("{base}/v1/workers")).await;
    let j: Value = serde_json::from_str(&body).unwrap();
    j["data"].as_array().unwrap().clone()
}

/// Poll `/v1/workers` until `ok` holds, or fail with the last listing.
async fn wait_workers(base: &str, what: &str, ok: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let ws = workers_json(base).await;
        if ok(&ws) {
            return ws;
        }
        assert!(Instant::now() < deadline, "{what}: {ws:#?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frontend_started_after_its_workers_rebuilds_the_index_by_replay() {
    let a = replay_worker(0, 0, Some(0)).await;
    let b = replay_worker(0, 0, None).await;
    // Both workers cache the same 3 prompts (12 blocks) before any frontend exists.
    for w in [&a, &b] {
        for base in [1_000, 2_000, 3_000] {
            complete(&w.url(), base).await;
        }
    }
    let specs = vec![
        format!(
            "{},kv-events={},replay={}",
            a.url(),
            a.kv_events.as_ref().unwrap(),
            a.kv_events_replay.as_ref().unwrap()
        ),
        format!("{},kv-events={}", b.url(), b.kv_events.as_ref().unwrap()),
    ];
    let s = start_serve(&ServeArgs {
        workers: specs,
        router: Some("kv".into()),
        health_interval: 0.2,
        expose_worker_urls: true,
        ..ServeArgs::default()
    })
    .await
    .unwrap();
    let t0 = Instant::now();
    let base = s.url();
    let ws = wait_workers(&base, "replay never rebuilt worker A", |ws| {
        ws[0]["kv_index"] == "complete" && ws[1]["kv_index"] == "unknown"
    })
    .await;
    eprintln!(
        "index rebuilt by replay {:?} after serve started",
        t0.elapsed()
    );
    // A's entries came from the replay buffer; B offers no replay, so what it cached before
    // the frontend subscribed is unknown to it.
    let (_, m) = get(&format!("{base}/metrics")).await;
    assert_eq!(ws[0]["cached_blocks"], 12, "{ws:#?}\n{m}");
    assert_eq!(ws[1]["cached_blocks"], 0, "{ws:#?}");
    assert_eq!(
        ws[0]["kv_events_replay"],
        a.kv_events_replay.clone().unwrap()
    );
    // So a repeated prompt goes to A with its whole prefix matched.
    let h = complete(&base, 2_000).await;
    assert_eq!(h["x-switchyard-worker"], a.url().as_str());
    assert_eq!(h["x-switchyard-overlap-blocks"], "4");
    assert!(metric(&base, "switchyard_kv_event_replays_total").await >= 1.0);
    assert!(metric(&base, "switchyard_kv_event_replayed_batches_total").await >= 1.0);
    assert_eq!(
        metric(&base, "switchyard_kv_event_replay_failures_total").await,
        0.0
    );
    let (_, ready) = get(&format!("{base}/ready")).await;
    let ready: Value = serde_json::from_str(&ready).unwrap();
    assert_eq!(ready["kv_index"]["complete"], 1, "{ready}");
    assert_eq!(ready["kv_index"]["unknown"], 1, "{ready}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_engine_is_recognised_and_its_stale_entries_dropped() {
    let (http, events, replay) = (free_port(), free_port(), free_port());
    let w = replay_worker(http, events, Some(replay)).await;
    let s = start_serve(&ServeArgs {
        workers: vec![format!(
            "http://127.0.0.1:{http},kv-events=tcp://127.0.0.1:{events},replay=tcp://127.0.0.1:{replay}"
        )],
        router: Some("kv".into()),
        // No health check notices the restart: the silent stream's replay probe must.
        health_interval: 600.0,
        ..ServeArgs::default()
    })
    .await
    .unwrap();
    let base = s.url();
    wait_workers(&base, "never subscribed", |ws| {
        ws[0]["kv_index"] == "complete" && ws[0]["healthy"] == true
    })
    .await;
    for b in [1_000, 2_000, 3_000] {
        complete(&base, b).await;
    }
    wait_workers(&base, "live events never arrived", |ws| {
        ws[0]["cached_blocks"] == 12
    })
    .await;
    // The engine dies and a new one comes up behind the same addresses and publishes more
    // batches than the old one did: the sequence number serve saw last (2) now names another
    // batch, told apart only by its content.
    w.shutdown();
    drop(w);
    let w2 = loop {
        // The old sockets close asynchronously: retry the bind briefly.
        match start_worker(
            &WorkerArgs {
                host: "127.0.0.1".into(),
                port: http,
                speedup: 1e6,
                kv_events: Some(format!("tcp://127.0.0.1:{events}")),
                kv_events_replay: Some(format!("tcp://127.0.0.1:{replay}")),
                ..WorkerArgs::default()
            },
            engine_cfg(),
        )
        .await
        {
            Ok(w) => break w,
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    };
    for b in [6_000, 7_000, 8_000, 9_000] {
        complete(&w2.url(), b).await;
    }
    let ws = wait_workers(&base, "the restart was not recognised", |ws| {
        ws[0]["cached_blocks"] == 16
    })
    .await;
    assert_eq!(ws[0]["kv_index"], "complete", "{ws:#?}");
    assert!(metric(&base, "switchyard_engine_restarts_total").await >= 1.0);
    // Routing follows the new cache, not the old one.
    let h = complete(&base, 9_000).await;
    assert_eq!(h["x-switchyard-overlap-blocks"], "4");
    let h = complete(&base, 1_000).await;
    assert_eq!(h["x-switchyard-overlap-blocks"], "0");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_replay_socket_falls_back_to_live_events() {
    // Events on, but `replay=` names a port nobody listens on.
    let w = replay_worker(0, 0, None).await;
    let dead = free_port();
    let s = start_serve(&ServeArgs {
        workers: vec![format!(
            "{},kv-events={},replay=tcp://127.0.0.1:{dead}",
            w.url(),
            w.kv_events.as_ref().unwrap()
        )],
        router: Some("kv".into()),
        health_interval: 0.2,
        ..ServeArgs::default()
    })
    .await
    .unwrap();
    let base = s.url();
    // The failed replay settles the state (nothing known before subscribing), not "pending".
    wait_workers(&base, "replay failure never settled", |ws| {
        ws[0]["kv_index"] == "unknown"
    })
    .await;
    assert!(metric(&base, "switchyard_kv_event_replay_failures_total").await >= 1.0);
    // Live events still feed the index.
    complete(&base, 4_000).await;
    wait_workers(&base, "live events stopped with replay down", |ws| {
        ws[0]["cached_blocks"] == 4
    })
    .await;
}
