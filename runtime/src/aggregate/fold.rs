//! An entity's state: its snapshot when the current aggregate made it, and
//! the stream's events after it folded through `weir_evolve`; and the state
//! at an earlier point of the stream (time travel).

use weir_abi::EvolveRef;

use super::{AggregateError, Aggregates, Loaded};
use crate::engine::Handler;
use crate::store::{Snapshot, Store};

/// Events read from the stream per page while folding.
const FOLD_PAGE: usize = 1024;
/// Bytes of stored events read per page while folding.
const FOLD_PAGE_BYTES: usize = 8 << 20;
/// Most events one state read folds (`GET …/state`): a longer fold is
/// refused with `stream_too_long`.
pub(crate) const MAX_FOLD_EVENTS: u64 = 100_000;

/// Up to where a state is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum At {
    /// After the stream's last event.
    Latest,
    /// After the event of this revision.
    Revision(u64),
    /// After the last event whose time is at or before this (ns since the
    /// Unix epoch): the fold stops at the first later event.
    Time(i64),
}

/// An entity's state at a point of its stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct StateAt {
    /// The revision of the last event folded in (`None`: none).
    pub(crate) revision: Option<u64>,
    /// The state after it (`None`: no event folded).
    pub(crate) state: Option<Vec<u8>>,
    /// The stream's current revision.
    pub(crate) current: Option<u64>,
    /// Events folded to answer (0 when a snapshot answered).
    pub(crate) folded: u64,
}

/// Fold the events of `ty`/`key` after revision `from` (exclusive; `None`:
/// from the start) into `state`, stopping after `until` revisions or at
/// the first event later than `time`, and after no more than `cap` events.
#[allow(clippy::too_many_arguments)]
pub(super) fn fold(
    store: &Store,
    handler: &mut Handler,
    ty: &str,
    key: &str,
    mut at: StateAt,
    until: Option<u64>,
    time: Option<i64>,
    cap: u64,
) -> Result<StateAt, AggregateError> {
    loop {
        let from = at.revision.map_or(0, |r| r + 1);
        if until.is_some_and(|u| from > u) {
            return Ok(at);
        }
        let page = store.read_stream(ty, key, Some(from), false, FOLD_PAGE, FOLD_PAGE_BYTES)?;
        at.current = page.revision;
        if page.events.is_empty() {
            return Ok(at);
        }
        for (revision, _, event) in &page.events {
            if until.is_some_and(|u| *revision > u) || time.is_some_and(|t| event.time > t) {
                return Ok(at);
            }
            if at.folded >= cap {
                let remaining = match until {
                    Some(u) => u.saturating_sub(from) + 1,
                    None => page.revision.map_or(0, |c| c.saturating_sub(from) + 1),
                };
                return Err(AggregateError::StreamTooLong { events: remaining.max(cap + 1), limit: cap });
            }
            let call = handler.evolve(EvolveRef { state: at.state.as_deref(), event });
            let state = call.result.map_err(|error| AggregateError::Aggregate { error })?;
            at.state = Some(state);
            at.revision = Some(*revision);
            at.folded += 1;
        }
    }
}

/// The state of `ty`/`key` after its last event: the snapshot when it was
/// made by `loaded`'s module and is not ahead of the stream, then the
/// events after it (`folded` > 0: the snapshot was missing or stale).
/// `read` is the snapshot and the current revision when the caller read
/// them already.
pub(super) fn current(
    store: &Store,
    loaded: &Loaded,
    handler: &mut Handler,
    (ty, key): (&str, &str),
    read: Option<(Option<Snapshot>, Option<u64>)>,
) -> Result<StateAt, AggregateError> {
    let (snapshot, current) = match read {
        Some(read) => read,
        None => store.snapshot(ty, key)?,
    };
    let start = match snapshot {
        Some(s) if s.aggregate == loaded.sha256() && s.revision <= current => {
            StateAt { revision: s.revision, state: s.revision.map(|_| s.state), current, folded: 0 }
        }
        Some(s) => {
            if s.aggregate != loaded.sha256() {
                tracing::info!(
                    entity_type = ty,
                    key,
                    snapshot_aggregate = %s.aggregate,
                    aggregate = %loaded.sha256(),
                    "the aggregate changed since the snapshot: rebuilding the state from the stream"
                );
            }
            StateAt { revision: None, state: None, current, folded: 0 }
        }
        None => StateAt { revision: None, state: None, current, folded: 0 },
    };
    if start.revision == current {
        // The snapshot is current (or the stream empty): nothing to read. A
        // commit meanwhile is caught by the store's revision check.
        return Ok(start);
    }
    fold(store, handler, ty, key, start, None, None, u64::MAX)
}

impl Aggregates {
    /// The state of `ty`/`key` at `at`, folded by its aggregate; no more
    /// than [`MAX_FOLD_EVENTS`] events are folded (`stream_too_long`).
    ///
    /// # Errors
    ///
    /// An unknown type or one without aggregate, a failed aggregate, a fold
    /// over the bound, a store error.
    pub(crate) fn state_at(&self, store: &Store, ty: &str, key: &str, at: At) -> Result<StateAt, AggregateError> {
        let loaded = self.get(ty)?;
        let mut handler = loaded.take()?;
        let result = (|| {
            let (snapshot, current) = store.snapshot(ty, key)?;
            // The snapshot answers when it is of this module and at the
            // point asked for (or the latest).
            if let Some(s) = snapshot
                && s.aggregate == loaded.sha256()
                && s.revision == current
                && s.revision.is_some()
                && (at == At::Latest || Some(at) == s.revision.map(At::Revision))
            {
                return Ok(StateAt { revision: s.revision, state: Some(s.state), current, folded: 0 });
            }
            let start = StateAt { revision: None, state: None, current, folded: 0 };
            match at {
                At::Latest => fold(store, &mut handler, ty, key, start, None, None, MAX_FOLD_EVENTS),
                At::Revision(r) => {
                    if r >= MAX_FOLD_EVENTS {
                        return Err(AggregateError::StreamTooLong { events: r + 1, limit: MAX_FOLD_EVENTS });
                    }
                    fold(store, &mut handler, ty, key, start, Some(r), None, MAX_FOLD_EVENTS)
                }
                At::Time(t) => fold(store, &mut handler, ty, key, start, None, Some(t), MAX_FOLD_EVENTS),
            }
        })();
        // A handler starts a fresh instance itself after a sandbox failure.
        loaded.give(handler);
        result
    }
}
