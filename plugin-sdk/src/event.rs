use serde::de::DeserializeOwned;

use crate::{Emit, Event, HandlerError};

/// Helpers on [`Event`] for handler code.
pub trait EventExt {
    /// Decode the payload as JSON into `T`.
    ///
    /// # Errors
    ///
    /// A [`HandlerError::Reject`] naming the JSON error.
    fn json<T: DeserializeOwned>(&self) -> Result<T, HandlerError>;

    /// The payload as UTF-8 text.
    ///
    /// # Errors
    ///
    /// A [`HandlerError::Reject`] if the payload is not UTF-8.
    fn text(&self) -> Result<&str, HandlerError>;

    /// Start an event caused by this one: correlation id carried over (or
    /// this event's id when it starts the flow), causation id set to this
    /// event's id, and the same key.
    fn emit(&self, topic: impl Into<String>) -> Emit;
}

impl EventExt for Event {
    fn json<T: DeserializeOwned>(&self) -> Result<T, HandlerError> {
        Ok(serde_json::from_slice(&self.payload)?)
    }

    fn text(&self) -> Result<&str, HandlerError> {
        core::str::from_utf8(&self.payload).map_err(|e| HandlerError::reject(format!("payload is not UTF-8: {e}")))
    }

    fn emit(&self, topic: impl Into<String>) -> Emit {
        Emit::new(topic).caused_by(self)
    }
}
