//! The token a command sends: `PITWALL_TOKEN`, else the stored login for the API, refreshed
//! first when it expires within a minute (see [`credentials::plan`]).

use std::time::Duration;

use base64::Engine as _;
use pitwall_api::Client;

use crate::credentials::{self, Plan, RefreshWith, Store, StoredLogin};
use crate::endpoint::EnvVars;
use crate::oauth::{self, Tokens};

#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("your login has expired: run `pitwall login`")]
    Expired,
    #[error("your login has expired and could not be refreshed ({why}): run `pitwall login`")]
    RefreshFailed { why: String },
}

/// Seconds since the Unix epoch.
pub fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

/// `client` with the token to send for `api` (none when not logged in).
pub async fn authenticate(client: Client, api: &str, env: &EnvVars) -> anyhow::Result<Client> {
    if let Some(t) = &env.token {
        tracing::debug!("token from PITWALL_TOKEN");
        return Ok(client.with_token(Some(t.clone())));
    }
    let Ok(store) = Store::for_env(env) else {
        return Ok(client);
    };
    let stored = store.get(api)?;
    match credentials::plan(None, stored.as_ref(), now()) {
        Plan::Anonymous => Ok(client),
        Plan::Use(t) => Ok(client.with_token(Some(t))),
        Plan::Expired => Err(SessionError::Expired.into()),
        Plan::Refresh(login) => match refresh(&client, &login).await {
            Ok(fresh) => {
                tracing::debug!(api, "token refreshed");
                let token = fresh.access_token.clone();
                store.put(api, fresh)?;
                Ok(client.with_token(Some(token)))
            }
            // not expired yet: this command can still go through with the old token
            Err(e) if login.expires_at.is_some_and(|at| at > now()) => {
                tracing::warn!("could not refresh the token, using it while it lasts: {e:#}");
                Ok(client.with_token(Some(login.access_token)))
            }
            Err(e) => Err(SessionError::RefreshFailed {
                why: format!("{e:#}"),
            }
            .into()),
        },
    }
}

/// A new login from `login`'s refresh token, keeping it when the issuer sends no new one.
pub async fn refresh(client: &Client, login: &StoredLogin) -> anyhow::Result<StoredLogin> {
    let Some(rt) = &login.refresh_token else {
        return Err(SessionError::Expired.into());
    };
    let tokens = match &login.refresh {
        RefreshWith::None => return Err(SessionError::Expired.into()),
        RefreshWith::Builtin => {
            let t = client.refresh(rt).await?;
            Tokens {
                access_token: t.access_token,
                refresh_token: t.refresh_token,
                expires_in: Some(Duration::from_secs(t.expires_in)),
            }
        }
        RefreshWith::Oauth {
            token_endpoint,
            client_id,
            resource,
        } => {
            let http = oauth::http_client()?;
            oauth::refresh(&http, token_endpoint, client_id, rt, resource.as_deref()).await?
        }
    };
    let mut fresh = stored_login(tokens, login.refresh.clone(), now());
    if fresh.refresh_token.is_none() {
        fresh.refresh_token = login.refresh_token.clone();
    }
    Ok(fresh)
}

/// What to store for tokens received at `now`: expiry from `expires_in`, else from the
/// token's own `exp` claim when it is a JWT.
pub fn stored_login(tokens: Tokens, refresh: RefreshWith, now: i64) -> StoredLogin {
    let expires_at = tokens
        .expires_in
        .map(|d| now + i64::try_from(d.as_secs()).unwrap_or(i64::MAX / 2))
        .or_else(|| jwt_exp(&tokens.access_token));
    StoredLogin {
        access_token: tokens.access_token,
        refresh_token: tokens.refresh_token,
        expires_at,
        refresh,
    }
}

/// The `exp` claim of a JWT, unverified (only to know when to stop sending it).
pub fn jwt_exp(token: &str) -> Option<i64> {
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    let claims: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    claims.get("exp")?.as_i64()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jwt(claims: &str) -> String {
        let b = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
        format!("{}.{}.sig", b(r#"{"alg":"ES256"}"#), b(claims))
    }

    #[test]
    fn the_expiry_of_a_given_jwt_is_read_from_its_exp_claim() {
        assert_eq!(
            jwt_exp(&jwt(r#"{"sub":"a","exp":1700000000}"#)),
            Some(1_700_000_000)
        );
        assert_eq!(jwt_exp(&jwt(r#"{"sub":"a"}"#)), None);
        assert_eq!(jwt_exp("opaque-token"), None);
    }

    #[test]
    fn expires_in_wins_over_the_exp_claim() {
        let tokens = Tokens {
            access_token: jwt(r#"{"exp":5}"#),
            refresh_token: None,
            expires_in: Some(Duration::from_secs(300)),
        };
        assert_eq!(
            stored_login(tokens.clone(), RefreshWith::Builtin, 1000).expires_at,
            Some(1300)
        );
        let tokens = Tokens {
            expires_in: None,
            ..tokens
        };
        assert_eq!(
            stored_login(tokens, RefreshWith::None, 1000).expires_at,
            Some(5)
        );
    }

    #[tokio::test]
    async fn pitwall_token_is_sent_without_reading_the_credentials_file() {
        let d = tempfile::tempdir().unwrap();
        // an insecure file would be refused, were it read
        let store = Store::for_env(&EnvVars {
            xdg_config_home: Some(d.path().into()),
            ..Default::default()
        })
        .unwrap();
        store
            .put(
                "http://a:1",
                stored_login(
                    Tokens {
                        access_token: "stored".into(),
                        refresh_token: None,
                        expires_in: None,
                    },
                    RefreshWith::None,
                    0,
                ),
            )
            .unwrap();
        let world_readable = std::os::unix::fs::PermissionsExt::from_mode(0o644);
        std::fs::set_permissions(store.path(), world_readable).unwrap();
        let env = EnvVars {
            xdg_config_home: Some(d.path().into()),
            token: Some("from-env".into()),
            ..Default::default()
        };
        let c = authenticate(Client::new("http://a:1").unwrap(), "http://a:1", &env)
            .await
            .unwrap();
        assert_eq!(c.token(), Some("from-env"));
        let env = EnvVars { token: None, ..env };
        let e = authenticate(Client::new("http://a:1").unwrap(), "http://a:1", &env)
            .await
            .unwrap_err();
        assert!(format!("{e:#}").contains("chmod 600"), "{e:#}");
    }

    #[tokio::test]
    async fn an_expired_login_without_refresh_says_to_log_in_again() {
        let d = tempfile::tempdir().unwrap();
        let env = EnvVars {
            xdg_config_home: Some(d.path().into()),
            ..Default::default()
        };
        Store::for_env(&env)
            .unwrap()
            .put(
                "http://a:1",
                StoredLogin {
                    access_token: "old".into(),
                    refresh_token: None,
                    expires_at: Some(now() - 10),
                    refresh: RefreshWith::None,
                },
            )
            .unwrap();
        let e = authenticate(Client::new("http://a:1").unwrap(), "http://a:1", &env)
            .await
            .unwrap_err();
        assert_eq!(e.to_string(), "your login has expired: run `pitwall login`");
    }
}
