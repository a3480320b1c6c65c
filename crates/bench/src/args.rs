//! Command-line arguments of `switchyard bench` (flatten [`BenchArgs`] into a clap command).
//! The doc comments are the `--help` text.

use std::path::PathBuf;

use clap::{Args, ValueEnum};
use serde::Serialize;

const EXAMPLES: &str = "Examples:
  # Replay the first 5 minutes of the bundled Mooncake trace, twice as fast, against serve
  switchyard bench --trace data/mooncake_conversation.jsonl.gz --end 300 --speedup 2 \\
      --goodput ttft:2000,itl:25 --out runs/trace-x2
  # Random 2000/100-token prompts at 8 req/s (Poisson), generation forced to full length
  switchyard bench --dataset random --input-len 2000 --output-len 100 --request-rate 8 \\
      --extra '{\"ignore_eos\":true}'
  # 32 concurrent users, chat API, for 60 seconds
  switchyard bench --endpoint chat --dataset prefix-groups --concurrency 32 --duration 60
  # Text prompts of exact lengths for the served model (a local Hugging Face model directory)
  switchyard bench --endpoint chat --trace data/mooncake_conversation.jsonl.gz --end 60 \\
      --tokenizer ~/models/Qwen3-8B

Times: every SSE chunk is stamped when read off the socket. TTFT, E2E are measured from the
actual send and also from the scheduled send; dispatch lag (actual - scheduled) is reported.
TPOT = (E2E - TTFT) / (output tokens - 1) per request (AIPerf's inter_token_latency, the
`itl` of --goodput); ITL = every gap between streamed chunks, pooled (vLLM's ITL).";

/// Which OpenAI-compatible API to call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Endpoint {
    /// `POST /v1/completions` (prompt as token ids or text).
    Completions,
    /// `POST /v1/chat/completions` (prompt as one user message; text only).
    Chat,
}

impl Endpoint {
    pub fn path(self) -> &'static str {
        match self {
            Endpoint::Completions => "/v1/completions",
            Endpoint::Chat => "/v1/chat/completions",
        }
    }
}

/// Where the requests come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Dataset {
    /// Mooncake-format trace (`--trace FILE`), replayed on its own fixed schedule.
    Trace,
    /// Random prompts of `--input-len` tokens (vLLM `bench serve` semantics).
    Random,
    /// `--groups` x `--prompts-per-group` prompts; each group shares a system prompt.
    PrefixGroups,
    /// A local ShareGPT JSON file (`--dataset-path`): first human turn as prompt.
    Sharegpt,
}

/// How prompts are sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PromptMode {
    /// Token-id arrays on /v1/completions: exact lengths, no tokenizer needed.
    Tokens,
    /// Words: needed for chat; about one token each, exactly one with --tokenizer.
    Text,
}

/// Inter-arrival distribution for `--request-rate`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ArrivalKind {
    /// Exponential gaps (a Poisson process); with `--burstiness` other than 1, gamma.
    Poisson,
    /// Gamma gaps with shape `--burstiness` (<1 burstier, >1 more regular), mean 1/rate.
    Gamma,
    /// Exactly 1/rate between requests.
    Constant,
}

/// Live progress display.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ProgressMode {
    /// A redrawn status line on a terminal, plain lines every 10 s otherwise.
    Auto,
    /// Plain lines every 10 s.
    Plain,
    /// No progress output.
    Off,
}

/// Load-generate against an OpenAI-compatible endpoint (vLLM, SGLang, TensorRT-LLM, Dynamo,
/// `switchyard serve`) and report TTFT, TPOT, ITL, E2E latency, throughput and goodput with
/// the same definitions as `switchyard lab`.
#[derive(Debug, Clone, Args, Serialize)]
#[command(after_help = EXAMPLES)]
pub struct BenchArgs {
    // ---------------------------------------------------------------- target
    /// Base URL of the server (scheme, host, port; the API path is added).
    #[arg(long, default_value = "http://127.0.0.1:8000", help_heading = "Target")]
    pub url: String,

    /// API to call.
    #[arg(long, value_enum, default_value_t = Endpoint::Completions, help_heading = "Target")]
    pub endpoint: Endpoint,

    /// Model name sent in every request [default: the first model of GET /v1/models].
    #[arg(long, help_heading = "Target")]
    pub model: Option<String>,

    /// Request complete responses instead of streams (TTFT, TPOT and ITL are then not
    /// measurable: TTFT equals E2E).
    #[arg(long, help_heading = "Target")]
    pub no_stream: bool,

    /// Extra JSON object merged into every request body, e.g. '{"ignore_eos":true}' or
    /// '{"temperature":0,"max_completion_tokens":64}'. Its keys override Switchyard's.
    #[arg(long, value_name = "JSON", help_heading = "Target")]
    pub extra: Option<String>,

    /// Extra HTTP header `Name: value` (repeatable).
    #[arg(
        short = 'H',
        long = "header",
        value_name = "NAME: VALUE",
        help_heading = "Target"
    )]
    pub headers: Vec<String>,

    /// API key, sent as `Authorization: Bearer KEY` [default: $OPENAI_API_KEY if set].
    #[arg(long, help_heading = "Target")]
    #[serde(skip)]
    pub api_key: Option<String>,

    /// Wait up to this many seconds for the server to answer GET /v1/models before starting
    /// (0: fail at once if it is unreachable).
    #[arg(
        long,
        value_name = "SECS",
        default_value_t = 0.0,
        help_heading = "Target"
    )]
    pub wait_ready: f64,

    /// Per-request timeout in seconds (from send to the end of the response).
    #[arg(
        long,
        value_name = "SECS",
        default_value_t = 600.0,
        help_heading = "Target"
    )]
    pub timeout: f64,

    // ---------------------------------------------------------------- workload
    /// Mooncake-format trace (.jsonl or .jsonl.gz) to replay on its fixed schedule; implies
    /// `--dataset trace`.
    #[arg(long, value_name = "FILE", help_heading = "Workload")]
    pub trace: Option<PathBuf>,

    /// Workload [default: trace with --trace, else random].
    #[arg(long, value_enum, help_heading = "Workload")]
    pub dataset: Option<Dataset>,

    /// Input file for `--dataset sharegpt` (or `trace`).
    #[arg(long, value_name = "FILE", help_heading = "Workload")]
    pub dataset_path: Option<PathBuf>,

    /// Prompt encoding [default: tokens on completions, text on chat]. Without --tokenizer,
    /// text prompts use about one word per token, so the server's token counts only
    /// approximate the requested lengths (the report uses the server's usage.prompt_tokens
    /// when sent).
    #[arg(long, value_enum, help_heading = "Workload")]
    pub prompt: Option<PromptMode>,

    /// The served model's tokenizer: a tokenizer.json or a Hugging Face model directory (read
    /// locally, nothing downloaded). Text prompts are then built from words that are exactly
    /// one token each under it, so their lengths are exact (the chat template adds its own
    /// tokens on /v1/chat/completions) and equal trace hash_ids give identical text; token-id
    /// prompts use the same words' ids (--vocab-size is unused); ShareGPT lengths are counted
    /// with it instead of estimated at 4 characters per token.
    #[arg(long, value_name = "PATH", help_heading = "Workload")]
    pub tokenizer: Option<PathBuf>,

    /// Number of requests [default: all trace lines in range; 1000 for random and sharegpt;
    /// groups x prompts-per-group for prefix-groups]. Smaller lists are cycled.
    #[arg(
        long,
        visible_alias = "num-prompts",
        value_name = "N",
        help_heading = "Workload"
    )]
    pub requests: Option<u64>,

    /// Seed for every random choice (lengths, prompts, arrivals, shuffles).
    #[arg(long, default_value_t = 0, help_heading = "Workload")]
    pub seed: u64,

    /// Token ids of generated prompts are drawn from [1000, VOCAB): keep it at or below the
    /// model's vocabulary size (unused with --tokenizer).
    #[arg(
        long,
        value_name = "VOCAB",
        default_value_t = 32000,
        help_heading = "Workload"
    )]
    pub vocab_size: u32,

    /// Trace: tokens per hash id.
    #[arg(long, default_value_t = 512, help_heading = "Trace replay")]
    pub block_size: u32,

    /// Trace: replay X times faster (timestamps divided by X).
    #[arg(
        long,
        value_name = "X",
        default_value_t = 1.0,
        help_heading = "Trace replay"
    )]
    pub speedup: f64,

    /// Trace: first timestamp to replay, seconds into the trace (inclusive); it becomes time 0.
    #[arg(long, value_name = "SECS", help_heading = "Trace replay")]
    pub start: Option<f64>,

    /// Trace: last timestamp to replay, seconds into the trace (inclusive).
    #[arg(long, value_name = "SECS", help_heading = "Trace replay")]
    pub end: Option<f64>,

    /// Random/prefix-groups/sharegpt: tokens per prompt [random default: 1024].
    #[arg(long, visible_alias = "random-input-len", help_heading = "Synthetic")]
    pub input_len: Option<u32>,

    /// Tokens to generate (max_tokens) [random default: 128; prefix-groups: 256; sharegpt:
    /// the length of the recorded answer].
    #[arg(long, visible_alias = "random-output-len", help_heading = "Synthetic")]
    pub output_len: Option<u32>,

    /// Random: lengths uniform in [L*(1-r), L*(1+r)] (vLLM semantics), 0 <= r < 1.
    #[arg(
        long,
        visible_alias = "random-range-ratio",
        default_value_t = 0.0,
        help_heading = "Synthetic"
    )]
    pub range_ratio: f64,

    /// Random: tokens of a prefix shared by every request, before the random part.
    #[arg(
        long,
        visible_alias = "random-prefix-len",
        default_value_t = 0,
        help_heading = "Synthetic"
    )]
    pub prefix_len: u32,

    /// Prefix-groups: number of groups (distinct system prompts).
    #[arg(long, default_value_t = 64, help_heading = "Synthetic")]
    pub groups: u32,

    /// Prefix-groups: prompts per group.
    #[arg(long, default_value_t = 16, help_heading = "Synthetic")]
    pub prompts_per_group: u32,

    /// Prefix-groups: tokens of each group's shared system prompt.
    #[arg(long, default_value_t = 2048, help_heading = "Synthetic")]
    pub system_prompt_len: u32,

    /// Prefix-groups: tokens of each prompt's own question, after the system prompt.
    #[arg(long, default_value_t = 128, help_heading = "Synthetic")]
    pub question_len: u32,

    // ---------------------------------------------------------------- load
    /// Requests per second (inf: all at once). Arrivals follow --arrival. Without a rate or
    /// --concurrency, synthetic workloads send everything at once (like vLLM).
    #[arg(long, value_name = "RPS", help_heading = "Load")]
    pub request_rate: Option<f64>,

    /// Inter-arrival distribution for --request-rate.
    #[arg(long, value_enum, default_value_t = ArrivalKind::Poisson, help_heading = "Load")]
    pub arrival: ArrivalKind,

    /// Gamma shape for --request-rate (1: Poisson; <1 burstier; >1 smoother).
    #[arg(long, default_value_t = 1.0, help_heading = "Load")]
    pub burstiness: f64,

    /// Requests in flight at most. Alone: a closed loop of N users, each sending its next
    /// request as soon as the previous one finishes. With a rate or a trace: a cap (arrivals
    /// keep their schedule and wait client-side; that wait is reported as client queueing and
    /// counts in the from-scheduled latencies).
    #[arg(long, value_name = "N", help_heading = "Load")]
    pub concurrency: Option<u32>,

    /// Stop sending new requests after this many seconds.
    #[arg(long, value_name = "SECS", help_heading = "Load")]
    pub duration: Option<f64>,

    /// After the last request was sent (or --duration), wait at most this long for the
    /// requests in flight; the rest are abandoned (reported, not counted).
    #[arg(
        long,
        value_name = "SECS",
        default_value_t = 600.0,
        help_heading = "Load"
    )]
    pub grace: f64,

    /// Runtime worker threads [default: number of CPUs].
    #[arg(long, help_heading = "Load")]
    pub threads: Option<usize>,

    /// Run the client's threads (the open-loop dispatcher and the runtime workers) with
    /// real-time scheduling, SCHED_FIFO priority 1 (needs root or CAP_SYS_NICE; otherwise
    /// the run continues at normal priority and the report says why). On a busy machine this
    /// keeps the dispatch lag p99 under 0.2 ms where normal priority gives several ms. The
    /// client then preempts other work on the machine whenever it has something to do
    /// (a server on the same host included), so it is opt-in.
    #[arg(long, help_heading = "Load")]
    pub realtime: bool,

    // ---------------------------------------------------------------- output
    /// SLOs for goodput, milliseconds: e.g. `ttft:2000,itl:25` (itl = per-request TPOT, as
    /// AIPerf; also tpot, e2e).
    #[arg(long, value_name = "SLO", help_heading = "Output")]
    pub goodput: Option<String>,

    /// Write summary.json, requests.jsonl and report.html into this directory.
    #[arg(long, value_name = "DIR", help_heading = "Output")]
    pub out: Option<PathBuf>,

    /// Name of the run in reports [default: derived from the workload].
    #[arg(long, help_heading = "Output")]
    pub label: Option<String>,

    /// Live progress display.
    #[arg(long, value_enum, default_value_t = ProgressMode::Auto, help_heading = "Output")]
    pub progress: ProgressMode,
}

impl BenchArgs {
    /// The defaults, as if no flag were given (handy for tests and programmatic use).
    pub fn with_url(url: impl Into<String>) -> BenchArgs {
        use clap::Parser;
        #[derive(Parser)]
        struct P {
            #[command(flatten)]
            a: BenchArgs,
        }
        let mut a = P::parse_from(["bench"]).a;
        a.url = url.into();
        a
    }
}
