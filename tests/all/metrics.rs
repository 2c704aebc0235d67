//! `GET /metrics`: valid Prometheus text (checked with `promtool check
//! metrics` when it is installed; `.ci/run` installs it and sets
//! WEIR_REQUIRE_PROMTOOL), and numbers that follow a backlog the test creates
//! and then drains.

use std::io::Write as _;
use std::time::Duration;

use serde_json::json;
use weir_tests::Server;

const SLOW: &str = r#"
[[pipelines]]
name = "work"
topics = ["jobs.job.created"]
[[pipelines.handlers]]
name = "slow"
plugin = "{LOOPER}"
limits = { deadline = "200ms" }
retry = { max_attempts = 1 }
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
        assert!(std::env::var_os("WEIR_REQUIRE_PROMTOOL").is_none(), "promtool is required but not installed");
        eprintln!("promtool not installed: format check skipped");
        return;
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
fn metrics_are_valid_and_follow_a_backlog_as_it_drains() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), SLOW);
    let before = scrape(&server);
    promtool(&before);
    assert_eq!(value(&before, "weir_subscription_events_total{subscription=\"work/audit\",outcome=\"handled\"}"), 0.0);

    // Ten events the slow handler spends its whole 200 ms deadline on: a
    // backlog of about two seconds.
    let events: Vec<_> = (0..10).map(|i| json!({ "topic": "jobs.job.created", "key": "evil", "payload": i })).collect();
    let (status, _) = server.post("/v1/events", &json!(events));
    assert_eq!(status, 200);
    std::thread::sleep(Duration::from_millis(300));
    let busy = scrape(&server);
    promtool(&busy);
    let depth = value(&busy, "weir_subscription_queue_depth{subscription=\"work/slow\"}");
    let parked_or_waiting = depth + value(&busy, "weir_subscription_parked{subscription=\"work/slow\"}");
    assert!(depth > 0.0, "a backlog while the slow handler works: {depth}");
    assert!(parked_or_waiting > 0.0);

    assert!(server.wait_idle(Duration::from_secs(30)));
    let after = scrape(&server);
    promtool(&after);
    assert_eq!(value(&after, "weir_subscription_queue_depth{subscription=\"work/slow\"}"), 0.0);
    assert_eq!(value(&after, "weir_subscription_dlq_depth{subscription=\"work/slow\"}"), 10.0, "all timed out");
    assert_eq!(value(&after, "weir_subscription_events_total{subscription=\"work/audit\",outcome=\"handled\"}"), 10.0);
    assert_eq!(value(&after, "weir_processing_seconds_count{subscription=\"work/slow\"}"), 10.0);
    // Each slow invocation took its 200 ms deadline: none is in the ≤ 0.1 s buckets.
    assert_eq!(value(&after, "weir_processing_seconds_bucket{subscription=\"work/slow\",le=\"0.1\"}"), 0.0);
    assert!(value(&after, "weir_processing_seconds_sum{subscription=\"work/slow\"}") >= 2.0);
    assert_eq!(value(&after, "weir_end_to_end_seconds_count{subscription=\"work/audit\"}"), 10.0);
    assert!(value(&after, "weir_store_commits_total") > value(&before, "weir_store_commits_total"));
    assert_eq!(value(&after, "weir_ingest_events_total"), 10.0);
    assert!(value(&after, "weir_store_commit_seconds_count") >= 1.0);

    // `weir status` shows the slow subscription failing, with its DLQ count.
    let out = weir_tests::weir(&["status", "--server", &server.url], &dir.path().join("cache"));
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().find(|l| l.starts_with("work/slow")).unwrap_or_else(|| panic!("{text}"));
    let fields: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(fields[1], "failing", "{line}");
    assert_eq!(fields[6], "10", "DLQ column: {line}");
    let audit = text.lines().find(|l| l.starts_with("work/audit")).unwrap();
    assert_eq!(audit.split_whitespace().nth(1), Some("ok"));
}
