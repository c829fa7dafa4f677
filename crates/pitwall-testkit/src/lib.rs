//! Pitwall's test fixtures (not published): images built from Debian's `busybox-static`
//! without docker, and [`Daemon`], a real `pitwalld all` in a temporary data directory on a
//! free loopback port, with everything it started cleaned up when dropped.
#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

pub use pitwall_api::Client;

pub mod base_image;
pub mod oidc;
pub mod registry;

/// Where Debian's `busybox-static` puts its binary.
pub const BUSYBOX: &str = "/bin/busybox";

/// A root tree with a static busybox and a symlink for every applet, plus the few
/// directories an init expects.
pub fn busybox_rootfs(dir: &Path) -> anyhow::Result<()> {
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin)?;
    for d in ["etc", "proc", "sys", "dev", "tmp", "run", "root", "var"] {
        std::fs::create_dir_all(dir.join(d))?;
    }
    std::fs::copy(BUSYBOX, bin.join("busybox"))
        .with_context(|| format!("cannot copy {BUSYBOX}: install Debian's busybox-static"))?;
    let out = Command::new(BUSYBOX)
        .arg("--list")
        .output()
        .context("cannot run busybox --list")?;
    for applet in String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|a| !a.is_empty() && *a != "busybox")
    {
        let link = bin.join(applet);
        if !link.exists() {
            std::os::unix::fs::symlink("busybox", &link)?;
        }
    }
    std::fs::write(
        dir.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n",
    )?;
    std::fs::write(dir.join("etc/group"), "root:x:0:\nnogroup:x:65534:\n")?;
    Ok(())
}

/// Write a busybox image named `tag` whose command is `cmd` into the OCI layout `layout`.
pub fn busybox_image(
    layout: &Path,
    tag: &str,
    cmd: &[&str],
    env: &[&str],
) -> anyhow::Result<String> {
    let root = tempfile::tempdir()?;
    busybox_rootfs(root.path())?;
    let config = pitwall_image::ImageConfig {
        cmd: cmd.iter().map(|s| s.to_string()).collect(),
        env: env.iter().map(|s| s.to_string()).collect(),
        working_dir: "/".into(),
        ..Default::default()
    };
    Ok(pitwall_image::build::layout_from_rootfs_dir(
        root.path(),
        layout,
        &config,
        tag,
    )?)
}

/// Tar an OCI layout directory (how the CLI uploads one).
pub fn tar_dir(dir: &Path, out: &Path) -> anyhow::Result<()> {
    let status = Command::new("tar")
        .arg("-C")
        .arg(dir)
        .arg("-cf")
        .arg(out)
        .arg(".")
        .status()?;
    if !status.success() {
        bail!("tar of {} failed", dir.display());
    }
    Ok(())
}

/// A free TCP port on loopback.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(17070)
}

/// The directory of the workspace's built binaries (`target/debug`), from the running test
/// executable (`target/debug/deps/…`), unless `PITWALL_BIN_DIR` says otherwise.
pub fn bin_dir() -> PathBuf {
    if let Ok(d) = std::env::var("PITWALL_BIN_DIR") {
        return d.into();
    }
    let exe = std::env::current_exe().unwrap_or_default();
    let deps = exe.parent().unwrap_or(Path::new("."));
    if deps.ends_with("deps") {
        deps.parent().unwrap_or(deps).to_path_buf()
    } else {
        deps.to_path_buf()
    }
}

/// The guest-kernel cache shared by every test (provisioned once by scripts/setup.sh).
pub fn cache_dir() -> PathBuf {
    std::env::var("PITWALL_CACHE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| "/var/cache/pitwall".into())
}

/// A `pitwalld all` under test.
pub struct Daemon {
    child: Option<Child>,
    pub data_dir: PathBuf,
    _tmp: Option<tempfile::TempDir>,
    pub api: String,
    pub port: u16,
    pub log: PathBuf,
    /// Extra environment of the daemon (`PITWALL_*` settings).
    pub env: Vec<(String, String)>,
    /// A token of the bootstrapped `admin` (read from `DATA/admin-credentials`).
    admin_token: Option<String>,
}

impl Daemon {
    /// Start a daemon in a fresh temporary data directory and wait until it serves and a
    /// host has joined.
    pub async fn start() -> anyhow::Result<Daemon> {
        Self::start_with_env(Vec::new()).await
    }

    /// [`Daemon::start`] with extra `PITWALL_*` environment.
    pub async fn start_with_env(env: Vec<(String, String)>) -> anyhow::Result<Daemon> {
        let tmp = tempfile::Builder::new().prefix("pitwall-test-").tempdir()?;
        let data = tmp.path().to_path_buf();
        let mut d = Daemon {
            child: None,
            data_dir: data,
            _tmp: Some(tmp),
            api: String::new(),
            port: free_port(),
            log: PathBuf::new(),
            env,
            admin_token: None,
        };
        d.spawn().await?;
        Ok(d)
    }

    /// The admin's one-time password, as `pitwalld` wrote it on first start.
    pub fn admin_password(&self) -> anyhow::Result<String> {
        let path = self.data_dir.join("admin-credentials");
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        text.lines()
            .find_map(|l| l.strip_prefix("password="))
            .map(str::to_string)
            .with_context(|| format!("no password= line in {}", path.display()))
    }

    /// A client logged in as `username`.
    pub async fn login(&self, username: &str, password: &str) -> anyhow::Result<Client> {
        let token = Client::new(&self.api)?
            .login(&pitwall_api::LoginRequest {
                username: username.into(),
                password: password.into(),
            })
            .await
            .with_context(|| format!("cannot log in as {username}"))?;
        Ok(Client::new(&self.api)?.with_token(Some(token.access_token)))
    }

    /// Create a local user (as the admin) in `groups` and return a client logged in as them.
    pub async fn user(&self, username: &str, groups: &[&str]) -> anyhow::Result<Client> {
        let password = format!("{username}-password-for-tests");
        self.client()?
            .create_user(&pitwall_api::CreateUserRequest {
                username: username.into(),
                password: password.clone(),
                roles: vec![],
                groups: groups.iter().map(|g| g.to_string()).collect(),
            })
            .await
            .with_context(|| format!("cannot create user {username}"))?;
        self.login(username, &password).await
    }

    /// Start (again) on the same data directory and port.
    pub async fn spawn(&mut self) -> anyhow::Result<()> {
        let bin = bin_dir().join("pitwalld");
        if !bin.is_file() {
            bail!(
                "{} not built: run `cargo build --workspace --bins` (scripts/test.sh does)",
                bin.display()
            );
        }
        self.log = self.data_dir.join("pitwalld.log");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        self.api = format!("http://127.0.0.1:{}", self.port);
        let child = Command::new(&bin)
            .args(["all", "--data-dir"])
            .arg(&self.data_dir)
            .args(["--listen", &format!("127.0.0.1:{}", self.port)])
            .env("PITWALL_CACHE_DIR", cache_dir())
            // Tests never touch the machine's own network: host networking stays off unless
            // the test puts it in a namespace of its own (PITWALL_NETNS) or asks for it.
            .env("PITWALL_NETWORK", "off")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .env(
                "PITWALL_LOG",
                "info,pitwall_host=debug,pitwall_control=debug",
            )
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("cannot start {}", bin.display()))?;
        self.child = Some(child);
        let client = self.client()?;
        let deadline = Instant::now() + Duration::from_secs(180);
        loop {
            if let Some(c) = self.child.as_mut() {
                if let Some(status) = c.try_wait()? {
                    bail!(
                        "pitwalld exited with {status} while starting; log:\n{}",
                        self.log_text()
                    );
                }
            }
            if let Ok(h) = client.health().await {
                if !h.hosts.is_empty() {
                    // With an external issuer there is no built-in admin: `client()` stays
                    // tokenless.
                    if !self.env.iter().any(|(k, _)| k == "PITWALL_ISSUER") {
                        let admin = self.login("admin", &self.admin_password()?).await?;
                        self.admin_token = admin.token().map(str::to_string);
                    }
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                bail!(
                    "pitwalld did not become healthy within 180s; log:\n{}",
                    self.log_text()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// A client of the API, logged in as the admin (without a token when the daemon uses an
    /// external issuer, `PITWALL_ISSUER`).
    pub fn client(&self) -> anyhow::Result<Client> {
        Ok(Client::new(&self.api)?.with_token(self.admin_token.clone()))
    }

    /// A client of the API with no credentials.
    pub fn anonymous(&self) -> anyhow::Result<Client> {
        Ok(Client::new(&self.api)?)
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGKILL the daemon (its VMM processes are not its children and survive).
    pub fn kill9(&mut self) -> anyhow::Result<()> {
        if let Some(mut c) = self.child.take() {
            c.kill()?;
            c.wait()?;
        }
        Ok(())
    }

    /// PIDs of processes whose command line mentions this daemon's VM directories (its
    /// VMMs; the daemon itself names only the data directory).
    pub fn vmm_pids(&self) -> Vec<i32> {
        pids_mentioning(&self.data_dir.join("host").join("vms"))
    }
}

/// PIDs of processes whose command line contains `needle`'s path.
pub fn pids_mentioning(needle: &Path) -> Vec<i32> {
    let needle = needle.to_string_lossy().into_owned();
    let me = std::process::id() as i32;
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in rd.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        if pid == me {
            continue;
        }
        if let Ok(cmd) = std::fs::read(e.path().join("cmdline")) {
            if String::from_utf8_lossy(&cmd).contains(&needle) {
                out.push(pid);
            }
        }
    }
    out
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.kill9();
        // Whatever VMMs are left (a failed test) go too.
        for pid in self.vmm_pids() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        if std::env::var_os("PITWALL_KEEP_TEST_DIRS").is_some() {
            if let Some(t) = self._tmp.take() {
                eprintln!("keeping {}", t.keep().display());
            }
        }
    }
}
