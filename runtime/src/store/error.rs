//! [`StoreError`]: why a store operation failed.

use std::path::PathBuf;

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
    /// A commit failed earlier; no more writes until reopened. Not
    /// answered any more (a failed commit is retried, see
    /// [`StoreError::Full`] and [`StoreError::Storage`]); kept for its code.
    #[error("the store refused the write: an earlier commit failed ({0}); restart to recover")]
    Poisoned(String),
    /// The disk (or the user's quota) is full: the write was not stored.
    /// Reads go on; writes resume by themselves once space is freed.
    #[error(
        "the disk holding the store is full ({0}): nothing of this request was stored; writes resume by themselves once space is freed"
    )]
    Full(String),
    /// The store is reopening after a failed commit; retry shortly.
    #[error("the store is unavailable for a moment: {0}")]
    Unavailable(String),
    /// A batch of outcomes built before a commit failed: it is refused so
    /// that nothing after the lost batch commits; the subscription restarts
    /// from its committed cursor.
    #[error("outcomes built before a failed commit are refused; the subscription restarts from its committed cursor")]
    Interrupted,
    /// The writer has shut down.
    #[error("the store is closed")]
    Closed,
    /// Admission control: too many publish bytes wait for the writer.
    #[error("the store's writer is busy: {queued} bytes of publishes wait, the bound is {limit} (retry shortly)")]
    Overloaded {
        /// Bytes waiting when the publish came.
        queued: usize,
        /// `max_queued_publish_bytes`.
        limit: usize,
    },
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
            Self::Full(_) => "store_full",
            Self::Unavailable(_) => "store_unavailable",
            Self::Interrupted => "store_interrupted",
            Self::Closed => "store_closed",
            Self::Overloaded { .. } => "overloaded",
            Self::Decode(_) => "store_decode",
            Self::RecordCorrupt { .. } => "store_record_corrupt",
            Self::ModuleCorrupt { .. } => "store_module_corrupt",
        }
    }
}

/// A redb error as [`StoreError::Storage`]: for reads and for opening. The
/// writer classifies its errors itself (`writer::Fatal`).
pub(super) fn storage(e: impl Into<redb::Error>) -> StoreError {
    let e = e.into();
    if let redb::Error::Io(io) = &e
        && is_full(io)
    {
        return StoreError::Full(e.to_string());
    }
    StoreError::Storage(e.to_string())
}

/// Whether an I/O error says the disk or the quota is full (`ENOSPC`,
/// `EDQUOT`).
pub(super) fn is_full(e: &std::io::Error) -> bool {
    matches!(e.kind(), std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded)
}
