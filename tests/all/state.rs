//! Handler state (`ctx.state()`, the `weir::state_*` imports), on the real
//! `weir` binary with the counter plugin (plugins/counter) and the state
//! hog (plugins/adversarial/state-hog): writes commit exactly once with the
//! outcome, a failed attempt leaves none, later events read earlier ones'
//! writes, kill -9 neither loses nor repeats a change, and every bound
//! dead-letters the event as `state_limit` without touching the state.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use rand::{Rng, SeedableRng};
use serde_json::{Value, json};
use weir_runtime::{Store, StoreOptions};
use weir_tests::{Server, plugins};

fn counter_config() -> String {
    format!(
        r#"
[[pipelines]]
name = "count"
topics = ["orders.order.*"]
[[pipelines.handlers]]
name = "counter"
plugin = "{}"
retry = {{ max_attempts = 3, initial_backoff = "20ms", jitter = 0.0 }}
"#,
        plugins::COUNTER
    )
}

fn publish(server: &Server, events: &[Value]) {
    let (status, body) = server.post("/v1/events", &Value::Array(events.to_vec()));
    assert_eq!(status, 200, "{body}");
}

fn order(key: &str, n: usize) -> Value {
    json!({ "topic": "orders.order.created", "key": key, "idempotency_key": format!("{key}-{n}"), "payload": { "n": n } })
}

/// Every `counter.key.counted` event in the log: key → the counts, in log
/// order.
fn counted(store: &Store) -> BTreeMap<String, Vec<u64>> {
    let mut out: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for (_, event) in store.read_log(0, usize::MAX).unwrap() {
        if event.topic == "counter.key.counted" {
            let payload: Value = serde_json::from_slice(&event.payload).unwrap();
            let key = payload["key"].as_str().unwrap().to_owned();
            out.entry(key).or_default().push(payload["count"].as_u64().unwrap());
        }
    }
    out
}

fn state(server: &Server, query: &str) -> Value {
    let (status, body) = server.get(&format!("/v1/subscriptions/count/counter/state?{query}"));
    assert_eq!(status, 200, "{body}");
    body
}

fn stored_count(server: &Server, key: &str) -> Option<u64> {
    let body = state(server, &format!("key={key}"));
    body["entries"].as_array().unwrap().iter().find(|e| e["key"] == "count").map(|e| e["value"].as_u64().unwrap())
}

#[test]
fn each_event_changes_the_state_once_and_a_failed_attempt_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(dir.path(), &counter_config());
    // One request: the events of a key land in one read batch, so each
    // reads what the one before wrote before any of it is committed.
    let mut events: Vec<Value> = (0..5).map(|n| order("a", n)).collect();
    events.extend((0..3).map(|n| order("b", n)));
    events.push(order("reject-1", 0));
    events.push(order("retry-1", 0));
    publish(&server, &events);
    assert!(server.wait_idle(Duration::from_secs(30)), "{}", server.stderr());

    assert_eq!(stored_count(&server, "a"), Some(5));
    assert_eq!(stored_count(&server, "b"), Some(3));
    assert_eq!(stored_count(&server, "retry-1"), Some(1), "the retried attempt's writes were dropped");
    assert_eq!(stored_count(&server, "reject-1"), None, "a rejected event's writes were dropped");
    let shared = state(&server, "shared=true");
    assert_eq!(shared["key"], Value::Null);
    assert_eq!(shared["entries"], json!([{ "key": "total", "value": 9 }]));
    let scopes = state(&server, "");
    assert_eq!(scopes["keys"], json!(["a", "b", "retry-1"]));
    assert_eq!(scopes["shared"], true);

    let (status, dlq) = server.get("/v1/dlq?subscription=count/counter");
    assert_eq!(status, 200, "{dlq}");
    assert_eq!(dlq["entries"].as_array().unwrap().len(), 1, "{dlq}");

    assert!(server.terminate().success());
    let store = Store::open(&dir.path().join("data").join("weir.redb"), StoreOptions::default()).unwrap();
    let counts = counted(&store);
    assert_eq!(counts["a"], vec![1, 2, 3, 4, 5]);
    assert_eq!(counts["b"], vec![1, 2, 3]);
    assert_eq!(counts["retry-1"], vec![1]);
    assert!(!counts.contains_key("reject-1"));
}

#[test]
fn the_state_api_pages_and_refuses_what_it_does_not_know() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &counter_config());
    let keys: Vec<String> = (0..5).map(|i| format!("k{i}")).collect();
    publish(&server, &keys.iter().map(|k| order(k, 0)).collect::<Vec<_>>());
    assert!(server.wait_idle(Duration::from_secs(30)));
    let first = state(&server, "limit=2");
    assert_eq!(first["keys"], json!(["k0", "k1"]));
    assert_eq!(first["next"], "k1");
    let rest = state(&server, "limit=10&after=k1");
    assert_eq!(rest["keys"], json!(["k2", "k3", "k4"]));
    assert!(rest.get("next").is_none());
    let (status, body) = server.get("/v1/subscriptions/count/nobody/state?key=a");
    assert_eq!((status, body["error"]["code"].as_str()), (404, Some("subscription_not_found")));
    let (status, body) = server.get("/v1/subscriptions/count/counter/state?key=a&shared=true");
    assert_eq!((status, body["error"]["code"].as_str()), (400, Some("bad_query")));
    let (status, _) = server.get("/v1/subscriptions/count/counter/state?nonsense=1");
    assert_eq!(status, 400);
}

#[test]
fn kill_9_while_counting_neither_loses_nor_repeats_a_state_change() {
    const EVENTS: usize = 6_000;
    const KEYS: usize = 40;
    const BATCH: usize = 100;
    let seed: u64 = rand::random();
    println!("seed {seed}");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(dir.path(), &counter_config());
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
            for start in (0..EVENTS).step_by(BATCH) {
                let batch: Vec<Value> =
                    (start..start + BATCH).map(|i| order(&format!("acct-{}", i % KEYS), i)).collect();
                let body = Value::Array(batch).to_string();
                // Sent again until acknowledged; the idempotency keys make
                // a resend of a stored event a duplicate.
                loop {
                    let ok = agent
                        .post(format!("{url}/v1/events"))
                        .header("content-type", "application/json")
                        .send(body.as_bytes())
                        .is_ok_and(|r| r.status() == 200);
                    if ok {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
            done.store(true, Ordering::Relaxed);
        })
    };
    let mut kills = 0;
    while !done.load(Ordering::Relaxed) && kills < 6 {
        std::thread::sleep(Duration::from_millis(rng.random_range(50..400)));
        server.kill9();
        kills += 1;
        server.restart();
    }
    publisher.join().unwrap();
    // Once more while the handler is still catching up.
    server.kill9();
    server.restart();
    assert!(kills >= 1);
    assert!(server.wait_idle(Duration::from_secs(180)), "{}", server.stderr());

    let mut expected: HashMap<String, u64> = HashMap::new();
    for i in 0..EVENTS {
        *expected.entry(format!("acct-{}", i % KEYS)).or_default() += 1;
    }
    for (key, n) in &expected {
        assert_eq!(stored_count(&server, key), Some(*n), "state of {key}");
    }
    let total = state(&server, "shared=true")["entries"][0]["value"].as_u64();
    assert_eq!(total, Some(EVENTS as u64));
    assert!(server.terminate().success(), "{}", server.stderr());
    let store = Store::open(&dir.path().join("data").join("weir.redb"), StoreOptions::default()).unwrap();
    // The counts emitted with each state change: 1..=n for each key, in
    // order, none missing and none twice.
    for (key, counts) in counted(&store) {
        let n = expected[&key];
        assert_eq!(counts, (1..=n).collect::<Vec<_>>(), "counts emitted for {key}");
    }
}

fn hog_config(limits: &str, settings: &str) -> String {
    format!(
        r#"
[[pipelines]]
name = "hog"
topics = ["hog.test.*"]
[[pipelines.handlers]]
name = "hog"
plugin = "{}"
config = {settings}
limits = {limits}
retry = {{ max_attempts = 2, initial_backoff = "10ms", jitter = 0.0 }}
"#,
        plugins::STATE_HOG
    )
}

fn dlq_codes(server: &Server) -> BTreeMap<String, String> {
    let (status, body) = server.get("/v1/dlq?subscription=hog/hog");
    assert_eq!(status, 200, "{body}");
    body["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["key"].as_str().unwrap().to_owned(), e["code"].as_str().unwrap().to_owned()))
        .collect()
}

#[test]
fn every_state_bound_dead_letters_the_event_as_state_limit_and_stores_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let config = hog_config(
        "{ max_state_value_bytes = 1000, max_state_keys_per_scope = 50, max_state_write_bytes = 200000 }",
        "{ value_bytes = 1001, keys = 51 }",
    );
    let server = Server::start(dir.path(), &config);
    let keys = ["big-value", "many-keys", "write-flood", "long-key", "fine"];
    let events: Vec<Value> = keys
        .iter()
        .map(|k| json!({ "topic": "hog.test.event", "key": k, "idempotency_key": k, "payload": {} }))
        .collect();
    publish(&server, &events);
    assert!(server.wait_idle(Duration::from_secs(30)), "{}", server.stderr());
    let codes = dlq_codes(&server);
    for key in &keys[..4] {
        assert_eq!(codes.get(*key).map(String::as_str), Some("state_limit"), "{key}: {codes:?}");
    }
    assert!(!codes.contains_key("fine"));
    for key in &keys[..4] {
        let (_, body) = server.get(&format!("/v1/subscriptions/hog/hog/state?key={key}"));
        assert_eq!(body["entries"], json!([]), "{key} stored nothing");
    }
    let (_, body) = server.get("/v1/subscriptions/hog/hog/state?key=fine");
    assert_eq!(body["entries"], json!([{ "key": "seen", "value": true }]));
    // Dead-lettered at once: a bound is deterministic, a retry would hit it
    // again.
    let (_, dlq) = server.get("/v1/dlq?subscription=hog/hog");
    assert!(dlq["entries"].as_array().unwrap().iter().all(|e| e["attempts"] == 1), "{dlq}");
}

#[test]
fn a_scope_at_its_key_bound_still_takes_overwrites_of_its_keys() {
    // 50 keys fit: the hog's `many-keys` with keys = 50 fills the scope
    // exactly, and the same event's keys again (overwrites) still fit.
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &hog_config("{ max_state_keys_per_scope = 50 }", "{ keys = 50 }"));
    let events: Vec<Value> = (0..2)
        .map(|i| json!({ "topic": "hog.test.event", "key": "many-keys", "idempotency_key": format!("m{i}"), "payload": {} }))
        .collect();
    publish(&server, &events);
    assert!(server.wait_idle(Duration::from_secs(30)), "{}", server.stderr());
    assert!(dlq_codes(&server).is_empty(), "{:?}", dlq_codes(&server));
    let (_, body) = server.get("/v1/subscriptions/hog/hog/state?key=many-keys&limit=1000");
    assert_eq!(body["entries"].as_array().unwrap().len(), 50);
}

#[test]
fn weir_exec_runs_a_stateful_plugin_on_state_kept_for_the_run() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("events.jsonl");
    let lines: Vec<String> = ["a", "a", "reject-1", "b", "a"]
        .iter()
        .map(|k| json!({ "topic": "orders.order.created", "key": k, "payload": {} }).to_string())
        .collect();
    std::fs::write(&input, lines.join("\n")).unwrap();
    let output = weir_tests::weir(
        &["exec", "--plugin", plugins::COUNTER, "--input", input.to_str().unwrap()],
        &dir.path().join("cache"),
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    let records: Vec<Value> = stdout.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let count = |r: &Value| -> Option<u64> {
        let payload = &r["emits"][0]["payload"];
        payload["count"].as_u64()
    };
    assert_eq!(records.iter().map(count).collect::<Vec<_>>(), [Some(1), Some(2), None, Some(1), Some(3)], "{stdout}");
    assert_eq!(
        records[0]["state"],
        json!([
            { "scope": "a", "key": "count", "value": 1, "deleted": false },
            { "scope": null, "key": "total", "value": 1, "deleted": false },
        ])
    );
    assert!(records[2].get("state").is_none(), "a rejected event's writes are not shown as made");
}
