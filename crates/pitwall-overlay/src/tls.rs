//! Mutual TLS for the overlay's QUIC connections (rustls 0.23, `ring` provider, TLS 1.3 only,
//! as QUIC requires).
//!
//! Both ends trust only the deployment CA. The edge presents a server certificate for its
//! configured name; each terminator presents a client certificate whose subject CN is
//! `host:<hostname>`: the edge verifies the chain (`WebPkiClientVerifier`) and refuses, during
//! the handshake, a certificate whose CN is not of that form.

use std::fmt;
use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::WebPkiClientVerifier;
use rustls::{DigitallySignedStruct, DistinguishedName, RootCertStore, SignatureScheme};

use crate::wire::ALPN;
use crate::OverlayError;

/// The CN prefix of a host's client certificate.
pub const HOST_CN_PREFIX: &str = "host:";

/// One end's TLS material: the deployment CA to trust, and its own chain and key, all PEM.
#[derive(Clone)]
pub struct TlsIdentity {
    /// The deployment CA certificate(s) (PEM).
    pub ca_pem: String,
    /// This end's certificate, leaf first, optionally followed by intermediates (PEM).
    pub cert_pem: String,
    /// This end's private key (PEM: PKCS#8, PKCS#1 or SEC1).
    pub key_pem: String,
}

impl fmt::Debug for TlsIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsIdentity")
            .field("ca_pem", &format_args!("{} bytes", self.ca_pem.len()))
            .field("cert_pem", &format_args!("{} bytes", self.cert_pem.len()))
            .field("key_pem", &"<redacted>")
            .finish()
    }
}

impl TlsIdentity {
    pub fn from_pem(
        ca_pem: impl Into<String>,
        cert_pem: impl Into<String>,
        key_pem: impl Into<String>,
    ) -> Self {
        Self {
            ca_pem: ca_pem.into(),
            cert_pem: cert_pem.into(),
            key_pem: key_pem.into(),
        }
    }

    /// Reads the three PEM files.
    pub fn from_files(ca: &Path, cert: &Path, key: &Path) -> Result<Self, OverlayError> {
        let read = |what, path: &Path| {
            std::fs::read_to_string(path).map_err(|source| OverlayError::ReadFile {
                what,
                path: path.to_path_buf(),
                source,
            })
        };
        Ok(Self {
            ca_pem: read("the deployment CA certificate", ca)?,
            cert_pem: read("the overlay certificate", cert)?,
            key_pem: read("the overlay private key", key)?,
        })
    }

    fn roots(&self) -> Result<Arc<RootCertStore>, OverlayError> {
        let mut roots = RootCertStore::empty();
        for der in certs(&self.ca_pem, "deployment CA certificate")? {
            roots.add(der).map_err(|e| OverlayError::Pem {
                what: "deployment CA certificate",
                reason: e.to_string(),
            })?;
        }
        Ok(Arc::new(roots))
    }

    fn chain(&self) -> Result<Vec<CertificateDer<'static>>, OverlayError> {
        certs(&self.cert_pem, "overlay certificate")
    }

    fn key(&self) -> Result<PrivateKeyDer<'static>, OverlayError> {
        PrivateKeyDer::from_pem_slice(self.key_pem.as_bytes()).map_err(|e| OverlayError::Pem {
            what: "overlay private key",
            reason: e.to_string(),
        })
    }
}

fn certs(pem: &str, what: &'static str) -> Result<Vec<CertificateDer<'static>>, OverlayError> {
    let out = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| OverlayError::Pem {
            what,
            reason: e.to_string(),
        })?;
    if out.is_empty() {
        return Err(OverlayError::Pem {
            what,
            reason: "no CERTIFICATE block found".to_string(),
        });
    }
    Ok(out)
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn tls_err(what: &'static str) -> impl FnOnce(rustls::Error) -> OverlayError {
    move |e| OverlayError::Tls {
        what,
        reason: e.to_string(),
    }
}

/// The edge's rustls server configuration: client certificates mandatory, CN `host:<name>`.
pub(crate) fn server_crypto(
    id: &TlsIdentity,
) -> Result<quinn::crypto::rustls::QuicServerConfig, OverlayError> {
    let provider = provider();
    let inner = WebPkiClientVerifier::builder_with_provider(id.roots()?, provider.clone())
        .build()
        .map_err(|e| OverlayError::Tls {
            what: "client verifier",
            reason: e.to_string(),
        })?;
    let verifier = Arc::new(HostCertVerifier { inner });
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(tls_err("server protocol versions"))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(id.chain()?, id.key()?)
        .map_err(tls_err("edge certificate and key"))?;
    cfg.alpn_protocols = vec![ALPN.to_vec()];
    quinn::crypto::rustls::QuicServerConfig::try_from(cfg).map_err(|e| OverlayError::Tls {
        what: "QUIC server configuration",
        reason: e.to_string(),
    })
}

/// The terminator's rustls client configuration: trusts the deployment CA only.
pub(crate) fn client_crypto(
    id: &TlsIdentity,
) -> Result<quinn::crypto::rustls::QuicClientConfig, OverlayError> {
    let roots = id.roots()?;
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(tls_err("client protocol versions"))?
        .with_root_certificates(roots)
        .with_client_auth_cert(id.chain()?, id.key()?)
        .map_err(tls_err("host certificate and key"))?;
    cfg.alpn_protocols = vec![ALPN.to_vec()];
    quinn::crypto::rustls::QuicClientConfig::try_from(cfg).map_err(|e| OverlayError::Tls {
        what: "QUIC client configuration",
        reason: e.to_string(),
    })
}

/// The host name in a certificate whose subject CN is `host:<hostname>`.
pub fn host_from_cert(der: &[u8]) -> Result<String, String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| format!("unparsable certificate: {e}"))?;
    let cn = cert
        .subject()
        .iter_common_name()
        .next()
        .ok_or("the certificate subject has no CN")?
        .as_str()
        .map_err(|e| format!("the certificate CN is not a string: {e}"))?;
    let host = cn
        .strip_prefix(HOST_CN_PREFIX)
        .ok_or_else(|| format!("certificate CN {cn:?} is not of the form host:<hostname>"))?;
    check_host(host)?;
    Ok(host.to_string())
}

/// A host name: 1..=253 bytes of ASCII letters, digits, `-`, `_`, `.`.
pub(crate) fn check_host(host: &str) -> Result<(), String> {
    if host.is_empty() || host.len() > 253 {
        return Err(format!("host name {host:?} must be 1 to 253 bytes long"));
    }
    if !host
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    {
        return Err(format!(
            "host name {host:?} may hold only ASCII letters, digits, '-', '_' and '.'"
        ));
    }
    Ok(())
}

/// `WebPkiClientVerifier` plus the CN rule, so a wrong certificate fails the handshake.
#[derive(Debug)]
struct HostCertVerifier {
    inner: Arc<dyn ClientCertVerifier>,
}

impl ClientCertVerifier for HostCertVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verified = self
            .inner
            .verify_client_cert(end_entity, intermediates, now)
            .inspect_err(|e| tracing::warn!(error = %e, "overlay client certificate refused"))?;
        if let Err(reason) = host_from_cert(end_entity) {
            tracing::warn!(%reason, "overlay client certificate refused");
            return Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::ApplicationVerificationFailure,
            ));
        }
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// The host name of an established connection's client (edge side).
pub(crate) fn peer_host(conn: &quinn::Connection) -> Result<String, String> {
    let identity = conn
        .peer_identity()
        .ok_or("the peer presented no certificate")?;
    let chain = identity
        .downcast::<Vec<CertificateDer<'static>>>()
        .map_err(|_| "the peer identity is not an X.509 chain")?;
    let leaf = chain.first().ok_or("the peer certificate chain is empty")?;
    host_from_cert(leaf)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pki::OverlayCa;

    #[test]
    fn the_host_name_comes_from_the_cn() {
        let ca = OverlayCa::generate("test CA").expect("ca");
        let host = ca.issue_host("node-1.example").expect("host");
        let der = certs(&host.cert_pem, "cert").expect("pem").remove(0);
        assert_eq!(host_from_cert(&der).expect("host"), "node-1.example");
        let edge = ca.issue_edge(&["edge.example"]).expect("edge");
        let der = certs(&edge.cert_pem, "cert").expect("pem").remove(0);
        assert!(host_from_cert(&der).is_err());
    }

    #[test]
    fn broken_pem_says_which_file() {
        let id = TlsIdentity::from_pem("nope", "nope", "nope");
        let Err(err) = client_crypto(&id) else {
            panic!("a broken CA PEM was accepted");
        };
        assert!(err.to_string().contains("deployment CA"), "{err}");
    }
}
