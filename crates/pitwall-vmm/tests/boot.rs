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

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use pitwall_proto::v1::GuestNetwork;
use pitwall_vmm::{Nic, QemuVmm, Vmm, VmmError};
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
