//! What the store keeps per subscription: cursors, parked events, the
//! dead-letter queue and the idempotency records with their expiry index;
//! the commands that change them (a worker's results, redrive, purge) and
//! the reads.

use std::collections::BTreeMap;
use std::sync::Arc;

use redb::{ReadableTable, TableDefinition};

use super::codec::{Encoded, Records, decode};
use super::command::{Apply, Command, Failure, Fatal, Order, Reply, next_record};
use super::writer::Writes;
use super::{
    DlqEntry, DlqFilter, IdempotencyRecord, ParkedEntry, ResultItem, Store, StoreError, SubscriptionStats, log, now_ms,
    storage,
};

/// subscription → next sequence number to read.
pub(super) const CURSORS: TableDefinition<'_, &str, u64> = TableDefinition::new("cursors");
/// (subscription, seq) → encoded [`ParkedEntry`].
pub(super) const PARKED: TableDefinition<'_, (&str, u64), &[u8]> = TableDefinition::new("parked");
/// (subscription, seq) → encoded [`DlqEntry`].
pub(super) const DLQ: TableDefinition<'_, (&str, u64), &[u8]> = TableDefinition::new("dlq");
/// (subscription, idempotency key) → encoded [`IdempotencyRecord`].
pub(super) const IDEMPOTENCY: TableDefinition<'_, (&str, &str), &[u8]> = TableDefinition::new("idempotency");
/// (expires at ms, subscription, batch) → encoded `Vec<String>` of the keys
/// one commit recorded: the garbage-collection index. One entry per batch
/// rather than per key keeps the per-event write cost to one insert.
pub(super) const IDEMPOTENCY_EXPIRY: TableDefinition<'_, (u64, &str, u64), &[u8]> =
    TableDefinition::new("idempotency_expiry");

/// A subscription's outcomes and (optionally) its new cursor.
pub(super) struct Results {
    pub(super) subscription: Arc<str>,
    pub(super) items: Vec<ResultItem>,
    pub(super) cursor: Option<u64>,
    /// The store's generation the batch was built under, if its worker
    /// pinned one ([`Store::pinned`]).
    pub(super) since: Option<u64>,
}

impl Apply for Results {
    type Answer = ();
    /// The latest expiry of the idempotency records stored, if any are.
    type Checked = Option<u64>;

    fn check(&self, w: &Writes<'_>, encoded: &mut Encoded) -> Result<Option<u64>, Failure> {
        if self.since.is_some_and(|since| since != w.generation) {
            return Err(Failure::Refused(StoreError::Interrupted));
        }
        let mut recorded: Vec<&str> = Vec::new();
        let mut latest_expiry = 0;
        for item in &self.items {
            match item {
                ResultItem::Handled { key, record, derived, timers, .. } => {
                    if !derived {
                        encoded.push(record)?;
                    }
                    super::timer::encode(timers, encoded)?;
                    if !derived {
                        latest_expiry = latest_expiry.max(record.expires_at_ms);
                        recorded.push(key);
                    }
                }
                ResultItem::Duplicate { .. } => {}
                ResultItem::Park(entry) => encoded.push(entry)?,
                ResultItem::DeadLetter(entry) => encoded.push(&**entry)?,
            }
        }
        if recorded.is_empty() {
            return Ok(None);
        }
        encoded.push(&recorded)?;
        Ok(Some(latest_expiry))
    }

    fn write(self, latest_expiry: Option<u64>, w: &mut Writes<'_>, mut records: Records<'_>) -> Result<(), Fatal> {
        let sub: &str = &self.subscription;
        let mut counts = SubscriptionStats::default();
        let mut least_derived: Option<u64> = None;
        for item in &self.items {
            match item {
                ResultItem::Handled { seq, key, derived, emits, parked, state, timers, .. } => {
                    if *derived {
                        least_derived = Some(least_derived.map_or(*seq, |least| least.min(*seq)));
                    } else {
                        w.idempotency.insert((sub, key.as_str()), next_record(&mut records)?)?;
                    }
                    // Emitted events skip the ingest index: their
                    // transaction also records the input as handled, so a
                    // redo cannot emit them twice, and duplicates a plugin
                    // emits itself are caught by the idempotency check of
                    // each subscription downstream.
                    for emit in emits {
                        log::append_emit(w, emit)?;
                    }
                    super::state::apply(w, sub, state)?;
                    super::timer::apply(w, sub, timers, &mut records)?;
                    if *parked {
                        w.parked.remove((sub, *seq))?;
                    }
                    counts.handled += 1;
                    counts.emitted += emits.len() as u64;
                }
                ResultItem::Duplicate { seq, parked } => {
                    if *parked {
                        w.parked.remove((sub, *seq))?;
                    }
                    counts.duplicates += 1;
                }
                ResultItem::Park(entry) => {
                    if entry.attempts > 0 {
                        counts.retries += 1;
                    }
                    w.parked.insert((sub, entry.seq), next_record(&mut records)?)?;
                }
                ResultItem::DeadLetter(entry) => {
                    w.parked.remove((sub, entry.seq))?;
                    w.dlq.insert((sub, entry.seq), next_record(&mut records)?)?;
                    counts.dead_lettered += 1;
                }
            }
        }
        if let Some(latest_expiry) = latest_expiry {
            // Indexed under the latest expiry of the batch, so every record
            // in it has expired when the collector gets there.
            let batch = w.next_batch();
            w.idempotency_expiry.insert((latest_expiry, sub, batch), next_record(&mut records)?)?;
        }
        if let Some(least) = least_derived {
            super::derived::note(w, sub, least)?;
        }
        if let Some(cursor) = self.cursor {
            w.cursors.insert(sub, cursor)?;
        }
        w.tally.add(&self.subscription, &counts);
        Ok(())
    }
}

/// Move DLQ entries of one subscription back to its parked events: a whole
/// batch in one command, so a large redrive costs one commit, not one per
/// entry.
pub(super) struct Redrive {
    pub(super) subscription: String,
    /// The parked entry each comes back as (its seq names the DLQ entry).
    pub(super) entries: Vec<ParkedEntry>,
}

impl Apply for Redrive {
    /// For each entry, whether it was there.
    type Answer = Vec<bool>;
    type Checked = ();

    fn check(&self, _: &Writes<'_>, encoded: &mut Encoded) -> Result<(), Failure> {
        for entry in &self.entries {
            encoded.push(entry)?;
        }
        Ok(())
    }

    fn write(self, (): (), w: &mut Writes<'_>, mut records: Records<'_>) -> Result<Vec<bool>, Fatal> {
        let mut moved = Vec::with_capacity(self.entries.len());
        for entry in &self.entries {
            let key = (self.subscription.as_str(), entry.seq);
            let record = next_record(&mut records)?;
            let existed = w.dlq.remove(key)?.is_some();
            if existed {
                w.parked.insert(key, record)?;
            }
            moved.push(existed);
        }
        Ok(moved)
    }
}

/// Delete the DLQ entries a filter selects.
pub(super) struct Purge {
    pub(super) filter: DlqFilter,
}

impl Apply for Purge {
    /// How many were deleted.
    type Answer = usize;
    /// The entries to delete.
    type Checked = Vec<(String, u64)>;

    fn check(&self, w: &Writes<'_>, _: &mut Encoded) -> Result<Vec<(String, u64)>, Failure> {
        use std::ops::Bound::{Included, Unbounded};
        let filter = &self.filter;
        let mut doomed = Vec::new();
        // Only the key range the filter selects is read.
        let range = match (&filter.subscription, filter.seq) {
            (Some(s), Some(seq)) => (Included((s.as_str(), seq)), Included((s.as_str(), seq))),
            (Some(s), None) => (Included((s.as_str(), 0)), Included((s.as_str(), u64::MAX))),
            (None, _) => (Unbounded, Unbounded),
        };
        for entry in w.dlq.range::<(&str, u64)>(range)? {
            let (k, v) = entry?;
            let (sub, seq) = k.value();
            if !filter.matches_key(sub, seq) {
                continue;
            }
            // Only a filter on the failure code needs the entry
            // itself. A damaged entry can still be purged by
            // subscription and seq: that is how an operator
            // removes it.
            let selected = match &filter.code {
                None => true,
                Some(code) => match decode::<DlqEntry>(v.value(), || dlq_record((sub, seq))) {
                    Ok(entry) => entry.code == *code,
                    Err(e) => {
                        tracing::warn!(error = %e, "purge by code skips a damaged DLQ entry");
                        false
                    }
                },
            };
            if selected {
                doomed.push((sub.to_owned(), seq));
            }
        }
        Ok(doomed)
    }

    fn write(self, doomed: Vec<(String, u64)>, w: &mut Writes<'_>, _: Records<'_>) -> Result<usize, Fatal> {
        for (sub, seq) in &doomed {
            w.dlq.remove((sub.as_str(), *seq))?;
        }
        Ok(doomed.len())
    }
}

/// A page of DLQ entries, and the key of the last one when more follow
/// ([`Store::dlq_page`]).
pub type DlqPage = (Vec<DlqEntry>, Option<(String, u64)>);

pub(super) fn dlq_record((subscription, seq): (&str, u64)) -> String {
    format!(
        "dlq entry {subscription} seq {seq} (purge it with `weir dlq purge --subscription {subscription} --seq {seq}`)"
    )
}

impl Store {
    /// Commit a subscription's outcomes and (optionally) its new cursor in
    /// one transaction.
    pub(crate) fn submit(&self, subscription: Arc<str>, items: Vec<ResultItem>, cursor: Option<u64>, reply: Reply<()>) {
        self.send(Command::Results(Order::new(Results { subscription, items, cursor, since: self.since }, reply)));
    }

    /// Move DLQ entries back to the subscription's parked events (as
    /// `entries`, which name them by seq), in one transaction. Answers, for
    /// each, whether it was there (not already redriven or purged).
    pub(crate) fn redrive(&self, subscription: String, entries: Vec<ParkedEntry>, reply: Reply<Vec<bool>>) {
        self.send(Command::Redrive(Order::new(Redrive { subscription, entries }, reply)));
    }

    /// Delete the DLQ entries `filter` selects; answers how many.
    ///
    /// # Errors
    ///
    /// The commit's error.
    pub(crate) fn purge_blocking(&self, filter: DlqFilter) -> Result<usize, StoreError> {
        self.ask(|reply| Command::Purge(Order::new(Purge { filter }, reply)))
    }

    /// The committed cursor of a subscription (0 if it never committed one).
    ///
    /// # Errors
    ///
    /// Storage errors.
    pub fn cursor(&self, subscription: &str) -> Result<u64, StoreError> {
        let read = self.shared.begin_read()?;
        let table = read.open_table(CURSORS).map_err(storage)?;
        Ok(table.get(subscription).map_err(storage)?.map_or(0, |v| v.value()))
    }

    /// All parked events of a subscription, by sequence number.
    ///
    /// # Errors
    ///
    /// Storage or decoding errors.
    pub fn parked(&self, subscription: &str) -> Result<Vec<ParkedEntry>, StoreError> {
        let read = self.shared.begin_read()?;
        let table = read.open_table(PARKED).map_err(storage)?;
        let mut out = Vec::new();
        for entry in table.range((subscription, 0)..=(subscription, u64::MAX)).map_err(storage)? {
            let (k, v) = entry.map_err(storage)?;
            out.push(decode(v.value(), || format!("parked {subscription} seq {}", k.value().1))?);
        }
        Ok(out)
    }

    /// Look up idempotency records: for each key, the record if one exists
    /// and has not expired.
    ///
    /// # Errors
    ///
    /// Storage or decoding errors.
    pub(crate) fn idempotency(
        &self,
        subscription: &str,
        keys: &[&str],
    ) -> Result<Vec<Option<IdempotencyRecord>>, StoreError> {
        let read = self.shared.begin_read()?;
        let table = read.open_table(IDEMPOTENCY).map_err(storage)?;
        let now = now_ms();
        keys.iter()
            .map(|key| match table.get((subscription, *key)).map_err(storage)? {
                Some(v) => {
                    let record: IdempotencyRecord =
                        decode(v.value(), || format!("idempotency record {subscription} key {key:?}"))?;
                    Ok((record.expires_at_ms > now).then_some(record))
                }
                None => Ok(None),
            })
            .collect()
    }

    /// DLQ entries per subscription, counted from the keys alone: status,
    /// `/metrics`, `/ready` and the dashboard ask every second, and decoding
    /// every entry (each holds its whole event) would cost O(DLQ bytes).
    ///
    /// # Errors
    ///
    /// Storage errors.
    pub fn dlq_counts(&self) -> Result<BTreeMap<String, u64>, StoreError> {
        let read = self.shared.begin_read()?;
        let table = read.open_table(DLQ).map_err(storage)?;
        let mut counts: BTreeMap<String, u64> = BTreeMap::new();
        for entry in table.range::<(&str, u64)>(..).map_err(storage)? {
            let (k, _) = entry.map_err(storage)?;
            let (sub, _) = k.value();
            match counts.get_mut(sub) {
                Some(n) => *n += 1,
                None => {
                    counts.insert(sub.to_owned(), 1);
                }
            }
        }
        Ok(counts)
    }

    /// DLQ entries of one subscription, counted from the keys of its range
    /// alone (a source's status line asks for its own only).
    ///
    /// # Errors
    ///
    /// Storage errors.
    pub fn dlq_count(&self, subscription: &str) -> Result<u64, StoreError> {
        let read = self.shared.begin_read()?;
        let table = read.open_table(DLQ).map_err(storage)?;
        let range = table.range((subscription, 0)..=(subscription, u64::MAX)).map_err(storage)?;
        Ok(range.count() as u64)
    }

    /// DLQ entries passing `filter`, by subscription and sequence number.
    ///
    /// # Errors
    ///
    /// Storage or decoding errors.
    pub fn dlq(&self, filter: &DlqFilter) -> Result<Vec<DlqEntry>, StoreError> {
        Ok(self.dlq_page(filter, None, usize::MAX)?.0)
    }

    /// Up to `limit` DLQ entries passing `filter`, by subscription and
    /// sequence number, after the entry `after` (exclusive); and the key
    /// to continue after when more entries pass. Only the entries of the
    /// page (and one more, to know there is more) are decoded, and a filter
    /// on the subscription (and seq) reads only its key range.
    ///
    /// # Errors
    ///
    /// Storage or decoding errors.
    pub fn dlq_page(
        &self,
        filter: &DlqFilter,
        after: Option<(&str, u64)>,
        limit: usize,
    ) -> Result<DlqPage, StoreError> {
        use std::ops::Bound::{Excluded, Included, Unbounded};
        let read = self.shared.begin_read()?;
        let table = read.open_table(DLQ).map_err(storage)?;
        let start = match (after, &filter.subscription, filter.seq) {
            (Some(after), _, _) => Excluded(after),
            (None, Some(s), Some(seq)) => Included((s.as_str(), seq)),
            (None, Some(s), None) => Included((s.as_str(), 0)),
            (None, None, _) => Unbounded,
        };
        let end = match (&filter.subscription, filter.seq) {
            (Some(s), Some(seq)) => Included((s.as_str(), seq)),
            (Some(s), None) => Included((s.as_str(), u64::MAX)),
            (None, _) => Unbounded,
        };
        let mut out = Vec::new();
        for entry in table.range::<(&str, u64)>((start, end)).map_err(storage)? {
            let (k, v) = entry.map_err(storage)?;
            // Select by key before decoding: one damaged entry must not
            // hide the others from a lookup by seq.
            if !filter.matches_key(k.value().0, k.value().1) {
                continue;
            }
            let entry: DlqEntry = decode(v.value(), || dlq_record(k.value()))?;
            if !filter.matches(&entry) {
                continue;
            }
            if out.len() == limit {
                let next = out.last().map(|last: &DlqEntry| (last.subscription.clone(), last.seq));
                return Ok((out, next));
            }
            out.push(entry);
        }
        Ok((out, None))
    }

    /// One DLQ entry, looked up by its key.
    ///
    /// # Errors
    ///
    /// Storage or decoding errors.
    pub fn dlq_entry(&self, subscription: &str, seq: u64) -> Result<Option<DlqEntry>, StoreError> {
        let read = self.shared.begin_read()?;
        let table = read.open_table(DLQ).map_err(storage)?;
        let Some(v) = table.get((subscription, seq)).map_err(storage)? else {
            return Ok(None);
        };
        decode(v.value(), || dlq_record((subscription, seq))).map(Some)
    }
}
