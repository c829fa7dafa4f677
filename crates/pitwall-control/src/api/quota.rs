//! Resource policies and quotas (ARCHITECTURE §8, after Albatross): which policies a new VM is
//! charged against, `GET /v1/quota`, and the administrators' `/v1/policies`.
//!
//! Every VM is charged to a path of policy holders (see [`pitwall_core::policy`]): its owner
//! (`/user:NAME/`), or the group it is shared with (`/group:NAME/`), then the delegations or
//! certificates it was created under. [`charge_for`] works the path out for a create, checks
//! that every link of it is still valid (not revoked, within its parent's policy), and returns
//! one [`QuotaCheck`] per holder, which the store applies in the same transaction as the
//! insert — so concurrent creates can never exceed a quota together.
//!
//! Root holders take their policy from `/v1/policies/{holder}`, else from the `default` policy
//! there, else from the deployment's configured default. Administrators are unlimited for
//! what they create themselves.

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use pitwall_core::{Policy, Usage};
use pitwall_store::{DelegationRecord, QuotaCheck};
use serde::Deserialize;
use time::OffsetDateTime;

use super::access::Caller;
use super::{json_body, ApiError};
use crate::auth::{Principal, Via};
use crate::Control;

/// Where a new VM is charged, and what must admit it.
pub(crate) struct Charge {
    pub path: String,
    pub checks: Vec<QuotaCheck>,
    /// The narrowest host and network lists along the path (`None`: any).
    pub hosts: Option<std::collections::BTreeSet<String>>,
    pub networks: Option<std::collections::BTreeSet<String>>,
}

impl Charge {
    fn new(path: String) -> Self {
        Self {
            path,
            checks: Vec::new(),
            hosts: None,
            networks: None,
        }
    }

    /// A charge to the root holder `holder` (`user:NAME`, `group:NAME`), checked against its
    /// policy.
    async fn root(c: &Control, holder: &str) -> Result<Self, ApiError> {
        let (policy, _) = root_policy(c, holder).await?;
        let prefix = format!("/{holder}/");
        let mut out = Self::new(prefix.clone());
        out.push(holder.replacen(':', " ", 1), prefix, policy)?;
        Ok(out)
    }

    /// Add one holder: its policy must lie within the previous one's (if any).
    fn push(&mut self, label: String, prefix: String, policy: Policy) -> Result<(), ApiError> {
        if let Some(parent) = self.checks.last() {
            policy.check_within(&parent.policy).map_err(|e| {
                ApiError::forbidden(format!(
                    "{label} is no longer within {}: {e}; ask its grantor to narrow or renew it",
                    parent.label
                ))
            })?;
        }
        narrow(&mut self.hosts, &policy.hosts);
        narrow(&mut self.networks, &policy.networks);
        self.checks.push(QuotaCheck {
            label,
            prefix,
            policy,
        });
        Ok(())
    }
}

fn narrow(
    acc: &mut Option<std::collections::BTreeSet<String>>,
    next: &Option<std::collections::BTreeSet<String>>,
) {
    if let Some(next) = next {
        *acc = Some(match acc.take() {
            None => next.clone(),
            Some(a) => a.intersection(next).cloned().collect(),
        });
    }
}

/// A root holder's policy and where it came from (`user:NAME`, `group:NAME`, `default`,
/// `configured default`).
pub(crate) async fn root_policy(c: &Control, holder: &str) -> Result<(Policy, String), ApiError> {
    if let Some(p) = c.inner.store.get_policy(holder).await? {
        return Ok((p, holder.to_string()));
    }
    if let Some(p) = c.inner.store.get_policy("default").await? {
        return Ok((p, "default".into()));
    }
    Ok((
        c.inner.auth.default_policy.clone(),
        "configured default".into(),
    ))
}

/// Work out where a VM `caller` creates is charged (optionally shared with `group`, or
/// under the delegation `delegation`).
pub(crate) async fn charge_for(
    c: &Control,
    caller: &Principal,
    group: Option<&str>,
    delegation: Option<&str>,
) -> Result<Charge, ApiError> {
    if let Via::Certificate {
        serials,
        policies,
        charge,
    } = &caller.via
    {
        if group.is_some() || delegation.is_some() {
            return Err(ApiError::invalid(
                "a certificate acts within the policies of its own chain: create without \
                 group or delegation",
            ));
        }
        let root = format!("user:{}", caller.username);
        let mut out = Charge::root(c, &root).await?;
        out.path = charge.clone();
        let mut prefix = format!("/{root}/");
        for (serial, policy) in serials.iter().zip(policies) {
            prefix.push_str(&format!("c:{serial}/"));
            out.push(
                format!("certificate {serial}"),
                prefix.clone(),
                policy.clone(),
            )?;
        }
        return Ok(out);
    }
    match (group, delegation) {
        (Some(_), Some(_)) => Err(ApiError::invalid(
            "give either group or delegation, not both: a VM is charged to one policy",
        )),
        (Some(g), None) => {
            let g = g.trim_start_matches('/');
            if !is_name(g) {
                return Err(ApiError::invalid(format!(
                    "group {g:?} is not a group name (no '/' or ':')"
                )));
            }
            if !caller.in_group(g) && !caller.is_admin {
                return Err(ApiError::forbidden(format!(
                    "you are not a member of group {g:?}; your groups are: {}",
                    if caller.groups.is_empty() {
                        "none".to_string()
                    } else {
                        caller.groups.join(", ")
                    }
                )));
            }
            Charge::root(c, &format!("group:{g}")).await
        }
        (None, Some(id)) => {
            let d = granted_delegation(c, caller, id).await?;
            let mut out = chain_of(c, &d.parent).await?;
            let path = d.path();
            out.push(
                format!("delegation {}", d.id),
                path.clone(),
                d.policy.clone(),
            )?;
            out.path = path;
            Ok(out)
        }
        (None, None) => {
            let holder = format!("user:{}", caller.username);
            if caller.is_admin {
                // Administrators are unlimited for what they create themselves.
                return Ok(Charge::new(format!("/{holder}/")));
            }
            Charge::root(c, &holder).await
        }
    }
}

/// A delegation granted to `caller` (to them, or a group of theirs), not revoked; anything
/// else answers 404 so that ids cannot be probed.
pub(crate) async fn granted_delegation(
    c: &Control,
    caller: &Principal,
    id: &str,
) -> Result<DelegationRecord, ApiError> {
    let missing = || {
        ApiError::not_found(format!(
            "no delegation {id:?} granted to you; see `pitwall delegate list`"
        ))
    };
    let uuid = uuid::Uuid::parse_str(id).map_err(|_| missing())?;
    let d = c
        .inner
        .store
        .get_delegation(uuid)
        .await?
        .ok_or_else(missing)?;
    if !grantee_is(caller, &d.grantee) {
        return Err(missing());
    }
    if d.revoked_at.is_some() {
        return Err(ApiError::forbidden(format!(
            "delegation {id} was revoked; ask its grantor for a new one"
        )));
    }
    Ok(d)
}

/// Is `grantee` (`user:NAME` / `group:NAME`) the caller, or a group of theirs?
pub(crate) fn grantee_is(caller: &Principal, grantee: &str) -> bool {
    match grantee.split_once(':') {
        Some(("user", name)) => name == caller.username,
        Some(("group", name)) => caller.in_group(name),
        _ => false,
    }
}

/// The holders of a charge path (`/user:alice/d:…/d:…/`), root first, each checked: not
/// revoked and within its parent's policy.
pub(crate) async fn chain_of(c: &Control, path: &str) -> Result<Charge, ApiError> {
    let corrupt = || ApiError::internal(format!("stored charge path {path:?} is malformed"));
    let inner = path
        .strip_prefix('/')
        .and_then(|p| p.strip_suffix('/'))
        .ok_or_else(corrupt)?;
    let mut segments = inner.split('/');
    let root = segments.next().ok_or_else(corrupt)?;
    let mut prefix = format!("/{root}/");
    let mut out = Charge::root(c, root).await?;
    for seg in segments {
        let id = seg
            .strip_prefix("d:")
            .and_then(|id| uuid::Uuid::parse_str(id).ok())
            .ok_or_else(corrupt)?;
        let d = c
            .inner
            .store
            .get_delegation(id)
            .await?
            .ok_or_else(corrupt)?;
        if d.revoked_at.is_some() {
            return Err(ApiError::forbidden(format!(
                "delegation {id}, which this one is cut from, was revoked"
            )));
        }
        prefix.push_str(&format!("d:{id}/"));
        out.push(format!("delegation {id}"), prefix.clone(), d.policy)?;
    }
    out.path = prefix;
    Ok(out)
}

pub(crate) use crate::auth::x509::api_policy as policy_json;

/// The wire policy as the server's.
pub(crate) fn policy_from_json(p: pitwall_api::Policy) -> Policy {
    crate::auth::x509::core_policy(&p)
}

pub(crate) fn usage_json(u: Usage) -> pitwall_api::Usage {
    pitwall_api::Usage {
        vms: u.vms,
        vcpus: u.vcpus,
        memory_mib: u.memory_mib,
        disk_mib: u.disk_mib,
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct QuotaQuery {
    user: Option<String>,
    group: Option<String>,
}

/// `GET /v1/quota[?user=NAME|?group=NAME]`: a holder's policy and usage. Users see their own
/// and their groups'; admins any.
pub(crate) async fn show(
    State(c): State<Control>,
    Caller(caller): Caller,
    q: Result<Query<QuotaQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<pitwall_api::Quota>, ApiError> {
    let Query(q) = q.map_err(|e| {
        ApiError::invalid(format!("{}; use ?user=NAME or ?group=NAME", e.body_text()))
    })?;
    let holder = match (&q.user, &q.group) {
        (Some(_), Some(_)) => return Err(ApiError::invalid("give user or group, not both")),
        (Some(u), None) => {
            if *u != caller.username && !caller.is_admin {
                return Err(ApiError::forbidden(
                    "only administrators may see another user's quota",
                ));
            }
            format!("user:{u}")
        }
        (None, Some(g)) => {
            let g = g.trim_start_matches('/');
            if !caller.in_group(g) && !caller.is_admin {
                return Err(ApiError::forbidden(format!(
                    "you are not a member of group {g:?}"
                )));
            }
            format!("group:{g}")
        }
        (None, None) => format!("user:{}", caller.username),
    };
    let usage = c.inner.store.usage(&format!("/{holder}/")).await?;
    let (policy, source) = if q.user.is_none() && q.group.is_none() && caller.is_admin {
        (Policy::unlimited(), "admin".to_string())
    } else {
        root_policy(&c, &holder).await?
    };
    Ok(Json(pitwall_api::Quota {
        holder,
        source,
        policy: policy_json(&policy),
        usage: usage_json(usage),
    }))
}

/// A user or group name as it may stand in a holder or charge path: not empty, no `/` or
/// `:` (the separators of charge paths and `OWNER:NAME`).
fn is_name(name: &str) -> bool {
    !name.is_empty() && !name.contains(['/', ':'])
}

/// `user:NAME` or `group:NAME` with a valid name; returns the name.
fn principal_name(holder: &str) -> Option<&str> {
    match holder.split_once(':') {
        Some(("user" | "group", name)) if is_name(name) => Some(name),
        _ => None,
    }
}

fn check_holder(holder: &str) -> Result<(), ApiError> {
    if holder == "default" {
        return Ok(());
    }
    let ok = principal_name(holder).is_some_and(|name| name.len() <= 255);
    if ok {
        Ok(())
    } else {
        Err(ApiError::invalid(format!(
            "holder {holder:?} is not one of user:NAME, group:NAME or default"
        )))
    }
}

/// `GET /v1/policies` (admins).
pub(crate) async fn list_policies(
    State(c): State<Control>,
    caller: Caller,
) -> Result<Json<pitwall_api::PolicyList>, ApiError> {
    caller.require_admin("list policies")?;
    let policies = c.inner.store.list_policies().await?;
    Ok(Json(pitwall_api::PolicyList {
        policies: policies
            .iter()
            .map(|(holder, p)| pitwall_api::PolicyEntry {
                holder: holder.clone(),
                policy: policy_json(p),
            })
            .collect(),
    }))
}

/// `PUT /v1/policies/{holder}` (admins).
pub(crate) async fn put_policy(
    State(c): State<Control>,
    caller: Caller,
    Path(holder): Path<String>,
    body: Result<Json<pitwall_api::Policy>, JsonRejection>,
) -> Result<Json<pitwall_api::PolicyEntry>, ApiError> {
    caller.require_admin("set policies")?;
    check_holder(&holder)?;
    let policy = policy_from_json(json_body(body)?);
    c.inner.store.put_policy(&holder, &policy).await?;
    tracing::info!(holder = %holder, policy = %policy, by = %caller.0.username, "policy set");
    Ok(Json(pitwall_api::PolicyEntry {
        holder,
        policy: policy_json(&policy),
    }))
}

/// `DELETE /v1/policies/{holder}` (admins).
pub(crate) async fn delete_policy(
    State(c): State<Control>,
    caller: Caller,
    Path(holder): Path<String>,
) -> Result<StatusCode, ApiError> {
    caller.require_admin("remove policies")?;
    check_holder(&holder)?;
    if c.inner.store.delete_policy(&holder).await? {
        tracing::info!(holder = %holder, by = %caller.0.username, "policy removed");
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found(format!(
            "{holder} has no policy of its own; see `pitwall quota list`"
        )))
    }
}

/// `POST /v1/delegations`: cut a share of the caller's policy (or of a delegation they hold)
/// for another user or group.
pub(crate) async fn create_delegation(
    State(c): State<Control>,
    Caller(caller): Caller,
    body: Result<Json<pitwall_api::CreateDelegationRequest>, JsonRejection>,
) -> Result<(StatusCode, Json<pitwall_api::Delegation>), ApiError> {
    let req = json_body(body)?;
    if matches!(caller.via, Via::Certificate { .. }) {
        return Err(ApiError::forbidden(
            "a certificate cannot create delegations: sign a narrower certificate with \
             `pitwall cert sign` instead",
        ));
    }
    if principal_name(&req.to).is_none() {
        return Err(ApiError::invalid(format!(
            "`to` {:?} must be user:NAME or group:NAME",
            req.to
        )));
    }
    let parent = match &req.from {
        Some(id) => granted_delegation(&c, &caller, id).await?.path(),
        None => {
            let holder = format!("user:{}", caller.username);
            // An administrator is unlimited; what they delegate is cut from an explicit
            // unlimited policy, so the chain can be checked like any other.
            if caller.is_admin && c.inner.store.get_policy(&holder).await?.is_none() {
                c.inner
                    .store
                    .put_policy(&holder, &Policy::unlimited())
                    .await?;
            }
            format!("/{holder}/")
        }
    };
    let chain = chain_of(&c, &parent).await?;
    let policy = policy_from_json(req.policy);
    let parent_policy = &chain
        .checks
        .last()
        .ok_or_else(|| ApiError::internal("empty policy chain"))?
        .policy;
    policy.check_within(parent_policy).map_err(|e| {
        ApiError::forbidden(format!(
            "{e}; a delegation can only pass on part of what you hold (see `pitwall quota show`)"
        ))
    })?;
    let d = DelegationRecord {
        id: uuid::Uuid::now_v7(),
        parent,
        grantee: req.to,
        policy,
        created_by: caller.username.clone(),
        created_at: OffsetDateTime::now_utc(),
        revoked_at: None,
    };
    c.inner.store.create_delegation(&d).await?;
    tracing::info!(id = %d.id, to = %d.grantee, by = %d.created_by, policy = %d.policy, "delegation created");
    let json = delegation_json(&c, &d).await?;
    Ok((StatusCode::CREATED, Json(json)))
}

async fn delegation_json(
    c: &Control,
    d: &DelegationRecord,
) -> Result<pitwall_api::Delegation, ApiError> {
    let usage = c.inner.store.usage(&d.path()).await?;
    Ok(pitwall_api::Delegation {
        id: d.id.to_string(),
        parent: d.parent.clone(),
        to: d.grantee.clone(),
        policy: policy_json(&d.policy),
        created_by: d.created_by.clone(),
        created_at: super::rfc3339(d.created_at),
        revoked_at: d.revoked_at.map(super::rfc3339),
        usage: usage_json(usage),
    })
}

/// May `caller` see (and revoke) `d`: its creator, the root user of its chain, its grantee,
/// or an admin.
fn concerns(caller: &Principal, d: &DelegationRecord) -> bool {
    caller.is_admin
        || d.created_by == caller.username
        || d.parent.starts_with(&format!("/user:{}/", caller.username))
        || grantee_is(caller, &d.grantee)
}

/// `GET /v1/delegations`: those the caller made, received, or that are cut from their policy.
pub(crate) async fn list_delegations(
    State(c): State<Control>,
    Caller(caller): Caller,
) -> Result<Json<pitwall_api::DelegationList>, ApiError> {
    let mut out = Vec::new();
    for d in c.inner.store.list_delegations().await? {
        if concerns(&caller, &d) {
            out.push(delegation_json(&c, &d).await?);
        }
    }
    Ok(Json(pitwall_api::DelegationList { delegations: out }))
}

/// `DELETE /v1/delegations/{id}`: revoke at once (creator, root user of the chain, admin).
/// VMs already created under it stay; nothing new can be created under it or below it.
pub(crate) async fn revoke_delegation(
    State(c): State<Control>,
    Caller(caller): Caller,
    Path(id): Path<String>,
) -> Result<Json<pitwall_api::Delegation>, ApiError> {
    let missing =
        || ApiError::not_found(format!("no delegation {id:?}; see `pitwall delegate list`"));
    let uuid = uuid::Uuid::parse_str(&id).map_err(|_| missing())?;
    let d = c
        .inner
        .store
        .get_delegation(uuid)
        .await?
        .ok_or_else(missing)?;
    if !concerns(&caller, &d) {
        return Err(missing());
    }
    let may_revoke = caller.is_admin
        || d.created_by == caller.username
        || d.parent.starts_with(&format!("/user:{}/", caller.username));
    if !may_revoke {
        return Err(ApiError::forbidden(
            "only its grantor, the owner of the policy it is cut from, or an administrator may \
             revoke a delegation",
        ));
    }
    let d = c
        .inner
        .store
        .revoke_delegation(uuid, OffsetDateTime::now_utc())
        .await?;
    tracing::info!(id = %d.id, by = %caller.username, "delegation revoked");
    Ok(Json(delegation_json(&c, &d).await?))
}
