//! Final report: the metrics crate's `vllm bench serve`-style text and compact table, the
//! actual-send vs scheduled-send view, client notes; and the `--out DIR` files.

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::Path;

use serde::Serialize;
use switchyard_metrics::{
    ReportRun, RequestRecord, Stats, Summary, TimeSeries, render_compact_table, render_html,
    render_vllm_report,
};

use crate::args::BenchArgs;
use crate::arrival::Gaps;
use crate::error::BenchError;
use crate::run::ClientStats;

/// Dispatch lag above this is flagged: the client, not the server, shaped the latencies.
pub const LAG_WARN_SECS: f64 = 0.001;

/// Everything a finished (or interrupted) run produced.
#[derive(Debug, Clone, Serialize)]
pub struct BenchOutcome {
    pub summary: Summary,
    #[serde(skip)]
    pub records: Vec<RequestRecord>,
    /// Per record (same order): seconds spent waiting for a `--concurrency` slot before the
    /// send (0 when uncapped). Written to `requests.jsonl` as `client_queue`.
    #[serde(skip)]
    pub client_queue: Vec<f64>,
    pub client: ClientStats,
    pub resolved: Resolved,
    /// The text report (what `switchyard bench` prints).
    #[serde(skip)]
    pub report: String,
}

/// Settings as resolved at run time (defaults filled in).
#[derive(Debug, Clone, Serialize)]
pub struct Resolved {
    pub endpoint_url: String,
    pub model: String,
    pub streaming: bool,
    pub prompt: crate::args::PromptMode,
    pub workload: String,
    pub traffic: String,
    pub output_tokens: &'static str,
}

fn ms(x: f64) -> String {
    format!("{:.2}", x * 1000.0)
}

fn opt_ms(s: Option<&Stats>, f: impl Fn(&Stats) -> f64) -> String {
    s.map_or("n/a".into(), |s| ms(f(s)))
}

/// Describe the traffic shape in one line.
pub fn traffic(a: &BenchArgs, fixed_schedule: bool) -> String {
    let cap = a
        .concurrency
        .map_or(String::new(), |c| format!(", at most {c} in flight"));
    if fixed_schedule {
        return format!(
            "fixed schedule from trace timestamps{}{cap}",
            if a.speedup != 1.0 {
                format!(" (speedup x{})", a.speedup)
            } else {
                String::new()
            }
        );
    }
    match (a.request_rate, a.concurrency) {
        (Some(r), _) if r.is_infinite() => format!("all requests at once{cap}"),
        (Some(r), _) => format!(
            "{r} req/s, {}{cap}",
            Gaps::describe(a.arrival, a.burstiness)
        ),
        (None, Some(c)) => format!("closed loop, {c} concurrent users"),
        (None, None) => "all requests at once (no --request-rate or --concurrency)".into(),
    }
}

/// Render the full text report.
pub fn render(a: &BenchArgs, o: &BenchOutcome) -> String {
    let s = &o.summary;
    let c = &o.client;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "Endpoint: {} (model {}{})",
        o.resolved.endpoint_url,
        o.resolved.model,
        if o.resolved.streaming {
            ", streaming"
        } else {
            ", not streaming"
        }
    );
    let _ = writeln!(out, "Workload: {}", o.resolved.workload);
    let _ = writeln!(out, "Traffic:  {}", o.resolved.traffic);
    let mut extra: Vec<(&str, String)> = Vec::new();
    if let Some(n) = a.concurrency {
        extra.push(("Maximum request concurrency:", n.to_string()));
    }
    if let Some(r) = a.request_rate
        && r.is_finite()
    {
        extra.push(("Request rate configured (RPS):", format!("{r:.2}")));
    }
    out.push_str(&render_vllm_report(s, &extra));
    out.push('\n');
    out.push_str(&render_compact_table(s));

    // Latency seen from the actual send vs from the scheduled send (no coordinated omission).
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "{:<28}{:>12}{:>12}{:>12}{:>12}",
        "from actual vs scheduled", "p50 actual", "p50 sched", "p99 actual", "p99 sched"
    );
    for (name, a_, b_) in [
        ("TTFT (ms)", s.ttft.as_ref(), s.ttft_from_scheduled.as_ref()),
        ("E2E (ms)", s.e2e.as_ref(), s.e2e_from_scheduled.as_ref()),
    ] {
        let _ = writeln!(
            out,
            "{:<28}{:>12}{:>12}{:>12}{:>12}",
            name,
            opt_ms(a_, |s| s.p50),
            opt_ms(b_, |s| s.p50),
            opt_ms(a_, |s| s.p99),
            opt_ms(b_, |s| s.p99)
        );
    }
    let lag = c.dispatch_lag.as_ref();
    let _ = writeln!(
        out,
        "Dispatch lag (sent - scheduled): p50 {} ms, p99 {} ms, max {} ms",
        opt_ms(lag, |s| s.p50),
        opt_ms(lag, |s| s.p99),
        opt_ms(lag, |s| s.max)
    );
    if let Some(w) = &c.dispatcher_wake
        && lag.is_some_and(|l| l.p99 > LAG_WARN_SECS)
    {
        let _ = writeln!(
            out,
            "  of which the dispatcher thread woke late (OS scheduling): p50 {} ms, p99 {} ms",
            ms(w.p50),
            ms(w.p99)
        );
        if let Some(p) = &c.dispatcher_priority {
            let hint = if p.starts_with("normal") {
                "; --realtime lets the OS run the client first"
            } else {
                ""
            };
            let _ = writeln!(out, "  client thread priority: {p}{hint}");
        }
    }
    if let Some(q) = &c.client_queue {
        let ov = c.dispatch_overhead.as_ref();
        let _ = writeln!(
            out,
            "  of which waiting for a --concurrency slot: {} requests, p50 {} ms, p99 {} ms",
            q.count,
            ms(q.p50),
            ms(q.p99)
        );
        let _ = writeln!(
            out,
            "  client overhead alone: p50 {} ms, p99 {} ms",
            opt_ms(ov, |s| s.p50),
            opt_ms(ov, |s| s.p99)
        );
    }
    // Uncapped, overhead = lag and the metrics report above already warned.
    if c.client_queue.is_some()
        && let Some(ov) = &c.dispatch_overhead
        && ov.p99 > LAG_WARN_SECS
    {
        let _ = writeln!(
            out,
            "WARNING: the client's own dispatch overhead p99 is {} ms (> 1 ms): this machine could not keep the schedule; latencies from the scheduled send are the honest ones.",
            ms(ov.p99)
        );
    }
    if c.client_queue.is_some()
        && c.dispatch_lag.is_some_and(|l| l.p99 > LAG_WARN_SECS)
        && c.dispatch_overhead.is_some_and(|l| l.p99 <= LAG_WARN_SECS)
    {
        let _ = writeln!(
            out,
            "Note: the dispatch lag is the --concurrency cap at work (requests waited for a slot); the client's own overhead stayed under 1 ms."
        );
    }
    let _ = writeln!(out, "Output tokens: {}.", o.resolved.output_tokens);
    if s.completed > 0 && c.cached_reported == 0 {
        let _ = writeln!(
            out,
            "Note: the server reported no cached prompt tokens (usage.prompt_tokens_details), so the prefix cache figures above are unknown, not zero."
        );
    }
    if !o.resolved.streaming {
        let _ = writeln!(
            out,
            "Note: not streaming: the first token is only seen with the whole answer, so TTFT = E2E and TPOT/ITL are not measured."
        );
    }
    if o.resolved.prompt == crate::args::PromptMode::Text {
        let _ = writeln!(
            out,
            "Note: text prompts: requested lengths are approximate (about one token per word); input tokens are the server's usage.prompt_tokens where reported."
        );
    }
    if c.interrupted {
        let _ = writeln!(
            out,
            "INTERRUPTED: partial results; {} request(s) in flight were abandoned and are not counted{}.",
            c.abandoned,
            c.not_sent
                .map_or(String::new(), |n| format!(", {n} were never sent"))
        );
    } else if c.abandoned > 0 {
        let _ = writeln!(
            out,
            "Note: {} request(s) still in flight after --grace were abandoned and are not counted.",
            c.abandoned
        );
    }
    out
}

/// Requests in flight over time, from the records (for the HTML report).
pub fn in_flight_series(records: &[RequestRecord]) -> TimeSeries {
    let mut ev: Vec<(f64, i64)> = Vec::with_capacity(records.len() * 2);
    for r in records {
        ev.push((r.sent, 1));
        ev.push((r.finish, -1));
    }
    ev.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
    let mut cur = 0i64;
    let mut points: Vec<(f64, f64)> = Vec::with_capacity(ev.len());
    for (t, d) in ev {
        cur += d;
        match points.last_mut() {
            Some(last) if last.0 == t => last.1 = cur as f64,
            _ => points.push((t, cur as f64)),
        }
    }
    TimeSeries {
        chart: "Requests in flight".into(),
        name: "client".into(),
        points,
    }
}

/// One line of `requests.jsonl`: the metrics crate's record plus the client's own columns
/// (readers of plain `RequestRecord`s ignore them).
#[derive(Serialize)]
struct Row<'a> {
    #[serde(flatten)]
    record: &'a RequestRecord,
    #[serde(skip_serializing_if = "Option::is_none")]
    client_queue: Option<f64>,
}

#[derive(Serialize)]
struct SummaryFile<'a> {
    tool: &'static str,
    version: &'static str,
    config: &'a BenchArgs,
    resolved: &'a Resolved,
    client: &'a ClientStats,
    summary: &'a Summary,
}

/// Write `summary.json`, `requests.jsonl` and `report.html` into `dir` (created if needed).
pub fn write_dir(dir: &Path, a: &BenchArgs, o: &BenchOutcome) -> Result<(), BenchError> {
    let werr = |path: &Path, source: std::io::Error| BenchError::Write {
        path: path.to_path_buf(),
        source,
    };
    std::fs::create_dir_all(dir).map_err(|e| werr(dir, e))?;

    let path = dir.join("summary.json");
    let file = SummaryFile {
        tool: "switchyard bench",
        version: env!("CARGO_PKG_VERSION"),
        config: a,
        resolved: &o.resolved,
        client: &o.client,
        summary: &o.summary,
    };
    let json =
        serde_json::to_vec_pretty(&file).map_err(|e| werr(&path, std::io::Error::other(e)))?;
    std::fs::write(&path, json).map_err(|e| werr(&path, e))?;

    let path = dir.join("requests.jsonl");
    let f = std::fs::File::create(&path).map_err(|e| werr(&path, e))?;
    let mut w = std::io::BufWriter::new(f);
    for (i, r) in o.records.iter().enumerate() {
        let row = Row {
            record: r,
            client_queue: o.client_queue.get(i).copied().filter(|&q| q > 0.0),
        };
        serde_json::to_writer(&mut w, &row).map_err(|e| werr(&path, std::io::Error::other(e)))?;
        w.write_all(b"\n").map_err(|e| werr(&path, e))?;
    }
    w.flush().map_err(|e| werr(&path, e))?;

    let path = dir.join("report.html");
    let series = [in_flight_series(&o.records)];
    let html = render_html(
        &format!("switchyard bench: {}", o.summary.label),
        &[ReportRun {
            summary: &o.summary,
            records: &o.records,
            series: &series,
        }],
    );
    std::fs::write(&path, html).map_err(|e| werr(&path, e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_flight_steps() {
        let recs = vec![
            RequestRecord::ok(0, 0.0, 0.5, 1.0, 1, 1),
            RequestRecord::ok(1, 0.5, 0.7, 2.0, 1, 1),
        ];
        let s = in_flight_series(&recs);
        assert_eq!(
            s.points,
            vec![(0.0, 1.0), (0.5, 2.0), (1.0, 1.0), (2.0, 0.0)]
        );
    }
}
