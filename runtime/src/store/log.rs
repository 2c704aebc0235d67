//! The log: seq → event, and the publish command that appends to it.

use redb::TableDefinition;
use weir_abi::Event;

use super::codec::{Encoded, Records, decode};
use super::command::{Apply, Command, Failure, Fatal, Order, Reply, next_record};
use super::writer::Writes;
use super::{Published, Store, StoreError, ingest, storage};

/// seq → encoded [`Event`].
pub(super) const LOG: TableDefinition<'_, u64, &[u8]> = TableDefinition::new("log");

/// Append events, each unless its producer key is a known duplicate.
pub(super) struct Publish {
    pub(super) events: Vec<Event>,
}

impl Apply for Publish {
    type Answer = Vec<Published>;
    type Checked = ();

    fn check(&self, _: &Writes<'_>, encoded: &mut Encoded) -> Result<(), Failure> {
        for event in &self.events {
            encoded.push(event)?;
        }
        Ok(())
    }

    fn write(self, (): (), w: &mut Writes<'_>, mut records: Records<'_>) -> Result<Vec<Published>, Fatal> {
        let mut out = Vec::with_capacity(self.events.len());
        for event in self.events {
            let bytes = next_record(&mut records)?;
            // Every published key is indexed, even one that defaults to the
            // id: a producer may publish a known id again (a replay, a retry).
            if let Some(original) = ingest::claim(w, &event.idempotency_key, event.id)? {
                w.duplicates += 1;
                out.push(original);
                continue;
            }
            let seq = append(w, bytes)?;
            w.published += 1;
            w.ingested.push(event.idempotency_key);
            out.push(Published { id: event.id, seq, duplicate: false });
        }
        Ok(out)
    }
}

/// A log position and its event, or why the record there does not decode.
pub(crate) type LogEntry = (u64, Result<Event, StoreError>);

/// Append one encoded event at the head of the log; answers its seq.
pub(super) fn append(w: &mut Writes<'_>, event: &[u8]) -> Result<u64, Fatal> {
    let seq = w.head;
    w.log.insert(seq, event)?;
    w.head += 1;
    Ok(seq)
}

impl Store {
    /// Append events (durably) and call `reply` after the commit.
    ///
    /// # Idempotency
    ///
    /// An event whose idempotency key was already published within the
    /// retention window is not stored again: its answer carries the original
    /// id and `duplicate: true`.
    pub(crate) fn publish(&self, events: Vec<Event>, reply: Reply<Vec<Published>>) {
        self.send(Command::Publish(Order::new(Publish { events }, reply)));
    }

    /// Publish and wait for the commit (the runtime publishes without waiting).
    ///
    /// # Errors
    ///
    /// The commit's error.
    pub fn publish_blocking(&self, events: Vec<Event>) -> Result<Vec<Published>, StoreError> {
        self.ask(|reply| Command::Publish(Order::new(Publish { events }, reply)))
    }

    /// Up to `limit` events from sequence number `from` on.
    ///
    /// # Errors
    ///
    /// Storage or decoding errors.
    pub fn read_log(&self, from: u64, limit: usize) -> Result<Vec<(u64, Event)>, StoreError> {
        let read = self.shared.begin_read()?;
        let log = read.open_table(LOG).map_err(storage)?;
        let mut out = Vec::with_capacity(limit.min(1024));
        for entry in log.range(from..).map_err(storage)?.take(limit) {
            let (k, v) = entry.map_err(storage)?;
            out.push((k.value(), decode::<Event>(v.value(), || format!("log seq {}", k.value()))?));
        }
        Ok(out)
    }

    /// Up to `limit` log entries from sequence number `from` on, and no more
    /// than about `max_bytes` of stored records (always at least one entry,
    /// so a single large event still moves the reader on), each decoded on
    /// its own: a record that does not decode is answered as its error, in
    /// its place, so a reader can set it aside and go on. The byte bound
    /// keeps a batch of large events from holding hundreds of megabytes.
    ///
    /// # Errors
    ///
    /// Storage errors.
    pub(crate) fn read_log_each(&self, from: u64, limit: usize, max_bytes: usize) -> Result<Vec<LogEntry>, StoreError> {
        let read = self.shared.begin_read()?;
        let log = read.open_table(LOG).map_err(storage)?;
        let mut out = Vec::with_capacity(limit.min(1024));
        let mut bytes = 0usize;
        for entry in log.range(from..).map_err(storage)?.take(limit) {
            if !out.is_empty() && bytes >= max_bytes {
                break;
            }
            let (k, v) = entry.map_err(storage)?;
            bytes = bytes.saturating_add(v.value().len());
            out.push((k.value(), decode::<Event>(v.value(), || format!("log seq {}", k.value()))));
        }
        Ok(out)
    }

    /// One event by sequence number.
    ///
    /// # Errors
    ///
    /// Storage or decoding errors.
    pub fn event(&self, seq: u64) -> Result<Option<Event>, StoreError> {
        Ok(self.read_log(seq, 1)?.into_iter().find(|(s, _)| *s == seq).map(|(_, e)| e))
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{event, temp_store};

    #[test]
    fn a_read_batch_is_bounded_by_bytes_but_always_moves_on() {
        let (_dir, store) = temp_store();
        let mut big = Vec::new();
        for i in 0..10 {
            let mut e = event(&format!("k{i}"));
            e.payload = vec![7; 100_000];
            big.push(e);
        }
        store.publish_blocking(big).unwrap();
        // 10 records of ~100 kB: a 250 kB bound stops after 3.
        assert_eq!(store.read_log_each(0, 512, 250_000).unwrap().len(), 3);
        // The count bound still holds, and a bound below one record gives one.
        assert_eq!(store.read_log_each(0, 2, usize::MAX).unwrap().len(), 2);
        let one = store.read_log_each(4, 512, 1).unwrap();
        assert_eq!(one.len(), 1);
        assert_eq!(one[0].0, 4);
    }
}
