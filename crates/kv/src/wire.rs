//! vLLM's KV-event wire format: pure msgpack encode/decode of `KVEventBatch` payloads (no
//! sockets; the transport lives in the server crate).
//!
//! A ZMQ PUB message is `[topic, seq (u64 big-endian), payload]`; the payload is one batch.
//! vLLM has used two msgpack encodings of the same structs, and consumers meet both:
//!
//! * **positional** (msgspec `array_like`, vLLM until #42892): the batch is
//!   `[ts, [event, ...], data_parallel_rank]`, each event `["BlockStored", block_hashes,
//!   parent_block_hash, token_ids, block_size, lora_id, medium, ...]`,
//!   `["BlockRemoved", block_hashes, medium, ...]` or `["AllBlocksCleared"]`. Trailing fields
//!   equal to their defaults may be omitted (`omit_defaults`).
//! * **tagged map** (newer vLLM, SGLang #37482): `{"ts": .., "events": [..],
//!   "data_parallel_rank": ..}`, events `{"type": "BlockStored", "block_hashes": [..], ...}`.
//!
//! Decoding accepts either at each level, reads maps by field name, ignores unknown fields and
//! extra trailing positional fields, and reads hashes as signed or unsigned 64-bit integers
//! (values above `i64::MAX` arrive as msgpack uint64; negative ones are bit-cast) or as bytes
//! (low 64 bits, big-endian). Unknown event types are skipped and counted, never fatal.

use std::fmt;

use rmpv::Value;

/// One event of a batch, in the engine's own hash space.
#[derive(Clone, Debug, PartialEq)]
pub enum WireEvent {
    /// `BlockStored`: `block_hashes[i]` covers `token_ids[i*block_size..(i+1)*block_size]`.
    BlockStored {
        block_hashes: Vec<u64>,
        parent_block_hash: Option<u64>,
        token_ids: Vec<u32>,
        block_size: u32,
        lora_id: Option<i64>,
        /// `"GPU"` or an offload tier (`"CPU"`, ...); `None` when absent.
        medium: Option<String>,
    },
    /// `BlockRemoved`.
    BlockRemoved {
        block_hashes: Vec<u64>,
        medium: Option<String>,
    },
    /// `AllBlocksCleared`.
    AllBlocksCleared,
}

/// A `KVEventBatch`.
#[derive(Clone, Debug, PartialEq)]
pub struct WireBatch {
    /// Publisher wall-clock time, seconds since the Unix epoch.
    pub ts: f64,
    pub events: Vec<WireEvent>,
    /// `data_parallel_rank` (`None` when absent/nil).
    pub dp_rank: Option<u32>,
}

/// Decoded batch plus what was skipped.
#[derive(Clone, Debug, PartialEq)]
pub struct Decoded {
    pub batch: WireBatch,
    /// Events of an unknown type (skipped).
    pub unknown_events: u32,
}

/// Which msgpack encoding to emit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum WireEncoding {
    /// msgspec `array_like` structs (older vLLM; what most deployed consumers expect). Default.
    #[default]
    Positional,
    /// Tagged maps (`{"type": "BlockStored", ...}`), newer vLLM and SGLang.
    Map,
}

/// A payload that is not a `KVEventBatch` in either encoding.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WireError(pub String);

impl fmt::Display for WireError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "bad KV event payload: {}", self.0)
    }
}

impl std::error::Error for WireError {}

fn err<T>(msg: impl Into<String>) -> Result<T, WireError> {
    Err(WireError(msg.into()))
}

// ----- encoding -----------------------------------------------------------------------------

fn hashes(v: &[u64]) -> Value {
    Value::Array(v.iter().map(|&h| Value::from(h)).collect())
}

fn opt_u64(v: Option<u64>) -> Value {
    v.map_or(Value::Nil, Value::from)
}

fn opt_str(v: &Option<String>) -> Value {
    v.as_deref().map_or(Value::Nil, Value::from)
}

fn event_value(ev: &WireEvent, enc: WireEncoding) -> Value {
    let (tag, fields): (&str, Vec<(&str, Value)>) = match ev {
        WireEvent::BlockStored {
            block_hashes,
            parent_block_hash,
            token_ids,
            block_size,
            lora_id,
            medium,
        } => (
            "BlockStored",
            vec![
                ("block_hashes", hashes(block_hashes)),
                ("parent_block_hash", opt_u64(*parent_block_hash)),
                (
                    "token_ids",
                    Value::Array(token_ids.iter().map(|&t| Value::from(t)).collect()),
                ),
                ("block_size", Value::from(*block_size)),
                ("lora_id", lora_id.map_or(Value::Nil, Value::from)),
                ("medium", opt_str(medium)),
            ],
        ),
        WireEvent::BlockRemoved {
            block_hashes,
            medium,
        } => (
            "BlockRemoved",
            vec![
                ("block_hashes", hashes(block_hashes)),
                ("medium", opt_str(medium)),
            ],
        ),
        WireEvent::AllBlocksCleared => ("AllBlocksCleared", vec![]),
    };
    match enc {
        WireEncoding::Positional => {
            let mut a = Vec::with_capacity(fields.len() + 1);
            a.push(Value::from(tag));
            a.extend(fields.into_iter().map(|(_, v)| v));
            Value::Array(a)
        }
        WireEncoding::Map => {
            let mut m = Vec::with_capacity(fields.len() + 1);
            m.push((Value::from("type"), Value::from(tag)));
            m.extend(fields.into_iter().map(|(k, v)| (Value::from(k), v)));
            Value::Map(m)
        }
    }
}

/// Encode a batch as a msgpack payload.
pub fn encode_batch(batch: &WireBatch, enc: WireEncoding) -> Vec<u8> {
    let events = Value::Array(batch.events.iter().map(|e| event_value(e, enc)).collect());
    let rank = batch.dp_rank.map_or(Value::Nil, Value::from);
    let v = match enc {
        WireEncoding::Positional => Value::Array(vec![Value::F64(batch.ts), events, rank]),
        WireEncoding::Map => Value::Map(vec![
            (Value::from("ts"), Value::F64(batch.ts)),
            (Value::from("events"), events),
            (Value::from("data_parallel_rank"), rank),
        ]),
    };
    let mut out = Vec::with_capacity(64);
    // Writing into a Vec cannot fail.
    let _ = rmpv::encode::write_value(&mut out, &v);
    out
}

// ----- decoding -----------------------------------------------------------------------------

/// Nesting limit: a batch is 4 levels deep; anything much deeper is garbage.
const MAX_DEPTH: usize = 16;

/// Decode a msgpack `KVEventBatch` payload in either encoding.
pub fn decode_batch(payload: &[u8]) -> Result<Decoded, WireError> {
    let mut rd = payload;
    let v = rmpv::decode::read_value_with_max_depth(&mut rd, MAX_DEPTH)
        .map_err(|e| WireError(format!("msgpack: {e}")))?;
    if !rd.is_empty() {
        return err(format!("{} trailing bytes after the batch", rd.len()));
    }
    let (ts, events, rank) = match &v {
        Value::Array(a) => (a.first(), a.get(1), a.get(2)),
        Value::Map(m) => (
            field(m, "ts"),
            field(m, "events"),
            field(m, "data_parallel_rank"),
        ),
        _ => return err("batch is neither an array nor a map"),
    };
    let ts = match ts {
        Some(Value::F64(x)) => *x,
        Some(Value::F32(x)) => *x as f64,
        Some(Value::Integer(i)) => i.as_f64().unwrap_or(0.0),
        Some(Value::Nil) | None => 0.0,
        Some(_) => return err("ts is not a number"),
    };
    let dp_rank = match rank {
        None | Some(Value::Nil) => None,
        Some(Value::Integer(i)) => match i.as_u64().and_then(|r| u32::try_from(r).ok()) {
            Some(r) => Some(r),
            None => return err("data_parallel_rank out of range"),
        },
        Some(_) => return err("data_parallel_rank is not an integer"),
    };
    let Some(Value::Array(evs)) = events else {
        return err("events is not an array");
    };
    let mut out = Vec::with_capacity(evs.len());
    let mut unknown = 0;
    for (i, e) in evs.iter().enumerate() {
        match decode_event(e).map_err(|WireError(m)| WireError(format!("event {i}: {m}")))? {
            Some(ev) => out.push(ev),
            None => unknown += 1,
        }
    }
    Ok(Decoded {
        batch: WireBatch {
            ts,
            events: out,
            dp_rank,
        },
        unknown_events: unknown,
    })
}

fn field<'a>(m: &'a [(Value, Value)], name: &str) -> Option<&'a Value> {
    m.iter()
        .find(|(k, _)| k.as_str() == Some(name))
        .map(|(_, v)| v)
}

/// Accessor over either encoding: positional index or field name.
enum Fields<'a> {
    Pos(&'a [Value]),
    Map(&'a [(Value, Value)]),
}

impl<'a> Fields<'a> {
    fn get(&self, idx: usize, name: &str) -> Option<&'a Value> {
        match self {
            // Index 0 is the tag.
            Fields::Pos(a) => a.get(idx + 1),
            Fields::Map(m) => field(m, name),
        }
        .filter(|v| !v.is_nil())
    }
}

fn decode_event(v: &Value) -> Result<Option<WireEvent>, WireError> {
    let (tag, f) = match v {
        Value::Array(a) => (a.first().and_then(Value::as_str), Fields::Pos(a)),
        Value::Map(m) => (field(m, "type").and_then(Value::as_str), Fields::Map(m)),
        _ => return err("event is neither an array nor a map"),
    };
    let Some(tag) = tag else {
        return err("event has no type tag");
    };
    Ok(Some(match tag {
        "BlockStored" => {
            let block_hashes = hash_list(f.get(0, "block_hashes"), "block_hashes")?;
            let parent_block_hash = f
                .get(1, "parent_block_hash")
                .map(|p| hash(p).ok_or_else(|| WireError("bad parent_block_hash".into())))
                .transpose()?;
            let token_ids = match f.get(2, "token_ids") {
                None => Vec::new(),
                Some(Value::Array(a)) => a
                    .iter()
                    .map(|t| t.as_u64().and_then(|t| u32::try_from(t).ok()))
                    .collect::<Option<Vec<u32>>>()
                    .ok_or_else(|| WireError("token_ids must be u32 integers".into()))?,
                Some(_) => return err("token_ids is not an array"),
            };
            let block_size = match f.get(3, "block_size") {
                Some(b) => b
                    .as_u64()
                    .and_then(|b| u32::try_from(b).ok())
                    .ok_or_else(|| WireError("bad block_size".into()))?,
                None => return err("BlockStored without block_size"),
            };
            let lora_id = f.get(4, "lora_id").and_then(Value::as_i64);
            let medium = f.get(5, "medium").and_then(Value::as_str).map(String::from);
            WireEvent::BlockStored {
                block_hashes,
                parent_block_hash,
                token_ids,
                block_size,
                lora_id,
                medium,
            }
        }
        "BlockRemoved" => WireEvent::BlockRemoved {
            block_hashes: hash_list(f.get(0, "block_hashes"), "block_hashes")?,
            medium: f.get(1, "medium").and_then(Value::as_str).map(String::from),
        },
        "AllBlocksCleared" => WireEvent::AllBlocksCleared,
        _ => return Ok(None),
    }))
}

/// A block hash: u64, i64 (bit-cast), or bytes (low 64 bits, big-endian).
fn hash(v: &Value) -> Option<u64> {
    match v {
        Value::Integer(i) => i.as_u64().or_else(|| i.as_i64().map(|x| x as u64)),
        Value::Binary(b) if !b.is_empty() => {
            let tail = &b[b.len().saturating_sub(8)..];
            Some(tail.iter().fold(0u64, |acc, &x| (acc << 8) | x as u64))
        }
        _ => None,
    }
}

fn hash_list(v: Option<&Value>, what: &str) -> Result<Vec<u64>, WireError> {
    match v {
        None => Ok(Vec::new()),
        Some(Value::Array(a)) => a
            .iter()
            .map(hash)
            .collect::<Option<Vec<u64>>>()
            .ok_or_else(|| WireError(format!("{what}: not integer/bytes hashes"))),
        Some(_) => err(format!("{what} is not an array")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> WireBatch {
        WireBatch {
            ts: 1_700_000_000.25,
            events: vec![
                WireEvent::BlockStored {
                    block_hashes: vec![u64::MAX, 1, (i64::MAX as u64) + 7],
                    parent_block_hash: Some(0x8000_0000_0000_0000),
                    token_ids: (0..12).collect(),
                    block_size: 4,
                    lora_id: None,
                    medium: Some("GPU".into()),
                },
                WireEvent::BlockRemoved {
                    block_hashes: vec![42, u64::MAX - 1],
                    medium: Some("GPU".into()),
                },
                WireEvent::AllBlocksCleared,
            ],
            dp_rank: Some(3),
        }
    }

    #[test]
    fn round_trips_both_encodings() {
        for enc in [WireEncoding::Positional, WireEncoding::Map] {
            let bytes = encode_batch(&sample(), enc);
            let d = decode_batch(&bytes).unwrap();
            assert_eq!(d.batch, sample(), "{enc:?}");
            assert_eq!(d.unknown_events, 0);
        }
    }

    #[test]
    fn positional_layout_is_vllms() {
        // Hand-built: what msgspec array_like + tag emits for vLLM's structs.
        let bytes = encode_batch(&sample(), WireEncoding::Positional);
        let v = rmpv::decode::read_value(&mut &bytes[..]).unwrap();
        let a = v.as_array().unwrap();
        assert_eq!(a.len(), 3);
        assert_eq!(a[0].as_f64(), Some(1_700_000_000.25));
        assert_eq!(a[2].as_u64(), Some(3));
        let ev0 = a[1].as_array().unwrap()[0].as_array().unwrap();
        assert_eq!(ev0[0].as_str(), Some("BlockStored"));
        assert_eq!(ev0[1].as_array().unwrap()[0].as_u64(), Some(u64::MAX));
        assert_eq!(ev0[4].as_u64(), Some(4)); // block_size at position 4
        assert_eq!(ev0[6].as_str(), Some("GPU"));
        let ev2 = a[1].as_array().unwrap()[2].as_array().unwrap();
        assert_eq!(ev2.len(), 1);
        assert_eq!(ev2[0].as_str(), Some("AllBlocksCleared"));
    }

    fn pack(v: Value) -> Vec<u8> {
        let mut out = Vec::new();
        rmpv::encode::write_value(&mut out, &v).unwrap();
        out
    }

    fn s(x: &str) -> Value {
        Value::from(x)
    }

    #[test]
    fn decodes_signed_hashes_omitted_defaults_and_unknown_fields() {
        // Positional, trailing defaults omitted (no lora_id/medium), hashes as negative i64
        // (how a Python int that wrapped would arrive), plus extra trailing fields.
        let stored = Value::Array(vec![
            s("BlockStored"),
            Value::Array(vec![Value::from(-1i64), Value::from(5i64)]),
            Value::Nil,
            Value::Array((0..8).map(Value::from).collect()),
            Value::from(4),
        ]);
        let removed = Value::Array(vec![
            s("BlockRemoved"),
            Value::Array(vec![Value::from(-2i64)]),
            s("CPU"),
            Value::from(0), // group_idx (newer vLLM)
            s("future field"),
        ]);
        let bytes = pack(Value::Array(vec![
            Value::from(1.5),
            Value::Array(vec![stored, removed]),
        ]));
        let d = decode_batch(&bytes).unwrap();
        assert_eq!(d.batch.dp_rank, None);
        assert_eq!(
            d.batch.events,
            vec![
                WireEvent::BlockStored {
                    block_hashes: vec![u64::MAX, 5],
                    parent_block_hash: None,
                    token_ids: (0..8).collect(),
                    block_size: 4,
                    lora_id: None,
                    medium: None,
                },
                WireEvent::BlockRemoved {
                    block_hashes: vec![u64::MAX - 1],
                    medium: Some("CPU".into()),
                }
            ]
        );
    }

    #[test]
    fn decodes_tagged_maps_by_name_in_any_order() {
        let stored = Value::Map(vec![
            (s("extra_keys"), Value::Array(vec![Value::Nil])),
            (s("block_size"), Value::from(16)),
            (s("token_ids"), Value::Array(vec![])),
            (s("type"), s("BlockStored")),
            (
                s("block_hashes"),
                Value::Array(vec![Value::Binary(vec![9, 0, 0, 0, 0, 0, 0, 0, 1])]),
            ),
            (s("parent_block_hash"), Value::from(u64::MAX)),
            (s("kv_cache_spec_kind"), s("full_attention")),
        ]);
        let unknown = Value::Map(vec![
            (s("type"), s("SomethingNew")),
            (s("x"), Value::from(1)),
        ]);
        let cleared = Value::Map(vec![(s("type"), s("AllBlocksCleared"))]);
        let bytes = pack(Value::Map(vec![
            (s("data_parallel_rank"), Value::from(1)),
            (s("events"), Value::Array(vec![stored, unknown, cleared])),
            (s("ts"), Value::from(2)),
            (s("source"), s("ignored")),
        ]));
        let d = decode_batch(&bytes).unwrap();
        assert_eq!(d.unknown_events, 1);
        assert_eq!(d.batch.ts, 2.0);
        assert_eq!(d.batch.dp_rank, Some(1));
        assert_eq!(
            d.batch.events[0],
            WireEvent::BlockStored {
                block_hashes: vec![1], // low 64 bits of the 9 bytes
                parent_block_hash: Some(u64::MAX),
                token_ids: vec![],
                block_size: 16,
                lora_id: None,
                medium: None,
            }
        );
        assert_eq!(d.batch.events[1], WireEvent::AllBlocksCleared);
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        let cases: Vec<Vec<u8>> = vec![
            vec![],
            vec![0xc1],                         // reserved byte
            vec![0xdd, 0xff, 0xff, 0xff, 0xff], // array32 claiming 4G elements, no data
            pack(Value::from(5)),
            pack(Value::Array(vec![Value::from(1.0), Value::from(3)])),
            pack(Value::Array(vec![
                Value::from(1.0),
                Value::Array(vec![Value::from(7)]),
            ])),
            pack(Value::Array(vec![
                Value::from(1.0),
                Value::Array(vec![Value::Array(vec![
                    s("BlockStored"),
                    Value::Array(vec![s("nope")]),
                ])]),
            ])),
            pack(Value::Array(vec![
                Value::from(1.0),
                Value::Array(vec![]),
                Value::from(-1),
            ])),
        ];
        for c in &cases {
            assert!(decode_batch(c).is_err(), "{c:?}");
        }
        // Deep nesting.
        let mut deep = vec![0x91u8; 10_000];
        deep.push(0xc0);
        assert!(decode_batch(&deep).is_err());
        // Trailing bytes.
        let mut b = encode_batch(&sample(), WireEncoding::Map);
        b.push(0);
        assert!(decode_batch(&b).is_err());
        // Every truncation of a valid payload errors cleanly.
        let full = encode_batch(&sample(), WireEncoding::Positional);
        for n in 0..full.len() {
            assert!(decode_batch(&full[..n]).is_err(), "prefix {n}");
        }
    }
}
