#![allow(clippy::unwrap_used)]

use std::os::unix::fs::{FileExt as _, MetadataExt};

use super::*;
use crate::testutil::Layer;

const BIG: Limits = Limits {
    max_bytes: 1 << 30,
    max_entries: 100_000,
};

/// `root/` to apply into and `outside/` (holding `secret`) next to it.
struct Fixture {
    tmp: tempfile::TempDir,
}

impl Fixture {
    fn new() -> Self {
        let tmp = tempfile::tempdir().unwrap();
        fs::create_dir(tmp.path().join("root")).unwrap();
        fs::create_dir(tmp.path().join("outside")).unwrap();
        fs::write(tmp.path().join("outside/secret"), b"untouched").unwrap();
        Self { tmp }
    }

    fn root(&self) -> PathBuf {
        self.tmp.path().join("root")
    }

    fn at(&self, p: &str) -> PathBuf {
        self.root().join(p)
    }

    fn outside(&self) -> PathBuf {
        self.tmp.path().join("outside")
    }

    fn apply(&self, layers: Vec<Vec<u8>>) -> Result<(), ImageError> {
        self.apply_with(layers, BIG)
    }

    fn apply_with(&self, layers: Vec<Vec<u8>>, limits: Limits) -> Result<(), ImageError> {
        let mut a = Applier::new(&self.root(), limits);
        for (i, l) in layers.iter().enumerate() {
            a.apply(i + 1, "test", &l[..])?;
        }
        a.finish()
    }

    fn assert_outside_untouched(&self) {
        let names: Vec<_> = fs::read_dir(self.outside())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![OsString::from("secret")]);
        assert_eq!(
            fs::read(self.outside().join("secret")).unwrap(),
            b"untouched"
        );
        assert_eq!(
            fs::metadata(self.outside().join("secret")).unwrap().nlink(),
            1
        );
    }

    fn outside_abs(&self, name: &str) -> String {
        self.outside().join(name).to_str().unwrap().to_string()
    }
}

fn unsafe_reason(r: Result<(), ImageError>) -> String {
    match r {
        Err(ImageError::UnsafeEntry { reason, .. }) => reason,
        other => panic!("expected an UnsafeEntry refusal, got {other:?}"),
    }
}

#[test]
fn files_dirs_and_metadata_are_applied() {
    let f = Fixture::new();
    f.apply(vec![Layer::new()
        .dir_with("etc/", 0o750, 0, 4)
        .file_with("etc/hello.txt", b"hello\n", 0o640, 1000, 1001)
        .file_with("bin/su", b"su", 0o4755, 0, 0)
        .build()])
        .unwrap();
    assert_eq!(fs::read(f.at("etc/hello.txt")).unwrap(), b"hello\n");
    let m = fs::metadata(f.at("etc/hello.txt")).unwrap();
    assert_eq!((m.mode() & 0o7777, m.uid(), m.gid()), (0o640, 1000, 1001));
    assert_eq!(m.mtime(), 1_700_000_000);
    let d = fs::metadata(f.at("etc")).unwrap();
    assert_eq!((d.mode() & 0o7777, d.gid()), (0o750, 4));
    assert_eq!(
        d.mtime(),
        1_700_000_000,
        "directory mtime is set after its children"
    );
    assert_eq!(
        fs::metadata(f.at("bin/su")).unwrap().mode() & 0o7777,
        0o4755
    );
    assert_eq!(
        fs::metadata(f.at("bin")).unwrap().mode() & 0o7777,
        0o755,
        "implicit parent"
    );
}

#[test]
fn symlinks_and_hard_links_are_kept() {
    let f = Fixture::new();
    f.apply(vec![Layer::new()
        .file("bin/busybox", b"BB")
        .hardlink("bin/sh", "bin/busybox")
        .hardlink("/bin/ash", "/bin/busybox")
        .symlink("bin/ls", "busybox")
        .symlink("etc/mtab", "/proc/mounts")
        .build()])
        .unwrap();
    let bb = fs::metadata(f.at("bin/busybox")).unwrap();
    assert_eq!(bb.nlink(), 3);
    assert_eq!(fs::metadata(f.at("bin/sh")).unwrap().ino(), bb.ino());
    assert_eq!(fs::read_link(f.at("bin/ls")).unwrap(), Path::new("busybox"));
    assert_eq!(
        fs::read_link(f.at("etc/mtab")).unwrap(),
        Path::new("/proc/mounts")
    );
}

#[test]
fn whiteouts_remove_lower_files_and_directories() {
    let f = Fixture::new();
    f.apply(vec![
        Layer::new()
            .file("a/x", b"x")
            .file("a/y", b"y")
            .file("b/z", b"z")
            .build(),
        Layer::new()
            .file("a/.wh.x", b"")
            .file(".wh.b", b"")
            .file("a/.wh.missing", b"")
            .build(),
    ])
    .unwrap();
    assert!(!f.at("a/x").exists());
    assert!(f.at("a/y").exists());
    assert!(!f.at("b").exists());
    assert!(
        !f.at("a/.wh.x").exists(),
        "whiteout markers are not created"
    );
}

#[test]
fn opaque_directory_hides_lower_content_but_keeps_its_own_layer() {
    let f = Fixture::new();
    f.apply(vec![
        Layer::new()
            .file("c/old", b"1")
            .file("c/sub/old", b"2")
            .file("d/old", b"3")
            .build(),
        Layer::new()
            // marker before the new content
            .dir("c/")
            .file("c/.wh..wh..opq", b"")
            .file("c/new", b"n")
            // marker after new content in a subdirectory that also has lower content
            .file("d/sub/new", b"n")
            .file("d/.wh..wh..opq", b"")
            .build(),
    ])
    .unwrap();
    assert!(!f.at("c/old").exists() && !f.at("c/sub").exists());
    assert!(f.at("c/new").exists());
    assert!(!f.at("d/old").exists());
    assert!(f.at("d/sub/new").exists());
}

#[test]
fn later_layers_replace_symlinks_dirs_and_files() {
    let f = Fixture::new();
    f.apply(vec![
        Layer::new()
            .dir("usr/lib/")
            .symlink("lib", "usr/lib")
            .file("etc", b"file")
            .build(),
        Layer::new()
            .dir("lib/")
            .file("lib/libc.so", b"c")
            .dir("etc/")
            .file("usr", b"now a file")
            .build(),
    ])
    .unwrap();
    assert!(fs::symlink_metadata(f.at("lib")).unwrap().is_dir());
    assert!(f.at("lib/libc.so").exists());
    assert!(fs::symlink_metadata(f.at("etc")).unwrap().is_dir());
    assert_eq!(fs::read(f.at("usr")).unwrap(), b"now a file");
}

#[test]
fn device_nodes_and_fifos_are_skipped() {
    let f = Fixture::new();
    f.apply(vec![Layer::new()
        .char_device("dev/null")
        .fifo("run/fifo")
        .file("ok", b"1")
        .build()])
        .unwrap();
    assert!(fs::symlink_metadata(f.at("dev/null")).is_err());
    assert!(fs::symlink_metadata(f.at("run/fifo")).is_err());
    assert!(f.at("ok").exists());
}

#[test]
fn user_and_security_xattrs_are_restored_trusted_are_not() {
    let f = Fixture::new();
    f.apply(vec![Layer::new()
        .file_xattr(
            "x",
            b"1",
            &[("user.pitwall", b"yes"), ("trusted.overlay.opaque", b"y")],
        )
        .build()])
        .unwrap();
    assert_eq!(
        xattr::get(f.at("x"), "user.pitwall").unwrap().as_deref(),
        Some(&b"yes"[..])
    );
    assert_eq!(
        xattr::get(f.at("x"), "trusted.overlay.opaque").unwrap(),
        None
    );
}

#[test]
fn dot_dot_in_a_name_is_refused() {
    let f = Fixture::new();
    let r = f.apply(vec![Layer::new().file("../outside/pwned", b"x").build()]);
    assert!(unsafe_reason(r).contains("escapes the image root"));
    let r = f.apply(vec![Layer::new()
        .file("a/../../outside/pwned", b"x")
        .build()]);
    assert!(unsafe_reason(r).contains("escapes the image root"));
    f.assert_outside_untouched();
}

#[test]
fn absolute_names_are_contained_in_the_root() {
    let f = Fixture::new();
    let abs = f.outside_abs("pwned");
    f.apply(vec![Layer::new().file(&abs, b"x").build()])
        .unwrap();
    assert!(f.root().join(abs.trim_start_matches('/')).exists());
    f.assert_outside_untouched();
}

#[test]
fn writing_through_a_symlink_is_refused() {
    for absolute in [true, false] {
        let f = Fixture::new();
        let target = if absolute {
            f.outside_abs("")
        } else {
            "../outside".to_string()
        };
        let r = f.apply(vec![Layer::new()
            .symlink("evil", &target)
            .file("evil/pwned", b"x")
            .build()]);
        assert!(unsafe_reason(r).contains("writes through the symlink /evil"));
        f.assert_outside_untouched();
    }
}

#[test]
fn writing_through_a_symlink_from_a_lower_layer_is_refused() {
    let f = Fixture::new();
    let r = f.apply(vec![
        Layer::new().symlink("etc", &f.outside_abs("")).build(),
        Layer::new().file("etc/secret", b"overwritten").build(),
    ]);
    assert!(unsafe_reason(r).contains("writes through the symlink /etc"));
    f.assert_outside_untouched();
}

#[test]
fn replacing_a_symlink_to_outside_does_not_touch_its_target() {
    let f = Fixture::new();
    f.apply(vec![
        Layer::new()
            .symlink("secret", &f.outside_abs("secret"))
            .build(),
        Layer::new().file("secret", b"mine").build(),
    ])
    .unwrap();
    assert_eq!(fs::read(f.at("secret")).unwrap(), b"mine");
    f.assert_outside_untouched();
}

#[test]
fn hard_links_out_of_the_root_are_refused() {
    let f = Fixture::new();
    let r = f.apply(vec![Layer::new()
        .hardlink("x", "../outside/secret")
        .build()]);
    assert!(unsafe_reason(r).contains("outside the image root"));
    let r = f.apply(vec![Layer::new()
        .symlink("s", &f.outside_abs(""))
        .hardlink("x", "s/secret")
        .build()]);
    assert!(unsafe_reason(r).contains("writes through the symlink /s"));
    f.assert_outside_untouched();
}

#[test]
fn hard_link_to_a_symlink_links_the_symlink_not_its_target() {
    let f = Fixture::new();
    f.apply(vec![Layer::new()
        .symlink("s", &f.outside_abs("secret"))
        .hardlink("h", "s")
        .file("h", b"replaces the link, not the target")
        .build()])
        .unwrap();
    assert!(fs::symlink_metadata(f.at("s"))
        .unwrap()
        .file_type()
        .is_symlink());
    assert_eq!(
        fs::read(f.at("h")).unwrap(),
        b"replaces the link, not the target"
    );
    f.assert_outside_untouched();
}

#[test]
fn whiteouts_of_dot_dot_or_through_symlinks_are_refused() {
    let f = Fixture::new();
    fs::create_dir(f.at("sub")).unwrap();
    let r = f.apply(vec![Layer::new().file("sub/.wh..", b"").build()]);
    assert!(unsafe_reason(r).contains("whiteout"));
    let r = f.apply(vec![Layer::new().file(".wh..", b"").build()]);
    assert!(unsafe_reason(r).contains("whiteout"));
    let r = f.apply(vec![Layer::new()
        .symlink("s", &f.outside_abs(""))
        .file("s/.wh.secret", b"")
        .build()]);
    assert!(unsafe_reason(r).contains("symlink"));
    let r = f.apply(vec![Layer::new()
        .symlink("o", &f.outside_abs(""))
        .file("o/.wh..wh..opq", b"")
        .build()]);
    assert!(unsafe_reason(r).contains("symlink"));
    f.assert_outside_untouched();
}

#[test]
fn too_much_data_is_refused_before_it_is_written() {
    let f = Fixture::new();
    let limits = Limits {
        max_bytes: 1000,
        max_entries: 100,
    };
    let r = f.apply_with(
        vec![Layer::new()
            .file("small", &[1; 600])
            .file("big", &[1; 600])
            .build()],
        limits,
    );
    assert!(matches!(r, Err(ImageError::TooLarge { .. })), "{r:?}");
    assert!(!f.at("big").exists());
    let r = f.apply_with(
        vec![(0..200)
            .fold(Layer::new(), |l, i| l.file(&format!("f{i}"), b""))
            .build()],
        limits,
    );
    assert!(matches!(r, Err(ImageError::TooLarge { .. })), "{r:?}");
}

#[test]
fn truncated_layer_is_refused() {
    let f = Fixture::new();
    let full = Layer::new().file("a", &[7; 4000]).file("b", b"x").build();
    let r = f.apply(vec![full[..1500].to_vec()]);
    assert!(matches!(r, Err(ImageError::CorruptLayer { .. })), "{r:?}");
    let mut bad = Layer::new().file("a", b"1").build();
    bad[148] ^= 0x01; // checksum field
    let r = f.apply(vec![bad]);
    assert!(matches!(r, Err(ImageError::CorruptLayer { .. })), "{r:?}");
}

#[test]
fn oversized_pax_record_is_refused_without_reading_it_into_memory() {
    let f = Fixture::new();
    let huge = vec![b'a'; (MAX_HEADER_BYTES + 1000) as usize];
    let r = f.apply(vec![Layer::new()
        .file_xattr("x", b"1", &[("user.big", &huge)])
        .build()]);
    match r {
        Err(ImageError::CorruptLayer { detail, .. }) => {
            assert!(detail.contains("tar headers"), "{detail}")
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[test]
fn data_of_skipped_entries_does_not_count_as_header_bytes() {
    let f = Fixture::new();
    let big = vec![0u8; (MAX_HEADER_BYTES + 4096) as usize];
    f.apply(vec![Layer::new()
        .raw(tar::EntryType::Symlink, "l", "t", &big, (0o777, 0, 0), &[])
        .file("after", b"ok")
        .build()])
        .unwrap();
    assert!(f.at("after").exists());
}

// ---- Hostile input, one trick per test (issue 4). ----

/// A regular file whose name is given by a PAX `path` record (so it may hold any byte).
fn pax_named(path: &[u8], data: &[u8]) -> Layer {
    Layer::new().raw(
        tar::EntryType::Regular,
        "placeholder",
        "",
        data,
        (0o644, 0, 0),
        &[("path", path)],
    )
}

/// A one-entry GNU sparse layer: `chunks` of data at offsets (each but the last a multiple
/// of 512 bytes long) in a file of `real_size` bytes.
fn gnu_sparse(name: &str, real_size: u64, chunks: &[(u64, &[u8])]) -> Vec<u8> {
    let mut h = tar::Header::new_gnu();
    h.set_path(name).unwrap();
    h.set_entry_type(tar::EntryType::GNUSparse);
    h.set_mode(0o644);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(1_700_000_000);
    h.set_size(chunks.iter().map(|(_, d)| d.len() as u64).sum());
    let gnu = h.as_gnu_mut().unwrap();
    for (i, (off, data)) in chunks.iter().enumerate() {
        gnu.sparse[i].set_offset(*off);
        gnu.sparse[i].set_length(data.len() as u64);
    }
    gnu.set_real_size(real_size);
    h.set_cksum();
    let mut out = h.as_bytes().to_vec();
    for (_, d) in chunks {
        out.extend_from_slice(d);
    }
    out.resize(out.len().div_ceil(512) * 512 + 1024, 0);
    out
}

fn bad_detail(r: Result<(), ImageError>) -> String {
    match r {
        Err(ImageError::BadEntry { detail, .. }) => detail,
        other => panic!("expected a BadEntry refusal, got {other:?}"),
    }
}

#[test]
fn pax_path_and_gnu_long_name_with_dot_dot_are_refused() {
    let f = Fixture::new();
    let r = f.apply(vec![pax_named(b"a/../../outside/pwned", b"x").build()]);
    assert!(unsafe_reason(r).contains("escapes the image root"));
    let r = f.apply(vec![Layer::new()
        .raw(
            tar::EntryType::GNULongName,
            "././@LongLink",
            "",
            b"../outside/pwned\0",
            (0o644, 0, 0),
            &[],
        )
        .file("harmless", b"x")
        .build()]);
    assert!(unsafe_reason(r).contains("escapes the image root"));
    let r = f.apply(vec![Layer::new()
        .file("a", b"x")
        .raw(
            tar::EntryType::Link,
            "h",
            "a",
            b"",
            (0o644, 0, 0),
            &[("linkpath", b"../outside/secret")],
        )
        .build()]);
    assert!(unsafe_reason(r).contains("outside the image root"));
    f.assert_outside_untouched();
}

#[test]
fn directory_symlink_chains_are_not_followed() {
    let f = Fixture::new();
    let r = f.apply(vec![Layer::new()
        .symlink("a", "b")
        .symlink("b", "../outside")
        .file("a/pwned", b"x")
        .build()]);
    assert!(unsafe_reason(r).contains("writes through the symlink /a"));
    let r = f.apply(vec![Layer::new()
        .dir("d/")
        .symlink("d/up", "../..")
        .file("d/up/outside/pwned", b"x")
        .build()]);
    assert!(unsafe_reason(r).contains("writes through the symlink /d/up"));
    f.assert_outside_untouched();
}

#[test]
fn hard_link_through_a_symlink_to_slash_is_refused() {
    let f = Fixture::new();
    let r = f.apply(vec![Layer::new()
        .symlink("slash", "/")
        .hardlink("passwd", &format!("slash{}", f.outside_abs("secret")))
        .build()]);
    assert!(unsafe_reason(r).contains("writes through the symlink /slash"));
    f.assert_outside_untouched();
}

#[test]
fn hard_link_to_a_directory_is_refused() {
    let f = Fixture::new();
    let r = f.apply(vec![Layer::new().dir("d/").hardlink("h", "d").build()]);
    assert!(bad_detail(r).contains("hard link to a directory"));
}

#[test]
fn whiteouts_of_dot_dot_spelled_every_way_are_refused() {
    for name in [".wh...", "sub/.wh...", ".wh.", "sub/.wh."] {
        let f = Fixture::new();
        let r = f.apply(vec![Layer::new().dir("sub/").file(name, b"").build()]);
        assert!(unsafe_reason(r).contains("whiteout"), "{name}");
        f.assert_outside_untouched();
        assert!(f.root().exists());
    }
}

#[test]
fn opaque_whiteout_at_the_root_keeps_only_this_layer() {
    let f = Fixture::new();
    f.apply(vec![
        Layer::new().file("etc/old", b"1").file("top", b"2").build(),
        Layer::new()
            .file("etc/new", b"3")
            .file(".wh..wh..opq", b"")
            .build(),
    ])
    .unwrap();
    assert!(f.at("etc/new").exists());
    assert!(!f.at("etc/old").exists() && !f.at("top").exists());
    f.assert_outside_untouched();
}

#[test]
fn directory_mtimes_are_not_set_through_a_symlink_of_a_later_layer() {
    let f = Fixture::new();
    let victim = f.tmp.path().join("victim");
    fs::create_dir_all(victim.join("b")).unwrap();
    let before = fs::metadata(victim.join("b")).unwrap().mtime();
    f.apply(vec![
        Layer::new().dir("a/b/").build(),
        Layer::new().symlink("a", victim.to_str().unwrap()).build(),
    ])
    .unwrap();
    assert_eq!(
        fs::metadata(victim.join("b")).unwrap().mtime(),
        before,
        "the mtime of a directory outside the root was set"
    );
}

#[test]
fn names_with_a_nul_byte_are_refused() {
    let f = Fixture::new();
    let r = f.apply(vec![pax_named(b"etc/pass\0wd", b"x").build()]);
    assert!(bad_detail(r).contains("NUL byte"));
}

#[test]
fn names_with_newlines_and_invalid_utf8_are_kept_byte_for_byte() {
    let f = Fixture::new();
    // A GNU long name: the tar crate cannot read a PAX record whose value has a newline.
    f.apply(vec![Layer::new()
        .raw(
            tar::EntryType::GNULongName,
            "././@LongLink",
            "",
            b"dir/caf\xe9\nline\0",
            (0o644, 0, 0),
            &[],
        )
        .file("placeholder", b"x")
        .build()])
        .unwrap();
    let name = OsStr::from_bytes(b"caf\xe9\nline");
    assert_eq!(fs::read(f.at("dir").join(name)).unwrap(), b"x");
}

#[test]
fn names_deeper_than_the_limit_are_refused() {
    let f = Fixture::new();
    let deep = "d/".repeat(MAX_DEPTH) + "f";
    let r = f.apply(vec![pax_named(deep.as_bytes(), b"x").build()]);
    assert!(bad_detail(r).contains("directories deep"));
    let ok = "d/".repeat(MAX_DEPTH - 1) + "f";
    f.apply(vec![pax_named(ok.as_bytes(), b"x").build()])
        .unwrap();
    assert!(f.at(&ok).exists());
}

#[test]
fn implicitly_created_parents_count_as_entries() {
    let f = Fixture::new();
    let limits = Limits {
        max_bytes: 1 << 20,
        max_entries: 100,
    };
    let name = "d/".repeat(150) + "f";
    let r = f.apply_with(vec![pax_named(name.as_bytes(), b"x").build()], limits);
    assert!(matches!(r, Err(ImageError::TooLarge { .. })), "{r:?}");
}

#[test]
fn repeated_opaque_markers_scan_each_directory_once() {
    let f = Fixture::new();
    let n = 200;
    let lower = (0..n).fold(Layer::new(), |l, i| l.file(&format!("d/old{i}"), b"o"));
    let upper = (0..n).fold(Layer::new(), |l, i| {
        l.file(&format!("d/new{i}"), b"n")
            .file("d/.wh..wh..opq", b"")
    });
    let mut a = Applier::new(&f.root(), BIG);
    a.apply(1, "lower", &lower.build()[..]).unwrap();
    a.apply(2, "upper", &upper.build()[..]).unwrap();
    assert_eq!(fs::read_dir(f.at("d")).unwrap().count(), n);
    assert!(
        a.opaque_scanned <= 2 * n as u64,
        "{} directory entries scanned for {n} markers",
        a.opaque_scanned
    );
}

#[test]
fn user_overlay_and_foreign_security_xattrs_are_not_restored() {
    let f = Fixture::new();
    // cap_net_bind_service, permitted and effective (VFS_CAP_REVISION_2).
    let cap: &[u8] = &[
        0x01, 0, 0, 0x02, 0x00, 0x04, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    ];
    f.apply(vec![Layer::new()
        .file_xattr(
            "bin/ping",
            b"1",
            &[
                ("security.capability", cap),
                ("user.overlay.opaque", b"y"),
                ("user.overlay.redirect", b"/etc"),
                ("security.ima", b"\x03\x02"),
                ("user.mime_type", b"text/plain"),
            ],
        )
        .build()])
        .unwrap();
    let names: Vec<OsString> = xattr::list(f.at("bin/ping")).unwrap().collect();
    assert!(names.contains(&"user.mime_type".into()), "{names:?}");
    assert!(
        !names
            .iter()
            .any(|n| n.as_bytes().starts_with(b"user.overlay.")),
        "{names:?}"
    );
    assert!(!names.contains(&"security.ima".into()), "{names:?}");
    assert_eq!(
        xattr::get(f.at("bin/ping"), "security.capability")
            .unwrap()
            .as_deref(),
        Some(cap)
    );
}

#[test]
fn blocks_of_zeros_are_holes_on_the_host() {
    let f = Fixture::new();
    let mut data = vec![0u8; 8 << 20];
    data[5000] = 1;
    f.apply(vec![Layer::new().file("zeros", &data).build()])
        .unwrap();
    let m = fs::metadata(f.at("zeros")).unwrap();
    assert_eq!(m.len(), 8 << 20);
    assert!(
        m.blocks() * 512 < 1 << 20,
        "{} blocks allocated",
        m.blocks()
    );
    assert_eq!(fs::read(f.at("zeros")).unwrap(), data);
}

#[test]
fn gnu_sparse_file_is_unpacked_with_holes() {
    let f = Fixture::new();
    let size = 256 << 20;
    f.apply(vec![gnu_sparse(
        "sparse",
        size,
        &[(1 << 20, &[7u8; 512]), (size - 3, b"end")],
    )])
    .unwrap();
    let m = fs::metadata(f.at("sparse")).unwrap();
    assert_eq!(m.len(), size);
    assert!(
        m.blocks() * 512 < 1 << 20,
        "{} blocks allocated",
        m.blocks()
    );
    let file = fs::File::open(f.at("sparse")).unwrap();
    let mut at = [0u8; 512];
    file.read_exact_at(&mut at, 1 << 20).unwrap();
    assert_eq!(at, [7u8; 512]);
    let mut end = [0u8; 3];
    file.read_exact_at(&mut end, size - 3).unwrap();
    assert_eq!(&end, b"end");
}

#[test]
fn huge_sparse_file_counts_its_apparent_size_against_the_limit() {
    let f = Fixture::new();
    let r = f.apply(vec![gnu_sparse(
        "huge",
        1 << 40,
        &[((1 << 40) - 3, b"end")],
    )]);
    match r {
        Err(ImageError::TooLarge { what }) => assert!(what.contains("\"huge\""), "{what}"),
        other => panic!("expected TooLarge, got {other:?}"),
    }
    assert!(!f.at("huge").exists());
}

#[test]
fn a_later_entry_replaces_a_directory_by_a_file_and_back_in_one_layer() {
    let f = Fixture::new();
    f.apply(vec![Layer::new()
        .file("x/inner", b"1")
        .file("x", b"now a file")
        .dir("y/")
        .file("y", b"file first")
        .dir("y/")
        .file("y/inner", b"2")
        .file("x", b"duplicate wins")
        .build()])
        .unwrap();
    assert_eq!(fs::read(f.at("x")).unwrap(), b"duplicate wins");
    assert_eq!(fs::read(f.at("y/inner")).unwrap(), b"2");
}
