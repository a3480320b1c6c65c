//! Workloads: what each request asks for (prompt, lengths) and, for traces, when.

use std::path::Path;
use std::sync::Arc;

use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Deserialize;

use crate::args::{BenchArgs, Dataset, Endpoint, PromptMode};
use crate::error::BenchError;
use crate::prompt::{Block, Renderer, key, space, trace_blocks};
use switchyard_tokenize::{Tokenizer, WordPieces};

/// Requests of synthetic workloads when neither `--requests` nor `--duration` is given
/// (`vllm bench serve`'s `--num-prompts` default).
pub const DEFAULT_REQUESTS: u64 = 1000;
/// `--dataset random` defaults (vLLM).
pub const RANDOM_INPUT_LEN: u32 = 1024;
pub const RANDOM_OUTPUT_LEN: u32 = 128;
/// `--dataset prefix-groups` output length default (SGLang's generated-shared-prefix).
pub const GROUPS_OUTPUT_LEN: u32 = 256;
/// ShareGPT filters (vLLM): drop prompts or answers under 4 tokens, prompts over 1024 and
/// prompt + answer over 2048 tokens.
pub const SHAREGPT_MIN_LEN: u32 = 4;
pub const SHAREGPT_MAX_PROMPT: u32 = 1024;
pub const SHAREGPT_MAX_TOTAL: u32 = 2048;
/// Without a tokenizer, ShareGPT text lengths are estimated at this many characters per
/// token (the usual rule of thumb for English with BPE vocabularies).
pub const CHARS_PER_TOKEN: f64 = 4.0;
/// With `--tokenizer`, fewer single-token words than this is worth a warning: positions of
/// distinct blocks then agree more often (each position is one of this many words).
pub const MIN_TOKENIZER_WORDS: usize = 256;
/// Longest prompt we build (tokens): beyond every current context window, and a guard against
/// typos that would allocate gigabytes.
pub const MAX_PROMPT_TOKENS: u64 = 10_000_000;

/// The prompt of one request.
#[derive(Debug, Clone, PartialEq)]
pub enum Content {
    /// Generated blocks, rendered as token ids or words.
    Blocks(Vec<Block>),
    /// Literal text (ShareGPT, a trace's `text_input`).
    Text(Arc<str>),
}

/// One request of the workload.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    /// Index in the run (0-based, in sending order).
    pub id: u64,
    /// Fixed-schedule send time, seconds from the start of the run (traces only).
    pub at: Option<f64>,
    /// Prompt tokens as planned (exact for token prompts, an estimate for text).
    pub input_len: u32,
    /// Tokens to generate (`max_tokens`).
    pub output_len: u32,
    pub content: Content,
}

#[derive(Debug, Clone)]
enum Kind {
    /// A finite list, cycled when more requests are asked for (`cycle`).
    List { items: Vec<Request>, cycle: bool },
    Random {
        input_len: u32,
        output_len: u32,
        range_ratio: f64,
        prefix_len: u32,
    },
}

/// A workload ready to generate requests. Requests are produced on demand ([`Workload::get`]),
/// so a long random run never holds every prompt in memory.
#[derive(Debug, Clone)]
pub struct Workload {
    kind: Kind,
    pub prompt: PromptMode,
    pub renderer: Renderer,
    /// Number of requests; `None`: unbounded (stopped by `--duration`).
    pub count: Option<u64>,
    /// Requests carry their own send times (trace replay).
    pub fixed_schedule: bool,
    /// One line describing the workload, for reports.
    pub description: String,
    /// Non-fatal problems found while loading (shown before the run).
    pub warnings: Vec<String>,
}

impl Workload {
    /// Request `i` (0-based), or `None` past the end.
    pub fn get(&self, i: u64) -> Option<Request> {
        if self.count.is_some_and(|n| i >= n) {
            return None;
        }
        match &self.kind {
            Kind::List { items, cycle } => {
                let len = items.len() as u64;
                if len == 0 || (!cycle && i >= len) {
                    return None;
                }
                let mut r = items[(i % len) as usize].clone();
                r.id = i;
                Some(r)
            }
            Kind::Random {
                input_len,
                output_len,
                range_ratio,
                prefix_len,
            } => {
                // Each request has its own RNG stream: request i is the same whatever the
                // order or number of requests generated before it.
                let mut rng =
                    ChaCha8Rng::seed_from_u64(key(&[space::RANDOM_BODY, self.renderer.seed, i]));
                let (lo, hi) = len_range(*input_len, *range_ratio, 0);
                let body = rng.random_range(lo..=hi);
                let (olo, ohi) = len_range(*output_len, *range_ratio, 1);
                let out = rng.random_range(olo..=ohi);
                let mut blocks = Vec::with_capacity(2);
                if *prefix_len > 0 {
                    blocks.push(Block {
                        key: key(&[space::RANDOM_PREFIX]),
                        len: *prefix_len,
                    });
                }
                if body > 0 {
                    blocks.push(Block {
                        key: key(&[space::RANDOM_BODY, i]),
                        len: body,
                    });
                }
                Some(Request {
                    id: i,
                    at: None,
                    input_len: prefix_len.saturating_add(body),
                    output_len: out,
                    content: Content::Blocks(blocks),
                })
            }
        }
    }

    /// Build the workload the arguments describe, loading files; no network.
    pub fn from_args(a: &BenchArgs) -> Result<Workload, BenchError> {
        let dataset = resolve_dataset(a)?;
        let prompt = resolve_prompt(a, dataset)?;
        let tokenizer = match &a.tokenizer {
            Some(p) => Some(Tokenizer::load(p)?),
            None => None,
        };
        let mut tokenizer_warnings = Vec::new();
        let renderer = match &tokenizer {
            Some(t) => {
                let words = WordPieces::build(t)?;
                if !words.exact {
                    tokenizer_warnings.push(format!(
                        "{}: words that are one token each alone merge when concatenated; text prompt lengths are approximate",
                        t.name()
                    ));
                }
                if words.len() < MIN_TOKENIZER_WORDS {
                    tokenizer_warnings.push(format!(
                        "{}: only {} words are single tokens; distinct prompt blocks share more words than usual",
                        t.name(),
                        words.len()
                    ));
                }
                Renderer::with_words(a.seed, Arc::new(words))
            }
            None => Renderer::new(a.seed, a.vocab_size),
        };
        if tokenizer.is_none() && a.vocab_size <= crate::prompt::TOKEN_ID_MIN {
            return Err(BenchError::Arg(format!(
                "--vocab-size must be above {} (token ids are drawn from [{}, VOCAB))",
                crate::prompt::TOKEN_ID_MIN,
                crate::prompt::TOKEN_ID_MIN
            )));
        }
        let unbounded = a.duration.is_some() && a.requests.is_none();
        let synthetic_count = if unbounded {
            None
        } else {
            Some(a.requests.unwrap_or(DEFAULT_REQUESTS))
        };
        let mut w = match dataset {
            Dataset::Trace => load_trace(a, prompt, renderer.clone())?,
            Dataset::Random => {
                if !(0.0..1.0).contains(&a.range_ratio) {
                    return Err(BenchError::Arg(format!(
                        "--range-ratio must be in [0, 1), got {}",
                        a.range_ratio
                    )));
                }
                let input_len = a.input_len.unwrap_or(RANDOM_INPUT_LEN);
                let output_len = a.output_len.unwrap_or(RANDOM_OUTPUT_LEN);
                if output_len == 0 {
                    return Err(BenchError::Arg("--output-len must be at least 1".into()));
                }
                Workload {
                    kind: Kind::Random {
                        input_len,
                        output_len,
                        range_ratio: a.range_ratio,
                        prefix_len: a.prefix_len,
                    },
                    prompt,
                    renderer,
                    count: synthetic_count,
                    fixed_schedule: false,
                    description: format!(
                        "random: input {}{} tokens, output {} tokens, range ratio {}",
                        if a.prefix_len > 0 {
                            format!("{} shared + ", a.prefix_len)
                        } else {
                            String::new()
                        },
                        input_len,
                        output_len,
                        a.range_ratio
                    ),
                    warnings: Vec::new(),
                }
            }
            Dataset::PrefixGroups => {
                let items = prefix_groups(a)?;
                let n = items.len() as u64;
                Workload {
                    kind: Kind::List { items, cycle: true },
                    prompt,
                    renderer,
                    count: if unbounded {
                        None
                    } else {
                        Some(a.requests.unwrap_or(n))
                    },
                    fixed_schedule: false,
                    description: format!(
                        "prefix-groups: {} groups x {} prompts, system prompt {} + question {} tokens, output {} tokens",
                        a.groups,
                        a.prompts_per_group,
                        a.system_prompt_len,
                        a.question_len,
                        a.output_len.unwrap_or(GROUPS_OUTPUT_LEN)
                    ),
                    warnings: Vec::new(),
                }
            }
            Dataset::Sharegpt => {
                let path = a.dataset_path.as_deref().ok_or_else(|| {
                    BenchError::Arg("--dataset sharegpt needs --dataset-path FILE".into())
                })?;
                let (items, desc) = load_sharegpt(path, a, tokenizer.as_ref())?;
                Workload {
                    kind: Kind::List { items, cycle: true },
                    prompt,
                    renderer,
                    count: synthetic_count,
                    fixed_schedule: false,
                    description: desc,
                    warnings: Vec::new(),
                }
            }
        };
        let longest = match dataset {
            Dataset::Random => {
                let (_, hi) = len_range(a.input_len.unwrap_or(RANDOM_INPUT_LEN), a.range_ratio, 0);
                u64::from(hi) + u64::from(a.prefix_len)
            }
            Dataset::PrefixGroups => u64::from(a.system_prompt_len) + u64::from(a.question_len),
            Dataset::Trace | Dataset::Sharegpt => match &w.kind {
                Kind::List { items, .. } => items
                    .iter()
                    .map(|r| u64::from(r.input_len))
                    .max()
                    .unwrap_or(0),
                Kind::Random { .. } => 0,
            },
        };
        if longest > MAX_PROMPT_TOKENS {
            return Err(BenchError::Arg(format!(
                "prompts of up to {longest} tokens requested; the limit is {MAX_PROMPT_TOKENS}"
            )));
        }
        if let Some(t) = &tokenizer {
            w.description
                .push_str(&format!("; prompts built for tokenizer {}", t.name()));
        }
        w.warnings.extend(tokenizer_warnings);
        if w.count == Some(0) {
            return Err(BenchError::Arg(
                "no requests to send (--requests 0?)".into(),
            ));
        }
        if matches!(w.kind, Kind::List { ref items, .. } if items.is_empty()) {
            w.warnings.push("the workload is empty".into());
        }
        Ok(w)
    }
}

/// vLLM's sampling range: `[floor(L(1-r)), ceil(L(1+r))]`, at least `min`.
fn len_range(len: u32, r: f64, min: u32) -> (u32, u32) {
    let lo = ((f64::from(len) * (1.0 - r)).floor() as u32).max(min);
    let hi = ((f64::from(len) * (1.0 + r)).ceil() as u32).max(lo);
    (lo, hi)
}

fn resolve_dataset(a: &BenchArgs) -> Result<Dataset, BenchError> {
    match (a.trace.is_some(), a.dataset) {
        (true, None | Some(Dataset::Trace)) => Ok(Dataset::Trace),
        (true, Some(d)) => Err(BenchError::Arg(format!(
            "--trace replays a trace, but --dataset {} was given; drop one of them",
            serde_json::to_value(d)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default()
        ))),
        (false, Some(d)) => Ok(d),
        (false, None) => Ok(Dataset::Random),
    }
}

fn resolve_prompt(a: &BenchArgs, d: Dataset) -> Result<PromptMode, BenchError> {
    let default = match a.endpoint {
        Endpoint::Completions => PromptMode::Tokens,
        Endpoint::Chat => PromptMode::Text,
    };
    let mode = if d == Dataset::Sharegpt {
        if a.prompt == Some(PromptMode::Tokens) {
            return Err(BenchError::Arg(
                "ShareGPT prompts are text; --prompt tokens needs a tokenizer (drop --prompt)"
                    .into(),
            ));
        }
        PromptMode::Text
    } else {
        a.prompt.unwrap_or(default)
    };
    if mode == PromptMode::Tokens && a.endpoint == Endpoint::Chat {
        return Err(BenchError::Arg(
            "token-id prompts need --endpoint completions; chat messages are text (use --prompt text)"
                .into(),
        ));
    }
    Ok(mode)
}

fn load_trace(
    a: &BenchArgs,
    prompt: PromptMode,
    renderer: Renderer,
) -> Result<Workload, BenchError> {
    let path = a
        .trace
        .as_deref()
        .or(a.dataset_path.as_deref())
        .ok_or_else(|| BenchError::Arg("--dataset trace needs --trace FILE".into()))?;
    if !(a.speedup.is_finite() && a.speedup > 0.0) {
        return Err(BenchError::Arg(format!(
            "--speedup must be a positive number, got {}",
            a.speedup
        )));
    }
    if a.block_size == 0 {
        return Err(BenchError::Arg("--block-size must be positive".into()));
    }
    for (name, v) in [("--start", a.start), ("--end", a.end)] {
        if let Some(v) = v
            && !(v.is_finite() && v >= 0.0)
        {
            return Err(BenchError::Arg(format!(
                "{name} must be a number of seconds >= 0, got {v}"
            )));
        }
    }
    if let (Some(s), Some(e)) = (a.start, a.end)
        && e < s
    {
        return Err(BenchError::Arg(format!(
            "--end ({e}) is before --start ({s})"
        )));
    }
    let loaded = switchyard_trace::load(
        path,
        &switchyard_trace::LoadOptions {
            block_size: a.block_size,
            ..Default::default()
        },
    )?;
    let warnings: Vec<String> = loaded
        .issues
        .iter()
        .map(|i| format!("{}: {i}", path.display()))
        .collect();
    let start_ms = a.start.map(|s| s * 1000.0);
    let end_ms = a.end.map(|s| s * 1000.0);
    let kept: Vec<_> = loaded
        .trace
        .requests
        .iter()
        .enumerate()
        .filter(|(_, r)| {
            start_ms.is_none_or(|s| r.timestamp >= s) && end_ms.is_none_or(|e| r.timestamp <= e)
        })
        .take(a.requests.map_or(usize::MAX, |n| n as usize))
        .collect();
    if kept.is_empty() {
        return Err(BenchError::Arg(format!(
            "{}: no request has a timestamp in the selected range ({} .. {} s; the trace spans {:.1} s)",
            path.display(),
            a.start.unwrap_or(0.0),
            a.end.map_or("end".to_string(), |e| e.to_string()),
            loaded.trace.span_secs()
        )));
    }
    // Time zero: --start if given, else the first kept arrival (no idle wait before it).
    let zero = start_ms.unwrap_or(kept[0].1.timestamp);
    let items: Vec<Request> = kept
        .iter()
        .enumerate()
        .map(|(i, (line, r))| {
            let content = match &r.text_input {
                Some(t) => Content::Text(Arc::from(t.as_str())),
                None => Content::Blocks(trace_blocks(
                    &r.hash_ids,
                    r.input_length,
                    a.block_size,
                    *line as u64,
                )),
            };
            Request {
                id: i as u64,
                at: Some((r.timestamp - zero) / 1000.0 / a.speedup),
                input_len: r.input_length,
                output_len: r.output_length.max(1),
                content,
            }
        })
        .collect();
    let span = items.last().and_then(|r| r.at).unwrap_or(0.0);
    let description = format!(
        "trace {}: {} requests{}, schedule {:.1} s{}",
        path.display(),
        items.len(),
        match (a.start, a.end) {
            (None, None) => String::new(),
            (s, e) => format!(
                " from {} s to {} s",
                s.unwrap_or(0.0),
                e.map_or("end".into(), |e| e.to_string())
            ),
        },
        span,
        if a.speedup != 1.0 {
            format!(" (speedup x{})", a.speedup)
        } else {
            String::new()
        }
    );
    Ok(Workload {
        count: Some(items.len() as u64),
        kind: Kind::List {
            items,
            cycle: false,
        },
        prompt,
        renderer,
        fixed_schedule: true,
        description,
        warnings,
    })
}

fn prefix_groups(a: &BenchArgs) -> Result<Vec<Request>, BenchError> {
    if a.groups == 0 || a.prompts_per_group == 0 {
        return Err(BenchError::Arg(
            "--groups and --prompts-per-group must be at least 1".into(),
        ));
    }
    let n = u64::from(a.groups) * u64::from(a.prompts_per_group);
    if n > 10_000_000 {
        return Err(BenchError::Arg(format!(
            "{n} prefix-group prompts is too many (at most 10,000,000)"
        )));
    }
    let output_len = a.output_len.unwrap_or(GROUPS_OUTPUT_LEN).max(1);
    let mut items = Vec::with_capacity(n as usize);
    for g in 0..a.groups {
        for j in 0..a.prompts_per_group {
            let mut blocks = Vec::with_capacity(2);
            if a.system_prompt_len > 0 {
                blocks.push(Block {
                    key: key(&[space::GROUP_SYSTEM, u64::from(g)]),
                    len: a.system_prompt_len,
                });
            }
            if a.question_len > 0 {
                blocks.push(Block {
                    key: key(&[space::GROUP_QUESTION, u64::from(g), u64::from(j)]),
                    len: a.question_len,
                });
            }
            items.push(Request {
                id: 0,
                at: None,
                input_len: a.system_prompt_len.saturating_add(a.question_len),
                output_len,
                content: Content::Blocks(blocks),
            });
        }
    }
    let mut rng = ChaCha8Rng::seed_from_u64(a.seed);
    items.shuffle(&mut rng);
    Ok(items)
}

#[derive(Deserialize)]
struct ShareGptEntry {
    #[serde(default)]
    conversations: Option<Vec<ShareGptTurn>>,
}

#[derive(Deserialize)]
struct ShareGptTurn {
    value: String,
}

/// Token estimate of a text without a tokenizer.
pub fn estimate_tokens(text: &str) -> u32 {
    let chars = text.chars().count() as f64;
    (chars / CHARS_PER_TOKEN).ceil() as u32
}

fn load_sharegpt(
    path: &Path,
    a: &BenchArgs,
    tokenizer: Option<&Tokenizer>,
) -> Result<(Vec<Request>, String), BenchError> {
    let err = |message: String| BenchError::Dataset {
        path: path.to_path_buf(),
        message,
    };
    let text = std::fs::read(path).map_err(|e| err(format!("cannot read: {e}")))?;
    let entries: Vec<ShareGptEntry> = serde_json::from_slice(&text).map_err(|e| {
        err(format!(
            "not a ShareGPT file ({e}); expected a JSON array of objects like {{\"conversations\": [{{\"from\": \"human\", \"value\": \"...\"}}, {{\"from\": \"gpt\", \"value\": \"...\"}}]}}"
        ))
    })?;
    let total = entries.len();
    let mut pairs: Vec<(String, String)> = entries
        .into_iter()
        .filter_map(|e| {
            let mut c = e.conversations?;
            if c.len() < 2 {
                return None;
            }
            let answer = c.swap_remove(1).value;
            let prompt = c.swap_remove(0).value;
            Some((prompt, answer))
        })
        .collect();
    let with_two_turns = pairs.len();
    let mut rng = ChaCha8Rng::seed_from_u64(a.seed);
    pairs.shuffle(&mut rng);
    let fixed_out = a.output_len;
    // Token counts: the tokenizer's when given (as vLLM counts), else the estimate.
    let count = |text: &str| -> Result<u32, BenchError> {
        match tokenizer {
            Some(t) => Ok(u32::try_from(t.count(text)?).unwrap_or(u32::MAX)),
            None => Ok(estimate_tokens(text)),
        }
    };
    let mut items: Vec<Request> = Vec::new();
    for (prompt, answer) in pairs {
        let p = count(&prompt)?;
        if !(SHAREGPT_MIN_LEN..=SHAREGPT_MAX_PROMPT).contains(&p) {
            continue;
        }
        let o = match fixed_out {
            Some(o) => o,
            None => count(&answer)?,
        };
        let too_short = fixed_out.is_none() && o < SHAREGPT_MIN_LEN;
        if too_short || p.saturating_add(o) > SHAREGPT_MAX_TOTAL {
            continue;
        }
        items.push(Request {
            id: 0,
            at: None,
            input_len: p,
            output_len: o.max(1),
            content: Content::Text(Arc::from(prompt)),
        });
    }
    let lengths = match tokenizer {
        Some(t) => format!("lengths counted with {}", t.name()),
        None => format!("lengths estimated at {CHARS_PER_TOKEN} chars/token"),
    };
    if items.is_empty() {
        return Err(err(format!(
            "no usable conversation: {total} entries, {with_two_turns} with at least two turns, none within the length filters (prompt {SHAREGPT_MIN_LEN}..{SHAREGPT_MAX_PROMPT} tokens, prompt + answer <= {SHAREGPT_MAX_TOTAL}; {lengths})"
        )));
    }
    let desc = format!(
        "sharegpt {}: {} usable of {} conversations ({lengths}{})",
        path.display(),
        items.len(),
        total,
        fixed_out.map_or(String::new(), |o| format!(", output fixed at {o}"))
    );
    Ok((items, desc))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn args() -> BenchArgs {
        BenchArgs::with_url("http://x")
    }

    #[test]
    fn random_lengths_follow_vllm_ranges_and_are_deterministic() {
        let mut a = args();
        a.input_len = Some(100);
        a.output_len = Some(10);
        a.range_ratio = 0.5;
        a.prefix_len = 7;
        a.requests = Some(200);
        let w = Workload::from_args(&a).unwrap();
        let mut seen_lo = false;
        for i in 0..200 {
            let r = w.get(i).unwrap();
            assert_eq!(r, w.get(i).unwrap());
            assert!((57..=157).contains(&r.input_len), "{}", r.input_len);
            assert!((5..=15).contains(&r.output_len));
            seen_lo |= r.input_len < 80;
            let Content::Blocks(b) = &r.content else {
                panic!()
            };
            assert_eq!(b[0].len, 7);
            assert_eq!(
                b[0].key,
                w.get(0)
                    .map(|r| match r.content {
                        Content::Blocks(b) => b[0].key,
                        _ => 0,
                    })
                    .unwrap()
            );
        }
        assert!(seen_lo);
        assert!(w.get(200).is_none());
        a.range_ratio = 1.0;
        assert!(Workload::from_args(&a).is_err());
        a.range_ratio = 0.0;
        a.input_len = Some(u32::MAX);
        let e = Workload::from_args(&a).unwrap_err().to_string();
        assert!(e.contains("the limit is"), "{e}");
        // Unbounded with --duration.
        let mut d = args();
        d.duration = Some(1.0);
        assert_eq!(Workload::from_args(&d).unwrap().count, None);
    }

    #[test]
    fn trace_selection_schedule_and_speedup() {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        for (ts, hid) in [(0, "[1]"), (1000, "[1,2]"), (2500, "[3]"), (4000, "[1]")] {
            writeln!(
                f,
                r#"{{"timestamp": {ts}, "input_length": 100, "output_length": 5, "hash_ids": {hid}}}"#
            )
            .unwrap();
        }
        let mut a = args();
        a.trace = Some(f.path().to_path_buf());
        a.start = Some(1.0);
        a.end = Some(2.5);
        a.speedup = 2.0;
        let w = Workload::from_args(&a).unwrap();
        assert!(w.fixed_schedule);
        assert_eq!(w.count, Some(2));
        assert_eq!(w.get(0).unwrap().at, Some(0.0));
        assert_eq!(w.get(1).unwrap().at, Some(0.75));
        assert!(w.get(2).is_none());
        a.start = Some(10.0);
        a.end = None;
        let e = Workload::from_args(&a).unwrap_err().to_string();
        assert!(e.contains("no request has a timestamp"), "{e}");
        a.start = None;
        a.requests = Some(3);
        let w = Workload::from_args(&a).unwrap();
        assert_eq!(w.count, Some(3));
        assert_eq!(w.get(2).unwrap().at, Some(1.25));
        a.endpoint = Endpoint::Chat;
        a.prompt = Some(PromptMode::Tokens);
        assert!(Workload::from_args(&a).is_err());
    }

    #[test]
    fn prefix_groups_share_system_prompts() {
        let mut a = args();
        a.dataset = Some(Dataset::PrefixGroups);
        a.groups = 3;
        a.prompts_per_group = 4;
        a.system_prompt_len = 50;
        a.question_len = 5;
        let w = Workload::from_args(&a).unwrap();
        assert_eq!(w.count, Some(12));
        let mut systems = std::collections::BTreeMap::new();
        for i in 0..12 {
            let Content::Blocks(b) = w.get(i).unwrap().content else {
                panic!()
            };
            *systems.entry(b[0].key).or_insert(0) += 1;
        }
        assert_eq!(systems.values().copied().collect::<Vec<_>>(), vec![4, 4, 4]);
    }

    /// A trained byte-level BPE model directory, shared by the tests.
    fn model_dir() -> &'static Path {
        static DIR: std::sync::OnceLock<tempfile::TempDir> = std::sync::OnceLock::new();
        DIR.get_or_init(|| {
            let d = tempfile::tempdir().unwrap();
            switchyard_tokenize::testing::write_model_dir(d.path(), 800, None).unwrap();
            d
        })
        .path()
    }

    #[test]
    fn tokenizer_text_prompts_have_exact_lengths_and_shared_blocks() {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        for (ts, len, hid) in [(0, 700, "[1,2]"), (10, 900, "[1,3]"), (20, 100, "[2]")] {
            writeln!(
                f,
                r#"{{"timestamp": {ts}, "input_length": {len}, "output_length": 5, "hash_ids": {hid}}}"#
            )
            .unwrap();
        }
        let tok = Tokenizer::load(model_dir()).unwrap();
        let mut a = args();
        a.trace = Some(f.path().to_path_buf());
        a.tokenizer = Some(model_dir().to_path_buf());
        a.prompt = Some(PromptMode::Text);
        a.vocab_size = 5; // unused with a tokenizer
        let w = Workload::from_args(&a).unwrap();
        // (A small vocabulary may warn that it has few single-token words; never inexact.)
        assert!(
            w.warnings.iter().all(|m| !m.contains("approximate")),
            "{:?}",
            w.warnings
        );
        assert!(
            w.description.contains("tokenizer.json"),
            "{}",
            w.description
        );
        let blocks = |i| match w.get(i).unwrap().content {
            Content::Blocks(b) => b,
            Content::Text(_) => panic!(),
        };
        let (b0, b1, b2) = (blocks(0), blocks(1), blocks(2));
        let (t0, t1, t2) = (
            w.renderer.text(&b0),
            w.renderer.text(&b1),
            w.renderer.text(&b2),
        );
        let (i0, i1, i2) = (
            tok.encode(&t0).unwrap(),
            tok.encode(&t1).unwrap(),
            tok.encode(&t2).unwrap(),
        );
        // Exact lengths under the tokenizer.
        assert_eq!((i0.len(), i1.len(), i2.len()), (700, 900, 100));
        // Token-id prompts are the same tokens.
        assert_eq!(w.renderer.tokens(&b0), i0);
        assert_eq!(w.renderer.tokens(&b1), i1);
        // hash id 1 is the same first block, as text and as tokens.
        let cut = t0.match_indices(' ').nth(512).unwrap().0;
        assert_eq!(t0[..cut], t1[..cut]);
        assert_eq!(i0[..512], i1[..512]);
        let same = (512..700).filter(|&k| i0[k] == i1[k]).count();
        assert!(same < 30, "{same} equal positions in distinct blocks");
        // hash id 2 (second block of request 0) starts request 2: identical tokens there too,
        // whatever preceded it.
        assert_eq!(i2[..], i0[512..612]);
        // The words come from the tokenizer's vocabulary, not from the built-in list.
        assert!(i0.iter().all(|&t| (t as usize) < tok.vocab_size()));

        // Chat endpoint: the same text, sent without the leading space: still exact.
        a.endpoint = Endpoint::Chat;
        let w = Workload::from_args(&a).unwrap();
        assert_eq!(w.renderer.text(&b0), t0);
        for (t, n) in [(&t0, 700), (&t1, 900), (&t2, 100)] {
            assert_eq!(tok.count(t.trim_start()).unwrap(), n);
            // After a ChatML header too.
            let m = format!("<|im_start|>user\n{}<|im_end|>", t.trim_start());
            let empty = tok.count("<|im_start|>user\n<|im_end|>").unwrap();
            assert_eq!(tok.count(&m).unwrap(), n + empty);
        }

        // Bad tokenizer path: a clear error.
        a.tokenizer = Some(model_dir().join("missing.json"));
        let e = Workload::from_args(&a).unwrap_err().to_string();
        assert!(e.contains("missing.json"), "{e}");
    }

    #[test]
    fn sharegpt_lengths_counted_with_the_tokenizer() {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        write!(
            f,
            r#"[{{"conversations":[{{"from":"human","value":"the router sends the request to the worker"}},{{"from":"gpt","value":"the worker holds the cache and the queue"}}]}}]"#
        )
        .unwrap();
        let tok = Tokenizer::load(model_dir()).unwrap();
        let mut a = args();
        a.dataset = Some(Dataset::Sharegpt);
        a.dataset_path = Some(f.path().to_path_buf());
        a.tokenizer = Some(model_dir().to_path_buf());
        a.requests = Some(1);
        let w = Workload::from_args(&a).unwrap();
        let r = w.get(0).unwrap();
        assert_eq!(
            r.input_len as usize,
            tok.count("the router sends the request to the worker")
                .unwrap()
        );
        assert_eq!(
            r.output_len as usize,
            tok.count("the worker holds the cache and the queue")
                .unwrap()
        );
        // 43 chars / 4 would say 11; the trained tokenizer has one token per word here.
        assert_eq!(r.input_len, 8);
        assert!(w.description.contains("counted with"), "{}", w.description);
        // The built-in by name.
        a.tokenizer = Some("o200k_base".into());
        let w = Workload::from_args(&a).unwrap();
        assert_eq!(w.get(0).unwrap().input_len, 8);
        assert!(w.description.contains("o200k_base"), "{}", w.description);
    }

    #[test]
    fn sharegpt_filters_and_bad_shape() {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        let long = "x".repeat(5000);
        write!(
            f,
            r#"[{{"conversations":[{{"from":"human","value":"What is the capital of France?"}},{{"from":"gpt","value":"Paris is the capital of France."}}]}},
               {{"conversations":[{{"from":"human","value":"hi"}},{{"from":"gpt","value":"hello there, how are you"}}]}},
               {{"conversations":[{{"from":"human","value":"{long}"}},{{"from":"gpt","value":"ok ok ok ok ok ok"}}]}},
               {{"conversations":[{{"from":"human","value":"only one turn here"}}]}},
               {{"id": 5}}]"#
        )
        .unwrap();
        let mut a = args();
        a.dataset = Some(Dataset::Sharegpt);
        a.dataset_path = Some(f.path().to_path_buf());
        a.requests = Some(3);
        let w = Workload::from_args(&a).unwrap();
        assert!(w.description.contains("1 usable of 5"), "{}", w.description);
        let r = w.get(2).unwrap();
        assert_eq!(r.input_len, 8); // 30 chars / 4
        assert_eq!(r.output_len, 8); // 31 chars / 4
        assert_eq!(w.prompt, PromptMode::Text);

        let mut g = tempfile::NamedTempFile::new().unwrap();
        write!(g, r#"{{"conversations": []}}"#).unwrap();
        a.dataset_path = Some(g.path().to_path_buf());
        let e = Workload::from_args(&a).unwrap_err().to_string();
        assert!(e.contains("not a ShareGPT file"), "{e}");
    }
}
