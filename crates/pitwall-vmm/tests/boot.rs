//! Boots real guests: Debian's cloud kernel, the initramfs with a static powerunit, a
//! busybox base image, under QEMU `microvm` (TCG where KVM is not usable).
//!
//! Needs `qemu-system-x86_64`, `mkfs.ext4`/`debugfs`/`dumpe2fs` (e2fsprogs), `busybox`
//! (busybox-static), and apt for the first kernel provisioning. Set `PITWALL_SKIP_VM_TESTS=1`
//! to skip them on a machine without these.
//!
//! - Kernel: provisioned into `$PITWALL_CACHE_DIR` (default `<workspace>/target/pitwall-cache`)
//!   once, reused across runs (from the cache alone when apt cannot be reached).
//! - powerunit: `$PITWALL_POWERUNIT` if set, else built here with
//!   `RUSTFLAGS="-C target-feature=+crt-static" cargo build --release -p powerunit
//!   --target x86_64-unknown-linux-gnu` into the workspace's `target/`.
//!
//! Boots are serialized (2 cores, TCG) and kept few.
//!
//! The network test needs root and `ip netns`: it builds a throwaway namespace with a
//! bridge (the gateway 172.30.0.1/16) and a TAP, and QEMU runs inside it (`Nic::netns`);
//! nothing of the machine's own interfaces, routes or firewall is touched. It prints SKIP
//! and passes where it cannot run.

// Test fixtures: a failed setup step should abort the test with its panic.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use pitwall_proto::v1::{GuestConfig, GuestNetwork};
use pitwall_vmm::kernel::{self, KernelInfo};
use pitwall_vmm::{
    disk, Disk, Nic, QemuVmm, VmConfig, VmInstance, Vmm, VmmError, BASE_LABEL, DATA_LABEL,
};

const READY_TIMEOUT: Duration = Duration::from_secs(120);

static BOOTS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

struct Fixture {
    kernel: KernelInfo,
    initrd: PathBuf,
    base: PathBuf,
}

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("workspace root")
}

fn skip() -> bool {
    if std::env::var_os("PITWALL_SKIP_VM_TESTS").is_some_and(|v| v == "1") {
        eprintln!("PITWALL_SKIP_VM_TESTS=1: not booting a guest");
        return true;
    }
    false
}

fn run(cmd: &mut Command) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn powerunit_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("PITWALL_POWERUNIT") {
        return PathBuf::from(p);
    }
    let ws = workspace();
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    run(Command::new(cargo)
        .current_dir(&ws)
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env("RUSTFLAGS", "-C target-feature=+crt-static")
        .args([
            "build",
            "--release",
            "-p",
            "powerunit",
            "--target",
            "x86_64-unknown-linux-gnu",
            "--target-dir",
        ])
        .arg(ws.join("target")));
    ws.join("target/x86_64-unknown-linux-gnu/release/powerunit")
}

/// A base image holding busybox and the few applets the tests use.
fn busybox_base(dir: &Path) -> PathBuf {
    let tree = tempfile::tempdir().unwrap();
    let t = tree.path();
    for d in ["bin", "etc", "root", "dev", "proc", "sys", "run", "tmp"] {
        std::fs::create_dir_all(t.join(d)).unwrap();
    }
    let busybox = which("busybox").expect("busybox (busybox-static) must be installed");
    std::fs::copy(busybox, t.join("bin/busybox")).unwrap();
    for applet in ["sh", "echo", "sleep", "cat", "sync"] {
        std::os::unix::fs::symlink("busybox", t.join("bin").join(applet)).unwrap();
    }
    std::fs::write(t.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n").unwrap();
    std::fs::write(t.join("etc/group"), "root:x:0:\n").unwrap();
    std::fs::create_dir_all(dir).unwrap();
    let img = dir.join("busybox-base.ext4");
    let tmp = tempfile::NamedTempFile::new_in(dir).unwrap();
    tmp.as_file().set_len(32 << 20).unwrap();
    run(Command::new("mkfs.ext4")
        .args(["-q", "-F", "-L", BASE_LABEL, "-d"])
        .arg(t)
        .arg(tmp.path()));
    tmp.persist(&img).unwrap();
    img
}

fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")
        .map(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join(name))
                .collect::<Vec<_>>()
        })
        .unwrap_or_default()
        .into_iter()
        .find(|p| p.is_file())
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let cache = std::env::var_os("PITWALL_CACHE_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| workspace().join("target/pitwall-cache"));
        let kernel = match kernel::provision(&cache) {
            Ok(k) => k,
            Err(e) => KernelInfo::from_cache(&cache)
                .expect("read kernel cache")
                .unwrap_or_else(|| panic!("no guest kernel: {e}")),
        };
        let initrd =
            kernel::build_initramfs(&kernel, &powerunit_binary(), &cache.join("initramfs"))
                .unwrap();
        let base = busybox_base(&cache.join("fixtures"));
        Fixture {
            kernel,
            initrd,
            base,
        }
    })
}

/// One VM of a test: its run dir, disks and config.
struct TestVm {
    _dir: tempfile::TempDir,
    cfg: VmConfig,
}

impl TestVm {
    fn new(name: &str, argv: &[&str]) -> Self {
        Self::networked(name, argv, None, None)
    }

    /// A VM whose config disk holds `network` and whose VMM gets `nic`.
    fn networked(
        name: &str,
        argv: &[&str],
        network: Option<GuestNetwork>,
        nic: Option<Nic>,
    ) -> Self {
        let f = fixture();
        // Under /tmp: unix socket paths must stay short.
        let dir = tempfile::Builder::new().prefix("pw-").tempdir().unwrap();
        let data = dir.path().join("data.ext4");
        disk::create_data_disk(&data, 64, DATA_LABEL).unwrap();
        let config = dir.path().join("config.img");
        let guest = GuestConfig {
            vm_id: format!("test-{name}"),
            hostname: name.to_string(),
            argv: argv.iter().map(|s| s.to_string()).collect(),
            network,
            ..Default::default()
        };
        disk::write_config_disk(&config, &guest).unwrap();
        let cfg = VmConfig {
            id: format!("test-{name}"),
            name: name.to_string(),
            run_dir: dir.path().join("run"),
            kernel: f.kernel.vmlinuz.clone(),
            initrd: f.initrd.clone(),
            extra_cmdline: String::new(),
            vcpus: 1,
            memory_mib: 256,
            // The config disk first and the data disk before the base: the guest must find
            // them by content, not by order.
            disks: vec![
                Disk {
                    path: config,
                    read_only: true,
                },
                Disk {
                    path: data,
                    read_only: false,
                },
                Disk {
                    path: f.base.clone(),
                    read_only: true,
                },
            ],
            nic,
            accel: Default::default(),
        };
        Self { _dir: dir, cfg }
    }

    fn data_disk(&self) -> &Path {
        &self.cfg.disks[1].path
    }

    async fn launch(&self) -> Box<dyn VmInstance> {
        QemuVmm::new()
            .launch(&self.cfg)
            .await
            .unwrap_or_else(|e| panic!("launch: {e}"))
    }

    /// No process other than zombies names this run dir any more, and no pid or socket file
    /// is left behind.
    fn assert_gone(&self) {
        let run_dir = self.cfg.run_dir.to_string_lossy().into_owned();
        for entry in std::fs::read_dir("/proc").unwrap().flatten() {
            let Ok(raw) = std::fs::read(entry.path().join("cmdline")) else {
                continue;
            };
            let cmd = String::from_utf8_lossy(&raw).replace('\0', " ");
            assert!(
                !cmd.contains(&run_dir),
                "a process still runs for {run_dir}: {cmd}"
            );
        }
        for f in ["qemu.pid", "qmp.sock", "agent.sock", "console.sock"] {
            assert!(
                !self.cfg.run_dir.join(f).exists(),
                "{f} left in the run dir"
            );
        }
    }
}

async fn console_shows(path: &Path, needle: &str, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if std::fs::read_to_string(path)
            .unwrap_or_default()
            .contains(needle)
        {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn console(vm: &dyn VmInstance) -> String {
    std::fs::read_to_string(vm.console_path()).unwrap_or_default()
}

#[tokio::test]
async fn a_guest_boots_runs_its_workload_and_powers_off_cleanly() {
    if skip() {
        return;
    }
    let _one_at_a_time = BOOTS.lock().await;
    let t = TestVm::new(
        "hello",
        &[
            "/bin/sh",
            "-c",
            "echo kept > /root/marker; sync; echo hello-from-guest; sleep 600",
        ],
    );
    let started = Instant::now();
    let vm = t.launch().await;
    vm.wait_ready(READY_TIMEOUT)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", console(&*vm)));
    eprintln!("launch → ready: {:?}", started.elapsed());
    assert!(
        console_shows(
            &vm.console_path(),
            "hello-from-guest",
            Duration::from_secs(60)
        )
        .await,
        "no hello in the console:\n{}",
        console(&*vm)
    );

    let exit = vm.shutdown(Duration::from_secs(10)).await.unwrap();
    eprintln!("shutdown: {exit:?} after {:?}", started.elapsed());
    assert!(
        !exit.killed,
        "the guest had to be killed:\n{}",
        console(&*vm)
    );
    assert_eq!(exit.workload_code, Some(128 + 15), "sh ends by SIGTERM");
    assert!(!vm.is_alive());
    t.assert_gone();

    // What the workload wrote went through the overlay onto the VM's own disk.
    let out = Command::new("debugfs")
        .args(["-R", "cat /upper/root/marker"])
        .arg(t.data_disk())
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "kept\n");
    let fs = Command::new("dumpe2fs")
        .arg("-h")
        .arg(t.data_disk())
        .output()
        .unwrap();
    // And the guest left that ext4 cleanly: remounted read-only, no journal to replay.
    let fs = String::from_utf8_lossy(&fs.stdout).into_owned();
    assert!(fs.contains("Filesystem state:         clean"), "{fs}");
    assert!(!fs.contains("needs_recovery"), "{fs}");
}

#[tokio::test]
async fn the_workloads_exit_code_is_reported_and_the_guest_powers_off() {
    if skip() {
        return;
    }
    let _one_at_a_time = BOOTS.lock().await;
    let t = TestVm::new("bye", &["/bin/sh", "-c", "echo bye; exit 3"]);
    let vm = t.launch().await;
    let exit = tokio::time::timeout(READY_TIMEOUT, vm.wait_exit())
        .await
        .unwrap_or_else(|_| panic!("the guest did not power off:\n{}", console(&*vm)));
    assert_eq!(exit.workload_code, Some(3), "{}", console(&*vm));
    assert!(!exit.killed);
    assert!(console(&*vm).contains("bye"));
    t.assert_gone();
}

#[tokio::test]
async fn a_running_vm_is_found_again_after_the_handle_is_dropped() {
    if skip() {
        return;
    }
    let _one_at_a_time = BOOTS.lock().await;
    let t = TestVm::new("again", &["/bin/sh", "-c", "sleep 600"]);
    let vm = t.launch().await;
    vm.wait_ready(READY_TIMEOUT)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", console(&*vm)));
    let pid = vm.pid();
    drop(vm); // as when the host daemon restarts

    let qemu = QemuVmm::new();
    let vm = qemu
        .reattach(&t.cfg.run_dir)
        .await
        .unwrap()
        .expect("the VM still runs");
    assert_eq!(vm.pid(), pid);
    // A re-attached link learns the status again from the guest.
    vm.wait_ready(Duration::from_secs(30)).await.unwrap();
    let exit = vm.shutdown(Duration::from_secs(10)).await.unwrap();
    assert!(!exit.killed, "{}", console(&*vm));
    t.assert_gone();
    assert!(qemu.reattach(&t.cfg.run_dir).await.unwrap().is_none());
}

#[tokio::test]
async fn a_workload_that_cannot_start_is_reported_as_a_guest_failure() {
    if skip() {
        return;
    }
    let _one_at_a_time = BOOTS.lock().await;
    let t = TestVm::new("broken", &["/app/missing-server", "--port", "80"]);
    let vm = t.launch().await;
    match vm.wait_ready(READY_TIMEOUT).await {
        Err(VmmError::GuestFailed { why, .. }) => {
            assert!(why.contains("/app/missing-server"), "{why}")
        }
        other => panic!("expected a guest failure, got {other:?}\n{}", console(&*vm)),
    }
    let exit = tokio::time::timeout(Duration::from_secs(30), vm.wait_exit())
        .await
        .expect("the guest powers off");
    assert!(!exit.killed);
    t.assert_gone();
}

#[tokio::test]
async fn kill_stops_a_booting_vm_at_once() {
    if skip() {
        return;
    }
    let _one_at_a_time = BOOTS.lock().await;
    let t = TestVm::new("killed", &["/bin/sh", "-c", "sleep 600"]);
    let vm = t.launch().await;
    assert!(vm.is_alive());
    let exit = tokio::time::timeout(Duration::from_secs(15), vm.kill())
        .await
        .expect("kill returns");
    let exit = exit.unwrap();
    assert!(exit.killed);
    assert_eq!(exit.workload_code, None);
    assert!(!vm.is_alive());
    t.assert_gone();
    // The console capture outlives the VMM.
    assert!(vm.console_path().exists());
}

/// A VM whose initrd is junk: the kernel finds no init and panics.
fn panicking_vm(name: &str, extra_cmdline: &str) -> TestVm {
    let mut t = TestVm::new(name, &["/bin/true"]);
    let junk = t._dir.path().join("junk.img");
    std::fs::write(&junk, vec![0u8; 4096]).unwrap();
    t.cfg.initrd = junk;
    t.cfg.extra_cmdline = extra_cmdline.to_string();
    t
}

#[tokio::test]
async fn a_vmm_that_exits_before_ready_is_reported_with_its_console() {
    if skip() {
        return;
    }
    let _one_at_a_time = BOOTS.lock().await;
    let t = panicking_vm("panics", "");
    let vm = t.launch().await;
    match vm.wait_ready(READY_TIMEOUT).await {
        Err(VmmError::ExitedEarly { console, .. }) => {
            let log = std::fs::read_to_string(&console).unwrap();
            assert!(log.contains("Kernel panic"), "{log}");
        }
        other => panic!("expected ExitedEarly, got {other:?}\n{}", console(&*vm)),
    }
    t.assert_gone();
}

#[tokio::test]
async fn a_guest_that_ignores_shutdown_is_quit_through_qmp() {
    if skip() {
        return;
    }
    let _one_at_a_time = BOOTS.lock().await;
    // panic=0: the panicked kernel hangs instead of rebooting, and never answers the agent.
    let t = panicking_vm("hangs", "panic=0");
    let vm = t.launch().await;
    assert!(console_shows(&vm.console_path(), "Kernel panic", READY_TIMEOUT).await);
    let exit = vm.shutdown(Duration::ZERO).await.unwrap();
    assert!(exit.killed);
    assert!(!vm.is_alive());
    t.assert_gone();
}

/// A throwaway network namespace `pwgn-<pid>-<nanos>` holding the bridge `pwbr0` (the
/// guests' gateway, 172.30.0.1/16) and the TAP `pwtap0` on it; deleted (with everything in
/// it) on drop. Only `ip` commands inside the namespace: the machine's own network is not
/// touched.
struct TestNetns {
    name: String,
}

const GATEWAY: &str = "172.30.0.1";
const TAP: &str = "pwtap0";

impl TestNetns {
    /// `None` (after printing why) where namespaces cannot be made: not root, no `ip netns`.
    fn create() -> Option<Self> {
        if !rustix::process::geteuid().is_root() {
            eprintln!("SKIP: network test needs root (to create a network namespace)");
            return None;
        }
        let listed = Command::new("ip").args(["netns", "list"]).output();
        if !listed.is_ok_and(|o| o.status.success()) {
            eprintln!("SKIP: network test needs `ip netns` (iproute2)");
            return None;
        }
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or_default();
        let name = format!("pwgn-{}-{nanos}", std::process::id());
        run(Command::new("ip").args(["netns", "add", &name]));
        // From here on the guard deletes the namespace whatever fails.
        let ns = Self { name };
        for args in [
            &["link", "set", "lo", "up"][..],
            &["link", "add", "pwbr0", "type", "bridge"],
            &["addr", "add", &format!("{GATEWAY}/16"), "dev", "pwbr0"],
            &["link", "set", "pwbr0", "up"],
            &["tuntap", "add", "dev", TAP, "mode", "tap"],
            &["link", "set", TAP, "master", "pwbr0"],
            &["link", "set", TAP, "up"],
        ] {
            run(Command::new("ip").args(["-n", &ns.name]).args(args));
        }
        Some(ns)
    }

    fn path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.name)
    }

    /// Run `args` inside the namespace.
    fn exec(&self, args: &[&str]) -> std::process::Output {
        Command::new("ip")
            .args(["netns", "exec", &self.name])
            .args(args)
            .output()
            .unwrap()
    }
}

impl Drop for TestNetns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

#[tokio::test]
async fn a_guest_gets_its_address_route_and_dns_from_the_config_and_reaches_the_gateway() {
    if skip() {
        return;
    }
    let Some(ns) = TestNetns::create() else {
        return;
    };
    let _one_at_a_time = BOOTS.lock().await;
    let mac = "52:54:00:a1:b2:c3";
    let network = GuestNetwork {
        mac: mac.into(),
        address: "172.30.0.5/16".into(),
        gateway: GATEWAY.into(),
        dns: vec!["172.30.0.1".into(), "9.9.9.9".into()],
        hosts: vec![format!("{GATEWAY} gateway.pitwall")],
    };
    let nic = Nic {
        tap: TAP.into(),
        // Upper case on purpose: the guest matches MACs whatever their case.
        mac: mac.to_uppercase(),
        netns: Some(ns.path()),
    };
    // The gateway may take a moment to answer the very first ARP: a few tries, no sleeps.
    let script = "busybox ip addr show eth0; busybox ip route; \
                  cat /etc/hostname /etc/hosts /etc/resolv.conf; \
                  for i in 1 2 3 4 5; do \
                    if busybox ping -c 1 -W 2 172.30.0.1; then echo NET-OK; break; fi; \
                  done; sleep 600";
    let t = TestVm::networked(
        "netguest",
        &["/bin/sh", "-c", script],
        Some(network),
        Some(nic),
    );
    let vm = t.launch().await;
    vm.wait_ready(READY_TIMEOUT)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", console(&*vm)));
    let pinged = console_shows(&vm.console_path(), "NET-OK", Duration::from_secs(60)).await;
    let log = console(&*vm);
    assert!(pinged, "the guest did not reach its gateway:\n{log}");
    assert!(
        log.contains("powerunit: eth0 172.30.0.5/16 via 172.30.0.1"),
        "{log}"
    );
    assert!(log.contains("inet 172.30.0.5/16"), "{log}");
    assert!(log.contains("default via 172.30.0.1 dev eth0"), "{log}");
    // The serial console ends lines with \r\n: look for lines, in order.
    let dns1 = log.find("nameserver 172.30.0.1").expect("first nameserver");
    let dns2 = log.find("nameserver 9.9.9.9").expect("second nameserver");
    assert!(dns1 < dns2, "{log}");
    assert!(log.contains("172.30.0.5\tnetguest"), "{log}");
    assert!(log.contains("172.30.0.1\tgateway.pitwall"), "{log}");

    // And the other way: the host side of the bridge reaches the guest.
    let ping = ns.exec(&["busybox", "ping", "-c", "3", "-W", "2", "172.30.0.5"]);
    assert!(
        ping.status.success(),
        "the gateway cannot ping the guest: {}{}",
        String::from_utf8_lossy(&ping.stdout),
        String::from_utf8_lossy(&ping.stderr)
    );

    let exit = vm.shutdown(Duration::from_secs(10)).await.unwrap();
    assert!(!exit.killed, "{}", console(&*vm));
    t.assert_gone();
}

#[tokio::test]
async fn a_network_config_whose_nic_is_missing_fails_the_boot_with_the_reason() {
    if skip() {
        return;
    }
    let _one_at_a_time = BOOTS.lock().await;
    let network = GuestNetwork {
        mac: "52:54:00:00:00:99".into(),
        address: "172.30.0.9/16".into(),
        gateway: GATEWAY.into(),
        ..Default::default()
    };
    // The config names a NIC, the VMM gets none.
    let t = TestVm::networked("nonic", &["/bin/sh", "-c", "echo up"], Some(network), None);
    let vm = t.launch().await;
    match vm.wait_ready(READY_TIMEOUT).await {
        Err(VmmError::GuestFailed { why, .. }) => {
            assert!(
                why.contains("no network interface has MAC 52:54:00:00:00:99"),
                "{why}"
            )
        }
        other => panic!("expected a guest failure, got {other:?}\n{}", console(&*vm)),
    }
    let exit = tokio::time::timeout(Duration::from_secs(30), vm.wait_exit())
        .await
        .expect("the guest powers off");
    assert!(!exit.killed);
    t.assert_gone();
}
