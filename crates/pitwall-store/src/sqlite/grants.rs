//! The SQLite store's VM grants (migration `0006_vm_grants.sql`): single statements, each
//! atomic under SQLite's write lock.

use super::*;

const INSERT_GRANT: &str = "INSERT INTO vm_grants (vm_id, grantee, granted_by, created_at) \
     VALUES (?, ?, ?, ?) ON CONFLICT (vm_id, grantee) DO NOTHING";
const DELETE_GRANT: &str = "DELETE FROM vm_grants WHERE vm_id = ? AND grantee = ?";
const LIST_GRANTS: &str = "SELECT vm_id, grantee, granted_by, created_at FROM vm_grants \
     WHERE vm_id = ? ORDER BY grantee";
const VM_EXISTS: &str = "SELECT 1 FROM vms WHERE id = ?";

pub(super) async fn grant_vm(pool: &SqlitePool, grant: &VmGrant) -> Result<bool, StoreError> {
    let mut tx = pool.begin().await?;
    let exists = sqlx::query(VM_EXISTS)
        .bind(grant.vm_id.to_string())
        .fetch_optional(&mut *tx)
        .await?;
    if exists.is_none() {
        tx.rollback().await?;
        return Err(StoreError::NoSuchVm(grant.vm_id.to_string()));
    }
    let done = sqlx::query(INSERT_GRANT)
        .bind(grant.vm_id.to_string())
        .bind(&grant.grantee)
        .bind(&grant.granted_by)
        .bind(encode_time("created_at", grant.created_at)?)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    let new = done.rows_affected() > 0;
    if new {
        tracing::debug!(vm_id = %grant.vm_id, grantee = %grant.grantee, by = %grant.granted_by, "VM granted");
    }
    Ok(new)
}

pub(super) async fn revoke_vm_grant(
    pool: &SqlitePool,
    vm_id: VmId,
    grantee: &str,
) -> Result<bool, StoreError> {
    let done = sqlx::query(DELETE_GRANT)
        .bind(vm_id.to_string())
        .bind(grantee)
        .execute(pool)
        .await?;
    Ok(done.rows_affected() > 0)
}

pub(super) async fn vm_grants(pool: &SqlitePool, vm_id: VmId) -> Result<Vec<VmGrant>, StoreError> {
    let rows = sqlx::query(LIST_GRANTS)
        .bind(vm_id.to_string())
        .fetch_all(pool)
        .await?;
    rows.iter()
        .map(|row| {
            let c = Cells {
                row,
                at: format!("vm_grants row of VM {vm_id}"),
            };
            Ok(VmGrant {
                vm_id,
                grantee: c.get("grantee")?,
                granted_by: c.get("granted_by")?,
                created_at: c.time("created_at")?,
            })
        })
        .collect()
}
