//! `pitwall cert ...`: client certificates with embedded policies.
//!
//! * `cert request --name CN --key-out KEY --csr-out CSR`: a new key (mode 0600) and CSR.
//! * `cert sign CSR --with-cert CHAIN.pem --with-key KEY.pem [limits] [--ca] [--validity 30d]
//!   --out FILE`: signs locally with a CA certificate one holds; the output is the new
//!   certificate followed by the issuer's chain (leaf first), ready to present as is.
//! * server-side signing (`POST /v1/certificates`) and revocation
//!   (`POST /v1/certificates/revoked`): [`sign_via_api`] and [`revoke_via_api`] take the call
//!   to make as a closure, e.g. `|r| async move { ctx.client.sign_certificate(&r).await }`.
//! * [`show`]: what a certificate file holds.
//! * `cert ca`: the deployment CA certificate (`GET /v1/certificates/ca`).
//!
//! [`run`] dispatches the commands that call the API, [`run_local`] those that only read and
//! write files (they need no endpoint and no login). The certificate work itself is
//! `pitwall_api::cert`; this module reads and writes files.

use std::future::Future;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use pitwall_api::cert::{self, CertInfo, SignedCert};
use pitwall_api::{Policy, RevokeCertificateRequest, SignCertificateRequest, SignedCertificate};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use super::quota::{policy, policy_summary};
use super::Ctx;
use crate::cli::{CertCommand, CertSignArgs, Command, OutputFormat};

/// The `cert` commands that call the API: `sign` without `--with-cert`, `revoke`, `ca`.
pub async fn run(ctx: &Ctx, command: CertCommand) -> anyhow::Result<()> {
    match command {
        CertCommand::Sign(a) if a.with_cert.is_none() => {
            let client = &ctx.client;
            let signed = sign_via_api(
                |r| async move { client.sign_certificate(&r).await },
                &a.csr,
                &policy(&a.limits),
                a.as_ca,
                a.validity.as_deref(),
                &a.out,
                a.force,
            )
            .await?;
            let out = a.out.display().to_string();
            ctx.show(&signed, |s, _| {
                format!(
                    "signed certificate {} (valid until {}); chain written to {out}\n",
                    s.serial, s.not_after
                )
            })
        }
        CertCommand::Revoke(a) => {
            let client = &ctx.client;
            revoke_via_api(
                |r| async move {
                    client.revoke_certificate(&r).await?;
                    Ok::<_, pitwall_api::ClientError>(r.serial)
                },
                &a.serial,
                a.reason.as_deref(),
                a.chain.as_deref(),
            )
            .await
            .and_then(|serial| {
                ctx.show(&serde_json::json!({ "revoked": serial }), |_, _| {
                    format!("revoked certificate {serial}\n")
                })
            })
        }
        CertCommand::Ca { out, force } => {
            let pem = ctx
                .client
                .ca_certificate()
                .await
                .context("fetching the deployment CA certificate")?;
            cert::parse_chain_pem(&pem)
                .context("the API returned something that is not a PEM certificate")?;
            match out {
                Some(path) => {
                    write_file(&path, pem.as_bytes(), 0o644, force)?;
                    let shown = path.display().to_string();
                    ctx.show(&serde_json::json!({ "written": shown }), |_, _| {
                        format!("CA certificate written to {shown}\n")
                    })
                }
                None => {
                    // PEM is the same for people and scripts
                    crate::output::emit(&pem)?;
                    Ok(())
                }
            }
        }
        local => run_local(ctx.format, Command::Cert(local)),
    }
}

/// The `cert` commands that need no API: `request`, `sign --with-cert`, `show`.
pub fn run_local(format: OutputFormat, command: Command) -> anyhow::Result<()> {
    let Command::Cert(command) = command else {
        bail!("not a local certificate command");
    };
    match command {
        CertCommand::Request(a) => {
            let r = request(&a.name, &a.key_out, &a.csr_out, a.force)?;
            super::show(format, &r, |r, _| {
                format!(
                    "key written to {} (keep it private)\nrequest written to {}: sign it with \
                     `pitwall cert sign {}`\n",
                    r.key.display(),
                    r.csr.display(),
                    r.csr.display()
                )
            })
        }
        CertCommand::Sign(a) => sign_local_command(format, &a),
        CertCommand::Show { file } => {
            let chain = show(&file)?;
            let views: Vec<CertView> = chain.iter().map(CertView::from).collect();
            super::show(format, &views, |_, now| chain_text(&chain, now))
        }
        other => bail!("{other:?} needs the API"),
    }
}

fn sign_local_command(format: OutputFormat, a: &CertSignArgs) -> anyhow::Result<()> {
    let (Some(with_cert), Some(with_key)) = (&a.with_cert, &a.with_key) else {
        bail!("signing locally needs both --with-cert and --with-key");
    };
    let validity = match &a.validity {
        Some(v) => parse_validity(v)?,
        None => default_validity_under(with_cert)?,
    };
    let signed = sign_local(
        &a.csr,
        with_cert,
        with_key,
        &policy(&a.limits),
        a.as_ca,
        validity,
        &a.out,
        a.force,
    )?;
    let view = serde_json::json!({
        "serial": signed.serial_hex,
        "not_after": fmt_time(signed.not_after),
        "out": a.out.display().to_string(),
        "policy": cert::canonical_policy(&policy(&a.limits)),
        "ca": a.as_ca,
    });
    let summary = policy_summary(&policy(&a.limits));
    super::show(format, &view, |_, _| {
        format!(
            "signed certificate {} (valid until {}; {summary}); chain written to {}\n",
            signed.serial_hex,
            fmt_time(signed.not_after),
            a.out.display()
        )
    })
}

/// One certificate of `cert show -o json`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CertView {
    pub serial: String,
    pub subject: String,
    pub issuer: String,
    pub ca: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path_len: Option<u32>,
    pub not_before: String,
    pub not_after: String,
    pub policy: Option<Policy>,
}

impl From<&CertInfo> for CertView {
    fn from(c: &CertInfo) -> Self {
        CertView {
            serial: c.serial_hex.clone(),
            subject: c.subject_cn.clone(),
            issuer: c.issuer_cn.clone(),
            ca: c.is_ca,
            path_len: c.path_len,
            not_before: fmt_time(c.not_before),
            not_after: fmt_time(c.not_after),
            policy: c.policy.clone(),
        }
    }
}

fn fmt_time(t: OffsetDateTime) -> String {
    t.format(&Rfc3339).unwrap_or_else(|_| t.to_string())
}

/// Default validity of a locally signed certificate.
pub const DEFAULT_VALIDITY: Duration = Duration::from_secs(30 * 24 * 3600);

/// The validity of a certificate signed with `issuer_chain` when none is asked for:
/// [`DEFAULT_VALIDITY`], or less when the issuer ends sooner (a certificate cannot outlive
/// its issuer, and nobody asked for that date). An explicit `--validity` beyond the issuer is
/// still refused by [`sign_local`].
pub fn default_validity_under(issuer_chain: &Path) -> anyhow::Result<Duration> {
    let chain = cert::parse_chain_pem(&read(issuer_chain, "the issuer's certificate")?)
        .with_context(|| format!("cannot read the certificate {}", issuer_chain.display()))?;
    let Some(issuer) = chain.first() else {
        bail!("{} holds no certificate", issuer_chain.display());
    };
    let left = issuer.not_after - OffsetDateTime::now_utc();
    let left = Duration::try_from(left).unwrap_or_default();
    if left.is_zero() {
        bail!(
            "the issuer {} expired at {}: sign with a valid certificate",
            issuer.name(),
            fmt_time(issuer.not_after)
        );
    }
    Ok(DEFAULT_VALIDITY.min(left))
}

/// What `cert request` wrote.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Requested {
    pub key: PathBuf,
    pub csr: PathBuf,
}

/// `cert request`: a new ECDSA P-256 key (written with mode 0600) and a CSR for `name`.
/// Neither file is overwritten unless `force`.
pub fn request(
    name: &str,
    key_out: &Path,
    csr_out: &Path,
    force: bool,
) -> anyhow::Result<Requested> {
    if key_out == csr_out {
        bail!("--key-out and --csr-out must be different files");
    }
    if !force {
        for p in [key_out, csr_out] {
            if p.exists() {
                bail!(
                    "{} exists: pass --force to overwrite it, or choose another file",
                    p.display()
                );
            }
        }
    }
    let (key_pem, csr_pem) = cert::generate_key_and_csr(name)?;
    write_file(key_out, key_pem.as_bytes(), 0o600, force)?;
    write_file(csr_out, csr_pem.as_bytes(), 0o644, force)?;
    Ok(Requested {
        key: key_out.to_path_buf(),
        csr: csr_out.to_path_buf(),
    })
}

/// `cert sign` (local): signs the CSR at `csr` with the CA certificate in `with_cert` (first
/// certificate of the file; the rest is its chain) and the key in `with_key`; writes the new
/// certificate followed by the issuer's chain to `out`.
#[allow(clippy::too_many_arguments)]
pub fn sign_local(
    csr: &Path,
    with_cert: &Path,
    with_key: &Path,
    policy: &Policy,
    ca: bool,
    validity: Duration,
    out: &Path,
    force: bool,
) -> anyhow::Result<SignedCert> {
    if !force && out.exists() {
        bail!(
            "{} exists: pass --force to overwrite it, or choose another file",
            out.display()
        );
    }
    let csr_pem = read(csr, "the certificate signing request")?;
    let chain_pem = read(with_cert, "the issuer certificate")?;
    let key_pem = read(with_key, "the issuer key")?;
    let issuer_chain = cert::parse_chain_pem(&chain_pem)
        .with_context(|| format!("reading {}", with_cert.display()))?;
    let signed = cert::sign_csr(&csr_pem, &chain_pem, &key_pem, policy, ca, validity)
        .with_context(|| format!("signing {} with {}", csr.display(), with_cert.display()))?;

    let mut output = signed.cert_pem.clone();
    for c in &issuer_chain {
        output.push_str(&c.to_pem());
    }
    // What is written must be presentable: every link within the one above it.
    let full = cert::parse_chain_pem(&output)?;
    cert::verify_policy_nesting(&full).with_context(|| {
        format!(
            "the chain in {} does not nest: fix it before signing with it",
            with_cert.display()
        )
    })?;
    write_file(out, output.as_bytes(), 0o644, force)?;
    Ok(signed)
}

/// The request for `POST /v1/certificates` from the CSR file.
pub fn sign_request(
    csr: &Path,
    policy: &Policy,
    ca: bool,
    validity: Option<&str>,
) -> anyhow::Result<SignCertificateRequest> {
    if let Some(v) = validity {
        parse_validity(v)?;
    }
    Ok(SignCertificateRequest {
        csr_pem: read(csr, "the certificate signing request")?,
        policy: policy.clone(),
        ca,
        validity: validity.map(str::to_string),
    })
}

/// `cert sign --server` (through the API): builds the request, makes the call with `send`
/// (e.g. `|r| async move { client.sign_certificate(&r).await }`), and writes the returned
/// chain (leaf first) to `out`.
pub async fn sign_via_api<F, Fut, E>(
    send: F,
    csr: &Path,
    policy: &Policy,
    ca: bool,
    validity: Option<&str>,
    out: &Path,
    force: bool,
) -> anyhow::Result<SignedCertificate>
where
    F: FnOnce(SignCertificateRequest) -> Fut,
    Fut: Future<Output = Result<SignedCertificate, E>>,
    E: Into<anyhow::Error>,
{
    if !force && out.exists() {
        bail!(
            "{} exists: pass --force to overwrite it, or choose another file",
            out.display()
        );
    }
    let request = sign_request(csr, policy, ca, validity)?;
    let signed = send(request)
        .await
        .map_err(Into::into)
        .context("the server did not sign the certificate")?;
    let pem = presentable_pem(&signed)?;
    write_file(out, pem.as_bytes(), 0o644, force)?;
    Ok(signed)
}

/// The server's answer as one file, leaf first: `chain_pem` when it starts with the
/// certificate, else the certificate followed by `chain_pem`.
pub fn presentable_pem(signed: &SignedCertificate) -> anyhow::Result<String> {
    let leaf = cert::parse_chain_pem(&signed.certificate_pem)
        .context("the server returned an unreadable certificate")?;
    if signed.chain_pem.trim().is_empty() {
        return Ok(signed.certificate_pem.clone());
    }
    let chain = cert::parse_chain_pem(&signed.chain_pem)
        .context("the server returned an unreadable chain")?;
    if chain.first().map(|c| &c.der) == leaf.first().map(|c| &c.der) {
        Ok(signed.chain_pem.clone())
    } else {
        let mut s = signed.certificate_pem.clone();
        if !s.ends_with('\n') {
            s.push('\n');
        }
        s.push_str(&signed.chain_pem);
        Ok(s)
    }
}

/// `cert revoke SERIAL [--reason TEXT] [--chain CHAIN.pem]` through the API: `send` makes the
/// call. A non-administrator shows the chain holding `serial` (leaf first, up to their
/// first-level certificate), to prove it was issued under them.
pub async fn revoke_via_api<F, Fut, T, E>(
    send: F,
    serial: &str,
    reason: Option<&str>,
    chain: Option<&Path>,
) -> anyhow::Result<T>
where
    F: FnOnce(RevokeCertificateRequest) -> Fut,
    Fut: Future<Output = Result<T, E>>,
    E: Into<anyhow::Error>,
{
    let serial = normalize_serial(serial)?;
    let chain_pem = match chain {
        None => None,
        Some(path) => {
            let pem = read(path, "the certificate chain")?;
            let certs = cert::parse_chain_pem(&pem)
                .with_context(|| format!("reading {}", path.display()))?;
            if !certs.iter().any(|c| c.serial_hex == serial) {
                bail!(
                    "certificate {serial} is not in {}: pass the chain that holds it",
                    path.display()
                );
            }
            Some(pem)
        }
    };
    send(RevokeCertificateRequest {
        serial: serial.clone(),
        reason: reason.map(str::to_string),
        chain_pem,
    })
    .await
    .map_err(Into::into)
    .with_context(|| format!("revoking certificate {serial}"))
}

/// A serial as the server names it: lower-case hex without leading zeros; `:` separators
/// (as `openssl x509 -serial` prints) and a `0x` prefix are accepted.
pub fn normalize_serial(serial: &str) -> anyhow::Result<String> {
    let s = serial.trim();
    let s = s
        .strip_prefix("0x")
        .or_else(|| s.strip_prefix("0X"))
        .unwrap_or(s);
    let hex: String = s.chars().filter(|c| *c != ':').collect();
    if hex.is_empty() || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
        bail!("{serial:?} is not a certificate serial: pass the hex serial `pitwall cert show` prints");
    }
    let hex = hex.to_ascii_lowercase();
    let trimmed = hex.trim_start_matches('0');
    Ok(if trimmed.is_empty() { "0" } else { trimmed }.to_string())
}

/// `30d`, `12h`, `1w`…: a validity.
pub fn parse_validity(text: &str) -> anyhow::Result<Duration> {
    let d = humantime::parse_duration(text)
        .with_context(|| format!("{text:?} is not a duration: write e.g. 30d, 12h or 1w"))?;
    if d.is_zero() {
        bail!("the validity must be longer than zero");
    }
    Ok(d)
}

/// `cert show FILE`: the certificates a PEM file holds.
pub fn show(path: &Path) -> anyhow::Result<Vec<CertInfo>> {
    let pem = read(path, "the certificate file")?;
    cert::parse_chain_pem(&pem).with_context(|| format!("reading {}", path.display()))
}

/// A chain for people: one paragraph per certificate.
pub fn chain_text(chain: &[CertInfo], now: OffsetDateTime) -> String {
    let mut s = String::new();
    for (i, c) in chain.iter().enumerate() {
        let state = if now > c.not_after {
            " (expired)"
        } else if now < c.not_before {
            " (not yet valid)"
        } else {
            ""
        };
        s.push_str(&format!(
            "[{i}] {} (serial {}){}\n    issuer: {}\n    valid: {} .. {}\n    ca: {}{}\n",
            c.subject_cn,
            c.serial_hex,
            state,
            c.issuer_cn,
            c.not_before,
            c.not_after,
            c.is_ca,
            c.path_len
                .map(|n| format!(" (may sign {n} more CA levels)"))
                .unwrap_or_default(),
        ));
        match &c.policy {
            Some(p) => s.push_str(&format!(
                "    policy: {}\n",
                serde_json::to_string(p).unwrap_or_default()
            )),
            None => s.push_str("    policy: none\n"),
        }
    }
    s
}

fn read(path: &Path, what: &str) -> anyhow::Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("cannot read {what} {}", path.display()))
}

/// Writes `contents` to `path` created with `mode`. Without `force` an existing file is an
/// error; with it, the file is replaced atomically (a staged file renamed onto it).
fn write_file(path: &Path, contents: &[u8], mode: u32, force: bool) -> anyhow::Result<()> {
    let create = |p: &Path| -> std::io::Result<()> {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(p)?;
        f.write_all(contents)?;
        f.sync_all()
    };
    if !force {
        return create(path).with_context(|| {
            format!(
                "cannot create {} (pass --force to overwrite an existing file)",
                path.display()
            )
        });
    }
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let staged = path.with_file_name(format!(".{name}.tmp"));
    let _ = std::fs::remove_file(&staged);
    create(&staged).with_context(|| format!("cannot write {}", staged.display()))?;
    std::fs::rename(&staged, path).with_context(|| format!("cannot write {}", path.display()))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn policy(vms: u64) -> Policy {
        Policy {
            max_vms: Some(vms),
            ..Policy::default()
        }
    }

    /// A first-level CA certificate for alice, as the server would issue it, in `dir`.
    fn alice(dir: &Path) -> (PathBuf, PathBuf) {
        let (root_pem, root_key) =
            cert::generate_root_ca("test CA", Duration::from_secs(365 * 86400)).expect("root");
        let (key, csr) = cert::generate_key_and_csr("x").expect("csr");
        let s = cert::sign_csr_as_root(
            &csr,
            &root_pem,
            &root_key,
            "alice",
            &policy(10),
            true,
            Duration::from_secs(60 * 86400),
        )
        .expect("issue");
        let (c, k) = (dir.join("alice.pem"), dir.join("alice.key"));
        std::fs::write(&c, s.cert_pem).expect("write");
        std::fs::write(&k, key).expect("write");
        (c, k)
    }

    #[test]
    fn the_default_validity_ends_with_the_issuer_when_it_ends_sooner() {
        let dir = tempfile::tempdir().expect("tempdir");
        // alice's certificate ends in 60 days: the 30-day default fits.
        let (alice_pem, alice_key) = alice(dir.path());
        assert_eq!(
            default_validity_under(&alice_pem).expect("default"),
            DEFAULT_VALIDITY
        );
        // bob's ends in one hour: a default-validity certificate under it ends with it, and
        // signing with that default succeeds even a second later.
        let (bob_key, bob_csr) = (dir.path().join("bob.key"), dir.path().join("bob.csr"));
        request("bob", &bob_key, &bob_csr, false).expect("request");
        let bob = dir.path().join("bob.pem");
        let hour = Duration::from_secs(3600);
        sign_local(
            &bob_csr,
            &alice_pem,
            &alice_key,
            &policy(3),
            true,
            hour,
            &bob,
            false,
        )
        .expect("sign bob");
        let under_bob = default_validity_under(&bob).expect("default");
        assert!(
            under_bob <= hour && under_bob > hour - Duration::from_secs(120),
            "{under_bob:?}"
        );
        std::thread::sleep(Duration::from_millis(1100));
        let (carol_key, carol_csr) = (dir.path().join("c.key"), dir.path().join("c.csr"));
        request("carol", &carol_key, &carol_csr, false).expect("request");
        let carol = dir.path().join("carol.pem");
        let v = default_validity_under(&bob).expect("default");
        sign_local(
            &carol_csr,
            &bob,
            &bob_key,
            &policy(1),
            false,
            v,
            &carol,
            false,
        )
        .expect("a default validity never outlives the issuer");
        // An explicit validity beyond the issuer is still refused.
        let err = sign_local(
            &carol_csr,
            &bob,
            &bob_key,
            &policy(1),
            false,
            DEFAULT_VALIDITY,
            &dir.path().join("x.pem"),
            false,
        )
        .unwrap_err();
        assert!(format!("{err:#}").contains("shorter validity"), "{err:#}");
    }

    #[test]
    fn request_writes_a_private_key_and_refuses_to_overwrite() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (key, csr) = (dir.path().join("k.pem"), dir.path().join("r.pem"));
        request("bob", &key, &csr, false).expect("request");
        let mode = std::fs::metadata(&key).expect("stat").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let before = std::fs::read(&key).expect("read");
        let err = request("bob", &key, &csr, false).unwrap_err();
        assert!(err.to_string().contains("--force"), "{err}");
        assert_eq!(std::fs::read(&key).expect("read"), before, "key kept");
        request("bob", &key, &csr, true).expect("forced");
        assert_ne!(std::fs::read(&key).expect("read"), before, "key replaced");
        let mode = std::fs::metadata(&key).expect("stat").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }

    #[test]
    fn local_signing_writes_a_presentable_chain() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (alice_pem, alice_key) = alice(dir.path());
        let (bob_key, bob_csr) = (dir.path().join("bob.key"), dir.path().join("bob.csr"));
        request("bob", &bob_key, &bob_csr, false).expect("request");
        let out = dir.path().join("bob.pem");
        let v = parse_validity("30d").expect("validity");
        let signed = sign_local(
            &bob_csr,
            &alice_pem,
            &alice_key,
            &policy(3),
            true,
            v,
            &out,
            false,
        )
        .expect("sign");
        let chain = show(&out).expect("show");
        let cns: Vec<_> = chain.iter().map(|c| c.subject_cn.as_str()).collect();
        assert_eq!(cns, ["bob", "alice"]);
        assert_eq!(chain[0].serial_hex, signed.serial_hex);

        // bob's chain file signs in turn, and the output has three certificates.
        let (carol_key, carol_csr) = (dir.path().join("c.key"), dir.path().join("c.csr"));
        request("carol", &carol_key, &carol_csr, false).expect("request");
        let carol = dir.path().join("carol.pem");
        sign_local(
            &carol_csr,
            &out,
            &bob_key,
            &policy(1),
            false,
            parse_validity("1d").expect("validity"),
            &carol,
            false,
        )
        .expect("sign");
        let chain = show(&carol).expect("show");
        assert_eq!(chain.len(), 3);
        assert!(chain_text(&chain, OffsetDateTime::now_utc()).contains("carol"));

        let err = sign_local(
            &carol_csr,
            &out,
            &bob_key,
            &policy(4),
            false,
            v,
            &dir.path().join("wide.pem"),
            false,
        )
        .unwrap_err();
        assert!(format!("{err:#}").contains("exceeds"), "{err:#}");
    }

    #[tokio::test]
    async fn revoking_checks_the_serial_is_in_the_chain() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (alice_pem, _) = alice(dir.path());
        let serial = show(&alice_pem).expect("show")[0].serial_hex.clone();
        let sent = revoke_via_api(
            |r: RevokeCertificateRequest| async move { Ok::<_, anyhow::Error>(r) },
            &serial.to_uppercase(),
            Some("lost laptop"),
            Some(&alice_pem),
        )
        .await
        .expect("revoke");
        assert_eq!(sent.serial, serial);
        assert!(sent.chain_pem.is_some_and(|c| c.contains("CERTIFICATE")));
        let err = revoke_via_api(
            |r: RevokeCertificateRequest| async move { Ok::<_, anyhow::Error>(r) },
            "abcd",
            None,
            Some(&alice_pem),
        )
        .await
        .unwrap_err();
        assert!(err.to_string().contains("not in"), "{err}");
    }

    #[test]
    fn serials_are_normalized() {
        assert_eq!(normalize_serial("0x00AB:cd").expect("ok"), "abcd");
        assert!(normalize_serial("xyz").is_err());
    }

    #[tokio::test]
    async fn api_signing_writes_what_the_server_returned() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (alice_pem, _) = alice(dir.path());
        let (key, csr) = (dir.path().join("k"), dir.path().join("r"));
        request("ignored", &key, &csr, false).expect("request");
        let pem = std::fs::read_to_string(&alice_pem).expect("read");
        let out = dir.path().join("mine.pem");
        let signed = sign_via_api(
            |r: SignCertificateRequest| async move {
                assert!(r.csr_pem.contains("CERTIFICATE REQUEST"));
                assert_eq!(r.validity.as_deref(), Some("7d"));
                Ok::<_, anyhow::Error>(SignedCertificate {
                    serial: "1".into(),
                    certificate_pem: pem.clone(),
                    chain_pem: pem,
                    not_after: String::new(),
                })
            },
            &csr,
            &policy(1),
            false,
            Some("7d"),
            &out,
            false,
        )
        .await
        .expect("sign");
        assert_eq!(
            std::fs::read_to_string(&out).expect("read"),
            signed.chain_pem
        );
    }
}
