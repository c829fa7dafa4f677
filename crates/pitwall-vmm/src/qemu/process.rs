//! Watching and signalling a VMM process that is not our child (QEMU daemonizes, so it
//! outlives the host daemon and its exit status is not ours to reap).
//!
//! A pidfd (`pidfd_open`, Linux ≥ 5.3) is the primary mechanism: it becomes readable when the
//! process exits, so a tokio `AsyncFd` wakes us without polling, and `pidfd_send_signal`
//! cannot hit a recycled PID. Where pidfds are unavailable (older kernels, seccomp
//! profiles), we fall back to polling `/proc/<pid>/stat` every 100 ms: slower to notice and
//! racy against PID reuse in theory, but the cmdline check on attach narrows that.

use std::os::fd::OwnedFd;
use std::path::Path;
use std::time::Duration;

use rustix::process::{pidfd_open, pidfd_send_signal, Pid, PidfdFlags, Signal};
use tokio::io::unix::AsyncFd;

pub(crate) struct VmmProcess {
    pid: i32,
    pidfd: Option<AsyncFd<OwnedFd>>,
}

impl VmmProcess {
    /// Attach to `pid`; `None` when it no longer exists.
    pub(crate) fn open(pid: i32) -> Option<Self> {
        let raw = Pid::from_raw(pid)?;
        match pidfd_open(raw, PidfdFlags::empty()) {
            Ok(fd) => match register(fd) {
                Ok(fd) => Some(Self {
                    pid,
                    pidfd: Some(fd),
                }),
                Err(e) => {
                    tracing::debug!(pid, error = %e, "pidfd not pollable; polling /proc");
                    proc_alive(pid).then_some(Self { pid, pidfd: None })
                }
            },
            Err(rustix::io::Errno::SRCH) => None,
            Err(e) => {
                tracing::debug!(pid, error = %e, "pidfd_open unavailable; polling /proc");
                proc_alive(pid).then_some(Self { pid, pidfd: None })
            }
        }
    }

    pub(crate) fn pid(&self) -> i32 {
        self.pid
    }

    /// Resolves once the process has exited.
    pub(crate) async fn wait(&self) {
        if let Some(fd) = &self.pidfd {
            match fd.readable().await {
                // Readable means exited; never clear readiness, it stays exited.
                Ok(_guard) => return,
                Err(e) => {
                    tracing::debug!(pid = self.pid, error = %e, "pidfd wait failed; polling /proc")
                }
            }
        }
        while proc_alive(self.pid) {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub(crate) fn signal(&self, sig: Signal) -> std::io::Result<()> {
        let result = match &self.pidfd {
            Some(fd) => pidfd_send_signal(fd.get_ref(), sig),
            None => match Pid::from_raw(self.pid) {
                Some(pid) => rustix::process::kill_process(pid, sig),
                None => return Ok(()),
            },
        };
        match result {
            Ok(()) | Err(rustix::io::Errno::SRCH) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    pub(crate) fn is_alive(&self) -> bool {
        proc_alive(self.pid)
    }
}

#[allow(unsafe_code)]
fn register(fd: OwnedFd) -> std::io::Result<AsyncFd<OwnedFd>> {
    // SAFETY: the AsyncFd takes ownership of the OwnedFd, so the descriptor stays open and
    // `as_raw_fd` returns the same number for as long as the AsyncFd exists.
    unsafe { AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE) }
        .map_err(|e| e.into_parts().1)
}

/// Whether `/proc/<pid>` is a live (not zombie) process.
pub(crate) fn proc_alive(pid: i32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // The state follows the command name, which is in parentheses and may contain spaces.
    let state = stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.trim_start().chars().next());
    !matches!(state, None | Some('Z') | Some('X'))
}

/// The NUL-separated command line of `pid`, joined with spaces.
pub(crate) fn cmdline(pid: i32) -> Option<String> {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    Some(
        raw.split(|&b| b == 0)
            .map(String::from_utf8_lossy)
            .collect::<Vec<_>>()
            .join(" "),
    )
}

/// Whether `pid` is the VMM started for `run_dir`: its command line names the run dir's pid
/// file (guards against PID reuse).
pub(crate) fn is_qemu_for(pid: i32, run_dir: &Path) -> bool {
    let Some(cmd) = cmdline(pid) else {
        return false;
    };
    let dir = run_dir.to_string_lossy();
    cmd.contains(&format!("{dir}/{}", super::QEMU_PID))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_is_alive_and_a_free_pid_is_not() {
        assert!(proc_alive(std::process::id() as i32));
        assert!(!proc_alive(i32::MAX));
    }

    #[tokio::test]
    async fn exit_of_a_process_is_noticed_through_its_pidfd() {
        let mut child = tokio::process::Command::new("sleep")
            .arg("0.2")
            .spawn()
            .unwrap();
        let proc = VmmProcess::open(child.id().unwrap() as i32).unwrap();
        assert!(
            proc.pidfd.is_some(),
            "pidfd_open should work on this kernel"
        );
        tokio::time::timeout(Duration::from_secs(5), proc.wait())
            .await
            .unwrap();
        child.wait().await.unwrap();
        assert!(!proc.is_alive());
    }

    #[tokio::test]
    async fn a_signal_goes_to_the_process() {
        let mut child = tokio::process::Command::new("sleep")
            .arg("60")
            .spawn()
            .unwrap();
        let proc = VmmProcess::open(child.id().unwrap() as i32).unwrap();
        proc.signal(Signal::KILL).unwrap();
        tokio::time::timeout(Duration::from_secs(5), proc.wait())
            .await
            .unwrap();
        let status = child.wait().await.unwrap();
        assert!(!status.success());
    }
}
