//! Mooncake-format request traces: read (`.jsonl` / `.jsonl.gz`), validate, write, analyze and
//! synthesize.
//!
//! A trace is one JSON object per line: `timestamp` (ms, relative), `input_length`,
//! `output_length`, `hash_ids` (one id per `block_size`-token block, 512 in Mooncake traces;
//! equal ids mean identical prefix blocks). Format details: README, `switchyard trace`.

mod analyze;
mod error;
mod hist;
mod io;
pub mod limits;
pub mod memory;
mod record;
mod synth;

pub use analyze::{Analysis, BlockStats, analyze};
pub use error::{Issue, IssueKind, TraceError};
pub use hist::{Bin, Histogram};
pub use io::{LoadOptions, Loaded, load, load_reader, parse_reader, write_jsonl};
pub use record::{Trace, TraceRequest};
pub use switchyard_metrics::Stats;
pub use synth::{SynthConfig, SynthReport, synthesize, synthesize_within};

/// Tokens per `hash_id` block in Mooncake traces.
pub const DEFAULT_BLOCK_SIZE: u32 = 512;
