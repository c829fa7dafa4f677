//! Boot benchmark: in one run, bare QEMU booting the kernel, initramfs and root image that
//! Pitwall uses, to powerunit's `powerunit: ready` line on the console (the moment it also
//! tells the host over the agent channel), against
//! `POST /v1/vms` → `RUNNING` through a real `pitwalld all`. Prints medians and the ratio as
//! JSON on stdout.
//!
//! Both paths boot the same artefacts with the same QEMU command line (taken from the QEMU
//! driver), so the difference is what Pitwall adds: the API, the bus, the store, disk
//! preparation, the agent's readiness handshake, status reporting.
//!
//! Usage: `bench/boot.sh [ITERATIONS]` (default 5).

use std::path::Path;
use std::time::{Duration, Instant};

#[path = "stats.rs"]
mod stats;

use anyhow::{bail, Context};
use pitwall_api::CreateVmRequest;
use pitwall_testkit::Daemon;
use pitwall_vmm::{Disk, VmConfig};
use stats::median;

const LINE: &str = "bench-guest-up";
/// What powerunit prints on the console when it reports readiness.
const READY: &str = "powerunit: ready";
const IMAGE: &str = "bench/hello:1";

async fn wait_for_line(console: &Path, deadline: Duration) -> anyhow::Result<()> {
    let start = Instant::now();
    loop {
        if std::fs::read_to_string(console)
            .unwrap_or_default()
            .contains(READY)
        {
            return Ok(());
        }
        if start.elapsed() > deadline {
            bail!(
                "bare QEMU guest did not print {READY:?} within {deadline:?} ({})",
                console.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Boot the image once with bare QEMU and return the seconds to the workload's line.
async fn bare_boot(d: &Daemon, work: &Path, i: usize) -> anyhow::Result<f64> {
    let cache = pitwall_testkit::cache_dir();
    let kernel = pitwall_vmm::kernel::KernelInfo::from_cache(&cache)?
        .context("no kernel in the cache: run scripts/setup.sh")?;
    let powerunit =
        pitwall_testkit::bin_dir().join("../x86_64-unknown-linux-gnu/release/powerunit");
    let initrd =
        pitwall_vmm::kernel::build_initramfs(&kernel, &powerunit, &cache.join("initramfs"))?;
    let images = pitwall_image::ImageCache::open(&d.data_dir.join("host/images"))?;
    let image = images
        .get(&pitwall_core::ImageRef::parse(IMAGE)?)?
        .context("bench image not imported")?;
    let dir = work.join(format!("bare-{i}"));
    let run = dir.join("run");
    std::fs::create_dir_all(&run)?;
    let data = dir.join("data.ext4");
    let config = dir.join("config.img");
    pitwall_vmm::disk::create_data_disk(&data, 64, pitwall_vmm::DATA_LABEL)?;
    let argv: Vec<String> = image
        .config
        .entrypoint
        .iter()
        .chain(image.config.cmd.iter())
        .cloned()
        .collect();
    pitwall_vmm::disk::write_config_disk(
        &config,
        &pitwall_proto::v1::GuestConfig {
            vm_id: format!("bare-{i}"),
            hostname: format!("bare-{i}"),
            argv,
            working_dir: "/".into(),
            base_label: pitwall_vmm::BASE_LABEL.into(),
            data_label: pitwall_vmm::DATA_LABEL.into(),
            ..Default::default()
        },
    )?;
    let cfg = VmConfig {
        id: format!("bare-{i}"),
        name: format!("bare-{i}"),
        run_dir: run.clone(),
        kernel: kernel.vmlinuz.clone(),
        initrd,
        extra_cmdline: String::new(),
        vcpus: 1,
        memory_mib: 256,
        disks: vec![
            Disk {
                path: image.rootfs.clone(),
                read_only: true,
            },
            Disk {
                path: data,
                read_only: false,
            },
            Disk {
                path: config,
                read_only: true,
            },
        ],
        nic: None,
        accel: pitwall_vmm::Accel::Auto,
    };
    let line = pitwall_vmm::qemu::QemuVmm::default().command_line(&cfg)?;
    let t0 = Instant::now();
    let status = std::process::Command::new(&line[0])
        .args(&line[1..])
        .status()?;
    if !status.success() {
        bail!("bare QEMU failed to start: {status}");
    }
    wait_for_line(
        &run.join(pitwall_vmm::qemu::CONSOLE_LOG),
        Duration::from_secs(120),
    )
    .await?;
    let secs = t0.elapsed().as_secs_f64();
    if let Ok(pid) = std::fs::read_to_string(run.join("qemu.pid")) {
        let _ = std::process::Command::new("kill")
            .args(["-9", pid.trim()])
            .status();
    }
    Ok(secs)
}

async fn pitwall_boot(d: &Daemon, i: usize) -> anyhow::Result<f64> {
    let c = d.client()?;
    let name = format!("bench-{i}");
    let req = CreateVmRequest {
        name: name.clone(),
        image: IMAGE.into(),
        memory_mib: Some(256),
        disk_mib: Some(64),
        ..Default::default()
    };
    let t0 = Instant::now();
    c.create_vm(&req).await?;
    c.wait_vm(&name, "RUNNING", Duration::from_secs(120))
        .await?;
    let secs = t0.elapsed().as_secs_f64();
    c.delete_vm(&name).await?;
    let _ = c.wait_vm(&name, "DELETED", Duration::from_secs(60)).await;
    Ok(secs)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let n: usize = std::env::args()
        .nth(1)
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(5);
    let d = Daemon::start().await?;
    let c = d.client()?;
    let work = tempfile::tempdir()?;
    let layout = work.path().join("layout");
    let script = format!("echo {LINE}; exec sleep 100000");
    pitwall_testkit::busybox_image(&layout, "latest", &["/bin/sh", "-c", &script], &[])?;
    let tar = work.path().join("image.tar");
    pitwall_testkit::tar_dir(&layout, &tar)?;
    c.import_image_file(IMAGE, &tar).await?;

    let (mut bare, mut api) = (Vec::new(), Vec::new());
    // Interleaved, so drift in machine load hits both alike.
    for i in 0..n {
        bare.push(bare_boot(&d, work.path(), i).await?);
        api.push(pitwall_boot(&d, i).await?);
    }
    let accel = format!("{:?}", pitwall_vmm::detect_accel()).to_lowercase();
    let (mb, ma) = (median(&bare), median(&api));
    let out = serde_json::json!({
        "benchmark": "boot",
        "iterations": n,
        "accel": accel,
        "bare_qemu_to_ready_s": { "median": mb, "samples": bare },
        "pitwall_post_to_running_s": { "median": ma, "samples": api },
        "ratio_pitwall_over_bare": ma / mb,
        "overhead_s": ma - mb,
    });
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(())
}
