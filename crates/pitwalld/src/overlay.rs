//! The overlay composed into `pitwalld` (ARCHITECTURE §7): the control plane's **edge**
//! (`pitwall_overlay::Edge`, QUIC with mutual TLS) behind `pitwall_control`'s `Dialer`, and
//! the host's **terminator** (`pitwall_overlay::Terminator`, dialing out to the edge) behind
//! `pitwall_terminator`'s `Overlay`.
//!
//! Certificates come from the **overlay CA** (`DATA_DIR/overlay/ca.pem`, `ca-key.pem` 0600,
//! made on first start): a CA of its own, not the deployment CA, because the deployment CA's
//! users may hold CA certificates of their own (`pitwall cert sign`) and could otherwise sign
//! a `host:` certificate and pose as a host. The edge's server certificate and the host's
//! client certificate (CN `host:<name>`) are issued anew at every start.
//!
//! A host registers a VM's service only when the store places that VM on that host and the
//! VM offers the service ([`StorePolicy`]). When host networking lives in a network
//! namespace (`PITWALL_NETNS`), the terminator runs on a thread inside it, so its QUIC socket
//! and its connections to VMs belong to that namespace and the host side listens on nothing.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context as _;
use async_trait::async_trait;
use pitwall_overlay::pki::OverlayCa;
use pitwall_overlay::{Edge, EdgeConfig, RegistrationPolicy};
use pitwall_store::Store;

/// The overlay CA's certificate and key under `dir`, made on first use.
pub fn open_ca(dir: &Path) -> anyhow::Result<OverlayCa> {
    let (cert, key) = (dir.join("ca.pem"), dir.join("ca-key.pem"));
    match (cert.exists(), key.exists()) {
        (true, true) => {
            let read = |p: &PathBuf| {
                std::fs::read_to_string(p).with_context(|| format!("cannot read {}", p.display()))
            };
            Ok(OverlayCa::from_pem(read(&cert)?, read(&key)?))
        }
        (false, false) => {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
            let ca = OverlayCa::generate("Pitwall overlay CA")?;
            write_private(&key, ca.key_pem())?;
            write_private(&cert, ca.cert_pem())?;
            tracing::info!(dir = %dir.display(), "overlay CA created");
            Ok(ca)
        }
        (true, false) | (false, true) => anyhow::bail!(
            "{} holds only one of ca.pem and ca-key.pem: restore the missing one, or remove both to make a new overlay CA (hosts then get new certificates at their next start)",
            dir.display()
        ),
    }
}

fn write_private(path: &Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::PermissionsExt as _;
    let dir = path.parent().context("a file has a directory")?;
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    tmp.as_file()
        .set_permissions(std::fs::Permissions::from_mode(0o600))?;
    tmp.write_all(text.as_bytes())?;
    tmp.as_file().sync_all()?;
    tmp.persist(path)
        .map_err(|e| e.error)
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

/// The edge's registration policy: the store must place the VM named by `identity` on the
/// registering host, alive, and the VM must offer `service`.
pub struct StorePolicy {
    store: Arc<dyn Store>,
    runtime: tokio::runtime::Handle,
}

impl StorePolicy {
    pub fn new(store: Arc<dyn Store>) -> Self {
        Self {
            store,
            runtime: tokio::runtime::Handle::current(),
        }
    }
}

impl RegistrationPolicy for StorePolicy {
    fn allow(&self, host: &str, identity: &str, service: &str) -> Result<(), String> {
        // The policy is synchronous and runs on the edge's tasks (a multi-threaded runtime):
        // the store read runs to completion here. Registrations are rare (a VM's start).
        let store = self.store.clone();
        let vms = tokio::task::block_in_place(|| self.runtime.block_on(store.list_vms()))
            .map_err(|e| format!("the control plane cannot read its store: {e}"))?;
        let vm = vms
            .iter()
            .find(|v| {
                pitwall_core::overlay::identity(&v.owner, v.spec.name.as_str()) == identity
                    && v.desired != pitwall_core::DesiredState::Deleted
            })
            .ok_or_else(|| format!("no VM is named {identity:?}"))?;
        if vm.host.as_deref() != Some(host) {
            return Err(format!("VM {identity:?} is not placed on host {host:?}"));
        }
        if !pitwall_core::overlay::services(&vm.exposed_ports)
            .iter()
            .any(|s| s == service)
        {
            return Err(format!(
                "VM {identity:?} does not offer service {service:?}"
            ));
        }
        Ok(())
    }
}

/// [`pitwall_control::edge::Dialer`] over the overlay's edge.
pub struct EdgeDialer(pub Arc<Edge>);

#[async_trait]
impl pitwall_control::edge::Dialer for EdgeDialer {
    async fn dial(
        &self,
        identity: &str,
        service: &str,
    ) -> Result<Box<dyn pitwall_control::edge::Conn>, String> {
        match self.0.dial(identity, service).await {
            Ok(stream) => Ok(Box::new(stream)),
            Err(e) => Err(e.to_string()),
        }
    }
}

/// Binds the edge on `listen` with a fresh server certificate for `names`.
pub fn start_edge(
    ca: &OverlayCa,
    listen: SocketAddr,
    names: &[String],
    store: Arc<dyn Store>,
) -> anyhow::Result<Edge> {
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let cert = ca
        .issue_edge(&names)
        .context("cannot issue the edge's certificate")?;
    let edge = Edge::bind_with_policy(
        EdgeConfig::new(listen, ca.identity(&cert)),
        Arc::new(StorePolicy::new(store)),
    )
    .with_context(|| {
        format!("cannot listen for terminators on UDP {listen} ([overlay] edge_listen)")
    })?;
    Ok(edge)
}

/// [`pitwall_terminator::Overlay`] over the overlay's terminator, whose tasks run on
/// `runtime` (the one inside the host network's namespace, or the daemon's own).
pub struct TerminatorOverlay {
    terminator: Arc<pitwall_overlay::Terminator>,
    runtime: tokio::runtime::Handle,
}

#[async_trait]
impl pitwall_terminator::Overlay for TerminatorOverlay {
    async fn register(
        &self,
        identity: &str,
        service: &str,
        target: SocketAddr,
    ) -> Result<(), String> {
        let (t, i, s) = (
            self.terminator.clone(),
            identity.to_string(),
            service.to_string(),
        );
        self.runtime
            .spawn(async move { t.register(&i, &s, target).await })
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())
    }

    async fn unregister(&self, identity: &str, service: &str) -> Result<(), String> {
        let (t, i, s) = (
            self.terminator.clone(),
            identity.to_string(),
            service.to_string(),
        );
        self.runtime
            .spawn(async move { t.unregister(&i, &s).await })
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())
    }
}

/// Starts the host's terminator toward `edge_addr` (whose certificate names `server_name`),
/// inside the network namespace `netns` when given.
pub fn start_terminator(
    ca: &OverlayCa,
    host: &str,
    edge_addr: String,
    server_name: String,
    netns: Option<PathBuf>,
) -> anyhow::Result<TerminatorOverlay> {
    let cert = ca
        .issue_host(host)
        .with_context(|| format!("cannot issue the certificate of host {host:?}"))?;
    let config = pitwall_overlay::TerminatorConfig::new(edge_addr, server_name, ca.identity(&cert));
    let Some(ns) = netns else {
        let terminator = pitwall_overlay::Terminator::start(config)?;
        return Ok(TerminatorOverlay {
            terminator: Arc::new(terminator),
            runtime: tokio::runtime::Handle::current(),
        });
    };
    // A runtime of its own on a thread inside the namespace: every socket its tasks open
    // (QUIC to the edge, TCP to VMs) belongs to that namespace.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("terminator".into())
        .spawn(move || {
            let started = (|| -> anyhow::Result<_> {
                let file = std::fs::File::open(&ns)
                    .with_context(|| format!("cannot open network namespace {}", ns.display()))?;
                nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
                    .with_context(|| format!("cannot enter network namespace {}", ns.display()))?;
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?;
                let terminator =
                    rt.block_on(async { pitwall_overlay::Terminator::start(config) })?;
                Ok((rt, terminator))
            })();
            match started {
                Ok((rt, terminator)) => {
                    let _ = tx.send(Ok((rt.handle().clone(), terminator)));
                    // Drive the terminator's tasks for the life of the process.
                    rt.block_on(std::future::pending::<()>());
                }
                Err(e) => {
                    let _ = tx.send(Err(e));
                }
            }
        })
        .context("cannot start the terminator's thread")?;
    let (runtime, terminator) = rx
        .recv()
        .context("the terminator's thread ended before it started")??;
    Ok(TerminatorOverlay {
        terminator: Arc::new(terminator),
        runtime,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_overlay_ca_is_made_once_and_read_back_and_a_half_one_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().join("overlay");
        let ca = open_ca(&d).unwrap();
        let again = open_ca(&d).unwrap();
        assert_eq!(ca.cert_pem(), again.cert_pem());
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(d.join("ca-key.pem"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        std::fs::remove_file(d.join("ca-key.pem")).unwrap();
        let e = open_ca(&d).err().unwrap().to_string();
        assert!(e.contains("only one of"), "{e}");
    }
}
