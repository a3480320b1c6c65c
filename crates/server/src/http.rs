//! The HTTP accept loop `serve` and `worker` share: explicit limits on what clients can hold
//! open, and graceful shutdown.
//!
//! - **Connections**: at most `max_connections` at once; one more is accepted and closed at
//!   once (the kernel's backlog would otherwise hold it with no answer).
//! - **Headers and idle keep-alive**: a connection must deliver a request's headers within
//!   `header_timeout` of starting to wait for them — which includes the idle time between
//!   keep-alive requests — or it is closed, so trickled headers and idle sockets cannot pin
//!   file descriptors.
//! - **Shutdown**: when `shutdown` fires, the listener closes, every connection finishes the
//!   request it is serving (no new ones on it), and [`serve`] returns once all are done.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tower::ServiceExt;

/// Limits on client connections.
#[derive(Clone, Copy, Debug)]
pub struct ConnLimits {
    pub max_connections: usize,
    pub header_timeout: Duration,
}

impl ConnLimits {
    /// From the `--max-connections` (0: derived from the open-file limit, which is raised to
    /// its hard limit first) and `--header-timeout` flags that `serve` and `worker` share.
    pub fn from_flags(max_connections: usize, header_timeout_s: f64) -> Result<Self, String> {
        if !(header_timeout_s > 0.0 && header_timeout_s <= 86_400.0) {
            return Err(format!(
                "--header-timeout must be between 0 and 86400 seconds, got {header_timeout_s}"
            ));
        }
        Ok(ConnLimits {
            max_connections: match max_connections {
                0 => default_max_connections(raise_fd_limit()),
                n => n,
            },
            header_timeout: Duration::from_secs_f64(header_timeout_s),
        })
    }
}

/// Serve `app` on `listener` until `shutdown` becomes true, then drain: returns when every
/// connection has finished its in-flight request. Each request carries its peer address as
/// `ConnectInfo<SocketAddr>`.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: ConnLimits,
    mut shutdown: watch::Receiver<bool>,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    // HTTP/1.1 only (what OpenAI clients and engines speak): protocol auto-detection would
    // wait for a first byte before any timer runs, so a silent socket would never time out.
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout);
    let builder = Arc::new(builder);
    let (drain_tx, drain_rx) = watch::channel(false);
    let mut conns = tokio::task::JoinSet::new();
    loop {
        while conns.try_join_next().is_some() {}
        let (stream, peer) = tokio::select! {
            biased;
            _ = wait_true(&mut shutdown) => break,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(_) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            },
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let app = app.clone();
        let builder = builder.clone();
        let mut drain = drain_rx.clone();
        conns.spawn(async move {
            let _permit = permit;
            let svc = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
                req.extensions_mut().insert(ConnectInfo(peer));
                app.clone().oneshot(req)
            });
            let conn = builder.serve_connection(TokioIo::new(stream), svc);
            tokio::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => {}
                _ = wait_true(&mut drain) => {
                    conn.as_mut().graceful_shutdown();
                    let _ = conn.await;
                }
            }
        });
    }
    drop(listener);
    let _ = drain_tx.send(true);
    while conns.join_next().await.is_some() {}
}

async fn wait_true(rx: &mut watch::Receiver<bool>) {
    if rx.wait_for(|v| *v).await.is_err() {
        // The sender is gone without ever firing: never shut down.
        std::future::pending::<()>().await;
    }
}

/// Raise the soft limit on open files to the hard limit (as servers such as nginx and
/// vLLM do) and return the resulting soft limit.
pub fn raise_fd_limit() -> u64 {
    #[cfg(unix)]
    {
        let mut l = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: a valid out-pointer to an rlimit.
        if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut l) } != 0 {
            return 1024;
        }
        if l.rlim_cur < l.rlim_max {
            let want = libc::rlimit {
                rlim_cur: l.rlim_max,
                rlim_max: l.rlim_max,
            };
            // SAFETY: a valid rlimit; failure leaves the old limit in place.
            if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &want) } == 0 {
                l.rlim_cur = l.rlim_max;
            }
        }
        // rlim_t is not u64 on every platform.
        #[allow(clippy::unnecessary_cast)]
        let cur = l.rlim_cur as u64;
        cur
    }
    #[cfg(not(unix))]
    {
        1024
    }
}

/// The connection cap when none is given: the open-file limit minus room for upstream
/// connections, event sockets and files (a quarter, at least 64), never below 16.
pub fn default_max_connections(fd_limit: u64) -> usize {
    let reserve = (fd_limit / 4).max(64);
    fd_limit.saturating_sub(reserve).clamp(16, 1 << 20) as usize
}

/// One unit of a bounded count (requests in flight), given back on drop.
pub struct Slot(Arc<AtomicU64>);

impl Slot {
    /// Take a unit if fewer than `max` are taken.
    pub fn try_take(count: &Arc<AtomicU64>, max: u64) -> Option<Slot> {
        let prev = count.fetch_add(1, Ordering::AcqRel);
        if prev >= max {
            count.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(Slot(count.clone()))
    }

    /// Take a unit regardless of any bound (counting only).
    pub fn take(count: &Arc<AtomicU64>) -> Slot {
        count.fetch_add(1, Ordering::AcqRel);
        Slot(count.clone())
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// `resp` with `slot` held until its body has been sent (or dropped).
pub fn hold_until_sent(resp: axum::response::Response, slot: Slot) -> axum::response::Response {
    use futures_util::StreamExt;
    resp.map(|b| {
        let stream = b.into_data_stream().map(move |chunk| {
            let _ = &slot;
            chunk
        });
        axum::body::Body::from_stream(stream)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_connection_cap_leaves_room_for_upstreams() {
        assert_eq!(default_max_connections(1024), 768);
        assert_eq!(default_max_connections(128), 64);
        assert_eq!(default_max_connections(40), 16);
        assert_eq!(default_max_connections(1 << 20), 786_432);
    }
}
