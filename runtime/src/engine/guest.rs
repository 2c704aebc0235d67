//! Guest memory I/O and the call sequence primitives on one instance:
//! allocate and write the input, call an export under the deadline, read
//! and bound-check the output. Every pointer and length the guest gives is
//! checked here; a bad one is a classified failure, never a host panic.

use wasmtime::{Instance, InstancePre, Memory, ResourceLimiter, Store, TypedFunc};
use weir_abi::{PluginDescription, encoding, exports};

use super::Engine;
use super::host::{HostState, PluginLog, classify};
use super::limits::Limits;
use crate::error::InvokeError;

/// A store and instance with the exports every call needs.
pub(super) struct Guest {
    pub(super) store: Store<HostState>,
    pub(super) instance: Instance,
    pub(super) memory: Memory,
    pub(super) deadline_ticks: u64,
    pub(super) fuel: Option<u64>,
    pub(super) metering: bool,
    pub(super) limits: Limits,
}

impl Guest {
    pub(super) fn new(engine: &Engine, pre: &InstancePre<HostState>, limits: &Limits) -> Result<Self, InvokeError> {
        let state = HostState {
            memory_limit: limits.memory_bytes(),
            memory_limit_hit: false,
            memory: None,
            log_budget: limits.max_log_bytes(),
            log_lines_left: limits.max_log_lines(),
            logs: Vec::new(),
            logs_dropped: 0,
            fault: None,
            state: None,
            state_failure: None,
            state_written: 0,
            state_limits: limits.state_call_limits(),
            timers: super::timer::TimerCalls::new(limits),
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

    pub(super) fn func<P: wasmtime::WasmParams, R: wasmtime::WasmResults>(
        &mut self,
        name: &str,
    ) -> Result<TypedFunc<P, R>, InvokeError> {
        self.instance
            .get_typed_func::<P, R>(&mut self.store, name)
            .map_err(|e| InvokeError::BadOutput { reason: format!("export `{name}`: {e:#}") })
    }

    /// Reset per-invocation state and arm the deadline and fuel budget.
    pub(super) fn begin(&mut self) -> Result<(), InvokeError> {
        let state = self.store.data_mut();
        state.memory_limit_hit = false;
        state.fault = None;
        state.state_failure = None;
        state.state_written = 0;
        state.timers.reset();
        state.log_budget = self.limits.max_log_bytes();
        state.log_lines_left = self.limits.max_log_lines();
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

    pub(super) fn fuel_used(&self) -> Option<u64> {
        if !self.metering {
            return None;
        }
        let left = self.store.get_fuel().ok()?;
        Some(self.fuel.unwrap_or(u64::MAX).saturating_sub(left))
    }

    pub(super) fn call<P: wasmtime::WasmParams, R: wasmtime::WasmResults>(
        &mut self,
        func: &TypedFunc<P, R>,
        params: P,
    ) -> Result<R, InvokeError> {
        func.call(&mut self.store, params).map_err(|e| classify(&e, self.store.data_mut(), &self.limits))
    }

    /// Copy `bytes` into a fresh guest buffer from `weir_alloc`.
    pub(super) fn alloc_and_write(
        &mut self,
        alloc: &TypedFunc<i32, i32>,
        bytes: &[u8],
    ) -> Result<(i32, i32), InvokeError> {
        if bytes.is_empty() {
            return Ok((0, 0));
        }
        let len =
            i32::try_from(bytes.len()).map_err(|_| InvokeError::BadOutput { reason: "input over 2 GiB".into() })?;
        let ptr = self.call(alloc, len)?;
        self.write_at(ptr, bytes)?;
        Ok((ptr, len))
    }

    /// What a `weir_alloc(requested)` that returned 0 means: the memory cap
    /// was hit, or the plugin failed to allocate. Names the size the host
    /// asked for, which may be more than the bytes it then writes.
    pub(super) fn alloc_failed(&self, requested: usize) -> InvokeError {
        if self.store.data().memory_limit_hit {
            InvokeError::MemoryLimit { limit: self.limits.memory_bytes() }
        } else {
            InvokeError::BadOutput { reason: format!("weir_alloc({requested}) returned 0") }
        }
    }

    pub(super) fn write_at(&mut self, ptr: i32, bytes: &[u8]) -> Result<(), InvokeError> {
        if ptr == 0 {
            return Err(self.alloc_failed(bytes.len()));
        }
        self.memory.write(&mut self.store, ptr as u32 as usize, bytes).map_err(|_| InvokeError::BadOutput {
            reason: format!("weir_alloc returned {ptr:#x}, outside the plugin's memory"),
        })
    }

    /// Decode the output buffer `packed` points to, then free it.
    pub(super) fn take_output<T: serde::de::DeserializeOwned>(
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
        // The decoded structures' overhead (per header, per emit) is bounded
        // by the output cap too: a small output cannot become a large value.
        let value = encoding::decode_with_budget::<T>(bytes, self.limits.max_output_bytes())
            .map_err(|e| InvokeError::BadOutput { reason: format!("{what} is not a valid encoding: {e}") })?;
        self.call(dealloc, (ptr as i32, len as i32))?;
        Ok(value)
    }

    pub(super) fn drain_logs(&mut self) -> (Vec<PluginLog>, usize) {
        let state = self.store.data_mut();
        (std::mem::take(&mut state.logs), std::mem::take(&mut state.logs_dropped))
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
