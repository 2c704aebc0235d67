//! Why the runtime could not start, or an operation on it failed.

use crate::error::{EngineError, LoadError};
use crate::store::StoreError;

/// Why the runtime could not start or an operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RuntimeError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The engine could not be created.
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// A plugin was refused.
    #[error("handler {subscription}: plugin {plugin} refused: {error}")]
    Plugin {
        /// The subscription.
        subscription: String,
        /// The plugin path.
        plugin: String,
        /// Why (in the message, not a `source()`: every reason prints once).
        error: LoadError,
    },
    /// The data directory cannot be created.
    #[error("cannot create the data directory {path}: {error}")]
    DataDir {
        /// The directory.
        path: String,
        /// The I/O error (in the message, not a `source()`).
        error: std::io::Error,
    },
    /// A subscription named in a request does not exist.
    #[error("no subscription named {0:?}")]
    UnknownSubscription(String),
    /// A handler's active module in the store is missing or damaged.
    #[error(
        "handler {subscription}: its active plugin version {version} (sha256 {sha256}) in the store is damaged: {error}"
    )]
    StoredModule {
        /// The subscription.
        subscription: String,
        /// The version's number in the deploy history (`?` if unknown).
        version: String,
        /// The module's sha256.
        sha256: String,
        /// What is wrong with it (in the message, not a `source()`).
        error: Box<StoreError>,
    },
    /// An upcaster module does not fit its `[[upcasters]]` entry.
    #[error("{0}")]
    Upcaster(String),
    /// A handler accepts schema versions that some version arriving on a
    /// topic it subscribes to cannot reach through the upcasters.
    #[error("handler {subscription}: {reason}")]
    Unreachable {
        /// The subscription.
        subscription: String,
        /// Which version of which topic pattern reaches what.
        reason: String,
    },
    /// Source DLQ entries that still make no event with the source's
    /// current configuration: they stay in the DLQ.
    #[error(
        "source DLQ entries not redriven, they stay ({} of them; {redriven} others redriven): {}",
        refused.len(),
        refused.iter().take(5).cloned().collect::<Vec<_>>().join("; ")
    )]
    SourceRedrive {
        /// Entries redriven by the same request.
        redriven: usize,
        /// Why each refused entry stays.
        refused: Vec<String>,
    },
    /// A worker thread could not be started or died.
    #[error("subscription worker failed: {0}")]
    Worker(String),
    /// Shutdown gave up after its deadline on what had not stopped; what
    /// they had not committed is redone at the next start.
    #[error(
        "shutdown deadline of {deadline:?} passed before these stopped: {}; what they had not committed is redone at the next start",
        pending.join(", ")
    )]
    ShutdownTimeout {
        /// The deadline.
        deadline: std::time::Duration,
        /// What had not stopped (subscriptions, the store's last commit).
        pending: Vec<String>,
    },
}

impl RuntimeError {
    /// Stable code.
    #[must_use]
    pub fn code(&self) -> &'static str {
        match self {
            Self::Store(e) => e.code(),
            Self::Engine(e) => e.code(),
            Self::Plugin { error, .. } => error.code(),
            Self::DataDir { .. } => "data_dir",
            Self::StoredModule { error, .. } => error.code(),
            Self::UnknownSubscription(_) => "unknown_subscription",
            Self::Worker(_) => "worker",
            Self::SourceRedrive { .. } => "source_still_rejected",
            Self::Upcaster(_) => "not_an_upcaster",
            Self::Unreachable { .. } => "unreachable_version",
            Self::ShutdownTimeout { .. } => "shutdown_timeout",
        }
    }
}

impl From<std::sync::mpsc::RecvError> for RuntimeError {
    fn from(_: std::sync::mpsc::RecvError) -> Self {
        Self::Worker("a worker stopped".into())
    }
}
