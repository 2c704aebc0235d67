//! A damaged store is reported, never served and never a panic: `weir run`
//! on damaged copies of a real store exits 1 with the path and what to do;
//! a 0-byte or foreign file is not taken for a new store; a damaged plugin
//! module is blamed on the store; a damaged record is a classified error.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde_json::json;
use weir_tests::{ORDERS, Server, weir_bin};

const LOG: TableDefinition<'_, u64, &[u8]> = TableDefinition::new("log");
const DLQ: TableDefinition<'_, (&str, u64), &[u8]> = TableDefinition::new("dlq");
const MODULES: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("modules");

/// A store written by the real binary: the orders pipeline after `count`
/// orders, every fifth one poison (to the DLQ). Returns the store's path.
fn make_store(dir: &Path, count: usize) -> PathBuf {
    let mut server = Server::start(dir, ORDERS);
    let events: Vec<_> = (0..count)
        .map(|i| {
            let payload = if i % 5 == 4 {
                json!({"order_id": format!("o-{i}"), "items": []})
            } else {
                json!({"order_id": format!("o-{i}"), "currency": "EUR", "marker": format!("MARKER-{i:04}"),
                       "items": [{"sku": "a", "qty": 1, "price_cents": 100}]})
            };
            json!({"topic": "orders.order.created", "key": format!("o-{i}"), "payload": payload})
        })
        .collect();
    let (status, _) = server.post("/v1/events", &json!(events));
    assert_eq!(status, 200);
    assert!(server.wait_idle(Duration::from_secs(60)));
    assert!(server.terminate().success());
    dir.join("data/weir.redb")
}

/// How one `weir run` on a (possibly damaged) store ended.
#[derive(Debug)]
enum Start {
    /// It exited with this code and stderr.
    Exited(Option<i32>, String),
    /// It became healthy (the damage was in space the store does not use).
    Healthy,
}

/// Start `weir run` with the config in `dir` and wait until it exits or
/// answers `/health`; a healthy process is stopped.
fn start(dir: &Path) -> Start {
    let text = std::fs::read_to_string(dir.join("weir.toml")).unwrap();
    let listen = text.lines().find_map(|l| l.strip_prefix("listen = ")).unwrap().trim_matches('"').to_owned();
    let mut child = Command::new(weir_bin())
        .args(["run", "--config"])
        .arg(dir.join("weir.toml"))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let agent = ureq::Agent::new_with_config(
        ureq::Agent::config_builder().timeout_global(Some(Duration::from_secs(2))).build(),
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if let Some(status) = child.try_wait().unwrap() {
            let mut stderr = String::new();
            std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut stderr).unwrap();
            return Start::Exited(status.code(), stderr);
        }
        if agent.get(format!("http://{listen}/health")).call().is_ok() {
            child.kill().unwrap();
            child.wait().unwrap();
            return Start::Healthy;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    panic!("weir run neither exited nor became healthy");
}

/// A directory holding `store` as its `data/weir.redb` and the config of
/// `template` (same pipelines, a new port).
fn copy_with(template: &Path, store: &[u8], into: &Path) {
    std::fs::create_dir_all(into.join("data")).unwrap();
    std::fs::write(into.join("data/weir.redb"), store).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let text = std::fs::read_to_string(template.join("weir.toml")).unwrap();
    let text = text
        .lines()
        .map(|l| {
            if l.starts_with("data_dir = ") {
                format!("data_dir = {:?}", into.join("data").display().to_string())
            } else if l.starts_with("listen = ") {
                format!("listen = \"127.0.0.1:{port}\"")
            } else {
                l.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    std::fs::write(into.join("weir.toml"), text).unwrap();
}

fn assert_refused(start: &Start, what: &str, path: &Path, needle: &str) {
    match start {
        Start::Exited(code, stderr) => {
            assert_eq!(*code, Some(1), "{what}: exit code, stderr:\n{stderr}");
            assert!(!stderr.contains("panicked"), "{what}: a panic:\n{stderr}");
            assert!(stderr.contains(&path.display().to_string()), "{what}: the path is named:\n{stderr}");
            assert!(stderr.contains(needle), "{what}: {needle:?} in:\n{stderr}");
            assert!(stderr.contains("backup"), "{what}: says what to do:\n{stderr}");
        }
        Start::Healthy => panic!("{what}: the damaged store was opened"),
    }
}

#[test]
fn damaged_copies_of_a_store_exit_1_and_never_panic() {
    let dir = tempfile::tempdir().unwrap();
    let store = make_store(dir.path(), 40);
    let bytes = std::fs::read(&store).unwrap();
    // Damage at the header, the allocator state, and inside pages across
    // the file: the places where redb used to panic ("Malformed allocator
    // state", "Invalid page type byte 0").
    let mut offsets: Vec<usize> = vec![0, 9, 16, 40, 64, 128, 256, 400, 600, 800, 1000, 2000, 3000];
    let pages = bytes.len() / 4096;
    for i in 1..=12 {
        let page = i * pages / 13;
        // A page's first byte is its type: the format 1 build panicked
        // ("entered unreachable code") on most of these.
        offsets.push(page * 4096);
        offsets.push(page * 4096 + 1500);
    }
    let mut exited = 0;
    for (n, offset) in offsets.iter().copied().filter(|o| o + 8 <= bytes.len()).enumerate() {
        let mut damaged = bytes.clone();
        for b in &mut damaged[offset..offset + 8] {
            *b ^= 0x5A;
        }
        let copy = dir.path().join(format!("copy-{n}"));
        copy_with(dir.path(), &damaged, &copy);
        let started = start(&copy);
        // Damage in a page the store does not use opens fine; anything else
        // is refused. Never a panic, never exit 101.
        if let Start::Exited(..) = &started {
            assert_refused(&started, &format!("damage at {offset}"), &copy.join("data/weir.redb"), "corrupt");
            exited += 1;
        }
    }
    assert!(exited >= 10, "only {exited} damaged copies were refused");
}

#[test]
fn an_empty_or_foreign_store_file_is_not_taken_for_a_new_store() {
    let dir = tempfile::tempdir().unwrap();
    let store = make_store(dir.path(), 5);
    for (name, content, needle) in [
        ("empty", &b""[..], "empty (0 bytes)"),
        ("foreign", &b"this is a text file, not a database\n"[..], "not a redb database"),
        ("short", &b"redb"[..], "not a redb database"),
    ] {
        let copy = dir.path().join(name);
        copy_with(dir.path(), content, &copy);
        let path = copy.join("data/weir.redb");
        assert_refused(&start(&copy), name, &path, needle);
        assert_eq!(std::fs::read(&path).unwrap(), content, "{name}: the file is left as it was");
    }
    // Only a missing file means a new store.
    let fresh = dir.path().join("fresh");
    copy_with(dir.path(), b"", &fresh);
    std::fs::remove_file(fresh.join("data/weir.redb")).unwrap();
    assert!(matches!(start(&fresh), Start::Healthy));
    assert!(std::fs::metadata(fresh.join("data/weir.redb")).unwrap().len() > 0);
    drop(store);
}

#[test]
fn a_damaged_plugin_module_is_blamed_on_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let store = make_store(dir.path(), 5);
    // Damage a module through redb itself, so redb's page checksums hold
    // and only Weir's own check can see it.
    let damaged_sha = {
        let db = Database::create(&store).unwrap();
        let read = db.begin_read().unwrap();
        let modules = read.open_table(MODULES).unwrap();
        let (sha, mut bytes) = {
            let first = modules.iter().unwrap().next().unwrap().unwrap();
            (first.0.value().to_owned(), first.1.value().to_vec())
        };
        drop(modules);
        drop(read);
        let middle = bytes.len() / 2;
        bytes[middle] ^= 0x01;
        let write = db.begin_write().unwrap();
        write.open_table(MODULES).unwrap().insert(sha.as_str(), bytes.as_slice()).unwrap();
        write.commit().unwrap();
        sha
    };
    match start(dir.path()) {
        Start::Exited(code, stderr) => {
            assert_eq!(code, Some(1), "{stderr}");
            assert!(stderr.contains("damaged"), "{stderr}");
            assert!(stderr.contains(&damaged_sha), "names the sha256: {stderr}");
            assert!(stderr.contains("version 1"), "names the version: {stderr}");
            assert!(stderr.contains("orders/"), "names the handler: {stderr}");
            assert!(stderr.contains("backup"), "says what to do: {stderr}");
            assert!(!stderr.contains("invalid WebAssembly"), "not blamed on the file: {stderr}");
        }
        Start::Healthy => panic!("started on a damaged module"),
    }
}

/// Flip one byte of the stored value of `key` in `table`, inside the part
/// that holds `marker`, through redb (its own checksums stay valid).
fn damage_value<K: redb::Key + 'static>(
    store: &Path,
    table: TableDefinition<'_, K, &[u8]>,
    pick: impl Fn(&[u8]) -> bool,
) -> Vec<u8> {
    let db = Database::create(store).unwrap();
    let read = db.begin_read().unwrap();
    let found: Vec<(Vec<u8>, usize)> = {
        let t = read.open_table(table).unwrap();
        t.iter()
            .unwrap()
            .enumerate()
            .filter_map(|(i, e)| {
                let (_, v) = e.unwrap();
                pick(v.value()).then(|| (v.value().to_vec(), i))
            })
            .collect()
    };
    drop(read);
    let (mut bytes, index) = found.into_iter().next().expect("a record to damage");
    let at = bytes.len() - 3;
    bytes[at] ^= 0x20;
    let write = db.begin_write().unwrap();
    let key = {
        let mut t = write.open_table(table).unwrap();
        let key_bytes = {
            let entry = t.iter().unwrap().nth(index).unwrap().unwrap();
            K::as_bytes(&entry.0.value()).as_ref().to_vec()
        };
        t.insert(K::from_bytes(&key_bytes), bytes.as_slice()).unwrap();
        key_bytes
    };
    write.commit().unwrap();
    key
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn a_damaged_log_event_is_never_handed_to_a_handler() {
    let dir = tempfile::tempdir().unwrap();
    let store = make_store(dir.path(), 10);
    let seq = <u64 as redb::Value>::from_bytes(&damage_value(&store, LOG, |v| contains(v, b"MARKER-0002")));
    // A new subscription reads the log from the start and meets the damage.
    let late = format!(
        "{ORDERS}\n[[pipelines]]\nname = \"late\"\ntopics = [\"orders.order.created\"]\n[[pipelines.handlers]]\nname = \"audit\"\nplugin = \"{{AUDIT_LOGGER}}\"\n"
    );
    let late_dir = dir.path().join("late");
    std::fs::create_dir_all(late_dir.join("data")).unwrap();
    std::fs::copy(&store, late_dir.join("data/weir.redb")).unwrap();
    let server = Server::start(&late_dir, &late);
    let deadline = Instant::now() + Duration::from_secs(30);
    let reasons = loop {
        let (status, body) = server.get("/ready");
        if status == 503 {
            break body["reasons"].to_string();
        }
        assert!(Instant::now() < deadline, "never not_ready: {body}");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(reasons.contains("late/audit"), "{reasons}");
    assert!(reasons.contains(&format!("log seq {seq}")), "{reasons}");
    assert!(reasons.contains("checksum mismatch"), "{reasons}");
    let (_, status) = server.get("/v1/status");
    let late_audit =
        status["subscriptions"].as_array().unwrap().iter().find(|s| s["name"] == "late/audit").unwrap().clone();
    assert!(late_audit["stats"]["handled"].as_u64().unwrap() <= seq as u64, "{late_audit}");
    assert!(server.stderr().contains("subscription worker stopped"), "{}", server.stderr());
}

#[test]
fn a_damaged_dlq_entry_is_an_error_naming_it_and_can_be_purged() {
    let dir = tempfile::tempdir().unwrap();
    let store = make_store(dir.path(), 10);
    let key = damage_value(&store, DLQ, |_| true);
    let (sub, seq) = <(&str, u64) as redb::Value>::from_bytes(&key);
    assert_eq!(sub, "orders/validator");
    let mut server = Server::start(dir.path(), ORDERS);
    let (status, body) = server.get("/v1/dlq");
    assert_eq!(status, 500, "{body}");
    assert_eq!(body["error"]["code"], "store_record_corrupt", "{body}");
    let message = body["error"]["message"].as_str().unwrap().to_owned();
    assert!(message.contains(&format!("dlq entry orders/validator seq {seq}")), "{message}");
    assert!(message.contains(&format!("weir dlq purge --subscription orders/validator --seq {seq}")), "{message}");
    let (status, body) = server.get(&format!("/v1/dlq/orders/validator/{seq}"));
    assert_eq!((status, &body["error"]["code"]), (500, &json!("store_record_corrupt")), "{body}");
    // Purging it by subscription and seq needs no decoding: the remedy works.
    let (status, body) = server.post("/v1/dlq/purge", &json!({"subscription": "orders/validator", "seq": seq}));
    assert_eq!((status, &body["purged"]), (200, &json!(1)), "{body}");
    let (status, body) = server.get("/v1/dlq");
    assert_eq!(status, 200, "{body}");
    assert!(server.terminate().success());
}
