//! Arbitrary bytes as up to four layers (tar, gzip or zstd; see
//! `pitwall_image::fuzz_apply_layer`) applied into a fresh `root/`; a canary directory
//! `outside/` beside it must come out exactly as it went in, whatever the applier answered.
//! Seeds aim at it with relative links (`../outside`), which resolve whatever the temporary
//! directory is called.
#![no_main]

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;

/// (relative name, kind, size, mode, uid, gid, nlink, inode, mtime, content of files).
type Snapshot = Vec<(PathBuf, u32, u64, u32, u32, u32, u64, u64, i64, i64, Vec<u8>)>;

struct Scene {
    _tmp: tempfile::TempDir,
    base: PathBuf,
    canary: Snapshot,
}

fn scene() -> &'static Scene {
    static SCENE: OnceLock<Scene> = OnceLock::new();
    SCENE.get_or_init(|| {
        let tmp = tempfile::tempdir().expect("temporary directory");
        let base = tmp.path().to_path_buf();
        let outside = base.join("outside");
        fs::create_dir_all(outside.join("b")).expect("canary");
        fs::write(outside.join("secret"), b"untouched").expect("canary");
        fs::set_permissions(outside.join("secret"), fs::Permissions::from_mode(0o644))
            .expect("canary");
        let canary = snapshot(&base);
        Scene {
            _tmp: tmp,
            base,
            canary,
        }
    })
}

/// Everything under `base` but `root/`, never following a link.
fn snapshot(base: &Path) -> Snapshot {
    let mut out = Vec::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let p = base.join(&rel);
        let m = fs::symlink_metadata(&p).expect("stat canary");
        let content = if m.is_file() {
            fs::read(&p).expect("read canary")
        } else {
            Vec::new()
        };
        out.push((
            rel.clone(),
            m.mode() & 0o170000,
            m.len(),
            m.mode(),
            m.uid(),
            m.gid(),
            m.nlink(),
            m.ino(),
            m.mtime(),
            m.mtime_nsec(),
            content,
        ));
        if m.is_dir() {
            let mut names: Vec<_> = fs::read_dir(&p)
                .expect("list canary")
                .map(|e| e.expect("list canary").file_name())
                .filter(|n| !(rel.as_os_str().is_empty() && n == "root"))
                .collect();
            names.sort();
            stack.extend(names.into_iter().map(|n| rel.join(n)));
        }
    }
    // The base directory's own mtime changes as root/ is recreated: leave it out.
    out.retain(|e| !e.0.as_os_str().is_empty());
    out
}

fuzz_target!(|data: &[u8]| {
    let s = scene();
    let root = s.base.join("root");
    if fs::symlink_metadata(&root).is_ok() {
        fs::remove_dir_all(&root).expect("clear root");
    }
    fs::create_dir(&root).expect("create root");
    let _ = pitwall_image::fuzz_apply_layer(data, &root);
    let names: Vec<_> = fs::read_dir(&s.base)
        .expect("list base")
        .map(|e| e.expect("list base").file_name())
        .collect();
    assert_eq!(names.len(), 2, "something was created beside the root: {names:?}");
    assert!(
        snapshot(&s.base) == s.canary,
        "the canary beside the root changed"
    );
});
