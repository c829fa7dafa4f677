//! The small disks every VM gets beside the shared base image: its writable data disk (an
//! empty ext4 the guest overlays on the base) and its config disk (the `GuestConfig`
//! powerunit boots from).
//!
//! Config disk format (agent.proto): 8 bytes magic `PWCONF01`, a little-endian `u32`
//! length, the prost-encoded `GuestConfig`, zero-padded to a multiple of 4096 bytes
//! (virtio-blk exposes whole 512-byte sectors).
//!
//! Data disks from templates ([`ensure_data_disk`]): `mkfs.ext4` fsyncs its output several
//! times, which on a busy host disk costs tens of milliseconds per VM. Instead, one empty ext4
//! per (size, label) is made once under a template directory, and each VM's disk is a sparse
//! copy of it (`cp --sparse=always --reflink=auto`: the ~600 KiB of metadata of a 1 GiB disk,
//! a clone where the filesystem can). The copy is not fsynced: a disk that lost its superblock
//! in a host crash cannot have held anything the guest flushed (a guest flush syncs the whole
//! file), so it is made again. The copies share the template's filesystem UUID; the guest
//! mounts its data disk by label, and each guest sees one.

use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use pitwall_proto::v1::GuestConfig;
use prost::Message;

use crate::VmmError;

pub const CONFIG_MAGIC: &[u8; 8] = b"PWCONF01";
const CONFIG_ALIGN: usize = 4096;
/// ext4 volume labels are at most 16 bytes.
pub const MAX_LABEL_LEN: usize = 16;

fn disk_err(path: &Path, why: impl Into<String>) -> VmmError {
    VmmError::Disk {
        path: path.to_path_buf(),
        why: why.into(),
    }
}

/// Create (or overwrite) a sparse file of `size_mib` MiB holding an empty ext4 labelled
/// `label`. Inode tables and journal are initialised lazily, so this takes milliseconds.
pub fn create_data_disk(path: &Path, size_mib: u64, label: &str) -> Result<(), VmmError> {
    if label.is_empty() || label.len() > MAX_LABEL_LEN {
        return Err(disk_err(
            path,
            format!("label {label:?} must be 1 to {MAX_LABEL_LEN} bytes"),
        ));
    }
    if size_mib < 2 {
        return Err(disk_err(
            path,
            format!("{size_mib} MiB is too small for ext4 (2 MiB at least)"),
        ));
    }
    let file = std::fs::File::create(path).map_err(|source| VmmError::Io {
        what: "create data disk",
        path: path.to_path_buf(),
        source,
    })?;
    file.set_len(size_mib << 20)
        .map_err(|source| VmmError::Io {
            what: "size data disk",
            path: path.to_path_buf(),
            source,
        })?;
    drop(file);
    let out = Command::new("mkfs.ext4")
        .args([
            "-q",
            "-F",
            "-L",
            label,
            "-E",
            "lazy_itable_init=1,lazy_journal_init=1",
        ])
        .arg(path)
        .output()
        .map_err(|e| {
            disk_err(
                path,
                format!("cannot run mkfs.ext4 (install e2fsprogs): {e}"),
            )
        })?;
    if !out.status.success() {
        return Err(disk_err(
            path,
            format!(
                "mkfs.ext4 failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        ));
    }
    Ok(())
}

/// The volume label of the ext4 superblock in `path`: `None` when the file is missing, too
/// short or has no ext4 magic; read errors are returned.
fn ext4_label(path: &Path) -> std::io::Result<Option<Vec<u8>>> {
    let mut f = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    // Superblock at 1024: magic at +56, volume name (16 bytes) at +120.
    let mut head = [0u8; 1024 + 136];
    match f.read_exact(&mut head) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let sb = &head[1024..];
    if sb[56..58] != [0x53, 0xEF] {
        return Ok(None);
    }
    let name = &sb[120..136];
    Ok(Some(
        name[..name.iter().position(|&b| b == 0).unwrap_or(name.len())].to_vec(),
    ))
}

/// Whether `path` is an ext4 of `size_mib` MiB labelled `label`.
fn is_ext4_disk(path: &Path, size_mib: u64, label: &str) -> bool {
    let sized = std::fs::metadata(path).is_ok_and(|m| m.len() == size_mib << 20);
    sized && matches!(ext4_label(path), Ok(Some(l)) if l == label.as_bytes())
}

/// Makes sure `path` is this VM's data disk: kept when it already holds an ext4 (the VM's
/// own data, whatever its size and label), else created as a sparse copy of the template for
/// (`size_mib`, `label`) in `templates`, which is made first if missing. Falls back to
/// [`create_data_disk`] when copying is not possible.
pub fn ensure_data_disk(
    path: &Path,
    size_mib: u64,
    label: &str,
    templates: &Path,
) -> Result<(), VmmError> {
    let existing = ext4_label(path).map_err(|source| VmmError::Io {
        what: "read data disk",
        path: path.to_path_buf(),
        source,
    })?;
    if existing.is_some() {
        return Ok(());
    }
    if path.exists() {
        tracing::info!(path = %path.display(), "data disk has no ext4 superblock (never flushed before a host crash?); making it again");
    }
    let template = match data_disk_template(size_mib, label, templates) {
        Ok(t) => t,
        Err(e) => {
            tracing::warn!(error = %e, "no data-disk template; running mkfs.ext4 for this disk");
            return create_data_disk(path, size_mib, label);
        }
    };
    let dir = parent_dir(path);
    let io = |what| io_err(what, path);
    let tmp = tempfile::Builder::new()
        .prefix(".data-")
        .tempfile_in(dir)
        .map_err(io("create data disk"))?
        .into_temp_path();
    let copied = Command::new("cp")
        .args(["--sparse=always", "--reflink=auto"])
        .arg(&template)
        .arg(&tmp)
        .output();
    match copied {
        Ok(out) if out.status.success() && is_ext4_disk(&tmp, size_mib, label) => {
            tmp.persist(path).map_err(|e| VmmError::Io {
                what: "create data disk",
                path: path.to_path_buf(),
                source: e.error,
            })?;
            Ok(())
        }
        other => {
            let why = match other {
                Ok(out) => String::from_utf8_lossy(&out.stderr).trim().to_string(),
                Err(e) => e.to_string(),
            };
            tracing::warn!(template = %template.display(), why, "copying the data-disk template failed; running mkfs.ext4");
            create_data_disk(path, size_mib, label)
        }
    }
}

/// The template for (`size_mib`, `label`) under `dir`, made (atomically) if missing.
fn data_disk_template(size_mib: u64, label: &str, dir: &Path) -> Result<PathBuf, VmmError> {
    if label.is_empty()
        || label.len() > MAX_LABEL_LEN
        || !label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(disk_err(
            dir,
            format!("label {label:?} cannot name a template"),
        ));
    }
    let path = dir.join(format!("data-{size_mib}m-{label}.ext4"));
    if is_ext4_disk(&path, size_mib, label) {
        return Ok(path);
    }
    std::fs::create_dir_all(dir).map_err(|source| VmmError::Io {
        what: "create template directory",
        path: dir.to_path_buf(),
        source,
    })?;
    let tmp = tempfile::Builder::new()
        .prefix(".template-")
        .tempfile_in(dir)
        .map_err(|source| VmmError::Io {
            what: "create data-disk template",
            path: dir.to_path_buf(),
            source,
        })?
        .into_temp_path();
    // mkfs.ext4 syncs what it wrote; the rename makes the template appear whole or not at all.
    create_data_disk(&tmp, size_mib, label)?;
    tmp.persist(&path).map_err(|e| VmmError::Io {
        what: "store data-disk template",
        path: path.clone(),
        source: e.error,
    })?;
    tracing::debug!(template = %path.display(), "made a data-disk template");
    Ok(path)
}

/// The bytes of a config disk holding `cfg`.
pub fn encode_config(cfg: &GuestConfig) -> Vec<u8> {
    let body = cfg.encode_to_vec();
    let mut disk = Vec::with_capacity(12 + body.len() + CONFIG_ALIGN);
    disk.extend_from_slice(CONFIG_MAGIC);
    disk.extend_from_slice(&(body.len() as u32).to_le_bytes());
    disk.extend_from_slice(&body);
    disk.resize(disk.len().div_ceil(CONFIG_ALIGN) * CONFIG_ALIGN, 0);
    disk
}

/// Write the config disk for `cfg` to `path` (atomically: a temporary file renamed over it).
pub fn write_config_disk(path: &Path, cfg: &GuestConfig) -> Result<(), VmmError> {
    let dir = parent_dir(path);
    let io = |what| io_err(what, path);
    let tmp = tempfile::NamedTempFile::new_in(dir).map_err(io("create config disk"))?;
    std::fs::write(tmp.path(), encode_config(cfg)).map_err(io("write config disk"))?;
    tmp.persist(path).map_err(|e| VmmError::Io {
        what: "write config disk",
        path: path.to_path_buf(),
        source: e.error,
    })?;
    Ok(())
}

/// The directory `path` is in (`.` for a bare file name): where its temporary file goes.
fn parent_dir(path: &Path) -> &Path {
    path.parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
}

/// Maps an IO error on `path` to [`VmmError::Io`] saying `what` failed.
fn io_err<'a>(what: &'static str, path: &'a Path) -> impl Fn(std::io::Error) -> VmmError + 'a {
    move |source| VmmError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

/// Read back a config disk (for inspection and tests).
pub fn read_config_disk(path: &Path) -> Result<GuestConfig, VmmError> {
    let bytes = std::fs::read(path).map_err(|source| VmmError::Io {
        what: "read config disk",
        path: path.to_path_buf(),
        source,
    })?;
    if bytes.len() < 12 || &bytes[..8] != CONFIG_MAGIC {
        return Err(disk_err(path, "no PWCONF01 magic: not a config disk"));
    }
    let len = u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize;
    let body = bytes
        .get(12..12 + len)
        .ok_or_else(|| disk_err(path, "config disk is truncated"))?;
    GuestConfig::decode(body).map_err(|e| disk_err(path, format!("config does not decode: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> GuestConfig {
        GuestConfig {
            vm_id: "0192-abc".into(),
            hostname: "web-1".into(),
            argv: vec!["/bin/sh".into(), "-c".into(), "echo hi".into()],
            env: vec!["A=1".into()],
            working_dir: "/srv".into(),
            user: "1000:1000".into(),
            base_label: crate::BASE_LABEL.into(),
            data_label: crate::DATA_LABEL.into(),
            network: Some(pitwall_proto::v1::GuestNetwork {
                mac: "52:54:00:12:34:56".into(),
                address: "172.30.0.5/16".into(),
                gateway: "172.30.0.1".into(),
                dns: vec!["172.30.0.1".into()],
                hosts: vec!["172.30.0.1 gateway".into()],
            }),
            services: vec![pitwall_proto::v1::Service {
                name: "web".into(),
                argv: vec!["/usr/bin/web".into()],
                restart: pitwall_proto::v1::RestartPolicy::OnFailure.into(),
                ..Default::default()
            }],
            ssh: Some(pitwall_proto::v1::GuestSsh {
                port: 22,
                authorized_keys: vec!["ssh-ed25519 AAAA me".into()],
                user_ca_keys: vec!["ssh-ed25519 BBBB ca".into()],
            }),
        }
    }

    #[test]
    fn config_disk_is_magic_length_message_padded_to_4k() {
        let cfg = sample();
        let bytes = encode_config(&cfg);
        let body = cfg.encode_to_vec();
        assert_eq!(&bytes[..8], b"PWCONF01");
        assert_eq!(
            u32::from_le_bytes(bytes[8..12].try_into().unwrap()) as usize,
            body.len()
        );
        assert_eq!(&bytes[12..12 + body.len()], &body[..]);
        assert_eq!(bytes.len(), 4096);
        assert!(bytes[12 + body.len()..].iter().all(|&b| b == 0));
    }

    #[test]
    fn a_large_config_is_padded_to_the_next_4k() {
        let cfg = GuestConfig {
            env: vec!["X=".to_string() + &"y".repeat(5000)],
            ..sample()
        };
        assert_eq!(encode_config(&cfg).len(), 8192);
    }

    #[test]
    fn the_guest_reads_what_the_host_writes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.img");
        write_config_disk(&path, &sample()).unwrap();
        assert_eq!(read_config_disk(&path).unwrap(), sample());
        let mut f = std::fs::File::open(&path).unwrap();
        match powerunit::disks::classify(&mut f).unwrap() {
            powerunit::disks::DiskKind::Config(cfg) => assert_eq!(*cfg, sample()),
            other => panic!("powerunit sees {other:?}"),
        }
    }

    #[test]
    fn a_data_disk_is_a_sparse_ext4_with_the_label() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("data.img");
        create_data_disk(&path, 64, crate::DATA_LABEL).unwrap();
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(meta.len(), 64 << 20);
        use std::os::unix::fs::MetadataExt;
        assert!(
            meta.blocks() * 512 < meta.len() / 4,
            "not sparse: {} blocks",
            meta.blocks()
        );
        let mut f = std::fs::File::open(&path).unwrap();
        assert_eq!(
            powerunit::disks::classify(&mut f).unwrap(),
            powerunit::disks::DiskKind::Fs {
                fstype: powerunit::disks::FsType::Ext4,
                label: crate::DATA_LABEL.into()
            }
        );
    }

    #[test]
    fn data_disks_from_a_template_are_sparse_ext4_with_the_label() {
        let dir = tempfile::tempdir().unwrap();
        let templates = dir.path().join("templates");
        for name in ["a.img", "b.img"] {
            let path = dir.path().join(name);
            ensure_data_disk(&path, 64, crate::DATA_LABEL, &templates).unwrap();
            let meta = std::fs::metadata(&path).unwrap();
            assert_eq!(meta.len(), 64 << 20);
            use std::os::unix::fs::MetadataExt;
            assert!(meta.blocks() * 512 < meta.len() / 4, "not sparse");
            let mut f = std::fs::File::open(&path).unwrap();
            assert_eq!(
                powerunit::disks::classify(&mut f).unwrap(),
                powerunit::disks::DiskKind::Fs {
                    fstype: powerunit::disks::FsType::Ext4,
                    label: crate::DATA_LABEL.into()
                }
            );
        }
        assert_eq!(std::fs::read_dir(&templates).unwrap().count(), 1);
    }

    #[test]
    fn an_existing_data_disk_is_kept_and_a_torn_one_made_again() {
        let dir = tempfile::tempdir().unwrap();
        let templates = dir.path().join("templates");
        let path = dir.path().join("data.img");
        ensure_data_disk(&path, 16, crate::DATA_LABEL, &templates).unwrap();
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        f.write_all_at(b"guest data", 8 << 20).unwrap();
        ensure_data_disk(&path, 16, crate::DATA_LABEL, &templates).unwrap();
        let mut kept = [0u8; 10];
        std::fs::File::open(&path)
            .unwrap()
            .read_exact_at(&mut kept, 8 << 20)
            .unwrap();
        assert_eq!(&kept, b"guest data");

        f.set_len(0).unwrap();
        f.set_len(16 << 20).unwrap();
        ensure_data_disk(&path, 16, crate::DATA_LABEL, &templates).unwrap();
        assert!(is_ext4_disk(&path, 16, crate::DATA_LABEL));
    }

    #[test]
    fn a_label_longer_than_ext4_allows_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let e = create_data_disk(&dir.path().join("d.img"), 8, "seventeen-bytes-x").unwrap_err();
        assert!(e.to_string().contains("1 to 16 bytes"), "{e}");
    }
}
