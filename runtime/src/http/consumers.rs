//! Durable consumers: `GET /v1/consumers[/{name}]` and the fetch and ack
//! of deliveries (`read` off loopback); `PUT`, `DELETE` and reset
//! (`admin`).

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};

use super::auth::{self, Accept, Rule};
use super::extract::{JsonBody, OptionalJsonBody, Path};
use super::models::{
    AckItem, AckRequest, AckResponse, ConsumerInfo, ConsumerListResponse, ConsumerPutResponse, ConsumerRequest,
    FetchRequest, FetchResponse, ResetRequest,
};
use super::{ApiError, AppState, blocking};
use crate::config::Scope;
use crate::consumer::ConsumerError;

pub(super) fn router(state: &AppState) -> Router<AppState> {
    let admin = Router::new()
        .route("/v1/consumers/{name}", axum::routing::put(put).delete(delete))
        .route("/v1/consumers/{name}/reset", post(reset));
    let reads = Router::new()
        .route("/v1/consumers", get(list))
        .route("/v1/consumers/{name}", get(show))
        .route("/v1/consumers/{name}/fetch", post(fetch))
        .route("/v1/consumers/{name}/ack", post(ack));
    Router::new()
        .merge(auth::guard(
            admin,
            state,
            Rule { read: Some(Scope::Admin), write: Some(Scope::Admin), body: Accept::Json },
        ))
        .merge(auth::guard(
            reads,
            state,
            Rule { read: Some(Scope::Read), write: Some(Scope::Read), body: Accept::Json },
        ))
}

impl From<ConsumerError> for ApiError {
    fn from(e: ConsumerError) -> Self {
        match e {
            ConsumerError::Store(e) => e.into(),
            ConsumerError::Busy { .. } => Self::overloaded(e.to_string(), 1),
            ConsumerError::NotFound(_) => Self::new(StatusCode::NOT_FOUND, e.code(), e.to_string()),
            ConsumerError::TooMany { .. } | ConsumerError::Stale(_) => {
                Self::new(StatusCode::CONFLICT, e.code(), e.to_string())
            }
            _ => Self::bad_request(e.code(), e.to_string()),
        }
    }
}

async fn list(State(state): State<AppState>) -> Result<Json<ConsumerListResponse>, ApiError> {
    let rt = Arc::clone(&state.runtime);
    Ok(Json(ConsumerListResponse { consumers: blocking(move || rt.consumers().list()).await? }))
}

async fn show(State(state): State<AppState>, Path(name): Path<String>) -> Result<Json<ConsumerInfo>, ApiError> {
    let rt = Arc::clone(&state.runtime);
    Ok(Json(blocking(move || rt.consumers().get(&name)).await?))
}

async fn put(
    State(state): State<AppState>,
    Path(name): Path<String>,
    JsonBody(request): JsonBody<ConsumerRequest>,
) -> Result<(StatusCode, Json<ConsumerPutResponse>), ApiError> {
    let (created, consumer) = state.runtime.consumers().put(&name, &request).await?;
    let status = if created { StatusCode::CREATED } else { StatusCode::OK };
    Ok((status, Json(ConsumerPutResponse { created, consumer })))
}

async fn delete(State(state): State<AppState>, Path(name): Path<String>) -> Result<StatusCode, ApiError> {
    state.runtime.consumers().delete(&name).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn reset(
    State(state): State<AppState>,
    Path(name): Path<String>,
    JsonBody(request): JsonBody<ResetRequest>,
) -> Result<Json<ConsumerInfo>, ApiError> {
    let consumers = state.runtime.consumers();
    consumers.reset(&name, &request.from).await?;
    let rt = Arc::clone(&state.runtime);
    Ok(Json(blocking(move || rt.consumers().get(&name)).await?))
}

async fn fetch(
    State(state): State<AppState>,
    Path(name): Path<String>,
    stopping: Option<axum::Extension<super::serve::Stopping>>,
    OptionalJsonBody(request): OptionalJsonBody<FetchRequest>,
) -> Result<Json<FetchResponse>, ApiError> {
    let stop = stopping.map(|axum::Extension(s)| s.0);
    let deliveries = state.runtime.consumers().fetch(&name, request.max, request.wait.as_deref(), stop).await?;
    Ok(Json(FetchResponse { deliveries }))
}

/// One ack (`token`): `200`, or `409 stale_ack` when refused. A batch
/// (`acks`): `200` with each outcome.
async fn ack(
    State(state): State<AppState>,
    Path(name): Path<String>,
    JsonBody(request): JsonBody<AckRequest>,
) -> Result<Json<AckResponse>, ApiError> {
    let single = request.token.is_some();
    let items = match (request.token, request.acks.is_empty()) {
        (Some(token), true) => vec![AckItem {
            token,
            action: request.action.unwrap_or_default(),
            delay: request.delay,
            reason: request.reason,
        }],
        (None, false) if request.action.is_none() && request.delay.is_none() && request.reason.is_none() => {
            request.acks
        }
        _ => {
            return Err(ApiError::bad_request(
                "invalid_ack",
                "give either `token` (with `action`, `delay`, `reason`) or `acks`, a list of them",
            ));
        }
    };
    let results = state.runtime.consumers().ack(&name, items).await?;
    if single
        && let Some(refused) =
            results.first().filter(|r| !matches!(r.outcome.as_str(), "acked" | "naked" | "dead_lettered"))
    {
        let why = match refused.outcome.as_str() {
            "expired" => "its ack wait has passed; the event will be delivered again",
            "superseded" => "the event was delivered again since, or the token was not issued",
            "unknown" => "nothing is pending at that position (acked, dead-lettered or reset already)",
            _ => "the token is not one this server issues (<seq>.<attempt>.<32 hex digits>)",
        };
        let code = if refused.outcome == "invalid_token" { "invalid_token" } else { "stale_ack" };
        let status = if code == "invalid_token" { StatusCode::BAD_REQUEST } else { StatusCode::CONFLICT };
        return Err(ApiError::new(status, code, format!("ack refused ({}): {why}", refused.outcome)));
    }
    Ok(Json(AckResponse { results }))
}
