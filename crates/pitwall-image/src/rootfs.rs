//! From a resolved image to a root tree, and from the tree to the base image: every layer
//! blob is checked against its digest before any is applied, then each is decompressed (gzip,
//! zstd or plain, told by its magic bytes; the media type only has to name a tar) on one
//! thread while another applies it with [`crate::layer`] and checks the uncompressed stream
//! against the config's diff_id. A check that fails after applying still fails the import, and
//! the caller throws the tree away.
//!
//! Where the tree goes ([`unpack_to_base`]): on a tmpfs (`/dev/shm`) when the image fits in a
//! memory budget, else in the import's work directory. The tree only lives until `mkfs.erofs`
//! (or `mkfs.ext4 -d`) has read it, and creating thousands of files on a disk filesystem costs seconds of kernel
//! time that a tmpfs does not (measured in docs/performance.md); the base image is then the
//! one large write to disk. The budget (half the tmpfs's free space and of the available
//! memory, at most [`MEM_STAGING_MAX`]) is enforced as the unpack limit, so an image that
//! turns out larger than its compressed size promised stops early and is unpacked again on
//! disk. A tmpfs without `user.*` extended attributes (kernels before 6.6) is not used.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read};
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rustix::fs::{flock, FlockOperation};

use crate::archive::{sniff, Compression, Source};
use crate::base::BaseBuilder;
use crate::digest::{self, HashingReader};
use crate::error::{ImageError, IoContext};
use crate::layer::{Applier, Limits};
use crate::resolve::{verify_blob, LayerSpec, ResolvedImage};

/// Most file data unpacked on a tmpfs for one image.
pub const MEM_STAGING_MAX: u64 = 4 << 30;
/// The tmpfs used for staging trees.
const SHM: &str = "/dev/shm";
/// Name prefix of staging directories on the tmpfs.
const SHM_PREFIX: &str = "pitwall-import-";
/// `statfs` type of a tmpfs.
const TMPFS_MAGIC: i128 = 0x0102_1994;
/// A staging directory without its lock file older than this is a leftover.
const SHM_STALE_AFTER: Duration = Duration::from_secs(600);

/// Unpacks `image` into a staging tree (on a tmpfs when it fits, else under `work_dir`) and
/// builds the base image `out` from it with `base`. Returns (file data unpacked, image size)
/// in bytes. The staging tree is removed before returning.
pub(crate) fn unpack_to_base(
    source: &Source,
    image: &ResolvedImage,
    work_dir: &Path,
    limits: Limits,
    check: BlobCheck,
    base: &BaseBuilder,
    out: &Path,
) -> Result<(u64, u64), ImageError> {
    if let Some(mem) = MemStaging::new(image, limits) {
        let tight = mem.limits.max_bytes < limits.max_bytes;
        tracing::debug!(dir = %mem.root.display(), budget = mem.limits.max_bytes, "unpacking on a tmpfs");
        match unpack_and_build(source, image, &mem.root, mem.limits, check, base, out) {
            Ok(r) => return Ok(r),
            Err(e) if out_of_room(&e, tight) => {
                tracing::info!(error = %e, "image does not fit the memory budget; unpacking on disk");
            }
            Err(e) => return Err(e),
        }
    }
    let staging = work_dir.join("rootfs");
    if fs::symlink_metadata(&staging).is_ok() {
        fs::remove_dir_all(&staging).ctx("remove", &staging)?;
    }
    fs::create_dir(&staging).ctx("create directory", &staging)?;
    fs::set_permissions(&staging, fs::Permissions::from_mode(0o755))
        .ctx("set the mode of", &staging)?;
    let r = unpack_and_build(source, image, &staging, limits, check, base, out);
    if let Err(e) = fs::remove_dir_all(&staging) {
        tracing::warn!(path = %staging.display(), error = %e, "could not remove the staging tree");
    }
    r
}

fn unpack_and_build(
    source: &Source,
    image: &ResolvedImage,
    staging: &Path,
    limits: Limits,
    check: BlobCheck,
    base: &BaseBuilder,
    out: &Path,
) -> Result<(u64, u64), ImageError> {
    let unpacked = unpack(source, image, staging, limits, check)?;
    let size = base.build(staging, out)?;
    Ok((unpacked, size))
}

/// Whether `e` says the tmpfs (or its budget) was too small, rather than the image bad.
fn out_of_room(e: &ImageError, tight: bool) -> bool {
    match e {
        ImageError::TooLarge { .. } => tight,
        ImageError::Io { source, .. } => {
            let full = [rustix::io::Errno::NOSPC, rustix::io::Errno::DQUOT];
            full.iter()
                .any(|errno| source.raw_os_error() == Some(errno.raw_os_error()))
        }
        _ => false,
    }
}

/// A staging tree on the tmpfs: a private (0700) directory holding a `.lock` file, locked
/// while in use so that a later import can tell a leftover of a killed process, and the
/// `rootfs/` tree. Removed on drop.
struct MemStaging {
    root: PathBuf,
    limits: Limits,
    _lock: File,
    _dir: tempfile::TempDir,
}

impl MemStaging {
    /// A staging directory on the tmpfs if there is one with room for `image`, else `None`
    /// (the reason logged at debug).
    fn new(image: &ResolvedImage, limits: Limits) -> Option<Self> {
        let shm = Path::new(SHM);
        let why_not = |why: &str| {
            tracing::debug!(why, "not unpacking on a tmpfs");
            None
        };
        match rustix::fs::statfs(shm) {
            Ok(st) if i128::from(st.f_type) == TMPFS_MAGIC => {}
            _ => return why_not("no tmpfs at /dev/shm"),
        }
        let Ok(vfs) = rustix::fs::statvfs(shm) else {
            return why_not("statvfs /dev/shm failed");
        };
        let free = vfs.f_bavail.saturating_mul(vfs.f_frsize);
        let budget = (free / 2)
            .min(mem_available() / 2)
            .min(MEM_STAGING_MAX)
            .min(limits.max_bytes);
        let compressed = image
            .layers
            .iter()
            .map(|l| l.size.unwrap_or(u64::MAX))
            .fold(0u64, u64::saturating_add);
        // Layers of root trees compress about 3:1; a worse guess only costs a second unpack.
        if compressed.saturating_mul(3) > budget {
            return why_not("the image may not fit the memory budget");
        }
        sweep_shm(shm);
        let dir = match tempfile::Builder::new().prefix(SHM_PREFIX).tempdir_in(shm) {
            Ok(d) => d,
            Err(_) => return why_not("cannot create a directory in /dev/shm"),
        };
        let setup = || -> io::Result<(File, PathBuf)> {
            fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o700))?;
            let lock = OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(dir.path().join(".lock"))?;
            flock(&lock, FlockOperation::LockExclusive)?;
            let root = dir.path().join("rootfs");
            fs::create_dir(&root)?;
            fs::set_permissions(&root, fs::Permissions::from_mode(0o755))?;
            // mkfs copies extended attributes from the tree: the tmpfs must keep them.
            xattr::set(&root, "user.pitwall-probe", b"1")?;
            xattr::remove(&root, "user.pitwall-probe")?;
            Ok((lock, root))
        };
        match setup() {
            Ok((lock, root)) => Some(Self {
                root,
                limits: Limits {
                    max_bytes: budget,
                    max_entries: limits.max_entries,
                },
                _lock: lock,
                _dir: dir,
            }),
            Err(e) => {
                tracing::debug!(error = %e, "the tmpfs cannot hold a staging tree");
                None
            }
        }
    }
}

/// Removes staging directories of imports that died: their lock is free, or they have none
/// (a creator is between `mkdir` and locking only for an instant) and are old.
fn sweep_shm(shm: &Path) {
    let Ok(entries) = fs::read_dir(shm) else {
        return;
    };
    for e in entries.flatten() {
        if !e.file_name().to_string_lossy().starts_with(SHM_PREFIX) {
            continue;
        }
        let path = e.path();
        let stale = match OpenOptions::new().write(true).open(path.join(".lock")) {
            Ok(f) => flock(&f, FlockOperation::NonBlockingLockExclusive).is_ok(),
            Err(err) if err.kind() == io::ErrorKind::NotFound => e
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age > SHM_STALE_AFTER),
            // Another user's, or unreadable: not ours to judge.
            Err(_) => false,
        };
        if stale {
            tracing::info!(path = %path.display(), "removing a staging tree left by an interrupted import");
            let _ = fs::remove_dir_all(&path);
        }
    }
}

/// `MemAvailable` of `/proc/meminfo` in bytes; 0 when unknown (so no tmpfs staging).
fn mem_available() -> u64 {
    let Ok(info) = fs::read_to_string("/proc/meminfo") else {
        return 0;
    };
    info.lines()
        .find_map(|l| l.strip_prefix("MemAvailable:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kib| kib.saturating_mul(1024))
}

/// When layer blobs are checked against their digests. Both check each blob while applying it
/// too; a mismatch fails the import either way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlobCheck {
    /// Every blob read and hashed before any is applied: for sources nothing has checked.
    BeforeApplying,
    /// Only while applying: for blobs hashed as they were stored (a registry pull's).
    WhileApplying,
}

/// Unpacks all layers of `image` into the (empty) directory `root`. Returns the file data
/// written, in bytes.
pub fn unpack(
    source: &Source,
    image: &ResolvedImage,
    root: &Path,
    limits: Limits,
    check: BlobCheck,
) -> Result<u64, ImageError> {
    for (i, l) in image.layers.iter().enumerate() {
        check_media_type(i + 1, l)?;
        if let (Some(d), BlobCheck::BeforeApplying) = (&l.digest, check) {
            verify_blob(source, &l.name, d, l.size)?;
        }
    }
    let mut applier = Applier::new(root, limits);
    for (i, l) in image.layers.iter().enumerate() {
        tracing::debug!(layer = i + 1, blob = %l.name, "applying layer");
        apply_one(source, i + 1, l, &mut applier)?;
    }
    let bytes = applier.bytes_written();
    applier.finish()?;
    Ok(bytes)
}

/// Longest uncompressed layer stream read: all file data allowed, plus 2 KiB of headers and
/// padding per allowed entry. Bounds the time a decompression bomb can take.
pub fn stream_cap(l: Limits) -> u64 {
    l.max_bytes
        .saturating_add(l.max_entries.saturating_mul(2048))
        .saturating_add(64 << 20)
}

/// A reader that fails (rather than ending quietly, as `Take` does) past `left` bytes.
pub struct Capped<R> {
    pub inner: R,
    pub left: u64,
}

impl<R: Read> Read for Capped<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.left = self.left.checked_sub(n as u64).ok_or_else(|| {
            io::Error::other("the stream is longer than the unpack limits allow (ImportOptions)")
        })?;
        Ok(n)
    }
}

fn check_media_type(layer: usize, l: &LayerSpec) -> Result<(), ImageError> {
    let mt = l.media_type.as_str();
    let unsupported = |detail| ImageError::UnsupportedLayer {
        layer,
        name: l.name.clone(),
        media_type: mt.to_string(),
        detail,
    };
    if mt.contains("encrypted") {
        return Err(unsupported(
            "encrypted layers are not supported; decrypt the image first",
        ));
    }
    if !mt.is_empty() && !mt.contains("tar") {
        return Err(unsupported(
            "not a filesystem layer (a tar, tar+gzip or tar+zstd is expected)",
        ));
    }
    Ok(())
}

/// Bytes per chunk handed from the decompressing thread to the applying one.
const CHUNK: usize = 256 << 10;
/// Chunks in flight between the two threads (bounds the memory of a layer in transit).
const CHUNKS_IN_FLIGHT: usize = 16;

/// Reads the decompressed stream that the decompressing thread sends, chunk by chunk.
struct ChunkReader {
    rx: std::sync::mpsc::Receiver<io::Result<Vec<u8>>>,
    chunk: Vec<u8>,
    pos: usize,
}

impl Read for ChunkReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.chunk.len() {
            match self.rx.recv() {
                Ok(Ok(chunk)) => {
                    self.chunk = chunk;
                    self.pos = 0;
                }
                Ok(Err(e)) => return Err(e),
                // The sender is gone after the end of the stream (or a panic, reported at join).
                Err(_) => return Ok(0),
            }
        }
        let n = buf.len().min(self.chunk.len() - self.pos);
        buf[..n].copy_from_slice(&self.chunk[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// What the decompressing thread found: the blob's digest and length read, or why it stopped.
type Decompressed = Result<(String, u64), ImageError>;

/// Reads, hashes and decompresses the blob `r`, sending the plain stream in chunks until it
/// ends, an error occurs (sent too), or the receiver hangs up. Then reads the rest of the blob
/// (after the compressed stream) so its digest covers every byte.
fn decompress_into(
    r: Box<dyn Read + Send>,
    n: usize,
    l: &LayerSpec,
    path: &Path,
    tx: std::sync::mpsc::SyncSender<io::Result<Vec<u8>>>,
) -> Decompressed {
    let corrupt = |detail: String| ImageError::CorruptLayer {
        layer: n,
        name: l.name.clone(),
        detail,
    };
    let mut raw = HashingReader::new(r);
    {
        let mut buf = BufReader::with_capacity(CHUNK, &mut raw);
        let head = buf.fill_buf().ctx("read", path)?;
        let mut decoder: Box<dyn Read + '_> = match sniff(head) {
            Compression::None => Box::new(&mut buf),
            Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(&mut buf)),
            Compression::Zstd => Box::new(
                zstd::stream::read::Decoder::with_buffer(&mut buf)
                    .map_err(|e| corrupt(format!("zstd: {e}")))?,
            ),
            Compression::Xz => {
                return Err(ImageError::UnsupportedLayer {
                    layer: n,
                    name: l.name.clone(),
                    media_type: l.media_type.clone(),
                    detail: "xz-compressed layers are not supported",
                })
            }
        };
        loop {
            let mut chunk = vec![0u8; CHUNK];
            let mut filled = 0;
            let res = loop {
                match decoder.read(&mut chunk[filled..]) {
                    Ok(0) => break Ok(()),
                    Ok(k) => {
                        filled += k;
                        if filled == chunk.len() {
                            break Ok(());
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => break Err(e),
                }
            };
            chunk.truncate(filled);
            let end = filled == 0;
            if !end && tx.send(Ok(chunk)).is_err() {
                // The applying side stopped (it failed, and says why).
                return Err(corrupt("the layer was not read to its end".into()));
            }
            if let Err(e) = res {
                let _ = tx.send(Err(io::Error::new(e.kind(), e.to_string())));
                return Err(corrupt(e.to_string()));
            }
            if end {
                break;
            }
        }
        drop(decoder);
        io::copy(&mut buf, &mut io::sink()).map_err(|e| corrupt(e.to_string()))?;
    }
    Ok(raw.digest_so_far())
}

/// Applies layer `n`: one thread reads, hashes and decompresses the blob while this one
/// parses, applies and hashes the plain tar stream (on two cores, inflating is the longer
/// half, so applying costs little extra time).
fn apply_one(
    source: &Source,
    n: usize,
    l: &LayerSpec,
    applier: &mut Applier,
) -> Result<(), ImageError> {
    let (r, len) = source.open_member(&l.name, "layer")?;
    let path = source.path().join(&l.name);
    let corrupt = |detail: String| ImageError::CorruptLayer {
        layer: n,
        name: l.name.clone(),
        detail,
    };
    let cap = stream_cap(applier.limits());
    let (tx, rx) = std::sync::mpsc::sync_channel(CHUNKS_IN_FLIGHT);
    let (applied, decompressed) = std::thread::scope(|scope| {
        let inflater = std::thread::Builder::new()
            .name(format!("layer-{n}-inflate"))
            .spawn_scoped(scope, || decompress_into(r, n, l, &path, tx))
            .map_err(|e| ImageError::io("start a decompression thread for", &path, e));
        let inflater = match inflater {
            Ok(t) => t,
            Err(e) => return (Err(e), None),
        };
        let applied = (|| {
            let mut plain = HashingReader::new(Capped {
                inner: ChunkReader {
                    rx,
                    chunk: Vec::new(),
                    pos: 0,
                },
                left: cap,
            });
            applier.apply(n, &l.name, &mut plain)?;
            // The tar end marker is not the end of the stream: hash what follows too.
            let (diff, _) = plain
                .finish()
                .map_err(|e| corrupt(format!("reading past the end of the tar: {e}")))?;
            Ok(diff)
            // Dropping the reader here hangs up: a decompressor still sending stops.
        })();
        (applied, Some(inflater.join()))
    });
    let decompressed = match decompressed {
        Some(Ok(d)) => d,
        Some(Err(_)) => Err(corrupt("the decompression thread panicked".into())),
        None => return applied.map(|_| ()),
    };
    // An error of the applying side comes first: it is what stopped the decompressor.
    let diff = applied?;
    let (blob_digest, read) = decompressed?;
    if read != len {
        return Err(corrupt(format!("read {read} of {len} bytes")));
    }
    if let Some(expected) = &l.digest {
        if blob_digest != *expected {
            return Err(ImageError::BlobDigestMismatch {
                name: l.name.clone(),
                expected: expected.clone(),
                actual: blob_digest,
            });
        }
    }
    if let Some(expected) = &l.diff_id {
        if diff != *expected {
            return Err(ImageError::DiffIdMismatch {
                layer: n,
                name: l.name.clone(),
                expected: expected.clone(),
                actual: diff,
            });
        }
    }
    tracing::debug!(layer = n, diff_id = %digest::short(&diff), "layer applied");
    Ok(())
}
