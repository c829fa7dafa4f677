//! `/v1/vms`: create, list, show, start, stop, delete, wait, console.

use std::time::Duration;

use axum::body::Body;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use pitwall_api::{CreateVmRequest, VmList};
use pitwall_core::{DesiredState, ImageRef, VmName, VmSpec, VmState};
use pitwall_proto::routing::verb;
use pitwall_proto::v1::{envelope::Payload, vm_command, ReadConsole, VmCommand};
use pitwall_store::VmRecord;
use serde::Deserialize;
use time::OffsetDateTime;

use super::access::{visible_vms, Caller, VisibleVm};
use super::{json_body, vm_json, ApiError};
use crate::Control;

/// Longest `wait` a client may ask for.
const MAX_WAIT: Duration = Duration::from_secs(3600);
/// Console tail returned when the client does not say.
const DEFAULT_CONSOLE_BYTES: u32 = 64 * 1024;
const MAX_CONSOLE_BYTES: u32 = 4 * 1024 * 1024;

pub(crate) async fn create(
    State(c): State<Control>,
    Caller(caller): Caller,
    body: Result<Json<CreateVmRequest>, JsonRejection>,
) -> Result<(StatusCode, Json<pitwall_api::Vm>), ApiError> {
    let req = json_body(body)?;
    let name = VmName::parse(&req.name).map_err(|e| ApiError::invalid(e.to_string()))?;
    let image = ImageRef::parse(&req.image).map_err(|e| ApiError::invalid(e.to_string()))?;
    let spec = VmSpec::new(name, image, req.vcpus, req.memory_mib, req.disk_mib)
        .and_then(|s| s.with_run(req.run))
        .map_err(|e| ApiError::invalid(e.to_string()))?;
    let charge =
        super::quota::charge_for(&c, &caller, req.group.as_deref(), req.delegation.as_deref())
            .await?;
    let reference = spec.image.to_string();
    let Some(img) = c.inner.store.get_image(&reference).await? else {
        return Err(ApiError::not_found(format!(
            "image {reference} is not known: pull it first with `pitwall image pull {reference}`, or import an archive with `pitwall image import PATH --name {reference}` (see `pitwall image list`)"
        )));
    };
    // The image lives on the host that imported it.
    if !c.inner.hosts.is_live(&img.host) {
        return Err(ApiError::unavailable(format!(
            "image {reference} is on host {:?}, which has not sent a heartbeat recently; check that its host daemon runs",
            img.host
        )));
    }
    if let Some(allowed) = &charge.hosts {
        if !allowed.contains(&img.host) {
            return Err(ApiError::forbidden(format!(
                "image {reference} is on host {:?}, where your policy does not allow VMs (allowed: {})",
                img.host,
                allowed.iter().cloned().collect::<Vec<_>>().join(", ")
            )));
        }
    }
    c.inner
        .hosts
        .place(spec.memory_mib, spec.vcpus)
        .map_err(ApiError::unavailable)?;
    let host = img.host.clone();
    let now = OffsetDateTime::now_utc();
    let desired = if req.start.unwrap_or(true) {
        DesiredState::Running
    } else {
        DesiredState::Stopped
    };
    let mut vm = VmRecord::new(
        uuid::Uuid::now_v7(),
        spec,
        caller.username.clone(),
        desired,
        now,
    );
    vm.host = Some(host);
    vm.exposed_ports = exposed_ports(&img.config);
    vm.group = req
        .group
        .as_deref()
        .map(|g| g.trim_start_matches('/').to_string());
    vm.charge = charge.path;
    c.inner.store.create_vm(&vm, &charge.checks).await?;
    tracing::info!(vm = %vm.spec.name, vm_id = %vm.id, owner = %vm.owner, image = %vm.spec.image, host = ?vm.host, charge = %vm.charge, "VM created");
    c.publish_events_after(vm.id).await;
    c.send_for_desired(&vm).await;
    Ok((StatusCode::CREATED, Json(vm_json(&vm))))
}

/// The image's exposed ports, sorted and de-duplicated. The store keeps the config as hosts
/// send it (the image cache's `exposed_ports` list); an OCI-shaped `ExposedPorts` object (its
/// keys) is read too.
fn exposed_ports(config: &serde_json::Value) -> Vec<String> {
    let mut ports: Vec<String> = match (config.get("exposed_ports"), config.get("ExposedPorts")) {
        (Some(serde_json::Value::Array(a)), _) => a
            .iter()
            .filter_map(|p| p.as_str().map(str::to_string))
            .collect(),
        (_, Some(serde_json::Value::Object(o))) => o.keys().cloned().collect(),
        _ => Vec::new(),
    };
    ports.sort();
    ports.dedup();
    ports
}

pub(crate) async fn list(
    State(c): State<Control>,
    Caller(caller): Caller,
) -> Result<Json<VmList>, ApiError> {
    let vms = visible_vms(&caller, c.inner.store.list_vms().await?);
    Ok(Json(VmList {
        vms: vms.iter().map(vm_json).collect(),
    }))
}

pub(crate) async fn show(v: VisibleVm) -> Result<Json<pitwall_api::Vm>, ApiError> {
    Ok(Json(vm_json(&v.vm)))
}

/// Change the desired state (bumping the generation) and send the host its command.
async fn set_desired(
    c: &Control,
    vm: VmRecord,
    desired: DesiredState,
) -> Result<VmRecord, ApiError> {
    let name = vm.spec.name.to_string();
    if vm.desired == DesiredState::Deleted {
        return Err(ApiError::conflict(format!("VM {name:?} is being deleted")));
    }
    // Already wished and not failed: nothing to do (repeating a start is not an error).
    if vm.desired == desired && vm.state != VmState::Failed && vm.state != VmState::Lost {
        return Ok(vm);
    }
    let vm = c.inner.store.set_desired(vm.id, desired).await?;
    tracing::info!(vm = %vm.spec.name, desired = %desired, generation = vm.generation, "desired state changed");
    c.send_for_desired(&vm).await;
    Ok(vm)
}

pub(crate) async fn start(
    State(c): State<Control>,
    v: VisibleVm,
) -> Result<(StatusCode, Json<pitwall_api::Vm>), ApiError> {
    let vm = set_desired(&c, v.vm, DesiredState::Running).await?;
    Ok((StatusCode::ACCEPTED, Json(vm_json(&vm))))
}

pub(crate) async fn stop(
    State(c): State<Control>,
    v: VisibleVm,
) -> Result<(StatusCode, Json<pitwall_api::Vm>), ApiError> {
    let vm = set_desired(&c, v.vm, DesiredState::Stopped).await?;
    Ok((StatusCode::ACCEPTED, Json(vm_json(&vm))))
}

pub(crate) async fn delete(
    State(c): State<Control>,
    v: VisibleVm,
) -> Result<(StatusCode, Json<pitwall_api::Vm>), ApiError> {
    let (vm, name) = (v.vm, v.asked);
    if vm.desired == DesiredState::Deleted {
        return Err(ApiError::conflict(format!(
            "VM {name:?} is already being deleted (state {}); wait for it with `pitwall vm wait {name} --state DELETED`",
            vm.state
        )));
    }
    let vm = c
        .inner
        .store
        .set_desired(vm.id, DesiredState::Deleted)
        .await?;
    tracing::info!(vm = %vm.spec.name, generation = vm.generation, "VM delete requested");
    // A VM no host ever took (still PENDING with no host) has nothing to clean up.
    if vm.host.is_none() && vm.state == VmState::Pending {
        c.inner
            .store
            .record_status(vm.id, VmState::Deleting, vm.generation, None)
            .await?;
        c.inner
            .store
            .record_status(vm.id, VmState::Deleted, vm.generation, None)
            .await?;
        c.publish_events_after(vm.id).await;
    } else {
        c.send_for_desired(&vm).await;
    }
    Ok((StatusCode::ACCEPTED, Json(vm_json(&vm))))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct WaitQuery {
    state: String,
    timeout: Option<String>,
}

pub(crate) async fn wait(
    State(c): State<Control>,
    q: Result<Query<WaitQuery>, axum::extract::rejection::QueryRejection>,
    v: VisibleVm,
) -> Result<Json<pitwall_api::Vm>, ApiError> {
    let name = v.asked.clone();
    let Query(q) = q.map_err(|e| {
        ApiError::invalid(format!("{}; use ?state=RUNNING&timeout=60s", e.body_text()))
    })?;
    let want = VmState::parse(&q.state).ok_or_else(|| {
        ApiError::invalid(format!(
            "unknown state {:?}; use one of {}",
            q.state,
            VmState::ALL.map(|s| s.as_str()).join(", ")
        ))
    })?;
    let timeout = match &q.timeout {
        None => Duration::from_secs(60),
        Some(t) => humantime::parse_duration(t).map_err(|e| {
            ApiError::invalid(format!(
                "timeout {t:?} is not a duration ({e}); use e.g. 500ms, 30s, 2m"
            ))
        })?,
    };
    if timeout > MAX_WAIT {
        return Err(ApiError::invalid(format!(
            "timeout {:?} is longer than the 1h maximum",
            q.timeout
        )));
    }
    // Subscribe before the first look, so no change slips between look and wait.
    let mut events = c.subscribe();
    let id = v.vm.id;
    let first = c
        .inner
        .store
        .get_vm_by_id(id)
        .await?
        .ok_or_else(|| ApiError::no_vm(&name))?;
    let deadline = tokio::time::Instant::now() + timeout;
    let mut vm = first;
    loop {
        if vm.state == want {
            return Ok(Json(vm_json(&vm)));
        }
        if vm.state == VmState::Failed && want != VmState::Failed {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "vm_failed",
                format!(
                    "VM {name:?} FAILED while waiting for {want}: {}",
                    vm.reason.as_deref().unwrap_or("no reason given")
                ),
            ));
        }
        if vm.state == VmState::Deleted {
            return Err(ApiError::no_vm(&name));
        }
        // Wait for an event of this VM, or the deadline.
        loop {
            match tokio::time::timeout_at(deadline, events.recv()).await {
                Err(_) => {
                    return Err(ApiError::new(
                        StatusCode::REQUEST_TIMEOUT,
                        "timeout",
                        format!(
                            "VM {name:?} is {} after {}, not {want}; wait longer or look at `pitwall vm console {name}`",
                            vm.state,
                            humantime::format_duration(timeout)
                        ),
                    ))
                }
                Ok(Ok(e)) if e.vm_id != id => continue,
                // An event of this VM, or lagged behind: look again.
                Ok(Ok(_)) | Ok(Err(tokio::sync::broadcast::error::RecvError::Lagged(_))) => break,
                Ok(Err(tokio::sync::broadcast::error::RecvError::Closed)) => {
                    return Err(ApiError::unavailable("the control plane is shutting down"))
                }
            }
        }
        vm = c
            .inner
            .store
            .get_vm_by_id(id)
            .await?
            .ok_or_else(|| ApiError::no_vm(&name))?;
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ConsoleQuery {
    max_bytes: Option<u32>,
}

pub(crate) async fn console(
    State(c): State<Control>,
    q: Result<Query<ConsoleQuery>, axum::extract::rejection::QueryRejection>,
    v: VisibleVm,
) -> Result<Response, ApiError> {
    let name = v.asked.clone();
    let Query(q) =
        q.map_err(|e| ApiError::invalid(format!("{}; use ?max_bytes=N", e.body_text())))?;
    let max_bytes = q.max_bytes.unwrap_or(DEFAULT_CONSOLE_BYTES);
    if max_bytes == 0 || max_bytes > MAX_CONSOLE_BYTES {
        return Err(ApiError::invalid(format!(
            "max_bytes must be from 1 to {MAX_CONSOLE_BYTES}"
        )));
    }
    let vm = v.vm;
    let Some(host) = vm.host.clone() else {
        return Ok(text(Vec::new()));
    };
    if vm.state == VmState::Pending {
        return Ok(text(Vec::new()));
    }
    let cmd = VmCommand {
        vm_id: vm.id.to_string(),
        generation: vm.generation,
        command: Some(vm_command::Command::ReadConsole(ReadConsole { max_bytes })),
    };
    let reply = c
        .request(
            &host,
            verb::READ_CONSOLE,
            Payload::VmCommand(cmd),
            c.inner.cfg.reply_timeout,
        )
        .await?;
    match reply.and_then(|e| e.payload) {
        Some(Payload::ConsoleOutput(out)) if out.error.is_empty() => Ok(text(out.data)),
        Some(Payload::ConsoleOutput(out)) => Err(ApiError::unavailable(format!(
            "host {host} cannot read the console of {name:?}: {}",
            out.error
        ))),
        _ => Err(ApiError::unavailable(format!(
            "host {host} did not answer within {}; check that its host daemon runs",
            humantime::format_duration(c.inner.cfg.reply_timeout)
        ))),
    }
}

fn text(data: Vec<u8>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        Body::from(data),
    )
        .into_response()
}

#[cfg(test)]
mod tests;
