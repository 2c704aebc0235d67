use serde::Serialize;

use crate::{Event, EventId, HandlerError, Header};

/// An event for the host to append to the log, built step by step.
///
/// # Examples
///
/// ```
/// use weir_sdk::prelude::*;
/// # let event = weir_sdk::testing::event("orders.order.created").key("o-1").json(&serde_json::json!({})).build();
/// let out = event
///     .emit("orders.order.validated")
///     .json(&serde_json::json!({ "ok": true }))?;
/// assert_eq!(out.as_abi().causation_id, Some(event.id));
/// # Ok::<(), HandlerError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Emit {
    inner: weir_abi::Emit,
}

impl Emit {
    /// An event on `topic` with an empty payload, schema version 1 and
    /// content type `application/json`. The host fills in correlation and
    /// causation ids; use [`EventExt::emit`](crate::EventExt::emit) or
    /// [`Emit::caused_by`] to set them here.
    pub fn new(topic: impl Into<String>) -> Self {
        Self {
            inner: weir_abi::Emit {
                topic: topic.into(),
                key: None,
                schema_version: 1,
                content_type: "application/json".to_owned(),
                headers: Vec::new(),
                idempotency_key: None,
                correlation_id: None,
                causation_id: None,
                payload: Vec::new(),
            },
        }
    }

    /// Mark this event as caused by `event`: same correlation (or `event`'s
    /// id if it has none), causation = `event`'s id, and `event`'s key unless
    /// a key was already set.
    #[must_use]
    pub fn caused_by(mut self, event: &Event) -> Self {
        self.inner.correlation_id = Some(event.correlation_id.unwrap_or(event.id));
        self.inner.causation_id = Some(event.id);
        if self.inner.key.is_none() {
            self.inner.key.clone_from(&event.key);
        }
        self
    }

    /// Set the key (the entity the event is about).
    #[must_use]
    pub fn key(mut self, key: impl Into<String>) -> Self {
        self.inner.key = Some(key.into());
        self
    }

    /// Set the payload to `value` as JSON (content type `application/json`).
    ///
    /// # Errors
    ///
    /// A [`HandlerError::Reject`] if `value` cannot be serialised.
    pub fn json<T: Serialize + ?Sized>(mut self, value: &T) -> Result<Self, HandlerError> {
        self.inner.payload = serde_json::to_vec(value)
            .map_err(|e| HandlerError::reject(format!("cannot encode emitted payload: {e}")))?;
        self.inner.content_type = "application/json".to_owned();
        Ok(self)
    }

    /// Set the payload to raw bytes with the given content type.
    #[must_use]
    pub fn bytes(mut self, payload: impl Into<Vec<u8>>, content_type: impl Into<String>) -> Self {
        self.inner.payload = payload.into();
        self.inner.content_type = content_type.into();
        self
    }

    /// Set the schema version of the payload.
    #[must_use]
    pub fn schema_version(mut self, version: u32) -> Self {
        self.inner.schema_version = version;
        self
    }

    /// Add a header.
    #[must_use]
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.inner.headers.push(Header::new(name, value));
        self
    }

    /// Set the idempotency key of the emitted event.
    #[must_use]
    pub fn idempotency_key(mut self, key: impl Into<String>) -> Self {
        self.inner.idempotency_key = Some(key.into());
        self
    }

    /// Set the correlation id explicitly (e.g. to start a new flow).
    #[must_use]
    pub fn correlation_id(mut self, id: EventId) -> Self {
        self.inner.correlation_id = Some(id);
        self
    }

    /// The wire form.
    #[must_use]
    pub fn as_abi(&self) -> &weir_abi::Emit {
        &self.inner
    }

    /// The topic.
    #[must_use]
    pub fn topic(&self) -> &str {
        &self.inner.topic
    }

    /// The payload bytes.
    #[must_use]
    pub fn payload(&self) -> &[u8] {
        &self.inner.payload
    }

    /// Decode the payload as JSON; for tests.
    ///
    /// # Errors
    ///
    /// The JSON error.
    pub fn payload_json<T: serde::de::DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        serde_json::from_slice(&self.inner.payload)
    }

    /// Into the wire form.
    #[must_use]
    pub fn into_abi(self) -> weir_abi::Emit {
        self.inner
    }
}

impl From<weir_abi::Emit> for Emit {
    fn from(inner: weir_abi::Emit) -> Self {
        Self { inner }
    }
}
