//! From an opened source and a reference to one verified image: its digest, run config and
//! the ordered list of layers to apply.
//!
//! OCI layout: `index.json` → (nested index → the wanted platform) → manifest → config and
//! layers, every blob checked against its descriptor's digest and size. `docker save`:
//! `manifest.json` → config (its sha256 is the image's digest, what docker calls the image ID)
//! and layer files, checked against the config's `rootfs.diff_ids` when applied.

use pitwall_core::ImageRef;
use serde::de::DeserializeOwned;

use crate::archive::Source;
use crate::digest::{self, HashingReader};
use crate::error::{ImageError, IoContext};
use crate::oci::{
    ConfigFile, Descriptor, DockerSaveEntry, Index, Manifest, Platform, ANN_CONTAINERD_NAME,
    ANN_DOCKER_REF_TYPE, ANN_REF_NAME, MT_DOCKER_LIST, MT_OCI_INDEX,
};
use crate::ImageConfig;

/// Which kind of archive an image came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    OciLayout,
    DockerSave,
}

/// One layer to apply, in order.
#[derive(Debug, Clone)]
pub struct LayerSpec {
    /// Member name in the source (`blobs/sha256/<hex>`, `<id>/layer.tar`).
    pub name: String,
    pub media_type: String,
    /// Digest of the blob as stored (possibly compressed), when known.
    pub digest: Option<String>,
    /// Length of the blob as stored, when a descriptor gives it.
    pub size: Option<u64>,
    /// Digest of the uncompressed tar, from the config's `rootfs.diff_ids`.
    pub diff_id: Option<String>,
}

#[derive(Debug, Clone)]
pub struct ResolvedImage {
    pub format: Format,
    /// Manifest digest (OCI) or config digest (docker save).
    pub digest: String,
    pub config: ImageConfig,
    pub platform: Platform,
    pub layers: Vec<LayerSpec>,
}

/// Picks and verifies the image `reference` names in `source`.
pub fn resolve(
    source: &Source,
    reference: &ImageRef,
    wanted: &Platform,
) -> Result<ResolvedImage, ImageError> {
    if source.has("index.json") {
        resolve_oci(source, reference, wanted)
    } else if source.has("manifest.json") {
        resolve_docker(source, reference, wanted)
    } else {
        Err(ImageError::NotAnImage {
            kind: source.kind_name(),
            path: source.path().to_path_buf(),
        })
    }
}

fn parse<T: DeserializeOwned>(source: &Source, what: &str, bytes: &[u8]) -> Result<T, ImageError> {
    serde_json::from_slice(bytes).map_err(|e| ImageError::BadDocument {
        what: what.to_string(),
        source_desc: source.describe(),
        detail: e.to_string(),
    })
}

fn bad(source: &Source, what: &str, detail: impl Into<String>) -> ImageError {
    ImageError::BadDocument {
        what: what.to_string(),
        source_desc: source.describe(),
        detail: detail.into(),
    }
}

/// `blobs/sha256/<hex>` for a descriptor, refusing digests that are not sha256 hex (they
/// would otherwise become paths).
pub fn blob_name(source: &Source, d: &Descriptor) -> Result<String, ImageError> {
    let hex = digest::sha256_hex(&d.digest).ok_or_else(|| {
        bad(
            source,
            "descriptor",
            format!(
                "digest {:?} is not sha256: followed by 64 lower-case hex digits",
                d.digest
            ),
        )
    })?;
    Ok(format!("blobs/sha256/{hex}"))
}

/// Reads a JSON blob and checks it against its descriptor.
fn read_verified_document(
    source: &Source,
    d: &Descriptor,
    what: &'static str,
) -> Result<Vec<u8>, ImageError> {
    let name = blob_name(source, d)?;
    let bytes = source.read_document(&name, what)?;
    if bytes.len() as u64 != d.size {
        return Err(ImageError::BlobSizeMismatch {
            name: d.digest.clone(),
            expected: d.size,
            actual: bytes.len() as u64,
        });
    }
    let actual = digest::sha256_of(&bytes);
    if actual != d.digest {
        return Err(ImageError::BlobDigestMismatch {
            name: d.digest.clone(),
            expected: d.digest.clone(),
            actual,
        });
    }
    Ok(bytes)
}

/// Streams a blob and checks its length and digest. Used on every layer before it is applied.
pub fn verify_blob(
    source: &Source,
    name: &str,
    expected_digest: &str,
    expected_size: Option<u64>,
) -> Result<(), ImageError> {
    let (r, len) = source.open_member(name, "layer blob")?;
    if let Some(size) = expected_size.filter(|s| *s != len) {
        return Err(ImageError::BlobSizeMismatch {
            name: name.to_string(),
            expected: size,
            actual: len,
        });
    }
    let (actual, read) = HashingReader::new(r)
        .finish()
        .ctx("read", source.path().join(name))?;
    if read != len {
        return Err(ImageError::CorruptArchive {
            path: source.path().to_path_buf(),
            detail: format!("member {name} is cut short: read {read} of {len} bytes"),
        });
    }
    if actual != expected_digest {
        // Name an OCI blob by its digest, a docker save member by its path.
        let hex = digest::sha256_hex(expected_digest).unwrap_or(expected_digest);
        let shown = if name.ends_with(hex) {
            expected_digest
        } else {
            name
        };
        return Err(ImageError::BlobDigestMismatch {
            name: shown.to_string(),
            expected: expected_digest.to_string(),
            actual,
        });
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Choosing one image by name

/// Docker Hub's spellings of one name, so `busybox:latest` matches
/// `docker.io/library/busybox:latest`.
fn canonical_name(r: &ImageRef) -> (String, String, Option<String>) {
    let registry = match r.registry.as_deref() {
        None | Some("docker.io" | "index.docker.io" | "registry-1.docker.io") => "docker.io",
        Some(other) => other,
    };
    let repository = if registry == "docker.io" && !r.repository.contains('/') {
        format!("library/{}", r.repository)
    } else {
        r.repository.clone()
    };
    (registry.to_string(), repository, r.tag.clone())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Match {
    None,
    Tag,
    Full,
}

fn name_match(value: &str, reference: &ImageRef) -> Match {
    if let Ok(r) = ImageRef::parse(value) {
        if (value.contains(':') || value.contains('/') || value.contains('@'))
            && canonical_name(&r) == canonical_name(reference)
        {
            return Match::Full;
        }
    }
    if reference.tag.as_deref() == Some(value) {
        return Match::Tag;
    }
    Match::None
}

struct Candidate {
    names: Vec<String>,
    /// Identity for de-duplication (descriptor digest or config path).
    key: String,
    platform: Option<Platform>,
}

fn platform_ok(p: &Platform, wanted: &Platform) -> bool {
    p.os == wanted.os
        && p.architecture == wanted.architecture
        && (wanted.variant.is_none() || p.variant.is_none() || p.variant == wanted.variant)
}

/// Narrows `idx` to one distinct image: first by key, then by platform.
fn narrow(c: &[Candidate], idx: Vec<usize>, wanted: &Platform) -> Result<usize, Vec<usize>> {
    let distinct = |v: &[usize]| {
        let mut keys: Vec<&str> = v.iter().map(|&i| c[i].key.as_str()).collect();
        keys.sort_unstable();
        keys.dedup();
        keys.len()
    };
    if !idx.is_empty() && distinct(&idx) == 1 {
        return Ok(idx[0]);
    }
    let on_platform: Vec<usize> = idx
        .iter()
        .copied()
        .filter(|&i| {
            c[i].platform
                .as_ref()
                .is_none_or(|p| platform_ok(p, wanted))
        })
        .collect();
    if !on_platform.is_empty() && distinct(&on_platform) == 1 {
        return Ok(on_platform[0]);
    }
    Err(idx)
}

fn select(
    source: &Source,
    c: &[Candidate],
    reference: &ImageRef,
    wanted: &Platform,
) -> Result<usize, ImageError> {
    let best = |i: usize| {
        let by_name = c[i]
            .names
            .iter()
            .map(|n| name_match(n, reference))
            .max()
            .unwrap_or(Match::None);
        if reference.digest.as_deref() == Some(c[i].key.as_str()) {
            Match::Full
        } else {
            by_name
        }
    };
    let ambiguous = |idx: Vec<usize>| ImageError::AmbiguousImage {
        source_desc: source.describe(),
        reference: reference.to_string(),
        candidates: idx
            .iter()
            .map(|&i| format!("{} ({})", c[i].names.join(", "), c[i].key))
            .collect::<Vec<_>>()
            .join("; "),
    };
    for level in [Match::Full, Match::Tag] {
        let idx: Vec<usize> = (0..c.len()).filter(|&i| best(i) == level).collect();
        if !idx.is_empty() {
            return narrow(c, idx, wanted).map_err(ambiguous);
        }
    }
    narrow(c, (0..c.len()).collect(), wanted).map_err(|_| {
        let mut names: Vec<String> = c
            .iter()
            .map(|x| {
                if x.names.is_empty() {
                    format!("(unnamed {})", digest::short(&x.key))
                } else {
                    x.names.join(", ")
                }
            })
            .collect();
        names.dedup();
        ImageError::NoMatchingImage {
            source_desc: source.describe(),
            reference: reference.to_string(),
            count: c.len(),
            available: if names.is_empty() {
                "none".into()
            } else {
                names.join("; ")
            },
        }
    })
}

// ---------------------------------------------------------------------------------------
// OCI layout

fn resolve_oci(
    source: &Source,
    reference: &ImageRef,
    wanted: &Platform,
) -> Result<ResolvedImage, ImageError> {
    if !source.has("oci-layout") {
        tracing::warn!(source = %source.describe(), "OCI layout has index.json but no oci-layout file; reading it anyway");
    }
    let index: Index = parse(
        source,
        "index.json",
        &source.read_document("index.json", "index")?,
    )?;
    let tops: Vec<&Descriptor> = index
        .manifests
        .iter()
        .filter(|d| !d.annotations.contains_key(ANN_DOCKER_REF_TYPE))
        .collect();
    let cands: Vec<Candidate> = tops
        .iter()
        .map(|d| Candidate {
            names: [ANN_REF_NAME, ANN_CONTAINERD_NAME]
                .iter()
                .filter_map(|k| d.annotations.get(*k).cloned())
                .collect(),
            key: d.digest.clone(),
            platform: d.platform.clone(),
        })
        .collect();
    let top = tops[select(source, &cands, reference, wanted)?].clone();

    let mut desc = top.clone();
    let mut depth = 0;
    let manifest: Manifest = loop {
        depth += 1;
        if depth > 4 {
            return Err(bad(source, "index", "image indexes nest more than 4 deep"));
        }
        let bytes = read_verified_document(source, &desc, "manifest")?;
        let probe: serde_json::Value = parse(source, "manifest", &bytes)?;
        let doc_type = probe
            .get("mediaType")
            .and_then(|v| v.as_str())
            .unwrap_or("");
        let is_index = desc.is_index()
            || doc_type == MT_OCI_INDEX
            || doc_type == MT_DOCKER_LIST
            || (probe.get("manifests").is_some() && probe.get("layers").is_none());
        if !is_index {
            break parse(source, &format!("manifest {}", desc.digest), &bytes)?;
        }
        let idx: Index = parse(source, &format!("image index {}", desc.digest), &bytes)?;
        desc = pick_platform(&idx, wanted, &|| source.describe())?;
    };

    if let Some(pinned) = &reference.digest {
        if *pinned != top.digest && *pinned != desc.digest {
            return Err(ImageError::PinnedDigestMismatch {
                reference: reference.to_string(),
                pinned: pinned.clone(),
                actual: desc.digest.clone(),
            });
        }
    }

    let config_bytes = read_verified_document(source, &manifest.config, "config")?;
    let config: ConfigFile = parse(source, "image config", &config_bytes)?;
    let platform = check_platform(source, &config, wanted)?;
    let diff_ids = diff_ids(source, &config, manifest.layers.len())?;
    let layers = manifest
        .layers
        .iter()
        .zip(diff_ids)
        .map(|(d, diff_id)| {
            Ok(LayerSpec {
                name: blob_name(source, d)?,
                media_type: d.media_type.clone(),
                digest: Some(d.digest.clone()),
                size: Some(d.size),
                diff_id,
            })
        })
        .collect::<Result<Vec<_>, ImageError>>()?;
    Ok(ResolvedImage {
        format: Format::OciLayout,
        digest: desc.digest,
        config: config.config.unwrap_or_default().to_image_config(),
        platform,
        layers,
    })
}

/// The entry of `idx` for `wanted`: the only one when it names no platform, else an exact
/// match (with variant), else a compatible one. Imports and registry pulls choose alike.
/// `source_desc` names where the index came from, for the error.
pub(crate) fn pick_platform(
    idx: &Index,
    wanted: &Platform,
    source_desc: &dyn Fn() -> String,
) -> Result<Descriptor, ImageError> {
    let usable: Vec<&Descriptor> = idx
        .manifests
        .iter()
        .filter(|d| !d.annotations.contains_key(ANN_DOCKER_REF_TYPE))
        .collect();
    if let [only] = usable.as_slice() {
        if only.platform.is_none() {
            return Ok((*only).clone());
        }
    }
    let exact = usable.iter().find(|d| {
        d.platform
            .as_ref()
            .is_some_and(|p| platform_ok(p, wanted) && p.variant == wanted.variant)
    });
    let loose = usable
        .iter()
        .find(|d| d.platform.as_ref().is_some_and(|p| platform_ok(p, wanted)));
    exact
        .or(loose)
        .map(|d| (*d).clone())
        .ok_or_else(|| ImageError::NoPlatform {
            source_desc: source_desc(),
            wanted: wanted.to_string(),
            available: usable
                .iter()
                .map(|d| {
                    d.platform
                        .as_ref()
                        .map_or("(no platform)".into(), |p| p.to_string())
                })
                .collect::<Vec<_>>()
                .join(", "),
        })
}

fn check_platform(
    source: &Source,
    config: &ConfigFile,
    wanted: &Platform,
) -> Result<Platform, ImageError> {
    let p = Platform {
        architecture: config.architecture.clone(),
        os: config.os.clone(),
        variant: config.variant.clone(),
    };
    let os_ok = p.os.is_empty() || p.os == wanted.os;
    let arch_ok = p.architecture.is_empty() || p.architecture == wanted.architecture;
    if !os_ok || !arch_ok {
        return Err(ImageError::NoPlatform {
            source_desc: source.describe(),
            wanted: wanted.to_string(),
            available: p.to_string(),
        });
    }
    Ok(p)
}

fn diff_ids(
    source: &Source,
    config: &ConfigFile,
    layers: usize,
) -> Result<Vec<Option<String>>, ImageError> {
    let ids = config
        .rootfs
        .as_ref()
        .map(|r| r.diff_ids.clone())
        .unwrap_or_default();
    if ids.is_empty() && layers > 0 {
        tracing::warn!(source = %source.describe(), "image config has no rootfs.diff_ids; uncompressed layers are not checked");
        return Ok(vec![None; layers]);
    }
    if ids.len() != layers {
        return Err(bad(
            source,
            "image config",
            format!(
                "rootfs.diff_ids lists {} layers, the manifest {layers}",
                ids.len()
            ),
        ));
    }
    ids.into_iter()
        .map(|d| {
            if digest::sha256_hex(&d).is_some() {
                Ok(Some(d))
            } else {
                Err(bad(
                    source,
                    "image config",
                    format!("diff_id {d:?} is not a sha256 digest"),
                ))
            }
        })
        .collect()
}

// ---------------------------------------------------------------------------------------
// docker save

fn resolve_docker(
    source: &Source,
    reference: &ImageRef,
    wanted: &Platform,
) -> Result<ResolvedImage, ImageError> {
    let entries: Vec<DockerSaveEntry> = parse(
        source,
        "manifest.json",
        &source.read_document("manifest.json", "manifest")?,
    )?;
    let cands: Vec<Candidate> = entries
        .iter()
        .map(|e| Candidate {
            names: e.repo_tags.clone().unwrap_or_default(),
            key: e.config.clone(),
            platform: None,
        })
        .collect();
    let entry = &entries[select(source, &cands, reference, wanted)?];

    let config_bytes = source.read_document(&entry.config, "image config")?;
    let digest = digest::sha256_of(&config_bytes);
    if let Some(named) = digest_in_name(&entry.config) {
        if named != digest {
            return Err(ImageError::BlobDigestMismatch {
                name: entry.config.clone(),
                expected: named,
                actual: digest,
            });
        }
    }
    if let Some(pinned) = &reference.digest {
        if *pinned != digest {
            return Err(ImageError::PinnedDigestMismatch {
                reference: reference.to_string(),
                pinned: pinned.clone(),
                actual: digest,
            });
        }
    }
    let config: ConfigFile = parse(source, "image config", &config_bytes)?;
    let platform = check_platform(source, &config, wanted)?;
    let diff_ids = diff_ids(source, &config, entry.layers.len())?;
    let layers = entry
        .layers
        .iter()
        .zip(diff_ids)
        .map(|(name, diff_id)| LayerSpec {
            name: name.clone(),
            media_type: String::new(),
            digest: digest_in_name(name),
            size: None,
            diff_id,
        })
        .collect();
    Ok(ResolvedImage {
        format: Format::DockerSave,
        digest,
        config: config.config.unwrap_or_default().to_image_config(),
        platform,
        layers,
    })
}

/// `sha256:<hex>` when a docker save member is named by its digest (`<hex>.json`,
/// `blobs/sha256/<hex>`).
fn digest_in_name(name: &str) -> Option<String> {
    let base = name.rsplit('/').next()?;
    let base = base.strip_suffix(".json").unwrap_or(base);
    digest::is_hex64(base).then(|| format!("{}{base}", digest::SHA256_PREFIX))
}

/// Reads a whole member; for tests of this module.
#[cfg(test)]
fn read_all(source: &Source, name: &str) -> Vec<u8> {
    use std::io::Read;
    let (mut r, _) = source.open_member(name, "test").expect("open");
    let mut v = Vec::new();
    r.read_to_end(&mut v).expect("read");
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(s: &str) -> ImageRef {
        ImageRef::parse(s).expect("ref")
    }

    #[test]
    fn docker_hub_spellings_are_one_name() {
        assert_eq!(
            name_match("docker.io/library/busybox:latest", &r("busybox")),
            Match::Full
        );
        assert_eq!(
            name_match("busybox:latest", &r("docker.io/library/busybox:latest")),
            Match::Full
        );
        assert_eq!(name_match("latest", &r("busybox")), Match::Tag);
        assert_eq!(name_match("busybox:1.36", &r("busybox")), Match::None);
        assert_eq!(
            name_match("quay.io/busybox:latest", &r("busybox")),
            Match::None
        );
    }

    #[test]
    fn digest_named_members_are_recognised() {
        let hex = "ab".repeat(32);
        assert_eq!(
            digest_in_name(&format!("{hex}.json")),
            Some(format!("sha256:{hex}"))
        );
        assert_eq!(
            digest_in_name(&format!("blobs/sha256/{hex}")),
            Some(format!("sha256:{hex}"))
        );
        assert_eq!(digest_in_name("abc/layer.tar"), None);
    }

    #[test]
    fn dir_source_reads_members() {
        let d = tempfile::tempdir().expect("tmp");
        std::fs::write(d.path().join("x"), b"1").expect("write");
        let s = Source::open(d.path(), d.path(), 1 << 20).expect("open");
        assert_eq!(read_all(&s, "x"), b"1");
        assert!(!s.has("../x"));
    }
}
