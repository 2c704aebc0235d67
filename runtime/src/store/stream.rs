//! Entity streams: the events of a declared entity type (`[[entities]]`)
//! with one key, numbered 0, 1, 2 … in append order (their revision), kept
//! in an index so a stream reads without scanning the log.
//!
//! # The index
//!
//! The index is part of `entities` (`entities.rs`): (entity type, key, `r` +
//! revision) → seq, beside the entity's aggregate records. One stream's
//! entries are one contiguous range that no other stream's key can fall
//! into, and a stream's current revision is the last entry of its range:
//! one range lookup. (Format 4 kept it in a table of its own, `streams`.)
//! An append of an event of a declared type with a key writes its entry in
//! the transaction that appends the event ([`Streams::index`],
//! called from `log::append`), whatever the path: ingest, a handler's emits
//! or a stream append. Events of other topics pay one string comparison per
//! declared type; with no type declared, nothing.
//!
//! `stream_types` maps each entity type ever declared to how far the log is
//! indexed for it: [`LIVE`] while it is declared (every append is indexed),
//! else the head when it stopped being declared. A type declared after its
//! events were stored is indexed from there on when the store opens
//! ([`backfill`]), in bounded transactions, before any append, so a stream
//! is always complete.

use std::time::Instant;

use redb::{Database, ReadableDatabase, ReadableTable, Table, TableDefinition};
use weir_abi::{Event, EventId};

use super::codec::{Encoded, Records, decode_event};
use super::command::{Apply, Command, Failure, Fatal, Order, Reply, next_record};
use super::entities::{ENTITIES, EntityKey, REVISION, number, slot, slot_number, slots};
use super::log::{Admitted, LOG, append_at};
use super::writer::Writes;
use super::{Store, StoreError, ingest, storage};

/// Format 4's stream index, (entity type, key, revision) → seq: moved into
/// `entities` by the migration to format 5 and deleted.
pub(super) const OLD_STREAMS: TableDefinition<'_, (&str, &str, u64), u64> = TableDefinition::new("streams");
/// entity type → [`LIVE`], or the seq up to which (exclusive) its events are
/// indexed.
pub(super) const STREAM_TYPES: TableDefinition<'_, &str, u64> = TableDefinition::new("stream_types");
/// In `stream_types`: every append is indexed.
const LIVE: u64 = u64::MAX;
/// Log records one backfill transaction reads.
pub(super) const BACKFILL_BATCH: usize = 4096;

/// The entity type of `topic` (`accounts.account` of
/// `accounts.account.opened`).
#[must_use]
pub(crate) fn entity_type(topic: &str) -> Option<&str> {
    topic.rsplit_once('.').map(|(t, _)| t)
}

/// The stream index as one group writes it: the declared types. Its
/// entries are written into the group's `entities` table (`Writes`).
pub(super) struct Streams<'t> {
    types: &'t [String],
}

/// The group's handle of `entities`.
type Entities<'t> = Table<'t, EntityKey, &'static [u8]>;

impl<'t> Streams<'t> {
    /// No type declared: appends index nothing.
    pub(super) fn none() -> Self {
        Self { types: &[] }
    }

    /// For a group with `types` declared.
    pub(super) fn new(types: &'t [String]) -> Self {
        Self { types }
    }

    fn declared(&self, ty: &str) -> bool {
        self.types.iter().any(|t| t == ty)
    }

    /// Give the event appended at `seq` its revision, if it belongs to a
    /// stream: its topic is of a declared type and it has a key.
    pub(super) fn index(&self, table: &mut Entities<'_>, seq: u64, event: &Event) -> Result<(), Fatal> {
        self.index_as(table, seq, &event.topic, event.key.as_deref())
    }

    /// Whether any type is declared (else [`Self::index`] does nothing).
    pub(super) fn is_on(&self) -> bool {
        !self.types.is_empty()
    }

    /// [`Self::index`] for an event of `topic` and `key`.
    pub(super) fn index_as(
        &self,
        table: &mut Entities<'_>,
        seq: u64,
        topic: &str,
        key: Option<&str>,
    ) -> Result<(), Fatal> {
        let (Some(key), Some(ty)) = (key, entity_type(topic)) else { return Ok(()) };
        if !self.declared(ty) {
            return Ok(());
        }
        let next = current(table, ty, key).map_err(Fatal)?.map_or(0, |r| r + 1);
        put(table, ty, key, next, seq)?;
        Ok(())
    }

    /// The stream's last revision as this group sees it.
    pub(super) fn current(&self, table: &Entities<'_>, ty: &str, key: &str) -> Result<Option<u64>, Fatal> {
        if self.is_on() { current(table, ty, key).map_err(Fatal) } else { Ok(None) }
    }

    fn revision_of(&self, table: &Entities<'_>, ty: &str, key: &str, seq: u64) -> Result<Option<u64>, Fatal> {
        if self.is_on() { revision_of(table, ty, key, seq).map_err(Fatal) } else { Ok(None) }
    }
}

/// Index the event at `seq` as revision `revision` of `ty`/`key`.
pub(super) fn put(
    table: &mut Table<'_, EntityKey, &'static [u8]>,
    ty: &str,
    key: &str,
    revision: u64,
    seq: u64,
) -> Result<(), redb::StorageError> {
    table.insert((ty, key, slot(REVISION, revision).as_slice()), seq.to_be_bytes().as_slice())?;
    Ok(())
}

/// The last revision of the stream `ty`/`key`, `None` when it is empty.
pub(super) fn current(
    table: &impl ReadableTable<EntityKey, &'static [u8]>,
    ty: &str,
    key: &str,
) -> Result<Option<u64>, StoreError> {
    let (low, high) = slots(REVISION, 0, u64::MAX);
    match table.range((ty, key, low.as_slice())..=(ty, key, high.as_slice())).map_err(storage)?.next_back() {
        Some(entry) => {
            let (k, _) = entry.map_err(storage)?;
            Ok(Some(slot_number(k.value().2, || format!("stream {ty}/{key}'s last index entry"))?))
        }
        None => Ok(None),
    }
}

/// The log seq of revision `revision` of `ty`/`key`, if it has one.
fn seq_at(
    table: &impl ReadableTable<EntityKey, &'static [u8]>,
    ty: &str,
    key: &str,
    revision: u64,
) -> Result<Option<u64>, StoreError> {
    match table.get((ty, key, slot(REVISION, revision).as_slice())).map_err(storage)? {
        Some(v) => Ok(Some(number(v.value(), || format!("stream {ty}/{key} revision {revision}'s seq"))?)),
        None => Ok(None),
    }
}

/// The revision of the event at `seq` in the stream `ty`/`key`, if it is
/// one of its events. Seqs grow with revisions, so a binary search finds it.
fn revision_of(
    table: &impl ReadableTable<EntityKey, &'static [u8]>,
    ty: &str,
    key: &str,
    seq: u64,
) -> Result<Option<u64>, StoreError> {
    let Some(last) = current(table, ty, key)? else { return Ok(None) };
    let (mut low, mut high) = (0u64, last);
    while low <= high {
        let mid = low + (high - low) / 2;
        let Some(at) = seq_at(table, ty, key, mid)? else { return Ok(None) };
        match at.cmp(&seq) {
            std::cmp::Ordering::Equal => return Ok(Some(mid)),
            std::cmp::Ordering::Less => low = mid + 1,
            std::cmp::Ordering::Greater if mid == 0 => return Ok(None),
            std::cmp::Ordering::Greater => high = mid - 1,
        }
    }
    Ok(None)
}

/// What a stream append expects the stream's current revision to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExpectedRevision {
    /// Whatever it is.
    Any,
    /// The stream is empty.
    NoStream,
    /// The stream has at least one event.
    Exists,
    /// Its last event has this revision.
    Exactly(u64),
}

impl ExpectedRevision {
    /// Whether a stream whose last revision is `current` meets it.
    #[must_use]
    pub fn holds(self, current: Option<u64>) -> bool {
        match self {
            Self::Any => true,
            Self::NoStream => current.is_none(),
            Self::Exists => current.is_some(),
            Self::Exactly(n) => current == Some(n),
        }
    }
}

/// One event of a stream append's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamPublished {
    /// The event's id (for a duplicate, the one stored the first time).
    pub id: EventId,
    /// Its position in the log.
    pub seq: u64,
    /// Its revision; `None` for a duplicate whose original is not an event
    /// of this stream (its idempotency key was used elsewhere).
    pub revision: Option<u64>,
}

/// How a stream append ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AppendOutcome {
    /// Stored; `revision` is the stream's new current revision.
    Appended {
        /// The events, in order.
        events: Vec<StreamPublished>,
        /// The last event's revision.
        revision: u64,
    },
    /// Every idempotency key was appended before: nothing stored, the
    /// originals answered.
    Duplicate {
        /// The original events.
        events: Vec<StreamPublished>,
        /// The stream's current revision.
        revision: Option<u64>,
    },
    /// The stream's revision is not the expected one: nothing stored.
    WrongExpectedRevision {
        /// Its current revision (`None`: empty).
        actual: Option<u64>,
    },
    /// Some idempotency keys were appended before and others not: nothing
    /// stored. `index` is the first known one.
    PartlyDuplicate {
        /// Position of the first known key in the append.
        index: usize,
    },
    /// The entity type is not declared, or event `index` is not of this
    /// stream (its topic's type or its key): nothing stored.
    NotOfStream {
        /// The event to blame, if one is.
        index: Option<usize>,
    },
}

/// Append events to one stream if its revision is the expected one.
pub(super) struct StreamAppend {
    ty: String,
    key: String,
    expected: ExpectedRevision,
    events: Vec<Event>,
    _admitted: Admitted,
    /// Whether the events' idempotency keys go through the ingest index
    /// (looked up, then claimed). Not for a command's append: the command
    /// record committed in the same transaction makes a retry answer that
    /// record, so its derived keys can never append twice (as emits skip
    /// the index because their input's record is committed with them).
    dedup: bool,
}

/// What the check decided.
pub(super) enum Decided {
    /// Append, the first event getting this revision.
    Append(u64),
    /// Answer this without writing.
    Answer(AppendOutcome),
}

impl StreamAppend {
    /// An append made as part of an aggregate's command (`aggregate.rs`):
    /// its events skip the ingest index (see `dedup`).
    pub(super) fn new(
        ty: String,
        key: String,
        expected: ExpectedRevision,
        events: Vec<Event>,
        admitted: Admitted,
    ) -> Self {
        Self { ty, key, expected, events, _admitted: admitted, dedup: false }
    }
}

impl Apply for StreamAppend {
    type Answer = AppendOutcome;
    type Checked = Decided;

    fn check(&self, w: &Writes<'_>, encoded: &mut Encoded) -> Result<Decided, Failure> {
        self.check_at(w, encoded, None)
    }

    fn write(self, decided: Decided, w: &mut Writes<'_>, records: Records<'_>) -> Result<AppendOutcome, Fatal> {
        self.write_checked(decided, w, records)
    }
}

impl StreamAppend {
    /// [`Apply::check`], with the stream's current revision when the caller
    /// looked it up in this group already (`Some(current)`).
    pub(super) fn check_at(
        &self,
        w: &Writes<'_>,
        encoded: &mut Encoded,
        known_current: Option<Option<u64>>,
    ) -> Result<Decided, Failure> {
        let (ty, key) = (self.ty.as_str(), self.key.as_str());
        if !w.streams.declared(ty) {
            return Ok(Decided::Answer(AppendOutcome::NotOfStream { index: None }));
        }
        for (index, event) in self.events.iter().enumerate() {
            if entity_type(&event.topic) != Some(ty) || event.key.as_deref() != Some(key) {
                return Ok(Decided::Answer(AppendOutcome::NotOfStream { index: Some(index) }));
            }
        }
        // Known keys (live in the ingest index, including what earlier
        // commands of this group claimed).
        let mut known = Vec::with_capacity(self.events.len());
        for event in self.events.iter().filter(|_| self.dedup) {
            let entry = w.ingest.get(event.idempotency_key.as_str())?.map(|v| v.value());
            known.push(entry.filter(|(_, _, expires)| *expires > w.now).map(|(id, seq, _)| (EventId(id), seq)));
        }
        let current = match known_current {
            Some(current) => current,
            None => w.streams.current(&w.entities, ty, key)?,
        };
        if !known.is_empty() && known.iter().all(Option::is_some) {
            let mut events = Vec::with_capacity(known.len());
            for (id, seq) in known.into_iter().flatten() {
                events.push(StreamPublished { id, seq, revision: w.streams.revision_of(&w.entities, ty, key, seq)? });
            }
            return Ok(Decided::Answer(AppendOutcome::Duplicate { events, revision: current }));
        }
        if let Some(index) = known.iter().position(Option::is_some) {
            return Ok(Decided::Answer(AppendOutcome::PartlyDuplicate { index }));
        }
        if !self.expected.holds(current) {
            return Ok(Decided::Answer(AppendOutcome::WrongExpectedRevision { actual: current }));
        }
        for event in &self.events {
            encoded.push_event(event);
        }
        Ok(Decided::Append(current.map_or(0, |c| c + 1)))
    }

    /// [`Apply::write`] of a checked append: each event is indexed at the
    /// revision the check gave it.
    pub(super) fn write_checked(
        self,
        decided: Decided,
        w: &mut Writes<'_>,
        mut records: Records<'_>,
    ) -> Result<AppendOutcome, Fatal> {
        let first = match decided {
            Decided::Answer(outcome) => return Ok(outcome),
            Decided::Append(first) => first,
        };
        let mut events = Vec::with_capacity(self.events.len());
        let mut revision = first;
        for (i, event) in self.events.into_iter().enumerate() {
            let bytes = next_record(&mut records)?;
            // The check found no key known; claiming records them for the
            // ingest path and later appends alike.
            if self.dedup && ingest::claim(w, &event.idempotency_key, event.id)?.is_some() {
                return Err(Fatal(StoreError::Storage(
                    "a stream append's idempotency key became known between its check and its write (a bug in Weir)"
                        .into(),
                )));
            }
            let seq = append_at(w, bytes, &event, (&self.ty, &self.key, first + i as u64))?;
            w.published += 1;
            if self.dedup {
                w.ingested.push(event.idempotency_key);
            }
            revision = first + i as u64;
            events.push(StreamPublished { id: event.id, seq, revision: Some(revision) });
        }
        Ok(AppendOutcome::Appended { events, revision })
    }
}

/// One page of a stream.
#[derive(Debug)]
pub(crate) struct StreamPage {
    /// (revision, seq, event) in the order asked for.
    pub(crate) events: Vec<(u64, u64, Event)>,
    /// The stream's current revision (`None`: empty).
    pub(crate) revision: Option<u64>,
}

impl Store {
    /// Whether `ty` is a declared entity type.
    #[must_use]
    pub(crate) fn entity_declared(&self, ty: &str) -> bool {
        self.entity_types.iter().any(|t| t == ty)
    }

    /// Append `events` to the stream `ty`/`key` atomically if its revision
    /// is `expected`; `reply` runs after the commit.
    pub(crate) fn append_stream(
        &self,
        ty: String,
        key: String,
        expected: ExpectedRevision,
        events: Vec<Event>,
        reply: Reply<AppendOutcome>,
    ) {
        match self.admit(&events) {
            Ok(admitted) => self.send(Command::StreamAppend(Order::new(
                StreamAppend { ty, key, expected, events, _admitted: admitted, dedup: true },
                reply,
            ))),
            Err(refused) => reply(Err(refused)),
        }
    }

    /// [`Store::append_stream`], waiting for the commit.
    ///
    /// # Errors
    ///
    /// The commit's error.
    pub fn append_stream_blocking(
        &self,
        ty: &str,
        key: &str,
        expected: ExpectedRevision,
        events: Vec<Event>,
    ) -> Result<AppendOutcome, StoreError> {
        let admitted = self.admit(&events)?;
        let command =
            StreamAppend { ty: ty.to_owned(), key: key.to_owned(), expected, events, _admitted: admitted, dedup: true };
        self.ask(|reply| Command::StreamAppend(Order::new(command, reply)))
    }

    /// Up to `limit` events of the stream `ty`/`key` from revision `from`
    /// on (forward) or down (backward; from the last when `from` is
    /// `None`), and no more than about `max_bytes` of stored records
    /// (always at least one event, so a reader always moves on).
    ///
    /// # Errors
    ///
    /// Storage errors; a record that does not decode, or an indexed event
    /// missing from the log, as [`StoreError::RecordCorrupt`].
    pub(crate) fn read_stream(
        &self,
        ty: &str,
        key: &str,
        from: Option<u64>,
        backward: bool,
        limit: usize,
        max_bytes: usize,
    ) -> Result<StreamPage, StoreError> {
        let read = self.shared.begin_read()?;
        let entities = read.open_table(ENTITIES).map_err(storage)?;
        let log = read.open_table(LOG).map_err(storage)?;
        let revision = current(&entities, ty, key)?;
        let (low, high) = if backward {
            slots(REVISION, 0, from.unwrap_or(u64::MAX))
        } else {
            slots(REVISION, from.unwrap_or(0), u64::MAX)
        };
        let range = entities.range((ty, key, low.as_slice())..=(ty, key, high.as_slice())).map_err(storage)?;
        let range: Box<dyn Iterator<Item = _>> = if backward { Box::new(range.rev()) } else { Box::new(range) };
        let mut events = Vec::new();
        let mut bytes_read = 0usize;
        for entry in range.take(limit) {
            if !events.is_empty() && bytes_read >= max_bytes {
                break;
            }
            let (k, v) = entry.map_err(storage)?;
            let rev = slot_number(k.value().2, || format!("an index entry of stream {ty}/{key}"))?;
            let seq = number(v.value(), || format!("stream {ty}/{key} revision {rev}'s seq"))?;
            let what = || format!("stream {ty}/{key} revision {rev} (log seq {seq})");
            let Some(bytes) = log.get(seq).map_err(storage)? else {
                return Err(StoreError::RecordCorrupt { record: what(), reason: "the event is not in the log".into() });
            };
            bytes_read = bytes_read.saturating_add(bytes.value().len());
            events.push((rev, seq, decode_event(bytes.value(), what)?));
        }
        Ok(StreamPage { events, revision })
    }

    /// Streams (entity type, key pairs) with at least one event: counted by
    /// walking the index's revision-0 entries, for tests and `weir status`.
    ///
    /// # Errors
    ///
    /// Storage errors.
    pub fn stream_count(&self) -> Result<u64, StoreError> {
        let read = self.shared.begin_read()?;
        let entities = read.open_table(ENTITIES).map_err(storage)?;
        let first = slot(REVISION, 0);
        let mut count = 0;
        for entry in entities.iter().map_err(storage)? {
            if entry.map_err(storage)?.0.value().2 == first.as_slice() {
                count += 1;
            }
        }
        Ok(count)
    }
}

/// Bring the index of every type in `types` up to the head of the log
/// before the store takes writes, and record where types no longer
/// declared stopped. Runs in transactions of [`BACKFILL_BATCH`] records,
/// logging progress, so a crash half-way resumes where it stopped.
pub(super) fn backfill(db: &Database, types: &[String]) -> Result<(), StoreError> {
    let started = Instant::now();
    let (head, mut pending) = {
        let read = db.begin_read().map_err(storage)?;
        let log = read.open_table(LOG).map_err(storage)?;
        let head = log.last().map_err(storage)?.map_or(0, |(k, _)| k.value() + 1);
        let states = read.open_table(STREAM_TYPES).map_err(storage)?;
        let mut pending: Vec<(String, u64)> = Vec::new();
        for ty in types {
            match states.get(ty.as_str()).map_err(storage)?.map(|v| v.value()) {
                Some(LIVE) => {}
                Some(from) => pending.push((ty.clone(), from)),
                None => pending.push((ty.clone(), 0)),
            }
        }
        (head, pending)
    };
    // Types no longer declared stop being indexed at the head.
    {
        let txn = db.begin_write().map_err(storage)?;
        {
            let mut states = txn.open_table(STREAM_TYPES).map_err(storage)?;
            let mut stopped = Vec::new();
            for entry in states.iter().map_err(storage)? {
                let (k, v) = entry.map_err(storage)?;
                if v.value() == LIVE && !types.iter().any(|t| t == k.value()) {
                    stopped.push(k.value().to_owned());
                }
            }
            for ty in stopped {
                tracing::info!(entity_type = %ty, head, "entity type no longer declared: its streams stop here");
                states.insert(ty.as_str(), head).map_err(storage)?;
            }
        }
        txn.commit().map_err(storage)?;
    }
    let mut indexed = 0u64;
    while let Some(from) = pending.iter().map(|(_, f)| *f).min() {
        if from >= head {
            break;
        }
        let txn = db.begin_write().map_err(storage)?;
        let mut next = from;
        {
            let log = txn.open_table(LOG).map_err(storage)?;
            let mut entities = txn.open_table(ENTITIES).map_err(storage)?;
            for entry in log.range(from..head).map_err(storage)?.take(BACKFILL_BATCH) {
                let (k, v) = entry.map_err(storage)?;
                let seq = k.value();
                next = seq + 1;
                let event = match decode_event(v.value(), || format!("log seq {seq}")) {
                    Ok(event) => event,
                    Err(e) => {
                        tracing::warn!(error = %e, "stream backfill: a log record that does not decode is not indexed");
                        continue;
                    }
                };
                let (Some(key), Some(ty)) = (event.key.as_deref(), entity_type(&event.topic)) else { continue };
                if pending.iter().any(|(t, f)| t == ty && *f <= seq) {
                    let rev = current(&entities, ty, key)?.map_or(0, |r| r + 1);
                    put(&mut entities, ty, key, rev, seq).map_err(storage)?;
                    indexed += 1;
                }
            }
            if next == from {
                // Nothing left below the head (removed by retention).
                next = head;
            }
            let mut states = txn.open_table(STREAM_TYPES).map_err(storage)?;
            for (ty, f) in &mut pending {
                *f = (*f).max(next);
                states.insert(ty.as_str(), *f).map_err(storage)?;
            }
        }
        txn.commit().map_err(storage)?;
        tracing::info!(
            indexed,
            at = next,
            head,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "indexing entity streams of newly declared types"
        );
    }
    let txn = db.begin_write().map_err(storage)?;
    {
        let mut states = txn.open_table(STREAM_TYPES).map_err(storage)?;
        for ty in types {
            states.insert(ty.as_str(), LIVE).map_err(storage)?;
        }
    }
    txn.commit().map_err(storage)?;
    Ok(())
}

#[cfg(test)]
mod tests;
