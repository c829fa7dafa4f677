//! [`FakeNetwork`]: the in-memory [`Network`] for other crates' unit tests. Same IPAM logic
//! ([`Pool`]) and the same names and MACs as the real one; no device, no file.

use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard};

use async_trait::async_trait;

use crate::ipam::{IpamState, Pool};
use crate::{tap_name, NetConfig, NetError, Network, VmId, VmNic};

struct State {
    pool: Pool,
    host_ready: bool,
    attached: BTreeMap<VmId, VmNic>,
}

/// An in-memory [`Network`].
pub struct FakeNetwork {
    config: NetConfig,
    state: Mutex<State>,
}

impl FakeNetwork {
    pub fn new(config: NetConfig) -> Result<FakeNetwork, NetError> {
        config.validate()?;
        let pool = Pool::new(
            config.subnet,
            config.pool,
            config.gateway(),
            IpamState::default(),
        )
        .map_err(NetError::Config)?;
        Ok(FakeNetwork {
            config,
            state: Mutex::new(State {
                pool,
                host_ready: false,
                attached: BTreeMap::new(),
            }),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether [`Network::ensure_host_network`] was called.
    pub fn host_ready(&self) -> bool {
        self.lock().host_ready
    }

    /// The NICs attached now.
    pub fn attached(&self) -> Vec<VmNic> {
        self.lock().attached.values().cloned().collect()
    }
}

impl Default for FakeNetwork {
    fn default() -> Self {
        // The default config is valid (checked by the config tests).
        FakeNetwork::new(NetConfig::default()).expect("default config is valid")
    }
}

#[async_trait]
impl Network for FakeNetwork {
    async fn ensure_host_network(&self) -> Result<(), NetError> {
        self.lock().host_ready = true;
        Ok(())
    }

    async fn attach_vm(&self, vm_id: VmId) -> Result<VmNic, NetError> {
        let mut st = self.lock();
        if !st.host_ready {
            return Err(NetError::Link {
                what: "attach to bridge",
                name: tap_name(vm_id),
                why: format!(
                    "bridge {} does not exist (set up the host network first)",
                    self.config.bridge
                ),
            });
        }
        let ip = st.pool.allocate(vm_id)?.ip;
        let nic = self.config.nic(vm_id, ip);
        st.attached.insert(vm_id, nic.clone());
        Ok(nic)
    }

    async fn detach_vm(&self, vm_id: VmId) -> Result<(), NetError> {
        let mut st = self.lock();
        st.attached.remove(&vm_id);
        st.pool.release(vm_id);
        Ok(())
    }

    async fn nic(&self, vm_id: VmId) -> Result<Option<VmNic>, NetError> {
        let ip = self.lock().pool.get(vm_id);
        Ok(ip.map(|ip| self.config.nic(vm_id, ip)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn attach_detach_round_trip() {
        let net = FakeNetwork::default();
        let vm = VmId::from_u128(42);
        assert!(net.attach_vm(vm).await.is_err(), "host network first");
        net.ensure_host_network().await.expect("ensure");
        let nic = net.attach_vm(vm).await.expect("attach");
        assert_eq!(nic, net.attach_vm(vm).await.expect("again"));
        assert_eq!(nic.gateway, std::net::Ipv4Addr::new(172, 30, 0, 1));
        assert_eq!(nic.prefix_len, 16);
        assert_eq!(net.nic(vm).await.expect("nic"), Some(nic));
        net.detach_vm(vm).await.expect("detach");
        net.detach_vm(vm).await.expect("detach twice");
        assert!(net.attached().is_empty());
        assert_eq!(net.nic(vm).await.expect("nic"), None);
    }
}
