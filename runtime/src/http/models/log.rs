//! The API's log bodies.

use serde::{Deserialize, Serialize};

use super::DlqEntryInfo;

use crate::envelope::JsonEvent;

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
    /// Whether the chain goes on past the last cause listed (at most 64
    /// causes and 8 MiB of events are listed): ask the lineage of that
    /// cause to follow it further.
    #[serde(default)]
    pub causes_truncated: bool,
    /// The id of a cause the log does not hold, where the chain stops.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub missing_cause: Option<String>,
    /// Whether it caused more events than `subscriptions` list as
    /// `emitted` (at most 1,000, the first by position, within 8 MiB).
    #[serde(default)]
    pub emitted_truncated: bool,
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
