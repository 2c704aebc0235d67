//! Durable timers: events a handler scheduled for later, kept until they
//! fire.
//!
//! A timer belongs to a subscription and has a key chosen by the handler.
//! Scheduling and cancelling travel with the outcome that asked for them
//! ([`TimerWrite`] in `ResultItem::Handled`) and are applied in the same
//! transaction as its idempotency record, emits and state writes: a failed
//! or uncommitted attempt leaves no timer behind, a committed one always
//! does. Firing ([`Fire`]) takes due timers out and appends their events in
//! one transaction, so a timer fires once: a crash before that commit fires
//! it again from scratch, after it the timer is gone. The fired event's id
//! is derived from the timer (subscription, key, fire time and cause,
//! [`timer_event_id`]), and an id already in the log is not appended again.
//!
//! Three tables, added without a store format change: a store without them
//! gets them empty on open, and an older Weir opening a store that has them
//! ignores them (its timers wait, unfired, until a Weir that knows them
//! runs again):
//!
//! - `timers`: (subscription, key) → (fire at ms, encoded [`TimerEntry`]);
//! - `timer_due`: (fire at ms, subscription, key) → (): what is due next;
//! - `timer_counts`: subscription → pending timers, for the per-subscription
//!   bound, `/metrics` and status without walking the table.

use std::collections::BTreeMap;
use std::sync::{Condvar, Mutex, PoisonError};
use std::time::Duration;

use redb::{ReadableTable, TableDefinition, WriteTransaction};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use weir_abi::{Event, EventId};

use super::codec::{Encoded, Records, decode};
use super::command::{Apply, Command, Failure, Fatal, Order, next_record};
use super::writer::Writes;
use super::{Store, StoreError, log, storage};

/// (subscription, timer key) → (fire at, unix ms; encoded [`TimerEntry`]).
pub(super) const TIMERS: TableDefinition<'_, (&str, &str), (u64, &[u8])> = TableDefinition::new("timers");
/// (fire at ms, subscription, timer key) → (): the due-time index.
pub(super) const TIMER_DUE: TableDefinition<'_, (u64, &str, &str), ()> = TableDefinition::new("timer_due");
/// subscription → timers pending.
pub(super) const TIMER_COUNTS: TableDefinition<'_, &str, u64> = TableDefinition::new("timer_counts");

/// Most timers one firing command takes: bounds one transaction; the
/// firing task comes back at once for the rest.
pub(crate) const FIRE_BATCH: usize = 512;

/// Create the timer tables if missing.
pub(super) fn create(txn: &WriteTransaction) -> Result<(), redb::TableError> {
    txn.open_table(TIMERS)?;
    txn.open_table(TIMER_DUE)?;
    txn.open_table(TIMER_COUNTS)?;
    Ok(())
}

/// A pending timer as stored: the event it appends when it fires, complete
/// but for its time, which is the time it fires.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct TimerEntry {
    /// At or after this (unix ms) the timer fires.
    pub(crate) fire_at_ms: u64,
    /// The event, with its id derived from the timer ([`timer_event_id`]).
    pub(crate) event: Event,
}

/// A timer operation of a handled event, ready for the store.
// Most operations are schedules: boxing them would cost an allocation each
// to save space on the rarer cancels.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum TimerWrite {
    /// Schedule or replace the timer `key`.
    Schedule { key: String, entry: TimerEntry },
    /// Cancel the timer `key`, if it is pending.
    Cancel { key: String },
}

impl TimerWrite {
    /// About how many bytes it holds, for the stage's flush bound.
    pub(crate) fn bytes(&self) -> usize {
        match self {
            Self::Schedule { key, entry } => key.len() + entry.event.payload.len() + 256,
            Self::Cancel { key } => key.len() + 32,
        }
    }
}

/// The id of the event the timer `key` of `subscription`, scheduled by the
/// event `cause` to fire at `fire_at_ms`, appends: the same every time the
/// same timer fires, so a refire cannot add a second event. Its first 48
/// bits are the fire time, so ids stay sortable by time like the log's
/// others (`ids.rs`); the other 80 are a hash of the rest.
#[must_use]
pub(crate) fn timer_event_id(subscription: &str, key: &str, fire_at_ms: u64, cause: EventId) -> EventId {
    let mut hasher = Sha256::new();
    hasher.update(b"weir-timer\0");
    hasher.update(subscription.as_bytes());
    hasher.update([0]);
    hasher.update(key.as_bytes());
    hasher.update([0]);
    hasher.update(fire_at_ms.to_le_bytes());
    hasher.update(cause.0);
    let digest = hasher.finalize();
    let mut low = [0_u8; 16];
    low[6..].copy_from_slice(&digest[..10]);
    let hash = u128::from_be_bytes(low);
    let time = u128::from(fire_at_ms & ((1 << 48) - 1));
    EventId::from_u128((time << 80) | hash)
}

/// Apply one handled event's timer operations, in order. `records` holds
/// the encoded entry of each `Schedule`, in order (pushed by [`encode`]).
pub(super) fn apply(
    w: &mut Writes<'_>,
    subscription: &str,
    ops: &[TimerWrite],
    records: &mut Records<'_>,
) -> Result<(), Fatal> {
    if ops.is_empty() {
        return Ok(());
    }
    let mut timers = w.txn.open_table(TIMERS)?;
    let mut due = w.txn.open_table(TIMER_DUE)?;
    let mut delta: i64 = 0;
    for op in ops {
        match op {
            TimerWrite::Schedule { key, entry } => {
                let record = next_record(records)?;
                let old = timers.insert((subscription, key.as_str()), (entry.fire_at_ms, record))?.map(|v| v.value().0);
                match old {
                    Some(old) => {
                        if old != entry.fire_at_ms {
                            due.remove((old, subscription, key.as_str()))?;
                        }
                    }
                    None => delta += 1,
                }
                due.insert((entry.fire_at_ms, subscription, key.as_str()), ())?;
                w.timer_earliest = w.timer_earliest.min(entry.fire_at_ms);
            }
            TimerWrite::Cancel { key } => {
                if let Some(old) = timers.remove((subscription, key.as_str()))?.map(|v| v.value().0) {
                    due.remove((old, subscription, key.as_str()))?;
                    delta -= 1;
                }
            }
        }
    }
    drop((timers, due));
    add_count(w.txn, subscription, delta)
}

/// Encode the entries of `ops`' `Schedule`s, in order, for [`apply`].
pub(super) fn encode(ops: &[TimerWrite], encoded: &mut Encoded) -> Result<(), StoreError> {
    for op in ops {
        if let TimerWrite::Schedule { entry, .. } = op {
            encoded.push(entry)?;
        }
    }
    Ok(())
}

fn add_count(txn: &WriteTransaction, subscription: &str, delta: i64) -> Result<(), Fatal> {
    if delta == 0 {
        return Ok(());
    }
    let mut counts = txn.open_table(TIMER_COUNTS)?;
    let now = counts.get(subscription)?.map_or(0, |v| v.value());
    let next = now.saturating_add_signed(delta);
    if next == 0 {
        counts.remove(subscription)?;
    } else {
        counts.insert(subscription, next)?;
    }
    Ok(())
}

/// Remove up to `budget` pending timers of `subscription` (with their due
/// entries and count), for [`super::lifecycle`]'s deletion of an orphan's
/// data: a deleted subscription's timers must not fire afterwards, and
/// going in the deleting transaction means none can fire between the two.
/// Answers how many went.
pub(super) fn delete_some(w: &mut Writes<'_>, subscription: &str, budget: usize) -> Result<usize, Fatal> {
    let mut timers = w.txn.open_table(TIMERS)?;
    let found: Vec<(String, u64)> = timers
        .range((subscription, "")..)?
        .take(budget)
        .map(|e| {
            e.map(|(k, v)| {
                let (sub, key) = k.value();
                (sub == subscription, key.to_owned(), v.value().0)
            })
        })
        .take_while(|r| r.as_ref().map_or(true, |(mine, ..)| *mine))
        .map(|r| r.map(|(_, key, at)| (key, at)))
        .collect::<Result<_, _>>()?;
    let mut due = w.txn.open_table(TIMER_DUE)?;
    for (key, at) in &found {
        timers.remove((subscription, key.as_str()))?;
        due.remove((*at, subscription, key.as_str()))?;
    }
    drop((timers, due));
    if found.len() < budget {
        // All gone: the count goes whatever it said.
        w.txn.open_table(TIMER_COUNTS)?.remove(subscription)?;
    } else {
        add_count(w.txn, subscription, -i64::try_from(found.len()).unwrap_or(i64::MAX))?;
    }
    Ok(found.len())
}

/// Fire the timers due at the group's time, up to [`FIRE_BATCH`]: each is
/// removed and its event appended, in the same transaction.
pub(super) struct Fire;

/// One due timer, as the check found it.
pub(super) struct Due {
    fire_at_ms: u64,
    subscription: String,
    key: String,
    /// The event, when its entry decoded and it is to be appended (not
    /// already in the log); `None` removes the timer only.
    append: Option<Event>,
}

impl Apply for Fire {
    /// How many timers fired (events appended or found appended already).
    type Answer = usize;
    type Checked = Vec<Due>;

    fn check(&self, w: &Writes<'_>, encoded: &mut Encoded) -> Result<Vec<Due>, Failure> {
        let timers = w.txn.open_table(TIMERS)?;
        let due = w.txn.open_table(TIMER_DUE)?;
        let mut found = Vec::new();
        for row in due.range::<(u64, &str, &str)>(..(w.now.saturating_add(1), "", ""))? {
            if found.len() >= FIRE_BATCH {
                break;
            }
            let (k, _) = row?;
            let (fire_at_ms, subscription, key) = k.value();
            if fire_at_ms > w.now {
                break;
            }
            let mut append = None;
            if let Some(stored) = timers.get((subscription, key))? {
                let (at, bytes) = stored.value();
                // A due entry of a timer replaced since (only possible
                // when the replaced entry could not be read) just goes.
                if at == fire_at_ms {
                    match decode::<TimerEntry>(bytes, || format!("timer {subscription} {key:?}")) {
                        Ok(mut entry) => {
                            if w.event_ids.get(entry.event.id.as_u128())?.is_none() {
                                entry.event.time = crate::clock::now_nanos();
                                encoded.push_event(&entry.event);
                                append = Some(entry.event);
                            }
                        }
                        Err(e) => {
                            // Nothing can fire it: it is dropped, loudly,
                            // rather than block every timer behind it.
                            tracing::error!(subscription, key, error = %e, "a damaged timer is dropped unfired");
                        }
                    }
                }
            }
            found.push(Due { fire_at_ms, subscription: subscription.to_owned(), key: key.to_owned(), append });
        }
        Ok(found)
    }

    fn write(self, found: Vec<Due>, w: &mut Writes<'_>, mut records: Records<'_>) -> Result<usize, Fatal> {
        let mut fired = 0;
        let mut removed: BTreeMap<String, i64> = BTreeMap::new();
        {
            let mut timers = w.txn.open_table(TIMERS)?;
            let mut due = w.txn.open_table(TIMER_DUE)?;
            for d in &found {
                due.remove((d.fire_at_ms, d.subscription.as_str(), d.key.as_str()))?;
                let gone = match timers.get((d.subscription.as_str(), d.key.as_str()))?.map(|v| v.value().0) {
                    Some(at) => at == d.fire_at_ms,
                    None => false,
                };
                if gone {
                    timers.remove((d.subscription.as_str(), d.key.as_str()))?;
                    *removed.entry(d.subscription.clone()).or_default() -= 1;
                    fired += 1;
                }
            }
        }
        for d in &found {
            if let Some(event) = &d.append {
                log::append(w, next_record(&mut records)?, event)?;
            }
        }
        for (subscription, delta) in removed {
            add_count(w.txn, &subscription, delta)?;
        }
        Ok(fired)
    }
}

/// One pending timer, as listed.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct PendingTimer {
    /// The key the handler gave it.
    pub key: String,
    /// At or after this (unix ms) it fires.
    pub fire_at_ms: u64,
    /// The event it appends when it fires (its time is set then).
    pub event: Event,
}

/// Wakes the firing task when a commit schedules a timer earlier than the
/// one it sleeps towards.
#[derive(Debug, Default)]
pub(super) struct Signal {
    earliest: Mutex<Option<u64>>,
    changed: Condvar,
}

impl Signal {
    /// A commit scheduled a timer at `at`.
    pub(super) fn scheduled(&self, at: u64) {
        let mut earliest = self.earliest.lock().unwrap_or_else(PoisonError::into_inner);
        *earliest = Some(earliest.map_or(at, |e| e.min(at)));
        self.changed.notify_all();
    }

    /// Wait up to `timeout` for a commit that schedules a timer; answers
    /// the earliest scheduled since the last call, if any.
    fn wait(&self, timeout: Duration) -> Option<u64> {
        let mut earliest = self.earliest.lock().unwrap_or_else(PoisonError::into_inner);
        if earliest.is_none() {
            earliest = self.changed.wait_timeout(earliest, timeout).unwrap_or_else(PoisonError::into_inner).0;
        }
        earliest.take()
    }
}

impl Store {
    /// Fire the timers due now, up to [`FIRE_BATCH`]; answers how many.
    ///
    /// # Errors
    ///
    /// The commit's.
    pub(crate) fn fire_timers_blocking(&self) -> Result<usize, StoreError> {
        self.ask(|reply| Command::FireTimers(Order::new(Fire, reply)))
    }

    /// When the next timer is due (unix ms), if one is pending.
    ///
    /// # Errors
    ///
    /// Storage errors.
    pub(crate) fn next_timer_due(&self) -> Result<Option<u64>, StoreError> {
        let read = self.shared.begin_read()?;
        let due = read.open_table(TIMER_DUE).map_err(storage)?;
        Ok(due.first().map_err(storage)?.map(|(k, _)| k.value().0))
    }

    /// Wait up to `timeout` for a commit that schedules a timer; answers
    /// the earliest fire time scheduled since the last call, if any.
    pub(crate) fn wait_timer_scheduled(&self, timeout: Duration) -> Option<u64> {
        self.shared.timers.wait(timeout)
    }

    /// Wake the firing task from its wait (to stop it).
    pub(crate) fn wake_timer_task(&self) {
        self.shared.timers.scheduled(0);
    }

    /// Pending timers per subscription (subscriptions with none are left
    /// out).
    ///
    /// # Errors
    ///
    /// Storage errors.
    pub(crate) fn timer_counts(&self) -> Result<BTreeMap<String, u64>, StoreError> {
        let read = self.shared.begin_read()?;
        let counts = read.open_table(TIMER_COUNTS).map_err(storage)?;
        let mut out = BTreeMap::new();
        for row in counts.iter().map_err(storage)? {
            let (k, v) = row.map_err(storage)?;
            out.insert(k.value().to_owned(), v.value());
        }
        Ok(out)
    }

    /// Pending timers of `subscription`, and for each of `keys` whether it
    /// is pending, read in one snapshot.
    ///
    /// # Errors
    ///
    /// Storage errors.
    pub(crate) fn timer_census(&self, subscription: &str, keys: &[&str]) -> Result<(u64, Vec<bool>), StoreError> {
        let read = self.shared.begin_read()?;
        let counts = read.open_table(TIMER_COUNTS).map_err(storage)?;
        let count = counts.get(subscription).map_err(storage)?.map_or(0, |v| v.value());
        let timers = read.open_table(TIMERS).map_err(storage)?;
        let mut present = Vec::with_capacity(keys.len());
        for key in keys {
            present.push(timers.get((subscription, *key)).map_err(storage)?.is_some());
        }
        Ok((count, present))
    }

    /// Up to `limit` pending timers of `subscription` by key, after the key
    /// `after`.
    ///
    /// # Errors
    ///
    /// Storage errors, or an entry that does not decode.
    pub(crate) fn timers_page(
        &self,
        subscription: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<PendingTimer>, StoreError> {
        use std::ops::Bound::{Excluded, Included, Unbounded};
        let read = self.shared.begin_read()?;
        let timers = read.open_table(TIMERS).map_err(storage)?;
        let low = match after {
            Some(a) => Excluded((subscription, a)),
            None => Included((subscription, "")),
        };
        let mut out = Vec::new();
        // Up to the end, stopping at the first key of another subscription.
        for row in timers.range::<(&str, &str)>((low, Unbounded)).map_err(storage)? {
            if out.len() >= limit {
                break;
            }
            let (k, v) = row.map_err(storage)?;
            let (sub, key) = k.value();
            if sub != subscription {
                break;
            }
            let (fire_at_ms, bytes) = v.value();
            let entry: TimerEntry = decode(bytes, || format!("timer {subscription} {key:?}"))?;
            out.push(PendingTimer { key: key.to_owned(), fire_at_ms, event: entry.event });
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::store::ResultItem;
    use crate::store::testing::{event, record, temp_store};

    const SUB: &str = "p/h";

    fn schedule(key: &str, fire_at_ms: u64, cause: &Event) -> TimerWrite {
        let mut e = event(&format!("timer-{key}"));
        e.id = timer_event_id(SUB, key, fire_at_ms, cause.id);
        e.causation_id = Some(cause.id);
        TimerWrite::Schedule { key: key.into(), entry: TimerEntry { fire_at_ms, event: e } }
    }

    fn submit(store: &Store, key: &str, timers: Vec<TimerWrite>) {
        let item = ResultItem::Handled {
            seq: 0,
            key: key.into(),
            record: record(0, u64::MAX),
            derived: false,
            emits: Vec::new(),
            parked: false,
            state: Vec::new(),
            timers,
        };
        let (tx, rx) = std::sync::mpsc::channel();
        store.submit(Arc::from(SUB), vec![item], None, Box::new(move |r| drop(tx.send(r))));
        rx.recv().unwrap().unwrap();
    }

    #[test]
    fn a_timer_is_stored_with_its_outcome_fires_once_and_is_gone() {
        let (_dir, store) = temp_store();
        let cause = event("cause");
        submit(&store, "in-1", vec![schedule("a", 1, &cause), schedule("b", u64::MAX - 1, &cause)]);
        assert_eq!(store.timer_counts().unwrap().get(SUB), Some(&2));
        assert_eq!(store.next_timer_due().unwrap(), Some(1));
        assert_eq!(store.fire_timers_blocking().unwrap(), 1);
        assert_eq!(store.fire_timers_blocking().unwrap(), 0, "fired once");
        let log = store.read_log(0, 10).unwrap();
        assert_eq!(log.len(), 1);
        assert_eq!(log[0].1.id, timer_event_id(SUB, "a", 1, cause.id));
        assert_eq!(log[0].1.causation_id, Some(cause.id));
        assert_eq!(store.timer_counts().unwrap().get(SUB), Some(&1));
        let page = store.timers_page(SUB, None, 10).unwrap();
        assert_eq!(page.iter().map(|t| t.key.as_str()).collect::<Vec<_>>(), ["b"]);
    }

    #[test]
    fn replacing_moves_the_due_time_and_cancel_removes_it() {
        let (_dir, store) = temp_store();
        let cause = event("cause");
        submit(&store, "in-1", vec![schedule("a", u64::MAX - 1, &cause)]);
        submit(&store, "in-2", vec![schedule("a", 2, &cause), schedule("c", 3, &cause)]);
        assert_eq!(store.timer_counts().unwrap().get(SUB), Some(&2), "a replaced, not added");
        submit(&store, "in-3", vec![TimerWrite::Cancel { key: "c".into() }, TimerWrite::Cancel { key: "zz".into() }]);
        assert_eq!(store.timer_counts().unwrap().get(SUB), Some(&1));
        assert_eq!(store.fire_timers_blocking().unwrap(), 1);
        assert_eq!(store.timer_counts().unwrap().get(SUB), None);
        assert_eq!(store.next_timer_due().unwrap(), None, "the old due entry of `a` went with the replacement");
        let (count, present) = store.timer_census(SUB, &["a", "c"]).unwrap();
        assert_eq!((count, present), (0, vec![false, false]));
    }

    #[test]
    fn an_event_already_in_the_log_is_not_appended_again() {
        let (_dir, store) = temp_store();
        let cause = event("cause");
        let op = schedule("a", 1, &cause);
        let TimerWrite::Schedule { entry, .. } = &op else { unreachable!() };
        store.publish_blocking(vec![entry.event.clone()]).unwrap();
        submit(&store, "in-1", vec![op]);
        assert_eq!(store.fire_timers_blocking().unwrap(), 1);
        assert_eq!(store.read_log(0, 10).unwrap().len(), 1, "the id was there: no second event");
        assert_eq!(store.next_timer_due().unwrap(), None);
    }
}
