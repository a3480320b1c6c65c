//! KV-event transport: ZMQ PUB on the worker side, SUB on the router side, vLLM framing
//! `[topic, seq (u64 big-endian), msgpack KVEventBatch]`.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use tokio::sync::mpsc;
use zeromq::{Socket, SocketRecv, SocketSend, ZmqMessage};

/// `tcp://*:5557` (vLLM/libzmq style) -> `tcp://0.0.0.0:5557` (what the pure-Rust socket takes).
pub fn normalize_endpoint(ep: &str) -> String {
    ep.replacen("://*:", "://0.0.0.0:", 1)
}

/// Handle for publishing encoded batches; cheap to clone.
#[derive(Clone, Debug)]
pub struct EventPublisher {
    tx: mpsc::UnboundedSender<Vec<u8>>,
}

impl EventPublisher {
    /// Queue one msgpack batch payload; dropped silently when the publisher task is gone
    /// (PUB semantics: nobody is owed delivery).
    pub fn publish(&self, payload: Vec<u8>) {
        let _ = self.tx.send(payload);
    }
}

/// How a worker publishes: the PUB endpoint, its topic frame and, optionally, vLLM's replay
/// service (a ROUTER socket that re-sends the last `buffer` batches from a requested sequence
/// number on, so a subscriber that missed some — or a restarted router — can catch up).
#[derive(Clone, Debug)]
pub struct PublisherConfig {
    pub endpoint: String,
    pub topic: String,
    pub replay_endpoint: Option<String>,
    /// Batches kept for replay (vLLM's `buffer_steps`).
    pub buffer: usize,
}

/// vLLM's default replay buffer (`KVEventsConfig.buffer_steps`).
pub const DEFAULT_REPLAY_BUFFER: usize = 10_000;

/// The replay stream's end marker: sequence −1 (8 bytes, big-endian two's complement) with an
/// empty payload.
pub const END_SEQ: u64 = u64::MAX;

/// A started publisher: the handle plus the bound endpoints (with real ports when `:0` was
/// asked for).
pub struct StartedPublisher {
    pub publisher: EventPublisher,
    pub endpoint: String,
    pub replay_endpoint: Option<String>,
}

pub(crate) type ReplayBuffer = Arc<Mutex<VecDeque<(u64, Bytes)>>>;

/// Bind the PUB socket (and the replay ROUTER when configured) and spawn the task that frames
/// and sends batches with consecutive sequence numbers starting at 0.
pub async fn start_publisher(cfg: PublisherConfig) -> anyhow::Result<StartedPublisher> {
    let mut sock = zeromq::PubSocket::new();
    let bound = sock
        .bind(&normalize_endpoint(&cfg.endpoint))
        .await
        .map_err(|e| anyhow::anyhow!("cannot bind KV-event publisher at {}: {e}", cfg.endpoint))?;
    let buffer: ReplayBuffer = Arc::new(Mutex::new(VecDeque::new()));
    let cap = cfg.buffer.max(1);
    let (replay_task, replay_endpoint) = match &cfg.replay_endpoint {
        Some(ep) => {
            let norm = normalize_endpoint(ep);
            let addr = norm.strip_prefix("tcp://").ok_or_else(|| {
                anyhow::anyhow!("KV-event replay endpoint {ep}: only tcp://HOST:PORT is supported")
            })?;
            let (bound, task) = crate::replay_server::bind(addr, buffer.clone())
                .await
                .map_err(|e| anyhow::anyhow!("cannot bind KV-event replay socket at {ep}: {e}"))?;
            (
                Some(AbortOnDrop(Some(task))),
                Some(format!("tcp://{bound}")),
            )
        }
        None => (None, None),
    };
    let (tx, mut rx) = mpsc::unbounded_channel::<Vec<u8>>();
    let topic = Bytes::from(cfg.topic.into_bytes());
    let keep = replay_task.is_some();
    tokio::spawn(async move {
        // Owned here: the replay service stops with the publisher.
        let _replay = replay_task;
        let mut seq: u64 = 0;
        while let Some(payload) = rx.recv().await {
            let payload = Bytes::from(payload);
            if keep {
                // Buffered before it is sent: whoever sees `seq` live can replay up to it.
                let mut b = lock(&buffer);
                if b.len() == cap {
                    b.pop_front();
                }
                b.push_back((seq, payload.clone()));
            }
            let frames = vec![
                topic.clone(),
                Bytes::copy_from_slice(&seq.to_be_bytes()),
                payload,
            ];
            if let Ok(msg) = ZmqMessage::try_from(frames) {
                // Errors here are per-subscriber and already handled by the socket.
                let _ = sock.send(msg).await;
            }
            seq = seq.wrapping_add(1);
        }
    });
    Ok(StartedPublisher {
        publisher: EventPublisher { tx },
        endpoint: bound.to_string(),
        replay_endpoint,
    })
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Why a replay request got no usable answer.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("cannot connect to the replay socket {0}: {1}")]
    Connect(String, String),
    #[error("replay from {0} timed out")]
    Timeout(String),
    #[error("replay from {0}: {1}")]
    Protocol(String, String),
}

/// Ask the replay socket at `endpoint` for every buffered batch from `start` on (vLLM's
/// protocol, as a DEALER). Returns them in order, without the end marker. `idle` bounds the
/// wait for each message (a full 10,000-batch buffer may take longer than that in total).
pub async fn request_replay(
    endpoint: &str,
    start: u64,
    idle: Duration,
) -> Result<Vec<Received>, ReplayError> {
    let ep = normalize_endpoint(endpoint);
    let name = endpoint.to_string();
    // The ZMQ library retries a refused connection forever: find out with plain TCP first.
    if let Some(addr) = ep.strip_prefix("tcp://") {
        match tokio::time::timeout(idle, tokio::net::TcpStream::connect(addr)).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(ReplayError::Connect(name, e.to_string())),
            Err(_) => return Err(ReplayError::Timeout(name)),
        }
    }
    // In its own task: the ZMQ library panics on some peer failures (`todo!()`).
    let task = tokio::spawn(async move {
        let mut sock = zeromq::DealerSocket::new();
        sock.connect(&ep)
            .await
            .map_err(|e| ReplayError::Connect(ep.clone(), e.to_string()))?;
        let req = ZmqMessage::try_from(vec![
            Bytes::new(),
            Bytes::copy_from_slice(&start.to_be_bytes()),
        ])
        .map_err(|e| ReplayError::Protocol(ep.clone(), e.to_string()))?;
        sock.send(req)
            .await
            .map_err(|e| ReplayError::Connect(ep.clone(), e.to_string()))?;
        let mut out = Vec::new();
        loop {
            let msg = tokio::time::timeout(idle, sock.recv())
                .await
                .map_err(|_| ReplayError::Timeout(ep.clone()))?
                .map_err(|e| ReplayError::Protocol(ep.clone(), e.to_string()))?;
            let (seq, payload) = split_frames(msg)
                .map_err(|_| ReplayError::Protocol(ep.clone(), "malformed reply".into()))?;
            if seq == END_SEQ && payload.is_empty() {
                return Ok(out);
            }
            out.push((seq, payload));
        }
    });
    let mut guard = AbortOnDrop(Some(task));
    let r = guard.0.as_mut().expect("set above").await;
    guard.0 = None;
    match r {
        Err(e) => Err(ReplayError::Protocol(
            name,
            format!("replay task failed: {e}"),
        )),
        Ok(r) => r,
    }
}

/// One received message: `(seq, payload)`.
pub type Received = (u64, Bytes);

/// Why a message was not usable.
#[derive(Debug)]
pub enum RecvIssue {
    /// Not `[topic, seq, payload]` with an 8-byte seq.
    BadFrame,
}

/// Split a message into `(seq, payload)`. Accepts `[topic, seq, payload]` and (topic-less)
/// `[seq, payload]`.
pub fn split_frames(msg: ZmqMessage) -> Result<Received, RecvIssue> {
    let frames = msg.into_vec();
    let n = frames.len();
    if n < 2 {
        return Err(RecvIssue::BadFrame);
    }
    let seq: [u8; 8] = frames[n - 2]
        .as_ref()
        .try_into()
        .map_err(|_| RecvIssue::BadFrame)?;
    Ok((u64::from_be_bytes(seq), frames[n - 1].clone()))
}

/// Connect a SUB socket (subscribed to everything) to `endpoint`, retrying every `retry` until
/// it connects or `tx` is closed; call `on_subscribed` once it is connected and subscribed
/// (the router's signal that events published from now on reach it). Then forward messages
/// into `tx` until the connection fails. The socket runs in its own task so that a failure
/// inside the ZMQ library cannot take the caller down; the function returns when that task
/// ends (caller reconnects).
pub async fn subscribe_once_notify(
    endpoint: &str,
    tx: mpsc::Sender<ZmqMessage>,
    retry: Duration,
    on_subscribed: impl FnOnce() + Send + 'static,
) -> anyhow::Result<()> {
    let ep = normalize_endpoint(endpoint);
    let task = tokio::spawn(async move {
        let mut sock = loop {
            let mut s = zeromq::SubSocket::new();
            match s.connect(&ep).await {
                Ok(()) => break s,
                Err(_) if !tx.is_closed() => tokio::time::sleep(retry).await,
                Err(e) => return Err(anyhow::anyhow!("connect {ep}: {e}")),
            }
        };
        sock.subscribe("")
            .await
            .map_err(|e| anyhow::anyhow!("subscribe: {e}"))?;
        on_subscribed();
        loop {
            let msg = sock
                .recv()
                .await
                .map_err(|e| anyhow::anyhow!("recv: {e}"))?;
            if tx.send(msg).await.is_err() {
                return Ok(());
            }
        }
    });
    let mut guard = AbortOnDrop(Some(task));
    let task = guard.0.as_mut().expect("set above");
    let r = match task.await {
        Ok(r) => r,
        Err(e) => Err(anyhow::anyhow!("subscriber task failed: {e}")),
    };
    guard.0 = None;
    r
}

/// Aborts the inner task when the awaiting future is dropped (worker removed, shutdown).
pub(crate) struct AbortOnDrop<T>(pub(crate) Option<tokio::task::JoinHandle<T>>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        if let Some(h) = self.0.take() {
            h.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn publisher(buffer: usize) -> StartedPublisher {
        start_publisher(PublisherConfig {
            endpoint: "tcp://127.0.0.1:0".into(),
            topic: "kv".into(),
            replay_endpoint: Some("tcp://127.0.0.1:0".into()),
            buffer,
        })
        .await
        .unwrap()
    }

    async fn replay(ep: &str, from: u64) -> Vec<(u64, Vec<u8>)> {
        request_replay(ep, from, Duration::from_secs(5))
            .await
            .unwrap()
            .into_iter()
            .map(|(s, p)| (s, p.to_vec()))
            .collect()
    }

    #[tokio::test]
    async fn replay_serves_the_newest_buffered_batches() {
        let p = publisher(3).await;
        let ep = p.replay_endpoint.clone().unwrap();
        assert_eq!(replay(&ep, 0).await, vec![], "nothing published yet");
        for i in 0..5u8 {
            p.publisher.publish(vec![i; 4]);
        }
        // The publisher task buffers asynchronously.
        let mut got = Vec::new();
        for _ in 0..100 {
            got = replay(&ep, 0).await;
            if got.last().is_some_and(|(s, _)| *s == 4) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(
            got,
            vec![(2, vec![2; 4]), (3, vec![3; 4]), (4, vec![4; 4])],
            "the last 3 of 5"
        );
        assert_eq!(replay(&ep, 4).await, vec![(4, vec![4; 4])]);
        assert_eq!(replay(&ep, 9).await, vec![]);
    }

    #[tokio::test]
    async fn replay_ignores_malformed_requests_and_keeps_serving() {
        let p = publisher(8).await;
        let ep = p.replay_endpoint.clone().unwrap();
        p.publisher.publish(b"x".to_vec());
        let mut d = zeromq::DealerSocket::new();
        d.connect(&ep).await.unwrap();
        for bad in [
            vec![Bytes::new(), Bytes::from_static(b"short")],
            vec![
                Bytes::from_static(b"a"),
                Bytes::from_static(b"b"),
                Bytes::from_static(b"c"),
            ],
        ] {
            d.send(ZmqMessage::try_from(bad).unwrap()).await.unwrap();
        }
        // A well-formed request on the same connection is still answered.
        d.send(
            ZmqMessage::try_from(vec![
                Bytes::new(),
                Bytes::copy_from_slice(&0u64.to_be_bytes()),
            ])
            .unwrap(),
        )
        .await
        .unwrap();
        let mut seqs = Vec::new();
        loop {
            let m = tokio::time::timeout(Duration::from_secs(5), d.recv())
                .await
                .expect("answered")
                .unwrap();
            let f = m.into_vec();
            assert_eq!(f.len(), 3, "[\"\", seq, payload]");
            assert!(f[0].is_empty(), "delimiter echoed");
            let seq = u64::from_be_bytes(f[1].as_ref().try_into().unwrap());
            if seq == END_SEQ {
                assert!(f[2].is_empty());
                break;
            }
            seqs.push(seq);
        }
        assert_eq!(seqs, vec![0]);
    }

    fn open_fds() -> usize {
        std::fs::read_dir("/proc/self/fd")
            .map(|d| d.count())
            .unwrap_or(0)
    }

    /// Every replay (and every plain-TCP reachability probe before it) must leave no socket
    /// behind on either side: serve probes every worker's replay socket every few seconds.
    #[tokio::test]
    async fn replays_do_not_leak_sockets() {
        let p = publisher(8).await;
        let ep = p.replay_endpoint.clone().unwrap();
        p.publisher.publish(b"x".to_vec());
        for _ in 0..10 {
            replay(&ep, 0).await;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        let before = open_fds();
        for _ in 0..300 {
            replay(&ep, 0).await;
        }
        let mut after = open_fds();
        for _ in 0..50 {
            if after <= before + 4 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
            after = open_fds();
        }
        assert!(
            after <= before + 4,
            "open fds grew from {before} to {after} across 300 replays"
        );
    }

    #[tokio::test]
    async fn replay_from_a_closed_endpoint_fails_cleanly() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let r = request_replay(
            &format!("tcp://127.0.0.1:{port}"),
            0,
            Duration::from_secs(5),
        )
        .await;
        // Refused at once, not after the timeout.
        assert!(matches!(r, Err(ReplayError::Connect(..))), "{r:?}");
    }
}
