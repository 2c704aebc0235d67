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
//! - `derived.rs`: `derived_since`, and the records a subscription derives
//!   from the ingest claims instead of writing them.
//! - `registry.rs`: `modules`, `versions` and `active`; the deploy command.
//! - `stats.rs`: `stats`, the per-subscription counters.
//! - `entities.rs`: `entities`, everything kept per entity of a declared
//!   type, side by side: its stream index entries, its aggregate's snapshot
//!   and its command records (the slots' layout).
//! - `stream.rs`: the stream index ((entity type, key, revision) → seq, in
//!   `entities`), written with each append of a declared entity type, and
//!   `stream_types` (how far each type is indexed); the stream append
//!   command and the backfill of a newly declared type.
//! - `aggregate.rs`: an aggregate's snapshot per entity and the record of
//!   every command (in `entities`); the command that stores a decided
//!   command with its events.
//! - `timer.rs`: `timers`, `timer_due` and `timer_counts`, the durable
//!   timers; applied with a subscription's results, fired by the `Fire`
//!   command.
//! - `mod.rs`: `meta` (the store format); [`Store`], [`StoreOptions`] and
//!   opening.
//!
//! Beside them: `writer.rs` (the writer thread and group commit),
//! `command.rs` (the command list, the `Apply` trait every command
//! implements, and which failures fail one command or the whole group),
//! `gc.rs` (expired idempotency records and ingest keys), `codec.rs` (the
//! record format: a version byte and a CRC-32 before every value),
//! `migrate.rs` (format 1 → 2 → 3 → 4 → 5), `open.rs` (opening a file without trusting
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

mod aggregate;
mod codec;
mod command;
pub(crate) mod consumer;
mod derived;
mod entities;
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
mod shared;
mod source;
mod state;
mod stats;
mod stream;
mod subscription;
#[cfg(test)]
mod testing;
mod timer;
mod types;
mod view;
mod writer;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Sender};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use redb::{Database, ReadTransaction, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};

pub(crate) use aggregate::{Before, CommandRecord, CommandResult, DecidedCommand, ExecuteOutcome, Snapshot, Verdict};
pub(crate) use codec::EmitRecord;
pub(crate) use command::Reply;
pub(crate) use derived::Seen;
pub use error::StoreError;
pub(crate) use fuzz::record as fuzz_record;
pub use lifecycle::{HOLDINGS_COUNT_CAP, Holdings};
pub use retention::{HeldBack, Keep, RetentionPolicy, RetentionReader, RetentionRule, StartPosition};
use shared::{Shared, SharedBackend, Source};
pub use source::SourcePosition;
pub(crate) use source::{Redriven, position_key as source_position_key};
pub(crate) use state::{
    KIND_KEY, KIND_SHARED, LiveOutcome, ScopeId, Space, StateReader, StateWrite, namespace as state_namespace,
};
pub(crate) use stream::entity_type;
pub use stream::{AppendOutcome, ExpectedRevision, StreamPublished};
pub use subscription::DlqPage;
pub use timer::PendingTimer;
pub(crate) use timer::{FIRE_BATCH, TimerEntry, TimerWrite, timer_event_id};
pub use types::{DlqEntry, DlqFilter, ParkedEntry, Published, VersionRecord};
pub(crate) use types::{IdempotencyRecord, ResultItem, SubscriptionStats, corrupt_record_stand_in};
pub(crate) use view::ViewValue;

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
/// causation indexes) are migrated on open, and so are format 3 (no entity
/// stream index; an older build must not append to a store whose streams
/// this one indexes, so the format changes) and format 4 (aggregates'
/// records in three tables, not one).
pub const FORMAT_VERSION: u64 = 5;

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
    /// The declared entity types (`[[entities]]`, `accounts.account`): the
    /// events of these types with a key are indexed into their entity
    /// streams (`stream.rs`). By default none.
    pub entity_types: Vec<String>,
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
            entity_types: Vec::new(),
        }
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
    /// [`StoreOptions::entity_types`].
    entity_types: Arc<[String]>,
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
                Some(v @ 1..=4) => {
                    if v == 1 {
                        migrate::v1_to_v2(&txn)?;
                    }
                    if v <= 2 {
                        migrate::v2_to_v3(&txn)?;
                    }
                    if v <= 3 {
                        migrate::v3_to_v4(&txn)?;
                    }
                    migrate::v4_to_v5(&txn)?;
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
            txn.open_table(stream::STREAM_TYPES).map_err(incompatible)?;
            txn.open_table(state::STATE).map_err(incompatible)?;
            txn.open_table(state::STATE_GENERATIONS).map_err(incompatible)?;
            entities::create(&txn).map_err(incompatible)?;
            // Added without a format change: absent, they start empty (the
            // time index then covers what is appended from now on).
            txn.open_table(retention::LOG_TIME).map_err(incompatible)?;
            txn.open_table(retention::RETENTION_STATE).map_err(incompatible)?;
            txn.open_table(retention::RETENTION_BYTES).map_err(incompatible)?;
            txn.open_table(retention::COMPACT_LATEST).map_err(incompatible)?;
            txn.open_table(source::SOURCES).map_err(incompatible)?;
            txn.open_table(derived::DERIVED_SINCE).map_err(incompatible)?;
            txn.open_table(derived::DELETED).map_err(incompatible)?;
            txn.open_table(derived::HOST_FORM_CLAIMS).map_err(incompatible)?;
            derived::init(&txn)?;
            // Durable timers, also without a format change (`timer.rs`).
            timer::create(&txn).map_err(incompatible)?;
        }
        txn.commit().map_err(storage)?;
        // Before the writer starts: no append can come before a newly
        // declared type's streams are complete.
        stream::backfill(&db, &options.entity_types)?;
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
            timers: timer::Signal::default(),
        });
        let entity_types: Arc<[String]> = options.entity_types.clone().into();
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
            entity_types,
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
        self.start(order).wait()
    }

    /// Send the command `order` builds around a reply, and answer at once:
    /// [`Started::wait`] waits for the commit.
    fn start<T: Send + 'static>(&self, order: impl FnOnce(Reply<T>) -> Command) -> Started<T> {
        let (tx, rx) = mpsc::channel();
        self.send(order(Box::new(move |r| drop(tx.send(r)))));
        Started(rx)
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
    /// `versions`, the log's indexes `event_ids` and `caused`, `entities`
    /// (one entry per event of an entity stream, plus an aggregate's
    /// snapshot and command records), and `state`
    /// (one entry per key of handler state). Each is
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
            ("entities", read.open_table(entities::ENTITIES).map_err(storage)?.len().map_err(storage)?),
            ("state", read.open_table(state::STATE).map_err(storage)?.len().map_err(storage)?),
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

/// A command handed to the writer, not waited for yet.
#[must_use = "a started command's result is only known by waiting for it"]
pub(crate) struct Started<T>(mpsc::Receiver<Result<T, StoreError>>);

impl<T> Started<T> {
    /// Wait for the command's commit.
    ///
    /// # Errors
    ///
    /// The commit's.
    pub(crate) fn wait(self) -> Result<T, StoreError> {
        self.0.recv().map_err(|_| StoreError::Closed)?
    }
}
