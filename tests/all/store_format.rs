//! Store format compatibility, in the style of redb's
//! `tests/backward_compatibility.rs`: a store file written by each earlier
//! format's release is committed under `tests/fixtures/` (how each was made
//! is in `tests/fixtures/README.md`), and this build must open it, migrate it
//! and read everything in it.

use std::path::PathBuf;

use weir_runtime::IdGenerator;
use weir_runtime::Ingest;
use weir_runtime::{DlqFilter, STORE_FORMAT_VERSION as FORMAT_VERSION, Store, StoreOptions};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures").join(name)
}

/// A copy of a fixture in a temporary directory: opening migrates in place.
fn copy_of(name: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("weir.redb");
    std::fs::copy(fixture(name), &path).unwrap();
    (dir, path)
}

fn cloudevent(source: &str, id: &str, key: &str) -> weir_abi::Event {
    let ids = IdGenerator::new();
    let ingest = Ingest { ids: &ids, source: "weir:test", max_payload_bytes: 1 << 20, schemas: None };
    let body = serde_json::json!({
        "specversion": "1.0", "type": "orders.order.created", "source": source, "id": id, "subject": key,
        "data": {"order_id": key, "currency": "EUR", "items": [{"sku": "a", "qty": 1, "price_cents": 100}]}
    });
    ingest.cloudevent(body.to_string().as_bytes()).unwrap().remove(0)
}

#[test]
fn a_format_1_store_is_migrated_and_keeps_its_events_and_duplicates() {
    assert_eq!(FORMAT_VERSION, 5, "add a fixture for the new format and extend this test");
    let (_dir, path) = copy_of("store-format-1.redb");
    let store = Store::open(&path, StoreOptions::default()).unwrap();
    // Everything the format 1 release wrote is read back.
    let log = store.read_log(0, 1000).unwrap();
    let topics: Vec<&str> = log.iter().map(|(_, e)| e.topic.as_str()).collect();
    assert_eq!(topics.iter().filter(|t| **t == "orders.order.created").count(), 5, "{topics:?}");
    assert!(topics.contains(&"audit.event.recorded"), "{topics:?}");
    assert!(topics.contains(&"orders.order.validated"), "{topics:?}");
    assert_eq!(log.iter().map(|(s, _)| *s).collect::<Vec<_>>(), (0..log.len() as u64).collect::<Vec<_>>());
    let ce = log.iter().find(|(_, e)| e.source == "/shop" && e.key.as_deref() == Some("o-4")).unwrap();
    assert_eq!(ce.1.idempotency_key, "/shop#1#2", "the log keeps the key it was stored with");
    let dlq = store.dlq(&DlqFilter::default()).unwrap();
    assert_eq!(dlq.len(), 1, "{dlq:?}");
    assert_eq!((dlq[0].subscription.as_str(), dlq[0].code.as_str()), ("orders/validator", "handler_reject"));
    assert_eq!(dlq[0].event.key.as_deref(), Some("o-2"));
    let history = store.history("orders/validator").unwrap();
    assert_eq!(history.len(), 1);
    assert_eq!(history[0].1.action, "config");
    assert!(store.module(&history[0].1.sha256).unwrap().is_some(), "the module verifies against its sha256");
    let parked = store.parked("orders/validator").unwrap();
    assert!(parked.is_empty(), "{parked:?}");
    // Format 3's indexes were built from the log: every event is found by
    // its id, and every emitted event under its cause.
    assert_indexed(&store, &log);

    // The CloudEvent sent before the upgrade is still a duplicate after it,
    // now under its injective key; a different event whose format 1 key
    // would have been the same (`/shop#1` + `#2`) is stored.
    let again = store.publish_blocking(vec![cloudevent("/shop", "1#2", "o-4")]).unwrap();
    assert!(again[0].duplicate, "re-sent across the upgrade: {again:?}");
    assert_eq!(again[0].seq, ce.0);
    let other = store.publish_blocking(vec![cloudevent("/shop#1", "2", "o-9")]).unwrap();
    assert!(!other[0].duplicate, "a different event: {other:?}");
    let head = store.head();
    store.close().unwrap();
    drop(store);

    // Reopened, it is format 4 and needs no second migration.
    let store = Store::open(&path, StoreOptions::default()).unwrap();
    assert_eq!(store.head(), head);
    assert_eq!(store.read_log(0, 1000).unwrap().len() as u64, head);
    drop(store);
    let db = redb::Database::open(&path).unwrap();
    let txn = redb::ReadableDatabase::begin_read(&db).unwrap();
    let meta = txn.open_table(redb::TableDefinition::<&str, u64>::new("meta")).unwrap();
    assert_eq!(meta.get("format").unwrap().unwrap().value(), FORMAT_VERSION);
    for table in ["log.migrating", "dlq.migrating", "parked.migrating"] {
        assert!(txn.open_table(redb::TableDefinition::<u64, &[u8]>::new(table)).is_err(), "{table} is left behind");
    }
}

#[test]
fn a_store_of_a_newer_format_is_refused() {
    let (_dir, path) = copy_of("store-format-1.redb");
    {
        let db = redb::Database::create(&path).unwrap();
        let txn = db.begin_write().unwrap();
        txn.open_table(redb::TableDefinition::<&str, u64>::new("meta")).unwrap().insert("format", 99).unwrap();
        txn.commit().unwrap();
    }
    let err = Store::open(&path, StoreOptions::default()).unwrap_err();
    assert_eq!(err.code(), "store_corrupt");
    assert!(err.to_string().contains("store format 99, this Weir reads format 5"), "{err}");
}

/// Every event of `log` is found by its id (the first event with an id
/// keeps it), and each one with a cause is listed under it.
fn assert_indexed(store: &Store, log: &[(u64, weir_abi::Event)]) {
    let mut emitted = 0;
    for (seq, event) in log {
        let first = log.iter().find(|(_, e)| e.id == event.id).map(|(s, _)| *s);
        assert_eq!(store.seq_of(event.id).unwrap(), first, "event at {seq}");
        if let Some(cause) = event.causation_id {
            assert!(store.caused_by(cause, 1000).unwrap().contains(seq), "event at {seq} under its cause");
            emitted += 1;
        }
    }
    assert!(emitted > 0, "the fixture holds emitted events");
}

#[test]
fn a_format_2_store_gets_its_indexes_built_on_open() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("weir.redb");
    let ids = IdGenerator::new();
    let store = Store::open(&path, StoreOptions::default()).unwrap();
    let cause = weir_tests::keyed("orders.order.created", "o-1");
    let mut effect = weir_tests::keyed("orders.order.validated", "o-1");
    effect.causation_id = Some(cause.id);
    effect.id = ids.next_id();
    store.publish_blocking(vec![cause.clone(), effect.clone()]).unwrap();
    store.close().unwrap();
    drop(store);
    // What a format 2 store is: this layout without the two indexes.
    {
        let db = redb::Database::open(&path).unwrap();
        let txn = db.begin_write().unwrap();
        txn.delete_table(redb::TableDefinition::<u128, u64>::new("event_ids")).unwrap();
        txn.delete_table(redb::TableDefinition::<(u128, u64), ()>::new("caused")).unwrap();
        txn.open_table(redb::TableDefinition::<&str, u64>::new("meta")).unwrap().insert("format", 2).unwrap();
        txn.commit().unwrap();
    }
    let store = Store::open(&path, StoreOptions::default()).unwrap();
    assert_eq!(store.seq_of(cause.id).unwrap(), Some(0));
    assert_eq!(store.seq_of(effect.id).unwrap(), Some(1));
    assert_eq!(store.caused_by(cause.id, 10).unwrap(), [1]);
    // And appends after the migration are indexed as they commit.
    let later = weir_tests::keyed("orders.order.created", "o-2");
    store.publish_blocking(vec![later.clone()]).unwrap();
    assert_eq!(store.seq_of(later.id).unwrap(), Some(2));
}

#[test]
fn a_format_2_store_written_by_its_release_gets_its_indexes_and_keeps_everything() {
    let (_dir, path) = copy_of("store-format-2.redb");
    let store = Store::open(&path, StoreOptions::default()).unwrap();
    let log = store.read_log(0, 1000).unwrap();
    let created: Vec<&weir_abi::Event> =
        log.iter().map(|(_, e)| e).filter(|e| e.topic == "orders.order.created").collect();
    assert_eq!(created.len(), 3, "{log:?}");
    // Every event by id, every emitted one under its cause; the chain
    // order → validated → enriched is found from both ends.
    assert_indexed(&store, &log);
    let order = created.iter().find(|e| e.key.as_deref() == Some("o-1")).unwrap();
    let caused: Vec<&str> =
        store.caused_by(order.id, 100).unwrap().into_iter().map(|seq| log[seq as usize].1.topic.as_str()).collect();
    assert!(caused.contains(&"orders.order.validated") && caused.contains(&"audit.event.recorded"), "{caused:?}");
    let validated =
        log.iter().find(|(_, e)| e.topic == "orders.order.validated" && e.key.as_deref() == Some("o-1")).unwrap();
    let enriched = store.caused_by(validated.1.id, 100).unwrap();
    assert_eq!(enriched.len(), 1, "the enricher's output");
    assert_eq!(store.seq_of(validated.1.id).unwrap(), Some(validated.0));
    // What format 2 held is still there: the DLQ entry and a duplicate.
    let dlq = store.dlq(&DlqFilter::default()).unwrap();
    assert_eq!(dlq.len(), 1, "{dlq:?}");
    assert_eq!(dlq[0].event.key.as_deref(), Some("o-2"));
    let again =
        weir_tests::event(r#"{"topic":"orders.order.created","key":"o-3","idempotency_key":"order-3","payload":{}}"#);
    assert!(store.publish_blocking(vec![again]).unwrap()[0].duplicate);
    drop(store);
    let db = redb::Database::open(&path).unwrap();
    let txn = redb::ReadableDatabase::begin_read(&db).unwrap();
    let meta = txn.open_table(redb::TableDefinition::<&str, u64>::new("meta")).unwrap();
    assert_eq!(meta.get("format").unwrap().unwrap().value(), FORMAT_VERSION);
}

/// The stream topics of `<type>/<key>` read over HTTP: (revision, topic).
fn stream(server: &weir_tests::Server, path: &str) -> Vec<(u64, String)> {
    let (status, page) = server.get(&format!("/v1/streams/{path}"));
    assert_eq!(status, 200, "{page}");
    page["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["revision"].as_u64().unwrap(), e["event"]["topic"].as_str().unwrap().to_owned()))
        .collect()
}

#[test]
fn a_format_3_store_written_by_its_release_is_upgraded_and_its_entity_streams_built() {
    use serde_json::json;
    let (dir, path) = in_data_dir("store-format-3.redb");
    assert_eq!(format_of(&path), 3, "the fixture is a format 3 store");
    // The real binary, with two entity types the fixture's events are of.
    let config = format!(
        "[idempotency]\nretention = \"36500days\"\n{}\n[[entities]]\ntype = \"accounts.account\"\n[[entities]]\ntype = \"orders.order\"\n",
        weir_tests::ORDERS
    );
    let server = weir_tests::Server::start(dir.path(), &config);
    let (_, status) = server.get("/v1/status");
    let head = status["head"].as_u64().unwrap();
    assert_eq!(head, 12, "the fixture's events: {status}");
    let opened = || "accounts.account.opened".to_owned();
    assert_eq!(stream(&server, "accounts.account/a1"), [(0, opened()), (1, "accounts.account.deposited".to_owned())]);
    assert_eq!(stream(&server, "accounts.account/a2"), [(0, opened())]);
    // Handler emits of the format 3 release are in their order's stream;
    // the order its validator rejected has only its own event.
    assert_eq!(
        stream(&server, "orders.order/o-1"),
        [(0, "orders.order.created".to_owned()), (1, "orders.order.validated".to_owned())]
    );
    assert_eq!(stream(&server, "orders.order/o-2"), [(0, "orders.order.created".to_owned())]);
    // Appends go on at the next revision; the format 3 release's keys are
    // still known: re-sent, its deposit is a duplicate at its revision.
    let deposit = json!({"topic": "accounts.account.deposited", "payload": {"amount": 5}, "idempotency_key": "dep-1"});
    let (code, body) =
        server.post("/v1/streams/accounts.account/a1", &json!({"expected_revision": 0, "events": [deposit]}));
    assert_eq!(code, 200, "{body}");
    assert_eq!((body["duplicate"].as_bool(), body["events"][0]["revision"].as_u64()), (Some(true), Some(1)), "{body}");
    let fresh = json!({"topic": "accounts.account.withdrew", "payload": {"amount": 1}});
    let (code, body) =
        server.post("/v1/streams/accounts.account/a1", &json!({"expected_revision": 1, "events": [fresh]}));
    assert_eq!((code, body["revision"].as_u64()), (200, Some(2)), "{body}");
    // What format 3 held besides: the rejected order's DLQ entry.
    let (_, dlq) = server.get("/v1/dlq");
    assert_eq!(dlq["entries"].as_array().map(Vec::len), Some(1), "{dlq}");
    drop(server);
    assert_eq!(format_of(&path), FORMAT_VERSION, "upgraded in place");
}

/// A copy of a fixture as the store of a data directory (`<dir>/data`),
/// for the real binary to start on.
fn in_data_dir(name: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("data")).unwrap();
    let path = dir.path().join("data").join("weir.redb");
    std::fs::copy(fixture(name), &path).unwrap();
    (dir, path)
}

/// The `format` of the store at `path`.
fn format_of(path: &std::path::Path) -> u64 {
    let db = redb::Database::open(path).unwrap();
    let txn = redb::ReadableDatabase::begin_read(&db).unwrap();
    let meta = txn.open_table(redb::TableDefinition::<&str, u64>::new("meta")).unwrap();
    meta.get("format").unwrap().unwrap().value()
}

#[test]
fn a_format_4_store_written_by_its_release_keeps_its_commands_and_snapshots() {
    use serde_json::json;
    let (dir, path) = in_data_dir("store-format-4.redb");
    assert_eq!(format_of(&path), 4, "the fixture is a format 4 store");
    let config = "[idempotency]\nretention = \"36500days\"\n[[entities]]\ntype = \"accounts.account\"\naggregate = \"{BANK_ACCOUNT}\"\n";
    let server = weir_tests::Server::start(dir.path(), config);
    // The stream index as the format 4 release wrote it.
    let topic = |t: &str| format!("accounts.account.{t}");
    let a1 = [(0, topic("opened")), (1, topic("deposited")), (2, topic("withdrew"))];
    assert_eq!(stream(&server, "accounts.account/a1"), a1);
    assert_eq!(stream(&server, "accounts.account/a2"), [(0, topic("opened"))]);
    // The audit trail as the format 4 release recorded it, in order.
    let (status, page) = server.get("/v1/commands/accounts.account/a1");
    assert_eq!(status, 200, "{page}");
    let trail: Vec<(u64, String, String, String)> = page["commands"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            let field = |f: &str| c[f].as_str().unwrap().to_owned();
            (c["ordinal"].as_u64().unwrap(), field("idempotency_key"), field("command"), field("result"))
        })
        .collect();
    let entry = |o: u64, k: &str, c: &str, r: &str| (o, k.to_owned(), c.to_owned(), r.to_owned());
    assert_eq!(
        trail,
        [
            entry(0, "open-a1", "open", "accepted"),
            entry(1, "dep-1", "deposit", "accepted"),
            entry(2, "wd-big", "withdraw", "rejected"),
            entry(3, "wd-1", "withdraw", "accepted"),
        ],
        "{page}"
    );
    // A page from an ordinal, and one command by its idempotency key.
    let (_, page) = server.get("/v1/commands/accounts.account/a1?from=2&limit=1");
    assert_eq!(page["commands"][0]["idempotency_key"], "wd-big", "{page}");
    assert_eq!(page["next"].as_u64(), Some(3), "{page}");
    let (status, one) = server.get("/v1/commands/accounts.account/a2?idempotency_key=open-a2");
    assert_eq!((status, one["commands"][0]["result"].as_str()), (200, Some("accepted")), "{one}");
    // Retried, the format 4 release's commands answer their first result.
    let send = |id: &str, name: &str, payload: serde_json::Value, key: &str| {
        server.post(
            &format!("/v1/commands/accounts.account/{id}"),
            &json!({"command": name, "payload": payload, "idempotency_key": key}),
        )
    };
    let (status, again) = send("a1", "deposit", json!({"amount": 100}), "dep-1");
    assert_eq!(
        (status, again["duplicate"].as_bool(), again["revision"].as_u64()),
        (200, Some(true), Some(1)),
        "{again}"
    );
    let (status, again) = send("a1", "withdraw", json!({"amount": 500}), "wd-big");
    assert_eq!((status, again["error"]["code"].as_str()), (422, Some("command_rejected")), "{again}");
    // New commands go on from where it stopped: the next ordinal, the next
    // revision, the balance it left (100 - 30 + 5).
    let (status, next) = send("a1", "deposit", json!({"amount": 5}), "dep-2");
    assert_eq!((status, next["revision"].as_u64()), (200, Some(3)), "{next}");
    let (_, one) = server.get("/v1/commands/accounts.account/a1?idempotency_key=dep-2");
    assert_eq!(one["commands"][0]["ordinal"].as_u64(), Some(4), "{one}");
    let (_, state) = server.get("/v1/streams/accounts.account/a1/state");
    assert_eq!(state["state"]["balance"].as_u64(), Some(75), "{state}");
    assert_eq!(stream(&server, "accounts.account/a1").last(), Some(&(3, topic("deposited"))));
    let (status, over) = send("a2", "withdraw", json!({"amount": 1}), "wd-a2");
    assert_eq!((status, over["error"]["code"].as_str()), (422, Some("command_rejected")), "{over}");
    drop(server);
    assert_eq!(format_of(&path), FORMAT_VERSION, "upgraded in place");
    // Format 5's layout: the records in `entities`, format 4's tables gone.
    let db = redb::Database::open(&path).unwrap();
    let txn = redb::ReadableDatabase::begin_read(&db).unwrap();
    let names: Vec<String> = txn.list_tables().unwrap().map(|t| redb::TableHandle::name(&t).to_owned()).collect();
    for old in ["aggregate_snapshots", "commands", "command_log"] {
        assert!(!names.iter().any(|n| n == old), "{old} is still there: {names:?}");
    }
    let entities = txn.open_table(redb::TableDefinition::<(&str, &str, &[u8]), &[u8]>::new("entities")).unwrap();
    for id in ["a1", "a2"] {
        assert!(entities.get(("accounts.account", id, b"s".as_slice())).unwrap().is_some(), "{id}'s snapshot");
    }
    let a1_commands = entities
        .range(("accounts.account", "a1", b"c".as_slice())..("accounts.account", "a1", b"d".as_slice()))
        .unwrap()
        .count();
    assert_eq!(a1_commands, 5, "a1's four commands of format 4 and the one after");
    let a1_revisions = entities
        .range(("accounts.account", "a1", b"r".as_slice())..("accounts.account", "a1", b"s".as_slice()))
        .unwrap()
        .count();
    assert_eq!(a1_revisions, 4, "a1's three events of format 4 and the one after");
}
