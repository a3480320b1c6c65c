//! Wall-clock cost of one worker replaying an hour of Mooncake-like load through the fast path
//! (long prompts with shared prefixes, Poisson arrivals).
//! `cargo run --release -p switchyard-engine --example trace_like`

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use switchyard_engine::{Catalog, Engine, EngineConfig, Request};

fn main() {
    let cat = Catalog::builtin().expect("catalog");
    let cfg = EngineConfig {
        gpu: "H200".into(),
        model: "Qwen3-32B".into(),
        tp: 2,
        max_model_len: Some(131_072),
        ..EngineConfig::default()
    };
    let mut e = Engine::new(&cat, &cfg).expect("engine");
    println!("{}", e.description());
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    // ~0.43 req/s for an hour: one of 8 workers at the trace's 3.4 req/s.
    let mut t = 0.0;
    let mut arrivals = Vec::new();
    for i in 0..1500u64 {
        t += -(1.0 - rng.random::<f64>()).ln() / 0.43;
        let prompt = rng.random_range(1_000..30_000u32);
        let session = rng.random_range(0..200u64);
        let shared = rng.random_range(0..=(prompt / 16) as usize);
        let hashes = (0..(prompt / 16) as usize)
            .map(|j| {
                if j < shared {
                    session << 32 | j as u64
                } else {
                    (i + 1) << 40 | j as u64
                }
            })
            .collect();
        let out = rng.random_range(50..700u32);
        arrivals.push((
            t,
            Request {
                id: i,
                prompt_tokens: prompt,
                block_hashes: hashes,
                max_output_tokens: out,
                dp_rank: None,
            },
        ));
    }
    let wall = std::time::Instant::now();
    let mut next = 0;
    let mut now = 0.0f64;
    let mut calls = 0u64;
    let mut steps = 0u64;
    loop {
        let limit = arrivals.get(next).map(|a| a.0).unwrap_or(f64::INFINITY);
        let adv = e.advance_until(now, limit);
        calls += 1;
        steps += adv.steps;
        if let Some(o) = adv.outcome {
            now = o.end;
            continue;
        }
        if next == arrivals.len() {
            break;
        }
        now = if adv.idle { arrivals[next].0 } else { adv.time };
        let start = now.max(e.busy_until());
        while next < arrivals.len() && arrivals[next].0 <= start {
            let (at, r) = arrivals[next].clone();
            e.admit(r, at).expect("admit");
            next += 1;
        }
    }
    let st = e.stats();
    println!(
        "{} requests, {steps} steps in {calls} calls, virtual {:.0} s, busy {:.0} s, prefix hits {:.1}%, preemptions {}: wall {:.3} s",
        st.finished,
        e.busy_until(),
        st.busy_time,
        st.prefix_hit_rate() * 100.0,
        st.preemptions,
        wall.elapsed().as_secs_f64()
    );
}
