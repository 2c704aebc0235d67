//! External sources' positions (the JetStream source, `runtime/src/source/`):
//! each consumed message is appended to the log together with the position
//! it came from, in one transaction, so a crash between the append and the
//! acknowledgement to the source neither loses nor double-appends.
//!
//! A redelivery is recognised by its position, through the ingest
//! de-duplication index: every appended message claims the key
//! `src:<source>:<stream identity>:<stream seq>` there (besides the event's
//! own idempotency key, which is `Nats-Msg-Id` or the CloudEvent's
//! source and id when the message has them). A key per position, rather
//! than "everything at or below the highest position is done", because
//! JetStream redelivers out of order: after a restart the messages the old
//! process had not acknowledged come back only after their ack wait, while
//! newer ones are delivered at once. The keys expire with the ingest index
//! (`idempotency.retention`), which the configuration requires to be longer
//! than the source's ack wait.
//!
//! `sources` (source name → [`SourcePosition`]) keeps the highest position
//! appended and the counts, for status.
//!
//! A message of the batch that makes no event comes as a DLQ entry of
//! `sources/<name>` (`runtime/src/source/dlq.rs`), committed with the
//! batch and claiming its position the same way, so a redelivery after a
//! crash records nothing twice. [`SourceRedrive`] appends such a message
//! once it maps, removing its entry in the same transaction.

use redb::{ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use weir_abi::Event;

use super::codec::{Encoded, Records, decode};
use super::command::{Apply, Command, Failure, Fatal, Order, Reply, next_record};
use super::log::{Admitted, append};
use super::writer::Writes;
use super::{DlqEntry, Published, Store, StoreError, ingest, storage};

/// source name → encoded [`SourcePosition`].
pub(super) const SOURCES: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("sources");

/// Where a source is, as committed with the events it appended.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourcePosition {
    /// The stream the positions are in, and when it was created (ns since
    /// the epoch): a stream deleted and created again numbers from 1 anew,
    /// and its positions are other messages.
    pub stream: String,
    /// The stream's creation time, nanoseconds since the Unix epoch.
    pub stream_created: i64,
    /// The highest stream sequence appended.
    pub last_seq: u64,
    /// Messages appended, ever.
    pub appended: u64,
    /// Messages recognised as already appended (a redelivery by position,
    /// or a known `Nats-Msg-Id` / CloudEvent id).
    pub duplicates: u64,
}

/// Append the messages of one batch of a source, each unless its position
/// or its idempotency key is known, and move the source's position.
pub(super) struct SourceAppend {
    source: String,
    stream: String,
    stream_created: i64,
    /// The stream sequence of each event, in step with `events`.
    seqs: Vec<u64>,
    events: Vec<Event>,
    /// Messages that make no event, as DLQ entries (their event's
    /// idempotency key is their position key).
    rejected: Vec<DlqEntry>,
    _admitted: Admitted,
}

/// What a source batch did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct SourceOutcome {
    /// Each event's answer, in step with the events.
    pub(crate) published: Vec<Published>,
    /// Rejected messages stored as DLQ entries.
    pub(crate) dead_lettered: u64,
    /// Rejected messages whose position was already recorded (a redelivery).
    pub(crate) rejected_duplicates: u64,
}

/// The ingest key of a position of a source.
pub(crate) fn position_key(source: &str, stream: &str, created: i64, seq: u64) -> String {
    format!("src:{source}:{stream}@{created}:{seq}")
}

/// Where each rejected message goes: its DLQ key, or `None` when its
/// position is already recorded. Read-only, so `check` can run it.
fn dlq_keys(w: &Writes<'_>, rejected: &[DlqEntry]) -> Result<Vec<Option<u64>>, Failure> {
    let mut taken: Vec<u64> = Vec::new();
    let mut positions: Vec<&str> = Vec::new();
    let mut out = Vec::with_capacity(rejected.len());
    for entry in rejected {
        let at = entry.event.idempotency_key.as_str();
        let live = w.ingest.get(at)?.is_some_and(|v| v.value().2 > w.now);
        if live || positions.contains(&at) {
            out.push(None);
            continue;
        }
        positions.push(at);
        // The stream seq, unless an entry of an earlier stream of the same
        // name (deleted and created again) holds it: then the next free key.
        let sub = entry.subscription.as_str();
        let mut key = entry.seq;
        while taken.contains(&key) || w.dlq.get((sub, key))?.is_some() {
            key = key.saturating_add(1);
        }
        taken.push(key);
        out.push(Some(key));
    }
    Ok(out)
}

impl Apply for SourceAppend {
    type Answer = SourceOutcome;
    type Checked = (SourcePosition, Vec<Option<u64>>);

    fn check(&self, w: &Writes<'_>, encoded: &mut Encoded) -> Result<Self::Checked, Failure> {
        for event in &self.events {
            encoded.push_event(event);
        }
        let keys = dlq_keys(w, &self.rejected)?;
        for (entry, key) in self.rejected.iter().zip(&keys) {
            match key {
                Some(key) if *key == entry.seq => encoded.push(entry)?,
                Some(key) => encoded.push(&DlqEntry { seq: *key, ..entry.clone() })?,
                None => {}
            }
        }
        let table = w.txn.open_table(SOURCES)?;
        let position = match table.get(self.source.as_str())? {
            Some(bytes) => decode::<SourcePosition>(bytes.value(), || format!("source {}", self.source))?,
            None => SourcePosition::default(),
        };
        Ok((position, keys))
    }

    fn write(
        self,
        (mut position, keys): Self::Checked,
        w: &mut Writes<'_>,
        mut records: Records<'_>,
    ) -> Result<Self::Answer, Fatal> {
        if position.stream != self.stream || position.stream_created != self.stream_created {
            // Another stream (or the same name created again): its
            // positions start over. The keys of the old one expire alone.
            position = SourcePosition {
                stream: self.stream.clone(),
                stream_created: self.stream_created,
                appended: position.appended,
                duplicates: position.duplicates,
                last_seq: 0,
            };
        }
        let mut out = Vec::with_capacity(self.events.len());
        for (stream_seq, event) in self.seqs.into_iter().zip(self.events) {
            let bytes = next_record(&mut records)?;
            let at = position_key(&self.source, &self.stream, self.stream_created, stream_seq);
            if let Some(original) = ingest::claim(w, &at, event.id)? {
                position.duplicates += 1;
                w.duplicates += 1;
                out.push(original);
                continue;
            }
            w.ingested.push(at.clone());
            if let Some(original) = ingest::claim(w, &event.idempotency_key, event.id)? {
                // Known by its id: the position now names the original, so a
                // redelivery of this one is answered the same.
                w.ingest.insert(at.as_str(), (original.id.0, original.seq, w.expires))?;
                position.duplicates += 1;
                w.duplicates += 1;
                out.push(original);
                continue;
            }
            let seq = append(w, bytes, &event)?;
            w.published += 1;
            w.ingested.push(event.idempotency_key);
            position.appended += 1;
            position.last_seq = position.last_seq.max(stream_seq);
            out.push(Published { id: event.id, seq, duplicate: false });
        }
        let mut outcome = SourceOutcome { published: out, ..SourceOutcome::default() };
        for (entry, key) in self.rejected.into_iter().zip(keys) {
            let Some(key) = key else {
                outcome.rejected_duplicates += 1;
                continue;
            };
            w.dlq.insert((entry.subscription.as_str(), key), next_record(&mut records)?)?;
            // The position is recorded as an appended message's is: a
            // redelivery (a crash before the +TERM) is recognised.
            let at = entry.event.idempotency_key;
            w.ingest.insert(at.as_str(), (entry.event.id.0, w.head, w.expires))?;
            w.ingested.push(at);
            outcome.dead_lettered += 1;
        }
        let record = super::codec::encode(&position).map_err(Fatal)?;
        w.txn.open_table(SOURCES)?.insert(self.source.as_str(), record.as_slice())?;
        Ok(outcome)
    }
}

/// Append the event a dead-lettered source message now maps to, and remove
/// its entry, in one transaction.
pub(super) struct SourceRedrive {
    subscription: String,
    seq: u64,
    /// The message's position key: it then names the appended event.
    position: String,
    event: Event,
    _admitted: Admitted,
}

/// What a source redrive did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Redriven {
    /// The entry was gone (redriven or purged meanwhile).
    Missing,
    /// Appended, or known already by its idempotency key (`duplicate`).
    Appended(Published),
}

impl Apply for SourceRedrive {
    type Answer = Redriven;
    type Checked = bool;

    fn check(&self, w: &Writes<'_>, encoded: &mut Encoded) -> Result<bool, Failure> {
        encoded.push_event(&self.event);
        Ok(w.dlq.get((self.subscription.as_str(), self.seq))?.is_some())
    }

    fn write(self, exists: bool, w: &mut Writes<'_>, mut records: Records<'_>) -> Result<Redriven, Fatal> {
        let bytes = next_record(&mut records)?;
        if !exists {
            return Ok(Redriven::Missing);
        }
        w.dlq.remove((self.subscription.as_str(), self.seq))?;
        let event = self.event;
        let published = match ingest::claim(w, &event.idempotency_key, event.id)? {
            Some(original) => {
                w.duplicates += 1;
                original
            }
            None => {
                let seq = append(w, bytes, &event)?;
                w.published += 1;
                w.ingested.push(event.idempotency_key);
                Published { id: event.id, seq, duplicate: false }
            }
        };
        w.ingest.insert(self.position.as_str(), (published.id.0, published.seq, w.expires))?;
        w.ingested.push(self.position);
        Ok(Redriven::Appended(published))
    }
}

/// A source batch refused before it was queued: why, and its positions and
/// events back.
#[allow(dead_code)]
pub(crate) type Refused = (StoreError, Vec<u64>, Vec<Event>);

/// A source batch with rejected messages, refused before it was queued:
/// why, and everything back.
pub(crate) type RefusedBatch = (StoreError, Vec<u64>, Vec<Event>, Vec<DlqEntry>);

impl Store {
    /// Append one batch of `source`'s messages from `stream` (created at
    /// `stream_created`) with their positions (`seqs`, in step with
    /// `events`), in one transaction; `reply` after the commit.
    ///
    /// # Errors
    ///
    /// Refused before it is queued, with the events given back:
    /// [`StoreError::Overloaded`] (the admission bound a publish is counted
    /// against too: wait and try again) or a batch whose lengths differ.
    /// `reply` is then not called.
    ///
    /// (The source itself commits through [`Store::source_commit`], which
    /// takes the batch's rejected messages too.)
    #[allow(dead_code)]
    pub(crate) fn source_append(
        &self,
        source: &str,
        stream: &str,
        stream_created: i64,
        seqs: Vec<u64>,
        events: Vec<Event>,
        reply: Reply<Vec<Published>>,
    ) -> Result<(), Box<Refused>> {
        if seqs.len() != events.len() {
            let error = StoreError::Decode("a source batch with a position missing (a bug in Weir)".into());
            return Err(Box::new((error, seqs, events)));
        }
        let reply: Reply<SourceOutcome> = Box::new(move |r| reply(r.map(|o| o.published)));
        self.source_commit(source, stream, stream_created, seqs, events, Vec::new(), reply)
            .map_err(|refused| Box::new((refused.0, refused.1, refused.2)))
    }

    /// [`Store::source_append`] with the batch's rejected messages as DLQ
    /// entries of `sources/<source>` (each entry's seq its stream sequence,
    /// its event's idempotency key its [`position_key`]), committed in the
    /// same transaction.
    ///
    /// # Errors
    ///
    /// As [`Store::source_append`], with everything given back.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn source_commit(
        &self,
        source: &str,
        stream: &str,
        stream_created: i64,
        seqs: Vec<u64>,
        events: Vec<Event>,
        rejected: Vec<DlqEntry>,
        reply: Reply<SourceOutcome>,
    ) -> Result<(), Box<RefusedBatch>> {
        if seqs.len() != events.len() {
            let error = StoreError::Decode("a source batch with a position missing (a bug in Weir)".into());
            return Err(Box::new((error, seqs, events, rejected)));
        }
        let admitted = match self.admit(&events) {
            Ok(admitted) => admitted,
            Err(refused) => return Err(Box::new((refused, seqs, events, rejected))),
        };
        let command = SourceAppend {
            source: source.to_owned(),
            stream: stream.to_owned(),
            stream_created,
            seqs,
            events,
            rejected,
            _admitted: admitted,
        };
        self.send(Command::SourceAppend(Order::new(command, reply)));
        Ok(())
    }

    /// Append `event`, which the DLQ entry `(subscription, seq)` of a
    /// source message now maps to, and remove the entry, in one
    /// transaction; `position` (the entry's event's idempotency key) then
    /// names the appended event. Waits for the commit.
    ///
    /// # Errors
    ///
    /// [`StoreError::Overloaded`] or the commit's error.
    pub(crate) fn source_redrive_blocking(
        &self,
        subscription: String,
        seq: u64,
        position: String,
        event: Event,
    ) -> Result<Redriven, StoreError> {
        let admitted = self.admit(std::slice::from_ref(&event))?;
        let command = SourceRedrive { subscription, seq, position, event, _admitted: admitted };
        self.ask(|reply| Command::SourceRedrive(Order::new(command, reply)))
    }

    /// The committed position of `source`, if it appended anything yet.
    ///
    /// # Errors
    ///
    /// Storage or decoding errors.
    pub fn source_position(&self, source: &str) -> Result<Option<SourcePosition>, StoreError> {
        let read = self.shared.begin_read()?;
        let table = match read.open_table(SOURCES) {
            Ok(table) => table,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(e) => return Err(storage(e)),
        };
        match table.get(source).map_err(storage)? {
            Some(bytes) => Ok(Some(decode(bytes.value(), || format!("source {source}"))?)),
            None => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::DlqFilter;
    use crate::store::testing::{answer, dlq_entry, event, temp_store};

    const SUB: &str = "sources/in";

    /// The rejected message at `seq` of stream `IN` created at `created`.
    fn rejected(seq: u64, created: i64) -> DlqEntry {
        let mut entry = dlq_entry(SUB, seq);
        entry.event.idempotency_key = position_key("in", "IN", created, seq);
        entry
    }

    fn commit(
        store: &Store,
        events: Vec<Event>,
        seqs: Vec<u64>,
        rejected: Vec<DlqEntry>,
        created: i64,
    ) -> SourceOutcome {
        let (reply, rx) = answer();
        store.source_commit("in", "IN", created, seqs, events, rejected, reply).unwrap();
        rx.recv().unwrap().unwrap()
    }

    fn keys(store: &Store) -> Vec<(u64, String)> {
        let filter = DlqFilter { subscription: Some(SUB.into()), ..DlqFilter::default() };
        store.dlq(&filter).unwrap().into_iter().map(|e| (e.seq, e.event.idempotency_key)).collect()
    }

    #[test]
    fn a_rejected_message_is_recorded_once_by_its_position() {
        let (_dir, store) = temp_store();
        let outcome = commit(&store, vec![event("a")], vec![1], vec![rejected(2, 7)], 7);
        assert_eq!((outcome.published.len(), outcome.dead_lettered, outcome.rejected_duplicates), (1, 1, 0));
        // Delivered again (a crash before the +TERM): recognised.
        let outcome = commit(&store, Vec::new(), Vec::new(), vec![rejected(2, 7), rejected(2, 7)], 7);
        assert_eq!((outcome.dead_lettered, outcome.rejected_duplicates), (0, 2));
        assert_eq!(keys(&store), vec![(2, position_key("in", "IN", 7, 2))]);
        assert_eq!(store.head(), 1, "nothing appended for it");
    }

    #[test]
    fn a_stream_created_again_gets_the_next_free_key() {
        let (_dir, store) = temp_store();
        commit(&store, Vec::new(), Vec::new(), vec![rejected(2, 7), rejected(3, 7)], 7);
        // The stream deleted and created again numbers from 1 anew: its
        // seq 2 is another message; keys 2 and 3 are taken.
        let outcome = commit(&store, Vec::new(), Vec::new(), vec![rejected(2, 9)], 9);
        assert_eq!(outcome.dead_lettered, 1);
        let listed = keys(&store);
        assert_eq!(listed.len(), 3, "{listed:?}");
        assert_eq!(listed[2], (4, position_key("in", "IN", 9, 2)));
        assert_eq!(store.dlq_entry(SUB, 4).unwrap().unwrap().seq, 4, "the entry's seq is its key");
    }

    #[test]
    fn a_redrive_appends_once_and_removes_the_entry() {
        let (_dir, store) = temp_store();
        commit(&store, Vec::new(), Vec::new(), vec![rejected(2, 7)], 7);
        let position = position_key("in", "IN", 7, 2);
        let done = store.source_redrive_blocking(SUB.into(), 2, position.clone(), event("fixed")).unwrap();
        assert!(matches!(done, Redriven::Appended(Published { seq: 0, duplicate: false, .. })), "{done:?}");
        assert!(keys(&store).is_empty());
        let again = store.source_redrive_blocking(SUB.into(), 2, position, event("fixed")).unwrap();
        assert_eq!(again, Redriven::Missing);
        assert_eq!(store.head(), 1);
        // Its position now names the appended event: a redelivery that
        // still makes no event is not dead-lettered again.
        let outcome = commit(&store, Vec::new(), Vec::new(), vec![rejected(2, 7)], 7);
        assert_eq!((outcome.dead_lettered, outcome.rejected_duplicates), (0, 1));
    }

    #[test]
    fn a_sources_entries_hold_no_log_event_back() {
        let (_dir, store) = temp_store();
        let events: Vec<Event> = (0..6).map(|i| event(&format!("k{i}"))).collect();
        store.publish_blocking(events).unwrap();
        // Its seq is a stream position (2), not log seq 2; and its source
        // is gone from the configuration (no reader registered).
        commit(&store, Vec::new(), Vec::new(), vec![rejected(2, 7)], 7);
        store.set_retention(crate::store::RetentionPolicy { rules: Vec::new(), default: crate::store::Keep::Bytes(1) });
        crate::store::testing::write_at(&store, crate::store::now_ms(), |w| {
            super::super::retention::sweep(w, &store.shared.retention).map(drop)
        });
        let left: Vec<u64> = store.read_log(0, usize::MAX).unwrap().into_iter().map(|(s, _)| s).collect();
        assert!(!left.contains(&2), "held back by a source's entry: {left:?}");
        assert!(store.retention_held().is_empty(), "{:?}", store.retention_held());
        assert_eq!(keys(&store).len(), 1, "the entry itself stays");
    }
}
