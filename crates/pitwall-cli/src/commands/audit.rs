//! `pitwall audit`: the audit log of API requests.

use pitwall_api::AuditEntry;

use super::Ctx;
use crate::cli::AuditArgs;
use crate::output;

pub async fn run(ctx: &Ctx, a: AuditArgs) -> anyhow::Result<()> {
    let entries = ctx
        .client
        .audit(a.after, a.limit, a.actor.as_deref())
        .await?;
    ctx.show(&entries, |e, _| audit_table(e))
}

/// SEQ, TIME, ACTOR, SOURCE, REQUEST (method and path), STATUS, OUTCOME.
pub fn audit_table(entries: &[AuditEntry]) -> String {
    let rows: Vec<Vec<String>> = entries
        .iter()
        .map(|e| {
            vec![
                e.seq.to_string(),
                e.at.clone(),
                e.actor.clone(),
                e.source.clone(),
                format!("{} {}", e.method, e.path),
                e.status.to_string(),
                e.outcome.clone(),
            ]
        })
        .collect();
    output::table(
        &[
            "SEQ", "TIME", "ACTOR", "SOURCE", "REQUEST", "STATUS", "OUTCOME",
        ],
        &rows,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_audit_table_puts_method_and_path_together() {
        let e = AuditEntry {
            seq: 7,
            at: "2026-01-01T00:00:00Z".into(),
            actor: "alice".into(),
            via: "token".into(),
            source: "127.0.0.1".into(),
            method: "POST".into(),
            path: "/v1/vms".into(),
            action: "vm.create".into(),
            status: 403,
            outcome: "quota_exceeded".into(),
        };
        assert_eq!(
            audit_table(&[e]),
            "SEQ   TIME                   ACTOR   SOURCE      REQUEST        STATUS   OUTCOME\n\
             7     2026-01-01T00:00:00Z   alice   127.0.0.1   POST /v1/vms   403      quota_exceeded\n"
        );
    }
}
