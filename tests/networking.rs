//! Two real VMs on one host, networked by `pitwalld` itself: each reaches its gateway and a
//! server "outside" through NAT; neither reaches the other by ICMP or TCP at any address of
//! the pool's first few; the host reaches both; deleting them removes their TAPs.
//!
//! The host's network lives in a throwaway namespace (`PITWALL_NETNS`): bridge, TAPs,
//! nftables table and QEMU all run there, and the "outside" is another namespace behind a
//! veth used as the uplink, with no route back to the VM subnet (only NAT brings replies).
//! The machine's own interfaces, routes and firewall are never touched. Needs root and
//! `ip netns`; prints SKIP and passes otherwise.

use std::process::{Child, Command, Stdio};

use pitwall_e2e::*;
use pitwall_testkit::Daemon;

const UPLINK_HOST: &str = "198.51.100.1";
const OUTSIDE: &str = "198.51.100.2";
const OUTSIDE_BODY: &str = "outside-says-hi";

/// A named network namespace, deleted (with what is in it) on drop.
struct Netns {
    name: String,
}

impl Netns {
    fn create(tag: &str) -> anyhow::Result<Netns> {
        let name = format!("pwe-{tag}-{}", std::process::id());
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        sh_ok(Command::new("ip").args(["netns", "add", &name]))?;
        let ns = Netns { name };
        ns.sh("ip link set lo up")?;
        Ok(ns)
    }

    fn sh(&self, cmd: &str) -> anyhow::Result<String> {
        sh_ok(
            Command::new("ip")
                .args(["netns", "exec", &self.name, "sh", "-c"])
                .arg(cmd),
        )
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

fn sh_ok(cmd: &mut Command) -> anyhow::Result<String> {
    let out = cmd.output()?;
    anyhow::ensure!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A process killed on drop.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn can_make_namespaces() -> bool {
    if !nix_is_root() {
        eprintln!("SKIP: the networking e2e test needs root (network namespaces)");
        return false;
    }
    let ok = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        eprintln!("SKIP: the networking e2e test needs `ip netns` (iproute2)");
    }
    ok
}

fn nix_is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("Uid:"))
        .and_then(|l| l.split_whitespace().nth(2))
        == Some("0")
}

/// What every VM runs: serve its name on TCP 7000, then in rounds: ping the gateway, fetch
/// from the outside, and try every other address of the pool's first four by ICMP and TCP,
/// printing what got through. (Debian's static busybox `wget` crashed here, in guests and in
/// namespaces alike; `nc` does the TCP.)
fn probe_script() -> String {
    format!(
        "mkdir -p /www && echo vm-$(hostname) > /www/index.html && httpd -p 7000 -h /www; \
         me=$(ip -4 addr show eth0 | sed -n 's/.*inet \\([0-9.]*\\)\\/.*/\\1/p'); \
         echo ADDR $me; n=0; \
         while true; do n=$((n+1)); \
           ping -c1 -W2 172.30.0.1 >/dev/null 2>&1 && echo R$n GW-OK; \
           body=$(printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 3 {OUTSIDE} 8000 | tail -n 1) && \
             [ -n \"$body\" ] && echo R$n OUT-OK $body; \
           for i in 2 3 4 5; do ip=172.30.0.$i; [ $ip = $me ] && continue; \
             ping -c1 -W1 $ip >/dev/null 2>&1 && echo R$n PEER-ICMP $ip; \
             nc -w 2 $ip 7000 </dev/null >/dev/null 2>&1 && echo R$n PEER-TCP $ip; \
           done; \
           echo ROUND $n DONE; sleep 1; \
         done"
    )
}

async fn import_probe(c: &pitwall_api::Client) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let layout = dir.path().join("layout");
    let script = probe_script();
    pitwall_testkit::busybox_image(&layout, "latest", &["/bin/sh", "-c", &script], &[])?;
    let tar = dir.path().join("image.tar");
    pitwall_testkit::tar_dir(&layout, &tar)?;
    c.import_image_file("e2e/probe:1", &tar).await?;
    Ok(())
}

/// The highest round the console reports as done.
fn last_round(console: &str) -> u32 {
    console
        .lines()
        .filter_map(|l| {
            l.trim()
                .strip_prefix("ROUND ")?
                .strip_suffix(" DONE")?
                .parse()
                .ok()
        })
        .max()
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread")]
async fn two_vms_reach_gateway_and_outside_but_never_each_other() -> anyhow::Result<()> {
    if !can_make_namespaces() {
        return Ok(());
    }
    let host = Netns::create("host")?;
    let outside = Netns::create("out")?;
    host.sh(&format!(
        "ip link add up0 type veth peer name eth0 netns {out} && \
         ip addr add {UPLINK_HOST}/24 dev up0 && ip link set up0 up",
        out = outside.name
    ))?;
    outside.sh(&format!(
        "ip addr add {OUTSIDE}/24 dev eth0 && ip link set eth0 up && \
         mkdir -p /tmp/{ns} && echo {OUTSIDE_BODY} > /tmp/{ns}/index.html",
        ns = outside.name
    ))?;
    let _server = Killed(
        Command::new("ip")
            .args(["netns", "exec", &outside.name, "busybox", "httpd", "-f"])
            .args(["-p", "8000", "-h", &format!("/tmp/{}", outside.name)])
            .stdin(Stdio::null())
            .spawn()?,
    );

    let cfg_dir = tempfile::tempdir()?;
    let cfg = cfg_dir.path().join("pitwalld.toml");
    std::fs::write(&cfg, "[host.network]\nuplink = \"up0\"\n")?;
    let d = Daemon::start_with_env(vec![
        ("PITWALL_CONFIG".into(), cfg.display().to_string()),
        ("PITWALL_NETNS".into(), host.name.clone()),
    ])
    .await?;
    let c = d.client()?;
    import_probe(&c).await?;
    for name in ["net-a", "net-b"] {
        c.create_vm(&create(name, "e2e/probe:1")).await?;
    }
    let a = wait(&d, "net-a", "RUNNING", 240).await?;
    let b = wait(&d, "net-b", "RUNNING", 240).await?;
    let (a_ip, b_ip) = (
        a.address.clone().unwrap_or_default(),
        b.address.clone().unwrap_or_default(),
    );
    let probed: Vec<String> = (2..=5).map(|i| format!("172.30.0.{i}")).collect();
    assert!(
        probed.contains(&a_ip) && probed.contains(&b_ip) && a_ip != b_ip,
        "the VMs hold the pool's first addresses, which they probe: {a_ip} {b_ip}"
    );

    // Rounds that started after both VMs were running.
    let mut from = Vec::new();
    for name in ["net-a", "net-b"] {
        let text = console_contains(&c, name, "ROUND 1 DONE", 120).await?;
        from.push(last_round(&text));
    }
    let mut consoles = Vec::new();
    for (name, start) in ["net-a", "net-b"].into_iter().zip(from) {
        let text = console_contains(&c, name, &format!("ROUND {} DONE", start + 2), 120).await?;
        consoles.push(text);
    }
    for ((name, ip), text) in [("net-a", &a_ip), ("net-b", &b_ip)]
        .into_iter()
        .zip(&consoles)
    {
        assert!(text.contains(&format!("ADDR {ip}")), "{name}:\n{text}");
        assert!(
            text.contains("GW-OK"),
            "{name} did not reach its gateway:\n{text}"
        );
        assert!(
            text.contains(&format!("OUT-OK {OUTSIDE_BODY}")),
            "{name} did not reach the outside through NAT:\n{text}"
        );
        assert!(
            !text.contains("PEER-"),
            "{name} reached another VM:\n{text}"
        );
    }
    // The servers the VMs probed for are up: the host reaches both.
    for (ip, name) in [(&a_ip, "net-a"), (&b_ip, "net-b")] {
        let body = host.sh(&format!(
            "printf 'GET / HTTP/1.0\\r\\n\\r\\n' | busybox nc -w 5 {ip} 7000"
        ))?;
        assert!(body.trim_end().ends_with(&format!("vm-{name}")), "{body}");
    }

    for name in ["net-a", "net-b"] {
        c.delete_vm(name).await?;
    }
    for name in ["net-a", "net-b"] {
        let _ = wait(&d, name, "DELETED", 60).await;
    }
    let links = host.sh("ip -o link show")?;
    assert!(
        !links.lines().any(|l| l.contains(": pw")),
        "TAPs left after delete:\n{links}"
    );
    Ok(())
}
