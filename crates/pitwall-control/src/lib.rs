//! Pitwall's control plane: the REST API (v1), scheduling of VMs onto hosts, intake of the
//! hosts' status reports and heartbeats from the bus, lifecycle events for clients, and the
//! reconciler that repairs drift between desired and actual state.
//!
//! It stores desired state (`pitwall-store`) and talks to hosts only through `pitwall-proto`
//! messages on a `pitwall-bus` transport. It never links host-side crates and never needs
//! root.
#![forbid(unsafe_code)]
// The OpenAPI document is one `json!` literal (openapi.rs), deeper than the default limit.
#![recursion_limit = "512"]

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pitwall_bus::Bus;
use pitwall_proto::v1::{Envelope, ImageProgress};
use pitwall_store::{EventRecord, Store};
use tokio::sync::{broadcast, oneshot};

pub mod api;
pub mod auth;
pub mod edge;
mod hosts;
mod messaging;
mod openapi;
mod reconcile;
#[cfg(test)]
mod testing;
pub mod tls;

pub use hosts::HostInfo;

/// Settings of one control-plane replica.
#[derive(Debug, Clone)]
pub struct ControlConfig {
    /// This replica's name: one routing-key word (its reply queue is named after it).
    pub replica: String,
    /// Where uploads are staged before a host imports them.
    pub data_dir: PathBuf,
    /// How long the control plane waits for a host's answer to a query (console reads).
    pub reply_timeout: Duration,
    /// How long an image import may take on the host.
    pub import_timeout: Duration,
    /// Grace the guest gets to shut down on stop/delete before its VMM is killed.
    pub stop_timeout: Duration,
    /// How often the reconciler looks for drift.
    pub reconcile_interval: Duration,
    /// A VM whose state did not change for this long while it differs from its desired
    /// state gets its command sent again.
    pub stuck_after: Duration,
    /// After this replica starts, hosts get this long to be heard from before their VMs are
    /// marked LOST (hosts are known from heartbeats only, so at start none is live).
    pub startup_grace: Duration,
    /// Largest image archive accepted for upload.
    pub max_upload_bytes: u64,
}

impl ControlConfig {
    pub fn new(replica: impl Into<String>, data_dir: impl Into<PathBuf>) -> Self {
        Self {
            replica: replica.into(),
            data_dir: data_dir.into(),
            reply_timeout: Duration::from_secs(10),
            import_timeout: Duration::from_secs(1800),
            stop_timeout: Duration::from_secs(10),
            reconcile_interval: Duration::from_secs(5),
            stuck_after: Duration::from_secs(60),
            startup_grace: Duration::from_secs(30),
            max_upload_bytes: 16 << 30,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("invalid control-plane setting: {0}")]
    Config(String),
    #[error("bus: {0}")]
    Bus(#[from] pitwall_bus::BusError),
    #[error("store: {0}")]
    Store(#[from] pitwall_store::StoreError),
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
}

/// One running control-plane replica. Cheap to clone.
#[derive(Clone)]
pub struct Control {
    inner: Arc<Inner>,
}

struct Inner {
    cfg: ControlConfig,
    auth: Arc<auth::Auth>,
    store: Arc<dyn Store>,
    bus: Arc<dyn Bus>,
    sender: String,
    reply_key: String,
    events: broadcast::Sender<EventRecord>,
    hosts: hosts::Hosts,
    /// Requests waiting for their answer, by correlation id.
    pending: Mutex<HashMap<String, Pending>>,
    /// Sequence number of the last event broadcast to subscribers.
    last_seq: tokio::sync::Mutex<u64>,
    started: Instant,
    /// The overlay to the hosts' terminators, once the daemon set it.
    edge: std::sync::OnceLock<Arc<dyn edge::Dialer>>,
}

/// A request sent to a host: where its answer goes, and its progress reports (ImageProgress,
/// sent before the answer) for the requests that asked for them.
struct Pending {
    reply: oneshot::Sender<Envelope>,
    progress: Option<tokio::sync::mpsc::UnboundedSender<ImageProgress>>,
}

impl Control {
    /// Declare this replica's queues, start consuming statuses, heartbeats and replies, and
    /// start the reconciler. Serve [`Control::router`] to expose the API.
    pub async fn start(
        cfg: ControlConfig,
        store: Arc<dyn Store>,
        bus: Arc<dyn Bus>,
        auth: auth::Auth,
    ) -> Result<Control, ControlError> {
        let reply_key = pitwall_proto::routing::reply_key(&cfg.replica)
            .map_err(|e| ControlError::Config(format!("replica name: {e}")))?;
        let uploads = cfg.data_dir.join("uploads");
        std::fs::create_dir_all(&uploads).map_err(|source| ControlError::Io {
            what: "cannot create the upload directory",
            path: uploads.clone(),
            source,
        })?;
        let (events, _) = broadcast::channel(1024);
        let last_seq = last_event_seq(store.as_ref()).await?;
        let control = Control {
            inner: Arc::new(Inner {
                sender: format!("control/{}", cfg.replica),
                reply_key,
                cfg,
                auth: Arc::new(auth),
                store,
                bus,
                events,
                hosts: hosts::Hosts::default(),
                pending: Mutex::new(HashMap::new()),
                last_seq: tokio::sync::Mutex::new(last_seq),
                started: Instant::now(),
                edge: std::sync::OnceLock::new(),
            }),
        };
        messaging::start_consumers(&control).await?;
        reconcile::spawn(control.clone());
        Ok(control)
    }

    /// The HTTP API (v1, health, OpenAPI document).
    pub fn router(&self) -> axum::Router {
        api::router(self.clone())
    }

    /// Hosts that heartbeated within their lease.
    pub fn live_hosts(&self) -> Vec<HostInfo> {
        self.inner.hosts.live()
    }

    /// Carry connections to VM services over `dialer` (the overlay to the terminators). Set
    /// once; a second call is refused and returns `false`.
    pub fn set_edge(&self, dialer: Arc<dyn edge::Dialer>) -> bool {
        self.inner.edge.set(dialer).is_ok()
    }

    /// Subscribe to lifecycle events as the store records them.
    pub fn subscribe(&self) -> broadcast::Receiver<EventRecord> {
        self.inner.events.subscribe()
    }
}

async fn last_event_seq(store: &dyn Store) -> Result<u64, ControlError> {
    let mut last = 0;
    loop {
        let page = store.events_since(last, 10_000).await?;
        match page.last() {
            Some(e) => last = e.seq,
            None => return Ok(last),
        }
    }
}
