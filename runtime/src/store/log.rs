//! The log: seq → event, and the publish command that appends to it.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

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
    /// The publish's share of the admission bound, given back when the
    /// command is dropped: applied, refused or never run.
    pub(super) _admitted: Admitted,
}

/// Bytes of a publish counted against `max_queued_publish_bytes` while it
/// waits for the writer.
pub(super) struct Admitted {
    queued: Arc<AtomicUsize>,
    bytes: usize,
}

#[cfg(test)]
impl Publish {
    /// A publish outside admission control, for the writer's unit tests.
    pub(super) fn unadmitted(events: Vec<Event>) -> Self {
        Self { events, _admitted: Admitted { queued: Arc::new(AtomicUsize::new(0)), bytes: 0 } }
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        self.queued.fetch_sub(self.bytes, Ordering::AcqRel);
    }
}

impl Store {
    /// Count `events` against the admission bound, or refuse them.
    fn admit(&self, events: &[Event]) -> Result<Admitted, StoreError> {
        let bytes = events.iter().map(|e| e.payload.len().saturating_add(super::PUBLISH_OVERHEAD)).sum::<usize>();
        let queued = &self.shared.queued_publish_bytes;
        let limit = self.shared.max_queued_publish_bytes;
        let mut now = queued.load(Ordering::Acquire);
        loop {
            // An oversized publish still passes when nothing else waits.
            if now > 0 && now.saturating_add(bytes) > limit {
                return Err(StoreError::Overloaded { queued: now, limit });
            }
            match queued.compare_exchange_weak(now, now.saturating_add(bytes), Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return Ok(Admitted { queued: Arc::clone(queued), bytes }),
                Err(actual) => now = actual,
            }
        }
    }
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
        match self.admit(&events) {
            Ok(admitted) => self.send(Command::Publish(Order::new(Publish { events, _admitted: admitted }, reply))),
            Err(refused) => reply(Err(refused)),
        }
    }

    /// Publish and wait for the commit (the runtime publishes without waiting).
    ///
    /// # Errors
    ///
    /// The commit's error.
    pub fn publish_blocking(&self, events: Vec<Event>) -> Result<Vec<Published>, StoreError> {
        let admitted = self.admit(&events)?;
        self.ask(|reply| Command::Publish(Order::new(Publish { events, _admitted: admitted }, reply)))
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
    use super::super::{PUBLISH_OVERHEAD, Store, StoreError, StoreOptions};

    #[test]
    fn publishes_past_the_queued_bytes_bound_are_refused_until_the_queue_drains() {
        let dir = tempfile::tempdir().unwrap();
        let options = StoreOptions { max_queued_publish_bytes: 1000, ..StoreOptions::default() };
        let store = Store::open(&dir.path().join("weir.redb"), options).unwrap();
        let sized = |n: usize| {
            let mut e = event("k");
            e.payload = vec![0; n];
            e
        };
        // A publish held by the queue counts; the next one that would pass
        // the bound is refused at once, naming both numbers.
        let held = store.admit(&[sized(600 - PUBLISH_OVERHEAD)]).unwrap();
        match store.admit(&[sized(600 - PUBLISH_OVERHEAD)]) {
            Err(StoreError::Overloaded { queued: 600, limit: 1000 }) => {}
            other => panic!("expected overloaded, got {:?}", other.map(|_| ())),
        }
        let refused = store.publish_blocking(vec![sized(600 - PUBLISH_OVERHEAD)]).unwrap_err();
        assert_eq!(refused.code(), "overloaded");
        assert_eq!(store.head(), 0, "nothing of a refused publish is stored");
        // Once the held publish is applied (here: dropped), room is back.
        drop(held);
        assert_eq!(store.publish_blocking(vec![sized(600 - PUBLISH_OVERHEAD)]).unwrap().len(), 1);
        // A publish bigger than the whole bound passes when nothing waits.
        assert_eq!(store.publish_blocking(vec![sized(5000)]).unwrap().len(), 1);
        assert_eq!(store.shared.queued_publish_bytes.load(std::sync::atomic::Ordering::Acquire), 0);
    }

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
