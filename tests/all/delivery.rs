//! Delivery through the durable runtime, in process: fan-out, chained
//! pipelines, host-enforced idempotency, retries, the DLQ and redrive.

use std::collections::HashMap;
use std::time::Duration;

use serde_json::{Value, json};
use weir_abi::Event;
use weir_runtime::DlqFilter;
use weir_runtime::Runtime;
use weir_tests::{config, event};

const IDLE: Duration = Duration::from_secs(30);

fn order(id: &str, currency: &str) -> Event {
    event(
        &json!({ "topic": "orders.order.created", "key": id,
                 "payload": { "order_id": id, "customer": "c", "currency": currency,
                              "items": [{ "sku": "a", "qty": 2, "price_cents": 700 }] } })
        .to_string(),
    )
}

/// Every event in the log.
fn log(rt: &Runtime) -> Vec<Event> {
    rt.store().read_log(0, usize::MAX).unwrap().into_iter().map(|(_, e)| e).collect()
}

fn by_topic<'a>(events: &'a [Event], topic: &str) -> Vec<&'a Event> {
    events.iter().filter(|e| e.topic == topic).collect()
}

const FAN_OUT: &str = weir_tests::ORDERS_ENRICHED;

#[test]
fn fan_out_reaches_every_subscription_once_and_chains_carry_causation() {
    let dir = tempfile::tempdir().unwrap();
    let rt = Runtime::start(&config(dir.path(), FAN_OUT)).unwrap();
    let orders: Vec<Event> = (0..200).map(|i| order(&format!("o-{i}"), "EUR")).collect();
    let published = rt.publish_blocking(orders.clone()).unwrap();
    assert!(published.iter().all(|p| !p.duplicate));
    assert!(rt.wait_idle(IDLE));

    let all = log(&rt);
    let audits = by_topic(&all, "audit.event.recorded");
    let validated = by_topic(&all, "orders.order.validated");
    let enriched = by_topic(&all, "orders.order.enriched");
    assert_eq!(audits.len(), 200);
    assert_eq!(validated.len(), 200);
    assert_eq!(enriched.len(), 200);

    // Exactly once per input, per subscription.
    let mut audited: HashMap<String, usize> = HashMap::new();
    for a in &audits {
        let record: Value = serde_json::from_slice(&a.payload).unwrap();
        *audited.entry(record["event_id"].as_str().unwrap().to_owned()).or_default() += 1;
    }
    for o in &orders {
        assert_eq!(audited.get(&o.id.to_string()), Some(&1));
    }
    // The chain: created → validated → enriched, one correlation id.
    for e in &enriched {
        let parent = validated.iter().find(|v| Some(v.id) == e.causation_id).expect("enriched caused by validated");
        let root = orders.iter().find(|o| Some(o.id) == parent.causation_id).expect("validated caused by created");
        assert_eq!(e.correlation_id, Some(root.id));
        assert_eq!(e.source, "weir://enrich/enricher");
        assert!(e.header(weir_runtime::VERSION_HEADER).is_some());
    }
    let status = rt.status().unwrap();
    assert!(status.iter().all(|s| s.lag == 0 && s.parked == 0 && s.dlq == 0), "{status:?}");
    rt.shutdown().unwrap();
}

#[test]
fn a_recorded_idempotency_key_is_not_handed_to_the_handler_again() {
    let dir = tempfile::tempdir().unwrap();
    let toml = r#"
[[pipelines]]
name = "copy"
topics = ["orders.order.created"]
[[pipelines.handlers]]
name = "duplicator"
plugin = "{DUPLICATOR}"

[[pipelines]]
name = "sink"
topics = ["dup.event.copied"]
[[pipelines.handlers]]
name = "audit"
plugin = "{AUDIT_LOGGER}"
"#;
    let rt = Runtime::start(&config(dir.path(), toml)).unwrap();
    rt.publish_blocking((0..50).map(|i| order(&format!("o-{i}"), "EUR")).collect()).unwrap();
    assert!(rt.wait_idle(IDLE));
    // 100 copies in the log, two per key…
    assert_eq!(by_topic(&log(&rt), "dup.event.copied").len(), 100);
    // …but the audit handler ran 50 times, and skipped 50 duplicates.
    let counters = rt.counters("sink/audit").unwrap();
    assert_eq!(counters.invocations, 50);
    assert_eq!(by_topic(&log(&rt), "audit.event.recorded").len(), 50);
    let status = rt.status().unwrap();
    let sink = status.iter().find(|s| s.name == "sink/audit").unwrap();
    assert_eq!(sink.stats.duplicates, 50);
    assert_eq!(sink.stats.handled, 50);
    rt.shutdown().unwrap();
}

/// Records of published events are derived from their ingest claims
/// (docs/guarantees.md, promise 3), and an emit that reuses a producer's
/// key is still a duplicate exactly where the producer's event was handled.
#[test]
fn an_emit_reusing_a_published_key_is_a_duplicate_only_where_the_published_event_was_handled() {
    let dir = tempfile::tempdir().unwrap();
    let toml = r#"
[[pipelines]]
name = "echo"
topics = ["echo.order.created"]
[[pipelines.handlers]]
name = "duplicator"
plugin = "{DUPLICATOR}"

[[pipelines]]
name = "both"
topics = ["echo.order.created", "echo.order.echoed"]
[[pipelines.handlers]]
name = "audit"
plugin = "{AUDIT_LOGGER}"

[[pipelines]]
name = "echoes"
topics = ["echo.order.echoed"]
[[pipelines.handlers]]
name = "audit"
plugin = "{AUDIT_LOGGER}"
"#;
    let orders = || {
        (0..50).map(|i| {
            let mut e = order(&format!("o-{i}"), "EUR");
            e.topic = "echo.order.created".into();
            e.idempotency_key = format!("order-{i}");
            e
        })
    };
    let rt = Runtime::start(&config(dir.path(), toml)).unwrap();
    rt.publish_blocking(orders().collect()).unwrap();
    assert!(rt.wait_idle(IDLE));
    let events = log(&rt);
    let echoes = by_topic(&events, "echo.order.echoed");
    assert_eq!(echoes.len(), 50);
    let published: std::collections::HashSet<&str> =
        by_topic(&events, "echo.order.created").into_iter().map(|e| e.idempotency_key.as_str()).collect();
    assert!(echoes.iter().all(|e| published.contains(e.idempotency_key.as_str())), "each echo reuses its input's key");

    // `both` invoked its handler once per order, not for the echoes.
    assert_eq!(rt.counters("both/audit").unwrap().invocations, 50);
    let check = |rt: &Runtime| {
        // `both` handled each order and skipped its echo…
        let status = rt.status().unwrap();
        let stats = |name: &str| status.iter().find(|s| s.name == name).unwrap().stats;
        assert_eq!((stats("both/audit").handled, stats("both/audit").duplicates), (50, 50));
        // …`echoes` never saw the orders, so it handled every echo.
        assert_eq!((stats("echoes/audit").handled, stats("echoes/audit").duplicates), (50, 0));
        assert_eq!(by_topic(&log(rt), "audit.event.recorded").len(), 100);
        // `both` wrote no record (its handled events hold their claims);
        // `echoes` wrote one per echo (emits are not claimed).
        let listed = rt.subscription_list().unwrap();
        let records = |name: &str| listed.iter().find(|s| s.name == name).unwrap().holdings.idempotency;
        assert_eq!((records("both/audit"), records("echoes/audit")), (0, 50));
    };
    check(&rt);
    rt.shutdown().unwrap();

    // After a restart nothing is handled again, and a re-publish is
    // answered from the ingest index.
    let rt = Runtime::start(&config(dir.path(), toml)).unwrap();
    let again = rt.publish_blocking(orders().collect()).unwrap();
    assert!(again.iter().all(|p| p.duplicate));
    assert!(rt.wait_idle(IDLE));
    for name in ["echo/duplicator", "both/audit", "echoes/audit"] {
        assert_eq!(rt.counters(name).unwrap().invocations, 0, "{name} handled nothing again");
    }
    check(&rt);
    rt.shutdown().unwrap();
}

/// An emit with the host's key carries its key's window, and the records
/// of the subscriptions that read it are derived from it, not written
/// (docs/guarantees.md, promise 3); a producer's event forging such a key is
/// still a duplicate where the emit was handled.
#[test]
fn a_chain_writes_no_records_and_an_event_forging_a_host_key_is_a_duplicate() {
    let dir = tempfile::tempdir().unwrap();
    let orders = || {
        (0..100)
            .map(|i| Event { idempotency_key: format!("order-{i}"), ..order(&format!("o-{i}"), "EUR") })
            .collect::<Vec<_>>()
    };
    let rt = Runtime::start(&config(dir.path(), FAN_OUT)).unwrap();
    let started_ms = u64::try_from(std::time::SystemTime::UNIX_EPOCH.elapsed().unwrap().as_millis()).unwrap();
    rt.publish_blocking(orders()).unwrap();
    assert!(rt.wait_idle(IDLE));
    let events = log(&rt);
    let validated = by_topic(&events, "orders.order.validated");
    assert_eq!(validated.len(), 100);
    for v in &validated {
        let window: u64 =
            v.header(weir_runtime::HOST_KEY_HEADER).expect("a host-keyed emit is marked").parse().unwrap();
        // The validator's records are derived from the orders' claims: the
        // window is the claim's, a day (the default retention) from ingest.
        assert!(window > started_ms + 23 * 3_600_000, "{window}");
        assert!(v.idempotency_key.ends_with("/orders/validator#0"), "{}", v.idempotency_key);
    }
    // The audit logger's emits carry explicit keys: not marked.
    assert!(
        by_topic(&events, "audit.event.recorded").iter().all(|a| a.header(weir_runtime::HOST_KEY_HEADER).is_none())
    );
    let records = |rt: &Runtime| {
        let listed = rt.subscription_list().unwrap();
        ["orders/validator", "orders/audit", "enrich/enricher"]
            .map(|name| listed.iter().find(|s| s.name == name).unwrap().holdings.idempotency)
    };
    assert_eq!(records(&rt), [0, 0, 0], "every record derived: from the claims, then from the windows");

    // A producer publishes an event with the first validated event's key.
    let mut forged = order("o-forged", "EUR");
    forged.topic = "orders.order.validated".into();
    forged.idempotency_key = validated[0].idempotency_key.clone();
    assert!(!rt.publish_blocking(vec![forged]).unwrap()[0].duplicate, "ingest has not seen the key");
    assert!(rt.wait_idle(IDLE));
    let stats = rt.status().unwrap().into_iter().find(|s| s.name == "enrich/enricher").unwrap().stats;
    assert_eq!((stats.handled, stats.duplicates), (100, 1), "the forged key is a duplicate");
    assert_eq!(by_topic(&log(&rt), "orders.order.enriched").len(), 100);
    rt.shutdown().unwrap();

    // After a restart nothing is handled again.
    let rt = Runtime::start(&config(dir.path(), FAN_OUT)).unwrap();
    assert!(rt.publish_blocking(orders()).unwrap().iter().all(|p| p.duplicate));
    assert!(rt.wait_idle(IDLE));
    for name in ["orders/validator", "orders/audit", "enrich/enricher"] {
        assert_eq!(rt.counters(name).unwrap().invocations, 0, "{name} handled nothing again");
    }
    assert_eq!(records(&rt), [0, 0, 0]);
    rt.shutdown().unwrap();
}

/// A handler is given an event's headers but the host's bookkeeping: the
/// audit logger, watching the validator's host-keyed emits, sees their
/// `weir-plugin-version` and not their `weir-key-window`, which is in the
/// log (docs/abi.md, reserved headers).
#[test]
fn a_handler_is_not_given_the_hosts_bookkeeping_headers() {
    let dir = tempfile::tempdir().unwrap();
    let toml = format!(
        "{FAN_OUT}\n[[pipelines]]\nname = \"watch\"\ntopics = [\"orders.order.validated\"]\n\
         [[pipelines.handlers]]\nname = \"audit\"\nplugin = \"{{AUDIT_LOGGER}}\"\n"
    );
    let rt = Runtime::start(&config(dir.path(), &toml)).unwrap();
    rt.publish_blocking((0..5).map(|i| order(&format!("o-{i}"), "EUR")).collect()).unwrap();
    assert!(rt.wait_idle(IDLE));
    let events = log(&rt);
    let validated = by_topic(&events, "orders.order.validated");
    assert_eq!(validated.len(), 5);
    assert!(validated.iter().all(|v| v.header(weir_runtime::HOST_KEY_HEADER).is_some()), "stored with the window");
    let ids: Vec<String> = validated.iter().map(|v| v.id.to_string()).collect();
    let mut seen = 0;
    for audit in by_topic(&events, "audit.event.recorded") {
        let record: Value = serde_json::from_slice(&audit.payload).unwrap();
        if !ids.iter().any(|id| record["event_id"] == id.as_str()) {
            continue;
        }
        seen += 1;
        let names: Vec<&str> = record["headers"].as_array().unwrap().iter().map(|n| n.as_str().unwrap()).collect();
        assert!(names.contains(&weir_runtime::VERSION_HEADER), "{names:?}");
        assert!(!names.contains(&weir_runtime::HOST_KEY_HEADER), "{names:?}");
    }
    assert_eq!(seen, 5, "the watcher audited every validated event");
    rt.shutdown().unwrap();
}

#[test]
fn a_republished_producer_key_is_stored_once() {
    let dir = tempfile::tempdir().unwrap();
    let rt = Runtime::start(&config(dir.path(), FAN_OUT)).unwrap();
    let mut first = order("o-1", "EUR");
    first.idempotency_key = "producer-key-1".into();
    let mut again = order("o-1", "EUR");
    again.idempotency_key = "producer-key-1".into();
    let a = rt.publish_blocking(vec![first.clone()]).unwrap();
    let b = rt.publish_blocking(vec![again]).unwrap();
    assert!(!a[0].duplicate);
    assert!(b[0].duplicate);
    assert_eq!(b[0].id, first.id, "the original id comes back");
    assert!(rt.wait_idle(IDLE));
    assert_eq!(by_topic(&log(&rt), "orders.order.created").len(), 1);
    rt.shutdown().unwrap();
}

#[test]
fn retry_then_success_and_exhausted_retries_dead_letter_with_metadata() {
    let dir = tempfile::tempdir().unwrap();
    let toml = r#"
[[pipelines]]
name = "flaky"
topics = ["jobs.job.started"]
[[pipelines.handlers]]
name = "worker"
plugin = "{FLAKY}"
config = { succeed_on_attempt = 3 }
retry = { max_attempts = 4, initial_backoff = "10ms", max_backoff = "40ms" }
"#;
    let rt = Runtime::start(&config(dir.path(), toml)).unwrap();
    let ok = event(r#"{"topic":"jobs.job.started","key":"fine"}"#);
    let stuck = event(r#"{"topic":"jobs.job.started","key":"always-retry"}"#);
    rt.publish_blocking(vec![ok.clone(), stuck.clone()]).unwrap();
    assert!(rt.wait_idle(IDLE));

    let handled = by_topic(&log(&rt), "flaky.event.handled").into_iter().cloned().collect::<Vec<_>>();
    assert_eq!(handled.len(), 1);
    let payload: Value = serde_json::from_slice(&handled[0].payload).unwrap();
    assert_eq!(payload["attempt"], 3, "handled on the third attempt");

    let dlq = rt.dlq(&DlqFilter::default()).unwrap();
    assert_eq!(dlq.len(), 1);
    let entry = &dlq[0];
    assert_eq!(entry.event, stuck);
    assert_eq!(entry.subscription, "flaky/worker");
    assert_eq!(entry.code, "handler_retry");
    assert_eq!(entry.attempts, 4);
    assert_eq!(entry.plugin, "flaky");
    assert_eq!(entry.plugin_version.len(), 64);
    assert!(entry.message.contains("dependency unavailable (attempt 4)"));
    assert!(entry.first_failure_ms < entry.last_failure_ms);
    let stats = &rt.status().unwrap()[0].stats;
    assert_eq!(stats.retries, 2 + 3);
    rt.shutdown().unwrap();
}

#[test]
fn a_reject_dead_letters_at_once_and_a_fixed_handler_handles_the_redrive_once() {
    let dir = tempfile::tempdir().unwrap();
    let rt = Runtime::start(&config(dir.path(), FAN_OUT)).unwrap();
    rt.publish_blocking(vec![order("o-1", "EUR"), order("o-2", "DOGE"), order("o-3", "DOGE")]).unwrap();
    assert!(rt.wait_idle(IDLE));
    let dlq = rt.dlq(&DlqFilter { code: Some("handler_reject".into()), ..DlqFilter::default() }).unwrap();
    assert_eq!(dlq.len(), 2);
    assert!(dlq.iter().all(|e| e.attempts == 1 && e.subscription == "orders/validator"));
    assert!(dlq[0].message.contains("DOGE"));
    rt.shutdown().unwrap();

    // The fix: accept DOGE. Restart with it and redrive everything.
    let fixed = FAN_OUT.replace(
        "plugin = \"{ORDER_VALIDATOR}\"",
        "plugin = \"{ORDER_VALIDATOR}\"\nconfig = { currencies = [\"EUR\", \"DOGE\"] }",
    );
    let rt = Runtime::start(&config(dir.path(), &fixed)).unwrap();
    let report = rt.redrive(&DlqFilter::default()).unwrap();
    assert_eq!(report.redriven, 2);
    // A second redrive finds nothing: redrive is idempotent.
    assert_eq!(rt.redrive(&DlqFilter::default()).unwrap().redriven, 0);
    assert!(rt.wait_idle(IDLE));
    assert!(rt.dlq(&DlqFilter::default()).unwrap().is_empty());
    let all = log(&rt);
    let validated = by_topic(&all, "orders.order.validated");
    assert_eq!(validated.len(), 3, "each order validated exactly once");
    assert_eq!(by_topic(&all, "orders.order.enriched").len(), 3);
    assert_eq!(by_topic(&all, "audit.event.recorded").len(), 3, "the audit subscription was not disturbed");
    rt.shutdown().unwrap();
}

#[test]
fn a_retrying_event_holds_back_its_key_but_not_other_keys_or_subscriptions() {
    let dir = tempfile::tempdir().unwrap();
    let toml = r#"
[[pipelines]]
name = "jobs"
topics = ["jobs.job.started"]
[[pipelines.handlers]]
name = "flaky"
plugin = "{FLAKY}"
config = { succeed_on_attempt = 3 }
retry = { max_attempts = 5, initial_backoff = "1s", multiplier = 1.0, jitter = 0.0 }
[[pipelines.handlers]]
name = "audit"
plugin = "{AUDIT_LOGGER}"
"#;
    let rt = Runtime::start(&config(dir.path(), toml)).unwrap();
    // Key "k" retries twice (≥ 2 s) before its first event is handled; its
    // second event must come after it.
    let k1 = event(r#"{"topic":"jobs.job.started","key":"k","payload":1}"#);
    let k2 = event(r#"{"topic":"jobs.job.started","key":"k","payload":2}"#);
    rt.publish_blocking(vec![k1.clone(), k2.clone()]).unwrap();
    // The other subscription is not held up by the retries: it handles both
    // events while the flaky one has handled none.
    let handled = |name: &str| rt.counters(name).unwrap().handled;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while handled("jobs/audit") < 2 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(handled("jobs/audit"), 2);
    assert_eq!(handled("jobs/flaky"), 0, "still retrying its first event");
    assert!(rt.wait_idle(IDLE));
    let handled: Vec<Event> = by_topic(&log(&rt), "flaky.event.handled").into_iter().cloned().collect();
    let order: Vec<_> = handled.iter().map(|e| e.causation_id.unwrap()).collect();
    assert_eq!(order, vec![k1.id, k2.id], "per-key order kept");
    rt.shutdown().unwrap();
}

#[test]
fn keys_expire_after_the_retention_window_and_are_collected() {
    let dir = tempfile::tempdir().unwrap();
    let toml = format!("[idempotency]\nretention = \"1s\"\n{FAN_OUT}");
    let rt = Runtime::start(&config(dir.path(), &toml)).unwrap();
    let mut first = order("o-1", "EUR");
    first.idempotency_key = "k1".into();
    assert!(!rt.publish_blocking(vec![first]).unwrap()[0].duplicate);
    let mut within = order("o-1", "EUR");
    within.idempotency_key = "k1".into();
    assert!(rt.publish_blocking(vec![within]).unwrap()[0].duplicate, "inside the window: a duplicate");
    assert!(rt.wait_idle(IDLE));
    // Past the window (and a collection pass or two), the key is new again,
    // and the subscriptions' records for it are gone too.
    std::thread::sleep(Duration::from_millis(2_500));
    let mut later = order("o-1", "EUR");
    later.idempotency_key = "k1".into();
    assert!(!rt.publish_blocking(vec![later]).unwrap()[0].duplicate, "after the window: stored again");
    assert!(rt.wait_idle(IDLE));
    assert_eq!(by_topic(&log(&rt), "orders.order.created").len(), 2);
    assert_eq!(by_topic(&log(&rt), "audit.event.recorded").len(), 2, "handled again once its record expired");
    // Wait out the window once more: the collector empties both indexes.
    std::thread::sleep(Duration::from_millis(2_500));
    rt.store().sync().unwrap();
    let sizes: HashMap<&str, u64> = rt.store().table_sizes().unwrap().into_iter().collect();
    assert_eq!(sizes["ingest_dedup"], 0, "{sizes:?}");
    assert_eq!(sizes["idempotency"], 0, "{sizes:?}");
    assert!(sizes["log"] >= 6, "the log itself is kept: {sizes:?}");
    rt.shutdown().unwrap();
}

#[test]
fn sandbox_failures_retry_then_dead_letter_while_other_keys_flow() {
    let dir = tempfile::tempdir().unwrap();
    let toml = r#"
[[pipelines]]
name = "risky"
topics = ["jobs.job.started"]
[[pipelines.handlers]]
name = "panicker"
plugin = "{PANICKER}"
retry = { max_attempts = 3, initial_backoff = "10ms" }
[[pipelines.handlers]]
name = "looper"
plugin = "{LOOPER}"
limits = { deadline = "50ms" }
retry = { max_attempts = 2, initial_backoff = "10ms" }
"#;
    let rt = Runtime::start(&config(dir.path(), toml)).unwrap();
    let events: Vec<Event> = ["evil", "fine", "other"]
        .iter()
        .map(|k| event(&format!(r#"{{"topic":"jobs.job.started","key":"{k}"}}"#)))
        .collect();
    rt.publish_blocking(events).unwrap();
    assert!(rt.wait_idle(IDLE));
    let dlq = rt.dlq(&DlqFilter::default()).unwrap();
    let codes: Vec<(&str, &str, u32)> =
        dlq.iter().map(|e| (e.subscription.as_str(), e.code.as_str(), e.attempts)).collect();
    assert_eq!(codes, vec![("risky/looper", "timeout", 2), ("risky/panicker", "trap", 3)]);
    assert!(dlq[1].message.contains("evil event"), "{}", dlq[1].message);
    // The other keys were handled by both subscriptions.
    let status = rt.status().unwrap();
    assert!(status.iter().all(|s| s.stats.handled == 2), "{status:?}");
    rt.shutdown().unwrap();
}

/// A poison order: no items, so the validator rejects it (to the DLQ).
fn poison(i: usize) -> Event {
    event(
        &json!({ "topic": "orders.order.created", "key": format!("p-{i}"),
                   "payload": { "order_id": format!("p-{i}"), "items": [] } })
        .to_string(),
    )
}

/// The DLQ is read a page at a time, each page after the last entry of
/// the one before, and an entry is looked up by its key.
#[test]
fn the_dlq_is_read_page_by_page_and_an_entry_by_its_key() {
    let dir = tempfile::tempdir().unwrap();
    let rt = Runtime::start(&config(dir.path(), weir_tests::ORDERS)).unwrap();
    rt.publish_blocking((0..25).map(poison).collect()).unwrap();
    assert!(rt.wait_idle(IDLE));
    let all = rt.dlq(&DlqFilter::default()).unwrap();
    assert_eq!(all.len(), 25);

    for filter in
        [DlqFilter::default(), DlqFilter { subscription: Some("orders/validator".into()), ..DlqFilter::default() }]
    {
        let mut seen = Vec::new();
        let mut after: Option<(String, u64)> = None;
        let mut pages = 0;
        loop {
            let (page, next) = rt.dlq_page(&filter, after.as_ref().map(|(s, q)| (s.as_str(), *q)), 10).unwrap();
            pages += 1;
            assert!(page.len() <= 10);
            seen.extend(page.iter().map(|e| (e.subscription.clone(), e.seq)));
            match next {
                Some(next) => {
                    assert_eq!(Some(&next), seen.last(), "a page continues after its last entry");
                    after = Some(next);
                }
                None => break,
            }
        }
        assert_eq!(pages, 3, "10 + 10 + 5");
        let expected: Vec<(String, u64)> = all.iter().map(|e| (e.subscription.clone(), e.seq)).collect();
        assert_eq!(seen, expected, "every entry once, in key order");
    }
    // A page exactly as long as what is left says there is no more.
    let (page, next) = rt.dlq_page(&DlqFilter::default(), None, 25).unwrap();
    assert_eq!((page.len(), next), (25, None));

    let entry = &all[7];
    assert_eq!(rt.dlq_entry(&entry.subscription, entry.seq).unwrap().as_ref(), Some(entry));
    assert_eq!(rt.dlq_entry(&entry.subscription, u64::MAX).unwrap(), None);
    assert_eq!(rt.dlq_entry("orders/audit", entry.seq).unwrap(), None);
    rt.shutdown().unwrap();
}

/// Over HTTP: `GET /v1/dlq` answers a bounded page with `next`, refuses a
/// page size out of range, and `weir dlq list` follows the pages (or stops
/// at `--limit`).
#[test]
fn the_dlq_list_api_and_the_cli_page() {
    let dir = tempfile::tempdir().unwrap();
    let server = weir_tests::Server::start(dir.path(), weir_tests::ORDERS);
    let events: Vec<Value> = (0..25)
        .map(|i| {
            json!({ "topic": "orders.order.created", "key": format!("p-{i}"),
                         "payload": { "order_id": format!("p-{i}"), "items": [] } })
        })
        .collect();
    let (status, body) = server.post("/v1/events", &json!(events));
    assert_eq!(status, 200, "{body}");
    assert!(server.wait_idle(IDLE));

    let (status, first) = server.get("/v1/dlq?limit=10");
    assert_eq!(status, 200, "{first}");
    assert_eq!(first["entries"].as_array().unwrap().len(), 10);
    let next = first["next"].as_str().unwrap().to_owned();
    let last = &first["entries"][9];
    assert_eq!(next, format!("{}/{}", last["subscription"].as_str().unwrap(), last["seq"]));
    let (_, second) = server.get(&format!("/v1/dlq?limit=20&after={}", next.replace('/', "%2F")));
    assert_eq!(second["entries"].as_array().unwrap().len(), 15);
    assert!(second.get("next").is_none(), "{second}");
    // By default one page of at most 100 entries.
    let (_, all) = server.get("/v1/dlq");
    assert_eq!(all["entries"].as_array().unwrap().len(), 25);
    for bad in ["limit=0", "limit=1001", "after=nonsense", "after=orders%2Fvalidator%2Fx"] {
        let (status, answer) = server.get(&format!("/v1/dlq?{bad}"));
        assert_eq!((status, answer["error"]["code"].as_str()), (400, Some("invalid_query")), "{bad}: {answer}");
    }
    // The detail of one entry.
    let seq = last["seq"].as_u64().unwrap();
    let (status, detail) = server.get(&format!("/v1/dlq/orders/validator/{seq}"));
    assert_eq!((status, detail["seq"].as_u64()), (200, Some(seq)), "{detail}");
    let (status, _) = server.get("/v1/dlq/orders/validator/999999");
    assert_eq!(status, 404);

    let list = |extra: &[&str]| -> Vec<Value> {
        let mut args = vec!["dlq", "list", "--json", "--server", server.url.as_str()];
        args.extend_from_slice(extra);
        let out = weir_tests::weir(&args, dir.path());
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice::<Vec<Value>>(&out.stdout).unwrap()
    };
    assert_eq!(list(&[]).len(), 25);
    let seven = list(&["--limit", "7"]);
    assert_eq!(seven.len(), 7);
    assert_eq!(seven[6]["seq"], all["entries"][6]["seq"]);
}
