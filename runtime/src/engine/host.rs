//! The host side of an instance: per-store state, the resource limiter
//! that caps memory, the host functions a plugin may import (`weir::log`),
//! and the classification of wasmtime errors into failures.

use wasmtime::{Caller, Linker, Memory, ResourceLimiter, Trap};
use weir_abi::LogLevel;

use super::limits::{LOG_LINE_OVERHEAD, Limits};
use super::state::{StateAccess, StateCallLimits};
use super::text;
use crate::error::InvokeError;

/// One log line a plugin wrote through the `log` import.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginLog {
    /// Its level.
    pub level: LogLevel,
    /// The text: invalid UTF-8 replaced, control characters escaped
    /// (`\n`, `\u{1b}`, …), so it stays one line of the host's log.
    pub message: String,
}

/// Per-store host state: the memory cap, the guest's memory for the `log`
/// import, and what the current invocation logged or did wrong.
pub(crate) struct HostState {
    pub(super) memory_limit: usize,
    pub(super) memory_limit_hit: bool,
    pub(super) memory: Option<Memory>,
    pub(super) log_budget: usize,
    /// Lines the current invocation may still log.
    pub(super) log_lines_left: usize,
    pub(super) logs: Vec<PluginLog>,
    pub(super) logs_dropped: usize,
    /// A guest misbehaviour detected inside a host function; it turns the
    /// resulting trap into `bad_output`.
    pub(super) fault: Option<String>,
    /// The state lent for the current invocation (none in `weir_init`, or
    /// for a handler run without state).
    pub(super) state: Option<Box<dyn StateAccess>>,
    /// A state call's failure (a bound, the store, a bad pointer): the
    /// resulting trap is classified as this.
    pub(super) state_failure: Option<InvokeError>,
    /// Bytes of keys and values the current invocation has written.
    pub(super) state_written: usize,
    pub(super) state_limits: StateCallLimits,
    /// The timer operations of the current invocation (`timer.rs`).
    pub(super) timers: super::timer::TimerCalls,
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
            // Every line costs its text plus a fixed overhead, and the lines
            // are counted: an empty line is not free.
            let cost = len.saturating_add(LOG_LINE_OVERHEAD);
            if cost > state.log_budget || state.log_lines_left == 0 {
                state.logs_dropped += 1;
                return Ok(());
            }
            state.log_budget -= cost;
            state.log_lines_left -= 1;
            let message = text::escape(&String::from_utf8_lossy(bytes));
            state.logs.push(PluginLog { level: LogLevel::from_i32(level), message });
            Ok(())
        },
    )?;
    super::state::define(linker)?;
    super::timer::define(linker)
}

/// Turn a wasmtime error into a classified failure.
pub(super) fn classify(error: &wasmtime::Error, state: &mut HostState, limits: &Limits) -> InvokeError {
    if let Some(fault) = state.fault.take() {
        return InvokeError::BadOutput { reason: fault };
    }
    if let Some(failure) = state.state_failure.take() {
        return failure;
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
                message = format!("{message} ({})", text::bounded(&panic.message, text::MAX_REASON_BYTES));
            }
            InvokeError::Trap { message }
        }
    }
}
