//! Glue called by the code `#[handler]` and `#[init]` generate. Not a public
//! API: names and signatures here may change with any release.
//!
//! The memory rules implemented here are those of `docs/abi.md`: input
//! buffers belong to the host (allocated with `weir_alloc`, freed by the host);
//! output buffers are allocated here with the layout `(len, align 1)` and
//! become the host's, which frees them with `weir_dealloc(ptr, len)`.

use std::alloc::{Layout, alloc, dealloc as free};

use serde::Serialize;
use weir_abi::encoding;
use weir_abi::{InitOutcome, Outcome, PluginDescription};

use crate::{Config, Context, Emit, Event, HandlerError};

/// The signature of a handler function.
pub type HandlerFn = fn(&Event, &mut Context) -> Result<Vec<Emit>, HandlerError>;
/// The signature of an init function.
pub type InitFn = fn(&Config) -> Result<(), String>;

/// `weir_abi_version`.
#[must_use]
pub fn abi_version() -> i32 {
    weir_abi::ABI_VERSION as i32
}

/// `weir_alloc`: `len` bytes, alignment 1; 0 when `len` is not positive or
/// memory is exhausted (the host treats 0 as failure).
#[must_use]
pub fn alloc_bytes(len: i32) -> i32 {
    let Ok(len) = usize::try_from(len) else {
        return 0;
    };
    let Ok(layout) = Layout::from_size_align(len, 1) else {
        return 0;
    };
    if len == 0 {
        return 0;
    }
    // SAFETY: the layout has a non-zero size.
    unsafe { alloc(layout) as usize as i32 }
}

/// `weir_dealloc`.
///
/// # Safety
///
/// `ptr` and `len` must describe a live buffer from [`alloc_bytes`] or an
/// output buffer of this module, freed once.
pub unsafe fn dealloc_bytes(ptr: i32, len: i32) {
    let Ok(len) = usize::try_from(len) else {
        return;
    };
    if ptr == 0 || len == 0 {
        return;
    }
    if let Ok(layout) = Layout::from_size_align(len, 1) {
        // SAFETY: guaranteed by the caller.
        unsafe { free(ptr as usize as *mut u8, layout) }
    }
}

/// # Safety
///
/// `ptr..ptr+len` must be readable for the duration of the call, as the host
/// guarantees for input buffers.
unsafe fn input<'a>(ptr: i32, len: i32) -> &'a [u8] {
    match usize::try_from(len) {
        // SAFETY: guaranteed by the caller.
        Ok(len) if len > 0 && ptr != 0 => unsafe { std::slice::from_raw_parts(ptr as usize as *const u8, len) },
        _ => &[],
    }
}

/// Encode `value` into a buffer the host will own, and pack its address.
fn output<T: Serialize>(value: &T, fallback: impl FnOnce(String) -> Vec<u8>) -> i64 {
    let bytes = encoding::encode(value).unwrap_or_else(|e| fallback(e.to_string()));
    // A boxed slice is allocated with exactly the layout (len, 1) that
    // `dealloc_bytes` frees with.
    let boxed = bytes.into_boxed_slice();
    let len = boxed.len() as u32;
    let ptr = Box::into_raw(boxed) as *mut u8 as usize as u32;
    weir_abi::pack(ptr, len)
}

fn install_panic_hook() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // Without this a panic is a bare `unreachable` trap; with it the host
        // gets the message as an error log line and puts it in the failure.
        std::panic::set_hook(Box::new(|info| {
            crate::log::write(weir_abi::LogLevel::Error, &format!("plugin panicked: {info}"));
        }));
    });
}

/// `weir_handle`.
///
/// # Safety
///
/// `ptr`/`len` must describe the host's input buffer.
pub unsafe fn handle(ptr: i32, len: i32, handler: HandlerFn) -> i64 {
    install_panic_hook();
    // SAFETY: forwarded from the caller.
    let bytes = unsafe { input(ptr, len) };
    // The hand-written decoder: same bytes, same value as serde's, about
    // twice as fast (docs/benchmarks.md, "Issue 18").
    let outcome = match encoding::decode_delivery(bytes) {
        Ok(delivery) => {
            let mut ctx = Context::new(delivery.subscription, delivery.attempt);
            match handler(&delivery.event, &mut ctx) {
                Ok(emits) => Outcome::Ok(emits.into_iter().map(Emit::into_abi).collect()),
                Err(HandlerError::Retry(reason)) => Outcome::Retry(reason),
                Err(HandlerError::Reject(reason)) => Outcome::Reject(reason),
            }
        }
        Err(e) => Outcome::Reject(format!("plugin could not decode the delivery: {e}")),
    };
    output(&outcome, |e| {
        encoding::encode(&Outcome::Reject(format!("plugin could not encode its outcome: {e}"))).unwrap_or_default()
    })
}

/// `weir_init`.
///
/// # Safety
///
/// `ptr`/`len` must describe the host's input buffer.
pub unsafe fn init(ptr: i32, len: i32, init: InitFn) -> i64 {
    install_panic_hook();
    // SAFETY: forwarded from the caller.
    let config = Config::from_bytes(unsafe { input(ptr, len) }.to_vec());
    let outcome = match init(&config) {
        Ok(()) => InitOutcome::Ready,
        Err(reason) => InitOutcome::Failed(reason),
    };
    output(&outcome, |_| Vec::new())
}

/// `weir_describe`.
#[must_use]
pub fn describe(description: &PluginDescription) -> i64 {
    output(description, |_| Vec::new())
}

/// `weir_decide` of an aggregate.
///
/// # Safety
///
/// `ptr`/`len` must describe the host's input buffer.
pub unsafe fn decide<A: crate::Aggregate>(ptr: i32, len: i32) -> i64 {
    install_panic_hook();
    // SAFETY: forwarded from the caller.
    let decision = crate::aggregate::decide_encoded::<A>(unsafe { input(ptr, len) });
    output(&decision, |e| {
        encoding::encode(&weir_abi::Decision::Reject(format!("the aggregate could not encode its decision: {e}")))
            .unwrap_or_default()
    })
}

/// `weir_evolve` of an aggregate.
///
/// # Safety
///
/// `ptr`/`len` must describe the host's input buffer.
pub unsafe fn evolve<A: crate::Aggregate>(ptr: i32, len: i32) -> i64 {
    install_panic_hook();
    // SAFETY: forwarded from the caller.
    let evolved = crate::aggregate::evolve_encoded::<A>(unsafe { input(ptr, len) });
    output(&evolved, |e| {
        encoding::encode(&weir_abi::Evolved::Failed(format!("the aggregate could not encode its state: {e}")))
            .unwrap_or_default()
    })
}

/// `weir_handle` of an aggregate: it rejects every delivery.
#[must_use]
pub fn aggregate_handle() -> i64 {
    output(&crate::aggregate::not_a_handler(), |_| Vec::new())
}

/// `weir_upcast`.
///
/// # Safety
///
/// `ptr`/`len` must describe the host's input buffer.
pub unsafe fn upcast(ptr: i32, len: i32, f: crate::upcast::UpcasterFn, from: u32, to: u32) -> i64 {
    install_panic_hook();
    // SAFETY: forwarded from the caller.
    let bytes = unsafe { input(ptr, len) };
    let answer = match encoding::decode::<weir_abi::Upcast>(bytes) {
        Ok(input) if input.from != from || input.to != to || input.event.schema_version != from => {
            weir_abi::Upcasted::Failed(format!(
                "this upcaster turns version {from} into {to}; the host asked {} → {} of an event at version {}",
                input.from, input.to, input.event.schema_version
            ))
        }
        Ok(input) => match f(&input.event) {
            Ok(events) => weir_abi::Upcasted::Events(events),
            Err(reason) => weir_abi::Upcasted::Failed(reason),
        },
        Err(e) => weir_abi::Upcasted::Failed(format!("plugin could not decode the upcast input: {e}")),
    };
    output(&answer, |e| {
        encoding::encode(&weir_abi::Upcasted::Failed(format!("plugin could not encode its answer: {e}")))
            .unwrap_or_default()
    })
}

/// `weir_handle` of an upcaster: it rejects every delivery.
#[must_use]
pub fn upcaster_handle() -> i64 {
    output(&Outcome::Reject("an upcaster is not a handler: deploy it as [[upcasters]]".into()), |_| Vec::new())
}
