//! One module per command group; each command calls the API through [`pitwall_api::Client`]
//! and renders the answer with [`crate::output`].

pub mod audit;
pub mod cert;
pub mod delegate;
pub mod events;
pub mod grant;
pub mod health;
pub mod image;
pub mod login;
pub mod proxy;
pub mod quota;
pub mod ssh;
pub mod user;
pub mod vm;

use pitwall_api::Client;
use serde::Serialize;
use time::OffsetDateTime;

use crate::cli::{Command, OutputFormat};
use crate::endpoint::EnvVars;
use crate::output;

/// What every command needs: the API client (with the token to send, if any), the output
/// format, the API URL as given (the key of its stored login) and the environment.
#[derive(Debug, Clone)]
pub struct Ctx {
    pub client: Client,
    pub format: OutputFormat,
    pub api: String,
    pub env: EnvVars,
}

impl Ctx {
    /// Print `value` as pretty JSON, or `text(value, now)` for people.
    pub fn show<T: Serialize + ?Sized>(
        &self,
        value: &T,
        text: impl FnOnce(&T, OffsetDateTime) -> String,
    ) -> anyhow::Result<()> {
        show(self.format, value, text)
    }
}

/// Print `value` as pretty JSON, or `text(value, now)` for people (commands without a
/// [`Ctx`] use this directly).
pub fn show<T: Serialize + ?Sized>(
    format: OutputFormat,
    value: &T,
    text: impl FnOnce(&T, OffsetDateTime) -> String,
) -> anyhow::Result<()> {
    let rendered = match format {
        OutputFormat::Json => output::json(value)?,
        OutputFormat::Text => text(value, OffsetDateTime::now_utc()),
    };
    output::emit(&rendered)?;
    Ok(())
}

pub async fn dispatch(ctx: &Ctx, command: Command) -> anyhow::Result<()> {
    match command {
        Command::Vm(c) => vm::run(ctx, c).await,
        Command::Image(c) => image::run(ctx, c).await,
        Command::Events(a) => events::run(ctx, a).await,
        Command::Health => health::run(ctx).await,
        Command::Login(a) => login::login(ctx, a).await,
        Command::Logout => login::logout(ctx).await,
        Command::Whoami => login::whoami(ctx).await,
        Command::User(c) => user::run(ctx, c).await,
        Command::Quota(c) => quota::run(ctx, c).await,
        Command::Delegate(c) => delegate::run(ctx, c).await,
        Command::Grant(a) => grant::run(ctx, a).await,
        Command::Proxy(a) => proxy::proxy(ctx, a).await,
        Command::Ssh(a) => ssh::run(ctx, a).await,
        Command::Exec(a) => vm::exec(ctx, a).await,
        Command::SshConfig { write } => ssh::config(ctx, write).await,
        Command::SshCertificate { vm } => ssh::certificate(ctx, &vm).await,
        Command::PortForward(a) => proxy::port_forward(ctx, a).await,
        Command::Audit(a) => audit::run(ctx, a).await,
        Command::Cert(c) => cert::run(ctx, c).await,
    }
}
