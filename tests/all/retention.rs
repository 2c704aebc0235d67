//! Log retention: it never drops an event a subscription still needs (not
//! read yet, parked or dead-lettered; an orphan's cursor holds too), and
//! removes it once every reader has moved past; size-based retention keeps
//! the newest; compaction keeps the last event per key. Orphans are listed
//! and deleted, and a configured subscription cannot be deleted.

use std::time::{Duration, Instant};

use serde_json::json;
use weir_abi::Event;
use weir_runtime::{DlqFilter, Runtime, SubscriptionError};
use weir_tests::{config, event};

const IDLE: Duration = Duration::from_secs(30);
const TOPIC: &str = "orders.order.created";

fn order(id: &str, currency: &str) -> Event {
    event(
        &json!({ "topic": TOPIC, "key": id,
                 "payload": { "order_id": id, "customer": "c", "currency": currency,
                              "items": [{ "sku": "a", "qty": 1, "price_cents": 100 }] } })
        .to_string(),
    )
}

/// Seqs of the log's events of `TOPIC`.
fn orders_in_log(rt: &Runtime) -> Vec<u64> {
    rt.store().read_log(0, usize::MAX).unwrap().into_iter().filter(|(_, e)| e.topic == TOPIC).map(|(s, _)| s).collect()
}

/// Wait until `done` holds (retention runs in the background), or fail
/// with what `show` says.
fn eventually(what: &str, mut done: impl FnMut() -> bool, show: impl Fn() -> String) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !done() {
        assert!(Instant::now() < deadline, "{what} never happened: {}", show());
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn pipeline(name: &str, handler: &str, plugin: &str) -> String {
    format!(
        "[[pipelines]]\nname = \"{name}\"\ntopics = [\"{TOPIC}\"]\n[[pipelines.handlers]]\nname = \"{handler}\"\nplugin = \"{{{plugin}}}\"\n"
    )
}

const FAST: &str = "[retention]\ninterval = \"50ms\"\n";

#[test]
fn retention_waits_for_a_dead_lettered_event_and_removes_it_once_purged() {
    let dir = tempfile::tempdir().unwrap();
    let toml = format!(
        "{FAST}[[retention.topics]]\npattern = \"{TOPIC}\"\nretention = \"1s\"\n{}{}",
        pipeline("orders", "validator", "ORDER_VALIDATOR"),
        pipeline("audit", "audit", "AUDIT_LOGGER"),
    );
    let rt = Runtime::start(&config(dir.path(), &toml)).unwrap();
    // Seq 3 is rejected by the validator: it sits in its DLQ.
    let events = vec![
        order("o-0", "EUR"),
        order("o-1", "EUR"),
        order("o-2", "EUR"),
        order("o-3", "DOGE"),
        order("o-4", "EUR"),
        order("o-5", "EUR"),
    ];
    rt.publish_blocking(events).unwrap();
    assert!(rt.wait_idle(IDLE));
    assert_eq!(rt.dlq(&DlqFilter::default()).unwrap().len(), 1);

    // Older than a second and read by both: 0 to 2 go. The validator's DLQ
    // entry holds 3 and everything after it back.
    eventually(
        "removal of the handled events",
        || orders_in_log(&rt) == [3, 4, 5],
        || format!("{:?}", orders_in_log(&rt)),
    );
    // Several passes later, still there.
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(orders_in_log(&rt), [3, 4, 5], "a dead-lettered event and what follows are kept");
    let held = rt.store().retention_held();
    assert_eq!(held.get("orders/validator").map(|h| h.since_seq), Some(3), "{held:?}");
    assert!(!held.contains_key("audit/audit"), "{held:?}");
    let listed = rt.subscription_list().unwrap();
    let validator = listed.iter().find(|s| s.name == "orders/validator").unwrap();
    assert!(validator.configured);
    assert_eq!(validator.holdings.dlq, 1);
    assert!(validator.retention_held.is_some_and(|h| h.events >= 3));
    // Other topics fall under the default: forever.
    assert!(rt.store().read_log(0, usize::MAX).unwrap().iter().any(|(_, e)| e.topic == "audit.event.recorded"));

    // Once the entry is gone, nothing holds the rest.
    assert_eq!(rt.purge(DlqFilter::default()).unwrap(), 1);
    eventually("removal after the purge", || orders_in_log(&rt).is_empty(), || format!("{:?}", orders_in_log(&rt)));
    eventually(
        "the hold to clear",
        || !rt.store().retention_held().contains_key("orders/validator"),
        || format!("{:?}", rt.store().retention_held()),
    );
    assert!(rt.store().log_bytes() > 0, "the log's size gauge counts what is left");
    rt.shutdown().unwrap();
}

#[test]
fn a_stopped_orphan_holds_retention_until_it_is_deleted() {
    let dir = tempfile::tempdir().unwrap();
    // Two subscriptions read the first three orders.
    let both = format!("{}{}", pipeline("a", "audit", "AUDIT_LOGGER"), pipeline("b", "audit", "AUDIT_LOGGER"));
    let rt = Runtime::start(&config(dir.path(), &both)).unwrap();
    rt.publish_blocking((0..3).map(|i| order(&format!("o-{i}"), "EUR")).collect()).unwrap();
    assert!(rt.wait_idle(IDLE));
    let b_cursor = rt.counters("b/audit").unwrap().cursor;
    rt.shutdown().unwrap();

    // b leaves the configuration: it stops where it was, and its cursor
    // holds what came after (an orphan is taken to read every topic).
    let one = format!(
        "{FAST}[[retention.topics]]\npattern = \"{TOPIC}\"\nretention = \"1s\"\n{}",
        pipeline("a", "audit", "AUDIT_LOGGER")
    );
    let rt = Runtime::start(&config(dir.path(), &one)).unwrap();
    rt.publish_blocking((3..6).map(|i| order(&format!("o-{i}"), "EUR")).collect()).unwrap();
    assert!(rt.wait_idle(IDLE));
    let before: Vec<u64> = orders_in_log(&rt).into_iter().filter(|s| *s >= b_cursor).collect();
    assert_eq!(before.len(), 3);
    eventually("removal of what both read", || orders_in_log(&rt) == before, || format!("{:?}", orders_in_log(&rt)));
    // Once they are old enough to go, the orphan is reported holding them.
    eventually(
        "the orphan's hold to be reported",
        || rt.store().retention_held().get("b/audit").map(|h| h.since_seq) == Some(b_cursor),
        || format!("{:?}", rt.store().retention_held()),
    );
    assert_eq!(orders_in_log(&rt), before, "the orphan's unread events are kept");

    let listed = rt.subscription_list().unwrap();
    let orphan = listed.iter().find(|s| s.name == "b/audit").expect("the orphan is listed");
    assert!(!orphan.configured);
    assert_eq!(orphan.holdings.cursor, Some(b_cursor));
    // Published events' records are derived from their ingest claims, not
    // written (docs/guarantees.md, promise 3): the orphan holds none.
    assert_eq!(orphan.holdings.idempotency, 0);
    assert!(orphan.holdings.versions >= 1);
    assert!(listed.iter().any(|s| s.name == "a/audit" && s.configured));

    // A configured one is refused; the orphan goes, and so do its events.
    let refused = rt.delete_subscription("a/audit").unwrap_err();
    assert_eq!(refused.code(), "subscription_configured");
    assert!(matches!(refused, SubscriptionError::Configured(_)));
    assert!(rt.subscription_list().unwrap().iter().any(|s| s.name == "a/audit" && s.holdings.cursor.is_some()));
    let deleted = rt.delete_subscription("b/audit").unwrap();
    assert_eq!(deleted.cursor, Some(b_cursor));
    assert!(!rt.subscription_list().unwrap().iter().any(|s| s.name == "b/audit"));
    assert!(rt.store().history("b/audit").unwrap().is_empty());
    assert_eq!(rt.delete_subscription("b/audit").unwrap_err().code(), "subscription_not_found");
    eventually("removal after the delete", || orders_in_log(&rt).is_empty(), || format!("{:?}", orders_in_log(&rt)));
    rt.shutdown().unwrap();
}

#[test]
fn size_retention_keeps_the_newest_events_within_the_size() {
    let dir = tempfile::tempdir().unwrap();
    let toml = format!(
        "{FAST}[[retention.topics]]\npattern = \"{TOPIC}\"\nretention = \"4KiB\"\n{}",
        pipeline("audit", "audit", "AUDIT_LOGGER")
    );
    let rt = Runtime::start(&config(dir.path(), &toml)).unwrap();
    let events: Vec<Event> = (0..40).map(|i| order(&format!("o-{i:02}"), "EUR")).collect();
    let published = rt.publish_blocking(events).unwrap();
    let last = published.last().unwrap().seq;
    assert!(rt.wait_idle(IDLE));
    eventually("size-based removal", || orders_in_log(&rt).len() < 40, || format!("{:?}", orders_in_log(&rt)));
    std::thread::sleep(Duration::from_millis(300));
    let kept = orders_in_log(&rt);
    assert!(!kept.is_empty());
    // The newest are kept, with no gap: the oldest go first.
    assert_eq!(*kept.last().unwrap(), last);
    assert!(kept.windows(2).all(|w| w[1] == w[0] + 1), "{kept:?}");
    let payloads: usize = rt
        .store()
        .read_log(0, usize::MAX)
        .unwrap()
        .iter()
        .filter(|(_, e)| e.topic == TOPIC)
        .map(|(_, e)| e.payload.len())
        .sum();
    assert!(payloads <= 4096, "{payloads} payload bytes kept under a 4KiB rule");
    rt.shutdown().unwrap();
}

#[test]
fn size_retention_never_drops_what_a_subscription_has_not_read() {
    let dir = tempfile::tempdir().unwrap();
    // The validator dead-letters the first event: nothing of the topic from
    // there on may go, whatever the size says.
    let toml = format!(
        "{FAST}[[retention.topics]]\npattern = \"{TOPIC}\"\nretention = \"1B\"\n{}",
        pipeline("orders", "validator", "ORDER_VALIDATOR")
    );
    let rt = Runtime::start(&config(dir.path(), &toml)).unwrap();
    let mut events = vec![order("o-bad", "DOGE")];
    events.extend((0..5).map(|i| order(&format!("o-{i}"), "EUR")));
    rt.publish_blocking(events).unwrap();
    assert!(rt.wait_idle(IDLE));
    eventually(
        "the hold to be reported",
        || rt.store().retention_held().contains_key("orders/validator"),
        || format!("{:?}", rt.store().retention_held()),
    );
    assert_eq!(orders_in_log(&rt), [0, 1, 2, 3, 4, 5]);
    assert_eq!(rt.purge(DlqFilter::default()).unwrap(), 1);
    // Over 1 byte, everything read may go; the last one too.
    eventually("removal", || orders_in_log(&rt).is_empty(), || format!("{:?}", orders_in_log(&rt)));
    rt.shutdown().unwrap();
}

#[test]
fn compaction_keeps_the_last_event_per_key() {
    let dir = tempfile::tempdir().unwrap();
    let toml = format!(
        "{FAST}[[retention.topics]]\npattern = \"{TOPIC}\"\ncompact = true\n{}",
        pipeline("audit", "audit", "AUDIT_LOGGER")
    );
    let rt = Runtime::start(&config(dir.path(), &toml)).unwrap();
    let mut events = Vec::new();
    for (i, key) in ["a", "b", "a", "c", "b", "a"].iter().enumerate() {
        let mut e = order(key, "EUR");
        e.idempotency_key = format!("k-{i}");
        events.push(e);
    }
    let published = rt.publish_blocking(events).unwrap();
    let seqs: Vec<u64> = published.iter().map(|p| p.seq).collect();
    assert!(rt.wait_idle(IDLE));
    let expected = vec![seqs[3], seqs[4], seqs[5]];
    eventually("compaction", || orders_in_log(&rt) == expected, || format!("{:?}", orders_in_log(&rt)));
    let keys: Vec<Option<String>> = rt
        .store()
        .read_log(0, usize::MAX)
        .unwrap()
        .into_iter()
        .filter(|(_, e)| e.topic == TOPIC)
        .map(|(_, e)| e.key)
        .collect();
    assert_eq!(keys, [Some("c".to_owned()), Some("b".to_owned()), Some("a".to_owned())]);
    rt.shutdown().unwrap();
}

/// DELETE `path` on the server; with or without the JSON content type.
fn delete(server: &weir_tests::Server, path: &str, json: bool) -> (u16, serde_json::Value) {
    let agent = ureq::Agent::new_with_config(ureq::Agent::config_builder().http_status_as_error(false).build());
    let mut request = agent.delete(format!("{}{path}", server.url));
    if json {
        request = request.header("content-type", "application/json");
    }
    let mut response = request.call().unwrap();
    let status = response.status().as_u16();
    let text = response.body_mut().read_to_string().unwrap();
    (status, serde_json::from_str(&text).unwrap_or(serde_json::Value::Null))
}

#[test]
fn orphans_are_listed_and_deleted_over_http_and_the_cli_of_the_real_binary() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let both = format!("{}{}", pipeline("a", "audit", "AUDIT_LOGGER"), pipeline("b", "audit", "AUDIT_LOGGER"));
    let mut server = weir_tests::Server::start(dir.path(), &both);
    let (status, _) = server.post("/v1/events", &json!({ "topic": TOPIC, "key": "k", "payload": {} }));
    assert_eq!(status, 200);
    assert!(server.wait_idle(IDLE));
    assert!(server.terminate().success());

    let mut server = weir_tests::Server::start(dir.path(), &pipeline("a", "audit", "AUDIT_LOGGER"));
    let (status, list) = server.get("/v1/subscriptions");
    assert_eq!(status, 200);
    let subs = list["subscriptions"].as_array().unwrap();
    let find = |name: &str| subs.iter().find(|s| s["name"] == name).cloned();
    assert_eq!(find("a/audit").unwrap()["configured"], true);
    let orphan = find("b/audit").expect("the orphan is listed");
    assert_eq!(orphan["configured"], false);
    assert_eq!(orphan["idempotency"], 0, "a published event's record is derived, not written");
    assert!(orphan["cursor"].as_u64().unwrap() >= 1);

    let out = weir_tests::weir(&["subscription", "--server", &server.url, "list"], &cache);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().find(|l| l.starts_with("b/audit")).unwrap_or_else(|| panic!("{text}"));
    assert!(line.contains("orphan"), "{line}");

    // A running subscription cannot be deleted; a delete needs the JSON
    // content type like every state-changing request.
    let (status, body) = delete(&server, "/v1/subscriptions/a/audit", true);
    assert_eq!((status, body["error"]["code"].as_str()), (409, Some("subscription_configured")));
    let (status, _) = delete(&server, "/v1/subscriptions/b/audit", false);
    assert_eq!(status, 415);
    let out = weir_tests::weir(&["subscription", "--server", &server.url, "delete", "b/audit"], &cache);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("deleted b/audit"));
    let (status, body) = delete(&server, "/v1/subscriptions/b/audit", true);
    assert_eq!((status, body["error"]["code"].as_str()), (404, Some("subscription_not_found")));
    let (_, list) = server.get("/v1/subscriptions");
    assert!(list["subscriptions"].as_array().unwrap().iter().all(|s| s["name"] != "b/audit"));

    // A durable consumer is a running subscription too: listed, and not
    // deletable here.
    let (status, _) = server.put_with(
        "/v1/consumers/c",
        &[("content-type", "application/json")],
        json!({ "topics": [TOPIC] }).to_string().as_bytes(),
    );
    assert_eq!(status, 201);
    let (_, list) = server.get("/v1/subscriptions");
    let consumer = list["subscriptions"].as_array().unwrap().iter().find(|s| s["name"] == "consumers/c").cloned();
    assert_eq!(consumer.map(|c| c["configured"].clone()), Some(json!(true)), "{list}");
    let (status, body) = delete(&server, "/v1/subscriptions/consumers/c", true);
    assert_eq!((status, body["error"]["code"].as_str()), (409, Some("subscription_configured")));
    let metrics = ureq_text(&format!("{}/metrics", server.url));
    assert!(metrics.contains("weir_log_stored_bytes "), "{metrics}");
    assert!(metrics.contains("weir_subscription_retention_held{subscription=\"a/audit\"} 0"));
    assert!(server.terminate().success());
}

fn ureq_text(url: &str) -> String {
    ureq::get(url).call().unwrap().body_mut().read_to_string().unwrap()
}

#[test]
fn weir_status_names_a_subscription_that_holds_retention_back() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let toml = format!(
        "{FAST}[[retention.topics]]\npattern = \"{TOPIC}\"\nretention = \"1B\"\n{}",
        pipeline("orders", "validator", "ORDER_VALIDATOR")
    );
    let mut server = weir_tests::Server::start(dir.path(), &toml);
    let bad = json!({ "topic": TOPIC, "key": "o-1", "payload": { "order_id": "o-1", "customer": "c",
        "currency": "DOGE", "items": [{ "sku": "a", "qty": 1, "price_cents": 1 }] } });
    assert_eq!(server.post("/v1/events", &bad).0, 200);
    let held = || {
        let (_, status) = server.get("/v1/status");
        status["subscriptions"][0]["retention_held"].as_u64().unwrap_or(0)
    };
    eventually("the hold to show in /v1/status", || held() > 0, || server.get("/v1/status").1.to_string());
    let out = weir_tests::weir(&["status", "--server", &server.url], &cache);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("retention held back by orders/validator: 1 event(s)"), "{text}");
    assert!(server.terminate().success());
}
