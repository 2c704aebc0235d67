//! Views (the read side of CQRS): a stateful handler with `view = …` is a
//! projection whose state is queried by key at `GET /v1/views/{view}/{key}`,
//! listed, and read your writes with `min_position` + `wait`, on the real
//! `weir` binary with the counter plugin.

use std::time::Duration;

use serde_json::{Value, json};
use weir_tests::{Server, plugins};

fn config(backoff: &str) -> String {
    format!(
        r#"
[[pipelines]]
name = "count"
topics = ["orders.order.*"]
[[pipelines.handlers]]
name = "counter"
plugin = "{}"
view = "counts"
retry = {{ max_attempts = 3, initial_backoff = "{backoff}", max_backoff = "120s", jitter = 0.0 }}
"#,
        plugins::COUNTER
    )
}

fn order(key: &str, n: usize) -> Value {
    json!({ "topic": "orders.order.created", "key": key, "idempotency_key": format!("{key}-{n}"), "payload": {} })
}

/// Publish and answer the seq of the last event.
fn publish(server: &Server, events: Vec<Value>) -> u64 {
    let (status, body) = server.post("/v1/events", &Value::Array(events));
    assert_eq!(status, 200, "{body}");
    body["events"].as_array().unwrap().last().unwrap()["seq"].as_u64().unwrap()
}

#[test]
fn a_view_answers_a_key_and_the_position_it_reflects_and_lists_by_prefix() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &config("20ms"));
    let mut events: Vec<Value> = (0..3).map(|n| order("acct-1", n)).collect();
    events.extend((0..2).map(|n| order("acct-2", n)));
    events.push(order("other", 0));
    let last = publish(&server, events);
    assert!(server.wait_idle(Duration::from_secs(30)), "{}", server.stderr());

    let (status, one) = server.get("/v1/views/counts/acct-1");
    assert_eq!(status, 200, "{one}");
    assert_eq!(one["value"], json!({ "count": 3 }));
    assert!(one["position"].as_u64().unwrap() > last, "{one}");

    let (_, all) = server.get("/v1/views/counts?prefix=acct-&limit=1");
    assert_eq!(all["items"], json!([{ "key": "acct-1", "value": { "count": 3 } }]));
    assert_eq!(all["next"], "acct-1");
    let (_, rest) = server.get("/v1/views/counts?prefix=acct-&after=acct-1");
    assert_eq!(rest["items"], json!([{ "key": "acct-2", "value": { "count": 2 } }]));
    assert!(rest.get("next").is_none(), "{rest}");

    let (status, body) = server.get("/v1/views/nothing/acct-1");
    assert_eq!((status, body["error"]["code"].as_str()), (404, Some("view_not_found")));
    let (status, body) = server.get("/v1/views/counts/nobody");
    assert_eq!((status, body["error"]["code"].as_str()), (404, Some("view_key_not_found")));
    let (status, body) = server.get("/v1/views/counts/acct-1?wait=forever&min_position=1");
    assert_eq!((status, body["error"]["code"].as_str()), (400, Some("invalid_query")));

    // The subscription serving it says so in status.
    let (_, status) = server.get("/v1/status");
    let sub = status["subscriptions"].as_array().unwrap().iter().find(|s| s["name"] == "count/counter").unwrap();
    assert_eq!(sub["view"], "counts");
}

#[test]
fn read_your_writes_waits_for_the_position_and_answers_503_when_it_is_not_reached() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &config("60s"));
    // Read right after each publish: the answer waits for the handler and
    // always reflects the event just published.
    for n in 0..20 {
        let seq = publish(&server, vec![order("acct-1", n)]);
        let (status, view) = server.get(&format!("/v1/views/counts/acct-1?min_position={seq}&wait=10s"));
        assert_eq!(status, 200, "{view}");
        assert_eq!(view["value"]["count"], n + 1, "{view}");
        assert!(view["position"].as_u64().unwrap() > seq);
    }
    // An event parked for a retry a minute away holds the position at it:
    // a read that wants to see it is told to come back.
    let stuck = publish(&server, vec![order("retry-1", 0)]);
    let (status, body) = server.get(&format!("/v1/views/counts/acct-1?min_position={stuck}&wait=300ms"));
    assert_eq!((status, body["error"]["code"].as_str()), (503, Some("overloaded")), "{body}");
    // Without `wait` it is answered at once, the same way.
    let (status, _) = server.get(&format!("/v1/views/counts/acct-1?min_position={stuck}"));
    assert_eq!(status, 503);
    // A position already passed is answered at once.
    let (status, _) = server.get(&format!("/v1/views/counts/acct-1?min_position={}", stuck - 1));
    assert_eq!(status, 200);
}

#[test]
fn two_handlers_cannot_serve_one_view() {
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "{}[[pipelines.handlers]]\nname = \"second\"\nplugin = \"{}\"\nview = \"counts\"\n",
        config("1s"),
        plugins::COUNTER
    );
    let error = weir_runtime::Config::parse(&text, &dir.path().join("weir.toml")).unwrap_err().to_string();
    assert!(error.contains("view \"counts\" is served by another handler"), "{error}");
}

#[test]
fn weir_view_get_and_list_print_the_view() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &config("20ms"));
    let seq = publish(&server, vec![order("acct-9", 0), order("acct-9", 1)]);
    let url = server.url.clone();
    let out = weir_tests::weir(
        &["view", "get", "counts", "acct-9", "--min-position", &seq.to_string(), "--server", &url],
        &dir.path().join("cache"),
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let answer: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(answer["value"], json!({ "count": 2 }));
    let out = weir_tests::weir(&["view", "list", "counts", "--server", &url], &dir.path().join("cache"));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("acct-9") && text.contains(r#"{"count":2}"#), "{text}");
}

#[test]
fn past_256_reads_waiting_for_a_view_the_rest_get_503_and_the_256_are_answered_when_it_moves() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &config("20ms"));
    publish(&server, vec![order("acct-1", 0)]);
    assert!(server.wait_idle(Duration::from_secs(30)), "{}", server.stderr());
    // The view reflects every event before `position` (the counter's own
    // emits included): waiting for `position` waits for the next event.
    let (_, now) = server.get("/v1/views/counts/acct-1");
    let next = now["position"].as_u64().unwrap();
    // 300 reads wait for a position the view has not passed: each either
    // waits (holding its place) or is refused at once, so 44 refusals mean
    // 256 are waiting.
    let (tx, rx) = std::sync::mpsc::channel();
    let readers: Vec<_> = (0..300)
        .map(|_| {
            let (tx, url) = (tx.clone(), format!("{}/v1/views/counts/acct-1?min_position={next}&wait=30s", server.url));
            std::thread::spawn(move || {
                let agent = ureq::Agent::new_with_config(
                    ureq::Agent::config_builder()
                        .http_status_as_error(false)
                        .timeout_global(Some(Duration::from_secs(90)))
                        .build(),
                );
                let mut answer = agent.get(&url).call().unwrap();
                let status = answer.status().as_u16();
                let retry_after = answer.headers().get("retry-after").map(|v| v.to_str().unwrap().to_owned());
                let body: Value = serde_json::from_slice(&answer.body_mut().read_to_vec().unwrap()).unwrap();
                tx.send((status, retry_after, body)).unwrap();
            })
        })
        .collect();
    let mut refused = Vec::new();
    while refused.len() < 44 {
        refused.push(rx.recv_timeout(Duration::from_secs(30)).expect("44 refusals before the view moves"));
    }
    if let Ok(extra) = rx.recv_timeout(Duration::from_millis(500)) {
        panic!("no more than 44 answered before the view moved: {extra:?}");
    }
    for (status, retry_after, body) in &refused {
        assert_eq!(*status, 503, "{body}");
        assert_eq!(retry_after.as_deref(), Some("1"));
        assert!(body["error"]["message"].as_str().unwrap().contains("256 view reads are waiting"), "{body}");
    }
    // The view moves past the position: every waiting read is answered with
    // the new value.
    publish(&server, vec![order("acct-1", 1)]);
    let served: Vec<(u16, Option<String>, Value)> =
        (0..256).map(|_| rx.recv_timeout(Duration::from_secs(30)).expect("every waiting read answered")).collect();
    for (status, _, body) in &served {
        assert_eq!(*status, 200, "{body}");
        assert_eq!(body["value"], json!({ "count": 2 }), "{body}");
    }
    for r in readers {
        r.join().unwrap();
    }
    // Their places are free again.
    let (status, body) = server.get(&format!("/v1/views/counts/acct-1?min_position={next}&wait=1s"));
    assert_eq!(status, 200, "{body}");
}

#[test]
fn each_view_has_its_lag_in_the_metrics_under_its_own_name() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &config("20ms"));
    publish(&server, (0..5).map(|n| order("acct-1", n)).collect());
    assert!(server.wait_idle(Duration::from_secs(30)), "{}", server.stderr());
    let (status, text) = server.get("/metrics");
    assert_eq!(status, 200);
    let text = text.as_str().expect("text").to_owned();
    assert!(text.contains("# TYPE weir_view_lag_events gauge"), "{text}");
    assert!(text.contains("weir_view_lag_events{view=\"counts\",subscription=\"count/counter\"} 0"), "{text}");
    assert!(text.contains("weir_view_lag_seconds{view=\"counts\",subscription=\"count/counter\"} 0"), "{text}");
}
