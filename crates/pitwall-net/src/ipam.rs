//! VM address management: [`Pool`] is the pure allocation logic, [`FileIpam`] keeps a pool's
//! state in `<dir>/ipam.json`, rewritten atomically (temporary file, fsync, rename) under an
//! exclusive `flock` on `<dir>/ipam.lock`, so several processes on one host never hand out
//! the same address. Every operation reads the file afresh under the lock.
//!
//! Addresses are handed out round-robin from a cursor (the one after the last handed out),
//! so a released address is reused as late as possible (stale ARP entries and conntrack
//! state of the old VM have expired by then).

use std::collections::{BTreeMap, HashSet};
use std::fs::{self, File, OpenOptions};
use std::io::Write as _;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use ipnet::Ipv4Net;
use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};

use crate::{NetError, VmId};

const STATE_VERSION: u32 = 1;

/// What is persisted: who holds which address, and where the next search starts.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IpamState {
    pub version: u32,
    pub allocations: BTreeMap<VmId, Ipv4Addr>,
    pub next: Option<Ipv4Addr>,
}

/// The result of [`Pool::allocate`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Allocation {
    pub ip: Ipv4Addr,
    /// False when the VM already held this address.
    pub new: bool,
}

/// Pure address allocation over a subnet (or a sub-range of it).
#[derive(Debug, Clone)]
pub struct Pool {
    range: Ipv4Net,
    first: u32,
    last: u32,
    gateway: u32,
    state: IpamState,
    used: HashSet<u32>,
}

impl Pool {
    /// A pool handing out the host addresses of `range` (default: `subnet`) except the
    /// subnet's network and broadcast addresses and the gateway. Allocations in `state` that
    /// lie outside `subnet` are refused (the configuration changed under them); those inside
    /// `subnet` but outside `range` are kept, but such addresses are never handed out.
    pub fn new(
        subnet: Ipv4Net,
        range: Option<Ipv4Net>,
        gateway: Ipv4Addr,
        state: IpamState,
    ) -> Result<Pool, String> {
        let subnet = subnet.trunc();
        let range = range.map(|r| r.trunc()).unwrap_or(subnet);
        if !subnet.contains(&range) {
            return Err(format!("pool {range} is not inside subnet {subnet}"));
        }
        let first = u32::from(range.network()).max(u32::from(subnet.network()) + 1);
        let last = u32::from(range.broadcast()).min(u32::from(subnet.broadcast()) - 1);
        if first > last {
            return Err(format!("pool {range} holds no host address of {subnet}"));
        }
        let mut used = HashSet::new();
        for (vm, ip) in &state.allocations {
            if !subnet.contains(ip) {
                return Err(format!(
                    "VM {vm} holds {ip}, outside subnet {subnet} (was the subnet changed?)"
                ));
            }
            if !used.insert(u32::from(*ip)) {
                return Err(format!(
                    "{ip} is held by two VMs (the state file is corrupt)"
                ));
            }
        }
        Ok(Pool {
            range,
            first,
            last,
            gateway: u32::from(gateway),
            state,
            used,
        })
    }

    /// The VM's address: the one it holds, or a free one.
    pub fn allocate(&mut self, vm: VmId) -> Result<Allocation, NetError> {
        if let Some(ip) = self.state.allocations.get(&vm) {
            return Ok(Allocation {
                ip: *ip,
                new: false,
            });
        }
        let size = self.last - self.first + 1;
        let start = self
            .state
            .next
            .map(u32::from)
            .filter(|n| (self.first..=self.last).contains(n))
            .unwrap_or(self.first);
        for i in 0..size {
            let cand = self.first + (start - self.first + i) % size;
            if cand == self.gateway || self.used.contains(&cand) {
                continue;
            }
            let ip = Ipv4Addr::from(cand);
            self.used.insert(cand);
            self.state.allocations.insert(vm, ip);
            self.state.next = Some(Ipv4Addr::from(if cand == self.last {
                self.first
            } else {
                cand + 1
            }));
            return Ok(Allocation { ip, new: true });
        }
        Err(NetError::PoolExhausted {
            pool: self.range.to_string(),
            size: self.capacity(),
        })
    }

    /// Frees the VM's address; `None` if it held none.
    pub fn release(&mut self, vm: VmId) -> Option<Ipv4Addr> {
        let ip = self.state.allocations.remove(&vm)?;
        self.used.remove(&u32::from(ip));
        Some(ip)
    }

    /// The VM's address, if it holds one.
    pub fn get(&self, vm: VmId) -> Option<Ipv4Addr> {
        self.state.allocations.get(&vm).copied()
    }

    /// How many addresses this pool can hand out.
    pub fn capacity(&self) -> u32 {
        let size = self.last - self.first + 1;
        if (self.first..=self.last).contains(&self.gateway) {
            size - 1
        } else {
            size
        }
    }

    pub fn allocations(&self) -> &BTreeMap<VmId, Ipv4Addr> {
        &self.state.allocations
    }

    pub fn state(&self) -> &IpamState {
        &self.state
    }
}

/// A [`Pool`] whose state lives in `<dir>/ipam.json`.
#[derive(Debug, Clone)]
pub struct FileIpam {
    dir: PathBuf,
    subnet: Ipv4Net,
    range: Option<Ipv4Net>,
    gateway: Ipv4Addr,
}

impl FileIpam {
    pub fn new(
        dir: impl Into<PathBuf>,
        subnet: Ipv4Net,
        range: Option<Ipv4Net>,
        gateway: Ipv4Addr,
    ) -> FileIpam {
        FileIpam {
            dir: dir.into(),
            subnet,
            range,
            gateway,
        }
    }

    pub fn path(&self) -> PathBuf {
        self.dir.join("ipam.json")
    }

    /// The VM's address: the one it holds, or a free one (persisted before returning).
    pub fn allocate(&self, vm: VmId) -> Result<Allocation, NetError> {
        self.with_pool(|pool| {
            let a = pool.allocate(vm)?;
            Ok((a, a.new))
        })
    }

    /// Frees the VM's address; `None` if it held none.
    pub fn release(&self, vm: VmId) -> Result<Option<Ipv4Addr>, NetError> {
        self.with_pool(|pool| {
            let ip = pool.release(vm);
            Ok((ip, ip.is_some()))
        })
    }

    pub fn get(&self, vm: VmId) -> Result<Option<Ipv4Addr>, NetError> {
        self.with_pool(|pool| Ok((pool.get(vm), false)))
    }

    pub fn allocations(&self) -> Result<BTreeMap<VmId, Ipv4Addr>, NetError> {
        self.with_pool(|pool| Ok((pool.allocations().clone(), false)))
    }

    /// Runs `f` on the pool loaded under the lock; writes the state back when `f` says it
    /// changed it.
    fn with_pool<T>(
        &self,
        f: impl FnOnce(&mut Pool) -> Result<(T, bool), NetError>,
    ) -> Result<T, NetError> {
        fs::create_dir_all(&self.dir)
            .map_err(|e| NetError::io("create IPAM directory", &self.dir, e))?;
        let lock_path = self.dir.join("ipam.lock");
        let lock_file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| NetError::io("open IPAM lock", &lock_path, e))?;
        let _lock = Flock::lock(lock_file, FlockArg::LockExclusive).map_err(|(_, errno)| {
            NetError::io("lock IPAM state", &lock_path, std::io::Error::from(errno))
        })?;
        let path = self.path();
        let state = read_state(&path)?;
        let mut pool = Pool::new(self.subnet, self.range, self.gateway, state).map_err(|why| {
            NetError::IpamState {
                path: path.clone(),
                why,
            }
        })?;
        let (out, changed) = f(&mut pool)?;
        if changed {
            write_state(&path, pool.state())?;
        }
        Ok(out)
    }
}

fn read_state(path: &Path) -> Result<IpamState, NetError> {
    let bytes = match fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Ok(IpamState {
                version: STATE_VERSION,
                ..IpamState::default()
            })
        }
        Err(e) => return Err(NetError::io("read IPAM state", path, e)),
    };
    let state: IpamState = serde_json::from_slice(&bytes).map_err(|e| NetError::IpamState {
        path: path.to_path_buf(),
        why: format!("not valid JSON state ({e}): restore it from a backup or remove it after deleting all VMs"),
    })?;
    if state.version != STATE_VERSION {
        return Err(NetError::IpamState {
            path: path.to_path_buf(),
            why: format!(
                "version {} is not {STATE_VERSION}: written by another Pitwall version",
                state.version
            ),
        });
    }
    Ok(state)
}

/// Writes `state` to `path` atomically: temporary file, fsync, rename, fsync of the directory.
fn write_state(path: &Path, state: &IpamState) -> Result<(), NetError> {
    let tmp = path.with_extension("json.tmp");
    let json = serde_json::to_vec_pretty(state).map_err(|e| NetError::IpamState {
        path: path.to_path_buf(),
        why: format!("cannot encode: {e}"),
    })?;
    let mut file = File::create(&tmp).map_err(|e| NetError::io("create", &tmp, e))?;
    file.write_all(&json)
        .and_then(|()| file.sync_all())
        .map_err(|e| NetError::io("write", &tmp, e))?;
    drop(file);
    fs::rename(&tmp, path).map_err(|e| NetError::io("rename into place", path, e))?;
    if let Some(dir) = path.parent() {
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| NetError::io("sync directory", dir, e))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> Ipv4Net {
        s.parse().expect("net")
    }

    fn vm(n: u128) -> VmId {
        VmId::from_u128(n)
    }

    fn pool(subnet: &str, range: Option<&str>) -> Pool {
        let subnet = net(subnet);
        let gw = Ipv4Addr::from(u32::from(subnet.network()) + 1);
        Pool::new(subnet, range.map(net), gw, IpamState::default()).expect("pool")
    }

    #[test]
    fn allocating_again_for_the_same_vm_returns_the_same_address() {
        let mut p = pool("172.30.0.0/16", None);
        let a = p.allocate(vm(1)).expect("alloc");
        assert!(a.new);
        let b = p.allocate(vm(1)).expect("alloc again");
        assert_eq!(a.ip, b.ip);
        assert!(!b.new);
    }

    #[test]
    fn never_hands_out_network_gateway_or_broadcast() {
        let mut p = pool("10.0.0.0/29", None);
        assert_eq!(p.capacity(), 5);
        let mut got: Vec<Ipv4Addr> = (0..5)
            .map(|i| p.allocate(vm(i)).expect("alloc").ip)
            .collect();
        got.sort();
        let want: Vec<Ipv4Addr> = (2..=6).map(|i| Ipv4Addr::new(10, 0, 0, i)).collect();
        assert_eq!(got, want);
    }

    #[test]
    fn exhaustion_is_a_clear_error() {
        let mut p = pool("10.0.0.0/29", None);
        for i in 0..5 {
            p.allocate(vm(i)).expect("alloc");
        }
        let err = p.allocate(vm(99)).expect_err("exhausted");
        assert!(
            matches!(err, NetError::PoolExhausted { size: 5, .. }),
            "{err}"
        );
        assert!(err.to_string().contains("exhausted"), "{err}");
        p.release(vm(3)).expect("held");
        p.allocate(vm(99)).expect("room again after a release");
    }

    #[test]
    fn sub_range_hands_out_only_its_own_addresses() {
        let mut p = pool("172.30.0.0/16", Some("172.30.4.0/30"));
        let r = net("172.30.4.0/30");
        for i in 0..4 {
            assert!(r.contains(&p.allocate(vm(i)).expect("alloc").ip));
        }
        assert!(p.allocate(vm(9)).is_err());
        // The first sub-range contains the network address and gateway: skipped.
        let mut p = pool("172.30.0.0/16", Some("172.30.0.0/30"));
        assert_eq!(p.capacity(), 2);
        assert_eq!(
            p.allocate(vm(1)).expect("alloc").ip,
            Ipv4Addr::new(172, 30, 0, 2)
        );
    }

    #[test]
    fn released_addresses_are_reused_last() {
        let mut p = pool("10.0.0.0/24", None);
        let a = p.allocate(vm(1)).expect("alloc").ip;
        p.release(vm(1));
        let b = p.allocate(vm(2)).expect("alloc").ip;
        assert_ne!(a, b);
    }

    #[test]
    fn state_with_foreign_or_duplicate_addresses_is_refused() {
        let mut state = IpamState::default();
        state.allocations.insert(vm(1), Ipv4Addr::new(10, 9, 9, 9));
        let gw = Ipv4Addr::new(172, 30, 0, 1);
        assert!(Pool::new(net("172.30.0.0/16"), None, gw, state).is_err());
        let mut state = IpamState::default();
        state
            .allocations
            .insert(vm(1), Ipv4Addr::new(172, 30, 0, 9));
        state
            .allocations
            .insert(vm(2), Ipv4Addr::new(172, 30, 0, 9));
        assert!(Pool::new(net("172.30.0.0/16"), None, gw, state).is_err());
    }

    fn file_ipam(dir: &Path, subnet: &str) -> FileIpam {
        let subnet = net(subnet);
        FileIpam::new(
            dir,
            subnet,
            None,
            Ipv4Addr::from(u32::from(subnet.network()) + 1),
        )
    }

    #[test]
    fn two_hundred_allocations_survive_a_restart_without_duplicates_or_leaks() {
        let dir = tempfile::tempdir().expect("tempdir");
        let gw = Ipv4Addr::new(172, 30, 0, 1);
        let vms: Vec<VmId> = (0..200).map(|_| VmId::new_v4()).collect();
        let mut first = BTreeMap::new();
        {
            let ipam = file_ipam(dir.path(), "172.30.0.0/16");
            for v in &vms {
                let a = ipam.allocate(*v).expect("alloc");
                assert!(a.new);
                assert_ne!(a.ip, gw);
                first.insert(*v, a.ip);
            }
            // Release every other one before the "restart".
            for v in vms.iter().step_by(2) {
                assert_eq!(ipam.release(*v).expect("release"), Some(first[v]));
            }
        }
        let ipam = file_ipam(dir.path(), "172.30.0.0/16");
        let held = ipam.allocations().expect("read");
        assert_eq!(held.len(), 100);
        for v in vms.iter().skip(1).step_by(2) {
            assert_eq!(held[v], first[v], "kept across restart");
            let again = ipam.allocate(*v).expect("idempotent");
            assert_eq!((again.ip, again.new), (first[v], false));
        }
        for v in vms.iter().step_by(2) {
            let a = ipam.allocate(*v).expect("realloc");
            assert!(a.new);
            assert_ne!(a.ip, gw);
        }
        let all = ipam.allocations().expect("read");
        let distinct: HashSet<Ipv4Addr> = all.values().copied().collect();
        assert_eq!(all.len(), 200);
        assert_eq!(distinct.len(), 200, "no address handed out twice");
        for v in &vms {
            assert!(ipam.release(*v).expect("release").is_some());
        }
        assert!(
            ipam.allocations().expect("read").is_empty(),
            "nothing leaked"
        );
        assert_eq!(ipam.release(vms[0]).expect("release twice"), None);
    }

    #[test]
    fn exhausted_file_pool_errors_and_persists_nothing_new() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ipam = file_ipam(dir.path(), "10.1.0.0/30");
        ipam.allocate(vm(1)).expect("the one address");
        let err = ipam.allocate(vm(2)).expect_err("exhausted");
        assert!(matches!(err, NetError::PoolExhausted { .. }), "{err}");
        assert_eq!(ipam.allocations().expect("read").len(), 1);
    }

    #[test]
    fn concurrent_allocators_never_share_an_address() {
        let dir = tempfile::tempdir().expect("tempdir");
        let handles: Vec<_> = (0..8)
            .map(|t| {
                let ipam = file_ipam(dir.path(), "10.2.0.0/24");
                std::thread::spawn(move || {
                    (0..20)
                        .map(|i| ipam.allocate(vm(t * 100 + i)).expect("alloc").ip)
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let mut all = Vec::new();
        for h in handles {
            all.extend(h.join().expect("thread"));
        }
        let distinct: HashSet<_> = all.iter().collect();
        assert_eq!(distinct.len(), 160);
        assert_eq!(
            file_ipam(dir.path(), "10.2.0.0/24")
                .allocations()
                .expect("read")
                .len(),
            160
        );
    }

    #[test]
    fn corrupt_state_file_is_a_clear_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        fs::write(dir.path().join("ipam.json"), b"{not json").expect("write");
        let err = file_ipam(dir.path(), "10.1.0.0/24")
            .allocate(vm(1))
            .expect_err("corrupt");
        assert!(err.to_string().contains("ipam.json"), "{err}");
    }
}
