//! The host side of the agent channel (`agent.sock`, a QEMU chardev server behind the
//! virtio-serial port `org.pitwall.agent`): length-delimited prost frames, `AgentRequest`
//! out, `AgentEvent` in. The link reconnects while the VMM lives (QEMU serves one client at a
//! time and keeps listening), sends `Ping` on every connect so the guest answers with its
//! current status, and publishes what it learns in a watch channel.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use pitwall_proto::v1::{agent_event, agent_request, AgentEvent, AgentRequest, Ping};
use prost::Message;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::OwnedWriteHalf;
use tokio::net::UnixStream;
use tokio::sync::{watch, Mutex};

/// Frames larger than this are a protocol error.
const MAX_FRAME_LEN: usize = 1 << 20;

/// What the guest told us so far.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct AgentState {
    pub connected: bool,
    pub ready: bool,
    pub error: Option<String>,
    pub kernel: Option<String>,
    pub workload_code: Option<i32>,
    /// The guest SSH server's host key (OpenSSH line), once reported.
    pub ssh_host_key: Option<String>,
}

pub(crate) struct AgentLink {
    socket: PathBuf,
    state: watch::Sender<AgentState>,
    writer: Mutex<Option<OwnedWriteHalf>>,
}

impl AgentLink {
    pub(crate) fn new(socket: PathBuf) -> Arc<Self> {
        Arc::new(Self {
            socket,
            state: watch::Sender::new(AgentState::default()),
            writer: Mutex::new(None),
        })
    }

    pub(crate) fn subscribe(&self) -> watch::Receiver<AgentState> {
        self.state.subscribe()
    }

    pub(crate) fn state(&self) -> AgentState {
        self.state.borrow().clone()
    }

    /// Send one request; fails when not connected.
    pub(crate) async fn send(&self, req: AgentRequest) -> std::io::Result<()> {
        let mut writer = self.writer.lock().await;
        let w = writer.as_mut().ok_or(std::io::ErrorKind::NotConnected)?;
        w.write_all(&req.encode_length_delimited_to_vec()).await
    }

    /// Connect, read and reconnect until `exited` turns true and the last connection ended.
    pub(crate) async fn run(self: Arc<Self>, mut exited: watch::Receiver<bool>) {
        loop {
            if *exited.borrow() {
                return;
            }
            match UnixStream::connect(&self.socket).await {
                Ok(stream) => {
                    self.serve(stream).await;
                    self.state.send_modify(|s| s.connected = false);
                }
                Err(e) => {
                    tracing::trace!(socket = %self.socket.display(), error = %e, "agent socket not ready")
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                _ = exited.changed() => {}
            }
        }
    }

    async fn serve(&self, stream: UnixStream) {
        let (mut read, write) = stream.into_split();
        *self.writer.lock().await = Some(write);
        self.state.send_modify(|s| s.connected = true);
        let ping = AgentRequest {
            id: 0,
            request: Some(agent_request::Request::Ping(Ping {})),
        };
        if let Err(e) = self.send(ping).await {
            tracing::debug!(error = %e, "agent ping failed");
        }
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            match read.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
            loop {
                match next_frame(&mut buf) {
                    Ok(Some(event)) => self.apply(event),
                    Ok(None) => break,
                    Err(e) => {
                        tracing::warn!(socket = %self.socket.display(), error = %e, "corrupt agent stream; reconnecting");
                        *self.writer.lock().await = None;
                        return;
                    }
                }
            }
        }
        *self.writer.lock().await = None;
    }

    fn apply(&self, event: AgentEvent) {
        match event.event {
            Some(agent_event::Event::Status(s)) => {
                tracing::debug!(ready = s.ready, error = %s.error, kernel = %s.kernel, "guest status");
                self.state.send_modify(|st| {
                    st.ready |= s.ready;
                    if !s.error.is_empty() {
                        st.error = Some(s.error.clone());
                    }
                    if !s.kernel.is_empty() {
                        st.kernel = Some(s.kernel.clone());
                    }
                    if !s.ssh_host_key.is_empty() {
                        st.ssh_host_key = Some(s.ssh_host_key.clone());
                    }
                });
            }
            Some(agent_event::Event::Exited(x)) => {
                tracing::debug!(code = x.code, "guest workload exited");
                self.state.send_modify(|st| st.workload_code = Some(x.code));
            }
            // Answers to requests: nothing sends those yet.
            Some(
                agent_event::Event::Services(_)
                | agent_event::Event::ExecResult(_)
                | agent_event::Event::Log(_)
                | agent_event::Event::Error(_),
            )
            | None => {
                tracing::trace!(reply_to = event.reply_to, "unhandled agent event")
            }
        }
    }
}

/// Take the next complete frame off the front of `buf`.
fn next_frame(buf: &mut Vec<u8>) -> Result<Option<AgentEvent>, String> {
    let mut len: u64 = 0;
    let mut prefix = None;
    for (i, b) in buf.iter().enumerate().take(10) {
        len |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            prefix = Some(i + 1);
            break;
        }
    }
    let Some(prefix) = prefix else {
        return if buf.len() >= 10 {
            Err("invalid frame length".into())
        } else {
            Ok(None)
        };
    };
    let len = usize::try_from(len).map_err(|_| "frame too long".to_string())?;
    if len > MAX_FRAME_LEN {
        return Err(format!("frame of {len} bytes exceeds {MAX_FRAME_LEN}"));
    }
    if buf.len() < prefix + len {
        return Ok(None);
    }
    let event = AgentEvent::decode(&buf[prefix..prefix + len]).map_err(|e| e.to_string());
    buf.drain(..prefix + len);
    event.map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;
    use pitwall_proto::v1::{GuestStatus, WorkloadExited};

    #[test]
    fn events_split_across_reads_are_reassembled() {
        let a = AgentEvent {
            reply_to: 0,
            event: Some(agent_event::Event::Status(GuestStatus {
                ready: true,
                error: String::new(),
                kernel: "6.1".into(),
                ssh_host_key: String::new(),
            })),
        };
        let b = AgentEvent {
            reply_to: 0,
            event: Some(agent_event::Event::Exited(WorkloadExited { code: 3 })),
        };
        let mut stream = a.encode_length_delimited_to_vec();
        stream.extend(b.encode_length_delimited_to_vec());
        let (first, second) = stream.split_at(3);
        let mut buf = first.to_vec();
        assert_eq!(next_frame(&mut buf).unwrap(), None);
        buf.extend_from_slice(second);
        assert_eq!(next_frame(&mut buf).unwrap(), Some(a));
        assert_eq!(next_frame(&mut buf).unwrap(), Some(b));
        assert!(buf.is_empty());
    }

    #[tokio::test]
    async fn the_link_pings_on_connect_and_tracks_status_and_exit() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("agent.sock");
        let listener = tokio::net::UnixListener::bind(&sock).unwrap();
        let link = AgentLink::new(sock);
        let (exit_tx, exit_rx) = watch::channel(false);
        let task = tokio::spawn(link.clone().run(exit_rx));

        let (mut guest, _) = listener.accept().await.unwrap();
        let mut got = vec![0u8; 16];
        let n = guest.read(&mut got).await.unwrap();
        let ping = AgentRequest::decode_length_delimited(&got[..n]).unwrap();
        assert_eq!(ping.request, Some(agent_request::Request::Ping(Ping {})));

        let ready = AgentEvent {
            reply_to: 0,
            event: Some(agent_event::Event::Status(GuestStatus {
                ready: true,
                error: String::new(),
                kernel: "k".into(),
                ssh_host_key: String::new(),
            })),
        };
        let exited = AgentEvent {
            reply_to: 0,
            event: Some(agent_event::Event::Exited(WorkloadExited { code: 143 })),
        };
        guest
            .write_all(&ready.encode_length_delimited_to_vec())
            .await
            .unwrap();
        guest
            .write_all(&exited.encode_length_delimited_to_vec())
            .await
            .unwrap();
        drop(listener);
        drop(guest);

        let mut rx = link.subscribe();
        let st = tokio::time::timeout(
            Duration::from_secs(5),
            rx.wait_for(|s| s.workload_code.is_some() && !s.connected),
        )
        .await
        .unwrap()
        .unwrap()
        .clone();
        assert!(st.ready);
        assert_eq!(st.kernel.as_deref(), Some("k"));
        assert_eq!(st.workload_code, Some(143));
        exit_tx.send(true).unwrap();
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .unwrap()
            .unwrap();
    }
}
