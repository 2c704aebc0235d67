//! Weir's guest ABI, version 1: the wire types both sides agree on, their
//! encoding, and the version constant.
//!
//! This crate is shared by the host (`weir-runtime`) and by guests (through
//! `weir-sdk`). It deliberately holds nothing else — no wasmtime, no tokio — so
//! that a plugin pulls in only serde and bincode. The byte-level description of
//! everything here is `docs/abi.md` in the repository; a plugin written in any
//! language that follows that document is as good as one built with the SDK.
//!
//! # Core concepts
//!
//! - [`Event`]: the envelope of one event as it sits in the log.
//! - [`Delivery`]: what the host hands to `weir_handle` — the event, the
//!   subscription it is delivered to and the attempt number.
//! - [`Outcome`]: what the handler answers — `Ok(emits)`, `Retry(reason)` or
//!   `Reject(reason)`.
//! - [`Emit`]: an event the handler asks the host to append to the log.
//! - [`encoding`]: the one module that knows the bytes (serde + bincode 2,
//!   standard configuration).
#![warn(missing_docs)]

mod aggregate;
mod delivery;
pub mod encoding;
mod id;
mod types;
mod upcast;

pub use aggregate::{CommandMsg, Decide, Decision, Evolve, EvolveRef, Evolved};
pub use id::{EventId, ParseEventIdError};
pub use types::{Delivery, DeliveryRef, Emit, Event, Header, InitOutcome, LogLevel, Outcome, PluginDescription};
pub use upcast::{Upcast, UpcastEvent, UpcastRef, Upcasted};

/// The ABI version this crate speaks. A module's `weir_abi_version` export
/// must return exactly this value for the host to load it.
pub const ABI_VERSION: u32 = 1;

/// The import module name of the host's functions. A plugin may import
/// functions from this module only.
pub const HOST_MODULE: &str = "weir";

/// Names of the exports a plugin provides.
pub mod exports {
    /// The guest's linear memory (required).
    pub const MEMORY: &str = "memory";
    /// `() -> i32`: the ABI version the module was built for (required).
    pub const ABI_VERSION: &str = "weir_abi_version";
    /// `(len: i32) -> i32`: allocate `len` bytes, return the pointer, 0 on failure (required).
    pub const ALLOC: &str = "weir_alloc";
    /// `(ptr: i32, len: i32)`: free a buffer from `weir_alloc` or an output buffer (required).
    pub const DEALLOC: &str = "weir_dealloc";
    /// `(ptr: i32, len: i32) -> i64`: handle one encoded [`Delivery`](crate::Delivery) (required).
    pub const HANDLE: &str = "weir_handle";
    /// `(ptr: i32, len: i32) -> i64`: receive the plugin configuration (optional).
    pub const INIT: &str = "weir_init";
    /// `() -> i64`: describe the plugin (optional).
    pub const DESCRIBE: &str = "weir_describe";
    /// `(ptr: i32, len: i32) -> i64`: decide one encoded [`Decide`](crate::Decide)
    /// (optional; an aggregate exports it with [`EVOLVE`]).
    pub const DECIDE: &str = "weir_decide";
    /// `(ptr: i32, len: i32) -> i64`: fold one encoded [`Evolve`](crate::Evolve)
    /// (optional; an aggregate exports it with [`DECIDE`]).
    pub const EVOLVE: &str = "weir_evolve";
    /// `(ptr: i32, len: i32) -> i64`: upcast one encoded [`Upcast`](crate::Upcast)
    /// (optional; a module with it is an upcaster).
    pub const UPCAST: &str = "weir_upcast";
}

/// Names of the functions the host provides in module [`HOST_MODULE`].
pub mod imports {
    /// `(level: i32, ptr: i32, len: i32)`: write one UTF-8 log line.
    pub const LOG: &str = "log";
    /// `(scope: i32, key_ptr: i32, key_len: i32, out_ptr: i32, out_cap: i32) -> i64`:
    /// read a state value. Answers -1 when the key has no value, else the
    /// value's length, and writes the value at `out_ptr` only when it fits in
    /// `out_cap` (call again with a larger buffer when it does not).
    pub const STATE_GET: &str = "state_get";
    /// `(scope: i32, key_ptr: i32, key_len: i32, value_ptr: i32, value_len: i32)`:
    /// write a state value, committed with the invocation's outcome.
    pub const STATE_PUT: &str = "state_put";
    /// `(scope: i32, key_ptr: i32, key_len: i32)`: delete a state value.
    pub const STATE_DELETE: &str = "state_delete";
    /// `(scope: i32, prefix_ptr: i32, prefix_len: i32, after_ptr: i32, after_len: i32,
    /// out_ptr: i32, out_cap: i32) -> i64`: the first entry whose key starts
    /// with the prefix and sorts after `after` (from the start when
    /// `after_len` is 0). Answers -1 when there is none, else the entry's
    /// encoded length (`u32` little-endian key length, key, value), written
    /// at `out_ptr` only when it fits in `out_cap`.
    pub const STATE_NEXT: &str = "state_next";
    /// `(key_ptr: i32, key_len: i32, fire_at_ms: i64, emit_ptr: i32, emit_len: i32)`:
    /// schedule (or replace) the timer named by the UTF-8 key: at or after
    /// `fire_at_ms` (Unix milliseconds) the encoded [`Emit`](crate::Emit) is
    /// appended to the log, caused by the event being handled. Committed
    /// with a successful outcome, dropped otherwise.
    pub const TIMER_SCHEDULE: &str = "timer_schedule";
    /// `(key_ptr: i32, key_len: i32)`: cancel the timer named by the key, if
    /// it has not fired. Committed with a successful outcome.
    pub const TIMER_CANCEL: &str = "timer_cancel";
}

/// The scopes of handler state, the first argument of every `state_*`
/// import.
pub mod state_scope {
    /// The event's key: each key of the subscription has its own state. An
    /// event without a key uses the [`SHARED`] scope.
    pub const KEY: i32 = 0;
    /// One state for the whole subscription, whatever the event's key.
    pub const SHARED: i32 = 1;
}

/// Pack a guest pointer and length into the `i64` that `weir_handle`,
/// `weir_init` and `weir_describe` return: `ptr` in the high 32 bits, `len` in
/// the low 32 bits.
///
/// # Examples
///
/// ```
/// let packed = weir_abi::pack(0x1000, 42);
/// assert_eq!(weir_abi::unpack(packed), (0x1000, 42));
/// ```
#[must_use]
pub const fn pack(ptr: u32, len: u32) -> i64 {
    (((ptr as u64) << 32) | len as u64) as i64
}

/// Split a packed `i64` into `(ptr, len)`; the inverse of [`pack`].
#[must_use]
pub const fn unpack(packed: i64) -> (u32, u32) {
    let bits = packed as u64;
    ((bits >> 32) as u32, bits as u32)
}
