//! [`OverlayStream`]: one QUIC bidirectional stream as a tokio byte stream.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// A spliced stream to a VM service, as returned by [`Edge::dial`](crate::Edge::dial).
///
/// `shutdown` half-closes (QUIC FIN): the VM side sees end of file, and reading goes on until
/// the VM side closes too. Dropping it finishes the sending side and stops the receiving one.
#[derive(Debug)]
pub struct OverlayStream {
    send: quinn::SendStream,
    recv: quinn::RecvStream,
    host: String,
}

impl OverlayStream {
    pub(crate) fn new(send: quinn::SendStream, recv: quinn::RecvStream, host: String) -> Self {
        Self { send, recv, host }
    }

    /// The host whose terminator serves this stream.
    pub fn host(&self) -> &str {
        &self.host
    }
}

impl AsyncRead for OverlayStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.recv).poll_read(cx, buf)
    }
}

impl AsyncWrite for OverlayStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        AsyncWrite::poll_write(Pin::new(&mut self.send), cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.send).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.send).poll_shutdown(cx)
    }
}
