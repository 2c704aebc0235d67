//! The store: one redb file holding the log, subscription cursors and parked
//! (retrying) events, idempotency records, the dead-letter queue, the
//! ingest de-duplication index and the plugin registry. The only module that
//! names `redb`.
//!
//! # Durability
//!
//! All writes go through one writer thread. It takes every command waiting in
//! its queue (publishes and invocation results alike), applies them in one
//! write transaction and commits with immediate durability (fsync): group
//! commit. A caller's reply is sent only after the commit that holds its
//! command returned, so an acknowledged publish survives `kill -9`. After a
//! failed commit (a full disk, an I/O error) the writer closes and reopens
//! the database, so reads go on; it refuses writes with the failure while it
//! backs off, then tries again, and the first commit that succeeds ends the
//! outage. Outcome batches built before the failure are refused
//! ([`StoreError::Interrupted`]), so nothing commits after a lost batch.
//!
//! # Layout
//!
//! Each family of tables lives in one file with its table definitions, the
//! commands that write it and the `Store` methods that read it:
//!
//! - `log.rs`: `log` (seq → event) and its indexes `event_ids` (id → seq)
//!   and `caused` (causation id, seq), written with each append; the
//!   publish command; filtered scans.
//! - `ingest.rs`: `ingest_dedup` and `ingest_expiry`, the producer keys
//!   published within the retention window.
//! - `subscription.rs`: `cursors`, `parked`, `dlq`, `idempotency` and
//!   `idempotency_expiry`; the results, redrive and purge commands.
//! - `registry.rs`: `modules`, `versions` and `active`; the deploy command.
//! - `stats.rs`: `stats`, the per-subscription counters.
//! - `mod.rs`: `meta` (the store format); [`Store`], [`StoreOptions`] and
//!   opening.
//!
//! Beside them: `writer.rs` (the writer thread and group commit),
//! `command.rs` (the command list, the `Apply` trait every command
//! implements, and which failures fail one command or the whole group),
//! `gc.rs` (expired idempotency records and ingest keys), `codec.rs` (the
//! record format: a version byte and a CRC-32 before every value),
//! `migrate.rs` (format 1 → 2), `open.rs` (opening a file without trusting
//! it), `error.rs` and `types.rs` (the records callers see).
//!
//! # Threads
//!
//! One writer thread (`weir-writer`) owns every write. A `Store` method that
//! changes the store sends a command over a channel and is answered through
//! its [`Reply`], called on the writer thread after the commit (the
//! `_blocking` methods wait for it). The writer takes every command waiting,
//! up to 4096, applies them in arrival order in one write transaction and
//! commits once, so one fsync serves the whole group; it then moves the
//! log's head, answers each command and wakes the log's watchers. A command
//! its own check refuses (a record that does not encode or decode) gets its
//! error while the rest of its group commits; a storage failure fails the
//! group, and writes are refused until a retry commits (see Durability).
//!
//! Readers (`read_log`, `idempotency`, `dlq`, …) open their own read
//! transaction on the calling thread: they see the last committed group,
//! never part of one, and never wait for the writer.

mod codec;
mod command;
pub(crate) mod consumer;
mod error;
mod fuzz;
mod gc;
mod ingest;
mod lifecycle;
mod log;
mod migrate;
mod open;
mod registry;
mod retention;
mod stats;
mod subscription;
#[cfg(test)]
mod testing;
mod types;
mod writer;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Sender};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use redb::{Database, ReadTransaction, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};

pub(crate) use command::Reply;
pub use error::StoreError;
pub(crate) use fuzz::record as fuzz_record;
pub use lifecycle::{HOLDINGS_COUNT_CAP, Holdings};
pub use retention::{HeldBack, Keep, RetentionPolicy, RetentionReader, RetentionRule, StartPosition};
pub use subscription::DlqPage;
pub use types::{DlqEntry, DlqFilter, ParkedEntry, Published, VersionRecord};
pub(crate) use types::{IdempotencyRecord, ResultItem, SubscriptionStats};

use command::{Barrier, Command, Order};
use error::storage;
use ingest::{INGEST, INGEST_EXPIRY};
pub(crate) use log::ScanBounds;
use log::{CAUSED, EVENT_IDS, LOG};
use open::{contain_panics, create_private_file, existing_store, open_error};
use registry::{ACTIVE, MODULES, VERSIONS};
use stats::STATS;
use subscription::{CURSORS, DLQ, IDEMPOTENCY, IDEMPOTENCY_EXPIRY, PARKED};
use writer::writer_loop;

/// name → value: `format` holds [`FORMAT_VERSION`].
const META: TableDefinition<'_, &str, u64> = TableDefinition::new("meta");
/// The store layout this build reads and writes. Format 1 (no record
/// checksums, ambiguous CloudEvents keys) and format 2 (no event id and
/// causation indexes) are migrated on open.
pub const FORMAT_VERSION: u64 = 3;

/// Default idempotency and ingest de-duplication window.
pub(crate) const DEFAULT_RETENTION: Duration = Duration::from_secs(24 * 3600);

/// Milliseconds since the Unix epoch.
#[must_use]
pub(crate) fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// Options of [`Store::open`].
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// How long idempotency records and ingest de-duplication keys are kept.
    /// By default 24 h.
    pub retention: Duration,
    /// How often expired records are collected. By default every minute.
    pub gc_interval: Duration,
    /// How many of each handler's latest deploy-history entries keep their
    /// module: a deploy deletes the modules that neither these nor an
    /// active version use. By default 10; at least 1 is used.
    pub keep_versions: usize,
    /// Admission control for publishes: the most event bytes (payloads plus
    /// [`PUBLISH_OVERHEAD`] per event) waiting for the writer at once. A
    /// publish that would pass it is refused at once with
    /// [`StoreError::Overloaded`] (HTTP `503` with `Retry-After`) instead of
    /// queueing without bound. By default 256 MiB; a single publish larger
    /// than the bound is admitted when nothing else waits, so it can never
    /// be refused forever.
    pub max_queued_publish_bytes: usize,
}

/// What one queued event is charged for admission beyond its payload: its
/// other fields and the queue's own bookkeeping, roughly.
pub const PUBLISH_OVERHEAD: usize = 256;

impl Default for StoreOptions {
    fn default() -> Self {
        Self {
            retention: DEFAULT_RETENTION,
            gc_interval: Duration::from_secs(60),
            keep_versions: 10,
            max_queued_publish_bytes: 256 << 20,
        }
    }
}

struct Shared {
    /// The open database; `None` while the writer reopens it after a
    /// failed commit (redb refuses every access after an I/O error until
    /// the database is closed and opened again).
    db: RwLock<Option<Arc<Database>>>,
    /// How to open the database again.
    source: Source,
    path: PathBuf,
    /// Next sequence number to assign = number of the first event not yet in the log.
    head: AtomicU64,
    /// Why writes are refused now, after a failed commit, and when the
    /// writer tries again.
    outage: Mutex<Option<Outage>>,
    /// Failed commits since open. A subscription's outcome batch carries
    /// the number it started under: a batch built before a failure is
    /// refused, so nothing after a lost batch can commit.
    generation: AtomicU64,
    /// Called after every commit that appended to the log; a watcher that
    /// returns `false` is dropped.
    watchers: Mutex<Vec<Box<dyn Fn() -> bool + Send>>>,
    commits: AtomicU64,
    committed_commands: AtomicU64,
    /// Time per group commit (apply + fsync).
    commit_latency: crate::metrics::Histogram,
    /// Commands per group commit.
    commit_size: crate::metrics::SizeHistogram,
    /// Events published (stored) and publishes refused as duplicates.
    published: AtomicU64,
    published_duplicates: AtomicU64,
    /// Event bytes of publishes sent to the writer and not yet applied.
    queued_publish_bytes: Arc<std::sync::atomic::AtomicUsize>,
    max_queued_publish_bytes: usize,
    /// Names expiry batches; starts at the open time in nanoseconds so names
    /// never repeat across restarts.
    batches: AtomicU64,
    /// [`StoreOptions::keep_versions`].
    keep_versions: usize,
    /// The log's retention policy, its readers and what the pass reports.
    retention: retention::RetentionState,
}

/// Where the database lives, to open it again after a failed commit.
enum Source {
    File(PathBuf),
    Backend(Arc<dyn redb::StorageBackend>),
}

/// The writes are refused for now: a commit failed. The writer tries again
/// at `retry_at` (and answers what arrives before with `error`), waiting
/// longer after each failure, up to [`MAX_BACKOFF`].
#[derive(Debug)]
struct Outage {
    error: StoreError,
    retry_at: Instant,
    backoff: Duration,
}

/// First wait after a failed commit; it doubles with each failure in a row.
const FIRST_BACKOFF: Duration = Duration::from_millis(50);
/// Longest wait between two tries of a failing store.
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// A storage backend shared with the store's earlier openings: redb closes
/// its backend when a database is dropped, and a reopened database needs
/// one again.
#[derive(Debug)]
struct SharedBackend(Arc<dyn redb::StorageBackend>);

impl redb::StorageBackend for SharedBackend {
    fn len(&self) -> Result<u64, std::io::Error> {
        self.0.len()
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), std::io::Error> {
        self.0.read(offset, out)
    }

    fn set_len(&self, len: u64) -> Result<(), std::io::Error> {
        self.0.set_len(len)
    }

    fn sync_data(&self) -> Result<(), std::io::Error> {
        self.0.sync_data()
    }

    fn write(&self, offset: u64, data: &[u8]) -> Result<(), std::io::Error> {
        self.0.write(offset, data)
    }
}

impl Shared {
    /// The open database.
    fn database(&self) -> Result<Arc<Database>, StoreError> {
        self.db.read().unwrap_or_else(PoisonError::into_inner).clone().ok_or_else(|| {
            let outage = self.outage.lock().unwrap_or_else(PoisonError::into_inner);
            let why = outage.as_ref().map_or_else(|| "reopening".to_owned(), |o| o.error.to_string());
            StoreError::Unavailable(format!("reopening the store after a failed commit: {why}"))
        })
    }

    /// A read transaction on the last committed state.
    fn begin_read(&self) -> Result<ReadTransaction, StoreError> {
        self.database()?.begin_read().map_err(storage)
    }

    /// While writes are refused: how long until the writer tries again
    /// (zero once due). `None` when the store takes writes.
    fn retry_in(&self) -> Option<Duration> {
        let outage = self.outage.lock().unwrap_or_else(PoisonError::into_inner);
        let due = outage.as_ref()?.retry_at;
        // Also due when the database is closed and could be reopened.
        Some(due.saturating_duration_since(Instant::now()))
    }

    /// Why writes are refused now, if they are.
    fn outage_reason(&self) -> Option<String> {
        self.outage.lock().unwrap_or_else(PoisonError::into_inner).as_ref().map(|o| o.error.to_string())
    }

    /// A commit failed with `error`: refuse writes for a while, invalidate
    /// the outcome batches built so far, and reopen the database so reads
    /// work again.
    fn failed(&self, error: &StoreError) {
        self.generation.fetch_add(1, Ordering::AcqRel);
        {
            let mut outage = self.outage.lock().unwrap_or_else(PoisonError::into_inner);
            let backoff = outage.as_ref().map_or(FIRST_BACKOFF, |o| (o.backoff * 2).min(MAX_BACKOFF));
            if outage.is_none() {
                tracing::error!(error = %error, "commit failed; writes are refused until a retry commits");
            }
            *outage = Some(Outage { error: error.clone(), retry_at: Instant::now() + backoff, backoff });
        }
        if let Err(e) = self.reopen() {
            tracing::warn!(error = %e, "cannot reopen the store yet; retrying");
        }
    }

    /// A commit succeeded: writes are taken again.
    fn recovered(&self) {
        if self.outage.lock().unwrap_or_else(PoisonError::into_inner).take().is_some() {
            tracing::info!("the store commits again; writes resume");
        }
    }

    /// Before the writer tries a group: the error to answer it with while
    /// an outage waits for its next try; otherwise the database (reopened
    /// first if it has to be).
    fn writable(&self) -> Result<Arc<Database>, StoreError> {
        if let Some(outage) = self.outage.lock().unwrap_or_else(PoisonError::into_inner).as_ref()
            && Instant::now() < outage.retry_at
        {
            return Err(outage.error.clone());
        }
        if let Ok(db) = self.database() {
            return Ok(db);
        }
        self.reopen().inspect_err(|e| self.failed(e))?;
        self.database()
    }

    /// Close the database and open it again. redb refuses every access
    /// after an I/O error until then; opening also repairs what the failed
    /// commit left.
    fn reopen(&self) -> Result<(), StoreError> {
        let old = self.db.write().unwrap_or_else(PoisonError::into_inner).take();
        drop(old);
        // A reader may still hold the old database for a moment.
        let mut tries = 0;
        let db = loop {
            let opened = match &self.source {
                Source::File(path) => Database::builder().open(path),
                Source::Backend(backend) => Database::builder().create_with_backend(SharedBackend(Arc::clone(backend))),
            };
            match opened {
                Ok(db) => break db,
                Err(redb::DatabaseError::DatabaseAlreadyOpen) if tries < 100 => {
                    tries += 1;
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(redb::DatabaseError::Storage(e)) => return Err(storage(e)),
                Err(e) => return Err(StoreError::Storage(e.to_string())),
            }
        };
        let head = {
            let read = db.begin_read().map_err(storage)?;
            let log = read.open_table(LOG).map_err(storage)?;
            log.last().map_err(storage)?.map_or(0, |(k, _)| k.value() + 1)
        };
        self.head.store(head, Ordering::Release);
        *self.db.write().unwrap_or_else(PoisonError::into_inner) = Some(Arc::new(db));
        Ok(())
    }
}

/// Handle to the store. Cheap to clone; the writer stops when
/// [`Store::close`] is called or the last handle is dropped.
#[derive(Clone)]
pub struct Store {
    shared: Arc<Shared>,
    tx: Sender<Command>,
    writer: Arc<Mutex<Option<JoinHandle<()>>>>,
    closed: Arc<AtomicBool>,
    /// For a subscription's handle ([`Store::pinned`]): the generation its
    /// outcome batches are built under.
    since: Option<u64>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("path", &self.shared.path).field("head", &self.head()).finish_non_exhaustive()
    }
}

impl Store {
    /// Open (or create) the store file at `path` and start its writer.
    ///
    /// # Errors
    ///
    /// [`StoreError::AlreadyOpen`] when another process holds it,
    /// [`StoreError::Corrupt`] when the file is not a usable redb database,
    /// [`StoreError::Storage`] for I/O errors.
    pub fn open(path: &Path, options: StoreOptions) -> Result<Self, StoreError> {
        let exists = existing_store(path)?;
        if !exists {
            create_private_file(path)?;
        }
        // redb trusts a file that was shut down cleanly and may panic on one
        // damaged outside it; with the check on open it verifies the
        // checksum of every page and reports damage as an error instead.
        // The check reads the whole file once per start (see
        // docs/operations.md for its cost). Any panic that still escapes
        // redb while opening is caught and reported as damage.
        let db = contain_panics(path, || {
            let mut builder = Database::builder();
            builder.set_check_integrity_on_open(true);
            let opened = if exists { builder.open(path) } else { builder.create(path) };
            opened.map_err(|e| open_error(path, e))
        })?;
        contain_panics(path, || Self::with_database(db, Source::File(path.to_owned()), path, options))
    }

    /// Open a store on a custom redb storage backend (crash tests).
    ///
    /// # Errors
    ///
    /// As [`Store::open`].
    pub fn open_with_backend(
        backend: impl redb::StorageBackend,
        label: &Path,
        options: StoreOptions,
    ) -> Result<Self, StoreError> {
        let backend: Arc<dyn redb::StorageBackend> = Arc::new(backend);
        let db = Database::builder()
            .create_with_backend(SharedBackend(Arc::clone(&backend)))
            .map_err(|e| StoreError::Corrupt { path: label.to_owned(), reason: e.to_string() })?;
        Self::with_database(db, Source::Backend(backend), label, options)
    }

    fn with_database(db: Database, source: Source, path: &Path, options: StoreOptions) -> Result<Self, StoreError> {
        // Create every table up front so readers never meet a missing one,
        // and refuse a store of another layout with a clear message.
        let incompatible = |e: redb::TableError| StoreError::Corrupt {
            path: path.to_owned(),
            reason: format!("written by another Weir version (store format {FORMAT_VERSION} expected): {e}"),
        };
        let txn = db.begin_write().map_err(storage)?;
        {
            let mut meta = txn.open_table(META).map_err(incompatible)?;
            let found = meta.get("format").map_err(storage)?.map(|v| v.value());
            match found {
                Some(1) => {
                    migrate::v1_to_v2(&txn)?;
                    migrate::v2_to_v3(&txn)?;
                    meta.insert("format", FORMAT_VERSION).map_err(storage)?;
                }
                Some(2) => {
                    migrate::v2_to_v3(&txn)?;
                    meta.insert("format", FORMAT_VERSION).map_err(storage)?;
                }
                Some(v) if v != FORMAT_VERSION => {
                    return Err(StoreError::Corrupt {
                        path: path.to_owned(),
                        reason: format!("store format {v}, this Weir reads format {FORMAT_VERSION}"),
                    });
                }
                Some(_) => {}
                None => {
                    meta.insert("format", FORMAT_VERSION).map_err(storage)?;
                }
            }
        }
        {
            txn.open_table(LOG).map_err(incompatible)?;
            txn.open_table(consumer::CONSUMERS).map_err(incompatible)?;
            txn.open_table(consumer::CONSUMER_PENDING).map_err(incompatible)?;
            txn.open_table(EVENT_IDS).map_err(incompatible)?;
            txn.open_table(CAUSED).map_err(incompatible)?;
            txn.open_table(CURSORS).map_err(incompatible)?;
            txn.open_table(PARKED).map_err(incompatible)?;
            txn.open_table(DLQ).map_err(incompatible)?;
            txn.open_table(IDEMPOTENCY).map_err(incompatible)?;
            txn.open_table(IDEMPOTENCY_EXPIRY).map_err(incompatible)?;
            txn.open_table(INGEST).map_err(incompatible)?;
            txn.open_table(INGEST_EXPIRY).map_err(incompatible)?;
            txn.open_table(STATS).map_err(incompatible)?;
            txn.open_table(MODULES).map_err(incompatible)?;
            txn.open_table(VERSIONS).map_err(incompatible)?;
            txn.open_table(ACTIVE).map_err(incompatible)?;
            // Added without a format change: absent, they start empty (the
            // time index then covers what is appended from now on).
            txn.open_table(retention::LOG_TIME).map_err(incompatible)?;
            txn.open_table(retention::RETENTION_STATE).map_err(incompatible)?;
            txn.open_table(retention::RETENTION_BYTES).map_err(incompatible)?;
            txn.open_table(retention::COMPACT_LATEST).map_err(incompatible)?;
        }
        txn.commit().map_err(storage)?;
        let head = {
            let read = db.begin_read().map_err(storage)?;
            let log = read.open_table(LOG).map_err(storage)?;
            log.last().map_err(storage)?.map_or(0, |(k, _)| k.value() + 1)
        };
        let shared = Arc::new(Shared {
            db: RwLock::new(Some(Arc::new(db))),
            source,
            path: path.to_owned(),
            head: AtomicU64::new(head),
            outage: Mutex::new(None),
            generation: AtomicU64::new(0),
            watchers: Mutex::new(Vec::new()),
            commits: AtomicU64::new(0),
            committed_commands: AtomicU64::new(0),
            commit_latency: crate::metrics::Histogram::default(),
            commit_size: crate::metrics::SizeHistogram::default(),
            published: AtomicU64::new(0),
            published_duplicates: AtomicU64::new(0),
            queued_publish_bytes: Arc::new(std::sync::atomic::AtomicUsize::new(0)),
            max_queued_publish_bytes: options.max_queued_publish_bytes,
            batches: AtomicU64::new(SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)),
            keep_versions: options.keep_versions.max(1),
            retention: retention::RetentionState::default(),
        });
        let (tx, rx) = mpsc::channel();
        let writer_shared = Arc::clone(&shared);
        let writer = std::thread::Builder::new()
            .name("weir-writer".into())
            .spawn(move || writer_loop(&writer_shared, &rx, &options))
            .map_err(|e| StoreError::Storage(format!("cannot start the writer thread: {e}")))?;
        Ok(Self {
            shared,
            tx,
            writer: Arc::new(Mutex::new(Some(writer))),
            closed: Arc::new(AtomicBool::new(false)),
            since: None,
        })
    }

    /// The next sequence number the log will assign (= number of events ever
    /// appended).
    #[must_use]
    pub fn head(&self) -> u64 {
        self.shared.head.load(Ordering::Acquire)
    }

    /// Why the store cannot take writes (a failed commit it has not
    /// recovered from yet, or closed), if so.
    #[must_use]
    pub(crate) fn failure(&self) -> Option<String> {
        if let Some(reason) = self.shared.outage_reason() {
            return Some(format!(
                "store poisoned by a failed commit until a retry commits (retried automatically): {reason}"
            ));
        }
        self.closed.load(Ordering::Acquire).then(|| "store closed".to_owned())
    }

    /// A handle for a subscription worker that starts now: the outcome
    /// batches it submits are refused ([`StoreError::Interrupted`]) once a
    /// commit has failed after this call, since one of its batches may be
    /// lost and a later one must not move its cursor past it.
    #[must_use]
    pub(crate) fn pinned(&self) -> Self {
        let mut pinned = self.clone();
        pinned.since = Some(self.generation());
        pinned
    }

    /// Failed commits since open: outcome batches built under an earlier
    /// number are refused ([`StoreError::Interrupted`]).
    #[must_use]
    pub(crate) fn generation(&self) -> u64 {
        self.shared.generation.load(Ordering::Acquire)
    }

    /// Events published and stored, and publishes answered as duplicates,
    /// since open.
    #[must_use]
    pub fn publish_stats(&self) -> (u64, u64) {
        (self.shared.published.load(Ordering::Relaxed), self.shared.published_duplicates.load(Ordering::Relaxed))
    }

    /// Append the commit-latency histogram as metric `name`.
    pub(crate) fn render_commit_latency(&self, out: &mut String, name: &str) {
        self.shared.commit_latency.render(out, name, "");
    }

    /// Append the group-commit size histogram (commands per commit) as
    /// metric `name`.
    pub(crate) fn render_commit_size(&self, out: &mut String, name: &str) {
        self.shared.commit_size.render(out, name, "");
    }

    /// Group-commit statistics: (commits, commands committed).
    #[must_use]
    pub fn commit_stats(&self) -> (u64, u64) {
        (self.shared.commits.load(Ordering::Relaxed), self.shared.committed_commands.load(Ordering::Relaxed))
    }

    /// Call `wake` after each commit that appended events to the log, until
    /// it returns `false`.
    pub(crate) fn watch(&self, wake: Box<dyn Fn() -> bool + Send>) {
        self.shared.watchers.lock().unwrap_or_else(PoisonError::into_inner).push(wake);
    }

    /// Hand `command` to the writer.
    fn send(&self, command: Command) {
        if let Err(mpsc::SendError(mut command)) = self.tx.send(command) {
            // The writer is gone: answer the caller instead of dropping it.
            command.order().answer(Err(&StoreError::Closed));
        }
    }

    /// Send the command `order` builds around a reply, and wait for the
    /// answer.
    fn ask<T: Send + 'static>(&self, order: impl FnOnce(Reply<T>) -> Command) -> Result<T, StoreError> {
        let (tx, rx) = mpsc::channel();
        self.send(order(Box::new(move |r| drop(tx.send(r)))));
        rx.recv().map_err(|_| StoreError::Closed)?
    }

    /// Wait until every command sent before this call has committed.
    ///
    /// # Errors
    ///
    /// The commit's error.
    pub fn sync(&self) -> Result<(), StoreError> {
        self.ask(|reply| Command::Sync(Order::new(Barrier, reply)))
    }

    /// Entries per table: `log`, `parked`, `dlq`, `idempotency`,
    /// `idempotency_expiry`, `ingest_dedup`, `ingest_expiry`, `modules`,
    /// `versions`, and the log's indexes `event_ids` and `caused`. Each is
    /// a count redb keeps, read without walking the
    /// table (the `weir_store_table_entries` gauge).
    ///
    /// # Errors
    ///
    /// Storage errors.
    pub fn table_sizes(&self) -> Result<Vec<(&'static str, u64)>, StoreError> {
        let read = self.shared.begin_read()?;
        Ok(vec![
            ("log", read.open_table(LOG).map_err(storage)?.len().map_err(storage)?),
            ("parked", read.open_table(PARKED).map_err(storage)?.len().map_err(storage)?),
            ("dlq", read.open_table(DLQ).map_err(storage)?.len().map_err(storage)?),
            ("idempotency", read.open_table(IDEMPOTENCY).map_err(storage)?.len().map_err(storage)?),
            ("idempotency_expiry", read.open_table(IDEMPOTENCY_EXPIRY).map_err(storage)?.len().map_err(storage)?),
            ("ingest_dedup", read.open_table(INGEST).map_err(storage)?.len().map_err(storage)?),
            ("ingest_expiry", read.open_table(INGEST_EXPIRY).map_err(storage)?.len().map_err(storage)?),
            ("modules", read.open_table(MODULES).map_err(storage)?.len().map_err(storage)?),
            ("versions", read.open_table(VERSIONS).map_err(storage)?.len().map_err(storage)?),
            ("event_ids", read.open_table(EVENT_IDS).map_err(storage)?.len().map_err(storage)?),
            ("caused", read.open_table(CAUSED).map_err(storage)?.len().map_err(storage)?),
        ])
    }

    /// Wait until everything sent so far is committed. The writer itself
    /// stops when the last handle is dropped, which also closes the file.
    ///
    /// # Errors
    ///
    /// The last commit's error.
    pub fn close(&self) -> Result<(), StoreError> {
        if self.closed.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        self.sync()
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        // The last handle joins the writer so the file is closed on return.
        if Arc::strong_count(&self.writer) == 1 {
            let (dead, _) = mpsc::channel::<Command>();
            let tx = std::mem::replace(&mut self.tx, dead);
            drop(tx);
            if let Some(handle) = self.writer.lock().unwrap_or_else(PoisonError::into_inner).take() {
                let _ = handle.join();
            }
        }
    }
}
