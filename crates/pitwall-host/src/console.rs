//! Keeping each VM's console capture bounded: QEMU appends every byte the guest prints to
//! `run/console.log` (opened `O_APPEND`, so it survives host-daemon restarts), and a chatty
//! guest would fill the disk. When the file passes [`MAX_BYTES`], its head is cut so that
//! about [`KEEP_BYTES`] remain: the file is a ring buffer on disk.
//!
//! The cut uses `fallocate(FALLOC_FL_COLLAPSE_RANGE)`, which removes the first blocks of the
//! file in place, atomically with respect to QEMU's appends (ext4 and XFS support it). Where
//! the filesystem does not, it falls back to copying the tail and truncating, which can lose
//! or misorder the few bytes the guest prints during the copy.

use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// Console captures larger than this are cut.
pub(crate) const MAX_BYTES: u64 = 8 << 20;
/// What is kept after a cut (at least; the cut is rounded down to whole blocks).
pub(crate) const KEEP_BYTES: u64 = 2 << 20;

/// Cut the head of `path` if it is larger than `max`, keeping at least `keep` bytes.
/// Returns the number of bytes removed.
pub(crate) fn trim(path: &Path, max: u64, keep: u64) -> std::io::Result<u64> {
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e),
    };
    let len = meta.len();
    if len <= max {
        return Ok(0);
    }
    let block = meta.blksize().max(512);
    let cut = (len - keep) / block * block;
    if cut == 0 {
        return Ok(0);
    }
    let file = std::fs::OpenOptions::new().write(true).open(path)?;
    let collapsed = nix::fcntl::fallocate(
        &file,
        nix::fcntl::FallocateFlags::FALLOC_FL_COLLAPSE_RANGE,
        0,
        cut as i64,
    );
    if collapsed.is_ok() {
        return Ok(cut);
    }
    // Copy-and-truncate fallback.
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .append(true)
        .open(path)?;
    f.seek(SeekFrom::Start(cut))?;
    let mut tail = Vec::new();
    f.read_to_end(&mut tail)?;
    f.set_len(0)?;
    f.write_all(&tail)?;
    Ok(cut)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_files_are_left_alone() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("console.log");
        std::fs::write(&p, b"hello").unwrap();
        assert_eq!(trim(&p, 100, 10).unwrap(), 0);
        assert_eq!(std::fs::read(&p).unwrap(), b"hello");
        assert_eq!(trim(&d.path().join("missing"), 1, 1).unwrap(), 0);
    }

    #[test]
    fn large_files_keep_their_tail_and_stay_appendable() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("console.log");
        let data: Vec<u8> = (0..200_000u32)
            .flat_map(|i| format!("{i:07}\n").into_bytes())
            .collect();
        std::fs::write(&p, &data).unwrap();
        let removed = trim(&p, 1_000_000, 300_000).unwrap();
        assert!(removed > 0);
        let after = std::fs::read(&p).unwrap();
        assert!(after.len() >= 300_000, "kept {}", after.len());
        assert!(data.ends_with(&after), "what is kept is the tail, in order");
        // an O_APPEND writer (QEMU) goes on at the new end
        let mut w = std::fs::OpenOptions::new().append(true).open(&p).unwrap();
        w.write_all(b"next\n").unwrap();
        assert!(std::fs::read(&p).unwrap().ends_with(b"0199999\nnext\n"));
    }
}
