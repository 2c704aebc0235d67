//! Payload schemas per topic and version (issue #16 items 1 and 5) against
//! the real binary: validation on every ingest path with nothing stored on
//! a refusal, emits that violate their schema dead-lettered, compatibility
//! refusals with the version pair and the reason, `max_payload_bytes`, the
//! `weir_payload_bytes` histogram, `weir schema list|show|check|stats`, and
//! hostile schemas and payloads kept within their bounds.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use weir_tests::{ORDERS, Server, weir};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/schemas").join(name)
}

/// `[[schemas]]` for `orders.order.created`: v1 from a path relative to the
/// config (copied next to it), v2 by absolute path; no compatibility check
/// (v2 changes `amount`'s type); 4 KiB at most. And an entry with no versions
/// that only limits the size.
fn orders_schemas(dir: &Path) -> String {
    std::fs::create_dir_all(dir.join("schemas")).unwrap();
    std::fs::copy(fixture("orders-v1.json"), dir.join("schemas/orders-v1.json")).unwrap();
    format!(
        r#"
[[entities]]
type = "orders.order"

[[schemas]]
topic = "orders.order.created"
compatibility = "none"
max_payload_bytes = 4096
[[schemas.versions]]
version = 1
schema = "schemas/orders-v1.json"
[[schemas.versions]]
version = 2
schema = {:?}

[[schemas]]
topic = "blobs.>"
max_payload_bytes = 100
"#,
        fixture("orders-v2.json").display().to_string()
    )
}

fn head(server: &Server) -> u64 {
    let (status, body) = server.get("/v1/status");
    assert_eq!(status, 200, "{body}");
    body["head"].as_u64().unwrap()
}

fn refused(answer: &(u16, Value), status: u16, code: &str) -> String {
    assert_eq!((answer.0, answer.1["error"]["code"].as_str()), (status, Some(code)), "{}", answer.1);
    answer.1["error"]["message"].as_str().unwrap().to_owned()
}

#[test]
fn every_ingest_path_validates_and_a_refusal_stores_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &orders_schemas(dir.path()));
    let ok = |answer: (u16, Value)| assert_eq!(answer.0, 200, "{}", answer.1);

    // Valid v1 and v2, and a topic no entry covers (anything goes).
    ok(server
        .post("/v1/events", &json!({"topic": "orders.order.created", "payload": {"order_id": "o1", "amount": 5}})));
    ok(server.post(
        "/v1/events",
        &json!({"topic": "orders.order.created", "schema_version": 2,
                "payload": {"order_id": "o2", "amount": {"value": 5, "currency": "EUR"}}}),
    ));
    ok(server.post("/v1/events", &json!({"topic": "misc.thing.happened", "payload": [1, 2]})));
    let stored = head(&server);
    assert_eq!(stored, 3);

    // Single JSON event: the pointer, the keyword, the code; nothing stored.
    let message = refused(
        &server
            .post("/v1/events", &json!({"topic": "orders.order.created", "payload": {"order_id": "o3", "amount": -1}})),
        422,
        "schema_violation",
    );
    assert!(message.contains("\"/amount\"") && message.contains("minimum"), "{message}");
    // A v1 payload sent as v2: the nested pointer into `amount`.
    let message = refused(
        &server.post(
            "/v1/events",
            &json!({"topic": "orders.order.created", "schema_version": 2,
                    "payload": {"order_id": "o3", "amount": {"value": 5, "currency": "JPY"}}}),
        ),
        422,
        "schema_violation",
    );
    assert!(message.contains("/amount/currency") && message.contains("enum"), "{message}");
    // An undeclared version.
    let message = refused(
        &server.post("/v1/events", &json!({"topic": "orders.order.created", "schema_version": 3, "payload": {}})),
        422,
        "unknown_schema_version",
    );
    assert!(message.contains("declared: 1, 2"), "{message}");
    // A batch whose second event fails: the index, and not even the first is stored.
    let answer = server.post(
        "/v1/events",
        &json!([
            {"topic": "orders.order.created", "payload": {"order_id": "o4", "amount": 1}},
            {"topic": "orders.order.created", "payload": {"order_id": "o5", "amount": 1, "extra": true}}
        ]),
    );
    let message = refused(&answer, 422, "schema_violation");
    assert_eq!(answer.1["error"]["index"], 1, "{}", answer.1);
    assert!(message.contains("/extra") && message.contains("additionalProperties"), "{message}");
    // CloudEvents, structured mode, with its version.
    let ce = json!({"specversion": "1.0", "type": "orders.order.created", "source": "/shop", "id": "c1",
                    "schemaversion": 2, "data": {"order_id": "o6", "amount": 5}});
    let answer = server.try_post("/v1/events", "application/cloudevents+json", ce.to_string().as_bytes()).unwrap();
    assert!(refused(&answer, 422, "schema_violation").contains("/amount"), "{}", answer.1);
    // CloudEvents, binary mode, a body that is not JSON.
    let answer = server.post_with(
        "/v1/events",
        &[
            ("ce-specversion", "1.0"),
            ("ce-type", "orders.order.created"),
            ("ce-source", "/shop"),
            ("ce-id", "c2"),
            ("content-type", "text/plain"),
        ],
        b"order o7, amount 5",
    );
    assert!(refused(&answer, 422, "schema_violation").contains("not JSON"), "{}", answer.1);
    // A stream append.
    let answer = server.post(
        "/v1/streams/orders.order/o8",
        &json!({"expected_revision": "any", "events": [{"topic": "orders.order.created", "payload": {"order_id": "o8"}}]}),
    );
    let message = refused(&answer, 422, "schema_violation");
    assert!(message.contains("required property \"amount\""), "{message}");
    // `weir publish`.
    let out = weir(
        &[
            "publish",
            "--server",
            &server.url,
            "--topic",
            "orders.order.created",
            "--data",
            r#"{"order_id":"","amount":1}"#,
        ],
        dir.path(),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("schema_violation") && stderr.contains("/order_id"), "{stderr}");
    assert_eq!(head(&server), stored, "no refused event was stored");

    // max_payload_bytes: 413, naming the limit; on an entry with versions too.
    let big = "x".repeat(200);
    let message = refused(
        &server.post("/v1/events", &json!({"topic": "blobs.file.stored", "payload": big})),
        413,
        "payload_too_large",
    );
    assert!(message.contains("maximum of 100 bytes") && message.contains("blobs.>"), "{message}");
    let note = "n".repeat(5000);
    let answer = server.post(
        "/v1/events",
        &json!({"topic": "orders.order.created", "payload": {"order_id": "o9", "amount": 1, "note": note}}),
    );
    assert!(refused(&answer, 413, "payload_too_large").contains("4096"), "{}", answer.1);
    ok(server.post("/v1/events", &json!({"topic": "blobs.file.stored", "payload": "small"})));
    assert_eq!(head(&server), stored + 1);

    // The histogram: one series per entry's pattern and one for the rest.
    let metrics = ureq::get(format!("{}/metrics", server.url)).call().unwrap().into_body().read_to_string().unwrap();
    for line in [
        "# TYPE weir_payload_bytes histogram",
        "weir_payload_bytes_count{pattern=\"orders.order.created\"} 2",
        "weir_payload_bytes_count{pattern=\"blobs.>\"} 1",
        "weir_payload_bytes_count{pattern=\"other\"} 1",
        "weir_payload_bytes_bucket{pattern=\"blobs.>\",le=\"64\"} 1",
    ] {
        assert!(metrics.contains(line), "{line} missing from:\n{metrics}");
    }
    // Invented topics add no series.
    for i in 0..20 {
        ok(server.post("/v1/events", &json!({"topic": format!("misc{i}.thing.happened"), "payload": i})));
    }
    let metrics = ureq::get(format!("{}/metrics", server.url)).call().unwrap().into_body().read_to_string().unwrap();
    let series = metrics.lines().filter(|l| l.starts_with("weir_payload_bytes_count")).count();
    assert_eq!(series, 3, "{metrics}");
}

fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn an_emit_that_violates_its_schema_is_dead_lettered_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    // The validator emits orders.order.validated without `approved_by`.
    let toml = format!(
        "{ORDERS}\n{}",
        r#"
[[schemas]]
topic = "orders.order.validated"
[[schemas.versions]]
version = 1
schema = '{"type": "object", "required": ["order_id", "approved_by"]}'
"#
    );
    let server = Server::start(dir.path(), &toml);
    let order = json!({"topic": "orders.order.created", "key": "o-1", "payload": {
        "order_id": "o-1", "customer": "c", "currency": "EUR", "items": [{"sku": "a", "qty": 1, "price_cents": 100}]}});
    assert_eq!(server.post("/v1/events", &order).0, 200);
    let mut entries = Vec::new();
    wait_for("the dead letter", || {
        let (status, body) = server.get("/v1/dlq");
        assert_eq!(status, 200, "{body}");
        entries = body["entries"].as_array().unwrap().clone();
        !entries.is_empty()
    });
    assert_eq!(entries.len(), 1, "{entries:?}");
    let entry = &entries[0];
    assert_eq!(
        (entry["subscription"].as_str(), entry["code"].as_str()),
        (Some("orders/validator"), Some("schema_violation"))
    );
    assert_eq!(entry["attempts"], 1, "final at once, not retried: {entry}");
    let message = entry["message"].as_str().unwrap();
    assert!(message.contains("\"approved_by\"") && message.contains("orders.order.validated"), "{message}");
    // The validator emitted nothing; the audit logger, on its own
    // subscription, recorded the order as usual.
    assert!(server.wait_idle(Duration::from_secs(30)));
    assert_eq!(head(&server), 2);
    let (_, page) = server.get("/v1/log?topics=orders.order.validated");
    assert_eq!(page["events"], json!([]), "{page}");
}

fn config_with(dir: &Path, schemas: &str) -> PathBuf {
    let path = dir.join("weir.toml");
    std::fs::write(&path, format!("data_dir = {:?}\n{schemas}", dir.join("data").display().to_string())).unwrap();
    path
}

fn versions(compatibility: &str, files: &[&str]) -> String {
    let mut text = format!("[[schemas]]\ntopic = \"orders.order.created\"\ncompatibility = \"{compatibility}\"\n");
    for (i, f) in files.iter().enumerate() {
        text.push_str(&format!(
            "[[schemas.versions]]\nversion = {}\nschema = {:?}\n",
            i + 1,
            fixture(f).display().to_string()
        ));
    }
    text
}

#[test]
fn incompatible_versions_are_refused_with_the_pair_and_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let check = |config: &Path, extra: &[&str]| {
        let mut args = vec!["schema", "check", "--config", config.to_str().unwrap()];
        args.extend_from_slice(extra);
        let out = weir(&args, dir.path());
        (out.status.code(), String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr))
    };
    // v1 → v2 changes amount from a number to an object: not backward.
    let config = config_with(dir.path(), &versions("backward", &["orders-v1.json", "orders-v2.json"]));
    let (code, out) = check(&config, &[]);
    assert_eq!(code, Some(1), "{out}");
    for needle in
        ["schemas[0].versions[1].schema", "version 2 after version 1", "not backward compatible", "/properties/amount"]
    {
        assert!(out.contains(needle), "{needle:?} missing: {out}");
    }
    // `weir run` refuses it at start the same way.
    let out = weir(&["run", "--config", config.to_str().unwrap()], dir.path());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("version 2 after version 1"), "{stderr}");
    // Adding an optional field to a closed object: backward, not forward.
    let config = config_with(dir.path(), &versions("backward", &["orders-v1.json", "orders-v1-tags.json"]));
    assert_eq!(check(&config, &[]).0, Some(0));
    let config = config_with(dir.path(), &versions("forward", &["orders-v1.json", "orders-v1-tags.json"]));
    let (code, out) = check(&config, &[]);
    assert!(code == Some(1) && out.contains("not forward compatible") && out.contains("/properties/tags"), "{out}");
    let config = config_with(dir.path(), &versions("full", &["orders-v1.json", "orders-v1-tags.json"]));
    assert_eq!(check(&config, &[]).0, Some(1));
    // With no check, any change goes.
    let config = config_with(dir.path(), &versions("none", &["orders-v1.json", "orders-v2.json"]));
    assert_eq!(check(&config, &[]).0, Some(0));

    // A payload checked offline against a version.
    let payload = dir.path().join("order.json");
    std::fs::write(&payload, r#"{"order_id": "o1", "amount": {"value": 1, "currency": "EUR"}}"#).unwrap();
    let p = payload.to_str().unwrap();
    let (code, out) = check(&config, &["--topic", "orders.order.created", "--version", "2", "--payload", p]);
    assert!(code == Some(0) && out.contains("valid"), "{out}");
    let (code, out) = check(&config, &["--topic", "orders.order.created", "--version", "1", "--payload", p]);
    assert!(code == Some(1) && out.contains("schema_violation") && out.contains("/amount"), "{out}");

    // Malformed and overlapping entries: the key and the reason.
    for (text, key, reason) in [
        (
            "[[schemas]]\ntopic = \"orders.>\"\n[[schemas]]\ntopic = \"*.order.created\"\n",
            "schemas[1].topic",
            "overlaps orders.>",
        ),
        ("[[schemas]]\ntopic = \"a.b.c\"\ncompatibility = \"sideways\"\n", "schemas[0].compatibility", "sideways"),
        (
            "[[schemas]]\ntopic = \"a.b.c\"\n[[schemas.versions]]\nversion = 2\n[[schemas.versions]]\nversion = 1\n",
            "schemas[0].versions[1].version",
            "ascending",
        ),
        (
            "[[schemas]]\ntopic = \"a.b.c\"\n[[schemas.versions]]\nversion = 1\nschema = '{\"type\": \"string\", \"pattern\": \"^a\"}'\n",
            "schemas[0].versions[0].schema",
            "regular-expression",
        ),
        (
            "[[schemas]]\ntopic = \"a.b.c\"\n[[schemas.versions]]\nversion = 1\nschema = '{\"uniqueItems\": true}'\n",
            "schemas[0].versions[0].schema",
            "\"uniqueItems\" is not in the subset",
        ),
        (
            "[[schemas]]\ntopic = \"a.b.c\"\n[[schemas.versions]]\nversion = 1\nschema = \"missing.json\"\n",
            "schemas[0].versions[0].schema",
            "missing.json",
        ),
    ] {
        let config = config_with(dir.path(), text);
        let (code, out) = check(&config, &[]);
        assert!(code == Some(1) && out.contains(key) && out.contains(reason), "{key} / {reason}: {out}");
    }
}

#[test]
fn list_show_and_stats() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &orders_schemas(dir.path()));
    let config = server.config.to_str().unwrap().to_owned();
    let out = weir(&["schema", "list", "--config", &config], dir.path());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && stdout.contains("orders.order.created") && stdout.contains("none"), "{stdout}");
    assert!(stdout.contains("4096") && stdout.contains("1, 2") && stdout.contains("blobs.>"), "{stdout}");
    let out = weir(&["schema", "show", "--config", &config, "--topic", "orders.order.created"], dir.path());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && stdout.contains("\"money\""), "the newest version by default: {stdout}");

    for (i, note) in [None, Some("gift"), None].iter().enumerate() {
        let mut payload = json!({"order_id": format!("o{i}"), "amount": i});
        if let Some(note) = note {
            payload["note"] = json!(note);
        }
        assert_eq!(server.post("/v1/events", &json!({"topic": "orders.order.created", "payload": payload})).0, 200);
    }
    assert_eq!(
        server
            .post(
                "/v1/events",
                &json!({"topic": "orders.order.created", "schema_version": 2,
                        "payload": {"order_id": "x", "amount": {"value": 1, "currency": "GBP"}}})
            )
            .0,
        200
    );
    let out = weir(&["schema", "stats", "--server", &server.url], dir.path());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("scanned 4 events"), "{stdout}");
    assert!(stdout.contains("orders.order.created v1: 3 events"), "{stdout}");
    assert!(stdout.contains("orders.order.created v2: 1 events"), "{stdout}");
    let note = stdout.lines().find(|l| l.trim_start().starts_with("note")).unwrap();
    assert!(note.contains(" 1 of 3"), "{note}");
    // What it keeps is bounded: 256 fields per group, 1000 groups.
    let wide: serde_json::Map<String, Value> = (0..300).map(|i| (format!("f{i:03}"), json!(i))).collect();
    assert_eq!(server.post("/v1/events", &json!({"topic": "wide.thing.happened", "payload": wide})).0, 200);
    let many: Vec<Value> = (0..1001).map(|i| json!({"topic": format!("many.t{i}.happened"), "payload": i})).collect();
    assert_eq!(server.post("/v1/events", &json!(many)).0, 200);
    let out = weir(&["schema", "stats", "--server", &server.url], dir.path());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("(44 occurrences of fields past the first 256 not counted)"), "{stdout}");
    // Two order versions, the wide topic and 997 of the many make 1000 groups.
    assert!(stdout.contains("(4 events of topics/versions past the first 1000 not counted)"), "{stdout}");
    // The scan is bounded.
    let out = weir(&["schema", "stats", "--server", &server.url, "--limit", "2", "--json"], dir.path());
    let stats: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(stats["scanned"], 2, "{stats}");
    assert_eq!(stats["groups"][0]["stats"]["events"], 2, "{stats}");
}

#[test]
fn hostile_schemas_and_payloads_are_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let check = |schemas: &str| {
        let config = config_with(dir.path(), schemas);
        let out = weir(&["schema", "check", "--config", config.to_str().unwrap()], dir.path());
        (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    let one = |schema: &str| {
        format!("[[schemas]]\ntopic = \"a.b.c\"\n[[schemas.versions]]\nversion = 1\nschema = {schema:?}\n")
    };
    // A `$ref` loop that never descends into the payload.
    let (code, out) = check(&one(r##"{"$defs": {"a": {"allOf": [{"$ref": "#/$defs/a"}]}}, "$ref": "#/$defs/a"}"##));
    assert!(code == Some(1) && out.contains("$ref loop"), "{out}");
    // A huge schema file.
    let huge = dir.path().join("huge.json");
    std::fs::write(&huge, format!("{{\"enum\": [{}0]}}", "0,".repeat(200_000))).unwrap();
    let (code, out) = check(&one(huge.to_str().unwrap()));
    assert!(code == Some(1) && out.contains("over the maximum"), "{out}");
    // Nesting deeper than the bound.
    let deep = format!("{}true{}", r#"{"items": "#.repeat(40), "}".repeat(40));
    let (code, out) = check(&one(&deep));
    assert!(code == Some(1) && out.contains("deeper than 32"), "{out}");

    // At run time: an exponential anyOf chain stops at the step bound, a
    // deeply nested payload at the parser's depth bound; the server goes on.
    let mut defs = serde_json::Map::new();
    defs.insert("d0".into(), json!({"type": "string"}));
    for i in 1..40 {
        let prev = format!("#/$defs/d{}", i - 1);
        defs.insert(format!("d{i}"), json!({"anyOf": [{"$ref": prev}, {"$ref": prev}]}));
    }
    let blowup = json!({"$defs": defs, "$ref": "#/$defs/d39"}).to_string();
    let toml = format!(
        "{}[[schemas]]\ntopic = \"deep.*.*\"\n[[schemas.versions]]\nversion = 1\nschema = '{{\"properties\": {{\"next\": {{\"$ref\": \"#\"}}}}}}'\n",
        one(&blowup)
    );
    let server = Server::start(dir.path(), &toml);
    let started = Instant::now();
    let answer = server.post("/v1/events", &json!({"topic": "a.b.c", "payload": 1}));
    assert!(refused(&answer, 422, "schema_violation").contains("steps"), "{}", answer.1);
    assert!(started.elapsed() < Duration::from_secs(30));
    let nested = format!("{}{}", "{\"next\":".repeat(5000), "}".repeat(5000));
    let body = format!(r#"{{"topic": "deep.x.y", "payload_base64": "{}"}}"#, base64_encode(nested.as_bytes()));
    let answer = server.try_post("/v1/events", "application/json", body.as_bytes()).unwrap();
    assert!(refused(&answer, 422, "schema_violation").contains("recursion limit"), "{}", answer.1);
    // A recursive schema over a payload nested within the bounds is fine.
    let nested = format!("{}{}", "{\"next\":".repeat(50), "{}".to_owned() + &"}".repeat(50));
    let body = format!(r#"{{"topic": "deep.x.y", "payload_base64": "{}"}}"#, base64_encode(nested.as_bytes()));
    let answer = server.try_post("/v1/events", "application/json", body.as_bytes()).unwrap();
    assert_eq!(answer.0, 200, "{}", answer.1);
    assert_eq!(head(&server), 1);
}

fn base64_encode(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

#[test]
fn an_aggregate_event_that_violates_its_schema_stores_nothing() {
    let dir = tempfile::tempdir().unwrap();
    // Deposits of at most 1000: the aggregate itself allows any amount.
    let toml = r#"
[[entities]]
type = "accounts.account"
aggregate = "{BANK_ACCOUNT}"

[[schemas]]
topic = "accounts.account.deposited"
[[schemas.versions]]
version = 1
schema = '{"type": "object", "required": ["amount"], "properties": {"amount": {"type": "integer", "maximum": 1000}}}'
"#;
    let server = Server::start(dir.path(), toml);
    let command = |name: &str, payload: Value, key: &str| {
        server.post(
            "/v1/commands/accounts.account/a1",
            &json!({"command": name, "payload": payload, "idempotency_key": key}),
        )
    };
    assert_eq!(command("open", json!({"owner": "ann"}), "c1").0, 200);
    assert_eq!(command("deposit", json!({"amount": 10}), "c2").0, 200);
    let answer = command("deposit", json!({"amount": 5000}), "c3");
    let message = refused(&answer, 422, "schema_violation");
    assert!(message.contains("/amount") && message.contains("maximum"), "{message}");
    assert_eq!(head(&server), 2, "the refused command stored nothing");
    let (_, stream) = server.get("/v1/streams/accounts.account/a1");
    assert_eq!(stream["revision"], 1, "{stream}");
}

#[test]
#[ignore = "needs nats-server"]
fn the_jetstream_source_checks_schemas_too() {
    use crate::jetstream::{Nats, connect_js, create_stream, publish, source_status, source_toml, tokio, wait_for};
    let dir = tempfile::tempdir().unwrap();
    let nats = Nats::start(dir.path());
    let rt = tokio();
    let js = rt.block_on(connect_js(&nats));
    rt.block_on(create_stream(&js, "IN", &["in.>"]));
    let subject = "in.orders.order.created".to_owned();
    rt.block_on(publish(
        &js,
        vec![
            (subject.clone(), Vec::new(), br#"{"n": 1}"#.to_vec()),
            (subject.clone(), Vec::new(), br#"{"n": "one"}"#.to_vec()),
            (subject.clone(), Vec::new(), b"n=1".to_vec()),
            (subject, vec![("weir-schema-version", "2".to_owned())], br#"{"n": 1}"#.to_vec()),
        ],
    ));
    let toml = format!(
        "{}{}",
        source_toml(&nats, ""),
        "[[schemas]]\ntopic = \"orders.order.created\"\n[[schemas.versions]]\nversion = 1\nschema = '{\"required\": [\"n\"], \"properties\": {\"n\": {\"type\": \"integer\"}}}'\n"
    );
    let server = Server::start(dir.path(), &toml);
    wait_for("one appended, three rejected", Duration::from_secs(30), || {
        let s = source_status(&server);
        if s["appended"] == 1 && s["rejected"] == 3 { Ok(()) } else { Err(s.to_string()) }
    });
    let last_error = source_status(&server)["last_error"].as_str().unwrap().to_owned();
    assert!(last_error.contains("unknown_schema_version"), "{last_error}");
    assert_eq!(head(&server), 1);
}

#[test]
fn every_keyword_of_the_subset_refuses_at_ingest_with_its_pointer() {
    let dir = tempfile::tempdir().unwrap();
    let schema = json!({
        "type": "object",
        "required": ["id"],
        "additionalProperties": false,
        "properties": {
            "id": {"type": "string", "minLength": 2, "maxLength": 4},
            "n": {"type": ["integer", "null"], "minimum": 0, "maximum": 10},
            "x": {"exclusiveMinimum": 0, "exclusiveMaximum": 1},
            "status": {"enum": ["new", "paid"]},
            "kind": {"const": "order"},
            "tags": {"type": "array", "minItems": 1, "maxItems": 2, "items": {"$ref": "#/$defs/tag"}},
            "one": {"oneOf": [{"type": "integer"}, {"type": "number", "minimum": 5}]},
            "any": {"anyOf": [{"type": "boolean"}, {"type": "string"}]},
            "all": {"allOf": [{"type": "integer"}, {"maximum": 3}]},
            "never": false,
            "meta": {"type": "object", "additionalProperties": {"type": "string"}}
        },
        "$defs": {"tag": {"type": "string", "maxLength": 3}}
    });
    let toml = format!("[[schemas]]\ntopic = \"t.t.t\"\n[[schemas.versions]]\nversion = 1\nschema = '{schema}'\n");
    let server = Server::start(dir.path(), &toml);
    let ok = json!({"id": "ab", "n": null, "x": 0.5, "status": "new", "kind": "order", "tags": ["a"], "one": 1,
                    "any": true, "all": 2, "meta": {"k": "v"}});
    assert_eq!(server.post("/v1/events", &json!({"topic": "t.t.t", "payload": ok})).0, 200);
    let cases = [
        (json!(1), "", "type"),
        (json!({}), "", "required"),
        (json!({"id": "ab", "zzz": 1}), "/zzz", "additionalProperties"),
        (json!({"id": "a"}), "/id", "minLength"),
        (json!({"id": "abcde"}), "/id", "maxLength"),
        (json!({"id": "ab", "n": 1.5}), "/n", "type"),
        (json!({"id": "ab", "n": -1}), "/n", "minimum"),
        (json!({"id": "ab", "n": 11}), "/n", "maximum"),
        (json!({"id": "ab", "x": 0}), "/x", "exclusiveMinimum"),
        (json!({"id": "ab", "x": 1}), "/x", "exclusiveMaximum"),
        (json!({"id": "ab", "status": "old"}), "/status", "enum"),
        (json!({"id": "ab", "kind": "refund"}), "/kind", "const"),
        (json!({"id": "ab", "tags": []}), "/tags", "minItems"),
        (json!({"id": "ab", "tags": ["a", "b", "c"]}), "/tags", "maxItems"),
        (json!({"id": "ab", "tags": ["a", "long"]}), "/tags/1", "maxLength"),
        (json!({"id": "ab", "one": 7}), "/one", "oneOf"),
        (json!({"id": "ab", "any": 1}), "/any", "anyOf"),
        (json!({"id": "ab", "all": 4}), "/all", "maximum"),
        (json!({"id": "ab", "never": 1}), "/never", "properties"),
        (json!({"id": "ab", "meta": {"k": 1}}), "/meta/k", "type"),
    ];
    for (payload, pointer, keyword) in cases {
        let answer = server.post("/v1/events", &json!({"topic": "t.t.t", "payload": payload}));
        let message = refused(&answer, 422, "schema_violation");
        let at = if pointer.is_empty() { "\"the payload\"".to_owned() } else { format!("\"{pointer}\"") };
        assert!(
            message.contains(&format!("at {at}:")) && message.ends_with(&format!("(keyword {keyword})")),
            "{payload}: {message}"
        );
    }
    assert_eq!(head(&server), 1, "nothing refused was stored");
}

#[test]
fn a_timer_whose_event_violates_its_schema_is_refused_when_scheduled() {
    let dir = tempfile::tempdir().unwrap();
    // The reminder schedules tasks.task.reminder {task, due_ms}: the schema
    // wants an `owner` it never has.
    let toml = r#"
[[pipelines]]
name = "tasks"
topics = ["tasks.task.created", "tasks.task.done"]
[[pipelines.handlers]]
name = "reminder"
plugin = "{REMINDER}"

[[schemas]]
topic = "tasks.task.reminder"
[[schemas.versions]]
version = 1
schema = '{"type": "object", "required": ["task", "owner"]}'
"#;
    let server = Server::start(dir.path(), toml);
    let task = json!({"topic": "tasks.task.created", "key": "t-1", "payload": {"remind_in_ms": 1}});
    assert_eq!(server.post("/v1/events", &task).0, 200);
    let mut entries = Vec::new();
    wait_for("the dead letter", || {
        entries = server.get("/v1/dlq").1["entries"].as_array().unwrap().clone();
        !entries.is_empty()
    });
    assert_eq!(entries[0]["code"], "schema_violation", "{entries:?}");
    assert_eq!(entries[0]["attempts"], 1, "final at once: {entries:?}");
    let message = entries[0]["message"].as_str().unwrap();
    assert!(message.contains("timer \"t-1\"") && message.contains("\"owner\""), "{message}");
    // No timer is pending and none fires: the log holds the task alone.
    let (_, timers) = server.get("/v1/subscriptions/tasks/reminder/timers");
    assert_eq!(timers["timers"], json!([]), "{timers}");
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(head(&server), 1);
}
