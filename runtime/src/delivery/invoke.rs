//! The seam between delivery and whatever handles an event. The worker asks
//! an [`Invoke`] to handle one delivery and gets back an [`Attempt`]: what
//! it emitted or why it failed, plus what it logged and used. Nothing here
//! names the engine, so a Wasm [`Handler`], native code, and later sinks,
//! projections and saga steps all sit behind the same trait; the engine's
//! own types are converted once, in `impl Invoke for Handler`.

use weir_abi::{DeliveryRef, Emit, LogLevel};

use crate::engine::{Handler, Invocation, PluginLog, StateAccess, TimerCall};
use crate::error::InvokeError;

/// What a subscription invokes: a Wasm [`Handler`], or native code standing
/// in for one (the benchmarks' no-Wasm baseline).
pub trait Invoke: Send {
    /// Handle one delivery.
    fn invoke(&mut self, delivery: DeliveryRef<'_>) -> Attempt;
    /// Whether the handler reads and writes state: then the worker calls
    /// [`invoke_with_state`](Self::invoke_with_state) instead.
    fn uses_state(&self) -> bool {
        false
    }
    /// Handle one delivery with `state` lent for the invocation; the state
    /// comes back with the attempt (its writes are committed with a
    /// successful outcome, dropped otherwise). By default the state is not
    /// used.
    fn invoke_with_state(
        &mut self,
        delivery: DeliveryRef<'_>,
        state: Box<dyn StateAccess>,
    ) -> (Attempt, Option<Box<dyn StateAccess>>) {
        (self.invoke(delivery), Some(state))
    }
    /// The schema versions the handler accepts (`weir_describe`); empty
    /// means any, as stored. Events are upcast to the newest of them.
    fn schema_versions(&self) -> Vec<u32> {
        Vec::new()
    }
    /// The plugin's name, for logs and DLQ entries.
    fn name(&self) -> String;
    /// The version identity recorded with every outcome (sha256 of the
    /// module for Wasm).
    fn version(&self) -> String;
}

/// The result of one attempt at handling a delivery, with what the handler
/// logged and used meanwhile.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Attempt {
    /// The emitted events, or why there are none.
    pub result: Result<Vec<Emit>, Failure>,
    /// Log lines, in order; the worker forwards them to the host's log,
    /// rate-limited.
    pub logs: Vec<LogLine>,
    /// Lines the handler wrote but the invoker dropped (over its cap).
    pub logs_dropped: usize,
    /// Fuel consumed, when it is metered.
    pub fuel_used: Option<u64>,
    /// Size of the instance's memory after the attempt, when there is one;
    /// the worker keeps the high-water mark.
    pub memory_bytes: Option<usize>,
    /// Timers the attempt asks for, in order: committed with a successful
    /// outcome (in the same transaction), dropped with a failed one.
    pub timers: Vec<TimerOp>,
}

/// A timer operation an attempt asks for; committed with the attempt's successful outcome, dropped otherwise.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TimerOp {
    /// Schedule (or replace) the timer `key` of this subscription: at or after `fire_at_ms`
    /// (unix ms), `emit` is appended to the log as an event caused by the scheduling event.
    Schedule { key: String, fire_at_ms: u64, emit: weir_abi::Emit },
    /// Cancel the timer `key` of this subscription, if it has not fired.
    Cancel { key: String },
}

impl TimerOp {
    /// The timer key the operation names.
    #[must_use]
    pub fn key(&self) -> &str {
        match self {
            Self::Schedule { key, .. } | Self::Cancel { key } => key,
        }
    }
}

impl Attempt {
    /// An attempt with this result and nothing logged or measured: what
    /// native code returns.
    #[must_use]
    pub fn new(result: Result<Vec<Emit>, Failure>) -> Self {
        Self { result, logs: Vec::new(), logs_dropped: 0, fuel_used: None, memory_bytes: None, timers: Vec::new() }
    }
}

/// Why an attempt produced no emits. The code is what the DLQ, the failure
/// metrics and the parked entry record.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Failure {
    /// A stable machine code (`trap`, `timeout`, `handler_retry`, …).
    pub code: &'static str,
    /// The human-readable reason.
    pub message: String,
    /// Whether another attempt may succeed. `false` dead-letters the event
    /// at once; `true` retries it until the retry policy gives up.
    pub retryable: bool,
    /// When the next attempt should come, if the failure says (a webhook
    /// receiver's `Retry-After`): it replaces the retry policy's backoff for
    /// this wait. `None` for every engine failure.
    pub retry_after: Option<std::time::Duration>,
}

impl Failure {
    /// A failure with this code and message.
    #[must_use]
    pub fn new(code: &'static str, message: impl Into<String>, retryable: bool) -> Self {
        Self { code, message: message.into(), retryable, retry_after: None }
    }

    /// This failure, with the next attempt asked for after `wait`.
    #[must_use]
    pub fn with_retry_after(mut self, wait: std::time::Duration) -> Self {
        self.retry_after = Some(wait);
        self
    }

    /// The handler asked to be called again later (`handler_retry`).
    #[must_use]
    pub fn retry(reason: impl Into<String>) -> Self {
        InvokeError::HandlerRetry { reason: reason.into() }.into()
    }

    /// The handler refused the event for good (`handler_reject`).
    #[must_use]
    pub fn reject(reason: impl Into<String>) -> Self {
        InvokeError::HandlerReject { reason: reason.into() }.into()
    }
}

/// The engine's classification, kept as it is: same code, same message
/// ([`InvokeError::message`]). Only the handler's own rejection is final;
/// every sandbox failure may pass on a fresh instance.
impl From<InvokeError> for Failure {
    fn from(error: InvokeError) -> Self {
        let code = error.code();
        match error {
            // Moved, not cloned: this is the handler's reason verbatim.
            InvokeError::HandlerRetry { reason } => Self::new(code, reason, true),
            InvokeError::HandlerReject { reason } => Self::new(code, reason, false),
            // Deterministic: the same event would go over the bound again.
            limit @ (InvokeError::StateLimit { .. } | InvokeError::TimerLimit { .. }) => {
                Self::new(code, limit.to_string(), false)
            }
            other => Self::new(code, other.to_string(), true),
        }
    }
}

/// One log line a handler wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogLine {
    /// Its level.
    pub level: LogLevel,
    /// The text.
    pub message: String,
}

impl From<PluginLog> for LogLine {
    fn from(line: PluginLog) -> Self {
        Self { level: line.level, message: line.message }
    }
}

impl From<Invocation> for Attempt {
    fn from(invocation: Invocation) -> Self {
        let Invocation { result, logs, logs_dropped, fuel_used, memory_bytes, timers } = invocation;
        // Timers travel only with a success: a failed attempt's are dropped
        // here already.
        let timers = if result.is_ok() { timers.into_iter().map(TimerOp::from).collect() } else { Vec::new() };
        Self {
            result: result.map_err(Failure::from),
            // Same layout both sides, so this reuses the vector in place;
            // and most invocations log nothing, which allocates nothing.
            logs: logs.into_iter().map(LogLine::from).collect(),
            logs_dropped,
            fuel_used,
            memory_bytes,
            timers,
        }
    }
}

impl From<TimerCall> for TimerOp {
    fn from(call: TimerCall) -> Self {
        match call {
            TimerCall::Schedule { key, fire_at_ms, emit } => Self::Schedule { key, fire_at_ms, emit },
            TimerCall::Cancel { key } => Self::Cancel { key },
        }
    }
}

impl Invoke for Handler {
    fn invoke(&mut self, delivery: DeliveryRef<'_>) -> Attempt {
        // The host's bookkeeping headers are left out of the encoding
        // (engine/handler.rs): not the handler's to see.
        Handler::invoke(self, delivery).into()
    }

    fn uses_state(&self) -> bool {
        self.plugin().info().uses_state()
    }

    fn invoke_with_state(
        &mut self,
        delivery: DeliveryRef<'_>,
        state: Box<dyn StateAccess>,
    ) -> (Attempt, Option<Box<dyn StateAccess>>) {
        let (invocation, state) = Handler::invoke_with_state(self, delivery, Some(state));
        (invocation.into(), state)
    }

    fn schema_versions(&self) -> Vec<u32> {
        self.plugin().info().description.as_ref().map(|d| d.schema_versions.clone()).unwrap_or_default()
    }

    fn name(&self) -> String {
        self.plugin().info().name()
    }

    fn version(&self) -> String {
        self.plugin().info().sha256.clone()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn failures_keep_the_engine_code_and_message() {
        let timeout = Failure::from(InvokeError::Timeout { deadline: Duration::from_millis(5) });
        assert_eq!(timeout.code, "timeout");
        assert_eq!(timeout.message, InvokeError::Timeout { deadline: Duration::from_millis(5) }.message());
        assert!(timeout.retryable);
        let bad = Failure::from(InvokeError::BadOutput { reason: "emit #0: x".into() });
        assert_eq!((bad.code, bad.message.as_str()), ("bad_output", "bad output from plugin: emit #0: x"));
    }

    #[test]
    fn only_a_rejection_is_final() {
        let retry = Failure::retry("later");
        assert_eq!((retry.code, retry.message.as_str(), retry.retryable), ("handler_retry", "later", true));
        let reject = Failure::reject("never");
        assert_eq!((reject.code, reject.message.as_str(), reject.retryable), ("handler_reject", "never", false));
        assert!(Failure::from(InvokeError::Trap { message: "boom".into() }).retryable);
    }

    #[test]
    fn an_invocation_converts_field_by_field() {
        let invocation = Invocation {
            result: Err(InvokeError::OutOfFuel { budget: 7 }),
            logs: vec![PluginLog { level: LogLevel::Warn, message: "hm".into() }],
            logs_dropped: 2,
            fuel_used: Some(7),
            memory_bytes: Some(65536),
            timers: vec![TimerCall::Cancel { key: "k".into() }],
        };
        let attempt = Attempt::from(invocation);
        assert_eq!(attempt.result.as_ref().map_err(|f| f.code), Err("out_of_fuel"));
        assert_eq!(attempt.logs, vec![LogLine { level: LogLevel::Warn, message: "hm".into() }]);
        assert_eq!((attempt.logs_dropped, attempt.fuel_used, attempt.memory_bytes), (2, Some(7), Some(65536)));
        assert!(attempt.timers.is_empty(), "a failed invocation's timers are dropped");
    }
}
