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
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use pitwall_proto::v1::{agent_event, agent_request, AgentEvent, AgentRequest, GuestStatus};
use prost::Message;

use crate::wire::FrameReader;

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
    /// `Shutdown` is handed to the supervisor.
    pub fn serve(self: Arc<Self>, status: Arc<Mutex<GuestStatus>>, commands: Sender<Command>) {
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
                    self.drain(&mut frames, &status, &commands);
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
        &self,
        frames: &mut FrameReader,
        status: &Mutex<GuestStatus>,
        commands: &Sender<Command>,
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
                    Some(
                        agent_request::Request::ListServices(_)
                        | agent_request::Request::Exec(_)
                        | agent_request::Request::ReadLog(_),
                    ) => {
                        let answer = AgentEvent {
                            reply_to: req.id,
                            event: Some(agent_event::Event::Error(
                                "this powerunit does not serve that request yet".into(),
                            )),
                        };
                        let _ = self.send(&answer, Duration::from_secs(2));
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
