//! Identity: who is asking. Bearer JWTs are validated against an OIDC issuer (any; Keycloak
//! is the reference) or against the built-in issuer of the embedded default, through one
//! path ([`jwt`]); the result is a [`Principal`].
//!
//! Not wired into the router yet (issue 3 lands in steps): this module is the validation
//! core and its tests.

use async_trait::async_trait;

pub mod issuer;
pub mod jwt;
pub mod oidc;

/// Who a request comes from, after validation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// `sub` claim: stable id at the issuer.
    pub subject: String,
    /// `preferred_username` (or the configured claim): what owners and identities are named by.
    pub username: String,
    /// Realm roles plus client roles of our audience.
    pub roles: Vec<String>,
    pub groups: Vec<String>,
    /// Holds the configured admin role.
    pub is_admin: bool,
}

/// Why a token was refused. Every message says what was wrong, never which key material.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("no bearer token: log in with `pitwall login` or pass a token")]
    Missing,
    #[error("token is malformed: {0}")]
    Malformed(String),
    #[error("token algorithm {0} is not accepted: only asymmetric signatures (RS*, PS*, ES*, EdDSA) are")]
    Algorithm(String),
    #[error("token is signed with unknown key {0:?} (not in the issuer's key set, even after a refresh)")]
    UnknownKey(String),
    #[error("token signature is invalid")]
    Signature,
    #[error("token has expired: log in again")]
    Expired,
    #[error("token is not valid yet (nbf in the future)")]
    NotYetValid,
    #[error("token issuer {got:?} is not the configured issuer {want:?}")]
    Issuer { got: String, want: String },
    #[error("token audience does not include {0:?}")]
    Audience(String),
    #[error("token lacks the claim {0:?}")]
    MissingClaim(String),
    #[error("cannot fetch the issuer's keys: {0}")]
    KeySource(String),
}

/// Where verification keys come from: the issuer's JWKS (fetched and cached), or the
/// built-in issuer's own keys.
#[async_trait]
pub trait KeySource: Send + Sync {
    /// The current key set. `refresh` asks for a fresh fetch (an unknown `kid` was seen);
    /// implementations bound how often that really goes to the network.
    async fn keys(&self, refresh: bool) -> Result<jsonwebtoken::jwk::JwkSet, AuthError>;
}
