//! Bearer JWT validation: one path for every issuer (an OIDC provider such as Keycloak, or
//! the built-in issuer), producing a [`Principal`].
//!
//! Signature and the registered claims (`exp`, `nbf`, `iss`, `aud`) are checked by
//! `jsonwebtoken`; this module adds what it does not do for us:
//!
//! - the header is read first and anything but an asymmetric algorithm (RS*, PS*, ES256/384,
//!   EdDSA) is refused before a key is looked up. A key is only ever built from a JWK of the
//!   matching family, so a public key can never end up as an HMAC secret (the classic
//!   RS256 → HS256 confusion);
//! - the key is found by `kid`; an unknown `kid` asks the [`KeySource`] for one refresh (key
//!   rotation at the issuer), which the source bounds;
//! - the claim mapping (Keycloak's shape by default) to [`Principal`].
//!
//! Audience: the configured audience must be in `aud`. Keycloak also names the requesting
//! client in `azp`; `azp` is deliberately ignored, so a Keycloak realm must add our audience
//! to `aud` (an "audience" mapper on the client scope).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use base64::Engine as _;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, JwkSet, KeyAlgorithm};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use serde_json::Value;

use super::{AuthError, KeySource, Principal};

/// Where the parts of a [`Principal`] are read from in the token's claims.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClaimMapping {
    /// Dotted path of the username claim (default `preferred_username`).
    pub username: String,
    /// Dotted path of an array of realm roles (default `realm_access.roles`).
    pub realm_roles_path: String,
    /// Client whose roles under `resource_access.<client>.roles` count too; `None` means the
    /// configured audience (Keycloak's `resource_access` is keyed by client id).
    pub client_roles_client: Option<String>,
    /// Dotted path of an array of groups (default `groups`).
    pub groups: String,
}

impl Default for ClaimMapping {
    fn default() -> Self {
        Self {
            username: "preferred_username".into(),
            realm_roles_path: "realm_access.roles".into(),
            client_roles_client: None,
            groups: "groups".into(),
        }
    }
}

/// What a token must satisfy, and how its claims map to a [`Principal`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidatorConfig {
    /// Must equal the token's `iss` exactly (no trailing-slash normalisation).
    pub issuer: String,
    /// Must be one of the token's `aud` values.
    pub audience: String,
    /// Clock skew allowed on `exp` and `nbf` (whole seconds; default 30 s).
    pub leeway: Duration,
    pub claims: ClaimMapping,
    /// A principal holding this role is an administrator (default `pitwall-admin`).
    pub admin_role: String,
}

impl ValidatorConfig {
    /// A configuration with the defaults: 30 s leeway, Keycloak's claim shape, admin role
    /// `pitwall-admin`.
    pub fn new(issuer: impl Into<String>, audience: impl Into<String>) -> Self {
        Self {
            issuer: issuer.into(),
            audience: audience.into(),
            leeway: Duration::from_secs(30),
            claims: ClaimMapping::default(),
            admin_role: "pitwall-admin".into(),
        }
    }
}

/// Validates bearer tokens against one issuer.
pub struct Validator {
    cfg: ValidatorConfig,
    keys: Arc<dyn KeySource>,
}

/// The parts of the JOSE header we read before trusting anything.
#[derive(Deserialize)]
struct RawHeader {
    alg: String,
    kid: Option<String>,
}

impl Validator {
    pub fn new(cfg: ValidatorConfig, keys: Arc<dyn KeySource>) -> Self {
        Self { cfg, keys }
    }

    pub fn config(&self) -> &ValidatorConfig {
        &self.cfg
    }

    /// Checks `token` (the compact JWS, without `Bearer `) and maps its claims.
    pub async fn validate(&self, token: &str) -> Result<Principal, AuthError> {
        let header = read_header(token)?;
        let alg = accepted_algorithm(&header.alg)?;
        let kid = header
            .kid
            .ok_or_else(|| AuthError::Malformed("header has no `kid`".into()))?;

        let jwk = self.find_key(&kid).await?;
        let key = decoding_key(&jwk, alg, &kid)?;

        let mut validation = Validation::new(alg);
        validation.set_issuer(&[&self.cfg.issuer]);
        validation.set_audience(&[&self.cfg.audience]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        validation.validate_exp = true;
        validation.validate_nbf = true;
        validation.leeway = self.cfg.leeway.as_secs();

        let claims = jsonwebtoken::decode::<Value>(token, &key, &validation)
            .map_err(|e| self.map_error(e, token))?
            .claims;
        self.principal(&claims)
    }

    /// The key named `kid`, refreshing the set once if it is not known.
    async fn find_key(&self, kid: &str) -> Result<Jwk, AuthError> {
        if let Some(jwk) = self.keys.keys(false).await?.find(kid) {
            return Ok(jwk.clone());
        }
        tracing::debug!(kid, issuer = %self.cfg.issuer, "unknown key id, refreshing the key set");
        self.keys
            .keys(true)
            .await?
            .find(kid)
            .cloned()
            .ok_or_else(|| AuthError::UnknownKey(kid.to_owned()))
    }

    fn map_error(&self, e: jsonwebtoken::errors::Error, token: &str) -> AuthError {
        match e.into_kind() {
            ErrorKind::ExpiredSignature => AuthError::Expired,
            ErrorKind::ImmatureSignature => AuthError::NotYetValid,
            ErrorKind::InvalidIssuer => {
                // Only for the message: the signature is already verified at this point.
                let got = unverified_claims(token)
                    .and_then(|c| c.get("iss").map(render))
                    .unwrap_or_default();
                AuthError::Issuer {
                    got,
                    want: self.cfg.issuer.clone(),
                }
            }
            ErrorKind::InvalidAudience => AuthError::Audience(self.cfg.audience.clone()),
            ErrorKind::InvalidSignature => AuthError::Signature,
            ErrorKind::MissingRequiredClaim(claim) => AuthError::MissingClaim(claim),
            ErrorKind::InvalidAlgorithm
            | ErrorKind::InvalidAlgorithmName
            | ErrorKind::UnsupportedAlgorithm
            | ErrorKind::MissingAlgorithm => AuthError::Algorithm("unsupported".into()),
            ErrorKind::InvalidRsaKey(_)
            | ErrorKind::InvalidEcdsaKey
            | ErrorKind::InvalidEddsaKey
            | ErrorKind::InvalidKeyFormat => {
                AuthError::KeySource("the issuer published a key that cannot be used".into())
            }
            ErrorKind::InvalidClaimFormat(claim) => {
                AuthError::Malformed(format!("claim {claim:?} has the wrong type"))
            }
            other => AuthError::Malformed(format!("{other:?}")),
        }
    }

    fn principal(&self, claims: &Value) -> Result<Principal, AuthError> {
        let map = &self.cfg.claims;
        let subject = claims
            .get("sub")
            .and_then(Value::as_str)
            .ok_or_else(|| AuthError::MissingClaim("sub".into()))?
            .to_owned();
        let username = lookup(claims, &map.username)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .ok_or_else(|| AuthError::MissingClaim(map.username.clone()))?
            .to_owned();

        let client = map
            .client_roles_client
            .as_deref()
            .unwrap_or(&self.cfg.audience);
        let client_roles = claims
            .get("resource_access")
            .and_then(|r| r.get(client))
            .and_then(|c| c.get("roles"));
        let mut roles = Vec::new();
        for role in strings(lookup(claims, &map.realm_roles_path)).chain(strings(client_roles)) {
            if !roles.contains(&role) {
                roles.push(role);
            }
        }
        let groups = strings(lookup(claims, &map.groups)).collect();
        let is_admin = roles.contains(&self.cfg.admin_role);
        Ok(Principal {
            subject,
            username,
            roles,
            groups,
            is_admin,
            via: super::Via::Token,
        })
    }
}

/// A fixed key set: the built-in issuer's own keys, and tests.
#[derive(Debug, Clone)]
pub struct StaticKeys(pub JwkSet);

#[async_trait]
impl KeySource for StaticKeys {
    async fn keys(&self, _refresh: bool) -> Result<JwkSet, AuthError> {
        Ok(self.0.clone())
    }
}

fn read_header(token: &str) -> Result<RawHeader, AuthError> {
    let mut parts = token.split('.');
    let (Some(header), Some(_), Some(_), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(AuthError::Malformed(
            "not a compact JWS (three dot-separated parts)".into(),
        ));
    };
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(header)
        .map_err(|_| AuthError::Malformed("header is not base64url".into()))?;
    serde_json::from_slice(&bytes)
        .map_err(|e| AuthError::Malformed(format!("header is not a JOSE header: {e}")))
}

/// Asymmetric algorithms only; `none`, HS* and anything unknown are refused.
fn accepted_algorithm(alg: &str) -> Result<Algorithm, AuthError> {
    let accepted = match alg {
        "RS256" => Algorithm::RS256,
        "RS384" => Algorithm::RS384,
        "RS512" => Algorithm::RS512,
        "PS256" => Algorithm::PS256,
        "PS384" => Algorithm::PS384,
        "PS512" => Algorithm::PS512,
        "ES256" => Algorithm::ES256,
        "ES384" => Algorithm::ES384,
        "EdDSA" => Algorithm::EdDSA,
        other => return Err(AuthError::Algorithm(other.to_owned())),
    };
    Ok(accepted)
}

/// Builds the verification key, refusing a JWK whose type, curve or declared `alg` does not
/// fit the header's algorithm (never an `oct` key: that would be an HMAC secret).
fn decoding_key(jwk: &Jwk, alg: Algorithm, kid: &str) -> Result<DecodingKey, AuthError> {
    let fits = match (&jwk.algorithm, alg) {
        (
            AlgorithmParameters::RSA(_),
            Algorithm::RS256
            | Algorithm::RS384
            | Algorithm::RS512
            | Algorithm::PS256
            | Algorithm::PS384
            | Algorithm::PS512,
        ) => true,
        (AlgorithmParameters::EllipticCurve(p), Algorithm::ES256) => p.curve == EllipticCurve::P256,
        (AlgorithmParameters::EllipticCurve(p), Algorithm::ES384) => p.curve == EllipticCurve::P384,
        (AlgorithmParameters::OctetKeyPair(p), Algorithm::EdDSA) => {
            p.curve == EllipticCurve::Ed25519
        }
        _ => false,
    };
    let declared_fits = jwk
        .common
        .key_algorithm
        .is_none_or(|declared| declared == KeyAlgorithm::from(alg));
    if !fits || !declared_fits {
        return Err(AuthError::Algorithm(format!(
            "{alg:?} (key {kid:?} is published for another algorithm)"
        )));
    }
    DecodingKey::from_jwk(jwk)
        .map_err(|_| AuthError::KeySource(format!("the issuer's key {kid:?} cannot be used")))
}

/// Follows a dotted path (`realm_access.roles`) through nested objects.
fn lookup<'a>(claims: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.').try_fold(claims, |v, part| v.get(part))
}

/// The strings of a JSON array (a single string counts as one); anything else is none.
fn strings(v: Option<&Value>) -> impl Iterator<Item = String> + '_ {
    let items: Vec<&Value> = match v {
        Some(Value::Array(a)) => a.iter().collect(),
        Some(s @ Value::String(_)) => vec![s],
        _ => Vec::new(),
    };
    items
        .into_iter()
        .filter_map(|i| i.as_str().map(str::to_owned))
}

/// The payload without any check; only for error messages after verification.
fn unverified_claims(token: &str) -> Option<Value> {
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .ok()?;
    serde_json::from_slice(&bytes).ok()
}

fn render(v: &Value) -> String {
    v.as_str().map_or_else(|| v.to_string(), str::to_owned)
}

#[cfg(test)]
mod tests {
    use std::io::Write as _;
    use std::process::{Command, Stdio};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::OnceLock;

    use jsonwebtoken::{EncodingKey, Header};
    use serde_json::json;

    use super::*;

    const ISSUER: &str = "https://sso.example.test/realms/pitwall";
    const AUDIENCE: &str = "pitwall";

    /// A signing key made at test time with the `openssl` CLI, and its public JWK.
    struct TestKey {
        alg: Algorithm,
        kid: String,
        encoding: EncodingKey,
        jwk: Jwk,
        public_pem: Vec<u8>,
    }

    fn openssl(args: &[&str], stdin: &[u8]) -> Vec<u8> {
        let mut child = Command::new("openssl")
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("the openssl CLI is needed to generate test keys");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(stdin)
            .expect("write openssl stdin");
        let out = child.wait_with_output().expect("openssl runs");
        assert!(out.status.success(), "openssl {args:?} failed");
        out.stdout
    }

    fn make_key(alg: Algorithm, kid: &str, genpkey: &[&str]) -> TestKey {
        let private_pem = openssl(genpkey, b"");
        let public_pem = openssl(&["pkey", "-pubout"], &private_pem);
        let encoding = match alg {
            Algorithm::ES256 | Algorithm::ES384 => EncodingKey::from_ec_pem(&private_pem),
            _ => EncodingKey::from_rsa_pem(&private_pem),
        }
        .expect("generated key parses");
        let mut jwk = Jwk::from_encoding_key(&encoding, alg).expect("public jwk");
        jwk.common.key_id = Some(kid.into());
        TestKey {
            alg,
            kid: kid.into(),
            encoding,
            jwk,
            public_pem,
        }
    }

    fn rsa_key() -> &'static TestKey {
        static KEY: OnceLock<TestKey> = OnceLock::new();
        KEY.get_or_init(|| {
            let args = [
                "genpkey",
                "-algorithm",
                "RSA",
                "-pkeyopt",
                "rsa_keygen_bits:2048",
            ];
            make_key(Algorithm::RS256, "rsa-1", &args)
        })
    }

    fn ec_key() -> &'static TestKey {
        static KEY: OnceLock<TestKey> = OnceLock::new();
        KEY.get_or_init(|| {
            let args = [
                "genpkey",
                "-algorithm",
                "EC",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
            ];
            make_key(Algorithm::ES256, "ec-1", &args)
        })
    }

    fn now() -> i64 {
        i64::try_from(jsonwebtoken::get_current_timestamp()).expect("timestamp fits")
    }

    /// Claims shaped like a Keycloak access token for user alice.
    fn keycloak_claims() -> Value {
        json!({
            "iss": ISSUER,
            "aud": [AUDIENCE, "account"],
            "azp": "pitwall-cli",
            "sub": "4f1c2a5e-0000-4000-8000-000000000001",
            "iat": now(),
            "exp": now() + 300,
            "preferred_username": "alice",
            "realm_access": { "roles": ["pitwall-admin", "offline_access"] },
            "resource_access": {
                "pitwall": { "roles": ["vm-operator", "offline_access"] },
                "account": { "roles": ["manage-account"] }
            },
            "groups": ["/ops"]
        })
    }

    fn sign_with(key: &TestKey, claims: &Value) -> String {
        let mut header = Header::new(key.alg);
        header.kid = Some(key.kid.clone());
        jsonwebtoken::encode(&header, claims, &key.encoding).expect("sign")
    }

    fn validator_for(keys: &[&TestKey]) -> Validator {
        let set = JwkSet {
            keys: keys.iter().map(|k| k.jwk.clone()).collect(),
        };
        Validator::new(
            ValidatorConfig::new(ISSUER, AUDIENCE),
            Arc::new(StaticKeys(set)),
        )
    }

    async fn validate(claims: &Value) -> Result<Principal, AuthError> {
        let token = sign_with(rsa_key(), claims);
        validator_for(&[rsa_key()]).validate(&token).await
    }

    fn b64(bytes: &[u8]) -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    }

    #[tokio::test]
    async fn keycloak_token_is_accepted_and_mapped() {
        let principal = validate(&keycloak_claims()).await.expect("valid token");
        assert_eq!(
            principal,
            Principal {
                subject: "4f1c2a5e-0000-4000-8000-000000000001".into(),
                username: "alice".into(),
                roles: vec![
                    "pitwall-admin".into(),
                    "offline_access".into(),
                    "vm-operator".into()
                ],
                groups: vec!["/ops".into()],
                is_admin: true,
                via: super::super::Via::Token,
            }
        );
    }

    #[tokio::test]
    async fn es256_token_is_accepted() {
        let token = sign_with(ec_key(), &keycloak_claims());
        let principal = validator_for(&[rsa_key(), ec_key()])
            .validate(&token)
            .await
            .expect("valid ES256 token");
        assert_eq!(principal.username, "alice");
    }

    #[tokio::test]
    async fn principal_without_the_admin_role_is_not_admin() {
        let mut claims = keycloak_claims();
        claims["realm_access"]["roles"] = json!(["user"]);
        let principal = validate(&claims).await.expect("valid token");
        assert!(!principal.is_admin);
        assert_eq!(principal.roles, ["user", "vm-operator", "offline_access"]);
    }

    #[tokio::test]
    async fn mapping_is_configurable() {
        let mut cfg = ValidatorConfig::new(ISSUER, AUDIENCE);
        cfg.claims = ClaimMapping {
            username: "email".into(),
            realm_roles_path: "ext.roles".into(),
            client_roles_client: Some("account".into()),
            groups: "teams".into(),
        };
        cfg.admin_role = "boss".into();
        let mut claims = keycloak_claims();
        claims["email"] = json!("alice@example.test");
        claims["ext"] = json!({ "roles": ["boss"] });
        claims["teams"] = json!(["red"]);
        let set = JwkSet {
            keys: vec![rsa_key().jwk.clone()],
        };
        let validator = Validator::new(cfg, Arc::new(StaticKeys(set)));
        let principal = validator
            .validate(&sign_with(rsa_key(), &claims))
            .await
            .expect("valid token");
        assert_eq!(principal.username, "alice@example.test");
        assert_eq!(principal.roles, ["boss", "manage-account"]);
        assert_eq!(principal.groups, ["red"]);
        assert!(principal.is_admin);
    }

    #[tokio::test]
    async fn token_without_username_is_refused() {
        let mut claims = keycloak_claims();
        claims
            .as_object_mut()
            .expect("object")
            .remove("preferred_username");
        assert_eq!(
            validate(&claims).await,
            Err(AuthError::MissingClaim("preferred_username".into()))
        );
    }

    #[tokio::test]
    async fn token_without_exp_is_refused() {
        let mut claims = keycloak_claims();
        claims.as_object_mut().expect("object").remove("exp");
        assert_eq!(
            validate(&claims).await,
            Err(AuthError::MissingClaim("exp".into()))
        );
    }

    #[tokio::test]
    async fn expired_token_is_refused() {
        let mut claims = keycloak_claims();
        claims["exp"] = json!(now() - 120);
        assert_eq!(validate(&claims).await, Err(AuthError::Expired));
    }

    #[tokio::test]
    async fn token_expired_within_the_leeway_is_accepted() {
        let mut claims = keycloak_claims();
        claims["exp"] = json!(now() - 10);
        assert!(validate(&claims).await.is_ok());
    }

    #[tokio::test]
    async fn token_with_nbf_in_the_future_is_refused() {
        let mut claims = keycloak_claims();
        claims["nbf"] = json!(now() + 120);
        assert_eq!(validate(&claims).await, Err(AuthError::NotYetValid));
    }

    #[tokio::test]
    async fn token_from_another_issuer_is_refused() {
        let mut claims = keycloak_claims();
        claims["iss"] = json!("https://evil.example.test/realms/pitwall");
        assert_eq!(
            validate(&claims).await,
            Err(AuthError::Issuer {
                got: "https://evil.example.test/realms/pitwall".into(),
                want: ISSUER.into(),
            })
        );
    }

    #[tokio::test]
    async fn issuer_with_trailing_slash_is_not_the_issuer() {
        let mut claims = keycloak_claims();
        claims["iss"] = json!(format!("{ISSUER}/"));
        assert!(matches!(
            validate(&claims).await,
            Err(AuthError::Issuer { .. })
        ));
    }

    #[tokio::test]
    async fn token_for_another_audience_is_refused_even_with_our_azp() {
        let mut claims = keycloak_claims();
        claims["aud"] = json!("account");
        claims["azp"] = json!(AUDIENCE);
        assert_eq!(
            validate(&claims).await,
            Err(AuthError::Audience(AUDIENCE.into()))
        );
    }

    #[tokio::test]
    async fn alg_none_is_refused() {
        let header = b64(br#"{"alg":"none","typ":"JWT","kid":"rsa-1"}"#);
        let payload = b64(keycloak_claims().to_string().as_bytes());
        let token = format!("{header}.{payload}.");
        assert_eq!(
            validator_for(&[rsa_key()]).validate(&token).await,
            Err(AuthError::Algorithm("none".into()))
        );
    }

    #[tokio::test]
    async fn hs256_signed_with_the_public_key_is_refused() {
        let key = rsa_key();
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some(key.kid.clone());
        let token = jsonwebtoken::encode(
            &header,
            &keycloak_claims(),
            &EncodingKey::from_secret(&key.public_pem),
        )
        .expect("sign");
        assert_eq!(
            validator_for(&[key]).validate(&token).await,
            Err(AuthError::Algorithm("HS256".into()))
        );
    }

    #[tokio::test]
    async fn algorithm_other_than_the_keys_is_refused() {
        // Signed by the RSA key with PS256 while the JWK says RS256.
        let key = rsa_key();
        let mut header = Header::new(Algorithm::PS256);
        header.kid = Some(key.kid.clone());
        let token = jsonwebtoken::encode(&header, &keycloak_claims(), &key.encoding).expect("sign");
        assert!(matches!(
            validator_for(&[key]).validate(&token).await,
            Err(AuthError::Algorithm(_))
        ));
    }

    #[tokio::test]
    async fn ec_token_naming_an_rsa_key_is_refused() {
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(rsa_key().kid.clone());
        let token =
            jsonwebtoken::encode(&header, &keycloak_claims(), &ec_key().encoding).expect("sign");
        assert!(matches!(
            validator_for(&[rsa_key(), ec_key()]).validate(&token).await,
            Err(AuthError::Algorithm(_))
        ));
    }

    #[tokio::test]
    async fn tampered_payload_is_refused() {
        let token = sign_with(rsa_key(), &keycloak_claims());
        let mut parts: Vec<String> = token.split('.').map(str::to_owned).collect();
        let mut claims = keycloak_claims();
        claims["realm_access"]["roles"] = json!(["pitwall-admin", "root"]);
        parts[1] = b64(claims.to_string().as_bytes());
        assert_eq!(
            validator_for(&[rsa_key()]).validate(&parts.join(".")).await,
            Err(AuthError::Signature)
        );
    }

    #[tokio::test]
    async fn garbage_is_malformed() {
        let validator = validator_for(&[rsa_key()]);
        for token in ["", "abc", "a.b", "a.b.c.d", "!!!.e30.x"] {
            assert!(
                matches!(
                    validator.validate(token).await,
                    Err(AuthError::Malformed(_))
                ),
                "{token:?}"
            );
        }
    }

    /// A key source whose set changes on refresh, counting refreshes.
    struct Rotating {
        before: JwkSet,
        after: JwkSet,
        refreshes: AtomicUsize,
    }

    #[async_trait]
    impl KeySource for Rotating {
        async fn keys(&self, refresh: bool) -> Result<JwkSet, AuthError> {
            if refresh {
                self.refreshes.fetch_add(1, Ordering::SeqCst);
            }
            if self.refreshes.load(Ordering::SeqCst) > 0 {
                Ok(self.after.clone())
            } else {
                Ok(self.before.clone())
            }
        }
    }

    fn rotating(before: &[&TestKey], after: &[&TestKey]) -> Arc<Rotating> {
        let set = |keys: &[&TestKey]| JwkSet {
            keys: keys.iter().map(|k| k.jwk.clone()).collect(),
        };
        Arc::new(Rotating {
            before: set(before),
            after: set(after),
            refreshes: AtomicUsize::new(0),
        })
    }

    #[tokio::test]
    async fn unknown_kid_refreshes_once_then_is_refused() {
        let source = rotating(&[rsa_key()], &[rsa_key()]);
        let validator = Validator::new(ValidatorConfig::new(ISSUER, AUDIENCE), source.clone());
        let token = sign_with(ec_key(), &keycloak_claims());
        assert_eq!(
            validator.validate(&token).await,
            Err(AuthError::UnknownKey("ec-1".into()))
        );
        assert_eq!(source.refreshes.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn rotated_key_is_found_after_a_refresh() {
        let source = rotating(&[rsa_key()], &[ec_key(), rsa_key()]);
        let validator = Validator::new(ValidatorConfig::new(ISSUER, AUDIENCE), source.clone());
        let token = sign_with(ec_key(), &keycloak_claims());
        assert!(validator.validate(&token).await.is_ok());
        assert_eq!(source.refreshes.load(Ordering::SeqCst), 1);
        // Known keys do not refresh again.
        assert!(validator.validate(&token).await.is_ok());
        assert_eq!(source.refreshes.load(Ordering::SeqCst), 1);
    }
}
