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
        e.contains("t.jsonl:1: input_length must be a number of tokens in 1..="),
        "{e}"
    );
    assert!(err(&["lab", "ab", "--speedup", "0"]).contains("--speedup"));
}

/// A deployment file next to the recipe's A, with `from` replaced by `to`.
fn variant(dir: &Path, name: &str, from: &str, to: &str) -> std::path::PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../recipes/qwen3-32b-h200");
    let text = std::fs::read_to_string(root.join("agg-round-robin.toml")).unwrap();
    assert!(text.contains(from), "{from}");
    let p = dir.join(name);
    std::fs::write(&p, text.replacen(from, to, 1)).unwrap();
    p
}

fn fail(args: &[&str]) -> String {
    let o = switchyard().args(args).output().unwrap();
    assert!(!o.status.success(), "{args:?} should fail");
    let e = String::from_utf8(o.stderr).unwrap();
    assert!(
        !e.contains("panicked") && !e.contains("memory allocation"),
        "{e}"
    );
    e
}

#[test]
fn hostile_deployments_are_clear_errors_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let out = out.to_str().unwrap();
    // count = 10^9: refused at file:line:column, nothing allocated.
    let huge = variant(dir.path(), "huge.toml", "count = 8", "count = 1000000000");
    let e = fail(&["lab", "ab", "--a", huge.to_str().unwrap(), "-o", out]);
    assert!(
        e.contains("huge.toml:15:9: [[group]] #1: count must be in 1..=10000, got 1000000000"),
        "{e}"
    );
    // setup_ms = inf, nic_gb_s = nan: refused with the line, the value printed short.
    for (name, to, want) in [
        (
            "inf.toml",
            "[network]\nsetup_ms = inf\n",
            "[network] setup_ms must be in [0, 10000], got inf",
        ),
        (
            "nan.toml",
            "[network]\nnic_gb_s = nan\n",
            "[network] nic_gb_s must be in [0.1, 10000], got NaN",
        ),
        ("big.toml", "[network]\nnic_gb_s = 1e300\n", "got 1e300"),
    ] {
        let p = dir.path().join(name);
        let text = std::fs::read_to_string(variant(dir.path(), name, "[[group]]", "[[group]]"))
            .unwrap()
            + to;
        std::fs::write(&p, text).unwrap();
        let e = fail(&["lab", "ab", "--a", p.to_str().unwrap(), "-o", out]);
        assert!(e.contains(name) && e.contains(want), "{e}");
        assert!(e.len() < 300, "{e}");
    }
    // tp = 64 on an 8-GPU NVLink domain: named once, by file, not by the deployment's name.
    let tp = variant(dir.path(), "tp64.toml", "tp = 2", "tp = 64");
    let e = fail(&[
        "lab",
        "ab",
        "--a",
        tp.to_str().unwrap(),
        "--requests",
        "20",
        "-o",
        out,
    ]);
    assert!(
        e.contains("tp64.toml: [[group]] #1 (aggregated): invalid engine configuration: tp 64 exceeds the 8-GPU NVLink domain of H200"),
        "{e}"
    );
    assert_eq!(e.matches("tp 64 exceeds").count(), 1, "printed twice: {e}");
    // A recipe where a deployment is expected, for lab and serve alike.
    let recipe =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../recipes/qwen3-32b-h200/recipe.toml");
    let e = fail(&["lab", "ab", "--a", recipe.to_str().unwrap(), "-o", out]);
    assert!(e.contains("this is a `lab ab` recipe"), "{e}");
    let e = fail(&["serve", "--config", recipe.to_str().unwrap(), "--port", "0"]);
    assert!(e.contains("recipe.toml: this is a `lab ab` recipe"), "{e}");
}

#[test]
fn an_unusable_results_folder_fails_before_simulating() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("a-file");
    std::fs::write(&file, "x").unwrap();
    let started = std::time::Instant::now();
    let e = fail(&["lab", "ab", "-o", file.join("sub").to_str().unwrap()]);
    assert!(
        e.contains("a-file/sub: cannot create the results folder (choose another with -o)"),
        "{e}"
    );
    // The full default run takes seconds; the refusal comes before it.
    assert!(
        started.elapsed().as_secs_f64() < 2.0,
        "{:?}",
        started.elapsed()
    );
}

#[test]
fn default_folders_are_named_by_parameters_and_report_warns_on_different_workloads() {
    let dir = tempfile::tempdir().unwrap();
    let run = |extra: &[&str]| {
        let o = switchyard()
            .current_dir(dir.path())
            .args(["lab", "ab"])
            .args(extra)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    };
    run(&["--requests", "40"]);
    run(&["--requests", "120", "--speedup", "2"]);
    let a = dir.path().join("results/ab-qwen3-32b-h200-n40");
    let b = dir.path().join("results/ab-qwen3-32b-h200-x2-n120");
    assert!(a.join("summary.json").is_file() && b.join("summary.json").is_file());
    // Comparing the two: loud warnings, no green ratios.
    let html = dir.path().join("cmp.html");
    let o = switchyard()
        .args(["report"])
        .arg(&a)
        .arg(&b)
        .arg("-o")
        .arg(&html)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let stderr = String::from_utf8(o.stderr).unwrap();
    let stdout = String::from_utf8(o.stdout).unwrap();
    assert!(
        stderr.contains("warning: the runs have different request counts")
            && stderr.contains("warning: the runs replayed at different speedups")
            && stderr.contains("warning: the lab runs replayed different traces"),
        "{stderr}"
    );
    assert!(
        stdout.starts_with("WARNING: different workloads"),
        "{stdout}"
    );
    let page = std::fs::read_to_string(&html).unwrap();
    assert!(page.contains("<b>Warning:</b> the runs have different request counts"));
    // (Four runs: no verdict line; with two, it is qualified — see the metrics crate's tests.)
    assert!(!page.contains("class=\"better\"") && !page.contains("class=\"worse\""));
    // The same folder twice: no warning.
    let o = switchyard()
        .args(["report"])
        .arg(&a)
        .arg("-o")
        .arg(&html)
        .output()
        .unwrap();
    assert!(!String::from_utf8(o.stderr).unwrap().contains("warning"));
}
