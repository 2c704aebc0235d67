use std::time::Duration;

use redb::{Database, ReadableDatabase};

use super::super::testing::event;
use super::super::{Store, StoreOptions};
use super::*;

fn store_with(dir: &std::path::Path, types: &[&str]) -> Store {
    let options = StoreOptions {
        gc_interval: Duration::from_secs(3600),
        entity_types: types.iter().map(|t| (*t).to_owned()).collect(),
        ..StoreOptions::default()
    };
    Store::open(&dir.join("weir.redb"), options).unwrap()
}

/// An event of `topic` with `key`, with an id and idempotency key of its own.
fn keyed(topic: &str, key: &str) -> Event {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut e = event(key);
    e.topic = topic.into();
    e.key = Some(key.into());
    e.id = EventId(u128::from(n).to_be_bytes());
    e.idempotency_key = format!("unique-{n}");
    e
}

fn revisions(store: &Store, ty: &str, key: &str) -> Vec<(u64, u64)> {
    store.read_stream(ty, key, None, false, 1000, usize::MAX).unwrap().events.iter().map(|(r, s, _)| (*r, *s)).collect()
}

#[test]
fn the_index_keeps_streams_apart_even_when_one_key_is_a_prefix_of_another() {
    let dir = tempfile::tempdir().unwrap();
    let db = Database::create(dir.path().join("index.redb")).unwrap();
    let txn = db.begin_write().unwrap();
    {
        let mut t = txn.open_table(ENTITIES).unwrap();
        // Keys that share prefixes, a NUL, and types that share a prefix.
        for (i, (ty, key)) in
            [("a.b", "k"), ("a.b", "k\0"), ("a.b", "kk"), ("a.bc", "k"), ("a.b", "")].iter().enumerate()
        {
            for rev in 0..=i as u64 {
                put(&mut t, ty, key, rev, rev * 100 + i as u64).unwrap();
            }
        }
        assert_eq!(current(&t, "a.b", "k").unwrap(), Some(0));
        assert_eq!(current(&t, "a.b", "k\0").unwrap(), Some(1));
        assert_eq!(current(&t, "a.b", "kk").unwrap(), Some(2));
        assert_eq!(current(&t, "a.bc", "k").unwrap(), Some(3));
        assert_eq!(current(&t, "a.b", "").unwrap(), Some(4));
        assert_eq!(current(&t, "a.b", "x").unwrap(), None);
        assert_eq!(current(&t, "a", "b.k").unwrap(), None);
        // Revisions sort as numbers, not as text (10 after 9).
        for rev in 5..=12 {
            put(&mut t, "a.b", "", rev, 10_000 + rev).unwrap();
        }
        assert_eq!(current(&t, "a.b", "").unwrap(), Some(12));
        assert_eq!(revision_of(&t, "a.b", "", 10_010).unwrap(), Some(10));
        assert_eq!(revision_of(&t, "a.b", "", 304).unwrap(), Some(3));
        assert_eq!(revision_of(&t, "a.b", "", 4).unwrap(), Some(0));
        assert_eq!(revision_of(&t, "a.b", "", 5).unwrap(), None);
        assert_eq!(revision_of(&t, "a.b", "x", 5).unwrap(), None);
        // An entity's aggregate records sit beside its index entries, before
        // and after them in slot order: the stream does not see them.
        use super::super::entities::{COMMAND, IDEMPOTENCY, SNAPSHOT};
        t.insert(("a.b", "kk", slot(COMMAND, 7).as_slice()), b"a record".as_slice()).unwrap();
        t.insert(("a.b", "kk", [IDEMPOTENCY, b'x'].as_slice()), 7u64.to_be_bytes().as_slice()).unwrap();
        t.insert(("a.b", "kk", SNAPSHOT), b"a snapshot".as_slice()).unwrap();
        t.insert(("a.b", "x", SNAPSHOT), b"a snapshot".as_slice()).unwrap();
        assert_eq!(current(&t, "a.b", "kk").unwrap(), Some(2));
        assert_eq!(current(&t, "a.b", "x").unwrap(), None);
    }
    txn.commit().unwrap();
    let read = db.begin_read().unwrap();
    let t = read.open_table(ENTITIES).unwrap();
    assert_eq!(current(&t, "a.b", "kk").unwrap(), Some(2));
}

#[test]
fn appends_of_declared_types_get_revisions_and_others_none() {
    let dir = tempfile::tempdir().unwrap();
    let store = store_with(dir.path(), &["accounts.account"]);
    let mut unkeyed = keyed("accounts.account.opened", "x");
    unkeyed.key = None;
    store
        .publish_blocking(vec![
            keyed("accounts.account.opened", "a1"),
            keyed("orders.order.created", "a1"),
            keyed("accounts.account.deposited", "a1"),
            unkeyed,
            keyed("accounts.account.opened", "a2"),
        ])
        .unwrap();
    assert_eq!(revisions(&store, "accounts.account", "a1"), [(0, 0), (1, 2)]);
    assert_eq!(revisions(&store, "accounts.account", "a2"), [(0, 4)]);
    assert_eq!(revisions(&store, "orders.order", "a1"), []);
    assert_eq!(store.stream_count().unwrap(), 2);
    let back = store.read_stream("accounts.account", "a1", None, true, 1, usize::MAX).unwrap();
    assert_eq!((back.events.len(), back.events[0].0, back.revision), (1, 1, Some(1)));
    // The bytes bound stops a page early, after at least one event.
    let tiny = store.read_stream("accounts.account", "a1", Some(0), false, 10, 1).unwrap();
    assert_eq!(tiny.events.iter().map(|(r, _, _)| *r).collect::<Vec<_>>(), [0]);
}

#[test]
fn expected_revisions_duplicates_and_conflicts() {
    let dir = tempfile::tempdir().unwrap();
    let store = store_with(dir.path(), &["accounts.account"]);
    let ty = "accounts.account";
    let e = |k: &str| {
        let mut e = keyed("accounts.account.deposited", "a");
        e.idempotency_key = k.into();
        e
    };
    let append = |expected, events| store.append_stream_blocking(ty, "a", expected, events).unwrap();
    assert_eq!(append(ExpectedRevision::Exists, vec![e("1")]), AppendOutcome::WrongExpectedRevision { actual: None });
    let AppendOutcome::Appended { revision: 1, events } = append(ExpectedRevision::NoStream, vec![e("1"), e("2")])
    else {
        panic!("not appended")
    };
    assert_eq!(events.iter().map(|p| p.revision).collect::<Vec<_>>(), [Some(0), Some(1)]);
    assert_eq!(
        append(ExpectedRevision::Exactly(0), vec![e("3")]),
        AppendOutcome::WrongExpectedRevision { actual: Some(1) }
    );
    assert!(matches!(append(ExpectedRevision::Exactly(1), vec![e("3")]), AppendOutcome::Appended { revision: 2, .. }));
    // The same keys again: the originals, even though the revision moved on.
    let AppendOutcome::Duplicate { events, revision: Some(2) } =
        append(ExpectedRevision::NoStream, vec![e("1"), e("2")])
    else {
        panic!("not a duplicate")
    };
    assert_eq!(events.iter().map(|p| (p.seq, p.revision)).collect::<Vec<_>>(), [(0, Some(0)), (1, Some(1))]);
    assert_eq!(append(ExpectedRevision::Any, vec![e("9"), e("1")]), AppendOutcome::PartlyDuplicate { index: 1 });
    assert_eq!(
        append(ExpectedRevision::Any, vec![keyed("orders.order.created", "a")]),
        AppendOutcome::NotOfStream { index: Some(0) }
    );
    assert_eq!(store.head(), 3, "refused appends store nothing");
    assert!(matches!(
        store.append_stream_blocking("orders.order", "a", ExpectedRevision::Any, vec![keyed("orders.order.x", "a")]),
        Ok(AppendOutcome::NotOfStream { index: None })
    ));
}

#[test]
fn a_type_declared_later_is_backfilled_and_one_undeclared_resumes_where_it_stopped() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = store_with(dir.path(), &[]);
        let events: Vec<Event> = (0..(BACKFILL_BATCH + 10))
            .map(|i| keyed(if i % 2 == 0 { "accounts.account.x" } else { "other.thing.x" }, &format!("k{}", i % 3)))
            .collect();
        store.publish_blocking(events).unwrap();
    }
    {
        let store = store_with(dir.path(), &["accounts.account"]);
        let k0 = revisions(&store, "accounts.account", "k0");
        assert_eq!(k0.iter().map(|(r, _)| *r).collect::<Vec<_>>(), (0..k0.len() as u64).collect::<Vec<_>>());
        assert!(k0.windows(2).all(|w| w[0].1 < w[1].1));
        assert_eq!(k0[0].1, 0);
        let total: usize = ["k0", "k1", "k2"].iter().map(|k| revisions(&store, "accounts.account", k).len()).sum();
        assert_eq!(total, (BACKFILL_BATCH + 10).div_ceil(2));
    }
    // Undeclared while more events come, then declared again: the gap is
    // indexed, nothing twice.
    let before = {
        let store = store_with(dir.path(), &[]);
        let before = revisions(&store, "accounts.account", "k0").len();
        store.publish_blocking(vec![keyed("accounts.account.x", "k0")]).unwrap();
        before
    };
    let store = store_with(dir.path(), &["accounts.account"]);
    let k0 = revisions(&store, "accounts.account", "k0");
    assert_eq!(k0.len(), before + 1);
    assert_eq!(k0.last().unwrap().0, before as u64);
    assert_eq!(k0.last().unwrap().1, store.head() - 1);
}
