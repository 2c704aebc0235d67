//! Process-wide settings for binaries that embed the runtime (the `weir`
//! binary, the benchmark suite): call [`tune`] first thing in `main`.

/// Turn off transparent huge pages for this process.
///
/// mimalloc, the binaries' allocator, asks the kernel for huge pages
/// (`MADV_HUGEPAGE`) on its arenas. Each huge page is 2 MiB zeroed at its
/// first touch, and a runtime touches a little of many arenas (one worker
/// thread and one Wasm instance per subscription). Measured on the benchmark
/// suite (docs/benchmarks.md): with huge pages 3.1 MiB RSS per loaded plugin
/// and 68-73k events/s on the fan-out; without, 0.7 MiB and 84-88k, the
/// kernel's `clear_page_erms` gone from the profile. Small pages are the
/// better trade for this workload.
///
/// Failure is ignored: it only means the kernel's default stays.
pub fn tune() {
    #[cfg(target_os = "linux")]
    // The crate denies unsafe code; this call is one of its two exceptions.
    #[allow(unsafe_code)]
    // SAFETY: prctl with PR_SET_THP_DISABLE takes plain integers and touches
    // no memory of ours; it sets a flag on this process (inherited by
    // children).
    unsafe {
        let _ = libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0);
    }
}
