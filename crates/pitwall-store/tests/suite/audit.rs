//! The audit log: appended records get increasing sequence numbers and read back in order,
//! for everyone or for one actor.

use pitwall_store::AuditRecord;
use time::macros::datetime;

use super::*;

fn record(actor: &str, status: u16) -> AuditRecord {
    AuditRecord {
        seq: 0,
        at: datetime!(2026-06-01 12:00:00.000000001 UTC),
        actor: actor.to_string(),
        via: if actor == "-" {
            "-".to_string()
        } else {
            "certificate 0a1b".to_string()
        },
        source: "127.0.0.1:51234".to_string(),
        method: "POST".to_string(),
        path: "/v1/vms/web/stop".to_string(),
        action: "POST /v1/vms/{name}/stop".to_string(),
        status,
        outcome: if status < 400 { "ok" } else { "forbidden" }.to_string(),
    }
}

/// Append `records` and return them as the store should give them back.
async fn append_all(
    store: &dyn Store,
    records: &[AuditRecord],
) -> Result<Vec<AuditRecord>, StoreError> {
    let mut stored = Vec::new();
    for r in records {
        let seq = store.append_audit(r).await?;
        stored.push(AuditRecord { seq, ..r.clone() });
    }
    Ok(stored)
}

pub async fn audit_append_assigns_increasing_seq(store: Arc<dyn Store>) -> TestResult {
    let mut first = record("alice", 202);
    first.seq = 99; // ignored
    assert_eq!(store.append_audit(&first).await?, 1);
    let mut anonymous = record("-", 401);
    anonymous.action = String::new();
    anonymous.at = datetime!(2026-06-01 12:00:01 UTC);
    assert_eq!(store.append_audit(&anonymous).await?, 2);
    assert_eq!(
        store.audit_since(0, 10, None).await?,
        vec![
            AuditRecord { seq: 1, ..first },
            AuditRecord {
                seq: 2,
                ..anonymous
            }
        ]
    );
    Ok(())
}

pub async fn audit_since_is_ordered_and_limited(store: Arc<dyn Store>) -> TestResult {
    let all = append_all(
        &*store,
        &[
            record("alice", 201),
            record("bob", 403),
            record("alice", 204),
            record("carol", 500),
        ],
    )
    .await?;
    assert_eq!(all.iter().map(|r| r.seq).collect::<Vec<_>>(), [1, 2, 3, 4]);
    assert_eq!(store.audit_since(0, u32::MAX, None).await?, all);
    assert_eq!(store.audit_since(0, 2, None).await?, all[..2]);
    assert_eq!(store.audit_since(2, 1, None).await?, all[2..3]);
    assert_eq!(store.audit_since(4, 10, None).await?, vec![]);
    assert_eq!(store.audit_since(0, 0, None).await?, vec![]);
    assert_eq!(store.audit_since(u64::MAX, 10, None).await?, vec![]);
    Ok(())
}

pub async fn audit_since_filters_by_actor(store: Arc<dyn Store>) -> TestResult {
    let all = append_all(
        &*store,
        &[
            record("alice", 201),
            record("bob", 403),
            record("alice", 204),
            record("alicex", 200),
            record("alice", 409),
        ],
    )
    .await?;
    let alice = vec![all[0].clone(), all[2].clone(), all[4].clone()];
    assert_eq!(store.audit_since(0, 100, Some("alice")).await?, alice);
    assert_eq!(store.audit_since(1, 100, Some("alice")).await?, alice[1..]);
    // the limit counts the actor's records, not every record
    assert_eq!(store.audit_since(0, 2, Some("alice")).await?, alice[..2]);
    assert_eq!(
        store.audit_since(0, 100, Some("bob")).await?,
        vec![all[1].clone()]
    );
    assert_eq!(store.audit_since(0, 100, Some("nobody")).await?, vec![]);
    Ok(())
}
