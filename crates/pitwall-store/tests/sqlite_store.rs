//! The store suite against [`SqliteStore`], in memory and on a file, plus what only a file
//! store has: data survives closing and reopening it.

#[macro_use]
mod suite;

use std::path::Path;
use std::sync::Arc;

use pitwall_core::{DesiredState, VmId, VmState};
use pitwall_store::sqlite::SqliteStore;
use pitwall_store::{StatusOutcome, Store, StoreError};
use sqlx::migrate::Migrator;
use sqlx::sqlite::{SqliteConnectOptions, SqlitePoolOptions};
use suite::{new_vm, Fixture};

async fn in_memory() -> Fixture {
    let store = SqliteStore::in_memory().await.expect("in-memory store");
    Fixture {
        store: Arc::new(store),
        keep: Box::new(()),
    }
}

async fn on_file() -> Fixture {
    let dir = tempfile::tempdir().expect("temporary directory");
    let store = SqliteStore::open(&dir.path().join("pitwall.db"))
        .await
        .expect("file store");
    Fixture {
        store: Arc::new(store),
        keep: Box::new(dir),
    }
}

mod memory {
    use super::*;
    store_suite!(in_memory);
}

mod file {
    use super::*;
    store_suite!(on_file);
}

#[tokio::test]
async fn reopened_file_store_keeps_vms_events_and_images() -> Result<(), StoreError> {
    let dir = tempfile::tempdir().expect("temporary directory");
    let path = dir.path().join("pitwall.db");
    let store = SqliteStore::open(&path).await?;
    let vm = new_vm("web");
    store.create_vm(&vm, &[]).await?;
    store.set_desired(vm.id, DesiredState::Stopped).await?;
    let StatusOutcome::Applied(creating) = store
        .record_status(vm.id, VmState::Creating, 2, None)
        .await?
    else {
        panic!("CREATING applies");
    };
    let events = store.events_since(0, 100).await?;
    store.close().await;
    drop(store);

    let store = SqliteStore::open(&path).await?;
    assert_eq!(store.vms_named("web").await?, vec![creating]);
    assert_eq!(store.events_since(0, 100).await?, events);
    // the sequence carries on where it stopped, and the name is still taken
    store
        .record_status(vm.id, VmState::Stopped, 2, None)
        .await?;
    assert_eq!(
        store.events_since(2, 100).await?.first().map(|e| e.seq),
        Some(3)
    );
    assert!(matches!(
        store.create_vm(&new_vm("web"), &[]).await,
        Err(StoreError::NameTaken(_))
    ));
    Ok(())
}

#[tokio::test]
async fn two_handles_on_one_file_see_each_other() -> Result<(), StoreError> {
    let dir = tempfile::tempdir().expect("temporary directory");
    let path = dir.path().join("pitwall.db");
    let a = SqliteStore::open(&path).await?;
    let b = SqliteStore::open(&path).await?;
    let vm = new_vm("web");
    a.create_vm(&vm, &[]).await?;
    assert_eq!(b.vms_named("web").await?, vec![vm]);
    assert!(matches!(
        b.create_vm(&new_vm("web"), &[]).await,
        Err(StoreError::NameTaken(_))
    ));
    Ok(())
}

/// A database written by the previous schema (migrations 0001 and 0002, applied by sqlx as an
/// older pitwalld did) opens with its rows upgraded: each VM charged to its owner, each image
/// owned by `admin`, names unique per owner.
#[tokio::test]
async fn opening_a_schema_2_database_upgrades_its_rows() -> Result<(), StoreError> {
    let dir = tempfile::tempdir().expect("temporary directory");
    let old_migrations = dir.path().join("migrations");
    std::fs::create_dir(&old_migrations).expect("migrations directory");
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations");
    for file in ["0001_init.sql", "0002_users.sql"] {
        std::fs::copy(shipped.join(file), old_migrations.join(file)).expect("copy migration");
    }
    let path = dir.path().join("pitwall.db");
    let options = SqliteConnectOptions::new()
        .filename(&path)
        .create_if_missing(true);
    let pool = SqlitePoolOptions::new().connect_with(options).await?;
    Migrator::new(old_migrations.as_path())
        .await?
        .run(&pool)
        .await?;
    let id = VmId::new_v4();
    sqlx::query(
        "INSERT INTO vms (id, name, owner, image, vcpus, memory_mib, disk_mib, host, desired, \
         generation, state, state_generation, reason, created_at, updated_at) VALUES \
         (?, 'web', 'bob', 'demo/hello:1.0', 2, 512, 2048, 'h1', 'RUNNING', 1, 'RUNNING', 1, \
         NULL, '2025-01-01T00:00:00.000000000Z', '2025-01-01T00:00:00.000000000Z')",
    )
    .bind(id.to_string())
    .execute(&pool)
    .await?;
    sqlx::query(
        "INSERT INTO events (vm_id, vm_name, state, generation, reason, at) VALUES \
         (?, 'web', 'PENDING', 1, NULL, '2025-01-01T00:00:00.000000000Z')",
    )
    .bind(id.to_string())
    .execute(&pool)
    .await?;
    sqlx::query(
        "INSERT INTO images (reference, digest, size_bytes, config, host, created_at) VALUES \
         ('demo/hello:1.0', 'sha256:aa', 1, '{}', 'h1', '2025-01-01T00:00:00.000000000Z')",
    )
    .execute(&pool)
    .await?;
    pool.close().await;

    let store = SqliteStore::open(&path).await?;
    let vm = store.get_vm_by_id(id).await?.expect("VM kept");
    assert_eq!(
        (vm.owner.as_str(), vm.charge.as_str(), vm.group.as_deref()),
        ("bob", "/user:bob/", None)
    );
    assert_eq!(store.usage("/user:bob/").await?.vms, 1);
    let events = store.events_since(0, 10).await?;
    assert_eq!(
        events
            .iter()
            .map(|e| (e.vm_id, e.owner.as_str()))
            .collect::<Vec<_>>(),
        [(id, "bob")]
    );
    let image = store
        .get_image("demo/hello:1.0")
        .await?
        .expect("image kept");
    assert_eq!(image.owner, "admin");
    // the name is now taken only for bob
    store.create_vm(&new_vm("web"), &[]).await?;
    let mut bobs = new_vm("web");
    bobs.owner = "bob".into();
    assert!(matches!(
        store.create_vm(&bobs, &[]).await,
        Err(StoreError::NameTaken(_))
    ));
    Ok(())
}
