//! `switchyard trace ...`: analyze and synthesize Mooncake-format traces.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Result;
use clap::{Args, Subcommand};
use switchyard_trace::{Analysis, Histogram, LoadOptions, Loaded, SynthConfig};

use crate::fmt::{compact, pct, thousands};

#[derive(Subcommand)]
pub enum TraceCommand {
    /// Request, length and prefix-reuse statistics of a trace.
    #[command(long_about = ANALYZE_HELP)]
    Analyze(AnalyzeArgs),
    /// Generate a new trace from a seed trace, stretching prefixes and prompts.
    #[command(long_about = SYNTH_HELP)]
    Synthesize(SynthArgs),
}

const ANALYZE_HELP: &str = "\
Request, length and prefix-reuse statistics of a Mooncake-format trace (.jsonl or .jsonl.gz).

Definitions (they follow Dynamo's `datagen analyze` where it has the metric, so numbers compare):
  span                 last arrival − first arrival; rates are totals divided by the span
  block references     Σ len(hash_ids) over all requests
  unique blocks        distinct hash ids
  reused blocks        distinct hash ids that appear in more than one request (% of unique)
  cache efficiency     repeated references / all references = (references − unique) / references
  block-level hit rate a reference hits when an earlier request already had that block
                       (infinite cache, any position)
  token-level hit rate the same weighted by tokens (a partial last block counts its real tokens)
  prefix hit rate      mean over requests of (leading blocks an earlier request had) / blocks:
                       an infinite cache that matches prefixes only, as engines do
                       (datagen's \"theoretical hit rate\")
  shared context       per request: block size × (its blocks that occur more than once in the
                       trace), or the whole input when all do (datagen's \"context length\")
  unique prompt        input length − shared context
  shared-prefix ratio  Σ shared context / Σ input tokens
  prefix groups        distinct first blocks shared by at least two requests
  percentiles          linear interpolation (numpy's default); std is the population std

Histograms use half-octave bins; `--json` gives their edges and counts.

Example:
  switchyard trace analyze data/mooncake_conversation.jsonl.gz";

const SYNTH_HELP: &str = "\
Generate a new trace from a seed trace, as users do to scale a production trace up to another
workload (e.g. a coding workload with longer shared contexts).

Model: the seed's hash ids form a prefix tree. A request's leading blocks that occur more than
once in the trace are its shared prefix (its place in the tree); the rest is its unique prompt.
A synthetic request is a seed request with the shared prefix stretched by
--prefix-len-multiplier (new ids derived from the old, so requests that shared a prefix still
share it, and equal ids still mean identical blocks) and the unique prompt stretched by
--prompt-len-multiplier (fresh ids). Each request keeps its own pairing of context and prompt.

Arrivals keep the seed's pattern: request i arrives when seed request i did (the trace repeats
end to end when more requests are asked for), divided by --speedup-ratio. Its content is
sampled (seeded) among the seed requests within --sample-window positions, which keeps the mix
and the temporal locality of prefix reuse (multi-turn sessions) along the timeline.

--max-isl DROPS requests longer than the limit and samples a fitting neighbour for that
arrival instead (the count and arrival pattern are kept). Clipping would pile requests up at
exactly the limit and cut shared prefixes short, a workload that does not exist.

Example (the DeepSeek-V3.2 GB200 seed recipe):
  switchyard trace synthesize --input-file data/mooncake_conversation.jsonl.gz \\
      --prefix-len-multiplier 16 --prompt-len-multiplier 10 --max-isl 110000 --num-requests 10000";

#[derive(Args)]
pub struct LoadArgs {
    /// Tokens per hash id.
    #[arg(long, default_value_t = switchyard_trace::DEFAULT_BLOCK_SIZE)]
    pub block_size: u32,
    /// Treat suspicious but usable data (hash_ids inconsistent with input_length, unsorted
    /// timestamps) as an error instead of a warning.
    #[arg(long)]
    pub strict: bool,
}

#[derive(Args)]
pub struct AnalyzeArgs {
    /// Trace file (.jsonl or .jsonl.gz).
    pub file: PathBuf,
    #[command(flatten)]
    pub load: LoadArgs,
    /// Print JSON instead of tables (all statistics and histogram bins).
    #[arg(long)]
    pub json: bool,
}

#[derive(Args)]
pub struct SynthArgs {
    /// Seed trace (.jsonl or .jsonl.gz).
    #[arg(long, short = 'i')]
    pub input_file: PathBuf,
    /// Requests to generate [default: as many as the seed trace has].
    #[arg(long)]
    pub num_requests: Option<usize>,
    /// Stretch shared prefixes by this factor.
    #[arg(long, default_value_t = 1.0)]
    pub prefix_len_multiplier: f64,
    /// Stretch the unique part of each prompt by this factor.
    #[arg(long, default_value_t = 1.0)]
    pub prompt_len_multiplier: f64,
    /// Replicate the prefix tree into N independent copies (fewer requests share a root).
    #[arg(long, default_value_t = 1)]
    pub prefix_root_multiplier: u32,
    /// Drop requests longer than this many tokens (a fitting neighbour takes the arrival).
    #[arg(long)]
    pub max_isl: Option<u32>,
    /// Compress arrival times by this factor (2 = twice the request rate).
    #[arg(long, default_value_t = 1.0)]
    pub speedup_ratio: f64,
    /// Sample each request among the seed requests this many positions around it (0 = keep
    /// the seed's request at each position).
    #[arg(long, default_value_t = SynthConfig::default().sample_window)]
    pub sample_window: usize,
    /// Random seed (same seed, same output).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Output file (.jsonl, or .jsonl.gz to compress) [default: a name encoding the parameters,
    /// next to the input].
    #[arg(long, short = 'o')]
    pub output: Option<PathBuf>,
    #[command(flatten)]
    pub load: LoadArgs,
    /// Print the output's statistics as JSON instead of tables.
    #[arg(long)]
    pub json: bool,
}

pub fn run(cmd: TraceCommand) -> Result<()> {
    match cmd {
        TraceCommand::Analyze(a) => analyze(a),
        TraceCommand::Synthesize(a) => synthesize(a),
    }
}

/// Load a trace and print its warnings to stderr.
pub fn load_trace(path: &Path, args: &LoadArgs) -> Result<Loaded> {
    let opts = LoadOptions {
        block_size: args.block_size,
        strict: args.strict,
        ..Default::default()
    };
    let loaded = switchyard_trace::load(path, &opts)?;
    for issue in &loaded.issues {
        eprintln!(
            "warning: {}: {issue} (--strict makes this an error)",
            path.display()
        );
    }
    Ok(loaded)
}

fn analyze(args: AnalyzeArgs) -> Result<()> {
    let loaded = load_trace(&args.file, &args.load)?;
    let a = switchyard_trace::analyze(&loaded.trace);
    if args.json {
        println!("{}", serde_json::to_string_pretty(&a)?);
    } else {
        print!("{}", render_analysis(&args.file.display().to_string(), &a));
    }
    Ok(())
}

fn synthesize(args: SynthArgs) -> Result<()> {
    let started = Instant::now();
    let loaded = load_trace(&args.input_file, &args.load)?;
    let cfg = SynthConfig {
        num_requests: args.num_requests,
        prefix_len_multiplier: args.prefix_len_multiplier,
        prompt_len_multiplier: args.prompt_len_multiplier,
        prefix_root_multiplier: args.prefix_root_multiplier,
        max_isl: args.max_isl,
        speedup_ratio: args.speedup_ratio,
        sample_window: args.sample_window,
        seed: args.seed,
    };
    let (trace, report) = switchyard_trace::synthesize(&loaded.trace, &cfg)?;
    let out = args.output.unwrap_or_else(|| {
        let name = cfg.default_file_name(&args.input_file, report.requests);
        args.input_file.with_file_name(name)
    });
    switchyard_trace::write_jsonl(&out, &trace)?;
    let a = switchyard_trace::analyze(&trace);
    if args.json {
        let v =
            serde_json::json!({ "output": out, "synthesis": report, "config": cfg, "analysis": a });
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    println!(
        "wrote {} requests to {} in {:.2} s",
        thousands(report.requests as f64),
        out.display(),
        started.elapsed().as_secs_f64()
    );
    if let Some(mx) = cfg.max_isl {
        println!(
            "--max-isl {}: {} of {} seed requests are longer once stretched; {} arrivals re-sampled a fitting neighbour",
            thousands(mx as f64),
            thousands(report.seed_requests_over_max_isl as f64),
            thousands(loaded.trace.requests.len() as f64),
            thousands(report.resampled as f64)
        );
    }
    println!();
    print!("{}", render_analysis(&out.display().to_string(), &a));
    Ok(())
}

fn hist_line(name: &str, h: &Histogram) -> String {
    let lo = h.bins.first().map_or(0.0, |b| b.lo);
    let hi = h.bins.last().map_or(0.0, |b| b.hi);
    format!(
        "  {name:<18} {}  {} – {} tokens\n",
        h.sparkline(),
        compact(lo),
        compact(hi)
    )
}

/// The human-readable report of `trace analyze`.
pub fn render_analysis(name: &str, a: &Analysis) -> String {
    let b = &a.blocks;
    let mut s = String::new();
    let _ = writeln!(s, "Trace {name} (block size {})", a.block_size);
    let _ = writeln!(
        s,
        "  requests           {} over {:.1} min ({:.0} s)",
        thousands(a.requests as f64),
        a.span_secs / 60.0,
        a.span_secs
    );
    let _ = writeln!(s, "  request rate       {:.2} req/s", a.request_rate);
    let _ = writeln!(
        s,
        "  input tokens/s     {}",
        thousands(a.input_tokens_per_sec)
    );
    let _ = writeln!(
        s,
        "  output tokens/s    {}",
        thousands(a.output_tokens_per_sec)
    );
    let _ = writeln!(s);
    let _ = writeln!(
        s,
        "  {:<10} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
        "tokens", "avg", "std", "min", "p50", "p90", "p99", "max"
    );
    for (label, x) in [("input", &a.input_length), ("output", &a.output_length)] {
        let Some(x) = x else { continue };
        let _ = writeln!(
            s,
            "  {:<10} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
            label,
            thousands(x.mean),
            thousands(x.std),
            thousands(x.min),
            thousands(x.p50),
            thousands(x.p90),
            thousands(x.p99),
            thousands(x.max)
        );
    }
    let _ = writeln!(s);
    let _ = writeln!(s, "Prefix reuse (infinite cache)");
    let _ = writeln!(
        s,
        "  block references     {:>10}",
        thousands(b.total_block_refs as f64)
    );
    let _ = writeln!(
        s,
        "  unique blocks        {:>10}",
        thousands(b.unique_blocks as f64)
    );
    let _ = writeln!(
        s,
        "  reused blocks        {:>10}  ({:.1}% of unique: seen in more than one request)",
        thousands(b.reused_blocks as f64),
        b.reused_fraction * 100.0
    );
    let _ = writeln!(
        s,
        "  cache efficiency     {:>10}  (repeated references / all references)",
        pct(b.cache_efficiency)
    );
    let _ = writeln!(s, "  block-level hit rate {:>10}", pct(b.block_hit_rate));
    let _ = writeln!(s, "  token-level hit rate {:>10}", pct(b.token_hit_rate));
    let _ = writeln!(
        s,
        "  prefix hit rate      {:>10}  (leading blocks only; avg {} tokens/request)",
        pct(b.prefix_hit_rate),
        thousands(b.avg_prefix_hit_tokens)
    );
    let _ = writeln!(
        s,
        "  avg shared context   {:>10}  tokens/request",
        thousands(b.avg_context_tokens)
    );
    let _ = writeln!(
        s,
        "  avg unique prompt    {:>10}  tokens/request",
        thousands(b.avg_unique_prompt_tokens)
    );
    let _ = writeln!(
        s,
        "  shared-prefix ratio  {:>10}",
        pct(b.shared_prefix_ratio)
    );
    let _ = writeln!(
        s,
        "  prefix groups        {:>10}",
        thousands(b.prefix_groups as f64)
    );
    let _ = writeln!(s);
    let _ = writeln!(s, "Histograms (half-octave bins; --json for counts)");
    s.push_str(&hist_line("input length", &a.input_length_histogram));
    s.push_str(&hist_line("prefix hit length", &a.prefix_hit_histogram));
    s
}
