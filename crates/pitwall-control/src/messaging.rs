//! The control plane's side of the bus: commands out, statuses / heartbeats / replies in.

use std::time::Duration;

use pitwall_bus::Delivery;
use pitwall_core::{DesiredState, VmState};
use pitwall_proto::routing::{self, verb};
use pitwall_proto::v1::{
    envelope::Payload, image_command, vm_command, CreateVm, DeleteVm, Envelope, HostHeartbeat,
    ImageCommand, ImageProgress, StartVm, StopVm, VmCommand, VmSpec as PbSpec, VmStatus,
};
use pitwall_proto::{decode_envelope, encode_envelope};
use pitwall_store::{StatusOutcome, VmRecord};
use tokio::sync::oneshot;
use tracing::{debug, info, warn};

use crate::{Control, ControlError, Pending};

const PREFETCH: u16 = 64;

pub(crate) async fn start_consumers(control: &Control) -> Result<(), ControlError> {
    let bus = &control.inner.bus;
    let reply_queue = routing::reply_queue(&control.inner.cfg.replica)
        .map_err(|e| ControlError::Config(e.to_string()))?;
    for q in [
        routing::web_status_queue(),
        routing::control_hosts_queue(),
        reply_queue.clone(),
    ] {
        bus.declare_queue(&q.name, &q.bindings).await?;
    }
    for queue in [
        routing::WEB_STATUS_QUEUE.to_string(),
        routing::CONTROL_HOSTS_QUEUE.to_string(),
        reply_queue.name,
    ] {
        let mut consumer = bus.consume(&queue, PREFETCH).await?;
        let c = control.clone();
        tokio::spawn(async move {
            while let Some(d) = consumer.next().await {
                c.handle_delivery(d).await;
            }
            debug!(queue, "consumer ended");
        });
    }
    Ok(())
}

impl Control {
    async fn handle_delivery(&self, d: Delivery) {
        let env = match decode_envelope(&d.payload) {
            Ok(e) => e,
            Err(e) => {
                warn!(routing_key = %d.routing_key, error = %e, "dead-lettering an unreadable message");
                let _ = d.nack(false).await;
                return;
            }
        };
        let result = match env.payload.clone() {
            Some(Payload::VmStatus(s)) => self.on_status(&s).await,
            Some(Payload::HostHeartbeat(hb)) => self.on_heartbeat(&hb).await,
            Some(Payload::ImageStatus(_) | Payload::ConsoleOutput(_) | Payload::GuestAnswer(_)) => {
                self.on_reply(env);
                Ok(())
            }
            Some(Payload::ImageProgress(p)) => {
                self.on_progress(env.correlation(), p);
                Ok(())
            }
            _ => {
                warn!(routing_key = %d.routing_key, "dead-lettering a message the control plane does not handle");
                let _ = d.nack(false).await;
                return;
            }
        };
        // A failure here is the store not taking it: let it come again.
        d.settle(result, "status not recorded", Duration::from_millis(200))
            .await;
    }

    fn on_reply(&self, env: Envelope) {
        let Some(id) = env.correlation().map(str::to_owned) else {
            return;
        };
        let waiter = self
            .inner
            .pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&id);
        match waiter {
            Some(p) => {
                let _ = p.reply.send(env);
            }
            None => debug!(correlation_id = id, "reply nobody waits for (timed out?)"),
        }
    }

    /// A progress report goes to whoever waits for that request's progress; nobody may (the
    /// request did not ask, or timed out).
    fn on_progress(&self, correlation: Option<&str>, p: ImageProgress) {
        let Some(id) = correlation else { return };
        let pending = self.inner.pending.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(tx) = pending.get(id).and_then(|w| w.progress.as_ref()) {
            let _ = tx.send(p);
        }
    }

    /// Apply one status report to the store and tell subscribers.
    pub(crate) async fn on_status(&self, s: &VmStatus) -> Result<(), ControlError> {
        let Ok(id) = uuid::Uuid::parse_str(&s.vm_id) else {
            warn!(vm_id = s.vm_id, "status with an invalid VM id ignored");
            return Ok(());
        };
        let Ok(state) = s.core_state() else {
            warn!(
                vm_id = s.vm_id,
                state = s.state,
                "status with an invalid state ignored"
            );
            return Ok(());
        };
        let reason = (!s.reason.is_empty()).then_some(s.reason.as_str());
        let outcome = match self
            .inner
            .store
            .record_status(id, state, s.generation, reason)
            .await
        {
            Ok(outcome) => outcome,
            // Not a store failure: retrying cannot help, and a redelivered report would block
            // the queue behind it.
            Err(pitwall_store::StoreError::NoSuchVm(_)) => {
                warn!(vm_id = s.vm_id, host = s.host, state = %state, "status of a VM this control plane does not know ignored");
                return Ok(());
            }
            Err(e) => return Err(e.into()),
        };
        match outcome {
            StatusOutcome::Applied(vm) => {
                info!(vm = %vm.spec.name, vm_id = %vm.id, state = %state, generation = s.generation, "VM state");
                // The host reports the VM's address with its states once it has one (a report
                // without one, e.g. from a heartbeat, changes nothing); a deleted VM has none.
                let address = match (state, s.address.as_str()) {
                    (VmState::Deleted, _) => None,
                    (_, "") => vm.address.as_deref(),
                    (_, a) => Some(a),
                };
                if vm.address.as_deref() != address {
                    self.inner.store.set_address(vm.id, address).await?;
                }
                // Likewise the guest's SSH host key: kept across stops (it lives on the VM's
                // disk), replaced when the guest reports another.
                let host_key = match (state, s.ssh_host_key.as_str()) {
                    (VmState::Deleted, _) => None,
                    (_, "") => vm.ssh_host_key.as_deref(),
                    (_, k) => Some(k),
                };
                if vm.ssh_host_key.as_deref() != host_key {
                    self.inner.store.set_ssh_host_key(vm.id, host_key).await?;
                }
                self.publish_events_after(vm.id).await;
                // A guest that stopped by itself (its workload ended, or its VMM died) while
                // it was wanted running: its restart policy is `never`, so the wish becomes
                // STOPPED and nothing will boot it again until a user starts it.
                if state == VmState::Stopped
                    && vm.desired == DesiredState::Running
                    && s.generation >= vm.generation
                {
                    let vm = self
                        .inner
                        .store
                        .set_desired(vm.id, DesiredState::Stopped)
                        .await?;
                    self.send_for_desired(&vm).await;
                }
            }
            StatusOutcome::Duplicate => {}
            StatusOutcome::Stale(why) => debug!(vm_id = %id, why, "stale status ignored"),
        }
        Ok(())
    }

    /// Broadcast every event the store recorded since the last broadcast, in order.
    pub(crate) async fn publish_events_after(&self, id: uuid::Uuid) {
        let mut last = self.inner.last_seq.lock().await;
        match self.inner.store.events_since(*last, 1000).await {
            Ok(events) => {
                for e in events {
                    *last = e.seq;
                    let _ = self.inner.events.send(e);
                }
            }
            Err(e) => debug!(vm_id = %id, error = %e, "could not read back events"),
        }
    }

    async fn on_heartbeat(&self, hb: &HostHeartbeat) -> Result<(), ControlError> {
        if routing::validate_host(&hb.host).is_err() {
            warn!(
                host = hb.host,
                "heartbeat from an invalid host name ignored"
            );
            return Ok(());
        }
        let first = self.inner.hosts.get(&hb.host).is_none();
        self.inner.hosts.heartbeat(hb);
        if first {
            info!(
                host = hb.host,
                vcpus = hb.vcpus_total,
                memory_mib = hb.memory_mib_total,
                "host joined"
            );
        }
        for s in &hb.vms {
            self.on_status(s).await?;
        }
        Ok(())
    }

    fn spec_of(&self, vm: &VmRecord) -> PbSpec {
        PbSpec {
            name: vm.spec.name.to_string(),
            image: vm.spec.image.to_string(),
            vcpus: vm.spec.vcpus,
            memory_mib: vm.spec.memory_mib,
            disk_mib: vm.spec.disk_mib,
            owner: vm.owner.clone(),
            run: (!vm.spec.run.is_empty()).then(|| (&vm.spec.run).into()),
            ssh_ca_public_key: self
                .inner
                .auth
                .ssh_ca
                .as_ref()
                .map(|ca| ca.public_key().to_string())
                .unwrap_or_default(),
            ssh_authorized_keys: Vec::new(),
        }
    }

    /// Send the command that moves `vm` toward its desired state (at its generation).
    /// A failed publish is logged: the reconciler sends it again.
    pub(crate) async fn send_for_desired(&self, vm: &VmRecord) {
        let Some(host) = vm.host.clone() else { return };
        let timeout_ms = u32::try_from(self.inner.cfg.stop_timeout.as_millis()).unwrap_or(u32::MAX);
        let (verb, command) = match vm.desired {
            DesiredState::Running if matches!(vm.state, VmState::Pending | VmState::Creating) => (
                verb::CREATE,
                vm_command::Command::Create(CreateVm {
                    spec: Some(self.spec_of(vm)),
                    start: true,
                }),
            ),
            DesiredState::Running => (
                verb::START,
                vm_command::Command::Start(StartVm {
                    spec: Some(self.spec_of(vm)),
                }),
            ),
            DesiredState::Stopped if matches!(vm.state, VmState::Pending | VmState::Creating) => (
                verb::CREATE,
                vm_command::Command::Create(CreateVm {
                    spec: Some(self.spec_of(vm)),
                    start: false,
                }),
            ),
            DesiredState::Stopped => (verb::STOP, vm_command::Command::Stop(StopVm { timeout_ms })),
            DesiredState::Deleted => (
                verb::DELETE,
                vm_command::Command::Delete(DeleteVm { timeout_ms }),
            ),
        };
        let cmd = VmCommand {
            vm_id: vm.id.to_string(),
            generation: vm.generation,
            command: Some(command),
        };
        if let Err(e) = self
            .publish_command(&host, verb, Payload::VmCommand(cmd), None)
            .await
        {
            warn!(vm = %vm.spec.name, host, error = %e, "command not sent; the reconciler will retry");
        }
    }

    async fn publish_command(
        &self,
        host: &str,
        verb: &str,
        payload: Payload,
        correlation: Option<&str>,
    ) -> Result<(), ControlError> {
        let key = match &payload {
            Payload::ImageCommand(_) => routing::image_command_key(host, verb),
            _ => routing::command_key(host, verb),
        }
        .map_err(|e| ControlError::Config(e.to_string()))?;
        let mut env = Envelope::new(&self.inner.sender, correlation, payload);
        if correlation.is_some() {
            env = env.with_reply_to(self.inner.reply_key.clone());
        }
        self.inner.bus.publish(&key, encode_envelope(&env)).await?;
        Ok(())
    }

    /// Send a command to `host` and wait for the answer sent to this replica's reply queue.
    pub(crate) async fn request(
        &self,
        host: &str,
        verb: &str,
        payload: Payload,
        timeout: Duration,
    ) -> Result<Option<Envelope>, ControlError> {
        self.request_with_progress(host, verb, payload, timeout, None)
            .await
    }

    /// [`Control::request`], with the host's progress reports for it (ImageProgress, sent
    /// before the answer) passed to `progress`.
    pub(crate) async fn request_with_progress(
        &self,
        host: &str,
        verb: &str,
        payload: Payload,
        timeout: Duration,
        progress: Option<tokio::sync::mpsc::UnboundedSender<ImageProgress>>,
    ) -> Result<Option<Envelope>, ControlError> {
        let id = uuid::Uuid::new_v4().to_string();
        let (tx, rx) = oneshot::channel();
        self.inner
            .pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(
                id.clone(),
                Pending {
                    reply: tx,
                    progress,
                },
            );
        let sent = self.publish_command(host, verb, payload, Some(&id)).await;
        let out = match sent {
            Ok(()) => tokio::time::timeout(timeout, rx)
                .await
                .ok()
                .and_then(Result::ok),
            Err(e) => {
                self.inner
                    .pending
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&id);
                return Err(e);
            }
        };
        self.inner
            .pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&id);
        Ok(out)
    }

    pub(crate) fn image_import_payload(reference: &str, archive: &std::path::Path) -> Payload {
        Payload::ImageCommand(ImageCommand {
            command: Some(image_command::Command::Import(
                pitwall_proto::v1::ImportImage {
                    reference: reference.to_string(),
                    archive_path: archive.display().to_string(),
                    remove_archive: true,
                },
            )),
        })
    }
}

#[cfg(test)]
mod tests {
    use pitwall_core::VmState;
    use pitwall_proto::v1::vm_command::Command;
    use tokio::sync::broadcast::error::TryRecvError;

    use crate::testing::Harness;

    #[tokio::test]
    async fn reported_states_are_recorded() {
        let mut h = Harness::start().await;
        let vm = h.create_vm("a").await;
        for state in [VmState::Creating, VmState::Starting, VmState::Running] {
            h.host.report(&vm, state, 1, None).await;
        }
        h.settle().await;
        let vm = h.vm("a").await;
        assert_eq!(vm.state, "RUNNING");
        assert_eq!(vm.desired_state, "RUNNING");
    }

    #[tokio::test]
    async fn a_report_of_an_illegal_transition_is_ignored() {
        let mut h = Harness::start().await;
        let vm = h.run_vm("a").await;
        let mut events = h.control.subscribe();
        h.host.report(&vm, VmState::Creating, 1, None).await;
        h.settle().await;
        assert_eq!(h.vm("a").await.state, "RUNNING");
        assert_eq!(events.try_recv().unwrap_err(), TryRecvError::Empty);
    }

    #[tokio::test]
    async fn a_report_of_an_older_generation_is_ignored() {
        let mut h = Harness::start().await;
        let vm = h.run_vm("a").await;
        assert_eq!(
            h.post("/v1/vms/a/stop")
                .await
                .json::<pitwall_api::Vm>()
                .generation,
            2
        );
        h.host.next_vm_command().await;
        h.host.report(&vm, VmState::Stopping, 2, None).await;
        h.settle().await;
        let mut events = h.control.subscribe();
        // A late report answering generation 1 (a legal STOPPING → STOPPED all the same).
        h.host.report(&vm, VmState::Stopped, 1, None).await;
        h.settle().await;
        assert_eq!(h.vm("a").await.state, "STOPPING");
        assert_eq!(events.try_recv().unwrap_err(), TryRecvError::Empty);
    }

    #[tokio::test]
    async fn a_vm_that_stops_by_itself_while_wanted_running_is_wanted_stopped() {
        let mut h = Harness::start().await;
        let vm = h.run_vm("a").await;
        h.host
            .report(
                &vm,
                VmState::Stopped,
                1,
                Some("workload exited with code 0"),
            )
            .await;
        h.settle().await;
        let now = h.vm("a").await;
        assert_eq!(now.state, "STOPPED");
        assert_eq!(now.reason.as_deref(), Some("workload exited with code 0"));
        assert_eq!(now.desired_state, "STOPPED");
        assert_eq!(now.generation, 2);
        let (verb, cmd) = h.host.next_vm_command().await;
        assert_eq!(verb, "stop");
        assert_eq!((cmd.vm_id.as_str(), cmd.generation), (vm.id.as_str(), 2));
        assert!(matches!(cmd.command, Some(Command::Stop(_))));
    }

    #[tokio::test]
    async fn the_address_a_host_reports_is_shown_until_the_vm_is_deleted() {
        let mut h = Harness::start().await;
        let vm = h.create_vm("a").await;
        h.host.report(&vm, VmState::Creating, 1, None).await;
        let mut starting = h.host.status(&vm, VmState::Starting, 1, None);
        starting.address = "172.30.0.9".into();
        h.host.publish_status(starting).await;
        h.settle().await;
        assert_eq!(h.vm("a").await.address.as_deref(), Some("172.30.0.9"));
        // A report without an address (say, from a heartbeat) leaves it.
        h.host.report(&vm, VmState::Running, 1, None).await;
        h.settle().await;
        assert_eq!(h.vm("a").await.address.as_deref(), Some("172.30.0.9"));
    }

    #[tokio::test]
    async fn the_ssh_host_key_a_guest_reports_is_kept_across_stops_and_shown_for_checking() {
        let mut h = Harness::start().await;
        let vm = h.create_vm("a").await;
        h.host.report(&vm, VmState::Creating, 1, None).await;
        h.host.report(&vm, VmState::Starting, 1, None).await;
        let mut running = h.host.status(&vm, VmState::Running, 1, None);
        running.ssh_host_key = "ssh-ed25519 AAAA guest".into();
        h.host.publish_status(running).await;
        h.settle().await;
        let shown = h.vm("a").await;
        assert_eq!(
            shown.ssh_host_key.as_deref(),
            Some("ssh-ed25519 AAAA guest")
        );
        // Stopped (no key in the report): still known, the key lives on the VM's disk.
        h.host.report(&vm, VmState::Stopping, 1, None).await;
        h.host.report(&vm, VmState::Stopped, 1, None).await;
        h.settle().await;
        assert_eq!(
            h.vm("a").await.ssh_host_key.as_deref(),
            Some("ssh-ed25519 AAAA guest")
        );
    }

    #[tokio::test]
    async fn a_heartbeat_carrying_vm_states_heals_a_lost_status() {
        let mut h = Harness::start().await;
        let vm = h.create_vm("a").await;
        h.host.report(&vm, VmState::Creating, 1, None).await;
        h.host.report(&vm, VmState::Starting, 1, None).await;
        h.settle().await;
        // The RUNNING status is lost; the next heartbeat lists the VM as RUNNING.
        let running = h.host.status(&vm, VmState::Running, 1, None);
        h.host.heartbeat(vec![running]).await;
        h.settle().await;
        assert_eq!(h.vm("a").await.state, "RUNNING");
    }

    #[tokio::test]
    async fn a_status_of_an_unknown_vm_is_dropped_without_blocking_later_ones() {
        let mut h = Harness::start().await;
        let vm = h.create_vm("a").await;
        let mut stranger = h.host.status(&vm, VmState::Creating, 1, None);
        stranger.vm_id = uuid::Uuid::now_v7().to_string();
        stranger.name = "stranger".into();
        h.host.publish_status(stranger).await;
        h.host.report(&vm, VmState::Creating, 1, None).await;
        h.settle().await;
        assert_eq!(h.vm("a").await.state, "CREATING");
    }

    #[tokio::test]
    async fn a_heartbeat_listing_an_unknown_vm_still_updates_the_known_ones() {
        let mut h = Harness::start().await;
        let vm = h.create_vm("a").await;
        let mut stranger = h.host.status(&vm, VmState::Running, 1, None);
        stranger.vm_id = uuid::Uuid::now_v7().to_string();
        let creating = h.host.status(&vm, VmState::Creating, 1, None);
        h.host.heartbeat(vec![stranger, creating]).await;
        h.settle().await;
        assert_eq!(h.vm("a").await.state, "CREATING");
    }
}
