//! Loading the kernel modules the host put into the initramfs: `/lib/modules/load-order`
//! lists them (file names relative to its directory) with dependencies first.

use std::ffi::CString;
use std::fs::File;
use std::path::Path;

use nix::errno::Errno;
use nix::kmod::{finit_module, ModuleInitFlags};

/// The module file names of a load-order file, in order (blank lines and `#` comments
/// skipped).
pub fn parse_load_order(text: &str) -> Vec<&str> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect()
}

/// Load every module listed in `<dir>/load-order`. Returns how many were loaded (or were
/// loaded already) and a message per failure; a failure is not fatal here, because what
/// needs the module (a disk, the agent port) reports its absence more precisely.
pub fn load_all(dir: &Path) -> (usize, Vec<String>) {
    let list = dir.join("load-order");
    let text = match std::fs::read_to_string(&list) {
        Ok(t) => t,
        Err(e) => return (0, vec![format!("{}: {e}", list.display())]),
    };
    let no_params = CString::default();
    let mut loaded = 0;
    let mut failures = Vec::new();
    for name in parse_load_order(&text) {
        let path = dir.join(name);
        let result =
            File::open(&path).map_err(|e| e.to_string()).and_then(|f| {
                match finit_module(&f, &no_params, ModuleInitFlags::empty()) {
                    Ok(()) | Err(Errno::EEXIST) => Ok(()),
                    Err(e) => Err(e.to_string()),
                }
            });
        match result {
            Ok(()) => loaded += 1,
            Err(e) => failures.push(format!("{}: {e}", path.display())),
        }
    }
    (loaded, failures)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn load_order_skips_blanks_and_comments() {
        let text = "# deps first\nvirtio_ring.ko\n\n  virtio.ko \nvirtio_mmio.ko\n";
        assert_eq!(
            parse_load_order(text),
            ["virtio_ring.ko", "virtio.ko", "virtio_mmio.ko"]
        );
    }
}
