//! `GET /v1/vms/{name}/connect/{service}` with `Upgrade: pitwall-connect/1`: a byte stream
//! to one service of a VM (`ssh`, `tcp-PORT`), for `pitwall ssh`, `proxy` and `port-forward`.
//! The caller must be allowed to connect ([`resolve_for_connect`]: owner, group, admin or
//! grantee), the VM must be RUNNING and offer the service; then the edge dials the VM's
//! terminator and, once the VM's side answered, the request is switched (101) to the raw
//! stream. Every refusal comes before the switch, as a normal JSON error.

use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use hyper_util::rt::TokioIo;
use pitwall_core::VmState;

use super::access::{resolve_for_connect, Caller};
use super::ApiError;
use crate::edge;
use crate::Control;

/// The protocol token of the upgrade.
pub const PROTOCOL: &str = "pitwall-connect/1";

pub(crate) async fn connect(
    State(c): State<Control>,
    Caller(caller): Caller,
    Path((asked, service)): Path<(String, String)>,
    mut req: Request,
) -> Result<Response, ApiError> {
    let wants_upgrade = req
        .headers()
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case(PROTOCOL));
    if !wants_upgrade {
        return Err(ApiError::new(
            StatusCode::UPGRADE_REQUIRED,
            "upgrade_required",
            format!("this route carries a byte stream: send `Connection: Upgrade` and `Upgrade: {PROTOCOL}` (as `pitwall proxy` does)"),
        ));
    }
    let vm = resolve_for_connect(&c, &caller, &asked).await?;
    if vm.state != VmState::Running {
        return Err(ApiError::conflict(format!(
            "VM {asked:?} is {}, not RUNNING: nothing to connect to (`pitwall vm start {asked}`)",
            vm.state
        )));
    }
    let offered = edge::services(&vm.exposed_ports);
    if !offered.contains(&service) {
        return Err(ApiError::not_found(format!(
            "VM {asked:?} offers no service {service:?}; it offers {}",
            offered.join(", ")
        )));
    }
    let dialer = c.inner.edge.get().cloned().ok_or_else(|| {
        ApiError::unavailable(
            "this control plane has no edge to the hosts: connections to VMs are off",
        )
    })?;
    let identity = edge::identity(&vm.owner, vm.spec.name.as_str());
    let mut conn = dialer.dial(&identity, &service).await.map_err(|why| {
        ApiError::new(
            StatusCode::BAD_GATEWAY,
            "unreachable",
            format!("cannot reach {service} of VM {asked:?}: {why}"),
        )
    })?;
    tracing::info!(vm = %vm.spec.name, owner = %vm.owner, user = %caller.username, service, "connection opened");
    let upgrade = hyper::upgrade::on(&mut req);
    let (vm_name, user) = (vm.spec.name.to_string(), caller.username.clone());
    tokio::spawn(async move {
        match upgrade.await {
            Ok(upgraded) => {
                let mut client = TokioIo::new(upgraded);
                match tokio::io::copy_bidirectional(&mut client, &mut conn).await {
                    Ok((up, down)) => {
                        tracing::info!(vm = vm_name, user, service, up, down, "connection closed")
                    }
                    Err(e) => {
                        tracing::debug!(vm = vm_name, user, service, error = %e, "connection ended")
                    }
                }
            }
            Err(e) => {
                tracing::warn!(vm = vm_name, user, error = %e, "the client never took the upgraded connection")
            }
        }
    });
    let mut resp = Response::new(Body::empty());
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    resp.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    resp.headers_mut()
        .insert(header::UPGRADE, HeaderValue::from_static(PROTOCOL));
    Ok(resp.into_response())
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use async_trait::async_trait;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use crate::edge::{Conn, Dialer};
    use crate::testing::Harness;

    /// Dials a local echo server for every (identity, service), and remembers what it was
    /// asked for.
    struct EchoDialer {
        addr: std::net::SocketAddr,
        asked: Mutex<Vec<(String, String)>>,
    }

    #[async_trait]
    impl Dialer for EchoDialer {
        async fn dial(&self, identity: &str, service: &str) -> Result<Box<dyn Conn>, String> {
            self.asked
                .lock()
                .unwrap()
                .push((identity.into(), service.into()));
            let s = tokio::net::TcpStream::connect(self.addr)
                .await
                .map_err(|e| e.to_string())?;
            Ok(Box::new(s))
        }
    }

    async fn echo_server() -> std::net::SocketAddr {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                tokio::spawn(async move {
                    let (mut r, mut w) = s.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
            }
        });
        addr
    }

    #[tokio::test]
    async fn a_running_vm_s_service_becomes_a_byte_stream_through_the_edge() {
        let mut h = Harness::start().await;
        let vm = h.run_vm("a").await;
        h.create_vm("b").await;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let router = h.control.router();
        tokio::spawn(async move { axum::serve(listener, router).await });
        let client = pitwall_api::Client::builder()
            .token(Some(h.admin_token.clone()))
            .build(&url)
            .unwrap();
        let code = |r: Result<_, pitwall_api::ClientError>| match r {
            Err(pitwall_api::ClientError::Api { status, code, .. }) => (status, code),
            Err(e) => panic!("not an API error: {e}"),
            Ok(_) => panic!("connected"),
        };

        // No edge yet: a clear 503, nothing switched.
        assert_eq!(code(client.connect("a", "ssh").await).0, 503);

        let dialer = Arc::new(EchoDialer {
            addr: echo_server().await,
            asked: Mutex::new(Vec::new()),
        });
        assert!(h.control.set_edge(dialer.clone()));
        let mut conn = client.connect("a", "ssh").await.expect("switched");
        conn.write_all(b"hello through the edge").await.unwrap();
        let mut got = [0u8; 22];
        conn.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"hello through the edge");
        assert_eq!(
            dialer.asked.lock().unwrap().as_slice(),
            [(format!("{}-a", vm.owner), "ssh".to_string())]
        );

        // A service the VM does not offer, a VM that is not running, no upgrade asked for.
        let (status, _) = code(client.connect("a", "tcp-8080").await);
        assert_eq!(status, 404);
        let (status, _) = code(client.connect("b", "ssh").await);
        assert_eq!(status, 409);
        let r = h.get("/v1/vms/a/connect/ssh").await;
        assert_eq!(
            r.status,
            axum::http::StatusCode::UPGRADE_REQUIRED,
            "{}",
            r.text()
        );
    }
}
