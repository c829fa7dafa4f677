//! powerunit: PID 1 of every Pitwall Linux guest (ARCHITECTURE §6).
//!
//! From the initramfs the host built (`pitwall-vmm::kernel::build_initramfs`) it mounts
//! `/dev /proc /sys`, loads the virtio modules listed in `/lib/modules/load-order`, opens the
//! agent port, finds its disks by content (config disk by magic, ext4 disks by label),
//! overlays the VM's writable disk on the shared read-only base, switches root, brings up
//! loopback and the NIC the config names (address, default route, `/etc/hosts`,
//! `/etc/resolv.conf`), starts the SSH server when the config asks for one ([`ssh`]), starts
//! the services the config declares (restarted by their policy,
//! their output on the console and in `/var/log/pitwall`), reports readiness to the host,
//! serves its agent requests (service status, exec), reaps every child, and powers the guest
//! off when the first service ends for good or the host asks.
//!
//! What it must not do: exit or panic (the kernel panics when PID 1 ends), pull in heavy
//! dependencies (it is a static binary inside every guest), or trust device order.
//!
//! Module map: [`supervisor`] runs the sequence; [`mounts`], [`modules`], [`disks`],
//! [`net`], [`agent`], [`workload`], [`ssh`] do one stage each; [`services`] supervises the declared
//! services, [`logs`] carries their output, [`exec`] runs the agent's commands; [`reaper`]
//! hands exit codes to whoever started a process; [`wire`] holds the host ↔ guest encodings.

pub mod agent;
pub mod console;
pub mod disks;
pub mod error;
pub mod exec;
pub mod logs;
pub mod modules;
pub mod mounts;
pub mod net;
pub mod reaper;
pub mod services;
pub mod ssh;
pub mod supervisor;
pub mod wire;
pub mod workload;

/// Run as PID 1: boot, supervise, power off. Never returns.
pub fn run() -> ! {
    supervisor::run()
}
