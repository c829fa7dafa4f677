//! One module per command group; each command calls the API through [`pitwall_api::Client`]
//! and renders the answer with [`crate::output`].

pub mod events;
pub mod health;
pub mod image;
pub mod vm;

use pitwall_api::Client;
use serde::Serialize;
use time::OffsetDateTime;

use crate::cli::{Command, OutputFormat};
use crate::output;

/// What every command needs: the API client and the output format.
#[derive(Debug, Clone)]
pub struct Ctx {
    pub client: Client,
    pub format: OutputFormat,
}

impl Ctx {
    /// Print `value` as pretty JSON, or `text(value, now)` for people.
    pub fn show<T: Serialize + ?Sized>(
        &self,
        value: &T,
        text: impl FnOnce(&T, OffsetDateTime) -> String,
    ) -> anyhow::Result<()> {
        let rendered = match self.format {
            OutputFormat::Json => output::json(value)?,
            OutputFormat::Text => text(value, OffsetDateTime::now_utc()),
        };
        output::emit(&rendered)?;
        Ok(())
    }
}

pub async fn dispatch(ctx: &Ctx, command: Command) -> anyhow::Result<()> {
    match command {
        Command::Vm(c) => vm::run(ctx, c).await,
        Command::Image(c) => image::run(ctx, c).await,
        Command::Events(a) => events::run(ctx, a).await,
        Command::Health => health::run(ctx).await,
    }
}
