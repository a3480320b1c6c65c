use std::fmt;
use std::path::PathBuf;

/// Fatal problems with a trace file. Every variant names the file; line numbers are 1-based.
#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    #[error("{path}: cannot open: {source}")]
    Open {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}:{line}: {source}")]
    Read {
        path: PathBuf,
        line: usize,
        source: std::io::Error,
    },
    #[error(
        "{path}: compressed data ends abruptly after line {line} (the .gz file is truncated or corrupt: {source}); re-download or re-compress it"
    )]
    TruncatedGzip {
        path: PathBuf,
        line: usize,
        source: std::io::Error,
    },
    #[error("{path}:{line}: {message}")]
    Invalid {
        path: PathBuf,
        line: usize,
        message: String,
    },
    /// The trace would not fit in memory (estimated while reading, before it is exhausted).
    #[error("{path}:{line}: {message}")]
    TooLarge {
        path: PathBuf,
        line: usize,
        message: String,
    },
    #[error("{path}: the trace has no requests (empty file or only blank lines)")]
    Empty { path: PathBuf },
    #[error(
        "{path}: {count} line(s) with {kind} (first at line {first_line}: {message}); rejected because of --strict"
    )]
    Strict {
        path: PathBuf,
        kind: IssueKind,
        count: usize,
        first_line: usize,
        message: String,
    },
    #[error("{path}: cannot write: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid synthesis parameter: {0}")]
    Param(String),
}

/// A problem that leaves the data usable. Reported as a warning with a count; fatal with
/// `strict`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum IssueKind {
    /// Fewer `hash_ids` than `ceil(input_length / block_size)`: the missing tail is treated as
    /// unique (never shared) tokens.
    TooFewBlocks,
    /// More `hash_ids` than `ceil(input_length / block_size)`: the extra ids are ignored.
    TooManyBlocks,
    /// A timestamp earlier than the line before it: requests are replayed in timestamp order.
    UnsortedTimestamp,
}

impl fmt::Display for IssueKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            IssueKind::TooFewBlocks => "fewer hash_ids than input_length needs",
            IssueKind::TooManyBlocks => "more hash_ids than input_length allows",
            IssueKind::UnsortedTimestamp => "timestamps out of order",
        })
    }
}

/// All occurrences of one kind of usable-data problem.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Issue {
    pub kind: IssueKind,
    pub count: usize,
    pub first_line: usize,
    pub first_message: String,
    /// What the loader did about it.
    pub action: &'static str,
}

impl fmt::Display for Issue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} line(s) with {} (first at line {}: {}); {}",
            self.count, self.kind, self.first_line, self.first_message, self.action
        )
    }
}
