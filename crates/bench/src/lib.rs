//! `switchyard bench`: an accurate, low-overhead load generator for any OpenAI-compatible
//! endpoint (vLLM, SGLang, TensorRT-LLM, Dynamo, `switchyard serve`).
//!
//! - Workloads ([`workload`]): Mooncake trace replay on a fixed schedule (prompts built so that
//!   equal `hash_ids` are identical token blocks), `random` (vLLM semantics), `prefix-groups`
//!   (SGLang's generated shared prefix), `sharegpt` (a local file).
//! - Arrivals: the trace's timestamps, `--request-rate` with Poisson / gamma / constant gaps,
//!   `--concurrency` as a closed loop or a cap, `--duration`.
//! - Measurement: every SSE chunk is stamped when read from the socket by the request's own
//!   task; dispatch lag (actual - scheduled send) is recorded per request and latencies are
//!   reported from both the actual and the scheduled send.
//! - Metrics: one [`switchyard_metrics::RequestRecord`] per request; every statistic comes from
//!   [`switchyard_metrics::Summary`], the same code `switchyard lab` uses.
//!
//! Entry points: [`run_cli`] (what the `switchyard bench` subcommand calls: builds the runtime,
//! handles Ctrl-C, prints the report, writes `--out`), [`run`] (async, for programs and tests).

pub mod args;
pub mod arrival;
pub mod client;
mod error;
pub mod priority;
pub mod prompt;
pub mod report;
mod run;
pub mod sse;
pub mod workload;

pub use args::{ArrivalKind, BenchArgs, Dataset, Endpoint, ProgressMode, PromptMode};
pub use error::BenchError;
pub use report::{BenchOutcome, Resolved, write_dir};
pub use run::{ClientStats, StopHandle, base_url, probe};

use switchyard_metrics::{Slo, Summary, SummaryOptions};

/// Run the benchmark described by `args` until done or `stop`ped; returns the statistics, the
/// records and the rendered report. Prints progress to stderr (per `args.progress`) but
/// neither the report nor files.
pub async fn run(args: &BenchArgs, stop: StopHandle) -> Result<BenchOutcome, BenchError> {
    let workload = workload::Workload::from_args(args)?;
    run_workload(args, workload, stop).await
}

/// [`run`] with a workload already built from `args` (e.g. to show its warnings first).
pub async fn run_workload(
    args: &BenchArgs,
    workload: workload::Workload,
    stop: StopHandle,
) -> Result<BenchOutcome, BenchError> {
    let slo: Option<Slo> = match &args.goodput {
        Some(s) => Some(s.parse()?),
        None => None,
    };
    let r = run::execute(args, workload, stop).await?;
    let label = args
        .label
        .clone()
        .unwrap_or_else(|| default_label(args, &r.workload));
    let summary = Summary::from_records(
        &r.records,
        &SummaryOptions {
            label,
            slo,
            span: None,
        },
    )?;
    let resolved = Resolved {
        endpoint_url: r.endpoint_url,
        model: r.model,
        streaming: !args.no_stream,
        prompt: r.workload.prompt,
        workload: r.workload.description.clone(),
        traffic: report::traffic(args, r.workload.fixed_schedule),
        output_tokens: client::OUTPUT_TOKEN_FALLBACK,
    };
    let mut outcome = BenchOutcome {
        summary,
        records: r.records,
        client_queue: r.client_queue,
        client: r.client,
        resolved,
        report: String::new(),
    };
    outcome.report = report::render(args, &outcome);
    Ok(outcome)
}

fn default_label(a: &BenchArgs, w: &workload::Workload) -> String {
    let what = if w.fixed_schedule {
        "trace".to_string()
    } else {
        match a.dataset.unwrap_or(Dataset::Random) {
            Dataset::Trace => "trace",
            Dataset::Random => "random",
            Dataset::PrefixGroups => "prefix-groups",
            Dataset::Sharegpt => "sharegpt",
        }
        .to_string()
    };
    match (a.request_rate, a.concurrency) {
        (Some(r), _) => format!("{what} {r} rps"),
        (None, Some(c)) if !w.fixed_schedule => format!("{what} c{c}"),
        _ if w.fixed_schedule && a.speedup != 1.0 => format!("{what} x{}", a.speedup),
        _ => what,
    }
}

/// What `switchyard bench` does: build a tokio runtime (`--threads` workers), stop on Ctrl-C
/// (a second Ctrl-C exits at once), print warnings to stderr and the report to stdout, write
/// `--out DIR` (also after Ctrl-C, with partial results).
pub fn run_cli(args: &BenchArgs) -> Result<BenchOutcome, BenchError> {
    let threads = args
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()))
        .max(1);
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.worker_threads(threads).enable_all();
    if args.realtime {
        // The threads that send and read requests; the dispatcher raises itself (and reports
        // whether the OS allowed it).
        builder.on_thread_start(|| {
            let _ = priority::set_current_thread_realtime();
        });
    }
    let rt = builder.build().map_err(BenchError::Runtime)?;
    // Validate the workload (and show its warnings) before touching the network.
    let w = workload::Workload::from_args(args)?;
    for warning in &w.warnings {
        eprintln!("warning: {warning}");
    }
    let stop = StopHandle::new();
    let outcome = rt.block_on(async {
        let s = stop.clone();
        let ctrl_c = tokio::spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                eprintln!(
                    "\ninterrupted: stopping, writing partial results (Ctrl-C again to quit now)"
                );
                s.stop();
                if tokio::signal::ctrl_c().await.is_ok() {
                    std::process::exit(130);
                }
            }
        });
        let r = run_workload(args, w, stop).await;
        ctrl_c.abort();
        r
    })?;
    print!("{}", outcome.report);
    if let Some(dir) = &args.out {
        write_dir(dir, args, &outcome)?;
        eprintln!(
            "wrote {}/summary.json, requests.jsonl, report.html",
            dir.display()
        );
    }
    Ok(outcome)
}
