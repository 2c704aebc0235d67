//! A subscription's life in the store, beyond its results: where a new one
//! starts, what one holds, and deleting all of it.
//!
//! Deleting runs as [`DeleteSubscription`] commands of at most
//! [`DELETE_BATCH`] entries each, one per group, until nothing is left: a
//! subscription with millions of idempotency records never holds the
//! writer (and the publishes behind it) for long.

use std::collections::BTreeMap;

use redb::ReadableTable;
use serde::Serialize;

use super::codec::{Encoded, Records};
use super::command::{Apply, Command, Failure, Fatal, Order};
use super::registry::{ACTIVE, VERSIONS};
use super::subscription::{CURSORS, DLQ, IDEMPOTENCY, PARKED};
use super::timer::TIMER_COUNTS;
use super::writer::Writes;
use super::{ResultItem, Store, StoreError, storage};

/// Most entries one delete command removes.
pub(super) const DELETE_BATCH: usize = 10_000;
/// Idempotency records counted per subscription in a listing; more is
/// shown as this number and `idempotency_capped`.
pub const HOLDINGS_COUNT_CAP: u64 = 100_000;

/// What the store holds for one subscription.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Holdings {
    /// Its committed cursor, if it has one.
    pub cursor: Option<u64>,
    /// Parked (retrying or waiting) events.
    pub parked: u64,
    /// DLQ entries.
    pub dlq: u64,
    /// Idempotency records (at most [`HOLDINGS_COUNT_CAP`] counted).
    pub idempotency: u64,
    /// Whether there are more idempotency records than counted.
    pub idempotency_capped: bool,
    /// Entries of its plugin deploy history.
    pub versions: u64,
    /// Durable timers pending (not fired nor cancelled).
    pub timers: u64,
}

/// The distinct subscription names of a table keyed by (subscription, …),
/// one lookup per name (a skip scan, not a walk of every entry).
pub(super) fn distinct<T>(table: &T) -> Result<Vec<String>, redb::StorageError>
where
    T: ReadableTable<(&'static str, u64), &'static [u8]>,
{
    let mut names = Vec::new();
    let mut from = String::new();
    loop {
        let next = table.range((from.as_str(), 0)..)?.next().transpose()?;
        let Some((k, _)) = next else { return Ok(names) };
        let name = k.value().0.to_owned();
        // The least name after `name` starts with it and a NUL.
        from = format!("{name}\0");
        names.push(name);
    }
}

/// Delete up to [`DELETE_BATCH`] entries of one subscription's data.
pub(super) struct DeleteSubscription {
    pub(super) name: String,
}

impl Apply for DeleteSubscription {
    /// Whether everything is gone.
    type Answer = bool;
    type Checked = ();

    fn check(&self, _: &Writes<'_>, _: &mut Encoded) -> Result<(), Failure> {
        Ok(())
    }

    fn write(self, (): (), w: &mut Writes<'_>, _: Records<'_>) -> Result<bool, Fatal> {
        let n = self.name.as_str();
        let mut budget = DELETE_BATCH;
        w.cursors.remove(n)?;
        super::derived::forget(w, n)?;
        budget -= take(&mut w.parked, (n, 0), (n, u64::MAX), budget)?;
        budget -= take(&mut w.dlq, (n, 0), (n, u64::MAX), budget)?;
        let keys: Vec<String> = w
            .idempotency
            .range((n, "")..)?
            .take(budget)
            .map(|e| e.map(|(k, _)| (k.value().0 == n, k.value().1.to_owned())))
            .take_while(|r| r.as_ref().map_or(true, |(mine, _)| *mine))
            .map(|r| r.map(|(_, key)| key))
            .collect::<Result<_, _>>()?;
        budget -= keys.len();
        for key in &keys {
            w.idempotency.remove((n, key.as_str()))?;
        }
        budget -= super::state::delete_some(w, n, budget)?;
        budget -= super::timer::delete_some(w, n, budget)?;
        // The expiry index may still name these keys: the collector finds
        // no record and drops the batch.
        let counters: Vec<String> = w
            .stats
            .range((n, "")..)?
            .map(|e| e.map(|(k, _)| (k.value().0 == n, k.value().1.to_owned())))
            .take_while(|r| r.as_ref().map_or(true, |(mine, _)| *mine))
            .map(|r| r.map(|(_, c)| c))
            .collect::<Result<_, _>>()?;
        for counter in &counters {
            w.stats.remove((n, counter.as_str()))?;
        }
        let mut versions = w.txn.open_table(VERSIONS)?;
        budget -= take(&mut versions, (n, 0), (n, u64::MAX), budget)?;
        w.txn.open_table(ACTIVE)?.remove(n)?;
        // Modules no history uses any more go at the next deploy's prune.
        Ok(budget > 0)
    }
}

/// Remove up to `budget` entries in `low..=high`; answers how many.
fn take<V: redb::Value + 'static>(
    table: &mut redb::Table<'_, (&'static str, u64), V>,
    low: (&str, u64),
    high: (&str, u64),
    budget: usize,
) -> Result<usize, Fatal> {
    let keys: Vec<u64> =
        table.range(low..=high)?.take(budget).map(|e| e.map(|(k, _)| k.value().1)).collect::<Result<_, _>>()?;
    for seq in &keys {
        table.remove((low.0, *seq))?;
    }
    Ok(keys.len())
}

impl Store {
    /// The committed cursor of a subscription, if it has one.
    ///
    /// # Errors
    ///
    /// Storage errors.
    pub fn committed_cursor(&self, subscription: &str) -> Result<Option<u64>, StoreError> {
        let read = self.shared.begin_read()?;
        let table = read.open_table(CURSORS).map_err(storage)?;
        Ok(table.get(subscription).map_err(storage)?.map(|v| v.value()))
    }

    /// Give a subscription that has no cursor yet its first one, `seq`,
    /// durably; answers the cursor it has now (the existing one if it had
    /// one). Call it before its worker starts.
    ///
    /// # Errors
    ///
    /// The commit's error.
    pub fn start_cursor_blocking(&self, subscription: &str, seq: u64) -> Result<u64, StoreError> {
        if let Some(cursor) = self.committed_cursor(subscription)? {
            return Ok(cursor);
        }
        let (tx, rx) = std::sync::mpsc::channel();
        self.submit(subscription.into(), Vec::<ResultItem>::new(), Some(seq), Box::new(move |r| drop(tx.send(r))));
        rx.recv().map_err(|_| StoreError::Closed)??;
        Ok(seq)
    }

    /// Every subscription the store holds anything for, with what it holds.
    ///
    /// # Errors
    ///
    /// Storage errors.
    pub fn holdings(&self) -> Result<BTreeMap<String, Holdings>, StoreError> {
        let read = self.shared.begin_read()?;
        let cursors = read.open_table(CURSORS).map_err(storage)?;
        let parked = read.open_table(PARKED).map_err(storage)?;
        let dlq = read.open_table(DLQ).map_err(storage)?;
        let idempotency = read.open_table(IDEMPOTENCY).map_err(storage)?;
        let versions = read.open_table(VERSIONS).map_err(storage)?;
        let timer_counts = read.open_table(TIMER_COUNTS).map_err(storage)?;
        let mut out: BTreeMap<String, Holdings> = BTreeMap::new();
        for entry in cursors.iter().map_err(storage)? {
            let (k, v) = entry.map_err(storage)?;
            out.entry(k.value().to_owned()).or_default().cursor = Some(v.value());
        }
        let mut names: Vec<String> = Vec::new();
        names.extend(distinct(&parked).map_err(storage)?);
        names.extend(distinct(&dlq).map_err(storage)?);
        names.extend(distinct(&versions).map_err(storage)?);
        // Timers count as holdings: an orphan with only timers left must be
        // listed, and deletable, or they would fire for ever after.
        for entry in timer_counts.iter().map_err(storage)? {
            let (k, v) = entry.map_err(storage)?;
            out.entry(k.value().to_owned()).or_default().timers = v.value();
        }
        let mut from = String::new();
        loop {
            let next =
                idempotency.range((from.as_str(), "")..).map_err(storage)?.next().transpose().map_err(storage)?;
            let Some((k, _)) = next else { break };
            let name = k.value().0.to_owned();
            from = format!("{name}\0");
            names.push(name);
        }
        for name in names {
            out.entry(name).or_default();
        }
        for (name, h) in &mut out {
            let n = name.as_str();
            h.parked = parked.range((n, 0)..=(n, u64::MAX)).map_err(storage)?.count() as u64;
            h.dlq = dlq.range((n, 0)..=(n, u64::MAX)).map_err(storage)?.count() as u64;
            h.versions = versions.range((n, 0)..=(n, u64::MAX)).map_err(storage)?.count() as u64;
            let mut count = 0;
            for entry in idempotency.range((n, "")..).map_err(storage)? {
                let (k, _) = entry.map_err(storage)?;
                if k.value().0 != n {
                    break;
                }
                if count == HOLDINGS_COUNT_CAP {
                    h.idempotency_capped = true;
                    break;
                }
                count += 1;
            }
            h.idempotency = count;
        }
        Ok(out)
    }

    /// Delete everything the store holds for `subscription` (cursor, parked
    /// entries, DLQ, idempotency records, counters, state, pending timers,
    /// deploy history and active version), in commands of at most [`DELETE_BATCH`] entries.
    /// The caller makes sure nothing runs it.
    ///
    /// # Errors
    ///
    /// The commit's error (what was deleted before stays deleted).
    pub fn delete_subscription_blocking(&self, subscription: &str) -> Result<(), StoreError> {
        loop {
            let name = subscription.to_owned();
            let done = self.ask(|reply| Command::DeleteSubscription(Order::new(DeleteSubscription { name }, reply)))?;
            if done {
                return Ok(());
            }
        }
    }
}

/// A table of (subscription, seq) keys: its subscription names.
pub(super) fn names_in<T>(table: &T) -> Result<Vec<String>, Fatal>
where
    T: ReadableTable<(&'static str, u64), &'static [u8]>,
{
    Ok(distinct(table)?)
}

#[cfg(test)]
mod tests {
    use redb::ReadableTableMetadata as _;

    use super::*;
    use crate::store::ParkedEntry;
    use crate::store::codec::encode;
    use crate::store::testing::{dlq_entry, record, temp_store, write_at};
    use crate::store::timer::{TIMER_DUE, TIMERS};

    const GONE: &str = "orders/old";
    const KEPT: &str = "orders/kept";

    #[test]
    fn deleting_a_subscription_removes_all_its_data_in_bounded_commands_and_nothing_else() {
        let (_dir, store) = temp_store();
        let records = DELETE_BATCH as u64 + 500;
        write_at(&store, 0, |w| {
            for sub in [GONE, KEPT] {
                w.cursors.insert(sub, 7)?;
                w.parked.insert((sub, 3), encode(&ParkedEntry::waiting(3, None)).map_err(Fatal)?.as_slice())?;
                w.dlq.insert((sub, 2), encode(&dlq_entry(sub, 2)).map_err(Fatal)?.as_slice())?;
                w.stats.insert((sub, "handled"), 5)?;
                w.txn.open_table(TIMERS)?.insert((sub, "t"), (5, &[][..]))?;
                w.txn.open_table(TIMER_DUE)?.insert((5, sub, "t"), ())?;
                w.txn.open_table(TIMER_COUNTS)?.insert(sub, 1)?;
            }
            for i in 0..records {
                let key = format!("k{i}");
                w.idempotency.insert((GONE, key.as_str()), encode(&record(i, u64::MAX)).map_err(Fatal)?.as_slice())?;
            }
            w.idempotency.insert((KEPT, "k"), encode(&record(0, u64::MAX)).map_err(Fatal)?.as_slice())?;
            Ok(())
        });
        let listed = store.holdings().unwrap();
        assert_eq!(listed.keys().collect::<Vec<_>>(), [KEPT, GONE]);
        assert_eq!(listed[GONE].idempotency, records);
        assert_eq!(
            (listed[GONE].cursor, listed[GONE].parked, listed[GONE].dlq, listed[GONE].timers),
            (Some(7), 1, 1, 1)
        );

        // One command does at most DELETE_BATCH entries: the first is not done.
        let first = store
            .ask(|reply| Command::DeleteSubscription(Order::new(DeleteSubscription { name: GONE.into() }, reply)))
            .unwrap();
        assert!(!first);
        store.delete_subscription_blocking(GONE).unwrap();

        let listed = store.holdings().unwrap();
        assert_eq!(listed.keys().collect::<Vec<_>>(), [KEPT]);
        assert_eq!(
            listed[KEPT],
            Holdings {
                cursor: Some(7),
                parked: 1,
                dlq: 1,
                idempotency: 1,
                idempotency_capped: false,
                versions: 0,
                timers: 1
            }
        );
        assert_eq!(store.stats(GONE).unwrap().handled, 0);
        assert_eq!(store.stats(KEPT).unwrap().handled, 5);
        let read = store.shared.begin_read().unwrap();
        assert_eq!(read.open_table(IDEMPOTENCY).unwrap().len().unwrap(), 1);
        // Its timers went, with their due entries and count: none fires.
        assert_eq!(store.timer_counts().unwrap().into_iter().collect::<Vec<_>>(), [(KEPT.to_owned(), 1)]);
        assert_eq!(read.open_table(TIMERS).unwrap().len().unwrap(), 1);
        assert_eq!(read.open_table(TIMER_DUE).unwrap().len().unwrap(), 1);
    }

    #[test]
    fn an_orphan_holding_only_timers_is_listed_and_deleted() {
        let (_dir, store) = temp_store();
        write_at(&store, 0, |w| {
            w.txn.open_table(TIMERS)?.insert((GONE, "t"), (5, &[][..]))?;
            w.txn.open_table(TIMER_DUE)?.insert((5, GONE, "t"), ())?;
            w.txn.open_table(TIMER_COUNTS)?.insert(GONE, 1)?;
            Ok(())
        });
        assert_eq!(store.holdings().unwrap()[GONE], Holdings { timers: 1, ..Holdings::default() });
        store.delete_subscription_blocking(GONE).unwrap();
        assert!(store.holdings().unwrap().is_empty());
        assert_eq!(store.next_timer_due().unwrap(), None);
        assert_eq!(store.fire_timers_blocking().unwrap(), 0);
    }

    #[test]
    fn a_first_cursor_is_set_once() {
        let (_dir, store) = temp_store();
        assert_eq!(store.committed_cursor("a/b").unwrap(), None);
        assert_eq!(store.start_cursor_blocking("a/b", 42).unwrap(), 42);
        assert_eq!(store.start_cursor_blocking("a/b", 7).unwrap(), 42);
        assert_eq!(store.cursor("a/b").unwrap(), 42);
    }
}
