//! Image benchmark (issue 4): from an image in a local registry to a bootable read-only root
//! image, Pitwall against the same work done with the usual tools, in one run:
//!
//! - **baseline**: `skopeo copy docker://… oci:DIR` + `umoci unpack --image` +
//!   `mkfs.ext4 -d` with the options and sizing Pitwall's `ext4.rs` uses;
//! - **pitwall cold**: `registry::pull` into a fresh image cache (download, digest checks,
//!   layer apply, EROFS base build, publish); and the same building an ext4 base
//!   (`base_format = "ext4"`), for comparison;
//! - **second VM**: what the host does per VM for an image already in the cache (the
//!   `prepare` step of the VM actor: cache lookup, data disk, config disk).
//!
//! Iterations are interleaved so drift in machine load hits all alike; the page cache is not
//! dropped (nothing here can do that fairly for both). Prints medians, samples and the ratio
//! as JSON on stdout.
//!
//! Usage: `bench/image.sh [ITERATIONS]` (builds the image once, then runs this), or
//! `bench-image ITERATIONS OCI_LAYOUT` with a layout whose image is tagged `minbase`.

use std::collections::HashSet;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

#[path = "stats.rs"]
mod stats;

use anyhow::{bail, Context};
use pitwall_core::ImageRef;
use pitwall_image::registry::{self, PullProgress, RegistryOptions};
use pitwall_image::{BaseFormat, ImageCache, ImportOptions};
use pitwall_testkit::registry::Registry;
use stats::median;

const REPO: &str = "bench/debian:minbase";
/// The data disk a VM gets by default (`pitwall-core`'s default `disk_mib`).
const DISK_MIB: u64 = 1024;

fn run(cmd: &mut Command) -> anyhow::Result<()> {
    let out = cmd
        .output()
        .with_context(|| format!("cannot run {:?}", cmd.get_program()))?;
    if !out.status.success() {
        bail!(
            "{:?} failed ({}): {}",
            cmd,
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// (size in bytes, inodes) for `mkfs.ext4 -d root`, computed as `pitwall-image`'s ext4.rs
/// does (file data in 4 KiB blocks, directory entries, hard links once; 15 % + 16 MiB slack).
fn ext4_geometry(root: &Path) -> anyhow::Result<(u64, u64)> {
    const BLOCK: u64 = 4096;
    const MIB: u64 = 1 << 20;
    let up = |n: u64, to: u64| n.div_ceil(to) * to;
    let (mut data, mut inodes) = (0u64, 1u64);
    let mut seen = HashSet::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let mut dir_bytes = 24u64;
        for e in std::fs::read_dir(&dir)? {
            let e = e?;
            let m = std::fs::symlink_metadata(e.path())?;
            dir_bytes += up(8 + e.file_name().len() as u64, 4);
            if m.nlink() > 1 && !m.is_dir() && !seen.insert((m.dev(), m.ino())) {
                continue;
            }
            inodes += 1;
            if m.is_dir() {
                stack.push(e.path());
            } else if m.file_type().is_symlink() {
                data += if m.len() > 59 { BLOCK } else { 0 };
            } else if m.is_file() {
                data += up(m.len(), BLOCK) + m.len() / (32 * MIB) * BLOCK;
            }
        }
        data += up(dir_bytes, BLOCK);
    }
    let inodes = inodes + inodes / 10 + 64;
    let bytes = data + inodes * 256;
    Ok((up(bytes + bytes / 100 * 15 + 16 * MIB, MIB), inodes))
}

/// skopeo copy + umoci unpack + mkfs.ext4 -d; returns seconds.
fn baseline(addr: &str, work: &Path, i: usize) -> anyhow::Result<f64> {
    let dir = work.join(format!("baseline-{i}"));
    std::fs::create_dir_all(&dir)?;
    let (layout, bundle, out) = (dir.join("oci"), dir.join("bundle"), dir.join("rootfs.ext4"));
    let t0 = Instant::now();
    run(Command::new("skopeo")
        .args(["--insecure-policy", "copy", "--src-tls-verify=false"])
        .arg(format!("docker://{addr}/{REPO}"))
        .arg(format!("oci:{}:minbase", layout.display())))?;
    run(Command::new("umoci")
        .args(["unpack", "--image"])
        .arg(format!("{}:minbase", layout.display()))
        .arg(&bundle))?;
    let rootfs = bundle.join("rootfs");
    let (size, inodes) = ext4_geometry(&rootfs)?;
    std::fs::File::create(&out)?.set_len(size)?;
    run(Command::new("mkfs.ext4")
        .env("LC_ALL", "C")
        .args([
            "-q", "-F", "-t", "ext4", "-L", "pw-base", "-b", "4096", "-I", "256",
        ])
        .args([
            "-m",
            "0",
            "-O",
            "^has_journal",
            "-E",
            "root_owner=0:0",
            "-N",
        ])
        .arg(inodes.to_string())
        .arg("-d")
        .arg(&rootfs)
        .arg(&out)
        .arg(format!("{}k", size / 1024)))?;
    let secs = t0.elapsed().as_secs_f64();
    std::fs::remove_dir_all(&dir)?;
    Ok(secs)
}

/// Seconds of one cold pull, and of its download part (until every blob is stored).
struct Cold {
    total: f64,
    download: f64,
}

async fn pitwall_cold(addr: &str, cache_dir: &Path, format: BaseFormat) -> anyhow::Result<Cold> {
    let options = ImportOptions {
        base_format: format,
        ..ImportOptions::default()
    };
    let cache = ImageCache::open_with(cache_dir, options)?;
    let reference = ImageRef::parse(&format!("{addr}/{REPO}"))?;
    let opts = RegistryOptions {
        insecure: vec![addr.to_string()],
        ..Default::default()
    };
    let t0 = Instant::now();
    let built = std::sync::Mutex::new(None);
    let progress = |p: PullProgress| {
        if let PullProgress::Building { .. } = p {
            if let Ok(mut b) = built.lock() {
                *b = Some(t0.elapsed().as_secs_f64());
            }
        }
    };
    registry::pull(&cache, &reference, &opts, &progress).await?;
    let total = t0.elapsed().as_secs_f64();
    let download = built
        .lock()
        .ok()
        .and_then(|b| *b)
        .context("the pull never reported Building")?;
    Ok(Cold { total, download })
}

/// The host's per-VM work for a cached image (pitwall-host actor.rs `prepare`): look the
/// image up, create the data disk (a copy of the host's empty-ext4 template for that size,
/// made by the first VM of the size), write the config disk. Returns seconds.
fn second_vm(cache_dir: &Path, addr: &str, vm_dir: &Path, templates: &Path) -> anyhow::Result<f64> {
    let cache = ImageCache::open(cache_dir)?;
    let reference = ImageRef::parse(&format!("{addr}/{REPO}"))?;
    std::fs::create_dir_all(vm_dir)?;
    let t0 = Instant::now();
    let image = cache.get(&reference)?.context("image not cached")?;
    pitwall_vmm::disk::ensure_data_disk(
        &vm_dir.join("data.ext4"),
        DISK_MIB,
        pitwall_vmm::DATA_LABEL,
        templates,
    )?;
    let guest = pitwall_proto::v1::GuestConfig {
        vm_id: "bench".into(),
        hostname: "bench".into(),
        argv: image.config.cmd.clone(),
        env: image.config.env.clone(),
        base_label: pitwall_vmm::BASE_LABEL.into(),
        data_label: pitwall_vmm::DATA_LABEL.into(),
        ..Default::default()
    };
    pitwall_vmm::disk::write_config_disk(&vm_dir.join("config.img"), &guest)?;
    let secs = t0.elapsed().as_secs_f64();
    std::fs::remove_dir_all(vm_dir)?;
    Ok(secs)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    if std::env::var_os("RUST_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .init();
    }
    let mut args = std::env::args().skip(1);
    let n: usize = args.next().map(|s| s.parse()).transpose()?.unwrap_or(5);
    let layout = PathBuf::from(
        args.next()
            .context("usage: bench-image ITERATIONS OCI_LAYOUT (bench/image.sh builds one)")?,
    );
    let registry = Registry::start(None)?;
    registry.push(&layout, REPO, false)?;
    let addr = registry.addr().to_string();
    let blob_bytes: u64 = std::fs::read_dir(layout.join("blobs/sha256"))?
        .map(|e| Ok(e?.metadata()?.len()))
        .sum::<anyhow::Result<u64>>()?;
    // On the same filesystem as the host's data directory would be, not on a tmpfs.
    let work = tempfile::Builder::new()
        .prefix("pitwall-bench-image-")
        .tempdir_in("/var/tmp")?;

    // The first VM of a disk size on a host makes the template (mkfs.ext4, synced); timed
    // apart, and against a per-VM mkfs.ext4 as before templates.
    let templates = work.path().join("disk-templates");
    let first_disk = {
        let dir = work.path().join("first-vm");
        std::fs::create_dir_all(&dir)?;
        let t0 = Instant::now();
        pitwall_vmm::disk::ensure_data_disk(
            &dir.join("data.ext4"),
            DISK_MIB,
            pitwall_vmm::DATA_LABEL,
            &templates,
        )?;
        let secs = t0.elapsed().as_secs_f64();
        std::fs::remove_dir_all(&dir)?;
        secs
    };
    let mut mkfs_disk = Vec::new();
    let (mut base, mut cold, mut download, mut second) = (vec![], vec![], vec![], vec![]);
    let (mut cold_ext4, mut ext4_bytes) = (vec![], 0);
    let mut size_bytes = 0;
    for i in 0..n {
        base.push(baseline(&addr, work.path(), i)?);
        let cache_dir = work.path().join(format!("pitwall-{i}"));
        let c = pitwall_cold(&addr, &cache_dir, BaseFormat::Erofs).await?;
        cold.push(c.total);
        download.push(c.download);
        // The same pull building an ext4 base instead (`[host] base_format = "ext4"`).
        let ext4_dir = work.path().join(format!("pitwall-ext4-{i}"));
        cold_ext4.push(
            pitwall_cold(&addr, &ext4_dir, BaseFormat::Ext4)
                .await?
                .total,
        );
        ext4_bytes = ImageCache::open(&ext4_dir)?
            .get(&ImageRef::parse(&format!("{addr}/{REPO}"))?)?
            .context("pulled image not cached")?
            .size_bytes;
        std::fs::remove_dir_all(&ext4_dir)?;
        let reference = ImageRef::parse(&format!("{addr}/{REPO}"))?;
        size_bytes = ImageCache::open(&cache_dir)?
            .get(&reference)?
            .context("pulled image not cached")?
            .size_bytes;
        for j in 0..3 {
            second.push(second_vm(
                &cache_dir,
                &addr,
                &work.path().join(format!("vm-{i}-{j}")),
                &templates,
            )?);
            let disk = work.path().join(format!("mkfs-{i}-{j}.ext4"));
            let t0 = Instant::now();
            pitwall_vmm::disk::create_data_disk(&disk, DISK_MIB, pitwall_vmm::DATA_LABEL)?;
            mkfs_disk.push(t0.elapsed().as_secs_f64() * 1e3);
            std::fs::remove_file(&disk)?;
        }
        std::fs::remove_dir_all(&cache_dir)?;
    }
    let (mb, mc, ms) = (median(&base), median(&cold), median(&second));
    let out = serde_json::json!({
        "benchmark": "image",
        "iterations": n,
        "image": {
            "repository": REPO,
            "compressed_bytes": blob_bytes,
            "rootfs_erofs_bytes": size_bytes,
            "rootfs_ext4_bytes": ext4_bytes,
        },
        "baseline_skopeo_umoci_mkfs_s": { "median": mb, "samples": base },
        "pitwall_cold_pull_s": {
            "median": mc,
            "samples": cold,
            "download_median": median(&download),
            "download_samples": download,
        },
        "pitwall_second_vm_disks_ms": {
            "median": ms * 1e3,
            "samples": second.iter().map(|s| s * 1e3).collect::<Vec<_>>(),
            "data_disk_mib": DISK_MIB,
            "first_vm_of_this_disk_size_ms": first_disk * 1e3,
        },
        "pitwall_cold_pull_ext4_base_s": { "median": median(&cold_ext4), "samples": cold_ext4 },
        "data_disk_by_mkfs_ms": { "median": median(&mkfs_disk), "samples": mkfs_disk },
        "speedup_baseline_over_pitwall_cold": mb / mc,
        "speedup_baseline_over_pitwall_cold_ext4_base": mb / median(&cold_ext4),
    });
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(())
}
