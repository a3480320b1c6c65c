//! A small etcd v3 client over etcd's built-in HTTP/JSON gateway.
//!
//! Why not a gRPC client: the Rust ones compile etcd's `.proto` files in a build script, which
//! needs `protoc` on the build machine. etcd serves the same v3 API as JSON on its client port
//! (the grpc-gateway, on by default, under `/v3/` since etcd 3.4), so plain HTTP/1.1 with
//! `reqwest` covers what the cluster layer uses: range, put, delete, leases and watch.
//!
//! Gateway conventions: keys and values are base64 in JSON, 64-bit integers are strings, fields
//! at their proto3 default (0, false, empty) are omitted. Streaming calls (watch, lease
//! keep-alive) answer with newline-delimited `{"result": ...}` or `{"error": ...}` objects.
//!
//! Endpoints are tried in order from the last one that answered; a transport failure moves
//! on to the next, so a multi-member cluster survives losing one member.

use std::collections::VecDeque;
use std::error::Error as _;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer};
use serde_json::{Value, json};
use tokio::time::Instant;

/// Largest single message accepted from a watch stream: far above any real batch of worker
/// records, small enough that a misbehaving peer cannot exhaust memory.
const MAX_MESSAGE: usize = 64 << 20;

/// gRPC status code `UNAVAILABLE` (no leader, member stopping): worth trying another member.
const GRPC_UNAVAILABLE: i64 = 14;

/// What can go wrong talking to etcd.
#[derive(Debug, thiserror::Error)]
pub enum EtcdError {
    #[error("no etcd endpoints")]
    NoEndpoints,
    /// Could not build the HTTP client (TLS backend initialisation).
    #[error("HTTP client: {0}")]
    Client(String),
    /// Connection refused or reset, DNS failure, body cut off: etcd not reachable.
    #[error("{endpoint}: {message}")]
    Transport { endpoint: String, message: String },
    /// No answer within the request timeout.
    #[error("{endpoint}: {what} timed out after {after:?}")]
    Timeout {
        endpoint: String,
        what: &'static str,
        after: Duration,
    },
    /// etcd answered with an error (e.g. gRPC code 5 = lease not found).
    #[error("{endpoint}: etcd error (HTTP {http_status}, gRPC code {code}): {message}")]
    Server {
        endpoint: String,
        http_status: u16,
        code: i64,
        message: String,
    },
    /// The answer was not the JSON expected.
    #[error("{endpoint}: bad response: {message}")]
    Decode { endpoint: String, message: String },
    /// The server canceled a watch (e.g. the start revision was compacted away).
    #[error("watch canceled{}{}", if reason.is_empty() { String::new() } else { format!(": {reason}") },
        if *compact_revision > 0 { format!(" (compacted up to revision {compact_revision})") } else { String::new() })]
    WatchCanceled {
        reason: String,
        compact_revision: i64,
    },
    /// The watch stream ended (etcd closed the connection).
    #[error("watch stream ended")]
    WatchEnded,
}

/// One key-value pair as etcd stores it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct KeyValue {
    #[serde(deserialize_with = "de_b64")]
    pub key: Vec<u8>,
    #[serde(deserialize_with = "de_b64")]
    pub value: Vec<u8>,
    #[serde(deserialize_with = "de_i64")]
    pub create_revision: i64,
    #[serde(deserialize_with = "de_i64")]
    pub mod_revision: i64,
    #[serde(deserialize_with = "de_i64")]
    pub version: i64,
    /// Lease the key is attached to (0: none).
    #[serde(deserialize_with = "de_i64")]
    pub lease: i64,
}

/// Answer to a range read.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RangeResponse {
    /// Store revision the read saw (watch from `revision + 1` to miss nothing after it).
    pub revision: i64,
    pub kvs: Vec<KeyValue>,
    /// Number of keys in the range (also set for count-only reads).
    pub count: i64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventType {
    Put,
    Delete,
}

/// A change seen by a watch. For deletes, `kv` carries the key and the deletion revision.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    pub event_type: EventType,
    pub kv: KeyValue,
}

/// One message of a watch stream.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WatchResponse {
    pub revision: i64,
    pub created: bool,
    /// The watch is over; `compact_revision > 0` means history before it was compacted.
    pub canceled: bool,
    pub cancel_reason: String,
    pub compact_revision: i64,
    pub events: Vec<Event>,
}

/// A lease as granted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Lease {
    pub id: i64,
    /// TTL in seconds as etcd granted it (etcd raises TTLs below its minimum).
    pub ttl: i64,
}

/// An etcd client. Methods take `&self` (share it by reference); nothing is dialed until the
/// first request, and HTTP connections are pooled.
#[derive(Debug)]
pub struct EtcdClient {
    http: reqwest::Client,
    endpoints: Vec<String>,
    /// Index of the endpoint to try first: the last one that answered.
    current: AtomicUsize,
    timeout: Duration,
}

impl EtcdClient {
    /// A client for `http://HOST:PORT` endpoints (see [`crate::parse_etcd_endpoints`]).
    /// `request_timeout` bounds every unary request, failover included, and the setup of a
    /// watch; a running watch has no timeout (it is silent while nothing changes).
    pub fn new(endpoints: &[String], request_timeout: Duration) -> Result<Self, EtcdError> {
        if endpoints.is_empty() {
            return Err(EtcdError::NoEndpoints);
        }
        let http = reqwest::Client::builder()
            .connect_timeout(request_timeout)
            // A partitioned peer sends no RST: let the kernel notice dead idle connections.
            .tcp_keepalive(Duration::from_secs(5))
            .tcp_nodelay(true)
            // Fresh connections soon after an etcd restart rather than stale pooled ones.
            .pool_idle_timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| EtcdError::Client(chain(&e)))?;
        Ok(EtcdClient {
            http,
            endpoints: endpoints
                .iter()
                .map(|e| e.trim_end_matches('/').to_string())
                .collect(),
            current: AtomicUsize::new(0),
            timeout: request_timeout,
        })
    }

    /// All keys starting with `prefix`, with the revision of the read.
    pub async fn get_prefix(&self, prefix: impl AsRef<[u8]>) -> Result<RangeResponse, EtcdError> {
        self.range(prefix.as_ref(), false).await
    }

    /// How many keys start with `prefix` (a cheap linearizable read: proves a quorum).
    pub async fn count_prefix(&self, prefix: impl AsRef<[u8]>) -> Result<i64, EtcdError> {
        Ok(self.range(prefix.as_ref(), true).await?.count)
    }

    async fn range(&self, prefix: &[u8], count_only: bool) -> Result<RangeResponse, EtcdError> {
        #[derive(Deserialize, Default)]
        #[serde(default)]
        struct Raw {
            header: Header,
            kvs: Vec<KeyValue>,
            #[serde(deserialize_with = "de_i64")]
            count: i64,
        }
        let mut req = json!({
            "key": B64.encode(prefix),
            "range_end": B64.encode(prefix_end(prefix)),
        });
        if count_only {
            req["count_only"] = json!(true);
        }
        let r: Raw = self.unary("/v3/kv/range", &req).await?;
        Ok(RangeResponse {
            revision: r.header.revision,
            kvs: r.kvs,
            count: r.count,
        })
    }

    /// Put `key = value`, attached to `lease` if given (the key is deleted when it expires).
    /// Returns the revision of the write.
    pub async fn put(
        &self,
        key: impl AsRef<[u8]>,
        value: impl AsRef<[u8]>,
        lease: Option<i64>,
    ) -> Result<i64, EtcdError> {
        let mut req = json!({
            "key": B64.encode(key.as_ref()),
            "value": B64.encode(value.as_ref()),
        });
        if let Some(id) = lease {
            req["lease"] = json!(id.to_string());
        }
        Ok(self
            .unary::<WithHeader>("/v3/kv/put", &req)
            .await?
            .header
            .revision)
    }

    /// Delete one key; returns how many keys were deleted (0 or 1).
    pub async fn delete(&self, key: impl AsRef<[u8]>) -> Result<i64, EtcdError> {
        #[derive(Deserialize, Default)]
        #[serde(default)]
        struct Raw {
            #[serde(deserialize_with = "de_i64")]
            deleted: i64,
        }
        let req = json!({ "key": B64.encode(key.as_ref()) });
        Ok(self.unary::<Raw>("/v3/kv/deleterange", &req).await?.deleted)
    }

    /// Grant a lease of `ttl_secs` seconds.
    pub async fn lease_grant(&self, ttl_secs: i64) -> Result<Lease, EtcdError> {
        #[derive(Deserialize, Default)]
        #[serde(default)]
        struct Raw {
            #[serde(rename = "ID", deserialize_with = "de_i64")]
            id: i64,
            #[serde(rename = "TTL", deserialize_with = "de_i64")]
            ttl: i64,
            error: String,
        }
        let r: Raw = self
            .unary("/v3/lease/grant", &json!({ "TTL": ttl_secs.to_string() }))
            .await?;
        if !r.error.is_empty() || r.id == 0 {
            return Err(EtcdError::Decode {
                endpoint: self.endpoint_now(),
                message: format!("lease grant refused: {:?}", r.error),
            });
        }
        Ok(Lease {
            id: r.id,
            ttl: r.ttl,
        })
    }

    /// Renew a lease once; returns its new TTL, 0 if it no longer exists (expired or revoked).
    pub async fn lease_keep_alive(&self, id: i64) -> Result<i64, EtcdError> {
        // A streaming RPC on the gateway: one request in, one `{"result": ...}` line out, and
        // the stream ends with our request body.
        let v: Value = self
            .unary("/v3/lease/keepalive", &json!({ "ID": id.to_string() }))
            .await?;
        let r: LeaseTtl = stream_result(v).map_err(|message| EtcdError::Decode {
            endpoint: self.endpoint_now(),
            message,
        })?;
        Ok(r.ttl)
    }

    /// Remaining TTL of a lease in seconds; -1 if it no longer exists.
    pub async fn lease_time_to_live(&self, id: i64) -> Result<i64, EtcdError> {
        let r: LeaseTtl = self
            .unary("/v3/lease/timetolive", &json!({ "ID": id.to_string() }))
            .await?;
        Ok(r.ttl)
    }

    /// Revoke a lease: its keys are deleted at once.
    pub async fn lease_revoke(&self, id: i64) -> Result<(), EtcdError> {
        self.unary::<Value>("/v3/lease/revoke", &json!({ "ID": id.to_string() }))
            .await
            .map(drop)
    }

    /// Watch every key starting with `prefix`, from `start_revision` on (0: from now). Returns
    /// once etcd confirmed the watch. A watch that starts below the compaction point is
    /// confirmed and then canceled: its first message has `canceled` and `compact_revision`.
    pub async fn watch_prefix(
        &self,
        prefix: impl AsRef<[u8]>,
        start_revision: i64,
    ) -> Result<WatchStream, EtcdError> {
        let prefix = prefix.as_ref();
        let mut create = json!({
            "key": B64.encode(prefix),
            "range_end": B64.encode(prefix_end(prefix)),
        });
        if start_revision > 0 {
            create["start_revision"] = json!(start_revision.to_string());
        }
        let body = json!({ "create_request": create });
        let n = self.endpoints.len();
        let start = self.current.load(Ordering::Relaxed);
        let deadline = Instant::now() + self.timeout;
        let mut last = None;
        for i in 0..n {
            let idx = (start + i) % n;
            let endpoint = &self.endpoints[idx];
            let attempt = async {
                let resp = self
                    .http
                    .post(format!("{endpoint}/v3/watch"))
                    .json(&body)
                    .send()
                    .await
                    .map_err(|e| transport(endpoint, &e))?;
                if !resp.status().is_success() {
                    return Err(server_error(endpoint, resp).await);
                }
                let mut ws = WatchStream {
                    endpoint: endpoint.clone(),
                    resp,
                    buf: Vec::new(),
                    pending: VecDeque::new(),
                };
                match ws.message().await? {
                    Some(r) if r.canceled => Err(EtcdError::WatchCanceled {
                        reason: r.cancel_reason,
                        compact_revision: r.compact_revision,
                    }),
                    Some(r) if r.created => Ok(ws),
                    Some(r) => {
                        // Not the confirmation: keep it for the caller.
                        ws.pending.push_front(r);
                        Ok(ws)
                    }
                    None => Err(EtcdError::WatchEnded),
                }
            };
            match tokio::time::timeout_at(deadline, attempt).await {
                Ok(Ok(ws)) => {
                    self.current.store(idx, Ordering::Relaxed);
                    return Ok(ws);
                }
                Ok(Err(e)) if failover(&e) => {
                    self.current.store((idx + 1) % n, Ordering::Relaxed);
                    last = Some(e);
                }
                Ok(Err(e)) => return Err(e),
                Err(_) => {
                    self.current.store((idx + 1) % n, Ordering::Relaxed);
                    return Err(EtcdError::Timeout {
                        endpoint: endpoint.clone(),
                        what: "watch setup",
                        after: self.timeout,
                    });
                }
            }
        }
        Err(last.unwrap_or(EtcdError::NoEndpoints))
    }

    /// POST one JSON request, trying endpoints in turn while they fail at the transport level,
    /// all within one request timeout.
    async fn unary<T: DeserializeOwned>(&self, path: &str, body: &Value) -> Result<T, EtcdError> {
        let n = self.endpoints.len();
        let start = self.current.load(Ordering::Relaxed);
        let deadline = Instant::now() + self.timeout;
        let mut last = None;
        for i in 0..n {
            let idx = (start + i) % n;
            let endpoint = &self.endpoints[idx];
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            match self.post_once(endpoint, path, body, left).await {
                Ok(v) => {
                    self.current.store(idx, Ordering::Relaxed);
                    return Ok(v);
                }
                Err(e) => {
                    if !failover(&e) {
                        return Err(e);
                    }
                    // Start the next request elsewhere, even if this one ran out of time here.
                    self.current.store((idx + 1) % n, Ordering::Relaxed);
                    last = Some(e);
                }
            }
        }
        Err(last.unwrap_or_else(|| EtcdError::Timeout {
            endpoint: self.endpoint_now(),
            what: "request",
            after: self.timeout,
        }))
    }

    async fn post_once<T: DeserializeOwned>(
        &self,
        endpoint: &str,
        path: &str,
        body: &Value,
        timeout: Duration,
    ) -> Result<T, EtcdError> {
        let url = format!("{endpoint}{path}");
        let resp = self
            .http
            .post(&url)
            .json(body)
            .timeout(timeout)
            .send()
            .await
            .map_err(|e| timeout_or_transport(endpoint, &e, timeout))?;
        if !resp.status().is_success() {
            return Err(server_error(endpoint, resp).await);
        }
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| timeout_or_transport(endpoint, &e, timeout))?;
        // Streaming endpoints answer with lines; a unary caller wants the first one.
        let first = bytes.split(|&b| b == b'\n').next().unwrap_or(&[]);
        serde_json::from_slice(first).map_err(|e| EtcdError::Decode {
            endpoint: endpoint.to_string(),
            message: format!("{path}: {e}"),
        })
    }

    fn endpoint_now(&self) -> String {
        let i = self.current.load(Ordering::Relaxed) % self.endpoints.len();
        self.endpoints[i].clone()
    }
}

/// An open watch. Dropping it closes the HTTP stream, which cancels the watch in etcd.
#[derive(Debug)]
pub struct WatchStream {
    endpoint: String,
    resp: reqwest::Response,
    buf: Vec<u8>,
    pending: VecDeque<WatchResponse>,
}

impl WatchStream {
    /// The next message; `Ok(None)` when etcd closed the stream. Cancel-safe (usable in
    /// `select!`): a message is only taken out of the buffer once complete.
    pub async fn message(&mut self) -> Result<Option<WatchResponse>, EtcdError> {
        loop {
            if let Some(r) = self.pending.pop_front() {
                return Ok(Some(r));
            }
            if let Some(nl) = self.buf.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=nl).collect();
                let line = line.trim_ascii();
                if line.is_empty() {
                    continue;
                }
                return self.parse(line).map(Some);
            }
            if self.buf.len() > MAX_MESSAGE {
                return Err(EtcdError::Decode {
                    endpoint: self.endpoint.clone(),
                    message: format!("watch message over {MAX_MESSAGE} bytes"),
                });
            }
            match self.resp.chunk().await {
                Ok(Some(chunk)) => self.buf.extend_from_slice(&chunk),
                Ok(None) => {
                    // A last message without its newline still counts.
                    let rest = std::mem::take(&mut self.buf);
                    let rest = rest.trim_ascii();
                    return if rest.is_empty() {
                        Ok(None)
                    } else {
                        self.parse(rest).map(Some)
                    };
                }
                Err(e) => return Err(transport(&self.endpoint, &e)),
            }
        }
    }

    fn parse(&self, line: &[u8]) -> Result<WatchResponse, EtcdError> {
        #[derive(Deserialize, Default)]
        #[serde(default)]
        struct RawEvent {
            #[serde(rename = "type")]
            kind: String,
            kv: KeyValue,
        }
        #[derive(Deserialize, Default)]
        #[serde(default)]
        struct Raw {
            header: Header,
            created: bool,
            canceled: bool,
            cancel_reason: String,
            #[serde(deserialize_with = "de_i64")]
            compact_revision: i64,
            events: Vec<RawEvent>,
        }
        let bad = |message: String| EtcdError::Decode {
            endpoint: self.endpoint.clone(),
            message,
        };
        let v: Value = serde_json::from_slice(line).map_err(|e| bad(format!("watch: {e}")))?;
        let r: Raw = stream_result(v).map_err(bad)?;
        let mut events = Vec::with_capacity(r.events.len());
        for e in r.events {
            let event_type = match e.kind.as_str() {
                "" | "PUT" => EventType::Put,
                "DELETE" => EventType::Delete,
                other => return Err(bad(format!("watch: unknown event type {other:?}"))),
            };
            events.push(Event {
                event_type,
                kv: e.kv,
            });
        }
        Ok(WatchResponse {
            revision: r.header.revision,
            created: r.created,
            canceled: r.canceled,
            cancel_reason: r.cancel_reason,
            compact_revision: r.compact_revision,
            events,
        })
    }
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct Header {
    #[serde(deserialize_with = "de_i64")]
    revision: i64,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct WithHeader {
    header: Header,
}

#[derive(Debug, Deserialize, Default)]
#[serde(default)]
struct LeaseTtl {
    #[serde(rename = "TTL", deserialize_with = "de_i64")]
    ttl: i64,
}

/// Unwrap one message of a gateway stream: `{"result": T}` or `{"error": {...}}`.
fn stream_result<T: DeserializeOwned>(mut v: Value) -> Result<T, String> {
    if let Some(e) = v.get("error") {
        let msg = e
            .get("message")
            .and_then(Value::as_str)
            .map(str::to_string)
            .unwrap_or_else(|| e.to_string());
        return Err(format!("stream error: {msg}"));
    }
    match v.get_mut("result") {
        Some(r) => serde_json::from_value(r.take()).map_err(|e| e.to_string()),
        None => Err(format!("no result in {}", truncate(&v.to_string()))),
    }
}

/// The end of the range of keys starting with `prefix`: the prefix with its last byte below
/// 0xff incremented (etcd's convention; `[0]` means "to the end of the keyspace").
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// Whether another endpoint might do better: etcd unreachable or without a leader, not a
/// request it refused.
fn failover(e: &EtcdError) -> bool {
    match e {
        EtcdError::Transport { .. } | EtcdError::Timeout { .. } | EtcdError::WatchEnded => true,
        EtcdError::Server { code, .. } => *code == GRPC_UNAVAILABLE,
        _ => false,
    }
}

fn transport(endpoint: &str, e: &reqwest::Error) -> EtcdError {
    EtcdError::Transport {
        endpoint: endpoint.to_string(),
        message: chain(e),
    }
}

fn timeout_or_transport(endpoint: &str, e: &reqwest::Error, after: Duration) -> EtcdError {
    if e.is_timeout() {
        EtcdError::Timeout {
            endpoint: endpoint.to_string(),
            what: "request",
            after,
        }
    } else {
        transport(endpoint, e)
    }
}

/// A non-2xx answer: the gateway's `{"error", "message", "code"}` body, or whatever came.
async fn server_error(endpoint: &str, resp: reqwest::Response) -> EtcdError {
    let http_status = resp.status().as_u16();
    let body = resp.bytes().await.unwrap_or_default();
    let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let message = v
        .get("message")
        .or_else(|| v.get("error"))
        .and_then(Value::as_str)
        .map(str::to_string)
        .unwrap_or_else(|| truncate(&String::from_utf8_lossy(&body)));
    let code = v.get("code").and_then(Value::as_i64).unwrap_or(-1);
    EtcdError::Server {
        endpoint: endpoint.to_string(),
        http_status,
        code,
        message,
    }
}

/// What went wrong, from reqwest's error chain. Its top line ("error sending request for url
/// (...)") repeats the endpoint the caller already names; the causes say what happened.
fn chain(e: &reqwest::Error) -> String {
    let mut parts = Vec::new();
    let mut src = e.source();
    while let Some(inner) = src {
        parts.push(inner.to_string());
        src = inner.source();
    }
    if parts.is_empty() {
        e.to_string()
    } else {
        parts.join(": ")
    }
}

fn truncate(s: &str) -> String {
    let mut s = s.to_string();
    if s.len() > 200 {
        let mut cut = 200;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
        s.push('…');
    }
    s
}

/// proto3 JSON writes 64-bit integers as strings; accept numbers too.
fn de_i64<'de, D: Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Int {
        Num(i64),
        Str(String),
    }
    match Int::deserialize(d)? {
        Int::Num(n) => Ok(n),
        Int::Str(s) => s.parse().map_err(serde::de::Error::custom),
    }
}

fn de_b64<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
    let s = String::deserialize(d)?;
    B64.decode(s.as_bytes()).map_err(serde::de::Error::custom)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_end_follows_etcd() {
        assert_eq!(prefix_end(b"/p/"), b"/p0");
        assert_eq!(prefix_end(b"a\xff"), b"b");
        assert_eq!(prefix_end(b"\xff\xff"), vec![0]);
        assert_eq!(prefix_end(b""), vec![0]);
    }

    #[test]
    fn gateway_json_decodes() {
        // As etcd 3.4's gateway writes them: int64 as strings, defaults omitted.
        let kv: KeyValue = serde_json::from_str(
            r#"{"key":"L3AvYQ==","create_revision":"2","mod_revision":"2","version":"1","value":"aGVsbG8="}"#,
        )
        .unwrap();
        assert_eq!(kv.key, b"/p/a");
        assert_eq!(kv.value, b"hello");
        assert_eq!((kv.mod_revision, kv.lease), (2, 0));
        let lease: LeaseTtl =
            serde_json::from_str(r#"{"header":{},"ID":"2324035884185588486","TTL":"-1"}"#).unwrap();
        assert_eq!(lease.ttl, -1);
        let big: i64 = de_i64(serde_json::json!("2324035884185588486")).unwrap();
        assert_eq!(big, 2324035884185588486);
        // An expired lease's keep-alive answer has no TTL at all.
        let r: LeaseTtl = stream_result(serde_json::json!({"result": {"ID": "5"}})).unwrap();
        assert_eq!(r.ttl, 0);
        assert!(
            stream_result::<LeaseTtl>(serde_json::json!({"error": {"message": "boom"}}))
                .unwrap_err()
                .contains("boom")
        );
    }

    #[test]
    fn errors_read_well() {
        let e = EtcdError::WatchCanceled {
            reason: String::new(),
            compact_revision: 4,
        };
        assert_eq!(e.to_string(), "watch canceled (compacted up to revision 4)");
        assert!(failover(&EtcdError::WatchEnded));
        assert!(!failover(&EtcdError::Server {
            endpoint: "e".into(),
            http_status: 404,
            code: 5,
            message: "requested lease not found".into(),
        }));
    }

    #[tokio::test]
    async fn unreachable_endpoints_fail_over_then_fail() {
        // Two closed loopback ports: both refused, well within the timeout.
        let eps = vec![
            "http://127.0.0.1:1".to_string(),
            "http://127.0.0.1:2".into(),
        ];
        let c = EtcdClient::new(&eps, Duration::from_secs(2)).unwrap();
        let t0 = std::time::Instant::now();
        let e = c.count_prefix("/x/").await.unwrap_err();
        assert!(matches!(e, EtcdError::Transport { .. }), "{e}");
        assert!(t0.elapsed() < Duration::from_secs(2));
        assert!(EtcdClient::new(&[], Duration::from_secs(1)).is_err());
    }
}
