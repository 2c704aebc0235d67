use super::*;

fn ingest(ids: &IdGenerator) -> Ingest<'_> {
    Ingest { ids, source: "weir:test", max_payload_bytes: 64, schemas: None }
}

#[test]
fn compact_len_skips_whitespace_between_tokens_only() {
    assert_eq!(compact_len(r#" { "a" : [ 1 , 2 ] } "#), r#"{"a":[1,2]}"#.len());
    assert_eq!(compact_len(r#""a b \" c""#), r#""a b \" c""#.len());
    assert_eq!(compact_len("\"\\\\\" "), 4);
}

#[test]
fn payloads_keep_their_meaning_through_the_raw_parse() {
    let ids = IdGenerator::new();
    let e = &ingest(&ids).json(br#"{"topic":"a.b.c","payload":null}"#).unwrap()[0];
    assert_eq!(e.payload, b"null");
    let e = &ingest(&ids).json(br#"{"topic":"a.b.c"}"#).unwrap()[0];
    assert!(e.payload.is_empty());
    // Whitespace does not count against the limit; the stored form is compact.
    let pretty = format!("{{\"topic\":\"a.b.c\",\"payload\":{{ {} \"x\" :  1 }}}}", " ".repeat(500));
    let e = &ingest(&ids).json(pretty.as_bytes()).unwrap()[0];
    assert_eq!(e.payload, br#"{"x":1}"#);
    let ce = br#"{"specversion":"1.0","type":"a.b.c","source":"/s","id":"1","data":[0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0]}"#;
    let e = ingest(&ids).cloudevent(ce).unwrap_err();
    assert_eq!((e.code(), e.index()), ("payload_too_large", Some(0)));
}

#[test]
fn a_batch_stops_at_the_event_limit_and_headers_at_theirs() {
    let ids = IdGenerator::new();
    let at_limit = format!("[{}]", vec![r#"{"topic":"a.b.c"}"#; MAX_EVENTS_PER_REQUEST].join(","));
    assert_eq!(ingest(&ids).json(at_limit.as_bytes()).unwrap().len(), MAX_EVENTS_PER_REQUEST);
    let over = format!("[{}]", vec![r#"{"topic":"a.b.c"}"#; MAX_EVENTS_PER_REQUEST + 1].join(","));
    assert_eq!(ingest(&ids).json(over.as_bytes()).unwrap_err().code(), "too_many_events");
    let ce = r#"{"specversion":"1.0","type":"a.b.c","source":"/s","id":"1"}"#;
    let over = format!("[{}]", vec![ce; MAX_EVENTS_PER_REQUEST + 1].join(","));
    assert_eq!(ingest(&ids).cloudevent_batch(over.as_bytes()).unwrap_err().code(), "too_many_events");
    let headers: Vec<String> = (0..=MAX_HEADERS).map(|i| format!("\"h{i}\":\"v\"")).collect();
    let body = format!(r#"[{{"topic":"a.b.c"}},{{"topic":"a.b.c","headers":{{{}}}}}]"#, headers.join(","));
    let e = ingest(&ids).json(body.as_bytes()).unwrap_err();
    assert_eq!((e.code(), e.index()), ("too_many_headers", Some(1)));
    // A parse error after a header limit was hit elsewhere is not blamed on headers.
    let e = ingest(&ids).json(br#"[{"topic":"a.b.c","nope":1}]"#).unwrap_err();
    assert_eq!((e.code(), e.index()), ("invalid_json", Some(0)));
    let e = ingest(&ids).json(br#"[{"topic":"a.b.c","headers":{"Weir-X":"1"}}]"#).unwrap_err();
    assert_eq!((e.code(), e.index()), ("reserved_header", Some(0)));
}

#[test]
fn the_saga_domain_is_refused_in_every_form() {
    let ids = IdGenerator::new();
    let e = ingest(&ids).json(br#"[{"topic":"a.b.c"},{"topic":"weir-saga.order.timer"}]"#).unwrap_err();
    assert_eq!((e.code(), e.index()), ("reserved_topic", Some(1)));
    assert!(e.to_string().contains("weir-saga"), "{e}");
    let ce = br#"{"specversion":"1.0","type":"weir-saga.order.admin","source":"/s","id":"1"}"#;
    assert_eq!(ingest(&ids).cloudevent(ce).unwrap_err().code(), "reserved_topic");
    assert_eq!(
        ingest(&ids).cloudevent_batch(&[&b"["[..], &ce[..], &b"]"[..]].concat()).unwrap_err().code(),
        "reserved_topic"
    );
    let headers: [(&str, &[u8]); 4] =
        [("ce-specversion", b"1.0"), ("ce-type", b"weir-saga.order.failed"), ("ce-source", b"/s"), ("ce-id", b"1")];
    assert_eq!(ingest(&ids).cloudevent_binary(&headers, Vec::new()).unwrap_err().code(), "reserved_topic");
    let mut built = ingest(&ids).json(br#"{"topic":"a.b.c"}"#).unwrap().remove(0);
    built.topic = "weir-saga.order.timer".into();
    assert_eq!(check_event(&built).unwrap_err().code(), "reserved_topic");
    // Only the exact domain: look-alikes are ordinary topics.
    for topic in ["weir-sagas.order.timer", "weir.saga.timer", "orders.weir-saga.timer"] {
        let body = format!(r#"{{"topic":"{topic}"}}"#);
        assert!(ingest(&ids).json(body.as_bytes()).is_ok(), "{topic}");
    }
}

#[test]
fn json_single_and_batch() {
    let ids = IdGenerator::new();
    assert_eq!(ingest(&ids).json(br#"{"topic":"a.b.c"}"#).unwrap().len(), 1);
    assert_eq!(ingest(&ids).json(br#"[{"topic":"a.b.c"},{"topic":"a.b.d"}]"#).unwrap().len(), 2);
    let e = ingest(&ids).json(br#"[{"topic":"a.b.c"},{"topic":"nope"}]"#).unwrap_err();
    assert_eq!((e.code(), e.index()), ("invalid_topic", Some(1)));
    assert_eq!(ingest(&ids).json(b"[]").unwrap_err().code(), "empty");
    assert_eq!(ingest(&ids).json(b"{oops").unwrap_err().code(), "invalid_json");
    let big = format!(r#"{{"topic":"a.b.c","payload":"{}"}}"#, "x".repeat(100));
    assert_eq!(ingest(&ids).json(big.as_bytes()).unwrap_err().code(), "payload_too_large");
}

#[test]
fn structured_cloudevent_maps_type_subject_and_id() {
    let ids = IdGenerator::new();
    let body = br#"{"specversion":"1.0","type":"orders.order.created","source":"/shop","id":"42",
        "subject":"o-1","datacontenttype":"application/json","data":{"x":1},"tenant":"acme","schemaversion":2}"#;
    let e = &ingest(&ids).cloudevent(body).unwrap()[0];
    assert_eq!(e.topic, "orders.order.created");
    assert_eq!(e.key.as_deref(), Some("o-1"));
    assert_eq!(e.idempotency_key, "ce:/shop#42");
    assert_eq!(e.source, "/shop");
    assert_eq!(e.payload, br#"{"x":1}"#);
    assert_eq!(e.schema_version, 2);
    assert_eq!(e.header("tenant"), Some("acme"));
    let missing = ingest(&ids).cloudevent(br#"{"specversion":"1.0","type":"a.b.c","source":"/s"}"#).unwrap_err();
    assert!(missing.to_string().contains("`id` is required"));
    let batch = br#"[{"specversion":"1.0","type":"a.b.c","source":"/s","id":"1","data_base64":"AAE="}]"#;
    assert_eq!(ingest(&ids).cloudevent_batch(batch).unwrap()[0].payload, vec![0, 1]);
}

#[test]
fn binary_cloudevent_reads_headers() {
    let ids = IdGenerator::new();
    let headers = raw(&[
        ("ce-specversion", "1.0"),
        ("ce-type", "orders.order.created"),
        ("ce-source", "/shop"),
        ("ce-id", "7"),
        ("ce-subject", "o-7"),
        ("ce-traceparent", "00-abc"),
        ("content-type", "text/plain"),
    ]);
    let e = &ingest(&ids).cloudevent_binary(&headers, b"hello".to_vec()).unwrap()[0];
    assert_eq!(e.payload, b"hello");
    assert_eq!(e.content_type, "text/plain");
    assert_eq!(e.key.as_deref(), Some("o-7"));
    assert_eq!(e.header("traceparent"), Some("00-abc"));
}

fn raw<'a>(pairs: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a [u8])> {
    pairs.iter().map(|(n, v)| (*n, v.as_bytes())).collect()
}

/// A binary-mode CloudEvent with required attributes and `extra` headers
/// (which come first, so they win over the defaults).
fn binary(extra: &[(&str, &[u8])]) -> Result<Event, IngestError> {
    let ids = IdGenerator::new();
    let mut headers: Vec<(&str, &[u8])> = extra.to_vec();
    headers.extend(raw(&[("ce-specversion", "1.0"), ("ce-type", "a.b.c"), ("ce-source", "/s"), ("ce-id", "1")]));
    ingest(&ids).cloudevent_binary(&headers, Vec::new()).map(|mut events| events.remove(0))
}

#[test]
fn cloudevent_key_escapes_the_source_so_keys_never_collide() {
    assert_eq!(cloudevent_key("/shop", "42"), "ce:/shop#42");
    // The pair that collided as `/shop#1#2` under the old `<source>#<id>`.
    assert_eq!(cloudevent_key("/shop#1", "2"), "ce:/shop%231#2");
    assert_eq!(cloudevent_key("/shop", "1#2"), "ce:/shop#1#2");
    // `%` is escaped too, or `/a%23` + `b` would meet `/a#` + `b`.
    assert_eq!(cloudevent_key("/a%23", "b"), "ce:/a%2523#b");
    assert_eq!(cloudevent_key("/a#", "b"), "ce:/a%23#b");
    // The id is kept raw.
    assert_eq!(cloudevent_key("s", "%#x"), "ce:s#%#x");
    let pairs = [("/shop#1", "2"), ("/shop", "1#2"), ("/a%23", "b"), ("/a#", "b"), ("", "#"), ("#", "")];
    for (i, a) in pairs.iter().enumerate() {
        for b in &pairs[i + 1..] {
            assert_ne!(cloudevent_key(a.0, a.1), cloudevent_key(b.0, b.1), "{a:?} vs {b:?}");
        }
    }
}

#[test]
fn structured_cloudevents_that_used_to_collide_get_distinct_keys() {
    let ids = IdGenerator::new();
    let one = br#"{"specversion":"1.0","type":"a.b.c","source":"/shop#1","id":"2"}"#;
    let two = br#"{"specversion":"1.0","type":"a.b.c","source":"/shop","id":"1#2"}"#;
    let one = &ingest(&ids).cloudevent(one).unwrap()[0];
    let two = &ingest(&ids).cloudevent(two).unwrap()[0];
    assert_ne!(one.idempotency_key, two.idempotency_key);
    assert_eq!(one.idempotency_key, "ce:/shop%231#2");
    assert_eq!(one.source, "/shop#1");
    assert_eq!(two.idempotency_key, "ce:/shop#1#2");
}

#[test]
fn binary_cloudevent_values_are_percent_decoded() {
    // What the CloudEvents SDKs send for source `/my shop`.
    let e = binary(&raw(&[("ce-source", "/my%20shop"), ("ce-id", "A-1")])).unwrap();
    assert_eq!(e.source, "/my shop");
    assert_eq!(e.idempotency_key, cloudevent_key("/my shop", "A-1"));
    // The spec's example, lower-case hex, and an unnecessary escape.
    let e = binary(&raw(&[("ce-tenant", "Euro%20%E2%82%AC%20%F0%9F%98%80"), ("ce-subject", "%e2%82%ac%41")])).unwrap();
    assert_eq!(e.header("tenant"), Some("Euro € 😀"));
    assert_eq!(e.key.as_deref(), Some("€A"));
    // `%25` is a literal percent, decoded once only.
    let e = binary(&raw(&[("ce-id", "100%2525")])).unwrap();
    assert_eq!(e.idempotency_key, "ce:/s#100%25");
    // Old-style double-quoted values: quotes and backslash escapes removed, then percent-decoding.
    let e = binary(&raw(&[("ce-source", r#""/my \"quoted\" shop%21""#)])).unwrap();
    assert_eq!(e.source, r#"/my "quoted" shop!"#);
    // Percent-encoded `%` and `#` in the source stay distinct in the key.
    let e = binary(&raw(&[("ce-source", "/a%23b%25"), ("ce-id", "c")])).unwrap();
    assert_eq!((e.source.as_str(), e.idempotency_key.as_str()), ("/a#b%", "ce:/a%23b%25#c"));
    // Header names are matched without regard to case; other headers are ignored.
    let e = binary(&raw(&[("CE-Subject", "o%2D1"), ("x-other", "%zz")])).unwrap();
    assert_eq!(e.key.as_deref(), Some("o-1"));
}

#[test]
fn binary_and_structured_modes_give_the_same_key() {
    let ids = IdGenerator::new();
    let structured = br#"{"specversion":"1.0","type":"a.b.c","source":"/my shop#1","id":"caf\u00e9 1"}"#;
    let structured = &ingest(&ids).cloudevent(structured).unwrap()[0];
    let binary = binary(&raw(&[("ce-source", "/my%20shop#1"), ("ce-id", "caf%C3%A9%201")])).unwrap();
    assert_eq!(binary.idempotency_key, structured.idempotency_key);
    assert_eq!(binary.source, structured.source);
}

#[test]
fn binary_header_values_that_cannot_be_decoded_are_refused_by_name() {
    let cases: [(&str, &[u8], &str); 8] = [
        ("ce-type", b"a.b.\xff", "`ce-type` is not valid UTF-8 after percent-decoding"),
        ("ce-source", b"/s%ff", "`ce-source` is not valid UTF-8 after percent-decoding"),
        // The spec's example of an overlong encoding (of a space).
        ("ce-source", b"/s%C0%A0", "`ce-source` is not valid UTF-8 after percent-decoding"),
        ("ce-id", b"1%zz", "`ce-id` has a malformed percent escape \"%zz\""),
        ("ce-id", b"1%4", "`ce-id` has a malformed percent escape \"%4\""),
        ("ce-id", b"1%", "`ce-id` has a malformed percent escape \"%\""),
        ("ce-tenant", b"\"acme", "`ce-tenant` starts with a double quote but is not a valid quoted string"),
        ("ce-tenant", b"\"ac\"me", "`ce-tenant` starts with a double quote but is not a valid quoted string"),
    ];
    for (name, value, message) in cases {
        let err = binary(&[(name, value)]).unwrap_err();
        assert_eq!((err.code(), err.index()), ("invalid_cloudevent", Some(0)));
        let text = err.to_string();
        assert!(text.contains(message), "{name}: {text}");
        assert!(!text.contains("required"), "{text}");
    }
    let err = binary(&[("content-type", b"text/\xff")]).unwrap_err();
    assert!(err.to_string().contains("`content-type` is not valid UTF-8"), "{err}");
    // A missing attribute is still reported as missing.
    let ids = IdGenerator::new();
    let err = ingest(&ids).cloudevent_binary(&raw(&[("ce-specversion", "1.0")]), Vec::new()).unwrap_err();
    assert!(err.to_string().contains("`ce-type` is required"), "{err}");
}

#[test]
fn dataschema_is_kept_as_a_header() {
    let ids = IdGenerator::new();
    let body =
        br#"{"specversion":"1.0","type":"a.b.c","source":"/s","id":"1","dataschema":"https://x.example/o.json"}"#;
    let e = &ingest(&ids).cloudevent(body).unwrap()[0];
    assert_eq!(e.header("dataschema"), Some("https://x.example/o.json"));
    let e = binary(&raw(&[("ce-dataschema", "https://x.example/o%20v2.json")])).unwrap();
    assert_eq!(e.header("dataschema"), Some("https://x.example/o v2.json"));
    let e = binary(&[]).unwrap();
    assert_eq!(e.header("dataschema"), None);
}
