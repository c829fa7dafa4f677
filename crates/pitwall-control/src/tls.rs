//! The API over TLS, with optional client certificates: [`server_config`] builds a rustls
//! configuration whose server certificate is signed by the deployment CA and which asks
//! clients for a certificate chained to that CA (without requiring one, so that a client
//! may still use a bearer token); [`serve`] accepts connections, does the handshake and
//! serves an axum [`Router`] with hyper, giving every request the peer's certificates
//! ([`PeerCertificates`]) and address ([`ConnectInfo`]) in its extensions.
//!
//! `axum::serve` cannot do this (it knows only plain TCP listeners), hence the accept loop
//! here; everything else is hyper's and rustls'. The crypto provider is `ring`, chosen
//! explicitly (reqwest's rustls uses it too), never the process-wide default.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::Router;
use hyper::body::Incoming;
use hyper::Request;
use hyper_util::rt::{TokioIo, TokioTimer};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::auth::x509::{DeploymentCa, X509Error};

/// A handshake that takes longer is dropped.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// After shutdown, how long [`serve`] waits for open connections to finish their requests.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
/// Time a client gets to send a request's headers.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// The certificate chain the TLS client presented, leaf first; empty when it presented
/// none. Present in the extensions of every request [`serve`] serves.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PeerCertificates(pub Vec<CertificateDer<'static>>);

impl PeerCertificates {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot make the server certificate: {0}")]
    Certificate(#[from] X509Error),
    #[error("invalid TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("cannot build the client-certificate verifier: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
}

/// The rustls provider used by the server (and its tests).
pub fn crypto_provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// TLS 1.3 and 1.2, a fresh server certificate for `names` (DNS names or IP addresses)
/// signed by `ca`, client certificates verified against `ca` but optional, ALPN `http/1.1`.
pub fn server_config(ca: &DeploymentCa, names: &[String]) -> Result<ServerConfig, TlsError> {
    let provider = crypto_provider();
    let mut roots = RootCertStore::empty();
    roots.add(ca.ca_der())?;
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .allow_unauthenticated()
        .build()?;
    let (cert_pem, key) = ca.server_certificate_key(names)?;
    let leaf = pitwall_api::cert::parse_chain_pem(&cert_pem)
        .map_err(|e| TlsError::Certificate(e.into()))?
        .into_iter()
        .map(|c| CertificateDer::from(c.der))
        .collect::<Vec<_>>();
    let chain = leaf.into_iter().chain([ca.ca_der()]).collect();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// Serves `router` over TLS on `listener` until `shutdown` completes; then stops accepting,
/// asks open connections to close once their current request is answered, and returns when
/// they have (or after [`SHUTDOWN_GRACE`]). A failed handshake is logged (debug) and costs
/// only its connection.
pub async fn serve(
    listener: TcpListener,
    config: Arc<ServerConfig>,
    router: Router,
    shutdown: impl Future<Output = ()> + Send,
) -> std::io::Result<()> {
    let acceptor = TlsAcceptor::from(config);
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::pin!(shutdown);
    loop {
        let (tcp, peer) = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "cannot accept a TLS connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let acceptor = acceptor.clone();
        let router = router.clone();
        let stop_rx = stop_rx.clone();
        tokio::spawn(async move {
            serve_connection(acceptor, tcp, peer, router, stop_rx).await;
        });
    }
    drop(stop_rx);
    let _ = stop_tx.send(true);
    // Every connection holds a receiver: closed() completes when the last one is gone. An
    // endless response (an event stream) would never end: give up waiting after a while.
    if tokio::time::timeout(SHUTDOWN_GRACE, stop_tx.closed())
        .await
        .is_err()
    {
        tracing::debug!("TLS connections still open at shutdown; not waiting for them");
    }
    Ok(())
}

async fn serve_connection(
    acceptor: TlsAcceptor,
    tcp: tokio::net::TcpStream,
    peer: SocketAddr,
    router: Router,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            tracing::debug!(%peer, error = %e, "TLS handshake failed");
            return;
        }
        Err(_) => {
            tracing::debug!(%peer, "TLS handshake timed out");
            return;
        }
    };
    let certs = PeerCertificates(
        tls.get_ref()
            .1
            .peer_certificates()
            .map(|c| c.iter().map(|c| c.clone().into_owned()).collect())
            .unwrap_or_default(),
    );
    let service = hyper::service::service_fn(move |mut req: Request<Incoming>| {
        req.extensions_mut().insert(certs.clone());
        req.extensions_mut().insert(ConnectInfo(peer));
        let mut router = router.clone();
        // Router is always ready, and its error type is Infallible.
        tower::Service::call(&mut router, req)
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT);
    let conn = builder
        .serve_connection(TokioIo::new(tls), service)
        .with_upgrades();
    tokio::pin!(conn);
    let result = tokio::select! {
        r = conn.as_mut() => r,
        () = async {
            // The guard wait_for returns is not Send: drop it at once.
            let _ = stop.wait_for(|s| *s).await;
        } => {
            conn.as_mut().graceful_shutdown();
            conn.as_mut().await
        }
    };
    if let Err(e) = result {
        tracing::debug!(%peer, error = %e, "connection ended with an error");
    }
}
