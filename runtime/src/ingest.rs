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
            | Self::ReservedHeader { index, .. } => Some(*index),
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
        check_fields(index, &event)?;
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

/// The limits on an event's fields other than its payload, and the
/// reserved header prefix.
fn check_fields(index: usize, event: &Event) -> Result<(), IngestError> {
    let over = |field: &str, size: usize, max: usize| {
        (size > max).then(|| IngestError::FieldTooLarge { index, field: field.to_owned(), size, max })
    };
    let fields = [
        over("source", event.source.len(), MAX_SOURCE_BYTES),
        over("key", event.key.as_ref().map_or(0, String::len), MAX_KEY_BYTES),
        over("idempotency_key", event.idempotency_key.len(), MAX_IDEMPOTENCY_KEY_BYTES),
        over("content_type", event.content_type.len(), MAX_CONTENT_TYPE_BYTES),
    ];
    if let Some(error) = fields.into_iter().flatten().next() {
        return Err(error);
    }
    if event.headers.len() > MAX_HEADERS {
        return Err(IngestError::TooManyHeaders { index, max: MAX_HEADERS });
    }
    let mut total = 0usize;
    for header in &event.headers {
        if header.name.len() >= RESERVED_HEADER_PREFIX.len()
            && header.name.as_bytes()[..RESERVED_HEADER_PREFIX.len()]
                .eq_ignore_ascii_case(RESERVED_HEADER_PREFIX.as_bytes())
        {
            return Err(IngestError::ReservedHeader { index, name: header.name.clone() });
        }
        let field = format!("headers.{}", header.name.chars().take(64).collect::<String>());
        if let Some(error) = over(&format!("{field} (its name)"), header.name.len(), MAX_HEADER_NAME_BYTES)
            .or_else(|| over(&field, header.value.len(), MAX_HEADER_VALUE_BYTES))
        {
            return Err(error);
        }
        total = total.saturating_add(header.name.len() + header.value.len());
    }
    if let Some(error) = over("headers", total, MAX_HEADERS_BYTES) {
        return Err(error);
    }
    Ok(())
}

/// The length `raw` JSON has without the whitespace between its tokens:
/// about the size of the payload it becomes, known before it is parsed.
fn compact_len(raw: &str) -> usize {
    let (mut n, mut in_string, mut escaped) = (0usize, false, false);
    for &b in raw.as_bytes() {
        if in_string {
            n += 1;
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
        } else if !matches!(b, b' ' | b'\n' | b'\r' | b'\t') {
            n += 1;
            in_string = b == b'"';
        }
    }
    n
}

/// A JSON payload, refused by its size before it is parsed (a payload of
/// `[0,0,…]` takes ~35 times its size as a JSON tree).
fn parse_payload(index: usize, raw: &RawValue, max: usize) -> Result<Value, IngestError> {
    let size = compact_len(raw.get());
    if size > max {
        return Err(IngestError::TooLarge { index, size, max });
    }
    serde_json::from_str(raw.get()).map_err(|e| IngestError::Invalid { index, source: EnvelopeError::Json(e) })
}

thread_local! {
    /// Set when a header map or attribute object went over [`MAX_HEADERS`]
    /// while being parsed (serde's error cannot say which limit it was).
    static HEADERS_OVER: Cell<bool> = const { Cell::new(false) };
}

/// An event in the JSON envelope, as parsed: [`JsonEvent`] with its payload
/// still JSON text (borrowed from the body, never copied) and its headers
/// bounded.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct WireEvent<'a> {
    #[serde(default)]
    id: Option<String>,
    topic: String,
    #[serde(default)]
    source: Option<String>,
    #[serde(default)]
    key: Option<String>,
    #[serde(default)]
    schema_version: Option<u32>,
    #[serde(default)]
    time: Option<String>,
    #[serde(default)]
    content_type: Option<String>,
    #[serde(default, deserialize_with = "bounded_headers")]
    headers: BTreeMap<String, String>,
    #[serde(default)]
    idempotency_key: Option<String>,
    #[serde(default)]
    correlation_id: Option<String>,
    #[serde(default)]
    causation_id: Option<String>,
    /// Present (even as `null`) or not.
    #[serde(default, borrow, deserialize_with = "present_raw")]
    payload: Option<&'a RawValue>,
    #[serde(default)]
    payload_base64: Option<String>,
}

impl WireEvent<'_> {
    fn into_json(self, index: usize, max_payload: usize) -> Result<JsonEvent, IngestError> {
        let payload = match self.payload {
            None => None,
            Some(raw) => Some(parse_payload(index, raw, max_payload)?),
        };
        Ok(JsonEvent {
            id: self.id,
            topic: self.topic,
            source: self.source,
            key: self.key,
            schema_version: self.schema_version,
            time: self.time,
            content_type: self.content_type,
            headers: self.headers,
            idempotency_key: self.idempotency_key,
            correlation_id: self.correlation_id,
            causation_id: self.causation_id,
            payload,
            payload_base64: self.payload_base64,
        })
    }
}

fn present_raw<'de, D: Deserializer<'de>>(d: D) -> Result<Option<&'de RawValue>, D::Error> {
    <&RawValue>::deserialize(d).map(Some)
}

/// A header object of at most [`MAX_HEADERS`] entries.
fn bounded_headers<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeMap<String, String>, D::Error> {
    struct Headers;
    impl<'de> Visitor<'de> for Headers {
        type Value = BTreeMap<String, String>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("an object of string header values")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut headers = BTreeMap::new();
            while let Some((name, value)) = map.next_entry::<String, String>()? {
                if headers.len() >= MAX_HEADERS && !headers.contains_key(&name) {
                    HEADERS_OVER.set(true);
                    return Err(de::Error::custom(format_args!("more than {MAX_HEADERS} headers")));
                }
                headers.insert(name, value);
            }
            Ok(headers)
        }
    }
    d.deserialize_map(Headers)
}

/// A structured CloudEvent's attributes, as JSON text each, at most
/// [`MAX_HEADERS`] + 16 of them.
struct Attributes<'a>(Vec<(String, &'a RawValue)>);

impl<'de: 'a, 'a> Deserialize<'de> for Attributes<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Object;
        impl<'de> Visitor<'de> for Object {
            type Value = Attributes<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a CloudEvent (a JSON object)")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Attributes<'de>, A::Error> {
                let mut attributes: Vec<(String, &'de RawValue)> = Vec::new();
                while let Some((name, value)) = map.next_entry::<String, &'de RawValue>()? {
                    // A name given twice: the last value wins, as in a JSON object.
                    if let Some(slot) = attributes.iter_mut().find(|(n, _)| *n == name) {
                        slot.1 = value;
                        continue;
                    }
                    if attributes.len() >= MAX_HEADERS + 16 {
                        HEADERS_OVER.set(true);
                        return Err(de::Error::custom(format_args!("more than {} attributes", MAX_HEADERS + 16)));
                    }
                    attributes.push((name, value));
                }
                Ok(Attributes(attributes))
            }
        }
        d.deserialize_map(Object)
    }
}

/// Why [`batch`] failed.
enum BatchError {
    /// More than [`MAX_EVENTS_PER_REQUEST`].
    TooMany,
    /// Item `index` could not be parsed; whether it had too many headers.
    Item(usize, serde_json::Error, bool),
    /// The body as a whole is not what was expected.
    Body(serde_json::Error),
}

impl BatchError {
    fn into_ingest(self, item: impl FnOnce(usize, serde_json::Error) -> IngestError) -> IngestError {
        match self {
            Self::TooMany => IngestError::TooManyEvents { max: MAX_EVENTS_PER_REQUEST },
            Self::Item(index, _, true) => IngestError::TooManyHeaders { index, max: MAX_HEADERS },
            Self::Item(index, e, false) => item(index, e),
            Self::Body(e) => IngestError::Body(e.to_string()),
        }
    }
}

/// An array of up to [`MAX_EVENTS_PER_REQUEST`] `T` (or, with `single`,
/// one `T` as an object), parsed straight from `body`: past the limit the
/// parse stops, so a huge batch never lives in memory whole.
fn batch<'de, T: Deserialize<'de>>(body: &'de [u8], single: bool) -> Result<Vec<T>, BatchError> {
    struct Items<'c, T> {
        single: bool,
        at: &'c Cell<Option<usize>>,
        too_many: &'c Cell<bool>,
        item: PhantomData<T>,
    }
    impl<'de, T: Deserialize<'de>> Visitor<'de> for Items<'_, T> {
        type Value = Vec<T>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(if self.single { "an event (a JSON object) or an array of events" } else { "a JSON array" })
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<T>, A::Error> {
            let mut items = Vec::new();
            loop {
                if items.len() == MAX_EVENTS_PER_REQUEST {
                    if seq.next_element::<IgnoredAny>()?.is_some() {
                        self.too_many.set(true);
                        return Err(de::Error::custom("too many events"));
                    }
                    return Ok(items);
                }
                self.at.set(Some(items.len()));
                match seq.next_element::<T>()? {
                    Some(item) => items.push(item),
                    None => {
                        self.at.set(None);
                        return Ok(items);
                    }
                }
            }
        }
        fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Vec<T>, A::Error> {
            if !self.single {
                return Err(de::Error::invalid_type(de::Unexpected::Map, &self));
            }
            self.at.set(Some(0));
            let item = T::deserialize(de::value::MapAccessDeserializer::new(map))?;
            self.at.set(None);
            Ok(vec![item])
        }
    }
    let (at, too_many) = (Cell::new(None), Cell::new(false));
    HEADERS_OVER.set(false);
    let mut de = serde_json::Deserializer::from_slice(body);
    let parsed = de
        .deserialize_any(Items { single, at: &at, too_many: &too_many, item: PhantomData })
        .and_then(|items| de.end().map(|()| items));
    parsed.map_err(|e| {
        if too_many.get() {
            BatchError::TooMany
        } else if let Some(index) = at.get() {
            BatchError::Item(index, e, HEADERS_OVER.take())
        } else {
            BatchError::Body(e)
        }
    })
}

/// Decode one binary-mode `ce-*` header value (CloudEvents HTTP binding
/// §3.1.3.2): a value that starts with `"` must be an RFC 7230 quoted string,
/// whose quotes are removed and backslash escapes resolved; then every `%xy`
/// (hex digits of either case) becomes the byte `xy`; the bytes must be
/// UTF-8 (which refuses overlong forms such as `%C0%A0`). Raw bytes outside
/// ASCII are accepted as they are, as long as the result is UTF-8. The error
/// completes "`ce-<name>` …".
fn decode_header_value(raw: &[u8]) -> Result<String, String> {
    let unquoted = if raw.first() == Some(&b'"') {
        Cow::Owned(unquote(raw).ok_or("starts with a double quote but is not a valid quoted string")?)
    } else {
        Cow::Borrowed(raw)
    };
    let mut bytes = Vec::with_capacity(unquoted.len());
    let mut rest = unquoted.as_ref();
    while let Some((&first, tail)) = rest.split_first() {
        if first == b'%' {
            let byte = match tail {
                [hi, lo, ..] => hex(*hi).zip(hex(*lo)).map(|(hi, lo)| hi << 4 | lo),
                _ => None,
            };
            let Some(byte) = byte else {
                let shown: String = String::from_utf8_lossy(&rest[..rest.len().min(3)]).into_owned();
                return Err(format!(
                    "has a malformed percent escape {shown:?}: `%` must be followed by two hex digits (write `%25` for `%`)"
                ));
            };
            bytes.push(byte);
            rest = &tail[2..];
        } else {
            bytes.push(first);
            rest = tail;
        }
    }
    String::from_utf8(bytes).map_err(|_| "is not valid UTF-8 after percent-decoding".to_owned())
}

/// The content of an RFC 7230 §3.2.6 quoted string that is all of `raw`, or
/// `None` if `raw` is not one (no closing quote, text after it, or a
/// trailing backslash).
fn unquote(raw: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(raw.len());
    let mut rest = raw.strip_prefix(b"\"")?;
    loop {
        let (&first, tail) = rest.split_first()?;
        match first {
            b'"' => return tail.is_empty().then_some(out),
            b'\\' => {
                let (&escaped, tail) = tail.split_first()?;
                out.push(escaped);
                rest = tail;
            }
            other => {
                out.push(other);
                rest = tail;
            }
        }
    }
}

fn hex(digit: u8) -> Option<u8> {
    char::from(digit).to_digit(16).and_then(|d| u8::try_from(d).ok())
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
    fn compact_len_skips_whitespace_between_tokens_only() {
        assert_eq!(compact_len(r#" { "a" : [ 1 , 2 ] } "#), r#"{"a":[1,2]}"#.len());
        assert_eq!(compact_len(r#""a b \" c""#), r#""a b \" c""#.len());
        assert_eq!(compact_len("\"\\\\\" "), 4);
    }

    #[test]
    fn payloads_keep_their_meaning_through_the_raw_parse() {
        let ids = IdGenerator::new();
        let e = &ingest(&ids).json(br#"{"topic":"a.b.c","payload":null}"#).unwrap()[0];
        assert_eq!(e.payload, b"null");
        let e = &ingest(&ids).json(br#"{"topic":"a.b.c"}"#).unwrap()[0];
        assert!(e.payload.is_empty());
        // Whitespace does not count against the limit; the stored form is compact.
        let pretty = format!("{{\"topic\":\"a.b.c\",\"payload\":{{ {} \"x\" :  1 }}}}", " ".repeat(500));
        let e = &ingest(&ids).json(pretty.as_bytes()).unwrap()[0];
        assert_eq!(e.payload, br#"{"x":1}"#);
        let ce = br#"{"specversion":"1.0","type":"a.b.c","source":"/s","id":"1","data":[0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0]}"#;
        let e = ingest(&ids).cloudevent(ce).unwrap_err();
        assert_eq!((e.code(), e.index()), ("payload_too_large", Some(0)));
    }

    #[test]
    fn a_batch_stops_at_the_event_limit_and_headers_at_theirs() {
        let ids = IdGenerator::new();
        let at_limit = format!("[{}]", vec![r#"{"topic":"a.b.c"}"#; MAX_EVENTS_PER_REQUEST].join(","));
        assert_eq!(ingest(&ids).json(at_limit.as_bytes()).unwrap().len(), MAX_EVENTS_PER_REQUEST);
        let over = format!("[{}]", vec![r#"{"topic":"a.b.c"}"#; MAX_EVENTS_PER_REQUEST + 1].join(","));
        assert_eq!(ingest(&ids).json(over.as_bytes()).unwrap_err().code(), "too_many_events");
        let ce = r#"{"specversion":"1.0","type":"a.b.c","source":"/s","id":"1"}"#;
        let over = format!("[{}]", vec![ce; MAX_EVENTS_PER_REQUEST + 1].join(","));
        assert_eq!(ingest(&ids).cloudevent_batch(over.as_bytes()).unwrap_err().code(), "too_many_events");
        let headers: Vec<String> = (0..=MAX_HEADERS).map(|i| format!("\"h{i}\":\"v\"")).collect();
        let body = format!(r#"[{{"topic":"a.b.c"}},{{"topic":"a.b.c","headers":{{{}}}}}]"#, headers.join(","));
        let e = ingest(&ids).json(body.as_bytes()).unwrap_err();
        assert_eq!((e.code(), e.index()), ("too_many_headers", Some(1)));
        // A parse error after a header limit was hit elsewhere is not blamed on headers.
        let e = ingest(&ids).json(br#"[{"topic":"a.b.c","nope":1}]"#).unwrap_err();
        assert_eq!((e.code(), e.index()), ("invalid_json", Some(0)));
        let e = ingest(&ids).json(br#"[{"topic":"a.b.c","headers":{"Weir-X":"1"}}]"#).unwrap_err();
        assert_eq!((e.code(), e.index()), ("reserved_header", Some(0)));
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
        assert_eq!(e.idempotency_key, "ce:/shop#42");
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
        let headers = raw(&[
            ("ce-specversion", "1.0"),
            ("ce-type", "orders.order.created"),
            ("ce-source", "/shop"),
            ("ce-id", "7"),
            ("ce-subject", "o-7"),
            ("ce-traceparent", "00-abc"),
            ("content-type", "text/plain"),
        ]);
        let e = &ingest(&ids).cloudevent_binary(&headers, b"hello".to_vec()).unwrap()[0];
        assert_eq!(e.payload, b"hello");
        assert_eq!(e.content_type, "text/plain");
        assert_eq!(e.key.as_deref(), Some("o-7"));
        assert_eq!(e.header("traceparent"), Some("00-abc"));
    }

    fn raw<'a>(pairs: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a [u8])> {
        pairs.iter().map(|(n, v)| (*n, v.as_bytes())).collect()
    }

    /// A binary-mode CloudEvent with required attributes and `extra` headers
    /// (which come first, so they win over the defaults).
    fn binary(extra: &[(&str, &[u8])]) -> Result<Event, IngestError> {
        let ids = IdGenerator::new();
        let mut headers: Vec<(&str, &[u8])> = extra.to_vec();
        headers.extend(raw(&[("ce-specversion", "1.0"), ("ce-type", "a.b.c"), ("ce-source", "/s"), ("ce-id", "1")]));
        ingest(&ids).cloudevent_binary(&headers, Vec::new()).map(|mut events| events.remove(0))
    }

    #[test]
    fn cloudevent_key_escapes_the_source_so_keys_never_collide() {
        assert_eq!(cloudevent_key("/shop", "42"), "ce:/shop#42");
        // The pair that collided as `/shop#1#2` under the old `<source>#<id>`.
        assert_eq!(cloudevent_key("/shop#1", "2"), "ce:/shop%231#2");
        assert_eq!(cloudevent_key("/shop", "1#2"), "ce:/shop#1#2");
        // `%` is escaped too, or `/a%23` + `b` would meet `/a#` + `b`.
        assert_eq!(cloudevent_key("/a%23", "b"), "ce:/a%2523#b");
        assert_eq!(cloudevent_key("/a#", "b"), "ce:/a%23#b");
        // The id is kept raw.
        assert_eq!(cloudevent_key("s", "%#x"), "ce:s#%#x");
        let pairs = [("/shop#1", "2"), ("/shop", "1#2"), ("/a%23", "b"), ("/a#", "b"), ("", "#"), ("#", "")];
        for (i, a) in pairs.iter().enumerate() {
            for b in &pairs[i + 1..] {
                assert_ne!(cloudevent_key(a.0, a.1), cloudevent_key(b.0, b.1), "{a:?} vs {b:?}");
            }
        }
    }

    #[test]
    fn structured_cloudevents_that_used_to_collide_get_distinct_keys() {
        let ids = IdGenerator::new();
        let one = br#"{"specversion":"1.0","type":"a.b.c","source":"/shop#1","id":"2"}"#;
        let two = br#"{"specversion":"1.0","type":"a.b.c","source":"/shop","id":"1#2"}"#;
        let one = &ingest(&ids).cloudevent(one).unwrap()[0];
        let two = &ingest(&ids).cloudevent(two).unwrap()[0];
        assert_ne!(one.idempotency_key, two.idempotency_key);
        assert_eq!(one.idempotency_key, "ce:/shop%231#2");
        assert_eq!(one.source, "/shop#1");
        assert_eq!(two.idempotency_key, "ce:/shop#1#2");
    }

    #[test]
    fn binary_cloudevent_values_are_percent_decoded() {
        // What the CloudEvents SDKs send for source `/my shop`.
        let e = binary(&raw(&[("ce-source", "/my%20shop"), ("ce-id", "A-1")])).unwrap();
        assert_eq!(e.source, "/my shop");
        assert_eq!(e.idempotency_key, cloudevent_key("/my shop", "A-1"));
        // The spec's example, lower-case hex, and an unnecessary escape.
        let e =
            binary(&raw(&[("ce-tenant", "Euro%20%E2%82%AC%20%F0%9F%98%80"), ("ce-subject", "%e2%82%ac%41")])).unwrap();
        assert_eq!(e.header("tenant"), Some("Euro € 😀"));
        assert_eq!(e.key.as_deref(), Some("€A"));
        // `%25` is a literal percent, decoded once only.
        let e = binary(&raw(&[("ce-id", "100%2525")])).unwrap();
        assert_eq!(e.idempotency_key, "ce:/s#100%25");
        // Old-style double-quoted values: quotes and backslash escapes removed, then percent-decoding.
        let e = binary(&raw(&[("ce-source", r#""/my \"quoted\" shop%21""#)])).unwrap();
        assert_eq!(e.source, r#"/my "quoted" shop!"#);
        // Percent-encoded `%` and `#` in the source stay distinct in the key.
        let e = binary(&raw(&[("ce-source", "/a%23b%25"), ("ce-id", "c")])).unwrap();
        assert_eq!((e.source.as_str(), e.idempotency_key.as_str()), ("/a#b%", "ce:/a%23b%25#c"));
        // Header names are matched without regard to case; other headers are ignored.
        let e = binary(&raw(&[("CE-Subject", "o%2D1"), ("x-other", "%zz")])).unwrap();
        assert_eq!(e.key.as_deref(), Some("o-1"));
    }

    #[test]
    fn binary_and_structured_modes_give_the_same_key() {
        let ids = IdGenerator::new();
        let structured = br#"{"specversion":"1.0","type":"a.b.c","source":"/my shop#1","id":"caf\u00e9 1"}"#;
        let structured = &ingest(&ids).cloudevent(structured).unwrap()[0];
        let binary = binary(&raw(&[("ce-source", "/my%20shop#1"), ("ce-id", "caf%C3%A9%201")])).unwrap();
        assert_eq!(binary.idempotency_key, structured.idempotency_key);
        assert_eq!(binary.source, structured.source);
    }

    #[test]
    fn binary_header_values_that_cannot_be_decoded_are_refused_by_name() {
        let cases: [(&str, &[u8], &str); 8] = [
            ("ce-type", b"a.b.\xff", "`ce-type` is not valid UTF-8 after percent-decoding"),
            ("ce-source", b"/s%ff", "`ce-source` is not valid UTF-8 after percent-decoding"),
            // The spec's example of an overlong encoding (of a space).
            ("ce-source", b"/s%C0%A0", "`ce-source` is not valid UTF-8 after percent-decoding"),
            ("ce-id", b"1%zz", "`ce-id` has a malformed percent escape \"%zz\""),
            ("ce-id", b"1%4", "`ce-id` has a malformed percent escape \"%4\""),
            ("ce-id", b"1%", "`ce-id` has a malformed percent escape \"%\""),
            ("ce-tenant", b"\"acme", "`ce-tenant` starts with a double quote but is not a valid quoted string"),
            ("ce-tenant", b"\"ac\"me", "`ce-tenant` starts with a double quote but is not a valid quoted string"),
        ];
        for (name, value, message) in cases {
            let err = binary(&[(name, value)]).unwrap_err();
            assert_eq!((err.code(), err.index()), ("invalid_cloudevent", Some(0)));
            let text = err.to_string();
            assert!(text.contains(message), "{name}: {text}");
            assert!(!text.contains("required"), "{text}");
        }
        let err = binary(&[("content-type", b"text/\xff")]).unwrap_err();
        assert!(err.to_string().contains("`content-type` is not valid UTF-8"), "{err}");
        // A missing attribute is still reported as missing.
        let ids = IdGenerator::new();
        let err = ingest(&ids).cloudevent_binary(&raw(&[("ce-specversion", "1.0")]), Vec::new()).unwrap_err();
        assert!(err.to_string().contains("`ce-type` is required"), "{err}");
    }

    #[test]
    fn dataschema_is_kept_as_a_header() {
        let ids = IdGenerator::new();
        let body =
            br#"{"specversion":"1.0","type":"a.b.c","source":"/s","id":"1","dataschema":"https://x.example/o.json"}"#;
        let e = &ingest(&ids).cloudevent(body).unwrap()[0];
        assert_eq!(e.header("dataschema"), Some("https://x.example/o.json"));
        let e = binary(&raw(&[("ce-dataschema", "https://x.example/o%20v2.json")])).unwrap();
        assert_eq!(e.header("dataschema"), Some("https://x.example/o v2.json"));
        let e = binary(&[]).unwrap();
        assert_eq!(e.header("dataschema"), None);
    }
}
