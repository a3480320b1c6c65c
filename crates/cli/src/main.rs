//! The `switchyard` binary: one command-line entry point for every part of Switchyard.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod fmt;
mod lab_cmd;
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
    /// Simulate deployments in virtual time on a request trace and compare them.
    #[command(subcommand)]
    Lab(lab_cmd::LabCommand),
    /// Analyze and synthesize Mooncake-format request traces.
    #[command(subcommand)]
    Trace(trace_cmd::TraceCommand),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Lab(cmd) => lab_cmd::run(cmd),
        Command::Trace(cmd) => trace_cmd::run(cmd),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
