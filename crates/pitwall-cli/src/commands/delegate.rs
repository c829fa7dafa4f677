//! `pitwall delegate ...`: give part of a quota to another user or group.

use pitwall_api::{CreateDelegationRequest, Delegation};

use super::quota::policy;
use super::Ctx;
use crate::cli::{DelegateCommand, DelegateCreateArgs};
use crate::output;

pub async fn run(ctx: &Ctx, command: DelegateCommand) -> anyhow::Result<()> {
    match command {
        DelegateCommand::Create(a) => {
            let d = ctx.client.create_delegation(&create_request(&a)).await?;
            ctx.show(&d, |d, _| {
                format!(
                    "created delegation {} to {} (from {})\n",
                    d.id, d.to, d.parent
                )
            })
        }
        DelegateCommand::List => {
            let ds = ctx.client.list_delegations().await?;
            ctx.show(&ds, |d, now| delegation_table(d, now))
        }
        DelegateCommand::Revoke { id } => {
            let d = ctx.client.revoke_delegation(&id).await?;
            ctx.show(&d, |d, _| {
                format!("revoked delegation {} to {}\n", d.id, d.to)
            })
        }
    }
}

pub fn create_request(a: &DelegateCreateArgs) -> CreateDelegationRequest {
    CreateDelegationRequest {
        to: a.to.clone(),
        policy: policy(&a.limits),
        from: a.from.clone(),
    }
}

/// `used/limit`, `used/-` when unlimited.
fn of(used: u64, max: Option<u64>) -> String {
    format!(
        "{used}/{}",
        max.map(|m| m.to_string()).unwrap_or_else(|| "-".into())
    )
}

pub fn delegation_table(ds: &[Delegation], now: time::OffsetDateTime) -> String {
    let rows: Vec<Vec<String>> = ds
        .iter()
        .map(|d| {
            vec![
                d.id.clone(),
                d.to.clone(),
                d.parent.clone(),
                of(d.usage.vms, d.policy.max_vms),
                of(d.usage.vcpus, d.policy.max_vcpus),
                of(d.usage.memory_mib, d.policy.max_memory_mib),
                of(d.usage.disk_mib, d.policy.max_disk_mib),
                d.created_by.clone(),
                output::age(&d.created_at, now),
                if d.revoked_at.is_some() {
                    "revoked"
                } else {
                    "active"
                }
                .into(),
            ]
        })
        .collect();
    output::table(
        &[
            "ID",
            "TO",
            "FROM",
            "VMS",
            "VCPUS",
            "MEMORY_MIB",
            "DISK_MIB",
            "BY",
            "AGE",
            "STATUS",
        ],
        &rows,
    )
}
