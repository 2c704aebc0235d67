//! Sagas: list and show (read), cancel, resume and skip (admin, as the
//! DLQ's redrive and purge). docs/sagas.md has the shapes.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

use super::extract::{Path, Query};
use super::{ApiError, AppState, auth, blocking};
use crate::runtime::SagaError;
use crate::saga::{AdminOp, Instance, SagaStatus};

/// Default instances per page.
const PAGE_DEFAULT: usize = 100;

pub(super) fn router(state: &AppState) -> Router<AppState> {
    let admin = Router::new().route("/v1/sagas/{id}/{action}", post(action));
    Router::new().route("/v1/sagas", get(list)).route("/v1/sagas/{id}", get(show)).merge(auth::admin(admin, state))
}

impl From<SagaError> for ApiError {
    fn from(e: SagaError) -> Self {
        let status = match &e {
            SagaError::UnknownSaga(_) | SagaError::NotFound(_) => StatusCode::NOT_FOUND,
            SagaError::Conflict(_) => StatusCode::CONFLICT,
            SagaError::BadRequest(_) => StatusCode::BAD_REQUEST,
            SagaError::Store(store) => return ApiError::from(store.clone()),
        };
        Self::new(status, e.code(), e.to_string())
    }
}

/// `GET /v1/sagas` query.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    saga: Option<String>,
    status: Option<String>,
    after: Option<String>,
    limit: Option<usize>,
}

/// One line of the list: the instance without its data and timeline.
#[derive(Debug, Serialize)]
struct Summary {
    saga: String,
    id: String,
    status: SagaStatus,
    step: String,
    attempt: u32,
    completed: Vec<String>,
    compensated: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    cause: Option<String>,
    started_ms: u64,
    updated_ms: u64,
}

impl From<Instance> for Summary {
    fn from(i: Instance) -> Self {
        Self {
            saga: i.saga,
            id: i.id,
            status: i.status,
            step: i.step_name,
            attempt: i.attempt,
            completed: i.completed,
            compensated: i.compensated,
            cause: i.cause,
            started_ms: i.started_ms,
            updated_ms: i.updated_ms,
        }
    }
}

#[derive(Debug, Serialize)]
struct ListResponse {
    sagas: Vec<Summary>,
    /// The `after` of the next page, when there may be one.
    next: Option<String>,
}

async fn list(State(state): State<AppState>, Query(q): Query<ListQuery>) -> Result<Json<ListResponse>, ApiError> {
    let limit = q.limit.unwrap_or(PAGE_DEFAULT);
    if limit == 0 || limit > crate::runtime::SAGA_PAGE_MAX {
        return Err(ApiError::bad_request(
            "invalid_query",
            format!("`limit` is 1 to {}, not {limit}", crate::runtime::SAGA_PAGE_MAX),
        ));
    }
    let status = match q.status.as_deref() {
        Some(text) => Some(SagaStatus::parse(text).ok_or_else(|| {
            let all: Vec<&str> = SagaStatus::ALL.iter().map(|s| s.as_str()).collect();
            ApiError::bad_request("invalid_query", format!("`status` is one of {}, not {text:?}", all.join(", ")))
        })?),
        None => None,
    };
    let rt = Arc::clone(&state.runtime);
    let page = blocking(move || rt.saga_list(q.saga.as_deref(), status, q.after.as_deref(), limit)).await?;
    Ok(Json(ListResponse { sagas: page.sagas.into_iter().map(Summary::from).collect(), next: page.next }))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ShowQuery {
    saga: Option<String>,
}

async fn show(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Query(q): Query<ShowQuery>,
) -> Result<Json<Instance>, ApiError> {
    let rt = Arc::clone(&state.runtime);
    Ok(Json(blocking(move || rt.saga_get(q.saga.as_deref(), &id)).await?))
}

#[derive(Debug, Serialize)]
struct ActionResponse {
    /// Whether the coordinator took the action within the wait (else it
    /// is queued and will be).
    taken: bool,
    saga: Instance,
}

async fn action(
    State(state): State<AppState>,
    Path((id, action)): Path<(String, String)>,
    Query(q): Query<ShowQuery>,
) -> Result<(StatusCode, Json<ActionResponse>), ApiError> {
    let op = AdminOp::parse(&action).ok_or_else(|| {
        ApiError::not_found(format!("no action {action:?}: POST /v1/sagas/{{id}}/cancel, resume or skip"))
    })?;
    let rt = Arc::clone(&state.runtime);
    let report = blocking(move || rt.saga_action(q.saga.as_deref(), &id, op)).await?;
    let status = if report.taken { StatusCode::OK } else { StatusCode::ACCEPTED };
    Ok((status, Json(ActionResponse { taken: report.taken, saga: report.instance })))
}
