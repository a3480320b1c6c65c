//! `switchyard lab ...`: simulate deployments in virtual time on a trace.

use std::io::{IsTerminal, Write as _};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use serde::Deserialize;
use switchyard_engine::Catalog;
use switchyard_metrics::{ReportRun, Slo, Summary, SummaryOptions};
use switchyard_sim::{Deployment, RunOptions, SimOutput};
use switchyard_trace::{LoadOptions, SynthConfig, Trace};

use crate::fmt::thousands;

#[derive(Subcommand)]
pub enum LabCommand {
    /// Simulate two deployments on the same trace and compare them side by side.
    #[command(long_about = AB_HELP)]
    Ab(AbArgs),
}

const AB_HELP: &str = "\
Simulate two deployments (A and B) on the same request trace in virtual time and compare them:
TTFT, TPOT (per-request time per output token, the seeds' \"ITL\" SLA), pooled inter-token gaps,
E2E latency, goodput under an SLA, throughput, prefix-cache hit rate, GPU busy time and KV
transfer time. The same routing code as `switchyard serve` decides where every request goes;
the same engine model as `switchyard worker` computes every step.

With no arguments it runs the Qwen3-32B recipe: 8 aggregated TP2 vLLM workers with round-robin
routing (A) against 6 prefill + 2 decode TP2 workers with KV-aware routing (B) on 16 simulated
H200s, replaying the bundled Mooncake conversation trace (12,031 requests, 59 minutes), goodput
at TTFT <= 2 s and ITL <= 25 ms.

Writes a results folder: summary.json (both runs, every statistic, the deployment files, the
trace's hash, the seed and the version), requests-a.jsonl / requests-b.jsonl (one record per
request), series-a.json / series-b.json (queue depth and KV usage per worker over time) and
report.html (self-contained, charts inline). Without -o the folder is results/ab-<recipe> plus
the parameters that differ from the recipe's (see --out); it is checked before simulating.
`switchyard report DIR...` re-renders or compares saved folders, from `lab` and from `bench`
alike.

Examples:
  switchyard lab ab
  switchyard lab ab --recipe dsv32-gb200
  switchyard lab ab --speedup 2 --requests 3000          # into results/ab-qwen3-32b-h200-x2-n3000
  switchyard lab ab --a mine.toml --b theirs.toml --trace my.jsonl --goodput ttft:1000,itl:30";

#[derive(Args)]
pub struct AbArgs {
    /// Built-in recipe (qwen3-32b-h200, dsv32-gb200) or a folder with a recipe.toml.
    #[arg(long, default_value = "qwen3-32b-h200")]
    pub recipe: String,
    /// Deployment file for A (overrides the recipe's).
    #[arg(long)]
    pub a: Option<PathBuf>,
    /// Deployment file for B (overrides the recipe's).
    #[arg(long)]
    pub b: Option<PathBuf>,
    /// Trace file (.jsonl or .jsonl.gz; overrides the recipe's).
    #[arg(long)]
    pub trace: Option<PathBuf>,
    /// SLOs for goodput, e.g. `ttft:2000,itl:25` (ms; also tpot, e2e). Overrides the recipe's.
    #[arg(long)]
    pub goodput: Option<String>,
    /// Replay arrivals this many times faster.
    #[arg(long, default_value_t = 1.0)]
    pub speedup: f64,
    /// Use only the first N requests of the trace.
    #[arg(long)]
    pub requests: Option<usize>,
    /// Random seed for routing tie-breaks and sampling (default: the deployment files').
    #[arg(long)]
    pub seed: Option<u64>,
    /// Results folder [default: results/ab-<recipe>, plus the parameters that differ from the
    /// recipe's: `-x<speedup>`, `-n<requests>`, `-seed<seed>`, and a hash of --a/--b/--trace/
    /// --goodput/--catalog when given, so runs with other parameters never overwrite it].
    #[arg(long, short = 'o')]
    pub out: Option<PathBuf>,
    /// Extra catalog folder (gpus/, models/, engines/ TOML files) next to the built-in one.
    #[arg(long)]
    pub catalog: Option<PathBuf>,
    /// Print the summary as JSON on stdout instead of the table.
    #[arg(long)]
    pub json: bool,
}

pub fn run(cmd: LabCommand) -> Result<()> {
    match cmd {
        LabCommand::Ab(a) => ab(a),
    }
}

/// A recipe's `recipe.toml`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RecipeFile {
    description: String,
    a: String,
    b: String,
    goodput: String,
    trace: RecipeTrace,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RecipeTrace {
    /// `bundled:mooncake_conversation` or a path relative to the recipe folder.
    source: String,
    synthesize: Option<RecipeSynth>,
}

#[derive(Deserialize, Clone)]
#[serde(deny_unknown_fields)]
struct RecipeSynth {
    num_requests: Option<usize>,
    #[serde(default = "one")]
    prefix_len_multiplier: f64,
    #[serde(default = "one")]
    prompt_len_multiplier: f64,
    #[serde(default = "one_u32")]
    prefix_root_multiplier: u32,
    max_isl: Option<u32>,
    #[serde(default)]
    seed: u64,
}

fn one() -> f64 {
    1.0
}
fn one_u32() -> u32 {
    1
}

/// A recipe file's text, by built-in name or from a folder.
struct Recipe {
    name: String,
    file: RecipeFile,
    /// Reads a file of the recipe (built-in or on disk) by its relative name.
    dir: Option<PathBuf>,
}

const BUNDLED_TRACE: &[u8] = include_bytes!("../../../data/mooncake_conversation.jsonl.gz");
const BUILTIN: &[(&str, &[(&str, &str)])] = &[
    (
        "qwen3-32b-h200",
        &[
            (
                "recipe.toml",
                include_str!("../../../recipes/qwen3-32b-h200/recipe.toml"),
            ),
            (
                "agg-round-robin.toml",
                include_str!("../../../recipes/qwen3-32b-h200/agg-round-robin.toml"),
            ),
            (
                "disagg-kv.toml",
                include_str!("../../../recipes/qwen3-32b-h200/disagg-kv.toml"),
            ),
        ],
    ),
    (
        "dsv32-gb200",
        &[
            (
                "recipe.toml",
                include_str!("../../../recipes/dsv32-gb200/recipe.toml"),
            ),
            (
                "agg-round-robin.toml",
                include_str!("../../../recipes/dsv32-gb200/agg-round-robin.toml"),
            ),
            (
                "disagg-kv.toml",
                include_str!("../../../recipes/dsv32-gb200/disagg-kv.toml"),
            ),
        ],
    ),
];

impl Recipe {
    fn resolve(name: &str) -> Result<Recipe> {
        let dir = Path::new(name);
        if dir.join("recipe.toml").is_file() {
            let text = std::fs::read_to_string(dir.join("recipe.toml"))?;
            let file = toml::from_str(&text)
                .with_context(|| format!("{}", dir.join("recipe.toml").display()))?;
            return Ok(Recipe {
                name: dir
                    .file_name()
                    .map_or("recipe".into(), |n| n.to_string_lossy().into_owned()),
                file,
                dir: Some(dir.to_path_buf()),
            });
        }
        let Some((_, files)) = BUILTIN.iter().find(|(n, _)| *n == name) else {
            let known: Vec<&str> = BUILTIN.iter().map(|(n, _)| *n).collect();
            bail!(
                "unknown recipe `{name}`: built-in recipes are {}; or pass a folder containing recipe.toml",
                known.join(", ")
            );
        };
        let text = files[0].1;
        let file =
            toml::from_str(text).with_context(|| format!("built-in recipe {name}/recipe.toml"))?;
        Ok(Recipe {
            name: name.to_string(),
            file,
            dir: None,
        })
    }

    /// (display name, text) of a file of this recipe.
    fn read(&self, rel: &str) -> Result<(String, String)> {
        match &self.dir {
            Some(d) => {
                let p = d.join(rel);
                let text = std::fs::read_to_string(&p)
                    .with_context(|| format!("{}: cannot read", p.display()))?;
                Ok((p.display().to_string(), text))
            }
            None => {
                let files = BUILTIN
                    .iter()
                    .find(|(n, _)| *n == self.name)
                    .map(|(_, f)| *f)
                    .unwrap_or_default();
                let text = files
                    .iter()
                    .find(|(n, _)| *n == rel)
                    .map(|(_, t)| t.to_string())
                    .with_context(|| format!("built-in recipe {} has no file {rel}", self.name))?;
                Ok((format!("recipes/{}/{rel}", self.name), text))
            }
        }
    }
}

fn load_deployment(path: Option<&Path>, recipe: &Recipe, rel: &str) -> Result<Deployment> {
    Ok(match path {
        Some(p) => Deployment::load(p)?,
        None => {
            let (name, text) = recipe.read(rel)?;
            Deployment::parse(&text, &name)?
        }
    })
}

/// The trace of the run and a short description of where it came from.
fn load_trace(args: &AbArgs, recipe: &Recipe) -> Result<(Trace, String)> {
    let opts = LoadOptions::default();
    let (trace, origin) = if let Some(p) = &args.trace {
        let loaded = crate::trace_cmd::load_trace(
            p,
            &crate::trace_cmd::LoadArgs {
                block_size: opts.block_size,
                strict: false,
            },
        )?;
        (loaded.trace, p.display().to_string())
    } else {
        let src = &recipe.file.trace.source;
        let base = if src == "bundled:mooncake_conversation" {
            switchyard_trace::load_reader(
                BUNDLED_TRACE,
                Path::new("data/mooncake_conversation.jsonl.gz"),
                &opts,
            )?
            .trace
        } else {
            let p = recipe.dir.as_deref().unwrap_or(Path::new(".")).join(src);
            switchyard_trace::load(&p, &opts)?.trace
        };
        match &recipe.file.trace.synthesize {
            None => (base, src.clone()),
            Some(s) => synthesized(&base, s, src)?,
        }
    };
    Ok((trace, origin))
}

/// Synthesize the recipe's trace, cached under `results/cache/` by its parameters.
fn synthesized(base: &Trace, s: &RecipeSynth, src: &str) -> Result<(Trace, String)> {
    let cfg = SynthConfig {
        num_requests: s.num_requests,
        prefix_len_multiplier: s.prefix_len_multiplier,
        prompt_len_multiplier: s.prompt_len_multiplier,
        prefix_root_multiplier: s.prefix_root_multiplier,
        max_isl: s.max_isl,
        seed: s.seed,
        ..SynthConfig::default()
    };
    let name = cfg.default_file_name(
        Path::new("mooncake_conversation.jsonl"),
        s.num_requests.unwrap_or(base.requests.len()),
    );
    let cache = PathBuf::from("results/cache").join(&name);
    if let Ok(loaded) = switchyard_trace::load(&cache, &LoadOptions::default()) {
        return Ok((loaded.trace, format!("{} (cached)", cache.display())));
    }
    let (trace, _) = switchyard_trace::synthesize(base, &cfg)?;
    // The cache is an optimisation: a read-only folder must not stop the run.
    if std::fs::create_dir_all("results/cache").is_ok() {
        let _ = switchyard_trace::write_jsonl(&cache, &trace);
    }
    Ok((trace, format!("{src} synthesized as {name}")))
}

/// Stable content hash of a trace, for provenance in summary.json.
fn trace_hash(t: &Trace) -> String {
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    for r in &t.requests {
        h.update(&r.timestamp.to_le_bytes());
        h.update(&r.input_length.to_le_bytes());
        h.update(&r.output_length.to_le_bytes());
        for id in &r.hash_ids {
            h.update(&id.to_le_bytes());
        }
    }
    format!("xxh3:{:016x}", h.digest())
}

/// Progress on stderr, shown only on a terminal and only once a run takes over a second.
struct Progress {
    started: Instant,
    tty: bool,
    shown: bool,
}

impl Progress {
    fn new() -> Self {
        Self {
            started: Instant::now(),
            tty: std::io::stderr().is_terminal(),
            shown: false,
        }
    }

    fn update(&mut self, label: &str, done: usize, total: usize) {
        if !self.tty || self.started.elapsed().as_secs_f64() < 1.0 {
            return;
        }
        self.shown = true;
        let frac = done as f64 / total.max(1) as f64;
        let width = 30;
        let filled = (frac * width as f64) as usize;
        eprint!(
            "\r{label:<18} [{}{}] {:>5.1}%  {}/{} requests",
            "#".repeat(filled),
            "-".repeat(width - filled),
            frac * 100.0,
            thousands(done as f64),
            thousands(total as f64)
        );
        let _ = std::io::stderr().flush();
    }

    fn finish(&mut self) {
        if self.shown {
            eprintln!();
            self.shown = false;
        }
    }
}

fn ab(args: AbArgs) -> Result<()> {
    let started = Instant::now();
    if !(args.speedup.is_finite() && args.speedup > 0.0) {
        bail!("--speedup must be a positive number, got {}", args.speedup);
    }
    let recipe = Recipe::resolve(&args.recipe)?;
    let goodput = args
        .goodput
        .clone()
        .unwrap_or_else(|| recipe.file.goodput.clone());
    let slo: Slo = goodput.parse().with_context(|| "--goodput")?;
    let catalog = Catalog::load(args.catalog.as_deref())?;
    let dep_a = load_deployment(args.a.as_deref(), &recipe, &recipe.file.a)?;
    let dep_b = load_deployment(args.b.as_deref(), &recipe, &recipe.file.b)?;
    // Fail on an unusable results folder now, not after the simulation.
    let out_dir = args
        .out
        .clone()
        .unwrap_or_else(|| default_out_dir(&args, &recipe));
    check_writable(&out_dir)?;
    let (mut trace, origin) = load_trace(&args, &recipe)?;
    if let Some(n) = args.requests {
        if n == 0 {
            bail!("--requests must be at least 1");
        }
        trace.requests.truncate(n);
    }
    let loaded_in = started.elapsed();

    let opts = RunOptions {
        speedup: args.speedup,
        seed: args.seed,
        ..RunOptions::default()
    };
    // A and B are independent: simulate them on two threads (each run is single-threaded and
    // deterministic, so this changes wall time only).
    let total = trace.requests.len();
    let done = [AtomicUsize::new(0), AtomicUsize::new(0)];
    let (results, sim_secs) = std::thread::scope(|scope| {
        let handles: Vec<_> = [&dep_a, &dep_b]
            .into_iter()
            .zip(&done)
            .map(|(dep, counter)| {
                let (catalog, trace, opts) = (&catalog, &trace, &opts);
                scope.spawn(move || {
                    let t0 = Instant::now();
                    let out = switchyard_sim::simulate(dep, catalog, trace, opts, &mut |d, _| {
                        counter.store(d, Ordering::Relaxed)
                    });
                    (out, t0.elapsed().as_secs_f64())
                })
            })
            .collect();
        let mut progress = Progress::new();
        while !handles.iter().all(|h| h.is_finished()) {
            let d = done
                .iter()
                .map(|c| c.load(Ordering::Relaxed))
                .sum::<usize>();
            progress.update("simulating A and B", d, 2 * total);
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        progress.finish();
        let mut results = Vec::new();
        let mut secs = Vec::new();
        for h in handles {
            let (out, t) = h.join().expect("a simulation thread panicked");
            results.push(out);
            secs.push(t);
        }
        (results, secs)
    });
    let outputs: Vec<SimOutput> = results.into_iter().collect::<Result<_, _>>()?;

    let summaries: Vec<Summary> = outputs
        .iter()
        .zip([&dep_a, &dep_b])
        .map(|(o, d)| {
            let mut s = Summary::from_records(
                &o.records,
                &SummaryOptions {
                    label: d.name.clone(),
                    slo: Some(slo.clone()),
                    span: None,
                },
            )?;
            s.gpu_busy_fraction = Some(o.gpu_busy_fraction);
            Ok(s)
        })
        .collect::<Result<_>>()?;

    let hash = trace_hash(&trace);
    let summary_json = serde_json::json!({
        "tool": "switchyard",
        "version": env!("CARGO_PKG_VERSION"),
        "recipe": recipe.name,
        "recipe_description": recipe.file.description,
        "trace": { "origin": origin, "requests": trace.requests.len(), "hash": hash },
        "speedup": args.speedup,
        "goodput": goodput,
        "runs": [
            run_json("a", &dep_a, &summaries[0], &outputs[0], &opts),
            run_json("b", &dep_b, &summaries[1], &outputs[1], &opts),
        ],
        "verdict": switchyard_metrics::verdict(&summaries[0], &summaries[1]),
    });
    write_file(
        &out_dir.join("summary.json"),
        serde_json::to_string_pretty(&summary_json)?.as_bytes(),
    )?;
    for (name, o) in [
        ("requests-a.jsonl", &outputs[0]),
        ("requests-b.jsonl", &outputs[1]),
    ] {
        write_file(
            &out_dir.join(name),
            switchyard_metrics::records_to_jsonl(&o.records).as_bytes(),
        )?;
    }
    for (name, o) in [
        ("series-a.json", &outputs[0]),
        ("series-b.json", &outputs[1]),
    ] {
        write_file(
            &out_dir.join(name),
            serde_json::to_string(&o.series)?.as_bytes(),
        )?;
    }
    let runs: Vec<ReportRun> = outputs
        .iter()
        .zip(&summaries)
        .map(|(o, s)| ReportRun {
            summary: s,
            records: &o.records,
            series: &o.series,
        })
        .collect();
    let title = format!("Switchyard lab ab — {}", recipe.file.description);
    write_file(
        &out_dir.join("report.html"),
        switchyard_metrics::render_html(&title, &runs).as_bytes(),
    )?;

    if args.json {
        println!("{}", serde_json::to_string_pretty(&summary_json)?);
        return Ok(());
    }
    println!("{}", recipe.file.description);
    println!(
        "trace: {} ({} requests{}), SLA {}",
        origin,
        thousands(trace.requests.len() as f64),
        if args.speedup != 1.0 {
            format!(", arrivals ×{}", args.speedup)
        } else {
            String::new()
        },
        slo.describe()
    );
    for (label, dep, o) in [("A", &dep_a, &outputs[0]), ("B", &dep_b, &outputs[1])] {
        println!("{label}: {} — {}", dep.name, o.description);
    }
    println!();
    print!(
        "{}",
        switchyard_metrics::render_comparison(&[&summaries[0], &summaries[1]])
    );
    println!();
    println!(
        "simulated in {:.2} s (trace {:.2} s; A {:.2} s and B {:.2} s, run in parallel); results in {}/ (report.html, summary.json, requests-a/b.jsonl, series-a/b.json)",
        started.elapsed().as_secs_f64(),
        loaded_in.as_secs_f64(),
        sim_secs[0],
        sim_secs[1],
        out_dir.display()
    );
    Ok(())
}

/// `results/ab-<recipe>` plus every parameter that differs from the recipe's (see `--out`).
fn default_out_dir(args: &AbArgs, recipe: &Recipe) -> PathBuf {
    let mut name = format!("ab-{}", recipe.name);
    if args.speedup != 1.0 {
        name.push_str(&format!("-x{}", args.speedup));
    }
    if let Some(n) = args.requests {
        name.push_str(&format!("-n{n}"));
    }
    if let Some(s) = args.seed {
        name.push_str(&format!("-seed{s}"));
    }
    let overrides = [
        args.a.as_ref().map(|p| p.display().to_string()),
        args.b.as_ref().map(|p| p.display().to_string()),
        args.trace.as_ref().map(|p| p.display().to_string()),
        args.goodput.clone(),
        args.catalog.as_ref().map(|p| p.display().to_string()),
    ];
    if overrides.iter().any(Option::is_some) {
        let key = format!("{overrides:?}");
        name.push_str(&format!(
            "-{:08x}",
            xxhash_rust::xxh3::xxh3_64(key.as_bytes()) as u32
        ));
    }
    PathBuf::from("results").join(name)
}

/// Create `dir` and prove a file can be written there.
fn check_writable(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| {
        format!(
            "{}: cannot create the results folder (choose another with -o)",
            dir.display()
        )
    })?;
    let probe = dir.join(".switchyard-write-check");
    std::fs::write(&probe, b"").with_context(|| {
        format!(
            "{}: cannot write results there (choose another folder with -o)",
            dir.display()
        )
    })?;
    let _ = std::fs::remove_file(&probe);
    Ok(())
}

fn run_json(
    key: &str,
    dep: &Deployment,
    s: &Summary,
    o: &SimOutput,
    opts: &RunOptions,
) -> serde_json::Value {
    serde_json::json!({
        "key": key,
        "name": dep.name,
        "description": o.description,
        "seed": opts.seed.unwrap_or(dep.seed),
        "deployment_toml": dep.source,
        "summary": s,
        "workers": o.workers,
        "routing": o.routing,
    })
}

fn write_file(path: &Path, bytes: &[u8]) -> Result<()> {
    std::fs::write(path, bytes).with_context(|| format!("{}: cannot write", path.display()))
}
