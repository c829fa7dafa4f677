//! `pitwall proxy VM [SERVICE]` and `pitwall port-forward VM LOCAL:REMOTE`: byte streams to a
//! VM's services through the control plane's edge (`GET /v1/vms/{name}/connect/{service}`,
//! upgraded). Nothing on the VM's host listens for these; only the CLI's own machine does,
//! for port-forward, on loopback unless told otherwise.

use std::net::SocketAddr;

use anyhow::{bail, Context as _};
use tokio::io::AsyncWriteExt as _;

use super::Ctx;
use crate::cli::{PortForwardArgs, ProxyArgs};

/// `ssh`, `tcp-PORT`, or a bare port number (meaning `tcp-PORT`).
pub fn service_name(s: &str) -> anyhow::Result<String> {
    if s == "ssh" {
        return Ok(s.into());
    }
    let port = s.strip_prefix("tcp-").unwrap_or(s);
    match port.parse::<u16>() {
        Ok(p) if p > 0 => Ok(format!("tcp-{p}")),
        _ => bail!("service {s:?} is neither `ssh` nor a TCP port (`tcp-8080` or `8080`)"),
    }
}

pub async fn proxy(ctx: &Ctx, a: ProxyArgs) -> anyhow::Result<()> {
    let service = service_name(&a.service)?;
    let mut conn = ctx.client.connect(&a.vm, &service).await?;
    let mut stdio = tokio::io::join(tokio::io::stdin(), tokio::io::stdout());
    // Ends when both directions did: stdin's EOF is passed on as a half-close, and the VM's
    // side closing ends the output.
    tokio::io::copy_bidirectional(&mut stdio, &mut conn)
        .await
        .with_context(|| format!("connection to {service} of {} ended", a.vm))?;
    let _ = stdio.flush().await;
    Ok(())
}

/// `[ADDRESS:]LOCAL:REMOTE` → (listen address, remote port).
pub fn parse_forward(s: &str) -> anyhow::Result<(SocketAddr, u16)> {
    let bad = || anyhow::anyhow!("{s:?} is not LOCAL:REMOTE (e.g. 8080:80, or 0.0.0.0:8080:80)");
    let (rest, remote) = s.rsplit_once(':').ok_or_else(bad)?;
    let remote: u16 = remote.parse().map_err(|_| bad())?;
    if remote == 0 {
        bail!("remote port 0 in {s:?}: name the VM's port");
    }
    let (addr, local) = match rest.rsplit_once(':') {
        Some((addr, local)) => (addr.trim_matches(['[', ']']).to_string(), local),
        None => ("127.0.0.1".to_string(), rest),
    };
    let local: u16 = local.parse().map_err(|_| bad())?;
    let ip: std::net::IpAddr = addr
        .parse()
        .map_err(|_| anyhow::anyhow!("{addr:?} in {s:?} is not an IP address"))?;
    Ok((SocketAddr::new(ip, local), remote))
}

pub async fn port_forward(ctx: &Ctx, a: PortForwardArgs) -> anyhow::Result<()> {
    let (listen, remote) = parse_forward(&a.ports)?;
    let service = format!("tcp-{remote}");
    // Fail early, before listening, if the VM cannot be reached at all.
    drop(ctx.client.connect(&a.vm, &service).await?);
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    let local = listener.local_addr()?;
    eprintln!(
        "forwarding {local} to port {remote} of {} (Ctrl-C to stop)",
        a.vm
    );
    loop {
        let (mut sock, peer) = tokio::select! {
            r = listener.accept() => r.context("accept")?,
            _ = tokio::signal::ctrl_c() => return Ok(()),
        };
        let (client, vm, service) = (ctx.client.clone(), a.vm.clone(), service.clone());
        tokio::spawn(async move {
            match client.connect(&vm, &service).await {
                Ok(mut conn) => {
                    let _ = tokio::io::copy_bidirectional(&mut sock, &mut conn).await;
                }
                Err(e) => eprintln!("{peer}: cannot reach {service} of {vm}: {e}"),
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn services_are_ssh_or_tcp_ports() {
        assert_eq!(service_name("ssh").unwrap(), "ssh");
        assert_eq!(service_name("8080").unwrap(), "tcp-8080");
        assert_eq!(service_name("tcp-22").unwrap(), "tcp-22");
        assert!(service_name("udp-53").is_err());
        assert!(service_name("0").is_err());
    }

    #[test]
    fn forwards_listen_on_loopback_unless_told() {
        assert_eq!(
            parse_forward("8080:80").unwrap(),
            ("127.0.0.1:8080".parse().unwrap(), 80)
        );
        assert_eq!(
            parse_forward("0.0.0.0:9000:9000").unwrap(),
            ("0.0.0.0:9000".parse().unwrap(), 9000)
        );
        assert_eq!(
            parse_forward("[::1]:0:22").unwrap(),
            ("[::1]:0".parse().unwrap(), 22)
        );
        for bad in ["80", "a:80", "8080:0", "host:1:2"] {
            assert!(parse_forward(bad).is_err(), "{bad}");
        }
    }
}
