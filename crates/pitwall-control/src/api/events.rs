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
    super::access::Caller(caller): super::access::Caller,
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
                if caller.can_see(&e.owner, e.group.as_deref()) && tx.send(e).await.is_err() {
                    return;
                }
            }
        }
        loop {
            match live.recv().await {
                Ok(e) if e.seq <= after => continue,
                Ok(e) => {
                    after = e.seq;
                    if caller.can_see(&e.owner, e.group.as_deref()) && tx.send(e).await.is_err() {
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
                        if caller.can_see(&e.owner, e.group.as_deref()) && tx.send(e).await.is_err()
                        {
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

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use axum::http::{header, Request, StatusCode};
    use http_body_util::BodyExt;
    use pitwall_core::VmState;
    use tower::ServiceExt;

    use crate::testing::{Harness, PATIENCE};

    /// Reads server-sent events from `body` until `n` complete `state` events are in `buf`;
    /// returns them (and leaves what follows in `buf`).
    async fn read_state_events(
        body: &mut Body,
        buf: &mut String,
        n: usize,
    ) -> Vec<pitwall_api::Event> {
        let mut events = Vec::new();
        loop {
            while let Some(end) = buf.find("\n\n") {
                let block: String = buf.drain(..end + 2).collect();
                if !block.lines().any(|l| l == "event: state") {
                    continue;
                }
                let data = block
                    .lines()
                    .find_map(|l| l.strip_prefix("data: "))
                    .unwrap_or_else(|| panic!("state event without data: {block:?}"));
                events.push(serde_json::from_str(data).unwrap());
                if events.len() == n {
                    return events;
                }
            }
            let frame = tokio::time::timeout(PATIENCE, body.frame())
                .await
                .unwrap_or_else(|_| panic!("only {} of {n} events arrived", events.len()))
                .expect("stream open")
                .unwrap();
            if let Ok(data) = frame.into_data() {
                buf.push_str(std::str::from_utf8(&data).unwrap());
            }
        }
    }

    #[tokio::test]
    async fn applied_states_reach_subscribers_and_the_event_stream() {
        let mut h = Harness::start().await;
        let mut live = h.control.subscribe();
        let vm = h.create_vm("a").await;
        for state in [VmState::Creating, VmState::Starting, VmState::Running] {
            h.host.report(&vm, state, 1, None).await;
        }
        let mut seen = Vec::new();
        for _ in 0..4 {
            let e = tokio::time::timeout(PATIENCE, live.recv())
                .await
                .unwrap()
                .unwrap();
            assert_eq!(e.vm_name, "a");
            seen.push((e.seq, e.state.to_string()));
        }
        let states: Vec<&str> = seen.iter().map(|(_, s)| s.as_str()).collect();
        assert_eq!(states, ["PENDING", "CREATING", "STARTING", "RUNNING"]);

        // The stream replays the log, then follows live events.
        let req = Request::get("/v1/events")
            .header(header::AUTHORIZATION, format!("Bearer {}", h.admin_token))
            .body(Body::empty())
            .unwrap();
        let resp = h.control.router().oneshot(req).await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(
            resp.headers().get(header::CONTENT_TYPE).unwrap(),
            "text/event-stream"
        );
        let mut body = resp.into_body();
        let mut buf = String::new();
        let replayed = read_state_events(&mut body, &mut buf, 4).await;
        let streamed: Vec<(u64, String)> =
            replayed.iter().map(|e| (e.seq, e.state.clone())).collect();
        assert_eq!(streamed, seen);
        assert!(replayed
            .iter()
            .all(|e| e.vm_id == vm.id && e.generation == 1));

        h.create_vm("b").await;
        let followed = read_state_events(&mut body, &mut buf, 1).await;
        assert_eq!(
            (followed[0].vm_name.as_str(), followed[0].state.as_str()),
            ("b", "PENDING")
        );
        assert_eq!(followed[0].seq, seen[3].0 + 1);
    }

    /// `POST /v1/vms` of `name` as `token`, which must succeed.
    async fn create_as(h: &Harness, token: &str, name: &str) {
        let body = serde_json::json!({"name": name, "image": crate::testing::IMAGE});
        let r = h
            .call_as(
                Some(token),
                axum::http::Method::POST,
                "/v1/vms",
                Body::from(body.to_string()),
            )
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
    }

    #[tokio::test]
    async fn a_user_streams_only_the_events_of_vms_they_may_see() {
        let mut h = Harness::start().await;
        let alice = h.user("alice", &[]).await;
        let bob = h.user("bob", &[]).await;
        for (token, name) in [(&alice, "a1"), (&bob, "b1"), (&alice, "a2"), (&bob, "b2")] {
            create_as(&h, token, name).await;
            h.host.next_vm_command().await;
        }
        let req = Request::get("/v1/events")
            .header(header::AUTHORIZATION, format!("Bearer {bob}"))
            .body(Body::empty())
            .unwrap();
        let resp = h.control.router().oneshot(req).await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        let mut body = resp.into_body();
        let mut buf = String::new();
        // Replay: bob's two PENDING events, none of alice's (they came in between).
        let events = read_state_events(&mut body, &mut buf, 2).await;
        let names: Vec<&str> = events.iter().map(|e| e.vm_name.as_str()).collect();
        assert_eq!(names, ["b1", "b2"]);
        // Live: alice's next VM is not sent; bob's is.
        for (token, name) in [(&alice, "a3"), (&bob, "b3")] {
            create_as(&h, token, name).await;
        }
        let next = read_state_events(&mut body, &mut buf, 1).await;
        assert_eq!(next[0].vm_name, "b3");
    }
}
