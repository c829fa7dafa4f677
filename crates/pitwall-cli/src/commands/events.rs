//! `pitwall events`: follow the lifecycle event stream, one line per event.
//!
//! When the stream ends or breaks, it is opened again from the last event printed, after
//! [`RECONNECT_AFTER`]; if that fails, the command fails. Ctrl-C stops it (exit 0).

use std::time::Duration;

use futures::StreamExt;
use pitwall_api::{ClientError, Event};

use super::Ctx;
use crate::cli::{EventsArgs, OutputFormat};
use crate::output;

const RECONNECT_AFTER: Duration = Duration::from_secs(1);

pub async fn run(ctx: &Ctx, a: EventsArgs) -> anyhow::Result<()> {
    tokio::select! {
        r = follow(ctx, a.after) => r,
        _ = tokio::signal::ctrl_c() => Ok(()),
    }
}

async fn follow(ctx: &Ctx, mut after: u64) -> anyhow::Result<()> {
    loop {
        let mut events = Box::pin(ctx.client.events(after).await?);
        loop {
            match events.next().await {
                Some(Ok(event)) => {
                    after = event.seq;
                    output::emit(&line(ctx.format, &event)?)?;
                }
                Some(Err(e @ ClientError::Decode { .. })) => return Err(e.into()),
                Some(Err(e)) => {
                    tracing::warn!(error = %e, after, "event stream broke; reconnecting");
                    break;
                }
                None => {
                    tracing::debug!(after, "event stream ended; reconnecting");
                    break;
                }
            }
        }
        tokio::time::sleep(RECONNECT_AFTER).await;
    }
}

/// One line per event: the text line, or the event as compact JSON (JSON Lines).
fn line(format: OutputFormat, event: &Event) -> serde_json::Result<String> {
    Ok(match format {
        OutputFormat::Text => output::event_line(event),
        OutputFormat::Json => serde_json::to_string(event)? + "\n",
    })
}
