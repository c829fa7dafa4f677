//! The `pitwall` command line: parses nothing itself (see `main.rs`), but resolves the API
//! endpoint, runs one command against Pitwall's REST API and renders the answer.
//!
//! It talks to Pitwall only through `pitwall-api`'s [`pitwall_api::Client`]; it must not link
//! the server's crates, read the store, or reach hosts directly.
//!
//! Map: [`cli`] is the grammar, [`endpoint`] picks the API URL, [`commands`] runs each
//! command, [`output`] renders, [`console`] follows a console tail, [`exit`] maps errors to
//! exit codes and hints.
#![forbid(unsafe_code)]

pub mod cli;
pub mod commands;
pub mod console;
pub mod endpoint;
pub mod exit;
pub mod output;

pub use cli::Cli;
pub use endpoint::EnvVars;
pub use exit::{Exit, Failure};

use pitwall_api::Client;

use crate::commands::Ctx;

/// Run one parsed command line in the given environment.
pub async fn run(cli: Cli, env: EnvVars) -> Result<(), Failure> {
    let vm = cli.command.vm_name().map(str::to_owned);
    let endpoint = endpoint::resolve(cli.api.as_deref(), &env).map_err(|e| Failure {
        error: e.into(),
        hint: None,
    })?;
    tracing::debug!(api = %endpoint.url, source = %endpoint.source, "API endpoint");
    let result = async {
        let ctx = Ctx {
            client: Client::new(&endpoint.url)?,
            format: cli.output,
        };
        commands::dispatch(&ctx, cli.command).await
    }
    .await;
    match result {
        Ok(()) => Ok(()),
        // `pitwall vm list | head -1`: the reader has what it wanted
        Err(e) if is_broken_pipe(&e) => Ok(()),
        Err(error) => {
            let hint = exit::hint(&error, Some(&endpoint), &env, vm.as_deref());
            Err(Failure { error, hint })
        }
    }
}

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}
