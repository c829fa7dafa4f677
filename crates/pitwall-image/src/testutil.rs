//! Test fixtures: tar layers with arbitrary (hostile) names written byte by byte, OCI layouts,
//! `docker save` archives, and ext4 inspection with `debugfs`.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::Command;

use tar::{EntryType, Header};

use crate::build::{layout_from_layers, LayerCompression};
use crate::digest::sha256_of;
use crate::ImageConfig;

/// A layer tar whose entry names are written raw, so `..` and absolute names get through.
#[derive(Default)]
pub struct Layer {
    b: Vec<u8>,
}

impl Layer {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn raw(
        mut self,
        ty: EntryType,
        path: &str,
        link: &str,
        data: &[u8],
        (mode, uid, gid): (u32, u64, u64),
        pax: &[(&str, &[u8])],
    ) -> Self {
        if !pax.is_empty() {
            self = self.raw(
                EntryType::XHeader,
                "PaxHeader",
                "",
                &crate::build::pax_records(pax),
                (0o644, 0, 0),
                &[],
            );
        }
        assert!(
            path.len() < 100 && link.len() < 100,
            "keep fixture names short"
        );
        let mut h = Header::new_ustar();
        h.as_old_mut().name[..path.len()].copy_from_slice(path.as_bytes());
        h.as_old_mut().linkname[..link.len()].copy_from_slice(link.as_bytes());
        h.set_entry_type(ty);
        h.set_size(data.len() as u64);
        h.set_mode(mode);
        h.set_uid(uid);
        h.set_gid(gid);
        h.set_mtime(1_700_000_000);
        h.set_cksum();
        self.b.extend_from_slice(h.as_bytes());
        self.b.extend_from_slice(data);
        let pad = (512 - data.len() % 512) % 512;
        self.b.extend(std::iter::repeat_n(0u8, pad));
        self
    }

    pub fn file(self, path: &str, data: &[u8]) -> Self {
        self.raw(EntryType::Regular, path, "", data, (0o644, 0, 0), &[])
    }

    pub fn file_with(self, path: &str, data: &[u8], mode: u32, uid: u64, gid: u64) -> Self {
        self.raw(EntryType::Regular, path, "", data, (mode, uid, gid), &[])
    }

    pub fn file_xattr(self, path: &str, data: &[u8], xattrs: &[(&str, &[u8])]) -> Self {
        let keys: Vec<String> = xattrs
            .iter()
            .map(|(k, _)| format!("SCHILY.xattr.{k}"))
            .collect();
        let pax: Vec<(&str, &[u8])> = keys
            .iter()
            .zip(xattrs)
            .map(|(k, (_, v))| (k.as_str(), *v))
            .collect();
        self.raw(EntryType::Regular, path, "", data, (0o644, 0, 0), &pax)
    }

    pub fn dir(self, path: &str) -> Self {
        self.raw(EntryType::Directory, path, "", b"", (0o755, 0, 0), &[])
    }

    pub fn dir_with(self, path: &str, mode: u32, uid: u64, gid: u64) -> Self {
        self.raw(EntryType::Directory, path, "", b"", (mode, uid, gid), &[])
    }

    pub fn symlink(self, path: &str, target: &str) -> Self {
        self.raw(EntryType::Symlink, path, target, b"", (0o777, 0, 0), &[])
    }

    pub fn hardlink(self, path: &str, target: &str) -> Self {
        self.raw(EntryType::Link, path, target, b"", (0o644, 0, 0), &[])
    }

    pub fn char_device(self, path: &str) -> Self {
        self.raw(EntryType::Char, path, "", b"", (0o666, 0, 0), &[])
    }

    pub fn fifo(self, path: &str) -> Self {
        self.raw(EntryType::Fifo, path, "", b"", (0o644, 0, 0), &[])
    }

    pub fn build(mut self) -> Vec<u8> {
        self.b.extend(std::iter::repeat_n(0u8, 1024));
        self.b
    }
}

pub fn config() -> ImageConfig {
    ImageConfig {
        entrypoint: vec!["/bin/sh".into()],
        cmd: vec!["-c".into(), "echo hi".into()],
        env: vec!["PATH=/bin".into()],
        working_dir: "/".into(),
        user: "0:0".into(),
        exposed_ports: vec!["80/tcp".into()],
    }
}

/// An OCI layout directory at `dir` with one image `tag` of gzip layers.
pub fn oci_dir(dir: &Path, tag: &str, layers: Vec<Vec<u8>>) -> String {
    let layers: Vec<_> = layers
        .into_iter()
        .map(|l| (l, LayerCompression::Gzip))
        .collect();
    layout_from_layers(dir, &layers, &config(), tag).unwrap()
}

/// Packs a directory (an OCI layout) into a tar, as `skopeo copy … oci-archive:` does.
pub fn tar_of_dir(dir: &Path, out: &Path) {
    let f = std::fs::File::create(out).unwrap();
    let mut b = tar::Builder::new(f);
    b.append_dir_all("", dir).unwrap();
    b.into_inner().unwrap();
}

/// A `docker save` archive. `legacy`: `<id>/layer.tar` and `<hex>.json` (docker < 25),
/// otherwise `blobs/sha256/<hex>` (docker ≥ 25). `diff_ids` overrides the true ones.
pub fn docker_save(
    out: &Path,
    repo_tags: &[&str],
    layers: &[Vec<u8>],
    legacy: bool,
    diff_ids: Option<Vec<String>>,
) -> String {
    let diff_ids = diff_ids.unwrap_or_else(|| layers.iter().map(|l| sha256_of(l)).collect());
    let config = serde_json::json!({
        "architecture": crate::host_architecture(), "os": "linux",
        "config": {"Cmd": ["sh"], "Env": ["PATH=/bin"]},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    });
    let config = serde_json::to_vec(&config).unwrap();
    let config_digest = sha256_of(&config);
    let hex = config_digest.trim_start_matches("sha256:").to_string();
    let mut files: Vec<(String, Vec<u8>)> = Vec::new();
    let mut names = Vec::new();
    for (i, l) in layers.iter().enumerate() {
        let name = if legacy {
            format!("layer{i}/layer.tar")
        } else {
            format!(
                "blobs/sha256/{}",
                sha256_of(l).trim_start_matches("sha256:")
            )
        };
        files.push((name.clone(), l.clone()));
        names.push(name);
    }
    let config_name = if legacy {
        format!("{hex}.json")
    } else {
        format!("blobs/sha256/{hex}")
    };
    files.push((config_name.clone(), config));
    let manifest =
        serde_json::json!([{ "Config": config_name, "RepoTags": repo_tags, "Layers": names }]);
    files.push((
        "manifest.json".into(),
        serde_json::to_vec(&manifest).unwrap(),
    ));
    let mut b = tar::Builder::new(std::fs::File::create(out).unwrap());
    for (name, data) in files {
        let mut h = Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        b.append_data(&mut h, name, &data[..]).unwrap();
    }
    b.into_inner().unwrap();
    config_digest
}

/// `debugfs -R <cmd> <image>` → stdout.
pub fn debugfs(image: &Path, cmd: &str) -> String {
    let out = Command::new("debugfs")
        .arg("-R")
        .arg(cmd)
        .arg(image)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "debugfs {cmd}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The content of `path` inside the base image (either format), or `None` when it does not
/// exist.
pub fn base_cat(image: &Path, path: &str) -> Option<Vec<u8>> {
    pitwall_testkit::base_image::cat(image, path)
}

/// True when `path` exists in the base image (either format).
pub fn base_exists(image: &Path, path: &str) -> bool {
    pitwall_testkit::base_image::exists(image, path)
}

/// A scratch area: `cache/` for the image cache, `outside/` a sentinel directory next to it
/// that hostile images aim at, holding one file `secret`.
pub struct Scratch {
    pub dir: tempfile::TempDir,
}

impl Scratch {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("outside")).unwrap();
        std::fs::write(dir.path().join("outside/secret"), b"untouched").unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(
            dir.path().join("outside/secret"),
            std::fs::Permissions::from_mode(0o644),
        )
        .unwrap();
        Self { dir }
    }

    pub fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    pub fn cache_root(&self) -> PathBuf {
        self.path("cache")
    }

    pub fn outside(&self) -> PathBuf {
        self.path("outside")
    }

    /// Asserts that the sentinel directory holds exactly its one untouched file.
    pub fn assert_outside_untouched(&self) {
        let names: Vec<_> = std::fs::read_dir(self.outside())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(
            names,
            vec!["secret".to_string()],
            "something was written outside the root"
        );
        let meta = std::fs::symlink_metadata(self.outside().join("secret")).unwrap();
        assert!(meta.is_file());
        assert_eq!(meta.len(), 9);
        use std::os::unix::fs::MetadataExt;
        assert_eq!(meta.mode() & 0o7777, 0o644, "the sentinel's mode changed");
        assert_eq!(meta.nlink(), 1, "the sentinel was hard-linked");
        assert_eq!(
            std::fs::read(self.outside().join("secret")).unwrap(),
            b"untouched"
        );
    }
}
