//! Killing `pitwalld all` while a VM runs loses nothing: after a restart the VM is listed,
//! RUNNING, re-attached (console still served), and can be deleted cleanly.

use pitwall_e2e::*;
use pitwall_testkit::Daemon;

#[tokio::test(flavor = "multi_thread")]
async fn a_running_vm_survives_a_daemon_kill_and_is_reattached() -> anyhow::Result<()> {
    let mut d = Daemon::start().await?;
    let c = d.client()?;
    import_hello(&c, "e2e/hello:1.0").await?;
    c.create_vm(&create("survivor", "e2e/hello:1.0")).await?;
    let before = wait(&d, "survivor", "RUNNING", 180).await?;
    let pids = d.vmm_pids();
    assert_eq!(pids.len(), 1, "one VMM: {pids:?}");

    d.kill9()?;
    assert_eq!(d.vmm_pids(), pids, "the VMM outlives the daemon");
    d.spawn().await?;

    let c = d.client()?;
    let after = c.get_vm("survivor").await?;
    assert_eq!(after.id, before.id);
    assert_eq!(after.state, "RUNNING", "{after:?}");
    // the host re-attached: its heartbeat still reports RUNNING, and the console is served
    console_contains(&c, "survivor", HELLO, 30).await?;
    assert_eq!(d.vmm_pids(), pids, "not restarted, not doubled");

    c.delete_vm("survivor").await?;
    let _ = wait(&d, "survivor", "DELETED", 60).await;
    assert!(c.list_vms().await?.is_empty());
    assert!(d.vmm_pids().is_empty());
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_vm_whose_vmm_died_with_the_daemon_is_marked_stopped_not_lost() -> anyhow::Result<()> {
    let mut d = Daemon::start().await?;
    let c = d.client()?;
    import_hello(&c, "e2e/hello:1.0").await?;
    c.create_vm(&create("victim", "e2e/hello:1.0")).await?;
    wait(&d, "victim", "RUNNING", 180).await?;

    d.kill9()?;
    for pid in d.vmm_pids() {
        nix_kill(pid);
    }
    d.spawn().await?;

    let vm = wait(&d, "victim", "STOPPED", 60).await?;
    let reason = vm.reason.unwrap_or_default();
    assert!(
        reason.contains("gone when the host daemon restarted"),
        "{reason}"
    );
    assert_eq!(
        vm.desired_state, "STOPPED",
        "not restarted behind the user's back"
    );
    // and it can be started again
    d.client()?.start_vm("victim").await?;
    wait(&d, "victim", "RUNNING", 180).await?;
    Ok(())
}

fn nix_kill(pid: i32) {
    let _ = std::process::Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status();
    // wait until it is gone
    for _ in 0..100 {
        if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}
