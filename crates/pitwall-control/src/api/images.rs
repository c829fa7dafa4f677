//! `/v1/images`: import (upload of an OCI layout tar or a `docker save` tar), pull from a
//! registry, list, show.
//!
//! An upload is staged under the control plane's data directory and imported by a host,
//! which answers with the image's digest and config. In the embedded default the host shares
//! the machine (and so the staging directory). A pull needs no staging: the host fetches the
//! image from its registry itself, with its own registry settings (TLS, insecure registries,
//! credentials), and answers the same way.

use axum::body::Body;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use futures::StreamExt;
use pitwall_api::{ImageList, PullImageRequest};
use pitwall_core::ImageRef;
use pitwall_proto::routing::verb;
use pitwall_proto::v1::envelope::Payload;
use pitwall_proto::v1::{image_command, ImageCommand, ImageErrorKind, ImageStatus, PullImage};
use pitwall_store::ImageRecord;
use serde::Deserialize;
use time::OffsetDateTime;
use tokio::io::AsyncWriteExt;

use super::access::Caller;
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
/// an import (`import_timeout`).
pub(crate) async fn pull(
    State(c): State<Control>,
    Caller(caller): Caller,
    body: Result<Json<PullImageRequest>, JsonRejection>,
) -> Result<(StatusCode, Json<pitwall_api::Image>), ApiError> {
    let req = json_body(body)?;
    let reference =
        ImageRef::parse(&req.reference).map_err(|e| ApiError::invalid(e.to_string()))?;
    let reference = reference.to_string();
    may_replace(&c, &caller, &reference).await?;
    let host = image_host(&c, "pull")?;
    let payload = Payload::ImageCommand(ImageCommand {
        command: Some(image_command::Command::Pull(PullImage {
            reference: reference.clone(),
        })),
    });
    let reply = c
        .request(&host, verb::PULL, payload, c.inner.cfg.import_timeout)
        .await?;
    let Some(Payload::ImageStatus(st)) = reply.and_then(|e| e.payload) else {
        return Err(ApiError::unavailable(format!(
            "host {host} did not finish pulling {reference} in time; it may still be working: check `pitwall image list` later"
        )));
    };
    let record = register(&c, &caller, &reference, st).await?;
    tracing::info!(
        image = reference,
        digest = record.digest,
        host = record.host,
        "image pulled"
    );
    Ok((StatusCode::CREATED, Json(image_json(&record))))
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

pub(crate) async fn list(State(c): State<Control>) -> Result<Json<ImageList>, ApiError> {
    let images = c.inner.store.list_images().await?;
    Ok(Json(ImageList {
        images: images.iter().map(image_json).collect(),
    }))
}

pub(crate) async fn show(
    State(c): State<Control>,
    Path(reference): Path<String>,
) -> Result<Json<pitwall_api::Image>, ApiError> {
    let r = ImageRef::parse(&reference).map_err(|e| ApiError::invalid(e.to_string()))?;
    let img = c
        .inner
        .store
        .get_image(&r.to_string())
        .await?
        .ok_or_else(|| {
            ApiError::not_found(format!(
                "no image {r}; list images with `pitwall image list`"
            ))
        })?;
    Ok(Json(image_json(&img)))
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use axum::http::{Method, StatusCode};
    use pitwall_proto::v1::envelope::Payload;
    use pitwall_proto::v1::{image_command, ImageErrorKind, ImageStatus};

    use crate::testing::{Harness, HOST};

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
}
