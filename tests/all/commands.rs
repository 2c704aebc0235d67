//! Aggregates deciding commands, against the real binary and the real
//! bank-account aggregate (issue #14 item 3, time travel of item 5):
//! accept and reject, a retried command answering its first result, 16
//! threads on one entity, snapshots rebuilt after a restart and after the
//! aggregate changes, time travel equal to a fold, bad input codes, and
//! kill -9 during 20,000 deposits and withdrawals.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use rand::{Rng, SeedableRng};
use serde_json::{Value, json};
use weir_tests::Server;

const BANK: &str = "\n[[entities]]\ntype = \"accounts.account\"\naggregate = \"{BANK_ACCOUNT}\"\n";

fn command(server: &Server, id: &str, name: &str, payload: Value, key: &str) -> (u16, Value) {
    server.post(
        &format!("/v1/commands/accounts.account/{id}"),
        &json!({"command": name, "payload": payload, "idempotency_key": key}),
    )
}

fn ok(server: &Server, id: &str, name: &str, payload: Value, key: &str) -> Value {
    let (status, body) = command(server, id, name, payload, key);
    assert_eq!(status, 200, "{name} {key}: {body}");
    body
}

/// Every event of a stream, in revision order.
fn stream(server: &Server, id: &str) -> Vec<Value> {
    let mut out = Vec::new();
    let mut from = 0;
    loop {
        let (status, page) = server.get(&format!("/v1/streams/accounts.account/{id}?from={from}&limit=1000"));
        assert_eq!(status, 200, "{page}");
        out.extend(page["events"].as_array().unwrap().iter().cloned());
        match page["next"].as_u64() {
            Some(next) => from = next,
            None => return out,
        }
    }
}

/// The balance the stream's events fold to, as the test computes it.
fn fold(events: &[Value]) -> u64 {
    let mut balance = 0u64;
    for e in events {
        let amount = e["event"]["payload"]["amount"].as_u64().unwrap_or(0);
        match e["event"]["topic"].as_str().unwrap() {
            "accounts.account.deposited" => balance += amount,
            "accounts.account.withdrew" => balance -= amount,
            _ => {}
        }
    }
    balance
}

fn state(server: &Server, id: &str, at: Option<&str>) -> Value {
    let query = at.map(|a| format!("?at={}", a.replace('+', "%2B"))).unwrap_or_default();
    let (status, body) = server.get(&format!("/v1/streams/accounts.account/{id}/state{query}"));
    assert_eq!(status, 200, "{body}");
    body
}

#[test]
fn accepts_rejects_and_answers_a_retry_with_its_first_result() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), BANK);

    let opened = ok(&server, "a1", "open", json!({"owner": "ann"}), "c-open");
    assert_eq!((opened["revision"].as_u64(), opened["duplicate"].as_bool()), (Some(0), Some(false)), "{opened}");
    assert_eq!(opened["events"][0]["revision"], 0);
    let deposited = ok(&server, "a1", "deposit", json!({"amount": 100}), "c-dep-1");
    assert_eq!(deposited["revision"], 1);

    let (status, body) = command(&server, "a1", "withdraw", json!({"amount": 150}), "c-wd-1");
    assert_eq!((status, body["error"]["code"].as_str()), (422, Some("command_rejected")), "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("insufficient funds: the balance is 100"));

    // After more money, the same withdrawal under the same key is still the
    // first answer, not a new decision; under a new key it passes.
    ok(&server, "a1", "deposit", json!({"amount": 100}), "c-dep-2");
    let (status, again) = command(&server, "a1", "withdraw", json!({"amount": 150}), "c-wd-1");
    assert_eq!((status, again["error"]["message"].clone()), (422, body["error"]["message"].clone()));
    ok(&server, "a1", "withdraw", json!({"amount": 150}), "c-wd-2");
    // An accepted command's retry answers its events, marked duplicate.
    let retried = ok(&server, "a1", "deposit", json!({"amount": 100}), "c-dep-1");
    assert_eq!(retried["duplicate"], true);
    assert_eq!(retried["events"], deposited["events"]);

    let events = stream(&server, "a1");
    let topics: Vec<&str> = events.iter().map(|e| e["event"]["topic"].as_str().unwrap()).collect();
    assert_eq!(
        topics,
        [
            "accounts.account.opened",
            "accounts.account.deposited",
            "accounts.account.deposited",
            "accounts.account.withdrew"
        ]
    );
    assert_eq!(events[1]["event"]["headers"]["weir-command"], "deposit");
    assert_eq!(events[1]["event"]["headers"]["weir-command-key"], "c-dep-1");
    assert_eq!(events[1]["event"]["id"], deposited["events"][0]["id"]);
    let now = state(&server, "a1", None);
    assert_eq!((now["revision"].as_u64(), now["state"]["balance"].as_u64()), (Some(3), Some(50)), "{now}");
    assert_eq!(now["state"]["owner"], "ann");

    // The audit trail: every command once, in order, with its result.
    let (status, list) = server.get("/v1/commands/accounts.account/a1");
    assert_eq!(status, 200, "{list}");
    let trail: Vec<(String, String)> = list["commands"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c["idempotency_key"].as_str().unwrap().to_owned(), c["result"].as_str().unwrap().to_owned()))
        .collect();
    let expected = [
        ("c-open", "accepted"),
        ("c-dep-1", "accepted"),
        ("c-wd-1", "rejected"),
        ("c-dep-2", "accepted"),
        ("c-wd-2", "accepted"),
    ];
    assert_eq!(trail, expected.map(|(k, r)| (k.to_owned(), r.to_owned())));
    let (_, page) = server.get("/v1/commands/accounts.account/a1?limit=2&from=2");
    assert_eq!((page["commands"][0]["ordinal"].as_u64(), page["next"].as_u64()), (Some(2), Some(4)), "{page}");
    let (status, one) = server.get("/v1/commands/accounts.account/a1?idempotency_key=c-wd-1");
    assert_eq!(status, 200, "{one}");
    assert_eq!(one["commands"][0]["payload"], json!({"amount": 150}));
    assert!(one["commands"][0]["reason"].as_str().unwrap().contains("insufficient funds"));
    let (status, _) = server.get("/v1/commands/accounts.account/a1?idempotency_key=nope");
    assert_eq!(status, 404);
}

#[test]
fn sixteen_threads_on_one_entity_skip_and_repeat_no_revision() {
    const THREADS: usize = 16;
    const EACH: usize = 25;
    let dir = tempfile::tempdir().unwrap();
    let server = Arc::new(Server::start(dir.path(), BANK));
    ok(&server, "hot", "open", json!({}), "open");
    let answers: Vec<(String, u16, Value)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..THREADS)
            .map(|t| {
                let server = Arc::clone(&server);
                s.spawn(move || {
                    let mut rng = rand::rngs::StdRng::seed_from_u64(t as u64);
                    let mut out = Vec::new();
                    for i in 0..EACH {
                        let key = format!("t{t}-{i}");
                        let (name, amount) =
                            if i % 2 == 0 { ("deposit", 50) } else { ("withdraw", rng.random_range(1..120)) };
                        loop {
                            let (status, body) = command(&server, "hot", name, json!({"amount": amount}), &key);
                            if status == 503 {
                                std::thread::sleep(Duration::from_millis(10));
                                continue;
                            }
                            out.push((key, status, body));
                            break;
                        }
                    }
                    out
                })
            })
            .collect();
        handles.into_iter().flat_map(|h| h.join().unwrap()).collect()
    });
    let mut revisions = Vec::new();
    let mut accepted_ids = HashSet::new();
    for (key, status, body) in &answers {
        match status {
            200 => {
                revisions.push(body["revision"].as_u64().unwrap());
                accepted_ids.insert(body["events"][0]["id"].as_str().unwrap().to_owned());
            }
            422 => assert_eq!(body["error"]["code"], "command_rejected", "{key}: {body}"),
            other => panic!("{key}: {other} {body}"),
        }
    }
    revisions.sort_unstable();
    let n = revisions.len() as u64;
    assert_eq!(revisions, (1..=n).collect::<Vec<_>>(), "one accepted command per revision, none skipped");
    let events = stream(&server, "hot");
    assert_eq!(events.len() as u64, n + 1);
    let in_stream: HashSet<String> =
        events.iter().skip(1).map(|e| e["event"]["id"].as_str().unwrap().to_owned()).collect();
    assert_eq!(in_stream, accepted_ids, "every accepted command's event is in the stream");
    let now = state(&server, "hot", None);
    assert_eq!(now["state"]["balance"].as_u64(), Some(fold(&events)));
    assert_eq!(now["revision"].as_u64(), Some(n));
}

/// The bank-account module with a custom section appended: the same code,
/// another sha256, so the runtime takes it for a new version.
fn other_version(dir: &std::path::Path) -> String {
    let mut bytes = std::fs::read(weir_tests::plugins::BANK_ACCOUNT).unwrap();
    let (name, content) = (b"weir-test-version", b"2");
    bytes.push(0);
    bytes.push((1 + name.len() + content.len()) as u8);
    bytes.push(name.len() as u8);
    bytes.extend_from_slice(name);
    bytes.extend_from_slice(content);
    let path = dir.join("bank-account-v2.wasm");
    std::fs::write(&path, bytes).unwrap();
    path.display().to_string()
}

#[test]
fn snapshots_rebuild_after_a_restart_an_outside_append_and_a_deployed_aggregate() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(dir.path(), BANK);
    ok(&server, "a1", "open", json!({}), "o");
    for i in 0..5 {
        ok(&server, "a1", "deposit", json!({"amount": 10}), &format!("d{i}"));
    }
    server.kill9();
    server.restart();
    assert_eq!(state(&server, "a1", None)["state"]["balance"], 50);
    fn folded_by(server: &Server, key: &str) -> (u64, Value) {
        let (status, body) = server.get(&format!("/v1/commands/accounts.account/a1?idempotency_key={key}"));
        assert_eq!(status, 200, "{body}");
        (body["commands"][0]["folded"].as_u64().unwrap(), body["commands"][0]["aggregate"].clone())
    }
    assert_eq!(folded_by(&server, "o").0, 0, "nothing to fold before the first event");
    assert_eq!(folded_by(&server, "d4").0, 0, "the snapshot was current");
    // An append outside commands: the snapshot is behind, the next command
    // folds the event in before deciding.
    let (status, body) = server.post(
        "/v1/streams/accounts.account/a1",
        &json!({"expected_revision": 5, "events": [{"topic": "accounts.account.deposited", "payload": {"amount": 7}}]}),
    );
    assert_eq!(status, 200, "{body}");
    let (status, body) = command(&server, "a1", "withdraw", json!({"amount": 57}), "w1");
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["revision"], 7);
    assert_eq!(folded_by(&server, "w1").0, 1, "the event appended outside commands was folded in");
    let (status, _) = command(&server, "a1", "withdraw", json!({"amount": 1}), "w2");
    assert_eq!(status, 422, "the balance is 0");

    // A new version of the aggregate, deployed, then a restart: the
    // registry's active version runs, and snapshots of the old one are not
    // trusted: the state is folded again from the stream.
    let v2 = std::fs::read(other_version(dir.path())).unwrap();
    let (status, deployed) =
        server.post_with("/v1/entities/accounts.account/aggregate", &[("content-type", "application/wasm")], &v2);
    assert_eq!(status, 200, "{deployed}");
    server.kill9();
    server.restart();
    let body = ok(&server, "a1", "deposit", json!({"amount": 3}), "d-after");
    assert_eq!(body["revision"], 8);
    let (after, new_sha) = folded_by(&server, "d-after");
    assert_eq!(after, 8, "the new version folded the whole stream, not the old snapshot");
    assert_eq!(new_sha, deployed["sha256"], "the deployed version survives the restart");
    assert_ne!(new_sha, folded_by(&server, "d0").1);
    assert_eq!(folded_by(&server, "w1").0, 1);
    // Its snapshot is current again: the next command folds nothing.
    ok(&server, "a1", "deposit", json!({"amount": 1}), "d-next");
    assert_eq!(folded_by(&server, "d-next").0, 0);
    assert_eq!(state(&server, "a1", None)["state"]["balance"], 4);
    assert_eq!(fold(&stream(&server, "a1")), 4);
}

#[test]
fn time_travel_equals_a_fold_up_to_a_revision_and_a_time() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), BANK);
    ok(&server, "t1", "open", json!({}), "o");
    for (i, amount) in [5, 20, 7, 40].iter().enumerate() {
        ok(&server, "t1", "deposit", json!({"amount": amount}), &format!("d{i}"));
        std::thread::sleep(Duration::from_millis(5));
    }
    ok(&server, "t1", "withdraw", json!({"amount": 30}), "w");
    let events = stream(&server, "t1");
    for revision in 0..events.len() {
        let at = state(&server, "t1", Some(&revision.to_string()));
        assert_eq!(at["revision"].as_u64(), Some(revision as u64), "{at}");
        assert_eq!(at["state"]["balance"].as_u64(), Some(fold(&events[..=revision])), "at revision {revision}");
        // At an event's time: that event and the ones before it.
        let time = events[revision]["event"]["time"].as_str().unwrap();
        let at = state(&server, "t1", Some(time));
        assert_eq!(at["revision"].as_u64(), Some(revision as u64), "at {time}: {at}");
        assert_eq!(at["state"]["balance"].as_u64(), Some(fold(&events[..=revision])));
    }
    let before = state(&server, "t1", Some("2000-01-01T00:00:00Z"));
    assert_eq!((before["revision"].clone(), before["state"].clone()), (json!(null), json!(null)));
    assert_eq!(before["current_revision"], 5);
    let (status, body) = server.get("/v1/streams/accounts.account/t1/state?at=100000");
    assert_eq!((status, body["error"]["code"].as_str()), (422, Some("stream_too_long")), "{body}");
    let (status, body) = server.get("/v1/streams/accounts.account/t1/state?at=yesterday");
    assert_eq!((status, body["error"]["code"].as_str()), (400, Some("invalid_query")), "{body}");
}

#[test]
fn bad_input_answers_a_clear_code_and_stores_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let toml = format!(
        "{BANK}\n[[entities]]\ntype = \"orders.order\"\n\n[[entities]]\ntype = \"accounts.small\"\naggregate = \"{{BANK_ACCOUNT}}\"\n[entities.limits]\nmax_state_value_bytes = 60\n"
    );
    let server = Server::start(dir.path(), &toml);
    let post = |path: &str, body: &[u8]| server.try_post(path, "application/json", body).unwrap();
    let cases: Vec<(&str, Vec<u8>, u16, &str)> = vec![
        (
            "/v1/commands/billing.invoice/x",
            br#"{"command":"open","idempotency_key":"k"}"#.to_vec(),
            404,
            "unknown_entity_type",
        ),
        ("/v1/commands/orders.order/x", br#"{"command":"open","idempotency_key":"k"}"#.to_vec(), 404, "no_aggregate"),
        ("/v1/commands/accounts.account/x", b"{not json".to_vec(), 400, "invalid_json"),
        ("/v1/commands/accounts.account/x", br#"{"command":"open"}"#.to_vec(), 400, "invalid_json"),
        (
            "/v1/commands/accounts.account/x",
            br#"{"command":"open","idempotency_key":""}"#.to_vec(),
            400,
            "invalid_idempotency_key",
        ),
        (
            "/v1/commands/accounts.account/x",
            br#"{"command":"no such","idempotency_key":"k"}"#.to_vec(),
            400,
            "invalid_command",
        ),
        (
            "/v1/commands/accounts.account/x",
            br#"{"command":"open","idempotency_key":"k","extra":1}"#.to_vec(),
            400,
            "invalid_json",
        ),
        (
            "/v1/commands/accounts.account/x",
            br#"{"command":"close","idempotency_key":"k1"}"#.to_vec(),
            422,
            "command_rejected",
        ),
        (
            "/v1/commands/accounts.account/x",
            br#"{"command":"deposit","payload":{"amount":"ten"},"idempotency_key":"k2"}"#.to_vec(),
            422,
            "command_rejected",
        ),
        (
            "/v1/commands/accounts.small/x",
            format!(r#"{{"command":"open","payload":{{"owner":"{}"}},"idempotency_key":"k3"}}"#, "o".repeat(100))
                .into_bytes(),
            422,
            "state_too_large",
        ),
    ];
    for (path, body, status, code) in cases {
        let (got, answer) = post(path, &body);
        assert_eq!(
            (got, answer["error"]["code"].as_str()),
            (status, Some(code)),
            "{path} {}: {answer}",
            String::from_utf8_lossy(&body)
        );
    }
    let (_, status) = server.get("/v1/status");
    assert_eq!(status["head"], 0, "nothing was appended");
    let (status, body) = server.get("/v1/streams/accounts.account/x/state");
    assert_eq!((status, body["state"].clone()), (200, json!(null)));
    let (status, body) = server.get("/v1/streams/orders.order/x/state");
    assert_eq!((status, body["error"]["code"].as_str()), (404, Some("no_aggregate")));
    // A small state still fits its bound.
    let (status, body) = post("/v1/commands/accounts.small/x", br#"{"command":"open","idempotency_key":"k4"}"#);
    assert_eq!(status, 200, "{body}");
}

#[test]
fn kill_9_during_20000_commands_loses_and_repeats_nothing_acknowledged() {
    const ACCOUNTS: usize = 200;
    const PER_ACCOUNT: usize = 100;
    const CLIENTS: usize = 8;
    let seed: u64 = rand::random();
    println!("seed {seed}");
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(dir.path(), BANK);
    let url = server.url.clone();
    let done = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|c| {
            let (url, done) = (url.clone(), Arc::clone(&done));
            std::thread::spawn(move || {
                let agent = ureq::Agent::new_with_config(
                    ureq::Agent::config_builder()
                        .http_status_as_error(false)
                        .timeout_global(Some(Duration::from_secs(30)))
                        .build(),
                );
                let mut rng = rand::rngs::StdRng::seed_from_u64(seed ^ c as u64);
                // Answers: (account, idempotency key) → (status, body).
                let mut answers: BTreeMap<(String, String), (u16, Value)> = BTreeMap::new();
                let mine: Vec<usize> = (0..ACCOUNTS).filter(|a| a % CLIENTS == c).collect();
                for step in 0..PER_ACCOUNT {
                    for account in &mine {
                        let id = format!("acct-{account}");
                        let key = format!("{id}-{step}");
                        let body = match step {
                            0 => json!({"command": "open", "idempotency_key": key}),
                            _ if rng.random_bool(0.6) => {
                                json!({"command": "deposit", "payload": {"amount": rng.random_range(1..100)}, "idempotency_key": key})
                            }
                            _ => json!({"command": "withdraw", "payload": {"amount": rng.random_range(1..150)}, "idempotency_key": key}),
                        };
                        let text = body.to_string();
                        // Sent again with the same key until answered.
                        let answer = loop {
                            let sent = agent
                                .post(format!("{url}/v1/commands/accounts.account/{id}"))
                                .header("content-type", "application/json")
                                .send(text.as_bytes());
                            if let Ok(mut response) = sent {
                                let status = response.status().as_u16();
                                if status == 200 || status == 422 {
                                    let text = response.body_mut().read_to_string().unwrap_or_default();
                                    if let Ok(value) = serde_json::from_str::<Value>(&text) {
                                        break (status, value);
                                    }
                                }
                            }
                            std::thread::sleep(Duration::from_millis(20));
                        };
                        answers.insert((id, key), answer);
                    }
                }
                done.store(true, Ordering::Relaxed);
                answers
            })
        })
        .collect();
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut kills = 0;
    while !done.load(Ordering::Relaxed) && kills < 6 {
        std::thread::sleep(Duration::from_millis(rng.random_range(300..1500)));
        server.kill9();
        kills += 1;
        server.restart();
    }
    let answers: BTreeMap<(String, String), (u16, Value)> =
        clients.into_iter().flat_map(|c| c.join().unwrap()).collect();
    assert!(kills >= 1);
    assert_eq!(answers.len(), ACCOUNTS * PER_ACCOUNT);
    server.kill9();
    server.restart();

    /// An account's commands: idempotency key and answer.
    type Sent<'a> = Vec<(&'a String, &'a (u16, Value))>;
    let mut by_account: HashMap<String, Sent<'_>> = HashMap::new();
    for ((id, key), answer) in &answers {
        by_account.entry(id.clone()).or_default().push((key, answer));
    }
    for (id, commands) in &by_account {
        let events = stream(&server, id);
        // Every event of the stream came from exactly one command.
        let mut keys: HashMap<String, Vec<String>> = HashMap::new();
        for e in &events {
            let key = e["event"]["headers"]["weir-command-key"].as_str().unwrap().to_owned();
            keys.entry(key).or_default().push(e["event"]["id"].as_str().unwrap().to_owned());
        }
        for (key, (status, body)) in commands {
            let stored = keys.get(key.as_str());
            if *status == 200 {
                let ids: Vec<String> =
                    body["events"].as_array().unwrap().iter().map(|e| e["id"].as_str().unwrap().to_owned()).collect();
                assert_eq!(stored, Some(&ids), "{id} {key}: acknowledged events in the stream exactly once");
            } else {
                assert_eq!(body["error"]["code"], "command_rejected", "{id} {key}: {body}");
                assert_eq!(stored, None, "{id} {key}: a rejected command appended nothing");
            }
        }
        assert_eq!(keys.values().map(Vec::len).sum::<usize>(), events.len());
        let now = state(&server, id, None);
        assert_eq!(now["state"]["balance"].as_u64(), Some(fold(&events)), "{id}: balance equals the fold");
        assert_eq!(now["revision"].as_u64(), Some(events.len() as u64 - 1));
    }
}

#[test]
fn a_deployed_aggregate_decides_from_then_on_and_a_handler_module_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), BANK);
    ok(&server, "s1", "open", json!({}), "o");
    ok(&server, "s1", "deposit", json!({"amount": 9}), "d1");
    let wasm = |path: &str| std::fs::read(path).unwrap();
    let swap = |ty: &str, bytes: &[u8]| {
        server.post_with(&format!("/v1/entities/{ty}/aggregate"), &[("content-type", "application/wasm")], bytes)
    };
    let (status, body) = swap("accounts.account", &wasm(weir_tests::plugins::COUNTER));
    assert_eq!((status, body["error"]["code"].as_str()), (422, Some("bad_export")), "{body}");
    let (status, body) = swap("billing.invoice", &wasm(weir_tests::plugins::BANK_ACCOUNT));
    assert_eq!((status, body["error"]["code"].as_str()), (404, Some("unknown_entity_type")), "{body}");
    let v2 = wasm(&other_version(dir.path()));
    let (status, body) = swap("accounts.account", &v2);
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["sha256"].as_str().unwrap(), weir_tests::sha256(&v2));
    assert_eq!(body["previous"].as_str().unwrap(), weir_tests::sha256(&wasm(weir_tests::plugins::BANK_ACCOUNT)));
    ok(&server, "s1", "withdraw", json!({"amount": 4}), "w1");
    let (_, record) = server.get("/v1/commands/accounts.account/s1?idempotency_key=w1");
    assert_eq!(record["commands"][0]["aggregate"], body["sha256"]);
    assert_eq!(record["commands"][0]["folded"], 2, "the new version folded the stream again");
    assert_eq!(state(&server, "s1", None)["state"]["balance"], 5);
    // Its versions are in the registry under entities/<type>, not an orphan.
    let (status, list) = server.get("/v1/subscriptions");
    assert_eq!(status, 200, "{list}");
    let entry = list["subscriptions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "entities/accounts.account")
        .unwrap_or_else(|| panic!("{list}"))
        .clone();
    assert_eq!(entry["configured"], true, "{entry}");
}

#[test]
fn weir_command_send_and_weir_stream_state() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), BANK);
    let cli = |args: &[&str]| {
        let mut all = args.to_vec();
        all.extend(["--server", &server.url]);
        let out = weir_tests::weir(&all, dir.path());
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, out, err) = cli(&["command", "send", "accounts.account/c1", "open", "--idempotency-key", "o"]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert_eq!(serde_json::from_str::<Value>(&out).unwrap()["revision"], 0);
    let (code, out, err) =
        cli(&["command", "send", "accounts.account/c1", "deposit", "--payload", r#"{"amount": 30}"#]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(err.contains("idempotency key: "), "a fresh key is printed: {err}");
    let (code, _, err) = cli(&["command", "send", "accounts.account/c1", "withdraw", "--payload", r#"{"amount": 31}"#]);
    assert_eq!(code, Some(1));
    assert!(err.contains("rejected: insufficient funds"), "{err}");
    let (code, out, err) = cli(&["stream", "state", "accounts.account/c1"]);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(serde_json::from_str::<Value>(&out).unwrap()["balance"], 30);
    let (code, out, _) = cli(&["stream", "state", "accounts.account/c1", "--at", "0"]);
    assert_eq!(code, Some(0));
    assert_eq!(serde_json::from_str::<Value>(&out).unwrap()["balance"], 0);
    let (code, out, _) = cli(&["command", "list", "accounts.account/c1"]);
    assert_eq!(code, Some(0));
    let results: Vec<String> =
        out.lines().map(|l| serde_json::from_str::<Value>(l).unwrap()["result"].as_str().unwrap().to_owned()).collect();
    assert_eq!(results, ["accepted", "accepted", "rejected"]);
    let (code, _, err) = cli(&["command", "send", "nonsense", "open"]);
    assert_eq!(code, Some(1), "{err}");
}

#[test]
fn only_a_module_with_both_exports_is_an_aggregate() {
    let engine = weir_tests::engine();
    assert!(weir_tests::load(&engine, weir_tests::plugins::BANK_ACCOUNT).info().is_aggregate());
    assert!(!weir_tests::load(&engine, weir_tests::plugins::COUNTER).info().is_aggregate());
    // The bank account with its `weir_evolve` export renamed (same length).
    let mut bytes = std::fs::read(weir_tests::plugins::BANK_ACCOUNT).unwrap();
    let at = bytes.windows(11).position(|w| w == b"weir_evolve").unwrap();
    bytes[at + 10] = b'x';
    let error = engine.load(&bytes).unwrap_err();
    assert_eq!(error.code(), "bad_export", "{error}");
    assert!(error.to_string().contains("weir_evolve"), "{error}");
    // A handler given as an entity's aggregate stops the start.
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("weir.toml");
    std::fs::write(
        &config,
        format!(
            "data_dir = {:?}\n[http]\nlisten = \"127.0.0.1:1\"\n[[entities]]\ntype = \"accounts.account\"\naggregate = {:?}\n",
            dir.path().join("data").display().to_string(),
            weir_tests::plugins::COUNTER
        ),
    )
    .unwrap();
    let out = weir_tests::weir(&["run", "--config", config.to_str().unwrap()], dir.path());
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("entities/accounts.account") && stderr.contains("weir_decide"), "{stderr}");
    assert!(!dir.path().join("data").join("weir.redb").exists(), "nothing was written");
}

#[test]
fn a_failing_aggregate_is_classified_and_stores_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let toml = "\n[[entities]]\ntype = \"faults.thing\"\naggregate = \"{FAULTY_AGGREGATE}\"\n[entities.limits]\ndeadline = \"200ms\"\n";
    let server = Server::start(dir.path(), toml);
    let send = |name: &str, key: &str| {
        server.post("/v1/commands/faults.thing/t1", &json!({"command": name, "idempotency_key": key}))
    };
    let (status, body) = send("ok", "k0");
    assert_eq!((status, body["revision"].as_u64()), (200, Some(0)), "{body}");
    for (name, says) in
        [("panic", "trap"), ("loop", "timeout"), ("foreign", "not of the entity type"), ("poison", "trap")]
    {
        let (status, body) = send(name, name);
        assert_eq!((status, body["error"]["code"].as_str()), (500, Some("aggregate_failed")), "{name}: {body}");
        assert!(body["error"]["message"].as_str().unwrap().contains(says), "{name}: {body}");
        // Not recorded: the same key is decided again, and fails again.
        let (status, _) = send(name, name);
        assert_eq!(status, 500, "{name}");
    }
    // The aggregate goes on with fresh instances; nothing failed was stored.
    let (status, body) = send("ok", "k1");
    assert_eq!((status, body["revision"].as_u64()), (200, Some(1)), "{body}");
    let (_, log) = server.get("/v1/status");
    assert_eq!(log["head"], 2);
    let (_, trail) = server.get("/v1/commands/faults.thing/t1");
    assert_eq!(trail["commands"].as_array().unwrap().len(), 2, "{trail}");
    let (_, now) = server.get("/v1/streams/faults.thing/t1/state");
    assert_eq!(now["state"]["events"], 2, "{now}");
}

#[test]
fn an_aggregate_put_in_a_pipeline_dead_letters_its_events() {
    let dir = tempfile::tempdir().unwrap();
    let toml = "\n[[pipelines]]\nname = \"misused\"\ntopics = [\"accounts.account.*\"]\n[[pipelines.handlers]]\nname = \"bank\"\nplugin = \"{BANK_ACCOUNT}\"\n";
    let server = Server::start(dir.path(), toml);
    let (status, body) =
        server.post("/v1/events", &json!({"topic": "accounts.account.opened", "key": "a", "payload": {}}));
    assert_eq!(status, 200, "{body}");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let entry = loop {
        let (_, dlq) = server.get("/v1/dlq?subscription=misused/bank");
        if let Some(entry) = dlq["entries"].as_array().and_then(|e| e.first()) {
            break entry.clone();
        }
        assert!(std::time::Instant::now() < deadline, "never dead-lettered: {}", server.stderr());
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(entry["code"], "handler_reject", "{entry}");
    assert!(entry["message"].as_str().unwrap().contains("an aggregate is not a handler"), "{entry}");
}
