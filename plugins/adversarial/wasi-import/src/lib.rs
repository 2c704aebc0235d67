//! Adversarial: imports `fd_write` from WASI. Weir grants no ambient
//! capabilities, so the host must refuse to load this module, naming the
//! import.

use weir_sdk::prelude::*;

#[cfg(target_arch = "wasm32")]
#[link(wasm_import_module = "wasi_snapshot_preview1")]
unsafe extern "C" {
    fn fd_write(fd: i32, iovs: i32, iovs_len: i32, written: i32) -> i32;
}

/// Try to write to stdout through WASI.
#[weir_sdk::handler]
pub fn handle(_event: &Event, _ctx: &mut Context) -> Result<Vec<Emit>, HandlerError> {
    #[cfg(target_arch = "wasm32")]
    // SAFETY: never runs: the host refuses the module at load.
    unsafe {
        fd_write(1, 0, 0, 0);
    }
    Ok(Vec::new())
}
