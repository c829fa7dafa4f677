//! JWT validation against a real OIDC provider: panva's `oidc-provider` (npm), run by
//! `tests/fixtures/oidc/server.mjs` on 127.0.0.1. Tokens come from the client_credentials
//! grant with a resource indicator (JWT access tokens, Keycloak-shaped claims).
//!
//! Needs `node` and the fixture's `node_modules` (`scripts/setup.sh` installs them); without
//! them these tests fail and say so.

use std::sync::Arc;
use std::time::Duration;

use pitwall_control::auth::jwt::{Validator, ValidatorConfig};
use pitwall_control::auth::oidc::OidcKeySource;
use pitwall_control::auth::{AuthError, Principal};
use pitwall_testkit::oidc::OidcProvider;

const AUDIENCE: &str = "pitwall";

/// The fixture, with the validation pieces these tests build on it.
struct Provider(OidcProvider);

impl Provider {
    async fn start() -> Self {
        Self(OidcProvider::start().await.expect("the OIDC provider"))
    }

    fn issuer(&self) -> &str {
        self.0.issuer()
    }

    /// A JWT access token for client `pitwall-cli` whose `aud` is `audience`.
    async fn token(&self, audience: &str) -> String {
        self.0.token(audience).await.expect("a provider token")
    }

    /// Signs new tokens with a fresh key (the old one stays published); returns its kid.
    async fn rotate(&self) -> String {
        self.0.rotate().await.expect("key rotation")
    }

    async fn keys(&self, min_refresh_interval: Duration) -> Arc<OidcKeySource> {
        let source = OidcKeySource::discover(self.issuer(), self.0.http().clone())
            .await
            .expect("discovery")
            .with_min_refresh_interval(min_refresh_interval);
        Arc::new(source)
    }

    fn validator(&self, keys: Arc<OidcKeySource>) -> Arc<Validator> {
        Arc::new(Validator::new(
            ValidatorConfig::new(self.issuer(), AUDIENCE),
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
            via: pitwall_control::auth::Via::Token,
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
    let result = OidcKeySource::discover(
        &format!("{}/", provider.issuer()),
        provider.0.http().clone(),
    )
    .await;
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
