//! The timer operations of a successful attempt, checked and made ready for
//! the store: bounded per attempt and per subscription, each scheduled emit
//! validated like an emit, and turned into the event it will append.

use std::collections::BTreeMap;

use weir_abi::{Emit, Event, Header};

use super::VERSION_HEADER;
use super::invoke::{Failure, TimerOp};
use super::step::{Source, is_reserved_header, reserved_topic_refusal};
use super::worker::Worker;
use crate::engine::MAX_TIMER_KEY_BYTES;
use crate::error::InvokeError;
use crate::store::{StoreError, TimerEntry, TimerWrite, timer_event_id};
use crate::topic;

/// The failure of an attempt that asked for more timers than allowed: final,
/// since the same event would ask for them again.
fn limit(reason: String) -> Failure {
    InvokeError::TimerLimit { reason }.into()
}

fn bad(reason: String) -> Failure {
    InvokeError::BadOutput { reason }.into()
}

impl Worker {
    /// Check an attempt's timer operations and build what the store keeps.
    /// The operations on one key collapse to the last (a schedule then a
    /// cancel of the same key cancels).
    ///
    /// # Errors
    ///
    /// The store's, only when the subscription is near its bound and the
    /// pending count had to be read exactly.
    pub(super) fn check_timers(
        &mut self,
        ops: Vec<TimerOp>,
        input: &Event,
        seq: u64,
        source: Source,
    ) -> Result<Result<Vec<TimerWrite>, Failure>, StoreError> {
        if ops.is_empty() {
            return Ok(Ok(Vec::new()));
        }
        if ops.len() > self.spec.max_timers_per_invocation {
            return Ok(Err(limit(format!(
                "{} timer operations in one invocation, more than max_timers_per_invocation = {}",
                ops.len(),
                self.spec.max_timers_per_invocation
            ))));
        }
        let mut last: BTreeMap<String, TimerOp> = BTreeMap::new();
        for op in ops {
            let key = op.key();
            if key.is_empty() || key.len() > MAX_TIMER_KEY_BYTES {
                return Ok(Err(bad(format!("timer key of {} bytes (1..={MAX_TIMER_KEY_BYTES} allowed)", key.len()))));
            }
            if let TimerOp::Schedule { emit, key, .. } = &op
                && let Err(reason) = self.check_emit(emit)
            {
                return Ok(Err(bad(format!("timer {:?}: {reason}", crate::engine::bounded_text(key, 64)))));
            }
            // Its topic's schema (`[[schemas]]`), checked when it is
            // scheduled, as an emit's is when emitted: the event it will
            // append is fixed now, and a violation is final.
            if let TimerOp::Schedule { emit, key, .. } = &op
                && let Err(e) = self.spec.schemas.check(&emit.topic, emit.schema_version, &emit.payload)
            {
                let key = crate::engine::bounded_text(key, 64);
                return Ok(Err(Failure::new("schema_violation", format!("timer {key:?}: {e}"), false)));
            }
            last.insert(key.to_owned(), op);
        }
        let schedules: Vec<&str> =
            last.values().filter(|op| matches!(op, TimerOp::Schedule { .. })).map(TimerOp::key).collect();
        if !schedules.is_empty()
            && let Err(failure) = self.check_pending(&last, &schedules, seq, source)?
        {
            return Ok(Err(failure));
        }
        let writes = last
            .into_values()
            .map(|op| match op {
                TimerOp::Schedule { key, fire_at_ms, emit } => {
                    let event = self.timer_event(emit, input, &key, fire_at_ms);
                    TimerWrite::Schedule { key, entry: TimerEntry { fire_at_ms, event } }
                }
                TimerOp::Cancel { key } => TimerWrite::Cancel { key },
            })
            .collect();
        Ok(Ok(writes))
    }

    /// Whether the subscription stays within `max_pending_timers` with these
    /// operations. The fast answer counts every uncommitted schedule as a
    /// new timer, which can only overcount; only when that passes the bound
    /// is everything staged committed and the exact count read.
    fn check_pending(
        &mut self,
        last: &BTreeMap<String, TimerOp>,
        schedules: &[&str],
        seq: u64,
        source: Source,
    ) -> Result<Result<(), Failure>, StoreError> {
        let max = self.spec.max_pending_timers as u64;
        let (stored, _) = self.store.timer_census(&self.spec.name, &[])?;
        let bound = stored + self.stage.uncommitted_schedules() as u64 + schedules.len() as u64;
        if bound <= max {
            return Ok(Ok(()));
        }
        // The cursor handed over covers exactly what is staged: this event
        // is not (see `Worker::step`).
        let cursor = match source {
            Source::Log => seq,
            Source::Parked => self.stage.submitted_cursor(),
        };
        self.stage.commit_all(cursor)?;
        let keys: Vec<&str> = last.keys().map(String::as_str).collect();
        let (count, present) = self.store.timer_census(&self.spec.name, &keys)?;
        let mut after = count as i64;
        for (op, present) in last.values().zip(present) {
            after += i64::from(matches!(op, TimerOp::Schedule { .. })) - i64::from(present);
        }
        if after > count as i64 && after > max as i64 {
            return Ok(Err(limit(format!("{after} timers would be pending, more than max_pending_timers = {max}"))));
        }
        Ok(Ok(()))
    }

    /// What `check` asks of an emit, for a scheduled one.
    fn check_emit(&self, emit: &Emit) -> Result<(), String> {
        topic::validate(&emit.topic).map_err(|e| e.to_string())?;
        if let Some(reason) = reserved_topic_refusal(&emit.topic, self.spec.own_reserved_topics.as_deref()) {
            return Err(reason);
        }
        if let Some(h) = emit.headers.iter().find(|h| is_reserved_header(&h.name)) {
            return Err(format!(
                "header {:?} uses a prefix only the host may set",
                crate::engine::bounded_text(&h.name, 64)
            ));
        }
        if emit.payload.len() > self.spec.max_payload_bytes {
            return Err(format!(
                "payload of {} bytes exceeds the maximum of {}",
                emit.payload.len(),
                self.spec.max_payload_bytes
            ));
        }
        Ok(())
    }

    /// The event a timer appends when it fires: like an emit's
    /// (`Worker::to_event`), but with an id derived from the timer, so a
    /// refire cannot append it twice, and its time set when it fires.
    fn timer_event(&self, emit: Emit, input: &Event, key: &str, fire_at_ms: u64) -> Event {
        let mut headers = emit.headers;
        headers.push(Header::new(VERSION_HEADER, self.version_short.clone()));
        Event {
            id: timer_event_id(&self.spec.name, key, fire_at_ms, input.id),
            topic: emit.topic,
            source: format!("weir://{}", self.spec.name),
            key: emit.key,
            schema_version: emit.schema_version,
            time: 0,
            content_type: emit.content_type,
            headers,
            idempotency_key: emit
                .idempotency_key
                .unwrap_or_else(|| format!("{}/{}/timer/{key}", input.idempotency_key, self.spec.name)),
            correlation_id: emit.correlation_id.or(input.correlation_id).or(Some(input.id)),
            causation_id: emit.causation_id.or(Some(input.id)),
            payload: emit.payload,
        }
    }
}
