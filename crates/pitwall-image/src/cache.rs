//! The image cache on disk, and the import that fills it.
//!
//! ```text
//! <root>/images/<digest-hex>/rootfs.erofs  read-only base image (mode 0444; rootfs.ext4
//!                                          when built as ext4, see `BaseFormat`)
//! <root>/images/<digest-hex>/image.json    what was built (digest, size, run config)
//! <root>/refs/<name>-<hash>.json           one file per reference: {reference, digest}
//! <root>/locks/<digest-hex>.lock           held while that digest is being built
//! <root>/tmp/<work>/                       one import's work (ext4 before publish; the staging
//!                                          tree too unless it fits on /dev/shm: see rootfs.rs)
//! <root>/cache.lock                        held briefly around ref changes and deletions
//! <root>/blobs/                            pulled blobs (see `registry`), collected by `gc`
//! ```
//!
//! An image directory appears only by an atomic `rename` of a complete work directory and
//! disappears only by a `rename` into `tmp/` before it is deleted, so a reader sees either a
//! whole image or none. Builds of one digest are serialised by its lock file (the second
//! import waits, then reuses); reference changes and deletions take `cache.lock`. Both are
//! `flock`s, so they hold across processes and are released when a process dies. A work
//! directory is removed when its import ends, on success or error; one left by a killed
//! process is swept by the next [`ImageCache::open`] (its own lock is no longer held).
//!
//! Garbage collection ([`ImageCache::gc`], run after every [`ImageCache::remove`]) deletes
//! what no reference needs: built images no reference names (a grace period spares one an
//! import has just built and is about to name), the pulled blobs no remaining image was built
//! from (`image.json` lists them; an image built before that list existed keeps none, so a
//! later pull downloads them again) unless a pull in progress has pinned them, and work left
//! by dead imports.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use pitwall_core::ImageRef;
use rustix::fs::{flock, FlockOperation};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::archive::Source;
use crate::base::{BaseBuilder, BaseFormat};
use crate::digest;
use crate::error::{ImageError, IoContext};
use crate::layer::Limits;
use crate::oci::Platform;
use crate::resolve::{resolve, Format, ResolvedImage};
use crate::{erofs, ext4};
use crate::{ImageConfig, ImageInfo};

/// How imports behave. `Default` suits a fresh host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImportOptions {
    /// Refuse images whose layers unpack to more file data than this. Default 16 GiB.
    pub max_unpacked_bytes: u64,
    /// Refuse images whose layers hold more entries than this. Default 4 million.
    pub max_entries: u64,
    /// The format of base images built from now on. Default: EROFS.
    pub base_format: BaseFormat,
    /// The `mkfs.ext4` to run for ext4 bases. Default: `mkfs.ext4` from `PATH`.
    pub mkfs_ext4: PathBuf,
    /// The `mkfs.erofs` to run for EROFS bases. Default: `mkfs.erofs` from `PATH`.
    pub mkfs_erofs: PathBuf,
    /// OCI architecture name to pick from multi-platform images, and to require of single
    /// ones. Default: this host's (`amd64` on x86_64, `arm64` on aarch64).
    pub architecture: String,
}

impl Default for ImportOptions {
    fn default() -> Self {
        Self {
            max_unpacked_bytes: 16 << 30,
            max_entries: 4_000_000,
            base_format: BaseFormat::default(),
            mkfs_ext4: ext4::default_mkfs(),
            mkfs_erofs: erofs::default_mkfs(),
            architecture: host_architecture().to_string(),
        }
    }
}

/// The OCI name of the architecture this binary runs on.
pub fn host_architecture() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        other => other,
    }
}

/// What `image.json` holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct ImageRecord {
    digest: String,
    size_bytes: u64,
    unpacked_bytes: u64,
    format: String,
    /// The base image's filesystem; absent (ext4) in records written before it was kept.
    #[serde(default = "BaseFormat::legacy")]
    base_format: BaseFormat,
    os: String,
    architecture: String,
    config: ImageConfig,
    /// Digest of the config blob; absent in records written before it was kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    config_digest: Option<String>,
    /// Digests of the layer blobs as stored (compressed), in order; empty in records written
    /// before they were kept, and for `docker save` layers not named by digest.
    #[serde(default)]
    layers: Vec<String>,
}

/// Unreferenced built images younger than this are left to the import that built them (it
/// names them right after building).
const ORPHAN_GRACE: std::time::Duration = std::time::Duration::from_secs(3600);

/// Everything the cache knows about one built image ([`ImageCache::inspect`]).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct ImageDetails {
    /// The reference asked about, canonical.
    pub reference: String,
    /// Every reference naming the same image, sorted (`reference` among them).
    pub references: Vec<String>,
    pub digest: String,
    pub rootfs: PathBuf,
    /// The base image's filesystem.
    pub base_format: BaseFormat,
    /// Size of the base image file in bytes.
    pub size_bytes: u64,
    /// File data of the unpacked layers, in bytes.
    pub unpacked_bytes: u64,
    /// What it was imported from: `oci-layout` (also pulls) or `docker-save`.
    pub format: String,
    pub os: String,
    pub architecture: String,
    pub config: ImageConfig,
    /// Digest of the config blob, when recorded.
    pub config_digest: Option<String>,
    /// Digests of the layer blobs, in order, when recorded.
    pub layers: Vec<String>,
}

/// What a garbage collection deleted ([`ImageCache::gc`]).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GcReport {
    /// Built images no reference named.
    pub images_removed: u64,
    /// Pulled blobs no image needed.
    pub blobs_removed: u64,
    /// Work directories of dead imports, and trash.
    pub work_removed: u64,
    /// Bytes of file data deleted, all kinds together.
    pub bytes_freed: u64,
}

/// What a file in `refs/` holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct RefRecord {
    reference: String,
    digest: String,
}

/// An exclusive `flock` held until drop (closing the file releases it).
pub(crate) struct Locked {
    _file: File,
}

/// Waits for an exclusive lock on `path`.
pub(crate) fn lock(path: &Path) -> Result<Locked, ImageError> {
    let file = open_lock_file(path)?;
    flock(&file, FlockOperation::LockExclusive)
        .map_err(|e| ImageError::io("lock", path, e.into()))?;
    Ok(Locked { _file: file })
}

/// Takes an exclusive lock on `path` if nobody holds it.
pub(crate) fn try_lock(path: &Path) -> Result<Option<Locked>, ImageError> {
    let file = open_lock_file(path)?;
    match flock(&file, FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => Ok(Some(Locked { _file: file })),
        Err(e) if e == rustix::io::Errno::WOULDBLOCK => Ok(None),
        Err(e) => Err(ImageError::io("lock", path, e.into())),
    }
}

fn open_lock_file(path: &Path) -> Result<File, ImageError> {
    OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(path)
        .ctx("open lock file", path)
}

/// One import's private directory, removed on drop.
struct Work {
    dir: tempfile::TempDir,
    _lock: Locked,
}

/// The cache of built base images and the references that name them.
#[derive(Debug, Clone)]
pub struct ImageCache {
    root: PathBuf,
    options: ImportOptions,
}

impl ImageCache {
    /// Opens (creating if needed) the cache at `root` with default options.
    pub fn open(root: &Path) -> Result<Self, ImageError> {
        Self::open_with(root, ImportOptions::default())
    }

    /// Opens (creating if needed) the cache at `root`, and sweeps work left by imports that
    /// died.
    pub fn open_with(root: &Path, options: ImportOptions) -> Result<Self, ImageError> {
        let cache = Self {
            root: root.to_path_buf(),
            options,
        };
        for d in ["images", "refs", "locks"] {
            fs::create_dir_all(root.join(d)).ctx("create directory", root.join(d))?;
        }
        let tmp = cache.tmp_dir();
        fs::create_dir_all(&tmp).ctx("create directory", &tmp)?;
        // Work directories hold unpacked trees with setuid files: keep others out.
        fs::set_permissions(&tmp, fs::Permissions::from_mode(0o700))
            .ctx("set the mode of", &tmp)?;
        cache.sweep()?;
        Ok(cache)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn options(&self) -> &ImportOptions {
        &self.options
    }

    fn tmp_dir(&self) -> PathBuf {
        self.root.join("tmp")
    }

    fn image_dir(&self, hex: &str) -> PathBuf {
        self.root.join("images").join(hex)
    }

    fn global(&self) -> Result<Locked, ImageError> {
        lock(&self.root.join("cache.lock"))
    }

    fn sweep(&self) -> Result<(), ImageError> {
        let _g = self.global()?;
        self.sweep_tmp().map(drop)
    }

    /// Removes the entries of `tmp/` whose lock nobody holds (work of dead imports, trash);
    /// returns how many and their bytes. The caller holds `cache.lock`.
    fn sweep_tmp(&self) -> Result<(u64, u64), ImageError> {
        let tmp = self.tmp_dir();
        let (mut count, mut bytes) = (0, 0);
        for e in fs::read_dir(&tmp).ctx("read directory", &tmp)? {
            let path = e.ctx("read directory", &tmp)?.path();
            let stale = match fs::symlink_metadata(path.join(".lock")) {
                Ok(_) => try_lock(&path.join(".lock"))?.is_some(),
                Err(_) => true,
            };
            if stale {
                tracing::info!(path = %path.display(), "removing work left by an interrupted import");
                bytes += disk_usage(&path);
                count += 1;
                remove_any(&path);
            }
        }
        Ok((count, bytes))
    }

    fn new_work(&self) -> Result<Work, ImageError> {
        let _g = self.global()?;
        let tmp = self.tmp_dir();
        let dir = tempfile::Builder::new()
            .prefix("import-")
            .tempdir_in(&tmp)
            .ctx("create a work directory in", &tmp)?;
        let lock = lock(&dir.path().join(".lock"))?;
        Ok(Work { dir, _lock: lock })
    }

    /// Imports the image `reference` names from `source`: an OCI image layout directory, an
    /// OCI layout tar (`oci-archive`), or a `docker save` tar (either may be gzip- or
    /// zstd-compressed). When the archive holds several images, the one whose name matches
    /// `reference` is taken; an archive with exactly one image is taken whatever its name.
    /// Builds the ext4 base image unless one with the same digest is cached, and registers
    /// `reference` for it (replacing what it named before).
    pub fn import(&self, source: &Path, reference: &ImageRef) -> Result<ImageInfo, ImageError> {
        self.import_checked(source, reference, crate::rootfs::BlobCheck::BeforeApplying)
    }

    /// [`Self::import`] of a layout whose layer blobs were verified as they were stored (a
    /// registry pull's blob store): each blob's digest is checked while it is applied (a
    /// mismatch still fails the import and the tree is thrown away) instead of in a separate
    /// pass that reads every blob once more.
    pub(crate) fn import_stored(
        &self,
        source: &Path,
        reference: &ImageRef,
    ) -> Result<ImageInfo, ImageError> {
        self.import_checked(source, reference, crate::rootfs::BlobCheck::WhileApplying)
    }

    fn import_checked(
        &self,
        source: &Path,
        reference: &ImageRef,
        check: crate::rootfs::BlobCheck,
    ) -> Result<ImageInfo, ImageError> {
        let canonical = reference.to_string();
        tracing::info!(image = %canonical, source = %source.display(), "importing image");
        let work = self.new_work()?;
        let limits = self.limits();
        // A compressed archive is mostly layer blobs: allow what their streams may be.
        let src = Source::open(source, work.dir.path(), crate::rootfs::stream_cap(limits))?;
        let resolved = resolve(&src, reference, &self.wanted_platform())?;
        let hex = digest::sha256_hex(&resolved.digest)
            .ok_or_else(|| {
                ImageError::InvalidInput(format!(
                    "image digest {:?} is not sha256",
                    resolved.digest
                ))
            })?
            .to_string();
        for _ in 0..3 {
            self.ensure_built(&src, &resolved, &hex, &work, check)?;
            let _g = self.global()?;
            // A concurrent `remove` may have deleted it between build and registration.
            if let Some(record) = self.read_record(&hex)? {
                self.write_ref(&canonical, &record.digest)?;
                tracing::info!(image = %canonical, digest = %record.digest, size_bytes = record.size_bytes, "image imported");
                return Ok(self.info(canonical, &hex, record));
            }
        }
        Err(ImageError::CacheCorrupt {
            path: self.image_dir(&hex),
            detail: "it disappeared three times right after being built (concurrent removals?)"
                .into(),
        })
    }

    fn limits(&self) -> Limits {
        Limits {
            max_bytes: self.options.max_unpacked_bytes,
            max_entries: self.options.max_entries,
        }
    }

    fn base_builder(&self) -> BaseBuilder {
        let format = self.options.base_format;
        let mkfs = match format {
            BaseFormat::Erofs => self.options.mkfs_erofs.clone(),
            BaseFormat::Ext4 => self.options.mkfs_ext4.clone(),
        };
        BaseBuilder { format, mkfs }
    }

    fn wanted_platform(&self) -> Platform {
        Platform {
            architecture: self.options.architecture.clone(),
            os: "linux".into(),
            variant: None,
        }
    }

    fn ensure_built(
        &self,
        src: &Source,
        image: &ResolvedImage,
        hex: &str,
        work: &Work,
        check: crate::rootfs::BlobCheck,
    ) -> Result<(), ImageError> {
        let _build = lock(&self.root.join("locks").join(format!("{hex}.lock")))?;
        match self.read_record(hex) {
            Ok(Some(_)) => {
                tracing::info!(digest = %image.digest, "image already built; reusing it");
                return Ok(());
            }
            Ok(None) => {}
            Err(e @ ImageError::CacheCorrupt { .. }) => {
                tracing::warn!(digest = %image.digest, error = %e, "rebuilding a damaged image");
            }
            Err(e) => return Err(e),
        }
        let out = work.dir.path().join("out");
        remove_any(&out);
        fs::create_dir(&out).ctx("create directory", &out)?;
        let base = self.base_builder();
        let rootfs = out.join(base.format.file_name());
        // The staging tree: on a tmpfs when the image fits, else in the work directory.
        let (unpacked_bytes, size_bytes) = crate::rootfs::unpack_to_base(
            src,
            image,
            work.dir.path(),
            self.limits(),
            check,
            &base,
            &rootfs,
        )?;
        fs::set_permissions(&rootfs, fs::Permissions::from_mode(0o444))
            .ctx("set the mode of", &rootfs)?;
        File::open(&rootfs)
            .and_then(|f| f.sync_all())
            .ctx("sync", &rootfs)?;
        let record = ImageRecord {
            digest: image.digest.clone(),
            size_bytes,
            unpacked_bytes,
            format: match image.format {
                Format::OciLayout => "oci-layout",
                Format::DockerSave => "docker-save",
            }
            .into(),
            base_format: base.format,
            os: image.platform.os.clone(),
            architecture: image.platform.architecture.clone(),
            config: image.config.clone(),
            config_digest: config_digest_of(src, image),
            layers: image
                .layers
                .iter()
                .filter_map(|l| l.digest.clone())
                .collect(),
        };
        write_json(&out.join("image.json"), &record)?;
        let dest = self.image_dir(hex);
        if dest.exists() {
            // Only a damaged leftover can be here (a whole image has image.json): move it away.
            remove_any(&self.trash(&dest)?);
        }
        fs::rename(&out, &dest).ctx("publish", &dest)?;
        sync_dir(&self.root.join("images"));
        tracing::info!(digest = %image.digest, size_bytes, unpacked_bytes, "built base image");
        Ok(())
    }

    fn read_record(&self, hex: &str) -> Result<Option<ImageRecord>, ImageError> {
        let dir = self.image_dir(hex);
        let path = dir.join("image.json");
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(ImageError::io("read", path, e)),
        };
        let record: ImageRecord =
            serde_json::from_slice(&bytes).map_err(|e| ImageError::CacheCorrupt {
                path: path.clone(),
                detail: e.to_string(),
            })?;
        let rootfs = record.base_format.file_name();
        if !dir.join(rootfs).is_file() {
            return Err(ImageError::CacheCorrupt {
                path: dir,
                detail: format!("{rootfs} is missing"),
            });
        }
        Ok(Some(record))
    }

    fn info(&self, reference: String, hex: &str, record: ImageRecord) -> ImageInfo {
        ImageInfo {
            reference,
            digest: record.digest,
            rootfs: self.image_dir(hex).join(record.base_format.file_name()),
            size_bytes: record.size_bytes,
            config: record.config,
        }
    }

    fn ref_path(&self, canonical: &str) -> PathBuf {
        let readable: String = canonical
            .chars()
            .take(100)
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        let hash = hex::encode(Sha256::digest(canonical.as_bytes()));
        self.root
            .join("refs")
            .join(format!("{readable}-{}.json", &hash[..16]))
    }

    fn write_ref(&self, canonical: &str, digest: &str) -> Result<(), ImageError> {
        write_json(
            &self.ref_path(canonical),
            &RefRecord {
                reference: canonical.to_string(),
                digest: digest.to_string(),
            },
        )?;
        sync_dir(&self.root.join("refs"));
        Ok(())
    }

    fn read_ref(&self, path: &Path) -> Result<Option<RefRecord>, ImageError> {
        match fs::read(path) {
            Ok(b) => serde_json::from_slice(&b)
                .map(Some)
                .map_err(|e| ImageError::CacheCorrupt {
                    path: path.to_path_buf(),
                    detail: e.to_string(),
                }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(ImageError::io("read", path, e)),
        }
    }

    fn all_refs(&self) -> Result<Vec<(PathBuf, RefRecord)>, ImageError> {
        let dir = self.root.join("refs");
        let mut out = Vec::new();
        for e in fs::read_dir(&dir).ctx("read directory", &dir)? {
            let path = e.ctx("read directory", &dir)?.path();
            if path.extension().is_some_and(|x| x == "json") {
                if let Some(r) = self.read_ref(&path)? {
                    out.push((path, r));
                }
            }
        }
        out.sort_by(|a, b| a.1.reference.cmp(&b.1.reference));
        Ok(out)
    }

    fn info_for(&self, r: RefRecord) -> Result<Option<ImageInfo>, ImageError> {
        let Some(hex) = digest::sha256_hex(&r.digest).map(str::to_string) else {
            return Err(ImageError::CacheCorrupt {
                path: self.ref_path(&r.reference),
                detail: format!("digest {:?} is not sha256", r.digest),
            });
        };
        match self.read_record(&hex)? {
            Some(record) => Ok(Some(self.info(r.reference, &hex, record))),
            None => {
                tracing::warn!(image = %r.reference, digest = %r.digest, "reference names an image that is not built; import it again");
                Ok(None)
            }
        }
    }

    /// The image `reference` names, if it is imported.
    pub fn get(&self, reference: &ImageRef) -> Result<Option<ImageInfo>, ImageError> {
        let canonical = reference.to_string();
        match self.read_ref(&self.ref_path(&canonical))? {
            Some(r) if r.reference == canonical => self.info_for(r),
            _ => Ok(None),
        }
    }

    /// Every imported reference, sorted by reference.
    pub fn list(&self) -> Result<Vec<ImageInfo>, ImageError> {
        let mut out = Vec::new();
        for (_, r) in self.all_refs()? {
            if let Some(info) = self.info_for(r)? {
                out.push(info);
            }
        }
        Ok(out)
    }

    /// Unregisters `reference`; deletes the built image once no reference names its digest.
    /// Returns whether the reference existed. A VM that has the image open keeps reading it
    /// (the file is unlinked, not overwritten).
    pub fn remove(&self, reference: &ImageRef) -> Result<bool, ImageError> {
        let canonical = reference.to_string();
        let path = self.ref_path(&canonical);
        let trash = {
            let _g = self.global()?;
            let Some(r) = self.read_ref(&path)?.filter(|r| r.reference == canonical) else {
                return Ok(false);
            };
            fs::remove_file(&path).ctx("remove", &path)?;
            sync_dir(&self.root.join("refs"));
            let still_named = self.all_refs()?.iter().any(|(_, o)| o.digest == r.digest);
            tracing::info!(image = %canonical, digest = %r.digest, "image reference removed");
            match digest::sha256_hex(&r.digest) {
                Some(hex) if !still_named && self.image_dir(hex).exists() => {
                    tracing::info!(digest = %r.digest, "no reference left; deleting base image");
                    Some(self.trash(&self.image_dir(hex))?)
                }
                _ => None,
            }
        };
        if let Some(t) = trash {
            remove_any(&t);
        }
        // The reference is gone whatever the collection finds; a failure is only logged.
        match self.gc() {
            Ok(report) => {
                tracing::debug!(image = %canonical, ?report, "garbage collected after remove")
            }
            Err(e) => {
                tracing::warn!(image = %canonical, error = %e, "garbage collection after remove failed")
            }
        }
        Ok(true)
    }

    /// Everything the cache knows about the image `reference` names: its record, the blobs it
    /// was built from (when recorded) and every reference naming it. `None` when `reference`
    /// is not imported.
    pub fn inspect(&self, reference: &ImageRef) -> Result<Option<ImageDetails>, ImageError> {
        let canonical = reference.to_string();
        let Some(r) = self
            .read_ref(&self.ref_path(&canonical))?
            .filter(|r| r.reference == canonical)
        else {
            return Ok(None);
        };
        let Some(hex) = digest::sha256_hex(&r.digest).map(str::to_string) else {
            return Err(ImageError::CacheCorrupt {
                path: self.ref_path(&canonical),
                detail: format!("digest {:?} is not sha256", r.digest),
            });
        };
        let Some(record) = self.read_record(&hex)? else {
            return Ok(None);
        };
        let references = self
            .all_refs()?
            .into_iter()
            .filter(|(_, o)| o.digest == r.digest)
            .map(|(_, o)| o.reference)
            .collect();
        Ok(Some(ImageDetails {
            reference: canonical,
            references,
            digest: record.digest,
            rootfs: self.image_dir(&hex).join(record.base_format.file_name()),
            base_format: record.base_format,
            size_bytes: record.size_bytes,
            unpacked_bytes: record.unpacked_bytes,
            format: record.format,
            os: record.os,
            architecture: record.architecture,
            config: record.config,
            config_digest: record.config_digest,
            layers: record.layers,
        }))
    }

    /// Deletes what no reference needs: built images no reference names (unless built in
    /// the last hour: an import names what it built right after), pulled blobs that no
    /// remaining image was built from and no pull in progress has pinned, and work left in
    /// `tmp/` by imports that died. Safe beside imports, pulls and removals in this and other
    /// processes. [`ImageCache::remove`] runs it.
    pub fn gc(&self) -> Result<GcReport, ImageError> {
        self.gc_with(ORPHAN_GRACE)
    }

    fn gc_with(&self, grace: std::time::Duration) -> Result<GcReport, ImageError> {
        let mut report = GcReport::default();
        let mut needed = std::collections::HashSet::new();
        let mut trash = Vec::new();
        {
            let _g = self.global()?;
            let (work, bytes) = self.sweep_tmp()?;
            report.work_removed = work;
            report.bytes_freed += bytes;
            let named: std::collections::HashSet<String> = self
                .all_refs()?
                .into_iter()
                .map(|(_, r)| r.digest)
                .collect();
            let images = self.root.join("images");
            for e in fs::read_dir(&images).ctx("read directory", &images)? {
                let dir = e.ctx("read directory", &images)?.path();
                let Some(hex) = dir.file_name().and_then(|n| n.to_str()).map(str::to_string) else {
                    continue;
                };
                let record = match self.read_record(&hex) {
                    Ok(r) => r,
                    Err(e) => {
                        tracing::warn!(path = %dir.display(), error = %e, "skipping a damaged image in garbage collection");
                        continue;
                    }
                };
                let digest = format!("{}{hex}", digest::SHA256_PREFIX);
                let young = fs::metadata(&dir)
                    .and_then(|m| m.modified())
                    .ok()
                    .and_then(|t| t.elapsed().ok())
                    .is_none_or(|age| age < grace);
                if named.contains(&digest) || young {
                    if let Some(record) = record {
                        needed.insert(record.digest);
                        needed.extend(record.config_digest);
                        needed.extend(record.layers);
                    }
                    continue;
                }
                // A build of this digest in progress is about to replace it: leave it.
                let Some(_build) = try_lock(&self.root.join("locks").join(format!("{hex}.lock")))?
                else {
                    continue;
                };
                tracing::info!(digest = %digest, "no reference names this image; deleting it");
                report.images_removed += 1;
                report.bytes_freed += disk_usage(&dir);
                trash.push(self.trash(&dir)?);
            }
        }
        for t in &trash {
            remove_any(t);
        }
        let (blobs, bytes) = crate::registry::blobs::collect(&self.root, &needed)?;
        report.blobs_removed = blobs;
        report.bytes_freed += bytes;
        if report != GcReport::default() {
            tracing::info!(
                images_removed = report.images_removed,
                blobs_removed = report.blobs_removed,
                work_removed = report.work_removed,
                bytes_freed = report.bytes_freed,
                "garbage collected the image cache"
            );
        }
        Ok(report)
    }

    /// Moves `path` into `tmp/` (atomically out of sight) and returns where it went.
    fn trash(&self, path: &Path) -> Result<PathBuf, ImageError> {
        let tmp = self.tmp_dir();
        let name = format!(
            "trash-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0)
        );
        let dest = tmp.join(name);
        fs::rename(path, &dest).ctx("move to trash", path)?;
        Ok(dest)
    }
}

/// The digest of the config blob of `image`: the docker image ID of a `docker save` archive,
/// else read from its (verified) manifest. `None` when the manifest cannot be read again.
fn config_digest_of(src: &Source, image: &ResolvedImage) -> Option<String> {
    match image.format {
        Format::DockerSave => Some(image.digest.clone()),
        Format::OciLayout => {
            let hex = digest::sha256_hex(&image.digest)?;
            let bytes = src
                .read_document(&format!("blobs/sha256/{hex}"), "manifest")
                .ok()?;
            let m: crate::oci::Manifest = serde_json::from_slice(&bytes).ok()?;
            Some(m.config.digest)
        }
    }
}

/// Bytes of file data under `path` (a file or a tree), not following symlinks.
fn disk_usage(path: &Path) -> u64 {
    match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => fs::read_dir(path)
            .map(|es| es.flatten().map(|e| disk_usage(&e.path())).sum())
            .unwrap_or(0),
        Ok(m) => m.len(),
        Err(_) => 0,
    }
}

/// Removes a file or directory tree; failures (it may be gone already) are only logged.
fn remove_any(path: &Path) {
    let res = match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(_) => return,
    };
    if let Err(e) = res {
        tracing::warn!(path = %path.display(), error = %e, "could not remove");
    }
}

/// Writes JSON to a temporary name beside `path`, syncs, and renames over it.
fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<(), ImageError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp = tempfile::NamedTempFile::new_in(dir).ctx("create a file in", dir)?;
    let bytes = serde_json::to_vec_pretty(value)
        .map_err(|e| ImageError::io("serialise", path, e.into()))?;
    tmp.write_all(&bytes).ctx("write", path)?;
    tmp.as_file().sync_all().ctx("sync", path)?;
    tmp.persist(path)
        .map_err(|e| ImageError::io("write", path, e.error))?;
    Ok(())
}

fn sync_dir(dir: &Path) {
    if let Err(e) = File::open(dir).and_then(|f| f.sync_all()) {
        tracing::debug!(dir = %dir.display(), error = %e, "could not sync directory");
    }
}

#[cfg(test)]
mod tests;
