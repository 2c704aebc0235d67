//! The JetStream source and sink against a real `nats-server -js` started by
//! each test (its store in the test's temporary directory, a free port) and
//! the real `weir` binary. The tests read and write JetStream with
//! async-nats directly, independently of Weir.
//!
//! They need `nats-server` (Debian's package, installed by `.ci/run`): they
//! are ignored by default and fail, not pass, when it is missing.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use async_nats::HeaderMap;
use async_nats::jetstream::{self, stream};
use serde_json::{Value, json};
use weir_tests::Server;

/// A nats-server with JetStream on 127.0.0.1: a free port, its store in
/// `dir`. Killed when dropped.
pub(crate) struct Nats {
    child: Option<Child>,
    port: u16,
    dir: PathBuf,
}

pub(crate) fn nats_binary() -> PathBuf {
    for candidate in ["nats-server", "/usr/sbin/nats-server", "/usr/bin/nats-server", "/usr/local/bin/nats-server"] {
        if Command::new(candidate).arg("--version").output().is_ok_and(|o| o.status.success()) {
            return PathBuf::from(candidate);
        }
    }
    panic!("nats-server is not installed (apt-get install -y nats-server): these tests need it");
}

impl Nats {
    pub(crate) fn start(dir: &Path) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let mut nats = Self { child: None, port, dir: dir.join("nats") };
        nats.restart();
        nats
    }

    pub(crate) fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Start again on the same port and store.
    fn restart(&mut self) {
        assert!(self.child.is_none());
        std::fs::create_dir_all(&self.dir).unwrap();
        let log = std::fs::File::create(self.dir.join("nats.log")).unwrap();
        let child = Command::new(nats_binary())
            .args(["-js", "-a", "127.0.0.1", "-p", &self.port.to_string(), "-sd"])
            .arg(&self.dir)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "nats-server did not listen: {}", self.log());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `kill -9` the server.
    fn kill(&mut self) {
        let mut child = self.child.take().unwrap();
        child.kill().unwrap();
        child.wait().unwrap();
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("nats.log")).unwrap_or_default()
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

pub(crate) fn tokio() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

/// A JetStream context on `nats`, retried while the server starts.
pub(crate) async fn connect_js(nats: &Nats) -> jetstream::Context {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match async_nats::connect(nats.url()).await {
            Ok(client) => return jetstream::new(client),
            Err(e) => assert!(Instant::now() < deadline, "cannot connect to nats-server: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub(crate) async fn create_stream(js: &jetstream::Context, name: &str, subjects: &[&str]) -> stream::Stream {
    js.create_stream(stream::Config {
        name: name.into(),
        subjects: subjects.iter().map(|s| (*s).to_owned()).collect(),
        ..Default::default()
    })
    .await
    .unwrap()
}

/// A message to publish: subject, headers, payload.
pub(crate) type Outgoing = (String, Vec<(&'static str, String)>, Vec<u8>);

/// Publish `messages` (subject, headers, payload), each until its PubAck,
/// with up to 256 acks outstanding.
pub(crate) async fn publish(js: &jetstream::Context, messages: Vec<Outgoing>) {
    let mut pending = std::collections::VecDeque::new();
    for (subject, headers, payload) in messages {
        let mut map = HeaderMap::new();
        for (name, value) in headers {
            map.insert(name, value.as_str());
        }
        pending.push_back(js.publish_with_headers(subject, map, payload.into()).await.unwrap());
        if pending.len() >= 256 {
            pending.pop_front().unwrap().await.unwrap();
        }
    }
    for ack in pending {
        ack.await.unwrap();
    }
}

/// Every event in Weir's log, by position.
pub(crate) fn log(server: &Server) -> Vec<Value> {
    let mut out = Vec::new();
    let mut after: Option<u64> = None;
    loop {
        let query = after.map_or("limit=1000".to_owned(), |a| format!("limit=1000&after={a}"));
        let (status, page) = server.get(&format!("/v1/log?{query}"));
        assert_eq!(status, 200, "{page}");
        for e in page["events"].as_array().unwrap() {
            out.push(e["event"].clone());
        }
        if page["caught_up"] == true {
            return out;
        }
        after = page["next"].as_u64();
    }
}

pub(crate) fn source_status(server: &Server) -> Value {
    server.get("/v1/status").1["sources"][0].clone()
}

/// Wait until `check` holds, or fail with `what` and the last value seen.
pub(crate) fn wait_for(what: &str, timeout: Duration, mut check: impl FnMut() -> Result<(), String>) {
    let deadline = Instant::now() + timeout;
    loop {
        match check() {
            Ok(()) => return,
            Err(last) => assert!(Instant::now() < deadline, "{what}: not within {timeout:?}; last: {last}"),
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub(crate) fn source_toml(nats: &Nats, extra: &str) -> String {
    format!(
        "[[sources]]\nname = \"in\"\ntype = \"jetstream\"\nurl = \"{}\"\nstream = \"IN\"\nsubjects = [\"in.>\"]\n{extra}\n",
        nats.url()
    )
}

/// The consumer has nothing pending and nothing unacked: JetStream will
/// deliver nothing more.
pub(crate) fn consumer_drained(rt: &tokio::runtime::Runtime, stream: &mut stream::Stream) -> Result<(), String> {
    let info = rt.block_on(stream.consumer_info("weir-in")).map_err(|e| e.to_string())?;
    if info.num_pending == 0 && info.num_ack_pending == 0 {
        Ok(())
    } else {
        Err(format!("pending {}, unacked {}", info.num_pending, info.num_ack_pending))
    }
}

#[test]
#[ignore = "needs nats-server"]
fn source_appends_each_message_once_with_its_topic_key_and_cloudevent_fields() {
    let dir = tempfile::tempdir().unwrap();
    let nats = Nats::start(dir.path());
    let rt = tokio();
    let js = rt.block_on(connect_js(&nats));
    let mut stream = rt.block_on(create_stream(&js, "IN", &["in.>"]));
    let mut messages: Vec<Outgoing> = (0..10)
        .map(|i| {
            (
                "in.orders.order.created".to_owned(),
                vec![("weir-key", format!("k{}", i % 3)), ("Nats-Msg-Id", format!("m-{i}")), ("tenant", "acme".into())],
                json!({"n": i}).to_string().into_bytes(),
            )
        })
        .collect();
    messages.push((
        "in.anything.at.all".to_owned(),
        vec![
            ("ce-specversion", "1.0".into()),
            ("ce-type", "orders.order.paid".into()),
            ("ce-source", "/shop".into()),
            ("ce-id", "42".into()),
            ("ce-subject", "o-1".into()),
            ("Content-Type", "application/json".into()),
        ],
        br#"{"paid":true}"#.to_vec(),
    ));
    // No topic can be made of a two-token subject: rejected, not a crash.
    messages.push(("in.bad".to_owned(), Vec::new(), b"{}".to_vec()));
    messages.push(("in.billing.invoice.sent".to_owned(), Vec::new(), br#"{"last":true}"#.to_vec()));
    rt.block_on(publish(&js, messages));

    let mut server = Server::start(dir.path(), &source_toml(&nats, "key_token = 2"));
    wait_for("12 messages appended", Duration::from_secs(30), || {
        let s = source_status(&server);
        if s["appended"] == 12 && s["rejected"] == 1 { Ok(()) } else { Err(s.to_string()) }
    });
    wait_for("the consumer drained", Duration::from_secs(10), || consumer_drained(&rt, &mut stream));
    let events = log(&server);
    assert_eq!(events.len(), 12, "{events:?}");
    for (i, e) in events[..10].iter().enumerate() {
        assert_eq!(e["topic"], "orders.order.created");
        assert_eq!(e["key"], format!("k{}", i % 3), "the weir-key header wins over key_token");
        assert_eq!(e["idempotency_key"], format!("m-{i}"));
        assert_eq!(e["source"], "nats:IN");
        assert_eq!(e["payload"], json!({"n": i}));
        assert_eq!(e["headers"], json!({"tenant": "acme"}));
    }
    let ce = &events[10];
    assert_eq!(
        (ce["topic"].as_str(), ce["key"].as_str(), ce["source"].as_str()),
        (Some("orders.order.paid"), Some("o-1"), Some("/shop"))
    );
    assert_eq!(ce["idempotency_key"], "ce:/shop#42");
    assert_eq!(ce["payload"], json!({"paid": true}));
    let last = &events[11];
    assert_eq!(
        (last["topic"].as_str(), last["key"].as_str()),
        (Some("billing.invoice.sent"), Some("billing")),
        "key from token 2"
    );
    assert_eq!(last["idempotency_key"], "nats:IN:13");
    let status = source_status(&server);
    assert_eq!(
        (status["last_seq"].as_u64(), status["state"].as_str(), status["connected"].as_bool()),
        (Some(13), Some("consuming"), Some(true))
    );
    assert!(status["last_error"].as_str().unwrap().contains("in.bad"), "{status}");

    // The same producer key over HTTP is a duplicate of the JetStream message.
    let (code, answer) =
        server.post("/v1/events", &json!({"topic": "orders.order.created", "idempotency_key": "m-3", "payload": {}}));
    assert_eq!((code, answer["events"][0]["duplicate"].as_bool()), (200, Some(true)), "{answer}");
    let metrics = ureq_text(&format!("{}/metrics", server.url));
    assert!(metrics.contains("weir_source_appended_total{source=\"sources/in\"} 12"), "{metrics}");

    // A restart appends nothing again: everything was acked.
    assert!(server.terminate().success());
    server.restart();
    wait_for("consuming again", Duration::from_secs(30), || {
        let s = source_status(&server);
        if s["state"] == "consuming" { Ok(()) } else { Err(s.to_string()) }
    });
    assert_eq!(source_status(&server)["last_seq"], 13, "the position survives the restart");
    assert_eq!(log(&server).len(), 12);
}

fn ureq_text(url: &str) -> String {
    ureq::get(url).call().unwrap().body_mut().read_to_string().unwrap()
}

#[test]
#[ignore = "needs nats-server"]
fn source_kill9_while_consuming_5000_messages_appends_each_exactly_once() {
    const N: u64 = 5000;
    let dir = tempfile::tempdir().unwrap();
    let nats = Nats::start(dir.path());
    let rt = tokio();
    let js = rt.block_on(connect_js(&nats));
    let mut stream = rt.block_on(create_stream(&js, "IN", &["in.>"]));
    // No Nats-Msg-Id: a redelivery is recognised by its stream position only.
    let messages =
        (0..N).map(|i| (format!("in.orders.order.k{}", i % 50), Vec::new(), json!({"n": i}).to_string().into_bytes()));
    rt.block_on(publish(&js, messages.collect()));
    // Small batches (a commit each) and a short ack wait, so the kill lands
    // mid-way and the unacked messages come back soon.
    let mut server = Server::start(
        dir.path(),
        &source_toml(&nats, "batch = 16\nack_wait = \"2s\"\ntopic = \"orders.order.created\""),
    );
    let mut head_at_kill = 0;
    wait_for("some appended", Duration::from_secs(30), || {
        head_at_kill = server.get("/v1/status").1["head"].as_u64().unwrap_or(0);
        if head_at_kill >= 300 { Ok(()) } else { Err(head_at_kill.to_string()) }
    });
    server.kill9();
    assert!(head_at_kill < N, "the kill came after everything was appended ({head_at_kill}): it proves nothing");
    server.restart();
    wait_for("all appended", Duration::from_secs(60), || {
        let head = server.get("/v1/status").1["head"].as_u64().unwrap_or(0);
        if head >= N { Ok(()) } else { Err(head.to_string()) }
    });
    wait_for("the consumer drained", Duration::from_secs(30), || consumer_drained(&rt, &mut stream));
    let events = log(&server);
    let mut seen: HashMap<String, usize> = HashMap::new();
    for e in &events {
        *seen.entry(e["idempotency_key"].as_str().unwrap().to_owned()).or_default() += 1;
    }
    let twice: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "appended twice: {twice:?}");
    let missing: Vec<u64> = (1..=N).filter(|seq| !seen.contains_key(&format!("nats:IN:{seq}"))).collect();
    assert!(missing.is_empty(), "lost: {missing:?}");
    assert_eq!(events.len() as u64, N);
    let status = source_status(&server);
    assert_eq!(status["last_seq"], N, "{status}");
    // Payloads arrive intact, each with its own position.
    let ns: HashSet<u64> = events.iter().map(|e| e["payload"]["n"].as_u64().unwrap()).collect();
    assert_eq!(ns.len() as u64, N);
}

#[test]
#[ignore = "needs nats-server"]
fn source_waits_for_nats_and_its_stream_and_reconnects_after_a_server_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut nats = Nats::start(dir.path());
    nats.kill();
    // NATS is down at start: Weir serves, /ready says why.
    let server = Server::start(dir.path(), &source_toml(&nats, "ack_wait = \"2s\""));
    wait_for("/ready names the source", Duration::from_secs(20), || {
        let (code, ready) = server.get("/ready");
        let text = ready.to_string();
        if code == 200
            && ready["status"] == "degraded"
            && text.contains("sources/in")
            && text.contains("cannot connect")
        {
            Ok(())
        } else {
            Err(format!("{code} {ready}"))
        }
    });
    nats.restart();
    let rt = tokio();
    let js = rt.block_on(connect_js(&nats));
    // Connected, but no stream yet: the status says so.
    wait_for("the missing stream reported", Duration::from_secs(30), || {
        let s = source_status(&server);
        let e = s["last_error"].as_str().unwrap_or_default().to_owned();
        if e.contains("stream \"IN\"") { Ok(()) } else { Err(s.to_string()) }
    });
    let _stream = rt.block_on(create_stream(&js, "IN", &["in.>"]));
    let batch = |from: u64| -> Vec<Outgoing> {
        (from..from + 100)
            .map(|i| {
                (
                    "in.orders.order.created".to_owned(),
                    vec![("Nats-Msg-Id", format!("m-{i}"))],
                    json!({"n": i}).to_string().into_bytes(),
                )
            })
            .collect()
    };
    rt.block_on(publish(&js, batch(0)));
    wait_for("100 appended", Duration::from_secs(30), || {
        let s = source_status(&server);
        if s["appended"] == 100 { Ok(()) } else { Err(s.to_string()) }
    });
    assert_eq!(server.get("/ready").1["status"], "ready");
    drop(js);

    nats.kill();
    wait_for("the source sees the connection go", Duration::from_secs(30), || {
        let s = source_status(&server);
        if s["connected"] == false { Ok(()) } else { Err(s.to_string()) }
    });
    nats.restart();
    let js = rt.block_on(connect_js(&nats));
    rt.block_on(publish(&js, batch(100)));
    wait_for("200 appended after the restart", Duration::from_secs(60), || {
        let s = source_status(&server);
        if s["appended"] == 200 && s["state"] == "consuming" { Ok(()) } else { Err(s.to_string()) }
    });
    let events = log(&server);
    let keys: BTreeMap<String, usize> = events.iter().fold(BTreeMap::new(), |mut m, e| {
        *m.entry(e["idempotency_key"].as_str().unwrap().to_owned()).or_default() += 1;
        m
    });
    assert_eq!(keys.len(), 200);
    assert!(keys.values().all(|n| *n == 1), "{keys:?}");
    assert!(source_status(&server)["errors"].as_u64().unwrap() >= 1);
}

fn sink_toml(nats: &Nats, extra: &str) -> String {
    format!(
        "[[jetstream_sinks]]\nname = \"out\"\ntopics = [\"orders.>\"]\nurl = \"{}\"\nsubject = \"out.{{topic}}\"\ntimeout = \"1s\"\nretry = {{ max_attempts = 1000, initial_backoff = \"50ms\", max_backoff = \"500ms\" }}\n{extra}\n",
        nats.url()
    )
}

/// Every message `stream` holds, by stream sequence.
pub(crate) fn stored(
    rt: &tokio::runtime::Runtime,
    stream: &mut stream::Stream,
) -> Vec<jetstream::message::StreamMessage> {
    let last = rt.block_on(stream.info()).unwrap().state.last_sequence;
    (1..=last).filter_map(|seq| rt.block_on(stream.get_raw_message(seq)).ok()).collect()
}

/// Every message of `stream`, by stream sequence: (Nats-Msg-Id, weir-key,
/// payload `n`, subject).
fn read_stream(rt: &tokio::runtime::Runtime, stream: &mut stream::Stream) -> Vec<(String, String, u64, String)> {
    stored(rt, stream)
        .into_iter()
        .map(|m| {
            let h = |n: &str| m.headers.get(n).map(|v| v.as_str().to_owned()).unwrap_or_default();
            let payload: Value = serde_json::from_slice(&m.payload).unwrap();
            (h("Nats-Msg-Id"), h("weir-key"), payload["n"].as_u64().unwrap(), m.subject.to_string())
        })
        .collect()
}

/// POST `n` events over keys k0..k9; answers their ids.
fn post_events(server: &Server, from: u64, n: u64) -> Vec<String> {
    let mut ids = Vec::new();
    let all: Vec<Value> = (from..from + n)
        .map(|i| json!({"topic": "orders.order.created", "key": format!("k{}", i % 10), "payload": {"n": i}}))
        .collect();
    for chunk in all.chunks(1000) {
        let (code, answer) = server.post("/v1/events", &Value::Array(chunk.to_vec()));
        assert_eq!(code, 200, "{answer}");
        ids.extend(answer["events"].as_array().unwrap().iter().map(|e| e["id"].as_str().unwrap().to_owned()));
    }
    ids
}

/// Each event in the stream once, under its id, and in order per key.
fn assert_once_in_key_order(messages: &[(String, String, u64, String)], ids: &[String]) {
    let mut count: HashMap<&str, usize> = HashMap::new();
    for (id, ..) in messages {
        *count.entry(id.as_str()).or_default() += 1;
    }
    let twice: Vec<_> = count.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "published twice: {twice:?}");
    let missing: Vec<_> = ids.iter().filter(|id| !count.contains_key(id.as_str())).collect();
    assert!(missing.is_empty(), "{} never published, e.g. {:?}", missing.len(), missing.first());
    assert_eq!(messages.len(), ids.len());
    let mut last: HashMap<&str, u64> = HashMap::new();
    for (_, key, n, subject) in messages {
        assert_eq!(subject, "out.orders.order.created");
        if let Some(before) = last.insert(key.as_str(), *n) {
            assert!(before < *n, "key {key}: {n} after {before}");
        }
    }
}

#[test]
#[ignore = "needs nats-server"]
fn sink_publishes_each_event_once_under_its_id_in_key_order() {
    let dir = tempfile::tempdir().unwrap();
    let nats = Nats::start(dir.path());
    let rt = tokio();
    let js = rt.block_on(connect_js(&nats));
    let mut stream = rt.block_on(create_stream(&js, "OUT", &["out.>"]));
    let server = Server::start(dir.path(), &sink_toml(&nats, ""));
    let ids = post_events(&server, 0, 300);
    // Not for the sink: another topic.
    server.post("/v1/events", &json!({"topic": "billing.invoice.sent", "payload": {"n": 0}}));
    assert!(server.wait_idle(Duration::from_secs(60)), "{}", server.get("/v1/status").1);
    let messages = read_stream(&rt, &mut stream);
    assert_once_in_key_order(&messages, &ids);
    // The envelope travels in headers.
    let first = rt.block_on(stream.get_raw_message(1)).unwrap();
    let h = |n: &str| first.headers.get(n).map(|v| v.as_str().to_owned());
    assert_eq!(h("weir-id"), Some(ids[0].clone()));
    assert_eq!(h("ce-type").as_deref(), Some("orders.order.created"));
    assert_eq!(h("weir-topic").as_deref(), Some("orders.order.created"));
    let status = server.get("/v1/status").1;
    let sink = status["subscriptions"].as_array().unwrap().iter().find(|s| s["name"] == "sinks/out").unwrap().clone();
    assert_eq!((sink["plugin"].as_str(), sink["state"].as_str()), (Some("jetstream"), Some("ok")), "{sink}");
}

#[test]
#[ignore = "needs nats-server"]
fn sink_kill9_during_delivery_loses_nothing_and_publishes_each_event_once() {
    const N: u64 = 3000;
    let dir = tempfile::tempdir().unwrap();
    let nats = Nats::start(dir.path());
    let rt = tokio();
    let js = rt.block_on(connect_js(&nats));
    let mut stream = rt.block_on(create_stream(&js, "OUT", &["out.>"]));
    let mut server = Server::start(dir.path(), &sink_toml(&nats, ""));
    let ids = post_events(&server, 0, N);
    let mut at_kill = 0;
    wait_for("some published", Duration::from_secs(60), || {
        at_kill = rt.block_on(stream.info()).unwrap().state.messages;
        if at_kill >= 300 { Ok(()) } else { Err(at_kill.to_string()) }
    });
    server.kill9();
    assert!(at_kill < N, "the kill came after everything was published ({at_kill}): it proves nothing");
    server.restart();
    assert!(server.wait_idle(Duration::from_secs(120)), "{}", server.get("/v1/status").1);
    let messages = read_stream(&rt, &mut stream);
    assert_once_in_key_order(&messages, &ids);
}

#[test]
#[ignore = "needs nats-server"]
fn sink_retries_while_nats_is_down_and_delivers_when_it_is_back() {
    let dir = tempfile::tempdir().unwrap();
    let mut nats = Nats::start(dir.path());
    let rt = tokio();
    {
        let js = rt.block_on(connect_js(&nats));
        rt.block_on(create_stream(&js, "OUT", &["out.>"]));
    }
    let server = Server::start(dir.path(), &sink_toml(&nats, ""));
    let mut ids = post_events(&server, 0, 20);
    assert!(server.wait_idle(Duration::from_secs(60)));
    nats.kill();
    ids.extend(post_events(&server, 20, 20));
    let sink = |server: &Server| {
        let status = server.get("/v1/status").1;
        status["subscriptions"].as_array().unwrap().iter().find(|s| s["name"] == "sinks/out").unwrap().clone()
    };
    wait_for("the failures show", Duration::from_secs(30), || {
        let s = sink(&server);
        let failure = s["last_failure"].as_str().unwrap_or_default();
        if s["state"] == "retrying" && failure.starts_with("jetstream_") { Ok(()) } else { Err(s.to_string()) }
    });
    let metrics = ureq_text(&format!("{}/metrics", server.url));
    assert!(metrics.contains("sinks/out"), "{metrics}");
    nats.restart();
    assert!(server.wait_idle(Duration::from_secs(60)), "{}", sink(&server));
    let js = rt.block_on(connect_js(&nats));
    let mut stream = rt.block_on(js.get_stream("OUT")).unwrap();
    let messages = read_stream(&rt, &mut stream);
    assert_once_in_key_order(&messages, &ids);
    assert_eq!(sink(&server)["state"], "ok");
}

/// Every message of `stream` as an independent consumer reads it (an
/// ephemeral pull consumer, no acks): (Nats-Msg-Id, weir-id, weir-key,
/// payload `n`).
fn consume_all(rt: &tokio::runtime::Runtime, stream: &mut stream::Stream) -> Vec<(String, String, String, u64)> {
    use futures_util::StreamExt as _;
    let total = rt.block_on(stream.info()).unwrap().state.messages;
    rt.block_on(async {
        let consumer = stream
            .create_consumer(jetstream::consumer::pull::Config {
                ack_policy: jetstream::consumer::AckPolicy::None,
                ..Default::default()
            })
            .await
            .unwrap();
        let mut messages = consumer.messages().await.unwrap();
        let mut out = Vec::new();
        while (out.len() as u64) < total {
            let m = tokio::time::timeout(Duration::from_secs(30), messages.next()).await.unwrap().unwrap().unwrap();
            let h =
                |n: &str| m.headers.as_ref().and_then(|h| h.get(n)).map(|v| v.as_str().to_owned()).unwrap_or_default();
            let payload: Value = serde_json::from_slice(&m.payload).unwrap();
            out.push((h("Nats-Msg-Id"), h("weir-id"), h("weir-key"), payload["n"].as_u64().unwrap()));
        }
        out
    })
}

#[test]
#[ignore = "needs nats-server"]
fn source_and_sink_kill9_during_20000_messages_each_input_appended_once_each_output_published_once() {
    const N: u64 = 20_000;
    let dir = tempfile::tempdir().unwrap();
    let nats = Nats::start(dir.path());
    let rt = tokio();
    let js = rt.block_on(connect_js(&nats));
    let mut input = rt.block_on(create_stream(&js, "IN", &["in.>"]));
    let mut output = rt.block_on(create_stream(&js, "OUT", &["out.>"]));
    let messages = (0..N).map(|i| {
        (
            "in.orders.order.created".to_owned(),
            vec![("weir-key", format!("k{}", i % 100))],
            json!({"n": i}).to_string().into_bytes(),
        )
    });
    rt.block_on(publish(&js, messages.collect()));
    // The source's events go straight to the sink: JetStream in, JetStream out.
    let toml = format!("{}{}", source_toml(&nats, "ack_wait = \"2s\""), sink_toml(&nats, ""));
    let mut server = Server::start(dir.path(), &toml);
    let mut at_kill = (0, 0);
    wait_for("some appended and published", Duration::from_secs(60), || {
        let head = server.get("/v1/status").1["head"].as_u64().unwrap_or(0);
        let published = rt.block_on(output.info()).unwrap().state.messages;
        at_kill = (head, published);
        if published >= 1000 { Ok(()) } else { Err(format!("{at_kill:?}")) }
    });
    server.kill9();
    assert!(at_kill.1 < N, "the kill came after everything was published ({at_kill:?}): it proves nothing");
    server.restart();
    wait_for("all appended", Duration::from_secs(120), || {
        let head = server.get("/v1/status").1["head"].as_u64().unwrap_or(0);
        if head >= N { Ok(()) } else { Err(head.to_string()) }
    });
    wait_for("the source's consumer drained", Duration::from_secs(60), || consumer_drained(&rt, &mut input));
    assert!(server.wait_idle(Duration::from_secs(180)), "{}", server.get("/v1/status").1);

    // Every input appended once, by its stream position.
    let events = log(&server);
    assert_eq!(events.len() as u64, N, "the log holds each input once");
    let positions: HashSet<String> = events.iter().map(|e| e["idempotency_key"].as_str().unwrap().to_owned()).collect();
    assert!((1..=N).all(|seq| positions.contains(&format!("nats:IN:{seq}"))));
    // Every output published once, as an independent consumer sees it, in
    // the log's order per key.
    let published = consume_all(&rt, &mut output);
    assert_eq!(published.len() as u64, N, "the output stream holds each event once");
    let ids: HashSet<&str> = published.iter().map(|(id, ..)| id.as_str()).collect();
    assert_eq!(ids.len() as u64, N);
    assert!(published.iter().all(|(msg_id, weir_id, ..)| msg_id == weir_id));
    let logged: HashSet<&str> = events.iter().map(|e| e["id"].as_str().unwrap()).collect();
    assert_eq!(ids, logged, "what went out is what came in");
    let order = |items: Vec<(String, u64)>| {
        items.into_iter().fold(BTreeMap::<String, Vec<u64>>::new(), |mut m, (k, n)| {
            m.entry(k).or_default().push(n);
            m
        })
    };
    let log_order = order(
        events.iter().map(|e| (e["key"].as_str().unwrap().to_owned(), e["payload"]["n"].as_u64().unwrap())).collect(),
    );
    let out_order = order(published.iter().map(|(_, _, k, n)| (k.clone(), *n)).collect());
    assert_eq!(out_order, log_order, "per key, the output keeps the log's order");
}
