//! Ingest correctness against the real `weir run` (issue #10): CloudEvents
//! idempotency keys that cannot collide, the `ce:` key reservation for JSON
//! events, binary-mode header decoding, and `dataschema` kept. Each test
//! posts over HTTP, then stops the server and reads what the log holds.

use std::io::{Read as _, Write as _};

use serde_json::{Value, json};
use weir_abi::Event;
use weir_runtime::cloudevent_key;
use weir_runtime::{Store, StoreOptions};
use weir_tests::Server;

/// No pipelines: the tests are about what is stored, not what handles it.
const NO_PIPELINES: &str = "";

fn structured(server: &Server, ce: &Value) -> (u16, Value) {
    server.try_post("/v1/events", "application/cloudevents+json", ce.to_string().as_bytes()).unwrap()
}

/// One answered event: (id, duplicate).
fn published(status: u16, body: &Value) -> (String, bool) {
    assert_eq!(status, 200, "{body}");
    let event = &body["events"][0];
    (event["id"].as_str().unwrap().to_owned(), event["duplicate"].as_bool().unwrap())
}

/// POST `/v1/events` with header values as raw bytes (which need not be
/// ASCII or UTF-8), over a plain socket; (status, JSON answer).
fn post_raw(server: &Server, headers: &[(&str, &[u8])], body: &[u8]) -> (u16, Value) {
    let addr = server.url.trim_start_matches("http://");
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    let mut request =
        format!("POST /v1/events HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\ncontent-length: {}\r\n", body.len())
            .into_bytes();
    for (name, value) in headers {
        request.extend_from_slice(name.as_bytes());
        request.extend_from_slice(b": ");
        request.extend_from_slice(value);
        request.extend_from_slice(b"\r\n");
    }
    request.extend_from_slice(b"\r\n");
    request.extend_from_slice(body);
    stream.write_all(&request).unwrap();
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).unwrap();
    let text = String::from_utf8_lossy(&answer);
    let status = text.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or_else(|| panic!("{text}"));
    let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    (status, serde_json::from_str(body).unwrap_or_else(|_| Value::String(body.to_owned())))
}

/// Stop the server and read the whole log.
fn stored(mut server: Server, dir: &std::path::Path) -> Vec<Event> {
    assert!(server.terminate().success(), "{}", server.stderr());
    let store = Store::open(&dir.join("data").join("weir.redb"), StoreOptions::default()).unwrap();
    store.read_log(0, usize::MAX).unwrap().into_iter().map(|(_, e)| e).collect()
}

fn by_id<'a>(log: &'a [Event], id: &str) -> &'a Event {
    log.iter().find(|e| e.id.to_string() == id).unwrap_or_else(|| panic!("event {id} is not in the log"))
}

#[test]
fn cloudevents_whose_old_keys_collided_are_both_stored() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), NO_PIPELINES);
    let ce = |source: &str, id: &str| {
        json!({ "specversion": "1.0", "type": "orders.order.created", "source": source, "id": id,
                "data": { "source": source, "id": id } })
    };
    // Both were `/shop#1#2` under `<source>#<id>`: the second was answered
    // as a duplicate of the first and never stored.
    let (status, body) = structured(&server, &ce("/shop#1", "2"));
    let (first, duplicate) = published(status, &body);
    assert!(!duplicate);
    let (status, body) = structured(&server, &ce("/shop", "1#2"));
    let (second, duplicate) = published(status, &body);
    assert!(!duplicate, "a distinct CloudEvent was taken for a duplicate: {body}");
    assert_ne!(first, second);

    // The same CloudEvent (source + id) again is still a duplicate, in
    // structured mode and in binary mode.
    let (status, body) = structured(&server, &ce("/shop#1", "2"));
    assert_eq!(published(status, &body), (first.clone(), true));
    let (status, body) = server.post_with(
        "/v1/events",
        &[
            ("ce-specversion", "1.0"),
            ("ce-type", "orders.order.created"),
            ("ce-source", "/shop%231"),
            ("ce-id", "2"),
            ("content-type", "application/json"),
        ],
        b"{}",
    );
    assert_eq!(published(status, &body), (first.clone(), true));

    let log = stored(server, dir.path());
    assert_eq!(log.len(), 2, "{log:?}");
    assert_eq!(by_id(&log, &first).idempotency_key, "ce:/shop%231#2");
    assert_eq!(by_id(&log, &first).source, "/shop#1");
    assert_eq!(by_id(&log, &second).idempotency_key, "ce:/shop#1#2");
    assert_eq!(by_id(&log, &second).source, "/shop");
}

#[test]
fn json_events_cannot_collide_with_cloudevents_by_accident() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), NO_PIPELINES);
    let ce = json!({ "specversion": "1.0", "type": "orders.order.created", "source": "/shop", "id": "42" });
    let (status, body) = structured(&server, &ce);
    let (cloudevent, _) = published(status, &body);

    // A JSON event whose own key happens to read like the old CloudEvent key.
    let (status, body) = server.post(
        "/v1/events",
        &json!({ "topic": "orders.order.created", "source": "/shop", "idempotency_key": "/shop#42" }),
    );
    let (plain, duplicate) = published(status, &body);
    assert!(!duplicate, "{body}");
    assert_ne!(plain, cloudevent);

    // A `ce:` key for another source is refused, and nothing is stored.
    for (source, key) in [(Some("/other"), "ce:/shop#42"), (None, "ce:/shop#42"), (Some("/shop#1"), "ce:/shop#1#2")] {
        let mut event = json!({ "topic": "orders.order.created", "idempotency_key": key });
        if let Some(source) = source {
            event["source"] = json!(source);
        }
        let (status, body) = server.post("/v1/events", &event);
        assert_eq!(status, 400, "{body}");
        assert_eq!(body["error"]["code"], "invalid_idempotency_key", "{body}");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(message.contains("reserved for CloudEvents"), "{message}");
    }

    // The CloudEvent's own key with its own source is that CloudEvent: a
    // stored event's JSON form can be published again.
    let (status, body) = server.post(
        "/v1/events",
        &json!({ "topic": "orders.order.created", "source": "/shop", "idempotency_key": cloudevent_key("/shop", "42") }),
    );
    assert_eq!(published(status, &body), (cloudevent.clone(), true));

    let log = stored(server, dir.path());
    assert_eq!(log.len(), 2, "{log:?}");
    assert_eq!(by_id(&log, &cloudevent).idempotency_key, "ce:/shop#42");
    assert_eq!(by_id(&log, &plain).idempotency_key, "/shop#42");
}

#[test]
fn binary_mode_values_are_percent_decoded_and_match_structured_mode() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), NO_PIPELINES);
    // As the CloudEvents SDKs send source `/my shop`, extension `Café Ünïcode`
    // and dataschema `https://schemas.example/order v2.json`.
    let (status, body) = server.post_with(
        "/v1/events",
        &[
            ("ce-specversion", "1.0"),
            ("ce-type", "orders.order.created"),
            ("ce-source", "/my%20shop"),
            ("ce-id", "A-1"),
            ("ce-subject", "o%2D1"),
            ("ce-tenant", "Caf%C3%A9%20%C3%9Cn%C3%AFcode"),
            ("ce-dataschema", "https://schemas.example/order%20v2.json"),
            ("content-type", "application/json"),
        ],
        br#"{"order_id":"o-1"}"#,
    );
    let (binary, duplicate) = published(status, &body);
    assert!(!duplicate);
    // The same event in structured mode: one event, not two.
    let ce = json!({ "specversion": "1.0", "type": "orders.order.created", "source": "/my shop", "id": "A-1",
                     "data": { "order_id": "o-1" } });
    let (status, body) = structured(&server, &ce);
    assert_eq!(published(status, &body), (binary.clone(), true));

    // A double-quoted value (older senders): quotes removed, then percent-decoding.
    let (status, body) = server.post_with(
        "/v1/events",
        &[
            ("ce-specversion", "1.0"),
            ("ce-type", "orders.order.created"),
            ("ce-source", r#""/old \"style\" shop%21""#),
            ("ce-id", "\"B 1\""),
        ],
        b"",
    );
    let (quoted, duplicate) = published(status, &body);
    assert!(!duplicate);

    // A structured CloudEvent keeps its dataschema too.
    let ce = json!({ "specversion": "1.0", "type": "orders.order.created", "source": "/s", "id": "C-1",
                     "dataschema": "https://schemas.example/order.json" });
    let (status, body) = structured(&server, &ce);
    let (schema, _) = published(status, &body);

    let log = stored(server, dir.path());
    assert_eq!(log.len(), 3, "{log:?}");
    let event = by_id(&log, &binary);
    assert_eq!(event.source, "/my shop");
    assert_eq!(event.idempotency_key, "ce:/my shop#A-1");
    assert_eq!(event.key.as_deref(), Some("o-1"));
    assert_eq!(event.header("tenant"), Some("Café Ünïcode"));
    assert_eq!(event.header("dataschema"), Some("https://schemas.example/order v2.json"));
    let event = by_id(&log, &quoted);
    assert_eq!(event.source, r#"/old "style" shop!"#);
    assert_eq!(event.idempotency_key, r#"ce:/old "style" shop!#B 1"#);
    assert_eq!(by_id(&log, &schema).header("dataschema"), Some("https://schemas.example/order.json"));
}

#[test]
fn binary_mode_values_that_cannot_be_decoded_are_named_400s() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), NO_PIPELINES);
    let cases: [(&str, &[u8], &str); 6] = [
        // Raw bytes that are not UTF-8: before, the header was dropped and
        // the event refused as "`ce-type` is required".
        ("ce-type", b"orders.order.\xff", "`ce-type` is not valid UTF-8 after percent-decoding"),
        ("ce-source", b"/shop%FF", "`ce-source` is not valid UTF-8 after percent-decoding"),
        ("ce-source", b"/shop%C0%A0", "`ce-source` is not valid UTF-8 after percent-decoding"),
        ("ce-id", b"A%zz", "`ce-id` has a malformed percent escape"),
        ("ce-id", b"A%4", "`ce-id` has a malformed percent escape"),
        // An extension too: before, it was silently left out of the event.
        ("ce-tenant", b"acme\xe9", "`ce-tenant` is not valid UTF-8 after percent-decoding"),
    ];
    for (name, value, message) in cases {
        let mut headers: Vec<(&str, &[u8])> = vec![(name, value)];
        for default in [
            ("ce-specversion", &b"1.0"[..]),
            ("ce-type", b"orders.order.created"),
            ("ce-source", b"/shop"),
            ("ce-id", b"A-1"),
        ] {
            if default.0 != name {
                headers.push(default);
            }
        }
        let (status, body) = post_raw(&server, &headers, b"{}");
        assert_eq!(status, 400, "{name}: {body}");
        assert_eq!(body["error"]["code"], "invalid_cloudevent", "{body}");
        let text = body["error"]["message"].as_str().unwrap();
        assert!(text.contains(message), "{name}: {text}");
        assert!(!text.contains("required"), "{text}");
    }
    // The raw-socket client itself works: the same request with a good value is stored.
    let (status, body) = post_raw(
        &server,
        &[("ce-specversion", b"1.0"), ("ce-type", b"orders.order.created"), ("ce-source", b"/shop"), ("ce-id", b"A-1")],
        b"{}",
    );
    published(status, &body);
    let log = stored(server, dir.path());
    assert_eq!(log.len(), 1, "only the good request was stored: {log:?}");
    assert_eq!(log[0].idempotency_key, "ce:/shop#A-1");
}
