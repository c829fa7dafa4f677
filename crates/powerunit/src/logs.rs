//! The services' output: one thread polls the read ends of every service's output pipe
//! (stdout and stderr share one pipe per run, so their lines keep their order), writes each
//! line to the console prefixed with the service's name (`web| listening on :80`) and
//! appends it to `/var/log/pitwall/NAME.log`, which is rotated to `NAME.log.1` once it would
//! grow past [`LOG_CAP`].
//!
//! Nothing is lost at exit: the supervisor calls [`Logger::drain`] after a service's process
//! ended and before it reports the exit; the thread then reads that service's pipes until
//! they are empty (or closed) and answers. Written by hand: a poll loop over a handful of
//! pipes is smaller than any logging crate that would fit a static PID 1.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{channel, Receiver, Sender, TryRecvError};
use std::sync::Arc;
use std::time::Duration;

use nix::fcntl::{fcntl, FcntlArg, OFlag};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

/// Where the services' log files live in the guest.
pub const LOG_DIR: &str = "/var/log/pitwall";
/// A log file is rotated to `NAME.log.1` before it grows past this.
pub const LOG_CAP: u64 = 4 << 20;
/// A line longer than this is cut into pieces of this size.
const MAX_LINE: usize = 16 << 10;
/// How long the thread sleeps in `poll` at most (requests wake it at once).
const POLL_MS: u16 = 1000;

/// Splits a byte stream into lines (without their `\n`).
#[derive(Debug, Default)]
pub struct LineSplitter {
    partial: Vec<u8>,
}

impl LineSplitter {
    /// Add `bytes`; returns the lines they completed.
    pub fn push(&mut self, bytes: &[u8]) -> Vec<Vec<u8>> {
        let mut lines = Vec::new();
        for &b in bytes {
            if b == b'\n' {
                lines.push(std::mem::take(&mut self.partial));
            } else {
                self.partial.push(b);
                if self.partial.len() >= MAX_LINE {
                    lines.push(std::mem::take(&mut self.partial));
                }
            }
        }
        lines
    }

    /// The unterminated rest, at the end of the stream.
    pub fn finish(&mut self) -> Option<Vec<u8>> {
        (!self.partial.is_empty()).then(|| std::mem::take(&mut self.partial))
    }
}

/// `name| line\n`, as a service's line appears on the console.
pub fn prefixed(name: &str, line: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(name.len() + line.len() + 3);
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b"| ");
    out.extend_from_slice(line);
    out.push(b'\n');
    out
}

/// An append-only log file rotated to `PATH.1` when it would grow past `cap`.
#[derive(Debug)]
pub struct LogFile {
    path: PathBuf,
    cap: u64,
    file: Option<File>,
    size: u64,
}

impl LogFile {
    pub fn new(path: PathBuf, cap: u64) -> Self {
        Self {
            path,
            cap,
            file: None,
            size: 0,
        }
    }

    fn open(&mut self) -> std::io::Result<&mut File> {
        if self.file.is_none() {
            if let Some(dir) = self.path.parent() {
                std::fs::create_dir_all(dir)?;
            }
            let f = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.path)?;
            self.size = f.metadata()?.len();
            self.file = Some(f);
        }
        // Just set when it was None.
        self.file.as_mut().ok_or_else(|| ErrorKind::NotFound.into())
    }

    /// Append one line (a `\n` is added).
    pub fn write_line(&mut self, line: &[u8]) -> std::io::Result<()> {
        let len = line.len() as u64 + 1;
        self.open()?;
        if self.size > 0 && self.size + len > self.cap {
            self.file = None;
            let mut old = self.path.clone().into_os_string();
            old.push(".1");
            std::fs::rename(&self.path, old)?;
            self.open()?;
        }
        let f = self.open()?;
        let mut buf = Vec::with_capacity(line.len() + 1);
        buf.extend_from_slice(line);
        buf.push(b'\n');
        f.write_all(&buf)?;
        self.size += len;
        Ok(())
    }
}

enum Request {
    Add { service: String, pipe: OwnedFd },
    Drain { service: String, done: Sender<()> },
}

/// The handle of the output thread.
#[derive(Clone)]
pub struct Logger {
    requests: Sender<Request>,
    /// Written after each request: wakes the thread from `poll`.
    wake: Arc<OwnedFd>,
}

struct Pipe {
    service: String,
    fd: OwnedFd,
    lines: LineSplitter,
}

impl Logger {
    /// Start the thread; `dir` holds the log files, `console` gets the prefixed lines.
    pub fn start(dir: PathBuf, console: Box<dyn Write + Send>) -> std::io::Result<Self> {
        let (tx, rx) = channel();
        let (woken, wake) = nix::unistd::pipe2(OFlag::O_CLOEXEC | OFlag::O_NONBLOCK)?;
        std::thread::Builder::new()
            .name("logs".into())
            .spawn(move || Output::new(dir, console).run(rx, woken))?;
        Ok(Self {
            requests: tx,
            wake: Arc::new(wake),
        })
    }

    fn send(&self, request: Request) -> bool {
        let sent = self.requests.send(request).is_ok();
        // A full wake pipe already wakes the thread: nothing to do on EAGAIN.
        let _ = nix::unistd::write(&*self.wake, &[1]);
        sent
    }

    /// Read `pipe` (the read end of a run of `service`) until it closes.
    pub fn add(&self, service: &str, pipe: OwnedFd) {
        let _ = fcntl(&pipe, FcntlArg::F_SETFL(OFlag::O_NONBLOCK));
        self.send(Request::Add {
            service: service.to_string(),
            pipe,
        });
    }

    /// Wait (up to `timeout`) until everything written so far to `service`'s pipes is out.
    pub fn drain(&self, service: &str, timeout: Duration) {
        let (done, wait) = channel();
        let sent = self.send(Request::Drain {
            service: service.to_string(),
            done,
        });
        if sent {
            let _ = wait.recv_timeout(timeout);
        }
    }
}

struct Output {
    dir: PathBuf,
    console: Box<dyn Write + Send>,
    files: HashMap<String, LogFile>,
    pipes: Vec<Pipe>,
}

impl Output {
    fn new(dir: PathBuf, console: Box<dyn Write + Send>) -> Self {
        Self {
            dir,
            console,
            files: HashMap::new(),
            pipes: Vec::new(),
        }
    }

    fn run(mut self, requests: Receiver<Request>, woken: OwnedFd) {
        loop {
            loop {
                match requests.try_recv() {
                    Ok(Request::Add { service, pipe }) => self.pipes.push(Pipe {
                        service,
                        fd: pipe,
                        lines: LineSplitter::default(),
                    }),
                    Ok(Request::Drain { service, done }) => {
                        for i in 0..self.pipes.len() {
                            if self.pipes[i].service == service {
                                self.read(i);
                            }
                        }
                        self.close_finished();
                        let _ = done.send(());
                    }
                    Err(TryRecvError::Empty) => break,
                    // Only when powerunit itself is going away.
                    Err(TryRecvError::Disconnected) => return,
                }
            }
            let ready: Vec<bool> = {
                // The wake pipe first, then the services' pipes.
                let mut fds: Vec<PollFd<'_>> = std::iter::once(&woken)
                    .chain(self.pipes.iter().map(|p| &p.fd))
                    .map(|fd| PollFd::new(fd.as_fd(), PollFlags::POLLIN))
                    .collect();
                if poll(&mut fds, PollTimeout::from(POLL_MS)).unwrap_or(0) <= 0 {
                    continue;
                }
                fds.iter()
                    .map(|f| !f.revents().unwrap_or(PollFlags::empty()).is_empty())
                    .collect()
            };
            if ready[0] {
                let mut sink = [0u8; 64];
                while matches!(nix::unistd::read(&woken, &mut sink), Ok(n) if n > 0) {}
            }
            for (i, r) in ready.into_iter().skip(1).enumerate() {
                if r {
                    self.read(i);
                }
            }
            self.close_finished();
        }
    }

    /// Read pipe `i` until it is empty; at its end, mark it finished (an empty service name).
    fn read(&mut self, i: usize) {
        let mut buf = [0u8; 8192];
        loop {
            let pipe = &mut self.pipes[i];
            match nix::unistd::read(&pipe.fd, &mut buf) {
                Ok(0) => {
                    let rest = pipe.lines.finish();
                    let service = std::mem::take(&mut pipe.service);
                    if let Some(line) = rest {
                        self.emit(&service, &line);
                    }
                    return;
                }
                Ok(n) => {
                    let lines = pipe.lines.push(&buf[..n]);
                    let service = pipe.service.clone();
                    for line in lines {
                        self.emit(&service, &line);
                    }
                }
                Err(nix::errno::Errno::EINTR) => {}
                Err(_) => return, // EAGAIN: empty for now
            }
        }
    }

    fn close_finished(&mut self) {
        self.pipes.retain(|p| !p.service.is_empty());
    }

    fn emit(&mut self, service: &str, line: &[u8]) {
        let _ = self.console.write_all(&prefixed(service, line));
        let _ = self.console.flush();
        let dir = &self.dir;
        let file = self
            .files
            .entry(service.to_string())
            .or_insert_with(|| LogFile::new(log_path(dir, service), LOG_CAP));
        let _ = file.write_line(line);
    }
}

/// `DIR/NAME.log`.
pub fn log_path(dir: &Path, service: &str) -> PathBuf {
    dir.join(format!("{service}.log"))
}

/// The last `max` bytes of a service's log: the end of `NAME.log.1` (the rotated part)
/// followed by `NAME.log`; true when older bytes were left out. Missing files are empty (a
/// service that wrote nothing yet has none).
pub fn tail(dir: &Path, service: &str, max: u64) -> std::io::Result<(Vec<u8>, bool)> {
    use std::io::{Read, Seek, SeekFrom};
    let current = log_path(dir, service);
    let mut rotated = current.clone().into_os_string();
    rotated.push(".1");
    let mut out = Vec::new();
    let mut left = max;
    let mut truncated = false;
    // Newest first, then prepend the older part.
    for path in [current, PathBuf::from(rotated)] {
        if left == 0 {
            truncated |= std::fs::metadata(&path).is_ok_and(|m| m.len() > 0);
            break;
        }
        let mut f = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        let len = f.metadata()?.len();
        let take = len.min(left);
        f.seek(SeekFrom::Start(len - take))?;
        let mut part = Vec::with_capacity(usize::try_from(take).unwrap_or(0));
        f.take(take).read_to_end(&mut part)?;
        part.extend_from_slice(&out);
        out = part;
        left -= take;
        truncated |= take < len;
    }
    Ok((out, truncated))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[test]
    fn a_tail_spans_the_rotated_log_and_says_when_it_left_something_out() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        assert_eq!(tail(d, "web", 100).unwrap(), (vec![], false), "no log yet");
        std::fs::write(d.join("web.log.1"), b"old1\nold2\n").unwrap();
        std::fs::write(d.join("web.log"), b"new1\n").unwrap();
        assert_eq!(
            tail(d, "web", 100).unwrap(),
            (b"old1\nold2\nnew1\n".to_vec(), false)
        );
        assert_eq!(
            tail(d, "web", 10).unwrap(),
            (b"old2\nnew1\n".to_vec(), true)
        );
        assert_eq!(tail(d, "web", 5).unwrap(), (b"new1\n".to_vec(), true));
        assert_eq!(tail(d, "web", 3).unwrap(), (b"w1\n".to_vec(), true));
    }

    #[test]
    fn lines_are_split_across_chunks_and_the_rest_comes_at_the_end() {
        let mut s = LineSplitter::default();
        assert_eq!(s.push(b"one\ntw"), vec![b"one".to_vec()]);
        assert_eq!(s.push(b"o\n\nthr"), vec![b"two".to_vec(), b"".to_vec()]);
        assert_eq!(s.finish(), Some(b"thr".to_vec()));
        assert_eq!(s.finish(), None);
    }

    #[test]
    fn console_lines_carry_the_service_name() {
        assert_eq!(prefixed("web", b"listening"), b"web| listening\n");
    }

    #[test]
    fn the_log_rotates_to_dot_one_before_passing_its_cap() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/web.log");
        let mut log = LogFile::new(path.clone(), 10);
        log.write_line(b"aaaa").unwrap(); // 5 bytes
        log.write_line(b"bbbb").unwrap(); // 10: still fits
        log.write_line(b"cc").unwrap(); // would be 13: rotate first
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "cc\n");
        let old = dir.path().join("sub/web.log.1");
        assert_eq!(std::fs::read_to_string(&old).unwrap(), "aaaa\nbbbb\n");
        // A reopened log continues from the file's size, and rotation replaces `.1`.
        let mut log = LogFile::new(path.clone(), 10);
        log.write_line(b"dddddd").unwrap(); // 3 + 7 = 10
        log.write_line(b"e").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "e\n");
        assert_eq!(std::fs::read_to_string(&old).unwrap(), "cc\ndddddd\n");
    }

    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);
    impl Write for Shared {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_pipes_output_reaches_console_and_log_once_drained() {
        let dir = tempfile::tempdir().unwrap();
        let console = Shared::default();
        let logger = Logger::start(dir.path().to_path_buf(), Box::new(console.clone())).unwrap();
        let (r, w) = nix::unistd::pipe2(OFlag::O_CLOEXEC).unwrap();
        let mut w = File::from(w);
        logger.add("web", r);
        w.write_all(b"hello\nno newline").unwrap();
        drop(w);
        logger.drain("web", Duration::from_secs(5));
        let shown = String::from_utf8(console.0.lock().unwrap().clone()).unwrap();
        assert_eq!(shown, "web| hello\nweb| no newline\n");
        let log = std::fs::read_to_string(dir.path().join("web.log")).unwrap();
        assert_eq!(log, "hello\nno newline\n");
    }
}
