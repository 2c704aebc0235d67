//! The writer thread and group commit.
//!
//! The writer takes every command waiting in its queue (up to
//! [`MAX_GROUP`]), applies them one after the other in one write
//! transaction ([`Writes`]), commits it with immediate durability and only
//! then answers each command. A command refused by its check is answered
//! with its own error and the rest of the group commits; a storage failure
//! fails the group, the database is reopened, and writes are refused (with
//! that failure) until a retry commits (see [`super::command`]). Garbage
//! collection runs between groups, in transactions of its own ([`super::gc`]).

use std::mem;
use std::sync::PoisonError;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use redb::{Durability, Table, WriteTransaction};

use super::codec::Encoded;
use super::command::{Command, Fatal, Pending};
use super::ingest::{self, INGEST, INGEST_EXPIRY, IngestEntry};
use super::log::{CAUSED, EVENT_IDS, LOG};
use super::stats::{STATS, Tally};
use super::subscription::{CURSORS, DLQ, IDEMPOTENCY, IDEMPOTENCY_EXPIRY, PARKED};
use super::{Shared, StoreOptions, gc, now_ms};

/// Most commands in one group commit.
const MAX_GROUP: usize = 4096;

/// One group's write transaction: the tables every group touches, opened
/// once per group, and what the group has done so far.
pub(super) struct Writes<'t> {
    /// For the tables only some commands open (the registry's).
    pub(super) txn: &'t WriteTransaction,
    pub(super) log: Table<'t, u64, &'static [u8]>,
    /// The log's indexes, written with each append ([`super::log::append`]).
    pub(super) event_ids: Table<'t, u128, u64>,
    pub(super) caused: Table<'t, (u128, u64), ()>,
    /// The entity streams' index ([`super::stream`]), also written with each append.
    pub(super) streams: super::stream::Streams<'t>,
    pub(super) cursors: Table<'t, &'static str, u64>,
    pub(super) parked: Table<'t, (&'static str, u64), &'static [u8]>,
    pub(super) dlq: Table<'t, (&'static str, u64), &'static [u8]>,
    pub(super) idempotency: Table<'t, (&'static str, &'static str), &'static [u8]>,
    pub(super) idempotency_expiry: Table<'t, (u64, &'static str, u64), &'static [u8]>,
    pub(super) ingest: Table<'t, &'static str, IngestEntry>,
    pub(super) ingest_expiry: Table<'t, (u64, u64), &'static [u8]>,
    pub(super) stats: Table<'t, (&'static str, &'static str), u64>,
    /// Per entity: the stream index, aggregates' snapshots and command
    /// records ([`super::entities`]).
    pub(super) entities: Table<'t, (&'static str, &'static str, &'static [u8]), &'static [u8]>,
    /// When the group started (ms since the Unix epoch).
    pub(super) now: u64,
    /// When ingest keys indexed by this group expire.
    pub(super) expires: u64,
    /// The next sequence number of the log.
    pub(super) head: u64,
    /// Producer keys this group indexed, for its one ingest expiry batch.
    pub(super) ingested: Vec<String>,
    /// Counter increments, written once at the end of the group.
    pub(super) tally: Tally,
    /// Events this group stored, and publishes it answered as duplicates.
    pub(super) published: u64,
    pub(super) duplicates: u64,
    /// The store's failed commits so far ([`super::Store::generation`]).
    pub(super) generation: u64,
    /// The earliest fire time of the timers this group scheduled
    /// (`u64::MAX`: none), to wake the firing task after the commit.
    pub(super) timer_earliest: u64,
    batches: &'t AtomicU64,
}

/// What a committed group did.
#[derive(Debug)]
struct Committed {
    appended: bool,
    published: u64,
    duplicates: u64,
    timer_earliest: u64,
}

impl<'t> Writes<'t> {
    pub(super) fn open(
        txn: &'t WriteTransaction,
        batches: &'t AtomicU64,
        head: u64,
        now: u64,
        retention: Duration,
    ) -> Result<Self, Fatal> {
        Ok(Self {
            txn,
            log: txn.open_table(LOG)?,
            event_ids: txn.open_table(EVENT_IDS)?,
            caused: txn.open_table(CAUSED)?,
            streams: super::stream::Streams::none(),
            cursors: txn.open_table(CURSORS)?,
            parked: txn.open_table(PARKED)?,
            dlq: txn.open_table(DLQ)?,
            idempotency: txn.open_table(IDEMPOTENCY)?,
            idempotency_expiry: txn.open_table(IDEMPOTENCY_EXPIRY)?,
            ingest: txn.open_table(INGEST)?,
            ingest_expiry: txn.open_table(INGEST_EXPIRY)?,
            stats: txn.open_table(STATS)?,
            entities: txn.open_table(super::entities::ENTITIES)?,
            now,
            expires: now.saturating_add(u64::try_from(retention.as_millis()).unwrap_or(u64::MAX)),
            head,
            ingested: Vec::new(),
            tally: Tally::default(),
            published: 0,
            duplicates: 0,
            generation: 0,
            timer_earliest: u64::MAX,
            batches,
        })
    }

    /// A new name for an expiry batch. Names start at the open time in
    /// nanoseconds, so they never repeat across restarts.
    pub(super) fn next_batch(&self) -> u64 {
        self.batches.fetch_add(1, Ordering::Relaxed)
    }

    /// Write what the group accumulated (counters, the ingest expiry
    /// batch); answers the new head.
    pub(super) fn finish(mut self) -> Result<u64, Fatal> {
        mem::take(&mut self.tally).write(&mut self.stats)?;
        ingest::index_expiry(&mut self)?;
        Ok(self.head)
    }
}

pub(super) fn writer_loop(shared: &Shared, rx: &Receiver<Command>, options: &StoreOptions) {
    let interval = options.gc_interval;
    let mut next_gc = Instant::now() + interval;
    // A pass that ran out of its time budget left work: the next one runs
    // after the next group instead of a whole interval later.
    let mut gc_behind = false;
    let mut batch: Vec<Command> = Vec::new();
    let mut encoded = Encoded::default();
    loop {
        let now = Instant::now();
        let mut wait = if gc_behind { Duration::ZERO } else { next_gc.saturating_duration_since(now) };
        if let Some(retry) = shared.retry_in() {
            // Reopen a failed store without waiting for a write, so reads
            // work again as soon as possible.
            wait = wait.min(retry);
        }
        match rx.recv_timeout(wait) {
            Ok(command) => batch.push(command),
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return,
        }
        while batch.len() < MAX_GROUP {
            match rx.try_recv() {
                Ok(command) => batch.push(command),
                Err(_) => break,
            }
        }
        if !batch.is_empty() {
            let mut orders: Vec<&mut dyn Pending> = batch.iter_mut().map(Command::order).collect();
            run_group(shared, &mut orders, &mut encoded, options);
            drop(orders);
            batch.clear();
        } else if shared.retry_in() == Some(Duration::ZERO) {
            // Nothing to write, and the store is failing: an empty commit
            // tells whether it works again, so it resumes by itself.
            run_group(shared, &mut [], &mut encoded, options);
        }
        if (gc_behind || Instant::now() >= next_gc) && shared.outage_reason().is_none() {
            match run_gc(shared, options) {
                Ok(caught_up) => gc_behind = !caught_up,
                Err(Fatal(error)) => {
                    shared.failed(&error);
                    gc_behind = false;
                }
            }
            next_gc = Instant::now() + interval;
        }
    }
}

/// Apply `orders` as one group, commit, and answer every order. Answers
/// whether the group committed. While the store recovers from a failed
/// commit, the group is answered with that failure without being tried.
fn run_group(shared: &Shared, orders: &mut [&mut dyn Pending], encoded: &mut Encoded, options: &StoreOptions) -> bool {
    let db = match shared.writable() {
        Ok(db) => db,
        Err(error) => {
            for order in orders {
                order.answer(Err(&error));
            }
            return false;
        }
    };
    let started = Instant::now();
    let result = commit_group(shared, &db, orders, encoded, options);
    drop(db);
    encoded.trim();
    match result {
        Ok(group) => {
            shared.recovered();
            let count = orders.len() as u64;
            shared.commit_latency.observe(started.elapsed());
            shared.commit_size.observe(count);
            shared.published.fetch_add(group.published, Ordering::Relaxed);
            shared.published_duplicates.fetch_add(group.duplicates, Ordering::Relaxed);
            shared.commits.fetch_add(1, Ordering::Relaxed);
            shared.committed_commands.fetch_add(count, Ordering::Relaxed);
            for order in orders {
                order.answer(Ok(()));
            }
            if group.timer_earliest != u64::MAX {
                shared.timers.scheduled(group.timer_earliest);
            }
            if group.appended {
                let mut watchers = shared.watchers.lock().unwrap_or_else(PoisonError::into_inner);
                watchers.retain(|wake| wake());
            }
            true
        }
        Err(Fatal(error)) => {
            // Nothing of the group is stored: each caller hears so, and the
            // store reopens and takes writes again once a retry commits.
            shared.failed(&error);
            for order in orders {
                order.answer(Err(&error));
            }
            false
        }
    }
}

fn commit_group(
    shared: &Shared,
    db: &redb::Database,
    orders: &mut [&mut dyn Pending],
    encoded: &mut Encoded,
    options: &StoreOptions,
) -> Result<Committed, Fatal> {
    let mut txn = db.begin_write()?;
    txn.set_durability(Durability::Immediate)?;
    let start = shared.head.load(Ordering::Acquire);
    let now = now_ms();
    let mut w = Writes::open(&txn, &shared.batches, start, now, options.retention)?;
    w.generation = shared.generation.load(Ordering::Acquire);
    w.streams = super::stream::Streams::new(&options.entity_types);
    for order in orders.iter_mut() {
        order.apply(&mut w, encoded)?;
    }
    let (published, duplicates, timer_earliest) = (w.published, w.duplicates, w.timer_earliest);
    let head = w.finish()?;
    super::retention::index_time(&txn, start, head, now)?;
    txn.commit()?;
    shared.head.store(head, Ordering::Release);
    Ok(Committed { appended: head != start, published, duplicates, timer_earliest })
}

/// Most time one garbage-collection pass spends before it lets the next
/// group of writes in; what is left is collected right after that group.
pub(super) const GC_BUDGET: Duration = Duration::from_millis(50);

/// One garbage-collection pass: transactions of its own, each collecting
/// up to [`gc::GC_BATCHES`] expiry batches of each index, until nothing
/// expired is left or [`GC_BUDGET`] is spent. Answers whether it caught up.
fn run_gc(shared: &Shared, options: &StoreOptions) -> Result<bool, Fatal> {
    let started = Instant::now();
    let db = shared.database().map_err(Fatal)?;
    loop {
        let mut txn = db.begin_write()?;
        txn.set_durability(Durability::Immediate)?;
        let caught_up = {
            let head = shared.head.load(Ordering::Acquire);
            let mut w = Writes::open(&txn, &shared.batches, head, now_ms(), options.retention)?;
            let collected = gc::collect_some(&mut w)?;
            let swept = super::retention::sweep(&mut w, &shared.retention)?;
            w.finish()?;
            collected && swept
        };
        txn.commit()?;
        if caught_up {
            return Ok(true);
        }
        if started.elapsed() >= GC_BUDGET {
            tracing::debug!("garbage collection out of its time budget; it goes on after the next group");
            return Ok(false);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::AtomicBool;

    use redb::{ReadableTable as _, StorageBackend};

    use super::*;
    use crate::store::codec::{Records, decode, encode};
    use crate::store::command::{Apply, Barrier, Failure, Order};
    use crate::store::log::Publish;
    use crate::store::subscription::{Redrive, Results};
    use crate::store::testing::{answer, dlq_entry, event, record, temp_store, write_at};
    use crate::store::{DlqEntry, ParkedEntry, ResultItem, Store, StoreError};

    const SUB: &str = "orders/audit";

    /// A command that can be refused: take a DLQ entry out, answering it.
    /// It is refused when the entry is missing or does not decode.
    struct TakeDlq(u64);

    impl Apply for TakeDlq {
        type Answer = DlqEntry;
        type Checked = DlqEntry;

        fn check(&self, w: &Writes<'_>, _: &mut Encoded) -> Result<DlqEntry, Failure> {
            let Some(bytes) = w.dlq.get((SUB, self.0))? else {
                return Err(Failure::Refused(StoreError::Decode(format!("no dlq entry {SUB} seq {}", self.0))));
            };
            Ok(decode(bytes.value(), || format!("dlq {SUB} seq {}", self.0))?)
        }

        fn write(self, entry: DlqEntry, w: &mut Writes<'_>, _: Records<'_>) -> Result<DlqEntry, Fatal> {
            w.dlq.remove((SUB, self.0))?;
            Ok(entry)
        }
    }

    #[test]
    fn a_refused_command_fails_alone_and_the_rest_of_its_group_commits() {
        let (_dir, store) = temp_store();
        write_at(&store, now_ms(), |w| {
            w.dlq.insert((SUB, 7), b"not a record".as_slice())?;
            w.dlq.insert((SUB, 9), encode(&dlq_entry(SUB, 9)).map_err(Fatal)?.as_slice())?;
            Ok(())
        });

        let (reply, published) = answer();
        let mut publish = Order::new(Publish::unadmitted(vec![event("a"), event("b")]), reply);
        let (reply, damaged) = answer();
        let mut take_damaged = Order::new(TakeDlq(7), reply);
        let (reply, missing) = answer();
        let mut take_missing = Order::new(TakeDlq(8), reply);
        let handled = ResultItem::Handled {
            seq: 0,
            key: "a".into(),
            record: record(0, u64::MAX),
            derived: false,
            emits: vec![crate::store::EmitRecord::new(&event("c"))],
            parked: false,
            state: Vec::new(),
            timers: Vec::new(),
        };
        let (reply, results) = answer();
        let mut submit = Order::new(
            Results { subscription: Arc::from(SUB), items: vec![handled], cursor: Some(1), since: None },
            reply,
        );
        let (reply, redriven) = answer();
        let mut redrive =
            Order::new(Redrive { subscription: SUB.into(), entries: vec![ParkedEntry::waiting(9, None)] }, reply);
        // Applied after the redrive in the same group: the entry is gone.
        let (reply, taken_after) = answer();
        let mut take_redriven = Order::new(TakeDlq(9), reply);
        let (reply, synced) = answer();
        let mut barrier = Order::new(Barrier, reply);

        let mut orders: Vec<&mut dyn Pending> = vec![
            &mut publish,
            &mut take_damaged,
            &mut take_missing,
            &mut submit,
            &mut redrive,
            &mut take_redriven,
            &mut barrier,
        ];
        let committed = run_group(&store.shared, &mut orders, &mut Encoded::default(), &StoreOptions::default());
        assert!(committed);

        let published = published.recv().unwrap().unwrap();
        assert_eq!(published.iter().map(|p| (p.seq, p.duplicate)).collect::<Vec<_>>(), [(0, false), (1, false)]);
        assert_eq!(damaged.recv().unwrap().unwrap_err().code(), "store_record_corrupt");
        assert!(missing.recv().unwrap().unwrap_err().to_string().contains("no dlq entry"));
        results.recv().unwrap().unwrap();
        assert_eq!(redriven.recv().unwrap().unwrap(), [true]);
        assert!(taken_after.recv().unwrap().unwrap_err().to_string().contains("no dlq entry"));
        synced.recv().unwrap().unwrap();

        // The good commands committed; the refused ones wrote nothing and
        // the damaged entry is where it was.
        assert_eq!(store.failure(), None);
        let log: Vec<String> = store.read_log(0, 10).unwrap().into_iter().map(|(_, e)| e.idempotency_key).collect();
        assert_eq!(log, ["a", "b", "c"]);
        assert_eq!(store.cursor(SUB).unwrap(), 1);
        assert!(store.idempotency(SUB, &["a"]).unwrap()[0].is_some());
        assert_eq!(store.parked(SUB).unwrap(), [ParkedEntry::waiting(9, None)]);
        assert_eq!(store.dlq_counts().unwrap().get(SUB), Some(&1));
        let stats = store.stats(SUB).unwrap();
        assert_eq!((stats.handled, stats.emitted), (1, 1));
        assert_eq!(store.publish_stats(), (2, 0));
        assert_eq!(store.head(), 3);

        // The store takes writes as before.
        assert_eq!(store.publish_blocking(vec![event("d")]).unwrap()[0].seq, 3);
        assert!(store.publish_blocking(vec![event("a")]).unwrap()[0].duplicate);
    }

    /// An in-memory disk whose fsync fails on demand.
    #[derive(Debug)]
    struct FailingDisk {
        inner: redb::backends::InMemoryBackend,
        fail: Arc<AtomicBool>,
    }

    impl StorageBackend for FailingDisk {
        fn len(&self) -> Result<u64, std::io::Error> {
            self.inner.len()
        }

        fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), std::io::Error> {
            self.inner.read(offset, out)
        }

        fn set_len(&self, len: u64) -> Result<(), std::io::Error> {
            self.inner.set_len(len)
        }

        fn sync_data(&self) -> Result<(), std::io::Error> {
            if self.fail.load(Ordering::Relaxed) {
                return Err(std::io::Error::other("simulated fsync failure"));
            }
            self.inner.sync_data()
        }

        fn write(&self, offset: u64, data: &[u8]) -> Result<(), std::io::Error> {
            self.inner.write(offset, data)
        }
    }

    #[test]
    fn a_failed_commit_answers_every_command_with_its_error_and_the_store_recovers() {
        let fail = Arc::new(AtomicBool::new(false));
        let disk = FailingDisk { inner: redb::backends::InMemoryBackend::new(), fail: Arc::clone(&fail) };
        let store = Store::open_with_backend(disk, "failing.redb".as_ref(), StoreOptions::default()).unwrap();
        store.publish_blocking(vec![event("a")]).unwrap();
        let pinned = store.pinned();
        fail.store(true, Ordering::Relaxed);

        let (reply, published) = answer();
        let mut publish = Order::new(Publish::unadmitted(vec![event("b")]), reply);
        let (reply, synced) = answer();
        let mut barrier = Order::new(Barrier, reply);
        let mut orders: Vec<&mut dyn Pending> = vec![&mut publish, &mut barrier];
        let committed = run_group(&store.shared, &mut orders, &mut Encoded::default(), &StoreOptions::default());
        assert!(!committed);
        assert_eq!(published.recv().unwrap().unwrap_err().code(), "storage");
        assert_eq!(synced.recv().unwrap().unwrap_err().code(), "storage");
        assert_eq!(store.head(), 1, "the failed group's event was not appended");
        assert!(store.failure().unwrap().contains("simulated fsync failure"));

        // Once the disk works again, the store takes writes by itself.
        fail.store(false, Ordering::Relaxed);
        let deadline = Instant::now() + Duration::from_secs(10);
        let seq = loop {
            match store.publish_blocking(vec![event("c")]) {
                Ok(published) => break published[0].seq,
                Err(e) => {
                    assert!(Instant::now() < deadline, "the store never recovered: {e}");
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        };
        assert_eq!(store.failure(), None);
        assert_eq!(store.head(), seq + 1);
        // "b" was not acknowledged; this simulated disk kept the bytes its
        // failed fsync was given, so the reopened store may hold it (a
        // producer's retry with its key is then a duplicate).
        let keys: Vec<String> = store.read_log(0, 10).unwrap().into_iter().map(|(_, e)| e.idempotency_key).collect();
        assert!(keys == ["a", "c"] || keys == ["a", "b", "c"], "{keys:?}");

        // A batch of outcomes built before the failure is refused: one
        // built with it may be lost, and nothing may commit after it.
        let (tx, rx) = std::sync::mpsc::channel();
        pinned.submit(Arc::from(SUB), Vec::new(), Some(5), Box::new(move |r| drop(tx.send(r))));
        assert_eq!(rx.recv().unwrap().unwrap_err().code(), "store_interrupted");
        assert_eq!(store.cursor(SUB).unwrap(), 0);
        let (tx, rx) = std::sync::mpsc::channel();
        store.pinned().submit(Arc::from(SUB), Vec::new(), Some(5), Box::new(move |r| drop(tx.send(r))));
        rx.recv().unwrap().unwrap();
        assert_eq!(store.cursor(SUB).unwrap(), 5);
    }
}
