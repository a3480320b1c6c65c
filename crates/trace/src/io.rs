use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, ErrorKind, Read, Write};
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::error::{Issue, IssueKind, TraceError};
use crate::limits;
use crate::record::{Trace, TraceRequest, blocks_for};

/// How to read a trace.
#[derive(Clone, Debug)]
pub struct LoadOptions {
    /// Tokens per `hash_id` (512 in Mooncake traces).
    pub block_size: u32,
    /// Turn every warning (usable but suspicious data) into an error.
    pub strict: bool,
    /// Longest line accepted, in bytes (default: [`crate::limits::max_line_bytes`]).
    pub max_line_bytes: usize,
    /// Refuse a trace whose requests would take more memory than this many bytes; `None`: no
    /// check (default: [`crate::memory::budget_bytes`]).
    pub memory_budget: Option<u64>,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            block_size: crate::DEFAULT_BLOCK_SIZE,
            strict: false,
            max_line_bytes: crate::limits::max_line_bytes(),
            memory_budget: crate::memory::budget_bytes(),
        }
    }
}

/// A trace and the warnings raised while reading it.
#[derive(Clone, Debug)]
pub struct Loaded {
    pub trace: Trace,
    pub issues: Vec<Issue>,
}

/// Read a Mooncake trace from `.jsonl` or gzip-compressed `.jsonl.gz` (detected by content,
/// not by name). Requests come back sorted by timestamp.
pub fn load(path: &Path, opts: &LoadOptions) -> Result<Loaded, TraceError> {
    let file = File::open(path).map_err(|source| TraceError::Open {
        path: path.to_path_buf(),
        source,
    })?;
    load_reader(file, path, opts)
}

/// Like [`load`], from any reader (plain or gzip JSONL); `path` only names the source in
/// messages.
pub fn load_reader<R: Read>(
    reader: R,
    path: &Path,
    opts: &LoadOptions,
) -> Result<Loaded, TraceError> {
    let mut reader = BufReader::with_capacity(1 << 16, reader);
    let gz = {
        let head = reader.fill_buf().map_err(|source| TraceError::Read {
            path: path.to_path_buf(),
            line: 0,
            source,
        })?;
        head.starts_with(&[0x1f, 0x8b])
    };
    if gz {
        let dec = flate2::read::MultiGzDecoder::new(reader);
        parse_inner(BufReader::with_capacity(1 << 16, dec), path, opts, true)
    } else {
        parse_inner(reader, path, opts, false)
    }
}

/// Parse an uncompressed trace from any reader; `path` only names the source in messages.
pub fn parse_reader<R: Read>(
    reader: R,
    path: &Path,
    opts: &LoadOptions,
) -> Result<Loaded, TraceError> {
    parse_inner(BufReader::new(reader), path, opts, false)
}

/// A row as written; every field optional so that a missing one gets our own message.
#[derive(Deserialize)]
struct RawRow {
    timestamp: Option<f64>,
    input_length: Option<i64>,
    output_length: Option<i64>,
    hash_ids: Option<Vec<u64>>,
    session_id: Option<serde_json::Value>,
    #[serde(alias = "delay_ms")]
    delay: Option<f64>,
    text_input: Option<String>,
}

struct IssueLog {
    by_kind: BTreeMap<IssueKind, Issue>,
}

impl IssueLog {
    fn add(&mut self, kind: IssueKind, line: usize, message: String) {
        self.by_kind
            .entry(kind)
            .and_modify(|i| i.count += 1)
            .or_insert(Issue {
                kind,
                count: 1,
                first_line: line,
                first_message: message,
                action: match kind {
                    IssueKind::TooFewBlocks => "missing blocks are treated as unique tokens",
                    IssueKind::TooManyBlocks => "extra hash_ids are ignored",
                    IssueKind::UnsortedTimestamp => "requests are sorted by timestamp",
                },
            });
    }
}

fn parse_inner<R: BufRead>(
    mut reader: R,
    path: &Path,
    opts: &LoadOptions,
    gz: bool,
) -> Result<Loaded, TraceError> {
    if opts.block_size == 0 {
        return Err(TraceError::Param("block size must be positive".into()));
    }
    let invalid = |line: usize, message: String| TraceError::Invalid {
        path: path.to_path_buf(),
        line,
        message,
    };
    let mut requests = Vec::new();
    let mut log = IssueLog {
        by_kind: BTreeMap::new(),
    };
    let mut buf = Vec::new();
    let mut line_no = 0usize;
    let mut last_ts = f64::NEG_INFINITY;
    // (timestamp, line) of the earliest and latest arrival, for the span bound.
    let mut first = (f64::INFINITY, 0usize);
    let mut latest = (f64::NEG_INFINITY, 0usize);
    let mut bytes: u64 = 0;
    let max_line = opts.max_line_bytes.max(1);
    loop {
        buf.clear();
        // At most one byte past the limit: a hostile line never gets buffered whole.
        let n = (&mut reader)
            .take(max_line as u64 + 1)
            .read_until(b'\n', &mut buf)
            .map_err(|source| read_error(path, line_no, gz, source))?;
        if n == 0 {
            break;
        }
        line_no += 1;
        if buf.len() > max_line && !buf.ends_with(b"\n") {
            return Err(invalid(
                line_no,
                format!(
                    "line longer than {max_line} bytes (the limit; set {} to raise it)",
                    limits::MAX_LINE_ENV
                ),
            ));
        }
        let text = std::str::from_utf8(&buf).map_err(|e| {
            invalid(
                line_no,
                format!(
                    "not UTF-8 text: invalid byte 0x{:02x} at column {}",
                    buf[e.valid_up_to()],
                    e.valid_up_to() + 1
                ),
            )
        })?;
        let text = text.trim();
        if text.is_empty() {
            continue;
        }
        let row: RawRow = serde_json::from_str(text).map_err(|e| {
            let what = match e.classify() {
                serde_json::error::Category::Data => "invalid field",
                _ => "malformed JSON",
            };
            invalid(line_no, format!("{what}: {e}"))
        })?;
        let req =
            check_row(row, opts.block_size, line_no, &mut log).map_err(|m| invalid(line_no, m))?;
        if req.timestamp < last_ts {
            log.add(
                IssueKind::UnsortedTimestamp,
                line_no,
                format!("timestamp {} after {}", req.timestamp, last_ts),
            );
        }
        last_ts = last_ts.max(req.timestamp);
        if req.timestamp < first.0 {
            first = (req.timestamp, line_no);
        }
        if req.timestamp > latest.0 {
            latest = (req.timestamp, line_no);
        }
        if latest.0 - first.0 > limits::MAX_SPAN_MS {
            return Err(invalid(
                line_no,
                format!(
                    "the trace would span {:.0} days (timestamp {:?} ms at line {}, {:?} ms at line {}); at most {:.0} days are accepted",
                    (latest.0 - first.0) / 86_400_000.0,
                    first.0,
                    first.1,
                    latest.0,
                    latest.1,
                    limits::MAX_SPAN_MS / 86_400_000.0
                ),
            ));
        }
        bytes += request_bytes(&req);
        if let Err(m) =
            crate::memory::check(bytes, opts.memory_budget, &format!("{line_no} requests"))
        {
            return Err(TraceError::TooLarge {
                path: path.to_path_buf(),
                line: line_no,
                message: m,
            });
        }
        requests.push(req);
    }
    if requests.is_empty() {
        return Err(TraceError::Empty {
            path: path.to_path_buf(),
        });
    }
    let issues: Vec<Issue> = log.by_kind.into_values().collect();
    if let Some(i) = issues.first().filter(|_| opts.strict) {
        return Err(TraceError::Strict {
            path: path.to_path_buf(),
            kind: i.kind,
            count: i.count,
            first_line: i.first_line,
            message: i.first_message.clone(),
        });
    }
    // Stable: requests with equal timestamps keep file order.
    requests.sort_by(|a: &TraceRequest, b| a.timestamp.total_cmp(&b.timestamp));
    Ok(Loaded {
        trace: Trace {
            requests,
            block_size: opts.block_size,
        },
        issues,
    })
}

fn read_error(path: &Path, line: usize, gz: bool, source: std::io::Error) -> TraceError {
    let path = path.to_path_buf();
    if gz
        && matches!(
            source.kind(),
            ErrorKind::UnexpectedEof | ErrorKind::InvalidInput | ErrorKind::InvalidData
        )
    {
        TraceError::TruncatedGzip { path, line, source }
    } else {
        TraceError::Read {
            path,
            line: line + 1,
            source,
        }
    }
}

/// Memory one loaded request takes, for the budget.
fn request_bytes(r: &TraceRequest) -> u64 {
    (std::mem::size_of::<TraceRequest>()
        + r.hash_ids.capacity() * 8
        + r.session_id.as_ref().map_or(0, |s| s.capacity())
        + r.text_input.as_ref().map_or(0, |s| s.capacity())) as u64
}

fn check_row(
    row: RawRow,
    block_size: u32,
    line: usize,
    log: &mut IssueLog,
) -> Result<TraceRequest, String> {
    let timestamp = row.timestamp.ok_or("missing field `timestamp`")?;
    if !(timestamp.is_finite() && (0.0..=limits::MAX_TIMESTAMP_MS).contains(&timestamp)) {
        return Err(format!(
            "timestamp must be a number of ms in [0, {:e}], got {timestamp:?}",
            limits::MAX_TIMESTAMP_MS
        ));
    }
    if let Some(d) = row.delay
        && !(d.is_finite() && (0.0..=limits::MAX_SPAN_MS).contains(&d))
    {
        return Err(format!(
            "delay must be a number of ms in [0, {:e}] (366 days), got {d:?}",
            limits::MAX_SPAN_MS
        ));
    }
    let input_length = positive(row.input_length, "input_length")?;
    let output_length = positive(row.output_length, "output_length")?;
    let mut hash_ids = row.hash_ids.ok_or("missing field `hash_ids`")?;
    let need = blocks_for(input_length, block_size);
    if hash_ids.len() < need {
        log.add(
            IssueKind::TooFewBlocks,
            line,
            format!(
                "input_length {input_length} needs {need} blocks of {block_size} tokens, hash_ids has {}",
                hash_ids.len()
            ),
        );
    } else if hash_ids.len() > need {
        log.add(
            IssueKind::TooManyBlocks,
            line,
            format!(
                "input_length {input_length} allows {need} blocks of {block_size} tokens, hash_ids has {}",
                hash_ids.len()
            ),
        );
        hash_ids.truncate(need);
        hash_ids.shrink_to_fit();
    }
    let session_id = row.session_id.and_then(|v| match v {
        serde_json::Value::String(s) => Some(s),
        serde_json::Value::Null => None,
        other => Some(other.to_string()),
    });
    Ok(TraceRequest {
        timestamp,
        input_length,
        output_length,
        hash_ids,
        session_id,
        delay: row.delay,
        text_input: row.text_input,
    })
}

fn positive(v: Option<i64>, name: &str) -> Result<u32, String> {
    let v = v.ok_or_else(|| format!("missing field `{name}`"))?;
    if v <= 0 || v > limits::MAX_TOKENS as i64 {
        return Err(format!(
            "{name} must be a number of tokens in 1..={}, got {v}",
            limits::MAX_TOKENS
        ));
    }
    Ok(v as u32)
}

/// Write a trace as JSONL; gzip-compressed when the path ends in `.gz`.
pub fn write_jsonl(path: &Path, trace: &Trace) -> Result<(), TraceError> {
    let werr = |source| TraceError::Write {
        path: PathBuf::from(path),
        source,
    };
    let file = BufWriter::new(File::create(path).map_err(werr)?);
    if path.extension().is_some_and(|e| e == "gz") {
        let mut enc = flate2::write::GzEncoder::new(file, flate2::Compression::default());
        write_rows(&mut enc, trace).map_err(werr)?;
        enc.finish().map_err(werr)?.flush().map_err(werr)
    } else {
        let mut file = file;
        write_rows(&mut file, trace).map_err(werr)?;
        file.flush().map_err(werr)
    }
}

fn write_rows<W: Write>(w: &mut W, trace: &Trace) -> std::io::Result<()> {
    for r in &trace.requests {
        serde_json::to_writer(&mut *w, r)?;
        w.write_all(b"\n")?;
    }
    Ok(())
}
