//! The HTTP/JSON etcd client against a real etcd on loopback: what the membership layer
//! relies on (leases, prefix reads, watch events, compaction, outages), checked directly.

mod support;

use std::time::Duration;

use support::Etcd;
use switchyard_cluster::etcd::{EtcdClient, EtcdError, EventType};

fn client(endpoints: &[String]) -> EtcdClient {
    EtcdClient::new(endpoints, Duration::from_secs(2)).expect("client")
}

async fn next(
    ws: &mut switchyard_cluster::etcd::WatchStream,
) -> switchyard_cluster::etcd::WatchResponse {
    tokio::time::timeout(Duration::from_secs(3), ws.message())
        .await
        .expect("watch message within 3 s")
        .expect("watch message")
        .expect("watch open")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kv_and_leases() {
    let etcd = Etcd::start();
    let c = client(&[etcd.endpoint()]);
    // Binary keys and values survive the base64 round trip; prefix reads stop at the prefix.
    c.put(b"/t/\x00\xffa", b"\x01\x02", None).await.unwrap();
    c.put("/t/b", "B", None).await.unwrap();
    c.put("/t0", "outside", None).await.unwrap();
    let r = c.get_prefix("/t/").await.unwrap();
    let kvs: Vec<(Vec<u8>, Vec<u8>)> = r
        .kvs
        .iter()
        .map(|kv| (kv.key.clone(), kv.value.clone()))
        .collect();
    assert_eq!(
        kvs,
        vec![
            (b"/t/\x00\xffa".to_vec(), b"\x01\x02".to_vec()),
            (b"/t/b".to_vec(), b"B".to_vec())
        ]
    );
    assert_eq!(r.count, 2);
    assert!(r.revision >= 4, "{r:?}");
    assert_eq!(c.count_prefix("/t/").await.unwrap(), 2);
    assert_eq!(c.count_prefix("/none/").await.unwrap(), 0);
    assert_eq!(c.delete("/t/b").await.unwrap(), 1);
    assert_eq!(c.delete("/t/b").await.unwrap(), 0);

    // Leases: ids above 2^53 must not lose precision (they are JSON strings).
    let lease = c.lease_grant(5).await.unwrap();
    assert!(lease.id != 0 && lease.ttl == 5, "{lease:?}");
    c.put("/t/leased", "x", Some(lease.id)).await.unwrap();
    assert_eq!(
        c.get_prefix("/t/leased").await.unwrap().kvs[0].lease,
        lease.id
    );
    assert_eq!(c.lease_keep_alive(lease.id).await.unwrap(), 5);
    let left = c.lease_time_to_live(lease.id).await.unwrap();
    assert!((1..=5).contains(&left), "{left}");
    c.lease_revoke(lease.id).await.unwrap();
    assert_eq!(c.count_prefix("/t/leased").await.unwrap(), 0);
    // A gone lease: keep-alive says TTL 0, time-to-live -1, revoke is a typed server error.
    assert_eq!(c.lease_keep_alive(lease.id).await.unwrap(), 0);
    assert_eq!(c.lease_time_to_live(lease.id).await.unwrap(), -1);
    match c.lease_revoke(lease.id).await {
        Err(EtcdError::Server { code: 5, .. }) => {}
        other => panic!("{other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_events_compaction_and_outage() {
    let mut etcd = Etcd::start();
    let c = client(&[etcd.endpoint()]);
    let rev = c.put("/w/a", "1", None).await.unwrap();
    let mut ws = c.watch_prefix("/w/", rev + 1).await.unwrap();
    c.put("/w/b", "2", None).await.unwrap();
    c.put("/x/other", "ignored", None).await.unwrap();
    c.delete("/w/a").await.unwrap();
    // etcd may batch events of several revisions into one message.
    let mut events = Vec::new();
    while events.len() < 2 {
        events.extend(next(&mut ws).await.events);
    }
    assert_eq!(events.len(), 2, "{events:?}");
    assert_eq!(events[0].event_type, EventType::Put);
    assert_eq!(
        (events[0].kv.key.as_slice(), events[0].kv.value.as_slice()),
        (&b"/w/b"[..], &b"2"[..])
    );
    assert_eq!(events[1].event_type, EventType::Delete);
    assert_eq!(events[1].kv.key, b"/w/a");

    // Starting below the compaction point: etcd confirms the watch, then cancels it with the
    // compacted revision; discovery turns that into a fresh snapshot.
    let now = c.put("/w/c", "3", None).await.unwrap();
    compact(&etcd.endpoint(), now).await;
    let mut old = c.watch_prefix("/w/", rev + 1).await.unwrap();
    let r = next(&mut old).await;
    assert!(r.canceled && r.events.is_empty(), "{r:?}");
    assert_eq!(r.compact_revision, now);

    // etcd dies: the open watch ends (error or end of stream), it does not hang.
    tokio::task::block_in_place(|| etcd.kill());
    let end = tokio::time::timeout(Duration::from_secs(3), async {
        loop {
            match ws.message().await {
                Ok(Some(_)) => continue,
                other => return other,
            }
        }
    })
    .await
    .expect("watch noticed the dead etcd");
    assert!(matches!(end, Ok(None) | Err(_)), "{end:?}");
    match c.count_prefix("/w/").await {
        Err(EtcdError::Transport { .. }) => {}
        other => panic!("{other:?}"),
    }
    // Back on the same address: the same client works again.
    tokio::task::block_in_place(|| etcd.restart());
    assert_eq!(c.count_prefix("/w/").await.unwrap(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_endpoint_fails_over() {
    let etcd = Etcd::start();
    let dead = format!("http://127.0.0.1:{}", support::free_port());
    let c = client(&[dead, etcd.endpoint()]);
    c.put("/f/a", "1", None).await.unwrap();
    let mut ws = c.watch_prefix("/f/", 0).await.unwrap();
    c.put("/f/b", "2", None).await.unwrap();
    assert_eq!(next(&mut ws).await.events[0].kv.key, b"/f/b");
}

/// Compact the store up to `rev` (not part of the client: only tests need it).
async fn compact(endpoint: &str, rev: i64) {
    let r = reqwest::Client::new()
        .post(format!("{endpoint}/v3/kv/compaction"))
        .json(&serde_json::json!({ "revision": rev.to_string(), "physical": true }))
        .send()
        .await
        .unwrap();
    assert!(
        r.status().is_success(),
        "{}",
        r.text().await.unwrap_or_default()
    );
}
