//! Real etcd and nats-server processes on loopback for integration tests, killed on drop.
//! Shared by the cluster crate's tests and, via `#[path]`, by serve's and the CLI's.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("no free loopback port")
}

fn require(bin: &str) {
    let found = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(bin).is_file()))
        .unwrap_or(false);
    assert!(
        found,
        "`{bin}` not found on PATH: run scripts/install-cluster-deps.sh (installs Debian's \
         etcd-server and nats-server; CI runs it)"
    );
}

fn kill(child: &mut Option<Child>) {
    if let Some(mut c) = child.take() {
        let _ = c.kill();
        let _ = c.wait();
    }
}

/// A single-member etcd with its data in a temp dir.
pub struct Etcd {
    child: Option<Child>,
    dir: tempfile::TempDir,
    pub port: u16,
    peer_port: u16,
}

impl Etcd {
    pub fn start() -> Etcd {
        let mut e = Etcd::unstarted();
        e.spawn(e.port);
        e
    }

    /// Ports and data dir chosen, not running yet (`restart()` starts it).
    pub fn unstarted() -> Etcd {
        require("etcd");
        Etcd {
            child: None,
            dir: tempfile::tempdir().expect("tempdir"),
            port: free_port(),
            peer_port: free_port(),
        }
    }

    /// `etcd://127.0.0.1:PORT`, as `--discovery` and `--register` take it.
    pub fn url(&self) -> String {
        format!("etcd://127.0.0.1:{}", self.port)
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Start (again) on `port`, same data dir and peer URL: the same member, same data.
    pub fn spawn(&mut self, port: u16) {
        kill(&mut self.child);
        let client = format!("http://127.0.0.1:{port}");
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("etcd.log"))
            .expect("etcd log file");
        let child = Command::new("etcd")
            .args(["--name", "t"])
            .arg("--data-dir")
            .arg(self.dir.path().join("data"))
            .args(["--listen-client-urls", &client])
            .args(["--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &format!("t={peer}")])
            .args(["--logger", "zap", "--log-level", "warn"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn etcd");
        self.child = Some(child);
        wait_http_ok(
            port,
            "/health",
            "\"health\":\"true\"",
            Duration::from_secs(20),
        )
        .unwrap_or_else(|e| panic!("etcd did not become healthy: {e}; log: {}", self.log()));
    }

    pub fn kill(&mut self) {
        kill(&mut self.child);
    }

    pub fn restart(&mut self) {
        self.spawn(self.port);
    }

    pub fn data_dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("etcd.log")).unwrap_or_default()
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        kill(&mut self.child);
    }
}

/// A nats-server bound to loopback.
pub struct Nats {
    child: Option<Child>,
    pub port: u16,
}

impl Nats {
    pub fn start() -> Nats {
        Nats::start_on(free_port())
    }

    pub fn start_on(port: u16) -> Nats {
        require("nats-server");
        let mut n = Nats { child: None, port };
        n.restart();
        n
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    pub fn restart(&mut self) {
        kill(&mut self.child);
        let child = Command::new("nats-server")
            .args(["-p", &self.port.to_string(), "-a", "127.0.0.1"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn nats-server");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.port)) {
                let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
                let mut buf = [0u8; 4];
                if s.read_exact(&mut buf).is_ok() && &buf == b"INFO" {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "nats-server did not start on {}",
                self.port
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn kill(&mut self) {
        kill(&mut self.child);
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        kill(&mut self.child);
    }
}

fn wait_http_ok(port: u16, path: &str, needle: &str, within: Duration) -> Result<(), String> {
    let deadline = Instant::now() + within;
    let mut last = String::new();
    while Instant::now() < deadline {
        match http_get(port, path) {
            Ok(body) if body.contains(needle) => return Ok(()),
            Ok(body) => last = body,
            Err(e) => last = e.to_string(),
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Err(last)
}

fn http_get(port: u16, path: &str) -> std::io::Result<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out)
}

/// Latency percentiles in milliseconds.
pub fn percentiles(mut v: Vec<f64>) -> (f64, f64, f64) {
    v.sort_by(|a, b| a.total_cmp(b));
    let q = |p: f64| v[((v.len() - 1) as f64 * p).round() as usize];
    (q(0.5), q(0.99), v[v.len() - 1])
}
