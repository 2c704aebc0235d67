//! Running a plugin: instances, the call sequence of one invocation, the
//! host's `log` import, and the classification of every failure.

use wasmtime::{Caller, Instance, InstancePre, Linker, Memory, ResourceLimiter, Store, Trap, TypedFunc};
use weir_abi::{DeliveryRef, Emit, InitOutcome, LogLevel, Outcome, PluginDescription, encoding, exports};

use super::Engine;
use super::limits::Limits;
use super::plugin::{Plugin, sandbox};
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

/// One log line a plugin wrote through the `log` import.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginLog {
    /// Its level.
    pub level: LogLevel,
    /// The text (invalid UTF-8 replaced).
    pub message: String,
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
}

/// Per-store host state: the memory cap, the guest's memory for the `log`
/// import, and what the current invocation logged or did wrong.
pub(crate) struct HostState {
    memory_limit: usize,
    memory_limit_hit: bool,
    memory: Option<Memory>,
    log_budget: usize,
    logs: Vec<PluginLog>,
    logs_dropped: usize,
    /// A guest misbehaviour detected inside a host function; it turns the
    /// resulting trap into `bad_output`.
    fault: Option<String>,
}

impl ResourceLimiter for HostState {
    fn memory_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        if desired > self.memory_limit {
            self.memory_limit_hit = true;
            return Ok(false);
        }
        Ok(true)
    }

    fn memory_grow_failed(&mut self, _error: wasmtime::Error) -> wasmtime::Result<()> {
        // With the pooling allocator a slot's size can refuse growth before
        // `memory_growing` does: that is the memory limit too.
        self.memory_limit_hit = true;
        Ok(())
    }

    fn table_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        // Tables hold function references; no honest plugin needs more.
        Ok(desired <= 100_000)
    }

    fn instances(&self) -> usize {
        1
    }

    fn memories(&self) -> usize {
        1
    }

    fn tables(&self) -> usize {
        4
    }
}

/// Define the host's functions (module `weir`) in `linker`.
pub(crate) fn define_host_functions(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    linker.func_wrap(
        weir_abi::HOST_MODULE,
        weir_abi::imports::LOG,
        |mut caller: Caller<'_, HostState>, level: i32, ptr: i32, len: i32| -> wasmtime::Result<()> {
            let Some(memory) = caller.data().memory else {
                caller.data_mut().fault = Some("weir::log was called before the instance was ready".into());
                return Err(wasmtime::Error::msg("weir::log called during instantiation"));
            };
            let (data, state) = memory.data_and_store_mut(&mut caller);
            let start = ptr as u32 as usize;
            let len = len as u32 as usize;
            let Some(bytes) = start.checked_add(len).and_then(|end| data.get(start..end)) else {
                state.fault = Some(format!(
                    "weir::log(ptr={start:#x}, len={len}) points outside the plugin's {} bytes of memory",
                    data.len()
                ));
                return Err(wasmtime::Error::msg("weir::log given an out-of-bounds buffer"));
            };
            if len > state.log_budget {
                state.logs_dropped += 1;
                return Ok(());
            }
            state.log_budget -= len;
            let message = String::from_utf8_lossy(bytes).into_owned();
            state.logs.push(PluginLog { level: LogLevel::from_i32(level), message });
            Ok(())
        },
    )?;
    Ok(())
}

/// A store and instance with the exports every call needs.
struct Guest {
    store: Store<HostState>,
    instance: Instance,
    memory: Memory,
    deadline_ticks: u64,
    fuel: Option<u64>,
    metering: bool,
    limits: Limits,
}

impl Guest {
    fn new(engine: &Engine, pre: &InstancePre<HostState>, limits: &Limits) -> Result<Self, InvokeError> {
        let state = HostState {
            memory_limit: limits.memory_bytes(),
            memory_limit_hit: false,
            memory: None,
            log_budget: limits.max_log_bytes(),
            logs: Vec::new(),
            logs_dropped: 0,
            fault: None,
        };
        let mut store = Store::new(engine.wasmtime(), state);
        store.limiter(|s| s as &mut dyn ResourceLimiter);
        store.epoch_deadline_trap();
        let deadline_ticks = engine.deadline_ticks(limits.deadline());
        let metering = engine.config().consume_fuel;
        // A start function runs under the same limits as a call.
        store.set_epoch_deadline(deadline_ticks);
        if metering {
            store
                .set_fuel(limits.fuel().unwrap_or(u64::MAX))
                .map_err(|e| InvokeError::Trap { message: format!("{e:#}") })?;
        }
        let instance = match pre.instantiate(&mut store) {
            Ok(i) => i,
            Err(e) => return Err(classify(&e, store.data_mut(), limits)),
        };
        let memory = instance
            .get_memory(&mut store, exports::MEMORY)
            .ok_or_else(|| InvokeError::BadOutput { reason: "the module exports no memory".into() })?;
        store.data_mut().memory = Some(memory);
        Ok(Self { store, instance, memory, deadline_ticks, fuel: limits.fuel(), metering, limits: limits.clone() })
    }

    fn func<P: wasmtime::WasmParams, R: wasmtime::WasmResults>(
        &mut self,
        name: &str,
    ) -> Result<TypedFunc<P, R>, InvokeError> {
        self.instance
            .get_typed_func::<P, R>(&mut self.store, name)
            .map_err(|e| InvokeError::BadOutput { reason: format!("export `{name}`: {e:#}") })
    }

    /// Reset per-invocation state and arm the deadline and fuel budget.
    fn begin(&mut self) -> Result<(), InvokeError> {
        let state = self.store.data_mut();
        state.memory_limit_hit = false;
        state.fault = None;
        state.log_budget = self.limits.max_log_bytes();
        state.logs.clear();
        state.logs_dropped = 0;
        self.store.set_epoch_deadline(self.deadline_ticks);
        if self.metering {
            self.store
                .set_fuel(self.fuel.unwrap_or(u64::MAX))
                .map_err(|e| InvokeError::Trap { message: format!("{e:#}") })?;
        }
        Ok(())
    }

    fn fuel_used(&self) -> Option<u64> {
        if !self.metering {
            return None;
        }
        let left = self.store.get_fuel().ok()?;
        Some(self.fuel.unwrap_or(u64::MAX).saturating_sub(left))
    }

    fn call<P: wasmtime::WasmParams, R: wasmtime::WasmResults>(
        &mut self,
        func: &TypedFunc<P, R>,
        params: P,
    ) -> Result<R, InvokeError> {
        func.call(&mut self.store, params).map_err(|e| classify(&e, self.store.data_mut(), &self.limits))
    }

    /// Copy `bytes` into a fresh guest buffer from `weir_alloc`.
    fn alloc_and_write(&mut self, alloc: &TypedFunc<i32, i32>, bytes: &[u8]) -> Result<(i32, i32), InvokeError> {
        if bytes.is_empty() {
            return Ok((0, 0));
        }
        let len =
            i32::try_from(bytes.len()).map_err(|_| InvokeError::BadOutput { reason: "input over 2 GiB".into() })?;
        let ptr = self.call(alloc, len)?;
        self.write_at(ptr, bytes)?;
        Ok((ptr, len))
    }

    fn write_at(&mut self, ptr: i32, bytes: &[u8]) -> Result<(), InvokeError> {
        if ptr == 0 {
            return Err(if self.store.data().memory_limit_hit {
                InvokeError::MemoryLimit { limit: self.limits.memory_bytes() }
            } else {
                InvokeError::BadOutput { reason: format!("weir_alloc({}) returned 0", bytes.len()) }
            });
        }
        self.memory.write(&mut self.store, ptr as u32 as usize, bytes).map_err(|_| InvokeError::BadOutput {
            reason: format!("weir_alloc returned {ptr:#x}, outside the plugin's memory"),
        })
    }

    /// Decode the output buffer `packed` points to, then free it.
    fn take_output<T: serde::de::DeserializeOwned>(
        &mut self,
        packed: i64,
        dealloc: &TypedFunc<(i32, i32), ()>,
        what: &str,
    ) -> Result<T, InvokeError> {
        let (ptr, len) = weir_abi::unpack(packed);
        let (start, len) = (ptr as usize, len as usize);
        if len > self.limits.max_output_bytes() {
            return Err(InvokeError::BadOutput {
                reason: format!("{what} is {len} bytes, over the cap of {} bytes", self.limits.max_output_bytes()),
            });
        }
        let data = self.memory.data(&self.store);
        let Some(bytes) = start.checked_add(len).and_then(|end| data.get(start..end)) else {
            return Err(InvokeError::BadOutput {
                reason: format!(
                    "{what} at ptr={start:#x} len={len} lies outside the plugin's {} bytes of memory",
                    data.len()
                ),
            });
        };
        let value = encoding::decode::<T>(bytes)
            .map_err(|e| InvokeError::BadOutput { reason: format!("{what} is not a valid encoding: {e}") })?;
        self.call(dealloc, (ptr as i32, len as i32))?;
        Ok(value)
    }

    fn drain_logs(&mut self) -> (Vec<PluginLog>, usize) {
        let state = self.store.data_mut();
        (std::mem::take(&mut state.logs), std::mem::take(&mut state.logs_dropped))
    }
}

/// Turn a wasmtime error into a classified failure.
fn classify(error: &wasmtime::Error, state: &mut HostState, limits: &Limits) -> InvokeError {
    if let Some(fault) = state.fault.take() {
        return InvokeError::BadOutput { reason: fault };
    }
    match error.downcast_ref::<Trap>() {
        Some(Trap::Interrupt) => InvokeError::Timeout { deadline: limits.deadline() },
        Some(Trap::OutOfFuel) => InvokeError::OutOfFuel { budget: limits.fuel().unwrap_or(u64::MAX) },
        _ if state.memory_limit_hit => InvokeError::MemoryLimit { limit: limits.memory_bytes() },
        trap => {
            let mut message = match trap {
                Some(t) => t.to_string(),
                None => format!("{error:#}"),
            };
            // The SDK logs a panic's message just before the trap.
            if let Some(panic) = state.logs.iter().rev().find(|l| l.message.starts_with("plugin panicked")) {
                message = format!("{message} ({})", panic.message);
            }
            InvokeError::Trap { message }
        }
    }
}

/// A probe instance used while loading: version and description only.
pub(crate) struct Probe {
    guest: Guest,
}

impl Probe {
    pub(crate) fn new(engine: &Engine, pre: &InstancePre<HostState>) -> Result<Self, InvokeError> {
        Ok(Self { guest: Guest::new(engine, pre, &Limits::default())? })
    }

    pub(crate) fn abi_version(&mut self) -> Result<i32, InvokeError> {
        let f = self.guest.func::<(), i32>(exports::ABI_VERSION)?;
        self.guest.begin()?;
        self.guest.call(&f, ())
    }

    pub(crate) fn describe(&mut self) -> Result<PluginDescription, InvokeError> {
        let describe = self.guest.func::<(), i64>(exports::DESCRIBE)?;
        let dealloc = self.guest.func::<(i32, i32), ()>(exports::DEALLOC)?;
        self.guest.begin()?;
        let packed = self.guest.call(&describe, ())?;
        self.guest.take_output(packed, &dealloc, "the description")
    }
}

/// A live, initialised instance with its typed exports and the reusable
/// input buffer.
struct Live {
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
                return Err(StartError::Init(reason));
            }
        }
        Ok(Self { guest, alloc, dealloc, handle, input: (0, 0) })
    }

    fn handle(&mut self, encoded: &[u8]) -> Result<Vec<Emit>, InvokeError> {
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
                return Err(self
                    .guest
                    .write_at(0, encoded)
                    .err()
                    .unwrap_or(InvokeError::BadOutput { reason: "weir_alloc returned 0".into() }));
            }
            self.input = (ptr, cap);
        }
        let ptr = self.input.0;
        self.guest.write_at(ptr, encoded)?;
        let len = encoded.len() as i32;
        let packed = self.guest.call(&self.handle, (ptr, len))?;
        let outcome: Outcome = self.guest.take_output(packed, &self.dealloc, "the outcome")?;
        match outcome {
            Outcome::Ok(emits) if emits.len() > self.guest.limits.max_emits() => Err(InvokeError::BadOutput {
                reason: format!("{} emitted events, over the cap of {}", emits.len(), self.guest.limits.max_emits()),
            }),
            Outcome::Ok(emits) => Ok(emits),
            Outcome::Retry(reason) => Err(InvokeError::HandlerRetry { reason }),
            Outcome::Reject(reason) => Err(InvokeError::HandlerReject { reason }),
        }
    }
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
        self.encoded.clear();
        if let Err(e) = encoding::encode_into(&delivery, &mut self.encoded) {
            return failed(InvokeError::BadOutput { reason: format!("the host could not encode the delivery: {e}") });
        }
        let mut live = match self.live.take() {
            Some(live) => live,
            None => match self.start() {
                Ok(live) => live,
                Err(StartError::Init(reason)) => return failed(InvokeError::InitFailed { reason }),
                Err(StartError::Sandbox(_, e)) => return failed(e),
            },
        };
        let result = live.handle(&self.encoded);
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
        Invocation { result, logs, logs_dropped, fuel_used, memory_bytes }
    }
}

fn failed(error: InvokeError) -> Invocation {
    Invocation { result: Err(error), logs: Vec::new(), logs_dropped: 0, fuel_used: None, memory_bytes: None }
}
