//! The read side's bounds, each proved alone against the real binary
//! (issue #13, hostile by default): the stream heartbeat on an idle stream,
//! the open-stream and waiting-long-poll caps (503 with `Retry-After`, and
//! room again once one ends), the topic-pattern cap, and a lineage cut by
//! depth, by fan-out and by bytes that says so. Many connections are raw
//! `TcpStream`s, cheap to hold by the hundred.

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use weir_tests::{ORDERS, Server, weir_bin};

/// Under `[http]` (the server's config starts with that table).
const FAST_HEARTBEAT: &str = "stream_heartbeat = \"300ms\"\n";

fn publish(server: &Server, events: &Value) -> Vec<Value> {
    let (status, body) = server.post("/v1/events", events);
    assert_eq!(status, 200, "{body}");
    body["events"].as_array().unwrap().clone()
}

/// A raw HTTP/1.1 connection that sent one `GET` (and asked to close after).
struct Conn {
    reader: BufReader<TcpStream>,
}

impl Conn {
    fn get(server: &Server, path: &str) -> Self {
        let addr = server.url.strip_prefix("http://").unwrap();
        let mut stream = TcpStream::connect(addr).unwrap();
        write!(stream, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        Self { reader: BufReader::new(stream) }
    }

    /// The status and the headers (names lower-cased).
    fn head(&mut self) -> (u16, Vec<(String, String)>) {
        let mut status_line = String::new();
        assert!(self.reader.read_line(&mut status_line).unwrap() > 0, "the connection closed before an answer");
        let status = status_line.split_whitespace().nth(1).unwrap().parse().unwrap();
        let mut headers = Vec::new();
        loop {
            let mut line = String::new();
            self.reader.read_line(&mut line).unwrap();
            let line = line.trim_end();
            if line.is_empty() {
                return (status, headers);
            }
            let (name, value) = line.split_once(':').unwrap();
            headers.push((name.trim().to_ascii_lowercase(), value.trim().to_owned()));
        }
    }

    /// The next chunk of a chunked body (one SSE message per chunk).
    fn chunk(&mut self) -> String {
        let mut size = String::new();
        assert!(self.reader.read_line(&mut size).unwrap() > 0, "the stream ended");
        let size = usize::from_str_radix(size.trim(), 16).unwrap();
        let mut data = vec![0; size + 2];
        self.reader.read_exact(&mut data).unwrap();
        data.truncate(size);
        String::from_utf8(data).unwrap()
    }

    fn set_timeout(&self, timeout: Duration) {
        self.reader.get_ref().set_read_timeout(Some(timeout)).unwrap();
    }
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
}

/// Status, headers (names lower-cased), body.
type Answer = (u16, Vec<(String, String)>, Value);

/// A whole answer read off a raw connection: status, headers, body as JSON.
fn parse_answer(bytes: &[u8]) -> Answer {
    let text = String::from_utf8_lossy(bytes);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or_else(|| panic!("no head in {text:?}"));
    let mut lines = head.lines();
    let status = lines.next().unwrap().split_whitespace().nth(1).unwrap().parse().unwrap();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    assert_ne!(header(&headers, "transfer-encoding"), Some("chunked"), "{text}");
    (status, headers, serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}")))
}

#[test]
fn an_idle_stream_gets_a_heartbeat_comment_at_the_configured_interval() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &format!("{FAST_HEARTBEAT}{ORDERS}"));
    let opened = Instant::now();
    let mut conn = Conn::get(&server, "/v1/log/stream");
    let (status, headers) = conn.head();
    assert_eq!((status, header(&headers, "content-type")), (200, Some("text/event-stream")));
    assert!(conn.chunk().contains("event: caught-up"));
    // The default (15 s) would not arrive within this.
    conn.set_timeout(Duration::from_secs(5));
    for _ in 0..2 {
        assert_eq!(conn.chunk(), ": heartbeat\n\n");
    }
    // Two beats, each after the interval of silence, not a flood: the
    // second cannot have come sooner than twice the interval after the
    // request.
    assert!(opened.elapsed() >= Duration::from_millis(600), "{:?}", opened.elapsed());
    // An event in between, then the beat again.
    publish(&server, &json!([{"topic": "shop.cart.added"}]));
    let mut next = conn.chunk();
    while next == ": heartbeat\n\n" {
        next = conn.chunk();
    }
    assert!(next.starts_with("id: 0\n"), "{next}");
    let mut next = conn.chunk();
    if next.contains("caught-up") {
        next = conn.chunk();
    }
    assert_eq!(next, ": heartbeat\n\n");

    // The setting is checked like the other durations.
    let bad = dir.path().join("bad.toml");
    for (value, reason) in [("0s", "more than 0"), ("soon", "")] {
        std::fs::write(&bad, format!("[http]\nstream_heartbeat = \"{value}\"\n")).unwrap();
        let error = weir_runtime::Config::load(&bad).unwrap_err().to_string();
        assert!(error.contains("http.stream_heartbeat") && error.contains(reason), "{value}: {error}");
    }
}

#[test]
fn the_129th_stream_is_answered_503_and_closing_one_makes_room() {
    let dir = tempfile::tempdir().unwrap();
    // A short heartbeat: a stream whose client left is noticed at its next write.
    let server = Server::start(dir.path(), &format!("{FAST_HEARTBEAT}{ORDERS}"));
    let mut open: Vec<Conn> = (0..128)
        .map(|i| {
            let mut conn = Conn::get(&server, "/v1/log/stream");
            assert_eq!(conn.head().0, 200, "stream {i}");
            conn
        })
        .collect();
    let refused = |conn: &mut Conn| {
        let (status, headers) = conn.head();
        if status != 503 {
            return (status, String::new());
        }
        assert_eq!(header(&headers, "retry-after"), Some("1"), "{headers:?}");
        let mut body = String::new();
        conn.reader.read_to_string(&mut body).unwrap();
        (status, body)
    };
    let (status, body) = refused(&mut Conn::get(&server, "/v1/log/stream"));
    assert_eq!(status, 503);
    let body: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["error"]["code"], "overloaded", "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("128 streams"), "{body}");

    // One client goes away: its stream ends and a new one is let in.
    drop(open.pop());
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut replacement = loop {
        let mut conn = Conn::get(&server, "/v1/log/stream");
        match refused(&mut conn) {
            (200, _) => break conn,
            (503, _) => {}
            (other, body) => panic!("{other}: {body}"),
        }
        assert!(Instant::now() < deadline, "no stream was let in after one closed");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(replacement.chunk().contains("event: caught-up"));
    // The room was one stream: the cap holds again, and the others still stream.
    assert_eq!(refused(&mut Conn::get(&server, "/v1/log/stream")).0, 503);
    publish(&server, &json!([{"topic": "shop.cart.added"}]));
    let (first, rest) = open.split_at_mut(1);
    for conn in [&mut first[0], &mut rest[125], &mut replacement] {
        let mut chunk = conn.chunk();
        while !chunk.starts_with("id: 0\n") {
            assert!(chunk.contains("caught-up") || chunk.starts_with(':'), "{chunk}");
            chunk = conn.chunk();
        }
    }
}

#[test]
fn past_256_waiting_long_polls_the_rest_get_503_and_the_256_are_served_by_the_next_event() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), ORDERS);
    publish(&server, &json!([{"topic": "shop.cart.added"}]));
    // 300 at once: each either waits (up to 30 s, holding its place) or is
    // refused at once, so exactly 44 refusals mean 256 are waiting.
    let conns: Vec<TcpStream> =
        (0..300).map(|_| Conn::get(&server, "/v1/log?after=0&wait=30s").reader.into_inner()).collect();
    for c in &conns {
        c.set_nonblocking(true).unwrap();
    }
    let mut answers: Vec<Option<Vec<u8>>> = vec![None; conns.len()];
    let mut buffers: Vec<Vec<u8>> = vec![Vec::new(); conns.len()];
    let mut poll = |answers: &mut [Option<Vec<u8>>]| {
        for (i, mut c) in conns.iter().enumerate() {
            if answers[i].is_some() {
                continue;
            }
            let mut buf = [0u8; 4096];
            loop {
                match c.read(&mut buf) {
                    Ok(0) => {
                        answers[i] = Some(std::mem::take(&mut buffers[i]));
                        break;
                    }
                    Ok(n) => buffers[i].extend_from_slice(&buf[..n]),
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(e) => panic!("connection {i}: {e}"),
                }
            }
        }
        answers.iter().filter(|a| a.is_some()).count()
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while poll(&mut answers) < 44 {
        assert!(Instant::now() < deadline, "not 44 answers before any event");
        std::thread::sleep(Duration::from_millis(10));
    }
    let refused: Vec<Answer> = answers.iter().flatten().map(|a| parse_answer(a)).collect();
    assert_eq!(refused.len(), 44, "only the ones past the cap answer before an event");
    for (status, headers, body) in &refused {
        assert_eq!(*status, 503, "{body}");
        assert_eq!(header(headers, "retry-after"), Some("1"));
        assert_eq!(body["error"]["code"], "overloaded");
        assert!(body["error"]["message"].as_str().unwrap().contains("256 reads are waiting"), "{body}");
    }

    // The event wakes every waiting one, and each gets it.
    publish(&server, &json!([{"topic": "late.event.arrived", "key": "l"}]));
    let deadline = Instant::now() + Duration::from_secs(20);
    while poll(&mut answers) < 300 {
        assert!(Instant::now() < deadline, "not every waiting read was answered");
        std::thread::sleep(Duration::from_millis(10));
    }
    let all: Vec<Answer> = answers.iter().flatten().map(|a| parse_answer(a)).collect();
    let served: Vec<&Value> = all.iter().filter(|(s, _, _)| *s == 200).map(|(_, _, b)| b).collect();
    assert_eq!(served.len(), 256);
    for body in served {
        assert_eq!(body["events"].as_array().unwrap().len(), 1, "{body}");
        assert_eq!(body["events"][0]["seq"], 1, "{body}");
    }
    // Their places are free again.
    let (status, answer) = server.get("/v1/log?after=1&wait=10ms");
    assert_eq!(status, 200, "{answer}");
}

#[test]
fn more_than_32_topic_patterns_are_refused_by_the_reads_and_the_stream() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), ORDERS);
    let patterns = |n: usize| (0..n).map(|i| format!("shop{i}.cart.*")).collect::<Vec<_>>().join(",");
    for path in ["/v1/log", "/v1/log/stream"] {
        let mut conn = Conn::get(&server, &format!("{path}?topics={}", patterns(32)));
        assert_eq!(conn.head().0, 200, "{path} with 32 patterns");
        let (status, body) = server.get(&format!("{path}?topics={}", patterns(33)));
        assert_eq!((status, body["error"]["code"].as_str()), (400, Some("invalid_query")), "{path}: {body}");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(message.contains("`topics` holds at most 32 patterns"), "{path}: {message}");
    }
}

/// The lineage of `id`.
fn lineage(server: &Server, id: &str) -> Value {
    let (status, lineage) = server.get(&format!("/v1/events/{id}/lineage"));
    assert_eq!(status, 200, "{lineage}");
    lineage
}

#[test]
fn a_causation_chain_deeper_than_64_is_cut_and_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), ORDERS);
    // e0 (the producer's) ← e1 ← … ← e65, each caused by the one before.
    let mut ids: Vec<String> = Vec::new();
    for i in 0..=65 {
        let mut event = json!({"topic": "chain.link.made", "key": format!("e{i}")});
        if let Some(cause) = ids.last() {
            event["causation_id"] = json!(cause);
        }
        ids.push(publish(&server, &json!([event]))[0]["id"].as_str().unwrap().to_owned());
    }
    let keys = |l: &Value| -> Vec<String> {
        l["causes"].as_array().unwrap().iter().map(|c| c["event"]["key"].as_str().unwrap().to_owned()).collect()
    };

    // 64 deep: the whole chain, to the producer's event, not cut.
    let full = lineage(&server, &ids[64]);
    assert_eq!(keys(&full), (0..64).rev().map(|i| format!("e{i}")).collect::<Vec<_>>());
    assert_eq!(full["causes_truncated"], false, "{}", full["causes_truncated"]);
    // 65 deep: the nearest 64, and a flag saying the chain goes on.
    let cut = lineage(&server, &ids[65]);
    assert_eq!(keys(&cut), (1..65).rev().map(|i| format!("e{i}")).collect::<Vec<_>>());
    assert_eq!(cut["causes_truncated"], true);
    assert!(cut.get("missing_cause").is_none(), "a cut chain is not a missing cause");
    // The last cause listed leads on.
    assert_eq!(lineage(&server, &ids[1])["causes_truncated"], false);

    let out = std::process::Command::new(weir_bin())
        .args(["log", "show", &ids[65], "--lineage", "--server", &server.url])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text} {}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("and more causes"), "{text}");
}

#[test]
fn a_lineage_lists_at_most_1000_caused_events_and_8_mib_and_says_when_cut() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), ORDERS);
    let roots = publish(
        &server,
        &json!([{"topic": "fan.root.made", "key": "exact"}, {"topic": "fan.root.made", "key": "over"},
                {"topic": "fan.root.made", "key": "big"}]),
    );
    let root = |i: usize| roots[i]["id"].as_str().unwrap().to_owned();
    // Events name their emitter by their source (`weir://<subscription>`).
    let caused = |cause: &str, n: usize, payload: Value| {
        Value::Array(
            (0..n)
                .map(|i| {
                    json!({"topic": "fan.child.made", "key": format!("c{i}"), "causation_id": cause,
                           "source": "weir://fan/emitter", "payload": payload})
                })
                .collect(),
        )
    };
    publish(&server, &caused(&root(0), 1000, json!({})));
    publish(&server, &caused(&root(1), 1001, json!({})));
    let emitted = |l: &Value| -> Vec<u64> {
        let sub = l["subscriptions"].as_array().unwrap().iter().find(|s| s["subscription"] == "fan/emitter");
        sub.unwrap_or_else(|| panic!("no fan/emitter in {l}"))["emitted"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["seq"].as_u64().unwrap())
            .collect()
    };

    let exact = lineage(&server, &root(0));
    assert_eq!(emitted(&exact).len(), 1000);
    assert_eq!(exact["emitted_truncated"], false);
    let over = lineage(&server, &root(1));
    let first = 3 + 1000;
    assert_eq!(emitted(&over), (first..first + 1000).collect::<Vec<u64>>(), "the first 1000 by position");
    assert_eq!(over["emitted_truncated"], true);

    // Ten events of almost 1 MiB each: 8 of them fit in 8 MiB.
    let big = "x".repeat(1_000_000);
    for _ in 0..10 {
        publish(&server, &caused(&root(2), 1, json!(big)));
    }
    let (status, text) = {
        let mut response = ureq::get(format!("{}/v1/events/{}/lineage", server.url, root(2))).call().unwrap();
        (response.status().as_u16(), response.body_mut().with_config().limit(64 << 20).read_to_string().unwrap())
    };
    assert_eq!(status, 200);
    assert!(text.len() < 9 << 20, "{} bytes", text.len());
    let big_lineage: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(emitted(&big_lineage).len(), 8);
    assert_eq!(big_lineage["emitted_truncated"], true);

    let out = std::process::Command::new(weir_bin())
        .args(["log", "show", &root(1), "--lineage", "--server", &server.url])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("caused more events than listed"), "{text}");
}
