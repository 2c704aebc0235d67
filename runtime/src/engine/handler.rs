//! Running a plugin: a [`Handler`] is a plugin instantiated with its limits
//! and configuration; it starts instances and runs the call sequence of one
//! invocation. The host side (state, limiter, imports) is in `host.rs`, guest
//! memory I/O in `guest.rs`.

use wasmtime::TypedFunc;
use weir_abi::{Decide, Decision, DeliveryRef, Emit, EvolveRef, Evolved, InitOutcome, Outcome, encoding, exports};

use super::guest::Guest;
use super::host::PluginLog;
use super::limits::Limits;
use super::plugin::Plugin;
use super::state::StateAccess;
use super::text::{self, MAX_REASON_BYTES};
use crate::error::{InvokeError, LoadError};

/// Whether a handler keeps its instance between events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum InstanceMode {
    /// One instance serves event after event (fast); it is discarded after
    /// any sandbox failure and a fresh one takes over. The default.
    #[default]
    Reuse,
    /// A fresh instance (and `weir_init`) for every event: no state survives
    /// between events. Cheap with the engine's pooling allocator.
    FreshPerEvent,
}

/// The result of one invocation, with what the plugin logged meanwhile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invocation {
    /// The emitted events, or why there are none.
    pub result: Result<Vec<Emit>, InvokeError>,
    /// Log lines, in order, up to the log byte cap.
    pub logs: Vec<PluginLog>,
    /// Lines dropped over the cap.
    pub logs_dropped: usize,
    /// Fuel consumed, when the engine meters fuel.
    pub fuel_used: Option<u64>,
    /// Size of the instance's linear memory after the call (it never
    /// shrinks, so this is the instance's high-water mark), when an
    /// instance ran.
    pub memory_bytes: Option<usize>,
    /// The timer operations it asked for (`weir::timer_*`), in order; the
    /// caller commits them with a successful outcome only.
    pub timers: Vec<super::timer::TimerCall>,
}

/// A live, initialised instance with its typed exports and the reusable
/// input buffer.
pub(super) struct Live {
    guest: Guest,
    alloc: TypedFunc<i32, i32>,
    dealloc: TypedFunc<(i32, i32), ()>,
    handle: TypedFunc<(i32, i32), i64>,
    /// The host-owned input buffer in guest memory: pointer and capacity.
    input: (i32, usize),
}

enum StartError {
    Init(String),
    Sandbox(&'static str, InvokeError),
}

impl Live {
    fn start(plugin: &Plugin, limits: &Limits, config: &[u8]) -> Result<Self, StartError> {
        let inner = &plugin.inner;
        let mut guest =
            Guest::new(&inner.engine, &inner.pre, limits).map_err(|e| StartError::Sandbox("instantiate", e))?;
        let fail = |stage| move |e| StartError::Sandbox(stage, e);
        let alloc = guest.func(exports::ALLOC).map_err(fail("exports"))?;
        let dealloc = guest.func(exports::DEALLOC).map_err(fail("exports"))?;
        let handle = guest.func(exports::HANDLE).map_err(fail("exports"))?;
        if inner.info.has_init {
            let init = guest.func::<(i32, i32), i64>(exports::INIT).map_err(fail("exports"))?;
            guest.begin().map_err(fail("weir_init"))?;
            let (ptr, len) = guest.alloc_and_write(&alloc, config).map_err(fail("weir_init"))?;
            let packed = guest.call(&init, (ptr, len)).map_err(fail("weir_init"))?;
            let outcome: InitOutcome =
                guest.take_output(packed, &dealloc, "the init outcome").map_err(fail("weir_init"))?;
            if len > 0 {
                guest.call(&dealloc, (ptr, len)).map_err(fail("weir_init"))?;
            }
            if let InitOutcome::Failed(reason) = outcome {
                return Err(StartError::Init(text::bounded(&reason, MAX_REASON_BYTES)));
            }
        }
        Ok(Self { guest, alloc, dealloc, handle, input: (0, 0) })
    }

    fn handle(&mut self, encoded: &[u8]) -> Result<Vec<Emit>, InvokeError> {
        let (ptr, len) = self.write_input(encoded)?;
        let packed = self.guest.call(&self.handle, (ptr, len))?;
        let outcome: Outcome = self.guest.take_output(packed, &self.dealloc, "the outcome")?;
        match outcome {
            Outcome::Ok(emits) => {
                check_emits(&emits, &self.guest.limits)?;
                Ok(emits)
            }
            // The plugin's own words: escaped and cut before anything stores,
            // logs or shows them.
            Outcome::Retry(reason) => {
                Err(InvokeError::HandlerRetry { reason: text::bounded(&reason, MAX_REASON_BYTES) })
            }
            Outcome::Reject(reason) => {
                Err(InvokeError::HandlerReject { reason: text::bounded(&reason, MAX_REASON_BYTES) })
            }
        }
    }

    /// Call an aggregate's export `name` on `encoded` and decode its answer
    /// (`what` names it in a failure).
    pub(super) fn call_aggregate<T: serde::de::DeserializeOwned>(
        &mut self,
        name: &str,
        encoded: &[u8],
        what: &str,
    ) -> Result<T, InvokeError> {
        let func = self.guest.func::<(i32, i32), i64>(name)?;
        let (ptr, len) = self.write_input(encoded)?;
        let packed = self.guest.call(&func, (ptr, len))?;
        self.guest.take_output(packed, &self.dealloc, what)
    }

    /// The limits the instance runs under.
    pub(super) fn limits(&self) -> &Limits {
        &self.guest.limits
    }

    /// Start an invocation and copy `encoded` into the reused input buffer.
    fn write_input(&mut self, encoded: &[u8]) -> Result<(i32, i32), InvokeError> {
        self.guest.begin()?;
        if self.input.1 < encoded.len() {
            if self.input.1 > 0 {
                let (ptr, cap) = self.input;
                self.input = (0, 0);
                self.guest.call(&self.dealloc, (ptr, cap as i32))?;
            }
            // Grow in powers of two so a stream of similar events allocates once.
            let cap = encoded.len().next_power_of_two().max(1024);
            let cap_i32 =
                i32::try_from(cap).map_err(|_| InvokeError::BadOutput { reason: "input over 2 GiB".into() })?;
            let ptr = self.guest.call(&self.alloc, cap_i32)?;
            if ptr == 0 {
                return Err(self.guest.alloc_failed(cap));
            }
            self.input = (ptr, cap);
        }
        let ptr = self.input.0;
        self.guest.write_at(ptr, encoded)?;
        Ok((ptr, encoded.len() as i32))
    }
}

/// The host's own bookkeeping headers, which a handler is not given: the
/// window of a host-keyed emit (`delivery/`) and a cluster's partition
/// mark (`cluster/`). Both are set by the host alone and mean nothing to
/// the handler, and the window's value depends on when the input was
/// handled, so a handler that read it would not be deterministic. Left out
/// while the delivery is encoded, so hiding them copies nothing.
fn is_host_bookkeeping(name: &str) -> bool {
    name == crate::delivery::HOST_KEY_HEADER || crate::cluster::is_mark(name)
}

/// A plugin instantiated with its limits and configuration: call
/// [`invoke`](Handler::invoke) once per delivery, from one thread at a time.
///
/// # Isolation
///
/// After any failure other than the handler's own retry or reject, the
/// instance is dropped and the next invocation starts a fresh one: a trapped,
/// timed-out or lying guest leaves nothing behind.
pub struct Handler {
    plugin: Plugin,
    limits: Limits,
    config: Vec<u8>,
    mode: InstanceMode,
    live: Option<Live>,
    encoded: Vec<u8>,
    instances_started: u64,
}

impl std::fmt::Debug for Handler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Handler")
            .field("plugin", &self.plugin.info().name())
            .field("limits", &self.limits)
            .field("mode", &self.mode)
            .field("instances_started", &self.instances_started)
            .finish_non_exhaustive()
    }
}

impl Handler {
    pub(super) fn new(plugin: Plugin, limits: Limits, config: Vec<u8>, mode: InstanceMode) -> Result<Self, LoadError> {
        let mut handler = Self { plugin, limits, config, mode, live: None, encoded: Vec::new(), instances_started: 0 };
        // Start one instance now even in fresh mode: a bad config must fail at
        // load, not on the first event.
        let live = handler.start().map_err(|e| match e {
            StartError::Init(reason) => LoadError::InitFailed { reason },
            StartError::Sandbox(stage, source) => sandbox(stage)(source),
        })?;
        if mode == InstanceMode::Reuse {
            handler.live = Some(live);
        }
        Ok(handler)
    }

    fn start(&mut self) -> Result<Live, StartError> {
        self.instances_started += 1;
        Live::start(&self.plugin, &self.limits, &self.config)
    }

    /// The plugin this handler runs.
    #[must_use]
    pub fn plugin(&self) -> &Plugin {
        &self.plugin
    }

    /// The limits it runs under.
    #[must_use]
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// How many instances were started so far (1 + one per discarded
    /// instance in reuse mode; one per event in fresh mode).
    #[must_use]
    pub fn instances_started(&self) -> u64 {
        self.instances_started
    }

    /// Run the handler on one delivery.
    ///
    /// Never panics and never lets the guest affect the host: every failure
    /// comes back classified in [`Invocation::result`].
    pub fn invoke(&mut self, delivery: DeliveryRef<'_>) -> Invocation {
        self.invoke_with_state(delivery, None).0
    }

    /// Run the handler on one delivery with `state` lent to it for the
    /// `weir::state_*` imports, and give the state back with the result.
    /// The writes the handler made are the state's to keep or drop: the
    /// caller commits them with a successful outcome and discards them
    /// otherwise. Without state (`None`) a plugin that calls a state import
    /// fails as `bad_output`.
    pub fn invoke_with_state(
        &mut self,
        delivery: DeliveryRef<'_>,
        state: Option<Box<dyn StateAccess>>,
    ) -> (Invocation, Option<Box<dyn StateAccess>>) {
        self.encoded.clear();
        encoding::encode_delivery_hiding(delivery, &mut self.encoded, &is_host_bookkeeping);
        let mut live = match self.live.take() {
            Some(live) => live,
            None => match self.start() {
                Ok(live) => live,
                Err(StartError::Init(reason)) => return (failed(InvokeError::InitFailed { reason }), state),
                Err(StartError::Sandbox(_, e)) => return (failed(e), state),
            },
        };
        live.guest.store.data_mut().state = state;
        live.guest.store.data_mut().timers.open = true;
        let result = live.handle(&self.encoded);
        let host = live.guest.store.data_mut();
        host.timers.open = false;
        let timers = std::mem::take(&mut host.timers.calls);
        let state = host.state.take();
        let (logs, logs_dropped) = live.guest.drain_logs();
        let fuel_used = live.guest.fuel_used();
        let memory_bytes = Some(live.guest.memory.data_size(&live.guest.store));
        let keep = match &result {
            Ok(_) => true,
            Err(e) => e.is_handler_decision(),
        };
        if keep && self.mode == InstanceMode::Reuse {
            self.live = Some(live);
        }
        (Invocation { result, logs, logs_dropped, fuel_used, memory_bytes, timers }, state)
    }
}

/// The result of one call of an aggregate's `weir_decide` or
/// `weir_evolve`, with what it logged meanwhile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AggregateCall<T> {
    /// The answer, or why there is none: classified as an invocation's
    /// failure (trap, timeout, memory, bad output); an evolve that answers
    /// `Failed` is [`InvokeError::HandlerReject`].
    pub result: Result<T, InvokeError>,
    /// Log lines, in order, up to the log byte cap.
    pub logs: Vec<PluginLog>,
    /// Lines dropped over the cap.
    pub logs_dropped: usize,
}

impl Handler {
    /// Run `f` on a live instance with the input encoded, under the same
    /// limits and instance rules as [`Handler::invoke`]: the instance is
    /// discarded after a sandbox failure.
    fn aggregate_call<T>(
        &mut self,
        encode: impl FnOnce(&mut Vec<u8>) -> Result<usize, encoding::EncodeError>,
        f: impl FnOnce(&mut Live, &[u8]) -> Result<T, InvokeError>,
    ) -> AggregateCall<T> {
        if !self.plugin.info().is_aggregate() {
            let reason = "the module is not an aggregate: it exports no weir_decide and weir_evolve".into();
            return AggregateCall { result: Err(InvokeError::BadOutput { reason }), logs: Vec::new(), logs_dropped: 0 };
        }
        self.export_call(encode, f)
    }

    /// Run `f` on a live instance with the input encoded: the call sequence
    /// of every export besides `weir_handle` (an aggregate's, an
    /// upcaster's), under the limits and instance rules of
    /// [`Handler::invoke`].
    pub(super) fn export_call<T>(
        &mut self,
        encode: impl FnOnce(&mut Vec<u8>) -> Result<usize, encoding::EncodeError>,
        f: impl FnOnce(&mut Live, &[u8]) -> Result<T, InvokeError>,
    ) -> AggregateCall<T> {
        let failed = |error| AggregateCall { result: Err(error), logs: Vec::new(), logs_dropped: 0 };
        self.encoded.clear();
        if let Err(e) = encode(&mut self.encoded) {
            return failed(InvokeError::BadOutput { reason: format!("the host could not encode the input: {e}") });
        }
        let mut live = match self.live.take() {
            Some(live) => live,
            None => match self.start() {
                Ok(live) => live,
                Err(StartError::Init(reason)) => return failed(InvokeError::InitFailed { reason }),
                Err(StartError::Sandbox(_, e)) => return failed(e),
            },
        };
        let result = f(&mut live, &self.encoded);
        let (logs, logs_dropped) = live.guest.drain_logs();
        let keep = match &result {
            Ok(_) => true,
            Err(e) => e.is_handler_decision(),
        };
        if keep && self.mode == InstanceMode::Reuse {
            self.live = Some(live);
        }
        AggregateCall { result, logs, logs_dropped }
    }

    /// Ask an aggregate to decide a command (`weir_decide`). Accepted
    /// events are held to the same caps as a handler's emits.
    pub fn decide(&mut self, decide: &Decide) -> AggregateCall<Decision> {
        self.aggregate_call(
            |buf| encoding::encode_into(decide, buf),
            |live, encoded| {
                let decision: Decision = live.call_aggregate(exports::DECIDE, encoded, "the decision")?;
                match decision {
                    Decision::Accept(emits) => {
                        check_emits(&emits, &live.guest.limits)?;
                        Ok(Decision::Accept(emits))
                    }
                    Decision::Reject(reason) => Ok(Decision::Reject(text::bounded(&reason, MAX_REASON_BYTES))),
                }
            },
        )
    }

    /// Ask an aggregate to fold one event into a state (`weir_evolve`);
    /// answers the new state.
    pub fn evolve(&mut self, evolve: EvolveRef<'_>) -> AggregateCall<Vec<u8>> {
        self.aggregate_call(
            |buf| encoding::encode_into(&evolve, buf),
            |live, encoded| match live.call_aggregate::<Evolved>(exports::EVOLVE, encoded, "the evolved state")? {
                Evolved::State(state) => Ok(state),
                Evolved::Failed(reason) => {
                    Err(InvokeError::HandlerReject { reason: text::bounded(&reason, MAX_REASON_BYTES) })
                }
            },
        )
    }
}

/// The caps on what one invocation may emit: the number of events, and each
/// event's headers (count and bytes).
fn check_emits(emits: &[Emit], limits: &Limits) -> Result<(), InvokeError> {
    if emits.len() > limits.max_emits() {
        return Err(InvokeError::BadOutput {
            reason: format!("{} emitted events, over the cap of {}", emits.len(), limits.max_emits()),
        });
    }
    for (i, emit) in emits.iter().enumerate() {
        check_headers(&format!("emit #{i}"), emit, limits)?;
    }
    Ok(())
}

/// The caps on one emitted event's headers (count and bytes); `what` names
/// it in the failure. Also for a timer's event (`timer.rs`).
pub(super) fn check_headers(what: &str, emit: &Emit, limits: &Limits) -> Result<(), InvokeError> {
    if emit.headers.len() > limits.max_headers_per_emit() {
        return Err(InvokeError::BadOutput {
            reason: format!(
                "{what} has {} headers, over the cap of {}",
                emit.headers.len(),
                limits.max_headers_per_emit()
            ),
        });
    }
    let bytes: usize = emit.headers.iter().map(|h| h.name.len() + h.value.len()).sum();
    if bytes > limits.max_header_bytes_per_emit() {
        return Err(InvokeError::BadOutput {
            reason: format!(
                "{what} has {bytes} bytes of headers, over the cap of {}",
                limits.max_header_bytes_per_emit()
            ),
        });
    }
    Ok(())
}

fn failed(error: InvokeError) -> Invocation {
    Invocation {
        result: Err(error),
        logs: Vec::new(),
        logs_dropped: 0,
        fuel_used: None,
        memory_bytes: None,
        timers: Vec::new(),
    }
}

impl Plugin {
    /// Instantiate into a [`Handler`] with these limits and this
    /// configuration (JSON by convention; empty for none). With
    /// [`InstanceMode::Reuse`] an instance is created and initialised now, so
    /// a bad configuration fails here rather than on the first event.
    ///
    /// # Errors
    ///
    /// [`LoadError::InitFailed`] if the plugin refuses its configuration,
    /// [`LoadError::FuelNotEnabled`] if `limits` has a fuel budget the engine
    /// cannot meter, [`LoadError::Sandbox`] if instantiation or init fails in
    /// the sandbox.
    pub fn handler(&self, limits: Limits, config: Vec<u8>, mode: InstanceMode) -> Result<Handler, LoadError> {
        if limits.fuel().is_some() && !self.inner.engine.config().consume_fuel {
            return Err(LoadError::FuelNotEnabled);
        }
        Handler::new(self.clone(), limits, config, mode)
    }
}

/// Shorthand used by the handler for load-stage failures.
fn sandbox(stage: &'static str) -> impl FnOnce(InvokeError) -> LoadError {
    move |error| LoadError::Sandbox { stage, error }
}
