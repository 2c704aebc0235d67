//! The API's entity stream bodies: `GET` and `POST /v1/streams/{type}/{key}`.

use serde::de::{self, Deserializer};
use serde::ser::Serializer;
use serde::{Deserialize, Serialize};

use super::ErrorInfo;
use crate::envelope::JsonEvent;
use crate::store::ExpectedRevision;

/// Events per answer of `GET /v1/streams/…` when `limit` is not given.
pub const STREAM_PAGE_DEFAULT: usize = 100;
/// Largest `limit` of `GET /v1/streams/…`.
pub const STREAM_PAGE_MAX: usize = 1000;
/// Most events of one `POST /v1/streams/…`.
pub const MAX_EVENTS_PER_APPEND: usize = 1000;

/// The query of `GET /v1/streams/{type}/{key}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamQuery {
    /// The first revision to answer (inclusive). Forward: from 0 when
    /// absent; backward: from the last.
    pub from: Option<u64>,
    /// `forward` (the default) or `backward`.
    pub direction: Option<String>,
    /// Events per answer: 1 to [`STREAM_PAGE_MAX`], by default
    /// [`STREAM_PAGE_DEFAULT`].
    pub limit: Option<usize>,
}

/// One event of a stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StreamEvent {
    /// Its revision in the stream (0 for the first).
    pub revision: u64,
    /// Its position in the log.
    pub seq: u64,
    /// The event, in its JSON form.
    pub event: JsonEvent,
}

/// `GET /v1/streams/{type}/{key}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StreamReadResponse {
    /// `<type>/<key>`.
    pub stream: String,
    /// The stream's current revision (of its last event); `null` when the
    /// stream has no event yet.
    pub revision: Option<u64>,
    /// The events, in the direction asked for.
    pub events: Vec<StreamEvent>,
    /// The `from` of the next page in the same direction; `null` when this
    /// page reached the end (forward: the current revision; backward:
    /// revision 0).
    pub next: Option<u64>,
}

/// `POST /v1/streams/{type}/{key}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamAppendRequest {
    /// `"any"`, `"no_stream"`, `"exists"` or the stream's current revision.
    pub expected_revision: ExpectedRevisionText,
    /// The events, in the ingest envelope (docs/events.md); each topic
    /// `<type>.<event>`, the key the path's (or left out).
    pub events: Vec<serde_json::Value>,
}

/// [`ExpectedRevision`] on the wire: a word or a number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExpectedRevisionText(pub ExpectedRevision);

impl ExpectedRevisionText {
    /// Parse a JSON value: `"any"`, `"no_stream"`, `"exists"`, a revision
    /// (a number ≥ 0, or its digits as a string).
    ///
    /// # Errors
    ///
    /// What it should be.
    pub fn from_json(value: &serde_json::Value) -> Result<Self, String> {
        let expected = match value {
            serde_json::Value::String(s) => Self::parse(s)?,
            serde_json::Value::Number(n) => match n.as_u64() {
                Some(n) => Self(ExpectedRevision::Exactly(n)),
                None => return Err(Self::rule(&n.to_string())),
            },
            other => return Err(Self::rule(&other.to_string())),
        };
        Ok(expected)
    }

    /// Parse the text form (the CLI's `--expected-revision`).
    ///
    /// # Errors
    ///
    /// What it should be.
    pub fn parse(text: &str) -> Result<Self, String> {
        Ok(Self(match text {
            "any" => ExpectedRevision::Any,
            "no_stream" => ExpectedRevision::NoStream,
            "exists" => ExpectedRevision::Exists,
            digits => ExpectedRevision::Exactly(digits.parse().map_err(|_| Self::rule(&format!("{digits:?}")))?),
        }))
    }

    fn rule(found: &str) -> String {
        format!(
            "expected_revision is {found}: give \"any\", \"no_stream\", \"exists\" or the stream's current revision (a number from 0)"
        )
    }
}

impl Serialize for ExpectedRevisionText {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.0 {
            ExpectedRevision::Any => s.serialize_str("any"),
            ExpectedRevision::NoStream => s.serialize_str("no_stream"),
            ExpectedRevision::Exists => s.serialize_str("exists"),
            ExpectedRevision::Exactly(n) => s.serialize_u64(n),
        }
    }
}

impl<'de> Deserialize<'de> for ExpectedRevisionText {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let value = serde_json::Value::deserialize(d)?;
        Self::from_json(&value).map_err(de::Error::custom)
    }
}

/// One event of a [`StreamAppendResponse`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamAppendedEvent {
    /// Its id; for a duplicate, the id stored the first time.
    pub id: String,
    /// Its position in the log.
    pub seq: u64,
    /// Its revision in the stream; `null` for a duplicate whose original
    /// is not of this stream.
    pub revision: Option<u64>,
}

/// `POST /v1/streams/{type}/{key}` (200).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamAppendResponse {
    /// `<type>/<key>`.
    pub stream: String,
    /// The stream's revision after the append (for a duplicate: its
    /// current revision, which may have moved on since).
    pub revision: Option<u64>,
    /// Whether every idempotency key was appended before: nothing was
    /// stored and `events` are the originals.
    pub duplicate: bool,
    /// One per event sent, in order.
    pub events: Vec<StreamAppendedEvent>,
}

/// `POST /v1/streams/{type}/{key}` (409 `wrong_expected_revision`): the
/// error, and the stream's actual revision.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StreamConflictResponse {
    /// `code` is `wrong_expected_revision`.
    pub error: ErrorInfo,
    /// The stream's current revision; `null` when it has no event.
    pub actual_revision: Option<u64>,
}
