//! `weir exec` and `weir inspect` as real processes on real files, good and
//! bad input alike: a clear error and exit code, never a panic.

use std::path::Path;
use std::process::Output;

use serde_json::Value;
use weir_tests::{plugins, weir};

fn stdout_lines(out: &Output) -> Vec<Value> {
    String::from_utf8_lossy(&out.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

fn stderr(out: &Output) -> String {
    let text = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!text.contains("panicked"), "weir panicked: {text}");
    text
}

fn samples() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../samples/orders.jsonl")
}

#[test]
fn exec_runs_the_sample_file() {
    let cache = tempfile::tempdir().unwrap();
    let out =
        weir(&["exec", "--plugin", plugins::ORDER_VALIDATOR, "--input", samples().to_str().unwrap()], cache.path());
    assert!(out.status.success(), "{}", stderr(&out));
    let lines = stdout_lines(&out);
    assert_eq!(lines.len(), 6);
    assert_eq!(lines[0]["outcome"], "ok");
    assert_eq!(lines[0]["emits"][0]["topic"], "orders.order.validated");
    assert_eq!(lines[0]["emits"][0]["payload"]["total_cents"], 4_695);
    assert_eq!(lines[2]["code"], "handler_reject");
    assert!(stderr(&out).contains("3 ok, 3 failed, 0 invalid"));
}

#[test]
fn exec_reads_stdin_and_applies_config_and_limits() {
    use std::io::Write;
    let cache = tempfile::tempdir().unwrap();
    let mut child = std::process::Command::new(weir_tests::weir_bin())
        .args(["exec", "--plugin", plugins::LOOPER, "--deadline-ms", "100"])
        .env("WEIR_CACHE_DIR", cache.path())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"{\"topic\":\"a.b.c\",\"key\":\"evil\"}\n\n{\"topic\":\"a.b.c\",\"key\":\"fine\"}\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let lines = stdout_lines(&out);
    assert_eq!(lines.len(), 2, "the blank line is skipped");
    assert_eq!(lines[0]["code"], "timeout");
    assert_eq!(lines[1]["outcome"], "ok");
    assert_eq!(lines[1]["line"], 3);
}

#[test]
fn exec_reports_malformed_lines_and_carries_on() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("events.jsonl");
    std::fs::write(&input, "{\"topic\":\"a.b.c\"}\n{not json\n{\"topic\":\"Bad Topic\"}\n{\"topic\":\"a.b.c\"}\n")
        .unwrap();
    let out = weir(&["exec", "--plugin", plugins::PANICKER, "--input", input.to_str().unwrap()], dir.path());
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains("events.jsonl:2: invalid event JSON"), "{err}");
    assert!(err.contains("<domain>.<entity>.<event>"), "{err}");
    let lines = stdout_lines(&out);
    let outcomes: Vec<&str> = lines.iter().map(|l| l["outcome"].as_str().unwrap()).collect();
    assert_eq!(outcomes, ["ok", "invalid_input", "invalid_input", "ok"]);
    assert_eq!(lines[1]["code"], "invalid_json");
    assert_eq!(lines[2]["code"], "invalid_topic");
}

#[test]
fn exec_refuses_missing_files_and_non_wasm() {
    let dir = tempfile::tempdir().unwrap();
    let out = weir(&["exec", "--plugin", "/no/such/plugin.wasm", "--input", "-"], dir.path());
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("cannot read /no/such/plugin.wasm"));

    let out = weir(&["exec", "--plugin", plugins::PANICKER, "--input", "/no/such/events.jsonl"], dir.path());
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("cannot open input file /no/such/events.jsonl"));

    let text = dir.path().join("notes.wasm");
    std::fs::write(&text, "just some text").unwrap();
    let out = weir(&["exec", "--plugin", text.to_str().unwrap()], dir.path());
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("not a WebAssembly module"));

    let out = weir(&["exec", "--plugin", plugins::ORDER_VALIDATOR, "--config", "{oops"], dir.path());
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("--config is not valid JSON"));

    let out = weir(&["exec", "--plugin", plugins::ORDER_VALIDATOR, "--config", r#"{"currencies":[]}"#], dir.path());
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("at least one currency"));

    let out = weir(&["exec", "--plugin", plugins::WASI_IMPORT], dir.path());
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("wasi_snapshot_preview1::fd_write"));
}

#[test]
fn usage_errors_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let out = weir(&["exec"], dir.path());
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("--plugin"));
    let out = weir(&["no-such-command"], dir.path());
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn inspect_accepts_a_good_plugin_and_explains_refusals() {
    let dir = tempfile::tempdir().unwrap();
    let out = weir(&["inspect", plugins::ORDER_VALIDATOR], dir.path());
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    for needle in ["abi version:  1", "order-validator", "weir::log", "weir_handle", "accepted:     yes"] {
        assert!(text.contains(needle), "missing {needle:?} in\n{text}");
    }

    let out = weir(&["inspect", "--json", plugins::WASI_IMPORT], dir.path());
    assert_eq!(out.status.code(), Some(1));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["accepted"], false);
    assert_eq!(report["code"], "forbidden_import");
    assert!(report["imports"].as_array().unwrap().iter().any(|i| i["module"] == "wasi_snapshot_preview1"));

    let out = weir(&["inspect", "--json", plugins::WRONG_ABI], dir.path());
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["abi_version"], 2);
    assert_eq!(report["code"], "abi_mismatch");

    let out = weir(&["inspect", "/no/such.wasm"], dir.path());
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("cannot read /no/such.wasm"));

    let text = dir.path().join("x.wasm");
    std::fs::write(&text, [0u8; 3]).unwrap();
    let out = weir(&["inspect", text.to_str().unwrap()], dir.path());
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).contains("[not_wasm]"));
}

/// A webhook receiver that answers every request `410 Gone` (the sink
/// turns itself off); its URL.
fn gone_receiver() -> String {
    use std::io::{Read as _, Write as _};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for mut conn in listener.incoming().flatten() {
            let mut buf = [0u8; 65536];
            let _ = conn.read(&mut buf);
            let _ = conn.write_all(b"HTTP/1.1 410 Gone\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
        }
    });
    url
}

#[test]
fn status_lists_the_durable_consumers_and_why_a_subscription_or_sink_is_not_ok() {
    use serde_json::json;
    let dir = tempfile::tempdir().unwrap();
    let server = weir_tests::Server::start(
        dir.path(),
        r#"
[[pipelines]]
name = "flaky"
topics = ["flaky.event.created"]
[[pipelines.handlers]]
name = "flaky"
plugin = "{FLAKY}"
retry = { max_attempts = 10, initial_backoff = "1h", max_backoff = "1h" }
[[sinks]]
name = "hook"
topics = ["orders.>"]
url = "{GONE}"
secret_env = "PATH"
"#
        .replace("{GONE}", &gone_receiver())
        .as_str(),
    );
    let (status, body) = server.put_with(
        "/v1/consumers/billing",
        &[("content-type", "application/json")],
        json!({"topics": ["orders.>", "payments.>"]}).to_string().as_bytes(),
    );
    assert_eq!(status, 201, "{body}");
    let events: Vec<Value> = (0..3)
        .map(|i| json!({"topic": "orders.order.created", "key": format!("o{i}")}))
        .chain([json!({"topic": "flaky.event.created", "key": "f"})])
        .collect();
    assert_eq!(server.post("/v1/events", &Value::Array(events)).0, 200);
    let (status, fetched) = server.post("/v1/consumers/billing/fetch", &json!({"max": 1}));
    assert_eq!((status, fetched["deliveries"].as_array().map(Vec::len)), (200, Some(1)), "{fetched}");
    // The flaky handler asked for a retry (and waits an hour for it).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    // And the sink met the 410 (the consumer's orders reach it too).
    let (consumer, sink) = loop {
        let (_, status) = server.get("/v1/status");
        let subs = status["subscriptions"].as_array().unwrap();
        let sink = subs.iter().find(|s| s["state"] == "disabled");
        if subs.iter().any(|s| s["name"] == "flaky/flaky" && s["state"] == "retrying")
            && let Some(sink) = sink
        {
            break (status["consumers"][0].clone(), sink.clone());
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the flaky handler never retried or the sink never stopped: {status}"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    let why = sink["stopped"].as_str().unwrap();
    assert!(why.contains("410"), "{sink}");

    let out = weir(&["status", "--server", &server.url], dir.path());
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(text.lines().any(|l| l.starts_with("CONSUMER") && l.contains("IN FLIGHT")), "{text}");
    let row: Vec<&str> = text
        .lines()
        .find(|l| l.starts_with("billing "))
        .unwrap_or_else(|| panic!("{text}"))
        .split_whitespace()
        .collect();
    let number = |field: &str| consumer[field].as_u64().unwrap().to_string();
    assert_eq!(
        row,
        [
            "billing",
            &number("lag"),
            &number("in_flight"),
            &number("dlq"),
            &number("delivered"),
            &number("acked"),
            "orders.>,payments.>"
        ],
        "{text}"
    );
    assert_eq!((consumer["delivered"].as_u64(), consumer["acked"].as_u64()), (Some(1), Some(0)), "{consumer}");
    assert!(consumer["in_flight"].as_u64() >= Some(1), "{consumer}");
    // Why the flaky subscription is not ok: its last failure.
    assert!(text.lines().any(|l| l.trim_start().starts_with("flaky/flaky retrying: handler_retry")), "{text}");
    // And why the sink is off.
    let line = format!("{} disabled: {why}", sink["name"].as_str().unwrap());
    assert!(text.lines().any(|l| l.trim_start() == line), "{line:?} in {text}");
}
