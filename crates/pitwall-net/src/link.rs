//! Links and addresses over rtnetlink: the bridge and its gateway address, bridge ports
//! (attached, up, isolated), deleting links. The netlink socket lives in the network
//! namespace of the thread that calls [`Netlink::connect`].

use std::net::{IpAddr, Ipv4Addr};

use futures::TryStreamExt as _;
use rtnetlink::packet_route::address::{AddressAttribute, AddressMessage};
use rtnetlink::packet_route::link::{InfoKind, LinkAttribute, LinkInfo, LinkMessage};
use rtnetlink::packet_route::AddressFamily;
use rtnetlink::{Handle, LinkBridge, LinkBridgePort, LinkUnspec};
use tracing::{debug, info};

use crate::NetError;

/// What we need to know of an existing link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkState {
    pub index: u32,
    /// `bridge`, `tun`, `veth`...; `None` for links without a kind (e.g. physical ones).
    pub kind: Option<String>,
    /// Index of the link this one is a port of.
    pub controller: Option<u32>,
}

/// An rtnetlink connection. Needs a tokio runtime; the connection task ends on drop.
pub struct Netlink {
    handle: Handle,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Netlink {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn is_errno(e: &rtnetlink::Error, errno: i32) -> bool {
    matches!(e, rtnetlink::Error::NetlinkError(m) if m.to_io().raw_os_error() == Some(errno))
}

impl Netlink {
    /// Opens a netlink socket in the calling thread's network namespace.
    pub fn connect() -> Result<Netlink, NetError> {
        let (conn, handle, _) = rtnetlink::new_connection()
            .map_err(|e| NetError::io("open netlink socket", "NETLINK_ROUTE", e))?;
        let task = tokio::spawn(conn);
        Ok(Netlink { handle, task })
    }

    /// The link called `name`, if it exists.
    pub async fn link(&self, name: &str) -> Result<Option<LinkState>, NetError> {
        let mut links = self.handle.link().get().match_name(name).execute();
        match links.try_next().await {
            Ok(Some(msg)) => Ok(Some(link_state(&msg))),
            Ok(None) => Ok(None),
            Err(e) if is_errno(&e, nix::libc::ENODEV) => Ok(None),
            Err(e) => Err(NetError::netlink("look up link", name, e)),
        }
    }

    async fn require_link(&self, what: &'static str, name: &str) -> Result<LinkState, NetError> {
        self.link(name).await?.ok_or_else(|| NetError::Link {
            what,
            name: name.to_string(),
            why: "no such device".into(),
        })
    }

    async fn set_up(&self, index: u32, name: &str) -> Result<(), NetError> {
        self.handle
            .link()
            .change(LinkUnspec::new_with_index(index).up().build())
            .execute()
            .await
            .map_err(|e| NetError::netlink("set link up", name, e))
    }

    /// Creates bridge `name` if missing and sets it up; returns its index. A device of that
    /// name that is not a bridge is an error.
    pub async fn ensure_bridge(&self, name: &str) -> Result<u32, NetError> {
        let state = match self.link(name).await? {
            Some(state) => state,
            None => {
                info!(bridge = name, "creating bridge");
                self.handle
                    .link()
                    .add(LinkBridge::new(name).build())
                    .execute()
                    .await
                    .map_err(|e| NetError::netlink("create bridge", name, e))?;
                self.require_link("create bridge", name).await?
            }
        };
        if state.kind.as_deref() != Some("bridge") {
            return Err(NetError::Link {
                what: "use as bridge",
                name: name.to_string(),
                why: format!(
                    "the device exists and is a {} rather than a bridge: delete it or configure another bridge name",
                    state.kind.as_deref().unwrap_or("plain device")
                ),
            });
        }
        self.set_up(state.index, name).await?;
        Ok(state.index)
    }

    /// The IPv4 addresses (with prefix length) on link `index`.
    pub async fn ipv4_addresses(&self, index: u32) -> Result<Vec<(Ipv4Addr, u8)>, NetError> {
        Ok(self
            .ipv4_address_messages(index)
            .await?
            .into_iter()
            .map(|(addr, prefix, _)| (addr, prefix))
            .collect())
    }

    async fn ipv4_address_messages(
        &self,
        index: u32,
    ) -> Result<Vec<(Ipv4Addr, u8, AddressMessage)>, NetError> {
        let msgs: Vec<AddressMessage> = self
            .handle
            .address()
            .get()
            .set_link_index_filter(index)
            .execute()
            .try_collect()
            .await
            .map_err(|e| NetError::netlink("list addresses of link", &index.to_string(), e))?;
        Ok(msgs
            .into_iter()
            .filter(|m| m.header.index == index && m.header.family == AddressFamily::Inet)
            .filter_map(|m| {
                let addr = m.attributes.iter().find_map(|a| match a {
                    AddressAttribute::Local(IpAddr::V4(ip)) => Some(*ip),
                    _ => None,
                })?;
                Some((addr, m.header.prefix_len, m))
            })
            .collect())
    }

    /// Makes `addr/prefix_len` the only IPv4 address of link `index` (`name` for messages):
    /// other IPv4 addresses on it are removed, the right one added if missing.
    pub async fn ensure_only_ipv4(
        &self,
        index: u32,
        name: &str,
        addr: Ipv4Addr,
        prefix_len: u8,
    ) -> Result<(), NetError> {
        let mut present = false;
        for (ip, prefix, msg) in self.ipv4_address_messages(index).await? {
            if ip == addr && prefix == prefix_len {
                present = true;
                continue;
            }
            info!(link = name, address = %ip, prefix, "removing stray address");
            self.handle
                .address()
                .del(msg)
                .execute()
                .await
                .map_err(|e| NetError::netlink("remove stray address from", name, e))?;
        }
        if !present {
            info!(link = name, address = %addr, prefix_len, "adding address");
            self.handle
                .address()
                .add(index, IpAddr::V4(addr), prefix_len)
                .execute()
                .await
                .map_err(|e| NetError::netlink("add address to", name, e))?;
        }
        Ok(())
    }

    /// Makes `port` an isolated, up port of `bridge`. Isolated ports cannot exchange frames
    /// with each other, only with non-isolated ports and the bridge itself (the gateway).
    pub async fn attach_port(&self, bridge: &str, port: &str) -> Result<(), NetError> {
        let br = self.link(bridge).await?.ok_or_else(|| NetError::Link {
            what: "attach to bridge",
            name: port.to_string(),
            why: format!("bridge {bridge} does not exist (set up the host network first)"),
        })?;
        let p = self.require_link("attach to bridge", port).await?;
        if p.controller != Some(br.index) {
            debug!(bridge, port, "attaching port");
            self.handle
                .link()
                .change(
                    LinkUnspec::new_with_index(p.index)
                        .controller(br.index)
                        .up()
                        .build(),
                )
                .execute()
                .await
                .map_err(|e| NetError::netlink("attach to bridge", port, e))?;
        } else {
            self.set_up(p.index, port).await?;
        }
        // Port options need the port already enslaved: a second message.
        self.handle
            .link()
            .change(LinkBridgePort::new(p.index).isolated(true).build())
            .execute()
            .await
            .map_err(|e| NetError::netlink("isolate bridge port", port, e))?;
        Ok(())
    }

    /// Deletes link `name`; `false` if there was none.
    pub async fn delete_link(&self, name: &str) -> Result<bool, NetError> {
        let Some(state) = self.link(name).await? else {
            return Ok(false);
        };
        match self.handle.link().del(state.index).execute().await {
            Ok(()) => Ok(true),
            Err(e) if is_errno(&e, nix::libc::ENODEV) => Ok(false),
            Err(e) => Err(NetError::netlink("delete link", name, e)),
        }
    }
}

fn link_state(msg: &LinkMessage) -> LinkState {
    let mut kind = None;
    let mut controller = None;
    for attr in &msg.attributes {
        match attr {
            LinkAttribute::LinkInfo(infos) => {
                for info in infos {
                    if let LinkInfo::Kind(k) = info {
                        kind = Some(match k {
                            InfoKind::Bridge => "bridge".to_string(),
                            InfoKind::Tun => "tun".to_string(),
                            InfoKind::Veth => "veth".to_string(),
                            other => other.to_string(),
                        });
                    }
                }
            }
            LinkAttribute::Controller(idx) => controller = Some(*idx),
            _ => {}
        }
    }
    LinkState {
        index: msg.header.index,
        kind,
        controller,
    }
}

/// Attaches `port` to `bridge`, up and isolated: what [`crate::HostNetwork`] does with each
/// VM's TAP, usable for any port (tests attach veth ends with it).
pub async fn attach_to_bridge(bridge: &str, port: &str) -> Result<(), NetError> {
    Netlink::connect()?.attach_port(bridge, port).await
}
