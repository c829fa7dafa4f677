//! The blob store shared by all pulls, and the resumable, verified download into it.
//!
//! A blob is downloaded into a temporary file under `blobs/tmp/`, hashed as it arrives, and
//! renamed to `blobs/sha256/<hex>` only when its size and digest are the descriptor's. A
//! download cut short resumes from where it stopped with a `Range` request (a registry that
//! answers with the whole blob instead restarts it), up to the allowed attempts.

use std::path::{Path, PathBuf};
use std::time::Duration;

use futures::StreamExt as _;
use oci_client::client::BlobResponse;
use oci_client::manifest::OciDescriptor;
use oci_client::Reference;
use sha2::{Digest as _, Sha256};
use tokio::io::{AsyncSeekExt as _, AsyncWriteExt as _};

use super::errors::Ctx;
use super::PullProgress;
use crate::digest;
use crate::error::{ImageError, IoContext};
use crate::oci::Descriptor;

/// Age after which an entry of `blobs/tmp/` is taken for the leftover of a dead pull.
const STALE_AFTER: Duration = Duration::from_secs(24 * 3600);

pub(super) struct BlobStore {
    /// `blobs/sha256/`
    dir: PathBuf,
    /// `blobs/tmp/`
    tmp: PathBuf,
}

impl BlobStore {
    pub(super) fn open(cache_root: &Path) -> Result<Self, ImageError> {
        let blobs = cache_root.join("blobs");
        let store = Self {
            dir: blobs.join("sha256"),
            tmp: blobs.join("tmp"),
        };
        for d in [&store.dir, &store.tmp] {
            std::fs::create_dir_all(d).ctx("create directory", d)?;
        }
        store.sweep();
        Ok(store)
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
