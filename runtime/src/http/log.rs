//! Reading the log (`read` scope off loopback): `GET /v1/log` (a filtered
//! page, long-polling up to `wait`), `GET /v1/log/stream` (Server-Sent
//! Events), `GET /v1/log/{seq}`, `GET /v1/events/{id}` and
//! `GET /v1/events/{id}/lineage`.
//!
//! Waiting never polls: one watcher on the store ([`Feed`]) counts the
//! commits that append to the log, and every long-poll and stream waits
//! on that count. Bounded: a page by `limit` and bytes, a scan by entries
//! and bytes (a sparse filter answers `next` instead of reading on), the
//! waiting long-polls and the open streams by count, a stream's buffer by
//! messages (a client that does not read them in time is dropped, with a
//! final `dropped` event naming where to resume).

use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Json, Router};
use serde_json::{Map, Value};
use tokio::sync::{Semaphore, mpsc, watch};
use weir_abi::{Event, EventId};

use super::auth::{self, Accept, Rule};
use super::extract::{Path, Query};
use super::models::{
    DlqEntryInfo, LOG_PAGE_DEFAULT, LOG_PAGE_MAX, LOG_WAIT_MAX_SECONDS, LineageResponse, LineageSubscription, LogEvent,
    LogQuery, LogReadResponse, LogStreamQuery, RetryInfo,
};
use super::serve::Stopping;
use super::{ApiError, AppState, blocking};
use crate::config::Scope;
use crate::envelope::{JsonEvent, format_time};
use crate::runtime::{LOG_MAX_TOPIC_PATTERNS, LogFilter, LogPage, Runtime};
use crate::topic::Pattern;

/// Long-polls waiting at once; more are answered `503 overloaded`.
pub(crate) const MAX_WAITING_READS: usize = 256;
/// Open event streams; more are answered `503 overloaded`.
pub(crate) const MAX_STREAMS: usize = 128;
/// Messages a stream holds for its client; when they are not taken within
/// [`SLOW_CLIENT_TIMEOUT`], the client is dropped.
pub(crate) const STREAM_BUFFER: usize = 1024;
/// Bytes of messages a stream holds for its client (a message larger than
/// this waits for the buffer to empty, then passes alone).
pub(crate) const STREAM_BUFFER_BYTES: usize = 8 << 20;
/// How long a stream waits for its client to take a message.
pub(crate) const SLOW_CLIENT_TIMEOUT: Duration = Duration::from_secs(10);
/// Events a stream reads from the store at once.
const STREAM_BATCH: usize = 256;

/// The media type of a CloudEvents batch answer.
const CE_BATCH: &str = "application/cloudevents-batch+json";
/// The media type of one CloudEvent.
const CE_ONE: &str = "application/cloudevents+json";

/// Commits that appended to the log, counted, for the waiting readers; and
/// the bounds on them.
struct Feed {
    appended: watch::Sender<u64>,
    waiting: Arc<Semaphore>,
    streams: Arc<Semaphore>,
}

impl Feed {
    /// A feed woken by `runtime`'s store; its watcher goes away with it.
    fn new(runtime: &Runtime) -> Arc<Self> {
        let feed = Arc::new(Self {
            appended: watch::channel(0).0,
            waiting: Arc::new(Semaphore::new(MAX_WAITING_READS)),
            streams: Arc::new(Semaphore::new(MAX_STREAMS)),
        });
        let weak = Arc::downgrade(&feed);
        runtime.store().watch(Box::new(move || {
            weak.upgrade().is_some_and(|feed| {
                feed.appended.send_modify(|n| *n = n.wrapping_add(1));
                true
            })
        }));
        feed
    }
}

#[derive(Clone)]
struct LogState {
    runtime: Arc<Runtime>,
    feed: Arc<Feed>,
    /// A stream sends a comment when it has sent nothing for this long
    /// (`http.stream_heartbeat`).
    heartbeat: Duration,
}

/// The routes, behind the guard with the `read` scope.
pub(super) fn router(state: &AppState) -> Router<AppState> {
    let log_state = LogState {
        runtime: Arc::clone(&state.runtime),
        feed: Feed::new(&state.runtime),
        heartbeat: state.runtime.config().http.stream_heartbeat,
    };
    let routes = Router::new()
        .route("/v1/log", get(read))
        .route("/v1/log/stream", get(stream))
        .route("/v1/log/{seq}", get(at))
        .route("/v1/events/{id}", get(by_id))
        .route("/v1/events/{id}/lineage", get(lineage))
        .with_state(log_state);
    auth::guard(routes, state, Rule { read: Some(Scope::Read), write: None, body: Accept::Any })
}

/// A filter from the query's `topics` and `key`.
fn filter(topics: Option<&str>, key: Option<String>) -> Result<LogFilter, ApiError> {
    let mut patterns = Vec::new();
    for text in topics.unwrap_or("").split(',').map(str::trim).filter(|t| !t.is_empty()) {
        if patterns.len() == LOG_MAX_TOPIC_PATTERNS {
            return Err(ApiError::bad_request(
                "invalid_query",
                format!("`topics` holds at most {LOG_MAX_TOPIC_PATTERNS} patterns"),
            ));
        }
        let pattern = Pattern::parse(text)
            .map_err(|e| ApiError::bad_request("invalid_query", format!("`topics`: {text:?}: {e}")))?;
        patterns.push(pattern);
    }
    Ok(LogFilter { topics: patterns, key })
}

/// `wait`: a duration (`5s`, `250ms`) or whole seconds, at most
/// [`LOG_WAIT_MAX_SECONDS`].
pub(super) fn wait(text: Option<&str>) -> Result<Duration, ApiError> {
    let Some(text) = text.map(str::trim).filter(|t| !t.is_empty()) else { return Ok(Duration::ZERO) };
    let parsed = match text.parse::<u64>() {
        Ok(seconds) => Some(Duration::from_secs(seconds)),
        Err(_) => humantime::parse_duration(text).ok(),
    };
    match parsed {
        Some(d) if d <= Duration::from_secs(LOG_WAIT_MAX_SECONDS) => Ok(d),
        _ => Err(ApiError::bad_request(
            "invalid_query",
            format!("`wait` is a duration of at most {LOG_WAIT_MAX_SECONDS}s (`5s`, `250ms`), not {text:?}"),
        )),
    }
}

fn log_event(seq: u64, event: &Event) -> LogEvent {
    LogEvent { seq, event: JsonEvent::from_event(event) }
}

/// Whether the client asked for `media` (`Accept`).
fn accepts(headers: &HeaderMap, media: &str) -> bool {
    headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.split(',').any(|part| part.split(';').next().is_some_and(|t| t.trim().eq_ignore_ascii_case(media))))
}

/// An event as a structured CloudEvent: `type` is the topic, `subject` the
/// key; its position is the `weirseq` extension; a header is an extension
/// when its name, lower-cased without `-`, `_` and `.`, is a valid
/// attribute name (`a-z0-9`) not taken already (`weir-plugin-version` is
/// `weirpluginversion`), and left out otherwise.
fn cloudevent(seq: u64, event: &Event) -> Value {
    let json = JsonEvent::from_event(event);
    let mut ce = Map::new();
    ce.insert("specversion".into(), "1.0".into());
    ce.insert("id".into(), event.id.to_string().into());
    ce.insert("source".into(), event.source.clone().into());
    ce.insert("type".into(), event.topic.clone().into());
    if let Some(key) = &event.key {
        ce.insert("subject".into(), key.clone().into());
    }
    ce.insert("time".into(), format_time(event.time).into());
    ce.insert("datacontenttype".into(), event.content_type.clone().into());
    ce.insert("schemaversion".into(), event.schema_version.into());
    ce.insert("weirseq".into(), seq.into());
    ce.insert("idempotencykey".into(), event.idempotency_key.clone().into());
    if let Some(id) = event.correlation_id {
        ce.insert("correlationid".into(), id.to_string().into());
    }
    if let Some(id) = event.causation_id {
        ce.insert("causationid".into(), id.to_string().into());
    }
    for h in &event.headers {
        let name: String = h.name.chars().filter(|c| !matches!(c, '-' | '_' | '.')).collect::<String>().to_lowercase();
        let valid = !name.is_empty() && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
        if valid && !matches!(name.as_str(), "data" | "database64") && !ce.contains_key(&name) {
            ce.insert(name, h.value.clone().into());
        }
    }
    if let Some(payload) = json.payload {
        ce.insert("data".into(), payload);
    } else if let Some(b64) = json.payload_base64 {
        ce.insert("data_base64".into(), b64.into());
    }
    Value::Object(ce)
}

/// `GET /v1/log`.
async fn read(
    State(state): State<LogState>,
    stopping: Option<Extension<Stopping>>,
    headers: HeaderMap,
    Query(query): Query<LogQuery>,
) -> Result<Response, ApiError> {
    let limit = query.limit.unwrap_or(LOG_PAGE_DEFAULT);
    if limit == 0 || limit > LOG_PAGE_MAX {
        return Err(ApiError::bad_request("invalid_query", format!("`limit` is 1 to {LOG_PAGE_MAX}, not {limit}")));
    }
    let filter = Arc::new(filter(query.topics.as_deref(), query.key)?);
    let wait = wait(query.wait.as_deref())?;
    let _permit = if wait.is_zero() {
        None
    } else {
        Some(Arc::clone(&state.feed.waiting).try_acquire_owned().map_err(|_| {
            ApiError::overloaded(format!("{MAX_WAITING_READS} reads are waiting already; try again"), 1)
        })?)
    };
    let deadline = tokio::time::Instant::now() + wait;
    // Subscribed before the first read, so a commit after it wakes the wait.
    let mut appended = state.feed.appended.subscribe();
    let mut stop = stopping.map(|Extension(s)| s.0);
    let mut after = query.after;
    let page = loop {
        let (rt, f) = (Arc::clone(&state.runtime), Arc::clone(&filter));
        let page: LogPage = blocking(move || rt.read_log_page(after, &f, limit)).await?;
        if !page.events.is_empty() || !page.caught_up || tokio::time::Instant::now() >= deadline {
            break page;
        }
        after = page.next;
        let stopped = async {
            match stop.as_mut() {
                Some(stop) => drop(stop.wait_for(|s| *s).await),
                None => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            changed = appended.changed() => if changed.is_err() { break page },
            () = tokio::time::sleep_until(deadline) => {}
            () = stopped => break page,
        }
    };
    let mut response = if accepts(&headers, CE_BATCH) {
        let batch: Vec<Value> = page.events.iter().map(|(seq, e)| cloudevent(*seq, e)).collect();
        ([(header::CONTENT_TYPE, CE_BATCH)], Json(batch)).into_response()
    } else {
        Json(LogReadResponse {
            events: page.events.iter().map(|(seq, e)| log_event(*seq, e)).collect(),
            next: page.next,
            caught_up: page.caught_up,
            head: page.head,
        })
        .into_response()
    };
    if let Some(next) = page.next {
        response.headers_mut().insert("weir-next", HeaderValue::from(next));
    }
    Ok(response)
}

/// `GET /v1/log/{seq}`.
async fn at(State(state): State<LogState>, headers: HeaderMap, Path(seq): Path<u64>) -> Result<Response, ApiError> {
    let rt = Arc::clone(&state.runtime);
    match blocking(move || rt.log_event(seq)).await? {
        Some(event) => Ok(one(&headers, seq, &event)),
        None => Err(ApiError::not_found(format!("the log holds no event at position {seq}"))),
    }
}

/// One event, as JSON or (when asked) a CloudEvent.
fn one(headers: &HeaderMap, seq: u64, event: &Event) -> Response {
    if accepts(headers, CE_ONE) {
        ([(header::CONTENT_TYPE, CE_ONE)], Json(cloudevent(seq, event))).into_response()
    } else {
        Json(log_event(seq, event)).into_response()
    }
}

fn parse_id(text: &str) -> Result<EventId, ApiError> {
    text.parse().map_err(|e: weir_abi::ParseEventIdError| ApiError::bad_request("invalid_path", e.to_string()))
}

/// `GET /v1/events/{id}`.
async fn by_id(
    State(state): State<LogState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = parse_id(&id)?;
    let rt = Arc::clone(&state.runtime);
    match blocking(move || rt.event_by_id(id)).await? {
        Some((seq, event)) => Ok(one(&headers, seq, &event)),
        None => Err(ApiError::not_found(format!("the log holds no event with id {id}"))),
    }
}

/// Milliseconds since the Unix epoch as RFC 3339.
fn rfc3339(ms: u64) -> String {
    format_time(i64::try_from(ms).unwrap_or(i64::MAX).saturating_mul(1_000_000))
}

/// `GET /v1/events/{id}/lineage`.
async fn lineage(State(state): State<LogState>, Path(id): Path<String>) -> Result<Json<LineageResponse>, ApiError> {
    let id = parse_id(&id)?;
    let rt = Arc::clone(&state.runtime);
    let Some(lineage) = blocking(move || rt.lineage(id)).await? else {
        return Err(ApiError::not_found(format!("the log holds no event with id {id}")));
    };
    Ok(Json(LineageResponse {
        event: log_event(lineage.seq, &lineage.event),
        causes: lineage.causes.iter().map(|(s, e)| log_event(*s, e)).collect(),
        causes_truncated: lineage.causes_truncated,
        missing_cause: lineage.missing_cause.map(|id| id.to_string()),
        emitted_truncated: lineage.caused_truncated,
        subscriptions: lineage
            .subscriptions
            .iter()
            .map(|s| LineageSubscription {
                subscription: s.subscription.clone(),
                state: s.state.to_owned(),
                plugin_version: s.plugin_version.clone(),
                handled_at: s.handled_at_ms.map(rfc3339),
                emitted: s.emitted.iter().map(|(seq, e)| log_event(*seq, e)).collect(),
                retry: s.parked.as_ref().map(|p| RetryInfo {
                    attempts: p.attempts,
                    next_attempt: rfc3339(p.next_attempt_at_ms),
                    last_code: p.last_code.clone(),
                    last_message: p.last_message.clone(),
                }),
                dlq: s.dlq.as_ref().map(DlqEntryInfo::from),
            })
            .collect(),
    }))
}

/// `GET /v1/log/stream`: Server-Sent Events. Each event is a message whose
/// `id:` is its position and whose data is a [`LogEvent`]; a `caught-up`
/// event (its `id:` the position read to) each time the stream reaches
/// the head having moved on since its last `id:`; a comment after
/// `http.stream_heartbeat` of silence; a final `dropped` event for a client too slow
/// to take its messages, and `closing` when the server stops.
async fn stream(
    State(state): State<LogState>,
    stopping: Option<Extension<Stopping>>,
    headers: HeaderMap,
    Query(query): Query<LogStreamQuery>,
) -> Result<Response, ApiError> {
    let filter = filter(query.topics.as_deref(), query.key)?;
    let last_event_id = match headers.get("last-event-id") {
        Some(value) => Some(value.to_str().ok().and_then(|v| v.trim().parse::<u64>().ok()).ok_or_else(|| {
            ApiError::bad_request("invalid_last_event_id", "`Last-Event-ID` is a log position (a whole number)")
        })?),
        None => None,
    };
    let after = last_event_id.or(query.last_event_id).or(query.after);
    let permit = Arc::clone(&state.feed.streams)
        .try_acquire_owned()
        .map_err(|_| ApiError::overloaded(format!("{MAX_STREAMS} streams are open already; try again"), 1))?;
    let (tx, rx) = mpsc::channel(STREAM_BUFFER);
    let room = Arc::new(Semaphore::new(STREAM_BUFFER_BYTES));
    let last_words = Arc::new(Mutex::new(None));
    let pump = Pump {
        runtime: Arc::clone(&state.runtime),
        appended: state.feed.appended.subscribe(),
        filter: Arc::new(filter),
        out: Outbox {
            tx,
            room: Arc::clone(&room),
            max_bytes: STREAM_BUFFER_BYTES,
            last_words: Arc::clone(&last_words),
            slow_after: SLOW_CLIENT_TIMEOUT,
        },
        stop: stopping.map(|Extension(s)| s.0),
        heartbeat: state.heartbeat,
    };
    tokio::spawn(async move {
        let _permit = permit;
        pump.run(after).await;
    });
    let body = axum::body::Body::new(SseBody { rx, room, last_words });
    Ok((
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, "text/event-stream"),
            (header::CACHE_CONTROL, "no-cache"),
            (header::HeaderName::from_static("x-accel-buffering"), "no"),
        ],
        body,
    )
        .into_response())
}

/// A stream's body: the messages of its pump, then its last words.
struct SseBody {
    /// Each message with the bytes of room it holds.
    rx: mpsc::Receiver<(Bytes, usize)>,
    room: Arc<Semaphore>,
    last_words: Arc<Mutex<Option<Bytes>>>,
}

impl hyper::body::Body for SseBody {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        match this.rx.poll_recv(cx) {
            Poll::Ready(Some((bytes, held))) => {
                this.room.add_permits(held);
                Poll::Ready(Some(Ok(hyper::body::Frame::data(bytes))))
            }
            Poll::Ready(None) => {
                let last = this.last_words.lock().unwrap_or_else(PoisonError::into_inner).take();
                Poll::Ready(last.map(|bytes| Ok(hyper::body::Frame::data(bytes))))
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

/// Reads the log for one stream and hands its messages over.
struct Pump {
    runtime: Arc<Runtime>,
    appended: watch::Receiver<u64>,
    filter: Arc<LogFilter>,
    out: Outbox,
    stop: Option<watch::Receiver<bool>>,
    heartbeat: Duration,
}

/// Where a stream's messages go: its body's buffer, then its last words.
struct Outbox {
    tx: mpsc::Sender<(Bytes, usize)>,
    /// Bytes of room in the buffer: a message takes its size (up to
    /// `max_bytes`) and the body gives it back when it takes the message.
    room: Arc<Semaphore>,
    max_bytes: usize,
    last_words: Arc<Mutex<Option<Bytes>>>,
    /// How long a message may wait for room before the client is dropped.
    slow_after: Duration,
}

/// One SSE message.
fn message(id: Option<u64>, event: Option<&str>, data: &str) -> Bytes {
    let mut text = String::with_capacity(data.len() + 48);
    if let Some(id) = id {
        text.push_str(&format!("id: {id}\n"));
    }
    if let Some(event) = event {
        text.push_str(&format!("event: {event}\n"));
    }
    // JSON text holds no raw newline, so one `data:` line carries it.
    text.push_str("data: ");
    text.push_str(data);
    text.push_str("\n\n");
    Bytes::from(text)
}

impl Pump {
    async fn run(mut self, mut position: Option<u64>) {
        // The last `id:` the client was sent (or resumed from).
        let mut announced = position;
        let mut caught_up_once = false;
        loop {
            // Also while catching up on a long backlog, which never waits.
            if self.stop.as_ref().is_some_and(|stop| *stop.borrow()) {
                let data = serde_json::json!({"reason": "the server is stopping", "after": announced});
                return self.last_words("closing", &data);
            }
            let (rt, f) = (Arc::clone(&self.runtime), Arc::clone(&self.filter));
            let read = tokio::task::spawn_blocking(move || rt.read_log_page(position, &f, STREAM_BATCH)).await;
            let page = match read {
                Ok(Ok(page)) => page,
                Ok(Err(e)) => {
                    return self.last_words("error", &serde_json::json!({"code": e.code(), "message": e.to_string()}));
                }
                Err(e) => {
                    return self
                        .last_words("error", &serde_json::json!({"code": "internal", "message": e.to_string()}));
                }
            };
            for (seq, event) in &page.events {
                let data = serde_json::to_string(&log_event(*seq, event)).unwrap_or_default();
                if !self.send(message(Some(*seq), None, &data), announced).await {
                    return;
                }
                announced = Some(*seq);
            }
            position = page.next;
            if !page.caught_up {
                continue;
            }
            if !caught_up_once || position != announced {
                let data = serde_json::json!({"next": position, "head": page.head}).to_string();
                if !self.send(message(position, Some("caught-up"), &data), announced).await {
                    return;
                }
                caught_up_once = true;
                announced = position;
            }
            // Wait for an append, sending a heartbeat while nothing comes.
            loop {
                let stop = self.stop.clone();
                let stopped = async move {
                    match stop {
                        Some(mut stop) => drop(stop.wait_for(|s| *s).await),
                        None => std::future::pending::<()>().await,
                    }
                };
                tokio::select! {
                    changed = self.appended.changed() => {
                        if changed.is_err() {
                            return self.last_words("closing", &serde_json::json!({"reason": "the log closed", "after": announced}));
                        }
                        break;
                    }
                    () = tokio::time::sleep(self.heartbeat) => {
                        if !self.send(Bytes::from_static(b": heartbeat\n\n"), announced).await {
                            return;
                        }
                    }
                    () = self.out.tx.closed() => return,
                    () = stopped => {
                        return self.last_words("closing", &serde_json::json!({"reason": "the server is stopping", "after": announced}));
                    }
                }
            }
        }
    }

    async fn send(&self, bytes: Bytes, announced: Option<u64>) -> bool {
        self.out.send(bytes, announced).await
    }

    fn last_words(&self, event: &str, data: &Value) {
        self.out.last_words(event, data);
    }
}

impl Outbox {
    /// Hand a message over; `false` when the client is gone or too slow
    /// (then its last words say where to resume: after `announced`).
    async fn send(&self, bytes: Bytes, announced: Option<u64>) -> bool {
        let held = bytes.len().min(self.max_bytes);
        let handed = async {
            let permit = Arc::clone(&self.room).acquire_many_owned(u32::try_from(held).ok()?).await.ok()?;
            // Given back by the body when it takes the message.
            permit.forget();
            self.tx.send((bytes, held)).await.ok()
        };
        match tokio::time::timeout(self.slow_after, handed).await {
            Ok(Some(())) => true,
            Ok(None) => false,
            Err(_) => {
                self.last_words(
                    "dropped",
                    &serde_json::json!({
                        "reason": format!(
                            "the client did not take its messages within {} ({} messages or {} bytes held); \
                             reconnect with Last-Event-ID",
                            humantime::format_duration(self.slow_after),
                            self.tx.max_capacity(),
                            self.max_bytes
                        ),
                        "after": announced,
                    }),
                );
                false
            }
        }
    }

    /// The final event, sent after every message already handed over; the
    /// stream ends when the pump does.
    fn last_words(&self, event: &str, data: &Value) {
        *self.last_words.lock().unwrap_or_else(PoisonError::into_inner) =
            Some(message(None, Some(event), &data.to_string()));
    }
}

#[cfg(test)]
mod tests;
