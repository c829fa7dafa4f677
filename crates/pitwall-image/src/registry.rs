//! Pulling images from an OCI distribution registry (Docker Hub, GHCR, a `docker-registry`,
//! Harbor, …) into the [`ImageCache`].
//!
//! The registry protocol (URLs, `Accept` headers, Docker Hub's bearer-token flow, HTTP Basic,
//! `Range` requests) is `oci-client`'s. What this module adds, and what `oci-client` does not
//! do: choosing the host's platform from an index the way [`ImageCache::import`] does, a blob
//! store shared by every pull (`<cache root>/blobs/sha256/<hex>`, each blob written to a
//! temporary file and renamed into place only once its size and digest are verified, so a
//! second pull of an image sharing layers downloads nothing again), resumed and retried blob
//! downloads, credentials from a docker `config.json`, and errors that say what to do.
//!
//! After the download, a local OCI image layout of the pulled manifest is assembled from hard
//! links to the stored blobs and imported (on a blocking thread) the way [`ImageCache::import`]
//! does, except that layer blobs, hashed as they arrived, are hashed again while they are
//! applied rather than in a pass of their own; then the ext4 base image is built.
//!
//! ```text
//! <cache root>/blobs/sha256/<hex>   verified blobs (configs and layers), shared by all pulls
//! <cache root>/blobs/tmp/           downloads in flight and layouts being imported
//! ```
//!
//! What it must not do: trust a byte it has not hashed, or leave a blob under its digest's name
//! before it is verified.

mod auth;
pub(crate) mod blobs;
mod errors;

use std::path::{Path, PathBuf};

use futures::{StreamExt as _, TryStreamExt as _};
use oci_client::client::{Certificate, CertificateEncoding, ClientConfig, ClientProtocol};
use oci_client::Reference;
use pitwall_core::ImageRef;
use serde_json::json;

use crate::error::{ImageError, IoContext};
use crate::oci::{
    Descriptor, Index, Manifest, Platform, ANN_REF_NAME, MT_DOCKER_LIST, MT_OCI_CONFIG,
    MT_OCI_INDEX, MT_OCI_MANIFEST,
};
use crate::{ImageCache, ImageInfo};

use blobs::BlobStore;
use errors::Ctx;

/// Docker's image manifest, v2 schema 2.
pub const MT_DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// Docker's image config, the config blob of [`MT_DOCKER_MANIFEST`].
pub const MT_DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
/// Docker's schema 1 manifests, refused.
const MT_DOCKER_V1: &str = "application/vnd.docker.distribution.manifest.v1+json";

/// The manifest kinds asked for; anything else the registry sends is refused.
const ACCEPTED: &[&str] = &[
    MT_OCI_MANIFEST,
    MT_DOCKER_MANIFEST,
    MT_OCI_INDEX,
    MT_DOCKER_LIST,
];

/// How to reach registries. `Default`: every registry over HTTPS with the system's CAs,
/// credentials from `$HOME/.docker/config.json` when it exists, 4 layers at once, 3 attempts
/// per blob.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistryOptions {
    /// Registries (`host[:port]`, as in the image reference) reached over plain HTTP; all
    /// others over HTTPS.
    pub insecure: Vec<String>,
    /// Extra CA certificates (PEM files, one or more certificates each) trusted for HTTPS
    /// registries, beside the system's.
    pub ca_files: Vec<PathBuf>,
    /// Credentials per registry host (`host[:port]`; `docker.io` for Docker Hub), tried before
    /// the docker config file.
    pub credentials: Vec<(String, Credential)>,
    /// A docker `config.json` (`auths.<registry>.auth`, base64 of `user:pass`, or
    /// `auths.<registry>.username`/`password`; credential helpers are not run). `None`:
    /// `$HOME/.docker/config.json` when it exists.
    pub docker_config: Option<PathBuf>,
    /// Blobs downloaded at once (at least 1).
    pub concurrency: usize,
    /// Attempts per blob (at least 1); a cut-off download resumes with `Range` where the
    /// registry supports it.
    pub attempts: u32,
}

impl Default for RegistryOptions {
    fn default() -> Self {
        Self {
            insecure: Vec::new(),
            ca_files: Vec::new(),
            credentials: Vec::new(),
            docker_config: None,
            concurrency: 4,
            attempts: 3,
        }
    }
}

/// Credentials for one registry.
#[derive(Clone, PartialEq, Eq)]
pub enum Credential {
    /// HTTP Basic, or the user and password exchanged for a bearer token where the registry
    /// asks for one (Docker Hub).
    Basic { username: String, password: String },
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Basic { username, .. } => f
                .debug_struct("Basic")
                .field("username", username)
                .field("password", &"<redacted>")
                .finish(),
        }
    }
}

/// What a pull is doing, reported to its progress callback.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PullProgress {
    /// A blob (config or layer) is being downloaded: `bytes_done` of `bytes_total` so far.
    /// Reported when the download starts and after every chunk.
    Downloading {
        digest: String,
        bytes_done: u64,
        bytes_total: u64,
    },
    /// A blob already in the shared blob store: not downloaded again.
    Present { digest: String, bytes_total: u64 },
    /// Every blob is here; the base image is being built (or found in the cache).
    /// `digest` is the platform manifest's.
    Building { digest: String },
}

/// Pulls `reference` (`[registry/]repository[:tag][@digest]`; no registry means Docker Hub,
/// where a one-component name is under `library/`) into `cache`, for the cache's platform
/// (linux on [`crate::host_architecture`] unless the cache's options say otherwise), and
/// registers `reference` for it. Returns what [`ImageCache::import`] returns; `digest` is that
/// of the platform's manifest, even when the reference names an index.
pub async fn pull(
    cache: &ImageCache,
    reference: &ImageRef,
    opts: &RegistryOptions,
    progress: &(dyn Fn(PullProgress) + Send + Sync),
) -> Result<ImageInfo, ImageError> {
    let canonical = reference.to_string();
    let oref: Reference = canonical.parse().map_err(|e| {
        ImageError::InvalidInput(format!("image reference {canonical} cannot be pulled: {e}"))
    })?;
    let registry = oref.registry().to_string();
    let host = oref.resolve_registry().to_string();
    let insecure = opts.insecure.iter().any(|r| *r == registry || *r == host);
    let ctx = Ctx {
        reference: canonical.clone(),
        registry: registry.clone(),
        https: !insecure,
    };
    tracing::info!(image = %canonical, registry = %registry, "pulling image");
    let client = client(opts, &registry, &host)?;
    let auth = auth::for_registry(opts, &registry, &host)?;

    // Digests are recomputed here: the cache keys by sha256, whatever the registry's header.
    let (top_bytes, _) = client
        .pull_manifest_raw(&oref, &auth, ACCEPTED)
        .await
        .map_err(|e| ctx.map(e))?;
    let top_digest = crate::digest::sha256_of(&top_bytes);
    let top = Document::parse(&top_bytes, &ctx)?;
    let wanted = Platform {
        os: "linux".into(),
        architecture: cache.options().architecture.clone(),
        variant: None,
    };
    let (manifest_bytes, manifest_digest, manifest, manifest_type) = match &top {
        Document::Manifest(m, media_type) => (
            top_bytes.clone(),
            top_digest.clone(),
            m.clone(),
            media_type.clone(),
        ),
        Document::Index(index, _) => {
            let chosen = pick_platform(index, &wanted, &ctx)?;
            let (bytes, _) = client
                .pull_manifest_raw(
                    &oref.clone_with_digest(chosen.digest.clone()),
                    &auth,
                    ACCEPTED,
                )
                .await
                .map_err(|e| ctx.map(e))?;
            let digest = crate::digest::sha256_of(&bytes);
            if digest != chosen.digest {
                return Err(ImageError::RegistryDigestMismatch {
                    what: format!("platform manifest of {canonical}"),
                    registry,
                    expected: chosen.digest,
                    actual: digest,
                });
            }
            match Document::parse(&bytes, &ctx)? {
                Document::Manifest(m, media_type) => (bytes, digest, m, media_type),
                Document::Index(_, media_type) => {
                    return Err(ImageError::RegistryUnsupportedMediaType {
                        reference: canonical,
                        registry,
                        media_type: format!("{media_type} nested in an image index"),
                    })
                }
            }
        }
    };
    check_config_type(&manifest, &ctx)?;

    let store = BlobStore::open(cache.root())?;
    let mut wanted_blobs = vec![manifest.config.clone()];
    wanted_blobs.extend(manifest.layers.iter().cloned());
    futures::stream::iter(wanted_blobs.iter())
        .map(|d| store.fetch(&client, &oref, d, opts.attempts.max(1), &ctx, progress))
        .buffer_unordered(opts.concurrency.max(1))
        .try_collect::<Vec<()>>()
        .await?;

    progress(PullProgress::Building {
        digest: manifest_digest.clone(),
    });
    let work = store.work_dir()?;
    let layout = work.path().to_path_buf();
    let top_type = match &top {
        Document::Index(_, t) | Document::Manifest(_, t) => t.clone(),
    };
    write_doc(&layout, &top_digest, &top_bytes)?;
    if top_digest != manifest_digest {
        write_doc(&layout, &manifest_digest, &manifest_bytes)?;
    }
    for d in &wanted_blobs {
        store.link_into(d, &layout.join("blobs").join("sha256"))?;
    }
    let index = json!({
        "schemaVersion": 2,
        "mediaType": MT_OCI_INDEX,
        "manifests": [{
            "mediaType": top_type,
            "digest": top_digest,
            "size": top_bytes.len(),
            "annotations": { ANN_REF_NAME: canonical },
        }],
    });
    let index_path = layout.join("index.json");
    std::fs::write(&index_path, index.to_string()).ctx("write", &index_path)?;
    tracing::debug!(image = %canonical, digest = %manifest_digest, media_type = %manifest_type, "blobs pulled; importing");

    let cache = cache.clone();
    let r = reference.clone();
    let info = tokio::task::spawn_blocking(move || cache.import_stored(&layout, &r))
        .await
        .map_err(|e| ImageError::io("import", work.path(), std::io::Error::other(e)))??;
    drop(work);
    Ok(info)
}

/// An `oci-client` for this pull: plain HTTP for insecure registries, extra CAs.
fn client(
    opts: &RegistryOptions,
    registry: &str,
    host: &str,
) -> Result<oci_client::Client, ImageError> {
    let mut extra = Vec::new();
    for path in &opts.ca_files {
        let pem = std::fs::read_to_string(path).ctx("read CA file", path)?;
        let certs = split_pem(&pem);
        if certs.is_empty() {
            return Err(ImageError::InvalidInput(format!(
                "CA file {} holds no PEM certificate (-----BEGIN CERTIFICATE-----)",
                path.display()
            )));
        }
        extra.extend(certs.into_iter().map(|c| Certificate {
            encoding: CertificateEncoding::Pem,
            data: c.into_bytes(),
        }));
    }
    let mut insecure = opts.insecure.clone();
    // oci-client compares with the resolved host; accept either spelling.
    if insecure.iter().any(|r| r == registry) && registry != host {
        insecure.push(host.to_string());
    }
    let config = ClientConfig {
        protocol: if insecure.is_empty() {
            ClientProtocol::Https
        } else {
            ClientProtocol::HttpsExcept(insecure)
        },
        extra_root_certificates: extra,
        platform_resolver: None,
        connect_timeout: Some(std::time::Duration::from_secs(30)),
        read_timeout: Some(std::time::Duration::from_secs(120)),
        ..Default::default()
    };
    oci_client::Client::try_from(config).map_err(|e| {
        ImageError::InvalidInput(format!(
            "cannot set up an HTTP client for registry {registry}: {e}; check the CA files"
        ))
    })
}

/// The certificates of a PEM bundle, each with its armour.
fn split_pem(pem: &str) -> Vec<String> {
    const BEGIN: &str = "-----BEGIN CERTIFICATE-----";
    const END: &str = "-----END CERTIFICATE-----";
    let mut out = Vec::new();
    let mut rest = pem;
    while let Some(start) = rest.find(BEGIN) {
        let Some(len) = rest[start..].find(END) else {
            break;
        };
        let stop = start + len + END.len();
        out.push(format!("{}\n", &rest[start..stop]));
        rest = &rest[stop..];
    }
    out
}

/// A manifest document as the registry sent it, with its media type.
enum Document {
    Index(Index, String),
    Manifest(Manifest, String),
}

impl Document {
    fn parse(bytes: &[u8], ctx: &Ctx) -> Result<Self, ImageError> {
        let bad = |detail: String| ImageError::BadDocument {
            what: "manifest".into(),
            source_desc: format!("{} on registry {}", ctx.reference, ctx.registry),
            detail,
        };
        let probe: serde_json::Value =
            serde_json::from_slice(bytes).map_err(|e| bad(e.to_string()))?;
        let declared = probe.get("mediaType").and_then(|v| v.as_str());
        let schema = probe.get("schemaVersion").and_then(|v| v.as_u64());
        let media_type = match (declared, schema) {
            (_, Some(1)) => MT_DOCKER_V1.to_string(),
            (Some(t), _) => t.to_string(),
            (None, _) if probe.get("manifests").is_some() => MT_OCI_INDEX.to_string(),
            (None, _) if probe.get("layers").is_some() => MT_OCI_MANIFEST.to_string(),
            (None, _) => "(none)".to_string(),
        };
        let unsupported = || ImageError::RegistryUnsupportedMediaType {
            reference: ctx.reference.clone(),
            registry: ctx.registry.clone(),
            media_type: media_type.clone(),
        };
        match media_type.as_str() {
            MT_OCI_INDEX | MT_DOCKER_LIST => {
                let index = serde_json::from_slice(bytes).map_err(|e| bad(e.to_string()))?;
                Ok(Self::Index(index, media_type))
            }
            MT_OCI_MANIFEST | MT_DOCKER_MANIFEST => {
                let m = serde_json::from_slice(bytes).map_err(|e| bad(e.to_string()))?;
                Ok(Self::Manifest(m, media_type))
            }
            _ => Err(unsupported()),
        }
    }
}

/// The index entry for `wanted`, chosen as [`ImageCache::import`] chooses it (the same
/// function).
fn pick_platform(index: &Index, wanted: &Platform, ctx: &Ctx) -> Result<Descriptor, ImageError> {
    crate::resolve::pick_platform(index, wanted, &|| {
        format!("{} on registry {}", ctx.reference, ctx.registry)
    })
}

/// Refuses artifacts (Helm charts, WASM modules, signatures) that use an image manifest with
/// a config that is not an image configuration.
fn check_config_type(manifest: &Manifest, ctx: &Ctx) -> Result<(), ImageError> {
    let t = manifest.config.media_type.as_str();
    if t == MT_OCI_CONFIG || t == MT_DOCKER_CONFIG {
        return Ok(());
    }
    Err(ImageError::RegistryUnsupportedMediaType {
        reference: ctx.reference.clone(),
        registry: ctx.registry.clone(),
        media_type: format!("{t} (the config of its manifest: not a container image)"),
    })
}

/// Writes a manifest or index, verified already, into the layout's blobs.
fn write_doc(layout: &Path, digest: &str, bytes: &[u8]) -> Result<(), ImageError> {
    let hex = crate::digest::sha256_hex(digest)
        .ok_or_else(|| ImageError::InvalidInput(format!("digest {digest:?} is not sha256")))?;
    let path = layout.join("blobs").join("sha256").join(hex);
    std::fs::write(&path, bytes).ctx("write", &path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx() -> Ctx {
        Ctx {
            reference: "example.org/app:1".into(),
            registry: "example.org".into(),
            https: true,
        }
    }

    fn unsupported_type(doc: serde_json::Value) -> String {
        match Document::parse(doc.to_string().as_bytes(), &ctx()) {
            Err(ImageError::RegistryUnsupportedMediaType { media_type, .. }) => media_type,
            Err(e) => panic!("unexpected error {e}"),
            Ok(_) => panic!("accepted {doc}"),
        }
    }

    #[test]
    fn schema_1_manifests_are_refused_naming_their_media_type() {
        let t = unsupported_type(json!({"schemaVersion": 1, "name": "app", "fsLayers": []}));
        assert_eq!(t, MT_DOCKER_V1);
    }

    #[test]
    fn unknown_manifest_media_types_are_refused_naming_them() {
        let t = unsupported_type(json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.artifact.manifest.v1+json",
        }));
        assert_eq!(t, "application/vnd.oci.artifact.manifest.v1+json");
    }

    #[test]
    fn docker_and_oci_manifests_and_indexes_are_accepted() {
        let manifest = |t: &str| {
            json!({
                "schemaVersion": 2,
                "mediaType": t,
                "config": {"mediaType": MT_DOCKER_CONFIG, "digest": "sha256:00", "size": 1},
                "layers": [],
            })
        };
        for t in [MT_DOCKER_MANIFEST, MT_OCI_MANIFEST] {
            let doc = Document::parse(manifest(t).to_string().as_bytes(), &ctx()).unwrap();
            assert!(matches!(doc, Document::Manifest(_, ref m) if m == t));
        }
        for t in [MT_DOCKER_LIST, MT_OCI_INDEX] {
            let doc = json!({"schemaVersion": 2, "mediaType": t, "manifests": []});
            let doc = Document::parse(doc.to_string().as_bytes(), &ctx()).unwrap();
            assert!(matches!(doc, Document::Index(_, ref m) if m == t));
        }
    }

    #[test]
    fn an_artifact_config_is_refused_naming_it() {
        let doc = json!({
            "schemaVersion": 2,
            "mediaType": MT_OCI_MANIFEST,
            "config": {"mediaType": "application/vnd.cncf.helm.config.v1+json", "digest": "sha256:00", "size": 1},
            "layers": [],
        });
        let Document::Manifest(m, _) = Document::parse(doc.to_string().as_bytes(), &ctx()).unwrap()
        else {
            panic!("not a manifest");
        };
        let err = check_config_type(&m, &ctx()).unwrap_err();
        assert!(err.to_string().contains("helm"), "{err}");
    }

    #[test]
    fn an_index_without_the_wanted_platform_lists_what_it_has() {
        let index: Index = serde_json::from_value(json!({
            "schemaVersion": 2,
            "manifests": [{
                "mediaType": MT_OCI_MANIFEST, "digest": "sha256:01", "size": 1,
                "platform": {"os": "linux", "architecture": "s390x"},
            }],
        }))
        .unwrap();
        let wanted = Platform {
            os: "linux".into(),
            architecture: "amd64".into(),
            variant: None,
        };
        let err = pick_platform(&index, &wanted, &ctx()).unwrap_err();
        assert!(matches!(err, ImageError::NoPlatform { .. }), "{err}");
        assert!(err.to_string().contains("linux/s390x"), "{err}");
    }

    #[test]
    fn pem_bundles_split_into_certificates() {
        let one = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----";
        let bundle = format!("# comment\n{one}\n{one}\n");
        assert_eq!(split_pem(&bundle).len(), 2);
        assert!(split_pem("no certificate").is_empty());
    }
}
