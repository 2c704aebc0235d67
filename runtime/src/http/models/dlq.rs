//! The API's DLQ bodies.

use serde::{Deserialize, Serialize};

use crate::envelope::JsonEvent;

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
    /// For an entry of a source (`sources/<name>`, code
    /// `source_rejected`): the message that made no event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_message: Option<SourceMessageInfo>,
}

/// A JetStream message a source dead-lettered because it made no event.
/// Its headers are the entry's event's headers after the `weir-source-*`
/// ones, its payload the event's payload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceMessageInfo {
    /// The subject it was published on.
    pub subject: String,
    /// The stream it was read from.
    pub stream: String,
    /// Its stream sequence.
    pub stream_seq: u64,
    /// Why it made no event (`no_topic`, `payload_too_large`, …).
    pub reason_code: String,
    /// Its payload's real size in bytes.
    pub payload_bytes: u64,
    /// Only the payload's first 4096 bytes are kept (it was over
    /// `ingest.max_payload_bytes`): it cannot be redriven.
    pub payload_truncated: bool,
    /// Headers past 32 KiB were dropped: it cannot be redriven.
    pub headers_truncated: bool,
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
