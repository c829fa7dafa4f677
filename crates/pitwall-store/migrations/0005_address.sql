-- Pitwall control-plane store, schema version 5: where a VM is reachable.
--
-- Conventions of 0001_init.sql.

-- The VM's IPv4 address on its host's bridge, as the host reported it; NULL: none (yet).
ALTER TABLE vms ADD COLUMN address TEXT NULL;
