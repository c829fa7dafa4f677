//! SSH into VMs: the deployment's SSH CA public key (`GET /v1/ssh/ca`) and short-lived user
//! certificates for one VM (`POST /v1/vms/{name}/ssh/certificate`), issued only to a caller
//! who may connect to that VM (owner, group, administrator or grantee: see
//! [`super::access::resolve_for_connect`]). The certificate's only principal is
//! `vm:<VM id>`; guests accept nothing else (see `auth/ssh_ca.rs`).

use std::time::Duration;

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;

use super::access::{resolve_for_connect, Caller};
use super::{json_body, ApiError};
use crate::auth::ssh_ca::{self, SshCa, SshCaError};
use crate::Control;

fn ca_of(c: &Control) -> Result<&SshCa, ApiError> {
    c.inner
        .auth
        .ssh_ca
        .as_deref()
        .ok_or_else(|| ApiError::unavailable("this control plane has no SSH certificate authority"))
}

pub(crate) async fn ca(State(c): State<Control>) -> Result<Json<pitwall_api::SshCa>, ApiError> {
    Ok(Json(pitwall_api::SshCa {
        public_key: ca_of(&c)?.public_key().to_string(),
    }))
}

pub(crate) async fn certificate(
    State(c): State<Control>,
    Caller(caller): Caller,
    Path(asked): Path<String>,
    body: Result<Json<pitwall_api::SshCertificateRequest>, JsonRejection>,
) -> Result<(StatusCode, Json<pitwall_api::SshCertificate>), ApiError> {
    let req = json_body(body)?;
    let vm = resolve_for_connect(&c, &caller, &asked).await?;
    let ca = ca_of(&c)?;
    let ttl = Duration::from_secs(req.ttl_seconds.unwrap_or(ssh_ca::DEFAULT_TTL.as_secs()));
    let principal = ssh_ca::vm_principal(&vm.id.to_string());
    // What the guest logs for each login: who, for which VM.
    let key_id = format!(
        "{}@pitwall for {}:{}",
        caller.username, vm.owner, vm.spec.name
    );
    let issued = ca
        .sign_user(&req.public_key, &[principal], &key_id, ttl)
        .map_err(|e| match e {
            SshCaError::BadPublicKey(_) | SshCaError::TooLong { .. } => {
                ApiError::invalid(e.to_string())
            }
            other => ApiError::internal(other.to_string()),
        })?;
    tracing::info!(
        vm = %vm.spec.name, owner = %vm.owner, user = %caller.username, serial = issued.serial,
        valid_before = issued.valid_before, "SSH certificate issued"
    );
    Ok((
        StatusCode::CREATED,
        Json(pitwall_api::SshCertificate {
            certificate: issued.certificate,
            principals: issued.principals,
            key_id: issued.key_id,
            serial: issued.serial,
            valid_after: issued.valid_after,
            valid_before: issued.valid_before,
            ca_public_key: ca.public_key().to_string(),
            host_key: vm.ssh_host_key.clone(),
        }),
    ))
}
