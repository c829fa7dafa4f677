//! The agent's `Exec`: run one command to completion, resolved like a service (PATH, user,
//! the image's environment then the request's), in its own session, with the request's
//! stdin written then closed, stdout and stderr captured up to [`OUTPUT_CAP`] each, and its
//! whole process group killed at the timeout. Runs on its own thread (the agent keeps
//! serving); the exit code comes from PID 1's [`Reaper`].

use std::io::Write;
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use nix::fcntl::{fcntl, FcntlArg, OFlag};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use pitwall_proto::v1::{Exec, ExecResult, GuestConfig};

use crate::err;
use crate::error::Result;
use crate::reaper::Reaper;
use crate::workload;

/// Each of stdout and stderr is cut to this many bytes.
pub const OUTPUT_CAP: usize = 1 << 20;
/// `Exec.timeout_ms` of 0.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);
/// After the command ended, how long its output pipes may stay open (held by something it
/// left running in the background) before the result is sent without the rest.
const LINGER: Duration = Duration::from_millis(500);
/// After the kill at the timeout, how long to wait for the exit code.
const KILL_WAIT: Duration = Duration::from_secs(5);

/// What an exec needs from the booted guest.
#[derive(Debug, Clone)]
pub struct Context {
    /// The image's environment (`GuestConfig.env`).
    pub env: Vec<String>,
    pub hostname: String,
}

/// Run `req`. Errors are the command that could not start (unknown program or user).
pub fn run(ctx: &Context, req: &Exec) -> Result<ExecResult> {
    if req.argv.is_empty() {
        return Err(err!("exec: argv is empty"));
    }
    let cfg = GuestConfig {
        argv: req.argv.clone(),
        env: workload::merge_env(&ctx.env, &req.env),
        working_dir: req.working_dir.clone(),
        user: req.user.clone(),
        ..Default::default()
    };
    let spec = workload::resolve(&cfg, Path::new("/"), &ctx.hostname)?;
    let mut cmd = workload::command(&spec);
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .map_err(|e| err!("cannot execute {}: {e}", spec.program.display()))?;
    let pid = child.id();
    let exit = Reaper::global().watch(pid);
    if let Some(mut stdin) = child.stdin.take() {
        let input = req.stdin.clone();
        // A command that does not read its stdin must not block the rest.
        let _ = std::thread::Builder::new()
            .name("exec-stdin".into())
            .spawn(move || {
                let _ = stdin.write_all(&input);
            });
    }
    let mut outputs: Vec<Output> = [
        child.stdout.take().map(OwnedFd::from),
        child.stderr.take().map(OwnedFd::from),
    ]
    .into_iter()
    .map(Output::new)
    .collect();
    drop(child); // neither waits nor kills

    let timeout = match req.timeout_ms {
        0 => DEFAULT_TIMEOUT,
        ms => Duration::from_millis(u64::from(ms)),
    };
    let deadline = Instant::now() + timeout;
    let mut code: Option<i32> = None;
    let mut ended_at: Option<Instant> = None;
    let mut timed_out = false;
    loop {
        pump(&mut outputs, 50);
        if code.is_none() {
            code = exit.try_recv().ok();
            if code.is_some() {
                ended_at = Some(Instant::now());
            }
        }
        let now = Instant::now();
        let open = outputs.iter().any(|o| o.fd.is_some());
        match (code, ended_at) {
            (Some(_), _) if !open => break,
            (Some(_), Some(t)) if now >= t + LINGER => break,
            _ => {}
        }
        if code.is_none() && now >= deadline {
            if !timed_out {
                timed_out = true;
                let pgid = i32::try_from(pid).unwrap_or(i32::MAX);
                let _ = kill(Pid::from_raw(-pgid), Signal::SIGKILL);
                let _ = kill(Pid::from_raw(pgid), Signal::SIGKILL);
            } else if now >= deadline + KILL_WAIT {
                code = Some(128 + Signal::SIGKILL as i32);
                break;
            }
        }
    }
    let [stdout, stderr] = [0, 1].map(|i| std::mem::take(&mut outputs[i].data));
    Ok(ExecResult {
        code: code.unwrap_or(128 + Signal::SIGKILL as i32),
        stdout,
        stderr,
        timed_out,
    })
}

struct Output {
    fd: Option<OwnedFd>,
    data: Vec<u8>,
}

impl Output {
    fn new(fd: Option<OwnedFd>) -> Self {
        if let Some(fd) = &fd {
            let _ = fcntl(fd, FcntlArg::F_SETFL(OFlag::O_NONBLOCK));
        }
        Self {
            fd,
            data: Vec::new(),
        }
    }
}

/// Wait up to `ms` for output and read what is there (closing pipes at their end).
fn pump(outputs: &mut [Output], ms: u16) {
    let ready: Vec<bool> = {
        let mut fds: Vec<PollFd<'_>> = Vec::new();
        let mut which = Vec::new();
        for (i, o) in outputs.iter().enumerate() {
            if let Some(fd) = &o.fd {
                fds.push(PollFd::new(fd.as_fd(), PollFlags::POLLIN));
                which.push(i);
            }
        }
        if fds.is_empty() {
            std::thread::sleep(Duration::from_millis(u64::from(ms)));
            return;
        }
        let _ = poll(&mut fds, PollTimeout::from(ms));
        let mut ready = vec![false; outputs.len()];
        for (f, i) in fds.iter().zip(which) {
            ready[i] = !f.revents().unwrap_or(PollFlags::empty()).is_empty();
        }
        ready
    };
    let mut buf = [0u8; 16 << 10];
    for (o, r) in outputs.iter_mut().zip(ready) {
        if !r {
            continue;
        }
        while let Some(fd) = &o.fd {
            match nix::unistd::read(fd, &mut buf) {
                Ok(0) => o.fd = None,
                Ok(n) => {
                    let room = OUTPUT_CAP.saturating_sub(o.data.len());
                    o.data.extend_from_slice(&buf[..n.min(room)]);
                }
                Err(nix::errno::Errno::EINTR) => {}
                Err(_) => break,
            }
        }
    }
}
