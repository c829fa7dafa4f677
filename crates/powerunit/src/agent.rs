//! The agent channel: the virtio-serial port named `org.pitwall.agent`, carrying
//! length-delimited `AgentRequest`s from the host and `AgentEvent`s to it.
//!
//! Behaviour of a virtio-serial port that shapes this code: while the host side is not
//! connected, `read` returns 0 at once and `poll` reports `POLLHUP`, and a write would block
//! until the host connects. So the port is opened non-blocking, the reader sleeps briefly on
//! "host gone" (and forgets any partial frame), and a write gives up when the host is not
//! there: the host always sends `Ping` when it (re)connects and gets the current status.

use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, Read, Write};
use std::os::fd::AsFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use pitwall_proto::v1::{
    agent_event, agent_request, AgentEvent, AgentRequest, GuestStatus, LogData, ReadLog,
    ServiceList, ServiceState,
};
use prost::Message;

use crate::exec;
use crate::wire::FrameReader;

/// How long sending an exec's result may take (up to 2 MiB of output over the port).
const RESULT_SEND_TIMEOUT: Duration = Duration::from_secs(30);

/// The virtio-serial port name the host's VMM driver creates.
pub const PORT_NAME: &str = "org.pitwall.agent";

/// What the agent asks the supervisor (the main thread) to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Shutdown { grace: Duration },
}

/// The `/dev` node of the virtio port named `name`, waiting up to `timeout` for the driver
/// to register it and devtmpfs to create the node.
pub fn find_port(
    sys_class: &Path,
    dev_dir: &Path,
    name: &str,
    timeout: Duration,
) -> Option<PathBuf> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(entries) = std::fs::read_dir(sys_class) {
            for entry in entries.flatten() {
                let port_name =
                    std::fs::read_to_string(entry.path().join("name")).unwrap_or_default();
                if port_name.trim_end() == name {
                    let dev = dev_dir.join(entry.file_name());
                    if dev.exists() {
                        return Some(dev);
                    }
                }
            }
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// What the agent answers from, kept current by the supervisor.
#[derive(Debug, Default)]
pub struct Api {
    /// The services' states, as `ListServices` reports them.
    pub services: Arc<Mutex<Vec<ServiceState>>>,
    /// Set once the root is switched: before that, `Exec` has nothing to run in.
    pub exec: OnceLock<exec::Context>,
}

/// The open agent port, shared by the serving thread and the supervisor.
#[derive(Debug)]
pub struct AgentPort {
    file: File,
    write: Mutex<()>,
}

impl AgentPort {
    pub fn open(path: &Path) -> std::io::Result<Self> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(nix::libc::O_NONBLOCK | nix::libc::O_NOCTTY)
            .open(path)?;
        Ok(Self {
            file,
            write: Mutex::new(()),
        })
    }

    /// Send one event, giving up after `timeout` or at once when the host is not connected.
    pub fn send(&self, event: &AgentEvent, timeout: Duration) -> std::io::Result<()> {
        let frame = event.encode_length_delimited_to_vec();
        let _guard = self.write.lock().unwrap_or_else(|p| p.into_inner());
        let deadline = Instant::now() + timeout;
        let mut rest = &frame[..];
        while !rest.is_empty() {
            match (&self.file).write(rest) {
                Ok(0) => return Err(ErrorKind::WriteZero.into()),
                Ok(n) => rest = &rest[n..],
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    if Instant::now() >= deadline {
                        return Err(ErrorKind::TimedOut.into());
                    }
                    let revents = self.wait(PollFlags::POLLOUT, 100);
                    if revents.contains(PollFlags::POLLHUP) && !revents.contains(PollFlags::POLLOUT)
                    {
                        return Err(ErrorKind::NotConnected.into());
                    }
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Send the current status.
    pub fn send_status(&self, status: &GuestStatus) -> std::io::Result<()> {
        let event = AgentEvent {
            reply_to: 0,
            event: Some(agent_event::Event::Status(status.clone())),
        };
        self.send(&event, Duration::from_secs(2))
    }

    fn wait(&self, events: PollFlags, timeout_ms: u16) -> PollFlags {
        let mut fds = [PollFd::new(self.file.as_fd(), events)];
        match poll(&mut fds, PollTimeout::from(timeout_ms)) {
            Ok(n) if n > 0 => fds[0].revents().unwrap_or(PollFlags::empty()),
            _ => PollFlags::empty(),
        }
    }

    /// Serve requests until the process ends: `Ping` is answered with the status,
    /// `Shutdown` is handed to the supervisor, `ListServices` answered from `api`, each
    /// `Exec` run on a thread of its own.
    pub fn serve(
        self: Arc<Self>,
        status: Arc<Mutex<GuestStatus>>,
        commands: Sender<Command>,
        api: Arc<Api>,
    ) {
        let mut frames = FrameReader::default();
        let mut buf = [0u8; 4096];
        loop {
            let revents = self.wait(PollFlags::POLLIN, 1000);
            if revents.is_empty() {
                continue;
            }
            match (&self.file).read(&mut buf) {
                Ok(0) => {
                    // The host is not connected: nothing to read until it comes (back).
                    frames.reset();
                    std::thread::sleep(Duration::from_millis(200));
                }
                Ok(n) => {
                    frames.push(&buf[..n]);
                    self.drain(&mut frames, &status, &commands, &api);
                }
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::Interrupted) => {}
                Err(e) => {
                    crate::say!("agent port: read: {e}");
                    std::thread::sleep(Duration::from_secs(1));
                }
            }
        }
    }

    fn drain(
        self: &Arc<Self>,
        frames: &mut FrameReader,
        status: &Mutex<GuestStatus>,
        commands: &Sender<Command>,
        api: &Arc<Api>,
    ) {
        loop {
            match frames.next_frame::<AgentRequest>() {
                Ok(None) => return,
                Ok(Some(req)) => match req.request {
                    Some(agent_request::Request::Ping(_)) => {
                        let snapshot = status.lock().unwrap_or_else(|p| p.into_inner()).clone();
                        let _ = self.send_status(&snapshot);
                    }
                    Some(agent_request::Request::Shutdown(s)) => {
                        let grace = Duration::from_millis(u64::from(s.grace_ms));
                        let _ = commands.send(Command::Shutdown { grace });
                    }
                    Some(agent_request::Request::ListServices(_)) => {
                        let services = api
                            .services
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .clone();
                        let answer = agent_event::Event::Services(ServiceList { services });
                        let _ = self.reply(req.id, answer, Duration::from_secs(2));
                    }
                    Some(agent_request::Request::Exec(x)) => self.exec(req.id, x, api),
                    Some(agent_request::Request::ReadLog(r)) => {
                        let answer = read_log(&api.services, &r);
                        let _ = self.reply(req.id, answer, RESULT_SEND_TIMEOUT);
                    }
                    None => {}
                },
                Err(e) => {
                    crate::say!("agent port: {e}; dropping buffered input");
                    frames.reset();
                    return;
                }
            }
        }
    }
}

impl AgentPort {
    fn reply(&self, id: u64, event: agent_event::Event, timeout: Duration) -> std::io::Result<()> {
        let answer = AgentEvent {
            reply_to: id,
            event: Some(event),
        };
        self.send(&answer, timeout)
    }

    /// Run `x` on a thread of its own and answer with its result or why it did not run.
    fn exec(self: &Arc<Self>, id: u64, x: pitwall_proto::v1::Exec, api: &Arc<Api>) {
        let (port, api) = (self.clone(), api.clone());
        let spawned = std::thread::Builder::new()
            .name("exec".into())
            .spawn(move || {
                let answer = match api.exec.get() {
                    None => agent_event::Event::Error("the guest is not ready yet".into()),
                    Some(ctx) => match exec::run(ctx, &x) {
                        Ok(result) => agent_event::Event::ExecResult(result),
                        Err(e) => agent_event::Event::Error(e.0),
                    },
                };
                if let Err(e) = port.reply(id, answer, RESULT_SEND_TIMEOUT) {
                    crate::say!("agent port: exec result: {e}");
                }
            });
        if let Err(e) = spawned {
            let why = format!("cannot start a thread for exec: {e}");
            let _ = self.reply(id, agent_event::Event::Error(why), Duration::from_secs(2));
        }
    }
}

/// Most bytes of log one answer carries (the host reads frames of up to 4 MiB).
const MAX_LOG_ANSWER: u32 = 3 << 20;

/// The tail of a declared service's log (empty name: the first service), or why not.
fn read_log(services: &Mutex<Vec<ServiceState>>, r: &ReadLog) -> agent_event::Event {
    let names: Vec<String> = services
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
        .map(|s| s.name.clone())
        .collect();
    let service = if r.service.is_empty() {
        match names.first() {
            Some(n) => n.clone(),
            None => return agent_event::Event::Error("no service runs yet".into()),
        }
    } else if names.contains(&r.service) {
        r.service.clone()
    } else {
        return agent_event::Event::Error(format!(
            "no service {:?} in this VM; its services: {}",
            r.service,
            names.join(", ")
        ));
    };
    let max = r.max_bytes.clamp(1, MAX_LOG_ANSWER);
    match crate::logs::tail(Path::new(crate::logs::LOG_DIR), &service, u64::from(max)) {
        Ok((data, truncated)) => agent_event::Event::Log(LogData {
            service,
            data,
            truncated,
        }),
        Err(e) => agent_event::Event::Error(format!("cannot read the log of {service}: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_port_is_found_by_its_name_not_its_number() {
        let dir = tempfile::tempdir().unwrap();
        let sys = dir.path().join("class");
        let dev = dir.path().join("dev");
        std::fs::create_dir_all(&dev).unwrap();
        for (port, name) in [("vport0p1", "org.other"), ("vport0p2", PORT_NAME)] {
            std::fs::create_dir_all(sys.join(port)).unwrap();
            std::fs::write(sys.join(port).join("name"), format!("{name}\n")).unwrap();
            std::fs::write(dev.join(port), "").unwrap();
        }
        let found = find_port(&sys, &dev, PORT_NAME, Duration::ZERO);
        assert_eq!(found, Some(dev.join("vport0p2")));
    }

    #[test]
    fn no_port_is_none_after_the_timeout() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(
            find_port(dir.path(), dir.path(), PORT_NAME, Duration::from_millis(60)),
            None
        );
    }
}
