//! Faults inside the host: a full disk, a worker that dies, a record that
//! cannot be decoded; and the files the runtime creates.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;
use weir_abi::Event;
use weir_runtime::{DlqFilter, Runtime, Store, StoreOptions};
use weir_tests::{config, event};

const ORDERS: &str = weir_tests::ORDERS;

/// The data directory and the store file are the owner's alone: they hold
/// every event and the plugin registry.
#[cfg(unix)]
#[test]
fn the_data_directory_is_created_0700_and_the_store_file_0600() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), ORDERS);
    // A parent that does not exist yet is created the same way.
    let mut cfg = cfg;
    cfg.data_dir = dir.path().join("nested").join("data");
    let rt = Runtime::start(&cfg).unwrap();
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&cfg.data_dir), 0o700, "data directory");
    assert_eq!(mode(&dir.path().join("nested")), 0o700, "its parent, created with it");
    assert_eq!(mode(&cfg.data_dir.join("weir.redb")), 0o600, "store file");
    rt.shutdown().unwrap();
}

/// Wait until `f` holds, polling every 2 ms; false after `timeout`.
fn until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    false
}

fn order(i: usize) -> Event {
    let mut e = event(
        &json!({ "topic": "orders.order.created", "key": format!("o-{}", i % 7),
                 "payload": { "order_id": format!("o-{i}"), "customer": "c", "currency": "EUR",
                              "items": [{ "sku": "a", "qty": 1, "price_cents": 100 }], "pad": "x".repeat(1500) } })
        .to_string(),
    );
    e.idempotency_key = format!("order-{i}");
    e
}

fn metric(rt: &Runtime, line_start: &str) -> Option<String> {
    rt.metrics().unwrap().lines().find(|l| l.starts_with(line_start)).map(str::to_owned)
}

/// A worker thread that dies is reported (`stopped` in status and
/// `weir_subscription_up 0`), restarted by its supervisor, and goes on
/// from its committed cursor; the other subscription never notices.
#[test]
fn a_killed_worker_is_reported_and_restarted() {
    let dir = tempfile::tempdir().unwrap();
    let rt = Runtime::start(&config(dir.path(), ORDERS)).unwrap();
    rt.publish_blocking((0..5).map(order).collect()).unwrap();
    assert!(rt.wait_idle(Duration::from_secs(30)));

    assert!(rt.inject_worker_panic("orders/audit"));
    let status = |name: &str| rt.status().unwrap().into_iter().find(|s| s.name == name).unwrap();
    let mut seen_down = false;
    assert!(
        until(Duration::from_secs(10), || {
            let s = status("orders/audit");
            if s.state == "stopped" && !seen_down {
                seen_down = true;
                assert!(s.stopped.as_deref().unwrap_or_default().contains("panicked"), "{s:?}");
                // `up` and readiness say so too (either may already see
                // the restart).
                let up = metric(&rt, "weir_subscription_up{subscription=\"orders/audit\"}").unwrap();
                let ready = rt.readiness();
                assert!(up.ends_with(" 0") || status("orders/audit").state != "stopped", "{up} while stopped");
                assert!(
                    ready.reasons.iter().any(|r| r.contains("orders/audit") && r.contains("stopped"))
                        || status("orders/audit").state != "stopped",
                    "{ready:?}"
                );
            }
            seen_down
        }),
        "the dead worker was never reported as stopped"
    );
    assert!(
        until(Duration::from_secs(10), || {
            let s = status("orders/audit");
            s.state != "stopped" && s.restarts == 1
        }),
        "the worker was not restarted: {:?}",
        status("orders/audit")
    );
    assert_eq!(
        metric(&rt, "weir_subscription_up{subscription=\"orders/audit\"}").unwrap(),
        "weir_subscription_up{subscription=\"orders/audit\"} 1"
    );
    assert_eq!(
        metric(&rt, "weir_subscription_restarts_total{subscription=\"orders/audit\"}").unwrap(),
        "weir_subscription_restarts_total{subscription=\"orders/audit\"} 1"
    );

    // The restarted worker handles what comes next, each event once.
    rt.publish_blocking((5..10).map(order).collect()).unwrap();
    assert!(rt.wait_idle(Duration::from_secs(30)));
    let audit = status("orders/audit");
    assert_eq!((audit.stats.handled, audit.stats.duplicates, audit.restarts), (10, 0, 1), "{audit:?}");
    let validator = status("orders/validator");
    assert_eq!((validator.stats.handled, validator.restarts), (10, 0), "{validator:?}");
    assert_eq!(rt.readiness().status, "ready");
    rt.shutdown().unwrap();
}

/// A log record that cannot be decoded, at a subscription's cursor, is
/// dead-lettered (`record_corrupt`) and the subscription goes on past it,
/// instead of stopping there for good.
#[test]
fn an_undecodable_record_at_the_cursor_is_quarantined() {
    const LOG: redb::TableDefinition<'_, u64, &[u8]> = redb::TableDefinition::new("log");
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), ORDERS);
    std::fs::create_dir_all(&cfg.data_dir).unwrap();
    let path = cfg.data_dir.join("weir.redb");
    {
        let store = Store::open(&path, StoreOptions::default()).unwrap();
        store.publish_blocking((0..3).map(order).collect()).unwrap();
        store.close().unwrap();
    }
    {
        let db = redb::Database::open(&path).unwrap();
        let txn = db.begin_write().unwrap();
        txn.open_table(LOG).unwrap().insert(1, b"not a record".as_slice()).unwrap();
        txn.commit().unwrap();
    }

    let rt = Runtime::start(&cfg).unwrap();
    assert!(rt.wait_idle(Duration::from_secs(30)), "a subscription is stuck: {:?}", rt.status());
    for name in ["orders/audit", "orders/validator"] {
        let s = rt.status().unwrap().into_iter().find(|s| s.name == name).unwrap();
        assert_eq!((s.state, s.lag, s.stats.handled, s.dlq), ("failing", 0, 2, 1), "{s:?}");
        let dlq = rt.dlq(&DlqFilter { subscription: Some(name.into()), ..DlqFilter::default() }).unwrap();
        assert_eq!(dlq.len(), 1);
        assert_eq!((dlq[0].seq, dlq[0].code.as_str()), (1, "record_corrupt"));
        assert!(dlq[0].message.contains("log seq 1"), "{}", dlq[0].message);
    }
    // Redriving it cannot help: it stays in the DLQ.
    let report = rt.redrive(&DlqFilter { subscription: Some("orders/audit".into()), ..DlqFilter::default() }).unwrap();
    assert_eq!((report.redriven, report.missing), (0, 1));
    rt.shutdown().unwrap();
}

/// A disk that holds `limit` bytes: writes and growth past it fail with
/// `ENOSPC`, as a full file system answers; raising the limit frees space.
#[derive(Debug)]
struct SmallDisk {
    bytes: Mutex<Vec<u8>>,
    limit: AtomicU64,
}

#[derive(Debug)]
struct SmallBackend(Arc<SmallDisk>);

fn no_space() -> std::io::Error {
    std::io::Error::from(std::io::ErrorKind::StorageFull)
}

impl redb::StorageBackend for SmallBackend {
    fn len(&self) -> Result<u64, std::io::Error> {
        Ok(self.0.bytes.lock().unwrap().len() as u64)
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), std::io::Error> {
        let bytes = self.0.bytes.lock().unwrap();
        let start = offset as usize;
        let src = bytes
            .get(start..start + out.len())
            .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "read past the end"))?;
        out.copy_from_slice(src);
        Ok(())
    }

    fn set_len(&self, len: u64) -> Result<(), std::io::Error> {
        if len > self.0.limit.load(Ordering::Acquire) {
            return Err(no_space());
        }
        self.0.bytes.lock().unwrap().resize(len as usize, 0);
        Ok(())
    }

    fn sync_data(&self) -> Result<(), std::io::Error> {
        Ok(())
    }

    fn write(&self, offset: u64, data: &[u8]) -> Result<(), std::io::Error> {
        let end = offset as usize + data.len();
        if end as u64 > self.0.limit.load(Ordering::Acquire) {
            return Err(no_space());
        }
        let mut bytes = self.0.bytes.lock().unwrap();
        if bytes.len() < end {
            bytes.resize(end, 0);
        }
        bytes[offset as usize..end].copy_from_slice(data);
        Ok(())
    }
}

/// A full disk: publishes are refused with `store_full` and the reason,
/// nothing acknowledged is lost, reads go on, and once space is freed the
/// runtime takes writes again and every subscription catches up by itself.
#[test]
fn a_full_disk_refuses_writes_keeps_reads_and_recovers_by_itself() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), ORDERS);
    let disk = Arc::new(SmallDisk { bytes: Mutex::new(Vec::new()), limit: AtomicU64::new(u64::MAX) });
    let store = Store::open_with_backend(
        SmallBackend(Arc::clone(&disk)),
        &dir.path().join("small.redb"),
        StoreOptions::default(),
    )
    .unwrap();
    let rt = Runtime::start_with_store(&cfg, store).unwrap();
    rt.publish_blocking((0..10).map(order).collect()).unwrap();
    assert!(rt.wait_idle(Duration::from_secs(30)));
    let used = disk.bytes.lock().unwrap().len() as u64;
    disk.limit.store(used + 4 * 1024 * 1024, Ordering::Release);

    // Fill it.
    let mut acked: Vec<String> = (0..10).map(|i| format!("order-{i}")).collect();
    let mut next = 10;
    let refusal = loop {
        assert!(next < 50_000, "the disk never filled");
        let batch: Vec<Event> = (next..next + 20).map(order).collect();
        next += 20;
        match rt.publish_blocking(batch.clone()) {
            Ok(_) => acked.extend(batch.into_iter().map(|e| e.idempotency_key)),
            Err(e) => break e,
        }
    };
    assert_eq!(refusal.code(), "store_full", "{refusal}");
    assert!(refusal.to_string().contains("full"), "{refusal}");
    // Still full: refused again, with the reason, and readiness says why.
    let again = rt.publish_blocking(vec![order(next)]).unwrap_err();
    assert_eq!(again.code(), "store_full", "{again}");
    let ready = rt.readiness();
    assert_eq!(ready.status, "not_ready", "{ready:?}");
    // Reads go on, and every acknowledged event is there.
    let keys = |rt: &Runtime| -> HashSet<String> {
        rt.store().read_log(0, usize::MAX).unwrap().into_iter().map(|(_, e)| e.idempotency_key).collect()
    };
    assert!(until(Duration::from_secs(10), || rt.store().read_log(0, 1).is_ok()), "reads stopped with the disk full");
    let stored = keys(&rt);
    for key in &acked {
        assert!(stored.contains(key), "acknowledged {key} is not in the log");
    }
    rt.dlq(&DlqFilter::default()).unwrap();

    // Space is freed: writes resume by themselves.
    disk.limit.store(u64::MAX, Ordering::Release);
    let mut published_after = None;
    assert!(
        until(Duration::from_secs(15), || {
            let e = order(next);
            match rt.publish_blocking(vec![e.clone()]) {
                Ok(_) => {
                    published_after = Some(e.idempotency_key);
                    true
                }
                Err(_) => false,
            }
        }),
        "writes never resumed"
    );
    acked.extend(published_after);
    assert!(rt.wait_idle(Duration::from_secs(60)), "{:?}", rt.status());
    let ready = rt.readiness();
    assert_eq!(ready.status, "ready", "{ready:?}");
    // Every acknowledged event is in the log once and was handled by each
    // subscription (the audit logger records each input once).
    let log: Vec<Event> = rt.store().read_log(0, usize::MAX).unwrap().into_iter().map(|(_, e)| e).collect();
    let mut inputs: HashMap<&str, usize> = HashMap::new();
    for e in log.iter().filter(|e| e.topic == "orders.order.created") {
        *inputs.entry(e.idempotency_key.as_str()).or_default() += 1;
    }
    for key in &acked {
        assert_eq!(inputs.get(key.as_str()), Some(&1), "{key}");
    }
    let mut audited: HashMap<String, usize> = HashMap::new();
    for e in log.iter().filter(|e| e.topic == "audit.event.recorded") {
        let record: serde_json::Value = serde_json::from_slice(&e.payload).unwrap();
        *audited.entry(record["event_id"].as_str().unwrap().to_owned()).or_default() += 1;
    }
    for e in log.iter().filter(|e| e.topic == "orders.order.created") {
        assert_eq!(audited.get(&e.id.to_string()), Some(&1), "{} audited other than once", e.idempotency_key);
    }
    rt.shutdown().unwrap();
}

const SWAP: &str = r#"
[[pipelines]]
name = "swap"
topics = ["jobs.job.created"]
[[pipelines.handlers]]
name = "a"
plugin = "{VERSIONED_V1}"
"#;

/// Rollbacks of one handler at the same moment run one after the other,
/// each from what the one before left: two rollbacks from v2 go to v1 and
/// back to v2, and the registry and the running version agree at the end.
#[test]
fn concurrent_rollbacks_of_one_handler_are_serialized() {
    let dir = tempfile::tempdir().unwrap();
    let rt = Arc::new(Runtime::start(&config(dir.path(), SWAP)).unwrap());
    let v2 = std::fs::read(weir_tests::plugins::VERSIONED_V2).unwrap();
    let v2_sha = weir_tests::sha256(&v2);
    let v1_sha = weir_tests::sha256(&std::fs::read(weir_tests::plugins::VERSIONED_V1).unwrap());
    assert!(rt.deploy("swap/a", v2, "test", &[]).unwrap().changed);

    let barrier = Arc::new(std::sync::Barrier::new(2));
    let rollbacks: Vec<_> = (0..2)
        .map(|_| {
            let (rt, barrier) = (Arc::clone(&rt), Arc::clone(&barrier));
            std::thread::spawn(move || {
                barrier.wait();
                rt.rollback("swap/a", None, "test").unwrap()
            })
        })
        .collect();
    let reports: Vec<_> = rollbacks.into_iter().map(|t| t.join().unwrap()).collect();
    assert!(reports.iter().all(|r| r.changed), "each rollback changed the version: {reports:?}");
    let mut targets: Vec<&str> = reports.iter().map(|r| r.sha256.as_str()).collect();
    targets.sort_unstable();
    let mut expected = [v1_sha.as_str(), v2_sha.as_str()];
    expected.sort_unstable();
    assert_eq!(targets, expected, "one went to v1, the next back to v2");

    let (_, active, history) = rt.plugins().unwrap().into_iter().find(|(n, _, _)| n == "swap/a").unwrap();
    assert_eq!(history, 4, "config, deploy, two rollbacks");
    let active = active.unwrap().sha256;
    assert_eq!(active, v2_sha);
    let running = rt.status().unwrap().into_iter().find(|s| s.name == "swap/a").unwrap().plugin_version;
    assert_eq!(running, active, "the registry and the running version agree");
    Arc::try_unwrap(rt).unwrap().shutdown().unwrap();
}

const STUCK: &str = r#"
[[pipelines]]
name = "stuck"
topics = ["jobs.job.created"]
[[pipelines.handlers]]
name = "looper"
plugin = "{LOOPER}"
limits = { deadline = "20s" }
"#;

/// An event the looper spins on (its key is `evil`).
fn job() -> Event {
    event(&json!({ "topic": "jobs.job.created", "key": "evil", "payload": {} }).to_string())
}

/// Shutdown has a deadline: a worker stuck in a 20 s invocation is left
/// behind after it, with an error naming it, instead of holding the
/// process.
#[test]
fn shutdown_gives_up_on_a_stuck_worker_after_its_deadline() {
    let dir = tempfile::tempdir().unwrap();
    let rt = Runtime::start(&config(dir.path(), STUCK)).unwrap();
    rt.publish_blocking(vec![job()]).unwrap();
    // The invocation count moves when the call returns: wait a moment for
    // the worker to be inside it.
    std::thread::sleep(Duration::from_millis(500));
    let error = rt.shutdown_within(Duration::from_millis(300)).unwrap_err();
    assert_eq!(error.code(), "shutdown_timeout", "{error}");
    assert!(error.to_string().contains("stuck/looper"), "{error}");
}

/// `weir run`: the first SIGINT stops cleanly (here it waits for a stuck
/// invocation), a second one exits at once with status 130.
#[cfg(unix)]
#[test]
fn a_second_signal_exits_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = weir_tests::Server::start(dir.path(), STUCK);
    let (status, body) =
        server.post("/v1/events", &json!({ "topic": "jobs.job.created", "key": "evil", "payload": {} }));
    assert_eq!(status, 200, "{body}");
    std::thread::sleep(Duration::from_millis(500));
    let signal = |name: &str| {
        let sent = std::process::Command::new("kill").args([name, &server.pid().to_string()]).status().unwrap();
        assert!(sent.success());
    };
    signal("-INT");
    std::thread::sleep(Duration::from_millis(500));
    signal("-INT");
    // terminate() sends one more SIGTERM (harmless to an exited process)
    // and waits: the exit status is that of the second SIGINT.
    let exit = server.terminate();
    assert_eq!(exit.code(), Some(130), "{exit:?}: {}", server.stderr());
    assert!(server.stderr().contains("second signal"), "{}", server.stderr());
}
