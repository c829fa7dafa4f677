//! Logging in and who one is: `GET /v1/auth/config`, `POST /v1/auth/login`,
//! `POST /v1/auth/refresh` (public), `GET /v1/whoami`, and the built-in issuer's users
//! (`/v1/users`, administrators; a user may change their own password).
//!
//! With an external issuer, login happens there (the CLI uses the device authorization grant
//! with what `/v1/auth/config` names) and the user endpoints answer that users are managed by
//! that issuer.

use std::sync::Arc;

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::{Extension, Json};
use serde::Deserialize;

use super::access::Caller;
use super::guard::AuditSlot;
use super::{json_body, rfc3339, ApiError};
use crate::auth::issuer::{BuiltinIssuer, IssuedToken, IssuerError};
use crate::Control;

/// `GET /v1/auth/config`
pub(crate) async fn config(State(c): State<Control>) -> Json<pitwall_api::AuthConfig> {
    Json(c.inner.auth.client.clone())
}

fn builtin(c: &Control) -> Result<Arc<BuiltinIssuer>, ApiError> {
    c.inner.auth.builtin.clone().ok_or_else(|| {
        ApiError::new(
            StatusCode::CONFLICT,
            "external_issuer",
            format!(
                "users are managed by the identity provider {}: log in with `pitwall login` \
                 (device authorization) and manage users there",
                c.inner.auth.client.issuer
            ),
        )
    })
}

impl From<IssuerError> for ApiError {
    fn from(e: IssuerError) -> Self {
        match e {
            IssuerError::InvalidCredentials
            | IssuerError::Disabled(_)
            | IssuerError::InvalidRefresh(_) => {
                Self::new(StatusCode::UNAUTHORIZED, "unauthenticated", e.to_string())
            }
            IssuerError::InvalidUsername { .. }
            | IssuerError::WeakPassword
            | IssuerError::PasswordTooLong => Self::invalid(e.to_string()),
            IssuerError::UserExists(_) => {
                Self::new(StatusCode::CONFLICT, "already_exists", e.to_string())
            }
            IssuerError::NoSuchUser(name) => {
                Self::not_found(format!("no user {name:?}; see `pitwall user list`"))
            }
            IssuerError::Store(s) => s.into(),
            other => Self::internal(other.to_string()),
        }
    }
}

fn token_json(t: IssuedToken) -> pitwall_api::TokenResponse {
    pitwall_api::TokenResponse {
        access_token: t.access_token,
        token_type: "Bearer".into(),
        expires_in: t.expires_in,
        refresh_token: Some(t.refresh_token),
    }
}

/// `POST /v1/auth/login` (built-in issuer).
pub(crate) async fn login(
    State(c): State<Control>,
    slot: Option<Extension<AuditSlot>>,
    body: Result<Json<pitwall_api::LoginRequest>, JsonRejection>,
) -> Result<Json<pitwall_api::TokenResponse>, ApiError> {
    let issuer = builtin(&c)?;
    let req = json_body(body)?;
    if let Some(Extension(slot)) = slot {
        // Who tried, whether or not it worked: the audit log is where guessing shows.
        slot.set_actor(&req.username, "password");
    }
    let token = issuer.login(&req.username, &req.password).await?;
    Ok(Json(token_json(token)))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RefreshRequest {
    refresh_token: String,
}

/// `POST /v1/auth/refresh` (built-in issuer).
pub(crate) async fn refresh(
    State(c): State<Control>,
    body: Result<Json<RefreshRequest>, JsonRejection>,
) -> Result<Json<pitwall_api::TokenResponse>, ApiError> {
    let issuer = builtin(&c)?;
    let req = json_body(body)?;
    Ok(Json(token_json(issuer.refresh(&req.refresh_token).await?)))
}

/// `GET /v1/whoami`
pub(crate) async fn whoami(Caller(p): Caller) -> Json<pitwall_api::WhoAmI> {
    Json(pitwall_api::WhoAmI {
        username: p.username,
        subject: p.subject,
        roles: p.roles,
        groups: p.groups,
        admin: p.is_admin,
        via: p.via.describe(),
    })
}

fn user_json(u: &pitwall_store::UserRecord, admin_role: &str) -> pitwall_api::User {
    pitwall_api::User {
        username: u.username.clone(),
        roles: u.roles.clone(),
        groups: u.groups.clone(),
        admin: u.roles.iter().any(|r| r == admin_role),
        disabled: u.disabled,
        created_at: rfc3339(u.created_at),
    }
}

/// `POST /v1/users` (admins, built-in issuer).
pub(crate) async fn create_user(
    State(c): State<Control>,
    caller: Caller,
    body: Result<Json<pitwall_api::CreateUserRequest>, JsonRejection>,
) -> Result<(StatusCode, Json<pitwall_api::User>), ApiError> {
    caller.require_admin("create users")?;
    let issuer = builtin(&c)?;
    let req = json_body(body)?;
    issuer
        .create_user(&req.username, &req.password, req.roles, req.groups)
        .await?;
    let user = c
        .inner
        .store
        .get_user(&req.username)
        .await?
        .ok_or_else(|| ApiError::internal("the user just created is gone"))?;
    let admin_role = &c.inner.auth.validator.config().admin_role;
    Ok((StatusCode::CREATED, Json(user_json(&user, admin_role))))
}

/// `GET /v1/users` (admins, built-in issuer).
pub(crate) async fn list_users(
    State(c): State<Control>,
    caller: Caller,
) -> Result<Json<pitwall_api::UserList>, ApiError> {
    caller.require_admin("list users")?;
    builtin(&c)?;
    let admin_role = &c.inner.auth.validator.config().admin_role;
    let users = c.inner.store.list_users().await?;
    Ok(Json(pitwall_api::UserList {
        users: users.iter().map(|u| user_json(u, admin_role)).collect(),
    }))
}

/// `DELETE /v1/users/{name}` (admins, built-in issuer). Their tokens stop working at once;
/// their VMs stay (an administrator can still see and delete them).
pub(crate) async fn delete_user(
    State(c): State<Control>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    caller.require_admin("delete users")?;
    builtin(&c)?;
    if name == caller.0.username {
        return Err(ApiError::conflict(
            "you cannot delete yourself: log in as another administrator",
        ));
    }
    if c.inner.store.delete_user(&name).await? {
        tracing::info!(user = %name, by = %caller.0.username, "user deleted");
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found(format!(
            "no user {name:?}; see `pitwall user list`"
        )))
    }
}

/// `PUT /v1/users/{name}/password`: the user themself, or an admin.
pub(crate) async fn set_password(
    State(c): State<Control>,
    Caller(caller): Caller,
    Path(name): Path<String>,
    body: Result<Json<pitwall_api::SetPasswordRequest>, JsonRejection>,
) -> Result<StatusCode, ApiError> {
    let issuer = builtin(&c)?;
    if name != caller.username && !caller.is_admin {
        return Err(ApiError::forbidden("you may change only your own password"));
    }
    let req = json_body(body)?;
    issuer.set_password(&name, &req.password).await?;
    Ok(StatusCode::NO_CONTENT)
}
