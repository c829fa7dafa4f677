//! powerunit's SSH server in a real guest: one boot (TCG is slow) of the busybox base with
//! `GuestConfig.ssh` and a NIC in a throwaway network namespace (see `boot.rs` for the
//! fixture's needs); OpenSSH's `ssh` and `scp` run inside the namespace against the guest,
//! checking its host key against the one powerunit printed on the console.
//!
//! Needs root, `ip netns` and openssh-client; prints SKIP and passes where it cannot run.

// Test fixtures: a failed setup step should abort the test with its panic.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use common::*;
use pitwall_proto::v1::{GuestConfig, GuestNetwork, GuestSsh};
use pitwall_vmm::Nic;

const GUEST: &str = "172.30.0.5";

fn keygen(path: &Path) {
    run(Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(path));
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[tokio::test]
async fn a_guest_serves_ssh_and_scp_to_an_authorized_key() {
    if skip() {
        return;
    }
    if which("ssh").is_none() || which("scp").is_none() {
        eprintln!("SKIP: needs openssh-client");
        return;
    }
    let Some(ns) = TestNetns::create() else {
        return;
    };
    let _one_at_a_time = BOOTS.lock().await;
    let keys = tempfile::tempdir().unwrap();
    let key = keys.path().join("id");
    keygen(&key);
    let mac = "52:54:00:a1:b2:c5";
    let guest = GuestConfig {
        argv: vec!["/bin/sh".into(), "-c".into(), "sleep 600".into()],
        network: Some(GuestNetwork {
            mac: mac.into(),
            address: format!("{GUEST}/16"),
            gateway: GATEWAY.into(),
            ..Default::default()
        }),
        ssh: Some(GuestSsh {
            port: 0,
            authorized_keys: vec![std::fs::read_to_string(key.with_extension("pub")).unwrap()],
            user_ca_keys: vec![],
        }),
        ..Default::default()
    };
    let nic = Nic {
        tap: TAP.into(),
        mac: mac.into(),
        netns: Some(ns.path()),
    };
    let t = TestVm::with_config("sshguest", guest, Some(nic));
    let vm = t.launch().await;
    vm.wait_ready(READY_TIMEOUT)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", console(&*vm)));
    let log = console(&*vm);
    let host_key = log
        .lines()
        .find_map(|l| {
            l.split_once(", host key ")
                .map(|(_, k)| k.trim().to_string())
        })
        .unwrap_or_else(|| panic!("no host key on the console:\n{log}"));
    assert!(host_key.starts_with("ssh-ed25519 "), "{host_key}");
    let known = keys.path().join("known_hosts");
    std::fs::write(&known, format!("{GUEST} {host_key}\n")).unwrap();
    let opts: Vec<String> = [
        "-F",
        "/dev/null",
        "-o",
        "BatchMode=yes",
        "-o",
        "StrictHostKeyChecking=yes",
        "-o",
        "ConnectTimeout=20",
        "-o",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain([
        format!("UserKnownHostsFile={}", known.display()),
        "-i".into(),
        key.display().to_string(),
    ])
    .collect();
    let mut ssh = vec!["ssh".to_string()];
    ssh.extend(opts.iter().cloned());
    ssh.extend([format!("root@{GUEST}"), "echo hi".into()]);
    let args: Vec<&str> = ssh.iter().map(String::as_str).collect();
    // The first connection may need the gateway's ARP answer: a few tries, no sleeps.
    let mut out = ns.exec(&args);
    for _ in 0..3 {
        if out.status.success() {
            break;
        }
        out = ns.exec(&args);
    }
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "hi\n",
        "{}\n{}",
        text(&out),
        console(&*vm)
    );

    // A terminal session gets a pseudo-terminal of the guest's devpts.
    let mut tty = vec!["ssh".to_string(), "-tt".into()];
    tty.extend(opts.iter().cloned());
    tty.extend([format!("root@{GUEST}"), "tty".into()]);
    let o = ns.exec(&tty.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(
        String::from_utf8_lossy(&o.stdout).starts_with("/dev/pts/"),
        "{}",
        text(&o)
    );

    let data: Vec<u8> = (0..1_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let local = keys.path().join("payload");
    std::fs::write(&local, &data).unwrap();
    let back = keys.path().join("back");
    for (from, to) in [
        (
            local.display().to_string(),
            format!("root@{GUEST}:/root/payload"),
        ),
        (
            format!("root@{GUEST}:/root/payload"),
            back.display().to_string(),
        ),
    ] {
        let mut scp = vec!["scp".to_string()];
        scp.extend(opts.iter().cloned());
        scp.extend([from, to]);
        let args: Vec<&str> = scp.iter().map(String::as_str).collect();
        let o = ns.exec(&args);
        assert!(o.status.success(), "{}\n{}", text(&o), console(&*vm));
    }
    assert!(
        std::fs::read(&back).unwrap() == data,
        "scp changed the file"
    );
    let log = console(&*vm);
    assert!(log.contains("ssh: accepted root from 172.30.0.1"), "{log}");
    let _ = vm.kill().await;
    let _ = tokio::time::timeout(Duration::from_secs(10), vm.wait_exit()).await;
}
