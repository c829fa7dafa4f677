-- Pitwall control-plane store, schema version 8: the guest's SSH host key.
--
-- Conventions of 0001_init.sql.

-- The VM's SSH host key (an OpenSSH public key line) as its guest reported it to its host
-- over the VM's private agent channel; NULL: not known (yet). Clients check it instead of
-- trusting the key on first use.
ALTER TABLE vms ADD COLUMN ssh_host_key TEXT NULL;
