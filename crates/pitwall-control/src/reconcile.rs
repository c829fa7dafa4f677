//! The control plane's reconciler: every few seconds it compares each VM's desired state
//! with the state its host reported, sends the command again for a VM that made no progress
//! for `stuck_after` (a lost message never loses a VM: hosts are idempotent by generation),
//! and marks the VMs of a host that went silent past its lease `LOST`.

use std::time::Duration;

use pitwall_core::VmState;
use time::OffsetDateTime;
use tracing::{debug, info, warn};

use crate::Control;

/// After a restart, hosts get this long to be heard from before their VMs are marked LOST.
const STARTUP_GRACE: Duration = Duration::from_secs(30);

pub(crate) fn spawn(control: Control) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(control.inner.cfg.reconcile_interval);
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
            if vm.desired.satisfied_by(vm.state) {
                continue;
            }
            let Some(host) = vm.host.clone() else {
                continue;
            };
            if !self.inner.hosts.is_live(&host) {
                if self.inner.started.elapsed() > STARTUP_GRACE
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
