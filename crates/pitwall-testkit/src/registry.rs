//! A real OCI distribution registry under test: Debian's `docker-registry` (the CNCF
//! distribution registry v2) on a free loopback port with its own storage, optionally behind
//! htpasswd Basic auth, filled with `skopeo copy` from OCI layouts. Killed when dropped.
//!
//! Needs the Debian packages `docker-registry`, `skopeo` and `apache2-utils` (`htpasswd`),
//! which `scripts/setup.sh` installs.

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde_json::{json, Value};
use sha2::{Digest as _, Sha256};

/// The registry binary of Debian's `docker-registry`.
pub const DOCKER_REGISTRY: &str = "/usr/bin/docker-registry";

fn need(program: &str, package: &str) -> anyhow::Result<()> {
    let found = Command::new(program)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok();
    if !found {
        bail!("{program} is not installed: run scripts/setup.sh (Debian package {package})");
    }
    Ok(())
}

/// A `docker-registry` on `127.0.0.1:<free port>`.
pub struct Registry {
    child: Child,
    dir: tempfile::TempDir,
    addr: String,
    auth: Option<(String, String)>,
    /// The CA (PEM) that signed the registry's certificate, when it serves HTTPS.
    ca: Option<PathBuf>,
}

impl Registry {
    /// Starts a registry with fresh storage; with `auth` = `(user, password)`, every request
    /// needs those credentials (htpasswd, bcrypt). Waits until `GET /v2/` answers.
    pub fn start(auth: Option<(&str, &str)>) -> anyhow::Result<Registry> {
        Self::start_with(auth, false)
    }

    /// Starts a registry serving HTTPS with a certificate for `127.0.0.1` signed by a CA made
    /// for it ([`Registry::ca`]), which nothing trusts unless told to.
    pub fn start_tls() -> anyhow::Result<Registry> {
        Self::start_with(None, true)
    }

    fn start_with(auth: Option<(&str, &str)>, tls: bool) -> anyhow::Result<Registry> {
        if !Path::new(DOCKER_REGISTRY).is_file() {
            bail!("{DOCKER_REGISTRY} is missing: run scripts/setup.sh (Debian package docker-registry)");
        }
        let dir = tempfile::Builder::new()
            .prefix("pitwall-registry-")
            .tempdir()?;
        let storage = dir.path().join("storage");
        std::fs::create_dir_all(&storage)?;
        let addr = format!("127.0.0.1:{}", crate::free_port());
        let mut config = format!(
            "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: {addr}\n",
            storage.display()
        );
        if let Some((user, password)) = auth {
            need("htpasswd", "apache2-utils")?;
            let out = Command::new("htpasswd")
                .args(["-Bbn", user, password])
                .output()
                .context(
                    "cannot run htpasswd: run scripts/setup.sh (Debian package apache2-utils)",
                )?;
            if !out.status.success() {
                bail!("htpasswd failed: {}", String::from_utf8_lossy(&out.stderr));
            }
            let file = dir.path().join("htpasswd");
            std::fs::write(&file, &out.stdout)?;
            config.push_str(&format!(
                "auth:\n  htpasswd:\n    realm: pitwall-test\n    path: {}\n",
                file.display()
            ));
        }
        let ca = if tls {
            let (ca, cert, key) = make_certificates(dir.path())?;
            config.push_str(&format!(
                "  tls:\n    certificate: {}\n    key: {}\n",
                cert.display(),
                key.display()
            ));
            Some(ca)
        } else {
            None
        };
        let config_path = dir.path().join("config.yml");
        std::fs::write(&config_path, config)?;
        let log = std::fs::File::create(dir.path().join("registry.log"))?;
        let child = Command::new(DOCKER_REGISTRY)
            .arg("serve")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("cannot start {DOCKER_REGISTRY}"))?;
        let mut registry = Registry {
            child,
            dir,
            addr,
            auth: auth.map(|(u, p)| (u.to_string(), p.to_string())),
            ca,
        };
        registry.wait_ready()?;
        Ok(registry)
    }

    fn wait_ready(&mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!(
                    "docker-registry exited ({status}) before serving: {}",
                    self.log()
                );
            }
            if let Some(code) = self.v2_status() {
                // An HTTPS server answers this plain request with 400: it is up.
                if code == 200 || code == 401 || (self.ca.is_some() && code == 400) {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                bail!(
                    "docker-registry on {} did not answer GET /v2/ within 20 s: {}",
                    self.addr,
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The status of `GET /v2/`, if anything answers.
    fn v2_status(&self) -> Option<u16> {
        let mut s = TcpStream::connect(&self.addr).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
        write!(s, "GET /v2/ HTTP/1.0\r\nHost: {}\r\n\r\n", self.addr).ok()?;
        let mut head = [0u8; 12];
        s.read_exact(&mut head).ok()?;
        std::str::from_utf8(&head[9..12]).ok()?.parse().ok()
    }

    /// What the registry logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default()
    }

    /// `127.0.0.1:PORT`.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// The CA certificate (PEM) of an HTTPS registry ([`Registry::start_tls`]).
    pub fn ca(&self) -> Option<&Path> {
        self.ca.as_deref()
    }

    /// The registry's storage root.
    pub fn storage(&self) -> PathBuf {
        self.dir.path().join("storage")
    }

    /// Where the registry keeps the content of blob `digest` (`sha256:…`).
    pub fn blob_data(&self, digest: &str) -> PathBuf {
        let hex = digest.trim_start_matches("sha256:");
        self.storage()
            .join("docker/registry/v2/blobs/sha256")
            .join(&hex[..2.min(hex.len())])
            .join(hex)
            .join("data")
    }

    /// Pushes the image tagged `TAG` in the OCI layout `layout` to `REPO:TAG` (`reference`)
    /// with skopeo; with `all_platforms`, every manifest of an index (else only this host's).
    /// Returns the digest of the manifest (or index) pushed.
    pub fn push(
        &self,
        layout: &Path,
        reference: &str,
        all_platforms: bool,
    ) -> anyhow::Result<String> {
        need("skopeo", "skopeo")?;
        let tag = reference
            .rsplit_once(':')
            .map(|(_, t)| t)
            .with_context(|| format!("{reference}: give REPO:TAG"))?;
        let digest_file = self.dir.path().join("pushed-digest");
        let mut cmd = Command::new("skopeo");
        cmd.args(["--insecure-policy", "copy", "--dest-tls-verify=false"]);
        if let Some((u, p)) = &self.auth {
            cmd.arg(format!("--dest-creds={u}:{p}"));
        }
        if all_platforms {
            cmd.arg("--all");
        }
        let out = cmd
            .arg("--digestfile")
            .arg(&digest_file)
            .arg(format!("oci:{}:{tag}", layout.display()))
            .arg(format!("docker://{}/{reference}", self.addr))
            .output()
            .context("cannot run skopeo: run scripts/setup.sh (Debian package skopeo)")?;
        if !out.status.success() {
            bail!(
                "skopeo copy to {}/{reference} failed: {}",
                self.addr,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(std::fs::read_to_string(&digest_file)?.trim().to_string())
    }
}

/// A CA and a server certificate for `127.0.0.1` signed by it, made with `openssl` in `dir`:
/// (CA certificate, server certificate, server key), PEM files.
fn make_certificates(dir: &Path) -> anyhow::Result<(PathBuf, PathBuf, PathBuf)> {
    need("openssl", "openssl")?;
    let p = |name: &str| dir.join(name);
    let run = |args: &[&str]| -> anyhow::Result<()> {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .context("cannot run openssl")?;
        if !out.status.success() {
            bail!(
                "openssl {} failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    };
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
    ];
    run(&[
        &["req", "-x509"][..],
        &ec[..],
        &[
            "-keyout",
            "ca-key.pem",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=pitwall test registry CA",
        ],
    ]
    .concat())?;
    run(&[
        &["req"][..],
        &ec[..],
        &[
            "-keyout",
            "key.pem",
            "-out",
            "server.csr",
            "-subj",
            "/CN=127.0.0.1",
        ],
    ]
    .concat())?;
    std::fs::write(
        p("server.ext"),
        "basicConstraints=CA:FALSE\nsubjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
    )?;
    run(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca-key.pem",
        "-CAcreateserial",
        "-out",
        "cert.pem",
        "-days",
        "2",
        "-extfile",
        "server.ext",
    ])?;
    Ok((p("ca.pem"), p("cert.pem"), p("key.pem")))
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The digests of a [`two_platform_image`].
#[derive(Debug, Clone)]
pub struct TwoPlatforms {
    /// The image index.
    pub index: String,
    /// The manifest for this host's architecture (the busybox image).
    pub host: String,
    /// The manifest for the other architecture (one small layer; never run).
    pub other: String,
    /// That other architecture (`arm64` on amd64 hosts, else `amd64`).
    pub other_arch: String,
}

fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// Writes, as `tag` in the OCI layout `layout`, an image index of two images: the busybox
/// image for this host's architecture and a one-layer image for another one.
pub fn two_platform_image(layout: &Path, tag: &str) -> anyhow::Result<TwoPlatforms> {
    let host_arch = pitwall_image::host_architecture();
    let other_arch = if host_arch == "arm64" {
        "amd64"
    } else {
        "arm64"
    };
    let host = crate::busybox_image(layout, tag, &["/bin/true"], &[])?;
    let blobs = layout.join("blobs/sha256");
    let write_blob = |bytes: &[u8]| -> anyhow::Result<(String, usize)> {
        let d = sha256(bytes);
        std::fs::write(blobs.join(d.trim_start_matches("sha256:")), bytes)?;
        Ok((d, bytes.len()))
    };

    let mut tar = tar::Builder::new(Vec::new());
    let content = format!("an {other_arch} image: never run\n");
    let mut header = tar::Header::new_gnu();
    header.set_size(content.len() as u64);
    header.set_mode(0o644);
    header.set_cksum();
    tar.append_data(&mut header, "etc/other-platform", content.as_bytes())?;
    let tar = tar.into_inner()?;
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&tar)?;
    let (layer, layer_size) = write_blob(&gz.finish()?)?;
    let config = json!({
        "architecture": other_arch,
        "os": "linux",
        "config": { "Cmd": ["/bin/true"] },
        "rootfs": { "type": "layers", "diff_ids": [sha256(&tar)] },
    });
    let (config, config_size) = write_blob(config.to_string().as_bytes())?;
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": { "mediaType": "application/vnd.oci.image.config.v1+json", "digest": config, "size": config_size },
        "layers": [{ "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": layer, "size": layer_size }],
    });
    let (other, other_size) = write_blob(manifest.to_string().as_bytes())?;

    let index_path = layout.join("index.json");
    let mut top: Value = serde_json::from_slice(&std::fs::read(&index_path)?)?;
    let entries = top["manifests"]
        .as_array_mut()
        .context("index.json has no manifests")?;
    let host_size = entries
        .iter()
        .find(|e| e["digest"] == host.as_str())
        .and_then(|e| e["size"].as_u64())
        .context("busybox_image wrote no index entry")?;
    let index = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [
            { "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": host, "size": host_size,
              "platform": { "architecture": host_arch, "os": "linux" } },
            { "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": other, "size": other_size,
              "platform": { "architecture": other_arch, "os": "linux" } },
        ],
    });
    let (index, index_size) = write_blob(index.to_string().as_bytes())?;
    entries.retain(|e| e["annotations"]["org.opencontainers.image.ref.name"] != tag);
    entries.push(json!({
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "digest": index,
        "size": index_size,
        "annotations": { "org.opencontainers.image.ref.name": tag },
    }));
    std::fs::write(&index_path, top.to_string())?;
    Ok(TwoPlatforms {
        index,
        host,
        other,
        other_arch: other_arch.to_string(),
    })
}
