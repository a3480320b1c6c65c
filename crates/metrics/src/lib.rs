//! Switchyard's single source of truth for serving metrics.
//!
//! `lab` (simulation) and `bench` (live) both produce one [`RequestRecord`] per request;
//! [`Summary::from_records`] turns a run's records into every statistic Switchyard reports;
//! the renderers turn summaries into the `vllm bench serve`-style text report
//! ([`render_vllm_report`]), a compact percentile table ([`render_compact_table`]), an A/B
//! comparison with a verdict ([`render_comparison`]) and a self-contained HTML report with SVG
//! charts ([`render_html`]). Pure: no I/O, no clock; rendering returns `String`s.
//!
//! Definitions (all times in seconds):
//! - TTFT = first token - sent. E2E = finish (last token) - sent.
//! - TPOT = (E2E - TTFT) / (output tokens - 1), per request, output >= 2 (AIPerf's
//!   `inter_token_latency`, the `itl` in SLA strings).
//! - ITL = every gap between consecutive chunks, pooled over requests (vLLM's ITL).
//! - Throughputs divide by the span first send -> last finish over all records.
//! - Statistics: mean, population std, min, max, p50/p90/p95/p99 with numpy's linear
//!   interpolation.

mod html;
mod record;
mod slo;
mod stats;
mod summary;
pub mod svg;
mod text;

pub use html::{
    ReportRun, TimeSeries, render_html, render_html_with_notes, render_html_with_warnings,
};
pub use record::{
    ChunkGaps, GapRun, RequestRecord, Status, parse_records_jsonl, quantize, records_to_jsonl,
};
pub use slo::{Slo, SloMetric, SloTerm};
pub use stats::{PERCENTILES, Stats, percentile_sorted};
pub use summary::{Goodput, Summary, SummaryOptions};
pub use text::{
    Better, ComparisonRow, comparison_rows, render_compact_table, render_comparison,
    render_vllm_report, verdict,
};

/// Everything that can be wrong with the input to this crate.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum MetricsError {
    #[error("request {id}: {reason}")]
    InvalidRecord { id: u64, reason: String },
    #[error("invalid SLO `{input}`: {reason}")]
    InvalidSlo { input: String, reason: String },
    #[error("line {line}: not a request record: {message}")]
    Json { line: usize, message: String },
    #[error("invalid measurement span: start {start}, end {end}")]
    InvalidSpan { start: f64, end: f64 },
}
