//! Building events for native unit tests of a handler.
//!
//! ```
//! use weir_sdk::prelude::*;
//! let event = weir_sdk::testing::event("orders.order.created")
//!     .key("o-1")
//!     .json(&serde_json::json!({ "total": 3 }))
//!     .build();
//! assert_eq!(event.key.as_deref(), Some("o-1"));
//! ```

use std::sync::atomic::{AtomicU64, Ordering};

pub use crate::aggregate::{Given, When, given};
pub use crate::upcast::run as upcast;
use crate::{Event, EventId, Header};

/// Start an event on `topic` with a fresh id, schema version 1, an empty
/// JSON payload (`{}`) and source `weir:test`.
pub fn event(topic: impl Into<String>) -> EventBuilder {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    let id = EventId::from_u128(u128::from(NEXT.fetch_add(1, Ordering::Relaxed)));
    EventBuilder {
        event: Event {
            id,
            topic: topic.into(),
            source: "weir:test".to_owned(),
            key: None,
            schema_version: 1,
            time: 0,
            content_type: "application/json".to_owned(),
            headers: Vec::new(),
            idempotency_key: id.to_string(),
            correlation_id: None,
            causation_id: None,
            payload: b"{}".to_vec(),
        },
    }
}

/// Builder returned by [`event`].
#[derive(Debug, Clone)]
pub struct EventBuilder {
    event: Event,
}

impl EventBuilder {
    /// Set the key.
    #[must_use]
    pub fn key(mut self, key: impl Into<String>) -> Self {
        self.event.key = Some(key.into());
        self
    }

    /// Set the payload to `value` as JSON.
    ///
    /// # Panics
    ///
    /// If `value` cannot be serialised (a test bug).
    #[must_use]
    #[allow(clippy::expect_used)]
    pub fn json<T: serde::Serialize>(mut self, value: &T) -> Self {
        self.event.payload = serde_json::to_vec(value).expect("test payload serialises");
        self.event.content_type = "application/json".to_owned();
        self
    }

    /// Set raw payload bytes.
    #[must_use]
    pub fn bytes(mut self, payload: impl Into<Vec<u8>>) -> Self {
        self.event.payload = payload.into();
        self
    }

    /// Set the schema version.
    #[must_use]
    pub fn schema_version(mut self, version: u32) -> Self {
        self.event.schema_version = version;
        self
    }

    /// Add a header.
    #[must_use]
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.event.headers.push(Header::new(name, value));
        self
    }

    /// The event.
    #[must_use]
    pub fn build(self) -> Event {
        self.event
    }
}
