//! Issuing overlay certificates with `rcgen`: a deployment CA (generated, or loaded from PEM),
//! host client certificates (CN `host:<hostname>`, extended key usage clientAuth) and edge
//! server certificates (SANs, serverAuth). Tests use it; a daemon may use it to issue a
//! host's certificate from the deployment CA.

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};

use crate::tls::{check_host, TlsIdentity, HOST_CN_PREFIX};
use crate::OverlayError;

/// A certificate and its private key, both PEM.
#[derive(Clone)]
pub struct IssuedCert {
    pub cert_pem: String,
    pub key_pem: String,
}

impl std::fmt::Debug for IssuedCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuedCert")
            .field("cert_pem", &self.cert_pem)
            .field("key_pem", &"<redacted>")
            .finish()
    }
}

/// A CA that signs overlay certificates.
pub struct OverlayCa {
    cert_pem: String,
    key_pem: String,
}

fn issue_err(e: rcgen::Error) -> OverlayError {
    OverlayError::Issue(e.to_string())
}

impl OverlayCa {
    /// A fresh self-signed CA (ECDSA P-256) named `common_name`.
    pub fn generate(common_name: &str) -> Result<Self, OverlayError> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(issue_err)?;
        let mut params = CertificateParams::new(Vec::<String>::new()).map_err(issue_err)?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, common_name);
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let cert = params.self_signed(&key).map_err(issue_err)?;
        Ok(Self {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// An existing CA (e.g. the deployment CA on disk).
    pub fn from_pem(cert_pem: impl Into<String>, key_pem: impl Into<String>) -> Self {
        Self {
            cert_pem: cert_pem.into(),
            key_pem: key_pem.into(),
        }
    }

    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA's private key (PEM), to keep it on disk.
    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }

    /// A terminator's client certificate: CN `host:<host>`.
    pub fn issue_host(&self, host: &str) -> Result<IssuedCert, OverlayError> {
        check_host(host).map_err(OverlayError::Issue)?;
        self.issue_client_with_cn(&format!("{HOST_CN_PREFIX}{host}"))
    }

    /// A client certificate with any CN (tests use it for the refusal of a CN without `host:`).
    pub fn issue_client_with_cn(&self, cn: &str) -> Result<IssuedCert, OverlayError> {
        let mut params = CertificateParams::new(Vec::<String>::new()).map_err(issue_err)?;
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.issue(params, cn)
    }

    /// The edge's server certificate, with `names` (DNS names or IP addresses) as SANs.
    pub fn issue_edge(&self, names: &[&str]) -> Result<IssuedCert, OverlayError> {
        let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        let cn = names.first().cloned().unwrap_or_else(|| "edge".to_string());
        let mut params = CertificateParams::new(names).map_err(issue_err)?;
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        self.issue(params, &cn)
    }

    /// The TLS identity of an end holding `cert`, trusting this CA.
    pub fn identity(&self, cert: &IssuedCert) -> TlsIdentity {
        TlsIdentity::from_pem(&self.cert_pem, &cert.cert_pem, &cert.key_pem)
    }

    fn issue(&self, mut params: CertificateParams, cn: &str) -> Result<IssuedCert, OverlayError> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(issue_err)?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, cn);
        params.distinguished_name = dn;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.use_authority_key_identifier_extension = true;
        let ca_key = KeyPair::from_pem(&self.key_pem).map_err(issue_err)?;
        let issuer = Issuer::from_ca_cert_pem(&self.cert_pem, ca_key).map_err(issue_err)?;
        let cert = params.signed_by(&key, &issuer).map_err(issue_err)?;
        Ok(IssuedCert {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}
