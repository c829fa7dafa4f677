//! `pitwall ssh VM [-l USER] [-t|-T] [-- CMD...]`: a fresh Ed25519 key for this connection
//! only, a short-lived certificate for it from the control plane (valid for this VM), the
//! edge's stream to the VM's SSH server, and the built-in client ([`crate::ssh`]) over it.

use std::io::IsTerminal as _;

use anyhow::Context as _;
use pitwall_api::SshCertificateRequest;
use russh::keys::{Algorithm, Certificate, PrivateKey};

use super::Ctx;
use crate::cli::SshArgs;
use crate::exit::RemoteExit;
use crate::ssh::{self, HostKeyCheck, Request};

/// One shell word, quoted for a POSIX shell when it needs to be.
fn quote(word: &str) -> String {
    if !word.is_empty()
        && word
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c))
    {
        word.to_string()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

/// The remote command line of `CMD...` (SSH carries one string; words are quoted so the
/// remote shell sees them as given).
pub fn command_line(words: &[String]) -> Option<String> {
    (!words.is_empty()).then(|| words.iter().map(|w| quote(w)).collect::<Vec<_>>().join(" "))
}

pub async fn run(ctx: &Ctx, a: SshArgs) -> anyhow::Result<()> {
    let key = PrivateKey::random(&mut rand::rng(), Algorithm::Ed25519)
        .context("cannot make a key for this connection")?;
    let public = key.public_key().to_openssh()?;
    let issued = ctx
        .client
        .ssh_certificate(
            &a.vm,
            &SshCertificateRequest {
                public_key: public,
                ttl_seconds: None,
            },
        )
        .await?;
    let cert = Certificate::from_openssh(&issued.certificate)
        .context("the control plane sent a certificate this client cannot read")?;
    let vm_id = issued
        .principals
        .first()
        .cloned()
        .unwrap_or_else(|| a.vm.clone());
    let command = command_line(&a.command);
    let on_terminal = std::io::stdin().is_terminal() && std::io::stdout().is_terminal();
    let want_pty = !a.no_tty && (a.tty || (command.is_none() && on_terminal));
    let pty = want_pty.then(|| {
        let (cols, rows) = terminal_size::terminal_size()
            .map(|(w, h)| (u32::from(w.0), u32::from(h.0)))
            .unwrap_or((80, 24));
        let term = std::env::var("TERM").unwrap_or_else(|_| "xterm".into());
        (term, cols, rows)
    });
    let stream = ctx.client.connect(&a.vm, "ssh").await?;
    let check = HostKeyCheck::Pinned {
        file: ssh::default_known_hosts(&ctx.env)?,
        name: vm_id,
    };
    let req = Request {
        user: a.user,
        command,
        pty,
    };
    let _raw = if want_pty && on_terminal {
        Some(ssh::RawMode::enter()?)
    } else {
        None
    };
    let io = ssh::Stdio {
        input: tokio::io::stdin(),
        out: tokio::io::stdout(),
        err: tokio::io::stderr(),
    };
    let code = ssh::run(stream, (key, cert), check, &req, io).await?;
    match code {
        0 => Ok(()),
        n => Err(RemoteExit(u8::try_from(n).unwrap_or(255)).into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_reach_the_remote_shell_as_given() {
        let w = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(command_line(&[]), None);
        assert_eq!(command_line(&w(&["echo", "hi"])).unwrap(), "echo hi");
        assert_eq!(
            command_line(&w(&["sh", "-c", "echo a b; exit 3"])).unwrap(),
            "sh -c 'echo a b; exit 3'"
        );
        assert_eq!(command_line(&w(&["it's", ""])).unwrap(), r"'it'\''s' ''");
    }
}
