//! Pitwall's control-plane store: VMs (desired and actual state with generations, owner,
//! group and charge path), images known to the cluster, the event log, the local users of the
//! built-in issuer, resource policies and their delegations, revoked client certificates, and
//! the audit log. The [`Store`] trait is what the control plane uses; [`sqlite::SqliteStore`]
//! is the embedded default (a file, or `:memory:` in unit tests). The schema is plain SQL
//! that fits PostgreSQL too (no SQLite-only types), so a PostgreSQL implementation can share
//! the migrations' shape.
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
use pitwall_core::{DesiredState, Policy, TransitionError, Usage, VmId, VmSpec, VmState};
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
    /// A create would take a policy holder beyond its quota; the string says which holder
    /// and which limits (from [`QuotaCheck::label`] and [`pitwall_core::OverQuota`]).
    #[error("quota exceeded for {0}")]
    QuotaExceeded(String),
    #[error("no delegation {0}")]
    NoSuchDelegation(String),
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
    /// Username of the principal the VM belongs to.
    pub owner: String,
    /// Group the VM is shared with: its members see and change it like the owner.
    pub group: Option<String>,
    /// Charge path: the policy holders the VM counts against, root first, each segment
    /// followed by `/`: `/user:alice/`, `/group:ops/`, `/user:alice/d:<uuid>/`. See
    /// [`pitwall_core::policy`].
    pub charge: String,
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
    /// The image's `ExposedPorts` when the VM was created (`80/tcp`, ...), kept for exposing
    /// them later.
    #[serde(default)]
    pub exposed_ports: Vec<String>,
    /// The VM's IPv4 address on its host's bridge, as the host last reported it.
    #[serde(default)]
    pub address: Option<String>,
    /// The guest's SSH host key (OpenSSH line) as its host last reported it.
    #[serde(default)]
    pub ssh_host_key: Option<String>,
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
        let owner = owner.into();
        Self {
            id,
            spec,
            charge: format!("/user:{owner}/"),
            owner,
            group: None,
            host: None,
            desired,
            generation: 1,
            state: VmState::Pending,
            state_generation: 0,
            reason: None,
            exposed_ports: Vec::new(),
            address: None,
            ssh_host_key: None,
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
    /// Username of whoever imported it (only they or an admin may replace or remove it).
    pub owner: String,
    pub created_at: OffsetDateTime,
    /// What the host's cache knows of the built image (os, architecture, base format,
    /// layers, ...); `Null` for images registered before it was kept.
    #[serde(default)]
    pub details: serde_json::Value,
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
    /// The VM's owner and group (read from the VM, not kept per event), so readers can show
    /// each principal only the events of VMs it may see.
    pub owner: String,
    pub group: Option<String>,
    pub state: VmState,
    pub generation: u64,
    pub reason: Option<String>,
    pub at: OffsetDateTime,
}

/// One quota to check in the transaction that creates a VM: the VMs (not DELETED) whose
/// charge path starts with `prefix`, plus the new one, must fit `policy`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuotaCheck {
    /// For the error message: whose policy this is, e.g. `user alice` or `delegation 0193…`.
    pub label: String,
    /// A charge-path prefix ending in `/`, e.g. `/user:alice/`.
    pub prefix: String,
    pub policy: Policy,
}

/// A share of a policy holder's policy given to another principal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DelegationRecord {
    pub id: uuid::Uuid,
    /// Charge path of the holder it is cut from (`/user:alice/`, or a delegation's path).
    /// Its own path is `parent` + `d:<id>/`.
    pub parent: String,
    /// Who receives it: `user:NAME` or `group:NAME`.
    pub grantee: String,
    pub policy: Policy,
    /// Username of who created it.
    pub created_by: String,
    pub created_at: OffsetDateTime,
    /// Set once revoked; a revoked delegation (and everything below it) no longer admits
    /// anything.
    pub revoked_at: Option<OffsetDateTime>,
}

impl DelegationRecord {
    /// The charge path of VMs created under this delegation.
    pub fn path(&self) -> String {
        format!("{}d:{}/", self.parent, self.id)
    }
}

/// A user allowed to connect to a VM's services besides its owner.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmGrant {
    pub vm_id: VmId,
    /// The user name granted.
    pub grantee: String,
    pub granted_by: String,
    pub created_at: OffsetDateTime,
}

/// A revoked client certificate, by serial number.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevokedCertificate {
    /// Serial number, lower-case hex without separators.
    pub serial: String,
    pub revoked_by: String,
    pub reason: Option<String>,
    pub revoked_at: OffsetDateTime,
}

/// One state-changing request (or failed attempt), as the audit log keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRecord {
    /// Monotonic sequence number, starting at 1 (ignored by [`Store::append_audit`]).
    pub seq: u64,
    pub at: OffsetDateTime,
    /// Username, or `-` when the request carried no valid identity.
    pub actor: String,
    /// How the actor proved who it is: `token`, `certificate <serial>`, or `-`.
    pub via: String,
    /// Peer address of the request (`ip:port`).
    pub source: String,
    pub method: String,
    /// The request path as sent.
    pub path: String,
    /// The route it matched, e.g. `POST /v1/vms/{name}/stop`; empty when none matched.
    pub action: String,
    /// HTTP status of the answer.
    pub status: u16,
    /// `ok`, or the error code of the answer (`not_found`, `quota_exceeded`, …).
    pub outcome: String,
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
    /// [`StoreError::NameTaken`] when the same owner has a VM of that name that is not
    /// DELETED (names are unique per owner), and with [`StoreError::QuotaExceeded`] (naming
    /// the first check's label and what it exceeds) when any of `quotas` would not admit the
    /// VM. The quotas are checked and the VM inserted in one serialised transaction, so
    /// concurrent creates can never exceed a quota together. Appends a PENDING event in the
    /// same transaction.
    async fn create_vm(&self, vm: &VmRecord, quotas: &[QuotaCheck]) -> Result<(), StoreError>;

    /// Every live (not DELETED) VM of that name, whoever owns it, ordered by owner.
    async fn vms_named(&self, name: &str) -> Result<Vec<VmRecord>, StoreError>;

    /// What the VMs (not DELETED) whose charge path starts with `prefix` hold.
    async fn usage(&self, prefix: &str) -> Result<Usage, StoreError>;

    async fn get_vm_by_id(&self, id: VmId) -> Result<Option<VmRecord>, StoreError>;

    /// Every VM not DELETED, by name then owner.
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

    /// Record the SSH host key the VM's guest reported (`None`: forget it).
    async fn set_ssh_host_key(&self, id: VmId, key: Option<&str>) -> Result<(), StoreError>;
    /// Record the address the VM's host gave it (`None`: it has none any more).
    async fn set_address(&self, id: VmId, address: Option<&str>) -> Result<(), StoreError>;

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

    /// Set the policy of a root holder: `user:NAME`, `group:NAME`, or `default` (users
    /// without a policy of their own). Replaces any earlier one.
    async fn put_policy(&self, holder: &str, policy: &Policy) -> Result<(), StoreError>;

    async fn get_policy(&self, holder: &str) -> Result<Option<Policy>, StoreError>;

    /// Every root policy, by holder.
    async fn list_policies(&self) -> Result<Vec<(String, Policy)>, StoreError>;

    /// Remove a root policy; returns whether it existed.
    async fn delete_policy(&self, holder: &str) -> Result<bool, StoreError>;

    async fn create_delegation(&self, d: &DelegationRecord) -> Result<(), StoreError>;

    async fn get_delegation(&self, id: uuid::Uuid) -> Result<Option<DelegationRecord>, StoreError>;

    /// Every delegation, revoked ones included, oldest first (by `created_at`, then id).
    async fn list_delegations(&self) -> Result<Vec<DelegationRecord>, StoreError>;

    /// Mark a delegation revoked at `at` (once: a second call keeps the first time). Fails
    /// with [`StoreError::NoSuchDelegation`] for an unknown id.
    async fn revoke_delegation(
        &self,
        id: uuid::Uuid,
        at: OffsetDateTime,
    ) -> Result<DelegationRecord, StoreError>;

    /// Let `grant.grantee` connect to the VM (idempotent: a repeated grant keeps the first
    /// record and returns `false`). Fails with [`StoreError::NoSuchVm`] for an unknown VM.
    async fn grant_vm(&self, grant: &VmGrant) -> Result<bool, StoreError>;

    /// Take a grant back; `false` when there was none.
    async fn revoke_vm_grant(&self, vm_id: VmId, grantee: &str) -> Result<bool, StoreError>;

    /// The grants of a VM, by grantee.
    async fn vm_grants(&self, vm_id: VmId) -> Result<Vec<VmGrant>, StoreError>;

    /// Record a certificate serial as revoked (idempotent: the first record stays).
    async fn revoke_certificate(&self, revoked: &RevokedCertificate) -> Result<(), StoreError>;

    /// The first of `serials` that is revoked, if any.
    async fn revoked_among(
        &self,
        serials: &[String],
    ) -> Result<Option<RevokedCertificate>, StoreError>;

    /// Every revoked certificate, oldest revocation first (then by serial).
    async fn list_revoked_certificates(&self) -> Result<Vec<RevokedCertificate>, StoreError>;

    /// Append an audit record (its `seq` is ignored); returns the sequence number given.
    async fn append_audit(&self, record: &AuditRecord) -> Result<u64, StoreError>;

    /// Audit records with `seq > after`, oldest first, at most `limit`; only `actor`'s when
    /// given.
    async fn audit_since(
        &self,
        after: u64,
        limit: u32,
        actor: Option<&str>,
    ) -> Result<Vec<AuditRecord>, StoreError>;
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
