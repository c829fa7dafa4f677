//! [`HostNetwork`]: the real [`Network`] (rtnetlink, TAP ioctls, `nft`, the IPAM file).
//! Everything runs in the network namespace of the calling thread.

use std::net::Ipv4Addr;
use std::path::Path;

use async_trait::async_trait;
use tracing::{debug, info, warn};

use crate::firewall::{self, FirewallSpec};
use crate::ipam::FileIpam;
use crate::link::Netlink;
use crate::{tap, tap_name, NetConfig, NetError, Network, VmId, VmNic};

const IP_FORWARD: &str = "/proc/sys/net/ipv4/ip_forward";

/// The host's real networking for VMs.
pub struct HostNetwork {
    config: NetConfig,
    ipam: FileIpam,
}

impl HostNetwork {
    /// Checks the config; touches nothing yet. Without configured DNS servers, guests get the
    /// host's own (from `/etc/resolv.conf`, loopback ones left out: a guest cannot reach them).
    pub fn new(mut config: NetConfig) -> Result<HostNetwork, NetError> {
        config.validate()?;
        if config.dns.is_empty() {
            config.dns = std::fs::read_to_string("/etc/resolv.conf")
                .map(|text| nameservers(&text))
                .unwrap_or_default();
        }
        let ipam = FileIpam::new(
            config.state_dir.clone(),
            config.subnet,
            config.pool,
            config.gateway(),
        );
        Ok(HostNetwork { config, ipam })
    }

    pub fn config(&self) -> &NetConfig {
        &self.config
    }

    pub fn ipam(&self) -> &FileIpam {
        &self.ipam
    }

    fn firewall_spec(&self) -> FirewallSpec {
        FirewallSpec {
            table: self.config.nft_table.clone(),
            bridge: self.config.bridge.clone(),
            subnet: self.config.network(),
            uplink: self.config.uplink.clone(),
            masquerade: self.config.masquerade,
        }
    }

    /// Rebuilds Pitwall's nftables table (atomic, idempotent).
    pub async fn apply_firewall(&self) -> Result<(), NetError> {
        firewall::apply(&self.config.nft, &self.firewall_spec()).await
    }

    /// Removes Pitwall's nftables table and the bridge (VM TAPs must be detached first).
    /// Leaves `ip_forward` as it is: something else may rely on it.
    pub async fn teardown_host_network(&self) -> Result<(), NetError> {
        firewall::remove(&self.config.nft, &self.config.nft_table).await?;
        if Netlink::connect()?.delete_link(&self.config.bridge).await? {
            info!(bridge = %self.config.bridge, "bridge removed");
        }
        Ok(())
    }

    async fn wire_tap(&self, nl: &Netlink, tap_dev: &str) -> Result<(), NetError> {
        match nl.link(tap_dev).await? {
            // Ours from an earlier attach; a running VMM may hold it open (TUNSETIFF would
            // then fail with EBUSY), so leave the device alone and only re-check the port.
            Some(link) if link.kind.as_deref() == Some("tun") => {
                debug!(tap = tap_dev, "TAP exists");
            }
            Some(link) => {
                return Err(NetError::Link {
                    what: "create TAP",
                    name: tap_dev.to_string(),
                    why: format!(
                        "a {} device of that name exists: delete it",
                        link.kind.as_deref().unwrap_or("non-TAP")
                    ),
                })
            }
            None => tap::create_persistent_tap(tap_dev, self.config.tap_owner)?,
        }
        nl.attach_port(&self.config.bridge, tap_dev).await
    }

    async fn delete_tap(nl: &Netlink, tap_dev: &str) -> Result<bool, NetError> {
        match nl.delete_link(tap_dev).await {
            Ok(deleted) => Ok(deleted),
            Err(e) => {
                // Kernels that refuse RTM_DELLINK for TUN devices: drop persistence instead.
                warn!(tap = tap_dev, error = %e, "netlink delete failed, clearing persistence");
                tap::remove_persistent_tap(tap_dev)?;
                Ok(true)
            }
        }
    }
}

/// The non-loopback IPv4 `nameserver`s of a resolv.conf text, in order.
fn nameservers(resolv_conf: &str) -> Vec<Ipv4Addr> {
    resolv_conf
        .lines()
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            (words.next() == Some("nameserver")).then(|| words.next())?
        })
        .filter_map(|w| w.parse::<Ipv4Addr>().ok())
        .filter(|a| !a.is_loopback())
        .collect()
}

fn enable_ip_forward(path: &Path) -> Result<(), NetError> {
    let current = std::fs::read_to_string(path).map_err(|e| NetError::io("read", path, e))?;
    if current.trim() != "1" {
        std::fs::write(path, b"1").map_err(|e| match e.kind() {
            std::io::ErrorKind::PermissionDenied => NetError::Permission {
                what: "enable IP forwarding",
                name: path.display().to_string(),
            },
            _ => NetError::io("enable IP forwarding", path, e),
        })?;
        info!("enabled net.ipv4.ip_forward");
    }
    Ok(())
}

#[async_trait]
impl Network for HostNetwork {
    async fn ensure_host_network(&self) -> Result<(), NetError> {
        let nl = Netlink::connect()?;
        let br = &self.config.bridge;
        let index = nl.ensure_bridge(br).await?;
        nl.ensure_only_ipv4(
            index,
            br,
            self.config.gateway(),
            self.config.network().prefix_len(),
        )
        .await?;
        self.apply_firewall().await?;
        if self.config.masquerade {
            enable_ip_forward(Path::new(IP_FORWARD))?;
        }
        info!(bridge = %br, gateway = %self.config.gateway(), subnet = %self.config.network(), "host network ready");
        Ok(())
    }

    async fn attach_vm(&self, vm_id: VmId) -> Result<VmNic, NetError> {
        let alloc = self.ipam.allocate(vm_id)?;
        let nic = self.config.nic(vm_id, alloc.ip);
        let nl = Netlink::connect()?;
        if let Err(e) = self.wire_tap(&nl, &nic.tap).await {
            if alloc.new {
                // Leave nothing behind for an attach that never happened.
                if let Err(undo) = Self::delete_tap(&nl, &nic.tap).await {
                    warn!(vm_id = %vm_id, tap = %nic.tap, error = %undo, "cannot remove TAP after failed attach");
                }
                self.ipam.release(vm_id)?;
            }
            return Err(e);
        }
        info!(vm_id = %vm_id, tap = %nic.tap, ip = %nic.ip, mac = %nic.mac, "VM attached to network");
        Ok(nic)
    }

    async fn detach_vm(&self, vm_id: VmId) -> Result<(), NetError> {
        let tap_dev = tap_name(vm_id);
        let nl = Netlink::connect()?;
        let deleted = Self::delete_tap(&nl, &tap_dev).await?;
        let released = self.ipam.release(vm_id)?;
        if deleted || released.is_some() {
            info!(vm_id = %vm_id, tap = %tap_dev, ip = ?released, "VM detached from network");
        } else {
            debug!(vm_id = %vm_id, "VM was not attached");
        }
        Ok(())
    }

    async fn nic(&self, vm_id: VmId) -> Result<Option<VmNic>, NetError> {
        Ok(self.ipam.get(vm_id)?.map(|ip| self.config.nic(vm_id, ip)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guests_get_the_hosts_nameservers_but_not_loopback_ones() {
        let text = "# comment\nnameserver 127.0.0.53\nnameserver 10.0.0.2\nsearch x\nnameserver ::1\nnameserver 9.9.9.9 # q\n";
        assert_eq!(
            nameservers(text),
            [Ipv4Addr::new(10, 0, 0, 2), Ipv4Addr::new(9, 9, 9, 9)]
        );
    }
}
