//! The `switchyard trace` commands as a user runs them: real process, real files.

use std::path::PathBuf;
use std::process::Command;

fn switchyard() -> Command {
    Command::new(env!("CARGO_BIN_EXE_switchyard"))
}

fn bundled() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../data/mooncake_conversation.jsonl.gz")
}

#[test]
fn analyze_prints_the_table_and_json() {
    let out = switchyard()
        .args(["trace", "analyze"])
        .arg(bundled())
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    for needle in [
        "12,031",
        "182,790",
        "44,144",
        "36.64%",
        "40,937",
        "input length",
    ] {
        assert!(text.contains(needle), "missing {needle} in\n{text}");
    }
    let out = switchyard()
        .args(["trace", "analyze", "--json"])
        .arg(bundled())
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["blocks"]["unique_blocks"], 182_790);
    assert!(
        v["input_length_histogram"]["bins"]
            .as_array()
            .unwrap()
            .len()
            > 5
    );
}

#[test]
fn bad_trace_exits_nonzero_with_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("bad.jsonl");
    std::fs::write(&p, "{\"timestamp\": 0, \"input_length\": 5, \"output_length\": 1, \"hash_ids\": [1]}\nnot json\n").unwrap();
    let out = switchyard()
        .args(["trace", "analyze"])
        .arg(&p)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains("bad.jsonl:2: malformed JSON"), "{err}");
}

#[test]
fn warnings_go_to_stderr_and_strict_fails() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("few.jsonl");
    std::fs::write(
        &p,
        "{\"timestamp\": 0, \"input_length\": 2000, \"output_length\": 1, \"hash_ids\": [1]}\n",
    )
    .unwrap();
    let out = switchyard()
        .args(["trace", "analyze"])
        .arg(&p)
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8(out.stderr).unwrap().contains("warning: "));
    let out = switchyard()
        .args(["trace", "analyze", "--strict"])
        .arg(&p)
        .output()
        .unwrap();
    assert!(!out.status.success());
}

#[test]
fn synthesize_writes_the_default_named_file() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("seed.jsonl.gz");
    std::fs::copy(bundled(), &input).unwrap();
    let out = switchyard()
        .args(["trace", "synthesize", "--input-file"])
        .arg(&input)
        .args([
            "--num-requests",
            "500",
            "--prefix-len-multiplier",
            "2",
            "--max-isl",
            "60000",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let file = dir
        .path()
        .join("seed_synth_2.00x1+1.00_speedup1_maxisl60000_n500_seed0.jsonl");
    let text = std::fs::read_to_string(&file).unwrap();
    assert_eq!(text.lines().count(), 500);
    let bad = switchyard()
        .args(["trace", "synthesize", "--input-file"])
        .arg(&input)
        .args(["--prefix-len-multiplier", "0"])
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(
        String::from_utf8(bad.stderr)
            .unwrap()
            .contains("--prefix-len-multiplier must be")
    );
}

#[test]
fn inputs_that_cannot_fit_are_refused_not_aborted() {
    // The memory budget applies to loading (here 1 MiB, for the ~12k-request bundled trace).
    let out = switchyard()
        .env("SWITCHYARD_MEMORY_LIMIT_MB", "1")
        .args(["trace", "analyze"])
        .arg(bundled())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(
        err.contains("mooncake_conversation.jsonl.gz:")
            && err.contains("more than the 0.00 GiB available"),
        "{err}"
    );
    // 10^9 synthetic requests: a clear error, not a 104 GB allocation.
    let dir = tempfile::tempdir().unwrap();
    let out = switchyard()
        .args(["trace", "synthesize", "--num-requests", "1000000000", "-i"])
        .arg(bundled())
        .arg("-o")
        .arg(dir.path().join("x.jsonl"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(
        err.contains("--num-requests must be in 1..=100000000"),
        "{err}"
    );
    // An overlong line, with the limit lowered through the environment.
    let out = switchyard()
        .env("SWITCHYARD_TRACE_MAX_LINE_BYTES", "64")
        .args(["trace", "analyze"])
        .arg(bundled())
        .output()
        .unwrap();
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(
        err.contains(
            "jsonl.gz:1: line longer than 64 bytes (the limit; set SWITCHYARD_TRACE_MAX_LINE_BYTES"
        ),
        "{err}"
    );
}
