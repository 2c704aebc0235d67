//! The example plugins, compiled to Wasm and run by the engine: the same
//! handler code their native unit tests exercise, now across the ABI.

use serde_json::{Value, json};
use weir_abi::{DeliveryRef, Event};
use weir_runtime::{IdGenerator, InstanceMode, Limits};
use weir_tests::{code, engine, event, handler, invoke, load, plugins};

fn order(id: &str, currency: &str, items: Value) -> Event {
    event(
        &json!({ "topic": "orders.order.created", "key": id,
                 "payload": { "order_id": id, "customer": "c-1", "currency": currency, "items": items } })
        .to_string(),
    )
}

/// Turn an emit into the event the log would hold, as the runtime will.
fn as_event(emit: &weir_abi::Emit, ids: &IdGenerator) -> Event {
    Event {
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
    }
}

#[test]
fn validator_enricher_filter_chain_carries_causation_and_correlation() {
    let engine = engine();
    let ids = IdGenerator::new();
    let mut validator = handler(&engine, plugins::ORDER_VALIDATOR, Limits::default());
    let mut enricher = load(&engine, plugins::ENRICHER)
        .handler(Limits::default(), br#"{"vat_percent": 25}"#.to_vec(), InstanceMode::Reuse)
        .unwrap();
    let mut filter = handler(&engine, plugins::FILTER, Limits::default());

    let created = order("o-1", "EUR", json!([{ "sku": "a", "qty": 5, "price_cents": 2_500 }]));
    let validated = invoke(&mut validator, &created).result.unwrap();
    assert_eq!(validated[0].topic, "orders.order.validated");
    let validated = as_event(&validated[0], &ids);
    assert_eq!(validated.causation_id, Some(created.id));

    let enriched = invoke(&mut enricher, &validated).result.unwrap();
    let payload: Value = serde_json::from_slice(&enriched[0].payload).unwrap();
    assert_eq!(payload["tier"], "large");
    assert_eq!(payload["vat_cents"], 2_500, "25% VAT included in 12,500");
    let enriched = as_event(&enriched[0], &ids);
    assert_eq!(enriched.causation_id, Some(validated.id));
    assert_eq!(enriched.correlation_id, Some(created.id), "correlation runs through the whole flow");

    let passed = invoke(&mut filter, &enriched).result.unwrap();
    assert_eq!(passed.len(), 1);
    assert_eq!(passed[0].topic, "orders.order.large");
    assert_eq!(passed[0].payload, enriched.payload);
}

#[test]
fn validator_rejections_carry_the_reason() {
    let engine = engine();
    let mut validator = handler(&engine, plugins::ORDER_VALIDATOR, Limits::default());
    let cases = [
        (order("o-2", "EUR", json!([])), "has no items"),
        (order("o-3", "XYZ", json!([{ "sku": "a", "qty": 1, "price_cents": 1 }])), "not accepted"),
        (event(r#"{"topic":"orders.order.created","payload":[1,2]}"#), "invalid JSON payload"),
    ];
    for (event, reason) in cases {
        let inv = invoke(&mut validator, &event);
        assert_eq!(code(&inv), "handler_reject");
        assert!(inv.result.unwrap_err().message().contains(reason), "{reason}");
    }
}

#[test]
fn configuration_reaches_the_plugin() {
    let engine = engine();
    let plugin = load(&engine, plugins::ORDER_VALIDATOR);
    let mut only_doge =
        plugin.handler(Limits::default(), br#"{"currencies": ["DOGE"]}"#.to_vec(), InstanceMode::Reuse).unwrap();
    let doge = order("o-4", "DOGE", json!([{ "sku": "a", "qty": 1, "price_cents": 1 }]));
    assert_eq!(code(&invoke(&mut only_doge, &doge)), "ok");
    let eur = order("o-5", "EUR", json!([{ "sku": "a", "qty": 1, "price_cents": 1 }]));
    assert_eq!(code(&invoke(&mut only_doge, &eur)), "handler_reject");
}

#[test]
fn the_audit_logger_logs_through_the_host_and_sees_the_attempt() {
    let engine = engine();
    let mut audit = handler(&engine, plugins::AUDIT_LOGGER, Limits::default());
    let e = event(r#"{"topic":"payments.card.charged","key":"p-1","payload":{"amount":1}}"#);
    let inv = audit.invoke(DeliveryRef { event: &e, subscription: "audit/log", attempt: 3 });
    assert_eq!(inv.logs.len(), 1);
    assert!(inv.logs[0].message.contains("payments.card.charged"));
    let record: Value = serde_json::from_slice(&inv.result.unwrap()[0].payload).unwrap();
    assert_eq!(record["attempt"], 3);
    assert_eq!(record["event_id"], e.id.to_string());
}

#[test]
fn the_log_byte_cap_drops_and_counts() {
    let engine = engine();
    let mut audit = handler(&engine, plugins::AUDIT_LOGGER, Limits::builder().max_log_bytes(10).build());
    let inv = invoke(&mut audit, &event(r#"{"topic":"a.b.c"}"#));
    assert!(inv.logs.is_empty());
    assert_eq!(inv.logs_dropped, 1);
    assert!(inv.result.is_ok(), "a dropped log line does not fail the event");
}
