//! Every error of the HTTP API has one JSON shape, `{"error":{"code",
//! "message"}}`, including the ones axum itself would answer in plain text:
//! an unknown route, a wrong method, a bad path or query string, a body over
//! the limit. And the admin token is checked before a body is read.

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::TcpStream;
use std::time::Duration;

use serde_json::{Value, json};
use weir_tests::Server;

const PIPELINE: &str = weir_tests::ORDERS;

/// The server's body limit (docs/operations.md, "HTTP API").
const MAX_BODY: usize = 64 << 20;

/// An answer read off a plain socket.
struct Raw {
    status: u16,
    /// The header lines, lower-cased.
    headers: Vec<String>,
    body: Value,
}

/// Send `head` (request line and headers, no blank line) over a plain
/// socket, then `body` from another thread, and read the answer. The answer
/// is read whether or not the server takes the whole body; with `body` None,
/// nothing but the head is ever sent.
fn raw(server: &Server, head: &str, body: Option<Vec<u8>>) -> Raw {
    let addr = server.url.trim_start_matches("http://");
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
    write!(stream, "{head}\r\nHost: {addr}\r\nConnection: close\r\n\r\n").unwrap();
    let writer = body.map(|body| {
        let mut stream = stream.try_clone().unwrap();
        // The server may answer and close before taking it all: not an error here.
        std::thread::spawn(move || drop(stream.write_all(&body)))
    });
    let mut reader = BufReader::new(stream);
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
    let length: usize = headers
        .iter()
        .find_map(|h| h.strip_prefix("content-length:"))
        .map(|v| v.trim().parse().unwrap())
        .unwrap_or_else(|| panic!("no content-length: {headers:?}"));
    let mut text = vec![0; length];
    reader.read_exact(&mut text).unwrap();
    if let Some(writer) = writer {
        writer.join().unwrap();
    }
    Raw { status, headers, body: serde_json::from_slice(&text).unwrap_or_else(|_| panic!("not JSON: {text:?}")) }
}

/// `answer` is the JSON error shape with `code`, and nothing else.
fn assert_error(answer: &Value, code: &str) {
    assert_eq!(answer["error"]["code"], code, "{answer}");
    assert!(answer["error"]["message"].as_str().is_some_and(|m| !m.is_empty()), "{answer}");
    let fields: Vec<&String> = answer["error"].as_object().unwrap().keys().collect();
    assert_eq!(fields, ["code", "message"], "{answer}");
    assert_eq!(answer.as_object().unwrap().len(), 1, "{answer}");
}

#[test]
fn unknown_routes_wrong_methods_and_bad_paths_answer_json_errors() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), PIPELINE);

    let (status, answer) = server.get("/v1/no-such-thing");
    assert_eq!(status, 404, "{answer}");
    assert_error(&answer, "not_found");
    assert!(answer["error"]["message"].as_str().unwrap().contains("/v1/no-such-thing"), "{answer}");

    let (status, answer) = server.put_with("/v1/dlq", &[], b"");
    assert_eq!(status, 405, "{answer}");
    assert_error(&answer, "method_not_allowed");
    // axum still says which methods the path takes.
    let answer = raw(&server, "DELETE /v1/events HTTP/1.1", None);
    assert_eq!(answer.status, 405);
    assert!(answer.headers.iter().any(|h| h == "allow: post"), "{:?}", answer.headers);
    assert_error(&answer.body, "method_not_allowed");

    let (status, answer) = server.get("/v1/dlq/orders/validator/not-a-number");
    assert_eq!(status, 400, "{answer}");
    assert_error(&answer, "invalid_path");
}

#[test]
fn unknown_query_parameters_and_bad_json_bodies_answer_json_400() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), PIPELINE);

    let (status, answer) = server.get("/v1/dlq?surprise=1");
    assert_eq!(status, 400, "{answer}");
    assert_error(&answer, "invalid_query");
    assert!(answer["error"]["message"].as_str().unwrap().contains("surprise"), "{answer}");
    let (status, answer) = server.get("/v1/dlq?seq=minus-one");
    assert_eq!(status, 400, "{answer}");
    assert_error(&answer, "invalid_query");
    // The filters themselves still work.
    let (status, answer) = server.get("/v1/dlq?subscription=orders%2Fvalidator&seq=1");
    assert_eq!((status, &answer), (200, &json!({ "entries": [] })));

    for body in [&br#"{"all": true, "surprise": 1}"#[..], b"{not json"] {
        let (status, answer) = server.post_with("/v1/dlq/purge", &[("content-type", "application/json")], body);
        assert_eq!(status, 400, "{answer}");
        assert_error(&answer, "invalid_json");
    }
    let (status, answer) = server.post("/v1/plugins/orders/validator/deploy", &json!({ "by": "me" }));
    assert_eq!(status, 400, "{answer}");
    assert_error(&answer, "invalid_json");
}

#[test]
fn a_body_over_the_limit_answers_a_json_413_and_a_wrong_token_a_401_before_the_body_is_read() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &format!("admin_token = \"s3cret\"\n{PIPELINE}"));
    let too_big = MAX_BODY + 1;

    let answer = raw(
        &server,
        &format!("POST /v1/events HTTP/1.1\r\nContent-Type: application/json\r\nContent-Length: {too_big}"),
        Some(vec![b' '; too_big]),
    );
    assert_eq!(answer.status, 413, "{}", answer.body);
    assert_error(&answer.body, "body_too_large");

    // Admin routes with a wrong or no token: 401, answered from the head
    // alone. The body is announced (over the limit, even) but never sent, so
    // a server that read it first would never answer.
    for (head, authorization) in [
        ("POST /v1/dlq/purge", "Authorization: Bearer wrong\r\n"),
        ("POST /v1/dlq/redrive", ""),
        ("PUT /v1/plugins/orders/validator", "Authorization: Bearer s3cret-not\r\n"),
        ("POST /v1/plugins/orders/validator/deploy", "Authorization: s3cret\r\n"),
        ("POST /v1/plugins/orders/validator/rollback", "Authorization: Bearer \r\n"),
    ] {
        let answer = raw(&server, &format!("{head} HTTP/1.1\r\n{authorization}Content-Length: {too_big}"), None);
        assert_eq!(answer.status, 401, "{head}: {}", answer.body);
        assert_error(&answer.body, "unauthorized");
    }

    // With the token, the limit still applies to an admin route.
    let answer = raw(
        &server,
        &format!("POST /v1/dlq/purge HTTP/1.1\r\nAuthorization: Bearer s3cret\r\nContent-Length: {too_big}"),
        Some(vec![b' '; too_big]),
    );
    assert_eq!(answer.status, 413, "{}", answer.body);
    assert_error(&answer.body, "body_too_large");
    // And an ordinary admin request with it passes the layer.
    let (status, answer) = server.post_with(
        "/v1/dlq/purge",
        &[("authorization", "Bearer s3cret"), ("content-type", "application/json")],
        br#"{"all": true}"#,
    );
    assert_eq!((status, &answer), (200, &json!({ "purged": 0 })));
}
