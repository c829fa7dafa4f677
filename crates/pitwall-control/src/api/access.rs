//! Who may see and change what: the one place authorization is decided.
//!
//! A VM belongs to its owner and, optionally, is shared with one group: the owner, members of
//! that group, and administrators see and change it ([`Principal::can_see`]); to everyone else
//! it does not exist — the answer is the same 404 as for a name nobody uses, so no one learns
//! of another user's VM by probing names.
//!
//! Handlers get the caller as [`Caller`] and a VM named in the path as [`VisibleVm`], never by
//! reading the store themselves. VM names are unique per owner; a path may name a VM as
//! `NAME` (the caller's own, else the only one of that name the caller can see) or as
//! `OWNER:NAME`.

use axum::extract::{FromRequestParts, Path};
use axum::http::request::Parts;
use pitwall_store::VmRecord;

use super::ApiError;
use crate::auth::Principal;
use crate::Control;

/// The authenticated caller of a protected route (put there by the guard).
#[derive(Debug, Clone)]
pub(crate) struct Caller(pub Principal);

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, ApiError> {
        parts
            .extensions
            .get::<Principal>()
            .cloned()
            .map(Caller)
            .ok_or_else(|| {
                // A protected route without the guard is a bug of the router, not the caller.
                ApiError::internal("route is not behind the authentication guard")
            })
    }
}

impl Caller {
    /// Refuse (403) unless the caller is an administrator.
    pub(crate) fn require_admin(&self, what: &str) -> Result<(), ApiError> {
        if self.0.is_admin {
            Ok(())
        } else {
            Err(ApiError::forbidden(format!(
                "only administrators may {what}; ask one, or log in as one"
            )))
        }
    }
}

/// The VM named by the route's `{name}`, if the caller may see it; else 404.
pub(crate) struct VisibleVm {
    pub vm: VmRecord,
    /// The name as the caller wrote it (for messages).
    pub asked: String,
}

impl FromRequestParts<Control> for VisibleVm {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, c: &Control) -> Result<Self, ApiError> {
        let Caller(caller) = Caller::from_request_parts(parts, c).await?;
        let Path(asked) = Path::<String>::from_request_parts(parts, c)
            .await
            .map_err(|e| ApiError::invalid(e.body_text()))?;
        let vm = resolve(c, &caller, &asked).await?;
        Ok(VisibleVm { vm, asked })
    }
}

/// Find the VM `asked` (`NAME` or `OWNER:NAME`) among those `caller` may see.
pub(crate) async fn resolve(
    c: &Control,
    caller: &Principal,
    asked: &str,
) -> Result<VmRecord, ApiError> {
    let (owner, name) = match asked.rsplit_once(':') {
        Some((owner, name)) => (Some(owner), name),
        None => (None, asked),
    };
    let mut visible: Vec<VmRecord> = c
        .inner
        .store
        .vms_named(name)
        .await?
        .into_iter()
        .filter(|vm| caller.can_see(&vm.owner, vm.group.as_deref()))
        .collect();
    if let Some(owner) = owner {
        return visible
            .into_iter()
            .find(|vm| vm.owner == owner)
            .ok_or_else(|| ApiError::no_vm(asked));
    }
    if let Some(own) = visible.iter().position(|vm| vm.owner == caller.username) {
        return Ok(visible.swap_remove(own));
    }
    match visible.len() {
        0 => Err(ApiError::no_vm(asked)),
        1 => Ok(visible.swap_remove(0)),
        _ => Err(ApiError::new(
            axum::http::StatusCode::CONFLICT,
            "ambiguous",
            format!(
                "several VMs named {asked:?} are visible to you: name one as {}",
                visible
                    .iter()
                    .map(|vm| format!("{}:{}", vm.owner, vm.spec.name))
                    .collect::<Vec<_>>()
                    .join(" or ")
            ),
        )),
    }
}

/// The VM `asked` if `caller` may connect to its services: one they may see (as
/// [`resolve`]), or, named `OWNER:NAME`, one whose owner granted them access. To a caller with
/// neither, it does not exist (the same 404).
pub(crate) async fn resolve_for_connect(
    c: &Control,
    caller: &Principal,
    asked: &str,
) -> Result<VmRecord, ApiError> {
    match resolve(c, caller, asked).await {
        Err(e) if e.status == axum::http::StatusCode::NOT_FOUND => {
            let Some((owner, name)) = asked.rsplit_once(':') else {
                return Err(e);
            };
            for vm in c.inner.store.vms_named(name).await? {
                if vm.owner != owner {
                    continue;
                }
                let grants = c.inner.store.vm_grants(vm.id).await?;
                if grants.iter().any(|g| g.grantee == caller.username) {
                    return Ok(vm);
                }
            }
            Err(e)
        }
        other => other,
    }
}

/// The VMs of `all` that `caller` may see.
pub(crate) fn visible_vms(caller: &Principal, all: Vec<VmRecord>) -> Vec<VmRecord> {
    all.into_iter()
        .filter(|vm| caller.can_see(&vm.owner, vm.group.as_deref()))
        .collect()
}

#[cfg(test)]
mod tests;
