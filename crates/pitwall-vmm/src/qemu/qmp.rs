//! A minimal QMP client: connect to the VM's QMP socket, negotiate capabilities, run one
//! command, disconnect. One short connection per command keeps no state to lose when the
//! host daemon restarts, and QEMU serves one QMP client per socket at a time anyway.

use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

/// Run `command` (with `arguments`, if any) and return its `return` value.
pub(crate) async fn execute(
    socket: &Path,
    command: &str,
    arguments: Option<Value>,
    timeout: Duration,
) -> Result<Value, String> {
    tokio::time::timeout(timeout, execute_inner(socket, command, arguments))
        .await
        .map_err(|_| format!("no answer from QMP within {timeout:?}"))?
}

async fn execute_inner(
    socket: &Path,
    command: &str,
    arguments: Option<Value>,
) -> Result<Value, String> {
    let stream = UnixStream::connect(socket)
        .await
        .map_err(|e| format!("connect {}: {e}", socket.display()))?;
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read).lines();
    let greeting = lines
        .next_line()
        .await
        .map_err(|e| e.to_string())?
        .unwrap_or_default();
    if !greeting.contains("QMP") {
        return Err(format!("unexpected QMP greeting: {greeting}"));
    }
    send(&mut write, &json!({ "execute": "qmp_capabilities" })).await?;
    answer(&mut lines)
        .await?
        .ok_or("QMP closed during negotiation")?;

    let mut request = json!({ "execute": command });
    if let Some(args) = arguments {
        request["arguments"] = args;
    }
    send(&mut write, &request).await?;
    match answer(&mut lines).await? {
        Some(v) => Ok(v),
        // `quit` may close the socket before its answer arrives: that is success.
        None if command == "quit" => Ok(Value::Null),
        None => Err(format!("QMP closed before answering {command}")),
    }
}

async fn send(write: &mut tokio::net::unix::OwnedWriteHalf, v: &Value) -> Result<(), String> {
    let mut line = v.to_string();
    line.push('\n');
    write
        .write_all(line.as_bytes())
        .await
        .map_err(|e| format!("QMP write: {e}"))
}

/// The next `return` (Ok) or `error` (Err), skipping events; `None` on EOF.
async fn answer(
    lines: &mut tokio::io::Lines<BufReader<tokio::net::unix::OwnedReadHalf>>,
) -> Result<Option<Value>, String> {
    loop {
        let Some(line) = lines
            .next_line()
            .await
            .map_err(|e| format!("QMP read: {e}"))?
        else {
            return Ok(None);
        };
        let v: Value = serde_json::from_str(&line)
            .map_err(|e| format!("QMP sent invalid JSON ({e}): {line}"))?;
        if let Some(r) = v.get("return") {
            return Ok(Some(r.clone()));
        }
        if let Some(e) = v.get("error") {
            return Err(format!("QMP error: {e}"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::UnixListener;

    /// A QMP server that greets, accepts capabilities, emits an event, then answers.
    async fn fake_qmp(listener: UnixListener, answer: &'static str) -> Vec<String> {
        let (stream, _) = listener.accept().await.unwrap();
        let (read, mut write) = stream.into_split();
        let mut lines = BufReader::new(read).lines();
        let greeting = r#"{"QMP": {"version": {}, "capabilities": []}}"#;
        write
            .write_all(format!("{greeting}\n").as_bytes())
            .await
            .unwrap();
        let mut seen = Vec::new();
        seen.push(lines.next_line().await.unwrap().unwrap());
        write.write_all(b"{\"return\": {}}\n").await.unwrap();
        seen.push(lines.next_line().await.unwrap().unwrap());
        write
            .write_all(b"{\"event\": \"STOP\", \"timestamp\": {}}\n")
            .await
            .unwrap();
        write
            .write_all(format!("{answer}\n").as_bytes())
            .await
            .unwrap();
        seen
    }

    #[tokio::test]
    async fn a_command_is_sent_after_negotiation_and_events_are_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("qmp.sock");
        let server = tokio::spawn(fake_qmp(
            UnixListener::bind(&sock).unwrap(),
            r#"{"return": {"status": "running"}}"#,
        ));
        let got = execute(&sock, "query-status", None, Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(got, json!({ "status": "running" }));
        let seen = server.await.unwrap();
        assert!(seen[0].contains("qmp_capabilities"));
        assert!(seen[1].contains("query-status"));
    }

    #[tokio::test]
    async fn a_qmp_error_is_returned_as_such() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("qmp.sock");
        let answer = r#"{"error": {"class": "GenericError", "desc": "nope"}}"#;
        let server = tokio::spawn(fake_qmp(UnixListener::bind(&sock).unwrap(), answer));
        let e = execute(&sock, "cont", None, Duration::from_secs(5))
            .await
            .unwrap_err();
        assert!(e.contains("nope"), "{e}");
        server.await.unwrap();
    }
}
