//! The plugin written from docs/abi.md alone (no SDK, no serde) works: the
//! document is complete.

use weir_abi::DeliveryRef;
use weir_abi::LogLevel;
use weir_runtime::Limits;
use weir_tests::{code, engine, event, handler, plugins};

#[test]
fn the_raw_abi_plugin_echoes_with_every_field_right() {
    let engine = engine();
    let mut h = handler(&engine, plugins::RAW_ABI, Limits::default());
    let input = event(
        r#"{"topic":"raw.event.sent","key":"k-é","schema_version":300,"content_type":"text/plain",
            "headers":{"a":"1","b":"ü"},"payload_base64":"AAECAwT/"}"#,
    );
    let inv = h.invoke(DeliveryRef { event: &input, subscription: "pipe/raw", attempt: 70_000 });
    let emits = inv.result.unwrap();
    assert_eq!(emits.len(), 1);
    let out = &emits[0];
    assert_eq!(out.topic, "raw.event.echoed");
    assert_eq!(out.key.as_deref(), Some("k-é"));
    assert_eq!(out.schema_version, 300);
    assert_eq!(out.content_type, "text/plain");
    assert_eq!(out.payload, vec![0, 1, 2, 3, 4, 255]);
    assert_eq!(out.headers.len(), 1);
    assert_eq!(out.headers[0].value, "pipe/raw#70000");
    assert_eq!(out.causation_id, Some(input.id));
    assert_eq!(out.correlation_id, Some(input.id));
    assert_eq!(inv.logs.len(), 1);
    assert_eq!(inv.logs[0].level, LogLevel::Info);
    assert_eq!(inv.logs[0].message, "raw-abi handling one event");
}

#[test]
fn the_raw_abi_plugin_rejects_and_handles_large_payloads() {
    let engine = engine();
    let mut h = handler(&engine, plugins::RAW_ABI, Limits::default());
    let reject = event(r#"{"topic":"raw.event.sent","key":"reject-me"}"#);
    let inv = h.invoke(DeliveryRef { event: &reject, subscription: "s", attempt: 1 });
    assert_eq!(code(&inv), "handler_reject");
    assert_eq!(inv.result.unwrap_err().message(), "asked to reject");

    // 100 KB payload: exercises the 3-byte and 5-byte length prefixes and the
    // host's input buffer growth.
    let mut big = event(r#"{"topic":"raw.event.sent"}"#);
    big.payload = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    let inv = h.invoke(DeliveryRef { event: &big, subscription: "s", attempt: 1 });
    assert_eq!(inv.result.unwrap()[0].payload, big.payload);
}
