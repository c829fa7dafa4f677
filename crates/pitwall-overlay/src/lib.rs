//! The overlay: the encrypted, authenticated, multiplexed transport between the control
//! plane's **edge** and each host's **terminator** (ARCHITECTURE §7).
//!
//! Owns: the QUIC (quinn) connection each terminator dials out to the edge, mutual TLS against
//! the deployment CA (a host is known by its client certificate's CN `host:<hostname>`), the
//! control protocol (`wire`: hello, register, unregister, sync), the edge's registry
//! (identity, service) → host, and the dial streams the edge opens and the terminator splices
//! to the TCP target it registered.
//!
//! Must not: decide who may dial what (the control plane checks owners and grants before
//! [`Edge::dial`], and vets registrations through [`RegistrationPolicy`]); let the edge name
//! an address for the terminator to connect to (the terminator connects only to targets it
//! registered itself); listen on the host (the terminator only dials out); know about VMs,
//! the bus or the store.
//!
//! Hand-written: only the length-prefixed JSON framing (see `wire`), because a dial stream
//! turns into raw bytes right after its header.

#![forbid(unsafe_code)]

mod edge;
mod error;
pub mod pki;
mod stream;
mod terminator;
pub mod tls;
pub mod wire;

pub use edge::{AllowAll, Edge, EdgeConfig, HostInfo, RegistrationPolicy, ServiceInfo};
pub use error::OverlayError;
pub use stream::OverlayStream;
pub use terminator::{Terminator, TerminatorConfig, TerminatorStatus};
pub use tls::TlsIdentity;
