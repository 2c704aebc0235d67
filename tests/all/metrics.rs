//! `GET /metrics`: numbers that follow a backlog the test creates and then
//! drains, and valid Prometheus text (`promtool check metrics`, in a test
//! ignored by default because it needs promtool: Debian package
//! `prometheus`; `.ci/run` installs it and runs the ignored tests).

use std::io::Write as _;
use std::time::Duration;

use serde_json::json;
use weir_tests::Server;

const SLOW: &str = r#"
[engine]
fuel = true
[[pipelines]]
name = "work"
topics = ["jobs.job.created"]
[[pipelines.handlers]]
name = "slow"
plugin = "{LOOPER}"
limits = { deadline = "200ms" }
retry = { max_attempts = 1 }
ready = { max_dlq = 5 }
[[pipelines.handlers]]
name = "audit"
plugin = "{AUDIT_LOGGER}"
"#;

fn scrape(server: &Server) -> String {
    let (status, body) = server.get("/metrics");
    assert_eq!(status, 200);
    body.as_str().expect("text, not JSON").to_owned()
}

/// The value of the sample line `name{labels}`.
fn value(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|rest| rest.strip_prefix(' ')))
        .unwrap_or_else(|| panic!("no series {series} in\n{text}"))
        .parse()
        .unwrap()
}

fn promtool(text: &str) {
    let Ok(mut child) = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
    else {
        panic!("promtool is not installed (Debian package `prometheus`): this test needs it");
    };
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn metrics_follow_a_backlog_as_it_drains() {
    backlog_scenario(|_| {});
}

#[test]
#[ignore = "needs promtool (Debian package prometheus); run with `cargo test -- --include-ignored`"]
fn metrics_are_valid_prometheus_text_through_a_backlog() {
    backlog_scenario(promtool);
}

/// A backlog on a slow handler, then drained; every scrape (before, busy,
/// after) is also given to `check`.
fn backlog_scenario(check: fn(&str)) {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), SLOW);
    let before = scrape(&server);
    check(&before);
    let (code, ready) = server.get("/ready");
    assert_eq!((code, ready["status"].as_str()), (200, Some("ready")), "{ready}");
    assert_eq!(value(&before, "weir_subscription_events_total{subscription=\"work/audit\",outcome=\"handled\"}"), 0.0);

    // Ten events the slow handler spends its whole 200 ms deadline on: a
    // backlog of about two seconds.
    let events: Vec<_> = (0..10).map(|i| json!({ "topic": "jobs.job.created", "key": "evil", "payload": i })).collect();
    let (status, _) = server.post("/v1/events", &json!(events));
    assert_eq!(status, 200);
    std::thread::sleep(Duration::from_millis(300));
    let busy = scrape(&server);
    check(&busy);
    let depth = value(&busy, "weir_subscription_queue_depth{subscription=\"work/slow\"}");
    let parked_or_waiting = depth + value(&busy, "weir_subscription_parked{subscription=\"work/slow\"}");
    assert!(depth > 0.0, "a backlog while the slow handler works: {depth}");
    assert!(parked_or_waiting > 0.0);

    assert!(server.wait_idle(Duration::from_secs(30)));
    let after = scrape(&server);
    check(&after);
    assert_eq!(value(&after, "weir_subscription_queue_depth{subscription=\"work/slow\"}"), 0.0);
    assert_eq!(value(&after, "weir_subscription_dlq_depth{subscription=\"work/slow\"}"), 10.0, "all timed out");
    assert_eq!(value(&after, "weir_subscription_events_total{subscription=\"work/audit\",outcome=\"handled\"}"), 10.0);
    assert_eq!(value(&after, "weir_processing_seconds_count{subscription=\"work/slow\"}"), 10.0);
    assert_eq!(value(&after, "weir_subscription_failures_total{subscription=\"work/slow\",code=\"timeout\"}"), 10.0);
    // Each slow invocation took its 200 ms deadline: none is in the ≤ 0.1 s buckets.
    assert_eq!(value(&after, "weir_processing_seconds_bucket{subscription=\"work/slow\",le=\"0.1\"}"), 0.0);
    assert!(value(&after, "weir_processing_seconds_sum{subscription=\"work/slow\"}") >= 2.0);
    assert_eq!(value(&after, "weir_end_to_end_seconds_count{subscription=\"work/audit\"}"), 10.0);
    assert!(value(&after, "weir_store_commits_total") > value(&before, "weir_store_commits_total"));
    assert_eq!(value(&after, "weir_ingest_events_total"), 10.0);
    assert!(value(&after, "weir_store_commit_seconds_count") >= 1.0);
    assert_eq!(value(&after, "weir_store_commit_commands_count"), value(&after, "weir_store_commits_total"));
    assert_eq!(value(&after, "weir_store_commit_commands_sum"), value(&after, "weir_store_commands_total"));
    assert_eq!(value(&after, "weir_subscription_lag_seconds{subscription=\"work/audit\"}"), 0.0);
    // Per-plugin numbers: the audit logger ran in a metered sandbox, and its
    // memory is at least one 64 KiB Wasm page.
    assert!(value(&after, "weir_plugin_fuel_consumed_total{subscription=\"work/audit\"}") > 0.0);
    assert!(value(&after, "weir_plugin_memory_high_water_bytes{subscription=\"work/audit\"}") >= 65536.0);
    assert_eq!(
        value(&after, "weir_plugin_log_lines_total{subscription=\"work/audit\",outcome=\"written\"}"),
        10.0,
        "one line per event, under the default rate limit"
    );

    // Ten dead letters is past the slow subscription's `max_dlq = 5`:
    // degraded, still serving (200), and the reason names it.
    let (code, ready) = server.get("/ready");
    assert_eq!((code, ready["status"].as_str()), (200, Some("degraded")), "{ready}");
    let reasons = ready["reasons"].to_string();
    assert!(reasons.contains("work/slow") && reasons.contains("10 DLQ entries"), "{reasons}");
    assert!(!reasons.contains("work/audit"), "{reasons}");

    // `weir status` shows the slow subscription failing, with its DLQ count.
    let out = weir_tests::weir(&["status", "--server", &server.url], &dir.path().join("cache"));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("ready: degraded"), "{text}");
    let row = |handler: &str| -> Vec<String> {
        let row = text
            .lines()
            .map(|l| l.split_whitespace().map(str::to_owned).collect::<Vec<_>>())
            .find(|f| f.len() == 11 && f[0] == "work" && f[1] == handler);
        row.unwrap_or_else(|| panic!("{text}"))
    };
    // PIPELINE HANDLER STATE DEPTH PARKED EVENTS/S P50 P99 DLQ HANDLED PLUGIN@VERSION
    let slow = row("slow");
    assert_eq!(slow[2], "failing", "{slow:?}");
    assert_eq!(slow[8], "10", "DLQ column: {slow:?}");
    let audit = row("audit");
    assert_eq!(audit[2], "ok");
    assert_eq!(audit[9], "10", "handled: {audit:?}");
    // The ten events were handled within the last few seconds: a rate and
    // latency quantiles over the recent window.
    assert!(audit[5].parse::<f64>().unwrap() > 0.0, "events/s: {audit:?}");
    assert!(audit[7].parse::<f64>().unwrap() >= audit[6].parse::<f64>().unwrap(), "p99 >= p50: {audit:?}");
    assert!(audit[10].starts_with("audit-logger@"), "{audit:?}");

    // --json for scripts; --watch refreshes (here twice, then stops).
    let out = weir_tests::weir(&["status", "--json", "--server", &server.url], &dir.path().join("cache"));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["ready"]["status"], "degraded");
    let audit = json["subscriptions"].as_array().unwrap().iter().find(|s| s["name"] == "work/audit").unwrap();
    assert!(audit["rate"]["end_to_end_p99_ms"].as_f64().is_some(), "{audit}");
    assert_eq!(audit["topics"], json!(["jobs.job.created"]));
    let out = weir_tests::weir(
        &["status", "--watch", "--interval", "100ms", "--count", "2", "--server", &server.url],
        &dir.path().join("cache"),
    );
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout).matches("log head:").count(), 2);
}

/// JSON logs: each plugin line names its subscription, plugin, version and
/// event, inside the invocation's span; a chatty plugin is cut to its
/// `log_lines_per_second`, the cut is reported, and every line is counted.
#[test]
fn plugin_logs_are_attributed_json_and_rate_limited() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_with_args(
        dir.path(),
        r#"
[[pipelines]]
name = "work"
topics = ["jobs.job.created"]
[[pipelines.handlers]]
name = "audit"
plugin = "{AUDIT_LOGGER}"
limits = { log_lines_per_second = 5 }
"#,
        &["--log-format", "json", "--log", "warn,weir::plugin=info,weir::invoke=debug"],
    );
    let batch = |n: usize| -> Vec<serde_json::Value> {
        (0..n).map(|i| json!({ "topic": "jobs.job.created", "key": format!("k{i}"), "payload": i })).collect()
    };
    let started = std::time::Instant::now();
    assert_eq!(server.post("/v1/events", &json!(batch(150))).0, 200);
    assert!(server.wait_idle(Duration::from_secs(30)));
    // The drop report comes with the next logged line a second later.
    std::thread::sleep(Duration::from_millis(1100));
    assert_eq!(server.post("/v1/events", &json!(batch(50))).0, 200);
    assert!(server.wait_idle(Duration::from_secs(30)));
    let elapsed = started.elapsed().as_secs_f64();

    let stderr = server.stderr();
    let lines: Vec<serde_json::Value> = stderr
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let plugin_lines: Vec<&serde_json::Value> =
        lines.iter().filter(|l| l["target"] == "weir::plugin" && l["level"] == "INFO").collect();
    assert!(!plugin_lines.is_empty(), "{stderr}");
    // A bucket of 5 plus 5 a second: far fewer than the 200 lines logged.
    let allowed = 5.0 + 5.0 * elapsed + 1.0;
    assert!((plugin_lines.len() as f64) <= allowed, "{} lines in {elapsed:.1} s", plugin_lines.len());
    let line = plugin_lines[0];
    assert_eq!(line["subscription"], "work/audit", "{line}");
    assert_eq!(line["plugin"], "audit-logger", "{line}");
    assert!(line["event_id"].as_str().is_some_and(|id| id.len() == 26), "{line}");
    assert!(line["plugin_version"].as_str().is_some_and(|v| v.len() == 16), "{line}");
    assert!(line["message"].as_str().is_some_and(|m| m.contains("jobs.job.created")), "{line}");
    // The invocation's span travels with the line.
    let span = &line["span"];
    assert_eq!(span["name"], "invoke", "{line}");
    assert_eq!(span["topic"], "jobs.job.created", "{line}");
    assert_eq!(span["event_id"], line["event_id"], "{line}");
    assert!(span["correlation_id"].is_string() || span["correlation_id"].is_null(), "{line}");
    let report = lines
        .iter()
        .find(|l| l["message"] == "plugin log lines dropped by the rate limit")
        .unwrap_or_else(|| panic!("no drop report in\n{stderr}"));
    assert!(report["dropped"].as_u64().is_some_and(|n| n > 0), "{report}");

    // Every line is accounted for: written or dropped.
    let text = scrape(&server);
    let written = value(&text, "weir_plugin_log_lines_total{subscription=\"work/audit\",outcome=\"written\"}");
    let dropped = value(&text, "weir_plugin_log_lines_total{subscription=\"work/audit\",outcome=\"dropped\"}");
    assert_eq!(written + dropped, 200.0);
    assert_eq!(written, plugin_lines.len() as f64);
}
