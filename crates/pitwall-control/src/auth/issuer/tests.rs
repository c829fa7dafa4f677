//! Tests of the built-in issuer.
use jsonwebtoken::{DecodingKey, Validation};
use pitwall_store::sqlite::SqliteStore;

use super::*;

const ISSUER: &str = "https://pitwall.test/auth";
const AUDIENCE: &str = "pitwall";
const GOOD_PASSWORD: &str = "correct horse battery";

async fn store() -> Arc<dyn Store> {
    Arc::new(SqliteStore::in_memory().await.expect("in-memory store"))
}

async fn open(
    dir: &Path,
    store: Arc<dyn Store>,
) -> Result<(BuiltinIssuer, Option<AdminBootstrap>), IssuerError> {
    BuiltinIssuer::open(dir, store, ISSUER.into(), AUDIENCE.into(), ADMIN_ROLE).await
}

#[tokio::test]
async fn the_bootstrapped_admin_gets_the_configured_admin_role() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let store = store().await;
    let (_, boot) = BuiltinIssuer::open(
        dir.path(),
        store.clone(),
        ISSUER.into(),
        AUDIENCE.into(),
        "ops-admins",
    )
    .await
    .expect("issuer opens");
    let boot = boot.expect("admin bootstrapped");
    let admin = store
        .get_user(&boot.username)
        .await
        .expect("store")
        .expect("admin stored");
    assert_eq!(admin.roles, ["ops-admins"]);
}

async fn issuer() -> (tempfile::TempDir, BuiltinIssuer) {
    let dir = tempfile::tempdir().expect("temporary directory");
    let (issuer, _) = open(dir.path(), store().await).await.expect("issuer opens");
    (dir, issuer)
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path)
        .expect("file exists")
        .permissions()
        .mode()
        & 0o777
}

fn decode(issuer: &BuiltinIssuer, token: &str) -> jsonwebtoken::TokenData<Claims> {
    let jwks = issuer.jwks();
    let key = DecodingKey::from_jwk(&jwks.keys[0]).expect("decoding key from the JWKS");
    let mut validation = Validation::new(Algorithm::ES256);
    validation.set_audience(&[AUDIENCE]);
    validation.set_issuer(&[ISSUER]);
    jsonwebtoken::decode::<Claims>(token, &key, &validation).expect("token validates")
}

#[tokio::test]
async fn first_open_bootstraps_admin_and_writes_private_files() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let store = store().await;
    let (issuer, boot) = open(dir.path(), store.clone()).await.expect("opens");
    let boot = boot.expect("admin bootstrapped on first open");
    assert_eq!(boot.username, ADMIN_USERNAME);
    assert!(boot.password.len() >= 32, "{}", boot.password.len());
    assert_eq!(
        boot.credentials_file,
        dir.path().join(ADMIN_CREDENTIALS_FILE)
    );
    let written = std::fs::read_to_string(&boot.credentials_file).expect("credentials");
    assert_eq!(
        written,
        format!("username=admin\npassword={}\n", boot.password)
    );
    assert_eq!(mode(&boot.credentials_file), 0o600);
    assert_eq!(mode(&dir.path().join(KEY_FILE)), 0o600);
    let admin = store
        .get_user(ADMIN_USERNAME)
        .await
        .unwrap()
        .expect("admin stored");
    assert_eq!(admin.roles, vec![ADMIN_ROLE.to_string()]);
    assert!(admin.password_hash.starts_with("$argon2id$"));
    assert!(!admin.password_hash.contains(&boot.password));
    issuer
        .login(ADMIN_USERNAME, &boot.password)
        .await
        .expect("the one-time password logs in");
}

#[tokio::test]
async fn second_open_keeps_key_and_admin_and_writes_nothing() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let store = store().await;
    let (first, boot) = open(dir.path(), store.clone()).await.expect("opens");
    let boot = boot.expect("bootstrapped");
    let key_pem = std::fs::read(dir.path().join(KEY_FILE)).unwrap();
    // an operator who noted the password may remove the file; it must not come back
    std::fs::remove_file(&boot.credentials_file).unwrap();

    let (second, again) = open(dir.path(), store.clone()).await.expect("reopens");
    assert_eq!(again, None);
    assert!(
        !boot.credentials_file.exists(),
        "no new credentials written"
    );
    assert_eq!(second.kid(), first.kid());
    assert_eq!(std::fs::read(dir.path().join(KEY_FILE)).unwrap(), key_pem);
    assert_eq!(second.jwks(), first.jwks());
    second
        .login(ADMIN_USERNAME, &boot.password)
        .await
        .expect("the first password still logs in");
}

#[tokio::test]
async fn second_open_leaves_the_credentials_file_untouched() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let store = store().await;
    let (_, boot) = open(dir.path(), store.clone()).await.expect("opens");
    let path = boot.expect("bootstrapped").credentials_file;
    let before = (
        std::fs::read(&path).unwrap(),
        std::fs::metadata(&path).unwrap().modified().unwrap(),
    );
    let (_, again) = open(dir.path(), store).await.expect("reopens");
    assert_eq!(again, None);
    let after = (
        std::fs::read(&path).unwrap(),
        std::fs::metadata(&path).unwrap().modified().unwrap(),
    );
    assert_eq!(after, before);
}

#[tokio::test]
async fn tokens_signed_before_a_restart_validate_after_it() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let store = store().await;
    let (first, boot) = open(dir.path(), store.clone()).await.expect("opens");
    let token = first
        .login(ADMIN_USERNAME, &boot.expect("bootstrapped").password)
        .await
        .unwrap();
    drop(first);
    let (second, _) = open(dir.path(), store).await.expect("reopens");
    assert_eq!(
        decode(&second, &token.access_token).claims.sub,
        ADMIN_USERNAME
    );
}

#[tokio::test]
async fn login_issues_an_es256_token_with_keycloak_shaped_claims() {
    let (_dir, issuer) = issuer().await;
    issuer
        .create_user(
            "alice",
            GOOD_PASSWORD,
            vec!["dev".into(), "ops".into()],
            vec!["/team-a".into()],
        )
        .await
        .unwrap();
    let token = issuer.login("alice", GOOD_PASSWORD).await.expect("logs in");
    assert_eq!(token.expires_in, 3600);

    let header = jsonwebtoken::decode_header(&token.access_token).unwrap();
    assert_eq!(header.alg, Algorithm::ES256);
    assert_eq!(header.kid.as_deref(), Some(issuer.kid()));
    let claims = decode(&issuer, &token.access_token).claims;
    assert_eq!(claims.iss, ISSUER);
    assert_eq!(claims.aud, AUDIENCE);
    assert_eq!(claims.sub, "alice");
    assert_eq!(claims.preferred_username, "alice");
    assert_eq!(claims.realm_access.roles, vec!["dev", "ops"]);
    assert_eq!(claims.groups, vec!["/team-a"]);
    assert_eq!(claims.nbf, claims.iat);
    assert_eq!(claims.exp - claims.iat, 3600);
    let now = OffsetDateTime::now_utc().unix_timestamp();
    assert!(
        (now - claims.iat).abs() <= 5,
        "iat {} vs now {now}",
        claims.iat
    );
}

#[tokio::test]
async fn token_lifetime_is_configurable() {
    let (_dir, issuer) = issuer().await;
    let issuer = issuer.with_token_lifetime(Duration::from_secs(600));
    issuer
        .create_user("alice", GOOD_PASSWORD, vec![], vec![])
        .await
        .unwrap();
    let token = issuer.login("alice", GOOD_PASSWORD).await.unwrap();
    assert_eq!(token.expires_in, 600);
    let claims = decode(&issuer, &token.access_token).claims;
    assert_eq!(claims.exp - claims.iat, 600);
}

#[tokio::test]
async fn wrong_password_and_unknown_user_fail_alike() {
    let (_dir, issuer) = issuer().await;
    issuer
        .create_user("alice", GOOD_PASSWORD, vec![], vec![])
        .await
        .unwrap();
    let wrong = issuer.login("alice", "wrong password!").await.unwrap_err();
    let unknown = issuer.login("bob", GOOD_PASSWORD).await.unwrap_err();
    assert!(
        matches!(wrong, IssuerError::InvalidCredentials),
        "{wrong:?}"
    );
    assert!(
        matches!(unknown, IssuerError::InvalidCredentials),
        "{unknown:?}"
    );
    assert_eq!(wrong.to_string(), "invalid username or password");
    assert_eq!(unknown.to_string(), wrong.to_string());
}

#[tokio::test]
async fn disabled_user_is_refused_and_only_told_so_with_the_right_password() {
    let (_dir, issuer) = issuer().await;
    let user = UserRecord {
        username: "carol".into(),
        password_hash: hash_password(GOOD_PASSWORD.into()).await.unwrap(),
        roles: vec![],
        groups: vec![],
        disabled: true,
        created_at: OffsetDateTime::now_utc(),
    };
    issuer.store.create_user(&user).await.unwrap();
    let err = issuer.login("carol", GOOD_PASSWORD).await.unwrap_err();
    assert!(
        matches!(&err, IssuerError::Disabled(name) if name == "carol"),
        "{err:?}"
    );
    let err = issuer.login("carol", "wrong password!").await.unwrap_err();
    assert!(matches!(err, IssuerError::InvalidCredentials), "{err:?}");
}

#[tokio::test]
async fn weak_password_is_refused_and_says_the_minimum() {
    let (_dir, issuer) = issuer().await;
    let err = issuer
        .create_user("alice", "elevenchars", vec![], vec![])
        .await
        .unwrap_err();
    assert!(matches!(err, IssuerError::WeakPassword), "{err:?}");
    assert!(err.to_string().contains("at least 12 characters"), "{err}");
    assert_eq!(issuer.store.get_user("alice").await.unwrap(), None);
    issuer
        .create_user("alice", "twelve chars", vec![], vec![])
        .await
        .expect("12 characters are enough");
}

#[tokio::test]
async fn invalid_usernames_are_refused_with_the_rule() {
    let (_dir, issuer) = issuer().await;
    for name in ["", "Alice", "a b", "-x", ".x", "é", &"a".repeat(64)] {
        let err = issuer
            .create_user(name, GOOD_PASSWORD, vec![], vec![])
            .await
            .unwrap_err();
        assert!(
            matches!(err, IssuerError::InvalidUsername { .. }),
            "{name:?}: {err:?}"
        );
        assert!(err.to_string().contains("1-63 characters"), "{err}");
    }
    for name in ["a", "svc.ci-bot_2", &"a".repeat(63)] {
        issuer
            .create_user(name, GOOD_PASSWORD, vec![], vec![])
            .await
            .unwrap_or_else(|e| panic!("{name:?}: {e}"));
    }
}

#[tokio::test]
async fn duplicate_user_is_refused_and_keeps_the_first_password() {
    let (_dir, issuer) = issuer().await;
    issuer
        .create_user("alice", GOOD_PASSWORD, vec![], vec![])
        .await
        .unwrap();
    let err = issuer
        .create_user("alice", "another long password", vec![], vec![])
        .await
        .unwrap_err();
    assert!(
        matches!(&err, IssuerError::UserExists(name) if name == "alice"),
        "{err:?}"
    );
    issuer
        .login("alice", GOOD_PASSWORD)
        .await
        .expect("first password kept");
}

#[tokio::test]
async fn set_password_replaces_the_old_one() {
    let (_dir, issuer) = issuer().await;
    issuer
        .create_user("alice", GOOD_PASSWORD, vec![], vec![])
        .await
        .unwrap();
    issuer
        .set_password("alice", "a brand new passphrase")
        .await
        .unwrap();
    assert!(matches!(
        issuer.login("alice", GOOD_PASSWORD).await,
        Err(IssuerError::InvalidCredentials)
    ));
    issuer
        .login("alice", "a brand new passphrase")
        .await
        .expect("new password logs in");
    assert!(matches!(
        issuer.set_password("nobody", GOOD_PASSWORD).await,
        Err(IssuerError::NoSuchUser(_))
    ));
}

#[tokio::test]
async fn jwks_holds_only_the_public_key() {
    let (_dir, issuer) = issuer().await;
    let jwks = serde_json::to_value(issuer.jwks()).unwrap();
    let keys = jwks["keys"].as_array().expect("keys array");
    assert_eq!(keys.len(), 1);
    let key = keys[0].as_object().expect("a JWK object");
    assert!(!key.contains_key("d"), "private scalar leaked: {key:?}");
    assert_eq!(key["kty"], "EC");
    assert_eq!(key["crv"], "P-256");
    assert_eq!(key["alg"], "ES256");
    assert_eq!(key["use"], "sig");
    assert_eq!(key["kid"], issuer.kid());
}

#[tokio::test]
async fn key_source_serves_the_jwks() {
    let (_dir, issuer) = issuer().await;
    let source: &dyn KeySource = &issuer;
    assert_eq!(source.keys(true).await.unwrap(), issuer.jwks());
}

#[tokio::test]
async fn unusable_key_file_is_reported_with_its_path() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let path = dir.path().join(KEY_FILE);
    std::fs::write(&path, "not a key").unwrap();
    let err = open(dir.path(), store().await).await.unwrap_err();
    assert!(matches!(err, IssuerError::Key { .. }), "{err:?}");
    assert!(
        err.to_string().contains(&path.display().to_string()),
        "{err}"
    );
}

#[tokio::test]
async fn refresh_token_gives_a_new_access_token_for_the_same_user() {
    let (_dir, issuer) = issuer().await;
    issuer
        .create_user("alice", GOOD_PASSWORD, vec![], vec!["/team-a".into()])
        .await
        .unwrap();
    let first = issuer.login("alice", GOOD_PASSWORD).await.unwrap();
    let second = issuer
        .refresh(&first.refresh_token)
        .await
        .expect("refreshes");
    assert_ne!(second.access_token, first.access_token);
    let claims = decode(&issuer, &second.access_token).claims;
    assert_eq!(claims.preferred_username, "alice");
    assert_eq!(claims.groups, vec!["/team-a"]);
}

#[tokio::test]
async fn refresh_token_is_not_an_access_token_and_vice_versa() {
    let (_dir, issuer) = issuer().await;
    issuer
        .create_user("alice", GOOD_PASSWORD, vec![], vec![])
        .await
        .unwrap();
    let token = issuer.login("alice", GOOD_PASSWORD).await.unwrap();
    // The API's validator refuses the refresh token: its audience is not the API's.
    let validator = crate::auth::jwt::Validator::new(
        crate::auth::jwt::ValidatorConfig::new(ISSUER, AUDIENCE),
        Arc::new(crate::auth::jwt::StaticKeys(issuer.jwks())),
    );
    let err = validator.validate(&token.refresh_token).await.unwrap_err();
    assert!(matches!(err, AuthError::Audience(_)), "{err:?}");
    // And the access token is no refresh token.
    let err = issuer.refresh(&token.access_token).await.unwrap_err();
    assert!(matches!(err, IssuerError::InvalidRefresh(_)), "{err:?}");
    assert!(err.to_string().contains("pitwall login"), "{err}");
}

#[tokio::test]
async fn refresh_is_refused_once_the_user_is_gone_or_disabled() {
    let (_dir, issuer) = issuer().await;
    issuer
        .create_user("alice", GOOD_PASSWORD, vec![], vec![])
        .await
        .unwrap();
    let token = issuer.login("alice", GOOD_PASSWORD).await.unwrap();
    assert!(issuer.store.delete_user("alice").await.unwrap());
    let err = issuer.refresh(&token.refresh_token).await.unwrap_err();
    assert!(matches!(err, IssuerError::InvalidRefresh(_)), "{err:?}");
}
