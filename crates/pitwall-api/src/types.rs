//! JSON bodies of API v1.

use serde::{Deserialize, Serialize};

/// `POST /v1/vms`
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateVmRequest {
    pub name: String,
    /// Image reference, e.g. `demo/hello:1.0` (imported or pulled before).
    pub image: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vcpus: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_mib: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_mib: Option<u64>,
    /// Boot the VM once created (default true); false leaves it STOPPED.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start: Option<bool>,
}

/// A VM as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Vm {
    pub id: String,
    pub name: String,
    pub image: String,
    pub vcpus: u32,
    pub memory_mib: u32,
    pub disk_mib: u32,
    /// Actual state, upper case: PENDING, CREATING, STARTING, RUNNING, STOPPING, STOPPED,
    /// DELETING, DELETED, FAILED, LOST.
    pub state: String,
    /// What the user asked for: RUNNING, STOPPED or DELETED.
    pub desired_state: String,
    pub generation: u64,
    pub owner: String,
    pub host: Option<String>,
    /// Why the VM is FAILED (or why it stopped by itself).
    pub reason: Option<String>,
    /// RFC 3339.
    pub created_at: String,
    pub updated_at: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VmList {
    pub vms: Vec<Vm>,
}

/// An image known to the cluster.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Image {
    pub reference: String,
    pub digest: String,
    pub size_bytes: u64,
    /// OCI image config: entrypoint, cmd, env, working_dir, user, exposed_ports.
    pub config: serde_json::Value,
    pub host: String,
    pub created_at: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ImageList {
    pub images: Vec<Image>,
}

/// One lifecycle event (`GET /v1/events` sends these as server-sent events, event type
/// `state`, id = `seq`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    pub seq: u64,
    pub vm_id: String,
    pub vm_name: String,
    pub state: String,
    pub generation: u64,
    pub reason: Option<String>,
    pub at: String,
}

/// Every error response: `{ "error": { "code", "message" } }`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorDetail {
    /// Stable, machine-readable: `invalid_argument`, `not_found`, `already_exists`,
    /// `conflict`, `timeout`, `vm_failed`, `invalid_image`, `unavailable`, `internal`.
    pub code: String,
    /// For people: what went wrong and what to do.
    pub message: String,
}

/// `GET /healthz`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Health {
    pub status: String,
    pub version: String,
    /// Hosts that sent a heartbeat within their lease.
    pub hosts: Vec<String>,
}
