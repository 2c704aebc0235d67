//! Durable timers (issue 15 item 1): a handler schedules an event for
//! later; it is stored with the outcome that scheduled it, fires once after
//! its time (also after a restart), can be cancelled by key, and is bounded
//! per invocation and per subscription.
//!
//! The in-process tests drive a native handler that fills
//! `Attempt::timers`, as the saga coordinator does.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use weir_abi::{DeliveryRef, Emit, Event};
use weir_runtime::{Attempt, DlqFilter, Failure, Invoke, Runtime, TimerOp};
use weir_tests::{config, event};

const IDLE: Duration = Duration::from_secs(30);
const SUB: &str = "tasks/reminders";

/// Schedules a reminder on `tasks.task.created` (`in_ms` after the event's
/// own time, `timers` of them, keys `<key>` or `<key>-<i>`; `fail` makes the
/// attempt fail after asking) and cancels it on `tasks.task.done`.
struct Reminders;

impl Invoke for Reminders {
    fn invoke(&mut self, delivery: DeliveryRef<'_>) -> Attempt {
        let e = delivery.event;
        let p: Value = serde_json::from_slice(&e.payload).unwrap_or_default();
        let key = e.key.clone().unwrap_or_default();
        let mut attempt = Attempt::new(Ok(Vec::new()));
        match e.topic.as_str() {
            "tasks.task.created" => {
                // The time comes from the event, never from a clock.
                let at = (e.time / 1_000_000) as u64 + p["in_ms"].as_u64().unwrap_or(0);
                let n = p["timers"].as_u64().unwrap_or(1);
                for i in 0..n {
                    let key = if n == 1 { key.clone() } else { format!("{key}-{i}") };
                    let emit = Emit {
                        topic: "tasks.task.reminder".into(),
                        key: Some(key.clone()),
                        schema_version: 1,
                        content_type: "application/json".into(),
                        headers: Vec::new(),
                        idempotency_key: None,
                        correlation_id: None,
                        causation_id: None,
                        payload: json!({ "task": key }).to_string().into_bytes(),
                    };
                    attempt.timers.push(TimerOp::Schedule { key, fire_at_ms: at, emit });
                }
                if p["fail"].as_bool() == Some(true) {
                    attempt.result = Err(Failure::reject("asked to fail"));
                }
            }
            "tasks.task.done" => attempt.timers.push(TimerOp::Cancel { key }),
            _ => {}
        }
        attempt
    }

    fn name(&self) -> String {
        "reminders".into()
    }

    fn version(&self) -> String {
        "native-reminders-1".into()
    }
}

fn toml(limits: &str) -> String {
    format!(
        "[[pipelines]]\nname = \"tasks\"\ntopics = [\"tasks.task.created\", \"tasks.task.done\"]\n\
         [[pipelines.handlers]]\nname = \"reminders\"\nplugin = \"{{COUNTER}}\"\n{limits}"
    )
}

fn start(dir: &std::path::Path, limits: &str) -> Runtime {
    let native: HashMap<String, Box<dyn Invoke>> = HashMap::from([(SUB.to_owned(), Box::new(Reminders) as _)]);
    Runtime::start_with_native(&config(dir, &toml(limits)), None, native).unwrap()
}

fn task(topic: &str, key: &str, payload: Value) -> Event {
    event(&json!({ "topic": topic, "key": key, "payload": payload }).to_string())
}

fn reminders(rt: &Runtime) -> Vec<Event> {
    let log = rt.store().read_log(0, usize::MAX).unwrap();
    log.into_iter().map(|(_, e)| e).filter(|e| e.topic == "tasks.task.reminder").collect()
}

fn pending(rt: &Runtime) -> u64 {
    rt.timers_pending().unwrap().get(SUB).copied().unwrap_or(0)
}

/// Wait until `done` holds, or fail after `timeout`.
fn wait_for(timeout: Duration, what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn a_timer_fires_after_its_time_once_with_the_scheduling_event_as_cause() {
    let dir = tempfile::tempdir().unwrap();
    let rt = start(dir.path(), "");
    let created = task("tasks.task.created", "t-1", json!({ "in_ms": 700 }));
    let fire_at = (created.time / 1_000_000) as u64 + 700;
    rt.publish_blocking(vec![created.clone()]).unwrap();
    assert!(rt.wait_idle(IDLE));
    assert_eq!(pending(&rt), 1);
    let listed = rt.timers(SUB, None, 10).unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!((listed[0].key.as_str(), listed[0].fire_at_ms), ("t-1", fire_at));
    wait_for(Duration::from_secs(10), "the reminder", || !reminders(&rt).is_empty());
    assert!(weir_runtime::now_nanos() / 1_000_000 >= fire_at as i64, "not before its time");
    let fired = reminders(&rt);
    assert_eq!(fired.len(), 1);
    let r = &fired[0];
    assert_eq!(r.causation_id, Some(created.id));
    assert_eq!(r.correlation_id, Some(created.id));
    assert_eq!(r.source, format!("weir://{SUB}"));
    assert!(r.time / 1_000_000 >= fire_at as i64, "its time is when it fired");
    assert_eq!(r.id.timestamp_ms(), fire_at, "its id carries the fire time");
    assert_eq!(pending(&rt), 0);
    assert!(rt.timers(SUB, None, 10).unwrap().is_empty());
    // Fired once: another timer due later fires too, and the first is still
    // there only once.
    rt.publish_blocking(vec![task("tasks.task.created", "t-2", json!({ "in_ms": 0 }))]).unwrap();
    wait_for(Duration::from_secs(10), "the second reminder", || reminders(&rt).len() == 2);
    assert_eq!(reminders(&rt).iter().filter(|e| e.key.as_deref() == Some("t-1")).count(), 1);
    rt.shutdown().unwrap();
}

#[test]
fn a_timer_is_cancelled_by_key_and_replaced_by_key() {
    let dir = tempfile::tempdir().unwrap();
    let rt = start(dir.path(), "");
    rt.publish_blocking(vec![
        task("tasks.task.created", "a", json!({ "in_ms": 3_600_000 })),
        task("tasks.task.created", "b", json!({ "in_ms": 3_600_000 })),
        // Replaces `b`'s timer: still one for `b`, due sooner.
        task("tasks.task.created", "b", json!({ "in_ms": 200 })),
        task("tasks.task.done", "a", json!({})),
    ])
    .unwrap();
    assert!(rt.wait_idle(IDLE));
    wait_for(Duration::from_secs(10), "b's reminder", || reminders(&rt).len() == 1);
    assert_eq!(reminders(&rt)[0].key.as_deref(), Some("b"));
    assert_eq!(pending(&rt), 0, "a was cancelled, b fired once");
    rt.shutdown().unwrap();
}

#[test]
fn a_failed_attempt_leaves_no_timer() {
    let dir = tempfile::tempdir().unwrap();
    let rt = start(dir.path(), "");
    rt.publish_blocking(vec![task("tasks.task.created", "f", json!({ "in_ms": 0, "fail": true }))]).unwrap();
    assert!(rt.wait_idle(IDLE));
    let dlq = rt.dlq(&DlqFilter { subscription: Some(SUB.into()), ..DlqFilter::default() }).unwrap();
    assert_eq!(dlq.len(), 1);
    assert_eq!(dlq[0].code, "handler_reject");
    assert_eq!(pending(&rt), 0);
    // A timer due at once would have fired by the time a later one does.
    rt.publish_blocking(vec![task("tasks.task.created", "ok", json!({ "in_ms": 0 }))]).unwrap();
    wait_for(Duration::from_secs(10), "the later reminder", || !reminders(&rt).is_empty());
    assert_eq!(reminders(&rt).iter().map(|e| e.key.clone().unwrap()).collect::<Vec<_>>(), ["ok"]);
    rt.shutdown().unwrap();
}

#[test]
fn more_timer_operations_than_an_invocation_may_ask_for_fail_it_for_good() {
    let dir = tempfile::tempdir().unwrap();
    let rt = start(dir.path(), "");
    let n = weir_runtime::DEFAULT_MAX_TIMERS_PER_INVOCATION as u64;
    rt.publish_blocking(vec![
        task("tasks.task.created", "many", json!({ "in_ms": 3_600_000, "timers": n + 1 })),
        task("tasks.task.created", "enough", json!({ "in_ms": 3_600_000, "timers": n })),
    ])
    .unwrap();
    assert!(rt.wait_idle(IDLE));
    let dlq = rt.dlq(&DlqFilter { subscription: Some(SUB.into()), ..DlqFilter::default() }).unwrap();
    assert_eq!(dlq.len(), 1);
    assert_eq!((dlq[0].code.as_str(), dlq[0].attempts), ("timer_limit", 1), "not retried");
    assert_eq!(dlq[0].event.key.as_deref(), Some("many"));
    assert_eq!(pending(&rt), n, "the one at the bound scheduled all of its timers");
    rt.shutdown().unwrap();
}

#[test]
fn a_subscription_holds_at_most_max_pending_timers() {
    let dir = tempfile::tempdir().unwrap();
    let rt = start(dir.path(), "[pipelines.handlers.limits]\nmax_pending_timers = 5\n");
    let far = json!({ "in_ms": 3_600_000 });
    // Three events of one batch, in flight together: 2 + 2 fit, the third
    // pair would make 6.
    rt.publish_blocking(vec![
        task("tasks.task.created", "a", json!({ "in_ms": 3_600_000, "timers": 2 })),
        task("tasks.task.created", "b", json!({ "in_ms": 3_600_000, "timers": 2 })),
        task("tasks.task.created", "c", json!({ "in_ms": 3_600_000, "timers": 2 })),
    ])
    .unwrap();
    assert!(rt.wait_idle(IDLE));
    assert_eq!(pending(&rt), 4);
    let dlq = rt.dlq(&DlqFilter { subscription: Some(SUB.into()), ..DlqFilter::default() }).unwrap();
    assert_eq!(
        dlq.iter().map(|d| (d.code.as_str(), d.event.key.as_deref())).collect::<Vec<_>>(),
        [("timer_limit", Some("c"))]
    );
    // One more fits; then replacing a pending timer still does, a new one not.
    rt.publish_blocking(vec![
        task("tasks.task.created", "d", far.clone()),
        task("tasks.task.created", "d", json!({ "in_ms": 7_200_000 })),
        task("tasks.task.created", "e", far),
    ])
    .unwrap();
    assert!(rt.wait_idle(IDLE));
    assert_eq!(pending(&rt), 5);
    let dlq = rt.dlq(&DlqFilter { subscription: Some(SUB.into()), ..DlqFilter::default() }).unwrap();
    assert_eq!(dlq.len(), 2);
    assert_eq!(dlq[1].event.key.as_deref(), Some("e"));
    assert_eq!(dlq[1].code, "timer_limit");
    // Cancelling makes room again.
    rt.publish_blocking(vec![
        task("tasks.task.done", "d", json!({})),
        task("tasks.task.created", "f", json!({ "in_ms": 3_600_000 })),
    ])
    .unwrap();
    assert!(rt.wait_idle(IDLE));
    assert_eq!(pending(&rt), 5);
    assert_eq!(rt.dlq(&DlqFilter { subscription: Some(SUB.into()), ..DlqFilter::default() }).unwrap().len(), 2);
    rt.shutdown().unwrap();
}

#[test]
fn a_timer_due_while_the_runtime_was_down_fires_at_the_next_start() {
    let dir = tempfile::tempdir().unwrap();
    let rt = start(dir.path(), "");
    let later = task("tasks.task.created", "later", json!({ "in_ms": 300 }));
    let fire_at = (later.time / 1_000_000) + 300;
    rt.publish_blocking(vec![later]).unwrap();
    assert!(rt.wait_idle(IDLE));
    assert_eq!(pending(&rt), 1);
    rt.shutdown().unwrap();
    // Down past its time.
    wait_for(Duration::from_secs(10), "the fire time", || weir_runtime::now_nanos() / 1_000_000 > fire_at);
    let rt = start(dir.path(), "");
    wait_for(Duration::from_secs(10), "the overdue reminder", || !reminders(&rt).is_empty());
    assert_eq!(reminders(&rt).len(), 1);
    assert_eq!(pending(&rt), 0);
    rt.shutdown().unwrap();
}

// ------------------------------------------------ the Wasm handler, the SDK

const REMINDER: &str = "[[pipelines]]\nname = \"tasks\"\ntopics = [\"tasks.task.created\", \"tasks.task.done\"]\n\
                        [[pipelines.handlers]]\nname = \"reminder\"\nplugin = \"{REMINDER}\"\n";
const WASM_SUB: &str = "tasks/reminder";

#[test]
fn a_plugin_without_timer_imports_loads_unchanged_and_the_reminder_declares_them() {
    let engine = weir_tests::engine();
    let counter = weir_tests::load(&engine, weir_tests::plugins::COUNTER);
    assert!(counter.info().imports.iter().all(|i| !i.name.starts_with("timer_")), "an ABI 1 plugin of before");
    let reminder = weir_tests::load(&engine, weir_tests::plugins::REMINDER);
    let timers: Vec<(&str, &str)> = reminder
        .info()
        .imports
        .iter()
        .filter(|i| i.module == "weir" && i.name.starts_with("timer_"))
        .map(|i| (i.name.as_str(), i.ty.as_str()))
        .collect();
    assert!(timers.contains(&("timer_schedule", "func(i32, i32, i64, i32, i32)")), "{timers:?}");
    assert!(timers.contains(&("timer_cancel", "func(i32, i32)")), "{timers:?}");
    // A plugin of before runs as before, with no timer asked for.
    let mut handler = weir_tests::handler(&engine, weir_tests::plugins::AUDIT_LOGGER, weir_runtime::Limits::default());
    let invocation = weir_tests::invoke(&mut handler, &weir_tests::keyed("t.e.x", "a"));
    assert_eq!(weir_tests::code(&invocation), "ok");
    assert!(invocation.timers.is_empty());
}

#[test]
fn the_engine_hands_back_a_wasm_handlers_timers_and_bounds_them() {
    let engine = weir_tests::engine();
    let mut handler = weir_tests::handler(&engine, weir_tests::plugins::REMINDER, weir_runtime::Limits::default());
    let created = task("tasks.task.created", "t-1", json!({ "remind_in_ms": 1000 }));
    let invocation = weir_tests::invoke(&mut handler, &created);
    assert_eq!(weir_tests::code(&invocation), "ok");
    let [weir_runtime::TimerCall::Schedule { key, fire_at_ms, emit }] = invocation.timers.as_slice() else {
        panic!("{:?}", invocation.timers)
    };
    assert_eq!((key.as_str(), *fire_at_ms), ("t-1", (created.time / 1_000_000) as u64 + 1000));
    assert_eq!((emit.topic.as_str(), emit.causation_id), ("tasks.task.reminder", Some(created.id)));
    let done = weir_tests::invoke(&mut handler, &task("tasks.task.done", "t-1", json!({})));
    assert_eq!(done.timers, [weir_runtime::TimerCall::Cancel { key: "t-1".into() }], "none left from the last event");
    // More operations than allowed trap in the host at the first one over.
    let limits = weir_runtime::Limits::builder().max_timers_per_invocation(3).build();
    let mut bounded = weir_tests::handler(&engine, weir_tests::plugins::REMINDER, limits);
    let burst = weir_tests::invoke(&mut bounded, &task("tasks.task.created", "b", json!({ "burst": 4 })));
    assert_eq!(weir_tests::code(&burst), "timer_limit");
    let fits = weir_tests::invoke(&mut bounded, &task("tasks.task.created", "b", json!({ "burst": 3 })));
    assert_eq!((weir_tests::code(&fits), fits.timers.len()), ("ok", 3));
    // The scheduled events of one invocation share the output budget
    // (`max_output_bytes`): a burst of 40 reminders (well under the 64
    // operations allowed) is over 2 KiB of them and fails at the first
    // one over; 3 fit.
    let limits = weir_runtime::Limits::builder().max_output_bytes(2048).build();
    let mut small = weir_tests::handler(&engine, weir_tests::plugins::REMINDER, limits);
    let heavy = weir_tests::invoke(&mut small, &task("tasks.task.created", "h", json!({ "burst": 40 })));
    assert_eq!(weir_tests::code(&heavy), "timer_limit");
    let reason = heavy.result.as_ref().unwrap_err().to_string();
    assert!(reason.contains("bytes of scheduled events in one invocation, over max_output_bytes = 2048"), "{reason}");
    let light = weir_tests::invoke(&mut small, &task("tasks.task.created", "h", json!({ "burst": 3 })));
    assert_eq!((weir_tests::code(&light), light.timers.len()), ("ok", 3));
    // The engine gives the timers of a failed invocation back too; the
    // worker drops them (`a_failed_wasm_attempt_…` below).
    let rejected = weir_tests::invoke(&mut handler, &task("tasks.task.created", "reject-1", json!({})));
    assert_eq!(weir_tests::code(&rejected), "handler_reject");
}

#[test]
fn a_wasm_handlers_over_the_bound_or_failed_attempt_leaves_no_timer() {
    let dir = tempfile::tempdir().unwrap();
    let rt = Runtime::start(&config(dir.path(), REMINDER)).unwrap();
    let n = weir_runtime::DEFAULT_MAX_TIMERS_PER_INVOCATION;
    rt.publish_blocking(vec![
        task("tasks.task.created", "many", json!({ "burst": n + 1, "remind_in_ms": 3_600_000 })),
        task("tasks.task.created", "reject-1", json!({ "remind_in_ms": 0 })),
        task("tasks.task.created", "kept", json!({ "remind_in_ms": 3_600_000 })),
    ])
    .unwrap();
    assert!(rt.wait_idle(IDLE));
    let dlq = rt.dlq(&DlqFilter { subscription: Some(WASM_SUB.into()), ..DlqFilter::default() }).unwrap();
    let codes: Vec<(&str, Option<&str>, u32)> =
        dlq.iter().map(|d| (d.code.as_str(), d.event.key.as_deref(), d.attempts)).collect();
    assert_eq!(codes, [("timer_limit", Some("many"), 1), ("handler_reject", Some("reject-1"), 1)]);
    let keys: Vec<String> = rt.timers(WASM_SUB, None, 100).unwrap().into_iter().map(|t| t.key).collect();
    assert_eq!(keys, ["kept"]);
    rt.shutdown().unwrap();
}

// ------------------------------------------------------ the real binary

fn reminders_over_http(server: &weir_tests::Server) -> Vec<String> {
    let (status, page) = server.get("/v1/log?topics=tasks.task.reminder&limit=1000");
    assert_eq!(status, 200, "{page}");
    page["events"].as_array().unwrap().iter().map(|e| e["event"]["key"].as_str().unwrap().to_owned()).collect()
}

fn timers_over_http(server: &weir_tests::Server) -> Value {
    let (status, page) = server.get(&format!("/v1/subscriptions/{WASM_SUB}/timers"));
    assert_eq!(status, 200, "{page}");
    page
}

fn post(server: &weir_tests::Server, events: Value) {
    let (status, body) = server.post("/v1/events", &events);
    assert_eq!(status, 200, "{body}");
}

#[test]
fn a_timer_fires_after_a_restart_of_the_real_binary_and_is_visible_until_then() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = weir_tests::Server::start(dir.path(), REMINDER);
    post(
        &server,
        json!([
            { "topic": "tasks.task.created", "key": "t-1", "payload": { "remind_in_ms": 1500 } },
            { "topic": "tasks.task.created", "key": "t-2", "payload": { "remind_in_ms": 1500 } },
            { "topic": "tasks.task.done", "key": "t-2", "payload": {} },
        ]),
    );
    assert!(server.wait_idle(IDLE), "{}", server.stderr());
    let page = timers_over_http(&server);
    assert_eq!(page["pending"], 1, "{page}");
    assert_eq!(page["timers"][0]["key"], "t-1");
    assert_eq!(page["timers"][0]["topic"], "tasks.task.reminder");
    let fire_at = page["timers"][0]["fire_at_ms"].as_u64().unwrap();
    let (_, metrics) = server.get("/metrics");
    let metrics = metrics.as_str().unwrap().to_owned();
    assert!(metrics.contains(&format!("weir_timers_pending{{subscription=\"{WASM_SUB}\"}} 1")), "{metrics}");
    let (_, status) = server.get("/v1/status");
    assert_eq!(status["subscriptions"][0]["timers_pending"], 1, "{status}");
    assert!(reminders_over_http(&server).is_empty(), "not before its time");

    assert!(server.terminate().success(), "{}", server.stderr());
    wait_for(Duration::from_secs(10), "the fire time", || weir_runtime::now_nanos() / 1_000_000 > fire_at as i64);
    server.restart();
    wait_for(Duration::from_secs(20), "the reminder", || !reminders_over_http(&server).is_empty());
    assert_eq!(reminders_over_http(&server), ["t-1"], "fired once, t-2's was cancelled");
    assert_eq!(timers_over_http(&server)["pending"], 0);
    let (_, metrics) = server.get("/metrics");
    assert!(metrics.as_str().unwrap().contains(&format!("weir_timers_pending{{subscription=\"{WASM_SUB}\"}} 0")));
    assert!(server.terminate().success(), "{}", server.stderr());
}

#[test]
fn timers_fire_exactly_once_through_kill_9_between_commit_and_fire() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = weir_tests::Server::start(dir.path(), REMINDER);
    // 10 × 60 timers, all due in 2 s: more than one firing transaction
    // (`FIRE_BATCH`, 512) takes, so a kill can fall between two.
    let tasks: Vec<Value> = (0..10)
        .map(|i| json!({ "topic": "tasks.task.created", "key": format!("t{i}"), "payload": { "remind_in_ms": 2000, "burst": 60 } }))
        .collect();
    post(&server, Value::Array(tasks));
    // Committed: the timers are in the store...
    wait_for(Duration::from_secs(20), "the timers' commit", || timers_over_http(&server)["pending"] == 600);
    // ...and the process dies before any fires.
    server.kill9();
    server.restart();
    // Again around the fire time, until every one has fired.
    let mut kills = 1;
    while reminders_over_http(&server).len() < 600 && kills < 5 {
        std::thread::sleep(Duration::from_millis(300));
        server.kill9();
        server.restart();
        kills += 1;
    }
    wait_for(Duration::from_secs(30), "every reminder", || reminders_over_http(&server).len() >= 600);
    server.kill9();
    server.restart();
    let mut fired = reminders_over_http(&server);
    assert_eq!(fired.len(), 600, "no timer fired twice");
    fired.sort();
    fired.dedup();
    assert_eq!(fired.len(), 600, "every timer fired");
    assert_eq!(timers_over_http(&server)["pending"], 0);
    assert!(server.terminate().success(), "{}", server.stderr());
}

/// The sources of the reminders in the log (`weir://<subscription>`).
fn reminder_sources(server: &weir_tests::Server) -> Vec<String> {
    let (status, page) = server.get("/v1/log?topics=tasks.task.reminder&limit=1000");
    assert_eq!(status, 200, "{page}");
    page["events"].as_array().unwrap().iter().map(|e| e["event"]["source"].as_str().unwrap().to_owned()).collect()
}

fn timers_pending_gauge(server: &weir_tests::Server, subscription: &str) -> Option<String> {
    let (_, metrics) = server.get("/metrics");
    let prefix = format!("weir_timers_pending{{subscription=\"{subscription}\"}} ");
    metrics.as_str().unwrap().lines().find_map(|l| l.strip_prefix(&prefix).map(str::to_owned))
}

#[test]
fn a_deleted_orphans_timers_never_fire_nor_count_for_a_subscription_of_its_name() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = weir_tests::Server::start(dir.path(), REMINDER);
    post(&server, json!({ "topic": "tasks.task.created", "key": "t-1", "payload": { "remind_in_ms": 10_000 } }));
    assert!(server.wait_idle(IDLE), "{}", server.stderr());
    let page = timers_over_http(&server);
    assert_eq!(page["pending"], 1, "{page}");
    let fire_at = page["timers"][0]["fire_at_ms"].as_u64().unwrap() as i64;
    assert!(server.terminate().success(), "{}", server.stderr());

    // Renamed: `tasks/reminder` is an orphan with its timer; `later/reminder`
    // handles the same event from the beginning and schedules the same
    // reminder for the same time: it fires, the orphan's must not.
    let later = REMINDER.replace("name = \"tasks\"", "name = \"later\"");
    let mut server = weir_tests::Server::start(dir.path(), &later);
    assert!(server.wait_idle(IDLE), "{}", server.stderr());
    let (_, list) = server.get("/v1/subscriptions");
    let orphan = list["subscriptions"].as_array().unwrap().iter().find(|s| s["name"] == WASM_SUB).cloned();
    assert_eq!(
        orphan.map(|o| (o["configured"].clone(), o["timers"].clone())),
        Some((json!(false), json!(1))),
        "{list}"
    );
    let (status, body) = delete(&server, &format!("/v1/subscriptions/{WASM_SUB}"));
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["deleted"]["timers"], 1, "{body}");
    assert_eq!(timers_over_http(&server)["pending"], 0);
    assert!(server.terminate().success(), "{}", server.stderr());

    // Added back under its old name (from the end: it handles nothing
    // again): a new subscription, with none of the deleted one's timers.
    let both = format!("{later}{}from = \"end\"\n", REMINDER);
    let mut server = weir_tests::Server::start(dir.path(), &both);
    assert!(server.wait_idle(IDLE), "{}", server.stderr());
    assert_eq!(timers_over_http(&server)["pending"], 0);
    assert_eq!(timers_pending_gauge(&server, WASM_SUB).as_deref(), Some("0"));
    assert_eq!(timers_pending_gauge(&server, "later/reminder").as_deref(), Some("1"));
    assert!(weir_runtime::now_nanos() / 1_000_000 < fire_at, "the checks above ran before the fire time");
    wait_for(Duration::from_secs(30), "later/reminder's reminder", || !reminder_sources(&server).is_empty());
    assert_eq!(reminder_sources(&server), ["weir://later/reminder"], "the deleted subscription's timer never fired");
    assert_eq!(timers_pending_gauge(&server, WASM_SUB).as_deref(), Some("0"));
    assert!(server.terminate().success(), "{}", server.stderr());
}

/// DELETE `path` (an admin request: JSON content type) on the server.
fn delete(server: &weir_tests::Server, path: &str) -> (u16, Value) {
    let agent = ureq::Agent::new_with_config(ureq::Agent::config_builder().http_status_as_error(false).build());
    let mut response =
        agent.delete(format!("{}{path}", server.url)).header("content-type", "application/json").call().unwrap();
    let status = response.status().as_u16();
    let text = response.body_mut().read_to_string().unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// Asks for whatever timer operation its event's payload names, as a
/// hostile native handler could.
struct Hostile;

impl Invoke for Hostile {
    fn invoke(&mut self, delivery: DeliveryRef<'_>) -> Attempt {
        let p: Value = serde_json::from_slice(&delivery.event.payload).unwrap_or_default();
        let mut attempt = Attempt::new(Ok(Vec::new()));
        let emit = Emit {
            topic: p["topic"].as_str().unwrap_or("tasks.task.reminder").into(),
            key: None,
            schema_version: 1,
            content_type: String::new(),
            headers: Vec::new(),
            idempotency_key: None,
            correlation_id: None,
            causation_id: None,
            payload: vec![0; p["payload_bytes"].as_u64().unwrap_or(0) as usize],
        };
        let key = "k".repeat(p["key_bytes"].as_u64().unwrap_or(1) as usize);
        attempt.timers.push(TimerOp::Schedule { key, fire_at_ms: u64::MAX, emit });
        attempt
    }

    fn name(&self) -> String {
        "hostile".into()
    }

    fn version(&self) -> String {
        "native-hostile-1".into()
    }
}

#[test]
fn a_timer_with_a_bad_key_or_event_is_refused_like_a_bad_emit() {
    let dir = tempfile::tempdir().unwrap();
    let toml = toml("[pipelines.handlers.retry]\nmax_attempts = 1\n");
    let native: HashMap<String, Box<dyn Invoke>> = HashMap::from([(SUB.to_owned(), Box::new(Hostile) as _)]);
    let rt = Runtime::start_with_native(&config(dir.path(), &toml), None, native).unwrap();
    let too_big = rt.config().max_payload_bytes + 1;
    rt.publish_blocking(vec![
        task("tasks.task.created", "long-key", json!({ "key_bytes": weir_runtime::MAX_TIMER_KEY_BYTES + 1 })),
        task("tasks.task.created", "empty-key", json!({ "key_bytes": 0 })),
        task("tasks.task.created", "bad-topic", json!({ "topic": "Not A Topic" })),
        task("tasks.task.created", "big-payload", json!({ "payload_bytes": too_big })),
        task("tasks.task.created", "fine", json!({ "key_bytes": weir_runtime::MAX_TIMER_KEY_BYTES })),
    ])
    .unwrap();
    assert!(rt.wait_idle(IDLE));
    let dlq = rt.dlq(&DlqFilter { subscription: Some(SUB.into()), ..DlqFilter::default() }).unwrap();
    let refused: Vec<(&str, Option<&str>)> = dlq.iter().map(|d| (d.code.as_str(), d.event.key.as_deref())).collect();
    assert_eq!(
        refused,
        [
            ("bad_output", Some("long-key")),
            ("bad_output", Some("empty-key")),
            ("bad_output", Some("bad-topic")),
            ("bad_output", Some("big-payload")),
        ]
    );
    assert_eq!(pending(&rt), 1, "only the one at the key bound is kept");
    rt.shutdown().unwrap();
}
