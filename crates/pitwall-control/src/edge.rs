//! The edge as the control plane sees it: who may reach which service of which VM is decided
//! here (with [`crate::api::access::resolve_for_connect`]), and the bytes are carried by a
//! [`Dialer`] — the overlay to the hosts' terminators (`pitwall-overlay`), set once the daemon
//! has built it ([`crate::Control::set_edge`]). What this module must not do: open
//! connections to VMs itself, or know how the overlay works.
//!
//! Naming (ARCHITECTURE §7): a VM's overlay identity is `OWNER-VMNAME`; its services are
//! `ssh` (always) and `tcp-PORT` for each TCP port of the image's `ExposedPorts`.

use async_trait::async_trait;
use tokio::io::{AsyncRead, AsyncWrite};

/// A byte stream to a VM's service.
pub trait Conn: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Conn for T {}

/// Opens streams to VM services through the overlay.
#[async_trait]
pub trait Dialer: Send + Sync + 'static {
    /// A stream to `service` of the VM registered as `identity`; the error says why not
    /// (no terminator has it, the VM refused the connection, ...).
    async fn dial(&self, identity: &str, service: &str) -> Result<Box<dyn Conn>, String>;
}

pub use pitwall_core::overlay::{identity, services};
