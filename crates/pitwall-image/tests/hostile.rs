//! A corpus of hostile layers, each imported through the public API (`layout_from_layers`,
//! then `ImageCache::import`, the base image build included) into a cache beside a canary directory.
//! Whatever the image tries, the canary comes out exactly as it went in, and each case
//! either fails with a clear error or is contained: what it made is inside the built image
//! (read back with `pitwall_testkit::base_image`). Also replays the fuzz target's seed corpus
//! (`fuzz/corpus/apply_layer`) on stable, so CI runs it.
#![allow(clippy::unwrap_used)]

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use pitwall_core::ImageRef;
use pitwall_image::build::{layout_from_layers, LayerCompression};
use pitwall_image::{ImageCache, ImageConfig, ImageError, ImageInfo};
use tar::{EntryType, Header};

/// From the staging root (`cache/tmp/import-*/rootfs`) up to the canary.
const UP: &str = "../../../../outside";

/// A layer tar written header by header, so that `..`, absolute names, GNU long names,
/// PAX records and GNU sparse entries get through as given.
#[derive(Default)]
struct Tar(Vec<u8>);

impl Tar {
    fn entry(self, ty: EntryType, name: &str, link: &str, data: &[u8], mode: u32) -> Self {
        self.entry_as(ty, name, link, data, (mode, 0, 0))
    }

    fn entry_as(
        mut self,
        ty: EntryType,
        name: &str,
        link: &str,
        data: &[u8],
        (mode, uid, gid): (u32, u64, u64),
    ) -> Self {
        let mut h = Header::new_ustar();
        assert!(
            name.len() < 100 && link.len() < 100,
            "keep fixture names short"
        );
        h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
        h.as_old_mut().linkname[..link.len()].copy_from_slice(link.as_bytes());
        h.set_entry_type(ty);
        h.set_size(data.len() as u64);
        h.set_mode(mode);
        h.set_uid(uid);
        h.set_gid(gid);
        h.set_mtime(1_700_000_000);
        h.set_cksum();
        self.0.extend_from_slice(h.as_bytes());
        self.0.extend_from_slice(data);
        self.0.resize(self.0.len().div_ceil(512) * 512, 0);
        self
    }

    fn owned(self, name: &str, mode: u32, uid: u64, gid: u64) -> Self {
        self.entry_as(EntryType::Regular, name, "", b"", (mode, uid, gid))
    }

    fn file(self, name: &str, data: &[u8]) -> Self {
        self.entry(EntryType::Regular, name, "", data, 0o644)
    }

    fn dir(self, name: &str) -> Self {
        self.entry(EntryType::Directory, name, "", b"", 0o755)
    }

    fn symlink(self, name: &str, to: &str) -> Self {
        self.entry(EntryType::Symlink, name, to, b"", 0o777)
    }

    fn hardlink(self, name: &str, to: &str) -> Self {
        self.entry(EntryType::Link, name, to, b"", 0o644)
    }

    /// A GNU long-name record naming the entry that follows.
    fn long_name(self, name: &str) -> Self {
        let mut data = name.as_bytes().to_vec();
        data.push(0);
        self.entry(EntryType::GNULongName, "././@LongLink", "", &data, 0o644)
    }

    /// A PAX record set for the entry that follows.
    fn pax(self, records: &[(&str, &[u8])]) -> Self {
        let body = pitwall_image::build::pax_records(records);
        self.entry(EntryType::XHeader, "PaxHeader", "", &body, 0o644)
    }

    /// A GNU sparse file of `real_size` bytes holding `data` at `offset`.
    fn sparse(mut self, name: &str, real_size: u64, offset: u64, data: &[u8]) -> Self {
        let mut h = Header::new_gnu();
        h.set_path(name).unwrap();
        h.set_entry_type(EntryType::GNUSparse);
        h.set_mode(0o644);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(1_700_000_000);
        h.set_size(data.len() as u64);
        let gnu = h.as_gnu_mut().unwrap();
        gnu.sparse[0].set_offset(offset);
        gnu.sparse[0].set_length(data.len() as u64);
        gnu.set_real_size(real_size);
        h.set_cksum();
        self.0.extend_from_slice(h.as_bytes());
        self.0.extend_from_slice(data);
        self.0.resize(self.0.len().div_ceil(512) * 512, 0);
        self
    }

    fn build(mut self) -> Vec<u8> {
        self.0.extend_from_slice(&[0; 1024]);
        self.0
    }
}

/// A scratch directory holding the cache and, beside it, the canary `outside/` (a file
/// `secret` and a directory `b`) that every hostile layer aims at.
struct Scene {
    tmp: tempfile::TempDir,
    canary: Vec<String>,
}

impl Scene {
    fn new() -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let outside = tmp.path().join("outside");
        fs::create_dir_all(outside.join("b")).unwrap();
        fs::write(outside.join("secret"), b"untouched").unwrap();
        fs::set_permissions(outside.join("secret"), fs::Permissions::from_mode(0o644)).unwrap();
        let canary = canary_state(&outside);
        Self { tmp, canary }
    }

    fn path(&self, p: &str) -> PathBuf {
        self.tmp.path().join(p)
    }

    fn outside(&self) -> String {
        self.path("outside").to_str().unwrap().to_string()
    }

    /// Writes an image of `layers` and imports it into this scene's cache.
    fn import(
        &self,
        case: &str,
        layers: Vec<(Vec<u8>, LayerCompression)>,
    ) -> Result<ImageInfo, ImageError> {
        let layout = self.path(&format!("layout-{case}"));
        layout_from_layers(&layout, &layers, &ImageConfig::default(), "latest").unwrap();
        let cache = ImageCache::open(&self.path("cache")).unwrap();
        let r = cache.import(&layout, &ImageRef::parse(case).unwrap());
        self.assert_canary_untouched(case);
        r
    }

    /// Imports one gzip layer.
    fn import_one(&self, case: &str, layer: Vec<u8>) -> Result<ImageInfo, ImageError> {
        self.import(case, vec![(layer, LayerCompression::Gzip)])
    }

    fn assert_canary_untouched(&self, case: &str) {
        assert_eq!(
            canary_state(&self.path("outside")),
            self.canary,
            "{case}: something outside the image root changed"
        );
        let mut names: Vec<_> = fs::read_dir(self.tmp.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| !n.starts_with("layout-"))
            .collect();
        names.sort();
        assert_eq!(
            names,
            ["cache", "outside"],
            "{case}: created beside the cache"
        );
    }
}

/// Every name under `dir` with its kind, mode, size, owner, link count, inode, mtime and
/// (for files) content, never following a link.
fn canary_state(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(p) = stack.pop() {
        let m = fs::symlink_metadata(&p).unwrap();
        let content = if m.is_file() {
            fs::read(&p).unwrap()
        } else {
            Vec::new()
        };
        out.push(format!(
            "{} mode={:o} len={} uid={} gid={} nlink={} ino={} mtime={}.{} {:?}",
            p.display(),
            m.mode(),
            m.len(),
            m.uid(),
            m.gid(),
            m.nlink(),
            m.ino(),
            m.mtime(),
            m.mtime_nsec(),
            content
        ));
        if m.is_dir() {
            for e in fs::read_dir(&p).unwrap() {
                stack.push(e.unwrap().path());
            }
        }
    }
    out.sort();
    out
}

fn refusal(r: Result<ImageInfo, ImageError>) -> String {
    match r {
        Err(e @ ImageError::UnsafeEntry { .. }) => {
            let msg = e.to_string();
            assert!(msg.ends_with(": refused"), "{msg}");
            msg
        }
        other => panic!("expected an unsafe-entry refusal, got {other:?}"),
    }
}

use pitwall_testkit::base_image;

fn base_exists(image: &Path, path: &str) -> bool {
    base_image::exists(image, path)
}

#[test]
fn path_traversal_is_refused() {
    let s = Scene::new();
    let e = refusal(s.import_one(
        "dotdot",
        Tar::default().file(&format!("{UP}/pwned"), b"x").build(),
    ));
    assert!(e.contains("escapes the image root"), "{e}");
    let e = refusal(
        s.import_one(
            "dotdot-inner",
            Tar::default()
                .dir("a/")
                .file("a/../../../../../outside/pwned", b"x")
                .build(),
        ),
    );
    assert!(e.contains("escapes the image root"), "{e}");
}

#[test]
fn dot_dot_in_gnu_long_names_and_pax_paths_is_refused() {
    let s = Scene::new();
    let long = format!("{}{UP}/pwned", "d/".repeat(60));
    let e = refusal(
        s.import_one(
            "gnu-long",
            Tar::default()
                .long_name(&long)
                .file("harmless", b"x")
                .build(),
        ),
    );
    assert!(e.contains("escapes the image root"), "{e}");
    let e = refusal(
        s.import_one(
            "pax-path",
            Tar::default()
                .pax(&[("path", format!("{UP}/pwned").as_bytes())])
                .file("harmless", b"x")
                .build(),
        ),
    );
    assert!(e.contains("escapes the image root"), "{e}");
}

#[test]
fn symlink_then_write_is_refused_in_one_layer_and_across_layers() {
    let s = Scene::new();
    let e = refusal(
        s.import_one(
            "symlink-write",
            Tar::default()
                .symlink("evil", UP)
                .file("evil/pwned", b"x")
                .build(),
        ),
    );
    assert!(e.contains("writes through the symlink /evil"), "{e}");
    let e = refusal(s.import(
        "symlink-write-layers",
        vec![
            (
                Tar::default().symlink("etc", &s.outside()).build(),
                LayerCompression::Zstd,
            ),
            (
                Tar::default().file("etc/secret", b"overwritten").build(),
                LayerCompression::None,
            ),
        ],
    ));
    assert!(e.contains("writes through the symlink /etc"), "{e}");
    let e = refusal(
        s.import_one(
            "symlink-chain",
            Tar::default()
                .symlink("a", "b")
                .symlink("b", UP)
                .file("a/pwned", b"x")
                .build(),
        ),
    );
    assert!(e.contains("writes through the symlink /a"), "{e}");
}

#[test]
fn hard_link_escapes_are_refused() {
    let s = Scene::new();
    let e = refusal(
        s.import_one(
            "hardlink-out",
            Tar::default()
                .hardlink("h", &format!("{UP}/secret"))
                .build(),
        ),
    );
    assert!(e.contains("outside the image root"), "{e}");
    let e = refusal(
        s.import_one(
            "hardlink-via-slash",
            Tar::default()
                .symlink("slash", "/")
                .hardlink("h", &format!("slash{}/secret", s.outside()))
                .build(),
        ),
    );
    assert!(e.contains("writes through the symlink /slash"), "{e}");
}

#[test]
fn whiteout_of_dot_dot_is_refused() {
    let s = Scene::new();
    for (case, name) in [("wh-dotdot", "sub/.wh.."), ("wh-dotdotdot", ".wh...")] {
        let e = refusal(s.import_one(case, Tar::default().dir("sub/").file(name, b"").build()));
        assert!(e.contains("whiteout"), "{e}");
    }
}

#[test]
fn absolute_names_and_symlinks_are_contained_in_the_image() {
    let s = Scene::new();
    let secret = format!("{}/secret", s.outside());
    let info = s
        .import_one(
            "absolute",
            Tar::default()
                .file(&format!("{secret}-abs"), b"inside")
                .symlink("passwd", &secret)
                .hardlink("hl", "passwd")
                .build(),
        )
        .unwrap();
    let out = base_image::cat(&info.rootfs, &format!("{secret}-abs")).unwrap();
    assert_eq!(out, b"inside");
    assert_eq!(
        base_image::readlink(&info.rootfs, "/passwd").as_deref(),
        Some(secret.as_str())
    );
}

#[test]
fn a_later_layer_cannot_set_times_through_a_symlink() {
    let s = Scene::new();
    s.import(
        "dir-times",
        vec![
            (Tar::default().dir("a/b/").build(), LayerCompression::Gzip),
            (
                Tar::default().symlink("a", &s.outside()).build(),
                LayerCompression::Gzip,
            ),
        ],
    )
    .unwrap();
}

#[test]
fn huge_sparse_file_is_refused_by_the_size_limit() {
    let s = Scene::new();
    let r = s.import_one(
        "sparse-huge",
        Tar::default()
            .sparse("huge", 1 << 40, (1 << 40) - 512, &[1; 512])
            .build(),
    );
    match r {
        Err(e @ ImageError::TooLarge { .. }) => {
            let msg = e.to_string();
            assert!(
                msg.contains("\"huge\"") && msg.contains("max_unpacked_bytes"),
                "{msg}"
            );
        }
        other => panic!("expected TooLarge, got {other:?}"),
    }
}

#[test]
fn sparse_file_within_the_limit_keeps_its_size_and_data() {
    let s = Scene::new();
    let size = 64 << 20;
    let info = s
        .import_one(
            "sparse",
            Tar::default()
                .sparse("sparse", size, size - 512, &[7; 512])
                .build(),
        )
        .unwrap();
    let stat = base_image::stat(&info.rootfs, "/sparse").unwrap();
    assert_eq!(stat.size, size);
    assert!(
        info.size_bytes < 2 * size,
        "{} bytes of base image",
        info.size_bytes
    );
}

#[test]
fn device_nodes_and_fifos_are_left_out() {
    let s = Scene::new();
    let info = s
        .import_one(
            "devices",
            Tar::default()
                .entry(EntryType::Block, "dev/sda", "", b"", 0o660)
                .entry(EntryType::Char, "dev/mem", "", b"", 0o640)
                .entry(EntryType::Fifo, "run/fifo", "", b"", 0o644)
                .file("ok", b"1")
                .build(),
        )
        .unwrap();
    assert!(!base_exists(&info.rootfs, "/dev/sda"));
    assert!(!base_exists(&info.rootfs, "/dev/mem"));
    assert!(!base_exists(&info.rootfs, "/run/fifo"));
    assert!(base_exists(&info.rootfs, "/ok"));
}

#[test]
fn overlay_xattrs_cannot_be_injected_into_the_image() {
    let s = Scene::new();
    let info = s
        .import_one(
            "xattrs",
            Tar::default()
                .pax(&[
                    ("SCHILY.xattr.trusted.overlay.opaque", b"y"),
                    ("SCHILY.xattr.user.overlay.redirect", b"/etc"),
                    ("SCHILY.xattr.user.kept", b"yes"),
                ])
                .dir("d/")
                .build(),
        )
        .unwrap();
    let eas = base_image::xattrs(&info.rootfs, "/d");
    assert_eq!(eas, vec![("user.kept".to_string(), b"yes".to_vec())]);
}

#[test]
fn setuid_bits_and_owners_are_preserved() {
    let s = Scene::new();
    let l = Tar::default()
        .entry(EntryType::Regular, "bin/su", "", b"su", 0o4755)
        .owned("home/u/f", 0o640, 1000, 1001)
        .build();
    let info = s.import_one("modes", l).unwrap();
    let su = base_image::stat(&info.rootfs, "/bin/su").unwrap();
    assert_eq!(su.mode, 0o4755);
    let f = base_image::stat(&info.rootfs, "/home/u/f").unwrap();
    assert_eq!((f.mode, f.uid, f.gid), (0o640, 1000, 1001));
}

/// The fuzz target's seeds (`fuzz/corpus/apply_layer`, see `fuzz/make_seeds.py`), each
/// applied by the fuzz entry point beside a canary, as the fuzz target does.
#[test]
fn fuzz_seed_corpus_stays_inside_the_root() {
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/apply_layer");
    let mut seeds: Vec<PathBuf> = fs::read_dir(&corpus)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    seeds.sort();
    assert!(
        seeds.len() >= 10,
        "{} seeds in {}",
        seeds.len(),
        corpus.display()
    );
    for seed in seeds {
        let tmp = tempfile::tempdir().unwrap();
        let outside = tmp.path().join("outside");
        fs::create_dir_all(outside.join("b")).unwrap();
        fs::write(outside.join("secret"), b"untouched").unwrap();
        let before = canary_state(&outside);
        let root = tmp.path().join("root");
        fs::create_dir(&root).unwrap();
        let r = pitwall_image::fuzz_apply_layer(&fs::read(&seed).unwrap(), &root);
        let name = seed.file_name().unwrap().to_string_lossy().into_owned();
        assert_eq!(
            canary_state(&outside),
            before,
            "seed {name} ({r:?}) escaped the root"
        );
        assert_eq!(fs::read_dir(tmp.path()).unwrap().count(), 2, "seed {name}");
        if name == "plain" {
            r.unwrap();
            assert_eq!(
                fs::read_link(root.join("etc/mtab")).unwrap(),
                Path::new("/proc/mounts")
            );
        }
    }
}
