//! The worker record stored in etcd: what a frontend needs to route to a worker.

use serde::{Deserialize, Serialize};

use crate::ClusterError;

/// The serving role of a worker (same names as `switchyard serve --worker ...,role=`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    #[default]
    Aggregated,
    Prefill,
    Decode,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Aggregated => "aggregated",
            Role::Prefill => "prefill",
            Role::Decode => "decode",
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "aggregated" | "agg" => Ok(Role::Aggregated),
            "prefill" => Ok(Role::Prefill),
            "decode" => Ok(Role::Decode),
            _ => Err(format!(
                "unknown role {s:?} (aggregated, prefill or decode)"
            )),
        }
    }
}

/// One worker as registered in etcd, stored as JSON at `<prefix><id>`.
///
/// The record is stable for the life of a worker process: re-registering after an etcd outage
/// writes the same bytes, so watchers see no change. A restarted worker gets a new
/// `started_at_ms`, which watchers see as an `Upsert` with a changed record (a hint that its KV
/// cache and event stream started over).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WorkerRecord {
    /// Fleet-unique id; also the last segment of the etcd key. `[A-Za-z0-9._-]`, at most 200.
    pub id: String,
    /// Base URL of the OpenAI-compatible server, e.g. `http://10.0.0.7:8000` (no trailing `/`).
    pub url: String,
    #[serde(default)]
    pub role: Role,
    /// vLLM-format KV events publisher (ZMQ), e.g. `tcp://10.0.0.7:5557`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kv_events: Option<String>,
    /// vLLM-format KV-event replay socket (ZMQ ROUTER), e.g. `tcp://10.0.0.7:5558`: lets a
    /// frontend fetch events it missed or, after a restart, rebuild its index.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kv_events_replay: Option<String>,
    /// Served model name, if known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// Data-parallel ranks behind this URL (KV events carry the rank); 1 for most engines.
    #[serde(default = "one")]
    pub dp_size: u32,
    /// When this worker process registered first (Unix milliseconds): its incarnation.
    /// An integer so the JSON round trip is exact.
    #[serde(default)]
    pub started_at_ms: u64,
}

fn one() -> u32 {
    1
}

impl WorkerRecord {
    /// A record with defaults for the optional fields; `id` derived from the URL.
    pub fn new(url: &str, role: Role) -> Self {
        let url = url.trim_end_matches('/').to_string();
        WorkerRecord {
            id: id_from_url(&url),
            url,
            role,
            kv_events: None,
            kv_events_replay: None,
            model: None,
            dp_size: 1,
            started_at_ms: (crate::unix_now() * 1000.0) as u64,
        }
    }

    /// Check what a frontend relies on (used both before writing and after reading).
    pub fn validate(&self) -> Result<(), ClusterError> {
        if !valid_id(&self.id) {
            return Err(ClusterError::BadRecord(format!(
                "id {:?} must be 1-200 characters of [A-Za-z0-9._-]",
                self.id
            )));
        }
        if !(self.url.starts_with("http://") || self.url.starts_with("https://"))
            || self.url.len() <= "http://".len()
        {
            return Err(ClusterError::BadRecord(format!(
                "url {:?} must start with http:// or https://",
                self.url
            )));
        }
        let host = self
            .url
            .split_once("://")
            .map(|(_, r)| r.split('/').next().unwrap_or(""))
            .unwrap_or("");
        if host.starts_with("0.0.0.0") || host.starts_with("[::]") {
            return Err(ClusterError::BadRecord(format!(
                "url {:?} names a wildcard address; advertise one other hosts can reach",
                self.url
            )));
        }
        for (name, ep) in [
            ("kv_events", &self.kv_events),
            ("kv_events_replay", &self.kv_events_replay),
        ] {
            if let Some(ep) = ep
                && !ep.starts_with("tcp://")
            {
                return Err(ClusterError::BadRecord(format!(
                    "{name} {ep:?} must be tcp://HOST:PORT"
                )));
            }
        }
        if self.kv_events_replay.is_some() && self.kv_events.is_none() {
            return Err(ClusterError::BadRecord(
                "kv_events_replay without kv_events: replay recovers a stream that is not subscribed".into(),
            ));
        }
        if self.dp_size == 0 || self.dp_size > 1024 {
            return Err(ClusterError::BadRecord(format!(
                "dp_size {} out of range 1..=1024",
                self.dp_size
            )));
        }
        Ok(())
    }

    /// The record as `switchyard serve --worker` spells it:
    /// `URL[,kv-events=tcp://...],role=...`, so a frontend can reuse its worker-spec parser.
    pub fn worker_spec(&self) -> String {
        let mut s = self.url.clone();
        if let Some(ep) = &self.kv_events {
            s.push_str(",kv-events=");
            s.push_str(ep);
        }
        if let Some(ep) = &self.kv_events_replay {
            s.push_str(",replay=");
            s.push_str(ep);
        }
        s.push_str(",role=");
        s.push_str(self.role.as_str());
        s
    }

    pub fn to_json(&self) -> Vec<u8> {
        // A struct of strings and numbers always serializes.
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Parse and validate a stored value; `key_id` (the key's last segment) wins over a
    /// mismatching `id` field, because the key is what a lease deletes.
    pub fn from_json(key_id: &str, value: &[u8]) -> Result<Self, ClusterError> {
        let mut r: WorkerRecord = serde_json::from_slice(value)
            .map_err(|e| ClusterError::BadRecord(format!("{key_id}: {e}")))?;
        r.id = key_id.to_string();
        r.validate()?;
        Ok(r)
    }
}

fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 200
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// A readable, key-safe id from a URL: `http://vllm-0.vllm:8000/` -> `vllm-0.vllm-8000`.
pub fn id_from_url(url: &str) -> String {
    let rest = url
        .split_once("://")
        .map(|(_, r)| r)
        .unwrap_or(url)
        .trim_end_matches('/');
    let mut id: String = rest
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' || c == '_' {
                c
            } else {
                '-'
            }
        })
        .collect();
    id.truncate(200);
    if id.is_empty() {
        id.push_str("worker");
    }
    id
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_round_trip_and_defaults() {
        let mut r = WorkerRecord::new("http://10.0.0.7:8000/", Role::Prefill);
        r.kv_events = Some("tcp://10.0.0.7:5557".into());
        assert_eq!(r.id, "10.0.0.7-8000");
        assert_eq!(r.url, "http://10.0.0.7:8000");
        let back = WorkerRecord::from_json(&r.id, &r.to_json()).unwrap();
        assert_eq!(back, r);
        // Minimal record written by hand (e.g. `etcdctl put`): defaults fill in.
        let m = WorkerRecord::from_json("w1", br#"{"id":"x","url":"http://h:1"}"#).unwrap();
        assert_eq!(m.id, "w1");
        assert_eq!(m.role, Role::Aggregated);
        assert_eq!(m.dp_size, 1);
        assert_eq!(m.kv_events, None);
    }

    #[test]
    fn bad_records_rejected() {
        for bad in [
            &b"not json"[..],
            br#"{"id":"w","url":"ftp://h"}"#,
            br#"{"id":"w","url":"http://h","role":"boss"}"#,
            br#"{"id":"w","url":"http://h","kv_events":"udp://h:1"}"#,
            br#"{"id":"w","url":"http://h","dp_size":0}"#,
            br#"{"id":"w"}"#,
            br#"{"id":"w","url":"http://0.0.0.0:8000"}"#,
            br#"{"id":"w","url":"http://[::]:8000"}"#,
            br#"{"id":"w","url":"http://h","kv_events":"tcp://h:1","kv_events_replay":"h:2"}"#,
            br#"{"id":"w","url":"http://h","kv_events_replay":"tcp://h:2"}"#,
        ] {
            assert!(WorkerRecord::from_json("w", bad).is_err(), "{bad:?}");
        }
        assert!(WorkerRecord::from_json("a/b", br#"{"id":"w","url":"http://h"}"#).is_err());
    }

    #[test]
    fn worker_spec_matches_serve_syntax() {
        let mut r = WorkerRecord::new("http://h:8001", Role::Decode);
        assert_eq!(r.worker_spec(), "http://h:8001,role=decode");
        r.kv_events = Some("tcp://h:5557".into());
        assert_eq!(
            r.worker_spec(),
            "http://h:8001,kv-events=tcp://h:5557,role=decode"
        );
        r.kv_events_replay = Some("tcp://h:5558".into());
        assert_eq!(
            r.worker_spec(),
            "http://h:8001,kv-events=tcp://h:5557,replay=tcp://h:5558,role=decode"
        );
        // Older records (no replay field) still parse.
        let old = WorkerRecord::from_json(
            "w",
            br#"{"id":"w","url":"http://h","kv_events":"tcp://h:1"}"#,
        )
        .unwrap();
        assert_eq!(old.kv_events_replay, None);
    }

    #[test]
    fn ids_from_urls() {
        assert_eq!(id_from_url("http://vllm-0.vllm:8000/"), "vllm-0.vllm-8000");
        assert_eq!(id_from_url("http://[::1]:8000"), "---1--8000");
        assert!(valid_id(&id_from_url("http://[::1]:8000")));
        assert_eq!("prefill".parse::<Role>().unwrap(), Role::Prefill);
        assert!("boss".parse::<Role>().is_err());
    }
}
