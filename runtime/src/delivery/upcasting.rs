//! Delivering an upcast event (docs/schemas.md, "Upcasters"): what the
//! worker does when the upcasters turned one stored event into zero, one
//! or several events.
//!
//! # Idempotency of the outputs
//!
//! An output that keeps the input's identity (every step answered one
//! event) is delivered exactly as the stored event would be: one record,
//! under the event's idempotency key. Otherwise each output has a key of
//! its own, derived from the input's and its index (`<key>~v<to>.<i>`), and
//! is handled as its own delivery: its record, its emits and its state
//! writes are staged together under that key, then the next output. Once
//! all are handled the input's own key is recorded too (with no emits),
//! and the event is done. When an output fails, what the earlier outputs
//! did stays staged (and commits); the event is retried or dead-lettered
//! as stored, and its next attempt — a retry, a redrive — upcasts it again
//! and skips every output whose key has a record. So no output is applied
//! twice, and a dropped event (no output) is handled with no effect.

use weir_abi::Event;

use super::invoke::Failure;
use super::keyed::Prior;
use super::step::Source;
use super::worker::Worker;
use crate::store::{IdempotencyRecord, StoreError, now_ms};
use crate::upcast::Delivered;

/// `failure` of the delivery of `delivered`, with the version it was
/// delivered as when the upcasters changed it: the DLQ entry holds the
/// event as stored, and its message says what the handler saw.
pub(super) fn delivered_as(mut failure: Failure, event: &Event, delivered: &Event) -> Failure {
    if delivered.schema_version != event.schema_version {
        failure.message = format!("delivered as version {}: {}", delivered.schema_version, failure.message);
    }
    failure
}

impl Worker {
    /// What `event` is delivered as to this handler.
    pub(super) fn upcast(&mut self, event: &Event) -> Result<Delivered, Failure> {
        // Most handlers accept any version, or the one stored: no lookup.
        if self.accepts.is_empty() || (self.upcast.is_none() && self.accepts.contains(&event.schema_version)) {
            return Ok(Delivered::AsStored);
        }
        match &mut self.upcast {
            Some(local) => local.deliver(event, &self.accepts, self.spec.max_payload_bytes),
            // No upcasters: a version the handler does not accept cannot
            // become one.
            None => Err(Failure::new(
                crate::upcast::UNSUPPORTED_VERSION,
                format!(
                    "version {} of {} is not one the handler accepts ({}) and no upcaster is configured",
                    event.schema_version,
                    event.topic,
                    crate::upcast::list(&self.accepts)
                ),
                false,
            )),
        }
    }

    /// Deliver the events the upcasters made of `event`, each on its own
    /// (see the module's notes), then record the event.
    pub(super) fn run_upcast(
        &mut self,
        seq: u64,
        event: &Event,
        events: &[Event],
        prior: Option<Prior>,
        attempt: u32,
        source: Source,
    ) -> Result<(), StoreError> {
        if let [one] = events
            && one.idempotency_key == event.idempotency_key
        {
            return self.run_one(seq, event, one, prior, attempt, source);
        }
        for out in events {
            if self.output_done(&out.idempotency_key)? {
                continue;
            }
            match self.attempt_one(seq, out, attempt, source)? {
                Ok((emits, state, timers)) => self.stage_output(seq, event, out, emits, state, timers),
                Err(failure) => {
                    let failure = delivered_as(failure, event, out);
                    self.stage_failure(seq, event, prior, attempt, failure);
                    return Ok(());
                }
            }
        }
        // Every output handled (or none: dropped): the event is.
        self.stage_handled(seq, event, Vec::new(), prior.is_some(), Vec::new(), Vec::new());
        Ok(())
    }

    /// Whether an output's key has a record: staged, in flight or stored.
    fn output_done(&self, key: &str) -> Result<bool, StoreError> {
        if self.stage.holds(key) {
            return Ok(true);
        }
        Ok(self.store.idempotency(&self.spec.name, &[key])?.first().is_some_and(Option::is_some))
    }

    /// One output handled: its record under its own key, its emits (caused
    /// by the stored event, whose id is in the log) and its state writes.
    /// The event stays parked, if it is, until every output is done.
    fn stage_output(
        &mut self,
        seq: u64,
        event: &Event,
        out: &Event,
        emits: Vec<weir_abi::Emit>,
        state: Vec<crate::store::StateWrite>,
        timers: Vec<crate::store::TimerWrite>,
    ) {
        let now = now_ms();
        let expires_at_ms = self.record_expiry(now);
        let events: Vec<crate::store::EmitRecord> = emits
            .into_iter()
            .enumerate()
            .map(|(i, mut emit)| {
                emit.causation_id = emit.causation_id.or(Some(event.id));
                emit.correlation_id = emit.correlation_id.or(event.correlation_id).or(Some(event.id));
                // Marked with the window of the output's record, written
                // below; the store finds the emit through the record's seq
                // (the stored event, its default cause) or its event id
                // (`out`, the SDK's cause).
                crate::store::EmitRecord::new(&self.to_event(emit, out, i, expires_at_ms, event.id))
            })
            .collect();
        let record = IdempotencyRecord {
            event_id: out.id,
            seq,
            handled_at_ms: now,
            expires_at_ms,
            outcome_digest: super::step::digest(&events),
            emitted: events.len() as u32,
            plugin_version: self.version.clone(),
        };
        self.stage.handled(seq, &out.idempotency_key, record, false, events, false, state, timers);
    }
}
