//! The OpenAPI 3.1 document served at `GET /v1/openapi.json`.
//!
//! Written out here rather than derived: the API is small, and the test below fails when a
//! route exists that the document does not describe (or the other way round).

use serde_json::{json, Value};

fn err_responses() -> Value {
    json!({
        "400": {"$ref": "#/components/responses/Error"},
        "401": {"$ref": "#/components/responses/Error"},
        "403": {"$ref": "#/components/responses/Error"},
        "404": {"$ref": "#/components/responses/Error"},
        "409": {"$ref": "#/components/responses/Error"},
        "503": {"$ref": "#/components/responses/Error"}
    })
}

fn ok(schema: &str, status: &str) -> Value {
    let mut r = err_responses();
    r[status] = json!({"description": "OK", "content": {"application/json": {"schema": {"$ref": format!("#/components/schemas/{schema}")}}}});
    r
}

/// A pull also fails at the registry: `registry_unauthorized` and `registry_error` are 502.
/// With `Accept: application/x-ndjson` it answers 200 and a stream of `PullEvent` lines.
fn pull_responses() -> Value {
    let mut r = ok("Image", "201");
    r["502"] = json!({"$ref": "#/components/responses/Error"});
    r["200"] = json!({"description": "Asked with Accept: application/x-ndjson: one PullEvent per line, the last one `done` or `error`",
        "content": {"application/x-ndjson": {"schema": {"$ref": "#/components/schemas/PullEvent"}}}});
    r
}

fn name_param() -> Value {
    json!({"name": "name", "in": "path", "required": true, "schema": {"type": "string"}, "description": "VM name, or OWNER:NAME"})
}

fn body(schema: &str) -> Value {
    json!({"required": true, "content": {"application/json": {"schema": {"$ref": format!("#/components/schemas/{schema}")}}}})
}

fn no_content() -> Value {
    let mut r = err_responses();
    r["204"] = json!({"description": "Done"});
    r
}

/// Public operations carry `security: []`.
fn public(mut op: Value) -> Value {
    op["security"] = json!([]);
    op
}

fn path_param(name: &str, description: &str) -> Value {
    json!({"name": name, "in": "path", "required": true, "schema": {"type": "string"}, "description": description})
}

pub(crate) fn document() -> Value {
    json!({
        "openapi": "3.1.0",
        "info": {"title": "Pitwall API", "version": "v1", "description": "Lightweight VMs from OCI images. Errors are {\"error\": {\"code\", \"message\"}}. Every operation needs a bearer JWT (or a client certificate on the mTLS listener) unless it says `security: []`; another user's VM answers 404."},
        "security": [{"bearer": []}, {"clientCertificate": []}],
        "paths": {
            "/healthz": {"get": public(json!({"summary": "Liveness and the hosts heard from", "responses": ok("Health", "200")}))},
            "/v1/openapi.json": {"get": public(json!({"summary": "This document", "responses": {"200": {"description": "OpenAPI document"}}}))},
            "/v1/auth/config": {"get": public(json!({"summary": "How to log in: issuer, audience, built-in or device authorization endpoints", "responses": ok("AuthConfig", "200")}))},
            "/v1/auth/login": {"post": public(json!({"summary": "Log in to the built-in issuer with a username and password", "requestBody": body("LoginRequest"), "responses": ok("TokenResponse", "200")}))},
            "/v1/auth/refresh": {"post": public(json!({"summary": "Trade a built-in refresh token for new tokens", "requestBody": {"required": true, "content": {"application/json": {"schema": {"type": "object", "required": ["refresh_token"], "properties": {"refresh_token": {"type": "string"}}}}}}, "responses": ok("TokenResponse", "200")}))},
            "/v1/whoami": {"get": {"summary": "The identity of this request", "responses": ok("WhoAmI", "200")}},
            "/v1/users": {
                "post": {"summary": "Create a local user (admins; built-in issuer)", "requestBody": body("CreateUserRequest"), "responses": ok("User", "201")},
                "get": {"summary": "List local users (admins; built-in issuer)", "responses": ok("UserList", "200")}
            },
            "/v1/users/{name}": {"parameters": [path_param("name", "username")], "delete": {"summary": "Delete a local user; their tokens stop working at once (admins)", "responses": no_content()}},
            "/v1/users/{name}/password": {"parameters": [path_param("name", "username")], "put": {"summary": "Change a password (the user, or an admin)", "requestBody": body("SetPasswordRequest"), "responses": no_content()}},
            "/v1/quota": {
                "parameters": [{"name": "user", "in": "query", "required": false, "schema": {"type": "string"}}, {"name": "group", "in": "query", "required": false, "schema": {"type": "string"}}],
                "get": {"summary": "A holder's policy and usage (own and own groups'; admins any)", "responses": ok("Quota", "200")}
            },
            "/v1/policies": {"get": {"summary": "Root policies (admins)", "responses": ok("PolicyList", "200")}},
            "/v1/policies/{holder}": {
                "parameters": [path_param("holder", "user:NAME, group:NAME or default")],
                "put": {"summary": "Set a root policy (admins)", "requestBody": body("Policy"), "responses": ok("PolicyEntry", "200")},
                "delete": {"summary": "Remove a root policy (admins)", "responses": no_content()}
            },
            "/v1/delegations": {
                "post": {"summary": "Delegate part of your policy (or of a delegation you hold) to a user or group", "requestBody": body("CreateDelegationRequest"), "responses": ok("Delegation", "201")},
                "get": {"summary": "Delegations you made, received, or that are cut from your policy", "responses": ok("DelegationList", "200")}
            },
            "/v1/delegations/{id}": {"parameters": [path_param("id", "delegation id")], "delete": {"summary": "Revoke a delegation at once (grantor, owner of the root policy, admins)", "responses": ok("Delegation", "200")}},
            "/v1/certificates": {"post": {"summary": "Have the deployment CA sign a client certificate with a policy within yours", "requestBody": body("SignCertificateRequest"), "responses": ok("SignedCertificate", "201")}},
            "/v1/certificates/ca": {"get": public(json!({"summary": "The deployment CA certificate (PEM)", "responses": {"200": {"description": "PEM", "content": {"application/x-pem-file": {}}}}}))},
            "/v1/certificates/revoked": {
                "post": {"summary": "Revoke a certificate serial at once", "requestBody": body("RevokeCertificateRequest"), "responses": no_content()},
                "get": {"summary": "The revoked serials", "responses": {"200": {"description": "{\"revoked\": [{serial, revoked_by, reason, revoked_at}]}"}}}
            },
            "/v1/audit": {
                "parameters": [{"name": "after", "in": "query", "required": false, "schema": {"type": "integer"}}, {"name": "limit", "in": "query", "required": false, "schema": {"type": "integer", "minimum": 1, "maximum": 10000}}, {"name": "actor", "in": "query", "required": false, "schema": {"type": "string"}}],
                "get": {"summary": "The audit log of state-changing requests (admins all; others their own)", "responses": ok("AuditList", "200")}
            },
            "/v1/vms": {
                "post": {"summary": "Create a VM (boots it unless start=false)",
                    "requestBody": {"required": true, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/CreateVmRequest"}}}},
                    "responses": ok("Vm", "201")},
                "get": {"summary": "List VMs", "responses": ok("VmList", "200")}
            },
            "/v1/vms/{name}": {
                "parameters": [name_param()],
                "get": {"summary": "Show a VM", "responses": ok("Vm", "200")},
                "delete": {"summary": "Delete a VM (stops it first)", "responses": ok("Vm", "202")}
            },
            "/v1/vms/{name}/start": {"parameters": [name_param()], "post": {"summary": "Start a VM", "responses": ok("Vm", "202")}},
            "/v1/vms/{name}/stop": {"parameters": [name_param()], "post": {"summary": "Stop a VM (clean guest shutdown, then kill after a grace period)", "responses": ok("Vm", "202")}},
            "/v1/vms/{name}/wait": {
                "parameters": [name_param(),
                    {"name": "state", "in": "query", "required": true, "schema": {"$ref": "#/components/schemas/VmState"}},
                    {"name": "timeout", "in": "query", "required": false, "schema": {"type": "string", "examples": ["60s", "500ms", "2m"]}}],
                "get": {"summary": "Wait until the VM is in a state; 408 timeout, 409 vm_failed", "responses": ok("Vm", "200")}
            },
            "/v1/vms/{name}/console": {
                "parameters": [name_param(), {"name": "max_bytes", "in": "query", "required": false, "schema": {"type": "integer", "minimum": 1, "maximum": 4194304}}],
                "get": {"summary": "Tail of the captured serial console", "responses": {"200": {"description": "console bytes", "content": {"text/plain": {}}}}}
            },
            "/v1/vms/{name}/grants": {
                "parameters": [name_param()],
                "get": {"summary": "Users the owner let connect to the VM's services (owner or admin)", "responses": ok("VmGrantList", "200")}
            },
            "/v1/vms/{name}/grants/{user}": {
                "parameters": [name_param(), {"name": "user", "in": "path", "required": true, "schema": {"type": "string"}}],
                "put": {"summary": "Let a user connect to the VM's services (owner or admin; idempotent: 201 new, 200 already)", "responses": ok("VmGrant", "201")},
                "delete": {"summary": "Take a user's access back", "responses": {"204": {"description": "revoked"}, "404": {"description": "no such grant"}}}
            },
            "/v1/vms/{name}/exec": {
                "parameters": [name_param()],
                "post": {"summary": "Run a command in a RUNNING VM to completion, through its init's agent (owner, group or admin); 409 not RUNNING, 502 guest_error",
                    "requestBody": {"required": true, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ExecRequest"}}}},
                    "responses": ok("ExecResponse", "200")}
            },
            "/v1/vms/{name}/services": {
                "parameters": [name_param()],
                "get": {"summary": "The services a RUNNING VM's init supervises; 409 not RUNNING", "responses": {"200": {"description": "OK", "content": {"application/json": {"schema": {"type": "array", "items": {"$ref": "#/components/schemas/ServiceStatus"}}}}}}}
            },
            "/v1/vms/{name}/logs": {
                "parameters": [name_param(),
                    {"name": "service", "in": "query", "required": false, "schema": {"type": "string"}, "description": "default: the VM's first (main) service"},
                    {"name": "max_bytes", "in": "query", "required": false, "schema": {"type": "integer", "minimum": 1, "maximum": 4194304, "default": 65536}}],
                "get": {"summary": "Tail of a service's log in a RUNNING VM (header x-pitwall-log-truncated); 409 not RUNNING, 502 guest_error (e.g. no such service)", "responses": {"200": {"description": "log bytes", "content": {"text/plain": {}}}}}
            },
            "/v1/vms/{name}/ssh/certificate": {
                "parameters": [name_param()],
                "post": {"summary": "A short-lived SSH user certificate for this VM (owner, group, admin or grantee)",
                    "requestBody": {"required": true, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/SshCertificateRequest"}}}},
                    "responses": ok("SshCertificate", "201")}
            },
            "/v1/vms/{name}/connect/{service}": {
                "parameters": [name_param(), {"name": "service", "in": "path", "required": true, "schema": {"type": "string"}, "description": "`ssh` or `tcp-PORT` of an exposed port"}],
                "get": {"summary": "A byte stream to a service of a RUNNING VM (owner, group, admin or grantee): send `Connection: Upgrade`, `Upgrade: pitwall-connect/1`; answered 101, then raw bytes",
                    "responses": {"101": {"description": "switched to the stream"}, "409": {"description": "the VM is not RUNNING"}, "426": {"description": "no upgrade asked for"}, "502": {"description": "the VM's side could not be reached"}, "503": {"description": "no edge configured"}}}
            },
            "/v1/ssh/ca": {
                "get": {"summary": "The deployment's SSH CA public key (guests trust its certificates)", "responses": ok("SshCa", "200")}
            },
            "/v1/events": {
                "parameters": [{"name": "after", "in": "query", "required": false, "schema": {"type": "integer"}}],
                "get": {"summary": "Lifecycle events as server-sent events (event `state`, id = seq, data = Event); Last-Event-ID resumes", "responses": {"200": {"description": "event stream", "content": {"text/event-stream": {"schema": {"$ref": "#/components/schemas/Event"}}}}}}
            },
            "/v1/images": {
                "post": {"summary": "Import an image archive (OCI layout tar or docker save tar) as the request body",
                    "parameters": [{"name": "reference", "in": "query", "required": true, "schema": {"type": "string"}, "description": "NAME:TAG to register it under"}],
                    "requestBody": {"required": true, "content": {"application/x-tar": {}}},
                    "responses": ok("Image", "201")},
                "get": {"summary": "List images", "responses": ok("ImageList", "200")}
            },
            "/v1/images/pull": {
                "post": {"summary": "Pull an image from its registry (with the host's registry settings) and register it under its reference; replacing another user's image needs an admin",
                    "requestBody": body("PullImageRequest"),
                    "responses": pull_responses()}
            },
            "/v1/images/{reference}": {
                "parameters": [{"name": "reference", "in": "path", "required": true, "schema": {"type": "string"}, "description": "NAME:TAG, slashes allowed"}],
                "get": {"summary": "Show an image: digest, size, config, owner, the VMs using it", "responses": ok("Image", "200")},
                "delete": {"summary": "Remove an image from its host (which garbage-collects what no image needs) and from the cluster; only its owner or an admin; 409 image_in_use while VMs (not DELETED) use it, unless force",
                    "parameters": [{"name": "force", "in": "query", "required": false, "schema": {"type": "boolean"}, "description": "remove it even while VMs use it (they keep running but cannot start again), or while its host is down (the host keeps its copy)"}],
                    "responses": ok("Image", "200")}
            }
        },
        "components": {
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"},
                "clientCertificate": {"type": "mutualTLS", "description": "A client certificate chain issued under the deployment CA, with Pitwall policy extensions (mTLS listener only)"}
            },
            "responses": {"Error": {"description": "Error", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}},
            "schemas": {
                "AuthConfig": {"type": "object", "properties": {"issuer": {"type": "string"}, "audience": {"type": "string"}, "builtin": {"type": "boolean"}, "client_id": {"type": "string"}, "device_authorization_endpoint": {"type": "string"}, "token_endpoint": {"type": "string"}, "scope": {"type": "string"}, "resource": {"type": "string"}}},
                "LoginRequest": {"type": "object", "required": ["username", "password"], "additionalProperties": false, "properties": {"username": {"type": "string"}, "password": {"type": "string"}}},
                "TokenResponse": {"type": "object", "properties": {"access_token": {"type": "string"}, "token_type": {"type": "string"}, "expires_in": {"type": "integer"}, "refresh_token": {"type": "string"}}},
                "WhoAmI": {"type": "object", "properties": {"username": {"type": "string"}, "subject": {"type": "string"}, "roles": {"type": "array", "items": {"type": "string"}}, "groups": {"type": "array", "items": {"type": "string"}}, "admin": {"type": "boolean"}, "via": {"type": "string"}}},
                "CreateUserRequest": {"type": "object", "required": ["username", "password"], "additionalProperties": false, "properties": {"username": {"type": "string"}, "password": {"type": "string", "minLength": 12}, "roles": {"type": "array", "items": {"type": "string"}}, "groups": {"type": "array", "items": {"type": "string"}}}},
                "User": {"type": "object", "properties": {"username": {"type": "string"}, "roles": {"type": "array", "items": {"type": "string"}}, "groups": {"type": "array", "items": {"type": "string"}}, "admin": {"type": "boolean"}, "disabled": {"type": "boolean"}, "created_at": {"type": "string", "format": "date-time"}}},
                "UserList": {"type": "object", "properties": {"users": {"type": "array", "items": {"$ref": "#/components/schemas/User"}}}},
                "SetPasswordRequest": {"type": "object", "required": ["password"], "additionalProperties": false, "properties": {"password": {"type": "string"}}},
                "Policy": {"type": "object", "additionalProperties": false, "description": "Absent limits are unlimited; absent lists allow any", "properties": {"max_vms": {"type": "integer"}, "max_vcpus": {"type": "integer"}, "max_memory_mib": {"type": "integer"}, "max_disk_mib": {"type": "integer"}, "networks": {"type": "array", "items": {"type": "string"}}, "hosts": {"type": "array", "items": {"type": "string"}}}},
                "Usage": {"type": "object", "properties": {"vms": {"type": "integer"}, "vcpus": {"type": "integer"}, "memory_mib": {"type": "integer"}, "disk_mib": {"type": "integer"}}},
                "Quota": {"type": "object", "properties": {"holder": {"type": "string"}, "source": {"type": "string"}, "policy": {"$ref": "#/components/schemas/Policy"}, "usage": {"$ref": "#/components/schemas/Usage"}}},
                "PolicyEntry": {"type": "object", "properties": {"holder": {"type": "string"}, "policy": {"$ref": "#/components/schemas/Policy"}}},
                "PolicyList": {"type": "object", "properties": {"policies": {"type": "array", "items": {"$ref": "#/components/schemas/PolicyEntry"}}}},
                "CreateDelegationRequest": {"type": "object", "required": ["to", "policy"], "additionalProperties": false, "properties": {"to": {"type": "string", "description": "user:NAME or group:NAME"}, "policy": {"$ref": "#/components/schemas/Policy"}, "from": {"type": "string", "description": "id of a delegation you hold to cut this one from"}}},
                "Delegation": {"type": "object", "properties": {"id": {"type": "string"}, "parent": {"type": "string"}, "to": {"type": "string"}, "policy": {"$ref": "#/components/schemas/Policy"}, "created_by": {"type": "string"}, "created_at": {"type": "string"}, "revoked_at": {"type": ["string", "null"]}, "usage": {"$ref": "#/components/schemas/Usage"}}},
                "DelegationList": {"type": "object", "properties": {"delegations": {"type": "array", "items": {"$ref": "#/components/schemas/Delegation"}}}},
                "SignCertificateRequest": {"type": "object", "required": ["csr_pem", "policy"], "additionalProperties": false, "properties": {"csr_pem": {"type": "string"}, "policy": {"$ref": "#/components/schemas/Policy"}, "ca": {"type": "boolean", "default": false}, "validity": {"type": "string", "default": "30d"}}},
                "SignedCertificate": {"type": "object", "properties": {"serial": {"type": "string"}, "certificate_pem": {"type": "string"}, "chain_pem": {"type": "string"}, "not_after": {"type": "string"}}},
                "RevokeCertificateRequest": {"type": "object", "required": ["serial"], "additionalProperties": false, "properties": {"serial": {"type": "string"}, "reason": {"type": "string"}, "chain_pem": {"type": "string", "description": "required unless an admin: the chain holding the serial"}}},
                "AuditEntry": {"type": "object", "properties": {"seq": {"type": "integer"}, "at": {"type": "string"}, "actor": {"type": "string"}, "via": {"type": "string"}, "source": {"type": "string"}, "method": {"type": "string"}, "path": {"type": "string"}, "action": {"type": "string"}, "status": {"type": "integer"}, "outcome": {"type": "string"}}},
                "AuditList": {"type": "object", "properties": {"entries": {"type": "array", "items": {"$ref": "#/components/schemas/AuditEntry"}}}},
                "VmState": {"type": "string", "enum": ["PENDING","CREATING","STARTING","RUNNING","STOPPING","STOPPED","DELETING","DELETED","FAILED","LOST"]},
                "CreateVmRequest": {"type": "object", "required": ["name", "image"], "additionalProperties": false, "properties": {
                    "name": {"type": "string", "pattern": "^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$"},
                    "image": {"type": "string"},
                    "vcpus": {"type": "integer", "minimum": 1, "maximum": 64, "default": 1},
                    "memory_mib": {"type": "integer", "minimum": 64, "maximum": 131072, "default": 256},
                    "disk_mib": {"type": "integer", "minimum": 16, "maximum": 1048576, "default": 1024},
                    "start": {"type": "boolean", "default": true},
                    "group": {"type": "string", "description": "share with a group you are in; charged to its policy"},
                    "delegation": {"type": "string", "description": "charge to a delegation you hold"},
                    "run": {"$ref": "#/components/schemas/RunOverrides"}}},
                "RunOverrides": {"type": "object", "additionalProperties": false, "description": "changes to the image's run configuration, with docker run's rules: entrypoint drops the image's Cmd unless cmd is given too", "properties": {
                    "entrypoint": {"type": "array", "items": {"type": "string"}},
                    "cmd": {"type": "array", "items": {"type": "string"}},
                    "env": {"type": "array", "items": {"type": "string", "pattern": "^[^=]+="}, "description": "KEY=value, replacing the image's entry of the same key"},
                    "working_dir": {"type": "string", "description": "absolute path"},
                    "user": {"type": "string", "description": "NAME, UID or UID:GID"},
                    "services": {"type": "array", "maxItems": 16, "items": {"$ref": "#/components/schemas/ServiceSpec"}, "description": "processes the guest's init supervises, the first being the VM's main one; empty: one `main` running the program, restart never"}}},
                "ServiceSpec": {"type": "object", "additionalProperties": false, "required": ["name"], "properties": {
                    "name": {"type": "string", "pattern": "^[a-z0-9][a-z0-9_-]{0,31}$"},
                    "command": {"type": "array", "items": {"type": "string"}, "description": "program and arguments; empty: the VM's program"},
                    "env": {"type": "array", "items": {"type": "string", "pattern": "^[^=]+="}, "description": "KEY=value added to the VM's environment"},
                    "working_dir": {"type": "string", "description": "absolute path; default the VM's"},
                    "user": {"type": "string", "description": "NAME, UID or UID:GID; default the VM's"},
                    "restart": {"type": "string", "enum": ["never", "on-failure", "always"], "default": "never"}}},
                "Vm": {"type": "object", "properties": {
                    "id": {"type": "string"}, "name": {"type": "string"}, "image": {"type": "string"},
                    "vcpus": {"type": "integer"}, "memory_mib": {"type": "integer"}, "disk_mib": {"type": "integer"},
                    "state": {"$ref": "#/components/schemas/VmState"},
                    "desired_state": {"type": "string", "enum": ["RUNNING", "STOPPED", "DELETED"]},
                    "generation": {"type": "integer"}, "owner": {"type": "string"}, "group": {"type": ["string", "null"]},
                    "host": {"type": ["string", "null"]}, "reason": {"type": ["string", "null"]},
                    "run": {"$ref": "#/components/schemas/RunOverrides"},
                    "exposed_ports": {"type": "array", "items": {"type": "string"}, "description": "the image's ExposedPorts when the VM was created"},
                    "address": {"type": ["string", "null"], "description": "the VM's IPv4 address on its host's bridge, once it has one"},
                    "created_at": {"type": "string", "format": "date-time"}, "updated_at": {"type": "string", "format": "date-time"}}},
                "ExecRequest": {"type": "object", "additionalProperties": false, "required": ["command"], "properties": {
                    "command": {"type": "array", "minItems": 1, "items": {"type": "string"}},
                    "env": {"type": "array", "items": {"type": "string", "pattern": "^[^=]+="}},
                    "working_dir": {"type": "string"}, "user": {"type": "string"},
                    "stdin": {"type": "string", "contentEncoding": "base64", "description": "at most 1 MiB"},
                    "timeout_ms": {"type": "integer", "minimum": 1, "maximum": 3600000, "default": 60000}}},
                "ExecResponse": {"type": "object", "properties": {
                    "code": {"type": "integer", "description": "exit code, or 128+signal"},
                    "stdout": {"type": "string", "contentEncoding": "base64"},
                    "stderr": {"type": "string", "contentEncoding": "base64"},
                    "timed_out": {"type": "boolean"}}},
                "ServiceStatus": {"type": "object", "properties": {
                    "name": {"type": "string"},
                    "state": {"type": "string", "enum": ["starting", "running", "backoff", "exited"]},
                    "pid": {"type": "integer"}, "restarts": {"type": "integer"}, "last_exit": {"type": "integer"},
                    "restart": {"type": "string", "enum": ["never", "on-failure", "always"]}}},
                "SshCertificateRequest": {"type": "object", "required": ["public_key"], "properties": {"public_key": {"type": "string"}, "ttl_seconds": {"type": "integer", "minimum": 1, "maximum": 3600}}},
                "SshCertificate": {"type": "object", "properties": {"certificate": {"type": "string"}, "principals": {"type": "array", "items": {"type": "string"}}, "key_id": {"type": "string"}, "serial": {"type": "integer"}, "valid_after": {"type": "integer"}, "valid_before": {"type": "integer"}, "ca_public_key": {"type": "string"}}},
                "SshCa": {"type": "object", "properties": {"public_key": {"type": "string"}}},
                "VmGrant": {"type": "object", "properties": {"user": {"type": "string"}, "granted_by": {"type": "string"}, "created_at": {"type": "string", "format": "date-time"}}},
                "VmGrantList": {"type": "object", "properties": {"grants": {"type": "array", "items": {"$ref": "#/components/schemas/VmGrant"}}}},
                "VmList": {"type": "object", "properties": {"vms": {"type": "array", "items": {"$ref": "#/components/schemas/Vm"}}}},
                "Image": {"type": "object", "properties": {
                    "reference": {"type": "string"}, "digest": {"type": "string"}, "size_bytes": {"type": "integer"},
                    "config": {"type": "object"}, "host": {"type": "string"}, "created_at": {"type": "string", "format": "date-time"},
                    "owner": {"type": "string", "description": "who imported or pulled it"},
                    "used_by": {"type": "array", "items": {"type": "string"}, "description": "VMs (not DELETED) using it that the caller may see, OWNER:NAME"},
                    "used_by_count": {"type": "integer", "description": "VMs (not DELETED) using it, all users"}}},
                "ImageList": {"type": "object", "properties": {"images": {"type": "array", "items": {"$ref": "#/components/schemas/Image"}}}},
                "PullEvent": {"type": "object", "required": ["event"], "description": "blob: {digest, bytes_done, bytes_total, present}; building: {digest}; done: {image}; error: {status, error}", "properties": {
                    "event": {"type": "string", "enum": ["blob", "building", "done", "error"]},
                    "digest": {"type": "string"}, "bytes_done": {"type": "integer"}, "bytes_total": {"type": "integer"}, "present": {"type": "boolean"},
                    "image": {"$ref": "#/components/schemas/Image"}, "status": {"type": "integer"},
                    "error": {"type": "object", "properties": {"code": {"type": "string"}, "message": {"type": "string"}}}}},
                "PullImageRequest": {"type": "object", "required": ["reference"], "additionalProperties": false, "properties": {"reference": {"type": "string", "description": "[registry/]repository[:tag][@digest]; no registry means Docker Hub"}}},
                "Event": {"type": "object", "properties": {
                    "seq": {"type": "integer"}, "vm_id": {"type": "string"}, "vm_name": {"type": "string"},
                    "state": {"$ref": "#/components/schemas/VmState"}, "generation": {"type": "integer"},
                    "reason": {"type": ["string", "null"]}, "at": {"type": "string", "format": "date-time"}}},
                "Health": {"type": "object", "properties": {"status": {"type": "string"}, "version": {"type": "string"}, "hosts": {"type": "array", "items": {"type": "string"}}}},
                "Error": {"type": "object", "properties": {"error": {"type": "object", "properties": {
                    "code": {"type": "string", "enum": ["invalid_argument","not_found","already_exists","conflict","ambiguous","timeout","vm_failed","invalid_image","registry_unauthorized","registry_error","unavailable","internal","method_not_allowed","unauthenticated","forbidden","quota_exceeded","external_issuer"]},
                    "message": {"type": "string"}}}}}
            }
        }
    })
}

/// Every route the router serves, as written in `api::router`.
#[cfg(test)]
pub(crate) const ROUTES: &[(&str, &[&str])] = &[
    ("/healthz", &["get"]),
    ("/v1/openapi.json", &["get"]),
    ("/v1/auth/config", &["get"]),
    ("/v1/auth/login", &["post"]),
    ("/v1/auth/refresh", &["post"]),
    ("/v1/whoami", &["get"]),
    ("/v1/users", &["post", "get"]),
    ("/v1/users/{name}", &["delete"]),
    ("/v1/users/{name}/password", &["put"]),
    ("/v1/quota", &["get"]),
    ("/v1/policies", &["get"]),
    ("/v1/policies/{holder}", &["put", "delete"]),
    ("/v1/delegations", &["post", "get"]),
    ("/v1/delegations/{id}", &["delete"]),
    ("/v1/certificates", &["post"]),
    ("/v1/certificates/ca", &["get"]),
    ("/v1/certificates/revoked", &["post", "get"]),
    ("/v1/audit", &["get"]),
    ("/v1/vms", &["post", "get"]),
    ("/v1/vms/{name}", &["get", "delete"]),
    ("/v1/vms/{name}/start", &["post"]),
    ("/v1/vms/{name}/stop", &["post"]),
    ("/v1/vms/{name}/wait", &["get"]),
    ("/v1/vms/{name}/console", &["get"]),
    ("/v1/vms/{name}/exec", &["post"]),
    ("/v1/vms/{name}/services", &["get"]),
    ("/v1/vms/{name}/logs", &["get"]),
    ("/v1/vms/{name}/grants", &["get"]),
    ("/v1/vms/{name}/grants/{user}", &["put", "delete"]),
    ("/v1/vms/{name}/ssh/certificate", &["post"]),
    ("/v1/vms/{name}/connect/{service}", &["get"]),
    ("/v1/ssh/ca", &["get"]),
    ("/v1/events", &["get"]),
    ("/v1/images", &["post", "get"]),
    ("/v1/images/pull", &["post"]),
    ("/v1/images/{reference}", &["get", "delete"]),
];

#[cfg(test)]
mod tests {
    use super::ROUTES;

    #[test]
    fn document_describes_exactly_the_routes() {
        let doc = super::document();
        let paths = doc["paths"].as_object().unwrap();
        assert_eq!(paths.len(), ROUTES.len(), "document and routes differ");
        for (path, methods) in ROUTES {
            let p = paths
                .get(*path)
                .unwrap_or_else(|| panic!("{path} missing from the document"));
            for m in *methods {
                assert!(p.get(*m).is_some(), "{m} {path} missing from the document");
            }
        }
        // and the router source names the same paths
        let src = include_str!("api.rs");
        for (path, _) in ROUTES {
            let route = path.replace("{reference}", "{*reference}");
            assert!(
                src.contains(&format!("\"{route}\"")),
                "{route} not routed in api.rs"
            );
        }
    }

    #[test]
    fn exactly_the_public_routes_are_marked_public() {
        let doc = super::document();
        let paths = doc["paths"].as_object().unwrap();
        for (path, methods) in ROUTES {
            for m in *methods {
                let public = paths[*path][*m].get("security") == Some(&serde_json::json!([]));
                assert_eq!(
                    public,
                    crate::api::guard::PUBLIC.contains(path),
                    "{m} {path}: public in the document = {public}"
                );
            }
        }
    }
}
