//! The layouts `build` writes are read by real tools (`skopeo`), and what real tools write
//! (`skopeo copy` to an oci-archive and to a docker-archive, i.e. `docker save` format)
//! imports. Tests skip, saying so, where `skopeo` is not installed.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::Command;

use pitwall_core::ImageRef;
use pitwall_image::build::layout_from_rootfs_dir;
use pitwall_image::{ImageCache, ImageConfig, BASE_LABEL};

fn have(tool: &str) -> bool {
    let found = Command::new(tool)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        eprintln!("SKIPPED: {tool} is not installed");
    }
    found
}

/// A small root tree: busybox (the host's, when there is one), a symlink, a file.
fn rootfs(dir: &Path) -> PathBuf {
    let root = dir.join("rootfs");
    std::fs::create_dir_all(root.join("bin")).unwrap();
    std::fs::create_dir_all(root.join("etc")).unwrap();
    let busybox = Path::new("/bin/busybox");
    if busybox.exists() {
        std::fs::copy(busybox, root.join("bin/busybox")).unwrap();
    } else {
        std::fs::write(root.join("bin/busybox"), b"not really busybox").unwrap();
    }
    std::os::unix::fs::symlink("busybox", root.join("bin/sh")).unwrap();
    std::fs::write(root.join("etc/hostname"), b"pitwall\n").unwrap();
    root
}

fn config() -> ImageConfig {
    ImageConfig {
        cmd: vec!["/bin/sh".into()],
        env: vec!["PATH=/bin".into()],
        ..ImageConfig::default()
    }
}

fn skopeo(args: &[&str]) -> String {
    let out = Command::new("skopeo").args(args).output().unwrap();
    assert!(
        out.status.success(),
        "skopeo {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn base_cat(image: &Path, path: &str) -> Vec<u8> {
    pitwall_testkit::base_image::cat(image, path).unwrap_or_else(|| panic!("{path} missing"))
}

#[test]
fn skopeo_accepts_a_layout_built_from_a_directory() {
    if !have("skopeo") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let root = rootfs(tmp.path());
    let layout = tmp.path().join("layout");
    let digest = layout_from_rootfs_dir(&root, &layout, &config(), "1.36").unwrap();
    let inspect = skopeo(&["inspect", &format!("oci:{}:1.36", layout.display())]);
    let v: serde_json::Value = serde_json::from_str(&inspect).unwrap();
    assert_eq!(v["Digest"], digest.as_str());
    assert_eq!(v["Os"], "linux");
    assert_eq!(v["Layers"].as_array().unwrap().len(), 1);
    let cfg = skopeo(&[
        "inspect",
        "--config",
        &format!("oci:{}:1.36", layout.display()),
    ]);
    assert!(cfg.contains("PATH=/bin"), "{cfg}");
}

#[test]
fn imports_what_skopeo_writes_as_oci_archive_and_docker_archive() {
    if !have("skopeo") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let root = rootfs(tmp.path());
    let layout = tmp.path().join("layout");
    layout_from_rootfs_dir(&root, &layout, &config(), "latest").unwrap();
    let src = format!("oci:{}:latest", layout.display());
    let oci_tar = tmp.path().join("oci.tar");
    let docker_tar = tmp.path().join("docker.tar");
    skopeo(&[
        "copy",
        "-q",
        &src,
        &format!("oci-archive:{}:busybox:latest", oci_tar.display()),
    ]);
    skopeo(&[
        "copy",
        "-q",
        &src,
        &format!("docker-archive:{}:busybox:latest", docker_tar.display()),
    ]);

    let cache = ImageCache::open(&tmp.path().join("cache")).unwrap();
    for (archive, name) in [
        (&oci_tar, "busybox:from-oci"),
        (&docker_tar, "busybox:from-docker"),
    ] {
        let info = cache
            .import(archive, &ImageRef::parse(name).unwrap())
            .unwrap();
        assert_eq!(
            base_cat(&info.rootfs, "/etc/hostname"),
            b"pitwall\n",
            "{name}"
        );
        assert_eq!(info.config.cmd, vec!["/bin/sh"], "{name}");
        assert_eq!(pitwall_testkit::base_image::label(&info.rootfs), BASE_LABEL);
    }
}

#[test]
fn imports_a_layout_packed_by_gnu_tar_with_dot_slash_names() {
    if !have("tar") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let root = rootfs(tmp.path());
    let layout = tmp.path().join("layout");
    layout_from_rootfs_dir(&root, &layout, &config(), "latest").unwrap();
    let archive = tmp.path().join("layout.tar");
    let status = Command::new("tar")
        .arg("-C")
        .arg(&layout)
        .arg("-cf")
        .arg(&archive)
        .arg(".")
        .status()
        .unwrap();
    assert!(status.success());
    let cache = ImageCache::open(&tmp.path().join("cache")).unwrap();
    let info = cache
        .import(&archive, &ImageRef::parse("busybox").unwrap())
        .unwrap();
    assert_eq!(base_cat(&info.rootfs, "/etc/hostname"), b"pitwall\n");
}
