//! The hosts this replica has heard from, with their capacity, from heartbeats.
//!
//! Kept in memory: every replica hears every heartbeat (the embedded default has one
//! replica). The distributed shape moves leases into the shared store.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use pitwall_proto::v1::HostHeartbeat;

/// What a host last said about itself.
#[derive(Debug, Clone, PartialEq)]
pub struct HostInfo {
    pub name: String,
    pub vcpus_total: u32,
    pub memory_mib_total: u64,
    pub disk_mib_free: u64,
    pub vm_count: u32,
    pub vmm_kinds: Vec<String>,
    pub lease: Duration,
    pub last_seen: Instant,
}

impl HostInfo {
    pub fn is_live(&self, now: Instant) -> bool {
        now.duration_since(self.last_seen) <= self.lease
    }
}

#[derive(Default)]
pub(crate) struct Hosts {
    map: Mutex<HashMap<String, HostInfo>>,
}

impl Hosts {
    pub(crate) fn heartbeat(&self, hb: &HostHeartbeat) {
        let info = HostInfo {
            name: hb.host.clone(),
            vcpus_total: hb.vcpus_total,
            memory_mib_total: hb.memory_mib_total,
            disk_mib_free: hb.disk_mib_free,
            vm_count: hb.vm_count,
            vmm_kinds: hb.vmm_kinds.clone(),
            lease: Duration::from_millis(u64::from(hb.lease_ms.max(1000))),
            last_seen: Instant::now(),
        };
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        map.insert(info.name.clone(), info);
    }

    pub(crate) fn get(&self, name: &str) -> Option<HostInfo> {
        self.map
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
            .cloned()
    }

    pub(crate) fn live(&self) -> Vec<HostInfo> {
        let now = Instant::now();
        let mut v: Vec<HostInfo> = self
            .map
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .filter(|h| h.is_live(now))
            .cloned()
            .collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }

    pub(crate) fn is_live(&self, name: &str) -> bool {
        self.get(name).is_some_and(|h| h.is_live(Instant::now()))
    }

    /// Make `name`'s last heartbeat older than its lease, as if it went silent.
    #[cfg(test)]
    pub(crate) fn expire(&self, name: &str) {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(h) = map.get_mut(name) {
            h.last_seen -= h.lease + Duration::from_secs(1);
        }
    }

    /// Pick a host for a VM needing `memory_mib`: among live hosts with enough total memory,
    /// the one with the most memory per VM already placed. Returns why not, when none fits.
    pub(crate) fn place(&self, memory_mib: u32, vcpus: u32) -> Result<String, String> {
        let live = self.live();
        if live.is_empty() {
            return Err("no host is available: none has sent a heartbeat recently; check that a host daemon (pitwalld host or pitwalld all) runs".into());
        }
        let fitting: Vec<&HostInfo> = live
            .iter()
            .filter(|h| h.memory_mib_total >= u64::from(memory_mib) && h.vcpus_total >= vcpus)
            .collect();
        let Some(best) = fitting
            .iter()
            .max_by_key(|h| h.memory_mib_total / u64::from(h.vm_count + 1))
        else {
            let largest = live.iter().map(|h| h.memory_mib_total).max().unwrap_or(0);
            let most_cpus = live.iter().map(|h| h.vcpus_total).max().unwrap_or(0);
            return Err(format!(
                "no host can hold a VM with {memory_mib} MiB and {vcpus} vCPUs; the largest has {largest} MiB and the most vCPUs is {most_cpus}"
            ));
        };
        Ok(best.name.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hb(name: &str, mem: u64, cpus: u32, vms: u32) -> HostHeartbeat {
        HostHeartbeat {
            host: name.into(),
            vcpus_total: cpus,
            memory_mib_total: mem,
            vm_count: vms,
            lease_ms: 10_000,
            ..Default::default()
        }
    }

    #[test]
    fn no_host_means_a_clear_refusal() {
        let h = Hosts::default();
        assert!(h
            .place(256, 1)
            .unwrap_err()
            .contains("no host is available"));
    }

    #[test]
    fn places_on_a_host_that_fits_and_explains_when_none_does() {
        let h = Hosts::default();
        h.heartbeat(&hb("small", 1024, 2, 0));
        h.heartbeat(&hb("big", 8192, 4, 3));
        assert_eq!(h.place(4096, 1).unwrap(), "big");
        let e = h.place(16384, 1).unwrap_err();
        assert!(e.contains("largest has 8192 MiB"), "{e}");
    }

    #[test]
    fn a_host_past_its_lease_is_not_live() {
        let h = Hosts::default();
        let mut b = hb("x", 1024, 1, 0);
        b.lease_ms = 1000;
        h.heartbeat(&b);
        assert!(h.is_live("x"));
        h.map.lock().unwrap().get_mut("x").unwrap().last_seen -= Duration::from_secs(5);
        assert!(!h.is_live("x"));
        assert!(h.live().is_empty());
    }
}
