//! Plugins: each handler's active version and history (open); deploy, by
//! `PUT` of the module or `POST …/deploy` with samples, and rollback
//! (admin). A deploy's or rollback's answer is `200` with what it did (its
//! `changed` is false when the version was already active).

use std::sync::Arc;

use axum::extract::State;
use axum::routing::{get, post, put};
use axum::{Json, Router};
use base64::Engine as _;

use super::auth::{self, Accept, Rule};
use super::extract::{Body, JsonBody, OptionalJsonBody, Path, Query};
use super::models::{
    DeployRequest, DeployResponse, DryRunRequest, HandlerInfo, HistoryEntry, HistoryResponse, PluginsResponse,
    PutModuleQuery, RollbackRequest,
};
use super::{ApiError, AppState, blocking};
use crate::config::Scope;
use crate::names::SubscriptionName;

/// Reads need `read` off loopback; deploys and rollbacks `admin`, a deploy
/// of the module itself with its media type, the others with JSON.
pub(super) fn router(state: &AppState) -> Router<AppState> {
    let reads = Router::new().route("/v1/plugins", get(list)).route("/v1/plugins/{pipeline}/{handler}", get(history));
    let module = Router::new().route("/v1/plugins/{pipeline}/{handler}", put(put_module));
    let json = Router::new()
        .route("/v1/plugins/{pipeline}/{handler}/deploy", post(deploy))
        .route("/v1/plugins/{pipeline}/{handler}/rollback", post(rollback))
        .route("/v1/plugins/{pipeline}/{handler}/dry-run", post(dry_run));
    let admin = |body| Rule { read: Some(Scope::Read), write: Some(Scope::Admin), body };
    Router::new()
        .merge(auth::guard(reads, state, admin(Accept::Any)))
        .merge(auth::guard(module, state, admin(Accept::Module)))
        .merge(auth::guard(json, state, admin(Accept::Json)))
}

/// Who is recorded in the history when the request does not say.
const DEFAULT_ACTOR: &str = "http";

async fn list(State(state): State<AppState>) -> Result<Json<PluginsResponse>, ApiError> {
    let rt = Arc::clone(&state.runtime);
    let list = blocking(move || rt.plugins()).await?;
    let handlers = list
        .into_iter()
        .map(|(handler, active, versions)| HandlerInfo { handler, active: active.map(Into::into), versions })
        .collect();
    Ok(Json(PluginsResponse { handlers }))
}

async fn history(
    State(state): State<AppState>,
    Path((pipeline, handler)): Path<(String, String)>,
) -> Result<Json<HistoryResponse>, ApiError> {
    let rt = Arc::clone(&state.runtime);
    let history = blocking(move || rt.history(SubscriptionName::new(&pipeline, &handler).as_str())).await?;
    let history =
        history.into_iter().map(|(version, record)| HistoryEntry { version, record: record.into() }).collect();
    Ok(Json(HistoryResponse { history }))
}

/// Deploy the body, a module, with no samples.
async fn put_module(
    State(state): State<AppState>,
    Path((pipeline, handler)): Path<(String, String)>,
    Query(query): Query<PutModuleQuery>,
    Body(module): Body,
) -> Result<Json<DeployResponse>, ApiError> {
    let rt = Arc::clone(&state.runtime);
    let by = query.by.unwrap_or_else(|| DEFAULT_ACTOR.into());
    let report =
        blocking(move || rt.deploy(SubscriptionName::new(&pipeline, &handler).as_str(), module.to_vec(), &by, &[]))
            .await?;
    Ok(Json(report.into()))
}

/// Deploy a base64 module after its samples pass.
async fn deploy(
    State(state): State<AppState>,
    Path((pipeline, handler)): Path<(String, String)>,
    JsonBody(request): JsonBody<DeployRequest>,
) -> Result<Json<DeployResponse>, ApiError> {
    let module = base64::engine::general_purpose::STANDARD
        .decode(request.module_base64.as_bytes())
        .map_err(|e| ApiError::bad_request("invalid_base64", format!("module_base64: {e}")))?;
    let rt = Arc::clone(&state.runtime);
    let tests = crate::runtime::parse_test_cases(rt.ids(), &request.test_events)
        .map_err(|e| ApiError::bad_request("invalid_test_event", e))?;
    let by = request.by.unwrap_or_else(|| DEFAULT_ACTOR.into());
    let report =
        blocking(move || rt.deploy(SubscriptionName::new(&pipeline, &handler).as_str(), module, &by, &tests)).await?;
    Ok(Json(report.into()))
}

async fn rollback(
    State(state): State<AppState>,
    Path((pipeline, handler)): Path<(String, String)>,
    OptionalJsonBody(request): OptionalJsonBody<RollbackRequest>,
) -> Result<Json<DeployResponse>, ApiError> {
    let rt = Arc::clone(&state.runtime);
    let by = request.by.unwrap_or_else(|| DEFAULT_ACTOR.into());
    let report =
        blocking(move || rt.rollback(SubscriptionName::new(&pipeline, &handler).as_str(), request.to.as_deref(), &by))
            .await?;
    Ok(Json(report.into()))
}

/// Run a candidate module over the log and compare its outputs with the
/// recorded ones; nothing is written (`weir plugin deploy --replay-from`).
async fn dry_run(
    State(state): State<AppState>,
    Path((pipeline, handler)): Path<(String, String)>,
    JsonBody(request): JsonBody<DryRunRequest>,
) -> Result<Json<crate::runtime::DryRunReport>, ApiError> {
    let module = base64::engine::general_purpose::STANDARD
        .decode(request.module_base64.as_bytes())
        .map_err(|e| ApiError::bad_request("invalid_base64", format!("module_base64: {e}")))?;
    let from = match request.from.as_deref() {
        None => crate::store::StartPosition::Beginning,
        Some(text) => crate::store::StartPosition::parse(text).map_err(|e| ApiError::bad_request("invalid_from", e))?,
    };
    let limit = request.limit.unwrap_or(crate::runtime::DRY_RUN_DEFAULT_EVENTS);
    let rt = Arc::clone(&state.runtime);
    let report = blocking(move || {
        rt.dry_run(SubscriptionName::new(&pipeline, &handler).as_str(), &module, from, limit).map_err(|e| match e {
            crate::runtime::DryRunError::Deploy(e) => ApiError::from(e),
            crate::runtime::DryRunError::Store(e) => ApiError::from(e),
            e @ crate::runtime::DryRunError::Busy => {
                ApiError::new(axum::http::StatusCode::CONFLICT, e.code(), e.to_string())
            }
            e @ crate::runtime::DryRunError::Limit(_) => ApiError::bad_request(e.code(), e.to_string()),
        })
    })
    .await?;
    Ok(Json(report))
}
