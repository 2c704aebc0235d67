//! Entity streams (docs/event-sourcing.md): `GET /v1/streams/{type}/{key}`
//! reads one (`read` scope off loopback), `POST /v1/streams/{type}/{key}`
//! appends to it at an expected revision (`publish` scope), answered once
//! the events are durable, like ingest, and admitted like ingest
//! (`http.max_concurrent_publishes`, `http.max_inflight_publish_bytes`).

use std::collections::HashSet;
use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::value::RawValue;
use weir_abi::Event;

use super::auth::{self, Accept, Rule};
use super::events::Admitted;
use super::extract::{Body, Path, Query};
use super::models::{
    ErrorInfo, ExpectedRevisionText, MAX_EVENTS_PER_APPEND, STREAM_PAGE_DEFAULT, STREAM_PAGE_MAX, StreamAppendResponse,
    StreamAppendedEvent, StreamConflictResponse, StreamEvent, StreamQuery, StreamReadResponse,
};
use super::{ApiError, AppState, blocking};
use crate::config::Scope;
use crate::envelope::JsonEvent;
use crate::ingest::{Ingest, MAX_KEY_BYTES};
use crate::store::{AppendOutcome, StoreError, StreamPublished};

pub(super) fn router(state: &AppState) -> Router<AppState> {
    let routes = Router::new().route("/v1/streams/{ty}/{key}", get(read).post(append));
    auth::guard(routes, state, Rule { read: Some(Scope::Read), write: Some(Scope::Publish), body: Accept::Json })
}

/// 404 `unknown_entity_type` unless `ty` is declared.
fn declared(state: &AppState, ty: &str) -> Result<(), ApiError> {
    if state.runtime.store().entity_declared(ty) {
        return Ok(());
    }
    Err(ApiError::new(
        StatusCode::NOT_FOUND,
        "unknown_entity_type",
        format!("{ty:?} is not a declared entity type: declare it in weir.toml ([[entities]] type = \"{ty}\")"),
    ))
}

async fn read(
    State(state): State<AppState>,
    Path((ty, key)): Path<(String, String)>,
    Query(query): Query<StreamQuery>,
) -> Result<Json<StreamReadResponse>, ApiError> {
    declared(&state, &ty)?;
    let backward = match query.direction.as_deref() {
        None | Some("forward") => false,
        Some("backward") => true,
        Some(other) => {
            return Err(ApiError::bad_request(
                "invalid_query",
                format!("direction {other:?}: give \"forward\" or \"backward\""),
            ));
        }
    };
    let limit = query.limit.unwrap_or(STREAM_PAGE_DEFAULT);
    if limit == 0 || limit > STREAM_PAGE_MAX {
        return Err(ApiError::bad_request("invalid_query", format!("limit {limit}: give 1 to {STREAM_PAGE_MAX}")));
    }
    let store = state.runtime.store().clone();
    let (t, k) = (ty.clone(), key.clone());
    let page =
        blocking(move || store.read_stream(&t, &k, query.from, backward, limit, crate::runtime::LOG_MAX_ANSWER_BYTES))
            .await?;
    let next = match page.events.last() {
        Some((last, _, _)) if backward => last.checked_sub(1),
        Some((last, _, _)) => (page.revision.is_some_and(|r| *last < r)).then(|| last + 1),
        // Nothing from `from` on: the end either way.
        None => None,
    };
    Ok(Json(StreamReadResponse {
        stream: format!("{ty}/{key}"),
        revision: page.revision,
        events: page
            .events
            .iter()
            .map(|(revision, seq, event)| StreamEvent {
                revision: *revision,
                seq: *seq,
                event: JsonEvent::from_event(event),
            })
            .collect(),
        next,
    }))
}

/// The body as the server reads it: the events kept raw for ingest's parser.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAppend<'a> {
    expected_revision: Option<serde_json::Value>,
    #[serde(borrow)]
    events: Option<&'a RawValue>,
}

async fn append(
    State(state): State<AppState>,
    _admitted: Admitted,
    Path((ty, key)): Path<(String, String)>,
    Body(body): Body,
) -> Result<Response, ApiError> {
    declared(&state, &ty)?;
    let rt = Arc::clone(&state.runtime);
    let (t, k) = (ty.clone(), key.clone());
    let (expected, events) = blocking(move || {
        let ingest = Ingest {
            ids: rt.ids(),
            source: "weir:http",
            max_payload_bytes: rt.config().max_payload_bytes,
            schemas: Some(&rt.config().schemas),
        };
        let parsed = parse(&ingest, &t, &k, &body)?;
        rt.config().schemas.observe(&parsed.1);
        Ok::<_, ApiError>(parsed)
    })
    .await?;
    let (tx, rx) = tokio::sync::oneshot::channel();
    state.runtime.store().append_stream(ty.clone(), key.clone(), expected, events, Box::new(move |r| drop(tx.send(r))));
    let outcome = rx.await.map_err(|_| StoreError::Closed)??;
    let stream = format!("{ty}/{key}");
    let answered = |events: &[StreamPublished], revision, duplicate| {
        Json(StreamAppendResponse {
            stream: stream.clone(),
            revision,
            duplicate,
            events: events
                .iter()
                .map(|p| StreamAppendedEvent { id: p.id.to_string(), seq: p.seq, revision: p.revision })
                .collect(),
        })
        .into_response()
    };
    Ok(match outcome {
        AppendOutcome::Appended { events, revision } => answered(&events, Some(revision), false),
        AppendOutcome::Duplicate { events, revision } => answered(&events, revision, true),
        AppendOutcome::WrongExpectedRevision { actual } => {
            let now = actual.map_or_else(|| "it has no event".to_owned(), |r| format!("its revision is {r}"));
            let body = StreamConflictResponse {
                error: ErrorInfo {
                    code: "wrong_expected_revision".into(),
                    message: format!(
                        "stream {stream}: {now}, not the expected one; nothing was stored. Read the stream, decide again, and append with the revision read"
                    ),
                    index: None,
                    stage: None,
                },
                actual_revision: actual,
            };
            (StatusCode::CONFLICT, Json(body)).into_response()
        }
        AppendOutcome::PartlyDuplicate { index } => {
            let message = format!(
                "event {index}: its idempotency key was appended before while others of this append were not; nothing was stored. Re-send an append exactly as before, or new events alone"
            );
            ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "partly_duplicate", message).into_response()
        }
        // `parse` and `declared` checked this before the append was sent:
        // only a bug reaches it.
        AppendOutcome::NotOfStream { index } => ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "not_of_stream",
            format!("event {index:?} is not of stream {stream}"),
        )
        .into_response(),
    })
}

/// The expected revision and the events of an append body, each event
/// checked as ingest does and against the stream.
fn parse(
    ingest: &Ingest<'_>,
    ty: &str,
    key: &str,
    body: &[u8],
) -> Result<(crate::store::ExpectedRevision, Vec<Event>), ApiError> {
    if key.is_empty() || key.len() > MAX_KEY_BYTES {
        return Err(ApiError::bad_request(
            "invalid_key",
            format!("the stream's key must be 1 to {MAX_KEY_BYTES} bytes, it is {}", key.len()),
        ));
    }
    let raw: RawAppend<'_> = serde_json::from_slice(body).map_err(|e| {
        ApiError::bad_request(
            "invalid_json",
            format!("the body is not {{\"expected_revision\": …, \"events\": [ … ]}}: {e}"),
        )
    })?;
    let expected = match &raw.expected_revision {
        Some(value) => {
            ExpectedRevisionText::from_json(value).map_err(|e| ApiError::bad_request("invalid_expected_revision", e))?.0
        }
        None => {
            return Err(ApiError::bad_request(
                "invalid_expected_revision",
                "expected_revision is missing: give \"any\", \"no_stream\", \"exists\" or the stream's current revision",
            ));
        }
    };
    let Some(events) = raw.events else {
        return Err(ApiError::bad_request("empty", "events is missing: give the events to append"));
    };
    if !events.get().trim_start().starts_with('[') {
        return Err(ApiError::bad_request("invalid_json", "events must be an array of events"));
    }
    let mut events = ingest.json(events.get().as_bytes())?;
    if events.len() > MAX_EVENTS_PER_APPEND {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_many_events",
            format!("the append holds more than {MAX_EVENTS_PER_APPEND} events: append them in several requests"),
        ));
    }
    let mut keys = HashSet::with_capacity(events.len());
    for (index, event) in events.iter_mut().enumerate() {
        let refuse = |code, message: String| {
            ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, code, format!("event {index}: {message}"))
        };
        if crate::store::entity_type(&event.topic) != Some(ty) {
            return Err(refuse(
                "topic_not_of_entity",
                format!("topic {:?} is not of the entity type {ty:?}: give {ty}.<event>", event.topic),
            ));
        }
        match &event.key {
            None => event.key = Some(key.to_owned()),
            Some(k) if k == key => {}
            Some(k) => {
                return Err(refuse("key_mismatch", format!("key {k:?} is not the stream's key {key:?}: leave it out")));
            }
        }
        if !keys.insert(event.idempotency_key.clone()) {
            return Err(refuse(
                "duplicate_idempotency_key",
                format!("idempotency key {:?} is given twice in this append", event.idempotency_key),
            ));
        }
    }
    Ok((expected, events))
}
