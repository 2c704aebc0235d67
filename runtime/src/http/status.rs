//! What the runtime says about itself: `/health`, `/ready`, `/metrics`,
//! `/v1/status`, and the dashboard page at `/`.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};

use super::auth::{self, Accept, Rule};
use super::models::{HealthResponse, ReadinessResponse, StatusResponse};
use super::{ApiError, AppState, blocking};
use crate::config::Scope;

/// `/health` and `/ready` open to anyone (probes); the page behind the
/// `Host` check; the rest need `read` off loopback.
pub(super) fn router(state: &AppState) -> Router<AppState> {
    let page = Router::new().route("/", get(dashboard));
    let reads = Router::new()
        .route("/metrics", get(metrics))
        .route("/v1/status", get(status))
        .route("/v1/cluster", get(cluster));
    Router::new()
        .route("/health", get(health))
        .route("/ready", get(ready))
        .merge(auth::guard(page, state, Rule { read: None, write: None, body: Accept::Any }))
        .merge(auth::guard(reads, state, Rule { read: Some(Scope::Read), write: None, body: Accept::Any }))
}

/// The operator's dashboard: one self-contained page (inline CSS and JS, no
/// CDN) compiled into the binary, so it works offline and always matches the
/// API it talks to.
const DASHBOARD_HTML: &str = include_str!("../../assets/dashboard.html");

/// The page's Content-Security-Policy: its one inline script by hash, its
/// inline styles, requests to this server only, no framing, no forms, no
/// plugins.
fn content_security_policy() -> &'static str {
    static CSP: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    CSP.get_or_init(|| {
        use base64::Engine as _;
        use sha2::Digest as _;
        let script = DASHBOARD_HTML
            .split_once("<script>")
            .and_then(|(_, rest)| rest.split_once("</script>"))
            .map_or("", |(script, _)| script);
        let hash = base64::engine::general_purpose::STANDARD.encode(sha2::Sha256::digest(script.as_bytes()));
        format!(
            "default-src 'none'; script-src 'sha256-{hash}'; style-src 'unsafe-inline'; connect-src 'self'; \
             img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
        )
    })
}

async fn dashboard() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
            (header::CONTENT_SECURITY_POLICY, content_security_policy()),
            (header::X_FRAME_OPTIONS, "DENY"),
            (header::REFERRER_POLICY, "no-referrer"),
        ],
        DASHBOARD_HTML,
    )
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
    let (subscriptions, head, consumers) =
        blocking(move || rt.status().and_then(|s| Ok((s, rt.store().head(), rt.consumers().list()?)))).await?;
    let sources = state.runtime.sources();
    Ok(Json(StatusResponse {
        head,
        subscriptions: subscriptions.into_iter().map(Into::into).collect(),
        consumers,
        sources,
    }))
}

/// `GET /v1/cluster`: nodes, partition owners, positions and lag, as this
/// node last saw them (`404 no_cluster` without `[cluster]`).
async fn cluster(State(state): State<AppState>) -> Result<Json<crate::cluster::ClusterStatus>, ApiError> {
    state.runtime.cluster_status().map(Json).ok_or_else(|| {
        ApiError::new(
            axum::http::StatusCode::NOT_FOUND,
            "no_cluster",
            "this node runs alone: its configuration has no [cluster]".to_owned(),
        )
    })
}
