//! `GET /v1/events`: lifecycle events as server-sent events. Each event has `id` = its
//! sequence number, so a client that reconnects with `Last-Event-ID` (or `?after=N`) misses
//! nothing: the log is replayed from the store, then live events follow.

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use futures::Stream;
use serde::Deserialize;

use super::{event_json, ApiError};
use crate::Control;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct EventsQuery {
    after: Option<u64>,
}

pub(crate) async fn events(
    State(c): State<Control>,
    headers: HeaderMap,
    q: Result<Query<EventsQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Sse<impl Stream<Item = Result<SseEvent, Infallible>>>, ApiError> {
    let Query(q) =
        q.map_err(|e| ApiError::invalid(format!("{}; use ?after=SEQ", e.body_text())))?;
    let header_after = match headers.get("last-event-id") {
        None => None,
        Some(v) => Some(
            v.to_str()
                .ok()
                .and_then(|s| s.trim().parse::<u64>().ok())
                .ok_or_else(|| {
                    ApiError::invalid("Last-Event-ID must be an event sequence number")
                })?,
        ),
    };
    let mut after = q.after.or(header_after).unwrap_or(0);
    let mut live = c.subscribe();
    let store = c.inner.store.clone();
    let stream = async_stream(move |tx| async move {
        // Replay what the store has, then follow live events, skipping what was sent.
        loop {
            let Ok(page) = store.events_since(after, 500).await else {
                return;
            };
            if page.is_empty() {
                break;
            }
            for e in page {
                after = e.seq;
                if tx.send(e).await.is_err() {
                    return;
                }
            }
        }
        loop {
            match live.recv().await {
                Ok(e) if e.seq <= after => continue,
                Ok(e) => {
                    after = e.seq;
                    if tx.send(e).await.is_err() {
                        return;
                    }
                }
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                    // Fell behind the live channel: catch up from the store.
                    let Ok(page) = store.events_since(after, 10_000).await else {
                        return;
                    };
                    for e in page {
                        after = e.seq;
                        if tx.send(e).await.is_err() {
                            return;
                        }
                    }
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
            }
        }
    });
    let stream = futures::StreamExt::map(stream, |e| {
        let data = serde_json::to_string(&event_json(&e)).unwrap_or_default();
        Ok(SseEvent::default()
            .event("state")
            .id(e.seq.to_string())
            .data(data))
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}

/// A stream fed by a task through a bounded channel (back-pressure on slow clients).
fn async_stream<T, F, Fut>(f: F) -> impl Stream<Item = T>
where
    T: Send + 'static,
    F: FnOnce(tokio::sync::mpsc::Sender<T>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    tokio::spawn(f(tx));
    tokio_stream::wrappers::ReceiverStream::new(rx)
}
