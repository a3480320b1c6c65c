//! The per-request record: one JSONL line per request, written by `lab` (virtual time) and
//! `bench` (wall clock) alike, and the only input to the statistics.

use std::fmt;

use serde::de::{self, SeqAccess, Visitor};
use serde::ser::SerializeSeq;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::MetricsError;

/// One request, as observed by whoever issued it. All times are `f64` seconds since an
/// arbitrary epoch shared by every record of a run (virtual time in `lab`, a monotonic clock
/// in `bench`).
///
/// Timeline: `scheduled` (arrival in the trace / schedule) -> `sent` (request actually
/// dispatched) -> `first_token` -> ... chunk gaps ... -> `finish` (last token for a successful
/// request; the moment the failure was observed otherwise).
///
/// Unknown JSON fields are ignored, so producers can wrap this struct with
/// `#[serde(flatten)]` and add their own columns to `requests.jsonl`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RequestRecord {
    /// Request id, unique within a run (e.g. the trace line index).
    pub id: u64,
    /// When the request should have been sent: its trace timestamp / schedule slot. In the
    /// simulator this equals `sent`.
    pub scheduled: f64,
    /// When the request was actually dispatched. Latencies are measured from here
    /// (`sent - scheduled` is the dispatch lag).
    pub sent: f64,
    /// When the first token (first streamed chunk with choices) arrived. `None` if none did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_token: Option<f64>,
    /// When the last token arrived (success) or the error was observed (failure).
    pub finish: f64,
    /// Gaps between consecutive chunks after the first one (see [`ChunkGaps`]).
    #[serde(default, skip_serializing_if = "ChunkGaps::is_empty")]
    pub gaps: ChunkGaps,
    /// Prompt tokens.
    pub input_tokens: u32,
    /// Prompt tokens served from the prefix cache (on the prefill worker).
    #[serde(default)]
    pub cached_tokens: u32,
    /// Generated tokens (the server's `usage.completion_tokens` when available).
    pub output_tokens: u32,
    /// True when `output_tokens` is a client-side estimate (the server sent no usage).
    #[serde(default, skip_serializing_if = "is_false")]
    pub output_tokens_estimated: bool,
    /// Worker that ran the prefill (or the whole request, when aggregated).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefill_worker: Option<u32>,
    /// Worker that ran the decode, when disaggregated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decode_worker: Option<u32>,
    /// Time spent moving KV from the prefill to the decode worker (seconds), when disaggregated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kv_transfer: Option<f64>,
    /// Time spent waiting in engine queues before the first scheduled step (seconds), when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queueing: Option<f64>,
    /// Outcome.
    #[serde(default)]
    pub status: Status,
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// Outcome of a request. Serialized as `"ok"` or `{"error": {"kind": ..., "message": ...}}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    #[default]
    Ok,
    Error {
        /// Short machine-friendly class, used for "errors by kind" (e.g. `http_503`,
        /// `timeout`, `connect`, `stream_truncated`, `rejected`).
        kind: String,
        /// Human-readable detail.
        message: String,
    },
}

impl Status {
    pub fn error(kind: impl Into<String>, message: impl Into<String>) -> Self {
        Status::Error {
            kind: kind.into(),
            message: message.into(),
        }
    }
}

impl RequestRecord {
    /// A successful request with no chunk gaps yet; fill `gaps` with [`ChunkGaps::push`].
    pub fn ok(id: u64, sent: f64, first_token: f64, finish: f64, input: u32, output: u32) -> Self {
        RequestRecord {
            id,
            scheduled: sent,
            sent,
            first_token: Some(first_token),
            finish,
            gaps: ChunkGaps::default(),
            input_tokens: input,
            cached_tokens: 0,
            output_tokens: output,
            output_tokens_estimated: false,
            prefill_worker: None,
            decode_worker: None,
            kv_transfer: None,
            queueing: None,
            status: Status::Ok,
        }
    }

    /// A failed request.
    pub fn failed(id: u64, sent: f64, finish: f64, input: u32, status: Status) -> Self {
        RequestRecord {
            first_token: None,
            output_tokens: 0,
            status,
            ..RequestRecord::ok(id, sent, sent, finish, input, 0)
        }
    }

    /// Successful and complete: counts towards latency statistics and throughput.
    pub fn is_ok(&self) -> bool {
        matches!(self.status, Status::Ok)
    }

    /// Time to first token from the actual send. `None` unless a first token arrived.
    pub fn ttft(&self) -> Option<f64> {
        self.first_token.map(|t| t - self.sent)
    }

    /// End-to-end latency from the actual send.
    pub fn e2e(&self) -> f64 {
        self.finish - self.sent
    }

    /// Per-request time per output token, first token excluded:
    /// `(E2E - TTFT) / (output_tokens - 1)`, defined for `output_tokens >= 2`.
    /// This is AIPerf's `inter_token_latency` and the seeds' "ITL" SLA.
    pub fn tpot(&self) -> Option<f64> {
        let first = self.first_token?;
        (self.output_tokens >= 2).then(|| (self.finish - first) / f64::from(self.output_tokens - 1))
    }

    /// Actual send minus scheduled send.
    pub fn dispatch_lag(&self) -> f64 {
        self.sent - self.scheduled
    }

    /// Check the invariants the statistics rely on; the error names the record.
    pub fn validate(&self) -> Result<(), MetricsError> {
        let bad = |reason: String| MetricsError::InvalidRecord {
            id: self.id,
            reason,
        };
        for (name, v) in [
            ("scheduled", Some(self.scheduled)),
            ("sent", Some(self.sent)),
            ("first_token", self.first_token),
            ("finish", Some(self.finish)),
            ("kv_transfer", self.kv_transfer),
            ("queueing", self.queueing),
        ] {
            if let Some(v) = v
                && !v.is_finite()
            {
                return Err(bad(format!("{name} is not a finite number ({v})")));
            }
        }
        if self.finish < self.sent {
            return Err(bad(format!(
                "finish ({}) is before sent ({})",
                self.finish, self.sent
            )));
        }
        if let Some(first) = self.first_token
            && (first < self.sent || first > self.finish)
        {
            return Err(bad(format!(
                "first_token ({first}) is outside [sent, finish] = [{}, {}]",
                self.sent, self.finish
            )));
        }
        if self.is_ok() && self.first_token.is_none() {
            return Err(bad("status is ok but there is no first_token".into()));
        }
        if self.cached_tokens > self.input_tokens {
            return Err(bad(format!(
                "cached_tokens ({}) exceeds input_tokens ({})",
                self.cached_tokens, self.input_tokens
            )));
        }
        for (name, v) in [
            ("kv_transfer", self.kv_transfer),
            ("queueing", self.queueing),
        ] {
            if let Some(v) = v
                && v < 0.0
            {
                return Err(bad(format!("{name} is negative ({v})")));
            }
        }
        // Run counts are >= 1 by construction; only the values can be bad.
        if let Some(g) = self
            .gaps
            .values
            .iter()
            .find(|g| !(g.is_finite() && **g >= 0.0))
        {
            return Err(bad(format!("chunk gap {g} is negative or not finite")));
        }
        Ok(())
    }
}

/// Round a time or gap to a resolution of `1 / per_second` seconds (e.g. `1e6` for
/// microseconds, `1e9` for nanoseconds), as the nearest `f64` to that decimal. Such values
/// print in few digits (`0.013022`, not `0.013022022162962998`), which keeps `requests.jsonl`
/// small, and they still round-trip exactly. Producers choose their resolution; the statistics
/// then use exactly the stored values.
pub fn quantize(seconds: f64, per_second: f64) -> f64 {
    // Dividing (correctly rounded) lands on the f64 nearest the decimal value.
    (seconds * per_second).round() / per_second
}

/// Parse `requests.jsonl` text: one [`RequestRecord`] per non-blank line. Errors name the
/// 1-based line. Records are not validated here; [`crate::Summary::from_records`] does that.
pub fn parse_records_jsonl(text: &str) -> Result<Vec<RequestRecord>, MetricsError> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let r = serde_json::from_str(line).map_err(|e| MetricsError::Json {
            line: i + 1,
            message: e.to_string(),
        })?;
        out.push(r);
    }
    Ok(out)
}

/// Serialise records as `requests.jsonl` text (one line each, newline-terminated).
pub fn records_to_jsonl(records: &[RequestRecord]) -> String {
    let mut out = String::with_capacity(records.len() * 256);
    for r in records {
        // Serialising these plain structs cannot fail (no maps with non-string keys).
        if let Ok(line) = serde_json::to_string(r) {
            out.push_str(&line);
            out.push('\n');
        }
    }
    out
}

/// `count` consecutive chunk gaps of exactly `gap` seconds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GapRun {
    pub gap: f64,
    pub count: u32,
}

/// Every gap between consecutive streamed chunks of one request, in order, after the first
/// chunk (so a request with `k` chunks has `k - 1` gaps; chunk `i` arrived at
/// `first_token + gaps[0] + ... + gaps[i-1]`). Gaps are stored, not timestamps, because gaps are
/// what the statistics use: storing `t[i] - t[i-1]` keeps them exact.
///
/// Run-length encoded: consecutive *bit-identical* gaps merge into one run. A live stream
/// rarely repeats a gap, so it costs one number per chunk; a simulated decode with a fixed
/// step time collapses to a single run. Lossless either way. In JSON a run of one is a bare
/// number and a longer run is `[gap, count]`: `[0.021, [0.02, 340], 0.019]`.
///
/// In the simulator every chunk is one token; live, a chunk may carry several tokens (vLLM's
/// "ITL" is per chunk too).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ChunkGaps {
    /// One value per run, in order. A live stream (every gap distinct) costs 8 bytes per gap.
    values: Vec<f64>,
    /// `(run index, count)` for the runs longer than one, ascending by index.
    repeats: Vec<(u32, u32)>,
    /// Total number of gaps (sum of run counts), kept so `len` is O(1).
    n: usize,
}

impl ChunkGaps {
    pub fn new() -> Self {
        Self::default()
    }

    /// Room for `gaps` distinct gaps without reallocating (e.g. the expected output length).
    pub fn with_capacity(gaps: usize) -> Self {
        ChunkGaps {
            values: Vec::with_capacity(gaps),
            ..Self::default()
        }
    }

    /// Gaps between consecutive absolute chunk times (`times[0]` is the first token).
    pub fn from_times(times: &[f64]) -> Self {
        let mut g = ChunkGaps::with_capacity(times.len().saturating_sub(1));
        for w in times.windows(2) {
            g.push(w[1] - w[0]);
        }
        g
    }

    /// Append one gap.
    pub fn push(&mut self, gap: f64) {
        self.push_run(gap, 1);
    }

    /// Append `count` gaps of `gap` seconds (e.g. `n` decode steps of equal length).
    pub fn push_run(&mut self, gap: f64, count: u32) {
        if count == 0 {
            return;
        }
        self.n += count as usize;
        if let Some(&last) = self.values.last()
            && last.to_bits() == gap.to_bits()
        {
            let idx = (self.values.len() - 1) as u32;
            match self.repeats.last_mut() {
                Some((i, c)) if *i == idx => {
                    if let Some(sum) = c.checked_add(count) {
                        *c = sum;
                        return;
                    }
                }
                _ => {
                    if let Some(sum) = count.checked_add(1) {
                        self.repeats.push((idx, sum));
                        return;
                    }
                }
            }
        }
        // A new run (or a run that would overflow its u32 count).
        if count > 1 {
            self.repeats.push((self.values.len() as u32, count));
        }
        self.values.push(gap);
    }

    /// The runs, in order.
    pub fn runs(&self) -> impl Iterator<Item = GapRun> + '_ {
        let mut rep = self.repeats.iter().peekable();
        self.values.iter().enumerate().map(move |(i, &gap)| {
            let count = match rep.peek() {
                Some(&&(j, c)) if j as usize == i => {
                    rep.next();
                    c
                }
                _ => 1,
            };
            GapRun { gap, count }
        })
    }

    /// Call `f(gap, count)` for every run, in order (a tight loop, for hot paths).
    pub fn for_each_run(&self, mut f: impl FnMut(f64, u32)) {
        if self.repeats.is_empty() {
            self.values.iter().for_each(|&g| f(g, 1));
            return;
        }
        let mut next = 0;
        for (i, &g) in self.values.iter().enumerate() {
            match self.repeats.get(next) {
                Some(&(j, c)) if j as usize == i => {
                    next += 1;
                    f(g, c)
                }
                _ => f(g, 1),
            }
        }
    }

    /// Number of runs.
    pub fn run_count(&self) -> usize {
        self.values.len()
    }

    /// Number of gaps (chunks minus one).
    pub fn len(&self) -> usize {
        self.n
    }

    pub fn is_empty(&self) -> bool {
        self.n == 0
    }

    /// Append every gap, in order, to `out` (fast path for pooling).
    pub fn extend_into(&self, out: &mut Vec<f64>) {
        if self.repeats.is_empty() {
            out.extend_from_slice(&self.values);
        } else {
            out.extend(self.iter());
        }
    }

    /// Every gap, in order.
    pub fn iter(&self) -> impl Iterator<Item = f64> + '_ {
        self.runs()
            .flat_map(|r| std::iter::repeat_n(r.gap, r.count as usize))
    }

    /// Sum of all gaps (= last chunk time - first chunk time).
    pub fn total(&self) -> f64 {
        self.runs().map(|r| r.gap * f64::from(r.count)).sum()
    }
}

impl Serialize for ChunkGaps {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(Some(self.run_count()))?;
        for r in self.runs() {
            if r.count == 1 {
                seq.serialize_element(&r.gap)?;
            } else {
                seq.serialize_element(&(r.gap, r.count))?;
            }
        }
        seq.end()
    }
}

/// One element of the JSON array: a bare gap or `[gap, count]`.
struct RunElem(GapRun);

impl<'de> Deserialize<'de> for RunElem {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RunElem;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a gap in seconds or a [gap, count] pair")
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<RunElem, E> {
                Ok(RunElem(GapRun { gap: v, count: 1 }))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<RunElem, E> {
                Ok(RunElem(GapRun {
                    gap: v as f64,
                    count: 1,
                }))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<RunElem, E> {
                Ok(RunElem(GapRun {
                    gap: v as f64,
                    count: 1,
                }))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut a: A) -> Result<RunElem, A::Error> {
                let gap: f64 = a
                    .next_element()?
                    .ok_or_else(|| de::Error::invalid_length(0, &self))?;
                let count: u32 = a
                    .next_element()?
                    .ok_or_else(|| de::Error::invalid_length(1, &self))?;
                if a.next_element::<de::IgnoredAny>()?.is_some() {
                    return Err(de::Error::invalid_length(3, &self));
                }
                Ok(RunElem(GapRun { gap, count }))
            }
        }
        d.deserialize_any(V)
    }
}

impl<'de> Deserialize<'de> for ChunkGaps {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let elems: Vec<RunElem> = Vec::deserialize(d)?;
        let mut g = ChunkGaps::new();
        for RunElem(r) in elems {
            if r.count == 0 {
                return Err(de::Error::custom("chunk gap run with count 0"));
            }
            g.push_run(r.gap, r.count);
        }
        Ok(g)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gaps_rle_merges_only_identical_values() {
        let mut g = ChunkGaps::new();
        g.push(0.02);
        g.push(0.02);
        g.push_run(0.02, 3);
        g.push(0.03);
        g.push(0.02);
        assert_eq!(g.run_count(), 3);
        assert_eq!(
            g.runs().collect::<Vec<_>>(),
            vec![
                GapRun {
                    gap: 0.02,
                    count: 5
                },
                GapRun {
                    gap: 0.03,
                    count: 1
                },
                GapRun {
                    gap: 0.02,
                    count: 1
                }
            ]
        );
        // Overflowing a run's u32 count starts a new run instead of losing gaps.
        let mut big = ChunkGaps::new();
        big.push_run(0.5, u32::MAX);
        big.push_run(0.5, 2);
        assert_eq!(big.len(), u32::MAX as usize + 2);
        assert_eq!(big.run_count(), 2);
        big.push(0.5);
        assert_eq!(big.len(), u32::MAX as usize + 3);
        assert_eq!(
            big.runs().map(|r| r.count as u64).sum::<u64>(),
            u32::MAX as u64 + 3
        );
        assert_eq!(g.len(), 7);
        assert_eq!(
            g.iter().collect::<Vec<_>>(),
            vec![0.02, 0.02, 0.02, 0.02, 0.02, 0.03, 0.02]
        );
    }

    #[test]
    fn gaps_json_roundtrip_is_compact_and_lossless() {
        let mut g = ChunkGaps::from_times(&[1.0, 1.5, 2.0, 2.5, 2.75]);
        g.push(0.1 + 0.2); // a value with a long shortest-roundtrip form
        let json = serde_json::to_string(&g).unwrap();
        assert_eq!(json, "[[0.5,3],0.25,0.30000000000000004]");
        let back: ChunkGaps = serde_json::from_str(&json).unwrap();
        assert_eq!(back, g);
        assert!(serde_json::from_str::<ChunkGaps>("[[0.5,0]]").is_err());
        assert!(serde_json::from_str::<ChunkGaps>("[[0.5,1,2]]").is_err());
        assert!(serde_json::from_str::<ChunkGaps>("[\"x\"]").is_err());
    }

    #[test]
    fn record_json_roundtrip() {
        let mut r = RequestRecord::ok(7, 10.0, 10.5, 11.0, 1000, 3);
        r.gaps.push(0.25);
        r.gaps.push(0.25);
        r.cached_tokens = 512;
        r.prefill_worker = Some(2);
        let line = serde_json::to_string(&r).unwrap();
        assert!(line.contains("\"status\":\"ok\""), "{line}");
        assert!(!line.contains("decode_worker"), "{line}");
        let back: RequestRecord = serde_json::from_str(&line).unwrap();
        assert_eq!(back, r);

        let f = RequestRecord::failed(8, 1.0, 2.0, 10, Status::error("http_503", "busy"));
        let line = serde_json::to_string(&f).unwrap();
        assert!(line.contains(r#""status":{"error":{"kind":"http_503","message":"busy"}}"#));
        assert_eq!(serde_json::from_str::<RequestRecord>(&line).unwrap(), f);
        assert!(serde_json::from_str::<RequestRecord>(r#"{"id":1}"#).is_err());
    }

    #[test]
    fn jsonl_helpers_roundtrip_and_name_bad_lines() {
        let mut a = RequestRecord::ok(1, 0.0, 0.1, 0.3, 10, 3);
        a.gaps.push_run(0.1, 2);
        let b = RequestRecord::failed(2, 0.5, 0.7, 10, Status::error("timeout", "t"));
        let text = records_to_jsonl(&[a.clone(), b.clone()]);
        assert_eq!(text.lines().count(), 2);
        assert_eq!(
            parse_records_jsonl(&format!("{text}\n")).unwrap(),
            vec![a, b]
        );
        let bad = format!("{text}{{\"id\": 3}}\n");
        let e = parse_records_jsonl(&bad).unwrap_err().to_string();
        assert!(e.starts_with("line 3:"), "{e}");
    }

    #[test]
    fn quantized_gaps_print_short_and_roundtrip() {
        let g = quantize(0.013022022162962998, 1e6);
        assert_eq!(g, 0.013022);
        assert_eq!(serde_json::to_string(&g).unwrap(), "0.013022");
        assert_eq!(quantize(1.5e-9 + 0.25, 1e9), 0.250000002);
        let mut gaps = ChunkGaps::new();
        for x in [0.0130221, 0.0130222, 0.0130224] {
            gaps.push(quantize(x, 1e6)); // all 13.022 ms at 1 us: one run
        }
        assert_eq!(serde_json::to_string(&gaps).unwrap(), "[[0.013022,3]]");
    }

    #[test]
    fn producers_can_add_columns_with_flatten() {
        #[derive(Serialize, Deserialize, PartialEq, Debug)]
        struct Row {
            #[serde(flatten)]
            rec: RequestRecord,
            http_status: u16,
        }
        let mut rec = RequestRecord::ok(1, 0.1, 0.2, 0.30000000000000004, 5, 3);
        rec.gaps.push(0.1 + 0.2);
        rec.gaps.push_run(0.05, 2);
        let row = Row {
            rec,
            http_status: 200,
        };
        let line = serde_json::to_string(&row).unwrap();
        assert_eq!(serde_json::from_str::<Row>(&line).unwrap(), row);
        // And a plain reader ignores the extra column.
        assert_eq!(
            serde_json::from_str::<RequestRecord>(&line).unwrap(),
            row.rec
        );
    }

    #[test]
    fn per_request_latencies() {
        let r = RequestRecord::ok(1, 2.0, 2.5, 4.5, 10, 5);
        assert_eq!(r.ttft(), Some(0.5));
        assert_eq!(r.e2e(), 2.5);
        assert_eq!(r.tpot(), Some(0.5)); // (2.5 - 0.5) / 4
        let one = RequestRecord::ok(1, 2.0, 2.5, 2.5, 10, 1);
        assert_eq!(one.tpot(), None);
    }

    #[test]
    fn validation_names_the_problem() {
        let mut r = RequestRecord::ok(3, 2.0, 1.0, 4.0, 10, 5);
        let e = r.validate().unwrap_err().to_string();
        assert!(e.contains("request 3") && e.contains("first_token"), "{e}");
        r.first_token = Some(f64::NAN);
        assert!(r.validate().unwrap_err().to_string().contains("finite"));
        r.first_token = None;
        assert!(
            r.validate()
                .unwrap_err()
                .to_string()
                .contains("no first_token")
        );
        let mut c = RequestRecord::ok(4, 0.0, 1.0, 2.0, 10, 5);
        c.cached_tokens = 11;
        assert!(c.validate().is_err());
        c.cached_tokens = 10;
        c.gaps.push(-0.1);
        assert!(c.validate().is_err());
    }
}
