//! The saga state machine: pure. Given an instance and what happened (a
//! start, a reply, a timer, an operator's action), it changes the instance
//! and says what to send ([`Effects`]); the coordinator commits both with
//! its cursor in one transaction.

use std::collections::HashMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use weir_abi::{Emit, Header};

use super::TimerOp;
use super::instance::{AdminOp, Instance, MAX_REPLY_DATA_BYTES, SagaStatus, TimelineEntry, Waiting};
use crate::config::{RetryPolicy, SagaConfig};

/// Headers every command carries; services copy them into their replies.
pub const HEADER_ID: &str = "saga-id";
/// The saga's name.
pub const HEADER_NAME: &str = "saga-name";
/// The step's name.
pub const HEADER_STEP: &str = "saga-step";
/// The attempt, from 1.
pub const HEADER_ATTEMPT: &str = "saga-attempt";
/// `forward` or `compensate`.
pub const HEADER_PHASE: &str = "saga-phase";
/// The key a service de-duplicates its effect on: the same for every
/// attempt (`<id>:<step>`, `<id>:<step>:compensate`).
pub const HEADER_IDEMPOTENCY: &str = "saga-idempotency-key";

/// Which way a command goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Phase {
    /// A step.
    Forward,
    /// A step's compensation.
    Compensate,
}

impl Phase {
    fn as_str(self) -> &'static str {
        match self {
            Self::Forward => "forward",
            Self::Compensate => "compensate",
        }
    }
}

/// What a timer event says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum TimerKind {
    /// No reply to an attempt in time.
    Timeout,
    /// The backoff before the next attempt is over.
    Retry,
    /// The saga's overall timeout.
    Deadline,
}

/// The payload of an instance's timer event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct TimerBody {
    pub kind: TimerKind,
    pub phase: Phase,
    pub step: usize,
    pub attempt: u32,
    pub nonce: u64,
}

/// What a reply topic means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ReplyKind {
    Success,
    Failure,
}

/// Something the metrics count.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Observed {
    /// The instance entered this status.
    Status(SagaStatus),
    /// A step succeeded this long after its first attempt was sent.
    StepLatency(u64),
    /// A compensation ended: `succeeded`, `retried`, `exhausted`, `skipped`.
    Compensation(&'static str),
}

/// What a transition sends and schedules.
#[derive(Debug, Default)]
pub(crate) struct Effects {
    pub emits: Vec<Emit>,
    pub timers: Vec<TimerOp>,
    pub observed: Vec<Observed>,
}

/// One saga's transitions.
pub(crate) struct Machine {
    pub(crate) cfg: Arc<SagaConfig>,
    replies: HashMap<String, (usize, Phase, ReplyKind)>,
    timer_topic: String,
    failed_topic: String,
}

/// An input of a transition.
pub(crate) enum Input<'a> {
    /// A reply on `topic`.
    Reply { topic: &'a str, payload: &'a [u8], attempt: Option<u32>, event_id: String },
    /// One of the instance's timers fired.
    Timer(TimerBody),
    /// An operator's action.
    Admin(AdminOp),
}

fn entry(now: u64, kind: &str) -> TimelineEntry {
    TimelineEntry {
        at_ms: now,
        kind: kind.to_owned(),
        step: None,
        attempt: None,
        topic: None,
        event_id: None,
        note: None,
    }
}

impl Machine {
    /// The machine of `cfg`.
    #[must_use]
    pub(crate) fn new(cfg: Arc<SagaConfig>) -> Self {
        let mut replies = HashMap::new();
        for (i, s) in cfg.steps.iter().enumerate() {
            replies.extend(s.success.iter().map(|t| (t.clone(), (i, Phase::Forward, ReplyKind::Success))));
            replies.extend(s.failure.iter().map(|t| (t.clone(), (i, Phase::Forward, ReplyKind::Failure))));
            if let Some(c) = &s.compensation {
                replies.extend(c.success.iter().map(|t| (t.clone(), (i, Phase::Compensate, ReplyKind::Success))));
                replies.extend(c.failure.iter().map(|t| (t.clone(), (i, Phase::Compensate, ReplyKind::Failure))));
            }
        }
        Self { timer_topic: cfg.own_topic("timer"), failed_topic: cfg.own_topic("failed"), cfg, replies }
    }

    /// Whether `topic` is one of the saga's reply topics.
    #[must_use]
    pub(crate) fn is_reply(&self, topic: &str) -> bool {
        self.replies.contains_key(topic)
    }

    /// A new instance: its first command sent, its timers set.
    pub(crate) fn start(
        &self,
        id: String,
        input: serde_json::Value,
        event_id: String,
        nonce: u64,
        now: u64,
        fx: &mut Effects,
    ) -> Instance {
        let deadline_ms = now.saturating_add(self.cfg.timeout.as_millis() as u64);
        let mut inst = Instance {
            saga: self.cfg.name.clone(),
            id,
            status: SagaStatus::Running,
            step: 0,
            step_name: self.cfg.steps.first().map(|s| s.name.clone()).unwrap_or_default(),
            attempt: 0,
            waiting: Waiting::Nothing,
            completed: Vec::new(),
            compensated: Vec::new(),
            past_pivot: false,
            cause: None,
            input,
            data: Default::default(),
            timeline: Vec::new(),
            timeline_dropped: 0,
            started_ms: now,
            updated_ms: now,
            step_started_ms: now,
            deadline_ms,
            nonce,
            tries: 0,
        };
        let mut e = entry(now, "started");
        e.event_id = Some(event_id);
        inst.note(e);
        fx.observed.push(Observed::Status(SagaStatus::Running));
        let body = TimerBody { kind: TimerKind::Deadline, phase: Phase::Forward, step: 0, attempt: 0, nonce };
        fx.timers.push(TimerOp::Schedule {
            key: format!("{}:deadline", inst.id),
            fire_at_ms: deadline_ms,
            emit: self.timer_emit(&inst, body),
        });
        self.begin(&mut inst, Phase::Forward, 0, now, fx);
        inst
    }

    /// Apply one input to `inst`.
    pub(crate) fn apply(&self, inst: &mut Instance, input: Input<'_>, now: u64, fx: &mut Effects) {
        match input {
            Input::Reply { topic, payload, attempt, event_id } => {
                self.reply(inst, topic, payload, attempt, event_id, now, fx)
            }
            Input::Timer(body) => self.timer(inst, body, now, fx),
            Input::Admin(op) => self.admin(inst, op, now, fx),
        }
    }

    fn phase(inst: &Instance) -> Phase {
        match inst.status {
            SagaStatus::Compensating | SagaStatus::CompensationFailed => Phase::Compensate,
            _ => Phase::Forward,
        }
    }

    fn policy(&self, phase: Phase, step: usize) -> Option<(&RetryPolicy, std::time::Duration)> {
        let s = self.cfg.steps.get(step)?;
        match phase {
            Phase::Forward => Some((&s.retry, s.timeout)),
            Phase::Compensate => s.compensation.as_ref().map(|c| (&c.retry, c.timeout)),
        }
    }

    /// Start `step` in `phase` with a fresh budget of attempts.
    fn begin(&self, inst: &mut Instance, phase: Phase, step: usize, now: u64, fx: &mut Effects) {
        // Attempt numbers only grow per step and phase: they are part of
        // the commands' idempotency keys, which must not repeat.
        if inst.step != step || Self::phase(inst) != phase {
            inst.attempt = 0;
        }
        inst.step = step;
        inst.step_name = self.cfg.steps.get(step).map(|s| s.name.clone()).unwrap_or_default();
        inst.tries = 0;
        inst.step_started_ms = now;
        self.send(inst, phase, now, fx);
    }

    /// Send the next attempt of the current step (or compensation) and set
    /// its timeout.
    fn send(&self, inst: &mut Instance, phase: Phase, now: u64, fx: &mut Effects) {
        let Some(step) = self.cfg.steps.get(inst.step) else { return };
        let (topic, timeout) = match (phase, &step.compensation) {
            (Phase::Forward, _) => (&step.command, step.timeout),
            (Phase::Compensate, Some(c)) => (&c.command, c.timeout),
            (Phase::Compensate, None) => return,
        };
        inst.attempt += 1;
        inst.tries += 1;
        inst.waiting = Waiting::Reply;
        let stable = match phase {
            Phase::Forward => format!("{}:{}", inst.id, step.name),
            Phase::Compensate => format!("{}:{}:compensate", inst.id, step.name),
        };
        let body = serde_json::json!({
            "saga": inst.saga, "id": inst.id, "step": step.name, "phase": phase.as_str(),
            "attempt": inst.attempt, "input": inst.input, "data": inst.data,
        });
        fx.emits.push(Emit {
            topic: topic.clone(),
            key: Some(inst.id.clone()),
            schema_version: 1,
            content_type: "application/json".into(),
            headers: vec![
                Header::new(HEADER_ID, inst.id.clone()),
                Header::new(HEADER_NAME, inst.saga.clone()),
                Header::new(HEADER_STEP, step.name.clone()),
                Header::new(HEADER_ATTEMPT, inst.attempt.to_string()),
                Header::new(HEADER_PHASE, phase.as_str()),
                Header::new(HEADER_IDEMPOTENCY, stable.clone()),
            ],
            // Each attempt is an event of its own (a retry with the same key
            // would be taken for a duplicate and never delivered); the
            // service de-duplicates its effect on the stable key.
            idempotency_key: Some(format!("{stable}:{}", inst.attempt)),
            correlation_id: None,
            causation_id: None,
            payload: serde_json::to_vec(&body).unwrap_or_default(),
        });
        let mut e = entry(now, if phase == Phase::Forward { "command" } else { "compensate" });
        e.step = Some(step.name.clone());
        e.attempt = Some(inst.attempt);
        e.topic = Some(topic.clone());
        inst.note(e);
        let body =
            TimerBody { kind: TimerKind::Timeout, phase, step: inst.step, attempt: inst.attempt, nonce: inst.nonce };
        fx.timers.push(TimerOp::Schedule {
            key: timer_key(inst, body),
            fire_at_ms: now.saturating_add(timeout.as_millis() as u64),
            emit: self.timer_emit(inst, body),
        });
    }

    fn timer_emit(&self, inst: &Instance, body: TimerBody) -> Emit {
        Emit {
            topic: self.timer_topic.clone(),
            key: Some(inst.id.clone()),
            schema_version: 1,
            content_type: "application/json".into(),
            headers: Vec::new(),
            idempotency_key: Some(timer_key(inst, body)),
            correlation_id: None,
            causation_id: None,
            payload: serde_json::to_vec(&body).unwrap_or_default(),
        }
    }

    /// Cancel the timers of the attempt in flight.
    fn cancel_attempt_timers(inst: &Instance, phase: Phase, fx: &mut Effects) {
        for kind in [TimerKind::Timeout, TimerKind::Retry] {
            let body = TimerBody { kind, phase, step: inst.step, attempt: inst.attempt, nonce: inst.nonce };
            fx.timers.push(TimerOp::Cancel { key: timer_key(inst, body) });
        }
    }

    fn set_status(inst: &mut Instance, status: SagaStatus, fx: &mut Effects) {
        if inst.status != status {
            inst.status = status;
            fx.observed.push(Observed::Status(status));
        }
    }

    /// Finish for good: no more timers.
    fn finish(inst: &mut Instance, status: SagaStatus, now: u64, fx: &mut Effects) {
        Self::set_status(inst, status, fx);
        inst.waiting = Waiting::Nothing;
        fx.timers.push(TimerOp::Cancel { key: format!("{}:deadline", inst.id) });
        inst.note(entry(now, status.as_str()));
    }

    #[allow(clippy::too_many_arguments)]
    fn reply(
        &self,
        inst: &mut Instance,
        topic: &str,
        payload: &[u8],
        attempt: Option<u32>,
        event_id: String,
        now: u64,
        fx: &mut Effects,
    ) {
        let Some(&(step, phase, kind)) = self.replies.get(topic) else { return };
        let mut e = entry(now, "reply");
        e.step = self.cfg.steps.get(step).map(|s| s.name.clone());
        e.attempt = attempt;
        e.topic = Some(topic.to_owned());
        e.event_id = Some(event_id);
        let current = inst.step == step
            && Self::phase(inst) == phase
            && matches!(inst.status, SagaStatus::Running | SagaStatus::Compensating);
        // A failure from an earlier attempt says nothing of the one in
        // flight; a success from any attempt means the effect took place.
        let stale_failure = kind == ReplyKind::Failure
            && (inst.waiting != Waiting::Reply || attempt.is_some_and(|a| a != inst.attempt));
        let accepted = current && matches!(inst.waiting, Waiting::Reply | Waiting::Backoff) && !stale_failure;
        if !accepted {
            e.kind = "late_reply".into();
            e.note = Some("ignored: the step was decided already".into());
            inst.note(e);
            return;
        }
        inst.note(e);
        Self::cancel_attempt_timers(inst, phase, fx);
        let name = inst.step_name.clone();
        match (phase, kind) {
            (Phase::Forward, ReplyKind::Success) => {
                fx.observed.push(Observed::StepLatency(now.saturating_sub(inst.step_started_ms)));
                inst.data.insert(name.clone(), reply_data(payload));
                inst.completed.push(name);
                self.forward_done(inst, now, fx);
            }
            (Phase::Forward, ReplyKind::Failure) if inst.past_pivot => self.retry_or(inst, phase, now, fx),
            (Phase::Forward, ReplyKind::Failure) => {
                self.compensate_from(inst, format!("step {name} failed"), SagaStatus::Compensated, now, fx);
            }
            (Phase::Compensate, ReplyKind::Success) => {
                fx.observed.push(Observed::Compensation("succeeded"));
                inst.compensated.push(name);
                self.next_compensation(inst, now, fx);
            }
            (Phase::Compensate, ReplyKind::Failure) => self.retry_or(inst, phase, now, fx),
        }
    }

    /// The current step is done: go on to the next, or complete.
    fn forward_done(&self, inst: &mut Instance, now: u64, fx: &mut Effects) {
        if self.cfg.steps.get(inst.step).is_some_and(|s| s.pivot) && !inst.past_pivot {
            inst.past_pivot = true;
            // Past the pivot the overall timeout no longer applies.
            fx.timers.push(TimerOp::Cancel { key: format!("{}:deadline", inst.id) });
        }
        if inst.step + 1 >= self.cfg.steps.len() {
            Self::finish(inst, SagaStatus::Completed, now, fx);
        } else {
            self.begin(inst, Phase::Forward, inst.step + 1, now, fx);
        }
    }

    /// An attempt failed (a failure reply, or no reply in time): back off
    /// and try again while the budget lasts; otherwise give up on it.
    fn retry_or(&self, inst: &mut Instance, phase: Phase, now: u64, fx: &mut Effects) {
        let Some((policy, _)) = self.policy(phase, inst.step) else { return };
        if inst.tries < policy.max_attempts {
            if phase == Phase::Compensate {
                fx.observed.push(Observed::Compensation("retried"));
            }
            inst.waiting = Waiting::Backoff;
            let body =
                TimerBody { kind: TimerKind::Retry, phase, step: inst.step, attempt: inst.attempt, nonce: inst.nonce };
            let wait = policy.backoff(inst.tries).as_millis() as u64;
            fx.timers.push(TimerOp::Schedule {
                key: timer_key(inst, body),
                fire_at_ms: now.saturating_add(wait),
                emit: self.timer_emit(inst, body),
            });
            return;
        }
        match phase {
            Phase::Forward if inst.past_pivot => {
                Self::set_status(inst, SagaStatus::ForwardFailed, fx);
                inst.waiting = Waiting::Nothing;
                let mut e = entry(now, "forward_failed");
                e.step = Some(inst.step_name.clone());
                e.note = Some(format!("no success after {} attempts; resume or skip", inst.tries));
                inst.note(e);
            }
            Phase::Forward => {
                let why = format!("step {} timed out after {} attempts", inst.step_name, inst.tries);
                self.compensate_from(inst, why, SagaStatus::Compensated, now, fx);
            }
            Phase::Compensate => {
                fx.observed.push(Observed::Compensation("exhausted"));
                Self::set_status(inst, SagaStatus::CompensationFailed, fx);
                inst.waiting = Waiting::Nothing;
                let mut e = entry(now, "compensation_failed");
                e.step = Some(inst.step_name.clone());
                e.note = Some(format!("no success after {} attempts; resume, skip or cancel", inst.tries));
                inst.note(e);
                // An event the coordinator dead-letters: the failed saga
                // shows in the DLQ.
                let seq = inst.timeline_dropped + inst.timeline.len() as u64;
                fx.emits.push(Emit {
                    topic: self.failed_topic.clone(),
                    key: Some(inst.id.clone()),
                    schema_version: 1,
                    content_type: "application/json".into(),
                    headers: Vec::new(),
                    idempotency_key: Some(format!("{}:{}:failed:{seq}", inst.id, inst.step_name)),
                    correlation_id: None,
                    causation_id: None,
                    payload: serde_json::to_vec(
                        &serde_json::json!({"saga": inst.saga, "id": inst.id, "step": inst.step_name}),
                    )
                    .unwrap_or_default(),
                });
            }
        }
    }

    /// Turn back: compensate the completed steps, last first. `then` is the
    /// status once they all are.
    fn compensate_from(&self, inst: &mut Instance, cause: String, then: SagaStatus, now: u64, fx: &mut Effects) {
        Self::set_status(inst, SagaStatus::Compensating, fx);
        inst.cause = Some(if then == SagaStatus::Cancelled { format!("cancelled: {cause}") } else { cause });
        inst.attempt = 0;
        self.next_compensation(inst, now, fx);
    }

    /// Compensate the latest completed step not compensated yet, or finish.
    fn next_compensation(&self, inst: &mut Instance, now: u64, fx: &mut Effects) {
        let next = inst.completed.iter().rev().find_map(|name| {
            let i = self.cfg.steps.iter().position(|s| &s.name == name)?;
            (self.cfg.steps[i].compensation.is_some() && !inst.compensated.contains(name)).then_some(i)
        });
        match next {
            Some(i) => {
                inst.attempt = 0;
                self.begin(inst, Phase::Compensate, i, now, fx);
            }
            None => {
                let cancelled = inst.cause.as_deref().is_some_and(|c| c.starts_with("cancelled"));
                Self::finish(inst, if cancelled { SagaStatus::Cancelled } else { SagaStatus::Compensated }, now, fx);
            }
        }
    }

    fn timer(&self, inst: &mut Instance, body: TimerBody, now: u64, fx: &mut Effects) {
        if body.nonce != inst.nonce {
            return;
        }
        let live = matches!(inst.status, SagaStatus::Running | SagaStatus::Compensating);
        let current = live && body.step == inst.step && body.phase == Self::phase(inst) && body.attempt == inst.attempt;
        match body.kind {
            TimerKind::Timeout if current && inst.waiting == Waiting::Reply => {
                let mut e = entry(now, "timeout");
                e.step = Some(inst.step_name.clone());
                e.attempt = Some(inst.attempt);
                inst.note(e);
                self.retry_or(inst, body.phase, now, fx);
            }
            TimerKind::Retry if current && inst.waiting == Waiting::Backoff => self.send(inst, body.phase, now, fx),
            TimerKind::Deadline if inst.status == SagaStatus::Running && !inst.past_pivot => {
                inst.note(entry(now, "deadline"));
                Self::cancel_attempt_timers(inst, Phase::Forward, fx);
                self.compensate_from(inst, "the saga timed out".into(), SagaStatus::Compensated, now, fx);
            }
            // Stale: the attempt it watched was decided.
            _ => {}
        }
    }

    fn admin(&self, inst: &mut Instance, op: AdminOp, now: u64, fx: &mut Effects) {
        let mut e = entry(now, op.as_str());
        if let Err(why) = op.applies(inst.status, inst.past_pivot) {
            e.kind = "refused".into();
            e.note = Some(format!("{}: {why}", op.as_str()));
            inst.note(e);
            return;
        }
        e.step = Some(inst.step_name.clone());
        inst.note(e);
        match (op, inst.status) {
            (AdminOp::Cancel, SagaStatus::Running) => {
                Self::cancel_attempt_timers(inst, Phase::Forward, fx);
                self.compensate_from(inst, "by an operator".into(), SagaStatus::Cancelled, now, fx);
            }
            (AdminOp::Cancel, _) => {
                inst.cause = Some(format!(
                    "cancelled by an operator while compensation {} had failed; the compensations left were not run",
                    inst.step_name
                ));
                Self::finish(inst, SagaStatus::Cancelled, now, fx);
            }
            (AdminOp::Resume, SagaStatus::CompensationFailed) => {
                Self::set_status(inst, SagaStatus::Compensating, fx);
                self.begin(inst, Phase::Compensate, inst.step, now, fx);
            }
            (AdminOp::Resume, _) => {
                Self::set_status(inst, SagaStatus::Running, fx);
                self.begin(inst, Phase::Forward, inst.step, now, fx);
            }
            (AdminOp::Skip, SagaStatus::CompensationFailed) => {
                fx.observed.push(Observed::Compensation("skipped"));
                Self::set_status(inst, SagaStatus::Compensating, fx);
                inst.compensated.push(inst.step_name.clone());
                self.next_compensation(inst, now, fx);
            }
            (AdminOp::Skip, _) => {
                Self::set_status(inst, SagaStatus::Running, fx);
                inst.completed.push(inst.step_name.clone());
                self.forward_done(inst, now, fx);
            }
        }
    }
}

/// The key of one of an instance's timers.
fn timer_key(inst: &Instance, body: TimerBody) -> String {
    let kind = match body.kind {
        TimerKind::Timeout => "timeout",
        TimerKind::Retry => "retry",
        TimerKind::Deadline => return format!("{}:deadline", inst.id),
    };
    format!("{}:{kind}:{}:{}:{}", inst.id, body.phase.as_str(), body.step, body.attempt)
}

/// A reply's payload as kept in the instance's data.
fn reply_data(payload: &[u8]) -> serde_json::Value {
    if payload.len() <= MAX_REPLY_DATA_BYTES
        && let Ok(v) = serde_json::from_slice::<serde_json::Value>(payload)
    {
        return v;
    }
    serde_json::json!({ "bytes": payload.len() })
}

#[cfg(test)]
#[path = "machine_tests.rs"]
mod tests;
