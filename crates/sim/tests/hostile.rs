//! Hostile deployment files: every numeric field is bounded, errors name file:line:column,
//! and a run that cannot fit in memory is refused before anything large is allocated.

use switchyard_engine::Catalog;
use switchyard_sim::{Deployment, RunOptions, SimError, simulate};
use switchyard_trace::{Trace, TraceRequest};

const AGG: &str = r#"name = "agg"
[engine]
gpu = "H200"
model = "Qwen3-32B"
tp = 2
[[group]]
role = "aggregated"
count = 2
[router]
policy = "round-robin"
[network]
setup_ms = 1.0
"#;

fn parse_err(text: &str) -> String {
    Deployment::parse(text, "d.toml").unwrap_err().to_string()
}

fn trace(n: usize) -> Trace {
    Trace {
        requests: (0..n)
            .map(|i| TraceRequest::new(i as f64, 1024, 8, vec![i as u64, 10_000 + i as u64]))
            .collect(),
        block_size: 512,
    }
}

#[test]
fn huge_counts_are_refused_with_the_line() {
    for count in ["100000", "1000000000"] {
        let e = parse_err(&AGG.replace("count = 2", &format!("count = {count}")));
        assert!(
            e.starts_with("d.toml:8:9: ") && e.contains("count must be in 1..=10000"),
            "{e}"
        );
    }
    // Each group within bounds, the sum too large.
    let two = AGG.replace("count = 2", "count = 6000")
        + "[[group]]\nrole = \"aggregated\"\ncount = 6000\n";
    let e = parse_err(&two);
    assert!(e.contains("too large: 12000 workers"), "{e}");
}

#[test]
fn non_finite_and_absurd_network_values_are_refused() {
    let cases = [
        (
            "setup_ms = 1.0",
            "setup_ms = inf",
            "d.toml:12:12: [network] setup_ms must be in [0, 10000], got inf",
        ),
        (
            "setup_ms = 1.0",
            "setup_ms = nan",
            "[network] setup_ms must be in [0, 10000], got NaN",
        ),
        ("setup_ms = 1.0", "setup_ms = -1.0", "got -1.0"),
        ("setup_ms = 1.0", "setup_ms = 1e300", "got 1e300"),
        (
            "setup_ms = 1.0",
            "nic_gb_s = nan",
            "d.toml:12:12: [network] nic_gb_s must be in [0.1, 10000], got NaN",
        ),
        ("setup_ms = 1.0", "nic_gb_s = 1e300", "got 1e300"),
        (
            "setup_ms = 1.0",
            "efficiency = nan",
            "[network] efficiency must be in (0, 1], got NaN",
        ),
        (
            "[network]",
            "[events]\nlag_ms = inf\n[network]",
            "d.toml:12:10: [events] lag_ms must be in [0, 60000], got inf",
        ),
    ];
    for (from, to, want) in cases {
        let e = parse_err(&AGG.replace(from, to));
        assert!(e.contains(want), "{to}: {e}");
        // Never a 300-digit number.
        assert!(e.len() < 200, "{e}");
    }
}

#[test]
fn engine_fields_are_bounded_with_the_line() {
    let e = parse_err(&AGG.replace("tp = 2", "tp = 5000"));
    assert!(
        e.starts_with("d.toml:5:6: [[group]] #1 engine: tp must be in 1..=1024, got 5000"),
        "{e}"
    );
    // A group's own override is the one located.
    let e = parse_err(&AGG.replace(
        "count = 2",
        "count = 2\n[group.engine]\nmax_num_seqs = 1000000",
    ));
    assert!(
        e.starts_with("d.toml:10:16: ") && e.contains("max_num_seqs must be in 1..=65536"),
        "{e}"
    );
    let e = parse_err(&AGG.replace("tp = 2", "tp = 2\nmemory_fraction = nan"));
    assert!(
        e.contains("memory_fraction must be in (0, 1], got NaN"),
        "{e}"
    );
    let e = parse_err(&AGG.replace("tp = 2", "tp = 2\nnum_gpu_blocks_override = 4000000000"));
    assert!(e.contains("num_gpu_blocks_override"), "{e}");
}

#[test]
fn tp_beyond_the_nvlink_domain_is_refused_naming_the_file_once() {
    let dep = Deployment::parse(&AGG.replace("tp = 2", "tp = 64"), "d.toml").unwrap();
    let cat = Catalog::builtin().unwrap();
    let e = simulate(
        &dep,
        &cat,
        &trace(2),
        &RunOptions::default(),
        &mut |_, _| {},
    )
    .err()
    .unwrap();
    let msg = format!("{:#}", anyhow_like(&e));
    assert!(
        msg.starts_with("d.toml: [[group]] #1 (aggregated): invalid engine configuration: tp 64 exceeds the 8-GPU NVLink domain of H200"),
        "{msg}"
    );
    // Printed once: the engine error is not also a separate cause.
    assert!(std::error::Error::source(&e).is_none());
    assert_eq!(msg.matches("tp 64 exceeds").count(), 1, "{msg}");
}

/// What `main` prints (`{:#}` walks the causes).
fn anyhow_like(e: &SimError) -> String {
    let mut s = e.to_string();
    let mut cur = std::error::Error::source(e);
    while let Some(c) = cur {
        s.push_str(&format!(": {c}"));
        cur = c.source();
    }
    s
}

#[test]
fn runs_that_cannot_fit_in_memory_are_refused_before_allocating() {
    let dep = Deployment::parse(&AGG.replace("count = 2", "count = 10000"), "d.toml").unwrap();
    let cat = Catalog::builtin().unwrap();
    let opts = RunOptions {
        memory_budget: Some(64 << 20),
        ..RunOptions::default()
    };
    let e = simulate(&dep, &cat, &trace(2), &opts, &mut |_, _| {})
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.starts_with("d.toml: [[group]] #1 (aggregated: 10000 workers x ")
            && e.contains("more than the 0.06 GiB available")
            && e.contains("SWITCHYARD_MEMORY_LIMIT_MB"),
        "{e}"
    );
    // A trace too large for the budget, before any worker exists.
    let small = Deployment::parse(AGG, "d.toml").unwrap();
    let opts = RunOptions {
        memory_budget: Some(1000),
        ..RunOptions::default()
    };
    let e = simulate(&small, &cat, &trace(100), &opts, &mut |_, _| {})
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("simulating 100 requests needs about"), "{e}");
}

#[test]
fn a_recipe_is_not_a_deployment() {
    let recipe = r#"description = "x"
a = "agg.toml"
b = "disagg.toml"
goodput = "ttft:2000"
[trace]
source = "bundled:mooncake_conversation"
"#;
    let e = parse_err(recipe);
    assert!(e.contains("this is a `lab ab` recipe"), "{e}");
}

#[test]
fn router_values_are_checked_in_the_file() {
    let e = parse_err(&AGG.replace(
        "policy = \"round-robin\"",
        "policy = \"kv\"\ntemperature = nan",
    ));
    assert!(e.contains("[router] ") && e.contains("temperature"), "{e}");
}

#[test]
fn an_oversized_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("big.toml");
    std::fs::write(&p, format!("{AGG}\n#{}\n", "x".repeat(2 << 20))).unwrap();
    let e = Deployment::load(&p).unwrap_err().to_string();
    assert!(e.contains("is not a deployment file"), "{e}");
}

/// The router's block size and seed are resolved when the file is read, the same for `lab`
/// and `serve --config`: block size from the engines, one seed.
#[test]
fn router_block_size_and_seed_are_resolved_once() {
    let bs32 = AGG.replace("tp = 2\n", "tp = 2\nblock_size = 32\n");
    let d = Deployment::parse(&bs32, "d.toml").unwrap();
    assert_eq!(d.router.block_size, 32, "follows the engines");
    let e = parse_err(&bs32.replace(
        "policy = \"round-robin\"",
        "policy = \"round-robin\"\nblock_size = 16",
    ));
    assert!(
        e.contains("d.toml:") && e.contains("block_size 16 differs"),
        "{e}"
    );
    let with = |extra_top: &str, extra_router: &str| {
        let t = AGG.replace(
            "policy = \"round-robin\"",
            &format!("policy = \"round-robin\"\n{extra_router}"),
        );
        format!("{extra_top}\n{t}")
    };
    let d = Deployment::parse(&with("seed = 7", ""), "d.toml").unwrap();
    assert_eq!((d.seed, d.router.seed), (7, 7));
    let d = Deployment::parse(&with("", "seed = 9"), "d.toml").unwrap();
    assert_eq!(
        (d.seed, d.router.seed),
        (9, 9),
        "the one seed given is the one used"
    );
    let e = parse_err(&with("seed = 7", "seed = 9"));
    assert!(e.contains("two seeds"), "{e}");
    assert!(Deployment::parse(&with("seed = 7", "seed = 7"), "d.toml").is_ok());
}

/// `[events] mode` is applied (as `[router] kv_feed`), never silently ignored.
#[test]
fn events_mode_is_the_kv_feed() {
    let approx = AGG.replace("[network]", "[events]\nmode = \"approximate\"\n[network]");
    let d = Deployment::parse(&approx, "d.toml").unwrap();
    assert_eq!(d.router.kv_feed, switchyard_route::KvFeed::Approximate);
    let clash = approx.replace(
        "policy = \"round-robin\"",
        "policy = \"round-robin\"\nkv_feed = \"events\"",
    );
    assert!(
        parse_err(&clash).contains("contradicts"),
        "{}",
        parse_err(&clash)
    );
}
