//! What the runtime says about itself: `/health`, `/ready`, `/metrics`,
//! `/v1/status`, and the dashboard page at `/`.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};

use super::models::{HealthResponse, ReadinessResponse, StatusResponse};
use super::{ApiError, AppState, blocking};

pub(super) fn router() -> Router<AppState> {
    Router::new()
        .route("/", get(dashboard))
        .route("/health", get(health))
        .route("/ready", get(ready))
        .route("/metrics", get(metrics))
        .route("/v1/status", get(status))
}

/// The operator's dashboard: one self-contained page (inline CSS and JS, no
/// CDN) compiled into the binary, so it works offline and always matches the
/// API it talks to.
const DASHBOARD_HTML: &str = include_str!("../../assets/dashboard.html");

async fn dashboard() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/html; charset=utf-8"), (header::CACHE_CONTROL, "no-cache")], DASHBOARD_HTML)
}

async fn health() -> Json<HealthResponse> {
    Json(HealthResponse::ok())
}

/// Readiness: 200 for `ready` and `degraded` (it still serves; the reasons
/// say what to look at), 503 for `not_ready`.
async fn ready(State(state): State<AppState>) -> Result<(StatusCode, Json<ReadinessResponse>), ApiError> {
    let rt = Arc::clone(&state.runtime);
    let readiness = tokio::task::spawn_blocking(move || rt.readiness()).await?;
    let code = if readiness.status == "not_ready" { StatusCode::SERVICE_UNAVAILABLE } else { StatusCode::OK };
    Ok((code, Json(readiness.into())))
}

async fn metrics(State(state): State<AppState>) -> Result<impl IntoResponse, ApiError> {
    let rt = Arc::clone(&state.runtime);
    let text = blocking(move || rt.metrics()).await?;
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text))
}

async fn status(State(state): State<AppState>) -> Result<Json<StatusResponse>, ApiError> {
    let rt = Arc::clone(&state.runtime);
    let (subscriptions, head) = blocking(move || rt.status().map(|s| (s, rt.store().head()))).await?;
    Ok(Json(StatusResponse { head, subscriptions: subscriptions.into_iter().map(Into::into).collect() }))
}
