//! The loopback TEST FIXTURE server (tests/common) as a standalone process, for manual runs
//! and the overhead measurement: `fixture_server PORT [TTFT_MS] [ITL_MS]`. To be replaced by
//! `switchyard worker` once it exists.

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::Duration;

fn main() {
    let mut it = std::env::args().skip(1);
    let port: u16 = it.next().and_then(|s| s.parse().ok()).unwrap_or(8000);
    let ttft: f64 = it.next().and_then(|s| s.parse().ok()).unwrap_or(0.0);
    let itl: f64 = it.next().and_then(|s| s.parse().ok()).unwrap_or(0.0);
    let threads: usize = it.next().and_then(|s| s.parse().ok()).unwrap_or(1);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        let l = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .expect("bind");
        let f = common::start_on(
            l,
            common::Config {
                ttft: Duration::from_secs_f64(ttft / 1000.0),
                itl: Duration::from_secs_f64(itl / 1000.0),
                ..Default::default()
            },
        );
        eprintln!("fixture server on {} (ttft {ttft} ms, itl {itl} ms)", f.url);
        std::future::pending::<()>().await;
    });
}
