//! Finding the VM's disks without trusting `/dev/vdX` order (virtio-mmio probe order is not
//! the order of the VMM's command line): the config disk by its `PWCONF01` magic, the others
//! by the volume label in their superblock. The base is EROFS (images built since the base
//! format became EROFS) or ext4 (older images, or a host set to build ext4); the data disk is
//! always ext4.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use pitwall_proto::v1::GuestConfig;

use crate::err;
use crate::error::Result;
use crate::wire;

/// Labels used when the config leaves them empty (the host's defaults).
pub const DEFAULT_BASE_LABEL: &str = "pw-base";
pub const DEFAULT_DATA_LABEL: &str = "pw-data";

const EXT4_SUPERBLOCK_OFFSET: usize = 1024;
const EXT4_MAGIC_OFFSET: usize = 0x38;
const EXT4_MAGIC: u16 = 0xEF53;
const EXT4_LABEL_OFFSET: usize = 0x78;
const EXT4_LABEL_LEN: usize = 16;
const EROFS_SUPERBLOCK_OFFSET: usize = 1024;
const EROFS_MAGIC: u32 = 0xE0F5_E1E2;
/// `volume_name` in `struct erofs_super_block` (linux `fs/erofs/erofs_fs.h`).
const EROFS_LABEL_OFFSET: usize = 0x40;
const EROFS_LABEL_LEN: usize = 16;
/// Bytes read from every disk to classify it.
const HEAD_LEN: usize = 4096;

/// A filesystem powerunit mounts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsType {
    Ext4,
    Erofs,
}

impl FsType {
    /// The name `mount(2)` takes.
    pub fn as_str(self) -> &'static str {
        match self {
            FsType::Ext4 => "ext4",
            FsType::Erofs => "erofs",
        }
    }
}

/// What a block device turned out to be.
#[derive(Debug, Clone, PartialEq)]
pub enum DiskKind {
    Config(Box<GuestConfig>),
    Fs { fstype: FsType, label: String },
    Unknown,
}

fn label_at(raw: &[u8]) -> String {
    let end = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
    String::from_utf8_lossy(&raw[..end]).into_owned()
}

/// The EROFS volume name of a disk whose first bytes are `head`, `None` when it is not EROFS.
pub fn erofs_label(head: &[u8]) -> Option<String> {
    let sb = head.get(EROFS_SUPERBLOCK_OFFSET..EROFS_SUPERBLOCK_OFFSET + 0x80)?;
    if u32::from_le_bytes([sb[0], sb[1], sb[2], sb[3]]) != EROFS_MAGIC {
        return None;
    }
    Some(label_at(
        &sb[EROFS_LABEL_OFFSET..EROFS_LABEL_OFFSET + EROFS_LABEL_LEN],
    ))
}

/// The ext4 volume label of a disk whose first bytes are `head`, `None` when it is not ext4.
pub fn ext4_label(head: &[u8]) -> Option<String> {
    let sb = head.get(EXT4_SUPERBLOCK_OFFSET..EXT4_SUPERBLOCK_OFFSET + 0x100)?;
    let magic = u16::from_le_bytes([sb[EXT4_MAGIC_OFFSET], sb[EXT4_MAGIC_OFFSET + 1]]);
    if magic != EXT4_MAGIC {
        return None;
    }
    Some(label_at(
        &sb[EXT4_LABEL_OFFSET..EXT4_LABEL_OFFSET + EXT4_LABEL_LEN],
    ))
}

/// Classify the disk readable through `dev`.
pub fn classify(dev: &mut impl Read) -> Result<DiskKind> {
    let mut head = vec![0u8; HEAD_LEN];
    let n = read_up_to(dev, &mut head).map_err(|e| err!("read: {e}"))?;
    head.truncate(n);
    if let Some(len) = wire::config_len(&head) {
        let total = wire::CONFIG_HEADER_LEN + len.min(wire::MAX_CONFIG_LEN);
        if head.len() < total {
            let start = head.len();
            head.resize(total, 0);
            let got = read_up_to(dev, &mut head[start..]).map_err(|e| err!("read: {e}"))?;
            head.truncate(start + got);
        }
        return Ok(DiskKind::Config(Box::new(wire::decode_config(&head)?)));
    }
    if let Some(label) = ext4_label(&head) {
        return Ok(DiskKind::Fs {
            fstype: FsType::Ext4,
            label,
        });
    }
    Ok(match erofs_label(&head) {
        Some(label) => DiskKind::Fs {
            fstype: FsType::Erofs,
            label,
        },
        None => DiskKind::Unknown,
    })
}

fn read_up_to(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match r.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// The disks a guest boots from.
#[derive(Debug, Clone)]
pub struct Disks {
    pub config: GuestConfig,
    pub config_dev: PathBuf,
    pub base_dev: PathBuf,
    /// The base's filesystem (EROFS or ext4).
    pub base_fstype: FsType,
    pub data_dev: PathBuf,
}

/// The labels the config asks for, with the defaults for empty ones.
pub fn labels(cfg: &GuestConfig) -> (String, String) {
    let pick = |s: &str, d: &str| {
        if s.is_empty() {
            d.to_string()
        } else {
            s.to_string()
        }
    };
    (
        pick(&cfg.base_label, DEFAULT_BASE_LABEL),
        pick(&cfg.data_label, DEFAULT_DATA_LABEL),
    )
}

/// Wait up to `timeout` for the config, base and data disks among `/sys/block/vd*`
/// (block devices under `dev_dir`).
pub fn discover(sys_block: &Path, dev_dir: &Path, timeout: Duration) -> Result<Disks> {
    let deadline = Instant::now() + timeout;
    let mut seen: BTreeMap<String, DiskKind> = BTreeMap::new();
    loop {
        for name in virtio_block_devices(sys_block) {
            if seen.contains_key(&name) {
                continue;
            }
            let dev = dev_dir.join(&name);
            // The sysfs entry can appear before devtmpfs made the node: retry next round.
            let Ok(mut file) = File::open(&dev) else {
                continue;
            };
            let kind = match classify(&mut file) {
                Ok(kind) => kind,
                Err(e) => {
                    crate::say!("{}: {e}", dev.display());
                    DiskKind::Unknown
                }
            };
            seen.insert(name, kind);
        }
        if let Some(disks) = pick(&seen, dev_dir) {
            return Ok(disks);
        }
        if Instant::now() >= deadline {
            return Err(missing(&seen));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn virtio_block_devices(sys_block: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(sys_block) else {
        return Vec::new();
    };
    let mut names: Vec<String> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| n.starts_with("vd"))
        .collect();
    names.sort();
    names
}

fn pick(seen: &BTreeMap<String, DiskKind>, dev_dir: &Path) -> Option<Disks> {
    let (config_name, config) = seen.iter().find_map(|(n, k)| match k {
        DiskKind::Config(c) => Some((n, c)),
        _ => None,
    })?;
    let (base_label, data_label) = labels(config);
    let by_label = |want: &str, types: &[FsType]| {
        seen.iter().find_map(|(n, k)| match k {
            DiskKind::Fs { fstype, label } if label == want && types.contains(fstype) => {
                Some((dev_dir.join(n), *fstype))
            }
            _ => None,
        })
    };
    let (base_dev, base_fstype) = by_label(&base_label, &[FsType::Erofs, FsType::Ext4])?;
    let (data_dev, _) = by_label(&data_label, &[FsType::Ext4])?;
    Some(Disks {
        config: (**config).clone(),
        config_dev: dev_dir.join(config_name),
        base_dev,
        base_fstype,
        data_dev,
    })
}

fn missing(seen: &BTreeMap<String, DiskKind>) -> crate::error::Error {
    let found: Vec<String> = seen
        .iter()
        .map(|(n, k)| match k {
            DiskKind::Config(_) => format!("{n} (config)"),
            DiskKind::Fs { fstype, label } => format!("{n} ({} {label:?})", fstype.as_str()),
            DiskKind::Unknown => format!("{n} (unknown)"),
        })
        .collect();
    let config = seen.values().find_map(|k| match k {
        DiskKind::Config(c) => Some(c),
        _ => None,
    });
    let want = match config {
        None => "the config disk (PWCONF01)".to_string(),
        Some(c) => {
            let (b, d) = labels(c);
            format!("an EROFS or ext4 disk labelled {b:?} (base) and an ext4 disk labelled {d:?} (data)")
        }
    };
    let found = if found.is_empty() {
        "none".to_string()
    } else {
        found.join(", ")
    };
    err!("missing {want}; virtio disks found: {found}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;
    use std::process::Command;

    fn mkfs(label: &str) -> Option<tempfile::NamedTempFile> {
        let img = tempfile::NamedTempFile::new().unwrap();
        img.as_file().set_len(8 << 20).unwrap();
        let ok = Command::new("mkfs.ext4")
            .args(["-q", "-F", "-L", label])
            .arg(img.path())
            .status()
            .ok()?
            .success();
        ok.then_some(img)
    }

    #[test]
    fn label_of_a_real_ext4_is_read_from_its_superblock() {
        let img = mkfs("pw-base").expect("mkfs.ext4 (e2fsprogs) must be installed");
        let mut f = File::open(img.path()).unwrap();
        assert_eq!(
            classify(&mut f).unwrap(),
            DiskKind::Fs {
                fstype: FsType::Ext4,
                label: "pw-base".into()
            }
        );
    }

    #[test]
    fn a_sixteen_byte_label_is_read_whole() {
        let img = mkfs("0123456789abcdef").expect("mkfs.ext4 (e2fsprogs) must be installed");
        let mut f = File::open(img.path()).unwrap();
        assert_eq!(
            classify(&mut f).unwrap(),
            DiskKind::Fs {
                fstype: FsType::Ext4,
                label: "0123456789abcdef".into()
            }
        );
    }

    /// The first 4 KiB of an EROFS image labelled `label` (what classification reads).
    fn erofs_head(label: &str) -> Vec<u8> {
        let mut head = vec![0u8; 4096];
        head[1024..1028].copy_from_slice(&EROFS_MAGIC.to_le_bytes());
        let at = 1024 + EROFS_LABEL_OFFSET;
        head[at..at + label.len()].copy_from_slice(label.as_bytes());
        head
    }

    #[test]
    fn an_erofs_disk_is_told_by_its_magic_and_volume_name() {
        let kind = classify(&mut std::io::Cursor::new(erofs_head("pw-base"))).unwrap();
        assert_eq!(
            kind,
            DiskKind::Fs {
                fstype: FsType::Erofs,
                label: "pw-base".into()
            }
        );
    }

    #[test]
    fn an_erofs_base_is_picked_and_an_erofs_data_disk_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let sys = dir.path().join("sys");
        let dev = dir.path().join("dev");
        std::fs::create_dir_all(&dev).unwrap();
        for n in ["vda", "vdb", "vdc"] {
            std::fs::create_dir_all(sys.join(n)).unwrap();
        }
        std::fs::write(dev.join("vda"), erofs_head("pw-base")).unwrap();
        std::fs::write(dev.join("vdb"), erofs_head("pw-data")).unwrap();
        let cfg = GuestConfig::default();
        let body = cfg.encode_to_vec();
        let mut disk = wire::CONFIG_MAGIC.to_vec();
        disk.extend_from_slice(&(body.len() as u32).to_le_bytes());
        disk.extend_from_slice(&body);
        disk.resize(4096, 0);
        std::fs::write(dev.join("vdc"), disk).unwrap();
        let e = discover(&sys, &dev, Duration::from_millis(100)).unwrap_err();
        assert!(e.to_string().contains("vdb (erofs \"pw-data\")"), "{e}");

        let data = mkfs("pw-data").expect("mkfs.ext4 must be installed");
        std::fs::copy(data.path(), dev.join("vdb")).unwrap();
        let disks = discover(&sys, &dev, Duration::from_secs(1)).unwrap();
        assert_eq!(disks.base_dev, dev.join("vda"));
        assert_eq!(disks.base_fstype, FsType::Erofs);
        assert_eq!(disks.data_dev, dev.join("vdb"));
    }

    #[test]
    fn zeroes_are_an_unknown_disk() {
        let mut zeroes = std::io::Cursor::new(vec![0u8; 8192]);
        assert_eq!(classify(&mut zeroes).unwrap(), DiskKind::Unknown);
    }

    #[test]
    fn a_config_longer_than_one_block_is_read_whole() {
        let cfg = GuestConfig {
            env: vec!["X=".to_string() + &"y".repeat(9000)],
            ..Default::default()
        };
        let body = cfg.encode_to_vec();
        let mut disk = wire::CONFIG_MAGIC.to_vec();
        disk.extend_from_slice(&(body.len() as u32).to_le_bytes());
        disk.extend_from_slice(&body);
        disk.resize(16384, 0);
        let kind = classify(&mut std::io::Cursor::new(disk)).unwrap();
        assert_eq!(kind, DiskKind::Config(Box::new(cfg)));
    }

    #[test]
    fn disks_are_matched_by_content_not_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let sys = dir.path().join("sys");
        let dev = dir.path().join("dev");
        std::fs::create_dir_all(&dev).unwrap();
        for n in ["vda", "vdb", "vdc", "sda"] {
            std::fs::create_dir_all(sys.join(n)).unwrap();
        }
        let data = mkfs("mydata").expect("mkfs.ext4 must be installed");
        let base = mkfs("mybase").expect("mkfs.ext4 must be installed");
        std::fs::copy(data.path(), dev.join("vda")).unwrap();
        std::fs::copy(base.path(), dev.join("vdc")).unwrap();
        let cfg = GuestConfig {
            base_label: "mybase".into(),
            data_label: "mydata".into(),
            ..Default::default()
        };
        let body = cfg.encode_to_vec();
        let mut disk = wire::CONFIG_MAGIC.to_vec();
        disk.extend_from_slice(&(body.len() as u32).to_le_bytes());
        disk.extend_from_slice(&body);
        disk.resize(4096, 0);
        std::fs::write(dev.join("vdb"), disk).unwrap();

        let disks = discover(&sys, &dev, Duration::from_secs(1)).unwrap();
        assert_eq!(disks.config_dev, dev.join("vdb"));
        assert_eq!(disks.base_dev, dev.join("vdc"));
        assert_eq!(disks.data_dev, dev.join("vda"));
    }

    #[test]
    fn a_missing_data_disk_is_named_in_the_error() {
        let dir = tempfile::tempdir().unwrap();
        let sys = dir.path().join("sys");
        let dev = dir.path().join("dev");
        std::fs::create_dir_all(sys.join("vda")).unwrap();
        std::fs::create_dir_all(&dev).unwrap();
        let body = GuestConfig::default().encode_to_vec();
        let mut disk = wire::CONFIG_MAGIC.to_vec();
        disk.extend_from_slice(&(body.len() as u32).to_le_bytes());
        disk.resize(4096, 0);
        std::fs::write(dev.join("vda"), disk).unwrap();
        let e = discover(&sys, &dev, Duration::from_millis(100)).unwrap_err();
        assert!(e.0.contains("\"pw-data\""), "{e}");
        assert!(e.0.contains("vda (config)"), "{e}");
    }
}
