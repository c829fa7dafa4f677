//! Identity: who is asking. Bearer JWTs are validated against an OIDC issuer (any; Keycloak
//! is the reference) or against the built-in issuer of the embedded default, through one
//! path ([`jwt`]); the result is a [`Principal`].
//!
//! [`Auth`] is what the API's guard (`api/guard.rs`) asks: it holds the validator, the
//! built-in issuer when there is no external one, and what clients need to know to log in.

use std::sync::Arc;

use async_trait::async_trait;
use pitwall_core::Policy;

pub mod issuer;
pub mod jwt;
pub mod oidc;
pub mod ssh_ca;
pub mod x509;

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
    /// How the principal proved who it is.
    pub via: Via,
}

/// How a principal proved who it is.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Via {
    /// A bearer JWT.
    #[default]
    Token,
    /// A client certificate chain on the mTLS listener: it acts for `username` within the
    /// policies of its chain.
    Certificate {
        /// Serials (lower-case hex), first-level certificate first.
        serials: Vec<String>,
        /// Policies of the chain, first-level certificate first.
        policies: Vec<Policy>,
        /// Charge path of VMs created with it: `/user:NAME/c:SERIAL/…/`.
        charge: String,
    },
}

impl Via {
    /// For the audit log and `whoami`: `token` or `certificate <leaf serial>`.
    pub fn describe(&self) -> String {
        match self {
            Via::Token => "token".into(),
            Via::Certificate { serials, .. } => {
                format!("certificate {}", serials.last().map_or("?", String::as_str))
            }
        }
    }
}

impl Principal {
    /// May this principal see (and act on) what belongs to `owner`, or is shared with
    /// `group`? Its own, its groups', and everything for admins.
    pub fn can_see(&self, owner: &str, group: Option<&str>) -> bool {
        self.is_admin || self.username == owner || group.is_some_and(|g| self.in_group(g))
    }

    /// Member of `group`? Keycloak spells groups as paths (`/ops`); the leading slash is
    /// not significant.
    pub fn in_group(&self, group: &str) -> bool {
        let want = group.trim_start_matches('/');
        self.groups
            .iter()
            .any(|g| g.trim_start_matches('/') == want)
    }
}

/// Everything the API needs to authenticate requests.
pub struct Auth {
    pub validator: jwt::Validator,
    /// The built-in issuer, when no external issuer is configured.
    pub builtin: Option<Arc<issuer::BuiltinIssuer>>,
    /// What `GET /v1/auth/config` tells clients.
    pub client: pitwall_api::AuthConfig,
    /// Policy of users and groups that have none of their own.
    pub default_policy: Policy,
    /// The deployment CA for client certificates; `None`: certificates are off.
    pub ca: Option<Arc<x509::DeploymentCa>>,
    /// The SSH CA signing per-VM user certificates; `None`: `pitwall ssh` certificates are off.
    pub ssh_ca: Option<Arc<ssh_ca::SshCa>>,
}

impl Auth {
    /// Accept client certificates signed by `ca` (on the mTLS listener).
    #[must_use]
    pub fn with_ca(mut self, ca: Arc<x509::DeploymentCa>) -> Self {
        self.ca = Some(ca);
        self
    }

    /// Issue SSH user certificates for VMs with `ca`.
    #[must_use]
    pub fn with_ssh_ca(mut self, ca: Arc<ssh_ca::SshCa>) -> Self {
        self.ssh_ca = Some(ca);
        self
    }

    /// Authentication by the built-in issuer (the embedded default); `admin_role` makes an
    /// administrator.
    pub fn builtin(
        issuer: Arc<issuer::BuiltinIssuer>,
        admin_role: &str,
        default_policy: Policy,
    ) -> Self {
        let mut cfg = jwt::ValidatorConfig::new(issuer.issuer_url(), issuer.audience());
        cfg.admin_role = admin_role.to_string();
        let client = pitwall_api::AuthConfig {
            issuer: issuer.issuer_url().to_string(),
            audience: issuer.audience().to_string(),
            builtin: true,
            client_id: None,
            device_authorization_endpoint: None,
            token_endpoint: None,
            scope: None,
            resource: None,
        };
        Self {
            validator: jwt::Validator::new(cfg, issuer.clone()),
            builtin: Some(issuer),
            client,
            default_policy,
            ca: None,
            ssh_ca: None,
        }
    }

    /// Authentication by an external OIDC issuer (its discovery and keys in `keys`); the
    /// built-in issuer is off.
    pub fn external(
        cfg: jwt::ValidatorConfig,
        keys: Arc<oidc::OidcKeySource>,
        client: pitwall_api::AuthConfig,
        default_policy: Policy,
    ) -> Self {
        Self {
            validator: jwt::Validator::new(cfg, keys),
            builtin: None,
            client,
            default_policy,
            ca: None,
            ssh_ca: None,
        }
    }
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
    #[error("client certificate refused: {0}")]
    Certificate(String),
    #[error("user {0:?} is disabled or no longer exists: ask an administrator")]
    UserGone(String),
}

/// Where verification keys come from: the issuer's JWKS (fetched and cached), or the
/// built-in issuer's own keys.
#[async_trait]
pub trait KeySource: Send + Sync {
    /// The current key set. `refresh` asks for a fresh fetch (an unknown `kid` was seen);
    /// implementations bound how often that really goes to the network.
    async fn keys(&self, refresh: bool) -> Result<jsonwebtoken::jwk::JwkSet, AuthError>;
}
