//! Delivery: how events of the log reach a subscription's handler, and how
//! what the handler did becomes durable.
//!
//! A subscription (one handler in one pipeline, `<pipeline>/<handler>`) is a
//! cursor over the log. Everything an event causes — the emitted events, the
//! idempotency record, the parked entry or DLQ entry, and the cursor move
//! past it — commits in one write transaction. A crash before that commit
//! redoes the event and the lost attempt left nothing behind; after it, the
//! event is skipped.
//!
//! # Threads
//!
//! ```text
//!                 read up to 512 events + their idempotency keys (one read txn)
//!   log ─────────────────────────────────────────┐
//!    ▲                                           ▼
//!    │                      weir-sub-<pipeline>/<handler>  (one OS thread per subscription)
//!    │                        per event, step.rs:
//!    │                        order → dedupe → invoke → validate → stage
//!    │                                           │
//!    │                        stage.rs: the batch being built, and up to
//!    │                        4 batches handed over, not yet committed
//!    │                                           │ submit(outcomes, cursor)
//!    │                                           ▼
//!    └── Control::Wake ──────────── store writer (one thread for the whole store):
//!        after each commit          group commit of every subscription's batches
//!                                   and every publish, one fsync, then the replies
//! ```
//!
//! The worker keeps going while its batches wait for the fsync; the
//! in-memory duplicate check spans the batches in flight and the one being
//! built, so no key is handled twice in that window.
//!
//! # Ordering
//!
//! Events are read in log order. Events with the same key are handled in log
//! order: while an event waits for a retry, later events with its key are
//! parked behind it, and events with other keys (or no key) go on. An event
//! without a key orders with nothing. A redriven event joins the back of its
//! key's queue. See `keyed.rs`.
//!
//! # Idempotency
//!
//! Before an invocation the event's idempotency key is looked up — in the
//! store, and among this worker's outcomes not yet committed. A recorded key
//! is not handed to the handler again; the event counts as a duplicate.
//! After `Ok`, the idempotency record, the emitted events, and the cursor
//! move commit in one transaction.
//!
//! # Files
//!
//! - `worker.rs`: the thread's loop and its control messages.
//! - `step.rs`: one event, top to bottom.
//! - `keyed.rs`: per-key ordering of parked events.
//! - `stage.rs`: outcomes on their way to the writer.
//! - `invoke.rs`: the [`Invoke`] seam and its neutral [`Attempt`].
//! - `logs.rs`: plugin log lines into the host's log, rate-limited.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::config::RetryPolicy;
use crate::store::StoreError;
use crate::topic::Pattern;

mod invoke;
mod keyed;
mod logs;
mod replay;
mod stage;
mod state;
mod step;
mod timer;
mod upcasting;
mod worker;

pub use invoke::{Attempt, Failure, Invoke, LogLine, TimerOp};
pub(crate) use replay::{ReplayProgress, Shadow, ShadowSpec};
pub(crate) use step::is_reserved_header;
pub(crate) use worker::Worker;

/// Header carrying the plugin version (sha256 prefix) on emitted events.
pub const VERSION_HEADER: &str = "weir-plugin-version";

/// The host's header on an emit whose idempotency key the host derived
/// (`<input key>/<subscription>#<index>`): the end of that key's window, in
/// ms since the epoch, which is the window of the emitting subscription's
/// record of the input (written or derived). Only the host sets it (the
/// `weir-` prefix is refused from plugins and producers), so it proves the
/// key unique in the log until then, and downstream subscriptions derive
/// their records of the emit instead of writing them (store/derived.rs).
pub const HOST_KEY_HEADER: &str = "weir-key-window";

/// Live counters of a subscription, shared by its worker (the only writer)
/// and status, metrics and the dashboard. Outside the crate they are read
/// through [`CountersSnapshot`], never as atomics.
#[derive(Debug, Default)]
pub(crate) struct SubscriptionCounters {
    /// Handler invocations.
    pub invocations: AtomicU64,
    /// Events handled.
    pub handled: AtomicU64,
    /// Duplicates skipped.
    pub duplicates: AtomicU64,
    /// Attempts that ended in a retry.
    pub retries: AtomicU64,
    /// Events dead-lettered.
    pub dead_lettered: AtomicU64,
    /// Committed cursor.
    pub cursor: AtomicU64,
    /// Parked events (retrying or waiting behind their key).
    pub parked: AtomicU64,
    /// Last failure, as `code: message`.
    pub last_failure: Mutex<Option<String>>,
    /// Plugin versions switched in by deploy or rollback since start.
    pub swaps: AtomicU64,
    /// Time per invocation, successful or not.
    pub processing: crate::metrics::Histogram,
    /// Event time to handled (invocation done), for handled events.
    pub end_to_end: crate::metrics::Histogram,
    /// Fuel consumed by invocations (when the engine meters fuel).
    pub fuel_consumed: AtomicU64,
    /// Largest linear memory seen of the active plugin's instances, bytes
    /// (reset by a swap).
    pub memory_high_water_bytes: AtomicU64,
    /// Plugin log lines written to the host's log.
    pub plugin_log_lines: AtomicU64,
    /// Plugin log lines dropped by the rate limit or the per-invocation cap.
    pub plugin_log_lines_dropped: AtomicU64,
    /// Failed invocations by failure code (`timeout`, `trap`,
    /// `handler_reject`, …). Failures are rare, so a lock is fine.
    pub failures: Mutex<BTreeMap<&'static str, u64>>,
    /// The plugin the worker runs now, as (name, version). The one source of
    /// truth for status and metrics: only the worker writes it, when it
    /// starts and when it applies a swap, so what is shown is what runs.
    pub active: Mutex<(String, String)>,
    /// Why the worker is not running now (it died and waits for its
    /// restart, or cannot be restarted); `None` while it runs.
    pub stopped: Mutex<Option<String>>,
    /// Times the supervisor restarted the worker since start.
    pub restarts: AtomicU64,
    /// The log record that did not decode when a worker last met it (it
    /// died of it): met again by the restarted worker, it is quarantined.
    pub damaged: Mutex<Option<u64>>,
    /// Why the subscription turned itself off ([`Disabler`]); it stays off
    /// until the runtime starts again.
    pub disabled: Mutex<Option<String>>,
}

/// What an [`Invoke`] holds to turn its own subscription off for good: the
/// target it delivers to is gone (a webhook receiver's 410). The worker
/// finishes the event in hand, commits, and stops; status shows the
/// subscription `disabled` with the reason. What it has not delivered stays
/// where it is (cursor, parked events) for the next start.
#[derive(Clone)]
pub(crate) struct Disabler {
    pub(crate) control: Sender<Control>,
    pub(crate) counters: Arc<SubscriptionCounters>,
}

impl Disabler {
    /// Record why and ask the worker to stop after the current event.
    pub(crate) fn disable(&self, why: String) {
        *self.counters.disabled.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(why);
        let _ = self.control.send(Control::Stop);
    }
}

/// A subscription's counters at one moment ([`crate::Runtime::counters`]).
/// Each field is read on its own, so two fields may be a few events apart
/// while the worker runs; once the runtime is idle they agree.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct CountersSnapshot {
    /// Handler invocations.
    pub invocations: u64,
    /// Events handled.
    pub handled: u64,
    /// Duplicates skipped.
    pub duplicates: u64,
    /// Attempts that ended in a retry.
    pub retries: u64,
    /// Events dead-lettered.
    pub dead_lettered: u64,
    /// Committed cursor: every log position below it is done.
    pub cursor: u64,
    /// Parked events (retrying or waiting behind their key).
    pub parked: u64,
    /// Plugin versions switched in by deploy or rollback since start.
    pub swaps: u64,
}

impl SubscriptionCounters {
    /// The counters as plain numbers.
    pub(crate) fn snapshot(&self) -> CountersSnapshot {
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        CountersSnapshot {
            invocations: load(&self.invocations),
            handled: load(&self.handled),
            duplicates: load(&self.duplicates),
            retries: load(&self.retries),
            dead_lettered: load(&self.dead_lettered),
            cursor: load(&self.cursor),
            parked: load(&self.parked),
            swaps: load(&self.swaps),
        }
    }

    /// The counters the rates and recent quantiles are computed from, now.
    #[must_use]
    pub(crate) fn sample(&self) -> crate::metrics::Sample {
        crate::metrics::Sample::now(self.handled.load(Ordering::Relaxed), &self.processing, &self.end_to_end)
    }
}

/// What the rest of the runtime may ask of a running worker. The worker
/// takes these between two events, never in the middle of one.
pub(crate) enum Control {
    /// Look at the log again (sent by the store after each commit).
    Wake,
    /// Replace the handler between two invocations; answer once done.
    Swap { invoker: Box<dyn Invoke>, reply: Sender<()> },
    /// Move these dead-lettered events back to the parked events; answer
    /// how many moved.
    Redrive { seqs: Vec<u64>, reply: Sender<Result<usize, StoreError>> },
    /// Commit what is pending, then run `work` with the cursor (every
    /// event before it handled, parked or dead-lettered, and committed),
    /// the worker paused meanwhile; then forget what it counted of its
    /// state, which `work` may have switched (a replay's last step).
    Exclusive { work: Box<dyn FnOnce(u64) -> Result<(), String> + Send>, reply: Sender<Result<(), String>> },
    /// Commit what is pending and return.
    Stop,
    /// Panic on the worker's thread (fault-injection tests: the supervisor
    /// must report and restart it).
    Panic,
}

/// What a subscription is: its name, what it reads, and the rules its
/// outcomes follow.
#[derive(Clone)]
pub(crate) struct Spec {
    pub(crate) name: Arc<str>,
    pub(crate) plugin_name: String,
    pub(crate) patterns: Vec<Pattern>,
    pub(crate) retry: RetryPolicy,
    pub(crate) retention: Duration,
    pub(crate) max_payload_bytes: usize,
    /// `[[schemas]]`: every emit is checked against its topic's entry.
    pub(crate) schemas: crate::schema::Schemas,
    /// Plugin log lines let through per second (also the burst).
    pub(crate) log_lines_per_second: u32,
    /// Time invocations for the latency histograms (`[metrics] enabled`).
    pub(crate) timing: bool,
    /// Keys one scope of the handler's state may hold.
    pub(crate) max_state_keys_per_scope: usize,
    /// Timer operations one attempt may ask for (`timer.rs`).
    pub(crate) max_timers_per_invocation: usize,
    /// Timers the subscription may have pending.
    pub(crate) max_pending_timers: usize,
    /// The upcasters, for a handler that declares the versions it accepts
    /// (`None` for sinks: they take events as stored).
    pub(crate) upcasters: Option<Arc<crate::upcast::Upcasters>>,
    /// The topics of a reserved domain (`RESERVED_TOPIC_DOMAINS`) this
    /// subscription may emit and schedule timers on, as a prefix: a saga
    /// coordinator's own (`weir-saga.<name>.`, its timers and failure
    /// alerts). `None` for every plugin: its emit there is `bad_output`, or
    /// it could forge a coordinator's timer or admin event.
    pub(crate) own_reserved_topics: Option<String>,
}
