//! `GET /v1/audit`: the audit log (see `guard.rs` for what is recorded). Administrators see
//! every entry; everyone else only their own.

use axum::extract::{Query, State};
use axum::Json;
use pitwall_store::AuditRecord;
use serde::Deserialize;

use super::access::Caller;
use super::{rfc3339, ApiError};
use crate::Control;

const DEFAULT_LIMIT: u32 = 100;
const MAX_LIMIT: u32 = 10_000;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct AuditQuery {
    after: Option<u64>,
    limit: Option<u32>,
    actor: Option<String>,
}

pub(crate) fn entry_json(r: &AuditRecord) -> pitwall_api::AuditEntry {
    pitwall_api::AuditEntry {
        seq: r.seq,
        at: rfc3339(r.at),
        actor: r.actor.clone(),
        via: r.via.clone(),
        source: r.source.clone(),
        method: r.method.clone(),
        path: r.path.clone(),
        action: r.action.clone(),
        status: r.status,
        outcome: r.outcome.clone(),
    }
}

pub(crate) async fn list(
    State(c): State<Control>,
    Caller(caller): Caller,
    q: Result<Query<AuditQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<pitwall_api::AuditList>, ApiError> {
    let Query(q) = q.map_err(|e| {
        ApiError::invalid(format!(
            "{}; use ?after=SEQ&limit=N&actor=NAME",
            e.body_text()
        ))
    })?;
    let limit = q.limit.unwrap_or(DEFAULT_LIMIT);
    if limit == 0 || limit > MAX_LIMIT {
        return Err(ApiError::invalid(format!(
            "limit must be from 1 to {MAX_LIMIT}"
        )));
    }
    let actor = match q.actor {
        Some(a) if a != caller.username && !caller.is_admin => {
            return Err(ApiError::forbidden(
                "only administrators may read other users' audit entries",
            ))
        }
        Some(a) => Some(a),
        None if caller.is_admin => None,
        None => Some(caller.username.clone()),
    };
    let records = c
        .inner
        .store
        .audit_since(q.after.unwrap_or(0), limit, actor.as_deref())
        .await?;
    Ok(Json(pitwall_api::AuditList {
        entries: records.iter().map(entry_json).collect(),
    }))
}
