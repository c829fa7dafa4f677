//! What only the SQLite store has: files, pragmas, and what it reads back from damaged rows.
//! The behaviour every store shares is pinned by the suite in `tests/suite/`.

use super::*;

fn vm(name: &str) -> VmRecord {
    let spec = VmSpec::new(
        VmName::parse(name).unwrap(),
        ImageRef::parse("busybox").unwrap(),
        None,
        None,
        None,
    )
    .unwrap();
    VmRecord::new(
        VmId::new_v4(),
        spec,
        "alice",
        DesiredState::Running,
        OffsetDateTime::now_utc(),
    )
}

#[tokio::test]
async fn open_creates_missing_directory_and_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a/b/pitwall.db");
    let store = SqliteStore::open(&path).await.unwrap();
    store.close().await;
    assert!(path.is_file());
}

#[tokio::test]
async fn open_sets_wal_foreign_keys_and_busy_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("p.db")).await.unwrap();
    let mode: String = sqlx::query_scalar("PRAGMA journal_mode")
        .fetch_one(&store.pool)
        .await
        .unwrap();
    assert_eq!(mode, "wal");
    let fk: i64 = sqlx::query_scalar("PRAGMA foreign_keys")
        .fetch_one(&store.pool)
        .await
        .unwrap();
    assert_eq!(fk, 1);
    let busy: i64 = sqlx::query_scalar("PRAGMA busy_timeout")
        .fetch_one(&store.pool)
        .await
        .unwrap();
    assert_eq!(busy, 5000);
}

#[tokio::test]
async fn open_on_a_directory_fails_naming_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let err = SqliteStore::open(dir.path()).await.unwrap_err();
    assert!(matches!(err, StoreError::Open { .. }), "{err:?}");
    assert!(
        err.to_string().contains(&dir.path().display().to_string()),
        "{err}"
    );
}

#[tokio::test]
async fn in_memory_stores_are_separate() {
    let a = SqliteStore::in_memory().await.unwrap();
    let b = SqliteStore::in_memory().await.unwrap();
    a.create_vm(&vm("web"), &[]).await.unwrap();
    assert_eq!(b.list_vms().await.unwrap(), vec![]);
    b.create_vm(&vm("web"), &[]).await.unwrap();
}

#[tokio::test]
async fn events_of_an_unknown_vm_are_refused_by_the_foreign_key() {
    let store = SqliteStore::in_memory().await.unwrap();
    let mut tx = store.begin_write().await.unwrap();
    let err = insert_event(&mut tx, VmId::new_v4(), "ghost", VmState::Pending, 1, None)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("FOREIGN KEY"), "{err}");
}

async fn corrupt_after(sql: &str) -> String {
    let store = SqliteStore::in_memory().await.unwrap();
    let v = vm("web");
    store.create_vm(&v, &[]).await.unwrap();
    sqlx::query(sql).execute(&store.pool).await.unwrap();
    match store.get_vm_by_id(v.id).await {
        Err(StoreError::Corrupt(what)) => {
            assert!(what.contains(&v.id.to_string()), "names the row: {what}");
            what
        }
        other => panic!("expected Corrupt, got {other:?}"),
    }
}

#[tokio::test]
async fn unknown_state_is_corrupt_naming_row_and_column() {
    let what = corrupt_after("UPDATE vms SET state = 'HIBERNATING'").await;
    assert!(
        what.contains("column state") && what.contains("HIBERNATING"),
        "{what}"
    );
}

#[tokio::test]
async fn unknown_desired_state_is_corrupt() {
    let what = corrupt_after("UPDATE vms SET desired = 'PAUSED'").await;
    assert!(what.contains("column desired"), "{what}");
}

#[tokio::test]
async fn malformed_timestamp_is_corrupt() {
    let what = corrupt_after("UPDATE vms SET updated_at = 'yesterday'").await;
    assert!(what.contains("column updated_at"), "{what}");
}

#[tokio::test]
async fn malformed_name_is_corrupt() {
    let what = corrupt_after("UPDATE vms SET name = 'Not A Name'").await;
    assert!(what.contains("column name"), "{what}");
}

#[tokio::test]
async fn text_in_a_number_column_is_corrupt() {
    let what = corrupt_after("UPDATE vms SET vcpus = 'many'").await;
    assert!(what.contains("column vcpus"), "{what}");
}

#[tokio::test]
async fn malformed_image_config_is_corrupt() {
    let store = SqliteStore::in_memory().await.unwrap();
    sqlx::query(
        "INSERT INTO images (reference, digest, size_bytes, config, host, created_at) \
         VALUES ('busybox:latest', 'sha256:00', 1, '{not json', 'h1', \
         '2024-01-01T00:00:00.000000000Z')",
    )
    .execute(&store.pool)
    .await
    .unwrap();
    let err = store.list_images().await.unwrap_err();
    let StoreError::Corrupt(what) = err else {
        panic!("expected Corrupt, got {err:?}")
    };
    assert!(
        what.contains("images row busybox:latest, column config"),
        "{what}"
    );
}

#[test]
fn timestamps_round_trip_exactly_in_utc() {
    let t = time::macros::datetime!(2024-05-01 14:00:00.000000123 +02:00);
    let text = encode_time("t", t).unwrap();
    assert_eq!(text, "2024-05-01T12:00:00.000000123Z");
    assert_eq!(OffsetDateTime::parse(&text, &Rfc3339).unwrap(), t);
}

#[test]
fn timestamps_are_fixed_width_so_text_order_is_time_order() {
    let earlier = encode_time("t", time::macros::datetime!(2024-05-01 12:00:00.9 UTC)).unwrap();
    let later = encode_time("t", time::macros::datetime!(2024-05-01 12:00:01 UTC)).unwrap();
    assert_eq!(earlier.len(), later.len());
    assert!(earlier < later);
}

#[test]
fn years_before_0000_are_unstorable() {
    let t = time::macros::datetime!(-0001-01-01 0:00 UTC);
    assert!(matches!(
        encode_time("t", t),
        Err(StoreError::Database(sqlx::Error::Encode(_)))
    ));
}

#[tokio::test]
async fn malformed_user_roles_are_corrupt_naming_row_and_column() {
    let store = SqliteStore::in_memory().await.unwrap();
    sqlx::query(
        "INSERT INTO users VALUES ('bob', '$argon2id$x', '{\"admin\": true}', '[]', \
         '2024-01-01T00:00:00.000000000Z', 0)",
    )
    .execute(&store.pool)
    .await
    .unwrap();
    let err = store.get_user("bob").await.unwrap_err();
    let StoreError::Corrupt(what) = err else {
        panic!("expected Corrupt, got {err:?}")
    };
    assert!(what.contains("users row bob, column roles"), "{what}");
}

#[tokio::test]
async fn user_disabled_flag_other_than_0_or_1_is_refused_by_the_schema() {
    let store = SqliteStore::in_memory().await.unwrap();
    let err = sqlx::query(
        "INSERT INTO users VALUES ('bob', '$argon2id$x', '[]', '[]', \
         '2024-01-01T00:00:00.000000000Z', 2)",
    )
    .execute(&store.pool)
    .await
    .unwrap_err();
    assert!(err.to_string().contains("CHECK"), "{err}");
}

#[tokio::test]
async fn policy_json_with_an_unknown_field_is_corrupt_naming_row_and_column() {
    let store = SqliteStore::in_memory().await.unwrap();
    sqlx::query(
        "INSERT INTO policies VALUES ('user:bob', '{\"max_vm\": 1}', \
         '2024-01-01T00:00:00.000000000Z')",
    )
    .execute(&store.pool)
    .await
    .unwrap();
    let err = store.get_policy("user:bob").await.unwrap_err();
    let StoreError::Corrupt(what) = err else {
        panic!("expected Corrupt, got {err:?}")
    };
    assert!(
        what.contains("policies row user:bob, column policy"),
        "{what}"
    );
}

#[tokio::test]
async fn malformed_delegation_revocation_time_is_corrupt() {
    let store = SqliteStore::in_memory().await.unwrap();
    let id = uuid::Uuid::new_v4();
    sqlx::query(
        "INSERT INTO delegations VALUES (?, '/user:alice/', 'user:bob', '{}', 'alice', \
         '2024-01-01T00:00:00.000000000Z', 'soon')",
    )
    .bind(id.to_string())
    .execute(&store.pool)
    .await
    .unwrap();
    let err = store.get_delegation(id).await.unwrap_err();
    let StoreError::Corrupt(what) = err else {
        panic!("expected Corrupt, got {err:?}")
    };
    assert!(
        what.contains(&format!("delegations row {id}, column revoked_at")),
        "{what}"
    );
}

#[tokio::test]
async fn audit_status_beyond_u16_is_refused_by_the_schema() {
    let store = SqliteStore::in_memory().await.unwrap();
    let err = sqlx::query(
        "INSERT INTO audit (at, actor, via, source, method, path, action, status, outcome) \
         VALUES ('2024-01-01T00:00:00.000000000Z', 'a', '-', 'x', 'GET', '/', '', 70000, 'ok')",
    )
    .execute(&store.pool)
    .await
    .unwrap_err();
    assert!(err.to_string().contains("CHECK"), "{err}");
}
