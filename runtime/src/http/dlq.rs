//! The dead-letter queue: list and show (open), redrive and purge (admin).

use std::sync::Arc;

use axum::extract::State;
use axum::routing::{get, post};
use axum::{Json, Router};

use super::extract::{OptionalJsonBody, Path, Query};
use super::models::{
    DLQ_PAGE_DEFAULT, DLQ_PAGE_MAX, DlqEntryDetail, DlqFilterRequest, DlqListQuery, DlqListResponse, PurgeResponse,
    RedriveResponse,
};
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
    Query(query): Query<DlqListQuery>,
) -> Result<Json<DlqListResponse>, ApiError> {
    let limit = query.limit.unwrap_or(DLQ_PAGE_DEFAULT);
    if limit == 0 || limit > DLQ_PAGE_MAX {
        return Err(ApiError::bad_request("invalid_query", format!("`limit` is 1 to {DLQ_PAGE_MAX}, not {limit}")));
    }
    let after = match &query.after {
        Some(after) => Some(parse_after(after)?),
        None => None,
    };
    let filter = DlqFilter { subscription: query.subscription, code: query.code, seq: query.seq };
    let rt = Arc::clone(&state.runtime);
    let (entries, next) = blocking(move || {
        let after = after.as_ref().map(|(sub, seq)| (sub.as_str(), *seq));
        rt.dlq_page(&filter, after, limit)
    })
    .await?;
    Ok(Json(DlqListResponse {
        entries: entries.iter().map(Into::into).collect(),
        next: next.map(|(sub, seq)| format!("{sub}/{seq}")),
    }))
}

/// `after` is `<pipeline>/<handler>/<seq>`: the `next` of a page.
fn parse_after(after: &str) -> Result<(String, u64), ApiError> {
    let bad = || {
        ApiError::bad_request(
            "invalid_query",
            format!("`after` is the `next` of the previous page (<pipeline>/<handler>/<seq>), not {after:?}"),
        )
    };
    let (sub, seq) = after.rsplit_once('/').ok_or_else(bad)?;
    let name = SubscriptionName::parse(sub).map_err(|_| bad())?;
    Ok((name.into(), seq.parse().map_err(|_| bad())?))
}

async fn show(
    State(state): State<AppState>,
    Path((pipeline, handler, seq)): Path<(String, String, u64)>,
) -> Result<Json<DlqEntryDetail>, ApiError> {
    let rt = Arc::clone(&state.runtime);
    let subscription: String = SubscriptionName::new(&pipeline, &handler).into();
    // A point lookup: only this entry is read and decoded.
    let entry = blocking(move || rt.dlq_entry(&subscription, seq)).await?;
    match entry {
        Some(entry) => Ok(Json((&entry).into())),
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
