//! How long a frontend takes to fetch a full replay buffer: a worker-side publisher holds
//! N vLLM-format batches (each a BlockStored of `blocks` 16-token blocks, as a worker emits
//! for a prompt), and a DEALER replays them all from sequence 0 over loopback.
//!
//! `cargo run --release -p switchyard-server --example replay_speed -- [N] [BLOCKS]`
//! (defaults: 10000 batches — vLLM's buffer — of 64 blocks).

use std::time::{Duration, Instant};

use switchyard_kv::wire::{WireBatch, WireEncoding, WireEvent, encode_batch};
use switchyard_server::events::{PublisherConfig, request_replay, start_publisher};

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let n: usize = args.next().map_or(Ok(10_000), |a| a.parse())?;
    let blocks: u64 = args.next().map_or(Ok(64), |a| a.parse())?;
    let p = start_publisher(PublisherConfig {
        endpoint: "tcp://127.0.0.1:0".into(),
        topic: String::new(),
        replay_endpoint: Some("tcp://127.0.0.1:0".into()),
        buffer: n,
    })
    .await?;
    let mut bytes = 0usize;
    for i in 0..n as u64 {
        let batch = WireBatch {
            ts: 1.0 + i as f64,
            events: vec![WireEvent::BlockStored {
                block_hashes: (0..blocks).map(|b| i * 1_000 + b).collect(),
                parent_block_hash: None,
                token_ids: (0..blocks as u32 * 16).collect(),
                block_size: 16,
                lora_id: None,
                medium: Some("GPU".into()),
            }],
            dp_rank: Some(0),
        };
        let payload = encode_batch(&batch, WireEncoding::Positional);
        bytes += payload.len();
        p.publisher.publish(payload);
    }
    let ep = p.replay_endpoint.clone().unwrap_or_default();
    // Wait until the publisher task has buffered the last one.
    while request_replay(&ep, n as u64 - 1, Duration::from_secs(5))
        .await?
        .is_empty()
    {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for _ in 0..3 {
        let t = Instant::now();
        let got = request_replay(&ep, 0, Duration::from_secs(60)).await?;
        let dt = t.elapsed();
        println!(
            "replayed {} batches ({:.1} MB) in {:.1} ms: {:.0} batches/s, {:.0} MB/s",
            got.len(),
            bytes as f64 / 1e6,
            dt.as_secs_f64() * 1e3,
            got.len() as f64 / dt.as_secs_f64(),
            bytes as f64 / 1e6 / dt.as_secs_f64()
        );
    }
    Ok(())
}
