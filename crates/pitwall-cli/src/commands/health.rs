//! `pitwall health`

use super::Ctx;
use crate::output;

pub async fn run(ctx: &Ctx) -> anyhow::Result<()> {
    let health = ctx.client.health().await?;
    ctx.show(&health, |h, _| output::health(h))
}
