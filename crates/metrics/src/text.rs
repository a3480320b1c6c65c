//! Plain-text renderers: the `vllm bench serve` report, a compact percentile table and the A/B
//! comparison table with its verdict.

use std::fmt::Write;

use crate::stats::Stats;
use crate::summary::Summary;

const MS: f64 = 1000.0;

/// Display value of a rate or time, or `n/a`.
fn fmt_opt(v: Option<f64>, decimals: usize) -> String {
    match v {
        Some(v) if v.is_finite() => format!("{v:.decimals$}"),
        _ => "n/a".to_string(),
    }
}

/// `vllm bench serve` row: label padded to 40, value left-aligned in 10 (trailing spaces kept,
/// like Python's `"{:<40} {:<10}"`).
fn row(out: &mut String, label: &str, value: impl std::fmt::Display) {
    let _ = writeln!(out, "{:<40} {:<10}", label, value.to_string());
}

fn section(out: &mut String, title: &str) {
    let _ = writeln!(out, "{title:-^50}");
}

fn latency_section(out: &mut String, title: &str, abbr: &str, s: Option<&Stats>) {
    section(out, title);
    let ms = s.map(|s| s.scaled(MS));
    row(
        out,
        &format!("Mean {abbr} (ms):"),
        fmt_opt(ms.map(|s| s.mean), 2),
    );
    row(
        out,
        &format!("Median {abbr} (ms):"),
        fmt_opt(ms.map(|s| s.p50), 2),
    );
    row(
        out,
        &format!("P99 {abbr} (ms):"),
        fmt_opt(ms.map(|s| s.p99), 2),
    );
}

/// The final report in `vllm bench serve`'s layout, so users can diff it against old runs.
/// `extra` lines (e.g. `("Maximum request concurrency:", "64")`, `("Request rate configured
/// (RPS):", "10.00")`) go right after "Failed requests", where vLLM prints its configuration.
/// Switchyard's additions (goodput share, prefix cache, KV transfer, queueing, dispatch lag,
/// errors by kind) follow vLLM's sections, before the closing rule. Statistics that are
/// undefined (e.g. nothing completed) print as `n/a`, never as 0.
pub fn render_vllm_report(s: &Summary, extra: &[(&str, String)]) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "{:=^50}", " Serving Benchmark Result ");
    row(&mut out, "Successful requests:", s.completed);
    row(&mut out, "Failed requests:", s.failed);
    for (k, v) in extra {
        row(&mut out, k, v);
    }
    row(&mut out, "Benchmark duration (s):", fmt_opt(s.duration, 2));
    row(&mut out, "Total input tokens:", s.total_input_tokens);
    row(&mut out, "Total generated tokens:", s.total_output_tokens);
    row(
        &mut out,
        "Request throughput (req/s):",
        fmt_opt(s.request_throughput, 2),
    );
    if s.goodput.is_some() {
        row(
            &mut out,
            "Request goodput (req/s):",
            fmt_opt(s.goodput_rate(), 2),
        );
    }
    row(
        &mut out,
        "Output token throughput (tok/s):",
        fmt_opt(s.output_throughput, 2),
    );
    row(
        &mut out,
        "Peak output token throughput (tok/s):",
        fmt_opt(s.peak_output_throughput, 2),
    );
    row(
        &mut out,
        "Peak concurrent requests:",
        format!("{:.2}", s.peak_concurrency as f64),
    );
    row(
        &mut out,
        "Total token throughput (tok/s):",
        fmt_opt(s.total_token_throughput, 2),
    );
    latency_section(&mut out, "Time to First Token", "TTFT", s.ttft.as_ref());
    latency_section(
        &mut out,
        "Time per Output Token (excl. 1st token)",
        "TPOT",
        s.tpot.as_ref(),
    );
    latency_section(&mut out, "Inter-token Latency", "ITL", s.itl.as_ref());
    latency_section(&mut out, "End-to-end Latency", "E2EL", s.e2e.as_ref());

    if let Some(g) = &s.goodput {
        section(&mut out, "Goodput");
        row(&mut out, "SLO:", g.slo.describe());
        row(&mut out, "Good requests:", g.good);
        row(
            &mut out,
            "Goodput (% of requests):",
            fmt_opt(g.fraction.map(|f| f * 100.0), 2),
        );
    }
    if let Some(h) = s.prefix_cache_hit_rate {
        section(&mut out, "Prefix Cache");
        row(&mut out, "Cached input tokens:", s.total_cached_tokens);
        row(
            &mut out,
            "Prefix cache hit rate (%):",
            format!("{:.2}", h * 100.0),
        );
    }
    if s.kv_transfer.is_some() {
        latency_section(
            &mut out,
            "KV Transfer",
            "KV transfer",
            s.kv_transfer.as_ref(),
        );
    }
    if s.queueing.is_some() {
        latency_section(&mut out, "Engine Queueing", "queueing", s.queueing.as_ref());
    }
    let lagged = s.dispatch_lag.is_some_and(|l| l.max > 0.0 || l.min < 0.0);
    if lagged {
        latency_section(
            &mut out,
            "Dispatch Lag (sent - scheduled)",
            "lag",
            s.dispatch_lag.as_ref(),
        );
        let p99 = |x: &Option<Stats>| fmt_opt(x.map(|x| x.p99 * MS), 2);
        row(
            &mut out,
            "P99 TTFT from scheduled (ms):",
            p99(&s.ttft_from_scheduled),
        );
        row(
            &mut out,
            "P99 E2EL from scheduled (ms):",
            p99(&s.e2e_from_scheduled),
        );
    }
    if !s.errors.is_empty() {
        section(&mut out, "Errors");
        for (kind, n) in &s.errors {
            row(&mut out, &format!("{kind}:"), n);
        }
    }
    let _ = writeln!(out, "{}", "=".repeat(50));
    if s.requests == 0 {
        out.push_str("No requests were recorded.\n");
    } else if s.completed == 0 {
        out.push_str("No request completed: latency statistics are undefined.\n");
    }
    if s.output_tokens_estimated > 0 {
        let _ = writeln!(
            out,
            "Note: {} of {} successful requests had no server usage; their output tokens were counted by the client.",
            s.output_tokens_estimated, s.completed
        );
    }
    if let Some(l) = s.dispatch_lag
        && l.p99 > 0.001
    {
        let _ = writeln!(
            out,
            "WARNING: dispatch lag p99 is {:.2} ms (> 1 ms): the client fell behind its schedule; compare the from-scheduled latencies.",
            l.p99 * MS
        );
    }
    out
}

/// Compact table: one row per latency, columns count, mean, p50, p90, p99, max (ms).
pub fn render_compact_table(s: &Summary) -> String {
    let mut rows: Vec<(&str, Option<Stats>)> = vec![
        ("TTFT", s.ttft),
        ("TPOT", s.tpot),
        ("ITL (per chunk gap)", s.itl),
        ("E2E", s.e2e),
    ];
    for (name, st) in [
        ("Queueing", s.queueing),
        ("KV transfer", s.kv_transfer),
        ("TTFT from scheduled", s.ttft_from_scheduled),
        ("Dispatch lag", s.dispatch_lag),
    ] {
        // Optional rows only when they carry information.
        let informative = match name {
            "TTFT from scheduled" | "Dispatch lag" => {
                s.dispatch_lag.is_some_and(|l| l.max > 0.0 || l.min < 0.0)
            }
            _ => st.is_some(),
        };
        if informative {
            rows.push((name, st));
        }
    }
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<22}{:>8}{:>11}{:>11}{:>11}{:>11}{:>11}",
        "latency (ms)", "count", "mean", "p50", "p90", "p99", "max"
    );
    for (name, st) in rows {
        match st {
            Some(st) => {
                let m = st.scaled(MS);
                let _ = writeln!(
                    out,
                    "{:<22}{:>8}{:>11.2}{:>11.2}{:>11.2}{:>11.2}{:>11.2}",
                    name, st.count, m.mean, m.p50, m.p90, m.p99, m.max
                );
            }
            None => {
                let _ = writeln!(
                    out,
                    "{:<22}{:>8}{:>11}{:>11}{:>11}{:>11}{:>11}",
                    name, 0, "n/a", "n/a", "n/a", "n/a", "n/a"
                );
            }
        }
    }
    out
}

/// Which direction of a row is better, for the verdict and for colouring.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Better {
    Lower,
    Higher,
    /// Context, not an outcome (e.g. GPU busy fraction, KV transfer time).
    Neither,
}

/// One row of the comparison table, in display units.
#[derive(Debug, Clone, PartialEq)]
pub struct ComparisonRow {
    pub name: String,
    /// One value per run, in display units (ms, %, req/s, tok/s).
    pub values: Vec<Option<f64>>,
    pub decimals: usize,
    /// Suffix printed after each value (e.g. `%`).
    pub suffix: &'static str,
    pub better: Better,
    /// Used by the verdict.
    pub key: bool,
}

impl ComparisonRow {
    pub fn formatted(&self, i: usize) -> String {
        match self.values.get(i).copied().flatten() {
            Some(v) if v.is_finite() => format!("{v:.*}{}", self.decimals, self.suffix),
            _ => "n/a".into(),
        }
    }

    /// `values[i] / values[0]`, when both exist and the base is non-zero.
    pub fn ratio(&self, i: usize) -> Option<f64> {
        let a = self.values.first().copied().flatten()?;
        let b = self.values.get(i).copied().flatten()?;
        (a != 0.0 && a.is_finite() && b.is_finite()).then(|| b / a)
    }
}

/// The rows `lab ab` prints (and the HTML table shows), for any number of runs.
pub fn comparison_rows(runs: &[&Summary]) -> Vec<ComparisonRow> {
    let lat = |name: &str, key: bool, f: &dyn Fn(&Summary) -> Option<f64>| ComparisonRow {
        name: name.to_string(),
        values: runs.iter().map(|s| f(s).map(|v| v * MS)).collect(),
        decimals: 2,
        suffix: "",
        better: Better::Lower,
        key,
    };
    let slo = runs
        .iter()
        .find_map(|s| s.goodput.as_ref())
        .map(|g| g.slo.to_string());
    let mut rows = vec![
        ComparisonRow {
            name: "Requests completed".into(),
            values: runs.iter().map(|s| Some(s.completed as f64)).collect(),
            decimals: 0,
            suffix: "",
            better: Better::Higher,
            key: false,
        },
        ComparisonRow {
            name: "Requests failed".into(),
            values: runs.iter().map(|s| Some(s.failed as f64)).collect(),
            decimals: 0,
            suffix: "",
            better: Better::Lower,
            key: false,
        },
        lat("TTFT mean (ms)", true, &|s| s.ttft.map(|x| x.mean)),
        lat("TTFT p50 (ms)", true, &|s| s.ttft.map(|x| x.p50)),
        lat("TTFT p90 (ms)", false, &|s| s.ttft.map(|x| x.p90)),
        lat("TTFT p99 (ms)", true, &|s| s.ttft.map(|x| x.p99)),
        lat("TPOT mean (ms)", true, &|s| s.tpot.map(|x| x.mean)),
        lat("TPOT p50 (ms)", true, &|s| s.tpot.map(|x| x.p50)),
        lat("TPOT p99 (ms)", true, &|s| s.tpot.map(|x| x.p99)),
        lat("ITL p50 (ms, per gap)", false, &|s| s.itl.map(|x| x.p50)),
        lat("ITL p99 (ms, per gap)", true, &|s| s.itl.map(|x| x.p99)),
        lat("E2E mean (ms)", true, &|s| s.e2e.map(|x| x.mean)),
        lat("E2E p99 (ms)", true, &|s| s.e2e.map(|x| x.p99)),
    ];
    if let Some(slo) = slo {
        rows.push(ComparisonRow {
            name: format!("Goodput (req/s, {slo})"),
            values: runs.iter().map(|s| s.goodput_rate()).collect(),
            decimals: 3,
            suffix: "",
            better: Better::Higher,
            key: true,
        });
        rows.push(ComparisonRow {
            name: "Goodput (% of requests)".into(),
            values: runs
                .iter()
                .map(|s| s.goodput_fraction().map(|f| f * 100.0))
                .collect(),
            decimals: 1,
            suffix: "%",
            better: Better::Higher,
            key: false,
        });
    }
    rows.extend([
        ComparisonRow {
            name: "Output tok/s".into(),
            values: runs.iter().map(|s| s.output_throughput).collect(),
            decimals: 1,
            suffix: "",
            better: Better::Higher,
            key: false,
        },
        ComparisonRow {
            name: "Prefix-cache hit rate".into(),
            values: runs
                .iter()
                .map(|s| s.prefix_cache_hit_rate.map(|f| f * 100.0))
                .collect(),
            decimals: 1,
            suffix: "%",
            better: Better::Higher,
            key: false,
        },
        ComparisonRow {
            name: "GPU busy (mean)".into(),
            values: runs
                .iter()
                .map(|s| s.gpu_busy_fraction.map(|f| f * 100.0))
                .collect(),
            decimals: 1,
            suffix: "%",
            better: Better::Neither,
            key: false,
        },
        ComparisonRow {
            better: Better::Neither,
            ..lat("KV transfer p50 (ms)", false, &|s| {
                s.kv_transfer.map(|x| x.p50)
            })
        },
        ComparisonRow {
            better: Better::Neither,
            ..lat("KV transfer p99 (ms)", false, &|s| {
                s.kv_transfer.map(|x| x.p99)
            })
        },
    ]);
    rows
}

/// Run names for headers: `A`, `B`, ... with the label when there is one.
pub(crate) fn run_letter(i: usize) -> String {
    let mut n = i;
    let mut s = String::new();
    loop {
        s.insert(0, (b'A' + (n % 26) as u8) as char);
        if n < 26 {
            break;
        }
        n = n / 26 - 1;
    }
    s
}

pub(crate) fn run_name(i: usize, s: &Summary) -> String {
    if s.label.is_empty() {
        run_letter(i)
    } else {
        format!("{} ({})", run_letter(i), s.label)
    }
}

/// Side-by-side table: one column per run, then `X/A` ratio columns, then (for exactly two
/// runs) the verdict line.
pub fn render_comparison(runs: &[&Summary]) -> String {
    let rows = comparison_rows(runs);
    let name_w = rows
        .iter()
        .map(|r| r.name.chars().count())
        .max()
        .unwrap_or(6)
        + 2;
    let headers: Vec<String> = (0..runs.len()).map(|i| run_name(i, runs[i])).collect();
    let col_w: Vec<usize> = headers
        .iter()
        .enumerate()
        .map(|(i, h)| {
            rows.iter()
                .map(|r| r.formatted(i).chars().count())
                .chain([h.chars().count()])
                .max()
                .unwrap_or(8)
                .max(8)
                + 2
        })
        .collect();
    let mut out = String::new();
    let _ = write!(out, "{:<name_w$}", "metric");
    for (h, w) in headers.iter().zip(&col_w) {
        let _ = write!(out, "{h:>w$}");
    }
    for i in 1..runs.len() {
        let _ = write!(out, "{:>8}", format!("{}/A", run_letter(i)));
    }
    out.push('\n');
    for r in &rows {
        let _ = write!(out, "{:<name_w$}", r.name);
        for (i, w) in col_w.iter().enumerate() {
            let _ = write!(out, "{:>w$}", r.formatted(i));
        }
        for i in 1..runs.len() {
            let ratio = r.ratio(i).map_or("-".to_string(), |x| format!("{x:.2}x"));
            let _ = write!(out, "{ratio:>8}");
        }
        out.push('\n');
    }
    if let [a, b] = runs {
        let _ = writeln!(out, "\nVerdict: {}", verdict(a, b));
    }
    out
}

/// One honest sentence comparing B with A, from the numbers only. A difference counts when
/// a latency changes by more than 5% or goodput by more than half a percentage point; both
/// directions are reported with the same rules.
pub fn verdict(a: &Summary, b: &Summary) -> String {
    let (na, nb) = (run_name(0, a), run_name(1, b));
    if a.completed == 0 && b.completed == 0 {
        return format!("neither {na} nor {nb} completed any request; nothing to compare.");
    }
    if a.completed == 0 || b.completed == 0 {
        let (none, some, n) = if a.completed == 0 {
            (&na, &nb, b.completed)
        } else {
            (&nb, &na, a.completed)
        };
        return format!("{none} completed no request while {some} completed {n}.");
    }
    let mut parts: Vec<String> = Vec::new();
    if let (Some(fa), Some(fb), Some(g)) = (a.goodput_fraction(), b.goodput_fraction(), &a.goodput)
    {
        let slo = g.slo.describe();
        let (pa, pb) = (fa * 100.0, fb * 100.0);
        if (pb - pa).abs() < 0.5 {
            parts.push(format!(
                "{na} and {nb} have about the same goodput ({pa:.1}% vs {pb:.1}% of requests meet {slo})"
            ));
        } else {
            let (win, lose, pw, pl) = if pb > pa {
                (&nb, &na, pb, pa)
            } else {
                (&na, &nb, pa, pb)
            };
            parts.push(format!(
                "{win} has the higher goodput: {pw:.1}% of requests meet {slo}, vs {pl:.1}% for {lose}"
            ));
        }
    }
    let rows = comparison_rows(&[a, b]);
    let mut faster: Vec<(f64, String)> = Vec::new();
    let mut slower: Vec<(f64, String)> = Vec::new();
    let mut judged = 0;
    for r in rows.iter().filter(|r| r.key && r.better == Better::Lower) {
        let Some(x) = r.ratio(1) else { continue };
        judged += 1;
        let name = r.name.split(" (").next().unwrap_or(&r.name).to_string();
        if x < 0.95 {
            faster.push((x.ln().abs(), format!("{name} {x:.2}x")));
        } else if x > 1.05 {
            slower.push((x.ln().abs(), format!("{name} {x:.2}x")));
        }
    }
    let top = |v: &mut Vec<(f64, String)>| {
        v.sort_by(|x, y| y.0.total_cmp(&x.0));
        let n = v.len();
        let mut s = v
            .iter()
            .take(3)
            .map(|x| x.1.clone())
            .collect::<Vec<_>>()
            .join(", ");
        if n > 3 {
            s.push_str(&format!(" and {} more", n - 3));
        }
        s
    };
    match (faster.is_empty(), slower.is_empty()) {
        (true, true) if judged > 0 => {
            parts.push(format!("{nb}'s latencies are within 5% of {na}'s"))
        }
        (true, true) => {}
        (false, true) => parts.push(format!(
            "{nb} has lower latency on {} of {judged} key metrics (B/A: {})",
            faster.len(),
            top(&mut faster)
        )),
        (true, false) => parts.push(format!(
            "{nb} has higher latency on {} of {judged} key metrics (B/A: {})",
            slower.len(),
            top(&mut slower)
        )),
        (false, false) => parts.push(format!(
            "mixed latency: {nb} is lower on {} (B/A: {}) and higher on {} ({}) of {judged} key metrics",
            faster.len(),
            top(&mut faster),
            slower.len(),
            top(&mut slower)
        )),
    }
    if a.failed != b.failed {
        parts.push(format!(
            "{na} failed {} request(s), {nb} {}",
            a.failed, b.failed
        ));
    }
    let mut s = parts.join("; ");
    s.push('.');
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{RequestRecord, Status};
    use crate::summary::SummaryOptions;

    fn run(label: &str, ttft: f64, tpot: f64, n: u64) -> Summary {
        let recs: Vec<RequestRecord> = (0..n)
            .map(|i| {
                let t0 = i as f64;
                let mut r = RequestRecord::ok(i, t0, t0 + ttft, t0 + ttft + tpot * 10.0, 100, 11);
                r.gaps.push_run(tpot, 10);
                r
            })
            .collect();
        Summary::from_records(
            &recs,
            &SummaryOptions {
                label: label.into(),
                slo: Some("ttft:1000,itl:25".parse().unwrap()),
                span: None,
            },
        )
        .unwrap()
    }

    #[test]
    fn vllm_layout_exact() {
        let s = run("x", 0.5, 0.02, 4);
        let text = render_vllm_report(&s, &[("Maximum request concurrency:", "64".into())]);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0],
            "============ Serving Benchmark Result ============"
        );
        assert_eq!(
            lines[1],
            "Successful requests:                     4         "
        );
        assert_eq!(
            lines[2],
            "Failed requests:                         0         "
        );
        assert_eq!(
            lines[3],
            "Maximum request concurrency:             64        "
        );
        assert!(text.contains("\n---------------Time to First Token----------------\n"));
        assert!(text.contains("\n-----Time per Output Token (excl. 1st token)------\n"));
        assert!(text.contains("\n---------------Inter-token Latency----------------\n"));
        assert!(text.contains("\n----------------End-to-end Latency----------------\n"));
        assert!(text.contains("Mean TTFT (ms):                          500.00    \n"));
        assert!(text.contains("P99 TPOT (ms):                           20.00     \n"));
        assert!(text.contains("Request goodput (req/s):"));
        assert!(text.lines().any(|l| l == "=".repeat(50)));
        for l in &lines {
            if l.starts_with('=') || l.starts_with('-') {
                assert_eq!(l.chars().count(), 50, "{l}");
            }
        }
    }

    #[test]
    fn empty_run_renders_na() {
        let s = Summary::from_records(&[], &SummaryOptions::default()).unwrap();
        let text = render_vllm_report(&s, &[]);
        assert!(text.contains("Mean TTFT (ms):                          n/a"));
        assert!(text.contains("No requests were recorded."));
        assert!(!text.contains("NaN") && !text.contains("inf"));
        let t = render_compact_table(&s);
        assert!(t.contains("n/a") && !t.contains("NaN"));
        let c = render_comparison(&[&s, &s]);
        assert!(c.contains("neither A nor B completed"), "{c}");
    }

    #[test]
    fn failed_only_run() {
        let recs = vec![RequestRecord::failed(
            0,
            0.0,
            1.0,
            5,
            Status::error("http_500", "boom"),
        )];
        let s = Summary::from_records(&recs, &SummaryOptions::default()).unwrap();
        let text = render_vllm_report(&s, &[]);
        assert!(text.contains("No request completed"));
        assert!(text.contains("http_500:"));
    }

    #[test]
    fn comparison_table_and_symmetric_verdict() {
        let a = run("agg", 1.2, 0.030, 10);
        let b = run("disagg", 0.4, 0.020, 10);
        let t = render_comparison(&[&a, &b]);
        assert!(t.contains("A (agg)") && t.contains("B (disagg)") && t.contains("B/A"));
        let ttft = t.lines().find(|l| l.starts_with("TTFT mean")).unwrap();
        assert!(ttft.contains("1200.00") && ttft.contains("400.00") && ttft.ends_with("0.33x"));
        // Goodput: A fails both SLOs (TTFT 1.2 s > 1 s), B meets them.
        let v = verdict(&a, &b);
        assert!(
            v.starts_with("B (disagg) has the higher goodput: 100.0%"),
            "{v}"
        );
        assert!(v.contains("B (disagg) has lower latency"), "{v}");
        // Swapped inputs: the same facts, other way round.
        let v2 = verdict(&b, &a);
        assert!(v2.starts_with("A (disagg) has the higher goodput"), "{v2}");
        assert!(v2.contains("B (agg) has higher latency"), "{v2}");
        // Equal runs.
        let v3 = verdict(&a, &a);
        assert!(
            v3.contains("about the same goodput") && v3.contains("within 5%"),
            "{v3}"
        );
    }

    #[test]
    fn mixed_verdict() {
        let a = run("a", 0.5, 0.020, 10);
        let b = run("b", 0.3, 0.030, 10);
        let v = verdict(&a, &b);
        assert!(v.contains("mixed latency"), "{v}");
        assert!(v.contains("TTFT") && v.contains("TPOT"), "{v}");
    }

    #[test]
    fn letters() {
        assert_eq!(run_letter(0), "A");
        assert_eq!(run_letter(25), "Z");
        assert_eq!(run_letter(26), "AA");
    }
}
