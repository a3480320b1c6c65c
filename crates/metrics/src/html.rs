//! Self-contained HTML report (inline CSS + SVG; no scripts, no network, no web fonts) for one
//! run (`bench`) or N runs compared (`lab ab`, `switchyard report DIR DIR`).

use std::collections::BTreeMap;
use std::fmt::Write;

use serde::{Deserialize, Serialize};

use crate::record::RequestRecord;
use crate::stats::{Stats, percentile_sorted};
use crate::summary::Summary;
use crate::svg::{Line, LineChart, color, escape};
use crate::text::{Better, comparison_rows, render_vllm_report, run_letter, run_name, verdict};

/// A named gauge over time, e.g. the queue depth of one worker. Series with the same `chart`
/// are drawn together in one chart per run (e.g. chart `"Queue depth (requests)"`, one line per
/// worker). Times use the records' clock; the report shifts them to the run's start.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TimeSeries {
    /// Chart title, shared by the series drawn together; also the y-axis label.
    pub chart: String,
    /// Legend entry (e.g. `decode-1`).
    pub name: String,
    /// `(time in seconds, value)`, ascending in time. Drawn as a step function (the value
    /// holds until the next sample).
    pub points: Vec<(f64, f64)>,
}

/// One run to report: its summary, its records (for distributions and timelines) and any
/// gauges the producer sampled.
#[derive(Debug, Clone, Copy)]
pub struct ReportRun<'a> {
    pub summary: &'a Summary,
    pub records: &'a [RequestRecord],
    pub series: &'a [TimeSeries],
}

const STYLE: &str = r#"
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,Helvetica,Arial,sans-serif;color:#222;background:#f6f7f9;margin:0}
main{max-width:1180px;margin:0 auto;padding:24px}
h1{font-size:22px;margin:0 0 4px}
h2{font-size:17px;margin:28px 0 10px;border-bottom:1px solid #ddd;padding-bottom:4px}
h3{font-size:14px;margin:16px 0 8px}
p{margin:6px 0}
.muted{color:#666;font-size:13px}
.note{font-size:13px;color:#333}
.verdict{background:#fff;border-left:4px solid #1f77b4;padding:10px 14px;margin:12px 0;font-size:14px}
table{border-collapse:collapse;background:#fff;font-size:13px;margin:8px 0}
th,td{padding:4px 10px;border-bottom:1px solid #eee;text-align:right;white-space:nowrap}
th:first-child,td:first-child{text-align:left}
thead th{background:#eef1f5;font-weight:600}
td.better{color:#17803d;font-weight:600}
td.worse{color:#c0392b;font-weight:600}
td.na{text-align:center;color:#888}
.warn{background:#fff4e5;border-left:4px solid #e67e22;padding:8px 14px;margin:10px 0;font-size:14px}
.charts{display:grid;grid-template-columns:repeat(auto-fit,minmax(520px,1fr));gap:14px}
.chart{background:#fff;border:1px solid #e3e3e3;border-radius:4px;padding:6px}
.chart svg{width:100%;height:auto;display:block}
details{margin:8px 0}
pre{background:#fff;border:1px solid #e3e3e3;padding:8px 12px;font-size:12px;overflow-x:auto;display:inline-block;margin:8px 0}
summary{cursor:pointer;font-weight:600;font-size:14px}
dl{font-size:13px}
dt{font-weight:600;margin-top:6px}
dd{margin-left:16px}
"#;

/// Render the report. With one run: its statistics and charts. With several: the comparison
/// table (ratios against the first run, colour-coded), the verdict when there are exactly two,
/// overlaid distributions and timelines, and each run's gauges.
///
/// Charts, in order: CDFs of TTFT, TPOT and E2E (all runs); TTFT p50/p99 over time; share of
/// requests meeting the SLA over time (when any run has SLOs); then per run, one chart per
/// distinct [`TimeSeries::chart`].
pub fn render_html(title: &str, runs: &[ReportRun]) -> String {
    render_html_with_notes(title, &[], runs)
}

/// [`render_html`] with free-text notes shown under the title, one paragraph each (e.g. each
/// deployment's description, the trace and its hash, the tool version, the command line).
pub fn render_html_with_notes(title: &str, notes: &[String], runs: &[ReportRun]) -> String {
    render_html_with_warnings(title, notes, &[], runs)
}

/// [`render_html_with_notes`] with warnings shown prominently above the summary. Warnings mean
/// the runs are not a like-for-like comparison (e.g. different workloads): the ratio column is
/// then not colour-coded (no green "better") and the verdict says so first.
pub fn render_html_with_warnings(
    title: &str,
    notes: &[String],
    warnings: &[String],
    runs: &[ReportRun],
) -> String {
    let mut h = String::with_capacity(256 * 1024);
    let _ = write!(
        h,
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\"/>\n<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"/>\n<title>{}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n<main>\n<h1>{}</h1>\n",
        escape(title),
        escape(title)
    );
    let summaries: Vec<&Summary> = runs.iter().map(|r| r.summary).collect();
    for n in notes {
        let _ = writeln!(h, "<p class=\"note\">{}</p>", escape(n));
    }

    // Run list.
    h.push_str("<p class=\"muted\">");
    for (i, r) in runs.iter().enumerate() {
        let s = r.summary;
        if i > 0 {
            h.push_str("<br/>");
        }
        let _ = write!(
            h,
            "<b>{}</b>: {} requests ({} completed, {} failed) over {}",
            escape(&run_name(i, s)),
            s.requests,
            s.completed,
            s.failed,
            s.duration.map_or("n/a".into(), |d| format!("{d:.1} s"))
        );
        if let Some(g) = &s.goodput {
            let _ = write!(h, "; SLA {}", escape(&g.slo.describe()));
        }
    }
    if runs.is_empty() {
        h.push_str("No runs.");
    }
    h.push_str("</p>\n");

    for (i, s) in summaries.iter().enumerate() {
        if s.completed == 0 {
            let _ = writeln!(
                h,
                "<p class=\"warn\">{}: no request completed ({} recorded); its latency statistics are undefined.</p>",
                escape(&run_name(i, s)),
                s.requests
            );
        }
    }

    for w in warnings {
        let _ = writeln!(h, "<p class=\"warn\"><b>Warning:</b> {}</p>", escape(w));
    }

    // Comparison / key-figures table.
    h.push_str("<h2 id=\"summary\">Summary</h2>\n");
    comparison_table(&mut h, &summaries, warnings.is_empty());
    if let [a, b] = summaries.as_slice() {
        let _ = writeln!(
            h,
            "<p class=\"verdict\"><b>Verdict:</b> {}{}</p>",
            if warnings.is_empty() {
                ""
            } else {
                "not a like-for-like comparison (see the warning above). "
            },
            escape(&verdict(a, b))
        );
    }
    for (i, s) in summaries.iter().enumerate() {
        let _ = writeln!(
            h,
            "<details{}><summary>Statistics: {}</summary>",
            if summaries.len() == 1 {
                " open=\"open\""
            } else {
                ""
            },
            escape(&run_name(i, s))
        );
        stats_table(&mut h, s);
        let _ = writeln!(h, "<pre>{}</pre>", escape(&render_vllm_report(s, &[])));
        if !s.errors.is_empty() {
            h.push_str("<table><thead><tr><th>error kind</th><th>count</th></tr></thead><tbody>");
            for (k, n) in &s.errors {
                let _ = write!(h, "<tr><td>{}</td><td>{n}</td></tr>", escape(k));
            }
            h.push_str("</tbody></table>");
        }
        h.push_str("</details>\n");
    }

    // Distributions.
    h.push_str("<h2 id=\"distributions\">Latency distributions</h2>\n<div class=\"charts\">\n");
    let ms = |v: f64| v * 1000.0;
    let cdf = |name: &str, f: &dyn Fn(&RequestRecord) -> Option<f64>| -> LineChart {
        let lines: Vec<Line> = runs
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let mut v: Vec<f64> = r
                    .records
                    .iter()
                    .filter(|x| x.is_ok())
                    .filter_map(f)
                    .map(ms)
                    .collect();
                v.sort_unstable_by(f64::total_cmp);
                Line::new(run_name(i, r.summary), color(i), cdf_points(&v))
            })
            .collect();
        LineChart {
            title: format!("{name} CDF"),
            x_label: format!("{name} (ms)"),
            y_label: "fraction of requests".into(),
            log_x: wide_range(&lines),
            y_range: Some((0.0, 1.0)),
            lines,
            ..Default::default()
        }
    };
    for chart in [
        cdf("TTFT", &|r| r.ttft()),
        cdf("TPOT", &|r| r.tpot()),
        cdf("E2E latency", &|r| Some(r.e2e())),
    ] {
        push_chart(&mut h, &chart);
    }
    h.push_str("</div>\n");

    // Timelines.
    h.push_str("<h2 id=\"over-time\">Over time</h2>\n<div class=\"charts\">\n");
    let origins: Vec<f64> = runs.iter().map(origin).collect();
    let span = runs
        .iter()
        .zip(&origins)
        .flat_map(|(r, o)| r.records.iter().map(move |x| x.scheduled - o))
        .fold(0.0f64, f64::max);
    let max_n = runs.iter().map(|r| r.records.len()).max().unwrap_or(0);
    // About 20+ requests per bin, at most 60 bins.
    let nbins = (max_n / 20).clamp(1, 60);
    let bin_w = if span > 0.0 { span / nbins as f64 } else { 1.0 };
    let bin_of = |t: f64| ((t / bin_w) as usize).min(nbins - 1);
    let center = |b: usize| (b as f64 + 0.5) * bin_w;

    let mut ttft_lines = Vec::new();
    for (i, (r, o)) in runs.iter().zip(&origins).enumerate() {
        let mut bins: Vec<Vec<f64>> = vec![Vec::new(); nbins];
        for x in r.records.iter().filter(|x| x.is_ok()) {
            if let Some(t) = x.ttft() {
                bins[bin_of(x.scheduled - o)].push(ms(t));
            }
        }
        let mut p50 = Vec::new();
        let mut p99 = Vec::new();
        for (b, v) in bins.iter_mut().enumerate() {
            v.sort_unstable_by(f64::total_cmp);
            if let (Some(a), Some(c)) = (percentile_sorted(v, 50.0), percentile_sorted(v, 99.0)) {
                p50.push((center(b), a));
                p99.push((center(b), c));
            }
        }
        let letter = run_letter(i);
        ttft_lines.push(Line::new(format!("{letter} p50"), color(i), p50));
        ttft_lines.push(Line {
            dashed: true,
            ..Line::new(format!("{letter} p99"), color(i), p99)
        });
    }
    let ttft_time = LineChart {
        title: "TTFT over time (by arrival)".into(),
        x_label: "time since start (s)".into(),
        x_from_zero: true,
        y_label: "TTFT (ms)".into(),
        log_y: wide_range_y(&ttft_lines),
        lines: ttft_lines,
        ..Default::default()
    };
    push_chart(&mut h, &ttft_time);

    if runs.iter().any(|r| r.summary.goodput.is_some()) {
        let mut lines = Vec::new();
        for (i, (r, o)) in runs.iter().zip(&origins).enumerate() {
            let Some(g) = &r.summary.goodput else {
                continue;
            };
            let mut all = vec![0u32; nbins];
            let mut good = vec![0u32; nbins];
            for x in r.records {
                let b = bin_of(x.scheduled - o);
                all[b] += 1;
                if g.slo.is_met(x) {
                    good[b] += 1;
                }
            }
            let pts = (0..nbins)
                .filter(|&b| all[b] > 0)
                .map(|b| (center(b), 100.0 * f64::from(good[b]) / f64::from(all[b])))
                .collect();
            lines.push(Line::new(run_name(i, r.summary), color(i), pts));
        }
        let slo_text = runs
            .iter()
            .find_map(|r| r.summary.goodput.as_ref())
            .map(|g| g.slo.describe())
            .unwrap_or_default();
        push_chart(
            &mut h,
            &LineChart {
                title: format!("Requests meeting the SLA ({slo_text})"),
                x_label: "time since start (s)".into(),
                x_from_zero: true,
                y_label: "% of requests (by arrival)".into(),
                y_range: Some((0.0, 100.0)),
                lines,
                ..Default::default()
            },
        );
    }
    h.push_str("</div>\n");

    // Gauges sampled by the producer, one chart per (run, chart title).
    if runs.iter().any(|r| !r.series.is_empty()) {
        h.push_str("<h2 id=\"fleet\">Fleet state over time</h2>\n<div class=\"charts\">\n");
        for (i, (r, o)) in runs.iter().zip(&origins).enumerate() {
            let mut groups: BTreeMap<&str, Vec<&TimeSeries>> = BTreeMap::new();
            for s in r.series {
                groups.entry(s.chart.as_str()).or_default().push(s);
            }
            for (chart, series) in groups {
                // Long runs of a jumpy gauge are unreadable as raw steps: average each series
                // over the same time buckets (time-weighted, so it is the mean gauge value).
                let (t0, t1) = series
                    .iter()
                    .flat_map(|s| s.points.iter().map(|p| p.0))
                    .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), t| {
                        (a.min(t), b.max(t))
                    });
                let many = series.iter().any(|s| s.points.len() > 2 * GAUGE_BUCKETS);
                let bucket = (t1 - t0) / GAUGE_BUCKETS as f64;
                let averaged = many && bucket.is_finite() && bucket > 0.0;
                let lines = series
                    .iter()
                    .enumerate()
                    .map(|(j, s)| {
                        let pts = if averaged {
                            bucket_means(&s.points, t0, bucket, GAUGE_BUCKETS)
                        } else {
                            s.points.clone()
                        };
                        Line {
                            step: !averaged,
                            dashed: j >= 10 && (j / 10) % 2 == 1,
                            ..Line::new(
                                s.name.clone(),
                                color(j),
                                pts.iter().map(|&(t, v)| (t - o, v)).collect(),
                            )
                        }
                    })
                    .collect();
                let title = format!("{}: {chart}", run_name(i, r.summary));
                let x_label = if averaged {
                    format!(
                        "time since start (s); mean over {} buckets",
                        fmt_secs(bucket)
                    )
                } else {
                    "time since start (s)".to_string()
                };
                push_chart(
                    &mut h,
                    &LineChart {
                        title,
                        x_label,
                        x_from_zero: true,
                        y_label: chart.to_string(),
                        y_from_zero: true,
                        lines,
                        ..Default::default()
                    },
                );
            }
        }
        h.push_str("</div>\n");
    }

    h.push_str(DEFINITIONS);
    h.push_str("</main>\n</body>\n</html>\n");
    h
}

const DEFINITIONS: &str = r#"<h2 id="definitions">Definitions</h2>
<dl>
<dt>TTFT</dt><dd>First token time minus send time (arrival time in simulation).</dd>
<dt>TPOT</dt><dd>Per request, first token excluded: (E2E - TTFT) / (output tokens - 1), for at least 2 output tokens. AIPerf calls it inter_token_latency; it is the "itl" of SLA strings.</dd>
<dt>ITL (per gap)</dt><dd>Every gap between consecutive streamed chunks, pooled over requests (vLLM's ITL).</dd>
<dt>E2E</dt><dd>Last token time minus send time.</dd>
<dt>Goodput</dt><dd>Successful requests meeting every SLO (value &lt;= threshold), per second of the run; the percentage counts failed requests as missing the SLA.</dd>
<dt>Throughput span</dt><dd>First send to last finish over all requests.</dd>
<dt>Statistics</dt><dd>Mean, population standard deviation, percentiles with linear interpolation (numpy's default).</dd>
</dl>
"#;

/// Buckets a gauge chart is averaged into when its series are long.
const GAUGE_BUCKETS: usize = 120;

fn fmt_secs(s: f64) -> String {
    if s >= 10.0 {
        format!("{s:.0} s")
    } else if s >= 1.0 {
        format!("{s:.1} s")
    } else {
        format!("{:.0} ms", s * 1000.0)
    }
}

/// Time-weighted mean of a step function (each value holds until the next sample) over
/// `n` buckets of width `w` from `t0`; points at bucket centres, buckets with no coverage
/// skipped.
fn bucket_means(points: &[(f64, f64)], t0: f64, w: f64, n: usize) -> Vec<(f64, f64)> {
    let mut area = vec![0.0; n];
    let mut cover = vec![0.0; n];
    for seg in points.windows(2) {
        let ((a, v), (b, _)) = (seg[0], seg[1]);
        if !(b > a && v.is_finite()) {
            continue;
        }
        // Walk the buckets the segment covers; the bucket index advances explicitly so that
        // rounding at bucket edges cannot stall or drop the rest of the segment.
        let mut t = a;
        let mut k = (((a - t0) / w).max(0.0) as usize).min(n - 1);
        loop {
            let edge = if k == n - 1 {
                b
            } else {
                t0 + (k + 1) as f64 * w
            };
            let end = b.min(edge).max(t);
            area[k] += v * (end - t);
            cover[k] += end - t;
            t = end;
            if t >= b || k == n - 1 {
                break;
            }
            k += 1;
        }
    }
    (0..n)
        .filter(|&k| cover[k] > 0.0)
        .map(|k| (t0 + (k as f64 + 0.5) * w, area[k] / cover[k]))
        .collect()
}

fn push_chart(h: &mut String, c: &LineChart) {
    h.push_str("<div class=\"chart\">");
    h.push_str(&c.to_svg());
    h.push_str("</div>\n");
}

/// Time zero of a run: its earliest scheduled send (or first sample when it has no records).
fn origin(r: &ReportRun) -> f64 {
    r.records
        .iter()
        .map(|x| x.scheduled.min(x.sent))
        .reduce(f64::min)
        .or_else(|| {
            r.series
                .iter()
                .flat_map(|s| s.points.iter().map(|p| p.0))
                .reduce(f64::min)
        })
        .unwrap_or(0.0)
}

/// Empirical CDF of sorted values, reduced to at most ~600 points with extra density in the
/// upper tail (where the p99 lives).
fn cdf_points(sorted: &[f64]) -> Vec<(f64, f64)> {
    let n = sorted.len();
    if n == 0 {
        return Vec::new();
    }
    let mut idx: Vec<usize> = Vec::with_capacity(600);
    for i in 0..=400 {
        idx.push(((n - 1) as f64 * i as f64 / 400.0).round() as usize);
    }
    for i in 0..=200 {
        idx.push(((n - 1) as f64 * (0.95 + 0.05 * i as f64 / 200.0)).round() as usize);
    }
    idx.sort_unstable();
    idx.dedup();
    idx.into_iter()
        .map(|k| (sorted[k], (k + 1) as f64 / n as f64))
        .collect()
}

/// Use a log axis when positive values span more than ~1.5 decades.
fn wide_range(lines: &[Line]) -> bool {
    spread(lines.iter().flat_map(|l| l.points.iter().map(|p| p.0)))
}

fn wide_range_y(lines: &[Line]) -> bool {
    spread(lines.iter().flat_map(|l| l.points.iter().map(|p| p.1)))
}

fn spread(v: impl Iterator<Item = f64>) -> bool {
    let (mut lo, mut hi) = (f64::INFINITY, 0.0f64);
    for x in v.filter(|x| *x > 0.0 && x.is_finite()) {
        lo = lo.min(x);
        hi = hi.max(x);
    }
    lo.is_finite() && hi / lo > 30.0
}

/// `colour`: mark ratios better/worse (only when the runs are comparable).
fn comparison_table(h: &mut String, runs: &[&Summary], colour: bool) {
    let rows = comparison_rows(runs);
    h.push_str("<table><thead><tr><th>metric</th>");
    for (i, s) in runs.iter().enumerate() {
        let _ = write!(h, "<th>{}</th>", escape(&run_name(i, s)));
    }
    for i in 1..runs.len() {
        let _ = write!(h, "<th>{}/A</th>", run_letter(i));
    }
    h.push_str("</tr></thead><tbody>\n");
    for r in &rows {
        let _ = write!(h, "<tr><td>{}</td>", escape(&r.name));
        for i in 0..runs.len() {
            let _ = write!(h, "<td>{}</td>", escape(&r.formatted(i)));
        }
        for i in 1..runs.len() {
            match r.ratio(i) {
                Some(x) => {
                    let class = match r.better {
                        _ if !colour => "",
                        Better::Lower if x < 0.95 => " class=\"better\"",
                        Better::Lower if x > 1.05 => " class=\"worse\"",
                        Better::Higher if x > 1.05 => " class=\"better\"",
                        Better::Higher if x < 0.95 => " class=\"worse\"",
                        _ => "",
                    };
                    let _ = write!(h, "<td{class}>{x:.2}x</td>");
                }
                None => h.push_str("<td>-</td>"),
            }
        }
        h.push_str("</tr>\n");
    }
    h.push_str("</tbody></table>\n");
}

fn stats_table(h: &mut String, s: &Summary) {
    h.push_str("<table><thead><tr><th>latency (ms)</th><th>count</th><th>mean</th><th>std</th><th>min</th><th>p50</th><th>p90</th><th>p95</th><th>p99</th><th>max</th></tr></thead><tbody>\n");
    let rows: [(&str, Option<Stats>); 9] = [
        ("TTFT", s.ttft),
        ("TPOT", s.tpot),
        ("ITL (per chunk gap)", s.itl),
        ("E2E", s.e2e),
        ("TTFT from scheduled send", s.ttft_from_scheduled),
        ("E2E from scheduled send", s.e2e_from_scheduled),
        ("Dispatch lag", s.dispatch_lag),
        ("Engine queueing", s.queueing),
        ("KV transfer", s.kv_transfer),
    ];
    for (name, st) in rows {
        let _ = write!(h, "<tr><td>{name}</td>");
        match st {
            Some(st) => {
                let m = st.scaled(1000.0);
                let _ = write!(
                    h,
                    "<td>{}</td><td>{:.2}</td><td>{:.2}</td><td>{:.2}</td><td>{:.2}</td><td>{:.2}</td><td>{:.2}</td><td>{:.2}</td><td>{:.2}</td>",
                    st.count, m.mean, m.std, m.min, m.p50, m.p90, m.p95, m.p99, m.max
                );
            }
            None => h.push_str("<td>0</td><td colspan=\"8\" class=\"na\">n/a</td>"),
        }
        h.push_str("</tr>\n");
    }
    h.push_str("</tbody></table>\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_means_are_time_weighted() {
        // 0 on [0, 1), 10 on [1, 4), ends at 4: buckets of width 2 -> [0,2): (0*1 + 10*1)/2 = 5,
        // [2,4): 10.
        let pts = [(0.0, 0.0), (1.0, 10.0), (4.0, 3.0)];
        assert_eq!(
            bucket_means(&pts, 0.0, 2.0, 2),
            vec![(1.0, 5.0), (3.0, 10.0)]
        );
        assert!(bucket_means(&[(0.0, 1.0)], 0.0, 1.0, 3).is_empty());
        // One long segment over many buckets whose edges are not exact in binary: every
        // bucket is fully covered with the segment's value.
        let pts = [(0.0, 7.0), (1.0, 0.0)];
        let m = bucket_means(&pts, 0.0, 0.1, 10);
        assert_eq!(m.len(), 10);
        assert!(m.iter().all(|p| (p.1 - 7.0).abs() < 1e-12), "{m:?}");
    }

    #[test]
    fn cdf_points_are_monotone_and_end_at_one() {
        let v: Vec<f64> = (0..10_000).map(f64::from).collect();
        let c = cdf_points(&v);
        assert!(c.len() <= 602);
        assert!(c.windows(2).all(|w| w[0].0 <= w[1].0 && w[0].1 < w[1].1));
        assert_eq!(*c.last().unwrap(), (9999.0, 1.0));
        assert_eq!(c[0], (0.0, 1e-4));
    }
}
