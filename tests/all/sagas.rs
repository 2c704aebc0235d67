//! Orchestrated sagas (docs/sagas.md) on the real `weir` binary, with the
//! payment, inventory and shipping services of plugins/saga-service: a
//! failure at each step and a step timeout compensate exactly the completed
//! steps, in reverse order, each once (counted by the services' effects in
//! their state, not by logs); late replies are ignored; cancel compensates;
//! resume and skip act on `compensation_failed`; bad declarations are
//! refused at start; and `kill -9` during many concurrent sagas leaves none
//! stuck and no effect applied twice.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use serde_json::{Value, json};
use weir_tests::Server;

const SERVICES: [&str; 3] = ["payment", "inventory", "shipping"];

/// The three services and the saga `order` over them. `step_timeout` and
/// `comp_attempts` vary per test.
pub(crate) fn config(step_timeout: &str, attempts: u32, comp_attempts: u32) -> String {
    let service = |name: &str, topics: &[&str], cfg: &str| {
        format!(
            r#"
[[pipelines]]
name = "{name}"
topics = {topics:?}
[[pipelines.handlers]]
name = "service"
plugin = "{{SAGA_SERVICE}}"
config = {{ service = "{name}", {cfg} }}
"#
        )
    };
    let mut text = String::new();
    text += &service(
        "payment",
        &["payments.payment.charge", "payments.payment.refund"],
        r#"done = "payments.payment.charged", failed = "payments.payment.declined", undone = "payments.payment.refunded", undo_failed = "payments.payment.refund-failed""#,
    );
    text += &service(
        "inventory",
        &["stock.item.reserve", "stock.item.release"],
        r#"done = "stock.item.reserved", failed = "stock.item.out-of-stock", undone = "stock.item.released", undo_failed = "stock.item.release-failed""#,
    );
    text += &service(
        "shipping",
        &["ship.parcel.schedule"],
        r#"done = "ship.parcel.scheduled", failed = "ship.parcel.no-courier""#,
    );
    let retry = format!(r#"{{ max_attempts = {attempts}, initial_backoff = "50ms", jitter = 0.0 }}"#);
    let comp_retry = format!(r#"{{ max_attempts = {comp_attempts}, initial_backoff = "50ms", jitter = 0.0 }}"#);
    text += &format!(
        r#"
[[sagas]]
name = "order"
start = "orders.order.placed"
correlation = "/order_id"
timeout = "10m"
[[sagas.steps]]
name = "payment"
command = "payments.payment.charge"
success = ["payments.payment.charged"]
failure = ["payments.payment.declined"]
timeout = "{step_timeout}"
retry = {retry}
compensation = "payments.payment.refund"
compensation_success = ["payments.payment.refunded"]
compensation_failure = ["payments.payment.refund-failed"]
compensation_timeout = "{step_timeout}"
compensation_retry = {comp_retry}
[[sagas.steps]]
name = "inventory"
command = "stock.item.reserve"
success = ["stock.item.reserved"]
failure = ["stock.item.out-of-stock"]
timeout = "{step_timeout}"
retry = {retry}
compensation = "stock.item.release"
compensation_success = ["stock.item.released"]
compensation_failure = ["stock.item.release-failed"]
compensation_timeout = "{step_timeout}"
compensation_retry = {comp_retry}
[[sagas.steps]]
name = "shipping"
command = "ship.parcel.schedule"
success = ["ship.parcel.scheduled"]
failure = ["ship.parcel.no-courier"]
timeout = "{step_timeout}"
retry = {retry}
"#
    );
    text
}

fn place(server: &Server, orders: &[Value]) {
    let events: Vec<Value> = orders
        .iter()
        .map(|o| json!({ "topic": "orders.order.placed", "key": format!("customer-{}", o["order_id"].as_str().unwrap()), "payload": o }))
        .collect();
    for chunk in events.chunks(200) {
        let (status, body) = server.post("/v1/events", &Value::Array(chunk.to_vec()));
        assert_eq!(status, 200, "{body}");
    }
}

fn saga(server: &Server, id: &str) -> Option<Value> {
    let (status, body) = server.get(&format!("/v1/sagas/{id}"));
    match status {
        200 => Some(body),
        404 => None,
        _ => panic!("GET /v1/sagas/{id}: {status} {body}"),
    }
}

/// Wait until the saga `id` is in one of `statuses`.
fn wait_status(server: &Server, id: &str, statuses: &[&str]) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let now = saga(server, id);
        if let Some(s) = &now
            && statuses.contains(&s["status"].as_str().unwrap_or(""))
        {
            return now.unwrap();
        }
        assert!(Instant::now() < deadline, "saga {id} never reached {statuses:?}: {now:?}\n{}", server.stderr());
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A service's counters for saga `id`: `received:<phase>`, `effects:<phase>`.
fn effects(server: &Server, service: &str, id: &str) -> BTreeMap<String, u64> {
    let (status, body) = server.get(&format!("/v1/subscriptions/{service}/service/state?key={id}"));
    assert_eq!(status, 200, "{body}");
    body["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| Some((e["key"].as_str()?.to_owned(), e["value"].as_u64()?)))
        .filter(|(k, _)| k.starts_with("received:") || k.starts_with("effects:"))
        .collect()
}

fn count(map: &BTreeMap<String, u64>, key: &str) -> u64 {
    map.get(key).copied().unwrap_or(0)
}

/// The compensations in the order the timeline sent them.
fn compensations(saga: &Value) -> Vec<String> {
    saga["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == "compensate")
        .map(|e| e["step"].as_str().unwrap().to_owned())
        .collect()
}

/// Each service applied its step (`forward`) and its compensation as
/// `expected` says: 0 or 1 times each, never more.
fn assert_effects(server: &Server, id: &str, forward: &[&str], compensated: &[&str]) {
    for service in SERVICES {
        let e = effects(server, service, id);
        let fwd = u64::from(forward.contains(&service));
        let comp = u64::from(compensated.contains(&service));
        assert_eq!(count(&e, "effects:forward"), fwd, "{id}: {service} forward effects: {e:?}");
        assert_eq!(count(&e, "effects:compensate"), comp, "{id}: {service} compensations: {e:?}");
    }
}

#[test]
fn a_failure_at_each_step_compensates_exactly_the_completed_steps_in_reverse_order() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &config("30s", 3, 3));
    place(
        &server,
        &[
            json!({ "order_id": "ok-1" }),
            json!({ "order_id": "declined-1", "card": "declined" }),
            json!({ "order_id": "nostock-1", "item": "out-of-stock" }),
            json!({ "order_id": "nocourier-1", "address": "nowhere" }),
        ],
    );
    let ok = wait_status(&server, "ok-1", &["completed"]);
    assert_eq!(ok["completed"], json!(["payment", "inventory", "shipping"]));
    assert_effects(&server, "ok-1", &SERVICES, &[]);

    let declined = wait_status(&server, "declined-1", &["compensated"]);
    assert_eq!(compensations(&declined), Vec::<String>::new());
    assert_eq!(declined["cause"], "step payment failed");
    assert_effects(&server, "declined-1", &[], &[]);

    let nostock = wait_status(&server, "nostock-1", &["compensated"]);
    assert_eq!(compensations(&nostock), ["payment"]);
    assert_effects(&server, "nostock-1", &["payment"], &["payment"]);

    let nocourier = wait_status(&server, "nocourier-1", &["compensated"]);
    // Reverse order: the stock goes back before the payment is refunded,
    // and the refund is only sent once the release is confirmed.
    assert_eq!(compensations(&nocourier), ["inventory", "payment"]);
    assert_eq!(nocourier["compensated"], json!(["inventory", "payment"]));
    let timeline = nocourier["timeline"].as_array().unwrap();
    let released = timeline.iter().position(|e| e["topic"] == "stock.item.released").unwrap();
    let refund = timeline.iter().position(|e| e["kind"] == "compensate" && e["step"] == "payment").unwrap();
    assert!(released < refund, "{timeline:?}");
    assert_effects(&server, "nocourier-1", &["payment", "inventory"], &["payment", "inventory"]);

    // The list, filtered by status, and the metrics.
    let (status, body) = server.get("/v1/sagas?status=compensated");
    assert_eq!(status, 200, "{body}");
    let mut ids: Vec<&str> = body["sagas"].as_array().unwrap().iter().map(|s| s["id"].as_str().unwrap()).collect();
    ids.sort_unstable();
    assert_eq!(ids, ["declined-1", "nocourier-1", "nostock-1"]);
    let metrics = ureq::get(format!("{}/metrics", server.url)).call().unwrap().body_mut().read_to_string().unwrap();
    assert!(metrics.contains("weir_sagas{saga=\"order\",status=\"compensated\"} 3"), "{metrics}");
    assert!(metrics.contains("weir_sagas{saga=\"order\",status=\"completed\"} 1"), "{metrics}");
    assert!(metrics.contains("weir_saga_compensations_total{saga=\"order\",outcome=\"succeeded\"} 3"), "{metrics}");
    assert!(metrics.contains("weir_saga_step_latency_seconds_count{saga=\"order\"}"), "{metrics}");
}

#[test]
fn a_step_timeout_compensates_the_completed_steps_and_a_late_reply_is_ignored() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &config("300ms", 2, 3));
    place(&server, &[json!({ "order_id": "silent-1", "silent": ["shipping"] })]);
    let s = wait_status(&server, "silent-1", &["compensated"]);
    assert_eq!(s["cause"], "step shipping timed out after 2 attempts");
    assert_eq!(compensations(&s), ["inventory", "payment"]);
    let timeouts = s["timeline"].as_array().unwrap().iter().filter(|e| e["kind"] == "timeout").count();
    assert_eq!(timeouts, 2, "{s}");
    // Shipping got both attempts and applied nothing; the rest once each.
    assert_eq!(count(&effects(&server, "shipping", "silent-1"), "received:forward"), 2);
    assert_effects(&server, "silent-1", &["payment", "inventory"], &["payment", "inventory"]);

    // The courier answers at last: recorded, ignored.
    let late = json!({ "topic": "ship.parcel.scheduled", "key": "silent-1", "payload": { "late": true } });
    assert_eq!(server.post("/v1/events", &late).0, 200);
    let deadline = Instant::now() + Duration::from_secs(30);
    let after = loop {
        let now = saga(&server, "silent-1").unwrap();
        if now["timeline"].as_array().unwrap().iter().any(|e| e["kind"] == "late_reply") {
            break now;
        }
        assert!(Instant::now() < deadline, "no late_reply: {now}");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(after["status"], "compensated");
    assert_eq!(after["completed"], json!(["payment", "inventory"]));
    assert_eq!(compensations(&after), ["inventory", "payment"]);
}

#[test]
fn producers_cannot_publish_on_the_sagas_own_topics_and_sagas_still_run() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &config("30s", 3, 3));
    let placed = json!({ "topic": "orders.order.placed", "key": "c", "payload": { "order_id": "forged-1" } });
    // Whatever saga the topic names, known or not: a forged timer or admin
    // event would otherwise drive an instance.
    for topic in ["weir-saga.order.timer", "weir-saga.order.admin", "weir-saga.order.failed", "weir-saga.other.x"] {
        let (status, body) =
            server.post("/v1/events", &json!([placed, { "topic": topic, "key": "ok-1", "payload": {} }]));
        let error = &body["error"];
        assert_eq!(
            (status, error["code"].as_str(), error["index"].as_u64()),
            (400, Some("reserved_topic"), Some(1)),
            "{body}"
        );
        assert!(error["message"].as_str().unwrap().contains("weir-saga"), "{body}");
    }
    let ce = json!({ "specversion": "1.0", "type": "weir-saga.order.admin", "source": "/s", "id": "1" });
    let (status, body) =
        server.try_post("/v1/events", "application/cloudevents+json", ce.to_string().as_bytes()).unwrap();
    assert_eq!((status, body["error"]["code"].as_str()), (400, Some("reserved_topic")), "{body}");
    let binary = [("ce-specversion", "1.0"), ("ce-type", "weir-saga.order.timer"), ("ce-source", "/s"), ("ce-id", "2")];
    let (status, body) = server.post_with("/v1/events", &binary, b"{}");
    assert_eq!((status, body["error"]["code"].as_str()), (400, Some("reserved_topic")), "{body}");
    let out = weir_tests::weir(
        &["publish", "--server", &server.url, "-t", "weir-saga.order.timer", "-k", "ok-1", "-d", "{}"],
        &dir.path().join("cache"),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("reserved_topic"), "{stderr}");
    // Nothing of those requests is stored, the valid event beside a
    // refused one neither.
    let (status, log) = server.get("/v1/log?limit=100");
    assert_eq!(status, 200, "{log}");
    assert_eq!(log["events"], json!([]), "{log}");
    assert!(saga(&server, "forged-1").is_none());
    // The coordinators still append to their domain themselves.
    place(&server, &[json!({ "order_id": "ok-1" })]);
    let ok = wait_status(&server, "ok-1", &["completed"]);
    assert_eq!(ok["completed"], json!(["payment", "inventory", "shipping"]));
}

fn act(server: &Server, id: &str, action: &str) -> (u16, Value) {
    server.post(&format!("/v1/sagas/{id}/{action}"), &json!({}))
}

#[test]
fn cancel_compensates_and_resume_and_skip_act_on_compensation_failed() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &config("60s", 1, 1));
    place(
        &server,
        &[
            // Waits on shipping: cancelled by the operator.
            json!({ "order_id": "cancel-1", "silent": ["shipping"] }),
            // No courier; the stock release always fails: skipped.
            json!({ "order_id": "skip-1", "address": "nowhere", "undo_fail": ["inventory"] }),
            // No courier; the refund fails once: resumed.
            json!({ "order_id": "resume-1", "address": "nowhere", "undo_flaky": ["payment"] }),
        ],
    );
    let running = wait_status(&server, "cancel-1", &["running"]);
    assert!(running["completed"].as_array().is_some_and(|c| c.len() <= 2));
    let deadline = Instant::now() + Duration::from_secs(30);
    while saga(&server, "cancel-1").unwrap()["step"] != 2 {
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(20));
    }
    // Through the CLI, as an operator would.
    let cache = dir.path().join("cache");
    let cli = |args: &[&str]| {
        let mut all = vec!["saga", "--server", server.url.as_str()];
        all.extend_from_slice(args);
        let out = weir_tests::weir(&all, &cache);
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
        )
    };
    let (ok, text) = cli(&["list", "--status", "running"]);
    assert!(ok && text.contains("cancel-1") && text.contains("running"), "{text}");
    let (ok, text) = cli(&["cancel", "cancel-1"]);
    assert!(ok && text.contains("cancel: saga cancel-1 is now"), "{text}");
    let cancelled = wait_status(&server, "cancel-1", &["cancelled"]);
    let (ok, text) = cli(&["show", "cancel-1"]);
    assert!(
        ok && text.contains("status    cancelled")
            && text.contains("compensate")
            && text.contains("stock.item.release"),
        "{text}"
    );
    let (ok, text) = cli(&["cancel", "cancel-1"]);
    assert!(!ok && text.contains("409") && text.contains("saga_conflict"), "{text}");
    assert_eq!(compensations(&cancelled), ["inventory", "payment"]);
    assert_effects(&server, "cancel-1", &["payment", "inventory"], &["payment", "inventory"]);
    // A finished saga cannot be cancelled again.
    assert_eq!(act(&server, "cancel-1", "cancel").0, 409);

    let failed = wait_status(&server, "skip-1", &["compensation_failed"]);
    assert_eq!(failed["step_name"], "inventory");
    // Visible in the DLQ, with the saga's code.
    let (_, dlq) = server.get("/v1/dlq?subscription=sagas/order");
    assert!(dlq["entries"].as_array().unwrap().iter().any(|e| e["code"] == "saga_compensation_failed"), "{dlq}");
    // Resume: the release fails again.
    assert_eq!(act(&server, "skip-1", "resume").0, 200);
    let again = wait_status(&server, "skip-1", &["compensation_failed"]);
    assert!(again["timeline"].as_array().unwrap().iter().any(|e| e["kind"] == "resume"));
    // Skip: the release is given up, the refund goes on.
    assert_eq!(act(&server, "skip-1", "skip").0, 200);
    let skipped = wait_status(&server, "skip-1", &["compensated"]);
    assert_eq!(skipped["compensated"], json!(["inventory", "payment"]));
    assert_effects(&server, "skip-1", &["payment", "inventory"], &["payment"]);

    wait_status(&server, "resume-1", &["compensation_failed"]);
    assert_eq!(act(&server, "resume-1", "resume").0, 200);
    let resumed = wait_status(&server, "resume-1", &["compensated"]);
    assert_eq!(resumed["compensated"], json!(["inventory", "payment"]));
    assert_effects(&server, "resume-1", &["payment", "inventory"], &["payment", "inventory"]);

    // Actions that do not apply, and unknown sagas.
    assert_eq!(act(&server, "resume-1", "skip").0, 409);
    assert_eq!(act(&server, "nobody", "cancel").0, 404);
    assert_eq!(act(&server, "resume-1", "explode").0, 404);
    assert_eq!(server.get("/v1/sagas?status=sideways").0, 400);
}

#[test]
fn a_bad_declaration_is_refused_at_start_with_the_key_and_the_reason() {
    let cases = [
        ("name = \"inventory\"\ncommand", "name = \"payment\"\ncommand", "sagas[0].steps[1].name", "declared twice"),
        (
            "command = \"ship.parcel.schedule\"",
            "command = \"ship.parcel.teleport\"",
            "sagas[0].steps[2].command",
            "unknown topic",
        ),
        (
            "failure = [\"ship.parcel.no-courier\"]",
            "failure = [\"ship.parcel.no-courier\"]\ncompensation = \"stock.item.release\"\ncompensation_success = [\"ship.parcel.unscheduled\"]",
            "sagas[0].steps[2].compensation",
            "after the pivot",
        ),
    ];
    for (from, to, key, reason) in cases {
        let dir = tempfile::tempdir().unwrap();
        let mut text = config("30s", 1, 1).replacen(from, to, 1);
        if reason == "after the pivot" {
            text = text.replacen("compensation_retry = { max_attempts = 1, initial_backoff = \"50ms\", jitter = 0.0 }\n[[sagas.steps]]\nname = \"shipping\"", "compensation_retry = { max_attempts = 1, initial_backoff = \"50ms\", jitter = 0.0 }\npivot = true\n[[sagas.steps]]\nname = \"shipping\"", 1);
        }
        let mut body = format!("data_dir = {:?}\n", dir.path().join("data").display().to_string());
        body += &text.replace("{SAGA_SERVICE}", weir_tests::plugins::SAGA_SERVICE);
        let file = dir.path().join("weir.toml");
        std::fs::write(&file, body).unwrap();
        let out =
            std::process::Command::new(weir_tests::weir_bin()).args(["run", "--config"]).arg(&file).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{key}: started anyway");
        assert!(stderr.contains(key) && stderr.contains(reason), "{key} / {reason}: {stderr}");
        assert!(!dir.path().join("data").join("weir.redb").exists(), "nothing written");
    }
}

/// `kill -9` at random moments while many sagas run with random failures:
/// afterwards every saga is final (or `compensation_failed` where its
/// compensation was made to fail for good), none is stuck, and every
/// service applied each step and each compensation at most once, exactly
/// as the saga's outcome says.
#[test]
fn kill_9_during_many_concurrent_sagas_leaves_none_stuck_and_nothing_applied_twice() {
    let n: usize = std::env::var("WEIR_SAGA_KILL_N").ok().and_then(|v| v.parse().ok()).unwrap_or(1000);
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(dir.path(), &config("60s", 2, 2));
    let mut rng = rand::rngs::StdRng::seed_from_u64(15);
    let mut orders = Vec::with_capacity(n);
    for i in 0..n {
        let mut o = json!({ "order_id": format!("k-{i}") });
        match rng.random_range(0..10) {
            0 => o["card"] = json!("declined"),
            1 => o["item"] = json!("out-of-stock"),
            2 => o["address"] = json!("nowhere"),
            3 => {
                o["address"] = json!("nowhere");
                o["undo_fail"] = json!(["payment"]);
            }
            4 => {
                o["item"] = json!("out-of-stock");
                o["undo_flaky"] = json!(["payment"]);
            }
            _ => {}
        }
        orders.push(o);
    }
    // Kills that caught sagas in the middle: the test means nothing
    // without some.
    let mut interrupted = 0;
    let mut kill = |server: &mut Server| {
        let (_, running) = server.get("/v1/sagas?status=running&limit=1");
        interrupted += usize::from(running["sagas"].as_array().is_some_and(|s| !s.is_empty()));
        server.kill9();
        server.restart();
    };
    for (c, chunk) in orders.chunks(n.div_ceil(4)).enumerate() {
        place(&server, chunk);
        if c == 0 {
            // The first kill waits until sagas run, so at least one kill
            // lands in the middle whatever the machine's speed.
            let deadline = std::time::Instant::now() + Duration::from_secs(30);
            while server.get("/v1/sagas?status=running&limit=1").1["sagas"].as_array().is_none_or(Vec::is_empty) {
                assert!(std::time::Instant::now() < deadline, "no saga ever ran");
                std::thread::sleep(Duration::from_millis(5));
            }
        } else {
            std::thread::sleep(Duration::from_millis(rng.random_range(0..300)));
        }
        kill(&mut server);
    }
    for _ in 0..3 {
        std::thread::sleep(Duration::from_millis(rng.random_range(50..400)));
        kill(&mut server);
    }
    assert!(interrupted >= 1, "no kill caught a saga running");
    for o in &orders {
        let id = o["order_id"].as_str().unwrap();
        let fails_for_good = o.get("undo_fail").is_some();
        let s = wait_status(&server, id, &["completed", "compensated", "compensation_failed"]);
        let status = s["status"].as_str().unwrap();
        let (forward, compensated): (&[&str], &[&str]) = if o.get("card").is_some() {
            assert_eq!(status, "compensated", "{s}");
            (&[], &[])
        } else if o.get("item").is_some() {
            // A refund that fails once succeeds on its second attempt.
            assert_eq!(status, "compensated", "{s}");
            (&["payment"], &["payment"])
        } else if o.get("address").is_some() {
            assert_eq!(status, if fails_for_good { "compensation_failed" } else { "compensated" }, "{s}");
            if fails_for_good {
                (&["payment", "inventory"], &["inventory"])
            } else {
                (&["payment", "inventory"], &["payment", "inventory"])
            }
        } else {
            assert_eq!(status, "completed", "{s}");
            (&SERVICES, &[])
        };
        assert_effects(&server, id, forward, compensated);
        // Each command went out once per attempt the saga made: the service
        // received each step as often as the timeline sent it.
        for service in SERVICES {
            let sent = s["timeline"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|e| e["kind"] == "command" && e["step"] == service)
                .count() as u64;
            assert_eq!(count(&effects(&server, service, id), "received:forward"), sent, "{id} {service}: {s}");
        }
    }
}

/// Every bound a producer can push against: instances kept
/// (`max_instances`), the saga id's length, a start without an id, and the
/// list's page size. Each refused start is dead-lettered with its reason
/// and leaves the state as it was.
#[test]
fn the_bounds_refuse_what_is_over_them_and_keep_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let text = config("30s", 1, 1).replacen("timeout = \"10m\"", "timeout = \"10m\"\nmax_instances = 3", 1);
    let server = Server::start(dir.path(), &text);
    place(&server, &(0..3).map(|i| json!({ "order_id": format!("b-{i}") })).collect::<Vec<_>>());
    for i in 0..3 {
        wait_status(&server, &format!("b-{i}"), &["completed"]);
    }
    let long = "x".repeat(201);
    place(&server, &[json!({ "order_id": "b-3" }), json!({ "order_id": long })]);
    let (status, body) =
        server.post("/v1/events", &json!({ "topic": "orders.order.placed", "payload": { "no_id": true } }));
    assert_eq!(status, 200, "{body}");
    assert!(server.wait_idle(Duration::from_secs(30)), "{}", server.stderr());
    let (_, dlq) = server.get("/v1/dlq?subscription=sagas/order");
    let codes: Vec<(&str, &str)> = dlq["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["code"].as_str().unwrap(), e["message"].as_str().unwrap()))
        .collect();
    assert_eq!(codes.len(), 3, "{dlq}");
    assert!(codes.iter().any(|(c, m)| *c == "saga_limit" && m.contains("max_instances = 3")), "{codes:?}");
    assert!(codes.iter().any(|(c, m)| *c == "handler_reject" && m.contains("1-200 bytes")), "{codes:?}");
    assert!(codes.iter().any(|(c, m)| *c == "handler_reject" && m.contains("/order_id")), "{codes:?}");
    assert!(saga(&server, "b-3").is_none());
    // Pages: bounded, and the cursor goes on where the last one stopped.
    assert_eq!(server.get("/v1/sagas?limit=501").0, 400);
    let (_, first) = server.get("/v1/sagas?limit=2");
    assert_eq!(first["sagas"].as_array().unwrap().len(), 2, "{first}");
    let next = first["next"].as_str().unwrap();
    let (_, second) = server.get(&format!("/v1/sagas?limit=2&after={next}"));
    let ids: Vec<&str> = second["sagas"].as_array().unwrap().iter().map(|s| s["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["b-2"], "{second}");
    assert!(second["next"].is_null(), "{second}");
}

/// The overall timeout is a durable timer too: it falls while the runtime
/// is down (killed with -9), and fires at the next start, compensating the
/// completed steps in reverse.
#[test]
fn the_overall_timeout_fires_after_a_kill_and_restart_and_compensates() {
    let dir = tempfile::tempdir().unwrap();
    let text = config("60s", 1, 1).replacen("timeout = \"10m\"", "timeout = \"2s\"", 1);
    let mut server = Server::start(dir.path(), &text);
    place(&server, &[json!({ "order_id": "late-1", "silent": ["shipping"] })]);
    let deadline = Instant::now() + Duration::from_secs(30);
    while saga(&server, "late-1").is_none_or(|s| s["step"] != 2) {
        assert!(Instant::now() < deadline, "{}", server.stderr());
        std::thread::sleep(Duration::from_millis(20));
    }
    let running = saga(&server, "late-1").unwrap();
    assert_eq!(running["status"], "running");
    server.kill9();
    // Down past the saga's deadline.
    let due = running["deadline_ms"].as_u64().unwrap();
    let now = || std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64;
    while now() <= due + 200 {
        std::thread::sleep(Duration::from_millis(50));
    }
    server.restart();
    let s = wait_status(&server, "late-1", &["compensated"]);
    assert_eq!(s["cause"], "the saga timed out");
    assert!(s["timeline"].as_array().unwrap().iter().any(|e| e["kind"] == "deadline"), "{s}");
    assert_eq!(compensations(&s), ["inventory", "payment"]);
    assert_effects(&server, "late-1", &["payment", "inventory"], &["payment", "inventory"]);
}
