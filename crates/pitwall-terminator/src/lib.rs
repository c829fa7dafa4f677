//! The terminator of one host (ARCHITECTURE §7, the seed's "Terminator"): it listens to the
//! host's status queues — `orchestrator.vm.status.terminator.running.<host>` and
//! `….stopped.<host>` — and, for every VM that becomes RUNNING with an address, registers on
//! the overlay the identity `OWNER-VMNAME` with one service per exposed TCP port plus `ssh`
//! (each pointing at the VM's address on the host bridge); when the VM is STOPPED, it removes
//! them. A VM's services change only through these statuses; a status repeated (a restart of
//! the daemon publishes each running VM's state again) changes nothing.
//!
//! What it owns: the mapping from VM statuses to overlay registrations. What it must not do:
//! reach VMs itself, listen on any port, or know how the overlay carries bytes — that is the
//! [`Overlay`] behind it (`pitwall-overlay`'s terminator, which dials out to the edge).
#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use async_trait::async_trait;
use pitwall_bus::Bus;
use pitwall_core::overlay::{identity, service_port, services};
use pitwall_core::VmState;
use pitwall_proto::v1::{envelope::Payload, VmStatus};
use pitwall_proto::{decode_envelope, routing};
use tokio::sync::Mutex;
use tracing::{debug, info, warn};

/// Where a terminator puts what it learns: the overlay's registrations.
#[async_trait]
pub trait Overlay: Send + Sync + 'static {
    /// `service` of `identity` is at `target` (replaces an earlier registration of the pair).
    async fn register(
        &self,
        identity: &str,
        service: &str,
        target: SocketAddr,
    ) -> Result<(), String>;
    /// `service` of `identity` is gone (idempotent).
    async fn unregister(&self, identity: &str, service: &str) -> Result<(), String>;
}

#[derive(Debug, thiserror::Error)]
pub enum TerminatorError {
    #[error("host name {0:?} cannot name the terminator's queues: {1}")]
    Host(String, String),
    #[error("the bus refused the terminator's queues: {0}")]
    Bus(#[from] pitwall_bus::BusError),
}

/// One registration: (identity, service) → target.
type Registrations = Vec<(String, String, SocketAddr)>;

/// The registrations a status asks for: none unless RUNNING with an address.
pub fn wanted(s: &VmStatus) -> Registrations {
    let running = s.core_state().is_ok_and(|st| st == VmState::Running);
    let Ok(ip) = s.address.parse::<IpAddr>() else {
        return Vec::new();
    };
    if !running || s.owner.is_empty() || s.name.is_empty() {
        return Vec::new();
    }
    let id = identity(&s.owner, &s.name);
    services(&s.exposed_ports)
        .into_iter()
        .filter_map(|svc| {
            let port = service_port(&svc)?;
            Some((id.clone(), svc, SocketAddr::new(ip, port)))
        })
        .collect()
}

/// The terminator of one host: what it registered, per VM id.
pub struct Terminator {
    overlay: Arc<dyn Overlay>,
    registered: Mutex<HashMap<String, Registrations>>,
}

impl Terminator {
    pub fn new(overlay: Arc<dyn Overlay>) -> Self {
        Terminator {
            overlay,
            registered: Mutex::new(HashMap::new()),
        }
    }

    /// Brings the overlay in line with one status of a VM.
    pub async fn apply(&self, s: &VmStatus) {
        let want = wanted(s);
        let mut table = self.registered.lock().await;
        let had = table.remove(&s.vm_id).unwrap_or_default();
        for (id, svc, _) in had
            .iter()
            .filter(|h| !want.iter().any(|w| w.0 == h.0 && w.1 == h.1))
        {
            match self.overlay.unregister(id, svc).await {
                Ok(()) => {
                    info!(identity = %id, service = %svc, vm_id = %s.vm_id, "service removed")
                }
                Err(e) => {
                    warn!(identity = %id, service = %svc, error = %e, "cannot remove service")
                }
            }
        }
        for (id, svc, target) in &want {
            if had.iter().any(|h| h == &(id.clone(), svc.clone(), *target)) {
                continue;
            }
            match self.overlay.register(id, svc, *target).await {
                Ok(()) => {
                    info!(identity = %id, service = %svc, %target, vm_id = %s.vm_id, "service registered")
                }
                // The overlay keeps what it was told and re-sends it when it reconnects; a
                // refusal (the edge's policy) is reported here.
                Err(e) => {
                    warn!(identity = %id, service = %svc, error = %e, "cannot register service")
                }
            }
        }
        if !want.is_empty() {
            table.insert(s.vm_id.clone(), want);
        }
    }

    /// What is registered now, for diagnostics and tests: (identity, service, target).
    pub async fn registrations(&self) -> Registrations {
        let mut all: Registrations = self
            .registered
            .lock()
            .await
            .values()
            .flatten()
            .cloned()
            .collect();
        all.sort();
        all
    }
}

/// Declares `host`'s terminator queues and applies every status they bring, until the bus
/// closes. Each delivery is acknowledged after it was applied.
pub async fn run(
    host: &str,
    bus: Arc<dyn Bus>,
    terminator: Arc<Terminator>,
) -> Result<tokio::task::JoinHandle<()>, TerminatorError> {
    let queues = [
        routing::terminator_running_queue(host),
        routing::terminator_stopped_queue(host),
    ];
    let mut consumers = Vec::new();
    for q in queues {
        let q = q.map_err(|e| TerminatorError::Host(host.to_string(), e.to_string()))?;
        bus.declare_queue(&q.name, &q.bindings).await?;
        consumers.push(bus.consume(&q.name, 16).await?);
    }
    let host = host.to_string();
    Ok(tokio::spawn(async move {
        let mut tasks = tokio::task::JoinSet::new();
        for mut consumer in consumers {
            let t = terminator.clone();
            tasks.spawn(async move {
                while let Some(d) = consumer.next().await {
                    match decode_envelope(&d.payload) {
                        Ok(env) => match env.payload {
                            Some(Payload::VmStatus(s)) => t.apply(&s).await,
                            other => debug!(?other, "not a VM status; dropped"),
                        },
                        Err(e) => warn!(error = %e, "undecodable status dropped"),
                    }
                    if let Err(e) = d.ack().await {
                        warn!(error = %e, "cannot acknowledge a status");
                    }
                }
            });
        }
        while tasks.join_next().await.is_some() {}
        info!(host, "terminator stopped: the bus closed");
    }))
}

#[cfg(test)]
mod tests;
