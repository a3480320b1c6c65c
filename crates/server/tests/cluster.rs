//! The cluster layer wired into `serve` and `worker`, against a real etcd and nats-server on
//! loopback: workers join and leave through etcd leases, two active-active frontends route
//! shared prefixes consistently (exact mode through the workers' KV events, approximate mode
//! through NATS), a frontend dies under load, etcd goes away and comes back.
//!
//! Needs `etcd` and `nats-server` on PATH (`scripts/install-cluster-deps.sh`).

#[path = "../../cluster/tests/support/mod.rs"]
mod cluster_support;
mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use cluster_support::{Etcd, Nats};
use common::{client, engine_cfg};
use serde_json::Value;
use switchyard_cluster::Registration;
use switchyard_server::ServeArgs;
use switchyard_server::serve::{ServeHandle, start_serve};
use switchyard_server::worker::{WorkerArgs, WorkerHandle, register_worker, start_worker};

/// A simulated worker at high speedup (a request takes a few ms), KV events (with vLLM's
/// replay socket) on or off.
async fn sim_worker(events: bool) -> WorkerHandle {
    let args = WorkerArgs {
        speedup: 1e4,
        kv_events: events.then(|| "tcp://127.0.0.1:0".to_string()),
        kv_events_replay: events.then(|| "tcp://127.0.0.1:0".to_string()),
        ..WorkerArgs::default()
    };
    start_worker(&args, engine_cfg()).await.expect("worker")
}

fn register(h: &WorkerHandle, etcd: &str, ttl: u32) -> Registration {
    let args = WorkerArgs {
        register_ttl: ttl,
        ..WorkerArgs::default()
    };
    register_worker(h, &args, etcd).expect("registration starts")
}

fn serve_args(etcd: Option<String>, nats: Option<String>, feed: &str, replica: &str) -> ServeArgs {
    ServeArgs {
        router: Some("kv".into()),
        kv_feed: Some(feed.into()),
        discovery: etcd,
        nats,
        replica_id: Some(replica.into()),
        health_interval: 0.3,
        warmup_timeout: 5.0,
        expose_worker_urls: true,
        ..ServeArgs::default()
    }
}

async fn get_json(url: &str) -> (u16, Value) {
    let r = client().get(url).send().await.expect("GET");
    let st = r.status().as_u16();
    (st, r.json().await.unwrap_or(Value::Null))
}

async fn workers(s: &ServeHandle) -> Vec<Value> {
    let (_, v) = get_json(&format!("{}/v1/workers", s.url())).await;
    v["data"].as_array().cloned().unwrap_or_default()
}

/// URLs of the healthy workers a frontend routes to.
async fn healthy_urls(s: &ServeHandle) -> BTreeSet<String> {
    workers(s)
        .await
        .iter()
        .filter(|w| w["healthy"] == true)
        .filter_map(|w| w["url"].as_str().map(String::from))
        .collect()
}

async fn metric(s: &ServeHandle, name: &str) -> f64 {
    common::metric(&s.url(), name).await
}

/// Poll `f` every 5 ms until it is true; the time it took, or a panic naming `what`.
async fn eventually<F, Fut>(within: Duration, what: &str, mut f: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let t0 = Instant::now();
    while t0.elapsed() < within {
        if f().await {
            return t0.elapsed();
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("not within {within:?}: {what}");
}

/// A prompt of a 256-token prefix shared by `group` and a 32-token tail unique to `n`.
fn shared_prefix_prompt(group: u32, n: u32) -> String {
    let mut t: Vec<String> = (0..256).map(|i| (group * 1000 + i).to_string()).collect();
    t.extend((0..32).map(|i| (500_000 + n * 100 + i).to_string()));
    format!(
        r#"{{"model":"Qwen3-32B","prompt":[{}],"max_tokens":2}}"#,
        t.join(",")
    )
}

/// POST a completion; (status, the worker URL it went to).
async fn complete(c: &reqwest::Client, s: &str, body: &str) -> (u16, String) {
    match c
        .post(format!("{s}/v1/completions"))
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
    {
        Ok(r) => {
            let st = r.status().as_u16();
            let w = r
                .headers()
                .get("x-switchyard-worker")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string();
            let _ = r.bytes().await;
            (st, w)
        }
        Err(e) => (0, e.to_string()),
    }
}

async fn wait_ready(s: &ServeHandle, within: Duration) -> Duration {
    let url = format!("{}/ready", s.url());
    eventually(within, "frontend ready and warm", || {
        let url = url.clone();
        async move {
            let (st, v) = get_json(&url).await;
            st == 200 && v["warm"] == true
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_join_and_leave_through_etcd_and_a_dead_one_gets_no_requests() {
    let etcd = Etcd::start();
    let static_worker = sim_worker(true).await;
    let mut args = serve_args(Some(etcd.url()), None, "events", "r1");
    args.workers = vec![format!(
        "{},kv-events={}",
        static_worker.url(),
        static_worker.kv_events.clone().unwrap()
    )];
    let s = start_serve(&args).await.unwrap();
    wait_ready(&s, Duration::from_secs(10)).await;
    assert_eq!(healthy_urls(&s).await.len(), 1, "the static worker");

    // Two workers register; the frontend routes to them within milliseconds.
    let a = sim_worker(true).await;
    let b = sim_worker(true).await;
    let t = Instant::now();
    let reg_a = register(&a, &etcd.url(), 2);
    let reg_b = register(&b, &etcd.url(), 2);
    let want: BTreeSet<String> = [static_worker.url(), a.url(), b.url()].into();
    eventually(Duration::from_secs(5), "a and b routable", || async {
        healthy_urls(&s).await == want
    })
    .await;
    eprintln!("registered -> routable: {:?}", t.elapsed());
    let ws = workers(&s).await;
    let rec_a = ws.iter().find(|w| w["url"] == a.url().as_str()).unwrap();
    assert_eq!(rec_a["discovered_as"], a.record().id.as_str());
    assert_eq!(rec_a["kv_events"], a.kv_events.clone().unwrap().as_str());
    assert_eq!(rec_a["role"], "aggregated");

    // Distinct prompts spread over the three; every worker gets cache entries.
    let c = client();
    let mut hits: BTreeMap<String, u32> = BTreeMap::new();
    for n in 0..30 {
        let (st, w) = complete(&c, &s.url(), &shared_prefix_prompt(100 + n, n)).await;
        assert_eq!(st, 200, "{w}");
        *hits.entry(w).or_default() += 1;
    }
    assert_eq!(hits.len(), 3, "{hits:?}");
    eventually(Duration::from_secs(3), "a's blocks indexed", || async {
        let ws = workers(&s).await;
        ws.iter()
            .any(|w| w["url"] == a.url().as_str() && w["cached_blocks"].as_u64() > Some(0))
    })
    .await;

    // Clean leave: the lease is revoked, the worker goes at once.
    let t = Instant::now();
    reg_b.shutdown().await;
    eventually(Duration::from_secs(2), "b removed", || async {
        !healthy_urls(&s).await.contains(&b.url())
    })
    .await;
    eprintln!("revoked -> removed: {:?}", t.elapsed());

    // Crash: the process stops answering and its keep-alives stop (no revoke). Requests
    // keep coming meanwhile: the ones that hit the dead worker are retried elsewhere.
    a.shutdown();
    drop(reg_a);
    let t = Instant::now();
    let mut n = 1000;
    let mut removed_at = None;
    while t.elapsed() < Duration::from_secs(6) {
        let (st, _) = complete(&c, &s.url(), &shared_prefix_prompt(n, n)).await;
        assert_eq!(st, 200, "clients see no errors while the lease runs out");
        n += 1;
        if !workers(&s)
            .await
            .iter()
            .any(|w| w["url"] == a.url().as_str())
        {
            removed_at = Some(t.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let removed_at = removed_at.expect("crashed worker removed within the lease TTL (+ slack)");
    eprintln!("crashed (TTL 2 s) -> removed: {removed_at:?}");
    assert!(removed_at < Duration::from_secs(5), "{removed_at:?}");
    // Nothing is routed to it afterwards, and its index entries are gone: the index holds
    // exactly the remaining workers' blocks (the prompts share no blocks).
    for i in 0..10 {
        let (st, w) = complete(&c, &s.url(), &shared_prefix_prompt(5000 + i, i)).await;
        assert_eq!(st, 200);
        assert_eq!(w, static_worker.url());
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let ws = workers(&s).await;
    assert_eq!(ws.len(), 1, "{ws:?}");
    let remaining: u64 = ws.iter().filter_map(|w| w["cached_blocks"].as_u64()).sum();
    assert_eq!(
        metric(&s, "switchyard_index_blocks ").await as u64,
        remaining
    );
    assert_eq!(
        metric(&s, "switchyard_discovery_changes_total{change=\"leave\"}").await,
        2.0
    );
    assert_eq!(
        metric(&s, "switchyard_discovery_state{state=\"connected\"}").await,
        1.0
    );
}

/// Two frontends, four registered workers: `(frontend A, frontend B, the 4 workers)`.
struct Fleet {
    a: ServeHandle,
    b: ServeHandle,
    workers: Vec<WorkerHandle>,
    _regs: Vec<Registration>,
}

async fn fleet(etcd: &Etcd, nats: &Nats, events: bool, feed: &str) -> Fleet {
    let mut workers = Vec::new();
    let mut regs = Vec::new();
    for _ in 0..4 {
        let w = sim_worker(events).await;
        regs.push(register(&w, &etcd.url(), 5));
        workers.push(w);
    }
    let a = start_serve(&serve_args(Some(etcd.url()), Some(nats.url()), feed, "a"))
        .await
        .unwrap();
    let b = start_serve(&serve_args(Some(etcd.url()), Some(nats.url()), feed, "b"))
        .await
        .unwrap();
    for s in [&a, &b] {
        wait_ready(s, Duration::from_secs(10)).await;
        eventually(Duration::from_secs(5), "4 healthy workers", || async {
            healthy_urls(s).await.len() == 4
        })
        .await;
    }
    // Both replicas hear each other on NATS before the test starts.
    for (s, peer) in [(&a, "b"), (&b, "a")] {
        let url = format!("{}/ready", s.url());
        eventually(Duration::from_secs(5), "peer heard on NATS", || {
            let url = url.clone();
            async move {
                let (_, v) = get_json(&url).await;
                v["links"]["nats"]["peers"]
                    .as_array()
                    .is_some_and(|p| p.iter().any(|x| x == peer))
            }
        })
        .await;
    }
    Fleet {
        a,
        b,
        workers,
        _regs: regs,
    }
}

/// Both replicas see no in-flight requests of the other.
async fn settled(f: &Fleet) {
    for s in [&f.a, &f.b] {
        eventually(
            Duration::from_secs(2),
            "peer in-flight back to 0",
            || async { metric(s, "switchyard_fanout_peer_inflight").await == 0.0 },
        )
        .await;
    }
}

/// Send each group's requests alternately to A and B; every group must stay on one worker.
/// Returns the worker of each group.
async fn alternate(f: &Fleet, groups: std::ops::Range<u32>, per_group: u32) -> Vec<String> {
    let c = client();
    let mut placed = Vec::new();
    for g in groups {
        let mut seen = BTreeSet::new();
        for n in 0..per_group {
            let s = if n % 2 == 0 { &f.a } else { &f.b };
            let (st, w) = complete(&c, &s.url(), &shared_prefix_prompt(g, n)).await;
            assert_eq!(st, 200, "{w}");
            seen.insert(w);
            // Let the cache knowledge reach the other replica (events or NATS: ms), and the
            // finished request's −1: a peer's in-flight request on the cached worker
            // legitimately weighs against it (18 blocks of decode vs 16 cached blocks).
            tokio::time::sleep(Duration::from_millis(30)).await;
            settled(f).await;
        }
        assert_eq!(seen.len(), 1, "group {g} split across {seen:?}");
        placed.push(seen.into_iter().next().unwrap());
    }
    placed
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_agree_on_shared_prefixes_exact_mode_via_events() {
    let etcd = Etcd::start();
    let nats = Nats::start();
    let f = fleet(&etcd, &nats, true, "events").await;
    let placed = alternate(&f, 0..8, 4).await;
    // The groups spread over the fleet (load matters too), they do not pile on one worker.
    let distinct: BTreeSet<_> = placed.iter().collect();
    assert!(distinct.len() >= 2, "{placed:?}");
    // Both replicas see the same exact index: the same cached blocks per worker.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let blocks = |ws: Vec<Value>| -> BTreeMap<String, u64> {
        ws.iter()
            .map(|w| {
                (
                    w["url"].as_str().unwrap().to_string(),
                    w["cached_blocks"].as_u64().unwrap(),
                )
            })
            .collect()
    };
    assert_eq!(blocks(workers(&f.a).await), blocks(workers(&f.b).await));
    assert!(metric(&f.a, "switchyard_fanout_notes_total{outcome=\"published\"}").await > 0.0);
    drop(f.workers);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn approximate_mode_converges_across_replicas_through_nats() {
    let etcd = Etcd::start();
    let nats = Nats::start();
    // Workers without KV events: the only cache knowledge is the routers' predictions.
    let f = fleet(&etcd, &nats, false, "approximate").await;
    let placed = alternate(&f, 0..8, 4).await;
    let distinct: BTreeSet<_> = placed.iter().collect();
    assert!(distinct.len() >= 2, "{placed:?}");
    assert!(
        metric(
            &f.b,
            "switchyard_fanout_predictions_applied_total{worker=\"known\"}"
        )
        .await
            >= 16.0
    );

    // Propagation: a request routed by A is in B's index within milliseconds. B's predicted
    // blocks for the chosen worker grow by the prompt's 18 blocks.
    let c = client();
    let mut lat = Vec::new();
    for g in 100..120u32 {
        let before: BTreeMap<String, u64> = workers(&f.b)
            .await
            .iter()
            .map(|w| {
                (
                    w["url"].as_str().unwrap().into(),
                    w["cached_blocks"].as_u64().unwrap(),
                )
            })
            .collect();
        let t = Instant::now();
        let (st, w) = complete(&c, &f.a.url(), &shared_prefix_prompt(g, 0)).await;
        assert_eq!(st, 200);
        let d = eventually(Duration::from_secs(2), "prediction reaches B", || async {
            workers(&f.b).await.iter().any(|x| {
                x["url"] == w.as_str() && x["cached_blocks"].as_u64() > before.get(&w).copied()
            })
        })
        .await;
        lat.push((t.elapsed() - d, t.elapsed()));
        settled(&f).await;
        // The same prefix sent to B now lands on the same worker.
        let (_, wb) = complete(&c, &f.b.url(), &shared_prefix_prompt(g, 1)).await;
        assert_eq!(wb, w, "group {g}");
    }
    let mut total: Vec<f64> = lat.iter().map(|(_, t)| t.as_secs_f64() * 1e3).collect();
    total.sort_by(|a, b| a.total_cmp(b));
    eprintln!(
        "approximate: request to A -> prediction visible in B's /v1/workers: p50 {:.1} ms, max {:.1} ms (incl. A's request and HTTP polling)",
        total[total.len() / 2],
        total[total.len() - 1]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losing_a_replica_mid_load_costs_the_other_replicas_clients_nothing() {
    let etcd = Etcd::start();
    let nats = Nats::start();
    let f = fleet(&etcd, &nats, true, "events").await;
    let Fleet {
        a,
        b,
        workers: _workers,
        _regs,
    } = f;
    let b_url = b.url();
    let a_url = a.url();
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicU64::new(0));
    let mut clients = Vec::new();
    // 4 clients on B, 4 on A, shared prefixes.
    for (i, url) in (0..8).map(|i| (i, if i < 4 { b_url.clone() } else { a_url.clone() })) {
        let stop = stop.clone();
        let ok = ok.clone();
        clients.push(tokio::spawn(async move {
            // No connection reuse: a dropped in-process frontend must stop answering (a
            // kept-alive connection would outlive its listener).
            let c = reqwest::Client::builder()
                .pool_max_idle_per_host(0)
                .timeout(Duration::from_secs(10))
                .build()
                .unwrap();
            let mut errors = Vec::new();
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                let (st, w) = complete(&c, &url, &shared_prefix_prompt(i % 3, n)).await;
                if st == 200 {
                    ok.fetch_add(1, Ordering::Relaxed);
                } else {
                    errors.push((st, w));
                }
                n += 1;
            }
            (i, errors)
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    // B sees A's in-flight requests.
    let peer_inflight = metric(&b, "switchyard_fanout_peer_inflight").await;
    eprintln!("B's view of A's in-flight requests under load: {peer_inflight}");
    let before = ok.load(Ordering::Relaxed);
    drop(a); // replica A dies (its listener, etcd watch and NATS link go with it)
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        let (i, errors) = c.await.unwrap();
        if i < 4 {
            assert!(errors.is_empty(), "B's client {i} saw errors: {errors:?}");
        }
    }
    assert!(ok.load(Ordering::Relaxed) > before + 20, "B kept serving");
    // A's counts expire at B (3 s after A's last snapshot).
    eventually(
        Duration::from_secs(5),
        "A's in-flight counts expire at B",
        || async {
            metric(&b, "switchyard_fanout_peers").await == 0.0
                && metric(&b, "switchyard_fanout_peer_inflight").await == 0.0
        },
    )
    .await;

    // A restarted replica becomes ready and routes consistently with B.
    let a2 = start_serve(&serve_args(
        Some(etcd.url()),
        Some(nats.url()),
        "events",
        "a",
    ))
    .await
    .unwrap();
    let warm = wait_ready(&a2, Duration::from_secs(10)).await;
    eprintln!("restarted replica warm after {warm:?}");
    // Warm means rebuilt: by replay from the workers' buffers, the restarted replica knows
    // every block cached under load before it existed, exactly as B does.
    let cached = |ws: Vec<Value>| -> BTreeMap<String, (u64, String)> {
        ws.iter()
            .map(|w| {
                (
                    w["url"].as_str().unwrap().to_string(),
                    (
                        w["cached_blocks"].as_u64().unwrap(),
                        w["kv_index"].as_str().unwrap_or("").to_string(),
                    ),
                )
            })
            .collect()
    };
    let (at_a2, at_b) = (cached(workers(&a2).await), cached(workers(&b).await));
    assert_eq!(at_a2, at_b, "restarted replica's index differs from B's");
    assert!(
        at_a2.values().all(|(_, state)| state == "complete")
            && at_a2.values().map(|(n, _)| n).sum::<u64>() > 0,
        "{at_a2:?}"
    );
    let c = client();
    for g in 20..24u32 {
        let (_, w1) = complete(&c, &b.url(), &shared_prefix_prompt(g, 0)).await;
        tokio::time::sleep(Duration::from_millis(30)).await;
        let (_, w2) = complete(&c, &a2.url(), &shared_prefix_prompt(g, 1)).await;
        assert_eq!(w1, w2, "group {g}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_down_at_start_and_later_serving_continues_degraded_then_recovers() {
    // etcd not running yet: the frontend starts on its static worker, degraded.
    let mut etcd = Etcd::unstarted();
    let fixed = sim_worker(true).await;
    let mut args = serve_args(Some(etcd.url()), None, "events", "r1");
    args.workers = vec![fixed.url()];
    args.warmup_timeout = 1.0;
    let s = start_serve(&args).await.unwrap();
    let ready = format!("{}/ready", s.url());
    eventually(
        Duration::from_secs(5),
        "ready on the static worker",
        || async {
            let (st, v) = get_json(&ready).await;
            st == 200 && v["warm"] == true
        },
    )
    .await;
    let (_, v) = get_json(&ready).await;
    assert_eq!(v["degraded"], true, "{v}");
    assert_eq!(v["degraded_links"][0], "etcd", "{v}");
    let c = client();
    assert_eq!(
        complete(&c, &s.url(), &shared_prefix_prompt(1, 1)).await.0,
        200
    );

    // etcd comes up; a worker registers and is discovered.
    etcd.restart();
    let w = sim_worker(true).await;
    let _reg = register(&w, &etcd.url(), 10);
    let t = Instant::now();
    eventually(
        Duration::from_secs(10),
        "discovered after etcd came up",
        || async { healthy_urls(&s).await.contains(&w.url()) },
    )
    .await;
    eprintln!("etcd up -> worker discovered: {:?}", t.elapsed());
    let (_, v) = get_json(&ready).await;
    assert_eq!(v["degraded"], false, "{v}");
    assert_eq!(v["links"]["etcd"]["state"], "connected");

    // etcd dies: the last known membership keeps serving, /ready stays 200 but degraded.
    etcd.kill();
    eventually(Duration::from_secs(5), "degraded reported", || async {
        let (st, v) = get_json(&ready).await;
        st == 200 && v["links"]["etcd"]["state"] == "degraded"
    })
    .await;
    assert_eq!(
        metric(&s, "switchyard_discovery_state{state=\"degraded\"}").await,
        1.0
    );
    let mut on_w = 0;
    for n in 0..20 {
        let (st, x) = complete(&c, &s.url(), &shared_prefix_prompt(200 + n, n)).await;
        assert_eq!(st, 200);
        on_w += u32::from(x == w.url());
    }
    assert!(
        on_w > 0,
        "the discovered worker still gets traffic during the outage"
    );

    // etcd is back: connected again, the membership unchanged (the lease survived).
    let t = Instant::now();
    etcd.restart();
    eventually(Duration::from_secs(10), "recovered", || async {
        let (st, v) = get_json(&ready).await;
        st == 200 && v["degraded"] == false
    })
    .await;
    eprintln!("etcd restarted -> discovery connected: {:?}", t.elapsed());
    assert!(healthy_urls(&s).await.contains(&w.url()));
    let (_, v) = get_json(&ready).await;
    assert!(v["links"]["etcd"]["connects"].as_u64() >= Some(2), "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn engine_reported_load_shows_requests_of_other_frontends() {
    // Real-time workers (speedup 1): a 300-token answer takes seconds.
    let slow = |_: ()| async {
        start_worker(
            &WorkerArgs {
                speedup: 1.0,
                ..WorkerArgs::default()
            },
            engine_cfg(),
        )
        .await
        .unwrap()
    };
    let (w1, w2) = (slow(()).await, slow(()).await);
    let s = start_serve(&ServeArgs {
        workers: vec![w1.url(), w2.url()],
        router: Some("least-load".into()),
        engine_metrics_interval: 0.1,
        expose_worker_urls: true,
        ..ServeArgs::default()
    })
    .await
    .unwrap();
    // Another frontend (or a client going around this one) loads worker 1.
    let c = client();
    let body = r#"{"model":"Qwen3-32B","prompt":[1,2,3,4,5,6,7,8],"max_tokens":300,"stream":true}"#;
    let mut streams = Vec::new();
    for _ in 0..3 {
        let r = c
            .post(format!("{}/v1/completions", w1.url()))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        streams.push(r);
    }
    let w1_url = w1.url();
    eventually(
        Duration::from_secs(3),
        "w1's own load report seen",
        || async {
            workers(&s).await.iter().any(|w| {
                w["url"] == w1_url.as_str()
                    && w["load"]["engine_reported"] == true
                    && w["load"]["active_requests"].as_u64() >= Some(3)
            })
        },
    )
    .await;
    // This frontend routed nothing yet, but sends its requests to the idle worker.
    for n in 0..4 {
        let (st, w) = complete(&c, &s.url(), &shared_prefix_prompt(900 + n, n)).await;
        assert_eq!(st, 200);
        assert_eq!(w, w2.url(), "request {n}");
    }
    drop(streams);
}
