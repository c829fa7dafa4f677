//! Pitwall's control-plane store: VMs (desired and actual state with generations), images
//! known to the cluster, and the event log. The [`Store`] trait is what the control plane
//! uses; [`sqlite::SqliteStore`] is the embedded default (a file, or `:memory:` in unit
//! tests). The schema is plain SQL that fits PostgreSQL too (no SQLite-only types), so a
//! PostgreSQL implementation can share the migrations' shape.
//!
//! The store never decides lifecycle rules itself beyond what keeps it consistent: it refuses
//! a status report whose transition `pitwall-core` forbids, and one older than what it holds.
//! It never links host-side crates.
#![forbid(unsafe_code)]

use async_trait::async_trait;
use pitwall_core::{DesiredState, VmId, VmSpec, VmState};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

pub mod sqlite;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("a VM named {0:?} already exists: pick another name or delete that VM first")]
    NameTaken(String),
    #[error("no VM {0:?}")]
    NoSuchVm(String),
    #[error("no image {0:?}")]
    NoSuchImage(String),
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
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
    /// Generation the last reported state answered to.
    pub state_generation: u64,
    /// Human reason for FAILED, or for a STOPPED the guest chose itself.
    pub reason: Option<String>,
    pub created_at: OffsetDateTime,
    pub updated_at: OffsetDateTime,
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
    /// Insert a new VM (state PENDING, desired as given, generation 1). Fails with
    /// [`StoreError::NameTaken`] when a VM of that name exists and is not DELETED. Appends a
    /// PENDING event.
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
    /// kept for FAILED and STOPPED and cleared otherwise. Appends an event when applied.
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
}
