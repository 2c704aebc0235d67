//! One subscription (a handler in a pipeline): its worker thread, which
//! reads the log from its cursor, checks idempotency, invokes the handler,
//! and hands every outcome to the store's writer.
//!
//! # Ordering
//!
//! Events are read in log order. Events with the same key are handled in log
//! order: while an event waits for a retry, later events with its key are
//! parked behind it, and events with other keys (or no key) go on. An event
//! without a key orders with nothing. A redriven event joins the back of its
//! key's queue.
//!
//! # Idempotency
//!
//! Before an invocation the event's idempotency key is looked up — in the
//! store, and among this worker's outcomes not yet committed. A recorded key
//! is not handed to the handler again; the event counts as a duplicate.
//! After `Ok`, the idempotency record, the emitted events, and the cursor
//! move commit in one transaction.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use weir_abi::{DeliveryRef, Emit, Event, Header, LogLevel};

use crate::config::RetryPolicy;
use crate::engine::{Handler, Invocation};
use crate::envelope::now_nanos;
use crate::error::InvokeError;
use crate::ids::IdGenerator;
use crate::store::{DlqEntry, IdempotencyRecord, ParkedEntry, ResultItem, Store, StoreError, now_ms};
use crate::topic::{self, Pattern};

/// Events read from the log per batch.
const BATCH: usize = 512;
/// Outcome batches a worker may have handed to the writer and not seen
/// committed yet. More keep the worker busy through a slow fsync and let
/// the writer's groups grow: 4 rather than 2 measured +7% on the fan-out
/// benchmark (docs/benchmarks.md). Each costs only memory until committed,
/// and a crash redoes at most these.
const MAX_IN_FLIGHT: usize = 4;
/// Longest sleep when idle (a safety net; wakes normally come from commits).
const IDLE_WAIT: Duration = Duration::from_millis(500);

/// Header carrying the plugin version (sha256 prefix) on emitted events.
pub const VERSION_HEADER: &str = "weir-plugin-version";

/// Live counters of a subscription, for status and tests.
#[derive(Debug, Default)]
pub struct SubscriptionCounters {
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
}

pub(crate) enum Control {
    Wake,
    /// Replace the handler between two invocations; answer once done.
    Swap {
        invoker: Box<dyn Invoke>,
        reply: Sender<()>,
    },
    Redrive {
        seqs: Vec<u64>,
        reply: Sender<Result<usize, StoreError>>,
    },
    Stop,
}

pub(crate) struct Spec {
    pub(crate) name: Arc<str>,
    pub(crate) plugin_name: String,
    pub(crate) patterns: Vec<Pattern>,
    pub(crate) retry: RetryPolicy,
    pub(crate) retention: Duration,
    pub(crate) max_payload_bytes: usize,
    /// Plugin log lines let through per second (also the burst).
    pub(crate) log_lines_per_second: u32,
    /// Time invocations for the latency histograms (`[metrics] enabled`).
    pub(crate) timing: bool,
}

/// A token bucket for plugin log lines: a chatty plugin is cut to the
/// configured rate, and what was dropped is reported once a second, so the
/// host's log shows that lines are missing and how many.
struct LogLimiter {
    rate: f64,
    tokens: f64,
    refilled: Instant,
    dropped_since_report: u64,
    reported: Instant,
}

impl LogLimiter {
    fn new(rate: u32) -> Self {
        let now = Instant::now();
        let rate = f64::from(rate.max(1));
        Self { rate, tokens: rate, refilled: now, dropped_since_report: 0, reported: now }
    }

    /// Whether one more line may be written now.
    fn admit(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.refilled).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.rate);
        self.refilled = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            self.dropped_since_report += 1;
            false
        }
    }

    /// Lines dropped since the last report, if a report is due.
    fn due_report(&mut self, now: Instant) -> Option<u64> {
        if self.dropped_since_report > 0 && now.saturating_duration_since(self.reported) >= Duration::from_secs(1) {
            self.reported = now;
            Some(std::mem::take(&mut self.dropped_since_report))
        } else {
            None
        }
    }
}

/// The batch handed to the writer and not yet acknowledged: its commit
/// answer and the idempotency keys it records.
type Outstanding = (Receiver<Result<(), StoreError>>, HashSet<String>);

type Redrive = (Vec<u64>, Sender<Result<usize, StoreError>>);

pub(crate) struct Worker {
    spec: Spec,
    store: Store,
    handler: Box<dyn Invoke>,
    version: String,
    version_short: String,
    ids: Arc<IdGenerator>,
    counters: Arc<SubscriptionCounters>,
    rx: Receiver<Control>,
    cursor: u64,
    parked: BTreeMap<u64, ParkedEntry>,
    keys: HashMap<String, VecDeque<u64>>,
    items: Vec<ResultItem>,
    batch_keys: HashSet<String>,
    /// Keys of the events just read that already have a record.
    prefetched: HashSet<String>,
    /// Batches handed to the writer, oldest first, at most
    /// [`MAX_IN_FLIGHT`].
    outstanding: VecDeque<Outstanding>,
    committed_cursor: u64,
    stop: bool,
    /// Redrive requests taken while busy: the seqs and where to answer.
    redrives: Vec<Redrive>,
    logs: LogLimiter,
}

impl Worker {
    pub(crate) fn new(
        spec: Spec,
        store: Store,
        handler: Box<dyn Invoke>,
        ids: Arc<IdGenerator>,
        counters: Arc<SubscriptionCounters>,
        rx: Receiver<Control>,
    ) -> Result<Self, StoreError> {
        let cursor = store.cursor(&spec.name)?;
        let mut parked = BTreeMap::new();
        let mut keys: HashMap<String, VecDeque<u64>> = HashMap::new();
        for entry in store.parked(&spec.name)? {
            if let Some(key) = &entry.key {
                keys.entry(key.clone()).or_default().push_back(entry.seq);
            }
            parked.insert(entry.seq, entry);
        }
        let version = handler.version();
        counters.cursor.store(cursor, Ordering::Relaxed);
        counters.parked.store(parked.len() as u64, Ordering::Relaxed);
        Ok(Self {
            logs: LogLimiter::new(spec.log_lines_per_second),
            version_short: version.chars().take(16).collect(),
            version,
            spec,
            store,
            handler,
            ids,
            counters,
            rx,
            cursor,
            parked,
            keys,
            items: Vec::new(),
            batch_keys: HashSet::new(),
            prefetched: HashSet::new(),
            outstanding: VecDeque::new(),
            committed_cursor: cursor,
            stop: false,
            redrives: Vec::new(),
        })
    }

    /// Run until told to stop; commit everything before returning.
    /// Take waiting control messages without blocking: redrives are queued
    /// for the top of the loop, and the answer is whether to stop.
    fn poll_control(&mut self) -> bool {
        while let Ok(control) = self.rx.try_recv() {
            match control {
                Control::Wake => {}
                Control::Stop => self.stop = true,
                Control::Redrive { seqs, reply } => self.redrives.push((seqs, reply)),
                Control::Swap { invoker, reply } => {
                    self.swap(invoker);
                    let _ = reply.send(());
                }
            }
        }
        self.stop
    }

    /// From the next invocation on, run `invoker`. Outcomes already built
    /// keep the version that produced them.
    fn swap(&mut self, invoker: Box<dyn Invoke>) {
        self.version = invoker.version();
        self.version_short = self.version.chars().take(16).collect();
        self.spec.plugin_name = invoker.name();
        self.handler = invoker;
        self.counters.swaps.fetch_add(1, Ordering::Relaxed);
        self.counters.memory_high_water_bytes.store(0, Ordering::Relaxed);
    }

    pub(crate) fn run(mut self) -> Result<(), StoreError> {
        loop {
            if self.poll_control() {
                return self.finish();
            }
            self.reap_committed()?;
            for (seqs, reply) in std::mem::take(&mut self.redrives) {
                let result = self.redrive(&seqs);
                let _ = reply.send(result);
            }
            let mut progressed = self.run_due_parked()?;
            let events = self.store.read_log(self.cursor, BATCH)?;
            progressed |= !events.is_empty();
            let read_end = events.last().map(|(seq, _)| seq + 1);
            let wanted: Vec<(u64, Event)> =
                events.into_iter().filter(|(_, e)| self.spec.patterns.iter().any(|p| p.matches(&e.topic))).collect();
            // One read transaction for the whole batch's idempotency keys.
            let keys: Vec<&str> = wanted.iter().map(|(_, e)| e.idempotency_key.as_str()).collect();
            let recorded = self.store.idempotency(&self.spec.name, &keys)?;
            self.prefetched =
                keys.iter().zip(recorded).filter(|(_, r)| r.is_some()).map(|(k, _)| (*k).to_owned()).collect();
            for (seq, event) in wanted {
                self.cursor = seq + 1;
                self.process_new(seq, event)?;
                // Stop promptly: the rest is re-read after restart.
                if self.poll_control() {
                    return self.finish();
                }
            }
            if let Some(end) = read_end {
                self.cursor = self.cursor.max(end);
            }
            self.prefetched.clear();
            self.flush()?;
            if !progressed {
                let wait = self.next_due_in().unwrap_or(IDLE_WAIT).min(IDLE_WAIT);
                match self.rx.recv_timeout(wait) {
                    Ok(Control::Stop) | Err(RecvTimeoutError::Disconnected) => return self.finish(),
                    Ok(Control::Redrive { seqs, reply }) => self.redrives.push((seqs, reply)),
                    Ok(Control::Swap { invoker, reply }) => {
                        self.swap(invoker);
                        let _ = reply.send(());
                    }
                    Ok(Control::Wake) | Err(RecvTimeoutError::Timeout) => {}
                }
            }
        }
    }

    fn finish(mut self) -> Result<(), StoreError> {
        self.flush()?;
        self.wait_outstanding()
    }

    fn next_due_in(&self) -> Option<Duration> {
        let now = now_ms();
        self.heads()
            .map(|seq| self.parked[&seq].next_attempt_at_ms.saturating_sub(now))
            .min()
            .map(Duration::from_millis)
    }

    /// Parked events that may run now: each key's head, and keyless ones.
    fn heads(&self) -> impl Iterator<Item = u64> + '_ {
        self.parked
            .values()
            .filter(|e| match &e.key {
                Some(k) => self.keys.get(k).and_then(|q| q.front()) == Some(&e.seq),
                None => true,
            })
            .map(|e| e.seq)
    }

    fn run_due_parked(&mut self) -> Result<bool, StoreError> {
        let mut progressed = false;
        loop {
            if self.stop {
                return Ok(progressed);
            }
            let now = now_ms();
            let due: Vec<u64> =
                self.heads().filter(|seq| self.parked[seq].next_attempt_at_ms <= now).take(BATCH).collect();
            if due.is_empty() {
                return Ok(progressed);
            }
            progressed = true;
            for seq in due {
                if self.poll_control() {
                    return Ok(progressed);
                }
                let Some(event) = self.store.event(seq)? else {
                    // The log never loses events; a missing one means the
                    // parked entry is stale: drop it rather than spin.
                    tracing::error!(subscription = %self.spec.name, seq, "parked event missing from the log");
                    self.unpark(seq);
                    continue;
                };
                self.attempt(seq, &event, false)?;
            }
            self.flush()?;
        }
    }

    fn process_new(&mut self, seq: u64, event: Event) -> Result<(), StoreError> {
        if let Some(key) = &event.key
            && let Some(queue) = self.keys.get_mut(key)
        {
            // An earlier event with this key is still pending: wait behind it.
            queue.push_back(seq);
            let entry = ParkedEntry::waiting(seq, Some(key.clone()));
            self.parked.insert(seq, entry.clone());
            self.items.push(ResultItem::Park(entry));
            self.counters.parked.store(self.parked.len() as u64, Ordering::Relaxed);
            return Ok(());
        }
        self.attempt(seq, &event, true)
    }

    fn is_duplicate(&mut self, key: &str, prefetched: bool) -> Result<bool, StoreError> {
        if self.batch_keys.contains(key) || self.outstanding.iter().any(|(_, keys)| keys.contains(key)) {
            return Ok(true);
        }
        if prefetched {
            return Ok(self.prefetched.contains(key));
        }
        Ok(self.store.idempotency(&self.spec.name, &[key])?.first().is_some_and(Option::is_some))
    }

    /// Remove `seq` from the parked set and its key queue.
    fn unpark(&mut self, seq: u64) {
        if let Some(entry) = self.parked.remove(&seq)
            && let Some(key) = entry.key
            && let Some(queue) = self.keys.get_mut(&key)
        {
            queue.retain(|s| *s != seq);
            if queue.is_empty() {
                self.keys.remove(&key);
            } else if let Some(next) = queue.front().and_then(|s| self.parked.get_mut(s)) {
                // The next event of the key may run now.
                next.next_attempt_at_ms = next.next_attempt_at_ms.min(now_ms());
            }
        }
        self.counters.parked.store(self.parked.len() as u64, Ordering::Relaxed);
    }

    fn attempt(&mut self, seq: u64, event: &Event, prefetched: bool) -> Result<(), StoreError> {
        if self.is_duplicate(&event.idempotency_key, prefetched)? {
            let parked = self.parked.contains_key(&seq);
            self.unpark(seq);
            self.items.push(ResultItem::Duplicate { seq, parked });
            self.counters.duplicates.fetch_add(1, Ordering::Relaxed);
            return Ok(());
        }
        let prior = self.parked.get(&seq).cloned();
        let attempt = prior.as_ref().map_or(0, |p| p.attempts) + 1;
        self.counters.invocations.fetch_add(1, Ordering::Relaxed);
        // Disabled unless the filter enables debug for `weir::invoke`: a
        // span per event is too dear to pay by default at 100k events/s.
        let span = tracing::debug_span!(
            target: "weir::invoke",
            "invoke",
            subscription = %self.spec.name,
            seq,
            topic = %event.topic,
            event_id = %event.id,
            correlation_id = event.correlation_id.map(|c| c.to_string()),
            plugin_version = %self.version_short,
            attempt,
        );
        let _entered = span.enter();
        let started = self.spec.timing.then(Instant::now);
        let invocation = self.handler.invoke(DeliveryRef { event, subscription: &self.spec.name, attempt });
        self.account(&invocation, event);
        let result = invocation.result.and_then(|emits| self.check_emits(emits));
        if let Some(started) = started {
            let elapsed = started.elapsed();
            self.counters.processing.observe(elapsed);
            tracing::trace!(target: "weir::invoke", elapsed_us = elapsed.as_micros() as u64, ok = result.is_ok(), "invoked");
        }
        match result {
            Ok(emits) => {
                let events: Vec<Event> =
                    emits.into_iter().enumerate().map(|(i, emit)| self.to_event(emit, event, i)).collect();
                let now = now_ms();
                let record = IdempotencyRecord {
                    event_id: event.id,
                    seq,
                    handled_at_ms: now,
                    expires_at_ms: now + self.spec.retention.as_millis() as u64,
                    outcome_digest: digest(&events),
                    emitted: events.len() as u32,
                    plugin_version: self.version.clone(),
                };
                self.unpark(seq);
                self.batch_keys.insert(event.idempotency_key.clone());
                self.items.push(ResultItem::Handled {
                    seq,
                    key: event.idempotency_key.clone(),
                    record,
                    emits: events,
                    parked: prior.is_some(),
                });
                self.counters.handled.fetch_add(1, Ordering::Relaxed);
                if self.spec.timing {
                    let age_nanos = now_nanos().saturating_sub(event.time).max(0);
                    self.counters.end_to_end.observe(Duration::from_nanos(age_nanos as u64));
                }
            }
            Err(error) => self.failed(seq, event, prior, attempt, &error),
        }
        Ok(())
    }

    /// Per-plugin resource numbers and the plugin's log lines, rate-limited.
    fn account(&mut self, invocation: &Invocation, event: &Event) {
        if let Some(fuel) = invocation.fuel_used {
            self.counters.fuel_consumed.fetch_add(fuel, Ordering::Relaxed);
        }
        // Only this worker writes the high-water mark (a swap resets it here
        // too), so a plain load and store do; no read-modify-write per event.
        let high = &self.counters.memory_high_water_bytes;
        if let Some(bytes) = invocation.memory_bytes.map(|b| b as u64)
            && bytes > high.load(Ordering::Relaxed)
        {
            high.store(bytes, Ordering::Relaxed);
        }
        if invocation.logs_dropped > 0 {
            self.counters.plugin_log_lines_dropped.fetch_add(invocation.logs_dropped as u64, Ordering::Relaxed);
        }
        if invocation.logs.is_empty() {
            return;
        }
        let now = Instant::now();
        let (sub, plugin, version, id) = (&*self.spec.name, &self.spec.plugin_name, &*self.version_short, event.id);
        let correlation_id = event.correlation_id.map(|c| c.to_string());
        let mut written = 0;
        for line in &invocation.logs {
            if !self.logs.admit(now) {
                continue;
            }
            written += 1;
            let msg = &line.message;
            // tracing needs the level at compile time: one arm per level.
            macro_rules! plugin_log {
                ($level:ident) => {
                    tracing::$level!(target: "weir::plugin", subscription = sub, plugin, plugin_version = version,
                        event_id = %id, correlation_id, "{msg}")
                };
            }
            match line.level {
                LogLevel::Error => plugin_log!(error),
                LogLevel::Warn => plugin_log!(warn),
                LogLevel::Info => plugin_log!(info),
                LogLevel::Debug => plugin_log!(debug),
                LogLevel::Trace => plugin_log!(trace),
            }
        }
        let dropped = invocation.logs.len() as u64 - written;
        self.counters.plugin_log_lines.fetch_add(written, Ordering::Relaxed);
        self.counters.plugin_log_lines_dropped.fetch_add(dropped, Ordering::Relaxed);
        if let Some(n) = self.logs.due_report(now) {
            tracing::warn!(
                target: "weir::plugin",
                subscription = sub,
                plugin,
                dropped = n,
                limit_per_second = self.spec.log_lines_per_second,
                "plugin log lines dropped by the rate limit"
            );
        }
    }

    fn failed(&mut self, seq: u64, event: &Event, prior: Option<ParkedEntry>, attempt: u32, error: &InvokeError) {
        let now = now_ms();
        let message = error.message();
        *self.counters.failures.lock().unwrap_or_else(PoisonError::into_inner).entry(error.code()).or_default() += 1;
        *self.counters.last_failure.lock().unwrap_or_else(PoisonError::into_inner) =
            Some(format!("{}: {message}", error.code()));
        let first_failure = prior.as_ref().and_then(|p| p.first_failure_ms).unwrap_or(now);
        let permanent = matches!(error, InvokeError::HandlerReject { .. });
        if permanent || attempt >= self.spec.retry.max_attempts {
            tracing::warn!(subscription = %self.spec.name, seq, code = error.code(), attempt, "dead-lettered: {message}");
            self.unpark(seq);
            self.items.push(ResultItem::DeadLetter(Box::new(DlqEntry {
                subscription: self.spec.name.to_string(),
                seq,
                event: event.clone(),
                plugin: self.spec.plugin_name.clone(),
                plugin_version: self.version.clone(),
                code: error.code().to_owned(),
                message,
                attempts: attempt,
                first_failure_ms: first_failure,
                last_failure_ms: now,
            })));
            self.counters.dead_lettered.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let wait = self.spec.retry.backoff(attempt);
        tracing::debug!(subscription = %self.spec.name, seq, code = error.code(), attempt, ?wait, "retrying: {message}");
        let entry = ParkedEntry {
            seq,
            key: event.key.clone(),
            attempts: attempt,
            next_attempt_at_ms: now + wait.as_millis() as u64,
            first_failure_ms: Some(first_failure),
            last_failure_ms: Some(now),
            last_code: Some(error.code().to_owned()),
            last_message: Some(message),
        };
        if prior.is_none()
            && let Some(key) = &event.key
        {
            self.keys.entry(key.clone()).or_default().push_front(seq);
        }
        self.parked.insert(seq, entry.clone());
        self.items.push(ResultItem::Park(entry));
        self.counters.retries.fetch_add(1, Ordering::Relaxed);
        self.counters.parked.store(self.parked.len() as u64, Ordering::Relaxed);
    }

    /// Emitted events must be valid events: a bad topic or an oversized
    /// payload fails the invocation as `bad_output`.
    fn check_emits(&self, emits: Vec<Emit>) -> Result<Vec<Emit>, InvokeError> {
        for (i, emit) in emits.iter().enumerate() {
            topic::validate(&emit.topic).map_err(|e| InvokeError::BadOutput { reason: format!("emit #{i}: {e}") })?;
            if emit.payload.len() > self.spec.max_payload_bytes {
                return Err(InvokeError::BadOutput {
                    reason: format!(
                        "emit #{i}: payload of {} bytes exceeds the maximum of {}",
                        emit.payload.len(),
                        self.spec.max_payload_bytes
                    ),
                });
            }
        }
        Ok(emits)
    }

    fn to_event(&self, emit: Emit, input: &Event, index: usize) -> Event {
        let id = self.ids.next_id();
        let mut headers = emit.headers;
        headers.push(Header::new(VERSION_HEADER, self.version_short.clone()));
        Event {
            id,
            topic: emit.topic,
            source: format!("weir://{}", self.spec.name),
            key: emit.key,
            schema_version: emit.schema_version,
            time: now_nanos(),
            content_type: emit.content_type,
            headers,
            // Deterministic: handling the same input again (after its record
            // expired, or by a redrive) emits the same keys, so downstream
            // subscriptions see duplicates, not new events.
            idempotency_key: emit
                .idempotency_key
                .unwrap_or_else(|| format!("{}/{}#{index}", input.idempotency_key, self.spec.name)),
            correlation_id: emit.correlation_id.or(input.correlation_id).or(Some(input.id)),
            causation_id: emit.causation_id.or(Some(input.id)),
            payload: emit.payload,
        }
    }

    /// Forget the batches the writer has committed. Their keys are in the
    /// store now, where records expire; kept here they would act as a
    /// duplicate cache that never expires.
    fn reap_committed(&mut self) -> Result<(), StoreError> {
        while let Some((rx, _)) = self.outstanding.front() {
            match rx.try_recv() {
                Ok(result) => {
                    self.outstanding.pop_front();
                    result?;
                }
                Err(mpsc::TryRecvError::Empty) => return Ok(()),
                Err(mpsc::TryRecvError::Disconnected) => return Err(StoreError::Closed),
            }
        }
        Ok(())
    }

    /// Wait until no more than `keep` batches are in flight.
    fn wait_in_flight(&mut self, keep: usize) -> Result<(), StoreError> {
        while self.outstanding.len() > keep {
            if let Some((rx, _)) = self.outstanding.pop_front() {
                rx.recv().map_err(|_| StoreError::Closed)??;
            }
        }
        Ok(())
    }

    fn wait_outstanding(&mut self) -> Result<(), StoreError> {
        self.wait_in_flight(0)
    }

    /// Hand the batch to the writer. A few batches may be in flight, so the
    /// worker runs the next batch while the writer commits the last; the
    /// in-memory duplicate check covers all of them. The writer commits
    /// them in order.
    fn flush(&mut self) -> Result<(), StoreError> {
        if self.items.is_empty() && self.cursor == self.committed_cursor {
            return Ok(());
        }
        self.wait_in_flight(MAX_IN_FLIGHT - 1)?;
        let items = std::mem::take(&mut self.items);
        let keys = std::mem::take(&mut self.batch_keys);
        let (tx, rx) = mpsc::channel();
        let counters = Arc::clone(&self.counters);
        let cursor = self.cursor;
        self.store.submit(
            Arc::clone(&self.spec.name),
            items,
            Some(cursor),
            Box::new(move |r| {
                if r.is_ok() {
                    counters.cursor.store(cursor, Ordering::Relaxed);
                }
                let _ = tx.send(r);
            }),
        );
        self.committed_cursor = cursor;
        self.outstanding.push_back((rx, keys));
        Ok(())
    }

    fn redrive(&mut self, seqs: &[u64]) -> Result<usize, StoreError> {
        // Commit what is pending first, so a DLQ entry written by this
        // worker is visible to the redrive.
        self.flush()?;
        self.wait_outstanding()?;
        let mut moved = 0;
        for &seq in seqs {
            let Some(event) = self.store.event(seq)? else { continue };
            let entry = ParkedEntry::waiting(seq, event.key.clone());
            let (tx, rx) = mpsc::channel();
            self.store.redrive(self.spec.name.to_string(), seq, entry.clone(), Box::new(move |r| drop(tx.send(r))));
            if rx.recv().map_err(|_| StoreError::Closed)?? {
                if let Some(key) = &entry.key {
                    self.keys.entry(key.clone()).or_default().push_back(seq);
                }
                self.parked.insert(seq, entry);
                moved += 1;
            }
        }
        self.counters.parked.store(self.parked.len() as u64, Ordering::Relaxed);
        Ok(moved)
    }
}

fn digest(events: &[Event]) -> String {
    if events.is_empty() {
        // The common case of a handler that emits nothing: no hashing.
        return String::new();
    }
    let mut hasher = Sha256::new();
    for e in events {
        hasher.update(weir_abi::encoding::encode(e).unwrap_or_default());
    }
    crate::engine::hex(&hasher.finalize()[..16])
}

/// What a subscription invokes: a Wasm [`Handler`], or native code standing
/// in for one (the benchmarks' no-Wasm baseline).
pub trait Invoke: Send {
    /// Handle one delivery.
    fn invoke(&mut self, delivery: DeliveryRef<'_>) -> Invocation;
    /// The plugin's name, for logs and DLQ entries.
    fn name(&self) -> String;
    /// The version identity recorded with every outcome (sha256 of the
    /// module for Wasm).
    fn version(&self) -> String;
}

impl Invoke for Handler {
    fn invoke(&mut self, delivery: DeliveryRef<'_>) -> Invocation {
        Handler::invoke(self, delivery)
    }

    fn name(&self) -> String {
        self.plugin().info().name()
    }

    fn version(&self) -> String {
        self.plugin().info().sha256.clone()
    }
}
