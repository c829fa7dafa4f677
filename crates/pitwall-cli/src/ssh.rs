//! The built-in SSH client of `pitwall ssh` (russh): one session over any byte stream — in
//! use, the edge's upgraded connection to the VM's `ssh` service — authenticated with a
//! short-lived OpenSSH user certificate of the deployment's SSH CA for that VM and a key made
//! for this one connection (never written anywhere).
//!
//! The VM's host key is pinned on first use in `$XDG_CONFIG_HOME/pitwall/known_hosts` (else
//! `~/.config/pitwall/known_hosts`), keyed by VM id (a new VM of the same name is a new id,
//! not a changed key); a changed key stops the connection. So the relays (edge, terminator)
//! carry only SSH ciphertext they cannot open.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context as _};
use russh::keys::{Certificate, PrivateKey, PublicKey, PublicKeyOrCertificate};
use russh::{client, ChannelMsg, Disconnect};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};

/// What to run, and how.
#[derive(Debug, Clone)]
pub struct Request {
    /// Remote login name.
    pub user: String,
    /// A command line to run; `None`: a login shell.
    pub command: Option<String>,
    /// `(TERM, columns, rows)` when a pseudo-terminal is wanted.
    pub pty: Option<(String, u32, u32)>,
}

/// How the server's host key is checked.
#[derive(Debug, Clone)]
pub enum HostKeyCheck {
    /// Pinned under this name in this known-hosts file (made on first use).
    Pinned { file: PathBuf, name: String },
    /// Exactly this key.
    Exact(PublicKey),
}

struct Handler {
    check: HostKeyCheck,
    /// Why the host key was refused, for the error.
    refused: Arc<std::sync::Mutex<Option<String>>>,
}

impl client::Handler for Handler {
    type Error = anyhow::Error;

    async fn check_server_key(
        &mut self,
        key: &PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        let key = match key {
            PublicKeyOrCertificate::PublicKey { key, .. } => key.clone(),
            PublicKeyOrCertificate::Certificate(c) => PublicKey::from(c.public_key().clone()),
        };
        let verdict = match &self.check {
            HostKeyCheck::Exact(want) => (want.key_data() == key.key_data())
                .then_some(())
                .ok_or_else(|| "the server's host key is not the expected one".to_string()),
            HostKeyCheck::Pinned { file, name } => pin(file, name, &key),
        };
        match verdict {
            Ok(()) => Ok(true),
            Err(why) => {
                *self.refused.lock().unwrap_or_else(|p| p.into_inner()) = Some(why);
                Ok(false)
            }
        }
    }
}

/// Checks `key` against the pin of `name` in `file`, pinning it if there is none.
fn pin(file: &Path, name: &str, key: &PublicKey) -> Result<(), String> {
    let line_key = key
        .to_openssh()
        .map_err(|e| format!("cannot encode the host key: {e}"))?;
    let text = match std::fs::read_to_string(file) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(format!("cannot read {}: {e}", file.display())),
    };
    for line in text.lines() {
        if let Some((n, k)) = line.split_once(' ') {
            if n == name {
                let pinned = PublicKey::from_openssh(k)
                    .map_err(|e| format!("{} has a bad entry for {name}: {e}", file.display()))?;
                return if pinned.key_data() == key.key_data() {
                    Ok(())
                } else {
                    Err(format!(
                        "the host key of {name} changed since it was first seen ({}): someone may be intercepting the connection; if the VM's key really changed, remove its line from {}",
                        key.fingerprint(Default::default()),
                        file.display()
                    ))
                };
            }
        }
    }
    if let Some(dir) = file.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    }
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(file)
        .map_err(|e| format!("cannot write {}: {e}", file.display()))?;
    use std::io::Write as _;
    writeln!(f, "{name} {line_key}")
        .map_err(|e| format!("cannot write {}: {e}", file.display()))?;
    Ok(())
}

/// `$XDG_CONFIG_HOME/pitwall/known_hosts`, else `$HOME/.config/pitwall/known_hosts`.
pub fn default_known_hosts(env: &crate::endpoint::EnvVars) -> anyhow::Result<PathBuf> {
    let base = match (&env.xdg_config_home, &env.home) {
        (Some(x), _) => x.clone(),
        (None, Some(h)) => h.join(".config"),
        _ => bail!("neither XDG_CONFIG_HOME nor HOME is set: cannot keep known host keys"),
    };
    Ok(base.join("pitwall").join("known_hosts"))
}

/// The local ends of a session: what is sent as its input, where its output and error
/// output go.
pub struct Stdio<I, O, E> {
    pub input: I,
    pub out: O,
    pub err: E,
}

/// Runs `req` over `stream`, authenticated by `key` + `cert`; copies `io.input` to the
/// remote side and its output to `io.out` / `io.err`. Returns the remote exit status (255
/// when the server gave none, as OpenSSH's client does).
pub async fn run<S, I, O, E>(
    stream: S,
    (key, cert): (PrivateKey, Certificate),
    check: HostKeyCheck,
    req: &Request,
    io: Stdio<I, O, E>,
) -> anyhow::Result<u32>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    I: AsyncRead + Unpin,
    O: AsyncWrite + Unpin,
    E: AsyncWrite + Unpin,
{
    let Stdio {
        mut input,
        mut out,
        mut err,
    } = io;
    let refused = Arc::new(std::sync::Mutex::new(None));
    let handler = Handler {
        check,
        refused: refused.clone(),
    };
    let config = Arc::new(client::Config::default());
    let mut session = match client::connect_stream(config, stream, handler).await {
        Ok(s) => s,
        Err(e) => {
            if let Some(why) = refused.lock().unwrap_or_else(|p| p.into_inner()).take() {
                bail!("{why}");
            }
            return Err(e.context("SSH handshake failed"));
        }
    };
    let auth = session
        .authenticate_openssh_cert(req.user.clone(), Arc::new(key), cert)
        .await
        .context("SSH authentication failed")?;
    if !auth.success() {
        bail!(
            "the VM refused the certificate for user {:?} (is its SSH server trusting this deployment's CA?)",
            req.user
        );
    }
    let mut channel = session.channel_open_session().await?;
    if let Some((term, cols, rows)) = &req.pty {
        channel
            .request_pty(false, term, *cols, *rows, 0, 0, &[])
            .await?;
    }
    match &req.command {
        Some(cmd) => channel.exec(true, cmd.as_bytes()).await?,
        None => channel.request_shell(true).await?,
    }
    let mut buf = vec![0u8; 16 * 1024];
    let mut input_open = true;
    let mut code = None;
    loop {
        tokio::select! {
            r = input.read(&mut buf), if input_open => match r? {
                0 => {
                    input_open = false;
                    channel.eof().await?;
                }
                n => channel.data(&buf[..n]).await?,
            },
            msg = channel.wait() => match msg {
                Some(ChannelMsg::Data { data }) => {
                    out.write_all(&data).await?;
                    out.flush().await?;
                }
                Some(ChannelMsg::ExtendedData { data, .. }) => {
                    err.write_all(&data).await?;
                    err.flush().await?;
                }
                Some(ChannelMsg::ExitStatus { exit_status }) => code = Some(exit_status),
                Some(ChannelMsg::ExitSignal { signal_name, .. }) => {
                    err.write_all(format!("remote command killed by signal {signal_name:?}\n").as_bytes()).await?;
                    code.get_or_insert(255);
                }
                Some(ChannelMsg::Close) | None => break,
                Some(_) => {}
            },
        }
    }
    let _ = session
        .disconnect(Disconnect::ByApplication, "", "en")
        .await;
    Ok(code.unwrap_or(255))
}

/// The terminal on stdin in raw mode (no echo, no line editing, no signals from keys: they go
/// to the remote side) until dropped.
pub struct RawMode {
    saved: nix::sys::termios::Termios,
}

impl RawMode {
    pub fn enter() -> anyhow::Result<RawMode> {
        use nix::sys::termios::{cfmakeraw, tcgetattr, tcsetattr, SetArg};
        let stdin = std::io::stdin();
        let saved = tcgetattr(&stdin).context("cannot read the terminal's settings")?;
        let mut raw = saved.clone();
        cfmakeraw(&mut raw);
        tcsetattr(&stdin, SetArg::TCSADRAIN, &raw)
            .context("cannot put the terminal in raw mode")?;
        Ok(RawMode { saved })
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        use nix::sys::termios::{tcsetattr, SetArg};
        let _ = tcsetattr(std::io::stdin(), SetArg::TCSADRAIN, &self.saved);
    }
}
