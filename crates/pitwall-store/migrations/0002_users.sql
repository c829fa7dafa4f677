-- Pitwall control-plane store, schema version 2: local users of the built-in issuer.
--
-- Plain SQL that runs unchanged on SQLite and PostgreSQL, with the conventions of 0001_init.sql
-- (TEXT RFC 3339 UTC timestamps with nine fraction digits, BIGINT integers).
-- Only the built-in issuer (embedded default) uses this table; with an external OIDC issuer it
-- stays empty.
CREATE TABLE users (
    -- login name: 1-63 of a-z 0-9 - _ . (checked by the issuer, not here)
    username      TEXT   NOT NULL PRIMARY KEY,
    -- argon2id PHC string ($argon2id$v=19$m=...,t=...,p=...$salt$hash); never a plain password
    password_hash TEXT   NOT NULL,
    -- JSON arrays of strings (TEXT rather than JSON/JSONB so both databases take it)
    roles         TEXT   NOT NULL,
    groups        TEXT   NOT NULL,
    created_at    TEXT   NOT NULL,
    -- 0: may log in; 1: refused
    disabled      BIGINT NOT NULL CHECK (disabled IN (0, 1))
);
