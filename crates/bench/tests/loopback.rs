//! End-to-end tests on loopback with real sockets, against the test fixture server in
//! `tests/common` (to be replaced by `switchyard worker` once it exists).

mod common;

use std::io::Write;
use std::time::Duration;

use common::{Config, Fault};
use switchyard_bench::{
    BenchArgs, BenchError, Dataset, Endpoint, ProgressMode, StopHandle, run, write_dir,
};

fn args(url: &str) -> BenchArgs {
    let mut a = BenchArgs::with_url(url);
    a.progress = ProgressMode::Off;
    a
}

fn trace_file(lines: &[(u64, u32, u32, &str)]) -> tempfile::NamedTempFile {
    let mut f = tempfile::NamedTempFile::new().unwrap();
    for (ts, input, output, hash_ids) in lines {
        writeln!(
            f,
            r#"{{"timestamp": {ts}, "input_length": {input}, "output_length": {output}, "hash_ids": {hash_ids}}}"#
        )
        .unwrap();
    }
    f.flush().unwrap();
    f
}

fn ms(x: f64) -> f64 {
    x * 1000.0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fixed_schedule_is_kept_within_a_millisecond() {
    let server = common::start(Config::default()).await;
    // 30 requests, 40 ms apart in the trace; replayed at speedup 2 -> 20 ms apart.
    let lines: Vec<(u64, u32, u32, &str)> =
        (0..30).map(|i| (1000 + i * 40, 64, 4, "[1]")).collect();
    let f = trace_file(&lines);
    let mut a = args(&server.url);
    a.trace = Some(f.path().to_path_buf());
    a.speedup = 2.0;
    let o = run(&a, StopHandle::new()).await.unwrap();
    assert_eq!(o.summary.completed, 30, "{}", o.report);
    for (i, r) in o.records.iter().enumerate() {
        // Scheduled times are the trace's, rebased to the first request and sped up.
        let want = i as f64 * 0.020;
        assert!(
            (r.scheduled - want).abs() < 1e-9,
            "request {i}: {}",
            r.scheduled
        );
        // Never early; late only by the client's own dispatch overhead.
        let lag = r.dispatch_lag();
        assert!(lag >= 0.0, "request {i} sent {lag} s early");
        assert!(lag < 0.050, "request {i} sent {} ms late", ms(lag));
    }
    let lag = o.client.dispatch_lag.unwrap();
    assert!(
        lag.p50 < 0.001,
        "dispatch lag p50 {} ms >= 1 ms\n{}",
        ms(lag.p50),
        o.report
    );
    assert!(o.report.contains("Dispatch lag (sent - scheduled): p50"));
    // Normal priority unless asked for.
    let p = o.client.dispatcher_priority.as_deref().unwrap_or_default();
    assert!(p.starts_with("normal"), "{p}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn realtime_dispatcher_is_reported_and_keeps_the_schedule() {
    let server = common::start(Config::default()).await;
    let lines: Vec<(u64, u32, u32, &str)> = (0..20).map(|i| (i * 10, 64, 4, "[1]")).collect();
    let f = trace_file(&lines);
    let mut a = args(&server.url);
    a.trace = Some(f.path().to_path_buf());
    a.realtime = true;
    let o = run(&a, StopHandle::new()).await.unwrap();
    assert_eq!(o.summary.completed, 20, "{}", o.report);
    // Granted (root / CAP_SYS_NICE) or refused with the reason; the run goes on either way.
    let p = o.client.dispatcher_priority.as_deref().unwrap_or_default();
    assert!(
        p == "real-time (SCHED_FIFO 1)" || p.starts_with("normal (--realtime"),
        "{p}"
    );
    for r in &o.records {
        assert!(r.dispatch_lag() >= 0.0 && r.dispatch_lag() < 0.050);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ttft_tpot_itl_match_the_server_delays() {
    let server = common::start(Config {
        ttft: Duration::from_millis(60),
        itl: Duration::from_millis(10),
        record_bodies: true,
        ..Config::default()
    })
    .await;
    let mut a = args(&server.url);
    a.dataset = Some(Dataset::Random);
    a.requests = Some(12);
    a.input_len = Some(100);
    a.output_len = Some(20);
    a.concurrency = Some(4);
    let o = run(&a, StopHandle::new()).await.unwrap();
    let s = &o.summary;
    assert_eq!(s.completed, 12, "{}", o.report);
    assert_eq!(o.resolved.model, "fixture-model");
    // Every request asked for the default model and its exact lengths.
    let bodies = server.bodies.lock().unwrap().clone();
    assert_eq!(bodies.len(), 12);
    for b in &bodies {
        assert_eq!(b["model"], "fixture-model");
        assert_eq!(b["prompt"].as_array().unwrap().len(), 100);
        assert_eq!(b["max_tokens"], 20);
        assert_eq!(b["stream"], true);
        assert_eq!(b["stream_options"]["include_usage"], true);
    }
    // Output tokens from usage, not estimated.
    assert_eq!(s.total_output_tokens, 12 * 20);
    assert_eq!(s.output_tokens_estimated, 0);
    assert_eq!(s.total_input_tokens, 12 * 100);
    let ttft = s.ttft.unwrap();
    assert!(
        ttft.mean >= 0.060 && ttft.mean < 0.070,
        "TTFT mean {} ms, server 60 ms",
        ms(ttft.mean)
    );
    let tpot = s.tpot.unwrap();
    assert!(
        (tpot.mean - 0.010).abs() < 0.0015,
        "TPOT mean {} ms, server 10 ms",
        ms(tpot.mean)
    );
    let itl = s.itl.unwrap();
    assert_eq!(itl.count, 12 * 19);
    assert!(
        (itl.p50 - 0.010).abs() < 0.002,
        "ITL p50 {} ms, server 10 ms",
        ms(itl.p50)
    );
    let e2e = s.e2e.unwrap(); // 60 + 19 * 10 = 250 ms
    assert!(
        e2e.mean >= 0.250 && e2e.mean < 0.265,
        "E2E mean {} ms",
        ms(e2e.mean)
    );
    assert_eq!(s.peak_concurrency, 4);
    assert_eq!(o.client.cached_reported, 0);
    assert!(o.report.contains("unknown, not zero"), "{}", o.report);
    // Closed loop: each user sends again right after its previous request finished.
    assert!(o.client.dispatch_lag.unwrap().p99 < 0.005);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn equal_hash_ids_reach_the_server_as_identical_token_blocks() {
    let server = common::start(Config {
        record_bodies: true,
        ..Config::default()
    })
    .await;
    let f = trace_file(&[(0, 600, 2, "[7, 8]"), (10, 1100, 2, "[7, 9, 10]")]);
    let mut a = args(&server.url);
    a.trace = Some(f.path().to_path_buf());
    let o = run(&a, StopHandle::new()).await.unwrap();
    assert_eq!(o.summary.completed, 2);
    let bodies = server.bodies.lock().unwrap().clone();
    let p: Vec<Vec<u64>> = bodies
        .iter()
        .map(|b| {
            b["prompt"]
                .as_array()
                .unwrap()
                .iter()
                .map(|t| t.as_u64().unwrap())
                .collect()
        })
        .collect();
    let (a0, b0) = if p[0].len() == 600 {
        (&p[0], &p[1])
    } else {
        (&p[1], &p[0])
    };
    assert_eq!((a0.len(), b0.len()), (600, 1100));
    assert_eq!(
        a0[..512],
        b0[..512],
        "shared hash id 7 must give the same tokens"
    );
    let same = (512..600).filter(|&i| a0[i] == b0[i]).count();
    assert!(same < 5, "distinct hash ids gave {same} equal tokens");

    // The same trace as text: one word per token, equal hash ids -> identical text.
    server.bodies.lock().unwrap().clear();
    a.prompt = Some(switchyard_bench::PromptMode::Text);
    let o = run(&a, StopHandle::new()).await.unwrap();
    assert_eq!(o.summary.total_input_tokens, 1700); // the fixture counts words
    assert!(o.report.contains("text prompts"), "{}", o.report);
    let bodies = server.bodies.lock().unwrap().clone();
    let words: Vec<Vec<String>> = bodies
        .iter()
        .map(|b| {
            b["prompt"]
                .as_str()
                .unwrap()
                .split_whitespace()
                .map(str::to_string)
                .collect()
        })
        .collect();
    let (a0, b0) = if words[0].len() == 600 {
        (&words[0], &words[1])
    } else {
        (&words[1], &words[0])
    };
    assert_eq!(a0[..512], b0[..512]);
    assert_ne!(a0[512..600], b0[512..600]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_are_counted_by_kind_and_the_run_continues() {
    let server = common::start(Config {
        itl: Duration::from_millis(2),
        faults: vec![
            Fault::None,
            Fault::Http500,
            Fault::MalformedSse,
            Fault::Disconnect(3),
            Fault::StreamError,
        ],
        ..Config::default()
    })
    .await;
    let mut a = args(&server.url);
    a.dataset = Some(Dataset::Random);
    a.requests = Some(10);
    a.input_len = Some(10);
    a.output_len = Some(8);
    a.concurrency = Some(1); // one at a time: fault i lands on request i
    let o = run(&a, StopHandle::new()).await.unwrap();
    let s = &o.summary;
    assert_eq!((s.completed, s.failed), (2, 8), "{}", o.report);
    let kinds: Vec<(&str, u64)> = s.errors.iter().map(|(k, v)| (k.as_str(), *v)).collect();
    assert_eq!(
        kinds,
        vec![
            ("http_500", 2),
            ("malformed_sse", 2),
            ("stream_error", 2),
            ("stream_truncated", 2)
        ],
        "{}",
        o.report
    );
    assert!(o.report.contains("http_500:"));
    // The failed records say what happened.
    let truncated = o
        .records
        .iter()
        .find(|r| matches!(&r.status, switchyard_metrics::Status::Error { kind, .. } if kind == "stream_truncated"))
        .unwrap();
    assert!(truncated.first_token.is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_usage_falls_back_to_counting_chunks_and_says_so() {
    let server = common::start(Config {
        usage: false,
        ..Config::default()
    })
    .await;
    let mut a = args(&server.url);
    a.dataset = Some(Dataset::Random);
    a.requests = Some(3);
    a.input_len = Some(10);
    a.output_len = Some(5);
    let o = run(&a, StopHandle::new()).await.unwrap();
    assert_eq!(o.summary.completed, 3);
    assert_eq!(o.summary.total_output_tokens, 15);
    assert_eq!(o.summary.output_tokens_estimated, 3);
    assert!(o.report.contains("had no server usage"), "{}", o.report);
    // Input tokens fall back to the planned length.
    assert_eq!(o.summary.total_input_tokens, 30);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_and_non_streaming() {
    let server = common::start(Config {
        ttft: Duration::from_millis(20),
        itl: Duration::from_millis(2),
        record_bodies: true,
        ..Config::default()
    })
    .await;
    let mut a = args(&server.url);
    a.endpoint = Endpoint::Chat;
    a.dataset = Some(Dataset::PrefixGroups);
    a.groups = 2;
    a.prompts_per_group = 2;
    a.system_prompt_len = 30;
    a.question_len = 5;
    a.output_len = Some(6);
    a.request_rate = Some(200.0);
    a.extra = Some(r#"{"temperature":0}"#.into());
    a.api_key = Some("sk-test".into());
    a.headers = vec!["X-Tenant: blue".into(), "x-trace:  1 ".into()];
    let o = run(&a, StopHandle::new()).await.unwrap();
    assert_eq!(o.summary.completed, 4, "{}", o.report);
    // Text prompts of 35 words; usage reports 35 prompt tokens (the fixture counts words).
    assert_eq!(o.summary.total_input_tokens, 4 * 35);
    let bodies = server.bodies.lock().unwrap().clone();
    assert_eq!(bodies[0]["temperature"], 0);
    assert!(bodies[0]["messages"][0]["content"].is_string());
    let h = &bodies[0]["_headers"];
    assert_eq!(h["authorization"], "Bearer sk-test");
    assert_eq!(h["x-tenant"], "blue");
    assert_eq!(h["x-trace"], "1");
    assert_eq!(h["content-type"], "application/json");

    a.no_stream = true;
    a.request_rate = None;
    let o = run(&a, StopHandle::new()).await.unwrap();
    assert_eq!(o.summary.completed, 4, "{}", o.report);
    for r in &o.records {
        assert_eq!(r.first_token, Some(r.finish));
        assert_eq!(r.output_tokens, 6);
    }
    assert!(o.report.contains("not streaming"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_returns_partial_results_and_writes_them() {
    let server = common::start(Config {
        itl: Duration::from_millis(40),
        ..Config::default()
    })
    .await;
    let mut a = args(&server.url);
    a.dataset = Some(Dataset::Random);
    a.requests = Some(1000);
    a.input_len = Some(10);
    a.output_len = Some(3); // ~80 ms per request
    a.request_rate = Some(50.0);
    a.arrival = switchyard_bench::ArrivalKind::Constant;
    let stop = StopHandle::new();
    let s2 = stop.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(600)).await;
        s2.stop();
    });
    let t0 = std::time::Instant::now();
    let o = run(&a, stop).await.unwrap();
    assert!(
        t0.elapsed() < Duration::from_secs(5),
        "stop took {:?}",
        t0.elapsed()
    );
    let c = &o.client;
    assert!(c.interrupted);
    assert!(o.summary.completed >= 15, "{}", o.report);
    assert!(c.abandoned >= 1, "{c:?}");
    assert!(c.not_sent.unwrap() > 900);
    assert_eq!(o.summary.failed, 0, "abandoned requests are not failures");
    assert!(o.report.contains("INTERRUPTED"));

    let dir = tempfile::tempdir().unwrap();
    write_dir(dir.path(), &a, &o).unwrap();
    let summary: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("summary.json")).unwrap()).unwrap();
    assert_eq!(summary["summary"]["completed"], o.summary.completed);
    assert_eq!(summary["client"]["interrupted"], true);
    assert_eq!(summary["config"]["request_rate"], 50.0);
    let lines = std::fs::read_to_string(dir.path().join("requests.jsonl")).unwrap();
    let recs = switchyard_metrics::parse_records_jsonl(&lines).unwrap();
    assert_eq!(recs, o.records);
    // Times are stored at microsecond resolution.
    for r in &recs {
        assert_eq!(r.sent, (r.sent * 1e6).round() / 1e6);
    }
    let html = std::fs::read_to_string(dir.path().join("report.html")).unwrap();
    assert!(html.starts_with("<!DOCTYPE html>"));
    assert!(html.contains("Requests in flight"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_url_fails_before_the_run_and_wait_ready_waits() {
    // A port nobody listens on.
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    drop(l);
    let a = args(&format!("http://{addr}"));
    let t0 = std::time::Instant::now();
    let e = run(&a, StopHandle::new()).await.unwrap_err();
    assert!(matches!(e, BenchError::Unreachable { .. }), "{e}");
    let msg = e.to_string();
    assert!(
        msg.contains("cannot reach") && msg.contains("--wait-ready"),
        "{msg}"
    );
    assert!(t0.elapsed() < Duration::from_secs(3));

    // The server comes up 400 ms later; --wait-ready 10 waits for it.
    let mut a = args(&format!("http://{addr}/v1/"));
    a.wait_ready = 10.0;
    a.requests = Some(2);
    a.input_len = Some(5);
    a.output_len = Some(2);
    let starter = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(400)).await;
        let l = tokio::net::TcpListener::bind(addr).await.unwrap();
        common::start_on(l, Config::default())
    });
    let o = run(&a, StopHandle::new()).await.unwrap();
    assert_eq!(o.summary.completed, 2);
    drop(starter.await.unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_a_clear_error() {
    let server = common::start(Config::default()).await;
    let mut a = args(&server.url);
    a.extra = Some("{not json".into());
    assert!(
        run(&a, StopHandle::new())
            .await
            .unwrap_err()
            .to_string()
            .contains("--extra is not valid JSON")
    );
    let mut a = args(&server.url);
    a.goodput = Some("ttfb:3".into());
    assert!(
        run(&a, StopHandle::new())
            .await
            .unwrap_err()
            .to_string()
            .contains("unknown metric")
    );
    let mut a = args(&server.url);
    a.headers = vec!["NoColon".into()];
    assert!(
        run(&a, StopHandle::new())
            .await
            .unwrap_err()
            .to_string()
            .contains("Name: value")
    );
    let mut a = args(&server.url);
    a.trace = Some("/nonexistent/trace.jsonl".into());
    assert!(
        run(&a, StopHandle::new())
            .await
            .unwrap_err()
            .to_string()
            .contains("/nonexistent/trace.jsonl")
    );
    let f = trace_file(&[(0, 10, 2, "[1]")]);
    let mut a = args(&server.url);
    a.trace = Some(f.path().to_path_buf());
    a.request_rate = Some(3.0);
    assert!(
        run(&a, StopHandle::new())
            .await
            .unwrap_err()
            .to_string()
            .contains("--speedup")
    );
    let mut bad = tempfile::NamedTempFile::new().unwrap();
    writeln!(
        bad,
        r#"{{"timestamp": 0, "input_length": 10, "output_length": 2, "hash_ids": [1]}}"#
    )
    .unwrap();
    writeln!(bad, r#"{{"timestamp": 5, "output_length": 2}}"#).unwrap();
    let mut a = args(&server.url);
    a.trace = Some(bad.path().to_path_buf());
    let e = run(&a, StopHandle::new()).await.unwrap_err().to_string();
    assert!(e.contains(&format!("{}:2", bad.path().display())), "{e}");
    let mut a = args("ftp://x");
    a.requests = Some(1);
    assert!(
        run(&a, StopHandle::new())
            .await
            .unwrap_err()
            .to_string()
            .contains("http://")
    );
    // Nothing was sent for any of these.
    assert_eq!(server.requests.load(std::sync::atomic::Ordering::SeqCst), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn goodput_and_duration() {
    let server = common::start(Config {
        ttft: Duration::from_millis(5),
        itl: Duration::from_millis(1),
        ..Config::default()
    })
    .await;
    let mut a = args(&server.url);
    a.dataset = Some(Dataset::Random);
    a.input_len = Some(10);
    a.output_len = Some(4);
    a.concurrency = Some(2);
    a.duration = Some(0.5);
    a.goodput = Some("ttft:1000,itl:1000".into());
    let t0 = std::time::Instant::now();
    let o = run(&a, StopHandle::new()).await.unwrap();
    assert!(t0.elapsed() < Duration::from_secs(3));
    let s = &o.summary;
    assert!(s.completed > 20, "{}", o.report);
    assert_eq!(s.goodput.as_ref().unwrap().good, s.completed);
    assert!(o.report.contains("Request goodput (req/s):"));
    assert!(!o.client.interrupted);
    assert!(s.end.unwrap() < 0.7, "sent after --duration: {:?}", s.end);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrency_cap_queues_client_side_and_reports_it() {
    let server = common::start(Config {
        ttft: Duration::from_millis(30),
        ..Config::default()
    })
    .await;
    let mut a = args(&server.url);
    a.dataset = Some(Dataset::Random);
    a.requests = Some(6);
    a.input_len = Some(10);
    a.output_len = Some(1);
    a.request_rate = Some(f64::INFINITY); // all at once...
    a.concurrency = Some(2); // ...but at most two in flight
    let o = run(&a, StopHandle::new()).await.unwrap();
    assert_eq!(o.summary.completed, 6);
    assert_eq!(o.summary.peak_concurrency, 2);
    // Requests 3..6 waited roughly one or two service times (30 ms) for a slot.
    let waited = o.client_queue.iter().filter(|&&q| q > 0.020).count();
    assert!(waited >= 4, "{:?}", o.client_queue);
    let q = o.client.client_queue.unwrap();
    assert!(q.max >= 0.055 && q.max < 0.2, "{q:?}");
    // From the scheduled send, the queueing counts; from the actual send, it does not.
    let s = &o.summary;
    assert!(s.e2e_from_scheduled.unwrap().max > s.e2e.unwrap().max + 0.04);
    assert!(
        o.report.contains("waiting for a --concurrency slot"),
        "{}",
        o.report
    );
    let dir = tempfile::tempdir().unwrap();
    write_dir(dir.path(), &a, &o).unwrap();
    let lines = std::fs::read_to_string(dir.path().join("requests.jsonl")).unwrap();
    assert_eq!(lines.matches("\"client_queue\"").count(), waited);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokenizer_text_prompts_reach_the_server_with_exact_lengths() {
    use switchyard_tokenize::{ChatTemplate, Tokenizer};
    let dir = tempfile::tempdir().unwrap();
    switchyard_tokenize::testing::write_model_dir(dir.path(), 800, None).unwrap();
    let tok = Tokenizer::load(dir.path()).unwrap();
    let server = common::start(Config {
        record_bodies: true,
        ..Config::default()
    })
    .await;
    let f = trace_file(&[(0, 600, 2, "[7, 8]"), (10, 1100, 2, "[7, 9, 10]")]);
    let mut a = args(&server.url);
    a.trace = Some(f.path().to_path_buf());
    a.endpoint = Endpoint::Chat;
    a.tokenizer = Some(dir.path().to_path_buf());
    let o = run(&a, StopHandle::new()).await.unwrap();
    assert_eq!(o.summary.completed, 2, "{}", o.report);
    let bodies = server.bodies.lock().unwrap().clone();
    let mut texts: Vec<String> = bodies
        .iter()
        .map(|b| b["messages"][0]["content"].as_str().unwrap().to_string())
        .collect();
    texts.sort_by_key(|t| t.len());
    // Exact lengths as the server's tokenizer sees them, through the chat template too.
    let ids: Vec<Vec<u32>> = texts
        .iter()
        .map(|t| {
            let rendered = ChatTemplate::chatml()
                .render(&[("user", t.as_str())])
                .unwrap();
            let empty = ChatTemplate::chatml().render(&[("user", "")]).unwrap();
            assert_eq!(
                tok.count(&rendered).unwrap(),
                tok.count(&empty).unwrap() + tok.count(t).unwrap()
            );
            tok.encode(t).unwrap()
        })
        .collect();
    assert_eq!((ids[0].len(), ids[1].len()), (600, 1100));
    // Hash id 7: the same first 512 tokens.
    assert_eq!(ids[0][..512], ids[1][..512]);
    assert_ne!(ids[0][512..600], ids[1][512..600]);
}
