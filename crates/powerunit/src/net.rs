//! The guest's network: loopback up, then the NIC the config names (by MAC, renamed to
//! `eth0`) with its address, its default route, and `/etc/hostname`, `/etc/hosts`,
//! `/etc/resolv.conf` written from the same config.
//!
//! The kernel is driven over synchronous rtnetlink ([`Netlink`]: `netlink-sys` for the socket,
//! `netlink-packet-route` for the messages — the libraries `rtnetlink` is built on, without
//! its async runtime, which PID 1 does not carry). Nothing is shelled out: the image may have
//! no `ip`. Interfaces are found through `/sys/class/net/*/address`, never by name or order.
//! Every kernel call goes through the [`Links`] trait so the sequence is unit-tested with a
//! recording fake over a fake `/sys/class/net` tree.
//!
//! IPv4 only for now: an IPv6 address or gateway in the config is refused with a clear error.

use std::fs::OpenOptions;
use std::io::Write as _;
use std::net::{IpAddr, Ipv4Addr};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use netlink_packet_core::{
    NetlinkBuffer, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_CREATE, NLM_F_REPLACE,
    NLM_F_REQUEST,
};
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::link::{LinkAttribute, LinkFlags, LinkMessage};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};
use pitwall_proto::v1::GuestNetwork;

use crate::err;
use crate::error::{Context, Result};
use crate::say;

/// The name the VM's NIC gets, whatever the kernel called it.
pub const NIC_NAME: &str = "eth0";

/// A validated [`GuestNetwork`]: what [`bring_up`] and [`write_etc`] do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// Lower-case `aa:bb:cc:dd:ee:ff`, as sysfs prints it.
    pub mac: String,
    pub address: Ipv4Addr,
    pub prefix: u8,
    pub gateway: Ipv4Addr,
    /// Nameservers, never empty (the gateway when the config names none).
    pub dns: Vec<IpAddr>,
    /// Extra `/etc/hosts` lines.
    pub hosts: Vec<(IpAddr, Vec<String>)>,
}

impl Plan {
    /// Check everything in `net` before anything is touched.
    pub fn from_config(net: &GuestNetwork) -> Result<Self> {
        let bad = |what: &str, why: String| err!("network config: {what}: {why}");
        let mac = parse_mac(&net.mac).map_err(|why| bad("mac", why))?;
        let (address, prefix) = parse_cidr(&net.address).map_err(|why| bad("address", why))?;
        let gateway = parse_v4(&net.gateway).map_err(|why| bad("gateway", why))?;
        if gateway == address {
            return Err(bad("gateway", format!("{gateway} is the VM's own address")));
        }
        if !same_subnet(address, gateway, prefix) {
            return Err(bad(
                "gateway",
                format!(
                    "{gateway} is outside {}/{prefix}: the VM could not reach it",
                    network_of(address, prefix)
                ),
            ));
        }
        let mut dns = Vec::with_capacity(net.dns.len());
        for d in &net.dns {
            dns.push(
                d.trim()
                    .parse::<IpAddr>()
                    .map_err(|_| bad("dns", format!("{d:?} is not an IP address")))?,
            );
        }
        if dns.is_empty() {
            dns.push(IpAddr::V4(gateway));
        }
        let mut hosts = Vec::with_capacity(net.hosts.len());
        for line in &net.hosts {
            let mut words = line.split_whitespace();
            let ip = words
                .next()
                .and_then(|w| w.parse::<IpAddr>().ok())
                .ok_or_else(|| {
                    bad(
                        "hosts",
                        format!("{line:?} does not start with an IP address"),
                    )
                })?;
            let names: Vec<String> = words.map(str::to_string).collect();
            if names.is_empty() {
                return Err(bad("hosts", format!("{line:?} names no host")));
            }
            if let Some(n) = names.iter().find(|n| !is_host_name(n)) {
                return Err(bad("hosts", format!("{n:?} is not a host name")));
            }
            hosts.push((ip, names));
        }
        Ok(Self {
            mac,
            address,
            prefix,
            gateway,
            dns,
            hosts,
        })
    }
}

/// `"52:54:00:AB:cd:01"` → `"52:54:00:ab:cd:01"`.
fn parse_mac(s: &str) -> std::result::Result<String, String> {
    let parts: Vec<&str> = s.split(':').collect();
    let ok = parts.len() == 6
        && parts
            .iter()
            .all(|p| p.len() == 2 && p.bytes().all(|b| b.is_ascii_hexdigit()));
    if !ok {
        return Err(format!(
            "{s:?} is not a MAC address (six hex pairs like 52:54:00:12:34:56)"
        ));
    }
    Ok(s.to_ascii_lowercase())
}

fn parse_v4(s: &str) -> std::result::Result<Ipv4Addr, String> {
    match s.trim().parse::<IpAddr>() {
        Ok(IpAddr::V4(a)) => Ok(a),
        Ok(IpAddr::V6(_)) => Err(format!("{s:?} is IPv6; only IPv4 is supported")),
        Err(_) => Err(format!("{s:?} is not an IPv4 address")),
    }
}

/// `"172.30.0.5/16"` → (172.30.0.5, 16). The prefix is required: a bare address would
/// silently become a /32 that reaches no gateway.
pub fn parse_cidr(s: &str) -> std::result::Result<(Ipv4Addr, u8), String> {
    let Some((addr, prefix)) = s.trim().split_once('/') else {
        return Err(format!(
            "{s:?} has no prefix length (CIDR like 172.30.0.5/16)"
        ));
    };
    let addr = parse_v4(addr)?;
    let prefix: u8 = prefix
        .parse()
        .ok()
        .filter(|p| (1..=32).contains(p))
        .ok_or_else(|| format!("{s:?}: prefix length must be 1 to 32"))?;
    if addr.is_unspecified() || addr.is_broadcast() || addr.is_multicast() || addr.is_loopback() {
        return Err(format!("{addr} cannot be a VM's address"));
    }
    Ok((addr, prefix))
}

fn mask(prefix: u8) -> u32 {
    u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0)
}

fn network_of(a: Ipv4Addr, prefix: u8) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(a) & mask(prefix))
}

fn same_subnet(a: Ipv4Addr, b: Ipv4Addr, prefix: u8) -> bool {
    network_of(a, prefix) == network_of(b, prefix)
}

/// RFC 1123 labels joined by dots: what can stand in `/etc/hosts`.
fn is_host_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 253
        && n.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

/// What the kernel is asked to do (one method per rtnetlink request).
pub trait Links {
    fn set_up(&mut self, index: u32) -> Result<()>;
    /// The link must be down (a new NIC is).
    fn rename(&mut self, index: u32, name: &str) -> Result<()>;
    fn add_address(&mut self, index: u32, address: Ipv4Addr, prefix: u8) -> Result<()>;
    fn add_default_route(&mut self, index: u32, gateway: Ipv4Addr) -> Result<()>;
}

/// One network interface as sysfs shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interface {
    pub name: String,
    pub index: u32,
    /// Lower-case, as sysfs prints it.
    pub mac: String,
}

/// The interfaces under `sys_class_net` (`/sys/class/net`), sorted by name.
pub fn interfaces(sys_class_net: &Path) -> Vec<Interface> {
    let Ok(dir) = std::fs::read_dir(sys_class_net) else {
        return Vec::new();
    };
    let read = |p: PathBuf| std::fs::read_to_string(p).map(|s| s.trim().to_string());
    let mut found: Vec<Interface> = dir
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let index = read(e.path().join("ifindex")).ok()?.parse().ok()?;
            let mac = read(e.path().join("address")).ok()?.to_ascii_lowercase();
            Some(Interface { name, index, mac })
        })
        .collect();
    found.sort_by(|a, b| a.name.cmp(&b.name));
    found
}

/// The interface whose MAC is `mac`, waiting up to `timeout` for the driver to register it.
pub fn find_nic(sys_class_net: &Path, mac: &str, timeout: Duration) -> Result<Interface> {
    let deadline = Instant::now() + timeout;
    loop {
        let all = interfaces(sys_class_net);
        if let Some(nic) = all.iter().find(|i| i.mac == mac) {
            return Ok(nic.clone());
        }
        if Instant::now() >= deadline {
            let seen: Vec<String> = all
                .iter()
                .map(|i| format!("{} {}", i.name, i.mac))
                .collect();
            return Err(err!(
                "no network interface has MAC {mac} after {timeout:?} (found: {}); the host \
                 attached no NIC with that MAC, or the virtio_net module did not load",
                if seen.is_empty() {
                    "none".to_string()
                } else {
                    seen.join(", ")
                }
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Loopback up, then (with a plan) the VM's NIC: found by MAC, renamed to [`NIC_NAME`],
/// its address, up, the default route via the gateway.
pub fn bring_up(
    plan: Option<&Plan>,
    sys_class_net: &Path,
    links: &mut dyn Links,
    timeout: Duration,
) -> Result<()> {
    let lo = interfaces(sys_class_net)
        .into_iter()
        .find(|i| i.name == "lo")
        .ok_or_else(|| err!("no loopback interface under {}", sys_class_net.display()))?;
    links.set_up(lo.index)?;
    say!("lo up");
    let Some(plan) = plan else {
        say!("no network in the config: loopback only");
        return Ok(());
    };
    let nic = find_nic(sys_class_net, &plan.mac, timeout)?;
    if nic.name != NIC_NAME {
        links.rename(nic.index, NIC_NAME)?;
        say!("{} ({}) renamed {NIC_NAME}", nic.name, nic.mac);
    }
    links.add_address(nic.index, plan.address, plan.prefix)?;
    links.set_up(nic.index)?;
    links.add_default_route(nic.index, plan.gateway)?;
    say!(
        "{NIC_NAME} {}/{} via {}",
        plan.address,
        plan.prefix,
        plan.gateway
    );
    Ok(())
}

/// `/etc/hosts`: localhost, the VM's own address → hostname, then the config's entries.
pub fn hosts_file(hostname: &str, plan: &Plan) -> String {
    let mut s = String::from("# Written by powerunit from the VM's config.\n");
    s.push_str("127.0.0.1\tlocalhost\n");
    s.push_str("::1\tlocalhost ip6-localhost ip6-loopback\n");
    s.push_str(&format!("{}\t{hostname}\n", plan.address));
    for (ip, names) in &plan.hosts {
        s.push_str(&format!("{ip}\t{}\n", names.join(" ")));
    }
    s
}

/// `/etc/resolv.conf`: one `nameserver` line per server, in order.
pub fn resolv_conf(plan: &Plan) -> String {
    let mut s = String::from("# Written by powerunit from the VM's config.\n");
    for d in &plan.dns {
        s.push_str(&format!("nameserver {d}\n"));
    }
    s
}

/// Write `/etc/hostname` and, with a plan, `/etc/hosts` and `/etc/resolv.conf` under `etc`.
/// Each file is replaced atomically (a temporary file renamed over it). These files are a
/// convenience of the image, not the network itself: a write the image's `/etc` refuses
/// (not a directory, read-only) is reported on the console and skipped, never fatal.
pub fn write_etc(etc: &Path, hostname: &str, plan: Option<&Plan>) {
    if etc.exists() && !etc.is_dir() {
        say!(
            "{} is not a directory: not writing hostname, hosts, resolv.conf",
            etc.display()
        );
        return;
    }
    let mut files = vec![("hostname", format!("{hostname}\n"))];
    if let Some(plan) = plan {
        files.push(("hosts", hosts_file(hostname, plan)));
        files.push(("resolv.conf", resolv_conf(plan)));
    }
    if let Err(e) = std::fs::create_dir_all(etc) {
        say!("cannot create {}: {e}", etc.display());
        return;
    }
    for (name, text) in files {
        if let Err(e) = replace_file(&etc.join(name), text.as_bytes()) {
            say!("{e}");
        }
    }
    if let Some(plan) = plan {
        let dns: Vec<String> = plan.dns.iter().map(|d| d.to_string()).collect();
        say!(
            "hosts and resolv.conf written (nameservers {})",
            dns.join(" ")
        );
    }
}

/// Write `path` as a new file renamed over the old one. When `path` is a symlink (images
/// often have `/etc/resolv.conf` → `../run/systemd/resolve/stub-resolv.conf`, which points
/// nowhere in a guest without systemd-resolved), the rename replaces the symlink itself,
/// not its target: the guest gets a plain file.
fn replace_file(path: &Path, bytes: &[u8]) -> Result<()> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.powerunit"));
    let written = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o644)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()
    })();
    written.context(|| format!("write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        err!("replace {}: {e}", path.display())
    })
}

/// [`Links`] over a synchronous `NETLINK_ROUTE` socket: each request waits for its ACK.
pub struct Netlink {
    socket: Socket,
    seq: u32,
}

impl Netlink {
    pub fn open() -> Result<Self> {
        let mut socket = Socket::new(NETLINK_ROUTE).context(|| "netlink socket".to_string())?;
        socket
            .bind_auto()
            .context(|| "bind netlink socket".to_string())?;
        socket
            .connect(&SocketAddr::new(0, 0))
            .context(|| "connect netlink socket".to_string())?;
        Ok(Self { socket, seq: 0 })
    }

    /// Send `msg` with `flags` and wait for the kernel's ACK or error.
    fn request(&mut self, msg: RouteNetlinkMessage, flags: u16) -> std::io::Result<()> {
        self.seq = self.seq.wrapping_add(1);
        let mut req = NetlinkMessage::from(msg);
        req.header.flags = flags;
        req.header.sequence_number = self.seq;
        req.finalize();
        let mut out = vec![0u8; req.buffer_len()];
        req.serialize(&mut out);
        self.socket.send(&out, 0)?;

        let mut buf: Vec<u8> = Vec::with_capacity(64 * 1024);
        loop {
            buf.clear();
            self.socket.recv(&mut buf, 0)?;
            let n = buf.len();
            let mut at = 0;
            while at < n {
                let frame = &buf[at..n];
                let len = NetlinkBuffer::new_checked(frame)
                    .map(|b| b.length() as usize)
                    .map_err(|e| std::io::Error::other(format!("netlink reply: {e}")))?;
                if len == 0 {
                    break;
                }
                let reply = NetlinkMessage::<RouteNetlinkMessage>::deserialize(
                    &frame[..len.min(frame.len())],
                )
                .map_err(|e| std::io::Error::other(format!("netlink reply: {e}")))?;
                if reply.header.sequence_number == self.seq {
                    if let NetlinkPayload::Error(e) = reply.payload {
                        return match e.code {
                            None => Ok(()),
                            Some(_) => Err(e.to_io()),
                        };
                    }
                }
                // Netlink messages are 4-byte aligned.
                at += (len + 3) & !3;
            }
        }
    }
}

const ACK: u16 = NLM_F_REQUEST | NLM_F_ACK;

impl Links for Netlink {
    fn set_up(&mut self, index: u32) -> Result<()> {
        let mut m = LinkMessage::default();
        m.header.index = index;
        m.header.flags = LinkFlags::Up;
        m.header.change_mask = LinkFlags::Up;
        self.request(RouteNetlinkMessage::SetLink(m), ACK)
            .context(|| format!("set link {index} up"))
    }

    fn rename(&mut self, index: u32, name: &str) -> Result<()> {
        let mut m = LinkMessage::default();
        m.header.index = index;
        m.attributes.push(LinkAttribute::IfName(name.to_string()));
        self.request(RouteNetlinkMessage::SetLink(m), ACK)
            .context(|| format!("rename link {index} to {name}"))
    }

    fn add_address(&mut self, index: u32, address: Ipv4Addr, prefix: u8) -> Result<()> {
        let mut m = AddressMessage::default();
        m.header.family = AddressFamily::Inet;
        m.header.prefix_len = prefix;
        m.header.index = index;
        let ip = IpAddr::V4(address);
        m.attributes.push(AddressAttribute::Local(ip));
        m.attributes.push(AddressAttribute::Address(ip));
        if prefix < 31 {
            let brd = Ipv4Addr::from(u32::from(address) | !mask(prefix));
            m.attributes.push(AddressAttribute::Broadcast(brd));
        }
        // REPLACE: configuring again (or over a kernel `ip=` address) is not an error.
        let flags = ACK | NLM_F_CREATE | NLM_F_REPLACE;
        self.request(RouteNetlinkMessage::NewAddress(m), flags)
            .context(|| format!("add address {address}/{prefix} to link {index}"))
    }

    fn add_default_route(&mut self, index: u32, gateway: Ipv4Addr) -> Result<()> {
        let mut m = RouteMessage::default();
        m.header.address_family = AddressFamily::Inet;
        m.header.table = RouteHeader::RT_TABLE_MAIN;
        m.header.protocol = RouteProtocol::Boot;
        m.header.scope = RouteScope::Universe;
        m.header.kind = RouteType::Unicast;
        m.attributes
            .push(RouteAttribute::Gateway(RouteAddress::Inet(gateway)));
        m.attributes.push(RouteAttribute::Oif(index));
        let flags = ACK | NLM_F_CREATE | NLM_F_REPLACE;
        self.request(RouteNetlinkMessage::NewRoute(m), flags)
            .context(|| format!("add default route via {gateway} on link {index}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> GuestNetwork {
        GuestNetwork {
            mac: "52:54:00:AB:cd:01".into(),
            address: "172.30.0.5/16".into(),
            gateway: "172.30.0.1".into(),
            dns: vec![],
            hosts: vec![],
        }
    }

    fn plan() -> Plan {
        Plan::from_config(&config()).unwrap()
    }

    #[derive(Default)]
    struct FakeLinks {
        ops: Vec<String>,
        fail: Option<&'static str>,
    }

    impl FakeLinks {
        fn op(&mut self, op: String) -> Result<()> {
            if self.fail.is_some_and(|f| op.starts_with(f)) {
                return Err(err!("{op}: Operation not permitted (os error 1)"));
            }
            self.ops.push(op);
            Ok(())
        }
    }

    impl Links for FakeLinks {
        fn set_up(&mut self, index: u32) -> Result<()> {
            self.op(format!("up {index}"))
        }
        fn rename(&mut self, index: u32, name: &str) -> Result<()> {
            self.op(format!("rename {index} {name}"))
        }
        fn add_address(&mut self, index: u32, address: Ipv4Addr, prefix: u8) -> Result<()> {
            self.op(format!("addr {index} {address}/{prefix}"))
        }
        fn add_default_route(&mut self, index: u32, gateway: Ipv4Addr) -> Result<()> {
            self.op(format!("route {index} via {gateway}"))
        }
    }

    /// A `/sys/class/net` with the given (name, ifindex, MAC) entries.
    fn sys(links: &[(&str, u32, &str)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for (name, index, mac) in links {
            let d = dir.path().join(name);
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join("ifindex"), format!("{index}\n")).unwrap();
            std::fs::write(d.join("address"), format!("{mac}\n")).unwrap();
        }
        dir
    }

    #[test]
    fn a_cidr_gives_address_and_prefix() {
        assert_eq!(
            parse_cidr("172.30.0.5/16").unwrap(),
            (Ipv4Addr::new(172, 30, 0, 5), 16)
        );
        assert_eq!(
            parse_cidr(" 10.0.0.2/32 ").unwrap(),
            (Ipv4Addr::new(10, 0, 0, 2), 32)
        );
    }

    #[test]
    fn a_cidr_without_a_valid_prefix_or_v4_address_is_refused() {
        for bad in [
            "172.30.0.5",
            "172.30.0.5/",
            "172.30.0.5/0",
            "172.30.0.5/33",
            "172.30.0/16",
            "fd00::5/64",
            "0.0.0.0/8",
            "127.0.0.1/8",
        ] {
            assert!(parse_cidr(bad).is_err(), "{bad} accepted");
        }
        assert!(parse_cidr("fd00::5/64").unwrap_err().contains("IPv4"));
    }

    #[test]
    fn the_plan_lowercases_the_mac_and_defaults_dns_to_the_gateway() {
        let p = plan();
        assert_eq!(p.mac, "52:54:00:ab:cd:01");
        assert_eq!(p.dns, [IpAddr::V4(Ipv4Addr::new(172, 30, 0, 1))]);
    }

    #[test]
    fn a_gateway_outside_the_subnet_is_a_config_error() {
        let e = Plan::from_config(&GuestNetwork {
            gateway: "10.0.0.1".into(),
            ..config()
        })
        .unwrap_err();
        assert!(e.0.contains("outside 172.30.0.0/16"), "{e}");
    }

    #[test]
    fn bad_mac_dns_or_hosts_entries_are_config_errors_naming_the_field() {
        let cases = [
            GuestNetwork {
                mac: "52:54:00:ab:cd".into(),
                ..config()
            },
            GuestNetwork {
                dns: vec!["dns.example".into()],
                ..config()
            },
            GuestNetwork {
                hosts: vec!["10.0.0.9 bad_name".into()],
                ..config()
            },
            GuestNetwork {
                hosts: vec!["10.0.0.9".into()],
                ..config()
            },
            GuestNetwork {
                hosts: vec!["gateway 10.0.0.9".into()],
                ..config()
            },
        ];
        for (c, field) in cases.iter().zip(["mac", "dns", "hosts", "hosts", "hosts"]) {
            let e = Plan::from_config(c).unwrap_err();
            assert!(e.0.starts_with(&format!("network config: {field}:")), "{e}");
        }
    }

    #[test]
    fn hosts_has_localhost_the_vm_itself_and_the_configs_entries() {
        let p = Plan::from_config(&GuestNetwork {
            hosts: vec!["172.30.0.1  gateway host.internal".into()],
            ..config()
        })
        .unwrap();
        assert_eq!(
            hosts_file("web-1", &p),
            "# Written by powerunit from the VM's config.\n\
             127.0.0.1\tlocalhost\n\
             ::1\tlocalhost ip6-localhost ip6-loopback\n\
             172.30.0.5\tweb-1\n\
             172.30.0.1\tgateway host.internal\n"
        );
    }

    #[test]
    fn resolv_conf_lists_the_nameservers_in_order() {
        let p = Plan::from_config(&GuestNetwork {
            dns: vec!["9.9.9.9".into(), "2620:fe::fe".into()],
            ..config()
        })
        .unwrap();
        assert_eq!(
            resolv_conf(&p),
            "# Written by powerunit from the VM's config.\n\
             nameserver 9.9.9.9\nnameserver 2620:fe::fe\n"
        );
    }

    #[test]
    fn the_nic_is_found_by_mac_whatever_its_name() {
        let s = sys(&[
            ("lo", 1, "00:00:00:00:00:00"),
            ("enp0s1", 2, "52:54:00:11:11:11"),
            ("ens4", 3, "52:54:00:AB:CD:01"),
        ]);
        let nic = find_nic(s.path(), "52:54:00:ab:cd:01", Duration::ZERO).unwrap();
        assert_eq!(
            nic,
            Interface {
                name: "ens4".into(),
                index: 3,
                mac: "52:54:00:ab:cd:01".into()
            }
        );
    }

    #[test]
    fn a_missing_nic_is_an_error_listing_what_is_there() {
        let s = sys(&[("lo", 1, "00:00:00:00:00:00")]);
        let e = find_nic(s.path(), "52:54:00:ab:cd:01", Duration::ZERO).unwrap_err();
        assert!(
            e.0.contains("no network interface has MAC 52:54:00:ab:cd:01"),
            "{e}"
        );
        assert!(e.0.contains("lo 00:00:00:00:00:00"), "{e}");
    }

    #[test]
    fn bring_up_renames_addresses_raises_and_routes_the_nic_after_loopback() {
        let s = sys(&[
            ("lo", 1, "00:00:00:00:00:00"),
            ("enp0s2", 2, "52:54:00:ab:cd:01"),
        ]);
        let mut links = FakeLinks::default();
        bring_up(Some(&plan()), s.path(), &mut links, Duration::ZERO).unwrap();
        assert_eq!(
            links.ops,
            [
                "up 1",
                "rename 2 eth0",
                "addr 2 172.30.0.5/16",
                "up 2",
                "route 2 via 172.30.0.1"
            ]
        );
    }

    #[test]
    fn a_nic_already_named_eth0_is_not_renamed() {
        let s = sys(&[
            ("lo", 1, "00:00:00:00:00:00"),
            ("eth0", 2, "52:54:00:ab:cd:01"),
        ]);
        let mut links = FakeLinks::default();
        bring_up(Some(&plan()), s.path(), &mut links, Duration::ZERO).unwrap();
        assert!(
            !links.ops.iter().any(|o| o.starts_with("rename")),
            "{:?}",
            links.ops
        );
    }

    #[test]
    fn without_a_network_only_loopback_comes_up() {
        let s = sys(&[
            ("lo", 1, "00:00:00:00:00:00"),
            ("eth0", 2, "52:54:00:ab:cd:01"),
        ]);
        let mut links = FakeLinks::default();
        bring_up(None, s.path(), &mut links, Duration::ZERO).unwrap();
        assert_eq!(links.ops, ["up 1"]);
    }

    #[test]
    fn a_kernel_refusal_stops_the_sequence_with_its_reason() {
        let s = sys(&[
            ("lo", 1, "00:00:00:00:00:00"),
            ("eth0", 2, "52:54:00:ab:cd:01"),
        ]);
        let mut links = FakeLinks {
            fail: Some("route"),
            ..Default::default()
        };
        let e = bring_up(Some(&plan()), s.path(), &mut links, Duration::ZERO).unwrap_err();
        assert!(e.0.contains("route 2 via 172.30.0.1"), "{e}");
    }

    #[test]
    fn etc_files_are_written_and_a_resolv_conf_symlink_is_replaced_by_a_file() {
        let root = tempfile::tempdir().unwrap();
        let etc = root.path().join("etc");
        std::fs::create_dir_all(&etc).unwrap();
        let target = root.path().join("stub-resolv.conf");
        std::fs::write(&target, "nameserver 127.0.0.53\n").unwrap();
        std::os::unix::fs::symlink(&target, etc.join("resolv.conf")).unwrap();

        write_etc(&etc, "web-1", Some(&plan()));

        let resolv = etc.join("resolv.conf");
        assert!(!resolv.symlink_metadata().unwrap().file_type().is_symlink());
        assert!(std::fs::read_to_string(&resolv)
            .unwrap()
            .contains("nameserver 172.30.0.1\n"));
        // The symlink's old target is left alone.
        assert_eq!(
            std::fs::read_to_string(&target).unwrap(),
            "nameserver 127.0.0.53\n"
        );
        assert_eq!(
            std::fs::read_to_string(etc.join("hostname")).unwrap(),
            "web-1\n"
        );
        assert!(std::fs::read_to_string(etc.join("hosts"))
            .unwrap()
            .contains("172.30.0.5\tweb-1\n"));
        let leftovers: Vec<_> = std::fs::read_dir(&etc)
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with('.'))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
    }

    #[test]
    fn without_a_network_only_hostname_is_written() {
        let root = tempfile::tempdir().unwrap();
        let etc = root.path().join("etc");
        write_etc(&etc, "solo", None);
        let names: Vec<String> = std::fs::read_dir(&etc)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["hostname"]);
    }
}
