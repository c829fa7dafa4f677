//! The edge: the control plane's end of the overlay. It listens (QUIC over UDP) for
//! terminators, keeps the registry (identity, service) → host connection, and opens dial
//! streams to the terminator that holds a service.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use quinn::VarInt;
use tokio::time::timeout;
use tracing::{debug, info, warn};

use crate::error::{check_name, check_target};
use crate::stream::OverlayStream;
use crate::tls::{self, TlsIdentity};
use crate::wire::{
    self, DialReply, DialRequest, Registration, SyncRejection, ToEdge, ToTerminator,
    MAX_CONTROL_FRAME, MAX_DIAL_FRAME, PROTOCOL_VERSION,
};
use crate::OverlayError;

/// QUIC close codes the edge uses.
const CLOSE_DONE: u32 = 0;
const CLOSE_REFUSED: u32 = 1;
const CLOSE_SUPERSEDED: u32 = 2;
/// How long a new connection has to open its control stream and say hello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

/// The control plane's say on registrations: a host may register only VMs it runs.
pub trait RegistrationPolicy: Send + Sync + 'static {
    /// `Err(reason)` refuses `host`'s registration of `service` of `identity`; the reason is
    /// sent to the terminator.
    fn allow(&self, host: &str, identity: &str, service: &str) -> Result<(), String>;
}

/// The default policy: every authenticated host may register anything.
#[derive(Debug, Clone, Copy, Default)]
pub struct AllowAll;

impl RegistrationPolicy for AllowAll {
    fn allow(&self, _host: &str, _identity: &str, _service: &str) -> Result<(), String> {
        Ok(())
    }
}

/// How the edge listens.
#[derive(Debug, Clone)]
pub struct EdgeConfig {
    /// UDP address to listen on (e.g. `0.0.0.0:7443`).
    pub listen: SocketAddr,
    /// The deployment CA, the edge's server certificate and key.
    pub tls: TlsIdentity,
    /// QUIC keep-alive interval (detects a vanished host together with `idle_timeout`).
    pub keep_alive: Duration,
    /// A connection silent this long is dropped with its registrations.
    pub idle_timeout: Duration,
    /// Upper bound of a dial: stream opening, header, the terminator's TCP connect and answer.
    pub dial_timeout: Duration,
}

impl EdgeConfig {
    pub fn new(listen: SocketAddr, tls: TlsIdentity) -> Self {
        Self {
            listen,
            tls,
            keep_alive: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(30),
            dial_timeout: Duration::from_secs(15),
        }
    }
}

/// One registered service, for diagnostics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceInfo {
    pub identity: String,
    pub service: String,
    pub host: String,
    /// The address the terminator connects to (as the terminator reported it).
    pub target: SocketAddr,
}

/// One connected host, for diagnostics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostInfo {
    pub host: String,
    pub remote: SocketAddr,
    pub services: usize,
}

/// The listening edge. Dropping it closes every terminator connection.
pub struct Edge {
    shared: Arc<Shared>,
    endpoint: quinn::Endpoint,
    local_addr: SocketAddr,
}

struct HostEntry {
    conn_id: u64,
    conn: quinn::Connection,
}

struct ServiceEntry {
    host: String,
    conn_id: u64,
    conn: quinn::Connection,
    target: SocketAddr,
}

#[derive(Default)]
struct State {
    hosts: BTreeMap<String, HostEntry>,
    services: BTreeMap<(String, String), ServiceEntry>,
}

struct Shared {
    state: Mutex<State>,
    policy: Arc<dyn RegistrationPolicy>,
    dial_timeout: Duration,
    next_conn: AtomicU64,
}

impl Edge {
    /// Listens with the allow-all policy. Must run inside a tokio runtime.
    pub fn bind(config: EdgeConfig) -> Result<Edge, OverlayError> {
        Self::bind_with_policy(config, Arc::new(AllowAll))
    }

    /// Listens; `policy` decides every registration. Must run inside a tokio runtime.
    pub fn bind_with_policy(
        config: EdgeConfig,
        policy: Arc<dyn RegistrationPolicy>,
    ) -> Result<Edge, OverlayError> {
        let crypto = tls::server_crypto(&config.tls)?;
        let mut server = quinn::ServerConfig::with_crypto(Arc::new(crypto));
        let mut transport = quinn::TransportConfig::default();
        transport
            .keep_alive_interval(Some(config.keep_alive))
            .max_idle_timeout(Some(idle_timeout(config.idle_timeout)?))
            // A terminator opens exactly one stream: the control stream.
            .max_concurrent_bidi_streams(VarInt::from_u32(1))
            .max_concurrent_uni_streams(VarInt::from_u32(0));
        server.transport_config(Arc::new(transport));
        let endpoint = quinn::Endpoint::server(server, config.listen).map_err(|source| {
            OverlayError::Bind {
                addr: config.listen,
                source,
            }
        })?;
        let local_addr = endpoint.local_addr().map_err(|source| OverlayError::Bind {
            addr: config.listen,
            source,
        })?;
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            policy,
            dial_timeout: config.dial_timeout,
            next_conn: AtomicU64::new(1),
        });
        tokio::spawn(accept_loop(endpoint.clone(), shared.clone()));
        info!(listen = %local_addr, "overlay edge listening");
        Ok(Edge {
            shared,
            endpoint,
            local_addr,
        })
    }

    /// The UDP address the edge listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// A stream to `service` of `identity`, spliced by its host's terminator to the VM. The
    /// caller must have checked that its user may reach that VM.
    pub async fn dial(&self, identity: &str, service: &str) -> Result<OverlayStream, OverlayError> {
        let (host, conn) = {
            let st = self.shared.lock();
            let entry = st
                .services
                .get(&(identity.to_string(), service.to_string()))
                .ok_or_else(|| OverlayError::NoSuchService {
                    identity: identity.to_string(),
                    service: service.to_string(),
                })?;
            (entry.host.clone(), entry.conn.clone())
        };
        let unreachable = |reason: String| OverlayError::HostUnreachable {
            host: host.clone(),
            identity: identity.to_string(),
            service: service.to_string(),
            reason,
        };
        let exchange = async {
            let (mut send, mut recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
            let req = DialRequest {
                version: PROTOCOL_VERSION,
                identity: identity.to_string(),
                service: service.to_string(),
            };
            wire::write_frame(&mut send, &req)
                .await
                .map_err(|e| e.to_string())?;
            let reply: DialReply = wire::expect_frame(&mut recv, MAX_DIAL_FRAME, "dial reply")
                .await
                .map_err(|e| e.to_string())?;
            Ok::<_, String>((send, recv, reply))
        };
        let limit = self.shared.dial_timeout;
        let (send, recv, reply) = timeout(limit, exchange)
            .await
            .map_err(|_| unreachable(format!("no answer within {} s", limit.as_secs())))?
            .map_err(unreachable)?;
        match reply {
            DialReply::Ok => {
                debug!(%host, identity, service, "overlay stream open");
                Ok(OverlayStream::new(send, recv, host))
            }
            DialReply::Error { message } => {
                debug!(%host, identity, service, %message, "terminator refused a dial");
                Err(OverlayError::DialRefused {
                    host,
                    identity: identity.to_string(),
                    service: service.to_string(),
                    message,
                })
            }
        }
    }

    /// Every registered service, ordered by (identity, service).
    pub fn services(&self) -> Vec<ServiceInfo> {
        let st = self.shared.lock();
        st.services
            .iter()
            .map(|((identity, service), e)| ServiceInfo {
                identity: identity.clone(),
                service: service.clone(),
                host: e.host.clone(),
                target: e.target,
            })
            .collect()
    }

    /// Every connected host, ordered by name.
    pub fn hosts(&self) -> Vec<HostInfo> {
        let st = self.shared.lock();
        st.hosts
            .iter()
            .map(|(host, h)| HostInfo {
                host: host.clone(),
                remote: h.conn.remote_address(),
                services: st.services.values().filter(|s| s.host == *host).count(),
            })
            .collect()
    }

    /// Closes every connection and waits (5 s at most) until the UDP port is free again, so
    /// a new edge can bind it at once.
    pub async fn shutdown(self) {
        self.close();
        let _ = timeout(Duration::from_secs(5), self.endpoint.wait_idle()).await;
        let addr = self.local_addr;
        drop(self);
        // quinn's endpoint driver drops the socket on its next poll: probe until it has.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while std::net::UdpSocket::bind(addr).is_err() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        debug!(listen = %addr, "overlay edge shut down");
    }

    fn close(&self) {
        self.endpoint
            .close(VarInt::from_u32(CLOSE_DONE), b"edge shutting down");
        let mut st = self.shared.lock();
        st.hosts.clear();
        st.services.clear();
    }
}

impl Drop for Edge {
    fn drop(&mut self) {
        self.close();
    }
}

pub(crate) fn idle_timeout(d: Duration) -> Result<quinn::IdleTimeout, OverlayError> {
    quinn::IdleTimeout::try_from(d).map_err(|_| OverlayError::Tls {
        what: "QUIC idle timeout",
        reason: format!("{d:?} is out of range"),
    })
}

async fn accept_loop(endpoint: quinn::Endpoint, shared: Arc<Shared>) {
    while let Some(incoming) = endpoint.accept().await {
        tokio::spawn(serve_connection(shared.clone(), incoming));
    }
    debug!("overlay edge stopped accepting");
}

async fn serve_connection(shared: Arc<Shared>, incoming: quinn::Incoming) {
    let remote = incoming.remote_address();
    let conn = match incoming.await {
        Ok(conn) => conn,
        Err(e) => {
            warn!(%remote, error = %e, "overlay handshake failed");
            return;
        }
    };
    let host = match tls::peer_host(&conn) {
        Ok(host) => host,
        Err(reason) => {
            warn!(%remote, %reason, "overlay connection refused");
            conn.close(VarInt::from_u32(CLOSE_REFUSED), reason.as_bytes());
            return;
        }
    };
    let conn_id = shared.next_conn.fetch_add(1, Ordering::Relaxed);
    let old = shared.lock().hosts.insert(
        host.clone(),
        HostEntry {
            conn_id,
            conn: conn.clone(),
        },
    );
    if let Some(old) = old {
        info!(%host, "terminator reconnected; closing its previous connection");
        old.conn.close(
            VarInt::from_u32(CLOSE_SUPERSEDED),
            b"replaced by a newer connection from the same host",
        );
    }
    info!(%host, %remote, "terminator connected");
    match control_loop(&shared, &conn, &host, conn_id).await {
        Ok(()) => debug!(%host, "terminator closed its control stream"),
        Err(e) => debug!(%host, error = %e, "control stream ended"),
    }
    conn.close(VarInt::from_u32(CLOSE_DONE), b"control stream ended");
    shared.forget(&host, conn_id);
    info!(%host, %remote, "terminator disconnected; its services are gone");
}

async fn control_loop(
    shared: &Shared,
    conn: &quinn::Connection,
    host: &str,
    conn_id: u64,
) -> Result<(), OverlayError> {
    let (mut send, mut recv) = timeout(HELLO_TIMEOUT, conn.accept_bi())
        .await
        .map_err(|_| OverlayError::Timeout {
            doing: "waiting for the terminator's control stream",
            secs: HELLO_TIMEOUT.as_secs(),
        })?
        .map_err(|e| OverlayError::Protocol(format!("no control stream: {e}")))?;
    let hello: ToEdge = timeout(
        HELLO_TIMEOUT,
        wire::expect_frame(&mut recv, MAX_CONTROL_FRAME, "hello"),
    )
    .await
    .map_err(|_| OverlayError::Timeout {
        doing: "waiting for the terminator's hello",
        secs: HELLO_TIMEOUT.as_secs(),
    })??;
    match hello {
        ToEdge::Hello { version } if version == PROTOCOL_VERSION => {}
        other => {
            let message = match other {
                ToEdge::Hello { version } => format!(
                    "overlay protocol version {version} is not supported; this edge speaks \
                     {PROTOCOL_VERSION}: run matching Pitwall versions"
                ),
                _ => "the first message must be hello".to_string(),
            };
            wire::write_frame(
                &mut send,
                &ToTerminator::Error {
                    message: message.clone(),
                },
            )
            .await?;
            let _ = send.finish();
            return Err(OverlayError::Protocol(message));
        }
    }
    let welcome = ToTerminator::Welcome {
        version: PROTOCOL_VERSION,
        host: host.to_string(),
    };
    wire::write_frame(&mut send, &welcome).await?;
    while let Some(msg) = wire::read_frame::<_, ToEdge>(&mut recv, MAX_CONTROL_FRAME).await? {
        let reply = match msg {
            ToEdge::Hello { .. } => ToTerminator::Error {
                message: "hello was already received".to_string(),
            },
            ToEdge::Register(reg) => match shared.register(host, conn_id, conn, reg) {
                Ok(()) => ToTerminator::Ok,
                Err(message) => ToTerminator::Error { message },
            },
            ToEdge::Unregister { identity, service } => {
                shared.unregister(host, &identity, &service);
                ToTerminator::Ok
            }
            ToEdge::Sync { registrations } => ToTerminator::Synced {
                rejected: shared.sync(host, conn_id, conn, registrations),
            },
        };
        wire::write_frame(&mut send, &reply).await?;
    }
    Ok(())
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves plain maps behind: still consistent.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Validation and policy, outside the lock.
    fn vet(&self, host: &str, reg: &Registration) -> Result<(), String> {
        check_name("identity", &reg.identity).map_err(|e| e.to_string())?;
        check_name("service", &reg.service).map_err(|e| e.to_string())?;
        check_target(reg.target).map_err(|e| e.to_string())?;
        self.policy
            .allow(host, &reg.identity, &reg.service)
            .map_err(|reason| {
                format!(
                    "host {host} may not register {:?} of {:?}: {reason}",
                    reg.service, reg.identity
                )
            })
    }

    fn register(
        &self,
        host: &str,
        conn_id: u64,
        conn: &quinn::Connection,
        reg: Registration,
    ) -> Result<(), String> {
        if let Err(message) = self.vet(host, &reg) {
            warn!(host, identity = %reg.identity, service = %reg.service, %message, "registration refused");
            return Err(message);
        }
        let mut st = self.lock();
        insert(&mut st, host, conn_id, conn, reg)
    }

    fn unregister(&self, host: &str, identity: &str, service: &str) {
        let mut st = self.lock();
        let key = (identity.to_string(), service.to_string());
        if st.services.get(&key).is_some_and(|e| e.host == host) {
            st.services.remove(&key);
            info!(host, identity, service, "service unregistered");
        }
    }

    fn sync(
        &self,
        host: &str,
        conn_id: u64,
        conn: &quinn::Connection,
        regs: Vec<Registration>,
    ) -> Vec<SyncRejection> {
        let count = regs.len();
        let vetted: Vec<(Registration, Result<(), String>)> = regs
            .into_iter()
            .map(|r| {
                let verdict = self.vet(host, &r);
                (r, verdict)
            })
            .collect();
        let mut rejected = Vec::new();
        let mut st = self.lock();
        st.services.retain(|_, e| e.host != host);
        for (reg, verdict) in vetted {
            let (identity, service) = (reg.identity.clone(), reg.service.clone());
            if let Err(message) = verdict.and_then(|()| insert(&mut st, host, conn_id, conn, reg)) {
                warn!(host, %identity, %service, %message, "registration refused at sync");
                rejected.push(SyncRejection {
                    identity,
                    service,
                    message,
                });
            }
        }
        info!(
            host,
            registered = count - rejected.len(),
            rejected = rejected.len(),
            "terminator synced"
        );
        rejected
    }

    /// Drops what a closed connection held (a newer connection of the host keeps its own).
    fn forget(&self, host: &str, conn_id: u64) {
        let mut st = self.lock();
        if st.hosts.get(host).is_some_and(|h| h.conn_id == conn_id) {
            st.hosts.remove(host);
        }
        st.services.retain(|_, e| e.conn_id != conn_id);
    }
}

/// Records `reg` for `host`, unless another host still connected holds it.
fn insert(
    st: &mut State,
    host: &str,
    conn_id: u64,
    conn: &quinn::Connection,
    reg: Registration,
) -> Result<(), String> {
    let key = (reg.identity, reg.service);
    if let Some(cur) = st.services.get(&key) {
        if cur.host != host && cur.conn.close_reason().is_none() {
            return Err(format!(
                "{:?} of {:?} is registered by host {}, which is still connected; unregister it \
                 there first",
                key.1, key.0, cur.host
            ));
        }
    }
    info!(host, identity = %key.0, service = %key.1, target = %reg.target, "service registered");
    st.services.insert(
        key,
        ServiceEntry {
            host: host.to_string(),
            conn_id,
            conn: conn.clone(),
            target: reg.target,
        },
    );
    Ok(())
}
