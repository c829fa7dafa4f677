//! Reading a built base image back in tests, whatever its format, without mounting it:
//! ext4 through `debugfs` (e2fsprogs), EROFS through `dump.erofs` and `fsck.erofs --extract`
//! (erofs-utils). erofs-utils 1.5 neither prints nor extracts extended attributes, so the
//! in-inode ("ibody") attributes of an EROFS inode are decoded here from the on-disk format
//! (linux `fs/erofs/erofs_fs.h`); shared attributes are not, and a test meeting one fails
//! saying so.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;
use std::process::Command;

const EXT4_MAGIC: u16 = 0xEF53;
const EROFS_MAGIC: u32 = 0xE0F5_E1E2;

/// A base image's filesystem.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Ext4,
    Erofs,
}

/// The filesystem of `image`, told by its superblock. Panics on anything else.
pub fn format(image: &Path) -> Format {
    let mut head = vec![0u8; 2048];
    File::open(image)
        .and_then(|mut f| f.read_exact(&mut head))
        .unwrap_or_else(|e| panic!("read {}: {e}", image.display()));
    if u32::from_le_bytes([head[1024], head[1025], head[1026], head[1027]]) == EROFS_MAGIC {
        Format::Erofs
    } else if u16::from_le_bytes([head[1024 + 0x38], head[1024 + 0x39]]) == EXT4_MAGIC {
        Format::Ext4
    } else {
        panic!("{} is neither ext4 nor EROFS", image.display())
    }
}

/// What kind of file an entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    File,
    Dir,
    Symlink,
    Other,
}

/// An entry's metadata as the image stores it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stat {
    pub kind: Kind,
    /// Permission bits with setuid/setgid/sticky (`0o7777` mask).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    pub nlink: u32,
    /// Inode number (ext4) or NID (EROFS): equal for hard links.
    pub ino: u64,
    /// Modification time, seconds since the epoch.
    pub mtime: i64,
}

fn run(cmd: &mut Command) -> (String, String) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("run {:?}: {e}", cmd.get_program()));
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn debugfs(image: &Path, request: &str) -> (String, String) {
    run(Command::new("debugfs").arg("-R").arg(request).arg(image))
}

/// The number after `key` in `text` (`"Links: 2"` → 2).
fn field(text: &str, key: &str) -> Option<u64> {
    let at = text.find(key)? + key.len();
    let rest = text[at..].trim_start();
    let end = rest
        .find(|c: char| !c.is_ascii_alphanumeric())
        .unwrap_or(rest.len());
    let word = &rest[..end];
    match word.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => word.parse().ok(),
    }
}

fn octal(text: &str, key: &str) -> Option<u32> {
    let at = text.find(key)? + key.len();
    let rest = text[at..].trim_start();
    let end = rest.find(|c: char| !c.is_digit(8)).unwrap_or(rest.len());
    u32::from_str_radix(&rest[..end], 8).ok()
}

/// The metadata of `path` (absolute, inside the image), `None` when it does not exist.
pub fn stat(image: &Path, path: &str) -> Option<Stat> {
    match format(image) {
        Format::Ext4 => {
            let (out, err) = debugfs(image, &format!("stat {path}"));
            if err.contains("File not found") || out.is_empty() {
                return None;
            }
            let kind = match out.split("Type:").nth(1)?.split_whitespace().next()? {
                "regular" => Kind::File,
                "directory" => Kind::Dir,
                "symlink" => Kind::Symlink,
                _ => Kind::Other,
            };
            Some(Stat {
                kind,
                mode: octal(&out, "Mode:")?,
                uid: field(&out, "User:")? as u32,
                gid: field(&out, "Group:")? as u32,
                size: field(&out, "Size:")?,
                nlink: field(&out, "Links:")? as u32,
                ino: field(&out, "Inode:")?,
                mtime: field(&out, "mtime:")? as i64,
            })
        }
        Format::Erofs => {
            let (out, _) = run(Command::new("dump.erofs")
                .env("TZ", "UTC")
                .arg(format!("--path={path}"))
                .arg(image));
            if !out.contains("NID:") {
                return None;
            }
            let first = out.lines().nth(1).unwrap_or_default();
            let kind = if first.ends_with("regular file") {
                Kind::File
            } else if first.ends_with("directory") {
                Kind::Dir
            } else if first.ends_with("symlink file") {
                Kind::Symlink
            } else {
                Kind::Other
            };
            let stamp = out.split("Timestamp:").nth(1)?.trim();
            let stamp = stamp.get(..19)?;
            let fmt =
                time::macros::format_description!("[year]-[month]-[day] [hour]:[minute]:[second]");
            let mtime = time::PrimitiveDateTime::parse(stamp, &fmt)
                .ok()?
                .assume_utc()
                .unix_timestamp();
            let nid = field(&out, "NID:")?;
            // dump.erofs prints only the 0777 bits: the mode comes from the inode itself.
            let inode = erofs_inode(image, nid);
            Some(Stat {
                kind,
                mode: le16(&inode, 4) as u32 & 0o7777,
                uid: field(&out, "Uid:")? as u32,
                gid: field(&out, "Gid:")? as u32,
                size: field(&out, "Size:")?,
                nlink: field(&out, "Links:")? as u32,
                ino: field(&out, "NID:")?,
                mtime,
            })
        }
    }
}

/// True when `path` exists in the image.
pub fn exists(image: &Path, path: &str) -> bool {
    stat(image, path).is_some()
}

/// The whole image unpacked into a temporary directory (EROFS only; owners and modes kept
/// when running as root, hard links and extended attributes not).
fn extract_erofs(image: &Path) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_, err) = run(Command::new("fsck.erofs")
        .arg(format!("--extract={}", dir.path().join("x").display()))
        .arg(image));
    assert!(
        dir.path().join("x").is_dir(),
        "fsck.erofs --extract of {}: {err}",
        image.display()
    );
    dir
}

/// The content of the file `path`, `None` when it does not exist.
pub fn cat(image: &Path, path: &str) -> Option<Vec<u8>> {
    let st = stat(image, path)?;
    assert_eq!(st.kind, Kind::File, "{path} is not a regular file");
    match format(image) {
        Format::Ext4 => {
            let out = Command::new("debugfs")
                .arg("-R")
                .arg(format!("cat {path}"))
                .arg(image)
                .output()
                .expect("debugfs");
            Some(out.stdout)
        }
        Format::Erofs => {
            let dir = extract_erofs(image);
            let rel = path.trim_start_matches('/');
            Some(std::fs::read(dir.path().join("x").join(rel)).expect("read extracted file"))
        }
    }
}

/// The target of the symlink `path`, `None` when it does not exist.
pub fn readlink(image: &Path, path: &str) -> Option<String> {
    let st = stat(image, path)?;
    assert_eq!(st.kind, Kind::Symlink, "{path} is not a symlink");
    match format(image) {
        Format::Ext4 => {
            let (out, _) = debugfs(image, &format!("stat {path}"));
            let at = out.find("Fast link dest: \"")? + "Fast link dest: \"".len();
            Some(out[at..].split('"').next()?.to_string())
        }
        Format::Erofs => {
            let dir = extract_erofs(image);
            let rel = path.trim_start_matches('/');
            let t = std::fs::read_link(dir.path().join("x").join(rel)).expect("readlink");
            Some(t.to_string_lossy().into_owned())
        }
    }
}

/// The volume label.
pub fn label(image: &Path) -> String {
    let mut sb = vec![0u8; 0x100];
    let mut f = File::open(image).expect("open image");
    f.seek(SeekFrom::Start(1024)).expect("seek");
    f.read_exact(&mut sb).expect("read superblock");
    let raw = match format(image) {
        Format::Ext4 => &sb[0x78..0x88],
        Format::Erofs => &sb[0x40..0x50],
    };
    let end = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
    String::from_utf8_lossy(&raw[..end]).into_owned()
}

/// The extended attributes of `path` as (full name, value), sorted by name.
pub fn xattrs(image: &Path, path: &str) -> Vec<(String, Vec<u8>)> {
    let st = stat(image, path).unwrap_or_else(|| panic!("{path} not in the image"));
    let mut all = match format(image) {
        Format::Ext4 => {
            let (out, err) = debugfs(image, &format!("ea_list {path}"));
            assert!(!err.contains("error"), "ea_list {path}: {err}");
            // Lines like `  user.pitwall (3) = "yes"`.
            out.lines()
                .filter_map(|l| {
                    let (name, rest) = l.trim().split_once(" (")?;
                    let value = rest.split_once(" = \"")?.1.strip_suffix('"')?;
                    Some((name.to_string(), value.as_bytes().to_vec()))
                })
                .collect()
        }
        Format::Erofs => erofs_ibody_xattrs(image, st.ino, path),
    };
    all.sort();
    all
}

fn le16(b: &[u8], at: usize) -> usize {
    usize::from(u16::from_le_bytes([b[at], b[at + 1]]))
}

/// The on-disk inode `nid` and what follows it (up to 4 KiB: its inline xattrs and data).
fn erofs_inode(image: &Path, nid: u64) -> Vec<u8> {
    let mut f = File::open(image).expect("open image");
    let mut sb = vec![0u8; 128];
    f.seek(SeekFrom::Start(1024)).expect("seek");
    f.read_exact(&mut sb).expect("read superblock");
    let meta_blkaddr = u32::from_le_bytes([sb[40], sb[41], sb[42], sb[43]]);
    let inode_at = u64::from(meta_blkaddr) * 4096 + nid * 32;
    let mut inode = vec![0u8; 64 + 4096];
    f.seek(SeekFrom::Start(inode_at)).expect("seek");
    let n = f.read(&mut inode).expect("read inode");
    inode.truncate(n);
    inode
}

fn erofs_ibody_xattrs(image: &Path, nid: u64, path: &str) -> Vec<(String, Vec<u8>)> {
    let inode = erofs_inode(image, nid);
    let inode_len = if le16(&inode, 0) & 1 == 1 { 64 } else { 32 };
    let icount = le16(&inode, 2);
    if icount == 0 {
        return Vec::new();
    }
    let body = &inode[inode_len..inode_len + 12 + (icount - 1) * 4];
    assert_eq!(
        body[4], 0,
        "{path} has shared xattrs, which this test helper does not read"
    );
    let mut out = Vec::new();
    let mut at = 12;
    while at + 4 <= body.len() {
        let (name_len, index, value_len) =
            (usize::from(body[at]), body[at + 1], le16(body, at + 2));
        let name = &body[at + 4..at + 4 + name_len];
        let value = &body[at + 4 + name_len..at + 4 + name_len + value_len];
        let prefix = match index {
            1 => "user.",
            2 => "system.posix_acl_access",
            3 => "system.posix_acl_default",
            4 => "trusted.",
            6 => "security.",
            other => panic!("{path}: xattr name index {other} unknown to this helper"),
        };
        out.push((
            format!("{prefix}{}", String::from_utf8_lossy(name)),
            value.to_vec(),
        ));
        at += (4 + name_len + value_len).div_ceil(4) * 4;
    }
    out
}
