//! Helpers of the store's unit tests.

use std::sync::mpsc;
use std::time::Duration;

use weir_abi::{Event, EventId};

use super::command::{Fatal, Reply};
use super::writer::Writes;
use super::{DEFAULT_RETENTION, DlqEntry, IdempotencyRecord, Store, StoreError, StoreOptions};

/// A new store in a temporary directory, with garbage collection left to
/// the test.
pub(super) fn temp_store() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let options = StoreOptions { gc_interval: Duration::from_secs(3600), ..StoreOptions::default() };
    let store = Store::open(&dir.path().join("weir.redb"), options).unwrap();
    (dir, store)
}

/// Run `f` in a write transaction of its own, as a group starting at `now`
/// would, and commit it. For staging records and running a group's parts;
/// `f` must not append to the log (the store's head is not moved).
pub(super) fn write_at(store: &Store, now: u64, f: impl FnOnce(&mut Writes<'_>) -> Result<(), Fatal>) {
    let db = store.shared.database().unwrap();
    let txn = db.begin_write().unwrap();
    {
        let mut w = Writes::open(&txn, &store.shared.batches, store.head(), now, DEFAULT_RETENTION).unwrap();
        f(&mut w).unwrap();
        w.finish().unwrap();
    }
    txn.commit().unwrap();
}

/// A reply that hands the answer to the returned receiver.
pub(super) fn answer<T: Send + 'static>() -> (Reply<T>, mpsc::Receiver<Result<T, StoreError>>) {
    let (tx, rx) = mpsc::channel();
    (Box::new(move |r| drop(tx.send(r))), rx)
}

pub(super) fn event(key: &str) -> Event {
    let mut id = [0; 16];
    id[..key.len().min(16)].copy_from_slice(&key.as_bytes()[..key.len().min(16)]);
    Event {
        id: EventId(id),
        topic: "orders.order.created".into(),
        source: "test".into(),
        key: Some(key.into()),
        schema_version: 1,
        time: 0,
        content_type: "application/json".into(),
        headers: Vec::new(),
        idempotency_key: key.into(),
        correlation_id: None,
        causation_id: None,
        payload: b"{}".to_vec(),
    }
}

pub(super) fn record(seq: u64, expires_at_ms: u64) -> IdempotencyRecord {
    IdempotencyRecord {
        event_id: EventId([0; 16]),
        seq,
        handled_at_ms: 0,
        expires_at_ms,
        outcome_digest: String::new(),
        emitted: 0,
        plugin_version: "sha".into(),
    }
}

pub(super) fn dlq_entry(subscription: &str, seq: u64) -> DlqEntry {
    DlqEntry {
        subscription: subscription.into(),
        seq,
        event: event("dead"),
        plugin: "audit".into(),
        plugin_version: "sha".into(),
        code: "handler_reject".into(),
        message: "no".into(),
        attempts: 1,
        first_failure_ms: 0,
        last_failure_ms: 0,
    }
}

/// Commit `writes` as the state writes of one handled event of
/// `subscription` (under a fresh idempotency key), and wait for the commit.
pub(super) fn commit_state(store: &Store, subscription: &str, writes: Vec<super::StateWrite>) {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let item = super::ResultItem::Handled {
        seq: n,
        key: format!("state-{n}"),
        record: record(n, u64::MAX),
        derived: false,
        emits: Vec::new(),
        parked: false,
        state: writes,
        timers: Vec::new(),
    };
    let (reply, rx) = answer();
    store.submit(subscription.into(), vec![item], None, reply);
    rx.recv_timeout(Duration::from_secs(10)).unwrap().unwrap();
}
