//! Bounds on what a trace may contain, in one place (`docs/limits.md` lists them). A line or a
//! value beyond them is an error naming the file and line, never an allocation failure.

/// Longest line accepted, in bytes (a 128k-token request with its hash ids is ~2 KB; with
/// `text_input` a few MB). Override with [`MAX_LINE_ENV`] or [`crate::LoadOptions`].
pub const MAX_LINE_BYTES: usize = 16 << 20;
/// Environment variable overriding [`MAX_LINE_BYTES`] (bytes).
pub const MAX_LINE_ENV: &str = "SWITCHYARD_TRACE_MAX_LINE_BYTES";
/// `input_length` and `output_length`, tokens (the longest model contexts are ~10M).
pub const MAX_TOKENS: u32 = 10_000_000;
/// `timestamp`, ms. Absolute (Unix-epoch) milliseconds are accepted, so the bound is on
/// precision (f64 holds integers exactly up to 2^53 ≈ 9e15).
pub const MAX_TIMESTAMP_MS: f64 = 1e15;
/// Last arrival − first arrival, and `delay`, ms: 366 days.
pub const MAX_SPAN_MS: f64 = 366.0 * 86_400_000.0;
/// Requests `trace synthesize` may generate (memory permitting).
pub const MAX_SYNTH_REQUESTS: usize = 100_000_000;

/// [`MAX_LINE_BYTES`], or the environment's override when it is a positive number.
pub fn max_line_bytes() -> usize {
    std::env::var(MAX_LINE_ENV)
        .ok()
        .and_then(|v| v.trim().parse::<usize>().ok())
        .filter(|&v| v > 0)
        .unwrap_or(MAX_LINE_BYTES)
}
