//! Handler state: (subscription, scope, key) → value, written only in the
//! transaction that commits the outcome of the invocation that wrote it
//! (with its emitted events, its idempotency record and the cursor), so a
//! state change happens exactly once per handled event.
//!
//! A scope is the event's key (`KEY` with the key) or the whole
//! subscription (`SHARED` with an empty name). The worker keeps the writes
//! of batches not yet committed in memory and reads through them
//! (`delivery/state.rs`); this module is what is committed.

use std::ops::Bound;

use redb::{ReadableTable, TableDefinition};

use super::command::Fatal;
use super::writer::Writes;
use super::{Store, StoreError, storage};

/// (subscription, scope kind, scope, key) → value.
pub(super) const STATE: TableDefinition<'_, (&str, u8, &str, &[u8]), &[u8]> = TableDefinition::new("state");

/// The scope kind of the event's key.
pub(crate) const KIND_KEY: u8 = 0;
/// The scope kind of the subscription-wide state.
pub(crate) const KIND_SHARED: u8 = 1;

/// One scope of one subscription's state.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct ScopeId {
    /// [`KIND_KEY`] or [`KIND_SHARED`].
    pub(crate) kind: u8,
    /// The event's key, or empty for the shared scope.
    pub(crate) name: String,
}

/// One write of a handled event, in the order the handler made it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct StateWrite {
    pub(crate) scope: ScopeId,
    pub(crate) key: Vec<u8>,
    /// `None` deletes.
    pub(crate) value: Option<Vec<u8>>,
}

impl StateWrite {
    /// About how much memory it holds.
    pub(crate) fn bytes(&self) -> usize {
        self.scope.name.len() + self.key.len() + self.value.as_ref().map_or(0, Vec::len) + 64
    }
}

/// One entry read back: key and value.
pub(crate) type Entry = (Vec<u8>, Vec<u8>);

/// Apply `writes` of `subscription` in this group's transaction.
pub(super) fn apply(w: &mut Writes<'_>, subscription: &str, writes: &[StateWrite]) -> Result<(), Fatal> {
    if writes.is_empty() {
        return Ok(());
    }
    let mut table = w.txn.open_table(STATE)?;
    for write in writes {
        let key = (subscription, write.scope.kind, write.scope.name.as_str(), write.key.as_slice());
        match &write.value {
            Some(value) => {
                table.insert(key, value.as_slice())?;
            }
            None => {
                table.remove(key)?;
            }
        }
    }
    Ok(())
}

/// Remove up to `budget` state entries of `subscription`; answers how many.
pub(super) fn delete_some(w: &mut Writes<'_>, subscription: &str, budget: usize) -> Result<usize, Fatal> {
    let mut table = w.txn.open_table(STATE)?;
    let keys: Vec<(u8, String, Vec<u8>)> = table
        .range((subscription, 0u8, "", &[][..])..)?
        .take(budget)
        .map(|e| {
            e.map(|(k, _)| {
                let (s, kind, scope, key) = k.value();
                (s == subscription, kind, scope.to_owned(), key.to_vec())
            })
        })
        .take_while(|r| r.as_ref().map_or(true, |(mine, ..)| *mine))
        .map(|r| r.map(|(_, kind, scope, key)| (kind, scope, key)))
        .collect::<Result<_, _>>()?;
    for (kind, scope, key) in &keys {
        table.remove((subscription, *kind, scope.as_str(), key.as_slice()))?;
    }
    Ok(keys.len())
}

impl Store {
    /// The committed value of `key` in `scope` of `subscription`.
    ///
    /// # Errors
    ///
    /// Storage errors.
    pub(crate) fn state_get(
        &self,
        subscription: &str,
        scope: &ScopeId,
        key: &[u8],
    ) -> Result<Option<Vec<u8>>, StoreError> {
        let read = self.shared.begin_read()?;
        let table = read.open_table(STATE).map_err(storage)?;
        let value = table.get((subscription, scope.kind, scope.name.as_str(), key)).map_err(storage)?;
        Ok(value.map(|v| v.value().to_vec()))
    }

    /// Up to `limit` committed entries of `scope` whose keys start with
    /// `prefix` and sort after `after` (from the first when `None`), in key
    /// order.
    ///
    /// # Errors
    ///
    /// Storage errors.
    pub(crate) fn state_scan(
        &self,
        subscription: &str,
        scope: &ScopeId,
        prefix: &[u8],
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<Entry>, StoreError> {
        let read = self.shared.begin_read()?;
        let table = read.open_table(STATE).map_err(storage)?;
        let s = scope.name.as_str();
        let low = match after {
            Some(after) if after >= prefix => Bound::Excluded((subscription, scope.kind, s, after)),
            _ => Bound::Included((subscription, scope.kind, s, prefix)),
        };
        let mut out = Vec::new();
        for entry in table.range::<(&str, u8, &str, &[u8])>((low, Bound::Unbounded)).map_err(storage)? {
            if out.len() >= limit {
                break;
            }
            let (k, v) = entry.map_err(storage)?;
            let (sub, kind, name, key) = k.value();
            if sub != subscription || kind != scope.kind || name != s || !key.starts_with(prefix) {
                break;
            }
            out.push((key.to_vec(), v.value().to_vec()));
        }
        Ok(out)
    }

    /// How many keys `scope` holds, and whether each of `probes` is one of
    /// them, read in one snapshot (so the answer is consistent with itself
    /// whatever commits meanwhile).
    ///
    /// # Errors
    ///
    /// Storage errors.
    pub(crate) fn state_census(
        &self,
        subscription: &str,
        scope: &ScopeId,
        probes: &[&[u8]],
    ) -> Result<(usize, Vec<bool>), StoreError> {
        let read = self.shared.begin_read()?;
        let table = read.open_table(STATE).map_err(storage)?;
        let s = scope.name.as_str();
        let mut count = 0;
        for entry in table.range((subscription, scope.kind, s, &[][..])..).map_err(storage)? {
            let (k, _) = entry.map_err(storage)?;
            let (sub, kind, name, _) = k.value();
            if sub != subscription || kind != scope.kind || name != s {
                break;
            }
            count += 1;
        }
        let present = probes
            .iter()
            .map(|key| table.get((subscription, scope.kind, s, *key)).map(|v| v.is_some()).map_err(storage))
            .collect::<Result<_, _>>()?;
        Ok((count, present))
    }

    /// The scopes of `subscription` that hold state, after `after`, at most
    /// `limit`: one lookup per scope.
    ///
    /// # Errors
    ///
    /// Storage errors.
    pub(crate) fn state_scopes(
        &self,
        subscription: &str,
        after: Option<&ScopeId>,
        limit: usize,
    ) -> Result<Vec<ScopeId>, StoreError> {
        let read = self.shared.begin_read()?;
        let table = read.open_table(STATE).map_err(storage)?;
        let mut out: Vec<ScopeId> = Vec::new();
        // The least scope after `s` is `s` and a NUL.
        let mut from = after.map(|a| (a.kind, format!("{}\0", a.name)));
        while out.len() < limit {
            let (kind, name) = from.clone().unwrap_or((0, String::new()));
            let next = table
                .range((subscription, kind, name.as_str(), &[][..])..)
                .map_err(storage)?
                .next()
                .transpose()
                .map_err(storage)?;
            let Some((k, _)) = next else { break };
            let (sub, kind, name, _) = k.value();
            if sub != subscription {
                break;
            }
            let scope = ScopeId { kind, name: name.to_owned() };
            from = Some((kind, format!("{name}\0")));
            out.push(scope);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::StoreOptions;
    use crate::store::testing::commit_state;

    fn scope(name: &str) -> ScopeId {
        ScopeId { kind: KIND_KEY, name: name.to_owned() }
    }

    #[test]
    fn writes_are_read_back_by_key_prefix_and_scope_and_deletes_remove() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("weir.redb"), StoreOptions::default()).unwrap();
        let put = |scope: &str, key: &str, value: &str| StateWrite {
            scope: self::scope(scope),
            key: key.as_bytes().to_vec(),
            value: Some(value.as_bytes().to_vec()),
        };
        commit_state(
            &store,
            "p/h",
            vec![put("a", "x1", "1"), put("a", "x2", "2"), put("a", "y", "3"), put("b", "x1", "4")],
        );
        commit_state(&store, "p/other", vec![put("a", "x1", "other")]);
        assert_eq!(store.state_get("p/h", &scope("a"), b"x1").unwrap(), Some(b"1".to_vec()));
        assert_eq!(store.state_get("p/h", &scope("b"), b"x1").unwrap(), Some(b"4".to_vec()));
        assert_eq!(store.state_get("p/h", &scope("c"), b"x1").unwrap(), None);
        let keys =
            |entries: Vec<Entry>| entries.into_iter().map(|(k, _)| String::from_utf8(k).unwrap()).collect::<Vec<_>>();
        assert_eq!(keys(store.state_scan("p/h", &scope("a"), b"x", None, 10).unwrap()), ["x1", "x2"]);
        assert_eq!(keys(store.state_scan("p/h", &scope("a"), b"", Some(b"x1"), 10).unwrap()), ["x2", "y"]);
        assert_eq!(keys(store.state_scan("p/h", &scope("a"), b"", None, 1).unwrap()), ["x1"]);
        let scopes = store.state_scopes("p/h", None, 10).unwrap();
        assert_eq!(scopes, vec![scope("a"), scope("b")]);
        assert_eq!(store.state_scopes("p/h", Some(&scope("a")), 10).unwrap(), vec![scope("b")]);
        commit_state(&store, "p/h", vec![StateWrite { scope: scope("a"), key: b"x1".to_vec(), value: None }]);
        assert_eq!(store.state_get("p/h", &scope("a"), b"x1").unwrap(), None);
        assert_eq!(store.state_get("p/other", &scope("a"), b"x1").unwrap(), Some(b"other".to_vec()));
    }
}
