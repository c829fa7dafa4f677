//! `pitwall`: parse the command line, start tracing, run the command, exit with its code.
#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::Parser as _;
use pitwall_cli::{Cli, EnvVars, Exit};
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    // usage errors print clap's message and exit 2 here
    let cli = Cli::parse();

    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_env("PITWALL_LOG").unwrap_or_else(|_| EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();

    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(Exit::Failure.code());
        }
    };
    match runtime.block_on(pitwall_cli::run(cli, EnvVars::from_process())) {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            if !failure.is_silent() {
                eprint!("{failure}");
            }
            ExitCode::from(failure.status())
        }
    }
}
