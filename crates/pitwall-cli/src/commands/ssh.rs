//! `pitwall ssh VM [-l USER] [-t|-T] [-- CMD...]`: a fresh Ed25519 key for this connection
//! only, a short-lived certificate for it from the control plane (valid for this VM), the
//! edge's stream to the VM's SSH server, and the built-in client ([`crate::ssh`]) over it.

use std::io::IsTerminal as _;

use anyhow::Context as _;
use pitwall_api::SshCertificateRequest;
use russh::keys::{Algorithm, Certificate, PrivateKey, PublicKey};

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
    // The key the guest reported over its private channel, when the control plane has it;
    // else pinned on first use.
    let check = match &issued.host_key {
        Some(line) => HostKeyCheck::Exact(PublicKey::from_openssh(line).with_context(|| {
            format!(
                "the control plane's host key for {} is unreadable: {line:?}",
                a.vm
            )
        })?),
        None => HostKeyCheck::Pinned {
            file: ssh::default_known_hosts(&ctx.env)?,
            name: vm_id,
        },
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

/// `$XDG_CONFIG_HOME/pitwall/ssh` (else `~/.config/pitwall/ssh`): the key OpenSSH uses for
/// VMs and its per-VM certificates.
pub fn ssh_dir(env: &crate::endpoint::EnvVars) -> anyhow::Result<std::path::PathBuf> {
    let known = ssh::default_known_hosts(env)?;
    Ok(known.with_file_name("ssh"))
}

/// The file name part of a VM's certificate: `OWNER-NAME` (or `NAME`), safe for a path.
pub fn cert_stem(vm: &str) -> String {
    vm.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                c
            } else {
                '-'
            }
        })
        .collect()
}

/// Writes `contents` to `path` atomically with `mode`.
fn write_file(path: &std::path::Path, contents: &[u8], mode: u32) -> anyhow::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::PermissionsExt as _;
    let dir = path.parent().context("a file path has a directory")?;
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let mut tmp = tempfile::NamedTempFile::new_in(dir)
        .with_context(|| format!("cannot write in {}", dir.display()))?;
    tmp.as_file()
        .set_permissions(std::fs::Permissions::from_mode(mode))?;
    tmp.write_all(contents)?;
    tmp.as_file().sync_all()?;
    tmp.persist(path)
        .map_err(|e| e.error)
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

/// `pitwall ssh-certificate VM`: makes the OpenSSH key for VMs once (`ssh/id_ed25519`,
/// 0600) and writes a fresh certificate for it, valid for this VM, to
/// `ssh/<OWNER-NAME>-cert.pub`. What `pitwall ssh-config`'s `Match exec` runs before each
/// connection, so OpenSSH always finds a valid certificate.
pub async fn certificate(ctx: &Ctx, vm: &str) -> anyhow::Result<()> {
    let dir = ssh_dir(&ctx.env)?;
    let key_path = dir.join("id_ed25519");
    let key = match std::fs::read_to_string(&key_path) {
        Ok(text) => PrivateKey::from_openssh(text.as_bytes())
            .with_context(|| format!("{} is not an OpenSSH private key", key_path.display()))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key = PrivateKey::random(&mut rand::rng(), Algorithm::Ed25519)?;
            write_file(
                &key_path,
                key.to_openssh(Default::default())?.as_bytes(),
                0o600,
            )?;
            write_file(
                &key_path.with_extension("pub"),
                key.public_key().to_openssh()?.as_bytes(),
                0o644,
            )?;
            key
        }
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", key_path.display())),
    };
    let issued = ctx
        .client
        .ssh_certificate(
            vm,
            &SshCertificateRequest {
                public_key: key.public_key().to_openssh()?,
                ttl_seconds: None,
            },
        )
        .await?;
    let cert_path = dir.join(format!("{}-cert.pub", cert_stem(vm)));
    write_file(
        &cert_path,
        format!("{}\n", issued.certificate).as_bytes(),
        0o644,
    )?;
    // The host key the guest reported: OpenSSH checks the server against it (the config's
    // HostKeyAlias), so nothing is trusted on first use.
    if let Some(key) = &issued.host_key {
        let known = dir.join("known_hosts");
        let alias = host_key_alias(vm);
        let old = match std::fs::read_to_string(&known) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", known.display())),
        };
        let updated = known_hosts_with(&old, &alias, key.trim());
        if updated != old {
            write_file(&known, updated.as_bytes(), 0o644)?;
        }
    }
    Ok(())
}

/// The name OpenSSH files a VM's host key under (`HostKeyAlias`).
pub fn host_key_alias(vm: &str) -> String {
    format!("pitwall-{}", cert_stem(vm))
}

/// `text` (a known_hosts file) with `alias`'s lines replaced by one holding `key`.
pub fn known_hosts_with(text: &str, alias: &str, key: &str) -> String {
    let mut out: String = text
        .lines()
        .filter(|l| l.split_whitespace().next() != Some(alias))
        .map(|l| format!("{l}\n"))
        .collect();
    out.push_str(&format!("{alias} {key}\n"));
    out
}

/// The OpenSSH configuration for `vms` (`OWNER:NAME` each): `Host NAME.pitwall` (and
/// `NAME.OWNER.pitwall` for other owners' VMs) through `pitwall proxy`, with a certificate
/// refreshed by `Match exec` before every connection.
pub fn render_config(
    vms: &[(String, String)],
    me: &str,
    dir: &std::path::Path,
    pitwall: &str,
) -> String {
    let d = dir.display();
    let mut out = String::from(
        "# Written by `pitwall ssh-config`: VMs reached through Pitwall's edge (no host port).\n\
         # Include it from ~/.ssh/config, e.g. `Include ~/.config/pitwall/ssh/config`.\n",
    );
    for (owner, name) in vms {
        let vm = format!("{owner}:{name}");
        let alias = if owner == me {
            format!("{name}.pitwall")
        } else {
            format!("{name}.{owner}.pitwall")
        };
        let stem = cert_stem(&vm);
        let key_alias = host_key_alias(&vm);
        out.push_str(&format!(
            "\n# {vm}: the certificate (5 minutes, this VM only) is renewed before each connection\n\
             Match host {alias} exec \"{pitwall} ssh-certificate {vm}\"\n\
             Host {alias}\n\
             \x20   User root\n\
             \x20   IdentityFile {d}/id_ed25519\n\
             \x20   CertificateFile {d}/{stem}-cert.pub\n\
             \x20   IdentitiesOnly yes\n\
             \x20   ProxyCommand {pitwall} proxy {vm} ssh\n\
             \x20   UserKnownHostsFile {d}/known_hosts\n\
             \x20   HostKeyAlias {key_alias}\n"
        ));
    }
    out
}

/// `pitwall ssh-config`: prints (or with `--write`, writes to `ssh/config`) the OpenSSH
/// configuration for every VM the caller may see.
pub async fn config(ctx: &Ctx, write: bool) -> anyhow::Result<()> {
    let me = ctx.client.whoami().await?.username;
    let vms: Vec<(String, String)> = ctx
        .client
        .list_vms()
        .await?
        .into_iter()
        .filter(|v| v.state != "DELETED")
        .map(|v| (v.owner, v.name))
        .collect();
    let dir = ssh_dir(&ctx.env)?;
    let pitwall = std::env::current_exe()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|_| "pitwall".into());
    let text = render_config(&vms, &me, &dir, &pitwall);
    if write {
        let path = dir.join("config");
        write_file(&path, text.as_bytes(), 0o644)?;
        eprintln!(
            "wrote {} ({} VMs); add `Include {}` to ~/.ssh/config, then `ssh NAME.pitwall`",
            path.display(),
            vms.len(),
            path.display()
        );
    } else {
        print!("{text}");
    }
    Ok(())
}

#[cfg(test)]
mod config_tests {
    use super::*;

    #[test]
    fn a_vms_known_host_line_is_replaced_and_others_kept() {
        let old = "pitwall-alice-db ssh-ed25519 AAAA db\npitwall-alice-web ssh-ed25519 OLD\n";
        let new = known_hosts_with(old, "pitwall-alice-web", "ssh-ed25519 NEW");
        assert_eq!(
            new,
            "pitwall-alice-db ssh-ed25519 AAAA db\npitwall-alice-web ssh-ed25519 NEW\n"
        );
        assert_eq!(
            known_hosts_with(&new, "pitwall-alice-web", "ssh-ed25519 NEW"),
            new
        );
        assert_eq!(
            known_hosts_with("", "pitwall-x", "ssh-ed25519 K"),
            "pitwall-x ssh-ed25519 K\n"
        );
    }

    #[test]
    fn each_vm_gets_an_alias_a_renewed_certificate_and_the_proxy() {
        let vms = vec![
            ("alice".to_string(), "web".to_string()),
            ("bob".to_string(), "db".to_string()),
        ];
        let c = render_config(
            &vms,
            "alice",
            std::path::Path::new("/h/.config/pitwall/ssh"),
            "pitwall",
        );
        assert!(c.contains("Match host web.pitwall exec \"pitwall ssh-certificate alice:web\"\nHost web.pitwall\n"), "{c}");
        assert!(
            c.contains("    ProxyCommand pitwall proxy alice:web ssh\n"),
            "{c}"
        );
        assert!(
            c.contains("    CertificateFile /h/.config/pitwall/ssh/alice-web-cert.pub\n"),
            "{c}"
        );
        assert!(c.contains("Host db.bob.pitwall\n"), "{c}");
        assert!(c.contains("    HostKeyAlias pitwall-alice-web\n"), "{c}");
        assert_eq!(cert_stem("alice:web"), "alice-web");
        assert_eq!(cert_stem("a/b"), "a-b");
    }
}
