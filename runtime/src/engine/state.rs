//! Handler state as the guest sees it: the `weir::state_*` imports
//! (docs/abi.md §13) and the [`StateAccess`] seam behind them.
//!
//! The engine checks what it can check alone: pointers and lengths, the
//! scope, key and value sizes, and the bytes one invocation may write. What
//! the state holds, and the writes an invocation makes until its outcome is
//! committed, are the business of the [`StateAccess`] the caller lends the
//! handler for one invocation ([`Handler::invoke_with_state`]); the engine
//! never touches the store.
//!
//! [`Handler::invoke_with_state`]: super::Handler::invoke_with_state

use wasmtime::{Caller, Linker};
use weir_abi::{HOST_MODULE, imports, state_scope};

use super::host::HostState;
use crate::error::InvokeError;

/// Longest state key, in bytes. Keys are names, not data: 1 KiB leaves room
/// for composite keys and keeps the index small.
pub const MAX_STATE_KEY_BYTES: usize = 1024;

/// Whose state a call reads or writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum StateScope {
    /// The event's key (an event without a key: [`StateScope::Shared`]).
    Key,
    /// The whole subscription.
    Shared,
}

impl StateScope {
    fn from_abi(value: i32) -> Option<Self> {
        match value {
            state_scope::KEY => Some(Self::Key),
            state_scope::SHARED => Some(Self::Shared),
            _ => None,
        }
    }
}

/// Why a state call failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StateError {
    /// Over a bound (keys per scope): the invocation fails as `state_limit`.
    Limit(String),
    /// The store could not be read: the invocation fails as
    /// `state_unavailable` and is retried.
    Unavailable(String),
}

/// One entry found by [`StateAccess::next`]: key and value.
pub type StateEntry = (Vec<u8>, Vec<u8>);

/// The state one invocation reads and writes. Reads see the invocation's own
/// writes first; writes are only proposals until the caller commits them
/// with the invocation's outcome.
pub trait StateAccess: std::any::Any + Send {
    /// The value under `key`, if there is one.
    ///
    /// # Errors
    ///
    /// [`StateError::Unavailable`] when the store cannot be read.
    fn get(&mut self, scope: StateScope, key: &[u8]) -> Result<Option<Vec<u8>>, StateError>;
    /// Set `key` to `value`.
    ///
    /// # Errors
    ///
    /// [`StateError::Limit`] when the scope would hold too many keys.
    fn put(&mut self, scope: StateScope, key: &[u8], value: &[u8]) -> Result<(), StateError>;
    /// Remove `key` (nothing happens when it has no value).
    ///
    /// # Errors
    ///
    /// [`StateError::Unavailable`] when the store cannot be read.
    fn delete(&mut self, scope: StateScope, key: &[u8]) -> Result<(), StateError>;
    /// The first entry whose key starts with `prefix` and sorts after
    /// `after` (from the first such key when `after` is `None`).
    ///
    /// # Errors
    ///
    /// [`StateError::Unavailable`] when the store cannot be read.
    fn next(
        &mut self,
        scope: StateScope,
        prefix: &[u8],
        after: Option<&[u8]>,
    ) -> Result<Option<StateEntry>, StateError>;
}

/// The type every `state_*` import must have, as `weir inspect` writes it.
pub(super) const IMPORT_TYPES: [(&str, &str); 4] = [
    (imports::STATE_GET, "func(i32, i32, i32, i32, i32) -> i64"),
    (imports::STATE_PUT, "func(i32, i32, i32, i32, i32)"),
    (imports::STATE_DELETE, "func(i32, i32, i32)"),
    (imports::STATE_NEXT, "func(i32, i32, i32, i32, i32, i32, i32) -> i64"),
];

/// Whether `name` is one of the state imports.
pub(super) fn is_state_import(name: &str) -> bool {
    IMPORT_TYPES.iter().any(|(n, _)| *n == name)
}

/// A guest misbehaviour or a state failure inside a host function: recorded
/// for [`super::host::classify`], then the call traps.
fn fail(state: &mut HostState, error: InvokeError) -> wasmtime::Error {
    let message = error.to_string();
    state.state_failure = Some(error);
    wasmtime::Error::msg(message)
}

fn bad(state: &mut HostState, reason: String) -> wasmtime::Error {
    fail(state, InvokeError::BadOutput { reason })
}

fn from_state_error(error: StateError) -> InvokeError {
    match error {
        StateError::Limit(reason) => InvokeError::StateLimit { reason },
        StateError::Unavailable(reason) => InvokeError::StateUnavailable { reason },
    }
}

/// `data[ptr..ptr+len]`, or `None` when it lies outside memory.
fn slice(data: &[u8], ptr: i32, len: i32) -> Option<&[u8]> {
    let start = ptr as u32 as usize;
    start.checked_add(len as u32 as usize).and_then(|end| data.get(start..end))
}

/// Copy the key (or prefix) and check the scope, for every state call.
fn key_and_scope(
    caller: &mut Caller<'_, HostState>,
    call: &str,
    scope: i32,
    ptr: i32,
    len: i32,
) -> wasmtime::Result<(StateScope, Vec<u8>)> {
    let Some(memory) = caller.data().memory else {
        return Err(bad(caller.data_mut(), format!("weir::{call} was called before the instance was ready")));
    };
    let (data, host) = memory.data_and_store_mut(caller);
    if host.state.is_none() {
        return Err(bad(
            host,
            format!("weir::{call}: state is only available while handling an event (not in weir_init)"),
        ));
    }
    let Some(scope) = StateScope::from_abi(scope) else {
        return Err(bad(host, format!("weir::{call}: scope {scope} is not 0 (the event's key) or 1 (shared)")));
    };
    let Some(key) = slice(data, ptr, len) else {
        let size = data.len();
        return Err(bad(
            host,
            format!("weir::{call}(ptr={ptr:#x}, len={len}) points outside the plugin's {size} bytes"),
        ));
    };
    if key.len() > MAX_STATE_KEY_BYTES {
        let n = key.len();
        return Err(fail(
            host,
            InvokeError::StateLimit { reason: format!("a key of {n} bytes, over {MAX_STATE_KEY_BYTES}") },
        ));
    }
    Ok((scope, key.to_vec()))
}

/// Write `bytes` at `out_ptr` when they fit in `out_cap`, and answer their
/// length either way (the guest calls again with a larger buffer).
fn answer(
    caller: &mut Caller<'_, HostState>,
    call: &str,
    bytes: &[u8],
    out_ptr: i32,
    out_cap: i32,
) -> wasmtime::Result<i64> {
    if bytes.len() > out_cap as u32 as usize {
        return Ok(bytes.len() as i64);
    }
    let Some(memory) = caller.data().memory else {
        return Err(bad(caller.data_mut(), format!("weir::{call} was called before the instance was ready")));
    };
    let (data, host) = memory.data_and_store_mut(caller);
    let start = out_ptr as u32 as usize;
    match start.checked_add(bytes.len()).and_then(|end| data.get_mut(start..end)) {
        Some(out) => {
            out.copy_from_slice(bytes);
            Ok(bytes.len() as i64)
        }
        None => {
            let size = data.len();
            Err(bad(
                host,
                format!("weir::{call}: output buffer at {out_ptr:#x} lies outside the plugin's {size} bytes"),
            ))
        }
    }
}

/// Run `f` on the lent state; its error fails the invocation.
fn with_state<T>(
    caller: &mut Caller<'_, HostState>,
    f: impl FnOnce(&mut dyn StateAccess) -> Result<T, StateError>,
) -> wasmtime::Result<T> {
    let host = caller.data_mut();
    let Some(state) = host.state.as_deref_mut() else {
        return Err(bad(host, "state is only available while handling an event".into()));
    };
    f(state).map_err(|e| fail(host, from_state_error(e)))
}

/// Define the `weir::state_*` functions in `linker`.
pub(super) fn define(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    linker.func_wrap(
        HOST_MODULE,
        imports::STATE_GET,
        |mut caller: Caller<'_, HostState>,
         scope: i32,
         kp: i32,
         kl: i32,
         out: i32,
         cap: i32|
         -> wasmtime::Result<i64> {
            let (scope, key) = key_and_scope(&mut caller, imports::STATE_GET, scope, kp, kl)?;
            match with_state(&mut caller, |s| s.get(scope, &key))? {
                None => Ok(-1),
                Some(value) => answer(&mut caller, imports::STATE_GET, &value, out, cap),
            }
        },
    )?;
    linker.func_wrap(
        HOST_MODULE,
        imports::STATE_PUT,
        |mut caller: Caller<'_, HostState>, scope: i32, kp: i32, kl: i32, vp: i32, vl: i32| -> wasmtime::Result<()> {
            let (scope, key) = key_and_scope(&mut caller, imports::STATE_PUT, scope, kp, kl)?;
            let Some(memory) = caller.data().memory else {
                return Err(bad(caller.data_mut(), "weir::state_put before the instance was ready".into()));
            };
            let (data, host) = memory.data_and_store_mut(&mut caller);
            let Some(value) = slice(data, vp, vl) else {
                let size = data.len();
                return Err(bad(
                    host,
                    format!("weir::state_put: value at {vp:#x} (len {vl}) lies outside the plugin's {size} bytes"),
                ));
            };
            let limits = &host.state_limits;
            if value.len() > limits.max_value_bytes {
                let reason = format!(
                    "a value of {} bytes, over max_state_value_bytes = {}",
                    value.len(),
                    limits.max_value_bytes
                );
                return Err(fail(host, InvokeError::StateLimit { reason }));
            }
            let cost = key.len() + value.len();
            if host.state_written.saturating_add(cost) > limits.max_write_bytes {
                let reason = format!(
                    "{} bytes of state written by one invocation, over max_state_write_bytes = {}",
                    host.state_written.saturating_add(cost),
                    limits.max_write_bytes
                );
                return Err(fail(host, InvokeError::StateLimit { reason }));
            }
            host.state_written += cost;
            let value = value.to_vec();
            with_state(&mut caller, |s| s.put(scope, &key, &value))
        },
    )?;
    linker.func_wrap(
        HOST_MODULE,
        imports::STATE_DELETE,
        |mut caller: Caller<'_, HostState>, scope: i32, kp: i32, kl: i32| -> wasmtime::Result<()> {
            let (scope, key) = key_and_scope(&mut caller, imports::STATE_DELETE, scope, kp, kl)?;
            let host = caller.data_mut();
            // A delete is a write too: it counts against the same budget, so
            // a loop of deletes cannot grow the pending writes without bound.
            if host.state_written.saturating_add(key.len()) > host.state_limits.max_write_bytes {
                let reason = format!(
                    "state writes of one invocation over max_state_write_bytes = {}",
                    host.state_limits.max_write_bytes
                );
                return Err(fail(host, InvokeError::StateLimit { reason }));
            }
            host.state_written += key.len();
            with_state(&mut caller, |s| s.delete(scope, &key))
        },
    )?;
    linker.func_wrap(
        HOST_MODULE,
        imports::STATE_NEXT,
        |mut caller: Caller<'_, HostState>,
         scope: i32,
         pp: i32,
         pl: i32,
         ap: i32,
         al: i32,
         out: i32,
         cap: i32|
         -> wasmtime::Result<i64> {
            let (scope, prefix) = key_and_scope(&mut caller, imports::STATE_NEXT, scope, pp, pl)?;
            let (_, after) = key_and_scope(&mut caller, imports::STATE_NEXT, 0, ap, al)?;
            let after = (!after.is_empty()).then_some(after);
            match with_state(&mut caller, |s| s.next(scope, &prefix, after.as_deref()))? {
                None => Ok(-1),
                Some((key, value)) => {
                    let mut entry = Vec::with_capacity(4 + key.len() + value.len());
                    entry.extend_from_slice(&(key.len() as u32).to_le_bytes());
                    entry.extend_from_slice(&key);
                    entry.extend_from_slice(&value);
                    answer(&mut caller, imports::STATE_NEXT, &entry, out, cap)
                }
            }
        },
    )?;
    Ok(())
}

/// The bounds the engine enforces on state calls, from the handler's
/// [`Limits`](super::Limits).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct StateCallLimits {
    pub(crate) max_value_bytes: usize,
    pub(crate) max_write_bytes: usize,
}

/// Handler state kept in memory: what `weir exec` lends a stateful plugin,
/// and what an embedder can use to run one without a store. Writes of an
/// invocation stay pending until [`commit`](Self::commit) (after a
/// successful outcome) or [`discard`](Self::discard).
#[derive(Debug, Default)]
pub struct MemoryState {
    /// (shared?, scope name, key) → value.
    data: std::collections::BTreeMap<(bool, String, Vec<u8>), Vec<u8>>,
    pending: std::collections::BTreeMap<(bool, String, Vec<u8>), Option<Vec<u8>>>,
    key_scope: Option<String>,
}

/// One write [`MemoryState::commit`] applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemoryWrite {
    /// The scope: the event's key, or `None` for the shared scope.
    pub scope: Option<String>,
    /// The key.
    pub key: Vec<u8>,
    /// The new value, `None` for a delete.
    pub value: Option<Vec<u8>>,
}

impl MemoryState {
    /// Empty state.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Get ready for an event with this key (`None`: the shared scope).
    pub fn begin(&mut self, event_key: Option<&str>) {
        self.pending.clear();
        self.key_scope = event_key.map(str::to_owned);
    }

    fn scope(&self, scope: StateScope) -> (bool, String) {
        match (scope, &self.key_scope) {
            (StateScope::Key, Some(key)) => (false, key.clone()),
            _ => (true, String::new()),
        }
    }

    /// Apply the pending writes; answers them in key order.
    pub fn commit(&mut self) -> Vec<MemoryWrite> {
        let mut out = Vec::new();
        for ((shared, scope, key), value) in std::mem::take(&mut self.pending) {
            match &value {
                Some(v) => self.data.insert((shared, scope.clone(), key.clone()), v.clone()),
                None => self.data.remove(&(shared, scope.clone(), key.clone())),
            };
            out.push(MemoryWrite { scope: (!shared).then_some(scope), key, value });
        }
        out
    }

    /// Drop the pending writes.
    pub fn discard(&mut self) {
        self.pending.clear();
    }

    fn current(&self, k: &(bool, String, Vec<u8>)) -> Option<Vec<u8>> {
        match self.pending.get(k) {
            Some(v) => v.clone(),
            None => self.data.get(k).cloned(),
        }
    }
}

impl StateAccess for MemoryState {
    fn get(&mut self, scope: StateScope, key: &[u8]) -> Result<Option<Vec<u8>>, StateError> {
        let (shared, name) = self.scope(scope);
        Ok(self.current(&(shared, name, key.to_vec())))
    }

    fn put(&mut self, scope: StateScope, key: &[u8], value: &[u8]) -> Result<(), StateError> {
        let (shared, name) = self.scope(scope);
        self.pending.insert((shared, name, key.to_vec()), Some(value.to_vec()));
        Ok(())
    }

    fn delete(&mut self, scope: StateScope, key: &[u8]) -> Result<(), StateError> {
        let (shared, name) = self.scope(scope);
        self.pending.insert((shared, name, key.to_vec()), None);
        Ok(())
    }

    fn next(
        &mut self,
        scope: StateScope,
        prefix: &[u8],
        after: Option<&[u8]>,
    ) -> Result<Option<StateEntry>, StateError> {
        let (shared, name) = self.scope(scope);
        let keys = self
            .data
            .keys()
            .chain(self.pending.keys())
            .filter(|(s, n, k)| {
                *s == shared && *n == name && k.starts_with(prefix) && after.is_none_or(|a| k.as_slice() > a)
            })
            .map(|(_, _, k)| k.clone())
            .collect::<std::collections::BTreeSet<_>>();
        for key in keys {
            if let Some(value) = self.current(&(shared, name.clone(), key.clone())) {
                return Ok(Some((key, value)));
            }
        }
        Ok(None)
    }
}
