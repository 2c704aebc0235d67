//! What every handle of one store shares: the open database (reopened after
//! a failed commit), the outage state, the counters and the watchers.

use super::*;

pub(super) struct Shared {
    /// The open database; `None` while the writer reopens it after a
    /// failed commit (redb refuses every access after an I/O error until
    /// the database is closed and opened again).
    pub(super) db: RwLock<Option<Arc<Database>>>,
    /// How to open the database again.
    pub(super) source: Source,
    pub(super) path: PathBuf,
    /// Next sequence number to assign = number of the first event not yet in the log.
    pub(super) head: AtomicU64,
    /// Why writes are refused now, after a failed commit, and when the
    /// writer tries again.
    pub(super) outage: Mutex<Option<Outage>>,
    /// Failed commits since open. A subscription's outcome batch carries
    /// the number it started under: a batch built before a failure is
    /// refused, so nothing after a lost batch can commit.
    pub(super) generation: AtomicU64,
    /// Called after every commit that appended to the log; a watcher that
    /// returns `false` is dropped.
    pub(super) watchers: Mutex<Vec<Box<dyn Fn() -> bool + Send>>>,
    pub(super) commits: AtomicU64,
    pub(super) committed_commands: AtomicU64,
    /// Time per group commit (apply + fsync).
    pub(super) commit_latency: crate::metrics::Histogram,
    /// Commands per group commit.
    pub(super) commit_size: crate::metrics::SizeHistogram,
    /// Events published (stored) and publishes refused as duplicates.
    pub(super) published: AtomicU64,
    pub(super) published_duplicates: AtomicU64,
    /// Event bytes of publishes sent to the writer and not yet applied.
    pub(super) queued_publish_bytes: Arc<std::sync::atomic::AtomicUsize>,
    pub(super) max_queued_publish_bytes: usize,
    /// Names expiry batches; starts at the open time in nanoseconds so names
    /// never repeat across restarts.
    pub(super) batches: AtomicU64,
    /// [`StoreOptions::keep_versions`].
    pub(super) keep_versions: usize,
    /// The log's retention policy, its readers and what the pass reports.
    pub(super) retention: retention::RetentionState,
    /// Wakes the timer firing task when a commit schedules a timer.
    pub(super) timers: timer::Signal,
}

/// Where the database lives, to open it again after a failed commit.
pub(super) enum Source {
    File(PathBuf),
    Backend(Arc<dyn redb::StorageBackend>),
}

/// The writes are refused for now: a commit failed. The writer tries again
/// at `retry_at` (and answers what arrives before with `error`), waiting
/// longer after each failure, up to [`MAX_BACKOFF`].
#[derive(Debug)]
pub(super) struct Outage {
    pub(super) error: StoreError,
    pub(super) retry_at: Instant,
    pub(super) backoff: Duration,
}

/// First wait after a failed commit; it doubles with each failure in a row.
pub(super) const FIRST_BACKOFF: Duration = Duration::from_millis(50);

/// Longest wait between two tries of a failing store.
pub(super) const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// A storage backend shared with the store's earlier openings: redb closes
/// its backend when a database is dropped, and a reopened database needs
/// one again.
#[derive(Debug)]
pub(super) struct SharedBackend(pub(super) Arc<dyn redb::StorageBackend>);

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
    pub(super) fn database(&self) -> Result<Arc<Database>, StoreError> {
        self.db.read().unwrap_or_else(PoisonError::into_inner).clone().ok_or_else(|| {
            let outage = self.outage.lock().unwrap_or_else(PoisonError::into_inner);
            let why = outage.as_ref().map_or_else(|| "reopening".to_owned(), |o| o.error.to_string());
            StoreError::Unavailable(format!("reopening the store after a failed commit: {why}"))
        })
    }

    /// A read transaction on the last committed state.
    pub(super) fn begin_read(&self) -> Result<ReadTransaction, StoreError> {
        self.database()?.begin_read().map_err(storage)
    }

    /// While writes are refused: how long until the writer tries again
    /// (zero once due). `None` when the store takes writes.
    pub(super) fn retry_in(&self) -> Option<Duration> {
        let outage = self.outage.lock().unwrap_or_else(PoisonError::into_inner);
        let due = outage.as_ref()?.retry_at;
        // Also due when the database is closed and could be reopened.
        Some(due.saturating_duration_since(Instant::now()))
    }

    /// Why writes are refused now, if they are.
    pub(super) fn outage_reason(&self) -> Option<String> {
        self.outage.lock().unwrap_or_else(PoisonError::into_inner).as_ref().map(|o| o.error.to_string())
    }

    /// A commit failed with `error`: refuse writes for a while, invalidate
    /// the outcome batches built so far, and reopen the database so reads
    /// work again.
    pub(super) fn failed(&self, error: &StoreError) {
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
    pub(super) fn recovered(&self) {
        if self.outage.lock().unwrap_or_else(PoisonError::into_inner).take().is_some() {
            tracing::info!("the store commits again; writes resume");
        }
    }

    /// Before the writer tries a group: the error to answer it with while
    /// an outage waits for its next try; otherwise the database (reopened
    /// first if it has to be).
    pub(super) fn writable(&self) -> Result<Arc<Database>, StoreError> {
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
    pub(super) fn reopen(&self) -> Result<(), StoreError> {
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
