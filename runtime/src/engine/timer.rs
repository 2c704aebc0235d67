//! Durable timers as the guest sees them: the optional `weir::timer_schedule`
//! and `weir::timer_cancel` imports (docs/abi.md §15). A plugin without them
//! loads and runs as before.
//!
//! The engine only collects what the handler asks for, checked and bounded
//! (pointers, the key, the encoded emit, operations and bytes per
//! invocation); the operations come back with the [`Invocation`] and the
//! worker commits them with a successful outcome (`delivery/timer.rs`).
//! The guest learns no time here: `fire_at_ms` is its own choice, from the
//! event's time or payload.
//!
//! [`Invocation`]: super::Invocation

use wasmtime::{Caller, Linker};
use weir_abi::{Emit, HOST_MODULE, encoding, imports};

use super::host::HostState;
use super::limits::Limits;
use crate::error::InvokeError;

/// Longest timer key, in bytes: keys name timers; they are stored and
/// listed, not data.
pub const MAX_TIMER_KEY_BYTES: usize = 256;

/// The type of each timer import, as `weir inspect` writes it.
pub(super) const IMPORT_TYPES: [(&str, &str); 2] =
    [(imports::TIMER_SCHEDULE, "func(i32, i32, i64, i32, i32)"), (imports::TIMER_CANCEL, "func(i32, i32)")];

/// One timer operation a handler asked for through the imports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TimerCall {
    /// `timer_schedule`: at or after `fire_at_ms` (Unix ms), append `emit`.
    Schedule {
        /// The timer's key.
        key: String,
        /// When it fires.
        fire_at_ms: u64,
        /// What it appends.
        emit: Emit,
    },
    /// `timer_cancel`.
    Cancel {
        /// The timer's key.
        key: String,
    },
}

/// The timer operations of the current invocation, in the instance's host
/// state.
#[derive(Debug, Default)]
pub(crate) struct TimerCalls {
    pub(super) calls: Vec<TimerCall>,
    /// Encoded emit bytes scheduled so far.
    bytes: usize,
    /// Whether an event is being handled (timers are refused in
    /// `weir_init` and in an aggregate's calls).
    pub(super) open: bool,
    max_calls: usize,
    max_bytes: usize,
    limits: Limits,
}

impl TimerCalls {
    pub(super) fn new(limits: &Limits) -> Self {
        Self {
            calls: Vec::new(),
            bytes: 0,
            open: false,
            max_calls: limits.max_timers_per_invocation(),
            max_bytes: limits.max_output_bytes(),
            limits: limits.clone(),
        }
    }

    /// Forget the previous invocation's operations.
    pub(super) fn reset(&mut self) {
        self.calls.clear();
        self.bytes = 0;
    }
}

fn fail(host: &mut HostState, error: InvokeError) -> wasmtime::Error {
    let message = error.to_string();
    host.state_failure = Some(error);
    wasmtime::Error::msg(message)
}

fn bad(host: &mut HostState, reason: String) -> wasmtime::Error {
    fail(host, InvokeError::BadOutput { reason })
}

fn slice(data: &[u8], ptr: i32, len: i32) -> Option<&[u8]> {
    let start = ptr as u32 as usize;
    start.checked_add(len as u32 as usize).and_then(|end| data.get(start..end))
}

/// Check what every timer call checks and answer the key; the emit bytes
/// too when `emit` names them.
fn key_of(
    caller: &mut Caller<'_, HostState>,
    call: &str,
    kp: i32,
    kl: i32,
    emit: Option<(i32, i32)>,
) -> wasmtime::Result<(String, Option<Emit>)> {
    let Some(memory) = caller.data().memory else {
        return Err(bad(caller.data_mut(), format!("weir::{call} was called before the instance was ready")));
    };
    let (data, host) = memory.data_and_store_mut(caller);
    if !host.timers.open {
        return Err(bad(host, format!("weir::{call}: timers are only available while handling an event")));
    }
    if host.timers.calls.len() >= host.timers.max_calls {
        let reason = format!(
            "more than max_timers_per_invocation = {} timer operations in one invocation",
            host.timers.max_calls
        );
        return Err(fail(host, InvokeError::TimerLimit { reason }));
    }
    let Some(key) = slice(data, kp, kl) else {
        let size = data.len();
        return Err(bad(
            host,
            format!("weir::{call}(key_ptr={kp:#x}, key_len={kl}) points outside the plugin's {size} bytes"),
        ));
    };
    if key.is_empty() || key.len() > MAX_TIMER_KEY_BYTES {
        return Err(bad(
            host,
            format!("weir::{call}: a key of {} bytes (1..={MAX_TIMER_KEY_BYTES} allowed)", key.len()),
        ));
    }
    let Ok(key) = std::str::from_utf8(key) else {
        return Err(bad(host, format!("weir::{call}: the key is not UTF-8")));
    };
    let key = key.to_owned();
    let Some((ep, el)) = emit else { return Ok((key, None)) };
    let Some(bytes) = slice(data, ep, el) else {
        let size = data.len();
        return Err(bad(
            host,
            format!("weir::{call}(emit_ptr={ep:#x}, emit_len={el}) points outside the plugin's {size} bytes"),
        ));
    };
    let total = host.timers.bytes.saturating_add(bytes.len());
    if total > host.timers.max_bytes {
        let reason = format!(
            "{total} bytes of scheduled events in one invocation, over max_output_bytes = {}",
            host.timers.max_bytes
        );
        return Err(fail(host, InvokeError::TimerLimit { reason }));
    }
    // Its decoded overhead is charged to the same budget as the bytes.
    let emit = match encoding::decode_with_budget::<Emit>(bytes, host.timers.max_bytes) {
        Ok(emit) => emit,
        Err(e) => return Err(bad(host, format!("weir::{call}: the emit is not a valid encoding: {e}"))),
    };
    host.timers.bytes = total;
    Ok((key, Some(emit)))
}

/// Define the `weir::timer_*` functions in `linker`.
pub(super) fn define(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    linker.func_wrap(
        HOST_MODULE,
        imports::TIMER_SCHEDULE,
        |mut caller: Caller<'_, HostState>, kp: i32, kl: i32, at: i64, ep: i32, el: i32| -> wasmtime::Result<()> {
            let (key, emit) = key_of(&mut caller, imports::TIMER_SCHEDULE, kp, kl, Some((ep, el)))?;
            let host = caller.data_mut();
            let Ok(fire_at_ms) = u64::try_from(at) else {
                return Err(bad(host, format!("weir::timer_schedule: fire_at_ms {at} is negative")));
            };
            let Some(emit) = emit else {
                return Err(bad(host, "weir::timer_schedule: no emit".into()));
            };
            if let Err(e) = super::handler::check_headers("the scheduled emit", &emit, &host.timers.limits) {
                return Err(fail(host, e));
            }
            host.timers.calls.push(TimerCall::Schedule { key, fire_at_ms, emit });
            Ok(())
        },
    )?;
    linker.func_wrap(
        HOST_MODULE,
        imports::TIMER_CANCEL,
        |mut caller: Caller<'_, HostState>, kp: i32, kl: i32| -> wasmtime::Result<()> {
            let (key, _) = key_of(&mut caller, imports::TIMER_CANCEL, kp, kl, None)?;
            caller.data_mut().timers.calls.push(TimerCall::Cancel { key });
            Ok(())
        },
    )?;
    Ok(())
}
