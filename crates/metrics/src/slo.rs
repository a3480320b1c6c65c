//! Service-level objectives for goodput: `ttft:2000,itl:25` (milliseconds).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::MetricsError;
use crate::record::RequestRecord;

/// A per-request latency an SLO can bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SloMetric {
    /// Time to first token.
    Ttft,
    /// AIPerf's `inter_token_latency`: the per-request TPOT (the seeds' "ITL" SLA). Same value
    /// as [`SloMetric::Tpot`]; kept as its own key so reports echo what the user wrote.
    Itl,
    /// Per-request time per output token, first token excluded.
    Tpot,
    /// End-to-end latency.
    E2e,
}

impl SloMetric {
    pub fn key(self) -> &'static str {
        match self {
            SloMetric::Ttft => "ttft",
            SloMetric::Itl => "itl",
            SloMetric::Tpot => "tpot",
            SloMetric::E2e => "e2e",
        }
    }

    fn parse(key: &str) -> Option<SloMetric> {
        // Long forms are AIPerf's / vLLM's tags, accepted so users can paste their old flags.
        Some(match key.to_ascii_lowercase().as_str() {
            "ttft" | "time_to_first_token" => SloMetric::Ttft,
            "itl" | "inter_token_latency" => SloMetric::Itl,
            "tpot" => SloMetric::Tpot,
            "e2e" | "e2el" | "request_latency" => SloMetric::E2e,
            _ => return None,
        })
    }

    /// The request's value for this metric (seconds), `None` when undefined (no first token;
    /// TPOT of a request with fewer than two output tokens).
    pub fn value(self, r: &RequestRecord) -> Option<f64> {
        match self {
            SloMetric::Ttft => r.ttft(),
            SloMetric::Itl | SloMetric::Tpot => r.tpot(),
            SloMetric::E2e => r.first_token.map(|_| r.e2e()),
        }
    }
}

/// One bound: `metric <= threshold_ms`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SloTerm {
    pub metric: SloMetric,
    pub threshold_ms: f64,
}

/// A set of SLOs; a request is *good* iff it succeeded and every term holds (`value <=
/// threshold`). A term whose metric is undefined for the request fails (AIPerf's rule: e.g.
/// an `itl` bound is not met by a one-token answer). Serialized as its string form.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Slo {
    terms: Vec<SloTerm>,
}

impl Slo {
    pub fn new(terms: Vec<SloTerm>) -> Result<Slo, MetricsError> {
        let s = Slo { terms };
        // Re-validate through the parser's rules.
        s.to_string().parse()
    }

    pub fn terms(&self) -> &[SloTerm] {
        &self.terms
    }

    /// Does this request meet every SLO?
    pub fn is_met(&self, r: &RequestRecord) -> bool {
        r.is_ok()
            && self.terms.iter().all(|t| {
                t.metric
                    .value(r)
                    .is_some_and(|v| v <= t.threshold_ms / 1000.0)
            })
    }

    /// Human form, e.g. `TTFT <= 2000 ms, ITL <= 25 ms`.
    pub fn describe(&self) -> String {
        self.terms
            .iter()
            .map(|t| format!("{} <= {} ms", t.metric.key().to_uppercase(), t.threshold_ms))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

impl fmt::Display for Slo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, t) in self.terms.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{}:{}", t.metric.key(), t.threshold_ms)?;
        }
        Ok(())
    }
}

impl FromStr for Slo {
    type Err = MetricsError;

    /// `key:ms` pairs separated by commas and/or whitespace. Keys: `ttft`, `itl`, `tpot`,
    /// `e2e` (and AIPerf's `time_to_first_token`, `inter_token_latency`, `request_latency`,
    /// vLLM's `e2el`). Values: non-negative, finite milliseconds.
    fn from_str(input: &str) -> Result<Slo, MetricsError> {
        let err = |reason: String| MetricsError::InvalidSlo {
            input: input.to_string(),
            reason,
        };
        let mut terms: Vec<SloTerm> = Vec::new();
        for part in input
            .split(|c: char| c == ',' || c.is_whitespace())
            .filter(|p| !p.is_empty())
        {
            let Some((key, value)) = part.split_once(':') else {
                return Err(err(format!("`{part}` is not of the form key:milliseconds")));
            };
            let metric = SloMetric::parse(key.trim()).ok_or_else(|| {
                err(format!(
                    "unknown metric `{key}` (expected ttft, itl, tpot or e2e)"
                ))
            })?;
            let value = value.trim();
            let threshold_ms: f64 = value
                .parse()
                .map_err(|_| err(format!("`{value}` is not a number of milliseconds")))?;
            if !threshold_ms.is_finite() || threshold_ms < 0.0 {
                return Err(err(format!(
                    "threshold for {} must be a finite number >= 0, got {value}",
                    metric.key()
                )));
            }
            if terms.iter().any(|t| t.metric == metric) {
                return Err(err(format!("{} is given twice", metric.key())));
            }
            terms.push(SloTerm {
                metric,
                threshold_ms,
            });
        }
        if terms.is_empty() {
            return Err(err("no SLO given (e.g. ttft:2000,itl:25)".into()));
        }
        Ok(Slo { terms })
    }
}

impl TryFrom<String> for Slo {
    type Error = MetricsError;
    fn try_from(s: String) -> Result<Slo, MetricsError> {
        s.parse()
    }
}

impl From<Slo> for String {
    fn from(s: Slo) -> String {
        s.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::Status;

    #[test]
    fn parses_the_seed_sla_and_aiperf_syntax() {
        let s: Slo = "ttft:2000,itl:25".parse().unwrap();
        assert_eq!(
            s.terms(),
            &[
                SloTerm {
                    metric: SloMetric::Ttft,
                    threshold_ms: 2000.0
                },
                SloTerm {
                    metric: SloMetric::Itl,
                    threshold_ms: 25.0
                }
            ]
        );
        assert_eq!(s.to_string(), "ttft:2000,itl:25");
        assert_eq!(s.describe(), "TTFT <= 2000 ms, ITL <= 25 ms");
        let a: Slo = "time_to_first_token:20000 inter_token_latency:50"
            .parse()
            .unwrap();
        assert_eq!(a.to_string(), "ttft:20000,itl:50");
        let b: Slo = " tpot:12.5, e2el:3000 ".parse().unwrap();
        assert_eq!(b.to_string(), "tpot:12.5,e2e:3000");
        let json = serde_json::to_string(&s).unwrap();
        assert_eq!(json, "\"ttft:2000,itl:25\"");
        assert_eq!(serde_json::from_str::<Slo>(&json).unwrap(), s);
    }

    #[test]
    fn clear_errors() {
        for (input, needle) in [
            ("", "no SLO given"),
            ("ttft", "not of the form key:milliseconds"),
            ("ttfb:100", "unknown metric `ttfb`"),
            ("ttft:fast", "`fast` is not a number"),
            ("ttft:-1", "must be a finite number >= 0"),
            ("ttft:inf", "must be a finite number >= 0"),
            ("ttft:NaN", "must be a finite number >= 0"),
            ("ttft:1,TTFT:2", "ttft is given twice"),
            ("ttft:", "`` is not a number"),
        ] {
            let e = input.parse::<Slo>().unwrap_err().to_string();
            assert!(e.contains(needle), "{input:?}: {e}");
            assert!(
                e.contains(&format!("`{input}`")),
                "error should echo the input: {e}"
            );
        }
        assert!(serde_json::from_str::<Slo>("\"bogus\"").is_err());
    }

    #[test]
    fn boundaries_are_inclusive_and_undefined_fails() {
        let slo: Slo = "ttft:2000,itl:25".parse().unwrap();
        // TTFT exactly 2 s, TPOT exactly 25 ms: (0.25) / 10.
        let r = RequestRecord::ok(0, 0.0, 2.0, 2.25, 100, 11);
        assert!(slo.is_met(&r));
        let slow = RequestRecord::ok(0, 0.0, 2.001, 2.25, 100, 11);
        assert!(!slo.is_met(&slow));
        // One output token: no TPOT, so the itl bound cannot be met.
        let one = RequestRecord::ok(0, 0.0, 0.1, 0.1, 100, 1);
        assert!(!slo.is_met(&one));
        let ttft_only: Slo = "ttft:2000".parse().unwrap();
        assert!(ttft_only.is_met(&one));
        let failed = RequestRecord::failed(0, 0.0, 0.1, 10, Status::error("x", "y"));
        assert!(!ttft_only.is_met(&failed));
    }
}
