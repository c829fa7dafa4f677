//! The read-only ext4 base image, built from a root tree by `mkfs.ext4 -d` (e2fsprogs ≥ 1.43).
//!
//! Why the external tool: no maintained Rust crate writes ext4, and `mke2fs -d` is what
//! distributions use to build root images; it copies modes, owners, times, hard links,
//! symlinks and extended attributes. No journal (`^has_journal`): the image is never
//! written. Sizing: the tree is measured (file data in 4 KiB blocks, directory blocks, long
//! symlinks, one 256-byte inode per file counted once per hard-link set), given 15 % and
//! 16 MiB of slack, and the inode count is set explicitly. If mkfs still runs out of blocks
//! or inodes, the build is retried larger.

use std::collections::HashSet;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::base::BASE_LABEL;
use crate::error::{ImageError, IoContext};

const BLOCK: u64 = 4096;
const INODE_SIZE: u64 = 256;
const MIB: u64 = 1 << 20;
const ATTEMPTS: u32 = 4;

/// What a tree needs on ext4, measured without following anything.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub data_bytes: u64,
    pub inodes: u64,
}

fn round_up(n: u64, to: u64) -> u64 {
    n.div_ceil(to) * to
}

pub fn measure(root: &Path) -> Result<Usage, ImageError> {
    let mut u = Usage {
        data_bytes: 0,
        inodes: 1,
    };
    let mut seen = HashSet::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let mut dir_bytes = 24u64; // "." and ".."
        for e in fs::read_dir(&dir).ctx("read directory", &dir)? {
            let e = e.ctx("read directory", &dir)?;
            let path = e.path();
            let m = fs::symlink_metadata(&path).ctx("inspect", &path)?;
            dir_bytes += round_up(8 + e.file_name().len() as u64, 4);
            if m.nlink() > 1 && !m.is_dir() && !seen.insert((m.dev(), m.ino())) {
                continue;
            }
            u.inodes += 1;
            if m.is_dir() {
                stack.push(path);
            } else if m.file_type().is_symlink() {
                if m.len() > 59 {
                    u.data_bytes += BLOCK;
                }
            } else if m.is_file() {
                u.data_bytes += round_up(m.len(), BLOCK);
                // extent tree blocks for large, fragmented files
                u.data_bytes += m.len() / (32 * MIB) * BLOCK;
            }
        }
        u.data_bytes += round_up(dir_bytes, BLOCK);
    }
    Ok(u)
}

/// First guess at (filesystem bytes, inode count) for a tree.
pub fn initial_geometry(u: Usage) -> (u64, u64) {
    let inodes = u.inodes + u.inodes / 10 + 64;
    let bytes = u.data_bytes + inodes * INODE_SIZE;
    let size = bytes + bytes / 100 * 15 + 16 * MIB;
    (round_up(size, MIB), inodes)
}

/// Builds `out` (which must not exist) from the tree at `root`. Returns the image size in
/// bytes.
pub fn build(mkfs: &Path, root: &Path, out: &Path) -> Result<u64, ImageError> {
    build_from(mkfs, root, out, initial_geometry(measure(root)?))
}

/// Builds starting from a given (size, inodes), growing it while mkfs runs out of room.
fn build_from(
    mkfs: &Path,
    root: &Path,
    out: &Path,
    (mut size, mut inodes): (u64, u64),
) -> Result<u64, ImageError> {
    let mut attempt = 1;
    loop {
        tracing::debug!(size, inodes, attempt, out = %out.display(), "building ext4");
        match run_mkfs(mkfs, root, out, size, inodes) {
            Ok(()) => return Ok(size),
            Err(Failure::Run(e)) => return Err(e),
            Err(Failure::NoSpace(e)) if attempt < ATTEMPTS => {
                tracing::info!(size, inodes, error = %e, "ext4 image too small, retrying larger");
                size = round_up(size + size / 2, MIB);
                inodes += inodes / 2;
                attempt += 1;
            }
            Err(Failure::NoSpace(e)) => return Err(e),
        }
    }
}

enum Failure {
    Run(ImageError),
    NoSpace(ImageError),
}

fn run_mkfs(mkfs: &Path, root: &Path, out: &Path, size: u64, inodes: u64) -> Result<(), Failure> {
    let _ = fs::remove_file(out);
    let f = fs::File::create(out)
        .ctx("create", out)
        .map_err(Failure::Run)?;
    f.set_len(size).ctx("size", out).map_err(Failure::Run)?;
    drop(f);
    let output = Command::new(mkfs)
        .env("LC_ALL", "C")
        .args([
            "-q", "-F", "-t", "ext4", "-L", BASE_LABEL, "-b", "4096", "-I", "256", "-m", "0",
        ])
        .args(["-O", "^has_journal", "-E", "root_owner=0:0"])
        .arg("-N")
        .arg(inodes.to_string())
        .arg("-d")
        .arg(root)
        .arg(out)
        .arg(format!("{}k", size / 1024))
        .output()
        .map_err(|source| {
            Failure::Run(ImageError::MkfsUnavailable {
                program: mkfs.to_path_buf(),
                install: "e2fsprogs (1.43 or newer, for mkfs.ext4 -d)",
                source,
            })
        })?;
    if output.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&output.stderr).trim().to_string();
    let err = ImageError::MkfsFailed {
        program: mkfs.to_path_buf(),
        path: out.to_path_buf(),
        status: output.status.to_string(),
        stderr: stderr.clone(),
    };
    let no_space = [
        "Could not allocate",
        "No space",
        "No free space",
        "too small",
    ]
    .iter()
    .any(|s| stderr.contains(s));
    Err(if no_space {
        Failure::NoSpace(err)
    } else {
        Failure::Run(err)
    })
}

/// `mkfs.ext4` on the PATH.
pub fn default_mkfs() -> PathBuf {
    PathBuf::from("mkfs.ext4")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn geometry_leaves_room_for_metadata() {
        let (size, inodes) = initial_geometry(Usage {
            data_bytes: 100 * MIB,
            inodes: 1000,
        });
        assert!(size >= 115 * MIB + 16 * MIB, "{size}");
        assert!(inodes >= 1100);
        assert_eq!(size % MIB, 0);
    }

    #[test]
    fn a_too_small_first_guess_is_grown_until_mkfs_succeeds() {
        let d = tempfile::tempdir().expect("tmp");
        let root = d.path().join("root");
        fs::create_dir(&root).expect("dir");
        fs::write(root.join("big"), vec![7u8; 6 << 20]).expect("write");
        let out = d.path().join("img");
        let size = build_from(&default_mkfs(), &root, &out, (4 * MIB, 64)).expect("build");
        assert!(size > 6 * MIB, "{size}");
        assert_eq!(fs::metadata(&out).expect("stat").len(), size);
    }

    #[test]
    fn a_missing_mkfs_says_what_to_install() {
        let d = tempfile::tempdir().expect("tmp");
        let e = build(
            Path::new("/nonexistent/mkfs.ext4"),
            d.path(),
            &d.path().join("img"),
        )
        .expect_err("no mkfs");
        assert!(e.to_string().contains("install e2fsprogs"), "{e}");
    }

    #[test]
    fn measure_counts_hard_links_once() {
        let d = tempfile::tempdir().expect("tmp");
        fs::write(d.path().join("a"), vec![1u8; 5000]).expect("write");
        fs::hard_link(d.path().join("a"), d.path().join("b")).expect("link");
        fs::create_dir(d.path().join("sub")).expect("dir");
        let u = measure(d.path()).expect("measure");
        assert_eq!(u.inodes, 3); // root, a/b, sub
        assert_eq!(u.data_bytes, 2 * BLOCK + BLOCK + BLOCK); // a, root dir, sub dir
    }
}
