//! The HTTP API (axum): ingest, health, status, the DLQ and plugins. Runs on
//! the async runtime; publishing hands events to the store's writer and
//! awaits the commit, and every other store call runs on the blocking pool,
//! so no Wasm and no fsync ever runs on an I/O thread.
//!
//! One router per resource ([`events`], [`dlq`], [`plugins`], [`status`]),
//! merged here; every route but `/health` and `/ready` sits behind
//! [`auth`]'s guard (host, origin, token scope, content type), and
//! [`serve`] runs the server with timeouts and a connection cap.
//! Every error, axum's own rejections included, answers in one JSON shape
//! ([`error::ApiError`]); the bodies are the [`models`], which the `weir` CLI
//! reads too.

mod auth;
mod commands;
mod consumers;
mod convert;
mod dlq;
mod error;
mod events;
mod extract;
mod log;
pub mod models;
mod plugins;
mod sagas;
mod serve;
mod status;
mod streams;
mod subscriptions;
mod timers;
mod views;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderValue, header};
use axum::response::Response;

use crate::config::Scope;
use crate::runtime::Runtime;
use auth::{Accept, Rule};
use error::ApiError;
pub use serve::serve;

#[derive(Clone)]
struct AppState {
    runtime: Arc<Runtime>,
    /// The configured listen address, for the `Host` check.
    listen: SocketAddr,
    /// Admission control of `POST /v1/events`.
    admission: Arc<events::Admission>,
}

/// Build the router for `runtime`.
pub fn router(runtime: Arc<Runtime>) -> Router {
    let http = &runtime.config().http;
    let admission = Arc::new(events::Admission::new(http));
    let max_body = http.max_body_bytes;
    let state = AppState { listen: runtime.config().listen, runtime, admission };
    // dlq.rs guards its admin routes itself; the reads need `read`.
    let dlq = auth::guard(
        dlq::router(&state),
        &state,
        Rule { read: Some(Scope::Read), write: Some(Scope::Admin), body: Accept::Json },
    );
    // The list needs `read`; deleting guards itself (admin).
    let subscriptions = auth::guard(
        subscriptions::router(&state),
        &state,
        Rule { read: Some(Scope::Read), write: Some(Scope::Admin), body: Accept::Json },
    );
    // Like the DLQ: reads need `read`, the actions guard themselves (admin).
    let sagas = auth::guard(
        sagas::router(&state),
        &state,
        Rule { read: Some(Scope::Read), write: Some(Scope::Admin), body: Accept::Json },
    );
    Router::new()
        .merge(status::router(&state))
        .merge(sagas)
        .merge(events::router(&state))
        .merge(dlq)
        .merge(plugins::router(&state))
        .merge(subscriptions)
        .merge(log::router(&state))
        .merge(consumers::router(&state))
        .merge(streams::router(&state))
        .merge(commands::router(&state))
        .merge(views::router(&state))
        .fallback(error::no_route)
        // After the merges: it applies to the routes present.
        .method_not_allowed_fallback(error::wrong_method)
        .layer(DefaultBodyLimit::max(max_body))
        .layer(axum::middleware::map_response(nosniff))
        .with_state(state)
}

/// Every answer: its content type is the one it says.
async fn nosniff(mut response: Response) -> Response {
    response.headers_mut().insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    response
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
