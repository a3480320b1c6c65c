//! One measured row through the engine model: the report's prediction, then a plain closed
//! loop step by step (all clients at once, no warm-up, no request overhead): the
//! configuration, the first steps (duration, tokens, decodes, first tokens) and the mean TTFT
//! per wave of requests.
//!
//! `cargo run --release -p switchyard-calibrate --example probe -- ID_SUBSTRING [STEPS]`

use switchyard_calibrate::predict;
use switchyard_calibrate::silicon;
use switchyard_engine::{Catalog, Engine, Request};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let pat = args.get(1).expect("usage: probe ID_SUBSTRING [STEPS]");
    let show: usize = args.get(2).map_or(12, |s| s.parse().expect("STEPS"));
    let cat = Catalog::builtin().expect("catalog");
    let rows = silicon::bundled().expect("bundled silicon sample");
    let r = rows
        .iter()
        .find(|r| r.id.contains(pat.as_str()))
        .expect("no row matches");
    println!(
        "{}\nmeasured TTFT {:.1} ms, TPOT {:.2} ms",
        r.id, r.ttft_ms, r.tpot_ms
    );
    let p = predict::predict(&cat, r).expect("predict");
    println!(
        "model (as the report runs it): TTFT {:.1} ms, TPOT {:.2} ms",
        p.ttft_ms, p.tpot_ms
    );
    let c = predict::case(&cat, r).expect("case");
    println!("{:?}", c.cfg);
    let mut e = Engine::new(&cat, &c.cfg).expect("engine");
    println!("{}", e.description());
    let w = c.workload;
    let n = w.requests as usize;
    let mut arrival = vec![f64::NAN; n];
    let mut ttft = vec![f64::NAN; n];
    let mut first = vec![f64::NAN; n];
    let mut next = 0usize;
    let mut pending: Vec<(f64, usize)> = Vec::new();
    for _ in 0..w.clients.min(w.requests) {
        pending.push((0.0, next));
        next += 1;
    }
    let mut now = 0.0f64;
    let mut done = 0;
    let mut steps = 0usize;
    let mut tpot_sum = 0.0;
    while done < n {
        pending.retain(|&(t, i)| {
            if t <= now {
                arrival[i] = t;
                e.admit(
                    Request {
                        id: i as u64,
                        prompt_tokens: w.input_tokens,
                        block_hashes: Vec::new(),
                        max_output_tokens: w.output_tokens,
                        dp_rank: None,
                    },
                    t,
                )
                .expect("admit");
                false
            } else {
                true
            }
        });
        let o = e.step(now);
        if o.end <= o.start {
            now = pending.iter().map(|p| p.0).fold(f64::INFINITY, f64::min);
            continue;
        }
        steps += 1;
        if steps <= show {
            println!(
                "step {steps:>4} {:>9.2} ms  tokens {:>6}  decodes {:>4}  first tokens {:>3}",
                o.duration() * 1e3,
                o.scheduled_tokens,
                o.decoded_count,
                o.first_tokens.len()
            );
        }
        now = o.end;
        for &id in &o.first_tokens {
            ttft[id as usize] = o.end - arrival[id as usize];
            first[id as usize] = o.end;
        }
        for f in &o.finished {
            let i = f.id as usize;
            tpot_sum += (o.end - first[i]) / (w.output_tokens.max(2) - 1) as f64;
            done += 1;
            if next < n {
                pending.push((o.end, next));
                next += 1;
            }
        }
    }
    let clients = w.clients as usize;
    for (k, wave) in ttft.chunks(clients).enumerate() {
        let m = wave.iter().sum::<f64>() / wave.len() as f64;
        println!("wave {k}: mean TTFT {:.1} ms", m * 1e3);
    }
    println!(
        "all: mean TTFT {:.1} ms, mean TPOT {:.2} ms, {steps} steps",
        ttft.iter().sum::<f64>() / n as f64 * 1e3,
        tpot_sum / n as f64 * 1e3
    );
}
