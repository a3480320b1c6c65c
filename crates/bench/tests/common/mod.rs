//! TEST FIXTURE — a small OpenAI-compatible server for loopback tests of `switchyard bench`.
//!
//! It stands in for the project's simulated worker (`switchyard worker`, issue 6), which does
//! not exist yet; replace it with that worker once it lands. It is honest about what it does:
//! a real HTTP/1.1 server (axum/hyper) on a real loopback socket, `GET /v1/models`,
//! `POST /v1/completions` and `/v1/chat/completions`, streaming SSE (`data: {...}\n\n` chunks,
//! optional usage chunk, `data: [DONE]`) or a whole JSON response. Token `k` is emitted at the
//! absolute deadline `arrival + ttft + k * itl` (so timer overshoot does not accumulate).
//! Faults can be injected per request, cycling through `faults` by arrival order.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};
use tokio::time::Instant;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    None,
    /// HTTP 500 with an OpenAI-style error body.
    Http500,
    /// After two tokens, an SSE event whose data is not JSON.
    MalformedSse,
    /// After `n` tokens, the connection is dropped (no [DONE], chunked body not terminated).
    Disconnect(u32),
    /// After one token, an in-band `{"error": ...}` event, then [DONE].
    StreamError,
}

#[derive(Debug, Clone)]
pub struct Config {
    pub model: String,
    pub ttft: Duration,
    pub itl: Duration,
    /// Send the usage chunk when the client asks for it.
    pub usage: bool,
    /// Cycled over requests by arrival order.
    pub faults: Vec<Fault>,
    /// Keep every request body (for prompt checks).
    pub record_bodies: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            model: "fixture-model".into(),
            ttft: Duration::ZERO,
            itl: Duration::ZERO,
            usage: true,
            faults: vec![Fault::None],
            record_bodies: false,
        }
    }
}

pub struct Fixture {
    pub url: String,
    pub addr: SocketAddr,
    pub requests: Arc<AtomicU64>,
    pub bodies: Arc<Mutex<Vec<Value>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Fixture {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[derive(Clone)]
struct AppState {
    cfg: Arc<Config>,
    requests: Arc<AtomicU64>,
    bodies: Arc<Mutex<Vec<Value>>>,
}

pub async fn start(cfg: Config) -> Fixture {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    start_on(listener, cfg)
}

pub fn start_on(listener: tokio::net::TcpListener, cfg: Config) -> Fixture {
    let addr = listener.local_addr().unwrap();
    let state = AppState {
        cfg: Arc::new(cfg),
        requests: Arc::new(AtomicU64::new(0)),
        bodies: Arc::new(Mutex::new(Vec::new())),
    };
    let (requests, bodies) = (state.requests.clone(), state.bodies.clone());
    let app = Router::new()
        .route("/v1/models", get(models))
        .route("/v1/completions", post(completions))
        .route("/v1/chat/completions", post(chat))
        .with_state(state);
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Fixture {
        url: format!("http://{addr}"),
        addr,
        requests,
        bodies,
        task,
    }
}

async fn models(State(s): State<AppState>) -> impl IntoResponse {
    axum::Json(json!({"object": "list", "data": [{"id": s.cfg.model, "object": "model"}]}))
}

async fn completions(State(s): State<AppState>, h: HeaderMap, body: String) -> Response {
    generate(s, h, body, false).await
}

async fn chat(State(s): State<AppState>, h: HeaderMap, body: String) -> Response {
    generate(s, h, body, true).await
}

fn prompt_tokens(v: &Value, chat: bool) -> u64 {
    let words = |t: &str| t.split_whitespace().count() as u64;
    if chat {
        v["messages"]
            .as_array()
            .map(|m| {
                m.iter()
                    .map(|m| m["content"].as_str().map_or(0, words))
                    .sum()
            })
            .unwrap_or(0)
    } else {
        match &v["prompt"] {
            Value::Array(a) => a.len() as u64,
            Value::String(t) => words(t),
            _ => 0,
        }
    }
}

fn chunk(chat: bool, model: &str, text: &str, finish: Option<&str>) -> String {
    let v = if chat {
        json!({"id": "chatcmpl-fixture", "object": "chat.completion.chunk", "created": 0, "model": model,
               "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": finish}]})
    } else {
        json!({"id": "cmpl-fixture", "object": "text_completion", "created": 0, "model": model,
               "choices": [{"index": 0, "text": text, "logprobs": null, "finish_reason": finish}]})
    };
    format!("data: {v}\n\n")
}

async fn generate(s: AppState, headers: HeaderMap, body: String, chat: bool) -> Response {
    let arrival = Instant::now();
    let i = s.requests.fetch_add(1, Ordering::SeqCst);
    let fault = s.cfg.faults[(i as usize) % s.cfg.faults.len().max(1)];
    let v: Value = match serde_json::from_str(&body) {
        Ok(v) => v,
        Err(e) => {
            return (
                StatusCode::BAD_REQUEST,
                format!("{{\"error\":{{\"message\":\"{e}\"}}}}"),
            )
                .into_response();
        }
    };
    if s.cfg.record_bodies {
        // The request headers ride along under "_headers" (lower-case names).
        let mut rec = v.clone();
        rec["_headers"] = headers
            .iter()
            .map(|(k, v)| (k.to_string(), Value::from(v.to_str().unwrap_or(""))))
            .collect::<serde_json::Map<_, _>>()
            .into();
        s.bodies.lock().unwrap().push(rec);
    }
    if fault == Fault::Http500 {
        return (
            StatusCode::INTERNAL_SERVER_ERROR,
            axum::Json(json!({"error": {"message": "injected failure", "type": "server_error", "code": 500}})),
        )
            .into_response();
    }
    let n = v["max_tokens"]
        .as_u64()
        .or(v["max_completion_tokens"].as_u64())
        .unwrap_or(16)
        .max(1);
    let stream = v["stream"].as_bool().unwrap_or(false);
    let usage_wanted = v["stream_options"]["include_usage"]
        .as_bool()
        .unwrap_or(false);
    let prompt = prompt_tokens(&v, chat);
    let model = s.cfg.model.clone();
    let (ttft, itl) = (s.cfg.ttft, s.cfg.itl);
    let usage =
        json!({"prompt_tokens": prompt, "completion_tokens": n, "total_tokens": prompt + n});

    if !stream {
        tokio::time::sleep_until(arrival + ttft + itl * (n as u32 - 1)).await;
        let text = " tok".repeat(n as usize);
        let mut resp = if chat {
            json!({"id": "chatcmpl-fixture", "object": "chat.completion", "model": model,
                   "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "length"}]})
        } else {
            json!({"id": "cmpl-fixture", "object": "text_completion", "model": model,
                   "choices": [{"index": 0, "text": text, "finish_reason": "length"}]})
        };
        if s.cfg.usage {
            resp["usage"] = usage;
        }
        return axum::Json(resp).into_response();
    }

    let send_usage = s.cfg.usage && usage_wanted;
    let stream = futures_util::stream::unfold(Phase::Token(0), move |phase| {
        let model = model.clone();
        let usage = usage.clone();
        async move {
            match phase {
                Phase::Token(k) => {
                    tokio::time::sleep_until(arrival + ttft + itl * k as u32).await;
                    Some(match fault {
                        Fault::Disconnect(after) if k == u64::from(after) => (
                            Err(std::io::Error::other("injected disconnect")),
                            Phase::End,
                        ),
                        Fault::MalformedSse if k == 2 => (
                            Ok("data: {\"choices\": [ oops\n\n".to_string()),
                            Phase::Done,
                        ),
                        Fault::StreamError if k == 1 => (
                            Ok(format!(
                                "data: {}\n\n",
                                json!({"error": {"message": "injected mid-stream error", "code": 500}})
                            )),
                            Phase::Done,
                        ),
                        _ => {
                            let last = k + 1 == n;
                            let next = if !last {
                                Phase::Token(k + 1)
                            } else if send_usage {
                                Phase::Usage
                            } else {
                                Phase::Done
                            };
                            (
                                Ok(chunk(chat, &model, " tok", last.then_some("length"))),
                                next,
                            )
                        }
                    })
                }
                Phase::Usage => Some((
                    Ok(format!(
                        "data: {}\n\n",
                        json!({"id": "cmpl-fixture", "object": "text_completion", "model": model, "choices": [], "usage": usage})
                    )),
                    Phase::Done,
                )),
                Phase::Done => Some((Ok("data: [DONE]\n\n".to_string()), Phase::End)),
                Phase::End => None,
            }
        }
    });
    Response::builder()
        .header(header::CONTENT_TYPE, "text/event-stream")
        .header(header::CACHE_CONTROL, "no-cache")
        .body(Body::from_stream(stream))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

#[derive(Debug, Clone, Copy)]
enum Phase {
    Token(u64),
    Usage,
    Done,
    End,
}
