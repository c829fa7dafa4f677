//! In-memory stand-in for the VMM in unit tests.
//!
//! [`FakeVmm`] records every launch (its [`VmConfig`]) and hands the test a [`FakeVm`] that
//! drives the guest: become ready, fail the boot, exit by itself. Shutdown and kill complete
//! at once and resolve `wait_exit`. A run directory the test marks live is found again by
//! `reattach`, as a VMM that survived a host-daemon restart.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use pitwall_vmm::{Exit, VmConfig, VmInstance, Vmm, VmmError};
use tokio::sync::watch;

/// How a fake guest's boot stands.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Boot {
    Booting,
    Ready,
    Failed(String),
}

/// One fake guest: the test drives it, the host holds a [`FakeInstance`] of it.
#[derive(Clone)]
pub(crate) struct FakeVm {
    inner: Arc<VmInner>,
}

struct VmInner {
    name: String,
    pid: u32,
    run_dir: PathBuf,
    boot: watch::Sender<Boot>,
    exit: watch::Sender<Option<Exit>>,
    /// The grace of every shutdown asked for, in order.
    shutdowns: Mutex<Vec<Duration>>,
    kills: AtomicU32,
}

impl FakeVm {
    fn new(name: &str, pid: u32, run_dir: &Path) -> Self {
        Self {
            inner: Arc::new(VmInner {
                name: name.to_owned(),
                pid,
                run_dir: run_dir.to_path_buf(),
                boot: watch::channel(Boot::Booting).0,
                exit: watch::channel(None).0,
                shutdowns: Mutex::new(Vec::new()),
                kills: AtomicU32::new(0),
            }),
        }
    }

    /// powerunit reports the guest ready.
    pub fn become_ready(&self) {
        self.inner.boot.send_replace(Boot::Ready);
    }

    /// powerunit reports a boot failure.
    pub fn fail_boot(&self, why: &str) {
        self.inner.boot.send_replace(Boot::Failed(why.to_owned()));
    }

    /// The workload ends with `code` and the guest powers off.
    pub fn exit_by_itself(&self, code: i32) {
        self.end(Exit {
            vmm_status: Some(0),
            workload_code: Some(code),
            killed: false,
        });
    }

    /// The grace of every shutdown the host asked for.
    pub fn shutdowns(&self) -> Vec<Duration> {
        self.inner
            .shutdowns
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn kills(&self) -> u32 {
        self.inner.kills.load(Ordering::SeqCst)
    }

    pub fn is_alive(&self) -> bool {
        self.inner.exit.borrow().is_none()
    }

    /// Ends the VMM (first end wins) and returns how it ended.
    fn end(&self, exit: Exit) -> Exit {
        self.inner.exit.send_if_modified(|e| {
            if e.is_none() {
                *e = Some(exit.clone());
                true
            } else {
                false
            }
        });
        self.inner.exit.borrow().clone().unwrap_or(exit)
    }

    fn instance(&self) -> Box<dyn VmInstance> {
        Box::new(FakeInstance { vm: self.clone() })
    }
}

/// What the host holds of a [`FakeVm`].
pub(crate) struct FakeInstance {
    vm: FakeVm,
}

#[async_trait]
impl VmInstance for FakeInstance {
    fn pid(&self) -> u32 {
        self.vm.inner.pid
    }

    fn console_path(&self) -> PathBuf {
        self.vm.inner.run_dir.join(pitwall_vmm::qemu::CONSOLE_LOG)
    }

    async fn wait_ready(&self, timeout: Duration) -> Result<(), VmmError> {
        let vm = &self.vm.inner;
        let mut boot = vm.boot.subscribe();
        let mut exit = vm.exit.subscribe();
        let wait = async {
            tokio::select! {
                b = boot.wait_for(|b| *b != Boot::Booting) => match b.map(|b| b.clone()) {
                    Ok(Boot::Failed(why)) => Err(VmmError::GuestFailed { vm: vm.name.clone(), why }),
                    _ => Ok(()),
                },
                e = exit.wait_for(Option::is_some) => Err(VmmError::ExitedEarly {
                    vm: vm.name.clone(),
                    exit: e.ok().and_then(|e| e.clone()).map(|e| e.to_string()).unwrap_or_default(),
                    console: self.console_path(),
                }),
            }
        };
        tokio::time::timeout(timeout, wait)
            .await
            .unwrap_or_else(|_| {
                Err(VmmError::ReadyTimeout {
                    vm: vm.name.clone(),
                    timeout,
                    console: self.console_path(),
                })
            })
    }

    async fn shutdown(&self, grace: Duration) -> Result<Exit, VmmError> {
        self.vm
            .inner
            .shutdowns
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(grace);
        Ok(self.vm.end(Exit {
            vmm_status: Some(0),
            workload_code: None,
            killed: false,
        }))
    }

    /// The fake guest reports `ssh-ed25519 FAKE-<name>` as its SSH host key once ready.
    fn ssh_host_key(&self) -> Option<String> {
        let vm = &self.vm.inner;
        (*vm.boot.borrow() == Boot::Ready).then(|| format!("ssh-ed25519 FAKE-{}", vm.name))
    }

    /// The fake guest's agent: `echo` prints its arguments, `false` exits 1, anything else
    /// is not found (127).
    async fn exec(
        &self,
        req: pitwall_proto::v1::Exec,
    ) -> Result<pitwall_proto::v1::ExecResult, VmmError> {
        let (code, stdout, stderr) = match req.argv.first().map(String::as_str) {
            Some("echo") => (0, format!("{}\n", req.argv[1..].join(" ")), String::new()),
            Some("false") => (1, String::new(), String::new()),
            other => (127, String::new(), format!("{other:?}: not found\n")),
        };
        Ok(pitwall_proto::v1::ExecResult {
            code,
            stdout: stdout.into_bytes(),
            stderr: stderr.into_bytes(),
            timed_out: false,
        })
    }

    /// The fake guest runs one service, `main`, never restarted.
    async fn services(&self) -> Result<Vec<pitwall_proto::v1::ServiceState>, VmmError> {
        Ok(vec![pitwall_proto::v1::ServiceState {
            name: "main".into(),
            state: "running".into(),
            pid: 1234,
            ..Default::default()
        }])
    }

    async fn kill(&self) -> Result<Exit, VmmError> {
        self.vm.inner.kills.fetch_add(1, Ordering::SeqCst);
        Ok(self.vm.end(Exit {
            vmm_status: None,
            workload_code: None,
            killed: true,
        }))
    }

    async fn wait_exit(&self) -> Exit {
        let mut exit = self.vm.inner.exit.subscribe();
        let e = exit
            .wait_for(Option::is_some)
            .await
            .ok()
            .and_then(|e| e.clone());
        // The sender lives in `self.vm`, so the wait only ends with an exit.
        e.unwrap_or(Exit {
            vmm_status: None,
            workload_code: None,
            killed: false,
        })
    }

    fn is_alive(&self) -> bool {
        self.vm.is_alive()
    }

    /// The fake guest's `main` wrote one line.
    async fn read_log(
        &self,
        service: &str,
        _max_bytes: u32,
    ) -> Result<pitwall_proto::v1::LogData, VmmError> {
        match service {
            "" | "main" => Ok(pitwall_proto::v1::LogData {
                service: "main".into(),
                data: b"main started\n".to_vec(),
                truncated: false,
            }),
            other => Err(VmmError::GuestRefused {
                vm: self.vm.inner.name.clone(),
                op: "read log",
                why: format!("no service {other:?}"),
            }),
        }
    }
}

/// One launch the host asked for.
#[derive(Clone)]
pub(crate) struct Launch {
    pub cfg: VmConfig,
    pub vm: FakeVm,
}

/// The in-memory [`Vmm`]. Cheap to clone; clones share their launches.
#[derive(Clone)]
pub(crate) struct FakeVmm {
    inner: Arc<VmmInner>,
}

struct VmmInner {
    launches: watch::Sender<Vec<Launch>>,
    /// Run directories with a VMM that survived the host daemon.
    live: Mutex<HashMap<PathBuf, FakeVm>>,
    next_pid: AtomicU32,
}

impl FakeVmm {
    pub fn new() -> Self {
        Self {
            inner: Arc::new(VmmInner {
                launches: watch::channel(Vec::new()).0,
                live: Mutex::new(HashMap::new()),
                next_pid: AtomicU32::new(1000),
            }),
        }
    }

    /// Every launch so far.
    pub fn launches(&self) -> Vec<Launch> {
        self.inner.launches.borrow().clone()
    }

    /// Waits until the `n`-th launch (1-based) happened and returns it.
    pub async fn launch_number(&self, n: usize) -> Launch {
        let mut rx = self.inner.launches.subscribe();
        let all = tokio::time::timeout(super::tests::PATIENCE, rx.wait_for(|l| l.len() >= n))
            .await
            .unwrap_or_else(|_| panic!("no launch number {n} within {:?}", super::tests::PATIENCE))
            .expect("the fake VMM lives as long as the test");
        all[n - 1].clone()
    }

    /// Marks `run_dir` as having a VMM that still runs: `reattach` finds it.
    pub fn mark_live(&self, run_dir: &Path, name: &str) -> FakeVm {
        let vm = FakeVm::new(name, self.pid(), run_dir);
        self.inner
            .live
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(run_dir.to_path_buf(), vm.clone());
        vm
    }

    fn pid(&self) -> u32 {
        self.inner.next_pid.fetch_add(1, Ordering::SeqCst)
    }
}

#[async_trait]
impl Vmm for FakeVmm {
    fn kind(&self) -> &'static str {
        "fake"
    }

    async fn launch(&self, cfg: &VmConfig) -> Result<Box<dyn VmInstance>, VmmError> {
        let vm = FakeVm::new(&cfg.name, self.pid(), &cfg.run_dir);
        self.inner
            .live
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(cfg.run_dir.clone(), vm.clone());
        self.inner.launches.send_modify(|l| {
            l.push(Launch {
                cfg: cfg.clone(),
                vm: vm.clone(),
            })
        });
        Ok(vm.instance())
    }

    async fn reattach(&self, run_dir: &Path) -> Result<Option<Box<dyn VmInstance>>, VmmError> {
        let live = self.inner.live.lock().unwrap_or_else(|p| p.into_inner());
        Ok(live
            .get(run_dir)
            .filter(|vm| vm.is_alive())
            .map(FakeVm::instance))
    }
}
