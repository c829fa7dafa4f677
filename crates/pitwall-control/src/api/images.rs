//! `/v1/images`: import (upload of an OCI layout tar or a `docker save` tar), pull from a
//! registry, list, show, remove.
//!
//! An upload is staged under the control plane's data directory and imported by a host,
//! which answers with the image's digest and config. In the embedded default the host shares
//! the machine (and so the staging directory). A pull needs no staging: the host fetches the
//! image from its registry itself, with its own registry settings (TLS, insecure registries,
//! credentials), and answers the same way.
//!
//! A removal is refused while VMs (not DELETED) use the image unless forced; the host drops
//! the reference and garbage-collects what nothing needs any more (the built image once no
//! reference names it, pulled blobs no image was built from).

use axum::body::Body;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures::StreamExt;
use pitwall_api::{ErrorDetail, ImageList, PullEvent, PullImageRequest};
use pitwall_core::{ImageRef, VmState};
use pitwall_proto::routing::verb;
use pitwall_proto::v1::envelope::Payload;
use pitwall_proto::v1::RemoveImage;
use pitwall_proto::v1::{
    image_command, image_progress, ImageCommand, ImageErrorKind, ImageProgress, ImageStatus,
    PullImage,
};
use pitwall_store::{ImageRecord, VmRecord};
use serde::Deserialize;
use std::sync::{Arc, Mutex};
use time::OffsetDateTime;
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;

use super::access::Caller;
use super::guard::DeferredOutcome;
use super::{image_json, json_body, ApiError};
use crate::auth::Principal;
use crate::Control;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ImportQuery {
    reference: String,
}

pub(crate) async fn import(
    State(c): State<Control>,
    Caller(caller): Caller,
    q: Result<Query<ImportQuery>, axum::extract::rejection::QueryRejection>,
    body: Body,
) -> Result<(StatusCode, Json<pitwall_api::Image>), ApiError> {
    let Query(q) =
        q.map_err(|e| ApiError::invalid(format!("{}; use ?reference=NAME:TAG", e.body_text())))?;
    let reference = ImageRef::parse(&q.reference).map_err(|e| ApiError::invalid(e.to_string()))?;
    let reference = reference.to_string();
    may_replace(&c, &caller, &reference).await?;
    let host = image_host(&c, "import")?;

    let path = c
        .inner
        .cfg
        .data_dir
        .join("uploads")
        .join(format!("{}.tar", uuid::Uuid::new_v4()));
    if let Err(e) = receive(&c, body, &path).await {
        let _ = tokio::fs::remove_file(&path).await;
        return Err(e);
    }
    let payload = Control::image_import_payload(&reference, &path);
    let reply = c
        .request(&host, verb::IMPORT, payload, c.inner.cfg.import_timeout)
        .await;
    let reply = match reply {
        Ok(r) => r,
        Err(e) => {
            let _ = tokio::fs::remove_file(&path).await;
            return Err(e.into());
        }
    };
    let Some(Payload::ImageStatus(st)) = reply.and_then(|e| e.payload) else {
        return Err(ApiError::unavailable(format!(
            "host {host} did not finish importing {reference} in time; it may still be working: check `pitwall image list` later"
        )));
    };
    let record = register(&c, &caller, &reference, st).await?;
    tracing::info!(
        image = reference,
        digest = record.digest,
        host = record.host,
        "image imported"
    );
    Ok((StatusCode::CREATED, Json(image_json(&record))))
}

/// `POST /v1/images/pull`: a host pulls the image from its registry. It may take as long as
/// an import (`import_timeout`). With `Accept: application/x-ndjson` the answer is a stream
/// of [`PullEvent`] lines: the host's progress, then the image or the error (the audit row
/// records that final outcome).
pub(crate) async fn pull(
    State(c): State<Control>,
    Caller(caller): Caller,
    headers: HeaderMap,
    body: Result<Json<PullImageRequest>, JsonRejection>,
) -> Result<Response, ApiError> {
    let req = json_body(body)?;
    let reference =
        ImageRef::parse(&req.reference).map_err(|e| ApiError::invalid(e.to_string()))?;
    let reference = reference.to_string();
    may_replace(&c, &caller, &reference).await?;
    let host = image_host(&c, "pull")?;
    if !wants_ndjson(&headers) {
        let record = pull_on(&c, &caller, &host, &reference, None).await?;
        return Ok((StatusCode::CREATED, Json(image_json(&record))).into_response());
    }
    let (events, rx) = mpsc::unbounded_channel::<PullEvent>();
    let (progress, mut from_host) = mpsc::unbounded_channel();
    let (outcome, outcome_rx) = tokio::sync::oneshot::channel();
    // The pull goes on if the client goes away: the image is registered all the same.
    tokio::spawn(async move {
        let relay = {
            let events = events.clone();
            tokio::spawn(async move {
                while let Some(p) = from_host.recv().await {
                    if let Some(e) = progress_event(p) {
                        let _ = events.send(e);
                    }
                }
            })
        };
        let result = pull_on(&c, &caller, &host, &reference, Some(progress)).await;
        // The progress sender is gone with the request: the relay ends after the last report.
        let _ = relay.await;
        let last = match result {
            Ok(record) => {
                let _ = outcome.send((StatusCode::CREATED, None));
                PullEvent::Done {
                    image: image_json(&record),
                }
            }
            Err(e) => {
                let _ = outcome.send((e.status, Some(e.code)));
                PullEvent::Error {
                    status: e.status.as_u16(),
                    error: ErrorDetail {
                        code: e.code.into(),
                        message: e.message,
                    },
                }
            }
        };
        let _ = events.send(last);
    });
    let lines = futures::stream::unfold(rx, |mut rx| async move {
        let e = rx.recv().await?;
        let mut line = serde_json::to_vec(&e).unwrap_or_default();
        line.push(b'\n');
        Some((Ok::<_, std::convert::Infallible>(line), rx))
    });
    let mut response = Response::new(Body::from_stream(lines));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/x-ndjson"),
    );
    response
        .extensions_mut()
        .insert(Arc::new(DeferredOutcome(Mutex::new(Some(outcome_rx)))));
    Ok(response)
}

fn wants_ndjson(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("application/x-ndjson"))
}

/// A host's progress report as the API streams it.
fn progress_event(p: ImageProgress) -> Option<PullEvent> {
    Some(match p.event? {
        image_progress::Event::Blob(b) => PullEvent::Blob {
            digest: b.digest,
            bytes_done: b.bytes_done,
            bytes_total: b.bytes_total,
            present: b.present,
        },
        image_progress::Event::Building(digest) => PullEvent::Building { digest },
    })
}

/// Has `host` pull `reference` (its progress to `progress`, if given) and registers it.
async fn pull_on(
    c: &Control,
    caller: &Principal,
    host: &str,
    reference: &str,
    progress: Option<mpsc::UnboundedSender<ImageProgress>>,
) -> Result<ImageRecord, ApiError> {
    let payload = Payload::ImageCommand(ImageCommand {
        command: Some(image_command::Command::Pull(PullImage {
            reference: reference.to_string(),
        })),
    });
    let reply = c
        .request_with_progress(
            host,
            verb::PULL,
            payload,
            c.inner.cfg.import_timeout,
            progress,
        )
        .await?;
    let Some(Payload::ImageStatus(st)) = reply.and_then(|e| e.payload) else {
        return Err(ApiError::unavailable(format!(
            "host {host} did not finish pulling {reference} in time; it may still be working: check `pitwall image list` later"
        )));
    };
    let record = register(c, caller, reference, st).await?;
    tracing::info!(
        image = reference,
        digest = record.digest,
        host = record.host,
        "image pulled"
    );
    Ok(record)
}

/// Images are shared by the whole cluster; only whoever imported or pulled one (or an
/// admin) may replace it, so nobody can swap what another user's VMs boot.
async fn may_replace(c: &Control, caller: &Principal, reference: &str) -> Result<(), ApiError> {
    if let Some(existing) = c.inner.store.get_image(reference).await? {
        if existing.owner != caller.username && !caller.is_admin {
            return Err(ApiError::forbidden(format!(
                "image {reference} was imported or pulled by another user; use another reference"
            )));
        }
    }
    Ok(())
}

/// The host that runs an image job (`what`: import, pull).
fn image_host(c: &Control, what: &str) -> Result<String, ApiError> {
    c.live_hosts()
        .into_iter()
        .next()
        .map(|h| h.name)
        .ok_or_else(|| {
            ApiError::unavailable(format!(
                "no host is available to {what} the image; check that a host daemon runs"
            ))
        })
}

/// Record the image a host answered with, or turn its failure into the API's error.
async fn register(
    c: &Control,
    caller: &Principal,
    reference: &str,
    st: ImageStatus,
) -> Result<ImageRecord, ApiError> {
    if !st.ok {
        return Err(status_error(&st));
    }
    let config = serde_json::from_str(&st.config_json).unwrap_or(serde_json::Value::Null);
    let record = ImageRecord {
        reference: reference.to_string(),
        digest: st.digest,
        size_bytes: st.size_bytes,
        config,
        host: st.host,
        owner: caller.username.clone(),
        created_at: OffsetDateTime::now_utc(),
        details: serde_json::from_str(&st.details_json).unwrap_or(serde_json::Value::Null),
    };
    c.inner.store.put_image(&record).await?;
    Ok(record)
}

/// A host's image failure as the API answers it (docs/api.md, "Images").
fn status_error(st: &ImageStatus) -> ApiError {
    let (status, code) = match st.error_kind() {
        ImageErrorKind::NotFound => (StatusCode::NOT_FOUND, "not_found"),
        ImageErrorKind::RegistryUnauthorized => (StatusCode::BAD_GATEWAY, "registry_unauthorized"),
        ImageErrorKind::Registry => (StatusCode::BAD_GATEWAY, "registry_error"),
        ImageErrorKind::Invalid | ImageErrorKind::Unspecified => {
            (StatusCode::BAD_REQUEST, "invalid_image")
        }
    };
    ApiError::new(status, code, st.error.clone())
}

/// Stream the request body into `path`, refusing more than the configured maximum.
async fn receive(c: &Control, body: Body, path: &std::path::Path) -> Result<(), ApiError> {
    let mut file = tokio::fs::File::create(path).await.map_err(|e| {
        ApiError::internal(format!(
            "cannot stage the upload at {}: {e}",
            path.display()
        ))
    })?;
    let mut stream = body.into_data_stream();
    let mut total: u64 = 0;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| ApiError::invalid(format!("upload interrupted: {e}")))?;
        total += chunk.len() as u64;
        if total > c.inner.cfg.max_upload_bytes {
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "invalid_argument",
                format!(
                    "image archive is larger than the {} byte limit",
                    c.inner.cfg.max_upload_bytes
                ),
            ));
        }
        file.write_all(&chunk).await.map_err(|e| {
            ApiError::internal(format!(
                "cannot stage the upload at {}: {e}",
                path.display()
            ))
        })?;
    }
    file.flush()
        .await
        .map_err(|e| ApiError::internal(format!("cannot stage the upload: {e}")))?;
    if total == 0 {
        return Err(ApiError::invalid(
            "the upload is empty: send an OCI layout tar or a `docker save` tar as the request body",
        ));
    }
    Ok(())
}

pub(crate) async fn list(
    State(c): State<Control>,
    Caller(caller): Caller,
) -> Result<Json<ImageList>, ApiError> {
    let images = c.inner.store.list_images().await?;
    let vms = c.inner.store.list_vms().await?;
    Ok(Json(ImageList {
        images: images
            .iter()
            .map(|i| with_users(&caller, i, &vms))
            .collect(),
    }))
}

pub(crate) async fn show(
    State(c): State<Control>,
    Caller(caller): Caller,
    Path(reference): Path<String>,
) -> Result<Json<pitwall_api::Image>, ApiError> {
    let (_, img) = known(&c, &reference).await?;
    let vms = c.inner.store.list_vms().await?;
    Ok(Json(with_users(&caller, &img, &vms)))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RemoveQuery {
    #[serde(default)]
    force: bool,
}

/// `DELETE /v1/images/{reference}`: only whoever imported or pulled it (or an admin); not
/// while VMs use it unless `?force=true` (running VMs keep reading their open copy, but
/// cannot be created or started again from it). The host holding it removes the reference
/// and garbage-collects; then the record goes. Answers the image as it was.
pub(crate) async fn remove(
    State(c): State<Control>,
    Caller(caller): Caller,
    Path(reference): Path<String>,
    q: Result<Query<RemoveQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<pitwall_api::Image>, ApiError> {
    let Query(q) = q.map_err(|e| {
        ApiError::invalid(format!(
            "{}; the only parameter is ?force=true",
            e.body_text()
        ))
    })?;
    let (reference, record) = known(&c, &reference).await?;
    if record.owner != caller.username && !caller.is_admin {
        return Err(ApiError::forbidden(format!(
            "image {reference} was imported or pulled by {}; only they or an administrator may remove it",
            record.owner
        )));
    }
    let vms = c.inner.store.list_vms().await?;
    let image = with_users(&caller, &record, &vms);
    if image.used_by_count > 0 && !q.force {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "image_in_use",
            in_use_message(&image),
        ));
    }
    let host = record.host.clone();
    if c.live_hosts().iter().any(|h| h.name == host) {
        let payload = Payload::ImageCommand(ImageCommand {
            command: Some(image_command::Command::Remove(RemoveImage {
                reference: reference.clone(),
            })),
        });
        let reply = c
            .request(&host, verb::REMOVE, payload, c.inner.cfg.reply_timeout)
            .await?;
        let Some(Payload::ImageStatus(st)) = reply.and_then(|e| e.payload) else {
            return Err(ApiError::unavailable(format!(
                "host {host} did not answer the removal of {reference} in time; retry `pitwall image rm {reference}`"
            )));
        };
        if !st.ok {
            return Err(ApiError::internal(format!(
                "host {host} could not remove {reference}: {}",
                st.error
            )));
        }
        tracing::info!(
            image = reference,
            host,
            held = st.removed,
            forced = q.force,
            "image removed from its host"
        );
    } else if q.force {
        tracing::warn!(
            image = reference,
            host,
            "the image's host is not live; forgetting the image, its copy stays on the host"
        );
    } else {
        return Err(ApiError::unavailable(format!(
            "host {host}, which holds {reference}, is not available; retry when it is back, or force it (?force=true, `pitwall image rm --force`) to forget the image and leave the host's copy"
        )));
    }
    c.inner.store.delete_image(&reference).await?;
    tracing::info!(image = reference, digest = record.digest, "image removed");
    Ok(Json(image))
}

/// The canonical form of `reference` and its record; 404 when no image has it.
async fn known(c: &Control, reference: &str) -> Result<(String, ImageRecord), ApiError> {
    let r = ImageRef::parse(reference).map_err(|e| ApiError::invalid(e.to_string()))?;
    let reference = r.to_string();
    let img = c.inner.store.get_image(&reference).await?.ok_or_else(|| {
        ApiError::not_found(format!(
            "no image {r}; list images with `pitwall image list`"
        ))
    })?;
    Ok((reference, img))
}

/// The image as the API shows it, with the VMs (not DELETED) booted from it: those `caller`
/// may see by name, all of them by count.
fn with_users(caller: &Principal, record: &ImageRecord, vms: &[VmRecord]) -> pitwall_api::Image {
    let mut image = image_json(record);
    let using: Vec<&VmRecord> = vms
        .iter()
        .filter(|vm| vm.state != VmState::Deleted && vm.spec.image.to_string() == record.reference)
        .collect();
    image.used_by_count = using.len() as u64;
    image.used_by = using
        .iter()
        .filter(|vm| caller.can_see(&vm.owner, vm.group.as_deref()))
        .map(|vm| format!("{}:{}", vm.owner, vm.spec.name))
        .collect();
    image.used_by.sort();
    image
}

/// Why an image in use is not removed, naming the VMs the caller may see.
fn in_use_message(image: &pitwall_api::Image) -> String {
    let hidden = image
        .used_by_count
        .saturating_sub(image.used_by.len() as u64);
    let mut who = image.used_by.join(", ");
    if hidden > 0 {
        if !who.is_empty() {
            who.push_str(" and ");
        }
        who.push_str(&format!("{hidden} VM(s) of other users"));
    }
    format!(
        "image {} is used by {} VM(s): {who}; delete them first, or force the removal (?force=true, `pitwall image rm --force`): running VMs keep their copy but cannot start again",
        image.reference, image.used_by_count
    )
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use axum::http::{Method, StatusCode};
    use pitwall_proto::v1::envelope::Payload;
    use pitwall_proto::v1::{image_command, ImageErrorKind, ImageStatus};

    use crate::testing::{Harness, HOST, IMAGE};

    const ARCHIVE: &[u8] = b"not really a tar, but the host decides that";

    /// Start an import of `x/y:1` and take the host's import command; returns the call, the
    /// request envelope and the staged archive's path.
    async fn start_import(
        h: &mut Harness,
    ) -> (
        tokio::task::JoinHandle<crate::testing::Reply>,
        pitwall_proto::v1::Envelope,
        std::path::PathBuf,
    ) {
        let call = h.spawn_call(
            Method::POST,
            "/v1/images?reference=x/y:1",
            Body::from(ARCHIVE),
        );
        let (key, request) = h.host.next_command().await;
        assert_eq!(key, format!("orchestrator.{HOST}.image.import"));
        let Some(Payload::ImageCommand(cmd)) = &request.payload else {
            panic!("not an image command: {request:?}");
        };
        let Some(image_command::Command::Import(import)) = &cmd.command else {
            panic!("not an import: {cmd:?}");
        };
        assert_eq!(import.reference, "x/y:1");
        let path = std::path::PathBuf::from(&import.archive_path);
        (call, request, path)
    }

    #[tokio::test]
    async fn an_upload_is_staged_for_the_host_and_the_imported_image_is_listed() {
        let mut h = Harness::start().await;
        let (call, request, archive) = start_import(&mut h).await;
        assert_eq!(std::fs::read(&archive).unwrap(), ARCHIVE);
        let digest = format!("sha256:{}", "cd".repeat(32));
        h.host
            .reply(
                &request,
                Payload::ImageStatus(ImageStatus {
                    reference: "x/y:1".into(),
                    host: HOST.into(),
                    ok: true,
                    digest: digest.clone(),
                    size_bytes: 1234,
                    config_json: r#"{"Cmd":["/bin/hello"]}"#.into(),
                    details_json: r#"{"os":"linux","architecture":"amd64","base_format":"erofs","layers":["sha256:aa"]}"#.into(),
                    ..Default::default()
                }),
            )
            .await;
        let r = call.await.unwrap();
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
        let image: pitwall_api::Image = r.json();
        assert_eq!(image.reference, "x/y:1");
        assert_eq!(image.digest, digest);
        assert_eq!(image.config["Cmd"][0], "/bin/hello");
        let details = image.details.clone().expect("details kept");
        assert_eq!(
            (
                details["base_format"].as_str(),
                details["layers"][0].as_str()
            ),
            (Some("erofs"), Some("sha256:aa"))
        );

        let list: pitwall_api::ImageList = h.get("/v1/images").await.json();
        assert!(list.images.contains(&image), "{list:?}");
        let shown = h.get("/v1/images/x/y:1").await;
        assert_eq!(shown.status, StatusCode::OK, "{}", shown.text());
        assert_eq!(shown.json::<pitwall_api::Image>(), image);
    }

    #[tokio::test]
    async fn an_image_the_host_refuses_is_invalid_image_with_its_reason() {
        let mut h = Harness::start().await;
        let (call, request, _) = start_import(&mut h).await;
        h.host
            .reply(
                &request,
                Payload::ImageStatus(ImageStatus {
                    reference: "x/y:1".into(),
                    host: HOST.into(),
                    ok: false,
                    error: "archive is neither an OCI layout nor a docker save tar".into(),
                    ..Default::default()
                }),
            )
            .await;
        let r = call.await.unwrap();
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text());
        let e = r.error();
        assert_eq!(e.code, "invalid_image");
        assert_eq!(
            e.message,
            "archive is neither an OCI layout nor a docker save tar"
        );
        assert_eq!(
            h.get("/v1/images/x/y:1").await.status,
            StatusCode::NOT_FOUND
        );
    }

    /// Start a pull of `reference` and take the host's pull command.
    async fn start_pull(
        h: &mut Harness,
        reference: &str,
    ) -> (
        tokio::task::JoinHandle<crate::testing::Reply>,
        pitwall_proto::v1::Envelope,
    ) {
        let body = serde_json::json!({ "reference": reference }).to_string();
        let call = h.spawn_call(Method::POST, "/v1/images/pull", Body::from(body));
        let (key, request) = h.host.next_command().await;
        assert_eq!(key, format!("orchestrator.{HOST}.image.pull"));
        let Some(Payload::ImageCommand(cmd)) = &request.payload else {
            panic!("not an image command: {request:?}");
        };
        let Some(image_command::Command::Pull(pull)) = &cmd.command else {
            panic!("not a pull: {cmd:?}");
        };
        assert_eq!(pull.reference, reference);
        (call, request)
    }

    fn failed(reference: &str, kind: ImageErrorKind, error: &str) -> Payload {
        let mut st = ImageStatus {
            reference: reference.into(),
            host: HOST.into(),
            ok: false,
            error: error.into(),
            ..Default::default()
        };
        st.set_error_kind(kind);
        Payload::ImageStatus(st)
    }

    #[tokio::test]
    async fn a_pull_is_sent_to_a_host_and_the_pulled_image_is_listed() {
        let mut h = Harness::start().await;
        let (call, request) = start_pull(&mut h, "registry.test:5000/x/y:1").await;
        let digest = format!("sha256:{}", "ef".repeat(32));
        h.host
            .reply(
                &request,
                Payload::ImageStatus(ImageStatus {
                    reference: "registry.test:5000/x/y:1".into(),
                    host: HOST.into(),
                    ok: true,
                    digest: digest.clone(),
                    size_bytes: 99,
                    config_json: r#"{"Cmd":["/bin/pulled"]}"#.into(),
                    ..Default::default()
                }),
            )
            .await;
        let r = call.await.unwrap();
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
        let image: pitwall_api::Image = r.json();
        assert_eq!(image.reference, "registry.test:5000/x/y:1");
        assert_eq!(image.digest, digest);
        assert_eq!(image.host, HOST);
        assert_eq!(image.config["Cmd"][0], "/bin/pulled");
        let list: pitwall_api::ImageList = h.get("/v1/images").await.json();
        assert!(list.images.contains(&image), "{list:?}");
    }

    #[tokio::test]
    async fn a_pull_of_what_the_registry_does_not_have_is_not_found_with_the_hosts_reason() {
        let mut h = Harness::start().await;
        let (call, request) = start_pull(&mut h, "registry.test/x/y:missing").await;
        let why = "registry.test/x/y:missing was not found on registry registry.test";
        h.host
            .reply(
                &request,
                failed("registry.test/x/y:missing", ImageErrorKind::NotFound, why),
            )
            .await;
        let r = call.await.unwrap();
        assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.text());
        let e = r.error();
        assert_eq!((e.code.as_str(), e.message.as_str()), ("not_found", why));
        assert_eq!(
            h.get("/v1/images/registry.test/x/y:missing").await.status,
            StatusCode::NOT_FOUND
        );
    }

    #[tokio::test]
    async fn registry_refusals_and_failures_are_bad_gateway_with_their_own_codes() {
        let mut h = Harness::start().await;
        for (kind, code) in [
            (
                ImageErrorKind::RegistryUnauthorized,
                "registry_unauthorized",
            ),
            (ImageErrorKind::Registry, "registry_error"),
        ] {
            let (call, request) = start_pull(&mut h, "registry.test/x/y:1").await;
            h.host
                .reply(&request, failed("registry.test/x/y:1", kind, "it said no"))
                .await;
            let r = call.await.unwrap();
            assert_eq!(r.status, StatusCode::BAD_GATEWAY, "{}", r.text());
            assert_eq!(r.error().code, code);
        }
        let (call, request) = start_pull(&mut h, "registry.test/x/y:1").await;
        h.host
            .reply(
                &request,
                failed("registry.test/x/y:1", ImageErrorKind::Invalid, "bad digest"),
            )
            .await;
        let r = call.await.unwrap();
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text());
        assert_eq!(r.error().code, "invalid_image");
    }

    #[tokio::test]
    async fn pulling_over_another_users_image_is_forbidden_before_any_host_sees_it() {
        let h = Harness::start().await;
        let token = h.user("alice", &[]).await;
        let body = serde_json::json!({ "reference": crate::testing::IMAGE }).to_string();
        let r = h
            .call_as(
                Some(&token),
                Method::POST,
                "/v1/images/pull",
                Body::from(body),
            )
            .await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.text());
        assert_eq!(r.error().code, "forbidden");
        assert_eq!(h.host.waiting_commands().await, 0);
    }

    #[tokio::test]
    async fn a_pull_of_an_invalid_reference_or_body_is_invalid_argument() {
        let h = Harness::start().await;
        for body in [
            serde_json::json!({ "reference": "Not A Reference" }),
            serde_json::json!({ "ref": "x/y:1" }),
        ] {
            let r = h.post_json("/v1/images/pull", body).await;
            assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text());
            assert_eq!(r.error().code, "invalid_argument");
        }
        assert_eq!(h.host.waiting_commands().await, 0);
    }

    #[tokio::test]
    async fn an_empty_upload_is_refused_before_any_host_sees_it() {
        let h = Harness::start().await;
        let r = h.post("/v1/images?reference=x/y:1").await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text());
        let e = r.error();
        assert_eq!(e.code, "invalid_argument");
        assert!(e.message.contains("empty"), "{}", e.message);
        assert_eq!(h.host.waiting_commands().await, 0);
        let staged = std::fs::read_dir(h.data_dir().join("uploads"))
            .unwrap()
            .count();
        assert_eq!(staged, 0, "the empty upload was left staged");
    }

    /// Take the host's removal command for `reference`; returns its envelope.
    async fn take_removal(h: &mut Harness, reference: &str) -> pitwall_proto::v1::Envelope {
        let (key, request) = h.host.next_command().await;
        assert_eq!(key, format!("orchestrator.{HOST}.image.remove"));
        let Some(Payload::ImageCommand(cmd)) = &request.payload else {
            panic!("not an image command: {request:?}");
        };
        let Some(image_command::Command::Remove(rm)) = &cmd.command else {
            panic!("not a removal: {cmd:?}");
        };
        assert_eq!(rm.reference, reference);
        request
    }

    fn removed(reference: &str) -> Payload {
        Payload::ImageStatus(ImageStatus {
            reference: reference.into(),
            host: HOST.into(),
            ok: true,
            removed: true,
            ..Default::default()
        })
    }

    #[tokio::test]
    async fn removing_an_image_removes_it_on_its_host_then_from_the_store() {
        let mut h = Harness::start().await;
        let call = h.spawn_call(Method::DELETE, "/v1/images/demo/hello:1.0", Body::empty());
        let request = take_removal(&mut h, IMAGE).await;
        assert_eq!(
            h.get("/v1/images/demo/hello:1.0").await.status,
            StatusCode::OK
        );
        h.host.reply(&request, removed(IMAGE)).await;
        let r = call.await.unwrap();
        assert_eq!(r.status, StatusCode::OK, "{}", r.text());
        let image: pitwall_api::Image = r.json();
        assert_eq!(
            (image.reference.as_str(), image.owner.as_str()),
            (IMAGE, "admin")
        );
        assert_eq!(
            h.get("/v1/images/demo/hello:1.0").await.status,
            StatusCode::NOT_FOUND
        );
        let list: pitwall_api::ImageList = h.get("/v1/images").await.json();
        assert!(list.images.is_empty(), "{list:?}");
        let audit = h
            .control
            .inner
            .store
            .audit_since(0, 1000, None)
            .await
            .unwrap();
        assert!(
            audit.iter().any(|a| a.method == "DELETE"
                && a.path == "/v1/images/demo/hello:1.0"
                && a.status == 200),
            "the removal is audited: {audit:?}"
        );
    }

    #[tokio::test]
    async fn removing_an_unknown_image_is_not_found_before_any_host_sees_it() {
        let h = Harness::start().await;
        let r = h.delete("/v1/images/no/such:1").await;
        assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.text());
        let e = r.error();
        assert_eq!(e.code, "not_found");
        assert!(e.message.contains("no/such:1"), "{}", e.message);
        assert_eq!(h.host.waiting_commands().await, 0);
        h.assert_every_mutation_audited().await;
    }

    #[tokio::test]
    async fn another_users_image_cannot_be_removed_but_its_owner_or_an_admin_can() {
        let mut h = Harness::start().await;
        let alice = h.user("alice", &[]).await;
        let r = h
            .call_as(
                Some(&alice),
                Method::DELETE,
                "/v1/images/demo/hello:1.0",
                Body::empty(),
            )
            .await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.text());
        let e = r.error();
        assert_eq!(e.code, "forbidden");
        assert!(
            e.message.contains("admin"),
            "names the owner: {}",
            e.message
        );
        assert_eq!(h.host.waiting_commands().await, 0);

        // Alice's own image is hers to remove.
        let mut mine = crate::testing::image_record("alice/app:1", HOST);
        mine.owner = "alice".into();
        h.control.inner.store.put_image(&mine).await.unwrap();
        let token = alice.clone();
        let app = h.control.clone();
        let call = tokio::spawn(async move {
            crate::testing::call(
                &app,
                Some(&token),
                Method::DELETE,
                "/v1/images/alice/app:1",
                Body::empty(),
            )
            .await
        });
        let request = take_removal(&mut h, "alice/app:1").await;
        h.host.reply(&request, removed("alice/app:1")).await;
        assert_eq!(call.await.unwrap().status, StatusCode::OK);
    }

    #[tokio::test]
    async fn an_image_in_use_is_refused_naming_the_vms_that_use_it() {
        let mut h = Harness::start().await;
        h.create_vm("web").await;
        let r = h.delete("/v1/images/demo/hello:1.0").await;
        assert_eq!(r.status, StatusCode::CONFLICT, "{}", r.text());
        let e = r.error();
        assert_eq!(e.code, "image_in_use");
        assert!(e.message.contains("admin:web"), "{}", e.message);
        assert!(e.message.contains("force"), "{}", e.message);
        assert_eq!(h.host.waiting_commands().await, 0);
        let shown: pitwall_api::Image = h.get("/v1/images/demo/hello:1.0").await.json();
        assert_eq!(
            (shown.used_by, shown.used_by_count),
            (vec!["admin:web".to_string()], 1)
        );
        h.assert_every_mutation_audited().await;
    }

    #[tokio::test]
    async fn the_vms_of_others_are_counted_but_not_named() {
        let mut h = Harness::start().await;
        h.create_vm("secret").await;
        let alice = h.user("alice", &[]).await;
        let r = h
            .call_as(
                Some(&alice),
                Method::GET,
                "/v1/images/demo/hello:1.0",
                Body::empty(),
            )
            .await;
        let shown: pitwall_api::Image = r.json();
        assert_eq!((shown.used_by.len(), shown.used_by_count), (0, 1));
    }

    #[tokio::test]
    async fn force_removes_an_image_in_use() {
        let mut h = Harness::start().await;
        h.create_vm("web").await;
        let call = h.spawn_call(
            Method::DELETE,
            "/v1/images/demo/hello:1.0?force=true",
            Body::empty(),
        );
        let request = take_removal(&mut h, IMAGE).await;
        h.host.reply(&request, removed(IMAGE)).await;
        let r = call.await.unwrap();
        assert_eq!(r.status, StatusCode::OK, "{}", r.text());
        assert_eq!(r.json::<pitwall_api::Image>().used_by, ["admin:web"]);
        assert_eq!(
            h.get("/v1/images/demo/hello:1.0").await.status,
            StatusCode::NOT_FOUND
        );
        h.assert_every_mutation_audited().await;
    }

    #[tokio::test]
    async fn a_host_that_fails_the_removal_keeps_the_record_and_says_why() {
        let mut h = Harness::start().await;
        let call = h.spawn_call(Method::DELETE, "/v1/images/demo/hello:1.0", Body::empty());
        let request = take_removal(&mut h, IMAGE).await;
        h.host
            .reply(
                &request,
                failed(IMAGE, ImageErrorKind::Invalid, "disk on fire"),
            )
            .await;
        let r = call.await.unwrap();
        assert_eq!(r.status, StatusCode::INTERNAL_SERVER_ERROR, "{}", r.text());
        assert!(r.error().message.contains("disk on fire"), "{}", r.text());
        assert_eq!(
            h.get("/v1/images/demo/hello:1.0").await.status,
            StatusCode::OK
        );
    }

    #[tokio::test]
    async fn removal_while_the_host_is_gone_needs_force_and_then_forgets_the_image() {
        let h = Harness::start().await;
        h.silence_host();
        let r = h.delete("/v1/images/demo/hello:1.0").await;
        assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{}", r.text());
        assert!(r.error().message.contains("force"), "{}", r.text());
        let r = h.delete("/v1/images/demo/hello:1.0?force=true").await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text());
        assert_eq!(h.host.waiting_commands().await, 0);
        assert_eq!(
            h.get("/v1/images/demo/hello:1.0").await.status,
            StatusCode::NOT_FOUND
        );
    }

    #[tokio::test]
    async fn an_unknown_removal_parameter_is_invalid_argument() {
        let h = Harness::start().await;
        let r = h.delete("/v1/images/demo/hello:1.0?forse=true").await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text());
        assert_eq!(r.error().code, "invalid_argument");
    }
}
