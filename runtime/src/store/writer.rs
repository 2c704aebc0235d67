//! The writer thread and group commit.
//!
//! The writer takes every command waiting in its queue (up to
//! [`MAX_GROUP`]), applies them one after the other in one write
//! transaction ([`Writes`]), commits it with immediate durability and only
//! then answers each command. A command refused by its check is answered
//! with its own error and the rest of the group commits; a storage failure
//! fails the group and poisons the store (see [`super::command`]).

use std::mem;
use std::sync::PoisonError;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use redb::{Durability, Table, WriteTransaction};

use super::codec::Encoded;
use super::command::{Command, Fatal, Pending};
use super::ingest::{self, INGEST, INGEST_EXPIRY, IngestEntry};
use super::log::LOG;
use super::stats::{STATS, Tally};
use super::subscription::{CURSORS, DLQ, IDEMPOTENCY, IDEMPOTENCY_EXPIRY, PARKED};
use super::{Shared, StoreError, StoreOptions, gc, now_ms};

/// Most commands in one group commit.
const MAX_GROUP: usize = 4096;

/// One group's write transaction: the tables every group touches, opened
/// once per group, and what the group has done so far.
pub(super) struct Writes<'t> {
    /// For the tables only some commands open (the registry's).
    pub(super) txn: &'t WriteTransaction,
    pub(super) log: Table<'t, u64, &'static [u8]>,
    pub(super) cursors: Table<'t, &'static str, u64>,
    pub(super) parked: Table<'t, (&'static str, u64), &'static [u8]>,
    pub(super) dlq: Table<'t, (&'static str, u64), &'static [u8]>,
    pub(super) idempotency: Table<'t, (&'static str, &'static str), &'static [u8]>,
    pub(super) idempotency_expiry: Table<'t, (u64, &'static str, u64), &'static [u8]>,
    pub(super) ingest: Table<'t, &'static str, IngestEntry>,
    pub(super) ingest_expiry: Table<'t, (u64, u64), &'static [u8]>,
    stats: Table<'t, (&'static str, &'static str), u64>,
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
    batches: &'t AtomicU64,
}

/// What a committed group did.
#[derive(Debug)]
struct Committed {
    appended: bool,
    published: u64,
    duplicates: u64,
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
            cursors: txn.open_table(CURSORS)?,
            parked: txn.open_table(PARKED)?,
            dlq: txn.open_table(DLQ)?,
            idempotency: txn.open_table(IDEMPOTENCY)?,
            idempotency_expiry: txn.open_table(IDEMPOTENCY_EXPIRY)?,
            ingest: txn.open_table(INGEST)?,
            ingest_expiry: txn.open_table(INGEST_EXPIRY)?,
            stats: txn.open_table(STATS)?,
            now,
            expires: now.saturating_add(u64::try_from(retention.as_millis()).unwrap_or(u64::MAX)),
            head,
            ingested: Vec::new(),
            tally: Tally::default(),
            published: 0,
            duplicates: 0,
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
    let mut next_gc = now_ms() + options.gc_interval.as_millis() as u64;
    let mut batch: Vec<Command> = Vec::new();
    let mut encoded = Encoded::default();
    loop {
        match rx.recv_timeout(options.gc_interval) {
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
        let gc_due = now_ms() >= next_gc;
        if batch.is_empty() && !gc_due {
            continue;
        }
        let mut orders: Vec<&mut dyn Pending> = batch.iter_mut().map(Command::order).collect();
        if run_group(shared, &mut orders, &mut encoded, options, gc_due) && gc_due {
            next_gc = now_ms() + options.gc_interval.as_millis() as u64;
        }
        drop(orders);
        batch.clear();
    }
}

/// Apply `orders` as one group (collecting garbage too with `gc`), commit,
/// and answer every order. Answers whether the group committed.
fn run_group(
    shared: &Shared,
    orders: &mut [&mut dyn Pending],
    encoded: &mut Encoded,
    options: &StoreOptions,
    gc: bool,
) -> bool {
    let poisoned = shared.poisoned.lock().unwrap_or_else(PoisonError::into_inner).clone();
    if let Some(reason) = poisoned {
        let error = StoreError::Poisoned(reason);
        for order in orders {
            order.answer(Err(&error));
        }
        return false;
    }
    let started = Instant::now();
    let result = commit_group(shared, orders, encoded, options, gc);
    encoded.trim();
    match result {
        Ok(group) => {
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
            if group.appended {
                let mut watchers = shared.watchers.lock().unwrap_or_else(PoisonError::into_inner);
                watchers.retain(|wake| wake());
            }
            true
        }
        Err(Fatal(error)) => {
            tracing::error!(error = %error, "commit failed; the store refuses further writes until restarted");
            *shared.poisoned.lock().unwrap_or_else(PoisonError::into_inner) = Some(error.to_string());
            for order in orders {
                order.answer(Err(&error));
            }
            false
        }
    }
}

fn commit_group(
    shared: &Shared,
    orders: &mut [&mut dyn Pending],
    encoded: &mut Encoded,
    options: &StoreOptions,
    gc: bool,
) -> Result<Committed, Fatal> {
    let mut txn = shared.db.begin_write()?;
    txn.set_durability(Durability::Immediate)?;
    let start = shared.head.load(Ordering::Acquire);
    let mut w = Writes::open(&txn, &shared.batches, start, now_ms(), options.retention)?;
    for order in orders.iter_mut() {
        order.apply(&mut w, encoded)?;
    }
    if gc {
        gc::collect(&mut w)?;
    }
    let (published, duplicates) = (w.published, w.duplicates);
    let head = w.finish()?;
    txn.commit()?;
    shared.head.store(head, Ordering::Release);
    Ok(Committed { appended: head != start, published, duplicates })
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
    use crate::store::{DlqEntry, ParkedEntry, ResultItem, Store};

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
        let mut publish = Order::new(Publish { events: vec![event("a"), event("b")] }, reply);
        let (reply, damaged) = answer();
        let mut take_damaged = Order::new(TakeDlq(7), reply);
        let (reply, missing) = answer();
        let mut take_missing = Order::new(TakeDlq(8), reply);
        let handled = ResultItem::Handled {
            seq: 0,
            key: "a".into(),
            record: record(0, u64::MAX),
            emits: vec![event("c")],
            parked: false,
        };
        let (reply, results) = answer();
        let mut submit =
            Order::new(Results { subscription: Arc::from(SUB), items: vec![handled], cursor: Some(1) }, reply);
        let (reply, redriven) = answer();
        let mut redrive =
            Order::new(Redrive { subscription: SUB.into(), seq: 9, parked: ParkedEntry::waiting(9, None) }, reply);
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
        let committed = run_group(&store.shared, &mut orders, &mut Encoded::default(), &StoreOptions::default(), false);
        assert!(committed);

        let published = published.recv().unwrap().unwrap();
        assert_eq!(published.iter().map(|p| (p.seq, p.duplicate)).collect::<Vec<_>>(), [(0, false), (1, false)]);
        assert_eq!(damaged.recv().unwrap().unwrap_err().code(), "store_record_corrupt");
        assert!(missing.recv().unwrap().unwrap_err().to_string().contains("no dlq entry"));
        results.recv().unwrap().unwrap();
        assert!(redriven.recv().unwrap().unwrap());
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
    fn a_failed_commit_answers_every_command_with_its_error_and_poisons_the_store() {
        let fail = Arc::new(AtomicBool::new(false));
        let disk = FailingDisk { inner: redb::backends::InMemoryBackend::new(), fail: Arc::clone(&fail) };
        let store = Store::open_with_backend(disk, "failing.redb".as_ref(), StoreOptions::default()).unwrap();
        store.publish_blocking(vec![event("a")]).unwrap();
        fail.store(true, Ordering::Relaxed);

        let (reply, published) = answer();
        let mut publish = Order::new(Publish { events: vec![event("b")] }, reply);
        let (reply, synced) = answer();
        let mut barrier = Order::new(Barrier, reply);
        let mut orders: Vec<&mut dyn Pending> = vec![&mut publish, &mut barrier];
        let committed = run_group(&store.shared, &mut orders, &mut Encoded::default(), &StoreOptions::default(), false);
        assert!(!committed);
        assert_eq!(published.recv().unwrap().unwrap_err().code(), "storage");
        assert_eq!(synced.recv().unwrap().unwrap_err().code(), "storage");
        assert_eq!(store.head(), 1, "the failed group's event was not appended");

        // Poisoned: nothing more is written, even once the disk recovers.
        fail.store(false, Ordering::Relaxed);
        assert!(store.failure().unwrap().contains("simulated fsync failure"));
        assert_eq!(store.sync().unwrap_err().code(), "store_poisoned");
        assert_eq!(store.publish_blocking(vec![event("c")]).unwrap_err().code(), "store_poisoned");
    }
}
