//! Reading rows back: each column decoded and checked, and what does not decode reported as
//! [`StoreError::Corrupt`] naming the table, row and column.

use super::*;

/// Reads the columns of one row, reporting what does not decode as [`StoreError::Corrupt`]
/// with the table, row and column.
pub(super) struct Cells<'r> {
    pub(super) row: &'r SqliteRow,
    pub(super) at: String,
}

impl<'r> Cells<'r> {
    pub(super) fn corrupt(&self, column: &str, detail: impl std::fmt::Display) -> StoreError {
        StoreError::Corrupt(format!("{}, column {column}: {detail}", self.at))
    }

    pub(super) fn get<T>(&self, column: &str) -> Result<T, StoreError>
    where
        T: sqlx::Decode<'r, Sqlite> + sqlx::Type<Sqlite>,
    {
        self.row.try_get(column).map_err(|e| match e {
            sqlx::Error::ColumnDecode { source, .. } => self.corrupt(column, source),
            other => StoreError::Database(other),
        })
    }

    pub(super) fn unsigned<T: TryFrom<i64>>(&self, column: &str) -> Result<T, StoreError> {
        let value: i64 = self.get(column)?;
        T::try_from(value)
            .map_err(|_| self.corrupt(column, format_args!("{value} is out of range")))
    }

    pub(super) fn time(&self, column: &str) -> Result<OffsetDateTime, StoreError> {
        let text: String = self.get(column)?;
        OffsetDateTime::parse(&text, &Rfc3339).map_err(|e| {
            self.corrupt(
                column,
                format_args!("{text:?} is not an RFC 3339 time: {e}"),
            )
        })
    }

    pub(super) fn optional_time(&self, column: &str) -> Result<Option<OffsetDateTime>, StoreError> {
        let text: Option<String> = self.get(column)?;
        text.map(|text| {
            OffsetDateTime::parse(&text, &Rfc3339).map_err(|e| {
                self.corrupt(
                    column,
                    format_args!("{text:?} is not an RFC 3339 time: {e}"),
                )
            })
        })
        .transpose()
    }

    /// A JSON document stored as TEXT in a column that may be NULL.
    pub(super) fn optional_json<T: serde::de::DeserializeOwned>(
        &self,
        column: &str,
    ) -> Result<Option<T>, StoreError> {
        let text: Option<String> = self.get(column)?;
        text.map(|text| {
            serde_json::from_str(&text)
                .map_err(|e| self.corrupt(column, format_args!("not the JSON expected: {e}")))
        })
        .transpose()
    }

    /// A JSON document stored as TEXT.
    pub(super) fn json<T: serde::de::DeserializeOwned>(
        &self,
        column: &str,
    ) -> Result<T, StoreError> {
        let text: String = self.get(column)?;
        serde_json::from_str(&text)
            .map_err(|e| self.corrupt(column, format_args!("not the JSON expected: {e}")))
    }

    pub(super) fn state(&self, column: &str) -> Result<VmState, StoreError> {
        let text: String = self.get(column)?;
        VmState::parse(&text)
            .ok_or_else(|| self.corrupt(column, format_args!("{text:?} is not a VM state")))
    }
}

pub(super) fn decode_vm(row: &SqliteRow) -> Result<VmRecord, StoreError> {
    let raw_id: String = Cells {
        row,
        at: "vms row".into(),
    }
    .get("id")?;
    let c = Cells {
        row,
        at: format!("vms row {raw_id}"),
    };
    let id = VmId::parse_str(&raw_id).map_err(|e| c.corrupt("id", e))?;
    let name: String = c.get("name")?;
    let name = VmName::parse(&name).map_err(|e| c.corrupt("name", e))?;
    let image: String = c.get("image")?;
    let image = ImageRef::parse(&image).map_err(|e| c.corrupt("image", e))?;
    let desired: String = c.get("desired")?;
    let desired = DesiredState::parse(&desired).ok_or_else(|| {
        c.corrupt(
            "desired",
            format_args!("{desired:?} is not a desired state"),
        )
    })?;
    Ok(VmRecord {
        id,
        spec: VmSpec {
            name,
            image,
            vcpus: c.unsigned("vcpus")?,
            memory_mib: c.unsigned("memory_mib")?,
            disk_mib: c.unsigned("disk_mib")?,
            run: c.optional_json("run_overrides")?.unwrap_or_default(),
        },
        exposed_ports: c.optional_json("exposed_ports")?.unwrap_or_default(),
        address: c.get("address")?,
        ssh_host_key: c.get("ssh_host_key")?,
        owner: c.get("owner")?,
        group: c.get("vm_group")?,
        charge: c.get("charge")?,
        host: c.get("host")?,
        desired,
        generation: c.unsigned("generation")?,
        state: c.state("state")?,
        state_generation: c.unsigned("state_generation")?,
        reason: c.get("reason")?,
        created_at: c.time("created_at")?,
        updated_at: c.time("updated_at")?,
    })
}

pub(super) fn decode_event(row: &SqliteRow) -> Result<EventRecord, StoreError> {
    let seq: i64 = Cells {
        row,
        at: "events row".into(),
    }
    .get("seq")?;
    let c = Cells {
        row,
        at: format!("events row seq={seq}"),
    };
    let raw_id: String = c.get("vm_id")?;
    let owner: Option<String> = c.get("owner")?;
    let owner = owner.ok_or_else(|| c.corrupt("vm_id", format_args!("no VM {raw_id}")))?;
    Ok(EventRecord {
        seq: u64::try_from(seq).map_err(|_| c.corrupt("seq", "negative"))?,
        vm_id: VmId::parse_str(&raw_id).map_err(|e| c.corrupt("vm_id", e))?,
        vm_name: c.get("vm_name")?,
        owner,
        group: c.get("vm_group")?,
        state: c.state("state")?,
        generation: c.unsigned("generation")?,
        reason: c.get("reason")?,
        at: c.time("at")?,
    })
}

pub(super) fn decode_image(row: &SqliteRow) -> Result<ImageRecord, StoreError> {
    let reference: String = Cells {
        row,
        at: "images row".into(),
    }
    .get("reference")?;
    let c = Cells {
        row,
        at: format!("images row {reference}"),
    };
    let config: String = c.get("config")?;
    let details: Option<String> = c.get("details")?;
    let details = match details {
        Some(d) => serde_json::from_str(&d)
            .map_err(|e| c.corrupt("details", format_args!("not JSON: {e}")))?,
        None => serde_json::Value::Null,
    };
    Ok(ImageRecord {
        details,
        config: serde_json::from_str(&config)
            .map_err(|e| c.corrupt("config", format_args!("not JSON: {e}")))?,
        digest: c.get("digest")?,
        size_bytes: c.unsigned("size_bytes")?,
        host: c.get("host")?,
        owner: c.get("owner")?,
        created_at: c.time("created_at")?,
        reference,
    })
}

pub(super) fn decode_user(row: &SqliteRow) -> Result<UserRecord, StoreError> {
    let username: String = Cells {
        row,
        at: "users row".into(),
    }
    .get("username")?;
    let c = Cells {
        row,
        at: format!("users row {username}"),
    };
    let strings = |column: &str| -> Result<Vec<String>, StoreError> {
        let text: String = c.get(column)?;
        serde_json::from_str(&text)
            .map_err(|e| c.corrupt(column, format_args!("not a JSON array of strings: {e}")))
    };
    let disabled: i64 = c.get("disabled")?;
    Ok(UserRecord {
        password_hash: c.get("password_hash")?,
        roles: strings("roles")?,
        groups: strings("groups")?,
        disabled: match disabled {
            0 => false,
            1 => true,
            other => return Err(c.corrupt("disabled", format_args!("{other} is not 0 or 1"))),
        },
        created_at: c.time("created_at")?,
        username,
    })
}
