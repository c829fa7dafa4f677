//! Pitwall's domain vocabulary: validated names and image references, the VM spec and its
//! limits, the VM lifecycle (states, allowed transitions, desired vs. actual state).
//!
//! This crate does no IO: no async runtime, no database, no sockets, no files. Every other
//! crate speaks in these types; the wire (`pitwall-proto`) and the store (`pitwall-store`)
//! convert to and from them.
#![forbid(unsafe_code)]

pub mod image_ref;
pub mod name;
pub mod overlay;
pub mod policy;
pub mod spec;
pub mod state;

pub use image_ref::{ImageRef, ImageRefError};
pub use name::{NameError, VmName};
pub use policy::{ExceedsParent, OverQuota, Policy, Usage};
pub use spec::{
    ResolvedService, RestartPolicy, RunConfig, RunOverrides, ServiceSpec, SpecError, VmSpec,
    LIMITS, MAX_SERVICES,
};
pub use state::{DesiredState, TransitionError, VmState};

/// Identifier of a VM: a UUID, stable for the VM's whole life, never reused.
pub type VmId = uuid::Uuid;
