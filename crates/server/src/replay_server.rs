//! vLLM's KV-event replay service, served over a minimal ZMTP 3 (NULL mechanism) ROUTER
//! implementation with one task per connection.
//!
//! Why not the ZMQ library's ROUTER socket: it keeps a peer's write half until a *read error*
//! on that peer, and a requester that closes cleanly ends its stream without one, so every
//! replay left a CLOSE-WAIT socket behind (16 fds per 10 s on an idle `serve --config`). Here
//! a connection is a task: it ends, and its socket closes, when the requester goes away, stays
//! idle too long or stops reading.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

use crate::events::{END_SEQ, ReplayBuffer, lock};

/// Longest a requester may take to complete the ZMTP handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// A connection with no request for this long is closed (vLLM's clients reconnect).
const IDLE_TIMEOUT: Duration = Duration::from_secs(300);
/// Longest one reply message may wait for the requester to read it.
const SEND_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections served at once; more are closed on accept.
const MAX_CONNECTIONS: usize = 256;
/// Largest frame a requester may send (a request is an empty delimiter and 8 bytes).
const MAX_FRAME: u64 = 1024;

const FLAG_MORE: u8 = 0x01;
const FLAG_LONG: u8 = 0x02;
const FLAG_COMMAND: u8 = 0x04;

/// Bind `addr` (`host:port`) and serve replay requests from `buffer` until the returned task
/// is aborted. Returns the bound address.
pub(crate) async fn bind(
    addr: &str,
    buffer: ReplayBuffer,
) -> std::io::Result<(std::net::SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    let task = tokio::spawn(accept_loop(listener, buffer));
    Ok((local, task))
}

async fn accept_loop(listener: TcpListener, buffer: ReplayBuffer) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut conns = tokio::task::JoinSet::new();
    loop {
        // Reap finished connection tasks so the set does not grow.
        while conns.try_join_next().is_some() {}
        let Ok((stream, _)) = listener.accept().await else {
            // EMFILE and friends: back off instead of spinning.
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            drop(stream);
            continue;
        };
        let buffer = buffer.clone();
        conns.spawn(async move {
            let _permit = permit;
            let _ = serve_connection(stream, &buffer).await;
        });
    }
}

/// Why a connection ended early (never reported: the requester sees its socket close).
#[derive(Debug)]
enum ConnError {
    Io,
    Protocol,
    Timeout,
}

impl From<std::io::Error> for ConnError {
    fn from(_: std::io::Error) -> Self {
        ConnError::Io
    }
}

async fn serve_connection(mut s: TcpStream, buffer: &ReplayBuffer) -> Result<(), ConnError> {
    s.set_nodelay(true)?;
    tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake(&mut s))
        .await
        .map_err(|_| ConnError::Timeout)??;
    loop {
        let frames = match tokio::time::timeout(IDLE_TIMEOUT, read_message(&mut s)).await {
            Err(_) => return Err(ConnError::Timeout),
            Ok(Err(ConnError::Io)) => return Ok(()), // requester closed
            Ok(r) => r?,
        };
        // `["", start]` from REQ and vLLM's DEALER clients, `[start]` from a bare DEALER;
        // anything else is ignored, as vLLM does.
        let (delimited, start) = match frames.as_slice() {
            [empty, start] if empty.is_empty() => (true, start),
            [start] => (false, start),
            _ => continue,
        };
        let Ok(start) = <[u8; 8]>::try_from(start.as_ref()) else {
            continue;
        };
        let start = u64::from_be_bytes(start);
        let batches: Vec<(u64, Bytes)> = lock(buffer)
            .iter()
            .filter(|(s, _)| *s >= start)
            .cloned()
            .collect();
        for (seq, payload) in batches.into_iter().chain([(END_SEQ, Bytes::new())]) {
            let mut out = Vec::with_capacity(payload.len() + 32);
            if delimited {
                put_frame(&mut out, 0, b"", true);
            }
            put_frame(&mut out, 0, &seq.to_be_bytes(), true);
            put_frame(&mut out, 0, &payload, false);
            tokio::time::timeout(SEND_TIMEOUT, s.write_all(&out))
                .await
                .map_err(|_| ConnError::Timeout)??;
        }
    }
}

/// ZMTP 3 greeting (NULL mechanism, as server) and READY exchange.
async fn handshake(s: &mut TcpStream) -> Result<(), ConnError> {
    let mut greeting = [0u8; 64];
    greeting[0] = 0xff;
    greeting[9] = 0x7f;
    greeting[10] = 3; // version 3.0
    greeting[12..16].copy_from_slice(b"NULL");
    greeting[32] = 1; // as-server
    s.write_all(&greeting).await?;
    let mut peer = [0u8; 64];
    s.read_exact(&mut peer).await?;
    if peer[0] != 0xff || peer[9] != 0x7f || peer[10] < 3 || &peer[12..16] != b"NULL" {
        return Err(ConnError::Protocol);
    }
    let mut ready = Vec::new();
    ready.push(5);
    ready.extend_from_slice(b"READY");
    let (name, value) = (b"Socket-Type", b"ROUTER");
    ready.push(name.len() as u8);
    ready.extend_from_slice(name);
    ready.extend_from_slice(&(value.len() as u32).to_be_bytes());
    ready.extend_from_slice(value);
    let mut out = Vec::new();
    put_frame(&mut out, FLAG_COMMAND, &ready, false);
    s.write_all(&out).await?;
    let (flags, body) = read_frame(s).await?;
    if flags & FLAG_COMMAND == 0 || !body.starts_with(b"\x05READY") {
        return Err(ConnError::Protocol);
    }
    Ok(())
}

/// One message: its frames, commands (heartbeats) skipped.
async fn read_message(s: &mut TcpStream) -> Result<Vec<Bytes>, ConnError> {
    let mut frames = Vec::new();
    loop {
        let (flags, body) = read_frame(s).await?;
        if flags & FLAG_COMMAND != 0 {
            continue;
        }
        frames.push(body);
        if flags & FLAG_MORE == 0 {
            return Ok(frames);
        }
        if frames.len() > 8 {
            return Err(ConnError::Protocol);
        }
    }
}

async fn read_frame(s: &mut TcpStream) -> Result<(u8, Bytes), ConnError> {
    let flags = s.read_u8().await?;
    let len = if flags & FLAG_LONG != 0 {
        s.read_u64().await?
    } else {
        u64::from(s.read_u8().await?)
    };
    if len > MAX_FRAME {
        return Err(ConnError::Protocol);
    }
    let mut body = vec![0u8; len as usize];
    s.read_exact(&mut body).await?;
    Ok((flags, Bytes::from(body)))
}

fn put_frame(out: &mut Vec<u8>, flags: u8, body: &[u8], more: bool) {
    let more = if more { FLAG_MORE } else { 0 };
    if body.len() > 255 {
        out.push(flags | more | FLAG_LONG);
        out.extend_from_slice(&(body.len() as u64).to_be_bytes());
    } else {
        out.push(flags | more);
        out.push(body.len() as u8);
    }
    out.extend_from_slice(body);
}
