//! Mutation fuzzing of every parser that takes outside input: OpenAI request bodies, SSE
//! from upstreams, vLLM KV-event msgpack (both encodings), NATS fan-out notes, etcd worker
//! records, Mooncake trace lines and deployment files. Each target starts from a seed corpus
//! (valid inputs), applies random byte-level mutations (flips, interesting bytes, inserts,
//! deletions, duplications, splices) and requires the parser to return — an error is fine, a
//! panic is a finding. Not coverage-guided (stable toolchain, no instrumentation): a cheap,
//! always-on net. `SWITCHYARD_FUZZ_SECS` (default 5) bounds each target; a finding is written
//! to `target/fuzz-findings/` and fails the test with the input in hex; the fix then gets a
//! regression test next to the parser.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::time::{Duration, Instant};

/// xorshift64*: deterministic per target, so a run is reproducible from its seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

const INTERESTING: [u8; 12] = [
    0, 1, 0x7f, 0x80, 0xff, b'"', b'{', b'}', b'[', b'\n', b'\\', 0xc0,
];

fn mutate(rng: &mut Rng, input: &mut Vec<u8>, corpus: &[Vec<u8>]) {
    for _ in 0..1 + rng.below(4) {
        let len = input.len();
        match rng.below(7) {
            0 if len > 0 => {
                let i = rng.below(len);
                input[i] ^= 1 << rng.below(8);
            }
            1 if len > 0 => {
                let i = rng.below(len);
                input[i] = INTERESTING[rng.below(INTERESTING.len())];
            }
            2 => {
                let i = rng.below(len + 1);
                let n = 1 + rng.below(8);
                let bytes: Vec<u8> = (0..n).map(|_| rng.next() as u8).collect();
                input.splice(i..i, bytes);
            }
            3 if len > 1 => {
                let a = rng.below(len);
                let b = (a + 1 + rng.below(16)).min(len);
                input.drain(a..b);
            }
            4 if len > 1 => {
                let a = rng.below(len);
                let b = (a + 1 + rng.below(64)).min(len);
                let chunk = input[a..b].to_vec();
                let at = rng.below(len + 1);
                input.splice(at..at, chunk);
            }
            5 => {
                let other = &corpus[rng.below(corpus.len())];
                if !other.is_empty() {
                    let a = rng.below(other.len());
                    let cut = rng.below(len + 1);
                    input.truncate(cut);
                    input.extend_from_slice(&other[a..]);
                }
            }
            _ if len > 0 => {
                // Replace a digit run's digit with a large or odd number.
                let i = rng.below(len);
                let repl: &[u8] = match rng.below(4) {
                    0 => b"1e308",
                    1 => b"-1",
                    2 => b"18446744073709551616",
                    _ => b"NaN",
                };
                input.splice(i..(i + 1).min(len), repl.iter().copied());
            }
            _ => input.push(rng.next() as u8),
        }
    }
    input.truncate(1 << 16);
}

fn budget() -> Duration {
    Duration::from_secs_f64(
        std::env::var("SWITCHYARD_FUZZ_SECS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(5.0),
    )
}

/// Run `target` on the seeds, then on mutations of them until the time budget is spent.
fn fuzz(name: &str, seeds: Vec<Vec<u8>>, target: impl Fn(&[u8])) {
    let quiet = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let mut rng =
        Rng(0x9E37_79B9_7F4A_7C15 ^ name.len() as u64 ^ (name.as_bytes()[0] as u64) << 32);
    let start = Instant::now();
    let mut execs = 0u64;
    let mut finding: Option<Vec<u8>> = None;
    let run = |input: &[u8]| catch_unwind(AssertUnwindSafe(|| target(input))).is_err();
    for s in &seeds {
        execs += 1;
        if run(s) {
            finding = Some(s.clone());
            break;
        }
    }
    while finding.is_none() && start.elapsed() < budget() {
        let mut input = seeds[rng.below(seeds.len())].clone();
        mutate(&mut rng, &mut input, &seeds);
        execs += 1;
        if run(&input) {
            finding = Some(input);
        }
    }
    std::panic::set_hook(quiet);
    eprintln!(
        "fuzz {name}: {execs} executions in {:.1} s, {} finding(s)",
        start.elapsed().as_secs_f64(),
        usize::from(finding.is_some())
    );
    if let Some(input) = finding {
        let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("../fuzz-findings");
        let _ = std::fs::create_dir_all(&dir);
        let _ = std::fs::write(dir.join(name), &input);
        let hex: String = input.iter().map(|b| format!("{b:02x}")).collect();
        panic!("fuzz {name}: the parser panicked on input (hex) {hex}");
    }
}

fn s(x: &str) -> Vec<u8> {
    x.as_bytes().to_vec()
}

#[test]
fn fuzz_openai_request_bodies() {
    use switchyard_server::openai::{Endpoint, parse_request};
    let seeds = vec![
        s(
            r#"{"model":"Qwen3-32B","prompt":"hello","max_tokens":16,"stream":true,"stream_options":{"include_usage":true}}"#,
        ),
        s(r#"{"model":"m","prompt":[1,2,3,4],"max_completion_tokens":2,"n":1}"#),
        s(
            r#"{"model":"m","messages":[{"role":"user","content":"hi"},{"role":"assistant","content":[{"type":"text","text":"x"}]}]}"#,
        ),
        s(
            r#"{"model":"m","prompt":"x","kv_transfer_params":{"do_remote_prefill":true,"remote_host":"h","remote_port":1,"remote_request_id":"r"},"bootstrap_room":7,"bootstrap_host":"h","bootstrap_port":9}"#,
        ),
        s(r#"{"model":"m","prompt":["a","b"],"tools":[],"logprobs":null,"best_of":1}"#),
    ];
    fuzz("openai", seeds, |b| {
        let _ = parse_request(b, Endpoint::Completions);
        let _ = parse_request(b, Endpoint::Chat);
    });
}

#[test]
fn fuzz_sse_from_upstreams() {
    let seeds = vec![
        s("data: {\"a\":1}\n\ndata: [DONE]\n\n"),
        s(": comment\r\nevent: x\r\ndata: line1\r\ndata: line2\r\n\r\n"),
        s("data:no-space\n\nid: 3\nretry: 10\ndata: {}\n\n"),
    ];
    fuzz("sse", seeds, |b| {
        let mut p = switchyard_bench::sse::SseParser::new();
        // Fed in two pieces: events split across reads are the normal case.
        let cut = b.len() / 2;
        let _ = p.feed(&b[..cut], |_| true);
        let _ = p.feed(&b[cut..], |_| true);
    });
}

#[test]
fn fuzz_kv_event_msgpack() {
    use switchyard_kv::wire::{WireBatch, WireEncoding, WireEvent, decode_batch, encode_batch};
    let batch = WireBatch {
        ts: 1.5,
        events: vec![
            WireEvent::BlockStored {
                block_hashes: vec![1, u64::MAX, 3],
                parent_block_hash: Some(9),
                token_ids: (0..48).collect(),
                block_size: 16,
                lora_id: None,
                medium: Some("GPU".into()),
            },
            WireEvent::BlockRemoved {
                block_hashes: vec![1],
                medium: None,
            },
            WireEvent::AllBlocksCleared,
        ],
        dp_rank: Some(3),
    };
    let seeds = vec![
        encode_batch(&batch, WireEncoding::Positional),
        encode_batch(&batch, WireEncoding::Map),
    ];
    fuzz("kv_wire", seeds, |b| {
        let _ = decode_batch(b);
    });
}

#[test]
fn fuzz_nats_notes() {
    use switchyard_cluster::fanout::codec_bench::{decodes, encode_prediction};
    let seeds = vec![
        encode_prediction("replica-a", "http://10.0.0.7:8001", &[1, 2, 3, 4]),
        encode_prediction("r", "w", &[]),
    ];
    for s in &seeds {
        assert!(decodes(s), "the seeds are valid notes");
    }
    fuzz("nats_note", seeds, |b| {
        let _ = decodes(b);
    });
}

#[test]
fn fuzz_etcd_worker_records() {
    use switchyard_cluster::{Role, WorkerRecord};
    let r = WorkerRecord::new("http://10.0.0.7:8001", Role::Decode);
    let seeds = vec![
        r.to_json(),
        s(r#"{"url":"http://h:1","role":"prefill","kv_events":"tcp://h:2","dp_size":8}"#),
    ];
    fuzz("etcd_record", seeds, |b| {
        let _ = WorkerRecord::from_json("10.0.0.7-8001", b);
    });
}

#[test]
fn fuzz_mooncake_trace_lines() {
    let opts = switchyard_trace::LoadOptions::default();
    let seeds = vec![
        s(
            "{\"timestamp\": 0, \"input_length\": 1024, \"output_length\": 8, \"hash_ids\": [0, 1]}\n{\"timestamp\": 5, \"input_length\": 600, \"output_length\": 3, \"hash_ids\": [0, 2]}\n",
        ),
        s(
            "{\"timestamp\": 1.5, \"input_length\": 10, \"output_length\": 1, \"hash_ids\": [7], \"session_id\": \"a\", \"delay\": 3}\n",
        ),
    ];
    fuzz("trace", seeds, |b| {
        let _ = switchyard_trace::parse_reader(b, std::path::Path::new("fuzz.jsonl"), &opts);
    });
}

#[test]
fn fuzz_deployment_files() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../recipes");
    let mut seeds = Vec::new();
    for dir in std::fs::read_dir(&root).unwrap().flatten() {
        for f in std::fs::read_dir(dir.path())
            .into_iter()
            .flatten()
            .flatten()
        {
            if f.path().extension().is_some_and(|e| e == "toml") {
                seeds.push(std::fs::read(f.path()).unwrap());
            }
        }
    }
    assert!(!seeds.is_empty());
    fuzz("deployment", seeds, |b| {
        if let Ok(text) = std::str::from_utf8(b) {
            let _ = switchyard_sim::Deployment::parse(text, "fuzz.toml");
        }
    });
}

/// The harness finds a planted bug: a "parser" that panics on a byte the seeds lack.
#[test]
#[should_panic(expected = "the parser panicked")]
fn the_harness_finds_a_planted_panic() {
    fuzz("planted", vec![s("abc")], |b| assert!(!b.contains(&0xff)));
}
