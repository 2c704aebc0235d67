//! The HTTP API (axum): ingest, health, status, the DLQ and plugins. Runs on
//! the async runtime; publishing hands events to the store's writer and
//! awaits the commit, and every other store call runs on the blocking pool,
//! so no Wasm and no fsync ever runs on an I/O thread.
//!
//! One router per resource ([`events`], [`dlq`], [`plugins`], [`status`]),
//! merged here; the admin routes among them sit behind [`auth`]'s layer.
//! Every error, axum's own rejections included, answers in one JSON shape
//! ([`error::ApiError`]); the bodies are the [`models`], which the `weir` CLI
//! reads too.

mod auth;
mod convert;
mod dlq;
mod error;
mod events;
mod extract;
pub mod models;
mod plugins;
mod status;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;

use crate::runtime::Runtime;
use error::ApiError;

/// Largest request body: a batch of events, or a module to deploy.
const MAX_BODY: usize = 64 << 20;

#[derive(Clone)]
struct AppState {
    runtime: Arc<Runtime>,
}

/// Build the router for `runtime`.
pub fn router(runtime: Arc<Runtime>) -> Router {
    let state = AppState { runtime };
    Router::new()
        .merge(status::router())
        .merge(events::router())
        .merge(dlq::router(&state))
        .merge(plugins::router(&state))
        .fallback(error::no_route)
        // After the merges: it applies to the routes present.
        .method_not_allowed_fallback(error::wrong_method)
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(state)
}

/// Whether `addr` only accepts local connections.
#[must_use]
pub fn is_loopback(addr: &SocketAddr) -> bool {
    addr.ip().is_loopback()
}

/// Run store work on the blocking pool (never on an I/O thread); its error
/// and a failed task become the answer.
async fn blocking<T, E>(work: impl FnOnce() -> Result<T, E> + Send + 'static) -> Result<T, ApiError>
where
    T: Send + 'static,
    E: Send + 'static,
    ApiError: From<E>,
{
    Ok(tokio::task::spawn_blocking(work).await??)
}
