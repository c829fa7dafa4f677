//! The one place where requests are authenticated and audited.
//!
//! [`router`](super::router) builds two sets of routes: a few public ones (health,
//! the OpenAPI document, how to log in, the login itself, the deployment CA) and everything
//! else, which sits behind [`authenticate`]. No handler checks tokens itself: a handler of a
//! protected route receives the caller as a [`Principal`] (see `access.rs`), and a request
//! without a valid identity never reaches it.
//!
//! An identity is a bearer JWT (`Authorization: Bearer …`, validated by [`crate::auth::jwt`]
//! against the configured issuer, or the built-in one), or a client certificate chain
//! presented on the mTLS listener (verified by [`crate::auth::x509`]); a bearer token, when
//! sent, wins. With the built-in issuer, a token of a user that was deleted or disabled
//! since it was issued is refused at once, not when it expires.
//!
//! [`audit`] wraps every route: each request that changes state (any method but GET, HEAD and
//! OPTIONS), allowed or refused, is appended to the audit log with who, what, when, from where
//! and the outcome, after the handler answered.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::extract::{ConnectInfo, MatchedPath, Request, State};
use axum::http::{header, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use pitwall_store::AuditRecord;
use time::OffsetDateTime;

use super::ApiError;
use crate::auth::{AuthError, Principal};
use crate::Control;

/// Paths served without an identity (the public router of `api::router`); the tests check
/// that every other route refuses a request without one, and that the OpenAPI document marks
/// exactly these as public.
#[cfg(test)]
pub(crate) const PUBLIC: &[&str] = &[
    "/healthz",
    "/v1/openapi.json",
    "/v1/auth/config",
    "/v1/auth/login",
    "/v1/auth/refresh",
    "/v1/certificates/ca",
];

/// The error code of an answer, for the audit log (set by [`ApiError`]'s response).
#[derive(Debug, Clone, Copy)]
pub(crate) struct ErrorCode(pub &'static str);

/// Set on a streamed answer whose outcome is known only when the stream ends (a pull with
/// progress): the audit row waits for the status and error code sent here (`None`: ok).
/// A sender dropped without sending is recorded as `interrupted`.
#[derive(Debug)]
pub(crate) struct DeferredOutcome(pub Mutex<Option<OutcomeReceiver>>);

pub(crate) type OutcomeReceiver =
    tokio::sync::oneshot::Receiver<(StatusCode, Option<&'static str>)>;

/// Filled while a mutating request is handled: who (once known) and which route.
#[derive(Debug, Clone, Default)]
pub(crate) struct AuditSlot(Arc<Mutex<AuditNote>>);

#[derive(Debug, Default)]
struct AuditNote {
    actor: Option<String>,
    via: Option<String>,
    action: Option<String>,
}

impl AuditSlot {
    /// Record who the request came from (the guard; the login handler for the user it
    /// tried).
    pub(crate) fn set_actor(&self, actor: &str, via: &str) {
        if let Ok(mut n) = self.0.lock() {
            n.actor = Some(actor.to_string());
            n.via = Some(via.to_string());
        }
    }

    fn set_action(&self, action: String) {
        if let Ok(mut n) = self.0.lock() {
            n.action = Some(action);
        }
    }
}

fn changes_state(method: &Method) -> bool {
    !matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
}

fn action(req: &Request) -> Option<String> {
    req.extensions()
        .get::<MatchedPath>()
        .map(|m| format!("{} {}", req.method(), m.as_str()))
}

/// Route layer of the public routes: notes the route for the audit log.
pub(crate) async fn public(req: Request, next: Next) -> Response {
    if let (Some(slot), Some(action)) = (req.extensions().get::<AuditSlot>(), action(&req)) {
        slot.set_action(action);
    }
    next.run(req).await
}

/// Route layer of every protected route: establishes the caller or answers 401.
pub(crate) async fn authenticate(
    State(c): State<Control>,
    mut req: Request,
    next: Next,
) -> Response {
    let slot = req.extensions().get::<AuditSlot>().cloned();
    if let (Some(slot), Some(action)) = (&slot, action(&req)) {
        slot.set_action(action);
    }
    let authorization = req.headers().get(header::AUTHORIZATION).cloned();
    let peer = req
        .extensions()
        .get::<crate::tls::PeerCertificates>()
        .map(|p| p.0.clone());
    let principal = match identify(&c, authorization, peer).await {
        Ok(p) => p,
        Err(e) => {
            tracing::debug!(error = %e, path = %req.uri().path(), "request refused: not authenticated");
            return ApiError::unauthenticated(e).into_response();
        }
    };
    if let Some(slot) = &slot {
        slot.set_actor(&principal.username, &principal.via.describe());
    }
    req.extensions_mut().insert(principal);
    next.run(req).await
}

/// The caller, from the Authorization header or else the client certificate chain.
async fn identify(
    c: &Control,
    authorization: Option<axum::http::HeaderValue>,
    peer: Option<Vec<rustls::pki_types::CertificateDer<'static>>>,
) -> Result<Principal, AuthError> {
    let auth = &c.inner.auth;
    if let Some(value) = authorization {
        let token = value
            .to_str()
            .ok()
            .and_then(|v| {
                let (scheme, token) = v.split_once(' ')?;
                scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
            })
            .filter(|t| !t.is_empty())
            .ok_or_else(|| {
                AuthError::Malformed("the Authorization header must be `Bearer <token>`".into())
            })?;
        let principal = auth.validator.validate(token).await?;
        ensure_user_active(c, &principal.username).await?;
        return Ok(principal);
    }
    if let Some(chain) = peer.filter(|chain| !chain.is_empty()) {
        return crate::api::certs::identify(c, &chain).await;
    }
    Err(AuthError::Missing)
}

/// With the built-in issuer, local users can be deleted or disabled: that takes effect on
/// their next request, whether it carries a token or a certificate. (An external issuer owns
/// its users; nothing to look up.)
pub(crate) async fn ensure_user_active(c: &Control, username: &str) -> Result<(), AuthError> {
    if c.inner.auth.builtin.is_none() {
        return Ok(());
    }
    match c.inner.store.get_user(username).await {
        Ok(Some(u)) if !u.disabled => Ok(()),
        Ok(_) => Err(AuthError::UserGone(username.to_string())),
        Err(e) => Err(AuthError::KeySource(format!("user store: {e}"))),
    }
}

/// Outer layer of every route: appends state-changing requests to the audit log.
pub(crate) async fn audit(State(c): State<Control>, mut req: Request, next: Next) -> Response {
    if !changes_state(req.method()) {
        return next.run(req).await;
    }
    let slot = AuditSlot::default();
    req.extensions_mut().insert(slot.clone());
    let source = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map_or_else(|| "-".to_string(), |ci| ci.0.to_string());
    let method = req.method().to_string();
    let path = req.uri().path().to_string();
    let at = OffsetDateTime::now_utc();
    let mut response = next.run(req).await;
    let deferred = response.extensions_mut().remove::<Arc<DeferredOutcome>>();
    let status = response.status();
    let outcome = match response.extensions().get::<ErrorCode>() {
        Some(code) => code.0.to_string(),
        None if status.is_success() || status.is_redirection() => "ok".to_string(),
        None => format!("http_{}", status.as_u16()),
    };
    let (actor, via, action) = match slot.0.lock() {
        Ok(mut n) => (n.actor.take(), n.via.take(), n.action.take()),
        Err(_) => (None, None, None),
    };
    let mut record = AuditRecord {
        seq: 0,
        at,
        actor: actor.unwrap_or_else(|| "-".into()),
        via: via.unwrap_or_else(|| "-".into()),
        source,
        method,
        path,
        action: action.unwrap_or_default(),
        status: status.as_u16(),
        outcome,
    };
    let Some(deferred) = deferred else {
        append_audit(&c, &record).await;
        return response;
    };
    // The stream's end decides the outcome; the answer goes out meanwhile.
    tokio::spawn(async move {
        let rx = deferred.0.lock().ok().and_then(|mut r| r.take());
        let end = match rx {
            Some(rx) => rx.await.ok(),
            None => None,
        };
        match end {
            Some((status, code)) => {
                record.status = status.as_u16();
                record.outcome = code.map_or_else(|| "ok".to_string(), str::to_string);
            }
            None => record.outcome = "interrupted".into(),
        }
        append_audit(&c, &record).await;
    });
    response
}

async fn append_audit(c: &Control, record: &AuditRecord) {
    if let Err(e) = c.inner.store.append_audit(record).await {
        // The request already took effect; losing its audit row is an operator's problem
        // to see, not the caller's.
        tracing::error!(error = %e, actor = %record.actor, path = %record.path, "cannot append to the audit log");
    }
}
