#![allow(clippy::unwrap_used)]

use std::os::unix::fs::MetadataExt;

use super::*;
use crate::oci::{Index, Manifest};
use crate::testutil::{
    base_cat, base_exists, config, debugfs, docker_save, oci_dir, tar_of_dir, Layer, Scratch,
};
use pitwall_testkit::base_image;

fn r(s: &str) -> ImageRef {
    ImageRef::parse(s).unwrap()
}

fn hello_layers() -> Vec<Vec<u8>> {
    vec![
        Layer::new()
            .dir("bin/")
            .file_with("bin/busybox", b"#!busybox", 0o755, 0, 0)
            .hardlink("bin/sh", "bin/busybox")
            .symlink("bin/ls", "busybox")
            .file("etc/gone", b"old")
            .build(),
        Layer::new()
            .file("hello.txt", b"hello from pitwall\n")
            .file("etc/.wh.gone", b"")
            .build(),
    ]
}

/// Asserts the cache holds nothing but its empty skeleton: no image, no reference, no work.
fn assert_cache_empty(root: &Path) {
    for d in ["images", "refs", "tmp"] {
        let n = fs::read_dir(root.join(d)).unwrap().count();
        assert_eq!(n, 0, "{d}/ is not empty after a failed import");
    }
}

/// A cache building bases of `format`.
fn cache_of(s: &Scratch, format: BaseFormat) -> ImageCache {
    let options = ImportOptions {
        base_format: format,
        ..ImportOptions::default()
    };
    ImageCache::open_with(&s.cache_root(), options).unwrap()
}

const FORMATS: [BaseFormat; 2] = [BaseFormat::Erofs, BaseFormat::Ext4];

#[test]
fn imports_an_oci_layout_directory_into_a_labelled_base_image_of_either_format() {
    for format in FORMATS {
        let s = Scratch::new();
        let digest = oci_dir(&s.path("layout"), "1.0", hello_layers());
        let cache = cache_of(&s, format);
        let info = cache
            .import(&s.path("layout"), &r("demo/hello:1.0"))
            .unwrap();

        assert_eq!(info.reference, "demo/hello:1.0");
        assert_eq!(info.digest, digest);
        assert_eq!(info.config, config());
        assert!(info.rootfs.ends_with(format.file_name()), "{format}");
        assert_eq!(
            base_image::format(&info.rootfs),
            match format {
                BaseFormat::Erofs => base_image::Format::Erofs,
                BaseFormat::Ext4 => base_image::Format::Ext4,
            }
        );
        assert_eq!(info.size_bytes, fs::metadata(&info.rootfs).unwrap().len());
        assert_eq!(
            base_cat(&info.rootfs, "/hello.txt").unwrap(),
            b"hello from pitwall\n"
        );
        assert!(!base_exists(&info.rootfs, "/etc/gone"));
        assert_eq!(base_image::label(&info.rootfs), crate::BASE_LABEL);
        if format == BaseFormat::Ext4 {
            let stats = debugfs(&info.rootfs, "stats");
            assert!(!stats.contains("has_journal"), "{stats}");
        }
        assert_eq!(cache.get(&r("demo/hello:1.0")).unwrap(), Some(info.clone()));
        let details = cache.inspect(&r("demo/hello:1.0")).unwrap().unwrap();
        assert_eq!(details.base_format, format);
    }
}

#[test]
fn hard_links_and_symlinks_survive_into_the_base_image() {
    for format in FORMATS {
        let s = Scratch::new();
        oci_dir(&s.path("layout"), "latest", hello_layers());
        let cache = cache_of(&s, format);
        let info = cache.import(&s.path("layout"), &r("hello")).unwrap();
        let bb = base_image::stat(&info.rootfs, "/bin/busybox").unwrap();
        let sh = base_image::stat(&info.rootfs, "/bin/sh").unwrap();
        assert_eq!(bb.nlink, 2, "{format}: {bb:?}");
        assert_eq!(bb.ino, sh.ino, "{format}: sh is a hard link of busybox");
        assert_eq!(bb.mode, 0o755, "{format}");
        let ls = base_image::stat(&info.rootfs, "/bin/ls").unwrap();
        assert_eq!(ls.kind, base_image::Kind::Symlink, "{format}");
        assert_eq!(
            base_image::readlink(&info.rootfs, "/bin/ls").as_deref(),
            Some("busybox"),
            "{format}"
        );
    }
}

#[test]
fn owners_modes_times_and_xattrs_survive_into_the_base_image() {
    for format in FORMATS {
        let s = Scratch::new();
        oci_dir(
            &s.path("layout"),
            "latest",
            vec![Layer::new()
                .file_with("bin/su", b"su", 0o4755, 0, 0)
                .dir_with("home/u/", 0o700, 1000, 1000)
                .file_with("home/u/notes", b"n", 0o600, 1000, 1001)
                .file_xattr("bin/tagged", b"t", &[("user.pitwall", b"yes")])
                .build()],
        );
        let cache = cache_of(&s, format);
        let info = cache.import(&s.path("layout"), &r("meta")).unwrap();
        let st = |p: &str| base_image::stat(&info.rootfs, p).unwrap();
        assert_eq!(st("/bin/su").mode, 0o4755, "{format}");
        let notes = st("/home/u/notes");
        assert_eq!(
            (notes.mode, notes.uid, notes.gid),
            (0o600, 1000, 1001),
            "{format}"
        );
        assert_eq!(notes.mtime, 1_700_000_000, "{format}: mtime kept");
        let home = st("/home/u");
        assert_eq!((home.mode, home.mtime), (0o700, 1_700_000_000), "{format}");
        assert_eq!(
            base_image::xattrs(&info.rootfs, "/bin/tagged"),
            vec![("user.pitwall".to_string(), b"yes".to_vec())],
            "{format}"
        );
        let root = st("/");
        assert_eq!((root.uid, root.gid), (0, 0), "{format}");
    }
}

#[test]
fn imports_an_oci_archive_tar() {
    let s = Scratch::new();
    let digest = oci_dir(&s.path("layout"), "latest", hello_layers());
    tar_of_dir(&s.path("layout"), &s.path("image.tar"));
    let cache = ImageCache::open(&s.cache_root()).unwrap();
    let info = cache
        .import(&s.path("image.tar"), &r("hello:latest"))
        .unwrap();
    assert_eq!(info.digest, digest);
    assert_eq!(
        base_cat(&info.rootfs, "/hello.txt").unwrap(),
        b"hello from pitwall\n"
    );
    assert_eq!(fs::read_dir(s.cache_root().join("tmp")).unwrap().count(), 0);
}

#[test]
fn imports_a_gzip_compressed_archive() {
    let s = Scratch::new();
    oci_dir(&s.path("layout"), "latest", hello_layers());
    tar_of_dir(&s.path("layout"), &s.path("image.tar"));
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&fs::read(s.path("image.tar")).unwrap())
        .unwrap();
    fs::write(s.path("image.tar.gz"), gz.finish().unwrap()).unwrap();
    let cache = ImageCache::open(&s.cache_root()).unwrap();
    let info = cache.import(&s.path("image.tar.gz"), &r("hello")).unwrap();
    assert!(base_exists(&info.rootfs, "/hello.txt"));
}

#[test]
fn imports_docker_save_archives_old_and_new() {
    for legacy in [true, false] {
        let s = Scratch::new();
        let digest = docker_save(
            &s.path("save.tar"),
            &["busybox:latest"],
            &hello_layers(),
            legacy,
            None,
        );
        let cache = ImageCache::open(&s.cache_root()).unwrap();
        let info = cache
            .import(&s.path("save.tar"), &r("docker.io/library/busybox"))
            .unwrap();
        assert_eq!(
            info.digest, digest,
            "docker save images are keyed by their config digest"
        );
        assert_eq!(info.reference, "docker.io/library/busybox:latest");
        assert_eq!(info.config.cmd, vec!["sh"]);
        assert_eq!(
            base_cat(&info.rootfs, "/hello.txt").unwrap(),
            b"hello from pitwall\n"
        );
        assert!(!base_exists(&info.rootfs, "/etc/gone"));
    }
}

#[test]
fn docker_save_layer_that_does_not_match_its_diff_id_is_refused() {
    let s = Scratch::new();
    let wrong = vec![
        crate::digest::sha256_of(b"x"),
        crate::digest::sha256_of(b"y"),
    ];
    docker_save(
        &s.path("save.tar"),
        &["x:1"],
        &hello_layers(),
        true,
        Some(wrong),
    );
    let cache = ImageCache::open(&s.cache_root()).unwrap();
    let e = cache.import(&s.path("save.tar"), &r("x:1")).unwrap_err();
    assert!(
        matches!(e, ImageError::DiffIdMismatch { layer: 1, .. }),
        "{e}"
    );
    assert_cache_empty(&s.cache_root());
}

#[test]
fn picks_the_named_image_from_a_layout_holding_several() {
    let s = Scratch::new();
    oci_dir(
        &s.path("layout"),
        "one",
        vec![Layer::new().file("which", b"one").build()],
    );
    oci_dir(
        &s.path("layout"),
        "two",
        vec![Layer::new().file("which", b"two").build()],
    );
    let cache = ImageCache::open(&s.cache_root()).unwrap();
    let info = cache.import(&s.path("layout"), &r("demo:two")).unwrap();
    assert_eq!(base_cat(&info.rootfs, "/which").unwrap(), b"two");
    let e = cache
        .import(&s.path("layout"), &r("demo:three"))
        .unwrap_err();
    let msg = e.to_string();
    assert!(
        matches!(e, ImageError::NoMatchingImage { count: 2, .. }),
        "{msg}"
    );
    assert!(msg.contains("one") && msg.contains("two"), "{msg}");
}

#[test]
fn picks_this_hosts_platform_from_a_nested_index() {
    let s = Scratch::new();
    let layout = s.path("layout");
    let amd = oci_dir(
        &layout,
        "amd",
        vec![Layer::new().file("arch", b"mine").build()],
    );
    let other = oci_dir(
        &layout,
        "other",
        vec![Layer::new().file("arch", b"other").build()],
    );
    let index: Index =
        serde_json::from_slice(&fs::read(layout.join("index.json")).unwrap()).unwrap();
    let mut manifests = index.manifests.clone();
    for m in &mut manifests {
        m.annotations.clear();
        let arch = if m.digest == amd {
            host_architecture()
        } else {
            "s390x"
        };
        m.platform = Some(Platform {
            architecture: arch.into(),
            os: "linux".into(),
            variant: None,
        });
    }
    manifests.reverse();
    let nested = serde_json::to_vec(&Index {
        schema_version: 2,
        media_type: Some(crate::oci::MT_OCI_INDEX.into()),
        manifests,
    })
    .unwrap();
    let nested_digest = crate::digest::sha256_of(&nested);
    fs::write(
        layout.join("blobs/sha256").join(&nested_digest[7..]),
        &nested,
    )
    .unwrap();
    let top = serde_json::json!({"schemaVersion": 2, "manifests": [{
        "mediaType": crate::oci::MT_OCI_INDEX, "digest": nested_digest, "size": nested.len(),
        "annotations": {"org.opencontainers.image.ref.name": "multi"}}]});
    fs::write(layout.join("index.json"), serde_json::to_vec(&top).unwrap()).unwrap();

    let cache = ImageCache::open(&s.cache_root()).unwrap();
    let info = cache.import(&layout, &r("demo:multi")).unwrap();
    assert_eq!(info.digest, amd, "the digest is the platform manifest's");
    assert_ne!(info.digest, other);
    assert_eq!(base_cat(&info.rootfs, "/arch").unwrap(), b"mine");
}

#[test]
fn a_pinned_digest_must_match_the_archive() {
    let s = Scratch::new();
    let digest = oci_dir(&s.path("layout"), "latest", hello_layers());
    let cache = ImageCache::open(&s.cache_root()).unwrap();
    let wrong = format!("hello@sha256:{}", "0".repeat(64));
    let e = cache.import(&s.path("layout"), &r(&wrong)).unwrap_err();
    assert!(matches!(e, ImageError::PinnedDigestMismatch { .. }), "{e}");
    let info = cache
        .import(&s.path("layout"), &r(&format!("hello@{digest}")))
        .unwrap();
    assert_eq!(info.digest, digest);
    assert_eq!(info.reference, format!("hello@{digest}"));
}

#[test]
fn corrupt_blob_is_refused_naming_it() {
    let s = Scratch::new();
    oci_dir(&s.path("layout"), "latest", hello_layers());
    let manifest_layers = {
        let idx: Index =
            serde_json::from_slice(&fs::read(s.path("layout/index.json")).unwrap()).unwrap();
        let m: Manifest = serde_json::from_slice(
            &fs::read(
                s.path("layout/blobs/sha256")
                    .join(&idx.manifests[0].digest[7..]),
            )
            .unwrap(),
        )
        .unwrap();
        m.layers
    };
    let blob = s
        .path("layout/blobs/sha256")
        .join(&manifest_layers[1].digest[7..]);
    let mut bytes = fs::read(&blob).unwrap();
    let n = bytes.len();
    bytes[n / 2] ^= 0xff;
    fs::write(&blob, bytes).unwrap();
    let cache = ImageCache::open(&s.cache_root()).unwrap();
    let e = cache.import(&s.path("layout"), &r("hello")).unwrap_err();
    assert!(matches!(e, ImageError::BlobDigestMismatch { .. }), "{e}");
    assert!(
        e.to_string().contains(&manifest_layers[1].digest[7..]),
        "{e}"
    );
    assert_cache_empty(&s.cache_root());
}

#[test]
fn truncated_archive_is_refused() {
    let s = Scratch::new();
    oci_dir(&s.path("layout"), "latest", hello_layers());
    tar_of_dir(&s.path("layout"), &s.path("image.tar"));
    let full = fs::read(s.path("image.tar")).unwrap();
    let cache = ImageCache::open(&s.cache_root()).unwrap();
    for cut in [full.len() / 2 + 100, full.len() - 1500, 700] {
        fs::write(s.path("cut.tar"), &full[..cut]).unwrap();
        let e = cache.import(&s.path("cut.tar"), &r("hello")).unwrap_err();
        assert!(
            matches!(
                e,
                ImageError::CorruptArchive { .. } | ImageError::MissingBlob { .. }
            ),
            "cut at {cut}: {e}"
        );
    }
    assert_cache_empty(&s.cache_root());
}

#[test]
fn something_that_is_no_image_is_refused_clearly() {
    let s = Scratch::new();
    fs::create_dir(s.path("empty")).unwrap();
    let cache = ImageCache::open(&s.cache_root()).unwrap();
    let e = cache.import(&s.path("empty"), &r("x")).unwrap_err();
    assert!(
        e.to_string().contains("has no index.json or manifest.json"),
        "{e}"
    );
    let e = cache.import(&s.path("missing.tar"), &r("x")).unwrap_err();
    assert!(matches!(e, ImageError::SourceUnreadable { .. }), "{e}");
}

/// Each hostile image is imported through the whole pipeline; a sentinel directory next to
/// the cache must stay as it was, and a refused import leaves the cache empty.
#[test]
fn hostile_layers_are_refused_and_write_nothing_outside() {
    let s = Scratch::new();
    let outside = s.outside().to_str().unwrap().to_string();
    // rootfs → import-XXXX → tmp → cache → scratch
    let up = "../../../../outside";
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "traversal",
            Layer::new().file(&format!("{up}/pwned"), b"x").build(),
        ),
        (
            "symlink then write",
            Layer::new()
                .symlink("evil", up)
                .file("evil/pwned", b"x")
                .build(),
        ),
        (
            "absolute symlink then write",
            Layer::new()
                .symlink("etc", &outside)
                .file("etc/secret", b"x")
                .build(),
        ),
        (
            "hard link out",
            Layer::new().hardlink("x", &format!("{up}/secret")).build(),
        ),
        (
            "hard link through symlink",
            Layer::new()
                .symlink("s", &outside)
                .hardlink("x", "s/secret")
                .build(),
        ),
        (
            "whiteout of ..",
            Layer::new().dir("a/").file("a/.wh..", b"").build(),
        ),
        (
            "whiteout through symlink",
            Layer::new()
                .symlink("s", &outside)
                .file("s/.wh.secret", b"")
                .build(),
        ),
    ];
    let cache = ImageCache::open(&s.cache_root()).unwrap();
    for (name, layer) in cases {
        let layout = s.path(&format!("layout-{}", name.replace(' ', "-")));
        oci_dir(&layout, "latest", vec![layer]);
        let e = cache.import(&layout, &r("hostile")).unwrap_err();
        assert!(matches!(e, ImageError::UnsafeEntry { .. }), "{name}: {e}");
        assert!(e.to_string().ends_with(": refused"), "{name}: {e}");
        s.assert_outside_untouched();
        assert_cache_empty(&s.cache_root());
    }
}

#[test]
fn absolute_paths_and_links_out_are_contained() {
    let s = Scratch::new();
    let secret = s.outside().join("secret").to_str().unwrap().to_string();
    oci_dir(
        &s.path("layout"),
        "latest",
        vec![
            Layer::new()
                .file(&format!("{secret}-abs"), b"inside")
                .symlink("link-out", &secret)
                .hardlink("hl", "link-out")
                .build(),
            Layer::new()
                .file("link-out", b"replaced")
                .file("hl", b"replaced too")
                .build(),
        ],
    );
    let cache = ImageCache::open(&s.cache_root()).unwrap();
    let info = cache.import(&s.path("layout"), &r("contained")).unwrap();
    assert_eq!(
        base_cat(&info.rootfs, &format!("{secret}-abs")).unwrap(),
        b"inside"
    );
    assert_eq!(base_cat(&info.rootfs, "/link-out").unwrap(), b"replaced");
    s.assert_outside_untouched();
}

#[test]
fn device_nodes_are_left_out_of_the_image() {
    let s = Scratch::new();
    oci_dir(
        &s.path("layout"),
        "latest",
        vec![Layer::new()
            .char_device("dev/kmsg")
            .file("ok", b"1")
            .build()],
    );
    let cache = ImageCache::open(&s.cache_root()).unwrap();
    let info = cache.import(&s.path("layout"), &r("dev")).unwrap();
    assert!(!base_exists(&info.rootfs, "/dev/kmsg"));
    assert!(base_exists(&info.rootfs, "/ok"));
}

#[test]
fn image_over_the_size_limit_is_refused() {
    let s = Scratch::new();
    oci_dir(
        &s.path("layout"),
        "latest",
        vec![Layer::new().file("big", &[0; 5000]).build()],
    );
    let options = ImportOptions {
        max_unpacked_bytes: 4096,
        ..ImportOptions::default()
    };
    let cache = ImageCache::open_with(&s.cache_root(), options).unwrap();
    let e = cache.import(&s.path("layout"), &r("big")).unwrap_err();
    assert!(matches!(e, ImageError::TooLarge { .. }), "{e}");
    assert_cache_empty(&s.cache_root());
}

#[test]
fn importing_the_same_image_twice_builds_it_once() {
    let s = Scratch::new();
    oci_dir(&s.path("layout"), "latest", hello_layers());
    let cache = ImageCache::open(&s.cache_root()).unwrap();
    let a = cache.import(&s.path("layout"), &r("hello:a")).unwrap();
    let before = fs::metadata(&a.rootfs).unwrap();
    let b = cache.import(&s.path("layout"), &r("hello:b")).unwrap();
    let after = fs::metadata(&b.rootfs).unwrap();
    assert_eq!(a.rootfs, b.rootfs);
    assert_eq!(
        (before.ino(), before.mtime_nsec(), before.mtime()),
        (after.ino(), after.mtime_nsec(), after.mtime())
    );
    assert_eq!(
        cache
            .list()
            .unwrap()
            .iter()
            .map(|i| i.reference.as_str())
            .collect::<Vec<_>>(),
        ["hello:a", "hello:b"]
    );
}

#[test]
fn a_damaged_cache_entry_is_rebuilt_on_import() {
    let s = Scratch::new();
    oci_dir(&s.path("layout"), "latest", hello_layers());
    let cache = ImageCache::open(&s.cache_root()).unwrap();
    let info = cache.import(&s.path("layout"), &r("hello")).unwrap();
    fs::remove_file(&info.rootfs).unwrap();
    assert!(matches!(
        cache.get(&r("hello")),
        Err(ImageError::CacheCorrupt { .. })
    ));
    let again = cache.import(&s.path("layout"), &r("hello")).unwrap();
    assert_eq!(
        base_cat(&again.rootfs, "/hello.txt").unwrap(),
        b"hello from pitwall\n"
    );
    assert_eq!(fs::read_dir(s.cache_root().join("tmp")).unwrap().count(), 0);
}

#[test]
fn concurrent_imports_of_one_image_agree() {
    let s = Scratch::new();
    oci_dir(&s.path("layout"), "latest", hello_layers());
    let cache = ImageCache::open(&s.cache_root()).unwrap();
    let infos: Vec<ImageInfo> = std::thread::scope(|sc| {
        let hs: Vec<_> = (0..3)
            .map(|i| {
                let cache = cache.clone();
                let layout = s.path("layout");
                sc.spawn(move || cache.import(&layout, &r(&format!("hello:t{i}"))).unwrap())
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert!(infos.iter().all(|i| i.rootfs == infos[0].rootfs));
    assert_eq!(
        fs::read_dir(s.cache_root().join("images")).unwrap().count(),
        1
    );
    assert_eq!(fs::read_dir(s.cache_root().join("tmp")).unwrap().count(), 0);
    assert_eq!(
        base_cat(&infos[0].rootfs, "/hello.txt").unwrap(),
        b"hello from pitwall\n"
    );
}

#[test]
fn remove_deletes_the_image_when_no_reference_is_left() {
    let s = Scratch::new();
    oci_dir(&s.path("layout"), "latest", hello_layers());
    let cache = ImageCache::open(&s.cache_root()).unwrap();
    let a = cache.import(&s.path("layout"), &r("hello:a")).unwrap();
    cache.import(&s.path("layout"), &r("hello:b")).unwrap();
    assert!(cache.remove(&r("hello:a")).unwrap());
    assert!(a.rootfs.exists(), "hello:b still names it");
    assert_eq!(cache.get(&r("hello:a")).unwrap(), None);
    assert!(cache.remove(&r("hello:b")).unwrap());
    assert!(!a.rootfs.exists());
    assert!(!cache.remove(&r("hello:b")).unwrap());
    assert!(cache.list().unwrap().is_empty());
    assert_eq!(fs::read_dir(s.cache_root().join("tmp")).unwrap().count(), 0);
}

#[test]
fn reimport_under_a_name_moves_the_name_to_the_new_image() {
    let s = Scratch::new();
    oci_dir(
        &s.path("v1"),
        "latest",
        vec![Layer::new().file("v", b"1").build()],
    );
    oci_dir(
        &s.path("v2"),
        "latest",
        vec![Layer::new().file("v", b"2").build()],
    );
    let cache = ImageCache::open(&s.cache_root()).unwrap();
    let one = cache.import(&s.path("v1"), &r("app")).unwrap();
    let two = cache.import(&s.path("v2"), &r("app")).unwrap();
    assert_ne!(one.digest, two.digest);
    assert_eq!(
        cache.get(&r("app:latest")).unwrap().unwrap().digest,
        two.digest
    );
    assert!(
        one.rootfs.exists(),
        "the old image stays until remove; it may be in use"
    );
}

#[test]
fn open_sweeps_work_left_by_a_killed_import() {
    let s = Scratch::new();
    let cache = ImageCache::open(&s.cache_root()).unwrap();
    let stale = s.cache_root().join("tmp/import-dead");
    fs::create_dir_all(stale.join("rootfs")).unwrap();
    fs::write(stale.join(".lock"), b"").unwrap();
    let live = cache.new_work().unwrap();
    ImageCache::open(&s.cache_root()).unwrap();
    assert!(!stale.exists());
    assert!(
        live.dir.path().exists(),
        "a running import's work is left alone"
    );
}

/// Stores a fake blob for `digest` in the cache's blob store (GC does not read blobs).
fn store_blob(root: &Path, digest: &str, len: usize) -> PathBuf {
    let dir = root.join("blobs/sha256");
    fs::create_dir_all(&dir).unwrap();
    let path = dir.join(digest::sha256_hex(digest).unwrap());
    fs::write(&path, vec![7u8; len]).unwrap();
    path
}

fn other_digest(n: u32) -> String {
    format!("sha256:{n:064x}")
}

#[test]
fn inspect_gives_the_record_its_blobs_and_every_reference_naming_it() {
    let s = Scratch::new();
    let digest = oci_dir(&s.path("layout"), "latest", hello_layers());
    let cache = ImageCache::open(&s.cache_root()).unwrap();
    let info = cache.import(&s.path("layout"), &r("hello:b")).unwrap();
    cache.import(&s.path("layout"), &r("hello:a")).unwrap();

    let d = cache.inspect(&r("hello:b")).unwrap().unwrap();
    assert_eq!(d.reference, "hello:b");
    assert_eq!(d.references, ["hello:a", "hello:b"]);
    assert_eq!(d.digest, digest);
    assert_eq!(
        (d.rootfs.as_path(), d.size_bytes),
        (info.rootfs.as_path(), info.size_bytes)
    );
    assert_eq!(d.format, "oci-layout");
    assert_eq!(
        (d.os.as_str(), d.architecture.as_str()),
        ("linux", host_architecture())
    );
    assert_eq!(d.config, config());
    assert!(d.unpacked_bytes > 0);
    let manifest: Manifest = serde_json::from_slice(
        &fs::read(s.path("layout").join("blobs/sha256").join(&digest[7..])).unwrap(),
    )
    .unwrap();
    assert_eq!(d.config_digest, Some(manifest.config.digest));
    let layers: Vec<_> = manifest.layers.iter().map(|l| l.digest.clone()).collect();
    assert_eq!(d.layers, layers);
    assert_eq!(cache.inspect(&r("hello:nope")).unwrap(), None);
}

#[test]
fn an_image_json_written_before_blobs_were_recorded_still_reads() {
    let s = Scratch::new();
    oci_dir(&s.path("layout"), "latest", hello_layers());
    let cache = ImageCache::open(&s.cache_root()).unwrap();
    let info = cache.import(&s.path("layout"), &r("hello")).unwrap();
    let json = info.rootfs.with_file_name("image.json");
    let mut old: serde_json::Value = serde_json::from_slice(&fs::read(&json).unwrap()).unwrap();
    let o = old.as_object_mut().unwrap();
    o.remove("config_digest");
    o.remove("layers");
    fs::write(&json, serde_json::to_vec(&old).unwrap()).unwrap();

    let d = cache.inspect(&r("hello")).unwrap().unwrap();
    assert_eq!((d.config_digest, d.layers), (None, vec![]));
    assert_eq!(cache.get(&r("hello")).unwrap(), Some(info));
    cache.gc().unwrap();
    assert!(cache.get(&r("hello")).unwrap().is_some());
}

#[test]
fn gc_keeps_the_blobs_of_named_images_and_deletes_the_rest() {
    let s = Scratch::new();
    oci_dir(&s.path("layout"), "latest", hello_layers());
    let cache = ImageCache::open(&s.cache_root()).unwrap();
    cache.import(&s.path("layout"), &r("hello")).unwrap();
    let d = cache.inspect(&r("hello")).unwrap().unwrap();
    let needed: Vec<PathBuf> = d
        .layers
        .iter()
        .chain(d.config_digest.iter())
        .map(|digest| store_blob(&s.cache_root(), digest, 10))
        .collect();
    let unneeded = store_blob(&s.cache_root(), &other_digest(1), 1000);

    let report = cache.gc().unwrap();

    assert_eq!(
        report,
        GcReport {
            blobs_removed: 1,
            bytes_freed: 1000,
            ..Default::default()
        }
    );
    assert!(!unneeded.exists());
    assert!(needed.iter().all(|p| p.exists()), "{needed:?}");
    assert_eq!(
        cache.gc().unwrap(),
        GcReport::default(),
        "nothing left to collect"
    );
}

#[test]
fn remove_collects_the_blobs_only_the_removed_image_needed() {
    let s = Scratch::new();
    let shared = Layer::new().file("shared", b"s").build();
    oci_dir(
        &s.path("one"),
        "latest",
        vec![shared.clone(), Layer::new().file("v", b"1").build()],
    );
    oci_dir(
        &s.path("two"),
        "latest",
        vec![shared, Layer::new().file("v", b"2").build()],
    );
    let cache = ImageCache::open(&s.cache_root()).unwrap();
    let one = cache.import(&s.path("one"), &r("one")).unwrap();
    cache.import(&s.path("two"), &r("two")).unwrap();
    let blobs = |reference: &str| -> Vec<PathBuf> {
        let d = cache.inspect(&r(reference)).unwrap().unwrap();
        d.layers
            .iter()
            .chain(d.config_digest.iter())
            .map(|digest| store_blob(&s.cache_root(), digest, 10))
            .collect()
    };
    let (of_one, of_two) = (blobs("one"), blobs("two"));
    assert_eq!(of_one[0], of_two[0], "the first layer is shared");

    assert!(cache.remove(&r("one")).unwrap());

    assert!(!one.rootfs.exists());
    assert!(
        of_two.iter().all(|p| p.exists()),
        "two still needs its blobs"
    );
    assert!(
        !of_one[1].exists() && !of_one[2].exists(),
        "one's own layer and config are gone"
    );
    assert!(cache.remove(&r("two")).unwrap());
    assert_eq!(
        fs::read_dir(s.cache_root().join("blobs/sha256"))
            .unwrap()
            .count(),
        0
    );
    assert_eq!(
        fs::read_dir(s.cache_root().join("images")).unwrap().count(),
        0
    );
}

#[test]
fn gc_deletes_an_image_no_reference_names_once_its_grace_period_is_over() {
    let s = Scratch::new();
    oci_dir(&s.path("layout"), "latest", hello_layers());
    let cache = ImageCache::open(&s.cache_root()).unwrap();
    let info = cache.import(&s.path("layout"), &r("hello")).unwrap();
    // As a crash between build and naming leaves it.
    fs::remove_file(cache.ref_path("hello:latest")).unwrap();

    assert_eq!(
        cache.gc().unwrap().images_removed,
        0,
        "just built: an import may name it"
    );
    assert!(info.rootfs.exists());
    let report = cache.gc_with(std::time::Duration::ZERO).unwrap();

    assert_eq!(report.images_removed, 1);
    assert!(report.bytes_freed >= info.size_bytes, "{report:?}");
    assert!(!info.rootfs.exists());
    assert_eq!(fs::read_dir(s.cache_root().join("tmp")).unwrap().count(), 0);
}

#[test]
fn gc_keeps_named_images_however_old() {
    let s = Scratch::new();
    oci_dir(&s.path("layout"), "latest", hello_layers());
    let cache = ImageCache::open(&s.cache_root()).unwrap();
    let info = cache.import(&s.path("layout"), &r("hello")).unwrap();
    assert_eq!(
        cache.gc_with(std::time::Duration::ZERO).unwrap(),
        GcReport::default()
    );
    assert!(info.rootfs.exists());
}

#[test]
fn gc_sweeps_work_left_by_dead_imports_but_not_live_work() {
    let s = Scratch::new();
    let cache = ImageCache::open(&s.cache_root()).unwrap();
    let stale = s.cache_root().join("tmp/import-dead");
    fs::create_dir_all(stale.join("rootfs")).unwrap();
    fs::write(stale.join("rootfs/file"), b"12345").unwrap();
    fs::write(stale.join(".lock"), b"").unwrap();
    let live = cache.new_work().unwrap();

    let report = cache.gc().unwrap();

    assert_eq!((report.work_removed, report.bytes_freed), (1, 5));
    assert!(!stale.exists());
    assert!(live.dir.path().exists());
}

#[test]
fn a_blob_pinned_by_a_pull_in_progress_survives_gc_until_the_pull_ends() {
    let s = Scratch::new();
    let cache = ImageCache::open(&s.cache_root()).unwrap();
    let pull = crate::registry::blobs::BlobStore::open(&s.cache_root()).unwrap();
    pull.pin(&other_digest(1)).unwrap();
    let blob = store_blob(&s.cache_root(), &other_digest(1), 10);

    assert_eq!(cache.gc().unwrap().blobs_removed, 0);
    assert!(blob.exists());
    drop(pull);
    assert_eq!(cache.gc().unwrap().blobs_removed, 1);
    assert!(!blob.exists());
    assert_eq!(
        fs::read_dir(s.cache_root().join("blobs/pins"))
            .unwrap()
            .count(),
        0
    );
}

#[test]
fn the_pin_file_of_a_dead_pull_pins_nothing_and_is_removed() {
    let s = Scratch::new();
    let cache = ImageCache::open(&s.cache_root()).unwrap();
    let blob = store_blob(&s.cache_root(), &other_digest(2), 10);
    fs::create_dir_all(s.cache_root().join("blobs/pins")).unwrap();
    let dead = s.cache_root().join("blobs/pins/pin-dead");
    fs::write(&dead, format!("{}\n", other_digest(2))).unwrap();

    assert_eq!(cache.gc().unwrap().blobs_removed, 1);
    assert!(!blob.exists());
    assert!(!dead.exists());
}

/// Pulls that pin, store and then hard-link their blobs (as `registry::pull` does) while
/// collections run in a loop: no pull may find its blob gone.
#[test]
fn gc_racing_pulls_never_deletes_a_blob_a_pull_needs() {
    let s = Scratch::new();
    let cache = ImageCache::open(&s.cache_root()).unwrap();
    let root = s.cache_root();
    let done = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|sc| {
        let collector = sc.spawn(|| {
            let mut runs = 0u32;
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                cache.gc().unwrap();
                runs += 1;
                // Pace the loop: flock is not fair, and pulls must get the lock too.
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
            runs
        });
        let pulls: Vec<_> = (0..4u32)
            .map(|t| {
                let root = root.clone();
                sc.spawn(move || {
                    let layout = tempfile::tempdir_in(&root).unwrap();
                    for i in 0..30u32 {
                        let store = crate::registry::blobs::BlobStore::open(&root).unwrap();
                        // Every pull shares blob 0 and has blobs of its own.
                        let digests = [other_digest(0), other_digest(t * 100 + i + 1)];
                        for d in &digests {
                            store.pin(d).unwrap();
                            let path = root.join("blobs/sha256").join(&d[7..]);
                            if !path.exists() {
                                let tmp = tempfile::NamedTempFile::new_in(root.join("blobs/tmp"))
                                    .unwrap();
                                fs::write(tmp.path(), b"blob").unwrap();
                                tmp.persist(&path).unwrap();
                            }
                        }
                        for d in &digests {
                            let from = root.join("blobs/sha256").join(&d[7..]);
                            let to = layout.path().join(format!("{t}-{i}-{}", &d[7..]));
                            fs::hard_link(&from, &to)
                                .unwrap_or_else(|e| panic!("pull {t}/{i} lost blob {d}: {e}"));
                        }
                    }
                })
            })
            .collect();
        let results: Vec<_> = pulls.into_iter().map(|p| p.join()).collect();
        // Stop the collector before looking at the results, so a failed pull cannot hang the test.
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        for r in results {
            r.unwrap();
        }
        assert!(collector.join().unwrap() > 0);
    });
    cache.gc().unwrap();
    assert_eq!(fs::read_dir(root.join("blobs/sha256")).unwrap().count(), 0);
}
