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
//! - an event that does not hold its key's live claim (an emit with a key
//!   the plugin chose, an event read after its claim expired) is recorded
//!   as before;
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
//! An emit whose key the host derived (`<input key>/<subscription>#<i>`)
//! has a claim of its own: the emitting subscription cannot handle its
//! input again while its record of the input lives (written or derived),
//! so no other emit with that key can enter the log before that record's
//! window ends. The host writes that end into the emit's
//! `weir-key-window` header, which plugins and producers cannot set, and a
//! subscription reading the emit before then derives its record from it,
//! exactly as from an ingest claim. The other way round, an event that is
//! not such an emit but has a key of that form (a producer's, a plugin's
//! explicit one) is looked up through the emitter's input and what it
//! caused ([`Lookup::host_keyed`], bounded), so it is still a duplicate
//! where the emit was handled. A subscription deleted and created again
//! handles its inputs again, so its emits from then on are not taken as
//! unique ([`DELETED`]).
//!
//! The tables were added without a store format change (as the timer
//! tables were): a store without them gets them when opened. An older Weir
//! reading a store with derived records misses them only where a later
//! event reuses a claimed key or a host-keyed emit's key, and would handle
//! that event.

use redb::{ReadOnlyTable, ReadTransaction, ReadableTable, ReadableTableMetadata, TableDefinition};
use weir_abi::Event;

use super::codec::{self, decode};
use super::command::Fatal;
use super::ingest::{INGEST, IngestEntry};
use super::log::{CAUSED, LOG};
use super::subscription::{CURSORS, DLQ, IDEMPOTENCY, PARKED};
use super::writer::Writes;
use super::{IdempotencyRecord, Store, StoreError, now_ms, storage};
use crate::delivery::HOST_KEY_HEADER;

/// subscription → the least seq it handled with a derived record. Every
/// event of its topics from there on that it has passed and holds neither
/// parked nor dead-lettered was handled (or skipped as a duplicate, which
/// a record or a claim also says).
pub(super) const DERIVED_SINCE: TableDefinition<'_, &str, u64> = TableDefinition::new("derived_since");

/// subscription → the log's head when it was first deleted. A subscription
/// created again under a deleted one's name handles its inputs again, so
/// its host-keyed emits from there on repeat keys whose windows may still
/// be open: they are not taken as unique (their records are written, and
/// found the other way, through their inputs).
pub(super) const DELETED: TableDefinition<'_, &str, u64> = TableDefinition::new("deleted_subscriptions");

/// `"until"` → the latest expiry of the ingest claims whose keys have the
/// form of a host-derived key ([`split_host_key`]): producers' keys that
/// look like an emit's, nearly always none. While none of them lives, a
/// host-keyed emit cannot share its key with a claimed event, and its
/// dedupe skips the ingest index (a tree search per chained event). A
/// store that predates the table starts it at the latest expiry of any
/// claim, as any of them may have the form.
pub(super) const HOST_FORM_CLAIMS: TableDefinition<'_, &str, u64> = TableDefinition::new("host_form_claims");
const UNTIL: &str = "until";

/// Start [`HOST_FORM_CLAIMS`] in a store being opened, if it lacks its row.
pub(super) fn init(txn: &redb::WriteTransaction) -> Result<(), StoreError> {
    let mut table = txn.open_table(HOST_FORM_CLAIMS).map_err(storage)?;
    if table.get(UNTIL).map_err(storage)?.is_none() {
        let expiry = txn.open_table(super::ingest::INGEST_EXPIRY).map_err(storage)?;
        let latest = expiry.last().map_err(storage)?.map_or(0, |(k, _)| k.value().0);
        table.insert(UNTIL, latest).map_err(storage)?;
    }
    Ok(())
}

/// Note, in the claiming transaction, that `key` was claimed until `expires`
/// when it has the form of a host-derived key.
pub(super) fn note_claim(w: &Writes<'_>, key: &str, expires: u64) -> Result<(), Fatal> {
    if split_host_key(key).is_none() {
        return Ok(());
    }
    let mut table = w.txn.open_table(HOST_FORM_CLAIMS)?;
    if table.get(UNTIL)?.is_none_or(|until| until.value() < expires) {
        table.insert(UNTIL, expires)?;
    }
    Ok(())
}

/// What a subscription's dedupe knows of one event before handling it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Seen {
    /// A live record names its key: a duplicate if the record names another
    /// event, and in any case not to be handled again.
    Recorded(IdempotencyRecord),
    /// No record, but its key's live claim belongs to the earlier event at
    /// this seq, which the subscription handled: a duplicate.
    Derived(u64),
    /// The event holds its key's live claim, which lasts until this time
    /// (ms since the epoch): handle it, and its record is derived rather
    /// than written, living as long as the claim.
    Claimed(u64),
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
    /// [`DELETED`], opened at the first host-keyed emit; `None` inside
    /// when it is empty (as it nearly always is).
    deleted: Option<Option<ReadOnlyTable<&'static str, u64>>>,
    /// Whether a claim of a key of the host's form may live
    /// ([`HOST_FORM_CLAIMS`]), read at the first host-keyed emit.
    host_form_claims: Option<bool>,
    now: u64,
}

impl<'a> Lookup<'a> {
    pub(super) fn new(read: &'a ReadTransaction, subscription: &'a str) -> Result<Self, StoreError> {
        let ingest = read.open_table(INGEST).map_err(storage)?;
        Ok(Self { read, subscription, ingest, since: None, deleted: None, host_form_claims: None, now: now_ms() })
    }

    /// The live claim of `key`: the seq and id of the event holding it,
    /// and when the claim expires.
    pub(super) fn claim(&self, key: &str) -> Result<Option<(u64, [u8; 16], u64)>, StoreError> {
        Ok(self
            .ingest
            .get(key)
            .map_err(storage)?
            .map(|v| v.value())
            .and_then(|(id, seq, expires)| (expires > self.now).then_some((seq, id, expires))))
    }

    /// What the dedupe knows of the event at `seq` (its key `key`, its id
    /// `id`, and if it is a host-keyed emit the end of its key's window and
    /// its source: [`host_key_window`]), given the record lookup's answer
    /// `record`.
    pub(super) fn seen(
        &mut self,
        seq: u64,
        key: &str,
        id: [u8; 16],
        host_key: Option<(u64, &str)>,
        record: Option<IdempotencyRecord>,
        reads: &dyn Fn(&str) -> bool,
    ) -> Result<Seen, StoreError> {
        if let Some(record) = record {
            return Ok(Seen::Recorded(record));
        }
        let window = match host_key {
            Some((until, source)) if !self.emitted_after_deletion(source, seq)? => Some(until),
            _ => None,
        };
        // A host-keyed emit holds no claim; another event's claim on its
        // key can only be a producer's key of the host's form.
        let claim = if window.is_some() && !self.host_form_claims()? { None } else { self.claim(key)? };
        if let Some((holder, _, _)) = claim
            && holder < seq
            && self.handled(holder, reads)?
        {
            return Ok(Seen::Derived(holder));
        }
        // A key of the host's form on an event that is not a host-keyed
        // emit (a producer's, or a plugin's explicit key): a duplicate if
        // the host-keyed emit with that key was handled here with a derived
        // record. Rare, so its lookups are paid only here.
        if window.is_none() {
            for earlier in self.host_keyed(key, CHASE_DEPTH)? {
                if earlier < seq && self.handled(earlier, reads)? {
                    return Ok(Seen::Derived(earlier));
                }
            }
        }
        Ok(match (claim, window) {
            (Some((holder, holder_id, until)), _) if holder == seq && holder_id == id => Seen::Claimed(until),
            (_, Some(until)) if until > self.now => Seen::Claimed(until),
            _ => Seen::Free,
        })
    }

    /// Whether a claim of a key of the host's form may still live.
    fn host_form_claims(&mut self) -> Result<bool, StoreError> {
        if let Some(known) = self.host_form_claims {
            return Ok(known);
        }
        let table = self.read.open_table(HOST_FORM_CLAIMS).map_err(storage)?;
        // No row: a store this Weir did not open for writing; assume so.
        let live = table.get(UNTIL).map_err(storage)?.is_none_or(|until| until.value() > self.now);
        Ok(*self.host_form_claims.insert(live))
    }

    /// Whether the host-keyed emit at `seq` from `source` was emitted after
    /// its emitting subscription was deleted (and created again): see
    /// [`DELETED`].
    fn emitted_after_deletion(&mut self, source: &str, seq: u64) -> Result<bool, StoreError> {
        if self.deleted.is_none() {
            let table = self.read.open_table(DELETED).map_err(storage)?;
            let empty = table.is_empty().map_err(storage)?;
            self.deleted = Some((!empty).then_some(table));
        }
        let Some(Some(table)) = &self.deleted else {
            return Ok(false);
        };
        let name = source.strip_prefix("weir://").unwrap_or(source);
        Ok(table.get(name).map_err(storage)?.is_some_and(|head| seq >= head.value()))
    }

    /// The seqs (at most [`CHASE_MATCHES`]) of the host-keyed emits with
    /// idempotency key `key` whose windows are still open, found through
    /// the emitter's input (its record, its ingest claim, or, `depth` times
    /// over, the host-keyed emits it was) and what that input caused.
    fn host_keyed(&self, key: &str, depth: usize) -> Result<Vec<u64>, StoreError> {
        let mut found = Vec::new();
        let Some((input_key, emitter)) = split_host_key(key) else {
            return Ok(found);
        };
        let mut inputs: Vec<u128> = Vec::with_capacity(3);
        let records = self.read.open_table(IDEMPOTENCY).map_err(storage)?;
        let log = self.read.open_table(LOG).map_err(storage)?;
        let event_at = |seq: u64| -> Result<Option<Event>, StoreError> {
            let Some(record) = log.get(seq).map_err(storage)? else {
                return Ok(None);
            };
            let what = || format!("log seq {seq}");
            codec::decode_event_body(codec::verify(record.value(), what)?, what).map(Some)
        };
        if let Some(v) = records.get((emitter, input_key)).map_err(storage)? {
            let record: IdempotencyRecord =
                decode(v.value(), || format!("idempotency record {emitter} key {input_key:?}"))?;
            inputs.push(record.event_id.as_u128());
            // An upcast output's record names the output; its emits may
            // have the event as stored, at the record's seq, as cause.
            if let Some(stored) = event_at(record.seq)?
                && stored.id != record.event_id
            {
                inputs.push(stored.id.as_u128());
            }
        }
        if let Some(v) = self.ingest.get(input_key).map_err(storage)? {
            inputs.push(u128::from_be_bytes(v.value().0));
        }
        if depth > 0 {
            for seq in self.host_keyed(input_key, depth - 1)? {
                if let Some(input) = event_at(seq)? {
                    inputs.push(input.id.as_u128());
                }
            }
        }
        inputs.dedup();
        let caused = self.read.open_table(CAUSED).map_err(storage)?;
        let source = format!("weir://{emitter}");
        for input in inputs {
            for entry in caused.range((input, 0)..=(input, u64::MAX)).map_err(storage)?.take(CHASE_CAUSED) {
                let seq = entry.map_err(storage)?.0.value().1;
                if let Some(event) = event_at(seq)?
                    && event.idempotency_key == key
                    && event.source == source
                    && host_key_window(&event).is_some_and(|until| until > self.now)
                {
                    found.push(seq);
                    if found.len() == CHASE_MATCHES {
                        return Ok(found);
                    }
                }
            }
        }
        Ok(found)
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
        if !matches!(seen, Seen::Claimed(_)) {
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
            let host_key = host_key_window(event).map(|until| (until, event.source.as_str()));
            lookup.seen(seq, key, event.id.0, host_key, record, reads)
        })
        .collect()
}

/// How many host keys deep [`Lookup::host_keyed`] follows a key of the
/// host's form whose input key is of that form too (a chain of pipelines):
/// past it, a forged key is not recognised (docs/guarantees.md).
const CHASE_DEPTH: usize = 8;

/// Most events [`Lookup::host_keyed`] reads of what one input caused: a
/// fan-out's emits of one input are few; a forged key costs no more.
const CHASE_CAUSED: usize = 256;

/// Most host-keyed emits with one key [`Lookup::host_keyed`] answers.
const CHASE_MATCHES: usize = 8;

/// The end of the window of a host-keyed emit (ms since the epoch): the
/// value of its [`HOST_KEY_HEADER`], which only the host sets, on an emit
/// whose idempotency key the host derived.
pub(crate) fn host_key_window(event: &Event) -> Option<u64> {
    event.headers.iter().find(|h| h.name == HOST_KEY_HEADER).and_then(|h| h.value.parse().ok())
}

/// `<input key>/<pipeline>/<handler>#<index>`, the form of a key the host
/// derives for an emit, as (input key, emitting subscription).
fn split_host_key(key: &str) -> Option<(&str, &str)> {
    let (head, index) = key.rsplit_once('#')?;
    if index.is_empty() || !index.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let (rest, _handler) = head.rsplit_once('/')?;
    let (input, _pipeline) = rest.rsplit_once('/')?;
    Some((input, &head[input.len() + 1..]))
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

/// Forget `subscription`'s `derived_since`, and mark where it was first
/// deleted (the subscription is deleted: see [`DELETED`]).
pub(super) fn forget(w: &Writes<'_>, subscription: &str) -> Result<(), Fatal> {
    w.txn.open_table(DERIVED_SINCE)?.remove(subscription)?;
    let mut deleted = w.txn.open_table(DELETED)?;
    if deleted.get(subscription)?.is_none() {
        deleted.insert(subscription, w.head)?;
    }
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
            emits: emits.iter().map(crate::store::EmitRecord::new).collect(),
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
        let seen_ab = store.seen(SUB, &[(0, &a), (1, &b)], &|_| true).unwrap();
        assert!(matches!(seen_ab[..], [Seen::Claimed(_), Seen::Claimed(_)]), "{seen_ab:?}");

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

    /// A window that does not end during a test.
    const FAR: u64 = u64::MAX / 2;

    /// A store holding one published event, `a`, at seq 0.
    fn store_with_a() -> (tempfile::TempDir, Store, weir_abi::Event) {
        let (dir, store) = temp_store();
        let a = event("a");
        store.publish_blocking(vec![a.clone()]).unwrap();
        (dir, store, a)
    }

    /// A host-keyed emit of `input` by `emitter`: the host's key, the
    /// input as its cause, and its window's end in the host's header.
    fn host_keyed(input: &weir_abi::Event, emitter: &str, id: u8, window: u64) -> weir_abi::Event {
        weir_abi::Event {
            id: EventId([id; 16]),
            source: format!("weir://{emitter}"),
            idempotency_key: format!("{}/{emitter}#0", input.idempotency_key),
            causation_id: Some(input.id),
            headers: vec![weir_abi::Header::new(super::HOST_KEY_HEADER, window.to_string())],
            ..event("emitted")
        }
    }

    #[test]
    fn a_host_keyed_emit_is_recorded_by_its_window_and_an_event_forging_its_key_is_a_duplicate() {
        let (_dir, store, a) = store_with_a();
        // The emitter handles `a` (its record derived from a's claim) and
        // emits with the host's key: seq 1.
        let e = host_keyed(&a, "orders/emitter", 0xe1, FAR);
        submit(&store, "orders/emitter", vec![handled(0, "a", true, vec![e.clone()])], Some(1));
        let e = store.event(1).unwrap().unwrap();
        assert_eq!(e.idempotency_key, "a/orders/emitter#0");
        assert_eq!(seen(&store, SUB, 1, &e), Seen::Claimed(FAR), "the window stands for the claim");
        submit(&store, SUB, vec![handled(1, &e.idempotency_key, true, Vec::new())], Some(2));
        assert_eq!(store.idempotency(SUB, &[e.idempotency_key.as_str()]).unwrap(), [None], "no record written");
        assert_eq!(store.outcome(SUB, 1, &e, &|_| true).unwrap(), Seen::Derived(1));

        // A producer publishes an event with the same key (it holds the
        // ingest claim of it): a duplicate where the emit was handled,
        // found through the emitter's input; not elsewhere.
        let forged = weir_abi::Event { id: EventId([0xf0; 16]), ..event("a/orders/emitter#0") };
        assert_eq!(store.publish_blocking(vec![forged.clone()]).unwrap()[0].seq, 2);
        assert_eq!(seen(&store, SUB, 2, &forged), Seen::Derived(1));
        assert!(matches!(seen(&store, "orders/other", 2, &forged), Seen::Claimed(_)));

        // A second stage: `orders/second` handles the emit (derived too)
        // and emits with the host's key; a plugin then emits that key
        // explicitly (no header): found two host keys deep, through the
        // first emit, whose key the forged event above also claimed.
        let e2 = host_keyed(&e, "orders/second", 0xe2, FAR);
        submit(&store, "orders/second", vec![handled(1, &e.idempotency_key, true, vec![e2])], Some(2));
        let e2 = store.event(3).unwrap().unwrap();
        submit(&store, SUB, vec![handled(3, &e2.idempotency_key, true, Vec::new())], Some(4));
        let explicit = weir_abi::Event { id: EventId([0xf1; 16]), ..e2.clone() };
        let explicit = weir_abi::Event { headers: Vec::new(), ..explicit };
        submit(&store, "orders/forger", vec![handled(0, "x", false, vec![explicit])], Some(1));
        let explicit = store.event(4).unwrap().unwrap();
        assert_eq!(explicit.idempotency_key, e2.idempotency_key);
        assert_eq!(seen(&store, SUB, 4, &explicit), Seen::Derived(3));
        assert_eq!(seen(&store, "orders/other", 4, &explicit), Seen::Free);

        // A host-keyed emit whose window has ended is recorded as before,
        // and is no longer found for an event forging its key.
        let late = host_keyed(&event("b"), "orders/emitter", 0xe3, 1);
        submit(&store, "orders/emitter", vec![handled(0, "b", false, vec![late])], Some(1));
        let late = store.event(5).unwrap().unwrap();
        assert_eq!(seen(&store, SUB, 5, &late), Seen::Free);

        // The emitter is deleted and created again: it handles `a` again
        // and emits the same key while the first emit's window is open.
        // That emit is not taken as unique: found the other way, it is a
        // duplicate where the first was handled, and recorded elsewhere.
        store.delete_subscription_blocking("orders/emitter").unwrap();
        let again = host_keyed(&a, "orders/emitter", 0xe4, FAR);
        submit(&store, "orders/emitter", vec![handled(0, "a", false, vec![again])], Some(1));
        let again = store.event(6).unwrap().unwrap();
        assert_eq!(again.idempotency_key, e.idempotency_key);
        // (Through the forged event's claim, which it passed as handled, or
        // the first emit.)
        assert!(matches!(seen(&store, SUB, 6, &again), Seen::Derived(1 | 2)));
        assert_eq!(seen(&store, "orders/other", 6, &again), Seen::Free);
        // Its emits from before the deletion still are.
        assert_eq!(seen(&store, "orders/other", 1, &e), Seen::Claimed(FAR));
    }

    /// The latest expiry of host-form producer claims, as stored.
    fn host_form_until(store: &Store) -> Option<u64> {
        let read = store.shared.begin_read().unwrap();
        let table = read.open_table(super::HOST_FORM_CLAIMS).unwrap();
        table.get(super::UNTIL).unwrap().map(|v| v.value())
    }

    /// A host-keyed emit skips the ingest index while no producer's key of
    /// the host's form is claimed, and looks there again once one is: a
    /// producer that published the emit's key first still makes the emit a
    /// duplicate where it handled its own event. A store opened without
    /// the table assumes any claim may have the form.
    #[test]
    fn a_producers_claim_of_a_host_key_is_still_found_before_the_emit() {
        let (_dir, store, a) = store_with_a();
        assert_eq!(host_form_until(&store), Some(0), "only ordinary keys claimed");
        let e = host_keyed(&a, "orders/emitter", 0xe1, FAR);
        assert_eq!(seen(&store, SUB, 5, &e), Seen::Claimed(FAR));

        // A producer publishes the key the emit will have (seq 1), and SUB
        // handles it, its record derived from the claim.
        let forged = weir_abi::Event { id: EventId([0xf0; 16]), ..event("a/orders/emitter#0") };
        assert_eq!(store.publish_blocking(vec![forged.clone()]).unwrap()[0].seq, 1);
        let until = host_form_until(&store).unwrap();
        assert!(until > super::now_ms(), "the claim's expiry is noted");
        assert!(matches!(seen(&store, SUB, 1, &forged), Seen::Claimed(u) if u == until));
        submit(&store, SUB, vec![handled(1, &forged.idempotency_key, true, Vec::new())], Some(2));

        // The emitter handles `a` and emits that key (seq 2): a duplicate
        // for SUB, through the producer's claim.
        submit(&store, "orders/emitter", vec![handled(0, "a", true, vec![e])], Some(1));
        let e = store.event(2).unwrap().unwrap();
        assert_eq!(e.idempotency_key, forged.idempotency_key);
        assert_eq!(seen(&store, SUB, 2, &e), Seen::Derived(1));
        assert_eq!(seen(&store, "orders/other", 2, &e), Seen::Claimed(FAR));

        // A store of an older Weir has no row: opened, it starts at the
        // latest expiry of any claim.
        let latest = {
            let read = store.shared.begin_read().unwrap();
            let expiry = read.open_table(super::super::ingest::INGEST_EXPIRY).unwrap();
            redb::ReadableTable::last(&expiry).unwrap().unwrap().0.value().0
        };
        let db = store.shared.database().unwrap();
        let txn = db.begin_write().unwrap();
        txn.open_table(super::HOST_FORM_CLAIMS).unwrap().remove(super::UNTIL).unwrap();
        super::init(&txn).unwrap();
        txn.commit().unwrap();
        drop(db);
        assert_eq!(host_form_until(&store), Some(latest));
    }

    /// A key of the host's form is followed at most `CHASE_DEPTH` host keys
    /// deep: what a forged, deeply nested key can make a lookup read is
    /// bounded (docs/security.md), and past the bound it is not recognised.
    #[test]
    fn a_forged_host_key_is_followed_only_so_deep() {
        let (_dir, store, mut input) = store_with_a();
        // A chain of ten stages of one emitter, each emit handled by SUB.
        for seq in 1..=10u64 {
            let emit = host_keyed(&input, "p/h", seq as u8, FAR);
            submit(&store, "p/h", vec![handled(seq - 1, &input.idempotency_key, true, vec![emit])], Some(seq));
            input = store.event(seq).unwrap().unwrap();
            submit(&store, SUB, vec![handled(seq, &input.idempotency_key, true, Vec::new())], Some(seq + 1));
        }
        assert_eq!(input.idempotency_key, format!("a{}", "/p/h#0".repeat(10)));
        let forge = |stage: usize, id: u8| weir_abi::Event {
            id: EventId([id; 16]),
            idempotency_key: format!("a{}", "/p/h#0".repeat(stage)),
            ..event("forged")
        };
        let (nine, ten) = (forge(9, 0xa9), forge(10, 0xaa));
        let published = store.publish_blocking(vec![nine.clone(), ten.clone()]).unwrap();
        let (s9, s10) = (published[0].seq, published[1].seq);
        // Nine deep is within the bound: found, a duplicate.
        assert_eq!(seen(&store, SUB, s9, &nine), Seen::Derived(9));
        // Ten deep is past it: handled as its own event.
        assert!(matches!(seen(&store, SUB, s10, &ten), Seen::Claimed(_)));
        // A key nested a thousand times over costs no more.
        let deep = forge(1000, 0xab);
        let at = store.publish_blocking(vec![deep.clone()]).unwrap()[0].seq;
        assert!(matches!(seen(&store, SUB, at, &deep), Seen::Claimed(_)));
    }

    /// An upcast output's emits are marked too; their emitter's record names
    /// the output (an id not in the log) at the stored event's seq, and an
    /// event forging their key is found through that seq.
    #[test]
    fn an_upcast_outputs_emit_is_found_through_its_records_seq() {
        let (_dir, store, a) = store_with_a();
        // The emitter handled output `a~v2.0` of `a` (its own written
        // record, naming the output's derived id) and emitted with the
        // host's key, caused by the event as stored.
        let out = weir_abi::Event { id: EventId([0x0d; 16]), idempotency_key: "a~v2.0".into(), ..a.clone() };
        let emit = weir_abi::Event { causation_id: Some(a.id), ..host_keyed(&out, "orders/emitter", 0xe1, FAR) };
        let mut output = handled(0, "a~v2.0", false, vec![emit]);
        if let ResultItem::Handled { record, .. } = &mut output {
            record.event_id = out.id;
        }
        submit(&store, "orders/emitter", vec![output], Some(1));
        let emit = store.event(1).unwrap().unwrap();
        assert_eq!(emit.idempotency_key, "a~v2.0/orders/emitter#0");
        assert_eq!(seen(&store, SUB, 1, &emit), Seen::Claimed(FAR));
        submit(&store, SUB, vec![handled(1, &emit.idempotency_key, true, Vec::new())], Some(2));
        let forged = weir_abi::Event { id: EventId([0xf0; 16]), ..event("a~v2.0/orders/emitter#0") };
        let at = store.publish_blocking(vec![forged.clone()]).unwrap()[0].seq;
        assert_eq!(seen(&store, SUB, at, &forged), Seen::Derived(1));
    }
}
