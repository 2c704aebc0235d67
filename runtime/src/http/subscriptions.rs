//! Subscriptions as the store holds them: the list (configured and
//! orphaned, with what each holds and whether it holds retention back), and
//! deleting an orphan's data (admin).

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{delete, get};
use axum::{Json, Router};

use super::extract::Path;
use super::models::{SubscriptionDeleteResponse, SubscriptionHoldings, SubscriptionListResponse};
use super::{ApiError, AppState, auth, blocking};
use crate::names::SubscriptionName;
use crate::runtime::{SubscriptionEntry, SubscriptionError};
use crate::store::Holdings;

pub(super) fn router(state: &AppState) -> Router<AppState> {
    let admin = Router::new().route("/v1/subscriptions/{pipeline}/{handler}", delete(remove));
    Router::new().route("/v1/subscriptions", get(list)).merge(auth::admin(admin, state))
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
