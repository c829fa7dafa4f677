//! The initramfs every Linux guest boots with: `/init` = the static `powerunit` binary, the
//! directories it mounts on, a `/dev/console` node (so PID 1 starts with the console as
//! stdin/stdout/stderr), and the kernel modules the guest needs with
//! `/lib/modules/load-order` listing them dependencies first.
//!
//! The archive is an uncompressed cpio "newc": under TCG every instruction of an in-kernel
//! decompressor is emulated, so a few MB of disk (once per kernel and powerunit) are cheaper
//! than inflating at every boot. It is cached in `out_dir` by kernel version and the
//! SHA-256 of the powerunit binary (plus a recipe version), so repeated calls are free.

mod cpio;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::kernel::KernelInfo;
use crate::VmmError;
use cpio::CpioWriter;

/// Modules a guest cannot boot without: disks, the agent port, the base image's filesystem
/// (EROFS; ext4 is built into Debian's cloud kernel), the root overlay.
pub const REQUIRED_MODULES: &[&str] = &[
    "virtio_mmio",
    "virtio_blk",
    "virtio_console",
    "erofs",
    "overlay",
];
/// Modules included when the kernel has them: networking and vsock.
pub const OPTIONAL_MODULES: &[&str] = &["virtio_net", "vsock", "vmw_vsock_virtio_transport"];
/// Bumped whenever what goes into the archive changes, so cached archives are rebuilt.
const RECIPE: &str = "pitwall-initramfs-2";

fn module_name(path: &str) -> String {
    let file = path.rsplit('/').next().unwrap_or(path);
    let stem = file.split(".ko").next().unwrap_or(file);
    stem.replace('-', "_")
}

/// The module files (paths relative to the modules directory) to load for `wanted` and
/// `optional`, each after its dependencies, from the text of `modules.dep`. Modules listed
/// in `modules.builtin` need no file. A missing `wanted` module is an error; a missing
/// `optional` one is skipped.
pub fn load_order(
    modules_dep: &str,
    builtin: &str,
    wanted: &[&str],
    optional: &[&str],
) -> Result<Vec<String>, VmmError> {
    let mut deps: BTreeMap<String, (String, Vec<String>)> = BTreeMap::new();
    for line in modules_dep.lines() {
        let Some((path, rest)) = line.split_once(':') else {
            continue;
        };
        let list = rest.split_whitespace().map(module_name).collect();
        deps.insert(module_name(path), (path.trim().to_string(), list));
    }
    let builtin: BTreeSet<String> = builtin.lines().map(module_name).collect();

    fn visit(
        name: &str,
        deps: &BTreeMap<String, (String, Vec<String>)>,
        builtin: &BTreeSet<String>,
        done: &mut BTreeSet<String>,
        stack: &mut Vec<String>,
        order: &mut Vec<String>,
    ) -> Result<(), VmmError> {
        if done.contains(name) || builtin.contains(name) {
            return Ok(());
        }
        if stack.iter().any(|s| s == name) {
            return Err(VmmError::Kernel(format!(
                "module dependency cycle through {name}"
            )));
        }
        let (path, list) = deps.get(name).ok_or_else(|| {
            VmmError::Kernel(format!(
                "module {name} is neither in modules.dep nor built in"
            ))
        })?;
        stack.push(name.to_string());
        for dep in list {
            visit(dep, deps, builtin, done, stack, order)?;
        }
        stack.pop();
        done.insert(name.to_string());
        order.push(path.clone());
        Ok(())
    }

    let (mut done, mut order) = (BTreeSet::new(), Vec::new());
    for name in wanted {
        visit(
            &name.replace('-', "_"),
            &deps,
            &builtin,
            &mut done,
            &mut Vec::new(),
            &mut order,
        )?;
    }
    for name in optional {
        let name = name.replace('-', "_");
        if deps.contains_key(&name) || builtin.contains(&name) {
            visit(
                &name,
                &deps,
                &builtin,
                &mut done,
                &mut Vec::new(),
                &mut order,
            )?;
        } else {
            tracing::warn!(module = %name, "optional guest module not available in this kernel");
        }
    }
    Ok(order)
}

fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> VmmError {
    let path = path.to_path_buf();
    move |source| VmmError::Io { what, path, source }
}

/// Build (or find in `out_dir`) the initramfs for `kernel` with `powerunit` as `/init`.
pub fn build_initramfs(
    kernel: &KernelInfo,
    powerunit: &Path,
    out_dir: &Path,
) -> Result<PathBuf, VmmError> {
    let init = std::fs::read(powerunit).map_err(io("read powerunit binary", powerunit))?;
    let digest = Sha256::new()
        .chain_update(RECIPE)
        .chain_update(kernel.version.as_bytes())
        .chain_update(&init)
        .finalize();
    let hex: String = digest.iter().take(8).map(|b| format!("{b:02x}")).collect();
    let out = out_dir.join(format!("initramfs-{}-{hex}.cpio", kernel.version));
    if out.is_file() {
        return Ok(out);
    }

    let dep_path = kernel.modules_dir.join("modules.dep");
    let modules_dep = std::fs::read_to_string(&dep_path).map_err(io("read", &dep_path))?;
    let builtin =
        std::fs::read_to_string(kernel.modules_dir.join("modules.builtin")).unwrap_or_default();
    let order = load_order(&modules_dep, &builtin, REQUIRED_MODULES, OPTIONAL_MODULES)?;

    std::fs::create_dir_all(out_dir).map_err(io("create", out_dir))?;
    let tmp = tempfile::NamedTempFile::new_in(out_dir)
        .map_err(io("create temporary file in", out_dir))?;
    let mut w = CpioWriter::new(std::io::BufWriter::new(tmp.as_file()));
    let wio = io("write", &out);
    let result: std::io::Result<()> = (|| {
        for d in ["dev", "proc", "sys", "run", "newroot", "lib", "lib/modules"] {
            w.dir(d, 0o755)?;
        }
        w.char_device("dev/console", 0o600, 5, 1)?;
        let mut list = String::new();
        for rel in &order {
            let src = kernel.modules_dir.join(rel);
            let data = std::fs::read(&src)
                .map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", src.display())))?;
            let file = rel.rsplit('/').next().unwrap_or(rel);
            w.file(&format!("lib/modules/{file}"), 0o644, &data)?;
            list.push_str(file);
            list.push('\n');
        }
        w.file("lib/modules/load-order", 0o644, list.as_bytes())?;
        w.file("init", 0o755, &init)?;
        w.finish()?.flush()
    })();
    result.map_err(wio)?;
    // Readable by a VMM that runs under its own uid; nothing secret in it.
    std::fs::set_permissions(
        tmp.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o644),
    )
    .map_err(io("set permissions of", tmp.path()))?;
    tmp.persist(&out).map_err(|e| VmmError::Io {
        what: "rename into place",
        path: out.clone(),
        source: e.error,
    })?;
    tracing::info!(initramfs = %out.display(), kernel = %kernel.version, modules = order.len(), "built the initramfs");
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEP: &str = "\
kernel/drivers/virtio/virtio_mmio.ko: kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/virtio/virtio.ko: kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/virtio/virtio_ring.ko:
kernel/drivers/block/virtio_blk.ko: kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/net/virtio_net.ko: kernel/drivers/net/net_failover.ko kernel/net/core/failover.ko kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/net/net_failover.ko: kernel/net/core/failover.ko
kernel/net/core/failover.ko:
kernel/fs/overlayfs/overlay.ko:
";

    fn position(order: &[String], name: &str) -> usize {
        order
            .iter()
            .position(|p| module_name(p) == name)
            .unwrap_or_else(|| panic!("{name} missing from {order:?}"))
    }

    #[test]
    fn dependencies_come_before_their_users() {
        let order = load_order(DEP, "", &["virtio_mmio", "virtio_blk", "virtio_net"], &[]).unwrap();
        assert_eq!(order.len(), 7);
        assert!(position(&order, "virtio_ring") < position(&order, "virtio"));
        assert!(position(&order, "virtio") < position(&order, "virtio_mmio"));
        assert!(position(&order, "failover") < position(&order, "net_failover"));
        assert!(position(&order, "net_failover") < position(&order, "virtio_net"));
    }

    #[test]
    fn builtin_modules_need_no_file() {
        let builtin = "kernel/fs/overlayfs/overlay.ko\n";
        let order = load_order(DEP, builtin, &["overlay"], &[]).unwrap();
        assert!(order.is_empty());
    }

    #[test]
    fn a_missing_required_module_is_an_error_and_a_missing_optional_one_is_not() {
        assert!(load_order(DEP, "", &["vsock"], &[]).is_err());
        assert_eq!(
            load_order(DEP, "", &[], &["vsock"]).unwrap(),
            Vec::<String>::new()
        );
    }

    #[test]
    fn a_dependency_cycle_is_an_error() {
        let dep = "a.ko: b.ko\nb.ko: a.ko\n";
        assert!(load_order(dep, "", &["a"], &[]).is_err());
    }

    #[test]
    fn the_archive_holds_init_modules_and_load_order_and_is_cached() {
        let dir = tempfile::tempdir().unwrap();
        let modules = dir.path().join("lib/modules/6.1.0-1-test");
        for p in [
            "kernel/fs/overlayfs/overlay.ko",
            "kernel/fs/erofs/erofs.ko",
            "kernel/lib/libcrc32c.ko",
            "kernel/drivers/virtio/virtio_ring.ko",
        ] {
            std::fs::create_dir_all(modules.join(p).parent().unwrap()).unwrap();
            std::fs::write(modules.join(p), p).unwrap();
        }
        std::fs::write(modules.join("modules.dep"), "kernel/fs/overlayfs/overlay.ko: kernel/drivers/virtio/virtio_ring.ko\nkernel/fs/erofs/erofs.ko: kernel/lib/libcrc32c.ko\nkernel/lib/libcrc32c.ko:\nkernel/drivers/virtio/virtio_ring.ko:\n").unwrap();
        std::fs::write(modules.join("modules.builtin"), "kernel/drivers/virtio/virtio_mmio.ko\nkernel/drivers/block/virtio_blk.ko\nkernel/drivers/char/virtio_console.ko\n").unwrap();
        let kernel = KernelInfo {
            version: "6.1.0-1-test".into(),
            vmlinuz: dir.path().join("vmlinuz"),
            modules_dir: modules,
        };
        let pu = dir.path().join("powerunit");
        std::fs::write(&pu, b"\x7fELF-powerunit").unwrap();
        let out = dir.path().join("out");

        let first = build_initramfs(&kernel, &pu, &out).unwrap();
        let entries = cpio::tests::parse(&std::fs::read(&first).unwrap());
        let get = |n: &str| {
            entries
                .iter()
                .find(|e| e.0 == n)
                .unwrap_or_else(|| panic!("{n} missing"))
        };
        assert_eq!(get("init").1, 0o100_755);
        assert_eq!(get("init").3, b"\x7fELF-powerunit");
        assert_eq!(get("dev/console").2, (5, 1));
        for d in ["dev", "proc", "sys", "run", "newroot"] {
            assert_eq!(get(d).1, 0o040_755, "{d}");
        }
        assert_eq!(
            get("lib/modules/load-order").3,
            b"libcrc32c.ko\nerofs.ko\nvirtio_ring.ko\noverlay.ko\n"
        );
        assert_eq!(
            get("lib/modules/overlay.ko").3,
            b"kernel/fs/overlayfs/overlay.ko"
        );

        let mtime = std::fs::metadata(&first).unwrap().modified().unwrap();
        assert_eq!(build_initramfs(&kernel, &pu, &out).unwrap(), first);
        assert_eq!(
            std::fs::metadata(&first).unwrap().modified().unwrap(),
            mtime
        );

        std::fs::write(&pu, b"\x7fELF-powerunit-v2").unwrap();
        assert_ne!(build_initramfs(&kernel, &pu, &out).unwrap(), first);
    }
}
