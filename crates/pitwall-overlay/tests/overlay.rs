//! Edge and terminator in one process over loopback: registration, dials, refusals, restarts.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use pitwall_overlay::pki::{IssuedCert, OverlayCa};
use pitwall_overlay::{
    Edge, EdgeConfig, OverlayError, RegistrationPolicy, Terminator, TerminatorConfig,
    TerminatorStatus,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

const EDGE_NAME: &str = "edge.pitwall.test";
const DEADLINE: Duration = Duration::from_secs(20);

struct Pki {
    ca: OverlayCa,
    edge: IssuedCert,
}

fn pki() -> Pki {
    let ca = OverlayCa::generate("Pitwall test deployment CA").expect("CA");
    let edge = ca.issue_edge(&[EDGE_NAME]).expect("edge certificate");
    Pki { ca, edge }
}

fn edge_config(pki: &Pki, listen: SocketAddr) -> EdgeConfig {
    EdgeConfig::new(listen, pki.ca.identity(&pki.edge))
}

fn bind_edge(pki: &Pki) -> Edge {
    Edge::bind(edge_config(pki, "127.0.0.1:0".parse().expect("addr"))).expect("edge binds")
}

fn terminator_config(pki: &Pki, cert: &IssuedCert, edge: SocketAddr) -> TerminatorConfig {
    let mut cfg = TerminatorConfig::new(edge.to_string(), EDGE_NAME, pki.ca.identity(cert));
    cfg.reconnect_min = Duration::from_millis(50);
    cfg.reconnect_max = Duration::from_millis(300);
    cfg
}

/// A terminator for host `node-1`, connected and synced.
async fn connected_terminator(pki: &Pki, edge: &Edge) -> Terminator {
    let cert = pki.ca.issue_host("node-1").expect("host certificate");
    let t = Terminator::start(terminator_config(pki, &cert, edge.local_addr())).expect("start");
    wait_status(&t, "connected", TerminatorStatus::is_connected).await;
    t
}

async fn wait_status(t: &Terminator, what: &str, ok: impl Fn(&TerminatorStatus) -> bool) {
    let mut rx = t.watch_status();
    let waited = tokio::time::timeout(DEADLINE, rx.wait_for(|s| ok(s))).await;
    assert!(
        matches!(waited, Ok(Ok(_))),
        "terminator not {what} within {DEADLINE:?}: {:?}",
        t.status()
    );
}

async fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(
            start.elapsed() < DEADLINE,
            "{what}: not within {DEADLINE:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A TCP echo server; each connection reports on `eofs` when it sees the client's EOF, then
/// closes its own writing side.
async fn echo_server() -> (SocketAddr, mpsc::UnboundedReceiver<usize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind echo");
    let addr = listener.local_addr().expect("echo addr");
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let (mut r, mut w) = sock.split();
                let copied = tokio::io::copy(&mut r, &mut w).await.expect("echo copy");
                let _ = tx.send(copied as usize);
                w.shutdown().await.expect("echo shutdown");
            });
        }
    });
    (addr, rx)
}

/// Writes `payload`, half-closes, reads everything back.
async fn round_trip(edge: &Edge, identity: &str, service: &str, payload: &[u8]) -> Vec<u8> {
    let stream = edge.dial(identity, service).await.expect("dial");
    let (mut r, mut w) = tokio::io::split(stream);
    let payload = payload.to_vec();
    let writer = tokio::spawn(async move {
        w.write_all(&payload).await.expect("write");
        w.shutdown().await.expect("half-close");
        w
    });
    let mut back = Vec::new();
    r.read_to_end(&mut back).await.expect("read to EOF");
    let _ = writer.await.expect("writer");
    back
}

#[tokio::test]
async fn a_dialed_stream_round_trips_bytes_and_half_closes() {
    let pki = pki();
    let edge = bind_edge(&pki);
    let t = connected_terminator(&pki, &edge).await;
    let (echo, mut eofs) = echo_server().await;
    t.register("alice-web1", "ssh", echo)
        .await
        .expect("register");

    let mut stream = edge.dial("alice-web1", "ssh").await.expect("dial");
    assert_eq!(stream.host(), "node-1");
    stream.write_all(b"hello").await.expect("write");
    let mut buf = [0u8; 5];
    stream.read_exact(&mut buf).await.expect("read echo");
    assert_eq!(&buf, b"hello");

    stream.shutdown().await.expect("half-close");
    let seen = tokio::time::timeout(DEADLINE, eofs.recv()).await;
    assert_eq!(
        seen.expect("echo server sees EOF in time"),
        Some(5),
        "the echo server saw EOF"
    );
    let mut rest = Vec::new();
    stream
        .read_to_end(&mut rest)
        .await
        .expect("client sees EOF");
    assert!(rest.is_empty());
    let services = edge.services();
    assert_eq!(services.len(), 1);
    assert_eq!(
        (services[0].identity.as_str(), services[0].host.as_str()),
        ("alice-web1", "node-1")
    );
    assert_eq!(services[0].target, echo);
}

#[tokio::test]
async fn twenty_concurrent_dials_share_one_connection_without_mixing() {
    let pki = pki();
    let edge = Arc::new(bind_edge(&pki));
    let t = connected_terminator(&pki, &edge).await;
    let (echo, _eofs) = echo_server().await;
    t.register("alice-web1", "tcp-8080", echo)
        .await
        .expect("register");

    let dials = (0..20u8).map(|i| {
        let edge = edge.clone();
        tokio::spawn(async move {
            let payload: Vec<u8> = (0..64 * 1024).map(|n| (n as u8) ^ i).collect();
            let back = round_trip(&edge, "alice-web1", "tcp-8080", &payload).await;
            assert!(back == payload, "dial {i} got someone else's bytes");
        })
    });
    for d in dials.collect::<Vec<_>>() {
        d.await.expect("dial task");
    }
    let hosts = edge.hosts();
    assert_eq!(hosts.len(), 1, "{hosts:?}");
    assert_eq!(hosts[0].services, 1);
}

#[tokio::test]
async fn an_unregistered_service_cannot_be_dialed() {
    let pki = pki();
    let edge = bind_edge(&pki);
    let t = connected_terminator(&pki, &edge).await;
    let (echo, _eofs) = echo_server().await;
    t.register("alice-web1", "ssh", echo)
        .await
        .expect("register");
    assert_eq!(round_trip(&edge, "alice-web1", "ssh", b"x").await, b"x");

    t.unregister("alice-web1", "ssh").await.expect("unregister");
    let err = edge.dial("alice-web1", "ssh").await.expect_err("gone");
    assert!(matches!(err, OverlayError::NoSuchService { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains("no terminator has registered"), "{msg}");
    assert!(msg.contains("alice-web1"), "{msg}");
    assert!(edge.services().is_empty());
}

#[tokio::test]
async fn a_stopped_target_fails_the_dial_naming_the_target() {
    let pki = pki();
    let edge = bind_edge(&pki);
    let t = connected_terminator(&pki, &edge).await;
    let closed = {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        l.local_addr().expect("addr")
    };
    t.register("alice-web1", "ssh", closed)
        .await
        .expect("register");

    let err = edge.dial("alice-web1", "ssh").await.expect_err("refused");
    assert!(matches!(err, OverlayError::DialRefused { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains(&closed.to_string()), "{msg}");
    assert!(msg.contains("node-1"), "{msg}");
}

async fn assert_refused(pki: &Pki, edge: &Edge, cert: &IssuedCert) {
    let t = Terminator::start(terminator_config(pki, cert, edge.local_addr())).expect("start");
    t.register("alice-web1", "ssh", "127.0.0.1:22".parse().expect("addr"))
        .await
        .expect("kept until connected");
    wait_status(&t, "refused", |s| {
        matches!(
            s,
            TerminatorStatus::Disconnected {
                last_error: Some(_)
            }
        )
    })
    .await;
    let TerminatorStatus::Disconnected {
        last_error: Some(why),
    } = t.status()
    else {
        panic!("connected with a refused certificate: {:?}", t.status());
    };
    assert!(why.contains("certificate"), "{why}");
    assert!(edge.hosts().is_empty(), "{:?}", edge.hosts());
    assert!(edge.services().is_empty(), "{:?}", edge.services());
    let err = edge
        .dial("alice-web1", "ssh")
        .await
        .expect_err("never registered");
    assert!(matches!(err, OverlayError::NoSuchService { .. }), "{err:?}");
}

#[tokio::test]
async fn a_host_certificate_from_another_ca_is_refused() {
    let pki = pki();
    let edge = bind_edge(&pki);
    let other = OverlayCa::generate("someone else's CA").expect("CA");
    let cert = other.issue_host("node-1").expect("cert");
    assert_refused(&pki, &edge, &cert).await;
}

#[tokio::test]
async fn a_certificate_without_a_host_cn_is_refused() {
    let pki = pki();
    let edge = bind_edge(&pki);
    let cert = pki.ca.issue_client_with_cn("alice").expect("cert");
    assert_refused(&pki, &edge, &cert).await;
}

#[tokio::test]
async fn the_terminator_resyncs_after_the_edge_restarts() {
    let pki = pki();
    let edge = bind_edge(&pki);
    let addr = edge.local_addr();
    let t = connected_terminator(&pki, &edge).await;
    let (echo, _eofs) = echo_server().await;
    t.register("alice-web1", "ssh", echo)
        .await
        .expect("register");
    assert_eq!(round_trip(&edge, "alice-web1", "ssh", b"one").await, b"one");

    drop(edge);
    wait_status(&t, "disconnected", |s| !s.is_connected()).await;

    let start = Instant::now();
    let edge = loop {
        match Edge::bind(edge_config(&pki, addr)) {
            Ok(edge) => break edge,
            Err(e) => {
                assert!(start.elapsed() < DEADLINE, "rebinding {addr}: {e}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    wait_until("the restarted edge learns alice-web1/ssh again", || {
        edge.services().iter().any(|s| s.identity == "alice-web1")
    })
    .await;
    assert_eq!(round_trip(&edge, "alice-web1", "ssh", b"two").await, b"two");
}

#[tokio::test]
async fn shutdown_releases_the_port_for_a_new_edge() {
    let pki = pki();
    let edge = bind_edge(&pki);
    let addr = edge.local_addr();
    let t = connected_terminator(&pki, &edge).await;
    edge.shutdown().await;
    let edge = Edge::bind(edge_config(&pki, addr)).expect("port free after shutdown");
    wait_until("the terminator is back", || {
        edge.hosts().iter().any(|h| h.host == "node-1")
    })
    .await;
    drop(t);
}

struct OnlyAlice;

impl RegistrationPolicy for OnlyAlice {
    fn allow(&self, host: &str, identity: &str, _service: &str) -> Result<(), String> {
        if identity.starts_with("alice-") {
            Ok(())
        } else {
            Err(format!("{host} does not run {identity}"))
        }
    }
}

#[tokio::test]
async fn a_policy_refusal_is_returned_by_register() {
    let pki = pki();
    let edge = Edge::bind_with_policy(
        edge_config(&pki, "127.0.0.1:0".parse().expect("addr")),
        Arc::new(OnlyAlice),
    )
    .expect("edge");
    let t = connected_terminator(&pki, &edge).await;
    let (echo, _eofs) = echo_server().await;

    let err = t
        .register("bob-web1", "ssh", echo)
        .await
        .expect_err("policy refuses");
    assert!(matches!(err, OverlayError::Rejected { .. }), "{err:?}");
    assert!(
        err.to_string().contains("node-1 does not run bob-web1"),
        "{err}"
    );
    t.register("alice-web1", "ssh", echo)
        .await
        .expect("allowed");

    let held: Vec<_> = t.registrations().into_iter().map(|r| r.identity).collect();
    assert_eq!(held, ["alice-web1"]);
    let at_edge: Vec<_> = edge.services().into_iter().map(|s| s.identity).collect();
    assert_eq!(at_edge, ["alice-web1"]);
}

#[tokio::test]
async fn a_service_held_by_a_connected_host_cannot_be_taken_by_another() {
    let pki = pki();
    let edge = bind_edge(&pki);
    let t1 = connected_terminator(&pki, &edge).await;
    let cert2 = pki.ca.issue_host("node-2").expect("cert");
    let t2 = Terminator::start(terminator_config(&pki, &cert2, edge.local_addr())).expect("t2");
    wait_status(&t2, "connected", TerminatorStatus::is_connected).await;
    let (echo, _eofs) = echo_server().await;
    t1.register("alice-web1", "ssh", echo).await.expect("t1");

    let err = t2
        .register("alice-web1", "ssh", echo)
        .await
        .expect_err("held by node-1");
    assert!(err.to_string().contains("node-1"), "{err}");

    drop(t1);
    wait_until("node-1 is gone", || {
        edge.hosts().iter().all(|h| h.host != "node-1")
    })
    .await;
    t2.register("alice-web1", "ssh", echo)
        .await
        .expect("free now");
    assert_eq!(edge.services()[0].host, "node-2");
}
