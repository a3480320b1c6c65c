//! Prefill/decode disaggregation on the wire: the request fields of vLLM's and SGLang's
//! protocols, and the small HTTP side channel simulated workers use to "pull" KV.
//!
//! vLLM (NIXL connector): the router sends the prompt to a prefill worker with
//! `kv_transfer_params: {"do_remote_decode": true, ...}` and `max_tokens: 1`; the response
//! carries `kv_transfer_params: {"do_remote_prefill": true, "remote_host", "remote_port",
//! "remote_request_id", "remote_engine_id", "remote_block_ids", "tp_size"}`, which the router
//! adds to the original request for the decode worker.
//!
//! SGLang: the router sends the same request to both workers at once with `bootstrap_host`,
//! `bootstrap_port` (the prefill side) and a random `bootstrap_room`.
//!
//! Simulated workers implement both. A decode worker pulls from the prefill worker named in
//! the parameters: `POST {prefill}/kv_transfer/pull` answers once the prefill holds the KV
//! (at once for vLLM; SGLang's decode request may arrive first, so it waits), with the prompt
//! length and the prefill's link bandwidth; the decode worker then spends the network model's
//! transfer time and calls `POST {prefill}/kv_transfer/release`, which frees the blocks
//! (or they are freed after the hold timeout).

use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use crate::openai::ApiError;

/// Side-channel paths on simulated workers.
pub const PULL_PATH: &str = "/kv_transfer/pull";
pub const RELEASE_PATH: &str = "/kv_transfer/release";

/// The P/D fields of a request, as given (their meaning depends on the worker's role).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct DisaggFields {
    /// `kv_transfer_params` (vLLM).
    pub kv_transfer_params: Option<Map<String, Value>>,
    /// `bootstrap_host` / `bootstrap_port` / `bootstrap_room` (SGLang).
    pub bootstrap: Option<Bootstrap>,
    /// The first of [`ROUTER_FIELDS`] present in the request, if any.
    pub present: Option<&'static str>,
}

/// Fields only a router may set: they name where a decode worker fetches KV from, so a
/// client that could set them would aim the fleet at any host (SSRF) and, with failing
/// transfers, trip the workers' circuit breakers. `serve` rejects them from clients.
pub const ROUTER_FIELDS: [&str; 4] = [
    "kv_transfer_params",
    "bootstrap_host",
    "bootstrap_port",
    "bootstrap_room",
];

/// SGLang's bootstrap fields.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Bootstrap {
    pub host: Option<String>,
    pub port: Option<u16>,
    pub room: u64,
}

/// Read the P/D fields of a request object.
pub fn parse_fields(obj: &Map<String, Value>) -> Result<DisaggFields, ApiError> {
    let kv_transfer_params = match obj.get("kv_transfer_params") {
        None | Some(Value::Null) => None,
        Some(Value::Object(m)) => Some(m.clone()),
        Some(_) => {
            return Err(ApiError::unprocessable(
                "kv_transfer_params",
                "`kv_transfer_params` must be an object",
            ));
        }
    };
    let bootstrap = match obj.get("bootstrap_room") {
        None | Some(Value::Null) => None,
        Some(room) => {
            let room = room.as_u64().ok_or_else(|| {
                ApiError::unprocessable(
                    "bootstrap_room",
                    "`bootstrap_room` must be a non-negative integer",
                )
            })?;
            let host = match obj.get("bootstrap_host") {
                None | Some(Value::Null) => None,
                Some(Value::String(s)) => Some(s.clone()),
                Some(_) => {
                    return Err(ApiError::unprocessable(
                        "bootstrap_host",
                        "`bootstrap_host` must be a string",
                    ));
                }
            };
            let port = match obj.get("bootstrap_port") {
                None | Some(Value::Null) => None,
                Some(p) => Some(p.as_u64().and_then(|p| u16::try_from(p).ok()).ok_or_else(
                    || {
                        ApiError::unprocessable(
                            "bootstrap_port",
                            "`bootstrap_port` must be a port number",
                        )
                    },
                )?),
            };
            Some(Bootstrap { host, port, room })
        }
    };
    Ok(DisaggFields {
        kv_transfer_params,
        bootstrap,
        present: ROUTER_FIELDS
            .into_iter()
            .find(|k| obj.get(*k).is_some_and(|v| !v.is_null())),
    })
}

/// A decode worker's KV source: the prefill worker's side channel and the transfer's key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RemoteKv {
    /// `http://host:port` of the prefill worker.
    pub base_url: String,
    /// vLLM: `remote_request_id`; SGLang: `room:{bootstrap_room}`.
    pub key: String,
}

impl RemoteKv {
    /// The KV source named by a decode request, if any: vLLM's `kv_transfer_params` with
    /// `do_remote_prefill`, or SGLang's bootstrap fields.
    pub fn from_fields(f: &DisaggFields) -> Result<Option<RemoteKv>, ApiError> {
        if let Some(p) = &f.kv_transfer_params
            && p.get("do_remote_prefill").and_then(Value::as_bool) == Some(true)
        {
            let field = |k: &'static str| {
                p.get(k).filter(|v| !v.is_null()).ok_or_else(|| {
                    ApiError::bad(format!(
                        "kv_transfer_params.do_remote_prefill is set but `{k}` is missing"
                    ))
                    .with_param("kv_transfer_params")
                })
            };
            let host = field("remote_host")?.as_str().map(String::from);
            let port = field("remote_port")?.as_u64();
            let id = field("remote_request_id")?.as_str().map(String::from);
            let (Some(host), Some(port), Some(id)) = (host, port, id) else {
                return Err(ApiError::bad(
                    "kv_transfer_params: remote_host and remote_request_id must be strings, remote_port a number",
                )
                .with_param("kv_transfer_params"));
            };
            return Ok(Some(RemoteKv {
                base_url: format!("http://{}:{port}", bracket(&host)),
                key: id,
            }));
        }
        if let Some(b) = &f.bootstrap {
            let (Some(host), Some(port)) = (&b.host, b.port) else {
                return Err(ApiError::bad(
                    "bootstrap_room needs bootstrap_host and bootstrap_port on a decode worker",
                )
                .with_param("bootstrap_host"));
            };
            return Ok(Some(RemoteKv {
                base_url: format!("http://{}:{port}", bracket(host)),
                key: room_key(b.room),
            }));
        }
        Ok(None)
    }
}

fn bracket(host: &str) -> String {
    if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]")
    } else {
        host.to_string()
    }
}

/// The transfer key of an SGLang bootstrap room.
pub fn room_key(room: u64) -> String {
    format!("room:{room}")
}

/// What a prefill worker reports when the KV is ready to pull.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PullInfo {
    /// Prompt length the KV covers.
    pub prompt_tokens: u32,
    /// Usable bytes/s of the prefill worker's link (NICs × efficiency).
    pub link_bytes_per_s: f64,
    /// The prefill engine's id (one network link per engine).
    pub engine_id: String,
}

#[derive(Serialize, Deserialize)]
pub(crate) struct KeyBody {
    pub key: String,
}

/// Ask the prefill worker for the KV of `remote` (waits while it is being computed).
pub async fn pull(
    client: &reqwest::Client,
    remote: &RemoteKv,
    wait: Duration,
) -> Result<PullInfo, String> {
    let url = format!("{}{PULL_PATH}", remote.base_url);
    let r = client
        .post(&url)
        .timeout(wait + Duration::from_secs(2))
        .json(&KeyBody {
            key: remote.key.clone(),
        })
        .send()
        .await
        .map_err(|e| format!("KV pull from {}: {e}", remote.base_url))?;
    let status = r.status();
    if !status.is_success() {
        let body: Value = r.json().await.unwrap_or(Value::Null);
        let msg = body["error"]["message"].as_str().unwrap_or("").to_string();
        return Err(format!(
            "KV pull from {} for {:?}: {status} {msg}",
            remote.base_url, remote.key
        ));
    }
    r.json::<PullInfo>()
        .await
        .map_err(|e| format!("KV pull from {}: bad answer: {e}", remote.base_url))
}

/// Tell the prefill worker its KV for `remote` is no longer needed.
pub async fn release(client: &reqwest::Client, remote: &RemoteKv) -> Result<(), String> {
    let url = format!("{}{RELEASE_PATH}", remote.base_url);
    let r = client
        .post(&url)
        .timeout(Duration::from_secs(5))
        .json(&KeyBody {
            key: remote.key.clone(),
        })
        .send()
        .await
        .map_err(|e| format!("KV release at {}: {e}", remote.base_url))?;
    if r.status().is_success() || r.status() == reqwest::StatusCode::NOT_FOUND {
        Ok(())
    } else {
        Err(format!("KV release at {}: {}", remote.base_url, r.status()))
    }
}

/// The `kv_transfer_params` a simulated prefill worker returns (vLLM NIXL layout).
pub fn prefill_response_params(
    host: &str,
    port: u16,
    key: &str,
    engine_id: &str,
    block_ids: &[u64],
    tp: u32,
) -> Value {
    json!({
        "do_remote_prefill": true,
        "do_remote_decode": false,
        "remote_host": host,
        "remote_port": port,
        "remote_request_id": key,
        "remote_engine_id": engine_id,
        "remote_block_ids": block_ids,
        "tp_size": tp,
    })
}

/// The `kv_transfer_params` a router sends with the prefill request (vLLM).
pub fn prefill_request_params() -> Value {
    json!({
        "do_remote_decode": true,
        "do_remote_prefill": false,
        "remote_engine_id": null,
        "remote_block_ids": null,
        "remote_host": null,
        "remote_port": null,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obj(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap()
    }

    #[test]
    fn vllm_params_name_the_source() {
        let f = parse_fields(&obj(json!({"kv_transfer_params": prefill_response_params(
            "127.0.0.1", 8100, "k-1", "e", &[1, 2], 2)})))
        .unwrap();
        let r = RemoteKv::from_fields(&f).unwrap().unwrap();
        assert_eq!(r.base_url, "http://127.0.0.1:8100");
        assert_eq!(r.key, "k-1");
        // The router's prefill-side params name no source.
        let f = parse_fields(&obj(
            json!({"kv_transfer_params": prefill_request_params()}),
        ))
        .unwrap();
        assert_eq!(RemoteKv::from_fields(&f).unwrap(), None);
        // Missing fields are a clear 400.
        let f = parse_fields(&obj(
            json!({"kv_transfer_params": {"do_remote_prefill": true}}),
        ))
        .unwrap();
        let e = RemoteKv::from_fields(&f).unwrap_err();
        assert!(e.message.contains("remote_host"), "{}", e.message);
    }

    #[test]
    fn sglang_bootstrap_fields() {
        let f = parse_fields(&obj(
            json!({"bootstrap_host": "::1", "bootstrap_port": 8998, "bootstrap_room": 7}),
        ))
        .unwrap();
        let r = RemoteKv::from_fields(&f).unwrap().unwrap();
        assert_eq!(r.base_url, "http://[::1]:8998");
        assert_eq!(r.key, "room:7");
        assert!(parse_fields(&obj(json!({"bootstrap_room": -1}))).is_err());
        assert!(parse_fields(&obj(json!({"bootstrap_room": 1, "bootstrap_port": 70000}))).is_err());
        assert!(parse_fields(&obj(json!({"kv_transfer_params": 3}))).is_err());
        let f = parse_fields(&obj(json!({"bootstrap_room": 1}))).unwrap();
        assert!(RemoteKv::from_fields(&f).is_err());
    }
}
