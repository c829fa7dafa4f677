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

use super::{image_json, ApiError};
use crate::Control;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ImportQuery {
    reference: String,
}

pub(crate) async fn import(
    State(c): State<Control>,
    q: Result<Query<ImportQuery>, axum::extract::rejection::QueryRejection>,
    body: Body,
) -> Result<(StatusCode, Json<pitwall_api::Image>), ApiError> {
    let Query(q) =
        q.map_err(|e| ApiError::invalid(format!("{}; use ?reference=NAME:TAG", e.body_text())))?;
    let reference = ImageRef::parse(&q.reference).map_err(|e| ApiError::invalid(e.to_string()))?;
    let reference = reference.to_string();
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
