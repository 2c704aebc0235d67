//! The log: seq → event, its two indexes (event id → seq, and causation id
//! → the seqs of the events it caused), the publish command that appends to
//! it, and the reads: by position, by id, by cause, and filtered scans.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use redb::{Table, TableDefinition};
use weir_abi::{Event, EventId};

use super::codec::{self, EmitRecord, Encoded, Records, decode, decode_event};
use super::command::{Apply, Command, Failure, Fatal, Order, Reply, next_record};
use super::writer::Writes;
use super::{ParkedEntry, Published, Store, StoreError, ingest, storage};

/// seq → encoded [`Event`].
pub(super) const LOG: TableDefinition<'_, u64, &[u8]> = TableDefinition::new("log");
/// event id → seq of the first event stored with it (`GET /v1/events/{id}`).
/// Written in the transaction of each append (format 3 on).
pub(super) const EVENT_IDS: TableDefinition<'_, u128, u64> = TableDefinition::new("event_ids");
/// (causation id, seq) → nothing: the events each event caused, for
/// lineage. Written in the transaction of each append (format 3 on).
pub(super) const CAUSED: TableDefinition<'_, (u128, u64), ()> = TableDefinition::new("caused");

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
    pub(super) fn admit(&self, events: &[Event]) -> Result<Admitted, StoreError> {
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
            encoded.push_event(event);
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
            let seq = append(w, bytes, &event)?;
            w.published += 1;
            w.ingested.push(event.idempotency_key);
            out.push(Published { id: event.id, seq, duplicate: false });
        }
        Ok(out)
    }
}

/// [`Store::read_log_each`] within `read`.
pub(super) fn read_log_each_in(
    read: &redb::ReadTransaction,
    from: u64,
    limit: usize,
    max_bytes: usize,
    wanted: &dyn Fn(&str) -> bool,
) -> Result<Vec<LogEntry>, StoreError> {
    let log = read.open_table(LOG).map_err(storage)?;
    let mut out = Vec::with_capacity(limit.min(1024));
    let mut bytes = 0usize;
    for entry in log.range(from..).map_err(storage)?.take(limit) {
        if bytes >= max_bytes.max(1) {
            break;
        }
        let (k, v) = entry.map_err(storage)?;
        let (seq, record) = (k.value(), v.value());
        let what = || format!("log seq {seq}");
        let decoded = codec::verify(record, what).and_then(|body| match codec::event_topic(body, what) {
            Ok(topic) if !wanted(topic) => Ok(None),
            Ok(_) => {
                bytes = bytes.saturating_add(record.len());
                codec::decode_event_body(body, what).map(Some)
            }
            Err(e) => Err(e),
        });
        out.push((seq, decoded));
    }
    Ok(out)
}

/// A log position and its event (`None`: of a topic the reader does not
/// want, not decoded), or why the record there does not decode.
pub(crate) type LogEntry = (u64, Result<Option<Event>, StoreError>);

/// Append one encoded event (`record`, the encoding of `event`) at the head
/// of the log and index it (its id, its cause and its entity stream);
/// answers its seq.
pub(super) fn append(w: &mut Writes<'_>, record: &[u8], event: &Event) -> Result<u64, Fatal> {
    let seq = w.head;
    w.log.insert(seq, record)?;
    index(&mut w.event_ids, &mut w.caused, seq, event)?;
    w.streams.index(&mut w.entities, seq, event)?;
    w.head += 1;
    Ok(seq)
}

/// [`append`] for an event a stream append checked: it is revision
/// `revision` of the stream `ty`/`key`, indexed as such without looking
/// the stream's last revision up again.
pub(super) fn append_at(
    w: &mut Writes<'_>,
    record: &[u8],
    event: &Event,
    (ty, key, revision): (&str, &str, u64),
) -> Result<u64, Fatal> {
    let seq = w.head;
    w.log.insert(seq, record)?;
    index(&mut w.event_ids, &mut w.caused, seq, event)?;
    super::stream::put(&mut w.entities, ty, key, revision, seq)?;
    w.head += 1;
    Ok(seq)
}

/// Append an emitted event the worker encoded ([`EmitRecord`]) at the head
/// of the log and index it, as [`append`]; answers its seq.
pub(super) fn append_emit(w: &mut Writes<'_>, emit: &EmitRecord) -> Result<u64, Fatal> {
    let seq = w.head;
    w.log.insert(seq, emit.record())?;
    index_ids(&mut w.event_ids, &mut w.caused, seq, emit.id, emit.causation_id)?;
    if w.streams.is_on() {
        let (topic, key) = emit.topic_and_key().map_err(|e| Fatal(StoreError::Decode(e.to_string())))?;
        w.streams.index_as(&mut w.entities, seq, topic, key)?;
    }
    w.head += 1;
    Ok(seq)
}

/// Index the event at `seq`: its id (the first event stored with an id
/// keeps it: a producer may reuse an id under another idempotency key), and
/// its cause.
pub(super) fn index(
    ids: &mut Table<'_, u128, u64>,
    caused: &mut Table<'_, (u128, u64), ()>,
    seq: u64,
    event: &Event,
) -> Result<(), redb::StorageError> {
    index_ids(ids, caused, seq, event.id, event.causation_id)
}

/// [`index`] for an event of id `id` and cause `cause`.
fn index_ids(
    ids: &mut Table<'_, u128, u64>,
    caused: &mut Table<'_, (u128, u64), ()>,
    seq: u64,
    id: EventId,
    cause: Option<EventId>,
) -> Result<(), redb::StorageError> {
    let id = id.as_u128();
    let earlier = ids.insert(id, seq)?.map(|v| v.value());
    if let Some(earlier) = earlier
        && earlier < seq
    {
        ids.insert(id, earlier)?;
    }
    if let Some(cause) = cause {
        caused.insert((cause.as_u128(), seq), ())?;
    }
    Ok(())
}

/// What [`Store::scan_log`] found: the matching events, the last position
/// it looked at (where the next scan resumes, exclusive), and whether it got
/// to the head of the log.
#[derive(Debug, Default)]
pub(crate) struct Scan {
    pub(crate) events: Vec<(u64, Event)>,
    pub(crate) last: Option<u64>,
    pub(crate) at_head: bool,
}

/// How much one [`Store::scan_log`] may read and answer.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ScanBounds {
    /// Matching events to answer.
    pub(crate) limit: usize,
    /// Stored bytes of the answered events (always at least one event).
    pub(crate) max_answer_bytes: usize,
    /// Log entries to look at, matching or not.
    pub(crate) max_scanned: usize,
    /// Stored bytes to look at, matching or not (always at least one entry).
    pub(crate) max_scanned_bytes: usize,
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
            out.push((k.value(), decode_event(v.value(), || format!("log seq {}", k.value()))?));
        }
        Ok(out)
    }

    /// Up to `limit` log entries from sequence number `from` on, and no more
    /// than about `max_bytes` of the stored records it decodes (always at
    /// least one entry, so a single large event still moves the reader on),
    /// each decoded on its own: a record that does not decode is answered as
    /// its error, in its place, so a reader can set it aside and go on. The
    /// byte bound keeps a batch of large events from holding hundreds of
    /// megabytes.
    ///
    /// An event of a topic `wanted` refuses is answered as `Ok(None)` in its
    /// place (so the reader moves past it) without being decoded: only its
    /// checksum and its topic are read ([`codec::event_topic`]), and it does
    /// not count against `max_bytes`. (Letting a read look further than
    /// `limit` entries for its own topics measured slower on the chained
    /// pipelines: larger batches, less overlap between the stages.)
    ///
    /// # Errors
    ///
    /// Storage errors.
    pub(crate) fn read_log_each(
        &self,
        from: u64,
        limit: usize,
        max_bytes: usize,
        wanted: &dyn Fn(&str) -> bool,
    ) -> Result<Vec<LogEntry>, StoreError> {
        let read = self.shared.begin_read()?;
        read_log_each_in(&read, from, limit, max_bytes, wanted)
    }

    /// The events after `after` (from the start when `None`) that `keep`
    /// selects, within `bounds`: a sparse filter stops after
    /// `max_scanned` entries and answers the position it got to, so the
    /// next scan resumes there instead of reading the same entries again.
    /// A record that does not decode is skipped (with a warning): a reader
    /// must get past it.
    ///
    /// # Errors
    ///
    /// Storage errors.
    pub(crate) fn scan_log(
        &self,
        after: Option<u64>,
        bounds: ScanBounds,
        keep: &dyn Fn(&Event) -> bool,
    ) -> Result<Scan, StoreError> {
        let from = match after {
            Some(after) => match after.checked_add(1) {
                Some(from) => from,
                None => return Ok(Scan { events: Vec::new(), last: Some(after), at_head: true }),
            },
            None => 0,
        };
        let read = self.shared.begin_read()?;
        let log = read.open_table(LOG).map_err(storage)?;
        let mut scan = Scan { events: Vec::new(), last: after, at_head: true };
        let (mut scanned, mut scanned_bytes, mut answer_bytes) = (0usize, 0usize, 0usize);
        for entry in log.range(from..).map_err(storage)? {
            if scan.events.len() >= bounds.limit
                || (!scan.events.is_empty() && answer_bytes >= bounds.max_answer_bytes)
                || scanned >= bounds.max_scanned
                || (scanned > 0 && scanned_bytes >= bounds.max_scanned_bytes)
            {
                scan.at_head = false;
                break;
            }
            let (k, v) = entry.map_err(storage)?;
            let (seq, bytes) = (k.value(), v.value());
            scanned += 1;
            scanned_bytes = scanned_bytes.saturating_add(bytes.len());
            scan.last = Some(seq);
            match decode_event(bytes, || format!("log seq {seq}")) {
                Ok(event) if keep(&event) => {
                    answer_bytes = answer_bytes.saturating_add(bytes.len());
                    scan.events.push((seq, event));
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "a log reader skips a record that does not decode"),
            }
        }
        Ok(scan)
    }

    /// The position of the event with this id, through the id index.
    ///
    /// # Errors
    ///
    /// Storage errors.
    pub fn seq_of(&self, id: EventId) -> Result<Option<u64>, StoreError> {
        let read = self.shared.begin_read()?;
        let ids = read.open_table(EVENT_IDS).map_err(storage)?;
        Ok(ids.get(id.as_u128()).map_err(storage)?.map(|v| v.value()))
    }

    /// Positions of up to `limit` events caused by the event `id` (their
    /// `causation_id`), in log order, through the causation index.
    ///
    /// # Errors
    ///
    /// Storage errors.
    pub fn caused_by(&self, id: EventId, limit: usize) -> Result<Vec<u64>, StoreError> {
        let read = self.shared.begin_read()?;
        let caused = read.open_table(CAUSED).map_err(storage)?;
        let cause = id.as_u128();
        let mut out = Vec::new();
        for entry in caused.range((cause, 0)..=(cause, u64::MAX)).map_err(storage)?.take(limit) {
            let (k, _) = entry.map_err(storage)?;
            out.push(k.value().1);
        }
        Ok(out)
    }

    /// The parked (retrying or waiting) entry of `subscription` at `seq`,
    /// looked up by its key (a lineage asks for one; `parked` reads all).
    ///
    /// # Errors
    ///
    /// Storage or decoding errors.
    pub(crate) fn parked_entry(&self, subscription: &str, seq: u64) -> Result<Option<ParkedEntry>, StoreError> {
        let read = self.shared.begin_read()?;
        let table = read.open_table(super::subscription::PARKED).map_err(storage)?;
        let Some(v) = table.get((subscription, seq)).map_err(storage)? else { return Ok(None) };
        decode(v.value(), || format!("parked {subscription} seq {seq}")).map(Some)
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
    fn the_indexes_find_events_by_id_and_by_cause_and_a_bounded_scan_resumes() {
        use super::ScanBounds;
        let (_dir, store) = temp_store();
        let a = event("a");
        let mut b = event("b");
        b.causation_id = Some(a.id);
        b.topic = "orders.order.validated".into();
        let mut c = event("c");
        c.causation_id = Some(a.id);
        store.publish_blocking(vec![a.clone(), b.clone(), c]).unwrap();
        assert_eq!(store.seq_of(b.id).unwrap(), Some(1));
        assert_eq!(store.seq_of(weir_abi::EventId([9; 16])).unwrap(), None);
        assert_eq!(store.caused_by(a.id, 10).unwrap(), [1, 2]);
        assert_eq!(store.caused_by(a.id, 1).unwrap(), [1]);
        assert_eq!(store.caused_by(b.id, 10).unwrap(), Vec::<u64>::new());
        // An id used again (another idempotency key) keeps its first position.
        let mut again = event("d");
        again.id = a.id;
        store.publish_blocking(vec![again]).unwrap();
        assert_eq!(store.seq_of(a.id).unwrap(), Some(0));

        // A scan that may look at 2 entries stops there and says where.
        let bounds =
            ScanBounds { limit: 10, max_answer_bytes: usize::MAX, max_scanned: 2, max_scanned_bytes: usize::MAX };
        let validated = |e: &weir_abi::Event| e.topic == "orders.order.validated";
        let first = store.scan_log(None, bounds, &validated).unwrap();
        assert_eq!(first.events.iter().map(|(s, _)| *s).collect::<Vec<_>>(), [1]);
        assert_eq!((first.last, first.at_head), (Some(1), false));
        let second = store.scan_log(first.last, bounds, &validated).unwrap();
        assert!(second.events.is_empty());
        assert_eq!((second.last, second.at_head), (Some(3), true));
        // Past the head: nothing, and the position stays.
        let third = store.scan_log(Some(3), bounds, &|_| true).unwrap();
        assert_eq!((third.events.len(), third.last, third.at_head), (0, Some(3), true));
        // The limit and the answer's bytes bound (at least one event).
        let everything = ScanBounds { limit: 2, ..bounds };
        let everything = ScanBounds { max_scanned: 100, ..everything };
        let page = store.scan_log(None, everything, &|_| true).unwrap();
        assert_eq!((page.events.len(), page.last, page.at_head), (2, Some(1), false));
        let tiny = ScanBounds { limit: 10, max_answer_bytes: 1, max_scanned: 100, max_scanned_bytes: usize::MAX };
        assert_eq!(store.scan_log(None, tiny, &|_| true).unwrap().events.len(), 1);
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
        let all = |_: &str| true;
        assert_eq!(store.read_log_each(0, 512, 250_000, &all).unwrap().len(), 3);
        // The count bound still holds, and a bound below one record gives one.
        assert_eq!(store.read_log_each(0, 2, usize::MAX, &all).unwrap().len(), 2);
        let one = store.read_log_each(4, 512, 1, &all).unwrap();
        assert_eq!(one.len(), 1);
        assert_eq!(one[0].0, 4);
    }

    #[test]
    fn a_read_passes_other_topics_without_decoding_them() {
        let (_dir, store) = temp_store();
        let mut events = Vec::new();
        for i in 0..40 {
            let mut e = event(&format!("k{i}"));
            e.topic = if i % 4 == 0 { "mine.a.b".into() } else { "other.a.b".into() };
            e.payload = vec![1; 1000];
            events.push(e);
        }
        store.publish_blocking(events).unwrap();
        let mine = |t: &str| t == "mine.a.b";
        // 9 entries: seqs 0, 4 and 8 are mine, the others passed as None.
        let read = store.read_log_each(0, 9, usize::MAX, &mine).unwrap();
        assert_eq!(read.iter().map(|(s, _)| *s).collect::<Vec<_>>(), (0..9).collect::<Vec<_>>());
        let got: Vec<u64> = read.iter().filter(|(_, e)| e.as_ref().unwrap().is_some()).map(|(s, _)| *s).collect();
        assert_eq!(got, [0, 4, 8]);
        for (seq, entry) in &read {
            if let Some(e) = entry.as_ref().unwrap() {
                assert_eq!(e.idempotency_key, format!("k{seq}"));
            }
        }
        // Only decoded records count against the byte bound: the others
        // between them do not end the read.
        let bounded = store.read_log_each(0, 40, 1500, &mine).unwrap();
        assert_eq!(bounded.last().map(|(s, _)| *s), Some(4), "two of mine make 1,500 bytes");
    }
}
