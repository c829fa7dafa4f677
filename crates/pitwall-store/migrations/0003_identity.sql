-- Pitwall control-plane store, schema version 3: who owns what, and what they may hold.
--
-- Plain SQL that runs unchanged on SQLite and PostgreSQL (the one exception, audit.seq, is
-- marked), with the conventions of 0001_init.sql: TEXT UUIDs, BIGINT integers, TEXT RFC 3339
-- UTC timestamps with nine fraction digits, JSON documents as TEXT.

-- VMs: a group they are shared with, and the charge path they count against.
-- ("group" is a keyword in both databases, hence vm_group.)
-- NULL: shared with nobody; else a group name whose members may see and change the VM.
ALTER TABLE vms ADD COLUMN vm_group TEXT NULL;
-- Charge path: the policy holders the VM counts against, root first, each segment followed by
-- '/': /user:alice/, /group:ops/, /user:alice/d:<uuid>/. A VM counts towards the quota of
-- every prefix of its path (matched with substr, not LIKE, so '_' and '%' need no escaping).
-- SQLite cannot add a NOT NULL column without a default: the default '' is filled in at once
-- below and never written by the store, which always sets the charge.
ALTER TABLE vms ADD COLUMN charge TEXT NOT NULL DEFAULT '';
-- VMs created before charge paths existed count against their owner.
UPDATE vms SET charge = '/user:' || owner || '/';

-- Names are unique per owner now, not across the cluster: two users may each have a "web".
-- Once a VM is DELETED its name is free again for its owner.
DROP INDEX vms_live_name;
CREATE UNIQUE INDEX vms_live_owner_name ON vms (owner, name) WHERE state <> 'DELETED';

-- Images: who imported them (only they or an admin may replace or remove one). Images
-- registered before owners existed were all imported by the administrator.
ALTER TABLE images ADD COLUMN owner TEXT NOT NULL DEFAULT 'admin';

-- Root resource policies (pitwall_core::Policy), one per holder.
CREATE TABLE policies (
    -- user:NAME, group:NAME, or default (users without a policy of their own)
    holder     TEXT NOT NULL PRIMARY KEY,
    -- the policy as a JSON document (TEXT rather than JSON/JSONB so both databases take it)
    policy     TEXT NOT NULL,
    -- when it was last set
    updated_at TEXT NOT NULL
);

-- Shares of a holder's policy given to another principal. Rows are never deleted: a revoked
-- delegation keeps its row (and its id, which is part of the charge path of its VMs).
CREATE TABLE delegations (
    -- UUID; the delegation's own charge path is parent || 'd:' || id || '/'
    id         TEXT NOT NULL PRIMARY KEY,
    -- charge path of the holder it is cut from (/user:alice/, or a delegation's path)
    parent     TEXT NOT NULL,
    -- who receives it: user:NAME or group:NAME
    grantee    TEXT NOT NULL,
    -- the delegated policy as a JSON document, within the parent's
    policy     TEXT NOT NULL,
    -- username of who created it
    created_by TEXT NOT NULL,
    created_at TEXT NOT NULL,
    -- NULL while in force; set once (the first revocation's time stays)
    revoked_at TEXT NULL
);

CREATE INDEX delegations_grantee ON delegations (grantee);

-- Client certificates revoked before they expire, by serial number.
CREATE TABLE revoked_certificates (
    -- serial number, lower-case hex without separators
    serial     TEXT NOT NULL PRIMARY KEY,
    -- username of who revoked it
    revoked_by TEXT NOT NULL,
    -- free text; NULL when none was given
    reason     TEXT NULL,
    revoked_at TEXT NOT NULL
);

-- The audit log: one row per state-changing request (or failed attempt), in the order the
-- store recorded it. Rows are never deleted by the store.
CREATE TABLE audit (
    -- The same as events.seq in 0001_init.sql. SQLite: INTEGER PRIMARY KEY is the rowid,
    -- assigned max(seq)+1 under the write lock, so seq order is commit order. PostgreSQL: seq
    -- BIGSERIAL PRIMARY KEY (or BIGINT GENERATED ALWAYS AS IDENTITY), with the same guard for
    -- readers following audit_since as for events.
    seq     INTEGER PRIMARY KEY,
    at      TEXT   NOT NULL,
    -- username, or '-' when the request carried no valid identity
    actor   TEXT   NOT NULL,
    -- how the actor proved who it is: token, certificate <serial>, or '-'
    via     TEXT   NOT NULL,
    -- peer address of the request (ip:port)
    source  TEXT   NOT NULL,
    -- HTTP method and the request path as sent
    method  TEXT   NOT NULL,
    path    TEXT   NOT NULL,
    -- the route it matched, e.g. POST /v1/vms/{name}/stop; '' when none matched
    action  TEXT   NOT NULL,
    -- HTTP status of the answer
    status  BIGINT NOT NULL CHECK (status >= 0 AND status <= 65535),
    -- ok, or the error code of the answer (not_found, quota_exceeded, ...)
    outcome TEXT   NOT NULL
);

-- One actor's records in order (audit_since with an actor).
CREATE INDEX audit_actor ON audit (actor, seq);
