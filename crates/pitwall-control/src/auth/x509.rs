//! Client certificates with embedded policies (Albatross' model): the deployment CA, the
//! signing of first-level certificates for users, and the reading of a chain presented on an
//! mTLS connection into a [`CertIdentity`].
//!
//! The deployment CA (`ca.pem`, `ca-key.pem` in the directory given to
//! [`DeploymentCa::open`]; ECDSA P-256, self-signed, no policy) is generated on first start.
//! It signs, through the API, *first-level* certificates whose subject CN is forced to the
//! caller's username; holders of a CA certificate sign narrower ones locally
//! (`pitwall cert sign`). A presented chain acts for the CN of its first-level certificate;
//! every certificate of it must lie within the policy of the one above
//! ([`pitwall_api::cert::verify_policy_nesting`]). What this module does *not* do: compare the
//! first-level policy with the user's current policy, and look serials up in the revocation
//! store; the caller does both with [`CertIdentity::policies`] and [`CertIdentity::serials`].
//!
//! The certificate code itself is `pitwall_api::cert` (the CLI signs with it too).

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use pitwall_api::cert::{self as apicert, CertError, CertInfo, SignedCert};
use rcgen::{
    CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use rustls::pki_types::CertificateDer;
use time::OffsetDateTime;

/// The deployment CA's certificate, in the CA directory.
pub const CA_FILE: &str = "ca.pem";
/// Its private key (mode 0600).
pub const CA_KEY_FILE: &str = "ca-key.pem";
/// How long a new deployment CA is valid; every certificate it signs ends before it does.
pub const CA_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// How long the TLS listener's certificate is valid (it is made anew at every start).
const SERVER_CERT_VALIDITY: Duration = Duration::from_secs(365 * 24 * 3600);
/// Longest chain accepted: the first-level certificate and the CA levels it may have below.
pub const MAX_CHAIN_LEN: usize = apicert::FIRST_LEVEL_PATH_LEN as usize + 2;

/// Why the deployment CA cannot be used, or a presented chain is refused.
#[derive(Debug, thiserror::Error)]
pub enum X509Error {
    #[error("cannot read {}: {source}", .path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write {}: {source}", .path.display())]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{} exists but {} does not: restore the missing file, or remove both to make a new CA (every certificate issued so far then stops working)", .present.display(), .missing.display())]
    HalfCa { present: PathBuf, missing: PathBuf },
    #[error("the deployment CA in {} is unusable: {detail}", .dir.display())]
    BadCa { dir: PathBuf, detail: String },
    #[error("the username is empty: a certificate must act for someone")]
    NoUsername,
    #[error("no client certificate was presented")]
    NoCertificate,
    #[error("the client chain has {0} certificates, more than the {MAX_CHAIN_LEN} allowed")]
    ChainTooLong(usize),
    #[error("the first-level certificate {0} has no common name, so it acts for no one")]
    NoCommonName(String),
    #[error("client certificate refused: {0}")]
    Chain(Box<CertError>),
    #[error("cannot make a certificate: {0}")]
    Cert(Box<CertError>),
}

impl From<CertError> for X509Error {
    fn from(e: CertError) -> Self {
        X509Error::Cert(Box::new(e))
    }
}

fn refused(e: CertError) -> X509Error {
    X509Error::Chain(Box::new(e))
}

/// Who a presented chain acts for, and under which policies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertIdentity {
    /// CN of the first-level certificate (forced to the username when it was issued).
    pub username: String,
    /// Lower-case hex, first-level first; the last one is the presented leaf.
    pub serials: Vec<String>,
    /// The policy of each certificate, in the order of `serials`. Each is within the one
    /// before it; the caller checks the first against the user's current policy.
    pub policies: Vec<pitwall_core::Policy>,
    /// `/user:<username>/c:<serial>/…/`, first-level first.
    pub charge_path: String,
}

impl CertIdentity {
    /// The presented leaf's serial.
    pub fn leaf_serial(&self) -> &str {
        self.serials.last().map(String::as_str).unwrap_or_default()
    }
}

/// `pitwall_api::Policy` (lists) to the server's `pitwall_core::Policy` (sets).
pub fn core_policy(p: &pitwall_api::Policy) -> pitwall_core::Policy {
    pitwall_core::Policy {
        max_vms: p.max_vms,
        max_vcpus: p.max_vcpus,
        max_memory_mib: p.max_memory_mib,
        max_disk_mib: p.max_disk_mib,
        networks: p.networks.as_ref().map(|n| n.iter().cloned().collect()),
        hosts: p.hosts.as_ref().map(|h| h.iter().cloned().collect()),
    }
}

/// `pitwall_core::Policy` to the wire form.
pub fn api_policy(p: &pitwall_core::Policy) -> pitwall_api::Policy {
    pitwall_api::Policy {
        max_vms: p.max_vms,
        max_vcpus: p.max_vcpus,
        max_memory_mib: p.max_memory_mib,
        max_disk_mib: p.max_disk_mib,
        networks: p.networks.as_ref().map(|n| n.iter().cloned().collect()),
        hosts: p.hosts.as_ref().map(|h| h.iter().cloned().collect()),
    }
}

/// The deployment CA: its certificate and key, loaded from (or first written to) a directory.
pub struct DeploymentCa {
    dir: PathBuf,
    cert_pem: String,
    key_pem: String,
    info: CertInfo,
}

impl std::fmt::Debug for DeploymentCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeploymentCa")
            .field("dir", &self.dir)
            .field("serial", &self.info.serial_hex)
            .field("not_after", &self.info.not_after)
            .finish_non_exhaustive()
    }
}

impl DeploymentCa {
    /// Loads `dir/ca.pem` and `dir/ca-key.pem`, generating both (the key with mode 0600,
    /// each written atomically) when neither exists.
    pub fn open(dir: &Path) -> Result<Self, X509Error> {
        let cert_path = dir.join(CA_FILE);
        let key_path = dir.join(CA_KEY_FILE);
        let (cert_pem, key_pem) = match (read_opt(&cert_path)?, read_opt(&key_path)?) {
            (Some(c), Some(k)) => {
                warn_if_readable_by_others(&key_path);
                (c, k)
            }
            (None, None) => {
                std::fs::create_dir_all(dir).map_err(|source| X509Error::Write {
                    path: dir.to_path_buf(),
                    source,
                })?;
                let (c, k) = apicert::generate_root_ca("Pitwall deployment CA", CA_VALIDITY)?;
                // The key first: a crash in between leaves a key without certificate, which
                // the next start reports rather than silently replacing.
                write_atomically(&key_path, k.as_bytes(), 0o600)?;
                write_atomically(&cert_path, c.as_bytes(), 0o644)?;
                tracing::info!(dir = %dir.display(), "deployment CA generated");
                (c, k)
            }
            (Some(_), None) => {
                return Err(X509Error::HalfCa {
                    present: cert_path,
                    missing: key_path,
                })
            }
            (None, Some(_)) => {
                return Err(X509Error::HalfCa {
                    present: key_path,
                    missing: cert_path,
                })
            }
        };
        let bad = |detail: String| X509Error::BadCa {
            dir: dir.to_path_buf(),
            detail,
        };
        let info = apicert::parse_chain_pem(&cert_pem)
            .map_err(|e| bad(e.to_string()))?
            .into_iter()
            .next()
            .ok_or_else(|| bad("ca.pem holds no certificate".into()))?;
        if !info.is_ca {
            return Err(bad("ca.pem is not a CA certificate".into()));
        }
        let key = KeyPair::from_pem(&key_pem).map_err(|e| bad(format!("ca-key.pem: {e}")))?;
        let (_, parsed) = x509_parser::parse_x509_certificate(&info.der)
            .map_err(|e| bad(format!("ca.pem: {e}")))?;
        if parsed.public_key().raw != rcgen::PublicKeyData::subject_public_key_info(&key) {
            return Err(bad("ca-key.pem is not the key of ca.pem".into()));
        }
        if info.not_after <= OffsetDateTime::now_utc() {
            return Err(bad(format!(
                "the CA expired at {}: remove both files to make a new one",
                info.not_after
            )));
        }
        Ok(Self {
            dir: dir.to_path_buf(),
            cert_pem,
            key_pem,
            info,
        })
    }

    /// The CA certificate, PEM: what clients trust.
    pub fn ca_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA certificate, DER.
    pub fn ca_der(&self) -> CertificateDer<'static> {
        CertificateDer::from(self.info.der.clone())
    }

    pub fn serial(&self) -> &str {
        &self.info.serial_hex
    }

    pub fn not_after(&self) -> OffsetDateTime {
        self.info.not_after
    }

    /// Signs a first-level certificate for `username` (the CSR's subject is ignored) with
    /// `policy` embedded. The caller has checked `policy` against the user's own and bounded
    /// `validity`.
    pub fn issue(
        &self,
        csr_pem: &str,
        username: &str,
        policy: &pitwall_api::Policy,
        ca: bool,
        validity: Duration,
    ) -> Result<SignedCert, X509Error> {
        if username.is_empty() {
            return Err(X509Error::NoUsername);
        }
        let signed = apicert::sign_csr_as_root(
            csr_pem,
            &self.cert_pem,
            &self.key_pem,
            username,
            policy,
            ca,
            validity,
        )?;
        tracing::info!(
            user = username, serial = %signed.serial_hex, ca, not_after = %signed.not_after,
            "first-level certificate issued"
        );
        Ok(signed)
    }

    /// A fresh certificate for the TLS listener, signed by the CA, with SANs for `names` (DNS
    /// names or IP addresses) and extended key usage serverAuth: `(cert_pem, key_pem)`.
    pub fn server_certificate(&self, names: &[String]) -> Result<(String, String), X509Error> {
        let (cert_pem, key) = self.server_certificate_key(names)?;
        Ok((cert_pem, key.serialize_pem()))
    }

    pub(crate) fn server_certificate_key(
        &self,
        names: &[String],
    ) -> Result<(String, KeyPair), X509Error> {
        let sign_err = |e: rcgen::Error| X509Error::from(CertError::Sign(e.to_string()));
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(sign_err)?;
        let mut params = CertificateParams::new(names.to_vec()).map_err(sign_err)?;
        let mut dn = DistinguishedName::new();
        dn.push(
            DnType::CommonName,
            names.first().map_or("pitwall", String::as_str),
        );
        params.distinguished_name = dn;
        let now = OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::minutes(5);
        params.not_after = std::cmp::min(
            now + time::Duration::try_from(SERVER_CERT_VALIDITY).unwrap_or(time::Duration::DAY),
            self.info.not_after,
        );
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        if params.subject_alt_names.is_empty() {
            params.subject_alt_names =
                vec![SanType::DnsName("localhost".try_into().map_err(sign_err)?)];
        }
        let ca_key = KeyPair::from_pem(&self.key_pem).map_err(sign_err)?;
        let issuer = Issuer::from_ca_cert_der(&self.ca_der(), ca_key).map_err(sign_err)?;
        let cert = params.signed_by(&key, &issuer).map_err(sign_err)?;
        Ok((cert.pem(), key))
    }

    /// Reads a chain presented by a TLS client (leaf first; the deployment CA may end it) into
    /// the identity it acts for. The TLS layer has verified it already; this checks again
    /// the issuer/subject linkage, every signature, the validity times, then the nesting of
    /// the policies.
    pub fn verify_client_chain(
        &self,
        chain: &[CertificateDer<'_>],
    ) -> Result<CertIdentity, X509Error> {
        self.verify_client_chain_at(chain, OffsetDateTime::now_utc())
    }

    /// [`verify_client_chain`](Self::verify_client_chain) at a given time.
    pub fn verify_client_chain_at(
        &self,
        chain: &[CertificateDer<'_>],
        now: OffsetDateTime,
    ) -> Result<CertIdentity, X509Error> {
        let mut ders: Vec<&[u8]> = chain.iter().map(|c| c.as_ref()).collect();
        if ders.len() > 1 && ders.last() == Some(&self.info.der.as_slice()) {
            ders.pop();
        }
        if ders.is_empty() {
            return Err(X509Error::NoCertificate);
        }
        if ders.len() > MAX_CHAIN_LEN {
            return Err(X509Error::ChainTooLong(ders.len()));
        }
        let infos = ders
            .iter()
            .enumerate()
            .map(|(i, der)| {
                apicert::parse_cert_der(der, &format!("certificate {} of the chain", i + 1))
            })
            .collect::<Result<Vec<_>, _>>()
            .map_err(refused)?;
        apicert::verify_chain_links(&infos, &self.info, now).map_err(refused)?;
        apicert::verify_policy_nesting(&infos).map_err(refused)?;

        let first = infos.last().ok_or(X509Error::NoCertificate)?;
        if first.subject_cn.is_empty() {
            return Err(X509Error::NoCommonName(first.serial_hex.clone()));
        }
        let username = first.subject_cn.clone();
        let serials: Vec<String> = infos.iter().rev().map(|c| c.serial_hex.clone()).collect();
        let policies = infos
            .iter()
            .rev()
            .filter_map(|c| c.policy.as_ref().map(core_policy))
            .collect();
        let mut charge_path = format!("/user:{username}/");
        for s in &serials {
            charge_path.push_str(&format!("c:{s}/"));
        }
        Ok(CertIdentity {
            username,
            serials,
            policies,
            charge_path,
        })
    }
}

pub(crate) fn read_opt(path: &Path) -> Result<Option<String>, X509Error> {
    match std::fs::read_to_string(path) {
        Ok(s) => Ok(Some(s)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(X509Error::Read {
            path: path.to_path_buf(),
            source,
        }),
    }
}

pub(crate) fn warn_if_readable_by_others(path: &Path) {
    if let Ok(meta) = std::fs::metadata(path) {
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            tracing::warn!(
                path = %path.display(), mode = format_args!("{mode:o}"),
                "a CA key is readable by others: chmod 600 it"
            );
        }
    }
}

/// Writes `contents` to a staged file (created with `mode`, synced) and renames it onto
/// `path`, which is therefore never half-written. Refuses to replace an existing `path`.
pub(crate) fn write_atomically(path: &Path, contents: &[u8], mode: u32) -> Result<(), X509Error> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let staged = path.with_file_name(format!(".{name}.tmp"));
    let werr = |path: &Path| {
        let path = path.to_path_buf();
        move |source| X509Error::Write { path, source }
    };
    match std::fs::remove_file(&staged) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(werr(&staged)(e)),
        _ => {}
    }
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&staged)
        .map_err(werr(&staged))?;
    file.write_all(contents).map_err(werr(&staged))?;
    file.sync_all().map_err(werr(&staged))?;
    drop(file);
    // hard_link fails if `path` appeared meanwhile (another process made a CA): never
    // replace a CA.
    let linked = std::fs::hard_link(&staged, path).map_err(werr(path));
    let _ = std::fs::remove_file(&staged);
    linked?;
    if let Some(parent) = path.parent() {
        if let Ok(d) = std::fs::File::open(parent) {
            let _ = d.sync_all();
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
