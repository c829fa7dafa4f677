//! `pitwall login`'s device authorization grant (RFC 8628) and refresh against a real OIDC
//! provider: panva's `oidc-provider` (npm), run by `tests/fixtures/oidc/server.mjs` on
//! 127.0.0.1. The CLI's [`pitwall_cli::oauth::device_login`] polls while this test plays the
//! user in a browser: it opens the verification URI, confirms the code, signs in and
//! consents through the provider's own interaction pages.
//!
//! Needs `node` and the fixture's `node_modules` (`scripts/setup.sh` installs them); without
//! them this test fails and says so.

// test code: a panic is a failed test, with its message
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use base64::Engine as _;
use pitwall_cli::oauth::{self, DeviceGrant, DevicePrompt};
use pitwall_testkit::oidc::{OidcProvider, DEVICE_CLIENT};
use tokio::sync::oneshot;

/// The grant as a Pitwall API's `/v1/auth/config` would describe it.
fn grant(provider: &OidcProvider) -> DeviceGrant {
    DeviceGrant {
        device_authorization_endpoint: format!("{}/device/auth", provider.issuer()),
        token_endpoint: format!("{}/token", provider.issuer()),
        client_id: DEVICE_CLIENT.into(),
        scope: Some("openid offline_access api".into()),
        resource: Some("urn:pitwall".into()),
    }
}

/// Play the user: open the verification URI, confirm the code, sign in as `user`, consent.
async fn approve_in_browser(provider: &OidcProvider, prompt: DevicePrompt, user: &str) {
    let open = prompt
        .verification_uri_complete
        .clone()
        .expect("oidc-provider gives verification_uri_complete");
    assert!(open.contains(&prompt.user_code) || open.contains("user_code="));
    provider
        .approve_device(&open, &prompt.user_code, user)
        .await
        .unwrap();
}

fn claims(jwt: &str) -> serde_json::Value {
    let payload = jwt.split('.').nth(1).expect("a JWT has three parts");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .unwrap();
    serde_json::from_slice(&bytes).unwrap()
}

#[tokio::test]
async fn device_login_gets_a_pitwall_jwt_and_refreshes_it() {
    let provider = OidcProvider::start().await.unwrap();
    let grant = grant(&provider);
    let http = oauth::http_client().unwrap();
    let (tx, rx) = oneshot::channel();
    let user = async {
        let prompt = rx.await.unwrap();
        approve_in_browser(&provider, prompt, "bob").await;
    };
    let login = oauth::device_login(&http, &grant, |p| {
        tx.send(p.clone()).unwrap();
    });
    let (tokens, ()) =
        tokio::time::timeout(Duration::from_secs(60), async { tokio::join!(login, user) })
            .await
            .expect("the device login did not finish within 60 s");
    let tokens = tokens.expect("device login");

    let c = claims(&tokens.access_token);
    assert_eq!(c["aud"], "pitwall", "{c}");
    assert_eq!(c["iss"], provider.issuer(), "{c}");
    assert_eq!(c["sub"], "bob", "{c}");
    assert_eq!(c["preferred_username"], "bob", "{c}");
    assert!(tokens.expires_in.is_some());
    let refresh_token = tokens
        .refresh_token
        .expect("a refresh token (scope offline_access)");

    let fresh = oauth::refresh(
        &http,
        &grant.token_endpoint,
        &grant.client_id,
        &refresh_token,
        grant.resource.as_deref(),
    )
    .await
    .expect("refresh");
    assert_ne!(fresh.access_token, tokens.access_token);
    let c = claims(&fresh.access_token);
    assert_eq!(
        (c["aud"].as_str(), c["sub"].as_str()),
        (Some("pitwall"), Some("bob")),
        "{c}"
    );
}

#[tokio::test]
async fn a_denied_device_login_says_so() {
    let provider = OidcProvider::start().await.unwrap();
    let grant = grant(&provider);
    let http = oauth::http_client().unwrap();
    let (tx, rx) = oneshot::channel();
    let user = async {
        let prompt: DevicePrompt = rx.await.unwrap();
        // the confirm page's fields, with abort instead of confirm
        provider
            .deny_device(
                &prompt.verification_uri_complete.unwrap(),
                &prompt.user_code,
            )
            .await
            .unwrap();
    };
    let login = oauth::device_login(&http, &grant, |p| {
        tx.send(p.clone()).unwrap();
    });
    let (result, ()) =
        tokio::time::timeout(Duration::from_secs(60), async { tokio::join!(login, user) })
            .await
            .expect("the device login did not finish within 60 s");
    let e = result.unwrap_err();
    assert!(matches!(e, oauth::OauthError::Denied(_)), "{e:?}");
    assert!(e.to_string().contains("denied"), "{e}");
}

#[tokio::test]
async fn a_refused_refresh_token_is_named() {
    let provider = OidcProvider::start().await.unwrap();
    let grant = grant(&provider);
    let e = oauth::refresh(
        &oauth::http_client().unwrap(),
        &grant.token_endpoint,
        &grant.client_id,
        "not-a-refresh-token",
        grant.resource.as_deref(),
    )
    .await
    .unwrap_err();
    assert!(matches!(e, oauth::OauthError::RefreshRefused(_)), "{e:?}");
}
