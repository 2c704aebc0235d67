//! The timer firing task: one thread that sleeps until the next timer is
//! due, then has the writer fire the due ones (`store/timer.rs`: each timer
//! removed and its event appended in one transaction). A commit that
//! schedules an earlier timer wakes it; so does a stop. On start, overdue
//! timers (due while the runtime was down) fire at once.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::store::{FIRE_BATCH, Store, now_ms};

/// Longest sleep: a safety net (wakes come from commits and the clock), and
/// the wait after a store error.
const MAX_WAIT: Duration = Duration::from_secs(1);

/// The running task.
pub(super) struct Firing {
    stop: Arc<AtomicBool>,
    store: Store,
    join: Option<JoinHandle<()>>,
}

impl Firing {
    /// Start the task on `store`.
    pub(super) fn start(store: &Store) -> std::io::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let task = (Arc::clone(&stop), store.clone());
        let join = std::thread::Builder::new().name("weir-timers".into()).spawn(move || run(&task.0, &task.1))?;
        Ok(Self { stop, store: store.clone(), join: Some(join) })
    }

    /// Stop the task and wait for it (it holds a store handle, which must
    /// be gone before the store closes).
    pub(super) fn stop(self) {
        drop(self);
    }
}

/// Also when the runtime is dropped without a shutdown: the task's store
/// handle would otherwise keep the store open for the rest of the process.
impl Drop for Firing {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        self.store.wake_timer_task();
        if let Some(join) = self.join.take() {
            let _ = join.join();
        }
    }
}

fn run(stop: &AtomicBool, store: &Store) {
    while !stop.load(Ordering::Acquire) {
        let wait = match store.next_timer_due() {
            Ok(Some(at)) if at <= now_ms() => match store.fire_timers_blocking() {
                // A full batch: more may be due, at once.
                Ok(n) if n >= FIRE_BATCH => continue,
                Ok(_) => Duration::ZERO,
                Err(e) => {
                    tracing::warn!(error = %e, "due timers could not fire; trying again");
                    MAX_WAIT
                }
            },
            Ok(Some(at)) => Duration::from_millis(at - now_ms()).min(MAX_WAIT),
            Ok(None) => MAX_WAIT,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the pending timers; trying again");
                MAX_WAIT
            }
        };
        if !wait.is_zero() {
            // Woken early by a commit that scheduled a timer, or a stop:
            // the loop looks at the next due time again either way.
            store.wait_timer_scheduled(wait);
        }
    }
}

/// Most pending timers one page lists.
pub const TIMERS_PAGE_MAX: usize = 1_000;

impl super::Runtime {
    /// Up to `limit` (at most [`TIMERS_PAGE_MAX`]) pending timers of
    /// `subscription`, by key, after the key `after`.
    ///
    /// # Errors
    ///
    /// Storage errors, or a timer whose record does not decode.
    pub fn timers(
        &self,
        subscription: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<crate::store::PendingTimer>, crate::store::StoreError> {
        self.store.timers_page(subscription, after, limit.min(TIMERS_PAGE_MAX))
    }

    /// Pending timers per subscription (those with none left out).
    ///
    /// # Errors
    ///
    /// Storage errors.
    pub fn timers_pending(&self) -> Result<std::collections::BTreeMap<String, u64>, crate::store::StoreError> {
        self.store.timer_counts()
    }
}
