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
        }
    }
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
    for _ in 0..w.clients.min(w.requests) {
        pending.push(Reverse((T(jitter()), next)));
        next += 1;
    }
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
                    ttft[id as usize] = o.end - arrival[id as usize];
                }
                for f in &o.finished {
                    e2e[f.id as usize] = o.end - arrival[f.id as usize];
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
    let tpot: Vec<f64> = (0..n)
        .filter(|_| w.output_tokens > 1)
        .map(|i| (e2e[i] - ttft[i]) / (w.output_tokens - 1) as f64)
        .collect();
    let st = engine.stats();
    Ok(ClosedLoopResult {
        mean_ttft: mean(&ttft),
        mean_tpot: mean(&tpot),
        mean_e2e: mean(&e2e),
        output_throughput: n as f64 * w.output_tokens as f64 / now,
        makespan: now,
        steps: st.steps,
        preemptions: st.preemptions,
    })
}
