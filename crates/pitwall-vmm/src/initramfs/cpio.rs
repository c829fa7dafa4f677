//! A writer for the cpio "newc" format, the one format the kernel unpacks an initramfs from.
//!
//! Hand-written on purpose: newc is a 110-byte ASCII header, the name and the data, each
//! padded to 4 bytes, ending with a `TRAILER!!!` entry. The crates of the field are either
//! unmaintained or readers first; ~60 lines give us exact control over modes, owners (always
//! root), device nodes (`/dev/console`) and reproducible output (mtime 0, inode numbers in
//! order), which is what makes the initramfs cacheable by content.

use std::io::{self, Write};

const S_IFDIR: u32 = 0o040_000;
const S_IFREG: u32 = 0o100_000;
const S_IFCHR: u32 = 0o020_000;

pub struct CpioWriter<W: Write> {
    out: W,
    next_ino: u32,
    written: u64,
}

impl<W: Write> CpioWriter<W> {
    pub fn new(out: W) -> Self {
        Self {
            out,
            next_ino: 1,
            written: 0,
        }
    }

    pub fn dir(&mut self, name: &str, perm: u32) -> io::Result<()> {
        self.entry(name, S_IFDIR | perm, 2, (0, 0), &[])
    }

    pub fn file(&mut self, name: &str, perm: u32, data: &[u8]) -> io::Result<()> {
        self.entry(name, S_IFREG | perm, 1, (0, 0), data)
    }

    pub fn char_device(&mut self, name: &str, perm: u32, major: u32, minor: u32) -> io::Result<()> {
        self.entry(name, S_IFCHR | perm, 1, (major, minor), &[])
    }

    /// Write the trailer and hand back the output.
    pub fn finish(mut self) -> io::Result<W> {
        self.next_ino = 0;
        self.entry("TRAILER!!!", 0, 1, (0, 0), &[])?;
        self.out.flush()?;
        Ok(self.out)
    }

    fn entry(
        &mut self,
        name: &str,
        mode: u32,
        nlink: u32,
        rdev: (u32, u32),
        data: &[u8],
    ) -> io::Result<()> {
        let name = name.trim_start_matches('/');
        let size = u32::try_from(data.len()).map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{name}: larger than 4 GiB"),
            )
        })?;
        let ino = self.next_ino;
        if ino != 0 {
            self.next_ino += 1;
        }
        let fields = [
            ino,
            mode,
            0,
            0,
            nlink,
            0,
            size,
            0,
            0,
            rdev.0,
            rdev.1,
            name.len() as u32 + 1,
            0,
        ];
        let mut header = String::with_capacity(110);
        header.push_str("070701");
        for f in fields {
            header.push_str(&format!("{f:08x}"));
        }
        self.put(header.as_bytes())?;
        self.put(name.as_bytes())?;
        self.put(&[0])?;
        self.pad()?;
        self.put(data)?;
        self.pad()
    }

    fn put(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.out.write_all(bytes)?;
        self.written += bytes.len() as u64;
        Ok(())
    }

    fn pad(&mut self) -> io::Result<()> {
        let n = (4 - (self.written % 4) as usize) % 4;
        self.put(&[0u8; 3][..n])
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// One parsed entry: name, mode, rdev (major, minor), data.
    pub(crate) type Entry = (String, u32, (u32, u32), Vec<u8>);

    /// A minimal newc reader, to check the writer against the format.
    pub(crate) fn parse(mut buf: &[u8]) -> Vec<Entry> {
        let hex = |b: &[u8]| u32::from_str_radix(std::str::from_utf8(b).unwrap(), 16).unwrap();
        let pad = |n: usize| (4 - n % 4) % 4;
        let mut out = Vec::new();
        let mut offset = 0usize;
        loop {
            assert_eq!(&buf[..6], b"070701", "bad magic at offset {offset}");
            let field = |i: usize| hex(&buf[6 + 8 * i..14 + 8 * i]);
            let (mode, size, rdev) = (field(1), field(6) as usize, (field(9), field(10)));
            let namesize = field(11) as usize;
            let name = String::from_utf8(buf[110..110 + namesize - 1].to_vec()).unwrap();
            let data_start = 110 + namesize + pad(offset + 110 + namesize);
            let data = buf[data_start..data_start + size].to_vec();
            let next = data_start + size + pad(offset + data_start + size);
            offset += next;
            buf = &buf[next..];
            if name == "TRAILER!!!" {
                assert!(buf.is_empty(), "bytes after the trailer");
                return out;
            }
            out.push((name, mode, rdev, data));
        }
    }

    #[test]
    fn written_entries_parse_back() {
        let mut w = CpioWriter::new(Vec::new());
        w.dir("/dev", 0o755).unwrap();
        w.char_device("/dev/console", 0o600, 5, 1).unwrap();
        w.file("/init", 0o755, b"#!/bin/sh\n").unwrap();
        w.file("/a", 0o644, b"").unwrap();
        w.file("/lib/odd-name.ko", 0o644, &[7u8; 13]).unwrap();
        let bytes = w.finish().unwrap();
        assert_eq!(bytes.len() % 4, 0);
        let entries = parse(&bytes);
        let names: Vec<&str> = entries.iter().map(|e| e.0.as_str()).collect();
        assert_eq!(
            names,
            ["dev", "dev/console", "init", "a", "lib/odd-name.ko"]
        );
        assert_eq!(entries[0].1, S_IFDIR | 0o755);
        assert_eq!((entries[1].1, entries[1].2), (S_IFCHR | 0o600, (5, 1)));
        assert_eq!(
            (entries[2].1, entries[2].3.as_slice()),
            (S_IFREG | 0o755, &b"#!/bin/sh\n"[..])
        );
        assert_eq!(entries[4].3, vec![7u8; 13]);
    }

    #[test]
    fn busybox_cpio_lists_what_was_written() {
        let Ok(out) = std::process::Command::new("busybox").arg("true").output() else {
            eprintln!("busybox not installed: cross-check with it skipped");
            return;
        };
        assert!(out.status.success());
        let mut w = CpioWriter::new(Vec::new());
        w.dir("/newroot", 0o755).unwrap();
        w.file("/init", 0o755, b"x").unwrap();
        let bytes = w.finish().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let archive = dir.path().join("a.cpio");
        std::fs::write(&archive, bytes).unwrap();
        let listed = std::process::Command::new("busybox")
            .args(["cpio", "-t", "-F"])
            .arg(&archive)
            .output()
            .unwrap();
        assert!(
            listed.status.success(),
            "{}",
            String::from_utf8_lossy(&listed.stderr)
        );
        assert_eq!(String::from_utf8_lossy(&listed.stdout), "newroot\ninit\n");
    }
}
