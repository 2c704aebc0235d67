//! The store: one redb file holding the log, subscription cursors and parked
//! (retrying) events, idempotency records, the dead-letter queue and the
//! ingest de-duplication index. The only module that names `redb`.
//!
//! # Durability
//!
//! All writes go through one writer thread. It takes every command waiting in
//! its queue (publishes and invocation results alike), applies them in one
//! write transaction and commits with immediate durability (fsync): group
//! commit. A caller's reply is sent only after the commit that holds its
//! command returned, so an acknowledged publish survives `kill -9`. After a
//! failed commit the writer refuses every further write until the store is
//! reopened.

mod codec;
mod migrate;
mod types;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use redb::{
    Database, Durability, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition, WriteTransaction,
};
use weir_abi::{Event, EventId};

pub use types::{
    DlqEntry, DlqFilter, IdempotencyRecord, ParkedEntry, Published, ResultItem, SubscriptionStats, VersionRecord,
};

/// seq → encoded [`Event`].
const LOG: TableDefinition<'_, u64, &[u8]> = TableDefinition::new("log");
/// subscription → next sequence number to read.
const CURSORS: TableDefinition<'_, &str, u64> = TableDefinition::new("cursors");
/// (subscription, seq) → encoded [`ParkedEntry`].
const PARKED: TableDefinition<'_, (&str, u64), &[u8]> = TableDefinition::new("parked");
/// (subscription, seq) → encoded [`DlqEntry`].
const DLQ: TableDefinition<'_, (&str, u64), &[u8]> = TableDefinition::new("dlq");
/// (subscription, idempotency key) → encoded [`IdempotencyRecord`].
const IDEMPOTENCY: TableDefinition<'_, (&str, &str), &[u8]> = TableDefinition::new("idempotency");
/// (expires at ms, subscription, batch) → encoded `Vec<String>` of the keys
/// one commit recorded: the garbage-collection index. One entry per batch
/// rather than per key keeps the per-event write cost to one insert.
const IDEMPOTENCY_EXPIRY: TableDefinition<'_, (u64, &str, u64), &[u8]> = TableDefinition::new("idempotency_expiry");
/// producer idempotency key → (event id, seq, expires at ms).
const INGEST: TableDefinition<'_, &str, ([u8; 16], u64, u64)> = TableDefinition::new("ingest_dedup");
/// (expires at ms, batch) → encoded `Vec<String>` of producer keys.
const INGEST_EXPIRY: TableDefinition<'_, (u64, u64), &[u8]> = TableDefinition::new("ingest_expiry");
/// (subscription, counter) → value.
const STATS: TableDefinition<'_, (&str, &str), u64> = TableDefinition::new("stats");
/// sha256 (hex) → module bytes: the plugin registry's content store.
const MODULES: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("modules");
/// (handler, n) → encoded [`VersionRecord`]: each handler's deploy history.
const VERSIONS: TableDefinition<'_, (&str, u64), &[u8]> = TableDefinition::new("versions");
/// handler → sha256 of its active module.
const ACTIVE: TableDefinition<'_, &str, &str> = TableDefinition::new("active");
/// name → value: `format` holds [`FORMAT_VERSION`].
const META: TableDefinition<'_, &str, u64> = TableDefinition::new("meta");
/// The store layout this build reads and writes. Format 1 (no record
/// checksums, ambiguous CloudEvents keys) is migrated on open.
pub const FORMAT_VERSION: u64 = 2;
/// The first bytes of every redb file (redb's `MAGICNUMBER`, which redb
/// does not export): a file that does not start with them is not a store.
const REDB_MAGIC: [u8; 9] = [b'r', b'e', b'd', b'b', 0x1A, 0x0A, 0xA9, 0x0D, 0x0A];

/// Default idempotency and ingest de-duplication window.
pub const DEFAULT_RETENTION: Duration = Duration::from_secs(24 * 3600);
/// Most commands in one group commit.
const MAX_GROUP: usize = 4096;
/// Most expiry batches collected per garbage-collection pass.
const GC_BATCHES: usize = 64;

/// Why a store operation failed. Codes are stable.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// Another process (or this one) has the data directory open.
    #[error("the store {path} is already open in another process (is another `weir run` using this data directory?)")]
    AlreadyOpen {
        /// The file.
        path: PathBuf,
    },
    /// The file is not a redb database, or is damaged beyond repair.
    #[error(
        "the store {path} is corrupt or not a Weir store: {reason}. Restore it from a backup (docs/operations.md, \"Backups\")"
    )]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// redb's message.
        reason: String,
    },
    /// An I/O or storage-engine error.
    #[error("storage error: {0}")]
    Storage(String),
    /// A commit failed earlier; no more writes until reopened.
    #[error("the store refused the write: an earlier commit failed ({0}); restart to recover")]
    Poisoned(String),
    /// The writer has shut down.
    #[error("the store is closed")]
    Closed,
    /// A record could not be encoded, or a stored module is missing.
    #[error("stored record is undecodable: {0}")]
    Decode(String),
    /// A stored record failed its checksum or does not decode: the file was
    /// damaged after it was written.
    #[error("the store holds a damaged record, {record}: {reason}; restore the store from a backup")]
    RecordCorrupt {
        /// Which record (`log seq 42`, `dlq orders/validator seq 7`).
        record: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A stored plugin module's bytes do not match the sha256 they are
    /// stored under.
    #[error(
        "the store holds a damaged plugin module: sha256 {expected} was stored, the bytes hash to {actual}; restore the store from a backup (a version that is not active is also repaired by deploying its file again)"
    )]
    ModuleCorrupt {
        /// The sha256 the module is stored under.
        expected: String,
        /// The sha256 of the bytes read.
        actual: String,
    },
}

impl StoreError {
    /// Stable code.
    #[must_use]
    pub fn code(&self) -> &'static str {
        match self {
            Self::AlreadyOpen { .. } => "store_locked",
            Self::Corrupt { .. } => "store_corrupt",
            Self::Storage(_) => "storage",
            Self::Poisoned(_) => "store_poisoned",
            Self::Closed => "store_closed",
            Self::Decode(_) => "store_decode",
            Self::RecordCorrupt { .. } => "store_record_corrupt",
            Self::ModuleCorrupt { .. } => "store_module_corrupt",
        }
    }
}

fn storage(e: impl Into<redb::Error>) -> StoreError {
    StoreError::Storage(e.into().to_string())
}

use codec::{decode, encode};

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest as _;
    sha2::Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

fn dlq_record((subscription, seq): (&str, u64)) -> String {
    format!(
        "dlq entry {subscription} seq {seq} (purge it with `weir dlq purge --subscription {subscription} --seq {seq}`)"
    )
}

/// Whether `path` holds a store to open (`true`) or names a new one
/// (`false`). Only a missing file means a new store: redb would initialise
/// an empty file as a new database, and a store that existed (a 0-byte
/// `weir.redb` left by a failed copy or a full disk) would silently start
/// again from nothing.
fn existing_store(path: &Path) -> Result<bool, StoreError> {
    let corrupt = |reason: String| StoreError::Corrupt { path: path.to_owned(), reason };
    let meta = match std::fs::metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(StoreError::Storage(format!("{}: {e}", path.display()))),
    };
    if meta.is_dir() {
        return Err(StoreError::Storage(format!("{} is a directory, not a store file", path.display())));
    }
    if meta.len() == 0 {
        return Err(corrupt(
            "the file is empty (0 bytes), so the store that was there is gone. Weir starts a new store only where \
             no file exists: restore the file from a backup, or delete it to start again with an empty store"
                .into(),
        ));
    }
    let mut magic = [0_u8; REDB_MAGIC.len()];
    let read = std::fs::File::open(path).and_then(|mut f| {
        use std::io::Read as _;
        let mut filled = 0;
        while filled < magic.len() {
            match f.read(&mut magic[filled..])? {
                0 => break,
                n => filled += n,
            }
        }
        Ok(filled)
    });
    match read {
        Ok(n) if n == REDB_MAGIC.len() && magic == REDB_MAGIC => Ok(true),
        Ok(_) => Err(corrupt("it is not a redb database (it does not start with redb's file header)".into())),
        Err(e) => Err(StoreError::Storage(format!("{}: {e}", path.display()))),
    }
}

fn open_error(path: &Path, e: redb::DatabaseError) -> StoreError {
    match e {
        redb::DatabaseError::DatabaseAlreadyOpen => StoreError::AlreadyOpen { path: path.to_owned() },
        // Permission and path problems are the environment's; any other
        // I/O error at open is redb failing to read the file as a store.
        redb::DatabaseError::Storage(redb::StorageError::Io(e))
            if matches!(
                e.kind(),
                std::io::ErrorKind::PermissionDenied
                    | std::io::ErrorKind::NotFound
                    | std::io::ErrorKind::ReadOnlyFilesystem
            ) =>
        {
            StoreError::Storage(format!("{}: {e}", path.display()))
        }
        e => StoreError::Corrupt { path: path.to_owned(), reason: e.to_string() },
    }
}

thread_local! {
    /// Set while [`contain_panics`] runs on this thread: the panic hook
    /// stores the message here instead of printing it.
    static CAPTURED_PANIC: std::cell::RefCell<Option<Option<String>>> = const { std::cell::RefCell::new(None) };
}

/// Run `f`, turning a panic inside it (redb meeting a damaged page it did
/// not expect) into [`StoreError::Corrupt`] with the panic's message. The
/// process-wide panic hook is wrapped once; it stays silent only for the
/// thread inside this function, so other threads' panics print as before.
fn contain_panics<T>(path: &Path, f: impl FnOnce() -> Result<T, StoreError>) -> Result<T, StoreError> {
    static HOOK: std::sync::Once = std::sync::Once::new();
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let captured = CAPTURED_PANIC.with(|slot| match slot.try_borrow_mut() {
                Ok(mut slot) if slot.is_some() => {
                    let message = info
                        .payload()
                        .downcast_ref::<&str>()
                        .map(|s| (*s).to_owned())
                        .or_else(|| info.payload().downcast_ref::<String>().cloned())
                        .unwrap_or_else(|| "a panic inside the storage engine".to_owned());
                    *slot = Some(Some(message));
                    true
                }
                _ => false,
            });
            if !captured {
                previous(info);
            }
        }));
    });
    CAPTURED_PANIC.with(|slot| *slot.borrow_mut() = Some(None));
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    let message = CAPTURED_PANIC.with(|slot| slot.borrow_mut().take()).flatten();
    match result {
        Ok(result) => result,
        Err(_) => Err(StoreError::Corrupt {
            path: path.to_owned(),
            reason: format!("the storage engine failed reading it ({})", message.as_deref().unwrap_or("no message")),
        }),
    }
}

/// Milliseconds since the Unix epoch.
#[must_use]
pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// A reply callback: called once, from the writer thread, after the commit.
pub type Reply<T> = Box<dyn FnOnce(Result<T, StoreError>) + Send>;

enum Command {
    Publish { events: Vec<Event>, reply: Reply<Vec<Published>> },
    Results { subscription: Arc<str>, items: Vec<ResultItem>, cursor: Option<u64>, reply: Reply<()> },
    Redrive { subscription: String, seq: u64, parked: ParkedEntry, reply: Reply<bool> },
    Purge { filter: DlqFilter, reply: Reply<usize> },
    Sync { reply: Reply<()> },
    Deploy { handler: String, record: Box<VersionRecord>, module: Vec<u8>, reply: Reply<u64> },
}

/// Options of [`Store::open`].
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// How long idempotency records and ingest de-duplication keys are kept.
    /// By default 24 h ([`DEFAULT_RETENTION`]).
    pub retention: Duration,
    /// How often expired records are collected. By default every minute.
    pub gc_interval: Duration,
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self { retention: DEFAULT_RETENTION, gc_interval: Duration::from_secs(60) }
    }
}

struct Shared {
    db: Database,
    path: PathBuf,
    /// Next sequence number to assign = number of the first event not yet in the log.
    head: AtomicU64,
    poisoned: Mutex<Option<String>>,
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
    /// Names expiry batches; starts at the open time in nanoseconds so names
    /// never repeat across restarts.
    batches: AtomicU64,
}

/// Handle to the store. Cheap to clone; the writer stops when
/// [`Store::close`] is called or the last handle is dropped.
#[derive(Clone)]
pub struct Store {
    shared: Arc<Shared>,
    tx: Sender<Command>,
    writer: Arc<Mutex<Option<JoinHandle<()>>>>,
    closed: Arc<AtomicBool>,
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
        contain_panics(path, || Self::with_database(db, path, options))
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
        let db = Database::builder()
            .create_with_backend(backend)
            .map_err(|e| StoreError::Corrupt { path: label.to_owned(), reason: e.to_string() })?;
        Self::with_database(db, label, options)
    }

    fn with_database(db: Database, path: &Path, options: StoreOptions) -> Result<Self, StoreError> {
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
        }
        txn.commit().map_err(storage)?;
        let head = {
            let read = db.begin_read().map_err(storage)?;
            let log = read.open_table(LOG).map_err(storage)?;
            log.last().map_err(storage)?.map_or(0, |(k, _)| k.value() + 1)
        };
        let shared = Arc::new(Shared {
            db,
            path: path.to_owned(),
            head: AtomicU64::new(head),
            poisoned: Mutex::new(None),
            watchers: Mutex::new(Vec::new()),
            commits: AtomicU64::new(0),
            committed_commands: AtomicU64::new(0),
            commit_latency: crate::metrics::Histogram::default(),
            commit_size: crate::metrics::SizeHistogram::default(),
            published: AtomicU64::new(0),
            published_duplicates: AtomicU64::new(0),
            batches: AtomicU64::new(SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)),
        });
        let (tx, rx) = mpsc::channel();
        let writer_shared = Arc::clone(&shared);
        let writer = std::thread::Builder::new()
            .name("weir-writer".into())
            .spawn(move || writer_loop(&writer_shared, &rx, &options))
            .map_err(|e| StoreError::Storage(format!("cannot start the writer thread: {e}")))?;
        Ok(Self { shared, tx, writer: Arc::new(Mutex::new(Some(writer))), closed: Arc::new(AtomicBool::new(false)) })
    }

    /// The next sequence number the log will assign (= number of events ever
    /// appended).
    #[must_use]
    pub fn head(&self) -> u64 {
        self.shared.head.load(Ordering::Acquire)
    }

    /// Why the store cannot take writes (poisoned by a failed commit, or
    /// closed), if so.
    #[must_use]
    pub fn failure(&self) -> Option<String> {
        if let Some(reason) = self.shared.poisoned.lock().unwrap_or_else(PoisonError::into_inner).clone() {
            return Some(format!("store poisoned by a failed commit: {reason}"));
        }
        self.closed.load(Ordering::Acquire).then(|| "store closed".to_owned())
    }

    /// Events published and stored, and publishes answered as duplicates,
    /// since open.
    #[must_use]
    pub fn publish_stats(&self) -> (u64, u64) {
        (self.shared.published.load(Ordering::Relaxed), self.shared.published_duplicates.load(Ordering::Relaxed))
    }

    /// Append the commit-latency histogram as metric `name`.
    pub fn render_commit_latency(&self, out: &mut String, name: &str) {
        self.shared.commit_latency.render(out, name, "");
    }

    /// Append the group-commit size histogram (commands per commit) as
    /// metric `name`.
    pub fn render_commit_size(&self, out: &mut String, name: &str) {
        self.shared.commit_size.render(out, name, "");
    }

    /// Group-commit statistics: (commits, commands committed).
    #[must_use]
    pub fn commit_stats(&self) -> (u64, u64) {
        (self.shared.commits.load(Ordering::Relaxed), self.shared.committed_commands.load(Ordering::Relaxed))
    }

    /// Call `wake` after each commit that appended events to the log, until
    /// it returns `false`.
    pub fn watch(&self, wake: Box<dyn Fn() -> bool + Send>) {
        self.shared.watchers.lock().unwrap_or_else(PoisonError::into_inner).push(wake);
    }

    fn send(&self, command: Command) {
        if let Err(mpsc::SendError(command)) = self.tx.send(command) {
            // The writer is gone: answer the caller instead of dropping it.
            fail(command, StoreError::Closed);
        }
    }

    /// Append events (durably) and call `reply` after the commit.
    ///
    /// # Idempotency
    ///
    /// An event whose idempotency key was already published within the
    /// retention window is not stored again: its answer carries the original
    /// id and `duplicate: true`.
    pub fn publish(&self, events: Vec<Event>, reply: Reply<Vec<Published>>) {
        self.send(Command::Publish { events, reply });
    }

    /// [`Store::publish`], waiting for the commit.
    ///
    /// # Errors
    ///
    /// The commit's error.
    pub fn publish_blocking(&self, events: Vec<Event>) -> Result<Vec<Published>, StoreError> {
        let (tx, rx) = mpsc::channel();
        self.publish(events, Box::new(move |r| drop(tx.send(r))));
        rx.recv().map_err(|_| StoreError::Closed)?
    }

    /// Commit a subscription's outcomes and (optionally) its new cursor in
    /// one transaction.
    pub fn submit(&self, subscription: Arc<str>, items: Vec<ResultItem>, cursor: Option<u64>, reply: Reply<()>) {
        self.send(Command::Results { subscription, items, cursor, reply });
    }

    /// Move a DLQ entry back to the subscription's parked events, in one
    /// transaction. Answers `false` when there is no such entry (already
    /// redriven or purged).
    pub fn redrive(&self, subscription: String, seq: u64, parked: ParkedEntry, reply: Reply<bool>) {
        self.send(Command::Redrive { subscription, seq, parked, reply });
    }

    /// Delete the DLQ entries `filter` selects; answers how many.
    ///
    /// # Errors
    ///
    /// The commit's error.
    pub fn purge_blocking(&self, filter: DlqFilter) -> Result<usize, StoreError> {
        let (tx, rx) = mpsc::channel();
        self.send(Command::Purge { filter, reply: Box::new(move |r| drop(tx.send(r))) });
        rx.recv().map_err(|_| StoreError::Closed)?
    }

    /// Wait until every command sent before this call has committed.
    ///
    /// # Errors
    ///
    /// The commit's error.
    pub fn sync(&self) -> Result<(), StoreError> {
        let (tx, rx) = mpsc::channel();
        self.send(Command::Sync { reply: Box::new(move |r| drop(tx.send(r))) });
        rx.recv().map_err(|_| StoreError::Closed)?
    }

    /// Up to `limit` events from sequence number `from` on.
    ///
    /// # Errors
    ///
    /// Storage or decoding errors.
    pub fn read_log(&self, from: u64, limit: usize) -> Result<Vec<(u64, Event)>, StoreError> {
        let read = self.shared.db.begin_read().map_err(storage)?;
        let log = read.open_table(LOG).map_err(storage)?;
        let mut out = Vec::with_capacity(limit.min(1024));
        for entry in log.range(from..).map_err(storage)?.take(limit) {
            let (k, v) = entry.map_err(storage)?;
            out.push((k.value(), decode::<Event>(v.value(), || format!("log seq {}", k.value()))?));
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

    /// The committed cursor of a subscription (0 if it never committed one).
    ///
    /// # Errors
    ///
    /// Storage errors.
    pub fn cursor(&self, subscription: &str) -> Result<u64, StoreError> {
        let read = self.shared.db.begin_read().map_err(storage)?;
        let table = read.open_table(CURSORS).map_err(storage)?;
        Ok(table.get(subscription).map_err(storage)?.map_or(0, |v| v.value()))
    }

    /// All parked events of a subscription, by sequence number.
    ///
    /// # Errors
    ///
    /// Storage or decoding errors.
    pub fn parked(&self, subscription: &str) -> Result<Vec<ParkedEntry>, StoreError> {
        let read = self.shared.db.begin_read().map_err(storage)?;
        let table = read.open_table(PARKED).map_err(storage)?;
        let mut out = Vec::new();
        for entry in table.range((subscription, 0)..=(subscription, u64::MAX)).map_err(storage)? {
            let (k, v) = entry.map_err(storage)?;
            out.push(decode(v.value(), || format!("parked {subscription} seq {}", k.value().1))?);
        }
        Ok(out)
    }

    /// Look up idempotency records: for each key, the record if one exists
    /// and has not expired.
    ///
    /// # Errors
    ///
    /// Storage or decoding errors.
    pub fn idempotency(&self, subscription: &str, keys: &[&str]) -> Result<Vec<Option<IdempotencyRecord>>, StoreError> {
        let read = self.shared.db.begin_read().map_err(storage)?;
        let table = read.open_table(IDEMPOTENCY).map_err(storage)?;
        let now = now_ms();
        keys.iter()
            .map(|key| match table.get((subscription, *key)).map_err(storage)? {
                Some(v) => {
                    let record: IdempotencyRecord =
                        decode(v.value(), || format!("idempotency record {subscription} key {key:?}"))?;
                    Ok((record.expires_at_ms > now).then_some(record))
                }
                None => Ok(None),
            })
            .collect()
    }

    /// DLQ entries per subscription, counted from the keys alone: status,
    /// `/metrics`, `/ready` and the dashboard ask every second, and decoding
    /// every entry (each holds its whole event) would cost O(DLQ bytes).
    ///
    /// # Errors
    ///
    /// Storage errors.
    pub fn dlq_counts(&self) -> Result<BTreeMap<String, u64>, StoreError> {
        let read = self.shared.db.begin_read().map_err(storage)?;
        let table = read.open_table(DLQ).map_err(storage)?;
        let mut counts: BTreeMap<String, u64> = BTreeMap::new();
        for entry in table.range::<(&str, u64)>(..).map_err(storage)? {
            let (k, _) = entry.map_err(storage)?;
            let (sub, _) = k.value();
            match counts.get_mut(sub) {
                Some(n) => *n += 1,
                None => {
                    counts.insert(sub.to_owned(), 1);
                }
            }
        }
        Ok(counts)
    }

    /// DLQ entries passing `filter`, by subscription and sequence number.
    ///
    /// # Errors
    ///
    /// Storage or decoding errors.
    pub fn dlq(&self, filter: &DlqFilter) -> Result<Vec<DlqEntry>, StoreError> {
        let read = self.shared.db.begin_read().map_err(storage)?;
        let table = read.open_table(DLQ).map_err(storage)?;
        let mut out = Vec::new();
        let range = match &filter.subscription {
            Some(s) => table.range((s.as_str(), 0)..=(s.as_str(), u64::MAX)).map_err(storage)?,
            None => table.range::<(&str, u64)>(..).map_err(storage)?,
        };
        for entry in range {
            let (k, v) = entry.map_err(storage)?;
            // Select by key before decoding: one damaged entry must not
            // hide the others from a lookup by seq.
            if !filter.matches_key(k.value().0, k.value().1) {
                continue;
            }
            let entry: DlqEntry = decode(v.value(), || dlq_record(k.value()))?;
            if filter.matches(&entry) {
                out.push(entry);
            }
        }
        Ok(out)
    }

    /// Record a deployed module: store its bytes (once per sha256), append
    /// `record` to the handler's history and make it the active version, in
    /// one transaction. Answers the version's number in the history.
    ///
    /// # Errors
    ///
    /// The commit's error.
    pub fn deploy_blocking(&self, handler: &str, record: VersionRecord, module: Vec<u8>) -> Result<u64, StoreError> {
        let (tx, rx) = mpsc::channel();
        self.send(Command::Deploy {
            handler: handler.to_owned(),
            record: Box::new(record),
            module,
            reply: Box::new(move |r| drop(tx.send(r))),
        });
        rx.recv().map_err(|_| StoreError::Closed)?
    }

    /// The sha256 of a handler's active module, if it has one.
    ///
    /// # Errors
    ///
    /// Storage errors.
    pub fn active_version(&self, handler: &str) -> Result<Option<String>, StoreError> {
        let read = self.shared.db.begin_read().map_err(storage)?;
        let table = read.open_table(ACTIVE).map_err(storage)?;
        Ok(table.get(handler).map_err(storage)?.map(|v| v.value().to_owned()))
    }

    /// A stored module's bytes, verified against the sha256 they are stored
    /// under.
    ///
    /// # Errors
    ///
    /// Storage errors; [`StoreError::ModuleCorrupt`] when the bytes do not
    /// hash to `sha256` (the file was damaged after the deploy).
    pub fn module(&self, sha256: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let read = self.shared.db.begin_read().map_err(storage)?;
        let table = read.open_table(MODULES).map_err(storage)?;
        let Some(bytes) = table.get(sha256).map_err(storage)?.map(|v| v.value().to_vec()) else {
            return Ok(None);
        };
        let actual = sha256_hex(&bytes);
        if actual != sha256 {
            return Err(StoreError::ModuleCorrupt { expected: sha256.to_owned(), actual });
        }
        Ok(Some(bytes))
    }

    /// A handler's deploy history, oldest first, with version numbers.
    ///
    /// # Errors
    ///
    /// Storage or decoding errors.
    pub fn history(&self, handler: &str) -> Result<Vec<(u64, VersionRecord)>, StoreError> {
        let read = self.shared.db.begin_read().map_err(storage)?;
        let table = read.open_table(VERSIONS).map_err(storage)?;
        let mut out = Vec::new();
        for entry in table.range((handler, 0)..=(handler, u64::MAX)).map_err(storage)? {
            let (k, v) = entry.map_err(storage)?;
            out.push((k.value().1, decode(v.value(), || format!("deploy history {handler} #{}", k.value().1))?));
        }
        Ok(out)
    }

    /// Entries per table, for diagnostics: `log`, `parked`, `dlq`,
    /// `idempotency`, `ingest_dedup`.
    ///
    /// # Errors
    ///
    /// Storage errors.
    pub fn table_sizes(&self) -> Result<Vec<(&'static str, u64)>, StoreError> {
        let read = self.shared.db.begin_read().map_err(storage)?;
        Ok(vec![
            ("log", read.open_table(LOG).map_err(storage)?.len().map_err(storage)?),
            ("parked", read.open_table(PARKED).map_err(storage)?.len().map_err(storage)?),
            ("dlq", read.open_table(DLQ).map_err(storage)?.len().map_err(storage)?),
            ("idempotency", read.open_table(IDEMPOTENCY).map_err(storage)?.len().map_err(storage)?),
            ("ingest_dedup", read.open_table(INGEST).map_err(storage)?.len().map_err(storage)?),
        ])
    }

    /// Per-subscription counters.
    ///
    /// # Errors
    ///
    /// Storage errors.
    pub fn stats(&self, subscription: &str) -> Result<SubscriptionStats, StoreError> {
        let read = self.shared.db.begin_read().map_err(storage)?;
        let table = read.open_table(STATS).map_err(storage)?;
        let get = |name: &str| -> Result<u64, StoreError> {
            Ok(table.get((subscription, name)).map_err(storage)?.map_or(0, |v| v.value()))
        };
        Ok(SubscriptionStats {
            handled: get("handled")?,
            duplicates: get("duplicates")?,
            retries: get("retries")?,
            dead_lettered: get("dead_lettered")?,
            emitted: get("emitted")?,
        })
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

fn fail(command: Command, error: StoreError) {
    match command {
        Command::Publish { reply, .. } => reply(Err(error)),
        Command::Results { reply, .. } => reply(Err(error)),
        Command::Redrive { reply, .. } => reply(Err(error)),
        Command::Purge { reply, .. } => reply(Err(error)),
        Command::Sync { reply } => reply(Err(error)),
        Command::Deploy { reply, .. } => reply(Err(error)),
    }
}

enum Answer {
    Published(Reply<Vec<Published>>, Vec<Published>),
    Unit(Reply<()>),
    Bool(Reply<bool>, bool),
    Count(Reply<usize>, usize),
    Number(Reply<u64>, u64),
}

impl Answer {
    fn ok(self) {
        match self {
            Self::Published(r, v) => r(Ok(v)),
            Self::Unit(r) => r(Ok(())),
            Self::Bool(r, v) => r(Ok(v)),
            Self::Count(r, v) => r(Ok(v)),
            Self::Number(r, v) => r(Ok(v)),
        }
    }

    fn err(self, e: StoreError) {
        match self {
            Self::Published(r, _) => r(Err(e)),
            Self::Unit(r) => r(Err(e)),
            Self::Bool(r, _) => r(Err(e)),
            Self::Count(r, _) => r(Err(e)),
            Self::Number(r, _) => r(Err(e)),
        }
    }
}

fn writer_loop(shared: &Shared, rx: &Receiver<Command>, options: &StoreOptions) {
    let mut next_gc = now_ms() + options.gc_interval.as_millis() as u64;
    loop {
        let first = match rx.recv_timeout(options.gc_interval) {
            Ok(command) => Some(command),
            Err(RecvTimeoutError::Timeout) => None,
            Err(RecvTimeoutError::Disconnected) => return,
        };
        let mut batch: Vec<Command> = first.into_iter().collect();
        while batch.len() < MAX_GROUP {
            match rx.try_recv() {
                Ok(command) => batch.push(command),
                Err(_) => break,
            }
        }
        let poisoned = shared.poisoned.lock().unwrap_or_else(PoisonError::into_inner).clone();
        if let Some(reason) = poisoned {
            for command in batch {
                fail(command, StoreError::Poisoned(reason.clone()));
            }
            continue;
        }
        let gc_due = now_ms() >= next_gc;
        if batch.is_empty() && !gc_due {
            continue;
        }
        let count = batch.len() as u64;
        let started = std::time::Instant::now();
        match commit_group(shared, batch, options, gc_due) {
            Ok((answers, appended)) => {
                shared.commit_latency.observe(started.elapsed());
                shared.commit_size.observe(count);
                for answer in &answers {
                    if let Answer::Published(_, list) = answer {
                        let dups = list.iter().filter(|p| p.duplicate).count() as u64;
                        shared.published.fetch_add(list.len() as u64 - dups, Ordering::Relaxed);
                        shared.published_duplicates.fetch_add(dups, Ordering::Relaxed);
                    }
                }
                if gc_due {
                    next_gc = now_ms() + options.gc_interval.as_millis() as u64;
                }
                shared.commits.fetch_add(1, Ordering::Relaxed);
                shared.committed_commands.fetch_add(count, Ordering::Relaxed);
                for answer in answers {
                    answer.ok();
                }
                if appended {
                    let mut watchers = shared.watchers.lock().unwrap_or_else(PoisonError::into_inner);
                    watchers.retain(|wake| wake());
                }
            }
            Err((answers, error)) => {
                tracing::error!(error = %error, "commit failed; the store refuses further writes until restarted");
                *shared.poisoned.lock().unwrap_or_else(PoisonError::into_inner) = Some(error.to_string());
                for answer in answers {
                    answer.err(error.clone());
                }
            }
        }
    }
}

type GroupResult = Result<(Vec<Answer>, bool), (Vec<Answer>, StoreError)>;

fn commit_group(shared: &Shared, batch: Vec<Command>, options: &StoreOptions, gc: bool) -> GroupResult {
    let mut answers = Vec::with_capacity(batch.len());
    let mut head = shared.head.load(Ordering::Acquire);
    let start_head = head;
    let result = (|| -> Result<(), StoreError> {
        let mut txn = shared.db.begin_write().map_err(storage)?;
        txn.set_durability(Durability::Immediate).map_err(storage)?;
        let mut pending = Vec::new();
        for command in batch {
            pending.push(command);
        }
        let mut w = Writes::open(&txn)?;
        let mut stats: HashMap<(Arc<str>, &'static str), u64> = HashMap::new();
        let now = now_ms();
        let expires = now + options.retention.as_millis() as u64;
        for command in pending {
            match command {
                Command::Publish { events, reply } => {
                    let mut out = Vec::with_capacity(events.len());
                    for event in events {
                        out.push(w.append(&event, &mut head, now, expires, true)?);
                    }
                    answers.push(Answer::Published(reply, out));
                }
                Command::Results { subscription, items, cursor, reply } => {
                    let sub: &str = &subscription;
                    let mut recorded: Vec<String> = Vec::new();
                    let mut latest_expiry = 0;
                    for item in items {
                        match item {
                            ResultItem::Handled { seq, key, record, emits, parked } => {
                                w.idempotency
                                    .insert((sub, key.as_str()), encode(&record)?.as_slice())
                                    .map_err(storage)?;
                                latest_expiry = latest_expiry.max(record.expires_at_ms);
                                recorded.push(key);
                                *stats.entry((Arc::clone(&subscription), "emitted")).or_default() += emits.len() as u64;
                                // Emitted events skip the ingest index: their
                                // transaction also records the input as handled, so
                                // a redo cannot emit them twice, and duplicates a
                                // plugin emits itself are caught by the idempotency
                                // check of each subscription downstream.
                                for event in emits {
                                    w.append(&event, &mut head, now, expires, false)?;
                                }
                                if parked {
                                    w.parked.remove((sub, seq)).map_err(storage)?;
                                }
                                *stats.entry((Arc::clone(&subscription), "handled")).or_default() += 1;
                            }
                            ResultItem::Duplicate { seq, parked } => {
                                if parked {
                                    w.parked.remove((sub, seq)).map_err(storage)?;
                                }
                                *stats.entry((Arc::clone(&subscription), "duplicates")).or_default() += 1;
                            }
                            ResultItem::Park(entry) => {
                                if entry.attempts > 0 {
                                    *stats.entry((Arc::clone(&subscription), "retries")).or_default() += 1;
                                }
                                w.parked.insert((sub, entry.seq), encode(&entry)?.as_slice()).map_err(storage)?;
                            }
                            ResultItem::DeadLetter(entry) => {
                                w.parked.remove((sub, entry.seq)).map_err(storage)?;
                                w.dlq.insert((sub, entry.seq), encode(&*entry)?.as_slice()).map_err(storage)?;
                                *stats.entry((Arc::clone(&subscription), "dead_lettered")).or_default() += 1;
                            }
                        }
                    }
                    if !recorded.is_empty() {
                        // Indexed under the latest expiry of the batch, so every
                        // record in it has expired when the collector gets there.
                        let batch = shared.batches.fetch_add(1, Ordering::Relaxed);
                        w.idempotency_expiry
                            .insert((latest_expiry, sub, batch), encode(&recorded)?.as_slice())
                            .map_err(storage)?;
                    }
                    if let Some(cursor) = cursor {
                        w.cursors.insert(sub, cursor).map_err(storage)?;
                    }
                    answers.push(Answer::Unit(reply));
                }
                Command::Redrive { subscription, seq, parked, reply } => {
                    let existed = w.dlq.remove((subscription.as_str(), seq)).map_err(storage)?.is_some();
                    if existed {
                        w.parked.insert((subscription.as_str(), seq), encode(&parked)?.as_slice()).map_err(storage)?;
                    }
                    answers.push(Answer::Bool(reply, existed));
                }
                Command::Purge { filter, reply } => {
                    let mut doomed = Vec::new();
                    for entry in w.dlq.iter().map_err(storage)? {
                        let (k, v) = entry.map_err(storage)?;
                        let (sub, seq) = k.value();
                        if !filter.matches_key(sub, seq) {
                            continue;
                        }
                        // Only a filter on the failure code needs the entry
                        // itself. A damaged entry can still be purged by
                        // subscription and seq: that is how an operator
                        // removes it.
                        let selected = match &filter.code {
                            None => true,
                            Some(code) => match decode::<DlqEntry>(v.value(), || dlq_record((sub, seq))) {
                                Ok(entry) => entry.code == *code,
                                Err(e) => {
                                    tracing::warn!(error = %e, "purge by code skips a damaged DLQ entry");
                                    false
                                }
                            },
                        };
                        if selected {
                            doomed.push((sub.to_owned(), seq));
                        }
                    }
                    for (sub, seq) in &doomed {
                        w.dlq.remove((sub.as_str(), *seq)).map_err(storage)?;
                    }
                    answers.push(Answer::Count(reply, doomed.len()));
                }
                Command::Sync { reply } => answers.push(Answer::Unit(reply)),
                Command::Deploy { handler, record, module, reply } => {
                    let mut modules = w.txn.open_table(MODULES).map_err(storage)?;
                    // Stored once per sha256; a stored copy that no longer
                    // hashes to it (damage) is replaced by the good one.
                    let intact = modules
                        .get(record.sha256.as_str())
                        .map_err(storage)?
                        .is_some_and(|stored| sha256_hex(stored.value()) == record.sha256);
                    if !intact {
                        modules.insert(record.sha256.as_str(), module.as_slice()).map_err(storage)?;
                    }
                    let mut versions = w.txn.open_table(VERSIONS).map_err(storage)?;
                    let next = versions
                        .range((handler.as_str(), 0)..=(handler.as_str(), u64::MAX))
                        .map_err(storage)?
                        .next_back()
                        .transpose()
                        .map_err(storage)?
                        .map_or(1, |(k, _)| k.value().1 + 1);
                    versions.insert((handler.as_str(), next), encode(&*record)?.as_slice()).map_err(storage)?;
                    let mut active = w.txn.open_table(ACTIVE).map_err(storage)?;
                    active.insert(handler.as_str(), record.sha256.as_str()).map_err(storage)?;
                    answers.push(Answer::Number(reply, next));
                }
            }
        }
        for ((sub, name), add) in stats {
            let current = w.stats.get((&*sub, name)).map_err(storage)?.map_or(0, |v| v.value());
            w.stats.insert((&*sub, name), current + add).map_err(storage)?;
        }
        if !w.ingested.is_empty() {
            let keys = std::mem::take(&mut w.ingested);
            let batch = shared.batches.fetch_add(1, Ordering::Relaxed);
            w.ingest_expiry.insert((expires, batch), encode(&keys)?.as_slice()).map_err(storage)?;
        }
        if gc {
            w.collect_garbage(now)?;
        }
        drop(w);
        txn.commit().map_err(storage)
    })();
    match result {
        Ok(()) => {
            shared.head.store(head, Ordering::Release);
            Ok((answers, head != start_head))
        }
        Err(e) => Err((answers, e)),
    }
}

/// The tables of one write transaction.
struct Writes<'t> {
    txn: &'t WriteTransaction,
    log: redb::Table<'t, u64, &'static [u8]>,
    cursors: redb::Table<'t, &'static str, u64>,
    parked: redb::Table<'t, (&'static str, u64), &'static [u8]>,
    dlq: redb::Table<'t, (&'static str, u64), &'static [u8]>,
    idempotency: redb::Table<'t, (&'static str, &'static str), &'static [u8]>,
    idempotency_expiry: redb::Table<'t, (u64, &'static str, u64), &'static [u8]>,
    ingest: redb::Table<'t, &'static str, ([u8; 16], u64, u64)>,
    ingest_expiry: redb::Table<'t, (u64, u64), &'static [u8]>,
    stats: redb::Table<'t, (&'static str, &'static str), u64>,
    /// Producer keys indexed by this transaction, for the expiry index.
    ingested: Vec<String>,
}

impl<'t> Writes<'t> {
    fn open(txn: &'t WriteTransaction) -> Result<Self, StoreError> {
        Ok(Self {
            txn,
            log: txn.open_table(LOG).map_err(storage)?,
            cursors: txn.open_table(CURSORS).map_err(storage)?,
            parked: txn.open_table(PARKED).map_err(storage)?,
            dlq: txn.open_table(DLQ).map_err(storage)?,
            idempotency: txn.open_table(IDEMPOTENCY).map_err(storage)?,
            idempotency_expiry: txn.open_table(IDEMPOTENCY_EXPIRY).map_err(storage)?,
            ingest: txn.open_table(INGEST).map_err(storage)?,
            ingest_expiry: txn.open_table(INGEST_EXPIRY).map_err(storage)?,
            stats: txn.open_table(STATS).map_err(storage)?,
            ingested: Vec::new(),
        })
    }

    /// Append one event; with `dedup`, not if its producer key is a known
    /// duplicate.
    fn append(
        &mut self,
        event: &Event,
        head: &mut u64,
        now: u64,
        expires: u64,
        dedup: bool,
    ) -> Result<Published, StoreError> {
        // Every published key is indexed, even one that defaults to the id:
        // a producer may publish a known id again (a replay, a retry).
        let seq = *head;
        if dedup {
            // Insert first and look at what it replaced: one tree search
            // instead of a get and an insert. A live duplicate (rare) puts
            // the old entry back.
            let key = event.idempotency_key.as_str();
            let old = self.ingest.insert(key, (event.id.0, seq, expires)).map_err(storage)?.map(|v| v.value());
            if let Some(old @ (id, old_seq, expires_at)) = old
                && expires_at > now
            {
                self.ingest.insert(key, old).map_err(storage)?;
                return Ok(Published { id: EventId(id), seq: old_seq, duplicate: true });
            }
            self.ingested.push(event.idempotency_key.clone());
        }
        let bytes = encode(event)?;
        self.log.insert(seq, bytes.as_slice()).map_err(storage)?;
        *head += 1;
        Ok(Published { id: event.id, seq, duplicate: false })
    }

    fn collect_garbage(&mut self, now: u64) -> Result<(), StoreError> {
        let mut batches: Vec<(u64, String, u64, Vec<String>)> = Vec::new();
        for entry in self.idempotency_expiry.range((0, "", 0)..(now, "", 0)).map_err(storage)?.take(GC_BATCHES) {
            let (k, v) = entry.map_err(storage)?;
            let (at, sub, batch) = k.value();
            // A damaged batch is dropped: its records then live on until a
            // later handling of the same key renews and re-indexes them.
            // Failing here would poison every commit from now on.
            match decode(v.value(), || format!("idempotency expiry batch {sub} {at}/{batch}")) {
                Ok(keys) => batches.push((at, sub.to_owned(), batch, keys)),
                Err(e) => {
                    tracing::error!(error = %e, "garbage collection skips a damaged record");
                    batches.push((at, sub.to_owned(), batch, Vec::new()));
                }
            }
        }
        let mut collected = 0usize;
        for (at, sub, batch, keys) in &batches {
            self.idempotency_expiry.remove((*at, sub.as_str(), *batch)).map_err(storage)?;
            for key in keys {
                // Only if the record is still the expired one: a later
                // handling of the same key renewed it.
                let stale = match self.idempotency.get((sub.as_str(), key.as_str())).map_err(storage)? {
                    Some(v) => {
                        match decode::<IdempotencyRecord>(v.value(), || format!("idempotency record {sub} key {key:?}"))
                        {
                            Ok(record) => record.expires_at_ms <= now,
                            // Its window is over by the index; a damaged
                            // record is better gone than read.
                            Err(e) => {
                                tracing::error!(error = %e, "garbage collection removes a damaged record");
                                true
                            }
                        }
                    }
                    None => false,
                };
                if stale {
                    self.idempotency.remove((sub.as_str(), key.as_str())).map_err(storage)?;
                    collected += 1;
                }
            }
        }
        let mut ingest_batches: Vec<(u64, u64, Vec<String>)> = Vec::new();
        for entry in self.ingest_expiry.range((0, 0)..(now, 0)).map_err(storage)?.take(GC_BATCHES) {
            let (k, v) = entry.map_err(storage)?;
            let (at, batch) = k.value();
            match decode(v.value(), || format!("ingest expiry batch {at}/{batch}")) {
                Ok(keys) => ingest_batches.push((at, batch, keys)),
                Err(e) => {
                    tracing::error!(error = %e, "garbage collection skips a damaged record");
                    ingest_batches.push((at, batch, Vec::new()));
                }
            }
        }
        let mut collected_keys = 0usize;
        for (at, batch, keys) in &ingest_batches {
            self.ingest_expiry.remove((*at, *batch)).map_err(storage)?;
            for key in keys {
                let stale = self.ingest.get(key.as_str()).map_err(storage)?.is_some_and(|v| v.value().2 <= now);
                if stale {
                    self.ingest.remove(key.as_str()).map_err(storage)?;
                    collected_keys += 1;
                }
            }
        }
        if collected > 0 || collected_keys > 0 {
            tracing::debug!(idempotency = collected, ingest = collected_keys, "collected expired records");
        }
        Ok(())
    }
}
