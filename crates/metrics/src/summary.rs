//! A run's statistics, computed once from its request records (definitions: crates/metrics/README.md).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::MetricsError;
use crate::record::RequestRecord;
use crate::slo::Slo;
use crate::stats::Stats;

/// How to summarise a run.
#[derive(Debug, Clone, Default)]
pub struct SummaryOptions {
    /// Name of the run in reports (e.g. `agg-round-robin`).
    pub label: String,
    /// SLOs for goodput; `None` reports no goodput.
    pub slo: Option<Slo>,
    /// Override the measured span `(start, end)` used for throughputs (e.g. a benchmark that
    /// timed its dispatch loop itself). Default: first send to last finish.
    pub span: Option<(f64, f64)>,
}

/// Goodput under a set of SLOs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Goodput {
    pub slo: Slo,
    /// Requests that succeeded and met every SLO.
    pub good: u64,
    /// `good / duration` (requests per second); `None` when the run has no duration.
    pub rate: Option<f64>,
    /// `good / all requests` (failed ones included: they did not meet the SLA).
    pub fraction: Option<f64>,
}

impl Goodput {
    /// Goodput of `records` under `slo` over a run of `duration` seconds (the summary's
    /// `duration`), for evaluating more SLO sets than the one a [`Summary`] was built with.
    pub fn of(records: &[RequestRecord], slo: &Slo, duration: Option<f64>) -> Goodput {
        let good = records.iter().filter(|r| slo.is_met(r)).count() as u64;
        Goodput {
            slo: slo.clone(),
            good,
            rate: duration.filter(|&d| d > 0.0).map(|d| good as f64 / d),
            fraction: (!records.is_empty()).then(|| good as f64 / records.len() as f64),
        }
    }
}

/// All statistics of one run. Times in seconds, rates per second. Every statistic over an
/// empty sample is `None` (JSON `null`), never a made-up zero.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub label: String,
    /// Records summarised (successful + failed).
    pub requests: u64,
    pub completed: u64,
    pub failed: u64,
    /// Failed requests by error kind.
    pub errors: BTreeMap<String, u64>,
    /// Start of the measured span: earliest `sent` over all records.
    pub start: Option<f64>,
    /// End of the measured span: latest `finish` over all records.
    pub end: Option<f64>,
    /// `end - start`, the denominator of every throughput (`vllm bench serve`'s duration).
    pub duration: Option<f64>,
    /// Token totals over successful requests.
    pub total_input_tokens: u64,
    pub total_cached_tokens: u64,
    pub total_output_tokens: u64,
    /// Successful requests whose output token count is a client-side estimate.
    pub output_tokens_estimated: u64,
    /// Successful requests per second.
    pub request_throughput: Option<f64>,
    /// Input (prompt) tokens of successful requests per second.
    pub input_throughput: Option<f64>,
    /// Output tokens of successful requests per second.
    pub output_throughput: Option<f64>,
    /// Input + output tokens per second.
    pub total_token_throughput: Option<f64>,
    /// Most chunks (tokens, in simulation) completed in any 1-second window aligned to
    /// `start`, per second (vLLM's "Peak output token throughput").
    pub peak_output_throughput: Option<f64>,
    /// Most requests in flight at once, `[sent, finish)` intervals of all records.
    pub peak_concurrency: u64,
    /// `total_cached_tokens / total_input_tokens`.
    pub prefix_cache_hit_rate: Option<f64>,
    /// Goodput, when SLOs were given.
    pub goodput: Option<Goodput>,
    /// Time to first token, from the actual send (successful requests).
    pub ttft: Option<Stats>,
    /// Per-request time per output token excluding the first, `output_tokens >= 2`
    /// (AIPerf's `inter_token_latency`).
    pub tpot: Option<Stats>,
    /// Every gap between consecutive chunks, pooled over requests (vLLM's "ITL").
    pub itl: Option<Stats>,
    /// End-to-end latency from the actual send.
    pub e2e: Option<Stats>,
    /// TTFT measured from the scheduled send (no coordinated omission).
    pub ttft_from_scheduled: Option<Stats>,
    /// E2E measured from the scheduled send.
    pub e2e_from_scheduled: Option<Stats>,
    /// Actual minus scheduled send, all records.
    pub dispatch_lag: Option<Stats>,
    /// Engine queueing time, where recorded.
    pub queueing: Option<Stats>,
    /// KV transfer time, where recorded (disaggregated runs).
    pub kv_transfer: Option<Stats>,
    /// Prompt lengths of successful requests (tokens).
    pub input_len: Option<Stats>,
    /// Output lengths of successful requests (tokens).
    pub output_len: Option<Stats>,
    /// Mean fraction of time the GPUs were busy; only a simulator knows it (set by the caller).
    #[serde(default)]
    pub gpu_busy_fraction: Option<f64>,
}

impl Summary {
    /// Validate every record, then compute every statistic. Errors name the first bad record.
    pub fn from_records(
        records: &[RequestRecord],
        opts: &SummaryOptions,
    ) -> Result<Summary, MetricsError> {
        for r in records {
            r.validate()?;
        }
        let ok: Vec<&RequestRecord> = records.iter().filter(|r| r.is_ok()).collect();
        let mut errors = BTreeMap::new();
        for r in records {
            if let crate::Status::Error { kind, .. } = &r.status {
                *errors.entry(kind.clone()).or_insert(0u64) += 1;
            }
        }

        let (start, end) = match opts.span {
            Some((s, e)) => {
                if !(s.is_finite() && e.is_finite() && e >= s) {
                    return Err(MetricsError::InvalidSpan { start: s, end: e });
                }
                (Some(s), Some(e))
            }
            None => (
                records.iter().map(|r| r.sent).reduce(f64::min),
                records.iter().map(|r| r.finish).reduce(f64::max),
            ),
        };
        let duration = start.zip(end).map(|(s, e)| e - s);
        // A zero-length span (one instantaneous request) has no meaningful rate.
        let per_sec = |x: f64| duration.filter(|&d| d > 0.0).map(|d| x / d);

        let total_input: u64 = ok.iter().map(|r| u64::from(r.input_tokens)).sum();
        let total_cached: u64 = ok.iter().map(|r| u64::from(r.cached_tokens)).sum();
        let total_output: u64 = ok.iter().map(|r| u64::from(r.output_tokens)).sum();

        let collect = |f: &dyn Fn(&RequestRecord) -> Option<f64>| -> Option<Stats> {
            let mut v: Vec<f64> = ok.iter().filter_map(|r| f(r)).collect();
            Stats::from_values(&mut v)
        };
        let itl = pooled_gap_stats(&ok);
        let mut lags: Vec<f64> = records.iter().map(|r| r.dispatch_lag()).collect();

        let goodput = opts
            .slo
            .as_ref()
            .map(|slo| Goodput::of(records, slo, duration));

        Ok(Summary {
            label: opts.label.clone(),
            requests: records.len() as u64,
            completed: ok.len() as u64,
            failed: (records.len() - ok.len()) as u64,
            errors,
            start,
            end,
            duration,
            total_input_tokens: total_input,
            total_cached_tokens: total_cached,
            total_output_tokens: total_output,
            output_tokens_estimated: ok.iter().filter(|r| r.output_tokens_estimated).count() as u64,
            request_throughput: per_sec(ok.len() as f64),
            input_throughput: per_sec(total_input as f64),
            output_throughput: per_sec(total_output as f64),
            total_token_throughput: per_sec((total_input + total_output) as f64),
            peak_output_throughput: start.and_then(|s| peak_chunks_per_second(&ok, s)),
            peak_concurrency: peak_concurrency(records),
            prefix_cache_hit_rate: (total_input > 0)
                .then(|| total_cached as f64 / total_input as f64),
            goodput,
            ttft: collect(&|r| r.ttft()),
            tpot: collect(&|r| r.tpot()),
            itl,
            e2e: collect(&|r| Some(r.e2e())),
            ttft_from_scheduled: collect(&|r| r.first_token.map(|t| t - r.scheduled)),
            e2e_from_scheduled: collect(&|r| Some(r.finish - r.scheduled)),
            dispatch_lag: Stats::from_values(&mut lags),
            queueing: collect(&|r| r.queueing),
            kv_transfer: collect(&|r| r.kv_transfer),
            input_len: collect(&|r| Some(f64::from(r.input_tokens))),
            output_len: collect(&|r| Some(f64::from(r.output_tokens))),
            gpu_busy_fraction: None,
        })
    }

    /// Goodput as a fraction of all requests, if SLOs were given.
    pub fn goodput_fraction(&self) -> Option<f64> {
        self.goodput.as_ref().and_then(|g| g.fraction)
    }

    /// Goodput in requests per second, if SLOs were given.
    pub fn goodput_rate(&self) -> Option<f64> {
        self.goodput.as_ref().and_then(|g| g.rate)
    }
}

/// Every chunk gap of every successful request. Simulated decodes compress into runs of
/// equal gaps, which are summarised without expanding them; live streams (one run per gap) go
/// through linear-time selection on the plain values.
fn pooled_gap_stats(ok: &[&RequestRecord]) -> Option<Stats> {
    let runs: usize = ok.iter().map(|r| r.gaps.run_count()).sum();
    let gaps: usize = ok.iter().map(|r| r.gaps.len()).sum();
    if runs * 2 <= gaps {
        let mut v: Vec<(f64, u32)> = Vec::with_capacity(runs);
        for r in ok {
            r.gaps.for_each_run(|g, c| v.push((g, c)));
        }
        Stats::from_runs(&mut v)
    } else {
        let mut v: Vec<f64> = Vec::with_capacity(gaps);
        for r in ok {
            r.gaps.extend_into(&mut v);
        }
        Stats::from_values(&mut v)
    }
}

/// Sweep line over `[sent, finish)`: at equal times, departures are processed first.
fn peak_concurrency(records: &[RequestRecord]) -> u64 {
    let mut ev: Vec<(f64, i8)> = Vec::with_capacity(records.len() * 2);
    for r in records {
        if r.finish > r.sent {
            ev.push((r.sent, 1));
            ev.push((r.finish, -1));
        }
    }
    ev.sort_unstable_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
    let (mut cur, mut peak) = (0i64, 0i64);
    for (_, d) in ev {
        cur += i64::from(d);
        peak = peak.max(cur);
    }
    peak as u64
}

/// Chunk completion times bucketed into 1-s bins from `start`; the fullest bin's count.
/// A run of `k` equal gaps is spread over the bins it covers arithmetically (chunk `j` of the
/// run at `t + j * gap`), so the cost is per bin touched, not per token.
fn peak_chunks_per_second(ok: &[&RequestRecord], start: f64) -> Option<f64> {
    // Dense bins for any sane run length; a far-off timestamp (bad clock, days-long run)
    // goes to a sparse map instead of allocating a bin per second up to it.
    const DENSE_BINS: usize = 1 << 22; // ~48 days
    let mut bins: Vec<u32> = Vec::new();
    let mut far: std::collections::HashMap<usize, u32> = std::collections::HashMap::new();
    let mut add = |bin: usize, n: u32| {
        if bin < DENSE_BINS {
            if bin >= bins.len() {
                bins.resize(bin + 1, 0);
            }
            bins[bin] += n;
        } else {
            *far.entry(bin).or_insert(0) += n;
        }
    };
    // Truncation is floor for x >= 0, and avoids a libm call per chunk.
    let bin_of = |x: f64| x.max(0.0) as usize;
    for r in ok {
        let Some(first) = r.first_token else { continue };
        let mut x = first - start; // time of the latest chunk, relative to start
        add(bin_of(x), 1);
        r.gaps.for_each_run(|g, k| {
            let end = x + g * f64::from(k);
            if g <= 0.0 || bin_of(x + g) == bin_of(end) {
                add(bin_of(end), k);
            } else if g >= 1.0 {
                // At most one chunk per bin: walk the chunks, not the (possibly many) bins.
                for j in 1..=k {
                    add(bin_of(x + f64::from(j) * g), 1);
                }
            } else {
                // done(b): chunks of this run that land before b + 1, i.e. j with
                // x + j * g < b + 1; monotone in b and exactly k at the last bin. The run
                // spans fewer than k + 2 bins since g < 1.
                let done = |b: usize| -> u32 {
                    let j = ((b as f64 + 1.0 - x) / g).ceil() - 1.0;
                    j.clamp(0.0, f64::from(k)) as u32
                };
                let (b0, b1) = (bin_of(x + g), bin_of(end));
                let mut prev = if b0 > 0 { done(b0 - 1) } else { 0 };
                for b in b0..b1 {
                    let d = done(b).max(prev);
                    add(b, d - prev);
                    prev = d;
                }
                add(b1, k - prev.min(k));
            }
            x = end;
        });
    }
    bins.into_iter()
        .chain(far.into_values())
        .max()
        .map(f64::from)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{ChunkGaps, Status};

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() <= 1e-9 * b.abs().max(1.0)
    }

    /// Three successful requests and one failure, computed by hand below.
    fn sample() -> Vec<RequestRecord> {
        // r0: sent 0, first 0.5, finish 1.5, 5 tokens: TTFT 0.5, E2E 1.5, TPOT 1.0/4 = 0.25;
        //     gaps 0.25 x4.
        let mut r0 = RequestRecord::ok(0, 0.0, 0.5, 1.5, 1000, 5);
        r0.gaps.push_run(0.25, 4);
        r0.cached_tokens = 500;
        // r1: scheduled 1.0, sent 1.1 (lag 0.1), first 2.1, finish 2.5, 3 tokens:
        //     TTFT 1.0, E2E 1.4, TPOT 0.4/2 = 0.2; gaps 0.1, 0.3.
        let mut r1 = RequestRecord::ok(1, 1.1, 2.1, 2.5, 3000, 3);
        r1.scheduled = 1.0;
        r1.gaps = ChunkGaps::from_times(&[2.1, 2.2, 2.5]);
        r1.cached_tokens = 1000;
        r1.queueing = Some(0.4);
        // r2: sent 2, first 2.2, finish 2.2, 1 token: TTFT 0.2, E2E 0.2, no TPOT, no gaps.
        let r2 = RequestRecord::ok(2, 2.0, 2.2, 2.2, 1000, 1);
        // r3: failed, sent 3, finish 4 (end of the span).
        let r3 = RequestRecord::failed(3, 3.0, 4.0, 77, Status::error("http_503", "busy"));
        vec![r0, r1, r2, r3]
    }

    #[test]
    fn hand_computed_summary() {
        let slo: Slo = "ttft:600,itl:250".parse().unwrap();
        let s = Summary::from_records(
            &sample(),
            &SummaryOptions {
                label: "x".into(),
                slo: Some(slo),
                span: None,
            },
        )
        .unwrap();
        assert_eq!((s.requests, s.completed, s.failed), (4, 3, 1));
        assert_eq!(s.errors.get("http_503"), Some(&1));
        assert_eq!(
            (s.start, s.end, s.duration),
            (Some(0.0), Some(4.0), Some(4.0))
        );
        assert_eq!(s.total_input_tokens, 5000);
        assert_eq!(s.total_cached_tokens, 1500);
        assert_eq!(s.total_output_tokens, 9);
        assert!(close(s.request_throughput.unwrap(), 0.75));
        assert!(close(s.input_throughput.unwrap(), 1250.0));
        assert!(close(s.output_throughput.unwrap(), 2.25));
        assert!(close(s.total_token_throughput.unwrap(), 1252.25));
        assert!(close(s.prefix_cache_hit_rate.unwrap(), 0.3));

        let ttft = s.ttft.unwrap(); // [0.2, 0.5, 1.0]
        assert_eq!(ttft.count, 3);
        assert!(close(ttft.mean, 1.7 / 3.0));
        assert!(close(ttft.p50, 0.5));
        assert!(close(ttft.p90, 0.9)); // rank 1.8 -> 0.5 + 0.8 * 0.5
        let tpot = s.tpot.unwrap(); // [0.2, 0.25]
        assert_eq!(tpot.count, 2);
        assert!(close(tpot.mean, 0.225));
        assert!(close(tpot.std, 0.025));
        let itl = s.itl.unwrap(); // [0.25 x4, 0.1, 0.3] -> sorted 0.1, .25, .25, .25, .25, .3
        assert_eq!(itl.count, 6);
        assert!(close(itl.mean, 1.4 / 6.0));
        assert!(close(itl.p50, 0.25));
        assert!(close(itl.p99, 0.2975)); // rank 4.95 -> 0.25 + 0.95 * 0.05
        let e2e = s.e2e.unwrap(); // [0.2, 1.4, 1.5]
        assert!(close(e2e.max, 1.5));
        assert!(close(e2e.p50, 1.4));
        // From the scheduled send only r1 differs: TTFT 1.1, E2E 1.5.
        assert!(close(s.ttft_from_scheduled.unwrap().max, 1.1));
        assert!(close(s.e2e_from_scheduled.unwrap().mean, 3.2 / 3.0));
        let lag = s.dispatch_lag.unwrap(); // [0, 0.1, 0, 0] over all four records
        assert_eq!(lag.count, 4);
        assert!(close(lag.max, 0.1));
        assert_eq!(s.queueing.unwrap().count, 1);
        assert!(s.kv_transfer.is_none());

        // Goodput: r0 (TTFT 0.5, TPOT 0.25) good; r1 TTFT 1.0 bad; r2 no TPOT -> bad.
        let loose = Goodput::of(&sample(), &"ttft:1000".parse().unwrap(), s.duration);
        assert_eq!(loose.good, 3); // every success has TTFT <= 1 s
        assert!(close(loose.rate.unwrap(), 0.75));
        let g = s.goodput.unwrap();
        assert_eq!(g.good, 1);
        assert!(close(g.rate.unwrap(), 0.25));
        assert!(close(g.fraction.unwrap(), 0.25));

        // In flight: [0,1.5) [1.1,2.5) [2,2.2) [3,4) -> peak 2 ([1.1,1.5) and [2,2.2)).
        assert_eq!(s.peak_concurrency, 2);
        // Half-open intervals: one ending exactly when the next starts does not overlap it.
        let touching = [
            RequestRecord::ok(0, 0.0, 0.5, 1.0, 1, 1),
            RequestRecord::ok(1, 1.0, 1.5, 2.0, 1, 1),
        ];
        assert_eq!(peak_concurrency(&touching), 1);
        // Chunk times: r0 0.5 0.75 1.0 1.25 1.5; r1 2.1 2.2 2.5; r2 2.2.
        // Bins [0,1): 2, [1,2): 3, [2,3): 4.
        assert_eq!(s.peak_output_throughput, Some(4.0));
    }

    #[test]
    fn peak_throughput_matches_per_token_bucketing() {
        let mut recs = Vec::new();
        let mut x = 1u64;
        for id in 0..200u64 {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let t0 = (x >> 40) as f64 / 1e6; // 0..16 s
            let mut r = RequestRecord::ok(id, t0, t0 + 0.37, t0, 10, 1);
            let mut t = t0 + 0.37;
            for i in 0..20u32 {
                let g = 0.013 * f64::from(1 + (i + id as u32) % 7);
                let k = 1 + (i * 7 + id as u32) % 50;
                r.gaps.push_run(g, k);
                t += g * f64::from(k);
            }
            r.finish = t;
            r.output_tokens = 1 + r.gaps.len() as u32;
            recs.push(r);
        }
        let refs: Vec<&RequestRecord> = recs.iter().collect();
        let start = recs.iter().map(|r| r.sent).fold(f64::INFINITY, f64::min);
        // Naive: every chunk at first + j * gap within each run.
        let mut bins = vec![0u32; 64];
        for r in &recs {
            let mut x = r.first_token.unwrap() - start;
            bins[x.floor() as usize] += 1;
            for run in r.gaps.runs() {
                for j in 1..=run.count {
                    bins[(x + f64::from(j) * run.gap).floor() as usize] += 1;
                }
                x += run.gap * f64::from(run.count);
            }
        }
        let naive = f64::from(*bins.iter().max().unwrap());
        assert_eq!(peak_chunks_per_second(&refs, start), Some(naive));
    }

    #[test]
    fn far_future_timestamps_do_not_allocate_per_second() {
        // A decade-long gap must neither allocate ~3e8 bins nor loop over them.
        let mut r = RequestRecord::ok(0, 0.0, 1.0, 3.2e8, 10, 3);
        r.gaps.push_run(1.6e8, 2);
        let s = Summary::from_records(&[r], &SummaryOptions::default()).unwrap();
        assert_eq!(s.peak_output_throughput, Some(1.0));
    }

    #[test]
    fn empty_run_is_representable() {
        let s = Summary::from_records(&[], &SummaryOptions::default()).unwrap();
        assert_eq!((s.requests, s.completed), (0, 0));
        assert!(s.duration.is_none() && s.request_throughput.is_none() && s.ttft.is_none());
        assert!(s.prefix_cache_hit_rate.is_none());
        let json = serde_json::to_string(&s).unwrap();
        assert_eq!(serde_json::from_str::<Summary>(&json).unwrap(), s);
    }

    #[test]
    fn all_failed_run() {
        let recs = vec![
            RequestRecord::failed(0, 0.0, 1.0, 5, Status::error("timeout", "t")),
            RequestRecord::failed(1, 0.5, 2.0, 5, Status::error("timeout", "t")),
        ];
        let s = Summary::from_records(
            &recs,
            &SummaryOptions {
                slo: Some("ttft:1".parse().unwrap()),
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!((s.completed, s.failed), (0, 2));
        assert_eq!(s.request_throughput, Some(0.0));
        assert!(s.ttft.is_none() && s.tpot.is_none() && s.itl.is_none());
        assert_eq!(s.goodput.as_ref().unwrap().fraction, Some(0.0));
        assert_eq!(s.peak_output_throughput, None);
        assert_eq!(s.peak_concurrency, 2);
    }

    #[test]
    fn bad_record_and_span_are_errors() {
        let mut recs = sample();
        recs[2].finish = 1.0; // before sent
        let e = Summary::from_records(&recs, &SummaryOptions::default()).unwrap_err();
        assert!(e.to_string().contains("request 2"), "{e}");
        let e = Summary::from_records(
            &sample(),
            &SummaryOptions {
                span: Some((5.0, 1.0)),
                ..Default::default()
            },
        )
        .unwrap_err();
        assert!(e.to_string().contains("span"), "{e}");
    }

    #[test]
    fn span_override_changes_rates_only() {
        let s = Summary::from_records(
            &sample(),
            &SummaryOptions {
                span: Some((0.0, 6.0)),
                ..Default::default()
            },
        )
        .unwrap();
        assert!(close(s.request_throughput.unwrap(), 0.5));
        assert_eq!(s.ttft.unwrap().count, 3);
    }
}
