use serde::{Deserialize, Serialize};

use crate::EventId;

/// One header of an event: a name and a UTF-8 value. Order is kept.
///
/// Decoding a header charges its in-memory size to the decode budget of
/// [`encoding::decode_with_budget`](crate::encoding::decode_with_budget),
/// when one is set; the bytes on the wire are those of the plain struct.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "HeaderWire")]
pub struct Header {
    /// Header name, conventionally lowercase (`weir-plugin-version`).
    pub name: String,
    /// Header value.
    pub value: String,
}

/// [`Header`] as decoded, before its size is charged.
#[derive(Deserialize)]
struct HeaderWire {
    name: String,
    value: String,
}

impl TryFrom<HeaderWire> for Header {
    type Error = crate::encoding::BudgetExceeded;

    fn try_from(wire: HeaderWire) -> Result<Self, Self::Error> {
        crate::encoding::charge(core::mem::size_of::<Self>())?;
        Ok(Self { name: wire.name, value: wire.value })
    }
}

impl Header {
    /// A header from anything string-like.
    pub fn new(name: impl Into<String>, value: impl Into<String>) -> Self {
        Self { name: name.into(), value: value.into() }
    }
}

/// The envelope of one event as stored in the log and delivered to handlers.
///
/// Field order is the wire order (see `docs/abi.md`). The fields mirror
/// CloudEvents 1.0 so that real clients map onto them: `topic` is the
/// CloudEvents `type`, `key` its `subject`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// Host-assigned, time-sortable id.
    pub id: EventId,
    /// `<domain>.<entity>.<event>`, e.g. `orders.order.created`.
    pub topic: String,
    /// Who produced the event (a URI-reference, as CloudEvents `source`).
    pub source: String,
    /// The entity the event is about: the ordering and partitioning key.
    pub key: Option<String>,
    /// Version of the payload's schema, starting at 1.
    pub schema_version: u32,
    /// When the event happened: nanoseconds since the Unix epoch, UTC.
    pub time: i64,
    /// Media type of `payload`, e.g. `application/json`.
    pub content_type: String,
    /// Extra metadata, in order.
    pub headers: Vec<Header>,
    /// The key the host de-duplicates on; the id's text form unless the
    /// producer gave one.
    pub idempotency_key: String,
    /// The id of the first event of the flow this event belongs to.
    pub correlation_id: Option<EventId>,
    /// The id of the event whose handling emitted this one.
    pub causation_id: Option<EventId>,
    /// The payload, opaque to the host. Encoded through `serde_bytes` as one
    /// length-prefixed byte string: the bytes on the wire are the same as a
    /// plain `Vec<u8>`'s, but encoding and decoding copy them in one go
    /// instead of visiting them one by one (measurably cheaper).
    #[serde(with = "serde_bytes")]
    pub payload: Vec<u8>,
}

impl Event {
    /// The value of the first header called `name`, if any.
    #[must_use]
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|h| h.name == name).map(|h| h.value.as_str())
    }
}

/// What the host passes to `weir_handle`: one event delivered to one
/// subscription, for the `attempt`-th time (1 on the first try).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delivery {
    /// The event.
    pub event: Event,
    /// The subscription it is delivered to: `<pipeline>/<handler>`.
    pub subscription: String,
    /// 1 on the first attempt, 2 on the first retry, and so on.
    pub attempt: u32,
}

/// A borrowed [`Delivery`], for encoding without cloning the event. It
/// encodes to exactly the same bytes.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct DeliveryRef<'a> {
    /// The event.
    pub event: &'a Event,
    /// The subscription it is delivered to.
    pub subscription: &'a str,
    /// The attempt number, from 1.
    pub attempt: u32,
}

/// An event a handler asks the host to append to the log.
///
/// The host assigns the id, source and time. Correlation and causation ids the
/// handler leaves empty are filled in from the event being handled.
///
/// Decoding an emit charges its in-memory size to the decode budget of
/// [`encoding::decode_with_budget`](crate::encoding::decode_with_budget),
/// when one is set; the bytes on the wire are those of the plain struct.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "EmitWire")]
pub struct Emit {
    /// Topic of the new event.
    pub topic: String,
    /// Key of the new event.
    pub key: Option<String>,
    /// Schema version of the payload.
    pub schema_version: u32,
    /// Media type of the payload.
    pub content_type: String,
    /// Headers of the new event.
    pub headers: Vec<Header>,
    /// Idempotency key; the host derives one when absent.
    pub idempotency_key: Option<String>,
    /// Correlation id; the input's correlation id (or its id) when absent.
    pub correlation_id: Option<EventId>,
    /// Causation id; the input's id when absent.
    pub causation_id: Option<EventId>,
    /// The payload bytes.
    #[serde(with = "serde_bytes")]
    pub payload: Vec<u8>,
}

/// [`Emit`] as decoded, before its size is charged. Same fields, same order.
#[derive(Deserialize)]
struct EmitWire {
    topic: String,
    key: Option<String>,
    schema_version: u32,
    content_type: String,
    headers: Vec<Header>,
    idempotency_key: Option<String>,
    correlation_id: Option<EventId>,
    causation_id: Option<EventId>,
    #[serde(with = "serde_bytes")]
    payload: Vec<u8>,
}

impl TryFrom<EmitWire> for Emit {
    type Error = crate::encoding::BudgetExceeded;

    fn try_from(w: EmitWire) -> Result<Self, Self::Error> {
        crate::encoding::charge(core::mem::size_of::<Self>())?;
        Ok(Self {
            topic: w.topic,
            key: w.key,
            schema_version: w.schema_version,
            content_type: w.content_type,
            headers: w.headers,
            idempotency_key: w.idempotency_key,
            correlation_id: w.correlation_id,
            causation_id: w.causation_id,
            payload: w.payload,
        })
    }
}

/// The handler's answer to one delivery.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    /// Handled: append these events (possibly none) and move on.
    Ok(Vec<Emit>),
    /// A transient failure: try again later, with backoff.
    Retry(String),
    /// A permanent failure: send the event to the dead-letter queue now.
    Reject(String),
}

/// The answer of `weir_init`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum InitOutcome {
    /// The plugin accepted its configuration.
    Ready,
    /// The plugin refuses to start, with the reason.
    Failed(String),
}

/// What `weir_describe` tells about a plugin.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct PluginDescription {
    /// The plugin's name.
    pub name: String,
    /// The plugin's own version string (semver by convention).
    pub version: String,
    /// One line on what it does.
    pub description: String,
    /// Topic patterns it is written for (informational).
    pub topics: Vec<String>,
    /// Schema versions it accepts; empty means any.
    pub schema_versions: Vec<u32>,
}

/// Level of a guest log line, the first argument of the `log` import.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(i32)]
pub enum LogLevel {
    /// 0
    Trace = 0,
    /// 1
    Debug = 1,
    /// 2
    Info = 2,
    /// 3
    Warn = 3,
    /// 4
    Error = 4,
}

impl LogLevel {
    /// The level for an `i32` from the guest; values above 4 are errors,
    /// negative values traces, so a sloppy guest still gets its line logged.
    #[must_use]
    pub const fn from_i32(value: i32) -> Self {
        match value {
            i32::MIN..=0 => Self::Trace,
            1 => Self::Debug,
            2 => Self::Info,
            3 => Self::Warn,
            _ => Self::Error,
        }
    }

    /// Lowercase name.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Trace => "trace",
            Self::Debug => "debug",
            Self::Info => "info",
            Self::Warn => "warn",
            Self::Error => "error",
        }
    }
}
