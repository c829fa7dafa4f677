//! The built-in issuer of the embedded default (`pitwalld all`): local users with argon2id
//! password hashes in the store, and ES256-signed JWTs shaped like Keycloak's (`iss`, `aud`,
//! `sub`, `preferred_username`, `realm_access.roles`, `groups`, `iat`, `nbf`, `exp`, `kid` in
//! the header), so the one validation path that accepts an external OIDC issuer's tokens
//! accepts these too, through [`KeySource`].
//!
//! On first start [`BuiltinIssuer::open`] generates the P-256 signing key (PKCS#8 PEM, mode
//! 0600, in the data directory) and the `admin` user with a random one-time password, which it
//! returns for the caller to print once and writes to `admin-credentials` (mode 0600). Later
//! starts load the key and write nothing. The key's id is its RFC 7638 thumbprint.
//!
//! What it must not do: keep or log a plain password, say whether a failed login's username
//! exists, or put private key material in [`BuiltinIssuer::jwks`]. Hashing, signing and key
//! handling come from `argon2`, `jsonwebtoken` and `p256`; only the file handling (atomic
//! writes with mode 0600) is written here.

use std::fmt;
use std::io::Write as _;
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use argon2::password_hash::{PasswordHash, PasswordHasher as _, PasswordVerifier as _, SaltString};
use argon2::Argon2;
use async_trait::async_trait;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use jsonwebtoken::jwk::{Jwk, JwkSet, PublicKeyUse, ThumbprintHash};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use p256::pkcs8::{EncodePrivateKey as _, LineEnding};
use pitwall_store::{Store, StoreError, UserRecord};
use rand_core::{OsRng, RngCore as _};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::auth::{AuthError, KeySource};

/// The user created on first start.
pub const ADMIN_USERNAME: &str = "admin";
/// The default role that makes a user an administrator (`auth.admin_role`); the bootstrapped
/// admin gets the configured one.
pub const ADMIN_ROLE: &str = "pitwall-admin";
/// The signing key, in the data directory: PKCS#8 PEM, mode 0600.
pub const KEY_FILE: &str = "issuer-key.pem";
/// The admin's one-time credentials, in the data directory: mode 0600, written once.
pub const ADMIN_CREDENTIALS_FILE: &str = "admin-credentials";
/// How long an issued token is valid unless [`BuiltinIssuer::with_token_lifetime`] says
/// otherwise.
pub const DEFAULT_TOKEN_LIFETIME: Duration = Duration::from_secs(60 * 60);
/// How long a refresh token is valid: a CLI that is used at least weekly stays logged in.
pub const DEFAULT_REFRESH_LIFETIME: Duration = Duration::from_secs(7 * 24 * 60 * 60);
/// Suffix of the audience of refresh tokens: they are signed by the same key but can never
/// pass as access tokens (their `aud` is not the API's).
const REFRESH_AUDIENCE_SUFFIX: &str = "#refresh";
/// Shortest password [`BuiltinIssuer::create_user`] accepts, in characters.
pub const MIN_PASSWORD_CHARS: usize = 12;
/// Longest password accepted, in bytes (bounds the work one request can ask for).
pub const MAX_PASSWORD_BYTES: usize = 1024;
const MAX_USERNAME_LEN: usize = 63;
/// Random bytes of a generated password (32 characters of base64url).
const SECRET_BYTES: usize = 24;

#[derive(Debug, thiserror::Error)]
pub enum IssuerError {
    /// Unknown user or wrong password: deliberately the same error.
    #[error("invalid username or password")]
    InvalidCredentials,
    #[error("user {0:?} is disabled: ask an administrator to enable it")]
    Disabled(String),
    #[error("the refresh token is not valid ({0}): log in again with `pitwall login`")]
    InvalidRefresh(String),
    #[error(
        "invalid username {name:?}: {reason}; use 1-63 characters of a-z, 0-9, '-', '_' and '.', \
         starting with a letter or digit"
    )]
    InvalidUsername { name: String, reason: String },
    #[error("password is too short: use at least {MIN_PASSWORD_CHARS} characters (a few words make a good one)")]
    WeakPassword,
    #[error("password is too long: use at most {MAX_PASSWORD_BYTES} bytes")]
    PasswordTooLong,
    #[error(
        "a user named {0:?} already exists: pick another name, or change that user's password"
    )]
    UserExists(String),
    #[error("no user {0:?}")]
    NoSuchUser(String),
    #[error(
        "cannot use the signing key {}: {detail}; restore it from a backup, or remove it to \
         generate a new one (tokens signed with the old key then stop validating)",
        path.display()
    )]
    Key { path: PathBuf, detail: String },
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write {}: {source}; check that the data directory is writable", path.display())]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the operating system gave no randomness: {0}")]
    Random(String),
    #[error("password hashing failed: {0}")]
    Hash(String),
    #[error("cannot sign the token: {0}")]
    Sign(jsonwebtoken::errors::Error),
    #[error("user store: {0}")]
    Store(StoreError),
}

impl From<StoreError> for IssuerError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::UserTaken(name) => Self::UserExists(name),
            StoreError::NoSuchUser(name) => Self::NoSuchUser(name),
            other => Self::Store(other),
        }
    }
}

/// The admin created on first start, for the caller to print once. The same is in
/// `credentials_file`.
#[derive(Clone, PartialEq, Eq)]
pub struct AdminBootstrap {
    pub username: String,
    pub password: String,
    pub credentials_file: PathBuf,
}

impl fmt::Debug for AdminBootstrap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AdminBootstrap")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .field("credentials_file", &self.credentials_file)
            .finish()
    }
}

/// A token from [`BuiltinIssuer::login`].
#[derive(Clone, PartialEq, Eq)]
pub struct IssuedToken {
    /// The signed JWT, for `Authorization: Bearer`.
    pub access_token: String,
    /// Seconds until it expires.
    pub expires_in: u64,
    /// Trade it at [`BuiltinIssuer::refresh`] for a new pair (valid
    /// [`DEFAULT_REFRESH_LIFETIME`]).
    pub refresh_token: String,
}

impl fmt::Debug for IssuedToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IssuedToken")
            .field("access_token", &"<redacted>")
            .field("refresh_token", &"<redacted>")
            .field("expires_in", &self.expires_in)
            .finish()
    }
}

/// Keycloak's `realm_access` claim.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RealmAccess {
    pub roles: Vec<String>,
}

/// The claims of a token the built-in issuer signs (a subset of Keycloak's).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    pub iss: String,
    pub aud: String,
    /// The username: it is the stable id of a local user.
    pub sub: String,
    pub preferred_username: String,
    pub realm_access: RealmAccess,
    pub groups: Vec<String>,
    pub iat: i64,
    pub nbf: i64,
    pub exp: i64,
    /// Unique per token.
    pub jti: String,
}

/// The claims of a refresh token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct RefreshClaims {
    iss: String,
    /// The API's audience plus `#refresh`.
    aud: String,
    sub: String,
    /// Always `refresh`.
    typ: String,
    iat: i64,
    exp: i64,
    jti: String,
}

/// Local users and the key that signs their tokens.
pub struct BuiltinIssuer {
    store: Arc<dyn Store>,
    issuer_url: String,
    audience: String,
    token_lifetime: Duration,
    kid: String,
    encoding_key: EncodingKey,
    decoding_key: jsonwebtoken::DecodingKey,
    jwks: JwkSet,
    /// Verified against when the user is unknown, so that failure costs the same either way.
    dummy_hash: String,
}

impl fmt::Debug for BuiltinIssuer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BuiltinIssuer")
            .field("issuer_url", &self.issuer_url)
            .field("audience", &self.audience)
            .field("token_lifetime", &self.token_lifetime)
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

impl BuiltinIssuer {
    /// Load the signing key from `data_dir` (generating it on first start), and create the
    /// admin user when the store has none. Returns the admin's one-time credentials only when
    /// it was created now; they are then also in `data_dir/admin-credentials`.
    pub async fn open(
        data_dir: &Path,
        store: Arc<dyn Store>,
        issuer_url: String,
        audience: String,
        admin_role: &str,
    ) -> Result<(BuiltinIssuer, Option<AdminBootstrap>), IssuerError> {
        std::fs::create_dir_all(data_dir).map_err(|source| IssuerError::Write {
            path: data_dir.to_path_buf(),
            source,
        })?;
        let key_path = data_dir.join(KEY_FILE);
        let pem = load_or_create_key(&key_path)?;
        let bad_key = |detail: String| IssuerError::Key {
            path: key_path.clone(),
            detail,
        };
        let encoding_key = EncodingKey::from_ec_pem(pem.as_bytes())
            .map_err(|e| bad_key(format!("not a PKCS#8 P-256 private key in PEM: {e}")))?;
        let mut jwk = Jwk::from_encoding_key(&encoding_key, Algorithm::ES256)
            .map_err(|e| bad_key(format!("no public key from it: {e}")))?;
        let kid = jwk
            .thumbprint(ThumbprintHash::SHA256)
            .map_err(|e| bad_key(format!("no thumbprint of it: {e}")))?;
        jwk.common.key_id = Some(kid.clone());
        jwk.common.public_key_use = Some(PublicKeyUse::Signature);
        let decoding_key = jsonwebtoken::DecodingKey::from_jwk(&jwk)
            .map_err(|e| bad_key(format!("no verification key from it: {e}")))?;
        let dummy_hash = hash_password(random_secret()?).await?;
        let issuer = BuiltinIssuer {
            store,
            issuer_url,
            audience,
            token_lifetime: DEFAULT_TOKEN_LIFETIME,
            kid,
            encoding_key,
            decoding_key,
            jwks: JwkSet { keys: vec![jwk] },
            dummy_hash,
        };
        let bootstrap = issuer.bootstrap_admin(data_dir, admin_role).await?;
        tracing::info!(issuer = %issuer.issuer_url, kid = %issuer.kid, "built-in issuer ready");
        Ok((issuer, bootstrap))
    }

    /// Tokens issued from now on are valid for `lifetime` (whole seconds).
    #[must_use]
    pub fn with_token_lifetime(mut self, lifetime: Duration) -> Self {
        self.token_lifetime = lifetime;
        self
    }

    pub fn issuer_url(&self) -> &str {
        &self.issuer_url
    }

    pub fn audience(&self) -> &str {
        &self.audience
    }

    /// Id of the signing key (its RFC 7638 SHA-256 thumbprint), the `kid` of every token.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The public signing key, as a JWKS (no private parameter).
    pub fn jwks(&self) -> JwkSet {
        self.jwks.clone()
    }

    /// Check a username and password and sign a token for that user. An unknown user and a
    /// wrong password fail alike ([`IssuerError::InvalidCredentials`]) and take about the same
    /// time (a hash is verified either way); a disabled user is refused, saying so only to a
    /// caller who knew the password.
    pub async fn login(&self, username: &str, password: &str) -> Result<IssuedToken, IssuerError> {
        let user = self.store.get_user(username).await?;
        let hash = user
            .as_ref()
            .map_or_else(|| self.dummy_hash.clone(), |u| u.password_hash.clone());
        let matches = verify_password(password.to_owned(), hash).await?;
        let Some(user) = user.filter(|_| matches) else {
            tracing::debug!(
                user = username,
                "login refused: invalid username or password"
            );
            return Err(IssuerError::InvalidCredentials);
        };
        if user.disabled {
            tracing::debug!(user = username, "login refused: user disabled");
            return Err(IssuerError::Disabled(user.username));
        }
        let token = self.issue(&user)?;
        tracing::info!(user = username, "token issued");
        Ok(token)
    }

    /// Trade a refresh token for a new access token and refresh token. The user must still
    /// exist and be enabled: deleting or disabling a user ends their sessions at the next
    /// refresh (their access tokens run out within [`DEFAULT_TOKEN_LIFETIME`]).
    pub async fn refresh(&self, refresh_token: &str) -> Result<IssuedToken, IssuerError> {
        let mut validation = jsonwebtoken::Validation::new(Algorithm::ES256);
        validation.set_issuer(&[&self.issuer_url]);
        validation.set_audience(&[self.refresh_audience()]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        validation.leeway = 30;
        let claims =
            jsonwebtoken::decode::<RefreshClaims>(refresh_token, &self.decoding_key, &validation)
                .map_err(|e| IssuerError::InvalidRefresh(format!("{:?}", e.kind())))?
                .claims;
        if claims.typ != "refresh" {
            return Err(IssuerError::InvalidRefresh("not a refresh token".into()));
        }
        let Some(user) = self.store.get_user(&claims.sub).await? else {
            return Err(IssuerError::InvalidRefresh(
                "the user no longer exists".into(),
            ));
        };
        if user.disabled {
            return Err(IssuerError::Disabled(user.username));
        }
        let token = self.issue(&user)?;
        tracing::debug!(user = %user.username, "token refreshed");
        Ok(token)
    }

    fn refresh_audience(&self) -> String {
        format!("{}{REFRESH_AUDIENCE_SUFFIX}", self.audience)
    }

    /// Create a local user. The username is 1-63 of a-z, 0-9, `-`, `_`, `.`, starting with a
    /// letter or digit; the password at least [`MIN_PASSWORD_CHARS`] characters.
    pub async fn create_user(
        &self,
        username: &str,
        password: &str,
        roles: Vec<String>,
        groups: Vec<String>,
    ) -> Result<(), IssuerError> {
        validate_username(username)?;
        check_password_policy(password)?;
        let user = UserRecord {
            username: username.to_string(),
            password_hash: hash_password(password.to_owned()).await?,
            roles,
            groups,
            disabled: false,
            created_at: OffsetDateTime::now_utc(),
        };
        self.store.create_user(&user).await?;
        tracing::info!(user = username, roles = ?user.roles, "user created");
        Ok(())
    }

    /// Replace a user's password (same policy as [`Self::create_user`]).
    pub async fn set_password(&self, username: &str, password: &str) -> Result<(), IssuerError> {
        check_password_policy(password)?;
        let hash = hash_password(password.to_owned()).await?;
        self.store.set_user_password(username, &hash).await?;
        tracing::info!(user = username, "password changed");
        Ok(())
    }

    fn issue(&self, user: &UserRecord) -> Result<IssuedToken, IssuerError> {
        let now = OffsetDateTime::now_utc().unix_timestamp();
        let lifetime = self.token_lifetime.as_secs();
        let claims = Claims {
            iss: self.issuer_url.clone(),
            aud: self.audience.clone(),
            sub: user.username.clone(),
            preferred_username: user.username.clone(),
            realm_access: RealmAccess {
                roles: user.roles.clone(),
            },
            groups: user.groups.clone(),
            iat: now,
            nbf: now,
            exp: now.saturating_add(i64::try_from(lifetime).unwrap_or(i64::MAX)),
            jti: uuid::Uuid::new_v4().to_string(),
        };
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(self.kid.clone());
        let access_token = jsonwebtoken::encode(&header, &claims, &self.encoding_key)
            .map_err(IssuerError::Sign)?;
        let refresh = RefreshClaims {
            iss: self.issuer_url.clone(),
            aud: self.refresh_audience(),
            sub: user.username.clone(),
            typ: "refresh".into(),
            iat: now,
            exp: now.saturating_add(
                i64::try_from(DEFAULT_REFRESH_LIFETIME.as_secs()).unwrap_or(i64::MAX),
            ),
            jti: uuid::Uuid::new_v4().to_string(),
        };
        let refresh_token = jsonwebtoken::encode(&header, &refresh, &self.encoding_key)
            .map_err(IssuerError::Sign)?;
        Ok(IssuedToken {
            access_token,
            expires_in: lifetime,
            refresh_token,
        })
    }

    /// Create the admin with a random password when the store has none; the password goes
    /// to `admin-credentials` (staged before the user is stored, put in place after).
    async fn bootstrap_admin(
        &self,
        data_dir: &Path,
        admin_role: &str,
    ) -> Result<Option<AdminBootstrap>, IssuerError> {
        if self.store.get_user(ADMIN_USERNAME).await?.is_some() {
            return Ok(None);
        }
        let password = random_secret()?;
        let admin = UserRecord {
            username: ADMIN_USERNAME.to_string(),
            password_hash: hash_password(password.clone()).await?,
            roles: vec![admin_role.to_string()],
            groups: vec![],
            disabled: false,
            created_at: OffsetDateTime::now_utc(),
        };
        let path = data_dir.join(ADMIN_CREDENTIALS_FILE);
        let staged = stage_private_file(
            &path,
            format!("username={ADMIN_USERNAME}\npassword={password}\n").as_bytes(),
        )?;
        match self.store.create_user(&admin).await {
            Ok(()) => {}
            // another replica bootstrapped it meanwhile: its credentials stand
            Err(StoreError::UserTaken(_)) => {
                discard(&staged);
                return Ok(None);
            }
            Err(e) => {
                discard(&staged);
                return Err(e.into());
            }
        }
        std::fs::rename(&staged, &path).map_err(|source| IssuerError::Write {
            path: path.clone(),
            source,
        })?;
        tracing::info!(
            user = ADMIN_USERNAME, credentials = %path.display(),
            "admin user created with a one-time password"
        );
        Ok(Some(AdminBootstrap {
            username: ADMIN_USERNAME.to_string(),
            password,
            credentials_file: path,
        }))
    }
}

#[async_trait]
impl KeySource for BuiltinIssuer {
    /// The issuer's own key: nothing to fetch, so `refresh` changes nothing.
    async fn keys(&self, _refresh: bool) -> Result<JwkSet, AuthError> {
        Ok(self.jwks())
    }
}

fn validate_username(name: &str) -> Result<(), IssuerError> {
    let invalid = |reason: String| IssuerError::InvalidUsername {
        name: name.to_string(),
        reason,
    };
    if name.is_empty() {
        return Err(invalid("it is empty".into()));
    }
    if name.len() > MAX_USERNAME_LEN {
        return Err(invalid(format!(
            "it has {} characters, more than {MAX_USERNAME_LEN}",
            name.chars().count()
        )));
    }
    if let Some((pos, c)) = name.chars().enumerate().find(|(_, c)| {
        !(c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '_' | '.'))
    }) {
        return Err(invalid(format!("{c:?} at position {pos} is not allowed")));
    }
    if !name.starts_with(|c: char| c.is_ascii_alphanumeric()) {
        return Err(invalid("it starts with a punctuation mark".into()));
    }
    Ok(())
}

fn check_password_policy(password: &str) -> Result<(), IssuerError> {
    if password.len() > MAX_PASSWORD_BYTES {
        return Err(IssuerError::PasswordTooLong);
    }
    if password.chars().count() < MIN_PASSWORD_CHARS {
        return Err(IssuerError::WeakPassword);
    }
    Ok(())
}

/// 24 random bytes, base64url without padding.
fn random_secret() -> Result<String, IssuerError> {
    let mut bytes = [0_u8; SECRET_BYTES];
    OsRng
        .try_fill_bytes(&mut bytes)
        .map_err(|e| IssuerError::Random(e.to_string()))?;
    Ok(URL_SAFE_NO_PAD.encode(bytes))
}

/// argon2id with the crate's defaults (OWASP's: 19 MiB, 2 passes, 1 lane) and a random salt,
/// as a PHC string. Off the async threads: it takes tens of milliseconds on purpose.
async fn hash_password(password: String) -> Result<String, IssuerError> {
    tokio::task::spawn_blocking(move || {
        let salt = SaltString::generate(&mut OsRng);
        Argon2::default()
            .hash_password(password.as_bytes(), &salt)
            .map(|hash| hash.to_string())
            .map_err(|e| IssuerError::Hash(e.to_string()))
    })
    .await
    .map_err(|e| IssuerError::Hash(e.to_string()))?
}

/// Whether `password` matches the PHC string `hash` (parameters are read from it). A stored
/// hash that does not parse matches nothing.
async fn verify_password(password: String, hash: String) -> Result<bool, IssuerError> {
    tokio::task::spawn_blocking(move || match PasswordHash::new(&hash) {
        Ok(parsed) => Argon2::default()
            .verify_password(password.as_bytes(), &parsed)
            .is_ok(),
        Err(e) => {
            tracing::warn!(error = %e, "stored password hash does not parse; refusing the login");
            false
        }
    })
    .await
    .map_err(|e| IssuerError::Hash(e.to_string()))
}

/// The PEM of the signing key at `path`, generated (and written with mode 0600) when absent.
fn load_or_create_key(path: &Path) -> Result<String, IssuerError> {
    match std::fs::read_to_string(path) {
        Ok(pem) => {
            if let Ok(meta) = std::fs::metadata(path) {
                let mode = meta.permissions().mode() & 0o777;
                if mode & 0o077 != 0 {
                    tracing::warn!(
                        path = %path.display(), mode = format_args!("{mode:o}"),
                        "signing key is readable by others: chmod 600 it"
                    );
                }
            }
            Ok(pem)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key = p256::SecretKey::random(&mut OsRng);
            let pem = key
                .to_pkcs8_pem(LineEnding::LF)
                .map_err(|e| IssuerError::Key {
                    path: path.to_path_buf(),
                    detail: format!("cannot encode a new key: {e}"),
                })?;
            let staged = stage_private_file(path, pem.as_bytes())?;
            std::fs::rename(&staged, path).map_err(|source| IssuerError::Write {
                path: path.to_path_buf(),
                source,
            })?;
            tracing::info!(path = %path.display(), "built-in issuer: signing key generated");
            Ok(pem.to_string())
        }
        Err(source) => Err(IssuerError::Read {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// Write `contents` to a fresh file next to `path`, mode 0600 from its creation, synced;
/// returns its path, for the caller to rename onto `path` (so `path` is never half-written).
fn stage_private_file(path: &Path, contents: &[u8]) -> Result<PathBuf, IssuerError> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let staged = path.with_file_name(format!(".{name}.tmp"));
    let write_error = |source| IssuerError::Write {
        path: staged.clone(),
        source,
    };
    // a leftover from a crash may have other permissions: start afresh
    match std::fs::remove_file(&staged) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(write_error(e)),
        _ => {}
    }
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&staged)
        .map_err(write_error)?;
    file.write_all(contents).map_err(write_error)?;
    file.sync_all().map_err(write_error)?;
    Ok(staged)
}

fn discard(staged: &Path) {
    if let Err(e) = std::fs::remove_file(staged) {
        tracing::warn!(path = %staged.display(), error = %e, "cannot remove a staged file");
    }
}

#[cfg(test)]
mod tests;
