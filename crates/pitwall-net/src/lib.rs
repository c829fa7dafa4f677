//! Host networking for Pitwall VMs: the bridge (`fcbr0`, gateway `172.30.0.1/16` by default),
//! one persistent TAP device per VM attached to it, the VM address pool (IPAM) and the
//! firewall (NAT for egress, no VM-to-VM traffic).
//!
//! What it owns:
//! - the bridge named in [`NetConfig::bridge`] and its IPv4 address;
//! - TAP devices named `pw` + 12 hex digits ([`tap_name`]), one per VM;
//! - the nftables table named in [`NetConfig::nft_table`] (`inet pitwall`), rebuilt whole;
//! - `net.ipv4.ip_forward` of its network namespace (set to 1 when masquerading);
//! - the IPAM file `<state_dir>/ipam.json` and its lock `<state_dir>/ipam.lock`.
//!
//! What it must not do: touch any other interface, address, route or nftables table (the
//! uplink is only named in rules, never configured), parse the output of `ip`, or know
//! anything about VMMs: it hands out a [`VmNic`] and QEMU/Firecracker open the TAP by name
//! (`-netdev tap,ifname=NAME,script=no,downscript=no,vhost=off`).
//!
//! Isolation is done twice: at L2 every VM port is a bridge port with `isolated on` (isolated
//! ports only talk to non-isolated ones, i.e. the bridge itself: the gateway), and at L3 the
//! forward chain drops anything entering and leaving through the bridge, so a VM cannot reach
//! another by routing through the host either.
//!
//! Side effects sit behind the [`Network`] trait: [`HostNetwork`] is the real thing
//! (rtnetlink, `nft -j`, TAP ioctls, a file), [`NetnsNetwork`] runs it inside a named network
//! namespace, [`FakeNetwork`] is the in-memory one for other crates' unit tests. Hand-written: the TAP ioctls ([`tap`]), because no well-kept crate
//! creates *persistent* TAPs without holding them open (rtnetlink cannot create TUN/TAP
//! devices: the kernel refuses `RTM_NEWLINK` for them).

mod config;
mod error;
mod fake;
pub mod firewall;
mod host;
mod ids;
pub mod ipam;
pub mod link;
mod netns;
#[allow(unsafe_code)]
pub mod tap;

use std::net::Ipv4Addr;

use async_trait::async_trait;
pub use pitwall_core::VmId;

pub use config::NetConfig;
pub use error::NetError;
pub use fake::FakeNetwork;
pub use host::HostNetwork;
pub use ids::{mac_address, tap_name, MacAddr};
pub use netns::{netns_path, NetnsNetwork};

/// The real [`Network`] for `config`: [`HostNetwork`], run inside [`NetConfig::netns`] when
/// one is set.
pub fn open(config: NetConfig) -> Result<std::sync::Arc<dyn Network>, NetError> {
    let netns = config.netns.clone();
    let host = HostNetwork::new(config)?;
    Ok(match netns {
        Some(ns) => std::sync::Arc::new(NetnsNetwork::new(host, &ns)?),
        None => std::sync::Arc::new(host),
    })
}

/// What a VM needs to be wired: the TAP its VMM opens and the guest's IPv4 configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmNic {
    pub vm_id: VmId,
    /// TAP device name on the host (at most 15 bytes).
    pub tap: String,
    /// The guest NIC's MAC address (locally administered, unicast).
    pub mac: MacAddr,
    /// The guest's address.
    pub ip: Ipv4Addr,
    /// Prefix length of the VM subnet (16 for `172.30.0.0/16`).
    pub prefix_len: u8,
    /// The guest's default gateway: the bridge's address.
    pub gateway: Ipv4Addr,
    /// DNS servers for the guest (may be empty).
    pub dns: Vec<Ipv4Addr>,
}

/// Host networking for VMs. All operations are idempotent.
#[async_trait]
pub trait Network: Send + Sync + 'static {
    /// Bridge with its gateway address, firewall table, IP forwarding: created or fixed.
    async fn ensure_host_network(&self) -> Result<(), NetError>;
    /// Allocate the VM's address (the same one again for the same VM), create its TAP and
    /// attach it, isolated, to the bridge.
    async fn attach_vm(&self, vm_id: VmId) -> Result<VmNic, NetError>;
    /// Remove the VM's TAP and release its address. Detaching an unknown VM is fine.
    async fn detach_vm(&self, vm_id: VmId) -> Result<(), NetError>;
    /// The NIC of a VM that holds an address (after a restart, for reattaching), if any.
    async fn nic(&self, vm_id: VmId) -> Result<Option<VmNic>, NetError>;
}
