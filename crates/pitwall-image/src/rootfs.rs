//! From a resolved image to a root tree on disk: every layer blob is checked against its
//! digest before any is applied, then each is decompressed (gzip, zstd or plain, told by its
//! magic bytes; the media type only has to name a tar), applied by [`crate::layer`], and its
//! uncompressed stream checked against the config's diff_id. A check that fails after
//! applying still fails the import, and the caller throws the tree away.

use std::io::{self, BufRead, BufReader, Read};
use std::path::Path;

use crate::archive::{sniff, Compression, Source};
use crate::digest::{self, HashingReader};
use crate::error::{ImageError, IoContext};
use crate::layer::{Applier, Limits};
use crate::resolve::{verify_blob, LayerSpec, ResolvedImage};

/// Unpacks all layers of `image` into the (empty) directory `root`. Returns the file data
/// written, in bytes.
pub fn unpack(
    source: &Source,
    image: &ResolvedImage,
    root: &Path,
    limits: Limits,
) -> Result<u64, ImageError> {
    for (i, l) in image.layers.iter().enumerate() {
        check_media_type(i + 1, l)?;
        if let Some(d) = &l.digest {
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

fn apply_one(
    source: &Source,
    n: usize,
    l: &LayerSpec,
    applier: &mut Applier,
) -> Result<(), ImageError> {
    let (r, len) = source.open_member(&l.name, "layer")?;
    let corrupt = |detail: String| ImageError::CorruptLayer {
        layer: n,
        name: l.name.clone(),
        detail,
    };
    let mut raw = HashingReader::new(r);
    let diff = {
        let mut buf = BufReader::with_capacity(256 << 10, &mut raw);
        let head = buf.fill_buf().ctx("read", source.path().join(&l.name))?;
        let decoder: Box<dyn Read + '_> = match sniff(head) {
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
        let mut plain = HashingReader::new(Capped {
            inner: decoder,
            left: stream_cap(applier.limits()),
        });
        applier.apply(n, &l.name, &mut plain)?;
        // The tar end marker is not the end of the stream: hash what follows too.
        let (diff, _) = plain
            .finish()
            .map_err(|e| corrupt(format!("reading past the end of the tar: {e}")))?;
        io::copy(&mut buf, &mut io::sink()).map_err(|e| corrupt(e.to_string()))?;
        diff
    };
    let (blob_digest, read) = raw.digest_so_far();
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
