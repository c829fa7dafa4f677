//! Pitwall's images on a host: import of an OCI image layout (directory or tar) or a
//! `docker save` archive, safe application of layers into a root tree, and the read-only
//! base image built from it (EROFS by default, or ext4), cached by manifest digest; and pulls from OCI registries
//! ([`registry`]), which fetch and verify blobs and then take the import path.
//!
//! This code reads hostile input: no archive entry may write outside the root it is applied
//! to (see [`layer`](crate::layer) for the rules). What it must not do: boot anything, talk
//! to the bus or the store. The API is blocking (async callers run it in `spawn_blocking`),
//! except [`registry::pull`], which is async.
//!
//! Modules: `archive` (reading sources), `resolve` (index → manifest → config, selection by
//! name and platform, digest checks), `layer` (safe apply with whiteouts), `rootfs` (layers
//! in order, decompression, diff_id checks), `base` (the base format), `erofs` (`mkfs.erofs`,
//! the volume label), `ext4` (`mkfs.ext4 -d`), `cache` (the on-disk
//! cache, locking, references), [`build`] (writing OCI layouts, for tests and demos),
//! [`registry`] (pulls from OCI registries into the cache; the one async part).
#![forbid(unsafe_code)]

mod archive;
mod base;
pub mod build;
mod cache;
mod digest;
mod erofs;
mod error;
mod ext4;
mod layer;
mod oci;
pub mod registry;
mod resolve;
mod rootfs;
#[cfg(test)]
mod testutil;

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

pub use base::{BaseFormat, BASE_LABEL};
pub use cache::{host_architecture, GcReport, ImageCache, ImageDetails, ImportOptions};
pub use error::ImageError;

/// What separates layers in the input of [`fuzz_apply_layer`].
#[doc(hidden)]
pub const FUZZ_LAYER_SEPARATOR: &[u8] = b"--PITWALL-NEXT-LAYER--";

/// The entry point of the fuzz target (`fuzz/` at the workspace root) and of the test that
/// replays its seeds; not for other use. `input` holds up to four layers separated by
/// [`FUZZ_LAYER_SEPARATOR`], each a tar stream, plain, gzip or zstd (told by its magic
/// bytes), applied in order into the existing directory `root` as an import applies layers,
/// with limits small enough for many runs a second (8 MiB of file data, 2048 entries, 24 MiB
/// of decompressed stream per layer).
#[doc(hidden)]
pub fn fuzz_apply_layer(input: &[u8], root: &std::path::Path) -> Result<(), ImageError> {
    use std::io::Read;
    let limits = layer::Limits {
        max_bytes: 8 << 20,
        max_entries: 2048,
    };
    let mut layers = Vec::new();
    let mut rest = input;
    while layers.len() < 3 {
        let Some(at) = rest
            .windows(FUZZ_LAYER_SEPARATOR.len())
            .position(|w| w == FUZZ_LAYER_SEPARATOR)
        else {
            break;
        };
        layers.push(&rest[..at]);
        rest = &rest[at + FUZZ_LAYER_SEPARATOR.len()..];
    }
    layers.push(rest);
    let mut applier = layer::Applier::new(root, limits);
    for (i, bytes) in layers.into_iter().enumerate() {
        let corrupt = |e: std::io::Error| ImageError::CorruptLayer {
            layer: i + 1,
            name: "fuzz".into(),
            detail: e.to_string(),
        };
        let decoder: Box<dyn Read + '_> = match archive::sniff(bytes) {
            archive::Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(bytes)),
            archive::Compression::Zstd => {
                Box::new(zstd::stream::read::Decoder::new(bytes).map_err(corrupt)?)
            }
            archive::Compression::None | archive::Compression::Xz => Box::new(bytes),
        };
        let capped = rootfs::Capped {
            inner: decoder,
            left: 24 << 20,
        };
        applier.apply(i + 1, "fuzz", capped)?;
    }
    applier.finish()
}

/// The run configuration of an image: the `config` object of its OCI image configuration
/// (`Entrypoint`, `Cmd`, `Env`, `WorkingDir`, `User`, the keys of `ExposedPorts`). Absent or
/// null fields are empty.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(default)]
pub struct ImageConfig {
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    /// `KEY=value` strings.
    pub env: Vec<String>,
    pub working_dir: String,
    pub user: String,
    /// `80/tcp`-style keys, sorted.
    pub exposed_ports: Vec<String>,
}

/// An imported image, as one reference names it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct ImageInfo {
    /// The reference in canonical form (`busybox` → `busybox:latest`).
    pub reference: String,
    /// `sha256:…` of the image manifest for an OCI layout (the platform's manifest, not the
    /// index). For a `docker save` archive, which carries no manifest blob, the sha256 of the
    /// config blob (docker's image ID). The cache is keyed by it.
    pub digest: String,
    /// The read-only base image (EROFS or ext4), labelled [`BASE_LABEL`]. Shared by every VM of this
    /// image: open it read-only.
    pub rootfs: PathBuf,
    /// Size of the base image file in bytes.
    pub size_bytes: u64,
    pub config: ImageConfig,
}
