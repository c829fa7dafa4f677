//! Which credentials a pull presents: [`RegistryOptions::credentials`] first, then the
//! `auths` of a docker `config.json`, else none.
//!
//! Written here rather than with a docker-credential crate: only the two static forms of
//! `auths` entries are read (no credential helpers are run), which is a dozen lines.

use base64::Engine as _;
use oci_client::secrets::RegistryAuth;
use serde::Deserialize;

use super::{Credential, RegistryOptions};
use crate::error::ImageError;

/// Docker Hub's spellings.
const DOCKER_HUB: &[&str] = &["docker.io", "index.docker.io", "registry-1.docker.io"];

/// `https://index.docker.io/v1/` → `index.docker.io`; `host:5000` stays.
fn normalise(key: &str) -> &str {
    let k = key
        .strip_prefix("https://")
        .or_else(|| key.strip_prefix("http://"))
        .unwrap_or(key);
    k.split('/').next().unwrap_or(k)
}

fn same_registry(key: &str, registry: &str, host: &str) -> bool {
    let k = normalise(key);
    k == registry || k == host || (DOCKER_HUB.contains(&k) && DOCKER_HUB.contains(&registry))
}

#[derive(Deserialize, Default)]
struct DockerConfig {
    #[serde(default)]
    auths: std::collections::BTreeMap<String, DockerAuth>,
}

#[derive(Deserialize, Default)]
struct DockerAuth {
    #[serde(default)]
    auth: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
}

/// The credentials to present to `registry` (as the reference spells it; `host` as
/// `oci-client` resolves it).
pub(super) fn for_registry(
    opts: &RegistryOptions,
    registry: &str,
    host: &str,
) -> Result<RegistryAuth, ImageError> {
    for (key, cred) in &opts.credentials {
        if same_registry(key, registry, host) {
            let Credential::Basic { username, password } = cred;
            return Ok(RegistryAuth::Basic(username.clone(), password.clone()));
        }
    }
    let (path, explicit) = match &opts.docker_config {
        Some(p) => (p.clone(), true),
        None => match std::env::var_os("HOME") {
            Some(home) => (
                std::path::Path::new(&home).join(".docker/config.json"),
                false,
            ),
            None => return Ok(RegistryAuth::Anonymous),
        },
    };
    let text = match std::fs::read(&path) {
        Ok(t) => t,
        Err(e) if !explicit && e.kind() == std::io::ErrorKind::NotFound => {
            return Ok(RegistryAuth::Anonymous)
        }
        Err(e) => return Err(ImageError::io("read docker config", path, e)),
    };
    let config: DockerConfig = match serde_json::from_slice(&text) {
        Ok(c) => c,
        Err(e) => {
            let err = ImageError::BadDocument {
                what: "docker config".into(),
                source_desc: path.display().to_string(),
                detail: format!("{e}; fix or remove it"),
            };
            if explicit {
                return Err(err);
            }
            tracing::warn!(error = %err, "ignoring the docker config");
            return Ok(RegistryAuth::Anonymous);
        }
    };
    let Some(entry) = config
        .auths
        .iter()
        .find(|(k, _)| same_registry(k, registry, host))
        .map(|(_, v)| v)
    else {
        return Ok(RegistryAuth::Anonymous);
    };
    if let (Some(u), Some(p)) = (&entry.username, &entry.password) {
        return Ok(RegistryAuth::Basic(u.clone(), p.clone()));
    }
    let bad = |detail: &str| ImageError::BadDocument {
        what: format!("docker config entry for {registry}"),
        source_desc: path.display().to_string(),
        detail: format!("{detail}; log in again (`docker login {registry}`) or fix the file"),
    };
    let Some(auth) = &entry.auth else {
        return Ok(RegistryAuth::Anonymous);
    };
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(auth.trim())
        .map_err(|_| bad("`auth` is not base64"))?;
    let decoded = String::from_utf8(decoded).map_err(|_| bad("`auth` is not UTF-8"))?;
    let (u, p) = decoded
        .split_once(':')
        .ok_or_else(|| bad("`auth` is not base64 of user:password"))?;
    Ok(RegistryAuth::Basic(u.to_string(), p.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_config_keys_match_by_host() {
        assert!(same_registry(
            "https://index.docker.io/v1/",
            "docker.io",
            "index.docker.io"
        ));
        assert!(same_registry(
            "127.0.0.1:5000",
            "127.0.0.1:5000",
            "127.0.0.1:5000"
        ));
        assert!(same_registry(
            "http://127.0.0.1:5000",
            "127.0.0.1:5000",
            "127.0.0.1:5000"
        ));
        assert!(!same_registry("ghcr.io", "docker.io", "index.docker.io"));
    }
}
