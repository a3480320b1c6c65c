//! The cluster as separate `switchyard` processes on loopback, against a real etcd and
//! nats-server: self-registering workers and the `register` sidecar, killed in every way a
//! process dies; a frontend replica killed (SIGKILL) under load while the other one serves.
//!
//! Needs `etcd` and `nats-server` on PATH (`scripts/install-cluster-deps.sh`).

#[path = "../../cluster/tests/support/mod.rs"]
mod cluster_support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use cluster_support::{Etcd, Nats, free_port};
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_switchyard");

/// A child process killed (SIGKILL) on drop unless already gone.
struct Proc {
    child: Child,
    name: String,
}

impl Proc {
    fn spawn(name: &str, args: &[String]) -> Proc {
        let child = Command::new(BIN)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {name}: {e}"));
        Proc {
            child,
            name: name.to_string(),
        }
    }

    fn signal(&mut self, sig: &str) {
        let _ = Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status();
    }

    fn wait_exit(&mut self, within: Duration) {
        let t = Instant::now();
        while t.elapsed() < within {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("{} did not exit within {within:?}", self.name);
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// HTTP/1.0 (no chunking, connection closes): (status, headers, body).
fn http(port: u16, method: &str, path: &str, body: &str) -> Option<(u16, String, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(
        s,
        "{method} {path} HTTP/1.0\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    let (head, body) = out.split_once("\r\n\r\n")?;
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((status, head.to_ascii_lowercase(), body.to_string()))
}

fn json(port: u16, path: &str) -> Value {
    http(port, "GET", path, "")
        .and_then(|(_, _, b)| serde_json::from_str(&b).ok())
        .unwrap_or(Value::Null)
}

fn healthy_workers(port: u16) -> Vec<String> {
    let mut v: Vec<String> = json(port, "/v1/workers")["data"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter(|w| w["healthy"] == true)
                .filter_map(|w| w["url"].as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

fn eventually(within: Duration, what: &str, mut f: impl FnMut() -> bool) -> Duration {
    let t = Instant::now();
    while t.elapsed() < within {
        if f() {
            return t.elapsed();
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    panic!("not within {within:?}: {what}");
}

fn prompt(group: u32, n: u32) -> String {
    let mut t: Vec<String> = (0..256).map(|i| (group * 1000 + i).to_string()).collect();
    t.extend((0..32).map(|i| (500_000 + n * 100 + i).to_string()));
    format!(
        r#"{{"model":"Qwen3-32B","prompt":[{}],"max_tokens":4}}"#,
        t.join(",")
    )
}

/// (status, worker URL) of one completion.
fn complete(port: u16, body: &str) -> (u16, String) {
    match http(port, "POST", "/v1/completions", body) {
        Some((st, head, _)) => {
            let w = head
                .lines()
                .find_map(|l| l.strip_prefix("x-switchyard-worker: "))
                .unwrap_or("")
                .trim()
                .to_string();
            (st, w)
        }
        None => (0, String::new()),
    }
}

fn worker(port: u16, etcd: Option<&str>, ttl: u32) -> Proc {
    let mut args: Vec<String> = [
        "worker",
        "--host",
        "127.0.0.1",
        "--port",
        &port.to_string(),
        "--speedup",
        "1000",
        "--kv-events",
        &format!("tcp://127.0.0.1:{}", free_port()),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    if let Some(e) = etcd {
        args.extend([
            "--register".into(),
            e.into(),
            "--register-ttl".into(),
            ttl.to_string(),
        ]);
    }
    Proc::spawn(&format!("worker {port}"), &args)
}

fn serve(port: u16, etcd: &str, nats: &str, replica: &str) -> Proc {
    let args: Vec<String> = [
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        &port.to_string(),
        "--router",
        "kv",
        "--health-interval",
        "0.3",
        "--discovery",
        etcd,
        "--nats",
        nats,
        "--replica-id",
        replica,
        "--expose-worker-urls",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    Proc::spawn(&format!("serve {replica}"), &args)
}

#[test]
fn worker_processes_leave_by_sigterm_sigkill_and_failed_health() {
    let etcd = Etcd::start();
    let nats = Nats::start();
    let e = etcd.url();
    let ports: Vec<u16> = (0..4).map(|_| free_port()).collect();
    let mut w_term = worker(ports[0], Some(&e), 2);
    let mut w_kill = worker(ports[1], Some(&e), 2);
    // A worker without --register, behind the `register` sidecar (health-gated).
    let mut w_side = worker(ports[2], None, 0);
    let _sidecar = Proc::spawn(
        "register",
        &[
            "register".into(),
            "--url".into(),
            format!("http://127.0.0.1:{}", ports[2]),
            "--etcd".into(),
            e.clone(),
            "--ttl".into(),
            "2".into(),
            "--health-interval".into(),
            "0.2".into(),
        ],
    );
    let _w_stay = worker(ports[3], Some(&e), 2);
    let sp = free_port();
    let _s = serve(sp, &e, &nats.url(), "a");
    let all: Vec<String> = {
        let mut v: Vec<String> = ports
            .iter()
            .map(|p| format!("http://127.0.0.1:{p}"))
            .collect();
        v.sort();
        v
    };
    let t = eventually(Duration::from_secs(30), "4 workers discovered", || {
        healthy_workers(sp) == all
    });
    eprintln!("4 worker processes + sidecar discovered after {t:?} (process start included)");
    for n in 0..8 {
        assert_eq!(complete(sp, &prompt(n, n)).0, 200);
    }

    // SIGTERM: the worker revokes its lease on the way out.
    let t0 = Instant::now();
    w_term.signal("-TERM");
    w_term.wait_exit(Duration::from_secs(5));
    let url = |i: usize| format!("http://127.0.0.1:{}", ports[i]);
    let gone = |sp: u16, u: String| move || !healthy_workers(sp).contains(&u);
    let d = eventually(
        Duration::from_secs(3),
        "SIGTERMed worker removed",
        gone(sp, url(0)),
    );
    eprintln!("SIGTERM -> removed: {:?}", t0.elapsed().max(d));

    // SIGKILL: no revoke; the lease (TTL 2 s) expires.
    let t0 = Instant::now();
    w_kill.signal("-KILL");
    eventually(Duration::from_secs(6), "SIGKILLed worker removed", || {
        !json(sp, "/v1/workers")["data"]
            .as_array()
            .is_some_and(|a| a.iter().any(|w| w["url"] == url(1).as_str()))
    });
    eprintln!("SIGKILL (TTL 2 s) -> removed: {:?}", t0.elapsed());

    // The engine behind the sidecar dies: /health fails twice (0.2 s probes), lease revoked.
    let t0 = Instant::now();
    w_side.signal("-KILL");
    eventually(
        Duration::from_secs(4),
        "sidecar withdrew the dead engine",
        || {
            !json(sp, "/v1/workers")["data"]
                .as_array()
                .is_some_and(|a| a.iter().any(|w| w["url"] == url(2).as_str()))
        },
    );
    eprintln!(
        "engine behind sidecar killed -> removed: {:?}",
        t0.elapsed()
    );

    // Everything now goes to the survivor.
    for n in 0..10 {
        let (st, w) = complete(sp, &prompt(100 + n, n));
        assert_eq!(st, 200);
        assert_eq!(w, url(3));
    }
}

#[test]
fn killing_a_frontend_process_under_load_leaves_the_other_replicas_clients_unharmed() {
    let etcd = Etcd::start();
    let nats = Nats::start();
    let e = etcd.url();
    let _workers: Vec<Proc> = (0..4).map(|_| worker(free_port(), Some(&e), 5)).collect();
    let (pa, pb) = (free_port(), free_port());
    let mut a = serve(pa, &e, &nats.url(), "a");
    let _b = serve(pb, &e, &nats.url(), "b");
    for p in [pa, pb] {
        eventually(
            Duration::from_secs(30),
            "replica ready with 4 workers",
            || {
                http(p, "GET", "/ready", "").is_some_and(|(st, _, _)| st == 200)
                    && healthy_workers(p).len() == 4
            },
        );
    }
    let stop = Arc::new(AtomicBool::new(false));
    let ok_b = Arc::new(AtomicU64::new(0));
    let mut threads = Vec::new();
    for i in 0..6u32 {
        let port = if i < 3 { pb } else { pa };
        let (stop, ok_b) = (stop.clone(), ok_b.clone());
        threads.push(std::thread::spawn(move || {
            let mut errors = Vec::new();
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                let (st, w) = complete(port, &prompt(i % 3, n));
                if port == pb {
                    if st == 200 {
                        ok_b.fetch_add(1, Ordering::Relaxed);
                    } else {
                        errors.push((st, w));
                    }
                }
                n += 1;
            }
            (port, errors)
        }));
    }
    std::thread::sleep(Duration::from_millis(800));
    let before = ok_b.load(Ordering::Relaxed);
    a.signal("-KILL");
    a.wait_exit(Duration::from_secs(5));
    std::thread::sleep(Duration::from_millis(1500));
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        let (port, errors) = t.join().unwrap();
        if port == pb {
            assert!(errors.is_empty(), "B's clients saw errors: {errors:?}");
        }
    }
    let after = ok_b.load(Ordering::Relaxed);
    assert!(after > before + 10, "B kept serving: {before} -> {after}");
    // B forgets A's in-flight requests once A's snapshots stop (3 s expiry).
    let t = eventually(Duration::from_secs(6), "A expired at B", || {
        json(pb, "/ready")["links"]["nats"]["peers"]
            .as_array()
            .is_some_and(|p| p.is_empty())
    });
    eprintln!("killed replica's state expired at the other after {t:?} more");

    // A restarted replica turns ready (warm) and routes the same prefixes like B.
    let _a2 = serve(pa, &e, &nats.url(), "a");
    let t = eventually(Duration::from_secs(30), "restarted replica ready", || {
        http(pa, "GET", "/ready", "")
            .is_some_and(|(st, _, b)| st == 200 && b.contains("\"warm\":true"))
    });
    eprintln!("restarted replica ready after {t:?} (process start included)");
    for g in 10..14u32 {
        let (_, w1) = complete(pb, &prompt(g, 0));
        std::thread::sleep(Duration::from_millis(50));
        let (_, w2) = complete(pa, &prompt(g, 1));
        assert_eq!(w1, w2, "group {g}");
    }
}
