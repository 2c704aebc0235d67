//! Entity streams over HTTP and the CLI against the real binary (issue #14
//! item 1): reading forward and backward, every expected revision and the
//! conflict that stores nothing, duplicates that are not conflicts, eight
//! racing writers on one entity, revisions of handler-emitted events, the
//! backfill of a type declared after its events, retention's refusal, bad
//! input, and `weir stream`.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use weir_tests::{ORDERS, Server, weir};

const ACCOUNTS: &str = "\n[[entities]]\ntype = \"accounts.account\"\n";

fn deposit(amount: u64, idempotency_key: &str) -> Value {
    json!({"topic": "accounts.account.deposited", "payload": {"amount": amount}, "idempotency_key": idempotency_key})
}

fn append(server: &Server, stream: &str, expected: Value, events: Value) -> (u16, Value) {
    server.post(&format!("/v1/streams/{stream}"), &json!({"expected_revision": expected, "events": events}))
}

fn head(server: &Server) -> u64 {
    let (status, body) = server.get("/v1/status");
    assert_eq!(status, 200, "{body}");
    body["head"].as_u64().unwrap()
}

fn revisions(page: &Value) -> Vec<u64> {
    page["events"].as_array().unwrap().iter().map(|e| e["revision"].as_u64().unwrap()).collect()
}

fn read(server: &Server, path: &str) -> Value {
    let (status, page) = server.get(path);
    assert_eq!(status, 200, "{page}");
    page
}

#[test]
fn reads_forward_and_backward_and_every_expected_revision() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), ACCOUNTS);

    // An undeclared type is 404; an empty stream of a declared one is 200.
    let (status, body) = server.get("/v1/streams/orders.order/o-1");
    assert_eq!((status, body["error"]["code"].as_str()), (404, Some("unknown_entity_type")), "{body}");
    let empty = read(&server, "/v1/streams/accounts.account/a1");
    assert_eq!(
        (empty["revision"].clone(), empty["events"].clone(), empty["next"].clone()),
        (json!(null), json!([]), json!(null))
    );

    // `exists` and a number on an empty stream conflict, naming no revision.
    for expected in [json!("exists"), json!(0)] {
        let (status, body) = append(&server, "accounts.account/a1", expected, json!([deposit(1, "x")]));
        assert_eq!(status, 409, "{body}");
        assert_eq!(body["error"]["code"], "wrong_expected_revision");
        assert_eq!(body["actual_revision"], json!(null));
    }
    assert_eq!(head(&server), 0, "a conflict stores nothing");

    let (status, first) = append(
        &server,
        "accounts.account/a1",
        json!("no_stream"),
        json!([
            {"topic": "accounts.account.opened", "payload": {"owner": "ann"}, "idempotency_key": "open-a1"},
            deposit(10, "d1"),
            deposit(20, "d2")
        ]),
    );
    assert_eq!(status, 200, "{first}");
    assert_eq!((first["revision"].as_u64(), first["duplicate"].as_bool()), (Some(2), Some(false)), "{first}");
    assert_eq!(revisions(&first), [0, 1, 2]);
    let first_seqs: Vec<u64> = first["events"].as_array().unwrap().iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert_eq!(first_seqs, [0, 1, 2]);

    // Ingest indexes too: a keyed event of the type joins the stream, an
    // unkeyed one and one of another stream do not join it.
    let (status, body) = server.post(
        "/v1/events",
        &json!([
            {"topic": "accounts.account.deposited", "key": "a1", "payload": {"amount": 5}},
            {"topic": "accounts.account.deposited", "payload": {"amount": 6}},
            {"topic": "accounts.account.opened", "key": "a2", "payload": {}},
            {"topic": "orders.order.created", "key": "a1", "payload": {}}
        ]),
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(read(&server, "/v1/streams/accounts.account/a1")["revision"], 3);
    assert_eq!(revisions(&read(&server, "/v1/streams/accounts.account/a2")), [0]);

    // A stale number: 409 with the actual revision, nothing stored.
    let before = head(&server);
    let (status, body) = append(&server, "accounts.account/a1", json!(2), json!([deposit(1, "stale")]));
    assert_eq!((status, body["actual_revision"].as_u64()), (409, Some(3)), "{body}");
    assert_eq!(body["error"]["code"], "wrong_expected_revision");
    let (status, body) = append(&server, "accounts.account/a1", json!("no_stream"), json!([deposit(1, "stale")]));
    assert_eq!((status, body["actual_revision"].as_u64()), (409, Some(3)), "{body}");
    assert_eq!(head(&server), before, "a conflict stores nothing");
    // The right number, `exists` and `any` append.
    for (expected, revision) in [(json!(3), 4), (json!("exists"), 5), (json!("any"), 6)] {
        let key = format!("more-{revision}");
        let (status, body) = append(&server, "accounts.account/a1", expected, json!([deposit(1, &key)]));
        assert_eq!((status, body["revision"].as_u64()), (200, Some(revision)), "{body}");
    }

    // Reading: all forward, a window, backward, backward from a revision.
    let all = read(&server, "/v1/streams/accounts.account/a1");
    assert_eq!(revisions(&all), (0..=6).collect::<Vec<_>>());
    assert_eq!((all["revision"].as_u64(), all["next"].clone()), (Some(6), json!(null)));
    assert_eq!(all["stream"], "accounts.account/a1");
    assert_eq!(all["events"][0]["event"]["topic"], "accounts.account.opened");
    assert_eq!(all["events"][3]["event"]["payload"], json!({"amount": 5}));
    let seqs: Vec<u64> = all["events"].as_array().unwrap().iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
    let window = read(&server, "/v1/streams/accounts.account/a1?from=2&limit=2");
    assert_eq!((revisions(&window), window["next"].as_u64()), (vec![2, 3], Some(4)));
    let back = read(&server, "/v1/streams/accounts.account/a1?direction=backward");
    assert_eq!(revisions(&back), (0..=6).rev().collect::<Vec<_>>());
    assert_eq!(back["next"], json!(null));
    let back = read(&server, "/v1/streams/accounts.account/a1?direction=backward&from=3&limit=2");
    assert_eq!((revisions(&back), back["next"].as_u64()), (vec![3, 2], Some(1)));
    let past = read(&server, "/v1/streams/accounts.account/a1?from=7");
    assert_eq!((revisions(&past), past["revision"].as_u64()), (vec![], Some(6)));

    // The first append again: a duplicate with the original positions, not a
    // conflict, although the stream moved on and `no_stream` no longer holds.
    let before = head(&server);
    let (status, again) = append(
        &server,
        "accounts.account/a1",
        json!("no_stream"),
        json!([
            {"topic": "accounts.account.opened", "payload": {"owner": "ann"}, "idempotency_key": "open-a1"},
            deposit(10, "d1"),
            deposit(20, "d2")
        ]),
    );
    assert_eq!(status, 200, "{again}");
    assert_eq!(again["duplicate"], true);
    assert_eq!(revisions(&again), [0, 1, 2]);
    assert_eq!(again["events"], first["events"]);
    assert_eq!(again["revision"], 6, "the current revision");
    // Part known, part new: refused as a whole.
    let (status, body) =
        append(&server, "accounts.account/a1", json!("any"), json!([deposit(1, "new"), deposit(10, "d1")]));
    assert_eq!((status, body["error"]["code"].as_str()), (422, Some("partly_duplicate")), "{body}");
    assert_eq!(head(&server), before, "nothing stored");
}

#[test]
fn bad_input_is_refused_with_a_code_and_stores_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), ACCOUNTS);
    let stream = "/v1/streams/accounts.account/a1";
    let cases: Vec<(Value, u16, &str)> = vec![
        (
            json!({"expected_revision": "any", "events": [{"topic": "orders.order.created", "payload": {}}]}),
            422,
            "topic_not_of_entity",
        ),
        (
            json!({"expected_revision": "any", "events": [{"topic": "accounts.ledger.x", "payload": {}}]}),
            422,
            "topic_not_of_entity",
        ),
        (
            json!({"expected_revision": "any", "events": [{"topic": "accounts.account.x", "key": "a2", "payload": {}}]}),
            422,
            "key_mismatch",
        ),
        (json!({"expected_revision": "sometimes", "events": [deposit(1, "k")]}), 400, "invalid_expected_revision"),
        (json!({"expected_revision": -1, "events": [deposit(1, "k")]}), 400, "invalid_expected_revision"),
        (json!({"expected_revision": 1.5, "events": [deposit(1, "k")]}), 400, "invalid_expected_revision"),
        (json!({"events": [deposit(1, "k")]}), 400, "invalid_expected_revision"),
        (json!({"expected_revision": "any", "events": []}), 400, "empty"),
        (json!({"expected_revision": "any"}), 400, "empty"),
        (json!({"expected_revision": "any", "events": deposit(1, "k")}), 400, "invalid_json"),
        (json!({"expected_revision": "any", "events": [deposit(1, "k")], "extra": 1}), 400, "invalid_json"),
        (
            json!({"expected_revision": "any", "events": [deposit(1, "k"), deposit(2, "k")]}),
            422,
            "duplicate_idempotency_key",
        ),
    ];
    for (body, status, code) in &cases {
        let (got, answer) = server.post(stream, body);
        assert_eq!((got, answer["error"]["code"].as_str()), (*status, Some(*code)), "{body} -> {answer}");
    }
    let (status, answer) = server.try_post(stream, "application/json", b"{not json").unwrap();
    assert_eq!((status, answer["error"]["code"].as_str()), (400, Some("invalid_json")), "{answer}");
    let (status, answer) =
        append(&server, "orders.order/o-1", json!("any"), json!([{"topic": "orders.order.created"}]));
    assert_eq!((status, answer["error"]["code"].as_str()), (404, Some("unknown_entity_type")), "{answer}");
    for query in ["direction=sideways", "limit=0", "limit=1001", "from=-1", "colour=blue"] {
        let (status, answer) = server.get(&format!("{stream}?{query}"));
        assert_eq!(status, 400, "{query}: {answer}");
    }
    assert_eq!(head(&server), 0, "nothing of a refused append is stored");
}

#[test]
fn eight_writers_racing_on_one_entity_win_one_revision_each_with_no_gap() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), ACCOUNTS);
    const THREADS: usize = 8;
    const WINS_EACH: usize = 15;
    let results: Vec<(Vec<(u64, String)>, usize)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..THREADS)
            .map(|t| {
                let server = &server;
                s.spawn(move || {
                    let (mut wins, mut conflicts) = (Vec::new(), 0usize);
                    let mut attempt = 0;
                    while wins.len() < WINS_EACH {
                        attempt += 1;
                        assert!(attempt < 10_000, "thread {t} never wins");
                        let page = read(server, "/v1/streams/accounts.account/hot?direction=backward&limit=1");
                        let expected = page["revision"].as_u64().map_or(json!("no_stream"), |r| json!(r));
                        let event = json!({"topic": "accounts.account.deposited", "payload": {"thread": t, "attempt": attempt}});
                        let (status, body) = append(server, "accounts.account/hot", expected.clone(), json!([event]));
                        match status {
                            200 => {
                                let revision = body["revision"].as_u64().unwrap();
                                assert_eq!(body["events"][0]["revision"].as_u64(), Some(revision));
                                if let Some(read) = expected.as_u64() {
                                    assert_eq!(revision, read + 1, "{body}");
                                } else {
                                    assert_eq!(revision, 0);
                                }
                                wins.push((revision, body["events"][0]["id"].as_str().unwrap().to_owned()));
                            }
                            409 => {
                                conflicts += 1;
                                assert_eq!(body["error"]["code"], "wrong_expected_revision");
                                assert_ne!(body["actual_revision"], expected, "a conflict names another revision");
                            }
                            other => panic!("thread {t}: {other} {body}"),
                        }
                    }
                    (wins, conflicts)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let total = THREADS * WINS_EACH;
    let mut by_revision: BTreeMap<u64, String> = BTreeMap::new();
    for (wins, _) in &results {
        for (revision, id) in wins {
            assert!(by_revision.insert(*revision, id.clone()).is_none(), "revision {revision} won twice");
        }
    }
    assert_eq!(by_revision.keys().copied().collect::<Vec<_>>(), (0..total as u64).collect::<Vec<_>>());
    let conflicts: usize = results.iter().map(|(_, c)| c).sum();
    assert!(conflicts > 0, "eight writers reading then appending must have collided at least once");
    // The stream holds exactly the winners' events, at their revisions.
    let mut stored = BTreeMap::new();
    let mut from = 0;
    loop {
        let page = read(&server, &format!("/v1/streams/accounts.account/hot?from={from}&limit=1000"));
        for e in page["events"].as_array().unwrap() {
            stored.insert(e["revision"].as_u64().unwrap(), e["event"]["id"].as_str().unwrap().to_owned());
        }
        match page["next"].as_u64() {
            Some(next) => from = next,
            None => break,
        }
    }
    assert_eq!(stored, by_revision);
    assert_eq!(head(&server), total as u64, "no loser stored anything");
}

/// An order the example validator accepts (it emits `orders.order.validated`
/// with the same key).
fn order(key: &str) -> Value {
    json!({"topic": "orders.order.created", "key": key, "payload": {
        "order_id": key, "customer": "c-1", "currency": "EUR", "items": [{"sku": "a", "qty": 1, "price_cents": 100}]
    }})
}

fn stream_topics(server: &Server, path: &str) -> Vec<(u64, String)> {
    read(server, path)["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["revision"].as_u64().unwrap(), e["event"]["topic"].as_str().unwrap().to_owned()))
        .collect()
}

#[test]
fn handler_emits_join_the_stream_and_a_type_declared_later_is_backfilled() {
    let dir = tempfile::tempdir().unwrap();
    // Without the entity: events stored, no stream.
    let mut server = Server::start(dir.path(), ORDERS);
    let (status, body) = server.post("/v1/events", &json!([order("o-1"), order("o-2")]));
    assert_eq!(status, 200, "{body}");
    assert!(server.wait_idle(Duration::from_secs(60)));
    let (status, _) = server.get("/v1/streams/orders.order/o-1");
    assert_eq!(status, 404);
    assert!(server.terminate().success());

    // Declared now: the stored events are indexed at start, handler emits
    // included, in log order.
    let entities = format!("{ORDERS}\n[[entities]]\ntype = \"orders.order\"\n");
    let mut server = Server::start_with_args(dir.path(), &entities, &["--log", "info"]);
    assert_eq!(
        stream_topics(&server, "/v1/streams/orders.order/o-1"),
        [(0, "orders.order.created".to_owned()), (1, "orders.order.validated".to_owned())]
    );
    assert!(server.stderr().contains("indexing entity streams"), "{}", server.stderr());
    // New appends go on from there: the handler's emit gets the next one.
    let (status, body) = append(&server, "orders.order/o-2", json!(1), json!([order("o-2")]));
    assert_eq!((status, body["revision"].as_u64()), (200, Some(2)), "{body}");
    assert!(server.wait_idle(Duration::from_secs(60)));
    let o2 = stream_topics(&server, "/v1/streams/orders.order/o-2");
    assert_eq!(o2.iter().map(|(r, _)| *r).collect::<Vec<_>>(), [0, 1, 2, 3]);
    assert_eq!(o2[3].1, "orders.order.validated", "{o2:?}");
    // A restart keeps every revision and indexes nothing twice.
    assert!(server.terminate().success());
    server.restart();
    assert_eq!(stream_topics(&server, "/v1/streams/orders.order/o-2").len(), 4);
    assert_eq!(stream_topics(&server, "/v1/streams/orders.order/o-1").len(), 2);
}

#[test]
fn retention_never_removes_entity_events_and_refuses_rules_that_would() {
    let dir = tempfile::tempdir().unwrap();
    // A rule naming the entity's domain that would remove its events is
    // refused at start, naming the rule and the type.
    let refused = dir.path().join("refused.toml");
    std::fs::write(
        &refused,
        format!(
            "data_dir = {:?}\n[http]\nlisten = \"127.0.0.1:1\"\n{ACCOUNTS}\n[[retention.topics]]\npattern = \"accounts.>\"\nretention = \"7d\"\n",
            dir.path().join("refused-data").display().to_string()
        ),
    )
    .unwrap();
    let out = weir(&["run", "--config", refused.to_str().unwrap()], dir.path());
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("retention.topics[0]") && stderr.contains("accounts.account"), "{stderr}");

    // A default and a wildcard rule that remove everything else leave the
    // entity's events alone.
    let config = format!(
        "{ACCOUNTS}\n[retention]\ndefault = \"1ms\"\ninterval = \"10ms\"\n[[retention.topics]]\npattern = \">\"\nretention = \"1ms\"\n"
    );
    let server = Server::start(dir.path(), &config);
    let (status, body) = append(&server, "accounts.account/a1", json!("no_stream"), json!([deposit(1, "a")]));
    assert_eq!(status, 200, "{body}");
    let (status, body) = server.post("/v1/events", &json!({"topic": "other.thing.happened", "payload": {}}));
    assert_eq!(status, 200, "{body}");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, log) = server.get("/v1/log");
        let topics: BTreeSet<String> = log["events"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["event"]["topic"].as_str().unwrap().to_owned())
            .collect();
        if !topics.contains("other.thing.happened") {
            assert!(topics.contains("accounts.account.deposited"), "{topics:?}");
            break;
        }
        assert!(Instant::now() < deadline, "retention never removed the other event: {log}");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(revisions(&read(&server, "/v1/streams/accounts.account/a1")), [0]);
}

#[test]
fn the_cli_reads_and_appends() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), ACCOUNTS);
    let events = dir.path().join("events.json");
    std::fs::write(&events, json!([deposit(1, "c1"), deposit(2, "c2")]).to_string()).unwrap();
    let run = |args: &[&str]| {
        let mut all = args.to_vec();
        all.extend(["--server", server.url.as_str()]);
        weir(&all, dir.path())
    };
    let file = events.to_str().unwrap();
    let out = run(&["stream", "append", "accounts.account/a 1", "--expected-revision", "no_stream", file]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let answer: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(answer["revision"], 1);
    // Stale: exit 1 naming the actual revision, nothing stored.
    std::fs::write(&events, json!([deposit(3, "c3")]).to_string()).unwrap();
    let out = run(&["stream", "append", "accounts.account/a 1", "--expected-revision", "0", file]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("wrong_expected_revision") && stderr.contains("actual revision: 1"), "{stderr}");
    let out = run(&["stream", "append", "accounts.account/a 1", "--expected-revision", "1", file]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    let out = run(&["stream", "read", "accounts.account/a 1", "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let lines: Vec<Value> =
        String::from_utf8(out.stdout).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.iter().map(|l| l["revision"].as_u64().unwrap()).collect::<Vec<_>>(), [0, 1, 2]);
    assert_eq!(lines[2]["event"]["payload"], json!({"amount": 3}));
    assert_eq!(lines[0]["event"]["key"], "a 1");
    let out = run(&["stream", "read", "accounts.account/a 1", "--backward", "--limit", "2"]);
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    let first: Vec<&str> = text.lines().map(|l| l.split_whitespace().next().unwrap()).collect();
    assert_eq!(first, ["2", "1"], "{text}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("revision 2"));
    let out = run(&["stream", "read", "nostream"]);
    assert!(!out.status.success());
    let out = run(&["stream", "read", "orders.order/x"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown_entity_type"));
}
