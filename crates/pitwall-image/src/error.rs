//! The one error type of this crate. Every message names what failed, on what, and where it
//! helps, what to do next.

use std::path::PathBuf;

/// What can go wrong importing, building, or looking up an image.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// A filesystem operation failed on a path.
    #[error("could not {action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// The import source does not exist or cannot be read.
    #[error("image source {path} does not exist or cannot be read: {source}; give an OCI image layout directory, an OCI layout tar, or a `docker save` tar")]
    SourceUnreadable {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// The source is neither kind of image archive this crate understands.
    #[error("{kind} {path} is neither an OCI image layout nor a docker save archive: it has no index.json or manifest.json")]
    NotAnImage { kind: &'static str, path: PathBuf },

    /// The outer archive (or a layer stream read from it) is not a readable tar.
    #[error("archive {path} is corrupt or truncated: {detail}; re-export the image")]
    CorruptArchive { path: PathBuf, detail: String },

    /// A file the manifest names is missing from the source.
    #[error(
        "{source_desc} has no {what} {name:?}; the archive is incomplete, re-export the image"
    )]
    MissingBlob {
        source_desc: String,
        what: &'static str,
        name: String,
    },

    /// A blob's content does not hash to the digest its descriptor gives.
    #[error("blob {name} is corrupt: expected digest {expected}, got {actual}; re-export or re-pull the image")]
    BlobDigestMismatch {
        name: String,
        expected: String,
        actual: String,
    },

    /// A blob's length differs from its descriptor's size.
    #[error("blob {name} is corrupt: descriptor says {expected} bytes, the blob has {actual}; re-export or re-pull the image")]
    BlobSizeMismatch {
        name: String,
        expected: u64,
        actual: u64,
    },

    /// An uncompressed layer does not hash to the diff_id of the image config.
    #[error("layer {layer} ({name}) is corrupt: its uncompressed content hashes to {actual}, the image config says diff_id {expected}")]
    DiffIdMismatch {
        layer: usize,
        name: String,
        expected: String,
        actual: String,
    },

    /// A JSON document of the image (index, manifest, config) is malformed or unsupported.
    #[error("{what} of {source_desc} is not valid: {detail}")]
    BadDocument {
        what: String,
        source_desc: String,
        detail: String,
    },

    /// No image in the archive matches the reference, and there is not exactly one.
    #[error("{source_desc} holds {count} images and none is named {reference}; images in it: {available}. Import it with one of these names")]
    NoMatchingImage {
        source_desc: String,
        reference: String,
        count: usize,
        available: String,
    },

    /// Several different images in the archive match the reference.
    #[error("{source_desc} holds several different images matching {reference}: {candidates}; give a full reference or a digest")]
    AmbiguousImage {
        source_desc: String,
        reference: String,
        candidates: String,
    },

    /// A multi-platform index has no manifest for the platform we run.
    #[error("{source_desc} has no image for {wanted} (it has: {available})")]
    NoPlatform {
        source_desc: String,
        wanted: String,
        available: String,
    },

    /// The reference pins a digest the archive does not have.
    #[error(
        "reference {reference} pins digest {pinned}, but the image in the archive is {actual}"
    )]
    PinnedDigestMismatch {
        reference: String,
        pinned: String,
        actual: String,
    },

    /// A layer is of a kind this crate cannot apply.
    #[error("layer {layer} ({name}) has unsupported media type {media_type:?}: {detail}")]
    UnsupportedLayer {
        layer: usize,
        name: String,
        media_type: String,
        detail: &'static str,
    },

    /// A layer entry would write outside the image root, or through a symlink.
    #[error("layer {layer} entry {entry:?} {reason}: refused")]
    UnsafeEntry {
        layer: usize,
        entry: String,
        reason: String,
    },

    /// A layer entry could not be applied for a reason that is not a safety matter.
    #[error("layer {layer} entry {entry:?}: {detail}")]
    BadEntry {
        layer: usize,
        entry: String,
        detail: String,
    },

    /// A layer is not a readable tar stream (truncated, bad checksum, bad compression).
    #[error("layer {layer} ({name}) is corrupt or truncated: {detail}")]
    CorruptLayer {
        layer: usize,
        name: String,
        detail: String,
    },

    /// The image unpacks to more than the configured limit.
    #[error("image is too large: {what}; refused. Raise ImportOptions::max_unpacked_bytes or max_entries if images this large are expected")]
    TooLarge { what: String },

    /// `mkfs.ext4` or `mkfs.erofs` could not be run.
    #[error("could not run {program}: {source}; install {install}")]
    MkfsUnavailable {
        program: PathBuf,
        /// What to install (the package and what for).
        install: &'static str,
        #[source]
        source: std::io::Error,
    },

    /// `mkfs.ext4` or `mkfs.erofs` ran and failed.
    #[error("{program} failed building {path} ({status}): {stderr}")]
    MkfsFailed {
        program: PathBuf,
        path: PathBuf,
        status: String,
        stderr: String,
    },

    /// Something in the cache directory is not what this crate wrote.
    #[error("image cache entry {path} is damaged: {detail}; remove it and import the image again")]
    CacheCorrupt { path: PathBuf, detail: String },

    /// The registry has no such repository, tag or digest.
    #[error("{reference} was not found on registry {registry} ({detail}); check the repository name and the tag or digest, e.g. with `skopeo inspect docker://{reference}`")]
    RegistryNotFound {
        reference: String,
        registry: String,
        detail: String,
    },

    /// The registry refused the pull: no or wrong credentials, or no access to the repository.
    #[error("registry {registry} refused access to {reference} ({detail}); give credentials for {registry} in the host's registry configuration, or in a docker config.json (`auths`, e.g. written by `docker login {registry}`)")]
    RegistryUnauthorized {
        reference: String,
        registry: String,
        detail: String,
    },

    /// The registry answered HTTP 429.
    #[error("registry {registry} is rate-limiting pulls of {reference} (HTTP 429: {detail}); retry later, or give credentials for a higher limit")]
    RegistryRateLimited {
        reference: String,
        registry: String,
        detail: String,
    },

    /// A blob or manifest from a registry does not match its descriptor's digest or size.
    #[error("{what} from registry {registry} is corrupt: expected {expected}, got {actual}; nothing of it was kept. Pull again; if this persists, the registry's copy is damaged: push the image to it again")]
    RegistryDigestMismatch {
        what: String,
        registry: String,
        expected: String,
        actual: String,
    },

    /// A manifest of a kind this crate does not pull (schema 1, an artifact, …).
    #[error("{reference} on registry {registry} has a manifest of media type {media_type:?}, which cannot be pulled; only OCI and docker v2 schema 2 images (and indexes of them) are supported")]
    RegistryUnsupportedMediaType {
        reference: String,
        registry: String,
        media_type: String,
    },

    /// The registry cannot be reached, or the TLS handshake with it failed.
    #[error("cannot reach registry {registry} over {scheme}: {detail}; {hint}")]
    RegistryConnection {
        registry: String,
        scheme: &'static str,
        detail: String,
        hint: &'static str,
    },

    /// Any other failure the registry reports.
    #[error("registry {registry} failed while pulling {reference}: {detail}; retry later, and check the registry's health if it persists")]
    Registry {
        reference: String,
        registry: String,
        detail: String,
    },

    /// A path or option given to the builder is unusable.
    #[error("{0}")]
    InvalidInput(String),
}

impl ImageError {
    pub(crate) fn io(
        action: &'static str,
        path: impl Into<PathBuf>,
        source: std::io::Error,
    ) -> Self {
        Self::Io {
            action,
            path: path.into(),
            source,
        }
    }
}

/// Shorthand for `map_err(|e| ImageError::io(action, path, e))`.
pub(crate) trait IoContext<T> {
    fn ctx(self, action: &'static str, path: impl Into<PathBuf>) -> Result<T, ImageError>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn ctx(self, action: &'static str, path: impl Into<PathBuf>) -> Result<T, ImageError> {
        self.map_err(|e| ImageError::io(action, path, e))
    }
}
