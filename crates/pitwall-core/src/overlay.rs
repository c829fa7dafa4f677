//! How VMs are named on the overlay (ARCHITECTURE §7), shared by the control plane's edge and
//! the hosts' terminators: a VM's identity is `OWNER-VMNAME`; its services are `ssh` (always,
//! port 22) and `tcp-PORT` for each TCP port of the image's `ExposedPorts`.

/// The port of every VM's SSH server (powerunit's), behind the `ssh` service.
pub const SSH_PORT: u16 = 22;

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

/// The VM port behind a service name (`ssh` → 22, `tcp-8080` → 8080).
pub fn service_port(service: &str) -> Option<u16> {
    match service {
        "ssh" => Some(SSH_PORT),
        s => s
            .strip_prefix("tcp-")?
            .parse::<u16>()
            .ok()
            .filter(|p| *p > 0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_vm_offers_ssh_and_its_exposed_tcp_ports() {
        assert_eq!(service_port("ssh"), Some(22));
        assert_eq!(service_port("tcp-8080"), Some(8080));
        assert_eq!(service_port("tcp-0"), None);
        assert_eq!(service_port("udp-53"), None);
        let ports = ["8080/tcp", "53/udp", "9000", "8080/tcp", "0/tcp", "x/tcp"].map(String::from);
        assert_eq!(services(&ports), ["ssh", "tcp-8080", "tcp-9000"]);
        assert_eq!(identity("alice", "web"), "alice-web");
    }
}
