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
use serde_json::Value;

use crate::envelope::JsonEvent;

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
    /// `failing`, `retrying` or `ok`.
    pub state: String,
    /// Rates and latency quantiles over the last few seconds.
    pub rate: RateInfo,
    /// Plugin resource use.
    pub resources: ResourcesInfo,
    /// Events the log's retention would have removed but this subscription
    /// still needs, in the last complete retention pass.
    #[serde(default)]
    pub retention_held: u64,
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

// ------------------------------------------------------------------- DLQ

/// Which DLQ entries: the query of `GET /v1/dlq`, the body of
/// `POST /v1/dlq/redrive` and `POST /v1/dlq/purge`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DlqFilterRequest {
    /// Only this subscription (`<pipeline>/<handler>`).
    pub subscription: Option<String>,
    /// Only this failure code.
    pub code: Option<String>,
    /// Only this sequence number.
    pub seq: Option<u64>,
    /// Required (true) to redrive or purge every entry without any other
    /// filter.
    #[serde(default)]
    pub all: bool,
}

impl DlqFilterRequest {
    /// Whether no filter field is given (`all` aside).
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.subscription.is_none() && self.code.is_none() && self.seq.is_none()
    }
}

/// Entries per page of `GET /v1/dlq` when `limit` is not given.
pub const DLQ_PAGE_DEFAULT: usize = 100;
/// Largest `limit` of `GET /v1/dlq`.
pub const DLQ_PAGE_MAX: usize = 1000;

/// The query of `GET /v1/dlq`: the filter, and which page.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DlqListQuery {
    /// Only this subscription (`<pipeline>/<handler>`).
    pub subscription: Option<String>,
    /// Only this failure code.
    pub code: Option<String>,
    /// Only this sequence number.
    pub seq: Option<u64>,
    /// Entries per page: 1 to [`DLQ_PAGE_MAX`], by default
    /// [`DLQ_PAGE_DEFAULT`].
    pub limit: Option<usize>,
    /// Start after this entry: the `next` of the previous page
    /// (`<pipeline>/<handler>/<seq>`).
    pub after: Option<String>,
}

/// `GET /v1/dlq`: one page of entries, by subscription and seq.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DlqListResponse {
    /// The matching entries of this page.
    pub entries: Vec<DlqEntryInfo>,
    /// When more entries match: the `after` of the next page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
}

/// One dead letter, without its event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DlqEntryInfo {
    /// The subscription it failed in.
    pub subscription: String,
    /// Its sequence number in the log.
    pub seq: u64,
    /// The event's id.
    pub event_id: String,
    /// The event's topic.
    pub topic: String,
    /// The event's key.
    pub key: Option<String>,
    /// Failure code (`handler_reject`, `timeout`, …).
    pub code: String,
    /// Failure message.
    pub message: String,
    /// Attempts made.
    pub attempts: u32,
    /// Plugin name.
    pub plugin: String,
    /// sha256 of the plugin module that failed it.
    pub plugin_version: String,
    /// First failure, RFC 3339.
    pub first_failure: String,
    /// Last failure, RFC 3339.
    pub last_failure: String,
}

/// `GET /v1/dlq/{pipeline}/{handler}/{seq}`: the entry and its whole event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DlqEntryDetail {
    /// The entry.
    #[serde(flatten)]
    pub entry: DlqEntryInfo,
    /// The event, in its JSON form.
    pub event: JsonEvent,
}

/// `POST /v1/dlq/redrive`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RedriveResponse {
    /// Entries moved back to their subscription.
    pub redriven: usize,
    /// Entries that matched but were gone by the time.
    pub missing: usize,
}

/// `POST /v1/dlq/purge`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PurgeResponse {
    /// Entries deleted.
    pub purged: usize,
}

// --------------------------------------------------------------- plugins

/// `GET /v1/plugins`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PluginsResponse {
    /// One per handler of the running configuration.
    pub handlers: Vec<HandlerInfo>,
}

/// One handler of a [`PluginsResponse`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HandlerInfo {
    /// `<pipeline>/<handler>`.
    pub handler: String,
    /// Its active version.
    pub active: Option<VersionInfo>,
    /// Versions in its history.
    pub versions: usize,
}

/// One version of a handler's plugin.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionInfo {
    /// sha256 of the module: the version's identity.
    pub sha256: String,
    /// Module size in bytes.
    pub size: u64,
    /// ABI version it speaks.
    pub abi_version: u32,
    /// What the plugin says about itself.
    pub description: Option<weir_abi::PluginDescription>,
    /// When it became active (ms since the Unix epoch).
    pub deployed_at_ms: u64,
    /// Who or what deployed it.
    pub deployed_by: String,
    /// `config`, `deploy`, `rollback` or `watch`.
    pub action: String,
}

/// `GET /v1/plugins/{pipeline}/{handler}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryResponse {
    /// Oldest first.
    pub history: Vec<HistoryEntry>,
}

/// One entry of a [`HistoryResponse`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryEntry {
    /// Its number in the history.
    pub version: u64,
    /// The version.
    pub record: VersionInfo,
}

/// The query of `PUT /v1/plugins/{pipeline}/{handler}` (the body is the
/// module). Unknown parameters are ignored, as they always were here.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PutModuleQuery {
    /// Who deploys, recorded in the history [default: `http`].
    pub by: Option<String>,
}

/// The body of `POST /v1/plugins/{pipeline}/{handler}/deploy`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeployRequest {
    /// The module, base64 (standard alphabet, padded).
    pub module_base64: String,
    /// Who deploys [default: `http`].
    pub by: Option<String>,
    /// Samples the candidate must pass first (see `weir plugin deploy`).
    #[serde(default)]
    pub test_events: Vec<Value>,
}

/// The body of `POST /v1/plugins/{pipeline}/{handler}/rollback` (optional).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RollbackRequest {
    /// sha256 (or a unique prefix) of the version to run [default: the
    /// previous one].
    pub to: Option<String>,
    /// Who rolls back [default: `http`].
    pub by: Option<String>,
}

/// What a deploy or rollback did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeployResponse {
    /// The handler.
    pub handler: String,
    /// Its new version number; when nothing changed, the active one's.
    pub version: u64,
    /// sha256 of the now active module.
    pub sha256: String,
    /// sha256 of the module active before the call.
    pub previous: Option<String>,
    /// False when the module was already the active version.
    pub changed: bool,
}

// ------------------------------------------------------------------- log

/// Events per answer of `GET /v1/log` when `limit` is not given.
pub const LOG_PAGE_DEFAULT: usize = 100;
/// Largest `limit` of `GET /v1/log`.
pub const LOG_PAGE_MAX: usize = 1000;
/// Longest `wait` of `GET /v1/log`, in seconds.
pub const LOG_WAIT_MAX_SECONDS: u64 = 30;

/// The query of `GET /v1/log`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogQuery {
    /// Only events after this position (exclusive): the `next` of the
    /// previous answer. From the start of the log when absent.
    pub after: Option<u64>,
    /// Topic patterns, comma-separated (`orders.*.created,payments.>`).
    pub topics: Option<String>,
    /// Only events with this key.
    pub key: Option<String>,
    /// Events per answer: 1 to [`LOG_PAGE_MAX`], by default
    /// [`LOG_PAGE_DEFAULT`].
    pub limit: Option<usize>,
    /// When nothing matches yet, wait this long for an event that does
    /// (`5s`, `500ms`, or seconds), at most [`LOG_WAIT_MAX_SECONDS`].
    pub wait: Option<String>,
}

/// The query of `GET /v1/log/stream`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogStreamQuery {
    /// Start after this position (exclusive).
    pub after: Option<u64>,
    /// Topic patterns, comma-separated.
    pub topics: Option<String>,
    /// Only events with this key.
    pub key: Option<String>,
    /// Resume after this position, as the `Last-Event-ID` header does (for
    /// browsers, which cannot set it on a new `EventSource`).
    pub last_event_id: Option<u64>,
}

/// One event of the log and its position.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LogEvent {
    /// Its position in the log.
    pub seq: u64,
    /// The event, in its JSON form.
    pub event: JsonEvent,
}

/// `GET /v1/log`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LogReadResponse {
    /// The matching events, by position.
    pub events: Vec<LogEvent>,
    /// The `after` of the next read: the last position looked at, matching
    /// or not. Absent only when the log is empty and no `after` was given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<u64>,
    /// Whether the read got to the head of the log (false: a bound
    /// stopped it; ask again from `next` at once).
    pub caught_up: bool,
    /// The position the next event appended will get.
    pub head: u64,
}

/// `GET /v1/events/{id}/lineage`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LineageResponse {
    /// The event.
    pub event: LogEvent,
    /// What caused it, nearest first, up to the producer's event.
    pub causes: Vec<LogEvent>,
    /// The id of a cause the log does not hold, where the chain stops.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub missing_cause: Option<String>,
    /// What became of it in each subscription that matches it or emitted
    /// something because of it.
    pub subscriptions: Vec<LineageSubscription>,
}

/// One subscription of a [`LineageResponse`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LineageSubscription {
    /// `<pipeline>/<handler>`.
    pub subscription: String,
    /// `handled`, `duplicate`, `retrying`, `waiting`, `dead_lettered`,
    /// `passed` (its cursor is past it and no record says more) or
    /// `pending`.
    pub state: String,
    /// The plugin version that handled (or dead-lettered) it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plugin_version: Option<String>,
    /// When it was handled, RFC 3339 (while its idempotency record is
    /// kept).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handled_at: Option<String>,
    /// The events it emitted for this one.
    pub emitted: Vec<LogEvent>,
    /// Its retry state, when parked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<RetryInfo>,
    /// Its DLQ entry, when dead-lettered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dlq: Option<DlqEntryInfo>,
}

/// A parked event's retry state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetryInfo {
    /// Failed attempts so far (0: waiting behind an earlier event with its
    /// key).
    pub attempts: u32,
    /// When it is tried next, RFC 3339.
    pub next_attempt: String,
    /// Code of the last failure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_code: Option<String>,
    /// Message of the last failure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_message: Option<String>,
}

// ---------------------------------------------------------------- subscriptions

/// `GET /v1/subscriptions`: configured subscriptions and orphans (data in
/// the store for a subscription the configuration no longer names).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubscriptionListResponse {
    /// By name.
    pub subscriptions: Vec<SubscriptionHoldings>,
}

/// One subscription and what the store holds for it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubscriptionHoldings {
    /// `<pipeline>/<handler>`.
    pub name: String,
    /// Whether the running configuration names it; `false` for an orphan.
    pub configured: bool,
    /// Its committed cursor (the next seq it reads), if it has one.
    pub cursor: Option<u64>,
    /// Parked events.
    pub parked: u64,
    /// DLQ entries.
    pub dlq: u64,
    /// Idempotency records (counted up to a cap).
    pub idempotency: u64,
    /// Whether it holds more idempotency records than counted.
    pub idempotency_capped: bool,
    /// Entries of its plugin deploy history.
    pub versions: u64,
    /// Events the retention policy would have removed but it still needs
    /// (last complete pass); absent when it holds nothing back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retention_held: Option<u64>,
    /// The oldest seq it still needs, when it holds retention back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retention_held_since: Option<u64>,
}

/// `DELETE /v1/subscriptions/{pipeline}/{handler}`: what was deleted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubscriptionDeleteResponse {
    /// The subscription as it was.
    pub deleted: SubscriptionHoldings,
}

// ------------------------------------------------------------- consumers

/// `PUT /v1/consumers/{name}`: a durable consumer's settings. Only
/// `topics` is required.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsumerRequest {
    /// Topic patterns (`orders.*.created`, `payments.>`).
    pub topics: Vec<String>,
    /// Where a new consumer starts: `beginning` (the default), `end`, a
    /// sequence number, or an RFC 3339 time. Ignored when the consumer
    /// exists (use reset to move it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    /// How long a delivery waits for its ack before it comes back
    /// (`30s` by default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ack_wait: Option<String>,
    /// Deliveries in all before the DLQ (5 by default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_deliveries: Option<u32>,
    /// Waits before redeliveries, by delivery number (`["1s","10s"]`); the
    /// last repeats. None by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backoff: Option<Vec<String>>,
    /// One delivery at a time per key, in log order (on by default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_key_ordering: Option<bool>,
    /// Most deliveries pending at once (1,000 by default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_in_flight: Option<u32>,
}

/// A durable consumer: `GET /v1/consumers/{name}`, and each of
/// `GET /v1/consumers` and of `/v1/status`'s `consumers`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConsumerInfo {
    /// Its name.
    pub name: String,
    /// Topic patterns.
    pub topics: Vec<String>,
    /// The start position it was created (or last reset) with.
    pub from: String,
    /// Ack wait, in milliseconds.
    pub ack_wait_ms: u64,
    /// Deliveries in all before the DLQ.
    pub max_deliveries: u32,
    /// Waits before redeliveries, in milliseconds.
    pub backoff_ms: Vec<u64>,
    /// One delivery at a time per key.
    pub per_key_ordering: bool,
    /// Most deliveries pending at once.
    pub max_in_flight: u32,
    /// The next log position it has not looked at.
    pub cursor: u64,
    /// Log entries past the cursor.
    pub lag: u64,
    /// Pending deliveries: delivered and not acked, waiting for a
    /// redelivery, or held behind their key.
    pub in_flight: u64,
    /// Its DLQ entries (subscription `consumers/<name>`).
    pub dlq: u64,
    /// Deliveries made since the server started (redeliveries included).
    pub delivered: u64,
    /// Redeliveries since start.
    pub redelivered: u64,
    /// Acks taken since start.
    pub acked: u64,
    /// Acks refused as stale since start.
    pub stale_acks: u64,
    /// Created, RFC 3339.
    pub created: String,
}

/// `GET /v1/consumers`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConsumerListResponse {
    /// Every consumer, by name.
    pub consumers: Vec<ConsumerInfo>,
}

/// `PUT /v1/consumers/{name}` (`201` when created, else `200`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConsumerPutResponse {
    /// Whether this request created it.
    pub created: bool,
    /// The consumer now.
    pub consumer: ConsumerInfo,
}

/// Most deliveries one fetch answers.
pub const FETCH_MAX: usize = 1000;
/// Longest long poll of a fetch.
pub const FETCH_MAX_WAIT_SECS: u64 = 30;

/// `POST /v1/consumers/{name}/fetch`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FetchRequest {
    /// Most deliveries to answer: 1 to [`FETCH_MAX`], 1 by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<usize>,
    /// How long to wait for a first delivery when none is due (`5s`; up to
    /// 30 s); by default not at all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wait: Option<String>,
}

/// `POST /v1/consumers/{name}/fetch`: the deliveries, in log order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FetchResponse {
    /// Possibly none (the wait passed).
    pub deliveries: Vec<DeliveryInfo>,
}

/// One delivery of a [`FetchResponse`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeliveryInfo {
    /// Names this attempt: ack, nak or term it with this token.
    pub token: String,
    /// The event's position in the log.
    pub seq: u64,
    /// Which delivery of this event this is (1 for the first).
    pub attempt: u32,
    /// The event.
    pub event: JsonEvent,
}

/// What to do with a delivery: `ack` (done), `nak` (deliver it again,
/// after `delay`), `term` (never again: to the DLQ).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AckKind {
    /// Done.
    #[default]
    Ack,
    /// Deliver it again.
    Nak,
    /// Never deliver it again.
    Term,
}

/// One ack of an [`AckRequest`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AckItem {
    /// The delivery's token.
    pub token: String,
    /// `ack` by default.
    #[serde(default)]
    pub action: AckKind,
    /// For `nak`: wait this long (`5s`) before the redelivery; by default
    /// the consumer's backoff.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay: Option<String>,
    /// For `term`: why, stored with the DLQ entry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// Most acks in one request.
pub const ACKS_MAX: usize = 1000;

/// `POST /v1/consumers/{name}/ack`: one ack (`token`, …), answered `409`
/// when refused, or a batch (`acks`), answered `200` with each result.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AckRequest {
    /// One ack's token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// One ack's action.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<AckKind>,
    /// One nak's delay.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay: Option<String>,
    /// One term's reason.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// A batch, up to [`ACKS_MAX`], applied in order in one commit.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub acks: Vec<AckItem>,
}

/// `POST /v1/consumers/{name}/ack`: each ack's outcome, in order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AckResponse {
    /// One per ack.
    pub results: Vec<AckResultInfo>,
}

/// One ack's outcome: `acked`, `naked`, `dead_lettered` (applied and
/// durable), or `expired`, `superseded`, `unknown`, `invalid_token`
/// (refused: nothing changed).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AckResultInfo {
    /// The token as given.
    pub token: String,
    /// What happened.
    pub outcome: String,
}

/// `POST /v1/consumers/{name}/reset`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResetRequest {
    /// `beginning`, `end`, a sequence number or an RFC 3339 time.
    pub from: String,
}
