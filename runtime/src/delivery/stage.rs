//! Outcomes on their way to the store: the batch being built, and the
//! batches handed to the writer and not yet committed.
//!
//! One batch is everything the worker did since the last hand-over plus the
//! cursor past it; the writer commits it in one transaction, grouped with
//! whatever else is waiting. A few batches may be in flight, so the worker
//! runs the next one while the writer commits the last. Their idempotency
//! keys count as recorded until the commit: that is what keeps a key from
//! being handled twice before its record reaches the store.

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{self, Receiver};

use weir_abi::Event;

use super::SubscriptionCounters;
use super::state::SharedOverlay;
use crate::store::{EmitRecord, IdempotencyRecord, ResultItem, StateWrite, Store, StoreError, TimerWrite};

/// Outcome batches a worker may have handed to the writer and not seen
/// committed yet. More keep the worker busy through a slow fsync and let
/// the writer's groups grow: 4 rather than 2 measured +7% on the fan-out
/// benchmark (docs/benchmarks.md). Each costs only memory until committed,
/// and a crash redoes at most these.
pub(super) const MAX_IN_FLIGHT: usize = 4;

/// Bytes of emitted events and dead letters the batch being built may hold
/// before the worker hands it over early, without waiting for the end of
/// its read batch. Without it a batch of 512 events with 4 MiB of output
/// each would hold 2 GiB; with it a subscription holds at most about
/// `MAX_IN_FLIGHT` × (this + one invocation's output).
pub(super) const FLUSH_BYTES: usize = 8 << 20;

/// A batch handed to the writer: its commit answer, and the idempotency
/// keys it records.
struct InFlight {
    committed: Receiver<Result<(), StoreError>>,
    keys: HashSet<String>,
    /// Timers it schedules (new or replaced).
    schedules: usize,
}

pub(super) struct Stage {
    store: Store,
    subscription: Arc<str>,
    counters: Arc<SubscriptionCounters>,
    /// The batch being built.
    items: Vec<ResultItem>,
    /// Idempotency keys handled in the batch being built.
    keys: HashSet<String>,
    /// Oldest first, at most [`MAX_IN_FLIGHT`].
    in_flight: VecDeque<InFlight>,
    /// Keys of the batches committed since the worker last read the store's
    /// records ([`Stage::forget_committed`]): that read could not see them,
    /// so they count as held until the next.
    committed: Vec<HashSet<String>>,
    /// The cursor in the last batch handed over: with no new items and no
    /// cursor move there is nothing to hand over.
    submitted_cursor: u64,
    /// About how many bytes of events the batch being built holds.
    held_bytes: usize,
    /// Timers the batch being built schedules (new or replaced).
    schedules: usize,
    /// The state writes not committed yet, batch by batch in step with
    /// `in_flight`: what a stateful handler reads before the store.
    pub(super) overlay: SharedOverlay,
}

impl Stage {
    pub(super) fn new(store: Store, subscription: Arc<str>, counters: Arc<SubscriptionCounters>, cursor: u64) -> Self {
        Self {
            store,
            subscription,
            counters,
            items: Vec::new(),
            keys: HashSet::new(),
            in_flight: VecDeque::new(),
            committed: Vec::new(),
            submitted_cursor: cursor,
            held_bytes: 0,
            schedules: 0,
            overlay: SharedOverlay::default(),
        }
    }

    /// Whether the batch being built holds [`FLUSH_BYTES`] or more and
    /// should be handed over now.
    pub(super) fn is_heavy(&self) -> bool {
        self.held_bytes >= FLUSH_BYTES
    }

    /// The cursor of the last batch handed over.
    pub(super) fn submitted_cursor(&self) -> u64 {
        self.submitted_cursor
    }

    /// Whether `key` was handled by an outcome not committed yet: staged or
    /// in flight.
    pub(super) fn holds(&self, key: &str) -> bool {
        self.keys.contains(key)
            || self.in_flight.iter().any(|b| b.keys.contains(key))
            || self.committed.iter().any(|keys| keys.contains(key))
    }

    /// The worker is about to read the store's records: the batches
    /// committed so far are in what it reads.
    pub(super) fn forget_committed(&mut self) {
        self.committed.clear();
    }

    /// Timers scheduled (new or replaced) by outcomes not committed yet:
    /// at most how many the store's count of pending timers will grow by
    /// when they commit.
    pub(super) fn uncommitted_schedules(&self) -> usize {
        self.in_flight.iter().map(|b| b.schedules).sum::<usize>() + self.schedules
    }

    /// A handled event: its record, its emits, and whether it leaves the
    /// parked table.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn handled(
        &mut self,
        seq: u64,
        key: &str,
        record: IdempotencyRecord,
        derived: bool,
        emits: Vec<EmitRecord>,
        parked: bool,
        state: Vec<StateWrite>,
        timers: Vec<TimerWrite>,
    ) {
        self.keys.insert(key.to_owned());
        let state_bytes: usize = state.iter().map(StateWrite::bytes).sum();
        let timer_bytes: usize = timers.iter().map(TimerWrite::bytes).sum();
        self.schedules += timers.iter().filter(|t| matches!(t, TimerWrite::Schedule { .. })).count();
        self.held_bytes = self
            .held_bytes
            .saturating_add(emits.iter().map(EmitRecord::len).sum())
            .saturating_add(state_bytes)
            .saturating_add(timer_bytes);
        self.items.push(ResultItem::Handled {
            seq,
            key: key.to_owned(),
            record,
            derived,
            emits,
            parked,
            state,
            timers,
        });
    }

    /// Any other outcome: a duplicate, a park, a dead letter.
    pub(super) fn push(&mut self, item: ResultItem) {
        let bytes = match &item {
            ResultItem::DeadLetter(entry) => event_bytes(&entry.event) + entry.message.len(),
            ResultItem::Park(entry) => entry.last_message.as_ref().map_or(0, String::len),
            _ => 0,
        };
        self.held_bytes = self.held_bytes.saturating_add(bytes);
        self.items.push(item);
    }

    /// Hand the batch and `cursor` to the writer, after waiting for room
    /// among the batches in flight. The writer commits batches in order.
    pub(super) fn flush(&mut self, cursor: u64) -> Result<(), StoreError> {
        if self.items.is_empty() && cursor == self.submitted_cursor {
            return Ok(());
        }
        self.wait(MAX_IN_FLIGHT - 1)?;
        let items = std::mem::take(&mut self.items);
        let keys = std::mem::take(&mut self.keys);
        let schedules = std::mem::take(&mut self.schedules);
        self.held_bytes = 0;
        let (tx, committed) = mpsc::channel();
        let counters = Arc::clone(&self.counters);
        self.store.submit(
            Arc::clone(&self.subscription),
            items,
            Some(cursor),
            Box::new(move |r| {
                if r.is_ok() {
                    counters.cursor.store(cursor, Ordering::Relaxed);
                }
                let _ = tx.send(r);
            }),
        );
        self.submitted_cursor = cursor;
        self.in_flight.push_back(InFlight { committed, keys, schedules });
        self.lock_overlay().hand_over();
        Ok(())
    }

    /// Forget the batches the writer has committed. Their keys are in the
    /// store now, where records expire; kept here they would act as a
    /// duplicate cache that never expires.
    pub(super) fn reap(&mut self) -> Result<(), StoreError> {
        while let Some(batch) = self.in_flight.front() {
            match batch.committed.try_recv() {
                Ok(result) => {
                    if let Some(batch) = self.in_flight.pop_front() {
                        self.committed.push(batch.keys);
                    }
                    result?;
                    self.lock_overlay().committed();
                }
                Err(mpsc::TryRecvError::Empty) => return Ok(()),
                Err(mpsc::TryRecvError::Disconnected) => return Err(StoreError::Closed),
            }
        }
        Ok(())
    }

    /// Wait until no more than `keep` batches are in flight.
    pub(super) fn wait(&mut self, keep: usize) -> Result<(), StoreError> {
        while self.in_flight.len() > keep {
            if let Some(batch) = self.in_flight.pop_front() {
                batch.committed.recv().map_err(|_| StoreError::Closed)??;
                self.committed.push(batch.keys);
                self.lock_overlay().committed();
            }
        }
        Ok(())
    }

    fn lock_overlay(&self) -> std::sync::MutexGuard<'_, super::state::Overlay> {
        self.overlay.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Hand over what is staged and wait until all of it is committed.
    pub(super) fn commit_all(&mut self, cursor: u64) -> Result<(), StoreError> {
        self.flush(cursor)?;
        self.wait(0)
    }
}

/// About how much memory `event` holds: its variable-length fields.
fn event_bytes(event: &Event) -> usize {
    let headers: usize = event.headers.iter().map(|h| h.name.len() + h.value.len() + 48).sum();
    event.payload.len()
        + event.topic.len()
        + event.source.len()
        + event.key.as_ref().map_or(0, String::len)
        + event.content_type.len()
        + event.idempotency_key.len()
        + headers
        + 200
}

#[cfg(test)]
mod tests {
    use weir_abi::EventId;

    use super::*;
    use crate::store::StoreOptions;

    fn big_event(bytes: usize) -> Event {
        Event {
            id: EventId([0; 16]),
            topic: "a.b.c".into(),
            source: "weir://t/s".into(),
            key: None,
            schema_version: 1,
            time: 0,
            content_type: String::new(),
            headers: Vec::new(),
            idempotency_key: "k".into(),
            correlation_id: None,
            causation_id: None,
            payload: vec![0; bytes],
        }
    }

    #[test]
    fn a_batch_holding_flush_bytes_of_output_is_heavy_and_handing_it_over_empties_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("weir.redb"), StoreOptions::default()).unwrap();
        let counters = Arc::new(SubscriptionCounters::default());
        let mut stage = Stage::new(store, Arc::from("p/h"), counters, 0);
        let record = |seq| IdempotencyRecord {
            event_id: EventId([0; 16]),
            seq,
            handled_at_ms: 0,
            expires_at_ms: u64::MAX,
            outcome_digest: String::new(),
            emitted: 1,
            plugin_version: "v".into(),
        };
        stage.handled(
            0,
            "k0",
            record(0),
            false,
            vec![EmitRecord::new(&big_event(FLUSH_BYTES / 2))],
            false,
            Vec::new(),
            Vec::new(),
        );
        assert!(!stage.is_heavy());
        stage.handled(
            1,
            "k1",
            record(1),
            false,
            vec![EmitRecord::new(&big_event(FLUSH_BYTES / 2))],
            false,
            Vec::new(),
            Vec::new(),
        );
        assert!(stage.is_heavy(), "two halves of FLUSH_BYTES of output make a heavy batch");
        stage.flush(2).unwrap();
        assert!(!stage.is_heavy(), "handed over: the next batch starts empty");
        assert_eq!(stage.submitted_cursor(), 2);
        stage.commit_all(2).unwrap();
    }
}
