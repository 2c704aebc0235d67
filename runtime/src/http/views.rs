//! `GET /v1/views/{view}/{key}` and `GET /v1/views/{view}`: the read models
//! of CQRS, each a projection's state, with the position it reflects and
//! read-your-writes (`min_position` + `wait`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{Map, Value};
use tokio::sync::Semaphore;

use super::auth::{self, Accept, Rule};
use super::extract::{Path, Query};
use super::models::{ViewItem, ViewListResponse, ViewResponse};
use super::{ApiError, AppState, blocking};
use crate::config::Scope;
use crate::runtime::{Runtime, ViewEntry, ViewError};

/// Reads waiting for a view to reach a position at once; more are `503`.
pub(crate) const MAX_WAITING_VIEW_READS: usize = 256;

#[derive(Clone)]
struct ViewState {
    runtime: Arc<Runtime>,
    waiting: Arc<Semaphore>,
}

pub(super) fn router(state: &AppState) -> Router<AppState> {
    let views =
        ViewState { runtime: Arc::clone(&state.runtime), waiting: Arc::new(Semaphore::new(MAX_WAITING_VIEW_READS)) };
    let routes =
        Router::new().route("/v1/views/{view}", get(list)).route("/v1/views/{view}/{key}", get(one)).with_state(views);
    auth::guard(routes, state, Rule { read: Some(Scope::Read), write: Some(Scope::Admin), body: Accept::Json })
}

impl From<ViewError> for ApiError {
    fn from(e: ViewError) -> Self {
        let status = match e {
            ViewError::NotFound(_) | ViewError::KeyNotFound { .. } => StatusCode::NOT_FOUND,
            _ => StatusCode::SERVICE_UNAVAILABLE,
        };
        Self::new(status, e.code(), e.to_string())
    }
}

#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct OneQuery {
    min_position: Option<u64>,
    wait: Option<String>,
}

#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    #[serde(default)]
    prefix: String,
    after: Option<String>,
    limit: Option<usize>,
    min_position: Option<u64>,
    wait: Option<String>,
}

/// Read-your-writes: wait until `view` has passed `min_position` (its
/// position is above it), polling the committed position, for at most
/// `wait`; then `503` with `Retry-After`.
async fn reach(views: &ViewState, view: &str, min_position: Option<u64>, wait: Duration) -> Result<(), ApiError> {
    let Some(min) = min_position else { return Ok(()) };
    let position = |rt: Arc<Runtime>, view: String| blocking(move || rt.view_position(&view));
    if position(Arc::clone(&views.runtime), view.to_owned()).await? > min {
        return Ok(());
    }
    let not_yet = |at: u64| {
        ApiError::overloaded(
            format!("view {view:?} is at position {at}, not past {min} yet; try again (or give a longer `wait`)"),
            1,
        )
    };
    if wait.is_zero() {
        let at = position(Arc::clone(&views.runtime), view.to_owned()).await?;
        return Err(not_yet(at));
    }
    let _permit = Arc::clone(&views.waiting).try_acquire_owned().map_err(|_| {
        ApiError::overloaded(format!("{MAX_WAITING_VIEW_READS} view reads are waiting already; try again"), 1)
    })?;
    let deadline = Instant::now() + wait;
    // The position moves with the subscription's commits (a few per
    // second to thousands): a short poll, growing, is cheap and prompt.
    let mut pause = Duration::from_millis(2);
    loop {
        tokio::time::sleep(pause.min(deadline.saturating_duration_since(Instant::now()))).await;
        let at = position(Arc::clone(&views.runtime), view.to_owned()).await?;
        if at > min {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(not_yet(at));
        }
        pause = (pause * 2).min(Duration::from_millis(25));
    }
}

/// A key or value as JSON: its JSON when it is JSON, else its text, else
/// base64 in an object.
fn shown(bytes: &[u8]) -> Value {
    use base64::Engine as _;
    if let Ok(value) = serde_json::from_slice::<Value>(bytes) {
        return value;
    }
    match std::str::from_utf8(bytes) {
        Ok(text) => Value::String(text.to_owned()),
        Err(_) => serde_json::json!({ "base64": base64::engine::general_purpose::STANDARD.encode(bytes) }),
    }
}

fn object(entry: &ViewEntry) -> Map<String, Value> {
    entry.entries.iter().map(|(k, v)| (String::from_utf8_lossy(k).into_owned(), shown(v))).collect()
}

async fn one(
    State(views): State<ViewState>,
    Path((view, key)): Path<(String, String)>,
    Query(q): Query<OneQuery>,
) -> Result<Json<ViewResponse>, ApiError> {
    reach(&views, &view, q.min_position, super::log::wait(q.wait.as_deref())?).await?;
    let rt = Arc::clone(&views.runtime);
    let (name, k) = (view.clone(), key.clone());
    let answer = blocking(move || rt.view_get(&name, &k)).await?;
    Ok(Json(ViewResponse {
        view,
        key,
        value: object(&answer.value),
        position: answer.position,
        truncated: answer.value.truncated,
    }))
}

async fn list(
    State(views): State<ViewState>,
    Path(view): Path<String>,
    Query(q): Query<ListQuery>,
) -> Result<Json<ViewListResponse>, ApiError> {
    reach(&views, &view, q.min_position, super::log::wait(q.wait.as_deref())?).await?;
    let rt = Arc::clone(&views.runtime);
    let name = view.clone();
    let limit = q.limit.unwrap_or(100);
    let (prefix, after) = (q.prefix.clone(), q.after.clone());
    let answer = blocking(move || rt.view_list(&name, &prefix, after.as_deref(), limit)).await?;
    let (items, more) = answer.value;
    let next = if more { items.last().map(|i| i.key.clone()) } else { None };
    let items =
        items.iter().map(|i| ViewItem { key: i.key.clone(), value: object(i), truncated: i.truncated }).collect();
    Ok(Json(ViewListResponse { view, items, position: answer.position, next }))
}
