//! `switchyard lab ab` as a user runs it: real process, real files, the report in a real
//! (headless) browser.

use std::path::Path;
use std::process::Command;

fn switchyard() -> Command {
    Command::new(env!("CARGO_BIN_EXE_switchyard"))
}

fn run_ok(args: &[&str], out: &Path) -> String {
    let o = switchyard().args(args).arg("-o").arg(out).output().unwrap();
    assert!(
        o.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout).unwrap()
}

#[test]
fn ab_prints_the_table_and_writes_the_results_folder() {
    let dir = tempfile::tempdir().unwrap();
    let text = run_ok(&["lab", "ab", "--requests", "300"], dir.path());
    for needle in [
        "TTFT p99 (ms)",
        "Goodput",
        "KV transfer p50",
        "Verdict",
        "agg-round-robin",
        "disagg-kv",
    ] {
        assert!(text.contains(needle), "missing {needle}:\n{text}");
    }
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("summary.json")).unwrap())
            .unwrap();
    assert_eq!(summary["runs"].as_array().unwrap().len(), 2);
    assert_eq!(summary["trace"]["requests"], 300);
    assert!(
        summary["trace"]["hash"]
            .as_str()
            .unwrap()
            .starts_with("xxh3:")
    );
    assert!(
        summary["runs"][1]["deployment_toml"]
            .as_str()
            .unwrap()
            .contains("prefill")
    );
    for f in ["requests-a.jsonl", "requests-b.jsonl"] {
        let lines = std::fs::read_to_string(dir.path().join(f)).unwrap();
        assert_eq!(lines.lines().count(), 300);
    }
    // Same input, same output: the simulation is deterministic.
    let dir2 = tempfile::tempdir().unwrap();
    run_ok(&["lab", "ab", "--requests", "300"], dir2.path());
    assert_eq!(
        std::fs::read(dir.path().join("requests-b.jsonl")).unwrap(),
        std::fs::read(dir2.path().join("requests-b.jsonl")).unwrap()
    );
    check_report_in_browser(&dir.path().join("report.html"));

    // `report` recomputes the same statistics from the saved records.
    let html = dir.path().join("again.html");
    let o = switchyard()
        .arg("report")
        .arg(dir.path())
        .arg("-o")
        .arg(&html)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let again = String::from_utf8(o.stdout).unwrap();
    let row = |t: &str| {
        t.lines()
            .find(|l| l.starts_with("TTFT p99"))
            .map(str::to_string)
    };
    assert_eq!(row(&again), row(&text));
    assert!(std::fs::read_to_string(&html).unwrap().contains("<svg"));
    let o = switchyard()
        .args(["report", "/nonexistent-dir"])
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("not a results folder"));
}

/// Render the report in headless Chromium: the DOM must hold the charts, and a screenshot
/// must come out. CI installs Chromium; elsewhere the check is skipped with a note.
fn check_report_in_browser(report: &Path) {
    let Some(chromium) = switchyard_testkit::chromium() else {
        switchyard_testkit::skip(
            "lab_cli: browser check of report.html",
            "no chromium on PATH",
            "bash scripts/test.sh (installs Debian's chromium)",
        );
        return;
    };
    let profile = tempfile::tempdir().unwrap();
    let base = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
    ];
    let url = format!("file://{}", report.display());
    let dom = Command::new(chromium)
        .args(base)
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(["--dump-dom", &url])
        .output()
        .unwrap();
    let dom = String::from_utf8_lossy(&dom.stdout);
    assert!(
        dom.matches("<svg").count() >= 6,
        "report has too few charts"
    );
    assert!(
        dom.contains("TTFT CDF") && dom.contains("Verdict"),
        "report content missing"
    );
    let png = report.with_extension("png");
    let shot = Command::new(chromium)
        .args(base)
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(format!("--screenshot={}", png.display()))
        .args(["--window-size=1280,2400", &url])
        .output()
        .unwrap();
    assert!(shot.status.success());
    assert!(
        std::fs::metadata(&png).unwrap().len() > 20_000,
        "screenshot is (nearly) blank"
    );
}

#[test]
fn bad_inputs_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let err = |args: &[&str]| {
        let o = switchyard()
            .args(args)
            .arg("-o")
            .arg(dir.path())
            .output()
            .unwrap();
        assert!(!o.status.success(), "{args:?} should fail");
        String::from_utf8(o.stderr).unwrap()
    };
    assert!(err(&["lab", "ab", "--goodput", "ttft=2"]).contains("invalid SLO"));
    let e = err(&["lab", "ab", "--recipe", "nope"]);
    assert!(
        e.contains("unknown recipe `nope`") && e.contains("qwen3-32b-h200"),
        "{e}"
    );
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "name = 'x'\n[[group]]\ncount = 1\nwat = 2\n").unwrap();
    let e = err(&["lab", "ab", "--a", bad.to_str().unwrap()]);
    assert!(e.contains("bad.toml") && e.contains("wat"), "{e}");
    let trace = dir.path().join("t.jsonl");
    std::fs::write(
        &trace,
        "{\"timestamp\": 0, \"input_length\": -4, \"output_length\": 1, \"hash_ids\": []}\n",
    )
    .unwrap();
    let e = err(&["lab", "ab", "--trace", trace.to_str().unwrap()]);
    assert!(
        e.contains("t.jsonl:1: input_length must be a positive"),
        "{e}"
    );
    assert!(err(&["lab", "ab", "--speedup", "0"]).contains("--speedup"));
}
