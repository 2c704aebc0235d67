//! A deploy's dry run (`weir plugin deploy … --replay-from`): a candidate
//! runs over history and its outputs are compared with the recorded ones,
//! with nothing written — against the real binary.

use std::time::Duration;

use base64::Engine as _;
use serde_json::{Value, json};
use weir_tests::{Server, plugins, weir};

const IDLE: Duration = Duration::from_secs(60);

const CONFIG: &str = r#"
[[pipelines]]
name = "swap"
topics = ["jobs.job.created"]
[[pipelines.handlers]]
name = "a"
plugin = "{VERSIONED_V1}"

[[pipelines]]
name = "count"
topics = ["tallies.tally.added"]
[[pipelines.handlers]]
name = "counter"
plugin = "{COUNTER}"
"#;

fn publish(server: &Server, topic: &str, key: &str, i: usize) {
    let (status, body) = server.post(
        "/v1/events",
        &json!({"topic": topic, "key": key, "payload": {"n": i}, "idempotency_key": format!("{topic}-{i}")}),
    );
    assert!(status == 200 || status == 201 || status == 202, "{status} {body}");
}

fn dry_run(server: &Server, handler: &str, module: &str, extra: Value) -> (u16, Value) {
    let mut body =
        json!({"module_base64": base64::engine::general_purpose::STANDARD.encode(std::fs::read(module).unwrap())});
    if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
        b.extend(e.clone());
    }
    server.post(&format!("/v1/plugins/{handler}/dry-run"), &body)
}

fn cli(server: &Server, dir: &std::path::Path, args: &[&str]) -> (i32, String) {
    let mut all = vec!["plugin", "deploy"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["--server", &server.url]);
    let out = weir(&all, &dir.join("cache"));
    (
        out.status.code().unwrap_or(-1),
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)),
    )
}

#[test]
fn a_dry_run_compares_outputs_with_the_recorded_ones_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), CONFIG);
    for i in 0..10 {
        publish(&server, "jobs.job.created", &format!("k-{i}"), i);
    }
    // Version 1 refuses keys starting with `bad`: dead-lettered, so not
    // handled, so not compared.
    publish(&server, "jobs.job.created", "bad-1", 10);
    publish(&server, "jobs.job.created", "bad-2", 11);
    for i in 0..5 {
        publish(&server, "tallies.tally.added", &format!("t-{}", i % 2), 100 + i);
    }
    assert!(server.wait_idle(IDLE));
    let (_, before_log) = server.get("/v1/log?limit=1000");
    let (_, before_plugins) = server.get("/v1/plugins");
    let (_, before_state) = server.get("/v1/subscriptions/count/counter/state");

    // The running version against itself: every compared event the same.
    let (status, same) = dry_run(&server, "swap/a", plugins::VERSIONED_V1, json!({}));
    assert_eq!(status, 200, "{same}");
    assert_eq!((same["events"].as_u64(), same["compared"].as_u64()), (Some(12), Some(10)), "{same}");
    assert_eq!((same["same"].as_u64(), same["different"].as_u64()), (Some(10), Some(0)), "{same}");
    assert_eq!((same["not_compared"].as_u64(), same["candidate_failed"].as_u64()), (Some(2), Some(2)), "{same}");
    assert_eq!(same["truncated"], false);

    // Version 2 emits `"version": 2`: every compared event differs, and the
    // report shows both sides.
    let (status, diff) = dry_run(&server, "swap/a", plugins::VERSIONED_V2, json!({}));
    assert_eq!(status, 200, "{diff}");
    assert_eq!((diff["compared"].as_u64(), diff["different"].as_u64()), (Some(10), Some(10)), "{diff}");
    assert_eq!(diff["candidate_failed"].as_u64(), Some(0), "version 2 handles `bad` keys: {diff}");
    let first = &diff["differences"][0];
    let recorded: Value = serde_json::from_str(first["recorded"][0]["payload"].as_str().unwrap()).unwrap();
    let candidate: Value = serde_json::from_str(first["candidate"][0]["payload"].as_str().unwrap()).unwrap();
    assert_eq!((recorded["version"].as_u64(), candidate["version"].as_u64()), (Some(1), Some(2)), "{first}");
    assert_eq!(recorded["event_id"], candidate["event_id"]);

    // A position and a limit.
    let from = before_log["events"][3]["seq"].as_u64().unwrap();
    let (_, part) = dry_run(&server, "swap/a", plugins::VERSIONED_V2, json!({"from": from.to_string(), "limit": 2}));
    assert_eq!((part["from"].as_u64(), part["events"].as_u64()), (Some(from), Some(2)), "{part}");
    assert_eq!(part["truncated"], true, "{part}");

    // A stateful handler runs with its state in memory, from empty: over the
    // whole log it reproduces its outputs, and its stored state is untouched.
    let (_, counted) = dry_run(&server, "count/counter", plugins::COUNTER, json!({}));
    assert_eq!((counted["compared"].as_u64(), counted["same"].as_u64()), (Some(5), Some(5)), "{counted}");

    // The CLI: exit 0 when the same, 1 when different; nothing deployed.
    let (code, text) = cli(&server, dir.path(), &["swap/a", plugins::VERSIONED_V1, "--replay-from", "beginning"]);
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("10 same, 0 different"), "{text}");
    let (code, text) = cli(&server, dir.path(), &["swap/a", plugins::VERSIONED_V2, "--replay-from", "0"]);
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("0 same, 10 different") && text.contains("nothing deployed"), "{text}");

    // Nothing was written: the log, the registry and the state are as before.
    assert_eq!(server.get("/v1/log?limit=1000").1, before_log);
    assert_eq!(server.get("/v1/plugins").1, before_plugins);
    assert_eq!(server.get("/v1/subscriptions/count/counter/state").1, before_state);
}

#[test]
fn a_bad_dry_run_is_refused_with_a_clear_code() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), CONFIG);
    let (status, body) = dry_run(&server, "swap/nobody", plugins::VERSIONED_V2, json!({}));
    assert_eq!(status, 404, "{body}");
    let (status, body) = server.post("/v1/plugins/swap/a/dry-run", &json!({"module_base64": "AGFzbQ=="}));
    assert_eq!(status, 422, "{body}");
    let (status, body) = dry_run(&server, "swap/a", plugins::VERSIONED_V2, json!({"limit": 0}));
    assert_eq!((status, body["error"]["code"].as_str()), (400, Some("invalid_limit")), "{body}");
    let (status, body) = dry_run(&server, "swap/a", plugins::VERSIONED_V2, json!({"limit": 100_001}));
    assert_eq!((status, body["error"]["code"].as_str()), (400, Some("invalid_limit")), "{body}");
    let (status, body) = dry_run(&server, "swap/a", plugins::VERSIONED_V2, json!({"from": "yesterday"}));
    assert_eq!((status, body["error"]["code"].as_str()), (400, Some("invalid_from")), "{body}");
    let (code, text) =
        cli(&server, dir.path(), &["swap/a", plugins::VERSIONED_V2, "--replay-from", "0", "--test-events", "x.jsonl"]);
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("do not go together"), "{text}");
}
