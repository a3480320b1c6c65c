//! Deterministic synthetic runs for tests, the example report and the benchmark.
#![allow(dead_code)]

use switchyard_metrics::{ChunkGaps, RequestRecord, Status, TimeSeries};

/// SplitMix64: tiny deterministic generator, good enough for fake latencies.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in (0, 1).
    pub fn uniform(&mut self) -> f64 {
        ((self.next_u64() >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    }
    pub fn exp(&mut self, mean: f64) -> f64 {
        -mean * self.uniform().ln()
    }
    /// Log-normal with the given median and log-space sigma.
    pub fn lognormal(&mut self, median: f64, sigma: f64) -> f64 {
        let (u1, u2) = (self.uniform(), self.uniform());
        let z = (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos();
        median * (sigma * z).exp()
    }
}

/// Shape of a synthetic deployment.
pub struct Profile {
    pub ttft_median: f64,
    pub ttft_sigma: f64,
    /// Extra TTFT that builds up in the middle of the run (an overload episode), seconds.
    pub burst_ttft: f64,
    pub step: f64,
    pub step_jitter: f64,
    pub disagg: bool,
    pub fail_every: u64,
}

/// `n` requests at `rate` req/s with decode gaps jittered per token.
pub fn run(n: u64, rate: f64, p: &Profile, seed: u64) -> Vec<RequestRecord> {
    let mut rng = Rng::new(seed);
    let mut t = 100.0; // arbitrary epoch
    let span = n as f64 / rate;
    (0..n)
        .map(|id| {
            t += rng.exp(1.0 / rate);
            let input = 500 + (rng.uniform() * 20_000.0) as u32;
            let output = 1 + (rng.exp(300.0)) as u32;
            let cached =
                (f64::from(input) * rng.uniform() * if p.disagg { 0.6 } else { 0.3 }) as u32;
            if p.fail_every > 0 && id % p.fail_every == 7 {
                let kind = if id % 2 == 0 { "http_503" } else { "timeout" };
                return RequestRecord::failed(
                    id,
                    t,
                    t + 0.5,
                    input,
                    Status::error(kind, "synthetic failure"),
                );
            }
            // Overload in the middle third of the run.
            let phase = (t - 100.0) / span;
            let bump = if (0.4..0.6).contains(&phase) {
                p.burst_ttft * (1.0 - (phase - 0.5).abs() * 10.0)
            } else {
                0.0
            };
            let ttft = rng.lognormal(p.ttft_median, p.ttft_sigma) + bump.max(0.0);
            let mut gaps = ChunkGaps::new();
            let mut last = t + ttft;
            for _ in 1..output {
                let g = p.step * (1.0 + p.step_jitter * (rng.uniform() - 0.5));
                gaps.push(g);
                last += g;
            }
            let mut r = RequestRecord::ok(id, t, t + ttft, last, input, output);
            r.gaps = gaps;
            r.cached_tokens = cached;
            r.queueing = Some(ttft * 0.3 * rng.uniform());
            r.prefill_worker = Some((id % 8) as u32);
            if p.disagg {
                r.decode_worker = Some((id % 2) as u32);
                r.kv_transfer = Some(0.001 + f64::from(input - cached) * 262_144.0 / 42.5e9);
            }
            r
        })
        .collect()
}

pub fn agg() -> Profile {
    Profile {
        ttft_median: 0.45,
        ttft_sigma: 0.9,
        burst_ttft: 6.0,
        step: 0.021,
        step_jitter: 0.6,
        disagg: false,
        fail_every: 700,
    }
}

pub fn disagg() -> Profile {
    Profile {
        ttft_median: 0.30,
        ttft_sigma: 0.7,
        burst_ttft: 2.0,
        step: 0.018,
        step_jitter: 0.2,
        disagg: true,
        fail_every: 0,
    }
}

/// Sampled gauges: queue depth and KV usage per worker.
pub fn series(workers: &[&str], seed: u64, start: f64, end: f64) -> Vec<TimeSeries> {
    let mut rng = Rng::new(seed);
    let mut out = Vec::new();
    for w in workers {
        let mut q = Vec::new();
        let mut kv = Vec::new();
        let mut t = start;
        let (mut depth, mut usage) = (0.0f64, 20.0f64);
        while t <= end {
            let phase = (t - start) / (end - start);
            let load = if (0.4..0.6).contains(&phase) {
                6.0
            } else {
                1.0
            };
            depth = (depth + rng.uniform() * load * 2.0 - load).max(0.0).round();
            usage = (usage + (rng.uniform() - 0.5) * 8.0 + if load > 1.0 { 3.0 } else { -1.0 })
                .clamp(5.0, 98.0);
            q.push((t, depth));
            kv.push((t, usage));
            t += 5.0;
        }
        out.push(TimeSeries {
            chart: "Queue depth (requests)".into(),
            name: w.to_string(),
            points: q,
        });
        out.push(TimeSeries {
            chart: "KV cache usage (%)".into(),
            name: w.to_string(),
            points: kv,
        });
    }
    out
}
