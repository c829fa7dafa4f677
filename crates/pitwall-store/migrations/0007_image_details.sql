-- Pitwall control-plane store, schema version 7: what the host knows of a built image.
--
-- Conventions of 0001_init.sql.

-- A JSON object from the host's image cache: os, architecture, base_format, unpacked_bytes,
-- layers (blob digests), config_digest, format; NULL for images registered before.
ALTER TABLE images ADD COLUMN details TEXT NULL;
