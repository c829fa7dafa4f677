-- Pitwall control-plane store, schema version 1.
--
-- Plain SQL that runs unchanged on SQLite and PostgreSQL (the one exception, events.seq, is
-- marked). Conventions, the same in every table:
--   * ids are TEXT: UUIDs in their hyphenated lower-case form;
--   * integers are BIGINT (Rust u32/u64 values, checked non-negative here and on read);
--   * timestamps are TEXT, RFC 3339 in UTC with exactly nine fraction digits
--     (2024-05-01T12:00:00.000000000Z), so text order is time order and values round-trip
--     with full precision;
--   * enumerations (states) are TEXT in upper case, as pitwall-core spells them. They carry no
--     CHECK list on purpose: the lifecycle grows in pitwall-core, and the store reports an
--     unknown value as corrupt when it reads it.
-- A PostgreSQL port should add COLLATE "C" to vms.name and images.reference so that "ORDER BY"
-- matches SQLite's byte order.

-- One row per VM ever created. A VM is never deleted from this table: DELETED is a state, so
-- its events keep their VM and its id is never reused.
CREATE TABLE vms (
    id               TEXT   NOT NULL PRIMARY KEY,
    name             TEXT   NOT NULL,
    owner            TEXT   NOT NULL,
    -- canonical image reference, e.g. demo/hello:1.0
    image            TEXT   NOT NULL,
    vcpus            BIGINT NOT NULL CHECK (vcpus >= 0),
    memory_mib       BIGINT NOT NULL CHECK (memory_mib >= 0),
    disk_mib         BIGINT NOT NULL CHECK (disk_mib >= 0),
    -- NULL until the scheduler placed the VM
    host             TEXT   NULL,
    -- desired state (RUNNING, STOPPED, DELETED) and its generation, bumped on every change
    desired          TEXT   NOT NULL,
    generation       BIGINT NOT NULL CHECK (generation >= 1),
    -- actual state, and the generation the report of it answered to (0: no report yet)
    state            TEXT   NOT NULL,
    state_generation BIGINT NOT NULL CHECK (state_generation >= 0),
    -- why FAILED, or why STOPPED when the guest stopped by itself; NULL otherwise
    reason           TEXT   NULL,
    created_at       TEXT   NOT NULL,
    updated_at       TEXT   NOT NULL
);

-- A name belongs to at most one live VM; once that VM is DELETED the name is free again.
-- (Partial indexes: SQLite >= 3.8, PostgreSQL all versions.)
CREATE UNIQUE INDEX vms_live_name ON vms (name) WHERE state <> 'DELETED';
CREATE INDEX vms_owner ON vms (owner);
CREATE INDEX vms_host ON vms (host);

-- Images registered in the cluster, by canonical reference.
CREATE TABLE images (
    reference  TEXT   NOT NULL PRIMARY KEY,
    -- manifest digest sha256:...
    digest     TEXT   NOT NULL,
    size_bytes BIGINT NOT NULL CHECK (size_bytes >= 0),
    -- image config as a JSON document (TEXT rather than JSON/JSONB so both databases take it)
    config     TEXT   NOT NULL,
    host       TEXT   NOT NULL,
    created_at TEXT   NOT NULL
);

-- The lifecycle event log, in the order the store recorded it.
CREATE TABLE events (
    -- SQLite: INTEGER PRIMARY KEY is the rowid, assigned max(seq)+1 inside the (serialised)
    -- write transaction, so seq order is commit order and rows are never deleted.
    -- PostgreSQL: seq BIGSERIAL PRIMARY KEY (or BIGINT GENERATED ALWAYS AS IDENTITY); there
    -- sequence values are handed out before commit, so a reader following events_since must
    -- guard against a lower seq committing after a higher one (e.g. take a transaction-level
    -- advisory lock around the insert, or read only up to the oldest in-flight xid).
    seq        INTEGER PRIMARY KEY,
    vm_id      TEXT   NOT NULL REFERENCES vms (id),
    vm_name    TEXT   NOT NULL,
    state      TEXT   NOT NULL,
    generation BIGINT NOT NULL CHECK (generation >= 0),
    reason     TEXT   NULL,
    at         TEXT   NOT NULL
);

CREATE INDEX events_vm ON events (vm_id, seq);
