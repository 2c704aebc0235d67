//! Fuzz target: see `weir_runtime::fuzzing::store_record`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| weir_runtime::fuzzing::store_record(data));
