use serde::Serialize;

/// One request of a Mooncake-format trace.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TraceRequest {
    /// Arrival time in milliseconds, relative to the trace's start.
    #[serde(serialize_with = "ser_ms")]
    pub timestamp: f64,
    pub input_length: u32,
    pub output_length: u32,
    /// One id per `block_size`-token block of the prompt; equal ids are identical blocks with
    /// identical prefixes. The last block may be partial.
    pub hash_ids: Vec<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub session_id: Option<String>,
    /// Think time before this turn of a session (ms), when the trace carries it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delay: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub text_input: Option<String>,
}

/// Timestamps are integers in Mooncake traces; keep them that way when they are whole.
fn ser_ms<S: serde::Serializer>(v: &f64, s: S) -> Result<S::Ok, S::Error> {
    if v.fract() == 0.0 && v.abs() < 9.0e15 {
        s.serialize_i64(*v as i64)
    } else {
        s.serialize_f64(*v)
    }
}

impl TraceRequest {
    /// A request with only the required fields.
    pub fn new(timestamp: f64, input_length: u32, output_length: u32, hash_ids: Vec<u64>) -> Self {
        Self {
            timestamp,
            input_length,
            output_length,
            hash_ids,
            session_id: None,
            delay: None,
            text_input: None,
        }
    }

    /// Tokens covered by block `i` of this request (the last block may be partial; blocks past
    /// the prompt cover nothing).
    pub fn block_tokens(&self, i: usize, block_size: u32) -> u32 {
        let start = i as u64 * block_size as u64;
        let len = self.input_length as u64;
        if start >= len {
            0
        } else {
            (len - start).min(block_size as u64) as u32
        }
    }
}

/// A loaded trace, sorted by timestamp.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Trace {
    pub requests: Vec<TraceRequest>,
    /// Tokens per `hash_id`.
    pub block_size: u32,
}

impl Trace {
    /// Time from the first to the last arrival, in seconds.
    pub fn span_secs(&self) -> f64 {
        match (self.requests.first(), self.requests.last()) {
            (Some(a), Some(b)) => (b.timestamp - a.timestamp) / 1000.0,
            _ => 0.0,
        }
    }
}

/// Number of blocks a prompt of `input_length` tokens needs.
pub(crate) fn blocks_for(input_length: u32, block_size: u32) -> usize {
    (input_length as usize).div_ceil(block_size as usize)
}
