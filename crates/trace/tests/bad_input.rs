//! Every kind of bad trace input gets an error (or warning) naming the file, line and problem.

use std::io::Write;
use std::path::Path;

use switchyard_trace::{IssueKind, LoadOptions, TraceError, load, parse_reader};

fn parse(text: &str) -> Result<switchyard_trace::Loaded, TraceError> {
    parse_reader(
        text.as_bytes(),
        Path::new("t.jsonl"),
        &LoadOptions::default(),
    )
}

fn err(text: &str) -> String {
    match parse(text) {
        Ok(_) => panic!("expected an error for {text:?}"),
        Err(e) => e.to_string(),
    }
}

const OK1: &str =
    r#"{"timestamp": 0, "input_length": 600, "output_length": 5, "hash_ids": [1, 2]}"#;

#[test]
fn malformed_json_names_file_and_line() {
    let e = err(&format!("{OK1}\n{{\"timestamp\": 1, \"input_length\": \n"));
    assert!(e.starts_with("t.jsonl:2: malformed JSON"), "{e}");
}

#[test]
fn missing_fields() {
    for (field, row) in [
        (
            "timestamp",
            r#"{"input_length": 5, "output_length": 5, "hash_ids": [1]}"#,
        ),
        (
            "input_length",
            r#"{"timestamp": 0, "output_length": 5, "hash_ids": [1]}"#,
        ),
        (
            "output_length",
            r#"{"timestamp": 0, "input_length": 5, "hash_ids": [1]}"#,
        ),
        (
            "hash_ids",
            r#"{"timestamp": 0, "input_length": 5, "output_length": 5}"#,
        ),
    ] {
        let e = err(row);
        assert_eq!(e, format!("t.jsonl:1: missing field `{field}`"));
    }
}

#[test]
fn negative_zero_and_wrong_types() {
    let e = err(r#"{"timestamp": 0, "input_length": 0, "output_length": 5, "hash_ids": []}"#);
    assert_eq!(
        e,
        "t.jsonl:1: input_length must be a number of tokens in 1..=10000000, got 0"
    );
    let e = err(r#"{"timestamp": 0, "input_length": 5, "output_length": -3, "hash_ids": [1]}"#);
    assert_eq!(
        e,
        "t.jsonl:1: output_length must be a number of tokens in 1..=10000000, got -3"
    );
    let e = err(r#"{"timestamp": -5, "input_length": 5, "output_length": 3, "hash_ids": [1]}"#);
    assert!(
        e.contains("timestamp must be a number of ms in [0, 1e15]"),
        "{e}"
    );
    let e = err(r#"{"timestamp": 0, "input_length": "5", "output_length": 3, "hash_ids": [1]}"#);
    assert!(e.starts_with("t.jsonl:1: invalid field"), "{e}");
    let e = err(r#"{"timestamp": 0, "input_length": 5, "output_length": 3, "hash_ids": [-1]}"#);
    assert!(e.starts_with("t.jsonl:1: invalid field"), "{e}");
    let e = err(
        r#"{"timestamp": 0, "input_length": 99999999999, "output_length": 3, "hash_ids": [1]}"#,
    );
    assert!(e.contains("in 1..=10000000, got 99999999999"), "{e}");
}

#[test]
fn inconsistent_hash_ids_warn_with_counts_and_fail_with_strict() {
    let text = format!(
        "{OK1}\n{}\n{}\n{}\n",
        r#"{"timestamp": 1, "input_length": 1500, "output_length": 5, "hash_ids": [1]}"#,
        r#"{"timestamp": 2, "input_length": 1500, "output_length": 5, "hash_ids": [1, 2]}"#,
        r#"{"timestamp": 3, "input_length": 100, "output_length": 5, "hash_ids": [1, 2, 3]}"#
    );
    let loaded = parse(&text).unwrap();
    let few = loaded
        .issues
        .iter()
        .find(|i| i.kind == IssueKind::TooFewBlocks)
        .unwrap();
    assert_eq!((few.count, few.first_line), (2, 2));
    let many = loaded
        .issues
        .iter()
        .find(|i| i.kind == IssueKind::TooManyBlocks)
        .unwrap();
    assert_eq!((many.count, many.first_line), (1, 4));
    // Extra ids are dropped so the data stays self-consistent.
    assert_eq!(loaded.trace.requests[3].hash_ids, vec![1]);
    let strict = LoadOptions {
        strict: true,
        ..Default::default()
    };
    let e = parse_reader(text.as_bytes(), Path::new("t.jsonl"), &strict)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("t.jsonl: 2 line(s) with fewer hash_ids") && e.contains("--strict"),
        "{e}"
    );
}

#[test]
fn unsorted_timestamps_are_sorted_with_a_warning() {
    let text = format!(
        "{}\n{OK1}\n",
        r#"{"timestamp": 50, "input_length": 600, "output_length": 5, "hash_ids": [1, 2]}"#
    );
    let loaded = parse(&text).unwrap();
    assert_eq!(loaded.issues.len(), 1);
    assert_eq!(loaded.issues[0].kind, IssueKind::UnsortedTimestamp);
    assert_eq!(loaded.issues[0].first_line, 2);
    assert_eq!(loaded.trace.requests[0].timestamp, 0.0);
}

#[test]
fn empty_file() {
    assert_eq!(
        err(""),
        "t.jsonl: the trace has no requests (empty file or only blank lines)"
    );
    assert!(err("\n\n  \n").contains("no requests"));
}

#[test]
fn truncated_gzip_is_reported_not_silently_shortened() {
    let dir = tempfile::tempdir().unwrap();
    let full = dir.path().join("full.jsonl.gz");
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    for i in 0..2000 {
        writeln!(
            enc,
            r#"{{"timestamp": {i}, "input_length": 600, "output_length": 5, "hash_ids": [{i}, 7]}}"#
        )
        .unwrap();
    }
    let bytes = enc.finish().unwrap();
    std::fs::write(&full, &bytes).unwrap();
    assert_eq!(
        load(&full, &LoadOptions::default())
            .unwrap()
            .trace
            .requests
            .len(),
        2000
    );
    let cut = dir.path().join("cut.jsonl.gz");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    let e = load(&cut, &LoadOptions::default()).unwrap_err();
    assert!(matches!(e, TraceError::TruncatedGzip { .. }), "{e}");
    let msg = e.to_string();
    assert!(
        msg.contains("cut.jsonl.gz") && msg.contains("truncated"),
        "{msg}"
    );
}

#[test]
fn missing_file() {
    let e = load(Path::new("/nonexistent/x.jsonl"), &LoadOptions::default()).unwrap_err();
    assert!(
        e.to_string()
            .starts_with("/nonexistent/x.jsonl: cannot open"),
        "{e}"
    );
}

#[test]
fn round_trip_through_writer() {
    let dir = tempfile::tempdir().unwrap();
    let loaded = parse(&format!("{OK1}\n")).unwrap();
    for name in ["a.jsonl", "a.jsonl.gz"] {
        let p = dir.path().join(name);
        switchyard_trace::write_jsonl(&p, &loaded.trace).unwrap();
        assert_eq!(
            load(&p, &LoadOptions::default()).unwrap().trace,
            loaded.trace
        );
    }
    let text = std::fs::read_to_string(dir.path().join("a.jsonl")).unwrap();
    assert_eq!(
        text.trim(),
        r#"{"timestamp":0,"input_length":600,"output_length":5,"hash_ids":[1,2]}"#
    );
}

/// A gzip file of `lines` (each followed by a newline).
fn gz(dir: &Path, name: &str, lines: &[&[u8]]) -> std::path::PathBuf {
    let p = dir.join(name);
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    for l in lines {
        enc.write_all(l).unwrap();
        enc.write_all(b"\n").unwrap();
    }
    std::fs::write(&p, enc.finish().unwrap()).unwrap();
    p
}

#[test]
fn an_endless_line_is_refused_without_buffering_it() {
    let dir = tempfile::tempdir().unwrap();
    // 64 MiB of one line compresses to ~64 KB; the loader must stop after the limit.
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(OK1.as_bytes()).unwrap();
    enc.write_all(b"\n{\"hash_ids\": [").unwrap();
    let chunk = "1,".repeat(1 << 20);
    for _ in 0..32 {
        enc.write_all(chunk.as_bytes()).unwrap();
    }
    let p = dir.path().join("long.jsonl.gz");
    std::fs::write(&p, enc.finish().unwrap()).unwrap();
    let e = load(&p, &LoadOptions::default()).unwrap_err().to_string();
    assert!(
        e.ends_with("long.jsonl.gz:2: line longer than 16777216 bytes (the limit; set SWITCHYARD_TRACE_MAX_LINE_BYTES to raise it)"),
        "{e}"
    );
    // The limit is an option (the CLI reads it from the environment).
    let opts = LoadOptions {
        max_line_bytes: 40,
        ..LoadOptions::default()
    };
    let e = parse_reader(format!("{OK1}\n").as_bytes(), Path::new("t.jsonl"), &opts)
        .unwrap_err()
        .to_string();
    assert!(e.starts_with("t.jsonl:1: line longer than 40 bytes"), "{e}");
}

#[test]
fn invalid_utf8_inside_a_valid_gzip_is_not_called_truncated() {
    let dir = tempfile::tempdir().unwrap();
    let bad = br#"{"timestamp": 1, "input_length": 600, "output_length": 5, "hash_ids": [1], "text_input": "caf"#
        .iter()
        .copied()
        .chain([0xff, b'"', b'}'])
        .collect::<Vec<u8>>();
    let p = gz(dir.path(), "utf8.jsonl.gz", &[OK1.as_bytes(), &bad]);
    let e = load(&p, &LoadOptions::default()).unwrap_err();
    assert!(matches!(e, TraceError::Invalid { line: 2, .. }), "{e}");
    let msg = e.to_string();
    assert!(
        msg.ends_with("utf8.jsonl.gz:2: not UTF-8 text: invalid byte 0xff at column 94"),
        "{msg}"
    );
}

#[test]
fn absurd_lengths_timestamps_and_delays_are_refused() {
    let e = err(r#"{"timestamp": 1e300, "input_length": 5, "output_length": 3, "hash_ids": [1]}"#);
    assert_eq!(
        e,
        "t.jsonl:1: timestamp must be a number of ms in [0, 1e15], got 1e300"
    );
    // Absolute (epoch) milliseconds are fine; a span of years is not.
    let epoch = r#"{"timestamp": 1700000000000, "input_length": 600, "output_length": 5, "hash_ids": [1, 2]}"#;
    parse(&format!("{epoch}\n{epoch}\n")).unwrap();
    let e = err(&format!("{OK1}\n{epoch}\n"));
    assert!(
        e.starts_with("t.jsonl:2: the trace would span 19676 days (timestamp 0.0 ms at line 1, 1700000000000.0 ms at line 2); at most 366 days"),
        "{e}"
    );
    let e = err(
        r#"{"timestamp": 0, "input_length": 5, "output_length": 3, "hash_ids": [1], "delay": 1e300}"#,
    );
    assert!(e.contains("delay must be a number of ms"), "{e}");
    let e =
        err(r#"{"timestamp": 0, "input_length": 4000000000, "output_length": 3, "hash_ids": [1]}"#);
    assert!(
        e.contains("input_length must be a number of tokens in 1..=10000000"),
        "{e}"
    );
}

#[test]
fn a_trace_that_cannot_fit_in_memory_is_refused_with_the_line() {
    let text = (0..100).map(|_| OK1).collect::<Vec<_>>().join("\n");
    let opts = LoadOptions {
        memory_budget: Some(2000),
        ..LoadOptions::default()
    };
    let e = parse_reader(text.as_bytes(), Path::new("t.jsonl"), &opts).unwrap_err();
    assert!(matches!(e, TraceError::TooLarge { .. }), "{e}");
    let msg = e.to_string();
    assert!(
        msg.starts_with("t.jsonl:")
            && msg.contains("requests needs about")
            && msg.contains("SWITCHYARD_MEMORY_LIMIT_MB"),
        "{msg}"
    );
    // Extra hash ids beyond input_length are dropped and their memory returned.
    let many = format!(
        r#"{{"timestamp": 0, "input_length": 512, "output_length": 3, "hash_ids": [{}]}}"#,
        (0..100_000)
            .map(|i| i.to_string())
            .collect::<Vec<_>>()
            .join(",")
    );
    let loaded = parse(&many).unwrap();
    assert_eq!(loaded.trace.requests[0].hash_ids.capacity(), 1);
}
