//! Ingest: `POST /v1/events`, in the JSON envelope (one event or a batch) or
//! CloudEvents 1.0 (structured, batch or binary mode). Answers once every
//! event is durably committed.
//!
//! Admission control comes first: at most `http.max_concurrent_publishes`
//! requests and `http.max_inflight_publish_bytes` of their announced bodies
//! at once; past either, `503 overloaded` with `Retry-After`, before the
//! body is read. So the writer's queue holds at most that much from HTTP.
//! The body is then parsed on the blocking pool, never on an I/O thread,
//! with [`crate::ingest`]'s limits (events per request, every field's size).

use std::sync::Arc;

use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode, header};
use axum::routing::post;
use axum::{Json, Router};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use weir_abi::Event;

use super::auth::{self, Accept, Rule};
use super::extract::Body;
use super::models::PublishResponse;
use super::{ApiError, AppState};
use crate::config::{HttpConfig, Scope};
use crate::ingest::Ingest;
use crate::store::StoreError;

pub(super) fn router(state: &AppState) -> Router<AppState> {
    let routes = Router::new().route("/v1/events", post(publish));
    // The content type is checked by `parse`: ingest takes several.
    auth::guard(routes, state, Rule { read: Some(Scope::Read), write: Some(Scope::Publish), body: Accept::Any })
}

const ACCEPTED: &str = "send application/json, application/cloudevents+json, application/cloudevents-batch+json, or a binary-mode CloudEvent (ce-* headers)";

/// Seconds a refused publisher is asked to wait.
const RETRY_AFTER_SECONDS: u32 = 1;

/// The bounds on publish requests in progress.
#[derive(Debug)]
pub(super) struct Admission {
    requests: Arc<Semaphore>,
    /// One permit per KiB of announced body.
    kib: Arc<Semaphore>,
    max_kib: usize,
    max_body: usize,
}

impl Admission {
    pub(super) fn new(http: &HttpConfig) -> Self {
        let max_kib = http.max_inflight_publish_bytes.div_ceil(1024).clamp(1, Semaphore::MAX_PERMITS);
        Self {
            requests: Arc::new(Semaphore::new(http.max_concurrent_publishes.min(Semaphore::MAX_PERMITS))),
            kib: Arc::new(Semaphore::new(max_kib)),
            max_kib,
            max_body: http.max_body_bytes,
        }
    }
}

/// A publish request let in: its permits, released when it is answered.
#[derive(Debug)]
pub(super) struct Admitted {
    _request: OwnedSemaphorePermit,
    _bytes: OwnedSemaphorePermit,
}

impl FromRequestParts<AppState> for Admitted {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let admission = &state.admission;
        // Without a length (chunked), the most it may be.
        let announced = parts
            .headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<usize>().ok())
            .unwrap_or(admission.max_body)
            .min(admission.max_body);
        let kib = u32::try_from(announced.div_ceil(1024).clamp(1, admission.max_kib)).unwrap_or(u32::MAX);
        let busy = |what: &str| {
            ApiError::overloaded(
                format!("too many publish requests in progress ({what}); retry after {RETRY_AFTER_SECONDS}s"),
                RETRY_AFTER_SECONDS,
            )
        };
        let request =
            Arc::clone(&admission.requests).try_acquire_owned().map_err(|_| busy("http.max_concurrent_publishes"))?;
        let bytes = Arc::clone(&admission.kib)
            .try_acquire_many_owned(kib)
            .map_err(|_| busy("http.max_inflight_publish_bytes"))?;
        Ok(Self { _request: request, _bytes: bytes })
    }
}

async fn publish(
    State(state): State<AppState>,
    _admitted: Admitted,
    headers: HeaderMap,
    Body(body): Body,
) -> Result<Json<PublishResponse>, ApiError> {
    let rt = Arc::clone(&state.runtime);
    let events = tokio::task::spawn_blocking(move || {
        let ingest = Ingest {
            ids: rt.ids(),
            source: "weir:http",
            max_payload_bytes: rt.config().max_payload_bytes,
            schemas: Some(&rt.config().schemas),
        };
        let events = parse(&ingest, &headers, &body)?;
        rt.config().schemas.observe(&events);
        Ok::<_, ApiError>(events)
    })
    .await??;
    let (tx, rx) = tokio::sync::oneshot::channel();
    state.runtime.publish(events, Box::new(move |r| drop(tx.send(r))));
    // A writer that went away without answering has closed the store.
    let published = rx.await.map_err(|_| StoreError::Closed)??;
    Ok(Json(PublishResponse { events: published.iter().map(Into::into).collect() }))
}

/// The events of the request, by its mode: binary-mode CloudEvent when it
/// has `ce-specversion`, else by content type, which must be given (a
/// browser sends `text/plain` and bodiless requests to any site without
/// asking first; it never sends these types so).
fn parse(ingest: &Ingest<'_>, headers: &HeaderMap, body: &[u8]) -> Result<Vec<Event>, ApiError> {
    if headers.contains_key("ce-specversion") {
        // Every header, as raw bytes: ingest decodes the `ce-*` values
        // (percent-encoding, UTF-8) and names any it cannot, rather than one
        // that is not ASCII being dropped here and reported as missing.
        let pairs: Vec<(&str, &[u8])> = headers.iter().map(|(n, v)| (n.as_str(), v.as_bytes())).collect();
        return Ok(ingest.cloudevent_binary(&pairs, body.to_vec())?);
    }
    let content_type = match auth::media_type(headers) {
        None => return Err(unsupported(format!("no content type: {ACCEPTED}"))),
        Some(Ok(v)) => v,
        // Not "no content type, so JSON": the sender named a type we cannot read.
        Some(Err(())) => {
            return Err(unsupported(format!("the content-type header is not printable ASCII: {ACCEPTED}")));
        }
    };
    let events = match content_type.as_str() {
        "application/cloudevents+json" => ingest.cloudevent(body),
        "application/cloudevents-batch+json" => ingest.cloudevent_batch(body),
        "application/json" => ingest.json(body),
        other => return Err(unsupported(format!("content type {other:?}: {ACCEPTED}"))),
    };
    Ok(events?)
}

fn unsupported(message: String) -> ApiError {
    ApiError::new(StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type", message)
}
