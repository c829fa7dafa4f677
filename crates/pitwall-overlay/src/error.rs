//! The one error type of the overlay: every message says what failed, on what, and what to do.

use std::net::SocketAddr;
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum OverlayError {
    #[error(
        "cannot read {what} from {path}: {source}; check that the file exists and is readable"
    )]
    ReadFile {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid {what}: {reason}; expected PEM (-----BEGIN ...-----) as issued by the deployment CA")]
    Pem { what: &'static str, reason: String },
    #[error("TLS set-up failed ({what}): {reason}")]
    Tls { what: &'static str, reason: String },
    #[error("certificate issuance failed: {0}")]
    Issue(String),
    #[error(
        "the overlay cannot bind UDP {addr}: {source}; is another edge already listening there?"
    )]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("edge address {addr:?} does not resolve: {reason}")]
    Resolve { addr: String, reason: String },
    #[error("cannot connect to the edge at {addr}: {reason}; check the edge address and name, and that both certificates come from the deployment CA (host CN host:<hostname>)")]
    Connect { addr: String, reason: String },
    #[error("invalid {what} {value:?}: {reason}")]
    InvalidName {
        what: &'static str,
        value: String,
        reason: &'static str,
    },
    #[error("no terminator has registered service {service:?} of {identity:?}; is the VM running and its host connected to the edge?")]
    NoSuchService { identity: String, service: String },
    #[error("host {host} (holding {service:?} of {identity:?}) cannot be reached over the overlay: {reason}")]
    HostUnreachable {
        host: String,
        identity: String,
        service: String,
        reason: String,
    },
    #[error("host {host} refused the stream to {service:?} of {identity:?}: {message}")]
    DialRefused {
        host: String,
        identity: String,
        service: String,
        message: String,
    },
    #[error("the edge refused {request}: {message}")]
    Rejected { request: String, message: String },
    #[error("the overlay peer broke the protocol: {0}")]
    Protocol(String),
    #[error("overlay stream I/O failed while {doing}: {source}")]
    Io {
        doing: &'static str,
        source: std::io::Error,
    },
    #[error("timed out after {secs} s while {doing}")]
    Timeout { doing: &'static str, secs: u64 },
    #[error("the terminator has stopped; start a new one")]
    Stopped,
}

impl OverlayError {
    pub(crate) fn io(doing: &'static str) -> impl FnOnce(std::io::Error) -> Self {
        move |source| OverlayError::Io { doing, source }
    }
}

/// Checks an identity or service name before it goes on the wire: 1..=128 bytes of ASCII
/// letters, digits, `-`, `_`, `.`.
pub(crate) fn check_name(what: &'static str, value: &str) -> Result<(), OverlayError> {
    let bad = |reason| {
        Err(OverlayError::InvalidName {
            what,
            value: value.to_string(),
            reason,
        })
    };
    if value.is_empty() {
        return bad("it is empty");
    }
    if value.len() > 128 {
        return bad("it is longer than 128 bytes");
    }
    if !value
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    {
        return bad("only ASCII letters, digits, '-', '_' and '.' are allowed");
    }
    Ok(())
}

/// A target the terminator may connect to must be a concrete address.
pub(crate) fn check_target(target: SocketAddr) -> Result<(), OverlayError> {
    if target.ip().is_unspecified() || target.port() == 0 {
        return Err(OverlayError::InvalidName {
            what: "target",
            value: target.to_string(),
            reason: "the address and the port must be concrete (not 0.0.0.0/:: and not port 0)",
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked_before_they_go_on_the_wire() {
        assert!(check_name("identity", "alice-web1").is_ok());
        assert!(check_name("service", "tcp-8080").is_ok());
        assert!(check_name("identity", "").is_err());
        assert!(check_name("identity", "a b").is_err());
        assert!(check_name("identity", &"x".repeat(129)).is_err());
        assert!(check_target("0.0.0.0:22".parse().expect("addr")).is_err());
        assert!(check_target("10.0.0.1:0".parse().expect("addr")).is_err());
        assert!(check_target("10.0.0.1:22".parse().expect("addr")).is_ok());
    }
}
