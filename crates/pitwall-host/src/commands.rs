//! The host's command queue: VM commands become wishes (persisted, then acknowledged),
//! console reads, image imports and registry pulls are answered to the asker's reply key.

use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use pitwall_bus::Delivery;
use pitwall_core::{DesiredState, ImageRef, VmState};
use pitwall_image::registry::PullProgress;
use pitwall_image::ImageCache;
use pitwall_image::ImageError;
use pitwall_proto::v1::{
    envelope::Payload, guest_answer, image_command, image_progress, vm_command, BlobProgress,
    ConsoleOutput, Envelope, GuestAnswer, ImageCommand, ImageErrorKind, ImageProgress, ImageStatus,
    ServiceList, VmCommand,
};
use pitwall_proto::{decode_envelope, encode_envelope, routing};
use tracing::{debug, info, warn};

use crate::record::{Spec, VmRecord, Wish};
use crate::{Host, HostError};

/// What [`Host::answer_guest`] asks the guest.
enum GuestQuestion {
    Exec(pitwall_proto::v1::Exec),
    Services,
    Log(pitwall_proto::v1::ReadLog),
}

const PREFETCH: u16 = 64;

pub(crate) async fn start_consumer(host: &Host) -> Result<(), HostError> {
    let q = routing::host_command_queue(&host.inner.cfg.name)
        .map_err(|e| HostError::Config(e.to_string()))?;
    host.inner.bus.declare_queue(&q.name, &q.bindings).await?;
    let mut consumer = host.inner.bus.consume(&q.name, PREFETCH).await?;
    let h = host.clone();
    tokio::spawn(async move {
        while let Some(d) = consumer.next().await {
            h.handle_delivery(d).await;
        }
    });
    Ok(())
}

impl Host {
    async fn handle_delivery(&self, d: Delivery) {
        let env = match decode_envelope(&d.payload) {
            Ok(e) => e,
            Err(e) => {
                warn!(routing_key = %d.routing_key, error = %e, "dead-lettering an unreadable command");
                let _ = d.nack(false).await;
                return;
            }
        };
        let result = match env.payload.clone() {
            Some(Payload::VmCommand(cmd)) => self.on_vm_command(&env, cmd).await,
            Some(Payload::ImageCommand(cmd)) => {
                self.on_image_command(env.clone(), cmd);
                Ok(())
            }
            _ => {
                warn!(routing_key = %d.routing_key, "dead-lettering a message a host does not handle");
                let _ = d.nack(false).await;
                return;
            }
        };
        d.settle(
            result,
            "command not applied",
            std::time::Duration::from_millis(500),
        )
        .await;
    }

    async fn on_vm_command(&self, env: &Envelope, cmd: VmCommand) -> Result<(), HostError> {
        let Ok(id) = uuid::Uuid::parse_str(&cmd.vm_id) else {
            warn!(vm_id = cmd.vm_id, "command with an invalid VM id ignored");
            return Ok(());
        };
        let (desired, spec, grace_ms) = match cmd.command {
            Some(vm_command::Command::Create(c)) => (
                if c.start {
                    DesiredState::Running
                } else {
                    DesiredState::Stopped
                },
                c.spec,
                0,
            ),
            Some(vm_command::Command::Start(s)) => (DesiredState::Running, s.spec, 0),
            Some(vm_command::Command::Stop(s)) => (DesiredState::Stopped, None, s.timeout_ms),
            Some(vm_command::Command::Delete(d)) => (DesiredState::Deleted, None, d.timeout_ms),
            Some(vm_command::Command::ReadConsole(r)) => {
                self.answer_console(env, id, r.max_bytes).await;
                return Ok(());
            }
            Some(vm_command::Command::Exec(x)) => {
                self.answer_guest(env.clone(), id, GuestQuestion::Exec(x));
                return Ok(());
            }
            Some(vm_command::Command::ListServices(_)) => {
                self.answer_guest(env.clone(), id, GuestQuestion::Services);
                return Ok(());
            }
            Some(vm_command::Command::ReadLog(r)) => {
                self.answer_guest(env.clone(), id, GuestQuestion::Log(r));
                return Ok(());
            }
            None => return Ok(()),
        };
        self.apply_wish(
            id,
            desired,
            cmd.generation,
            spec.as_ref().map(Spec::from),
            grace_ms,
        )
        .await
    }

    /// Hand a wish to the VM's actor (starting one for a VM new to this host). Older or
    /// repeated generations change nothing: commands are idempotent.
    pub(crate) async fn apply_wish(
        &self,
        id: uuid::Uuid,
        desired: DesiredState,
        generation: u64,
        spec: Option<Spec>,
        grace_ms: u32,
    ) -> Result<(), HostError> {
        let existing = {
            let vms = self.inner.vms.lock().unwrap_or_else(|p| p.into_inner());
            vms.get(&id)
                .map(|h| (h.wish.borrow().clone(), h.dir.clone(), h.save_lock.clone()))
        };
        match existing {
            Some((current, dir, save_lock)) => {
                if generation <= current.generation {
                    debug!(vm_id = %id, generation, held = current.generation, "old or repeated command ignored");
                    return Ok(());
                }
                let wish = Wish {
                    desired,
                    generation,
                    spec: spec.unwrap_or(current.spec),
                    grace_ms,
                };
                // Persist before acknowledging, and hand the wish to the actor under the same
                // lock the actor saves under: the file never goes back to an older wish.
                let _guard = save_lock.lock().unwrap_or_else(|p| p.into_inner());
                if let Some(mut rec) = VmRecord::load(&dir)? {
                    if rec.wish.generation < wish.generation {
                        rec.wish = wish.clone();
                        rec.save(&dir)?;
                    }
                }
                let vms = self.inner.vms.lock().unwrap_or_else(|p| p.into_inner());
                if let Some(h) = vms.get(&id) {
                    h.wish.send_if_modified(|w| {
                        if w.generation < wish.generation {
                            *w = wish;
                            true
                        } else {
                            false
                        }
                    });
                }
                Ok(())
            }
            None => {
                let Some(spec) = spec else {
                    // Stop or delete of a VM this host does not have: nothing to do but say so.
                    let state = if desired == DesiredState::Deleted {
                        VmState::Deleted
                    } else {
                        VmState::Stopped
                    };
                    info!(vm_id = %id, %state, "command for a VM this host does not hold");
                    if state == VmState::Deleted {
                        for s in [VmState::Deleting, VmState::Deleted] {
                            self.publish_status(self.bare_status(id, s, generation))
                                .await;
                        }
                    }
                    return Ok(());
                };
                let rec = VmRecord {
                    id,
                    wish: Wish {
                        desired,
                        generation,
                        spec,
                        grace_ms,
                    },
                    state: VmState::Pending,
                    reason: None,
                    settled_generation: 0,
                };
                let dir = VmRecord::dir(&self.vms_dir(), id);
                rec.save(&dir)?;
                self.spawn_actor(rec);
                Ok(())
            }
        }
    }

    fn bare_status(
        &self,
        id: uuid::Uuid,
        state: VmState,
        generation: u64,
    ) -> pitwall_proto::v1::VmStatus {
        let mut s = pitwall_proto::v1::VmStatus {
            vm_id: id.to_string(),
            host: self.inner.cfg.name.clone(),
            generation,
            ..Default::default()
        };
        s.set_core_state(state);
        s
    }

    async fn reply(&self, asked: &Envelope, payload: Payload) {
        let Some(key) = asked.reply_to_key() else {
            return;
        };
        let correlation = asked.correlation().unwrap_or(&asked.message_id);
        let env = Envelope::new(&self.inner.sender, Some(correlation), payload);
        if let Err(e) = self.inner.bus.publish(key, encode_envelope(&env)).await {
            warn!(error = %e, "reply not sent");
        }
    }

    /// Put a question to the guest's agent of a RUNNING VM, in the background (an exec may
    /// take minutes), and answer the asker with what it said.
    fn answer_guest(&self, env: Envelope, id: uuid::Uuid, q: GuestQuestion) {
        let host = self.clone();
        tokio::spawn(async move {
            let inst = host
                .inner
                .vms
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(&id)
                .map(|h| h.running.lock().unwrap_or_else(|p| p.into_inner()).clone());
            let mut out = GuestAnswer {
                vm_id: id.to_string(),
                ..Default::default()
            };
            match inst {
                None => out.error = format!("host {} holds no VM {id}", host.inner.cfg.name),
                Some(None) => out.error = "the VM is not RUNNING".into(),
                Some(Some(inst)) => {
                    let answer = match q {
                        GuestQuestion::Exec(x) => {
                            inst.exec(x).await.map(guest_answer::Answer::Exec)
                        }
                        GuestQuestion::Services => inst.services().await.map(|services| {
                            guest_answer::Answer::Services(ServiceList { services })
                        }),
                        GuestQuestion::Log(r) => inst
                            .read_log(&r.service, r.max_bytes)
                            .await
                            .map(guest_answer::Answer::Log),
                    };
                    match answer {
                        Ok(a) => out.answer = Some(a),
                        Err(e) => out.error = e.to_string(),
                    }
                }
            }
            host.reply(&env, Payload::GuestAnswer(out)).await;
        });
    }

    async fn answer_console(&self, env: &Envelope, id: uuid::Uuid, max_bytes: u32) {
        let dir = VmRecord::dir(&self.vms_dir(), id);
        let path = Host::run_dir(&dir).join(pitwall_vmm::qemu::CONSOLE_LOG);
        let held = self
            .inner
            .vms
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains_key(&id);
        let out = if !held {
            ConsoleOutput {
                vm_id: id.to_string(),
                error: format!("host {} holds no VM {id}", self.inner.cfg.name),
                ..Default::default()
            }
        } else {
            match tokio::task::spawn_blocking(move || tail(&path, u64::from(max_bytes))).await {
                Ok(Ok((data, truncated))) => ConsoleOutput {
                    vm_id: id.to_string(),
                    data,
                    truncated,
                    error: String::new(),
                },
                Ok(Err(e)) => ConsoleOutput {
                    vm_id: id.to_string(),
                    error: e,
                    ..Default::default()
                },
                Err(e) => ConsoleOutput {
                    vm_id: id.to_string(),
                    error: e.to_string(),
                    ..Default::default()
                },
            }
        };
        self.reply(env, Payload::ConsoleOutput(out)).await;
    }

    /// Imports and pulls run in the background (they take seconds to minutes); the answer goes
    /// to the asker's reply key and, for anyone listening, to the host's image status key.
    fn on_image_command(&self, env: Envelope, cmd: ImageCommand) {
        let host = self.clone();
        tokio::spawn(async move {
            let status = match cmd.command {
                Some(image_command::Command::Import(imp)) => {
                    host.import(
                        &imp.reference,
                        Path::new(&imp.archive_path),
                        imp.remove_archive,
                    )
                    .await
                }
                Some(image_command::Command::Remove(rm)) => host.remove_image(&rm.reference).await,
                Some(image_command::Command::Pull(p)) => host.pull(&p.reference, &env).await,
                None => return,
            };
            if let Ok(key) = routing::image_status_key(&host.inner.cfg.name) {
                let e = Envelope::new(
                    &host.inner.sender,
                    None,
                    Payload::ImageStatus(status.clone()),
                );
                let _ = host.inner.bus.publish(&key, encode_envelope(&e)).await;
            }
            host.reply(&env, Payload::ImageStatus(status)).await;
        });
    }

    /// Run `job` on the image cache for `reference`, off the async threads. The status comes
    /// back with host and reference filled in, `ok` set on success and `error` otherwise.
    async fn image_job<T: Send + 'static>(
        &self,
        reference: &str,
        job: impl FnOnce(&ImageCache, &ImageRef) -> Result<T, pitwall_image::ImageError>
            + Send
            + 'static,
    ) -> (ImageStatus, Option<T>) {
        let mut st = ImageStatus {
            reference: reference.into(),
            host: self.inner.cfg.name.clone(),
            ..Default::default()
        };
        let r = match ImageRef::parse(reference) {
            Ok(r) => r,
            Err(e) => {
                st.error = e.to_string();
                return (st, None);
            }
        };
        let images = self.inner.images.clone();
        match tokio::task::spawn_blocking(move || job(&images, &r)).await {
            Ok(Ok(v)) => {
                st.ok = true;
                (st, Some(v))
            }
            Ok(Err(e)) => {
                st.error = e.to_string();
                st.set_error_kind(error_kind(&e));
                (st, None)
            }
            Err(e) => {
                st.error = format!("the image job crashed: {e}");
                (st, None)
            }
        }
    }

    async fn import(&self, reference: &str, archive: &Path, remove: bool) -> ImageStatus {
        let path = archive.to_path_buf();
        let (mut st, info) = self
            .image_job(reference, move |images, r| {
                let info = images.import(&path, r)?;
                Ok((info, details_json(images, r)))
            })
            .await;
        if remove {
            let _ = std::fs::remove_file(archive);
        }
        if let Some((info, details)) = info {
            info!(image = reference, digest = info.digest, "image imported");
            st.details_json = details;
            st.digest = info.digest;
            st.size_bytes = info.size_bytes;
            st.config_json = serde_json::to_string(&info.config).unwrap_or_default();
        }
        st
    }

    /// Pull `reference` from its registry with this host's registry settings, as an image
    /// job like an import. Progress goes to the asker's reply key as ImageProgress (with the
    /// command's correlation id), throttled by [`ProgressThrottle`], all of it before the
    /// answer.
    ///
    /// The pull runs on the job's blocking thread through the runtime's handle: it need not
    /// be `Send` then (rustc cannot prove that of `registry::pull`'s future, issue 102211).
    async fn pull(&self, reference: &str, asked: &Envelope) -> ImageStatus {
        info!(image = reference, "pulling image");
        let opts = self.inner.cfg.registry.clone();
        let rt = tokio::runtime::Handle::current();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<ImageProgress>();
        let relay = {
            let host = self.clone();
            let asked = asked.clone();
            tokio::spawn(async move {
                while let Some(p) = rx.recv().await {
                    host.reply(&asked, Payload::ImageProgress(p)).await;
                }
            })
        };
        let (name, host_name) = (reference.to_string(), self.inner.cfg.name.clone());
        let (mut st, info) = self
            .image_job(reference, move |images, r| {
                let throttle = ProgressThrottle::default();
                let progress = |p: PullProgress| {
                    debug!(image = name, progress = ?p, "pull progress");
                    if let Some(event) = throttle.admit(p) {
                        let _ = tx.send(ImageProgress {
                            reference: name.clone(),
                            host: host_name.clone(),
                            event: Some(event),
                        });
                    }
                };
                let info =
                    rt.block_on(pitwall_image::registry::pull(images, r, &opts, &progress))?;
                Ok((info, details_json(images, r)))
            })
            .await;
        // The job (and its sender) is gone: the relay ends once every report is out.
        let _ = relay.await;
        match info {
            Some((info, details)) => {
                info!(image = reference, digest = info.digest, "image pulled");
                st.details_json = details;
                st.digest = info.digest;
                st.size_bytes = info.size_bytes;
                st.config_json = serde_json::to_string(&info.config).unwrap_or_default();
            }
            None => warn!(image = reference, error = st.error, "image pull failed"),
        }
        st
    }

    async fn remove_image(&self, reference: &str) -> ImageStatus {
        let (mut st, existed) = self
            .image_job(reference, |images, r| images.remove(r))
            .await;
        st.removed = existed.unwrap_or(false);
        st
    }
}

/// Which pull progress reports go on the wire: the first and last of each blob, and at most
/// one every [`ProgressThrottle::EVERY`] per blob in between; every `Present` and `Building`.
#[derive(Default)]
struct ProgressThrottle {
    last: std::sync::Mutex<std::collections::HashMap<String, std::time::Instant>>,
}

impl ProgressThrottle {
    const EVERY: std::time::Duration = std::time::Duration::from_millis(250);

    fn admit(&self, p: PullProgress) -> Option<image_progress::Event> {
        match p {
            PullProgress::Downloading {
                digest,
                bytes_done,
                bytes_total,
            } => {
                let now = std::time::Instant::now();
                let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
                let edge = bytes_done == 0 || bytes_done >= bytes_total;
                let due = last
                    .get(&digest)
                    .is_none_or(|t| now.duration_since(*t) >= Self::EVERY);
                if !edge && !due {
                    return None;
                }
                last.insert(digest.clone(), now);
                Some(image_progress::Event::Blob(BlobProgress {
                    digest,
                    bytes_done,
                    bytes_total,
                    present: false,
                }))
            }
            PullProgress::Present {
                digest,
                bytes_total,
            } => Some(image_progress::Event::Blob(BlobProgress {
                digest,
                bytes_done: bytes_total,
                bytes_total,
                present: true,
            })),
            PullProgress::Building { digest } => Some(image_progress::Event::Building(digest)),
        }
    }
}

/// The kind of an image failure, for the control plane to pick its answer's status.
fn error_kind(e: &ImageError) -> ImageErrorKind {
    match e {
        ImageError::RegistryNotFound { .. } => ImageErrorKind::NotFound,
        ImageError::RegistryUnauthorized { .. } => ImageErrorKind::RegistryUnauthorized,
        ImageError::RegistryRateLimited { .. }
        | ImageError::RegistryConnection { .. }
        | ImageError::Registry { .. } => ImageErrorKind::Registry,
        _ => ImageErrorKind::Invalid,
    }
}

/// The last `max` bytes of a file, and whether older bytes were cut off. A missing file is
/// an empty console (the VM has not booted yet).
fn tail(path: &Path, max: u64) -> Result<(Vec<u8>, bool), String> {
    let mut f = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((Vec::new(), false)),
        Err(e) => return Err(format!("cannot open {}: {e}", path.display())),
    };
    let len = f.metadata().map_err(|e| e.to_string())?.len();
    let start = len.saturating_sub(max);
    f.seek(SeekFrom::Start(start)).map_err(|e| e.to_string())?;
    let mut buf = Vec::with_capacity((len - start) as usize);
    f.take(max)
        .read_to_end(&mut buf)
        .map_err(|e| e.to_string())?;
    Ok((buf, start > 0))
}

/// What the cache knows of a just-built image, as the control plane keeps it (no host paths);
/// empty when it cannot be read (the image itself is fine).
fn details_json(images: &ImageCache, r: &ImageRef) -> String {
    match images.inspect(r) {
        Ok(Some(d)) => serde_json::json!({
            "os": d.os,
            "architecture": d.architecture,
            "base_format": d.base_format,
            "unpacked_bytes": d.unpacked_bytes,
            "layers": d.layers,
            "config_digest": d.config_digest,
            "format": d.format,
        })
        .to_string(),
        Ok(None) => String::new(),
        Err(e) => {
            warn!(image = %r, error = %e, "cannot read the image's details");
            String::new()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_keeps_edges_and_thins_the_middle() {
        let t = ProgressThrottle::default();
        let dl = |done| PullProgress::Downloading {
            digest: "sha256:a".into(),
            bytes_done: done,
            bytes_total: 100,
        };
        assert!(t.admit(dl(0)).is_some(), "first");
        assert!(t.admit(dl(10)).is_none(), "too soon");
        assert!(t.admit(dl(100)).is_some(), "last");
        std::thread::sleep(ProgressThrottle::EVERY);
        assert!(t.admit(dl(50)).is_some(), "due again");
        let other = PullProgress::Downloading {
            digest: "sha256:b".into(),
            bytes_done: 5,
            bytes_total: 100,
        };
        assert!(t.admit(other).is_some(), "each blob has its own pace");
        assert!(matches!(
            t.admit(PullProgress::Building {
                digest: "sha256:m".into()
            }),
            Some(image_progress::Event::Building(_))
        ));
    }

    #[test]
    fn tail_returns_the_end_and_says_when_cut() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("c.log");
        assert_eq!(tail(&p, 10).unwrap(), (vec![], false));
        std::fs::write(&p, b"0123456789abcdef").unwrap();
        assert_eq!(tail(&p, 4).unwrap(), (b"cdef".to_vec(), true));
        assert_eq!(
            tail(&p, 100).unwrap(),
            (b"0123456789abcdef".to_vec(), false)
        );
    }
}
