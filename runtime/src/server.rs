//! The HTTP API (axum): ingest, health, status and the DLQ. Runs on the
//! async runtime; publishing hands events to the store's writer and awaits
//! the commit, so no Wasm and no fsync ever runs on an I/O thread.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::ingest::{Ingest, IngestError};
use crate::runtime::Runtime;
use crate::store::{DlqFilter, StoreError};

/// Largest request body: a batch of events.
const MAX_BODY: usize = 64 << 20;

#[derive(Clone)]
struct AppState {
    runtime: Arc<Runtime>,
}

/// Build the router for `runtime`.
pub fn router(runtime: Arc<Runtime>) -> Router {
    Router::new()
        .route("/", get(dashboard))
        .route("/health", get(health))
        .route("/ready", get(ready))
        .route("/metrics", get(metrics))
        .route("/v1/events", post(publish))
        .route("/v1/status", get(status))
        .route("/v1/dlq", get(dlq_list))
        .route("/v1/dlq/{pipeline}/{handler}/{seq}", get(dlq_show))
        .route("/v1/dlq/redrive", post(dlq_redrive))
        .route("/v1/dlq/purge", post(dlq_purge))
        .route("/v1/plugins", get(plugins_list))
        .route("/v1/plugins/{pipeline}/{handler}", get(plugin_history).put(plugin_put))
        .route("/v1/plugins/{pipeline}/{handler}/deploy", post(plugin_deploy))
        .route("/v1/plugins/{pipeline}/{handler}/rollback", post(plugin_rollback))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(AppState { runtime })
}

/// Whether `addr` only accepts local connections.
#[must_use]
pub fn is_loopback(addr: &SocketAddr) -> bool {
    addr.ip().is_loopback()
}

fn error(status: StatusCode, code: &str, message: impl Into<String>) -> Response {
    (status, axum::Json(json!({ "error": { "code": code, "message": message.into() } }))).into_response()
}

/// A store error: damage is a 500 (retrying will not help), anything else
/// (poisoned, closed, I/O) a 503.
fn store_error(e: &StoreError) -> Response {
    let status = match e {
        StoreError::RecordCorrupt { .. } | StoreError::ModuleCorrupt { .. } | StoreError::Corrupt { .. } => {
            StatusCode::INTERNAL_SERVER_ERROR
        }
        _ => StatusCode::SERVICE_UNAVAILABLE,
    };
    error(status, e.code(), e.to_string())
}

/// A blocking task that panicked or was cancelled.
fn internal(e: &tokio::task::JoinError) -> Response {
    error(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string())
}

/// Run store work on the blocking pool (never on an I/O thread), answering a
/// storage error with 503 and a failed task with 500, as every read endpoint
/// does.
async fn store_work<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, Response> {
    match tokio::task::spawn_blocking(work).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(e)) => Err(store_error(&e)),
        Err(e) => Err(internal(&e)),
    }
}

/// Constant-time comparison, so response timing does not reveal how much of
/// a guessed token was right.
fn same(a: &[u8], b: &[u8]) -> bool {
    let mut diff = a.len() ^ b.len();
    for (i, x) in a.iter().enumerate() {
        diff |= usize::from(x ^ b.get(i).copied().unwrap_or(0));
    }
    diff == 0
}

/// Admin endpoints need `Authorization: Bearer <token>` when a token is set.
fn authorize(state: &AppState, headers: &HeaderMap) -> Result<(), Box<Response>> {
    let Some(token) = &state.runtime.config().admin_token else { return Ok(()) };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    if same(given.as_bytes(), token.as_bytes()) {
        Ok(())
    } else {
        Err(Box::new(error(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "this endpoint needs `Authorization: Bearer <admin token>`",
        )))
    }
}

async fn metrics(State(state): State<AppState>) -> Response {
    let rt = Arc::clone(&state.runtime);
    match store_work(move || rt.metrics()).await {
        Ok(text) => ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response(),
        Err(response) => response,
    }
}

/// The operator's dashboard: one self-contained page (inline CSS and JS, no
/// CDN) compiled into the binary, so it works offline and always matches the
/// API it talks to.
const DASHBOARD_HTML: &str = include_str!("../assets/dashboard.html");

async fn dashboard() -> Response {
    ([(header::CONTENT_TYPE, "text/html; charset=utf-8"), (header::CACHE_CONTROL, "no-cache")], DASHBOARD_HTML)
        .into_response()
}

async fn health() -> Response {
    axum::Json(json!({ "status": "ok" })).into_response()
}

/// Readiness: 200 for `ready` and `degraded` (it still serves; the reasons
/// say what to look at), 503 for `not_ready`.
async fn ready(State(state): State<AppState>) -> Response {
    let rt = Arc::clone(&state.runtime);
    match tokio::task::spawn_blocking(move || rt.readiness()).await {
        Ok(r) => {
            let code = if r.status == "not_ready" { StatusCode::SERVICE_UNAVAILABLE } else { StatusCode::OK };
            (code, axum::Json(json!(r))).into_response()
        }
        Err(e) => internal(&e),
    }
}

async fn publish(State(state): State<AppState>, headers: HeaderMap, body: Bytes) -> Response {
    let rt = &state.runtime;
    let ingest = Ingest { ids: rt.ids(), source: "weir:http", max_payload_bytes: rt.config().max_payload_bytes };
    let parsed = if headers.contains_key("ce-specversion") {
        // Every header, as raw bytes: ingest decodes the `ce-*` values
        // (percent-encoding, UTF-8) and names any it cannot, rather than one
        // that is not ASCII being dropped here and reported as missing.
        let pairs: Vec<(&str, &[u8])> = headers.iter().map(|(n, v)| (n.as_str(), v.as_bytes())).collect();
        ingest.cloudevent_binary(&pairs, body.to_vec())
    } else {
        let content_type = match headers.get(header::CONTENT_TYPE).map(|v| v.to_str()) {
            None => String::new(),
            Some(Ok(v)) => v.split(';').next().unwrap_or("").trim().to_ascii_lowercase(),
            // Not "no content type, so JSON": the sender named a type we cannot read.
            Some(Err(_)) => {
                return error(
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    "unsupported_media_type",
                    "the content-type header is not printable ASCII: send application/json, application/cloudevents+json, application/cloudevents-batch+json, or a binary-mode CloudEvent (ce-* headers)",
                );
            }
        };
        match content_type.as_str() {
            "application/cloudevents+json" => ingest.cloudevent(&body),
            "application/cloudevents-batch+json" => ingest.cloudevent_batch(&body),
            "application/json" | "" => ingest.json(&body),
            other => {
                return error(
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    "unsupported_media_type",
                    format!(
                        "content type {other:?}: send application/json, application/cloudevents+json, application/cloudevents-batch+json, or a binary-mode CloudEvent (ce-* headers)"
                    ),
                );
            }
        }
    };
    let events = match parsed {
        Ok(events) => events,
        Err(e) => {
            let status = if matches!(e, IngestError::TooLarge { .. }) {
                StatusCode::PAYLOAD_TOO_LARGE
            } else {
                StatusCode::BAD_REQUEST
            };
            let mut body = json!({ "error": { "code": e.code(), "message": e.to_string() } });
            if let Some(index) = e.index() {
                body["error"]["index"] = json!(index);
            }
            return (status, axum::Json(body)).into_response();
        }
    };
    let (tx, rx) = tokio::sync::oneshot::channel();
    rt.publish(events, Box::new(move |r| drop(tx.send(r))));
    match rx.await {
        Ok(Ok(published)) => axum::Json(json!({ "events": published.iter().map(|p| json!({
            "id": p.id.to_string(), "seq": p.seq, "duplicate": p.duplicate,
        })).collect::<Vec<_>>() }))
        .into_response(),
        Ok(Err(e)) => store_error(&e),
        Err(_) => store_error(&StoreError::Closed),
    }
}

async fn status(State(state): State<AppState>) -> Response {
    let rt = Arc::clone(&state.runtime);
    match store_work(move || rt.status().map(|s| (s, rt.store().head()))).await {
        Ok((subscriptions, head)) => {
            axum::Json(json!({ "head": head, "subscriptions": subscriptions })).into_response()
        }
        Err(response) => response,
    }
}

/// DLQ filter from a query string or a JSON body.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FilterParams {
    subscription: Option<String>,
    code: Option<String>,
    seq: Option<u64>,
    /// Required (true) to act on every entry without any other filter.
    #[serde(default)]
    all: bool,
}

impl FilterParams {
    fn filter(&self) -> DlqFilter {
        DlqFilter { subscription: self.subscription.clone(), code: self.code.clone(), seq: self.seq }
    }

    fn is_empty(&self) -> bool {
        self.subscription.is_none() && self.code.is_none() && self.seq.is_none()
    }
}

fn summary(entry: &crate::store::DlqEntry) -> Value {
    json!({
        "subscription": entry.subscription, "seq": entry.seq, "event_id": entry.event.id.to_string(),
        "topic": entry.event.topic, "key": entry.event.key, "code": entry.code, "message": entry.message,
        "attempts": entry.attempts, "plugin": entry.plugin, "plugin_version": entry.plugin_version,
        "first_failure": crate::envelope::format_time(entry.first_failure_ms as i64 * 1_000_000),
        "last_failure": crate::envelope::format_time(entry.last_failure_ms as i64 * 1_000_000),
    })
}

async fn dlq_list(State(state): State<AppState>, Query(params): Query<FilterParams>) -> Response {
    let rt = Arc::clone(&state.runtime);
    match store_work(move || rt.dlq(&params.filter())).await {
        Ok(entries) => {
            axum::Json(json!({ "entries": entries.iter().map(summary).collect::<Vec<_>>() })).into_response()
        }
        Err(response) => response,
    }
}

async fn dlq_show(
    State(state): State<AppState>,
    Path((pipeline, handler, seq)): Path<(String, String, u64)>,
) -> Response {
    let rt = Arc::clone(&state.runtime);
    let filter = DlqFilter { subscription: Some(format!("{pipeline}/{handler}")), code: None, seq: Some(seq) };
    match store_work(move || rt.dlq(&filter)).await {
        Ok(entries) => match entries.first() {
            Some(entry) => {
                let mut body = summary(entry);
                body["event"] =
                    serde_json::to_value(crate::envelope::JsonEvent::from_event(&entry.event)).unwrap_or(Value::Null);
                axum::Json(body).into_response()
            }
            None => error(StatusCode::NOT_FOUND, "not_found", format!("no DLQ entry {pipeline}/{handler} #{seq}")),
        },
        Err(response) => response,
    }
}

fn filter_body(body: &Bytes) -> Result<FilterParams, Box<Response>> {
    let params: FilterParams = if body.is_empty() {
        FilterParams::default()
    } else {
        serde_json::from_slice(body)
            .map_err(|e| Box::new(error(StatusCode::BAD_REQUEST, "invalid_json", e.to_string())))?
    };
    if params.is_empty() && !params.all {
        return Err(Box::new(error(
            StatusCode::BAD_REQUEST,
            "filter_required",
            "give `subscription`, `code` and/or `seq`, or `\"all\": true` to act on every entry",
        )));
    }
    Ok(params)
}

/// The common start of the admin DLQ operations: the token, then the filter.
fn admin_filter(state: &AppState, headers: &HeaderMap, body: &Bytes) -> Result<FilterParams, Box<Response>> {
    authorize(state, headers)?;
    filter_body(body)
}

async fn dlq_redrive(State(state): State<AppState>, headers: HeaderMap, body: Bytes) -> Response {
    let params = match admin_filter(&state, &headers, &body) {
        Ok(p) => p,
        Err(r) => return *r,
    };
    let rt = Arc::clone(&state.runtime);
    match tokio::task::spawn_blocking(move || rt.redrive(&params.filter())).await {
        Ok(Ok(report)) => axum::Json(json!(report)).into_response(),
        Ok(Err(e @ crate::runtime::RuntimeError::UnknownSubscription(_))) => {
            error(StatusCode::NOT_FOUND, e.code(), e.to_string())
        }
        Ok(Err(e)) => error(StatusCode::SERVICE_UNAVAILABLE, e.code(), e.to_string()),
        Err(e) => internal(&e),
    }
}

async fn dlq_purge(State(state): State<AppState>, headers: HeaderMap, body: Bytes) -> Response {
    let params = match admin_filter(&state, &headers, &body) {
        Ok(p) => p,
        Err(r) => return *r,
    };
    let rt = Arc::clone(&state.runtime);
    match store_work(move || rt.purge(params.filter())).await {
        Ok(purged) => axum::Json(json!({ "purged": purged })).into_response(),
        Err(response) => response,
    }
}

/// A deploy's or rollback's answer: `200` with the report (its `changed` is
/// false when the version was already active), `404` for an unknown handler
/// or version, `422` for a refused module. Each error's message states its
/// reason once.
fn deploy_answer(
    result: Result<Result<crate::runtime::DeployReport, crate::runtime::DeployError>, tokio::task::JoinError>,
) -> Response {
    use crate::runtime::DeployError;
    match result {
        Ok(Ok(report)) => axum::Json(json!(report)).into_response(),
        Ok(Err(
            e @ (DeployError::UnknownHandler(_)
            | DeployError::NoSuchVersion(_)
            | DeployError::AmbiguousVersion { .. }
            | DeployError::NothingToRollBack(_)),
        )) => error(StatusCode::NOT_FOUND, e.code(), e.to_string()),
        Ok(Err(e @ (DeployError::Invalid(_) | DeployError::SampleFailed { .. }))) => {
            error(StatusCode::UNPROCESSABLE_ENTITY, e.code(), e.to_string())
        }
        Ok(Err(e)) => error(StatusCode::SERVICE_UNAVAILABLE, e.code(), e.to_string()),
        Err(e) => internal(&e),
    }
}

async fn plugins_list(State(state): State<AppState>) -> Response {
    let rt = Arc::clone(&state.runtime);
    match store_work(move || rt.plugins()).await {
        Ok(list) => axum::Json(json!({ "handlers": list.into_iter().map(|(handler, active, versions)| json!({
            "handler": handler, "active": active, "versions": versions,
        })).collect::<Vec<_>>() }))
        .into_response(),
        Err(response) => response,
    }
}

async fn plugin_history(State(state): State<AppState>, Path((pipeline, handler)): Path<(String, String)>) -> Response {
    let rt = Arc::clone(&state.runtime);
    let name = format!("{pipeline}/{handler}");
    match store_work(move || rt.history(&name)).await {
        Ok(history) => axum::Json(json!({ "history": history.into_iter().map(|(n, r)| json!({ "version": n, "record": r })).collect::<Vec<_>>() })).into_response(),
        Err(response) => response,
    }
}

#[derive(Debug, Deserialize)]
struct ByParam {
    by: Option<String>,
}

async fn plugin_put(
    State(state): State<AppState>,
    Path((pipeline, handler)): Path<(String, String)>,
    Query(by): Query<ByParam>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Err(r) = authorize(&state, &headers) {
        return *r;
    }
    let rt = Arc::clone(&state.runtime);
    let by = by.by.unwrap_or_else(|| "http".into());
    deploy_answer(
        tokio::task::spawn_blocking(move || rt.deploy(&format!("{pipeline}/{handler}"), body.to_vec(), &by, &[])).await,
    )
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DeployBody {
    module_base64: String,
    by: Option<String>,
    #[serde(default)]
    test_events: Vec<Value>,
}

async fn plugin_deploy(
    State(state): State<AppState>,
    Path((pipeline, handler)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    use base64::Engine as _;
    if let Err(r) = authorize(&state, &headers) {
        return *r;
    }
    let request: DeployBody = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return error(StatusCode::BAD_REQUEST, "invalid_json", e.to_string()),
    };
    let module = match base64::engine::general_purpose::STANDARD.decode(request.module_base64.as_bytes()) {
        Ok(m) => m,
        Err(e) => return error(StatusCode::BAD_REQUEST, "invalid_base64", format!("module_base64: {e}")),
    };
    let rt = Arc::clone(&state.runtime);
    let tests = match crate::runtime::parse_test_cases(rt.ids(), &request.test_events) {
        Ok(t) => t,
        Err(e) => return error(StatusCode::BAD_REQUEST, "invalid_test_event", e),
    };
    let by = request.by.unwrap_or_else(|| "http".into());
    deploy_answer(
        tokio::task::spawn_blocking(move || rt.deploy(&format!("{pipeline}/{handler}"), module, &by, &tests)).await,
    )
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RollbackBody {
    to: Option<String>,
    by: Option<String>,
}

async fn plugin_rollback(
    State(state): State<AppState>,
    Path((pipeline, handler)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Err(r) = authorize(&state, &headers) {
        return *r;
    }
    let request: RollbackBody = if body.is_empty() {
        RollbackBody::default()
    } else {
        match serde_json::from_slice(&body) {
            Ok(r) => r,
            Err(e) => return error(StatusCode::BAD_REQUEST, "invalid_json", e.to_string()),
        }
    };
    let rt = Arc::clone(&state.runtime);
    let by = request.by.unwrap_or_else(|| "http".into());
    deploy_answer(
        tokio::task::spawn_blocking(move || rt.rollback(&format!("{pipeline}/{handler}"), request.to.as_deref(), &by))
            .await,
    )
}

#[cfg(test)]
mod tests {
    use super::same;

    #[test]
    fn token_comparison() {
        assert!(same(b"secret", b"secret"));
        assert!(!same(b"secret", b"secreT"));
        assert!(!same(b"secret", b"secret2"));
        assert!(!same(b"", b"x"));
    }
}
