//! The terminator's end of the overlay: dials out to the edge (the host listens on nothing),
//! keeps its registrations and re-sends them all on every (re)connect, and splices each dial
//! stream the edge opens to the TCP target it registered itself — never to an address the
//! edge names.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use quinn::VarInt;
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::timeout;
use tracing::{debug, info, warn};

use crate::edge::idle_timeout;
use crate::error::{check_name, check_target};
use crate::tls::{self, TlsIdentity};
use crate::wire::{
    self, DialReply, DialRequest, Registration, ToEdge, ToTerminator, MAX_CONTROL_FRAME,
    MAX_DIAL_FRAME, PROTOCOL_VERSION,
};
use crate::OverlayError;

/// How many dial streams the edge may have open on one host at once.
const MAX_DIAL_STREAMS: u32 = 1024;
/// How long the edge has to send a dial header once it opened the stream.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// How the terminator reaches the edge.
#[derive(Debug, Clone)]
pub struct TerminatorConfig {
    /// The edge's UDP address, `host:port` (resolved on every connection attempt).
    pub edge_addr: String,
    /// The name the edge's certificate must carry (DNS name or IP address).
    pub server_name: String,
    /// The deployment CA, this host's client certificate (CN `host:<hostname>`) and key.
    pub tls: TlsIdentity,
    /// First delay before reconnecting; doubles up to `reconnect_max`.
    pub reconnect_min: Duration,
    pub reconnect_max: Duration,
    /// QUIC keep-alive interval and idle timeout (how fast a vanished edge is noticed).
    pub keep_alive: Duration,
    pub idle_timeout: Duration,
    /// Bound on one exchange with the edge (handshake, hello, one request).
    pub request_timeout: Duration,
    /// Bound on the TCP connect to a registered target.
    pub connect_timeout: Duration,
}

impl TerminatorConfig {
    pub fn new(
        edge_addr: impl Into<String>,
        server_name: impl Into<String>,
        tls: TlsIdentity,
    ) -> Self {
        Self {
            edge_addr: edge_addr.into(),
            server_name: server_name.into(),
            tls,
            reconnect_min: Duration::from_millis(250),
            reconnect_max: Duration::from_secs(10),
            keep_alive: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(30),
            request_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(10),
        }
    }
}

/// Where the terminator stands with the edge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TerminatorStatus {
    /// Not connected (yet or any more); `last_error` says why the last attempt failed.
    Disconnected { last_error: Option<String> },
    /// Connected and synced; `host` is the name the edge read from the certificate.
    Connected { edge: SocketAddr, host: String },
}

impl TerminatorStatus {
    pub fn is_connected(&self) -> bool {
        matches!(self, TerminatorStatus::Connected { .. })
    }
}

type Key = (String, String);

/// The live control stream, present while connected and synced.
struct Control {
    conn: quinn::Connection,
    send: quinn::SendStream,
    recv: quinn::RecvStream,
}

impl Control {
    async fn request(
        &mut self,
        msg: &ToEdge,
        limit: Duration,
    ) -> Result<ToTerminator, OverlayError> {
        let exchange = async {
            wire::write_frame(&mut self.send, msg).await?;
            wire::expect_frame(&mut self.recv, MAX_CONTROL_FRAME, "edge's answer").await
        };
        timeout(limit, exchange)
            .await
            .map_err(|_| OverlayError::Timeout {
                doing: "waiting for the edge's answer",
                secs: limit.as_secs(),
            })?
    }
}

struct Shared {
    config: TerminatorConfig,
    client: quinn::ClientConfig,
    registrations: Mutex<BTreeMap<Key, SocketAddr>>,
    /// Serialises requests on the control stream and orders them with the sync.
    control: tokio::sync::Mutex<Option<Control>>,
    status: watch::Sender<TerminatorStatus>,
}

/// A running terminator. Dropping it closes the connection to the edge.
pub struct Terminator {
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

impl Terminator {
    /// Checks the configuration and starts connecting in the background (with backoff, for
    /// ever). Must run inside a tokio runtime.
    pub fn start(config: TerminatorConfig) -> Result<Terminator, OverlayError> {
        let crypto = tls::client_crypto(&config.tls)?;
        let mut client = quinn::ClientConfig::new(Arc::new(crypto));
        let mut transport = quinn::TransportConfig::default();
        transport
            .keep_alive_interval(Some(config.keep_alive))
            .max_idle_timeout(Some(idle_timeout(config.idle_timeout)?))
            .max_concurrent_bidi_streams(VarInt::from_u32(MAX_DIAL_STREAMS))
            .max_concurrent_uni_streams(VarInt::from_u32(0));
        client.transport_config(Arc::new(transport));
        let (status, _) = watch::channel(TerminatorStatus::Disconnected { last_error: None });
        let shared = Arc::new(Shared {
            config,
            client,
            registrations: Mutex::new(BTreeMap::new()),
            control: tokio::sync::Mutex::new(None),
            status,
        });
        let task = tokio::spawn(supervise(shared.clone()));
        Ok(Terminator { shared, task })
    }

    /// Registers `service` of `identity` at `target` (replacing an earlier target of the pair).
    /// Connected: the edge's answer is returned (its refusal as [`OverlayError::Rejected`],
    /// and the registration is then not kept). Not connected: the registration is kept and
    /// sent with the `Sync` of the next connection; the edge's verdict is then logged.
    pub async fn register(
        &self,
        identity: &str,
        service: &str,
        target: SocketAddr,
    ) -> Result<(), OverlayError> {
        check_name("identity", identity)?;
        check_name("service", service)?;
        check_target(target)?;
        let reg = Registration {
            identity: identity.to_string(),
            service: service.to_string(),
            target,
        };
        let mut control = self.shared.control.lock().await;
        let answer = self
            .shared
            .send(&mut control, &ToEdge::Register(reg.clone()))
            .await;
        if let Some(ToTerminator::Error { message }) = answer {
            return Err(OverlayError::Rejected {
                request: format!("registration of {service:?} of {identity:?}"),
                message,
            });
        }
        self.shared
            .regs()
            .insert((reg.identity, reg.service), target);
        info!(identity, service, %target, "service registered");
        Ok(())
    }

    /// Forgets `service` of `identity` (idempotent): new dials to it are refused at once.
    pub async fn unregister(&self, identity: &str, service: &str) -> Result<(), OverlayError> {
        let mut control = self.shared.control.lock().await;
        let removed = self
            .shared
            .regs()
            .remove(&(identity.to_string(), service.to_string()));
        let answer = self
            .shared
            .send(
                &mut control,
                &ToEdge::Unregister {
                    identity: identity.to_string(),
                    service: service.to_string(),
                },
            )
            .await;
        if removed.is_some() {
            info!(identity, service, "service unregistered");
        }
        match answer {
            Some(ToTerminator::Error { message }) => Err(OverlayError::Rejected {
                request: format!("unregistration of {service:?} of {identity:?}"),
                message,
            }),
            _ => Ok(()),
        }
    }

    /// This terminator's registrations, ordered by (identity, service).
    pub fn registrations(&self) -> Vec<Registration> {
        self.shared
            .regs()
            .iter()
            .map(|((identity, service), target)| Registration {
                identity: identity.clone(),
                service: service.clone(),
                target: *target,
            })
            .collect()
    }

    pub fn status(&self) -> TerminatorStatus {
        self.shared.status.borrow().clone()
    }

    /// A receiver that sees every status change (for waiting on "connected").
    pub fn watch_status(&self) -> watch::Receiver<TerminatorStatus> {
        self.shared.status.subscribe()
    }
}

impl Drop for Terminator {
    fn drop(&mut self) {
        self.task.abort();
        if let Ok(mut control) = self.shared.control.try_lock() {
            if let Some(c) = control.take() {
                c.conn
                    .close(VarInt::from_u32(0), b"terminator shutting down");
            }
        }
    }
}

impl Shared {
    fn regs(&self) -> MutexGuard<'_, BTreeMap<Key, SocketAddr>> {
        // Plain map: still consistent after a panic elsewhere.
        self.registrations.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn snapshot(&self) -> Vec<Registration> {
        self.regs()
            .iter()
            .map(|((identity, service), target)| Registration {
                identity: identity.clone(),
                service: service.clone(),
                target: *target,
            })
            .collect()
    }

    /// Sends `msg` if connected: `Some(answer)`, or `None` when not connected or the
    /// connection broke (then it is closed, and the next connection's `Sync` carries the
    /// change).
    async fn send(&self, control: &mut Option<Control>, msg: &ToEdge) -> Option<ToTerminator> {
        let c = control.as_mut()?;
        match c.request(msg, self.config.request_timeout).await {
            Ok(answer @ (ToTerminator::Ok | ToTerminator::Error { .. })) => Some(answer),
            Ok(other) => {
                warn!(answer = ?other, "edge answered out of protocol; reconnecting");
                self.drop_control(control, "unexpected answer");
                None
            }
            Err(e) => {
                warn!(error = %e, "control stream to the edge failed; reconnecting");
                self.drop_control(control, "control stream failed");
                None
            }
        }
    }

    fn drop_control(&self, control: &mut Option<Control>, why: &str) {
        if let Some(c) = control.take() {
            c.conn.close(VarInt::from_u32(1), why.as_bytes());
        }
    }
}

/// Connects, serves, reconnects with backoff, for ever (until the task is aborted).
async fn supervise(shared: Arc<Shared>) {
    let min = shared.config.reconnect_min;
    let max = shared.config.reconnect_max.max(min);
    let mut backoff = min;
    loop {
        let last_error = match connect(&shared).await {
            Ok((endpoint, conn)) => {
                backoff = min;
                let reason = serve_dials(&shared, &conn).await;
                shared.drop_control(&mut *shared.control.lock().await, "reconnecting");
                endpoint.close(VarInt::from_u32(0), b"reconnecting");
                warn!(reason = %reason, "connection to the edge lost; reconnecting");
                Some(format!("connection to the edge lost: {reason}"))
            }
            Err(e) => {
                warn!(edge = %shared.config.edge_addr, error = %e, retry_in = ?backoff, "cannot reach the edge");
                Some(e.to_string())
            }
        };
        shared
            .status
            .send_replace(TerminatorStatus::Disconnected { last_error });
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(max);
    }
}

/// One connection: handshake, hello, sync. Returns it once the control stream is in place.
async fn connect(shared: &Shared) -> Result<(quinn::Endpoint, quinn::Connection), OverlayError> {
    let cfg = &shared.config;
    let connect_err = |reason: String| OverlayError::Connect {
        addr: cfg.edge_addr.clone(),
        reason,
    };
    let addr = tokio::net::lookup_host(&cfg.edge_addr)
        .await
        .map_err(|e| OverlayError::Resolve {
            addr: cfg.edge_addr.clone(),
            reason: e.to_string(),
        })?
        .next()
        .ok_or_else(|| OverlayError::Resolve {
            addr: cfg.edge_addr.clone(),
            reason: "no address".to_string(),
        })?;
    let local: SocketAddr = if addr.is_ipv6() {
        (Ipv6Addr::UNSPECIFIED, 0).into()
    } else {
        (Ipv4Addr::UNSPECIFIED, 0).into()
    };
    let endpoint = quinn::Endpoint::client(local).map_err(|e| connect_err(e.to_string()))?;
    let limit = cfg.request_timeout;
    let handshake = async {
        let conn = endpoint
            .connect_with(shared.client.clone(), addr, &cfg.server_name)
            .map_err(|e| connect_err(e.to_string()))?
            .await
            .map_err(|e| connect_err(e.to_string()))?;
        let (mut send, mut recv) = conn
            .open_bi()
            .await
            .map_err(|e| connect_err(e.to_string()))?;
        wire::write_frame(
            &mut send,
            &ToEdge::Hello {
                version: PROTOCOL_VERSION,
            },
        )
        .await
        .map_err(|e| connect_err(closed_or(&conn, e)))?;
        let welcome: ToTerminator =
            wire::expect_frame(&mut recv, MAX_CONTROL_FRAME, "edge's welcome")
                .await
                .map_err(|e| connect_err(closed_or(&conn, e)))?;
        Ok::<_, OverlayError>((conn, send, recv, welcome))
    };
    let (conn, send, recv, welcome) = timeout(limit, handshake)
        .await
        .map_err(|_| connect_err(format!("no welcome within {} s", limit.as_secs())))??;
    let mut control = Control {
        conn: conn.clone(),
        send,
        recv,
    };
    let host = match welcome {
        ToTerminator::Welcome { version, host } if version == PROTOCOL_VERSION => host,
        ToTerminator::Error { message } => {
            return Err(OverlayError::Rejected {
                request: "hello".to_string(),
                message,
            })
        }
        other => {
            return Err(OverlayError::Protocol(format!(
                "expected the edge's welcome, got {other:?}"
            )))
        }
    };
    // Sync under the control lock: a register() waits for it, so none is lost in between.
    let mut guard = shared.control.lock().await;
    let registrations = shared.snapshot();
    let count = registrations.len();
    match control
        .request(&ToEdge::Sync { registrations }, limit)
        .await
    {
        Ok(ToTerminator::Synced { rejected }) => {
            for r in &rejected {
                warn!(identity = %r.identity, service = %r.service, message = %r.message, "edge refused a registration at sync");
            }
            info!(edge = %addr, %host, registrations = count, rejected = rejected.len(), "connected to the edge");
        }
        Ok(other) => {
            return Err(OverlayError::Protocol(format!(
                "expected the answer to sync, got {other:?}"
            )))
        }
        Err(e) => return Err(connect_err(closed_or(&conn, e))),
    }
    *guard = Some(control);
    drop(guard);
    shared
        .status
        .send_replace(TerminatorStatus::Connected { edge: addr, host });
    Ok((endpoint, conn))
}

/// The connection's close reason if it is closed (says e.g. which certificate check failed),
/// else the stream error.
fn closed_or(conn: &quinn::Connection, e: OverlayError) -> String {
    match conn.close_reason() {
        Some(reason) => reason.to_string(),
        None => e.to_string(),
    }
}

/// Accepts the edge's dial streams until the connection ends; returns why it ended.
async fn serve_dials(shared: &Arc<Shared>, conn: &quinn::Connection) -> quinn::ConnectionError {
    loop {
        match conn.accept_bi().await {
            Ok((send, recv)) => {
                tokio::spawn(serve_dial(shared.clone(), send, recv));
            }
            Err(e) => return e,
        }
    }
}

/// One dial stream: header, look-up of our own registration, TCP connect, answer, splice.
async fn serve_dial(shared: Arc<Shared>, mut send: quinn::SendStream, mut recv: quinn::RecvStream) {
    let header = timeout(
        HEADER_TIMEOUT,
        wire::expect_frame::<_, DialRequest>(&mut recv, MAX_DIAL_FRAME, "dial header"),
    )
    .await;
    let req = match header {
        Ok(Ok(req)) => req,
        Ok(Err(e)) => {
            debug!(error = %e, "unreadable dial header");
            return;
        }
        Err(_) => {
            debug!("no dial header in time");
            return;
        }
    };
    let (identity, service) = (req.identity, req.service);
    let refuse = |message: String| DialReply::Error { message };
    let target = shared
        .regs()
        .get(&(identity.clone(), service.clone()))
        .copied();
    let outcome = if req.version != PROTOCOL_VERSION {
        Err(refuse(format!(
            "dial protocol version {} is not supported; this terminator speaks {PROTOCOL_VERSION}",
            req.version
        )))
    } else if let Some(target) = target {
        let limit = shared.config.connect_timeout;
        match timeout(limit, TcpStream::connect(target)).await {
            Ok(Ok(tcp)) => Ok((tcp, target)),
            Ok(Err(e)) => Err(refuse(format!("connection to {target} failed: {e}"))),
            Err(_) => Err(refuse(format!(
                "connection to {target} timed out after {} s",
                limit.as_secs()
            ))),
        }
    } else {
        Err(refuse(format!(
            "{service:?} of {identity:?} is not registered on this host"
        )))
    };
    let (mut tcp, target) = match outcome {
        Ok(ok) => ok,
        Err(reply) => {
            if let DialReply::Error { message } = &reply {
                warn!(%identity, %service, %message, "dial refused");
            }
            if wire::write_frame(&mut send, &reply).await.is_ok() {
                let _ = send.finish();
            }
            return;
        }
    };
    if let Err(e) = wire::write_frame(&mut send, &DialReply::Ok).await {
        debug!(%identity, %service, error = %e, "edge went away before the splice");
        return;
    }
    debug!(%identity, %service, %target, "splicing");
    let mut quic = tokio::io::join(recv, send);
    match tokio::io::copy_bidirectional(&mut quic, &mut tcp).await {
        Ok((up, down)) => {
            debug!(%identity, %service, %target, bytes_to_vm = up, bytes_from_vm = down, "splice done")
        }
        Err(e) => debug!(%identity, %service, %target, error = %e, "splice ended with an error"),
    }
}

#[cfg(test)]
mod tests;
