//! The command line grammar (clap derive): commands, flags, defaults and help text.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

const ABOUT: &str = "Manage Pitwall microVMs and images through the Pitwall REST API.";

const LONG_ABOUT: &str = "\
Manage Pitwall microVMs and images through the Pitwall REST API.

The API endpoint is taken from, in this order:
  1. the --api URL flag
  2. the PITWALL_API environment variable
  3. `api = \"http://HOST:PORT\"` in the config file: $PITWALL_CONFIG, else
     $XDG_CONFIG_HOME/pitwall/config.toml, else ~/.config/pitwall/config.toml
  4. the default http://127.0.0.1:7070 (where `pitwalld all` listens by default)

Authentication: `pitwall login` stores a token for the endpoint in
$XDG_CONFIG_HOME/pitwall/credentials.json (else ~/.config/pitwall/credentials.json);
PITWALL_TOKEN, when set, is sent instead. For an https endpoint, --cert/--key present a
client certificate and --ca trusts a CA (or `cert`, `key`, `ca` in the config file).";

const EXIT_CODES: &str = "\
Exit codes:
  0  success
  1  any other error
  2  usage error (bad flags or arguments)
  3  not found (VM or image unknown to the API, or PATH missing)
  4  already exists, conflicts with the VM's current state, or the image is in use
  5  timed out waiting
  6  the API is unreachable
  7  the VM failed (the API said vm_failed, or the awaited VM became FAILED)
  8  invalid input refused by the API (invalid_argument, invalid_image)
  9  not logged in, login expired, or the token was refused (unauthenticated)
 10  not allowed: forbidden, or over quota (quota_exceeded)

Logging: PITWALL_LOG=debug (tracing filter syntax) logs to stderr.";

#[derive(Debug, Parser)]
#[command(
    name = "pitwall",
    version,
    about = ABOUT,
    long_about = LONG_ABOUT,
    after_long_help = EXIT_CODES,
    propagate_version = true
)]
pub struct Cli {
    /// Pitwall API endpoint, e.g. http://10.0.0.5:7070 [default: PITWALL_API, then the config
    /// file, then http://127.0.0.1:7070]
    #[arg(long, global = true, value_name = "URL")]
    pub api: Option<String>,

    /// Output format: human-readable text, or the API's JSON objects (pretty-printed)
    #[arg(short, long, global = true, value_enum, default_value_t = OutputFormat::Text)]
    pub output: OutputFormat,

    /// TLS client certificate (PEM, chain leaf first) for an https endpoint [default: `cert`
    /// in the config file]
    #[arg(long, global = true, value_name = "PATH")]
    pub cert: Option<PathBuf>,

    /// Private key (PEM) of --cert [default: `key` in the config file; else --cert's file]
    #[arg(long, global = true, value_name = "PATH")]
    pub key: Option<PathBuf>,

    /// CA certificate(s) (PEM) to trust for an https endpoint, besides the system's [default:
    /// `ca` in the config file]
    #[arg(long, global = true, value_name = "PATH")]
    pub ca: Option<PathBuf>,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    /// Aligned tables and `key: value` lines
    Text,
    /// The API's JSON objects, pretty-printed (lists as arrays; events as one object per line)
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create, inspect, start, stop, delete and watch VMs
    #[command(subcommand)]
    Vm(VmCommand),
    /// Import and inspect images
    #[command(subcommand)]
    Image(ImageCommand),
    /// Follow the lifecycle event stream, one line per event (Ctrl-C to stop)
    Events(EventsArgs),
    /// Check that the API answers, and list the hosts that are alive
    Health,
    /// Log in to the API and store the token
    ///
    /// Built-in issuer: --user NAME and a password; external issuer: the OAuth device flow
    /// in a browser; or --token with a token you have.
    Login(LoginArgs),
    /// Forget the stored token for this API
    Logout,
    /// Show who the API takes you for
    Whoami,
    /// Manage the built-in issuer's users (administrators)
    #[command(subcommand)]
    User(UserCommand),
    /// Show resource quotas, and set policies (administrators)
    #[command(subcommand)]
    Quota(QuotaCommand),
    /// Give part of your quota to another user or group
    #[command(subcommand)]
    Delegate(DelegateCommand),
    /// Let another user connect to your VM (ssh, proxy, port-forward); list or revoke grants
    Grant(GrantArgs),
    /// Open a shell on a VM, or run a command there, over SSH through the edge
    Ssh(SshArgs),
    /// Run a command in a RUNNING VM through its init's agent (no SSH, no network); prints
    /// its output and exits with its status
    Exec(ExecArgs),
    /// OpenSSH configuration for your VMs (`ssh web.pitwall`, scp, editors), through the edge
    SshConfig {
        /// Write it to $XDG_CONFIG_HOME/pitwall/ssh/config instead of printing it
        #[arg(long)]
        write: bool,
    },
    /// Renew the OpenSSH certificate of a VM (what `ssh-config`'s `Match exec` runs)
    SshCertificate {
        /// The VM (`NAME` or `OWNER:NAME`)
        vm: String,
    },
    /// Carry stdin/stdout to a VM's service (for OpenSSH's ProxyCommand, scp, editors)
    Proxy(ProxyArgs),
    /// Forward a local TCP port to a port of a VM, through the edge (no host port is opened)
    PortForward(PortForwardArgs),
    /// Show the audit log of API requests (administrators see everyone's)
    Audit(AuditArgs),
    /// Client certificates that carry a policy: request, sign, revoke, show
    #[command(subcommand)]
    Cert(CertCommand),
}

impl Command {
    /// The VM a command is about, for hints in error messages.
    pub fn vm_name(&self) -> Option<&str> {
        match self {
            Command::Vm(VmCommand::Create(a)) => Some(&a.name),
            Command::Vm(VmCommand::Start(a) | VmCommand::Stop(a) | VmCommand::Delete(a)) => {
                Some(&a.name)
            }
            Command::Vm(VmCommand::Show { name }) => Some(name),
            Command::Vm(VmCommand::Wait(a)) => Some(&a.name),
            Command::Vm(VmCommand::Console(a)) => Some(&a.name),
            Command::Grant(a) => Some(&a.vm),
            Command::Proxy(a) => Some(&a.vm),
            Command::Ssh(a) => Some(&a.vm),
            Command::Exec(a) => Some(&a.vm),
            Command::SshCertificate { vm } => Some(vm),
            Command::PortForward(a) => Some(&a.vm),
            _ => None,
        }
    }

    /// Does the command send the stored token? Logging in and out manage it themselves,
    /// `health` and `cert ca` need none, and local commands make no request.
    pub fn uses_token(&self) -> bool {
        !matches!(
            self,
            Command::Login(_)
                | Command::Logout
                | Command::Health
                | Command::Cert(CertCommand::Ca { .. })
        ) && !self.is_local()
    }

    /// Does the command work on local files only, without the API (and without a login)?
    pub fn is_local(&self) -> bool {
        match self {
            Command::Cert(CertCommand::Request(_) | CertCommand::Show { .. }) => true,
            Command::Cert(CertCommand::Sign(a)) => a.with_cert.is_some(),
            _ => false,
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum VmCommand {
    /// Create a VM from an image, and boot it unless --no-start
    Create(Box<CreateArgs>),
    /// List VMs
    List,
    /// Show one VM, including why it failed when it did
    Show {
        /// VM name
        name: String,
    },
    /// Boot a stopped VM
    Start(ActionArgs),
    /// Stop a running VM (--wait waits for STOPPED)
    Stop(ActionArgs),
    /// Delete a VM (--wait waits until it is DELETED or gone)
    Delete(ActionArgs),
    /// Wait until a VM reaches a state
    Wait(WaitArgs),
    /// Print the VM's captured serial console
    Console(ConsoleArgs),
    /// List the services a RUNNING VM's init supervises (state, restarts, last exit)
    Services {
        /// VM name
        name: String,
    },
    /// Print the tail of a service's log (what it wrote to stdout and stderr) in a RUNNING VM
    Logs {
        /// VM name
        name: String,
        /// The service [default: the VM's first (main) one]
        #[arg(short = 's', long, value_name = "NAME")]
        service: Option<String>,
        /// At most the last N bytes [default: the server's]
        #[arg(long, value_name = "N")]
        max_bytes: Option<u32>,
    },
}

#[derive(Debug, Args)]
pub struct CreateArgs {
    /// VM name
    pub name: String,
    /// Image reference, e.g. demo/hello:1.0 (see `pitwall image list`)
    #[arg(long, value_name = "REF")]
    pub image: String,
    /// Virtual CPUs [default: the server's]
    #[arg(long, value_name = "N")]
    pub vcpus: Option<u64>,
    /// Memory in MiB [default: the server's]
    #[arg(long, value_name = "MIB")]
    pub memory: Option<u64>,
    /// Root disk in MiB [default: the server's]
    #[arg(long, value_name = "MIB")]
    pub disk: Option<u64>,
    /// Create the VM but leave it STOPPED
    #[arg(long)]
    pub no_start: bool,
    /// Wait until the VM is RUNNING (STOPPED with --no-start)
    #[arg(long)]
    pub wait: bool,
    /// How long --wait waits, e.g. 90s, 5m
    #[arg(long, value_name = "DUR", default_value = "120s", value_parser = parse_duration)]
    pub timeout: Duration,
    /// Share the VM with this group of yours (charged to the group's quota)
    #[arg(long, value_name = "G")]
    pub group: Option<String>,
    /// Charge the VM to this delegation you hold (see `pitwall delegate list`)
    #[arg(long, value_name = "ID", conflicts_with = "group")]
    pub delegation: Option<String>,
    /// Run this program instead of the image's Entrypoint (its Cmd is dropped too unless
    /// arguments follow `--`); an empty string clears the Entrypoint
    #[arg(long, value_name = "PROGRAM")]
    pub entrypoint: Option<String>,
    /// Set an environment variable in the VM (repeatable); replaces the image's value
    #[arg(short = 'e', long = "env", value_name = "KEY=VALUE")]
    pub env: Vec<String>,
    /// Working directory of the program in the VM, instead of the image's WorkingDir
    #[arg(short = 'w', long, value_name = "DIR")]
    pub workdir: Option<String>,
    /// User (NAME, UID or UID:GID) the program runs as, instead of the image's User
    #[arg(short = 'u', long, value_name = "USER")]
    pub user: Option<String>,
    /// A process the VM's init supervises (repeatable; the first is the VM's main one):
    /// NAME[:POLICY][=COMMAND], POLICY never (default), on-failure or always, COMMAND split
    /// like a shell would; without COMMAND the image's program. E.g.
    /// `--service 'web:always=/usr/bin/web --port 80' --service 'main:on-failure'`
    #[arg(long = "service", value_name = "SPEC", value_parser = parse_service)]
    pub services: Vec<pitwall_api::ServiceSpec>,
    /// Arguments after `--` replace the image's Cmd, e.g. `-- /bin/sh -c 'echo hi'`
    #[arg(last = true, value_name = "CMD")]
    pub cmd: Vec<String>,
}

/// Arguments of `vm start`, `vm stop` and `vm delete`.
#[derive(Debug, Args)]
pub struct ActionArgs {
    /// VM name
    pub name: String,
    /// Wait until the VM is RUNNING (start), STOPPED (stop) or DELETED (delete)
    #[arg(long)]
    pub wait: bool,
    /// How long --wait waits, e.g. 90s, 5m
    #[arg(long, value_name = "DUR", default_value = "120s", value_parser = parse_duration)]
    pub timeout: Duration,
}

#[derive(Debug, Args)]
pub struct WaitArgs {
    /// VM name
    pub name: String,
    /// State to wait for: RUNNING, STOPPED, DELETED, FAILED, ...
    #[arg(long, default_value = "RUNNING", value_parser = parse_state)]
    pub state: String,
    /// How long to wait, e.g. 500ms, 30s, 2m, 1h
    #[arg(long, value_name = "DUR", default_value = "60s", value_parser = parse_duration)]
    pub timeout: Duration,
}

#[derive(Debug, Args)]
pub struct ConsoleArgs {
    /// VM name
    pub name: String,
    /// Print at most the last N bytes [default: the server's]
    #[arg(long, value_name = "N")]
    pub max_bytes: Option<u32>,
    /// Keep printing new output until Ctrl-C or the VM is STOPPED, DELETED or FAILED
    #[arg(short, long)]
    pub follow: bool,
}

#[derive(Debug, Subcommand)]
pub enum ImageCommand {
    /// Upload a `docker save` tar, an OCI layout tar or an OCI image layout directory
    Import(ImportArgs),
    /// Have a host pull an image from its registry (the host's registry settings apply)
    Pull {
        /// [REGISTRY/]REPOSITORY[:TAG][@DIGEST], e.g. ghcr.io/acme/web:1.2 or
        /// 127.0.0.1:5000/demo/hello@sha256:…; no registry means Docker Hub
        reference: String,
    },
    /// List images
    List,
    /// Show one image and its config
    Show {
        /// Image reference, e.g. demo/hello:1.0
        reference: String,
    },
    /// Print everything the API knows about one image as JSON (digest, size, config, host,
    /// owner, the VMs using it)
    Inspect {
        /// Image reference, e.g. demo/hello:1.0
        reference: String,
    },
    /// Remove an image from its host and the cluster (its owner or an admin); the host then
    /// deletes what no other image needs. Refused while VMs use it, unless --force
    #[command(alias = "remove")]
    Rm {
        /// Image reference, e.g. demo/hello:1.0
        reference: String,
        /// Remove it even while VMs use it (running ones keep going but cannot start again),
        /// or while its host is down (the host keeps its copy)
        #[arg(long)]
        force: bool,
    },
}

#[derive(Debug, Args)]
pub struct ImportArgs {
    /// A `docker save` tar, an OCI layout tar, or an OCI image layout directory
    pub path: PathBuf,
    /// Reference to store the image under, e.g. demo/hello:1.0
    #[arg(long, value_name = "NAME:TAG")]
    pub name: String,
}

#[derive(Debug, Args)]
pub struct EventsArgs {
    /// Only events after this sequence number (0: from the start of the log)
    #[arg(long, value_name = "SEQ", default_value_t = 0)]
    pub after: u64,
}

#[derive(Debug, Args)]
pub struct LoginArgs {
    /// User name at the built-in issuer
    #[arg(long, value_name = "NAME", conflicts_with = "token")]
    pub user: Option<String>,
    /// Read the password from the first line of stdin (without it, pitwall prompts on the
    /// terminal; the password is never an argument)
    #[arg(long, requires = "user")]
    pub password_stdin: bool,
    /// Store this token (a JWT) instead of logging in; `-` reads it from stdin
    #[arg(long, value_name = "TOKEN")]
    pub token: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum UserCommand {
    /// Create a user of the built-in issuer
    Create(UserCreateArgs),
    /// List users
    List,
    /// Delete a user
    Delete {
        /// User name
        name: String,
    },
    /// Set a user's password (yours, or anyone's as an administrator)
    Passwd {
        /// User name
        name: String,
        /// Read the new password from the first line of stdin
        #[arg(long)]
        password_stdin: bool,
    },
}

#[derive(Debug, Args)]
pub struct UserCreateArgs {
    /// User name
    pub name: String,
    /// A group the user is in (repeat for more)
    #[arg(long = "group", value_name = "G")]
    pub groups: Vec<String>,
    /// A role the user holds (repeat for more)
    #[arg(long = "role", value_name = "R")]
    pub roles: Vec<String>,
    /// Make the user an administrator (gives the role pitwall-admin)
    #[arg(long)]
    pub admin: bool,
    /// Read the password from the first line of stdin
    #[arg(long)]
    pub password_stdin: bool,
}

#[derive(Debug, Subcommand)]
pub enum QuotaCommand {
    /// Show a quota: its policy and what is used (yours by default)
    Show(QuotaShowArgs),
    /// Set the policy of a holder: user:NAME, group:NAME or default (administrators)
    Set(QuotaSetArgs),
    /// List the policies set (administrators)
    List,
    /// Remove the policy of a holder (administrators)
    Rm {
        /// user:NAME, group:NAME or default
        #[arg(value_parser = parse_holder)]
        holder: String,
    },
}

#[derive(Debug, Args)]
pub struct QuotaShowArgs {
    /// Show this user's quota
    #[arg(long, value_name = "NAME", conflicts_with = "group")]
    pub user: Option<String>,
    /// Show this group's quota
    #[arg(long, value_name = "NAME")]
    pub group: Option<String>,
}

#[derive(Debug, Args)]
pub struct QuotaSetArgs {
    /// user:NAME, group:NAME or default
    #[arg(value_parser = parse_holder)]
    pub holder: String,
    #[command(flatten)]
    pub limits: Limits,
}

/// A policy on the command line: absent limits are unlimited, absent lists allow any.
#[derive(Debug, Args, Clone, Default, PartialEq, Eq)]
pub struct Limits {
    /// At most N VMs
    #[arg(long, value_name = "N")]
    pub max_vms: Option<u64>,
    /// At most N virtual CPUs in all
    #[arg(long, value_name = "N")]
    pub max_vcpus: Option<u64>,
    /// At most N MiB of memory in all
    #[arg(long, value_name = "N")]
    pub max_memory_mib: Option<u64>,
    /// At most N MiB of disk in all
    #[arg(long, value_name = "N")]
    pub max_disk_mib: Option<u64>,
    /// Only on this host (repeat for more) [default: any]
    #[arg(long = "host", value_name = "H")]
    pub hosts: Vec<String>,
    /// Only on this network (repeat for more) [default: any]
    #[arg(long = "network", value_name = "N")]
    pub networks: Vec<String>,
}

#[derive(Debug, Subcommand)]
pub enum DelegateCommand {
    /// Give part of your quota (or of a delegation you hold) to a user or group
    Create(DelegateCreateArgs),
    /// List the delegations you made or hold
    List,
    /// Revoke a delegation
    Revoke {
        /// Delegation id
        id: String,
    },
}

#[derive(Debug, Args)]
pub struct DelegateCreateArgs {
    /// Who gets it: user:NAME or group:NAME
    #[arg(long, value_name = "user:NAME|group:NAME", value_parser = parse_principal)]
    pub to: String,
    /// Cut it from this delegation you hold [default: your own quota]
    #[arg(long, value_name = "ID")]
    pub from: Option<String>,
    #[command(flatten)]
    pub limits: Limits,
}

#[derive(Debug, Args)]
pub struct GrantArgs {
    /// The VM (`NAME` or `OWNER:NAME`)
    pub vm: String,
    /// The user to let in (omit to list the VM's grants)
    pub user: Option<String>,
    /// Take the user's access back instead
    #[arg(long, requires = "user")]
    pub revoke: bool,
}

#[derive(Debug, Args)]
pub struct SshArgs {
    /// The VM (`NAME` or `OWNER:NAME`)
    pub vm: String,
    /// Log in as this user in the VM
    #[arg(short = 'l', long = "login", default_value = "root")]
    pub user: String,
    /// Ask for a terminal even with a command (default: only for a shell on a terminal)
    #[arg(short = 't', conflicts_with = "no_tty")]
    pub tty: bool,
    /// Never ask for a terminal
    #[arg(short = 'T')]
    pub no_tty: bool,
    /// Run this command instead of a shell (`pitwall ssh web -- ls -l /`); the exit status is
    /// the command's
    #[arg(last = true)]
    pub command: Vec<String>,
}

#[derive(Debug, Args)]
pub struct ExecArgs {
    /// The VM (`NAME` or `OWNER:NAME`)
    pub vm: String,
    /// Set an environment variable for the command (repeatable)
    #[arg(short = 'e', long = "env", value_name = "KEY=VALUE")]
    pub env: Vec<String>,
    /// Working directory (absolute) instead of the VM's
    #[arg(short = 'w', long, value_name = "DIR")]
    pub workdir: Option<String>,
    /// User (NAME, UID or UID:GID) instead of the VM's
    #[arg(short = 'u', long, value_name = "USER")]
    pub user: Option<String>,
    /// Send standard input to the command (read to its end first; at most 1 MiB)
    #[arg(short = 'i', long)]
    pub interactive: bool,
    /// Kill the command after this long, e.g. 30s, 10m
    #[arg(long, value_name = "DUR", default_value = "60s", value_parser = parse_duration)]
    pub timeout: Duration,
    /// The command and its arguments, after `--`
    #[arg(last = true, required = true, value_name = "CMD")]
    pub command: Vec<String>,
}

#[derive(Debug, Args)]
pub struct ProxyArgs {
    /// The VM (`NAME` or `OWNER:NAME`)
    pub vm: String,
    /// `ssh`, or `tcp-PORT` for an exposed port (a bare PORT means `tcp-PORT`)
    #[arg(default_value = "ssh")]
    pub service: String,
}

#[derive(Debug, Args)]
pub struct PortForwardArgs {
    /// The VM (`NAME` or `OWNER:NAME`)
    pub vm: String,
    /// `LOCAL:REMOTE`: listen on 127.0.0.1:LOCAL (0: any free port) and carry each connection
    /// to the VM's exposed port REMOTE; or `[ADDRESS:]LOCAL:REMOTE` to listen elsewhere
    pub ports: String,
}

#[derive(Debug, Args)]
pub struct AuditArgs {
    /// Only entries after this sequence number
    #[arg(long, value_name = "SEQ")]
    pub after: Option<u64>,
    /// At most N entries [default: the server's]
    #[arg(long, value_name = "N")]
    pub limit: Option<u32>,
    /// Only requests made by this user
    #[arg(long, value_name = "NAME")]
    pub actor: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum CertCommand {
    /// Make a new private key (mode 0600) and a certificate signing request (no API call)
    Request(CertRequestArgs),
    /// Sign a request: by the API with your own policy, or locally with a CA certificate you
    /// hold (--with-cert/--with-key)
    ///
    /// The output file is the new certificate followed by its issuers (leaf first), ready to
    /// present with --cert.
    Sign(CertSignArgs),
    /// Revoke a certificate you issued (or any, as an administrator)
    Revoke(CertRevokeArgs),
    /// Show what a certificate file holds: serials, names, policies, validity (no API call)
    Show {
        /// PEM file with one certificate or a chain
        file: PathBuf,
    },
    /// Print the deployment CA certificate (trust it with --ca for the https endpoint)
    Ca {
        /// Write it to this file instead of stdout
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
        /// Overwrite --out if it exists
        #[arg(long, requires = "out")]
        force: bool,
    },
}

#[derive(Debug, Args)]
pub struct CertRequestArgs {
    /// Common name to ask for (the API replaces it with your user name)
    #[arg(long, value_name = "CN")]
    pub name: String,
    /// Where to write the new private key (mode 0600)
    #[arg(long, value_name = "FILE")]
    pub key_out: PathBuf,
    /// Where to write the certificate signing request
    #[arg(long, value_name = "FILE")]
    pub csr_out: PathBuf,
    /// Overwrite the files if they exist
    #[arg(long)]
    pub force: bool,
}

#[derive(Debug, Args)]
pub struct CertSignArgs {
    /// The certificate signing request (PEM), e.g. from `pitwall cert request`
    pub csr: PathBuf,
    /// Where to write the certificate chain (leaf first)
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
    /// Sign locally with this CA certificate (a chain file, leaf first) instead of the API
    #[arg(long, value_name = "CHAIN.pem", requires = "with_key")]
    pub with_cert: Option<PathBuf>,
    /// The private key of --with-cert
    #[arg(long, value_name = "KEY.pem", requires = "with_cert")]
    pub with_key: Option<PathBuf>,
    /// Make a CA certificate, which may sign narrower certificates in turn (not `--ca`: that
    /// is the global flag naming a CA file to trust)
    #[arg(long)]
    pub as_ca: bool,
    /// How long the certificate is valid, e.g. 30d, 12h [default: 30d locally; the server's
    /// through the API]
    #[arg(long, value_name = "DUR")]
    pub validity: Option<String>,
    #[command(flatten)]
    pub limits: Limits,
    /// Overwrite --out if it exists
    #[arg(long)]
    pub force: bool,
}

#[derive(Debug, Args)]
pub struct CertRevokeArgs {
    /// Serial of the certificate (hex, as `pitwall cert show` prints it)
    pub serial: String,
    /// Why, for the record
    #[arg(long, value_name = "TEXT")]
    pub reason: Option<String>,
    /// The chain holding the certificate, leaf first up to your own certificate: proves it
    /// was issued under you (not needed by administrators)
    #[arg(long, value_name = "CHAIN.pem")]
    pub chain: Option<PathBuf>,
}

/// `user:NAME` or `group:NAME`.
pub fn parse_principal(s: &str) -> Result<String, String> {
    let s = s.trim();
    match s.split_once(':') {
        Some(("user" | "group", name)) if !name.is_empty() => Ok(s.to_owned()),
        _ => Err("write user:NAME or group:NAME".into()),
    }
}

/// `user:NAME`, `group:NAME` or `default`.
pub fn parse_holder(s: &str) -> Result<String, String> {
    if s.trim() == "default" {
        return Ok("default".into());
    }
    parse_principal(s).map_err(|_| "write user:NAME, group:NAME or default".into())
}

/// Parse a duration such as `500ms`, `30s`, `2m`, `1h` or `1m 30s`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s.trim())
        .map_err(|e| format!("{e}; write a duration like 500ms, 30s, 2m or 1h"))
}

/// `NAME[:POLICY][=COMMAND]` (see `vm create --service`).
pub fn parse_service(s: &str) -> Result<pitwall_api::ServiceSpec, String> {
    let (head, command) = match s.split_once('=') {
        Some((h, c)) => {
            let argv = shlex::split(c).ok_or_else(|| {
                format!("the command of {s:?} has an unclosed quote or a trailing backslash")
            })?;
            if argv.is_empty() {
                return Err(format!(
                    "{s:?} has an empty command: leave out the '=' to run the image's program"
                ));
            }
            (h, argv)
        }
        None => (s, vec![]),
    };
    let (name, restart) = match head.split_once(':') {
        Some((n, p)) => (n, p.parse()?),
        None => (head, Default::default()),
    };
    if name.is_empty() {
        return Err(format!(
            "{s:?} has no service name: write NAME[:POLICY][=COMMAND], e.g. web:always=/usr/bin/web"
        ));
    }
    Ok(pitwall_api::ServiceSpec {
        name: name.to_string(),
        command,
        restart,
        ..Default::default()
    })
}

/// VM states are upper case on the wire; accept any case.
fn parse_state(s: &str) -> Result<String, String> {
    let s = s.trim();
    if s.is_empty() || !s.chars().all(|c| c.is_ascii_alphabetic()) {
        return Err("give a VM state such as RUNNING, STOPPED, DELETED or FAILED".into());
    }
    Ok(s.to_ascii_uppercase())
}

#[cfg(test)]
mod tests;
