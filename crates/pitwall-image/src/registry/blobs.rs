//! The blob store shared by all pulls, and the resumable, verified download into it.
//!
//! A blob is downloaded into a temporary file under `blobs/tmp/`, hashed as it arrives, and
//! renamed to `blobs/sha256/<hex>` only when its size and digest are the descriptor's. A
//! download cut short resumes from where it stopped with a `Range` request (a registry that
//! answers with the whole blob instead restarts it), up to the allowed attempts.
//!
//! Blobs are a download cache: [`collect`] (run by `ImageCache::gc`) deletes those no built
//! image needs. A pull must not lose a blob between its download and the end of its import
//! (when `image.json` names it), so it pins each blob before looking for it: the digest goes
//! into the pull's pin file under `blobs/pins/`, which the pull holds an exclusive `flock` on
//! until its [`BlobStore`] is dropped. Pinning and collecting both take `blobs/gc.lock`, so a
//! collection either saw the pin or finished before the pull looked for the blob (and
//! downloads it again). A pin file nobody holds a lock on is a dead pull's, and is removed.
//!
//! ```text
//! <cache root>/blobs/sha256/<hex>    verified blobs
//! <cache root>/blobs/tmp/            downloads in flight, layouts being imported
//! <cache root>/blobs/pins/pin-*      one per pull in progress: the digests it needs, one a line
//! <cache root>/blobs/gc.lock         held while pinning and while collecting
//! ```

use std::collections::HashSet;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use futures::StreamExt as _;
use oci_client::client::BlobResponse;
use oci_client::manifest::OciDescriptor;
use oci_client::Reference;
use sha2::{Digest as _, Sha256};
use tokio::io::{AsyncSeekExt as _, AsyncWriteExt as _};

use super::errors::Ctx;
use super::PullProgress;
use crate::cache::{lock, try_lock};
use crate::digest;
use crate::error::{ImageError, IoContext};
use crate::oci::Descriptor;

/// Age after which an entry of `blobs/tmp/` is taken for the leftover of a dead pull.
const STALE_AFTER: Duration = Duration::from_secs(24 * 3600);

/// The blob store as one pull uses it: blobs it fetches stay pinned until it is dropped.
pub(crate) struct BlobStore {
    /// `blobs/sha256/`
    dir: PathBuf,
    /// `blobs/tmp/`
    tmp: PathBuf,
    /// `blobs/pins/`
    pins: PathBuf,
    /// `blobs/gc.lock`
    gc_lock: PathBuf,
    /// This pull's pin file (locked), created by the first [`BlobStore::pin`]; deleted on
    /// drop.
    pin: Mutex<Option<tempfile::NamedTempFile>>,
}

impl BlobStore {
    pub(crate) fn open(cache_root: &Path) -> Result<Self, ImageError> {
        let blobs = cache_root.join("blobs");
        let store = Self {
            dir: blobs.join("sha256"),
            tmp: blobs.join("tmp"),
            pins: blobs.join("pins"),
            gc_lock: blobs.join("gc.lock"),
            pin: Mutex::new(None),
        };
        for d in [&store.dir, &store.tmp, &store.pins] {
            std::fs::create_dir_all(d).ctx("create directory", d)?;
        }
        store.sweep();
        Ok(store)
    }

    /// Keeps the blob `digest` from garbage collection until this store is dropped. Call it
    /// before looking for the blob: a collection running now either sees the pin or has
    /// finished deleting.
    pub(crate) fn pin(&self, digest: &str) -> Result<(), ImageError> {
        let _gc = lock(&self.gc_lock)?;
        let mut pin = self.pin.lock().unwrap_or_else(|e| e.into_inner());
        if pin.is_none() {
            let file = tempfile::Builder::new()
                .prefix("pin-")
                .tempfile_in(&self.pins)
                .ctx("create a pin file in", &self.pins)?;
            // Nobody else can hold it: collections (the only other lockers) wait on gc.lock.
            rustix::fs::flock(file.as_file(), rustix::fs::FlockOperation::LockExclusive)
                .map_err(|e| ImageError::io("lock", file.path(), e.into()))?;
            *pin = Some(file);
        }
        if let Some(file) = pin.as_mut() {
            writeln!(file.as_file_mut(), "{digest}").ctx("write", file.path())?;
        }
        Ok(())
    }

    /// Removes downloads and layouts left in `tmp/` by pulls that died: anything untouched
    /// for a day (no live pull leaves a file that long without writing to it or finishing).
    fn sweep(&self) {
        let Ok(entries) = std::fs::read_dir(&self.tmp) else {
            return;
        };
        for e in entries.flatten() {
            let stale = e
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age > STALE_AFTER);
            if stale {
                let path = e.path();
                tracing::info!(path = %path.display(), "removing work left by an interrupted pull");
                let _ = std::fs::remove_dir_all(&path).or_else(|_| std::fs::remove_file(&path));
            }
        }
    }

    fn path(&self, digest: &str) -> Result<PathBuf, ImageError> {
        digest::sha256_hex(digest)
            .map(|hex| self.dir.join(hex))
            .ok_or_else(|| {
                ImageError::InvalidInput(format!(
                    "blob digest {digest:?} is not sha256:<64 hex digits>; only sha256 images can be pulled"
                ))
            })
    }

    /// A fresh directory for one layout being assembled, removed on drop.
    pub(super) fn work_dir(&self) -> Result<tempfile::TempDir, ImageError> {
        let dir = tempfile::Builder::new()
            .prefix("layout-")
            .tempdir_in(&self.tmp)
            .ctx("create a work directory in", &self.tmp)?;
        let blobs = dir.path().join("blobs").join("sha256");
        std::fs::create_dir_all(&blobs).ctx("create directory", &blobs)?;
        let marker = dir.path().join("oci-layout");
        std::fs::write(&marker, br#"{"imageLayoutVersion":"1.0.0"}"#).ctx("write", &marker)?;
        Ok(dir)
    }

    /// Hard-links the stored blob of `d` into `blobs_dir`.
    pub(super) fn link_into(&self, d: &Descriptor, blobs_dir: &Path) -> Result<(), ImageError> {
        let from = self.path(&d.digest)?;
        let to = blobs_dir.join(from.file_name().unwrap_or_default());
        match std::fs::hard_link(&from, &to) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
            Err(e) => Err(ImageError::io("hard-link", to, e)),
        }
    }

    /// Makes sure the blob of `d` is in the store: there already (same size), or downloaded
    /// and verified.
    pub(super) async fn fetch(
        &self,
        client: &oci_client::Client,
        image: &Reference,
        d: &Descriptor,
        attempts: u32,
        ctx: &Ctx,
        progress: &(dyn Fn(PullProgress) + Send + Sync),
    ) -> Result<(), ImageError> {
        let dest = self.path(&d.digest)?;
        self.pin(&d.digest)?;
        if let Ok(meta) = std::fs::metadata(&dest) {
            if meta.len() == d.size {
                tracing::debug!(digest = %d.digest, "blob already stored");
                progress(PullProgress::Present {
                    digest: d.digest.clone(),
                    bytes_total: d.size,
                });
                return Ok(());
            }
            tracing::warn!(digest = %d.digest, path = %dest.display(), "stored blob has the wrong size; downloading it again");
        }
        let tmp = tempfile::Builder::new()
            .prefix(".partial-")
            .tempfile_in(&self.tmp)
            .ctx("create a download file in", &self.tmp)?;
        let mut file = tokio::fs::File::from_std(tmp.reopen().ctx("open", tmp.path())?);
        let desc = OciDescriptor {
            media_type: d.media_type.clone(),
            digest: d.digest.clone(),
            size: i64::try_from(d.size).unwrap_or(i64::MAX),
            ..Default::default()
        };
        let mut hasher = Sha256::new();
        let mut done: u64 = 0;
        let mut last_error: Option<ImageError> = None;
        progress(PullProgress::Downloading {
            digest: d.digest.clone(),
            bytes_done: 0,
            bytes_total: d.size,
        });
        for attempt in 1..=attempts {
            if attempt > 1 {
                tracing::info!(digest = %d.digest, attempt, bytes_done = done, error = ?last_error.as_ref().map(ToString::to_string), "retrying blob download");
                tokio::time::sleep(Duration::from_millis(250 * u64::from(attempt - 1))).await;
            }
            let response = match client
                .pull_blob_stream_partial(image, &desc, done, None)
                .await
            {
                Ok(r) => r,
                Err(e) => {
                    let e = ctx.map(e);
                    if !super::errors::retryable(&e) {
                        return Err(e);
                    }
                    last_error = Some(e);
                    continue;
                }
            };
            let mut stream = match response {
                BlobResponse::Full(s) => {
                    if done > 0 {
                        // No range support: start over.
                        file.set_len(0).await.ctx("truncate", tmp.path())?;
                        file.seek(std::io::SeekFrom::Start(0))
                            .await
                            .ctx("seek in", tmp.path())?;
                        hasher = Sha256::new();
                        done = 0;
                    }
                    s.stream
                }
                BlobResponse::Partial(s) => s.stream,
            };
            while let Some(chunk) = stream.next().await {
                match chunk {
                    Ok(bytes) => {
                        file.write_all(&bytes).await.ctx("write", tmp.path())?;
                        hasher.update(&bytes);
                        done += bytes.len() as u64;
                        progress(PullProgress::Downloading {
                            digest: d.digest.clone(),
                            bytes_done: done,
                            bytes_total: d.size,
                        });
                        if done > d.size {
                            break;
                        }
                    }
                    // oci-client's own check of a whole blob ends the stream with an
                    // error; the check below names the blob and what it got.
                    Err(_) if done >= d.size => break,
                    Err(e) => {
                        last_error = Some(ImageError::Registry {
                            reference: ctx.reference.clone(),
                            registry: ctx.registry.clone(),
                            detail: format!("download of blob {} cut off: {e}", d.digest),
                        });
                        break;
                    }
                }
            }
            if done >= d.size {
                break;
            }
            if last_error.is_none() {
                last_error = Some(ImageError::Registry {
                    reference: ctx.reference.clone(),
                    registry: ctx.registry.clone(),
                    detail: format!(
                        "download of blob {} ended after {done} of {} bytes",
                        d.digest, d.size
                    ),
                });
            }
        }
        if done < d.size {
            return Err(last_error.unwrap_or_else(|| ImageError::Registry {
                reference: ctx.reference.clone(),
                registry: ctx.registry.clone(),
                detail: format!("blob {} could not be downloaded", d.digest),
            }));
        }
        let what = format!("blob {} of {}", d.digest, ctx.reference);
        if done != d.size {
            return Err(ImageError::RegistryDigestMismatch {
                what,
                registry: ctx.registry.clone(),
                expected: format!("{} bytes", d.size),
                actual: format!("more than {} bytes", d.size),
            });
        }
        let actual = format!(
            "{}{}",
            digest::SHA256_PREFIX,
            hex::encode(hasher.finalize())
        );
        if actual != d.digest {
            return Err(ImageError::RegistryDigestMismatch {
                what,
                registry: ctx.registry.clone(),
                expected: d.digest.clone(),
                actual,
            });
        }
        file.flush().await.ctx("write", tmp.path())?;
        file.sync_all().await.ctx("write", tmp.path())?;
        drop(file);
        tmp.persist(&dest)
            .map_err(|e| ImageError::io("store blob", &dest, e.error))?;
        tracing::debug!(digest = %d.digest, bytes = d.size, "blob downloaded and verified");
        Ok(())
    }
}

/// Deletes the stored blobs of the cache at `cache_root` that are neither in `needed` nor
/// pinned by a pull in progress, and the pin files of pulls that died. Returns how many blobs
/// were deleted and their bytes.
pub(crate) fn collect(
    cache_root: &Path,
    needed: &HashSet<String>,
) -> Result<(u64, u64), ImageError> {
    let store = BlobStore::open(cache_root)?;
    let _gc = lock(&store.gc_lock)?;
    let mut keep: HashSet<String> = needed.clone();
    for e in std::fs::read_dir(&store.pins).ctx("read directory", &store.pins)? {
        let path = e.ctx("read directory", &store.pins)?.path();
        if try_lock(&path)?.is_some() {
            tracing::debug!(path = %path.display(), "removing the pin file of a pull that died");
            let _ = std::fs::remove_file(&path);
            continue;
        }
        match std::fs::read_to_string(&path) {
            Ok(text) => keep.extend(text.lines().map(str::to_string)),
            // Its pull finished and removed it meanwhile.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(ImageError::io("read", path, e)),
        }
    }
    let (mut count, mut bytes) = (0, 0);
    for e in std::fs::read_dir(&store.dir).ctx("read directory", &store.dir)? {
        let e = e.ctx("read directory", &store.dir)?;
        let name = e.file_name();
        let Some(hex) = name.to_str() else { continue };
        if keep.contains(&format!("{}{hex}", digest::SHA256_PREFIX)) {
            continue;
        }
        let path = e.path();
        let len = e.metadata().map(|m| m.len()).unwrap_or(0);
        match std::fs::remove_file(&path) {
            Ok(()) => {
                tracing::debug!(path = %path.display(), bytes = len, "deleted a blob no image needs");
                count += 1;
                bytes += len;
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(ImageError::io("remove", path, e)),
        }
    }
    Ok((count, bytes))
}
