//! The C SDK (`plugin-sdk/c/weir.h`) and the C twin of the order validator
//! (`plugins/c/order_validator.c`), through the checks the Rust plugins
//! pass: the engine, the durable runtime, and the real `weir exec` and
//! `weir inspect`. Where the two validators can be compared, they must
//! agree to the byte. A second C plugin, `plugins/c/decode_probe.c`, runs
//! the SDK's decoder on hostile bytes placed at the very end of linear
//! memory, so that any read out of range traps.
//!
//! tests/build.rs compiles the C plugins with clang. Without clang and lld
//! these tests are ignored by `cargo test`, and fail (never skip) with the
//! reason under `--include-ignored`.

use std::time::Duration;

use rand::{Rng, SeedableRng};
use serde_json::{Value, json};
use weir_abi::encoding::{decode, encode};
use weir_abi::{Delivery, DeliveryRef, Event, EventId, Header, LogLevel};
use weir_runtime::{DlqFilter, IdGenerator, InstanceMode, Invocation, Limits, Runtime};
use weir_tests::{code, config, engine, event, handler, invoke, load, plugins, weir};

const IDLE: Duration = Duration::from_secs(30);

fn built(plugin: Result<&'static str, &'static str>) -> &'static str {
    plugin.unwrap_or_else(|why| panic!("the C plugins were not built: {why}"))
}

fn c_validator() -> &'static str {
    built(plugins::C_ORDER_VALIDATOR)
}

fn c_probe() -> &'static str {
    built(plugins::C_DECODE_PROBE)
}

fn order(id: &str, currency: &str, items: Value) -> Event {
    event(
        &json!({ "topic": "orders.order.created", "key": id,
                 "payload": { "order_id": id, "customer": "c-1", "currency": currency, "items": items } })
        .to_string(),
    )
}

/// An `orders.order.created` event with exactly these payload bytes.
fn with_payload(bytes: &[u8]) -> Event {
    let mut e = event(r#"{"topic":"orders.order.created","key":"k-1"}"#);
    e.payload = bytes.to_vec();
    e
}

/// The message of a failed invocation.
fn reason(inv: &Invocation) -> String {
    inv.result.as_ref().err().map(|e| e.message().to_owned()).unwrap_or_default()
}

/// Invoke both validators on `event` and require the same answer: the same
/// code, and the same emits and logs, or the same reason. Reasons about
/// malformed JSON are worded by each JSON reader, so only their prefix must
/// agree. Returns the code.
fn same_answer(rust: &mut weir_runtime::Handler, c: &mut weir_runtime::Handler, event: &Event) -> &'static str {
    let r = invoke(rust, event);
    let k = invoke(c, event);
    let payload = String::from_utf8_lossy(&event.payload).into_owned();
    assert_eq!(code(&k), code(&r), "payload {payload}: C said {:?}, Rust {:?}", k.result, r.result);
    match (&r.result, &k.result) {
        (Ok(rust_emits), Ok(c_emits)) => {
            assert_eq!(c_emits, rust_emits, "payload {payload}");
            let lines = |inv: &Invocation| inv.logs.iter().map(|l| (l.level, l.message.clone())).collect::<Vec<_>>();
            assert_eq!(lines(&k), lines(&r), "payload {payload}");
        }
        _ if reason(&r).starts_with("invalid JSON payload: ") => {
            assert!(reason(&k).starts_with("invalid JSON payload: "), "payload {payload}: {}", reason(&k));
        }
        _ => assert_eq!(reason(&k), reason(&r), "payload {payload}"),
    }
    code(&r)
}

#[test]
#[ignore = "needs clang and lld (Debian packages clang, lld)"]
fn the_c_validator_loads_and_describes_itself() {
    let engine = engine();
    let plugin = load(&engine, c_validator());
    let info = plugin.info();
    let description = info.description.as_ref().expect("WEIR_DESCRIBE exports weir_describe");
    assert_eq!(description.name, "order-validator-c");
    assert_eq!(description.version, "0.1.0");
    assert_eq!(description.topics, vec!["orders.order.created"]);
    assert_eq!(description.schema_versions, vec![1]);
    assert!(info.has_init);
    assert_eq!(info.abi_version, 1);
    let imports: Vec<String> = info.imports.iter().map(|i| format!("{}::{} {}", i.module, i.name, i.ty)).collect();
    assert_eq!(imports, ["weir::log func(i32, i32, i32)"]);
}

#[test]
#[ignore = "needs clang and lld (Debian packages clang, lld)"]
fn the_c_validator_answers_as_the_rust_one_does_to_the_byte() {
    let engine = engine();
    let mut rust = handler(&engine, plugins::ORDER_VALIDATOR, Limits::default());
    let mut c = handler(&engine, c_validator(), Limits::default());
    let item = |sku: &str, qty: u64, price: u64| json!({ "sku": sku, "qty": qty, "price_cents": price });
    let payloads: Vec<Value> = vec![
        json!({ "order_id": "o-1", "customer": "c-9", "currency": "EUR", "items": [item("a", 2, 150), item("b", 1, 5)] }),
        // Escapes and non-ASCII text come back escaped as serde_json does it.
        json!({ "order_id": "o-\"2\"\\/\n\t\u{1}\u{7f}", "customer": "Zoë 🦀 \u{2028}", "currency": "GBP",
                "items": [item("é", 1, 1)] }),
        json!({ "order_id": "o-3", "customer": "c", "currency": "USD", "items": [item("a", 1, 99)],
                "note": { "nested": [1, 2.5e3, -0.5, true, false, null, "x", { "y": [] }] } }),
        json!({ "order_id": "o-4", "customer": "c", "currency": "EUR", "items": [] }),
        json!({ "order_id": "o-5", "customer": "c", "currency": "DOGE", "items": [item("a", 1, 1)] }),
        json!({ "order_id": "o-6", "customer": "c", "currency": "EU\"R", "items": [item("a", 1, 1)] }),
        json!({ "order_id": "o-7", "customer": "c", "currency": "EUR", "items": [item("a", 1, 1), item("zero \"q\"", 0, 5)] }),
        json!({ "order_id": "o-8", "customer": "c", "currency": "EUR", "items": [item("a", 2, u64::MAX / 2 + 1)] }),
        json!({ "order_id": "o-9", "customer": "c", "currency": "EUR", "items": [item("a", 1, u64::MAX), item("b", 1, 1)] }),
        json!({ "order_id": "o-10", "customer": "c", "currency": "EUR", "items": [item("a", 1, 100_000_001)] }),
        json!({ "order_id": "o-11", "customer": "c", "currency": "EUR", "items": [item("a", 1, 100_000_000)] }),
        // The first failing item decides, as in the Rust loop.
        json!({ "order_id": "o-12", "customer": "c", "currency": "EUR", "items": [item("a", 2, u64::MAX), item("b", 0, 1)] }),
        json!({ "order_id": "", "customer": "c", "currency": "EUR", "items": [] }),
        json!({ "order_id": " \t\n\u{3000}\u{a0}", "customer": "c", "currency": "EUR", "items": [] }),
        json!({ "order_id": "\u{200b}", "customer": "c", "currency": "EUR", "items": [item("a", 1, 1)] }),
        // Malformed orders: wrong types, missing fields, numbers out of range.
        json!({ "order_id": "o-13", "customer": "c", "currency": "EUR" }),
        json!({ "order_id": 13, "customer": "c", "currency": "EUR", "items": [] }),
        json!({ "order_id": "o-14", "customer": "c", "currency": "EUR", "items": [{ "sku": "a", "qty": -1, "price_cents": 1 }] }),
        json!({ "order_id": "o-15", "customer": "c", "currency": "EUR", "items": [{ "sku": "a", "qty": 4_294_967_296u64, "price_cents": 1 }] }),
        json!({ "order_id": "o-16", "customer": "c", "currency": "EUR", "items": [{ "sku": "a", "qty": 1.5, "price_cents": 1 }] }),
        json!({ "order_id": "o-17", "customer": "c", "currency": "EUR", "items": [{ "sku": "a", "qty": 1 }] }),
        json!("this is not an order"),
        json!(null),
    ];
    let mut seen = std::collections::BTreeMap::new();
    for payload in &payloads {
        let code = same_answer(&mut rust, &mut c, &with_payload(payload.to_string().as_bytes()));
        *seen.entry(code).or_insert(0) += 1;
    }
    // Raw texts serde_json would never write.
    let raw: [&[u8]; 9] = [
        br#"{"order_id":"o-\u0031\ud83e\udd80","customer":"c","currency":"\u0045UR","items":[{"sku":"a","qty":1,"price_cents":7}]}"#,
        b" {\"order_id\" : \"o-1\" ,\r\n\t\"customer\":\"c\",\"currency\":\"EUR\",\"items\":[ {\"sku\":\"a\",\"qty\":0,\"price_cents\":0} ] } ",
        br#"{"order_id":"o-1","customer":"c","currency":"EUR","items":[{"sku":"a","qty":1e0,"price_cents":1}]}"#,
        br#"{"order_id":"o-1","order_id":"o-2","customer":"c","currency":"EUR","items":[]}"#,
        br#"{"order_id":"o-1","customer":"c","currency":"EUR","items":[]} x"#,
        br#"{"order_id":"o-1","customer":"c","currency":"EUR","items":[],}"#,
        br#"{"order_id":"\ud800","customer":"c","currency":"EUR","items":[]}"#,
        b"{\"order_id\":\"o-\xff\",\"customer\":\"c\",\"currency\":\"EUR\",\"items\":[]}",
        b"",
    ];
    for payload in raw {
        let code = same_answer(&mut rust, &mut c, &with_payload(payload));
        *seen.entry(code).or_insert(0) += 1;
    }
    assert_eq!(seen.get("ok"), Some(&6), "{seen:?}");
    assert_eq!(seen.get("handler_reject"), Some(&26), "{seen:?}");

    // Configured: DOGE accepted, and a limit of u64::MAX, so that the
    // largest exact product (2^32 - 1) * (2^32 + 1) = 2^64 - 1 passes, and
    // one more overflows (the C side multiplies through weir.h's __multi3).
    let config = br#"{"currencies":["DOGE","EUR"],"max_total_cents":18446744073709551615}"#.to_vec();
    let mut rust = load(&engine, plugins::ORDER_VALIDATOR)
        .handler(Limits::default(), config.clone(), InstanceMode::Reuse)
        .unwrap();
    let mut c = load(&engine, c_validator()).handler(Limits::default(), config, InstanceMode::Reuse).unwrap();
    let edge =
        |price: u64| order("o-big", "DOGE", json!([{ "sku": "a", "qty": 4_294_967_295u64, "price_cents": price }]));
    assert_eq!(same_answer(&mut rust, &mut c, &edge(4_294_967_297)), "ok");
    assert_eq!(same_answer(&mut rust, &mut c, &edge(4_294_967_298)), "handler_reject");
    assert_eq!(
        same_answer(&mut rust, &mut c, &order("o-g", "GBP", json!([{ "sku": "a", "qty": 1, "price_cents": 1 }]))),
        "handler_reject"
    );
    let out = invoke(&mut c, &edge(4_294_967_297)).result.unwrap();
    let validated: Value = serde_json::from_slice(&out[0].payload).unwrap();
    assert_eq!(validated["total_cents"], json!(u64::MAX));
}

#[test]
#[ignore = "needs clang and lld (Debian packages clang, lld)"]
fn the_c_validator_feeds_the_rust_enricher_and_filter() {
    let engine = engine();
    let ids = IdGenerator::new();
    let mut validator = handler(&engine, c_validator(), Limits::default());
    let mut enricher = load(&engine, plugins::ENRICHER)
        .handler(Limits::default(), br#"{"vat_percent": 25}"#.to_vec(), InstanceMode::Reuse)
        .unwrap();
    let mut filter = handler(&engine, plugins::FILTER, Limits::default());

    let created = order("o-1", "EUR", json!([{ "sku": "a", "qty": 5, "price_cents": 2_500 }]));
    let inv = invoke(&mut validator, &created);
    assert_eq!(inv.logs.len(), 1);
    assert_eq!(inv.logs[0].level, LogLevel::Debug);
    assert_eq!(inv.logs[0].message, "order o-1 valid, total 12500");
    let validated = inv.result.unwrap();
    assert_eq!(validated.len(), 1);
    let emit = &validated[0];
    assert_eq!(emit.topic, "orders.order.validated");
    assert_eq!(emit.key.as_deref(), Some("o-1"));
    assert_eq!(emit.schema_version, 1);
    assert_eq!(emit.content_type, "application/json");
    assert!(emit.headers.is_empty());
    assert_eq!(emit.idempotency_key, None);
    assert_eq!(emit.causation_id, Some(created.id));
    assert_eq!(emit.correlation_id, Some(created.id));
    let payload: Value = serde_json::from_slice(&emit.payload).unwrap();
    assert_eq!(
        payload,
        json!({ "order_id": "o-1", "customer": "c-1", "total_cents": 12_500, "currency": "EUR", "item_count": 1 })
    );

    let validated = Event {
        id: ids.next_id(),
        topic: emit.topic.clone(),
        source: "weir:test".into(),
        key: emit.key.clone(),
        schema_version: emit.schema_version,
        time: 0,
        content_type: emit.content_type.clone(),
        headers: emit.headers.clone(),
        idempotency_key: String::new(),
        correlation_id: emit.correlation_id,
        causation_id: emit.causation_id,
        payload: emit.payload.clone(),
    };
    let enriched = invoke(&mut enricher, &validated).result.unwrap();
    let payload: Value = serde_json::from_slice(&enriched[0].payload).unwrap();
    assert_eq!(payload["tier"], "large");
    assert_eq!(payload["vat_cents"], 2_500, "25% VAT included in 12,500");
    assert_eq!(enriched[0].correlation_id, Some(created.id), "correlation runs through the whole flow");
    let mut enriched_event = validated.clone();
    enriched_event.topic = enriched[0].topic.clone();
    enriched_event.payload = enriched[0].payload.clone();
    let passed = invoke(&mut filter, &enriched_event).result.unwrap();
    assert_eq!(passed.len(), 1);
    assert_eq!(passed[0].topic, "orders.order.large");
}

#[test]
#[ignore = "needs clang and lld (Debian packages clang, lld)"]
fn the_c_validators_rejections_carry_the_reason() {
    let engine = engine();
    let mut validator = handler(&engine, c_validator(), Limits::default());
    let cases = [
        (order("o-2", "EUR", json!([])), "order o-2 has no items"),
        (
            order("o-3", "XYZ", json!([{ "sku": "a", "qty": 1, "price_cents": 1 }])),
            "order o-3: currency \"XYZ\" is not accepted (accepted: EUR, USD, GBP)",
        ),
        (event(r#"{"topic":"orders.order.created","payload":[1,2]}"#), "invalid JSON payload"),
    ];
    for (event, expected) in cases {
        let inv = invoke(&mut validator, &event);
        assert_eq!(code(&inv), "handler_reject");
        assert!(reason(&inv).starts_with(expected), "{expected:?} in {:?}", reason(&inv));
    }
    assert_eq!(validator.instances_started(), 1, "a rejection keeps the instance");
}

#[test]
#[ignore = "needs clang and lld (Debian packages clang, lld)"]
fn configuration_reaches_the_c_plugin_and_a_bad_one_fails_at_load() {
    let engine = engine();
    let plugin = load(&engine, c_validator());
    let doge = order("o-4", "DOGE", json!([{ "sku": "a", "qty": 1, "price_cents": 1 }]));
    let eur = order("o-5", "EUR", json!([{ "sku": "a", "qty": 1, "price_cents": 1 }]));
    for mode in [InstanceMode::Reuse, InstanceMode::FreshPerEvent] {
        let mut only_doge = plugin.handler(Limits::default(), br#"{"currencies": ["DOGE"]}"#.to_vec(), mode).unwrap();
        for _ in 0..3 {
            assert_eq!(code(&invoke(&mut only_doge, &doge)), "ok");
            let inv = invoke(&mut only_doge, &eur);
            assert_eq!(code(&inv), "handler_reject");
            assert!(reason(&inv).ends_with("(accepted: DOGE)"), "{}", reason(&inv));
        }
    }
    let mut capped =
        plugin.handler(Limits::default(), br#"{"max_total_cents": 0}"#.to_vec(), InstanceMode::Reuse).unwrap();
    assert_eq!(reason(&invoke(&mut capped, &eur)), "order o-5: total 1 exceeds the limit 0");

    let refused = |config: &[u8]| {
        let err = plugin.handler(Limits::default(), config.to_vec(), InstanceMode::Reuse).unwrap_err();
        assert_eq!(err.code(), "init_failed", "{err}");
        err.to_string()
    };
    assert!(refused(br#"{"currencies": []}"#).contains("`currencies` must name at least one currency"));
    assert!(refused(b"not json").contains("invalid plugin config"));
    let unknown = refused(br#"{"no_such_key": 1}"#);
    assert!(unknown.contains("unknown field `no_such_key`"), "{unknown}");
    assert!(refused(br#"{"max_total_cents": -1}"#).contains("invalid plugin config"));
    assert!(refused(br#"{"currencies": ["EUR"]} trailing"#).contains("invalid plugin config"));
}

/// A valid order of `items` lines: about 60 bytes of JSON each.
fn big_order(id: &str, items: usize) -> Event {
    let items: Vec<Value> =
        (0..items).map(|i| json!({ "sku": format!("sku-{i:06}"), "qty": 1 + i % 3, "price_cents": 10 })).collect();
    order(id, "EUR", Value::Array(items))
}

#[test]
#[ignore = "needs clang and lld (Debian packages clang, lld)"]
fn hostile_payloads_are_rejected_and_never_hurt_the_instance() {
    let engine = engine();
    let mut rust = handler(&engine, plugins::ORDER_VALIDATOR, Limits::default());
    let mut c = handler(&engine, c_validator(), Limits::default());
    let valid = br#"{"order_id":"o-1","customer":"c\u00e9","currency":"EUR","items":[{"sku":"a","qty":2,"price_cents":150}],"x":[1.5e-3,null,{"y":true}]}"#.to_vec();

    // Every proper prefix is malformed.
    for end in 0..valid.len() {
        assert_eq!(same_answer(&mut rust, &mut c, &with_payload(&valid[..end])), "handler_reject", "prefix {end}");
    }
    assert_eq!(same_answer(&mut rust, &mut c, &with_payload(&valid)), "ok");

    // Nesting far past the limit of 128, in a field the validator skips.
    for depth in [127, 200, 100_000] {
        let deep = format!(
            r#"{{"order_id":"o-1","customer":"c","currency":"EUR","items":[],"x":{}{}}}"#,
            "[".repeat(depth),
            "]".repeat(depth)
        );
        same_answer(&mut rust, &mut c, &with_payload(deep.as_bytes()));
    }

    // Random damage: the same answer as serde_json, whatever the bytes.
    let mut rng = rand::rngs::StdRng::seed_from_u64(19);
    let alphabet = b"{}[]\",:0123456789-+.eEtrufalsn \\u\xc3\xa9\xff\x00\n";
    let mut codes = std::collections::BTreeMap::new();
    for _ in 0..3_000 {
        let mut bytes = valid.clone();
        for _ in 0..rng.random_range(1..4) {
            let at = rng.random_range(0..bytes.len());
            match rng.random_range(0..3) {
                0 => bytes[at] = alphabet[rng.random_range(0..alphabet.len())],
                1 => {
                    bytes.remove(at);
                }
                _ => bytes.insert(at, alphabet[rng.random_range(0..alphabet.len())]),
            }
        }
        *codes.entry(same_answer(&mut rust, &mut c, &with_payload(&bytes))).or_insert(0) += 1;
    }
    assert!(codes.get("handler_reject").is_some_and(|n| *n > 1_000), "{codes:?}");
    assert!(codes.get("ok").is_some_and(|n| *n > 50), "{codes:?}");
    assert_eq!(codes.len(), 2, "only ok and handler_reject: {codes:?}");
    assert_eq!(c.instances_started(), 1, "no answer cost the C plugin its instance");
}

#[test]
#[ignore = "needs clang and lld (Debian packages clang, lld)"]
fn memory_is_reused_across_large_events() {
    let engine = engine();
    // 4 MiB: the C plugin starts at about 1.1 MiB (a 1 MiB stack), and each
    // of these events needs about 260 KiB (a 128 KiB input buffer, a copy
    // of the payload in a 128 KiB block, the output). Anything kept per
    // event would overflow the cap within a dozen of them.
    let mut c = handler(&engine, c_validator(), Limits::builder().memory_bytes(4 << 20).build());
    let mut high_water = 0;
    for i in 0..200 {
        let event = big_order(&format!("o-{i}"), 1_500 + i);
        assert!(event.payload.len() > 65_535, "a 5-byte length prefix");
        let inv = invoke(&mut c, &event);
        assert_eq!(code(&inv), "ok", "event {i}: {:?}", inv.result);
        let validated: Value = serde_json::from_slice(&inv.result.unwrap()[0].payload).unwrap();
        let expected: u64 = (0..1_500 + i as u64).map(|k| (1 + k % 3) * 10).sum();
        assert_eq!(validated["total_cents"], expected);
        assert_eq!(validated["item_count"], 1_500 + i);
        high_water = inv.memory_bytes.unwrap();
    }
    assert!(high_water < 2 << 20, "freed blocks are reused: {high_water} bytes of memory");
    assert_eq!(c.instances_started(), 1);

    // A delivery larger than the cap: weir_alloc answers 0 and the host
    // reports memory_limit; the next event gets a fresh instance.
    let inv = invoke(&mut c, &big_order("o-huge", 80_000));
    assert_eq!(code(&inv), "memory_limit", "{:?}", inv.result);
    assert_eq!(code(&invoke(&mut c, &big_order("o-small", 3))), "ok");
}

fn runtime_orders_config() -> String {
    weir_tests::ORDERS_ENRICHED.replace("{ORDER_VALIDATOR}", c_validator())
}

fn log(rt: &Runtime) -> Vec<Event> {
    rt.store().read_log(0, usize::MAX).unwrap().into_iter().map(|(_, e)| e).collect()
}

fn by_topic<'a>(events: &'a [Event], topic: &str) -> Vec<&'a Event> {
    events.iter().filter(|e| e.topic == topic).collect()
}

#[test]
#[ignore = "needs clang and lld (Debian packages clang, lld)"]
fn the_runtime_fans_out_through_the_c_validator_once_per_event() {
    let dir = tempfile::tempdir().unwrap();
    let rt = Runtime::start(&config(dir.path(), &runtime_orders_config())).unwrap();
    let orders: Vec<Event> = (0..100)
        .map(|i| order(&format!("o-{i}"), "EUR", json!([{ "sku": "a", "qty": 2, "price_cents": 700 }])))
        .collect();
    rt.publish_blocking(orders.clone()).unwrap();
    assert!(rt.wait_idle(IDLE));

    let all = log(&rt);
    let validated = by_topic(&all, "orders.order.validated");
    let enriched = by_topic(&all, "orders.order.enriched");
    assert_eq!(validated.len(), 100);
    assert_eq!(enriched.len(), 100);
    assert_eq!(by_topic(&all, "audit.event.recorded").len(), 100);
    for v in &validated {
        let root = orders.iter().find(|o| Some(o.id) == v.causation_id).expect("validated caused by created");
        assert_eq!(v.correlation_id, Some(root.id));
        assert_eq!(v.key, root.key);
        assert_eq!(v.source, "weir://orders/validator");
        let payload: Value = serde_json::from_slice(&v.payload).unwrap();
        assert_eq!(payload["total_cents"], 1_400);
    }
    for e in &enriched {
        let parent = validated.iter().find(|v| Some(v.id) == e.causation_id).expect("enriched caused by validated");
        assert_eq!(e.correlation_id, parent.correlation_id);
    }
    let status = rt.status().unwrap();
    assert!(status.iter().all(|s| s.lag == 0 && s.parked == 0 && s.dlq == 0), "{status:?}");
    rt.shutdown().unwrap();
}

#[test]
#[ignore = "needs clang and lld (Debian packages clang, lld)"]
fn a_c_rejection_dead_letters_and_a_fixed_config_handles_the_redrive() {
    let dir = tempfile::tempdir().unwrap();
    let item = json!([{ "sku": "a", "qty": 1, "price_cents": 5 }]);
    let rt = Runtime::start(&config(dir.path(), &runtime_orders_config())).unwrap();
    rt.publish_blocking(vec![
        order("o-1", "EUR", item.clone()),
        order("o-2", "DOGE", item.clone()),
        order("o-3", "DOGE", item),
    ])
    .unwrap();
    assert!(rt.wait_idle(IDLE));
    let dlq = rt.dlq(&DlqFilter::default()).unwrap();
    assert_eq!(dlq.len(), 2);
    for entry in &dlq {
        assert_eq!(entry.code, "handler_reject");
        assert_eq!(entry.subscription, "orders/validator");
        assert_eq!(entry.plugin, "order-validator-c");
        assert_eq!(entry.attempts, 1);
        assert!(entry.message.contains("currency \"DOGE\" is not accepted"), "{}", entry.message);
    }
    rt.shutdown().unwrap();

    let fixed = runtime_orders_config().replace(
        &format!("plugin = \"{}\"", c_validator()),
        &format!("plugin = \"{}\"\nconfig = {{ currencies = [\"EUR\", \"DOGE\"] }}", c_validator()),
    );
    let rt = Runtime::start(&config(dir.path(), &fixed)).unwrap();
    assert_eq!(rt.redrive(&DlqFilter::default()).unwrap().redriven, 2);
    assert!(rt.wait_idle(IDLE));
    assert!(rt.dlq(&DlqFilter::default()).unwrap().is_empty());
    let all = log(&rt);
    assert_eq!(by_topic(&all, "orders.order.validated").len(), 3, "each order validated exactly once");
    assert_eq!(by_topic(&all, "orders.order.enriched").len(), 3);
    rt.shutdown().unwrap();
}

fn stdout_lines(out: &std::process::Output) -> Vec<Value> {
    String::from_utf8_lossy(&out.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

#[test]
#[ignore = "needs clang and lld (Debian packages clang, lld)"]
fn weir_exec_and_inspect_run_the_c_plugin_like_the_rust_one() {
    let cache = tempfile::tempdir().unwrap();
    let samples = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../samples/orders.jsonl");
    let samples = samples.to_str().unwrap();
    let run = |plugin: &str| {
        let out = weir(&["exec", "--plugin", plugin, "--input", samples], cache.path());
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "{stderr}");
        assert!(stderr.contains("3 ok, 3 failed, 0 invalid"), "{stderr}");
        stdout_lines(&out)
    };
    let c = run(c_validator());
    let rust = run(plugins::ORDER_VALIDATOR);
    assert_eq!(c.len(), 6);
    assert_eq!(c[0]["outcome"], "ok");
    assert_eq!(c[0]["emits"][0]["topic"], "orders.order.validated");
    assert_eq!(c[0]["emits"][0]["payload"]["total_cents"], 4_695);
    assert_eq!(c[2]["code"], "handler_reject");
    for (c, rust) in c.iter().zip(&rust) {
        for field in ["outcome", "code", "emits", "logs"] {
            let ignore_ids = |v: &Value| {
                let mut v = v.clone();
                for emit in v.as_array_mut().into_iter().flatten() {
                    emit.as_object_mut().unwrap().retain(|k, _| !k.ends_with("_id"));
                }
                v
            };
            assert_eq!(ignore_ids(&c[field]), ignore_ids(&rust[field]), "{field} of line {}", c["line"]);
        }
        if c["reason"] != rust["reason"] {
            assert!(c["reason"].as_str().unwrap().starts_with("invalid JSON payload: "), "{}", c["reason"]);
        }
    }

    let out = weir(&["inspect", c_validator()], cache.path());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    for needle in
        ["abi version:  1", "order-validator-c 0.1.0", "weir::log", "weir_handle", "weir_init", "accepted:     yes"]
    {
        assert!(text.contains(needle), "missing {needle:?} in\n{text}");
    }
    let out = weir(&["exec", "--plugin", c_validator(), "--config", r#"{"currencies":[]}"#], cache.path());
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("at least one currency"));
}

// ---- the SDK's decoder and encoder, through decode_probe.c ----------------

/// A delivery with every field set, and lengths and numbers at the varint
/// boundaries.
fn full_delivery() -> Delivery {
    Delivery {
        event: Event {
            id: "01ARZ3NDEKTSV4RRFFQ69G5FAV".parse().unwrap(),
            topic: "probe.thing.happened".into(),
            source: "weir:test/ü".into(),
            key: Some("k-é-🦀".into()),
            schema_version: 65_536,
            time: -1_795_694_400_000_000_000,
            content_type: "application/x-thing".into(),
            headers: vec![
                Header::new("probe-lookup", "first"),
                Header::new("", ""),
                Header::new("probe-lookup", "second"),
                Header::new("x".repeat(251), "ü".repeat(200)),
            ],
            idempotency_key: "idem-1".into(),
            correlation_id: Some(EventId([0xA5; 16])),
            causation_id: Some(EventId::from_u128(u128::MAX)),
            payload: (0..70_000u32).map(|i| (i % 251) as u8).collect(),
        },
        subscription: "pipe/probe".into(),
        attempt: u32::MAX,
    }
}

fn small_delivery() -> Delivery {
    Delivery {
        event: Event {
            id: EventId([0; 16]),
            topic: "a.b.c".into(),
            source: String::new(),
            key: None,
            schema_version: 250,
            time: i64::MAX,
            content_type: String::new(),
            headers: vec![Header::new("h", "v")],
            idempotency_key: String::new(),
            correlation_id: None,
            causation_id: Some(EventId([7; 16])),
            payload: b"{}".to_vec(),
        },
        subscription: "s".into(),
        attempt: 251,
    }
}

/// Run the probe on `bytes` as the payload of an event.
fn probe(h: &mut weir_runtime::Handler, bytes: &[u8]) -> Invocation {
    let mut carrier = event(r#"{"topic":"probe.bytes.sent"}"#);
    carrier.payload = bytes.to_vec();
    h.invoke(DeliveryRef { event: &carrier, subscription: "probe/carrier", attempt: 1 })
}

#[test]
#[ignore = "needs clang and lld (Debian packages clang, lld)"]
fn the_sdk_decodes_every_field_and_encodes_emits_byte_for_byte() {
    let engine = engine();
    let mut h = handler(&engine, c_probe(), Limits::default());
    for delivery in [full_delivery(), small_delivery()] {
        let bytes = encode(&delivery).unwrap();
        let inv = probe(&mut h, &bytes);
        let emits = inv.result.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(emits.len(), 1);
        let emit = &emits[0];
        let e = &delivery.event;
        assert_eq!(emit.topic, "probe.delivery.decoded");
        assert_eq!(emit.payload, bytes, "decoded, then encoded again with the weir_wire_* functions");
        assert_eq!(emit.key, e.key);
        assert_eq!(emit.schema_version, e.schema_version);
        assert_eq!(emit.content_type, e.content_type);
        let mut headers = e.headers.clone();
        headers.push(Header::new("probe-id-text", e.id.to_string()));
        if let Some(first) = e.header("probe-lookup") {
            headers.push(Header::new("probe-found", first));
        }
        assert_eq!(emit.headers, headers);
        assert_eq!(emit.idempotency_key.as_deref(), Some(e.idempotency_key.as_str()));
        assert_eq!(emit.correlation_id, e.correlation_id);
        assert_eq!(emit.causation_id, e.causation_id);
        assert_eq!(inv.logs.len(), 1);
        assert_eq!(inv.logs[0].level, LogLevel::Info);
        assert_eq!(inv.logs[0].message, format!("probe decoded {} bytes", bytes.len()));
    }
    assert_eq!(full_delivery().event.id.to_string(), "01ARZ3NDEKTSV4RRFFQ69G5FAV");

    let mut retry = small_delivery();
    retry.subscription = "probe/retry".into();
    let inv = probe(&mut h, &encode(&retry).unwrap());
    assert_eq!(code(&inv), "handler_retry");
    assert_eq!(reason(&inv), "asked to retry");
    assert_eq!(h.instances_started(), 1);
}

#[test]
#[ignore = "needs clang and lld (Debian packages clang, lld)"]
fn hostile_deliveries_never_read_out_of_range_and_decode_as_rust_decodes_them() {
    let engine = engine();
    let mut h = handler(&engine, c_probe(), Limits::default());
    let mut small_full = full_delivery();
    small_full.event.payload.truncate(300);
    small_full.event.headers.truncate(3);
    let mut rng = rand::rngs::StdRng::seed_from_u64(3);
    let mut cases: Vec<Vec<u8>> = vec![Vec::new(), vec![0xFF; 64]];
    for delivery in [small_full, small_delivery()] {
        let bytes = encode(&delivery).unwrap();
        // Every truncation, and a byte too many.
        for end in 0..bytes.len() {
            cases.push(bytes[..end].to_vec());
        }
        let mut longer = bytes.clone();
        longer.push(0);
        cases.push(longer);
        // Every byte replaced by values that matter to the encoding.
        for at in 0..bytes.len() {
            for value in [0x00, 0x01, 0x02, 0x80, 0xC0, 0xFA, 0xFB, 0xFC, 0xFD, 0xFE, 0xFF, rng.random()] {
                let mut damaged = bytes.clone();
                damaged[at] = value;
                cases.push(damaged);
            }
        }
        cases.push(bytes);
    }
    // Hand-made: a header count that lies, and a non-shortest varint.
    let mut lie = encode(&small_delivery()).unwrap();
    let count_at = lie.iter().position(|&b| b == b'h').unwrap() - 2;
    assert_eq!(lie[count_at], 1);
    lie.splice(count_at..=count_at, [0xFC, 0xFF, 0xFF, 0xFF, 0x7F]);
    cases.push(lie);
    let mut long_form = encode(&small_delivery()).unwrap();
    long_form.splice(count_at..=count_at, [0xFB, 0x01, 0x00]);
    cases.push(long_form);
    // The u32 fields (schema_version, attempt) in a wider form than the
    // shortest: a u32's 5-byte form (accepted), a u64's 9-byte form (refused).
    let mut wide = small_delivery();
    wide.event.schema_version = 0x000A_BCDE;
    wide.attempt = 0x000A_BCDE;
    let bytes = encode(&wide).unwrap();
    let u32_form = [0xFC, 0xDE, 0xBC, 0x0A, 0x00];
    let at: Vec<usize> = (0..bytes.len() - 4).filter(|&i| bytes[i..i + 5] == u32_form).collect();
    assert_eq!(at.len(), 2, "schema_version and attempt");
    for &i in &at {
        let mut as_u64 = bytes.clone();
        as_u64.splice(i..i + 5, [0xFD, 0xDE, 0xBC, 0x0A, 0, 0, 0, 0, 0]);
        assert!(decode::<Delivery>(&as_u64).is_err());
        cases.push(as_u64);
    }
    let mut small_as_u32 = encode(&small_delivery()).unwrap();
    let last = small_as_u32.len() - 3;
    assert_eq!(small_as_u32[last..], [0xFB, 0xFB, 0x00], "attempt 251");
    small_as_u32.splice(last.., [0xFC, 0xFB, 0, 0, 0]);
    assert!(decode::<Delivery>(&small_as_u32).is_ok());
    cases.push(small_as_u32);

    let (mut decoded, mut refused) = (0, 0);
    for bytes in &cases {
        let inv = probe(&mut h, bytes);
        match decode::<Delivery>(bytes) {
            Ok(delivery) => {
                decoded += 1;
                let emits = inv.result.unwrap_or_else(|e| panic!("Rust decodes {bytes:02x?}, C: {e}"));
                assert_eq!(emits[0].payload, encode(&delivery).unwrap(), "{bytes:02x?}");
            }
            Err(rust) => {
                refused += 1;
                assert_eq!(code(&inv), "handler_reject", "Rust refuses {bytes:02x?} ({rust}), C: {:?}", inv.result);
                assert!(reason(&inv).starts_with("decode: "), "{}", reason(&inv));
            }
        }
    }
    assert!(decoded > 500 && refused > 1_000, "decoded {decoded}, refused {refused}");
    assert_eq!(h.instances_started(), 1, "no case trapped: nothing was read out of range");
}
