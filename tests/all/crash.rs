//! Crash safety, both ways: a simulated disk that loses every write after
//! the last sync (redb's `crash_consistency.rs` style), and `kill -9` of the
//! real `weir run` at random moments during a 20,000-event fan-out.
//! Afterwards: every acknowledged event is in the log exactly once, and every
//! subscription applied it exactly once (counted by the events it emitted).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::{Rng, SeedableRng};
use serde_json::{Value, json};
use weir_abi::Event;
use weir_runtime::Runtime;
use weir_runtime::{Store, StoreOptions};
use weir_tests::{Server, config, event};

const FAN_OUT: &str = r#"
[[pipelines]]
name = "load"
topics = ["load.item.created"]
[[pipelines.handlers]]
name = "a"
plugin = "{AUDIT_LOGGER}"
[[pipelines.handlers]]
name = "b"
plugin = "{AUDIT_LOGGER}"
"#;

/// Check the log: each input key once, each input audited once by each of
/// the two subscriptions, nothing else.
fn check_exactly_once(log: &[Event], expected_keys: &HashSet<String>, complete: bool) {
    let mut inputs: HashMap<&str, Vec<&Event>> = HashMap::new();
    for e in log.iter().filter(|e| e.topic == "load.item.created") {
        inputs.entry(e.idempotency_key.as_str()).or_default().push(e);
    }
    for key in expected_keys {
        let found = inputs.get(key.as_str()).map_or(0, Vec::len);
        assert_eq!(found, 1, "acknowledged event {key} is in the log {found} times");
    }
    let ids: HashSet<String> = inputs.values().flatten().map(|e| e.id.to_string()).collect();
    assert_eq!(ids.len(), inputs.len(), "an input key appears twice");
    let mut audits: HashMap<(String, String), usize> = HashMap::new();
    for e in log.iter().filter(|e| e.topic == "audit.event.recorded") {
        let record: Value = serde_json::from_slice(&e.payload).unwrap();
        *audits.entry((e.source.clone(), record["event_id"].as_str().unwrap().to_owned())).or_default() += 1;
    }
    for ((source, id), count) in &audits {
        assert_eq!(*count, 1, "{source} applied {id} {count} times");
        assert!(ids.contains(id), "{source} audited an unknown event {id}");
    }
    if complete {
        for id in &ids {
            for source in ["weir://load/a", "weir://load/b"] {
                assert!(audits.contains_key(&(source.to_owned(), id.clone())), "{source} never handled {id}");
            }
        }
    }
}

/// A disk that keeps a durable image only up to the last sync, and whose
/// syncs can be made to fail.
#[derive(Debug, Default)]
struct Disk {
    live: Mutex<Vec<u8>>,
    durable: Mutex<Vec<u8>>,
    fail_sync: AtomicBool,
}

#[derive(Debug)]
struct Backend(Arc<Disk>);

impl redb::StorageBackend for Backend {
    fn len(&self) -> Result<u64, std::io::Error> {
        Ok(self.0.live.lock().unwrap().len() as u64)
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), std::io::Error> {
        let live = self.0.live.lock().unwrap();
        let start = offset as usize;
        let src = live
            .get(start..start + out.len())
            .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "read past the end"))?;
        out.copy_from_slice(src);
        Ok(())
    }

    fn set_len(&self, len: u64) -> Result<(), std::io::Error> {
        self.0.live.lock().unwrap().resize(len as usize, 0);
        Ok(())
    }

    fn sync_data(&self) -> Result<(), std::io::Error> {
        if self.0.fail_sync.load(Ordering::Relaxed) {
            return Err(std::io::Error::other("simulated fsync failure"));
        }
        let live = self.0.live.lock().unwrap().clone();
        *self.0.durable.lock().unwrap() = live;
        Ok(())
    }

    fn write(&self, offset: u64, data: &[u8]) -> Result<(), std::io::Error> {
        let mut live = self.0.live.lock().unwrap();
        let end = offset as usize + data.len();
        if live.len() < end {
            live.resize(end, 0);
        }
        live[offset as usize..end].copy_from_slice(data);
        Ok(())
    }
}

fn item(i: usize) -> Event {
    let mut e = event(
        &json!({ "topic": "load.item.created", "key": format!("k{}", i % 97),
                               "payload": { "n": i, "pad": "x".repeat(200) } })
        .to_string(),
    );
    e.idempotency_key = format!("item-{i}");
    e
}

#[test]
fn a_disk_that_loses_unsynced_writes_keeps_every_acknowledged_event() {
    let seed: u64 = rand::random();
    println!("seed {seed}");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    for round in 0..3 {
        let dir = tempfile::tempdir().unwrap();
        let cfg = config(dir.path(), FAN_OUT);
        let disk = Arc::new(Disk::default());
        let label = dir.path().join("simulated.redb");
        let store = Store::open_with_backend(Backend(Arc::clone(&disk)), &label, StoreOptions::default()).unwrap();
        let runtime = Arc::new(Runtime::start_with_store(&cfg, store).unwrap());

        // Publish from another thread; crash (take the durable image) at a
        // random moment while publishes and invocation results commit.
        let acked = Arc::new(Mutex::new(HashSet::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let publisher = {
            let (runtime, acked, stop) = (Arc::clone(&runtime), Arc::clone(&acked), Arc::clone(&stop));
            std::thread::spawn(move || {
                let mut i = 0;
                while !stop.load(Ordering::Relaxed) && i < 4_000 {
                    let batch: Vec<Event> = (i..i + 50).map(item).collect();
                    if runtime.publish_blocking(batch.clone()).is_ok() {
                        acked.lock().unwrap().extend(batch.into_iter().map(|e| e.idempotency_key));
                    }
                    i += 50;
                }
            })
        };
        std::thread::sleep(Duration::from_millis(rng.random_range(50..400)));
        let acked_before = acked.lock().unwrap().clone();
        let image = disk.durable.lock().unwrap().clone();
        stop.store(true, Ordering::Relaxed);
        publisher.join().unwrap();
        Arc::try_unwrap(runtime).unwrap().shutdown().unwrap();

        // Restart from the crash image and let the subscriptions finish.
        let crashed = Arc::new(Disk { live: Mutex::new(image.clone()), durable: Mutex::new(image), ..Disk::default() });
        let store = Store::open_with_backend(Backend(crashed), &label, StoreOptions::default()).unwrap();
        let runtime = Runtime::start_with_store(&cfg, store).unwrap();
        assert!(runtime.wait_idle(Duration::from_secs(60)));
        let log: Vec<Event> = runtime.store().read_log(0, usize::MAX).unwrap().into_iter().map(|(_, e)| e).collect();
        println!(
            "round {round}: {} acknowledged before the crash, {} events in the recovered log",
            acked_before.len(),
            log.len()
        );
        check_exactly_once(&log, &acked_before, true);
        runtime.shutdown().unwrap();
    }
}

/// A failed fsync poisons the store: publishes are refused, and readiness
/// turns `not_ready` with the reason, where a load balancer can see it.
#[test]
fn a_failed_fsync_makes_the_runtime_not_ready() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), FAN_OUT);
    let disk = Arc::new(Disk::default());
    let store =
        Store::open_with_backend(Backend(Arc::clone(&disk)), &dir.path().join("sim.redb"), StoreOptions::default())
            .unwrap();
    let runtime = Runtime::start_with_store(&cfg, store).unwrap();
    runtime.publish_blocking(vec![item(0)]).unwrap();
    assert!(runtime.wait_idle(Duration::from_secs(30)));
    let ready = runtime.readiness();
    assert_eq!(ready.status, "ready", "{ready:?}");

    disk.fail_sync.store(true, Ordering::Relaxed);
    assert!(runtime.publish_blocking(vec![item(1)]).is_err(), "a publish whose fsync failed is not acknowledged");
    let ready = runtime.readiness();
    assert_eq!(ready.status, "not_ready", "{ready:?}");
    assert!(ready.reasons.iter().any(|r| r.contains("poisoned") && r.contains("simulated fsync failure")), "{ready:?}");
    // Shutting down reports the poisoned store rather than pretending.
    assert!(runtime.shutdown().is_err());
}

#[test]
fn kill_9_during_a_20000_event_fan_out_loses_nothing_and_applies_nothing_twice() {
    const EVENTS: usize = 20_000;
    const BATCH: usize = 100;
    let seed: u64 = rand::random();
    println!("seed {seed}");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(dir.path(), FAN_OUT);
    let url = server.url.clone();

    let done = Arc::new(AtomicBool::new(false));
    let publisher = {
        let done = Arc::clone(&done);
        std::thread::spawn(move || {
            let agent = ureq::Agent::new_with_config(
                ureq::Agent::config_builder()
                    .http_status_as_error(false)
                    .timeout_global(Some(Duration::from_secs(30)))
                    .build(),
            );
            let mut acked: HashMap<String, String> = HashMap::new();
            let mut retries = 0;
            for start in (0..EVENTS).step_by(BATCH) {
                let batch: Vec<Value> = (start..start + BATCH)
                    .map(|i| {
                        json!({ "topic": "load.item.created", "key": format!("k{}", i % 97),
                                      "idempotency_key": format!("item-{i}"),
                                      "payload": { "n": i, "pad": "x".repeat(200) } })
                    })
                    .collect();
                let body = Value::Array(batch).to_string();
                // Until acknowledged: a request cut by the kill is sent again,
                // and the idempotency keys make the retry safe.
                loop {
                    let answer = agent
                        .post(format!("{url}/v1/events"))
                        .header("content-type", "application/json")
                        .send(body.as_bytes())
                        .ok()
                        .filter(|r| r.status() == 200)
                        .and_then(|mut r| r.body_mut().read_to_string().ok());
                    if let Some(text) = answer {
                        let value: Value = serde_json::from_str(&text).unwrap();
                        for (i, e) in value["events"].as_array().unwrap().iter().enumerate() {
                            acked.insert(format!("item-{}", start + i), e["id"].as_str().unwrap().to_owned());
                        }
                        break;
                    }
                    retries += 1;
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
            done.store(true, Ordering::Relaxed);
            (acked, retries)
        })
    };

    // Kill at random moments while events are published, then once more
    // while the subscriptions are still catching up.
    let mut kills_while_publishing = 0;
    while !done.load(Ordering::Relaxed) && kills_while_publishing < 8 {
        // Early and often enough that the kills land while publishing.
        std::thread::sleep(Duration::from_millis(rng.random_range(50..400)));
        server.kill9();
        kills_while_publishing += 1;
        server.restart();
    }
    let (acked, retries) = publisher.join().unwrap();
    server.kill9();
    server.restart();
    println!("{kills_while_publishing} kills while publishing + 1 while catching up, {retries} retried requests");
    assert!(kills_while_publishing >= 1);
    assert_eq!(acked.len(), EVENTS);
    assert!(server.wait_idle(Duration::from_secs(180)), "the subscriptions did not catch up");
    assert!(server.terminate().success(), "{}", server.stderr());

    let store = Store::open(&dir.path().join("data").join("weir.redb"), StoreOptions::default()).unwrap();
    let log: Vec<Event> = store.read_log(0, usize::MAX).unwrap().into_iter().map(|(_, e)| e).collect();
    let keys: HashSet<String> = acked.keys().cloned().collect();
    check_exactly_once(&log, &keys, true);
    // The id each acknowledgement reported is the id stored.
    for e in log.iter().filter(|e| e.topic == "load.item.created") {
        assert_eq!(acked.get(&e.idempotency_key), Some(&e.id.to_string()));
    }
    assert_eq!(log.len(), EVENTS * 3, "20,000 inputs and two audit records each, nothing else");
}
