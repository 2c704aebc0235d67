//! The API's consumers bodies.

use serde::{Deserialize, Serialize};

use crate::envelope::JsonEvent;

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
