//! Questions for a RUNNING VM's guest, carried by its host to the guest's init agent over
//! the VM's private channel (not the network, not SSH): `POST /v1/vms/{name}/exec` runs a
//! command to completion, `GET /v1/vms/{name}/services` lists the supervised services,
//! `GET /v1/vms/{name}/logs` gives the tail of a service's log.
//! Whoever sees the VM (owner, group, administrator) may ask; grantees only connect.

use std::time::Duration;

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::Json;
use pitwall_api::{ExecRequest, ExecResponse, ServiceStatus};
use pitwall_core::{RestartPolicy, VmState};
use pitwall_proto::routing::verb;
use pitwall_proto::v1::{self as pb, envelope::Payload, guest_answer, vm_command, VmCommand};

use super::access::VisibleVm;
use super::{json_body, ApiError};
use crate::Control;

/// What an exec may take when the request does not say, and at most.
const DEFAULT_EXEC_TIMEOUT_MS: u32 = 60_000;
const MAX_EXEC_TIMEOUT_MS: u32 = 3_600_000;
/// Most bytes of standard input an exec may carry.
const MAX_EXEC_STDIN: usize = 1 << 20;
/// Time the answer may take beyond the command's own timeout (the bus, the agent).
const EXEC_SLACK: Duration = Duration::from_secs(15);

pub(crate) async fn exec(
    State(c): State<Control>,
    v: VisibleVm,
    body: Result<Json<ExecRequest>, JsonRejection>,
) -> Result<Json<ExecResponse>, ApiError> {
    let req = json_body(body)?;
    let x = check_exec(req)?;
    let wait = Duration::from_millis(u64::from(x.timeout_ms)) + EXEC_SLACK;
    match ask(&c, v, vm_command::Command::Exec(x), wait).await? {
        guest_answer::Answer::Exec(r) => Ok(Json(ExecResponse {
            code: r.code,
            stdout: r.stdout,
            stderr: r.stderr,
            timed_out: r.timed_out,
        })),
        other => Err(ApiError::internal(format!(
            "the host answered an exec with {other:?}"
        ))),
    }
}

pub(crate) async fn services(
    State(c): State<Control>,
    v: VisibleVm,
) -> Result<Json<Vec<ServiceStatus>>, ApiError> {
    let wait = c.inner.cfg.reply_timeout;
    let q = vm_command::Command::ListServices(pb::ListServices {});
    match ask(&c, v, q, wait).await? {
        guest_answer::Answer::Services(list) => Ok(Json(
            list.services.into_iter().map(service_status).collect(),
        )),
        other => Err(ApiError::internal(format!(
            "the host answered a service list with {other:?}"
        ))),
    }
}

/// `?service=NAME&max_bytes=N` of `GET /v1/vms/{name}/logs`.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct LogQuery {
    service: Option<String>,
    max_bytes: Option<u32>,
}

const DEFAULT_LOG_BYTES: u32 = 64 * 1024;
const MAX_LOG_BYTES: u32 = 4 * 1024 * 1024;

pub(crate) async fn logs(
    State(c): State<Control>,
    q: Result<Query<LogQuery>, QueryRejection>,
    v: VisibleVm,
) -> Result<Response, ApiError> {
    let Query(q) = q.map_err(|e| {
        ApiError::invalid(format!("{}; use ?service=NAME&max_bytes=N", e.body_text()))
    })?;
    let max_bytes = q.max_bytes.unwrap_or(DEFAULT_LOG_BYTES);
    if max_bytes == 0 || max_bytes > MAX_LOG_BYTES {
        return Err(ApiError::invalid(format!(
            "max_bytes must be from 1 to {MAX_LOG_BYTES}"
        )));
    }
    let read = pb::ReadLog {
        service: q.service.unwrap_or_default(),
        max_bytes,
    };
    let wait = c.inner.cfg.reply_timeout;
    match ask(&c, v, vm_command::Command::ReadLog(read), wait).await? {
        guest_answer::Answer::Log(log) => Ok((
            [
                (
                    header::CONTENT_TYPE,
                    "text/plain; charset=utf-8".to_string(),
                ),
                (
                    header::HeaderName::from_static("x-pitwall-log-truncated"),
                    log.truncated.to_string(),
                ),
            ],
            log.data,
        )
            .into_response()),
        other => Err(ApiError::internal(format!(
            "the host answered a log read with {other:?}"
        ))),
    }
}

fn service_status(s: pb::ServiceState) -> ServiceStatus {
    ServiceStatus {
        restart: pb::RestartPolicy::try_from(s.restart)
            .map(RestartPolicy::from)
            .unwrap_or_default(),
        name: s.name,
        state: s.state,
        pid: (s.pid != 0).then_some(s.pid),
        restarts: s.restarts,
        last_exit: s.last_exit,
    }
}

/// The request as the guest gets it, or why it is refused.
fn check_exec(req: ExecRequest) -> Result<pb::Exec, ApiError> {
    if req.command.first().is_none_or(String::is_empty) {
        return Err(ApiError::invalid(
            "command is empty: give the program and its arguments, e.g. [\"ls\", \"-l\"]",
        ));
    }
    let strings = req
        .command
        .iter()
        .chain(&req.env)
        .chain(req.working_dir.iter())
        .chain(req.user.iter());
    if strings.into_iter().any(|s| s.contains('\0')) {
        return Err(ApiError::invalid(
            "command, env, working_dir and user may not contain NUL bytes",
        ));
    }
    if let Some(e) = req
        .env
        .iter()
        .find(|e| e.split_once('=').is_none_or(|(k, _)| k.is_empty()))
    {
        return Err(ApiError::invalid(format!(
            "env entry {e:?} is not KEY=value"
        )));
    }
    if let Some(wd) = req.working_dir.as_deref().filter(|w| !w.starts_with('/')) {
        return Err(ApiError::invalid(format!(
            "working_dir {wd:?} is not absolute: give a path starting with /"
        )));
    }
    if req.stdin.len() > MAX_EXEC_STDIN {
        return Err(ApiError::invalid(format!(
            "stdin holds {} bytes, at most {MAX_EXEC_STDIN} are allowed: copy large files with scp or sftp",
            req.stdin.len()
        )));
    }
    let timeout_ms = req.timeout_ms.unwrap_or(DEFAULT_EXEC_TIMEOUT_MS);
    if timeout_ms == 0 || timeout_ms > MAX_EXEC_TIMEOUT_MS {
        return Err(ApiError::invalid(format!(
            "timeout_ms must be from 1 to {MAX_EXEC_TIMEOUT_MS}"
        )));
    }
    Ok(pb::Exec {
        argv: req.command,
        env: req.env,
        working_dir: req.working_dir.unwrap_or_default(),
        user: req.user.unwrap_or_default(),
        stdin: req.stdin,
        timeout_ms,
    })
}

/// Put `q` to the VM's host and return the guest's answer, or why there is none.
async fn ask(
    c: &Control,
    v: VisibleVm,
    q: vm_command::Command,
    wait: Duration,
) -> Result<guest_answer::Answer, ApiError> {
    let (vm, name) = (v.vm, v.asked);
    let host = match (&vm.host, vm.state) {
        (Some(h), VmState::Running) => h.clone(),
        (_, state) => {
            return Err(ApiError::conflict(format!(
            "VM {name:?} is {state}, not RUNNING: start it with `pitwall vm start {name} --wait`"
        )))
        }
    };
    let verb = match &q {
        vm_command::Command::Exec(_) => verb::EXEC,
        vm_command::Command::ReadLog(_) => verb::READ_LOG,
        _ => verb::LIST_SERVICES,
    };
    let cmd = VmCommand {
        vm_id: vm.id.to_string(),
        generation: vm.generation,
        command: Some(q),
    };
    let reply = c
        .request(&host, verb, Payload::VmCommand(cmd), wait)
        .await?;
    match reply.and_then(|e| e.payload) {
        Some(Payload::GuestAnswer(a)) if a.error.is_empty() => a
            .answer
            .ok_or_else(|| ApiError::internal(format!("host {host} answered without an answer"))),
        Some(Payload::GuestAnswer(a)) if a.error == "the VM is not RUNNING" => {
            Err(ApiError::conflict(format!(
                "VM {name:?} is not RUNNING on host {host} any more"
            )))
        }
        Some(Payload::GuestAnswer(a)) => Err(ApiError::new(
            axum::http::StatusCode::BAD_GATEWAY,
            "guest_error",
            format!("the guest of {name:?} could not answer: {}", a.error),
        )),
        _ => Err(ApiError::unavailable(format!(
            "host {host} did not answer within {}; check that its host daemon runs",
            humantime::format_duration(wait)
        ))),
    }
}
