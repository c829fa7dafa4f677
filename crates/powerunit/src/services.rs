//! The VM's declared services (`GuestConfig.services`, or one service "main" from the
//! config's argv): checked and resolved before any starts, started in their own process
//! groups with their output through [`crate::logs`], restarted by their policy with an
//! exponential backoff, and stopped by process group at shutdown.
//!
//! The restart decisions are the pure [`Lifecycle`] (time comes in as arguments); the
//! supervisor drives [`Services`] from its loop and powers the guest off when
//! [`Services::tick`] reports that the first service ended for good.

use std::path::Path;
use std::sync::mpsc::Receiver;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use pitwall_proto::v1::{GuestConfig, RestartPolicy, Service, ServiceState};

use crate::error::Result;
use crate::logs::Logger;
use crate::reaper::Reaper;
use crate::workload::{self, Spec};
use crate::{err, say};

/// First restart delay; doubled after each restart up to [`MAX_BACKOFF`].
pub const MIN_BACKOFF: Duration = Duration::from_millis(100);
pub const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// A run at least this long resets the delay to [`MIN_BACKOFF`].
pub const RESET_AFTER: Duration = Duration::from_secs(10);
/// How long the output thread gets to write out what an ended process left in its pipe.
const DRAIN_WAIT: Duration = Duration::from_secs(1);

/// One service, checked and resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Planned {
    pub name: String,
    pub policy: RestartPolicy,
    pub spec: Spec,
}

fn valid_name(name: &str) -> bool {
    let b = name.as_bytes();
    let ok = |c: &u8, first: bool| {
        c.is_ascii_lowercase() || c.is_ascii_digit() || (!first && (*c == b'_' || *c == b'-'))
    };
    !b.is_empty() && b.len() <= 32 && ok(&b[0], true) && b[1..].iter().all(|c| ok(c, false))
}

/// Check and resolve the services of `cfg` against the root at `root`: the first error
/// (bad or duplicate name, empty argv, program not found, unknown user) is returned before
/// anything starts.
pub fn plan(cfg: &GuestConfig, root: &Path, hostname: &str) -> Result<Vec<Planned>> {
    if cfg.services.is_empty() {
        let spec = workload::resolve(cfg, root, hostname)?;
        return Ok(vec![Planned {
            name: "main".into(),
            policy: RestartPolicy::Never,
            spec,
        }]);
    }
    let mut planned: Vec<Planned> = Vec::new();
    for s in &cfg.services {
        let name = &s.name;
        if !valid_name(name) {
            return Err(err!(
                "invalid service name {name:?}: use 1 to 32 of a-z, 0-9, '_' and '-', \
                 starting with a letter or digit"
            ));
        }
        if planned.iter().any(|p| &p.name == name) {
            return Err(err!("service name {name:?} is declared twice"));
        }
        if s.argv.is_empty() {
            return Err(err!("service {name}: argv is empty: nothing to run"));
        }
        let policy = RestartPolicy::try_from(s.restart)
            .map_err(|_| err!("service {name}: unknown restart policy {}", s.restart))?;
        let spec = workload::resolve(&service_config(cfg, s), root, hostname)
            .map_err(|e| err!("service {name}: {e}"))?;
        planned.push(Planned {
            name: name.clone(),
            policy,
            spec,
        });
    }
    Ok(planned)
}

/// A `GuestConfig` describing one service, for [`workload::resolve`].
fn service_config(cfg: &GuestConfig, s: &Service) -> GuestConfig {
    GuestConfig {
        argv: s.argv.clone(),
        env: workload::merge_env(&cfg.env, &s.env),
        working_dir: s.working_dir.clone(),
        user: s.user.clone(),
        ..Default::default()
    }
}

/// Where a service is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// About to be (re)started.
    Starting,
    Running {
        pid: u32,
        since: Instant,
    },
    /// Waiting to restart.
    Backoff {
        until: Instant,
    },
    /// Ended for good.
    Exited,
}

/// The restart state machine of one service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lifecycle {
    pub policy: RestartPolicy,
    pub phase: Phase,
    pub restarts: u32,
    pub last_exit: Option<i32>,
    delay: Duration,
}

impl Lifecycle {
    pub fn new(policy: RestartPolicy) -> Self {
        Self {
            policy,
            phase: Phase::Starting,
            restarts: 0,
            last_exit: None,
            delay: MIN_BACKOFF,
        }
    }

    pub fn started(&mut self, pid: u32, now: Instant) {
        self.phase = Phase::Running { pid, since: now };
    }

    /// The process ended with `code` (or could not start: 127). Returns true when the
    /// service ended for good.
    pub fn exited(&mut self, code: i32, now: Instant) -> bool {
        self.last_exit = Some(code);
        let restart = match self.policy {
            RestartPolicy::Never => false,
            RestartPolicy::OnFailure => code != 0,
            RestartPolicy::Always => true,
        };
        if !restart {
            self.phase = Phase::Exited;
            return true;
        }
        if let Phase::Running { since, .. } = self.phase {
            if now.saturating_duration_since(since) >= RESET_AFTER {
                self.delay = MIN_BACKOFF;
            }
        }
        self.phase = Phase::Backoff {
            until: now + self.delay,
        };
        self.delay = (self.delay * 2).min(MAX_BACKOFF);
        false
    }

    /// True when a backoff is over and the service should start again.
    pub fn due(&self, now: Instant) -> bool {
        matches!(self.phase, Phase::Backoff { until } if now >= until)
    }

    /// Counted when a restart begins.
    pub fn restarting(&mut self) {
        self.restarts += 1;
        self.phase = Phase::Starting;
    }

    pub fn pid(&self) -> Option<u32> {
        match self.phase {
            Phase::Running { pid, .. } => Some(pid),
            _ => None,
        }
    }

    /// As the agent reports it.
    pub fn state(&self, name: &str) -> ServiceState {
        let state = match self.phase {
            Phase::Starting => "starting",
            Phase::Running { .. } => "running",
            Phase::Backoff { .. } => "backoff",
            Phase::Exited => "exited",
        };
        ServiceState {
            name: name.to_string(),
            state: state.into(),
            pid: self.pid().unwrap_or(0),
            restarts: self.restarts,
            last_exit: self.last_exit,
            restart: self.policy.into(),
        }
    }
}

struct Svc {
    plan: Planned,
    life: Lifecycle,
    exit: Option<Receiver<i32>>,
}

/// The running services.
pub struct Services {
    list: Vec<Svc>,
    logger: Logger,
    board: std::sync::Arc<Mutex<Vec<ServiceState>>>,
    /// The first service's end was reported by [`Services::tick`] or [`Services::stop`].
    first_reported: bool,
    /// [`Services::stop`] ran: nothing restarts any more.
    stopping: bool,
}

impl Services {
    /// Start every planned service, in order. A service that cannot be started fails the
    /// boot (the caller stops those already started).
    pub fn start(
        plans: Vec<Planned>,
        logger: Logger,
        board: std::sync::Arc<Mutex<Vec<ServiceState>>>,
    ) -> (Self, Result<()>) {
        let mut s = Self {
            list: plans
                .into_iter()
                .map(|plan| Svc {
                    life: Lifecycle::new(plan.policy),
                    plan,
                    exit: None,
                })
                .collect(),
            logger,
            board,
            first_reported: false,
            stopping: false,
        };
        let now = Instant::now();
        let mut result = Ok(());
        for i in 0..s.list.len() {
            if let Err(e) = s.spawn(i, now) {
                result = Err(e);
                break;
            }
        }
        s.publish();
        (s, result)
    }

    fn spawn(&mut self, i: usize, now: Instant) -> Result<()> {
        let svc = &mut self.list[i];
        let name = svc.plan.name.clone();
        let spec = &svc.plan.spec;
        let (read, write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
            .map_err(|e| err!("service {name}: pipe: {e}"))?;
        let write2 = write
            .try_clone()
            .map_err(|e| err!("service {name}: pipe: {e}"))?;
        let spawned = {
            // The command holds the pipe's write ends: dropped at the end of this block so
            // that the pipe closes when the service (and what it started) is gone.
            let mut cmd = workload::command(spec);
            cmd.stdin(std::process::Stdio::null())
                .stdout(write)
                .stderr(write2);
            cmd.spawn()
        };
        self.logger.add(&name, read);
        match spawned {
            Ok(child) => {
                let pid = child.id();
                svc.exit = Some(Reaper::global().watch(pid));
                svc.life.started(pid, now);
                say!("service {name} started (pid {pid})");
                Ok(())
            }
            Err(e) => {
                svc.life.exited(127, now);
                Err(err!(
                    "service {name}: cannot execute {}: {e}",
                    spec.program.display()
                ))
            }
        }
    }

    fn publish(&self) {
        let states = self
            .list
            .iter()
            .map(|s| s.life.state(&s.plan.name))
            .collect();
        *self.board.lock().unwrap_or_else(|p| p.into_inner()) = states;
    }

    /// Take the exits the reaper delivered; returns the exit code of the first service when
    /// it ended for good (once).
    fn collect(&mut self, now: Instant, restart: bool) -> Option<i32> {
        let mut first_ended = None;
        for i in 0..self.list.len() {
            let code = match &self.list[i].exit {
                Some(rx) => rx.try_recv().ok(),
                None => None,
            };
            let Some(code) = code else { continue };
            let name = self.list[i].plan.name.clone();
            self.logger.drain(&name, DRAIN_WAIT);
            let svc = &mut self.list[i];
            svc.exit = None;
            let for_good = if restart {
                svc.life.exited(code, now)
            } else {
                svc.life.last_exit = Some(code);
                svc.life.phase = Phase::Exited;
                true
            };
            if for_good {
                say!("service {name} exited with code {code}");
            } else {
                say!("service {name} exited with code {code}; restarting it");
            }
            if i == 0 && for_good && !self.first_reported {
                self.first_reported = true;
                first_ended = Some(code);
            }
        }
        first_ended
    }

    /// Notice exits (after the reaper ran), restart what is due. Returns the first
    /// service's exit code once it ended for good.
    pub fn tick(&mut self, now: Instant) -> Option<i32> {
        let first = self.collect(now, !self.stopping);
        if self.stopping {
            self.publish();
            return first;
        }
        for i in 0..self.list.len() {
            if self.list[i].life.due(now) {
                self.list[i].life.restarting();
                if let Err(e) = self.spawn(i, now) {
                    say!("{e}");
                }
            }
        }
        self.publish();
        first
    }

    /// Stop every service: SIGTERM to each process group, up to `grace` for them to end,
    /// then SIGKILL. Returns the first service's exit code when it ended now (or had ended
    /// before without being reported).
    pub fn stop(&mut self, grace: Duration) -> Option<i32> {
        self.stopping = true;
        for svc in &mut self.list {
            if !matches!(svc.life.phase, Phase::Running { .. }) {
                svc.life.phase = Phase::Exited;
            }
        }
        self.signal_all(if grace.is_zero() {
            Signal::SIGKILL
        } else {
            Signal::SIGTERM
        });
        let deadline = Instant::now() + grace;
        let mut first = None;
        let mut killed = grace.is_zero();
        let hard_deadline = deadline + Duration::from_secs(3);
        while self.list.iter().any(|s| s.exit.is_some()) {
            Reaper::global().reap();
            let now = Instant::now();
            first = first.or(self.collect(now, false));
            if !killed && now >= deadline {
                say!("services left after {} ms: killing them", grace.as_millis());
                self.signal_all(Signal::SIGKILL);
                killed = true;
            }
            if now >= hard_deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.publish();
        if first.is_none() && !self.first_reported {
            first = self.list.first().and_then(|s| s.life.last_exit);
            self.first_reported = first.is_some();
        }
        first
    }

    fn signal_all(&self, sig: Signal) {
        for svc in &self.list {
            if let (Some(pid), Some(_)) = (svc.life.pid(), &svc.exit) {
                let pgid = i32::try_from(pid).unwrap_or(i32::MAX);
                let _ = kill(Pid::from_raw(-pgid), sig);
                // Its group may be gone while the leader is not (it could have changed
                // group): signal the process itself too.
                let _ = kill(Pid::from_raw(pgid), sig);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn never_ends_for_good_at_the_first_exit_whatever_the_code() {
        let t0 = Instant::now();
        let mut l = Lifecycle::new(RestartPolicy::Never);
        l.started(10, t0);
        assert!(l.exited(0, t0 + ms(5)));
        assert_eq!(l.phase, Phase::Exited);
        assert_eq!(l.restarts, 0);
        assert_eq!(l.last_exit, Some(0));
        assert!(!l.due(t0 + Duration::from_secs(100)));
    }

    #[test]
    fn on_failure_restarts_on_a_non_zero_code_or_signal_only() {
        let t0 = Instant::now();
        let mut l = Lifecycle::new(RestartPolicy::OnFailure);
        l.started(10, t0);
        assert!(!l.exited(128 + 9, t0));
        assert_eq!(
            l.phase,
            Phase::Backoff {
                until: t0 + ms(100)
            }
        );
        l.restarting();
        l.started(11, t0 + ms(100));
        assert!(l.exited(0, t0 + ms(200)));
        assert_eq!(l.phase, Phase::Exited);
        assert_eq!(l.restarts, 1);
    }

    #[test]
    fn always_restarts_after_a_clean_exit_too() {
        let t0 = Instant::now();
        let mut l = Lifecycle::new(RestartPolicy::Always);
        l.started(10, t0);
        assert!(!l.exited(0, t0));
        assert!(!l.due(t0 + ms(99)));
        assert!(l.due(t0 + ms(100)));
    }

    #[test]
    fn the_backoff_doubles_up_to_its_cap_and_resets_after_a_long_run() {
        let mut now = Instant::now();
        let mut l = Lifecycle::new(RestartPolicy::Always);
        let mut delays = Vec::new();
        for pid in 0..12 {
            l.started(pid, now);
            now += ms(1);
            l.exited(1, now);
            let Phase::Backoff { until } = l.phase else {
                panic!("{:?}", l.phase)
            };
            delays.push(until - now);
            now = until;
            assert!(l.due(now));
            l.restarting();
        }
        assert_eq!(delays[..4], [ms(100), ms(200), ms(400), ms(800)]);
        assert_eq!(delays[9..], [MAX_BACKOFF, MAX_BACKOFF, MAX_BACKOFF]);
        assert_eq!(l.restarts, 12);
        l.started(99, now);
        l.exited(1, now + RESET_AFTER);
        assert_eq!(
            l.phase,
            Phase::Backoff {
                until: now + RESET_AFTER + MIN_BACKOFF
            }
        );
    }

    #[test]
    fn the_reported_state_follows_the_phase() {
        let t0 = Instant::now();
        let mut l = Lifecycle::new(RestartPolicy::OnFailure);
        assert_eq!(l.state("web").state, "starting");
        l.started(42, t0);
        let s = l.state("web");
        assert_eq!(
            (s.state.as_str(), s.pid, s.last_exit),
            ("running", 42, None)
        );
        l.exited(3, t0);
        let s = l.state("web");
        assert_eq!(
            (s.state.as_str(), s.pid, s.last_exit),
            ("backoff", 0, Some(3))
        );
        assert_eq!(s.restart, RestartPolicy::OnFailure as i32);
    }

    fn root_with_sh() -> tempfile::TempDir {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join("bin")).unwrap();
        std::fs::create_dir_all(root.path().join("etc")).unwrap();
        std::fs::write(
            root.path().join("etc/passwd"),
            "root:x:0:0::/root:/bin/sh\n",
        )
        .unwrap();
        let sh = root.path().join("bin/sh");
        std::fs::write(&sh, "").unwrap();
        std::fs::set_permissions(&sh, std::fs::Permissions::from_mode(0o755)).unwrap();
        root
    }

    fn service(name: &str, argv: &[&str]) -> Service {
        Service {
            name: name.into(),
            argv: argv.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn no_declared_service_means_main_from_the_configs_argv() {
        let root = root_with_sh();
        let cfg = GuestConfig {
            argv: vec!["sh".into()],
            ..Default::default()
        };
        let p = plan(&cfg, root.path(), "h").unwrap();
        assert_eq!(p.len(), 1);
        assert_eq!(
            (p[0].name.as_str(), p[0].policy),
            ("main", RestartPolicy::Never)
        );
    }

    #[test]
    fn a_service_gets_the_image_env_with_its_own_after_it() {
        let root = root_with_sh();
        let mut web = service("web", &["sh"]);
        web.env = vec!["MODE=web".into()];
        web.restart = RestartPolicy::Always.into();
        let cfg = GuestConfig {
            env: vec!["MODE=image".into(), "LANG=C".into()],
            services: vec![web],
            ..Default::default()
        };
        let p = plan(&cfg, root.path(), "h").unwrap();
        assert_eq!(p[0].policy, RestartPolicy::Always);
        assert!(p[0].spec.env.contains(&("MODE".into(), "web".into())));
        assert!(p[0].spec.env.contains(&("LANG".into(), "C".into())));
        assert!(!p[0].spec.env.contains(&("MODE".into(), "image".into())));
    }

    fn plan_error(services: Vec<Service>) -> String {
        let root = root_with_sh();
        let cfg = GuestConfig {
            services,
            ..Default::default()
        };
        plan(&cfg, root.path(), "h").unwrap_err().0
    }

    #[test]
    fn bad_service_configs_are_refused_with_their_reason() {
        let e = plan_error(vec![service("Web", &["sh"])]);
        assert!(e.contains("invalid service name \"Web\""), "{e}");
        let e = plan_error(vec![service("", &["sh"])]);
        assert!(e.contains("invalid service name \"\""), "{e}");
        let e = plan_error(vec![service("web", &["sh"]), service("web", &["sh"])]);
        assert!(e.contains("\"web\" is declared twice"), "{e}");
        let e = plan_error(vec![service("web", &[])]);
        assert!(e.contains("service web: argv is empty"), "{e}");
        let mut u = service("web", &["sh"]);
        u.user = "nobody".into();
        let e = plan_error(vec![u]);
        assert!(e.contains("service web: user \"nobody\" not found"), "{e}");
        let e = plan_error(vec![service("web", &["nginx"])]);
        assert!(e.contains("service web: cannot execute \"nginx\""), "{e}");
    }

    #[test]
    fn service_names_follow_the_contract() {
        for ok in ["web", "a", "0db", "x-y_z", &"a".repeat(32)] {
            assert!(valid_name(ok), "{ok}");
        }
        for bad in ["", "-a", "_a", "A", "a.b", "a b", &"a".repeat(33)] {
            assert!(!valid_name(bad), "{bad}");
        }
    }
}
