//! The SQLite store's tables of who may do what (migration `0003_identity.sql`): root
//! policies, delegations, revoked client certificates, and the audit log. Each is a handful of
//! single statements, so none needs a transaction of its own: SQLite runs every statement
//! atomically under the write lock.

use super::*;

const PUT_POLICY: &str = "INSERT INTO policies (holder, policy, updated_at) VALUES (?, ?, ?) \
     ON CONFLICT (holder) DO UPDATE SET policy = excluded.policy, updated_at = excluded.updated_at";
const GET_POLICY: &str = "SELECT holder, policy FROM policies WHERE holder = ?";
const LIST_POLICIES: &str = "SELECT holder, policy FROM policies ORDER BY holder";
const DELETE_POLICY: &str = "DELETE FROM policies WHERE holder = ?";

macro_rules! delegation_columns {
    () => {
        "id, parent, grantee, policy, created_by, created_at, revoked_at"
    };
}

const INSERT_DELEGATION: &str = concat!(
    "INSERT INTO delegations (",
    delegation_columns!(),
    ") VALUES (?, ?, ?, ?, ?, ?, ?)"
);
const GET_DELEGATION: &str = concat!(
    "SELECT ",
    delegation_columns!(),
    " FROM delegations WHERE id = ?"
);
const LIST_DELEGATIONS: &str = concat!(
    "SELECT ",
    delegation_columns!(),
    " FROM delegations ORDER BY created_at, id"
);
/// Keeps the first revocation's time: a second revoke changes nothing but still returns the row.
const REVOKE_DELEGATION: &str = concat!(
    "UPDATE delegations SET revoked_at = COALESCE(revoked_at, ?) WHERE id = ? RETURNING ",
    delegation_columns!()
);

macro_rules! revoked_columns {
    () => {
        "serial, revoked_by, reason, revoked_at"
    };
}

const REVOKE_CERTIFICATE: &str = concat!(
    "INSERT INTO revoked_certificates (",
    revoked_columns!(),
    ") VALUES (?, ?, ?, ?) ON CONFLICT (serial) DO NOTHING"
);
const LIST_REVOKED: &str = concat!(
    "SELECT ",
    revoked_columns!(),
    " FROM revoked_certificates ORDER BY revoked_at, serial"
);
/// Serials looked up per query in `revoked_among`, well under SQLite's limit on bound values.
const SERIALS_PER_QUERY: usize = 200;

macro_rules! audit_columns {
    () => {
        "at, actor, via, source, method, path, action, status, outcome"
    };
}

const INSERT_AUDIT: &str = concat!(
    "INSERT INTO audit (",
    audit_columns!(),
    ") VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING seq"
);
const AUDIT_SINCE: &str = concat!(
    "SELECT seq, ",
    audit_columns!(),
    " FROM audit WHERE seq > ? ORDER BY seq LIMIT ?"
);
const AUDIT_OF_ACTOR_SINCE: &str = concat!(
    "SELECT seq, ",
    audit_columns!(),
    " FROM audit WHERE actor = ? AND seq > ? ORDER BY seq LIMIT ?"
);

// ---- policies ------------------------------------------------------------------------------

fn encode_policy(policy: &Policy) -> Result<String, StoreError> {
    serde_json::to_string(policy).map_err(|e| unstorable("policy", e))
}

pub(super) async fn put_policy(
    pool: &SqlitePool,
    holder: &str,
    policy: &Policy,
) -> Result<(), StoreError> {
    sqlx::query(PUT_POLICY)
        .bind(holder)
        .bind(encode_policy(policy)?)
        .bind(now()?)
        .execute(pool)
        .await?;
    tracing::debug!(holder, %policy, "policy set");
    Ok(())
}

pub(super) async fn get_policy(
    pool: &SqlitePool,
    holder: &str,
) -> Result<Option<Policy>, StoreError> {
    let row = sqlx::query(GET_POLICY)
        .bind(holder)
        .fetch_optional(pool)
        .await?;
    row.as_ref()
        .map(|r| decode_policy(r).map(|(_, p)| p))
        .transpose()
}

pub(super) async fn list_policies(pool: &SqlitePool) -> Result<Vec<(String, Policy)>, StoreError> {
    let rows = sqlx::query(LIST_POLICIES).fetch_all(pool).await?;
    rows.iter().map(decode_policy).collect()
}

pub(super) async fn delete_policy(pool: &SqlitePool, holder: &str) -> Result<bool, StoreError> {
    let done = sqlx::query(DELETE_POLICY)
        .bind(holder)
        .execute(pool)
        .await?;
    if done.rows_affected() > 0 {
        tracing::debug!(holder, "policy removed");
    }
    Ok(done.rows_affected() > 0)
}

fn decode_policy(row: &SqliteRow) -> Result<(String, Policy), StoreError> {
    let holder: String = Cells {
        row,
        at: "policies row".into(),
    }
    .get("holder")?;
    let c = Cells {
        row,
        at: format!("policies row {holder}"),
    };
    let policy = c.json("policy")?;
    Ok((holder, policy))
}

// ---- delegations ---------------------------------------------------------------------------

pub(super) async fn create_delegation(
    pool: &SqlitePool,
    d: &DelegationRecord,
) -> Result<(), StoreError> {
    let revoked_at = d
        .revoked_at
        .map(|at| encode_time("revoked_at", at))
        .transpose()?;
    sqlx::query(INSERT_DELEGATION)
        .bind(d.id.to_string())
        .bind(&d.parent)
        .bind(&d.grantee)
        .bind(encode_policy(&d.policy)?)
        .bind(&d.created_by)
        .bind(encode_time("created_at", d.created_at)?)
        .bind(revoked_at)
        .execute(pool)
        .await?;
    tracing::debug!(delegation = %d.id, parent = %d.parent, grantee = %d.grantee, "delegation created");
    Ok(())
}

pub(super) async fn get_delegation(
    pool: &SqlitePool,
    id: uuid::Uuid,
) -> Result<Option<DelegationRecord>, StoreError> {
    let row = sqlx::query(GET_DELEGATION)
        .bind(id.to_string())
        .fetch_optional(pool)
        .await?;
    row.as_ref().map(decode_delegation).transpose()
}

pub(super) async fn list_delegations(
    pool: &SqlitePool,
) -> Result<Vec<DelegationRecord>, StoreError> {
    let rows = sqlx::query(LIST_DELEGATIONS).fetch_all(pool).await?;
    rows.iter().map(decode_delegation).collect()
}

pub(super) async fn revoke_delegation(
    pool: &SqlitePool,
    id: uuid::Uuid,
    at: OffsetDateTime,
) -> Result<DelegationRecord, StoreError> {
    let row = sqlx::query(REVOKE_DELEGATION)
        .bind(encode_time("revoked_at", at)?)
        .bind(id.to_string())
        .fetch_optional(pool)
        .await?
        .ok_or_else(|| StoreError::NoSuchDelegation(id.to_string()))?;
    let d = decode_delegation(&row)?;
    tracing::debug!(delegation = %id, revoked_at = ?d.revoked_at, "delegation revoked");
    Ok(d)
}

fn decode_delegation(row: &SqliteRow) -> Result<DelegationRecord, StoreError> {
    let raw_id: String = Cells {
        row,
        at: "delegations row".into(),
    }
    .get("id")?;
    let c = Cells {
        row,
        at: format!("delegations row {raw_id}"),
    };
    Ok(DelegationRecord {
        id: uuid::Uuid::parse_str(&raw_id).map_err(|e| c.corrupt("id", e))?,
        parent: c.get("parent")?,
        grantee: c.get("grantee")?,
        policy: c.json("policy")?,
        created_by: c.get("created_by")?,
        created_at: c.time("created_at")?,
        revoked_at: c.optional_time("revoked_at")?,
    })
}

// ---- revoked certificates ------------------------------------------------------------------

pub(super) async fn revoke_certificate(
    pool: &SqlitePool,
    revoked: &RevokedCertificate,
) -> Result<(), StoreError> {
    let done = sqlx::query(REVOKE_CERTIFICATE)
        .bind(&revoked.serial)
        .bind(&revoked.revoked_by)
        .bind(revoked.reason.as_deref())
        .bind(encode_time("revoked_at", revoked.revoked_at)?)
        .execute(pool)
        .await?;
    if done.rows_affected() > 0 {
        tracing::debug!(serial = %revoked.serial, by = %revoked.revoked_by, "certificate revoked");
    }
    Ok(())
}

pub(super) async fn revoked_among(
    pool: &SqlitePool,
    serials: &[String],
) -> Result<Option<RevokedCertificate>, StoreError> {
    // In slice order: the chunks in turn, and within a chunk the first serial found.
    for chunk in serials.chunks(SERIALS_PER_QUERY) {
        let placeholders = vec!["?"; chunk.len()].join(", ");
        let sql = format!(
            concat!(
                "SELECT ",
                revoked_columns!(),
                " FROM revoked_certificates WHERE serial IN ({})"
            ),
            placeholders
        );
        let mut query = sqlx::query(&sql);
        for serial in chunk {
            query = query.bind(serial);
        }
        let mut found = query
            .fetch_all(pool)
            .await?
            .iter()
            .map(decode_revoked)
            .collect::<Result<Vec<_>, _>>()?;
        if let Some(first) = chunk
            .iter()
            .find_map(|s| found.iter().position(|r| &r.serial == s))
        {
            return Ok(Some(found.swap_remove(first)));
        }
    }
    Ok(None)
}

pub(super) async fn list_revoked_certificates(
    pool: &SqlitePool,
) -> Result<Vec<RevokedCertificate>, StoreError> {
    let rows = sqlx::query(LIST_REVOKED).fetch_all(pool).await?;
    rows.iter().map(decode_revoked).collect()
}

fn decode_revoked(row: &SqliteRow) -> Result<RevokedCertificate, StoreError> {
    let serial: String = Cells {
        row,
        at: "revoked_certificates row".into(),
    }
    .get("serial")?;
    let c = Cells {
        row,
        at: format!("revoked_certificates row {serial}"),
    };
    Ok(RevokedCertificate {
        revoked_by: c.get("revoked_by")?,
        reason: c.get("reason")?,
        revoked_at: c.time("revoked_at")?,
        serial,
    })
}

// ---- audit ---------------------------------------------------------------------------------

pub(super) async fn append_audit(
    pool: &SqlitePool,
    record: &AuditRecord,
) -> Result<u64, StoreError> {
    let seq: i64 = sqlx::query_scalar(INSERT_AUDIT)
        .bind(encode_time("at", record.at)?)
        .bind(&record.actor)
        .bind(&record.via)
        .bind(&record.source)
        .bind(&record.method)
        .bind(&record.path)
        .bind(&record.action)
        .bind(i64::from(record.status))
        .bind(&record.outcome)
        .fetch_one(pool)
        .await?;
    u64::try_from(seq)
        .map_err(|_| StoreError::Corrupt(format!("audit row seq={seq}: negative sequence number")))
}

pub(super) async fn audit_since(
    pool: &SqlitePool,
    after: u64,
    limit: u32,
    actor: Option<&str>,
) -> Result<Vec<AuditRecord>, StoreError> {
    // every stored seq fits an i64, so nothing lies after a larger `after`
    let after = i64::try_from(after).unwrap_or(i64::MAX);
    // Two statements rather than `? IS NULL OR actor = ?`, which PostgreSQL cannot type.
    let query = match actor {
        Some(actor) => sqlx::query(AUDIT_OF_ACTOR_SINCE).bind(actor),
        None => sqlx::query(AUDIT_SINCE),
    };
    let rows = query
        .bind(after)
        .bind(i64::from(limit))
        .fetch_all(pool)
        .await?;
    rows.iter().map(decode_audit).collect()
}

fn decode_audit(row: &SqliteRow) -> Result<AuditRecord, StoreError> {
    let seq: i64 = Cells {
        row,
        at: "audit row".into(),
    }
    .get("seq")?;
    let c = Cells {
        row,
        at: format!("audit row seq={seq}"),
    };
    Ok(AuditRecord {
        seq: u64::try_from(seq).map_err(|_| c.corrupt("seq", "negative"))?,
        at: c.time("at")?,
        actor: c.get("actor")?,
        via: c.get("via")?,
        source: c.get("source")?,
        method: c.get("method")?,
        path: c.get("path")?,
        action: c.get("action")?,
        status: c.unsigned("status")?,
        outcome: c.get("outcome")?,
    })
}
