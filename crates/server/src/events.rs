//! KV-event transport: ZMQ PUB on the worker side, SUB on the router side, vLLM framing
//! `[topic, seq (u64 big-endian), msgpack KVEventBatch]`.

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

/// Bind a PUB socket at `endpoint` and spawn the task that frames and sends batches with
/// consecutive sequence numbers starting at 0. Returns the handle and the bound endpoint (with
/// the real port when `:0` was asked for).
pub async fn start_publisher(
    endpoint: &str,
    topic: String,
) -> anyhow::Result<(EventPublisher, String)> {
    let mut sock = zeromq::PubSocket::new();
    let bound = sock
        .bind(&normalize_endpoint(endpoint))
        .await
        .map_err(|e| anyhow::anyhow!("cannot bind KV-event publisher at {endpoint}: {e}"))?;
    let (tx, mut rx) = mpsc::unbounded_channel::<Vec<u8>>();
    let topic = Bytes::from(topic.into_bytes());
    tokio::spawn(async move {
        let mut seq: u64 = 0;
        while let Some(payload) = rx.recv().await {
            let frames = vec![
                topic.clone(),
                Bytes::copy_from_slice(&seq.to_be_bytes()),
                Bytes::from(payload),
            ];
            if let Ok(msg) = ZmqMessage::try_from(frames) {
                // Errors here are per-subscriber and already handled by the socket.
                let _ = sock.send(msg).await;
            }
            seq = seq.wrapping_add(1);
        }
    });
    Ok((EventPublisher { tx }, bound.to_string()))
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
/// it connects or `tx` is closed. Then forward messages into `tx` until the connection fails.
/// The socket runs in its own task so that a failure inside the ZMQ library cannot take the
/// caller down; the function returns when that task ends (caller reconnects).
pub async fn subscribe_once(
    endpoint: &str,
    tx: mpsc::Sender<ZmqMessage>,
    retry: Duration,
) -> anyhow::Result<()> {
    subscribe_once_notify(endpoint, tx, retry, || {}).await
}

/// [`subscribe_once`], calling `on_subscribed` once the socket is connected and subscribed
/// (the router's "warm" signal: events from now on reach it).
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
struct AbortOnDrop<T>(Option<tokio::task::JoinHandle<T>>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        if let Some(h) = self.0.take() {
            h.abort();
        }
    }
}
