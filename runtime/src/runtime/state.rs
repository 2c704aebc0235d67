//! Reading a stateful handler's committed state from outside: what
//! `GET /v1/subscriptions/{pipeline}/{handler}/state` answers.

use super::{Runtime, SubscriptionError};
use crate::store::{KIND_KEY, KIND_SHARED, ScopeId};

/// Most entries or scopes one read answers.
pub const STATE_PAGE_MAX: usize = 1000;

/// One page of a scope's entries, in key order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatePage {
    /// Key and value, as stored.
    pub entries: Vec<(Vec<u8>, Vec<u8>)>,
    /// Whether there may be more after the last entry.
    pub more: bool,
}

/// One page of the scopes holding state: each an event key (`None` is the
/// shared scope).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScopePage {
    /// In order: the shared scope after every key scope.
    pub scopes: Vec<Option<String>>,
    /// Whether there may be more after the last one.
    pub more: bool,
}

impl Runtime {
    fn known(&self, name: &str) -> Result<(), SubscriptionError> {
        if self.configured_names().contains(name) { Ok(()) } else { Err(SubscriptionError::NotFound(name.to_owned())) }
    }

    /// The committed entries of one scope of `name`'s state (`key` `None`:
    /// the shared scope) whose keys start with `prefix`, after `after`. The
    /// writes of events handled but not committed yet are not shown.
    ///
    /// # Errors
    ///
    /// [`SubscriptionError::NotFound`] for a subscription the configuration
    /// does not name, or the store's error.
    pub fn subscription_state(
        &self,
        name: &str,
        key: Option<&str>,
        prefix: &[u8],
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<StatePage, SubscriptionError> {
        self.known(name)?;
        let scope = match key {
            Some(k) => ScopeId { kind: KIND_KEY, name: k.to_owned() },
            None => ScopeId { kind: KIND_SHARED, name: String::new() },
        };
        let limit = limit.clamp(1, STATE_PAGE_MAX);
        let mut entries = self.store.state_scan(name, &scope, prefix, after, limit + 1)?;
        let more = entries.len() > limit;
        entries.truncate(limit);
        Ok(StatePage { entries, more })
    }

    /// The scopes of `name`'s state that hold entries, after the key
    /// scope `after`.
    ///
    /// # Errors
    ///
    /// As [`subscription_state`](Self::subscription_state).
    pub fn subscription_state_scopes(
        &self,
        name: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<ScopePage, SubscriptionError> {
        self.known(name)?;
        let limit = limit.clamp(1, STATE_PAGE_MAX);
        let after = after.map(|a| ScopeId { kind: KIND_KEY, name: a.to_owned() });
        let mut scopes = self.store.state_scopes(name, after.as_ref(), limit + 1)?;
        let more = scopes.len() > limit;
        scopes.truncate(limit);
        let scopes = scopes.into_iter().map(|s| (s.kind == KIND_KEY).then_some(s.name)).collect();
        Ok(ScopePage { scopes, more })
    }
}
