//! Client certificates with embedded policies (delegation into X.509, as in Albatross):
//! `GET /v1/certificates/ca` (public), `POST /v1/certificates` (sign a CSR with the
//! deployment CA), `POST|GET /v1/certificates/revoked`, and [`identify`], which turns a chain
//! presented on the mTLS listener into a [`Principal`].
//!
//! A first-level certificate is issued here, to the caller, with a policy within the caller's
//! own; its holder may sign narrower certificates locally (`pitwall cert sign`). A chain acts
//! for the user named in its first-level certificate, within every policy along it, and is
//! refused the moment any serial in it is revoked.

use axum::extract::rejection::JsonRejection;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use pitwall_store::RevokedCertificate;
use time::OffsetDateTime;

use super::access::Caller;
use super::quota::{policy_from_json, root_policy};
use super::{json_body, rfc3339, ApiError};
use crate::auth::{AuthError, Principal, Via};
use crate::Control;

/// Validity of a certificate when the request does not say.
pub(crate) const DEFAULT_VALIDITY: std::time::Duration =
    std::time::Duration::from_secs(30 * 24 * 60 * 60);
/// Longest validity a certificate may ask for.
pub(crate) const MAX_VALIDITY: std::time::Duration =
    std::time::Duration::from_secs(365 * 24 * 60 * 60);

fn authority_of(c: &Control) -> Result<&crate::auth::x509::DeploymentCa, ApiError> {
    c.inner.auth.ca.as_deref().ok_or_else(|| {
        ApiError::unavailable(
            "this deployment has no certificate authority configured; certificates are off",
        )
    })
}

/// `GET /v1/certificates/ca`: the deployment CA, PEM (clients trust the mTLS listener with it).
pub(crate) async fn ca_pem(State(c): State<Control>) -> Result<Response, ApiError> {
    let pem = authority_of(&c)?.ca_pem().to_string();
    Ok(([(header::CONTENT_TYPE, "application/x-pem-file")], pem).into_response())
}

/// `POST /v1/certificates`: sign the caller's CSR with a policy within theirs.
pub(crate) async fn sign(
    State(c): State<Control>,
    Caller(caller): Caller,
    body: Result<Json<pitwall_api::SignCertificateRequest>, JsonRejection>,
) -> Result<(StatusCode, Json<pitwall_api::SignedCertificate>), ApiError> {
    let req = json_body(body)?;
    if matches!(caller.via, Via::Certificate { .. }) {
        return Err(ApiError::forbidden(
            "a certificate cannot ask the deployment CA for another: sign a narrower one \
             locally with `pitwall cert sign --with-cert … --with-key …`",
        ));
    }
    let authority = authority_of(&c)?;
    let validity = match &req.validity {
        None => DEFAULT_VALIDITY,
        Some(v) => humantime::parse_duration(v).map_err(|e| {
            ApiError::invalid(format!(
                "validity {v:?} is not a duration ({e}); use e.g. 30d"
            ))
        })?,
    };
    if validity.is_zero() || validity > MAX_VALIDITY {
        return Err(ApiError::invalid(format!(
            "validity must be more than 0 and at most {}",
            humantime::format_duration(MAX_VALIDITY)
        )));
    }
    let policy = policy_from_json(req.policy.clone());
    if !caller.is_admin {
        let (mine, source) = root_policy(&c, &format!("user:{}", caller.username)).await?;
        policy.check_within(&mine).map_err(|e| {
            ApiError::forbidden(format!(
                "the certificate's policy exceeds yours (from {source}): {}; ask for at most \
                 what you hold (see `pitwall quota show`)",
                e.excess.join("; ")
            ))
        })?;
    }
    let signed = authority
        .issue(
            &req.csr_pem,
            &caller.username,
            &req.policy,
            req.ca,
            validity,
        )
        .map_err(|e| ApiError::invalid(e.to_string()))?;
    tracing::info!(serial = %signed.serial_hex, user = %caller.username, ca = req.ca, policy = %policy, "certificate issued");
    Ok((
        StatusCode::CREATED,
        Json(pitwall_api::SignedCertificate {
            serial: signed.serial_hex,
            chain_pem: signed.cert_pem.clone(),
            certificate_pem: signed.cert_pem,
            not_after: rfc3339(signed.not_after),
        }),
    ))
}

/// `POST /v1/certificates/revoked`: revoke a serial at once. Administrators may revoke any;
/// others a serial of a chain whose first-level certificate was issued to them, proven by
/// sending that chain.
pub(crate) async fn revoke(
    State(c): State<Control>,
    Caller(caller): Caller,
    body: Result<Json<pitwall_api::RevokeCertificateRequest>, JsonRejection>,
) -> Result<StatusCode, ApiError> {
    let req = json_body(body)?;
    // As certificates name serials: lower-case hex without separators or leading zeros.
    let raw = req.serial.trim().to_ascii_lowercase().replace(':', "");
    let serial = match raw.trim_start_matches('0') {
        "" if !raw.is_empty() => "0".to_string(),
        s => s.to_string(),
    };
    if serial.is_empty() || !serial.chars().all(|ch| ch.is_ascii_hexdigit()) || serial.len() > 64 {
        return Err(ApiError::invalid(format!(
            "serial {:?} is not a hexadecimal certificate serial number",
            req.serial
        )));
    }
    if !caller.is_admin {
        let Some(chain_pem) = &req.chain_pem else {
            return Err(ApiError::forbidden(
                "to revoke a certificate, send its chain (chain_pem) so it can be checked that \
                 it descends from a certificate issued to you; administrators may revoke any serial",
            ));
        };
        let chain = pitwall_api::cert::parse_chain_pem(chain_pem)
            .map_err(|e| ApiError::invalid(e.to_string()))?;
        let ders: Vec<_> = chain
            .iter()
            .map(|ci| rustls::pki_types::CertificateDer::from(ci.der.clone()))
            .collect();
        let identity = authority_of(&c)?
            .verify_client_chain(&ders)
            .map_err(|e| ApiError::invalid(format!("that chain is not valid here: {e}")))?;
        if identity.username != caller.username {
            return Err(ApiError::forbidden(
                "that chain was not issued to you; only its holder or an administrator may \
                 revoke it",
            ));
        }
        if !identity.serials.contains(&serial) {
            return Err(ApiError::invalid(format!(
                "serial {serial} is not in the chain you sent"
            )));
        }
    }
    c.inner
        .store
        .revoke_certificate(&RevokedCertificate {
            serial: serial.clone(),
            revoked_by: caller.username.clone(),
            reason: req.reason.clone(),
            revoked_at: OffsetDateTime::now_utc(),
        })
        .await?;
    tracing::info!(serial = %serial, by = %caller.username, "certificate revoked");
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /v1/certificates/revoked`: the revocation list (any authenticated caller).
pub(crate) async fn list_revoked(
    State(c): State<Control>,
    _caller: Caller,
) -> Result<Json<serde_json::Value>, ApiError> {
    let list = c.inner.store.list_revoked_certificates().await?;
    Ok(Json(serde_json::json!({
        "revoked": list.iter().map(|r| serde_json::json!({
            "serial": r.serial,
            "revoked_by": r.revoked_by,
            "reason": r.reason,
            "revoked_at": rfc3339(r.revoked_at),
        })).collect::<Vec<_>>()
    })))
}

/// The principal of a client chain presented on the mTLS listener: verified against the
/// deployment CA, policies nested, no serial revoked.
pub(crate) async fn identify(
    c: &Control,
    chain: &[rustls::pki_types::CertificateDer<'static>],
) -> Result<Principal, AuthError> {
    let authority = c
        .inner
        .auth
        .ca
        .as_deref()
        .ok_or_else(|| AuthError::Certificate("certificates are not enabled here".into()))?;
    let id = authority.verify_client_chain(chain).map_err(|e| match e {
        // AuthError::Certificate says "client certificate refused" already
        crate::auth::x509::X509Error::Chain(why) => AuthError::Certificate(why.to_string()),
        other => AuthError::Certificate(other.to_string()),
    })?;
    match c.inner.store.revoked_among(&id.serials).await {
        Ok(None) => {}
        Ok(Some(r)) => {
            return Err(AuthError::Certificate(format!(
                "certificate {} was revoked at {}",
                r.serial,
                rfc3339(r.revoked_at)
            )))
        }
        Err(e) => return Err(AuthError::KeySource(format!("revocation list: {e}"))),
    }
    super::guard::ensure_user_active(c, &id.username).await?;
    let leaf = id.serials.last().cloned().unwrap_or_default();
    Ok(Principal {
        subject: format!("certificate:{leaf}"),
        username: id.username,
        roles: Vec::new(),
        groups: Vec::new(),
        is_admin: false,
        via: Via::Certificate {
            serials: id.serials,
            policies: id.policies,
            charge: id.charge_path,
        },
    })
}
