//! The guest's SSH server (ARCHITECTURE §6): russh on its own thread with a current-thread
//! tokio runtime (the rest of powerunit stays synchronous), listening on every guest address.
//!
//! - Host key: Ed25519, made on first boot and kept at [`HOST_KEY_PATH`] (0600) on the VM's
//!   writable root, so it survives restarts; reported to the host as `GuestStatus.ssh_host_key`.
//! - Authentication: public keys only. A key listed in `GuestSsh.authorized_keys`, or a user
//!   certificate signed by one of `GuestSsh.user_ca_keys`, valid now, of type user, listing the
//!   principal `vm:<vm id>` (what the control plane's CA issues). The login name must be a
//!   user of the image's `/etc/passwd`; the session runs with its uid, gid, home and shell.
//!   Every accepted or refused login is printed on the console with the key's fingerprint or
//!   the certificate's key id.
//! - Sessions ([`session`]): PTY shells, exec with separate stdout/stderr and the exit status,
//!   env requests; the SFTP subsystem ([`sftp`]) serves the real filesystem as the login user
//!   (OpenSSH's `sftp`, and `scp` which uses SFTP since OpenSSH 9). Legacy `scp -O` runs the
//!   `scp` program of the image, which must have one.
//!
//! Processes are started with `std::process::Command` and never waited for here: PID 1's
//! [`Reaper`](crate::reaper::Reaper) hands their exit codes over.

pub mod session;
pub mod sftp;

use std::io::{Read as _, Write as _};
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use pitwall_proto::v1::GuestSsh;
use russh::keys::ssh_key::certificate::CertType;
use russh::keys::ssh_key::private::Ed25519Keypair;
use russh::keys::ssh_key::{Fingerprint, HashAlg, LineEnding};
use russh::keys::{Certificate, PrivateKey, PublicKey};
use russh::server::{Auth, Msg, Server as _, Session};
use russh::{Channel, MethodKind, MethodSet};

use crate::err;
use crate::error::{Context, Result};
use crate::say;
use crate::workload::{parse_passwd, PasswdEntry};

/// Where the host key lives in the guest (on the VM's writable overlay).
pub const HOST_KEY_PATH: &str = "/var/lib/pitwall/ssh/ssh_host_ed25519_key";
const DEFAULT_PORT: u16 = 22;

/// Who may log in: parsed from `GuestSsh` (a bad line is a configuration error).
#[derive(Debug, Clone)]
pub struct Policy {
    pub port: u16,
    authorized: Vec<PublicKey>,
    cas: Vec<Fingerprint>,
    principal: String,
}

impl Policy {
    pub fn from_config(cfg: &GuestSsh, vm_id: &str) -> Result<Policy> {
        let port = match cfg.port {
            0 => DEFAULT_PORT,
            p => u16::try_from(p).map_err(|_| err!("ssh: port {p} is not a TCP port"))?,
        };
        let parse = |what: &str, line: &str| -> Result<Option<PublicKey>> {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                return Ok(None);
            }
            PublicKey::from_openssh(line)
                .map(Some)
                .context(|| format!("ssh: {what} {line:?} is not an OpenSSH public key"))
        };
        let mut authorized = Vec::new();
        for l in cfg.authorized_keys.iter().flat_map(|l| l.lines()) {
            authorized.extend(parse("authorized key", l)?);
        }
        let mut cas = Vec::new();
        for l in cfg.user_ca_keys.iter().flat_map(|l| l.lines()) {
            cas.extend(parse("user CA key", l)?.map(|k| k.fingerprint(HashAlg::Sha256)));
        }
        Ok(Policy {
            port,
            authorized,
            cas,
            principal: format!("vm:{vm_id}"),
        })
    }

    /// Why `key` may not log in, if it may not.
    fn check_key(&self, key: &PublicKey) -> std::result::Result<(), String> {
        if self
            .authorized
            .iter()
            .any(|k| k.key_data() == key.key_data())
        {
            Ok(())
        } else {
            Err("key not in authorized_keys".into())
        }
    }

    /// Why `cert` may not log in at `now` (Unix seconds), if it may not.
    fn check_cert(&self, cert: &Certificate, now: u64) -> std::result::Result<(), String> {
        if cert.cert_type() != CertType::User {
            return Err("not a user certificate".into());
        }
        if self.cas.is_empty() {
            return Err("no user CA is trusted".into());
        }
        cert.validate_at(now, &self.cas).map_err(|e| match e {
            russh::keys::ssh_key::Error::CertificateValidation => {
                "expired, not yet valid, or not signed by a trusted CA".to_string()
            }
            e => e.to_string(),
        })?;
        if !cert.valid_principals().contains(&self.principal) {
            return Err(format!(
                "principal {} not in {:?}",
                self.principal,
                cert.valid_principals()
            ));
        }
        Ok(())
    }
}

/// Where the server listens and finds things (the guest's defaults in [`Options::guest`]).
#[derive(Debug, Clone)]
pub struct Options {
    pub addr: SocketAddr,
    pub host_key: PathBuf,
    /// The `/etc/passwd` of the login users.
    pub passwd: PathBuf,
}

impl Options {
    pub fn guest(policy: &Policy) -> Options {
        Options {
            addr: SocketAddr::from((Ipv4Addr::UNSPECIFIED, policy.port)),
            host_key: PathBuf::from(HOST_KEY_PATH),
            passwd: PathBuf::from("/etc/passwd"),
        }
    }
}

/// A running server.
#[derive(Debug, Clone)]
pub struct Started {
    /// The host key as one OpenSSH public key line.
    pub host_key: String,
    pub addr: SocketAddr,
}

/// Load or make the host key, bind, and serve on a thread of its own. Errors here are not
/// fatal to the guest: the caller reports them.
pub fn start(policy: Policy, opts: Options) -> Result<Started> {
    let key = host_key(&opts.host_key)?;
    let host_key = key
        .public_key()
        .to_openssh()
        .context(|| "ssh: encode the host key".to_string())?;
    let listener =
        TcpListener::bind(opts.addr).context(|| format!("ssh: listen on {}", opts.addr))?;
    listener
        .set_nonblocking(true)
        .context(|| "ssh: listener".to_string())?;
    let addr = listener
        .local_addr()
        .context(|| "ssh: listener".to_string())?;
    let config = Arc::new(russh::server::Config {
        keys: vec![key],
        methods: MethodSet::from(&[MethodKind::PublicKey][..]),
        auth_rejection_time: Duration::from_millis(300),
        auth_rejection_time_initial: Some(Duration::ZERO),
        inactivity_timeout: None,
        keepalive_interval: Some(Duration::from_secs(60)),
        nodelay: true,
        ..Default::default()
    });
    let shared = Arc::new(Shared {
        policy,
        passwd: opts.passwd,
    });
    std::thread::Builder::new()
        .name("ssh".into())
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => return say!("ssh: runtime: {e}"),
            };
            rt.block_on(async move {
                let listener = match tokio::net::TcpListener::from_std(listener) {
                    Ok(l) => l,
                    Err(e) => return say!("ssh: listener: {e}"),
                };
                let mut server = Server { shared };
                if let Err(e) = server.run_on_socket(config, &listener).await {
                    say!("ssh: server stopped: {e}");
                }
            });
        })
        .context(|| "ssh: start thread".to_string())?;
    say!("ssh listening on {addr}, host key {host_key}");
    Ok(Started { host_key, addr })
}

/// The host key at `path`, made (and written 0600) if there is none.
fn host_key(path: &Path) -> Result<PrivateKey> {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            return PrivateKey::from_openssh(text.as_bytes()).context(|| {
                format!(
                    "ssh: host key {} is unreadable (remove it to make a new one)",
                    path.display()
                )
            })
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(err!("ssh: read host key {}: {e}", path.display())),
    }
    let mut seed = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut seed))
        .context(|| "ssh: read /dev/urandom".to_string())?;
    let key = PrivateKey::from(Ed25519Keypair::from_seed(&seed));
    let text = key
        .to_openssh(LineEnding::LF)
        .context(|| "ssh: encode the host key".to_string())?;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).context(|| format!("ssh: create {}", dir.display()))?;
    }
    let tmp = path.with_extension("tmp");
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .and_then(|mut f| {
            f.write_all(text.as_bytes())?;
            f.sync_all()
        })
        .and_then(|()| std::fs::rename(&tmp, path))
        .context(|| format!("ssh: write host key {}", path.display()))?;
    say!("ssh: made host key {}", path.display());
    Ok(key)
}

struct Shared {
    policy: Policy,
    passwd: PathBuf,
}

impl Shared {
    fn user(&self, name: &str) -> Option<PasswdEntry> {
        let text = std::fs::read_to_string(&self.passwd).unwrap_or_default();
        parse_passwd(&text).into_iter().find(|e| e.name == name)
    }
}

#[derive(Clone)]
struct Server {
    shared: Arc<Shared>,
}

impl russh::server::Server for Server {
    type Handler = Connection;

    fn new_client(&mut self, peer: Option<SocketAddr>) -> Connection {
        Connection {
            shared: self.shared.clone(),
            peer,
            user: None,
        }
    }
}

struct Connection {
    shared: Arc<Shared>,
    peer: Option<SocketAddr>,
    /// The authenticated login user.
    user: Option<PasswdEntry>,
}

impl Connection {
    fn peer(&self) -> String {
        self.peer.map_or_else(|| "?".into(), |p| p.to_string())
    }

    /// Accept `user` if `verdict` is Ok and the user exists; log either way.
    fn decide(&mut self, user: &str, what: &str, verdict: std::result::Result<(), String>) -> Auth {
        let verdict = verdict.and_then(|()| {
            self.shared
                .user(user)
                .ok_or_else(|| "no such user in /etc/passwd".to_string())
        });
        match verdict {
            Ok(entry) => {
                say!("ssh: accepted {user} from {} with {what}", self.peer());
                self.user = Some(entry);
                Auth::Accept
            }
            Err(why) => {
                say!(
                    "ssh: refused {user} from {} with {what}: {why}",
                    self.peer()
                );
                Auth::reject()
            }
        }
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl russh::server::Handler for Connection {
    type Error = russh::Error;

    async fn auth_publickey(
        &mut self,
        user: &str,
        key: &PublicKey,
    ) -> std::result::Result<Auth, Self::Error> {
        let what = format!("key {}", key.fingerprint(HashAlg::Sha256));
        let verdict = self.shared.policy.check_key(key);
        Ok(self.decide(user, &what, verdict))
    }

    async fn auth_openssh_certificate(
        &mut self,
        user: &str,
        cert: &Certificate,
    ) -> std::result::Result<Auth, Self::Error> {
        let what = format!(
            "certificate {:?} (serial {}, key {})",
            cert.key_id(),
            cert.serial(),
            cert.public_key().fingerprint(HashAlg::Sha256)
        );
        let verdict = self.shared.policy.check_cert(cert, now());
        Ok(self.decide(user, &what, verdict))
    }

    async fn channel_open_session(
        &mut self,
        channel: Channel<Msg>,
        reply: russh::server::ChannelOpenHandle,
        session: &mut Session,
    ) -> std::result::Result<(), Self::Error> {
        let Some(user) = self.user.clone() else {
            reply
                .reject(russh::ChannelOpenFailure::AdministrativelyProhibited)
                .await;
            return Ok(());
        };
        reply.accept().await;
        tokio::spawn(session::run(channel, user, session.handle()));
        Ok(())
    }

    async fn pty_request(
        &mut self,
        channel: russh::ChannelId,
        _term: &str,
        _cols: u32,
        _rows: u32,
        _pw: u32,
        _ph: u32,
        _modes: &[(russh::Pty, u32)],
        session: &mut Session,
    ) -> std::result::Result<(), Self::Error> {
        session.channel_success(channel)
    }

    async fn env_request(
        &mut self,
        channel: russh::ChannelId,
        _name: &str,
        _value: &str,
        session: &mut Session,
    ) -> std::result::Result<(), Self::Error> {
        session.channel_success(channel)
    }

    async fn shell_request(
        &mut self,
        channel: russh::ChannelId,
        session: &mut Session,
    ) -> std::result::Result<(), Self::Error> {
        session.channel_success(channel)
    }

    async fn exec_request(
        &mut self,
        channel: russh::ChannelId,
        _data: &[u8],
        session: &mut Session,
    ) -> std::result::Result<(), Self::Error> {
        session.channel_success(channel)
    }

    async fn subsystem_request(
        &mut self,
        channel: russh::ChannelId,
        name: &str,
        session: &mut Session,
    ) -> std::result::Result<(), Self::Error> {
        if name == "sftp" {
            session.channel_success(channel)
        } else {
            session.channel_failure(channel)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bad_authorized_key_is_a_config_error() {
        let cfg = GuestSsh {
            authorized_keys: vec!["ssh-ed25519 notbase64".into()],
            ..Default::default()
        };
        let e = Policy::from_config(&cfg, "vm1").unwrap_err();
        assert!(e.0.contains("authorized key"), "{e}");
    }

    #[test]
    fn port_zero_means_22() {
        let p = Policy::from_config(&GuestSsh::default(), "vm1").unwrap();
        assert_eq!(p.port, 22);
        assert_eq!(p.principal, "vm:vm1");
    }

    #[test]
    fn the_host_key_is_made_once_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a/b/key");
        let k1 = host_key(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
            0o600
        );
        let k2 = host_key(&path).unwrap();
        assert_eq!(k1.public_key(), k2.public_key());
    }
}
