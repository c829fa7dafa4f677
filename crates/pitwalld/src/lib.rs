//! The Pitwall daemon's roles. `all` composes the control plane and a host in one process
//! over the in-process bus and a SQLite store: the embedded default. The two sides meet only
//! through the bus, exactly as they do when distributed.
#![forbid(unsafe_code)]

pub mod auth;
pub mod config;
pub mod overlay;

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use anyhow::{bail, Context};
use pitwall_bus::memory::InProcessBus;
use pitwall_bus::Bus;
use pitwall_control::{Control, ControlConfig};
use pitwall_host::{Host, HostConfig};
use pitwall_store::sqlite::SqliteStore;
use pitwall_store::Store;

use crate::config::Config;

/// Hold an exclusive lock on the data directory for the life of the process: two daemons
/// on one data directory would fight over every VM.
fn lock_data_dir(dir: &Path) -> anyhow::Result<nix::fcntl::Flock<std::fs::File>> {
    let path = dir.join("pitwalld.lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("cannot open lock file {}", path.display()))?;
    match nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock) {
        Ok(l) => Ok(l),
        Err((_, e)) => bail!(
            "another pitwalld uses data directory {} ({e}); stop it or pick another --data-dir",
            dir.display()
        ),
    }
}

pub fn host_config(cfg: &Config) -> anyhow::Result<HostConfig> {
    let name = cfg
        .host
        .name
        .clone()
        .unwrap_or_else(config::default_host_name);
    let powerunit = cfg
        .host
        .powerunit
        .clone()
        .unwrap_or_else(config::default_powerunit);
    let mut h = HostConfig::new(
        name,
        cfg.data_dir.join("host"),
        cfg.host.cache_dir.clone(),
        powerunit,
    );
    h.qemu_binary = cfg.host.qemu.clone();
    h.accel = config::accel(&cfg.host.accel)?;
    h.boot_timeout = config::duration("host.boot_timeout", &cfg.host.boot_timeout)?;
    h.registry = cfg.host.registry.options()?;
    h.network = cfg.host.network.clone().filter(|n| n.enabled).map(|mut n| {
        // The address pool's state belongs to this host's data, unless placed elsewhere.
        if n.state_dir == pitwall_net::NetConfig::default().state_dir {
            n.state_dir = cfg.data_dir.join("host").join("net");
        }
        n
    });
    h.base_format = cfg
        .host
        .base_format
        .parse()
        .map_err(|e: String| anyhow::anyhow!("[host] base_format: {e}"))?;
    Ok(h)
}

/// `pitwalld all`: control plane + host in this process until SIGINT/SIGTERM. VMs keep
/// running when the daemon stops; the next start re-attaches to them.
pub async fn run_all(cfg: Config) -> anyhow::Result<()> {
    std::fs::create_dir_all(&cfg.data_dir)
        .with_context(|| format!("cannot create data directory {}", cfg.data_dir.display()))?;
    let _lock = lock_data_dir(&cfg.data_dir)?;
    let control_dir = cfg.data_dir.join("control");
    std::fs::create_dir_all(&control_dir)
        .with_context(|| format!("cannot create {}", control_dir.display()))?;
    let listener = tokio::net::TcpListener::bind(&cfg.listen)
        .await
        .with_context(|| {
            format!(
                "cannot listen on {}; pick another address with --listen",
                cfg.listen
            )
        })?;
    let local = listener.local_addr()?;

    let store: Arc<dyn Store> = Arc::new(
        SqliteStore::open(&control_dir.join("pitwall.db"))
            .await
            .context("cannot open the store")?,
    );
    let bus: Arc<dyn Bus> = Arc::new(InProcessBus::new());

    let host_cfg = host_config(&cfg)?;
    // The overlay: the edge first (the terminator dials it), then the terminator, before the
    // host, so it hears the statuses of the VMs the host re-attaches to.
    let edge = if cfg.overlay.enabled {
        let ca = overlay::open_ca(&cfg.data_dir.join("overlay"))?;
        let listen: std::net::SocketAddr = cfg.overlay.edge_listen.parse().with_context(|| {
            format!(
                "[overlay] edge_listen {:?} is not an IP address and port",
                cfg.overlay.edge_listen
            )
        })?;
        let edge = Arc::new(overlay::start_edge(
            &ca,
            listen,
            &cfg.overlay.edge_names,
            store.clone(),
        )?);
        let bound = edge.local_addr();
        let edge_address = cfg.overlay.edge_address.clone().unwrap_or_else(|| {
            if bound.ip().is_unspecified() {
                format!("127.0.0.1:{}", bound.port())
            } else {
                bound.to_string()
            }
        });
        let server_name = cfg
            .overlay
            .edge_names
            .first()
            .cloned()
            .unwrap_or_else(|| "localhost".into());
        let netns = host_cfg
            .network
            .as_ref()
            .and_then(|n| n.netns.as_deref())
            .map(pitwall_net::netns_path);
        let overlay = overlay::start_terminator(
            &ca,
            &host_cfg.name,
            edge_address.clone(),
            server_name,
            netns,
        )?;
        let terminator = Arc::new(pitwall_terminator::Terminator::new(Arc::new(overlay)));
        pitwall_terminator::run(&host_cfg.name, bus.clone(), terminator)
            .await
            .context("cannot start the terminator")?;
        tracing::info!(edge = %bound, terminator_dials = %edge_address, "overlay ready");
        Some(edge)
    } else {
        None
    };
    tracing::info!(
        host = host_cfg.name,
        "starting host (this provisions the guest kernel on first start)"
    );
    let host = Host::start(host_cfg, bus.clone())
        .await
        .context("cannot start the host")?;

    let (auth, ca) = auth::build(&cfg, store.clone()).await?;
    let tls_listener = match &cfg.auth.tls_listen {
        None => None,
        Some(addr) => Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen on {addr} (auth.tls_listen)"))?,
        ),
    };

    let mut ccfg = ControlConfig::new(cfg.control.replica.clone(), control_dir);
    ccfg.stop_timeout = config::duration("control.stop_timeout", &cfg.control.stop_timeout)?;
    let control = Control::start(ccfg, store, bus, auth)
        .await
        .context("cannot start the control plane")?;
    if let Some(edge) = edge {
        control.set_edge(Arc::new(overlay::EdgeDialer(edge)));
    }

    tracing::info!(%local, host = host.name(), "pitwalld all is ready");
    if let Some(tls) = tls_listener {
        let tls_local = tls.local_addr()?;
        let server = pitwall_control::tls::server_config(&ca, &cfg.auth.tls_names)
            .context("cannot set up the mTLS listener")?;
        let router = control.router();
        tokio::spawn(async move {
            if let Err(e) = pitwall_control::tls::serve(
                tls,
                std::sync::Arc::new(server),
                router,
                shutdown_signal(),
            )
            .await
            {
                tracing::error!(error = %e, "the mTLS listener stopped");
            }
        });
        println!("pitwalld: mTLS API listening on https://{tls_local} (client certificates or bearer tokens)");
    }
    println!(
        "pitwalld: API listening on http://{local} (host {})",
        host.name()
    );
    axum::serve(
        listener,
        control
            .router()
            .into_make_service_with_connect_info::<std::net::SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown_signal())
    .await
    .context("API server failed")?;
    tracing::info!(
        "pitwalld stopping; running VMs keep running and are re-attached on the next start"
    );
    Ok(())
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

/// The process environment, for [`config::load`].
pub fn env_map() -> HashMap<String, String> {
    std::env::vars().collect()
}
