//! Quotas checked by `create_vm`, and `usage`: what the live VMs charged under a prefix hold.
//! Every test VM is `spec`: 2 vCPUs, 512 MiB of memory, 2048 MiB of disk.

use pitwall_core::{Policy, Usage};
use pitwall_store::QuotaCheck;

use super::*;

const ONE: Usage = Usage {
    vms: 1,
    vcpus: 2,
    memory_mib: 512,
    disk_mib: 2048,
};

fn check(label: &str, prefix: &str, policy: Policy) -> QuotaCheck {
    QuotaCheck {
        label: label.to_string(),
        prefix: prefix.to_string(),
        policy,
    }
}

fn max_vms(n: u64) -> Policy {
    Policy {
        max_vms: Some(n),
        ..Policy::default()
    }
}

/// A VM of alice charged to `charge`.
fn charged(name: &str, charge: &str) -> VmRecord {
    let mut vm = new_vm(name);
    vm.charge = charge.to_string();
    vm
}

fn quota_message(result: Result<(), StoreError>) -> String {
    match result {
        Err(StoreError::QuotaExceeded(why)) => why,
        other => panic!("expected QuotaExceeded, got {other:?}"),
    }
}

pub async fn each_limit_is_enforced_naming_label_and_limit(store: Arc<dyn Store>) -> TestResult {
    // each policy admits exactly one test VM
    let limits = [
        ("max_vms", max_vms(1)),
        (
            "max_vcpus",
            Policy {
                max_vcpus: Some(3),
                ..Policy::default()
            },
        ),
        (
            "max_memory_mib",
            Policy {
                max_memory_mib: Some(1000),
                ..Policy::default()
            },
        ),
        (
            "max_disk_mib",
            Policy {
                max_disk_mib: Some(3000),
                ..Policy::default()
            },
        ),
    ];
    for (i, (field, policy)) in limits.into_iter().enumerate() {
        let prefix = format!("/user:u{i}/");
        let label = format!("user u{i}");
        let quota = [check(&label, &prefix, policy.clone())];
        store
            .create_vm(&charged(&format!("first-{i}"), &prefix), &quota)
            .await?;
        let second = charged(&format!("second-{i}"), &prefix);
        let why = quota_message(store.create_vm(&second, &quota).await);
        let limit = [
            policy.max_vms,
            policy.max_vcpus,
            policy.max_memory_mib,
            policy.max_disk_mib,
        ]
        .into_iter()
        .flatten()
        .next()
        .expect("one limit set");
        assert!(why.starts_with(&format!("{label}: ")), "{field}: {why}");
        assert!(why.contains(&format!("{field} {limit}")), "{field}: {why}");
        assert_eq!(store.get_vm_by_id(second.id).await?, None, "{field}");
        assert_eq!(store.usage(&prefix).await?, ONE, "{field}");
    }
    assert_eq!(store.list_vms().await?.len(), 4);
    assert_eq!(all_events(&*store).await?.len(), 4);
    Ok(())
}

pub async fn quota_admits_up_to_the_limit_exactly(store: Arc<dyn Store>) -> TestResult {
    let quota = [check(
        "user alice",
        "/user:alice/",
        Policy {
            max_vms: Some(3),
            max_vcpus: Some(6),
            max_memory_mib: Some(1536),
            max_disk_mib: Some(6144),
            ..Policy::default()
        },
    )];
    for i in 0..3 {
        store.create_vm(&new_vm(&format!("vm-{i}")), &quota).await?;
    }
    let why = quota_message(store.create_vm(&new_vm("vm-3"), &quota).await);
    // every limit is exceeded at once, and each is named
    for field in [
        "max_vms 3",
        "max_vcpus 6",
        "max_memory_mib 1536",
        "max_disk_mib 6144",
    ] {
        assert!(why.contains(field), "{field}: {why}");
    }
    assert_eq!(store.list_vms().await?.len(), 3);
    Ok(())
}

pub async fn first_failing_check_is_named_and_nothing_changes(store: Arc<dyn Store>) -> TestResult {
    let d = "/user:alice/d:0193a1b2-0000-7000-8000-000000000001/";
    store.create_vm(&charged("old", d), &[]).await?;
    let quotas = [
        check("user alice", "/user:alice/", max_vms(10)),
        check("delegation 0193a1b2", d, max_vms(1)),
        check("user bob", "/user:bob/", max_vms(0)),
    ];
    let vm = charged("new", d);
    let why = quota_message(store.create_vm(&vm, &quotas).await);
    assert!(why.starts_with("delegation 0193a1b2: "), "{why}");
    assert!(
        !why.contains("user alice") && !why.contains("user bob"),
        "{why}"
    );
    assert_eq!(store.get_vm_by_id(vm.id).await?, None);
    assert_eq!(store.vms_named("new").await?, vec![]);
    assert_eq!(all_events(&*store).await?.len(), 1);
    // with room everywhere the same create goes through
    let roomy = [
        check("user alice", "/user:alice/", max_vms(10)),
        check("delegation 0193a1b2", d, max_vms(2)),
    ];
    store.create_vm(&vm, &roomy).await?;
    Ok(())
}

pub async fn deleted_vms_no_longer_count(store: Arc<dyn Store>) -> TestResult {
    let quota = [check("user alice", "/user:alice/", max_vms(1))];
    let old = new_vm("old");
    store.create_vm(&old, &quota).await?;
    drive(&*store, old.id, 1, &[Creating, Failed]).await?;
    quota_message(store.create_vm(&new_vm("new"), &quota).await);
    drive(&*store, old.id, 1, &[Deleting]).await?;
    // still held while it is being deleted
    quota_message(store.create_vm(&new_vm("new"), &quota).await);
    drive(&*store, old.id, 1, &[Deleted]).await?;
    assert_eq!(store.usage("/user:alice/").await?, Usage::default());
    store.create_vm(&new_vm("new"), &quota).await?;
    Ok(())
}

pub async fn quota_counts_every_vm_charged_under_the_prefix(store: Arc<dyn Store>) -> TestResult {
    let d = "/user:alice/d:X/";
    store.create_vm(&charged("in-d", d), &[]).await?;
    for prefix in ["/user:alice/", d] {
        let quota = [check("q", prefix, max_vms(1))];
        let why = quota_message(store.create_vm(&charged("next", d), &quota).await);
        assert!(why.contains("max_vms 1"), "{prefix}: {why}");
    }
    // neither another user nor a user whose name merely starts the same
    for (i, prefix) in ["/user:bob/", "/user:alicexyz/", "/user:alice/d:Y/"]
        .into_iter()
        .enumerate()
    {
        let quota = [check("q", prefix, max_vms(1))];
        let vm = charged(&format!("other-{i}"), prefix);
        store.create_vm(&vm, &quota).await?;
    }
    Ok(())
}

pub async fn usage_sums_live_vms_under_a_prefix(store: Arc<dyn Store>) -> TestResult {
    assert_eq!(store.usage("/").await?, Usage::default());
    store.create_vm(&charged("a", "/user:alice/"), &[]).await?;
    store
        .create_vm(&charged("b", "/user:alice/d:X/"), &[])
        .await?;
    let mut big = owned_vm("c", "bob");
    big.spec = VmSpec::new(
        VmName::parse("c").expect("valid name"),
        ImageRef::parse("busybox").expect("valid image"),
        Some(4),
        Some(1024),
        Some(100),
    )
    .expect("valid spec");
    store.create_vm(&big, &[]).await?;
    let two = ONE.plus(ONE);
    assert_eq!(store.usage("/user:alice/").await?, two);
    assert_eq!(store.usage("/user:alice/d:X/").await?, ONE);
    assert_eq!(
        store.usage("/user:bob/").await?,
        Usage {
            vms: 1,
            vcpus: 4,
            memory_mib: 1024,
            disk_mib: 100
        }
    );
    assert_eq!(store.usage("/").await?.vms, 3);
    assert_eq!(store.usage("/user:alicexyz/").await?, Usage::default());
    assert_eq!(store.usage("/user:carol/").await?, Usage::default());
    Ok(())
}

pub async fn usage_prefix_is_literal_not_a_pattern(store: Arc<dyn Store>) -> TestResult {
    store.create_vm(&charged("a", "/user:axb/"), &[]).await?;
    store.create_vm(&charged("b", "/user:a_b/"), &[]).await?;
    // `_` and `%` would be wildcards to LIKE
    assert_eq!(store.usage("/user:a_b/").await?, ONE);
    assert_eq!(store.usage("/user:a%/").await?, Usage::default());
    assert_eq!(store.usage("/user:%").await?, Usage::default());
    assert_eq!(store.usage("/USER:").await?, Usage::default());
    Ok(())
}

pub async fn quota_is_checked_before_the_name(store: Arc<dyn Store>) -> TestResult {
    create(&*store, "web").await?;
    let quota = [check("user alice", "/user:alice/", max_vms(1))];
    quota_message(store.create_vm(&new_vm("web"), &quota).await);
    // without a quota in the way the name decides
    assert!(matches!(
        store.create_vm(&new_vm("web"), &[]).await,
        Err(StoreError::NameTaken(_))
    ));
    Ok(())
}

/// Fifty creates race for five places: the check and the insert are one serialised
/// transaction, so exactly five win however the tasks interleave.
pub async fn concurrent_creates_never_exceed_a_quota(store: Arc<dyn Store>) -> TestResult {
    let quota = vec![check("user alice", "/user:alice/", max_vms(5))];
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..50 {
        let store = store.clone();
        let quota = quota.clone();
        tasks.spawn(async move {
            store
                .create_vm(&new_vm(&format!("vm-{i:02}")), &quota)
                .await
        });
    }
    let (mut won, mut refused) = (0, 0);
    while let Some(done) = tasks.join_next().await {
        match done.expect("task ran") {
            Ok(()) => won += 1,
            Err(StoreError::QuotaExceeded(why)) => {
                assert!(why.contains("max_vms 5"), "{why}");
                refused += 1;
            }
            Err(e) => return Err(e),
        }
    }
    assert_eq!((won, refused), (5, 45));
    assert_eq!(store.list_vms().await?.len(), 5);
    assert_eq!(store.usage("/user:alice/").await?.vms, 5);
    assert_eq!(all_events(&*store).await?.len(), 5);
    Ok(())
}
