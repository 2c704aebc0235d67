//! Durable consumers over HTTP against the real `weir run`: fetch and ack
//! under `kill -9`, stale acks, the DLQ and redrive, long polls, the CLI.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use rand::{Rng as _, SeedableRng as _};
use serde_json::{Value, json};
use weir_tests::Server;

const JSON: (&str, &str) = ("content-type", "application/json");

fn agent() -> ureq::Agent {
    ureq::Agent::new_with_config(
        ureq::Agent::config_builder().http_status_as_error(false).timeout_global(Some(Duration::from_secs(60))).build(),
    )
}

/// POST JSON with `agent`; `None` when no answer came (the server died).
fn post(agent: &ureq::Agent, url: &str, body: &Value) -> Option<(u16, Value)> {
    let mut response =
        agent.post(url).header("content-type", "application/json").send(body.to_string().as_bytes()).ok()?;
    let status = response.status().as_u16();
    let text = response.body_mut().read_to_string().ok()?;
    Some((status, serde_json::from_str(&text).unwrap_or(Value::String(text))))
}

fn create(server: &Server, name: &str, settings: &Value) {
    let (status, body) = server.put_with(&format!("/v1/consumers/{name}"), &[JSON], settings.to_string().as_bytes());
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["created"], true);
}

fn publish(server: &Server, range: std::ops::Range<usize>, topic: &str) {
    let batch: Vec<Value> = range
        .map(|i| {
            json!({ "topic": topic, "key": format!("k{}", i % 101), "idempotency_key": format!("item-{i}"),
                         "payload": { "n": i } })
        })
        .collect();
    let (status, body) = server.post("/v1/events", &Value::Array(batch));
    assert_eq!(status, 200, "{body}");
}

fn fetch(server: &Server, name: &str, body: &Value) -> Vec<Value> {
    let (status, answer) = server.post(&format!("/v1/consumers/{name}/fetch"), body);
    assert_eq!(status, 200, "{answer}");
    answer["deliveries"].as_array().unwrap().clone()
}

fn ack(server: &Server, name: &str, body: &Value) -> (u16, Value) {
    server.post(&format!("/v1/consumers/{name}/ack"), body)
}

#[test]
fn kill_9_while_a_client_fetches_and_acks_20000_events_acks_each_exactly_once() {
    const EVENTS: usize = 20_000;
    let seed: u64 = rand::random();
    println!("seed {seed}");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(dir.path(), "");
    for start in (0..EVENTS).step_by(1000) {
        publish(&server, start..start + 1000, "load.item.created");
    }
    // Events of another topic in between are skipped, never delivered.
    publish(&server, EVENTS..EVENTS + 100, "load.item.ignored");
    // A high delivery budget: redeliveries after the kills must not reach
    // the DLQ. A short ack wait: deliveries in flight at a kill come back
    // soon after the restart.
    create(
        &server,
        "load",
        &json!({ "topics": ["load.item.created"], "ack_wait": "3s", "max_deliveries": 1000,
                                     "max_in_flight": 2000 }),
    );

    let url = server.url.clone();
    let acked_count = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let client = {
        let (acked_count, done) = (Arc::clone(&acked_count), Arc::clone(&done));
        std::thread::spawn(move || {
            let agent = agent();
            // seq → acks answered `acked` (durable).
            let mut acked: HashMap<u64, u32> = HashMap::new();
            // Acks sent whose answer never came: durable or not, unknown.
            let mut uncertain: HashSet<u64> = HashSet::new();
            let mut violations = Vec::new();
            let (mut redelivered, mut refused, mut lost_answers) = (0, 0, 0);
            let deadline = Instant::now() + Duration::from_secs(600);
            loop {
                assert!(Instant::now() < deadline, "the client never finished");
                let Some((200, answer)) =
                    post(&agent, &format!("{url}/v1/consumers/load/fetch"), &json!({ "max": 500, "wait": "1s" }))
                else {
                    std::thread::sleep(Duration::from_millis(50));
                    continue;
                };
                let deliveries = answer["deliveries"].as_array().unwrap();
                if deliveries.is_empty() {
                    let Some((200, info)) = agent
                        .get(format!("{url}/v1/consumers/load"))
                        .call()
                        .ok()
                        .and_then(|mut r| Some((r.status().as_u16(), r.body_mut().read_json::<Value>().ok()?)))
                    else {
                        continue;
                    };
                    if info["lag"] == 0 && info["in_flight"] == 0 {
                        break;
                    }
                    continue;
                }
                let mut tokens = Vec::new();
                for d in deliveries {
                    let seq = d["seq"].as_u64().unwrap();
                    assert_eq!(d["event"]["topic"], "load.item.created");
                    if acked.contains_key(&seq) {
                        violations.push(format!("seq {seq} delivered again after a durable ack"));
                    }
                    if d["attempt"].as_u64().unwrap() > 1 {
                        redelivered += 1;
                    }
                    uncertain.remove(&seq);
                    tokens.push((seq, d["token"].as_str().unwrap().to_owned()));
                }
                let body = json!({ "acks": tokens.iter().map(|(_, t)| json!({ "token": t })).collect::<Vec<_>>() });
                match post(&agent, &format!("{url}/v1/consumers/load/ack"), &body) {
                    Some((200, answer)) => {
                        for ((seq, _), result) in tokens.iter().zip(answer["results"].as_array().unwrap()) {
                            if result["outcome"] == "acked" {
                                *acked.entry(*seq).or_default() += 1;
                            } else {
                                // Refused (an ack wait passed under load):
                                // nothing changed, it comes back.
                                refused += 1;
                            }
                        }
                        acked_count.store(acked.len(), Ordering::Relaxed);
                    }
                    Some((status, answer)) => panic!("ack answered {status}: {answer}"),
                    None => {
                        lost_answers += 1;
                        uncertain.extend(tokens.iter().map(|(seq, _)| *seq));
                    }
                }
            }
            done.store(true, Ordering::Relaxed);
            (acked, uncertain, violations, redelivered, refused, lost_answers)
        })
    };

    // Kill at random moments while the client works.
    let mut kills = 0;
    let mut next = 2000;
    while !done.load(Ordering::Relaxed) && kills < 5 {
        if acked_count.load(Ordering::Relaxed) >= next {
            std::thread::sleep(Duration::from_millis(rng.random_range(0..150)));
            server.kill9();
            kills += 1;
            server.restart();
            next += 3500;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let (acked, uncertain, violations, redelivered, refused, lost_answers) = client.join().unwrap();
    println!(
        "{kills} kills, {} acked, {} acks of unknown fate, {redelivered} redeliveries, {refused} refused acks, {lost_answers} lost answers",
        acked.len(),
        uncertain.len()
    );
    assert!(kills >= 3, "the kills did not land while the client worked");
    assert!(violations.is_empty(), "{violations:?}");
    // Every event acked exactly once: by an answered ack, or by one whose
    // answer the kill cut (it was durable: the event never came back).
    let twice: Vec<_> = acked.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "acked more than once: {twice:?}");
    let seqs: HashSet<u64> = acked.keys().chain(uncertain.iter()).copied().collect();
    assert_eq!(seqs.len(), EVENTS);
    assert!(acked.keys().all(|seq| !uncertain.contains(seq)));
    assert_eq!(*seqs.iter().max().unwrap(), EVENTS as u64 - 1);
    // Nothing pending, nothing dead-lettered, on the server either.
    let (_, info) = server.get("/v1/consumers/load");
    assert_eq!((info["lag"].as_u64(), info["in_flight"].as_u64(), info["dlq"].as_u64()), (Some(0), Some(0), Some(0)));
    assert!(fetch(&server, "load", &json!({ "max": 10 })).is_empty());
}

#[test]
fn a_stale_ack_is_refused_and_never_applied_to_a_later_attempt() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), "");
    create(&server, "c", &json!({ "topics": ["orders.*.created"], "ack_wait": "2s" }));
    publish(&server, 0..1, "orders.order.created");

    let first = fetch(&server, "c", &json!({}));
    assert_eq!(first.len(), 1);
    assert_eq!(first[0]["attempt"], 1);
    let token1 = first[0]["token"].as_str().unwrap().to_owned();
    std::thread::sleep(Duration::from_millis(2200));
    // Its ack wait passed: refused.
    let (status, body) = ack(&server, "c", &json!({ "token": token1 }));
    assert_eq!((status, body["error"]["code"].as_str()), (409, Some("stale_ack")), "{body}");
    // Delivered again as attempt 2, with another token.
    let second = fetch(&server, "c", &json!({ "max": 5 }));
    assert_eq!(second.len(), 1);
    assert_eq!(second[0]["attempt"], 2);
    let token2 = second[0]["token"].as_str().unwrap().to_owned();
    assert_ne!(token1, token2);
    // The first attempt's token does not ack the second (an ack wait of 2 s
    // leaves time for the acks below, even on a loaded machine).
    let (status, body) = ack(&server, "c", &json!({ "token": token1 }));
    assert_eq!(status, 409, "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("superseded"), "{body}");
    // A forged token with the right seq and attempt neither.
    let forged = format!("{}.{}", token2.rsplit_once('.').unwrap().0, "0".repeat(32));
    let (status, _) = ack(&server, "c", &json!({ "token": forged }));
    assert_eq!(status, 409);
    let (status, body) = ack(&server, "c", &json!({ "token": "not-a-token" }));
    assert_eq!((status, body["error"]["code"].as_str()), (400, Some("invalid_token")));
    // The real one is taken, once.
    let (status, body) = ack(&server, "c", &json!({ "token": token2 }));
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["results"][0]["outcome"], "acked");
    let (status, body) = ack(&server, "c", &json!({ "acks": [{ "token": token2 }] }));
    assert_eq!((status, body["results"][0]["outcome"].as_str()), (200, Some("unknown")));
    std::thread::sleep(Duration::from_millis(2200));
    assert!(fetch(&server, "c", &json!({ "max": 5 })).is_empty());
    let (_, info) = server.get("/v1/consumers/c");
    assert_eq!((info["in_flight"].as_u64(), info["stale_acks"].as_u64()), (Some(0), Some(4)), "{info}");
}

#[test]
fn exhausted_deliveries_go_to_the_dlq_and_are_redrivable() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), "");
    create(&server, "c", &json!({ "topics": ["orders.>"], "ack_wait": "2s", "max_deliveries": 2 }));
    publish(&server, 0..3, "orders.order.created");

    // Seq 2 is termed at once; seqs 0 and 1 are never acked.
    let got = fetch(&server, "c", &json!({ "max": 10 }));
    assert_eq!(got.len(), 3);
    let (status, body) = ack(&server, "c", &json!({ "token": got[2]["token"], "action": "term", "reason": "poison" }));
    assert_eq!((status, body["results"][0]["outcome"].as_str()), (200, Some("dead_lettered")), "{body}");
    std::thread::sleep(Duration::from_millis(2200));
    let again = fetch(&server, "c", &json!({ "max": 10 }));
    assert_eq!(again.iter().map(|d| d["attempt"].as_u64().unwrap()).collect::<Vec<_>>(), [2, 2]);
    std::thread::sleep(Duration::from_millis(2200));
    // After the last delivery's ack wait: the DLQ, not a third delivery.
    assert!(fetch(&server, "c", &json!({ "max": 10, "wait": "300ms" })).is_empty());
    let (_, dlq) = server.get("/v1/dlq?subscription=consumers/c");
    let entries = dlq["entries"].as_array().unwrap();
    let codes: Vec<(u64, &str, u64)> = entries
        .iter()
        .map(|e| (e["seq"].as_u64().unwrap(), e["code"].as_str().unwrap(), e["attempts"].as_u64().unwrap()))
        .collect();
    assert_eq!(codes, [(0, "consumer_ack_timeout", 2), (1, "consumer_ack_timeout", 2), (2, "consumer_term", 1)]);
    assert_eq!(entries[2]["message"], "poison");
    let (status, detail) = server.get("/v1/dlq/consumers/c/2");
    assert_eq!(status, 200, "{detail}");
    assert_eq!(detail["event"]["idempotency_key"], "item-2");
    let (_, info) = server.get("/v1/consumers/c");
    assert_eq!((info["in_flight"].as_u64(), info["dlq"].as_u64()), (Some(0), Some(3)));

    // Redrive: each comes back as a first delivery, and an ack empties it.
    let (status, body) = server.post("/v1/dlq/redrive", &json!({ "subscription": "consumers/c" }));
    assert_eq!((status, body["redriven"].as_u64()), (200, Some(3)), "{body}");
    let back = fetch(&server, "c", &json!({ "max": 10 }));
    assert_eq!(
        back.iter().map(|d| (d["seq"].as_u64().unwrap(), d["attempt"].as_u64().unwrap())).collect::<Vec<_>>(),
        [(0, 1), (1, 1), (2, 1)]
    );
    let acks: Vec<Value> = back.iter().map(|d| json!({ "token": d["token"] })).collect();
    let (status, body) = ack(&server, "c", &json!({ "acks": acks }));
    assert_eq!(status, 200);
    assert!(body["results"].as_array().unwrap().iter().all(|r| r["outcome"] == "acked"), "{body}");
    let (_, info) = server.get("/v1/consumers/c");
    assert_eq!((info["in_flight"].as_u64(), info["dlq"].as_u64()), (Some(0), Some(0)));
    let (_, status) = server.get("/v1/status");
    assert_eq!(status["consumers"][0]["name"], "c");
    let (_, metrics) = server.get("/metrics");
    let metrics = metrics.as_str().unwrap();
    assert!(metrics.contains("weir_consumer_acked_total{consumer=\"c\"} 3"), "{metrics}");
    assert!(metrics.contains("weir_consumer_in_flight{consumer=\"c\"} 0"));
}

#[test]
fn a_long_poll_wakes_on_a_new_event() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), "");
    publish(&server, 0..2, "orders.order.created");
    // `from = end`: events before the consumer are not delivered.
    create(&server, "c", &json!({ "topics": ["orders.order.created"], "from": "end" }));
    let url = server.url.clone();
    let waiter = std::thread::spawn(move || {
        post(&agent(), &format!("{url}/v1/consumers/c/fetch"), &json!({ "max": 10, "wait": "20s" })).unwrap()
    });
    // Nothing matches yet: the fetch waits; a new event wakes it.
    std::thread::sleep(Duration::from_millis(300));
    assert!(!waiter.is_finished());
    publish(&server, 2..3, "orders.order.created");
    let (status, answer) = waiter.join().unwrap();
    assert_eq!(status, 200);
    let seqs: Vec<u64> = answer["deliveries"].as_array().unwrap().iter().map(|d| d["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, [2]);
    // Bounds: max and wait.
    let (status, body) = server.post("/v1/consumers/c/fetch", &json!({ "max": 1001 }));
    assert_eq!((status, body["error"]["code"].as_str()), (400, Some("invalid_consumer")));
    let (status, _) = server.post("/v1/consumers/c/fetch", &json!({ "wait": "31s" }));
    assert_eq!(status, 400);
    let (status, _) = server.post("/v1/consumers/nope/fetch", &json!({}));
    assert_eq!(status, 404);
}

#[test]
fn the_cli_creates_lists_fetches_acks_and_resets_a_consumer() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), "");
    publish(&server, 0..3, "orders.order.created");
    let weir = |args: &[&str]| {
        let output = std::process::Command::new(weir_tests::weir_bin())
            .args(["consumer", "--server", &server.url])
            .args(args)
            .output()
            .unwrap();
        (
            output.status.success(),
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    };
    let (ok, out, err) = weir(&["create", "svc", "--topic", "orders.>", "--from", "1"]);
    assert!(ok, "{err}");
    assert!(out.contains("created at position 1"), "{out}");
    let (ok, out, _) = weir(&["fetch", "svc", "--max", "10", "--ack"]);
    assert!(ok);
    let seqs: Vec<u64> =
        out.lines().map(|l| serde_json::from_str::<Value>(l).unwrap()["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, [1, 2]);
    let (ok, out, _) = weir(&["list"]);
    assert!(ok);
    assert!(out.lines().any(|l| l.starts_with("svc ")), "{out}");
    let (ok, _, err) = weir(&["reset", "svc", "--from", "beginning"]);
    assert!(ok, "{err}");
    let (ok, out, _) = weir(&["fetch", "svc", "--max", "10"]);
    assert!(ok);
    let token =
        serde_json::from_str::<Value>(out.lines().next().unwrap()).unwrap()["token"].as_str().unwrap().to_owned();
    let (ok, out, _) = weir(&["ack", "svc", &token, "--nak", "--delay", "1h"]);
    assert!(ok);
    assert!(out.contains("naked"), "{out}");
    let (ok, out, _) = weir(&["ack", "svc", &token]);
    assert!(!ok, "an ack of a nak'ed attempt is refused: {out}");
    let (ok, out, _) = weir(&["info", "svc"]);
    assert!(ok);
    assert_eq!(serde_json::from_str::<Value>(&out).unwrap()["in_flight"], 3);
    let (ok, _, err) = weir(&["delete", "svc"]);
    assert!(ok, "{err}");
    assert_eq!(server.get("/v1/consumers/svc").0, 404);
}

#[test]
fn retention_never_removes_an_event_a_consumer_has_not_had_acked() {
    let dir = tempfile::tempdir().unwrap();
    // Retention would keep one byte of the log: everything old goes, but
    // for the consumer's readers' marks.
    let server = Server::start(dir.path(), "[retention]\ndefault = \"1B\"\ninterval = \"10ms\"\n");
    create(&server, "c", &json!({ "topics": ["orders.>"] }));
    publish(&server, 0..20, "orders.order.created");
    publish(&server, 20..40, "other.thing.happened");
    publish(&server, 40..41, "orders.order.created");
    // Retention removes what nobody reads: wait until it has run.
    let deadline = Instant::now() + Duration::from_secs(30);
    while server.get("/v1/log/25").0 != 404 {
        assert!(Instant::now() < deadline, "retention never removed an unread event of another topic");
        std::thread::sleep(Duration::from_millis(50));
    }
    let got = fetch(&server, "c", &json!({ "max": 100 }));
    let seqs: Vec<u64> = got.iter().map(|d| d["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, (0..20).chain([40]).collect::<Vec<u64>>());
}

/// A `weir run` listening on every address, with tokens: off loopback,
/// every route but `/health` and `/ready` needs a token with its scope.
struct OffLoopback {
    child: std::process::Child,
    url: String,
}

impl OffLoopback {
    fn start(dir: &std::path::Path) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let toml = format!(
            "data_dir = {:?}\n[http]\nlisten = \"0.0.0.0:{port}\"\nadmin_token = \"adm\"\n\
             [[http.tokens]]\ntoken = \"rd\"\nscopes = [\"read\"]\n[[http.tokens]]\ntoken = \"pub\"\nscopes = [\"publish\"]\n",
            dir.join("data").display().to_string()
        );
        let config = dir.join("weir.toml");
        std::fs::write(&config, toml).unwrap();
        let child = std::process::Command::new(weir_tests::weir_bin())
            .args(["run", "--config"])
            .arg(&config)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let url = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(60);
        while agent().get(format!("{url}/health")).call().ok().map(|r| r.status().as_u16()) != Some(200) {
            assert!(Instant::now() < deadline, "weir run did not become healthy");
            std::thread::sleep(Duration::from_millis(20));
        }
        Self { child, url }
    }

    fn call(&self, method: &str, path: &str, token: Option<&str>, body: &Value) -> (u16, Value) {
        let url = format!("{}{path}", self.url);
        let agent = agent();
        let auth = token.map(|t| format!("Bearer {t}")).unwrap_or_default();
        let body = body.to_string();
        let result = match method {
            "GET" => agent.get(&url).header("authorization", &auth).call(),
            "PUT" => agent.put(&url).header("authorization", &auth).header(JSON.0, JSON.1).send(body.as_bytes()),
            "DELETE" => agent.delete(&url).header("authorization", &auth).header(JSON.0, JSON.1).call(),
            _ => agent.post(&url).header("authorization", &auth).header(JSON.0, JSON.1).send(body.as_bytes()),
        };
        let mut response = result.unwrap();
        let status = response.status().as_u16();
        let text = response.body_mut().read_to_string().unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
    }
}

impl Drop for OffLoopback {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn off_loopback_creating_and_deleting_need_admin_and_fetch_and_ack_need_read() {
    let dir = tempfile::tempdir().unwrap();
    let server = OffLoopback::start(dir.path());
    let settings = json!({ "topics": ["orders.>"] });
    // Creating, resetting and deleting: admin only.
    for token in [None, Some("rd"), Some("pub")] {
        let (status, body) = server.call("PUT", "/v1/consumers/c", token, &settings);
        assert_eq!(status, if token.is_none() { 401 } else { 403 }, "{token:?}: {body}");
    }
    assert_eq!(server.call("PUT", "/v1/consumers/c", Some("adm"), &settings).0, 201);
    assert_eq!(server.call("POST", "/v1/consumers/c/reset", Some("rd"), &json!({ "from": "end" })).0, 403);
    assert_eq!(server.call("DELETE", "/v1/consumers/c", Some("rd"), &json!(null)).0, 403);
    // Reading, fetching and acking: the read scope.
    let event = json!({ "topic": "orders.order.created", "payload": {} });
    assert_eq!(server.call("POST", "/v1/events", Some("pub"), &event).0, 200);
    for (method, path, body) in [
        ("GET", "/v1/consumers", json!(null)),
        ("GET", "/v1/consumers/c", json!(null)),
        ("POST", "/v1/consumers/c/fetch", json!({})),
        ("POST", "/v1/consumers/c/ack", json!({ "acks": [{ "token": "0.1.00000000000000000000000000000000" }] })),
    ] {
        assert_eq!(server.call(method, path, None, &body).0, 401, "{method} {path}");
        assert_eq!(server.call(method, path, Some("pub"), &body).0, 403, "{method} {path}");
    }
    let (status, answer) = server.call("POST", "/v1/consumers/c/fetch", Some("rd"), &json!({ "max": 5 }));
    assert_eq!(status, 200, "{answer}");
    let token = answer["deliveries"][0]["token"].as_str().unwrap().to_owned();
    let (status, answer) = server.call("POST", "/v1/consumers/c/ack", Some("rd"), &json!({ "token": token }));
    assert_eq!((status, answer["results"][0]["outcome"].as_str()), (200, Some("acked")), "{answer}");
    assert_eq!(server.call("DELETE", "/v1/consumers/c", Some("adm"), &json!(null)).0, 204);
    assert_eq!(server.call("GET", "/v1/consumers/c", Some("rd"), &json!(null)).0, 404);
}

#[test]
fn the_number_of_consumers_is_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), "[consumers]\nmax_consumers = 2\n");
    create(&server, "a", &json!({ "topics": ["orders.>"] }));
    create(&server, "b", &json!({ "topics": ["orders.>"] }));
    let body = json!({ "topics": ["orders.>"] }).to_string();
    let (status, answer) = server.put_with("/v1/consumers/c", &[JSON], body.as_bytes());
    assert_eq!((status, answer["error"]["code"].as_str()), (409, Some("too_many_consumers")), "{answer}");
    // Changing an existing one is not a new one.
    let (status, answer) = server.put_with("/v1/consumers/b", &[JSON], body.as_bytes());
    assert_eq!((status, answer["created"].as_bool()), (200, Some(false)));
    for bad in [
        json!({ "topics": [] }),
        json!({ "topics": ["Not a pattern"] }),
        json!({ "topics": ["orders.>"], "max_in_flight": 10_001 }),
        json!({ "topics": ["orders.>"], "ack_wait": "2days" }),
        json!({ "topics": ["orders.>"], "max_deliveries": 0 }),
        json!({ "topics": ["orders.>"], "from": "yesterday" }),
        json!({ "topics": ["orders.>"], "unknown": 1 }),
    ] {
        let (status, answer) = server.put_with("/v1/consumers/b", &[JSON], bad.to_string().as_bytes());
        assert_eq!(status, 400, "{bad}: {answer}");
    }
    let (status, _) = server.put_with("/v1/consumers/Bad%20Name", &[JSON], body.as_bytes());
    assert_eq!(status, 400);
}

#[test]
#[ignore = "needs chromium (Debian: chromium); run with `cargo test -- --include-ignored`"]
fn the_dashboard_lists_the_consumers_with_their_lag_and_in_flight() {
    let chromium = std::env::var_os("PATH")
        .and_then(|path| {
            std::env::split_paths(&path)
                .flat_map(|dir| ["chromium", "chromium-browser"].map(|n| dir.join(n)))
                .find(|p| p.is_file())
        })
        .expect("chromium is not installed (Debian: chromium)");
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), "");
    create(&server, "billing", &json!({ "topics": ["orders.>"] }));
    publish(&server, 0..3, "orders.order.created");
    assert_eq!(fetch(&server, "billing", &json!({ "max": 2 })).len(), 2);
    // The page's own script polls /v1/status and fills the table; the
    // virtual time budget lets it run before the DOM is dumped.
    let output = std::process::Command::new(chromium)
        .args(["--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=5000", "--dump-dom"])
        .arg(format!("{}/", server.url))
        .output()
        .unwrap();
    let dom = String::from_utf8_lossy(&output.stdout);
    assert!(dom.contains("id=\"consumers-panel\">"), "the panel is hidden or missing: {dom}");
    let row = dom.split("<tr data-consumer=\"billing\">").nth(1).expect("no row for the consumer");
    let row = row.split("</tr>").next().unwrap();
    for (field, value) in [("cursor", "3"), ("lag", "0"), ("in_flight", "3"), ("delivered", "2")] {
        assert!(row.contains(&format!("data-field=\"{field}\">{value}<")), "{field} is not {value}: {row}");
    }
}

#[test]
fn a_consumer_created_from_a_time_starts_at_the_first_event_appended_since() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), "");
    publish(&server, 0..3, "orders.order.created");
    // The time index is by the second: the next events are a second later.
    std::thread::sleep(Duration::from_millis(1100));
    let since = weir_runtime::format_time(weir_runtime::now_nanos());
    publish(&server, 3..5, "orders.order.created");
    create(&server, "c", &json!({ "topics": ["orders.>"], "from": since }));
    let seqs: Vec<u64> =
        fetch(&server, "c", &json!({ "max": 10 })).iter().map(|d| d["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, [3, 4]);
    // A reset to the beginning brings the older ones back.
    let (status, info) = server.post("/v1/consumers/c/reset", &json!({ "from": "beginning" }));
    assert_eq!((status, info["cursor"].as_u64(), info["in_flight"].as_u64()), (200, Some(0), Some(0)), "{info}");
    assert_eq!(fetch(&server, "c", &json!({ "max": 10 })).len(), 5);
}

#[test]
fn fetches_waiting_past_the_bound_are_answered_503_and_the_others_served() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), "[consumers]\nmax_waiting_fetches = 1\n");
    create(&server, "c", &json!({ "topics": ["orders.>"] }));
    let url = server.url.clone();
    // The waiter takes the one waiting slot (retrying while one of the
    // short fetches below holds it).
    let waiter = std::thread::spawn(move || {
        loop {
            let answer =
                post(&agent(), &format!("{url}/v1/consumers/c/fetch"), &json!({ "max": 10, "wait": "30s" })).unwrap();
            if answer.0 != 503 {
                return answer;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    });
    // Once the waiter holds the slot, a second fetch that would wait is
    // refused at once. Until then a probe may get the slot itself (and is
    // answered empty after its wait). The pause after such a probe leaves
    // the slot free for the waiter, retrying every 10 ms, to take: probing
    // back to back could win the race for it every time on a loaded machine.
    let deadline = Instant::now() + Duration::from_secs(20);
    let refused = loop {
        let (status, body) = server.post("/v1/consumers/c/fetch", &json!({ "wait": "50ms" }));
        if status == 503 {
            break body;
        }
        assert_eq!(status, 200, "{body}");
        assert!(Instant::now() < deadline, "a second waiting fetch was never refused");
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(refused["error"]["code"], "overloaded");
    // A fetch that does not wait is served.
    assert!(fetch(&server, "c", &json!({})).is_empty());
    assert!(!waiter.is_finished());
    publish(&server, 0..1, "orders.order.created");
    let (status, answer) = waiter.join().unwrap();
    assert_eq!((status, answer["deliveries"].as_array().map(Vec::len)), (200, Some(1)));
}

#[test]
fn a_pipeline_named_consumers_is_refused_since_consumers_dlq_entries_use_the_name() {
    let dir = tempfile::tempdir().unwrap();
    let toml = format!(
        "[[pipelines]]\nname = \"consumers\"\ntopics = [\"orders.>\"]\n[[pipelines.handlers]]\nname = \"audit\"\nplugin = {:?}\n",
        weir_tests::plugins::ALL[0].1
    );
    let error = weir_runtime::Config::parse(&toml, &dir.path().join("weir.toml")).unwrap_err();
    assert!(error.to_string().contains("\"consumers\" is reserved"), "{error}");
    assert!(
        weir_runtime::Config::parse(&toml.replace("\"consumers\"", "\"orders\""), &dir.path().join("weir.toml"))
            .is_ok()
    );
}

#[test]
fn requests_a_browser_sends_without_preflight_cannot_create_fetch_ack_or_reset() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), "");
    create(&server, "c", &json!({ "topics": ["orders.>"] }));
    publish(&server, 0..1, "orders.order.created");
    let settings = json!({ "topics": ["orders.>"] }).to_string();
    let plain = ("content-type", "text/plain");
    let evil = ("origin", "http://evil.example");
    let cross = ("sec-fetch-site", "cross-site");
    let (status, _) = server.put_with("/v1/consumers/x", &[plain], settings.as_bytes());
    assert_eq!(status, 415);
    let (status, _) = server.put_with("/v1/consumers/x", &[JSON, evil], settings.as_bytes());
    assert_eq!(status, 403);
    for path in ["/v1/consumers/c/fetch", "/v1/consumers/c/ack", "/v1/consumers/c/reset"] {
        assert_eq!(server.post_with(path, &[plain], b"{}").0, 415, "{path}");
        assert_eq!(server.post_with(path, &[JSON, evil], b"{}").0, 403, "{path}");
        assert_eq!(server.post_with(path, &[JSON, cross], b"{}").0, 403, "{path}");
    }
    // Nothing changed: no consumer x, nothing delivered from c.
    assert_eq!(server.get("/v1/consumers/x").0, 404);
    let (_, info) = server.get("/v1/consumers/c");
    assert_eq!((info["in_flight"].as_u64(), info["delivered"].as_u64()), (Some(0), Some(0)), "{info}");
}
