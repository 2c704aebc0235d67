//! Upcasters (docs/schemas.md, "Upcasters"): plugins applied at delivery
//! that turn an event of one schema version into the next. Chains 1 → 2 → 3
//! with one-to-many and drop, the log left as it was, a v2-only handler
//! beside v1 and v2 producers, refusal at start and at deploy when no chain
//! reaches what a handler accepts, hot swap, a broken upcaster fixed by a
//! deploy and a redrive (on the real binary), and a hostile upcaster.

use std::time::Duration;

use serde_json::{Value, json};
use weir_abi::Event;
use weir_runtime::{DlqFilter, Runtime};
use weir_tests::{Server, config, event, plugins, weir};

const IDLE: Duration = Duration::from_secs(120);

fn order(idem: &str, key: &str, version: u32, payload: Value) -> Event {
    let mut e = event(
        &json!({ "topic": "orders.order.created", "key": key, "schema_version": version, "payload": payload })
            .to_string(),
    );
    e.idempotency_key = idem.to_owned();
    e
}

/// Every `orders.order.seen` payload, in log order.
fn seen(rt: &Runtime) -> Vec<Value> {
    rt.store()
        .read_log(0, usize::MAX)
        .unwrap()
        .into_iter()
        .filter(|(_, e)| e.topic == "orders.order.seen")
        .map(|(_, e)| serde_json::from_slice(&e.payload).unwrap())
        .collect()
}

/// The stored records of the first `n` log positions, encoded as the store
/// keeps their bodies.
fn stored(rt: &Runtime, n: usize) -> Vec<Vec<u8>> {
    rt.store().read_log(0, n).unwrap().iter().map(|(_, e)| weir_abi::encoding::encode(e).unwrap()).collect()
}

fn chain_config(handler: &str) -> String {
    format!(
        r#"
[[upcasters]]
name = "orders-v2"
topic = "orders.order.created"
from = 1
to = 2
plugin = "{{ORDERS_UPCASTER}}"

[[upcasters]]
name = "orders-v3"
topic = "orders.order.created"
from = 2
to = 3
plugin = "{{ORDERS_SPLITTER}}"

[[pipelines]]
name = "orders"
topics = ["orders.order.created"]
[[pipelines.handlers]]
name = "reader"
plugin = "{{{handler}}}"
retry = {{ max_attempts = 3, initial_backoff = "10ms", jitter = 0.0 }}
"#
    )
}

#[test]
fn a_chain_upcasts_one_to_many_and_drops_and_leaves_the_log_as_it_was() {
    let dir = tempfile::tempdir().unwrap();
    let rt = Runtime::start(&config(dir.path(), &chain_config("ORDERS_V3"))).unwrap();
    let events = vec![
        order("plain", "a", 1, json!({ "id": "plain", "amount": 5 })),
        order("split", "b", 1, json!({ "id": "split", "amount": 6, "split": 3 })),
        order("drop", "c", 1, json!({ "id": "drop", "amount": 7, "drop": true })),
        order("v2", "d", 2, json!({ "id": "v2", "amount": { "value": 1, "currency": "USD" }, "split": 2 })),
        // Its second part fails its first attempt: the retry must not hand
        // the first part to the handler again.
        order("retry", "e", 1, json!({ "id": "retry", "amount": 8, "split": 3, "retry": "2/3" })),
    ];
    let count = events.len();
    rt.publish_blocking(events).unwrap();
    let before = stored(&rt, count);
    assert!(rt.wait_idle(IDLE));

    let seen = seen(&rt);
    let of = |id: &str| -> Vec<&Value> { seen.iter().filter(|s| s["id"] == id).collect() };
    assert!(seen.iter().all(|s| s["version"] == 3), "the handler saw only v3: {seen:?}");
    // One to one keeps the stored identity.
    assert_eq!(of("plain").len(), 1);
    assert_eq!(of("plain")[0]["idempotency_key"], "plain");
    // One to many: each output is its own delivery with its own stable key.
    let parts: Vec<(&str, &str)> =
        of("split").iter().map(|s| (s["part"].as_str().unwrap(), s["idempotency_key"].as_str().unwrap())).collect();
    assert_eq!(parts, vec![("1/3", "split~v3.0"), ("2/3", "split~v3.1"), ("3/3", "split~v3.2")]);
    // Their emits carry the host's key, marked with the window of each
    // output's record, so subscriptions reading them derive their records
    // (docs/guarantees.md, promise 3).
    let log = rt.store().read_log(0, usize::MAX).unwrap();
    let emits: Vec<&Event> =
        log.iter().map(|(_, e)| e).filter(|e| e.idempotency_key.starts_with("split~v3.")).collect();
    assert_eq!(emits.len(), 3, "{emits:?}");
    for e in emits {
        assert!(e.idempotency_key.ends_with("/orders/reader#0"), "{}", e.idempotency_key);
        assert!(e.header(weir_runtime::HOST_KEY_HEADER).is_some(), "{e:?}");
    }
    // Drop: handled, no effect.
    assert!(of("drop").is_empty());
    // A v2 event joins the chain at 2.
    assert_eq!(of("v2").len(), 2);
    // A retried event: every part exactly once.
    let retried: Vec<&str> = of("retry").iter().map(|s| s["part"].as_str().unwrap()).collect();
    assert_eq!(retried, vec!["1/3", "2/3", "3/3"], "no part applied twice");
    assert!(rt.dlq(&DlqFilter::default()).unwrap().is_empty());
    let counters = rt.counters("orders/reader").unwrap();
    assert!(counters.retries >= 1, "the retry happened: {counters:?}");

    // The log holds the events as published, byte for byte.
    assert_eq!(stored(&rt, count), before);
    let versions: Vec<u32> = rt.store().read_log(0, count).unwrap().iter().map(|(_, e)| e.schema_version).collect();
    assert_eq!(versions, vec![1, 1, 1, 2, 1]);
    rt.shutdown().unwrap();
}

#[test]
fn a_v2_only_handler_sees_only_v2_while_v1_and_v2_producers_publish_side_by_side() {
    let dir = tempfile::tempdir().unwrap();
    let toml = r#"
[[upcasters]]
name = "orders-v2"
topic = "orders.order.created"
from = 1
to = 2
plugin = "{ORDERS_UPCASTER}"

[[pipelines]]
name = "orders"
topics = ["orders.order.created"]
[[pipelines.handlers]]
name = "v2"
plugin = "{ORDERS_V2}"
"#;
    let rt = Runtime::start(&config(dir.path(), toml)).unwrap();
    let mut events = Vec::new();
    for i in 0..40u32 {
        let id = format!("o-{i}");
        events.push(if i.is_multiple_of(2) {
            order(&id, &id, 1, json!({ "id": id, "amount": i }))
        } else {
            order(&id, &id, 2, json!({ "id": id, "amount": { "value": i, "currency": "USD" } }))
        });
    }
    rt.publish_blocking(events).unwrap();
    assert!(rt.wait_idle(IDLE));
    let seen = seen(&rt);
    assert_eq!(seen.len(), 40);
    for s in &seen {
        let i: u64 = s["id"].as_str().unwrap()[2..].parse().unwrap();
        assert_eq!(s["version"], 2, "{s}");
        assert_eq!(s["value"].as_f64(), Some(i as f64));
        assert_eq!(s["currency"], if i.is_multiple_of(2) { "EUR" } else { "USD" }, "{s}");
    }
    // A version nothing reaches: dead-lettered, not a crash.
    rt.publish_blocking(vec![order("o-v7", "o-v7", 7, json!({ "id": "o-v7" }))]).unwrap();
    assert!(rt.wait_idle(IDLE));
    let dlq = rt.dlq(&DlqFilter::default()).unwrap();
    assert_eq!(dlq.len(), 1);
    assert_eq!(dlq[0].code, "unsupported_version");
    assert_eq!(dlq[0].event.schema_version, 7);
    assert!(dlq[0].message.contains("version 7") && dlq[0].message.contains("[2]"), "{}", dlq[0].message);
    rt.shutdown().unwrap();
}

#[test]
fn a_handler_no_chain_reaches_is_refused_at_start_and_at_deploy() {
    // No upcaster: v1 events cannot become v2.
    let dir = tempfile::tempdir().unwrap();
    let toml = r#"
[[pipelines]]
name = "orders"
topics = ["orders.>"]
[[pipelines.handlers]]
name = "v2"
plugin = "{ORDERS_V2}"
"#;
    let err = Runtime::start(&config(dir.path(), toml)).unwrap_err();
    assert_eq!(err.code(), "unreachable_version", "{err}");
    let text = err.to_string();
    assert!(text.contains("orders/v2") && text.contains("version 1 of orders.>") && text.contains("[2]"), "{text}");
    assert!(!dir.path().join("data/weir.redb").exists(), "refused before the store was created");

    // A chain that stops short of v3.
    let dir = tempfile::tempdir().unwrap();
    let toml = r#"
[[upcasters]]
name = "orders-v2"
topic = "orders.order.created"
from = 1
to = 2
plugin = "{ORDERS_UPCASTER}"

[[pipelines]]
name = "orders"
topics = ["orders.order.created"]
[[pipelines.handlers]]
name = "v3"
plugin = "{ORDERS_V3}"
"#;
    let err = Runtime::start(&config(dir.path(), toml)).unwrap_err();
    assert_eq!(err.code(), "unreachable_version");
    assert!(err.to_string().contains("1 → 2"), "{err}");

    // At deploy: a handler that accepts anything runs; a v2-only version is
    // refused without an upcaster, and the running version keeps serving.
    let dir = tempfile::tempdir().unwrap();
    let toml = r#"
[[pipelines]]
name = "orders"
topics = ["orders.order.created"]
[[pipelines.handlers]]
name = "h"
plugin = "{AUDIT_LOGGER}"
"#;
    let rt = Runtime::start(&config(dir.path(), toml)).unwrap();
    let module = std::fs::read(plugins::ORDERS_V2).unwrap();
    let err = rt.deploy("orders/h", module.clone(), "test", &[]).unwrap_err();
    assert_eq!(err.code(), "unreachable_version", "{err}");
    assert_eq!(rt.history("orders/h").unwrap().len(), 1, "nothing recorded");
    rt.shutdown().unwrap();

    // With the upcaster, the same deploy goes through.
    let dir = tempfile::tempdir().unwrap();
    let toml = format!(
        "{}\n{toml}",
        r#"
[[upcasters]]
name = "orders-v2"
topic = "orders.order.created"
from = 1
to = 2
plugin = "{ORDERS_UPCASTER}"
"#
    );
    let rt = Runtime::start(&config(dir.path(), &toml)).unwrap();
    assert!(rt.deploy("orders/h", module, "test", &[]).unwrap().changed);
    rt.publish_blocking(vec![order("a", "a", 1, json!({ "id": "a", "amount": 2 }))]).unwrap();
    assert!(rt.wait_idle(IDLE));
    assert_eq!(seen(&rt).len(), 1);
    assert_eq!(seen(&rt)[0]["version"], 2);
    rt.shutdown().unwrap();
}

const BROKEN: &str = r#"
[[upcasters]]
name = "orders"
topic = "orders.order.created"
from = 1
to = 2
plugin = "{BROKEN_UPCASTER}"
limits = { deadline = "200ms" }

[[pipelines]]
name = "orders"
topics = ["orders.order.created"]
[[pipelines.handlers]]
name = "v2"
plugin = "{ORDERS_V2}"
"#;

#[test]
fn an_upcaster_is_hot_swapped_and_a_module_of_other_versions_refused() {
    let dir = tempfile::tempdir().unwrap();
    let rt = Runtime::start(&config(dir.path(), BROKEN)).unwrap();
    rt.publish_blocking(vec![order("a", "a", 1, json!({ "id": "a", "amount": 1 }))]).unwrap();
    assert!(rt.wait_idle(IDLE));
    assert_eq!(rt.dlq(&DlqFilter::default()).unwrap().len(), 1);
    // Not an upcaster, or one of other versions: refused, nothing changes.
    let err = rt.deploy("upcasters/orders", std::fs::read(plugins::ORDERS_V2).unwrap(), "t", &[]).unwrap_err();
    assert_eq!(err.code(), "not_an_upcaster", "{err}");
    let err = rt.deploy("upcasters/orders", std::fs::read(plugins::ORDERS_SPLITTER).unwrap(), "t", &[]).unwrap_err();
    assert_eq!(err.code(), "not_an_upcaster");
    assert!(err.to_string().contains("[2, 3]"), "{err}");
    // The fix, live: the next event is upcast by it.
    let report = rt.deploy("upcasters/orders", std::fs::read(plugins::ORDERS_UPCASTER).unwrap(), "t", &[]).unwrap();
    assert!(report.changed);
    assert_eq!(rt.history("upcasters/orders").unwrap().len(), 2);
    rt.publish_blocking(vec![order("b", "b", 1, json!({ "id": "b", "amount": 2 }))]).unwrap();
    assert!(rt.wait_idle(IDLE));
    let handled = seen(&rt);
    assert_eq!(handled.len(), 1);
    assert_eq!(handled[0]["id"], "b");
    // Rollback: the broken one again.
    rt.rollback("upcasters/orders", None, "t").unwrap();
    rt.publish_blocking(vec![order("c", "c", 1, json!({ "id": "c", "amount": 3 }))]).unwrap();
    assert!(rt.wait_idle(IDLE));
    assert_eq!(rt.dlq(&DlqFilter::default()).unwrap().len(), 2);
    rt.shutdown().unwrap();

    // A restart runs the active version from the registry.
    let rt = Runtime::start(&config(dir.path(), BROKEN)).unwrap();
    rt.deploy("upcasters/orders", std::fs::read(plugins::ORDERS_UPCASTER).unwrap(), "t", &[]).unwrap();
    rt.shutdown().unwrap();
    let rt = Runtime::start(&config(dir.path(), BROKEN)).unwrap();
    rt.publish_blocking(vec![order("d", "d", 1, json!({ "id": "d", "amount": 4 }))]).unwrap();
    assert!(rt.wait_idle(IDLE));
    assert!(seen(&rt).iter().any(|s| s["id"] == "d"), "the deployed fix survived the restart");
    rt.shutdown().unwrap();
}

#[test]
fn a_hostile_upcaster_cannot_hurt_the_host() {
    let dir = tempfile::tempdir().unwrap();
    let toml = format!(
        "{BROKEN}\n{}",
        r#"
[[pipelines]]
name = "audit"
topics = ["orders.order.created"]
[[pipelines.handlers]]
name = "log"
plugin = "{AUDIT_LOGGER}"
"#
    );
    let rt = Runtime::start(&config(dir.path(), &toml)).unwrap();
    let keys = ["loop", "huge", "many", "trap", "plain"];
    let events: Vec<Event> = keys.iter().map(|k| order(k, k, 1, json!({ "id": k, "amount": 1 }))).collect();
    let started = std::time::Instant::now();
    rt.publish_blocking(events).unwrap();
    assert!(rt.wait_idle(IDLE));
    assert!(started.elapsed() < Duration::from_secs(60));
    let dlq = rt.dlq(&DlqFilter { subscription: Some("orders/v2".into()), ..DlqFilter::default() }).unwrap();
    assert_eq!(dlq.len(), keys.len());
    let inner = |key: &str| {
        let entry = dlq.iter().find(|d| d.event.key.as_deref() == Some(key)).unwrap();
        assert_eq!(entry.code, "upcast_failed");
        assert_eq!(entry.attempts, 1, "an upcast failure is final");
        assert!(
            entry.message.starts_with("delivered as version 2: upcaster orders (1 → 2) failed: "),
            "{}",
            entry.message
        );
        entry.message.clone()
    };
    assert!(inner("loop").contains("timeout"));
    assert!(inner("huge").contains("bad_output"));
    assert!(inner("many").contains("bad_output"));
    assert!(inner("trap").contains("trap"));
    assert!(inner("plain").contains("this upcaster is broken"));
    // The other subscription, which takes events as stored, handled all.
    assert_eq!(rt.counters("audit/log").unwrap().handled, keys.len() as u64);
    rt.shutdown().unwrap();
}

#[test]
fn a_broken_upcaster_dead_letters_the_original_and_a_fixed_deploy_and_redrive_handle_it_once() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), BROKEN);
    let orders: Vec<Value> = (0..5)
        .map(|i| {
            json!({ "topic": "orders.order.created", "key": format!("o-{i}"), "idempotency_key": format!("o-{i}"),
                    "schema_version": 1, "payload": { "id": format!("o-{i}"), "amount": i } })
        })
        .collect();
    let (status, body) = server.post("/v1/events", &Value::Array(orders));
    assert_eq!(status, 200, "{body}");
    assert!(server.wait_idle(IDLE));

    let (_, dlq) = server.get("/v1/dlq");
    let entries = dlq["entries"].as_array().unwrap().clone();
    assert_eq!(entries.len(), 5, "{dlq}");
    for entry in &entries {
        assert_eq!(entry["code"], "upcast_failed", "{entry}");
        assert!(entry["message"].as_str().unwrap().contains("delivered as version 2"), "{entry}");
        // The original, as stored.
        let seq = entry["seq"].as_u64().unwrap();
        let (_, detail) = server.get(&format!("/v1/dlq/orders/v2/{seq}"));
        assert_eq!(detail["event"]["schema_version"], 1, "{detail}");
        assert!(detail["event"]["payload"]["amount"].is_number(), "{detail}");
    }

    // Deploy the fix with the CLI, then redrive.
    let cache = dir.path().join("cache");
    let out =
        weir(&["plugin", "deploy", "upcasters/orders", plugins::ORDERS_UPCASTER, "--server", &server.url], &cache);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = weir(&["dlq", "redrive", "--all", "--server", &server.url], &cache);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(server.wait_idle(IDLE));
    let (_, dlq) = server.get("/v1/dlq");
    assert_eq!(dlq["entries"].as_array().unwrap().len(), 0, "{dlq}");

    // Handled once each; a second redrive has nothing to do.
    let out = weir(&["dlq", "redrive", "--all", "--server", &server.url], &cache);
    assert!(out.status.success());
    assert!(server.wait_idle(IDLE));
    let (_, page) = server.get("/v1/log?topics=orders.order.seen&limit=100");
    let seen = page["events"].as_array().unwrap();
    assert_eq!(seen.len(), 5, "{page}");
    let mut ids: Vec<&str> = seen.iter().map(|e| e["event"]["payload"]["id"].as_str().unwrap()).collect();
    ids.sort_unstable();
    assert_eq!(ids, vec!["o-0", "o-1", "o-2", "o-3", "o-4"]);
    assert!(seen.iter().all(|e| e["event"]["payload"]["version"] == 2 && e["event"]["payload"]["currency"] == "EUR"));
}

#[test]
fn inspect_shows_what_a_module_accepts_and_whether_the_config_reaches_it() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let out = weir(&["inspect", plugins::ORDERS_V2, "--json"], &cache);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["accepts"], json!([2]), "{report}");

    let unreachable = dir.path().join("none.toml");
    std::fs::write(
        &unreachable,
        format!("[[pipelines]]\nname = \"o\"\ntopics = [\"orders.order.created\"]\n[[pipelines.handlers]]\nname = \"h\"\nplugin = {:?}\n", plugins::ORDERS_V2),
    )
    .unwrap();
    let out = weir(&["inspect", plugins::ORDERS_V2, "--json", "--config", unreachable.to_str().unwrap()], &cache);
    assert!(!out.status.success());
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["reach"][0]["ok"], false, "{report}");
    assert!(report["reach"][0]["reason"].as_str().unwrap().contains("version 1"), "{report}");

    let reachable = dir.path().join("chain.toml");
    std::fs::write(
        &reachable,
        format!(
            "[[upcasters]]\nname = \"u\"\ntopic = \"orders.order.created\"\nfrom = 1\nto = 2\nplugin = {:?}\n{}",
            plugins::ORDERS_UPCASTER,
            std::fs::read_to_string(&unreachable).unwrap()
        ),
    )
    .unwrap();
    let out = weir(&["inspect", plugins::ORDERS_V2, "--json", "--config", reachable.to_str().unwrap()], &cache);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["reach"][0]["ok"], true, "{report}");
}

#[test]
fn an_upcaster_answering_more_than_max_outputs_fails_the_event_and_nothing_of_it_is_delivered() {
    let dir = tempfile::tempdir().unwrap();
    let toml = chain_config("ORDERS_V3").replace("from = 2\nto = 3\n", "from = 2\nto = 3\nmax_outputs = 2\n");
    assert!(toml.contains("max_outputs = 2"));
    let rt = Runtime::start(&config(dir.path(), &toml)).unwrap();
    rt.publish_blocking(vec![
        order("two", "a", 1, json!({ "id": "two", "amount": 1, "split": 2 })),
        order("three", "b", 1, json!({ "id": "three", "amount": 1, "split": 3 })),
    ])
    .unwrap();
    assert!(rt.wait_idle(IDLE));
    let seen = seen(&rt);
    assert_eq!(seen.iter().filter(|s| s["id"] == "two").count(), 2);
    assert_eq!(seen.iter().filter(|s| s["id"] == "three").count(), 0, "{seen:?}");
    let dlq = rt.dlq(&DlqFilter::default()).unwrap();
    assert_eq!(dlq.len(), 1);
    assert_eq!((dlq[0].code.as_str(), dlq[0].event.idempotency_key.as_str()), ("upcast_failed", "three"));
    assert!(dlq[0].message.contains("3 upcast events, over the cap of 2"), "{}", dlq[0].message);
    assert_eq!(dlq[0].event.schema_version, 1, "the original, as stored");
    rt.shutdown().unwrap();
}

#[test]
fn versions_declared_in_schemas_must_reach_what_a_handler_accepts_too() {
    let dir = tempfile::tempdir().unwrap();
    let upcaster_and_handler = r#"
[[upcasters]]
name = "orders-v2"
topic = "orders.order.created"
from = 1
to = 2
plugin = "{ORDERS_UPCASTER}"

[[pipelines]]
name = "orders"
topics = ["orders.order.created"]
[[pipelines.handlers]]
name = "v2"
plugin = "{ORDERS_V2}"
"#;
    // Versions 1 and 2 declared: both reach 2.
    let declared = |versions: &[u32]| -> String {
        let mut toml = "[[schemas]]\ntopic = \"orders.>\"\ncompatibility = \"none\"\n".to_owned();
        for v in versions {
            toml.push_str(&format!("[[schemas.versions]]\nversion = {v}\n"));
        }
        toml
    };
    let rt = Runtime::start(&config(dir.path(), &format!("{}{upcaster_and_handler}", declared(&[1, 2])))).unwrap();
    rt.shutdown().unwrap();
    // Version 3 declared too: nothing brings it to 2.
    let dir = tempfile::tempdir().unwrap();
    let err =
        Runtime::start(&config(dir.path(), &format!("{}{upcaster_and_handler}", declared(&[1, 2, 3])))).unwrap_err();
    assert_eq!(err.code(), "unreachable_version", "{err}");
    assert!(err.to_string().contains("version 3 of orders.order.created"), "{err}");
}
