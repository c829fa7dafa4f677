//! A real mTLS round trip: `tls::serve` on a loopback port, reqwest (rustls) as the client,
//! with a depth-three certificate chain, without any, and with one from a foreign CA.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{ConnectInfo, State};
use axum::routing::get;
use axum::{Extension, Json, Router};
use pitwall_api::cert::{generate_key_and_csr, sign_csr};
use pitwall_api::Policy;
use pitwall_control::auth::x509::DeploymentCa;
use pitwall_control::tls::{self, PeerCertificates};
use serde_json::{json, Value};
use tokio::net::TcpListener;

const DAY: Duration = Duration::from_secs(24 * 3600);

fn policy(vms: u64) -> Policy {
    Policy {
        max_vms: Some(vms),
        ..Policy::default()
    }
}

/// What the server saw of a request.
async fn echo(
    State(ca): State<Arc<DeploymentCa>>,
    Extension(certs): Extension<PeerCertificates>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
) -> Json<Value> {
    let (identity, error) = match (!certs.is_empty()).then(|| ca.verify_client_chain(&certs.0)) {
        None => (None, None),
        Some(Ok(id)) => (Some(id), None),
        Some(Err(e)) => (None, Some(e.to_string())),
    };
    Json(json!({
        "certificates": certs.0.len(),
        "peer": peer.to_string(),
        "charge_path": identity.as_ref().map(|i| i.charge_path.clone()),
        "username": identity.as_ref().map(|i| i.username.clone()),
        "error": error,
    }))
}

struct Server {
    addr: SocketAddr,
    ca: Arc<DeploymentCa>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
    _dir: tempfile::TempDir,
}

impl Server {
    async fn start() -> Server {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = Arc::new(DeploymentCa::open(dir.path()).expect("CA"));
        let config = tls::server_config(&ca, &["localhost".into(), "127.0.0.1".into()])
            .expect("server config");
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let router = Router::new().route("/", get(echo)).with_state(ca.clone());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(tls::serve(listener, Arc::new(config), router, async {
            let _ = stopped.await;
        }));
        Server {
            addr,
            ca,
            stop: Some(stop),
            task,
            _dir: dir,
        }
    }

    fn url(&self) -> String {
        format!("https://localhost:{}/", self.addr.port())
    }

    fn client(&self, identity: Option<reqwest::Identity>) -> reqwest::Client {
        let mut b = reqwest::Client::builder()
            .use_rustls_tls()
            .tls_built_in_root_certs(false)
            .add_root_certificate(
                reqwest::Certificate::from_pem(self.ca.ca_pem().as_bytes()).expect("CA pem"),
            )
            .resolve("localhost", self.addr)
            .timeout(Duration::from_secs(20));
        if let Some(id) = identity {
            b = b.identity(id);
        }
        b.build().expect("client")
    }

    async fn get(&self, identity: Option<reqwest::Identity>) -> reqwest::Result<Value> {
        self.client(identity)
            .get(self.url())
            .send()
            .await?
            .error_for_status()?
            .json()
            .await
    }

    async fn stop(mut self) {
        let _ = self.stop.take().map(|s| s.send(()));
        tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .expect("serve returns after shutdown")
            .expect("join")
            .expect("serve");
    }
}

/// alice (first level, CA) → bob (CA) → carol (leaf): the client identity PEM (key, then the
/// chain leaf first) and the three serials, first level first.
fn depth_three_identity(ca: &DeploymentCa) -> (String, [String; 3]) {
    let (alice_key, csr) = generate_key_and_csr("alice").expect("csr");
    let alice = ca
        .issue(&csr, "alice", &policy(10), true, 30 * DAY)
        .expect("alice");
    let (bob_key, csr) = generate_key_and_csr("bob").expect("csr");
    let bob = sign_csr(
        &csr,
        &alice.cert_pem,
        &alice_key,
        &policy(5),
        true,
        20 * DAY,
    )
    .expect("bob");
    let (carol_key, csr) = generate_key_and_csr("carol").expect("csr");
    let carol =
        sign_csr(&csr, &bob.cert_pem, &bob_key, &policy(1), false, 10 * DAY).expect("carol");
    let pem = format!(
        "{carol_key}{}{}{}",
        carol.cert_pem, bob.cert_pem, alice.cert_pem
    );
    (pem, [alice.serial_hex, bob.serial_hex, carol.serial_hex])
}

#[tokio::test]
async fn a_client_chain_reaches_the_handler() {
    let server = Server::start().await;
    let (pem, [a, b, c]) = depth_three_identity(&server.ca);
    let id = reqwest::Identity::from_pem(pem.as_bytes()).expect("identity");

    let seen = server.get(Some(id)).await.expect("request");
    assert_eq!(seen["certificates"], 3, "{seen}");
    assert_eq!(seen["username"], "alice", "{seen}");
    assert_eq!(
        seen["charge_path"],
        format!("/user:alice/c:{a}/c:{b}/c:{c}/"),
        "{seen}"
    );
    let peer: SocketAddr = seen["peer"].as_str().expect("peer").parse().expect("addr");
    assert_eq!(peer.ip().to_string(), "127.0.0.1");
    assert_ne!(peer.port(), server.addr.port());
    server.stop().await;
}

#[tokio::test]
async fn a_client_without_certificate_is_still_served() {
    let server = Server::start().await;
    let seen = server.get(None).await.expect("request");
    assert_eq!(seen["certificates"], 0, "{seen}");
    assert!(seen["username"].is_null(), "{seen}");
    assert!(seen["peer"]
        .as_str()
        .is_some_and(|p| p.starts_with("127.0.0.1:")));
    server.stop().await;
}

#[tokio::test]
async fn a_certificate_from_a_foreign_ca_is_refused_at_the_handshake() {
    let server = Server::start().await;
    let other_dir = tempfile::tempdir().expect("tempdir");
    let foreign = DeploymentCa::open(other_dir.path()).expect("foreign CA");
    let (pem, _) = depth_three_identity(&foreign);
    let id = reqwest::Identity::from_pem(pem.as_bytes()).expect("identity");

    let err = server
        .get(Some(id))
        .await
        .expect_err("foreign chain accepted");
    assert!(err.is_connect() || err.is_request(), "{err:?}");

    // The listener survives a failed handshake.
    let seen = server.get(None).await.expect("request after a refused one");
    assert_eq!(seen["certificates"], 0);
    server.stop().await;
}
