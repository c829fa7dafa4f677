//! Mounts and the switch of root: the pseudo filesystems of the initramfs, the overlay of
//! the VM's writable disk on the shared read-only base, and the mounts a workload expects
//! in its new root.

use std::path::Path;

use nix::errno::Errno;
use nix::mount::{mount, MsFlags};

use crate::error::{Context, Result};

/// Where the base image is mounted read-only (inside the initramfs, then the new root).
pub const LOWER: &str = "/run/pw/lower";
/// Where the VM's writable disk is mounted; it holds `upper/` and `work/`.
pub const DATA: &str = "/run/pw/data";
pub const NEWROOT: &str = "/newroot";

fn mount_fs(source: &str, target: &str, fstype: &str, flags: MsFlags, data: &str) -> Result<()> {
    std::fs::create_dir_all(target).context(|| format!("mkdir {target}"))?;
    let data = (!data.is_empty()).then_some(data);
    mount(Some(source), target, Some(fstype), flags, data)
        .context(|| format!("mount {fstype} {source} on {target}"))
}

fn move_mount(from: &str, to: &str) -> Result<()> {
    std::fs::create_dir_all(to).context(|| format!("mkdir {to}"))?;
    mount(Some(from), to, None::<&str>, MsFlags::MS_MOVE, None::<&str>)
        .context(|| format!("move mount {from} to {to}"))
}

/// `/dev` (devtmpfs), `/proc` and `/sys` in the initramfs.
pub fn early() -> Result<()> {
    let nosuid = MsFlags::MS_NOSUID;
    let plain = nosuid | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    std::fs::create_dir_all("/dev").context(|| "mkdir /dev".to_string())?;
    // EBUSY: a kernel with CONFIG_DEVTMPFS_MOUNT mounted it already.
    match mount(
        Some("devtmpfs"),
        "/dev",
        Some("devtmpfs"),
        nosuid,
        Some("mode=0755"),
    ) {
        Ok(()) | Err(Errno::EBUSY) => {}
        Err(e) => return Err(crate::err!("mount devtmpfs on /dev: {e}")),
    }
    mount_fs("proc", "/proc", "proc", plain, "")?;
    mount_fs("sysfs", "/sys", "sysfs", plain, "")
}

/// Mount the base read-only and the data disk, overlay them on [`NEWROOT`], give the new
/// root a `/run` tmpfs holding the two disk mounts (so they stay visible and can be
/// remounted read-only at shutdown), and move `/dev`, `/proc`, `/sys` into it.
pub fn assemble_root(base_dev: &Path, base_fstype: &str, data_dev: &Path) -> Result<()> {
    let base = base_dev.to_string_lossy();
    let data = data_dev.to_string_lossy();
    mount_fs(&base, LOWER, base_fstype, MsFlags::MS_RDONLY, "")?;
    mount_fs(&data, DATA, "ext4", MsFlags::empty(), "")?;
    for d in ["upper", "work"] {
        let p = format!("{DATA}/{d}");
        std::fs::create_dir_all(&p).context(|| format!("mkdir {p}"))?;
    }
    let opts = format!("lowerdir={LOWER},upperdir={DATA}/upper,workdir={DATA}/work");
    mount_fs("overlay", NEWROOT, "overlay", MsFlags::empty(), &opts)?;

    let run = format!("{NEWROOT}/run");
    mount_fs(
        "tmpfs",
        &run,
        "tmpfs",
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        "mode=0755",
    )?;
    move_mount(LOWER, &format!("{NEWROOT}{LOWER}"))?;
    move_mount(DATA, &format!("{NEWROOT}{DATA}"))?;
    for d in ["/dev", "/proc", "/sys"] {
        move_mount(d, &format!("{NEWROOT}{d}"))?;
    }
    Ok(())
}

/// Make [`NEWROOT`] the root: `chdir`, `mount --move . /`, `chroot .`, `chdir /`.
/// The initramfs' own files stay in memory (there are few: the modules are deleted first).
pub fn switch_root() -> Result<()> {
    let _ = std::fs::remove_dir_all("/lib/modules");
    std::env::set_current_dir(NEWROOT).context(|| format!("chdir {NEWROOT}"))?;
    mount(Some("."), "/", None::<&str>, MsFlags::MS_MOVE, None::<&str>)
        .context(|| format!("move {NEWROOT} to /"))?;
    nix::unistd::chroot(".").context(|| "chroot".to_string())?;
    std::env::set_current_dir("/").context(|| "chdir /".to_string())
}

/// Mount points of this mount namespace (field 5 of `/proc/self/mountinfo`).
pub fn mount_points() -> Vec<String> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .map(|t| parse_mount_points(&t))
        .unwrap_or_default()
}

fn parse_mount_points(mountinfo: &str) -> Vec<String> {
    mountinfo
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|p| p.replace("\\040", " "))
        .collect()
}

/// In the new root: `/dev/pts`, `/dev/shm`, `/run` and `/tmp` where not mounted yet.
pub fn late() -> Result<()> {
    let have = mount_points();
    let missing = |p: &str| !have.iter().any(|m| m == p);
    let nosuid_nodev = MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
    if missing("/dev/pts") {
        mount_fs(
            "devpts",
            "/dev/pts",
            "devpts",
            MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
            "gid=5,mode=620,ptmxmode=666",
        )?;
    }
    if missing("/dev/shm") {
        mount_fs("shm", "/dev/shm", "tmpfs", nosuid_nodev, "mode=1777")?;
    }
    if missing("/run") {
        mount_fs("tmpfs", "/run", "tmpfs", nosuid_nodev, "mode=0755")?;
    }
    if missing("/tmp") {
        mount_fs("tmpfs", "/tmp", "tmpfs", nosuid_nodev, "mode=1777")?;
    }
    Ok(())
}

/// Best effort before power-off: make the root overlay and the data disk read-only so the
/// data disk's ext4 is clean. Failures are ignored: `sync` already made the data durable.
pub fn remount_read_only() {
    for target in ["/", DATA] {
        let _ = mount(
            None::<&str>,
            target,
            None::<&str>,
            MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
            None::<&str>,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mount_points_come_from_the_fifth_field() {
        let info = "22 1 0:21 / / rw - overlay overlay rw\n\
                    23 22 0:5 / /dev rw,nosuid - devtmpfs devtmpfs rw\n\
                    30 22 0:30 / /my\\040dir rw - tmpfs tmpfs rw\n";
        assert_eq!(parse_mount_points(info), ["/", "/dev", "/my dir"]);
    }
}
