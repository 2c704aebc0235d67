//! Plugins written to hurt the host (issue #12 items 1, 7 and 8): each one
//! must fail alone, classified, while the host's memory stays bounded.
//!
//! - a zero-length log flood: capped lines, the rest counted as dropped;
//! - an emit with a million empty headers (2 bytes each on the wire):
//!   refused while decoding, `bad_output`;
//! - headers over the count and byte caps, and headers with the host's
//!   reserved `weir-` prefix: `bad_output`;
//! - an emit onto the saga coordinators' topic domain `weir-saga`:
//!   `bad_output`;
//! - 4 MiB of output on every event: handled, the batch handed over early;
//! - a 4 MiB reject reason, a long name with a newline: cut and escaped;
//! - modules over the size limits, and modules using proposals the ABI does
//!   not need: refused before (or instead of) compiling.
//!
//! The end-to-end test runs the real `weir run` on all of them at once and
//! reads its resident memory from `/proc/<pid>/status`.

use std::time::{Duration, Instant};

use serde_json::json;
use weir_runtime::{
    DEFAULT_MAX_FUNCTION_BYTES, DEFAULT_MAX_LOG_LINES, DlqFilter, Engine, EngineConfig, Limits, MAX_NAME_BYTES,
    MAX_REASON_BYTES, Runtime,
};
use weir_tests::{Server, code, config, engine, handler, invoke, keyed, load, plugins};

#[test]
fn a_zero_length_log_flood_is_capped_and_counted() {
    let engine = engine();
    let limits = Limits::builder().deadline(Duration::from_millis(200)).build();
    let mut flood = handler(&engine, plugins::LOG_FLOOD, limits);
    let inv = invoke(&mut flood, &keyed("hostile.log.flood", "x"));
    assert_eq!(code(&inv), "timeout");
    assert!(inv.logs.len() <= DEFAULT_MAX_LOG_LINES, "{} lines kept", inv.logs.len());
    assert!(inv.logs_dropped > 10_000, "only {} dropped: the loop ran too little to show anything", inv.logs_dropped);
}

#[test]
fn each_log_line_costs_its_overhead_and_the_line_cap_holds() {
    let engine = engine();
    // 10 lines of overhead fit in the budget, not 11.
    let limits = Limits::builder()
        .deadline(Duration::from_millis(100))
        .max_log_bytes(10 * weir_runtime::LOG_LINE_OVERHEAD)
        .build();
    let inv = invoke(&mut handler(&engine, plugins::LOG_FLOOD, limits), &keyed("hostile.log.flood", "x"));
    assert_eq!(inv.logs.len(), 10);
    let limits = Limits::builder().deadline(Duration::from_millis(100)).max_log_lines(3).build();
    let inv = invoke(&mut handler(&engine, plugins::LOG_FLOOD, limits), &keyed("hostile.log.flood", "x"));
    assert_eq!(inv.logs.len(), 3);
}

#[test]
fn plugin_log_text_is_escaped() {
    let engine = engine();
    let mut flood = handler(&engine, plugins::LOG_FLOOD, Limits::default());
    let inv = invoke(&mut flood, &keyed("hostile.log.flood", "forge"));
    assert_eq!(code(&inv), "ok");
    assert_eq!(inv.logs.len(), 1);
    let text = &inv.logs[0].message;
    assert!(!text.chars().any(char::is_control), "control characters reach the host's log: {text:?}");
    assert_eq!(text, "ok\\n2026-01-01T00:00:00Z ERROR weir: store corrupted\\u{1b}[2K");
}

#[test]
fn an_emit_with_a_million_headers_is_refused_while_decoding() {
    let engine = engine();
    let mut bomb = handler(&engine, plugins::HEADER_BOMB, Limits::default());
    let inv = invoke(&mut bomb, &keyed("hostile.header.bomb", "x"));
    assert_eq!(code(&inv), "bad_output");
    let message = inv.result.unwrap_err().to_string();
    assert!(message.contains("decode budget"), "{message}");
    // The instance was discarded; the next event gets a fresh one.
    assert_eq!(code(&invoke(&mut bomb, &keyed("hostile.header.bomb", "count"))), "bad_output");
}

#[test]
fn headers_over_the_count_and_byte_caps_are_bad_output() {
    let engine = engine();
    let mut bomb = handler(&engine, plugins::HEADER_BOMB, Limits::default());
    let inv = invoke(&mut bomb, &keyed("hostile.header.bomb", "count"));
    let message = inv.result.unwrap_err().to_string();
    assert!(message.contains("65 headers, over the cap of 64"), "{message}");
    let inv = invoke(&mut bomb, &keyed("hostile.header.bomb", "bytes"));
    let message = inv.result.unwrap_err().to_string();
    assert!(message.contains("bytes of headers, over the cap of 16384"), "{message}");
    // The caps are the handler's limits.
    let loose = Limits::builder().max_headers_per_emit(100).max_header_bytes_per_emit(1 << 20).build();
    let mut bomb = handler(&engine, plugins::HEADER_BOMB, loose);
    assert_eq!(code(&invoke(&mut bomb, &keyed("hostile.header.bomb", "count"))), "ok");
    assert_eq!(code(&invoke(&mut bomb, &keyed("hostile.header.bomb", "bytes"))), "ok");
}

#[test]
fn a_huge_reject_reason_and_a_long_name_are_cut_and_escaped() {
    let engine = engine();
    let plugin = load(&engine, plugins::HUGE_REASON);
    let name = plugin.info().name();
    assert!(name.starts_with("huge-reason\\nFORGED-LINE"), "{name}");
    assert!(name.len() <= MAX_NAME_BYTES + 64, "{} bytes", name.len());
    let mut reason = handler(&engine, plugins::HUGE_REASON, Limits::default());
    let inv = invoke(&mut reason, &keyed("hostile.reject.reason", "x"));
    assert_eq!(code(&inv), "handler_reject");
    let message = inv.result.unwrap_err().message();
    assert!(message.len() <= MAX_REASON_BYTES + 64, "{} bytes", message.len());
    assert!(!message.contains('\n'), "{message}");
    assert!(message.ends_with("bytes)"), "marked as cut: {message}");
}

/// A runtime in this process on `toml`, with `events` published and
/// handled.
fn run(toml: &str, events: Vec<weir_abi::Event>) -> (tempfile::TempDir, Runtime) {
    let dir = tempfile::tempdir().unwrap();
    let rt = Runtime::start(&config(dir.path(), toml)).unwrap();
    rt.publish_blocking(events).unwrap();
    assert!(rt.wait_idle(Duration::from_secs(60)));
    (dir, rt)
}

#[test]
fn a_plugin_cannot_emit_the_hosts_reserved_headers() {
    let toml = r#"
[[pipelines]]
name = "forge"
topics = ["hostile.header.forge"]
[[pipelines.handlers]]
name = "h"
plugin = "{HEADER_BOMB}"
retry = { max_attempts = 1 }
"#;
    let (_dir, rt) = run(toml, vec![keyed("hostile.header.forge", "reserved")]);
    let dlq = rt.dlq(&DlqFilter::default()).unwrap();
    assert_eq!(dlq.len(), 1, "{dlq:?}");
    assert_eq!(dlq[0].code, "bad_output");
    assert!(dlq[0].message.contains("which only the host may set"), "{}", dlq[0].message);
    let log = rt.store().read_log(0, usize::MAX).unwrap();
    assert!(log.iter().all(|(_, e)| e.topic != "adversarial.headers.forged"), "the forged event reached the log");
    rt.shutdown().unwrap();
}

#[test]
fn a_plugin_cannot_emit_onto_the_saga_coordinators_topic_domain() {
    // The filter re-emits what passes on the topic its configuration names:
    // here one of the host's domain, as a plugin forging a coordinator's
    // timer, admin action or failure alert would.
    let toml = r#"
[[pipelines]]
name = "forge"
topics = ["hostile.saga.forge"]
[[pipelines.handlers]]
name = "h"
plugin = "{FILTER}"
config = { min_total_cents = 0, output_topic = "weir-saga.x.y" }
retry = { max_attempts = 1 }
"#;
    let order = weir_tests::event(r#"{"topic":"hostile.saga.forge","key":"k","payload":{"total_cents":1}}"#);
    let (_dir, rt) = run(toml, vec![order]);
    let dlq = rt.dlq(&DlqFilter::default()).unwrap();
    assert_eq!(dlq.len(), 1, "{dlq:?}");
    assert_eq!(dlq[0].code, "bad_output");
    assert!(
        dlq[0].message.contains(
            "emit #0: topic \"weir-saga.x.y\" is in the domain `weir-saga`, which only the host's saga coordinators may use"
        ),
        "{}",
        dlq[0].message
    );
    let log = rt.store().read_log(0, usize::MAX).unwrap();
    assert_eq!(log.len(), 1, "only the input is in the log: {log:?}");
    assert!(log.iter().all(|(_, e)| !e.topic.starts_with("weir-saga.")), "the forged event reached the log");
    rt.shutdown().unwrap();
}

#[test]
fn a_failure_message_quoting_the_plugin_is_cut_before_it_is_stored() {
    let toml = r#"
[[pipelines]]
name = "topic"
topics = ["hostile.header.topic"]
[[pipelines.handlers]]
name = "h"
plugin = "{HEADER_BOMB}"
retry = { max_attempts = 2, initial_backoff = "1ms" }
"#;
    let (_dir, rt) = run(toml, vec![keyed("hostile.header.topic", "topic")]);
    let dlq = rt.dlq(&DlqFilter::default()).unwrap();
    assert_eq!(dlq.len(), 1, "{dlq:?}");
    assert_eq!(dlq[0].code, "bad_output");
    assert!(dlq[0].message.contains("invalid topic"), "{}", &dlq[0].message[..200.min(dlq[0].message.len())]);
    assert!(dlq[0].message.len() <= 2048 + 64, "{} bytes stored", dlq[0].message.len());
    assert!(!dlq[0].message.contains('\n'));
    rt.shutdown().unwrap();
}

#[test]
fn a_stored_reject_reason_is_cut() {
    let toml = r#"
[[pipelines]]
name = "reason"
topics = ["hostile.reject.reason"]
[[pipelines.handlers]]
name = "h"
plugin = "{HUGE_REASON}"
"#;
    let events = (0..3).map(|i| keyed("hostile.reject.reason", &format!("k{i}"))).collect();
    let (_dir, rt) = run(toml, events);
    let dlq = rt.dlq(&DlqFilter::default()).unwrap();
    assert_eq!(dlq.len(), 3);
    for entry in &dlq {
        assert_eq!(entry.code, "handler_reject");
        assert!(entry.message.len() <= MAX_REASON_BYTES + 64, "{} bytes stored", entry.message.len());
        assert!(entry.plugin.len() <= MAX_NAME_BYTES + 64, "{} bytes of name stored", entry.plugin.len());
    }
    rt.shutdown().unwrap();
}

#[test]
fn large_outputs_are_handed_to_the_writer_in_bounded_batches() {
    // 24 events of 4 MiB output each: handled, all of it in the log. The
    // worker hands its batch over every 8 MiB (delivery/stage.rs); the
    // memory bound itself is checked on the real binary below.
    let toml = r#"
[[pipelines]]
name = "output"
topics = ["hostile.output.flood"]
[[pipelines.handlers]]
name = "h"
plugin = "{OUTPUT_FLOOD}"
"#;
    let events = (0..24).map(|i| keyed("hostile.output.flood", &format!("k{i}"))).collect();
    let (_dir, rt) = run(toml, events);
    let counters = rt.counters("output/h").unwrap();
    assert_eq!(counters.handled, 24);
    let emitted = rt.store().read_log(0, usize::MAX).unwrap();
    assert_eq!(emitted.iter().filter(|(_, e)| e.topic == "adversarial.output.flood").count(), 24 * 4);
    rt.shutdown().unwrap();
}

/// `VmRSS` or `VmHWM` of a process, in bytes.
fn memory_of(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with(field)).unwrap_or_else(|| panic!("no {field} in {status}"));
    let kib: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kib * 1024
}

/// The value of a sample of `/metrics` text.
fn metric(text: &str, sample: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(sample).and_then(|rest| rest.trim().parse::<f64>().ok()))
        .map_or(0, |v| v as u64)
}

/// The bound on the resident memory of `weir run` below: its baseline, four
/// plugin instances of up to 64 MiB of linear memory each, the store's page
/// cache for the ~100 MiB written, and the batches in flight. Without the
/// fixes the header bomb alone holds ~60 MB per event (3.5 GB for 64), the
/// reject reasons 4 MiB each, and one log flood tens of millions of lines.
const RSS_BOUND: u64 = 640 << 20;

#[test]
fn weir_run_survives_every_hostile_plugin_with_bounded_memory() {
    let toml = r#"
[[pipelines]]
name = "flood"
topics = ["hostile.log.flood"]
[[pipelines.handlers]]
name = "h"
plugin = "{LOG_FLOOD}"
limits = { deadline = "300ms" }
retry = { max_attempts = 1 }

[[pipelines]]
name = "bomb"
topics = ["hostile.header.bomb"]
[[pipelines.handlers]]
name = "h"
plugin = "{HEADER_BOMB}"
retry = { max_attempts = 1 }

[[pipelines]]
name = "output"
topics = ["hostile.output.flood"]
[[pipelines.handlers]]
name = "h"
plugin = "{OUTPUT_FLOOD}"

[[pipelines]]
name = "reason"
topics = ["hostile.reject.reason"]
[[pipelines.handlers]]
name = "h"
plugin = "{HUGE_REASON}"
"#;
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), toml);
    let pid = server.pid();
    let counts = [
        ("hostile.log.flood", 6),
        ("hostile.header.bomb", 64),
        ("hostile.output.flood", 24),
        ("hostile.reject.reason", 64),
    ];
    for (topic, n) in counts {
        let events: Vec<_> = (0..n).map(|i| json!({ "topic": topic, "key": format!("k{i}"), "payload": {} })).collect();
        let (status, body) = server.post("/v1/events", &json!(events));
        assert!(status == 200 || status == 201 || status == 202, "{status} {body}");
    }

    // While they run: /health answers every time, and the memory is read.
    let deadline = Instant::now() + Duration::from_secs(180);
    let mut peak_sampled = 0;
    loop {
        let (health, _) = server.get("/health");
        assert_eq!(health, 200, "/health stopped answering");
        peak_sampled = peak_sampled.max(memory_of(pid, "VmRSS:"));
        let (_, status) = server.get("/v1/status");
        let done = status["subscriptions"]
            .as_array()
            .is_some_and(|subs| subs.len() == 4 && subs.iter().all(|s| s["lag"] == 0 && s["parked"] == 0));
        if done {
            break;
        }
        assert!(Instant::now() < deadline, "not done in time: {status}\n{}", server.stderr());
        std::thread::sleep(Duration::from_millis(50));
    }
    let peak = memory_of(pid, "VmHWM:").max(peak_sampled);
    eprintln!("weir run peaked at {} MiB resident (bound {} MiB)", peak >> 20, RSS_BOUND >> 20);
    assert!(
        peak < RSS_BOUND,
        "weir run peaked at {} MiB resident, over the bound of {} MiB",
        peak >> 20,
        RSS_BOUND >> 20
    );

    // Each failure is classified, and counted where operators look.
    let (_, metrics) = server.get("/metrics");
    let metrics = metrics.as_str().unwrap().to_owned();
    let failures = |sub: &str, code: &str| {
        metric(&metrics, &format!("weir_subscription_failures_total{{subscription=\"{sub}\",code=\"{code}\"}}"))
    };
    assert_eq!(failures("flood/h", "timeout"), 6, "{metrics}");
    assert!(
        metric(&metrics, "weir_plugin_log_lines_total{subscription=\"flood/h\",outcome=\"dropped\"}") > 10_000,
        "{metrics}"
    );
    assert_eq!(failures("bomb/h", "bad_output"), 64, "{metrics}");
    assert_eq!(failures("reason/h", "handler_reject"), 64, "{metrics}");
    let (_, status) = server.get("/v1/status");
    let output = status["subscriptions"].as_array().unwrap().iter().find(|s| s["name"] == "output/h").unwrap();
    assert_eq!(output["stats"]["handled"], 24, "{status}");
    let stderr = server.stderr();
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(!stderr.contains("\n2026-01-01T00:00:00Z  INFO weir: all good"), "a reason forged a log line");
}

/// A module with one function whose body is `size` bytes: `nop`s, then
/// `end`.
fn module_with_function_body(size: usize) -> Vec<u8> {
    fn leb(mut n: usize, out: &mut Vec<u8>) {
        loop {
            let byte = (n & 0x7f) as u8;
            n >>= 7;
            if n == 0 {
                out.push(byte);
                return;
            }
            out.push(byte | 0x80);
        }
    }
    let mut body = vec![0x00]; // no locals
    body.resize(size - 1, 0x01); // nop
    body.push(0x0b); // end
    let mut entry = Vec::new();
    leb(body.len(), &mut entry);
    entry.extend(&body);
    let mut code = vec![0x01]; // one body
    code.extend(entry);
    let mut module = b"\0asm\x01\0\0\0".to_vec();
    module.extend([0x01, 0x04, 0x01, 0x60, 0x00, 0x00]); // type: func() -> ()
    module.extend([0x03, 0x02, 0x01, 0x00]); // function 0: type 0
    module.push(0x0a);
    leb(code.len(), &mut module);
    module.extend(code);
    module
}

#[test]
fn a_function_over_the_body_limit_is_refused_before_compiling() {
    let engine = engine();
    let big = module_with_function_body(DEFAULT_MAX_FUNCTION_BYTES + 1);
    let err = engine.load(&big).unwrap_err();
    assert_eq!(err.code(), "function_too_large", "{err}");
    assert!(err.to_string().contains(&format!("over the limit of {DEFAULT_MAX_FUNCTION_BYTES} bytes")), "{err}");
    // Within the limit it compiles (and then fails on what it lacks).
    let small = module_with_function_body(1000);
    assert_eq!(engine.load(&small).unwrap_err().code(), "bad_export");
    // The limit is the engine's.
    let strict = Engine::new(EngineConfig { max_function_bytes: 500, ..EngineConfig::default() }).unwrap();
    assert_eq!(strict.load(&small).unwrap_err().code(), "function_too_large");
    assert_eq!(weir_runtime::inspect_imports_exports(&strict, &small).unwrap_err().code(), "function_too_large");
}

#[test]
fn a_module_over_the_size_limit_is_refused_before_compiling() {
    let strict = Engine::new(EngineConfig { max_module_bytes: 10_000, ..EngineConfig::default() }).unwrap();
    let err = strict.load_file(plugins::ORDER_VALIDATOR.as_ref()).unwrap_err();
    assert_eq!(err.code(), "module_too_large", "{err}");
    // Every example plugin fits the defaults.
    let engine = engine();
    for path in [plugins::ORDER_VALIDATOR, plugins::ENRICHER, plugins::AUDIT_LOGGER, plugins::FILTER] {
        load(&engine, path);
    }
}

#[test]
fn proposals_the_abi_does_not_need_are_refused() {
    // func() -> () whose body is `return_call 0` (tail calls).
    let tail_call = b"\0asm\x01\0\0\0\x01\x04\x01\x60\x00\x00\x03\x02\x01\x00\x0a\x06\x01\x04\x00\x12\x00\x0b";
    let err = engine().load(tail_call).unwrap_err();
    assert_eq!(err.code(), "invalid_module", "{err}");
    assert!(err.to_string().contains("tail"), "{err}");
    // A shared memory (threads).
    let shared = b"\0asm\x01\0\0\0\x05\x04\x01\x03\x01\x01";
    let err = engine().load(shared).unwrap_err();
    assert_eq!(err.code(), "invalid_module", "{err}");
}

#[test]
fn the_pool_is_sized_from_the_subscriptions() {
    assert_eq!(EngineConfig::pool_instances_for(0), weir_runtime::POOL_HEADROOM);
    assert_eq!(
        EngineConfig::pool_instances_for(10),
        10 * weir_runtime::POOL_INSTANCES_PER_SUBSCRIPTION + weir_runtime::POOL_HEADROOM
    );
    assert_eq!(EngineConfig::pool_instances_for(usize::MAX), u32::MAX);
}

/// The bound on `weir run` handling 48 events of 4 MiB output each: about
/// 425 MiB with the batch handed over every 8 MiB, most of it the store's
/// page cache, which grows with what is written (about twice the bytes, up
/// to redb's default cache of 1 GiB). A worker that held its whole read
/// batch peaked at about 760 MiB.
const OUTPUT_RSS_BOUND: u64 = 576 << 20;

#[test]
fn weir_run_hands_large_outputs_over_in_bounded_batches() {
    let toml = r#"
[[pipelines]]
name = "output"
topics = ["hostile.output.flood"]
[[pipelines.handlers]]
name = "h"
plugin = "{OUTPUT_FLOOD}"
"#;
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), toml);
    let events: Vec<_> =
        (0..48).map(|i| json!({ "topic": "hostile.output.flood", "key": format!("k{i}"), "payload": {} })).collect();
    let (status, body) = server.post("/v1/events", &json!(events));
    assert!(status == 200 || status == 201 || status == 202, "{status} {body}");
    assert!(server.wait_idle(Duration::from_secs(180)), "{}", server.stderr());
    let peak = memory_of(server.pid(), "VmHWM:");
    eprintln!("weir run peaked at {} MiB resident (bound {} MiB)", peak >> 20, OUTPUT_RSS_BOUND >> 20);
    assert!(peak < OUTPUT_RSS_BOUND, "weir run peaked at {} MiB resident", peak >> 20);
    let (_, status) = server.get("/v1/status");
    assert_eq!(status["subscriptions"][0]["stats"]["handled"], 48, "{status}");
}

#[test]
fn the_new_caps_are_handler_limits_in_weir_toml() {
    let dir = tempfile::tempdir().unwrap();
    let toml = r#"
[[pipelines]]
name = "p"
topics = ["a.b.c"]
[[pipelines.handlers]]
name = "h"
plugin = "{FILTER}"
limits = { max_log_lines = 7, max_headers_per_emit = 3, max_header_bytes_per_emit = 99 }
[[pipelines.handlers]]
name = "d"
plugin = "{FILTER}"
"#;
    let config = config(dir.path(), toml);
    let limits = &config.pipelines[0].handlers[0].limits;
    assert_eq!((limits.max_log_lines(), limits.max_headers_per_emit(), limits.max_header_bytes_per_emit()), (7, 3, 99));
    let defaults = &config.pipelines[0].handlers[1].limits;
    assert_eq!(
        (defaults.max_log_lines(), defaults.max_headers_per_emit(), defaults.max_header_bytes_per_emit()),
        (
            DEFAULT_MAX_LOG_LINES,
            weir_runtime::DEFAULT_MAX_HEADERS_PER_EMIT,
            weir_runtime::DEFAULT_MAX_HEADER_BYTES_PER_EMIT
        )
    );
}
