//! The overlay's wire contract, in one place.
//!
//! Every message is one frame: a 4-byte big-endian length, then that many bytes of JSON.
//! Framing is written by hand (a dozen lines) rather than with a codec because a dial stream
//! carries one header frame and then raw bytes: a buffering frame reader would swallow the
//! start of the spliced data.
//!
//! Streams of one connection:
//! - **control** (opened by the terminator, first thing after the handshake):
//!   terminator → edge `Hello`, edge → terminator `Welcome` (or `Error`); then requests
//!   (`Register`, `Unregister`, `Sync`), each answered in order by `Ok`, `Synced` or `Error`.
//! - **dial** (opened by the edge, one per spliced connection): edge → terminator
//!   [`DialRequest`], terminator → edge [`DialReply`], then raw bytes both ways.

use std::net::SocketAddr;

use serde::{de::DeserializeOwned, Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::OverlayError;

/// The version both ends speak; a peer with another one is refused at `Hello`/`DialRequest`.
pub const PROTOCOL_VERSION: u32 = 1;
/// The ALPN protocol of the overlay's QUIC connections.
pub const ALPN: &[u8] = b"pitwall-overlay/1";
/// Largest control frame (a `Sync` of some ten thousand registrations fits).
pub const MAX_CONTROL_FRAME: usize = 4 << 20;
/// Largest dial header or reply.
pub const MAX_DIAL_FRAME: usize = 16 << 10;

/// One registration: `service` of `identity` is at `target` on the terminator's host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Registration {
    pub identity: String,
    pub service: String,
    pub target: SocketAddr,
}

/// Terminator → edge, on the control stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ToEdge {
    Hello {
        version: u32,
    },
    Register(Registration),
    Unregister {
        identity: String,
        service: String,
    },
    /// The terminator's whole list; replaces everything the edge held for this host.
    Sync {
        registrations: Vec<Registration>,
    },
}

/// One entry of a `Sync` the edge did not take, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SyncRejection {
    pub identity: String,
    pub service: String,
    pub message: String,
}

/// Edge → terminator, on the control stream: one answer per request, in order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ToTerminator {
    /// `Hello` accepted; `host` is the name the edge read from the client certificate.
    Welcome {
        version: u32,
        host: String,
    },
    Ok,
    Synced {
        rejected: Vec<SyncRejection>,
    },
    Error {
        message: String,
    },
}

/// Edge → terminator, first frame of a dial stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DialRequest {
    pub version: u32,
    pub identity: String,
    pub service: String,
}

/// Terminator → edge, answer on a dial stream; after `Ok` the stream carries raw bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum DialReply {
    Ok,
    Error { message: String },
}

/// Writes one frame.
pub async fn write_frame<W, T>(w: &mut W, msg: &T) -> Result<(), OverlayError>
where
    W: AsyncWrite + Unpin,
    T: Serialize,
{
    let body = serde_json::to_vec(msg)
        .map_err(|e| OverlayError::Protocol(format!("cannot encode a message: {e}")))?;
    let len = u32::try_from(body.len())
        .map_err(|_| OverlayError::Protocol("message too large to frame".to_string()))?;
    let mut buf = Vec::with_capacity(4 + body.len());
    buf.extend_from_slice(&len.to_be_bytes());
    buf.extend_from_slice(&body);
    w.write_all(&buf)
        .await
        .map_err(OverlayError::io("writing a frame"))?;
    w.flush().await.map_err(OverlayError::io("writing a frame"))
}

/// Reads one frame of at most `max` bytes; `Ok(None)` on a clean end of stream before it.
pub async fn read_frame<R, T>(r: &mut R, max: usize) -> Result<Option<T>, OverlayError>
where
    R: AsyncRead + Unpin,
    T: DeserializeOwned,
{
    let mut len = [0u8; 4];
    match r.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(OverlayError::io("reading a frame")(e)),
    }
    let len = u32::from_be_bytes(len) as usize;
    if len > max {
        return Err(OverlayError::Protocol(format!(
            "frame of {len} bytes exceeds the limit of {max}"
        )));
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body)
        .await
        .map_err(OverlayError::io("reading a frame"))?;
    serde_json::from_slice(&body)
        .map(Some)
        .map_err(|e| OverlayError::Protocol(format!("undecodable message: {e}")))
}

/// Reads one frame that must be there.
pub async fn expect_frame<R, T>(r: &mut R, max: usize, what: &str) -> Result<T, OverlayError>
where
    R: AsyncRead + Unpin,
    T: DeserializeOwned,
{
    read_frame(r, max)
        .await?
        .ok_or_else(|| OverlayError::Protocol(format!("stream ended before the {what}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn frames_round_trip_and_leave_following_bytes_unread() {
        let (mut a, mut b) = tokio::io::duplex(1024);
        let req = DialRequest {
            version: PROTOCOL_VERSION,
            identity: "alice-web1".into(),
            service: "ssh".into(),
        };
        write_frame(&mut a, &req).await.expect("write");
        a.write_all(b"raw").await.expect("raw");
        let got: DialRequest = expect_frame(&mut b, MAX_DIAL_FRAME, "header")
            .await
            .expect("read");
        assert_eq!(got, req);
        let mut rest = [0u8; 3];
        b.read_exact(&mut rest).await.expect("rest");
        assert_eq!(&rest, b"raw");
    }

    #[tokio::test]
    async fn an_oversized_frame_is_refused() {
        let (mut a, mut b) = tokio::io::duplex(1024);
        a.write_all(&(1u32 << 30).to_be_bytes()).await.expect("len");
        let got: Result<Option<DialReply>, _> = read_frame(&mut b, MAX_DIAL_FRAME).await;
        assert!(matches!(got, Err(OverlayError::Protocol(_))), "{got:?}");
    }

    #[test]
    fn messages_have_a_stable_json_shape() {
        let m = ToEdge::Register(Registration {
            identity: "alice-web1".into(),
            service: "ssh".into(),
            target: "172.30.0.5:22".parse().expect("addr"),
        });
        assert_eq!(
            serde_json::to_string(&m).expect("json"),
            r#"{"type":"register","identity":"alice-web1","service":"ssh","target":"172.30.0.5:22"}"#
        );
        let r = DialReply::Error {
            message: "no".into(),
        };
        assert_eq!(
            serde_json::to_string(&r).expect("json"),
            r#"{"type":"error","message":"no"}"#
        );
    }
}
