//! The QEMU `microvm` driver.
//!
//! Every VM lives in its run directory: `qemu.pid`, the QMP socket `qmp.sock`, the agent
//! socket `agent.sock` (virtio-serial port `org.pitwall.agent`), the serial console socket
//! `console.sock` and its capture `console.log`. QEMU is started with `-daemonize`, so it is
//! never our child and outlives the host daemon; [`QemuVmm::reattach`] finds it again from
//! `qemu.pid` (checking `/proc/<pid>/cmdline` names this run directory, against PID reuse).
//!
//! The console chardev is a socket server with `logfile=console.log,logappend=on`: QEMU
//! writes every byte to the file whether or not a client is attached, which is our capture
//! and survives host-daemon restarts.
//!
//! Findings with QEMU 7.2 and Debian's cloud kernel: the kernel has no
//! `CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES`, so virtio-mmio devices are found only through ACPI
//! (`-M microvm,acpi=on`); with ACPI the guest's `reboot(RB_POWER_OFF)` makes QEMU exit
//! (status 0), and `panic=-1` plus `-no-reboot` turns a guest panic into an exit too. On a
//! clean exit (guest power-off, QMP `quit`) QEMU removes its pid file and sockets itself;
//! after a SIGKILL the driver does. `-sandbox ...,elevateprivileges=deny` breaks
//! `-daemonize` (its `setsid` is refused, QEMU exits 1 without a message).

mod agent;
mod instance;
mod process;
mod qmp;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use async_trait::async_trait;

pub use instance::QemuInstance;
use process::VmmProcess;

use crate::accel::{detect_accel, host_tsc_khz};
use crate::{Accel, Nic, VmConfig, VmInstance, Vmm, VmmError};

pub const QEMU_PID: &str = "qemu.pid";
pub const QMP_SOCK: &str = "qmp.sock";
pub const AGENT_SOCK: &str = "agent.sock";
pub const CONSOLE_SOCK: &str = "console.sock";
pub const CONSOLE_LOG: &str = "console.log";
/// The virtio-serial port name powerunit looks for.
pub const AGENT_PORT: &str = "org.pitwall.agent";
/// How long the daemonizing launcher may take to report success or failure.
const LAUNCH_TIMEOUT: Duration = Duration::from_secs(30);
/// `sun_path` holds 108 bytes including the terminating NUL.
const MAX_SOCKET_PATH: usize = 107;

/// Drives `qemu-system-x86_64 -M microvm`.
#[derive(Debug, Clone)]
pub struct QemuVmm {
    /// The QEMU binary (looked up in `PATH` when not absolute).
    pub binary: PathBuf,
    /// Accelerator when the VM's config says [`Accel::Auto`]; `Auto` detects.
    pub accel: Accel,
}

impl Default for QemuVmm {
    fn default() -> Self {
        Self {
            binary: PathBuf::from("qemu-system-x86_64"),
            accel: Accel::Auto,
        }
    }
}

/// Files of a run directory that would confuse a later start once QEMU is gone (the console
/// log stays: it is the VM's history).
pub(crate) fn remove_runtime_files(run_dir: &Path) {
    for f in [QEMU_PID, QMP_SOCK, AGENT_SOCK, CONSOLE_SOCK] {
        let _ = std::fs::remove_file(run_dir.join(f));
    }
}

/// Escape a value for a QEMU `-opt key=value,...` list (commas are doubled).
fn opt(s: &str) -> String {
    s.replace(',', ",,")
}

fn utf8<'a>(vm: &str, p: &'a Path) -> Result<&'a str, VmmError> {
    p.to_str().ok_or_else(|| VmmError::Launch {
        vm: vm.to_string(),
        why: format!("path {} is not UTF-8", p.display()),
    })
}

/// The kernel command line: console, panic behaviour, TSC hints under TCG, then `extra`.
pub fn kernel_cmdline(accel: Accel, tsc_khz: Option<u64>, extra: &str) -> String {
    let mut c = String::from("console=ttyS0 panic=-1");
    if accel != Accel::Kvm {
        // Under TCG on microvm the kernel may hang calibrating the TSC; tell it the rate.
        if let Some(khz) = tsc_khz {
            c.push_str(&format!(" tsc_early_khz={khz} tsc=reliable"));
        }
    }
    if !extra.trim().is_empty() {
        c.push(' ');
        c.push_str(extra.trim());
    }
    c
}

/// QEMU's arguments (without the binary) for `cfg`, with `run_dir` absolute and `accel`
/// resolved (`Auto` is treated as TCG here).
pub fn qemu_args(
    cfg: &VmConfig,
    run_dir: &Path,
    accel: Accel,
    tsc_khz: Option<u64>,
) -> Result<Vec<String>, VmmError> {
    let vm = cfg.id.as_str();
    let rd = |f: &str| run_dir.join(f);
    let path = |p: &Path| utf8(vm, p).map(opt);
    let (accel_name, cpu) = match accel {
        Accel::Kvm => ("kvm", "host,-arch-capabilities"),
        Accel::Tcg | Accel::Auto => ("tcg", "max"),
    };
    let mut a: Vec<String> = Vec::new();
    let mut push = |xs: &[&str]| a.extend(xs.iter().map(|s| s.to_string()));
    let name = opt(if cfg.name.is_empty() {
        &cfg.id
    } else {
        &cfg.name
    });
    push(&["-name", &name]);
    push(&["-M", "microvm,acpi=on"]);
    push(&["-nodefaults", "-no-user-config", "-nographic", "-no-reboot"]);
    push(&["-accel", accel_name, "-cpu", cpu]);
    push(&[
        "-m",
        &cfg.memory_mib.to_string(),
        "-smp",
        &cfg.vcpus.max(1).to_string(),
    ]);
    push(&[
        "-kernel",
        utf8(vm, &cfg.kernel)?,
        "-initrd",
        utf8(vm, &cfg.initrd)?,
    ]);
    push(&[
        "-append",
        &kernel_cmdline(accel, tsc_khz, &cfg.extra_cmdline),
    ]);
    let console = format!(
        "socket,id=console,path={},server=on,wait=off,logfile={},logappend=on",
        path(&rd(CONSOLE_SOCK))?,
        path(&rd(CONSOLE_LOG))?
    );
    push(&["-chardev", &console, "-serial", "chardev:console"]);
    let qmp = format!(
        "socket,id=qmp,path={},server=on,wait=off",
        path(&rd(QMP_SOCK))?
    );
    push(&["-chardev", &qmp, "-mon", "chardev=qmp,mode=control"]);
    let agent = format!(
        "socket,id=agent,path={},server=on,wait=off",
        path(&rd(AGENT_SOCK))?
    );
    push(&["-chardev", &agent, "-device", "virtio-serial-device"]);
    push(&[
        "-device",
        &format!("virtserialport,chardev=agent,name={AGENT_PORT}"),
    ]);
    for (i, disk) in cfg.disks.iter().enumerate() {
        let ro = if disk.read_only { "on" } else { "off" };
        let drive = format!(
            "id=disk{i},file={},format=raw,if=none,readonly={ro}",
            path(&disk.path)?
        );
        push(&[
            "-drive",
            &drive,
            "-device",
            &format!("virtio-blk-device,drive=disk{i}"),
        ]);
    }
    if let Some(nic) = &cfg.nic {
        // vhost=off: vhost-net needs /dev/vhost-net and KVM; the device works the same without.
        let netdev = format!(
            "tap,id=net0,ifname={},script=no,downscript=no,vhost=off",
            opt(&nic.tap)
        );
        push(&[
            "-netdev",
            &netdev,
            "-device",
            &format!("virtio-net-device,netdev=net0,mac={}", opt(&nic.mac)),
        ]);
    }
    // seccomp; `elevateprivileges=deny` would also block the setsid(2) of `-daemonize` (QEMU
    // exits 1 without a message) and `spawn=deny` its fork, so those two stay allowed.
    push(&["-sandbox", "on,obsolete=deny,resourcecontrol=deny"]);
    push(&["-daemonize", "-pidfile", utf8(vm, &rd(QEMU_PID))?]);
    Ok(a)
}

impl QemuVmm {
    pub fn new() -> Self {
        Self::default()
    }

    /// The accelerator a launch of `cfg` uses: the VM's choice, else the driver's, else
    /// [`detect_accel`].
    pub fn resolve_accel(&self, cfg: &VmConfig) -> Accel {
        match (cfg.accel, self.accel) {
            (Accel::Kvm | Accel::Tcg, _) => cfg.accel,
            (Accel::Auto, Accel::Kvm | Accel::Tcg) => self.accel,
            (Accel::Auto, Accel::Auto) => detect_accel(),
        }
    }

    /// The full command line a launch of `cfg` runs (binary first).
    pub fn command_line(&self, cfg: &VmConfig) -> Result<Vec<String>, VmmError> {
        let run_dir = absolute(&cfg.id, &cfg.run_dir)?;
        let mut line = vec![self.binary.to_string_lossy().into_owned()];
        line.extend(qemu_args(
            cfg,
            &run_dir,
            self.resolve_accel(cfg),
            host_tsc_khz(),
        )?);
        Ok(line)
    }

    fn launch_err(vm: &str, why: impl Into<String>) -> VmmError {
        VmmError::Launch {
            vm: vm.to_string(),
            why: why.into(),
        }
    }

    /// Check what QEMU would otherwise fail on less clearly.
    fn preflight(cfg: &VmConfig, run_dir: &Path) -> Result<(), VmmError> {
        let vm = &cfg.id;
        for (what, p) in [("kernel", &cfg.kernel), ("initrd", &cfg.initrd)] {
            if !p.is_file() {
                return Err(Self::launch_err(
                    vm,
                    format!("{what} {} does not exist", p.display()),
                ));
            }
        }
        for d in &cfg.disks {
            if !d.path.is_file() {
                return Err(Self::launch_err(
                    vm,
                    format!("disk {} does not exist", d.path.display()),
                ));
            }
        }
        for s in [QMP_SOCK, AGENT_SOCK, CONSOLE_SOCK] {
            let len = run_dir.join(s).as_os_str().len();
            if len > MAX_SOCKET_PATH {
                return Err(Self::launch_err(
                    vm,
                    format!(
                        "run dir {} is too long for unix sockets ({len} > {MAX_SOCKET_PATH} bytes); use a shorter one",
                        run_dir.display()
                    ),
                ));
            }
        }
        if let Some(nic) = &cfg.nic {
            check_nic(nic).map_err(|why| Self::launch_err(vm, why))?;
        }
        if cfg.memory_mib < 64 {
            return Err(Self::launch_err(
                vm,
                format!(
                    "{} MiB of memory is too little (64 at least)",
                    cfg.memory_mib
                ),
            ));
        }
        Ok(())
    }
}

/// What QEMU would refuse less clearly (or the guest not find): the TAP's name, the MAC's
/// form, the namespace's existence.
fn check_nic(nic: &Nic) -> Result<(), String> {
    let tap = &nic.tap;
    if tap.is_empty() || tap.len() > 15 || tap.contains(['/', ',', ' ', ':']) {
        return Err(format!(
            "TAP name {tap:?} is not an interface name (1 to 15 bytes, no '/', ',', ':' or spaces)"
        ));
    }
    let octets: Vec<&str> = nic.mac.split(':').collect();
    let mac_ok = octets.len() == 6
        && octets
            .iter()
            .all(|o| o.len() == 2 && o.bytes().all(|b| b.is_ascii_hexdigit()));
    if !mac_ok {
        return Err(format!(
            "MAC {:?} is not six hex pairs like 52:54:00:12:34:56",
            nic.mac
        ));
    }
    if let Some(ns) = &nic.netns {
        if !ns.exists() {
            return Err(format!("network namespace {} does not exist", ns.display()));
        }
    }
    Ok(())
}

/// Make `cmd` run in the network namespace at `path` (entered between fork and exec).
#[allow(unsafe_code)]
fn enter_netns(vm: &str, cmd: &mut tokio::process::Command, path: &Path) -> Result<(), VmmError> {
    use std::os::fd::AsFd;
    // Opened here, in the parent: the child only calls setns(2) on it. O_CLOEXEC (std's
    // default) keeps it out of QEMU.
    let ns = std::fs::File::open(path).map_err(|e| VmmError::Launch {
        vm: vm.to_string(),
        why: format!("open network namespace {}: {e}", path.display()),
    })?;
    // SAFETY: the closure runs in the forked child before exec; it only calls setns(2) (a
    // plain system call, async-signal-safe) on a descriptor opened before the fork, and
    // allocates nothing and takes no lock.
    unsafe {
        cmd.pre_exec(move || {
            rustix::thread::move_into_link_name_space(
                ns.as_fd(),
                Some(rustix::thread::LinkNameSpaceType::Network),
            )
            .map_err(std::io::Error::from)
        });
    }
    Ok(())
}

fn absolute(vm: &str, p: &Path) -> Result<PathBuf, VmmError> {
    std::path::absolute(p).map_err(|e| VmmError::Launch {
        vm: vm.to_string(),
        why: format!("run dir {}: {e}", p.display()),
    })
}

/// The live QEMU of `run_dir`, if `qemu.pid` names one.
fn find_running(run_dir: &Path) -> Option<VmmProcess> {
    let pid: i32 = std::fs::read_to_string(run_dir.join(QEMU_PID))
        .ok()?
        .trim()
        .parse()
        .ok()?;
    let proc = VmmProcess::open(pid)?;
    // Checked after opening the pidfd: a match now means the pidfd is that QEMU's.
    (process::is_qemu_for(pid, run_dir) && proc.is_alive()).then_some(proc)
}

#[async_trait]
impl Vmm for QemuVmm {
    fn kind(&self) -> &'static str {
        "qemu"
    }

    async fn launch(&self, cfg: &VmConfig) -> Result<Box<dyn VmInstance>, VmmError> {
        let vm = cfg.id.clone();
        let run_dir = absolute(&vm, &cfg.run_dir)?;
        std::fs::create_dir_all(&run_dir).map_err(|source| VmmError::Io {
            what: "create run dir",
            path: run_dir.clone(),
            source,
        })?;
        if let Some(p) = find_running(&run_dir) {
            return Err(Self::launch_err(
                &vm,
                format!(
                    "QEMU pid {} already runs in {}: reattach to it or stop it first",
                    p.pid(),
                    run_dir.display()
                ),
            ));
        }
        remove_runtime_files(&run_dir);
        Self::preflight(cfg, &run_dir)?;

        let accel = self.resolve_accel(cfg);
        let args = qemu_args(cfg, &run_dir, accel, host_tsc_khz())?;
        tracing::info!(vm_id = %vm, accel = ?accel, run_dir = %run_dir.display(), "launching QEMU");
        tracing::debug!(vm_id = %vm, args = ?args, "QEMU command line");
        let mut launcher = tokio::process::Command::new(&self.binary);
        launcher
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        if let Some(ns) = cfg.nic.as_ref().and_then(|n| n.netns.as_deref()) {
            enter_netns(&vm, &mut launcher, ns)?;
        }
        let launcher = launcher.output();
        let out = match tokio::time::timeout(LAUNCH_TIMEOUT, launcher).await {
            Ok(Ok(out)) => out,
            Ok(Err(e)) => {
                return Err(Self::launch_err(
                    &vm,
                    format!(
                        "cannot run {}: {e} (is qemu-system-x86 installed?)",
                        self.binary.display()
                    ),
                ))
            }
            Err(_) => {
                if let Some(p) = find_running(&run_dir) {
                    let _ = p.signal(rustix::process::Signal::KILL);
                }
                remove_runtime_files(&run_dir);
                return Err(Self::launch_err(
                    &vm,
                    format!("QEMU did not daemonize within {LAUNCH_TIMEOUT:?}"),
                ));
            }
        };
        if !out.status.success() {
            remove_runtime_files(&run_dir);
            let stderr = String::from_utf8_lossy(&out.stderr);
            return Err(Self::launch_err(
                &vm,
                format!("QEMU exited with {}: {}", out.status, stderr.trim()),
            ));
        }
        let process = find_running(&run_dir).ok_or_else(|| {
            Self::launch_err(
                &vm,
                format!(
                    "QEMU daemonized but {} names no running QEMU",
                    run_dir.join(QEMU_PID).display()
                ),
            )
        })?;
        tracing::info!(vm_id = %vm, pid = process.pid(), "QEMU running");
        Ok(Box::new(QemuInstance::start(vm, run_dir, process)))
    }

    async fn reattach(&self, run_dir: &Path) -> Result<Option<Box<dyn VmInstance>>, VmmError> {
        let vm = run_dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let run_dir = absolute(&vm, run_dir)?;
        match find_running(&run_dir) {
            Some(process) => {
                tracing::info!(vm_id = %vm, pid = process.pid(), "re-attached to QEMU");
                Ok(Some(Box::new(QemuInstance::start(vm, run_dir, process))))
            }
            None => {
                remove_runtime_files(&run_dir);
                Ok(None)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Disk;

    fn cfg() -> VmConfig {
        VmConfig {
            id: "vm1".into(),
            name: "web,1".into(),
            run_dir: "/run/pw/vm1".into(),
            kernel: "/k/vmlinuz".into(),
            initrd: "/k/initrd".into(),
            extra_cmdline: "loglevel=4".into(),
            vcpus: 2,
            memory_mib: 256,
            disks: vec![
                Disk {
                    path: "/img/base,1.ext4".into(),
                    read_only: true,
                },
                Disk {
                    path: "/vm/data.ext4".into(),
                    read_only: false,
                },
            ],
            nic: None,
            accel: Accel::Auto,
        }
    }

    fn nic() -> Nic {
        Nic {
            tap: "pw-tap1".into(),
            mac: "52:54:00:12:34:56".into(),
            netns: None,
        }
    }

    fn after<'a>(args: &'a [String], flag: &str) -> Vec<&'a str> {
        args.windows(2)
            .filter(|w| w[0] == flag)
            .map(|w| w[1].as_str())
            .collect()
    }

    #[test]
    fn tcg_gets_cpu_max_and_tsc_hints() {
        let a = qemu_args(
            &cfg(),
            Path::new("/run/pw/vm1"),
            Accel::Tcg,
            Some(2_000_000),
        )
        .unwrap();
        assert_eq!(after(&a, "-accel"), ["tcg"]);
        assert_eq!(after(&a, "-cpu"), ["max"]);
        assert_eq!(
            after(&a, "-append"),
            ["console=ttyS0 panic=-1 tsc_early_khz=2000000 tsc=reliable loglevel=4"]
        );
    }

    #[test]
    fn kvm_gets_host_cpu_without_arch_capabilities_and_no_tsc_hints() {
        let a = qemu_args(
            &cfg(),
            Path::new("/run/pw/vm1"),
            Accel::Kvm,
            Some(2_000_000),
        )
        .unwrap();
        assert_eq!(after(&a, "-accel"), ["kvm"]);
        assert_eq!(after(&a, "-cpu"), ["host,-arch-capabilities"]);
        assert_eq!(after(&a, "-append"), ["console=ttyS0 panic=-1 loglevel=4"]);
    }

    #[test]
    fn disks_keep_their_order_and_read_only_flag_and_commas_are_escaped() {
        let a = qemu_args(&cfg(), Path::new("/run/pw/vm1"), Accel::Tcg, None).unwrap();
        assert_eq!(
            after(&a, "-drive"),
            [
                "id=disk0,file=/img/base,,1.ext4,format=raw,if=none,readonly=on",
                "id=disk1,file=/vm/data.ext4,format=raw,if=none,readonly=off"
            ]
        );
        assert_eq!(after(&a, "-name"), ["web,,1"]);
        assert!(
            after(&a, "-device").contains(&"virtserialport,chardev=agent,name=org.pitwall.agent")
        );
    }

    #[test]
    fn the_console_is_captured_to_a_file_and_qemu_daemonizes() {
        let a = qemu_args(&cfg(), Path::new("/run/pw/vm1"), Accel::Tcg, None).unwrap();
        assert!(after(&a, "-chardev").contains(
            &"socket,id=console,path=/run/pw/vm1/console.sock,server=on,wait=off,logfile=/run/pw/vm1/console.log,logappend=on"
        ));
        assert_eq!(after(&a, "-pidfile"), ["/run/pw/vm1/qemu.pid"]);
        assert!(a.iter().any(|x| x == "-daemonize"));
        assert!(a.iter().any(|x| x == "-no-reboot"));
    }

    #[test]
    fn a_too_long_run_dir_is_refused_before_qemu_runs() {
        let mut c = cfg();
        let dir = tempfile::tempdir().unwrap();
        for f in ["k", "i", "d"] {
            std::fs::write(dir.path().join(f), b"").unwrap();
        }
        c.kernel = dir.path().join("k");
        c.initrd = dir.path().join("i");
        c.disks = vec![Disk {
            path: dir.path().join("d"),
            read_only: false,
        }];
        let long = dir.path().join("x".repeat(100));
        let e = QemuVmm::preflight(&c, &long).unwrap_err();
        assert!(e.to_string().contains("too long for unix sockets"), "{e}");
    }

    #[test]
    fn a_nic_is_a_virtio_mmio_net_device_on_its_tap_without_vhost() {
        let c = VmConfig {
            nic: Some(nic()),
            ..cfg()
        };
        let a = qemu_args(&c, Path::new("/run/pw/vm1"), Accel::Tcg, None).unwrap();
        assert_eq!(
            after(&a, "-netdev"),
            ["tap,id=net0,ifname=pw-tap1,script=no,downscript=no,vhost=off"]
        );
        assert!(
            after(&a, "-device").contains(&"virtio-net-device,netdev=net0,mac=52:54:00:12:34:56"),
            "{a:?}"
        );
    }

    #[test]
    fn without_a_nic_qemu_gets_no_network_device() {
        let a = qemu_args(&cfg(), Path::new("/run/pw/vm1"), Accel::Tcg, None).unwrap();
        assert!(after(&a, "-netdev").is_empty());
        assert!(
            !after(&a, "-device").iter().any(|d| d.contains("net")),
            "{a:?}"
        );
        // -nodefaults: QEMU adds no NIC of its own either.
        assert!(a.iter().any(|x| x == "-nodefaults"));
    }

    #[test]
    fn a_bad_tap_name_mac_or_missing_namespace_is_refused_before_qemu_runs() {
        let bad = [
            Nic {
                tap: "a-tap-name-too-long".into(),
                ..nic()
            },
            Nic {
                tap: "tap,x".into(),
                ..nic()
            },
            Nic {
                mac: "52:54:00:12:34".into(),
                ..nic()
            },
            Nic {
                netns: Some("/run/netns/pw-no-such-namespace".into()),
                ..nic()
            },
        ];
        for (n, expect) in bad
            .into_iter()
            .zip(["TAP name", "TAP name", "MAC", "does not exist"])
        {
            let e = check_nic(&n).unwrap_err();
            assert!(e.contains(expect), "{e}");
        }
        assert_eq!(check_nic(&nic()), Ok(()));
    }

    #[test]
    fn the_vms_accel_wins_over_the_drivers() {
        let q = QemuVmm {
            accel: Accel::Kvm,
            ..QemuVmm::new()
        };
        let mut c = cfg();
        assert_eq!(q.resolve_accel(&c), Accel::Kvm);
        c.accel = Accel::Tcg;
        assert_eq!(q.resolve_accel(&c), Accel::Tcg);
    }
}
