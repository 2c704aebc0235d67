//! The coordinator: the [`Invoke`] of a saga's subscription. It reads each
//! event (a start, a reply, a timer, an operator's action) into a
//! transition of the instance it concerns, read from and written back to
//! the subscription's state in the same invocation.

use std::sync::Arc;

use weir_abi::{DeliveryRef, Event};

use super::instance::{AdminOp, Instance, MAX_SAGA_ID_BYTES, SagaStatus};
use super::machine::{Effects, HEADER_ATTEMPT, Input, Machine, TimerBody};
use super::metrics::SagaMetrics;
use crate::config::{Correlation, SagaConfig};
use crate::delivery::{Attempt, Failure, Invoke};
use crate::engine::{StateAccess, StateError, StateScope};
use crate::store::now_ms;

/// The header an operator's action carries. Under the host's reserved
/// prefix: neither a producer (refused at ingest) nor a plugin (refused on
/// emit) can set it, so only the runtime's admin path can cancel, resume or
/// skip.
pub(crate) const ADMIN_HEADER: &str = "weir-saga-admin";

/// One saga's coordinator.
pub(crate) struct Coordinator {
    machine: Machine,
    metrics: Arc<SagaMetrics>,
    admin_topic: String,
    timer_topic: String,
    failed_topic: String,
}

impl Coordinator {
    pub(crate) fn new(cfg: Arc<SagaConfig>, metrics: Arc<SagaMetrics>) -> Self {
        Self {
            admin_topic: cfg.own_topic("admin"),
            timer_topic: cfg.own_topic("timer"),
            failed_topic: cfg.own_topic("failed"),
            machine: Machine::new(cfg),
            metrics,
        }
    }

    fn cfg(&self) -> &SagaConfig {
        &self.machine.cfg
    }

    /// The saga id a start event names.
    fn start_id(&self, event: &Event) -> Result<String, Failure> {
        let id = match &self.cfg().correlation {
            Correlation::Key => {
                event.key.clone().ok_or_else(|| Failure::reject("a start event needs a key: the saga id"))?
            }
            Correlation::Payload(pointer) => {
                let value: serde_json::Value = serde_json::from_slice(&event.payload)
                    .map_err(|e| Failure::reject(format!("the start event's payload is not JSON ({e})")))?;
                match value.pointer(pointer) {
                    Some(serde_json::Value::String(s)) => s.clone(),
                    Some(serde_json::Value::Number(n)) => n.to_string(),
                    _ => return Err(Failure::reject(format!("the start event has no string or number at {pointer}"))),
                }
            }
        };
        check_id(&id).map_err(Failure::reject)?;
        Ok(id)
    }

    fn handle(&mut self, event: &Event, state: &mut dyn StateAccess) -> Result<Effects, Failure> {
        let now = now_ms();
        let mut fx = Effects::default();
        let topic = event.topic.as_str();
        if topic == self.cfg().start {
            let id = self.start_id(event)?;
            match load(state, &id)? {
                // A second start with the same id: the saga runs once.
                Some(mut inst) => {
                    let mut e = super::instance::TimelineEntry {
                        at_ms: now,
                        kind: "duplicate_start".into(),
                        step: None,
                        attempt: None,
                        topic: Some(event.topic.clone()),
                        event_id: Some(event.id.to_string()),
                        note: None,
                    };
                    e.note = Some("ignored: an instance with this id exists".into());
                    inst.note(e);
                    save(state, &inst)?;
                }
                None => {
                    // The counts add up to the instances kept: exact, and
                    // read in the same snapshot as the instance.
                    let mut kept: u64 = 0;
                    for status in SagaStatus::ALL {
                        let n = state.get(StateScope::Shared, &count_key(status)).map_err(state_failure)?;
                        kept += n.map_or(0, |v| count_value(&v));
                    }
                    if kept >= self.cfg().max_instances as u64 {
                        return Err(Failure::new(
                            "saga_limit",
                            format!(
                                "saga {} keeps {kept} instances, the most max_instances = {} allows",
                                self.cfg().name,
                                self.cfg().max_instances
                            ),
                            false,
                        ));
                    }
                    let input = serde_json::from_slice(&event.payload).unwrap_or(serde_json::Value::Null);
                    let nonce = rand::random::<u64>() | 1;
                    let inst = self.machine.start(id, input, event.id.to_string(), nonce, now, &mut fx);
                    save(state, &inst)?;
                    bump(state, inst.status, 1)?;
                }
            }
            return Ok(fx);
        }
        // Everything else names its instance by key.
        let Some(id) = event.key.as_deref() else { return Ok(fx) };
        let Some(mut inst) = load(state, id)? else { return Ok(fx) };
        if topic == self.failed_topic {
            // The alert stays in the DLQ while the saga waits for an
            // operator (a redrive after one acted is handled, no-op).
            if inst.status == SagaStatus::CompensationFailed {
                return Err(Failure::new(
                    "saga_compensation_failed",
                    format!(
                        "saga {} {id}: compensation {} used up its retries; `weir saga resume|skip|cancel {id}`",
                        inst.saga, inst.step_name
                    ),
                    false,
                ));
            }
            return Ok(fx);
        }
        let input = if topic == self.timer_topic {
            match serde_json::from_slice::<TimerBody>(&event.payload) {
                Ok(body) => Input::Timer(body),
                Err(_) => return Ok(fx),
            }
        } else if topic == self.admin_topic {
            let op = event.headers.iter().find(|h| h.name == ADMIN_HEADER).and_then(|h| AdminOp::parse(&h.value));
            match op {
                Some(op) => Input::Admin(op),
                // Not from the runtime's admin path.
                None => return Ok(fx),
            }
        } else if self.machine.is_reply(topic) {
            let attempt = event.headers.iter().find(|h| h.name == HEADER_ATTEMPT).and_then(|h| h.value.parse().ok());
            Input::Reply { topic, payload: &event.payload, attempt, event_id: event.id.to_string() }
        } else {
            return Ok(fx);
        };
        let before = inst.clone();
        self.machine.apply(&mut inst, input, now, &mut fx);
        if inst != before {
            save(state, &inst)?;
        }
        if inst.status != before.status {
            bump(state, before.status, -1)?;
            bump(state, inst.status, 1)?;
        }
        Ok(fx)
    }
}

/// The state key counting the instances in `status`: NUL first, which no
/// saga id has, so listings step over it.
pub(crate) fn count_key(status: SagaStatus) -> Vec<u8> {
    format!("\0count/{}", status.as_str()).into_bytes()
}

/// Decode a count.
pub(crate) fn count_value(bytes: &[u8]) -> u64 {
    <[u8; 8]>::try_from(bytes).map_or(0, u64::from_be_bytes)
}

/// Move the count of `status` by `delta`, in the transition's transaction:
/// the counts always agree with the instances.
fn bump(state: &mut dyn StateAccess, status: SagaStatus, delta: i64) -> Result<(), Failure> {
    let key = count_key(status);
    let now = state.get(StateScope::Shared, &key).map_err(state_failure)?.map_or(0, |v| count_value(&v));
    let next = now.saturating_add_signed(delta);
    state.put(StateScope::Shared, &key, &next.to_be_bytes()).map_err(state_failure)
}

/// A saga id is a key of its own commands: bounded and printable.
fn check_id(id: &str) -> Result<(), String> {
    if id.is_empty() || id.len() > MAX_SAGA_ID_BYTES {
        return Err(format!("a saga id is 1-{MAX_SAGA_ID_BYTES} bytes; this one is {}", id.len()));
    }
    if id.chars().any(char::is_control) {
        return Err("a saga id has no control characters".into());
    }
    Ok(())
}

fn state_failure(e: StateError) -> Failure {
    match e {
        StateError::Limit(why) => {
            Failure::new("saga_limit", format!("no room for another saga instance: {why}"), false)
        }
        StateError::Unavailable(why) => Failure::new("state_unavailable", why, true),
    }
}

/// The instance `id`, if there is one.
pub(crate) fn load(state: &mut dyn StateAccess, id: &str) -> Result<Option<Instance>, Failure> {
    match state.get(StateScope::Shared, id.as_bytes()).map_err(state_failure)? {
        Some(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| Failure::new("saga_state", format!("instance {id} does not decode: {e}"), false)),
        None => Ok(None),
    }
}

fn save(state: &mut dyn StateAccess, inst: &Instance) -> Result<(), Failure> {
    let bytes = serde_json::to_vec(inst).map_err(|e| Failure::new("saga_state", e.to_string(), false))?;
    state.put(StateScope::Shared, inst.id.as_bytes(), &bytes).map_err(state_failure)
}

impl Invoke for Coordinator {
    fn invoke(&mut self, _delivery: DeliveryRef<'_>) -> Attempt {
        // The worker always lends the state: `uses_state` says so.
        Attempt::new(Err(Failure::new("saga_state", "the coordinator runs with its state only", true)))
    }

    fn uses_state(&self) -> bool {
        true
    }

    fn invoke_with_state(
        &mut self,
        delivery: DeliveryRef<'_>,
        mut state: Box<dyn StateAccess>,
    ) -> (Attempt, Option<Box<dyn StateAccess>>) {
        let attempt = match self.handle(delivery.event, state.as_mut()) {
            Ok(fx) => {
                for o in &fx.observed {
                    self.metrics.observe(o);
                }
                super::with_timers(Attempt::new(Ok(fx.emits)), fx.timers)
            }
            Err(failure) => Attempt::new(Err(failure)),
        };
        (attempt, Some(state))
    }

    fn name(&self) -> String {
        format!("saga:{}", self.cfg().name)
    }

    fn version(&self) -> String {
        // The declaration is the code: a changed declaration is a new
        // version in every outcome recorded after it.
        format!("saga-{:016x}", fingerprint(self.cfg()))
    }
}

/// A stable hash of the declaration (FNV-1a over its debug text).
fn fingerprint(cfg: &SagaConfig) -> u64 {
    let text = format!("{cfg:?}");
    text.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3))
}
