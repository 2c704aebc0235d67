//! Subscriptions as the store holds them: where a new one starts, the
//! log's retention readers, and the listing and deletion of subscriptions
//! the configuration no longer names (orphans).

use std::collections::BTreeSet;

use serde::Serialize;

use super::{Runtime, RuntimeError, Sub};
use crate::config::Config;
use crate::store::{HeldBack, Holdings, RetentionReader, StartPosition, Store, StoreError};
use crate::topic::Pattern;

/// Why a subscription cannot be deleted.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SubscriptionError {
    /// It is in the running configuration: remove it there and restart
    /// first.
    #[error(
        "subscription {0} is in the running configuration; remove it from the config and restart before deleting its data"
    )]
    Configured(String),
    /// The store holds nothing for it.
    #[error("no subscription {0} in the store")]
    NotFound(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl SubscriptionError {
    /// Stable code.
    #[must_use]
    pub fn code(&self) -> &'static str {
        match self {
            Self::Configured(_) => "subscription_configured",
            Self::NotFound(_) => "subscription_not_found",
            Self::Store(e) => e.code(),
        }
    }
}

/// One subscription: configured, or held in the store only (an orphan).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SubscriptionEntry {
    /// `<pipeline>/<handler>` (`sinks/<name>` for a webhook sink).
    pub name: String,
    /// Whether the running configuration names it.
    pub configured: bool,
    /// What the store holds for it.
    pub holdings: Holdings,
    /// Events it kept from retention in the last complete pass, if any.
    pub retention_held: Option<HeldBackInfo>,
}

/// [`HeldBack`], as listed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct HeldBackInfo {
    /// Events the retention policy would have removed but it still needs.
    pub events: u64,
    /// The oldest seq it still needs.
    pub since_seq: u64,
}

impl From<HeldBack> for HeldBackInfo {
    fn from(h: HeldBack) -> Self {
        Self { events: h.events, since_seq: h.since_seq }
    }
}

/// Before a handler's worker starts: register it as a reader of `patterns`
/// for retention, and give it its first cursor from `from` if it has none
/// (`beginning` needs none: no cursor reads from 0).
pub(super) fn prepare(
    store: &Store,
    name: &str,
    patterns: &[Pattern],
    from: StartPosition,
) -> Result<(), RuntimeError> {
    store.register_reader(name, RetentionReader { patterns: Some(patterns.to_vec()), position: None });
    if from != StartPosition::Beginning && store.committed_cursor(name)?.is_none() {
        let seq = store.resolve_start(from)?;
        store.start_cursor_blocking(name, seq)?;
        tracing::info!(subscription = name, seq, ?from, "new subscription starts at its configured position");
    }
    Ok(())
}

/// After every subscription has started: register each (webhook sinks
/// and any other kind included) as a reader of its topics, then apply the
/// configured retention (only now, so no pass runs the policy before every
/// reader is known).
pub(super) fn apply_retention(store: &Store, subs: &[Sub], config: &Config) {
    for sub in subs {
        let patterns: Result<Vec<Pattern>, _> = sub.topics.iter().map(|t| Pattern::parse(t)).collect();
        store.register_reader(&sub.name, RetentionReader { patterns: patterns.ok(), position: None });
    }
    store.set_retention(config.log_retention.clone());
}

impl Runtime {
    /// Names of the subscriptions running: every kind the runtime starts,
    /// and every reader registered with the store (a durable consumer
    /// registers as `consumers/<name>` while it exists).
    pub(super) fn configured_names(&self) -> BTreeSet<String> {
        let mut names: BTreeSet<String> = self.subs.iter().map(|s| s.name.to_string()).collect();
        names.extend(self.store.reader_names());
        names.extend(self.aggregates().registry_names());
        names.extend(self.upcasters.registry_names());
        names
    }

    /// Every configured subscription and every one the store holds data
    /// for, with that data and whether it holds retention back.
    ///
    /// # Errors
    ///
    /// Storage errors.
    pub fn subscription_list(&self) -> Result<Vec<SubscriptionEntry>, StoreError> {
        let configured = self.configured_names();
        let mut holdings = self.store.holdings()?;
        for name in &configured {
            holdings.entry(name.clone()).or_default();
        }
        let held = self.store.retention_held();
        Ok(holdings
            .into_iter()
            .map(|(name, holdings)| SubscriptionEntry {
                configured: configured.contains(&name),
                retention_held: held.get(&name).copied().map(Into::into),
                name,
                holdings,
            })
            .collect())
    }

    /// Delete everything the store holds for a subscription that is not in
    /// the running configuration; answers what it held.
    ///
    /// # Errors
    ///
    /// [`SubscriptionError::Configured`] for one the configuration names,
    /// [`SubscriptionError::NotFound`] when the store holds nothing for
    /// it, or the store's error.
    pub fn delete_subscription(&self, name: &str) -> Result<Holdings, SubscriptionError> {
        if self.configured_names().contains(name) {
            return Err(SubscriptionError::Configured(name.to_owned()));
        }
        let holdings = self.store.holdings()?;
        let Some(held) = holdings.get(name).cloned() else {
            return Err(SubscriptionError::NotFound(name.to_owned()));
        };
        self.store.unregister_reader(name);
        self.store.delete_subscription_blocking(name)?;
        tracing::info!(subscription = name, ?held, "deleted an orphaned subscription's data");
        Ok(held)
    }
}
