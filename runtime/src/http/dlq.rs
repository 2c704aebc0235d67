//! The dead-letter queue: list and show (open), redrive and purge (admin).

use std::sync::Arc;

use axum::extract::State;
use axum::routing::{get, post};
use axum::{Json, Router};

use super::extract::{OptionalJsonBody, Path, Query};
use super::models::{DlqEntryDetail, DlqFilterRequest, DlqListResponse, PurgeResponse, RedriveResponse};
use super::{ApiError, AppState, auth, blocking};
use crate::names::SubscriptionName;
use crate::store::DlqFilter;

pub(super) fn router(state: &AppState) -> Router<AppState> {
    let admin = Router::new().route("/v1/dlq/redrive", post(redrive)).route("/v1/dlq/purge", post(purge));
    Router::new()
        .route("/v1/dlq", get(list))
        .route("/v1/dlq/{pipeline}/{handler}/{seq}", get(show))
        .merge(auth::admin(admin, state))
}

async fn list(
    State(state): State<AppState>,
    Query(filter): Query<DlqFilterRequest>,
) -> Result<Json<DlqListResponse>, ApiError> {
    let rt = Arc::clone(&state.runtime);
    let entries = blocking(move || rt.dlq(&(&filter).into())).await?;
    Ok(Json(DlqListResponse { entries: entries.iter().map(Into::into).collect() }))
}

async fn show(
    State(state): State<AppState>,
    Path((pipeline, handler, seq)): Path<(String, String, u64)>,
) -> Result<Json<DlqEntryDetail>, ApiError> {
    let rt = Arc::clone(&state.runtime);
    let filter =
        DlqFilter { subscription: Some(SubscriptionName::new(&pipeline, &handler).into()), code: None, seq: Some(seq) };
    let entries = blocking(move || rt.dlq(&filter)).await?;
    match entries.first() {
        Some(entry) => Ok(Json(entry.into())),
        None => Err(ApiError::not_found(format!("no DLQ entry {pipeline}/{handler} #{seq}"))),
    }
}

/// The filter of a redrive or purge: at least one field, or `"all": true`
/// (an empty body asks for neither, so it is refused too).
fn required(filter: DlqFilterRequest) -> Result<DlqFilter, ApiError> {
    if filter.is_empty() && !filter.all {
        return Err(ApiError::bad_request(
            "filter_required",
            "give `subscription`, `code` and/or `seq`, or `\"all\": true` to act on every entry",
        ));
    }
    Ok((&filter).into())
}

async fn redrive(
    State(state): State<AppState>,
    OptionalJsonBody(filter): OptionalJsonBody<DlqFilterRequest>,
) -> Result<Json<RedriveResponse>, ApiError> {
    let filter = required(filter)?;
    let rt = Arc::clone(&state.runtime);
    Ok(Json(blocking(move || rt.redrive(&filter)).await?.into()))
}

async fn purge(
    State(state): State<AppState>,
    OptionalJsonBody(filter): OptionalJsonBody<DlqFilterRequest>,
) -> Result<Json<PurgeResponse>, ApiError> {
    let filter = required(filter)?;
    let rt = Arc::clone(&state.runtime);
    let purged = blocking(move || rt.purge(filter)).await?;
    Ok(Json(PurgeResponse { purged }))
}
