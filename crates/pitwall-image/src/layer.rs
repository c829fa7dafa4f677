//! Safe application of layer tar streams, in order, into a root directory, with OCI whiteouts.
//!
//! Written by hand rather than with `tar::Entry::unpack_in`: that function knows nothing of
//! whiteouts, and its protection against symlink tricks depends on canonicalising paths,
//! which is a weaker promise than the one made here. The `tar` crate only parses.
//!
//! The policy, for input that must be assumed hostile. Nothing is ever created, changed or
//! removed outside the root; what cannot be applied safely refuses the whole image with an
//! error naming the layer and the entry; what is only unusual is contained or skipped.
//!
//! Refused (`ImageError::UnsafeEntry`, "…: refused"):
//! - any `..` component in an entry name or a hard-link target (whatever the tar header
//!   kind: ustar name and prefix, GNU long name, PAX `path` / `linkpath`);
//! - an entry whose parent, at the time it is applied, is a symlink ("writes through the
//!   symlink"), from this layer or an earlier one; this covers symlink-then-write,
//!   directory symlink chains, and hard links or whiteouts through a symlink;
//! - a hard link to the root, and a whiteout of `.`, `..` or an empty name.
//!
//! Refused as malformed (`ImageError::BadEntry`): a NUL byte in a name or link target, a name
//! deeper than [`MAX_DEPTH`] components, a hard link to a directory or to a path that does not
//! exist yet, a parent that is a file, a uid/gid beyond 32 bits. Unreadable tar streams are
//! `CorruptLayer`.
//!
//! Contained:
//! - absolute names: the leading `/` is stripped, as docker does;
//! - symlinks are created with their target as written, absolute or relative, pointing
//!   anywhere: they are resolved in the guest, never here. Nothing here follows a link: every
//!   parent component is opened with `O_NOFOLLOW | O_DIRECTORY` from the root down, and the
//!   last component is never followed either: what is there (file, link, directory) is
//!   removed first, unless both are directories, and files are created with `O_EXCL`;
//! - hard links name a target under the same rules; a target that is a symlink is linked
//!   as the symlink (`linkat` without `AT_SYMLINK_FOLLOW`);
//! - duplicated entries, and entries replacing a directory by a file or the other way
//!   round: the later one wins, as in docker;
//! - whiteouts: `.wh.<name>` removes `<name>` of lower layers; `.wh..wh..opq` empties its
//!   directory (the root included) of everything lower layers put there, whatever the order
//!   of the marker and this layer's own entries. Each directory is scanned at most once per
//!   layer, so repeated markers cost nothing.
//!
//! Skipped by policy, each logged at `warn`: character and block devices and fifos (a guest
//! gets its devices from devtmpfs, and a device node in an image would give its processes
//! raw access to a host device if the image were ever mounted on the host), and entry types
//! this crate does not know.
//!
//! Metadata: mode (setuid, setgid and sticky bits included: they take effect only in the
//! guest; the staging tree lives in a 0700 directory of the cache), uid/gid (PAX `uid` / `gid`
//! override the header) and mtime are preserved. Extended attributes from PAX
//! `SCHILY.xattr.*` records are restored, best effort (a failure is logged), only in two
//! namespaces: `user.*` except `user.overlay.*`, and `security.capability` (file
//! capabilities). Everything else is dropped: `trusted.*` and `user.overlay.*` would steer
//! the guest's overlayfs, which has the image as its lower layer; other `security.*`
//! attributes (SELinux, IMA, EVM labels) are the host's business; ACLs are not supported.
//!
//! Limits (`Limits`, from `ImportOptions`): file data summed over all layers counts the
//! apparent size, so a sparse file's holes count (the tar crate yields them as zeros, and the
//! guest sees them), but blocks of zeros are written as holes: the host never allocates them.
//! Entries are counted over all layers, directories created implicitly for a name's missing
//! parents included. Beyond a limit the image is refused before the data is written. The `tar`
//! crate reads PAX and GNU long-name records into memory whole, so at most
//! `MAX_HEADER_BYTES` may be read between two entries; the caller caps the decompressed
//! stream (see `rootfs::stream_cap`). Work per entry is linear in its name's length.

use std::cell::Cell;
use std::collections::{HashMap, HashSet};
use std::ffi::{OsStr, OsString};
use std::fs::{self, OpenOptions, Permissions};
use std::io::{self, Read};
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt as _, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::rc::Rc;

use filetime::FileTime;
use rustix::fs::{AtFlags, FileType, Mode, OFlags};
use xattr::FileExt as _;

use crate::error::{ImageError, IoContext};

const WHITEOUT_PREFIX: &str = ".wh.";
const WHITEOUT_OPAQUE: &str = ".wh..wh..opq";
/// Most bytes read between two entries: headers, padding, PAX records, GNU long names. Go's
/// archive/tar (docker's reader) allows 1 MiB per record.
const MAX_HEADER_BYTES: u64 = 4 << 20;
/// Most components in an entry name. Linux allows 2048 within `PATH_MAX`; real images stay
/// far below this, and each component costs a system call per entry.
pub const MAX_DEPTH: usize = 256;
/// Blocks of zeros this large, at this alignment, are left as holes in unpacked files.
const HOLE_BLOCK: usize = 4096;

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
    /// File data summed over all layers, apparent sizes (bytes overwritten by later layers
    /// still count).
    pub max_bytes: u64,
    /// Entries summed over all layers, implicitly created parent directories included.
    pub max_entries: u64,
}

/// Applies layers, one after the other, into `root`.
pub struct Applier {
    root: PathBuf,
    limits: Limits,
    bytes: u64,
    entries: u64,
    /// Directory mtimes (by path relative to the root) to set once all layers are in
    /// (adding children changes them).
    dir_times: HashMap<PathBuf, FileTime>,
    /// Paths (relative) this layer created or wrote, for opaque whiteouts. Holds every
    /// ancestor of each path it holds.
    touched: HashSet<PathBuf>,
    /// Directories (relative) this layer has emptied of lower content already: an opaque
    /// whiteout skips them.
    opaque_done: HashSet<PathBuf>,
    /// Directory entries examined by opaque whiteouts, for tests of their cost.
    opaque_scanned: u64,
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

/// Why a name was not split into components.
enum NameError {
    DotDot,
    Nul,
    TooDeep,
}

/// Where a walk from the root down a list of components ended.
enum Walk {
    /// All components are directories (none a symlink); the absolute path.
    Dir(PathBuf),
    /// This prefix (relative) does not exist.
    Missing,
    /// This prefix (relative) is a symlink.
    Symlink(PathBuf),
    /// This prefix (relative) is neither a directory nor a symlink.
    NotDir(PathBuf),
}

/// Splits an archive name into components, dropping empty ones and `.`.
fn split_name(raw: &[u8]) -> Result<Vec<OsString>, NameError> {
    if raw.contains(&0) {
        return Err(NameError::Nul);
    }
    let mut out = Vec::new();
    for c in raw.split(|b| *b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => return Err(NameError::DotDot),
            c => out.push(OsStr::from_bytes(c).to_os_string()),
        }
    }
    if out.len() > MAX_DEPTH {
        return Err(NameError::TooDeep);
    }
    Ok(out)
}

/// The extended attributes restored (see the module doc).
fn xattr_allowed(name: &[u8]) -> bool {
    name == b"security.capability"
        || (name.starts_with(b"user.") && !name.starts_with(b"user.overlay."))
}

fn open_dir_nofollow<Fd: std::os::fd::AsFd>(at: Fd, name: &OsStr) -> rustix::io::Result<OwnedFd> {
    rustix::fs::openat(
        at,
        name,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
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
            opaque_done: HashSet::new(),
            opaque_scanned: 0,
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
        self.opaque_done.clear();
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
            self.count_entry()?;
            self.apply_entry(&mut entry, name)?;
            // Consume what was not read (data of skipped entries), outside the header budget.
            io::copy(&mut entry, &mut io::sink()).map_err(corrupt)?;
        }
        Ok(())
    }

    fn count_entry(&mut self) -> Result<(), ImageError> {
        self.entries += 1;
        if self.entries > self.limits.max_entries {
            return Err(ImageError::TooLarge {
                what: format!(
                    "it has more than {} entries (implicitly created directories count)",
                    self.limits.max_entries
                ),
            });
        }
        Ok(())
    }

    /// Sets the directory mtimes recorded while applying; call after the last layer.
    pub fn finish(mut self) -> Result<(), ImageError> {
        let mut dirs: Vec<(PathBuf, FileTime)> =
            std::mem::take(&mut self.dir_times).into_iter().collect();
        dirs.sort_by_key(|(p, _)| std::cmp::Reverse(p.components().count()));
        for (rel, t) in dirs {
            // A later layer may have replaced the directory or one of its parents (by a
            // symlink, say): walk it again, following nothing.
            let comps: Vec<OsString> = rel.iter().map(OsStr::to_os_string).collect();
            if let Walk::Dir(p) = self.walk(&comps, false)? {
                filetime::set_symlink_file_times(&p, t, t).ctx("set the mtime of", &p)?;
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

    /// Splits an archive name into components, refusing `..`, NUL bytes and deep names.
    fn components(&self, raw: &[u8], shown: &str) -> Result<Vec<OsString>, ImageError> {
        split_name(raw).map_err(|e| match e {
            NameError::DotDot => self.unsafe_entry(shown, "escapes the image root"),
            NameError::Nul => self.bad_entry(shown, "has a NUL byte in its name"),
            NameError::TooDeep => {
                self.bad_entry(shown, format!("is more than {MAX_DEPTH} directories deep"))
            }
        })
    }

    /// Walks `comps` from the root down, one directory file descriptor at a time, never
    /// following a symlink. Missing directories are created (root-owned, 0755, counted as
    /// entries) when `create`.
    fn walk(&mut self, comps: &[OsString], create: bool) -> Result<Walk, ImageError> {
        let mut dir = open_dir_nofollow(rustix::fs::CWD, self.root.as_os_str())
            .map_err(|e| ImageError::io("open", &self.root, e.into()))?;
        let mut abs = self.root.clone();
        let mut rel = PathBuf::new();
        for c in comps {
            abs.push(c);
            rel.push(c);
            match open_dir_nofollow(&dir, c) {
                Ok(fd) => dir = fd,
                Err(rustix::io::Errno::NOENT) => {
                    if !create {
                        return Ok(Walk::Missing);
                    }
                    self.count_entry()?;
                    rustix::fs::mkdirat(&dir, c.as_os_str(), Mode::from_raw_mode(0o755))
                        .map_err(|e| ImageError::io("create directory", &abs, e.into()))?;
                    // mkdir's mode passes through the umask.
                    rustix::fs::chmodat(
                        &dir,
                        c.as_os_str(),
                        Mode::from_raw_mode(0o755),
                        AtFlags::empty(),
                    )
                    .map_err(|e| ImageError::io("set the mode of", &abs, e.into()))?;
                    dir = open_dir_nofollow(&dir, c)
                        .map_err(|e| ImageError::io("open", &abs, e.into()))?;
                }
                Err(open_err) => {
                    let st = rustix::fs::statat(&dir, c.as_os_str(), AtFlags::SYMLINK_NOFOLLOW)
                        .map_err(|e| ImageError::io("inspect", &abs, e.into()))?;
                    return Ok(match FileType::from_raw_mode(st.st_mode) {
                        FileType::Symlink => Walk::Symlink(rel),
                        FileType::Directory => {
                            return Err(ImageError::io("open", &abs, open_err.into()))
                        }
                        _ => Walk::NotDir(rel),
                    });
                }
            }
        }
        Ok(Walk::Dir(abs))
    }

    /// Walks `parents` below the root without following anything (see [`Self::walk`]).
    /// Returns `Ok(None)` when one is missing and not `create`; a symlink or a file on the
    /// way refuses the entry.
    fn parent_dir(
        &mut self,
        parents: &[OsString],
        create: bool,
        shown: &str,
    ) -> Result<Option<PathBuf>, ImageError> {
        let abs = match self.walk(parents, create)? {
            Walk::Dir(abs) => abs,
            Walk::Missing => return Ok(None),
            Walk::Symlink(rel) => {
                return Err(self.unsafe_entry(
                    shown,
                    format!(
                        "writes through the symlink /{} (made by an earlier entry or layer)",
                        rel.display()
                    ),
                ))
            }
            Walk::NotDir(rel) => {
                return Err(self.bad_entry(
                    shown,
                    format!("its parent /{} is not a directory", rel.display()),
                ))
            }
        };
        if create {
            self.touch(parents);
        }
        Ok(Some(abs))
    }

    /// Records `comps` and its ancestors as written by this layer. Every path in `touched`
    /// has its ancestors there too, so the walk up stops at the first one already in.
    fn touch(&mut self, comps: &[OsString]) {
        let mut path: PathBuf = comps.iter().collect();
        loop {
            if path.as_os_str().is_empty() || !self.touched.insert(path.clone()) {
                return;
            }
            if !path.pop() {
                return;
            }
        }
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
                self.dir_times.insert(PathBuf::new(), meta.mtime);
                return Ok(());
            }
            if ty.is_pax_global_extensions() {
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
            if target.contains(&0) {
                return Err(self.bad_entry(&shown, "symlink target has a NUL byte"));
            }
            Kind::Symlink(OsStr::from_bytes(&target).to_os_string())
        } else if ty.is_hard_link() {
            let target = entry
                .link_name_bytes()
                .ok_or_else(|| self.bad_entry(&shown, "hard link without a target"))?
                .into_owned();
            let t_shown = String::from_utf8_lossy(&target).into_owned();
            let t = split_name(&target).map_err(|e| match e {
                NameError::DotDot => self.unsafe_entry(
                    &shown,
                    format!("hard-links to {t_shown:?}, outside the image root"),
                ),
                NameError::Nul => self.bad_entry(&shown, "hard link target has a NUL byte"),
                NameError::TooDeep => self.bad_entry(
                    &shown,
                    format!("hard link target is more than {MAX_DEPTH} directories deep"),
                ),
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
            tracing::warn!(layer = self.layer, blob = layer_name, entry = ?shown, "{what} not created: device nodes, fifos and unknown entry types are skipped by policy");
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
                self.dir_times.insert(rel.clone(), meta.mtime);
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
                if src != target {
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
                    // std's hard_link is linkat(2) without AT_SYMLINK_FOLLOW: a symlink
                    // target is linked as the symlink, never followed.
                    fs::hard_link(&src, &target).ctx("create hard link", &target)?;
                }
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
        // The tar crate has already put PAX `uid` / `gid` records into the header.
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
                if xattr_allowed(name) {
                    xattrs.push((
                        OsStr::from_bytes(name).to_os_string(),
                        ext.value_bytes().to_vec(),
                    ));
                } else {
                    tracing::debug!(entry = shown, xattr = %String::from_utf8_lossy(name).escape_debug(), "extended attribute not restored: only user.* (but user.overlay.*) and security.capability are");
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
                tracing::warn!(path = ?path, xattr = ?name, error = %e, "could not restore extended attribute");
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
        // For a GNU sparse entry this is the apparent size, holes included.
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
        let f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(target)
            .ctx("create", target)?;
        let corrupt = |detail: String| ImageError::CorruptLayer {
            layer: self.layer,
            name: layer_name.to_string(),
            detail,
        };
        let mut buf = vec![0u8; 128 << 10];
        let mut written = 0u64;
        loop {
            // Fill the buffer whole, so that blocks of zeros sit at file offsets aligned
            // to HOLE_BLOCK and can be left as holes.
            let mut n = 0;
            while n < buf.len() {
                match entry.read(&mut buf[n..]) {
                    Ok(0) => break,
                    Ok(k) => n += k,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(corrupt(format!("reading entry {shown:?}: {e}"))),
                }
            }
            if n == 0 {
                break;
            }
            for (i, block) in buf[..n].chunks(HOLE_BLOCK).enumerate() {
                if block.iter().all(|b| *b == 0) {
                    continue;
                }
                let at = written + (i * HOLE_BLOCK) as u64;
                f.write_all_at(block, at).ctx("write", target)?;
            }
            written += n as u64;
            if written > size {
                break;
            }
        }
        if written != size {
            return Err(corrupt(format!(
                "entry {shown:?} is cut short: {written} of {size} bytes"
            )));
        }
        // Trailing zeros were not written: the length makes them a hole.
        f.set_len(size).ctx("write", target)?;
        self.bytes += written;
        std::os::unix::fs::fchown(&f, Some(meta.uid), Some(meta.gid))
            .ctx("set the owner of", target)?;
        f.set_permissions(Permissions::from_mode(meta.mode))
            .ctx("set the mode of", target)?;
        for (name, value) in &meta.xattrs {
            if let Err(e) = f.set_xattr(name, value) {
                tracing::warn!(path = ?target, xattr = ?name, error = %e, "could not restore extended attribute");
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
            return self.clear_opaque(dir, rel);
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

    /// Removes from `dir` everything this layer has not written, and from the directories
    /// this layer has written below it too (lower content inside a directory this layer only
    /// passed through goes as well). A directory already emptied this way in this layer
    /// holds only this layer's content, whatever came since: it is not scanned again.
    fn clear_opaque(&mut self, dir: PathBuf, rel: PathBuf) -> Result<(), ImageError> {
        let mut stack = vec![(dir, rel)];
        while let Some((dir, rel)) = stack.pop() {
            if !self.opaque_done.insert(rel.clone()) {
                continue;
            }
            // Read the whole directory first: no descriptor is held across the descent.
            let mut children = Vec::new();
            for child in fs::read_dir(&dir).ctx("read directory", &dir)? {
                let child = child.ctx("read directory", &dir)?;
                let ft = child.file_type().ctx("inspect", child.path())?;
                children.push((child.file_name(), ft.is_dir()));
            }
            for (name, is_dir) in children {
                self.opaque_scanned += 1;
                let path = dir.join(&name);
                let child_rel = rel.join(&name);
                if self.touched.contains(&child_rel) {
                    if is_dir {
                        stack.push((path, child_rel));
                    }
                } else if is_dir {
                    fs::remove_dir_all(&path).ctx("remove", &path)?;
                } else {
                    fs::remove_file(&path).ctx("remove", &path)?;
                }
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
