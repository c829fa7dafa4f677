//! One actor per VM: it converges the VM to its wish and reports each state it passes.
//!
//! Commands only change the wish (a `watch` channel, persisted first); the actor does the
//! work, one step at a time, and notices a new wish even in the middle of a boot. Because the
//! wish is on disk, a restarted host daemon picks up where it was.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pitwall_core::{DesiredState, ImageRef, VmState};
use pitwall_proto::v1::{
    envelope::Payload, Envelope, GuestConfig, GuestNetwork, GuestSsh, VmStatus,
};
use pitwall_proto::{encode_envelope, routing};
use pitwall_vmm::{Disk, VmConfig, VmInstance};
use tokio::sync::watch;
use tracing::{info, warn};

use crate::record::{VmRecord, Wish};
use crate::Host;

/// Grace a guest gets to shut down when the stop or delete command gave none.
const DEFAULT_GRACE: Duration = Duration::from_secs(10);

/// The host's handle on a VM actor.
pub(crate) struct Handle {
    pub wish: watch::Sender<Wish>,
    /// Last reported (state, generation, reason), for heartbeats.
    pub status: Arc<Mutex<(VmState, u64, Option<String>)>>,
    pub dir: PathBuf,
    /// Held by every writer of `vm.json` (the actor and `apply_wish`) for its
    /// read-modify-write, so neither overwrites the other's newer data.
    pub save_lock: Arc<Mutex<()>>,
    /// The VMM while the VM is RUNNING, for questions to its guest (exec, services).
    pub running: Arc<Mutex<Option<Arc<dyn VmInstance>>>>,
}

struct Actor {
    host: Host,
    dir: PathBuf,
    rec: VmRecord,
    wish_rx: watch::Receiver<Wish>,
    inst: Option<Arc<dyn VmInstance>>,
    /// [`Handle::running`].
    running: Arc<Mutex<Option<Arc<dyn VmInstance>>>>,
    status: Arc<Mutex<(VmState, u64, Option<String>)>>,
    save_lock: Arc<Mutex<()>>,
    /// Generation of the last status published.
    reported: u64,
    /// The VM's NIC once attached to the host network (none without host networking).
    nic: Option<pitwall_net::VmNic>,
    /// The image's `ExposedPorts`, reported with every status for the terminator.
    ports: Vec<String>,
}

impl Host {
    pub(crate) fn spawn_actor(&self, rec: VmRecord) {
        let dir = VmRecord::dir(&self.vms_dir(), rec.id);
        let (tx, rx) = watch::channel(rec.wish.clone());
        let status = Arc::new(Mutex::new((
            rec.state,
            rec.wish.generation,
            rec.reason.clone(),
        )));
        let id = rec.id;
        let save_lock = Arc::new(Mutex::new(()));
        let running = Arc::new(Mutex::new(None));
        let actor = Actor {
            running: running.clone(),
            host: self.clone(),
            dir: dir.clone(),
            reported: 0,
            rec,
            wish_rx: rx,
            inst: None,
            status: status.clone(),
            save_lock: save_lock.clone(),
            nic: None,
            ports: Vec::new(),
        };
        self.inner
            .vms
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(
                id,
                Handle {
                    wish: tx,
                    status,
                    dir,
                    save_lock,
                    running,
                },
            );
        tokio::spawn(actor.run());
    }

    pub(crate) fn run_dir(dir: &std::path::Path) -> PathBuf {
        dir.join("run")
    }
}

impl Actor {
    fn name(&self) -> &str {
        &self.rec.wish.spec.name
    }

    /// How long the guest gets to shut down cleanly under the current wish.
    fn grace(&self) -> Duration {
        match self.rec.wish.grace_ms {
            0 => DEFAULT_GRACE,
            ms => Duration::from_millis(u64::from(ms)),
        }
    }

    async fn run(mut self) {
        if let Some(net) = &self.host.inner.net {
            // After a daemon restart: the address the VM already holds, for its statuses.
            match net.nic(self.rec.id).await {
                Ok(nic) => self.nic = nic,
                Err(e) => warn!(vm = self.name(), error = %e, "cannot read the VM's address"),
            }
        }
        let run_dir = Host::run_dir(&self.dir);
        match self.host.inner.vmm.reattach(&run_dir).await {
            Ok(Some(inst)) => {
                info!(
                    vm = self.name(),
                    pid = inst.pid(),
                    "re-attached to a running VMM"
                );
                self.inst = Some(Arc::from(inst));
            }
            Ok(None) => {}
            Err(e) => warn!(vm = self.name(), error = %e, "cannot re-attach"),
        }
        if self.inst.is_some() {
            // Running on: its statuses name its services, so the terminator can find them.
            if let Ok(reference) = ImageRef::parse(&self.rec.wish.spec.image) {
                let images = self.host.inner.images.clone();
                if let Ok(Ok(Some(image))) =
                    tokio::task::spawn_blocking(move || images.get(&reference)).await
                {
                    self.ports = image.config.exposed_ports;
                }
            }
        }
        if self.inst.is_none() && self.rec.state.may_have_vmm() {
            // It ran when the host daemon went away, and its VMM is gone now.
            self.rec.settled_generation = self.rec.wish.generation;
            self.report(
                VmState::Stopped,
                Some("the VMM process was gone when the host daemon restarted".into()),
            )
            .await;
        }
        loop {
            let wish = self.wish_rx.borrow_and_update().clone();
            self.rec.wish = wish.clone();
            match wish.desired {
                DesiredState::Running => self.converge_running().await,
                DesiredState::Stopped => self.converge_stopped().await,
                DesiredState::Deleted => {
                    self.delete().await;
                    return;
                }
            }
            if self.reported < self.rec.wish.generation {
                // Nothing to change: say so at the new generation.
                self.report(self.rec.state, self.rec.reason.clone()).await;
            }
            if self.wish_rx.borrow().generation != self.rec.wish.generation {
                // A newer wish came while converging (a stop during the boot): the boot's
                // wait already took its change notification, so `changed()` below would not
                // fire for it. Act on it now.
                continue;
            }
            // Wait for a new wish, or for the VMM to end by itself.
            let exited = match &self.inst {
                Some(inst) => tokio::select! {
                    r = self.wish_rx.changed() => { if r.is_err() { return } None }
                    exit = inst.wait_exit() => Some(exit),
                },
                None => {
                    if self.wish_rx.changed().await.is_err() {
                        return;
                    }
                    None
                }
            };
            if let Some(exit) = exited {
                self.inst = None;
                info!(vm = self.name(), %exit, "VM ended by itself");
                self.rec.settled_generation = self.rec.wish.generation;
                self.report(VmState::Stopped, Some(exit.to_string())).await;
            }
        }
    }

    /// Persist the record with the newest wish the actor has been handed (which may be newer
    /// than the one it is working on: a crash must not lose an acknowledged command).
    fn save(&self) -> Result<(), crate::HostError> {
        let _guard = self.save_lock.lock().unwrap_or_else(|p| p.into_inner());
        let mut rec = self.rec.clone();
        let latest = self.wish_rx.borrow().clone();
        if latest.generation > rec.wish.generation {
            rec.wish = latest;
        }
        rec.save(&self.dir)
    }

    /// Persist and publish a state.
    async fn report(&mut self, state: VmState, reason: Option<String>) {
        let generation = self.rec.wish.generation;
        self.rec.state = state;
        self.rec.reason = reason.clone();
        if let Err(e) = self.save() {
            warn!(vm = self.name(), error = %e, "cannot persist VM record");
        }
        *self.status.lock().unwrap_or_else(|p| p.into_inner()) =
            (state, generation, reason.clone());
        *self.running.lock().unwrap_or_else(|p| p.into_inner()) =
            self.inst.clone().filter(|_| state == VmState::Running);
        self.reported = generation;
        info!(vm = self.name(), vm_id = %self.rec.id, state = %state, generation, "VM state");
        let status = self.status_message(state, reason);
        self.host.publish_status(status).await;
    }

    fn status_message(&self, state: VmState, reason: Option<String>) -> VmStatus {
        VmStatus {
            vm_id: self.rec.id.to_string(),
            name: self.rec.wish.spec.name.clone(),
            host: self.host.inner.cfg.name.clone(),
            state: pitwall_proto::v1::VmState::from(state) as i32,
            generation: self.rec.wish.generation,
            reason: reason.unwrap_or_default(),
            owner: self.rec.wish.spec.owner.clone(),
            address: self
                .nic
                .as_ref()
                .map(|n| n.ip.to_string())
                .unwrap_or_default(),
            exposed_ports: self.ports.clone(),
            ssh_host_key: self
                .inst
                .as_ref()
                .and_then(|i| i.ssh_host_key())
                .unwrap_or_default(),
        }
    }

    fn disk_paths(&self) -> (PathBuf, PathBuf) {
        (self.dir.join("data.ext4"), self.dir.join("config.img"))
    }

    /// The VM's TAP on the host bridge and its address (idempotent: the same ones again on
    /// every start), when the host has networking.
    async fn attach_network(&mut self) -> Result<(), String> {
        let Some(net) = self.host.inner.net.clone() else {
            return Ok(());
        };
        let nic = net
            .attach_vm(self.rec.id)
            .await
            .map_err(|e| format!("cannot attach the VM to the host network: {e}"))?;
        self.nic = Some(nic);
        Ok(())
    }

    /// Everything but the VMM: the image's base, the data disk (once), the config disk.
    async fn prepare(&mut self) -> Result<VmConfig, String> {
        let spec = &self.rec.wish.spec;
        let reference = ImageRef::parse(&spec.image).map_err(|e| e.to_string())?;
        let images = self.host.inner.images.clone();
        let r = reference.clone();
        let image = tokio::task::spawn_blocking(move || images.get(&r))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?
            .ok_or_else(|| {
                format!(
                    "image {reference} is not on host {}: import it with `pitwall image import PATH --name {reference}`",
                    self.host.inner.cfg.name
                )
            })?;
        self.ports = image.config.exposed_ports.clone();
        let spec = &self.rec.wish.spec;
        let (data, config) = self.disk_paths();
        let disk_mib = spec.disk_mib;
        let c = &image.config;
        let run = spec
            .run
            .resolve(&c.entrypoint, &c.cmd, &c.env, &c.working_dir, &c.user);
        // Declared services, or "main" running the program; each needs something to run.
        let declared = if spec.run.services.is_empty() {
            vec![pitwall_core::ServiceSpec {
                name: "main".into(),
                ..Default::default()
            }]
        } else {
            spec.run.services.clone()
        };
        let mut services = Vec::with_capacity(declared.len());
        for svc in &declared {
            let Some(r) = svc.resolve(&run) else {
                return Err(format!(
                    "image {reference} has neither Entrypoint nor Cmd, and none was given at create: nothing to run as service {:?} (give a command after -- or with --service NAME=COMMAND)",
                    svc.name
                ));
            };
            services.push(pitwall_proto::v1::Service {
                name: r.name,
                argv: r.argv,
                env: r.env,
                working_dir: r.working_dir,
                user: r.user,
                restart: pitwall_proto::v1::RestartPolicy::from(r.restart).into(),
            });
        }
        let guest = GuestConfig {
            vm_id: self.rec.id.to_string(),
            hostname: spec.name.clone(),
            argv: run.argv,
            env: run.env,
            working_dir: run.working_dir,
            user: run.user,
            base_label: pitwall_vmm::BASE_LABEL.into(),
            data_label: pitwall_vmm::DATA_LABEL.into(),
            network: self.nic.as_ref().map(guest_network),
            services,
            // Always on (every VM's `ssh` service): the owner's keys from create time, and
            // certificates of the deployment's SSH CA naming this VM.
            ssh: Some(GuestSsh {
                port: u32::from(pitwall_core::overlay::SSH_PORT),
                authorized_keys: spec.ssh_authorized_keys.clone(),
                user_ca_keys: [&spec.ssh_ca_public_key]
                    .into_iter()
                    .filter(|k| !k.is_empty())
                    .cloned()
                    .collect(),
            }),
        };
        let (d, c) = (data.clone(), config.clone());
        let templates = self.host.inner.cfg.data_dir.join("disk-templates");
        tokio::task::spawn_blocking(move || -> Result<(), String> {
            // Kept when it holds the VM's filesystem; else a copy of an empty-ext4 template.
            pitwall_vmm::disk::ensure_data_disk(
                &d,
                u64::from(disk_mib),
                pitwall_vmm::DATA_LABEL,
                &templates,
            )
            .map_err(|e| e.to_string())?;
            pitwall_vmm::disk::write_config_disk(&c, &guest).map_err(|e| e.to_string())
        })
        .await
        .map_err(|e| e.to_string())??;
        Ok(VmConfig {
            id: self.rec.id.to_string(),
            name: spec.name.clone(),
            run_dir: Host::run_dir(&self.dir),
            kernel: self.host.inner.kernel.clone(),
            initrd: self.host.inner.initrd.clone(),
            extra_cmdline: String::new(),
            vcpus: spec.vcpus,
            memory_mib: spec.memory_mib,
            disks: vec![
                Disk {
                    path: image.rootfs.clone(),
                    read_only: true,
                },
                Disk {
                    path: data,
                    read_only: false,
                },
                Disk {
                    path: config,
                    read_only: true,
                },
            ],
            nic: self.nic.as_ref().map(|n| pitwall_vmm::Nic {
                tap: n.tap.clone(),
                mac: n.mac.to_string(),
                netns: self
                    .host
                    .inner
                    .cfg
                    .network
                    .as_ref()
                    .and_then(|c| c.netns.as_deref().map(pitwall_net::netns_path)),
            }),
            accel: self.host.inner.cfg.accel,
        })
    }

    async fn converge_running(&mut self) {
        if let Some(inst) = self.inst.take() {
            if self.rec.state == VmState::Running {
                self.inst = Some(inst);
                return;
            }
            // Re-attached during a boot, or the wish changed mid-boot and back.
            if self.rec.state != VmState::Starting {
                self.report(VmState::Starting, None).await;
            }
            return self.await_boot(inst).await;
        }
        if self.rec.settled_generation >= self.rec.wish.generation {
            return; // ended by itself or failed at this wish: wait for a new one
        }
        if matches!(self.rec.state, VmState::Pending | VmState::Creating) {
            self.report(VmState::Creating, None).await;
        }
        if let Err(why) = self.attach_network().await {
            return self.fail(why).await;
        }
        let cfg = match self.prepare().await {
            Ok(c) => c,
            Err(why) => return self.fail(why).await,
        };
        self.report(VmState::Starting, None).await;
        let inst = match self.host.inner.vmm.launch(&cfg).await {
            Ok(i) => i,
            Err(e) => return self.fail(e.to_string()).await,
        };
        info!(vm = self.name(), pid = inst.pid(), "VMM started");
        self.await_boot(Arc::from(inst)).await;
    }

    /// Wait for the guest's readiness, unless a new wish comes first (the run loop then
    /// deals with the VMM, which is kept either way).
    async fn await_boot(&mut self, inst: Arc<dyn VmInstance>) {
        let timeout = self.host.inner.cfg.boot_timeout;
        let ready = tokio::select! {
            r = inst.wait_ready(timeout) => Some(r),
            _ = self.wish_rx.changed() => None,
        };
        self.inst = Some(inst);
        if let Some(r) = ready {
            self.after_ready(r).await;
        }
    }

    async fn after_ready(&mut self, r: Result<(), pitwall_vmm::VmmError>) {
        match r {
            Ok(()) => self.report(VmState::Running, None).await,
            Err(e) => self.fail(e.to_string()).await,
        }
    }

    async fn fail(&mut self, why: String) {
        warn!(vm = self.name(), reason = why, "VM failed");
        if let Some(inst) = self.inst.take() {
            let _ = inst.kill().await;
        }
        self.rec.settled_generation = self.rec.wish.generation;
        self.report(VmState::Failed, Some(why)).await;
    }

    /// Stop the VMM if it runs: STOPPING, clean shutdown (kill after the grace), STOPPED.
    async fn stop_vmm(&mut self, grace: Duration) {
        let Some(inst) = self.inst.take() else { return };
        self.report(VmState::Stopping, None).await;
        match inst.shutdown(grace).await {
            Ok(exit) => info!(vm = self.name(), %exit, "VM stopped"),
            Err(e) => warn!(vm = self.name(), error = %e, "shutdown failed; VMM killed"),
        }
        self.report(VmState::Stopped, None).await;
    }

    async fn converge_stopped(&mut self) {
        if self.inst.is_some() {
            return self.stop_vmm(self.grace()).await;
        }
        if matches!(self.rec.state, VmState::Pending | VmState::Creating) {
            // Created but not to be started: build it, leave it STOPPED.
            self.report(VmState::Creating, None).await;
            match self.prepare().await {
                Ok(_) => self.report(VmState::Stopped, None).await,
                Err(why) => self.fail(why).await,
            }
        }
    }

    async fn delete(&mut self) {
        self.stop_vmm(self.grace()).await;
        if self.rec.state.may_have_vmm() {
            // STARTING without a VMM (a failed launch) still has to pass STOPPED.
            self.report(VmState::Stopped, None).await;
        }
        if self.rec.state != VmState::Deleting {
            self.report(VmState::Deleting, None).await;
        }
        if let Some(net) = self.host.inner.net.clone() {
            // The VMM is gone: its TAP and address go too (idempotent, so a delete retried
            // after a failure here tries again).
            if let Err(e) = net.detach_vm(self.rec.id).await {
                let why = format!("cannot detach the VM from the host network: {e}");
                warn!(vm = self.name(), reason = why, "delete failed");
                self.report(VmState::Failed, Some(why)).await;
                return;
            }
            self.nic = None;
        }
        let removed = {
            let _guard = self.save_lock.lock().unwrap_or_else(|p| p.into_inner());
            std::fs::remove_dir_all(&self.dir)
        };
        if let Err(e) = removed {
            if e.kind() != std::io::ErrorKind::NotFound {
                let why = format!("cannot remove {}: {e}", self.dir.display());
                warn!(vm = self.name(), reason = why, "delete failed");
                self.report(VmState::Failed, Some(why)).await;
                return;
            }
        }
        let id = self.rec.id;
        self.host
            .inner
            .vms
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&id);
        // The record is gone with the directory; publish the last state without saving.
        let status = self.status_message(VmState::Deleted, None);
        info!(vm = self.name(), vm_id = %id, "VM deleted");
        self.host.publish_status(status).await;
    }
}

impl Host {
    pub(crate) async fn publish_status(&self, status: VmStatus) {
        let state = status.core_state().unwrap_or(VmState::Failed);
        let Ok(key) = routing::status_key(state, &self.inner.cfg.name) else {
            return;
        };
        let env = Envelope::new(&self.inner.sender, None, Payload::VmStatus(status));
        if let Err(e) = self.inner.bus.publish(&key, encode_envelope(&env)).await {
            warn!(error = %e, "status not published");
        }
    }
}

/// What powerunit needs to configure the guest's side of `nic`.
fn guest_network(nic: &pitwall_net::VmNic) -> GuestNetwork {
    GuestNetwork {
        mac: nic.mac.to_string(),
        address: format!("{}/{}", nic.ip, nic.prefix_len),
        gateway: nic.gateway.to_string(),
        dns: nic.dns.iter().map(|d| d.to_string()).collect(),
        hosts: vec![format!("{} gateway.pitwall.internal", nic.gateway)],
    }
}
