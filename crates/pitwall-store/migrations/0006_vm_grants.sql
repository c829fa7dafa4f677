-- Pitwall control-plane store, schema version 6: who besides its owner may connect to a VM.
--
-- Conventions of 0001_init.sql.

-- A grant lets `grantee` (a user name) connect to the VM's services through the edge
-- (`pitwall ssh`, `proxy`, `port-forward`); it gives no right to see or change the VM
-- otherwise. Given by the owner or an administrator; gone with the VM.
CREATE TABLE vm_grants (
    vm_id      TEXT NOT NULL REFERENCES vms (id) ON DELETE CASCADE,
    grantee    TEXT NOT NULL,
    granted_by TEXT NOT NULL,
    created_at TEXT NOT NULL,
    PRIMARY KEY (vm_id, grantee)
);
