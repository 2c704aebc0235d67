//! Ingest: `POST /v1/events`, in the JSON envelope (one event or a batch) or
//! CloudEvents 1.0 (structured, batch or binary mode). Answers once every
//! event is durably committed.

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::routing::post;
use axum::{Json, Router};
use weir_abi::Event;

use super::extract::Body;
use super::models::PublishResponse;
use super::{ApiError, AppState};
use crate::ingest::Ingest;
use crate::store::StoreError;

pub(super) fn router() -> Router<AppState> {
    Router::new().route("/v1/events", post(publish))
}

const ACCEPTED: &str = "send application/json, application/cloudevents+json, application/cloudevents-batch+json, or a binary-mode CloudEvent (ce-* headers)";

async fn publish(
    State(state): State<AppState>,
    headers: HeaderMap,
    Body(body): Body,
) -> Result<Json<PublishResponse>, ApiError> {
    let rt = &state.runtime;
    let ingest = Ingest { ids: rt.ids(), source: "weir:http", max_payload_bytes: rt.config().max_payload_bytes };
    let events = parse(&ingest, &headers, &body)?;
    let (tx, rx) = tokio::sync::oneshot::channel();
    rt.publish(events, Box::new(move |r| drop(tx.send(r))));
    // A writer that went away without answering has closed the store.
    let published = rx.await.map_err(|_| StoreError::Closed)??;
    Ok(Json(PublishResponse { events: published.iter().map(Into::into).collect() }))
}

/// The events of the request, by its mode: binary-mode CloudEvent when it
/// has `ce-specversion`, else by content type (none means JSON).
fn parse(ingest: &Ingest<'_>, headers: &HeaderMap, body: &[u8]) -> Result<Vec<Event>, ApiError> {
    if headers.contains_key("ce-specversion") {
        // Every header, as raw bytes: ingest decodes the `ce-*` values
        // (percent-encoding, UTF-8) and names any it cannot, rather than one
        // that is not ASCII being dropped here and reported as missing.
        let pairs: Vec<(&str, &[u8])> = headers.iter().map(|(n, v)| (n.as_str(), v.as_bytes())).collect();
        return Ok(ingest.cloudevent_binary(&pairs, body.to_vec())?);
    }
    let content_type = match headers.get(header::CONTENT_TYPE).map(|v| v.to_str()) {
        None => String::new(),
        Some(Ok(v)) => v.split(';').next().unwrap_or("").trim().to_ascii_lowercase(),
        // Not "no content type, so JSON": the sender named a type we cannot read.
        Some(Err(_)) => {
            return Err(unsupported(format!("the content-type header is not printable ASCII: {ACCEPTED}")));
        }
    };
    let events = match content_type.as_str() {
        "application/cloudevents+json" => ingest.cloudevent(body),
        "application/cloudevents-batch+json" => ingest.cloudevent_batch(body),
        "application/json" | "" => ingest.json(body),
        other => return Err(unsupported(format!("content type {other:?}: {ACCEPTED}"))),
    };
    Ok(events?)
}

fn unsupported(message: String) -> ApiError {
    ApiError::new(StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type", message)
}
