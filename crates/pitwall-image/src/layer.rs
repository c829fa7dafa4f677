//! Safe application of layer tar streams, in order, into a root directory, with OCI whiteouts.
//!
//! Written by hand rather than with `tar::Entry::unpack_in`: that function knows nothing of
//! whiteouts, and its protection against symlink tricks depends on canonicalising paths,
//! which is a weaker promise than the one made here. The `tar` crate only parses.
//!
//! The rules, for input that must be assumed hostile:
//! - Entry names are made relative (a leading `/` is stripped, as docker does) and any `..`
//!   component refuses the whole image. Nothing is ever created outside the root.
//! - Every parent component is examined with `symlink_metadata` and never followed: a
//!   parent that is a symlink refuses the image ("writes through the symlink"); a missing
//!   parent is created as a root-owned 0755 directory. The last component is never followed
//!   either: an existing file, link or directory there is removed first (a directory is kept
//!   only when the entry is a directory too), and files are created with `O_EXCL`.
//! - Symlinks are created with the target as written (absolute targets are fine: they are
//!   resolved inside the guest, never here).
//! - Hard links name a target inside the root under the same rules; the target must already
//!   exist and not be a directory. A target that is itself a symlink is linked as the
//!   symlink (`linkat` without `AT_SYMLINK_FOLLOW`), so nothing outside is reached.
//! - Whiteouts: `.wh.<name>` removes `<name>` of lower layers; `.wh..wh..opq` empties its
//!   directory of everything lower layers put there (what this layer puts there stays, in
//!   whatever order the entries come). A whiteout naming `.`, `..` or an empty name refuses.
//! - Character and block devices and fifos are **not created** (policy: a guest gets its
//!   devices from devtmpfs); each one is logged at `warn` and skipped. Other unknown entry
//!   types are skipped the same way.
//! - Mode (including setuid bits), uid/gid, and mtime are preserved; extended attributes from
//!   PAX `SCHILY.xattr.*` records in the `user.` and `security.` namespaces (file
//!   capabilities) are restored best effort: a failure is logged, not fatal. `trusted.*` (it
//!   would steer the guest's overlayfs) and ACLs are not restored.
//! - The byte count of all file data and the number of entries are capped; beyond the caps
//!   the image is refused before the data is written. The `tar` crate reads PAX and GNU
//!   long-name records into memory whole, so at most `MAX_HEADER_BYTES` may be read between
//!   two entries.

use std::cell::Cell;
use std::collections::{HashMap, HashSet};
use std::ffi::{OsStr, OsString};
use std::fs::{self, OpenOptions, Permissions};
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::rc::Rc;

use filetime::FileTime;
use xattr::FileExt as _;

use crate::error::{ImageError, IoContext};

const WHITEOUT_PREFIX: &str = ".wh.";
const WHITEOUT_OPAQUE: &str = ".wh..wh..opq";
/// Most bytes read between two entries: headers, padding, PAX records, GNU long names. Go's
/// archive/tar (docker's reader) allows 1 MiB per record.
const MAX_HEADER_BYTES: u64 = 4 << 20;

/// A reader that, while `left` is `Some`, fails once that many bytes have been read.
struct HeaderBudget<R> {
    inner: R,
    left: Rc<Cell<Option<u64>>>,
}

impl<R: Read> Read for HeaderBudget<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if let Some(left) = self.left.get() {
            let left = left.checked_sub(n as u64).ok_or_else(|| {
                io::Error::other(format!(
                    "more than {MAX_HEADER_BYTES} bytes of tar headers and extension records before one entry"
                ))
            })?;
            self.left.set(Some(left));
        }
        Ok(n)
    }
}

/// Caps on what the layers of one image may unpack to.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// File data summed over all layers (bytes overwritten by later layers still count).
    pub max_bytes: u64,
    /// Entries summed over all layers.
    pub max_entries: u64,
}

/// Applies layers, one after the other, into `root`.
pub struct Applier {
    root: PathBuf,
    limits: Limits,
    bytes: u64,
    entries: u64,
    /// Directory mtimes to set once all layers are in (adding children changes them).
    dir_times: HashMap<PathBuf, FileTime>,
    /// Paths (relative) this layer created or wrote, for opaque whiteouts.
    touched: HashSet<PathBuf>,
    layer: usize,
}

/// What a layer entry asks for, after the name checks.
enum Kind {
    File,
    Dir,
    Symlink(OsString),
    HardLink(Vec<OsString>),
    Skip(&'static str),
}

struct Meta {
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: FileTime,
    xattrs: Vec<(OsString, Vec<u8>)>,
}

impl Applier {
    pub fn new(root: &Path, limits: Limits) -> Self {
        Self {
            root: root.to_path_buf(),
            limits,
            bytes: 0,
            entries: 0,
            dir_times: HashMap::new(),
            touched: HashSet::new(),
            layer: 0,
        }
    }

    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// File data written so far.
    pub fn bytes_written(&self) -> u64 {
        self.bytes
    }

    /// Applies one uncompressed layer tar. `layer` is 1-based, for messages.
    pub fn apply<R: Read>(&mut self, layer: usize, name: &str, tar: R) -> Result<(), ImageError> {
        self.layer = layer;
        self.touched.clear();
        let corrupt = |e: io::Error| ImageError::CorruptLayer {
            layer,
            name: name.to_string(),
            detail: e.to_string(),
        };
        let window = Rc::new(Cell::new(None));
        let mut archive = tar::Archive::new(HeaderBudget {
            inner: tar,
            left: Rc::clone(&window),
        });
        let mut entries = archive.entries().map_err(corrupt)?;
        loop {
            // Only headers, padding and the PAX / GNU long-name records (which the tar crate
            // reads into memory whole) are read while looking for the next entry: cap them.
            window.set(Some(MAX_HEADER_BYTES));
            let next = entries.next();
            window.set(None);
            let Some(entry) = next else { break };
            let mut entry = entry.map_err(corrupt)?;
            self.entries += 1;
            if self.entries > self.limits.max_entries {
                return Err(ImageError::TooLarge {
                    what: format!("it has more than {} entries", self.limits.max_entries),
                });
            }
            self.apply_entry(&mut entry, name)?;
            // Consume what was not read (data of skipped entries), outside the header budget.
            io::copy(&mut entry, &mut io::sink()).map_err(corrupt)?;
        }
        Ok(())
    }

    /// Sets the directory mtimes recorded while applying; call after the last layer.
    pub fn finish(self) -> Result<(), ImageError> {
        let mut dirs: Vec<(PathBuf, FileTime)> = self.dir_times.into_iter().collect();
        dirs.sort_by_key(|(p, _)| std::cmp::Reverse(p.components().count()));
        for (p, t) in dirs {
            // A later layer may have replaced the directory; never follow what is there now.
            match fs::symlink_metadata(&p) {
                Ok(m) if m.is_dir() => {
                    filetime::set_symlink_file_times(&p, t, t).ctx("set the mtime of", &p)?
                }
                _ => {}
            }
        }
        Ok(())
    }

    fn unsafe_entry(&self, entry: &str, reason: impl Into<String>) -> ImageError {
        ImageError::UnsafeEntry {
            layer: self.layer,
            entry: entry.to_string(),
            reason: reason.into(),
        }
    }

    fn bad_entry(&self, entry: &str, detail: impl Into<String>) -> ImageError {
        ImageError::BadEntry {
            layer: self.layer,
            entry: entry.to_string(),
            detail: detail.into(),
        }
    }

    /// Splits an archive name into components, refusing `..`.
    fn components(&self, raw: &[u8], shown: &str) -> Result<Vec<OsString>, ImageError> {
        let mut out = Vec::new();
        for c in raw.split(|b| *b == b'/') {
            match c {
                b"" | b"." => {}
                b".." => return Err(self.unsafe_entry(shown, "escapes the image root")),
                c => out.push(OsStr::from_bytes(c).to_os_string()),
            }
        }
        Ok(out)
    }

    /// Walks `parents` below the root without following anything. Missing directories are
    /// created when `create`, otherwise `Ok(None)` is returned.
    fn parent_dir(
        &mut self,
        parents: &[OsString],
        create: bool,
        shown: &str,
    ) -> Result<Option<PathBuf>, ImageError> {
        let mut abs = self.root.clone();
        let mut rel = PathBuf::new();
        for c in parents {
            abs.push(c);
            rel.push(c);
            match fs::symlink_metadata(&abs) {
                Ok(m) if m.is_dir() => {}
                Ok(m) if m.file_type().is_symlink() => {
                    return Err(self.unsafe_entry(
                        shown,
                        format!(
                            "writes through the symlink /{} (made by an earlier entry or layer)",
                            rel.display()
                        ),
                    ))
                }
                Ok(_) => {
                    return Err(self.bad_entry(
                        shown,
                        format!("its parent /{} is not a directory", rel.display()),
                    ))
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    if !create {
                        return Ok(None);
                    }
                    fs::create_dir(&abs).ctx("create directory", &abs)?;
                    fs::set_permissions(&abs, Permissions::from_mode(0o755))
                        .ctx("set the mode of", &abs)?;
                }
                Err(e) => return Err(ImageError::io("inspect", abs, e)),
            }
            if create {
                self.touched.insert(rel.clone());
            }
        }
        Ok(Some(abs))
    }

    fn apply_entry<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        layer_name: &str,
    ) -> Result<(), ImageError> {
        let raw = entry.path_bytes().into_owned();
        let shown = String::from_utf8_lossy(&raw).into_owned();
        let comps = self.components(&raw, &shown)?;
        let ty = entry.header().entry_type();

        let Some((last, parents)) = comps.split_last() else {
            // The root itself ("./"): take its metadata, nothing else.
            if ty.is_dir() {
                let meta = self.meta(entry, &shown)?;
                let root = self.root.clone();
                self.set_meta(&root, &meta)?;
                self.dir_times.insert(root, meta.mtime);
                return Ok(());
            }
            return Err(self.bad_entry(&shown, "names the image root but is not a directory"));
        };

        let last_bytes = last.as_bytes();
        if last_bytes.starts_with(WHITEOUT_PREFIX.as_bytes()) {
            return self.whiteout(parents, last_bytes, &shown);
        }

        let kind = if ty.is_file() || ty.is_contiguous() || ty.is_gnu_sparse() {
            Kind::File
        } else if ty.is_dir() {
            Kind::Dir
        } else if ty.is_symlink() {
            let target = entry
                .link_name_bytes()
                .ok_or_else(|| self.bad_entry(&shown, "symlink without a target"))?;
            if target.is_empty() {
                return Err(self.bad_entry(&shown, "symlink with an empty target"));
            }
            Kind::Symlink(OsStr::from_bytes(&target).to_os_string())
        } else if ty.is_hard_link() {
            let target = entry
                .link_name_bytes()
                .ok_or_else(|| self.bad_entry(&shown, "hard link without a target"))?
                .into_owned();
            let t_shown = String::from_utf8_lossy(&target).into_owned();
            let t = self.components(&target, &shown).map_err(|_| {
                self.unsafe_entry(
                    &shown,
                    format!("hard-links to {t_shown:?}, outside the image root"),
                )
            })?;
            if t.is_empty() {
                return Err(self.unsafe_entry(&shown, "hard-links to the image root"));
            }
            Kind::HardLink(t)
        } else if ty.is_character_special() || ty.is_block_special() {
            Kind::Skip("device node")
        } else if ty.is_fifo() {
            Kind::Skip("fifo")
        } else if ty.is_pax_global_extensions() {
            return Ok(());
        } else {
            Kind::Skip("entry of an unknown type")
        };
        if let Kind::Skip(what) = kind {
            tracing::warn!(layer = self.layer, blob = layer_name, entry = %shown, "{what} not created: device nodes, fifos and unknown entry types are skipped by policy");
            return Ok(());
        }

        let meta = self.meta(entry, &shown)?;
        let parent = self
            .parent_dir(parents, true, &shown)?
            .ok_or_else(|| self.bad_entry(&shown, "parent directory missing"))?;
        let target = parent.join(last);
        let rel: PathBuf = comps.iter().collect();

        match kind {
            Kind::Dir => {
                if !self.clear_target(&target, true)? {
                    fs::create_dir(&target).ctx("create directory", &target)?;
                }
                self.set_meta(&target, &meta)?;
                self.dir_times.insert(target, meta.mtime);
            }
            Kind::File => {
                self.clear_target(&target, false)?;
                self.write_file(entry, &target, &meta, &shown, layer_name)?;
            }
            Kind::Symlink(to) => {
                self.clear_target(&target, false)?;
                std::os::unix::fs::symlink(&to, &target).ctx("create symlink", &target)?;
                std::os::unix::fs::lchown(&target, Some(meta.uid), Some(meta.gid))
                    .ctx("set the owner of", &target)?;
                filetime::set_symlink_file_times(&target, meta.mtime, meta.mtime)
                    .ctx("set the mtime of", &target)?;
            }
            Kind::HardLink(to) => {
                let Some((to_last, to_parents)) = to.split_last() else {
                    return Err(self.unsafe_entry(&shown, "hard-links to the image root"));
                };
                let src_parent = self.parent_dir(to_parents, false, &shown)?.ok_or_else(|| {
                    self.bad_entry(
                        &shown,
                        "hard link target does not exist (it must come earlier)",
                    )
                })?;
                let src = src_parent.join(to_last);
                if src == target {
                    return Ok(());
                }
                match fs::symlink_metadata(&src) {
                    Ok(m) if m.is_dir() => {
                        return Err(self.bad_entry(&shown, "hard link to a directory"))
                    }
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {
                        return Err(self.bad_entry(
                            &shown,
                            "hard link target does not exist (it must come earlier)",
                        ))
                    }
                    Err(e) => return Err(ImageError::io("inspect", src, e)),
                }
                self.clear_target(&target, false)?;
                // std's hard_link is linkat(2) without AT_SYMLINK_FOLLOW: a symlink target is
                // linked as the symlink, never followed.
                fs::hard_link(&src, &target).ctx("create hard link", &target)?;
            }
            Kind::Skip(_) => {}
        }
        self.touched.insert(rel);
        Ok(())
    }

    fn meta<R: Read>(
        &self,
        entry: &mut tar::Entry<'_, R>,
        shown: &str,
    ) -> Result<Meta, ImageError> {
        let h = entry.header();
        let field = |r: io::Result<u64>, what: &str| {
            r.map_err(|e| self.bad_entry(shown, format!("unreadable {what} in its header: {e}")))
        };
        let mode = field(h.mode().map(u64::from), "mode")? as u32 & 0o7777;
        let id = |v: u64, what: &str| {
            u32::try_from(v)
                .map_err(|_| self.bad_entry(shown, format!("{what} {v} is out of range")))
        };
        let uid = id(field(h.uid(), "uid")?, "uid")?;
        let gid = id(field(h.gid(), "gid")?, "gid")?;
        let mtime = field(h.mtime(), "mtime")?;
        let mtime = FileTime::from_unix_time(i64::try_from(mtime).unwrap_or(i64::MAX), 0);
        let mut xattrs = Vec::new();
        if let Ok(Some(pax)) = entry.pax_extensions() {
            for ext in pax.flatten() {
                let Some(name) = ext.key_bytes().strip_prefix(b"SCHILY.xattr.") else {
                    continue;
                };
                if name.starts_with(b"user.") || name.starts_with(b"security.") {
                    xattrs.push((
                        OsStr::from_bytes(name).to_os_string(),
                        ext.value_bytes().to_vec(),
                    ));
                } else {
                    tracing::debug!(entry = shown, xattr = %String::from_utf8_lossy(name), "extended attribute not restored: only user.* and security.* are");
                }
            }
        }
        Ok(Meta {
            mode,
            uid,
            gid,
            mtime,
            xattrs,
        })
    }

    /// Owner, then mode (chown clears setuid bits), then xattrs (chown clears file
    /// capabilities), for a directory at `path` (never a symlink: checked by the caller).
    fn set_meta(&self, path: &Path, meta: &Meta) -> Result<(), ImageError> {
        std::os::unix::fs::lchown(path, Some(meta.uid), Some(meta.gid))
            .ctx("set the owner of", path)?;
        fs::set_permissions(path, Permissions::from_mode(meta.mode))
            .ctx("set the mode of", path)?;
        for (name, value) in &meta.xattrs {
            if let Err(e) = xattr::set(path, name, value) {
                tracing::warn!(path = %path.display(), xattr = ?name, error = %e, "could not restore extended attribute");
            }
        }
        Ok(())
    }

    /// Makes room at `target`. Returns true when an existing directory was kept
    /// (`keep_dir`); otherwise whatever was there is gone, never followed.
    fn clear_target(&self, target: &Path, keep_dir: bool) -> Result<bool, ImageError> {
        match fs::symlink_metadata(target) {
            Ok(m) if m.is_dir() => {
                if keep_dir {
                    return Ok(true);
                }
                fs::remove_dir_all(target).ctx("remove", target)?;
            }
            Ok(_) => fs::remove_file(target).ctx("remove", target)?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(ImageError::io("inspect", target, e)),
        }
        Ok(false)
    }

    fn write_file<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        target: &Path,
        meta: &Meta,
        shown: &str,
        layer_name: &str,
    ) -> Result<(), ImageError> {
        let size = entry.size();
        let remaining = self.limits.max_bytes.saturating_sub(self.bytes);
        if size > remaining {
            return Err(ImageError::TooLarge {
                what: format!(
                    "it unpacks to more than {} bytes (layer {} entry {shown:?} of {size} bytes does not fit)",
                    self.limits.max_bytes, self.layer
                ),
            });
        }
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(target)
            .ctx("create", target)?;
        let mut buf = vec![0u8; 128 << 10];
        let mut written = 0u64;
        loop {
            let n = match entry.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    return Err(ImageError::CorruptLayer {
                        layer: self.layer,
                        name: layer_name.to_string(),
                        detail: format!("reading entry {shown:?}: {e}"),
                    })
                }
            };
            f.write_all(&buf[..n]).ctx("write", target)?;
            written += n as u64;
        }
        if written != size {
            return Err(ImageError::CorruptLayer {
                layer: self.layer,
                name: layer_name.to_string(),
                detail: format!("entry {shown:?} is cut short: {written} of {size} bytes"),
            });
        }
        self.bytes += written;
        std::os::unix::fs::fchown(&f, Some(meta.uid), Some(meta.gid))
            .ctx("set the owner of", target)?;
        f.set_permissions(Permissions::from_mode(meta.mode))
            .ctx("set the mode of", target)?;
        for (name, value) in &meta.xattrs {
            if let Err(e) = f.set_xattr(name, value) {
                tracing::warn!(path = %target.display(), xattr = ?name, error = %e, "could not restore extended attribute");
            }
        }
        let t = meta.mtime_system();
        f.set_times(fs::FileTimes::new().set_accessed(t).set_modified(t))
            .ctx("set the mtime of", target)?;
        Ok(())
    }

    fn whiteout(
        &mut self,
        parents: &[OsString],
        last: &[u8],
        shown: &str,
    ) -> Result<(), ImageError> {
        if last == WHITEOUT_OPAQUE.as_bytes() {
            let Some(dir) = self.parent_dir(parents, true, shown)? else {
                return Ok(());
            };
            let rel: PathBuf = parents.iter().collect();
            return self.clear_opaque(&dir, &rel);
        }
        let victim = &last[WHITEOUT_PREFIX.len()..];
        if victim.starts_with(WHITEOUT_PREFIX.as_bytes()) {
            tracing::debug!(entry = shown, "aufs metadata whiteout ignored");
            return Ok(());
        }
        if victim.is_empty() || victim == b"." || victim == b".." {
            return Err(self.unsafe_entry(shown, "is a whiteout of \".\", \"..\" or nothing"));
        }
        let Some(dir) = self.parent_dir(parents, false, shown)? else {
            return Ok(());
        };
        let path = dir.join(OsStr::from_bytes(victim));
        match fs::symlink_metadata(&path) {
            Ok(m) if m.is_dir() => fs::remove_dir_all(&path).ctx("remove", &path)?,
            Ok(_) => fs::remove_file(&path).ctx("remove", &path)?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(ImageError::io("inspect", path, e)),
        }
        Ok(())
    }

    /// Removes from `dir` everything this layer has not written (recursively, so that lower
    /// content inside a directory this layer only passed through goes too).
    fn clear_opaque(&self, dir: &Path, rel: &Path) -> Result<(), ImageError> {
        for child in fs::read_dir(dir).ctx("read directory", dir)? {
            let child = child.ctx("read directory", dir)?;
            let path = child.path();
            let child_rel = rel.join(child.file_name());
            let ft = child.file_type().ctx("inspect", &path)?;
            if self.touched.contains(&child_rel) {
                if ft.is_dir() {
                    self.clear_opaque(&path, &child_rel)?;
                }
            } else if ft.is_dir() {
                fs::remove_dir_all(&path).ctx("remove", &path)?;
            } else {
                fs::remove_file(&path).ctx("remove", &path)?;
            }
        }
        Ok(())
    }
}

impl Meta {
    fn mtime_system(&self) -> std::time::SystemTime {
        let secs = u64::try_from(self.mtime.unix_seconds()).unwrap_or(0);
        std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs)
    }
}

#[cfg(test)]
mod tests;
