//! The HTTP API against hostile clients (issue #12, items 2, 3, 8 and 9):
//! what a web page can make a browser send without a CORS preflight is
//! refused on every state-changing route; off loopback every route but
//! `/health` and `/ready` needs a token with the route's scope; a huge body,
//! a huge batch and oversized fields are refused with the server's memory
//! bounded; a client that never finishes its head is dropped; a flood of
//! publishes gets `503` with `Retry-After`; connections are capped.

use std::io::{BufReader, Read as _, Write as _};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use weir_tests::{Server, plugins, weir_bin};

const PIPELINE: &str = weir_tests::ORDERS;

/// An answer read off a plain socket.
#[derive(Debug)]
struct Raw {
    status: u16,
    /// The header lines, lower-cased.
    headers: Vec<String>,
    body: Value,
}

impl Raw {
    fn code(&self) -> &str {
        self.body["error"]["code"].as_str().unwrap_or("")
    }

    fn header(&self, name: &str) -> Option<&str> {
        let prefix = format!("{name}:");
        self.headers.iter().find_map(|h| h.strip_prefix(&prefix)).map(str::trim)
    }
}

fn addr(url: &str) -> &str {
    url.trim_start_matches("http://")
}

/// Send `head` (request line and header lines, each ending in CRLF, no
/// `Host` unless the head has one) and `body` over a fresh connection, and
/// read the answer.
fn send(url: &str, head: &str, body: &[u8]) -> Raw {
    let addr = addr(url);
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let host =
        if head.to_ascii_lowercase().contains("\r\nhost:") { String::new() } else { format!("Host: {addr}\r\n") };
    let request = format!("{head}{host}Content-Length: {}\r\nConnection: close\r\n\r\n", body.len());
    stream.write_all(request.as_bytes()).unwrap();
    // The server may answer and close before taking it all (a refusal from
    // the head alone): not an error here, the answer says what happened.
    let _ = stream.write_all(body);
    read_answer(&mut BufReader::new(stream))
}

fn read_answer(reader: &mut impl std::io::BufRead) -> Raw {
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    let status = line.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or_else(|| panic!("{line:?}"));
    let mut headers = Vec::new();
    loop {
        line.clear();
        reader.read_line(&mut line).unwrap();
        if line.trim().is_empty() {
            break;
        }
        headers.push(line.trim().to_ascii_lowercase());
    }
    let length: usize =
        headers.iter().find_map(|h| h.strip_prefix("content-length:")).map_or(0, |v| v.trim().parse().unwrap());
    let mut text = vec![0; length];
    reader.read_exact(&mut text).unwrap();
    let body = serde_json::from_slice(&text).unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&text).into()));
    Raw { status, headers, body }
}

/// Peak resident memory of process `pid` (`VmHWM`), in bytes.
fn peak_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kib * 1024
}

/// Every route that changes state, with a body it would accept from a
/// local tool (JSON, or the module for a `PUT`).
fn state_changing_routes() -> Vec<(&'static str, &'static str, Vec<u8>)> {
    let module = std::fs::read(plugins::ORDER_VALIDATOR).unwrap();
    vec![
        ("POST", "/v1/events", br#"{"topic":"orders.order.created","payload":{}}"#.to_vec()),
        ("POST", "/v1/dlq/redrive", br#"{"all":true}"#.to_vec()),
        ("POST", "/v1/dlq/purge", br#"{"all":true}"#.to_vec()),
        ("PUT", "/v1/plugins/orders/audit", module),
        ("POST", "/v1/plugins/orders/audit/deploy", br#"{"module_base64":"AA=="}"#.to_vec()),
        ("POST", "/v1/plugins/orders/audit/rollback", b"{}".to_vec()),
    ]
}

#[test]
fn requests_a_browser_sends_without_preflight_are_refused_on_every_state_changing_route() {
    let dir = tempfile::tempdir().unwrap();
    // The default configuration: loopback, no token.
    let server = Server::start(dir.path(), PIPELINE);
    let (_, before) = server.get("/v1/plugins/orders/audit");
    let url = server.url.as_str();
    for (method, path, body) in state_changing_routes() {
        let shapes: [(&str, &[u8], u16, &str); 7] = [
            // fetch(…, {method, mode: 'no-cors', body: '…'}) from another site.
            (
                "Origin: http://evil.example\r\nSec-Fetch-Site: cross-site\r\nContent-Type: text/plain;charset=UTF-8\r\n",
                &body,
                403,
                "cross_origin",
            ),
            // The same from a browser that sends Origin but no Sec-Fetch-*.
            ("Origin: http://evil.example\r\nContent-Type: text/plain\r\n", &body, 403, "cross_origin"),
            // An opaque origin (a sandboxed frame, a data: URL).
            ("Origin: null\r\nContent-Type: application/json\r\n", &body, 403, "cross_origin"),
            // Another port of this machine is another origin, though the same site.
            ("Sec-Fetch-Site: same-site\r\nContent-Type: application/json\r\n", &body, 403, "cross_origin"),
            // A bare form POST with an empty body, and a text/plain one,
            // however it slipped past the origin checks.
            ("Content-Type: application/x-www-form-urlencoded\r\n", b"", 415, "unsupported_media_type"),
            ("Content-Type: text/plain\r\n", &body, 415, "unsupported_media_type"),
            // A bodiless POST without a content type (fetch with no body).
            ("", b"", 415, "unsupported_media_type"),
        ];
        for (headers, body, status, code) in shapes {
            let answer = send(url, &format!("{method} {path} HTTP/1.1\r\n{headers}"), body);
            assert_eq!((answer.status, answer.code()), (status, code), "{method} {path} with {headers:?}: {answer:?}");
        }
        // A DNS-rebinding page: the right address under the attacker's name.
        let port = url.rsplit(':').next().unwrap();
        let answer = send(
            url,
            &format!("{method} {path} HTTP/1.1\r\nHost: evil.example:{port}\r\nContent-Type: application/json\r\n"),
            &body,
        );
        assert_eq!((answer.status, answer.code()), (421, "misdirected_host"), "{method} {path}: {answer:?}");
    }
    // A rebinding page cannot read either.
    for path in ["/v1/status", "/v1/dlq", "/v1/plugins", "/metrics", "/"] {
        let answer = send(url, &format!("GET {path} HTTP/1.1\r\nHost: evil.example\r\n"), b"");
        assert_eq!((answer.status, answer.code()), (421, "misdirected_host"), "GET {path}: {answer:?}");
    }
    // Nothing of it happened: no event, no deploy or rollback.
    let (_, status) = server.get("/v1/status");
    assert_eq!(status["head"], 0, "{status}");
    let (_, after) = server.get("/v1/plugins/orders/audit");
    assert_eq!(before, after);

    // The decision for loopback without a token: local tools (no Origin,
    // the right content type, this server's name) act without one, as the
    // `weir` CLI and the demo do. Same-origin requests (the dashboard's)
    // pass too.
    let answer = send(
        url,
        "POST /v1/events HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n",
        br#"{"topic":"orders.order.created","payload":{}}"#,
    );
    assert_eq!(answer.status, 200, "{answer:?}");
    let answer = send(
        url,
        &format!(
            "POST /v1/dlq/purge HTTP/1.1\r\nOrigin: {url}\r\nSec-Fetch-Site: same-origin\r\nContent-Type: application/json\r\n"
        ),
        br#"{"all":true}"#,
    );
    assert_eq!(answer.status, 200, "{answer:?}");
    assert!(answer.body["purged"].is_u64(), "{answer:?}");
    // Probes need no Host check.
    let answer = send(url, "GET /health HTTP/1.1\r\nHost: anything.example\r\n", b"");
    assert_eq!(answer.status, 200, "{answer:?}");
}

#[test]
fn the_dashboard_is_served_with_security_headers() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), PIPELINE);
    let answer = send(&server.url, "GET / HTTP/1.1\r\n", b"");
    assert_eq!(answer.status, 200);
    let csp = answer.header("content-security-policy").unwrap_or_else(|| panic!("{:?}", answer.headers));
    for part in ["frame-ancestors 'none'", "default-src 'none'", "script-src 'sha256-", "connect-src 'self'"] {
        assert!(csp.contains(part), "{csp}");
    }
    assert!(!csp.contains("script-src 'unsafe-inline'"), "{csp}");
    assert_eq!(answer.header("x-frame-options"), Some("deny"));
    assert_eq!(answer.header("x-content-type-options"), Some("nosniff"));
    // Every API answer says nosniff too.
    let answer = send(&server.url, "GET /v1/status HTTP/1.1\r\n", b"");
    assert_eq!(answer.header("x-content-type-options"), Some("nosniff"));
}

/// A `weir run` of our own, for configurations the shared helper cannot
/// write (another listen address, environment variables).
struct Proc {
    child: Child,
    url: String,
}

impl Proc {
    fn start(dir: &std::path::Path, listen_ip: &str, toml: &str, env: &[(&str, &str)]) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let mut text = format!(
            "data_dir = {:?}\n[http]\nlisten = \"{listen_ip}:{port}\"\n{toml}",
            dir.join("data").display().to_string()
        );
        for (name, path) in plugins::ALL {
            text = text.replace(&format!("{{{name}}}"), path);
        }
        let config = dir.join("weir.toml");
        std::fs::write(&config, text).unwrap();
        let mut command = Command::new(weir_bin());
        command.args(["run", "--config"]).arg(&config).stdout(Stdio::null()).stderr(Stdio::null());
        command.env_remove("WEIR_ADMIN_TOKEN").env_remove("WEIR_TOKENS");
        for (name, value) in env {
            command.env(name, value);
        }
        let child = command.spawn().unwrap();
        let proc = Self { child, url: format!("http://127.0.0.1:{port}") };
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if TcpStream::connect(addr(&proc.url)).is_ok()
                && send(&proc.url, "GET /health HTTP/1.1\r\n", b"").status == 200
            {
                return proc;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("weir run did not start");
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A route, a body for it, the token that may call it and tokens that may not.
type Route<'a> = (&'a str, &'a str, &'a [u8], &'a str, &'a [&'a str]);

#[test]
fn off_loopback_every_route_but_health_and_ready_needs_a_token_with_its_scope() {
    let dir = tempfile::tempdir().unwrap();
    let toml = format!(
        "admin_token = \"adm\"\n[[http.tokens]]\ntoken = \"pub\"\nscopes = [\"publish\"]\n[[http.tokens]]\ntoken = \"rd\"\nscopes = [\"read\"]\n{PIPELINE}"
    );
    let server = Proc::start(dir.path(), "0.0.0.0", &toml, &[("WEIR_TOKENS", "read+publish:envtok")]);
    let url = server.url.as_str();
    let call = |method: &str, path: &str, token: Option<&str>, body: &[u8]| {
        let auth = token.map(|t| format!("Authorization: {t}\r\n")).unwrap_or_default();
        let content = if method == "GET" { "" } else { "Content-Type: application/json\r\n" };
        send(url, &format!("{method} {path} HTTP/1.1\r\n{auth}{content}"), body)
    };
    for path in ["/health", "/ready"] {
        assert_eq!(call("GET", path, None, b"").status, 200, "{path}");
    }
    let event = br#"{"topic":"orders.order.created","payload":{}}"#;
    let purge = br#"{"all":true}"#;
    let routes: [Route<'_>; 7] = [
        ("GET", "/v1/status", b"", "Bearer rd", &["Bearer pub"]),
        ("GET", "/metrics", b"", "Bearer rd", &["Bearer pub"]),
        ("GET", "/v1/dlq", b"", "Bearer rd", &["Bearer pub"]),
        ("GET", "/v1/plugins", b"", "Bearer rd", &["Bearer pub"]),
        ("POST", "/v1/events", event, "Bearer pub", &["Bearer rd"]),
        ("POST", "/v1/dlq/purge", purge, "Bearer adm", &["Bearer rd", "Bearer pub"]),
        ("POST", "/v1/plugins/orders/audit/rollback", b"{}", "Bearer adm", &["Bearer pub"]),
    ];
    for (method, path, body, allowed, forbidden) in routes {
        for missing in [None, Some("Bearer wrong"), Some("Basic rd"), Some("rd")] {
            let answer = call(method, path, missing, body);
            assert_eq!(
                (answer.status, answer.code()),
                (401, "unauthorized"),
                "{method} {path} {missing:?}: {answer:?}"
            );
        }
        for token in forbidden {
            let answer = call(method, path, Some(token), body);
            assert_eq!((answer.status, answer.code()), (403, "forbidden"), "{method} {path} {token}: {answer:?}");
        }
        let answer = call(method, path, Some(allowed), body);
        // A rollback with nothing to roll back to is a 404: past the guard.
        assert!([200, 404].contains(&answer.status), "{method} {path} {allowed}: {answer:?}");
        assert_ne!(answer.code(), "unauthorized");
        // The scheme is matched without regard to case (RFC 7235).
        let lower = allowed.replace("Bearer", "bearer");
        let answer = call(method, path, Some(&lower), body);
        assert!(![401, 403].contains(&answer.status), "{method} {path} {lower}: {answer:?}");
    }
    // A token from WEIR_TOKENS, with its two scopes.
    assert_eq!(call("GET", "/v1/status", Some("BEARER envtok"), b"").status, 200);
    assert_eq!(call("POST", "/v1/events", Some("Bearer envtok"), event).status, 200);
    assert_eq!(call("POST", "/v1/dlq/purge", Some("Bearer envtok"), purge).status, 403);
    // The page itself holds no data: it loads without a token, and asks for one.
    assert_eq!(call("GET", "/", None, b"").status, 200);
}

#[test]
fn a_64_mib_body_and_a_batch_of_100_000_events_are_refused_with_the_servers_memory_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), PIPELINE);
    let max_body = 64 << 20;
    // `[0,0,…]`, just under the body limit: 32 million numbers, which as a
    // JSON tree took over 2 GiB.
    let mut zeros = Vec::with_capacity(max_body);
    zeros.push(b'[');
    while zeros.len() < max_body - 4 {
        zeros.extend_from_slice(b"0,");
    }
    zeros.extend_from_slice(b"0]");
    assert!(zeros.len() < max_body);
    let answer = send(&server.url, "POST /v1/events HTTP/1.1\r\nContent-Type: application/json\r\n", &zeros);
    assert_eq!((answer.status, answer.code()), (400, "invalid_json"), "{:?}", answer.body);
    assert_eq!(answer.body["error"]["index"], 0);
    // One event whose payload is that array: refused by its size before
    // it is parsed.
    let mut payload = br#"{"topic":"orders.order.created","payload":"#.to_vec();
    payload.extend_from_slice(&zeros[..max_body - 100]);
    payload.extend_from_slice(b",0]}");
    let answer = send(&server.url, "POST /v1/events HTTP/1.1\r\nContent-Type: application/json\r\n", &payload);
    assert_eq!((answer.status, answer.code()), (413, "payload_too_large"), "{:?}", answer.body);
    // The same as a structured CloudEvent's data.
    let mut ce = br#"{"specversion":"1.0","type":"a.b.c","source":"/s","id":"1","data":"#.to_vec();
    ce.extend_from_slice(&zeros[..max_body - 100]);
    ce.extend_from_slice(b",0]}");
    let answer = send(&server.url, "POST /v1/events HTTP/1.1\r\nContent-Type: application/cloudevents+json\r\n", &ce);
    assert_eq!((answer.status, answer.code()), (413, "payload_too_large"), "{:?}", answer.body);
    drop((zeros, payload, ce));
    // 100,000 tiny events: over the per-request limit.
    let tiny = r#"{"topic":"orders.order.created"}"#;
    let batch = format!("[{}]", vec![tiny; 100_000].join(","));
    let answer = send(&server.url, "POST /v1/events HTTP/1.1\r\nContent-Type: application/json\r\n", batch.as_bytes());
    assert_eq!((answer.status, answer.code()), (413, "too_many_events"), "{:?}", answer.body);
    let batch =
        format!("[{}]", vec![r#"{"specversion":"1.0","type":"a.b.c","source":"/s","id":"1"}"#; 100_000].join(","));
    let answer = send(
        &server.url,
        "POST /v1/events HTTP/1.1\r\nContent-Type: application/cloudevents-batch+json\r\n",
        batch.as_bytes(),
    );
    assert_eq!((answer.status, answer.code()), (413, "too_many_events"), "{:?}", answer.body);
    // Nothing was stored, the server answers, and its peak memory stayed
    // within a few body sizes (the body is held once while it is read).
    let (_, status) = server.get("/v1/status");
    assert_eq!(status["head"], 0);
    let peak = peak_rss(server.pid());
    eprintln!("peak RSS of weir run: {} MiB", peak >> 20);
    assert!(peak < 512 << 20, "peak RSS {} MiB", peak >> 20);
}

#[test]
fn every_field_of_an_event_is_bounded_and_weir_headers_are_the_hosts() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), PIPELINE);
    let event = |extra: Value| {
        let mut e = json!({ "topic": "orders.order.created", "payload": {} });
        e.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        e
    };
    let many: serde_json::Map<String, Value> = (0..65).map(|i| (format!("h{i}"), json!("v"))).collect();
    let cases = [
        (event(json!({ "key": "k".repeat(200_000) })), 413, "field_too_large"),
        (event(json!({ "source": "s".repeat(100_000) })), 413, "field_too_large"),
        (event(json!({ "idempotency_key": "i".repeat(100_000) })), 413, "field_too_large"),
        (event(json!({ "content_type": "c".repeat(10_000) })), 413, "field_too_large"),
        (event(json!({ "headers": { "big": "v".repeat(300_000) } })), 413, "field_too_large"),
        (event(json!({ "headers": { "n".repeat(1000): "v" } })), 413, "field_too_large"),
        (event(json!({ "headers": many })), 413, "too_many_headers"),
        // Provenance: only the host says which plugin version emitted an event.
        (event(json!({ "headers": { "weir-plugin-version": "0123456789ab" } })), 400, "reserved_header"),
        (event(json!({ "headers": { "Weir-Anything": "x" } })), 400, "reserved_header"),
    ];
    for (body, status, code) in cases {
        let (got, answer) = server.post("/v1/events", &json!([event(json!({})), body]));
        assert_eq!((got, answer["error"]["code"].as_str().unwrap_or("")), (status, code), "{answer}");
        assert_eq!(answer["error"]["index"], 1, "{answer}");
    }
    // The CloudEvents forms too.
    let ce = json!({ "specversion": "1.0", "type": "a.b.c", "source": "/s", "id": "1", "weir-plugin-version": "x" });
    let (status, answer) =
        server.try_post("/v1/events", "application/cloudevents+json", ce.to_string().as_bytes()).unwrap();
    assert_eq!((status, answer["error"]["code"].as_str().unwrap()), (400, "reserved_header"), "{answer}");
    let (status, answer) = server.post_with(
        "/v1/events",
        &[
            ("ce-specversion", "1.0"),
            ("ce-type", "a.b.c"),
            ("ce-source", "/s"),
            ("ce-id", "1"),
            ("ce-subject", &"k".repeat(2000)),
        ],
        b"",
    );
    assert_eq!((status, answer["error"]["code"].as_str().unwrap()), (413, "field_too_large"), "{answer}");
    // Nothing stored; an event within every limit passes.
    let (_, status) = server.get("/v1/status");
    assert_eq!(status["head"], 0);
    let (status, answer) =
        server.post("/v1/events", &event(json!({ "key": "k".repeat(1024), "headers": { "a": "b" } })));
    assert_eq!(status, 200, "{answer}");
}

#[test]
fn a_client_that_never_finishes_its_head_and_an_idle_connection_are_dropped_after_the_header_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &format!("header_timeout = \"1s\"\n{PIPELINE}"));
    let addr = addr(&server.url);
    let slow = TcpStream::connect(addr).unwrap();
    // A failsafe far above the timeout: reaching it means never dropped.
    slow.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    (&slow).write_all(format!("POST /v1/events HTTP/1.1\r\nHost: {addr}\r\nContent-Type: app").as_bytes()).unwrap();
    let idle = TcpStream::connect(addr).unwrap();
    idle.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    for (what, mut stream) in [("half a head", slow), ("nothing", idle)] {
        let mut rest = Vec::new();
        match stream.read_to_end(&mut rest) {
            // Closed, possibly after a 408.
            Ok(_) => assert!(
                rest.is_empty() || rest.starts_with(b"HTTP/1.1 408"),
                "{what}: {:?}",
                String::from_utf8_lossy(&rest)
            ),
            Err(e) => assert!(
                !matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut),
                "{what}: the server never dropped the connection"
            ),
        }
    }
    // The server still answers.
    assert_eq!(server.get("/health").0, 200);
}

#[test]
fn a_body_that_stops_arriving_is_answered_408_after_the_body_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &format!("body_timeout = \"1s\"\n{PIPELINE}"));
    let stream = stalled_publish(&server.url, 1000);
    // A failsafe far above the timeout.
    stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let answer = read_answer(&mut BufReader::new(stream));
    assert_eq!((answer.status, answer.code()), (408, "body_timeout"), "{answer:?}");
    // Its admission was given back: publishing works.
    let (status, _) = server.post("/v1/events", &json!({ "topic": "orders.order.created", "payload": {} }));
    assert_eq!(status, 200);
}

/// Open a publish that announces `length` bytes of body and sends none of
/// it: the request holds its admission until the connection closes.
fn stalled_publish(url: &str, length: usize) -> TcpStream {
    let addr = addr(url);
    let mut stream = TcpStream::connect(addr).unwrap();
    write!(
        stream,
        "POST /v1/events HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {length}\r\n\r\n["
    )
    .unwrap();
    stream
}

/// The answers to `streams` (stalled publishes), read on a thread each.
fn answers(streams: Vec<TcpStream>) -> Vec<Raw> {
    let readers: Vec<_> = streams
        .into_iter()
        .map(|stream| {
            // A failsafe far above the body timeout.
            stream.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
            std::thread::spawn(move || read_answer(&mut BufReader::new(stream)))
        })
        .collect();
    let mut answers: Vec<Raw> = readers.into_iter().map(|r| r.join().unwrap()).collect();
    answers.sort_by_key(|a| a.status);
    answers
}

#[test]
fn a_flood_of_publishes_gets_503_with_retry_after_and_the_server_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(
        dir.path(),
        &format!(
            "max_concurrent_publishes = 2\nmax_inflight_publish_bytes = 1048576\nbody_timeout = \"2s\"\n{PIPELINE}"
        ),
    );
    let event = br#"{"topic":"orders.order.created","payload":{}}"#;
    let publish = || send(&server.url, "POST /v1/events HTTP/1.1\r\nContent-Type: application/json\r\n", event);
    assert_eq!(publish().status, 200);
    // Three publishes whose bodies never come: two are let in (and answered
    // 408 when the body timeout passes), the third is turned away at once,
    // before its body is read, with a time to come back. Nothing else is
    // sent meanwhile, so which is refused is the only thing left to chance.
    let stalled = (0..3).map(|_| stalled_publish(&server.url, 1000)).collect();
    let [first, second, refused] = <[Raw; 3]>::try_from(answers(stalled)).unwrap();
    assert_eq!((first.status, second.status), (408, 408), "{first:?} {second:?}");
    assert_eq!((refused.status, refused.code()), (503, "overloaded"), "{refused:?}");
    assert_eq!(refused.header("retry-after"), Some("1"));
    assert!(refused.body["error"]["message"].as_str().unwrap().contains("max_concurrent_publishes"), "{refused:?}");
    assert_eq!(publish().status, 200);
    // Bytes: 900 KiB and 200 KiB announced do not fit in 1 MiB together.
    let stalled = vec![stalled_publish(&server.url, 900 << 10), stalled_publish(&server.url, 200 << 10)];
    let [admitted, refused] = <[Raw; 2]>::try_from(answers(stalled)).unwrap();
    assert_eq!(admitted.status, 408, "{admitted:?}");
    assert_eq!((refused.status, refused.code()), (503, "overloaded"), "{refused:?}");
    assert!(refused.body["error"]["message"].as_str().unwrap().contains("max_inflight_publish_bytes"), "{refused:?}");
    assert_eq!(publish().status, 200);
    // A flood from many threads: every answer is a 200 or a 503, the server lives.
    let statuses: Vec<u16> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..32).map(|_| scope.spawn(|| publish().status)).collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert!(statuses.iter().all(|s| [200, 503].contains(s)), "{statuses:?}");
    assert_eq!(server.get("/health").0, 200);
}

#[test]
fn connections_past_the_cap_wait_until_one_closes() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &format!("max_connections = 2\n{PIPELINE}"));
    let addr = addr(&server.url);
    // The helper's own client may still hold an idle keep-alive connection
    // from its start-up health check: fill the cap with ours.
    let mut held = Vec::new();
    for _ in 0..2 {
        let stream = TcpStream::connect(addr).unwrap();
        held.push(stream);
    }
    let mut third = TcpStream::connect(addr).unwrap();
    third.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    write!(third, "GET /health HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").unwrap();
    let mut buf = [0u8; 1];
    let early = third.read(&mut buf);
    assert!(early.is_err(), "a connection past the cap was served: {early:?}");
    drop(held);
    third.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let answer = read_answer(&mut BufReader::new(third));
    assert_eq!(answer.status, 200);
}

#[test]
fn a_client_still_sending_a_refused_body_reads_the_refusal_and_one_that_never_stops_is_cut_off() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), PIPELINE);
    let addr = addr(&server.url);
    // A body the route refuses from the head alone (`415`): the client
    // sends the head, and the body only after the answer has been written.
    let refused = |length: usize| {
        let mut stream = TcpStream::connect(addr).unwrap();
        write!(
            stream,
            "PUT /v1/consumers/x HTTP/1.1\r\nHost: {addr}\r\nContent-Type: text/plain\r\nContent-Length: {length}\r\n\r\n"
        )
        .unwrap();
        std::thread::sleep(Duration::from_millis(300));
        stream
    };
    // The server reads and drops the rest of the body before it closes, so
    // the client can send it all (a close with unread bytes would reset the
    // connection under the client's feet) and then read the refusal.
    let mut stream = refused(100_000);
    stream.write_all(&vec![b'x'; 100_000]).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let answer = read_answer(&mut BufReader::new(stream));
    assert_eq!((answer.status, answer.code()), (415, "unsupported_media_type"), "{answer:?}");
    // A client that keeps sending is cut off after a bounded amount (the
    // server's linger cap, plus what the sockets' buffers hold).
    let mut stream = refused(1 << 30);
    // A failsafe: a write blocked this long means the server stopped reading
    // without closing.
    stream.set_write_timeout(Some(Duration::from_secs(30))).unwrap();
    let chunk = vec![b'x'; 64 << 10];
    let mut sent = 0_usize;
    let error = loop {
        match stream.write(&chunk) {
            Ok(n) => sent += n,
            Err(e) => break e,
        }
        assert!(sent < 256 << 20, "the server read {sent} bytes of a refused body");
    };
    assert!(
        !matches!(error.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut),
        "the server held the connection open without reading: {error}"
    );
    // The server still answers.
    assert_eq!(server.get("/health").0, 200);
}
