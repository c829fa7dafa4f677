//! Host network configuration: plain serde, defaults that work on a fresh machine.

use std::net::Ipv4Addr;
use std::path::PathBuf;

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

use crate::NetError;

/// Host networking settings (the `[net]` section of the host's config).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NetConfig {
    /// False: the host runs VMs without any network interface (the daemon reads this; the
    /// library itself ignores it).
    pub enabled: bool,
    /// Bridge device the VMs' TAPs are attached to.
    pub bridge: String,
    /// The VM subnet, shared by all hosts (the bridge gets the gateway address in it).
    pub subnet: Ipv4Net,
    /// Gateway address (the bridge's); default: the subnet's first host address.
    pub gateway: Option<Ipv4Addr>,
    /// The part of `subnet` this host hands out (multi-host: each host owns a sub-range);
    /// default: all of `subnet`.
    pub pool: Option<Ipv4Net>,
    /// Interface VM traffic leaves through, masqueraded; default: any interface but the bridge.
    pub uplink: Option<String>,
    /// Masquerade VM traffic leaving the host and enable `net.ipv4.ip_forward`.
    pub masquerade: bool,
    /// DNS servers handed to guests.
    pub dns: Vec<Ipv4Addr>,
    /// Directory of the IPAM file (`ipam.json`) and its lock.
    pub state_dir: PathBuf,
    /// The `nft` program.
    pub nft: PathBuf,
    /// Name of Pitwall's own nftables table (family `inet`).
    pub nft_table: String,
    /// Owner (uid) of the TAP devices, so an unprivileged VMM can open them.
    pub tap_owner: Option<u32>,
    /// Network namespace (a name under `/var/run/netns`, or a path) holding the bridge, the
    /// TAPs and the firewall table, in which the VMMs then run; default: the host's own.
    pub netns: Option<String>,
}

impl Default for NetConfig {
    fn default() -> Self {
        NetConfig {
            enabled: true,
            bridge: "fcbr0".into(),
            subnet: Ipv4Net::new(Ipv4Addr::new(172, 30, 0, 0), 16).unwrap_or_default(),
            gateway: None,
            pool: None,
            uplink: None,
            masquerade: true,
            dns: Vec::new(),
            state_dir: PathBuf::from("/var/lib/pitwall/net"),
            nft: PathBuf::from("nft"),
            nft_table: "pitwall".into(),
            tap_owner: None,
            netns: None,
        }
    }
}

/// Checks a Linux interface name: 1 to 15 bytes, no `/`, whitespace or `:`.
pub(crate) fn check_ifname(what: &str, name: &str) -> Result<(), NetError> {
    if name.is_empty()
        || name.len() > 15
        || name == "."
        || name == ".."
        || name
            .chars()
            .any(|c| c == '/' || c == ':' || c.is_whitespace())
    {
        return Err(NetError::Config(format!(
            "{what} {name:?} is not a valid interface name (1 to 15 bytes, no '/', ':' or spaces)"
        )));
    }
    Ok(())
}

impl NetConfig {
    /// The subnet with host bits cleared (`172.30.0.1/16` is read as `172.30.0.0/16`).
    pub fn network(&self) -> Ipv4Net {
        self.subnet.trunc()
    }

    /// The gateway: configured, or the subnet's first host address.
    pub fn gateway(&self) -> Ipv4Addr {
        self.gateway
            .unwrap_or_else(|| Ipv4Addr::from(u32::from(self.network().network()) + 1))
    }

    /// What VM `vm_id` holding address `ip` is wired with under this configuration.
    pub fn nic(&self, vm_id: crate::VmId, ip: Ipv4Addr) -> crate::VmNic {
        crate::VmNic {
            vm_id,
            tap: crate::tap_name(vm_id),
            mac: crate::mac_address(vm_id),
            ip,
            prefix_len: self.network().prefix_len(),
            gateway: self.gateway(),
            dns: self.dns.clone(),
        }
    }

    /// Checks names and that gateway and pool lie inside the subnet.
    pub fn validate(&self) -> Result<(), NetError> {
        check_ifname("bridge", &self.bridge)?;
        if let Some(uplink) = &self.uplink {
            check_ifname("uplink", uplink)?;
            if uplink == &self.bridge {
                return Err(NetError::Config(format!(
                    "uplink {uplink:?} is the bridge itself: name the interface traffic leaves through"
                )));
            }
        }
        let net = self.network();
        if net.prefix_len() > 30 {
            return Err(NetError::Config(format!(
                "subnet {net} is too small: a /30 at most (gateway plus VMs)"
            )));
        }
        let gw = self.gateway();
        if !net.contains(&gw) || gw == net.network() || gw == net.broadcast() {
            return Err(NetError::Config(format!(
                "gateway {gw} is not a host address of subnet {net}"
            )));
        }
        if let Some(pool) = self.pool {
            if !net.contains(&pool.trunc()) {
                return Err(NetError::Config(format!(
                    "pool {pool} is not inside subnet {net}"
                )));
            }
        }
        if self.nft_table.is_empty()
            || !self
                .nft_table
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            return Err(NetError::Config(format!(
                "nft_table {:?} must be letters, digits, '_' or '-'",
                self.nft_table
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_the_seed_network() {
        let c = NetConfig::default();
        c.validate().expect("default config is valid");
        assert_eq!(c.bridge, "fcbr0");
        assert_eq!(c.gateway(), Ipv4Addr::new(172, 30, 0, 1));
        assert_eq!(c.network().to_string(), "172.30.0.0/16");
    }

    #[test]
    fn reads_toml_like_input_and_rejects_unknown_fields() {
        let c: NetConfig = serde_json::from_str(
            r#"{"subnet":"10.9.0.1/24","pool":"10.9.0.128/25","uplink":"eth0"}"#,
        )
        .expect("parse");
        assert_eq!(c.gateway(), Ipv4Addr::new(10, 9, 0, 1));
        c.validate().expect("valid");
        assert!(serde_json::from_str::<NetConfig>(r#"{"brige":"x"}"#).is_err());
    }

    #[test]
    fn rejects_pool_outside_subnet_and_long_names() {
        let c = NetConfig {
            pool: Some("10.0.0.0/24".parse().expect("net")),
            ..NetConfig::default()
        };
        assert!(c.validate().is_err());
        let c = NetConfig {
            bridge: "a-very-long-bridge-name".into(),
            ..NetConfig::default()
        };
        assert!(c.validate().is_err());
    }
}
