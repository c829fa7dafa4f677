//! JSON bodies of API v1.

pub use pitwall_core::{RestartPolicy, RunOverrides, ServiceSpec};
use serde::{Deserialize, Serialize};

/// `POST /v1/vms`
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateVmRequest {
    pub name: String,
    /// Image reference, e.g. `demo/hello:1.0` (imported or pulled before).
    pub image: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vcpus: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_mib: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_mib: Option<u64>,
    /// Boot the VM once created (default true); false leaves it STOPPED.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start: Option<bool>,
    /// Share the VM with a group the caller belongs to: its members see and change it, and
    /// it is charged to the group's policy instead of the caller's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// Charge the VM to a delegation the caller holds (its id) instead of their own policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delegation: Option<String>,
    /// Changes to the image's run configuration (`entrypoint`, `cmd`, `env`, `working_dir`,
    /// `user`), with `docker run`'s rules.
    #[serde(default, skip_serializing_if = "RunOverrides::is_empty")]
    pub run: RunOverrides,
}

/// A VM as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Vm {
    pub id: String,
    pub name: String,
    pub image: String,
    pub vcpus: u32,
    pub memory_mib: u32,
    pub disk_mib: u32,
    /// Actual state, upper case: PENDING, CREATING, STARTING, RUNNING, STOPPING, STOPPED,
    /// DELETING, DELETED, FAILED, LOST.
    pub state: String,
    /// What the user asked for: RUNNING, STOPPED or DELETED.
    pub desired_state: String,
    pub generation: u64,
    pub owner: String,
    /// Group the VM is shared with.
    #[serde(default)]
    pub group: Option<String>,
    pub host: Option<String>,
    /// Why the VM is FAILED (or why it stopped by itself).
    pub reason: Option<String>,
    /// The run-configuration overrides given at create (absent: the image's own).
    #[serde(default, skip_serializing_if = "RunOverrides::is_empty")]
    pub run: RunOverrides,
    /// The image's `ExposedPorts` (`80/tcp`, ...) when the VM was created.
    #[serde(default)]
    pub exposed_ports: Vec<String>,
    /// The VM's IPv4 address on its host's bridge, once it has one.
    #[serde(default)]
    pub address: Option<String>,
    /// The guest's SSH host key (OpenSSH line), as the guest reported it to its host over
    /// the VM's private channel: what `pitwall ssh` checks the server against.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssh_host_key: Option<String>,
    /// RFC 3339.
    pub created_at: String,
    pub updated_at: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VmList {
    pub vms: Vec<Vm>,
}

/// An image known to the cluster.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Image {
    pub reference: String,
    pub digest: String,
    pub size_bytes: u64,
    /// OCI image config: entrypoint, cmd, env, working_dir, user, exposed_ports.
    pub config: serde_json::Value,
    pub host: String,
    pub created_at: String,
    /// Who imported or pulled it: only they (or an administrator) may replace or remove it.
    #[serde(default)]
    pub owner: String,
    /// The VMs (not DELETED) booted from it that the caller may see, as `OWNER:NAME`, sorted.
    #[serde(default)]
    pub used_by: Vec<String>,
    /// How many VMs (not DELETED) use it, the caller's or not.
    #[serde(default)]
    pub used_by_count: u64,
    /// What the host's cache knows of it: `os`, `architecture`, `base_format` (erofs or
    /// ext4), `unpacked_bytes`, `layers` (blob digests), `config_digest`, `format`. Absent
    /// for images registered before this was kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub details: Option<serde_json::Value>,
}

/// `POST /v1/vms/{name}/ssh/certificate`: sign a public key for SSH into one VM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SshCertificateRequest {
    /// One OpenSSH public key line (`ssh-ed25519 AAAA… comment`).
    pub public_key: String,
    /// Validity in seconds (default 300, at most 3600).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_seconds: Option<u64>,
}

/// A short-lived OpenSSH user certificate valid for one VM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SshCertificate {
    /// OpenSSH text (`ssh-ed25519-cert-v01@openssh.com AAAA…`).
    pub certificate: String,
    /// `vm:<VM id>`: the guest accepts only certificates naming it.
    pub principals: Vec<String>,
    pub key_id: String,
    pub serial: u64,
    /// Unix seconds.
    pub valid_after: u64,
    pub valid_before: u64,
    /// The CA's public key (what guests trust).
    pub ca_public_key: String,
    /// The VM's SSH host key (OpenSSH line) when its guest has reported one: the key the
    /// server must present.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_key: Option<String>,
}

/// `GET /v1/ssh/ca`: the deployment's SSH CA public key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SshCa {
    pub public_key: String,
}

/// One user allowed to connect to a VM's services besides its owner.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmGrant {
    pub user: String,
    pub granted_by: String,
    /// RFC 3339.
    pub created_at: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmGrantList {
    pub grants: Vec<VmGrant>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ImageList {
    pub images: Vec<Image>,
}

/// `POST /v1/images/pull`: pull an image from its registry (the host's registry settings
/// apply) and register it under `reference`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PullImageRequest {
    /// `[registry/]repository[:tag][@digest]`; no registry means Docker Hub.
    pub reference: String,
}

/// One line of `POST /v1/images/pull` answered as `application/x-ndjson` (asked for with
/// `Accept: application/x-ndjson`): progress while the host pulls, then exactly one `done`
/// or `error` line, the same image or error the plain request answers with.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum PullEvent {
    /// A blob (config or layer) downloading, or `present` in the host's blob store already.
    Blob {
        digest: String,
        bytes_done: u64,
        bytes_total: u64,
        #[serde(default)]
        present: bool,
    },
    /// Every blob is on the host; it builds (or finds) the base image of this manifest.
    Building { digest: String },
    /// The pull succeeded.
    Done { image: Image },
    /// The pull failed: `status` is what the plain request would have answered.
    Error { status: u16, error: ErrorDetail },
}

/// One lifecycle event (`GET /v1/events` sends these as server-sent events, event type
/// `state`, id = `seq`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    pub seq: u64,
    pub vm_id: String,
    pub vm_name: String,
    pub state: String,
    pub generation: u64,
    pub reason: Option<String>,
    pub at: String,
}

/// Every error response: `{ "error": { "code", "message" } }`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorDetail {
    /// Stable, machine-readable: `invalid_argument`, `not_found`, `already_exists`,
    /// `conflict`, `timeout`, `vm_failed`, `invalid_image`, `unavailable`, `internal`,
    /// `unauthenticated` (401), `forbidden` (403), `quota_exceeded` (403).
    pub code: String,
    /// For people: what went wrong and what to do.
    pub message: String,
}

/// `GET /healthz`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Health {
    pub status: String,
    pub version: String,
    /// Hosts that sent a heartbeat within their lease.
    pub hosts: Vec<String>,
}

/// `GET /v1/auth/config` (no token needed): how clients log in to this deployment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuthConfig {
    /// Issuer URL (`iss` of accepted tokens).
    pub issuer: String,
    /// Audience tokens must carry.
    pub audience: String,
    /// True when Pitwall's built-in issuer is in use: log in with `POST /v1/auth/login`.
    pub builtin: bool,
    /// OAuth client id the CLI uses at an external issuer (device authorization grant).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    /// The external issuer's device authorization endpoint, when it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_authorization_endpoint: Option<String>,
    /// The external issuer's token endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_endpoint: Option<String>,
    /// Scopes the CLI asks for (space-separated), e.g. `openid offline_access`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
    /// Resource indicator (RFC 8707) the CLI sends so the token's `aud` is Pitwall's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource: Option<String>,
}

/// `POST /v1/auth/login` (built-in issuer only; no token needed).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoginRequest {
    pub username: String,
    pub password: String,
}

/// A token as `POST /v1/auth/login` (and an OAuth token endpoint) gives it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenResponse {
    pub access_token: String,
    /// Always `Bearer`.
    pub token_type: String,
    /// Seconds until `access_token` expires.
    pub expires_in: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refresh_token: Option<String>,
}

/// `GET /v1/whoami`: the identity a request was made with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WhoAmI {
    pub username: String,
    /// `sub` of the token (or the certificate's subject).
    pub subject: String,
    pub roles: Vec<String>,
    pub groups: Vec<String>,
    pub admin: bool,
    /// `token`, or `certificate <serial>`.
    pub via: String,
}

/// A resource policy (see `pitwall quota`): absent limits are unlimited, absent lists allow
/// any host or network.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_vms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_vcpus: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_memory_mib: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_disk_mib: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub networks: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hosts: Option<Vec<String>>,
}

/// Resources held by the VMs charged to a holder.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    pub vms: u64,
    pub vcpus: u64,
    pub memory_mib: u64,
    pub disk_mib: u64,
}

/// `GET /v1/quota[?user=NAME|group=NAME]`: a holder's policy and what it uses.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Quota {
    /// `user:NAME` or `group:NAME`.
    pub holder: String,
    /// Where the policy comes from: `user:NAME`, `group:NAME`, `default`, or `admin`
    /// (administrators are unlimited).
    pub source: String,
    pub policy: Policy,
    pub usage: Usage,
}

/// `PUT /v1/policies/{holder}` (admins): set a root policy; `holder` is `user:NAME`,
/// `group:NAME` or `default`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyEntry {
    pub holder: String,
    pub policy: Policy,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyList {
    pub policies: Vec<PolicyEntry>,
}

/// `POST /v1/users` (admins, built-in issuer only).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateUserRequest {
    pub username: String,
    pub password: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub roles: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<String>,
}

/// A local user of the built-in issuer (never its password).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    pub username: String,
    pub roles: Vec<String>,
    pub groups: Vec<String>,
    pub admin: bool,
    pub disabled: bool,
    pub created_at: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserList {
    pub users: Vec<User>,
}

/// `PUT /v1/users/{name}/password` (the user themself, or an admin).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetPasswordRequest {
    pub password: String,
}

/// `POST /v1/delegations`: give part of a policy to another principal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateDelegationRequest {
    /// `user:NAME` or `group:NAME`.
    pub to: String,
    pub policy: Policy,
    /// Delegation to cut this one from (one held by the caller); absent: the caller's own
    /// policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delegation {
    pub id: String,
    /// Charge path of the holder it is cut from, e.g. `/user:alice/`.
    pub parent: String,
    pub to: String,
    pub policy: Policy,
    pub created_by: String,
    pub created_at: String,
    pub revoked_at: Option<String>,
    /// What the VMs created under it hold now.
    pub usage: Usage,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DelegationList {
    pub delegations: Vec<Delegation>,
}

/// `POST /v1/certificates`: have the deployment CA sign a certificate signing request,
/// embedding a policy (within the caller's).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignCertificateRequest {
    /// PKCS#10 CSR, PEM.
    pub csr_pem: String,
    pub policy: Policy,
    /// May the certificate sign further (narrower) certificates? Default false.
    #[serde(default)]
    pub ca: bool,
    /// Validity, e.g. `30d`; default and maximum set by the deployment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub validity: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedCertificate {
    /// Lower-case hex.
    pub serial: String,
    pub certificate_pem: String,
    /// The chain up to (not including) the deployment CA, leaf first, PEM.
    pub chain_pem: String,
    pub not_after: String,
}

/// `POST /v1/certificates/revoked`: revoke a certificate by serial (its holder's issuer, or
/// an admin).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RevokeCertificateRequest {
    pub serial: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The chain holding `serial` (leaf first, up to the first-level certificate), PEM:
    /// required unless the caller is an administrator, to show the chain was issued to them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chain_pem: Option<String>,
}

/// One audited request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    pub seq: u64,
    pub at: String,
    pub actor: String,
    pub via: String,
    pub source: String,
    pub method: String,
    pub path: String,
    pub action: String,
    pub status: u16,
    pub outcome: String,
}

/// `GET /v1/audit?after=SEQ&limit=N[&actor=NAME]`: admins see all, others their own.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditList {
    pub entries: Vec<AuditEntry>,
}

/// `POST /v1/vms/{name}/exec`: run a command in a RUNNING VM to completion, through its
/// init's agent (not SSH).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExecRequest {
    /// Program and arguments (the program is looked up on the VM's `PATH`).
    pub command: Vec<String>,
    /// `KEY=value` entries added to the VM's environment.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<String>,
    /// Absolute; default the VM's working directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub working_dir: Option<String>,
    /// NAME, UID or UID:GID; default the VM's user.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Bytes written to its standard input (then closed), base64; at most 1 MiB.
    #[serde(default, with = "base64_bytes", skip_serializing_if = "Vec::is_empty")]
    pub stdin: Vec<u8>,
    /// Killed after this long (default 60 000, at most 3 600 000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u32>,
}

/// What a command run with [`ExecRequest`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecResponse {
    /// Exit code, or 128+signal.
    pub code: i32,
    /// Standard output, base64 (at most 1 MiB; more is cut).
    #[serde(with = "base64_bytes")]
    pub stdout: Vec<u8>,
    /// Standard error, base64 (at most 1 MiB).
    #[serde(with = "base64_bytes")]
    pub stderr: Vec<u8>,
    /// True when it was killed at the timeout.
    pub timed_out: bool,
}

/// One service the VM's init supervises (`GET /v1/vms/{name}/services`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceStatus {
    pub name: String,
    /// `starting`, `running`, `backoff` (waiting to restart) or `exited` (for good).
    pub state: String,
    /// While running.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    pub restarts: u32,
    /// Of the last exit: code, or 128+signal.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_exit: Option<i32>,
    pub restart: RestartPolicy,
}

/// Bytes as standard base64 in JSON.
mod base64_bytes {
    use base64::Engine as _;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(bytes))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(d)?;
        base64::engine::general_purpose::STANDARD
            .decode(text.as_bytes())
            .map_err(|e| serde::de::Error::custom(format!("not base64: {e}")))
    }
}
