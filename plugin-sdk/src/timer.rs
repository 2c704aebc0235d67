//! Durable timers: ask the host to append an event later.
//!
//! [`Context::schedule`](crate::Context::schedule) names a timer by a key of
//! the handler's choosing and gives the time (Unix milliseconds) at or after
//! which the host appends the emit to the log, as an event caused by the
//! event being handled. Scheduling a key again replaces its timer;
//! [`Context::cancel_timer`](crate::Context::cancel_timer) removes it if it
//! has not fired. Like state writes, timers are committed with the events
//! the handler returns, exactly once, and dropped if it fails. A timer fires
//! once, also after a restart of the host.
//!
//! A handler learns the time only from the event ([`event_time_ms`]), so it
//! stays deterministic: handling the same event again schedules the same
//! timer.
//!
//! ```
//! use weir_sdk::prelude::*;
//! use weir_sdk::timer::{TimerOp, event_time_ms};
//!
//! fn handle(event: &Event, ctx: &mut Context) -> Result<Vec<Emit>, HandlerError> {
//!     let key = event.key.clone().unwrap_or_default();
//!     match event.topic.as_str() {
//!         "tasks.task.created" => {
//!             let remind = Emit::new("tasks.task.reminder").key(key.clone());
//!             ctx.schedule(event_time_ms(event) + 60_000, &key, remind)?;
//!         }
//!         _ => ctx.cancel_timer(&key)?,
//!     }
//!     Ok(vec![])
//! }
//!
//! // Natively the context records the timers, as the host keeps them.
//! let mut ctx = Context::new("tasks/reminders", 1);
//! let created = weir_sdk::testing::event("tasks.task.created").key("t-1").build();
//! ctx.handle(handle, &created).unwrap();
//! assert_eq!(ctx.pending_timer("t-1").map(|(at, emit)| (at, emit.topic.as_str())), Some((60_000, "tasks.task.reminder")));
//! let done = weir_sdk::testing::event("tasks.task.done").key("t-1").build();
//! ctx.handle(handle, &done).unwrap();
//! assert_eq!(ctx.pending_timer("t-1"), None);
//! assert!(matches!(ctx.timer_ops().last(), Some(TimerOp::Cancel { key }) if key == "t-1"));
//! ```
//!
//! The host bounds keys (1 to 256 bytes of UTF-8), the timer operations of
//! one event (`max_timers_per_invocation`, 64 by default) and the timers a
//! subscription has pending (`max_pending_timers`, 100,000); going over a
//! bound dead-letters the event with the code `timer_limit`.

use crate::{Event, HandlerError};

/// Longest timer key, in bytes (the host's bound).
pub const MAX_KEY_BYTES: usize = 256;

/// The event's time in Unix milliseconds: the time a handler schedules
/// from.
#[must_use]
pub fn event_time_ms(event: &Event) -> u64 {
    u64::try_from(event.time / 1_000_000).unwrap_or(0)
}

/// One timer operation a handler asked for (recorded natively, for tests).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TimerOp {
    /// [`Context::schedule`](crate::Context::schedule).
    Schedule {
        /// The timer's key.
        key: String,
        /// At or after this (Unix ms) it fires.
        at_or_after_ms: u64,
        /// What it appends.
        emit: weir_abi::Emit,
    },
    /// [`Context::cancel_timer`](crate::Context::cancel_timer).
    Cancel {
        /// The timer's key.
        key: String,
    },
}

/// The key's bound, checked before the host sees it.
pub(crate) fn check_key(key: &str) -> Result<(), HandlerError> {
    if key.is_empty() || key.len() > MAX_KEY_BYTES {
        return Err(HandlerError::reject(format!("a timer key of {} bytes (1..={MAX_KEY_BYTES} allowed)", key.len())));
    }
    Ok(())
}

pub(crate) use imp::Timers;

#[cfg(target_arch = "wasm32")]
mod imp {
    use crate::HandlerError;

    #[link(wasm_import_module = "weir")]
    unsafe extern "C" {
        fn timer_schedule(key_ptr: i32, key_len: i32, fire_at_ms: i64, emit_ptr: i32, emit_len: i32);
        fn timer_cancel(key_ptr: i32, key_len: i32);
    }

    /// In Wasm the timers live in the host: nothing here.
    #[derive(Debug, Clone, Default, PartialEq, Eq)]
    pub(crate) struct Timers;

    impl Timers {
        pub(crate) fn schedule(&mut self, key: &str, at: u64, emit: weir_abi::Emit) -> Result<(), HandlerError> {
            let bytes = weir_abi::encoding::encode(&emit)
                .map_err(|e| HandlerError::reject(format!("the timer's emit does not encode: {e}")))?;
            let at = i64::try_from(at).unwrap_or(i64::MAX);
            // SAFETY: the host only reads both buffers during the call.
            unsafe {
                timer_schedule(key.as_ptr() as i32, key.len() as i32, at, bytes.as_ptr() as i32, bytes.len() as i32)
            }
            Ok(())
        }

        pub(crate) fn cancel(&mut self, key: &str) {
            // SAFETY: the host only reads the key during the call.
            unsafe { timer_cancel(key.as_ptr() as i32, key.len() as i32) }
        }
    }
}

#[cfg(not(target_arch = "wasm32"))]
mod imp {
    use super::TimerOp;
    use crate::HandlerError;

    /// Natively the timers are recorded here: every committed operation, in
    /// order, and how many of them the event being handled had before.
    #[derive(Debug, Clone, Default, PartialEq, Eq)]
    pub(crate) struct Timers {
        pub(crate) ops: Vec<TimerOp>,
        mark: usize,
    }

    impl Timers {
        pub(crate) fn schedule(&mut self, key: &str, at: u64, emit: weir_abi::Emit) -> Result<(), HandlerError> {
            self.ops.push(TimerOp::Schedule { key: key.to_owned(), at_or_after_ms: at, emit });
            Ok(())
        }

        pub(crate) fn cancel(&mut self, key: &str) {
            self.ops.push(TimerOp::Cancel { key: key.to_owned() });
        }

        pub(crate) fn begin(&mut self) {
            self.mark = self.ops.len();
        }

        /// A failed handler's operations are dropped, as the host does.
        pub(crate) fn finish(&mut self, ok: bool) {
            if !ok {
                self.ops.truncate(self.mark);
            }
        }

        /// The timer `key` as the host would hold it after these
        /// operations (as if none had fired).
        pub(crate) fn pending(&self, key: &str) -> Option<(u64, &weir_abi::Emit)> {
            let mut found = None;
            for op in &self.ops {
                match op {
                    TimerOp::Schedule { key: k, at_or_after_ms, emit } if k == key => {
                        found = Some((*at_or_after_ms, emit));
                    }
                    TimerOp::Cancel { key: k } if k == key => found = None,
                    _ => {}
                }
            }
            found
        }
    }
}
