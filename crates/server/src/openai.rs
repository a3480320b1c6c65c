//! OpenAI-compatible request parsing and error bodies, shared by `worker` and `serve`.
//!
//! Status codes: malformed JSON and invalid values (non-positive or huge `max_tokens`, `n != 1`,
//! empty prompt, prompt over the context) are 400; a well-formed body with a missing field or a
//! field of the wrong type is 422; an unknown model or path is 404; an oversized body is 413; no
//! healthy upstream is 503. Bodies are `{"error": {"message", "type", "param", "code"}}`.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

/// An OpenAI-style error response.
#[derive(Clone, Debug, PartialEq)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    pub param: Option<&'static str>,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
            param: None,
        }
    }
    pub fn bad(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }
    pub fn unprocessable(param: &'static str, message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::UNPROCESSABLE_ENTITY,
            message: message.into(),
            param: Some(param),
        }
    }
    pub fn with_param(mut self, param: &'static str) -> Self {
        self.param = Some(param);
        self
    }
    fn kind(&self) -> &'static str {
        match self.status.as_u16() {
            404 => "not_found_error",
            413 => "request_too_large",
            429 => "rate_limit_error",
            500..=599 => "server_error",
            _ => "invalid_request_error",
        }
    }
    /// The JSON body.
    pub fn body(&self) -> Value {
        json!({"error": {
            "message": self.message,
            "type": self.kind(),
            "param": self.param,
            "code": self.status.as_u16(),
        }})
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, axum::Json(self.body())).into_response()
    }
}

/// Read a request body of at most `limit` bytes (413 with an OpenAI error body beyond).
pub async fn read_body(
    body: axum::body::Body,
    limit: usize,
) -> Result<axum::body::Bytes, ApiError> {
    axum::body::to_bytes(body, limit).await.map_err(|_| {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("request body is larger than the limit of {limit} bytes (or was cut off)"),
        )
    })
}

/// Which endpoint a body was posted to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Endpoint {
    Completions,
    Chat,
}

impl Endpoint {
    pub fn path(self) -> &'static str {
        match self {
            Endpoint::Completions => "/v1/completions",
            Endpoint::Chat => "/v1/chat/completions",
        }
    }
}

/// The prompt as given.
#[derive(Clone, Debug, PartialEq)]
pub enum Prompt {
    Tokens(Vec<u32>),
    Text(String),
    /// Chat messages: (role, text content).
    Chat(Vec<(String, String)>),
}

/// The fields both services act on (everything else is passed through or ignored).
#[derive(Clone, Debug, PartialEq)]
pub struct ParsedRequest {
    pub model: String,
    pub prompt: Prompt,
    pub max_tokens: Option<u32>,
    pub stream: bool,
    pub include_usage: bool,
    /// Prefill/decode disaggregation fields (vLLM `kv_transfer_params`, SGLang bootstrap).
    pub disagg: crate::pd::DisaggFields,
    /// The first field set that changes what is generated and that the simulated worker
    /// cannot honour ([`GENERATION_FEATURES`]); `serve` passes them on to real engines.
    pub unsupported: Option<&'static str>,
}

/// OpenAI/vLLM request fields that shape the output (tools, structured output, log
/// probabilities, echo, best-of, guided decoding). The simulated worker rejects a request
/// that sets one (`false`, `null`, `1` for `best_of` and empty lists count as unset), as vLLM
/// rejects what it cannot honour, instead of silently ignoring it.
pub const GENERATION_FEATURES: [&str; 15] = [
    "tools",
    "tool_choice",
    "functions",
    "function_call",
    "response_format",
    "logprobs",
    "top_logprobs",
    "echo",
    "best_of",
    "suffix",
    "guided_json",
    "guided_regex",
    "guided_choice",
    "guided_grammar",
    "structured_outputs",
];

/// `max_tokens` above this is rejected outright (no context is this long).
pub const MAX_TOKENS_LIMIT: u64 = 1 << 24;

/// Parse and validate a request body.
pub fn parse_request(body: &[u8], ep: Endpoint) -> Result<ParsedRequest, ApiError> {
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad(format!("invalid JSON body: {e}")))?;
    let Some(obj) = v.as_object() else {
        return Err(ApiError::unprocessable(
            "body",
            "request body must be a JSON object",
        ));
    };
    let model = match obj.get("model") {
        Some(Value::String(s)) if !s.is_empty() => s.clone(),
        None | Some(Value::Null) => {
            return Err(ApiError::unprocessable(
                "model",
                "missing required field `model`",
            ));
        }
        Some(_) => {
            return Err(ApiError::unprocessable(
                "model",
                "`model` must be a non-empty string",
            ));
        }
    };
    let prompt = match ep {
        Endpoint::Completions => parse_prompt(obj.get("prompt"))?,
        Endpoint::Chat => parse_messages(obj.get("messages"))?,
    };
    let mut max_tokens = None;
    for key in ["max_tokens", "max_completion_tokens"] {
        match obj.get(key) {
            None | Some(Value::Null) => {}
            Some(Value::Number(n)) => {
                let param = if key == "max_tokens" {
                    "max_tokens"
                } else {
                    "max_completion_tokens"
                };
                let Some(i) = n.as_i64().or_else(|| n.as_u64().map(|_| i64::MAX)) else {
                    return Err(ApiError::unprocessable(
                        param,
                        format!("`{key}` must be an integer"),
                    ));
                };
                if i < 1 {
                    return Err(
                        ApiError::bad(format!("`{key}` must be at least 1, got {i}"))
                            .with_param(param),
                    );
                }
                if i as u64 > MAX_TOKENS_LIMIT {
                    return Err(ApiError::bad(format!(
                        "`{key}` = {i} is larger than any supported context ({MAX_TOKENS_LIMIT})"
                    ))
                    .with_param(param));
                }
                max_tokens = Some(i as u32);
            }
            Some(_) => {
                return Err(ApiError::unprocessable(
                    "max_tokens",
                    format!("`{key}` must be an integer"),
                ));
            }
        }
    }
    match obj.get("n") {
        None | Some(Value::Null) => {}
        Some(Value::Number(n)) if n.as_u64() == Some(1) => {}
        Some(Value::Number(_)) => {
            return Err(ApiError::bad("only `n` = 1 is supported").with_param("n"));
        }
        Some(_) => return Err(ApiError::unprocessable("n", "`n` must be an integer")),
    }
    let stream = match obj.get("stream") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => {
            return Err(ApiError::unprocessable(
                "stream",
                "`stream` must be a boolean",
            ));
        }
    };
    let include_usage = match obj.get("stream_options") {
        None | Some(Value::Null) => false,
        Some(Value::Object(o)) => match o.get("include_usage") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => *b,
            Some(_) => {
                return Err(ApiError::unprocessable(
                    "stream_options",
                    "`stream_options.include_usage` must be a boolean",
                ));
            }
        },
        Some(_) => {
            return Err(ApiError::unprocessable(
                "stream_options",
                "`stream_options` must be an object",
            ));
        }
    };
    if include_usage && !stream {
        return Err(
            ApiError::bad("`stream_options` is only allowed when `stream` is true")
                .with_param("stream_options"),
        );
    }
    let disagg = crate::pd::parse_fields(obj)?;
    let unsupported = GENERATION_FEATURES.into_iter().find(|k| match obj.get(*k) {
        None | Some(Value::Null) | Some(Value::Bool(false)) => false,
        Some(Value::Array(a)) => !a.is_empty(),
        Some(Value::Number(n)) if *k == "best_of" => n.as_u64() != Some(1),
        Some(Value::Number(n)) if *k == "top_logprobs" => n.as_u64() != Some(0),
        Some(Value::String(s)) if *k == "tool_choice" => s != "none",
        Some(_) => true,
    });
    Ok(ParsedRequest {
        model,
        prompt,
        max_tokens,
        stream,
        include_usage,
        disagg,
        unsupported,
    })
}

fn token_array(a: &[Value]) -> Option<Vec<u32>> {
    a.iter()
        .map(|t| t.as_u64().and_then(|t| u32::try_from(t).ok()))
        .collect()
}

fn parse_prompt(p: Option<&Value>) -> Result<Prompt, ApiError> {
    let wrong = || {
        ApiError::unprocessable(
            "prompt",
            "`prompt` must be a string, an array of token ids, or a one-element array of either",
        )
    };
    let prompt = match p {
        None | Some(Value::Null) => {
            return Err(ApiError::unprocessable(
                "prompt",
                "missing required field `prompt`",
            ));
        }
        Some(Value::String(s)) => Prompt::Text(s.clone()),
        Some(Value::Array(a)) if a.is_empty() => Prompt::Tokens(vec![]),
        Some(Value::Array(a)) => match &a[0] {
            Value::Number(_) => Prompt::Tokens(token_array(a).ok_or_else(wrong)?),
            Value::String(s) if a.len() == 1 => Prompt::Text(s.clone()),
            Value::Array(inner) if a.len() == 1 => {
                Prompt::Tokens(token_array(inner).ok_or_else(wrong)?)
            }
            Value::String(_) | Value::Array(_) => {
                return Err(ApiError::bad(
                    "batched prompts are not supported; send one prompt per request",
                )
                .with_param("prompt"));
            }
            _ => return Err(wrong()),
        },
        Some(_) => return Err(wrong()),
    };
    let empty = match &prompt {
        Prompt::Tokens(t) => t.is_empty(),
        Prompt::Text(s) => s.is_empty(),
        Prompt::Chat(_) => false,
    };
    if empty {
        return Err(ApiError::bad("the prompt is empty").with_param("prompt"));
    }
    Ok(prompt)
}

fn parse_messages(m: Option<&Value>) -> Result<Prompt, ApiError> {
    let Some(m) = m.filter(|m| !m.is_null()) else {
        return Err(ApiError::unprocessable(
            "messages",
            "missing required field `messages`",
        ));
    };
    let Some(arr) = m.as_array() else {
        return Err(ApiError::unprocessable(
            "messages",
            "`messages` must be an array",
        ));
    };
    if arr.is_empty() {
        return Err(ApiError::bad("`messages` must not be empty").with_param("messages"));
    }
    let mut out = Vec::with_capacity(arr.len());
    for (i, msg) in arr.iter().enumerate() {
        let bad =
            |what: &str| ApiError::unprocessable("messages", format!("messages[{i}]: {what}"));
        let Some(o) = msg.as_object() else {
            return Err(bad("must be an object"));
        };
        let Some(role) = o.get("role").and_then(Value::as_str) else {
            return Err(bad("missing string field `role`"));
        };
        let content = match o.get("content") {
            None | Some(Value::Null) => String::new(),
            Some(Value::String(s)) => s.clone(),
            Some(Value::Array(parts)) => {
                let mut s = String::new();
                for p in parts {
                    match p.get("text").and_then(Value::as_str) {
                        Some(t) => s.push_str(t),
                        None => {
                            return Err(bad(
                                "content parts must be {\"type\": \"text\", \"text\": ...}",
                            ));
                        }
                    }
                }
                s
            }
            Some(_) => return Err(bad("`content` must be a string or an array of parts")),
        };
        out.push((role.to_string(), content));
    }
    Ok(Prompt::Chat(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(body: &str, ep: Endpoint) -> u16 {
        match parse_request(body.as_bytes(), ep) {
            Ok(_) => 200,
            Err(e) => e.status.as_u16(),
        }
    }

    #[test]
    fn statuses() {
        use Endpoint::*;
        assert_eq!(status("{", Completions), 400);
        assert_eq!(status("[1]", Completions), 422);
        assert_eq!(status(r#"{"prompt":"x"}"#, Completions), 422);
        assert_eq!(status(r#"{"model":1,"prompt":"x"}"#, Completions), 422);
        assert_eq!(status(r#"{"model":"m"}"#, Completions), 422);
        assert_eq!(status(r#"{"model":"m"}"#, Chat), 422);
        assert_eq!(status(r#"{"model":"m","messages":"hi"}"#, Chat), 422);
        assert_eq!(status(r#"{"model":"m","messages":[]}"#, Chat), 400);
        assert_eq!(status(r#"{"model":"m","prompt":""}"#, Completions), 400);
        assert_eq!(
            status(r#"{"model":"m","prompt":"x","max_tokens":-1}"#, Completions),
            400
        );
        assert_eq!(
            status(r#"{"model":"m","prompt":"x","max_tokens":0}"#, Completions),
            400
        );
        assert_eq!(
            status(
                r#"{"model":"m","prompt":"x","max_tokens":1e30}"#,
                Completions
            ),
            422
        );
        assert_eq!(
            status(
                r#"{"model":"m","prompt":"x","max_tokens":99999999999999}"#,
                Completions
            ),
            400
        );
        assert_eq!(
            status(
                r#"{"model":"m","prompt":"x","max_tokens":"5"}"#,
                Completions
            ),
            422
        );
        assert_eq!(
            status(r#"{"model":"m","prompt":"x","n":2}"#, Completions),
            400
        );
        assert_eq!(status(r#"{"model":"m","prompt":[1,-2]}"#, Completions), 422);
        assert_eq!(
            status(r#"{"model":"m","prompt":["a","b"]}"#, Completions),
            400
        );
        assert_eq!(
            status(r#"{"model":"m","prompt":"x","stream":"yes"}"#, Completions),
            422
        );
    }

    #[test]
    fn parses_fields() {
        let r = parse_request(
            br#"{"model":"m","prompt":[[1,2,3]],"max_completion_tokens":7,"stream":true,
                "stream_options":{"include_usage":true},"ignore_eos":true,"temperature":0.5}"#,
            Endpoint::Completions,
        )
        .unwrap();
        assert_eq!(r.prompt, Prompt::Tokens(vec![1, 2, 3]));
        assert_eq!(r.max_tokens, Some(7));
        assert!(r.stream && r.include_usage);
        let r = parse_request(
            br#"{"model":"m","messages":[{"role":"system","content":"be brief"},
                {"role":"user","content":[{"type":"text","text":"hi "},{"type":"text","text":"there"}]}]}"#,
            Endpoint::Chat,
        )
        .unwrap();
        assert_eq!(
            r.prompt,
            Prompt::Chat(vec![
                ("system".into(), "be brief".into()),
                ("user".into(), "hi there".into())
            ])
        );
        let e = parse_request(b"{}", Endpoint::Chat).unwrap_err();
        assert_eq!(e.body()["error"]["param"], "model");
        assert_eq!(e.body()["error"]["type"], "invalid_request_error");
    }
}
