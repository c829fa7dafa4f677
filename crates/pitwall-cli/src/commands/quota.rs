//! `pitwall quota ...`: quotas (policy and usage) and the policies administrators set.

use pitwall_api::{Policy, PolicyEntry, Quota, QuotaOf, Usage};

use super::Ctx;
use crate::cli::{Limits, QuotaCommand, QuotaShowArgs};
use crate::output;

pub async fn run(ctx: &Ctx, command: QuotaCommand) -> anyhow::Result<()> {
    match command {
        QuotaCommand::Show(a) => {
            let quota = ctx.client.quota(&quota_of(&a)).await?;
            ctx.show(&quota, |q, _| quota_text(q))
        }
        QuotaCommand::Set(a) => {
            let entry = ctx.client.set_policy(&a.holder, &policy(&a.limits)).await?;
            ctx.show(&entry, |e, _| {
                format!(
                    "policy of {} set: {}\n",
                    e.holder,
                    policy_summary(&e.policy)
                )
            })
        }
        QuotaCommand::List => {
            let entries = ctx.client.list_policies().await?;
            ctx.show(&entries, |e, _| policy_table(e))
        }
        QuotaCommand::Rm { holder } => {
            ctx.client.delete_policy(&holder).await?;
            ctx.show(&serde_json::json!({ "removed": holder }), |_, _| {
                format!("policy of {holder} removed\n")
            })
        }
    }
}

pub fn quota_of(a: &QuotaShowArgs) -> QuotaOf {
    match (&a.user, &a.group) {
        (Some(u), _) => QuotaOf::User(u.clone()),
        (None, Some(g)) => QuotaOf::Group(g.clone()),
        (None, None) => QuotaOf::Me,
    }
}

/// The policy given by flags: absent limits unlimited, no `--host`/`--network` any.
pub fn policy(l: &Limits) -> Policy {
    let list = |v: &Vec<String>| (!v.is_empty()).then(|| v.clone());
    Policy {
        max_vms: l.max_vms,
        max_vcpus: l.max_vcpus,
        max_memory_mib: l.max_memory_mib,
        max_disk_mib: l.max_disk_mib,
        networks: list(&l.networks),
        hosts: list(&l.hosts),
    }
}

fn limit(l: Option<u64>) -> String {
    l.map(|n| n.to_string())
        .unwrap_or_else(|| "unlimited".into())
}

fn any(l: &Option<Vec<String>>) -> String {
    match l {
        Some(v) if !v.is_empty() => v.join(","),
        Some(_) => "none".into(),
        None => "any".into(),
    }
}

/// `vms 10, vcpus 8, memory 8192 MiB, disk unlimited, hosts any, networks any`
pub fn policy_summary(p: &Policy) -> String {
    format!(
        "vms {}, vcpus {}, memory {}, disk {}, hosts {}, networks {}",
        limit(p.max_vms),
        limit(p.max_vcpus),
        p.max_memory_mib
            .map(|m| format!("{m} MiB"))
            .unwrap_or_else(|| "unlimited".into()),
        p.max_disk_mib
            .map(|m| format!("{m} MiB"))
            .unwrap_or_else(|| "unlimited".into()),
        any(&p.hosts),
        any(&p.networks),
    )
}

/// Holder and source, then a USED/LIMIT table, then where VMs may run.
pub fn quota_text(q: &Quota) -> String {
    let mut out = output::key_values(&[("holder", q.holder.clone()), ("source", q.source.clone())]);
    out.push('\n');
    out.push_str(&usage_table(&q.usage, &q.policy));
    out.push('\n');
    out.push_str(&output::key_values(&[
        ("hosts", any(&q.policy.hosts)),
        ("networks", any(&q.policy.networks)),
    ]));
    out
}

fn usage_table(u: &Usage, p: &Policy) -> String {
    let rows = [
        ("vms", u.vms, p.max_vms),
        ("vcpus", u.vcpus, p.max_vcpus),
        ("memory MiB", u.memory_mib, p.max_memory_mib),
        ("disk MiB", u.disk_mib, p.max_disk_mib),
    ]
    .into_iter()
    .map(|(what, used, max)| vec![what.to_owned(), used.to_string(), limit(max)])
    .collect::<Vec<_>>();
    output::table(&["RESOURCE", "USED", "LIMIT"], &rows)
}

pub fn policy_table(entries: &[PolicyEntry]) -> String {
    let rows: Vec<Vec<String>> = entries
        .iter()
        .map(|e| {
            let p = &e.policy;
            vec![
                e.holder.clone(),
                limit(p.max_vms),
                limit(p.max_vcpus),
                limit(p.max_memory_mib),
                limit(p.max_disk_mib),
                any(&p.hosts),
                any(&p.networks),
            ]
        })
        .collect();
    output::table(
        &[
            "HOLDER",
            "VMS",
            "VCPUS",
            "MEMORY_MIB",
            "DISK_MIB",
            "HOSTS",
            "NETWORKS",
        ],
        &rows,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_make_a_policy_with_absent_limits_unlimited() {
        let l = Limits {
            max_vms: Some(3),
            hosts: vec!["h1".into()],
            ..Default::default()
        };
        assert_eq!(
            policy(&l),
            Policy {
                max_vms: Some(3),
                hosts: Some(vec!["h1".into()]),
                ..Default::default()
            }
        );
    }

    #[test]
    fn a_quota_shows_used_against_limit() {
        let q = Quota {
            holder: "user:alice".into(),
            source: "group:ops".into(),
            policy: Policy {
                max_vms: Some(10),
                max_memory_mib: Some(8192),
                hosts: Some(vec!["a".into(), "b".into()]),
                ..Default::default()
            },
            usage: Usage {
                vms: 2,
                vcpus: 3,
                memory_mib: 1024,
                disk_mib: 2048,
            },
        };
        assert_eq!(
            quota_text(&q),
            "holder: user:alice\n\
             source: group:ops\n\
             \n\
             RESOURCE     USED   LIMIT\n\
             vms          2      10\n\
             vcpus        3      unlimited\n\
             memory MiB   1024   8192\n\
             disk MiB     2048   unlimited\n\
             \n\
             hosts:    a,b\n\
             networks: any\n"
        );
    }
}
