//! Logging from a plugin through the host's `log` import.
//!
//! In Wasm, each line goes to the host, which tags it with the plugin and the
//! event being handled. Compiled natively (unit tests), lines are kept in a
//! per-thread buffer that [`take_captured`] drains, so a test can assert on
//! what a handler logged.

use crate::LogLevel;

/// Write one log line at `level`. The macros ([`info!`](crate::info) and
/// friends) call this.
pub fn write(level: LogLevel, message: &str) {
    imp::write(level, message);
}

/// Take the lines logged on this thread so far (native builds only; in Wasm
/// lines go to the host and this returns nothing).
#[must_use]
pub fn take_captured() -> Vec<(LogLevel, String)> {
    imp::take()
}

#[cfg(target_arch = "wasm32")]
mod imp {
    use crate::LogLevel;

    #[link(wasm_import_module = "weir")]
    unsafe extern "C" {
        #[link_name = "log"]
        fn host_log(level: i32, ptr: i32, len: i32);
    }

    pub(super) fn write(level: LogLevel, message: &str) {
        // SAFETY: the host only reads `len` bytes at `ptr` during the call,
        // and the string outlives the call.
        unsafe { host_log(level as i32, message.as_ptr() as i32, message.len() as i32) }
    }

    pub(super) fn take() -> Vec<(LogLevel, String)> {
        Vec::new()
    }
}

#[cfg(not(target_arch = "wasm32"))]
mod imp {
    use std::cell::RefCell;

    use crate::LogLevel;

    thread_local! {
        static CAPTURED: RefCell<Vec<(LogLevel, String)>> = const { RefCell::new(Vec::new()) };
    }

    pub(super) fn write(level: LogLevel, message: &str) {
        CAPTURED.with(|c| c.borrow_mut().push((level, message.to_owned())));
    }

    pub(super) fn take() -> Vec<(LogLevel, String)> {
        CAPTURED.with(|c| std::mem::take(&mut *c.borrow_mut()))
    }
}

/// Log at trace level, `format!` style.
#[macro_export]
macro_rules! trace {
    ($($arg:tt)*) => { $crate::log::write($crate::LogLevel::Trace, &::std::format!($($arg)*)) };
}

/// Log at debug level, `format!` style.
#[macro_export]
macro_rules! debug {
    ($($arg:tt)*) => { $crate::log::write($crate::LogLevel::Debug, &::std::format!($($arg)*)) };
}

/// Log at info level, `format!` style.
#[macro_export]
macro_rules! info {
    ($($arg:tt)*) => { $crate::log::write($crate::LogLevel::Info, &::std::format!($($arg)*)) };
}

/// Log at warn level, `format!` style.
#[macro_export]
macro_rules! warn {
    ($($arg:tt)*) => { $crate::log::write($crate::LogLevel::Warn, &::std::format!($($arg)*)) };
}

/// Log at error level, `format!` style.
#[macro_export]
macro_rules! error {
    ($($arg:tt)*) => { $crate::log::write($crate::LogLevel::Error, &::std::format!($($arg)*)) };
}
