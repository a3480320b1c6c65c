//! End-to-end simulations of small deployments with hand-checkable outcomes.

use switchyard_engine::Catalog;
use switchyard_sim::{Deployment, RunOptions, simulate};
use switchyard_trace::{Trace, TraceRequest};

fn trace(n: usize, gap_ms: f64) -> Trace {
    Trace {
        requests: (0..n)
            .map(|i| {
                TraceRequest::new(
                    i as f64 * gap_ms,
                    2048,
                    64,
                    vec![
                        0,
                        1000 + i as u64 * 3,
                        1001 + i as u64 * 3,
                        1002 + i as u64 * 3,
                    ],
                )
            })
            .collect(),
        block_size: 512,
    }
}

const AGG: &str = r#"
name = "agg"
[engine]
gpu = "H200"
model = "Qwen3-32B"
tp = 2
[[group]]
role = "aggregated"
count = 2
[router]
policy = "round-robin"
"#;

const DISAGG: &str = r#"
name = "disagg"
[engine]
gpu = "H200"
model = "Qwen3-32B"
tp = 2
[[group]]
role = "prefill"
count = 1
[[group]]
role = "decode"
count = 1
[router]
policy = "kv"
"#;

fn run(toml: &str, t: &Trace) -> switchyard_sim::SimOutput {
    let dep = Deployment::parse(toml, "test.toml").unwrap();
    let cat = Catalog::builtin().unwrap();
    simulate(&dep, &cat, t, &RunOptions::default(), &mut |_, _| {}).unwrap()
}

#[test]
fn aggregated_completes_every_request() {
    let out = run(AGG, &trace(10, 500.0));
    for r in &out.records {
        assert!(r.is_ok(), "{r:?}");
        assert_eq!(r.gaps.len(), 63);
        assert!(r.first_token.unwrap() > r.sent);
    }
}

#[test]
fn disaggregated_completes_every_request_with_a_transfer() {
    let out = run(DISAGG, &trace(10, 500.0));
    for r in &out.records {
        assert!(r.is_ok(), "{r:?}");
        assert!(r.kv_transfer.unwrap() > 0.0, "{r:?}");
        assert_eq!(r.prefill_worker, Some(0));
        assert_eq!(r.decode_worker, Some(1));
    }
}
