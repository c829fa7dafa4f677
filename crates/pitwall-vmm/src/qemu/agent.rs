//! The host side of the agent channel (`agent.sock`, a QEMU chardev server behind the
//! virtio-serial port `org.pitwall.agent`): length-delimited prost frames, `AgentRequest`
//! out, `AgentEvent` in. The link reconnects while the VMM lives (QEMU serves one client at a
//! time and keeps listening), sends `Ping` on every connect so the guest answers with its
//! current status, and publishes what it learns in a watch channel.
//!
//! Requests that expect an answer ([`AgentLink::request`]) get the next id; the answer
//! (`AgentEvent.reply_to`) is matched to its caller through a map of pending oneshots, in
//! whatever order the guest answers. When the connection ends every pending request fails.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use pitwall_proto::v1::{agent_event, agent_request, AgentEvent, AgentRequest, Ping};
use prost::Message;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::OwnedWriteHalf;
use tokio::net::UnixStream;
use tokio::sync::{oneshot, watch, Mutex};

/// Frames larger than this are a protocol error (an exec result carries up to 1 MiB of
/// stdout and 1 MiB of stderr).
const MAX_FRAME_LEN: usize = 4 << 20;

/// Why a request got no answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum RequestError {
    #[error("the guest agent is not connected")]
    NotConnected,
    #[error("the guest agent disconnected before answering")]
    Disconnected,
    #[error("the guest agent did not answer within {0:?}")]
    Timeout(Duration),
    #[error("writing to the agent socket: {0}")]
    Io(String),
}

type Pending = std::sync::Mutex<HashMap<u64, oneshot::Sender<agent_event::Event>>>;

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
    next_id: AtomicU64,
    pending: Pending,
}

impl AgentLink {
    pub(crate) fn new(socket: PathBuf) -> Arc<Self> {
        Arc::new(Self {
            socket,
            state: watch::Sender::new(AgentState::default()),
            writer: Mutex::new(None),
            next_id: AtomicU64::new(1),
            pending: Pending::default(),
        })
    }

    fn pending(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<u64, oneshot::Sender<agent_event::Event>>> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Send `request` with a fresh id and wait up to `timeout` for the guest's answer.
    pub(crate) async fn request(
        &self,
        request: agent_request::Request,
        timeout: Duration,
    ) -> Result<agent_event::Event, RequestError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.pending().insert(id, tx);
        let req = AgentRequest {
            id,
            request: Some(request),
        };
        if let Err(e) = self.send(req).await {
            self.pending().remove(&id);
            return Err(match e.kind() {
                std::io::ErrorKind::NotConnected => RequestError::NotConnected,
                _ => RequestError::Io(e.to_string()),
            });
        }
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(event)) => Ok(event),
            Ok(Err(_)) => Err(RequestError::Disconnected),
            Err(_) => {
                self.pending().remove(&id);
                Err(RequestError::Timeout(timeout))
            }
        }
    }

    /// The connection ended: every request waiting for an answer fails.
    fn fail_pending(&self) {
        self.pending().clear();
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
                    self.fail_pending();
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
        if event.reply_to != 0 {
            let waiter = self.pending().remove(&event.reply_to);
            match (waiter, event.event) {
                (Some(tx), Some(answer)) => {
                    let _ = tx.send(answer);
                }
                (Some(_), None) => {} // dropping the sender fails the request
                (None, _) => {
                    tracing::debug!(reply_to = event.reply_to, "answer to no pending request")
                }
            }
            return;
        }
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
            // Answers come with a reply_to (handled above).
            Some(
                agent_event::Event::Services(_)
                | agent_event::Event::ExecResult(_)
                | agent_event::Event::Log(_)
                | agent_event::Event::Error(_),
            )
            | None => {
                tracing::trace!("unsolicited agent event ignored")
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

    /// Read requests off `guest` until `n` complete ones arrived (the Ping included).
    async fn read_requests(
        guest: &mut UnixStream,
        buf: &mut Vec<u8>,
        n: usize,
    ) -> Vec<AgentRequest> {
        let mut got = Vec::new();
        loop {
            while let Ok(len) = prost::decode_length_delimiter(&buf[..]) {
                let prefix = prost::length_delimiter_len(len);
                if buf.len() < prefix + len {
                    break;
                }
                got.push(AgentRequest::decode(&buf[prefix..prefix + len]).unwrap());
                buf.drain(..prefix + len);
            }
            if got.len() >= n {
                return got;
            }
            let mut chunk = [0u8; 4096];
            let r = guest.read(&mut chunk).await.unwrap();
            assert!(r > 0, "the link closed");
            buf.extend_from_slice(&chunk[..r]);
        }
    }

    fn answer(reply_to: u64, event: agent_event::Event) -> Vec<u8> {
        AgentEvent {
            reply_to,
            event: Some(event),
        }
        .encode_length_delimited_to_vec()
    }

    #[tokio::test]
    async fn answers_reach_their_callers_in_any_order_and_a_disconnect_fails_the_rest() {
        use pitwall_proto::v1::{ExecResult, ListServices, ServiceList};
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("agent.sock");
        let listener = tokio::net::UnixListener::bind(&sock).unwrap();
        let link = AgentLink::new(sock);
        let (exit_tx, exit_rx) = watch::channel(false);
        let task = tokio::spawn(link.clone().run(exit_rx));
        let (mut guest, _) = listener.accept().await.unwrap();
        let mut buf = Vec::new();
        read_requests(&mut guest, &mut buf, 1).await; // the Ping

        let wait = Duration::from_secs(5);
        let list = agent_request::Request::ListServices(ListServices {});
        let exec = agent_request::Request::Exec(Default::default());
        let (l1, l2) = (link.clone(), link.clone());
        let first = tokio::spawn(async move { l1.request(list, wait).await });
        let reqs = read_requests(&mut guest, &mut buf, 1).await;
        let second = tokio::spawn(async move { l2.request(exec, wait).await });
        let reqs2 = read_requests(&mut guest, &mut buf, 1).await;
        let (id1, id2) = (reqs[0].id, reqs2[0].id);
        assert_ne!(id1, id2);
        assert!(id1 != 0 && id2 != 0, "0 means no answer expected");

        // The second is answered first, and an answer nobody waits for is ignored.
        let result = ExecResult {
            code: 7,
            ..Default::default()
        };
        guest
            .write_all(&answer(9999, agent_event::Event::Error("stray".into())))
            .await
            .unwrap();
        guest
            .write_all(&answer(id2, agent_event::Event::ExecResult(result.clone())))
            .await
            .unwrap();
        guest
            .write_all(&answer(
                id1,
                agent_event::Event::Services(ServiceList::default()),
            ))
            .await
            .unwrap();
        assert_eq!(
            second.await.unwrap(),
            Ok(agent_event::Event::ExecResult(result))
        );
        assert_eq!(
            first.await.unwrap(),
            Ok(agent_event::Event::Services(ServiceList::default()))
        );

        // A request still waiting when the guest goes away fails at once.
        let l3 = link.clone();
        let list = agent_request::Request::ListServices(ListServices {});
        let third = tokio::spawn(async move { l3.request(list, Duration::from_secs(60)).await });
        read_requests(&mut guest, &mut buf, 1).await;
        drop(listener);
        drop(guest);
        let failed = tokio::time::timeout(Duration::from_secs(5), third)
            .await
            .expect("the pending request fails when the link drops")
            .unwrap();
        assert_eq!(failed, Err(RequestError::Disconnected));
        assert!(link.pending().is_empty());

        // Without a connection a request fails without waiting.
        let list = agent_request::Request::ListServices(ListServices {});
        exit_tx.send(true).unwrap();
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            link.request(list, Duration::from_secs(60)).await,
            Err(RequestError::NotConnected)
        );
    }
}
