//! A real `pitwalld all` that authenticates with an external OIDC issuer: panva's
//! `oidc-provider` (npm, `tests/fixtures/oidc/server.mjs`), not the built-in issuer. Its
//! tokens are accepted with their Keycloak-shaped claims, a key rotation at the provider is
//! picked up without restart, hostile tokens (expired, not yet valid, another issuer, `alg:
//! none`, HS256 keyed with the public key, an unknown `kid`, a tampered payload) are refused
//! with a 401 naming the cause, and the real `pitwall` CLI logs in with the device
//! authorization grant while the test plays the user in the provider's pages.
//!
//! Needs `node` and the fixture's `node_modules` (`scripts/setup.sh` installs them), and the
//! workspace's binaries (`cargo build --workspace --bins`).

use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use hmac::Mac as _;
use pitwall_api::{Client, ClientError, CreateVmRequest, LoginRequest, WhoAmI};
use pitwall_testkit::oidc::{OidcProvider, DEVICE_CLIENT};
use pitwall_testkit::Daemon;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

/// The daemon's audience (its default), which tokens for `urn:pitwall` carry.
const AUDIENCE: &str = "pitwall";

/// A provider and a `pitwalld` that trusts it: the CLI's client is the provider's public
/// device client, and the resource indicator makes device-grant tokens' `aud` Pitwall's.
struct Setup {
    provider: OidcProvider,
    daemon: Daemon,
    _config: tempfile::TempDir,
}

impl Setup {
    async fn start() -> anyhow::Result<Setup> {
        let provider = OidcProvider::start().await?;
        let config = tempfile::tempdir()?;
        let file = config.path().join("pitwalld.toml");
        std::fs::write(&file, "[auth]\nresource = \"urn:pitwall\"\n")?;
        let daemon = Daemon::start_with_env(vec![
            ("PITWALL_ISSUER".into(), provider.issuer().into()),
            ("PITWALL_CLIENT_ID".into(), DEVICE_CLIENT.into()),
            ("PITWALL_CONFIG".into(), file.display().to_string()),
        ])
        .await?;
        Ok(Setup {
            provider,
            daemon,
            _config: config,
        })
    }

    /// A client of the API sending `token`.
    fn client(&self, token: String) -> anyhow::Result<Client> {
        Ok(self.daemon.anonymous()?.with_token(Some(token)))
    }
}

fn api_error(e: &ClientError) -> (u16, &str, &str) {
    match e {
        ClientError::Api {
            status,
            code,
            message,
        } => (*status, code.as_str(), message.as_str()),
        other => panic!("not an API error: {other}"),
    }
}

fn kid_of(jwt: &str) -> String {
    let header = jwt.split('.').next().unwrap_or_default();
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(header)
        .expect("a JWT header is base64url");
    let header: serde_json::Value = serde_json::from_slice(&bytes).expect("JSON header");
    header["kid"].as_str().expect("a kid").to_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_provider_token_is_accepted_with_its_keycloak_claims() -> anyhow::Result<()> {
    let s = Setup::start().await?;
    let me = s
        .client(s.provider.token(AUDIENCE).await?)?
        .whoami()
        .await?;
    assert_eq!(
        me,
        WhoAmI {
            username: "alice".into(),
            subject: "pitwall-cli".into(),
            roles: vec![
                "pitwall-admin".into(),
                "offline_access".into(),
                "vm-operator".into()
            ],
            groups: vec!["/ops".into(), "/ops/oncall".into()],
            admin: true,
            via: "token".into(),
        }
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_token_for_another_audience_is_refused_naming_the_audience() -> anyhow::Result<()> {
    let s = Setup::start().await?;
    let e = s
        .client(s.provider.token("other").await?)?
        .whoami()
        .await
        .unwrap_err();
    let (status, code, message) = api_error(&e);
    assert_eq!((status, code), (401, "unauthenticated"), "{e}");
    assert!(message.contains("\"pitwall\""), "{message}");
    assert!(message.contains("audience"), "{message}");

    let e = s.daemon.anonymous()?.whoami().await.unwrap_err();
    assert_eq!(api_error(&e).0, 401, "{e}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn password_login_says_users_are_managed_by_the_provider() -> anyhow::Result<()> {
    let s = Setup::start().await?;
    let e = s
        .daemon
        .anonymous()?
        .login(&LoginRequest {
            username: "admin".into(),
            password: "anything".into(),
        })
        .await
        .unwrap_err();
    let (status, code, message) = api_error(&e);
    assert_eq!((status, code), (409, "external_issuer"), "{e}");
    assert!(
        message.contains("managed by the identity provider")
            && message.contains(s.provider.issuer()),
        "{message}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rotated_key_is_picked_up_without_restart() -> anyhow::Result<()> {
    let s = Setup::start().await?;
    let before = s.provider.token(AUDIENCE).await?;
    s.client(before.clone())?.whoami().await?;

    let new_kid = s.provider.rotate().await?;
    let after = s.provider.token(AUDIENCE).await?;
    assert_eq!(kid_of(&after), new_kid);
    assert_ne!(kid_of(&after), kid_of(&before));

    // pitwalld refetches the keys for an unknown kid at most once per interval (10 s by
    // default) after its last fetch: wait for that, not longer.
    let client = s.client(after)?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let me = loop {
        match client.whoami().await {
            Ok(me) => break me,
            Err(e) if api_error(&e).0 == 401 && tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(250)).await
            }
            Err(e) => anyhow::bail!(
                "the token signed with the new key was not accepted: {e}\n--- pitwalld log ---\n{}",
                s.daemon.log_text()
            ),
        }
    };
    assert_eq!(me.username, "alice");
    s.client(before)?
        .whoami()
        .await
        .map_err(|e| anyhow::anyhow!("the old key is still published: {e}"))?;
    Ok(())
}

fn b64url(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// Seconds since the epoch.
fn now() -> i64 {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_secs();
    i64::try_from(secs).expect("seconds fit")
}

/// Claims shaped like the provider's own tokens, valid now for Pitwall: `iss` the provider,
/// `aud` Pitwall, Keycloak-shaped roles.
fn valid_claims(issuer: &str, username: &str, roles: &[&str]) -> serde_json::Value {
    let now = now();
    serde_json::json!({
        "iss": issuer,
        "aud": AUDIENCE,
        "sub": format!("sub-{username}"),
        "preferred_username": username,
        "realm_access": { "roles": roles },
        "iat": now,
        "nbf": now,
        "exp": now + 300,
    })
}

/// The signing input `header.payload` of a compact JWS.
fn signing_input(header: &serde_json::Value, claims: &serde_json::Value) -> String {
    format!(
        "{}.{}",
        b64url(header.to_string().as_bytes()),
        b64url(claims.to_string().as_bytes())
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn hostile_tokens_are_refused_with_401_naming_the_cause() -> anyhow::Result<()> {
    let s = Setup::start().await?;
    let issuer = s.provider.issuer().to_owned();
    let no_header = serde_json::Value::Null;
    // The provider's current kid, as its own tokens carry it.
    let real_kid = kid_of(&s.provider.token(AUDIENCE).await?);

    // Control: entirely valid claims through /__sign are accepted, so every refusal below is
    // down to the one flaw of its token, not to /__sign.
    let control = s
        .provider
        .sign(
            &valid_claims(&issuer, "carol", &["pitwall-admin"]),
            &no_header,
        )
        .await?;
    assert_eq!(kid_of(&control), real_kid);
    let admin = s.client(control)?;
    let me = admin.whoami().await?;
    assert_eq!((me.username.as_str(), me.admin), ("carol", true), "{me:?}");

    let mut hostile: Vec<(&str, String, Vec<String>)> = Vec::new();

    let mut claims = valid_claims(&issuer, "mallory", &["pitwall-admin"]);
    claims["iat"] = (now() - 7200).into();
    claims["nbf"] = (now() - 7200).into();
    claims["exp"] = (now() - 3600).into(); // well beyond the 30 s leeway
    hostile.push((
        "expired",
        s.provider.sign(&claims, &no_header).await?,
        vec!["expired".into()],
    ));

    let mut claims = valid_claims(&issuer, "mallory", &["pitwall-admin"]);
    claims["nbf"] = (now() + 3600).into();
    claims["exp"] = (now() + 7200).into();
    hostile.push((
        "not yet valid",
        s.provider.sign(&claims, &no_header).await?,
        vec!["not valid yet".into()],
    ));

    let other_issuer = "https://issuer.example.com/realms/evil";
    let claims = valid_claims(other_issuer, "mallory", &["pitwall-admin"]);
    hostile.push((
        "wrong iss",
        s.provider.sign(&claims, &no_header).await?,
        vec!["issuer".into(), other_issuer.into(), issuer.clone()],
    ));

    let claims = valid_claims(&issuer, "mallory", &["pitwall-admin"]);
    let input = signing_input(&serde_json::json!({ "alg": "none", "typ": "JWT" }), &claims);
    hostile.push((
        "alg: none",
        format!("{input}."),
        vec!["algorithm".into(), "none".into()],
    ));

    // The classic confusion: HS256 keyed with the public key (as PEM), under the real kid.
    let pem = s.provider.public_key_pem().await?;
    let header = serde_json::json!({ "alg": "HS256", "typ": "JWT", "kid": real_kid });
    let input = signing_input(&header, &claims);
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(pem.as_bytes())?;
    mac.update(input.as_bytes());
    let mac = mac.finalize().into_bytes();
    hostile.push((
        "HS256 with the public key",
        format!("{input}.{}", b64url(&mac)),
        vec!["algorithm".into(), "HS256".into()],
    ));

    let unknown = serde_json::json!({ "kid": "no-such-key" });
    hostile.push((
        "unknown kid",
        s.provider.sign(&claims, &unknown).await?,
        vec!["unknown key".into(), "no-such-key".into()],
    ));

    // A real signature over a harmless payload, with the payload swapped for an admin's.
    let harmless = s
        .provider
        .sign(&valid_claims(&issuer, "mallory", &[]), &no_header)
        .await?;
    s.client(harmless.clone())?.whoami().await?; // genuinely valid as signed
    let parts: Vec<&str> = harmless.split('.').collect();
    let forged = valid_claims(&issuer, "admin", &["pitwall-admin"]);
    hostile.push((
        "tampered payload",
        format!(
            "{}.{}.{}",
            parts[0],
            b64url(forged.to_string().as_bytes()),
            parts[2]
        ),
        vec!["signature".into()],
    ));

    for (case, token, needles) in &hostile {
        let client = s.client(token.clone())?;
        let e = client.whoami().await.unwrap_err();
        let (status, code, message) = api_error(&e);
        assert_eq!((status, code), (401, "unauthenticated"), "{case}: {e}");
        for needle in needles {
            assert!(
                message.contains(needle.as_str()),
                "{case}: the message does not say {needle:?}: {message}"
            );
        }
        // Nor can it change anything.
        let e = client
            .create_vm(&CreateVmRequest {
                name: "intruder".into(),
                image: "e2e/hello:1.0".into(),
                start: Some(false),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(api_error(&e).0, 401, "{case}: {e}");
    }

    assert!(admin.list_vms().await?.is_empty());
    let entries = admin.audit(None, Some(1000), None).await?;
    assert!(
        entries
            .iter()
            .all(|e| e.actor != "mallory" && e.actor != "admin"),
        "a hostile identity in the audit log: {entries:?}"
    );
    let creates: Vec<_> = entries.iter().filter(|e| e.path == "/v1/vms").collect();
    assert_eq!(creates.len(), hostile.len(), "{entries:?}");
    assert!(
        creates.iter().all(|e| e.outcome == "unauthenticated"),
        "{creates:?}"
    );
    Ok(())
}

/// The `pitwall` CLI against this daemon, with its config and credentials in `home`.
fn pitwall(api: &str, home: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(pitwall_testkit::bin_dir().join("pitwall"));
    cmd.arg("--api")
        .arg(api)
        .args(args)
        .env("XDG_CONFIG_HOME", home.join("config"))
        .env("HOME", home)
        .env_remove("PITWALL_CONFIG")
        .env_remove("PITWALL_API")
        .env_remove("PITWALL_TOKEN")
        .stdin(Stdio::null())
        .kill_on_drop(true);
    cmd
}

/// Run to completion: exit status, stdout, stderr.
async fn run(mut cmd: Command) -> anyhow::Result<(ExitStatus, String, String)> {
    let out = cmd.output().await?;
    Ok((
        out.status,
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

#[tokio::test(flavor = "multi_thread")]
async fn the_cli_logs_in_with_the_device_grant_and_out_again() -> anyhow::Result<()> {
    let s = Setup::start().await?;
    let bin = pitwall_testkit::bin_dir().join("pitwall");
    anyhow::ensure!(
        bin.is_file(),
        "{} not built: run `cargo build --workspace --bins`",
        bin.display()
    );
    let home = tempfile::tempdir()?;
    let api = s.daemon.api.as_str();

    let mut login = pitwall(api, home.path(), &["login"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let stderr = login.stderr.take().expect("piped stderr");
    let mut lines = BufReader::new(stderr).lines();
    // "To log in, open URI\nand check that it shows the code CODE (or open …)" or, without a
    // complete URI, "To log in, open URI\nand enter the code CODE".
    let mut shown = String::new();
    let (uri, code) = tokio::time::timeout(Duration::from_secs(30), async {
        let mut uri = None;
        while let Some(line) = lines.next_line().await? {
            shown.push_str(&line);
            shown.push('\n');
            if let Some(u) = line.strip_prefix("To log in, open ") {
                uri = Some(u.trim().to_owned());
            }
            let code = line
                .split_once("shows the code ")
                .or_else(|| line.split_once("enter the code "))
                .map(|(_, rest)| rest.split_whitespace().next().unwrap_or("").to_owned());
            if let (Some(uri), Some(code)) = (&uri, code) {
                return anyhow::Ok((uri.clone(), code));
            }
        }
        anyhow::bail!("pitwall login ended without showing a code; its stderr:\n{shown}")
    })
    .await
    .map_err(|_| anyhow::anyhow!("pitwall login showed no code within 30 s"))??;
    // Keep draining stderr while it polls.
    let rest = tokio::spawn(async move {
        let mut text = String::new();
        while let Ok(Some(line)) = lines.next_line().await {
            text.push_str(&line);
            text.push('\n');
        }
        text
    });

    s.provider.approve_device(&uri, &code, "carol").await?;
    let out = tokio::time::timeout(Duration::from_secs(60), login.wait_with_output())
        .await
        .map_err(|_| anyhow::anyhow!("pitwall login did not finish within 60 s of approval"))??;
    let stderr = rest.await?;
    assert!(
        out.status.success(),
        "pitwall login: {}\n{}{stderr}",
        out.status,
        String::from_utf8_lossy(&out.stdout)
    );

    let (status, stdout, stderr) = run(pitwall(api, home.path(), &["whoami"])).await?;
    assert!(status.success(), "whoami: {status}\n{stderr}");
    assert!(stdout.contains("carol"), "{stdout}");
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("user:") && l.ends_with("carol")),
        "{stdout}"
    );

    let (status, stdout, stderr) = run(pitwall(api, home.path(), &["vm", "list"])).await?;
    assert!(status.success(), "vm list: {status}\n{stdout}{stderr}");

    let (status, _, stderr) = run(pitwall(api, home.path(), &["logout"])).await?;
    assert!(status.success(), "logout: {status}\n{stderr}");
    let (status, _, stderr) = run(pitwall(api, home.path(), &["vm", "list"])).await?;
    assert_eq!(status.code(), Some(9), "vm list after logout: {stderr}");
    Ok(())
}
