//! Handler state: a key-value store per subscription that the host commits
//! exactly once, together with the events the handler emits.
//!
//! ```
//! use weir_sdk::prelude::*;
//!
//! #[derive(serde::Serialize, serde::Deserialize, Default)]
//! struct Balance { cents: i64 }
//!
//! fn handle(event: &Event, ctx: &mut Context) -> Result<Vec<Emit>, HandlerError> {
//!     let mut balance: Balance = ctx.state().get("balance")?.unwrap_or_default();
//!     balance.cents += 100;
//!     ctx.state().put("balance", &balance)?;
//!     Ok(vec![])
//! }
//!
//! // Natively, `Context::handle` runs it as the host would: state scoped
//! // to the event's key, writes kept only when the handler succeeds.
//! let mut ctx = Context::new("accounts/balances", 1);
//! let deposit = weir_sdk::testing::event("accounts.account.deposited").key("acct-1").build();
//! ctx.handle(handle, &deposit).unwrap();
//! ctx.handle(handle, &deposit).unwrap();
//! let balance: Balance = ctx.state_of(Some("acct-1")).get("balance").unwrap().unwrap();
//! assert_eq!(balance.cents, 200);
//! ```
//!
//! Values are stored as JSON. Each call is a host call in Wasm: read a value
//! once per event rather than in a loop. The host bounds keys (1 KiB),
//! values (`max_state_value_bytes`, 64 KiB by default), keys per scope
//! (`max_state_keys_per_scope`, 10,000) and the bytes one event writes
//! (`max_state_write_bytes`, 1 MiB); going over one dead-letters the event
//! with the code `state_limit`.

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::HandlerError;

/// The event's key: each key has its own state (the shared scope for an
/// event without a key).
pub(crate) const KEY: i32 = weir_abi::state_scope::KEY;
/// One state for the whole subscription.
pub(crate) const SHARED: i32 = weir_abi::state_scope::SHARED;

#[derive(Debug)]
/// One scope of the handler's state, from [`Context::state`](crate::Context::state)
/// or [`Context::shared_state`](crate::Context::shared_state).
pub struct State<'a> {
    pub(crate) backend: &'a mut Backend,
    pub(crate) scope: Scope,
}

/// Which scope a [`State`] reads: in Wasm an ABI scope; natively, the scope
/// named.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Scope {
    /// The host's scope constant ([`KEY`] or [`SHARED`]).
    Abi(i32),
    /// Natively: the key scope of this event key, `None` for shared.
    #[cfg_attr(target_arch = "wasm32", allow(dead_code))]
    Named(Option<String>),
}

impl State<'_> {
    /// The value under `key`, decoded from JSON.
    ///
    /// # Errors
    ///
    /// A rejection when the stored value does not decode as `T`.
    pub fn get<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>, HandlerError> {
        match self.get_bytes(key) {
            None => Ok(None),
            Some(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| HandlerError::reject(format!("state value {key:?} does not decode: {e}"))),
        }
    }

    /// Set `key` to `value` as JSON.
    ///
    /// # Errors
    ///
    /// A rejection when `value` does not serialise.
    pub fn put<T: Serialize + ?Sized>(&mut self, key: &str, value: &T) -> Result<(), HandlerError> {
        let bytes = serde_json::to_vec(value)
            .map_err(|e| HandlerError::reject(format!("state value {key:?} does not serialise: {e}")))?;
        self.put_bytes(key, &bytes);
        Ok(())
    }

    /// Remove `key`.
    pub fn delete(&mut self, key: &str) {
        self.backend.delete(&self.scope, key.as_bytes());
    }

    /// The raw value under `key`.
    #[must_use]
    pub fn get_bytes(&self, key: &str) -> Option<Vec<u8>> {
        self.backend.get(&self.scope, key.as_bytes())
    }

    /// Set `key` to raw bytes.
    pub fn put_bytes(&mut self, key: &str, value: &[u8]) {
        self.backend.put(&self.scope, key.as_bytes(), value);
    }

    /// The keys starting with `prefix` and their values decoded from JSON,
    /// in key order.
    ///
    /// # Errors
    ///
    /// A rejection when a key is not UTF-8 or a value does not decode.
    pub fn scan<T: DeserializeOwned>(&self, prefix: &str) -> Result<Vec<(String, T)>, HandlerError> {
        let mut out = Vec::new();
        let mut after: Option<Vec<u8>> = None;
        while let Some((key, value)) = self.backend.next(&self.scope, prefix.as_bytes(), after.as_deref()) {
            let name = String::from_utf8(key.clone())
                .map_err(|_| HandlerError::reject(format!("state key {key:?} is not UTF-8")))?;
            let value = serde_json::from_slice(&value)
                .map_err(|e| HandlerError::reject(format!("state value {name:?} does not decode: {e}")))?;
            out.push((name, value));
            after = Some(key);
        }
        Ok(out)
    }
}

pub(crate) use imp::Backend;

#[cfg(target_arch = "wasm32")]
mod imp {
    use super::Scope;

    #[link(wasm_import_module = "weir")]
    unsafe extern "C" {
        fn state_get(scope: i32, key_ptr: i32, key_len: i32, out_ptr: i32, out_cap: i32) -> i64;
        fn state_put(scope: i32, key_ptr: i32, key_len: i32, value_ptr: i32, value_len: i32);
        fn state_delete(scope: i32, key_ptr: i32, key_len: i32);
        #[allow(clippy::too_many_arguments)]
        fn state_next(
            scope: i32,
            prefix_ptr: i32,
            prefix_len: i32,
            after_ptr: i32,
            after_len: i32,
            out_ptr: i32,
            out_cap: i32,
        ) -> i64;
    }

    /// In Wasm the state lives in the host: nothing here.
    #[derive(Debug, Clone, Default, PartialEq, Eq)]
    pub(crate) struct Backend;

    fn abi(scope: &Scope) -> i32 {
        match scope {
            Scope::Abi(s) => *s,
            Scope::Named(None) => super::SHARED,
            Scope::Named(Some(_)) => super::KEY,
        }
    }

    /// Call `f(out_ptr, out_cap)` with a buffer, again with a larger one
    /// when the answer did not fit; `None` when it answers -1.
    fn read(mut f: impl FnMut(i32, i32) -> i64) -> Option<Vec<u8>> {
        let mut buf: Vec<u8> = Vec::with_capacity(256);
        loop {
            let len = f(buf.as_mut_ptr() as i32, buf.capacity() as i32);
            if len < 0 {
                return None;
            }
            let len = len as usize;
            if len <= buf.capacity() {
                // SAFETY: the host wrote `len` bytes into the buffer.
                unsafe { buf.set_len(len) };
                return Some(buf);
            }
            buf.reserve_exact(len);
        }
    }

    impl Backend {
        pub(crate) fn get(&self, scope: &Scope, key: &[u8]) -> Option<Vec<u8>> {
            let s = abi(scope);
            // SAFETY: the host reads the key and writes at most `cap` bytes
            // into the buffer during the call.
            read(|out, cap| unsafe { state_get(s, key.as_ptr() as i32, key.len() as i32, out, cap) })
        }

        pub(crate) fn put(&mut self, scope: &Scope, key: &[u8], value: &[u8]) {
            // SAFETY: the host only reads both buffers during the call.
            unsafe {
                state_put(abi(scope), key.as_ptr() as i32, key.len() as i32, value.as_ptr() as i32, value.len() as i32)
            }
        }

        pub(crate) fn delete(&mut self, scope: &Scope, key: &[u8]) {
            // SAFETY: the host only reads the key during the call.
            unsafe { state_delete(abi(scope), key.as_ptr() as i32, key.len() as i32) }
        }

        pub(crate) fn next(&self, scope: &Scope, prefix: &[u8], after: Option<&[u8]>) -> Option<(Vec<u8>, Vec<u8>)> {
            let s = abi(scope);
            let after = after.unwrap_or(&[]);
            // SAFETY: as for `get`.
            let entry = read(|out, cap| unsafe {
                state_next(
                    s,
                    prefix.as_ptr() as i32,
                    prefix.len() as i32,
                    after.as_ptr() as i32,
                    after.len() as i32,
                    out,
                    cap,
                )
            })?;
            let key_len = u32::from_le_bytes(entry.get(..4)?.try_into().ok()?) as usize;
            let key = entry.get(4..4 + key_len)?.to_vec();
            let value = entry.get(4 + key_len..)?.to_vec();
            Some((key, value))
        }
    }
}

#[cfg(not(target_arch = "wasm32"))]
mod imp {
    use std::collections::BTreeMap;

    use super::Scope;

    /// (key scope: the event key, `None` for shared; key) → value.
    type Map = BTreeMap<(Option<String>, Vec<u8>), Option<Vec<u8>>>;

    /// Natively the state lives here: committed values and the writes of
    /// the event being handled, as the host keeps them.
    #[derive(Debug, Clone, Default, PartialEq, Eq)]
    pub(crate) struct Backend {
        committed: Map,
        pending: Map,
        /// The key of the event being handled.
        key: Option<String>,
    }

    impl Backend {
        fn scope(&self, scope: &Scope) -> Option<String> {
            match scope {
                Scope::Abi(s) if *s == super::KEY => self.key.clone(),
                Scope::Abi(_) => None,
                Scope::Named(name) => name.clone(),
            }
        }

        pub(crate) fn get(&self, scope: &Scope, key: &[u8]) -> Option<Vec<u8>> {
            let k = (self.scope(scope), key.to_vec());
            match self.pending.get(&k) {
                Some(v) => v.clone(),
                None => self.committed.get(&k).cloned().flatten(),
            }
        }

        pub(crate) fn put(&mut self, scope: &Scope, key: &[u8], value: &[u8]) {
            self.pending.insert((self.scope(scope), key.to_vec()), Some(value.to_vec()));
        }

        pub(crate) fn delete(&mut self, scope: &Scope, key: &[u8]) {
            self.pending.insert((self.scope(scope), key.to_vec()), None);
        }

        pub(crate) fn next(&self, scope: &Scope, prefix: &[u8], after: Option<&[u8]>) -> Option<(Vec<u8>, Vec<u8>)> {
            let s = self.scope(scope);
            let mut keys: Vec<&Vec<u8>> = self
                .committed
                .keys()
                .chain(self.pending.keys())
                .filter(|(sc, k)| *sc == s && k.starts_with(prefix) && after.is_none_or(|a| k.as_slice() > a))
                .map(|(_, k)| k)
                .collect();
            keys.sort();
            keys.dedup();
            keys.into_iter().find_map(|k| self.get(scope, k).map(|v| (k.clone(), v)))
        }

        pub(crate) fn begin(&mut self, key: Option<&str>) {
            self.pending.clear();
            self.key = key.map(str::to_owned);
        }

        /// Keep the writes of the event (it was handled) or drop them.
        pub(crate) fn finish(&mut self, keep: bool) {
            let pending = std::mem::take(&mut self.pending);
            if keep {
                for (k, v) in pending {
                    match v {
                        Some(v) => self.committed.insert(k, Some(v)),
                        None => self.committed.remove(&k),
                    };
                }
            }
        }
    }
}
