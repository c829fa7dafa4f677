//! Logging in at an external OAuth 2.0 / OpenID Connect issuer: the device authorization
//! grant (RFC 8628) with a resource indicator (RFC 8707), and the refresh token grant.
//!
//! Built on the `oauth2` crate, whose device-flow poller already honours `interval`,
//! `authorization_pending` and `slow_down` (+5 s) and stops at the code's expiry; this module
//! adds the `resource` parameter, turns its errors into messages that say what to do, and
//! gives back plain [`Tokens`].

use std::time::Duration;

use oauth2::basic::{BasicClient, BasicErrorResponseType};
use oauth2::{
    ClientId, DeviceAuthorizationUrl, DeviceCodeErrorResponseType, RefreshToken, RequestTokenError,
    Scope, StandardDeviceAuthorizationResponse, StandardErrorResponse, TokenResponse as _,
    TokenUrl,
};

/// What the CLI needs to run the device flow (from the API's `/v1/auth/config`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceGrant {
    pub device_authorization_endpoint: String,
    pub token_endpoint: String,
    pub client_id: String,
    /// Space-separated scopes.
    pub scope: Option<String>,
    /// RFC 8707 resource indicator, so that the token's audience is Pitwall.
    pub resource: Option<String>,
}

/// What the user must do in a browser.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DevicePrompt {
    pub verification_uri: String,
    /// The URI with the code in it, when the issuer gives one.
    pub verification_uri_complete: Option<String>,
    pub user_code: String,
    pub expires_in: Duration,
}

impl DevicePrompt {
    /// The lines to show the user (on stderr).
    pub fn message(&self) -> String {
        let mins = self.expires_in.as_secs().div_ceil(60);
        match &self.verification_uri_complete {
            Some(complete) => format!(
                "To log in, open {complete}\nand check that it shows the code {} \
                 (or open {} and enter it).\nWaiting for you (the code expires in {mins} min)...\n",
                self.user_code, self.verification_uri
            ),
            None => format!(
                "To log in, open {}\nand enter the code {}\nWaiting for you (the code \
                 expires in {mins} min)...\n",
                self.verification_uri, self.user_code
            ),
        }
    }
}

/// Tokens an issuer gave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tokens {
    pub access_token: String,
    pub refresh_token: Option<String>,
    pub expires_in: Option<Duration>,
}

#[derive(Debug, thiserror::Error)]
pub enum OauthError {
    #[error("the login was denied at the identity provider{}", detail(.0))]
    Denied(Option<String>),
    #[error("the login code expired before it was confirmed: run `pitwall login` again")]
    CodeExpired,
    #[error("the identity provider refused the refresh token{}", detail(.0))]
    RefreshRefused(Option<String>),
    #[error("the identity provider at {url} refused: {error}{}", detail(.description))]
    Refused {
        url: String,
        error: String,
        description: Option<String>,
    },
    #[error("cannot talk to the identity provider at {url}: {why}")]
    Transport { url: String, why: String },
    #[error("unexpected answer from the identity provider at {url}: {why}")]
    Unexpected { url: String, why: String },
    #[error("invalid identity provider URL {url:?}: {why}")]
    BadUrl { url: String, why: String },
}

fn detail(d: &Option<String>) -> String {
    d.as_deref().map(|d| format!(": {d}")).unwrap_or_default()
}

/// An HTTP client for the issuer: redirects are not followed (as OAuth requires of token
/// requests).
pub fn http_client() -> Result<reqwest::Client, OauthError> {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(Duration::from_secs(10))
        .timeout(Duration::from_secs(30))
        .build()
        .map_err(|e| OauthError::Transport {
            url: "-".into(),
            why: e.to_string(),
        })
}

fn token_url(url: &str) -> Result<TokenUrl, OauthError> {
    TokenUrl::new(url.to_owned()).map_err(|e| OauthError::BadUrl {
        url: url.into(),
        why: e.to_string(),
    })
}

/// Run the device authorization grant: ask for a code, hand it to `show` (once), then poll
/// the token endpoint until the user approved, denied, or the code expired.
pub async fn device_login(
    http: &reqwest::Client,
    grant: &DeviceGrant,
    show: impl FnOnce(&DevicePrompt),
) -> Result<Tokens, OauthError> {
    let device_url = DeviceAuthorizationUrl::new(grant.device_authorization_endpoint.clone())
        .map_err(|e| OauthError::BadUrl {
            url: grant.device_authorization_endpoint.clone(),
            why: e.to_string(),
        })?;
    let client = BasicClient::new(ClientId::new(grant.client_id.clone()))
        .set_token_uri(token_url(&grant.token_endpoint)?)
        .set_device_authorization_url(device_url);

    let mut ask = client.exchange_device_code();
    for s in grant.scope.iter().flat_map(|s| s.split_whitespace()) {
        ask = ask.add_scope(Scope::new(s.to_owned()));
    }
    if let Some(r) = &grant.resource {
        ask = ask.add_extra_param("resource", r.clone());
    }
    let at = &grant.device_authorization_endpoint;
    let details: StandardDeviceAuthorizationResponse = ask
        .request_async(http)
        .await
        .map_err(|e| request_error(at, e, |e| refused(at, e)))?;
    tracing::debug!(interval = ?details.interval(), "device code issued");
    show(&DevicePrompt {
        verification_uri: details.verification_uri().to_string(),
        verification_uri_complete: details
            .verification_uri_complete()
            .map(|u| u.secret().to_owned()),
        user_code: details.user_code().secret().to_owned(),
        expires_in: details.expires_in(),
    });

    let mut poll = client.exchange_device_access_token(&details);
    if let Some(r) = &grant.resource {
        poll = poll.add_extra_param("resource", r.clone());
    }
    let at = &grant.token_endpoint;
    let token = poll
        .request_async(http, tokio::time::sleep, None)
        .await
        .map_err(|e| {
            request_error(at, e, |e| match e.error() {
                DeviceCodeErrorResponseType::AccessDenied => {
                    OauthError::Denied(e.error_description().cloned())
                }
                DeviceCodeErrorResponseType::ExpiredToken => OauthError::CodeExpired,
                _ => refused(at, e),
            })
        })?;
    Ok(Tokens {
        access_token: token.access_token().secret().to_owned(),
        refresh_token: token.refresh_token().map(|r| r.secret().to_owned()),
        expires_in: token.expires_in(),
    })
}

/// The refresh token grant at `token_endpoint`, for a public client.
pub async fn refresh(
    http: &reqwest::Client,
    token_endpoint: &str,
    client_id: &str,
    refresh_token: &str,
    resource: Option<&str>,
) -> Result<Tokens, OauthError> {
    let client = BasicClient::new(ClientId::new(client_id.to_owned()))
        .set_token_uri(token_url(token_endpoint)?);
    let rt = RefreshToken::new(refresh_token.to_owned());
    let mut req = client.exchange_refresh_token(&rt);
    if let Some(r) = resource {
        req = req.add_extra_param("resource", r.to_owned());
    }
    let token = req.request_async(http).await.map_err(|e| {
        request_error(token_endpoint, e, |e| match e.error() {
            BasicErrorResponseType::InvalidGrant => {
                OauthError::RefreshRefused(e.error_description().cloned())
            }
            _ => refused(token_endpoint, e),
        })
    })?;
    Ok(Tokens {
        access_token: token.access_token().secret().to_owned(),
        refresh_token: token.refresh_token().map(|r| r.secret().to_owned()),
        expires_in: token.expires_in(),
    })
}

fn refused<T: oauth2::ErrorResponseType + std::fmt::Display>(
    url: &str,
    e: &StandardErrorResponse<T>,
) -> OauthError {
    OauthError::Refused {
        url: url.to_owned(),
        error: e.error().to_string(),
        description: e.error_description().cloned(),
    }
}

fn request_error<RE: std::error::Error + 'static, T: oauth2::ErrorResponse + 'static>(
    url: &str,
    e: RequestTokenError<RE, T>,
    server: impl FnOnce(&T) -> OauthError,
) -> OauthError {
    match e {
        RequestTokenError::ServerResponse(r) => server(&r),
        RequestTokenError::Request(e) => OauthError::Transport {
            url: url.to_owned(),
            why: pitwall_api::root_cause(&e),
        },
        RequestTokenError::Parse(e, body) => OauthError::Unexpected {
            url: url.to_owned(),
            why: format!(
                "{e} in {}",
                String::from_utf8_lossy(&body)
                    .chars()
                    .take(300)
                    .collect::<String>()
            ),
        },
        RequestTokenError::Other(why) => OauthError::Unexpected {
            url: url.to_owned(),
            why,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_prompt_prefers_the_complete_uri_and_still_shows_the_code() {
        let mut p = DevicePrompt {
            verification_uri: "https://id/device".into(),
            verification_uri_complete: Some("https://id/device?user_code=ABCD-EFGH".into()),
            user_code: "ABCD-EFGH".into(),
            expires_in: Duration::from_secs(600),
        };
        let m = p.message();
        assert!(
            m.starts_with("To log in, open https://id/device?user_code=ABCD-EFGH\n"),
            "{m}"
        );
        assert!(m.contains("ABCD-EFGH") && m.contains("10 min"), "{m}");
        p.verification_uri_complete = None;
        let m = p.message();
        assert!(
            m.contains("open https://id/device\nand enter the code ABCD-EFGH"),
            "{m}"
        );
    }
}
