//! The HTTP side: request bodies, sending, reading SSE streams with per-chunk timestamps, and
//! turning what was observed into a [`RequestRecord`].
//!
//! Client: `reqwest` (rustls, HTTP/1.1 keep-alive pool) on tokio. reqwest is a thin layer over
//! hyper's pooled client; what matters for accuracy is that (1) each request task reads its
//! own response body, frame by frame, as hyper decodes it from the socket, and stamps the
//! clock immediately when a frame arrives, before any parsing; (2) nothing is shared between
//! streams on the hot path (no common buffer, no lock per chunk); (3) request bodies are built
//! before the scheduled send time. The remaining client overhead is measured, not assumed:
//! every record carries its dispatch lag (`sent - scheduled`).

use std::borrow::Cow;
use std::time::{Duration, Instant};

use reqwest::header::{AUTHORIZATION, CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue};
use serde::Deserialize;
use switchyard_metrics::{ChunkGaps, RequestRecord, Status};

use crate::args::{BenchArgs, Endpoint, PromptMode};
use crate::error::BenchError;
use crate::prompt::{Renderer, write_json_str};
use crate::sse::SseParser;
use crate::workload::{Content, Request};

/// Seconds since the start of the run, from a monotonic clock.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    pub epoch: Instant,
}

impl Clock {
    pub fn new() -> Clock {
        Clock {
            epoch: Instant::now(),
        }
    }
    /// Seconds since the epoch; 0 before it (the epoch may lie slightly in the future).
    #[inline]
    pub fn now(&self) -> f64 {
        self.epoch.elapsed().as_secs_f64()
    }
    #[inline]
    pub fn at(&self, t: Instant) -> f64 {
        t.saturating_duration_since(self.epoch).as_secs_f64()
    }
    /// The instant `secs` after the epoch (clamped, never panics).
    pub fn instant(&self, secs: f64) -> Instant {
        let d = secs_to_duration(secs);
        self.epoch
            .checked_add(d)
            .unwrap_or_else(|| self.epoch + FAR_FUTURE)
    }
}

/// Ten years: "never" for a benchmark, small enough to add to any `Instant`.
pub const FAR_FUTURE: Duration = Duration::from_secs(10 * 365 * 86_400);

/// Seconds (user input, schedules) to a `Duration`, clamped to `[0, FAR_FUTURE]` (never
/// panics on huge, negative or NaN values).
pub fn secs_to_duration(secs: f64) -> Duration {
    if secs.is_nan() || secs <= 0.0 {
        return Duration::ZERO;
    }
    Duration::try_from_secs_f64(secs)
        .unwrap_or(FAR_FUTURE)
        .min(FAR_FUTURE)
}

impl Default for Clock {
    fn default() -> Self {
        Self::new()
    }
}

/// How output tokens are counted when the server sends no `usage`: one token per streamed
/// chunk that carries text (exact for servers that stream token by token, an undercount when
/// a chunk bundles several), or, without streaming, one token per 4 characters of the answer.
pub const OUTPUT_TOKEN_FALLBACK: &str = "server usage.completion_tokens; without usage: one token per streamed text chunk (non-streaming: 4 characters per token)";

/// Body template shared by every request of a run.
#[derive(Debug, Clone)]
pub struct BodyBuilder {
    endpoint: Endpoint,
    mode: PromptMode,
    renderer: Renderer,
    /// Serialized fields after the prompt (model, stream, stream_options, --extra), without
    /// the braces; empty or starting with a comma.
    tail: String,
    /// `--extra` sets the output length itself.
    extra_sets_max_tokens: bool,
}

impl BodyBuilder {
    pub fn new(
        endpoint: Endpoint,
        mode: PromptMode,
        renderer: Renderer,
        model: &str,
        stream: bool,
        extra: Option<&serde_json::Map<String, serde_json::Value>>,
    ) -> BodyBuilder {
        let mut fields = serde_json::Map::new();
        fields.insert("model".into(), model.into());
        fields.insert("stream".into(), stream.into());
        if stream {
            fields.insert(
                "stream_options".into(),
                serde_json::json!({"include_usage": true}),
            );
        }
        let mut extra_sets_max_tokens = false;
        if let Some(extra) = extra {
            for (k, v) in extra {
                if k == "max_tokens" || k == "max_completion_tokens" {
                    extra_sets_max_tokens = true;
                }
                fields.insert(k.clone(), v.clone());
            }
        }
        let obj = serde_json::Value::Object(fields).to_string();
        // "{...}" -> ",..." (the object is never empty: it has at least model and stream).
        let tail = format!(",{}", &obj[1..obj.len() - 1]);
        BodyBuilder {
            endpoint,
            mode,
            renderer,
            tail,
            extra_sets_max_tokens,
        }
    }

    /// The JSON body of `req`.
    pub fn build(&self, req: &Request) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.tail.len() + 64 + req.input_len as usize * 6);
        out.push(b'{');
        match self.endpoint {
            Endpoint::Completions => {
                out.extend_from_slice(b"\"prompt\":");
                match (&req.content, self.mode) {
                    (Content::Blocks(b), PromptMode::Tokens) => {
                        self.renderer.write_token_array(b, &mut out)
                    }
                    (Content::Blocks(b), PromptMode::Text) => {
                        write_json_str(&self.renderer.text(b), &mut out)
                    }
                    (Content::Text(t), _) => write_json_str(t, &mut out),
                }
            }
            Endpoint::Chat => {
                out.extend_from_slice(b"\"messages\":[{\"role\":\"user\",\"content\":");
                match &req.content {
                    Content::Blocks(b) => {
                        let text = self.renderer.text(b);
                        write_json_str(text.trim_start(), &mut out)
                    }
                    Content::Text(t) => write_json_str(t, &mut out),
                }
                out.extend_from_slice(b"}]");
            }
        }
        if !self.extra_sets_max_tokens {
            out.extend_from_slice(b",\"max_tokens\":");
            out.extend_from_slice(req.output_len.to_string().as_bytes());
        }
        out.extend_from_slice(self.tail.as_bytes());
        out.push(b'}');
        out
    }
}

/// Parse `-H "Name: value"` arguments and the API key into default headers.
pub fn build_headers(a: &BenchArgs) -> Result<HeaderMap, BenchError> {
    let mut h = HeaderMap::new();
    let key = a
        .api_key
        .clone()
        .or_else(|| std::env::var("OPENAI_API_KEY").ok())
        .filter(|k| !k.is_empty());
    if let Some(k) = key {
        let v = HeaderValue::from_str(&format!("Bearer {k}"))
            .map_err(|_| BenchError::Arg("the API key contains invalid characters".into()))?;
        h.insert(AUTHORIZATION, v);
    }
    for raw in &a.headers {
        let (name, value) = raw
            .split_once(':')
            .ok_or_else(|| BenchError::Arg(format!("-H `{raw}`: expected `Name: value`")))?;
        let name = HeaderName::from_bytes(name.trim().as_bytes())
            .map_err(|_| BenchError::Arg(format!("-H `{raw}`: invalid header name")))?;
        let value = HeaderValue::from_str(value.trim())
            .map_err(|_| BenchError::Arg(format!("-H `{raw}`: invalid header value")))?;
        h.append(name, value);
    }
    Ok(h)
}

/// The HTTP client of a run.
#[derive(Debug, Clone)]
pub struct Client {
    pub http: reqwest::Client,
    /// Full URL of the generation endpoint.
    pub url: String,
    pub stream: bool,
    /// Successful responses whose usage reported `prompt_tokens_details.cached_tokens`.
    pub cached_reported: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

/// Build the pooled HTTP client: no idle limit (a connection per concurrent request is kept),
/// TCP_NODELAY, a total timeout per request.
pub fn http_client(headers: HeaderMap, timeout: Duration) -> Result<reqwest::Client, BenchError> {
    reqwest::Client::builder()
        .default_headers(headers)
        .timeout(timeout)
        .connect_timeout(Duration::from_secs(10).min(timeout))
        .pool_max_idle_per_host(usize::MAX)
        .pool_idle_timeout(Duration::from_secs(90))
        .tcp_nodelay(true)
        .build()
        .map_err(|e| BenchError::Arg(format!("cannot build the HTTP client: {e}")))
}

/// What a request needs besides its body.
#[derive(Debug, Clone, Copy)]
pub struct RequestMeta {
    pub id: u64,
    /// Planned prompt tokens (used when the server reports no usage).
    pub input_len: u32,
}

#[derive(Deserialize)]
struct Usage {
    #[serde(default)]
    prompt_tokens: Option<u64>,
    #[serde(default)]
    completion_tokens: Option<u64>,
    #[serde(default)]
    prompt_tokens_details: Option<PromptDetails>,
}

#[derive(Deserialize)]
struct PromptDetails {
    #[serde(default)]
    cached_tokens: Option<u64>,
}

#[derive(Deserialize)]
struct Chunk<'a> {
    #[serde(default, borrow)]
    choices: Option<Vec<ChunkChoice<'a>>>,
    #[serde(default)]
    usage: Option<Usage>,
    #[serde(default)]
    error: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct ChunkChoice<'a> {
    /// Completions.
    #[serde(default, borrow)]
    text: Option<Cow<'a, str>>,
    /// Chat (streaming).
    #[serde(default, borrow)]
    delta: Option<Message<'a>>,
    /// Chat (non-streaming).
    #[serde(default, borrow)]
    message: Option<Message<'a>>,
}

#[derive(Deserialize)]
struct Message<'a> {
    #[serde(default, borrow)]
    content: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    reasoning_content: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    reasoning: Option<Cow<'a, str>>,
}

impl ChunkChoice<'_> {
    /// Characters of generated text (answer or reasoning) this choice carries.
    fn text_len(&self) -> usize {
        let msg = |m: &Option<Message>| {
            m.as_ref().map_or(0, |m| {
                m.content.as_deref().map_or(0, str::len)
                    + m.reasoning_content.as_deref().map_or(0, str::len)
                    + m.reasoning.as_deref().map_or(0, str::len)
            })
        };
        self.text.as_deref().map_or(0, str::len) + msg(&self.delta) + msg(&self.message)
    }
}

/// Accumulates what one streamed response showed.
#[derive(Default)]
struct StreamState {
    /// Time of the first chunk with `choices` (fallback first token when no chunk has text).
    first_choice: Option<f64>,
    /// Times of the chunks that carried generated text: first one = first token.
    first: Option<f64>,
    last: f64,
    gaps: ChunkGaps,
    text_chunks: u32,
    done: bool,
    usage_prompt: Option<u64>,
    usage_completion: Option<u64>,
    usage_cached: Option<u64>,
    /// Set when the stream proved malformed or reported an error.
    failure: Option<Status>,
}

impl StreamState {
    /// Handle one SSE data payload received at `t`. Returns false to stop reading.
    fn on_data(&mut self, data: &str, t: f64) -> bool {
        if data.trim() == "[DONE]" {
            self.done = true;
            return true;
        }
        let chunk: Chunk = match serde_json::from_str(data) {
            Ok(c) => c,
            Err(e) => {
                self.failure = Some(Status::error(
                    "malformed_sse",
                    format!("SSE data is not a JSON chunk ({e}): {}", snippet(data)),
                ));
                return false;
            }
        };
        if let Some(err) = chunk.error {
            self.failure = Some(Status::error(
                "stream_error",
                format!(
                    "the server reported an error mid-stream: {}",
                    snippet(&err.to_string())
                ),
            ));
            return false;
        }
        if let Some(u) = &chunk.usage {
            self.usage_prompt = u.prompt_tokens.or(self.usage_prompt);
            self.usage_completion = u.completion_tokens.or(self.usage_completion);
            if let Some(c) = u
                .prompt_tokens_details
                .as_ref()
                .and_then(|d| d.cached_tokens)
            {
                self.usage_cached = Some(c);
            }
        }
        if let Some(choices) = &chunk.choices
            && let Some(c) = choices.first()
        {
            if self.first_choice.is_none() {
                self.first_choice = Some(t);
            }
            if c.text_len() > 0 {
                match self.first {
                    None => self.first = Some(t),
                    Some(_) => self.gaps.push(t - self.last),
                }
                self.last = t;
                self.text_chunks += 1;
            }
        }
        true
    }
}

fn snippet(s: &str) -> String {
    const MAX: usize = 200;
    if s.len() <= MAX {
        s.to_string()
    } else {
        let mut end = MAX;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        format!("{}...", &s[..end])
    }
}

fn classify(e: &reqwest::Error, during_body: bool) -> Status {
    let mut msg = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(s) = src {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        src = s.source();
    }
    let kind = if e.is_timeout() {
        "timeout"
    } else if e.is_connect() {
        "connect"
    } else if during_body {
        "stream_truncated"
    } else {
        "request"
    };
    Status::error(kind, msg)
}

impl Client {
    /// Send one request and observe it. `sent` is stamped immediately before the request is
    /// handed to the connection pool; every chunk is stamped as soon as its bytes are read.
    pub async fn execute(&self, clock: &Clock, meta: RequestMeta, body: Vec<u8>) -> RequestRecord {
        // Build the request (URL, headers) before the clock starts.
        let built = self
            .http
            .post(&self.url)
            .header(CONTENT_TYPE, "application/json")
            .body(body)
            .build();
        let sent = clock.now();
        let mut rec = RequestRecord::failed(meta.id, sent, sent, meta.input_len, Status::Ok);
        let request = match built {
            Ok(r) => r,
            Err(e) => {
                rec.status = classify(&e, false);
                return rec;
            }
        };
        let resp = match self.http.execute(request).await {
            Ok(r) => r,
            Err(e) => {
                rec.finish = clock.now();
                rec.status = classify(&e, false);
                return rec;
            }
        };
        let status = resp.status();
        if !status.is_success() {
            // Read a bounded amount of the error body for the message.
            let text = match tokio::time::timeout(Duration::from_secs(5), resp.text()).await {
                Ok(Ok(t)) => t,
                _ => String::new(),
            };
            rec.finish = clock.now();
            rec.status = Status::error(
                format!("http_{}", status.as_u16()),
                format!("HTTP {status}: {}", snippet(text.trim())),
            );
            return rec;
        }
        let is_sse = resp
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("text/event-stream"));
        if self.stream && is_sse {
            self.read_stream(clock, resp, rec).await
        } else {
            self.read_whole(clock, resp, rec).await
        }
    }

    async fn read_stream(
        &self,
        clock: &Clock,
        mut resp: reqwest::Response,
        mut rec: RequestRecord,
    ) -> RequestRecord {
        let mut parser = SseParser::new();
        let mut st = StreamState::default();
        let mut body_error: Option<Status> = None;
        loop {
            match resp.chunk().await {
                Ok(Some(bytes)) => {
                    // The timestamp of everything in this read.
                    let t = clock.now();
                    match parser.feed(&bytes, |d| st.on_data(d, t)) {
                        Ok(true) => {}
                        Ok(false) => break,
                        Err(e) => {
                            st.failure = Some(Status::error("malformed_sse", e.to_string()));
                            break;
                        }
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    body_error = Some(classify(&e, true));
                    break;
                }
            }
        }
        let end = clock.now();
        // A failure ends the record at the moment it was seen.
        let failure = st.failure.take().or(body_error).or_else(|| {
            if st.done {
                None
            } else if parser.pending() > 0 {
                Some(Status::error(
                    "stream_truncated",
                    "the stream ended inside an SSE event",
                ))
            } else {
                Some(Status::error(
                    "stream_truncated",
                    "the stream ended without `data: [DONE]`",
                ))
            }
        });
        let failure = failure.or_else(|| {
            (st.first.is_none() && st.first_choice.is_none()).then(|| {
                Status::error(
                    "no_content",
                    "the stream carried no choices (no generated token)",
                )
            })
        });
        self.fill(&mut rec, &st, end, failure);
        rec
    }

    async fn read_whole(
        &self,
        clock: &Clock,
        resp: reqwest::Response,
        mut rec: RequestRecord,
    ) -> RequestRecord {
        let bytes = match resp.bytes().await {
            Ok(b) => b,
            Err(e) => {
                rec.finish = clock.now();
                rec.status = classify(&e, true);
                return rec;
            }
        };
        let t = clock.now();
        let mut st = StreamState::default();
        let failure = match serde_json::from_slice::<Chunk>(&bytes) {
            Err(e) => Some(Status::error(
                "malformed_response",
                format!(
                    "the response is not a completion ({e}): {}",
                    snippet(&String::from_utf8_lossy(&bytes))
                ),
            )),
            Ok(c) => {
                if let Some(err) = c.error {
                    Some(Status::error("response_error", snippet(&err.to_string())))
                } else if let Some(choice) = c.choices.as_ref().and_then(|c| c.first()) {
                    st.first_choice = Some(t);
                    st.first = Some(t);
                    st.last = t;
                    // No streaming: estimate tokens from characters if usage is missing.
                    st.text_chunks = (choice.text_len() as u32).div_ceil(4);
                    if let Some(u) = c.usage {
                        st.usage_prompt = u.prompt_tokens;
                        st.usage_completion = u.completion_tokens;
                        st.usage_cached = u.prompt_tokens_details.and_then(|d| d.cached_tokens);
                    }
                    None
                } else {
                    Some(Status::error("no_content", "the response has no choices"))
                }
            }
        };
        self.fill(&mut rec, &st, t, failure);
        rec
    }

    fn fill(&self, rec: &mut RequestRecord, st: &StreamState, end: f64, failure: Option<Status>) {
        if let Some(p) = st.usage_prompt {
            rec.input_tokens = p.min(u64::from(u32::MAX)) as u32;
        }
        if let Some(c) = st.usage_cached {
            rec.cached_tokens = (c.min(u64::from(u32::MAX)) as u32).min(rec.input_tokens);
            if failure.is_none() {
                self.cached_reported
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        }
        let first = st.first.or(st.first_choice);
        rec.first_token = first;
        match failure {
            Some(status) => {
                rec.status = status;
                rec.finish = end;
                rec.output_tokens = st.text_chunks;
                rec.output_tokens_estimated = true;
                rec.gaps = st.gaps.clone();
            }
            None => {
                rec.status = Status::Ok;
                // The last token, not the trailing usage chunk or [DONE].
                rec.finish = if st.first.is_some() {
                    st.last
                } else {
                    first.unwrap_or(end)
                };
                rec.gaps = st.gaps.clone();
                match st.usage_completion {
                    Some(n) => {
                        rec.output_tokens = n.min(u64::from(u32::MAX)) as u32;
                        rec.output_tokens_estimated = false;
                    }
                    None => {
                        rec.output_tokens = st.text_chunks.max(1);
                        rec.output_tokens_estimated = true;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::prompt::Block;

    fn req(content: Content) -> Request {
        Request {
            id: 0,
            at: None,
            input_len: 3,
            output_len: 7,
            content,
        }
    }

    #[test]
    fn durations_from_user_seconds_never_panic() {
        assert_eq!(secs_to_duration(1.5), Duration::from_millis(1500));
        assert_eq!(secs_to_duration(-3.0), Duration::ZERO);
        assert_eq!(secs_to_duration(f64::NAN), Duration::ZERO);
        assert_eq!(secs_to_duration(1e300), FAR_FUTURE);
        assert_eq!(secs_to_duration(f64::INFINITY), FAR_FUTURE);
        let c = Clock::new();
        assert!(c.instant(1e300) > c.instant(1.0));
    }

    #[test]
    fn bodies_are_valid_json_with_extra_merged() {
        let r = Renderer::new(0, 32000);
        let extra: serde_json::Map<String, serde_json::Value> =
            serde_json::from_str(r#"{"ignore_eos":true,"stream":false}"#).unwrap();
        let b = BodyBuilder::new(
            Endpoint::Completions,
            PromptMode::Tokens,
            r.clone(),
            "m",
            true,
            Some(&extra),
        );
        let body = b.build(&req(Content::Blocks(vec![Block { key: 1, len: 3 }])));
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["prompt"].as_array().unwrap().len(), 3);
        assert_eq!(v["max_tokens"], 7);
        assert_eq!(v["model"], "m");
        assert_eq!(v["ignore_eos"], true);
        assert_eq!(v["stream"], false); // --extra wins
        assert_eq!(v["stream_options"]["include_usage"], true);

        let extra: serde_json::Map<String, serde_json::Value> =
            serde_json::from_str(r#"{"max_completion_tokens":5}"#).unwrap();
        let c = BodyBuilder::new(
            Endpoint::Chat,
            PromptMode::Text,
            r,
            "m",
            false,
            Some(&extra),
        );
        let body = c.build(&req(Content::Text("say \"hi\"\n".into())));
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["messages"][0]["content"], "say \"hi\"\n");
        assert!(v.get("max_tokens").is_none());
        assert_eq!(v["max_completion_tokens"], 5);
        assert!(v.get("stream_options").is_none());
    }

    #[test]
    fn stream_state_counts_text_chunks_and_usage() {
        let mut st = StreamState::default();
        assert!(st.on_data(
            r#"{"choices":[{"delta":{"role":"assistant","content":""}}]}"#,
            1.0
        ));
        assert!(st.on_data(r#"{"choices":[{"delta":{"content":"Hel"}}]}"#, 1.5));
        assert!(st.on_data(
            r#"{"choices":[{"delta":{"reasoning_content":"lo"}}]}"#,
            1.75
        ));
        assert!(st.on_data(
            r#"{"choices":[{"text":"!","finish_reason":"length"}]}"#,
            2.0
        ));
        assert!(st.on_data(r#"{"choices":[{"delta":{},"finish_reason":"stop"}]}"#, 2.2));
        assert!(st.on_data(
            r#"{"choices":[],"usage":{"prompt_tokens":9,"completion_tokens":4,"prompt_tokens_details":{"cached_tokens":8}}}"#,
            2.3
        ));
        assert!(st.on_data("[DONE]", 2.4));
        assert_eq!(st.first_choice, Some(1.0));
        assert_eq!(st.first, Some(1.5));
        assert_eq!(st.last, 2.0);
        assert_eq!(st.gaps.iter().collect::<Vec<_>>(), vec![0.25, 0.25]);
        assert_eq!(st.text_chunks, 3);
        assert_eq!(
            (st.usage_prompt, st.usage_completion, st.usage_cached),
            (Some(9), Some(4), Some(8))
        );
        assert!(st.done);
        let mut bad = StreamState::default();
        assert!(!bad.on_data("{nope", 1.0));
        assert!(
            matches!(&bad.failure, Some(Status::Error { kind, .. }) if kind == "malformed_sse")
        );
        let mut err = StreamState::default();
        assert!(!err.on_data(r#"{"error":{"message":"boom"}}"#, 1.0));
        assert!(matches!(&err.failure, Some(Status::Error { kind, .. }) if kind == "stream_error"));
    }
}
