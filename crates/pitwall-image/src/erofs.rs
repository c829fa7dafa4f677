//! The read-only EROFS base image (the default base format), built from a root tree by
//! `mkfs.erofs` (erofs-utils ≥ 1.5), uncompressed.
//!
//! Why EROFS: the base is never written, and a read-only format is packed as tight as the
//! data allows (no free blocks, no inode tables sized ahead, no journal, no geometry to guess
//! and retry), so building it writes less and reads the tree once. On the benchmark's Debian
//! minbase tree `mkfs.erofs` plus the flush to disk takes about 0.5 s where `mkfs.ext4 -d`
//! takes 1.2 s (docs/performance.md). Uncompressed, because the guest reads it on every boot
//! and under TCG every decompression instruction is emulated. `mkfs.erofs` copies modes,
//! owners, per-file modification times (`--preserve-mtime`), hard links, symlinks, device
//! nodes and extended attributes.
//!
//! Why the external tool: no maintained Rust crate writes EROFS. erofs-utils 1.5 (Debian 12)
//! cannot set a volume label, so [`set_label`] writes [`BASE_LABEL`] into the superblock
//! itself and recomputes the superblock checksum the kernel verifies at mount. That is the one
//! piece of the format written here, and a test checks it against the checksum `mkfs.erofs`
//! writes.

use std::fs::{self, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::base::BASE_LABEL;
use crate::error::{ImageError, IoContext};

/// Where the superblock starts.
const SUPER_OFFSET: u64 = 1024;
/// The superblock checksum covers the rest of the first 4 KiB block after [`SUPER_OFFSET`].
const CHECKSUMMED_LEN: usize = 4096 - SUPER_OFFSET as usize;
const MAGIC: u32 = 0xE0F5_E1E2;
/// Offsets inside the superblock (`struct erofs_super_block`, linux `fs/erofs/erofs_fs.h`).
const CHECKSUM_AT: usize = 4;
const FEATURE_COMPAT_AT: usize = 8;
const BLKSZBITS_AT: usize = 12;
const VOLUME_NAME_AT: usize = 0x40;
const VOLUME_NAME_LEN: usize = 16;
/// `EROFS_FEATURE_COMPAT_SB_CHKSUM`: the superblock carries a CRC32C.
const COMPAT_SB_CHKSUM: u32 = 0x1;

/// What to install when `mkfs.erofs` cannot be run.
pub const INSTALL_HINT: &str =
    "erofs-utils (mkfs.erofs), or set [host] base_format = \"ext4\" to build ext4 base images";

/// Builds `out` (replaced if it exists) from the tree at `root`, labelled [`BASE_LABEL`].
/// Returns the image size in bytes.
pub fn build(mkfs: &Path, root: &Path, out: &Path) -> Result<u64, ImageError> {
    let _ = fs::remove_file(out);
    tracing::debug!(out = %out.display(), "building erofs");
    let output = Command::new(mkfs)
        .env("LC_ALL", "C")
        .args(["--quiet", "--preserve-mtime"])
        .arg(out)
        .arg(root)
        .output()
        .map_err(|source| ImageError::MkfsUnavailable {
            program: mkfs.to_path_buf(),
            install: INSTALL_HINT,
            source,
        })?;
    if !output.status.success() {
        return Err(ImageError::MkfsFailed {
            program: mkfs.to_path_buf(),
            path: out.to_path_buf(),
            status: output.status.to_string(),
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_string(),
        });
    }
    set_label(out, BASE_LABEL)?;
    Ok(fs::metadata(out).ctx("inspect", out)?.len())
}

/// Writes `label` (at most 16 bytes) as the volume name of the EROFS image at `path` and
/// updates the superblock checksum when the image has one.
pub fn set_label(path: &Path, label: &str) -> Result<(), ImageError> {
    let bad = |detail: String| ImageError::MkfsFailed {
        program: PathBuf::from("mkfs.erofs"),
        path: path.to_path_buf(),
        status: "exit status: 0".into(),
        stderr: detail,
    };
    if label.len() > VOLUME_NAME_LEN {
        return Err(bad(format!(
            "volume label {label:?} is longer than 16 bytes"
        )));
    }
    let mut f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .ctx("open", path)?;
    let mut sb = vec![0u8; CHECKSUMMED_LEN];
    f.seek(SeekFrom::Start(SUPER_OFFSET))
        .and_then(|_| f.read_exact(&mut sb))
        .ctx("read the superblock of", path)?;
    if le32(&sb, 0) != MAGIC {
        return Err(bad("the output has no EROFS superblock".into()));
    }
    if sb[BLKSZBITS_AT] != 12 {
        return Err(bad(format!(
            "the output has {}-byte blocks, not 4096",
            1u64 << sb[BLKSZBITS_AT].min(63)
        )));
    }
    let name = &mut sb[VOLUME_NAME_AT..VOLUME_NAME_AT + VOLUME_NAME_LEN];
    name.fill(0);
    name[..label.len()].copy_from_slice(label.as_bytes());
    if le32(&sb, FEATURE_COMPAT_AT) & COMPAT_SB_CHKSUM != 0 {
        let sum = superblock_checksum(&sb);
        sb[CHECKSUM_AT..CHECKSUM_AT + 4].copy_from_slice(&sum.to_le_bytes());
    }
    f.seek(SeekFrom::Start(SUPER_OFFSET))
        .and_then(|_| f.write_all(&sb))
        .ctx("write the superblock of", path)?;
    Ok(())
}

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// What the kernel computes in `erofs_superblock_csum_verify`: `crc32c(~0, sb)` over the
/// superblock block with its checksum field zeroed, without the final inversion the usual
/// CRC32C applies (hence the `!`).
fn superblock_checksum(sb: &[u8]) -> u32 {
    let mut copy = sb.to_vec();
    copy[CHECKSUM_AT..CHECKSUM_AT + 4].fill(0);
    !crc32c::crc32c(&copy)
}

/// `mkfs.erofs` on the PATH.
pub fn default_mkfs() -> PathBuf {
    PathBuf::from("mkfs.erofs")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The volume label of an EROFS image, `None` when `head` (the first 4 KiB) is not EROFS.
    fn label_of(head: &[u8]) -> Option<String> {
        let sb = head.get(SUPER_OFFSET as usize..SUPER_OFFSET as usize + 0x80)?;
        if le32(sb, 0) != MAGIC {
            return None;
        }
        let raw = &sb[VOLUME_NAME_AT..VOLUME_NAME_AT + VOLUME_NAME_LEN];
        let end = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
        Some(String::from_utf8_lossy(&raw[..end]).into_owned())
    }

    fn have_mkfs() -> bool {
        let found = Command::new("mkfs.erofs").arg("--help").output().is_ok();
        if !found {
            eprintln!("SKIP: mkfs.erofs not found (apt-get install erofs-utils)");
        }
        found
    }

    fn head(path: &Path) -> Vec<u8> {
        let mut b = vec![0u8; 4096];
        fs::File::open(path)
            .and_then(|mut f| f.read_exact(&mut b))
            .expect("read head");
        b
    }

    #[test]
    fn the_checksum_written_matches_the_one_mkfs_erofs_writes() {
        if !have_mkfs() {
            return;
        }
        let d = tempfile::tempdir().expect("tmp");
        let root = d.path().join("root");
        fs::create_dir(&root).expect("dir");
        fs::write(root.join("f"), b"hello").expect("write");
        let out = d.path().join("img");
        let status = Command::new("mkfs.erofs")
            .arg("--quiet")
            .arg(&out)
            .arg(&root)
            .status()
            .expect("mkfs.erofs");
        assert!(status.success());
        let sb = &head(&out)[SUPER_OFFSET as usize..];
        assert_ne!(
            le32(sb, FEATURE_COMPAT_AT) & COMPAT_SB_CHKSUM,
            0,
            "mkfs.erofs wrote no checksum to compare with"
        );
        assert_eq!(superblock_checksum(sb), le32(sb, CHECKSUM_AT));
    }

    #[test]
    fn a_built_image_carries_the_base_label_and_a_valid_checksum() {
        if !have_mkfs() {
            return;
        }
        let d = tempfile::tempdir().expect("tmp");
        let root = d.path().join("root");
        fs::create_dir_all(root.join("etc")).expect("dir");
        fs::write(root.join("etc/hostname"), b"x\n").expect("write");
        let out = d.path().join("img");
        let size = build(&default_mkfs(), &root, &out).expect("build");
        assert_eq!(size, fs::metadata(&out).expect("stat").len());
        let h = head(&out);
        assert_eq!(label_of(&h).as_deref(), Some(BASE_LABEL));
        let sb = &h[SUPER_OFFSET as usize..];
        assert_eq!(superblock_checksum(sb), le32(sb, CHECKSUM_AT));
        // erofs-utils' own checker reads it back (it verifies the superblock checksum).
        let fsck = Command::new("fsck.erofs").arg(&out).output().expect("fsck");
        assert!(
            fsck.status.success(),
            "{}",
            String::from_utf8_lossy(&fsck.stderr)
        );
    }

    #[test]
    fn a_missing_mkfs_says_what_to_install() {
        let d = tempfile::tempdir().expect("tmp");
        let e = build(
            Path::new("/nonexistent/mkfs.erofs"),
            d.path(),
            &d.path().join("img"),
        )
        .expect_err("no mkfs");
        assert!(e.to_string().contains("install erofs-utils"), "{e}");
    }

    #[test]
    fn a_file_that_is_not_erofs_has_no_label() {
        assert_eq!(label_of(&[0u8; 4096]), None);
        assert_eq!(label_of(&[0u8; 100]), None);
    }
}
