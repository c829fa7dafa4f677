//! Pitwall's host orchestrator (`pitwalld host`, and the host half of `pitwalld all`).
//!
//! It consumes its host's command queue, keeps every VM's *wish* (desired state, generation,
//! spec) on disk, and runs one actor per VM that converges the VM to its wish: image →
//! disks → VMM → readiness, clean stop, full cleanup on delete. It reports every state
//! change on the bus, sends heartbeats with capacity and every VM's state, imports and pulls images,
//! and serves console reads. After a restart it re-attaches to the VMM processes that
//! survived it and marks the dead ones.
//!
//! It never links control-side crates: it meets the control plane only through
//! `pitwall-proto` messages on a `pitwall-bus` transport.
#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pitwall_bus::Bus;
use pitwall_image::ImageCache;
use pitwall_vmm::{Accel, Vmm};

mod actor;
mod capacity;
mod commands;
mod console;
mod record;
#[cfg(test)]
mod testing;
#[cfg(test)]
mod tests;

pub use pitwall_image::registry::{Credential, RegistryOptions};
pub use record::{VmRecord, Wish};

/// Settings of one host.
#[derive(Debug, Clone)]
pub struct HostConfig {
    /// This host's name: one routing-key word.
    pub name: String,
    /// Host state: `images/`, `vms/`.
    pub data_dir: PathBuf,
    /// Shared cache of guest kernels and initramfs images (survives data-dir wipes).
    pub cache_dir: PathBuf,
    /// The static `powerunit` binary put into the initramfs.
    pub powerunit: PathBuf,
    pub qemu_binary: PathBuf,
    pub accel: Accel,
    pub heartbeat_interval: Duration,
    /// How long a guest may take from VMM start to powerunit's readiness.
    pub boot_timeout: Duration,
    /// How image pulls reach registries: insecure registries, extra CAs, credentials.
    pub registry: RegistryOptions,
    /// The filesystem of base images built from now on (images in the cache keep theirs).
    pub base_format: pitwall_image::BaseFormat,
    /// Host networking (bridge, a TAP and an address per VM, NAT); `None`: VMs get no NIC.
    pub network: Option<pitwall_net::NetConfig>,
}

impl HostConfig {
    pub fn new(
        name: impl Into<String>,
        data_dir: impl Into<PathBuf>,
        cache_dir: impl Into<PathBuf>,
        powerunit: impl Into<PathBuf>,
    ) -> Self {
        Self {
            name: name.into(),
            data_dir: data_dir.into(),
            cache_dir: cache_dir.into(),
            powerunit: powerunit.into(),
            qemu_binary: PathBuf::from("qemu-system-x86_64"),
            accel: Accel::Auto,
            heartbeat_interval: Duration::from_secs(2),
            boot_timeout: Duration::from_secs(120),
            registry: RegistryOptions::default(),
            base_format: pitwall_image::BaseFormat::default(),
            network: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum HostError {
    #[error("invalid host setting: {0}")]
    Config(String),
    #[error("bus: {0}")]
    Bus(#[from] pitwall_bus::BusError),
    #[error("image cache: {0}")]
    Image(#[from] pitwall_image::ImageError),
    #[error("VMM: {0}")]
    Vmm(#[from] pitwall_vmm::VmmError),
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("VM record {path} is corrupt: {why}")]
    Record { path: PathBuf, why: String },
}

pub(crate) fn io_err<'a>(
    what: &'static str,
    path: &'a Path,
) -> impl FnOnce(std::io::Error) -> HostError + 'a {
    move |source| HostError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

/// One running host. Cheap to clone.
#[derive(Clone)]
pub struct Host {
    inner: Arc<Inner>,
}

struct Inner {
    cfg: HostConfig,
    sender: String,
    bus: Arc<dyn Bus>,
    vmm: Arc<dyn Vmm>,
    /// Host networking for VMs (bridge, TAPs, addresses), when configured.
    net: Option<Arc<dyn pitwall_net::Network>>,
    images: Arc<ImageCache>,
    kernel: PathBuf,
    initrd: PathBuf,
    vms: Mutex<HashMap<uuid::Uuid, actor::Handle>>,
}

impl Host {
    /// Prepare the guest kernel and initramfs, open the image cache, re-attach to surviving
    /// VMs, declare the command queue and start consuming it, and start heartbeats.
    pub async fn start(cfg: HostConfig, bus: Arc<dyn Bus>) -> Result<Host, HostError> {
        pitwall_proto::routing::validate_host(&cfg.name)
            .map_err(|e| HostError::Config(format!("host name: {e}")))?;
        for d in [
            cfg.data_dir.join("vms"),
            cfg.data_dir.join("images"),
            cfg.cache_dir.clone(),
        ] {
            std::fs::create_dir_all(&d).map_err(io_err("cannot create directory", &d))?;
        }
        if !cfg.powerunit.is_file() {
            return Err(HostError::Config(format!(
                "powerunit binary {} not found: build it with scripts/setup.sh (or set [host] powerunit)",
                cfg.powerunit.display()
            )));
        }
        let (kernel, initrd) = {
            let cache = cfg.cache_dir.clone();
            let powerunit = cfg.powerunit.clone();
            tokio::task::spawn_blocking(move || -> Result<_, HostError> {
                let k = match pitwall_vmm::kernel::KernelInfo::from_cache(&cache)? {
                    Some(k) => k,
                    None => pitwall_vmm::kernel::provision(&cache)?,
                };
                let initrd =
                    pitwall_vmm::kernel::build_initramfs(&k, &powerunit, &cache.join("initramfs"))?;
                Ok((k.vmlinuz.clone(), initrd))
            })
            .await
            .map_err(|e| HostError::Config(format!("kernel preparation panicked: {e}")))??
        };
        let vmm: Arc<dyn Vmm> = Arc::new(pitwall_vmm::qemu::QemuVmm {
            binary: cfg.qemu_binary.clone(),
            accel: cfg.accel,
        });
        let net = match &cfg.network {
            Some(net_cfg) => Some(
                pitwall_net::open(net_cfg.clone())
                    .map_err(|e| HostError::Config(format!("host network: {e}")))?,
            ),
            None => None,
        };
        Host::start_with(cfg, bus, vmm, net, kernel, initrd).await
    }

    /// Start a host on a given VMM driver and an already prepared guest kernel and
    /// initramfs: open the image cache, re-attach to surviving VMs, consume the command
    /// queue, send heartbeats. [`Host::start`] prepares the kernel and picks QEMU, then calls
    /// this; tests call it with an in-memory VMM and no kernel at all.
    pub async fn start_with(
        cfg: HostConfig,
        bus: Arc<dyn Bus>,
        vmm: Arc<dyn Vmm>,
        net: Option<Arc<dyn pitwall_net::Network>>,
        kernel: PathBuf,
        initrd: PathBuf,
    ) -> Result<Host, HostError> {
        pitwall_proto::routing::validate_host(&cfg.name)
            .map_err(|e| HostError::Config(format!("host name: {e}")))?;
        for d in [cfg.data_dir.join("vms"), cfg.data_dir.join("images")] {
            std::fs::create_dir_all(&d).map_err(io_err("cannot create directory", &d))?;
        }
        if let Some(net) = &net {
            // Bridge, firewall, forwarding: created or repaired before any VM is touched.
            net.ensure_host_network().await.map_err(|e| {
                HostError::Config(format!(
                    "host network: {e} (or set [host.network] enabled = false to run VMs without networking)"
                ))
            })?;
        }
        let images = {
            let root = cfg.data_dir.join("images");
            let options = pitwall_image::ImportOptions {
                base_format: cfg.base_format,
                ..Default::default()
            };
            tokio::task::spawn_blocking(move || ImageCache::open_with(&root, options))
                .await
                .map_err(|e| HostError::Config(format!("image cache open panicked: {e}")))??
        };
        {
            // What a crash left (work of dead imports, blobs of dead pulls) goes now, in the
            // background; removals collect as they go.
            let images = images.clone();
            tokio::task::spawn_blocking(move || match images.gc() {
                Ok(r) => tracing::info!(
                    images = r.images_removed,
                    blobs = r.blobs_removed,
                    work = r.work_removed,
                    bytes = r.bytes_freed,
                    "image cache collected at start"
                ),
                Err(e) => tracing::warn!(error = %e, "image cache collection at start failed"),
            });
        }
        tracing::info!(host = cfg.name, vmm = vmm.kind(), kernel = %kernel.display(), initrd = %initrd.display(), "host ready to run VMs");
        let host = Host {
            inner: Arc::new(Inner {
                sender: format!("host/{}", cfg.name),
                cfg,
                bus,
                vmm,
                net,
                images: Arc::new(images),
                kernel,
                initrd,
                vms: Mutex::new(HashMap::new()),
            }),
        };
        host.recover().await?;
        commands::start_consumer(&host).await?;
        capacity::spawn_heartbeat(host.clone());
        Ok(host)
    }

    pub fn name(&self) -> &str {
        &self.inner.cfg.name
    }

    fn vms_dir(&self) -> PathBuf {
        self.inner.cfg.data_dir.join("vms")
    }

    /// Load every VM record left on disk and start its actor (which re-attaches to its VMM
    /// if that still runs).
    async fn recover(&self) -> Result<(), HostError> {
        let dir = self.vms_dir();
        let entries = std::fs::read_dir(&dir).map_err(io_err("cannot list", &dir))?;
        for entry in entries {
            let entry = entry.map_err(io_err("cannot list", &dir))?;
            let Ok(id) = uuid::Uuid::parse_str(&entry.file_name().to_string_lossy()) else {
                continue;
            };
            match VmRecord::load(&entry.path()) {
                Ok(Some(rec)) => {
                    tracing::info!(vm = rec.wish.spec.name, vm_id = %id, "recovering VM");
                    self.spawn_actor(rec);
                }
                Ok(None) => {
                    // A directory without a record: a create that died before its record was
                    // written. Nothing references it.
                    tracing::warn!(vm_id = %id, "removing a VM directory without a record");
                    let _ = std::fs::remove_dir_all(entry.path());
                }
                Err(e) => {
                    tracing::error!(vm_id = %id, error = %e, "VM record unreadable; left in place for an operator")
                }
            }
        }
        Ok(())
    }
}
