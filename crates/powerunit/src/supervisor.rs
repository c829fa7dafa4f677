//! The boot sequence and the life of PID 1 after it: reaping, the services (restarts, the
//! first one's end), the host's shutdown request, and the final power-off. Any error or
//! panic ends in [`Init::fatal`]: print it, report it to the host, power off. PID 1 never
//! exits.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::reboot::{reboot, RebootMode};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use pitwall_proto::v1::{agent_event, AgentEvent, GuestConfig, GuestStatus, WorkloadExited};

use crate::agent::{self, AgentPort, Command};
use crate::error::{Context, Result};
use crate::logs::{self, Logger};
use crate::reaper::Reaper;
use crate::services::{self, Services};
use crate::{console, disks, exec, modules, mounts, net, say, ssh};

/// How long the other services and processes get after the first service ended.
const EXIT_GRACE: Duration = Duration::from_secs(3);
/// At shutdown, the least time processes other than the services get after SIGTERM.
const LEFTOVER_MIN_WAIT: Duration = Duration::from_millis(200);
/// How long to wait for the disks, the NIC and the agent port to appear.
const DEVICE_TIMEOUT: Duration = Duration::from_secs(10);
const PORT_TIMEOUT: Duration = Duration::from_secs(3);
/// How often the supervisor loop reaps and looks for commands.
const TICK: Duration = Duration::from_millis(100);

struct Init {
    status: Arc<Mutex<GuestStatus>>,
    agent: Option<Arc<AgentPort>>,
    commands: Receiver<Command>,
    commands_tx: Sender<Command>,
    /// What the agent answers from (services' states, exec's context).
    api: Arc<agent::Api>,
    services: Option<Services>,
    /// The first service ended for good: the guest powers off.
    first_ended: bool,
}

pub fn run() -> ! {
    console::attach();
    let (commands_tx, commands) = channel();
    let mut init = Init {
        status: Arc::new(Mutex::new(GuestStatus::default())),
        agent: None,
        commands,
        commands_tx,
        api: Arc::default(),
        services: None,
        first_ended: false,
    };
    match catch_unwind(AssertUnwindSafe(|| init.boot())) {
        Ok(Ok(())) => {}
        Ok(Err(e)) => init.fatal(&e.0),
        Err(_) => init.fatal("powerunit panicked during boot"),
    }
    loop {
        // The supervisor only returns by powering off; a panic in it must not end PID 1.
        if catch_unwind(AssertUnwindSafe(|| init.supervise())).is_err() {
            init.fatal("powerunit panicked while supervising");
        }
    }
}

impl Init {
    fn set_status(&self, f: impl FnOnce(&mut GuestStatus)) -> GuestStatus {
        let mut s = self.status.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut s);
        s.clone()
    }

    fn push_status(&self, status: &GuestStatus) {
        if let Some(agent) = &self.agent {
            let _ = agent.send_status(status);
        }
    }

    fn boot(&mut self) -> Result<()> {
        say!("mounting /dev /proc /sys");
        mounts::early()?;
        console::attach();
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
        self.set_status(|s| s.kernel = kernel.trim().to_string());

        let (loaded, failures) = modules::load_all(Path::new("/lib/modules"));
        say!("loaded {loaded} kernel modules");
        for f in &failures {
            say!("module {f}");
        }

        self.open_agent();

        let found = disks::discover(Path::new("/sys/block"), Path::new("/dev"), DEVICE_TIMEOUT)?;
        let cfg = found.config;
        // Checked before anything is mounted: a bad network config fails the boot at once.
        let network = cfg
            .network
            .as_ref()
            .map(net::Plan::from_config)
            .transpose()?;
        let ssh_policy = cfg
            .ssh
            .as_ref()
            .map(|c| ssh::Policy::from_config(c, &cfg.vm_id))
            .transpose()?;
        say!(
            "vm {}: config {}, base {} ({}), data {}",
            cfg.vm_id,
            found.config_dev.display(),
            found.base_dev.display(),
            found.base_fstype.as_str(),
            found.data_dev.display()
        );
        mounts::assemble_root(&found.base_dev, found.base_fstype.as_str(), &found.data_dev)?;
        mounts::switch_root()?;
        mounts::late()?;
        let hostname = hostname(&cfg);
        nix::unistd::sethostname(&hostname).context(|| format!("set hostname {hostname:?}"))?;
        say!("root switched, hostname {hostname}");
        let mut links = net::Netlink::open()?;
        net::bring_up(
            network.as_ref(),
            Path::new("/sys/class/net"),
            &mut links,
            DEVICE_TIMEOUT,
        )?;
        net::write_etc(Path::new("/etc"), &hostname, network.as_ref());
        if let Some(policy) = ssh_policy {
            // Not fatal: the workload runs without SSH; the console says why.
            let opts = ssh::Options::guest(&policy);
            match ssh::start(policy, opts) {
                Ok(started) => {
                    self.set_status(|s| s.ssh_host_key = started.host_key);
                }
                Err(e) => say!("ssh server not started: {e}"),
            }
        }

        self.start_services(&cfg, &hostname)?;
        let status = self.set_status(|s| s.ready = true);
        self.push_status(&status);
        say!("ready");
        Ok(())
    }

    fn open_agent(&mut self) {
        let sys = Path::new("/sys/class/virtio-ports");
        let Some(path) = agent::find_port(sys, Path::new("/dev"), agent::PORT_NAME, PORT_TIMEOUT)
        else {
            say!(
                "no virtio port named {}: running without the host agent",
                agent::PORT_NAME
            );
            return;
        };
        match AgentPort::open(&path) {
            Ok(port) => {
                let port = Arc::new(port);
                let (status, tx) = (self.status.clone(), self.commands_tx.clone());
                let (serving, api) = (port.clone(), self.api.clone());
                let spawned = std::thread::Builder::new()
                    .name("agent".into())
                    .spawn(move || serving.serve(status, tx, api));
                match spawned {
                    Ok(_) => {
                        say!("agent on {}", path.display());
                        self.agent = Some(port);
                    }
                    Err(e) => say!("agent thread: {e}"),
                }
            }
            Err(e) => say!("agent port {}: {e}", path.display()),
        }
    }

    /// Check every service, then start them all (a failure fails the boot), and let the
    /// agent's exec run from now on.
    fn start_services(&mut self, cfg: &GuestConfig, hostname: &str) -> Result<()> {
        let plans = services::plan(cfg, Path::new("/"), hostname)?;
        let logger = Logger::start(PathBuf::from(logs::LOG_DIR), Box::new(std::io::stderr()))
            .map_err(|e| crate::err!("cannot start the output thread: {e}"))?;
        let board = self.api.services.clone();
        let (started, result) = Services::start(plans, logger, board);
        self.services = Some(started);
        result?;
        let _ = self.api.exec.set(exec::Context {
            env: cfg.env.clone(),
            hostname: hostname.to_string(),
        });
        Ok(())
    }

    /// Reap children and serve commands until the workload ends or the host asks for a
    /// shutdown; then shut down (which never returns).
    fn supervise(&mut self) {
        loop {
            match self.commands.recv_timeout(TICK) {
                Ok(Command::Shutdown { grace }) => {
                    say!(
                        "shutdown requested by the host (grace {} ms)",
                        grace.as_millis()
                    );
                    self.shutdown(grace);
                }
                Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => {}
            }
            self.reap();
            if self.first_ended {
                self.shutdown(EXIT_GRACE);
            }
        }
    }

    /// Reap every exited child without blocking (delivering exit codes to their watchers),
    /// restart the services due and notice the first one's end. Returns false once there
    /// are no children.
    fn reap(&mut self) -> bool {
        let left = Reaper::global().reap();
        let ended = self.services.as_mut().and_then(|s| s.tick(Instant::now()));
        if let Some(code) = ended {
            self.workload_ended(code);
        }
        left
    }

    /// The first service ended for good with `code`: the VM's exit code.
    fn workload_ended(&mut self, code: i32) {
        say!("workload exited with code {code}");
        if let Some(agent) = &self.agent {
            let event = AgentEvent {
                reply_to: 0,
                event: Some(agent_event::Event::Exited(WorkloadExited { code })),
            };
            let _ = agent.send(&event, Duration::from_secs(2));
        }
        self.first_ended = true;
    }

    /// Stop the services (SIGTERM to their process groups, up to `grace`, SIGKILL), then
    /// the same for every other process, and power off.
    fn shutdown(&mut self, grace: Duration) -> ! {
        say!("stopping all processes");
        let deadline = Instant::now() + grace;
        let first = self.services.as_mut().and_then(|s| s.stop(grace));
        if let Some(code) = first {
            self.workload_ended(code);
        }
        // The rest of the grace for the other processes (the host waits little beyond it),
        // but a moment at least for those that end at once on SIGTERM.
        let rest = if grace.is_zero() {
            Duration::ZERO
        } else {
            deadline
                .saturating_duration_since(Instant::now())
                .clamp(LEFTOVER_MIN_WAIT, EXIT_GRACE)
        };
        let _ = kill(Pid::from_raw(-1), Signal::SIGTERM);
        if !self.wait_children(rest) {
            say!(
                "processes left after {} ms: killing them",
                grace.as_millis()
            );
            let _ = kill(Pid::from_raw(-1), Signal::SIGKILL);
            self.wait_children(Duration::from_secs(2));
        }
        power_off()
    }

    /// Reap until no child is left (true) or `timeout` passed (false).
    fn wait_children(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if !self.reap() {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Print the error, report it through the agent, and power off.
    fn fatal(&mut self, why: &str) -> ! {
        say!("fatal: {why}");
        let status = self.set_status(|s| {
            s.ready = false;
            s.error = why.to_string();
        });
        self.push_status(&status);
        // Give the host a moment to read the report before the VMM goes away.
        std::thread::sleep(Duration::from_secs(1));
        self.shutdown(Duration::ZERO)
    }
}

fn hostname(cfg: &GuestConfig) -> String {
    [&cfg.hostname, &cfg.vm_id]
        .into_iter()
        .find(|s| !s.is_empty())
        .cloned()
        .unwrap_or_else(|| "pitwall".to_string())
}

/// Flush, make the filesystems read-only where possible, and power the machine off.
fn power_off() -> ! {
    nix::unistd::sync();
    mounts::remount_read_only();
    nix::unistd::sync();
    say!("powering off");
    let e = reboot(RebootMode::RB_POWER_OFF);
    say!("power off failed: {e:?}; halting");
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}
