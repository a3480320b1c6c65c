//! A closed-loop benchmark driver in virtual time: N clients, each sends a fixed-length request
//! and sends the next one when the previous finishes (what `vllm bench serve
//! --max-concurrency N`, AIPerf's concurrency mode or `trtllm-bench` with all requests queued
//! do). Used by the fidelity tests and the calibration report.
//!
//! Client turnaround: between a response's last token and the next request reaching the
//! engine's scheduler, real clients spend a variable time (SSE delivery, HTTP, tokenization,
//! the engine's input queue). It matters: with identical lengths and zero turnaround, clients
//! that start together stay phase-locked forever and every prefill step is full, which real
//! benchmarks do not always show. It can be drawn uniformly from `turnaround` with a fixed
//! seed; the calibration uses none (the textbook closed loop).

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::engine::{Engine, Request};
use crate::error::EngineError;
use crate::perf::BatchShape;

/// Fraction of one request's modelled decode time over which [`ClosedLoop::steady`] spreads
/// the clients' first requests. A long benchmark's clients drift out of phase (client-side
/// jitter, uneven streaming), so its steady state is neither the textbook closed loop where
/// all clients stay in lockstep nor fully spread. Fitted on the training part of the silicon
/// sample (0.1 to 0.5 give about the same errors; 0 and 1 are clearly worse), see
/// docs/calibration.md.
pub const START_SPREAD: f64 = 0.25;

/// Workload of a closed-loop run.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ClosedLoop {
    /// Concurrent clients.
    pub clients: u32,
    /// Requests in total (the run ends when all finished).
    pub requests: u32,
    pub input_tokens: u32,
    pub output_tokens: u32,
    /// Client turnaround range in seconds (uniform); also applied to the first requests.
    pub turnaround: (f64, f64),
    pub seed: u64,
    /// Give up ([`EngineError::StepBudget`]) after this many engine steps.
    pub max_steps: u64,
    /// The first `warmup` requests (in the order the clients send them) run but are left out
    /// of the means, as benchmarks with a warm-up phase do (`--warmup-request-count`).
    pub warmup: u32,
    /// The clients' first requests arrive evenly spaced over this many seconds (client `i` at
    /// `i / clients × start_spread`) instead of all at once: the phases of a closed loop in
    /// steady state, which a long benchmark reaches because clients drift apart.
    pub start_spread: f64,
}

impl ClosedLoop {
    /// Default turnaround: none (the next request reaches the engine when the previous one
    /// finishes). See the module docs and docs/calibration.md for why this matters.
    pub const TURNAROUND: (f64, f64) = (0.0, 0.0);

    pub fn new(clients: u32, requests: u32, input_tokens: u32, output_tokens: u32) -> ClosedLoop {
        ClosedLoop {
            clients,
            requests,
            input_tokens,
            output_tokens,
            turnaround: Self::TURNAROUND,
            seed: 1,
            max_steps: u64::MAX,
            warmup: 0,
            start_spread: 0.0,
        }
    }
}

impl ClosedLoop {
    /// What a benchmark with a warm-up phase measures in steady state: the first wave (one
    /// request per client) is the warm-up and not counted, and the clients start
    /// [`START_SPREAD`] of one request's modelled decode time apart in total.
    pub fn steady(mut self, engine: &Engine) -> ClosedLoop {
        self.warmup = self.clients.min(self.requests);
        self.start_spread = START_SPREAD * decode_duration(engine, &self);
        self
    }
}

/// Modelled time to decode one request's output with every client decoding (seconds).
pub fn decode_duration(e: &Engine, w: &ClosedLoop) -> f64 {
    let dp = e.dp_ranks().max(1);
    let per = w.clients.div_ceil(dp) as u64;
    let ctx = w.input_tokens as u64 + w.output_tokens as u64 / 2;
    let shape = BatchShape {
        decode_seqs: per as u32,
        decode_ctx: per * ctx,
        decode_ctx_clipped: per * ctx.min(2048),
        logits: per as u32,
        ..Default::default()
    };
    e.step_time(&vec![shape; dp as usize]) * w.output_tokens as f64
}

/// Results (latencies in seconds).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct ClosedLoopResult {
    pub mean_ttft: f64,
    /// Mean over requests of (E2E − TTFT) / (output − 1).
    pub mean_tpot: f64,
    pub mean_e2e: f64,
    /// Output tokens per second over the whole run.
    pub output_throughput: f64,
    pub makespan: f64,
    pub steps: u64,
    pub preemptions: u64,
}

/// Bit pattern wrapper so arrival times order in a heap.
#[derive(Clone, Copy, PartialEq)]
struct T(f64);
impl Eq for T {}
impl PartialOrd for T {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for T {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        self.0.total_cmp(&o.0)
    }
}

/// Run the workload on `engine` (which should be empty) starting at time 0.
pub fn run(engine: &mut Engine, w: &ClosedLoop) -> Result<ClosedLoopResult, EngineError> {
    let n = w.requests as usize;
    let mut rng = ChaCha8Rng::seed_from_u64(w.seed);
    let (lo, hi) = w.turnaround;
    let mut jitter = move || {
        if hi > lo {
            rng.random_range(lo..hi)
        } else {
            lo
        }
    };
    let mut arrival = vec![0.0f64; n];
    let mut ttft = vec![f64::NAN; n];
    let mut e2e = vec![f64::NAN; n];
    // Pending arrivals: (time, request index).
    let mut pending: BinaryHeap<Reverse<(T, usize)>> = BinaryHeap::new();
    let mut next = 0usize;
    let first_wave = w.clients.min(w.requests);
    for i in 0..first_wave {
        let offset = w.start_spread * i as f64 / first_wave as f64;
        pending.push(Reverse((T(offset + jitter()), next)));
        next += 1;
    }
    // What clients see happens this long after the engine's step ends (the profile's
    // `request_overhead_ms`). It is latency on the client's observation path only: the
    // client's next request still reaches the engine when the previous one finished there.
    // (Delaying the next arrival by it makes the fixed-length loop chaotic: 1 ms of delay
    // doubles some TTFTs through phase changes, and it fits the measured runs far worse; see
    // docs/calibration.md.)
    let seen = engine.profile().request_overhead_ms * 1e-3;
    let mut now = 0.0f64;
    let mut done = 0usize;
    while done < n {
        if engine.stats().steps >= w.max_steps {
            return Err(EngineError::StepBudget(w.max_steps));
        }
        let t_next = pending
            .peek()
            .map(|Reverse((t, _))| t.0)
            .unwrap_or(f64::INFINITY);
        let adv = engine.advance_until(now, t_next);
        match adv.outcome {
            Some(o) => {
                now = o.end;
                for &id in &o.first_tokens {
                    ttft[id as usize] = o.end + seen - arrival[id as usize];
                }
                for f in &o.finished {
                    e2e[f.id as usize] = o.end + seen - arrival[f.id as usize];
                    done += 1;
                    if next < n {
                        pending.push(Reverse((T(o.end + jitter()), next)));
                        next += 1;
                    }
                }
            }
            None => {
                // Reached the next arrival (or idle until it): admit everything due.
                let Some(Reverse((t, _))) = pending.peek().copied() else {
                    break;
                };
                now = now.max(t.0);
                while let Some(Reverse((t, i))) = pending.peek().copied() {
                    if t.0 > now {
                        break;
                    }
                    pending.pop();
                    arrival[i] = t.0;
                    engine.admit(
                        Request {
                            id: i as u64,
                            prompt_tokens: w.input_tokens,
                            block_hashes: Vec::new(),
                            max_output_tokens: w.output_tokens,
                            dp_rank: None,
                        },
                        t.0,
                    )?;
                }
            }
        }
    }
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
    // Measured requests: all but the warm-up ones (all of them if the warm-up is everything).
    let first = if (w.warmup as usize) < n {
        w.warmup as usize
    } else {
        0
    };
    let tpot: Vec<f64> = (first..n)
        .filter(|_| w.output_tokens > 1)
        .map(|i| (e2e[i] - ttft[i]) / (w.output_tokens - 1) as f64)
        .collect();
    let st = engine.stats();
    Ok(ClosedLoopResult {
        mean_ttft: mean(&ttft[first..]),
        mean_tpot: mean(&tpot),
        mean_e2e: mean(&e2e[first..]),
        output_throughput: n as f64 * w.output_tokens as f64 / (now + seen),
        makespan: now + seen,
        steps: st.steps,
        preemptions: st.preemptions,
    })
}
