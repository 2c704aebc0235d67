//! `weir`: the command-line interface of the Weir runtime.

mod cli;

/// mimalloc: the per-event path allocates many small buffers on several
/// threads; glibc malloc was ~15% of a profile of the pipeline benchmark.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::process::ExitCode;

fn main() -> ExitCode {
    weir_runtime::tune_process();
    cli::main()
}
