//! Adversarial: a module that says it speaks ABI version 2. The host must
//! refuse it with `abi_mismatch` before handing it any event.

#![allow(unsafe_code)]

/// The version this module claims.
pub const CLAIMED_VERSION: i32 = 2;

#[cfg(target_arch = "wasm32")]
mod exports {
    #[unsafe(no_mangle)]
    extern "C" fn weir_abi_version() -> i32 {
        super::CLAIMED_VERSION
    }

    #[unsafe(no_mangle)]
    extern "C" fn weir_alloc(_len: i32) -> i32 {
        0
    }

    #[unsafe(no_mangle)]
    extern "C" fn weir_dealloc(_ptr: i32, _len: i32) {}

    #[unsafe(no_mangle)]
    extern "C" fn weir_handle(_ptr: i32, _len: i32) -> i64 {
        0
    }
}
