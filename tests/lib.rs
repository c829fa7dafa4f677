//! Shared helpers of the end-to-end tests (which live beside this file).
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::time::Duration;

use pitwall_api::{Client, CreateVmRequest, Vm};
use pitwall_testkit::Daemon;

/// The line the test image prints on its console.
pub const HELLO: &str = "hello-from-pitwall-e2e";

/// Import a busybox image whose command prints [`HELLO`] and then sleeps, as `reference`.
pub async fn import_hello(client: &Client, reference: &str) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let layout = dir.path().join("layout");
    let script = format!("echo {HELLO} from $(hostname); exec sleep 100000");
    pitwall_testkit::busybox_image(&layout, "latest", &["/bin/sh", "-c", &script], &[])?;
    let tar = dir.path().join("image.tar");
    pitwall_testkit::tar_dir(&layout, &tar)?;
    client.import_image_file(reference, &tar).await?;
    Ok(())
}

pub fn create(name: &str, image: &str) -> CreateVmRequest {
    CreateVmRequest {
        name: name.into(),
        image: image.into(),
        memory_mib: Some(256),
        disk_mib: Some(64),
        ..Default::default()
    }
}

/// Wait for a state, and on failure put the daemon's log into the error.
pub async fn wait(d: &Daemon, name: &str, state: &str, secs: u64) -> anyhow::Result<Vm> {
    match d
        .client()?
        .wait_vm(name, state, Duration::from_secs(secs))
        .await
    {
        Ok(vm) => Ok(vm),
        Err(e) => anyhow::bail!(
            "waiting for {name} to be {state}: {e}\n--- pitwalld log ---\n{}",
            d.log_text()
        ),
    }
}

/// Poll the console until it contains `needle`.
pub async fn console_contains(
    client: &Client,
    name: &str,
    needle: &str,
    secs: u64,
) -> anyhow::Result<String> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        let text = String::from_utf8_lossy(&client.console(name, None).await?).into_owned();
        if text.contains(needle) {
            return Ok(text);
        }
        if tokio::time::Instant::now() > deadline {
            anyhow::bail!("console of {name} never showed {needle:?}; it has:\n{text}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A VM's directory on the host.
pub fn vm_dir(d: &Daemon, id: &str) -> PathBuf {
    d.data_dir.join("host").join("vms").join(id)
}
