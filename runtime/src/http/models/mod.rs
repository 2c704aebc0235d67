//! The HTTP API's request and response bodies, shared by the server and the
//! `weir` CLI: what one writes, the other reads, with the same types.
//!
//! These are the wire format, owned here rather than borrowed from the
//! runtime's or the store's types, so restructuring those cannot change the
//! API by accident (`convert.rs` maps them). Field order is the order on
//! the wire.
//!
//! Requests deny unknown fields (a misspelt filter must not widen a purge);
//! responses do not, so a client tolerates a newer server's additions.

use serde::{Deserialize, Serialize};

mod commands;
mod consumers;
mod dlq;
mod log;
mod plugins;
mod streams;
mod subscriptions;
mod timers;
mod views;
pub use commands::*;
pub use consumers::*;
pub use dlq::*;
pub use log::*;
pub use plugins::*;
pub use streams::*;
pub use subscriptions::*;
pub use timers::*;
pub use views::*;

// ---------------------------------------------------------------- errors

/// Every error answer: `{"error":{"code","message"}}`, plus `index` when
/// one event of an ingest request is to blame.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorResponse {
    /// What went wrong.
    pub error: ErrorInfo,
}

/// The body of an [`ErrorResponse`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorInfo {
    /// Stable machine code (`invalid_json`, `not_found`, `store_corrupt`…).
    pub code: String,
    /// For people: what happened and, where it helps, what to do.
    pub message: String,
    /// Position of the offending event in an ingest request (0-based).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub index: Option<usize>,
    /// For a refused module (a deploy's `422`): the loading step that
    /// refused it, as `weir inspect` and `weir exec` report it (`validate`,
    /// `instantiate`, `weir_init`, …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stage: Option<String>,
}

// ------------------------------------------------------- health, status

/// `GET /health`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HealthResponse {
    /// Always `ok`: the process answers.
    pub status: String,
}

impl HealthResponse {
    /// The only answer.
    #[must_use]
    pub fn ok() -> Self {
        Self { status: "ok".into() }
    }
}

/// `GET /ready` (200, or 503 when `not_ready`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReadinessResponse {
    /// `ready`, `degraded` (serving, with reasons) or `not_ready`.
    pub status: String,
    /// Why it is not plainly ready.
    pub reasons: Vec<String>,
}

/// `GET /v1/status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusResponse {
    /// Sequence number of the newest event in the log.
    pub head: u64,
    /// One entry per subscription, in configuration order.
    pub subscriptions: Vec<SubscriptionInfo>,
    /// The durable consumers, by name: lag, in flight, DLQ.
    #[serde(default)]
    pub consumers: Vec<ConsumerInfo>,
    /// The sources (`[[sources]]`): connection, position, lag, errors.
    #[serde(default)]
    pub sources: Vec<crate::SourceStatus>,
}

/// One subscription in a [`StatusResponse`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SubscriptionInfo {
    /// `<pipeline>/<handler>`.
    pub name: String,
    /// The pipeline (empty from a server that predates the field).
    #[serde(default)]
    pub pipeline: String,
    /// The handler within it (empty from a server that predates the field).
    #[serde(default)]
    pub handler: String,
    /// The pipeline's topic patterns.
    pub topics: Vec<String>,
    /// Plugin name.
    pub plugin: String,
    /// sha256 of the active plugin module.
    pub plugin_version: String,
    /// Committed cursor.
    pub cursor: u64,
    /// Events in the log not yet read by this subscription.
    pub lag: u64,
    /// Seconds between the oldest unread event and the newest event.
    pub lag_seconds: f64,
    /// Events parked (retrying or waiting behind their key).
    pub parked: u64,
    /// DLQ entries.
    pub dlq: u64,
    /// Committed counters.
    pub stats: StatsInfo,
    /// Invocations since start.
    pub invocations: u64,
    /// Last failure since start, `code: message`.
    pub last_failure: Option<String>,
    /// `disabled` (a webhook sink turned off until the next start),
    /// `stopped` (its worker died and waits for a restart), `failing`,
    /// `retrying` or `ok`.
    pub state: String,
    /// Why it is `disabled` or `stopped`, while it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stopped: Option<String>,
    /// The view its state serves, when it is a projection
    /// (`GET /v1/views/<view>/…`); its lag is the view's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub view: Option<String>,
    /// Rates and latency quantiles over the last few seconds.
    pub rate: RateInfo,
    /// Plugin resource use.
    pub resources: ResourcesInfo,
    /// Events the log's retention would have removed but this subscription
    /// still needs, in the last complete retention pass.
    #[serde(default)]
    pub retention_held: u64,
    /// Durable timers its handler scheduled that have not fired yet.
    #[serde(default)]
    pub timers_pending: u64,
}

/// A subscription's committed counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatsInfo {
    /// Events handled.
    pub handled: u64,
    /// Events skipped as duplicates.
    pub duplicates: u64,
    /// Failed attempts scheduled for retry.
    pub retries: u64,
    /// Events moved to the DLQ.
    pub dead_lettered: u64,
    /// Events emitted by the handler.
    pub emitted: u64,
}

/// Recent throughput and latency; quantiles are `null` when nothing was
/// timed in the window.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct RateInfo {
    /// Seconds the window covers.
    pub window_seconds: f64,
    /// Events handled per second over the window.
    pub events_per_second: f64,
    /// Median time per invocation, ms.
    pub processing_p50_ms: Option<f64>,
    /// 99th percentile time per invocation, ms.
    pub processing_p99_ms: Option<f64>,
    /// Median event time → handled, ms.
    pub end_to_end_p50_ms: Option<f64>,
    /// 99th percentile event time → handled, ms.
    pub end_to_end_p99_ms: Option<f64>,
}

/// A subscription's plugin resource numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResourcesInfo {
    /// Fuel consumed since start.
    pub fuel_consumed: u64,
    /// Largest linear memory of the active version's instances, bytes.
    pub memory_high_water_bytes: u64,
    /// Plugin log lines written.
    pub plugin_log_lines: u64,
    /// Plugin log lines dropped.
    pub plugin_log_lines_dropped: u64,
}

// ---------------------------------------------------------------- ingest

/// `POST /v1/events`: each event of the request, in order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublishResponse {
    /// One per event sent.
    pub events: Vec<PublishedEvent>,
}

/// One event of a [`PublishResponse`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublishedEvent {
    /// Its id; for a duplicate, the id stored the first time.
    pub id: String,
    /// Its position in the log.
    pub seq: u64,
    /// Whether the idempotency key was already known (nothing was stored).
    pub duplicate: bool,
}
