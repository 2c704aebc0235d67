use std::time::Duration;

use super::*;
use crate::config::{Compensation, Correlation, SagaStep};
use crate::saga::MAX_TIMELINE;

fn step(name: &str, comp: bool, pivot: bool, attempts: u32) -> SagaStep {
    let retry = RetryPolicy {
        max_attempts: attempts,
        initial_backoff: Duration::from_millis(10),
        jitter: 0.0,
        ..RetryPolicy::default()
    };
    SagaStep {
        name: name.into(),
        command: format!("svc.{name}.do"),
        success: vec![format!("svc.{name}.done")],
        failure: vec![format!("svc.{name}.failed")],
        timeout: Duration::from_secs(1),
        retry: retry.clone(),
        compensation: comp.then(|| Compensation {
            command: format!("svc.{name}.undo"),
            success: vec![format!("svc.{name}.undone")],
            failure: vec![format!("svc.{name}.undo-failed")],
            timeout: Duration::from_secs(1),
            retry,
        }),
        pivot,
    }
}

fn machine(steps: Vec<SagaStep>) -> Machine {
    Machine::new(Arc::new(SagaConfig {
        name: "order".into(),
        start: "orders.order.placed".into(),
        correlation: Correlation::Key,
        timeout: Duration::from_secs(60),
        max_instances: 10,
        from: crate::store::StartPosition::Beginning,
        steps,
    }))
}

fn three() -> Machine {
    machine(vec![step("pay", true, false, 2), step("stock", true, false, 2), step("ship", false, false, 2)])
}

fn reply(m: &Machine, inst: &mut Instance, topic: &str, fx: &mut Effects) {
    let attempt = Some(inst.attempt);
    m.apply(inst, Input::Reply { topic, payload: b"{\"ok\":1}", attempt, event_id: "e".into() }, 10, fx);
}

fn topics(fx: &Effects) -> Vec<&str> {
    fx.emits.iter().map(|e| e.topic.as_str()).collect()
}

fn started(m: &Machine) -> (Instance, Effects) {
    let mut fx = Effects::default();
    let inst = m.start("o-1".into(), serde_json::json!({"n": 1}), "e0".into(), 7, 0, &mut fx);
    (inst, fx)
}

#[test]
fn every_step_succeeding_completes_in_order() {
    let m = three();
    let (mut inst, fx) = started(&m);
    assert_eq!(topics(&fx), ["svc.pay.do"]);
    let cmd = &fx.emits[0];
    assert_eq!(cmd.key.as_deref(), Some("o-1"));
    assert_eq!(cmd.idempotency_key.as_deref(), Some("o-1:pay:1"));
    assert!(cmd.headers.iter().any(|h| h.name == HEADER_IDEMPOTENCY && h.value == "o-1:pay"));
    // A deadline and the step's timeout.
    assert_eq!(fx.timers.len(), 2);
    let mut fx = Effects::default();
    reply(&m, &mut inst, "svc.pay.done", &mut fx);
    reply(&m, &mut inst, "svc.stock.done", &mut fx);
    reply(&m, &mut inst, "svc.ship.done", &mut fx);
    assert_eq!(topics(&fx), ["svc.stock.do", "svc.ship.do"]);
    assert_eq!(inst.status, SagaStatus::Completed);
    assert_eq!(inst.completed, ["pay", "stock", "ship"]);
    assert_eq!(inst.data["pay"], serde_json::json!({"ok": 1}));
    assert!(fx.timers.iter().any(|t| matches!(t, TimerOp::Cancel { key } if key == "o-1:deadline")));
}

#[test]
fn a_failure_at_each_step_compensates_exactly_the_completed_steps_in_reverse() {
    let m = machine(vec![
        step("a", true, false, 1),
        step("b", true, false, 1),
        step("c", true, false, 1),
        step("d", true, false, 1),
    ]);
    for failing in 0..4 {
        let names = ["a", "b", "c", "d"];
        let (mut inst, _) = started(&m);
        let mut fx = Effects::default();
        for n in &names[..failing] {
            reply(&m, &mut inst, &format!("svc.{n}.done"), &mut fx);
        }
        fx = Effects::default();
        reply(&m, &mut inst, &format!("svc.{}.failed", names[failing]), &mut fx);
        let mut sent: Vec<String> = topics(&fx).iter().map(|t| t.to_string()).collect();
        // Each compensation goes out only once the previous one is done.
        for n in names[..failing].iter().rev() {
            assert_eq!(inst.status, SagaStatus::Compensating);
            let mut more = Effects::default();
            reply(&m, &mut inst, &format!("svc.{n}.undone"), &mut more);
            sent.extend(topics(&more).iter().map(|t| t.to_string()));
        }
        let expected: Vec<String> = names[..failing].iter().rev().map(|n| format!("svc.{n}.undo")).collect();
        assert_eq!(sent, expected, "failing at {failing}");
        assert_eq!(inst.status, SagaStatus::Compensated);
        assert_eq!(inst.compensated, names[..failing].iter().rev().copied().collect::<Vec<_>>());
    }
}

#[test]
fn steps_without_compensation_are_passed_over() {
    let m = machine(vec![step("a", true, false, 1), step("b", false, false, 1), step("c", true, false, 1)]);
    let (mut inst, _) = started(&m);
    let mut fx = Effects::default();
    reply(&m, &mut inst, "svc.a.done", &mut fx);
    reply(&m, &mut inst, "svc.b.done", &mut fx);
    fx = Effects::default();
    reply(&m, &mut inst, "svc.c.failed", &mut fx);
    assert_eq!(topics(&fx), ["svc.a.undo"]);
}

fn timer(m: &Machine, inst: &mut Instance, kind: TimerKind, fx: &mut Effects) {
    let body =
        TimerBody { kind, phase: Machine::phase(inst), step: inst.step, attempt: inst.attempt, nonce: inst.nonce };
    m.apply(inst, Input::Timer(body), 20, fx);
}

#[test]
fn a_step_timeout_retries_then_compensates_and_a_late_reply_is_ignored() {
    let m = three();
    let (mut inst, _) = started(&m);
    let mut fx = Effects::default();
    reply(&m, &mut inst, "svc.pay.done", &mut fx);
    fx = Effects::default();
    timer(&m, &mut inst, TimerKind::Timeout, &mut fx);
    assert_eq!(inst.waiting, Waiting::Backoff);
    timer(&m, &mut inst, TimerKind::Retry, &mut fx);
    assert_eq!(topics(&fx), ["svc.stock.do"]);
    assert_eq!(fx.emits[0].idempotency_key.as_deref(), Some("o-1:stock:2"));
    fx = Effects::default();
    timer(&m, &mut inst, TimerKind::Timeout, &mut fx);
    assert_eq!(topics(&fx), ["svc.pay.undo"]);
    assert_eq!(inst.cause.as_deref(), Some("step stock timed out after 2 attempts"));
    // The stock service answers at last: too late.
    let mut fx = Effects::default();
    m.apply(
        &mut inst,
        Input::Reply { topic: "svc.stock.done", payload: b"", attempt: Some(2), event_id: "late".into() },
        30,
        &mut fx,
    );
    assert!(fx.emits.is_empty() && !inst.completed.contains(&"stock".to_owned()));
    assert_eq!(inst.timeline.last().unwrap().kind, "late_reply");
    // A timer of a decided attempt does nothing.
    let stale = TimerBody { kind: TimerKind::Timeout, phase: Phase::Forward, step: 1, attempt: 1, nonce: 7 };
    let before = inst.clone();
    m.apply(&mut inst, Input::Timer(stale), 40, &mut fx);
    assert_eq!(inst, before);
}

#[test]
fn a_timer_without_the_nonce_is_not_the_instances() {
    let m = three();
    let (mut inst, _) = started(&m);
    let mut fx = Effects::default();
    let forged = TimerBody { kind: TimerKind::Deadline, phase: Phase::Forward, step: 0, attempt: 0, nonce: 8 };
    m.apply(&mut inst, Input::Timer(forged), 5, &mut fx);
    assert_eq!(inst.status, SagaStatus::Running);
    timer(&m, &mut inst, TimerKind::Deadline, &mut fx);
    assert_eq!(inst.status, SagaStatus::Compensated, "nothing completed: nothing to compensate");
}

#[test]
fn a_compensation_that_keeps_failing_waits_for_an_operator() {
    let m = three();
    let (mut inst, _) = started(&m);
    let mut fx = Effects::default();
    reply(&m, &mut inst, "svc.pay.done", &mut fx);
    reply(&m, &mut inst, "svc.stock.done", &mut fx);
    reply(&m, &mut inst, "svc.ship.failed", &mut fx);
    reply(&m, &mut inst, "svc.stock.undo-failed", &mut fx);
    timer(&m, &mut inst, TimerKind::Retry, &mut fx);
    fx = Effects::default();
    reply(&m, &mut inst, "svc.stock.undo-failed", &mut fx);
    assert_eq!(inst.status, SagaStatus::CompensationFailed);
    assert_eq!(topics(&fx), ["weir-saga.order.failed"]);
    assert!(fx.observed.contains(&Observed::Compensation("exhausted")));
    // Resume: a new attempt with a new key.
    fx = Effects::default();
    m.apply(&mut inst, Input::Admin(AdminOp::Resume), 50, &mut fx);
    assert_eq!(inst.status, SagaStatus::Compensating);
    assert_eq!(fx.emits[0].idempotency_key.as_deref(), Some("o-1:stock:compensate:3"));
    reply(&m, &mut inst, "svc.stock.undo-failed", &mut fx);
    timer(&m, &mut inst, TimerKind::Retry, &mut fx);
    reply(&m, &mut inst, "svc.stock.undo-failed", &mut fx);
    assert_eq!(inst.status, SagaStatus::CompensationFailed);
    // Skip: stock is taken as undone, pay is compensated next.
    fx = Effects::default();
    m.apply(&mut inst, Input::Admin(AdminOp::Skip), 60, &mut fx);
    assert_eq!(topics(&fx), ["svc.pay.undo"]);
    reply(&m, &mut inst, "svc.pay.undone", &mut fx);
    assert_eq!(inst.status, SagaStatus::Compensated);
    assert_eq!(inst.compensated, ["stock", "pay"]);
}

#[test]
fn cancel_compensates_and_is_refused_past_the_pivot() {
    let m = three();
    let (mut inst, _) = started(&m);
    let mut fx = Effects::default();
    reply(&m, &mut inst, "svc.pay.done", &mut fx);
    fx = Effects::default();
    m.apply(&mut inst, Input::Admin(AdminOp::Cancel), 5, &mut fx);
    assert_eq!(topics(&fx), ["svc.pay.undo"]);
    reply(&m, &mut inst, "svc.pay.undone", &mut fx);
    assert_eq!(inst.status, SagaStatus::Cancelled);
    // The stock reply of the step in flight when cancelled: ignored.
    reply(&m, &mut inst, "svc.stock.done", &mut fx);
    assert_eq!(inst.status, SagaStatus::Cancelled);

    let m = machine(vec![step("a", true, true, 2), step("b", false, false, 2)]);
    let (mut inst, _) = started(&m);
    let mut fx = Effects::default();
    reply(&m, &mut inst, "svc.a.done", &mut fx);
    assert!(inst.past_pivot);
    m.apply(&mut inst, Input::Admin(AdminOp::Cancel), 5, &mut fx);
    assert_eq!(inst.status, SagaStatus::Running);
    assert_eq!(inst.timeline.last().unwrap().kind, "refused");
    // Past the pivot a failure is retried, then waits for an operator.
    reply(&m, &mut inst, "svc.b.failed", &mut fx);
    assert_eq!(inst.waiting, Waiting::Backoff);
    timer(&m, &mut inst, TimerKind::Retry, &mut fx);
    reply(&m, &mut inst, "svc.b.failed", &mut fx);
    assert_eq!(inst.status, SagaStatus::ForwardFailed);
    fx = Effects::default();
    m.apply(&mut inst, Input::Admin(AdminOp::Skip), 5, &mut fx);
    assert_eq!(inst.status, SagaStatus::Completed);
}

#[test]
fn the_timeline_stays_bounded() {
    let m = machine(vec![step("a", true, false, 1000)]);
    let (mut inst, _) = started(&m);
    let mut fx = Effects::default();
    for _ in 0..500 {
        timer(&m, &mut inst, TimerKind::Timeout, &mut fx);
        timer(&m, &mut inst, TimerKind::Retry, &mut fx);
    }
    assert_eq!(inst.timeline.len(), MAX_TIMELINE);
    assert!(inst.timeline_dropped > 900);
    assert!(serde_json::to_vec(&inst).unwrap().len() < 16 * 1024);
}
