//! JWT validation against a real OIDC provider: panva's `oidc-provider` (npm), run by
//! `tests/fixtures/oidc/server.mjs` on 127.0.0.1. Tokens come from the client_credentials
//! grant with a resource indicator (JWT access tokens, Keycloak-shaped claims).
//!
//! Needs `node` and the fixture's `node_modules` (`scripts/setup.sh` installs them); without
//! them these tests fail and say so.

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use pitwall_control::auth::jwt::{Validator, ValidatorConfig};
use pitwall_control::auth::oidc::OidcKeySource;
use pitwall_control::auth::{AuthError, Principal};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

const AUDIENCE: &str = "pitwall";

/// A running `oidc-provider`, killed when dropped.
struct Provider {
    issuer: String,
    http: reqwest::Client,
    _child: Child,
}

impl Provider {
    async fn start() -> Self {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/oidc");
        assert!(
            dir.join("node_modules/oidc-provider").is_dir(),
            "{} has no node_modules/oidc-provider: run scripts/setup.sh (it runs `npm install` there; needs node and npm)",
            dir.display()
        );
        let mut child = Command::new("node")
            .arg("server.mjs")
            .current_dir(&dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot run `node` ({e}): install Node.js 20+ and run scripts/setup.sh")
            });
        // Through the test harness, so the provider's warnings show only when a test fails.
        let mut stderr = BufReader::new(child.stderr.take().expect("piped stderr")).lines();
        tokio::spawn(async move {
            while let Ok(Some(line)) = stderr.next_line().await {
                eprintln!("oidc-provider: {line}");
            }
        });
        let stdout = child.stdout.take().expect("piped stdout");
        let mut lines = BufReader::new(stdout).lines();
        let port = tokio::time::timeout(Duration::from_secs(30), async {
            while let Some(line) = lines.next_line().await.expect("read provider stdout") {
                if let Some(port) = line.strip_prefix("listening ") {
                    return port.trim().parse::<u16>().expect("port number");
                }
            }
            panic!("the OIDC provider exited before listening (its stderr is above)");
        })
        .await
        .expect("the OIDC provider did not start listening within 30 s");
        // Keep draining stdout so the provider never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Self {
            issuer: format!("http://127.0.0.1:{port}"),
            http: reqwest::Client::new(),
            _child: child,
        }
    }

    /// A JWT access token for client `pitwall-cli` whose `aud` is `audience`.
    async fn token(&self, audience: &str) -> String {
        let response: serde_json::Value = self
            .http
            .post(format!("{}/token", self.issuer))
            .form(&[
                ("grant_type", "client_credentials"),
                ("client_id", "pitwall-cli"),
                ("client_secret", "pitwall-secret"),
                ("resource", &format!("urn:{audience}")),
            ])
            .send()
            .await
            .expect("token request")
            .error_for_status()
            .expect("token endpoint answers 200")
            .json()
            .await
            .expect("token response is JSON");
        response["access_token"]
            .as_str()
            .expect("access_token in the response")
            .to_owned()
    }

    /// Signs new tokens with a fresh key (the old one stays published); returns its kid.
    async fn rotate(&self) -> String {
        let response: serde_json::Value = self
            .http
            .post(format!("{}/__rotate", self.issuer))
            .send()
            .await
            .expect("rotate request")
            .json()
            .await
            .expect("rotate response is JSON");
        response["kid"].as_str().expect("kid").to_owned()
    }

    async fn keys(&self, min_refresh_interval: Duration) -> Arc<OidcKeySource> {
        let source = OidcKeySource::discover(&self.issuer, self.http.clone())
            .await
            .expect("discovery")
            .with_min_refresh_interval(min_refresh_interval);
        Arc::new(source)
    }

    fn validator(&self, keys: Arc<OidcKeySource>) -> Arc<Validator> {
        Arc::new(Validator::new(
            ValidatorConfig::new(self.issuer.clone(), AUDIENCE),
            keys,
        ))
    }
}

fn kid_of(token: &str) -> String {
    jsonwebtoken::decode_header(token)
        .expect("header")
        .kid
        .expect("kid")
}

#[tokio::test]
async fn provider_token_is_accepted_and_mapped() {
    let provider = Provider::start().await;
    let validator = provider.validator(provider.keys(Duration::from_secs(10)).await);
    let principal = validator
        .validate(&provider.token(AUDIENCE).await)
        .await
        .expect("the provider's token is valid");
    assert_eq!(
        principal,
        Principal {
            subject: "pitwall-cli".into(),
            username: "alice".into(),
            roles: vec![
                "pitwall-admin".into(),
                "offline_access".into(),
                "vm-operator".into()
            ],
            groups: vec!["/ops".into(), "/ops/oncall".into()],
            is_admin: true,
        }
    );
}

#[tokio::test]
async fn provider_token_for_another_audience_is_refused() {
    let provider = Provider::start().await;
    let validator = provider.validator(provider.keys(Duration::from_secs(10)).await);
    assert_eq!(
        validator.validate(&provider.token("other").await).await,
        Err(AuthError::Audience(AUDIENCE.into()))
    );
}

#[tokio::test]
async fn discovery_refuses_an_issuer_spelt_differently() {
    let provider = Provider::start().await;
    let result =
        OidcKeySource::discover(&format!("{}/", provider.issuer), provider.http.clone()).await;
    match result {
        Err(AuthError::KeySource(message)) => assert!(
            message.contains("names the issuer"),
            "unexpected message: {message}"
        ),
        Err(other) => panic!("unexpected error: {other}"),
        Ok(_) => panic!("an issuer with a trailing slash was accepted"),
    }
}

#[tokio::test]
async fn rotated_key_is_picked_up_without_restart() {
    let provider = Provider::start().await;
    let keys = provider.keys(Duration::ZERO).await;
    let validator = provider.validator(keys.clone());
    let before = provider.token(AUDIENCE).await;
    validator
        .validate(&before)
        .await
        .expect("token before rotation");
    assert_eq!(keys.fetches(), 1);

    let new_kid = provider.rotate().await;
    let after = provider.token(AUDIENCE).await;
    assert_eq!(kid_of(&after), new_kid);
    assert_ne!(kid_of(&after), kid_of(&before));

    validator
        .validate(&after)
        .await
        .expect("token signed with the new key");
    assert_eq!(keys.fetches(), 2, "one refresh for the new kid");
    validator
        .validate(&before)
        .await
        .expect("the old key is still published");
    assert_eq!(keys.fetches(), 2, "known keys need no refresh");
}

#[tokio::test]
async fn refreshes_are_bounded_and_shared_by_concurrent_callers() {
    let interval = Duration::from_secs(3);
    let provider = Provider::start().await;
    let keys = provider.keys(interval).await;
    let discovered = tokio::time::Instant::now();
    let validator = provider.validator(keys.clone());
    provider.rotate().await;
    let token = provider.token(AUDIENCE).await;
    let kid = kid_of(&token);

    let validate_many = || {
        futures::future::join_all((0..8).map(|_| {
            let (validator, token) = (validator.clone(), token.clone());
            async move { validator.validate(&token).await }
        }))
    };

    // Within the interval after discovery's fetch: no network refresh, the kid stays unknown.
    for result in validate_many().await {
        assert_eq!(result, Err(AuthError::UnknownKey(kid.clone())));
    }
    assert!(
        discovered.elapsed() < interval,
        "test too slow to check the bound"
    );
    assert_eq!(keys.fetches(), 1);

    // The bound is a span of time, so waiting it out is the condition itself.
    tokio::time::sleep_until(discovered + interval).await;
    for result in validate_many().await {
        result.expect("the new key is found after one shared refresh");
    }
    assert_eq!(keys.fetches(), 2);
}
