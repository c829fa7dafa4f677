//! Root policies, delegations and revoked client certificates.

use std::collections::BTreeSet;

use pitwall_core::Policy;
use pitwall_store::{DelegationRecord, RevokedCertificate};
use time::macros::datetime;

use super::*;

fn policy(max_vms: u64, hosts: &[&str]) -> Policy {
    Policy {
        max_vms: Some(max_vms),
        max_memory_mib: Some(4096),
        hosts: Some(hosts.iter().map(|h| h.to_string()).collect::<BTreeSet<_>>()),
        ..Policy::default()
    }
}

fn delegation(n: u128, created_at: OffsetDateTime) -> DelegationRecord {
    DelegationRecord {
        id: uuid::Uuid::from_u128(n),
        parent: "/user:alice/".to_string(),
        grantee: format!("user:u{n}"),
        policy: policy(2, &["h1"]),
        created_by: "alice".to_string(),
        created_at,
        revoked_at: None,
    }
}

fn revoked(serial: &str, by: &str) -> RevokedCertificate {
    RevokedCertificate {
        serial: serial.to_string(),
        revoked_by: by.to_string(),
        reason: Some(format!("revoked by {by}")),
        revoked_at: OffsetDateTime::now_utc(),
    }
}

fn serials(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

// ---- policies ------------------------------------------------------------------------------

pub async fn policies_put_get_list_delete(store: Arc<dyn Store>) -> TestResult {
    let alice = policy(3, &["h1", "h2"]);
    let ops = Policy {
        networks: Some(BTreeSet::new()),
        ..Policy::default()
    };
    store.put_policy("user:alice", &alice).await?;
    store.put_policy("group:ops", &ops).await?;
    store.put_policy("default", &Policy::unlimited()).await?;
    assert_eq!(store.get_policy("user:alice").await?, Some(alice.clone()));
    assert_eq!(store.get_policy("group:ops").await?, Some(ops.clone()));
    assert_eq!(store.get_policy("user:bob").await?, None);
    assert_eq!(
        store.list_policies().await?,
        vec![
            ("default".to_string(), Policy::unlimited()),
            ("group:ops".to_string(), ops.clone()),
            ("user:alice".to_string(), alice),
        ]
    );
    assert!(store.delete_policy("user:alice").await?);
    assert!(!store.delete_policy("user:alice").await?);
    assert_eq!(store.get_policy("user:alice").await?, None);
    assert_eq!(store.list_policies().await?.len(), 2);
    Ok(())
}

pub async fn put_policy_replaces_by_holder(store: Arc<dyn Store>) -> TestResult {
    store.put_policy("user:alice", &policy(3, &["h1"])).await?;
    store.put_policy("user:bob", &policy(1, &[])).await?;
    let newer = policy(5, &["h2"]);
    store.put_policy("user:alice", &newer).await?;
    assert_eq!(store.get_policy("user:alice").await?, Some(newer.clone()));
    assert_eq!(store.get_policy("user:bob").await?, Some(policy(1, &[])));
    assert_eq!(store.list_policies().await?.len(), 2);
    Ok(())
}

// ---- delegations ---------------------------------------------------------------------------

pub async fn delegations_create_get_list_oldest_first(store: Arc<dyn Store>) -> TestResult {
    let late = delegation(1, datetime!(2026-03-01 12:00:00.000000002 UTC));
    let early = delegation(9, datetime!(2026-03-01 12:00:00.000000001 UTC));
    // the same time as `late`: the id breaks the tie
    let tied = delegation(5, late.created_at);
    let mut nested = delegation(7, datetime!(2026-03-02 0:00 UTC));
    nested.parent = early.path();
    nested.revoked_at = Some(datetime!(2026-03-03 0:00 UTC));
    for d in [&late, &nested, &early, &tied] {
        store.create_delegation(d).await?;
    }
    assert_eq!(store.get_delegation(early.id).await?, Some(early.clone()));
    assert_eq!(store.get_delegation(nested.id).await?, Some(nested.clone()));
    assert_eq!(store.get_delegation(uuid::Uuid::from_u128(2)).await?, None);
    assert_eq!(
        store.list_delegations().await?,
        vec![early, late, tied, nested]
    );
    Ok(())
}

pub async fn revoke_delegation_twice_keeps_the_first_time(store: Arc<dyn Store>) -> TestResult {
    let d = delegation(1, datetime!(2026-03-01 0:00 UTC));
    let other = delegation(2, datetime!(2026-03-01 0:00 UTC));
    store.create_delegation(&d).await?;
    store.create_delegation(&other).await?;
    let first = datetime!(2026-04-01 10:00:00.123456789 UTC);
    let revoked = store.revoke_delegation(d.id, first).await?;
    assert_eq!(
        revoked,
        DelegationRecord {
            revoked_at: Some(first),
            ..d.clone()
        }
    );
    let again = store
        .revoke_delegation(d.id, datetime!(2026-05-01 0:00 UTC))
        .await?;
    assert_eq!(again.revoked_at, Some(first));
    assert_eq!(store.get_delegation(d.id).await?, Some(revoked));
    // the other one is untouched
    assert_eq!(store.get_delegation(other.id).await?, Some(other));
    Ok(())
}

pub async fn revoke_unknown_delegation_is_no_such_delegation(store: Arc<dyn Store>) -> TestResult {
    store
        .create_delegation(&delegation(1, OffsetDateTime::now_utc()))
        .await?;
    let unknown = uuid::Uuid::from_u128(2);
    match store
        .revoke_delegation(unknown, OffsetDateTime::now_utc())
        .await
    {
        Err(StoreError::NoSuchDelegation(id)) => assert_eq!(id, unknown.to_string()),
        other => panic!("expected NoSuchDelegation, got {other:?}"),
    }
    assert_eq!(store.list_delegations().await?.len(), 1);
    Ok(())
}

// ---- revoked certificates ------------------------------------------------------------------

pub async fn revoked_certificates_keep_the_first_record(store: Arc<dyn Store>) -> TestResult {
    let mut first = revoked("0a1b", "admin");
    first.revoked_at = datetime!(2026-01-01 0:00 UTC);
    let mut other = revoked("ff00", "alice");
    other.reason = None;
    other.revoked_at = datetime!(2026-01-02 0:00 UTC);
    store.revoke_certificate(&first).await?;
    store.revoke_certificate(&other).await?;
    let mut later = revoked("0a1b", "bob");
    later.revoked_at = datetime!(2026-02-01 0:00 UTC);
    store.revoke_certificate(&later).await?;
    assert_eq!(
        store.list_revoked_certificates().await?,
        vec![first.clone(), other]
    );
    assert_eq!(store.revoked_among(&serials(&["0a1b"])).await?, Some(first));
    Ok(())
}

pub async fn revoked_among_returns_the_first_revoked_in_slice_order(
    store: Arc<dyn Store>,
) -> TestResult {
    let aa = revoked("aa", "admin");
    let cc = revoked("cc", "admin");
    store.revoke_certificate(&aa).await?;
    store.revoke_certificate(&cc).await?;
    assert_eq!(store.revoked_among(&[]).await?, None);
    assert_eq!(store.revoked_among(&serials(&["bb", "dd"])).await?, None);
    assert_eq!(
        store.revoked_among(&serials(&["bb", "cc", "aa"])).await?,
        Some(cc.clone())
    );
    assert_eq!(
        store.revoked_among(&serials(&["aa", "cc"])).await?,
        Some(aa)
    );
    // exact match only
    assert_eq!(
        store.revoked_among(&serials(&["c", "CC", "cc0"])).await?,
        None
    );
    Ok(())
}

pub async fn revoked_among_many_serials_finds_the_first(store: Arc<dyn Store>) -> TestResult {
    let early = revoked("00000000000000000000000000000250", "admin");
    let late = revoked("00000000000000000000000000000999", "admin");
    store.revoke_certificate(&late).await?;
    store.revoke_certificate(&early).await?;
    let many: Vec<String> = (0..1000).map(|i| format!("{i:032}")).collect();
    assert_eq!(store.revoked_among(&many).await?, Some(early));
    let reversed: Vec<String> = many.into_iter().rev().collect();
    assert_eq!(store.revoked_among(&reversed).await?, Some(late));
    Ok(())
}
