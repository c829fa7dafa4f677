//! A stand-in for the Pitwall API on 127.0.0.1:0 that answers with canned JSON and records
//! every request it gets.
//!
//! VMs it knows: `web` (RUNNING on host-a) and `db` (STOPPED). Waiting answers with the VM in
//! the asked state, except: state DELETED answers 404 not_found (the VM is gone), VM `slow`
//! answers timeout, VM `broken` is FAILED. Image uploads must be tars holding `oci-layout`
//! and `index.json`, or they are refused as invalid_image. Images it knows: `demo/hello:1.0`
//! (used by VM `alice:web`: removing it answers 409 image_in_use unless `force=true`) and
//! `demo/idle:1` (unused).
//!
//! The event stream sends the two events after the client's `Last-Event-ID`, then stays open.
//!
//! VM `booting` has a console that grows by one line (`line N\n`) each time it is read, and
//! is RUNNING until its console was read three times, STOPPED after. Other VMs' consoles say
//! `hello from NAME\n`.
//!
//! Exec (`web` only; others answer 409 conflict): the guest "prints" its command joined by
//! spaces, then a newline, then what it got on stdin, on stdout; `stderr` on stderr; its exit
//! code is N of an argument `exit N`, if any. `web` has two services; a log says
//! `log of SERVICE\n` (`main` when none is asked for).
//!
//! Auth (built-in issuer): user `alice` with password `s3cret` logs in with token `tok-alice`
//! (valid for an hour, refresh token `ref-alice`, which refreshes to `tok-alice-2`).
//! `whoami` and `quota` answer 401 unauthenticated without a bearer token, and name the user
//! after the token otherwise (`tok-NAME...` is NAME). Creating VM `huge` answers 403
//! quota_exceeded. Every request's Authorization header is recorded.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures::StreamExt as _;
use pitwall_api::{
    AuthConfig, CreateVmRequest, ErrorBody, ErrorDetail, Event, Health, Image, LoginRequest,
    Policy, Quota, TokenResponse, Usage, Vm, VmList, WhoAmI,
};

#[derive(Debug, Clone)]
pub struct Upload {
    pub reference: String,
    pub entries: Vec<String>,
}

#[derive(Clone, Default)]
struct Seen {
    calls: Arc<Mutex<Vec<String>>>,
    auths: Arc<Mutex<Vec<Option<String>>>>,
    uploads: Arc<Mutex<Vec<Upload>>>,
    booting_console_reads: Arc<AtomicUsize>,
}

pub struct MockApi {
    pub url: String,
    seen: Seen,
}

impl MockApi {
    pub async fn start() -> Self {
        let seen = Seen::default();
        let app = Router::new()
            .route("/healthz", get(health))
            .route("/v1/vms", get(list_vms).post(create_vm))
            .route("/v1/vms/{name}", get(get_vm).delete(delete_vm))
            .route("/v1/vms/{name}/wait", get(wait_vm))
            .route("/v1/vms/{name}/console", get(console))
            .route("/v1/vms/{name}/exec", post(exec))
            .route("/v1/vms/{name}/services", get(services))
            .route("/v1/vms/{name}/logs", get(logs))
            .route("/v1/images", post(import_image))
            .route(
                "/v1/images/{*reference}",
                get(get_image).delete(delete_image),
            )
            .route("/v1/events", get(events))
            .route("/v1/auth/config", get(auth_config))
            .route("/v1/auth/login", post(login))
            .route("/v1/auth/refresh", post(refresh))
            .route("/v1/whoami", get(whoami))
            .route("/v1/quota", get(quota))
            .layer(middleware::from_fn_with_state(seen.clone(), record))
            .with_state(seen.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        MockApi { url, seen }
    }

    /// Every request so far, as `METHOD /path?query`.
    pub fn calls(&self) -> Vec<String> {
        self.seen.calls.lock().unwrap().clone()
    }

    /// The Authorization header of every request so far.
    pub fn auths(&self) -> Vec<Option<String>> {
        self.seen.auths.lock().unwrap().clone()
    }

    pub fn uploads(&self) -> Vec<Upload> {
        self.seen.uploads.lock().unwrap().clone()
    }
}

async fn record(State(seen): State<Seen>, req: Request, next: Next) -> Response {
    seen.calls
        .lock()
        .unwrap()
        .push(format!("{} {}", req.method(), req.uri()));
    seen.auths.lock().unwrap().push(
        req.headers()
            .get("authorization")
            .map(|v| v.to_str().unwrap().to_owned()),
    );
    next.run(req).await
}

pub fn vm(name: &str, state: &str) -> Vm {
    Vm {
        id: format!("0000-{name}"),
        name: name.into(),
        image: "demo/hello:1.0".into(),
        vcpus: 1,
        memory_mib: 256,
        disk_mib: 1024,
        state: state.into(),
        desired_state: state.into(),
        generation: 1,
        owner: "ada".into(),
        group: None,
        host: (state == "RUNNING").then(|| "host-a".into()),
        reason: (state == "FAILED").then(|| "kernel panic: no init found".into()),
        run: Default::default(),
        exposed_ports: vec![],
        address: None,
        ssh_host_key: None,
        created_at: "2025-01-01T00:00:00Z".into(),
        updated_at: "2025-01-01T00:00:00Z".into(),
    }
}

fn error(status: StatusCode, code: &str, message: String) -> Response {
    let body = ErrorBody {
        error: ErrorDetail {
            code: code.into(),
            message,
        },
    };
    (status, Json(body)).into_response()
}

fn not_found(name: &str) -> Response {
    error(
        StatusCode::NOT_FOUND,
        "not_found",
        format!("VM {name} does not exist; list VMs with `pitwall vm list`"),
    )
}

fn known(name: &str) -> Option<Vm> {
    match name {
        "web" => Some(vm("web", "RUNNING")),
        "db" => Some(vm("db", "STOPPED")),
        _ => None,
    }
}

async fn health() -> Json<Health> {
    Json(Health {
        status: "ok".into(),
        version: "0.1.0".into(),
        hosts: vec!["host-a".into()],
    })
}

async fn list_vms() -> Json<VmList> {
    Json(VmList {
        vms: vec![vm("web", "RUNNING"), vm("db", "STOPPED")],
    })
}

async fn create_vm(Json(req): Json<CreateVmRequest>) -> Response {
    if req.name == "huge" {
        return error(
            StatusCode::FORBIDDEN,
            "quota_exceeded",
            "VM huge would use 64 vCPUs, over your quota of 8".into(),
        );
    }
    if known(&req.name).is_some() {
        return error(
            StatusCode::CONFLICT,
            "already_exists",
            format!("VM {} exists", req.name),
        );
    }
    let mut created = vm(&req.name, "PENDING");
    created.run = req.run;
    (StatusCode::CREATED, Json(created)).into_response()
}

async fn get_vm(State(seen): State<Seen>, Path(name): Path<String>) -> Response {
    if name == "booting" {
        let reads = seen.booting_console_reads.load(Ordering::SeqCst);
        return Json(vm(&name, if reads < 3 { "RUNNING" } else { "STOPPED" })).into_response();
    }
    match known(&name) {
        Some(vm) => Json(vm).into_response(),
        None => not_found(&name),
    }
}

async fn delete_vm(Path(name): Path<String>) -> Response {
    match known(&name) {
        Some(_) => Json(vm(&name, "DELETING")).into_response(),
        None => not_found(&name),
    }
}

async fn wait_vm(Path(name): Path<String>, Query(q): Query<HashMap<String, String>>) -> Response {
    let state = q.get("state").cloned().unwrap_or_default();
    match (name.as_str(), state.as_str()) {
        (_, "DELETED") => not_found(&name),
        ("slow", _) => error(
            StatusCode::GATEWAY_TIMEOUT,
            "timeout",
            format!("VM slow did not reach {state} in time; it is still STARTING"),
        ),
        ("broken", _) => Json(vm("broken", "FAILED")).into_response(),
        _ => Json(vm(&name, &state)).into_response(),
    }
}

async fn events(headers: HeaderMap) -> Response {
    let after: u64 = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok()?.parse().ok())
        .unwrap_or(0);
    let frames = [
        (after + 1, "STARTING", None),
        (after + 2, "FAILED", Some("oom")),
    ]
    .map(|(seq, state, reason)| {
        let event = Event {
            seq,
            vm_id: "0000-web".into(),
            vm_name: "web".into(),
            state: state.into(),
            generation: 2,
            reason: reason.map(Into::into),
            at: "2025-01-01T00:00:00Z".into(),
        };
        let data = serde_json::to_string(&event).unwrap();
        Ok::<_, std::io::Error>(format!("event: state\nid: {seq}\ndata: {data}\n\n"))
    });
    let stream = futures::stream::iter(frames).chain(futures::stream::pending());
    (
        [("content-type", "text/event-stream")],
        Body::from_stream(stream),
    )
        .into_response()
}

async fn console(
    State(seen): State<Seen>,
    Path(name): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let buffer = match name.as_str() {
        "booting" => {
            let n = seen.booting_console_reads.fetch_add(1, Ordering::SeqCst) + 1;
            (1..=n).map(|i| format!("line {i}\n")).collect::<String>()
        }
        _ if known(&name).is_some() => format!("hello from {name}\n"),
        _ => return not_found(&name),
    };
    let max: usize = q
        .get("max_bytes")
        .and_then(|m| m.parse().ok())
        .unwrap_or(64 * 1024);
    buffer[buffer.len().saturating_sub(max)..]
        .to_owned()
        .into_response()
}

async fn exec(Path(name): Path<String>, Json(req): Json<pitwall_api::ExecRequest>) -> Response {
    if name != "web" {
        return (
            StatusCode::CONFLICT,
            Json(ErrorBody {
                error: ErrorDetail {
                    code: "conflict".into(),
                    message: format!("VM {name:?} is STOPPED, not RUNNING"),
                },
            }),
        )
            .into_response();
    }
    let mut stdout = format!("{}\n", req.command.join(" ")).into_bytes();
    stdout.extend_from_slice(&req.stdin);
    let code = req
        .command
        .iter()
        .find_map(|w| w.strip_prefix("exit ")?.trim().parse().ok())
        .unwrap_or(0);
    Json(pitwall_api::ExecResponse {
        code,
        stdout,
        stderr: b"stderr\n".to_vec(),
        timed_out: false,
    })
    .into_response()
}

async fn logs(Query(q): Query<HashMap<String, String>>) -> Response {
    let service = q.get("service").map_or("main", String::as_str);
    format!("log of {service}\n").into_response()
}

async fn services(Path(_name): Path<String>) -> Response {
    Json(vec![
        pitwall_api::ServiceStatus {
            name: "main".into(),
            state: "running".into(),
            pid: Some(42),
            restarts: 0,
            last_exit: None,
            restart: pitwall_api::RestartPolicy::Never,
        },
        pitwall_api::ServiceStatus {
            name: "worker".into(),
            state: "backoff".into(),
            pid: None,
            restarts: 3,
            last_exit: Some(1),
            restart: pitwall_api::RestartPolicy::OnFailure,
        },
    ])
    .into_response()
}

async fn import_image(
    State(seen): State<Seen>,
    Query(q): Query<HashMap<String, String>>,
    body: Bytes,
) -> Response {
    let reference = q.get("reference").cloned().unwrap_or_default();
    let entries: Result<Vec<String>, std::io::Error> = tar::Archive::new(&body[..])
        .entries()
        .and_then(|es| es.map(|e| Ok(e?.path()?.display().to_string())).collect());
    let Ok(entries) = entries else {
        return error(StatusCode::BAD_REQUEST, "invalid_image", "not a tar".into());
    };
    seen.uploads.lock().unwrap().push(Upload {
        reference: reference.clone(),
        entries: entries.clone(),
    });
    if !["oci-layout", "index.json"]
        .iter()
        .all(|want| entries.iter().any(|e| e == want))
    {
        return error(
            StatusCode::BAD_REQUEST,
            "invalid_image",
            format!("the archive has no oci-layout or index.json: {entries:?}"),
        );
    }
    Json(Image {
        reference,
        digest: "sha256:0123456789abcdef0123456789abcdef".into(),
        size_bytes: body.len() as u64,
        config: serde_json::json!({ "cmd": ["/hello"] }),
        host: "host-a".into(),
        created_at: "2025-01-01T00:00:00Z".into(),
        owner: "alice".into(),
        used_by: Vec::new(),
        used_by_count: 0,
        details: None,
    })
    .into_response()
}

/// `demo/hello:1.0` is used by VM `alice:web` (removal needs `force=true`); `demo/idle:1`
/// is used by nothing; others are unknown.
fn image_named(reference: &str) -> Option<Image> {
    let used = reference == "demo/hello:1.0";
    if !used && reference != "demo/idle:1" {
        return None;
    }
    Some(Image {
        reference: reference.into(),
        digest: "sha256:0123456789abcdef0123456789abcdef".into(),
        size_bytes: 4096,
        config: serde_json::json!({ "cmd": ["/hello"] }),
        host: "host-a".into(),
        created_at: "2025-01-01T00:00:00Z".into(),
        owner: "alice".into(),
        used_by: if used {
            vec!["alice:web".into()]
        } else {
            Vec::new()
        },
        used_by_count: u64::from(used),
        details: None,
    })
}

async fn get_image(Path(reference): Path<String>) -> Response {
    match image_named(&reference) {
        Some(i) => Json(i).into_response(),
        None => error(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no image {reference}"),
        ),
    }
}

async fn delete_image(
    Path(reference): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    match image_named(&reference) {
        None => error(StatusCode::NOT_FOUND, "not_found", format!("no image {reference}")),
        Some(i) if i.used_by_count > 0 && q.get("force").map(String::as_str) != Some("true") => {
            error(
                StatusCode::CONFLICT,
                "image_in_use",
                format!("image {reference} is used by 1 VM(s): alice:web; delete them first, or force the removal"),
            )
        }
        Some(i) => Json(i).into_response(),
    }
}

async fn auth_config() -> Json<AuthConfig> {
    Json(AuthConfig {
        issuer: "http://pitwall".into(),
        audience: "pitwall".into(),
        builtin: true,
        client_id: None,
        device_authorization_endpoint: None,
        token_endpoint: None,
        scope: None,
        resource: None,
    })
}

fn token(access: &str, refresh: &str) -> Response {
    Json(TokenResponse {
        access_token: access.into(),
        token_type: "Bearer".into(),
        expires_in: 3600,
        refresh_token: Some(refresh.into()),
    })
    .into_response()
}

async fn login(Json(req): Json<LoginRequest>) -> Response {
    if (req.username.as_str(), req.password.as_str()) != ("alice", "s3cret") {
        return error(
            StatusCode::UNAUTHORIZED,
            "unauthenticated",
            "wrong user name or password".into(),
        );
    }
    token("tok-alice", "ref-alice")
}

async fn refresh(Json(req): Json<serde_json::Value>) -> Response {
    if req["refresh_token"] != "ref-alice" {
        return error(
            StatusCode::UNAUTHORIZED,
            "unauthenticated",
            "the refresh token is not valid".into(),
        );
    }
    token("tok-alice-2", "ref-alice")
}

/// The user a bearer token stands for: `tok-NAME[-...]` is NAME.
fn bearer(headers: &HeaderMap) -> Option<String> {
    let value = headers.get("authorization")?.to_str().ok()?;
    let name = value.strip_prefix("Bearer tok-")?;
    Some(name.split('-').next().unwrap_or(name).to_owned())
}

fn unauthenticated() -> Response {
    error(
        StatusCode::UNAUTHORIZED,
        "unauthenticated",
        "no valid token: log in with `pitwall login`".into(),
    )
}

async fn whoami(headers: HeaderMap) -> Response {
    match bearer(&headers) {
        Some(name) => Json(WhoAmI {
            username: name.clone(),
            subject: format!("sub-{name}"),
            roles: vec![],
            groups: vec!["ops".into()],
            admin: false,
            via: "token".into(),
        })
        .into_response(),
        None => unauthenticated(),
    }
}

async fn quota(headers: HeaderMap, Query(q): Query<HashMap<String, String>>) -> Response {
    let Some(name) = bearer(&headers) else {
        return unauthenticated();
    };
    let holder = match (q.get("user"), q.get("group")) {
        (Some(u), _) => format!("user:{u}"),
        (None, Some(g)) => format!("group:{g}"),
        (None, None) => format!("user:{name}"),
    };
    Json(Quota {
        holder,
        source: "default".into(),
        policy: Policy {
            max_vms: Some(4),
            max_vcpus: Some(8),
            ..Default::default()
        },
        usage: Usage {
            vms: 1,
            vcpus: 2,
            memory_mib: 512,
            disk_mib: 1024,
        },
    })
    .into_response()
}
