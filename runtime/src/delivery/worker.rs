//! A subscription's thread: the loop that feeds events to [`Worker::step`],
//! and the control messages it takes between two events.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use super::keyed::{Clock, Parked};
use super::logs::PluginLogs;
use super::stage::Stage;
use super::step::Source;
use super::{Control, Invoke, Spec, SubscriptionCounters};
use crate::ids::IdGenerator;
use crate::store::{ParkedEntry, Store, StoreError, now_ms};

/// Events read from the log per batch.
const BATCH: usize = 512;
/// Stored bytes read from the log per batch (at least one event): 512
/// events of a few MiB each would otherwise be held at once.
const BATCH_BYTES: usize = 8 << 20;
/// DLQ entries moved back per redrive command.
const REDRIVE_CHUNK: usize = 1024;
/// Longest sleep when idle (a safety net; wakes normally come from commits).
const IDLE_WAIT: Duration = Duration::from_millis(500);

/// A redrive request taken while busy: the seqs and where to answer.
type Redrive = (Vec<u64>, Sender<Result<usize, StoreError>>);

/// One subscription's worker: it owns the handler, the cursor, the parked
/// events and the staged outcomes, all touched by its thread only.
pub(crate) struct Worker {
    pub(super) spec: Spec,
    pub(super) store: Store,
    pub(super) handler: Box<dyn Invoke>,
    /// Whether the handler keeps state, asked once per handler rather than
    /// per event (a Wasm handler answers by scanning its imports).
    pub(super) stateful: bool,
    /// The handler's version, recorded with every outcome.
    pub(super) version: String,
    /// Its first 16 characters, for headers, spans and log lines.
    pub(super) version_short: String,
    pub(super) ids: Arc<IdGenerator>,
    pub(super) counters: Arc<SubscriptionCounters>,
    /// Shared with the supervisor, which keeps it across restarts.
    rx: Arc<Mutex<Receiver<Control>>>,
    /// Where the next read starts; handed to the writer with each batch.
    cursor: u64,
    pub(super) parked: Parked,
    pub(super) stage: Stage,
    /// Keys of the events just read that are duplicates: a record, or a
    /// derived one (`store::Seen`).
    pub(super) prefetched: HashSet<String>,
    /// Seqs of the events just read that hold their keys' live claims (an
    /// ingest claim, or a host key's window), with when each ends: handled,
    /// their records are derived, not written.
    pub(super) claims: HashMap<u64, u64>,
    /// The event being handled and when its key's claim ends, if it holds
    /// one (set by the dedupe, read when its outcome is staged).
    pub(super) claimed: Option<(u64, u64)>,
    stop: bool,
    /// A commit that failed while handling a control message: the worker
    /// ends with it at the top of its loop.
    failure: Option<StoreError>,
    redrives: Vec<Redrive>,
    pub(super) logs: PluginLogs,
    /// The schema versions the handler accepts (empty: any), asked once
    /// per handler like `stateful`.
    pub(super) accepts: Vec<u32>,
    /// This worker's upcaster instances, when upcasters are configured.
    pub(super) upcast: Option<crate::upcast::Local>,
}

impl Worker {
    pub(crate) fn new(
        spec: Spec,
        store: Store,
        handler: Box<dyn Invoke>,
        ids: Arc<IdGenerator>,
        counters: Arc<SubscriptionCounters>,
        rx: Arc<Mutex<Receiver<Control>>>,
    ) -> Result<Self, StoreError> {
        // Its batches are refused once a commit fails after this point: a
        // worker that lost a batch restarts from the committed cursor.
        let store = store.pinned();
        let cursor = store.cursor(&spec.name)?;
        let parked = Parked::restore_with(Clock::Monotonic, store.parked(&spec.name)?);
        let version = handler.version();
        *counters.active.lock().unwrap_or_else(PoisonError::into_inner) = (handler.name(), version.clone());
        counters.cursor.store(cursor, Ordering::Relaxed);
        counters.parked.store(parked.len() as u64, Ordering::Relaxed);
        let upcast =
            spec.upcasters.as_ref().filter(|u| !u.is_empty()).map(|u| crate::upcast::Local::new(Arc::clone(u)));
        Ok(Self {
            logs: PluginLogs::new(spec.log_lines_per_second),
            stage: Stage::new(store.clone(), Arc::clone(&spec.name), Arc::clone(&counters), cursor),
            version_short: version.chars().take(16).collect(),
            version,
            spec,
            store,
            stateful: handler.uses_state(),
            accepts: handler.schema_versions(),
            upcast,
            handler,
            ids,
            counters,
            rx,
            cursor,
            parked,
            prefetched: HashSet::new(),
            claims: HashMap::new(),
            claimed: None,
            stop: false,
            failure: None,
            redrives: Vec::new(),
        })
    }

    /// Run until told to stop (or until the runtime is gone); commit
    /// everything before returning.
    pub(crate) fn run(mut self) -> Result<(), StoreError> {
        loop {
            if self.poll_control() {
                break;
            }
            if let Some(e) = self.failure.take() {
                return Err(e);
            }
            self.stage.reap()?;
            self.run_redrives();
            let retried = self.run_due_parked()?;
            if self.stop {
                break;
            }
            let read = self.run_new()?;
            if self.stop {
                break;
            }
            self.stage.flush(self.cursor)?;
            if !retried && !read {
                self.idle();
            }
        }
        self.stage.commit_all(self.cursor)
    }

    /// The one place a control message takes effect. A swap is applied
    /// here, between two events; a redrive is only queued, because it
    /// commits everything in flight first, which belongs between batches
    /// ([`Worker::run_redrives`]).
    fn handle(&mut self, control: Control) {
        match control {
            Control::Wake => {}
            Control::Stop => self.stop = true,
            Control::Redrive { seqs, reply } => self.redrives.push((seqs, reply)),
            Control::Swap { invoker, reply } => {
                self.swap(invoker);
                let _ = reply.send(());
            }
            Control::Exclusive { work, reply } => {
                let _ = reply.send(self.exclusive(work));
            }
            Control::Panic => panic!("fault injection: subscription {} killed", self.spec.name),
        }
    }

    /// Commit everything staged, run `work` on the committed cursor with
    /// this worker paused, and forget the state counts it may have made
    /// stale. A failed commit is kept to end the worker with.
    fn exclusive(&mut self, work: Box<dyn FnOnce(u64) -> Result<(), String> + Send>) -> Result<(), String> {
        if let Err(e) = self.stage.commit_all(self.cursor) {
            let why = e.to_string();
            self.failure = Some(e);
            return Err(why);
        }
        let result = work(self.cursor);
        self.stage.overlay.lock().unwrap_or_else(PoisonError::into_inner).reset();
        result
    }

    /// Take waiting control messages without blocking; the answer is
    /// whether to stop.
    fn poll_control(&mut self) -> bool {
        let rx = Arc::clone(&self.rx);
        let rx = rx.lock().unwrap_or_else(PoisonError::into_inner);
        while let Ok(control) = rx.try_recv() {
            self.handle(control);
        }
        self.stop
    }

    /// Nothing to do: sleep until a message (a commit's wake, above all) or
    /// until the first parked event is due.
    fn idle(&mut self) {
        let wait = self.parked.next_due_in(self.parked.now()).map_or(IDLE_WAIT, Duration::from_millis).min(IDLE_WAIT);
        let received = self.rx.lock().unwrap_or_else(PoisonError::into_inner).recv_timeout(wait);
        match received {
            Ok(control) => self.handle(control),
            Err(RecvTimeoutError::Timeout) => {}
            // The runtime is gone: nobody is left to say stop.
            Err(RecvTimeoutError::Disconnected) => self.stop = true,
        }
    }

    /// From the next invocation on, run `invoker`. Outcomes already built
    /// keep the version that produced them.
    fn swap(&mut self, invoker: Box<dyn Invoke>) {
        self.version = invoker.version();
        self.version_short = self.version.chars().take(16).collect();
        self.spec.plugin_name = invoker.name();
        *self.counters.active.lock().unwrap_or_else(PoisonError::into_inner) =
            (self.spec.plugin_name.clone(), self.version.clone());
        self.stateful = invoker.uses_state();
        self.accepts = invoker.schema_versions();
        self.handler = invoker;
        self.counters.swaps.fetch_add(1, Ordering::Relaxed);
        self.counters.memory_high_water_bytes.store(0, Ordering::Relaxed);
    }

    /// Parked events whose time has come, batch after batch until none is
    /// due. Answers whether any ran.
    fn run_due_parked(&mut self) -> Result<bool, StoreError> {
        let mut progressed = false;
        loop {
            if self.stop {
                return Ok(progressed);
            }
            let due = self.parked.due(self.parked.now(), BATCH);
            if due.is_empty() {
                return Ok(progressed);
            }
            progressed = true;
            for seq in due {
                if self.poll_control() {
                    return Ok(progressed);
                }
                let event = match self.store.event(seq) {
                    Ok(Some(event)) => event,
                    Ok(None) => {
                        // The log never loses events; a missing one means the
                        // parked entry is stale: drop it rather than spin.
                        tracing::error!(subscription = %self.spec.name, seq, "parked event missing from the log");
                        self.unpark(seq);
                        continue;
                    }
                    Err(error @ StoreError::RecordCorrupt { .. }) => {
                        self.damaged(seq, error)?;
                        continue;
                    }
                    Err(e) => return Err(e),
                };
                self.step(seq, &event, Source::Parked)?;
            }
            self.stage.flush(self.cursor)?;
        }
    }

    /// The next batch of the log from the cursor. Answers whether there was
    /// any; on stop it returns early, the rest re-read after restart.
    fn run_new(&mut self) -> Result<bool, StoreError> {
        // Events of other topics are passed over undecoded (`None`).
        let patterns = &self.spec.patterns;
        let wanted = |topic: &str| patterns.iter().any(|p| p.matches(topic));
        // The records read below are read after this: batches that commit
        // from here on count as held in the stage until the next read.
        self.stage.forget_committed();
        // The entries, and the records and claims of those it reads, in
        // one read transaction.
        let (entries, seen) = self.store.read_batch(&self.spec.name, self.cursor, BATCH, BATCH_BYTES, &wanted)?;
        let Some(mut read_end) = entries.last().map(|(seq, _)| seq + 1) else {
            return Ok(false);
        };
        // The batch ends before a record that does not decode. Once it is
        // first, at the cursor, the worker dies of it once (the read is
        // retried after the supervisor's wait), and then quarantines it:
        // its topic cannot be read, so every subscription that reaches it
        // dead-letters it rather than stop there.
        let mut events = Vec::with_capacity(entries.len());
        let mut seen = seen.into_iter().flatten();
        self.prefetched.clear();
        self.claims.clear();
        for (seq, entry) in entries {
            match entry {
                Ok(Some(event)) => {
                    match seen.next() {
                        Some(s) if s.is_duplicate() => drop(self.prefetched.insert(event.idempotency_key.clone())),
                        Some(crate::store::Seen::Claimed(until)) => drop(self.claims.insert(seq, until)),
                        _ => {}
                    }
                    events.push((seq, event));
                }
                Ok(None) => {}
                Err(error) if events.is_empty() => {
                    self.damaged(seq, error)?;
                    self.cursor = seq + 1;
                    return Ok(true);
                }
                Err(_) => {
                    read_end = seq;
                    break;
                }
            }
        }
        for (seq, event) in events {
            self.cursor = seq + 1;
            self.step(seq, &event, Source::Log)?;
            // Stop promptly: the rest is re-read after restart.
            if self.poll_control() {
                return Ok(true);
            }
        }
        // Past the events of other topics at the end of the batch too.
        self.cursor = self.cursor.max(read_end);
        self.prefetched.clear();
        self.claims.clear();
        Ok(true)
    }

    /// A log record at `seq` does not decode. The first time, the worker
    /// dies of it: it is reported `stopped` with the reason, and the read
    /// is tried again by the restarted worker after the supervisor's wait
    /// (a read error may pass). A record still damaged then is quarantined.
    fn damaged(&mut self, seq: u64, error: StoreError) -> Result<(), StoreError> {
        let mut damaged = self.counters.damaged.lock().unwrap_or_else(PoisonError::into_inner);
        if *damaged == Some(seq) {
            *damaged = None;
            drop(damaged);
            self.quarantine(seq, &error);
            return Ok(());
        }
        *damaged = Some(seq);
        Err(error)
    }

    /// Dead-letter a log record that cannot be decoded (code
    /// `record_corrupt`), so the subscription goes on past it. The entry
    /// holds what the error says and a stand-in event: the topic
    /// `weir.record.corrupt`, no payload.
    fn quarantine(&mut self, seq: u64, error: &StoreError) {
        const CODE: &str = "record_corrupt";
        tracing::error!(subscription = %self.spec.name, seq, error = %error, "quarantined an undecodable log record");
        let now = now_ms();
        *self.counters.failures.lock().unwrap_or_else(PoisonError::into_inner).entry(CODE).or_default() += 1;
        *self.counters.last_failure.lock().unwrap_or_else(PoisonError::into_inner) = Some(format!("{CODE}: {error}"));
        self.unpark(seq);
        let event = crate::store::corrupt_record_stand_in(&self.spec.name, seq);
        self.stage.push(crate::store::ResultItem::DeadLetter(Box::new(crate::store::DlqEntry {
            subscription: self.spec.name.to_string(),
            seq,
            event,
            plugin: self.spec.plugin_name.clone(),
            plugin_version: self.version.clone(),
            code: CODE.to_owned(),
            message: error.to_string(),
            attempts: 0,
            first_failure_ms: now,
            last_failure_ms: now,
        })));
        self.counters.dead_lettered.fetch_add(1, Ordering::Relaxed);
    }

    /// Remove `seq` from the parked events, keeping the gauge in step.
    /// Answers whether it was parked.
    pub(super) fn unpark(&mut self, seq: u64) -> bool {
        // The clock is read only when a next event of the key needs it.
        let clock = self.parked.clock();
        let was_parked = self.parked.finish(seq, || clock.now());
        self.counters.parked.store(self.parked.len() as u64, Ordering::Relaxed);
        was_parked
    }

    /// A redrive flushes and waits for every batch in flight (so a DLQ
    /// entry written by this worker is visible to it), so it runs here,
    /// between batches, not where the message was taken.
    fn run_redrives(&mut self) {
        for (seqs, reply) in std::mem::take(&mut self.redrives) {
            let result = self.redrive(&seqs);
            let _ = reply.send(result);
        }
    }

    fn redrive(&mut self, seqs: &[u64]) -> Result<usize, StoreError> {
        self.stage.commit_all(self.cursor)?;
        // Every chunk is sent before any answer is awaited, so the writer
        // commits them in as few groups as it can: a large DLQ costs a few
        // fsyncs, not one per entry.
        let mut pending = Vec::new();
        for chunk in seqs.chunks(REDRIVE_CHUNK) {
            let mut entries = Vec::with_capacity(chunk.len());
            for &seq in chunk {
                match self.store.event(seq) {
                    Ok(Some(event)) => entries.push(ParkedEntry::waiting(seq, event.key.clone())),
                    // A quarantined record that still does not decode stays
                    // in the DLQ (counted as missing).
                    Ok(None) | Err(StoreError::RecordCorrupt { .. }) => {}
                    Err(e) => return Err(e),
                }
            }
            if entries.is_empty() {
                continue;
            }
            let (tx, rx) = mpsc::channel();
            self.store.redrive(self.spec.name.to_string(), entries.clone(), Box::new(move |r| drop(tx.send(r))));
            pending.push((entries, rx));
        }
        let mut moved = 0;
        for (entries, rx) in pending {
            let answers = rx.recv().map_err(|_| StoreError::Closed)??;
            for (entry, existed) in entries.into_iter().zip(answers) {
                if existed {
                    self.parked.redrive(entry);
                    moved += 1;
                }
            }
        }
        self.counters.parked.store(self.parked.len() as u64, Ordering::Relaxed);
        Ok(moved)
    }
}
