//! `weir replay`: a stateful handler's state (here the counter plugin's
//! `counts` view) is rebuilt from the log into a shadow copy while the live
//! one serves, then switched to in one commit; on the real `weir` binary.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use weir_tests::{Server, plugins};

fn config() -> String {
    format!(
        r#"
[[pipelines]]
name = "count"
topics = ["orders.order.*"]
[[pipelines.handlers]]
name = "counter"
plugin = "{counter}"
view = "counts"
retry = {{ max_attempts = 3, initial_backoff = "20ms", jitter = 0.0 }}

[[pipelines]]
name = "plain"
topics = ["orders.order.*"]
[[pipelines.handlers]]
name = "audit"
plugin = "{audit}"
"#,
        counter = plugins::COUNTER,
        audit = plugins::AUDIT_LOGGER
    )
}

fn order(key: &str, n: usize) -> Value {
    json!({ "topic": "orders.order.created", "key": key, "idempotency_key": format!("{key}-{n}"), "payload": {} })
}

fn publish(server: &Server, events: Vec<Value>) {
    let (status, body) = server.post("/v1/events", &Value::Array(events));
    assert_eq!(status, 200, "{body}");
}

/// Publish chunks of 100 events over `keys` accounts (`acct-NNN`),
/// counting each account's events in `expected`.
fn publish_chunks(server: &Server, chunks: std::ops::Range<usize>, keys: usize, expected: &mut BTreeMap<String, u64>) {
    for chunk in chunks {
        let events: Vec<Value> = (0..100)
            .map(|i| {
                let n = chunk * 100 + i;
                let key = format!("acct-{:03}", n % keys);
                *expected.entry(key.clone()).or_default() += 1;
                order(&key, n)
            })
            .collect();
        publish(server, events);
    }
}

/// Every key of the view with its count.
fn counts(server: &Server) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    let mut after = String::new();
    loop {
        let (status, page) = server.get(&format!("/v1/views/counts?limit=1000&after={after}"));
        assert_eq!(status, 200, "{page}");
        for item in page["items"].as_array().unwrap() {
            out.insert(item["key"].as_str().unwrap().to_owned(), item["value"]["count"].as_u64().unwrap());
        }
        match page["next"].as_str() {
            Some(next) => after = next.to_owned(),
            None => return out,
        }
    }
}

fn wait_replay(server: &Server) -> Value {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let (status, info) = server.get("/v1/subscriptions/count/counter/replay");
        assert_eq!(status, 200, "{info}");
        if info["state"] == "done" || info["state"] == "failed" {
            return info;
        }
        assert!(Instant::now() < deadline, "the replay did not end: {info}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_replay_rebuilds_what_the_live_state_holds_while_the_view_keeps_serving_whole_values() {
    let dir = tempfile::tempdir().unwrap();
    let server = Arc::new(Server::start(dir.path(), &config()));
    let mut expected: BTreeMap<String, u64> = BTreeMap::new();
    publish_chunks(&server, 0..20, 25, &mut expected);
    // The live subscription dead-letters these and handles these on a
    // second attempt: the replay must do as it did.
    publish(&server, vec![order("reject-1", 0), order("retry-1", 0)]);
    expected.insert("retry-1".into(), 1);
    assert!(server.wait_idle(Duration::from_secs(60)), "{}", server.stderr());
    assert_eq!(counts(&server), expected);

    // Readers during the replay see whole values: a key's count never goes
    // down (a half-built shadow would show less).
    let stop = Arc::new(AtomicBool::new(false));
    let reader = {
        let (server, stop) = (Arc::clone(&server), Arc::clone(&stop));
        std::thread::spawn(move || {
            let mut seen: BTreeMap<String, u64> = BTreeMap::new();
            let mut reads = 0;
            while !stop.load(Ordering::Relaxed) {
                for (key, count) in counts(&server) {
                    let before = seen.insert(key.clone(), count).unwrap_or(0);
                    assert!(count >= before, "{key} went from {before} to {count} during the replay");
                }
                reads += 1;
            }
            reads
        })
    };
    let (status, started) = server.post("/v1/subscriptions/count/counter/replay", &json!({ "from": "beginning" }));
    assert_eq!(status, 202, "{started}");
    assert_eq!(started["generation"], 1);
    let (status, again) = server.post("/v1/subscriptions/count/counter/replay", &json!({}));
    // One replay at a time: refused while the first runs; accepted only if
    // the first had already switched (then it builds the next generation,
    // never a second copy of the same one).
    match status {
        409 => assert_eq!(again["error"]["code"], "replay_running", "{again}"),
        202 => assert_eq!(again["generation"], 2, "a second replay ran beside the first: {again}"),
        other => panic!("a second replay answered {other}: {again}"),
    }
    // More events while it runs: they land in the live state, and in the
    // shadow before the switch.
    publish_chunks(&server, 20..30, 25, &mut expected);
    let info = wait_replay(&server);
    assert_eq!(info["state"], "done", "{info}");
    assert!(server.wait_idle(Duration::from_secs(60)), "{}", server.stderr());
    stop.store(true, Ordering::Relaxed);
    assert!(reader.join().unwrap() > 0);

    assert_eq!(counts(&server), expected, "the rebuilt state equals the incremental one");
    let (_, shared) = server.get("/v1/subscriptions/count/counter/state?shared=true");
    assert_eq!(shared["entries"][0]["value"], expected.values().sum::<u64>(), "{shared}");
    assert!(info["applied"].as_u64().unwrap() >= 2000, "{info}");
    assert!(info["skipped"].as_u64().unwrap() >= 1, "the dead-lettered event was not applied: {info}");
    // A second replay builds the next generation and lands on the same.
    let (status, second) = server.post("/v1/subscriptions/count/counter/replay", &json!({}));
    assert_eq!((status, second["generation"].as_u64()), (202, Some(2)), "{second}");
    assert_eq!(wait_replay(&server)["state"], "done");
    assert_eq!(counts(&server), expected);
}

#[test]
fn a_replay_is_refused_for_what_it_cannot_rebuild() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &config());
    let (status, body) = server.post("/v1/subscriptions/count/nobody/replay", &json!({}));
    assert_eq!((status, body["error"]["code"].as_str()), (404, Some("subscription_not_found")));
    let (status, body) = server.post("/v1/subscriptions/plain/audit/replay", &json!({}));
    assert_eq!((status, body["error"]["code"].as_str()), (422, Some("replay_stateless")), "{body}");
    let (status, body) = server.post("/v1/subscriptions/count/counter/replay", &json!({ "from": "yesterday-ish" }));
    assert_eq!((status, body["error"]["code"].as_str()), (400, Some("invalid_from")), "{body}");
    let (status, body) = server.get("/v1/subscriptions/count/counter/replay");
    assert_eq!((status, body["error"]["code"].as_str()), (404, Some("replay_not_found")));
}

#[test]
fn kill_9_during_a_replay_leaves_the_live_state_whole_and_a_new_replay_finishes() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(dir.path(), &config());
    let mut expected: BTreeMap<String, u64> = BTreeMap::new();
    publish_chunks(&server, 0..40, 200, &mut expected);
    assert!(server.wait_idle(Duration::from_secs(60)), "{}", server.stderr());
    let (status, _) = server.post("/v1/subscriptions/count/counter/replay", &json!({}));
    assert_eq!(status, 202);
    std::thread::sleep(Duration::from_millis(30));
    server.kill9();
    server.restart();
    assert!(server.wait_idle(Duration::from_secs(60)), "{}", server.stderr());
    assert_eq!(counts(&server), expected, "the live state is whole after the kill");
    let (status, started) = server.post("/v1/subscriptions/count/counter/replay", &json!({}));
    assert_eq!(status, 202, "{started}");
    assert_eq!(wait_replay(&server)["state"], "done");
    assert_eq!(counts(&server), expected);
    // The CLI follows a replay to its end.
    let url = server.url.clone();
    let out = weir_tests::weir(&["replay", "count/counter", "--server", &url], &dir.path().join("cache"));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let info: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(info["state"], "done");
    assert_eq!(counts(&server), expected);
}
