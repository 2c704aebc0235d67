//! Derived idempotency records (docs/guarantees.md, promise 3).
//!
//! A published event whose idempotency key the ingest index claimed for it
//! (the index maps the key to this event's seq and has not expired) is the
//! only event with that key the log can gain from a producer while the
//! claim lives: a second publish is answered as a duplicate and stores
//! nothing. So a subscription that handles such an event need not write an
//! idempotency record for it: "this subscription handled the key" is
//! derived from the claim and from the subscription's own tables. That
//! saves one B-tree insert per event and subscription, the largest single
//! cost of the fan-out (docs/benchmarks.md).
//!
//! The claim cannot stand for everything a record does, so:
//!
//! - an event that does not hold its key's live claim (an emitted event, an
//!   event read after its claim expired) is recorded as before;
//! - another event with a claimed key (a plugin emitting a producer's key)
//!   is a duplicate for a subscription when the claim's event was handled
//!   by it: its committed cursor is past that seq, it derived records from
//!   at or before that seq (`derived_since`, lowered with each commit that
//!   derives one), the
//!   event is neither parked nor dead-lettered there, and its topic is one
//!   the subscription reads. An event dead-lettered and then purged counts
//!   as handled, as an operator's purge means "done with it"; one removed
//!   from the log by retention while its claim lives also counts as handled
//!   (retention only removes what every reader has passed);
//! - a derived record lives as long as the claim, whose window starts at
//!   ingest rather than when the subscription handled the event: the same
//!   `idempotency.retention`, measured from an earlier moment.
//!
//! The table was added without a store format change (as the timer tables
//! were): a store without it gets it when opened. An older Weir reading a
//! store with derived records misses them only where a later event reuses
//! a claimed key, and would handle that event.

use redb::{ReadOnlyTable, ReadTransaction, ReadableTable, TableDefinition};
use weir_abi::Event;

use super::codec::{self, decode};
use super::command::Fatal;
use super::ingest::{INGEST, IngestEntry};
use super::log::LOG;
use super::subscription::{CURSORS, DLQ, IDEMPOTENCY, PARKED};
use super::writer::Writes;
use super::{IdempotencyRecord, Store, StoreError, now_ms, storage};

/// subscription → the least seq it handled with a derived record. Every
/// event of its topics from there on that it has passed and holds neither
/// parked nor dead-lettered was handled (or skipped as a duplicate, which
/// a record or a claim also says).
pub(super) const DERIVED_SINCE: TableDefinition<'_, &str, u64> = TableDefinition::new("derived_since");

/// What a subscription's dedupe knows of one event before handling it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Seen {
    /// A live record names its key: a duplicate if the record names another
    /// event, and in any case not to be handled again.
    Recorded(IdempotencyRecord),
    /// No record, but its key's live claim belongs to the earlier event at
    /// this seq, which the subscription handled: a duplicate.
    Derived(u64),
    /// The event holds its key's live claim: handle it, and its record is
    /// derived rather than written.
    Claimed,
    /// Neither: handle it and write its record.
    Free,
}

impl Seen {
    /// Whether the event must not be handled again.
    pub(crate) fn is_duplicate(&self) -> bool {
        matches!(self, Self::Recorded(_) | Self::Derived(_))
    }
}

/// One read transaction's view of a subscription's records, claims and
/// holdings, for many lookups.
pub(super) struct Lookup<'a> {
    read: &'a ReadTransaction,
    subscription: &'a str,
    /// Opened once: opening a table names its types, which allocates.
    ingest: ReadOnlyTable<&'static str, IngestEntry>,
    /// The subscription's `derived_since` and committed cursor, read at
    /// the first need.
    since: Option<(Option<u64>, u64)>,
    now: u64,
}

impl<'a> Lookup<'a> {
    pub(super) fn new(read: &'a ReadTransaction, subscription: &'a str) -> Result<Self, StoreError> {
        let ingest = read.open_table(INGEST).map_err(storage)?;
        Ok(Self { read, subscription, ingest, since: None, now: now_ms() })
    }

    /// The live claim of `key`: the seq of the event holding it.
    pub(super) fn claim(&self, key: &str) -> Result<Option<(u64, [u8; 16])>, StoreError> {
        Ok(self
            .ingest
            .get(key)
            .map_err(storage)?
            .map(|v| v.value())
            .and_then(|(id, seq, expires)| (expires > self.now).then_some((seq, id))))
    }

    /// What the dedupe knows of the event at `seq` (its key `key`, its id
    /// `id`), given the record lookup's answer `record`.
    pub(super) fn seen(
        &mut self,
        seq: u64,
        key: &str,
        id: [u8; 16],
        record: Option<IdempotencyRecord>,
        reads: &dyn Fn(&str) -> bool,
    ) -> Result<Seen, StoreError> {
        if let Some(record) = record {
            return Ok(Seen::Recorded(record));
        }
        Ok(match self.claim(key)? {
            Some((holder, holder_id)) if holder == seq && holder_id == id => Seen::Claimed,
            Some((holder, _)) if holder < seq && self.handled(holder, reads)? => Seen::Derived(holder),
            _ => Seen::Free,
        })
    }

    /// Whether the subscription handled the event at `seq`, which holds
    /// its key's live claim and has no record (see the module's notes).
    pub(super) fn handled(&mut self, seq: u64, reads: &dyn Fn(&str) -> bool) -> Result<bool, StoreError> {
        let (since, cursor) = match self.since {
            Some(known) => known,
            None => {
                let table = self.read.open_table(DERIVED_SINCE).map_err(storage)?;
                let since = table.get(self.subscription).map_err(storage)?.map(|v| v.value());
                let cursors = self.read.open_table(CURSORS).map_err(storage)?;
                let cursor = cursors.get(self.subscription).map_err(storage)?.map_or(0, |v| v.value());
                *self.since.insert((since, cursor))
            }
        };
        // Not reached yet (a worker's own uncommitted outcomes are in its
        // stage, which it asks first), or before it derived records.
        if seq >= cursor || since.is_none_or(|since| seq < since) {
            return Ok(false);
        }
        for table in [PARKED, DLQ] {
            let table = self.read.open_table(table).map_err(storage)?;
            if table.get((self.subscription, seq)).map_err(storage)?.is_some() {
                return Ok(false);
            }
        }
        let log = self.read.open_table(LOG).map_err(storage)?;
        let Some(record) = log.get(seq).map_err(storage)? else {
            // Removed by retention, so every reader had passed it.
            return Ok(true);
        };
        let what = || format!("log seq {seq}");
        let body = codec::verify(record.value(), what)?;
        Ok(reads(codec::event_topic(body, what)?))
    }
}

impl Store {
    /// What `subscription`'s dedupe knows of each of `events` (seq, event):
    /// one read transaction for all. `reads` tells the topics the
    /// subscription reads.
    ///
    /// # Errors
    ///
    /// Storage or decoding errors.
    pub(crate) fn seen(
        &self,
        subscription: &str,
        events: &[(u64, &Event)],
        reads: &dyn Fn(&str) -> bool,
    ) -> Result<Vec<Seen>, StoreError> {
        let read = self.shared.begin_read()?;
        seen_in(&read, subscription, events.iter().copied(), reads)
    }

    /// Up to `limit` log entries from `from`, as [`Store::read_log_each`]
    /// reads them, and what `subscription`'s dedupe knows of each decoded
    /// one (`None` for the others): one read transaction for both, as a
    /// worker reads a batch.
    ///
    /// # Errors
    ///
    /// Storage or decoding errors (a record that does not decode is an
    /// entry's error, not this one).
    pub(crate) fn read_batch(
        &self,
        subscription: &str,
        from: u64,
        limit: usize,
        max_bytes: usize,
        wanted: &dyn Fn(&str) -> bool,
    ) -> Result<(Vec<super::log::LogEntry>, Vec<Option<Seen>>), StoreError> {
        let read = self.shared.begin_read()?;
        let entries = super::log::read_log_each_in(&read, from, limit, max_bytes, wanted)?;
        let decoded = entries.iter().filter_map(|(seq, e)| match e {
            Ok(Some(event)) => Some((*seq, event)),
            _ => None,
        });
        let mut seen = seen_in(&read, subscription, decoded, wanted)?.into_iter();
        let seen = entries.iter().map(|(_, e)| matches!(e, Ok(Some(_))).then(|| seen.next()).flatten()).collect();
        Ok((entries, seen))
    }

    /// What `subscription` did with the event at `seq`, as far as its
    /// records tell: `Recorded`, `Derived(seq)` when it handled it with a
    /// derived record, `Derived(other)` when it skipped it as a duplicate of
    /// a claim's event, `Free` when neither is known (not reached, held, or
    /// the record expired). Never `Claimed`. `reads` tells the topics the
    /// subscription reads.
    ///
    /// # Errors
    ///
    /// Storage or decoding errors.
    pub(crate) fn outcome(
        &self,
        subscription: &str,
        seq: u64,
        event: &Event,
        reads: &dyn Fn(&str) -> bool,
    ) -> Result<Seen, StoreError> {
        let seen = self.seen(subscription, &[(seq, event)], reads)?.pop().unwrap_or(Seen::Free);
        if seen != Seen::Claimed {
            return Ok(seen);
        }
        let read = self.shared.begin_read()?;
        let mut lookup = Lookup::new(&read, subscription)?;
        Ok(if lookup.handled(seq, reads)? { Seen::Derived(seq) } else { Seen::Free })
    }
}

/// [`Store::seen`] within `read`.
fn seen_in<'e>(
    read: &ReadTransaction,
    subscription: &str,
    events: impl Iterator<Item = (u64, &'e Event)>,
    reads: &dyn Fn(&str) -> bool,
) -> Result<Vec<Seen>, StoreError> {
    let records = read.open_table(IDEMPOTENCY).map_err(storage)?;
    let mut lookup = Lookup::new(read, subscription)?;
    let now = lookup.now;
    events
        .map(|(seq, event)| {
            let key = event.idempotency_key.as_str();
            let record = match records.get((subscription, key)).map_err(storage)? {
                Some(v) => {
                    let record: IdempotencyRecord =
                        decode(v.value(), || format!("idempotency record {subscription} key {key:?}"))?;
                    (record.expires_at_ms > now).then_some(record)
                }
                None => None,
            };
            lookup.seen(seq, key, event.id.0, record, reads)
        })
        .collect()
}

/// Lower `subscription`'s `derived_since` to `seq` (the least seq a commit
/// derives a record for), in the commit's transaction.
pub(super) fn note(w: &Writes<'_>, subscription: &str, seq: u64) -> Result<(), Fatal> {
    let mut table = w.txn.open_table(DERIVED_SINCE)?;
    let current = table.get(subscription)?.map(|v| v.value());
    if current.is_none_or(|current| seq < current) {
        table.insert(subscription, seq)?;
    }
    Ok(())
}

/// Forget `subscription`'s `derived_since` (the subscription is deleted).
pub(super) fn forget(w: &Writes<'_>, subscription: &str) -> Result<(), Fatal> {
    w.txn.open_table(DERIVED_SINCE)?.remove(subscription)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use weir_abi::EventId;

    use super::super::testing::{answer, dlq_entry, event, record, temp_store};
    use super::super::{ResultItem, Store};
    use super::Seen;

    const SUB: &str = "orders/audit";

    fn handled(seq: u64, key: &str, derived: bool, emits: Vec<weir_abi::Event>) -> ResultItem {
        ResultItem::Handled {
            seq,
            key: key.into(),
            record: record(seq, u64::MAX),
            derived,
            emits,
            parked: false,
            state: Vec::new(),
            timers: Vec::new(),
        }
    }

    fn submit(store: &Store, sub: &str, items: Vec<ResultItem>, cursor: Option<u64>) {
        let (reply, rx) = answer();
        store.submit(sub.into(), items, cursor, reply);
        rx.recv_timeout(Duration::from_secs(10)).unwrap().unwrap();
    }

    /// An event with key `key` the ingest index did not claim (as a
    /// plugin's emit is): another id than the published one.
    fn emitted(key: &str) -> weir_abi::Event {
        weir_abi::Event { id: EventId([0xee; 16]), ..event(key) }
    }

    fn seen(store: &Store, sub: &str, seq: u64, e: &weir_abi::Event) -> Seen {
        store.seen(sub, &[(seq, e)], &|_| true).unwrap().pop().unwrap()
    }

    #[test]
    fn a_claimed_event_is_recorded_by_its_claim_and_a_later_event_with_its_key_is_a_duplicate() {
        let (_dir, store) = temp_store();
        let published = store.publish_blocking(vec![event("a"), event("b")]).unwrap();
        assert_eq!(published.iter().map(|p| p.seq).collect::<Vec<_>>(), [0, 1]);
        let (a, b) = (event("a"), event("b"));
        assert_eq!(store.seen(SUB, &[(0, &a), (1, &b)], &|_| true).unwrap(), [Seen::Claimed, Seen::Claimed]);

        submit(&store, SUB, vec![handled(0, "a", true, Vec::new()), handled(1, "b", true, Vec::new())], Some(2));
        // Nothing written for either: the claims stand for the records.
        assert_eq!(store.idempotency(SUB, &["a", "b"]).unwrap(), [None, None]);
        assert_eq!(store.outcome(SUB, 0, &a, &|_| true).unwrap(), Seen::Derived(0));

        // A plugin of another subscription emits an event with key `a`: it
        // is in the log (emits skip the ingest index) at seq 2.
        submit(&store, "orders/emitter", vec![handled(0, "a", false, vec![emitted("a")])], Some(1));
        let again = store.event(2).unwrap().unwrap();
        assert_eq!(again.idempotency_key, "a");
        // A duplicate for the subscription that handled the claim's event…
        assert_eq!(seen(&store, SUB, 2, &again), Seen::Derived(0));
        assert_eq!(store.outcome(SUB, 2, &again, &|_| true).unwrap(), Seen::Derived(0));
        // …not for one that never derived a record,
        assert_eq!(seen(&store, "orders/other", 2, &again), Seen::Free);
        // nor for one that does not read the claim's event's topic.
        assert_eq!(store.seen(SUB, &[(2, &again)], &|topic| topic != "orders.order.created").unwrap(), [Seen::Free]);
        // A written record still answers first.
        submit(&store, SUB, vec![handled(2, "c", false, Vec::new())], Some(3));
        assert!(matches!(seen(&store, SUB, 2, &event("c")), Seen::Recorded(r) if r.seq == 2));
        // An event the subscription has not reached is not handled, though
        // it is past where derived records began.
        let z = store.publish_blocking(vec![event("z")]).unwrap()[0].seq;
        assert_eq!(store.outcome(SUB, z, &event("z"), &|_| true).unwrap(), Seen::Free);
        submit(&store, SUB, vec![handled(z, "z", true, Vec::new())], Some(z + 1));
        assert_eq!(store.outcome(SUB, z, &event("z"), &|_| true).unwrap(), Seen::Derived(z));
    }

    #[test]
    fn a_claims_event_parked_or_dead_lettered_or_before_the_first_derived_record_was_not_handled() {
        let (_dir, store) = temp_store();
        store.publish_blocking((0..4).map(|i| event(&format!("k{i}"))).collect()).unwrap();
        // The subscription starts at seq 1 (a start position): k0 it never
        // saw; k1 is dead-lettered, k2 handled (derived), k3 handled later
        // (derived).
        submit(
            &store,
            SUB,
            vec![ResultItem::DeadLetter(Box::new(dlq_entry(SUB, 1))), handled(2, "k2", true, Vec::new())],
            Some(3),
        );
        submit(&store, SUB, vec![handled(3, "k3", true, Vec::new())], Some(4));
        submit(
            &store,
            "orders/emitter",
            (0..4).map(|i| handled(i, &format!("x{i}"), false, vec![emitted(&format!("k{i}"))])).collect(),
            Some(4),
        );
        let later: Vec<weir_abi::Event> = (4..8).map(|seq| store.event(seq).unwrap().unwrap()).collect();
        let asks: Vec<(u64, &weir_abi::Event)> = (4..8).zip(&later).collect();
        let answers = store.seen(SUB, &asks, &|_| true).unwrap();
        assert_eq!(answers, [Seen::Free, Seen::Free, Seen::Derived(2), Seen::Derived(3)]);

        // A parked event handled late lowers where derived records begin.
        let (_dir, store) = temp_store();
        store.publish_blocking((0..2).map(|i| event(&format!("k{i}"))).collect()).unwrap();
        submit(
            &store,
            SUB,
            vec![ResultItem::Park(super::super::ParkedEntry::waiting(0, None)), handled(1, "k1", true, Vec::new())],
            Some(2),
        );
        submit(&store, "orders/emitter", vec![handled(0, "x", false, vec![emitted("k0")])], Some(2));
        let late = store.event(2).unwrap().unwrap();
        assert_eq!(seen(&store, SUB, 2, &late), Seen::Free, "k0 is parked: not handled");
        let mut retried = handled(0, "k0", true, Vec::new());
        if let ResultItem::Handled { parked, .. } = &mut retried {
            *parked = true;
        }
        submit(&store, SUB, vec![retried], None);
        assert_eq!(seen(&store, SUB, 2, &late), Seen::Derived(0));

        // Deleting the subscription forgets it.
        store.delete_subscription_blocking(SUB).unwrap();
        assert_eq!(seen(&store, SUB, 2, &late), Seen::Free);
    }
}
