//! Upcasters: turn an event of one schema version of its topic into the
//! next, applied by the host at delivery (docs/schemas.md, "Upcasters").
//!
//! ```
//! use weir_sdk::prelude::*;
//! use weir_sdk::upcast::Upcast;
//!
//! /// v1 `amount` was a number; v2 is `{ value, currency }`.
//! #[weir_sdk::upcaster(topic = "orders.order.created", from = 1, to = 2)]
//! fn upcast(event: &Event) -> Result<Vec<Upcast>, String> {
//!     let mut v: serde_json::Value = serde_json::from_slice(&event.payload).map_err(|e| e.to_string())?;
//!     let amount = v["amount"].take();
//!     v["amount"] = serde_json::json!({ "value": amount, "currency": "EUR" });
//!     Ok(vec![Upcast::json(event, &v)?])
//! }
//!
//! let v1 = weir_sdk::testing::event("orders.order.created").json(&serde_json::json!({ "amount": 3 })).build();
//! let v2 = weir_sdk::testing::upcast(upcast, 1, 2, &v1).unwrap();
//! assert_eq!(v2[0].schema_version, 2);
//! assert_eq!(v2[0].id, v1.id, "one output keeps the input's identity");
//! ```

use serde::Serialize;

use crate::Event;

/// One event an upcaster answers, at the version `to`. Built from the input
/// with [`Upcast::json`] or [`Upcast::bytes`], it keeps the input's key,
/// content type and headers unless changed.
pub type Upcast = weir_abi::UpcastEvent;

/// The signature of an upcaster function.
pub type UpcasterFn = fn(&Event) -> Result<Vec<Upcast>, String>;

/// Building outputs.
pub trait UpcastExt: Sized {
    /// An output of `input` with this JSON payload.
    ///
    /// # Errors
    ///
    /// The serialisation error's text.
    fn json<T: Serialize + ?Sized>(input: &Event, value: &T) -> Result<Self, String>;
    /// An output of `input` with these payload bytes.
    fn bytes(input: &Event, payload: Vec<u8>) -> Self;
    /// This output with another key.
    #[must_use]
    fn with_key(self, key: impl Into<String>) -> Self;
}

impl UpcastExt for Upcast {
    fn json<T: Serialize + ?Sized>(input: &Event, value: &T) -> Result<Self, String> {
        let payload = serde_json::to_vec(value).map_err(|e| format!("cannot encode the upcast payload: {e}"))?;
        Ok(Self::from_input(input, payload))
    }

    fn bytes(input: &Event, payload: Vec<u8>) -> Self {
        Self::from_input(input, payload)
    }

    fn with_key(mut self, key: impl Into<String>) -> Self {
        self.key = Some(key.into());
        self
    }
}

/// Run `f` on `input` (at version `from`) as the host does, without Wasm:
/// the events it answers, as the handler would see them (version `to`, the
/// host's identity rules: one output keeps the input's id and idempotency
/// key, several get ids and keys derived from the input's and their index).
///
/// # Errors
///
/// The upcaster's own failure, or an input that is not at version `from`.
pub fn run(f: UpcasterFn, from: u32, to: u32, input: &Event) -> Result<Vec<Event>, String> {
    if input.schema_version != from {
        return Err(format!("the event is at version {}, the upcaster reads version {from}", input.schema_version));
    }
    let outputs = f(input)?;
    let count = outputs.len();
    Ok(outputs
        .into_iter()
        .enumerate()
        .map(|(i, out)| {
            let (id, idempotency_key) = if count == 1 {
                (input.id, input.idempotency_key.clone())
            } else {
                // The host derives the low 80 bits with sha256; natively a
                // simple mix is enough to tell the outputs apart.
                let mut bytes = input.id.0;
                bytes[15] ^= (i as u8).wrapping_add(1);
                (weir_abi::EventId(bytes), format!("{}~v{to}.{i}", input.idempotency_key))
            };
            Event {
                id,
                topic: input.topic.clone(),
                source: input.source.clone(),
                key: out.key,
                schema_version: to,
                time: input.time,
                content_type: out.content_type,
                headers: out.headers,
                idempotency_key,
                correlation_id: input.correlation_id,
                causation_id: input.causation_id,
                payload: out.payload,
            }
        })
        .collect())
}
