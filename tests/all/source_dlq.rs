//! A JetStream source's messages that make no event (no topic, a payload
//! over `ingest.max_payload_bytes`, …) become DLQ entries of
//! `sources/<name>`, committed with the batch before the +TERM, against a
//! real `nats-server -js` and the real `weir` binary (helpers from
//! `jetstream.rs`).
//!
//! Those against `nats-server` are ignored by default, and they fail, not
//! pass, when it is missing.

use std::collections::BTreeSet;
use std::time::Duration;

use base64::Engine as _;
use serde_json::{Value, json};
use weir_tests::Server;

use crate::jetstream::{
    Nats, Outgoing, connect_js, consumer_drained, create_stream, log, publish, source_status, source_toml, tokio,
    wait_for,
};

/// Every DLQ entry of `sources/in`, by seq.
fn source_dlq(server: &Server) -> Vec<Value> {
    let (status, page) = server.get("/v1/dlq?subscription=sources/in&limit=1000");
    assert_eq!(status, 200, "{page}");
    assert!(page.get("next").is_none(), "one page expected: {page}");
    page["entries"].as_array().unwrap().clone()
}

fn bad(payload: &str) -> Outgoing {
    // Two tokens: no topic can be made of it with the default template.
    ("in.bad".to_owned(), vec![("tenant", "acme".to_owned()), ("tenant", "beta".to_owned())], payload.into())
}

fn good(n: u64) -> Outgoing {
    ("in.orders.order.created".to_owned(), Vec::new(), json!({ "n": n }).to_string().into_bytes())
}

#[test]
#[ignore = "needs nats-server"]
fn a_message_with_no_topic_becomes_one_dlq_entry_and_the_source_keeps_consuming() {
    let dir = tempfile::tempdir().unwrap();
    let nats = Nats::start(dir.path());
    let rt = tokio();
    let js = rt.block_on(connect_js(&nats));
    let mut stream = rt.block_on(create_stream(&js, "IN", &["in.>"]));
    rt.block_on(publish(&js, vec![good(1), bad(r#"{"lost":true}"#), good(3)]));

    let server = Server::start(dir.path(), &source_toml(&nats, ""));
    wait_for("2 appended, 1 dead-lettered", Duration::from_secs(30), || {
        let s = source_status(&server);
        if s["appended"] == 2 && s["rejected"] == 1 && s["dead_lettered"] == 1 && s["dlq"] == 1 {
            Ok(())
        } else {
            Err(s.to_string())
        }
    });
    // Terminated after the commit: JetStream holds nothing for the consumer.
    wait_for("the consumer drained", Duration::from_secs(10), || consumer_drained(&rt, &mut stream));
    let events = log(&server);
    assert_eq!(events.len(), 2, "nothing appended for the rejected message: {events:?}");
    assert_eq!((events[0]["payload"]["n"].as_u64(), events[1]["payload"]["n"].as_u64()), (Some(1), Some(3)));

    let entries = source_dlq(&server);
    assert_eq!(entries.len(), 1, "{entries:?}");
    let e = &entries[0];
    assert_eq!((e["subscription"].as_str(), e["seq"].as_u64()), (Some("sources/in"), Some(2)), "{e}");
    assert_eq!((e["code"].as_str(), e["topic"].as_str()), (Some("source_rejected"), Some("weir.source.rejected")));
    assert!(e["message"].as_str().unwrap().starts_with("no_topic: "), "{e}");
    // Filtered by its code as any entry.
    let (_, by_code) = server.get("/v1/dlq?code=source_rejected");
    assert_eq!(by_code["entries"].as_array().unwrap().len(), 1, "{by_code}");

    let (status, detail) = server.get("/v1/dlq/sources/in/2");
    assert_eq!(status, 200, "{detail}");
    assert_eq!(
        detail["source_message"],
        json!({
            "subject": "in.bad", "stream": "IN", "stream_seq": 2, "reason_code": "no_topic",
            "payload_bytes": 13, "payload_truncated": false, "headers_truncated": false
        })
    );
    assert_eq!(detail["event"]["payload"], json!({"lost": true}));
    let headers = detail["event"]["headers"].clone();
    assert_eq!(headers["weir-source-subject"], "in.bad", "{headers}");
    assert_eq!(headers["weir-source-stream-seq"], "2", "{headers}");
    assert!(headers.get("tenant").is_some(), "the message's own headers are kept: {headers}");

    // The CLI lists and shows it like any entry.
    let cache = dir.path().join("cache");
    let out = weir_tests::weir(&["dlq", "list", "--subscription", "sources/in", "--server", &server.url], &cache);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && text.contains("sources/in") && text.contains("source_rejected"), "{text}");
    let out = weir_tests::weir(&["dlq", "show", "sources/in", "2", "--server", &server.url], &cache);
    let shown: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    assert_eq!(shown["source_message"]["subject"], "in.bad", "{}", String::from_utf8_lossy(&out.stderr));

    // Counted in the metrics; listed as a configured (running) name.
    let (_, metrics) = server.get("/metrics");
    let metrics = metrics.as_str().unwrap().to_owned();
    assert!(metrics.contains("weir_source_dlq_depth{source=\"sources/in\"} 1"), "{metrics}");
    assert!(metrics.contains("weir_source_dead_lettered_total{source=\"sources/in\"} 1"), "{metrics}");

    // The source keeps consuming.
    rt.block_on(publish(&js, vec![good(4)]));
    wait_for("the next message appended", Duration::from_secs(30), || {
        let n = log(&server).len();
        if n == 3 { Ok(()) } else { Err(n.to_string()) }
    });

    // Purged like any entry.
    let (status, purged) = server.post("/v1/dlq/purge", &json!({ "subscription": "sources/in", "seq": 2 }));
    assert_eq!((status, purged["purged"].as_u64()), (200, Some(1)), "{purged}");
    assert!(source_dlq(&server).is_empty());
}

#[test]
#[ignore = "needs nats-server"]
fn kill9_while_dead_lettering_and_a_full_redelivery_leave_exactly_one_entry_per_rejected_message() {
    const N: u64 = 1200;
    let dir = tempfile::tempdir().unwrap();
    let nats = Nats::start(dir.path());
    let rt = tokio();
    let js = rt.block_on(connect_js(&nats));
    let mut stream = rt.block_on(create_stream(&js, "IN", &["in.>"]));
    // Stream seq s (from 1) is rejected when s % 4 == 0.
    let messages: Vec<Outgoing> =
        (1..=N).map(|s| if s % 4 == 0 { bad(&format!("{{\"s\":{s}}}")) } else { good(s) }).collect();
    rt.block_on(publish(&js, messages));

    // Small batches (a commit each) and a short ack wait, so the kill lands
    // among commits and what was committed but not terminated comes back soon.
    let mut server = Server::start(dir.path(), &source_toml(&nats, "batch = 8\nack_wait = \"2s\""));
    let mut at_kill = 0;
    wait_for("some messages dead-lettered", Duration::from_secs(60), || {
        at_kill = source_status(&server)["dlq"].as_u64().unwrap_or(0);
        if at_kill >= 20 { Ok(()) } else { Err(at_kill.to_string()) }
    });
    server.kill9();
    assert!(at_kill < N / 4, "the kill came after everything was dead-lettered ({at_kill}): it proves nothing");
    server.restart();
    let expect = |server: &Server| {
        let appended = log(server).len() as u64;
        let seqs: BTreeSet<u64> = source_dlq(server).iter().map(|e| e["seq"].as_u64().unwrap()).collect();
        (appended, seqs)
    };
    let bad_seqs: BTreeSet<u64> = (1..=N).filter(|s| s % 4 == 0).collect();
    wait_for("every message appended or dead-lettered", Duration::from_secs(120), || {
        let (appended, seqs) = expect(&server);
        if appended == N - N / 4 && seqs.len() as u64 == N / 4 {
            Ok(())
        } else {
            Err(format!("{appended}, {}", seqs.len()))
        }
    });
    wait_for("the consumer drained", Duration::from_secs(30), || consumer_drained(&rt, &mut stream));
    assert_eq!(expect(&server), (N - N / 4, bad_seqs.clone()));

    // Every message delivered again (the consumer deleted while Weir is
    // down; it is created anew, from the first message): each is recognised
    // by its position, the rejected ones too.
    server.kill9();
    rt.block_on(stream.delete_consumer("weir-in")).unwrap();
    server.restart();
    wait_for("every message redelivered", Duration::from_secs(120), || {
        let s = source_status(&server);
        if s["duplicates"] == N { Ok(()) } else { Err(s.to_string()) }
    });
    wait_for("the consumer drained", Duration::from_secs(30), || consumer_drained(&rt, &mut stream));
    assert_eq!(expect(&server), (N - N / 4, bad_seqs));
    let s = source_status(&server);
    assert_eq!((s["appended"].as_u64(), s["dead_lettered"].as_u64()), (Some(0), Some(0)), "{s}");
}

#[test]
#[ignore = "needs nats-server"]
fn an_oversized_message_is_kept_truncated_with_its_real_size_and_is_not_redriven() {
    let dir = tempfile::tempdir().unwrap();
    let nats = Nats::start(dir.path());
    let rt = tokio();
    let js = rt.block_on(connect_js(&nats));
    rt.block_on(create_stream(&js, "IN", &["in.>"]));
    // Near NATS's default maximum message (1 MiB), far over Weir's limit,
    // with 48 KiB of headers besides (JetStream takes up to 64 KiB): what
    // is kept stays bounded.
    let size = 900 * 1024;
    let headers: Vec<(&'static str, String)> =
        ["h0", "h1", "h2", "h3", "h4", "h5"].iter().map(|n| (*n, "v".repeat(8 * 1024))).collect();
    rt.block_on(publish(&js, vec![("in.orders.order.created".to_owned(), headers, vec![b'x'; size])]));

    let toml = format!("[ingest]\nmax_payload_bytes = 1000\n{}", source_toml(&nats, ""));
    let server = Server::start(dir.path(), &toml);
    wait_for("one dead-lettered", Duration::from_secs(30), || {
        let s = source_status(&server);
        if s["dlq"] == 1 { Ok(()) } else { Err(s.to_string()) }
    });
    let (status, detail) = server.get("/v1/dlq/sources/in/1");
    assert_eq!(status, 200, "{detail}");
    let m = &detail["source_message"];
    assert_eq!(
        (m["reason_code"].as_str(), m["payload_bytes"].as_u64(), m["payload_truncated"].as_bool()),
        (Some("payload_too_large"), Some(size as u64), Some(true)),
        "{m}"
    );
    assert_eq!(m["headers_truncated"], true, "{m}");
    assert!(detail["message"].as_str().unwrap().starts_with("payload_too_large: "), "{detail}");
    let payload = base64::engine::general_purpose::STANDARD
        .decode(detail["event"]["payload_base64"].as_str().expect("a truncated payload is not JSON"))
        .unwrap();
    assert_eq!(payload, vec![b'x'; 4096], "the first 4096 bytes, no more");
    let kept: usize = detail["event"]["headers"].as_object().unwrap().values().map(|v| v.as_str().unwrap().len()).sum();
    assert!(kept <= 32 * 1024, "headers kept: {kept} bytes");

    // What was not kept cannot be appended: a clear error, and it stays.
    let (status, body) = server.post("/v1/dlq/redrive", &json!({ "subscription": "sources/in" }));
    assert_eq!((status, body["error"]["code"].as_str()), (422, Some("source_still_rejected")), "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("truncated"), "{body}");
    assert_eq!(source_dlq(&server).len(), 1);
    assert!(log(&server).is_empty());
}

#[test]
#[ignore = "needs nats-server"]
fn redrive_after_a_topic_fix_appends_the_message_once() {
    let dir = tempfile::tempdir().unwrap();
    let nats = Nats::start(dir.path());
    let rt = tokio();
    let js = rt.block_on(connect_js(&nats));
    let mut stream = rt.block_on(create_stream(&js, "IN", &["in.>"]));
    rt.block_on(publish(&js, vec![bad(r#"{"fixed":true}"#)]));

    let mut server = Server::start(dir.path(), &source_toml(&nats, ""));
    wait_for("dead-lettered", Duration::from_secs(30), || {
        let s = source_status(&server);
        if s["dlq"] == 1 { Ok(()) } else { Err(s.to_string()) }
    });
    // With the same configuration it still makes no event: it stays.
    let (status, body) = server.post("/v1/dlq/redrive", &json!({ "subscription": "sources/in" }));
    assert_eq!((status, body["error"]["code"].as_str()), (422, Some("source_still_rejected")), "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("no_topic"), "{body}");
    assert_eq!(source_dlq(&server).len(), 1);

    // The operator fixes the topic template and restarts.
    assert!(server.terminate().success());
    let text = std::fs::read_to_string(&server.config).unwrap();
    std::fs::write(
        &server.config,
        text.replace("stream = \"IN\"\n", "stream = \"IN\"\ntopic = \"orders.order.created\"\n"),
    )
    .unwrap();
    let text = std::fs::read_to_string(&server.config).unwrap();
    assert!(text.contains("topic = \"orders.order.created\""), "{text}");
    server.restart();

    let out = weir_tests::weir(
        &["dlq", "redrive", "--subscription", "sources/in", "--server", &server.url],
        &dir.path().join("cache"),
    );
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && said.contains("redriven: 1"), "{said} {}", String::from_utf8_lossy(&out.stderr));
    assert!(source_dlq(&server).is_empty());
    let events = log(&server);
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(
        (events[0]["topic"].as_str(), events[0]["idempotency_key"].as_str(), events[0]["source"].as_str()),
        (Some("orders.order.created"), Some("nats:IN:1"), Some("nats:IN"))
    );
    assert_eq!(events[0]["payload"], json!({"fixed": true}));
    assert!(events[0]["headers"].get("weir-source-subject").is_none(), "{}", events[0]);
    // Again: nothing left to redrive.
    let (status, body) = server.post("/v1/dlq/redrive", &json!({ "subscription": "sources/in" }));
    assert_eq!((status, body["redriven"].as_u64()), (200, Some(0)), "{body}");

    // Delivered again (the consumer deleted and created anew): its position
    // now names the appended event, so nothing is appended or dead-lettered.
    server.kill9();
    rt.block_on(stream.delete_consumer("weir-in")).unwrap();
    server.restart();
    wait_for("redelivered and recognised", Duration::from_secs(30), || {
        let s = source_status(&server);
        if s["duplicates"] == 1 { Ok(()) } else { Err(s.to_string()) }
    });
    wait_for("the consumer drained", Duration::from_secs(10), || consumer_drained(&rt, &mut stream));
    assert_eq!(log(&server).len(), 1);
    assert!(source_dlq(&server).is_empty());
}

#[test]
fn a_pipeline_named_sources_is_refused_since_sources_dlq_entries_use_the_name() {
    let dir = tempfile::tempdir().unwrap();
    let toml = format!(
        "[[pipelines]]\nname = \"sources\"\ntopics = [\"orders.>\"]\n[[pipelines.handlers]]\nname = \"in\"\nplugin = {:?}\n",
        weir_tests::plugins::ALL[0].1
    );
    let error = weir_runtime::Config::parse(&toml, &dir.path().join("weir.toml")).unwrap_err();
    assert!(error.to_string().contains("\"sources\" is reserved"), "{error}");
    assert!(
        weir_runtime::Config::parse(&toml.replace("\"sources\"", "\"orders\""), &dir.path().join("weir.toml")).is_ok()
    );
}
