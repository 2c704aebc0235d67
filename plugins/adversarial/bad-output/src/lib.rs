//! Adversarial: hand-written exports that lie about their output.
//!
//! - key `oob`: a pointer past the end of memory;
//! - key `huge`: a valid pointer with a length of 4 GiB - 1;
//! - key `garbage`: valid bounds, bytes that are not an outcome;
//! - key `bad-log`: calls the host's `log` with an out-of-bounds buffer;
//! - anything else: a correct `Ok([])`.

#![allow(unsafe_code)]

#[cfg(target_arch = "wasm32")]
use weir_abi::Outcome;
use weir_abi::{Delivery, encoding};

/// Decide what to return for a delivery; native code can test this.
pub fn answer(input: &[u8]) -> Answer {
    match encoding::decode::<Delivery>(input) {
        Ok(d) => match d.event.key.as_deref() {
            Some("oob") => Answer::OutOfBounds,
            Some("huge") => Answer::HugeLength,
            Some("garbage") => Answer::Garbage,
            Some("bad-log") => Answer::BadLog,
            _ => Answer::Fine,
        },
        Err(_) => Answer::Garbage,
    }
}

/// What [`answer`] chose.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// Pointer beyond memory.
    OutOfBounds,
    /// Length beyond memory.
    HugeLength,
    /// Undecodable bytes.
    Garbage,
    /// Bad pointer passed to `log`.
    BadLog,
    /// A correct empty `Ok`.
    Fine,
}

#[cfg(target_arch = "wasm32")]
mod exports {
    use std::alloc::{Layout, alloc, dealloc};

    use super::{Answer, Outcome, answer, encoding};

    #[link(wasm_import_module = "weir")]
    unsafe extern "C" {
        fn log(level: i32, ptr: i32, len: i32);
    }

    fn leak(bytes: Vec<u8>) -> i64 {
        let boxed = bytes.into_boxed_slice();
        let len = boxed.len() as u32;
        weir_abi::pack(Box::into_raw(boxed) as *mut u8 as usize as u32, len)
    }

    #[unsafe(no_mangle)]
    extern "C" fn weir_abi_version() -> i32 {
        weir_abi::ABI_VERSION as i32
    }

    #[unsafe(no_mangle)]
    extern "C" fn weir_alloc(len: i32) -> i32 {
        match Layout::from_size_align(len as usize, 1) {
            // SAFETY: non-zero size checked.
            Ok(layout) if len > 0 => unsafe { alloc(layout) as usize as i32 },
            _ => 0,
        }
    }

    #[unsafe(no_mangle)]
    unsafe extern "C" fn weir_dealloc(ptr: i32, len: i32) {
        if let (Ok(layout), true) = (Layout::from_size_align(len as usize, 1), len > 0 && ptr != 0) {
            // SAFETY: the host frees what it was given, once.
            unsafe { dealloc(ptr as usize as *mut u8, layout) }
        }
    }

    #[unsafe(no_mangle)]
    unsafe extern "C" fn weir_handle(ptr: i32, len: i32) -> i64 {
        // SAFETY: the host's input buffer.
        let input = unsafe { std::slice::from_raw_parts(ptr as usize as *const u8, len as usize) };
        match answer(input) {
            Answer::OutOfBounds => weir_abi::pack(0xFFFF_0000, 64),
            Answer::HugeLength => weir_abi::pack(16, u32::MAX),
            Answer::Garbage => leak(vec![0xFF; 37]),
            Answer::BadLog => {
                // SAFETY: deliberately lying to the host, which must refuse it.
                unsafe { log(2, 0x7FFF_FFF0, 4096) };
                leak(encoding::encode(&Outcome::Ok(Vec::new())).unwrap_or_default())
            }
            Answer::Fine => leak(encoding::encode(&Outcome::Ok(Vec::new())).unwrap_or_default()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn undecodable_input_counts_as_garbage() {
        assert_eq!(answer(b"nope"), Answer::Garbage);
    }
}
