//! Handler state: (subscription, scope, key) → value, written only in the
//! transaction that commits the outcome of the invocation that wrote it
//! (with its emitted events, its idempotency record and the cursor), so a
//! state change happens exactly once per handled event.
//!
//! A scope is the event's key (`KEY` with the key) or the whole
//! subscription (`SHARED` with an empty name). The worker keeps the writes
//! of batches not yet committed in memory and reads through them
//! (`delivery/state.rs`); this module is what is committed.
//!
//! The table is keyed by a *namespace*, not the subscription name itself:
//! `state_generations` maps a subscription to its generation, and
//! generation 0 is the subscription's name, generation n `<name>@<n>` (`@`
//! is never in a subscription name). A replay (`delivery/replay.rs`)
//! builds the next generation beside the live one and switches with one
//! write of the map; every read and write resolves the namespace in its own
//! transaction, so it sees one generation or the other, whole.

use std::ops::Bound;

use redb::{ReadTransaction, ReadableTable, TableDefinition};

use super::codec::{Encoded, Records, decode_head};
use super::command::{Apply, Command, Failure, Fatal, Order};
use super::subscription::{DLQ, IDEMPOTENCY, PARKED};
use super::writer::Writes;
use super::{Started, Store, StoreError, storage};

/// (subscription, scope kind, scope, key) → value.
pub(super) const STATE: TableDefinition<'_, (&str, u8, &str, &[u8]), &[u8]> = TableDefinition::new("state");

/// subscription → its state's generation (absent: 0).
pub(super) const STATE_GENERATIONS: TableDefinition<'_, &str, u64> = TableDefinition::new("state_generations");

/// The namespace of `subscription`'s state at `generation`.
pub(crate) fn namespace(subscription: &str, generation: u64) -> String {
    if generation == 0 { subscription.to_owned() } else { format!("{subscription}@{generation}") }
}

/// Whose state a read means: a subscription's live state (its current
/// generation, resolved in the read's transaction), or one namespace (a
/// replay's shadow).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Space<'a> {
    Live(&'a str),
    Namespace(&'a str),
}

impl<'a> From<&'a str> for Space<'a> {
    fn from(subscription: &'a str) -> Self {
        Space::Live(subscription)
    }
}

impl<'a> From<&'a String> for Space<'a> {
    fn from(subscription: &'a String) -> Self {
        Space::Live(subscription)
    }
}

/// The namespace `space` names in `read`.
pub(super) fn resolve(read: &ReadTransaction, space: Space<'_>) -> Result<String, StoreError> {
    match space {
        Space::Namespace(ns) => Ok(ns.to_owned()),
        Space::Live(sub) => {
            let generation = read.open_table(STATE_GENERATIONS).map_err(storage)?.get(sub).map_err(storage)?;
            Ok(namespace(sub, generation.map_or(0, |g| g.value())))
        }
    }
}

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
    let generation = w.txn.open_table(STATE_GENERATIONS)?.get(subscription)?.map_or(0, |g| g.value());
    apply_to(w, &namespace(subscription, generation), writes)
}

/// Apply `writes` to the namespace `ns`.
pub(super) fn apply_to(w: &mut Writes<'_>, ns: &str, writes: &[StateWrite]) -> Result<(), Fatal> {
    let mut table = w.txn.open_table(STATE)?;
    for write in writes {
        let key = (ns, write.scope.kind, write.scope.name.as_str(), write.key.as_slice());
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

/// Remove up to `budget` state entries of `subscription`, of every
/// generation (a replay's leftover shadow included), and its generation
/// once they are all gone; answers how many.
pub(super) fn delete_some(w: &mut Writes<'_>, subscription: &str, budget: usize) -> Result<usize, Fatal> {
    let mut done = delete_namespace_some(w, subscription, budget)?;
    // The other generations: `<subscription>@…`, between `@` and `A`.
    let low = format!("{subscription}@");
    while done < budget {
        let next = {
            let table = w.txn.open_table(STATE)?;
            let first = table.range((low.as_str(), 0u8, "", &[][..])..)?.next().transpose()?;
            first.map(|(k, _)| k.value().0.to_owned()).filter(|ns| ns.starts_with(&low))
        };
        let Some(ns) = next else { break };
        done += delete_namespace_some(w, &ns, budget - done)?;
    }
    if done < budget {
        w.txn.open_table(STATE_GENERATIONS)?.remove(subscription)?;
    }
    Ok(done)
}

/// Remove up to `budget` entries of the namespace `subscription`; answers
/// how many.
pub(super) fn delete_namespace_some(w: &mut Writes<'_>, subscription: &str, budget: usize) -> Result<usize, Fatal> {
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

/// Handler state written outside a subscription's results: by a replay.
pub(super) enum StateOp {
    /// Writes into one namespace (a shadow's), in order.
    Batch { namespace: String, writes: Vec<StateWrite> },
    /// Point `subscription` at `generation`: the switch of a replay.
    Switch { subscription: String, generation: u64 },
    /// Remove up to [`DELETE_BATCH`](super::lifecycle::DELETE_BATCH)
    /// entries of a namespace; answers how many.
    DeleteNamespace { namespace: String },
}

impl Apply for StateOp {
    /// Entries deleted, or 0.
    type Answer = u64;
    type Checked = ();

    fn check(&self, _: &Writes<'_>, _: &mut Encoded) -> Result<(), Failure> {
        Ok(())
    }

    fn write(self, (): (), w: &mut Writes<'_>, _: Records<'_>) -> Result<u64, Fatal> {
        match self {
            Self::Batch { namespace, writes } => {
                apply_to(w, &namespace, &writes)?;
                Ok(0)
            }
            Self::Switch { subscription, generation } => {
                w.txn.open_table(STATE_GENERATIONS)?.insert(subscription.as_str(), generation)?;
                Ok(0)
            }
            Self::DeleteNamespace { namespace } => {
                Ok(delete_namespace_some(w, &namespace, super::lifecycle::DELETE_BATCH)? as u64)
            }
        }
    }
}

/// What the live subscription did with one event, for a replay to mirror.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LiveOutcome {
    /// Handled: its idempotency record names this event.
    Handled,
    /// Parked for a retry or dead-lettered: not applied (yet).
    Held,
    /// A duplicate it skipped: the record names another event.
    Skipped,
    /// No record: expired (older than the retention window), or derived
    /// from its ingest claim (`derived.rs`). The replay applies it unless it
    /// applied its key already, which is what the live subscription did
    /// with a claimed key (the one exception: a later event reusing a key
    /// whose claim's event lies before the replay's start).
    Unknown,
}

impl Store {
    /// The generation `subscription`'s live state is at.
    ///
    /// # Errors
    ///
    /// Storage errors.
    pub(crate) fn state_generation(&self, subscription: &str) -> Result<u64, StoreError> {
        let read = self.shared.begin_read()?;
        let table = read.open_table(STATE_GENERATIONS).map_err(storage)?;
        Ok(table.get(subscription).map_err(storage)?.map_or(0, |g| g.value()))
    }

    /// Commit `writes` into the namespace `ns`: handed to the writer, not
    /// waited for ([`Started::wait`] waits for the commit and answers its
    /// error).
    pub(crate) fn commit_state_started(&self, ns: &str, writes: Vec<StateWrite>) -> Started<u64> {
        if writes.is_empty() {
            let (tx, rx) = std::sync::mpsc::channel();
            let _ = tx.send(Ok(0));
            return Started(rx);
        }
        let op = StateOp::Batch { namespace: ns.to_owned(), writes };
        self.start(|reply| Command::State(Order::new(op, reply)))
    }

    /// Point `subscription`'s live state at `generation`, durably.
    ///
    /// # Errors
    ///
    /// The commit's.
    pub(crate) fn switch_state(&self, subscription: &str, generation: u64) -> Result<(), StoreError> {
        let op = StateOp::Switch { subscription: subscription.to_owned(), generation };
        self.ask(|reply| Command::State(Order::new(op, reply))).map(drop)
    }

    /// Delete every entry of the namespace `ns`, in commands of a bounded
    /// size.
    ///
    /// # Errors
    ///
    /// The commit's (what was deleted before stays deleted).
    pub(crate) fn delete_state_namespace_blocking(&self, ns: &str) -> Result<(), StoreError> {
        loop {
            let op = StateOp::DeleteNamespace { namespace: ns.to_owned() };
            if self.ask(|reply| Command::State(Order::new(op, reply)))? == 0 {
                return Ok(());
            }
        }
    }

    /// What `subscription` did with each `(seq, idempotency key)`, read in
    /// one snapshot.
    ///
    /// # Errors
    ///
    /// Storage errors, or a record that does not decode.
    pub(crate) fn live_outcomes(
        &self,
        subscription: &str,
        asks: &[(u64, &str)],
    ) -> Result<Vec<LiveOutcome>, StoreError> {
        let read = self.shared.begin_read()?;
        let records = read.open_table(IDEMPOTENCY).map_err(storage)?;
        // The parked and dead-lettered events of the asked range, read as
        // two ranges rather than two lookups per event: there are few.
        let mut held = std::collections::HashSet::new();
        if let (Some(low), Some(high)) = (asks.iter().map(|a| a.0).min(), asks.iter().map(|a| a.0).max()) {
            for table in [PARKED, DLQ] {
                let table = read.open_table(table).map_err(storage)?;
                for entry in table.range((subscription, low)..=(subscription, high)).map_err(storage)? {
                    held.insert(entry.map_err(storage)?.0.value().1);
                }
            }
        }
        asks.iter()
            .map(|(seq, key)| {
                if held.contains(seq) {
                    return Ok(LiveOutcome::Held);
                }
                match records.get((subscription, *key)).map_err(storage)? {
                    None => Ok(LiveOutcome::Unknown),
                    Some(v) => {
                        let record: RecordHead =
                            decode_head(v.value(), || format!("idempotency record {subscription} key {key:?}"))?;
                        Ok(if record.seq == *seq { LiveOutcome::Handled } else { LiveOutcome::Skipped })
                    }
                }
            })
            .collect()
    }

    /// A reader of the namespace `ns` as committed now, kept across reads:
    /// one read transaction and one open table for many lookups. A replay's
    /// shadow holds one between two points where its overlay is emptied
    /// (only the shadow writes its namespace, so what it wrote since is in
    /// its overlay, and the older committed values are what this reads).
    ///
    /// # Errors
    ///
    /// Storage errors.
    pub(crate) fn state_reader(&self, ns: &str) -> Result<StateReader, StoreError> {
        let read = self.shared.begin_read()?;
        let table = read.open_table(STATE).map_err(storage)?;
        Ok(StateReader { ns: ns.to_owned(), table })
    }

    /// The committed value of `key` in `scope` of `subscription`.
    ///
    /// # Errors
    ///
    /// Storage errors.
    pub(crate) fn state_get<'a>(
        &self,
        space: impl Into<Space<'a>>,
        scope: &ScopeId,
        key: &[u8],
    ) -> Result<Option<Vec<u8>>, StoreError> {
        let read = self.shared.begin_read()?;
        let ns = resolve(&read, space.into())?;
        let subscription = ns.as_str();
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
    pub(crate) fn state_scan<'a>(
        &self,
        space: impl Into<Space<'a>>,
        scope: &ScopeId,
        prefix: &[u8],
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<Entry>, StoreError> {
        let read = self.shared.begin_read()?;
        let ns = resolve(&read, space.into())?;
        let subscription = ns.as_str();
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
    pub(crate) fn state_census<'a>(
        &self,
        space: impl Into<Space<'a>>,
        scope: &ScopeId,
        probes: &[&[u8]],
    ) -> Result<(usize, Vec<bool>), StoreError> {
        let read = self.shared.begin_read()?;
        let ns = resolve(&read, space.into())?;
        let subscription = ns.as_str();
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
    pub(crate) fn state_scopes<'a>(
        &self,
        space: impl Into<Space<'a>>,
        after: Option<&ScopeId>,
        limit: usize,
    ) -> Result<Vec<ScopeId>, StoreError> {
        let read = self.shared.begin_read()?;
        let ns = resolve(&read, space.into())?;
        let subscription = ns.as_str();
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

/// See [`Store::state_reader`].
pub(crate) struct StateReader {
    ns: String,
    table: redb::ReadOnlyTable<(&'static str, u8, &'static str, &'static [u8]), &'static [u8]>,
}

impl StateReader {
    /// The value of `key` in `scope`, as of the reader's transaction.
    ///
    /// # Errors
    ///
    /// Storage errors.
    pub(crate) fn get(&self, scope: &ScopeId, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        let value = self.table.get((self.ns.as_str(), scope.kind, scope.name.as_str(), key)).map_err(storage)?;
        Ok(value.map(|v| v.value().to_vec()))
    }
}

/// The leading fields of an [`IdempotencyRecord`](super::IdempotencyRecord), in its order: what
/// [`Store::live_outcomes`] reads of each record, without decoding (and
/// allocating) its strings.
#[derive(serde::Deserialize)]
struct RecordHead {
    _event_id: weir_abi::EventId,
    seq: u64,
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
