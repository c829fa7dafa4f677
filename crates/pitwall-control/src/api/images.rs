//! `/v1/images`: import (upload of an OCI layout tar or a `docker save` tar), list, show.
//!
//! An upload is staged under the control plane's data directory and imported by a host,
//! which answers with the image's digest and config. In the embedded default the host shares
//! the machine (and so the staging directory); registry pulls, which every host can do by
//! itself, come with the distributed shape.

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use futures::StreamExt;
use pitwall_api::ImageList;
use pitwall_core::ImageRef;
use pitwall_proto::routing::verb;
use pitwall_proto::v1::envelope::Payload;
use pitwall_store::ImageRecord;
use serde::Deserialize;
use time::OffsetDateTime;
use tokio::io::AsyncWriteExt;

use super::access::Caller;
use super::{image_json, ApiError};
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
    // Images are shared by the whole cluster; only whoever imported one (or an admin) may
    // replace it, so nobody can swap what another user's VMs boot.
    if let Some(existing) = c.inner.store.get_image(&reference).await? {
        if existing.owner != caller.username && !caller.is_admin {
            return Err(ApiError::forbidden(format!(
                "image {reference} was imported by another user; import under another name"
            )));
        }
    }
    let host = c
        .live_hosts()
        .into_iter()
        .next()
        .map(|h| h.name)
        .ok_or_else(|| {
            ApiError::unavailable(
                "no host is available to import the image; check that a host daemon runs",
            )
        })?;

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
    if !st.ok {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_image",
            st.error,
        ));
    }
    let config = serde_json::from_str(&st.config_json).unwrap_or(serde_json::Value::Null);
    let record = ImageRecord {
        reference: reference.clone(),
        digest: st.digest,
        size_bytes: st.size_bytes,
        config,
        host: st.host,
        owner: caller.username.clone(),
        created_at: OffsetDateTime::now_utc(),
    };
    c.inner.store.put_image(&record).await?;
    tracing::info!(
        image = reference,
        digest = record.digest,
        host = record.host,
        "image imported"
    );
    Ok((StatusCode::CREATED, Json(image_json(&record))))
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
    use pitwall_proto::v1::{image_command, ImageStatus};

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
