//! Reading the log over HTTP against the real binary: every filter, the
//! position a sparse filter resumes from, long-polls woken by an append,
//! lineage after a fan-out, a retry and a DLQ entry, the event stream and
//! its resumption, and the `read` scope off loopback (issue #13 items 1,
//! 2 and 7).

use std::io::{BufRead as _, BufReader, Read};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use weir_tests::{ORDERS, ORDERS_ENRICHED, Server, weir_bin};

fn agent() -> ureq::Agent {
    ureq::Agent::new_with_config(
        ureq::Agent::config_builder().http_status_as_error(false).timeout_global(Some(Duration::from_secs(60))).build(),
    )
}

/// GET with headers: status, the named response header, the body as JSON.
fn get_with(url: &str, headers: &[(&str, &str)], wanted: &str) -> (u16, Option<String>, Value) {
    let mut request = agent().get(url);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let mut response = request.call().unwrap();
    let status = response.status().as_u16();
    let header = response.headers().get(wanted).map(|v| v.to_str().unwrap().to_owned());
    let text = response.body_mut().read_to_string().unwrap();
    (status, header, serde_json::from_str(&text).unwrap_or(Value::String(text)))
}

fn publish(server: &Server, events: &Value) -> Vec<Value> {
    let (status, body) = server.post("/v1/events", events);
    assert_eq!(status, 200, "{body}");
    body["events"].as_array().unwrap().clone()
}

fn seqs(answer: &Value) -> Vec<u64> {
    answer["events"].as_array().unwrap().iter().map(|e| e["seq"].as_u64().unwrap()).collect()
}

#[test]
fn every_filter_and_the_position_to_resume_from() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), ORDERS);
    let events: Vec<Value> = [
        ("shop.cart.added", "k1"),
        ("shop.cart.removed", "k1"),
        ("billing.invoice.sent", "k2"),
        ("shop.cart.added", "k2"),
        ("billing.invoice.paid", "k1"),
        ("shop.cart.added", "k1"),
    ]
    .iter()
    .map(|(topic, key)| json!({"topic": topic, "key": key, "payload": {"n": 1}}))
    .collect();
    let published = publish(&server, &Value::Array(events));

    let (status, all) = server.get("/v1/log");
    assert_eq!(status, 200, "{all}");
    assert_eq!(seqs(&all), [0, 1, 2, 3, 4, 5]);
    assert_eq!(
        (all["next"].as_u64(), all["caught_up"].as_bool(), all["head"].as_u64()),
        (Some(5), Some(true), Some(6))
    );
    assert_eq!(all["events"][2]["event"]["topic"], "billing.invoice.sent");
    assert_eq!(all["events"][2]["event"]["payload"], json!({"n": 1}));

    for (query, expected) in [
        ("topics=shop.*.added", vec![0, 3, 5]),
        ("topics=shop.%3E", vec![0, 1, 3, 5]),
        ("topics=shop.cart.removed,billing.%3E", vec![1, 2, 4]),
        ("key=k1", vec![0, 1, 4, 5]),
        ("topics=shop.cart.added&key=k1", vec![0, 5]),
        ("topics=shop.cart.added&after=3", vec![5]),
        ("key=nobody", vec![]),
    ] {
        let (status, answer) = server.get(&format!("/v1/log?{query}"));
        assert_eq!(status, 200, "{query}: {answer}");
        assert_eq!(seqs(&answer), expected, "{query}");
        // The position is where the read got to, matched or not.
        assert_eq!(answer["next"], 5, "{query}");
    }

    // Pages: each resumes where the last stopped, without overlap.
    let (_, first) = server.get("/v1/log?limit=4");
    assert_eq!(seqs(&first), [0, 1, 2, 3]);
    assert_eq!((first["next"].as_u64(), first["caught_up"].as_bool()), (Some(3), Some(false)));
    let (_, second) = server.get("/v1/log?limit=4&after=3");
    assert_eq!(seqs(&second), [4, 5]);
    assert_eq!(second["caught_up"], true);
    let (_, past) = server.get("/v1/log?after=5&wait=1s");
    assert_eq!(seqs(&past), Vec::<u64>::new());
    assert_eq!(past["next"], 5, "a long-poll that times out still says where it is");

    // By position and by id.
    let (status, at) = server.get("/v1/log/2");
    assert_eq!(status, 200);
    assert_eq!((at["seq"].as_u64(), at["event"]["topic"].as_str()), (Some(2), Some("billing.invoice.sent")));
    let id = published[3]["id"].as_str().unwrap();
    let (status, by_id) = server.get(&format!("/v1/events/{id}"));
    assert_eq!(status, 200, "{by_id}");
    assert_eq!((by_id["seq"].as_u64(), by_id["event"]["id"].as_str()), (Some(3), Some(id)));
    assert_eq!(server.get("/v1/log/99").1["error"]["code"], "not_found");
    assert_eq!(server.get("/v1/events/01KBCH9W6M2Q7V0F8Z3R4T5Y6X").0, 404);
    assert_eq!(server.get("/v1/events/not-an-id").0, 400);

    // Bounded and checked.
    for query in ["limit=0", "limit=1001", "wait=31s", "wait=soon", "topics=Shop..x", "colour=red", "after=-1"] {
        let (status, answer) = server.get(&format!("/v1/log?{query}"));
        assert_eq!((status, answer["error"]["code"].as_str()), (400, Some("invalid_query")), "{query}: {answer}");
    }

    // CloudEvents when asked for, the position in a header.
    let (status, next, batch) = get_with(
        &format!("{}/v1/log?topics=shop.*.added", server.url),
        &[("accept", "application/cloudevents-batch+json")],
        "weir-next",
    );
    assert_eq!(status, 200, "{batch}");
    assert_eq!(next.as_deref(), Some("5"));
    let batch = batch.as_array().unwrap();
    assert_eq!(batch.len(), 3);
    assert_eq!(batch[1]["specversion"], "1.0");
    assert_eq!(batch[1]["type"], "shop.cart.added");
    assert_eq!(batch[1]["subject"], "k2");
    assert_eq!(batch[1]["weirseq"], 3);
    assert_eq!(batch[1]["id"], published[3]["id"]);
    assert_eq!(batch[1]["data"], json!({"n": 1}));
    let (_, _, one) =
        get_with(&format!("{}/v1/log/4", server.url), &[("accept", "application/cloudevents+json")], "content-type");
    assert_eq!(one["type"], "billing.invoice.paid");
}

#[test]
fn a_sparse_filter_answers_the_position_it_got_to_instead_of_scanning_on() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), ORDERS);
    let noise: Vec<Value> =
        (0..10_000).map(|i| json!({"topic": "noise.tick.counted", "key": format!("n{i}")})).collect();
    publish(&server, &Value::Array(noise));
    publish(&server, &json!([{"topic": "noise.tick.counted"}, {"topic": "rare.thing.happened", "key": "r"}]));

    // 10,000 entries looked at, none matching: the answer says where it
    // stopped and that it did not get to the head.
    let (_, first) = server.get("/v1/log?topics=rare.%3E");
    assert_eq!(seqs(&first), Vec::<u64>::new());
    assert_eq!((first["next"].as_u64(), first["caught_up"].as_bool()), (Some(9_999), Some(false)), "{first}");
    // Resumed from there, the rest is read, not the same entries again.
    let (_, second) = server.get("/v1/log?topics=rare.%3E&after=9999");
    assert_eq!(seqs(&second), [10_001]);
    assert_eq!((second["next"].as_u64(), second["caught_up"].as_bool()), (Some(10_001), Some(true)));
}

#[test]
fn a_long_poll_wakes_when_a_matching_event_is_appended() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), ORDERS);
    publish(&server, &json!([{"topic": "shop.cart.added"}]));
    let url = server.url.clone();
    let waiting = std::thread::spawn(move || {
        let (status, _, answer) =
            get_with(&format!("{url}/v1/log?after=0&topics=late.event.arrived&wait=25s"), &[], "x");
        (status, answer)
    });
    std::thread::sleep(Duration::from_millis(300));
    // Another topic first: the wait goes on past an append that does not match.
    publish(&server, &json!([{"topic": "shop.cart.added"}]));
    std::thread::sleep(Duration::from_millis(300));
    publish(&server, &json!([{"topic": "late.event.arrived", "key": "l"}]));
    let (status, answer) = waiting.join().unwrap();
    assert_eq!(status, 200, "{answer}");
    // Had the append not woken it, the wait would have ended empty.
    assert_eq!(seqs(&answer), [2], "{answer}");
    assert_eq!(answer["events"][0]["event"]["key"], "l");
}

const RETRYING: &str = r#"
[[pipelines]]
name = "flaky"
topics = ["flaky.event.created"]
[[pipelines.handlers]]
name = "flaky"
plugin = "{FLAKY}"
retry = { max_attempts = 10, initial_backoff = "1h", max_backoff = "1h" }
"#;

/// The lineage of `id`, once `ready` holds for it (within 30 s).
fn lineage_when(server: &Server, id: &str, ready: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, lineage) = server.get(&format!("/v1/events/{id}/lineage"));
        assert_eq!(status, 200, "{lineage}");
        if ready(&lineage) {
            return lineage;
        }
        assert!(Instant::now() < deadline, "lineage never got there: {lineage}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn subscription<'a>(lineage: &'a Value, name: &str) -> &'a Value {
    lineage["subscriptions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["subscription"] == name)
        .unwrap_or_else(|| panic!("no {name} in {lineage}"))
}

fn state_of(lineage: &Value, name: &str) -> String {
    lineage["subscriptions"]
        .as_array()
        .and_then(|subs| subs.iter().find(|s| s["subscription"] == name))
        .map_or_else(String::new, |s| s["state"].as_str().unwrap_or("").to_owned())
}

#[test]
fn lineage_after_a_fan_out_a_retry_and_a_dlq_entry() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &format!("{ORDERS_ENRICHED}{RETRYING}"));
    let order = |id: &str, items: Value| {
        json!({"topic": "orders.order.created", "key": id,
               "payload": {"order_id": id, "customer": "c-1", "currency": "EUR", "items": items}})
    };
    let published = publish(
        &server,
        &json!([
            order("o-1", json!([{"sku": "a", "qty": 2, "price_cents": 700}])),
            order("o-2", json!([])),
            {"topic": "flaky.event.created", "key": "always-retry", "payload": {}}
        ]),
    );
    let (good, bad, flaky) = (
        published[0]["id"].as_str().unwrap(),
        published[1]["id"].as_str().unwrap(),
        published[2]["id"].as_str().unwrap(),
    );

    // The fan-out: both subscriptions handled it, each with what it emitted.
    let lineage = lineage_when(&server, good, |l| {
        state_of(l, "orders/validator") == "handled" && state_of(l, "orders/audit") == "handled"
    });
    assert_eq!(lineage["event"]["seq"], 0);
    assert_eq!(lineage["causes"], json!([]), "a producer's event has no cause");
    let validator = subscription(&lineage, "orders/validator");
    // Its record is derived from the ingest claim (docs/guarantees.md,
    // promise 3): the version comes from its emit's header (16 digits), the
    // handling time from its emit's.
    assert_eq!(validator["plugin_version"].as_str().unwrap().len(), 16, "{validator}");
    assert!(validator["handled_at"].is_string(), "{validator}");
    let emitted = validator["emitted"].as_array().unwrap();
    assert_eq!(emitted.len(), 1, "{validator}");
    assert_eq!(emitted[0]["event"]["topic"], "orders.order.validated");
    assert_eq!(emitted[0]["event"]["causation_id"], good);
    let audit = subscription(&lineage, "orders/audit");
    assert_eq!(audit["emitted"][0]["event"]["topic"], "audit.event.recorded", "{audit}");
    assert!(lineage["subscriptions"].as_array().unwrap().iter().all(|s| s["subscription"] != "flaky/flaky"));

    // Downstream: the validated event's cause is the order, and the
    // enricher handled it.
    let validated = emitted[0]["event"]["id"].as_str().unwrap();
    let lineage = lineage_when(&server, validated, |l| state_of(l, "enrich/enricher") == "handled");
    let causes = lineage["causes"].as_array().unwrap();
    assert_eq!(causes.len(), 1, "{lineage}");
    assert_eq!((causes[0]["seq"].as_u64(), causes[0]["event"]["id"].as_str()), (Some(0), Some(good)));
    let emitted_version = emitted[0]["event"]["headers"]["weir-plugin-version"].as_str().unwrap();
    assert!(validator["plugin_version"].as_str().unwrap().starts_with(emitted_version), "{validator}");

    // The rejected order: in the validator's DLQ, handled by the audit.
    let lineage = lineage_when(&server, bad, |l| {
        state_of(l, "orders/validator") == "dead_lettered" && state_of(l, "orders/audit") == "handled"
    });
    let validator = subscription(&lineage, "orders/validator");
    assert_eq!(validator["dlq"]["code"], "handler_reject", "{validator}");
    assert_eq!(validator["dlq"]["seq"], 1);
    assert_eq!(validator["emitted"], json!([]));

    // The retrying event: parked with its failed attempt.
    let lineage = lineage_when(&server, flaky, |l| state_of(l, "flaky/flaky") == "retrying");
    let retry = &subscription(&lineage, "flaky/flaky")["retry"];
    assert_eq!(retry["attempts"], 1, "{lineage}");
    assert_eq!(retry["last_code"], "handler_retry");
    assert!(retry["next_attempt"].is_string());

    // The CLI shows the same.
    let out = std::process::Command::new(weir_bin())
        .args(["log", "show", bad, "--lineage", "--server", &server.url])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text} {}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("orders/validator") && text.contains("dead_lettered"), "{text}");
    assert!(text.contains("handler_reject"), "{text}");
    let out = std::process::Command::new(weir_bin())
        .args(["log", "read", "--json", "--topics", "orders.order.validated", "--server", &server.url])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let lines: Vec<Value> =
        String::from_utf8_lossy(&out.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert_eq!(lines[0]["event"]["id"], validated);
}

/// One Server-Sent Events message.
#[derive(Debug, Default, Clone)]
struct Message {
    id: Option<u64>,
    event: Option<String>,
    data: String,
}

/// A connection to `/v1/log/stream`.
struct Stream {
    lines: BufReader<Box<dyn Read + Send>>,
}

impl Stream {
    fn open(url: &str, headers: &[(&str, &str)]) -> Self {
        let mut request = agent().get(url);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let response = request.call().unwrap();
        assert_eq!(response.status().as_u16(), 200);
        let content_type = response.headers().get("content-type").unwrap().to_str().unwrap().to_owned();
        assert_eq!(content_type, "text/event-stream");
        Self { lines: BufReader::new(Box::new(response.into_body().into_reader())) }
    }

    /// The next message (comments skipped).
    fn next(&mut self) -> Message {
        let mut message = Message::default();
        let mut any = false;
        loop {
            let mut line = String::new();
            assert!(self.lines.read_line(&mut line).unwrap() > 0, "the stream ended");
            let line = line.trim_end_matches('\n');
            if line.is_empty() {
                if any {
                    return message;
                }
                continue;
            }
            if line.starts_with(':') {
                continue;
            }
            any = true;
            let (field, value) = line.split_once(": ").unwrap_or((line, ""));
            match field {
                "id" => message.id = Some(value.parse().unwrap()),
                "event" => message.event = Some(value.to_owned()),
                "data" => message.data.push_str(value),
                other => panic!("unexpected field {other}"),
            }
        }
    }

    /// Event ids up to the next `caught-up`, and that message.
    fn until_caught_up(&mut self) -> (Vec<u64>, Message) {
        let mut ids = Vec::new();
        loop {
            let message = self.next();
            match message.event.as_deref() {
                None => {
                    let data: Value = serde_json::from_str(&message.data).unwrap();
                    assert_eq!(data["seq"].as_u64(), message.id, "the id is the position");
                    ids.push(message.id.unwrap());
                }
                Some("caught-up") => return (ids, message),
                Some(other) => panic!("unexpected event {other}: {message:?}"),
            }
        }
    }
}

#[test]
fn a_stream_resumed_with_last_event_id_after_a_disconnect_has_no_gap_and_no_repeat() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), ORDERS);
    let cart =
        |n: u64| Value::Array((0..n).map(|i| json!({"topic": "shop.cart.added", "key": format!("c{i}")})).collect());
    publish(&server, &cart(5));
    let url = format!("{}/v1/log/stream?topics=shop.%3E", server.url);

    let mut seen = Vec::new();
    let mut stream = Stream::open(&url, &[]);
    let (ids, caught_up) = stream.until_caught_up();
    assert_eq!(ids, [0, 1, 2, 3, 4]);
    assert_eq!(caught_up.id, Some(4));
    seen.extend(ids);
    // Live: appended while connected; the client goes away after two.
    publish(&server, &cart(5));
    for _ in 0..2 {
        let message = stream.next();
        assert_eq!(message.event, None, "{message:?}");
        seen.push(message.id.unwrap());
    }
    drop(stream);
    publish(&server, &cart(3));
    publish(&server, &json!([{"topic": "other.thing.done"}]));

    let last = seen.last().unwrap().to_string();
    let mut stream = Stream::open(&url, &[("last-event-id", &last)]);
    let (ids, caught_up) = stream.until_caught_up();
    seen.extend(ids);
    assert_eq!(seen, (0..=12).collect::<Vec<u64>>(), "no gap and no repeat");
    // The position passes the event it skipped, so a resume does not read it again.
    assert_eq!(caught_up.id, Some(13));
    drop(stream);

    // Browsers resume with the query parameter.
    let mut stream = Stream::open(&format!("{url}&last_event_id=13"), &[]);
    let (ids, caught_up) = stream.until_caught_up();
    assert_eq!((ids, caught_up.id), (vec![], Some(13)));
    publish(&server, &cart(1));
    let message = stream.next();
    assert_eq!((message.id, message.event), (Some(14), None));

    let (status, _, answer) = get_with(&url, &[("last-event-id", "yesterday")], "x");
    assert_eq!((status, answer["error"]["code"].as_str()), (400, Some("invalid_last_event_id")));
}

/// `weir run` listening on every address, with tokens.
struct OffLoopback {
    child: std::process::Child,
    url: String,
}

impl Drop for OffLoopback {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn off_loopback_the_reads_need_the_read_scope() {
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut text = format!(
        "data_dir = {:?}\n[http]\nlisten = \"0.0.0.0:{port}\"\nadmin_token = \"adm\"\n\
         [[http.tokens]]\ntoken = \"rd\"\nscopes = [\"read\"]\n[[http.tokens]]\ntoken = \"pub\"\nscopes = [\"publish\"]\n",
        dir.path().join("data").display().to_string()
    );
    text.push_str(ORDERS);
    for (name, path) in weir_tests::plugins::ALL {
        text = text.replace(&format!("{{{name}}}"), path);
    }
    let config = dir.path().join("weir.toml");
    std::fs::write(&config, text).unwrap();
    let child = std::process::Command::new(weir_bin())
        .args(["run", "--config"])
        .arg(&config)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let server = OffLoopback { child, url: format!("http://127.0.0.1:{port}") };
    let deadline = Instant::now() + Duration::from_secs(60);
    while !agent().get(format!("{}/health", server.url)).call().is_ok_and(|r| r.status() == 200) {
        assert!(Instant::now() < deadline, "weir run did not become healthy");
        std::thread::sleep(Duration::from_millis(50));
    }
    let (status, _, published) = {
        let mut response = agent()
            .post(format!("{}/v1/events", server.url))
            .header("authorization", "Bearer pub")
            .header("content-type", "application/json")
            .send(r#"{"topic":"shop.cart.added"}"#)
            .unwrap();
        let status = response.status().as_u16();
        let body: Value = serde_json::from_str(&response.body_mut().read_to_string().unwrap()).unwrap();
        (status, (), body)
    };
    assert_eq!(status, 200, "{published}");
    let id = published["events"][0]["id"].as_str().unwrap();
    for path in [
        "/v1/log".to_owned(),
        "/v1/log/0".to_owned(),
        format!("/v1/events/{id}"),
        format!("/v1/events/{id}/lineage"),
        "/v1/log/stream".to_owned(),
    ] {
        let url = format!("{}{path}", server.url);
        assert_eq!(get_with(&url, &[], "x").2["error"]["code"], "unauthorized", "{path}");
        let (status, _, answer) = get_with(&url, &[("authorization", "Bearer pub")], "x");
        assert_eq!((status, answer["error"]["code"].as_str()), (403, Some("forbidden")), "{path}");
        if path.ends_with("stream") {
            // Allowed: the stream opens (and is dropped here).
            Stream::open(&url, &[("authorization", "Bearer rd")]);
        } else {
            assert_eq!(get_with(&url, &[("authorization", "Bearer rd")], "x").0, 200, "{path}");
        }
    }
}

#[test]
fn weir_log_tail_follows_new_events_as_json_lines() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), ORDERS);
    publish(&server, &json!([{"topic": "shop.cart.added", "key": "before"}]));
    let mut tail = std::process::Command::new(weir_bin())
        .args(["log", "tail", "--json", "--topics", "shop.>", "--server", &server.url])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let stdout = tail.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            if tx.send(line.unwrap()).is_err() {
                break;
            }
        }
    });
    // Published until one arrives: the tail starts at the head it finds,
    // so an event published before it asked is not printed.
    let deadline = Instant::now() + Duration::from_secs(30);
    let line = loop {
        publish(&server, &json!([{"topic": "shop.cart.added", "key": "after"}, {"topic": "other.thing.done"}]));
        if let Ok(line) = rx.recv_timeout(Duration::from_millis(500)) {
            break line;
        }
        assert!(Instant::now() < deadline, "weir log tail printed nothing");
    };
    let _ = tail.kill();
    let _ = tail.wait();
    let event: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(event["event"]["key"], "after", "{line}");
    assert!(event["seq"].as_u64().unwrap() >= 1, "{line}");
}

#[test]
fn an_open_stream_ends_with_closing_when_the_server_stops() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), ORDERS);
    let mut stream = Stream::open(&format!("{}/v1/log/stream", server.url), &[]);
    let (ids, _) = stream.until_caught_up();
    assert!(ids.is_empty());
    let status = std::process::Command::new("kill").args(["-TERM", &server.pid().to_string()]).status().unwrap();
    assert!(status.success());
    // The stream ends (rather than hold the server's drain open) with a
    // final event saying why.
    let last = stream.next();
    assert_eq!(last.event.as_deref(), Some("closing"), "{last:?}");
    let deadline = Instant::now() + Duration::from_secs(30);
    while agent().get(format!("{}/health", server.url)).call().is_ok() {
        assert!(Instant::now() < deadline, "the server did not stop with a stream open");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_subscription_that_started_after_an_event_shows_it_passed_not_handled() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(dir.path(), ORDERS);
    let published = publish(&server, &json!([{"topic": "orders.order.created", "key": "o-1", "payload": {}}]));
    let id = published[0]["id"].as_str().unwrap().to_owned();
    assert!(server.wait_idle(Duration::from_secs(30)));
    drop(server);
    // The same store, with a second audit subscription that starts at the end.
    let late = r#"
[[pipelines]]
name = "late"
topics = ["orders.order.created"]
[[pipelines.handlers]]
name = "audit"
plugin = "{AUDIT_LOGGER}"
from = "end"
"#;
    server = Server::start(dir.path(), &format!("{ORDERS}{late}"));
    assert!(server.wait_idle(Duration::from_secs(30)));
    let lineage = lineage_when(&server, &id, |l| state_of(l, "late/audit") == "passed");
    assert_eq!(subscription(&lineage, "late/audit")["emitted"], json!([]));
    assert_eq!(state_of(&lineage, "orders/audit"), "handled", "{lineage}");
}
