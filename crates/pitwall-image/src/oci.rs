//! The JSON documents of the OCI image spec and of `docker save`, as far as this crate reads or
//! writes them. Foreign documents: unknown fields are ignored, not refused.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::ImageConfig;

pub const MT_OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const MT_OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const MT_OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const MT_OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const MT_DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";

/// Annotation naming an image in an OCI layout (`skopeo`, `umoci`: the tag; some tools: a full
/// reference).
pub const ANN_REF_NAME: &str = "org.opencontainers.image.ref.name";
/// Annotation containerd and docker ≥ 25 put next to [`ANN_REF_NAME`], with the full name.
pub const ANN_CONTAINERD_NAME: &str = "io.containerd.image.name";
/// Annotation marking attestation manifests in buildx indexes; never an image to run.
pub const ANN_DOCKER_REF_TYPE: &str = "vnd.docker.reference.type";

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
pub struct Platform {
    #[serde(default)]
    pub architecture: String,
    #[serde(default)]
    pub os: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

impl std::fmt::Display for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Descriptor {
    #[serde(rename = "mediaType", default)]
    pub media_type: String,
    pub digest: String,
    pub size: u64,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
}

impl Descriptor {
    pub fn is_index(&self) -> bool {
        self.media_type == MT_OCI_INDEX || self.media_type == MT_DOCKER_LIST
    }
}

/// `index.json` of a layout, or an image index blob.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Index {
    #[serde(rename = "schemaVersion")]
    pub schema_version: u32,
    #[serde(rename = "mediaType", default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    pub manifests: Vec<Descriptor>,
}

/// An image manifest (OCI or docker schema 2).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    #[serde(rename = "schemaVersion")]
    pub schema_version: u32,
    #[serde(rename = "mediaType", default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    pub config: Descriptor,
    pub layers: Vec<Descriptor>,
}

/// The image configuration blob.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct ConfigFile {
    #[serde(default)]
    pub architecture: String,
    #[serde(default)]
    pub os: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
    #[serde(default)]
    pub config: Option<RunConfig>,
    #[serde(default)]
    pub rootfs: Option<RootFs>,
}

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct RootFs {
    #[serde(rename = "type", default)]
    pub kind: String,
    #[serde(default)]
    pub diff_ids: Vec<String>,
}

/// The `config` object inside the image configuration (docker's capitalised names).
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct RunConfig {
    #[serde(rename = "User", default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(
        rename = "ExposedPorts",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub exposed_ports: Option<BTreeMap<String, serde_json::Value>>,
    #[serde(rename = "Env", default, skip_serializing_if = "Option::is_none")]
    pub env: Option<Vec<String>>,
    #[serde(
        rename = "Entrypoint",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub entrypoint: Option<Vec<String>>,
    #[serde(rename = "Cmd", default, skip_serializing_if = "Option::is_none")]
    pub cmd: Option<Vec<String>>,
    #[serde(
        rename = "WorkingDir",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub working_dir: Option<String>,
}

impl RunConfig {
    pub fn to_image_config(&self) -> ImageConfig {
        ImageConfig {
            entrypoint: self.entrypoint.clone().unwrap_or_default(),
            cmd: self.cmd.clone().unwrap_or_default(),
            env: self.env.clone().unwrap_or_default(),
            working_dir: self.working_dir.clone().unwrap_or_default(),
            user: self.user.clone().unwrap_or_default(),
            exposed_ports: self
                .exposed_ports
                .as_ref()
                .map(|m| m.keys().cloned().collect())
                .unwrap_or_default(),
        }
    }

    pub fn from_image_config(c: &ImageConfig) -> Self {
        fn some_vec(v: &[String]) -> Option<Vec<String>> {
            (!v.is_empty()).then(|| v.to_vec())
        }
        fn some_str(s: &str) -> Option<String> {
            (!s.is_empty()).then(|| s.to_string())
        }
        Self {
            user: some_str(&c.user),
            exposed_ports: (!c.exposed_ports.is_empty()).then(|| {
                c.exposed_ports
                    .iter()
                    .map(|p| (p.clone(), serde_json::json!({})))
                    .collect()
            }),
            env: some_vec(&c.env),
            entrypoint: some_vec(&c.entrypoint),
            cmd: some_vec(&c.cmd),
            working_dir: some_str(&c.working_dir),
        }
    }
}

/// One element of a `docker save` `manifest.json`.
#[derive(Debug, Clone, Deserialize)]
pub struct DockerSaveEntry {
    #[serde(rename = "Config")]
    pub config: String,
    #[serde(rename = "RepoTags", default)]
    pub repo_tags: Option<Vec<String>>,
    #[serde(rename = "Layers", default)]
    pub layers: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_config_with_nulls_maps_to_empty_fields() {
        let c: ConfigFile = serde_json::from_str(
            r#"{"architecture":"amd64","os":"linux","config":{"Entrypoint":null,"Cmd":["sh"],
                "ExposedPorts":{"80/tcp":{},"53/udp":{}},"Env":["PATH=/bin"]},
                "rootfs":{"type":"layers","diff_ids":[]}}"#,
        )
        .expect("parse");
        let ic = c.config.expect("config").to_image_config();
        assert!(ic.entrypoint.is_empty());
        assert_eq!(ic.cmd, vec!["sh"]);
        assert_eq!(ic.exposed_ports, vec!["53/udp", "80/tcp"]);
        assert_eq!(ic.env, vec!["PATH=/bin"]);
    }
}
