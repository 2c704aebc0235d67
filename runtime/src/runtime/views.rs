//! Views: the state of a projection (a stateful handler with `view = …`)
//! read by key, with the log position it reflects, for CQRS queries and
//! read-your-writes (`GET /v1/views/…`).

use super::Runtime;
use crate::names::SubscriptionName;
use crate::store::{StoreError, ViewValue};

/// Most entries of one key shown.
pub const VIEW_MAX_ENTRIES: usize = 1000;
/// About the most bytes of keys and values one answer holds.
pub const VIEW_MAX_BYTES: usize = 8 << 20;
/// Most keys of one page of a listing.
pub const VIEW_PAGE_MAX: usize = 1000;

/// Why a view read failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ViewError {
    /// No handler serves this view.
    #[error("no view {0:?}: a view is a handler with `view = \"{0}\"` in the configuration")]
    NotFound(String),
    /// The key has no state in the view.
    #[error("view {view:?} holds nothing for key {key:?} (as of position {position})")]
    KeyNotFound {
        /// The view.
        view: String,
        /// The key.
        key: String,
        /// The position of the read.
        position: u64,
    },
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl ViewError {
    /// Stable code.
    #[must_use]
    pub fn code(&self) -> &'static str {
        match self {
            Self::NotFound(_) => "view_not_found",
            Self::KeyNotFound { .. } => "view_key_not_found",
            Self::Store(e) => e.code(),
        }
    }
}

/// One key of a view: its state's entries (key, value), in key order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ViewEntry {
    /// The event key.
    pub key: String,
    /// The state's entries.
    pub entries: Vec<(Vec<u8>, Vec<u8>)>,
    /// Whether the entries were cut (over [`VIEW_MAX_ENTRIES`] or
    /// [`VIEW_MAX_BYTES`]); the rest reads through the subscription's state
    /// API.
    pub truncated: bool,
}

/// A read of a view and the position it reflects: every event before
/// `position` is in it (handled) or dead-lettered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ViewAnswer<T> {
    /// What was read.
    pub value: T,
    /// The position.
    pub position: u64,
    /// The subscription serving the view.
    pub subscription: String,
}

fn entry(key: String, value: ViewValue) -> ViewEntry {
    ViewEntry { key, entries: value.entries, truncated: value.truncated }
}

impl Runtime {
    /// The subscription that serves `view`.
    ///
    /// # Errors
    ///
    /// [`ViewError::NotFound`].
    pub fn view_subscription(&self, view: &str) -> Result<String, ViewError> {
        self.config()
            .pipelines
            .iter()
            .flat_map(|p| p.handlers.iter().map(move |h| (p, h)))
            .find(|(_, h)| h.view.as_deref() == Some(view))
            .map(|(p, h)| SubscriptionName::new(&p.name, &h.name).to_string())
            .ok_or_else(|| ViewError::NotFound(view.to_owned()))
    }

    /// The position `view` reflects.
    ///
    /// # Errors
    ///
    /// [`ViewError::NotFound`] or the store's error.
    pub fn view_position(&self, view: &str) -> Result<u64, ViewError> {
        let subscription = self.view_subscription(view)?;
        Ok(self.store.view_position(&subscription)?)
    }

    /// One key of `view`.
    ///
    /// # Errors
    ///
    /// [`ViewError::NotFound`], [`ViewError::KeyNotFound`] or the store's
    /// error.
    pub fn view_get(&self, view: &str, key: &str) -> Result<ViewAnswer<ViewEntry>, ViewError> {
        let subscription = self.view_subscription(view)?;
        let read = self.store.view_get(&subscription, key, VIEW_MAX_ENTRIES, VIEW_MAX_BYTES)?;
        match read.value {
            Some(value) => {
                Ok(ViewAnswer { value: entry(key.to_owned(), value), position: read.position, subscription })
            }
            None => Err(ViewError::KeyNotFound { view: view.to_owned(), key: key.to_owned(), position: read.position }),
        }
    }

    /// The keys of `view` starting with `prefix`, after `after`, with their
    /// state; and whether there may be more.
    ///
    /// # Errors
    ///
    /// [`ViewError::NotFound`] or the store's error.
    pub fn view_list(
        &self,
        view: &str,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<ViewAnswer<(Vec<ViewEntry>, bool)>, ViewError> {
        let subscription = self.view_subscription(view)?;
        let limit = limit.clamp(1, VIEW_PAGE_MAX);
        let read = self.store.view_list(&subscription, prefix, after, limit, VIEW_MAX_ENTRIES, VIEW_MAX_BYTES)?;
        let (keys, more) = read.value;
        let keys = keys.into_iter().map(|(k, v)| entry(k, v)).collect();
        Ok(ViewAnswer { value: (keys, more), position: read.position, subscription })
    }
}
