//! The store suite against [`SqliteStore`], in memory and on a file, plus what only a file
//! store has: data survives closing and reopening it.

#[macro_use]
mod suite;

use std::sync::Arc;

use pitwall_core::{DesiredState, VmState};
use pitwall_store::sqlite::SqliteStore;
use pitwall_store::{StatusOutcome, Store, StoreError};
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
    store.create_vm(&vm).await?;
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
    assert_eq!(store.get_vm("web").await?, Some(creating));
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
        store.create_vm(&new_vm("web")).await,
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
    a.create_vm(&vm).await?;
    assert_eq!(b.get_vm("web").await?, Some(vm));
    assert!(matches!(
        b.create_vm(&new_vm("web")).await,
        Err(StoreError::NameTaken(_))
    ));
    Ok(())
}
