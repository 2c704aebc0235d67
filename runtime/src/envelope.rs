//! The JSON form of the event envelope, used by `weir exec`, `weir publish`
//! and the HTTP API. Documented in `docs/events.md`.
//!
//! Only `topic` is required. The payload is given either as any JSON value
//! (`payload`, stored as its JSON text with content type
//! `application/json`) or as base64 bytes (`payload_base64`, content type
//! `application/octet-stream` unless `content_type` says otherwise).

use std::collections::BTreeMap;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use weir_abi::{Emit, Event, EventId, Header};

use crate::ids::IdGenerator;
use crate::ingest::cloudevent_key;
use crate::topic::{self, TopicError};

/// Why a JSON event could not be turned into an event.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EnvelopeError {
    /// Not JSON, or not an object of the documented shape.
    #[error("invalid event JSON: {0}")]
    Json(#[from] serde_json::Error),
    /// The topic breaks the naming rule.
    #[error(transparent)]
    Topic(#[from] TopicError),
    /// An id field is not a ULID.
    #[error("invalid `{field}`: {reason}")]
    BadId {
        /// Which field.
        field: &'static str,
        /// Why.
        reason: String,
    },
    /// `time` is not RFC 3339.
    #[error("invalid `time` {value:?}: expected RFC 3339, e.g. 2026-11-26T12:00:00Z")]
    BadTime {
        /// The text given.
        value: String,
    },
    /// `payload_base64` is not base64.
    #[error("invalid `payload_base64`: {0}")]
    BadBase64(String),
    /// Both payload forms were given.
    #[error("give either `payload` or `payload_base64`, not both")]
    TwoPayloads,
    /// An `idempotency_key` in the reserved `ce:` form that is not the
    /// CloudEvents key of the event's own source.
    #[error(
        "invalid `idempotency_key` {key:?}: keys beginning with `ce:` are reserved for CloudEvents and must be \
         `ce:<source, % and # percent-encoded>#<id>` with the event's own source, here {expected:?} followed by the id"
    )]
    ReservedIdempotencyKey {
        /// The key given.
        key: String,
        /// What a key for this event's source must begin with.
        expected: String,
    },
}

impl EnvelopeError {
    /// Stable code.
    #[must_use]
    pub fn code(&self) -> &'static str {
        match self {
            Self::Json(_) => "invalid_json",
            Self::Topic(_) => "invalid_topic",
            Self::BadId { .. } => "invalid_id",
            Self::BadTime { .. } => "invalid_time",
            Self::BadBase64(_) => "invalid_base64",
            Self::TwoPayloads => "two_payloads",
            Self::ReservedIdempotencyKey { .. } => "invalid_idempotency_key",
        }
    }
}

/// An event in its JSON form.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JsonEvent {
    /// ULID; assigned when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// `<domain>.<entity>.<event>`.
    pub topic: String,
    /// Producer; defaults to the ingest path (`weir:cli`, `weir:http`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// Entity key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// Defaults to 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schema_version: Option<u32>,
    /// RFC 3339; defaults to now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time: Option<String>,
    /// Defaults from the payload form.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_type: Option<String>,
    /// Headers (the JSON form orders them by name).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    /// Defaults to the id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
    /// ULID of the flow's first event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub correlation_id: Option<String>,
    /// ULID of the causing event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub causation_id: Option<String>,
    /// The payload as a JSON value (`null` included).
    #[serde(default, deserialize_with = "present", skip_serializing_if = "Option::is_none")]
    pub payload: Option<Value>,
    /// The payload as base64 bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload_base64: Option<String>,
}

/// A field that is present is `Some`, even when it is `null`.
fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Value>, D::Error> {
    Value::deserialize(d).map(Some)
}

fn parse_id(field: &'static str, text: &str) -> Result<EventId, EnvelopeError> {
    text.parse().map_err(|e: weir_abi::ParseEventIdError| EnvelopeError::BadId { field, reason: e.to_string() })
}

pub use crate::clock::now_nanos;

/// RFC 3339 text of a nanosecond timestamp.
#[must_use]
pub fn format_time(nanos: i64) -> String {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(nanos))
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_else(|| nanos.to_string())
}

impl JsonEvent {
    /// Parse one JSON object.
    ///
    /// # Errors
    ///
    /// [`EnvelopeError::Json`] naming the problem and its column.
    pub fn from_json_line(line: &str) -> Result<Self, EnvelopeError> {
        Ok(serde_json::from_str(line)?)
    }

    /// Validate and fill defaults: a new id from `ids` if none, `source`
    /// defaulting to `default_source`, schema version 1, time now, content
    /// type from the payload form, idempotency key = id.
    ///
    /// An explicit idempotency key that begins with `ce:` is reserved for
    /// CloudEvents: it is accepted only as
    /// [`cloudevent_key`]`(source, id)` for this event's own `source` (after
    /// defaulting) and some id, i.e. when the event claims to be that
    /// CloudEvent, as a stored CloudEvent republished in this form does.
    ///
    /// # Errors
    ///
    /// An [`EnvelopeError`] for the first invalid field.
    pub fn into_event(self, ids: &IdGenerator, default_source: &str) -> Result<Event, EnvelopeError> {
        topic::validate(&self.topic)?;
        let source = self.source.unwrap_or_else(|| default_source.to_owned());
        if let Some(key) = &self.idempotency_key
            && key.starts_with("ce:")
        {
            // `cloudevent_key(source, "")` is the key up to and including the
            // `#` that ends the escaped source, which holds no `#` itself.
            let expected = cloudevent_key(&source, "");
            if !key.starts_with(&expected) {
                return Err(EnvelopeError::ReservedIdempotencyKey { key: key.clone(), expected });
            }
        }
        let id = match &self.id {
            Some(text) => parse_id("id", text)?,
            None => ids.next_id(),
        };
        let time = match &self.time {
            Some(text) => {
                let t = OffsetDateTime::parse(text, &Rfc3339)
                    .map_err(|_| EnvelopeError::BadTime { value: text.clone() })?;
                i64::try_from(t.unix_timestamp_nanos()).map_err(|_| EnvelopeError::BadTime { value: text.clone() })?
            }
            None => now_nanos(),
        };
        let (payload, default_type) = match (self.payload, self.payload_base64) {
            (Some(_), Some(_)) => return Err(EnvelopeError::TwoPayloads),
            (Some(value), None) => (serde_json::to_vec(&value)?, "application/json"),
            (None, Some(b64)) => (
                BASE64.decode(b64.as_bytes()).map_err(|e| EnvelopeError::BadBase64(e.to_string()))?,
                "application/octet-stream",
            ),
            (None, None) => (Vec::new(), "application/json"),
        };
        Ok(Event {
            id,
            topic: self.topic,
            source,
            key: self.key,
            schema_version: self.schema_version.unwrap_or(1),
            time,
            content_type: self.content_type.unwrap_or_else(|| default_type.to_owned()),
            headers: self.headers.into_iter().map(|(name, value)| Header { name, value }).collect(),
            idempotency_key: self.idempotency_key.unwrap_or_else(|| id.to_string()),
            correlation_id: self.correlation_id.as_deref().map(|t| parse_id("correlation_id", t)).transpose()?,
            causation_id: self.causation_id.as_deref().map(|t| parse_id("causation_id", t)).transpose()?,
            payload,
        })
    }

    /// The JSON form of a stored event; the payload is shown as JSON when
    /// the content type says JSON and it parses, else as base64.
    #[must_use]
    pub fn from_event(event: &Event) -> Self {
        let (payload, payload_base64) = render_payload(&event.content_type, &event.payload);
        Self {
            id: Some(event.id.to_string()),
            topic: event.topic.clone(),
            source: Some(event.source.clone()),
            key: event.key.clone(),
            schema_version: Some(event.schema_version),
            time: Some(format_time(event.time)),
            content_type: Some(event.content_type.clone()),
            headers: event.headers.iter().map(|h| (h.name.clone(), h.value.clone())).collect(),
            idempotency_key: Some(event.idempotency_key.clone()),
            correlation_id: event.correlation_id.map(|id| id.to_string()),
            causation_id: event.causation_id.map(|id| id.to_string()),
            payload,
            payload_base64,
        }
    }

    /// The JSON form of an emitted event (no id, source or time yet).
    #[must_use]
    pub fn from_emit(emit: &Emit) -> Self {
        let (payload, payload_base64) = render_payload(&emit.content_type, &emit.payload);
        Self {
            topic: emit.topic.clone(),
            key: emit.key.clone(),
            schema_version: Some(emit.schema_version),
            content_type: Some(emit.content_type.clone()),
            headers: emit.headers.iter().map(|h| (h.name.clone(), h.value.clone())).collect(),
            idempotency_key: emit.idempotency_key.clone(),
            correlation_id: emit.correlation_id.map(|id| id.to_string()),
            causation_id: emit.causation_id.map(|id| id.to_string()),
            payload,
            payload_base64,
            ..Self::default()
        }
    }
}

fn render_payload(content_type: &str, bytes: &[u8]) -> (Option<Value>, Option<String>) {
    if bytes.is_empty() {
        return (None, None);
    }
    if content_type.contains("json")
        && let Ok(value) = serde_json::from_slice::<Value>(bytes)
    {
        return (Some(value), None);
    }
    (None, Some(BASE64.encode(bytes)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minimal_event_gets_defaults() {
        let ids = IdGenerator::new();
        let e = JsonEvent::from_json_line(r#"{"topic":"orders.order.created","payload":{"a":1}}"#)
            .unwrap()
            .into_event(&ids, "weir:test")
            .unwrap();
        assert_eq!(e.payload, br#"{"a":1}"#);
        assert_eq!(e.content_type, "application/json");
        assert_eq!(e.idempotency_key, e.id.to_string());
        assert_eq!(e.schema_version, 1);
        assert_eq!(e.source, "weir:test");
    }

    #[test]
    fn null_payload_is_kept_and_base64_round_trips() {
        let ids = IdGenerator::new();
        let e =
            JsonEvent::from_json_line(r#"{"topic":"a.b.c","payload":null}"#).unwrap().into_event(&ids, "s").unwrap();
        assert_eq!(e.payload, b"null");
        let e = JsonEvent::from_json_line(r#"{"topic":"a.b.c","payload_base64":"AAEC/w=="}"#)
            .unwrap()
            .into_event(&ids, "s")
            .unwrap();
        assert_eq!(e.payload, vec![0, 1, 2, 255]);
        assert_eq!(JsonEvent::from_event(&e).payload_base64.as_deref(), Some("AAEC/w=="));
    }

    #[test]
    fn bad_fields_are_named() {
        let ids = IdGenerator::new();
        let cases = [
            (r#"{"topic":"bad"}"#, "invalid_topic"),
            (r#"{"topic":"a.b.c","id":"nope"}"#, "invalid_id"),
            (r#"{"topic":"a.b.c","time":"yesterday"}"#, "invalid_time"),
            (r#"{"topic":"a.b.c","payload":1,"payload_base64":"AA=="}"#, "two_payloads"),
            (r#"{"topic":"a.b.c","payload_base64":"!!"}"#, "invalid_base64"),
        ];
        for (line, code) in cases {
            let err = JsonEvent::from_json_line(line).unwrap().into_event(&ids, "s").unwrap_err();
            assert_eq!(err.code(), code, "{line}");
        }
        assert_eq!(JsonEvent::from_json_line(r#"{"topic":"a.b.c","extra":1}"#).unwrap_err().code(), "invalid_json");
    }

    #[test]
    fn time_round_trips() {
        let ids = IdGenerator::new();
        let e = JsonEvent::from_json_line(r#"{"topic":"a.b.c","time":"2026-11-26T12:00:00.5Z"}"#)
            .unwrap()
            .into_event(&ids, "s")
            .unwrap();
        assert_eq!(format_time(e.time), "2026-11-26T12:00:00.5Z");
    }

    #[test]
    fn ce_keys_are_reserved_for_the_events_own_cloudevent() {
        let ids = IdGenerator::new();
        let event = |line: &str| JsonEvent::from_json_line(line).unwrap().into_event(&ids, "weir:test");
        // Any other key is the producer's business, `#` and all.
        let e = event(r##"{"topic":"a.b.c","source":"/shop","idempotency_key":"/shop#42"}"##).unwrap();
        assert_eq!(e.idempotency_key, "/shop#42");
        assert_ne!(e.idempotency_key, cloudevent_key("/shop", "42"));
        // Claiming to be the CloudEvent `/shop` + `42`, as `weir events`
        // output of one does, is allowed.
        let e = event(r##"{"topic":"a.b.c","source":"/shop","idempotency_key":"ce:/shop#42"}"##).unwrap();
        assert_eq!(e.idempotency_key, cloudevent_key("/shop", "42"));
        // The id after the source's `#` may hold anything, `#` included.
        event(r##"{"topic":"a.b.c","source":"/shop","idempotency_key":"ce:/shop#4#2"}"##).unwrap();
        // The source is checked after defaulting, and escaped.
        event(r##"{"topic":"a.b.c","idempotency_key":"ce:weir:test#1"}"##).unwrap();
        event(r##"{"topic":"a.b.c","source":"/a#b%","idempotency_key":"ce:/a%23b%25#1"}"##).unwrap();
        let refused = [
            // Another source.
            r##"{"topic":"a.b.c","source":"/other","idempotency_key":"ce:/shop#42"}"##,
            r##"{"topic":"a.b.c","idempotency_key":"ce:/shop#42"}"##,
            // A longer source that merely starts with this one.
            r##"{"topic":"a.b.c","source":"/shop","idempotency_key":"ce:/shop/x#42"}"##,
            // The source unescaped: `/a` + `b#1` is not this event's.
            r##"{"topic":"a.b.c","source":"/a#b","idempotency_key":"ce:/a#b#1"}"##,
            r##"{"topic":"a.b.c","source":"/shop","idempotency_key":"ce:/shop"}"##,
            r##"{"topic":"a.b.c","source":"/shop","idempotency_key":"ce:"}"##,
        ];
        for line in refused {
            let err = event(line).unwrap_err();
            assert_eq!(err.code(), "invalid_idempotency_key", "{line}");
            assert!(err.to_string().contains("reserved for CloudEvents"), "{err}");
        }
        // A stored event's JSON form goes back in unchanged.
        let e = event(r##"{"topic":"a.b.c","source":"/my shop#1","idempotency_key":"ce:/my shop%231#7"}"##).unwrap();
        let again = serde_json::to_string(&JsonEvent::from_event(&e)).unwrap();
        assert_eq!(event(&again).unwrap().idempotency_key, e.idempotency_key);
    }
}
