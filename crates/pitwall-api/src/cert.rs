//! X.509 certificates with embedded policies, as in Albatross: a certificate carries a Pitwall
//! [`Policy`] in a private extension, and a holder of a CA certificate may sign narrower
//! certificates for others, offline. The chain (leaf first) is then presented on an mTLS
//! connection; the server takes the identity from the first-level certificate (the one the
//! deployment CA signed through `POST /v1/certificates`) and checks every policy against the
//! one above it ([`verify_policy_nesting`]).
//!
//! This module is what the CLI needs: key and CSR generation ([`generate_key_and_csr`]), local
//! signing with an intermediate ([`sign_csr`]), chain parsing ([`parse_chain_pem`]) and the
//! checks. The server uses the same code to sign with the deployment CA
//! ([`sign_csr_as_root`]) and to read presented chains. ASN.1 and signatures are left to
//! `rcgen` (writing) and `x509-parser` (reading); the only DER written by hand is the one
//! UTF8String of the policy extension.
//!
//! # The policy extension
//!
//! * OID [`POLICY_OID`] = `1.3.6.1.4.1.99999.1`. **This arc is not registered with IANA**: it
//!   is a placeholder beyond the enterprise numbers assigned at the time of writing. Before
//!   certificates are exchanged with anything but Pitwall, register a Private Enterprise
//!   Number and change [`POLICY_OID_ARCS`] (old certificates then stop being accepted).
//! * Non-critical (other software may ignore it; Pitwall refuses a chain whose certificate
//!   lacks it).
//! * `extnValue` (the OCTET STRING of every extension) holds the DER of one `UTF8String`
//!   whose text is the policy's canonical JSON: the fields of [`Policy`] in declaration order,
//!   absent limits omitted, host and network lists sorted and without duplicates
//!   (e.g. `{"max_vms":3,"hosts":["h1"]}`).
//!
//! The within-check ([`check_within`]) mirrors `pitwall_core::Policy::check_within` (this
//! crate must not link `pitwall-core`): a limit must be present and at most the parent's when
//! the parent has one; a host or network list must be present and a subset of the parent's
//! when the parent has one.

use std::collections::BTreeSet;
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, CustomExtension,
    DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    PublicKeyData, SerialNumber,
};
use time::OffsetDateTime;
use x509_parser::certificate::X509Certificate;
use x509_parser::prelude::FromDer;

use crate::Policy;

/// The policy extension's OID, dotted (not registered: see the module documentation).
pub const POLICY_OID: &str = "1.3.6.1.4.1.99999.1";
/// [`POLICY_OID`] as arcs.
pub const POLICY_OID_ARCS: &[u64] = &[1, 3, 6, 1, 4, 1, 99999, 1];
/// How many levels of CA certificates a first-level CA certificate may have below it
/// (its basicConstraints pathLenConstraint); each level down has one fewer.
pub const FIRST_LEVEL_PATH_LEN: u8 = 3;
/// Largest policy extension accepted (a policy is a few hundred bytes).
const MAX_POLICY_EXTENSION_BYTES: usize = 16 * 1024;
/// notBefore is set this far in the past, so that a verifier whose clock is slightly behind
/// still accepts a fresh certificate.
const CLOCK_SKEW: time::Duration = time::Duration::minutes(5);

/// Why a certificate operation failed; every message says what to do about it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CertError {
    #[error("{what} is not valid PEM ({reason}): pass the PEM file written by `pitwall cert`")]
    Pem { what: String, reason: String },
    #[error("{what} contains no certificate: pass a PEM file with at least one CERTIFICATE block")]
    NoCertificate { what: String },
    #[error("cannot parse {what} as an X.509 certificate: {reason}")]
    Parse { what: String, reason: String },
    #[error(
        "the certificate signing request is invalid ({0}): create one with `pitwall cert request`"
    )]
    Csr(String),
    #[error("the certificate signing request has no common name: create it with `pitwall cert request --name NAME`")]
    CsrWithoutName,
    #[error(
        "the private key is invalid ({0}): pass the PEM key written by `pitwall cert request`"
    )]
    Key(String),
    #[error("the private key does not belong to certificate {serial} ({cn}): pass the key its CSR was made with")]
    KeyMismatch { serial: String, cn: String },
    #[error("certificate {serial} ({cn}) is not a CA certificate and cannot sign others: ask for one with `--ca`")]
    NotCa { serial: String, cn: String },
    #[error("certificate {serial} ({cn}) may not sign CA certificates (its path length is used up): sign without `--ca`")]
    PathLenExhausted { serial: String, cn: String },
    #[error("certificate {serial} ({cn}) carries no Pitwall policy extension ({POLICY_OID}): only certificates issued through Pitwall can sign or be presented")]
    NoPolicy { serial: String, cn: String },
    #[error("the Pitwall policy extension is malformed: {0}")]
    PolicyExtension(String),
    #[error("the requested policy exceeds that of the issuer {serial} ({cn}): {}; ask for at most the issuer's policy", .excess.join("; "))]
    ExceedsIssuer {
        serial: String,
        cn: String,
        excess: Vec<String>,
    },
    #[error("certificate {serial} ({cn}) exceeds the policy of its issuer {parent}: {}; the chain is refused, sign a narrower certificate", .excess.join("; "))]
    ExceedsParent {
        serial: String,
        cn: String,
        /// The issuer, as `serial (cn)`.
        parent: String,
        excess: Vec<String>,
    },
    #[error("the validity must be positive and at most 100 years, not {0:?}")]
    Validity(Duration),
    #[error("the certificate would be valid until {not_after}, beyond its issuer {serial} ({cn}), valid until {issuer_not_after}: ask for a shorter validity")]
    ValidityBeyondIssuer {
        serial: String,
        cn: String,
        not_after: OffsetDateTime,
        issuer_not_after: OffsetDateTime,
    },
    #[error("certificate {serial} ({cn}) {problem}: get a new one")]
    NotValidNow {
        serial: String,
        cn: String,
        /// `expired at …` or `is not valid before …`.
        problem: String,
    },
    #[error("the chain is empty: present at least the leaf certificate")]
    EmptyChain,
    #[error("certificate {serial} ({cn}) was not issued by the next certificate in the chain, {parent}: {reason}; present the chain leaf first, as `pitwall cert sign` writes it")]
    Linkage {
        serial: String,
        cn: String,
        /// The next certificate (or the trust anchor), as `serial (cn)`.
        parent: String,
        reason: &'static str,
    },
    #[error("cannot sign the certificate: {0}")]
    Sign(String),
}

/// A certificate just signed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedCert {
    /// Lower-case hex, no leading zeros.
    pub serial_hex: String,
    /// The new certificate alone, PEM.
    pub cert_pem: String,
    pub not_after: OffsetDateTime,
}

/// What Pitwall reads from one certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    /// Lower-case hex, no leading zeros.
    pub serial_hex: String,
    /// First common name of the subject (empty when there is none).
    pub subject_cn: String,
    /// First common name of the issuer (empty when there is none).
    pub issuer_cn: String,
    /// The Pitwall policy extension; `None` when absent (the deployment CA, foreign
    /// certificates).
    pub policy: Option<Policy>,
    pub is_ca: bool,
    /// basicConstraints pathLenConstraint of a CA certificate.
    pub path_len: Option<u32>,
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
    /// The certificate, DER.
    pub der: Vec<u8>,
}

impl CertInfo {
    /// The certificate as a PEM `CERTIFICATE` block.
    pub fn to_pem(&self) -> String {
        pem::encode_config(
            &pem::Pem::new("CERTIFICATE", self.der.clone()),
            pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF),
        )
    }

    /// Serial and CN, how errors name a certificate.
    fn ids(&self) -> (String, String) {
        (self.serial_hex.clone(), self.subject_cn.clone())
    }

    /// `serial (cn)`.
    pub fn name(&self) -> String {
        format!("{} ({})", self.serial_hex, self.subject_cn)
    }
}

// ---------------------------------------------------------------------------------------------
// Policies

/// `policy` with its host and network lists sorted and deduplicated: the form that is
/// embedded.
pub fn canonical_policy(policy: &Policy) -> Policy {
    let norm = |l: &Option<Vec<String>>| {
        l.as_ref().map(|v| {
            v.iter()
                .cloned()
                .collect::<BTreeSet<_>>()
                .into_iter()
                .collect()
        })
    };
    Policy {
        networks: norm(&policy.networks),
        hosts: norm(&policy.hosts),
        ..policy.clone()
    }
}

/// `Ok` when `policy` lies within `parent`; otherwise one entry per exceeded limit, e.g.
/// `max_vms 6 > parent's 5` (the wording of `pitwall_core::Policy::check_within`).
pub fn check_within(policy: &Policy, parent: &Policy) -> Result<(), Vec<String>> {
    fn fmt_limit(v: Option<u64>) -> String {
        v.map_or_else(|| "unlimited".to_string(), |v| v.to_string())
    }
    fn set(v: &Option<Vec<String>>) -> Option<BTreeSet<&str>> {
        v.as_ref().map(|v| v.iter().map(String::as_str).collect())
    }
    fn fmt_set(v: &Option<BTreeSet<&str>>) -> String {
        match v {
            None => "any".to_string(),
            Some(s) if s.is_empty() => "none".to_string(),
            Some(s) => s.iter().copied().collect::<Vec<_>>().join(","),
        }
    }
    let mut excess = Vec::new();
    let nums = [
        ("max_vms", policy.max_vms, parent.max_vms),
        ("max_vcpus", policy.max_vcpus, parent.max_vcpus),
        (
            "max_memory_mib",
            policy.max_memory_mib,
            parent.max_memory_mib,
        ),
        ("max_disk_mib", policy.max_disk_mib, parent.max_disk_mib),
    ];
    for (field, mine, theirs) in nums {
        if let Some(p) = theirs {
            if mine.is_none_or(|m| m > p) {
                excess.push(format!("{field} {} > parent's {p}", fmt_limit(mine)));
            }
        }
    }
    let sets = [
        ("hosts", set(&policy.hosts), set(&parent.hosts)),
        ("networks", set(&policy.networks), set(&parent.networks)),
    ];
    for (field, mine, theirs) in sets {
        if let Some(p) = &theirs {
            if !mine.as_ref().is_some_and(|m| m.is_subset(p)) {
                excess.push(format!(
                    "{field} {} not within parent's {}",
                    fmt_set(&mine),
                    fmt_set(&theirs)
                ));
            }
        }
    }
    if excess.is_empty() {
        Ok(())
    } else {
        Err(excess)
    }
}

/// The extension value (the content of `extnValue`): DER `UTF8String` of the canonical JSON.
pub fn encode_policy_extension(policy: &Policy) -> Vec<u8> {
    // Serialising a struct of integers and strings cannot fail.
    let json = serde_json::to_vec(&canonical_policy(policy)).unwrap_or_default();
    let mut out = Vec::with_capacity(json.len() + 6);
    out.push(0x0c); // UTF8String
    push_der_length(&mut out, json.len());
    out.extend_from_slice(&json);
    out
}

fn push_der_length(out: &mut Vec<u8>, len: usize) {
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes = len.to_be_bytes();
        let skip = bytes.iter().take_while(|b| **b == 0).count();
        out.push(0x80 | (bytes.len() - skip) as u8);
        out.extend_from_slice(&bytes[skip..]);
    }
}

/// Reads what [`encode_policy_extension`] wrote. Strict DER: one `UTF8String`, minimal length,
/// nothing after it; the JSON must name only known fields.
pub fn decode_policy_extension(value: &[u8]) -> Result<Policy, CertError> {
    let bad = |m: &str| CertError::PolicyExtension(m.to_string());
    if value.len() > MAX_POLICY_EXTENSION_BYTES {
        return Err(bad("larger than 16 KiB"));
    }
    let (&tag, rest) = value.split_first().ok_or_else(|| bad("empty"))?;
    if tag != 0x0c {
        return Err(bad("not a UTF8String"));
    }
    let (&first, rest) = rest.split_first().ok_or_else(|| bad("truncated length"))?;
    let (len, body) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 2 || rest.len() < n {
            return Err(bad("invalid length"));
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
        if rest[0] == 0 || len < 0x80 {
            return Err(bad("length not in minimal DER form"));
        }
        (len, &rest[n..])
    };
    if body.len() != len {
        return Err(bad("length does not match the content"));
    }
    let text = std::str::from_utf8(body).map_err(|_| bad("not UTF-8"))?;
    serde_json::from_str(text).map_err(|e| CertError::PolicyExtension(format!("bad policy: {e}")))
}

// ---------------------------------------------------------------------------------------------
// Keys, requests, signing

/// A new ECDSA P-256 key and a CSR for `common_name` signed with it: `(key_pem, csr_pem)`.
pub fn generate_key_and_csr(common_name: &str) -> Result<(String, String), CertError> {
    if common_name.is_empty() {
        return Err(CertError::CsrWithoutName);
    }
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
        .map_err(|e| CertError::Key(e.to_string()))?;
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    let csr = params
        .serialize_request(&key)
        .and_then(|c| c.pem())
        .map_err(|e| CertError::Csr(e.to_string()))?;
    Ok((key.serialize_pem(), csr))
}

/// A new self-signed CA (ECDSA P-256, unconstrained path length), without a policy:
/// `(cert_pem, key_pem)`. The deployment CA is made with this.
pub fn generate_root_ca(
    common_name: &str,
    validity: Duration,
) -> Result<(String, String), CertError> {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
        .map_err(|e| CertError::Key(e.to_string()))?;
    let now = OffsetDateTime::now_utc();
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    params.serial_number = Some(random_serial()?);
    params.not_before = now - CLOCK_SKEW;
    params.not_after = now + to_time(validity)?;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
    ];
    let cert = params
        .self_signed(&key)
        .map_err(|e| CertError::Sign(e.to_string()))?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// Signs `csr_pem` with an intermediate: `issuer_cert_pem` (its first certificate is the
/// issuer; a chain file may be passed as is) and its key. Refuses when the issuer is not a CA
/// (or may not sign CAs and `ca` is asked), carries no policy, when `policy` is not within the
/// issuer's, or when the validity would end after the issuer's. The subject is the CSR's
/// common name.
pub fn sign_csr(
    csr_pem: &str,
    issuer_cert_pem: &str,
    issuer_key_pem: &str,
    policy: &Policy,
    ca: bool,
    validity: Duration,
) -> Result<SignedCert, CertError> {
    let issuer = first_cert(issuer_cert_pem, "the issuer certificate")?;
    let issuer_policy = issuer.policy.as_ref().ok_or_else(|| {
        let (serial, cn) = issuer.ids();
        CertError::NoPolicy { serial, cn }
    })?;
    check_within(policy, issuer_policy).map_err(|excess| {
        let (serial, cn) = issuer.ids();
        CertError::ExceedsIssuer { serial, cn, excess }
    })?;
    sign_unchecked_policy(csr_pem, &issuer, issuer_key_pem, None, policy, ca, validity)
}

/// Signs `csr_pem` with the deployment CA (a certificate without policy): the subject is
/// `subject_cn` whatever the CSR says, and a CA certificate gets path length
/// [`FIRST_LEVEL_PATH_LEN`]. The policy is not checked here: the caller checks it against the
/// user's own.
pub fn sign_csr_as_root(
    csr_pem: &str,
    root_cert_pem: &str,
    root_key_pem: &str,
    subject_cn: &str,
    policy: &Policy,
    ca: bool,
    validity: Duration,
) -> Result<SignedCert, CertError> {
    if subject_cn.is_empty() {
        return Err(CertError::CsrWithoutName);
    }
    let root = first_cert(root_cert_pem, "the CA certificate")?;
    sign_unchecked_policy(
        csr_pem,
        &root,
        root_key_pem,
        Some(subject_cn),
        policy,
        ca,
        validity,
    )
}

/// Everything of signing but the policy check (tests use it to build bad chains).
fn sign_unchecked_policy(
    csr_pem: &str,
    issuer: &CertInfo,
    issuer_key_pem: &str,
    subject_cn: Option<&str>,
    policy: &Policy,
    ca: bool,
    validity: Duration,
) -> Result<SignedCert, CertError> {
    let (serial, cn) = issuer.ids();
    if !issuer.is_ca {
        return Err(CertError::NotCa { serial, cn });
    }
    let path_len = match (ca, issuer.policy.is_some(), issuer.path_len) {
        (false, _, _) => None,
        (true, false, _) => Some(FIRST_LEVEL_PATH_LEN),
        (true, true, Some(0)) => return Err(CertError::PathLenExhausted { serial, cn }),
        (true, true, Some(n)) => Some(u8::try_from(n - 1).unwrap_or(u8::MAX)),
        (true, true, None) => Some(FIRST_LEVEL_PATH_LEN),
    };
    let now = OffsetDateTime::now_utc();
    if issuer.not_after <= now {
        let problem = format!("expired at {}", issuer.not_after);
        return Err(CertError::NotValidNow {
            serial,
            cn,
            problem,
        });
    }
    // Certificates hold whole seconds.
    let not_after = (now + to_time(validity)?)
        .replace_nanosecond(0)
        .map_err(|_| CertError::Validity(validity))?;
    if not_after > issuer.not_after {
        return Err(CertError::ValidityBeyondIssuer {
            serial,
            cn,
            not_after,
            issuer_not_after: issuer.not_after,
        });
    }

    let key = KeyPair::from_pem(issuer_key_pem).map_err(|e| CertError::Key(e.to_string()))?;
    let (_, parsed) = X509Certificate::from_der(&issuer.der).map_err(|e| CertError::Parse {
        what: "the issuer certificate".into(),
        reason: e.to_string(),
    })?;
    if parsed.public_key().raw != key.subject_public_key_info().as_slice() {
        return Err(CertError::KeyMismatch { serial, cn });
    }
    let rcgen_issuer = Issuer::from_ca_cert_der(&issuer.der.as_slice().into(), key)
        .map_err(|e| CertError::Sign(e.to_string()))?;

    let mut csr = CertificateSigningRequestParams::from_pem(csr_pem)
        .map_err(|e| CertError::Csr(e.to_string()))?;
    let cn = match subject_cn {
        Some(cn) => cn.to_string(),
        None => csr_common_name(&csr.params.distinguished_name)?,
    };
    // Nothing of the request but its key and name is kept: extensions are ours.
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, cn);
    params.serial_number = Some(random_serial()?);
    params.not_before = std::cmp::max(now - CLOCK_SKEW, issuer.not_before);
    params.not_after = not_after;
    params.use_authority_key_identifier_extension = true;
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    match path_len {
        Some(n) => {
            params.is_ca = IsCa::Ca(BasicConstraints::Constrained(n));
            params.key_usages = vec![
                KeyUsagePurpose::DigitalSignature,
                KeyUsagePurpose::KeyCertSign,
                KeyUsagePurpose::CrlSign,
            ];
        }
        None => {
            params.is_ca = IsCa::ExplicitNoCa;
            params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        }
    }
    let mut ext =
        CustomExtension::from_oid_content(POLICY_OID_ARCS, encode_policy_extension(policy));
    ext.set_criticality(false);
    params.custom_extensions = vec![ext];
    csr.params = params;
    let cert = csr
        .signed_by(&rcgen_issuer)
        .map_err(|e| CertError::Sign(e.to_string()))?;
    let info = parse_cert_der(cert.der(), "the new certificate")?;
    Ok(SignedCert {
        serial_hex: info.serial_hex,
        cert_pem: cert.pem(),
        not_after: info.not_after,
    })
}

fn csr_common_name(dn: &DistinguishedName) -> Result<String, CertError> {
    let cn = match dn.get(&DnType::CommonName) {
        Some(rcgen::DnValue::Utf8String(s)) => s.clone(),
        Some(rcgen::DnValue::PrintableString(s)) => s.as_str().to_string(),
        _ => return Err(CertError::CsrWithoutName),
    };
    if cn.is_empty() {
        return Err(CertError::CsrWithoutName);
    }
    Ok(cn)
}

fn to_time(validity: Duration) -> Result<time::Duration, CertError> {
    const HUNDRED_YEARS: u64 = 100 * 366 * 24 * 3600;
    if validity.is_zero() || validity.as_secs() > HUNDRED_YEARS {
        return Err(CertError::Validity(validity));
    }
    time::Duration::try_from(validity).map_err(|_| CertError::Validity(validity))
}

/// 128 random bits, positive: the top bit cleared, the next one set so that the hex form is
/// always 32 digits.
fn random_serial() -> Result<SerialNumber, CertError> {
    let mut bytes = [0u8; 16];
    getrandom::getrandom(&mut bytes).map_err(|e| CertError::Sign(format!("no randomness: {e}")))?;
    bytes[0] = (bytes[0] & 0x7f) | 0x40;
    Ok(SerialNumber::from_slice(&bytes))
}

// ---------------------------------------------------------------------------------------------
// Reading

/// Every certificate of a PEM file, in file order (leaf first for a chain). Blocks that are
/// not certificates are refused (a key pasted into the chain file is a mistake).
pub fn parse_chain_pem(pem_text: &str) -> Result<Vec<CertInfo>, CertError> {
    let blocks = pem::parse_many(pem_text).map_err(|e| CertError::Pem {
        what: "the certificate file".into(),
        reason: e.to_string(),
    })?;
    let mut out = Vec::with_capacity(blocks.len());
    for (i, block) in blocks.iter().enumerate() {
        if block.tag() != "CERTIFICATE" {
            return Err(CertError::Pem {
                what: "the certificate file".into(),
                reason: format!("block {} is a {}, not a CERTIFICATE", i + 1, block.tag()),
            });
        }
        out.push(parse_cert_der(
            block.contents(),
            &format!("certificate {} of the file", i + 1),
        )?);
    }
    if out.is_empty() {
        return Err(CertError::NoCertificate {
            what: "the certificate file".into(),
        });
    }
    Ok(out)
}

fn first_cert(pem_text: &str, what: &str) -> Result<CertInfo, CertError> {
    parse_chain_pem(pem_text)
        .map_err(|e| match e {
            CertError::NoCertificate { .. } => CertError::NoCertificate { what: what.into() },
            other => other,
        })?
        .into_iter()
        .next()
        .ok_or_else(|| CertError::NoCertificate { what: what.into() })
}

/// Reads one DER certificate. `what` names it in errors.
pub fn parse_cert_der(der: &[u8], what: &str) -> Result<CertInfo, CertError> {
    let perr = |reason: String| CertError::Parse {
        what: what.to_string(),
        reason,
    };
    let (rest, cert) = X509Certificate::from_der(der).map_err(|e| perr(e.to_string()))?;
    if !rest.is_empty() {
        return Err(perr("trailing bytes after the certificate".into()));
    }
    let cn = |name: &x509_parser::x509::X509Name<'_>| {
        name.iter_common_name()
            .next()
            .and_then(|a| a.as_str().ok())
            .unwrap_or_default()
            .to_string()
    };
    let mut policy = None;
    for ext in cert.extensions() {
        let is_ours = ext
            .oid
            .iter()
            .is_some_and(|arcs| arcs.eq(POLICY_OID_ARCS.iter().copied()));
        if is_ours {
            if policy.is_some() {
                return Err(CertError::PolicyExtension(
                    "the certificate carries it twice".into(),
                ));
            }
            policy = Some(decode_policy_extension(ext.value)?);
        }
    }
    let bc = cert
        .basic_constraints()
        .map_err(|e| perr(format!("basicConstraints: {e}")))?;
    let (is_ca, path_len) = bc.map_or((false, None), |b| (b.value.ca, b.value.path_len_constraint));
    Ok(CertInfo {
        serial_hex: serial_hex(cert.raw_serial()),
        subject_cn: cn(cert.subject()),
        issuer_cn: cn(cert.issuer()),
        policy,
        is_ca,
        path_len,
        not_before: cert.validity().not_before.to_datetime(),
        not_after: cert.validity().not_after.to_datetime(),
        der: der.to_vec(),
    })
}

/// Lower-case hex of a DER INTEGER's content, without leading zero bytes.
pub fn serial_hex(raw: &[u8]) -> String {
    let skip = raw.iter().take_while(|b| **b == 0).count();
    let digits: String = raw[skip..].iter().map(|b| format!("{b:02x}")).collect();
    if digits.is_empty() {
        "0".to_string()
    } else {
        digits
    }
}

// ---------------------------------------------------------------------------------------------
// Chain checks

/// Leaf-first `chain`, without the deployment CA: every certificate must carry a policy, and
/// each must lie within the policy of the certificate after it (its issuer). The error names
/// the first certificate (from the top) that exceeds its parent, and how.
pub fn verify_policy_nesting(chain: &[CertInfo]) -> Result<(), CertError> {
    if chain.is_empty() {
        return Err(CertError::EmptyChain);
    }
    let mut policies = Vec::with_capacity(chain.len());
    for c in chain {
        let p = c.policy.as_ref().ok_or_else(|| {
            let (serial, cn) = c.ids();
            CertError::NoPolicy { serial, cn }
        })?;
        policies.push(p);
    }
    // Top down, so that the error names the highest offending link.
    for i in (0..chain.len() - 1).rev() {
        check_within(policies[i], policies[i + 1]).map_err(|excess| {
            let (serial, cn) = chain[i].ids();
            CertError::ExceedsParent {
                serial,
                cn,
                parent: chain[i + 1].name(),
                excess,
            }
        })?;
    }
    Ok(())
}

/// Leaf-first `chain` followed by `anchor` (the certificate that issued the chain's last
/// one): each certificate's issuer name is its parent's subject, its signature verifies with
/// the parent's key, every parent is a CA whose path length allows the chain below it, and
/// each is valid at `now`.
pub fn verify_chain_links(
    chain: &[CertInfo],
    anchor: &CertInfo,
    now: OffsetDateTime,
) -> Result<(), CertError> {
    if chain.is_empty() {
        return Err(CertError::EmptyChain);
    }
    for (i, child) in chain.iter().enumerate() {
        let parent = chain.get(i + 1).unwrap_or(anchor);
        let link_err = |reason: &'static str| {
            let (serial, cn) = child.ids();
            CertError::Linkage {
                serial,
                cn,
                parent: parent.name(),
                reason,
            }
        };
        let (c, p) = (parse(child)?, parse(parent)?);
        if c.issuer().as_raw() != p.subject().as_raw() {
            return Err(link_err("its issuer name is not the parent's subject"));
        }
        if !parent.is_ca {
            return Err(link_err("the parent is not a CA certificate"));
        }
        // chain[i + 1] is followed by i intermediates (chain[1..=i]).
        if let Some(n) = parent.path_len {
            if i > n as usize {
                return Err(link_err(
                    "the parent's path length does not allow that deep a chain",
                ));
            }
        }
        c.verify_signature(Some(p.public_key()))
            .map_err(|_| link_err("its signature does not verify with the parent's key"))?;
        check_time(child, now)?;
    }
    check_time(anchor, now)
}

fn parse(c: &CertInfo) -> Result<X509Certificate<'_>, CertError> {
    X509Certificate::from_der(&c.der)
        .map(|(_, x)| x)
        .map_err(|e| CertError::Parse {
            what: format!("certificate {}", c.serial_hex),
            reason: e.to_string(),
        })
}

fn check_time(c: &CertInfo, now: OffsetDateTime) -> Result<(), CertError> {
    let problem = if now > c.not_after {
        format!("expired at {}", c.not_after)
    } else if now < c.not_before {
        format!("is not valid before {}", c.not_before)
    } else {
        return Ok(());
    };
    let (serial, cn) = c.ids();
    Err(CertError::NotValidNow {
        serial,
        cn,
        problem,
    })
}

#[cfg(test)]
mod tests;
