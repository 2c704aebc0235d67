//! Commands and aggregate state: `POST /v1/commands/{type}/{key}`,
//! `GET /v1/commands/{type}/{key}`, `GET /v1/streams/{type}/{key}/state`.

use serde::{Deserialize, Serialize};

/// Most bytes of a command's idempotency key.
pub const MAX_COMMAND_KEY_BYTES: usize = 256;
/// Most bytes of a command's name.
pub const MAX_COMMAND_NAME_BYTES: usize = 64;
/// Default page of `GET /v1/commands/{type}/{key}`.
pub const COMMAND_PAGE_DEFAULT: usize = 100;
/// Largest page of `GET /v1/commands/{type}/{key}`.
pub const COMMAND_PAGE_MAX: usize = 1000;

/// `POST /v1/commands/{type}/{key}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommandRequestBody {
    /// The command's name (`deposit`).
    pub command: String,
    /// Its payload, any JSON (`{"amount": 5}`); absent is `null`.
    #[serde(default)]
    pub payload: Option<serde_json::Value>,
    /// Required: a retry with the same key answers the first result.
    pub idempotency_key: String,
}

/// One event a command appended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommandEventRef {
    /// The event's id.
    pub id: String,
    /// Its position in the log.
    pub seq: u64,
    /// Its revision in the entity's stream.
    pub revision: u64,
}

/// The `200` answer of an accepted command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommandAccepted {
    /// `<type>/<key>`.
    pub stream: String,
    /// The events it appended, in order (maybe none).
    pub events: Vec<CommandEventRef>,
    /// The stream's revision after them (`null`: still no event).
    pub revision: Option<u64>,
    /// The command was recorded before: this is its first result.
    pub duplicate: bool,
}

/// One recorded command (`GET /v1/commands/{type}/{key}`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CommandEntry {
    /// Its place among the entity's commands, from 0.
    pub ordinal: u64,
    /// The client's idempotency key.
    pub idempotency_key: String,
    /// The command's name.
    pub command: String,
    /// Its payload.
    pub payload: serde_json::Value,
    /// When it was decided (RFC 3339).
    pub time: String,
    /// The sha256 of the aggregate that decided it.
    pub aggregate: String,
    /// The revision it was decided on (`null`: no event yet).
    pub decided_at: Option<u64>,
    /// Events folded through the aggregate's `evolve` to load that state:
    /// 0 when the entity's snapshot was current, the whole stream after the
    /// aggregate changed.
    pub folded: u64,
    /// `accepted` or `rejected`.
    pub result: String,
    /// The events it appended (accepted).
    #[serde(default)]
    pub events: Vec<CommandEventRef>,
    /// The stream's revision after them (accepted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<u64>,
    /// Why it was rejected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// `GET /v1/commands/{type}/{key}` query.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommandQuery {
    /// One command by its idempotency key.
    pub idempotency_key: Option<String>,
    /// The first ordinal of the page.
    pub from: Option<u64>,
    /// Page size, 1 to [`COMMAND_PAGE_MAX`].
    pub limit: Option<usize>,
}

/// `GET /v1/commands/{type}/{key}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CommandListResponse {
    /// `<type>/<key>`.
    pub stream: String,
    /// The commands, oldest first.
    pub commands: Vec<CommandEntry>,
    /// The `from` of the next page, when there may be one.
    pub next: Option<u64>,
}

/// `GET /v1/streams/{type}/{key}/state` query.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StateQuery {
    /// A revision, or an RFC 3339 time; the latest when absent.
    pub at: Option<String>,
}

/// `GET /v1/streams/{type}/{key}/state`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EntityStateResponse {
    /// `<type>/<key>`.
    pub stream: String,
    /// The revision of the last event folded in (`null`: none).
    pub revision: Option<u64>,
    /// The stream's current revision.
    pub current_revision: Option<u64>,
    /// The state (JSON, as the SDK stores it); `null` before the first
    /// event.
    pub state: serde_json::Value,
}
