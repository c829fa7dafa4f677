//! Pitwall's VMM side: the [`Vmm`] trait and its QEMU `microvm` driver, the guest kernel
//! (provisioned from Debian's `linux-image-cloud-amd64`, cached per version), the initramfs
//! that carries `powerunit` and the virtio modules, and the small disks each VM gets (its
//! writable data disk and its config disk).
//!
//! What it must not do: talk to the bus or the store, decide lifecycle policy. The host
//! orchestrator (`pitwall-host`) drives it.
#![deny(unsafe_code)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use async_trait::async_trait;
pub use pitwall_proto::v1::{Exec, ExecResult, RestartPolicy, ServiceState};

pub mod accel;
pub mod disk;
pub mod initramfs;
pub mod kernel;
pub mod qemu;

pub use accel::detect_accel;
pub use qemu::{QemuInstance, QemuVmm};

/// Filesystem label of the shared read-only base image (set when the image is built).
pub const BASE_LABEL: &str = "pw-base";
/// Filesystem label of a VM's own writable disk.
pub const DATA_LABEL: &str = "pw-data";

#[derive(Debug, thiserror::Error)]
pub enum VmmError {
    #[error("cannot start the VMM for VM {vm}: {why}")]
    Launch { vm: String, why: String },
    #[error(
        "VM {vm}: the guest did not become ready within {timeout:?}; its console log is {console}"
    )]
    ReadyTimeout {
        vm: String,
        timeout: Duration,
        console: PathBuf,
    },
    #[error(
        "VM {vm}: the VMM exited before the guest was ready ({exit}); its console log is {console}"
    )]
    ExitedEarly {
        vm: String,
        exit: String,
        console: PathBuf,
    },
    #[error("VM {vm}: the guest reported a boot failure: {why}")]
    GuestFailed { vm: String, why: String },
    #[error("VM {vm}: {op} failed: {why}")]
    Control {
        vm: String,
        op: &'static str,
        why: String,
    },
    #[error(
        "VM {vm}: cannot {op}: the guest agent is not connected (is the guest booted and \
         running powerunit?)"
    )]
    AgentUnavailable { vm: String, op: &'static str },
    #[error("VM {vm}: {op}: {why}")]
    Agent {
        vm: String,
        op: &'static str,
        why: String,
    },
    #[error("VM {vm}: the guest refused to {op}: {why}")]
    GuestRefused {
        vm: String,
        op: &'static str,
        why: String,
    },
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("guest kernel: {0}")]
    Kernel(String),
    #[error("disk {path}: {why}")]
    Disk { path: PathBuf, why: String },
}

/// Which accelerator a driver uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Accel {
    /// KVM where `/dev/kvm` is usable and the CPU exposes hardware virtualisation, else TCG.
    #[default]
    Auto,
    Kvm,
    Tcg,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Disk {
    pub path: PathBuf,
    pub read_only: bool,
}

/// The VM's network interface: a virtio-net device on a host TAP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Nic {
    /// The host TAP device (already created and attached to the bridge by the host's
    /// networking; the driver only opens it).
    pub tap: String,
    /// The guest NIC's MAC ("52:54:00:12:34:56"): the same one goes into the config disk's
    /// `GuestNetwork.mac`, by which powerunit finds the interface.
    pub mac: String,
    /// The network namespace the TAP lives in, as a path (`/run/netns/NAME`, or
    /// `/proc/PID/ns/net`); the driver starts the VMM inside it (`setns(2)` between fork and
    /// exec). `None`: the namespace of the caller.
    pub netns: Option<PathBuf>,
}

/// Everything a driver needs to boot one VM.
#[derive(Debug, Clone)]
pub struct VmConfig {
    pub id: String,
    pub name: String,
    /// The VM's run directory: pid file, control sockets, console log live here.
    pub run_dir: PathBuf,
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    /// Extra kernel command-line arguments (the driver adds console and timing ones).
    pub extra_cmdline: String,
    pub vcpus: u32,
    pub memory_mib: u32,
    pub disks: Vec<Disk>,
    /// The VM's NIC; `None`: no network device at all (the guest has loopback only).
    pub nic: Option<Nic>,
    pub accel: Accel,
}

/// How a VMM process ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exit {
    /// Exit status of the VMM process, when known. QEMU daemonizes (it is never the host
    /// daemon's child), so its driver cannot know it and reports `None`.
    pub vmm_status: Option<i32>,
    /// Exit code the guest's workload reported through the agent, when it did.
    pub workload_code: Option<i32>,
    /// The VMM was killed after the shutdown grace period.
    pub killed: bool,
}

impl std::fmt::Display for Exit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.workload_code, self.killed) {
            (_, true) => f.write_str("killed after the shutdown grace period"),
            (Some(c), _) => write!(f, "workload exited with code {c}"),
            (None, _) => match self.vmm_status {
                Some(s) => write!(f, "VMM exited with status {s}"),
                None => f.write_str("VMM exited"),
            },
        }
    }
}

/// A running VMM process (spawned now or re-attached).
#[async_trait]
pub trait VmInstance: Send + Sync {
    fn pid(&self) -> u32;
    /// The file the guest's serial console is captured to (complete, also across host-daemon
    /// restarts).
    fn console_path(&self) -> PathBuf;
    /// Wait until powerunit reports the guest ready.
    async fn wait_ready(&self, timeout: Duration) -> Result<(), VmmError>;
    /// Ask the guest to shut down cleanly; after `grace` kill the VMM. Returns once the
    /// process is gone.
    async fn shutdown(&self, grace: Duration) -> Result<Exit, VmmError>;
    /// Kill the VMM at once and wait for it to be gone.
    async fn kill(&self) -> Result<Exit, VmmError>;
    /// Resolves when the VMM process has exited, however that happened.
    async fn wait_exit(&self) -> Exit;
    fn is_alive(&self) -> bool;
    /// The guest SSH server's host key (OpenSSH public key line), as the guest's init reported
    /// it over the agent channel; `None` before that, or without an SSH server.
    fn ssh_host_key(&self) -> Option<String> {
        None
    }
    /// The guest's supervised services, as powerunit reports them.
    async fn services(&self) -> Result<Vec<ServiceState>, VmmError>;
    /// Run a command in the guest to completion (`req.timeout_ms`, 0 meaning 60 s, after
    /// which the guest kills it and reports `timed_out`). A command that cannot start
    /// (unknown program or user) is [`VmmError::GuestRefused`].
    async fn exec(&self, req: Exec) -> Result<ExecResult, VmmError>;
    /// The tail of a service's log in the guest (`service` empty: the first, main one), at
    /// most `max_bytes`. An unknown service is [`VmmError::GuestRefused`].
    async fn read_log(
        &self,
        service: &str,
        max_bytes: u32,
    ) -> Result<pitwall_proto::v1::LogData, VmmError>;
}

#[async_trait]
pub trait Vmm: Send + Sync + 'static {
    /// `"qemu"`, `"firecracker"`, …
    fn kind(&self) -> &'static str;
    /// Start the VMM process for `cfg`. Returns once the process runs (not once the guest is
    /// ready: see [`VmInstance::wait_ready`]). The process outlives the host daemon.
    async fn launch(&self, cfg: &VmConfig) -> Result<Box<dyn VmInstance>, VmmError>;
    /// Find the VMM a previous host daemon started in `run_dir`, if it still runs.
    async fn reattach(&self, run_dir: &Path) -> Result<Option<Box<dyn VmInstance>>, VmmError>;
}
