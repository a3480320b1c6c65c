//! Membership through a real etcd on loopback: registration, lease expiry, the health-gated
//! sidecar, discovery across etcd outages.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant};

use support::{Etcd, percentiles};
use switchyard_cluster::etcd::EtcdClient;
use switchyard_cluster::{
    Discovery, DiscoveryConfig, HealthGate, LinkState, MembershipEvent, RegisterConfig,
    Registration, RegistrationState, Role, WorkerRecord,
};

const PREFIX: &str = "/switchyard/workers/";

fn discovery(endpoint: &str) -> Discovery {
    let mut cfg = DiscoveryConfig::new(vec![endpoint.to_string()]);
    cfg.request_timeout = Duration::from_millis(800);
    cfg.probe_interval = Duration::from_millis(500);
    cfg.backoff_min = Duration::from_millis(50);
    cfg.backoff_max = Duration::from_millis(300);
    Discovery::watch(cfg).expect("discovery")
}

fn reg_config(endpoint: &str, ttl: u32) -> RegisterConfig {
    let mut cfg = RegisterConfig::new(vec![endpoint.to_string()]);
    cfg.ttl_secs = ttl;
    cfg.request_timeout = Duration::from_millis(800);
    cfg.backoff_min = Duration::from_millis(50);
    cfg.backoff_max = Duration::from_millis(300);
    cfg
}

fn record(port: u16, role: Role) -> WorkerRecord {
    let mut r = WorkerRecord::new(&format!("http://127.0.0.1:{port}"), role);
    r.kv_events = Some(format!("tcp://127.0.0.1:{}", port + 1));
    r.model = Some("sim".into());
    r
}

async fn next_event(d: &mut Discovery, within: Duration) -> MembershipEvent {
    match tokio::time::timeout(within, d.recv()).await {
        Ok(Some(ev)) => ev,
        Ok(None) => panic!("discovery ended"),
        Err(_) => panic!(
            "no membership event within {within:?}; members {:?}",
            d.members()
        ),
    }
}

async fn no_event(d: &mut Discovery, during: Duration) {
    if let Ok(Some(ev)) = tokio::time::timeout(during, d.recv()).await {
        panic!("unexpected membership event {ev:?}");
    }
}

async fn wait_state(d: &Discovery, want: LinkState, within: Duration) -> Duration {
    let t0 = Instant::now();
    let mut h = d.health();
    let ok = tokio::time::timeout(within, h.wait_for(|h| h.state == want))
        .await
        .is_ok();
    assert!(
        ok,
        "discovery not {want:?} within {within:?}: {:?}",
        *h.borrow()
    );
    t0.elapsed()
}

fn client(endpoint: &str) -> EtcdClient {
    EtcdClient::new(&[endpoint.to_string()], Duration::from_secs(2)).expect("etcd client")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registration_appears_and_clean_leave_removes_at_once() {
    let etcd = Etcd::start();
    let mut d = discovery(&etcd.endpoint());
    wait_state(&d, LinkState::Connected, Duration::from_secs(5)).await;

    let rec = record(18001, Role::Prefill);
    let reg = Registration::start(reg_config(&etcd.endpoint(), 5), rec.clone()).unwrap();
    assert_eq!(reg.key(), format!("{PREFIX}{}", rec.id));
    assert!(reg.wait_registered(Duration::from_secs(5)).await.is_some());
    assert_eq!(
        next_event(&mut d, Duration::from_secs(3)).await,
        MembershipEvent::Upsert(rec.clone())
    );
    assert_eq!(d.members(), vec![rec.clone()]);
    // Keep-alives (every TTL/3) do not produce events.
    no_event(&mut d, Duration::from_millis(2000)).await;

    let t0 = Instant::now();
    reg.shutdown().await;
    assert_eq!(
        next_event(&mut d, Duration::from_secs(2)).await,
        MembershipEvent::Remove(rec.id.clone())
    );
    // Revoked, not expired: well under the 5 s TTL.
    assert!(t0.elapsed() < Duration::from_secs(1), "{:?}", t0.elapsed());
    assert!(d.members().is_empty());

    // A second watcher started now sees the (empty) snapshot, then new workers.
    let c = client(&etcd.endpoint());
    let mut lat = Vec::new();
    for i in 0..50u16 {
        let r = record(19000 + 2 * i, Role::Decode);
        let t = Instant::now();
        c.put(format!("{PREFIX}{}", r.id), r.to_json(), None)
            .await
            .unwrap();
        match next_event(&mut d, Duration::from_secs(2)).await {
            MembershipEvent::Upsert(got) => assert_eq!(got, r),
            other => panic!("{other:?}"),
        }
        lat.push(t.elapsed().as_secs_f64() * 1e3);
    }
    let (p50, p99, max) = percentiles(lat);
    eprintln!(
        "etcd put -> discovery Upsert latency: p50 {p50:.2} ms, p99 {p99:.2} ms, max {max:.2} ms (50 puts)"
    );
    assert!(p50 < 50.0, "watch latency p50 {p50} ms");
    let d2 = discovery(&etcd.endpoint());
    wait_state(&d2, LinkState::Connected, Duration::from_secs(5)).await;
    assert_eq!(d2.members().len(), 50);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_registration_expires_within_ttl() {
    let etcd = Etcd::start();
    let mut d = discovery(&etcd.endpoint());
    let rec = record(18011, Role::Aggregated);
    let reg = Registration::start(reg_config(&etcd.endpoint(), 2), rec.clone()).unwrap();
    assert!(reg.wait_registered(Duration::from_secs(5)).await.is_some());
    assert_eq!(
        next_event(&mut d, Duration::from_secs(3)).await,
        MembershipEvent::Upsert(rec.clone())
    );
    // Survives several TTLs while kept alive.
    no_event(&mut d, Duration::from_millis(3000)).await;

    // A crash: keep-alives stop, nothing is revoked.
    let t0 = Instant::now();
    drop(reg);
    assert_eq!(
        next_event(&mut d, Duration::from_secs(5)).await,
        MembershipEvent::Remove(rec.id.clone())
    );
    let gone = t0.elapsed();
    eprintln!("dropped registration (TTL 2 s) removed after {gone:?}");
    // Expired by etcd: at least about a keep-alive period, at most TTL + etcd's expiry check.
    assert!(gone > Duration::from_millis(500), "{gone:?}");
    assert!(gone < Duration::from_millis(3500), "{gone:?}");
}

/// A tiny engine stand-in whose /health status the test flips.
async fn health_server(status: Arc<AtomicU16>) -> u16 {
    use axum::http::StatusCode;
    let app = axum::Router::new().route(
        "/health",
        axum::routing::get(move || {
            let s = status.clone();
            async move { StatusCode::from_u16(s.load(Ordering::Relaxed)).unwrap_or(StatusCode::OK) }
        }),
    );
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    tokio::spawn(async move {
        let _ = axum::serve(l, app).await;
    });
    port
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_gated_sidecar_follows_engine_health() {
    let etcd = Etcd::start();
    let mut d = discovery(&etcd.endpoint());
    let status = Arc::new(AtomicU16::new(503)); // engine still loading
    let port = health_server(status.clone()).await;
    let rec = record(port, Role::Decode);
    let mut cfg = reg_config(&etcd.endpoint(), 10);
    cfg.health = Some(HealthGate {
        url: format!("http://127.0.0.1:{port}/health"),
        interval: Duration::from_millis(200),
        failures: 2,
        timeout: Duration::from_millis(200),
    });
    let reg = Registration::start(cfg, rec.clone()).unwrap();
    let mut st = reg.state();
    tokio::time::timeout(
        Duration::from_secs(3),
        st.wait_for(|s| *s == RegistrationState::Unhealthy),
    )
    .await
    .expect("unhealthy engine is not registered")
    .unwrap();
    no_event(&mut d, Duration::from_millis(600)).await;

    status.store(200, Ordering::Relaxed);
    assert_eq!(
        next_event(&mut d, Duration::from_secs(3)).await,
        MembershipEvent::Upsert(rec.clone())
    );

    // Engine fails: withdrawn after 2 failed probes (~0.4 s), far sooner than the 10 s TTL.
    let t0 = Instant::now();
    status.store(500, Ordering::Relaxed);
    assert_eq!(
        next_event(&mut d, Duration::from_secs(3)).await,
        MembershipEvent::Remove(rec.id.clone())
    );
    let gone = t0.elapsed();
    eprintln!("health-gated sidecar: /health 500 -> removed after {gone:?}");
    assert!(gone < Duration::from_millis(1500), "{gone:?}");

    // Healthy again: back.
    status.store(200, Ordering::Relaxed);
    assert_eq!(
        next_event(&mut d, Duration::from_secs(3)).await,
        MembershipEvent::Upsert(rec.clone())
    );
    reg.shutdown().await;
    assert_eq!(
        next_event(&mut d, Duration::from_secs(2)).await,
        MembershipEvent::Remove(rec.id)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn register_command_runs_the_sidecar() {
    use clap::Parser;
    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: switchyard_cluster::RegisterArgs,
    }
    let etcd = Etcd::start();
    let mut d = discovery(&etcd.endpoint());
    let status = Arc::new(AtomicU16::new(200));
    let port = health_server(status.clone()).await;
    let url = format!("http://127.0.0.1:{port}");
    let cli = Cli::parse_from([
        "register",
        "--url",
        &url,
        "--role",
        "decode",
        "--kv-events",
        "tcp://127.0.0.1:5599",
        "--etcd",
        &format!("etcd://127.0.0.1:{}", etcd.port),
        "--ttl",
        "3",
        "--health-interval",
        "0.2",
        "--id",
        "vllm-0",
    ]);
    let task = tokio::spawn(switchyard_cluster::run_register(cli.args));
    match next_event(&mut d, Duration::from_secs(3)).await {
        MembershipEvent::Upsert(r) => {
            assert_eq!(r.id, "vllm-0");
            assert_eq!(r.url, url);
            assert_eq!(r.role, Role::Decode);
            assert_eq!(r.kv_events.as_deref(), Some("tcp://127.0.0.1:5599"));
        }
        other => panic!("{other:?}"),
    }
    status.store(503, Ordering::Relaxed);
    assert_eq!(
        next_event(&mut d, Duration::from_secs(3)).await,
        MembershipEvent::Remove("vllm-0".into())
    );
    task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_outage_keeps_membership_and_recovery_emits_the_diff() {
    let mut etcd = Etcd::start();
    let ep = etcd.endpoint();
    let mut d = discovery(&ep);
    let a = record(18021, Role::Prefill);
    let b = record(18023, Role::Decode);
    let c = record(18025, Role::Decode);
    // A: a live registration (long TTL so it survives the outage); B: a static record.
    let reg = Registration::start(reg_config(&ep, 10), a.clone()).unwrap();
    assert!(reg.wait_registered(Duration::from_secs(5)).await.is_some());
    client(&ep)
        .put(format!("{PREFIX}{}", b.id), b.to_json(), None)
        .await
        .unwrap();
    let mut seen = vec![
        next_event(&mut d, Duration::from_secs(3)).await,
        next_event(&mut d, Duration::from_secs(3)).await,
    ];
    seen.sort_by_key(|e| format!("{e:?}"));
    assert!(
        seen.contains(&MembershipEvent::Upsert(a.clone())),
        "{seen:?}"
    );
    assert!(
        seen.contains(&MembershipEvent::Upsert(b.clone())),
        "{seen:?}"
    );

    // etcd dies: degraded within about a probe interval, membership kept.
    tokio::task::block_in_place(|| etcd.kill());
    let took = wait_state(&d, LinkState::Degraded, Duration::from_secs(3)).await;
    eprintln!("etcd killed -> discovery degraded after {took:?}");
    let h = d.health().borrow().clone();
    assert!(h.last_error.is_some());
    assert_eq!(d.members().len(), 2);
    let mut rs = reg.state();
    tokio::time::timeout(
        Duration::from_secs(5),
        rs.wait_for(|s| matches!(s, RegistrationState::Degraded { .. })),
    )
    .await
    .expect("registration notices the outage")
    .unwrap();
    no_event(&mut d, Duration::from_millis(500)).await;

    // While our watcher is cut off, the store changes: B deleted, C added (etcd briefly
    // up on another client port, same data dir — invisible to the watcher).
    let side_port = support::free_port();
    tokio::task::block_in_place(|| etcd.spawn(side_port));
    {
        let side = client(&format!("http://127.0.0.1:{side_port}"));
        side.delete(format!("{PREFIX}{}", b.id)).await.unwrap();
        side.put(format!("{PREFIX}{}", c.id), c.to_json(), None)
            .await
            .unwrap();
    }
    tokio::task::block_in_place(|| etcd.kill());
    assert_eq!(d.health().borrow().state, LinkState::Degraded);
    assert_eq!(d.members().len(), 2, "still the last known membership");

    // etcd back on its address: re-snapshot, emit exactly the difference.
    tokio::task::block_in_place(|| etcd.restart());
    let took = wait_state(&d, LinkState::Connected, Duration::from_secs(5)).await;
    eprintln!("etcd restarted -> discovery connected after {took:?}");
    assert_eq!(
        next_event(&mut d, Duration::from_secs(2)).await,
        MembershipEvent::Remove(b.id.clone())
    );
    assert_eq!(
        next_event(&mut d, Duration::from_secs(2)).await,
        MembershipEvent::Upsert(c.clone())
    );
    // A re-registers (reusing or replacing its lease) with the same record: no event.
    tokio::time::timeout(
        Duration::from_secs(5),
        rs.wait_for(|s| matches!(s, RegistrationState::Registered { .. })),
    )
    .await
    .expect("registration recovers")
    .unwrap();
    no_event(&mut d, Duration::from_millis(800)).await;
    let mut ids: Vec<String> = d.members().into_iter().map(|r| r.id).collect();
    ids.sort();
    let mut want = vec![a.id.clone(), c.id.clone()];
    want.sort();
    assert_eq!(ids, want);
    assert!(d.health().borrow().connects >= 2);

    // And live watching works again.
    reg.shutdown().await;
    assert_eq!(
        next_event(&mut d, Duration::from_secs(2)).await,
        MembershipEvent::Remove(a.id)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_down_at_start_then_up() {
    let port = support::free_port();
    let ep = format!("http://127.0.0.1:{port}");
    let mut d = discovery(&ep);
    let rec = record(18031, Role::Aggregated);
    let reg = Registration::start(reg_config(&ep, 5), rec.clone()).unwrap();
    wait_state(&d, LinkState::Degraded, Duration::from_secs(3)).await;
    assert!(d.members().is_empty());
    let mut rs = reg.state();
    tokio::time::timeout(
        Duration::from_secs(3),
        rs.wait_for(|s| matches!(s, RegistrationState::Degraded { .. })),
    )
    .await
    .expect("registration degraded")
    .unwrap();

    // etcd appears on that address later.
    let mut etcd = tokio::task::block_in_place(Etcd::start);
    tokio::task::block_in_place(|| {
        etcd.kill();
        etcd.spawn(port);
    });
    wait_state(&d, LinkState::Connected, Duration::from_secs(5)).await;
    assert_eq!(
        next_event(&mut d, Duration::from_secs(5)).await,
        MembershipEvent::Upsert(rec)
    );
    // Keys without a lease written by hand, and bad records, coexist: bad ones are skipped.
    let c = client(&format!("http://127.0.0.1:{port}"));
    c.put(format!("{PREFIX}broken"), "{not json", None)
        .await
        .unwrap();
    let lease = c.lease_grant(5).await.unwrap().id;
    c.put(
        format!("{PREFIX}manual"),
        r#"{"id":"manual","url":"http://10.1.2.3:8000","role":"decode"}"#,
        Some(lease),
    )
    .await
    .unwrap();
    match next_event(&mut d, Duration::from_secs(2)).await {
        MembershipEvent::Upsert(r) => {
            assert_eq!(r.id, "manual");
            assert_eq!(r.role, Role::Decode);
        }
        other => panic!("{other:?}"),
    }
}
