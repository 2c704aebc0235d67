//! The messages of an upcaster: the host asks `weir_upcast` to turn one
//! event of a topic's schema version `from` into zero, one or more events of
//! version `to`, at delivery, before a handler that accepts `to` sees it.
//! The export is optional: a module with it is an upcaster; ABI v1 handlers
//! without it load and run as before. Byte by byte in `docs/abi.md` §15.

use serde::{Deserialize, Serialize};

use crate::{Event, Header};

/// What the host passes to `weir_upcast`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Upcast {
    /// The version the event is at (`event.schema_version`).
    pub from: u32,
    /// The version the outputs will be at.
    pub to: u32,
    /// The event, at version `from`.
    pub event: Event,
}

/// A borrowed [`Upcast`], for encoding without cloning the event. It
/// encodes to exactly the same bytes.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct UpcastRef<'a> {
    /// The version the event is at.
    pub from: u32,
    /// The version the outputs will be at.
    pub to: u32,
    /// The event.
    pub event: &'a Event,
}

/// One event an upcaster answers: what may change. The host keeps the
/// input's topic, source, time, correlation and causation ids, sets the
/// schema version to `to`, and derives the id and idempotency key from the
/// input's and the output's index (docs/schemas.md, "Upcasters").
///
/// Decoding one charges its in-memory size to the decode budget of
/// [`encoding::decode_with_budget`](crate::encoding::decode_with_budget),
/// as an [`Emit`](crate::Emit) does.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "UpcastEventWire")]
pub struct UpcastEvent {
    /// The key (the ordering key of the delivery).
    pub key: Option<String>,
    /// Media type of the payload.
    pub content_type: String,
    /// Headers. Those under the host's reserved prefix (`weir-`) are the
    /// host's: the input's are kept, the upcaster's own are dropped.
    pub headers: Vec<Header>,
    /// The payload at version `to`.
    #[serde(with = "serde_bytes")]
    pub payload: Vec<u8>,
}

/// [`UpcastEvent`] as decoded, before its size is charged.
#[derive(Deserialize)]
struct UpcastEventWire {
    key: Option<String>,
    content_type: String,
    headers: Vec<Header>,
    #[serde(with = "serde_bytes")]
    payload: Vec<u8>,
}

impl TryFrom<UpcastEventWire> for UpcastEvent {
    type Error = crate::encoding::BudgetExceeded;

    fn try_from(w: UpcastEventWire) -> Result<Self, Self::Error> {
        crate::encoding::charge(core::mem::size_of::<Self>())?;
        Ok(Self { key: w.key, content_type: w.content_type, headers: w.headers, payload: w.payload })
    }
}

impl UpcastEvent {
    /// An output that keeps the input's key, content type and headers, with
    /// a new payload.
    #[must_use]
    pub fn from_input(input: &Event, payload: Vec<u8>) -> Self {
        Self {
            key: input.key.clone(),
            content_type: input.content_type.clone(),
            headers: input.headers.clone(),
            payload,
        }
    }
}

/// The answer of `weir_upcast`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Upcasted {
    /// The event at version `to`: none (the event is dropped: handled with
    /// no effect), one, or several (each delivered on its own).
    Events(Vec<UpcastEvent>),
    /// The upcaster cannot convert this event; it is dead-lettered
    /// (`upcast_failed`) with the original as stored.
    Failed(String),
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::encoding::{decode, encode};

    #[test]
    fn the_bytes_are_the_documented_ones() {
        // docs/abi.md 16.3.
        assert_eq!(encode(&Upcasted::Failed("no".into())).unwrap(), [0x01, 0x02, 0x6e, 0x6f]);
        let one = UpcastEvent { key: None, content_type: String::new(), headers: vec![], payload: b"{}".to_vec() };
        let bytes = encode(&Upcasted::Events(vec![one.clone()])).unwrap();
        assert_eq!(bytes, [0x00, 0x01, 0x00, 0x00, 0x00, 0x02, 0x7b, 0x7d]);
        assert_eq!(decode::<Upcasted>(&bytes).unwrap(), Upcasted::Events(vec![one]));
    }

    #[cfg(target_pointer_width = "64")]
    #[test]
    fn the_charged_size_is_the_documented_one() {
        assert_eq!(core::mem::size_of::<UpcastEvent>(), 96);
    }
}
