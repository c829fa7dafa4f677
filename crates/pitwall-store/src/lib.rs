//! Pitwall's control-plane store: VMs (desired and actual state with generations), images
//! known to the cluster, the event log, and the local users of the built-in issuer. The [`Store`] trait is what the control plane
//! uses; [`sqlite::SqliteStore`] is the embedded default (a file, or `:memory:` in unit
//! tests). The schema is plain SQL that fits PostgreSQL too (no SQLite-only types), so a
//! PostgreSQL implementation can share the migrations' shape.
//!
//! The store never decides lifecycle rules itself beyond what keeps it consistent: it refuses
//! a status report whose transition `pitwall-core` forbids, and one older than what it holds.
//! It never links host-side crates.
//!
//! What every implementation must do is pinned by the suite in `tests/suite/` (one async
//! function per behaviour, taking a fresh store); `tests/sqlite_store.rs` runs it against the
//! SQLite store in memory and on a file, and a PostgreSQL store is to run it the same way.
#![forbid(unsafe_code)]

use async_trait::async_trait;
use pitwall_core::{DesiredState, TransitionError, VmId, VmSpec, VmState};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

pub mod sqlite;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("a VM named {0:?} already exists: pick another name or delete that VM first")]
    NameTaken(String),
    #[error("no VM {0:?}")]
    NoSuchVm(String),
    #[error("a user named {0:?} already exists: pick another name or delete that user first")]
    UserTaken(String),
    #[error("no user {0:?}")]
    NoSuchUser(String),
    #[error("no image {0:?}")]
    NoSuchImage(String),
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    #[error(
        "cannot open the store database {}: {source}; check that the directory exists or can be created and is writable",
        path.display()
    )]
    Open {
        path: std::path::PathBuf,
        source: sqlx::Error,
    },
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("database migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
}

/// One VM as the control plane knows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VmRecord {
    pub id: VmId,
    pub spec: VmSpec,
    pub owner: String,
    /// Host the VM is placed on; `None` until scheduled.
    pub host: Option<String>,
    pub desired: DesiredState,
    /// Bumped on every change of `desired` (starts at 1).
    pub generation: u64,
    /// Last state reported by the host (or set by the control plane: PENDING, LOST).
    pub state: VmState,
    /// Generation the last reported state answered to (0: no report yet).
    pub state_generation: u64,
    /// Human reason for FAILED, or for a STOPPED the guest chose itself.
    pub reason: Option<String>,
    pub created_at: OffsetDateTime,
    pub updated_at: OffsetDateTime,
}

impl VmRecord {
    /// A VM as [`Store::create_vm`] stores it: PENDING, generation 1, no state reported yet
    /// (`state_generation` 0), no host, no reason, created and updated `now`.
    pub fn new(
        id: VmId,
        spec: VmSpec,
        owner: impl Into<String>,
        desired: DesiredState,
        now: OffsetDateTime,
    ) -> Self {
        Self {
            id,
            spec,
            owner: owner.into(),
            host: None,
            desired,
            generation: 1,
            state: VmState::Pending,
            state_generation: 0,
            reason: None,
            created_at: now,
            updated_at: now,
        }
    }
}

/// An image registered in the cluster (imported or pulled on a host).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ImageRecord {
    /// Canonical reference, e.g. `demo/hello:1.0`.
    pub reference: String,
    /// Manifest digest `sha256:…`.
    pub digest: String,
    pub size_bytes: u64,
    /// Image config JSON (Entrypoint, Cmd, Env, WorkingDir, User, ExposedPorts).
    pub config: serde_json::Value,
    /// Host holding the built image.
    pub host: String,
    pub created_at: OffsetDateTime,
}

/// A local user of the built-in issuer (embedded default). External OIDC users are never
/// stored: their issuer owns them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserRecord {
    /// Login name, the primary key.
    pub username: String,
    /// Password hash as a PHC string (argon2id); the store never sees a plain password.
    pub password_hash: String,
    pub roles: Vec<String>,
    pub groups: Vec<String>,
    /// A disabled user cannot log in.
    pub disabled: bool,
    pub created_at: OffsetDateTime,
}

/// One lifecycle event, in the order the store recorded it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventRecord {
    /// Monotonic sequence number, starting at 1.
    pub seq: u64,
    pub vm_id: VmId,
    pub vm_name: String,
    pub state: VmState,
    pub generation: u64,
    pub reason: Option<String>,
    pub at: OffsetDateTime,
}

/// Outcome of [`Store::record_status`].
// One value per status report, moved once and never stored in bulk: the size difference does not
// matter, and an unboxed record keeps `StatusOutcome::Applied(vm)` patterns plain.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum StatusOutcome {
    /// Applied; the VM now has this state (an event was appended).
    Applied(VmRecord),
    /// Same state and generation as held: nothing changed (a duplicate report).
    Duplicate,
    /// Refused: older generation than held, or a transition the lifecycle forbids. The string
    /// says why, for logs.
    Stale(String),
}

#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Insert a new VM (state PENDING, desired as given, generation 1, state_generation 0, no
    /// reason: those fields of `vm` are not read, see [`VmRecord::new`]). Fails with
    /// [`StoreError::NameTaken`] when a VM of that name exists and is not DELETED. Appends a
    /// PENDING event in the same transaction.
    async fn create_vm(&self, vm: &VmRecord) -> Result<(), StoreError>;

    /// The live (not DELETED) VM of that name.
    async fn get_vm(&self, name: &str) -> Result<Option<VmRecord>, StoreError>;

    async fn get_vm_by_id(&self, id: VmId) -> Result<Option<VmRecord>, StoreError>;

    /// Every VM not DELETED, by name.
    async fn list_vms(&self) -> Result<Vec<VmRecord>, StoreError>;

    /// Set the desired state and bump the generation atomically; returns the updated record.
    async fn set_desired(&self, id: VmId, desired: DesiredState) -> Result<VmRecord, StoreError>;

    /// Set the host of a VM (scheduling).
    async fn set_host(&self, id: VmId, host: &str) -> Result<(), StoreError>;

    /// Record an actual state. Applied only when `generation >= state_generation` held and
    /// the transition is legal (`VmState::can_transition_to`) or the state is unchanged with a
    /// newer generation; a report of the same state and generation is a duplicate. Reasons are
    /// kept for FAILED, STOPPED and LOST and cleared otherwise. Appends an event when applied.
    async fn record_status(
        &self,
        id: VmId,
        state: VmState,
        generation: u64,
        reason: Option<&str>,
    ) -> Result<StatusOutcome, StoreError>;

    /// Events with `seq > after`, oldest first, at most `limit`.
    async fn events_since(&self, after: u64, limit: u32) -> Result<Vec<EventRecord>, StoreError>;

    /// Insert or replace an image by reference.
    async fn put_image(&self, image: &ImageRecord) -> Result<(), StoreError>;

    async fn get_image(&self, reference: &str) -> Result<Option<ImageRecord>, StoreError>;

    async fn list_images(&self) -> Result<Vec<ImageRecord>, StoreError>;

    /// Remove an image record; returns whether it existed.
    async fn delete_image(&self, reference: &str) -> Result<bool, StoreError>;

    /// Insert a local user. Fails with [`StoreError::UserTaken`] when that username exists
    /// (and changes nothing).
    async fn create_user(&self, user: &UserRecord) -> Result<(), StoreError>;

    async fn get_user(&self, username: &str) -> Result<Option<UserRecord>, StoreError>;

    /// Every local user, by username.
    async fn list_users(&self) -> Result<Vec<UserRecord>, StoreError>;

    /// Replace a user's password hash. Fails with [`StoreError::NoSuchUser`] for an unknown
    /// username.
    async fn set_user_password(
        &self,
        username: &str,
        password_hash: &str,
    ) -> Result<(), StoreError>;

    /// Remove a user; returns whether it existed.
    async fn delete_user(&self, username: &str) -> Result<bool, StoreError>;
}

/// The rule of [`Store::record_status`], shared by every implementation: `None` when the report
/// is to be applied, else the outcome that refuses it. Generations are stored as signed 64-bit
/// integers (SQL `BIGINT`), so a report beyond `i64::MAX` is refused too.
pub(crate) fn judge_status(
    current: &VmRecord,
    state: VmState,
    generation: u64,
) -> Option<StatusOutcome> {
    if i64::try_from(generation).is_err() {
        return Some(StatusOutcome::Stale(format!(
            "report of {state} at generation {generation} is beyond any generation the store holds"
        )));
    }
    if generation < current.state_generation {
        return Some(StatusOutcome::Stale(format!(
            "report of {state} at generation {generation} is older than the held {} at generation {}",
            current.state, current.state_generation
        )));
    }
    if state == current.state {
        return (generation == current.state_generation).then_some(StatusOutcome::Duplicate);
    }
    if !current.state.can_transition_to(state) {
        return Some(StatusOutcome::Stale(
            TransitionError {
                from: current.state,
                to: state,
            }
            .to_string(),
        ));
    }
    None
}

/// Reasons are kept for FAILED, STOPPED and LOST only.
pub(crate) fn kept_reason(state: VmState, reason: Option<&str>) -> Option<&str> {
    matches!(state, VmState::Failed | VmState::Stopped | VmState::Lost)
        .then_some(reason)
        .flatten()
}

#[cfg(test)]
mod tests {
    use pitwall_core::{ImageRef, VmName};

    use super::*;

    fn vm(state: VmState, state_generation: u64) -> VmRecord {
        let spec = VmSpec::new(
            VmName::parse("a").unwrap(),
            ImageRef::parse("busybox").unwrap(),
            None,
            None,
            None,
        )
        .unwrap();
        let mut vm = VmRecord::new(
            VmId::nil(),
            spec,
            "alice",
            DesiredState::Running,
            OffsetDateTime::UNIX_EPOCH,
        );
        vm.state = state;
        vm.state_generation = state_generation;
        vm
    }

    #[test]
    fn legal_transition_at_same_or_newer_generation_applies() {
        assert_eq!(
            judge_status(&vm(VmState::Pending, 1), VmState::Creating, 1),
            None
        );
        assert_eq!(
            judge_status(&vm(VmState::Pending, 1), VmState::Creating, 2),
            None
        );
    }

    #[test]
    fn same_state_and_generation_is_a_duplicate() {
        assert_eq!(
            judge_status(&vm(VmState::Running, 3), VmState::Running, 3),
            Some(StatusOutcome::Duplicate)
        );
    }

    #[test]
    fn same_state_at_newer_generation_applies() {
        assert_eq!(
            judge_status(&vm(VmState::Running, 3), VmState::Running, 4),
            None
        );
    }

    #[test]
    fn older_generation_is_stale_even_for_a_legal_transition() {
        let Some(StatusOutcome::Stale(why)) =
            judge_status(&vm(VmState::Running, 3), VmState::Stopping, 2)
        else {
            panic!("expected stale");
        };
        assert!(why.contains("older"), "{why}");
    }

    #[test]
    fn illegal_transition_is_stale_and_names_both_states() {
        let Some(StatusOutcome::Stale(why)) =
            judge_status(&vm(VmState::Pending, 1), VmState::Running, 1)
        else {
            panic!("expected stale");
        };
        assert!(why.contains("PENDING") && why.contains("RUNNING"), "{why}");
    }

    #[test]
    fn generation_beyond_bigint_is_refused() {
        assert!(matches!(
            judge_status(&vm(VmState::Pending, 1), VmState::Creating, u64::MAX),
            Some(StatusOutcome::Stale(_))
        ));
    }

    #[test]
    fn reason_kept_only_for_failed_stopped_and_lost() {
        for state in VmState::ALL {
            let kept = kept_reason(state, Some("why"));
            let expect = matches!(state, VmState::Failed | VmState::Stopped | VmState::Lost);
            assert_eq!(kept.is_some(), expect, "{state}");
        }
        assert_eq!(kept_reason(VmState::Failed, None), None);
    }
}
