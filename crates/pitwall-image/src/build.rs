//! Writing OCI image layouts without docker: a directory tree packed as a one-layer image
//! (how tests and the demo make a busybox image from Debian's `busybox-static`), or an image
//! from given layer tars (how tests make hostile images).
//!
//! The output is a plain OCI image layout (`oci-layout`, `index.json`, `blobs/sha256/`) that
//! `skopeo`, `umoci` and [`crate::ImageCache::import`] read. Several images can share one
//! layout: each is named in `index.json` by its `org.opencontainers.image.ref.name`
//! annotation, and writing a tag again replaces that entry.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use serde_json::json;

use crate::cache::host_architecture;
use crate::digest::{self, HashingWriter};
use crate::error::{ImageError, IoContext};
use crate::oci::{
    Descriptor, Index, RunConfig, ANN_REF_NAME, MT_OCI_CONFIG, MT_OCI_INDEX, MT_OCI_LAYER_GZIP,
    MT_OCI_MANIFEST,
};
use crate::ImageConfig;

/// How a layer blob is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LayerCompression {
    None,
    Gzip,
    Zstd,
}

impl LayerCompression {
    fn media_type(self) -> &'static str {
        match self {
            Self::None => "application/vnd.oci.image.layer.v1.tar",
            Self::Gzip => MT_OCI_LAYER_GZIP,
            Self::Zstd => "application/vnd.oci.image.layer.v1.tar+zstd",
        }
    }
}

/// Packs the tree at `dir` (symlinks kept as symlinks, owners and modes as they are) as a
/// one-layer, gzip-compressed image for linux on this host's architecture, named `tag` in the
/// OCI layout at `out_dir` (created if missing). Returns the manifest digest.
pub fn layout_from_rootfs_dir(
    dir: &Path,
    out_dir: &Path,
    config: &ImageConfig,
    tag: &str,
) -> Result<String, ImageError> {
    if !dir.is_dir() {
        return Err(ImageError::InvalidInput(format!(
            "{} is not a directory: give the root tree of the image",
            dir.display()
        )));
    }
    let layout = Layout::create(out_dir)?;
    let tmp_path = layout.blobs.join(".layer.tmp");
    let file = File::create(&tmp_path).ctx("create", &tmp_path)?;
    let gz =
        flate2::write::GzEncoder::new(HashingWriter::new(file), flate2::Compression::default());
    let mut builder = tar::Builder::new(HashingWriter::new(gz));
    builder.follow_symlinks(false);
    builder.mode(tar::HeaderMode::Complete);
    builder.append_dir_all(".", dir).ctx("pack", dir)?;
    let plain = builder.into_inner().ctx("pack", dir)?;
    let (gz, diff_id, _) = plain.finish();
    let compressed = gz.finish().ctx("compress", &tmp_path)?;
    let (file, layer_digest, layer_size) = compressed.finish();
    file.sync_all().ctx("write", &tmp_path)?;
    let layer = layout.adopt_blob(&tmp_path, &layer_digest, layer_size, MT_OCI_LAYER_GZIP)?;
    layout.add_image(vec![(layer, diff_id)], config, tag)
}

/// Writes an image of the given layers (each an uncompressed tar, stored as asked) named
/// `tag` into the layout at `out_dir`. Returns the manifest digest.
pub fn layout_from_layers(
    out_dir: &Path,
    layers: &[(Vec<u8>, LayerCompression)],
    config: &ImageConfig,
    tag: &str,
) -> Result<String, ImageError> {
    let layout = Layout::create(out_dir)?;
    let mut descs = Vec::new();
    for (tar, c) in layers {
        let stored = match c {
            LayerCompression::None => tar.clone(),
            LayerCompression::Gzip => {
                let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
                e.write_all(tar)
                    .and_then(|_| e.finish())
                    .ctx("compress a layer for", out_dir)?
            }
            LayerCompression::Zstd => {
                zstd::encode_all(&tar[..], 3).ctx("compress a layer for", out_dir)?
            }
        };
        let d = layout.write_blob(&stored, c.media_type())?;
        descs.push((d, digest::sha256_of(tar)));
    }
    layout.add_image(descs, config, tag)
}

/// The body of a PAX extended header holding `records` (`"LEN KEY=VALUE\n"` each, where LEN
/// counts the whole record, its own digits included). For writing test layers; the bytes of
/// a value are kept as they are.
pub fn pax_records(records: &[(&str, &[u8])]) -> Vec<u8> {
    let mut body = Vec::new();
    for (k, v) in records {
        let fixed = 1 + k.len() + 1 + v.len() + 1;
        let mut len = fixed + 1;
        while len != fixed + len.to_string().len() {
            len = fixed + len.to_string().len();
        }
        body.extend_from_slice(format!("{len} {k}=").as_bytes());
        body.extend_from_slice(v);
        body.push(b'\n');
    }
    body
}

struct Layout {
    dir: PathBuf,
    blobs: PathBuf,
}

impl Layout {
    fn create(dir: &Path) -> Result<Self, ImageError> {
        let blobs = dir.join("blobs").join("sha256");
        fs::create_dir_all(&blobs).ctx("create directory", &blobs)?;
        let marker = dir.join("oci-layout");
        fs::write(&marker, br#"{"imageLayoutVersion":"1.0.0"}"#).ctx("write", &marker)?;
        Ok(Self {
            dir: dir.to_path_buf(),
            blobs,
        })
    }

    fn blob_path(&self, digest: &str) -> PathBuf {
        self.blobs
            .join(digest.trim_start_matches(digest::SHA256_PREFIX))
    }

    fn write_blob(&self, bytes: &[u8], media_type: &str) -> Result<Descriptor, ImageError> {
        let d = digest::sha256_of(bytes);
        let p = self.blob_path(&d);
        fs::write(&p, bytes).ctx("write", &p)?;
        Ok(descriptor(media_type, d, bytes.len() as u64))
    }

    fn adopt_blob(
        &self,
        tmp: &Path,
        digest: &str,
        size: u64,
        media_type: &str,
    ) -> Result<Descriptor, ImageError> {
        let p = self.blob_path(digest);
        fs::rename(tmp, &p).ctx("write", &p)?;
        Ok(descriptor(media_type, digest.to_string(), size))
    }

    fn add_image(
        &self,
        layers: Vec<(Descriptor, String)>,
        config: &ImageConfig,
        tag: &str,
    ) -> Result<String, ImageError> {
        let config_doc = json!({
            "architecture": host_architecture(),
            "os": "linux",
            "config": RunConfig::from_image_config(config),
            "rootfs": {
                "type": "layers",
                "diff_ids": layers.iter().map(|(_, d)| d.clone()).collect::<Vec<_>>(),
            },
        });
        let config_desc = self.write_blob(&to_json(&config_doc)?, MT_OCI_CONFIG)?;
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": MT_OCI_MANIFEST,
            "config": config_desc,
            "layers": layers.iter().map(|(d, _)| d.clone()).collect::<Vec<_>>(),
        });
        let mut manifest_desc = self.write_blob(&to_json(&manifest)?, MT_OCI_MANIFEST)?;
        manifest_desc
            .annotations
            .insert(ANN_REF_NAME.into(), tag.into());

        let index_path = self.dir.join("index.json");
        let mut index = match fs::read(&index_path) {
            Ok(b) => serde_json::from_slice::<Index>(&b).map_err(|e| {
                ImageError::InvalidInput(format!(
                    "{} is not an OCI index: {e}",
                    index_path.display()
                ))
            })?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => Index {
                schema_version: 2,
                media_type: Some(MT_OCI_INDEX.into()),
                manifests: Vec::new(),
            },
            Err(e) => return Err(ImageError::io("read", index_path, e)),
        };
        index
            .manifests
            .retain(|d| d.annotations.get(ANN_REF_NAME).map(String::as_str) != Some(tag));
        let digest = manifest_desc.digest.clone();
        index.manifests.push(manifest_desc);
        let tmp = self.dir.join(".index.json.tmp");
        fs::write(&tmp, to_json(&index)?).ctx("write", &tmp)?;
        fs::rename(&tmp, &index_path).ctx("write", &index_path)?;
        Ok(digest)
    }
}

fn descriptor(media_type: &str, digest: String, size: u64) -> Descriptor {
    Descriptor {
        media_type: media_type.into(),
        digest,
        size,
        annotations: Default::default(),
        platform: None,
    }
}

fn to_json<T: serde::Serialize>(v: &T) -> Result<Vec<u8>, ImageError> {
    serde_json::to_vec(v).map_err(|e| ImageError::InvalidInput(format!("cannot serialise: {e}")))
}
