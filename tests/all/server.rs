//! The real `weir run` process: the HTTP API (JSON envelope and CloudEvents),
//! `weir publish` and `weir dlq`, graceful shutdown, and bad input of every
//! kind answered with a clear error.

use std::time::Duration;

use serde_json::{Value, json};
use weir_tests::{Server, weir, weir_bin};

const PIPELINE: &str = weir_tests::ORDERS;

fn order(id: &str, currency: &str) -> Value {
    json!({ "topic": "orders.order.created", "key": id,
            "payload": { "order_id": id, "customer": "c", "currency": currency,
                         "items": [{ "sku": "a", "qty": 1, "price_cents": 100 }] } })
}

#[test]
fn ingest_in_every_format_and_duplicates_are_reported() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(dir.path(), PIPELINE);

    let (status, body) = server.post("/v1/events", &order("o-1", "EUR"));
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["events"][0]["duplicate"], false);

    let (status, body) = server.post("/v1/events", &json!([order("o-2", "EUR"), order("o-3", "EUR")]));
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["events"].as_array().unwrap().len(), 2);

    let ce = json!({ "specversion": "1.0", "type": "orders.order.created", "source": "/shop", "id": "ce-1",
                     "subject": "o-4", "data": order("o-4", "EUR")["payload"] });
    let (status, first) =
        server.try_post("/v1/events", "application/cloudevents+json", ce.to_string().as_bytes()).unwrap();
    assert_eq!(status, 200, "{first}");
    // The same CloudEvent (source + id) again: a duplicate with the original id.
    let (_, again) = server.try_post("/v1/events", "application/cloudevents+json", ce.to_string().as_bytes()).unwrap();
    assert_eq!(again["events"][0]["duplicate"], true);
    assert_eq!(again["events"][0]["id"], first["events"][0]["id"]);

    let batch = json!([{ "specversion": "1.0", "type": "orders.order.created", "source": "/shop", "id": "ce-2",
                         "subject": "o-5", "data": order("o-5", "EUR")["payload"] }]);
    let (status, _) =
        server.try_post("/v1/events", "application/cloudevents-batch+json", batch.to_string().as_bytes()).unwrap();
    assert_eq!(status, 200);

    let payload = order("o-6", "EUR")["payload"].to_string();
    let (status, body) = server.post_with(
        "/v1/events",
        &[
            ("ce-specversion", "1.0"),
            ("ce-type", "orders.order.created"),
            ("ce-source", "/shop"),
            ("ce-id", "ce-3"),
            ("ce-subject", "o-6"),
            ("content-type", "application/json"),
        ],
        payload.as_bytes(),
    );
    assert_eq!(status, 200, "{body}");

    assert!(server.wait_idle(Duration::from_secs(30)));
    let (_, status) = server.get("/v1/status");
    for sub in status["subscriptions"].as_array().unwrap() {
        assert_eq!(sub["stats"]["handled"], 6, "{sub}");
    }
    assert!(server.terminate().success(), "graceful shutdown exits 0: {}", server.stderr());
    assert!(server.stderr().contains("stopped cleanly"));
}

#[test]
fn bad_requests_get_clear_errors_and_store_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let toml = format!("[ingest]\nmax_payload_bytes = 1000\n{PIPELINE}");
    let server = Server::start(dir.path(), &toml);
    let cases: [(&str, &[u8], u16, &str); 6] = [
        ("application/json", b"{not json", 400, "invalid_json"),
        ("application/json", br#"{"topic":"Orders.created"}"#, 400, "invalid_topic"),
        ("application/json", br#"[{"topic":"a.b.c"},{"topic":"a.b.c","surprise":1}]"#, 400, "invalid_json"),
        (
            "application/cloudevents+json",
            br#"{"specversion":"1.0","type":"a.b.c","source":"/s"}"#,
            400,
            "invalid_cloudevent",
        ),
        ("text/csv", b"a,b", 415, "unsupported_media_type"),
        ("application/json", b"[]", 400, "empty"),
    ];
    for (content_type, body, status, code) in cases {
        let (got, answer) = server.try_post("/v1/events", content_type, body).unwrap();
        assert_eq!((got, answer["error"]["code"].as_str().unwrap()), (status, code), "{answer}");
    }
    let big = json!({ "topic": "a.b.c", "payload": "x".repeat(2000) });
    let (status, answer) = server.post("/v1/events", &big);
    assert_eq!(status, 413);
    assert!(answer["error"]["message"].as_str().unwrap().contains("max_payload_bytes"));
    let (status, answer) = server.post("/v1/events", &json!([order("o-1", "EUR"), { "topic": "x" }]));
    assert_eq!(status, 400);
    assert_eq!(answer["error"]["index"], 1);
    let (_, status) = server.get("/v1/status");
    assert_eq!(status["head"], 0, "nothing was stored");
}

#[test]
fn publish_and_dlq_commands_drive_a_running_server() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), PIPELINE);
    let events = dir.path().join("events.jsonl");
    let lines: Vec<String> =
        (0..300).map(|i| order(&format!("o-{i}"), if i % 100 == 0 { "DOGE" } else { "EUR" }).to_string()).collect();
    std::fs::write(&events, lines.join("\n")).unwrap();
    let cache = dir.path().join("cache");
    let out = weir(&["publish", "--server", &server.url, "--file", events.to_str().unwrap(), "--batch", "64"], &cache);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("published 300 events (0 duplicates)"));

    let out = weir(
        &[
            "publish",
            "--server",
            &server.url,
            "--topic",
            "orders.order.created",
            "--key",
            "o-x",
            "--data",
            &order("o-x", "EUR")["payload"].to_string(),
        ],
        &cache,
    );
    assert!(out.status.success());
    let answer: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(answer["duplicate"], false);

    assert!(server.wait_idle(Duration::from_secs(60)));
    let out = weir(&["dlq", "--server", &server.url, "list"], &cache);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(text.matches("handler_reject").count(), 3, "{text}");
    assert!(text.contains("DOGE"));

    let out = weir(&["dlq", "--server", &server.url, "list", "--json"], &cache);
    let entries: Value = serde_json::from_slice(&out.stdout).unwrap();
    let seq = entries[0]["seq"].as_u64().unwrap();
    let out = weir(&["dlq", "--server", &server.url, "show", "orders/validator", &seq.to_string()], &cache);
    let shown: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(shown["event"]["payload"]["currency"], "DOGE");

    // Purge needs a filter or --all, and --yes.
    let out = weir(&["dlq", "--server", &server.url, "purge", "--all"], &cache);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--yes"));
    let out = weir(&["dlq", "--server", &server.url, "purge", "--seq", &seq.to_string(), "--yes"], &cache);
    assert!(String::from_utf8_lossy(&out.stdout).contains("purged: 1"));

    // Redrive the rest: they fail again (same handler, same config) and come back.
    let out = weir(&["dlq", "--server", &server.url, "redrive", "--code", "handler_reject"], &cache);
    assert!(String::from_utf8_lossy(&out.stdout).contains("redriven: 2"), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(server.wait_idle(Duration::from_secs(30)));
    let (_, list) = server.get("/v1/dlq");
    assert_eq!(list["entries"].as_array().unwrap().len(), 2);

    let out = weir(&["status", "--server", &server.url], &cache);
    let text = String::from_utf8_lossy(&out.stdout);
    let row = text
        .lines()
        .find(|l| l.split_whitespace().take(2).eq(["orders", "validator"]))
        .unwrap_or_else(|| panic!("{text}"));
    assert_eq!(row.split_whitespace().nth(8), Some("2"), "DLQ column: {row}");

    // No server: a clear error.
    let out = weir(&["status", "--server", "http://127.0.0.1:9"], &cache);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot reach weir"));
}

#[test]
fn admin_endpoints_need_the_token_when_one_is_set() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(dir.path(), PIPELINE);
    assert!(server.terminate().success());
    // Rewrite the config with a token.
    let text =
        std::fs::read_to_string(&server.config).unwrap().replace("[http]\n", "[http]\nadmin_token = \"s3cret\"\n");
    std::fs::write(&server.config, text).unwrap();
    server.restart();
    let body = br#"{"all": true}"#;
    let (status, _) = server.try_post("/v1/dlq/redrive", "application/json", body).unwrap();
    assert_eq!(status, 401);
    let (status, _) = server.post_with("/v1/dlq/purge", &[("authorization", "Bearer wrong")], body);
    assert_eq!(status, 401);
    let (status, answer) = server.post_with(
        "/v1/dlq/purge",
        &[("authorization", "Bearer s3cret"), ("content-type", "application/json")],
        body,
    );
    assert_eq!(status, 200, "{answer}");
}

fn run_fails(dir: &std::path::Path, config: &str, needle: &str) {
    let path = dir.join("weir.toml");
    std::fs::write(&path, config).unwrap();
    let out = std::process::Command::new(weir_bin()).args(["run", "--config"]).arg(&path).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains(needle), "expected {needle:?} in: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn bad_configuration_and_bad_stores_are_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let head = format!("data_dir = {:?}\n[http]\nlisten = \"127.0.0.1:0\"\n", data.display().to_string());
    run_fails(
        dir.path(),
        &format!(
            "{head}[[pipelines]]\nname = \"p\"\ntopics = [\"a.b.c\"]\n[[pipelines.handlers]]\nname = \"h\"\nplugin = \"/no/such/plugin.wasm\"\n"
        ),
        "pipelines[0].handlers[0].plugin: no such file",
    );
    run_fails(dir.path(), &format!("{head}[http2]\n"), "unknown field");
    run_fails(dir.path(), "[http]\nlisten = \"0.0.0.0:0\"\n", "refusing to listen on 0.0.0.0");
    let wasi = weir_tests::plugins::WASI_IMPORT;
    run_fails(
        dir.path(),
        &format!(
            "{head}[[pipelines]]\nname = \"p\"\ntopics = [\"a.b.c\"]\n[[pipelines.handlers]]\nname = \"h\"\nplugin = {wasi:?}\n"
        ),
        "wasi_snapshot_preview1::fd_write",
    );

    // A file that is not a store.
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join("weir.redb"), vec![0x5a; 8192]).unwrap();
    run_fails(dir.path(), &head, "corrupt or not a Weir store");
    std::fs::remove_file(data.join("weir.redb")).unwrap();

    // A second `weir run` on the same data directory.
    let mut first = Server::start(dir.path(), PIPELINE);
    let text = std::fs::read_to_string(&first.config).unwrap();
    let other = dir.path().join("second.toml");
    std::fs::write(&other, text.replace(&first.url.replace("http://", ""), "127.0.0.1:0")).unwrap();
    let out = std::process::Command::new(weir_bin()).args(["run", "--config"]).arg(&other).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("already open"), "{stderr}");
    assert!(first.terminate().success());

    // A truncated store: refused with a clear error, or repaired and served,
    // never a panic.
    let file = data.join("weir.redb");
    let len = std::fs::metadata(&file).unwrap().len();
    std::fs::OpenOptions::new().write(true).open(&file).unwrap().set_len(len / 3).unwrap();
    let stderr_file = dir.path().join("truncated.stderr");
    let mut child = std::process::Command::new(weir_bin())
        .args(["run", "--config"])
        .arg(&other)
        .stderr(std::fs::File::create(&stderr_file).unwrap())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if std::time::Instant::now() > deadline {
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let stderr = std::fs::read_to_string(&stderr_file).unwrap();
    match status {
        Some(status) => {
            assert_eq!(status.code(), Some(1), "{stderr}");
            assert!(stderr.contains("store"), "{stderr}");
        }
        None => {
            // redb repaired the file and the server is up.
            assert!(stderr.contains("listening"), "{stderr}");
            let _ = child.kill();
            let _ = child.wait();
        }
    }
    assert!(!stderr.contains("panicked"), "{stderr}");
}
