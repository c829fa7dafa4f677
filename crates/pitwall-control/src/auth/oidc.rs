//! Verification keys of an OIDC issuer (Keycloak, or any other): discovery
//! (`<issuer>/.well-known/openid-configuration` → `jwks_uri`), the JWKS fetched and cached,
//! and refreshed when a token names an unknown `kid` (the issuer rotated its keys).
//!
//! Refreshes are bounded: at most one network fetch per [`OidcKeySource::min_refresh_interval`]
//! (10 s by default), and callers that ask at the same time share one fetch. A token with a
//! made-up `kid` therefore cannot make us hammer the issuer.
//!
//! Written by hand rather than with `openidconnect`: we need only discovery and the JWKS of
//! the resource-server side, not the client flows, and `jsonwebtoken` already does the JWS.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use jsonwebtoken::jwk::{Jwk, JwkSet, PublicKeyUse};
use serde::Deserialize;
use tokio::sync::{Mutex, RwLock};

use super::{AuthError, KeySource};

/// Default bound on network refreshes of the key set.
pub const DEFAULT_MIN_REFRESH_INTERVAL: Duration = Duration::from_secs(10);

const HTTP_TIMEOUT: Duration = Duration::from_secs(10);

/// The keys of one OIDC issuer, discovered from its metadata.
pub struct OidcKeySource {
    issuer: String,
    jwks_uri: String,
    device_authorization_endpoint: Option<String>,
    token_endpoint: Option<String>,
    http: reqwest::Client,
    min_refresh_interval: Duration,
    /// The last key set fetched.
    cache: RwLock<Option<JwkSet>>,
    /// Held while fetching (so concurrent callers share one fetch); the time of the last
    /// network attempt, successful or not.
    last_attempt: Mutex<Option<Instant>>,
    fetches: AtomicU64,
}

#[derive(Deserialize)]
struct Discovery {
    issuer: String,
    jwks_uri: String,
    #[serde(default)]
    device_authorization_endpoint: Option<String>,
    #[serde(default)]
    token_endpoint: Option<String>,
}

#[derive(Deserialize)]
struct RawJwkSet {
    keys: Vec<serde_json::Value>,
}

impl OidcKeySource {
    /// Reads the issuer's discovery document and fetches its key set once, so a wrong
    /// issuer URL fails at start-up rather than at the first request. The document's
    /// `issuer` must equal `issuer_url` exactly.
    pub async fn discover(issuer_url: &str, http: reqwest::Client) -> Result<Self, AuthError> {
        let url = format!(
            "{}/.well-known/openid-configuration",
            issuer_url.trim_end_matches('/')
        );
        let discovery: Discovery = get_json(&http, &url).await?;
        if discovery.issuer != issuer_url {
            return Err(AuthError::KeySource(format!(
                "{url} names the issuer {:?}, not the configured {issuer_url:?}: \
                 configure the issuer exactly as the provider spells it",
                discovery.issuer
            )));
        }
        let source = Self {
            issuer: discovery.issuer,
            jwks_uri: discovery.jwks_uri,
            device_authorization_endpoint: discovery.device_authorization_endpoint,
            token_endpoint: discovery.token_endpoint,
            http,
            min_refresh_interval: DEFAULT_MIN_REFRESH_INTERVAL,
            cache: RwLock::new(None),
            last_attempt: Mutex::new(None),
            fetches: AtomicU64::new(0),
        };
        source.keys(true).await?;
        tracing::info!(issuer = %source.issuer, jwks_uri = %source.jwks_uri, "OIDC issuer discovered");
        Ok(source)
    }

    /// Sets the least time between two network fetches of the key set.
    #[must_use]
    pub fn with_min_refresh_interval(mut self, interval: Duration) -> Self {
        self.min_refresh_interval = interval;
        self
    }

    pub fn min_refresh_interval(&self) -> Duration {
        self.min_refresh_interval
    }

    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// The issuer's device authorization endpoint (RFC 8628), when its metadata names one.
    pub fn device_authorization_endpoint(&self) -> Option<&str> {
        self.device_authorization_endpoint.as_deref()
    }

    /// The issuer's token endpoint, when its metadata names one.
    pub fn token_endpoint(&self) -> Option<&str> {
        self.token_endpoint.as_deref()
    }

    pub fn jwks_uri(&self) -> &str {
        &self.jwks_uri
    }

    /// How many times the key set was fetched from the network (attempts, including failed).
    pub fn fetches(&self) -> u64 {
        self.fetches.load(Ordering::Relaxed)
    }

    async fn fetch(&self) -> Result<JwkSet, AuthError> {
        self.fetches.fetch_add(1, Ordering::Relaxed);
        let raw: RawJwkSet = get_json(&self.http, &self.jwks_uri).await?;
        // One key we cannot read (an encryption key, an algorithm we do not know) must not
        // make the whole set unusable.
        let keys = raw
            .keys
            .into_iter()
            .filter_map(|k| match serde_json::from_value::<Jwk>(k) {
                Ok(jwk) if jwk.common.public_key_use != Some(PublicKeyUse::Encryption) => {
                    Some(jwk)
                }
                Ok(_) => None,
                Err(e) => {
                    tracing::debug!(jwks_uri = %self.jwks_uri, error = %e, "skipping unreadable key");
                    None
                }
            })
            .collect();
        Ok(JwkSet { keys })
    }
}

#[async_trait]
impl KeySource for OidcKeySource {
    async fn keys(&self, refresh: bool) -> Result<JwkSet, AuthError> {
        if !refresh {
            if let Some(set) = self.cache.read().await.as_ref() {
                return Ok(set.clone());
            }
        }
        let mut last_attempt = self.last_attempt.lock().await;
        // Whoever held the lock before us may just have fetched: share its result.
        let recent = last_attempt.is_some_and(|t| t.elapsed() < self.min_refresh_interval);
        if let Some(set) = self.cache.read().await.as_ref() {
            if !refresh || recent {
                return Ok(set.clone());
            }
        } else if recent {
            return Err(AuthError::KeySource(format!(
                "{} failed moments ago; retrying after {:?}",
                self.jwks_uri, self.min_refresh_interval
            )));
        }
        *last_attempt = Some(Instant::now());
        match self.fetch().await {
            Ok(set) => {
                tracing::debug!(issuer = %self.issuer, keys = set.keys.len(), "key set fetched");
                *self.cache.write().await = Some(set.clone());
                Ok(set)
            }
            Err(e) => {
                tracing::warn!(issuer = %self.issuer, error = %e, "cannot refresh the key set");
                match self.cache.read().await.as_ref() {
                    // Keep serving the keys we have; the unknown kid stays unknown.
                    Some(set) => Ok(set.clone()),
                    None => Err(e),
                }
            }
        }
    }
}

async fn get_json<T: serde::de::DeserializeOwned>(
    http: &reqwest::Client,
    url: &str,
) -> Result<T, AuthError> {
    let response = http
        .get(url)
        .timeout(HTTP_TIMEOUT)
        .send()
        .await
        .map_err(|e| AuthError::KeySource(format!("GET {url}: {e}")))?;
    let status = response.status();
    if !status.is_success() {
        return Err(AuthError::KeySource(format!("GET {url}: HTTP {status}")));
    }
    response
        .json()
        .await
        .map_err(|e| AuthError::KeySource(format!("GET {url}: unexpected body: {e}")))
}
