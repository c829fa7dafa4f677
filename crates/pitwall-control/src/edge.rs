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

/// The overlay identity of a VM.
pub fn identity(owner: &str, vm_name: &str) -> String {
    format!("{owner}-{vm_name}")
}

/// The services a VM offers: `ssh`, then `tcp-PORT` for its exposed TCP ports, in order.
pub fn services(exposed_ports: &[String]) -> Vec<String> {
    let mut out = vec!["ssh".to_string()];
    for p in exposed_ports {
        let (port, proto) = p.split_once('/').unwrap_or((p.as_str(), "tcp"));
        if proto.eq_ignore_ascii_case("tcp") && port.parse::<u16>().is_ok_and(|n| n > 0) {
            let s = format!("tcp-{port}");
            if !out.contains(&s) {
                out.push(s);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_vm_offers_ssh_and_its_exposed_tcp_ports() {
        let ports = ["8080/tcp", "53/udp", "9000", "8080/tcp", "0/tcp", "x/tcp"].map(String::from);
        assert_eq!(services(&ports), ["ssh", "tcp-8080", "tcp-9000"]);
        assert_eq!(identity("alice", "web"), "alice-web");
    }
}
