//! The control plane's reconciler: every few seconds it compares each VM's desired state
//! with the state its host reported, sends the command again for a VM that made no progress
//! for `stuck_after` (a lost message never loses a VM: hosts are idempotent by generation),
//! and marks the VMs of a host that went silent past its lease `LOST`.

use pitwall_core::VmState;
use time::OffsetDateTime;
use tracing::{debug, info, warn};

use crate::Control;

pub(crate) fn spawn(control: Control) {
    tokio::spawn(async move {
        // The first pass comes one interval after start: at start no host has heartbeated
        // yet, so a pass then could do nothing (every host is within its startup grace).
        let period = control.inner.cfg.reconcile_interval;
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if let Err(e) = control.reconcile_once().await {
                warn!(error = %e, "reconciliation pass failed; will try again");
            }
        }
    });
}

impl Control {
    /// One pass over every VM. Public to the crate so tests can drive it.
    pub(crate) async fn reconcile_once(&self) -> Result<(), crate::ControlError> {
        let now = OffsetDateTime::now_utc();
        let stuck_after =
            time::Duration::try_from(self.inner.cfg.stuck_after).unwrap_or(time::Duration::MINUTE);
        for vm in self.inner.store.list_vms().await? {
            let Some(host) = vm.host.clone() else {
                continue;
            };
            // Before the drift check: a VM that is where it should be is LOST all the same
            // when its host goes silent (nobody knows whether it still runs).
            if !self.inner.hosts.is_live(&host) {
                if self.inner.started.elapsed() > self.inner.cfg.startup_grace
                    && vm.state != VmState::Lost
                    && vm.state.can_transition_to(VmState::Lost)
                {
                    let reason = format!("host {host} has been silent past its lease");
                    info!(vm = %vm.spec.name, host, "VM LOST");
                    self.inner
                        .store
                        .record_status(
                            vm.id,
                            VmState::Lost,
                            vm.generation.max(vm.state_generation),
                            Some(&reason),
                        )
                        .await?;
                    self.publish_events_after(vm.id).await;
                }
                continue;
            }
            if vm.desired.satisfied_by(vm.state) {
                continue;
            }
            // Failed at the current wish: a user must act (start again, or delete).
            if vm.state == VmState::Failed && vm.state_generation >= vm.generation {
                continue;
            }
            if now - vm.updated_at >= stuck_after {
                debug!(vm = %vm.spec.name, state = %vm.state, desired = %vm.desired, "re-sending command for a VM that made no progress");
                self.send_for_desired(&vm).await;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use pitwall_proto::v1::vm_command::Command;

    use crate::testing::Harness;

    #[tokio::test]
    async fn a_vm_that_made_no_progress_gets_its_command_again() {
        let mut h = Harness::with_config(|c| c.stuck_after = Duration::ZERO).await;
        h.run_vm("fine").await;
        let stuck = h.create_vm("stuck").await;
        h.control.reconcile_once().await.unwrap();
        let (verb, cmd) = h.host.next_vm_command().await;
        assert_eq!(verb, "create");
        assert_eq!((cmd.vm_id.as_str(), cmd.generation), (stuck.id.as_str(), 1));
        assert!(matches!(cmd.command, Some(Command::Create(c)) if c.start));
        assert_eq!(h.host.waiting_commands().await, 0, "only the stuck VM");
    }

    #[tokio::test]
    async fn a_vm_that_is_still_making_progress_is_left_alone() {
        let mut h = Harness::start().await;
        h.create_vm("young").await;
        h.control.reconcile_once().await.unwrap();
        assert_eq!(h.host.waiting_commands().await, 0);
    }

    #[tokio::test]
    async fn the_vms_of_a_silent_host_are_marked_lost() {
        let mut h = Harness::with_config(|c| c.startup_grace = Duration::ZERO).await;
        h.run_vm("a").await;
        let mut events = h.control.subscribe();
        h.silence_host();
        h.control.reconcile_once().await.unwrap();
        assert_eq!(h.vm("a").await.state, "LOST");
        let e = events.try_recv().unwrap();
        assert_eq!((e.vm_name.as_str(), e.state.as_str()), ("a", "LOST"));
        assert_eq!(h.host.waiting_commands().await, 0);
    }

    #[tokio::test]
    async fn a_silent_host_keeps_its_vms_during_the_startup_grace() {
        let mut h = Harness::with_config(|c| c.startup_grace = Duration::from_secs(3600)).await;
        h.run_vm("a").await;
        h.silence_host();
        h.control.reconcile_once().await.unwrap();
        assert_eq!(h.vm("a").await.state, "RUNNING");
    }
}
