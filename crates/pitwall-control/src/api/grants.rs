//! `/v1/vms/{name}/grants`: who besides a VM's owner may connect to its services through the
//! edge (`pitwall ssh`, `proxy`, `port-forward`). Only the owner (or an administrator) lists,
//! gives and takes back grants; a grant gives no right to see or change the VM otherwise (see
//! [`super::access::resolve_for_connect`]).

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use pitwall_store::{VmGrant, VmRecord};

use super::access::{resolve, Caller};
use super::{rfc3339, ApiError};
use crate::Control;

fn grant_json(g: &VmGrant) -> pitwall_api::VmGrant {
    pitwall_api::VmGrant {
        user: g.grantee.clone(),
        granted_by: g.granted_by.clone(),
        created_at: rfc3339(g.created_at),
    }
}

/// The VM `asked`, if the caller may manage its grants: its owner or an administrator (group
/// members see the VM but do not hand out access to it).
async fn owned(c: &Control, caller: &Caller, asked: &str) -> Result<VmRecord, ApiError> {
    let vm = resolve(c, &caller.0, asked).await?;
    if vm.owner != caller.0.username && !caller.0.is_admin {
        return Err(ApiError::forbidden(format!(
            "only {} (the owner of {asked:?}) or an administrator may grant access to it",
            vm.owner
        )));
    }
    Ok(vm)
}

/// A user name as a grant names it: what identity providers use, minus what would make
/// `OWNER:NAME` or a log line ambiguous.
fn check_user(user: &str) -> Result<(), ApiError> {
    if user.is_empty() || user.len() > 256 {
        return Err(ApiError::invalid(
            "the user to grant must be 1 to 256 bytes long",
        ));
    }
    if let Some(c) = user
        .chars()
        .find(|c| c.is_control() || c.is_whitespace() || *c == ':')
    {
        return Err(ApiError::invalid(format!(
            "user name {user:?} contains {c:?}: give the user name as the identity provider spells it"
        )));
    }
    Ok(())
}

pub(crate) async fn list(
    State(c): State<Control>,
    caller: Caller,
    Path(asked): Path<String>,
) -> Result<Json<pitwall_api::VmGrantList>, ApiError> {
    let vm = owned(&c, &caller, &asked).await?;
    let grants = c.inner.store.vm_grants(vm.id).await?;
    Ok(Json(pitwall_api::VmGrantList {
        grants: grants.iter().map(grant_json).collect(),
    }))
}

pub(crate) async fn put(
    State(c): State<Control>,
    caller: Caller,
    Path((asked, user)): Path<(String, String)>,
) -> Result<(StatusCode, Json<pitwall_api::VmGrant>), ApiError> {
    check_user(&user)?;
    let vm = owned(&c, &caller, &asked).await?;
    if user == vm.owner {
        return Err(ApiError::invalid(format!(
            "{user} owns {asked:?} already: grants are for other users"
        )));
    }
    let grant = VmGrant {
        vm_id: vm.id,
        grantee: user.clone(),
        granted_by: caller.0.username.clone(),
        created_at: time::OffsetDateTime::now_utc(),
    };
    let new = c.inner.store.grant_vm(&grant).await?;
    let stored = c
        .inner
        .store
        .vm_grants(vm.id)
        .await?
        .into_iter()
        .find(|g| g.grantee == user)
        .ok_or_else(|| ApiError::internal("a grant just stored is missing"))?;
    if new {
        tracing::info!(vm = %vm.spec.name, owner = %vm.owner, user, by = %caller.0.username, "access granted");
    }
    let status = if new {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(grant_json(&stored))))
}

pub(crate) async fn delete(
    State(c): State<Control>,
    caller: Caller,
    Path((asked, user)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    let vm = owned(&c, &caller, &asked).await?;
    if !c.inner.store.revoke_vm_grant(vm.id, &user).await? {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "no_grant",
            format!("{user} has no grant on {asked:?}; `pitwall grant {asked}` lists them"),
        ));
    }
    tracing::info!(vm = %vm.spec.name, owner = %vm.owner, user, by = %caller.0.username, "access revoked");
    Ok(StatusCode::NO_CONTENT)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_names_with_separators_or_blanks_are_refused() {
        assert!(check_user("bob").is_ok());
        assert!(check_user("bob@example.org").is_ok());
        for bad in ["", "bo b", "alice:bob", "x\n"] {
            assert!(check_user(bad).is_err(), "{bad:?}");
        }
    }
}
