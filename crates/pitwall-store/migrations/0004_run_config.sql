-- Pitwall control-plane store, schema version 4: what a VM runs.
--
-- Conventions of 0001_init.sql; JSON documents as TEXT.

-- The run-configuration overrides given at create time (entrypoint, cmd, env, working_dir,
-- user) as a JSON object; NULL: none, the image's own configuration.
ALTER TABLE vms ADD COLUMN run_overrides TEXT NULL;
-- The image's ExposedPorts when the VM was created ("80/tcp", ...), as a JSON array; NULL:
-- none (or a VM created before this was recorded).
ALTER TABLE vms ADD COLUMN exposed_ports TEXT NULL;
