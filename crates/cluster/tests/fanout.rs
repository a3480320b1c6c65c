//! Fan-out between frontend replicas through a real nats-server on loopback.

mod support;

use std::time::{Duration, Instant};

use support::{Nats, percentiles};
use switchyard_cluster::{Fanout, FanoutConfig, LinkState, Prediction};
use tokio::sync::mpsc;

fn config(url: &str, replica: &str) -> FanoutConfig {
    let mut c = FanoutConfig::new(url, replica);
    c.subject_prefix = "test.sy".into();
    c.snapshot_interval = Duration::from_millis(200);
    c.expiry = Duration::from_millis(600);
    c.connect_timeout = Duration::from_millis(500);
    c
}

async fn connected(f: &Fanout, within: Duration) {
    let mut h = f.health();
    let ok = tokio::time::timeout(within, h.wait_for(|h| h.state == LinkState::Connected))
        .await
        .is_ok();
    assert!(
        ok,
        "{} not connected within {within:?}: {:?}",
        f.replica_id(),
        *h.borrow()
    );
}

/// Both subscriptions are live once a note from A reaches B (subscribe is asynchronous).
async fn wait_link(a: &Fanout, rx: &mut mpsc::Receiver<Prediction>) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        a.publish_prediction("probe", 0, &[0]);
        if let Ok(Some(_)) = tokio::time::timeout(Duration::from_millis(100), rx.recv()).await {
            while rx.try_recv().is_ok() {}
            return;
        }
        assert!(
            Instant::now() < deadline,
            "no note from {} arrived",
            a.replica_id()
        );
    }
}

async fn eventually(within: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    f()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notes_reach_other_replicas_within_milliseconds_and_not_the_sender() {
    let nats = Nats::start();
    let mut a = Fanout::connect_with(config(&nats.url(), "a"))
        .await
        .unwrap();
    let mut b = Fanout::connect_with(config(&nats.url(), "b"))
        .await
        .unwrap();
    connected(&a, Duration::from_secs(3)).await;
    connected(&b, Duration::from_secs(3)).await;
    let mut a_rx = a.take_predictions().unwrap();
    let mut b_rx = b.take_predictions().unwrap();
    assert!(a.take_predictions().is_none());
    wait_link(&a, &mut b_rx).await;
    wait_link(&b, &mut a_rx).await;

    // Latency A -> B, one note at a time.
    let hashes: Vec<u64> = (0..64u64)
        .map(|i| i.wrapping_mul(0x9e37_79b9_7f4a_7c15))
        .collect();
    let mut lat = Vec::new();
    for i in 0..200u32 {
        let t = Instant::now();
        a.publish_prediction("http://w1:8000", i % 2, &hashes);
        let p = tokio::time::timeout(Duration::from_secs(1), b_rx.recv())
            .await
            .expect("prediction within 1 s")
            .unwrap();
        lat.push(t.elapsed().as_secs_f64() * 1e3);
        assert_eq!(p.replica, "a");
        assert_eq!(p.worker, "http://w1:8000");
        assert_eq!(p.dp_rank, i % 2);
        assert_eq!(p.hashes, hashes);
    }
    let (p50, p99, max) = percentiles(lat);
    eprintln!(
        "NATS prediction A -> B (64 hashes, 566-byte note): p50 {p50:.3} ms, p99 {p99:.3} ms, max {max:.3} ms (200 notes)"
    );
    assert!(p50 < 20.0, "p50 {p50} ms");
    // Nothing came back to A.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(a_rx.try_recv().is_err(), "A received its own prediction");
    assert_eq!(
        a.stats().own_ignored,
        0,
        "the server does not echo A's notes to A"
    );

    // In-flight: deltas arrive at once...
    for _ in 0..3 {
        a.inflight_add("http://w1:8000", 0, 1);
    }
    a.inflight_add("http://w2:8000", 1, 1);
    assert!(
        eventually(Duration::from_millis(500), || b
            .remote_inflight("http://w1:8000", 0)
            == 3)
        .await,
        "B sees A's 3 in-flight requests: {:?}",
        b.remote_inflight_all()
    );
    assert_eq!(a.local_inflight("http://w1:8000", 0), 3);
    assert_eq!(
        a.remote_inflight("http://w1:8000", 0),
        0,
        "A does not count itself"
    );
    a.inflight_add("http://w1:8000", 0, -1);
    assert!(
        eventually(Duration::from_millis(500), || b
            .remote_inflight("http://w1:8000", 0)
            == 2)
        .await
    );
    assert_eq!(
        b.remote_inflight_all(),
        vec![
            ("http://w1:8000".to_string(), 0, 2),
            ("http://w2:8000".to_string(), 1, 1)
        ]
    );
    // ...and both replicas' loads add up on a third.
    let c = Fanout::connect_with(config(&nats.url(), "c"))
        .await
        .unwrap();
    connected(&c, Duration::from_secs(3)).await;
    b.inflight_add("http://w1:8000", 0, 5);
    assert!(
        eventually(Duration::from_secs(2), || c
            .remote_inflight("http://w1:8000", 0)
            == 7)
        .await,
        "C sees A's 2 + B's 5: {:?}",
        c.remote_inflight_all()
    );
    assert_eq!(c.live_peers(), vec!["a".to_string(), "b".to_string()]);

    // A replica that dies stops snapshotting: its counts expire (600 ms here).
    drop(a);
    let t0 = Instant::now();
    assert!(
        eventually(Duration::from_secs(2), || c
            .remote_inflight("http://w1:8000", 0)
            == 5)
        .await,
        "A's in-flight expired at C: {:?}",
        c.remote_inflight_all()
    );
    eprintln!(
        "dead replica's in-flight counts expired after {:?}",
        t0.elapsed()
    );
    assert_eq!(c.remote_inflight("http://w2:8000", 1), 0);
    assert_eq!(b.stats().decode_errors, 0);
    // Predictions and load notes interleaved, nothing lost on loopback: no sequence gaps.
    assert_eq!(b.stats().seq_gaps, 0);
    assert_eq!(c.stats().seq_gaps, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_down_at_start_degrades_then_recovers_and_survives_a_restart() {
    let port = support::free_port();
    let url = format!("nats://127.0.0.1:{port}");
    let mut a = Fanout::connect_with(config(&url, "a")).await.unwrap();
    let mut b = Fanout::connect_with(config(&url, "b")).await.unwrap();
    let mut h = a.health();
    tokio::time::timeout(
        Duration::from_secs(2),
        h.wait_for(|h| h.state == LinkState::Degraded),
    )
    .await
    .expect("degraded when NATS is absent")
    .unwrap();
    // Publishing while down never blocks; notes are dropped and counted.
    for _ in 0..100 {
        a.publish_prediction("w", 0, &[1, 2, 3]);
    }
    a.inflight_add("w", 0, 2);
    assert!(eventually(Duration::from_secs(1), || a.stats().dropped >= 100).await);

    let mut nats = tokio::task::block_in_place(|| Nats::start_on(port));
    let t0 = Instant::now();
    connected(&a, Duration::from_secs(5)).await;
    connected(&b, Duration::from_secs(5)).await;
    eprintln!("NATS up -> fan-out connected after {:?}", t0.elapsed());
    let mut b_rx = b.take_predictions().unwrap();
    let _a_rx = a.take_predictions().unwrap();
    wait_link(&a, &mut b_rx).await;
    // The in-flight count added while NATS was down reaches B through the snapshots.
    assert!(
        eventually(Duration::from_secs(2), || b.remote_inflight("w", 0) == 2).await,
        "{:?}",
        b.remote_inflight_all()
    );

    // NATS restarts: degraded, then connected, and notes flow again.
    tokio::task::block_in_place(|| nats.kill());
    tokio::time::timeout(
        Duration::from_secs(3),
        h.wait_for(|h| h.state == LinkState::Degraded),
    )
    .await
    .expect("degraded after NATS died")
    .unwrap();
    tokio::task::block_in_place(|| nats.restart());
    connected(&a, Duration::from_secs(5)).await;
    connected(&b, Duration::from_secs(5)).await;
    wait_link(&a, &mut b_rx).await;
    a.inflight_add("w", 0, 1);
    assert!(eventually(Duration::from_secs(2), || b.remote_inflight("w", 0) == 3).await);
    assert!(a.health().borrow().connects >= 2);
}
