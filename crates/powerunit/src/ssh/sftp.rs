//! The SFTP subsystem over the guest's real filesystem, as the login user: each SFTP
//! session runs on a thread of its own whose filesystem uid and gid (`setfsuid`/`setfsgid`,
//! per thread on Linux) are the user's and which has no supplementary groups, so the kernel
//! checks every access as it would for the user's own processes, with no second process.
//! Relative paths start at the user's home.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::ErrorKind;
use std::os::unix::fs::{
    DirBuilderExt as _, FileExt as _, OpenOptionsExt as _, PermissionsExt as _,
};
use std::path::{Component, Path, PathBuf};
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use russh::server::Msg;
use russh::{Channel, ChannelMsg};
use russh_sftp::protocol::{
    Attrs, Data, File as Entry, FileAttributes, Handle as SftpHandle, Name, OpenFlags, Status,
    StatusCode,
};
use russh_sftp::server::StatusReply;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _, ReadBuf};

use crate::say;
use crate::workload::PasswdEntry;

/// Serve SFTP on `channel` until the client ends it. The SFTP server talks over an in-memory
/// pipe that this task copies to and from the channel, so the exit status, EOF and close go
/// out in order once it is done.
pub async fn serve(channel: Channel<Msg>, user: PasswdEntry) {
    let (mine, theirs) = tokio::io::duplex(256 * 1024);
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    let stream = Tracked {
        inner: theirs,
        _done: done_tx,
    };
    let name = user.name.clone();
    let spawned = std::thread::Builder::new()
        .name("sftp".into())
        .spawn(move || {
            if let Err(e) = become_user(&user) {
                return say!("ssh: sftp for {}: {e}", user.name);
            }
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => return say!("ssh: sftp runtime: {e}"),
            };
            rt.block_on(async move {
                russh_sftp::server::run(stream, Sftp::new(&user)).await;
                // `run` serves on a task of this runtime; the stream drops when it is done.
                let _ = done_rx.await;
            });
        });
    if let Err(e) = spawned {
        say!("ssh: sftp for {name}: {e}");
        return;
    }
    let (mut from_client, to_client) = channel.split();
    let (mut out, mut input) = tokio::io::split(mine);
    let (in_tx, mut in_rx) = tokio::sync::mpsc::unbounded_channel::<Bytes>();
    tokio::spawn(async move {
        while let Some(data) = in_rx.recv().await {
            if input.write_all(&data).await.is_err() {
                return;
            }
        }
        let _ = input.shutdown().await;
    });
    let mut in_tx = Some(in_tx);
    let mut buf = vec![0u8; 64 * 1024];
    let mut client_open = true;
    loop {
        tokio::select! {
            n = out.read(&mut buf) => match n {
                Ok(n) if n > 0 => {
                    if to_client.data_bytes(Bytes::copy_from_slice(&buf[..n])).await.is_err() {
                        break;
                    }
                }
                _ => break,
            },
            msg = from_client.wait(), if client_open => match msg {
                Some(ChannelMsg::Data { data }) => {
                    if let Some(tx) = &in_tx {
                        let _ = tx.send(data);
                    }
                }
                Some(ChannelMsg::Eof) => in_tx = None,
                Some(ChannelMsg::Close) | None => {
                    client_open = false;
                    in_tx = None;
                }
                Some(_) => {}
            },
        }
    }
    if client_open {
        let _ = to_client.exit_status(0).await;
        let _ = to_client.eof().await;
        let _ = to_client.close().await;
    }
}

/// This thread's filesystem identity becomes `user`'s (a no-op when not running as root).
#[allow(unsafe_code)]
fn become_user(user: &PasswdEntry) -> std::io::Result<()> {
    if nix::unistd::geteuid().as_raw() != 0 || user.uid == 0 {
        return Ok(());
    }
    // SAFETY: the raw setgroups(2) system call (glibc's wrapper would change every thread of
    // PID 1) with an empty list; the null pointer is not read for a count of 0.
    let r = unsafe {
        nix::libc::syscall(
            nix::libc::SYS_setgroups,
            0,
            std::ptr::null::<nix::libc::gid_t>(),
        )
    };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    nix::unistd::setfsgid(nix::unistd::Gid::from_raw(user.gid));
    nix::unistd::setfsuid(nix::unistd::Uid::from_raw(user.uid));
    Ok(())
}

/// A stream that tells when it is dropped.
struct Tracked<S> {
    inner: S,
    _done: tokio::sync::oneshot::Sender<()>,
}

impl<S: AsyncRead + Unpin> AsyncRead for Tracked<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Tracked<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

enum Open {
    File(File),
    /// Entries not yet listed; `None` once all were.
    Dir(Option<Vec<Entry>>),
}

struct Sftp {
    home: PathBuf,
    open: HashMap<String, Open>,
    next: u64,
}

fn fail(e: &std::io::Error) -> StatusReply {
    let code = match e.kind() {
        ErrorKind::NotFound => StatusCode::NoSuchFile,
        ErrorKind::PermissionDenied => StatusCode::PermissionDenied,
        _ => StatusCode::Failure,
    };
    StatusReply::new(code).with_message(e.to_string())
}

fn ok(id: u32) -> Status {
    Status {
        id,
        status_code: StatusCode::Ok,
        error_message: "Ok".into(),
        language_tag: "en-US".into(),
    }
}

/// `path` without `.` and `..` (lexically; `..` of `/` is `/`).
fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::from("/");
    for c in path.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::Normal(n) => out.push(n),
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    out
}

fn set_attrs(path: &Path, attrs: &FileAttributes) -> std::io::Result<()> {
    if let Some(size) = attrs.size {
        OpenOptions::new().write(true).open(path)?.set_len(size)?;
    }
    if let Some(mode) = attrs.permissions {
        fs::set_permissions(path, fs::Permissions::from_mode(mode & 0o7777))?;
    }
    if let (Some(atime), Some(mtime)) = (attrs.atime, attrs.mtime) {
        use nix::sys::stat::{utimensat, UtimensatFlags};
        use nix::sys::time::TimeSpec;
        let ts = |s: u32| TimeSpec::new(i64::from(s), 0);
        utimensat(
            nix::fcntl::AT_FDCWD,
            path,
            &ts(atime),
            &ts(mtime),
            UtimensatFlags::FollowSymlink,
        )
        .map_err(std::io::Error::from)?;
    }
    Ok(())
}

impl Sftp {
    fn new(user: &PasswdEntry) -> Sftp {
        let home = if Path::new(&user.home).is_dir() {
            PathBuf::from(&user.home)
        } else {
            PathBuf::from("/")
        };
        Sftp {
            home,
            open: HashMap::new(),
            next: 0,
        }
    }

    fn path(&self, p: &str) -> PathBuf {
        normalize(&self.home.join(p))
    }

    fn keep(&mut self, o: Open) -> String {
        self.next += 1;
        let h = self.next.to_string();
        self.open.insert(h.clone(), o);
        h
    }

    fn file(&self, handle: &str) -> Result<&File, StatusReply> {
        match self.open.get(handle) {
            Some(Open::File(f)) => Ok(f),
            _ => Err(StatusReply::new(StatusCode::Failure).with_message("bad handle")),
        }
    }
}

impl russh_sftp::server::Handler for Sftp {
    type Error = StatusReply;

    fn unimplemented(&self) -> StatusReply {
        StatusReply::new(StatusCode::OpUnsupported)
    }

    async fn open(
        &mut self,
        id: u32,
        filename: String,
        pflags: OpenFlags,
        attrs: FileAttributes,
    ) -> Result<SftpHandle, StatusReply> {
        let path = self.path(&filename);
        let mut o = OpenOptions::new();
        o.read(pflags.contains(OpenFlags::READ))
            .write(pflags.contains(OpenFlags::WRITE))
            .append(pflags.contains(OpenFlags::APPEND))
            .truncate(pflags.contains(OpenFlags::TRUNCATE))
            .mode(attrs.permissions.map_or(0o666, |m| m & 0o7777));
        if pflags.contains(OpenFlags::CREATE) {
            if pflags.contains(OpenFlags::EXCLUDE) {
                o.create_new(true);
            } else {
                o.create(true);
            }
        }
        let f = o.open(&path).map_err(|e| fail(&e))?;
        Ok(SftpHandle {
            id,
            handle: self.keep(Open::File(f)),
        })
    }

    async fn close(&mut self, id: u32, handle: String) -> Result<Status, StatusReply> {
        self.open.remove(&handle);
        Ok(ok(id))
    }

    async fn read(
        &mut self,
        id: u32,
        handle: String,
        offset: u64,
        len: u32,
    ) -> Result<Data, StatusReply> {
        let f = self.file(&handle)?;
        let mut buf = vec![0u8; len.min(256 * 1024) as usize];
        let n = f.read_at(&mut buf, offset).map_err(|e| fail(&e))?;
        if n == 0 {
            return Err(StatusReply::new(StatusCode::Eof));
        }
        buf.truncate(n);
        Ok(Data { id, data: buf })
    }

    async fn write(
        &mut self,
        id: u32,
        handle: String,
        offset: u64,
        data: Vec<u8>,
    ) -> Result<Status, StatusReply> {
        self.file(&handle)?
            .write_all_at(&data, offset)
            .map_err(|e| fail(&e))?;
        Ok(ok(id))
    }

    async fn lstat(&mut self, id: u32, path: String) -> Result<Attrs, StatusReply> {
        let m = fs::symlink_metadata(self.path(&path)).map_err(|e| fail(&e))?;
        Ok(Attrs {
            id,
            attrs: FileAttributes::from(&m),
        })
    }

    async fn stat(&mut self, id: u32, path: String) -> Result<Attrs, StatusReply> {
        let m = fs::metadata(self.path(&path)).map_err(|e| fail(&e))?;
        Ok(Attrs {
            id,
            attrs: FileAttributes::from(&m),
        })
    }

    async fn fstat(&mut self, id: u32, handle: String) -> Result<Attrs, StatusReply> {
        let m = self.file(&handle)?.metadata().map_err(|e| fail(&e))?;
        Ok(Attrs {
            id,
            attrs: FileAttributes::from(&m),
        })
    }

    async fn setstat(
        &mut self,
        id: u32,
        path: String,
        attrs: FileAttributes,
    ) -> Result<Status, StatusReply> {
        set_attrs(&self.path(&path), &attrs).map_err(|e| fail(&e))?;
        Ok(ok(id))
    }

    async fn fsetstat(
        &mut self,
        id: u32,
        handle: String,
        attrs: FileAttributes,
    ) -> Result<Status, StatusReply> {
        let f = self.file(&handle)?;
        if let Some(size) = attrs.size {
            f.set_len(size).map_err(|e| fail(&e))?;
        }
        if let Some(mode) = attrs.permissions {
            f.set_permissions(fs::Permissions::from_mode(mode & 0o7777))
                .map_err(|e| fail(&e))?;
        }
        if let (Some(atime), Some(mtime)) = (attrs.atime, attrs.mtime) {
            let t = |s: u32| std::time::UNIX_EPOCH + std::time::Duration::from_secs(s.into());
            let times = fs::FileTimes::new()
                .set_accessed(t(atime))
                .set_modified(t(mtime));
            f.set_times(times).map_err(|e| fail(&e))?;
        }
        Ok(ok(id))
    }

    async fn opendir(&mut self, id: u32, path: String) -> Result<SftpHandle, StatusReply> {
        let dir = self.path(&path);
        let mut entries = Vec::new();
        for e in fs::read_dir(&dir).map_err(|e| fail(&e))? {
            let e = e.map_err(|e| fail(&e))?;
            let attrs = e
                .path()
                .symlink_metadata()
                .map(|m| FileAttributes::from(&m))
                .unwrap_or_default();
            entries.push(Entry::new(e.file_name().to_string_lossy(), attrs));
        }
        Ok(SftpHandle {
            id,
            handle: self.keep(Open::Dir(Some(entries))),
        })
    }

    async fn readdir(&mut self, id: u32, handle: String) -> Result<Name, StatusReply> {
        match self.open.get_mut(&handle) {
            Some(Open::Dir(entries)) => match entries.take() {
                Some(files) if !files.is_empty() => Ok(Name { id, files }),
                _ => Err(StatusReply::new(StatusCode::Eof)),
            },
            _ => Err(StatusReply::new(StatusCode::Failure).with_message("bad handle")),
        }
    }

    async fn remove(&mut self, id: u32, filename: String) -> Result<Status, StatusReply> {
        fs::remove_file(self.path(&filename)).map_err(|e| fail(&e))?;
        Ok(ok(id))
    }

    async fn mkdir(
        &mut self,
        id: u32,
        path: String,
        attrs: FileAttributes,
    ) -> Result<Status, StatusReply> {
        fs::DirBuilder::new()
            .mode(attrs.permissions.map_or(0o777, |m| m & 0o7777))
            .create(self.path(&path))
            .map_err(|e| fail(&e))?;
        Ok(ok(id))
    }

    async fn rmdir(&mut self, id: u32, path: String) -> Result<Status, StatusReply> {
        fs::remove_dir(self.path(&path)).map_err(|e| fail(&e))?;
        Ok(ok(id))
    }

    async fn realpath(&mut self, id: u32, path: String) -> Result<Name, StatusReply> {
        let p = self.path(&path);
        let real = fs::canonicalize(&p).unwrap_or(p);
        Ok(Name {
            id,
            files: vec![Entry::dummy(real.to_string_lossy())],
        })
    }

    async fn rename(
        &mut self,
        id: u32,
        oldpath: String,
        newpath: String,
    ) -> Result<Status, StatusReply> {
        fs::rename(self.path(&oldpath), self.path(&newpath)).map_err(|e| fail(&e))?;
        Ok(ok(id))
    }

    async fn readlink(&mut self, id: u32, path: String) -> Result<Name, StatusReply> {
        let target = fs::read_link(self.path(&path)).map_err(|e| fail(&e))?;
        Ok(Name {
            id,
            files: vec![Entry::dummy(target.to_string_lossy())],
        })
    }

    async fn symlink(
        &mut self,
        id: u32,
        linkpath: String,
        targetpath: String,
    ) -> Result<Status, StatusReply> {
        // OpenSSH sends the target first (the reverse of the draft's order), and its
        // clients are what this serves: the first argument is where the link points.
        std::os::unix::fs::symlink(&linkpath, self.path(&targetpath)).map_err(|e| fail(&e))?;
        Ok(ok(id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_normalized_from_home() {
        let s = Sftp {
            home: PathBuf::from("/root"),
            open: HashMap::new(),
            next: 0,
        };
        assert_eq!(s.path("."), Path::new("/root"));
        assert_eq!(s.path("a/../b"), Path::new("/root/b"));
        assert_eq!(s.path("/etc/../../x"), Path::new("/x"));
    }
}
