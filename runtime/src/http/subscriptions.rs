//! Subscriptions as the store holds them: the list (configured and
//! orphaned, with what each holds and whether it holds retention back), and
//! deleting an orphan's data (admin).

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{delete, get, post};
use axum::{Json, Router};

use super::extract::Path;
use super::models::{
    StateEntryInfo, StateResponse, StateScopesResponse, SubscriptionDeleteResponse, SubscriptionHoldings,
    SubscriptionListResponse,
};
use super::{ApiError, AppState, auth, blocking};
use crate::names::SubscriptionName;
use crate::runtime::{SubscriptionEntry, SubscriptionError};
use crate::store::Holdings;

pub(super) fn router(state: &AppState) -> Router<AppState> {
    let admin = Router::new()
        .route("/v1/subscriptions/{pipeline}/{handler}", delete(remove))
        .route("/v1/subscriptions/{pipeline}/{handler}/replay", post(start_replay));
    Router::new()
        .route("/v1/subscriptions", get(list))
        .route("/v1/subscriptions/{pipeline}/{handler}/state", get(read_state))
        .route("/v1/subscriptions/{pipeline}/{handler}/replay", get(replay_status))
        .route("/v1/subscriptions/{pipeline}/{handler}/timers", get(super::timers::list))
        .merge(auth::admin(admin, state))
}

impl From<SubscriptionError> for ApiError {
    fn from(e: SubscriptionError) -> Self {
        let status = match e {
            SubscriptionError::Configured(_) => StatusCode::CONFLICT,
            SubscriptionError::NotFound(_) => StatusCode::NOT_FOUND,
            _ => StatusCode::SERVICE_UNAVAILABLE,
        };
        Self::new(status, e.code(), e.to_string())
    }
}

fn info(name: String, configured: bool, h: &Holdings, held: Option<(u64, u64)>) -> SubscriptionHoldings {
    SubscriptionHoldings {
        name,
        configured,
        cursor: h.cursor,
        parked: h.parked,
        dlq: h.dlq,
        idempotency: h.idempotency,
        idempotency_capped: h.idempotency_capped,
        versions: h.versions,
        timers: h.timers,
        retention_held: held.map(|(events, _)| events),
        retention_held_since: held.map(|(_, since)| since),
    }
}

impl From<SubscriptionEntry> for SubscriptionHoldings {
    fn from(e: SubscriptionEntry) -> Self {
        let held = e.retention_held.map(|h| (h.events, h.since_seq));
        info(e.name, e.configured, &e.holdings, held)
    }
}

async fn list(State(state): State<AppState>) -> Result<Json<SubscriptionListResponse>, ApiError> {
    let rt = Arc::clone(&state.runtime);
    let entries = blocking(move || rt.subscription_list()).await?;
    Ok(Json(SubscriptionListResponse { subscriptions: entries.into_iter().map(Into::into).collect() }))
}

async fn remove(
    State(state): State<AppState>,
    Path((pipeline, handler)): Path<(String, String)>,
) -> Result<Json<SubscriptionDeleteResponse>, ApiError> {
    let name = SubscriptionName::new(&pipeline, &handler).to_string();
    let rt = Arc::clone(&state.runtime);
    let deleting = name.clone();
    let held = blocking(move || rt.delete_subscription(&deleting)).await?;
    Ok(Json(SubscriptionDeleteResponse { deleted: info(name, false, &held, None) }))
}

/// The query of `GET …/state`.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct StateQuery {
    /// The event key whose scope to read.
    key: Option<String>,
    /// Read the shared scope (any value but `false`).
    shared: Option<String>,
    /// Only keys starting with this.
    #[serde(default)]
    prefix: String,
    /// Continue after this key (or, listing scopes, this event key).
    after: Option<String>,
    limit: Option<usize>,
}

/// A key or value as JSON: its JSON when it is JSON (values), else its
/// text, else base64 in an object.
fn shown(bytes: &[u8], as_json: bool) -> serde_json::Value {
    use base64::Engine as _;
    if as_json && let Ok(value) = serde_json::from_slice::<serde_json::Value>(bytes) {
        return value;
    }
    match std::str::from_utf8(bytes) {
        Ok(text) => serde_json::Value::String(text.to_owned()),
        Err(_) => serde_json::json!({ "base64": base64::engine::general_purpose::STANDARD.encode(bytes) }),
    }
}

async fn read_state(
    State(state): State<AppState>,
    Path((pipeline, handler)): Path<(String, String)>,
    query: Result<axum::extract::Query<StateQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<axum::response::Response, ApiError> {
    use axum::response::IntoResponse as _;
    let axum::extract::Query(q) =
        query.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "bad_query", e.body_text()))?;
    let name = SubscriptionName::new(&pipeline, &handler).to_string();
    let shared = q.shared.as_deref().is_some_and(|v| v != "false");
    if shared && q.key.is_some() {
        return Err(ApiError::new(StatusCode::BAD_REQUEST, "bad_query", "give `key` or `shared`, not both"));
    }
    let limit = q.limit.unwrap_or(100);
    let rt = Arc::clone(&state.runtime);
    if !shared && q.key.is_none() {
        let after = q.after.clone();
        let subscription = name.clone();
        let page = blocking(move || rt.subscription_state_scopes(&subscription, after.as_deref(), limit)).await?;
        let shared = page.scopes.iter().any(Option::is_none);
        let keys: Vec<String> = page.scopes.into_iter().flatten().collect();
        let next = if page.more { keys.last().cloned() } else { None };
        return Ok(Json(StateScopesResponse { subscription: name, keys, shared, next }).into_response());
    }
    let key = q.key.clone();
    let (subscription, prefix, after) = (name.clone(), q.prefix.clone(), q.after.clone());
    let page = blocking(move || {
        rt.subscription_state(
            &subscription,
            key.as_deref(),
            prefix.as_bytes(),
            after.as_deref().map(str::as_bytes),
            limit,
        )
    })
    .await?;
    let next = if page.more { page.entries.last().map(|(k, _)| String::from_utf8_lossy(k).into_owned()) } else { None };
    let entries =
        page.entries.iter().map(|(k, v)| StateEntryInfo { key: shown(k, false), value: shown(v, true) }).collect();
    Ok(Json(StateResponse { subscription: name, key: q.key, entries, next }).into_response())
}

impl From<crate::runtime::ReplayError> for ApiError {
    fn from(e: crate::runtime::ReplayError) -> Self {
        use crate::runtime::ReplayError as E;
        let status = match e {
            E::NotFound(_) => StatusCode::NOT_FOUND,
            E::Running(_) => StatusCode::CONFLICT,
            E::Stateless(_) | E::Plugin(_) => StatusCode::UNPROCESSABLE_ENTITY,
            _ => StatusCode::SERVICE_UNAVAILABLE,
        };
        Self::new(status, e.code(), e.to_string())
    }
}

/// The body of `POST …/replay`.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ReplayRequest {
    /// `beginning` (the default), a seq, or an RFC 3339 time.
    from: Option<String>,
}

async fn start_replay(
    State(state): State<AppState>,
    Path((pipeline, handler)): Path<(String, String)>,
    body: axum::body::Bytes,
) -> Result<(StatusCode, Json<crate::runtime::ReplayInfo>), ApiError> {
    let request: ReplayRequest = if body.iter().all(u8::is_ascii_whitespace) {
        ReplayRequest::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| ApiError::bad_request("invalid_json", e.to_string()))?
    };
    let from = match request.from.as_deref() {
        None => crate::store::StartPosition::Beginning,
        Some(text) => crate::store::StartPosition::parse(text).map_err(|e| ApiError::bad_request("invalid_from", e))?,
    };
    let name = SubscriptionName::new(&pipeline, &handler).to_string();
    let rt = Arc::clone(&state.runtime);
    let info = blocking(move || rt.replay(&name, from)).await?;
    Ok((StatusCode::ACCEPTED, Json(info)))
}

async fn replay_status(
    State(state): State<AppState>,
    Path((pipeline, handler)): Path<(String, String)>,
) -> Result<Json<crate::runtime::ReplayInfo>, ApiError> {
    let name = SubscriptionName::new(&pipeline, &handler).to_string();
    state.runtime.replay_status(&name).map(Json).ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "replay_not_found",
            format!("no replay of {name} since the server started"),
        )
    })
}
