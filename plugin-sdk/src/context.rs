use serde::de::DeserializeOwned;

use crate::HandlerError;

/// Facts about the current delivery, handed to the handler with the event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Context {
    subscription: String,
    attempt: u32,
}

impl Context {
    /// A context for `subscription` at `attempt` (1 on the first try). The
    /// generated glue builds it from the delivery; tests build it by hand.
    pub fn new(subscription: impl Into<String>, attempt: u32) -> Self {
        Self { subscription: subscription.into(), attempt }
    }

    /// The subscription the event is delivered to (`<pipeline>/<handler>`).
    #[must_use]
    pub fn subscription(&self) -> &str {
        &self.subscription
    }

    /// 1 on the first attempt, 2 on the first retry, and so on. Useful to give
    /// up on a flaky dependency with [`HandlerError::reject`] after a few tries.
    #[must_use]
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// Whether this delivery is a retry.
    #[must_use]
    pub fn is_retry(&self) -> bool {
        self.attempt > 1
    }
}

/// The plugin's configuration, as given to the init hook.
///
/// The runtime passes the handler's `config` table from its configuration as
/// JSON; a handler without one gets an empty configuration.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Config {
    bytes: Vec<u8>,
}

impl Config {
    /// A configuration from raw bytes (JSON by convention).
    #[must_use]
    pub fn from_bytes(bytes: Vec<u8>) -> Self {
        Self { bytes }
    }

    /// A configuration holding `value` as JSON; for tests.
    ///
    /// # Errors
    ///
    /// If `value` cannot be serialised to JSON.
    pub fn from_json<T: serde::Serialize>(value: &T) -> Result<Self, String> {
        serde_json::to_vec(value).map(Self::from_bytes).map_err(|e| e.to_string())
    }

    /// Whether no configuration was given.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// The raw bytes.
    #[must_use]
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// Decode the configuration as JSON into `T`; an empty configuration
    /// decodes as `{}` so that a struct whose fields all have defaults works
    /// without any configuration.
    ///
    /// # Errors
    ///
    /// A message naming the JSON error, suitable to return from init.
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, String> {
        let bytes: &[u8] = if self.bytes.is_empty() { b"{}" } else { &self.bytes };
        serde_json::from_slice(bytes).map_err(|e| format!("invalid plugin config: {e}"))
    }
}

impl From<HandlerError> for String {
    fn from(error: HandlerError) -> Self {
        error.to_string()
    }
}
