//! Who a VM belongs to: names unique per owner, the group and charge path it carries, and the
//! owner and group its events and images show.

use super::*;

async fn create_owned(store: &dyn Store, name: &str, owner: &str) -> Result<VmRecord, StoreError> {
    let vm = owned_vm(name, owner);
    store.create_vm(&vm, &[]).await?;
    Ok(vm)
}

fn names_and_owners(vms: &[VmRecord]) -> Vec<(String, String)> {
    vms.iter()
        .map(|v| (v.spec.name.to_string(), v.owner.clone()))
        .collect()
}

pub async fn group_and_charge_round_trip(store: Arc<dyn Store>) -> TestResult {
    let mut vm = owned_vm("web", "alice");
    vm.group = Some("ops".into());
    vm.charge = "/user:alice/d:0193a1b2-0000-7000-8000-000000000001/".into();
    store.create_vm(&vm, &[]).await?;
    let plain = create_owned(&*store, "db", "alice").await?;
    assert_eq!(store.get_vm_by_id(vm.id).await?, Some(vm.clone()));
    assert_eq!(store.vms_named("web").await?, vec![vm.clone()]);
    let held = store.get_vm_by_id(plain.id).await?.expect("exists");
    assert_eq!((held.group, held.charge.as_str()), (None, "/user:alice/"));
    // every later change keeps them
    let stopped = store.set_desired(vm.id, DesiredState::Stopped).await?;
    assert_eq!((stopped.group, stopped.charge), (vm.group, vm.charge));
    Ok(())
}

pub async fn same_name_for_two_owners_is_allowed(store: Arc<dyn Store>) -> TestResult {
    let alice = create_owned(&*store, "web", "alice").await?;
    let bob = create_owned(&*store, "web", "bob").await?;
    assert_eq!(store.list_vms().await?, vec![alice.clone(), bob.clone()]);
    assert_eq!(store.vms_named("web").await?, vec![alice, bob]);
    assert_eq!(all_events(&*store).await?.len(), 2);
    Ok(())
}

pub async fn same_name_for_the_same_owner_is_refused(store: Arc<dyn Store>) -> TestResult {
    let first = create_owned(&*store, "web", "bob").await?;
    let second = owned_vm("web", "bob");
    match store.create_vm(&second, &[]).await {
        Err(StoreError::NameTaken(name)) => assert_eq!(name, "web"),
        other => panic!("expected NameTaken, got {other:?}"),
    }
    assert_eq!(store.vms_named("web").await?, vec![first]);
    assert_eq!(store.get_vm_by_id(second.id).await?, None);
    assert_eq!(all_events(&*store).await?.len(), 1);
    // another owner still may
    create_owned(&*store, "web", "alice").await?;
    Ok(())
}

pub async fn name_is_free_again_for_its_owner_after_deleted(store: Arc<dyn Store>) -> TestResult {
    let old = create_owned(&*store, "web", "bob").await?;
    let alice = create_owned(&*store, "web", "alice").await?;
    drive(&*store, old.id, 1, &[Deleting, Deleted]).await?;
    let new = create_owned(&*store, "web", "bob").await?;
    assert_eq!(store.vms_named("web").await?, vec![alice.clone(), new]);
    // alice's is untouched and still holds her name
    assert!(matches!(
        store.create_vm(&owned_vm("web", "alice"), &[]).await,
        Err(StoreError::NameTaken(_))
    ));
    Ok(())
}

pub async fn vms_named_is_ordered_by_owner_and_skips_deleted(store: Arc<dyn Store>) -> TestResult {
    for owner in ["carol", "alice", "bob"] {
        create_owned(&*store, "web", owner).await?;
    }
    let gone = create_owned(&*store, "web", "dave").await?;
    create_owned(&*store, "db", "alice").await?;
    drive(&*store, gone.id, 1, &[Deleting, Deleted]).await?;
    let owners: Vec<String> = store
        .vms_named("web")
        .await?
        .into_iter()
        .map(|v| v.owner)
        .collect();
    assert_eq!(owners, ["alice", "bob", "carol"]);
    assert_eq!(store.vms_named("db").await?.len(), 1);
    Ok(())
}

pub async fn list_is_ordered_by_name_then_owner(store: Arc<dyn Store>) -> TestResult {
    for (name, owner) in [
        ("web", "bob"),
        ("db", "carol"),
        ("web", "alice"),
        ("db", "alice"),
    ] {
        create_owned(&*store, name, owner).await?;
    }
    let listed = names_and_owners(&store.list_vms().await?);
    let expected = [
        ("db", "alice"),
        ("db", "carol"),
        ("web", "alice"),
        ("web", "bob"),
    ]
    .map(|(n, o)| (n.to_string(), o.to_string()));
    assert_eq!(listed, expected);
    Ok(())
}

pub async fn events_carry_the_owner_and_group_of_their_vm(store: Arc<dyn Store>) -> TestResult {
    let alice = create_owned(&*store, "web", "alice").await?;
    let mut shared = owned_vm("web", "bob");
    shared.group = Some("ops".into());
    store.create_vm(&shared, &[]).await?;
    drive(&*store, shared.id, 1, &[Creating]).await?;
    drive(&*store, alice.id, 1, &[Creating]).await?;
    let seen: Vec<(VmId, String, Option<String>)> = all_events(&*store)
        .await?
        .into_iter()
        .map(|e| (e.vm_id, e.owner, e.group))
        .collect();
    let ops = Some("ops".to_string());
    assert_eq!(
        seen,
        [
            (alice.id, "alice".to_string(), None),
            (shared.id, "bob".to_string(), ops.clone()),
            (shared.id, "bob".to_string(), ops),
            (alice.id, "alice".to_string(), None),
        ]
    );
    Ok(())
}

pub async fn images_keep_their_owner(store: Arc<dyn Store>) -> TestResult {
    let mut hello = image("demo/hello:1.0", "sha256:aa");
    hello.owner = "bob".into();
    store.put_image(&hello).await?;
    assert_eq!(
        store.get_image("demo/hello:1.0").await?.map(|i| i.owner),
        Some("bob".to_string())
    );
    // replacing it replaces the owner too
    let mut newer = image("demo/hello:1.0", "sha256:bb");
    newer.owner = "admin".into();
    store.put_image(&newer).await?;
    assert_eq!(store.list_images().await?, vec![newer]);
    Ok(())
}
