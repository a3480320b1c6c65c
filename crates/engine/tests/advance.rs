//! `advance_until` must be bit-identical to single stepping.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use switchyard_engine::{
    Catalog, Engine, EngineConfig, KvDtype, Request, StepOutcome, WeightDtype,
};

#[derive(Clone)]
struct Arrival {
    t: f64,
    req: Request,
}

/// Random workload with shared prefixes (so caching, eviction and events happen).
fn workload(seed: u64, n: usize, bs: u32, dp: u32) -> Vec<Arrival> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut t = 0.0;
    (0..n)
        .map(|i| {
            t += rng.random_range(0.0..0.05);
            let prompt = rng.random_range(1..3000u32);
            let family = rng.random_range(0..4u64);
            let full = (prompt / bs) as usize;
            let shared = rng.random_range(0..=full);
            let hashes = (0..full)
                .map(|j| {
                    if j < shared {
                        family * 1_000_000 + j as u64
                    } else {
                        (i as u64 + 1) << 32 | j as u64
                    }
                })
                .collect();
            Arrival {
                t,
                req: Request {
                    id: i as u64,
                    prompt_tokens: prompt,
                    block_hashes: hashes,
                    max_output_tokens: rng.random_range(1..400),
                    dp_rank: if dp > 1 && rng.random_bool(0.3) {
                        Some(rng.random_range(0..dp))
                    } else {
                        None
                    },
                },
            }
        })
        .collect()
}

fn visible_part(o: &StepOutcome) -> StepOutcome {
    StepOutcome {
        decoded: Vec::new(),
        ..o.clone()
    }
}

/// Drive with single steps: before each step starting at s, admit arrivals with t <= s.
fn by_steps(mut e: Engine, arrivals: &[Arrival]) -> (Vec<StepOutcome>, Engine) {
    let mut out = Vec::new();
    let mut next = 0;
    let mut now: f64 = 0.0;
    loop {
        let start = now.max(e.busy_until());
        while next < arrivals.len() && arrivals[next].t <= start {
            e.admit(arrivals[next].req.clone(), arrivals[next].t)
                .unwrap();
            next += 1;
        }
        let o = e.step(start);
        e.check_invariants().unwrap();
        if o.end == o.start && !o.is_visible() {
            if next == arrivals.len() {
                break;
            }
            now = arrivals[next].t;
            continue;
        }
        now = o.end;
        if o.is_visible() {
            out.push(visible_part(&o));
        }
    }
    (out, e)
}

/// Drive with advance_until, limited by the next arrival.
fn by_advance(mut e: Engine, arrivals: &[Arrival]) -> (Vec<StepOutcome>, Engine) {
    let mut out = Vec::new();
    let mut next = 0;
    let mut now: f64 = 0.0;
    loop {
        let limit = arrivals.get(next).map(|a| a.t).unwrap_or(f64::INFINITY);
        let adv = e.advance_until(now, limit);
        if let Some(o) = adv.outcome {
            now = o.end;
            out.push(o);
            continue;
        }
        if next == arrivals.len() {
            assert!(adv.idle);
            break;
        }
        // Idle before the arrival, or the next step would start at/after it.
        now = if adv.idle { arrivals[next].t } else { adv.time };
        let start = now.max(e.busy_until());
        while next < arrivals.len() && arrivals[next].t <= start {
            e.admit(arrivals[next].req.clone(), arrivals[next].t)
                .unwrap();
            next += 1;
        }
    }
    (out, e)
}

#[test]
fn recorded_step_ends_match_single_steps() {
    let cat = Catalog::builtin().unwrap();
    let cfg = EngineConfig {
        gpu: "H100-SXM".into(),
        model: "Llama-3.1-8B".into(),
        ..EngineConfig::default()
    };
    let arrivals = workload(5, 50, cfg.block_size, 1);
    let mut a = Engine::new(&cat, &cfg).unwrap();
    let mut b = Engine::new(&cat, &cfg).unwrap();
    for x in &arrivals {
        a.admit(x.req.clone(), 0.0).unwrap();
        b.admit(x.req.clone(), 0.0).unwrap();
    }
    let mut ends_a = Vec::new();
    let mut t = 0.0;
    loop {
        let o = a.step(t);
        if o.end == o.start {
            break;
        }
        t = o.end;
        ends_a.push(o.end);
    }
    let mut ends_b = Vec::new();
    let mut t = 0.0;
    loop {
        let adv = b.advance_recording(t, f64::INFINITY, &mut ends_b);
        if adv.idle {
            break;
        }
        t = adv.time;
    }
    assert!(ends_a.len() > 300, "{}", ends_a.len());
    assert_eq!(ends_a, ends_b);
    assert_eq!(a.stats(), b.stats());
}

fn compare(cfg: EngineConfig, seed: u64, n: usize) {
    let cat = Catalog::builtin().unwrap();
    let arrivals = workload(seed, n, cfg.block_size, cfg.dp);
    let (a, ea) = by_steps(Engine::new(&cat, &cfg).unwrap(), &arrivals);
    let (b, eb) = by_advance(Engine::new(&cat, &cfg).unwrap(), &arrivals);
    assert_eq!(a.len(), b.len(), "number of visible steps");
    for (i, (x, y)) in a.iter().zip(&b).enumerate() {
        assert_eq!(x, y, "visible step {i} differs");
    }
    assert_eq!(ea.stats(), eb.stats());
    assert_eq!(ea.busy_until().to_bits(), eb.busy_until().to_bits());
    assert_eq!(ea.stats().finished, n as u64, "every request finished");
    // Every token generated exactly once, recomputation included; no KV block leaked.
    let want: u64 = arrivals
        .iter()
        .map(|a| a.req.max_output_tokens as u64)
        .sum();
    assert_eq!(ea.stats().generated_tokens, want);
    let l = ea.load();
    assert_eq!(
        (
            l.running,
            l.waiting,
            l.kv_blocks_used,
            l.pending_prefill_tokens
        ),
        (0, 0, 0, 0)
    );
    println!("{} visible steps, stats {:?}", a.len(), ea.stats());
}

#[test]
fn advance_is_bit_identical_with_preemption_and_eviction() {
    // Tight KV (600 blocks of 16) forces preemptions and LRU evictions.
    compare(
        EngineConfig {
            gpu: "H100-SXM".into(),
            model: "Qwen3-32B".into(),
            tp: 2,
            max_num_batched_tokens: Some(2048),
            num_gpu_blocks_override: Some(600),
            ..EngineConfig::default()
        },
        7,
        400,
    );
}

#[test]
fn advance_is_bit_identical_sglang_style_no_events() {
    compare(
        EngineConfig {
            gpu: "H200".into(),
            model: "Llama-3.1-8B".into(),
            engine: "sglang".into(),
            kv_events: false,
            num_gpu_blocks_override: Some(2000),
            ..EngineConfig::default()
        },
        11,
        300,
    );
}

#[test]
fn advance_is_bit_identical_dp_attention_sparse_mla() {
    // DeepSeek-V3.2 DEP8: 8 schedulers in lockstep, sparse attention sums, reserve-full
    // admission (TensorRT-LLM).
    compare(
        EngineConfig {
            gpu: "GB200".into(),
            model: "DeepSeek-V3.2".into(),
            weight_dtype: WeightDtype::Nvfp4,
            kv_dtype: KvDtype::Fp8,
            dp: 8,
            ep: 8,
            engine: "trtllm".into(),
            num_gpu_blocks_override: Some(500),
            ..EngineConfig::default()
        },
        3,
        400,
    );
}

/// External events of a disaggregated decode worker: request arrivals and KV transfers ending.
#[derive(Clone, Debug)]
enum Ext {
    Arrive(Request),
    /// Conditional disaggregation: prefilled on the decode worker itself.
    ArriveLocal(Request),
    KvDone(u64),
}

const TRANSFER: f64 = 0.013;

struct Queue(std::collections::BTreeMap<(u64, u64), Ext>, u64);

impl Queue {
    fn push(&mut self, t: f64, e: Ext) {
        self.1 += 1;
        self.0.insert((t.to_bits(), self.1), e);
    }
    fn next_time(&self) -> Option<f64> {
        self.0.keys().next().map(|k| f64::from_bits(k.0))
    }
    /// Apply every event due at or before `t`.
    fn run_due(&mut self, e: &mut Engine, t: f64) {
        while let Some((&k, _)) = self.0.iter().next() {
            let at = f64::from_bits(k.0);
            if at > t {
                break;
            }
            match self.0.remove(&k) {
                Some(Ext::Arrive(r)) => {
                    let id = r.id;
                    if e.admit(r, at).unwrap().kv_reserved.is_some() {
                        self.push(at + TRANSFER, Ext::KvDone(id));
                    }
                }
                Some(Ext::ArriveLocal(r)) => {
                    assert_eq!(e.admit_local(r, at).unwrap().kv_reserved, None);
                }
                Some(Ext::KvDone(id)) => e.kv_arrived(id, at).unwrap(),
                None => {}
            }
        }
    }
    fn on_outcome(&mut self, o: &StepOutcome) {
        for r in &o.kv_reserved {
            self.push(o.end + TRANSFER, Ext::KvDone(r.id));
        }
    }
}

/// Every `local_every`-th request (0: none) is prefilled locally.
fn decode_queue(arrivals: &[Arrival], local_every: usize) -> Queue {
    let mut q = Queue(Default::default(), 0);
    for (i, a) in arrivals.iter().enumerate() {
        let mut r = a.req.clone();
        if local_every > 0 && i.is_multiple_of(local_every) {
            q.push(a.t, Ext::ArriveLocal(r));
        } else {
            r.max_output_tokens = r.max_output_tokens.max(2);
            q.push(a.t, Ext::Arrive(r));
        }
    }
    q
}

#[test]
fn advance_is_bit_identical_for_a_decode_worker() {
    decode_worker(21, 0);
}

#[test]
fn advance_is_bit_identical_for_a_decode_worker_with_local_prefills() {
    decode_worker(22, 3);
}

fn decode_worker(seed: u64, local_every: usize) {
    let cat = Catalog::builtin().unwrap();
    let cfg = EngineConfig {
        gpu: "H200".into(),
        model: "Qwen3-32B".into(),
        tp: 2,
        role: switchyard_engine::Role::Decode,
        num_gpu_blocks_override: Some(1500),
        ..EngineConfig::default()
    };
    let arrivals = workload(seed, 300, cfg.block_size, 1);

    // Single steps.
    let mut a = Engine::new(&cat, &cfg).unwrap();
    let mut qa = decode_queue(&arrivals, local_every);
    let mut out_a = Vec::new();
    let mut now: f64 = 0.0;
    loop {
        let start = now.max(a.busy_until());
        qa.run_due(&mut a, start);
        let o = a.step(start);
        a.check_invariants().unwrap();
        if o.end == o.start && !o.is_visible() {
            match qa.next_time() {
                Some(t) => now = t,
                None => break,
            }
            continue;
        }
        now = o.end;
        qa.on_outcome(&o);
        if o.is_visible() {
            out_a.push(visible_part(&o));
        }
    }

    // advance_until, limited by the next external event.
    let mut b = Engine::new(&cat, &cfg).unwrap();
    let mut qb = decode_queue(&arrivals, local_every);
    let mut out_b = Vec::new();
    let mut now: f64 = 0.0;
    loop {
        let limit = qb.next_time().unwrap_or(f64::INFINITY);
        let adv = b.advance_until(now, limit);
        if let Some(o) = adv.outcome {
            now = o.end;
            qb.on_outcome(&o);
            out_b.push(o);
            continue;
        }
        let Some(t) = qb.next_time() else { break };
        now = if adv.idle { t } else { adv.time };
        let start = now.max(b.busy_until());
        qb.run_due(&mut b, start);
    }

    assert_eq!(out_a.len(), out_b.len());
    for (i, (x, y)) in out_a.iter().zip(&out_b).enumerate() {
        assert_eq!(x, y, "visible step {i}");
    }
    assert_eq!(a.stats(), b.stats());
    assert_eq!(a.stats().finished, 300);
    assert!(
        a.stats().preemptions > 0,
        "the test should exercise decode-side preemption"
    );
    let l = a.load();
    assert_eq!(
        (
            l.running,
            l.waiting,
            l.awaiting_kv,
            l.kv_blocks_used,
            l.pending_prefill_tokens
        ),
        (0, 0, 0, 0, 0)
    );
    if local_every > 0 {
        // Every local request reported its first token (and `started`) exactly once.
        let firsts: Vec<u64> = out_a.iter().flat_map(|o| o.first_tokens.clone()).collect();
        let started: Vec<u64> = out_a
            .iter()
            .flat_map(|o| o.started.iter().copied())
            .filter(|id| (*id as usize).is_multiple_of(local_every))
            .collect();
        let mut want: Vec<u64> = (0..300u64).step_by(local_every).collect();
        let mut got = firsts.clone();
        got.sort_unstable();
        want.sort_unstable();
        assert_eq!(got, want);
        assert_eq!(
            started, firsts,
            "started comes with the first token, same steps"
        );
    }
    println!(
        "decode worker: {} visible steps, {:?}",
        out_a.len(),
        a.stats()
    );
}
