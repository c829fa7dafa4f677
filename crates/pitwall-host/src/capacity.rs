//! Heartbeats: this host's capacity and the state of every VM it holds, every few seconds.
//! The control plane records the states (a lost status message heals here) and treats a
//! host silent past `lease_ms` as gone.

use pitwall_proto::v1::{envelope::Payload, Envelope, HostHeartbeat, VmStatus};
use pitwall_proto::{encode_envelope, routing};
use tracing::warn;

use crate::Host;

/// Total memory in MiB, from `/proc/meminfo`.
pub(crate) fn memory_mib_total() -> u64 {
    parse_meminfo(&std::fs::read_to_string("/proc/meminfo").unwrap_or_default())
}

fn parse_meminfo(text: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb / 1024)
}

fn disk_mib_free(path: &std::path::Path) -> u64 {
    nix::sys::statvfs::statvfs(path)
        .map(|s| s.blocks_available() * s.fragment_size() / (1024 * 1024))
        .unwrap_or(0)
}

impl Host {
    pub(crate) fn heartbeat(&self) -> HostHeartbeat {
        let cfg = &self.inner.cfg;
        let vms: Vec<VmStatus> = {
            let vms = self.inner.vms.lock().unwrap_or_else(|p| p.into_inner());
            vms.iter()
                .map(|(id, h)| {
                    let (state, generation, reason) =
                        h.status.lock().unwrap_or_else(|p| p.into_inner()).clone();
                    let wish = h.wish.borrow();
                    let mut s = VmStatus {
                        vm_id: id.to_string(),
                        name: wish.spec.name.clone(),
                        host: cfg.name.clone(),
                        generation,
                        reason: reason.unwrap_or_default(),
                        owner: wish.spec.owner.clone(),
                        ..Default::default()
                    };
                    s.set_core_state(state);
                    s
                })
                .collect()
        };
        HostHeartbeat {
            host: cfg.name.clone(),
            vcpus_total: std::thread::available_parallelism().map_or(1, |n| n.get() as u32),
            memory_mib_total: memory_mib_total(),
            disk_mib_free: disk_mib_free(&cfg.data_dir),
            vm_count: vms.len() as u32,
            vmm_kinds: vec![self.inner.vmm.kind().to_string()],
            vms,
            lease_ms: u32::try_from(cfg.heartbeat_interval.as_millis() * 3).unwrap_or(u32::MAX),
        }
    }
}

impl Host {
    /// Keep every console capture bounded (see [`crate::console`]).
    async fn trim_consoles(&self) {
        let logs: Vec<std::path::PathBuf> = {
            let vms = self.inner.vms.lock().unwrap_or_else(|p| p.into_inner());
            vms.values()
                .map(|h| Host::run_dir(&h.dir).join(pitwall_vmm::qemu::CONSOLE_LOG))
                .collect()
        };
        let _ = tokio::task::spawn_blocking(move || {
            for log in logs {
                match crate::console::trim(&log, crate::console::MAX_BYTES, crate::console::KEEP_BYTES) {
                    Ok(0) => {}
                    Ok(n) => tracing::debug!(log = %log.display(), removed = n, "console capture trimmed"),
                    Err(e) => warn!(log = %log.display(), error = %e, "cannot trim console capture"),
                }
            }
        })
        .await;
    }
}

pub(crate) fn spawn_heartbeat(host: Host) {
    tokio::spawn(async move {
        let Ok(key) = routing::heartbeat_key(&host.inner.cfg.name) else {
            return;
        };
        let mut tick = tokio::time::interval(host.inner.cfg.heartbeat_interval);
        loop {
            tick.tick().await;
            let hb = host.heartbeat();
            let env = Envelope::new(&host.inner.sender, None, Payload::HostHeartbeat(hb));
            if let Err(e) = host.inner.bus.publish(&key, encode_envelope(&env)).await {
                warn!(error = %e, "heartbeat not sent");
            }
            host.trim_consoles().await;
        }
    });
}

#[cfg(test)]
mod tests {
    #[test]
    fn meminfo_total_in_mib() {
        assert_eq!(
            super::parse_meminfo("MemTotal:       24576000 kB\nMemFree: 1 kB\n"),
            24000
        );
        assert_eq!(super::parse_meminfo("garbage"), 0);
    }
}
