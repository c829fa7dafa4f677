//! Running [`HostNetwork`] inside a named network namespace ([`NetConfig::netns`]).
//!
//! Netlink sockets, `/dev/net/tun`, `nft` children and `/proc/sys/net` all act on the
//! network namespace of the thread that opens or spawns them. So every operation runs on a
//! fresh thread that enters the namespace with `setns(2)` and drives the operation on its own
//! current-thread tokio runtime; the caller's threads (tokio's pooled workers among them)
//! never change namespace. One thread per operation is fine here: attach and detach happen
//! once per VM start and delete.

use std::fs::File;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;

use async_trait::async_trait;

use crate::{HostNetwork, NetError, Network, VmId, VmNic};

/// `/var/run/netns/NAME` for a bare name (as `ip netns add NAME` makes), else the path given.
pub fn netns_path(netns: &str) -> PathBuf {
    if netns.contains('/') {
        PathBuf::from(netns)
    } else {
        Path::new("/var/run/netns").join(netns)
    }
}

type Op<T> =
    Box<dyn FnOnce(Arc<HostNetwork>) -> Pin<Box<dyn Future<Output = Result<T, NetError>>>> + Send>;

/// [`HostNetwork`] whose every operation runs inside the network namespace at `path`.
pub struct NetnsNetwork {
    inner: Arc<HostNetwork>,
    path: PathBuf,
}

impl NetnsNetwork {
    /// Checks that the namespace exists; touches nothing.
    pub fn new(inner: HostNetwork, netns: &str) -> Result<NetnsNetwork, NetError> {
        let path = netns_path(netns);
        File::open(&path).map_err(|e| {
            NetError::Config(format!(
                "network namespace {}: {e}; create it (`ip netns add NAME`) or remove `netns` from the network settings",
                path.display()
            ))
        })?;
        Ok(NetnsNetwork {
            inner: Arc::new(inner),
            path,
        })
    }

    pub fn host_network(&self) -> &HostNetwork {
        &self.inner
    }

    /// The namespace's path (VMMs must run in it to open the TAPs).
    pub fn path(&self) -> &Path {
        &self.path
    }

    async fn run<T: Send + 'static>(&self, op: Op<T>) -> Result<T, NetError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let inner = self.inner.clone();
        let path = self.path.clone();
        std::thread::Builder::new()
            .name("pitwall-netns".into())
            .spawn(move || {
                let result = enter(&path).and_then(|()| {
                    tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .map_err(|e| NetError::io("start a runtime for", &path, e))?
                        .block_on(op(inner))
                });
                let _ = tx.send(result);
            })
            .map_err(|e| NetError::io("start a thread for", &self.path, e))?;
        rx.await.map_err(|_| {
            NetError::Config(format!(
                "the operation in network namespace {} ended without an answer",
                self.path.display()
            ))
        })?
    }
}

fn enter(path: &Path) -> Result<(), NetError> {
    let file = File::open(path).map_err(|e| NetError::io("open network namespace", path, e))?;
    nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).map_err(|e| {
        NetError::io(
            "enter network namespace",
            path,
            std::io::Error::from_raw_os_error(e as i32),
        )
    })
}

#[async_trait]
impl Network for NetnsNetwork {
    async fn ensure_host_network(&self) -> Result<(), NetError> {
        self.run(Box::new(|n| {
            Box::pin(async move { n.ensure_host_network().await })
        }))
        .await
    }

    async fn attach_vm(&self, vm_id: VmId) -> Result<VmNic, NetError> {
        self.run(Box::new(move |n| {
            Box::pin(async move { n.attach_vm(vm_id).await })
        }))
        .await
    }

    async fn detach_vm(&self, vm_id: VmId) -> Result<(), NetError> {
        self.run(Box::new(move |n| {
            Box::pin(async move { n.detach_vm(vm_id).await })
        }))
        .await
    }

    async fn nic(&self, vm_id: VmId) -> Result<Option<VmNic>, NetError> {
        self.inner.nic(vm_id).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bare_name_is_looked_up_where_ip_netns_keeps_them() {
        assert_eq!(netns_path("pw1"), Path::new("/var/run/netns/pw1"));
        assert_eq!(netns_path("/proc/1/ns/net"), Path::new("/proc/1/ns/net"));
    }

    #[test]
    fn a_missing_namespace_says_how_to_create_it() {
        let net = HostNetwork::new(crate::NetConfig::default()).expect("config");
        let e = NetnsNetwork::new(net, "pitwall-no-such-netns")
            .err()
            .expect("no namespace");
        assert!(e.to_string().contains("ip netns add"), "{e}");
    }
}
