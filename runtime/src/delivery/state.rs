//! Handler state on the worker's side: what an invocation reads and what
//! its writes become.
//!
//! Three layers answer a read, newest first:
//!
//! 1. the invocation's own writes ([`Session`]), dropped if it fails;
//! 2. the writes of handled events not committed yet ([`Overlay`]): the
//!    batch being built and the batches handed to the writer, kept in step
//!    with the stage (`stage.rs`) — so a later event of the same batch reads
//!    what an earlier one wrote;
//! 3. the store, where a batch's writes land in the transaction that
//!    commits its outcomes, records and cursor.
//!
//! Only this worker writes its subscription's state, so the number of keys
//! of a scope, once counted, stays exact in memory ([`Overlay::counts`]);
//! counting again (after the cache was cleared, or for a scope never
//! counted) reads the store and the overlay in one snapshot.

use std::any::Any;
use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::ops::Bound;
use std::sync::{Arc, Mutex, PoisonError};

use crate::engine::{StateAccess, StateEntry, StateError, StateScope};
use crate::store::{KIND_KEY, KIND_SHARED, ScopeId, Space, StateReader, StateWrite, Store};

/// Scope counts kept before the cache is cleared and counted again on
/// demand: bounds the memory of a subscription with many keys.
const MAX_COUNTED_SCOPES: usize = 65_536;

/// Final values by scope, then key; `None` is a delete. Nested rather than
/// keyed by `(scope, key)` so a lookup borrows the key it is given instead
/// of building an owned pair (a replay looks up several keys per event).
type Layer = HashMap<ScopeId, BTreeMap<Vec<u8>, Option<Vec<u8>>>, foldhash::fast::RandomState>;

/// The writes of handled events not committed yet, and the key counts.
#[derive(Default)]
pub(super) struct Overlay {
    building: Layer,
    /// Oldest first; one per batch the stage has in flight.
    in_flight: VecDeque<Layer>,
    /// Keys per scope, as visible through this overlay.
    counts: HashMap<ScopeId, usize, foldhash::fast::RandomState>,
    /// The store held nothing of this state when the overlay began, and
    /// every scope written since was counted and is still in `counts`: a
    /// scope not counted yet has no key in the store, so counting it reads
    /// nothing there. A replay's shadow starts so (on its fresh namespace);
    /// clearing `counts` ends it.
    empty_store: bool,
}

impl Overlay {
    /// The newest value of `key` in the overlay: `None` when no layer has
    /// it, `Some(None)` when deleted.
    fn lookup(&self, scope: &ScopeId, key: &[u8]) -> Option<Option<&Vec<u8>>> {
        std::iter::once(&self.building)
            .chain(self.in_flight.iter().rev())
            .find_map(|layer| layer.get(scope)?.get(key).map(Option::as_ref))
    }

    /// Every key of `scope` the overlay has, with its newest value.
    fn finals(&self, scope: &ScopeId) -> BTreeMap<Vec<u8>, Option<Vec<u8>>> {
        let mut out = BTreeMap::new();
        // Oldest first, so newer layers overwrite.
        for layer in self.in_flight.iter().chain(std::iter::once(&self.building)) {
            for (key, value) in range(layer, scope, &[], None) {
                out.insert(key.clone(), value.clone());
            }
        }
        out
    }

    /// The writes of one handled event join the batch being built.
    pub(super) fn add(&mut self, writes: &[StateWrite], deltas: &HashMap<ScopeId, isize>) {
        for w in writes {
            self.building.entry(w.scope.clone()).or_default().insert(w.key.clone(), w.value.clone());
        }
        for (scope, delta) in deltas {
            if let Some(count) = self.counts.get_mut(scope) {
                *count = count.saturating_add_signed(*delta);
            }
        }
    }

    /// The batch being built was handed to the writer.
    pub(super) fn hand_over(&mut self) {
        let layer = std::mem::take(&mut self.building);
        self.in_flight.push_back(layer);
    }

    /// The oldest batch in flight is committed: the store answers for it.
    pub(super) fn committed(&mut self) {
        self.in_flight.pop_front();
    }

    /// Forget the key counts: the state they counted was switched (a
    /// replay). Only when nothing is staged or in flight.
    pub(super) fn reset(&mut self) {
        self.counts.clear();
        self.empty_store = false;
    }

    /// An overlay over a namespace that holds nothing yet (a replay's
    /// shadow): see [`Overlay::empty_store`].
    pub(super) fn over_empty_store() -> Self {
        Self { empty_store: true, ..Self::default() }
    }
}

/// Entries of `layer` in `scope` whose keys start with `prefix`, after
/// `after`.
fn range<'a>(
    layer: &'a Layer,
    scope: &ScopeId,
    prefix: &'a [u8],
    after: Option<&'a [u8]>,
) -> impl Iterator<Item = (&'a Vec<u8>, &'a Option<Vec<u8>>)> + 'a {
    layer.get(scope).into_iter().flat_map(move |keys| range_keys(keys, prefix, after))
}

/// Entries of `keys` that start with `prefix`, after `after`.
fn range_keys<'a, V>(
    keys: &'a BTreeMap<Vec<u8>, V>,
    prefix: &'a [u8],
    after: Option<&'a [u8]>,
) -> impl Iterator<Item = (&'a Vec<u8>, &'a V)> + 'a {
    let low = match after {
        Some(a) if a >= prefix => Bound::Excluded(a),
        _ => Bound::Included(prefix),
    };
    keys.range::<[u8], _>((low, Bound::Unbounded)).take_while(move |(k, _)| k.starts_with(prefix))
}

/// The overlay a worker shares with the sessions it lends its handler.
pub(super) type SharedOverlay = Arc<Mutex<Overlay>>;

/// One invocation's view of its subscription's state.
pub(super) struct Session {
    store: Store,
    subscription: Arc<str>,
    /// The scope of the event's key ([`StateScope::Key`]).
    key_scope: ScopeId,
    overlay: SharedOverlay,
    max_keys_per_scope: usize,
    /// A fixed namespace (a replay's shadow) instead of the subscription's
    /// live state.
    namespace: Option<Arc<str>>,
    /// This invocation's writes: the final value of each key, and whether
    /// the key had a value before the invocation.
    pending: Pending,
    /// A reader kept by the replay's shadow (see [`Store::state_reader`]),
    /// instead of a read transaction per store read.
    reader: Option<Arc<StateReader>>,
    /// What this invocation read from the store, so a key read again (a
    /// get, then the put's "existed" check) is not read twice; up to
    /// [`MAX_FETCHED`] keys.
    fetched: RefCell<Vec<Fetched>>,
}

/// A store read: the scope, the key and the value.
type Fetched = (ScopeId, Vec<u8>, Option<Vec<u8>>);

/// Store reads an invocation remembers ([`Session::fetched`]): a handler
/// touches a few keys per event; past it, reads are not remembered.
const MAX_FETCHED: usize = 16;

fn shared_scope() -> ScopeId {
    ScopeId { kind: KIND_SHARED, name: String::new() }
}

fn unavailable(e: impl std::fmt::Display) -> StateError {
    StateError::Unavailable(e.to_string())
}

impl Session {
    pub(super) fn new(
        store: Store,
        subscription: Arc<str>,
        event_key: Option<&str>,
        overlay: SharedOverlay,
        max_keys_per_scope: usize,
    ) -> Self {
        let key_scope = match event_key {
            Some(key) => ScopeId { kind: KIND_KEY, name: key.to_owned() },
            None => shared_scope(),
        };
        Self {
            store,
            subscription,
            key_scope,
            overlay,
            max_keys_per_scope,
            namespace: None,
            pending: BTreeMap::new(),
            reader: None,
            fetched: RefCell::new(Vec::new()),
        }
    }

    /// A session on the namespace `namespace` rather than the live state:
    /// what a replay's shadow reads and writes.
    pub(super) fn fixed(
        store: Store,
        subscription: Arc<str>,
        namespace: Arc<str>,
        event_key: Option<&str>,
        overlay: SharedOverlay,
        max_keys_per_scope: usize,
        reader: Arc<StateReader>,
    ) -> Self {
        let mut session = Self::new(store, subscription, event_key, overlay, max_keys_per_scope);
        session.namespace = Some(namespace);
        session.reader = Some(reader);
        session
    }

    fn space(&self) -> Space<'_> {
        match &self.namespace {
            Some(ns) => Space::Namespace(ns),
            None => Space::Live(&self.subscription),
        }
    }

    fn scope(&self, scope: StateScope) -> ScopeId {
        match scope {
            StateScope::Key => self.key_scope.clone(),
            StateScope::Shared => shared_scope(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Overlay> {
        self.overlay.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The value before this invocation: overlay, then store.
    fn before(&self, scope: &ScopeId, key: &[u8]) -> Result<Option<Vec<u8>>, StateError> {
        if let Some(v) = self.lock().lookup(scope, key) {
            return Ok(v.cloned());
        }
        let mut fetched = self.fetched.borrow_mut();
        if let Some((_, _, value)) = fetched.iter().find(|(s, k, _)| s == scope && k.as_slice() == key) {
            return Ok(value.clone());
        }
        let value = match &self.reader {
            Some(reader) => reader.get(scope, key),
            None => self.store.state_get(self.space(), scope, key),
        }
        .map_err(unavailable)?;
        if fetched.len() < MAX_FETCHED {
            fetched.push((scope.clone(), key.to_vec(), value.clone()));
        }
        Ok(value)
    }

    fn current(&self, scope: &ScopeId, key: &[u8]) -> Result<Option<Vec<u8>>, StateError> {
        match self.pending.get(scope).and_then(|keys| keys.get(key)) {
            Some((value, _)) => Ok(value.clone()),
            None => self.before(scope, key),
        }
    }

    /// Keys of `scope` as the overlay sees it, counted once per worker.
    fn counted(&self, scope: &ScopeId) -> Result<usize, StateError> {
        let mut overlay = self.lock();
        if let Some(n) = overlay.counts.get(scope) {
            return Ok(*n);
        }
        let finals = overlay.finals(scope);
        let probes: Vec<&[u8]> = finals.keys().map(Vec::as_slice).collect();
        let (stored, present) = if overlay.empty_store {
            (0, vec![false; probes.len()])
        } else {
            self.store.state_census(self.space(), scope, &probes).map_err(unavailable)?
        };
        let mut n = stored as isize;
        for ((_, value), in_store) in finals.iter().zip(present) {
            n += isize::from(value.is_some()) - isize::from(in_store);
        }
        let n = n.max(0) as usize;
        if overlay.counts.len() >= MAX_COUNTED_SCOPES {
            overlay.counts.clear();
            overlay.empty_store = false;
        }
        overlay.counts.insert(scope.clone(), n);
        Ok(n)
    }

    /// How this invocation changed the key count of each scope.
    fn deltas(&self) -> HashMap<ScopeId, isize> {
        let mut out: HashMap<ScopeId, isize> = HashMap::new();
        for (scope, keys) in &self.pending {
            let delta: isize =
                keys.values().map(|(value, existed)| isize::from(value.is_some()) - isize::from(*existed)).sum();
            *out.entry(scope.clone()).or_default() += delta;
        }
        out
    }

    fn write(&mut self, scope: ScopeId, key: &[u8], value: Option<Vec<u8>>) -> Result<(), StateError> {
        if let Some((slot, _)) = self.pending.get_mut(&scope).and_then(|keys| keys.get_mut(key)) {
            *slot = value;
            return Ok(());
        }
        let existed = self.before(&scope, key)?.is_some();
        self.pending.entry(scope).or_default().insert(key.to_vec(), (value, existed));
        Ok(())
    }

    /// The invocation succeeded: its writes, in key order, and join the
    /// overlay.
    pub(super) fn commit(self) -> Vec<StateWrite> {
        let deltas = self.deltas();
        let writes: Vec<StateWrite> = self
            .pending
            .into_iter()
            .flat_map(|(scope, keys)| {
                keys.into_iter().map(move |(key, (value, _))| StateWrite { scope: scope.clone(), key, value })
            })
            .collect();
        self.overlay.lock().unwrap_or_else(PoisonError::into_inner).add(&writes, &deltas);
        writes
    }

    /// Back from the engine as the concrete session.
    pub(super) fn recover(state: Box<dyn StateAccess>) -> Option<Box<Self>> {
        let any: Box<dyn Any> = state;
        any.downcast::<Self>().ok()
    }
}

impl StateAccess for Session {
    fn get(&mut self, scope: StateScope, key: &[u8]) -> Result<Option<Vec<u8>>, StateError> {
        let scope = self.scope(scope);
        self.current(&scope, key)
    }

    fn put(&mut self, scope: StateScope, key: &[u8], value: &[u8]) -> Result<(), StateError> {
        let scope = self.scope(scope);
        if self.current(&scope, key)?.is_none() {
            let pending: isize = self.deltas().get(&scope).copied().unwrap_or(0);
            let now = (self.counted(&scope)? as isize + pending).max(0) as usize;
            if now >= self.max_keys_per_scope {
                return Err(StateError::Limit(format!(
                    "a new key in a scope holding {now} keys, the most max_state_keys_per_scope = {} allows",
                    self.max_keys_per_scope
                )));
            }
        }
        self.write(scope, key, Some(value.to_vec()))
    }

    fn delete(&mut self, scope: StateScope, key: &[u8]) -> Result<(), StateError> {
        let scope = self.scope(scope);
        self.write(scope, key, None)
    }

    fn next(
        &mut self,
        scope: StateScope,
        prefix: &[u8],
        after: Option<&[u8]>,
    ) -> Result<Option<StateEntry>, StateError> {
        let scope = self.scope(scope);
        let mut cursor: Option<Vec<u8>> = after.map(<[u8]>::to_vec);
        loop {
            // The least key after the cursor in any layer is the next
            // candidate; its newest value decides whether it exists (a
            // deleted key is stepped over).
            let mut keys: Vec<Vec<u8>> = Vec::new();
            let stored =
                self.store.state_scan(self.space(), &scope, prefix, cursor.as_deref(), 1).map_err(unavailable)?;
            keys.extend(stored.into_iter().map(|(k, _)| k));
            {
                let overlay = self.lock();
                for layer in overlay.in_flight.iter().chain(std::iter::once(&overlay.building)) {
                    keys.extend(range(layer, &scope, prefix, cursor.as_deref()).next().map(|(k, _)| k.clone()));
                }
            }
            keys.extend(
                self.pending
                    .get(&scope)
                    .and_then(|keys| range_keys(keys, prefix, cursor.as_deref()).next())
                    .map(|(k, _)| k.clone()),
            );
            let Some(key) = keys.into_iter().min() else { return Ok(None) };
            match self.current(&scope, &key)? {
                Some(value) => return Ok(Some((key, value))),
                None => cursor = Some(key),
            }
        }
    }
}

/// A value written by the invocation (`None`: deleted), and whether the
/// key had a value before it.
type PendingValue = (Option<Vec<u8>>, bool);
type Pending = BTreeMap<ScopeId, BTreeMap<Vec<u8>, PendingValue>>;
