//! REST API v1 (JSON over HTTP, axum): routes, the error shape, and conversions from the
//! domain and store types to `pitwall-api` types.
//!
//! Every error is `{ "error": { "code", "message" } }` with the matching status code, and
//! every message says what to do next.

use axum::extract::rejection::JsonRejection;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use pitwall_api::{ErrorBody, ErrorDetail};
use pitwall_store::{EventRecord, ImageRecord, StoreError, VmRecord};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use crate::Control;

mod access;
mod audit;
pub(crate) mod certs;
pub mod connect;
mod events;
mod grants;
pub(crate) mod guard;
mod guest;
mod images;
mod quota;
mod session;
mod ssh;
mod vms;

/// Every route. Public ones are listed in [`guard::PUBLIC`]; all others are behind
/// [`guard::authenticate`], and every state-changing request is audited ([`guard::audit`]).
pub(crate) fn router(control: Control) -> Router {
    let public = Router::new()
        .route("/healthz", get(health))
        .route("/v1/openapi.json", get(openapi))
        .route("/v1/auth/config", get(session::config))
        .route("/v1/auth/login", post(session::login))
        .route("/v1/auth/refresh", post(session::refresh))
        .route("/v1/certificates/ca", get(certs::ca_pem))
        .route_layer(axum::middleware::from_fn(guard::public));
    let protected = Router::new()
        .route("/v1/whoami", get(session::whoami))
        .route("/v1/vms", post(vms::create).get(vms::list))
        .route("/v1/vms/{name}", get(vms::show).delete(vms::delete))
        .route("/v1/vms/{name}/start", post(vms::start))
        .route("/v1/vms/{name}/stop", post(vms::stop))
        .route("/v1/vms/{name}/wait", get(vms::wait))
        .route("/v1/vms/{name}/console", get(vms::console))
        .route("/v1/vms/{name}/exec", post(guest::exec))
        .route("/v1/vms/{name}/services", get(guest::services))
        .route("/v1/vms/{name}/logs", get(guest::logs))
        .route("/v1/vms/{name}/grants", get(grants::list))
        .route("/v1/vms/{name}/ssh/certificate", post(ssh::certificate))
        .route("/v1/vms/{name}/connect/{service}", get(connect::connect))
        .route("/v1/ssh/ca", get(ssh::ca))
        .route(
            "/v1/vms/{name}/grants/{user}",
            put(grants::put).delete(grants::delete),
        )
        .route("/v1/events", get(events::events))
        .route("/v1/images", post(images::import).get(images::list))
        .route("/v1/images/pull", post(images::pull))
        .route(
            "/v1/images/{*reference}",
            get(images::show).delete(images::remove),
        )
        .route(
            "/v1/users",
            post(session::create_user).get(session::list_users),
        )
        .route(
            "/v1/users/{name}",
            axum::routing::delete(session::delete_user),
        )
        .route("/v1/users/{name}/password", put(session::set_password))
        .route("/v1/quota", get(quota::show))
        .route("/v1/policies", get(quota::list_policies))
        .route(
            "/v1/policies/{holder}",
            put(quota::put_policy).delete(quota::delete_policy),
        )
        .route(
            "/v1/delegations",
            post(quota::create_delegation).get(quota::list_delegations),
        )
        .route(
            "/v1/delegations/{id}",
            axum::routing::delete(quota::revoke_delegation),
        )
        .route("/v1/certificates", post(certs::sign))
        .route(
            "/v1/certificates/revoked",
            post(certs::revoke).get(certs::list_revoked),
        )
        .route("/v1/audit", get(audit::list))
        .route_layer(axum::middleware::from_fn_with_state(
            control.clone(),
            guard::authenticate,
        ));
    public
        .merge(protected)
        .fallback(not_found_route)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(
            control.clone(),
            guard::audit,
        ))
        .layer(tower_http::trace::TraceLayer::new_for_http())
        .with_state(control)
}

/// An API error: status, stable code, message for people.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_argument", message)
    }
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }
    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, "conflict", message)
    }
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message)
    }
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", message)
    }
    pub fn unauthenticated(e: crate::auth::AuthError) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthenticated", e.to_string())
    }
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", message)
    }
    pub fn no_vm(name: &str) -> Self {
        Self::not_found(format!(
            "no VM named {name:?}; list VMs with `pitwall vm list`"
        ))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.status.is_server_error() {
            tracing::warn!(code = self.code, message = %self.message, "request failed");
        }
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code.into(),
                message: self.message,
            },
        };
        let mut response = (self.status, Json(body)).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                axum::http::header::WWW_AUTHENTICATE,
                axum::http::HeaderValue::from_static("Bearer realm=\"pitwall\""),
            );
        }
        response
            .extensions_mut()
            .insert(guard::ErrorCode(self.code));
        response
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NameTaken(_) => {
                Self::new(StatusCode::CONFLICT, "already_exists", e.to_string())
            }
            StoreError::NoSuchVm(n) => Self::no_vm(&n),
            StoreError::NoSuchImage(_) => Self::not_found(e.to_string()),
            StoreError::QuotaExceeded(_) => Self::new(
                StatusCode::FORBIDDEN,
                "quota_exceeded",
                format!("{e}; delete a VM you no longer need, or ask an administrator for more (see `pitwall quota show`)"),
            ),
            StoreError::NoSuchDelegation(_) => Self::not_found(e.to_string()),
            StoreError::Corrupt(_) => Self::internal(e.to_string()),
            _ => Self::unavailable(format!("the store is unavailable: {e}; retry shortly")),
        }
    }
}

impl From<crate::ControlError> for ApiError {
    fn from(e: crate::ControlError) -> Self {
        match e {
            crate::ControlError::Store(s) => s.into(),
            crate::ControlError::Bus(b) => Self::unavailable(format!(
                "the message bus is unavailable: {b}; retry shortly"
            )),
            other => Self::internal(other.to_string()),
        }
    }
}

/// A JSON body that fails to parse becomes an `invalid_argument` error in our shape.
pub(crate) fn json_body<T>(body: Result<Json<T>, JsonRejection>) -> Result<T, ApiError> {
    match body {
        Ok(Json(v)) => Ok(v),
        Err(e) => Err(ApiError::invalid(format!(
            "request body is not valid: {}",
            e.body_text()
        ))),
    }
}

pub(crate) fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&Rfc3339).unwrap_or_else(|_| t.to_string())
}

pub(crate) fn vm_json(vm: &VmRecord) -> pitwall_api::Vm {
    pitwall_api::Vm {
        id: vm.id.to_string(),
        name: vm.spec.name.to_string(),
        image: vm.spec.image.to_string(),
        vcpus: vm.spec.vcpus,
        memory_mib: vm.spec.memory_mib,
        disk_mib: vm.spec.disk_mib,
        state: vm.state.to_string(),
        desired_state: vm.desired.to_string(),
        generation: vm.generation,
        owner: vm.owner.clone(),
        group: vm.group.clone(),
        host: vm.host.clone(),
        reason: vm.reason.clone(),
        run: vm.spec.run.clone(),
        exposed_ports: vm.exposed_ports.clone(),
        address: vm.address.clone(),
        ssh_host_key: vm.ssh_host_key.clone(),
        created_at: rfc3339(vm.created_at),
        updated_at: rfc3339(vm.updated_at),
    }
}

pub(crate) fn image_json(i: &ImageRecord) -> pitwall_api::Image {
    pitwall_api::Image {
        reference: i.reference.clone(),
        digest: i.digest.clone(),
        size_bytes: i.size_bytes,
        config: i.config.clone(),
        host: i.host.clone(),
        created_at: rfc3339(i.created_at),
        owner: i.owner.clone(),
        used_by: Vec::new(),
        used_by_count: 0,
        details: (!i.details.is_null()).then(|| i.details.clone()),
    }
}

pub(crate) fn event_json(e: &EventRecord) -> pitwall_api::Event {
    pitwall_api::Event {
        seq: e.seq,
        vm_id: e.vm_id.to_string(),
        vm_name: e.vm_name.clone(),
        state: e.state.to_string(),
        generation: e.generation,
        reason: e.reason.clone(),
        at: rfc3339(e.at),
    }
}

async fn health(
    axum::extract::State(c): axum::extract::State<Control>,
) -> Json<pitwall_api::Health> {
    Json(pitwall_api::Health {
        status: "ok".into(),
        version: env!("CARGO_PKG_VERSION").into(),
        hosts: c.live_hosts().into_iter().map(|h| h.name).collect(),
    })
}

async fn openapi() -> Json<serde_json::Value> {
    Json(crate::openapi::document())
}

async fn not_found_route(uri: axum::http::Uri) -> ApiError {
    ApiError::not_found(format!(
        "no such endpoint {}; see /v1/openapi.json",
        uri.path()
    ))
}

async fn method_not_allowed(method: axum::http::Method, uri: axum::http::Uri) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!(
            "{method} is not allowed on {}; see /v1/openapi.json",
            uri.path()
        ),
    )
}

#[cfg(test)]
mod tests {
    use axum::http::StatusCode;

    use crate::testing::Harness;

    #[tokio::test]
    async fn an_unknown_route_is_a_404_json_error() {
        let h = Harness::start().await;
        let r = h.get("/v1/nothing-here").await;
        assert_eq!(r.status, StatusCode::NOT_FOUND);
        assert!(
            r.content_type.starts_with("application/json"),
            "{}",
            r.content_type
        );
        let e = r.error();
        assert_eq!(e.code, "not_found");
        assert!(e.message.contains("/v1/nothing-here"), "{}", e.message);
    }

    #[tokio::test]
    async fn a_wrong_method_is_a_405_json_error() {
        let h = Harness::start().await;
        let r = h.delete("/v1/vms").await;
        assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED);
        assert!(
            r.content_type.starts_with("application/json"),
            "{}",
            r.content_type
        );
        let e = r.error();
        assert_eq!(e.code, "method_not_allowed");
        assert!(e.message.contains("DELETE"), "{}", e.message);
    }
}
