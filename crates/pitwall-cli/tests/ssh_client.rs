//! The built-in SSH client (`pitwall_cli::ssh`) against the reference server: OpenSSH's
//! `sshd` (Debian's openssh-server), started by the test on a loopback port with a config of
//! its own, trusting a CA made here for user certificates whose principal is `vm:test-vm` —
//! what Pitwall's SSH CA issues and guests accept. Skipped (with a message) when not root or
//! when `/usr/sbin/sshd` is missing (`scripts/setup.sh` installs it).
#![allow(clippy::unwrap_used)]

use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use pitwall_cli::ssh::{self, run, HostKeyCheck, Request};
use russh::keys::ssh_key::certificate::{Builder, CertType};
use russh::keys::{Algorithm, Certificate, PrivateKey};

const SSHD: &str = "/usr/sbin/sshd";
const PRINCIPAL: &str = "vm:test-vm";

struct Sshd {
    child: Child,
    port: u16,
    host_key: PrivateKey,
    ca: PrivateKey,
    dir: tempfile::TempDir,
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn key() -> PrivateKey {
    PrivateKey::random(&mut rand::rng(), Algorithm::Ed25519).unwrap()
}

fn write_private(path: &Path, key: &PrivateKey) {
    std::fs::write(path, key.to_openssh(Default::default()).unwrap().as_bytes()).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

fn start_sshd() -> Option<Sshd> {
    if !nix::unistd::geteuid().is_root() || !Path::new(SSHD).exists() {
        eprintln!("SKIPPED: needs root and {SSHD} (apt-get install openssh-server)");
        return None;
    }
    // sshd's privilege separation directory.
    std::fs::create_dir_all("/run/sshd").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (host_key, ca) = (key(), key());
    write_private(&dir.path().join("host_key"), &host_key);
    std::fs::write(
        dir.path().join("ca.pub"),
        ca.public_key().to_openssh().unwrap(),
    )
    .unwrap();
    std::fs::write(dir.path().join("principals"), format!("{PRINCIPAL}\n")).unwrap();
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let d = dir.path().display();
    let config = format!(
        "Port {port}\nListenAddress 127.0.0.1\nHostKey {d}/host_key\nPidFile none\nUsePAM no\n\
         StrictModes no\nPermitRootLogin yes\nPubkeyAuthentication yes\nPasswordAuthentication no\n\
         KbdInteractiveAuthentication no\nAuthorizedKeysFile none\nTrustedUserCAKeys {d}/ca.pub\n\
         AuthorizedPrincipalsFile {d}/principals\n"
    );
    std::fs::write(dir.path().join("sshd_config"), config).unwrap();
    let child = Command::new(SSHD)
        .args(["-D", "-e", "-f"])
        .arg(dir.path().join("sshd_config"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "sshd did not listen on {port}");
        std::thread::sleep(Duration::from_millis(50));
    }
    Some(Sshd {
        child,
        port,
        host_key,
        ca,
        dir,
    })
}

fn certificate(ca: &PrivateKey, subject: &PrivateKey, principal: &str) -> Certificate {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let mut b = Builder::new_with_random_nonce(
        &mut rand::rng(),
        subject.public_key().clone(),
        now - 60,
        now + 300,
    )
    .unwrap();
    b.cert_type(CertType::User).unwrap();
    b.key_id("alice@pitwall").unwrap();
    b.valid_principal(principal).unwrap();
    b.extension("permit-pty", "").unwrap();
    b.sign(ca).unwrap()
}

async fn exec(
    s: &Sshd,
    principal: &str,
    check: HostKeyCheck,
    command: &str,
) -> anyhow::Result<(u32, Vec<u8>, Vec<u8>)> {
    let user = key();
    let cert = certificate(&s.ca, &user, principal);
    let stream = tokio::net::TcpStream::connect(("127.0.0.1", s.port))
        .await
        .unwrap();
    let req = Request {
        user: "root".into(),
        command: Some(command.into()),
        pty: None,
    };
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let io = ssh::Stdio {
        input: &b"from stdin\n"[..],
        out: &mut out,
        err: &mut err,
    };
    let code = run(stream, (user, cert), check, &req, io).await?;
    Ok((code, out, err))
}

#[tokio::test]
async fn a_certificate_for_the_vm_runs_a_command_with_its_output_input_and_exit_status() {
    let Some(s) = start_sshd() else { return };
    let pins = s.dir.path().join("known_hosts");
    let pinned = || HostKeyCheck::Pinned {
        file: pins.clone(),
        name: PRINCIPAL.into(),
    };
    let (code, out, err) = exec(
        &s,
        PRINCIPAL,
        pinned(),
        "read line; echo \"got $line\"; echo to-stderr >&2; exit 3",
    )
    .await
    .unwrap();
    assert_eq!(String::from_utf8_lossy(&out), "got from stdin\n");
    assert_eq!(String::from_utf8_lossy(&err), "to-stderr\n");
    assert_eq!(code, 3);
    // The host key was pinned on first use, and matches the next time.
    let pinned_text = std::fs::read_to_string(&pins).unwrap();
    assert!(
        pinned_text.starts_with(&format!("{PRINCIPAL} ssh-ed25519 ")),
        "{pinned_text}"
    );
    let (code, out, _) = exec(&s, PRINCIPAL, pinned(), "echo hi").await.unwrap();
    assert_eq!((code, String::from_utf8_lossy(&out).as_ref()), (0, "hi\n"));
    let expected = HostKeyCheck::Exact(s.host_key.public_key().clone());
    assert_eq!(exec(&s, PRINCIPAL, expected, "true").await.unwrap().0, 0);
}

#[tokio::test]
async fn a_certificate_for_another_vm_or_a_changed_host_key_is_refused() {
    let Some(s) = start_sshd() else { return };
    let any = || HostKeyCheck::Exact(s.host_key.public_key().clone());
    let e = exec(&s, "vm:another-vm", any(), "true").await.unwrap_err();
    assert!(e.to_string().contains("refused the certificate"), "{e:#}");

    let pins = s.dir.path().join("known_hosts");
    let other = key();
    std::fs::write(
        &pins,
        format!("{PRINCIPAL} {}\n", other.public_key().to_openssh().unwrap()),
    )
    .unwrap();
    let e = exec(
        &s,
        PRINCIPAL,
        HostKeyCheck::Pinned {
            file: pins,
            name: PRINCIPAL.into(),
        },
        "true",
    )
    .await
    .unwrap_err();
    assert!(e.to_string().contains("host key"), "{e:#}");
    assert!(e.to_string().contains("changed"), "{e:#}");
}

#[test]
fn openssh_reads_the_generated_configuration_as_meant() {
    if Command::new("ssh").arg("-V").output().is_err() {
        eprintln!("SKIPPED: no OpenSSH client (apt-get install openssh-client)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let vms = [("alice".to_string(), "web".to_string())];
    // `true` stands in for pitwall: its `ssh-certificate` "succeeds", so the Match applies.
    let text = pitwall_cli::commands::ssh::render_config(&vms, "alice", dir.path(), "true");
    let cfg = dir.path().join("config");
    std::fs::write(&cfg, text).unwrap();
    let out = Command::new("ssh")
        .arg("-G")
        .arg("-F")
        .arg(&cfg)
        .arg("web.pitwall")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let resolved = String::from_utf8_lossy(&out.stdout);
    let d = dir.path().display();
    for line in [
        "user root".to_string(),
        "proxycommand true proxy alice:web ssh".to_string(),
        format!("certificatefile {d}/alice-web-cert.pub"),
        format!("identityfile {d}/id_ed25519"),
        "hostkeyalias pitwall-alice-web".to_string(),
    ] {
        assert!(
            resolved.lines().any(|l| l == line),
            "{line:?} not in:\n{resolved}"
        );
    }
}
