//! One session channel: gathers its pty and env requests, then runs a shell, a command or
//! the SFTP subsystem for the login user, and copies bytes both ways until the process ended
//! and its output is drained; then exit-status (or exit-signal when the client's signal
//! killed it), EOF, close.

use std::ffi::OsString;
use std::os::fd::{AsRawFd as _, OwnedFd, RawFd};
use std::os::unix::process::CommandExt as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use bytes::Bytes;
use nix::fcntl::{fcntl, FcntlArg, OFlag};
use nix::pty::{openpty, Winsize};
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use russh::server::{Handle, Msg};
use russh::{Channel, ChannelMsg, Sig};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::unix::pipe;
use tokio::sync::mpsc;

use crate::reaper::Reaper;
use crate::say;
use crate::workload::{PasswdEntry, DEFAULT_PATH};

struct Pty {
    term: String,
    size: Winsize,
}

/// Serve one session channel to its end.
pub async fn run(mut channel: Channel<Msg>, user: PasswdEntry, handle: Handle) {
    let mut pty = None;
    let mut env = Vec::new();
    loop {
        match channel.wait().await {
            Some(ChannelMsg::RequestPty {
                term,
                col_width,
                row_height,
                pix_width,
                pix_height,
                ..
            }) => {
                pty = Some(Pty {
                    term,
                    size: winsize(col_width, row_height, pix_width, pix_height),
                })
            }
            Some(ChannelMsg::SetEnv {
                variable_name,
                variable_value,
                ..
            }) => env.push((variable_name, variable_value)),
            Some(ChannelMsg::RequestShell { .. }) => {
                return process(channel, &user, None, pty, env, handle).await
            }
            Some(ChannelMsg::Exec { command, .. }) => {
                let command = String::from_utf8_lossy(&command).into_owned();
                return process(channel, &user, Some(command), pty, env, handle).await;
            }
            Some(ChannelMsg::RequestSubsystem { name, .. }) if name == "sftp" => {
                return super::sftp::serve(channel, user).await;
            }
            Some(ChannelMsg::Close) | None => return,
            Some(_) => {}
        }
    }
}

fn winsize(cols: u32, rows: u32, pw: u32, ph: u32) -> Winsize {
    let c = |v: u32| u16::try_from(v).unwrap_or(u16::MAX);
    Winsize {
        ws_row: c(rows),
        ws_col: c(cols),
        ws_xpixel: c(pw),
        ws_ypixel: c(ph),
    }
}

/// The login shell of `user` (`/bin/sh` when the passwd entry names none).
pub fn shell_of(user: &PasswdEntry) -> &str {
    if user.shell.is_empty() {
        "/bin/sh"
    } else {
        &user.shell
    }
}

/// The command for the shell or `command`, as `user`, in its home.
fn command(
    user: &PasswdEntry,
    cmdline: Option<&str>,
    term: Option<&str>,
    env: &[(String, String)],
) -> Command {
    let shell = shell_of(user);
    let mut cmd = Command::new(shell);
    match cmdline {
        Some(c) => {
            cmd.arg("-c").arg(c);
        }
        None => {
            // A login shell: argv[0] starts with '-'.
            let base = Path::new(shell)
                .file_name()
                .map_or_else(|| OsString::from("sh"), |b| b.to_owned());
            let mut arg0 = OsString::from("-");
            arg0.push(base);
            cmd.arg0(arg0);
        }
    }
    let home = if Path::new(&user.home).is_dir() {
        user.home.as_str()
    } else {
        "/"
    };
    cmd.env_clear()
        .env("PATH", DEFAULT_PATH)
        .env("HOME", home)
        .env("USER", &user.name)
        .env("LOGNAME", &user.name)
        .env("SHELL", shell)
        .current_dir(home);
    if let Some(t) = term {
        cmd.env("TERM", t);
    }
    cmd.envs(env.iter().map(|(k, v)| (k, v)));
    if nix::unistd::geteuid().as_raw() == 0 {
        cmd.uid(user.uid).gid(user.gid);
    }
    cmd
}

/// The child's end of the session: a new session, and the pty (its stdin) as the
/// controlling terminal when there is one.
#[allow(unsafe_code)]
fn pre_exec(cmd: &mut Command, ctty: bool) {
    // SAFETY: runs in the forked child before exec; setsid(2) and ioctl(2) are
    // async-signal-safe, nothing is allocated and no lock is taken.
    unsafe {
        cmd.pre_exec(move || {
            nix::unistd::setsid().map_err(std::io::Error::from)?;
            if ctty && nix::libc::ioctl(0, nix::libc::TIOCSCTTY, 0) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

#[allow(unsafe_code)]
fn set_winsize(fd: RawFd, size: &Winsize) {
    // SAFETY: TIOCSWINSZ reads one `struct winsize` from the pointer, which is valid for
    // the call; `fd` is the pty master this session owns.
    unsafe {
        nix::libc::ioctl(fd, nix::libc::TIOCSWINSZ, std::ptr::from_ref(size));
    }
}

fn nonblocking(fd: &OwnedFd) -> std::io::Result<()> {
    let flags = OFlag::from_bits_truncate(fcntl(fd, FcntlArg::F_GETFL)?);
    fcntl(fd, FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK))?;
    Ok(())
}

fn reader(fd: OwnedFd) -> std::io::Result<pipe::Receiver> {
    nonblocking(&fd)?;
    pipe::Receiver::from_owned_fd_unchecked(fd)
}

fn writer(fd: OwnedFd) -> std::io::Result<pipe::Sender> {
    nonblocking(&fd)?;
    pipe::Sender::from_owned_fd_unchecked(fd)
}

/// The running process's ends.
struct Ends {
    pid: u32,
    input: Option<pipe::Sender>,
    out: pipe::Receiver,
    err: Option<pipe::Receiver>,
    /// The pty master, for window changes.
    master: Option<OwnedFd>,
}

fn spawn(
    user: &PasswdEntry,
    cmdline: Option<&str>,
    pty: Option<&Pty>,
    env: &[(String, String)],
) -> std::io::Result<Ends> {
    let mut cmd = command(user, cmdline, pty.map(|p| p.term.as_str()), env);
    pre_exec(&mut cmd, pty.is_some());
    match pty {
        Some(p) => {
            let pair = openpty(Some(&p.size), None).map_err(std::io::Error::from)?;
            cmd.stdin(Stdio::from(pair.slave.try_clone()?))
                .stdout(Stdio::from(pair.slave.try_clone()?))
                .stderr(Stdio::from(pair.slave));
            let child = cmd.spawn()?;
            // Drop the parent's copies of the slave (inside `cmd`) so EOF shows on the master.
            drop(cmd);
            let master = pair.master;
            Ok(Ends {
                pid: child.id(),
                input: Some(writer(master.try_clone()?)?),
                out: reader(master.try_clone()?)?,
                err: None,
                master: Some(master),
            })
        }
        None => {
            cmd.stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped());
            let mut child = cmd.spawn()?;
            let pid = child.id();
            let (Some(i), Some(o), Some(e)) =
                (child.stdin.take(), child.stdout.take(), child.stderr.take())
            else {
                return Err(std::io::Error::other("child pipes missing"));
            };
            Ok(Ends {
                pid,
                input: Some(writer(OwnedFd::from(i))?),
                out: reader(OwnedFd::from(o))?,
                err: Some(reader(OwnedFd::from(e))?),
                master: None,
            })
        }
    }
}

fn signal_of(sig: &Sig) -> Option<Signal> {
    Some(match sig {
        Sig::ABRT => Signal::SIGABRT,
        Sig::ALRM => Signal::SIGALRM,
        Sig::FPE => Signal::SIGFPE,
        Sig::HUP => Signal::SIGHUP,
        Sig::ILL => Signal::SIGILL,
        Sig::INT => Signal::SIGINT,
        Sig::KILL => Signal::SIGKILL,
        Sig::PIPE => Signal::SIGPIPE,
        Sig::QUIT => Signal::SIGQUIT,
        Sig::SEGV => Signal::SIGSEGV,
        Sig::TERM => Signal::SIGTERM,
        Sig::USR1 => Signal::SIGUSR1,
        Sig::Custom(_) => return None,
    })
}

fn sig_of(signal: Signal) -> Sig {
    match signal {
        Signal::SIGABRT => Sig::ABRT,
        Signal::SIGALRM => Sig::ALRM,
        Signal::SIGFPE => Sig::FPE,
        Signal::SIGHUP => Sig::HUP,
        Signal::SIGILL => Sig::ILL,
        Signal::SIGINT => Sig::INT,
        Signal::SIGKILL => Sig::KILL,
        Signal::SIGPIPE => Sig::PIPE,
        Signal::SIGQUIT => Sig::QUIT,
        Signal::SIGSEGV => Sig::SEGV,
        Signal::SIGTERM => Sig::TERM,
        Signal::SIGUSR1 => Sig::USR1,
        s => Sig::Custom(s.as_str().trim_start_matches("SIG").to_string()),
    }
}

async fn read_some(r: &mut pipe::Receiver, buf: &mut [u8]) -> usize {
    // A pty master reads EIO once the last slave is closed: that is its end of file.
    r.read(buf).await.unwrap_or(0)
}

/// Run a shell or `cmdline` and pump the channel until it ends.
async fn process(
    channel: Channel<Msg>,
    user: &PasswdEntry,
    cmdline: Option<String>,
    pty: Option<Pty>,
    env: Vec<(String, String)>,
    handle: Handle,
) {
    let id = channel.id();
    let (mut from_client, to_client) = channel.split();
    let ends = match spawn(user, cmdline.as_deref(), pty.as_ref(), &env) {
        Ok(e) => e,
        Err(e) => {
            say!("ssh: {}: cannot start {}: {e}", user.name, shell_of(user));
            let msg = format!("cannot start {}: {e}\r\n", shell_of(user));
            let _ = to_client.extended_data_bytes(1, Bytes::from(msg)).await;
            let _ = to_client.exit_status(127).await;
            let _ = to_client.eof().await;
            let _ = to_client.close().await;
            return;
        }
    };
    let Ends {
        pid,
        input,
        mut out,
        mut err,
        master,
    } = ends;
    let exited = Reaper::global().watch(pid);
    let mut exited = tokio::task::spawn_blocking(move || exited.recv().unwrap_or(255));
    let group = Pid::from_raw(i32::try_from(pid).unwrap_or(i32::MAX));

    // Input goes through its own task so a child that does not read cannot stall its output.
    let (in_tx, mut in_rx) = mpsc::unbounded_channel::<Option<Bytes>>();
    let is_pty = master.is_some();
    tokio::spawn(async move {
        let Some(mut input) = input else { return };
        while let Some(Some(data)) = in_rx.recv().await {
            if input.write_all(&data).await.is_err() {
                return;
            }
        }
        // EOF from the client: close a pipe; on a pty, send the terminal's EOF character.
        if is_pty {
            let _ = input.write_all(b"\x04").await;
        }
    });

    let mut out_buf = vec![0u8; 32 * 1024];
    let mut err_buf = vec![0u8; 32 * 1024];
    let mut out_open = true;
    let mut client_open = true;
    let mut code = None;
    let mut signalled = None;
    loop {
        if code.is_some() && !out_open && err.is_none() {
            break;
        }
        // After the process ended, its pty output is drained until it pauses: a background
        // process keeping the pty open must not keep the session.
        let draining = code.is_some() && is_pty;
        let drain = async move {
            if draining {
                tokio::time::sleep(Duration::from_millis(200)).await;
            } else {
                std::future::pending::<()>().await;
            }
        };
        tokio::select! {
            n = read_some(&mut out, &mut out_buf), if out_open => {
                if n == 0 || to_client.data_bytes(Bytes::copy_from_slice(&out_buf[..n])).await.is_err() {
                    out_open = false;
                }
            }
            n = read_opt(err.as_mut(), &mut err_buf), if err.is_some() => {
                if n == 0 || to_client
                    .extended_data_bytes(1, Bytes::copy_from_slice(&err_buf[..n]))
                    .await
                    .is_err()
                {
                    err = None;
                }
            }
            msg = from_client.wait(), if client_open => match msg {
                Some(ChannelMsg::Data { data }) => {
                    let _ = in_tx.send(Some(data));
                }
                Some(ChannelMsg::Eof) => {
                    let _ = in_tx.send(None);
                }
                Some(ChannelMsg::WindowChange { col_width, row_height, pix_width, pix_height }) => {
                    if let Some(m) = &master {
                        set_winsize(m.as_raw_fd(), &winsize(col_width, row_height, pix_width, pix_height));
                    }
                }
                Some(ChannelMsg::Signal { signal }) => {
                    if let Some(s) = signal_of(&signal) {
                        signalled = Some(s);
                        let _ = killpg(group, s);
                    }
                }
                Some(ChannelMsg::Close) | None => {
                    client_open = false;
                    if code.is_none() {
                        let _ = killpg(group, Signal::SIGHUP);
                    }
                }
                Some(_) => {}
            },
            c = &mut exited, if code.is_none() => code = Some(c.unwrap_or(255)),
            () = drain, if out_open => out_open = false,
        }
    }
    drop(in_tx);
    let code = code.unwrap_or(255);
    if client_open {
        let killed = signalled.filter(|s| code == 128 + *s as i32);
        match killed {
            Some(s) => {
                let _ = handle
                    .exit_signal_request(id, sig_of(s), false, String::new(), String::new())
                    .await;
            }
            None => {
                let _ = to_client
                    .exit_status(u32::try_from(code).unwrap_or(255))
                    .await;
            }
        }
        let _ = to_client.eof().await;
        let _ = to_client.close().await;
    }
}

async fn read_opt(r: Option<&mut pipe::Receiver>, buf: &mut [u8]) -> usize {
    match r {
        Some(r) => read_some(r, buf).await,
        None => 0,
    }
}
