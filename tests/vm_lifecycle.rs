//! A real VM from an OCI image through the API: import, create, RUNNING, console, stop,
//! delete, and nothing left behind.

use pitwall_e2e::*;
use pitwall_testkit::Daemon;

#[tokio::test(flavor = "multi_thread")]
async fn vm_boots_from_an_imported_image_and_leaves_nothing_behind() -> anyhow::Result<()> {
    let d = Daemon::start().await?;
    let c = d.client()?;
    import_hello(&c, "e2e/hello:1.0").await?;

    let vm = c.create_vm(&create("web-1", "e2e/hello:1.0")).await?;
    assert_eq!(vm.state, "PENDING");
    let vm = wait(&d, "web-1", "RUNNING", 180).await?;
    assert_eq!(vm.desired_state, "RUNNING");
    let console = console_contains(&c, "web-1", HELLO, 60).await?;
    assert!(
        console.contains("from web-1"),
        "hostname is the VM name: {console}"
    );
    assert!(
        console.contains(" (erofs), data "),
        "the guest mounted the EROFS base the host built: {console}"
    );
    assert!(!d.vmm_pids().is_empty(), "a VMM process runs");

    c.stop_vm("web-1").await?;
    let vm = wait(&d, "web-1", "STOPPED", 60).await?;
    assert_eq!(vm.reason, None, "a requested stop is not a failure");
    assert!(d.vmm_pids().is_empty(), "no VMM after stop");

    c.delete_vm("web-1").await?;
    let gone = wait(&d, "web-1", "DELETED", 60).await;
    // Either the wait saw DELETED, or the VM was already gone when it looked.
    if let Err(e) = gone {
        assert!(e.to_string().contains("no VM named"), "{e}");
    }
    assert!(c.list_vms().await?.is_empty());
    assert!(d.vmm_pids().is_empty(), "no VMM process is left");
    assert!(
        !vm_dir(&d, &vm.id).exists(),
        "the VM's directory is removed"
    );
    Ok(())
}
