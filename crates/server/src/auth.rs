//! Who may call what. Client API keys (`Authorization: Bearer KEY`, OpenAI's scheme) guard the
//! generation endpoints of `serve` and `worker`; the admin surface of `serve` (anything that
//! changes or reveals routing: `/v1/workers`) answers loopback clients only, or holders of an
//! admin key when one is set; `/health` and `/ready` stay open for probes. Keys are compared
//! in constant time and never printed (`Secret`'s `Debug` is redacted).

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::openai::ApiError;

/// A key given on the command line or in the environment; its `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl std::str::FromStr for Secret {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        if s.is_empty() {
            return Err("an API key must not be empty".into());
        }
        Ok(Secret(s.to_string()))
    }
}

/// Why keys could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("cannot read key file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("key file {path} holds no key (one per line; `#` starts a comment)")]
    Empty { path: String },
}

/// A set of accepted bearer keys; empty means "no key needed".
#[derive(Clone, Default)]
pub struct Keys(Arc<Vec<Box<[u8]>>>);

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Keys({} key(s))", self.0.len())
    }
}

impl Keys {
    /// Keys from flags/environment plus, optionally, a file with one key per line.
    pub fn load(given: &[Secret], file: Option<&Path>) -> Result<Self, AuthError> {
        let mut keys: Vec<Box<[u8]>> = given
            .iter()
            .map(|s| s.0.as_bytes().to_vec().into_boxed_slice())
            .collect();
        if let Some(p) = file {
            let text = std::fs::read_to_string(p).map_err(|source| AuthError::Read {
                path: p.display().to_string(),
                source,
            })?;
            let before = keys.len();
            keys.extend(
                text.lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty() && !l.starts_with('#'))
                    .map(|l| l.as_bytes().to_vec().into_boxed_slice()),
            );
            if keys.len() == before {
                return Err(AuthError::Empty {
                    path: p.display().to_string(),
                });
            }
        }
        Ok(Keys(Arc::new(keys)))
    }

    /// The first key: what a worker sends to its peers' side channel.
    pub fn first(&self) -> Option<Secret> {
        self.0
            .first()
            .map(|k| Secret(String::from_utf8_lossy(k).into_owned()))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The request carries one of the keys as `Authorization: Bearer KEY`.
    pub fn admits(&self, headers: &HeaderMap) -> bool {
        self.which(headers).is_some()
    }

    /// Which key the request carries (its index), if any. Every key is compared (no early
    /// exit), each in constant time.
    pub fn which(&self, headers: &HeaderMap) -> Option<usize> {
        let given = bearer(headers)?;
        self.0.iter().enumerate().fold(
            None,
            |found, (i, k)| {
                if ct_eq(k, given) { Some(i) } else { found }
            },
        )
    }
}

fn bearer(headers: &HeaderMap) -> Option<&[u8]> {
    let v = headers.get(header::AUTHORIZATION)?.as_bytes();
    let (scheme, rest) = v.split_at(v.len().min(7));
    scheme
        .eq_ignore_ascii_case(b"bearer ")
        .then(|| rest.trim_ascii())
}

/// Equality whose time depends only on the lengths, not on where the bytes differ.
fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    let n = a.len().max(b.len());
    let mut diff = (a.len() ^ b.len()) as u64;
    for i in 0..n {
        let x = a.get(i).copied().unwrap_or(0);
        let y = b.get(i).copied().unwrap_or(0);
        diff |= u64::from(x ^ y);
    }
    std::hint::black_box(diff) == 0
}

/// The `Authorization` header value for calls to upstream workers, if a key is set.
pub fn upstream_header(key: Option<&Secret>) -> Option<HeaderMap> {
    let key = key?;
    let mut h = HeaderMap::new();
    let mut v = HeaderValue::from_str(&format!("Bearer {}", key.0)).ok()?;
    v.set_sensitive(true);
    h.insert(header::AUTHORIZATION, v);
    Some(h)
}

fn unauthorized() -> Response {
    let mut r = ApiError::new(
        StatusCode::UNAUTHORIZED,
        "Incorrect or missing API key: send `Authorization: Bearer KEY` with a key this server accepts.",
    )
    .into_response();
    r.headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    r
}

/// Which client key a request was admitted with (its index in the key list); set by
/// [`require_key`], read by per-key rate limits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct KeyId(pub usize);

/// Middleware: a client key is required (when any is configured).
pub async fn require_key(State(keys): State<Keys>, mut req: Request, next: Next) -> Response {
    if keys.is_empty() {
        return next.run(req).await;
    }
    match keys.which(req.headers()) {
        Some(i) => {
            req.extensions_mut().insert(KeyId(i));
            next.run(req).await
        }
        None => unauthorized(),
    }
}

/// Middleware for the admin surface: with admin keys, a key is required from anywhere;
/// without, only loopback clients are served. A POST must be `application/json`, so a web
/// page cannot send one cross-site without a CORS preflight (which is never granted).
pub async fn admin_only(State(keys): State<Keys>, req: Request, next: Next) -> Response {
    let peer = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip());
    if keys.is_empty() {
        if !peer.is_some_and(|ip| ip.is_loopback()) {
            return ApiError::new(
                StatusCode::FORBIDDEN,
                "the admin API (/v1/workers) answers loopback clients only; start serve with \
                 --admin-key to use it from elsewhere",
            )
            .into_response();
        }
    } else if !keys.admits(req.headers()) {
        return unauthorized();
    }
    if req.method() == Method::POST {
        let json = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/json"));
        if !json {
            return ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "the admin API takes `content-type: application/json`",
            )
            .into_response();
        }
    }
    next.run(req).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, HeaderValue::from_str(v).unwrap());
        h
    }

    #[test]
    fn bearer_keys_are_matched_exactly() {
        let k = Keys::load(
            &["sk-one".parse().unwrap(), "sk-two".parse().unwrap()],
            None,
        )
        .unwrap();
        assert!(k.admits(&headers("Bearer sk-one")));
        assert!(k.admits(&headers("bearer sk-two")));
        assert!(!k.admits(&headers("Bearer sk-on")));
        assert!(!k.admits(&headers("Bearer sk-one1")));
        assert!(!k.admits(&headers("Basic sk-one")));
        assert!(!k.admits(&HeaderMap::new()));
        assert!(ct_eq(b"", b""));
        assert!(!ct_eq(b"a", b""));
    }

    #[test]
    fn key_files_and_redaction() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("keys");
        std::fs::write(&p, "# team A\nsk-a\n\n  sk-b  \n").unwrap();
        let k = Keys::load(&[], Some(&p)).unwrap();
        assert!(k.admits(&headers("Bearer sk-b")));
        assert_eq!(format!("{k:?}"), "Keys(2 key(s))");
        std::fs::write(&p, "# nothing\n").unwrap();
        assert!(Keys::load(&[], Some(&p)).is_err());
        let s: Secret = "sk-secret".parse().unwrap();
        assert!(!format!("{s:?}").contains("sk-secret"));
        assert!("  ".parse::<Secret>().is_err());
    }
}
