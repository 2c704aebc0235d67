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

use redb::{ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use weir_abi::Event;

use super::codec::{Encoded, Records, decode};
use super::command::{Apply, Command, Failure, Fatal, Order, Reply, next_record};
use super::log::{Admitted, append};
use super::writer::Writes;
use super::{Published, Store, StoreError, ingest, storage};

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
    _admitted: Admitted,
}

/// The ingest key of a position of a source.
fn position_key(source: &str, stream: &str, created: i64, seq: u64) -> String {
    format!("src:{source}:{stream}@{created}:{seq}")
}

impl Apply for SourceAppend {
    type Answer = Vec<Published>;
    type Checked = SourcePosition;

    fn check(&self, w: &Writes<'_>, encoded: &mut Encoded) -> Result<SourcePosition, Failure> {
        for event in &self.events {
            encoded.push(event)?;
        }
        let table = w.txn.open_table(SOURCES)?;
        let position = match table.get(self.source.as_str())? {
            Some(bytes) => decode::<SourcePosition>(bytes.value(), || format!("source {}", self.source))?,
            None => SourcePosition::default(),
        };
        Ok(position)
    }

    fn write(
        self,
        mut position: SourcePosition,
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
        let record = super::codec::encode(&position).map_err(Fatal)?;
        w.txn.open_table(SOURCES)?.insert(self.source.as_str(), record.as_slice())?;
        Ok(out)
    }
}

/// A source batch refused before it was queued: why, and its positions and
/// events back.
pub(crate) type Refused = (StoreError, Vec<u64>, Vec<Event>);

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
        let admitted = match self.admit(&events) {
            Ok(admitted) => admitted,
            Err(refused) => return Err(Box::new((refused, seqs, events))),
        };
        let command = SourceAppend {
            source: source.to_owned(),
            stream: stream.to_owned(),
            stream_created,
            seqs,
            events,
            _admitted: admitted,
        };
        self.send(Command::SourceAppend(Order::new(command, reply)));
        Ok(())
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
