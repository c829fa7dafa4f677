//! Host networking for real, inside throwaway network namespaces: `ip netns add pwtest-…`
//! (removed by a drop guard), the crate's code run on a thread that `setns()`es into one
//! with its own current-thread tokio runtime (netlink sockets, `/dev/net/tun`, `nft`
//! children and `/proc/sys/net` all follow the calling thread's namespace). The machine's
//! own interfaces, routes and firewall are never touched.
//!
//! "VMs" here are namespaces joined to the bridge by a veth pair whose host end is attached
//! with [`pitwall_net::link::attach_to_bridge`], the function `attach_vm` uses for TAPs
//! (a TAP only carries traffic while a VMM holds it open). The "outside" is a namespace behind
//! a veth used as the uplink, with no route back to the VM subnet: only NAT brings replies.
//! Checks use the crate-independent tools of the test: raw ICMP sockets and TCP.
//!
//! Skipped, with a message on stderr, when not root or when `ip netns` is unavailable.

use std::fs::File;
use std::future::Future;
use std::io::{Read as _, Write as _};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pitwall_net::link::{attach_to_bridge, Netlink};
use pitwall_net::{tap_name, HostNetwork, NetConfig, Network, VmId};

const GATEWAY: Ipv4Addr = Ipv4Addr::new(172, 30, 0, 1);
const UPLINK_HOST: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);
const OUTSIDE: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 2);

// ---------------------------------------------------------------------------------------
// Namespaces

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// A named network namespace, deleted on drop.
struct Netns {
    name: String,
}

impl Netns {
    fn create(tag: &str) -> Result<Netns, String> {
        if !nix::unistd::geteuid().is_root() {
            return Err("not root (network namespaces need root)".into());
        }
        let name = format!(
            "pwtest-{tag}-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let out = Command::new("ip")
            .args(["netns", "add", &name])
            .output()
            .map_err(|e| format!("cannot run `ip netns` (install iproute2): {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "`ip netns add` failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        let ns = Netns { name };
        ns.sh("ip link set lo up");
        Ok(ns)
    }

    /// Runs `cmd` with `sh -c` inside the namespace; panics unless it succeeds.
    fn sh(&self, cmd: &str) -> String {
        let out = self.try_sh(cmd);
        match out {
            Ok(stdout) => stdout,
            Err(e) => panic!("in {}: `{cmd}` failed: {e}", self.name),
        }
    }

    fn try_sh(&self, cmd: &str) -> Result<String, String> {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.name, "sh", "-c", cmd])
            .output()
            .map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    /// Runs `f` on a thread inside the namespace.
    fn enter<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        let path = format!("/var/run/netns/{}", self.name);
        std::thread::scope(|s| {
            let thread = s.spawn(move || {
                let file = File::open(&path).expect("open netns");
                nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
                f()
            });
            thread
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        })
    }

    /// Runs the future made by `f` on a current-thread runtime inside the namespace.
    fn block_on<F: Future>(&self, f: impl FnOnce() -> F + Send) -> F::Output
    where
        F::Output: Send,
    {
        self.enter(|| {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime")
                .block_on(f())
        })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

macro_rules! netns_or_skip {
    ($tag:expr) => {
        match Netns::create($tag) {
            Ok(ns) => ns,
            Err(why) => {
                // Straight to stderr: libtest captures print macros of passing tests.
                let _ = writeln!(
                    std::io::stderr(),
                    "SKIPPED {}: {why}",
                    std::thread::current().name().unwrap_or("test")
                );
                return;
            }
        }
    };
}

// ---------------------------------------------------------------------------------------
// Probes

/// Sends ICMP echo requests to `dst` for up to `wait`; true on a reply from `dst`.
fn ping(dst: Ipv4Addr, wait: Duration) -> bool {
    use socket2::{Domain, Protocol, Socket, Type};
    let sock = Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::ICMPV4)).expect("raw socket");
    let id: u16 = (std::process::id() as u16) ^ (COUNTER.fetch_add(1, Ordering::Relaxed) as u16);
    let deadline = Instant::now() + wait;
    let mut seq: u16 = 0;
    while Instant::now() < deadline {
        seq += 1;
        let mut pkt = vec![8u8, 0, 0, 0];
        pkt.extend_from_slice(&id.to_be_bytes());
        pkt.extend_from_slice(&seq.to_be_bytes());
        pkt.extend_from_slice(b"pitwall-net-test");
        let sum = checksum(&pkt);
        pkt[2..4].copy_from_slice(&sum.to_be_bytes());
        let to = SocketAddr::V4(SocketAddrV4::new(dst, 0));
        if sock.send_to(&pkt, &to.into()).is_err() {
            // No route/neighbour yet: retry until the deadline.
            std::thread::sleep(Duration::from_millis(200));
            continue;
        }
        let round_end = (Instant::now() + Duration::from_millis(500)).min(deadline);
        while Instant::now() < round_end {
            let left = round_end.saturating_duration_since(Instant::now());
            sock.set_read_timeout(Some(left.max(Duration::from_millis(1))))
                .expect("timeout");
            let mut bytes = [0u8; 1500];
            let Ok(n) = (&sock).read(&mut bytes) else {
                break;
            };
            if n < 20 {
                continue;
            }
            let ihl = usize::from(bytes[0] & 0x0f) * 4;
            let src = Ipv4Addr::new(bytes[12], bytes[13], bytes[14], bytes[15]);
            let icmp = &bytes[ihl.min(n)..n];
            if icmp.len() >= 8 && icmp[0] == 0 && icmp[4..6] == id.to_be_bytes() && src == dst {
                return true;
            }
        }
    }
    false
}

fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    for chunk in data.chunks(2) {
        let word = u16::from_be_bytes([chunk[0], *chunk.get(1).unwrap_or(&0)]);
        sum += u32::from(word);
    }
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// A TCP server in a namespace that answers every connection with the peer's address.
struct PeerEcho {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl PeerEcho {
    fn start(ns: &Netns, addr: SocketAddrV4) -> PeerEcho {
        let listener = ns.enter(|| TcpListener::bind(addr).expect("bind"));
        listener.set_nonblocking(true).expect("nonblocking");
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            while !flag.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((mut conn, peer)) => {
                        let _ = conn.write_all(peer.ip().to_string().as_bytes());
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        PeerEcho {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for PeerEcho {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Connects to a [`PeerEcho`] server; the address the server saw us coming from.
fn tcp_peer_seen(addr: SocketAddrV4, wait: Duration) -> Result<String, String> {
    let mut conn =
        TcpStream::connect_timeout(&SocketAddr::V4(addr), wait).map_err(|e| e.to_string())?;
    conn.set_read_timeout(Some(wait))
        .map_err(|e| e.to_string())?;
    let mut seen = String::new();
    conn.read_to_string(&mut seen).map_err(|e| e.to_string())?;
    Ok(seen)
}

// ---------------------------------------------------------------------------------------
// Topology

fn config(state_dir: &std::path::Path, uplink: Option<&str>) -> NetConfig {
    NetConfig {
        uplink: uplink.map(str::to_string),
        state_dir: state_dir.to_path_buf(),
        ..NetConfig::default()
    }
}

/// A "VM": a namespace whose `eth0` is a veth peer of host port `port`.
struct FakeVm {
    ns: Netns,
    ip: Ipv4Addr,
}

/// Host namespace with the Pitwall network, an outside namespace behind uplink `up0`, and
/// two VMs.
struct Topology {
    host: Netns,
    outside: Netns,
    a: FakeVm,
    b: FakeVm,
    _state: tempfile::TempDir,
}

impl Topology {
    fn build(host: Netns) -> Topology {
        let outside = Netns::create("out").expect("outside namespace");
        host.sh(&format!(
            "ip link add up0 type veth peer name eth0 netns {out} && \
             ip addr add {UPLINK_HOST}/24 dev up0 && ip link set up0 up",
            out = outside.name
        ));
        outside.sh(&format!(
            "ip addr add {OUTSIDE}/24 dev eth0 && ip link set eth0 up"
        ));

        let state = tempfile::tempdir().expect("tempdir");
        let cfg = config(state.path(), Some("up0"));
        let net = HostNetwork::new(cfg).expect("config");
        host.block_on(|| async { net.ensure_host_network().await })
            .expect("ensure host network");

        let mut vms = Vec::new();
        for port in ["va", "vb"] {
            let ns = Netns::create(port).expect("vm namespace");
            let ip = net.ipam().allocate(VmId::new_v4()).expect("allocate").ip;
            host.sh(&format!(
                "ip link add {port} type veth peer name eth0 netns {}",
                ns.name
            ));
            host.block_on(|| attach_to_bridge("fcbr0", port))
                .expect("attach veth to bridge");
            ns.sh(&format!(
                "ip addr add {ip}/16 dev eth0 && ip link set eth0 up && \
                 ip route add default via {GATEWAY}"
            ));
            vms.push(FakeVm { ns, ip });
        }
        let b = vms.pop().expect("vm b");
        let a = vms.pop().expect("vm a");
        Topology {
            host,
            outside,
            a,
            b,
            _state: state,
        }
    }
}

// ---------------------------------------------------------------------------------------
// Tests

#[test]
fn vms_reach_gateway_and_outside_through_nat() {
    let host = netns_or_skip!("host");
    let t = Topology::build(host);
    let _server = PeerEcho::start(&t.outside, SocketAddrV4::new(OUTSIDE, 8080));
    for vm in [&t.a, &t.b] {
        assert!(
            vm.ns.enter(|| ping(GATEWAY, Duration::from_secs(5))),
            "VM {} pings the gateway",
            vm.ip
        );
        assert!(
            vm.ns.enter(|| ping(OUTSIDE, Duration::from_secs(5))),
            "VM {} pings the outside",
            vm.ip
        );
        let seen = vm
            .ns
            .enter(|| tcp_peer_seen(SocketAddrV4::new(OUTSIDE, 8080), Duration::from_secs(5)))
            .expect("VM reaches a TCP listener outside");
        assert_eq!(
            seen,
            UPLINK_HOST.to_string(),
            "outside sees the host's uplink address (NAT)"
        );
    }
    // The outside has no route back to the VM subnet: without masquerading nothing comes back.
    assert!(t
        .outside
        .sh("ip route")
        .lines()
        .all(|l| !l.contains("172.30.")));
    assert_eq!(t.host.sh("cat /proc/sys/net/ipv4/ip_forward").trim(), "1");
}

/// B, serving TCP, is alive: the gateway reaches it (the bridge itself is not isolated).
fn serve_on_b_and_check_it_is_alive(t: &Topology) -> (PeerEcho, SocketAddrV4) {
    let server = PeerEcho::start(&t.b.ns, SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 8080));
    let b_addr = SocketAddrV4::new(t.b.ip, 8080);
    assert!(
        t.host.enter(|| ping(t.b.ip, Duration::from_secs(5))),
        "gateway pings B"
    );
    assert_eq!(
        t.host
            .enter(|| tcp_peer_seen(b_addr, Duration::from_secs(5))),
        Ok(GATEWAY.to_string()),
        "gateway reaches B's TCP port"
    );
    (server, b_addr)
}

#[test]
fn isolated_bridge_ports_keep_vms_apart_at_l2() {
    let host = netns_or_skip!("host");
    // Where br_netfilter is loaded, bridged IPv4 also crosses the forward chain, whose
    // bridge-to-bridge drop would hide a missing port isolation: turn that off here.
    let _ = host.try_sh("echo 0 > /proc/sys/net/bridge/bridge-nf-call-iptables");
    let t = Topology::build(host);
    let (_server, b_addr) = serve_on_b_and_check_it_is_alive(&t);
    assert!(
        !t.a.ns.enter(|| ping(t.b.ip, Duration::from_secs(2))),
        "A pinged B at L2"
    );
    assert!(
        t.a.ns
            .enter(|| tcp_peer_seen(b_addr, Duration::from_secs(2)))
            .is_err(),
        "A reached B's TCP port at L2"
    );
    assert!(
        !t.b.ns.enter(|| ping(t.a.ip, Duration::from_secs(2))),
        "B pinged A at L2"
    );
    assert_eq!(
        t.host.sh("cat /sys/class/net/va/brport/isolated").trim(),
        "1"
    );
}

#[test]
fn vms_cannot_reach_each_other_routed_through_the_gateway() {
    let host = netns_or_skip!("host");
    let t = Topology::build(host);
    let (_server, b_addr) = serve_on_b_and_check_it_is_alive(&t);
    // Each VM sends the other's traffic to the gateway's MAC: the host routes it, unless
    // the forward chain drops bridge → bridge.
    t.a.ns
        .sh(&format!("ip route add {}/32 via {GATEWAY}", t.b.ip));
    t.b.ns
        .sh(&format!("ip route add {}/32 via {GATEWAY}", t.a.ip));
    assert!(
        !t.a.ns.enter(|| ping(t.b.ip, Duration::from_secs(2))),
        "A pinged B via the host"
    );
    assert!(
        t.a.ns
            .enter(|| tcp_peer_seen(b_addr, Duration::from_secs(2)))
            .is_err(),
        "A reached B's TCP port via the host"
    );
}

#[test]
fn vms_reach_no_service_of_the_host_itself() {
    let host = netns_or_skip!("host");
    let t = Topology::build(host);
    // A service of the host on every address, the gateway's and the uplink's included.
    let _service = PeerEcho::start(&t.host, SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 2222));
    assert_eq!(
        t.host
            .enter(|| tcp_peer_seen(SocketAddrV4::new(GATEWAY, 2222), Duration::from_secs(5))),
        Ok(GATEWAY.to_string()),
        "the service is up"
    );
    for addr in [GATEWAY, UPLINK_HOST] {
        assert!(
            t.a.ns
                .enter(|| tcp_peer_seen(SocketAddrV4::new(addr, 2222), Duration::from_secs(2)))
                .is_err(),
            "a VM reached the host's service on {addr}"
        );
    }
    // What stays allowed: pinging the gateway, and the host's own connections to VMs
    // (their replies come back through the input chain).
    assert!(t.a.ns.enter(|| ping(GATEWAY, Duration::from_secs(5))));
    let _server = PeerEcho::start(&t.a.ns, SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 8080));
    assert_eq!(
        t.host
            .enter(|| tcp_peer_seen(SocketAddrV4::new(t.a.ip, 8080), Duration::from_secs(5))),
        Ok(GATEWAY.to_string()),
        "the host reaches a VM's service"
    );
}

#[test]
fn tap_attach_and_detach_are_idempotent_and_the_device_goes_away() {
    let host = netns_or_skip!("host");
    let state = tempfile::tempdir().expect("tempdir");
    let net = HostNetwork::new(config(state.path(), None)).expect("config");
    let vm = VmId::new_v4();
    let tap = tap_name(vm);
    host.block_on(|| async {
        net.ensure_host_network().await.expect("ensure");
        let nic = net.attach_vm(vm).await.expect("attach");
        assert_eq!(nic, net.attach_vm(vm).await.expect("attach again"));
        assert_eq!(nic.tap, tap);
        assert_eq!(net.nic(vm).await.expect("nic"), Some(nic.clone()));
        let nl = Netlink::connect().expect("netlink");
        let bridge = nl.link("fcbr0").await.expect("look up").expect("bridge");
        let link = nl.link(&tap).await.expect("look up").expect("TAP exists");
        assert_eq!(link.kind.as_deref(), Some("tun"));
        assert_eq!(link.controller, Some(bridge.index), "TAP is a bridge port");
    });
    assert_eq!(
        host.sh(&format!("cat /sys/class/net/{tap}/brport/isolated"))
            .trim(),
        "1"
    );
    let flags = host.sh(&format!("cat /sys/class/net/{tap}/tun_flags"));
    let flags = u32::from_str_radix(flags.trim().trim_start_matches("0x"), 16).expect("hex");
    // IFF_TAP | IFF_NO_PI | IFF_VNET_HDR, and IFF_PERSIST: it outlives our descriptor.
    assert_eq!(flags & 0x5802, 0x5802, "tun_flags {flags:#x}");
    // A VMM holding the TAP open (after a daemon restart, say) does not stop a re-attach.
    let vmm = host.enter(|| pitwall_net::tap::open_tap(&tap).expect("open TAP like a VMM"));
    host.block_on(|| async { net.attach_vm(vm).await.expect("attach while in use") });
    drop(vmm);
    host.block_on(|| async {
        net.detach_vm(vm).await.expect("detach");
        net.detach_vm(vm).await.expect("detach again");
        let nl = Netlink::connect().expect("netlink");
        assert_eq!(nl.link(&tap).await.expect("look up"), None, "TAP removed");
    });
}

#[test]
fn detaching_a_vm_removes_its_tap_and_releases_its_ip() {
    let host = netns_or_skip!("host");
    let state = tempfile::tempdir().expect("tempdir");
    let net = HostNetwork::new(config(state.path(), None)).expect("config");
    let (a, b) = (VmId::new_v4(), VmId::new_v4());
    host.block_on(|| async {
        net.ensure_host_network().await.expect("ensure");
        let nic_a = net.attach_vm(a).await.expect("attach a");
        let nic_b = net.attach_vm(b).await.expect("attach b");
        assert_ne!(nic_a.ip, nic_b.ip);
        assert_ne!(nic_a.tap, nic_b.tap);
        net.detach_vm(a).await.expect("detach a");
        let nl = Netlink::connect().expect("netlink");
        assert_eq!(nl.link(&nic_a.tap).await.expect("look up"), None);
        assert!(
            nl.link(&nic_b.tap).await.expect("look up").is_some(),
            "B untouched"
        );
        let held = net.ipam().allocations().expect("ipam");
        assert_eq!(held.keys().copied().collect::<Vec<_>>(), vec![b]);
        net.detach_vm(b).await.expect("detach b");
        assert!(net.ipam().allocations().expect("ipam").is_empty());
    });
}

#[test]
fn rebuilding_the_firewall_twice_yields_one_table_and_spares_others() {
    let host = netns_or_skip!("host");
    let host_tables_before = Command::new("nft").args(["list", "tables"]).output();
    host.sh("nft add table inet someone_else && nft add chain inet someone_else c");
    let state = tempfile::tempdir().expect("tempdir");
    let net = HostNetwork::new(config(state.path(), Some("up0"))).expect("config");
    host.block_on(|| async {
        net.ensure_host_network().await.expect("ensure");
        net.ensure_host_network().await.expect("ensure again");
        net.apply_firewall().await.expect("apply once more");
    });
    let tables = host.sh("nft list tables");
    assert_eq!(tables.matches("table inet pitwall").count(), 1, "{tables}");
    assert!(tables.contains("table inet someone_else"), "{tables}");
    assert!(host
        .sh("nft list chain inet someone_else c")
        .contains("chain c"));
    let ruleset = host.sh("nft list table inet pitwall");
    assert_eq!(ruleset.matches("masquerade").count(), 1, "{ruleset}");
    assert_eq!(ruleset.matches("chain forward").count(), 1, "{ruleset}");
    // nft ran in the test namespace, not on the machine.
    let host_tables_after = Command::new("nft").args(["list", "tables"]).output();
    if let (Ok(before), Ok(after)) = (host_tables_before, host_tables_after) {
        assert_eq!(before.stdout, after.stdout, "machine's nftables untouched");
    }
}

#[test]
fn ensure_host_network_fixes_a_bridge_with_the_wrong_address() {
    let host = netns_or_skip!("host");
    host.sh("ip link add fcbr0 type bridge && ip addr add 10.99.0.1/24 dev fcbr0");
    let state = tempfile::tempdir().expect("tempdir");
    let net = HostNetwork::new(config(state.path(), None)).expect("config");
    let addrs = host.block_on(|| async {
        net.ensure_host_network().await.expect("ensure");
        let nl = Netlink::connect().expect("netlink");
        let br = nl.link("fcbr0").await.expect("look up").expect("bridge");
        nl.ipv4_addresses(br.index).await.expect("addresses")
    });
    assert_eq!(addrs, vec![(GATEWAY, 16)]);
    let flags = host.sh("cat /sys/class/net/fcbr0/flags");
    let flags = u32::from_str_radix(flags.trim().trim_start_matches("0x"), 16).expect("hex");
    assert_eq!(flags & 0x1, 0x1, "bridge is up (IFF_UP)");
}

#[test]
fn a_non_bridge_device_under_the_bridge_name_is_a_clear_error() {
    let host = netns_or_skip!("host");
    host.sh("ip link add fcbr0 type veth peer name fcbr0peer");
    let state = tempfile::tempdir().expect("tempdir");
    let net = HostNetwork::new(config(state.path(), None)).expect("config");
    let err = host
        .block_on(|| async { net.ensure_host_network().await })
        .expect_err("not a bridge");
    assert!(err.to_string().contains("rather than a bridge"), "{err}");
}

#[test]
fn ip_forward_changes_only_inside_the_namespace() {
    let host = netns_or_skip!("host");
    let machine_before = std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward").expect("read");
    host.sh("echo 0 > /proc/sys/net/ipv4/ip_forward");
    let state = tempfile::tempdir().expect("tempdir");
    let net = HostNetwork::new(config(state.path(), None)).expect("config");
    host.block_on(|| async { net.ensure_host_network().await })
        .expect("ensure");
    assert_eq!(host.sh("cat /proc/sys/net/ipv4/ip_forward").trim(), "1");
    let machine_after = std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward").expect("read");
    assert_eq!(machine_before, machine_after);
}

#[test]
fn a_network_opened_with_netns_works_inside_that_namespace_only() {
    let host = netns_or_skip!("nsopen");
    let state = tempfile::tempdir().expect("tempdir");
    let cfg = NetConfig {
        bridge: "pwbrns0".into(),
        netns: Some(host.name.clone()),
        ..config(state.path(), None)
    };
    let net = pitwall_net::open(cfg).expect("open");
    let vm = VmId::new_v4();
    // Driven from this thread's (the machine's) namespace, on a multi-threaded runtime.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let nic = rt.block_on(async {
        net.ensure_host_network().await.expect("ensure");
        net.attach_vm(vm).await.expect("attach")
    });
    // Inside the namespace: the bridge with its gateway address, and the TAP on it.
    let addrs =
        host.sh("cat /sys/class/net/pwbrns0/bridge/bridge_id && ip -4 -o addr show dev pwbrns0");
    assert!(addrs.contains("172.30.0.1/16"), "{addrs}");
    assert_eq!(
        host.sh(&format!("cat /sys/class/net/{}/brport/isolated", nic.tap))
            .trim(),
        "1"
    );
    // Nothing of it in the machine's own namespace.
    assert!(!std::path::Path::new("/sys/class/net/pwbrns0").exists());
    assert!(!std::path::Path::new(&format!("/sys/class/net/{}", nic.tap)).exists());
    rt.block_on(async { net.detach_vm(vm).await.expect("detach") });
    assert!(host
        .try_sh(&format!("test -e /sys/class/net/{}", nic.tap))
        .is_err());
}
