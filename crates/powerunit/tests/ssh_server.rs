//! powerunit's SSH server on 127.0.0.1, driven by OpenSSH's own `ssh`, `scp` and `sftp`
//! with keys and certificates made by `ssh-keygen`.
//!
//! The server reaps with `waitpid(-1)` (it is PID 1's), which would steal this test's own
//! client processes, so it runs in a separate process: this test binary again, running only
//! [`server_process`] with `POWERUNIT_SSH_TEST_DIR` set.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use pitwall_proto::v1::GuestSsh;
use powerunit::reaper::Reaper;
use powerunit::ssh::{self, Options, Policy};

const DIR_VAR: &str = "POWERUNIT_SSH_TEST_DIR";
const VM: &str = "test";
const UNPRIVILEGED: &str = "pu-test-user";
const UNPRIVILEGED_ID: u32 = 65534;

/// Not a test of its own: the server's process when [`DIR_VAR`] is set (see the module doc).
#[test]
fn server_process() {
    let Ok(dir) = std::env::var(DIR_VAR) else {
        return;
    };
    let dir = PathBuf::from(dir);
    let read = |name: &str| std::fs::read_to_string(dir.join(name)).unwrap_or_default();
    let cfg = GuestSsh {
        port: 0,
        authorized_keys: vec![read("authorized_keys")],
        user_ca_keys: vec![read("ca.pub")],
    };
    let policy = Policy::from_config(&cfg, VM).expect("policy");
    let started = ssh::start(
        policy,
        Options {
            addr: "127.0.0.1:0".parse().expect("addr"),
            host_key: dir.join("ssh_host_ed25519_key"),
            passwd: dir.join("passwd"),
        },
    )
    .expect("start");
    std::fs::write(dir.join("host_key.pub"), &started.host_key).expect("write host key");
    std::fs::write(dir.join("port.tmp"), started.addr.port().to_string()).expect("port");
    std::fs::rename(dir.join("port.tmp"), dir.join("port")).expect("port");
    loop {
        Reaper::global().reap();
        std::thread::sleep(Duration::from_millis(20));
    }
}

struct Server {
    dir: tempfile::TempDir,
    child: Option<Child>,
    port: u16,
}

fn keygen(path: &Path) {
    let ok = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "test", "-f"])
        .arg(path)
        .status()
        .expect("ssh-keygen")
        .success();
    assert!(ok, "ssh-keygen failed");
}

/// Sign `key`.pub with `ca` as a user certificate (`key`-cert.pub).
fn sign(ca: &Path, key: &Path, principal: &str, validity: &str) {
    let out = Command::new("ssh-keygen")
        .args(["-q", "-s"])
        .arg(ca)
        .args(["-I", "test-id", "-n", principal, "-V", validity])
        .arg(key.with_extension("pub"))
        .output()
        .expect("ssh-keygen -s");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn login_user() -> String {
    let uid = nix::unistd::geteuid().as_raw();
    let passwd = std::fs::read_to_string("/etc/passwd").expect("passwd");
    powerunit::workload::parse_passwd(&passwd)
        .into_iter()
        .find(|e| e.uid == uid)
        .expect("this user in /etc/passwd")
        .name
}

impl Server {
    /// Keys: `user` (authorized), `other` (not), `ca` (trusted CA), `rogue` (untrusted CA).
    fn new() -> Server {
        let dir = tempfile::tempdir().expect("tempdir");
        for k in ["user", "other", "ca", "rogue", "certified"] {
            keygen(&dir.path().join(k));
        }
        std::fs::copy(
            dir.path().join("user.pub"),
            dir.path().join("authorized_keys"),
        )
        .expect("authorized_keys");
        // The machine's users and one unprivileged user whose home is the test's directory.
        let mut passwd = std::fs::read_to_string("/etc/passwd").expect("passwd");
        passwd.push_str(&format!(
            "{UNPRIVILEGED}:x:{UNPRIVILEGED_ID}:{UNPRIVILEGED_ID}::{}:/bin/sh\n",
            dir.path().join("home").display()
        ));
        std::fs::write(dir.path().join("passwd"), passwd).expect("passwd");
        let mut s = Server {
            dir,
            child: None,
            port: 0,
        };
        s.start();
        s
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn start(&mut self) {
        let _ = std::fs::remove_file(self.path("port"));
        let child = Command::new(std::env::current_exe().expect("current exe"))
            .args([
                "--exact",
                "server_process",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(DIR_VAR, self.dir.path())
            .stdout(Stdio::null())
            .spawn()
            .expect("server process");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(p) = std::fs::read_to_string(self.path("port")) {
                self.port = p.trim().parse().expect("port");
                return;
            }
            assert!(Instant::now() < deadline, "the server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn host_key(&self) -> String {
        std::fs::read_to_string(self.path("host_key.pub")).expect("host key")
    }

    fn opts(&self, key: &str) -> Vec<String> {
        [
            "-F",
            "/dev/null",
            "-o",
            "BatchMode=yes",
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            "LogLevel=ERROR",
            "-i",
        ]
        .iter()
        .map(|s| s.to_string())
        .chain([self.path(key).display().to_string()])
        .collect()
    }

    /// `ssh` as `user` with `key` (and its certificate, if there is one) running `args`.
    fn ssh_as(&self, user: &str, key: &str, args: &[&str]) -> Output {
        Command::new("ssh")
            .args(self.opts(key))
            .args(["-p", &self.port.to_string(), "-l", user, "127.0.0.1"])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("ssh")
    }

    fn ssh(&self, key: &str, args: &[&str]) -> Output {
        self.ssh_as(&login_user(), key, args)
    }

    fn target(&self, path: &Path) -> String {
        format!("{}@127.0.0.1:{}", login_user(), path.display())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn assert_refused(o: &Output) {
    assert_eq!(o.status.code(), Some(255), "{o:?}");
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("Permission denied"),
        "{o:?}"
    );
}

#[test]
fn an_authorized_key_is_accepted() {
    let s = Server::new();
    let o = s.ssh("user", &["echo", "hi"]);
    assert_eq!(stdout(&o), "hi\n", "{o:?}");
    assert!(o.status.success());
}

#[test]
fn an_unknown_key_is_refused() {
    let s = Server::new();
    assert_refused(&s.ssh("other", &["true"]));
}

#[test]
fn an_unknown_login_user_is_refused() {
    let s = Server::new();
    assert_refused(&s.ssh_as("no-such-user", "user", &["true"]));
}

#[test]
fn a_certificate_for_this_vm_is_accepted() {
    let s = Server::new();
    sign(&s.path("ca"), &s.path("certified"), "vm:test", "-1m:+5m");
    let o = s.ssh("certified", &["echo", "cert"]);
    assert_eq!(stdout(&o), "cert\n", "{o:?}");
}

#[test]
fn a_certificate_for_another_vm_is_refused() {
    let s = Server::new();
    sign(&s.path("ca"), &s.path("certified"), "vm:other", "-1m:+5m");
    assert_refused(&s.ssh("certified", &["true"]));
}

#[test]
fn an_expired_certificate_is_refused() {
    let s = Server::new();
    sign(&s.path("ca"), &s.path("certified"), "vm:test", "-10m:-5m");
    assert_refused(&s.ssh("certified", &["true"]));
}

#[test]
fn a_certificate_of_an_unknown_ca_is_refused() {
    let s = Server::new();
    sign(&s.path("rogue"), &s.path("certified"), "vm:test", "-1m:+5m");
    assert_refused(&s.ssh("certified", &["true"]));
}

#[test]
fn the_exit_status_is_the_commands() {
    let s = Server::new();
    let o = s.ssh("user", &["exit 3"]);
    assert_eq!(o.status.code(), Some(3), "{o:?}");
}

#[test]
fn stdout_and_stderr_stay_apart() {
    let s = Server::new();
    let o = s.ssh("user", &["echo out; echo err >&2"]);
    assert_eq!(stdout(&o), "out\n");
    assert_eq!(String::from_utf8_lossy(&o.stderr), "err\n");
}

#[test]
fn a_pty_session_has_a_pts_device() {
    let s = Server::new();
    let o = s.ssh("user", &["-tt", "tty"]);
    assert!(stdout(&o).starts_with("/dev/pts/"), "{o:?}");
    assert!(o.status.success(), "{o:?}");
}

fn random_file(path: &Path) -> Vec<u8> {
    let mut data = vec![0u8; 5 << 20];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut data))
        .expect("urandom");
    std::fs::write(path, &data).expect("write");
    data
}

#[test]
fn scp_puts_and_gets_a_file_unchanged() {
    scp_round_trip(&[]);
}

/// Legacy `scp -O` runs the server machine's own `scp` program over exec (as it would run
/// the image's in a guest).
#[test]
fn legacy_scp_works_where_there_is_an_scp_program() {
    scp_round_trip(&["-O"]);
}

fn scp_round_trip(flags: &[&str]) {
    let s = Server::new();
    let data = random_file(&s.path("local"));
    let remote = s.path("remote");
    for (from, to) in [
        (s.path("local").display().to_string(), s.target(&remote)),
        (s.target(&remote), s.path("back").display().to_string()),
    ] {
        let o = Command::new("scp")
            .args(flags)
            .args(s.opts("user"))
            .args(["-P", &s.port.to_string(), &from, &to])
            .output()
            .expect("scp");
        assert!(o.status.success(), "{o:?}");
    }
    assert!(std::fs::read(&remote).expect("remote") == data);
    assert!(std::fs::read(s.path("back")).expect("back") == data);
}

#[test]
fn sftp_puts_and_gets_a_file_unchanged() {
    let s = Server::new();
    let data = random_file(&s.path("local"));
    let batch = format!(
        "put {0}/local {0}/remote\nget {0}/remote {0}/back\nls {0}\n",
        s.dir.path().display()
    );
    std::fs::write(s.path("batch"), batch).expect("batch");
    let o = Command::new("sftp")
        .args(s.opts("user"))
        .args(["-P", &s.port.to_string(), "-b"])
        .arg(s.path("batch"))
        .arg(format!("{}@127.0.0.1", login_user()))
        .output()
        .expect("sftp");
    assert!(o.status.success(), "{o:?}");
    assert!(std::fs::read(s.path("remote")).expect("remote") == data);
    assert!(std::fs::read(s.path("back")).expect("back") == data);
    assert!(stdout(&o).contains("remote"), "{o:?}");
}

#[test]
fn the_host_key_survives_a_restart() {
    let mut s = Server::new();
    let before = s.host_key();
    assert!(before.starts_with("ssh-ed25519 "), "{before}");
    s.stop();
    s.start();
    assert_eq!(s.host_key(), before);
    let o = s.ssh("user", &["true"]);
    assert!(o.status.success(), "{o:?}");
}

#[test]
fn a_session_runs_as_the_login_user() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("SKIP: switching users needs root");
        return;
    }
    let s = Server::new();
    let o = s.ssh_as(UNPRIVILEGED, "user", &["id -u; id -g; echo $HOME $USER"]);
    assert_eq!(
        stdout(&o),
        format!("{UNPRIVILEGED_ID}\n{UNPRIVILEGED_ID}\n/ {UNPRIVILEGED}\n"),
        "{o:?}"
    );
}

#[test]
fn sftp_writes_as_the_login_user() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("SKIP: switching users needs root");
        return;
    }
    let s = Server::new();
    std::fs::write(s.path("small"), b"x").expect("small");
    let open = tempfile::tempdir().expect("tempdir");
    std::fs::set_permissions(
        open.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o777),
    )
    .expect("chmod");
    // The test's own directory is root's (0700): the user may not write there.
    let batch = format!(
        "put {0}/small {1}/mine\n-put {0}/small {0}/denied\n",
        s.dir.path().display(),
        open.path().display()
    );
    std::fs::write(s.path("batch"), batch).expect("batch");
    let o = Command::new("sftp")
        .args(s.opts("user"))
        .args(["-P", &s.port.to_string(), "-b"])
        .arg(s.path("batch"))
        .arg(format!("{UNPRIVILEGED}@127.0.0.1"))
        .output()
        .expect("sftp");
    assert!(o.status.success(), "{o:?}");
    let meta = std::fs::metadata(open.path().join("mine")).expect("mine");
    assert_eq!(std::os::unix::fs::MetadataExt::uid(&meta), UNPRIVILEGED_ID);
    assert!(!s.path("denied").exists());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("ermission denied"),
        "{o:?}"
    );
}

#[test]
fn stdin_reaches_the_command_and_all_its_output_comes_back() {
    let s = Server::new();
    let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 253) as u8).collect();
    std::fs::write(s.path("input"), &data).expect("input");
    let o = Command::new("ssh")
        .args(s.opts("user"))
        .args(["-p", &s.port.to_string(), "-l", &login_user(), "127.0.0.1"])
        .arg("cat; echo trailer")
        .stdin(std::fs::File::open(s.path("input")).expect("input"))
        .output()
        .expect("ssh");
    assert!(o.status.success(), "{:?}", o.status);
    let mut want = data;
    want.extend_from_slice(b"trailer\n");
    assert!(o.stdout == want, "{} bytes back", o.stdout.len());
}
