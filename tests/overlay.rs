//! Reaching a VM by name through the edge, with no port of its host exposed (issue 5):
//! the control plane, the host's network and the user live in three network namespaces.
//!
//! - `ctl`: `pitwalld all` (API and edge). Its host part keeps the bridge, the TAPs, QEMU and
//!   the terminator in `hostns` (`PITWALL_NETNS`), joined to `ctl` by a veth; the terminator
//!   dials out to the edge over it.
//! - `user`: the CLI, joined to `ctl` only. It has no route to `hostns` at all.
//!
//! Everything the user does goes through the `pitwall` CLI in `user`. The namespaces are made
//! and removed by the test; the machine's own interfaces, routes and firewall are never
//! touched. Needs root and `ip netns`; prints SKIP and passes otherwise.

// Test fixtures: a failed set-up step should end the test with its panic.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const CTL_TO_HOST: &str = "10.77.0.1";
const HOST_SIDE: &str = "10.77.0.2";
const CTL_TO_USER: &str = "10.78.0.1";
const USER_SIDE: &str = "10.78.0.2";
const API_PORT: u16 = 7070;
const GREETING: &str = "via-the-edge";

/// A named network namespace, deleted on drop.
struct Netns {
    name: String,
}

impl Netns {
    fn create(tag: &str) -> Netns {
        let name = format!("pwov-{tag}-{}", std::process::id());
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        ok(Command::new("ip").args(["netns", "add", &name]));
        let ns = Netns { name };
        ns.sh("ip link set lo up");
        ns
    }

    fn sh(&self, cmd: &str) -> String {
        ok(Command::new("ip")
            .args(["netns", "exec", &self.name, "sh", "-c"])
            .arg(cmd))
    }

    fn output(&self, cmd: &str) -> Output {
        Command::new("ip")
            .args(["netns", "exec", &self.name, "sh", "-c"])
            .arg(cmd)
            .output()
            .expect("run ip netns exec")
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

fn ok(cmd: &mut Command) -> String {
    let out = cmd.output().expect("run");
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("Uid:"))
        .and_then(|l| l.split_whitespace().nth(2))
        == Some("0")
}

/// `pitwalld all` inside `ctl`; killed on drop, with whatever VMM it left.
struct Pitwalld {
    child: Child,
    data: PathBuf,
}

impl Drop for Pitwalld {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        for pid in pitwall_testkit::pids_mentioning(&self.data) {
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).output();
        }
    }
}

/// A CLI user in namespace `user`, with its own config directory (its login).
struct User<'a> {
    ns: &'a Netns,
    home: PathBuf,
}

impl User<'_> {
    fn pitwall(&self, args: &[&str], stdin: Option<&str>) -> Output {
        let bin = pitwall_testkit::bin_dir().join("pitwall");
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.ns.name])
            .arg(&bin)
            .args(["--api", &format!("http://{CTL_TO_USER}:{API_PORT}")])
            .args(args)
            .env("HOME", &self.home)
            .env("XDG_CONFIG_HOME", self.home.join("config"))
            .env_remove("PITWALL_API")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("run pitwall");
        {
            use std::io::Write as _;
            let mut input = child.stdin.take().expect("stdin");
            if let Some(s) = stdin {
                input.write_all(s.as_bytes()).expect("write stdin");
            }
        }
        child.wait_with_output().expect("pitwall output")
    }

    /// `program args...` in the user's namespace and environment (OpenSSH's tools run
    /// `pitwall` themselves, through the generated configuration).
    fn run(&self, program: &str, args: &[&str]) -> Output {
        Command::new("ip")
            .args(["netns", "exec", &self.ns.name, program])
            .args(args)
            .env("HOME", &self.home)
            .env("XDG_CONFIG_HOME", self.home.join("config"))
            .env("PITWALL_API", format!("http://{CTL_TO_USER}:{API_PORT}"))
            .stdin(Stdio::null())
            .output()
            .expect("run")
    }

    /// Runs and requires success; its stdout.
    fn ok(&self, args: &[&str], stdin: Option<&str>) -> String {
        let out = self.pitwall(args, stdin);
        assert!(
            out.status.success(),
            "pitwall {args:?} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

/// An image whose program answers every TCP connection on 8080 with [`GREETING`], and which
/// exposes that port.
fn greeter_image(dir: &Path) -> PathBuf {
    let root = dir.join("rootfs");
    pitwall_testkit::busybox_rootfs(&root).unwrap();
    let layout = dir.join("layout");
    let config = pitwall_image::ImageConfig {
        cmd: vec![
            "/bin/nc".into(),
            "-ll".into(),
            "-p".into(),
            "8080".into(),
            "-e".into(),
            "/bin/echo".into(),
            GREETING.into(),
        ],
        working_dir: "/".into(),
        exposed_ports: vec!["8080/tcp".into()],
        ..Default::default()
    };
    pitwall_image::build::layout_from_rootfs_dir(&root, &layout, &config, "latest").unwrap();
    layout
}

#[test]
fn a_vm_is_reached_through_the_edge_by_its_owner_and_grantees_only_and_its_host_listens_on_nothing()
{
    if !is_root() {
        eprintln!("SKIP: the overlay e2e test needs root (network namespaces)");
        return;
    }
    if !Command::new("ip")
        .args(["netns", "list"])
        .output()
        .is_ok_and(|o| o.status.success())
    {
        eprintln!("SKIP: the overlay e2e test needs `ip netns` (iproute2)");
        return;
    }
    let ctl = Netns::create("ctl");
    let hostns = Netns::create("host");
    let user_ns = Netns::create("user");
    ctl.sh(&format!(
        "ip link add pwh0 type veth peer name eth0 netns {h} && \
         ip addr add {CTL_TO_HOST}/24 dev pwh0 && ip link set pwh0 up && \
         ip link add pwu0 type veth peer name eth0 netns {u} && \
         ip addr add {CTL_TO_USER}/24 dev pwu0 && ip link set pwu0 up",
        h = hostns.name,
        u = user_ns.name
    ));
    hostns.sh(&format!(
        "ip addr add {HOST_SIDE}/24 dev eth0 && ip link set eth0 up"
    ));
    user_ns.sh(&format!(
        "ip addr add {USER_SIDE}/24 dev eth0 && ip link set eth0 up"
    ));

    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let log = std::fs::File::create(tmp.path().join("pitwalld.log")).unwrap();
    let child = Command::new("ip")
        .args(["netns", "exec", &ctl.name])
        .arg(pitwall_testkit::bin_dir().join("pitwalld"))
        .args(["all", "--data-dir"])
        .arg(&data)
        .args(["--listen", &format!("{CTL_TO_USER}:{API_PORT}")])
        .env("PITWALL_CACHE_DIR", pitwall_testkit::cache_dir())
        .env("PITWALL_NETNS", &hostns.name)
        .env("PITWALL_EDGE_LISTEN", format!("{CTL_TO_HOST}:0"))
        .env("PITWALL_EDGE_NAMES", CTL_TO_HOST)
        .env("PITWALL_LOG", "info,pitwall_overlay=debug,pitwalld=debug")
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("start pitwalld");
    let _daemon = Pitwalld {
        child,
        data: data.clone(),
    };
    let log_text = || std::fs::read_to_string(tmp.path().join("pitwalld.log")).unwrap_or_default();

    let admin = User {
        ns: &user_ns,
        home: tmp.path().join("admin"),
    };
    let bob = User {
        ns: &user_ns,
        home: tmp.path().join("bob"),
    };
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let h = admin.pitwall(&["health"], None);
        if h.status.success() && !String::from_utf8_lossy(&h.stdout).contains("none") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "pitwalld did not become healthy:\n{}",
            log_text()
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    let creds = std::fs::read_to_string(data.join("admin-credentials")).unwrap();
    let password = creds
        .lines()
        .find_map(|l| l.strip_prefix("password="))
        .expect("admin password")
        .to_string();
    admin.ok(
        &["login", "--user", "admin", "--password-stdin"],
        Some(&password),
    );
    admin.ok(
        &["user", "create", "bob", "--password-stdin"],
        Some("bob's long password"),
    );
    bob.ok(
        &["login", "--user", "bob", "--password-stdin"],
        Some("bob's long password"),
    );

    let layout = greeter_image(tmp.path());
    admin.ok(
        &[
            "image",
            "import",
            layout.to_str().unwrap(),
            "--name",
            "e2e/greeter:1",
        ],
        None,
    );
    admin.ok(
        &[
            "vm",
            "create",
            "web",
            "--image",
            "e2e/greeter:1",
            "--memory",
            "256",
            "--disk",
            "64",
            "--wait",
            "--timeout",
            "240s",
        ],
        None,
    );

    // The owner reaches the VM's exposed port through the edge (retrying while the
    // terminator's registration reaches the edge).
    let deadline = Instant::now() + Duration::from_secs(60);
    let reply = loop {
        let out = admin.pitwall(&["proxy", "web", "tcp-8080"], Some(""));
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        if out.status.success() && text.contains(GREETING) {
            break text;
        }
        assert!(
            Instant::now() < deadline,
            "no answer through the edge: {}{}\n{}",
            text,
            String::from_utf8_lossy(&out.stderr),
            log_text()
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    assert_eq!(reply.trim(), GREETING);

    // The host side listens on nothing: no TCP listener in its namespace (the terminator
    // dialed out), and the user's namespace has no route there at all.
    let listening = hostns.sh("ss -Hltn");
    assert!(
        listening.trim().is_empty(),
        "TCP listeners in the host's namespace: {listening}"
    );
    let reach = user_ns.output(&format!("busybox nc -w 2 {HOST_SIDE} 22 </dev/null"));
    assert!(!reach.status.success(), "the user reached the host side");

    // Another user is refused; after a grant, let in.
    let refused = bob.pitwall(&["proxy", "admin:web", "tcp-8080"], Some(""));
    assert!(!refused.status.success(), "bob got in without a grant");
    assert!(
        !String::from_utf8_lossy(&refused.stdout).contains(GREETING),
        "bob got the service's bytes"
    );
    admin.ok(&["grant", "web", "bob"], None);
    let granted = bob.ok(&["proxy", "admin:web", "tcp-8080"], Some(""));
    assert_eq!(granted.trim(), GREETING);

    // SSH to the VM by name, through the same path (the guest's own SSH server).
    let hi = admin.ok(&["ssh", "web", "--", "echo", "hi"], None);
    assert_eq!(hi, "hi\n");

    // OpenSSH's scp through the configuration `pitwall ssh-config` writes (certificate
    // renewed by `Match exec`, ProxyCommand `pitwall proxy`, host key from the API): a file
    // into the VM and back, byte for byte.
    admin.ok(&["ssh-config", "--write"], None);
    let config = admin.home.join("config/pitwall/ssh/config");
    let payload = tmp.path().join("payload.bin");
    let bytes: Vec<u8> = (0..(1u32 << 20))
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(&payload, &bytes).unwrap();
    let back = tmp.path().join("back.bin");
    let cfg = config.to_str().unwrap();
    for (from, to) in [
        (
            payload.to_str().unwrap().to_string(),
            "web.pitwall:/root/payload.bin".to_string(),
        ),
        (
            "web.pitwall:/root/payload.bin".to_string(),
            back.to_str().unwrap().to_string(),
        ),
    ] {
        let out = admin.run("scp", &["-q", "-F", cfg, "-o", "BatchMode=yes", &from, &to]);
        assert!(
            out.status.success(),
            "scp {from} {to}: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            log_text()
        );
    }
    assert!(
        std::fs::read(&back).unwrap() == bytes,
        "the file came back changed"
    );

    // Stopped: the service is gone.
    admin.ok(&["vm", "stop", "web", "--wait"], None);
    let gone = admin.pitwall(&["proxy", "web", "tcp-8080"], Some(""));
    assert!(!gone.status.success(), "a stopped VM still answered");
    admin.ok(&["vm", "delete", "web", "--wait"], None);
}
