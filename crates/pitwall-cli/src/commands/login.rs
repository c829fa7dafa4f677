//! `pitwall login`, `pitwall logout`, `pitwall whoami`.

use std::io::{BufRead as _, IsTerminal as _};
use std::time::Duration;

use anyhow::Context as _;
use pitwall_api::{AuthConfig, LoginRequest, WhoAmI};
use serde::Serialize;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use super::Ctx;
use crate::cli::LoginArgs;
use crate::credentials::{RefreshWith, Store, StoredLogin};
use crate::oauth::{self, DeviceGrant, Tokens};
use crate::output;
use crate::session::{self, stored_login};

#[derive(Debug, thiserror::Error)]
pub enum LoginError {
    #[error("this API uses Pitwall's built-in issuer: log in with `pitwall login --user NAME`")]
    NeedUser,
    #[error(
        "this API's issuer ({issuer}) offers no device login to pitwall (the API's \
         /v1/auth/config has no {missing}); get a token from your identity provider and run \
         `pitwall login --token -`"
    )]
    NoDeviceFlow {
        issuer: String,
        missing: &'static str,
    },
    #[error(
        "this API does not use Pitwall's built-in issuer, but {issuer}: log in without --user \
         (in a browser), or with `pitwall login --token -`"
    )]
    NotBuiltin { issuer: String },
    #[error("no {what} on stdin")]
    Empty { what: &'static str },
    #[error("stdin is not a terminal, so pitwall cannot prompt for the {what}: use {flag}")]
    NoTerminal {
        what: &'static str,
        flag: &'static str,
    },
}

/// What `pitwall login -o json` prints (never the token).
#[derive(Debug, Serialize)]
struct LoggedIn<'a> {
    api: &'a str,
    /// RFC 3339, when known.
    expires_at: Option<String>,
    refreshable: bool,
}

pub async fn login(ctx: &Ctx, a: LoginArgs) -> anyhow::Result<()> {
    let store = Store::for_env(&ctx.env)?;
    let login = match a.token {
        Some(token) => given_token(&token)?,
        None => {
            let cfg = ctx
                .client
                .auth_config()
                .await
                .context("cannot learn how to log in to this API")?;
            match (&a.user, cfg.builtin) {
                (Some(user), true) => builtin(ctx, user, a.password_stdin).await?,
                (None, true) => return Err(LoginError::NeedUser.into()),
                (Some(_), false) => {
                    return Err(LoginError::NotBuiltin { issuer: cfg.issuer }.into())
                }
                (None, false) => device(&cfg).await?,
            }
        }
    };
    let shown = LoggedIn {
        api: ctx.client.base_url().trim_end_matches('/'),
        expires_at: login.expires_at.and_then(rfc3339),
        refreshable: login.refresh_token.is_some() && login.refresh != RefreshWith::None,
    };
    store.put(&ctx.api, login)?;
    ctx.show(&shown, |l, _| {
        let until = l
            .expires_at
            .as_deref()
            .map(|t| format!(" (token valid until {t})"))
            .unwrap_or_default();
        format!("logged in to {}{until}\n", l.api)
    })
}

fn given_token(token: &str) -> anyhow::Result<StoredLogin> {
    let token = if token == "-" {
        read_line_from_stdin("token")?
    } else {
        token.trim().to_owned()
    };
    let tokens = Tokens {
        access_token: token,
        refresh_token: None,
        expires_in: None,
    };
    Ok(stored_login(tokens, RefreshWith::None, session::now()))
}

async fn builtin(ctx: &Ctx, user: &str, password_stdin: bool) -> anyhow::Result<StoredLogin> {
    let password = read_password(password_stdin, &format!("password for {user}: "))?;
    let t = ctx
        .client
        .login(&LoginRequest {
            username: user.to_owned(),
            password,
        })
        .await?;
    let tokens = Tokens {
        access_token: t.access_token,
        refresh_token: t.refresh_token,
        expires_in: Some(Duration::from_secs(t.expires_in)),
    };
    Ok(stored_login(tokens, RefreshWith::Builtin, session::now()))
}

/// The device grant at an external issuer, as `/v1/auth/config` describes it.
pub fn device_grant(cfg: &AuthConfig) -> Result<DeviceGrant, LoginError> {
    let missing = |what| LoginError::NoDeviceFlow {
        issuer: cfg.issuer.clone(),
        missing: what,
    };
    Ok(DeviceGrant {
        device_authorization_endpoint: cfg
            .device_authorization_endpoint
            .clone()
            .ok_or_else(|| missing("device_authorization_endpoint"))?,
        token_endpoint: cfg
            .token_endpoint
            .clone()
            .ok_or_else(|| missing("token_endpoint"))?,
        client_id: cfg.client_id.clone().ok_or_else(|| missing("client_id"))?,
        scope: cfg.scope.clone(),
        resource: cfg.resource.clone(),
    })
}

async fn device(cfg: &AuthConfig) -> anyhow::Result<StoredLogin> {
    let grant = device_grant(cfg)?;
    let http = oauth::http_client()?;
    let tokens = oauth::device_login(&http, &grant, |p| eprint!("{}", p.message())).await?;
    let refresh = RefreshWith::Oauth {
        token_endpoint: grant.token_endpoint,
        client_id: grant.client_id,
        resource: grant.resource,
    };
    Ok(stored_login(tokens, refresh, session::now()))
}

pub async fn logout(ctx: &Ctx) -> anyhow::Result<()> {
    let store = Store::for_env(&ctx.env)?;
    let api = ctx.client.base_url().trim_end_matches('/').to_owned();
    let removed = store.remove(&ctx.api)?;
    let mut text = if removed {
        format!("logged out of {api}\n")
    } else {
        format!("not logged in to {api}: nothing to forget\n")
    };
    if ctx.env.token.is_some() {
        text.push_str("note: PITWALL_TOKEN is set and is still sent; unset it too\n");
    }
    ctx.show(
        &serde_json::json!({ "api": api, "logged_out": removed }),
        |_, _| text,
    )
}

pub async fn whoami(ctx: &Ctx) -> anyhow::Result<()> {
    let me = ctx.client.whoami().await?;
    ctx.show(&me, |w, _| whoami_text(w))
}

pub fn whoami_text(w: &WhoAmI) -> String {
    let list = |l: &[String]| {
        if l.is_empty() {
            "-".to_owned()
        } else {
            l.join(", ")
        }
    };
    output::key_values(&[
        ("user", w.username.clone()),
        ("subject", w.subject.clone()),
        ("admin", if w.admin { "yes" } else { "no" }.into()),
        ("roles", list(&w.roles)),
        ("groups", list(&w.groups)),
        ("via", w.via.clone()),
    ])
}

fn rfc3339(unix: i64) -> Option<String> {
    OffsetDateTime::from_unix_timestamp(unix)
        .ok()?
        .format(&Rfc3339)
        .ok()
}

/// One line of stdin without its line ending; an empty line is an error.
pub fn read_line_from_stdin(what: &'static str) -> anyhow::Result<String> {
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .with_context(|| format!("cannot read the {what} from stdin"))?;
    let line = line.trim_end_matches(['\n', '\r']).to_owned();
    if line.is_empty() {
        return Err(LoginError::Empty { what }.into());
    }
    Ok(line)
}

/// The password: the first line of stdin with `--password-stdin`, else typed at a prompt
/// on the terminal (not echoed).
pub fn read_password(from_stdin: bool, prompt: &str) -> anyhow::Result<String> {
    if from_stdin {
        return read_line_from_stdin("password");
    }
    if !std::io::stdin().is_terminal() {
        return Err(LoginError::NoTerminal {
            what: "password",
            flag: "--password-stdin",
        }
        .into());
    }
    let password = rpassword::prompt_password(prompt).context("cannot read the password")?;
    if password.is_empty() {
        return Err(LoginError::Empty { what: "password" }.into());
    }
    Ok(password)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn external() -> AuthConfig {
        AuthConfig {
            issuer: "https://id".into(),
            audience: "pitwall".into(),
            builtin: false,
            client_id: Some("pitwall-device".into()),
            device_authorization_endpoint: Some("https://id/device/auth".into()),
            token_endpoint: Some("https://id/token".into()),
            scope: Some("openid offline_access".into()),
            resource: Some("urn:pitwall".into()),
        }
    }

    #[test]
    fn the_device_grant_comes_from_the_auth_config() {
        let g = device_grant(&external()).unwrap();
        assert_eq!(g.client_id, "pitwall-device");
        assert_eq!(g.resource.as_deref(), Some("urn:pitwall"));
        assert_eq!(g.scope.as_deref(), Some("openid offline_access"));
    }

    #[test]
    fn an_issuer_without_device_endpoint_says_to_use_a_token() {
        let cfg = AuthConfig {
            device_authorization_endpoint: None,
            ..external()
        };
        let e = device_grant(&cfg).unwrap_err().to_string();
        assert!(e.contains("device_authorization_endpoint"), "{e}");
        assert!(e.contains("pitwall login --token -"), "{e}");
    }

    #[test]
    fn whoami_lists_roles_and_groups() {
        let w = WhoAmI {
            username: "alice".into(),
            subject: "u-1".into(),
            roles: vec!["a".into(), "b".into()],
            groups: vec![],
            admin: false,
            via: "token".into(),
        };
        let t = whoami_text(&w);
        assert!(t.contains("user:    alice\n"), "{t}");
        assert!(t.contains("roles:   a, b\n"), "{t}");
        assert!(t.contains("groups:  -\n"), "{t}");
    }
}
