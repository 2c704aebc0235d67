//! Replay: rebuild a stateful handler's state from the log into a shadow
//! copy while the live subscription keeps serving, then switch to it.
//!
//! The shadow runs the subscription's active plugin over the log from a
//! start position, in a state namespace of its own (`<subscription>@<n>`,
//! `store/state.rs`), emitting nothing. It applies exactly the events the
//! live subscription applied: an event whose idempotency record names it
//! (handled), or with no record left (older than the retention window) and
//! a key not seen yet in this replay; not one the live subscription has
//! parked for a retry or dead-lettered, nor a duplicate it skipped. Those
//! held back are looked at again at the switch: handled since, they are
//! applied then.
//!
//! When the shadow is close to the live cursor, the live worker pauses
//! between two events (`Control::Exclusive`): it commits what it has
//! staged, the shadow replays the rest up to its cursor, and one commit
//! points the subscription at the shadow's namespace. No reader ever sees a
//! half-built state: views and the state API read the live namespace until
//! that commit, the shadow's after it.

use std::collections::{BTreeSet, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use weir_abi::{DeliveryRef, Event};

use super::Invoke;
use super::state::{Overlay, Session, SharedOverlay};
use crate::store::{LiveOutcome, Started, StateReader, StateWrite, Store, StoreError};
use crate::topic::Pattern;

/// Events read from the log per step.
const BATCH: usize = 512;
/// Stored bytes read per step.
const BATCH_BYTES: usize = 8 << 20;
/// Idempotency keys the shadow remembers to skip duplicates the store no
/// longer has records of; past it the set starts again (documented).
const MAX_SEEN_KEYS: usize = 1 << 20;
/// Bytes (keys and values) of committed writes the shadow keeps in its
/// overlay, so a later event of the same key reads them from memory rather
/// than through a store transaction: only the shadow writes its namespace,
/// so what it keeps stays exact. Past it, the overlay starts again.
const MAX_KEPT_BYTES: usize = 64 << 20;
/// Events applied between two commits of the shadow's writes (each commit
/// an fsync), and bytes of writes: whichever comes first. The shadow is
/// not durable progress (a replay that stops starts again), so only the
/// memory of the writes waiting bounds how many wait.
const COMMIT_EVENTS: usize = 8192;
const COMMIT_BYTES: usize = 8 << 20;

/// How far a replay has got, read by status while it runs.
#[derive(Debug, Default)]
pub(crate) struct ReplayProgress {
    /// The next seq the shadow reads.
    pub(crate) position: Arc<AtomicU64>,
    /// The live cursor the shadow is heading for.
    pub(crate) target: AtomicU64,
    /// Events applied to the shadow state.
    pub(crate) applied: AtomicU64,
    /// Events skipped: another topic, a duplicate, or held back by the
    /// live subscription (parked, dead-lettered).
    pub(crate) skipped: AtomicU64,
    /// Events whose every attempt failed in the shadow (not applied).
    pub(crate) failed: AtomicU64,
}

/// What a shadow needs.
pub(crate) struct ShadowSpec {
    pub(crate) subscription: Arc<str>,
    pub(crate) patterns: Vec<Pattern>,
    pub(crate) max_attempts: u32,
    pub(crate) max_state_keys_per_scope: usize,
    /// The namespace the shadow writes (`<subscription>@<generation>`).
    pub(crate) namespace: Arc<str>,
    pub(crate) generation: u64,
}

/// The shadow of one replay.
pub(crate) struct Shadow {
    store: Store,
    spec: ShadowSpec,
    handler: Box<dyn Invoke>,
    overlay: SharedOverlay,
    position: u64,
    seen: HashSet<String, foldhash::fast::RandomState>,
    held: BTreeSet<u64>,
    progress: Arc<ReplayProgress>,
    /// Bytes of writes kept in the overlay ([`MAX_KEPT_BYTES`]).
    kept: usize,
    /// Writes not committed yet, of how many events, and their bytes.
    pending: Vec<StateWrite>,
    pending_events: usize,
    pending_bytes: usize,
    /// The commit the writer is making while the shadow goes on applying
    /// (one at a time: the overlay holds its writes until it is done).
    committing: Option<Started<u64>>,
    /// The store reader the sessions share until the overlay is emptied
    /// ([`Store::state_reader`]); opened when first needed.
    reader: Option<Arc<StateReader>>,
}

impl Shadow {
    /// A shadow starting at `from`, on an empty namespace.
    ///
    /// # Errors
    ///
    /// The store's, clearing a namespace a failed replay left.
    pub(crate) fn new(
        store: Store,
        spec: ShadowSpec,
        handler: Box<dyn Invoke>,
        from: u64,
        progress: Arc<ReplayProgress>,
    ) -> Result<Self, StoreError> {
        store.delete_state_namespace_blocking(&spec.namespace)?;
        progress.position.store(from, Ordering::Relaxed);
        Ok(Self {
            store,
            spec,
            handler,
            // The namespace was just emptied: until the overlay has to
            // forget its counts, a scope it never counted holds nothing.
            overlay: Arc::new(std::sync::Mutex::new(Overlay::over_empty_store())),
            position: from,
            seen: HashSet::default(),
            held: BTreeSet::new(),
            progress,
            kept: 0,
            pending: Vec::new(),
            pending_events: 0,
            pending_bytes: 0,
            committing: None,
            reader: None,
        })
    }

    /// Where the shadow has got.
    pub(crate) fn position(&self) -> u64 {
        self.position
    }

    /// Replay the events before `to`.
    ///
    /// # Errors
    ///
    /// The store's.
    pub(crate) fn run_to(&mut self, to: u64) -> Result<(), StoreError> {
        self.progress.target.store(to, Ordering::Relaxed);
        while self.position < to {
            let patterns = &self.spec.patterns;
            let wanted = |topic: &str| patterns.iter().any(|p| p.matches(topic));
            let entries = self.store.read_log_each(self.position, BATCH, BATCH_BYTES, &wanted)?;
            let Some(end) = entries.last().map(|(seq, _)| seq + 1) else { break };
            let mut events: Vec<(u64, Event)> = Vec::with_capacity(entries.len());
            for (seq, entry) in entries {
                if seq >= to {
                    break;
                }
                // A record that does not decode is one the live
                // subscription quarantined: it applied nothing from it.
                match entry {
                    Ok(Some(event)) => events.push((seq, event)),
                    _ => {
                        self.progress.skipped.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            self.apply_all(&events)?;
            self.position = end.min(to);
            self.progress.position.store(self.position, Ordering::Relaxed);
        }
        self.flush()
    }

    /// Apply what the live subscription applied among `events`; commit the
    /// writes waiting when they are enough ([`COMMIT_EVENTS`],
    /// [`COMMIT_BYTES`]).
    fn apply_all(&mut self, events: &[(u64, Event)]) -> Result<(), StoreError> {
        let asks: Vec<(u64, &str)> = events.iter().map(|(seq, e)| (*seq, e.idempotency_key.as_str())).collect();
        let outcomes = self.store.live_outcomes(&self.spec.subscription, &asks)?;
        for ((seq, event), outcome) in events.iter().zip(outcomes) {
            let apply = match outcome {
                LiveOutcome::Handled => true,
                LiveOutcome::Held => {
                    self.held.insert(*seq);
                    false
                }
                LiveOutcome::Skipped => false,
                LiveOutcome::Unknown => !self.seen.contains(&event.idempotency_key),
            };
            if !apply {
                self.progress.skipped.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            if self.seen.len() >= MAX_SEEN_KEYS {
                self.seen.clear();
            }
            self.seen.insert(event.idempotency_key.clone());
            match self.invoke(event)? {
                Some(mut w) => {
                    self.pending_bytes = w.iter().fold(self.pending_bytes, |n, w| n.saturating_add(w.bytes()));
                    self.pending_events += 1;
                    self.pending.append(&mut w);
                    self.progress.applied.fetch_add(1, Ordering::Relaxed);
                }
                None => {
                    self.progress.failed.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        if self.pending_events >= COMMIT_EVENTS || self.pending_bytes >= COMMIT_BYTES {
            self.start_commit()?;
        }
        Ok(())
    }

    /// Commit the writes waiting and wait for it.
    fn flush(&mut self) -> Result<(), StoreError> {
        self.start_commit()?;
        self.wait_commit()
    }

    /// Wait for the commit in flight, if any.
    fn wait_commit(&mut self) -> Result<(), StoreError> {
        match self.committing.take() {
            Some(commit) => commit.wait().map(drop),
            None => Ok(()),
        }
    }

    /// Hand the writes waiting to the writer, in order (a later write of a
    /// key wins), after the previous commit is done; the writer commits them
    /// while the shadow applies the next events, which read them from the
    /// overlay meanwhile.
    fn start_commit(&mut self) -> Result<(), StoreError> {
        self.wait_commit()?;
        let writes = std::mem::take(&mut self.pending);
        self.kept = self.kept.saturating_add(self.pending_bytes);
        (self.pending_events, self.pending_bytes) = (0, 0);
        self.committing = Some(self.store.commit_state_started(&self.spec.namespace, writes));
        // The writes stay in the overlay (a copy of what is committed once
        // the commit is done) until it holds too much; it is emptied only
        // when the store has them all.
        if self.kept >= MAX_KEPT_BYTES {
            self.wait_commit()?;
            // The reader predates what the overlay held: open a new one.
            self.reader = None;
            let mut overlay = self.overlay.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            overlay.hand_over();
            overlay.committed();
            self.kept = 0;
        }
        Ok(())
    }

    /// Run the handler on `event`, retrying a retryable failure at once up
    /// to the subscription's attempts; the writes of the attempt that
    /// succeeded, or `None`.
    fn invoke(&mut self, event: &Event) -> Result<Option<Vec<StateWrite>>, StoreError> {
        let reader = match &self.reader {
            Some(reader) => Arc::clone(reader),
            None => Arc::clone(self.reader.insert(Arc::new(self.store.state_reader(&self.spec.namespace)?))),
        };
        for attempt in 1..=self.spec.max_attempts.max(1) {
            let session = Session::fixed(
                self.store.clone(),
                Arc::clone(&self.spec.subscription),
                Arc::clone(&self.spec.namespace),
                event.key.as_deref(),
                Arc::clone(&self.overlay),
                self.spec.max_state_keys_per_scope,
                Arc::clone(&reader),
            );
            let delivery = DeliveryRef { event, subscription: &self.spec.subscription, attempt };
            let (outcome, state) = self.handler.invoke_with_state(delivery, Box::new(session));
            match outcome.result {
                Ok(_) => return Ok(Some(state.and_then(Session::recover).map(|s| s.commit()).unwrap_or_default())),
                Err(failure) if !failure.retryable => return Ok(None),
                Err(_) => {}
            }
        }
        Ok(None)
    }

    /// At the switch, with the live worker paused at `live_cursor`: apply
    /// the held-back events the live subscription has handled since, replay
    /// up to its cursor, and point the subscription at the shadow.
    ///
    /// # Errors
    ///
    /// The store's; nothing is switched then.
    pub(crate) fn finish(mut self, live_cursor: u64) -> Result<(), StoreError> {
        let held: Vec<u64> = std::mem::take(&mut self.held).into_iter().collect();
        let mut events = Vec::new();
        for seq in held {
            if let Some(event) = self.store.event(seq)? {
                events.push((seq, event));
            }
        }
        // Still parked or dead-lettered: held again, and the live
        // subscription applies them when it handles them (after the switch,
        // to the new namespace).
        self.apply_all(&events)?;
        self.run_to(live_cursor)?;
        self.store.switch_state(&self.spec.subscription, self.spec.generation)
    }
}
