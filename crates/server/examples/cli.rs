//! The `worker` and `serve` subcommands as a standalone binary (what `switchyard worker` and
//! `switchyard serve` run): `cargo run -p switchyard-server --example cli -- serve --help`.

use clap::{Parser, Subcommand};
use switchyard_server::{ServeArgs, WorkerArgs, run_serve, run_worker};

#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a simulated engine replica behind a vLLM-compatible OpenAI API.
    Worker(WorkerArgs),
    /// Run the OpenAI-compatible frontend and router.
    Serve(ServeArgs),
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Worker(a) => run_worker(a),
        Command::Serve(a) => run_serve(a),
    }
}
