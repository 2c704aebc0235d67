use serde::de::DeserializeOwned;

use crate::HandlerError;
use crate::state::{self, Backend, Scope, State};
use crate::timer::{self, Timers};

/// Facts about the current delivery, handed to the handler with the event,
/// and the handler's [state](crate::state).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Context {
    subscription: String,
    attempt: u32,
    state: Backend,
    timers: Timers,
}

impl Context {
    /// A context for `subscription` at `attempt` (1 on the first try). The
    /// generated glue builds it from the delivery; tests build it by hand.
    // In Wasm the backend is a unit struct (the state lives in the host).
    #[allow(clippy::default_constructed_unit_structs)]
    pub fn new(subscription: impl Into<String>, attempt: u32) -> Self {
        Self { subscription: subscription.into(), attempt, state: Backend::default(), timers: Timers::default() }
    }

    /// The state of the event's key: what this subscription stored for
    /// earlier events with the same key (an event without a key gets the
    /// [shared state](Self::shared_state)). Writes are committed with the
    /// events the handler returns, exactly once, and dropped if it fails.
    pub fn state(&mut self) -> State<'_> {
        State { backend: &mut self.state, scope: Scope::Abi(state::KEY) }
    }

    /// The state shared by every event of this subscription, whatever its
    /// key.
    pub fn shared_state(&mut self) -> State<'_> {
        State { backend: &mut self.state, scope: Scope::Abi(state::SHARED) }
    }

    /// Run `handler` on `event` as the host would (native tests): state
    /// scoped to the event's key, its writes kept only when it succeeds.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn handle(
        &mut self,
        handler: fn(&crate::Event, &mut Context) -> Result<Vec<crate::Emit>, HandlerError>,
        event: &crate::Event,
    ) -> Result<Vec<crate::Emit>, HandlerError> {
        self.state.begin(event.key.as_deref());
        self.timers.begin();
        let result = handler(event, self);
        self.state.finish(result.is_ok());
        self.timers.finish(result.is_ok());
        result
    }

    /// Every timer operation the handler asked for and kept (those of failed
    /// events are dropped), in order: to assert on in native tests.
    #[cfg(not(target_arch = "wasm32"))]
    #[must_use]
    pub fn timer_ops(&self) -> &[timer::TimerOp] {
        &self.timers.ops
    }

    /// The timer `key` as the host would hold it after these operations
    /// (none having fired): when it fires and what it appends.
    #[cfg(not(target_arch = "wasm32"))]
    #[must_use]
    pub fn pending_timer(&self, key: &str) -> Option<(u64, &weir_abi::Emit)> {
        self.timers.pending(key)
    }

    /// Schedule (or replace) the timer `key`: at or after `at_or_after_ms`
    /// (Unix milliseconds; take the time from the event,
    /// [`timer::event_time_ms`]) the host appends `emit` to the log, caused
    /// by the event being handled. Committed with the events the handler
    /// returns; dropped if it fails. See [`crate::timer`].
    ///
    /// # Errors
    ///
    /// A rejection when the key is empty or longer than
    /// [`timer::MAX_KEY_BYTES`].
    pub fn schedule(&mut self, at_or_after_ms: u64, key: &str, emit: crate::Emit) -> Result<(), HandlerError> {
        timer::check_key(key)?;
        self.timers.schedule(key, at_or_after_ms, emit.into_abi())
    }

    /// Cancel the timer `key` if it has not fired (nothing happens when
    /// there is none). Committed with the events the handler returns.
    ///
    /// # Errors
    ///
    /// A rejection when the key is empty or longer than
    /// [`timer::MAX_KEY_BYTES`].
    pub fn cancel_timer(&mut self, key: &str) -> Result<(), HandlerError> {
        timer::check_key(key)?;
        self.timers.cancel(key);
        Ok(())
    }

    /// The state of one key (`None`: the shared state), to look at in native
    /// tests.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn state_of(&mut self, key: Option<&str>) -> State<'_> {
        State { backend: &mut self.state, scope: Scope::Named(key.map(str::to_owned)) }
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
