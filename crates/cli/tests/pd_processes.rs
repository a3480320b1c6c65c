//! Disaggregated serving as separate processes, the way an operator runs it: two
//! `switchyard worker` processes (prefill, decode) and a `switchyard serve` in front, talking
//! over loopback HTTP; both P/D protocols, and a prefill process killed mid-deployment.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A child process killed on drop.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Start `switchyard ARGS` and return it with the first `http://...` URL it prints on stderr.
fn spawn(args: &[&str]) -> (Proc, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("switchyard runs");
    let err = child.stderr.take().unwrap();
    let mut lines = BufReader::new(err).lines();
    let deadline = Instant::now() + Duration::from_secs(30);
    let url = loop {
        let line = lines
            .next()
            .unwrap_or_else(|| panic!("{args:?} exited before printing its address"))
            .unwrap();
        if let Some(i) = line.find("http://") {
            let url: String = line[i..]
                .chars()
                .take_while(|c| !c.is_whitespace() && *c != ',' && *c != ')')
                .collect();
            break url.replace("0.0.0.0", "127.0.0.1");
        }
        assert!(Instant::now() < deadline, "no address from {args:?}");
    };
    // Keep draining stderr so the child never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    (Proc(child), url)
}

fn worker(role: &str) -> (Proc, String) {
    spawn(&[
        "worker",
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        "--role",
        role,
        "--speedup",
        "1000",
    ])
}

fn post(url: &str, body: &str) -> (u16, serde_json::Value, String) {
    let out = Command::new("curl")
        .args([
            "-s",
            "-D",
            "-",
            "-H",
            "content-type: application/json",
            "-d",
            body,
            url,
        ])
        .output()
        .expect("curl runs");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or(("", &text));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (
        status,
        serde_json::from_str(body).unwrap_or(serde_json::Value::Null),
        head.to_ascii_lowercase(),
    )
}

fn long_prompt(n: u32) -> String {
    let t: Vec<String> = (100..100 + n).map(|i| i.to_string()).collect();
    format!(
        r#"{{"model":"Qwen3-32B","prompt":[{}],"max_tokens":6}}"#,
        t.join(",")
    )
}

fn wait_ready(serve: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let out = Command::new("curl")
            .args([
                "-s",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                &format!("{serve}/ready"),
            ])
            .output()
            .unwrap();
        if out.stdout == b"200" {
            return;
        }
        assert!(Instant::now() < deadline, "serve never became ready");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn prefill_and_decode_processes_behind_serve() {
    for protocol in ["vllm", "sglang"] {
        let (_p, p_url) = worker("prefill");
        let (mut p_proc, p2_url) = worker("prefill");
        let (_d, d_url) = worker("decode");
        let (_s, serve) = spawn(&[
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--pd-protocol",
            protocol,
            "--expose-worker-urls",
            "--router",
            "kv",
            "--kv-feed",
            "approximate",
            "--health-interval",
            "0.2",
            "--worker",
            &format!("{p_url},role=prefill"),
            "--worker",
            &format!("{p2_url},role=prefill"),
            "--worker",
            &format!("{d_url},role=decode"),
        ]);
        wait_ready(&serve);
        let (st, v, head) = post(&format!("{serve}/v1/completions"), &long_prompt(3000));
        assert_eq!(st, 200, "{protocol}: {v}");
        assert!(head.contains("x-switchyard-placement: remote"), "{head}");
        assert_eq!(v["usage"]["completion_tokens"], 6);
        assert_eq!(v["usage"]["prompt_tokens"], 3000);
        // Kill one prefill process: requests keep flowing through the other (a failure before
        // the first byte is retried; the dead worker leaves the candidate set).
        let _ = p_proc.0.kill();
        let _ = p_proc.0.wait();
        for i in 0..4 {
            let (st, v, head) = post(
                &format!("{serve}/v1/completions"),
                &long_prompt(3000 + 700 * (i + 1)),
            );
            assert_eq!(st, 200, "{protocol} after kill #{i}: {v}");
            assert!(head.contains("x-switchyard-placement: remote"), "{head}");
            assert!(!head.contains(&p2_url), "routed to the dead worker: {head}");
        }
    }
}

/// Open `n` connections to `base` and drop each abruptly: half mid-headers, half after the
/// first bytes of a streamed answer; every third with a TCP reset (SO_LINGER 0).
fn abrupt_clients(base: &str, n: usize, threads: usize) {
    use std::io::{Read, Write};
    let addr = base.trim_start_matches("http://").to_string();
    let hs: Vec<_> = (0..threads)
        .map(|t| {
            let addr = addr.clone();
            std::thread::spawn(move || {
                for i in 0..n / threads {
                    let Ok(mut s) = std::net::TcpStream::connect(&addr) else {
                        continue;
                    };
                    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
                    let body = format!(
                        r#"{{"model":"Qwen3-32B","prompt":"client {t} request {i} {}","max_tokens":400,"stream":true}}"#,
                        "word ".repeat(50 + i % 200)
                    );
                    let req = format!(
                        "POST /v1/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                        body.len()
                    );
                    if i % 2 == 0 {
                        let _ = s.write_all(&req.as_bytes()[..req.len() / 3]);
                    } else {
                        let _ = s.write_all(req.as_bytes());
                        let mut buf = [0u8; 512];
                        let _ = s.read(&mut buf);
                    }
                    if i % 3 == 0 {
                        use std::os::fd::AsRawFd;
                        let linger = libc::linger {
                            l_onoff: 1,
                            l_linger: 0,
                        };
                        // SAFETY: a valid socket fd and a correctly sized option value.
                        unsafe {
                            libc::setsockopt(
                                s.as_raw_fd(),
                                libc::SOL_SOCKET,
                                libc::SO_LINGER,
                                (&linger as *const libc::linger).cast(),
                                std::mem::size_of::<libc::linger>() as libc::socklen_t,
                            );
                        }
                    }
                    drop(s);
                }
            })
        })
        .collect();
    for h in hs {
        h.join().unwrap();
    }
}

fn get_json(url: &str) -> serde_json::Value {
    let out = Command::new("curl").args(["-s", url]).output().unwrap();
    serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null)
}

fn metric(base: &str, name: &str) -> f64 {
    let out = Command::new("curl")
        .args(["-s", &format!("{base}/metrics")])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.starts_with(name) && !l.starts_with('#'))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Clients that go away mid-request never take a process down (SIGPIPE must not kill a
/// server), and every in-flight count returns to zero: 2,000 abrupt disconnects against
/// `serve` in front of a P/D pair and against the workers directly.
#[test]
fn thousands_of_abrupt_disconnects_kill_nothing() {
    let slow = |role: &str| {
        spawn(&[
            "worker",
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--role",
            role,
            "--speedup",
            "1",
        ])
    };
    let (mut p, p_url) = slow("prefill");
    let (mut d, d_url) = slow("decode");
    let (mut a, a_url) = slow("aggregated");
    let (mut s, serve) = spawn(&[
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        "--health-interval",
        "0.2",
        "--worker",
        &format!("{p_url},role=prefill"),
        "--worker",
        &format!("{d_url},role=decode"),
    ]);
    wait_ready(&serve);
    abrupt_clients(&serve, 1200, 16);
    abrupt_clients(&d_url, 400, 8);
    abrupt_clients(&a_url, 400, 8);
    for (name, proc) in [
        ("serve", &mut s),
        ("prefill", &mut p),
        ("decode", &mut d),
        ("aggregated", &mut a),
    ] {
        assert!(
            proc.0.try_wait().unwrap().is_none(),
            "{name} died: {:?}",
            proc.0.try_wait()
        );
    }
    // Everything cancelled drains: serve's per-worker load and the engines' running counts.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let ws = get_json(&format!("{serve}/v1/workers"));
        let serve_active: u64 = ws["data"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|w| w["load"]["active_requests"].as_u64().unwrap_or(99))
                    .sum()
            })
            .unwrap_or(99);
        let running: f64 = [&p_url, &d_url, &a_url]
            .iter()
            .map(|u| {
                metric(u, "switchyard_worker_num_requests_running")
                    + metric(u, "switchyard_worker_num_requests_waiting")
            })
            .sum();
        if serve_active == 0 && running == 0.0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "in flight after the clients left: serve {serve_active}, engines {running}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // And the services still answer.
    let (st, v, _) = post(&format!("{serve}/v1/completions"), &long_prompt(100));
    assert_eq!(st, 200, "{v}");
}

/// One streamed completion over a fresh connection: `None` when the connection was refused
/// or closed before any response (not accepted: safe to retry elsewhere), else whether the
/// stream ended properly with `[DONE]`.
fn stream_once(base: &str, max_tokens: u32) -> Option<bool> {
    use std::io::{Read, Write};
    let addr = base.trim_start_matches("http://");
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let body = format!(
        r#"{{"model":"Qwen3-32B","prompt":"rolling restart","max_tokens":{max_tokens},"stream":true}}"#
    );
    let req = format!(
        "POST /v1/completions HTTP/1.1\r\nhost: x\r\nconnection: close\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).ok()?;
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    if out.is_empty() {
        return None;
    }
    let text = String::from_utf8_lossy(&out);
    Some(text.starts_with("HTTP/1.1 200") && text.contains("data: [DONE]"))
}

fn sigterm(p: &Proc) {
    // SAFETY: sending a signal to our own child process.
    unsafe {
        libc::kill(p.0.id() as i32, libc::SIGTERM);
    }
}

fn wait_exit(p: &mut Proc, within: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + within;
    loop {
        if let Some(st) = p.0.try_wait().unwrap() {
            return st;
        }
        assert!(Instant::now() < deadline, "did not exit after SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A rolling restart under load loses no accepted request: one of two frontends, then one
/// of two workers, gets SIGTERM while streams are in flight; every stream that was accepted
/// ends with `[DONE]`, clients whose connection is refused go to the other frontend, and the
/// stopped process exits cleanly once drained.
#[test]
fn sigterm_drains_frontends_and_workers_without_losing_requests() {
    let slow = || {
        spawn(&[
            "worker",
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--speedup",
            "1",
        ])
    };
    let (mut w1, w1_url) = slow();
    let (_w2, w2_url) = slow();
    let frontend = || {
        spawn(&[
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--health-interval",
            "0.2",
            "--worker",
            &w1_url,
            "--worker",
            &w2_url,
        ])
    };
    let (mut a, a_url) = frontend();
    let (_b, b_url) = frontend();
    wait_ready(&a_url);
    wait_ready(&b_url);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let clients: Vec<_> = (0..8)
        .map(|_| {
            let (a_url, b_url, stop) = (a_url.clone(), b_url.clone(), stop.clone());
            std::thread::spawn(move || {
                let (mut ok, mut broken, mut refused) = (0, 0, 0);
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    match stream_once(&a_url, 60).or_else(|| {
                        refused += 1;
                        stream_once(&b_url, 60)
                    }) {
                        Some(true) => ok += 1,
                        Some(false) | None => broken += 1,
                    }
                }
                (ok, broken, refused)
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(1500));
    sigterm(&a);
    let st = wait_exit(&mut a, Duration::from_secs(30));
    assert!(st.success(), "frontend exit: {st:?}");
    std::thread::sleep(Duration::from_millis(500));
    sigterm(&w1);
    let st = wait_exit(&mut w1, Duration::from_secs(30));
    assert!(st.success(), "worker exit: {st:?}");
    std::thread::sleep(Duration::from_millis(1500));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (mut ok, mut broken, mut refused) = (0, 0, 0);
    for c in clients {
        let (o, b, r) = c.join().unwrap();
        ok += o;
        broken += b;
        refused += r;
    }
    assert_eq!(
        broken, 0,
        "{ok} completed, {broken} broken, {refused} refused by the stopped frontend"
    );
    assert!(ok > 16 && refused > 0, "{ok} completed, {refused} refused");
}

fn proc_stat(pid: u32) -> (u64, usize) {
    let rss_kb = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0);
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0);
    (rss_kb, fds)
}

/// A bounded soak: steady streaming load with abrupt disconnects through two frontends over
/// two workers, while one worker and one frontend are restarted. Every accepted stream ends
/// properly, and the surviving frontend's memory and file descriptors are flat after warm-up.
/// `SWITCHYARD_SOAK_SECS` (default 20) sets the length; docs/cluster.md quotes a longer run.
#[test]
fn soak_with_disconnects_and_restarts() {
    let secs: u64 = std::env::var("SWITCHYARD_SOAK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20);
    let worker_on = |port: u16| {
        spawn(&[
            "worker",
            "--host",
            "127.0.0.1",
            "--port",
            &port.to_string(),
            "--speedup",
            "20",
        ])
    };
    let (p1, p2) = (free_port(), free_port());
    let (_w1, w1_url) = worker_on(p1);
    let (mut w2, w2_url) = worker_on(p2);
    let frontend = |port: u16| {
        spawn(&[
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            &port.to_string(),
            "--router",
            "kv",
            "--health-interval",
            "0.2",
            "--worker",
            &w1_url,
            "--worker",
            &w2_url,
        ])
    };
    let (a, a_url) = frontend(free_port());
    let b_port = free_port();
    let (mut b, b_url) = frontend(b_port);
    wait_ready(&a_url);
    wait_ready(&b_url);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let clients: Vec<_> = (0..6)
        .map(|t| {
            let (a_url, b_url, stop) = (a_url.clone(), b_url.clone(), stop.clone());
            std::thread::spawn(move || {
                let (mut ok, mut broken, mut i) = (0u64, 0u64, 0u64);
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    i += 1;
                    if i % 5 == 0 {
                        abrupt_clients(&a_url, 1, 1);
                        continue;
                    }
                    let (first, second) = if t % 2 == 0 {
                        (&a_url, &b_url)
                    } else {
                        (&b_url, &a_url)
                    };
                    match stream_once(first, 30).or_else(|| stream_once(second, 30)) {
                        Some(true) => ok += 1,
                        _ => broken += 1,
                    }
                }
                (ok, broken)
            })
        })
        .collect();
    let pid = a.0.id();
    let t0 = Instant::now();
    let warm = Duration::from_secs(secs / 4);
    let mut after_warmup = None;
    let mut samples = Vec::new();
    let (mut restarted_worker, mut restarted_frontend) = (false, false);
    let mut _keep = Vec::new();
    while t0.elapsed() < Duration::from_secs(secs) {
        std::thread::sleep(Duration::from_millis(500));
        let s = proc_stat(pid);
        samples.push(s);
        if after_warmup.is_none() && t0.elapsed() >= warm {
            after_warmup = Some(s);
        }
        if !restarted_worker && t0.elapsed() >= Duration::from_secs(secs / 3) {
            sigterm(&w2);
            wait_exit(&mut w2, Duration::from_secs(30));
            _keep.push(worker_on(p2).0);
            restarted_worker = true;
        }
        if !restarted_frontend && t0.elapsed() >= Duration::from_secs(secs * 2 / 3) {
            sigterm(&b);
            wait_exit(&mut b, Duration::from_secs(30));
            b = frontend(b_port).0;
            restarted_frontend = true;
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (mut ok, mut broken) = (0, 0);
    for c in clients {
        let (o, br) = c.join().unwrap();
        ok += o;
        broken += br;
    }
    let (rss0, fd0) = after_warmup.unwrap();
    let (rss1, fd1) = proc_stat(pid);
    eprintln!(
        "soak {secs} s: {ok} streams completed, {broken} broken; serve A RSS {rss0} -> {rss1} kB, fds {fd0} -> {fd1}; samples {samples:?}"
    );
    assert_eq!(broken, 0, "{ok} completed");
    assert!(ok > 50, "{ok} completed");
    assert!(
        rss1 <= rss0 + rss0 / 4 + 8_192,
        "RSS grew {rss0} -> {rss1} kB"
    );
    assert!(fd1 <= fd0 + 16, "fds grew {fd0} -> {fd1}");
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
