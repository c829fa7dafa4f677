//! Delegation into certificates against a real `pitwalld all` with its mTLS listener: alice
//! gets a first-level CA certificate through the API (and no more than her policy), signs
//! bob's locally with the real `pitwall` binary, bob signs carol's; carol's chain then acts
//! for alice within every policy along it, a chain whose leaf exceeds its issuer is refused,
//! revoking bob's serial refuses carol's chain at once, and the audit log names the
//! certificate.

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use pitwall_api::cert;
use pitwall_api::{Client, ClientError, CreateVmRequest, Policy, RevokeCertificateRequest};
use pitwall_e2e::*;
use pitwall_testkit::Daemon;

const IMAGE: &str = "e2e/hello:1.0";

fn stopped(name: &str) -> CreateVmRequest {
    CreateVmRequest {
        start: Some(false),
        ..create(name, IMAGE)
    }
}

fn max_vms(n: u64) -> Policy {
    Policy {
        max_vms: Some(n),
        ..Policy::default()
    }
}

fn status(e: &ClientError) -> u16 {
    match e {
        ClientError::Api { status, .. } => *status,
        _ => 0,
    }
}

/// A daemon with its mTLS listener, and that listener's `https://ADDR` as it logged it.
async fn daemon_with_tls() -> anyhow::Result<(Daemon, String)> {
    let addr = format!("127.0.0.1:{}", pitwall_testkit::free_port());
    let d = Daemon::start_with_env(vec![("PITWALL_TLS_LISTEN".into(), addr.clone())]).await?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let log = d.log_text();
        if let Some(url) = log.lines().find_map(|l| {
            let rest = l.split("mTLS API listening on ").nth(1)?;
            rest.split_whitespace().next().map(str::to_string)
        }) {
            anyhow::ensure!(url.contains(&addr), "listening on {url}, asked for {addr}");
            return Ok((d, url));
        }
        if tokio::time::Instant::now() > deadline {
            anyhow::bail!("pitwalld never said its mTLS API is listening:\n{log}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The real `pitwall` binary, with a config and credentials directory of its own.
struct Cli {
    home: tempfile::TempDir,
}

impl Cli {
    fn new() -> anyhow::Result<Cli> {
        Ok(Cli {
            home: tempfile::tempdir()?,
        })
    }

    fn run(&self, env: &[(&str, &str)], args: &[&str]) -> anyhow::Result<Output> {
        let bin = pitwall_testkit::bin_dir().join("pitwall");
        anyhow::ensure!(
            bin.is_file(),
            "{} not built: run `cargo build --workspace --bins`",
            bin.display()
        );
        let mut cmd = std::process::Command::new(&bin);
        cmd.args(args)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("HOME", self.home.path())
            .env("XDG_CONFIG_HOME", self.home.path().join("config"));
        for (k, v) in env {
            cmd.env(k, v);
        }
        Ok(cmd.output()?)
    }

    /// Runs `args`, which must succeed; its stdout.
    fn ok(&self, env: &[(&str, &str)], args: &[&str]) -> anyhow::Result<String> {
        let out = self.run(env, args)?;
        anyhow::ensure!(
            out.status.success(),
            "pitwall {args:?} failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8(out.stdout)?)
    }
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap_or_default()
}

fn read(p: &Path) -> anyhow::Result<String> {
    Ok(std::fs::read_to_string(p)?)
}

/// A client of the https listener presenting `chain` (leaf first) with `key`.
fn mtls(url: &str, ca_pem: &str, chain: &str, key: &str) -> anyhow::Result<Client> {
    let identity = format!("{chain}\n{key}");
    Ok(Client::builder()
        .identity_pem(identity.into_bytes())
        .ca_pem(ca_pem.as_bytes().to_vec())
        .build(url)?)
}

/// A leaf under `issuer_chain` (leaf first) claiming `policy`, signed with `issuer_key`
/// without checking the policy against the issuer's, as a forger would: `(chain, key)`.
fn forged_leaf(
    issuer_chain: &str,
    issuer_key: &str,
    cn: &str,
    policy: &Policy,
) -> anyhow::Result<(String, String)> {
    use rcgen::{
        CertificateParams, CustomExtension, DistinguishedName, DnType, ExtendedKeyUsagePurpose,
        IsCa, Issuer, KeyPair, KeyUsagePurpose, SerialNumber,
    };
    let issuer_info = cert::parse_chain_pem(issuer_chain)?
        .into_iter()
        .next()
        .ok_or_else(|| anyhow::anyhow!("no issuer certificate"))?;
    let issuer = Issuer::from_ca_cert_der(
        &issuer_info.der.as_slice().into(),
        KeyPair::from_pem(issuer_key)?,
    )?;
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, cn);
    params.serial_number = Some(SerialNumber::from_slice(&[
        0x5e, 0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77,
    ]));
    let now = time::OffsetDateTime::now_utc();
    params.not_before = issuer_info.not_before.max(now - time::Duration::minutes(1));
    params.not_after = now + time::Duration::days(1);
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    params.use_authority_key_identifier_extension = true;
    let mut ext = CustomExtension::from_oid_content(
        cert::POLICY_OID_ARCS,
        cert::encode_policy_extension(policy),
    );
    ext.set_criticality(false);
    params.custom_extensions = vec![ext];
    let leaf = params.signed_by(&key, &issuer)?;
    Ok((format!("{}{issuer_chain}", leaf.pem()), key.serialize_pem()))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_certificate_chain_acts_for_its_first_level_user_within_every_policy(
) -> anyhow::Result<()> {
    let (d, https) = daemon_with_tls().await?;
    let admin = d.client()?;
    import_hello(&admin, IMAGE).await?;
    admin.set_policy("user:alice", &max_vms(10)).await?;
    let alice = d.user("alice", &[]).await?;
    let alice_token = alice.token().unwrap_or_default().to_string();
    let dir = tempfile::tempdir()?;
    let f = |name: &str| -> PathBuf { dir.path().join(name) };
    let cli = Cli::new()?;

    // The deployment CA, as anyone fetches it (no token).
    let ca_file = f("ca.pem");
    cli.ok(&[], &["--api", &d.api, "cert", "ca", "--out", s(&ca_file)])?;
    let ca_pem = read(&ca_file)?;
    assert_eq!(ca_pem, d.anonymous()?.ca_certificate().await?);

    // alice: a first-level CA certificate with max_vms 5, through the API with the CLI.
    cli.ok(
        &[],
        &[
            "cert",
            "request",
            "--name",
            "whoever",
            "--key-out",
            s(&f("alice.key")),
            "--csr-out",
            s(&f("alice.csr")),
        ],
    )?;
    cli.ok(
        &[("PITWALL_TOKEN", &alice_token)],
        &[
            "--api",
            &d.api,
            "cert",
            "sign",
            s(&f("alice.csr")),
            "--out",
            s(&f("alice.pem")),
            "--as-ca",
            "--max-vms",
            "5",
        ],
    )?;
    let alice_chain = cert::parse_chain_pem(&read(&f("alice.pem"))?)?;
    assert_eq!(alice_chain.len(), 1);
    assert_eq!(alice_chain[0].subject_cn, "alice", "the CN is forced");
    assert_eq!(alice_chain[0].policy, Some(max_vms(5)));
    assert!(alice_chain[0].is_ca);

    // ... and not beyond her policy.
    let (_, wide_csr) = cert::generate_key_and_csr("alice")?;
    let e = alice
        .sign_certificate(&pitwall_api::SignCertificateRequest {
            csr_pem: wide_csr,
            policy: max_vms(50),
            ca: true,
            validity: None,
        })
        .await
        .unwrap_err();
    assert_eq!(status(&e), 403, "{e}");
    assert!(
        e.to_string().contains("exceeds yours") && e.to_string().contains("max_vms 50"),
        "{e}"
    );

    // alice signs bob's CA certificate locally (the CLI, no login), bob signs carol's leaf.
    for who in ["bob", "carol"] {
        cli.ok(
            &[],
            &[
                "cert",
                "request",
                "--name",
                who,
                "--key-out",
                s(&f(&format!("{who}.key"))),
                "--csr-out",
                s(&f(&format!("{who}.csr"))),
            ],
        )?;
    }
    cli.ok(
        &[],
        &[
            "cert",
            "sign",
            s(&f("bob.csr")),
            "--with-cert",
            s(&f("alice.pem")),
            "--with-key",
            s(&f("alice.key")),
            "--out",
            s(&f("bob.pem")),
            "--as-ca",
            "--max-vms",
            "3",
        ],
    )?;
    // Beyond bob's own policy, the CLI refuses to sign.
    let out = cli.run(
        &[],
        &[
            "cert",
            "sign",
            s(&f("carol.csr")),
            "--with-cert",
            s(&f("bob.pem")),
            "--with-key",
            s(&f("bob.key")),
            "--out",
            s(&f("wide.pem")),
            "--max-vms",
            "4",
        ],
    )?;
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("exceeds"), "{stderr}");
    assert!(!f("wide.pem").exists());
    let bob_chain_pem = read(&f("bob.pem"))?;
    let carol = cert::sign_csr(
        &read(&f("carol.csr"))?,
        &bob_chain_pem,
        &read(&f("bob.key"))?,
        &max_vms(2),
        false,
        Duration::from_secs(86400),
    )?;
    let carol_chain_pem = format!("{}{bob_chain_pem}", carol.cert_pem);
    std::fs::write(f("carol.pem"), &carol_chain_pem)?;
    let chain = cert::parse_chain_pem(&carol_chain_pem)?;
    let cns: Vec<_> = chain.iter().map(|c| c.subject_cn.as_str()).collect();
    assert_eq!(cns, ["carol", "bob", "alice"]);
    let shown = cli.ok(&[], &["cert", "show", s(&f("carol.pem"))])?;
    assert!(shown.contains(&carol.serial_hex), "{shown}");
    let (bob_serial, alice_serial) = (chain[1].serial_hex.clone(), chain[2].serial_hex.clone());

    // Over mTLS, carol's chain acts for alice.
    let carol_key = read(&f("carol.key"))?;
    let carol_client = mtls(&https, &ca_pem, &carol_chain_pem, &carol_key)?;
    let me = carol_client.whoami().await?;
    assert_eq!(me.username, "alice");
    assert_eq!(me.via, format!("certificate {}", carol.serial_hex));
    assert!(!me.admin);
    // The CLI says the same with --cert/--key/--ca.
    let who = cli.ok(
        &[],
        &[
            "--api",
            &https,
            "--cert",
            s(&f("carol.pem")),
            "--key",
            s(&f("carol.key")),
            "--ca",
            s(&ca_file),
            "-o",
            "json",
            "whoami",
        ],
    )?;
    assert!(who.contains("\"alice\""), "{who}");
    assert!(who.contains(&carol.serial_hex), "{who}");

    // carol's max_vms 2 holds, and the refusal names her certificate.
    carol_client.create_vm(&stopped("c1")).await?;
    carol_client.create_vm(&stopped("c2")).await?;
    let e = carol_client.create_vm(&stopped("c3")).await.unwrap_err();
    assert_eq!(status(&e), 403, "{e}");
    assert_eq!(e.code(), Some("quota_exceeded"), "{e}");
    assert!(e.to_string().contains(&carol.serial_hex), "{e}");
    let quota = alice.quota(&pitwall_api::QuotaOf::Me).await?;
    assert_eq!(quota.usage.vms, 2, "{quota:?}");
    let vm = alice.get_vm("c1").await?;
    assert_eq!(vm.owner, "alice");

    // Narrowing alice's policy below her certificate's narrows the whole chain at once.
    admin.set_policy("user:alice", &max_vms(4)).await?;
    let e = carol_client.create_vm(&stopped("c4")).await.unwrap_err();
    assert_eq!(status(&e), 403, "{e}");
    assert!(
        e.to_string().contains(&alice_serial) && e.to_string().contains("no longer within"),
        "{e}"
    );
    admin.set_policy("user:alice", &max_vms(10)).await?;

    // A leaf that claims more than its issuer: refused on every request, naming it.
    let (forged_chain, forged_key) = forged_leaf(
        &bob_chain_pem,
        &read(&f("bob.key"))?,
        "mallory",
        &max_vms(5),
    )?;
    let forged = mtls(&https, &ca_pem, &forged_chain, &forged_key)?;
    let forged_serial = cert::parse_chain_pem(&forged_chain)?[0].serial_hex.clone();
    for result in [
        forged.whoami().await.map(|_| ()),
        forged.list_vms().await.map(|_| ()),
        forged.create_vm(&stopped("f1")).await.map(|_| ()),
    ] {
        let e = result.unwrap_err();
        assert_eq!(status(&e), 401, "{e}");
        let msg = e.to_string();
        assert!(
            msg.contains(&forged_serial) && msg.contains("exceeds"),
            "{msg}"
        );
        assert_eq!(
            msg.matches("client certificate refused").count(),
            1,
            "{msg}"
        );
    }

    // bob (another user) cannot revoke alice's serials; alice revokes bob's with the chain.
    let bob_user = d.user("bob", &[]).await?;
    let e = bob_user
        .revoke_certificate(&RevokeCertificateRequest {
            serial: alice_serial.clone(),
            reason: None,
            chain_pem: Some(read(&f("alice.pem"))?),
        })
        .await
        .unwrap_err();
    assert_eq!(status(&e), 403, "{e}");
    let e = bob_user
        .revoke_certificate(&RevokeCertificateRequest {
            serial: bob_serial.clone(),
            reason: None,
            chain_pem: None,
        })
        .await
        .unwrap_err();
    assert_eq!(status(&e), 403, "{e}");
    assert!(carol_client.whoami().await.is_ok(), "nothing revoked yet");
    alice
        .revoke_certificate(&RevokeCertificateRequest {
            serial: bob_serial.clone(),
            reason: Some("bob left".into()),
            chain_pem: Some(carol_chain_pem.clone()),
        })
        .await?;
    let e = carol_client.list_vms().await.unwrap_err();
    assert_eq!(status(&e), 401, "{e}");
    let msg = e.to_string();
    assert!(
        msg.contains("revoked") && msg.contains(&bob_serial),
        "{msg}"
    );
    assert!(alice.whoami().await.is_ok(), "alice's token still works");

    // The audit log names carol's certificate for her creates.
    let rows = admin.audit(None, Some(1000), Some("alice")).await?;
    let via = format!("certificate {}", carol.serial_hex);
    let creates: Vec<_> = rows
        .iter()
        .filter(|r| r.method == "POST" && r.path == "/v1/vms" && r.via == via)
        .map(|r| (r.status, r.outcome.as_str()))
        .collect();
    assert_eq!(
        creates,
        [
            (201, "ok"),
            (201, "ok"),
            (403, "quota_exceeded"),
            (403, "forbidden")
        ],
        "{rows:#?}"
    );
    Ok(())
}
