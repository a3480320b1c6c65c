//! `cargo run -p switchyard-bench --release --example bench -- --help`: the `switchyard bench`
//! command line, runnable before the CLI wires it in (same `BenchArgs`, same `run_cli`).

use clap::Parser;

#[derive(Parser)]
#[command(name = "bench")]
struct Cli {
    #[command(flatten)]
    args: switchyard_bench::BenchArgs,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    match switchyard_bench::run_cli(&cli.args) {
        Ok(_) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
