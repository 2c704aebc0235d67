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
