//! The guest kernel: Debian's cloud kernel (`linux-image-cloud-amd64`), provisioned once per
//! version into `<cache>/kernels/<version>/` with its modules and a `modules.dep`, and the
//! initramfs built from it (see [`build_initramfs`], in [`crate::initramfs`]).
//!
//! Provisioning downloads with `apt-get download` and unpacks with `dpkg-deb -x` into a
//! temporary directory beside the target, runs `depmod` (the package ships no
//! `modules.dep`), marks the tree complete and renames it into place: a crash leaves only a
//! temporary directory, and two concurrent provisioners both succeed (the loser's rename
//! finds the winner's complete tree and drops its own).

use std::cmp::Ordering;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::VmmError;

pub use crate::initramfs::build_initramfs;

/// The Debian metapackage whose dependency names the current cloud kernel.
pub const METAPACKAGE: &str = "linux-image-cloud-amd64";
/// Written last into a provisioned kernel directory.
const COMPLETE_MARKER: &str = ".complete";

/// A provisioned guest kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelInfo {
    /// Kernel release, e.g. `6.1.0-56-cloud-amd64` (what `uname -r` says in the guest).
    pub version: String,
    /// The bzImage (PVH capable), for `-kernel`.
    pub vmlinuz: PathBuf,
    /// `lib/modules/<version>` with `modules.dep`.
    pub modules_dir: PathBuf,
}

impl KernelInfo {
    fn in_dir(dir: &Path, version: &str) -> Self {
        Self {
            version: version.to_string(),
            vmlinuz: dir.join("vmlinuz"),
            modules_dir: dir.join("lib/modules").join(version),
        }
    }

    fn is_complete(&self, dir: &Path) -> bool {
        dir.join(COMPLETE_MARKER).is_file()
            && self.vmlinuz.is_file()
            && self.modules_dir.join("modules.dep").is_file()
    }

    /// The newest kernel already provisioned under `cache_dir`, without asking apt.
    pub fn from_cache(cache_dir: &Path) -> Result<Option<KernelInfo>, VmmError> {
        let root = cache_dir.join("kernels");
        let entries = match std::fs::read_dir(&root) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(VmmError::Io {
                    what: "read kernel cache",
                    path: root,
                    source,
                })
            }
        };
        let mut best: Option<KernelInfo> = None;
        for entry in entries.flatten() {
            let Ok(version) = entry.file_name().into_string() else {
                continue;
            };
            if version.starts_with('.') {
                continue;
            }
            let k = KernelInfo::in_dir(&entry.path(), &version);
            if !k.is_complete(&entry.path()) {
                continue;
            }
            if best
                .as_ref()
                .is_none_or(|b| version_cmp(&k.version, &b.version) == Ordering::Greater)
            {
                best = Some(k);
            }
        }
        Ok(best)
    }
}

/// Where kernel packages come from: apt in production, a fake in unit tests.
pub trait KernelSource {
    /// The package of the current kernel and its release, e.g.
    /// `("linux-image-6.1.0-56-cloud-amd64", "6.1.0-56-cloud-amd64")`.
    fn resolve(&self) -> Result<(String, String), VmmError>;
    /// Unpack `package` into `root` (as `dpkg-deb -x` does) with a `modules.dep` under
    /// `root/lib/modules/<version>`.
    fn unpack(&self, package: &str, version: &str, root: &Path) -> Result<(), VmmError>;
}

/// Debian's apt: `apt-cache depends`, `apt-get download`, `dpkg-deb -x`, `depmod`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Apt;

fn run(cmd: &mut Command, what: &str) -> Result<String, VmmError> {
    let out = cmd.output().map_err(|e| {
        VmmError::Kernel(format!("{what}: cannot run {:?}: {e}", cmd.get_program()))
    })?;
    if !out.status.success() {
        return Err(VmmError::Kernel(format!(
            "{what} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The kernel package `apt-cache depends <METAPACKAGE>` names.
pub fn parse_depends(output: &str) -> Option<(String, String)> {
    output.lines().find_map(|l| {
        let l = l.trim().trim_start_matches('|');
        let pkg = l.strip_prefix("Depends:")?.trim();
        let version = pkg.strip_prefix("linux-image-")?;
        (!pkg.starts_with('<') && !version.is_empty())
            .then(|| (pkg.to_string(), version.to_string()))
    })
}

impl KernelSource for Apt {
    fn resolve(&self) -> Result<(String, String), VmmError> {
        let depends = |what| {
            run(
                Command::new("apt-cache").args(["depends", METAPACKAGE]),
                what,
            )
        };
        if let Some(found) = depends("apt-cache depends")
            .ok()
            .as_deref()
            .and_then(parse_depends)
        {
            return Ok(found);
        }
        tracing::info!("apt does not know {METAPACKAGE}: running apt-get update");
        run(
            Command::new("apt-get").args(["update", "-q"]),
            "apt-get update",
        )?;
        let out = depends("apt-cache depends")?;
        parse_depends(&out).ok_or_else(|| {
            VmmError::Kernel(format!(
                "apt-cache depends {METAPACKAGE} names no linux-image package; is this a Debian \
                 host with the main component in its sources?"
            ))
        })
    }

    fn unpack(&self, package: &str, version: &str, root: &Path) -> Result<(), VmmError> {
        let download = root.join(".download");
        std::fs::create_dir_all(&download).map_err(|source| VmmError::Io {
            what: "create",
            path: download.clone(),
            source,
        })?;
        run(
            Command::new("apt-get")
                .args(["download", "-q", "-o", "APT::Sandbox::User=root", package])
                .current_dir(&download),
            "apt-get download",
        )?;
        let deb = std::fs::read_dir(&download)
            .map_err(|source| VmmError::Io {
                what: "read",
                path: download.clone(),
                source,
            })?
            .flatten()
            .map(|e| e.path())
            .find(|p| p.extension().is_some_and(|x| x == "deb"))
            .ok_or_else(|| VmmError::Kernel(format!("apt-get download {package} left no .deb")))?;
        run(
            Command::new("dpkg-deb").arg("-x").arg(&deb).arg(root),
            "dpkg-deb -x",
        )?;
        let _ = std::fs::remove_dir_all(&download);
        run(
            Command::new("depmod").arg("-b").arg(root).arg(version),
            "depmod",
        )?;
        Ok(())
    }
}

/// Make sure the current cloud kernel is provisioned under `cache_dir` (apt).
pub fn provision(cache_dir: &Path) -> Result<KernelInfo, VmmError> {
    provision_from(cache_dir, &Apt)
}

/// [`provision`] with any [`KernelSource`].
pub fn provision_from(cache_dir: &Path, source: &dyn KernelSource) -> Result<KernelInfo, VmmError> {
    let (package, version) = source.resolve()?;
    let kernels = cache_dir.join("kernels");
    let dir = kernels.join(&version);
    let info = KernelInfo::in_dir(&dir, &version);
    if info.is_complete(&dir) {
        tracing::debug!(kernel = %version, "guest kernel already provisioned");
        return Ok(info);
    }
    tracing::info!(kernel = %version, cache = %cache_dir.display(), "provisioning the guest kernel");
    std::fs::create_dir_all(&kernels).map_err(|source| VmmError::Io {
        what: "create",
        path: kernels.clone(),
        source,
    })?;
    let tmp = tempfile::Builder::new()
        .prefix(&format!(".{version}-"))
        .tempdir_in(&kernels)
        .map_err(|source| VmmError::Io {
            what: "create temporary dir in",
            path: kernels.clone(),
            source,
        })?;
    let staging = tmp.path().join("root");
    source.unpack(&package, &version, &staging)?;

    // Keep the kernel, its config and its modules; drop the rest of the package.
    let boot = staging.join("boot");
    let moves = [
        (
            boot.join(format!("vmlinuz-{version}")),
            staging.join("vmlinuz"),
        ),
        (
            boot.join(format!("config-{version}")),
            staging.join("config"),
        ),
    ];
    for (from, to) in &moves {
        if from.exists() {
            std::fs::rename(from, to).map_err(|source| VmmError::Io {
                what: "move",
                path: from.clone(),
                source,
            })?;
        }
    }
    for extra in ["boot", "usr", "etc"] {
        let _ = std::fs::remove_dir_all(staging.join(extra));
    }
    let staged = KernelInfo::in_dir(&staging, &version);
    if !staged.vmlinuz.is_file() || !staged.modules_dir.join("modules.dep").is_file() {
        return Err(VmmError::Kernel(format!(
            "{package} did not yield boot/vmlinuz-{version} and lib/modules/{version}/modules.dep"
        )));
    }
    let marker = staging.join(COMPLETE_MARKER);
    std::fs::write(&marker, format!("{package}\n")).map_err(|source| VmmError::Io {
        what: "write",
        path: marker,
        source,
    })?;

    match std::fs::rename(&staging, &dir) {
        Ok(()) => {}
        // Another provisioner won the race (or an incomplete leftover is in the way).
        Err(_) if info.is_complete(&dir) => {}
        Err(_) => {
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::rename(&staging, &dir).map_err(|source| VmmError::Io {
                what: "rename into place",
                path: dir.clone(),
                source,
            })?;
        }
    }
    tracing::info!(kernel = %version, "guest kernel provisioned");
    Ok(info)
}

/// Compare kernel releases by their numeric and non-numeric runs (`6.1.0-56` > `6.1.0-9`).
pub fn version_cmp(a: &str, b: &str) -> Ordering {
    fn runs(s: &str) -> Vec<(bool, &str)> {
        let mut out = Vec::new();
        let mut start = 0;
        let bytes = s.as_bytes();
        for i in 1..=bytes.len() {
            if i == bytes.len() || bytes[i].is_ascii_digit() != bytes[start].is_ascii_digit() {
                out.push((bytes[start].is_ascii_digit(), &s[start..i]));
                start = i;
            }
        }
        out
    }
    let (ra, rb) = (runs(a), runs(b));
    for ((da, sa), (db, sb)) in ra.iter().zip(rb.iter()) {
        let ord = if *da && *db {
            let (ta, tb) = (sa.trim_start_matches('0'), sb.trim_start_matches('0'));
            ta.len().cmp(&tb.len()).then_with(|| ta.cmp(tb))
        } else {
            sa.cmp(sb)
        };
        if ord != Ordering::Equal {
            return ord;
        }
    }
    ra.len().cmp(&rb.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering as AtomicOrdering};

    #[test]
    fn the_kernel_package_is_read_from_apt_cache_depends() {
        let out = "linux-image-cloud-amd64\n  Depends: linux-image-6.1.0-56-cloud-amd64\n";
        assert_eq!(
            parse_depends(out),
            Some((
                "linux-image-6.1.0-56-cloud-amd64".into(),
                "6.1.0-56-cloud-amd64".into()
            ))
        );
        assert_eq!(parse_depends("linux-image-cloud-amd64\n"), None);
    }

    #[test]
    fn kernel_versions_compare_numerically() {
        assert_eq!(
            version_cmp("6.1.0-56-cloud-amd64", "6.1.0-9-cloud-amd64"),
            Ordering::Greater
        );
        assert_eq!(
            version_cmp("6.10.0-1-cloud-amd64", "6.9.0-1-cloud-amd64"),
            Ordering::Greater
        );
        assert_eq!(
            version_cmp("6.1.0-56-cloud-amd64", "6.1.0-56-cloud-amd64"),
            Ordering::Equal
        );
    }

    struct Fake {
        version: &'static str,
        unpacks: AtomicUsize,
    }

    impl KernelSource for Fake {
        fn resolve(&self) -> Result<(String, String), VmmError> {
            Ok((
                format!("linux-image-{}", self.version),
                self.version.to_string(),
            ))
        }
        fn unpack(&self, _package: &str, version: &str, root: &Path) -> Result<(), VmmError> {
            self.unpacks.fetch_add(1, AtomicOrdering::SeqCst);
            let modules = root.join("lib/modules").join(version);
            std::fs::create_dir_all(&modules).unwrap();
            std::fs::create_dir_all(root.join("boot")).unwrap();
            std::fs::create_dir_all(root.join("usr/share/doc")).unwrap();
            std::fs::write(root.join("boot").join(format!("vmlinuz-{version}")), b"bz").unwrap();
            std::fs::write(modules.join("modules.dep"), b"").unwrap();
            Ok(())
        }
    }

    #[test]
    fn provisioning_is_done_once_and_found_in_the_cache() {
        let cache = tempfile::tempdir().unwrap();
        let fake = Fake {
            version: "6.1.0-9-cloud-amd64",
            unpacks: AtomicUsize::new(0),
        };
        let first = provision_from(cache.path(), &fake).unwrap();
        let again = provision_from(cache.path(), &fake).unwrap();
        assert_eq!(first, again);
        assert_eq!(fake.unpacks.load(AtomicOrdering::SeqCst), 1);
        assert!(first.vmlinuz.is_file());
        assert!(!cache
            .path()
            .join("kernels/6.1.0-9-cloud-amd64/usr")
            .exists());
        let leftovers: Vec<_> = std::fs::read_dir(cache.path().join("kernels"))
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with('.'))
            .collect();
        assert!(
            leftovers.is_empty(),
            "temporary dirs left behind: {leftovers:?}"
        );

        let newer = Fake {
            version: "6.1.0-56-cloud-amd64",
            unpacks: AtomicUsize::new(0),
        };
        provision_from(cache.path(), &newer).unwrap();
        let cached = KernelInfo::from_cache(cache.path()).unwrap().unwrap();
        assert_eq!(cached.version, "6.1.0-56-cloud-amd64");
    }

    #[test]
    fn an_incomplete_kernel_dir_is_not_found_in_the_cache() {
        let cache = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(cache.path().join("kernels/6.1.0-1-cloud-amd64")).unwrap();
        assert_eq!(KernelInfo::from_cache(cache.path()).unwrap(), None);
    }
}
