//! The `switchyard` binary: one command-line entry point for every part of Switchyard.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

// The request path (hyper, JSON, SSE relaying) is allocation-heavy; mimalloc cuts serve's
// added latency per request by about a quarter against glibc malloc on this 2-core VM
// (`cargo run --release -p switchyard-server --example overhead -- 3 64`).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod fmt;
mod lab_cmd;
mod report_cmd;
mod trace_cmd;

/// Switchyard: route, simulate and benchmark LLM serving fleets (vLLM, SGLang, TensorRT-LLM).
#[derive(Parser)]
#[command(name = "switchyard", version, about, long_about = None, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Load-generate against an OpenAI-compatible endpoint (vLLM, SGLang, TensorRT-LLM, Dynamo,
    /// `switchyard serve`): trace replay, Poisson/gamma/constant rates, closed-loop concurrency;
    /// TTFT, TPOT, ITL, E2E, goodput.
    Bench(Box<switchyard_bench::BenchArgs>),
    /// List the GPUs, models and engine profiles the simulator knows.
    #[command(long_about = CATALOG_HELP)]
    Catalog {
        /// Extra catalog folder with gpus/, models/ and engines/ TOML files (added to, or
        /// overriding, the built-in ones).
        #[arg(long)]
        dir: Option<std::path::PathBuf>,
    },
    /// Simulate deployments in virtual time on a request trace and compare them.
    #[command(subcommand)]
    Lab(lab_cmd::LabCommand),
    /// Re-render or compare saved `lab` and `bench` runs side by side.
    #[command(long_about = report_cmd::REPORT_HELP)]
    Report(report_cmd::ReportArgs),
    /// Register an existing engine server (vLLM, SGLang, `switchyard worker`) in etcd and keep
    /// it registered while its /health answers: the sidecar next to a real engine.
    Register(Box<switchyard_server::RegisterArgs>),
    /// Run the OpenAI-compatible frontend and router (workers from flags or a deployment file).
    Serve(Box<switchyard_server::ServeArgs>),
    /// Analyze and synthesize Mooncake-format request traces.
    #[command(subcommand)]
    Trace(trace_cmd::TraceCommand),
    /// Run a simulated engine replica behind a vLLM-compatible OpenAI API (KV events over ZMQ).
    Worker(Box<switchyard_server::WorkerArgs>),
}

const CATALOG_HELP: &str = "\
List the GPUs, models and engine profiles the simulated engines know (from the TOML files under
data/catalog/, compiled in). Add a GPU or a model by writing a file like the built-in ones into a
folder (gpus/NAME.toml, models/NAME.toml, engines/NAME.toml) and passing --dir (or --catalog to
`lab ab`).";

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Commands that only print behave like other command-line tools when the reader of their
    // output goes away (`switchyard trace analyze ... | head`): exit quietly. Never for
    // anything with sockets: a client that closes its connection would kill the server
    // (Rust's default, SIGPIPE ignored and EPIPE returned as an error, stays).
    #[cfg(unix)]
    if matches!(
        cli.command,
        Command::Catalog { .. } | Command::Lab(_) | Command::Report(_) | Command::Trace(_)
    ) {
        // SAFETY: called before any thread is started; SIG_DFL is a valid disposition.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
    }
    let result = match cli.command {
        Command::Bench(args) => switchyard_bench::run_cli(&args)
            .map(|_| ())
            .map_err(anyhow::Error::from),
        Command::Catalog { dir } => switchyard_engine::Catalog::load(dir.as_deref())
            .map(|c| print!("{}", c.render_table()))
            .map_err(Into::into),
        Command::Lab(cmd) => lab_cmd::run(cmd),
        Command::Report(args) => report_cmd::run(args),
        Command::Register(a) => switchyard_server::run_register(*a),
        Command::Serve(a) => switchyard_server::run_serve(*a),
        Command::Trace(cmd) => trace_cmd::run(cmd),
        Command::Worker(a) => switchyard_server::run_worker(*a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
