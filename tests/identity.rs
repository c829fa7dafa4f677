//! Identity against a real `pitwalld all` (built-in issuer, SQLite file store): users cannot
//! see each other's VMs (one really boots), quotas hold under 50 concurrent creates over HTTP,
//! and every mutating call lands in the audit log.

use std::collections::HashSet;

use pitwall_api::{ClientError, CreateVmRequest, Policy};
use pitwall_e2e::*;
use pitwall_testkit::Daemon;

fn stopped(name: &str, image: &str) -> CreateVmRequest {
    CreateVmRequest {
        start: Some(false),
        ..create(name, image)
    }
}

fn status(e: &ClientError) -> u16 {
    match e {
        ClientError::Api { status, .. } => *status,
        _ => 0,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn users_see_only_their_own_vms_and_the_admin_sees_all() -> anyhow::Result<()> {
    let d = Daemon::start().await?;
    let admin = d.client()?;
    import_hello(&admin, "e2e/hello:1.0").await?;
    let alice = d.user("alice", &[]).await?;
    let bob = d.user("bob", &[]).await?;

    // No token, no service.
    let e = d.anonymous()?.list_vms().await.unwrap_err();
    assert_eq!(status(&e), 401, "{e}");
    assert_eq!(e.code(), Some("unauthenticated"));

    let vm = alice.create_vm(&create("web", "e2e/hello:1.0")).await?;
    assert_eq!(vm.owner, "alice");
    alice
        .wait_vm("web", "RUNNING", std::time::Duration::from_secs(180))
        .await
        .map_err(|e| anyhow::anyhow!("{e}\n{}", d.log_text()))?;
    console_contains(&alice, "web", HELLO, 60).await?;

    // Bob: list, read, console, stop, delete: all exactly as for a name nobody uses.
    assert!(bob.list_vms().await?.is_empty());
    let nobody = bob.get_vm("nobody").await.unwrap_err().to_string();
    for result in [
        bob.get_vm("web").await.map(|_| ()),
        bob.console("web", None).await.map(|_| ()),
        bob.stop_vm("web").await.map(|_| ()),
        bob.delete_vm("web").await.map(|_| ()),
    ] {
        let e = result.unwrap_err();
        assert_eq!(status(&e), 404, "{e}");
        assert_eq!(e.to_string(), nobody.replace("nobody", "web"));
    }
    let e = bob.get_vm("alice:web").await.unwrap_err();
    assert_eq!(status(&e), 404, "{e}");
    assert_eq!(
        alice.get_vm("web").await?.state,
        "RUNNING",
        "bob changed nothing"
    );

    // The admin sees and acts on it.
    let all = admin.list_vms().await?;
    assert_eq!(all.len(), 1);
    let console = String::from_utf8_lossy(&admin.console("alice:web", None).await?).into_owned();
    assert!(console.contains(HELLO), "{console}");
    admin.delete_vm("alice:web").await?;
    let gone = alice
        .wait_vm("web", "DELETED", std::time::Duration::from_secs(60))
        .await;
    if let Err(e) = gone {
        assert_eq!(status(&e), 404, "{e}");
    }
    assert!(d.vmm_pids().is_empty(), "no VMM left");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn fifty_concurrent_creates_over_http_admit_exactly_the_quota() -> anyhow::Result<()> {
    let d = Daemon::start().await?;
    let admin = d.client()?;
    import_hello(&admin, "e2e/hello:1.0").await?;
    let alice = d.user("alice", &[]).await?;
    admin
        .set_policy(
            "user:alice",
            &Policy {
                max_vms: Some(5),
                ..Policy::default()
            },
        )
        .await?;
    let mut tasks = Vec::new();
    for i in 0..50 {
        let c = alice.clone();
        tasks.push(tokio::spawn(async move {
            c.create_vm(&stopped(&format!("q{i}"), "e2e/hello:1.0"))
                .await
        }));
    }
    let (mut created, mut refused) = (0, 0);
    for t in tasks {
        match t.await? {
            Ok(_) => created += 1,
            Err(e) if e.code() == Some("quota_exceeded") => {
                assert_eq!(status(&e), 403);
                assert!(e.to_string().contains("max_vms 5"), "{e}");
                refused += 1;
            }
            Err(e) => anyhow::bail!("unexpected error: {e}"),
        }
    }
    assert_eq!((created, refused), (5, 45));
    assert_eq!(alice.list_vms().await?.len(), 5);
    let q = alice.quota(&Default::default()).await?;
    assert_eq!(q.usage.vms, 5);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn every_mutating_call_is_in_the_audit_log() -> anyhow::Result<()> {
    let d = Daemon::start().await?;
    let admin = d.client()?;
    import_hello(&admin, "e2e/hello:1.0").await?;
    let alice = d.user("alice", &[]).await?;
    let bob = d.user("bob", &[]).await?;
    alice.create_vm(&stopped("a1", "e2e/hello:1.0")).await?;
    alice.start_vm("a1").await?;
    alice.stop_vm("a1").await?;
    let _ = bob.stop_vm("a1").await.unwrap_err();
    alice.delete_vm("a1").await?;
    let _ = d.anonymous()?.delete_vm("a1").await.unwrap_err();

    let entries = admin.audit(None, Some(1000), None).await?;
    let seen: HashSet<(String, String, String)> = entries
        .iter()
        .map(|e| (e.actor.clone(), e.action.clone(), e.outcome.clone()))
        .collect();
    for (actor, action, outcome) in [
        ("admin", "POST /v1/auth/login", "ok"),
        ("admin", "POST /v1/images", "ok"),
        ("admin", "POST /v1/users", "ok"),
        ("alice", "POST /v1/auth/login", "ok"),
        ("alice", "POST /v1/vms", "ok"),
        ("alice", "POST /v1/vms/{name}/start", "ok"),
        ("alice", "POST /v1/vms/{name}/stop", "ok"),
        ("bob", "POST /v1/vms/{name}/stop", "not_found"),
        ("alice", "DELETE /v1/vms/{name}", "ok"),
        ("-", "DELETE /v1/vms/{name}", "unauthenticated"),
    ] {
        assert!(
            seen.contains(&(actor.into(), action.into(), outcome.into())),
            "no audit row ({actor}, {action}, {outcome}) in {seen:?}"
        );
    }
    for e in &entries {
        assert!(e.source.starts_with("127.0.0.1:"), "source recorded: {e:?}");
        assert!(!e.at.is_empty());
    }
    // A user reads only their own rows.
    let mine = bob.audit(None, None, None).await?;
    assert!(!mine.is_empty() && mine.iter().all(|e| e.actor == "bob"));
    Ok(())
}
