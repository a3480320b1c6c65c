//! Engine-side cost of `lab ab`'s A deployment: replay the bundled Mooncake conversation trace
//! (12,031 requests, 59 minutes) over 8 aggregated Qwen3-32B TP2 H200 workers, round-robin,
//! KV events on — without router or prefix index, so only engine work is timed. Prints a
//! fingerprint of every visible step (times, tokens, KV events) to check that engine changes
//! keep results bit-identical.
//!
//! `cargo run --release -p switchyard-engine --example fleet_replay [-- TRACE [WORKERS [N]]]`

use std::io::BufRead as _;

use switchyard_engine::{Catalog, Engine, EngineConfig, Request, StepOutcome};
use switchyard_kv::{KvEvent, TraceBlockMapper};

struct Fp(u64);

impl Fp {
    fn add(&mut self, x: u64) {
        // FNV-1a over 64-bit words: order-sensitive, cheap.
        self.0 = (self.0 ^ x).wrapping_mul(0x100_0000_01b3);
    }
    fn outcome(&mut self, o: &StepOutcome) {
        self.add(o.start.to_bits());
        self.add(o.end.to_bits());
        self.add(o.scheduled_tokens);
        for &id in o.started.iter().chain(&o.first_tokens).chain(&o.preempted) {
            self.add(id);
        }
        for f in &o.finished {
            self.add(f.id);
            self.add(f.output_tokens as u64);
        }
        for e in &o.kv_events {
            match &e.event {
                KvEvent::Stored { parent, blocks } => {
                    self.add(parent.unwrap_or(1));
                    blocks.iter().for_each(|&h| self.add(h));
                }
                KvEvent::Removed { blocks } => {
                    self.add(2);
                    blocks.iter().for_each(|&h| self.add(h));
                }
                KvEvent::AllCleared => self.add(3),
            }
        }
    }
}

fn main() {
    let mut args = std::env::args().skip(1);
    let path = args.next().unwrap_or_else(|| {
        concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../data/mooncake_conversation.jsonl.gz"
        )
        .into()
    });
    let workers: usize = args.next().and_then(|s| s.parse().ok()).unwrap_or(8);
    let limit: usize = args
        .next()
        .and_then(|s| s.parse().ok())
        .unwrap_or(usize::MAX);

    let file = std::fs::File::open(&path).expect("trace file");
    let reader = std::io::BufReader::new(flate2::read::GzDecoder::new(file));
    let mapper = TraceBlockMapper::new(16).expect("mapper");
    let mut reqs = Vec::new();
    for (i, line) in reader.lines().enumerate().take(limit) {
        let line = line.expect("read");
        let v: serde_json::Value = serde_json::from_str(&line).expect("json");
        let ids: Vec<u64> = v["hash_ids"]
            .as_array()
            .expect("hash_ids")
            .iter()
            .filter_map(|x| x.as_u64())
            .collect();
        let input = v["input_length"].as_u64().expect("input_length") as u32;
        let mut hashes = Vec::new();
        mapper.map_into(&ids, input, &mut hashes);
        let t = v["timestamp"].as_f64().expect("timestamp") / 1000.0;
        reqs.push((
            t,
            Request {
                id: i as u64,
                prompt_tokens: input,
                block_hashes: hashes,
                max_output_tokens: v["output_length"].as_u64().expect("output_length").max(1)
                    as u32,
                dp_rank: Some(0),
            },
        ));
    }

    let cat = Catalog::builtin().expect("catalog");
    let cfg: EngineConfig =
        toml::from_str("gpu = \"H200\"\nmodel = \"Qwen3-32B\"\ntp = 2\n").expect("config");
    let mut engines: Vec<Engine> = (0..workers)
        .map(|_| Engine::new(&cat, &cfg).expect("engine"))
        .collect();
    let mut fp = Fp(0xcbf2_9ce4_8422_2325);
    let mut steps = 0u64;
    let run = |e: &mut Engine, limit: f64, fp: &mut Fp, steps: &mut u64| {
        let mut now = e.busy_until();
        loop {
            let a = e.advance_until(now, limit);
            *steps += a.steps;
            match a.outcome {
                Some(o) => {
                    fp.outcome(&o);
                    now = o.end;
                }
                None => return,
            }
        }
    };
    let wall = std::time::Instant::now();
    for (k, (t, r)) in reqs.iter().enumerate() {
        for e in engines.iter_mut() {
            run(e, *t, &mut fp, &mut steps);
        }
        if engines[k % workers].admit(r.clone(), *t).is_err() {
            fp.add(u64::MAX);
        }
    }
    for e in engines.iter_mut() {
        run(e, f64::INFINITY, &mut fp, &mut steps);
    }
    let secs = wall.elapsed().as_secs_f64();
    let (mut prompt, mut cached, mut prefill) = (0u64, 0u64, 0u64);
    for e in &engines {
        let s = e.stats();
        fp.add(s.busy_time.to_bits());
        fp.add(s.preemptions);
        prompt += s.prompt_tokens;
        cached += s.cached_prompt_tokens;
        prefill += s.prefill_tokens;
    }
    println!(
        "{} requests on {workers} workers: {steps} steps, prefix hits {:.1}%, {:.1}M tokens prefilled; fingerprint {:016x}; wall {secs:.3} s",
        reqs.len(),
        100.0 * cached as f64 / prompt.max(1) as f64,
        prefill as f64 / 1e6,
        fp.0
    );
}
