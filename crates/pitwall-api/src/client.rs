//! Typed HTTP client for API v1.
//!
//! A [`Client`] talks to one API endpoint. It sends a bearer token on every request when it
//! has one ([`Client::with_token`]), and can present a TLS client certificate and trust an
//! extra CA for an `https` endpoint ([`ClientBuilder`]). The VM, image and event endpoints are
//! here; authentication, users, policies, delegations, certificates and the audit log are in
//! [`auth`](self::auth).

mod auth;

pub use auth::QuotaOf;

use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use futures::{Stream, StreamExt};
use serde::de::DeserializeOwned;

use crate::types::*;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The server answered with an error body.
    #[error("{message}")]
    Api {
        status: u16,
        code: String,
        message: String,
    },
    #[error("invalid API URL {url:?}: {why}; give it as http://HOST:PORT")]
    BadUrl { url: String, why: String },
    #[error("cannot reach the Pitwall API at {url}: {why} (is pitwalld running? set --api or PITWALL_API)")]
    Connect { url: String, why: String },
    #[error("talking to the Pitwall API at {url}: {why}")]
    Transport { url: String, why: String },
    #[error("the Pitwall API at {url} did not answer in time")]
    Timeout { url: String },
    #[error("unexpected answer from the Pitwall API ({status}): {why}")]
    Decode { status: u16, why: String },
    #[error("invalid TLS {what}: {why}")]
    Tls { what: &'static str, why: String },
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: String,
        source: std::io::Error,
    },
}

impl ClientError {
    /// The API error code, when the server answered with one.
    pub fn code(&self) -> Option<&str> {
        match self {
            ClientError::Api { code, .. } => Some(code),
            _ => None,
        }
    }
}

/// A client for one Pitwall API endpoint.
#[derive(Debug, Clone)]
pub struct Client {
    base: url::Url,
    http: reqwest::Client,
    token: Option<String>,
}

/// Options of a [`Client`] beyond its URL: TLS client identity and extra trusted CA.
#[derive(Debug, Clone, Default)]
pub struct ClientBuilder {
    identity_pem: Option<Vec<u8>>,
    ca_pem: Option<Vec<u8>>,
    token: Option<String>,
}

impl ClientBuilder {
    /// Present this TLS client identity to an `https` endpoint: PEM holding the certificate
    /// chain (leaf first) and its private key (PKCS#8, PKCS#1 or SEC1), in any order.
    pub fn identity_pem(mut self, pem: Vec<u8>) -> Self {
        self.identity_pem = Some(pem);
        self
    }

    /// Trust the CA certificate(s) in this PEM for an `https` endpoint, besides the
    /// system's roots.
    pub fn ca_pem(mut self, pem: Vec<u8>) -> Self {
        self.ca_pem = Some(pem);
        self
    }

    /// Send `Authorization: Bearer <token>` on every request.
    pub fn token(mut self, token: Option<String>) -> Self {
        self.token = token;
        self
    }

    pub fn build(self, base: &str) -> Result<Client, ClientError> {
        let base_url = url::Url::parse(base).map_err(|e| ClientError::BadUrl {
            url: base.into(),
            why: e.to_string(),
        })?;
        if !matches!(base_url.scheme(), "http" | "https") {
            return Err(ClientError::BadUrl {
                url: base.into(),
                why: format!("scheme {:?} is not http or https", base_url.scheme()),
            });
        }
        let mut http = reqwest::Client::builder().connect_timeout(Duration::from_secs(5));
        if let Some(pem) = &self.identity_pem {
            let identity = reqwest::Identity::from_pem(pem).map_err(|e| ClientError::Tls {
                what: "client identity (certificate chain and key, PEM)",
                why: root_cause(&e),
            })?;
            http = http.identity(identity);
        }
        if let Some(pem) = &self.ca_pem {
            let certs =
                reqwest::Certificate::from_pem_bundle(pem).map_err(|e| ClientError::Tls {
                    what: "CA certificate (PEM)",
                    why: root_cause(&e),
                })?;
            if certs.is_empty() {
                return Err(ClientError::Tls {
                    what: "CA certificate (PEM)",
                    why: "no certificate in it".into(),
                });
            }
            for cert in certs {
                http = http.add_root_certificate(cert);
            }
        }
        let http = http.build().map_err(|e| ClientError::Transport {
            url: base.into(),
            why: root_cause(&e),
        })?;
        Ok(Client {
            base: base_url,
            http,
            token: self.token,
        })
    }
}

impl Client {
    /// A client without token or TLS options; see [`Client::builder`] for those.
    pub fn new(base: &str) -> Result<Self, ClientError> {
        ClientBuilder::default().build(base)
    }

    pub fn builder() -> ClientBuilder {
        ClientBuilder::default()
    }

    /// The same client, sending `Authorization: Bearer <token>` on every request (none
    /// with `None`).
    pub fn with_token(mut self, token: Option<String>) -> Self {
        self.token = token;
        self
    }

    /// The bearer token this client sends, if any.
    pub fn token(&self) -> Option<&str> {
        self.token.as_deref()
    }

    pub fn base_url(&self) -> &str {
        self.base.as_str()
    }

    fn url(&self, path: &str) -> String {
        format!("{}{}", self.base.as_str().trim_end_matches('/'), path)
    }

    /// A request to `path` (from the API root, e.g. `/v1/vms`), with the token if any.
    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let req = self.http.request(method, self.url(path));
        match &self.token {
            Some(t) => req.bearer_auth(t),
            None => req,
        }
    }

    fn get(&self, path: &str) -> reqwest::RequestBuilder {
        self.request(reqwest::Method::GET, path)
    }

    fn post(&self, path: &str) -> reqwest::RequestBuilder {
        self.request(reqwest::Method::POST, path)
    }

    fn put(&self, path: &str) -> reqwest::RequestBuilder {
        self.request(reqwest::Method::PUT, path)
    }

    fn delete(&self, path: &str) -> reqwest::RequestBuilder {
        self.request(reqwest::Method::DELETE, path)
    }

    /// Send and expect a success without a body worth reading (e.g. 204).
    async fn empty(&self, req: reqwest::RequestBuilder) -> Result<(), ClientError> {
        self.send(req).await.map(drop)
    }

    fn transport(&self, e: reqwest::Error) -> ClientError {
        let url = self.base.to_string();
        if e.is_connect() {
            ClientError::Connect {
                url,
                why: root_cause(&e),
            }
        } else if e.is_timeout() {
            ClientError::Timeout { url }
        } else {
            ClientError::Transport {
                url,
                why: root_cause(&e),
            }
        }
    }

    async fn send(&self, req: reqwest::RequestBuilder) -> Result<reqwest::Response, ClientError> {
        let resp = req.send().await.map_err(|e| self.transport(e))?;
        let status = resp.status();
        if status.is_success() {
            return Ok(resp);
        }
        let body = resp.bytes().await.map_err(|e| self.transport(e))?;
        Err(error_of(status, &body))
    }

    async fn json<T: DeserializeOwned>(
        &self,
        req: reqwest::RequestBuilder,
    ) -> Result<T, ClientError> {
        let resp = self.send(req).await?;
        let status = resp.status().as_u16();
        let body = resp.bytes().await.map_err(|e| self.transport(e))?;
        serde_json::from_slice(&body).map_err(|e| ClientError::Decode {
            status,
            why: e.to_string(),
        })
    }

    pub async fn health(&self) -> Result<Health, ClientError> {
        self.json(self.get("/healthz")).await
    }

    pub async fn create_vm(&self, req: &CreateVmRequest) -> Result<Vm, ClientError> {
        self.json(self.post("/v1/vms").json(req)).await
    }

    pub async fn list_vms(&self) -> Result<Vec<Vm>, ClientError> {
        let l: VmList = self.json(self.get("/v1/vms")).await?;
        Ok(l.vms)
    }

    pub async fn get_vm(&self, name: &str) -> Result<Vm, ClientError> {
        self.json(self.get(&format!("/v1/vms/{}", seg(name)))).await
    }

    pub async fn start_vm(&self, name: &str) -> Result<Vm, ClientError> {
        self.json(self.post(&format!("/v1/vms/{}/start", seg(name))))
            .await
    }

    pub async fn stop_vm(&self, name: &str) -> Result<Vm, ClientError> {
        self.json(self.post(&format!("/v1/vms/{}/stop", seg(name))))
            .await
    }

    pub async fn delete_vm(&self, name: &str) -> Result<Vm, ClientError> {
        self.json(self.delete(&format!("/v1/vms/{}", seg(name))))
            .await
    }

    /// A short-lived SSH user certificate for `public_key` (OpenSSH text), valid for this VM.
    pub async fn ssh_certificate(
        &self,
        name: &str,
        req: &SshCertificateRequest,
    ) -> Result<SshCertificate, ClientError> {
        self.json(
            self.post(&format!("/v1/vms/{}/ssh/certificate", seg(name)))
                .json(req),
        )
        .await
    }

    /// Run a command in a RUNNING VM to completion (through its init's agent). The HTTP
    /// timeout follows the command's.
    pub async fn exec(&self, name: &str, req: &ExecRequest) -> Result<ExecResponse, ClientError> {
        let wait = Duration::from_millis(u64::from(req.timeout_ms.unwrap_or(60_000)))
            + Duration::from_secs(30);
        self.json(
            self.post(&format!("/v1/vms/{}/exec", seg(name)))
                .json(req)
                .timeout(wait),
        )
        .await
    }

    /// The tail of a service's log in a RUNNING VM (`service` `None`: its main one), at most
    /// `max_bytes` (server default when `None`).
    pub async fn logs(
        &self,
        name: &str,
        service: Option<&str>,
        max_bytes: Option<u32>,
    ) -> Result<Bytes, ClientError> {
        let mut url = format!("/v1/vms/{}/logs", seg(name));
        let mut sep = '?';
        if let Some(s) = service {
            url.push_str(&format!("{sep}service={}", seg(s)));
            sep = '&';
        }
        if let Some(m) = max_bytes {
            url.push_str(&format!("{sep}max_bytes={m}"));
        }
        let resp = self.send(self.get(&url)).await?;
        resp.bytes().await.map_err(|e| self.transport(e))
    }

    /// The services a RUNNING VM's init supervises.
    pub async fn services(&self, name: &str) -> Result<Vec<ServiceStatus>, ClientError> {
        self.json(self.get(&format!("/v1/vms/{}/services", seg(name))))
            .await
    }

    /// The deployment's SSH CA public key.
    pub async fn ssh_ca(&self) -> Result<SshCa, ClientError> {
        self.json(self.get("/v1/ssh/ca")).await
    }

    /// A byte stream to `service` (`ssh`, `tcp-PORT`) of a RUNNING VM, through the control
    /// plane's edge (an HTTP upgrade to `pitwall-connect/1`).
    pub async fn connect(
        &self,
        name: &str,
        service: &str,
    ) -> Result<reqwest::Upgraded, ClientError> {
        let req = self
            .get(&format!("/v1/vms/{}/connect/{}", seg(name), seg(service)))
            .header(reqwest::header::CONNECTION, "upgrade")
            .header(reqwest::header::UPGRADE, CONNECT_PROTOCOL);
        let resp = req.send().await.map_err(|e| self.transport(e))?;
        let status = resp.status();
        if status == reqwest::StatusCode::SWITCHING_PROTOCOLS {
            return resp.upgrade().await.map_err(|e| self.transport(e));
        }
        if status.is_success() {
            return Err(ClientError::Decode {
                status: status.as_u16(),
                why: "the server answered without switching to a stream".into(),
            });
        }
        let body = resp.bytes().await.map_err(|e| self.transport(e))?;
        Err(error_of(status, &body))
    }

    /// The users the VM's owner let connect to it.
    pub async fn vm_grants(&self, name: &str) -> Result<VmGrantList, ClientError> {
        self.json(self.get(&format!("/v1/vms/{}/grants", seg(name))))
            .await
    }

    /// Let `user` connect to the VM's services (idempotent).
    pub async fn grant_vm(&self, name: &str, user: &str) -> Result<VmGrant, ClientError> {
        self.json(self.put(&format!("/v1/vms/{}/grants/{}", seg(name), seg(user))))
            .await
    }

    /// Take `user`'s access back.
    pub async fn revoke_vm_grant(&self, name: &str, user: &str) -> Result<(), ClientError> {
        self.empty(self.delete(&format!("/v1/vms/{}/grants/{}", seg(name), seg(user))))
            .await
    }

    /// Wait until the VM is in `state` (e.g. `RUNNING`), at most `timeout`.
    pub async fn wait_vm(
        &self,
        name: &str,
        state: &str,
        timeout: Duration,
    ) -> Result<Vm, ClientError> {
        let url = format!(
            "/v1/vms/{}/wait?state={}&timeout={}ms",
            seg(name),
            seg(state),
            timeout.as_millis()
        );
        self.json(self.get(&url).timeout(timeout + Duration::from_secs(15)))
            .await
    }

    /// The tail of the VM's captured serial console (at most `max_bytes`, server default when
    /// `None`).
    pub async fn console(&self, name: &str, max_bytes: Option<u32>) -> Result<Bytes, ClientError> {
        let mut url = format!("/v1/vms/{}/console", seg(name));
        if let Some(m) = max_bytes {
            url.push_str(&format!("?max_bytes={m}"));
        }
        let resp = self.send(self.get(&url)).await?;
        resp.bytes().await.map_err(|e| self.transport(e))
    }

    /// Upload an image archive (OCI layout tar or `docker save` tar) under `reference`.
    pub async fn import_image(
        &self,
        reference: &str,
        body: impl Into<reqwest::Body>,
    ) -> Result<Image, ClientError> {
        let url = format!("/v1/images?reference={}", seg(reference));
        self.json(
            self.post(&url)
                .header(reqwest::header::CONTENT_TYPE, "application/x-tar")
                .body(body)
                .timeout(Duration::from_secs(1800)),
        )
        .await
    }

    /// Upload an archive file, streaming it.
    pub async fn import_image_file(
        &self,
        reference: &str,
        path: &Path,
    ) -> Result<Image, ClientError> {
        let file = tokio::fs::File::open(path)
            .await
            .map_err(|source| ClientError::Io {
                what: "cannot open image archive",
                path: path.display().to_string(),
                source,
            })?;
        let stream = tokio_util::io::ReaderStream::new(file);
        self.import_image(reference, reqwest::Body::wrap_stream(stream))
            .await
    }

    /// Have a host pull `reference` from its registry and register it (the image, as
    /// [`Client::import_image`] answers). Waits a little longer than the server gives its
    /// host (30 minutes by default), so the server's own answer arrives first.
    pub async fn pull_image(&self, reference: &str) -> Result<Image, ClientError> {
        let req = PullImageRequest {
            reference: reference.to_string(),
        };
        self.json(
            self.post("/v1/images/pull")
                .json(&req)
                .timeout(Duration::from_secs(1860)),
        )
        .await
    }

    /// [`Client::pull_image`], calling `progress` with each progress report of the host as it
    /// comes (a `Blob` or `Building` [`PullEvent`]).
    pub async fn pull_image_with_progress(
        &self,
        reference: &str,
        mut progress: impl FnMut(&PullEvent),
    ) -> Result<Image, ClientError> {
        let req = PullImageRequest {
            reference: reference.to_string(),
        };
        let resp = self
            .send(
                self.post("/v1/images/pull")
                    .header(reqwest::header::ACCEPT, "application/x-ndjson")
                    .json(&req)
                    .timeout(Duration::from_secs(1860)),
            )
            .await?;
        let status = resp.status().as_u16();
        let mut stream = resp.bytes_stream();
        let mut buf: Vec<u8> = Vec::new();
        loop {
            while let Some(end) = buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = buf.drain(..=end).collect();
                if line.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                let event: PullEvent =
                    serde_json::from_slice(&line).map_err(|e| ClientError::Decode {
                        status,
                        why: format!("a pull progress line: {e}"),
                    })?;
                match event {
                    PullEvent::Done { image } => return Ok(image),
                    PullEvent::Error { status, error } => {
                        return Err(ClientError::Api {
                            status,
                            code: error.code,
                            message: error.message,
                        })
                    }
                    e => progress(&e),
                }
            }
            match stream.next().await {
                Some(chunk) => buf.extend_from_slice(&chunk.map_err(|e| self.transport(e))?),
                None => {
                    return Err(ClientError::Transport {
                        url: self.base.to_string(),
                        why: "the pull's progress stream ended before its outcome; the pull may go on: check `pitwall image list`".into(),
                    })
                }
            }
        }
    }

    pub async fn list_images(&self) -> Result<Vec<Image>, ClientError> {
        let l: ImageList = self.json(self.get("/v1/images")).await?;
        Ok(l.images)
    }

    pub async fn get_image(&self, reference: &str) -> Result<Image, ClientError> {
        self.json(self.get(&format!("/v1/images/{reference}")))
            .await
    }

    /// Remove the image `reference` from its host and the cluster (answers it as it was).
    /// Refused with `image_in_use` while VMs use it unless `force`.
    pub async fn delete_image(&self, reference: &str, force: bool) -> Result<Image, ClientError> {
        let query = if force { "?force=true" } else { "" };
        self.json(self.delete(&format!("/v1/images/{reference}{query}")))
            .await
    }

    /// Follow lifecycle events from `after` (exclusive; 0 = from the start of the log).
    pub async fn events(
        &self,
        after: u64,
    ) -> Result<impl Stream<Item = Result<Event, ClientError>> + use<>, ClientError> {
        let resp = self
            .send(
                self.get("/v1/events")
                    .header("Last-Event-ID", after.to_string()),
            )
            .await?;
        let url = self.base.to_string();
        // Bytes are buffered and only whole frames decoded, so a character split across
        // two chunks stays whole.
        let mut buf: Vec<u8> = Vec::new();
        let stream = resp.bytes_stream().map(move |chunk| {
            chunk.map_err(|e| ClientError::Transport {
                url: url.clone(),
                why: e.to_string(),
            })
        });
        Ok(stream
            .map(move |chunk| -> Vec<Result<Event, ClientError>> {
                let chunk = match chunk {
                    Ok(c) => c,
                    Err(e) => return vec![Err(e)],
                };
                buf.extend_from_slice(&chunk);
                let mut out = Vec::new();
                while let Some(end) = buf.windows(2).position(|w| w == b"\n\n") {
                    let frame: Vec<u8> = buf.drain(..end + 2).collect();
                    let frame = String::from_utf8_lossy(&frame);
                    let data: String = frame
                        .lines()
                        .filter_map(|l| l.strip_prefix("data:"))
                        .map(str::trim_start)
                        .collect::<Vec<_>>()
                        .join("\n");
                    if data.is_empty() {
                        continue; // keep-alive comment
                    }
                    out.push(
                        serde_json::from_str(&data).map_err(|e| ClientError::Decode {
                            status: 200,
                            why: e.to_string(),
                        }),
                    );
                }
                out
            })
            .flat_map(futures::stream::iter))
    }
}

/// Percent-encode one path segment or query value.
fn seg(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

/// The innermost cause of an error chain, as text: what an HTTP client error (a reqwest error
/// wrapping hyper wrapping io) really was, for messages to people.
pub fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}

/// The `Upgrade` token of `GET /v1/vms/{name}/connect/{service}`.
pub const CONNECT_PROTOCOL: &str = "pitwall-connect/1";

/// The error an unsuccessful answer carries (the API's JSON error, else its text).
fn error_of(status: reqwest::StatusCode, body: &[u8]) -> ClientError {
    match serde_json::from_slice::<ErrorBody>(body) {
        Ok(b) => ClientError::Api {
            status: status.as_u16(),
            code: b.error.code,
            message: b.error.message,
        },
        Err(_) => ClientError::Decode {
            status: status.as_u16(),
            why: String::from_utf8_lossy(body).chars().take(500).collect(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_urls_are_refused_with_advice() {
        let e = Client::new("localhost:8080").unwrap_err().to_string();
        assert!(e.contains("http://HOST:PORT"), "{e}");
        assert!(Client::new("ftp://x").is_err());
        assert!(Client::new("http://127.0.0.1:1").is_ok());
    }

    #[tokio::test]
    async fn unreachable_server_says_what_to_do() {
        // port 9 on loopback: nothing listens there
        let c = Client::new("http://127.0.0.1:9").unwrap();
        let e = c.list_vms().await.unwrap_err();
        assert!(matches!(e, ClientError::Connect { .. }), "{e:?}");
        assert!(e.to_string().contains("PITWALL_API"));
    }

    /// Accept one connection, answer `body` with 200, and return the request's head.
    async fn one_request(body: &'static str) -> (String, tokio::task::JoinHandle<String>) {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let server = tokio::spawn(async move {
            let (mut conn, _) = listener.accept().await.unwrap();
            let mut head = Vec::new();
            let mut buf = [0u8; 1024];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = conn.read(&mut buf).await.unwrap();
                head.extend_from_slice(&buf[..n]);
            }
            let reply = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            conn.write_all(reply.as_bytes()).await.unwrap();
            String::from_utf8_lossy(&head).to_lowercase()
        });
        (url, server)
    }

    #[tokio::test]
    async fn the_token_is_sent_as_a_bearer_header() {
        let (url, server) = one_request(r#"{"status":"ok","version":"1","hosts":[]}"#).await;
        let c = Client::new(&url).unwrap().with_token(Some("t0k".into()));
        c.health().await.unwrap();
        let head = server.await.unwrap();
        assert!(head.contains("authorization: bearer t0k\r\n"), "{head}");
    }

    #[tokio::test]
    async fn without_a_token_no_authorization_is_sent() {
        let (url, server) = one_request(r#"{"status":"ok","version":"1","hosts":[]}"#).await;
        Client::new(&url).unwrap().health().await.unwrap();
        assert!(!server.await.unwrap().contains("authorization"));
    }

    #[test]
    fn pem_that_is_not_an_identity_or_ca_is_refused_up_front() {
        let e = Client::builder()
            .identity_pem(b"not pem".to_vec())
            .build("https://127.0.0.1:1")
            .unwrap_err();
        assert!(matches!(e, ClientError::Tls { .. }), "{e:?}");
        let e = Client::builder()
            .ca_pem(b"not pem".to_vec())
            .build("https://127.0.0.1:1")
            .unwrap_err();
        assert!(matches!(e, ClientError::Tls { .. }), "{e:?}");
    }
}
