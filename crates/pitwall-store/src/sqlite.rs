//! The SQLite store: the embedded default of `pitwalld all` (one database file in WAL mode)
//! and, in memory, the store of unit tests.
//!
//! Queries are built at run time (`sqlx::query` with binds), not checked at compile time: there
//! is no database at build time. The schema lives in `migrations/` (embedded with
//! `sqlx::migrate!`, applied on open) and is plain SQL that fits PostgreSQL too; see the
//! comments in `0001_init.sql` for the conventions (TEXT UUIDs, BIGINT integers, TEXT RFC 3339
//! UTC timestamps with nine fraction digits).
//!
//! Concurrency: every read-then-write runs in a transaction opened with `BEGIN IMMEDIATE`, which
//! takes SQLite's write lock up front. A deferred transaction would read first and try to
//! upgrade to a write lock later, and two of those can deadlock (`SQLITE_BUSY` without waiting
//! for the busy timeout). Writers therefore queue on the lock (for up to [`BUSY_TIMEOUT`]) and
//! see each other's committed work; readers are never blocked (WAL). A PostgreSQL store gets the
//! same effect with `SELECT … FOR UPDATE` in its transactions. Quotas rely on it: `create_vm`
//! sums the usage under each quota's charge prefix and inserts in one such transaction (a
//! PostgreSQL store needs a lock per charge root, e.g. a transaction-level advisory lock, as
//! `FOR UPDATE` cannot lock the rows that do not exist yet).
//!
//! Submodules: `identity` (policies, delegations, revoked certificates, audit log) and
//! `decode` (reading rows back, reporting corrupt values).

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use pitwall_core::{DesiredState, ImageRef, Policy, Usage, VmId, VmName, VmSpec, VmState};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow,
    SqliteSynchronous,
};
use sqlx::{Row, Sqlite, Transaction};
use time::format_description::well_known::Rfc3339;
use time::format_description::BorrowedFormatItem;
use time::{OffsetDateTime, UtcOffset};

use crate::{
    judge_status, kept_reason, AuditRecord, DelegationRecord, EventRecord, ImageRecord, QuotaCheck,
    RevokedCertificate, StatusOutcome, Store, StoreError, UserRecord, VmGrant, VmRecord,
};

mod decode;
mod grants;
mod identity;

use decode::{decode_event, decode_image, decode_user, decode_vm, Cells};

/// How long a writer waits for SQLite's write lock before giving up with "database is locked".
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Connections of a file store's pool. Writers take turns on one lock anyway; the rest serve
/// concurrent readers.
const MAX_CONNECTIONS: u32 = 8;

/// Opens a transaction holding the write lock from its first statement (see the module doc).
const BEGIN_WRITE: &str = "BEGIN IMMEDIATE";

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// Timestamps as stored: RFC 3339, UTC, fixed width, so text order is time order.
const TIMESTAMP: &[BorrowedFormatItem<'static>] = time::macros::format_description!(
    "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:9]Z"
);

macro_rules! vm_columns {
    () => {
        "id, name, owner, vm_group, charge, image, vcpus, memory_mib, disk_mib, host, desired, \
         generation, state, state_generation, reason, created_at, updated_at, run_overrides, \
         exposed_ports, address, ssh_host_key"
    };
}

macro_rules! image_columns {
    () => {
        "reference, digest, size_bytes, config, host, owner, created_at, details"
    };
}

const SELECT_VM_BY_ID: &str = concat!("SELECT ", vm_columns!(), " FROM vms WHERE id = ?");
const SELECT_LIVE_VMS_BY_NAME: &str = concat!(
    "SELECT ",
    vm_columns!(),
    " FROM vms WHERE name = ? AND state <> 'DELETED' ORDER BY owner"
);
const LIST_LIVE_VMS: &str = concat!(
    "SELECT ",
    vm_columns!(),
    " FROM vms WHERE state <> 'DELETED' ORDER BY name, owner"
);
const LIVE_NAME_EXISTS: &str =
    "SELECT 1 FROM vms WHERE owner = ? AND name = ? AND state <> 'DELETED'";
const INSERT_VM: &str = concat!(
    "INSERT INTO vms (",
    vm_columns!(),
    ") VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
);
/// What the live VMs charged under a prefix hold. The prefix is bound twice; `substr` rather
/// than `LIKE` so that `_` and `%` in names match only themselves. The casts keep PostgreSQL's
/// SUM (NUMERIC over BIGINT) a BIGINT.
const USAGE_UNDER: &str = "SELECT COUNT(*) AS vms, \
     CAST(COALESCE(SUM(vcpus), 0) AS BIGINT) AS vcpus, \
     CAST(COALESCE(SUM(memory_mib), 0) AS BIGINT) AS memory_mib, \
     CAST(COALESCE(SUM(disk_mib), 0) AS BIGINT) AS disk_mib \
     FROM vms WHERE state <> 'DELETED' AND substr(charge, 1, length(?)) = ?";
const SET_DESIRED: &str = concat!(
    "UPDATE vms SET desired = ?, generation = generation + 1, updated_at = ? WHERE id = ? \
     RETURNING ",
    vm_columns!()
);
const SET_HOST: &str = "UPDATE vms SET host = ?, updated_at = ? WHERE id = ?";
const SET_ADDRESS: &str = "UPDATE vms SET address = ?, updated_at = ? WHERE id = ?";
const SET_SSH_HOST_KEY: &str = "UPDATE vms SET ssh_host_key = ?, updated_at = ? WHERE id = ?";
const APPLY_STATUS: &str = concat!(
    "UPDATE vms SET state = ?, state_generation = ?, reason = ?, updated_at = ? WHERE id = ? \
     RETURNING ",
    vm_columns!()
);
const INSERT_EVENT: &str =
    "INSERT INTO events (vm_id, vm_name, state, generation, reason, at) VALUES (?, ?, ?, ?, ?, ?)";
/// Events with the owner and group of their VM (read from the VM, not kept per event). A left
/// join, so that an event without its VM reads as corrupt rather than vanishing.
const EVENTS_SINCE: &str = "SELECT e.seq, e.vm_id, e.vm_name, e.state, e.generation, e.reason, \
     e.at, v.owner, v.vm_group FROM events e LEFT JOIN vms v ON v.id = e.vm_id \
     WHERE e.seq > ? ORDER BY e.seq LIMIT ?";
const PUT_IMAGE: &str = concat!(
    "INSERT INTO images (",
    image_columns!(),
    ") VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (reference) DO UPDATE SET \
     digest = excluded.digest, size_bytes = excluded.size_bytes, config = excluded.config, \
     host = excluded.host, owner = excluded.owner, created_at = excluded.created_at, \
     details = excluded.details"
);
const GET_IMAGE: &str = concat!(
    "SELECT ",
    image_columns!(),
    " FROM images WHERE reference = ?"
);
const LIST_IMAGES: &str = concat!(
    "SELECT ",
    image_columns!(),
    " FROM images ORDER BY reference"
);
const DELETE_IMAGE: &str = "DELETE FROM images WHERE reference = ?";

macro_rules! user_columns {
    () => {
        "username, password_hash, roles, groups, created_at, disabled"
    };
}

const INSERT_USER: &str = concat!(
    "INSERT INTO users (",
    user_columns!(),
    ") VALUES (?, ?, ?, ?, ?, ?)"
);
const GET_USER: &str = concat!("SELECT ", user_columns!(), " FROM users WHERE username = ?");
const LIST_USERS: &str = concat!("SELECT ", user_columns!(), " FROM users ORDER BY username");
const SET_USER_PASSWORD: &str = "UPDATE users SET password_hash = ? WHERE username = ?";
const DELETE_USER: &str = "DELETE FROM users WHERE username = ?";

/// The [`Store`] on SQLite. Cheap to clone (a handle on one connection pool).
#[derive(Debug, Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
}

impl SqliteStore {
    /// Open (creating it, and its directory, when missing) the database file at `path`, in WAL
    /// mode with full fsync on commit, foreign keys enforced and a busy timeout of
    /// [`BUSY_TIMEOUT`], and bring its schema up to date.
    pub async fn open(path: &Path) -> Result<Self, StoreError> {
        let open_error = |source| StoreError::Open {
            path: path.to_path_buf(),
            source,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            tokio::fs::create_dir_all(dir)
                .await
                .map_err(|e| open_error(sqlx::Error::Io(e)))?;
        }
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(BUSY_TIMEOUT)
            .foreign_keys(true);
        let pool = SqlitePoolOptions::new()
            .max_connections(MAX_CONNECTIONS)
            .connect_with(options)
            .await
            .map_err(open_error)?;
        let store = Self::migrated(pool).await?;
        tracing::info!(path = %path.display(), "store opened");
        Ok(store)
    }

    /// A fresh, empty store in memory, private to this value and its clones; gone when the last
    /// clone is dropped.
    ///
    /// It runs on a single connection that is never recycled: each SQLite connection to
    /// `:memory:` would otherwise open a database of its own (sqlx names it for a shared cache,
    /// but shared-cache locking fails fast with `SQLITE_LOCKED` rather than waiting). Callers
    /// take turns on that connection, which also serialises writers.
    pub async fn in_memory() -> Result<Self, StoreError> {
        let options = SqliteConnectOptions::from_str("sqlite::memory:")?.foreign_keys(true);
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .min_connections(1)
            .idle_timeout(None)
            .max_lifetime(None)
            .connect_with(options)
            .await?;
        Self::migrated(pool).await
    }

    /// Close every connection, waiting for those in use to be returned (and, for a file, the
    /// WAL to be checkpointed). Calls made afterwards fail.
    pub async fn close(&self) {
        self.pool.close().await;
    }

    async fn migrated(pool: SqlitePool) -> Result<Self, StoreError> {
        MIGRATOR.run(&pool).await?;
        Ok(Self { pool })
    }

    async fn begin_write(&self) -> Result<Transaction<'static, Sqlite>, StoreError> {
        Ok(self.pool.begin_with(BEGIN_WRITE).await?)
    }

    /// Runs `sql` (`UPDATE vms SET <column> = ?, updated_at = ? WHERE id = ?`) for one VM;
    /// [`StoreError::NoSuchVm`] when there is none.
    async fn set_vm_column(
        &self,
        sql: &'static str,
        id: VmId,
        value: Option<&str>,
    ) -> Result<(), StoreError> {
        let done = sqlx::query(sql)
            .bind(value)
            .bind(now()?)
            .bind(id.to_string())
            .execute(&self.pool)
            .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NoSuchVm(id.to_string()));
        }
        Ok(())
    }
}

/// Semantics, for every implementation of [`Store`] (the suite in `tests/suite/` pins them):
///
/// - `create_vm` checks the quotas in order, then inserts the VM as PENDING at generation 1
///   with `state_generation` 0 and no reason, and appends its PENDING event, all in one write
///   transaction (`BEGIN IMMEDIATE`), so concurrent creates are checked one after the other
///   and can never exceed a quota together. A check fails when the live VMs charged under its
///   prefix plus the new one exceed its policy (`Policy::admits`): [`StoreError::QuotaExceeded`]
///   with `"<label>: <what is exceeded>"`, nothing changed. The quotas are checked before the
///   name. A live (not DELETED) VM of the same owner and name makes it fail with
///   [`StoreError::NameTaken`] and change nothing (the partial unique index
///   `vms_live_owner_name` decides); other owners' VMs of that name do not matter.
/// - `vms_named` (ordered by owner), `list_vms` (ordered by name, then owner) and `usage` see
///   only VMs that are not DELETED: a deleted VM's name is free for a new VM of its owner, and
///   it no longer counts against any quota. `get_vm_by_id` sees every VM, DELETED included.
/// - `usage(prefix)` sums the live VMs whose charge path starts with `prefix`, compared
///   character by character (`_` and `%` are not wildcards).
/// - `set_desired` sets the desired state and bumps the generation in one statement; `set_host`
///   sets the host. Both fail with [`StoreError::NoSuchVm`] for an unknown id.
/// - `record_status` reads the VM and decides in one write transaction, so concurrent reports
///   are judged one after the other: a generation older than `state_generation` is
///   [`StatusOutcome::Stale`]; the held state at the held generation is
///   [`StatusOutcome::Duplicate`]; the held state at a newer generation is applied; another
///   state is applied only when `VmState::can_transition_to` allows it, else Stale naming
///   both states. Applying sets state, `state_generation` (the reported one, never lower),
///   reason (kept for FAILED, STOPPED and LOST only), `updated_at`, and appends an event. Nothing
///   changes when refused.
/// - `events_since` returns events with `seq > after` in `seq` order, at most `limit`; `seq`
///   starts at 1 and grows with every event, in commit order. Owner and group are the VM's
///   as held now (not kept per event).
/// - Images: `put_image` inserts or replaces by reference, `list_images` orders by reference,
///   `delete_image` says whether the image existed.
/// - Users: `create_user` fails with [`StoreError::UserTaken`] when the username exists (the
///   primary key decides); `list_users` orders by username; `set_user_password` fails with
///   [`StoreError::NoSuchUser`] for an unknown user; `delete_user` says whether it existed.
///   Roles and groups are stored as JSON arrays.
/// - Policies: `put_policy` inserts or replaces by holder, `list_policies` orders by holder,
///   `delete_policy` says whether it existed. Policies are stored as JSON.
/// - Delegations: `list_delegations` orders by `created_at`, then id; `revoke_delegation` sets
///   `revoked_at` only when unset (the first revocation's time stays) and returns the record,
///   or fails with [`StoreError::NoSuchDelegation`]. Creating one with an id that exists is a
///   [`StoreError::Database`] error (ids are fresh UUIDs: a caller's bug).
/// - Revoked certificates: `revoke_certificate` keeps the first record of a serial;
///   `revoked_among` returns the revoked one that comes first in the slice;
///   `list_revoked_certificates` orders by `revoked_at`, then serial.
/// - Audit: `append_audit` assigns `seq` like events (from 1, in commit order) and returns it;
///   `audit_since` is like `events_since`, for one actor when given.
/// - A stored value that does not decode (an unknown state, a malformed id, name, image
///   reference, timestamp or JSON, a negative count) is [`StoreError::Corrupt`] naming the table,
///   row and column.
#[async_trait]
impl Store for SqliteStore {
    async fn create_vm(&self, vm: &VmRecord, quotas: &[QuotaCheck]) -> Result<(), StoreError> {
        let name = vm.spec.name.as_str();
        let created_at = encode_time("created_at", vm.created_at)?;
        let updated_at = encode_time("updated_at", vm.updated_at)?;
        let run_overrides = (!vm.spec.run.is_empty())
            .then(|| encode_json("run_overrides", &vm.spec.run))
            .transpose()?;
        let exposed_ports = (!vm.exposed_ports.is_empty())
            .then(|| encode_strings("exposed_ports", &vm.exposed_ports))
            .transpose()?;
        let mut tx = self.begin_write().await?;
        // Under the write lock: no other create can commit between these reads and the insert.
        let wanted = Usage::of(&vm.spec);
        for check in quotas {
            let used = usage_under(&mut tx, &check.prefix).await?;
            if let Err(over) = check.policy.admits(used, wanted) {
                tx.rollback().await?;
                tracing::debug!(vm = name, owner = %vm.owner, quota = %check.label, %over, "create refused: over quota");
                return Err(StoreError::QuotaExceeded(format!(
                    "{}: {over}",
                    check.label
                )));
            }
        }
        let inserted = sqlx::query(INSERT_VM)
            .bind(vm.id.to_string())
            .bind(name)
            .bind(&vm.owner)
            .bind(vm.group.as_deref())
            .bind(&vm.charge)
            .bind(vm.spec.image.to_string())
            .bind(i64::from(vm.spec.vcpus))
            .bind(i64::from(vm.spec.memory_mib))
            .bind(i64::from(vm.spec.disk_mib))
            .bind(vm.host.as_deref())
            .bind(vm.desired.as_str())
            .bind(1_i64)
            .bind(VmState::Pending.as_str())
            .bind(0_i64)
            .bind(None::<&str>)
            .bind(&created_at)
            .bind(&updated_at)
            .bind(run_overrides.as_deref())
            .bind(exposed_ports.as_deref())
            .bind(vm.address.as_deref())
            .bind(vm.ssh_host_key.as_deref())
            .execute(&mut *tx)
            .await;
        if let Err(e) = inserted {
            // A unique violation is either the live name or (a caller's bug) a reused id.
            if is_unique_violation(&e) {
                let live = sqlx::query(LIVE_NAME_EXISTS)
                    .bind(&vm.owner)
                    .bind(name)
                    .fetch_optional(&mut *tx)
                    .await?;
                tx.rollback().await?;
                if live.is_some() {
                    tracing::debug!(vm = name, owner = %vm.owner, "create refused: name taken");
                    return Err(StoreError::NameTaken(name.to_string()));
                }
            }
            return Err(e.into());
        }
        insert_event(&mut tx, vm.id, name, VmState::Pending, 1, None).await?;
        tx.commit().await?;
        tracing::debug!(vm_id = %vm.id, vm = name, owner = %vm.owner, charge = %vm.charge, "VM created");
        Ok(())
    }

    async fn vms_named(&self, name: &str) -> Result<Vec<VmRecord>, StoreError> {
        let rows = sqlx::query(SELECT_LIVE_VMS_BY_NAME)
            .bind(name)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(decode_vm).collect()
    }

    async fn usage(&self, prefix: &str) -> Result<Usage, StoreError> {
        let mut conn = self.pool.acquire().await?;
        usage_under(&mut conn, prefix).await
    }

    async fn get_vm_by_id(&self, id: VmId) -> Result<Option<VmRecord>, StoreError> {
        let row = sqlx::query(SELECT_VM_BY_ID)
            .bind(id.to_string())
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(decode_vm).transpose()
    }

    async fn list_vms(&self) -> Result<Vec<VmRecord>, StoreError> {
        let rows = sqlx::query(LIST_LIVE_VMS).fetch_all(&self.pool).await?;
        rows.iter().map(decode_vm).collect()
    }

    async fn set_desired(&self, id: VmId, desired: DesiredState) -> Result<VmRecord, StoreError> {
        let row = sqlx::query(SET_DESIRED)
            .bind(desired.as_str())
            .bind(now()?)
            .bind(id.to_string())
            .fetch_optional(&self.pool)
            .await?
            .ok_or_else(|| StoreError::NoSuchVm(id.to_string()))?;
        let vm = decode_vm(&row)?;
        tracing::debug!(vm_id = %id, %desired, generation = vm.generation, "desired state set");
        Ok(vm)
    }

    async fn set_host(&self, id: VmId, host: &str) -> Result<(), StoreError> {
        self.set_vm_column(SET_HOST, id, Some(host)).await?;
        tracing::debug!(vm_id = %id, host, "VM placed");
        Ok(())
    }

    async fn set_ssh_host_key(&self, id: VmId, key: Option<&str>) -> Result<(), StoreError> {
        self.set_vm_column(SET_SSH_HOST_KEY, id, key).await?;
        tracing::debug!(vm_id = %id, key, "VM SSH host key recorded");
        Ok(())
    }

    async fn set_address(&self, id: VmId, address: Option<&str>) -> Result<(), StoreError> {
        self.set_vm_column(SET_ADDRESS, id, address).await?;
        tracing::debug!(vm_id = %id, address, "VM address recorded");
        Ok(())
    }

    async fn record_status(
        &self,
        id: VmId,
        state: VmState,
        generation: u64,
        reason: Option<&str>,
    ) -> Result<StatusOutcome, StoreError> {
        let mut tx = self.begin_write().await?;
        let row = sqlx::query(SELECT_VM_BY_ID)
            .bind(id.to_string())
            .fetch_optional(&mut *tx)
            .await?;
        let Some(row) = row else {
            tx.rollback().await?;
            return Err(StoreError::NoSuchVm(id.to_string()));
        };
        let current = decode_vm(&row)?;
        if let Some(refused) = judge_status(&current, state, generation) {
            tx.rollback().await?;
            tracing::debug!(vm_id = %id, %state, generation, outcome = ?refused, "status not applied");
            return Ok(refused);
        }
        // judge_status refuses generations beyond i64::MAX
        let stored_generation = to_bigint("generation", generation)?;
        let reason = kept_reason(state, reason);
        let row = sqlx::query(APPLY_STATUS)
            .bind(state.as_str())
            .bind(stored_generation)
            .bind(reason)
            .bind(now()?)
            .bind(id.to_string())
            .fetch_one(&mut *tx)
            .await?;
        let updated = decode_vm(&row)?;
        insert_event(
            &mut tx,
            id,
            updated.spec.name.as_str(),
            state,
            stored_generation,
            reason,
        )
        .await?;
        tx.commit().await?;
        tracing::debug!(
            vm_id = %id, vm = %updated.spec.name, from = %current.state, to = %state, generation,
            "VM state recorded"
        );
        Ok(StatusOutcome::Applied(updated))
    }

    async fn events_since(&self, after: u64, limit: u32) -> Result<Vec<EventRecord>, StoreError> {
        // every stored seq fits an i64, so nothing lies after a larger `after`
        let after = i64::try_from(after).unwrap_or(i64::MAX);
        let rows = sqlx::query(EVENTS_SINCE)
            .bind(after)
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(decode_event).collect()
    }

    async fn put_image(&self, image: &ImageRecord) -> Result<(), StoreError> {
        sqlx::query(PUT_IMAGE)
            .bind(&image.reference)
            .bind(&image.digest)
            .bind(to_bigint("size_bytes", image.size_bytes)?)
            .bind(image.config.to_string())
            .bind(&image.host)
            .bind(&image.owner)
            .bind(encode_time("created_at", image.created_at)?)
            .bind((!image.details.is_null()).then(|| image.details.to_string()))
            .execute(&self.pool)
            .await?;
        tracing::debug!(image = %image.reference, digest = %image.digest, "image registered");
        Ok(())
    }

    async fn get_image(&self, reference: &str) -> Result<Option<ImageRecord>, StoreError> {
        let row = sqlx::query(GET_IMAGE)
            .bind(reference)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(decode_image).transpose()
    }

    async fn list_images(&self) -> Result<Vec<ImageRecord>, StoreError> {
        let rows = sqlx::query(LIST_IMAGES).fetch_all(&self.pool).await?;
        rows.iter().map(decode_image).collect()
    }

    async fn delete_image(&self, reference: &str) -> Result<bool, StoreError> {
        let done = sqlx::query(DELETE_IMAGE)
            .bind(reference)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() > 0)
    }

    async fn create_user(&self, user: &UserRecord) -> Result<(), StoreError> {
        let roles = encode_strings("roles", &user.roles)?;
        let groups = encode_strings("groups", &user.groups)?;
        let inserted = sqlx::query(INSERT_USER)
            .bind(&user.username)
            .bind(&user.password_hash)
            .bind(roles)
            .bind(groups)
            .bind(encode_time("created_at", user.created_at)?)
            .bind(i64::from(user.disabled))
            .execute(&self.pool)
            .await;
        match inserted {
            Ok(_) => {
                tracing::debug!(user = %user.username, "user created");
                Ok(())
            }
            Err(e) if is_unique_violation(&e) => Err(StoreError::UserTaken(user.username.clone())),
            Err(e) => Err(e.into()),
        }
    }

    async fn get_user(&self, username: &str) -> Result<Option<UserRecord>, StoreError> {
        let row = sqlx::query(GET_USER)
            .bind(username)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(decode_user).transpose()
    }

    async fn list_users(&self) -> Result<Vec<UserRecord>, StoreError> {
        let rows = sqlx::query(LIST_USERS).fetch_all(&self.pool).await?;
        rows.iter().map(decode_user).collect()
    }

    async fn set_user_password(
        &self,
        username: &str,
        password_hash: &str,
    ) -> Result<(), StoreError> {
        let done = sqlx::query(SET_USER_PASSWORD)
            .bind(password_hash)
            .bind(username)
            .execute(&self.pool)
            .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NoSuchUser(username.to_string()));
        }
        tracing::debug!(user = username, "user password changed");
        Ok(())
    }

    async fn delete_user(&self, username: &str) -> Result<bool, StoreError> {
        let done = sqlx::query(DELETE_USER)
            .bind(username)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() > 0)
    }

    // Policies, delegations, revoked certificates and the audit log: sqlite/identity.rs.

    async fn put_policy(&self, holder: &str, policy: &Policy) -> Result<(), StoreError> {
        identity::put_policy(&self.pool, holder, policy).await
    }

    async fn get_policy(&self, holder: &str) -> Result<Option<Policy>, StoreError> {
        identity::get_policy(&self.pool, holder).await
    }

    async fn list_policies(&self) -> Result<Vec<(String, Policy)>, StoreError> {
        identity::list_policies(&self.pool).await
    }

    async fn delete_policy(&self, holder: &str) -> Result<bool, StoreError> {
        identity::delete_policy(&self.pool, holder).await
    }

    async fn create_delegation(&self, d: &DelegationRecord) -> Result<(), StoreError> {
        identity::create_delegation(&self.pool, d).await
    }

    async fn get_delegation(&self, id: uuid::Uuid) -> Result<Option<DelegationRecord>, StoreError> {
        identity::get_delegation(&self.pool, id).await
    }

    async fn list_delegations(&self) -> Result<Vec<DelegationRecord>, StoreError> {
        identity::list_delegations(&self.pool).await
    }

    async fn revoke_delegation(
        &self,
        id: uuid::Uuid,
        at: OffsetDateTime,
    ) -> Result<DelegationRecord, StoreError> {
        identity::revoke_delegation(&self.pool, id, at).await
    }

    async fn grant_vm(&self, grant: &VmGrant) -> Result<bool, StoreError> {
        grants::grant_vm(&self.pool, grant).await
    }

    async fn revoke_vm_grant(&self, vm_id: VmId, grantee: &str) -> Result<bool, StoreError> {
        grants::revoke_vm_grant(&self.pool, vm_id, grantee).await
    }

    async fn vm_grants(&self, vm_id: VmId) -> Result<Vec<VmGrant>, StoreError> {
        grants::vm_grants(&self.pool, vm_id).await
    }

    async fn revoke_certificate(&self, revoked: &RevokedCertificate) -> Result<(), StoreError> {
        identity::revoke_certificate(&self.pool, revoked).await
    }

    async fn revoked_among(
        &self,
        serials: &[String],
    ) -> Result<Option<RevokedCertificate>, StoreError> {
        identity::revoked_among(&self.pool, serials).await
    }

    async fn list_revoked_certificates(&self) -> Result<Vec<RevokedCertificate>, StoreError> {
        identity::list_revoked_certificates(&self.pool).await
    }

    async fn append_audit(&self, record: &AuditRecord) -> Result<u64, StoreError> {
        identity::append_audit(&self.pool, record).await
    }

    async fn audit_since(
        &self,
        after: u64,
        limit: u32,
        actor: Option<&str>,
    ) -> Result<Vec<AuditRecord>, StoreError> {
        identity::audit_since(&self.pool, after, limit, actor).await
    }
}

/// What the live VMs whose charge path starts with `prefix` hold, read on `conn` (inside the
/// create transaction, or on its own).
async fn usage_under(conn: &mut sqlx::SqliteConnection, prefix: &str) -> Result<Usage, StoreError> {
    let row = sqlx::query(USAGE_UNDER)
        .bind(prefix)
        .bind(prefix)
        .fetch_one(conn)
        .await?;
    let c = Cells {
        row: &row,
        at: format!("usage of vms charged under {prefix:?}"),
    };
    Ok(Usage {
        vms: c.unsigned("vms")?,
        vcpus: c.unsigned("vcpus")?,
        memory_mib: c.unsigned("memory_mib")?,
        disk_mib: c.unsigned("disk_mib")?,
    })
}

fn encode_strings(what: &str, values: &[String]) -> Result<String, StoreError> {
    encode_json(what, &values)
}

fn encode_json<T: serde::Serialize>(what: &str, value: &T) -> Result<String, StoreError> {
    serde_json::to_string(value).map_err(|e| unstorable(what, e))
}

async fn insert_event(
    tx: &mut Transaction<'static, Sqlite>,
    vm_id: VmId,
    vm_name: &str,
    state: VmState,
    generation: i64,
    reason: Option<&str>,
) -> Result<(), StoreError> {
    sqlx::query(INSERT_EVENT)
        .bind(vm_id.to_string())
        .bind(vm_name)
        .bind(state.as_str())
        .bind(generation)
        .bind(reason)
        .bind(now()?)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

fn is_unique_violation(e: &sqlx::Error) -> bool {
    e.as_database_error()
        .is_some_and(|d| d.is_unique_violation())
}

/// A value the schema cannot hold, refused before it reaches the database.
fn unstorable(what: &str, detail: impl std::fmt::Display) -> StoreError {
    StoreError::Database(sqlx::Error::Encode(
        format!("cannot store {what}: {detail}").into(),
    ))
}

fn to_bigint(what: &str, value: u64) -> Result<i64, StoreError> {
    i64::try_from(value).map_err(|_| unstorable(what, format_args!("{value} exceeds a BIGINT")))
}

fn now() -> Result<String, StoreError> {
    encode_time("the current time", OffsetDateTime::now_utc())
}

fn encode_time(what: &str, at: OffsetDateTime) -> Result<String, StoreError> {
    let utc = at
        .checked_to_offset(UtcOffset::UTC)
        .filter(|t| (0..=9999).contains(&t.year()))
        .ok_or_else(|| unstorable(what, format_args!("{at} is outside years 0000-9999")))?;
    utc.format(TIMESTAMP).map_err(|e| unstorable(what, e))
}

#[cfg(test)]
mod tests;
