//! The behaviour every [`Store`] implementation must have, as one async function per
//! behaviour taking a fresh, empty store. A backend's test file includes this module and
//! expands [`store_suite!`] with a function that makes such a store, e.g.
//!
//! ```ignore
//! mod suite;
//! async fn memory() -> suite::Fixture { /* a fresh store */ }
//! store_suite!(memory);
//! ```
//!
//! so every case runs as its own named test against every backend.

#![allow(dead_code)] // each backend's test file uses what it needs

use std::any::Any;
use std::collections::HashSet;
use std::sync::Arc;

use pitwall_core::{DesiredState, ImageRef, VmId, VmName, VmSpec, VmState};
use pitwall_store::{
    EventRecord, ImageRecord, StatusOutcome, Store, StoreError, UserRecord, VmRecord,
};
use time::OffsetDateTime;

mod audit;
mod identity;
mod owners;
mod quotas;

pub use audit::*;
pub use identity::*;
pub use owners::*;
pub use quotas::*;

pub type TestResult = Result<(), StoreError>;

/// A fresh, empty store, and whatever must live as long as it (a temporary directory, ...).
pub struct Fixture {
    pub store: Arc<dyn Store>,
    pub keep: Box<dyn Any + Send>,
}

/// One `#[tokio::test]` per case of the suite, each on a store from `$make()`.
#[macro_export]
macro_rules! store_suite {
    ($make:path) => {
        $crate::store_suite!(@cases $make;
            create_then_get_by_name_and_id,
            run_overrides_and_exposed_ports_are_kept,
            create_appends_a_pending_event,
            list_is_ordered_by_name,
            unknown_vm_is_none,
            duplicate_name_is_refused_and_store_unchanged,
            reused_id_is_refused_and_store_unchanged,
            name_is_reusable_after_deleted,
            deleted_vm_is_still_found_by_id,
            set_desired_bumps_generation,
            set_desired_on_unknown_vm_is_no_such_vm,
            set_host_places_the_vm,
            set_host_on_unknown_vm_is_no_such_vm,
            an_address_is_kept_until_changed_or_cleared,
            an_ssh_host_key_is_kept_until_changed_or_cleared,
            grants_are_idempotent_listed_by_grantee_and_revocable,
            legal_transitions_are_applied_and_evented,
            illegal_transition_is_stale_and_changes_nothing,
            older_generation_is_stale_and_changes_nothing,
            repeated_report_is_a_duplicate,
            same_state_at_newer_generation_is_applied,
            reason_is_kept_only_for_failed_stopped_and_lost,
            status_of_unknown_vm_is_no_such_vm,
            nothing_leaves_deleted,
            events_since_is_ordered_and_limited,
            concurrent_creates_of_one_name_admit_exactly_one,
            concurrent_creates_of_distinct_names_all_succeed,
            concurrent_identical_reports_apply_once,
            concurrent_lifecycles_keep_every_event_in_order,
            images_put_get_list_delete,
            put_image_replaces_by_reference,
            users_create_get_list,
            duplicate_username_is_refused_and_store_unchanged,
            set_user_password_replaces_only_the_hash,
            set_password_of_unknown_user_is_no_such_user,
            delete_user_removes_it_and_says_whether_it_existed,
            // owners.rs
            group_and_charge_round_trip,
            same_name_for_two_owners_is_allowed,
            same_name_for_the_same_owner_is_refused,
            name_is_free_again_for_its_owner_after_deleted,
            vms_named_is_ordered_by_owner_and_skips_deleted,
            list_is_ordered_by_name_then_owner,
            events_carry_the_owner_and_group_of_their_vm,
            images_keep_their_owner,
            // quotas.rs
            each_limit_is_enforced_naming_label_and_limit,
            quota_admits_up_to_the_limit_exactly,
            first_failing_check_is_named_and_nothing_changes,
            deleted_vms_no_longer_count,
            quota_counts_every_vm_charged_under_the_prefix,
            usage_sums_live_vms_under_a_prefix,
            usage_prefix_is_literal_not_a_pattern,
            quota_is_checked_before_the_name,
            concurrent_creates_never_exceed_a_quota,
            // identity.rs
            policies_put_get_list_delete,
            put_policy_replaces_by_holder,
            delegations_create_get_list_oldest_first,
            revoke_delegation_twice_keeps_the_first_time,
            revoke_unknown_delegation_is_no_such_delegation,
            revoked_certificates_keep_the_first_record,
            revoked_among_returns_the_first_revoked_in_slice_order,
            revoked_among_many_serials_finds_the_first,
            // audit.rs
            audit_append_assigns_increasing_seq,
            audit_since_is_ordered_and_limited,
            audit_since_filters_by_actor,
        );
    };
    (@cases $make:path; $($case:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $case() -> $crate::suite::TestResult {
                let fixture = $make().await;
                let result = $crate::suite::$case(fixture.store.clone()).await;
                drop(fixture);
                result
            }
        )*
    };
}

// ---- helpers ------------------------------------------------------------------------------

pub fn spec(name: &str) -> VmSpec {
    VmSpec::new(
        VmName::parse(name).expect("valid test name"),
        ImageRef::parse("demo/hello:1.0").expect("valid test image"),
        Some(2),
        Some(512),
        Some(2048),
    )
    .expect("valid test spec")
}

pub fn new_vm(name: &str) -> VmRecord {
    owned_vm(name, "alice")
}

/// A VM of `owner`, charged to `/user:<owner>/`.
pub fn owned_vm(name: &str, owner: &str) -> VmRecord {
    VmRecord::new(
        VmId::new_v4(),
        spec(name),
        owner,
        DesiredState::Running,
        OffsetDateTime::now_utc(),
    )
}

async fn create(store: &dyn Store, name: &str) -> Result<VmRecord, StoreError> {
    let vm = new_vm(name);
    store.create_vm(&vm, &[]).await?;
    Ok(vm)
}

async fn all_events(store: &dyn Store) -> Result<Vec<EventRecord>, StoreError> {
    store.events_since(0, u32::MAX).await
}

async fn state_of(store: &dyn Store, id: VmId) -> Result<VmState, StoreError> {
    Ok(store.get_vm_by_id(id).await?.expect("VM exists").state)
}

/// Report `states` in order at `generation`, each expected to apply.
async fn drive(store: &dyn Store, id: VmId, generation: u64, states: &[VmState]) -> TestResult {
    for &s in states {
        let outcome = store.record_status(id, s, generation, None).await?;
        assert!(
            matches!(outcome, StatusOutcome::Applied(_)),
            "{s} at {generation}: {outcome:?}"
        );
    }
    Ok(())
}

fn applied(outcome: StatusOutcome) -> VmRecord {
    match outcome {
        StatusOutcome::Applied(vm) => vm,
        other => panic!("expected Applied, got {other:?}"),
    }
}

fn stale(outcome: StatusOutcome) -> String {
    match outcome {
        StatusOutcome::Stale(why) => why,
        other => panic!("expected Stale, got {other:?}"),
    }
}

pub fn user(username: &str) -> UserRecord {
    UserRecord {
        username: username.to_string(),
        password_hash: format!("$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$hash-of-{username}"),
        roles: vec!["pitwall-user".to_string(), "ops".to_string()],
        groups: vec!["/team-a".to_string()],
        disabled: false,
        created_at: OffsetDateTime::now_utc(),
    }
}

fn image(reference: &str, digest: &str) -> ImageRecord {
    ImageRecord {
        reference: reference.to_string(),
        digest: digest.to_string(),
        size_bytes: 5 << 30,
        config: serde_json::json!({"Entrypoint": ["/hello"], "Env": ["A=1"]}),
        host: "h1".to_string(),
        owner: "alice".to_string(),
        created_at: OffsetDateTime::now_utc(),
        details: serde_json::json!({"os": "linux", "architecture": "amd64", "layers": ["sha256:aa"]}),
    }
}

use VmState::*;

// ---- create, get, list ---------------------------------------------------------------------

pub async fn create_then_get_by_name_and_id(store: Arc<dyn Store>) -> TestResult {
    let vm = create(&*store, "web").await?;
    assert_eq!(store.vms_named("web").await?, vec![vm.clone()]);
    assert_eq!(store.get_vm_by_id(vm.id).await?, Some(vm.clone()));
    assert_eq!(
        (vm.state, vm.generation, vm.state_generation),
        (Pending, 1, 0)
    );
    Ok(())
}

pub async fn run_overrides_and_exposed_ports_are_kept(store: Arc<dyn Store>) -> TestResult {
    let mut vm = new_vm("job");
    vm.spec.run = pitwall_core::RunOverrides {
        entrypoint: Some(vec![]),
        cmd: Some(vec!["/bin/sh".into(), "-c".into(), "echo 'a b'".into()]),
        env: vec!["A=1".into(), "EMPTY=".into()],
        working_dir: Some("/srv".into()),
        user: Some("1000:1000".into()),
        services: vec![pitwall_core::ServiceSpec {
            name: "web".into(),
            command: vec!["/bin/httpd".into(), "-f".into()],
            restart: pitwall_core::RestartPolicy::OnFailure,
            ..Default::default()
        }],
    };
    vm.exposed_ports = vec!["53/udp".into(), "80/tcp".into()];
    store.create_vm(&vm, &[]).await?;
    assert_eq!(store.get_vm_by_id(vm.id).await?, Some(vm.clone()));
    // A VM without either reads back with neither.
    let plain = create(&*store, "plain").await?;
    let back = store.get_vm_by_id(plain.id).await?.expect("stored");
    assert!(back.spec.run.is_empty() && back.exposed_ports.is_empty());
    Ok(())
}

pub async fn create_appends_a_pending_event(store: Arc<dyn Store>) -> TestResult {
    let vm = create(&*store, "web").await?;
    let events = all_events(&*store).await?;
    assert_eq!(events.len(), 1);
    let e = &events[0];
    assert_eq!(
        (e.seq, e.vm_id, e.vm_name.as_str(), e.state, e.generation),
        (1, vm.id, "web", Pending, 1)
    );
    assert_eq!(e.reason, None);
    Ok(())
}

pub async fn list_is_ordered_by_name(store: Arc<dyn Store>) -> TestResult {
    for name in ["web", "db", "cache-2", "cache-10"] {
        create(&*store, name).await?;
    }
    let names: Vec<String> = store
        .list_vms()
        .await?
        .into_iter()
        .map(|v| v.spec.name.to_string())
        .collect();
    assert_eq!(names, ["cache-10", "cache-2", "db", "web"]);
    Ok(())
}

pub async fn unknown_vm_is_none(store: Arc<dyn Store>) -> TestResult {
    assert_eq!(store.vms_named("nope").await?, vec![]);
    assert_eq!(store.get_vm_by_id(VmId::new_v4()).await?, None);
    assert_eq!(store.list_vms().await?, vec![]);
    Ok(())
}

pub async fn duplicate_name_is_refused_and_store_unchanged(store: Arc<dyn Store>) -> TestResult {
    let first = create(&*store, "web").await?;
    let second = new_vm("web");
    match store.create_vm(&second, &[]).await {
        Err(StoreError::NameTaken(name)) => assert_eq!(name, "web"),
        other => panic!("expected NameTaken, got {other:?}"),
    }
    assert_eq!(store.list_vms().await?, vec![first.clone()]);
    assert_eq!(store.get_vm_by_id(second.id).await?, None);
    assert_eq!(all_events(&*store).await?.len(), 1);
    Ok(())
}

pub async fn reused_id_is_refused_and_store_unchanged(store: Arc<dyn Store>) -> TestResult {
    let first = create(&*store, "web").await?;
    let mut again = new_vm("other");
    again.id = first.id;
    let err = store
        .create_vm(&again, &[])
        .await
        .expect_err("an id is never reused");
    assert!(!matches!(err, StoreError::NameTaken(_)), "{err:?}");
    assert_eq!(store.list_vms().await?, vec![first]);
    assert_eq!(all_events(&*store).await?.len(), 1);
    Ok(())
}

pub async fn name_is_reusable_after_deleted(store: Arc<dyn Store>) -> TestResult {
    let old = create(&*store, "web").await?;
    drive(&*store, old.id, 1, &[Deleting]).await?;
    assert!(matches!(
        store.create_vm(&new_vm("web"), &[]).await,
        Err(StoreError::NameTaken(_))
    ));
    drive(&*store, old.id, 1, &[Deleted]).await?;
    let new = create(&*store, "web").await?;
    assert_eq!(store.vms_named("web").await?, vec![new.clone()]);
    assert_eq!(store.list_vms().await?, vec![new]);
    assert_eq!(state_of(&*store, old.id).await?, Deleted);
    Ok(())
}

pub async fn deleted_vm_is_still_found_by_id(store: Arc<dyn Store>) -> TestResult {
    let vm = create(&*store, "web").await?;
    drive(&*store, vm.id, 1, &[Deleting, Deleted]).await?;
    assert_eq!(store.vms_named("web").await?, vec![]);
    assert_eq!(store.list_vms().await?, vec![]);
    let gone = store.get_vm_by_id(vm.id).await?.expect("still there by id");
    assert_eq!((gone.spec, gone.state), (vm.spec, Deleted));
    Ok(())
}

// ---- desired state and placement ---------------------------------------------------------

pub async fn set_desired_bumps_generation(store: Arc<dyn Store>) -> TestResult {
    let vm = create(&*store, "web").await?;
    let stopped = store.set_desired(vm.id, DesiredState::Stopped).await?;
    assert_eq!(
        (stopped.desired, stopped.generation),
        (DesiredState::Stopped, 2)
    );
    assert_eq!((stopped.state, stopped.state_generation), (Pending, 0));
    let running = store.set_desired(vm.id, DesiredState::Running).await?;
    assert_eq!(
        (running.desired, running.generation),
        (DesiredState::Running, 3)
    );
    assert_eq!(store.get_vm_by_id(vm.id).await?, Some(running));
    Ok(())
}

pub async fn set_desired_on_unknown_vm_is_no_such_vm(store: Arc<dyn Store>) -> TestResult {
    let err = store
        .set_desired(VmId::new_v4(), DesiredState::Stopped)
        .await
        .expect_err("unknown");
    assert!(matches!(err, StoreError::NoSuchVm(_)), "{err:?}");
    Ok(())
}

pub async fn set_host_places_the_vm(store: Arc<dyn Store>) -> TestResult {
    let vm = create(&*store, "web").await?;
    store.set_host(vm.id, "host-a").await?;
    let placed = store.get_vm_by_id(vm.id).await?.expect("exists");
    assert_eq!(placed.host.as_deref(), Some("host-a"));
    assert_eq!(placed.generation, 1);
    Ok(())
}

pub async fn set_host_on_unknown_vm_is_no_such_vm(store: Arc<dyn Store>) -> TestResult {
    let err = store
        .set_host(VmId::new_v4(), "host-a")
        .await
        .expect_err("unknown");
    assert!(matches!(err, StoreError::NoSuchVm(_)), "{err:?}");
    Ok(())
}

pub async fn an_ssh_host_key_is_kept_until_changed_or_cleared(store: Arc<dyn Store>) -> TestResult {
    let vm = create(&*store, "web").await?;
    assert_eq!(vm.ssh_host_key, None);
    let key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBxs8bLMq4GUuqzeL2ecgH2K5GXuKdZx9mIUN6DPRafp";
    store.set_ssh_host_key(vm.id, Some(key)).await?;
    let got = store.get_vm_by_id(vm.id).await?.expect("exists");
    assert_eq!(got.ssh_host_key.as_deref(), Some(key));
    assert!(got.updated_at >= vm.updated_at);
    store.set_ssh_host_key(vm.id, None).await?;
    assert_eq!(
        store
            .get_vm_by_id(vm.id)
            .await?
            .expect("exists")
            .ssh_host_key,
        None
    );
    let err = store
        .set_ssh_host_key(VmId::new_v4(), Some(key))
        .await
        .expect_err("unknown");
    assert!(matches!(err, StoreError::NoSuchVm(_)), "{err:?}");
    Ok(())
}

pub async fn an_address_is_kept_until_changed_or_cleared(store: Arc<dyn Store>) -> TestResult {
    let vm = create(&*store, "web").await?;
    assert_eq!(vm.address, None);
    store.set_address(vm.id, Some("172.30.0.7")).await?;
    let got = store.get_vm_by_id(vm.id).await?.expect("exists");
    assert_eq!(got.address.as_deref(), Some("172.30.0.7"));
    store.set_address(vm.id, None).await?;
    assert_eq!(
        store.get_vm_by_id(vm.id).await?.expect("exists").address,
        None
    );
    let err = store
        .set_address(VmId::new_v4(), Some("172.30.0.8"))
        .await
        .expect_err("unknown");
    assert!(matches!(err, StoreError::NoSuchVm(_)), "{err:?}");
    Ok(())
}

pub async fn grants_are_idempotent_listed_by_grantee_and_revocable(
    store: Arc<dyn Store>,
) -> TestResult {
    let vm = create(&*store, "web").await?;
    let grant = |who: &str| pitwall_store::VmGrant {
        vm_id: vm.id,
        grantee: who.into(),
        granted_by: "alice".into(),
        created_at: time::OffsetDateTime::UNIX_EPOCH,
    };
    assert!(store.grant_vm(&grant("carol")).await?);
    assert!(store.grant_vm(&grant("bob")).await?);
    assert!(
        !store.grant_vm(&grant("bob")).await?,
        "a repeated grant is not new"
    );
    let names: Vec<String> = store
        .vm_grants(vm.id)
        .await?
        .into_iter()
        .map(|g| g.grantee)
        .collect();
    assert_eq!(names, ["bob", "carol"]);
    assert!(store.revoke_vm_grant(vm.id, "bob").await?);
    assert!(!store.revoke_vm_grant(vm.id, "bob").await?);
    assert_eq!(store.vm_grants(vm.id).await?.len(), 1);
    let err = store
        .grant_vm(&pitwall_store::VmGrant {
            vm_id: VmId::new_v4(),
            ..grant("dave")
        })
        .await
        .expect_err("unknown VM");
    assert!(matches!(err, StoreError::NoSuchVm(_)), "{err:?}");
    Ok(())
}

// ---- record_status ------------------------------------------------------------------------

pub async fn legal_transitions_are_applied_and_evented(store: Arc<dyn Store>) -> TestResult {
    let vm = create(&*store, "web").await?;
    let path = [
        Creating, Starting, Running, Stopping, Stopped, Starting, Running,
    ];
    for s in path {
        let now = applied(store.record_status(vm.id, s, 1, None).await?);
        assert_eq!((now.state, now.state_generation), (s, 1));
        assert_eq!(store.get_vm_by_id(vm.id).await?, Some(now));
    }
    let events = all_events(&*store).await?;
    let states: Vec<VmState> = events.iter().map(|e| e.state).collect();
    let mut expected = vec![Pending];
    expected.extend(path);
    assert_eq!(states, expected);
    assert!(events
        .iter()
        .all(|e| e.vm_id == vm.id && e.vm_name == "web" && e.generation == 1));
    Ok(())
}

pub async fn illegal_transition_is_stale_and_changes_nothing(store: Arc<dyn Store>) -> TestResult {
    let vm = create(&*store, "web").await?;
    let why = stale(store.record_status(vm.id, Running, 1, None).await?);
    assert!(why.contains("PENDING") && why.contains("RUNNING"), "{why}");
    assert_eq!(store.get_vm_by_id(vm.id).await?, Some(vm));
    assert_eq!(all_events(&*store).await?.len(), 1);
    Ok(())
}

pub async fn older_generation_is_stale_and_changes_nothing(store: Arc<dyn Store>) -> TestResult {
    let vm = create(&*store, "web").await?;
    store.set_desired(vm.id, DesiredState::Stopped).await?;
    drive(&*store, vm.id, 2, &[Creating]).await?;
    let before = store.get_vm_by_id(vm.id).await?;
    // a legal transition, but answering an older wish
    let why = stale(store.record_status(vm.id, Starting, 1, None).await?);
    assert!(why.contains("older"), "{why}");
    assert_eq!(store.get_vm_by_id(vm.id).await?, before);
    assert_eq!(all_events(&*store).await?.len(), 2);
    Ok(())
}

pub async fn repeated_report_is_a_duplicate(store: Arc<dyn Store>) -> TestResult {
    let vm = create(&*store, "web").await?;
    drive(&*store, vm.id, 1, &[Creating]).await?;
    let before = store.get_vm_by_id(vm.id).await?;
    assert_eq!(
        store.record_status(vm.id, Creating, 1, None).await?,
        StatusOutcome::Duplicate
    );
    assert_eq!(store.get_vm_by_id(vm.id).await?, before);
    assert_eq!(all_events(&*store).await?.len(), 2);
    Ok(())
}

pub async fn same_state_at_newer_generation_is_applied(store: Arc<dyn Store>) -> TestResult {
    let vm = create(&*store, "web").await?;
    drive(&*store, vm.id, 1, &[Creating, Starting, Running]).await?;
    store.set_desired(vm.id, DesiredState::Running).await?;
    let now = applied(store.record_status(vm.id, Running, 2, None).await?);
    assert_eq!(
        (now.state, now.state_generation, now.generation),
        (Running, 2, 2)
    );
    let last = all_events(&*store).await?.pop().expect("events");
    assert_eq!((last.state, last.generation), (Running, 2));
    assert_eq!(
        store.record_status(vm.id, Running, 2, None).await?,
        StatusOutcome::Duplicate
    );
    Ok(())
}

pub async fn reason_is_kept_only_for_failed_stopped_and_lost(store: Arc<dyn Store>) -> TestResult {
    let vm = create(&*store, "web").await?;
    let creating = applied(
        store
            .record_status(vm.id, Creating, 1, Some("ignored"))
            .await?,
    );
    assert_eq!(creating.reason, None);
    let failed = applied(
        store
            .record_status(vm.id, Failed, 1, Some("disk full"))
            .await?,
    );
    assert_eq!(failed.reason.as_deref(), Some("disk full"));
    let starting = applied(store.record_status(vm.id, Starting, 1, None).await?);
    assert_eq!(starting.reason, None);
    drive(&*store, vm.id, 1, &[Running]).await?;
    let stopped = applied(
        store
            .record_status(vm.id, Stopped, 1, Some("exit 0"))
            .await?,
    );
    assert_eq!(stopped.reason.as_deref(), Some("exit 0"));
    let lost = applied(
        store
            .record_status(vm.id, Lost, 1, Some("host silent"))
            .await?,
    );
    assert_eq!(lost.reason.as_deref(), Some("host silent"));
    let reasons: Vec<Option<String>> = all_events(&*store)
        .await?
        .into_iter()
        .map(|e| e.reason)
        .collect();
    let expected = [
        None,
        None,
        Some("disk full"),
        None,
        None,
        Some("exit 0"),
        Some("host silent"),
    ];
    assert_eq!(reasons, expected.map(|r| r.map(String::from)));
    Ok(())
}

pub async fn status_of_unknown_vm_is_no_such_vm(store: Arc<dyn Store>) -> TestResult {
    let err = store
        .record_status(VmId::new_v4(), Creating, 1, None)
        .await
        .expect_err("unknown");
    assert!(matches!(err, StoreError::NoSuchVm(_)), "{err:?}");
    Ok(())
}

pub async fn nothing_leaves_deleted(store: Arc<dyn Store>) -> TestResult {
    let vm = create(&*store, "web").await?;
    drive(&*store, vm.id, 1, &[Deleting, Deleted]).await?;
    for s in VmState::ALL.into_iter().filter(|s| *s != Deleted) {
        stale(store.record_status(vm.id, s, 5, None).await?);
    }
    assert_eq!(state_of(&*store, vm.id).await?, Deleted);
    Ok(())
}

// ---- events --------------------------------------------------------------------------------

pub async fn events_since_is_ordered_and_limited(store: Arc<dyn Store>) -> TestResult {
    let a = create(&*store, "a").await?;
    let b = create(&*store, "b").await?;
    drive(&*store, a.id, 1, &[Creating]).await?;
    drive(&*store, b.id, 1, &[Creating, Starting]).await?;
    let all = all_events(&*store).await?;
    let seqs: Vec<u64> = all.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, [1, 2, 3, 4, 5]);
    let order: Vec<(VmId, VmState)> = all.iter().map(|e| (e.vm_id, e.state)).collect();
    assert_eq!(
        order,
        [
            (a.id, Pending),
            (b.id, Pending),
            (a.id, Creating),
            (b.id, Creating),
            (b.id, Starting)
        ]
    );
    assert_eq!(store.events_since(0, 2).await?, all[..2]);
    assert_eq!(store.events_since(2, 2).await?, all[2..4]);
    assert_eq!(store.events_since(4, 100).await?, all[4..]);
    assert_eq!(store.events_since(5, 100).await?, vec![]);
    assert_eq!(store.events_since(0, 0).await?, vec![]);
    assert_eq!(store.events_since(u64::MAX, 10).await?, vec![]);
    Ok(())
}

// ---- concurrency ---------------------------------------------------------------------------

pub async fn concurrent_creates_of_one_name_admit_exactly_one(store: Arc<dyn Store>) -> TestResult {
    let tasks: Vec<_> = (0..20)
        .map(|_| {
            let store = store.clone();
            tokio::spawn(async move { store.create_vm(&new_vm("web"), &[]).await })
        })
        .collect();
    let (mut won, mut taken) = (0, 0);
    for t in tasks {
        match t.await.expect("task ran") {
            Ok(()) => won += 1,
            Err(StoreError::NameTaken(_)) => taken += 1,
            Err(e) => return Err(e),
        }
    }
    assert_eq!((won, taken), (1, 19));
    assert_eq!(store.list_vms().await?.len(), 1);
    assert_eq!(all_events(&*store).await?.len(), 1);
    Ok(())
}

pub async fn concurrent_creates_of_distinct_names_all_succeed(store: Arc<dyn Store>) -> TestResult {
    let tasks: Vec<_> = (0..20)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move { store.create_vm(&new_vm(&format!("vm-{i:02}")), &[]).await })
        })
        .collect();
    for t in tasks {
        t.await.expect("task ran")?;
    }
    assert_eq!(store.list_vms().await?.len(), 20);
    let seqs: Vec<u64> = all_events(&*store).await?.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, (1..=20).collect::<Vec<_>>());
    Ok(())
}

pub async fn concurrent_identical_reports_apply_once(store: Arc<dyn Store>) -> TestResult {
    let vm = create(&*store, "web").await?;
    let tasks: Vec<_> = (0..20)
        .map(|_| {
            let store = store.clone();
            tokio::spawn(async move { store.record_status(vm.id, Creating, 1, None).await })
        })
        .collect();
    let (mut applied_n, mut dup) = (0, 0);
    for t in tasks {
        match t.await.expect("task ran")? {
            StatusOutcome::Applied(_) => applied_n += 1,
            StatusOutcome::Duplicate => dup += 1,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!((applied_n, dup), (1, 19));
    assert_eq!(all_events(&*store).await?.len(), 2);
    Ok(())
}

/// Ten VMs go through their whole life at once, each step reported twice at the same moment
/// (a redelivered message racing the original): each step must apply exactly once, and the
/// event log must hold every step of every VM, in order, under unique sequence numbers.
pub async fn concurrent_lifecycles_keep_every_event_in_order(store: Arc<dyn Store>) -> TestResult {
    const LIFE: [VmState; 7] = [
        Creating, Starting, Running, Stopping, Stopped, Deleting, Deleted,
    ];
    let mut ids = Vec::new();
    for i in 0..10 {
        ids.push(create(&*store, &format!("vm-{i}")).await?.id);
    }
    let tasks: Vec<_> = ids
        .iter()
        .map(|&id| {
            let store = store.clone();
            tokio::spawn(async move {
                for s in LIFE {
                    let (a, b) = tokio::join!(
                        store.record_status(id, s, 1, None),
                        store.record_status(id, s, 1, None)
                    );
                    let mut outcomes = [a?, b?].map(|o| matches!(o, StatusOutcome::Applied(_)));
                    outcomes.sort();
                    assert_eq!(
                        outcomes,
                        [false, true],
                        "{s}: one applies, one is a duplicate"
                    );
                }
                Ok::<_, StoreError>(())
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("task ran")?;
    }
    let events = all_events(&*store).await?;
    assert_eq!(events.len(), 10 * 8, "PENDING + 7 transitions per VM");
    let seqs: HashSet<u64> = events.iter().map(|e| e.seq).collect();
    assert_eq!(seqs.len(), events.len(), "seq is unique");
    assert!(events.windows(2).all(|w| w[0].seq < w[1].seq));
    for id in ids {
        let states: Vec<VmState> = events
            .iter()
            .filter(|e| e.vm_id == id)
            .map(|e| e.state)
            .collect();
        assert_eq!(
            states,
            [Pending, Creating, Starting, Running, Stopping, Stopped, Deleting, Deleted]
        );
    }
    assert_eq!(store.list_vms().await?, vec![]);
    Ok(())
}

// ---- images --------------------------------------------------------------------------------

pub async fn images_put_get_list_delete(store: Arc<dyn Store>) -> TestResult {
    let hello = image("demo/hello:1.0", "sha256:aa");
    let busybox = image("busybox:latest", "sha256:bb");
    store.put_image(&hello).await?;
    store.put_image(&busybox).await?;
    assert_eq!(
        store.get_image("demo/hello:1.0").await?,
        Some(hello.clone())
    );
    assert_eq!(store.get_image("nope:1").await?, None);
    assert_eq!(store.list_images().await?, vec![busybox.clone(), hello]);
    assert!(store.delete_image("demo/hello:1.0").await?);
    assert!(!store.delete_image("demo/hello:1.0").await?);
    assert_eq!(store.list_images().await?, vec![busybox]);
    Ok(())
}

pub async fn put_image_replaces_by_reference(store: Arc<dyn Store>) -> TestResult {
    store
        .put_image(&image("demo/hello:1.0", "sha256:aa"))
        .await?;
    let mut newer = image("demo/hello:1.0", "sha256:cc");
    newer.host = "h2".into();
    newer.config = serde_json::json!({"Cmd": ["sh"]});
    store.put_image(&newer).await?;
    assert_eq!(store.list_images().await?, vec![newer]);
    Ok(())
}

// ---- users ---------------------------------------------------------------------------------

pub async fn users_create_get_list(store: Arc<dyn Store>) -> TestResult {
    let bob = user("bob");
    let mut alice = user("alice");
    alice.roles = vec![];
    alice.groups = vec![];
    alice.disabled = true;
    store.create_user(&bob).await?;
    store.create_user(&alice).await?;
    assert_eq!(store.get_user("bob").await?, Some(bob.clone()));
    assert_eq!(store.get_user("alice").await?, Some(alice.clone()));
    assert_eq!(store.get_user("carol").await?, None);
    assert_eq!(store.list_users().await?, vec![alice, bob]);
    Ok(())
}

pub async fn duplicate_username_is_refused_and_store_unchanged(
    store: Arc<dyn Store>,
) -> TestResult {
    let first = user("bob");
    store.create_user(&first).await?;
    let mut second = user("bob");
    second.password_hash = "other".into();
    second.roles = vec!["pitwall-admin".into()];
    match store.create_user(&second).await {
        Err(StoreError::UserTaken(name)) => assert_eq!(name, "bob"),
        other => panic!("expected UserTaken, got {other:?}"),
    }
    assert_eq!(store.list_users().await?, vec![first]);
    Ok(())
}

pub async fn set_user_password_replaces_only_the_hash(store: Arc<dyn Store>) -> TestResult {
    let bob = user("bob");
    let carol = user("carol");
    store.create_user(&bob).await?;
    store.create_user(&carol).await?;
    store.set_user_password("bob", "$argon2id$new").await?;
    let changed = store.get_user("bob").await?.expect("bob exists");
    assert_eq!(
        changed,
        UserRecord {
            password_hash: "$argon2id$new".into(),
            ..bob
        }
    );
    assert_eq!(store.get_user("carol").await?, Some(carol));
    Ok(())
}

pub async fn set_password_of_unknown_user_is_no_such_user(store: Arc<dyn Store>) -> TestResult {
    match store.set_user_password("nobody", "$argon2id$new").await {
        Err(StoreError::NoSuchUser(name)) => assert_eq!(name, "nobody"),
        other => panic!("expected NoSuchUser, got {other:?}"),
    }
    assert_eq!(store.list_users().await?, vec![]);
    Ok(())
}

pub async fn delete_user_removes_it_and_says_whether_it_existed(
    store: Arc<dyn Store>,
) -> TestResult {
    let bob = user("bob");
    let carol = user("carol");
    store.create_user(&bob).await?;
    store.create_user(&carol).await?;
    assert!(store.delete_user("bob").await?);
    assert!(!store.delete_user("bob").await?);
    assert_eq!(store.get_user("bob").await?, None);
    assert_eq!(store.list_users().await?, vec![carol]);
    // the name is free again
    store.create_user(&bob).await?;
    assert_eq!(store.get_user("bob").await?, Some(bob));
    Ok(())
}
