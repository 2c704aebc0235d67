//! Turning what producers send into events: the JSON envelope (one or a
//! batch) and CloudEvents 1.0 in structured, batch and binary mode. Shared by
//! the HTTP API and `weir publish`. Documented in docs/events.md.

use std::borrow::Cow;
use std::cell::Cell;
use std::collections::BTreeMap;
use std::fmt;
use std::marker::PhantomData;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde::de::{self, Deserialize, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;
use serde_json::{Map, Value};
use weir_abi::Event;

use crate::envelope::{EnvelopeError, JsonEvent};
use crate::ids::IdGenerator;

mod wire;
use wire::*;

/// Why a request's events were refused. Nothing of the request is stored.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IngestError {
    /// Event number `index` is invalid.
    #[error("event {index}: {source}")]
    Invalid {
        /// Position in the request (0-based).
        index: usize,
        /// Why.
        source: EnvelopeError,
    },
    /// Event number `index` is not a valid CloudEvent.
    #[error("event {index}: not a valid CloudEvent: {reason}")]
    CloudEvent {
        /// Position in the request.
        index: usize,
        /// Why.
        reason: String,
    },
    /// Event number `index` has a payload over the limit.
    #[error("event {index}: payload of {size} bytes exceeds the maximum of {max} bytes (ingest.max_payload_bytes)")]
    TooLarge {
        /// Position in the request.
        index: usize,
        /// Payload size.
        size: usize,
        /// The limit.
        max: usize,
    },
    /// The body is not JSON at all, or not an object or array.
    #[error("the body is not an event or an array of events: {0}")]
    Body(String),
    /// The request holds no events.
    #[error("the request holds no events")]
    Empty,
    /// The request holds more events than [`MAX_EVENTS_PER_REQUEST`].
    #[error("the request holds more than {max} events: send them in several requests")]
    TooManyEvents {
        /// The limit.
        max: usize,
    },
    /// A field of event number `index` is over its limit.
    #[error("event {index}: `{field}` is {size} bytes, over the maximum of {max} bytes")]
    FieldTooLarge {
        /// Position in the request.
        index: usize,
        /// Which field (`key`, `source`, `headers.<name>`…).
        field: String,
        /// Its size.
        size: usize,
        /// The limit.
        max: usize,
    },
    /// Event number `index` has more headers than [`MAX_HEADERS`].
    #[error("event {index}: more than {max} headers")]
    TooManyHeaders {
        /// Position in the request.
        index: usize,
        /// The limit.
        max: usize,
    },
    /// Event number `index` fails its topic's `[[schemas]]` entry: over its
    /// `max_payload_bytes`, an undeclared `schema_version`, or a payload its
    /// version's schema refuses.
    #[error("event {index}: {source}")]
    Schema {
        /// Position in the request.
        index: usize,
        /// Which check, and why.
        source: crate::schema::SchemaError,
    },
    /// Event number `index` sets a header only the host may set.
    #[error(
        "event {index}: header {name:?}: names beginning with `weir-` are reserved for the host (it sets `weir-plugin-version` on what a plugin emits)"
    )]
    ReservedHeader {
        /// Position in the request.
        index: usize,
        /// The header.
        name: String,
    },
    /// Event number `index` is on a topic of a domain only the host
    /// appends to ([`RESERVED_TOPIC_DOMAINS`]).
    #[error(
        "event {index}: topic {topic:?}: the domain `{domain}` is reserved for the host's saga coordinators (their timers, admin actions and failure alerts); producers cannot publish to it"
    )]
    ReservedTopic {
        /// Position in the request.
        index: usize,
        /// The topic.
        topic: String,
        /// Its reserved domain.
        domain: &'static str,
    },
}

/// Most events one request may hold.
pub const MAX_EVENTS_PER_REQUEST: usize = 10_000;
/// Longest `source`, in bytes.
pub const MAX_SOURCE_BYTES: usize = 512;
/// Longest `key` (a CloudEvent's `subject`), in bytes.
pub const MAX_KEY_BYTES: usize = 1024;
/// Longest `idempotency_key`, in bytes (a CloudEvent's is `ce:`, its
/// escaped source, `#` and its id).
pub const MAX_IDEMPOTENCY_KEY_BYTES: usize = 4096;
/// Longest `content_type`, in bytes.
pub const MAX_CONTENT_TYPE_BYTES: usize = 256;
/// Most headers of one event (a CloudEvent's extension attributes).
pub const MAX_HEADERS: usize = 64;
/// Longest header name, in bytes.
pub const MAX_HEADER_NAME_BYTES: usize = 256;
/// Longest header value, in bytes.
pub const MAX_HEADER_VALUE_BYTES: usize = 4096;
/// Most bytes of one event's headers, names and values together.
pub const MAX_HEADERS_BYTES: usize = 16 << 10;
/// Header names with this prefix (in any case) are the host's: a producer
/// cannot set them.
pub const RESERVED_HEADER_PREFIX: &str = "weir-";
/// Topic domains (first segments) only the host appends to: a producer's
/// event there is refused at every ingest path (HTTP, `weir publish`,
/// stream appends, the JetStream source). `weir-saga` is the saga
/// coordinators' own (`weir-saga.<name>.timer`, `.admin`, `.failed`): a
/// forged timer or admin event would drive an instance.
pub const RESERVED_TOPIC_DOMAINS: &[&str] = &[crate::config::SAGA_TOPIC_DOMAIN];

/// The reserved domain ([`RESERVED_TOPIC_DOMAINS`]) `topic` is in, if any.
/// The one test every path that appends someone else's event makes: ingest
/// (a producer's), a handler's emit and scheduled emit (`delivery`), an
/// aggregate's decided event, and the `[[entities]]` and `[[sagas]]`
/// configuration.
#[must_use]
pub(crate) fn reserved_topic_domain(topic: &str) -> Option<&'static str> {
    let domain = topic.split('.').next().unwrap_or_default();
    RESERVED_TOPIC_DOMAINS.iter().copied().find(|d| *d == domain)
}

impl IngestError {
    /// Stable code.
    #[must_use]
    pub fn code(&self) -> &'static str {
        match self {
            Self::Invalid { source, .. } => source.code(),
            Self::CloudEvent { .. } => "invalid_cloudevent",
            Self::TooLarge { .. } => "payload_too_large",
            Self::Body(_) => "invalid_json",
            Self::Empty => "empty",
            Self::TooManyEvents { .. } => "too_many_events",
            Self::FieldTooLarge { .. } => "field_too_large",
            Self::TooManyHeaders { .. } => "too_many_headers",
            Self::ReservedHeader { .. } => "reserved_header",
            Self::ReservedTopic { .. } => "reserved_topic",
            Self::Schema { source, .. } => source.code(),
        }
    }

    /// Index of the offending event, if one is to blame.
    #[must_use]
    pub fn index(&self) -> Option<usize> {
        match self {
            Self::Invalid { index, .. }
            | Self::CloudEvent { index, .. }
            | Self::TooLarge { index, .. }
            | Self::FieldTooLarge { index, .. }
            | Self::TooManyHeaders { index, .. }
            | Self::ReservedHeader { index, .. }
            | Self::ReservedTopic { index, .. }
            | Self::Schema { index, .. } => Some(*index),
            _ => None,
        }
    }
}

/// The idempotency key of the CloudEvent with this `source` and `id`:
/// `ce:` + `source` with every `%` written `%25` and every `#` written `%23`,
/// then `#`, then `id` as given.
///
/// The escaped source holds no `#`, so the first `#` after `ce:` ends it and
/// two different (source, id) pairs never share a key. (The old
/// `<source>#<id>` did: `/shop#1` + `2` and `/shop` + `1#2`.) By the
/// CloudEvents spec, source + id identify an event, so the same CloudEvent
/// sent twice, in any mode, gets the same key and is a duplicate. Keys
/// beginning with `ce:` are reserved for these: a JSON event may only give
/// one for its own source (see [`JsonEvent::into_event`]).
#[must_use]
pub fn cloudevent_key(source: &str, id: &str) -> String {
    let mut key = String::with_capacity(3 + source.len() + 1 + id.len());
    key.push_str("ce:");
    for c in source.chars() {
        match c {
            '%' => key.push_str("%25"),
            '#' => key.push_str("%23"),
            c => key.push(c),
        }
    }
    key.push('#');
    key.push_str(id);
    key
}

/// The field limits every ingest path applies, for an event built outside
/// this module (the JetStream source).
pub(crate) fn check_event(event: &Event) -> Result<(), IngestError> {
    check_fields(0, event)
}

/// Validation settings of an ingest path.
#[derive(Debug, Clone, Copy)]
pub struct Ingest<'a> {
    /// Id generator for new events.
    pub ids: &'a IdGenerator,
    /// Default `source`.
    pub source: &'a str,
    /// Largest payload.
    pub max_payload_bytes: usize,
    /// The payload schemas every event is checked against (`[[schemas]]`);
    /// `None` checks none.
    pub schemas: Option<&'a crate::schema::Schemas>,
}

impl Ingest<'_> {
    fn finish(&self, index: usize, json: JsonEvent) -> Result<Event, IngestError> {
        let event = json.into_event(self.ids, self.source).map_err(|source| IngestError::Invalid { index, source })?;
        if event.payload.len() > self.max_payload_bytes {
            return Err(IngestError::TooLarge { index, size: event.payload.len(), max: self.max_payload_bytes });
        }
        check_fields(index, &event)?;
        if let Some(schemas) = self.schemas {
            schemas
                .check(&event.topic, event.schema_version, &event.payload)
                .map_err(|source| IngestError::Schema { index, source })?;
        }
        Ok(event)
    }

    /// Events in the JSON envelope form: one object or an array. Parsed
    /// straight into events (no intermediate JSON tree), at most
    /// [`MAX_EVENTS_PER_REQUEST`], each payload size-checked before it is
    /// parsed.
    ///
    /// # Errors
    ///
    /// The first invalid event, by index.
    pub fn json(&self, body: &[u8]) -> Result<Vec<Event>, IngestError> {
        let items: Vec<WireEvent<'_>> = batch(body, true)
            .map_err(|e| e.into_ingest(|index, e| IngestError::Invalid { index, source: EnvelopeError::Json(e) }))?;
        if items.is_empty() {
            return Err(IngestError::Empty);
        }
        items
            .into_iter()
            .enumerate()
            .map(|(index, item)| {
                let json = item.into_json(index, self.max_payload_bytes)?;
                self.finish(index, json)
            })
            .collect()
    }

    /// One CloudEvent in structured mode (`application/cloudevents+json`).
    ///
    /// # Errors
    ///
    /// If it is not a valid CloudEvent or not a valid Weir event.
    pub fn cloudevent(&self, body: &[u8]) -> Result<Vec<Event>, IngestError> {
        HEADERS_OVER.set(false);
        let attributes: Attributes<'_> = serde_json::from_slice(body).map_err(|e| {
            if HEADERS_OVER.take() {
                IngestError::TooManyHeaders { index: 0, max: MAX_HEADERS }
            } else {
                IngestError::Body(e.to_string())
            }
        })?;
        Ok(vec![self.structured(0, attributes)?])
    }

    /// A batch of CloudEvents (`application/cloudevents-batch+json`), at most
    /// [`MAX_EVENTS_PER_REQUEST`].
    ///
    /// # Errors
    ///
    /// The first invalid event, by index.
    pub fn cloudevent_batch(&self, body: &[u8]) -> Result<Vec<Event>, IngestError> {
        let items: Vec<Attributes<'_>> = batch(body, false)
            .map_err(|e| e.into_ingest(|index, e| IngestError::CloudEvent { index, reason: e.to_string() }))?;
        if items.is_empty() {
            return Err(IngestError::Empty);
        }
        items.into_iter().enumerate().map(|(index, item)| self.structured(index, item)).collect()
    }

    fn structured(&self, index: usize, attributes: Attributes<'_>) -> Result<Event, IngestError> {
        let bad = |reason: String| IngestError::CloudEvent { index, reason };
        // Every attribute but `data` as JSON: strings cost their size, and
        // anything else is bounded before it is parsed. `data` is the
        // payload, size-checked before it is parsed.
        let mut data: Option<&RawValue> = None;
        let mut ce = Map::new();
        for (name, raw) in attributes.0 {
            if name == "data" {
                data = Some(raw);
                continue;
            }
            let text = raw.get();
            if !text.starts_with('"') && text.len() > MAX_HEADER_VALUE_BYTES {
                let size = text.len();
                return Err(IngestError::FieldTooLarge { index, field: name, size, max: MAX_HEADER_VALUE_BYTES });
            }
            let value: Value = serde_json::from_str(text).map_err(|e| bad(format!("`{name}`: {e}")))?;
            ce.insert(name, value);
        }
        let data = match data {
            None => None,
            Some(raw) => Some(parse_payload(index, raw, self.max_payload_bytes)?),
        };
        let take_str =
            |ce: &mut Map<String, Value>, name: &str, required: bool| -> Result<Option<String>, IngestError> {
                match ce.remove(name) {
                    Some(Value::String(s)) => Ok(Some(s)),
                    Some(other) => Err(bad(format!("`{name}` must be a string, not {other}"))),
                    None if required => Err(bad(format!("`{name}` is required"))),
                    None => Ok(None),
                }
            };
        let spec = take_str(&mut ce, "specversion", true)?.unwrap_or_default();
        if spec != "1.0" {
            return Err(bad(format!("specversion {spec:?} is not supported (only \"1.0\")")));
        }
        let topic = take_str(&mut ce, "type", true)?.unwrap_or_default();
        let source = take_str(&mut ce, "source", true)?.unwrap_or_default();
        let id = take_str(&mut ce, "id", true)?.unwrap_or_default();
        let subject = take_str(&mut ce, "subject", false)?;
        let time = take_str(&mut ce, "time", false)?;
        let content_type = take_str(&mut ce, "datacontenttype", false)?;
        let dataschema = take_str(&mut ce, "dataschema", false)?;
        let data_base64 = take_str(&mut ce, "data_base64", false)?;
        let schema_version = match ce.remove("schemaversion") {
            None => None,
            Some(v) => Some(
                parse_schema_version(&v).ok_or_else(|| bad(format!("`schemaversion` {v} is not a whole number")))?,
            ),
        };
        let mut headers: std::collections::BTreeMap<String, String> = ce
            .into_iter()
            .map(|(name, value)| match value {
                Value::String(s) => (name, s),
                other => (name, other.to_string()),
            })
            .collect();
        if let Some(dataschema) = dataschema {
            headers.insert("dataschema".to_owned(), dataschema);
        }
        let json_like = content_type.as_deref().is_none_or(|ct| ct.contains("json"));
        let (payload, payload_base64) = match (data, data_base64) {
            (Some(_), Some(_)) => return Err(bad("give either `data` or `data_base64`, not both".into())),
            (Some(Value::String(text)), None) if !json_like => (None, Some(BASE64.encode(text.as_bytes()))),
            (Some(value), None) => (Some(value), None),
            (None, b64) => (None, b64),
        };
        let json = JsonEvent {
            id: None,
            topic,
            idempotency_key: Some(cloudevent_key(&source, &id)),
            source: Some(source),
            key: subject,
            schema_version,
            time,
            content_type,
            headers,
            correlation_id: None,
            causation_id: None,
            payload,
            payload_base64,
        };
        self.finish(index, json)
    }

    /// One CloudEvent in binary mode: attributes in `ce-*` headers, the body
    /// as the payload. `headers` are the request's (name, raw value) pairs,
    /// all of them: names are matched without regard to case, and each
    /// `ce-*` value is decoded as the CloudEvents HTTP binding says (§3.1.3.2):
    /// enclosing double quotes removed (with their backslash escapes), then
    /// one round of percent-decoding, then UTF-8. `content-type` is the data
    /// content type, taken as it is.
    ///
    /// # Errors
    ///
    /// If required attributes are missing, a header value cannot be decoded
    /// (the error names the header), or the event is invalid.
    pub fn cloudevent_binary(&self, headers: &[(&str, &[u8])], body: Vec<u8>) -> Result<Vec<Event>, IngestError> {
        let bad = |reason: String| IngestError::CloudEvent { index: 0, reason };
        // (attribute name without `ce-`, decoded value), in request order.
        let mut attributes: Vec<(String, String)> = Vec::new();
        let mut content_type = None;
        for (name, raw) in headers {
            let name = name.to_ascii_lowercase();
            if let Some(attribute) = name.strip_prefix("ce-") {
                let value = decode_header_value(raw).map_err(|why| bad(format!("`{name}` {why}")))?;
                attributes.push((attribute.to_owned(), value));
            } else if name == "content-type" && content_type.is_none() {
                let text = std::str::from_utf8(raw).map_err(|_| bad("`content-type` is not valid UTF-8".into()))?;
                content_type = Some(text.to_owned());
            }
        }
        let get = |name: &str| attributes.iter().find(|(n, _)| n == name).map(|(_, v)| v.clone());
        let spec = get("specversion").ok_or_else(|| bad("`ce-specversion` is required".into()))?;
        if spec != "1.0" {
            return Err(bad(format!("specversion {spec:?} is not supported (only \"1.0\")")));
        }
        let required = |name: &str| get(name).ok_or_else(|| bad(format!("`ce-{name}` is required")));
        let topic = required("type")?;
        let source = required("source")?;
        let id = required("id")?;
        let schema_version = match get("schemaversion") {
            None => None,
            Some(v) => Some(v.parse().map_err(|_| bad(format!("`ce-schemaversion` {v:?} is not a whole number")))?),
        };
        let known = ["specversion", "type", "source", "id", "subject", "time", "schemaversion", "dataschema"];
        // Reversed, so that of a header given twice the first value wins, as in `get`.
        let mut extensions: std::collections::BTreeMap<String, String> =
            attributes.iter().rev().filter(|(n, _)| !known.contains(&n.as_str())).cloned().collect();
        if let Some(dataschema) = get("dataschema") {
            extensions.insert("dataschema".to_owned(), dataschema);
        }
        let json = JsonEvent {
            id: None,
            topic,
            idempotency_key: Some(cloudevent_key(&source, &id)),
            source: Some(source),
            key: get("subject"),
            schema_version,
            time: get("time"),
            content_type: Some(content_type.unwrap_or_else(|| "application/octet-stream".into())),
            headers: extensions,
            correlation_id: None,
            causation_id: None,
            payload: None,
            payload_base64: (!body.is_empty()).then(|| BASE64.encode(&body)),
        };
        Ok(vec![self.finish(0, json)?])
    }
}

#[cfg(test)]
mod tests;
