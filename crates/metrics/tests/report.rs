//! End-to-end: synthetic runs -> summaries -> text, JSON and HTML reports.

mod sample;

use switchyard_metrics::{
    ReportRun, RequestRecord, Summary, SummaryOptions, TimeSeries, render_comparison, render_html,
    render_vllm_report,
};

/// A strict little XML well-formedness check for our HTML: every element closed in order
/// (void elements must self-close), quoted attributes, no stray `<`, and `&` only in entities.
/// Returns the element names in document order.
fn check_xmlish(doc: &str) -> Result<Vec<String>, String> {
    let b = doc.as_bytes();
    let mut i = 0;
    let mut stack: Vec<String> = Vec::new();
    let mut seen = Vec::new();
    let check_text = |t: &str, at: usize| -> Result<(), String> {
        let mut rest = t;
        while let Some(p) = rest.find('&') {
            rest = &rest[p + 1..];
            let end = rest.find(';').ok_or(format!("bare & at {at}"))?;
            let ent = &rest[..end];
            let ok = matches!(ent, "amp" | "lt" | "gt" | "quot" | "#39")
                || (ent.starts_with('#') && ent[1..].chars().all(|c| c.is_ascii_digit()));
            if !ok {
                return Err(format!("bad entity &{ent}; at {at}"));
            }
        }
        if t.contains('>') {
            return Err(format!("raw > in text at {at}"));
        }
        Ok(())
    };
    while i < b.len() {
        if b[i] != b'<' {
            let next = doc[i..].find('<').map_or(b.len(), |p| i + p);
            check_text(&doc[i..next], i)?;
            i = next;
            continue;
        }
        if doc[i..].starts_with("<!DOCTYPE") {
            i += doc[i..].find('>').ok_or("unclosed doctype")? + 1;
            continue;
        }
        if doc[i..].starts_with("<!--") {
            i += doc[i..].find("-->").ok_or("unclosed comment")? + 3;
            continue;
        }
        // Find the end of the tag, honouring quotes.
        let mut j = i + 1;
        let mut quote: Option<u8> = None;
        while j < b.len() {
            match (quote, b[j]) {
                (None, b'"') | (None, b'\'') => quote = Some(b[j]),
                (Some(q), c) if c == q => quote = None,
                (None, b'<') => return Err(format!("< inside tag at {j}")),
                (None, b'>') => break,
                _ => {}
            }
            j += 1;
        }
        if j >= b.len() {
            return Err(format!("unclosed tag at {i}"));
        }
        let tag = &doc[i + 1..j];
        i = j + 1;
        if let Some(name) = tag.strip_prefix('/') {
            let name = name.trim();
            match stack.pop() {
                Some(open) if open == name => {}
                other => return Err(format!("</{name}> closes {other:?} at {i}")),
            }
            continue;
        }
        let self_closing = tag.ends_with('/');
        let name: String = tag
            .trim_end_matches('/')
            .split(|c: char| c.is_whitespace())
            .next()
            .unwrap_or("")
            .to_string();
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric()) {
            return Err(format!("bad tag name {name:?} at {i}"));
        }
        seen.push(name.clone());
        if self_closing {
            continue;
        }
        if matches!(
            name.as_str(),
            "meta" | "br" | "link" | "img" | "hr" | "input"
        ) {
            return Err(format!("void element <{name}> must self-close"));
        }
        if name == "style" {
            let end = doc[i..].find("</style>").ok_or("unclosed style")?;
            i += end + "</style>".len();
            continue;
        }
        stack.push(name);
    }
    if !stack.is_empty() {
        return Err(format!("unclosed elements {stack:?}"));
    }
    Ok(seen)
}

fn count(names: &[String], n: &str) -> usize {
    names.iter().filter(|x| *x == n).count()
}

struct Fixture {
    a: Vec<RequestRecord>,
    b: Vec<RequestRecord>,
    sa: Summary,
    sb: Summary,
    ta: Vec<TimeSeries>,
    tb: Vec<TimeSeries>,
}

fn fixture() -> Fixture {
    let a = sample::run(800, 4.0, &sample::agg(), 11);
    let b = sample::run(800, 4.0, &sample::disagg(), 11);
    let slo = Some("ttft:2000,itl:25".parse().unwrap());
    let sa = Summary::from_records(
        &a,
        &SummaryOptions {
            label: "agg <rr> & co".into(),
            slo: slo.clone(),
            span: None,
        },
    )
    .unwrap();
    let sb = Summary::from_records(
        &b,
        &SummaryOptions {
            label: "disagg".into(),
            slo,
            span: None,
        },
    )
    .unwrap();
    let ta = sample::series(&["w0", "w1", "w2"], 1, sa.start.unwrap(), sa.end.unwrap());
    let tb = sample::series(&["p0", "d0"], 2, sb.start.unwrap(), sb.end.unwrap());
    Fixture {
        a,
        b,
        sa,
        sb,
        ta,
        tb,
    }
}

#[test]
fn ab_report_is_wellformed_with_expected_charts() {
    let f = fixture();
    let html = render_html(
        "A/B <test>",
        &[
            ReportRun {
                summary: &f.sa,
                records: &f.a,
                series: &f.ta,
            },
            ReportRun {
                summary: &f.sb,
                records: &f.b,
                series: &f.tb,
            },
        ],
    );
    let names = check_xmlish(&html).unwrap_or_else(|e| panic!("{e}"));
    // 3 CDFs + TTFT over time + SLA over time + (queue, KV) x 2 runs.
    assert_eq!(count(&names, "svg"), 9);
    // Comparison + one statistics table per run + A's errors by kind.
    assert_eq!(count(&names, "table"), 4);
    assert!(html.contains("agg &lt;rr&gt; &amp; co"));
    assert!(html.contains("Verdict:"));
    assert!(!html.contains("NaN") && !html.contains("inf<"));
    // Self-contained: no scripts, no remote resources.
    assert!(!html.contains("<script"));
    for needle in ["src=", "href=", "@import", "url("] {
        assert!(!html.contains(needle), "external reference {needle}");
    }
    // The only URL allowed is the SVG namespace.
    assert_eq!(
        html.matches("http").count(),
        html.matches("http://www.w3.org/2000/svg").count()
    );
}

#[test]
fn single_run_and_empty_run_reports() {
    let f = fixture();
    let html = render_html(
        "one",
        &[ReportRun {
            summary: &f.sb,
            records: &f.b,
            series: &[],
        }],
    );
    let names = check_xmlish(&html).unwrap();
    assert_eq!(count(&names, "svg"), 5);
    assert!(!html.contains("Verdict:"));

    let empty = Summary::from_records(&[], &SummaryOptions::default()).unwrap();
    let html = render_html(
        "nothing",
        &[ReportRun {
            summary: &empty,
            records: &[],
            series: &[],
        }],
    );
    let names = check_xmlish(&html).unwrap();
    assert_eq!(count(&names, "svg"), 4); // no SLO: no SLA chart
    assert!(html.contains("no data") && !html.contains("NaN"));

    let html = render_html("none", &[]);
    check_xmlish(&html).unwrap();

    let html = switchyard_metrics::render_html_with_notes(
        "notes",
        &["trace: conversation <12,031 requests> & hash 0xabc".to_string()],
        &[ReportRun {
            summary: &f.sb,
            records: &f.b,
            series: &[],
        }],
    );
    check_xmlish(&html).unwrap();
    assert!(html.contains("&lt;12,031 requests&gt; &amp; hash"));
}

#[test]
fn three_runs_compare_against_the_first() {
    let f = fixture();
    let runs = [&f.sa, &f.sb, &f.sa];
    let t = render_comparison(&runs);
    assert!(t.lines().next().unwrap().contains("B/A") && t.contains("C/A"));
    assert!(!t.contains("Verdict"));
    let html = render_html(
        "three",
        &[
            ReportRun {
                summary: &f.sa,
                records: &f.a,
                series: &[],
            },
            ReportRun {
                summary: &f.sb,
                records: &f.b,
                series: &[],
            },
            ReportRun {
                summary: &f.sa,
                records: &f.a,
                series: &[],
            },
        ],
    );
    check_xmlish(&html).unwrap();
    assert!(html.contains("<th>C/A</th>"));
}

#[test]
fn records_and_summary_roundtrip_through_json() {
    let f = fixture();
    let jsonl: String =
        f.a.iter()
            .map(|r| serde_json::to_string(r).unwrap() + "\n")
            .collect();
    let back: Vec<RequestRecord> = jsonl
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(back == f.a, "records changed through JSON");
    let again = Summary::from_records(
        &back,
        &SummaryOptions {
            label: f.sa.label.clone(),
            slo: f.sa.goodput.as_ref().map(|g| g.slo.clone()),
            span: None,
        },
    )
    .unwrap();
    assert_eq!(again, f.sa);
    let json = serde_json::to_string(&f.sa).unwrap();
    assert_eq!(serde_json::from_str::<Summary>(&json).unwrap(), f.sa);
    // The text report is a pure function of the summary.
    assert_eq!(
        render_vllm_report(&again, &[]),
        render_vllm_report(&f.sa, &[])
    );
}

/// Let a real browser parse the report: the DOM it builds must hold every chart. Skipped
/// (with a message) when no `chromium` is installed.
#[test]
fn chromium_parses_the_report() {
    let Some(chromium) = switchyard_testkit::chromium() else {
        switchyard_testkit::skip(
            "metrics report: chromium_parses_the_report",
            "no chromium on PATH",
            "bash scripts/test.sh (installs Debian's chromium)",
        );
        return;
    };
    let f = fixture();
    let html = render_html(
        "browser",
        &[
            ReportRun {
                summary: &f.sa,
                records: &f.a,
                series: &f.ta,
            },
            ReportRun {
                summary: &f.sb,
                records: &f.b,
                series: &f.tb,
            },
        ],
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("report.html");
    std::fs::write(&path, html).unwrap();
    let profile = dir.path().join("profile");
    let out = std::process::Command::new(chromium)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg("--dump-dom")
        .arg(format!("file://{}", path.display()))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dom = String::from_utf8_lossy(&out.stdout);
    assert_eq!(dom.matches("<svg").count(), 9, "browser DOM lacks charts");
    assert!(dom.matches("<polyline").count() >= 9);
    assert!(dom.contains("Verdict:"));
}

#[test]
fn warnings_turn_off_the_colours_and_qualify_the_verdict() {
    let f = fixture();
    let runs = [
        ReportRun {
            summary: &f.sa,
            records: &f.a,
            series: &f.ta,
        },
        ReportRun {
            summary: &f.sb,
            records: &f.b,
            series: &f.tb,
        },
    ];
    let plain = render_html("t", &runs);
    assert!(plain.contains("class=\"better\"") || plain.contains("class=\"worse\""));
    let warned = switchyard_metrics::render_html_with_warnings(
        "t",
        &[],
        &["the runs have different request counts <x>".into()],
        &runs,
    );
    check_xmlish(&warned).unwrap_or_else(|e| panic!("{e}"));
    assert!(warned.contains(
        "<p class=\"warn\"><b>Warning:</b> the runs have different request counts &lt;x&gt;</p>"
    ));
    assert!(!warned.contains("class=\"better\"") && !warned.contains("class=\"worse\""));
    assert!(warned.contains("<b>Verdict:</b> not a like-for-like comparison"));
}
