//! `GET /v1/subscriptions/{pipeline}/{handler}/timers`: a subscription's
//! pending durable timers, a bounded page by key (`after`, `limit` up to
//! [`TIMERS_PAGE_MAX`]).

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;

use super::extract::Path;
use super::models::{TimerInfo, TimersResponse};
use super::{ApiError, AppState, blocking};
use crate::names::SubscriptionName;
use crate::runtime::TIMERS_PAGE_MAX;

/// The query of a timers page.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct TimersQuery {
    /// Continue after this key.
    after: Option<String>,
    /// At most this many (100 by default).
    limit: Option<usize>,
}

pub(super) async fn list(
    State(state): State<AppState>,
    Path((pipeline, handler)): Path<(String, String)>,
    query: Result<axum::extract::Query<TimersQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<TimersResponse>, ApiError> {
    let axum::extract::Query(q) =
        query.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "bad_query", e.body_text()))?;
    let limit = q.limit.unwrap_or(100).clamp(1, TIMERS_PAGE_MAX);
    let name = SubscriptionName::new(&pipeline, &handler).to_string();
    let rt = Arc::clone(&state.runtime);
    let subscription = name.clone();
    let (pending, page) = blocking(move || {
        let pending = rt.timers_pending()?.get(&subscription).copied().unwrap_or(0);
        rt.timers(&subscription, q.after.as_deref(), limit).map(|page| (pending, page))
    })
    .await?;
    let next = if page.len() == limit { page.last().map(|t| t.key.clone()) } else { None };
    let timers = page
        .into_iter()
        .map(|t| TimerInfo {
            fire_at: crate::envelope::format_time(
                i64::try_from(t.fire_at_ms).unwrap_or(i64::MAX).saturating_mul(1_000_000),
            ),
            key: t.key,
            fire_at_ms: t.fire_at_ms,
            topic: t.event.topic,
            event_id: t.event.id.to_string(),
            causation_id: t.event.causation_id.map(|c| c.to_string()),
            correlation_id: t.event.correlation_id.map(|c| c.to_string()),
        })
        .collect();
    Ok(Json(TimersResponse { subscription: name, pending, timers, next }))
}
