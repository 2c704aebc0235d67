//! Commands (docs/event-sourcing.md, "Aggregates and commands"):
//! `POST /v1/commands/{type}/{key}` decides a command with the entity
//! type's aggregate and answers once its events are durable (`publish`
//! scope off loopback; admitted like ingest); `GET /v1/commands/{type}/{key}`
//! reads the recorded commands, the audit trail (`read`);
//! `GET /v1/streams/{type}/{key}/state?at=` folds the stream through the
//! aggregate up to a revision or a time (`read`); `POST
//! /v1/entities/{type}/aggregate` deploys another version of the aggregate
//! (`admin`).
//! The aggregate runs on the blocking pool, never on an I/O thread; the
//! commit is awaited.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};

use super::auth::{self, Accept, Rule};
use super::events::Admitted;
use super::extract::{Body, Path, Query};
use super::models::{
    COMMAND_PAGE_DEFAULT, COMMAND_PAGE_MAX, CommandAccepted, CommandEntry, CommandEventRef, CommandListResponse,
    CommandQuery, CommandRequestBody, EntityStateResponse, MAX_COMMAND_KEY_BYTES, MAX_COMMAND_NAME_BYTES, StateQuery,
};
use super::{ApiError, AppState, blocking};
use crate::aggregate::{AggregateError, Aggregates, At, CommandRequest};
use crate::config::Scope;
use crate::ingest::MAX_KEY_BYTES;
use crate::store::{CommandRecord, CommandResult};

pub(super) fn router(state: &AppState) -> Router<AppState> {
    let commands = auth::guard(
        Router::new()
            .route("/v1/commands/{ty}/{key}", get(list).post(send))
            .route("/v1/streams/{ty}/{key}/state", get(state_at)),
        state,
        Rule { read: Some(Scope::Read), write: Some(Scope::Publish), body: Accept::Json },
    );
    let deploy = auth::guard(
        Router::new().route("/v1/entities/{ty}/aggregate", post(deploy)),
        state,
        Rule { read: Some(Scope::Admin), write: Some(Scope::Admin), body: Accept::Module },
    );
    commands.merge(deploy)
}

impl From<AggregateError> for ApiError {
    fn from(e: AggregateError) -> Self {
        let (status, code) = match &e {
            AggregateError::Store(_) => {
                if let AggregateError::Store(store) = e {
                    return store.into();
                }
                (StatusCode::INTERNAL_SERVER_ERROR, "internal")
            }
            AggregateError::UnknownEntityType(_) => (StatusCode::NOT_FOUND, "unknown_entity_type"),
            AggregateError::NoAggregate(_) => (StatusCode::NOT_FOUND, "no_aggregate"),
            AggregateError::Conflict { .. } => (StatusCode::CONFLICT, "command_conflict"),
            AggregateError::StateTooLarge { .. } => (StatusCode::UNPROCESSABLE_ENTITY, "state_too_large"),
            AggregateError::StreamTooLong { .. } => (StatusCode::UNPROCESSABLE_ENTITY, "stream_too_long"),
            AggregateError::Aggregate { .. } | AggregateError::BadEvent(_) | AggregateError::Start(_) => {
                (StatusCode::INTERNAL_SERVER_ERROR, "aggregate_failed")
            }
            AggregateError::Refused(code, _) => (StatusCode::UNPROCESSABLE_ENTITY, *code),
            AggregateError::Schema { error, .. } => (StatusCode::UNPROCESSABLE_ENTITY, error.code()),
        };
        Self::new(status, code, e.to_string())
    }
}

/// The entity's key, as a stream's.
fn check_key(key: &str) -> Result<(), ApiError> {
    if key.is_empty() || key.len() > MAX_KEY_BYTES {
        return Err(ApiError::bad_request(
            "invalid_key",
            format!("the entity's key must be 1 to {MAX_KEY_BYTES} bytes, it is {}", key.len()),
        ));
    }
    Ok(())
}

/// The command of a request body, checked for shape and bounds.
fn parse(ty: &str, key: &str, body: &[u8], max_payload_bytes: usize) -> Result<CommandRequest, ApiError> {
    check_key(key)?;
    let body: CommandRequestBody = serde_json::from_slice(body).map_err(|e| {
        ApiError::bad_request(
            "invalid_json",
            format!("the body is not {{\"command\": \"…\", \"payload\": …, \"idempotency_key\": \"…\"}}: {e}"),
        )
    })?;
    let name_ok = !body.command.is_empty()
        && body.command.len() <= MAX_COMMAND_NAME_BYTES
        && body.command.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if !name_ok {
        return Err(ApiError::bad_request(
            "invalid_command",
            format!(
                "command {:?}: give its name, 1 to {MAX_COMMAND_NAME_BYTES} characters of a-z, A-Z, 0-9, '_' or '-'",
                body.command
            ),
        ));
    }
    if body.idempotency_key.is_empty() || body.idempotency_key.len() > MAX_COMMAND_KEY_BYTES {
        return Err(ApiError::bad_request(
            "invalid_idempotency_key",
            format!(
                "idempotency_key must be 1 to {MAX_COMMAND_KEY_BYTES} bytes, it is {}: a retry with the same key answers the first result",
                body.idempotency_key.len()
            ),
        ));
    }
    let payload = match &body.payload {
        Some(value) => serde_json::to_vec(value).map_err(|e| ApiError::bad_request("invalid_json", e.to_string()))?,
        None => b"null".to_vec(),
    };
    if payload.len() > max_payload_bytes {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("the payload is {} bytes, over ingest.max_payload_bytes ({max_payload_bytes})", payload.len()),
        ));
    }
    Ok(CommandRequest {
        ty: ty.to_owned(),
        key: key.to_owned(),
        name: body.command,
        payload,
        idempotency_key: body.idempotency_key,
    })
}

fn events(record: &CommandRecord) -> Vec<CommandEventRef> {
    match &record.result {
        CommandResult::Accepted { events, .. } => events
            .iter()
            .map(|e| CommandEventRef {
                id: weir_abi::EventId::from_u128(e.id).to_string(),
                seq: e.seq,
                revision: e.revision,
            })
            .collect(),
        CommandResult::Rejected { .. } => Vec::new(),
    }
}

async fn send(
    State(state): State<AppState>,
    _admitted: Admitted,
    Path((ty, key)): Path<(String, String)>,
    Body(body): Body,
) -> Result<Response, ApiError> {
    let rt = Arc::clone(&state.runtime);
    let stream = format!("{ty}/{key}");
    // The type first: a command to an unknown type is a 404 whatever its
    // body.
    rt.aggregates().get(&ty)?;
    let request = parse(&ty, &key, &body, rt.config().max_payload_bytes)?;
    // A task of its own: a client that goes away mid-command does not cut
    // it short, so the entity's lock is held until its commit is answered.
    let executed = tokio::spawn(async move { Aggregates::execute(&rt, request).await }).await??;
    let record = &executed.record;
    Ok(match &record.result {
        CommandResult::Accepted { revision, .. } => {
            Json(CommandAccepted { stream, events: events(record), revision: *revision, duplicate: executed.replayed })
                .into_response()
        }
        CommandResult::Rejected { reason } => {
            ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "command_rejected", reason.clone()).into_response()
        }
    })
}

fn entry(record: CommandRecord) -> CommandEntry {
    let events = events(&record);
    let (result, revision, reason) = match record.result {
        CommandResult::Accepted { revision, .. } => ("accepted", revision, None),
        CommandResult::Rejected { reason } => ("rejected", None, Some(reason)),
    };
    CommandEntry {
        ordinal: record.ordinal,
        idempotency_key: record.idempotency_key,
        command: record.name,
        payload: serde_json::from_slice(&record.payload)
            .unwrap_or_else(|_| serde_json::Value::String(String::from_utf8_lossy(&record.payload).into_owned())),
        time: crate::envelope::format_time(i64::try_from(record.time_ms).unwrap_or(i64::MAX / 1_000_000) * 1_000_000),
        aggregate: record.aggregate,
        decided_at: record.decided_at,
        folded: record.folded,
        result: result.into(),
        events,
        revision,
        reason,
    }
}

async fn list(
    State(state): State<AppState>,
    Path((ty, key)): Path<(String, String)>,
    Query(query): Query<CommandQuery>,
) -> Result<Json<CommandListResponse>, ApiError> {
    state.runtime.aggregates().get(&ty)?;
    check_key(&key)?;
    let limit = query.limit.unwrap_or(COMMAND_PAGE_DEFAULT);
    if limit == 0 || limit > COMMAND_PAGE_MAX {
        return Err(ApiError::bad_request("invalid_query", format!("limit {limit}: give 1 to {COMMAND_PAGE_MAX}")));
    }
    let store = state.runtime.store().clone();
    let stream = format!("{ty}/{key}");
    let (records, one) = blocking(move || match &query.idempotency_key {
        Some(idem) => store.command_record(&ty, &key, idem).map(|r| (r.into_iter().collect::<Vec<_>>(), true)),
        None => store.command_page(&ty, &key, query.from.unwrap_or(0), limit).map(|r| (r, false)),
    })
    .await?;
    if one && records.is_empty() {
        return Err(ApiError::not_found(format!("no command of {stream} has this idempotency key")));
    }
    let next = (!one && records.len() == limit).then(|| records.last().map_or(0, |r| r.ordinal + 1));
    Ok(Json(CommandListResponse { stream, commands: records.into_iter().map(entry).collect(), next }))
}

/// `at`: a revision (digits) or an RFC 3339 time.
fn parse_at(text: Option<&str>) -> Result<At, ApiError> {
    let Some(text) = text else { return Ok(At::Latest) };
    if let Ok(revision) = text.parse::<u64>() {
        return Ok(At::Revision(revision));
    }
    let time = time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339).map_err(|e| {
        ApiError::bad_request("invalid_query", format!("at {text:?}: give a revision or an RFC 3339 time ({e})"))
    })?;
    let nanos = i64::try_from(time.unix_timestamp_nanos())
        .map_err(|_| ApiError::bad_request("invalid_query", format!("at {text:?} is out of range")))?;
    Ok(At::Time(nanos))
}

async fn state_at(
    State(state): State<AppState>,
    Path((ty, key)): Path<(String, String)>,
    Query(query): Query<StateQuery>,
) -> Result<Json<EntityStateResponse>, ApiError> {
    state.runtime.aggregates().get(&ty)?;
    check_key(&key)?;
    let at = parse_at(query.at.as_deref())?;
    let rt = Arc::clone(&state.runtime);
    let stream = format!("{ty}/{key}");
    let folded = blocking(move || rt.aggregates().state_at(rt.store(), &ty, &key, at)).await?;
    let state = match &folded.state {
        None => serde_json::Value::Null,
        Some(bytes) => serde_json::from_slice(bytes).map_err(|e| {
            ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "state_not_json",
                format!("the aggregate's state is not JSON ({e}): it was not built with the SDK's aggregate"),
            )
        })?,
    };
    Ok(Json(EntityStateResponse { stream, revision: folded.revision, current_revision: folded.current, state }))
}

async fn deploy(
    State(state): State<AppState>,
    Path(ty): Path<String>,
    Body(body): Body,
) -> Result<Json<serde_json::Value>, ApiError> {
    let rt = Arc::clone(&state.runtime);
    let answer = blocking(move || {
        let (sha, previous) = rt.aggregates().deploy(rt.engine(), rt.store(), &ty, body.to_vec(), "http")?;
        tracing::info!(entity_type = %ty, sha256 = %sha, previous = %previous, "aggregate deployed");
        Ok::<_, AggregateError>(serde_json::json!({ "entity_type": ty, "sha256": sha, "previous": previous }))
    })
    .await?;
    Ok(Json(answer))
}
