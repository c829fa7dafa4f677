//! The `pitwall` command line: parses nothing itself (see `main.rs`), but resolves the API
//! endpoint, runs one command against Pitwall's REST API and renders the answer.
//!
//! It talks to Pitwall only through `pitwall-api`'s [`pitwall_api::Client`]; it must not link
//! the server's crates, read the store, or reach hosts directly.
//!
//! Map: [`cli`] is the grammar, [`endpoint`] picks the API URL (and TLS files),
//! [`credentials`] stores logins, [`session`] picks (and refreshes) the token a command
//! sends, [`oauth`] logs in at an external issuer, [`commands`] runs each command,
//! [`output`] renders, [`console`] follows a console tail, [`exit`] maps errors to exit codes
//! and hints.
#![forbid(unsafe_code)]

pub mod cli;
pub mod commands;
pub mod console;
pub mod credentials;
pub mod endpoint;
pub mod exit;
pub mod oauth;
pub mod output;
pub mod progress;
pub mod session;
pub mod ssh;

pub use cli::Cli;
pub use endpoint::{EnvVars, TlsFiles};
pub use exit::{Exit, Failure};

use anyhow::Context as _;
use pitwall_api::Client;

use crate::commands::Ctx;

/// Run one parsed command line in the given environment.
pub async fn run(cli: Cli, env: EnvVars) -> Result<(), Failure> {
    let vm = cli.command.vm_name().map(str::to_owned);
    // `cert request`, local `cert sign`, `cert show`: files only, no endpoint, no login
    if cli.command.is_local() {
        return match commands::cert::run_local(cli.output, cli.command) {
            Ok(()) => Ok(()),
            Err(e) if is_broken_pipe(&e) => Ok(()),
            Err(error) => {
                let hint = exit::hint(&error, None, &env, None);
                Err(Failure { error, hint })
            }
        };
    }
    let endpoint = endpoint::resolve(cli.api.as_deref(), &env).map_err(|e| Failure {
        error: e.into(),
        hint: None,
    })?;
    tracing::debug!(api = %endpoint.url, source = %endpoint.source, "API endpoint");
    let tls = TlsFiles {
        cert: cli.cert,
        key: cli.key,
        ca: cli.ca,
    };
    let result = async {
        // only an https endpoint needs the config file's TLS keys: an http one keeps working
        // with --api even when the config file is broken
        let tls = if endpoint.url.starts_with("https:") {
            TlsFiles::resolve(tls, &env)?
        } else {
            tls
        };
        let mut client = client(&endpoint.url, tls)?;
        if cli.command.uses_token() {
            client = session::authenticate(client, &endpoint.url, &env).await?;
        }
        let ctx = Ctx {
            client,
            format: cli.output,
            api: endpoint.url.clone(),
            env: env.clone(),
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

/// The API client, with the TLS client identity and CA when given.
fn client(url: &str, tls: TlsFiles) -> anyhow::Result<Client> {
    let read = |p: &std::path::Path, what: &str| {
        std::fs::read(p).with_context(|| format!("cannot read the {what} {}", p.display()))
    };
    let mut builder = Client::builder();
    match (&tls.cert, &tls.key) {
        (Some(cert), key) => {
            let mut pem = read(cert, "TLS client certificate")?;
            if let Some(key) = key.as_deref().filter(|k| *k != cert.as_path()) {
                pem.push(b'\n');
                pem.extend(read(key, "TLS client key")?);
            }
            builder = builder.identity_pem(pem);
        }
        (None, Some(_)) => anyhow::bail!("a TLS key was given (--key or `key`) without --cert"),
        (None, None) => {}
    }
    if let Some(ca) = &tls.ca {
        builder = builder.ca_pem(read(ca, "CA certificate")?);
    }
    Ok(builder.build(url)?)
}

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}
