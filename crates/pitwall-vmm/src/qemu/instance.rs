//! A running QEMU (launched now or re-attached): its exit watcher, its agent link, and the
//! stop ladder (agent `Shutdown` → QMP `quit` → SIGKILL).

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pitwall_proto::v1::{
    agent_event, agent_request, AgentRequest, Exec, ExecResult, ListServices, LogData, ReadLog,
    ServiceState, Shutdown,
};
use rustix::process::Signal;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::agent::{AgentLink, RequestError};
use super::process::VmmProcess;
use super::{qmp, remove_runtime_files, AGENT_SOCK, CONSOLE_LOG, QMP_SOCK};
use crate::{Exit, VmInstance, VmmError};

/// Time the guest gets beyond the workload's grace to sync and power off.
const POWEROFF_SLACK: Duration = Duration::from_secs(5);
/// Time QEMU gets to exit after QMP `quit`, and after SIGKILL.
const QUIT_WAIT: Duration = Duration::from_secs(5);
const KILL_WAIT: Duration = Duration::from_secs(10);
/// Time `shutdown` waits for the agent link to (re)connect before falling back to QMP.
const CONNECT_WAIT: Duration = Duration::from_secs(3);
/// Time the agent link gets to read the guest's last frames once QEMU exited.
const DRAIN_WAIT: Duration = Duration::from_secs(2);
/// Time the guest gets to answer a `ListServices`.
const LIST_WAIT: Duration = Duration::from_secs(10);
/// `Exec.timeout_ms` of 0, as the guest applies it.
const EXEC_DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);
/// Time beyond an exec's own timeout for the guest to kill it and send its output.
const EXEC_SLACK: Duration = Duration::from_secs(30);
/// The guest takes request frames up to 1 MiB: an exec's stdin must fit in one.
pub const EXEC_STDIN_MAX: usize = 512 << 10;

struct Shared {
    vm: String,
    run_dir: PathBuf,
    process: VmmProcess,
    exited: watch::Receiver<bool>,
    agent: Arc<AgentLink>,
    killed: AtomicBool,
}

/// A QEMU process driven through its run directory. Dropping it leaves QEMU running (the
/// VM outlives the host daemon); only its watchers stop.
pub struct QemuInstance {
    shared: Arc<Shared>,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for QemuInstance {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl QemuInstance {
    /// Start watching `process` and talking to its guest. Must run inside a tokio runtime.
    pub(crate) fn start(vm: String, run_dir: PathBuf, process: VmmProcess) -> Self {
        let (exit_tx, exit_rx) = watch::channel(false);
        let agent = AgentLink::new(run_dir.join(AGENT_SOCK));
        let shared = Arc::new(Shared {
            vm,
            run_dir,
            process,
            exited: exit_rx.clone(),
            agent: agent.clone(),
            killed: AtomicBool::new(false),
        });
        let watcher = {
            let s = shared.clone();
            tokio::spawn(async move {
                s.process.wait().await;
                // Clean before announcing: whoever sees the exit may start a new VMM here.
                remove_runtime_files(&s.run_dir);
                tracing::info!(vm_id = %s.vm, pid = s.process.pid(), "VMM exited");
                let _ = exit_tx.send(true);
            })
        };
        let agent_task = tokio::spawn(agent.run(exit_rx));
        Self {
            shared,
            tasks: vec![watcher, agent_task],
        }
    }

    /// The run directory this instance lives in.
    pub fn run_dir(&self) -> &std::path::Path {
        &self.shared.run_dir
    }

    /// The kernel release the guest reported, once it did.
    pub fn guest_kernel(&self) -> Option<String> {
        self.shared.agent.state().kernel
    }

    fn has_exited(&self) -> bool {
        *self.shared.exited.borrow()
    }

    /// Wait up to `d` for the process to exit; true when it did.
    async fn exited_within(&self, d: Duration) -> bool {
        let mut rx = self.shared.exited.clone();
        let exited = matches!(
            tokio::time::timeout(d, rx.wait_for(|e| *e)).await,
            Ok(Ok(_))
        );
        exited
    }

    async fn exit_info(&self) -> Exit {
        let mut agent = self.shared.agent.subscribe();
        let _ = tokio::time::timeout(DRAIN_WAIT, agent.wait_for(|s| !s.connected)).await;
        Exit {
            vmm_status: None,
            workload_code: self.shared.agent.state().workload_code,
            killed: self.shared.killed.load(Ordering::SeqCst),
        }
    }

    fn control_err(&self, op: &'static str, why: impl Into<String>) -> VmmError {
        VmmError::Control {
            vm: self.shared.vm.clone(),
            op,
            why: why.into(),
        }
    }

    /// Send `request` and wait for its answer, mapping link failures and guest errors.
    async fn ask(
        &self,
        op: &'static str,
        request: agent_request::Request,
        timeout: Duration,
    ) -> Result<agent_event::Event, VmmError> {
        let vm = self.shared.vm.clone();
        match self.shared.agent.request(request, timeout).await {
            Ok(agent_event::Event::Error(why)) => Err(VmmError::GuestRefused { vm, op, why }),
            Ok(event) => Ok(event),
            Err(RequestError::NotConnected) => Err(VmmError::AgentUnavailable { vm, op }),
            Err(e) => Err(VmmError::Agent {
                vm,
                op,
                why: e.to_string(),
            }),
        }
    }

    fn unexpected(&self, op: &'static str, event: &agent_event::Event) -> VmmError {
        VmmError::Agent {
            vm: self.shared.vm.clone(),
            op,
            why: format!("unexpected answer from the guest: {event:?}"),
        }
    }

    async fn kill_and_wait(&self) -> Result<Exit, VmmError> {
        self.shared.killed.store(true, Ordering::SeqCst);
        self.shared.process.signal(Signal::KILL).map_err(|e| {
            self.control_err(
                "kill",
                format!("SIGKILL to pid {}: {e}", self.shared.process.pid()),
            )
        })?;
        if !self.exited_within(KILL_WAIT).await {
            return Err(self.control_err(
                "kill",
                format!(
                    "pid {} still runs {KILL_WAIT:?} after SIGKILL",
                    self.shared.process.pid()
                ),
            ));
        }
        Ok(self.exit_info().await)
    }
}

#[async_trait]
impl VmInstance for QemuInstance {
    fn pid(&self) -> u32 {
        self.shared.process.pid() as u32
    }

    fn console_path(&self) -> PathBuf {
        self.shared.run_dir.join(CONSOLE_LOG)
    }

    async fn wait_ready(&self, timeout: Duration) -> Result<(), VmmError> {
        let vm = self.shared.vm.clone();
        let mut state = self.shared.agent.subscribe();
        let mut exited = self.shared.exited.clone();
        let deadline = tokio::time::sleep(timeout);
        tokio::pin!(deadline);
        loop {
            {
                let s = state.borrow_and_update();
                if let Some(why) = &s.error {
                    return Err(VmmError::GuestFailed {
                        vm,
                        why: why.clone(),
                    });
                }
                if s.ready {
                    return Ok(());
                }
            }
            if *exited.borrow_and_update() {
                let exit = self.exit_info().await;
                // The guest's last words may have arrived while draining.
                if let Some(why) = self.shared.agent.state().error {
                    return Err(VmmError::GuestFailed { vm, why });
                }
                return Err(VmmError::ExitedEarly {
                    vm,
                    exit: exit.to_string(),
                    console: self.console_path(),
                });
            }
            tokio::select! {
                _ = state.changed() => {}
                _ = exited.changed() => {}
                _ = &mut deadline => {
                    return Err(VmmError::ReadyTimeout { vm, timeout, console: self.console_path() });
                }
            }
        }
    }

    async fn shutdown(&self, grace: Duration) -> Result<Exit, VmmError> {
        let vm = &self.shared.vm;
        if self.has_exited() {
            return Ok(self.exit_info().await);
        }
        let grace_ms = u32::try_from(grace.as_millis()).unwrap_or(u32::MAX);
        let req = AgentRequest {
            id: 0,
            request: Some(agent_request::Request::Shutdown(Shutdown { grace_ms })),
        };
        // Right after a launch or re-attach the link may still be connecting.
        let mut link = self.shared.agent.subscribe();
        let mut exited = self.shared.exited.clone();
        tokio::select! {
            _ = tokio::time::timeout(CONNECT_WAIT, link.wait_for(|s| s.connected)) => {}
            _ = exited.wait_for(|e| *e) => {}
        }
        match self.shared.agent.send(req).await {
            Ok(()) => {
                tracing::info!(vm_id = %vm, grace_ms, "asked the guest to shut down");
                if self.exited_within(grace + POWEROFF_SLACK).await {
                    return Ok(self.exit_info().await);
                }
                tracing::warn!(vm_id = %vm, "guest did not power off in time; quitting QEMU");
            }
            Err(e) => tracing::warn!(vm_id = %vm, error = %e, "agent not connected; quitting QEMU"),
        }
        if self.has_exited() {
            return Ok(self.exit_info().await);
        }
        self.shared.killed.store(true, Ordering::SeqCst);
        let qmp = self.shared.run_dir.join(QMP_SOCK);
        match qmp::execute(&qmp, "quit", None, QUIT_WAIT).await {
            Ok(_) if self.exited_within(QUIT_WAIT).await => return Ok(self.exit_info().await),
            Ok(_) => tracing::warn!(vm_id = %vm, "QEMU still runs after QMP quit; killing it"),
            Err(e) => tracing::warn!(vm_id = %vm, error = %e, "QMP quit failed; killing QEMU"),
        }
        self.kill_and_wait().await
    }

    async fn kill(&self) -> Result<Exit, VmmError> {
        if self.has_exited() {
            return Ok(self.exit_info().await);
        }
        tracing::info!(vm_id = %self.shared.vm, "killing the VMM");
        self.kill_and_wait().await
    }

    async fn wait_exit(&self) -> Exit {
        let mut rx = self.shared.exited.clone();
        let _ = rx.wait_for(|e| *e).await;
        self.exit_info().await
    }

    fn is_alive(&self) -> bool {
        !self.has_exited() && self.shared.process.is_alive()
    }

    fn ssh_host_key(&self) -> Option<String> {
        self.shared.agent.state().ssh_host_key
    }

    async fn services(&self) -> Result<Vec<ServiceState>, VmmError> {
        let request = agent_request::Request::ListServices(ListServices {});
        match self.ask("list services", request, LIST_WAIT).await? {
            agent_event::Event::Services(list) => Ok(list.services),
            other => Err(self.unexpected("list services", &other)),
        }
    }

    async fn exec(&self, req: Exec) -> Result<ExecResult, VmmError> {
        let timeout = match req.timeout_ms {
            0 => EXEC_DEFAULT_TIMEOUT,
            ms => Duration::from_millis(u64::from(ms)),
        } + EXEC_SLACK;
        if req.stdin.len() > EXEC_STDIN_MAX {
            return Err(VmmError::Agent {
                vm: self.shared.vm.clone(),
                op: "exec",
                why: format!(
                    "stdin of {} bytes is over the {EXEC_STDIN_MAX} an exec can carry; copy the \
                     data into the guest as a file instead",
                    req.stdin.len()
                ),
            });
        }
        let argv0 = req.argv.first().cloned().unwrap_or_default();
        tracing::debug!(vm_id = %self.shared.vm, program = %argv0, "exec in the guest");
        match self
            .ask("exec", agent_request::Request::Exec(req), timeout)
            .await?
        {
            agent_event::Event::ExecResult(result) => Ok(result),
            other => Err(self.unexpected("exec", &other)),
        }
    }

    async fn read_log(&self, service: &str, max_bytes: u32) -> Result<LogData, VmmError> {
        let request = agent_request::Request::ReadLog(ReadLog {
            service: service.to_string(),
            max_bytes,
        });
        match self.ask("read log", request, LIST_WAIT).await? {
            agent_event::Event::Log(log) => Ok(log),
            other => Err(self.unexpected("read log", &other)),
        }
    }
}
