//! Frontend + router overhead: the same requests sent directly to a zero-delay simulated worker,
//! through `serve`, and through a bare reverse proxy (axum + reqwest, the same HTTP stack with
//! no routing, tokenization or bookkeeping: the floor of any proxy hop built on it on this
//! machine), sequentially (added latency p50/p99) and with concurrency (max req/s, streamed
//! chunks/s).
//!
//! `cargo run --release -p switchyard-server --example overhead -- [SECONDS] [WORKERS] [text|tokens]`

use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::State;
use axum::response::Response;
use switchyard_engine::EngineConfig;
use switchyard_server::serve::{ServeArgs, start_serve};
use switchyard_server::worker::{WorkerArgs, start_worker};

fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let x = p / 100.0 * (v.len() - 1) as f64;
    let (lo, hi) = (x.floor() as usize, x.ceil() as usize);
    v[lo] + (v[hi] - v[lo]) * (x - lo as f64)
}

async fn one(c: &reqwest::Client, url: &str, body: &'static str) -> usize {
    let r = c
        .post(url)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .expect("send");
    assert!(r.status().is_success(), "{}", r.status());
    let b = r.bytes().await.expect("body");
    b.windows(6).filter(|w| w == b"data: ").count()
}

async fn latencies(c: &reqwest::Client, url: &str, n: usize, body: &'static str) -> Vec<f64> {
    let mut v = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        one(c, url, body).await;
        v.push(t.elapsed().as_secs_f64() * 1e6);
    }
    v
}

async fn throughput(url: &str, conc: usize, secs: f64, body: &'static str) -> (f64, f64) {
    let c = reqwest::Client::new();
    let end = Instant::now() + Duration::from_secs_f64(secs);
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..conc {
        let c = c.clone();
        let url = url.to_string();
        tasks.push(tokio::spawn(async move {
            let (mut n, mut chunks) = (0u64, 0u64);
            while Instant::now() < end {
                chunks += one(&c, &url, body).await as u64;
                n += 1;
            }
            (n, chunks)
        }));
    }
    let (mut n, mut chunks) = (0, 0);
    for t in tasks {
        let (a, b) = t.await.expect("task");
        n += a;
        chunks += b;
    }
    let el = t0.elapsed().as_secs_f64();
    (n as f64 / el, chunks as f64 / el)
}

// The allocator the `switchyard` binary uses.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Forward the body to `upstream` and stream the answer back: nothing else.
async fn bare_proxy(upstream: String) -> anyhow::Result<String> {
    async fn fwd(
        State((c, url)): State<(reqwest::Client, String)>,
        body: axum::body::Bytes,
    ) -> Response {
        let r = c
            .post(&url)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .expect("upstream");
        let status = r.status();
        let mut out = Response::new(Body::from_stream(r.bytes_stream()));
        *out.status_mut() = status;
        out
    }
    let c = reqwest::Client::builder().tcp_nodelay(true).build()?;
    let app = axum::Router::new()
        .route("/v1/completions", axum::routing::post(fwd))
        .with_state((c, format!("{upstream}/v1/completions")));
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = l.local_addr()?;
    tokio::spawn(async move { axum::serve(l, app).await });
    Ok(format!("http://{addr}/v1/completions"))
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let mut a = std::env::args().skip(1);
    let secs: f64 = a.next().map(|s| s.parse()).transpose()?.unwrap_or(3.0);
    let nworkers: usize = a.next().map(|s| s.parse()).transpose()?.unwrap_or(1);
    let wargs = WorkerArgs {
        speedup: 1e12,
        kv_events: Some("tcp://127.0.0.1:0".into()),
        ..WorkerArgs::default()
    };
    let cfg = EngineConfig {
        num_gpu_blocks_override: Some(20_000),
        ..EngineConfig::default()
    };
    let mut ws = Vec::new();
    for _ in 0..nworkers {
        ws.push(start_worker(&wargs, cfg.clone()).await?);
    }
    let s = start_serve(&ServeArgs {
        workers: ws
            .iter()
            .map(|w| format!("{},kv-events={}", w.url(), w.kv_events.as_ref().unwrap()))
            .collect(),
        router: Some("kv".into()),
        ..ServeArgs::default()
    })
    .await?;
    let direct = format!("{}/v1/completions", ws[0].url());
    let routed = format!("{}/v1/completions", s.url());
    let bare = bare_proxy(ws[0].url()).await?;
    // A short text prompt (serve tokenizes it to route), or with a third argument `tokens`
    // the same request as token ids (no tokenization anywhere).
    let small: &'static str = if a.next().as_deref() == Some("tokens") {
        r#"{"model":"Qwen3-32B","prompt":[45,2315,316,290,10431,13],"max_tokens":1}"#
    } else {
        r#"{"model":"Qwen3-32B","prompt":"Say hello to the router.","max_tokens":1}"#
    };
    const STREAM: &str =
        r#"{"model":"Qwen3-32B","prompt":"Stream please.","max_tokens":256,"stream":true}"#;
    let c = reqwest::Client::new();
    latencies(&c, &direct, 200, small).await;
    latencies(&c, &routed, 200, small).await;
    latencies(&c, &bare, 200, small).await;
    let n = (2000.0 * secs / 3.0) as usize;
    // Interleaved rounds so machine noise hits all three alike.
    let (mut d, mut r, mut b) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..10 {
        d.extend(latencies(&c, &direct, n / 10, small).await);
        r.extend(latencies(&c, &routed, n / 10, small).await);
        b.extend(latencies(&c, &bare, n / 10, small).await);
    }
    let (d50, d99, r50, r99, b50, b99) = (
        pct(&mut d, 50.0),
        pct(&mut d, 99.0),
        pct(&mut r, 50.0),
        pct(&mut r, 99.0),
        pct(&mut b, 50.0),
        pct(&mut b, 99.0),
    );
    println!("sequential non-streaming, {n} requests each (µs):");
    println!("  direct      p50 {d50:8.1}  p99 {d99:8.1}");
    println!("  serve       p50 {r50:8.1}  p99 {r99:8.1}");
    println!("  bare proxy  p50 {b50:8.1}  p99 {b99:8.1}");
    println!(
        "  added by serve       p50 {:8.1}  p99 {:8.1}",
        r50 - d50,
        r99 - d99
    );
    println!(
        "  added by bare proxy  p50 {:8.1}  p99 {:8.1}",
        b50 - d50,
        b99 - d99
    );
    println!("  serve beyond a bare proxy hop  p50 {:8.1}", r50 - b50);
    for conc in [16, 64] {
        let (dq, _) = throughput(&direct, conc, secs, small).await;
        let (rq, _) = throughput(&routed, conc, secs, small).await;
        let (bq, _) = throughput(&bare, conc, secs, small).await;
        println!(
            "concurrency {conc}: direct {dq:8.0} req/s, serve {rq:8.0} req/s, bare proxy {bq:8.0} req/s"
        );
    }
    let (_, dc) = throughput(&direct, 32, secs, STREAM).await;
    let (_, rc) = throughput(&routed, 32, secs, STREAM).await;
    println!(
        "streaming (256 tokens, concurrency 32): direct {dc:8.0} chunks/s, serve {rc:8.0} chunks/s"
    );
    Ok(())
}
