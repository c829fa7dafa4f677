//! What the guest-booting tests share: the kernel, initramfs and busybox base fixture, one
//! test VM's disks and config, console helpers, and a throwaway network namespace.
//! See `boot.rs` for what these tests need on the machine.

// Each test binary uses a different part of this module.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use pitwall_proto::v1::{GuestConfig, GuestNetwork};
use pitwall_vmm::kernel::{self, KernelInfo};
use pitwall_vmm::{disk, Disk, Nic, QemuVmm, VmConfig, VmInstance, Vmm, BASE_LABEL, DATA_LABEL};

pub const READY_TIMEOUT: Duration = Duration::from_secs(120);

pub static BOOTS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

pub struct Fixture {
    pub kernel: KernelInfo,
    pub initrd: PathBuf,
    pub base: PathBuf,
}

pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("workspace root")
}

pub fn skip() -> bool {
    if std::env::var_os("PITWALL_SKIP_VM_TESTS").is_some_and(|v| v == "1") {
        eprintln!("PITWALL_SKIP_VM_TESTS=1: not booting a guest");
        return true;
    }
    false
}

pub fn run(cmd: &mut Command) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

pub fn powerunit_binary() -> PathBuf {
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

/// A base image holding busybox with all its applets.
pub fn busybox_base(dir: &Path) -> PathBuf {
    let tree = tempfile::tempdir().unwrap();
    let t = tree.path();
    for d in ["bin", "etc", "root", "dev", "proc", "sys", "run", "tmp"] {
        std::fs::create_dir_all(t.join(d)).unwrap();
    }
    let busybox = which("busybox").expect("busybox (busybox-static) must be installed");
    std::fs::copy(&busybox, t.join("bin/busybox")).unwrap();
    // Every applet, as `busybox --install -s` would: tests' scripts use what they need.
    let list = Command::new(&busybox).arg("--list").output().unwrap();
    for applet in String::from_utf8_lossy(&list.stdout).split_whitespace() {
        if applet != "busybox" {
            std::os::unix::fs::symlink("busybox", t.join("bin").join(applet)).unwrap();
        }
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

pub fn which(name: &str) -> Option<PathBuf> {
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

pub fn fixture() -> &'static Fixture {
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
pub struct TestVm {
    pub _dir: tempfile::TempDir,
    pub cfg: VmConfig,
}

impl TestVm {
    pub fn new(name: &str, argv: &[&str]) -> Self {
        Self::networked(name, argv, None, None)
    }

    /// A VM whose config disk holds `network` and whose VMM gets `nic`.
    pub fn networked(
        name: &str,
        argv: &[&str],
        network: Option<GuestNetwork>,
        nic: Option<Nic>,
    ) -> Self {
        let guest = GuestConfig {
            argv: argv.iter().map(|s| s.to_string()).collect(),
            network,
            ..Default::default()
        };
        Self::with_config(name, guest, nic)
    }

    /// A VM booting `guest` (its `vm_id` and `hostname` are set from `name`) with `nic`.
    pub fn with_config(name: &str, guest: GuestConfig, nic: Option<Nic>) -> Self {
        let f = fixture();
        // Under /tmp: unix socket paths must stay short.
        let dir = tempfile::Builder::new().prefix("pw-").tempdir().unwrap();
        let data = dir.path().join("data.ext4");
        disk::create_data_disk(&data, 64, DATA_LABEL).unwrap();
        let config = dir.path().join("config.img");
        let guest = GuestConfig {
            vm_id: format!("test-{name}"),
            hostname: name.to_string(),
            ..guest
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

    pub fn data_disk(&self) -> &Path {
        &self.cfg.disks[1].path
    }

    pub async fn launch(&self) -> Box<dyn VmInstance> {
        QemuVmm::new()
            .launch(&self.cfg)
            .await
            .unwrap_or_else(|e| panic!("launch: {e}"))
    }

    /// No process other than zombies names this run dir any more, and no pid or socket file
    /// is left behind.
    pub fn assert_gone(&self) {
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

pub async fn console_shows(path: &Path, needle: &str, timeout: Duration) -> bool {
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

pub fn console(vm: &dyn VmInstance) -> String {
    std::fs::read_to_string(vm.console_path()).unwrap_or_default()
}

/// A throwaway network namespace `pwgn-<pid>-<nanos>` holding the bridge `pwbr0` (the
/// guests' gateway, 172.30.0.1/16) and the TAP `pwtap0` on it; deleted (with everything in
/// it) on drop. Only `ip` commands inside the namespace: the machine's own network is not
/// touched.
pub struct TestNetns {
    pub name: String,
}

pub const GATEWAY: &str = "172.30.0.1";
pub const TAP: &str = "pwtap0";

impl TestNetns {
    /// `None` (after printing why) where namespaces cannot be made: not root, no `ip netns`.
    pub fn create() -> Option<Self> {
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

    pub fn path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.name)
    }

    /// Run `args` inside the namespace.
    pub fn exec(&self, args: &[&str]) -> std::process::Output {
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
