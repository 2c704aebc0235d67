//! Turning what producers send into events: the JSON envelope (one or a
//! batch) and CloudEvents 1.0 in structured, batch and binary mode. Shared by
//! the HTTP API and `weir publish`. Documented in docs/events.md.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde_json::{Map, Value};
use weir_abi::Event;

use crate::envelope::{EnvelopeError, JsonEvent};
use crate::ids::IdGenerator;

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
        }
    }

    /// Index of the offending event, if one is to blame.
    #[must_use]
    pub fn index(&self) -> Option<usize> {
        match self {
            Self::Invalid { index, .. } | Self::CloudEvent { index, .. } | Self::TooLarge { index, .. } => Some(*index),
            _ => None,
        }
    }
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
}

impl Ingest<'_> {
    fn finish(&self, index: usize, json: JsonEvent) -> Result<Event, IngestError> {
        let event = json.into_event(self.ids, self.source).map_err(|source| IngestError::Invalid { index, source })?;
        if event.payload.len() > self.max_payload_bytes {
            return Err(IngestError::TooLarge { index, size: event.payload.len(), max: self.max_payload_bytes });
        }
        Ok(event)
    }

    /// Events in the JSON envelope form: one object or an array.
    ///
    /// # Errors
    ///
    /// The first invalid event, by index.
    pub fn json(&self, body: &[u8]) -> Result<Vec<Event>, IngestError> {
        let value: Value = serde_json::from_slice(body).map_err(|e| IngestError::Body(e.to_string()))?;
        let items = match value {
            Value::Array(items) => items,
            Value::Object(_) => vec![value],
            _ => return Err(IngestError::Body("expected a JSON object or array".into())),
        };
        if items.is_empty() {
            return Err(IngestError::Empty);
        }
        items
            .into_iter()
            .enumerate()
            .map(|(index, item)| {
                let json: JsonEvent = serde_json::from_value(item)
                    .map_err(|e| IngestError::Invalid { index, source: EnvelopeError::Json(e) })?;
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
        let value: Value = serde_json::from_slice(body).map_err(|e| IngestError::Body(e.to_string()))?;
        let Value::Object(object) = value else {
            return Err(IngestError::Body("a structured CloudEvent is a JSON object".into()));
        };
        Ok(vec![self.structured(0, object)?])
    }

    /// A batch of CloudEvents (`application/cloudevents-batch+json`).
    ///
    /// # Errors
    ///
    /// The first invalid event, by index.
    pub fn cloudevent_batch(&self, body: &[u8]) -> Result<Vec<Event>, IngestError> {
        let value: Value = serde_json::from_slice(body).map_err(|e| IngestError::Body(e.to_string()))?;
        let Value::Array(items) = value else {
            return Err(IngestError::Body("a CloudEvents batch is a JSON array".into()));
        };
        if items.is_empty() {
            return Err(IngestError::Empty);
        }
        items
            .into_iter()
            .enumerate()
            .map(|(index, item)| match item {
                Value::Object(object) => self.structured(index, object),
                _ => Err(IngestError::CloudEvent { index, reason: "not a JSON object".into() }),
            })
            .collect()
    }

    fn structured(&self, index: usize, mut ce: Map<String, Value>) -> Result<Event, IngestError> {
        let bad = |reason: String| IngestError::CloudEvent { index, reason };
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
        let _dataschema = take_str(&mut ce, "dataschema", false)?;
        let data = ce.remove("data");
        let data_base64 = take_str(&mut ce, "data_base64", false)?;
        let schema_version = match ce.remove("schemaversion") {
            None => None,
            Some(v) => Some(
                parse_schema_version(&v).ok_or_else(|| bad(format!("`schemaversion` {v} is not a whole number")))?,
            ),
        };
        let headers = ce
            .into_iter()
            .map(|(name, value)| match value {
                Value::String(s) => (name, s),
                other => (name, other.to_string()),
            })
            .collect();
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
            idempotency_key: Some(format!("{source}#{id}")),
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
    /// as the payload. `headers` are (lowercase name, value) pairs.
    ///
    /// # Errors
    ///
    /// If required attributes are missing or the event is invalid.
    pub fn cloudevent_binary(&self, headers: &[(String, String)], body: Vec<u8>) -> Result<Vec<Event>, IngestError> {
        let bad = |reason: String| IngestError::CloudEvent { index: 0, reason };
        let get = |name: &str| headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.clone());
        let spec = get("ce-specversion").ok_or_else(|| bad("`ce-specversion` is required".into()))?;
        if spec != "1.0" {
            return Err(bad(format!("specversion {spec:?} is not supported (only \"1.0\")")));
        }
        let required = |name: &str| get(name).ok_or_else(|| bad(format!("`{name}` is required")));
        let topic = required("ce-type")?;
        let source = required("ce-source")?;
        let id = required("ce-id")?;
        let schema_version = match get("ce-schemaversion") {
            None => None,
            Some(v) => Some(v.parse().map_err(|_| bad(format!("`ce-schemaversion` {v:?} is not a whole number")))?),
        };
        let known = [
            "ce-specversion",
            "ce-type",
            "ce-source",
            "ce-id",
            "ce-subject",
            "ce-time",
            "ce-schemaversion",
            "ce-dataschema",
        ];
        let extensions = headers
            .iter()
            .filter(|(n, _)| n.starts_with("ce-") && !known.contains(&n.as_str()))
            .map(|(n, v)| (n["ce-".len()..].to_owned(), v.clone()))
            .collect();
        let json = JsonEvent {
            id: None,
            topic,
            idempotency_key: Some(format!("{source}#{id}")),
            source: Some(source),
            key: get("ce-subject"),
            schema_version,
            time: get("ce-time"),
            content_type: Some(get("content-type").unwrap_or_else(|| "application/octet-stream".into())),
            headers: extensions,
            correlation_id: None,
            causation_id: None,
            payload: None,
            payload_base64: (!body.is_empty()).then(|| BASE64.encode(&body)),
        };
        Ok(vec![self.finish(0, json)?])
    }
}

fn parse_schema_version(v: &Value) -> Option<u32> {
    match v {
        Value::Number(n) => n.as_u64().and_then(|n| u32::try_from(n).ok()),
        Value::String(s) => s.parse().ok(),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ingest(ids: &IdGenerator) -> Ingest<'_> {
        Ingest { ids, source: "weir:test", max_payload_bytes: 64 }
    }

    #[test]
    fn json_single_and_batch() {
        let ids = IdGenerator::new();
        assert_eq!(ingest(&ids).json(br#"{"topic":"a.b.c"}"#).unwrap().len(), 1);
        assert_eq!(ingest(&ids).json(br#"[{"topic":"a.b.c"},{"topic":"a.b.d"}]"#).unwrap().len(), 2);
        let e = ingest(&ids).json(br#"[{"topic":"a.b.c"},{"topic":"nope"}]"#).unwrap_err();
        assert_eq!((e.code(), e.index()), ("invalid_topic", Some(1)));
        assert_eq!(ingest(&ids).json(b"[]").unwrap_err().code(), "empty");
        assert_eq!(ingest(&ids).json(b"{oops").unwrap_err().code(), "invalid_json");
        let big = format!(r#"{{"topic":"a.b.c","payload":"{}"}}"#, "x".repeat(100));
        assert_eq!(ingest(&ids).json(big.as_bytes()).unwrap_err().code(), "payload_too_large");
    }

    #[test]
    fn structured_cloudevent_maps_type_subject_and_id() {
        let ids = IdGenerator::new();
        let body = br#"{"specversion":"1.0","type":"orders.order.created","source":"/shop","id":"42",
            "subject":"o-1","datacontenttype":"application/json","data":{"x":1},"tenant":"acme","schemaversion":2}"#;
        let e = &ingest(&ids).cloudevent(body).unwrap()[0];
        assert_eq!(e.topic, "orders.order.created");
        assert_eq!(e.key.as_deref(), Some("o-1"));
        assert_eq!(e.idempotency_key, "/shop#42");
        assert_eq!(e.source, "/shop");
        assert_eq!(e.payload, br#"{"x":1}"#);
        assert_eq!(e.schema_version, 2);
        assert_eq!(e.header("tenant"), Some("acme"));
        let missing = ingest(&ids).cloudevent(br#"{"specversion":"1.0","type":"a.b.c","source":"/s"}"#).unwrap_err();
        assert!(missing.to_string().contains("`id` is required"));
        let batch = br#"[{"specversion":"1.0","type":"a.b.c","source":"/s","id":"1","data_base64":"AAE="}]"#;
        assert_eq!(ingest(&ids).cloudevent_batch(batch).unwrap()[0].payload, vec![0, 1]);
    }

    #[test]
    fn binary_cloudevent_reads_headers() {
        let ids = IdGenerator::new();
        let headers: Vec<(String, String)> = [
            ("ce-specversion", "1.0"),
            ("ce-type", "orders.order.created"),
            ("ce-source", "/shop"),
            ("ce-id", "7"),
            ("ce-subject", "o-7"),
            ("ce-traceparent", "00-abc"),
            ("content-type", "text/plain"),
        ]
        .iter()
        .map(|(a, b)| ((*a).to_owned(), (*b).to_owned()))
        .collect();
        let e = &ingest(&ids).cloudevent_binary(&headers, b"hello".to_vec()).unwrap()[0];
        assert_eq!(e.payload, b"hello");
        assert_eq!(e.content_type, "text/plain");
        assert_eq!(e.key.as_deref(), Some("o-7"));
        assert_eq!(e.header("traceparent"), Some("00-abc"));
    }
}
