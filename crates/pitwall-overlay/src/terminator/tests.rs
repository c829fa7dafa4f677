//! The terminator against a hand-driven edge, to send what a real edge never would.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use super::*;
use crate::pki::OverlayCa;
use crate::wire::SyncRejection;

const EDGE_NAME: &str = "edge.pitwall.test";
const DEADLINE: Duration = Duration::from_secs(20);

async fn dial_raw(
    conn: &quinn::Connection,
    identity: &str,
    service: &str,
) -> (quinn::SendStream, quinn::RecvStream, DialReply) {
    let (mut send, mut recv) = conn.open_bi().await.expect("open dial stream");
    let req = DialRequest {
        version: PROTOCOL_VERSION,
        identity: identity.to_string(),
        service: service.to_string(),
    };
    wire::write_frame(&mut send, &req).await.expect("header");
    let reply = wire::expect_frame(&mut recv, MAX_DIAL_FRAME, "reply")
        .await
        .expect("reply");
    (send, recv, reply)
}

#[tokio::test]
async fn the_terminator_connects_only_to_targets_it_registered() {
    let ca = OverlayCa::generate("test CA").expect("CA");
    let edge_cert = ca.issue_edge(&[EDGE_NAME]).expect("edge cert");
    let host_cert = ca.issue_host("node-1").expect("host cert");
    let crypto = tls::server_crypto(&ca.identity(&edge_cert)).expect("server crypto");
    let server = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    let endpoint =
        quinn::Endpoint::server(server, "127.0.0.1:0".parse().expect("addr")).expect("edge");
    let edge_addr = endpoint.local_addr().expect("edge addr");

    let listener = TcpListener::bind("127.0.0.1:0").await.expect("target");
    let target = listener.local_addr().expect("target addr");
    let t = Terminator::start(TerminatorConfig::new(
        edge_addr.to_string(),
        EDGE_NAME,
        ca.identity(&host_cert),
    ))
    .expect("start");
    // Before the edge answers hello: kept, and sent with the sync.
    t.register("alice-web1", "ssh", target).await.expect("kept");

    let incoming = tokio::time::timeout(DEADLINE, endpoint.accept())
        .await
        .expect("terminator dials out in time")
        .expect("incoming");
    let conn = incoming.await.expect("handshake");
    assert_eq!(tls::peer_host(&conn).expect("host"), "node-1");
    let (mut send, mut recv) = conn.accept_bi().await.expect("control stream");
    let hello: ToEdge = wire::expect_frame(&mut recv, MAX_CONTROL_FRAME, "hello")
        .await
        .expect("hello");
    assert_eq!(
        hello,
        ToEdge::Hello {
            version: PROTOCOL_VERSION
        }
    );
    let welcome = ToTerminator::Welcome {
        version: PROTOCOL_VERSION,
        host: "node-1".into(),
    };
    wire::write_frame(&mut send, &welcome)
        .await
        .expect("welcome");
    let sync: ToEdge = wire::expect_frame(&mut recv, MAX_CONTROL_FRAME, "sync")
        .await
        .expect("sync");
    let ToEdge::Sync { registrations } = sync else {
        panic!("expected sync, got {sync:?}");
    };
    assert_eq!(registrations.len(), 1);
    assert_eq!(registrations[0].target, target);
    let synced = ToTerminator::Synced {
        rejected: Vec::<SyncRejection>::new(),
    };
    wire::write_frame(&mut send, &synced).await.expect("synced");

    for (identity, service) in [("alice-web1", "tcp-8080"), ("bob-web1", "ssh")] {
        let (_s, _r, reply) = dial_raw(&conn, identity, service).await;
        let DialReply::Error { message } = reply else {
            panic!("{identity}/{service} was spliced");
        };
        assert!(message.contains("not registered on this host"), "{message}");
    }

    // The first connection the target ever accepts is the registered dial's: the refused
    // dials above made none.
    let (mut s, mut r, reply) = dial_raw(&conn, "alice-web1", "ssh").await;
    assert_eq!(reply, DialReply::Ok);
    s.write_all(b"ping").await.expect("write");
    let (mut sock, _) = tokio::time::timeout(DEADLINE, listener.accept())
        .await
        .expect("accept in time")
        .expect("accept");
    let mut buf = [0u8; 4];
    sock.read_exact(&mut buf).await.expect("read");
    assert_eq!(&buf, b"ping");
    sock.write_all(b"pong").await.expect("write back");
    r.read_exact(&mut buf).await.expect("read back");
    assert_eq!(&buf, b"pong");
    assert!(t.status().is_connected());
}
