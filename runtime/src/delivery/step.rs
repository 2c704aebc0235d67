//! One event, top to bottom: [`Worker::step`] and the named calls it makes,
//! in the order it makes them.

use std::sync::atomic::Ordering;
use std::sync::{Arc, PoisonError};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use weir_abi::{DeliveryRef, Emit, Event, EventId, Header};

use super::invoke::{Attempt, Failure, TimerOp};
use super::keyed::Prior;
use super::logs::Origin;
use super::state::Session;
use super::worker::Worker;
use super::{HOST_KEY_HEADER, VERSION_HEADER};
use crate::clock::now_nanos;
use crate::error::InvokeError;
use crate::ingest::RESERVED_HEADER_PREFIX;
use crate::store::{
    DlqEntry, EmitRecord, IdempotencyRecord, ParkedEntry, ResultItem, StateWrite, StoreError, TimerWrite, now_ms,
};
use crate::topic;
use crate::upcast::Delivered;

/// What one successful attempt leaves to stage: its emits, its state
/// writes and its timers.
pub(super) type Done = (Vec<Emit>, Vec<StateWrite>, Vec<TimerWrite>);

/// Where the event comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Source {
    /// Read from the log just now. Its key's record was looked up with its
    /// batch, and it has not yet taken its place among events with its key.
    Log,
    /// A parked event whose turn came: a retry, or one that waited behind
    /// its key.
    Parked,
}

impl Worker {
    /// Handle one event: order, dedupe, invoke, validate, stage. Each outcome
    /// is only staged here; it is durable once the writer commits its batch.
    ///
    /// # Errors
    ///
    /// Only the store's: an idempotency lookup that failed. Whatever the
    /// handler does is an outcome, not an error.
    pub(super) fn step(&mut self, seq: u64, event: &Event, source: Source) -> Result<(), StoreError> {
        // Order: an earlier event with this key is pending, so this one waits
        // behind it, not invoked, not even checked for a record yet.
        if source == Source::Log && self.wait_behind_key(seq, event) {
            return Ok(());
        }
        // Dedupe: a key with a record (committed or in flight) is not handed
        // to the handler again.
        if self.is_duplicate(seq, event, source)? {
            self.stage_duplicate(seq);
            return Ok(());
        }
        let prior = self.parked.prior(seq);
        let attempt = prior.map_or(0, |p| p.attempts) + 1;
        // Upcast to the newest schema version the handler accepts: after
        // dedupe, so a duplicate costs nothing; before the invocation, which
        // sees the result. The log keeps the event as stored.
        match self.upcast(event) {
            Ok(Delivered::AsStored) => self.run_one(seq, event, event, prior, attempt, source)?,
            Ok(Delivered::Upcast(events)) => self.run_upcast(seq, event, &events, prior, attempt, source)?,
            Err(failure) => self.stage_failure(seq, event, prior, attempt, failure),
        }
        // Bound what the batch being built holds: hand it over early once
        // its outputs pass `FLUSH_BYTES`. The cursor handed over covers
        // exactly what is staged: a fresh event is read at the cursor, which
        // moves past it just before its step; a parked event lies behind the
        // cursor, which has not moved since the last hand-over.
        if self.stage.is_heavy() {
            let cursor = match source {
                Source::Log => seq + 1,
                Source::Parked => self.stage.submitted_cursor(),
            };
            self.stage.flush(cursor)?;
        }
        Ok(())
    }

    /// Invoke the handler on `delivered` (the stored `event`, or what the
    /// upcasters made of it keeping its identity), validate, and stage the
    /// outcome. A failure dead-letters or parks the event as stored.
    pub(super) fn run_one(
        &mut self,
        seq: u64,
        event: &Event,
        delivered: &Event,
        prior: Option<Prior>,
        attempt: u32,
        source: Source,
    ) -> Result<(), StoreError> {
        match self.attempt_one(seq, delivered, attempt, source)? {
            // The state writes join the outcome only now: a failed attempt,
            // or emits that fail validation, leave the state as it was.
            Ok((emits, state, timers)) => self.stage_handled(seq, delivered, emits, prior.is_some(), state, timers),
            Err(failure) => {
                let failure = super::upcasting::delivered_as(failure, event, delivered);
                self.stage_failure(seq, event, prior, attempt, failure);
            }
        }
        Ok(())
    }

    /// One invocation on `event`: invoke, then validate what came back (the
    /// store only ever sees valid events). Answers the emits, the state
    /// writes and the timers, which the caller stages.
    pub(super) fn attempt_one(
        &mut self,
        seq: u64,
        event: &Event,
        attempt: u32,
        source: Source,
    ) -> Result<Result<Done, Failure>, StoreError> {
        self.counters.invocations.fetch_add(1, Ordering::Relaxed);
        // Disabled unless the filter enables debug for `weir::invoke`: a
        // span per event is too dear to pay by default at 100k events/s.
        let span = tracing::debug_span!(
            target: "weir::invoke",
            "invoke",
            subscription = %self.spec.name,
            seq,
            topic = %event.topic,
            event_id = %event.id,
            correlation_id = event.correlation_id.map(|c| c.to_string()),
            plugin_version = %self.version_short,
            attempt,
        );
        let _entered = span.enter();
        let started = self.spec.timing.then(Instant::now);
        let (result, state, timers) = self.invoke(event, attempt);
        let result = result.and_then(|emits| self.validate(emits));
        // Timers only for an attempt that succeeded; checking them may
        // commit what is staged (near the subscription's bound).
        let result = match result {
            Ok(emits) => self.check_timers(timers, event, seq, source)?.map(|timers| (emits, timers)),
            Err(failure) => Err(failure),
        };
        if let Some(started) = started {
            let elapsed = started.elapsed();
            self.counters.processing.observe(elapsed);
            tracing::trace!(target: "weir::invoke", elapsed_us = elapsed.as_micros() as u64, ok = result.is_ok(), "invoked");
        }
        Ok(result.map(|(emits, timers)| (emits, state.map(|s| s.commit()).unwrap_or_default(), timers)))
    }

    /// Park a new event behind its key's pending events, if it has any.
    /// Answers whether it was parked.
    fn wait_behind_key(&mut self, seq: u64, event: &Event) -> bool {
        let Some(entry) = self.parked.wait_behind(seq, event.key.as_deref()) else {
            return false;
        };
        self.stage.push(ResultItem::Park(entry));
        self.counters.parked.store(self.parked.len() as u64, Ordering::Relaxed);
        true
    }

    /// Whether the event's key was handled already: by a batch not
    /// committed yet, or in the store (a record, or one derived from an
    /// ingest claim). A fresh event's store lookup was done with its batch.
    /// Notes whether the event holds its key's claim, for its outcome.
    fn is_duplicate(&mut self, seq: u64, event: &Event, source: Source) -> Result<bool, StoreError> {
        self.claimed = None;
        let key = event.idempotency_key.as_str();
        if self.stage.holds(key) {
            return Ok(true);
        }
        let claimed = match source {
            Source::Log => {
                if self.prefetched.contains(key) {
                    return Ok(true);
                }
                self.claims.get(&seq).copied()
            }
            Source::Parked => {
                let patterns = &self.spec.patterns;
                let wanted = |topic: &str| patterns.iter().any(|p| p.matches(topic));
                match self.store.seen(&self.spec.name, &[(seq, event)], &wanted)?.pop() {
                    Some(seen) if seen.is_duplicate() => return Ok(true),
                    Some(crate::store::Seen::Claimed(until)) => Some(until),
                    _ => None,
                }
            }
        };
        self.claimed = claimed.map(|until| (seq, until));
        Ok(false)
    }

    /// The recorded result stands: nothing is emitted again.
    fn stage_duplicate(&mut self, seq: u64) {
        let parked = self.unpark(seq);
        self.stage.push(ResultItem::Duplicate { seq, parked });
        self.counters.duplicates.fetch_add(1, Ordering::Relaxed);
    }

    /// Call the handler, with a state session when it keeps state, and
    /// account for what it used and logged.
    fn invoke(&mut self, event: &Event, attempt: u32) -> Invoked {
        let delivery = DeliveryRef { event, subscription: &self.spec.name, attempt };
        let (outcome, session) = if self.stateful {
            let session = Session::new(
                self.store.clone(),
                Arc::clone(&self.spec.name),
                event.key.as_deref(),
                Arc::clone(&self.stage.overlay),
                self.spec.max_state_keys_per_scope,
            );
            let (outcome, state) = self.handler.invoke_with_state(delivery, Box::new(session));
            (outcome, state.and_then(Session::recover))
        } else {
            (self.handler.invoke(delivery), None)
        };
        self.account(&outcome, event);
        (outcome.result, session, outcome.timers)
    }

    /// Per-plugin resource numbers and the plugin's log lines, rate-limited.
    fn account(&mut self, outcome: &Attempt, event: &Event) {
        if let Some(fuel) = outcome.fuel_used {
            self.counters.fuel_consumed.fetch_add(fuel, Ordering::Relaxed);
        }
        // Only this worker writes the high-water mark (a swap resets it here
        // too), so a plain load and store do; no read-modify-write per event.
        let high = &self.counters.memory_high_water_bytes;
        if let Some(bytes) = outcome.memory_bytes.map(|b| b as u64)
            && bytes > high.load(Ordering::Relaxed)
        {
            high.store(bytes, Ordering::Relaxed);
        }
        if outcome.logs_dropped > 0 {
            self.counters.plugin_log_lines_dropped.fetch_add(outcome.logs_dropped as u64, Ordering::Relaxed);
        }
        if outcome.logs.is_empty() {
            return;
        }
        let origin = Origin {
            subscription: &self.spec.name,
            plugin: &self.spec.plugin_name,
            version: &self.version_short,
            event_id: event.id,
            correlation_id: event.correlation_id,
        };
        let forwarded = self.logs.forward(&outcome.logs, &origin);
        self.counters.plugin_log_lines.fetch_add(forwarded.written, Ordering::Relaxed);
        self.counters.plugin_log_lines_dropped.fetch_add(forwarded.dropped, Ordering::Relaxed);
    }

    /// Emitted events must be valid events: a bad topic or an oversized
    /// payload fails the invocation as `bad_output`, as the engine's own
    /// output checks do.
    /// Headers under the host's reserved prefix ([`RESERVED_HEADER_PREFIX`])
    /// fail it too: the host sets those (the plugin version), and a plugin
    /// must not be able to forge them.
    fn validate(&self, emits: Vec<Emit>) -> Result<Vec<Emit>, Failure> {
        for (i, emit) in emits.iter().enumerate() {
            topic::validate(&emit.topic).map_err(|e| InvokeError::BadOutput { reason: format!("emit #{i}: {e}") })?;
            if let Some(reason) = reserved_topic_refusal(&emit.topic, self.spec.own_reserved_topics.as_deref()) {
                return Err(InvokeError::BadOutput { reason: format!("emit #{i}: {reason}") }.into());
            }
            if let Some(h) = emit.headers.iter().find(|h| is_reserved_header(&h.name)) {
                return Err(InvokeError::BadOutput {
                    reason: format!(
                        "emit #{i}: header {:?} uses the prefix `{RESERVED_HEADER_PREFIX}`, which only the host may set",
                        crate::engine::bounded_text(&h.name, 64)
                    ),
                }
                .into());
            }
            if emit.payload.len() > self.spec.max_payload_bytes {
                return Err(InvokeError::BadOutput {
                    reason: format!(
                        "emit #{i}: payload of {} bytes exceeds the maximum of {}",
                        emit.payload.len(),
                        self.spec.max_payload_bytes
                    ),
                }
                .into());
            }
            // Last, once the emit is otherwise valid: its topic's schema
            // (`[[schemas]]`). A violation is the handler's bug, not a
            // passing fault: final, straight to the DLQ with the reason.
            if let Err(e) = self.spec.schemas.check(&emit.topic, emit.schema_version, &emit.payload) {
                return Err(Failure::new(schema_failure_code(&e), format!("emit #{i}: {e}"), false));
            }
        }
        if !self.spec.schemas.is_empty() {
            for emit in &emits {
                self.spec.schemas.observe_size(&emit.topic, emit.payload.len());
            }
        }
        Ok(emits)
    }

    /// Handled: the emits become events, and the record, the emits, the
    /// parked entry's removal and the cursor commit together.
    pub(super) fn stage_handled(
        &mut self,
        seq: u64,
        event: &Event,
        emits: Vec<Emit>,
        parked: bool,
        state: Vec<StateWrite>,
        timers: Vec<TimerWrite>,
    ) {
        let now = now_ms();
        let expires_at_ms = self.record_expiry(now);
        // Its record is derived from its key's claim when it holds it, and
        // when it is the event as stored (an upcast output keeps its key).
        // The window of its emits' host keys is its record's.
        let claim = self.claimed.filter(|(claimed, _)| *claimed == seq);
        let window = claim.map_or(expires_at_ms, |(_, until)| until);
        // Encoded here, where the emits were made, not by the writer.
        let events: Vec<EmitRecord> = emits
            .into_iter()
            .enumerate()
            .map(|(i, emit)| EmitRecord::new(&self.to_event(emit, event, i, window, event.id)))
            .collect();
        let record = IdempotencyRecord {
            event_id: event.id,
            seq,
            handled_at_ms: now,
            expires_at_ms,
            // Only a written record keeps its digest: a derived one is
            // never stored, so hashing its emits would be wasted work on
            // every event of a chain (issue 18).
            outcome_digest: if claim.is_some() { String::new() } else { digest(&events) },
            emitted: events.len() as u32,
            plugin_version: self.version.clone(),
        };
        self.unpark(seq);
        self.stage.handled(seq, &event.idempotency_key, record, claim.is_some(), events, parked, state, timers);
        self.counters.handled.fetch_add(1, Ordering::Relaxed);
        if self.spec.timing {
            let age_nanos = now_nanos().saturating_sub(event.time).max(0);
            self.counters.end_to_end.observe(Duration::from_nanos(age_nanos as u64));
        }
    }

    /// Failed: retried later (parked, its key held), or dead-lettered when
    /// the failure is final or the retries are used up.
    pub(super) fn stage_failure(
        &mut self,
        seq: u64,
        event: &Event,
        prior: Option<Prior>,
        attempt: u32,
        failure: Failure,
    ) {
        let now = now_ms();
        let Failure { code, message, retryable, retry_after } = failure;
        // Any failure message may quote the plugin (an invalid topic it
        // emitted, its panic line): escaped and cut before it is counted,
        // logged, parked or dead-lettered.
        let message = crate::engine::bounded_text(&message, MAX_FAILURE_MESSAGE_BYTES);
        *self.counters.failures.lock().unwrap_or_else(PoisonError::into_inner).entry(code).or_default() += 1;
        *self.counters.last_failure.lock().unwrap_or_else(PoisonError::into_inner) = Some(format!("{code}: {message}"));
        let first_failure = prior.and_then(|p| p.first_failure_ms).unwrap_or(now);
        if !retryable || attempt >= self.spec.retry.max_attempts {
            tracing::warn!(subscription = %self.spec.name, seq, code, attempt, "dead-lettered: {message}");
            self.unpark(seq);
            self.stage.push(ResultItem::DeadLetter(Box::new(DlqEntry {
                subscription: self.spec.name.to_string(),
                seq,
                event: event.clone(),
                plugin: self.spec.plugin_name.clone(),
                plugin_version: self.version.clone(),
                code: code.to_owned(),
                message,
                attempts: attempt,
                first_failure_ms: first_failure,
                last_failure_ms: now,
            })));
            self.counters.dead_lettered.fetch_add(1, Ordering::Relaxed);
            return;
        }
        // A failure that says when to come back (a receiver's Retry-After)
        // is taken at its word instead of the policy's backoff.
        let wait = retry_after.unwrap_or_else(|| self.spec.retry.backoff(attempt));
        tracing::debug!(subscription = %self.spec.name, seq, code, attempt, ?wait, "retrying: {message}");
        let entry = ParkedEntry {
            seq,
            key: event.key.clone(),
            attempts: attempt,
            next_attempt_at_ms: now + wait.as_millis() as u64,
            first_failure_ms: Some(first_failure),
            last_failure_ms: Some(now),
            last_code: Some(code.to_owned()),
            last_message: Some(message),
        };
        self.parked.retry(entry.clone());
        self.stage.push(ResultItem::Park(entry));
        self.counters.retries.fetch_add(1, Ordering::Relaxed);
        self.counters.parked.store(self.parked.len() as u64, Ordering::Relaxed);
    }

    /// When a record this subscription writes at `now` expires (and the
    /// window of the host keys of the emits it records).
    pub(super) fn record_expiry(&self, now: u64) -> u64 {
        now.saturating_add(u64::try_from(self.spec.retention.as_millis()).unwrap_or(u64::MAX))
    }

    /// An emit as an event of the log: a fresh id, this subscription as its
    /// source, the plugin version as a header, and the input as its cause.
    /// `window` is the end of the window of this subscription's record of
    /// `input`: an emit whose key the host derives and whose cause is the
    /// input (or `stored`, the event as stored when `input` is an upcast
    /// output) is marked with it (`HOST_KEY_HEADER`), and downstream
    /// records of it are derived.
    pub(super) fn to_event(&self, emit: Emit, input: &Event, index: usize, window: u64, stored: EventId) -> Event {
        let id = self.ids.next_id();
        let mut headers = emit.headers;
        headers.push(Header::new(VERSION_HEADER, self.version_short.clone()));
        // Only then: the store finds a marked emit from its key through the
        // input's record and what the input caused (store/derived.rs).
        if emit.idempotency_key.is_none() && emit.causation_id.is_none_or(|cause| cause == input.id || cause == stored)
        {
            headers.push(Header::new(HOST_KEY_HEADER, window.to_string()));
        }
        crate::cluster::carry_marks(input, &mut headers);
        Event {
            id,
            topic: emit.topic,
            source: format!("weir://{}", self.spec.name),
            key: emit.key,
            schema_version: emit.schema_version,
            time: now_nanos(),
            content_type: emit.content_type,
            headers,
            // Deterministic: handling the same input again (after its record
            // expired, or by a redrive) emits the same keys, so downstream
            // subscriptions see duplicates, not new events.
            idempotency_key: emit
                .idempotency_key
                .unwrap_or_else(|| format!("{}/{}#{index}", input.idempotency_key, self.spec.name)),
            correlation_id: emit.correlation_id.or(input.correlation_id).or(Some(input.id)),
            causation_id: emit.causation_id.or(Some(input.id)),
            payload: emit.payload,
        }
    }
}

/// What [`Worker::invoke`] answers: the result, the state session (of a
/// stateful handler) and the timer operations asked for.
type Invoked = (Result<Vec<Emit>, Failure>, Option<Box<Session>>, Vec<TimerOp>);

/// Largest failure message kept with a parked or dead-lettered event, in
/// bytes: a handler's reason (at most `MAX_REASON_BYTES`) with room to spare.
pub(crate) const MAX_FAILURE_MESSAGE_BYTES: usize = 2048;

/// Whether `name` is under [`RESERVED_HEADER_PREFIX`] (the host's headers,
/// refused from producers at ingest too), in any case: a plugin that emits
/// one fails with `bad_output` (docs/abi.md §9).
pub(crate) fn is_reserved_header(name: &str) -> bool {
    name.get(..RESERVED_HEADER_PREFIX.len()).is_some_and(|p| p.eq_ignore_ascii_case(RESERVED_HEADER_PREFIX))
}

/// Why `topic` may not be emitted (or scheduled) by a subscription allowed
/// only the reserved topics under `own` (none for a plugin), if it is in a
/// reserved domain (`RESERVED_TOPIC_DOMAINS`, refused from producers at
/// ingest too): a plugin's event on `weir-saga` would be taken by a saga
/// coordinator as its own timer, admin action or failure alert. A plugin
/// that emits one fails with `bad_output` (docs/abi.md §9). `topic` is
/// valid, so short and printable: quoting it is safe.
pub(super) fn reserved_topic_refusal(topic: &str, own: Option<&str>) -> Option<String> {
    let domain = crate::ingest::reserved_topic_domain(topic)?;
    if own.is_some_and(|prefix| topic.starts_with(prefix)) {
        return None;
    }
    Some(format!("topic {topic:?} is in the domain `{domain}`, which only the host's saga coordinators may use"))
}

/// The failure code of an emit its topic's schema refuses: always
/// `schema_violation` (an undeclared version or an oversized payload
/// included), so the DLQ and the failure metrics name one cause.
fn schema_failure_code(_: &crate::schema::SchemaError) -> &'static str {
    "schema_violation"
}

/// A digest of what an event emitted, kept in its idempotency record: the
/// sha256 of the emits' encodings (each the bytes `encoding::encode` gives),
/// in order.
pub(super) fn digest(emits: &[EmitRecord]) -> String {
    if emits.is_empty() {
        // The common case of a handler that emits nothing: no hashing.
        return String::new();
    }
    let mut hasher = Sha256::new();
    for emit in emits {
        hasher.update(emit.body());
    }
    crate::engine::hex(&hasher.finalize()[..16])
}

#[cfg(test)]
mod tests {
    use weir_abi::{Event, EventId};

    use super::reserved_topic_refusal;

    /// The check an emit and a scheduled emit (`timer.rs`) both make: a
    /// plugin (no own prefix) is refused the whole domain, a saga
    /// coordinator everything of it but its own topics.
    #[test]
    fn the_reserved_topic_domain_is_refused_but_to_its_own_coordinator() {
        let refused = reserved_topic_refusal("weir-saga.order.timer", None).unwrap();
        assert_eq!(
            refused,
            "topic \"weir-saga.order.timer\" is in the domain `weir-saga`, which only the host's saga coordinators may use"
        );
        assert!(reserved_topic_refusal("weir-saga.x.y", None).is_some());
        assert_eq!(reserved_topic_refusal("orders.order.placed", None), None);
        // A domain that only begins like the reserved one is not it.
        assert_eq!(reserved_topic_refusal("weir-sagas.order.timer", None), None);
        assert_eq!(reserved_topic_refusal("weir.saga.timer", None), None);
        // The coordinator of `order`: its own topics, not another saga's.
        let own = Some("weir-saga.order.");
        assert_eq!(reserved_topic_refusal("weir-saga.order.timer", own), None);
        assert_eq!(reserved_topic_refusal("weir-saga.order.failed", own), None);
        assert!(reserved_topic_refusal("weir-saga.orders.timer", own).is_some());
        assert!(reserved_topic_refusal("weir-saga.refund.admin", own).is_some());
    }

    #[test]
    fn the_digest_is_the_sha256_of_the_encoded_emits() {
        use sha2::{Digest, Sha256};
        let event = |payload: usize| Event {
            id: EventId([3; 16]),
            topic: "a.b.c".into(),
            source: "weir://p/h".into(),
            key: Some("k".into()),
            schema_version: 1,
            time: 5,
            content_type: "application/json".into(),
            headers: Vec::new(),
            idempotency_key: "k/p/h#0".into(),
            correlation_id: None,
            causation_id: Some(EventId([1; 16])),
            payload: vec![9; payload],
        };
        let events = [event(100_000), event(10), event(300)];
        let mut hasher = Sha256::new();
        for e in &events {
            hasher.update(weir_abi::encoding::encode(e).unwrap());
        }
        let expected = crate::engine::hex(&hasher.finalize()[..16]);
        let emits: Vec<_> = events.iter().map(crate::store::EmitRecord::new).collect();
        assert_eq!(super::digest(&emits), expected);
        assert_eq!(super::digest(&[]), "");
    }
}
