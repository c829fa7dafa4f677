//! Exit statuses of PID 1's children, for whoever started them.
//!
//! PID 1 must reap every process that ends in the guest (orphans are re-parented to it), so
//! one loop calls `waitpid(-1)`; nothing else in powerunit may wait for a child
//! (`std::process::Child::wait` would race it and fail with `ECHILD`). Code that starts a
//! process — the services, the SSH server's sessions, the agent's exec — calls
//! [`Reaper::watch`] with its pid and gets the exit code on a channel when the loop reaps it.
//! A child that ends before it is watched is kept as unclaimed for a while, so there is no
//! race between `spawn` and `watch`.

use std::collections::{HashMap, VecDeque};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Mutex, OnceLock};

use nix::errno::Errno;
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

/// Exit codes of children nobody watched (yet): orphans, or a watcher not registered yet.
/// Only the newest are kept.
const UNCLAIMED_KEPT: usize = 256;

#[derive(Default)]
struct State {
    waiters: HashMap<i32, Sender<i32>>,
    unclaimed: VecDeque<(i32, i32)>,
}

/// See the module documentation.
#[derive(Default)]
pub struct Reaper {
    state: Mutex<State>,
}

impl Reaper {
    /// The process's one reaper.
    pub fn global() -> &'static Reaper {
        static R: OnceLock<Reaper> = OnceLock::new();
        R.get_or_init(Reaper::default)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The exit code of `pid` (a child of this process), once it is reaped: the code, or
    /// 128+signal. Call right after starting it; an earlier exit is delivered too.
    pub fn watch(&self, pid: u32) -> Receiver<i32> {
        let (tx, rx) = channel();
        let pid = i32::try_from(pid).unwrap_or(i32::MAX);
        let mut s = self.lock();
        if let Some(i) = s.unclaimed.iter().position(|(p, _)| *p == pid) {
            if let Some((_, code)) = s.unclaimed.remove(i) {
                let _ = tx.send(code);
            }
            return rx;
        }
        s.waiters.insert(pid, tx);
        rx
    }

    /// Reap every exited child without blocking and deliver the codes. Returns false once
    /// this process has no children at all.
    pub fn reap(&self) -> bool {
        loop {
            let (pid, code) = match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) => return true,
                Ok(WaitStatus::Exited(pid, code)) => (pid, code),
                Ok(WaitStatus::Signaled(pid, sig, _)) => (pid, 128 + sig as i32),
                Ok(_) => continue,
                Err(Errno::EINTR) => continue,
                Err(_) => return false, // ECHILD: nothing left to reap
            };
            self.deliver(pid.as_raw(), code);
        }
    }

    fn deliver(&self, pid: i32, code: i32) {
        let mut s = self.lock();
        match s.waiters.remove(&pid) {
            Some(tx) => {
                let _ = tx.send(code);
            }
            None => {
                if s.unclaimed.len() == UNCLAIMED_KEPT {
                    s.unclaimed.pop_front();
                }
                s.unclaimed.push_back((pid, code));
            }
        }
    }
}
