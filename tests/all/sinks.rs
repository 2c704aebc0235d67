//! Webhook sinks against a receiver started by each test, which fails, hangs
//! and drops connections on purpose. Every request's signature is checked
//! by an independent implementation of Standard Webhooks verification:
//! Python's `hmac` module, not the runtime's signing code.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde_json::{Value, json};
use weir_runtime::config::SinkSecret;
use weir_runtime::{DlqFilter, IdGenerator, Runtime};
use weir_tests::Server;

/// The secret the library tests sign with (Standard Webhooks form).
const SECRET: &str = "whsec_dGhlIHRlc3RzJyBzaWduaW5nIHNlY3JldCwgMzIgYnl0ZXM=";

/// One request as the receiver saw it.
#[derive(Debug, Clone)]
struct Request {
    id: String,
    timestamp: String,
    signature: String,
    content_type: String,
    body: Vec<u8>,
    at: Instant,
    /// Whether the receiver answered it with a 2xx.
    delivered: bool,
}

impl Request {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap()
    }

    /// The payload's `n` (the event's place in its test).
    fn n(&self) -> u64 {
        let v = self.json();
        v["payload"]["n"].as_u64().or_else(|| v["data"]["n"].as_u64()).unwrap()
    }
}

/// How the receiver answers one request.
enum Reply {
    Status(u16, Vec<(&'static str, String)>),
    /// Read it, answer nothing for this long, then close.
    Hang(Duration),
    /// Close the connection without an answer.
    Drop,
}

type Script = dyn Fn(&Request, usize) -> Reply + Send + Sync;

/// A tiny HTTP/1.1 receiver on a thread per connection. The script sees
/// each request and how many times its `webhook-id` came so far (this one
/// included).
struct Receiver {
    addr: SocketAddr,
    requests: Arc<Mutex<Vec<Request>>>,
    stop: Arc<AtomicBool>,
}

impl Receiver {
    fn start(script: impl Fn(&Request, usize) -> Reply + Send + Sync + 'static) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let script: Arc<Script> = Arc::new(script);
        let (reqs, halt) = (Arc::clone(&requests), Arc::clone(&stop));
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                if halt.load(Ordering::Relaxed) {
                    return;
                }
                let Ok(stream) = stream else { continue };
                let (reqs, script) = (Arc::clone(&reqs), Arc::clone(&script));
                std::thread::spawn(move || serve(stream, &reqs, &*script));
            }
        });
        Self { addr, requests, stop }
    }

    fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    fn requests(&self) -> Vec<Request> {
        self.requests.lock().unwrap().clone()
    }

    /// The webhook-ids answered with a 2xx.
    fn delivered(&self) -> HashSet<String> {
        self.requests().into_iter().filter(|r| r.delivered).map(|r| r.id).collect()
    }

    /// Wait until every id in `ids` was delivered at least once.
    fn wait_delivered(&self, ids: &HashSet<String>, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if ids.is_subset(&self.delivered()) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = TcpStream::connect(self.addr);
    }
}

fn serve(mut stream: TcpStream, requests: &Mutex<Vec<Request>>, script: &Script) {
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    let head = String::from_utf8(buf[..head_end].to_vec()).unwrap();
    let headers: HashMap<String, String> = head
        .split("\r\n")
        .skip(1)
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let length: usize = headers["content-length"].parse().unwrap();
    let mut body = buf[head_end..].to_vec();
    while body.len() < length {
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => body.extend_from_slice(&chunk[..n]),
        }
    }
    assert!(head.starts_with("POST /hook HTTP/1.1\r\n"), "{head}");
    let header = |name: &str| headers.get(name).cloned().unwrap_or_default();
    let mut request = Request {
        id: header("webhook-id"),
        timestamp: header("webhook-timestamp"),
        signature: header("webhook-signature"),
        content_type: header("content-type"),
        body,
        at: Instant::now(),
        delivered: false,
    };
    let reply = {
        let mut all = requests.lock().unwrap();
        let seen = all.iter().filter(|r| r.id == request.id).count() + 1;
        let reply = script(&request, seen);
        request.delivered = matches!(reply, Reply::Status(200..=299, _));
        all.push(request);
        reply
    };
    match reply {
        Reply::Status(status, headers) => {
            let mut answer = format!("HTTP/1.1 {status} X\r\nconnection: close\r\ncontent-length: 4\r\n");
            for (name, value) in headers {
                answer.push_str(&format!("{name}: {value}\r\n"));
            }
            answer.push_str("\r\nnope");
            let _ = stream.write_all(answer.as_bytes());
        }
        Reply::Hang(wait) => std::thread::sleep(wait),
        Reply::Drop => {}
    }
}

/// How many of `requests` carry a valid signature, checked by Python's
/// `hmac` and `base64` modules as the Standard Webhooks specification
/// describes: HMAC-SHA256 over `{id}.{timestamp}.{body}`, keyed with the
/// base64-decoded part of a `whsec_` secret, compared in constant time
/// with each `v1,` signature of the header.
fn verified_by_python(secret: &str, requests: &[Request]) -> usize {
    const VERIFY: &str = r#"
import sys, json, hmac, hashlib, base64
lines = sys.stdin.read().splitlines()
secret = json.loads(lines[0])
key = base64.b64decode(secret[len("whsec_"):]) if secret.startswith("whsec_") else secret.encode()
ok = 0
for line in lines[1:]:
    r = json.loads(line)
    signed = r["id"].encode() + b"." + r["ts"].encode() + b"." + base64.b64decode(r["body"])
    expected = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    given = [s[3:] for s in r["sig"].split(" ") if s.startswith("v1,")]
    if any(hmac.compare_digest(expected, g) for g in given):
        ok += 1
print(ok)
"#;
    let mut input = format!("{}\n", json!(secret));
    for r in requests {
        input.push_str(
            &json!({"id": r.id, "ts": r.timestamp, "sig": r.signature, "body": BASE64.encode(&r.body)}).to_string(),
        );
        input.push('\n');
    }
    let mut child = std::process::Command::new("python3")
        .args(["-c", VERIFY])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python3 verifies the signatures");
    child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap().trim().parse().unwrap()
}

/// A runtime with one sink named `hook` (plus `extra` TOML), signing with
/// [`SECRET`]. The secret is set on the loaded configuration: the file
/// names an environment variable every process has (`PATH`), whose value
/// is then replaced, so no test writes to the environment.
fn runtime(dir: &std::path::Path, url: &str, extra: &str) -> Runtime {
    runtime_signed(dir, url, extra, SECRET)
}

/// [`runtime`], signing with `secret`.
fn runtime_signed(dir: &std::path::Path, url: &str, extra: &str, secret: &str) -> Runtime {
    let toml = format!(
        r#"
[[sinks]]
name = "hook"
topics = ["orders.>"]
url = "{url}"
secret_env = "PATH"
timeout = "1s"
retry = {{ max_attempts = 10, initial_backoff = "10ms", max_backoff = "50ms" }}
{extra}
"#
    );
    let mut config = weir_tests::config(dir, &toml);
    for sink in &mut config.sinks {
        sink.secret = SinkSecret::parse(secret).unwrap();
    }
    Runtime::start(&config).unwrap()
}

/// Events `orders.order.created` with these keys, payload `{"n": i}`.
fn events(keys: &[&str]) -> Vec<weir_abi::Event> {
    keys.iter()
        .enumerate()
        .map(|(n, key)| {
            weir_tests::event(&json!({"topic": "orders.order.created", "key": key, "payload": {"n": n}}).to_string())
        })
        .collect()
}

fn ids(events: &[weir_abi::Event]) -> HashSet<String> {
    events.iter().map(|e| e.id.to_string()).collect()
}

fn status(runtime: &Runtime, name: &str) -> weir_runtime::SubscriptionStatus {
    runtime.status().unwrap().into_iter().find(|s| s.name == name).unwrap()
}

#[test]
fn every_event_is_delivered_in_key_order_with_one_webhook_id_through_failures_and_timeouts() {
    let receiver = Receiver::start(|request, seen| {
        let n = request.n();
        match (n % 10, n % 3, n % 7, seen) {
            (5, _, _, 1) => Reply::Hang(Duration::from_millis(1500)),
            (_, 0, _, 1 | 2) => Reply::Status(500, vec![]),
            (_, _, 0, 1) => Reply::Drop,
            (_, _, _, 1) if n % 4 == 1 => Reply::Status(408, vec![]),
            _ => Reply::Status(200, vec![]),
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let runtime = runtime(dir.path(), &receiver.url(), "");
    let keys: Vec<&str> = (0..60).map(|i| ["a", "b", "c", "d"][i % 4]).collect();
    let events = events(&keys);
    runtime.publish_blocking(events.clone()).unwrap();
    let published = ids(&events);
    assert!(receiver.wait_delivered(&published, Duration::from_secs(120)), "not every event was delivered");
    assert!(runtime.wait_idle(Duration::from_secs(30)));

    let requests = receiver.requests();
    // Every request is one of the events, its webhook-id the event's id,
    // and every retry of an event carries the same id and the same body.
    let by_id: BTreeMap<&str, Vec<&Request>> = requests.iter().fold(BTreeMap::new(), |mut m, r| {
        m.entry(r.id.as_str()).or_insert_with(Vec::new).push(r);
        m
    });
    assert_eq!(by_id.keys().map(|k| (*k).to_owned()).collect::<HashSet<_>>(), published);
    for (id, attempts) in &by_id {
        assert_eq!(attempts[0].json()["id"], json!(id), "webhook-id is the event id");
        assert!(attempts.iter().all(|a| a.body == attempts[0].body), "{id}: a retry sent another body");
        assert_eq!(attempts.iter().filter(|a| a.delivered).count(), 1, "{id}: delivered once here (no crash)");
        assert!(attempts.last().unwrap().delivered, "{id}: attempts after the delivery");
    }
    let retried = by_id.values().filter(|a| a.len() > 1).count();
    assert!(retried >= 20, "the receiver failed at least 20 events' first attempts, {retried} were retried");
    // Per key, requests come in event order: no event is sent before the
    // one before it with its key was delivered.
    for key in ["a", "b", "c", "d"] {
        let order: Vec<u64> = requests.iter().filter(|r| r.json()["key"] == key).map(Request::n).collect();
        assert!(order.windows(2).all(|w| w[0] <= w[1]), "key {key}: out of order: {order:?}");
    }
    assert_eq!(verified_by_python(SECRET, &requests), requests.len(), "a signature did not verify");
    assert!(requests.iter().all(|r| r.content_type == "application/json"));
    let counters = runtime.counters("sinks/hook").unwrap();
    assert_eq!((counters.handled, counters.dead_lettered), (60, 0));
    let s = status(&runtime, "sinks/hook");
    assert!(runtime.plugins().unwrap().is_empty(), "a sink runs no plugin: no versions to list");
    assert_eq!(
        (s.pipeline.as_str(), s.handler.as_str(), s.plugin.as_str(), s.state),
        ("sinks", "hook", "webhook", "ok")
    );
    runtime.shutdown().unwrap();
}

#[test]
fn a_410_disables_the_sink_until_the_next_start_and_loses_nothing() {
    let gone = Arc::new(AtomicBool::new(true));
    let flag = Arc::clone(&gone);
    let receiver = Receiver::start(move |request, _| {
        if request.n() >= 3 && flag.load(Ordering::Relaxed) {
            Reply::Status(410, vec![])
        } else {
            Reply::Status(200, vec![])
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let runtime = runtime(dir.path(), &receiver.url(), "");
    let events = events(&["a", "b", "c", "d", "e", "f"]);
    runtime.publish_blocking(events[..6].to_vec()).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while status(&runtime, "sinks/hook").state != "disabled" {
        assert!(Instant::now() < deadline, "the sink was not disabled");
        std::thread::sleep(Duration::from_millis(20));
    }
    let s = status(&runtime, "sinks/hook");
    assert!(s.stopped.as_deref().is_some_and(|why| why.contains("410")), "{:?}", s.stopped);
    let readiness = runtime.readiness();
    assert_eq!(readiness.status, "degraded", "{:?}", readiness.reasons);
    assert!(readiness.reasons.iter().any(|r| r.contains("sinks/hook is disabled")), "{:?}", readiness.reasons);
    // Off: nothing more is sent, whatever is published.
    let sent = receiver.requests().len();
    assert_eq!(sent, 4, "events 0-2 delivered, event 3 answered 410, then nothing");
    runtime.publish_blocking(self::events(&["g"])).unwrap();
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(receiver.requests().len(), sent, "a disabled sink sent a request");
    runtime.shutdown().unwrap();

    // The receiver is back; a start turns the sink on, and every event
    // arrives, the one that met the 410 included.
    gone.store(false, Ordering::Relaxed);
    let runtime = self::runtime(dir.path(), &receiver.url(), "");
    let all: HashSet<String> =
        runtime.store().read_log(0, usize::MAX).unwrap().into_iter().map(|(_, e)| e.id.to_string()).collect();
    assert_eq!(all.len(), 7);
    assert!(receiver.wait_delivered(&all, Duration::from_secs(30)), "an event was lost while the sink was off");
    assert!(runtime.wait_idle(Duration::from_secs(30)));
    assert_eq!(status(&runtime, "sinks/hook").state, "ok");
    runtime.shutdown().unwrap();
}

#[test]
fn other_4xx_is_dead_lettered_at_once_and_a_redrive_delivers_it_with_the_same_webhook_id() {
    let reject = Arc::new(AtomicBool::new(true));
    let flag = Arc::clone(&reject);
    let receiver = Receiver::start(move |request, _| {
        if request.n() == 1 && flag.load(Ordering::Relaxed) {
            Reply::Status(422, vec![])
        } else {
            Reply::Status(200, vec![])
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let runtime = runtime(dir.path(), &receiver.url(), "");
    let events = events(&["k", "k", "k"]);
    runtime.publish_blocking(events.clone()).unwrap();
    assert!(runtime.wait_idle(Duration::from_secs(30)));
    let filter = DlqFilter { subscription: Some("sinks/hook".into()), ..DlqFilter::default() };
    let dlq = runtime.dlq(&filter).unwrap();
    assert_eq!(dlq.len(), 1);
    assert_eq!((dlq[0].code.as_str(), dlq[0].attempts, dlq[0].event.id), ("webhook_rejected", 1, events[1].id));
    assert!(dlq[0].message.contains("422") && dlq[0].message.contains("nope"), "{}", dlq[0].message);
    // Its key did not hold the next event back.
    assert!(receiver.delivered().contains(&events[2].id.to_string()));

    reject.store(false, Ordering::Relaxed);
    assert_eq!(runtime.redrive(&filter).unwrap().redriven, 1);
    assert!(receiver.wait_delivered(&ids(&events), Duration::from_secs(30)));
    assert!(runtime.wait_idle(Duration::from_secs(30)));
    let attempts: Vec<Request> = receiver.requests().into_iter().filter(|r| r.id == events[1].id.to_string()).collect();
    assert_eq!(attempts.len(), 2);
    assert!(!attempts[0].delivered && attempts[1].delivered && attempts[0].body == attempts[1].body);
    assert!(runtime.dlq(&filter).unwrap().is_empty());
    runtime.shutdown().unwrap();
}

#[test]
fn a_429_retry_after_is_honoured_and_a_cloudevent_sink_signs_the_same_way() {
    let receiver = Receiver::start(|_, seen| {
        if seen == 1 { Reply::Status(429, vec![("retry-after", "1".to_owned())]) } else { Reply::Status(200, vec![]) }
    });
    let ce_receiver = Receiver::start(|_, _| Reply::Status(200, vec![]));
    let dir = tempfile::tempdir().unwrap();
    let extra = format!(
        "[[sinks]]\nname = \"ce\"\ntopics = [\"orders.>\"]\nurl = \"{}\"\nsecret_env = \"PATH\"\nformat = \"cloudevent\"\n",
        ce_receiver.url()
    );
    let runtime = runtime(dir.path(), &receiver.url(), &extra);
    let events = events(&["k"]);
    runtime.publish_blocking(events.clone()).unwrap();
    assert!(receiver.wait_delivered(&ids(&events), Duration::from_secs(30)));
    assert!(ce_receiver.wait_delivered(&ids(&events), Duration::from_secs(30)));
    let requests = receiver.requests();
    assert_eq!(requests.len(), 2);
    // The policy's backoff is 10 ms; the receiver asked for a second.
    let gap = requests[1].at - requests[0].at;
    assert!(gap >= Duration::from_millis(950), "retried after {gap:?}, before Retry-After: 1");
    assert_eq!(requests[0].id, requests[1].id);

    let ce = ce_receiver.requests();
    assert_eq!(ce.len(), 1);
    assert_eq!(ce[0].content_type, "application/cloudevents+json");
    let v = ce[0].json();
    assert_eq!(
        (v["specversion"].as_str(), v["type"].as_str(), v["partitionkey"].as_str()),
        (Some("1.0"), Some("orders.order.created"), Some("k"))
    );
    assert_eq!(v["id"], json!(ce[0].id));
    assert_eq!(verified_by_python(SECRET, &ce), 1);
    assert_eq!(verified_by_python(SECRET, &requests), 2);
    assert_eq!(verified_by_python("whsec_b3RoZXIgc2VjcmV0", &requests), 0, "a wrong secret must not verify");
    runtime.shutdown().unwrap();
}

#[test]
fn a_sink_added_with_from_end_sends_only_what_is_published_after_its_first_start() {
    let receiver = Receiver::start(|_, _| Reply::Status(200, vec![]));
    let dir = tempfile::tempdir().unwrap();
    let before = Runtime::start(&weir_tests::config(dir.path(), "")).unwrap();
    before.publish_blocking(events(&["a", "b"])).unwrap();
    before.shutdown().unwrap();
    let runtime = runtime(dir.path(), &receiver.url(), "from = \"end\"");
    let after = events(&["c"]);
    runtime.publish_blocking(after.clone()).unwrap();
    assert!(receiver.wait_delivered(&ids(&after), Duration::from_secs(30)));
    assert!(runtime.wait_idle(Duration::from_secs(30)));
    assert_eq!(receiver.requests().len(), 1, "an event from before the sink existed was sent");
    runtime.shutdown().unwrap();
}

#[test]
fn two_secrets_sign_every_request_twice_so_a_receiver_can_rotate() {
    const NEW: &str = "whsec_YSBuZXcgc2VjcmV0IGZvciB0aGUgcm90YXRpb24=";
    let receiver = Receiver::start(|_, _| Reply::Status(200, vec![]));
    let dir = tempfile::tempdir().unwrap();
    let runtime = runtime_signed(dir.path(), &receiver.url(), "", &format!("{SECRET} {NEW}"));
    let events = events(&["a", "b", "c"]);
    runtime.publish_blocking(events.clone()).unwrap();
    assert!(receiver.wait_delivered(&ids(&events), Duration::from_secs(30)));
    let requests = receiver.requests();
    assert!(requests.iter().all(|r| r.signature.split(' ').count() == 2), "one v1 signature per secret");
    // A receiver holding either secret verifies every request.
    assert_eq!(verified_by_python(SECRET, &requests), 3);
    assert_eq!(verified_by_python(NEW, &requests), 3);
    runtime.shutdown().unwrap();
}

#[test]
fn kill_9_of_the_binary_during_delivery_loses_nothing() {
    const EVENTS: usize = 400;
    let receiver = Receiver::start(|request, seen| {
        std::thread::sleep(Duration::from_millis(2));
        if request.n() % 10 == 0 && seen == 1 { Reply::Status(503, vec![]) } else { Reply::Status(200, vec![]) }
    });
    let dir = tempfile::tempdir().unwrap();
    // The binary reads the secret from the environment it inherits; `PATH`
    // is one every process has, so no test writes to the environment. Its
    // value is not in the `whsec_` form: its bytes are the key.
    // (Whitespace would separate several secrets; PATH has none in practice,
    // and the first of them verifies if it had.)
    let secret = std::env::var("PATH").unwrap().split_whitespace().next().unwrap().to_owned();
    let toml = format!(
        r#"
[[sinks]]
name = "hook"
topics = ["orders.>"]
url = "{}"
secret_env = "PATH"
timeout = "2s"
retry = {{ max_attempts = 20, initial_backoff = "10ms", max_backoff = "100ms" }}
"#,
        receiver.url()
    );
    let mut server = Server::start(dir.path(), &toml);
    let ids_gen = IdGenerator::new();
    let mut published = HashSet::new();
    for batch in 0..EVENTS / 100 {
        let events: Vec<Value> = (0..100)
            .map(|i| {
                let n = batch * 100 + i;
                let id = ids_gen.next_id().to_string();
                published.insert(id.clone());
                json!({"id": id, "topic": "orders.order.created", "key": format!("k{}", n % 8), "payload": {"n": n}})
            })
            .collect();
        let (code, body) = server.post("/v1/events", &json!(events));
        assert!(code == 200 || code == 201 || code == 202, "{code} {body}");
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while receiver.delivered().len() < EVENTS / 4 {
        assert!(Instant::now() < deadline, "deliveries did not start: {}", server.stderr());
        std::thread::sleep(Duration::from_millis(5));
    }
    server.kill9();
    let before = receiver.delivered().len();
    assert!(before < EVENTS, "killed during delivery, not after it");
    server.restart();
    assert!(receiver.wait_delivered(&published, Duration::from_secs(120)), "an event was lost: {}", server.stderr());
    assert!(server.wait_idle(Duration::from_secs(60)));
    assert!(server.terminate().success());

    let requests = receiver.requests();
    let mut bodies: HashMap<&str, &[u8]> = HashMap::new();
    for r in &requests {
        assert!(published.contains(&r.id), "unknown webhook-id {}", r.id);
        // A redelivery after the crash is the same event under the same
        // webhook-id: a receiver that de-duplicates by it sees each once.
        assert_eq!(*bodies.entry(&r.id).or_insert(&r.body), &r.body[..], "{}: another body", r.id);
    }
    let delivered = requests.iter().filter(|r| r.delivered).count();
    println!(
        "{EVENTS} events, {delivered} deliveries ({} again after the kill), {before} before it",
        delivered - EVENTS
    );
    assert_eq!(verified_by_python(&secret, &requests), requests.len(), "a signature did not verify");
}
