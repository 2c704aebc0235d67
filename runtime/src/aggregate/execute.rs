//! One command: answered from its record when its idempotency key was
//! seen, else decided on the entity's state under the entity's lock, its
//! events folded into the new state, and all of it stored in one commit;
//! decided again when the stream moved meanwhile.

use std::sync::Arc;

use weir_abi::{CommandMsg, Decide, Decision, Emit, Event, EvolveRef, Header};

use super::fold::{self, StateAt};
use super::{AggregateError, Aggregates, Loaded, MAX_ATTEMPTS};
use crate::engine::Handler;
use crate::ids::IdGenerator;
use crate::schema::Schemas;
use crate::store::{Before, CommandRecord, DecidedCommand, ExecuteOutcome, Store, StoreError, Verdict, entity_type};

/// Header of a command's events: the command's name.
pub(crate) const COMMAND_HEADER: &str = "weir-command";
/// Header of a command's events: the command's idempotency key.
pub(crate) const COMMAND_KEY_HEADER: &str = "weir-command-key";

/// A command as the API received it, checked for shape.
#[derive(Debug, Clone)]
pub(crate) struct CommandRequest {
    pub(crate) ty: String,
    pub(crate) key: String,
    pub(crate) name: String,
    /// JSON text.
    pub(crate) payload: Vec<u8>,
    pub(crate) idempotency_key: String,
}

/// A command's answer: its record, and whether it was recorded before
/// (a retry).
#[derive(Debug, Clone)]
pub(crate) struct Executed {
    pub(crate) record: CommandRecord,
    pub(crate) replayed: bool,
}

/// What a command comes to before its commit: answered from its record,
/// or decided and ready to store.
#[derive(Debug)]
enum Prepared {
    /// Its idempotency key was recorded before (a retry).
    Recorded(CommandRecord),
    /// Decided: store it ([`Store::execute_command`]).
    Decided(DecidedCommand),
}

/// How one attempt ended.
enum Step {
    /// Answered from its record.
    Recorded(CommandRecord),
    /// Sent to the store, decided on this revision: the store's answer.
    Stored(ExecuteOutcome, Option<u64>),
}

impl Aggregates {
    /// Execute `request`: the entity's lock, then on a blocking thread the
    /// retry check, the state and the aggregate's calls, then the commit,
    /// awaited; decided again when the stream moved meanwhile.
    ///
    /// # Errors
    ///
    /// See [`AggregateError`]; a rejection is not an error but a result.
    pub(crate) async fn execute(
        rt: &Arc<crate::runtime::Runtime>,
        request: CommandRequest,
    ) -> Result<Executed, AggregateError> {
        let loaded = rt.aggregates().get(&request.ty)?;
        let _entity = rt.aggregates().lock(&request.ty, &request.key).await;
        let request = Arc::new(request);
        for attempt in 0..MAX_ATTEMPTS {
            let (on, loaded, asked) = (Arc::clone(rt), Arc::clone(&loaded), Arc::clone(&request));
            let (tx, rx) = tokio::sync::oneshot::channel::<Result<Step, AggregateError>>();
            // Not awaited: the blocking thread hands the decided command
            // straight to the writer, whose answer wakes this task, one
            // wake-up fewer than awaiting the thread and then the commit.
            // Dropped unrun (the runtime stopping), it drops `tx`: answered
            // below as a failure.
            drop(tokio::task::spawn_blocking(move || {
                let max = on.config().max_payload_bytes;
                match prepare(on.store(), on.ids(), (max, &on.config().schemas), &loaded, &asked, attempt == 0) {
                    Ok(Prepared::Recorded(record)) => drop(tx.send(Ok(Step::Recorded(record)))),
                    Ok(Prepared::Decided(command)) => {
                        let decided_at = command.decided_at;
                        let reply = move |outcome: Result<ExecuteOutcome, StoreError>| {
                            drop(tx.send(outcome.map(|o| Step::Stored(o, decided_at)).map_err(AggregateError::from)));
                        };
                        on.store().execute_command(command, Box::new(reply));
                    }
                    Err(e) => drop(tx.send(Err(e))),
                }
            }));
            let stopped = || AggregateError::Start("the command stopped before it was answered".into());
            match rx.await.map_err(|_| stopped())?? {
                Step::Recorded(record) => return Ok(Executed { record, replayed: true }),
                Step::Stored(ExecuteOutcome::Done(record), _) => return Ok(Executed { record, replayed: false }),
                Step::Stored(ExecuteOutcome::Replayed(record), _) => return Ok(Executed { record, replayed: true }),
                Step::Stored(ExecuteOutcome::Conflict { actual }, decided_at) => {
                    let (ty, key) = (request.ty.as_str(), request.key.as_str());
                    tracing::debug!(
                        entity_type = ty,
                        key,
                        ?actual,
                        ?decided_at,
                        "command's stream moved; deciding again"
                    );
                }
            }
        }
        Err(AggregateError::Conflict { attempts: MAX_ATTEMPTS })
    }
}

/// One attempt up to its commit (a blocking thread): on the first, the
/// retry check and the state in one read; on a later one (the stream
/// moved), the state read again. Then the aggregate decides.
fn prepare(
    store: &Store,
    ids: &IdGenerator,
    limits: (usize, &Schemas),
    loaded: &Loaded,
    request: &CommandRequest,
    first: bool,
) -> Result<Prepared, AggregateError> {
    let (ty, key) = (request.ty.as_str(), request.key.as_str());
    let read = if first {
        match store.before_command(ty, key, &request.idempotency_key)? {
            Before::Recorded(record) => return Ok(Prepared::Recorded(record)),
            Before::Decide(snapshot, current) => Some((snapshot, current)),
        }
    } else {
        None
    };
    // An instance only while loading and deciding: it goes back to the pool
    // before the commit is awaited, so commands waiting for their fsync
    // hold none.
    let mut handler = loaded.take()?;
    let decided = fold::current(store, loaded, &mut handler, (ty, key), read)
        .and_then(|at| Ok((decide(ids, limits, loaded, &mut handler, request, &at)?, at)));
    loaded.give(handler);
    let (verdict, at) = decided?;
    Ok(Prepared::Decided(DecidedCommand {
        ty: request.ty.clone(),
        key: request.key.clone(),
        idempotency_key: request.idempotency_key.clone(),
        name: request.name.clone(),
        payload: request.payload.clone(),
        content_type: "application/json".into(),
        aggregate: loaded.sha256().to_owned(),
        decided_at: at.revision,
        folded: at.folded,
        verdict,
    }))
}

/// Ask the aggregate; for an accept, build the events and fold them into
/// the new state.
fn decide(
    ids: &IdGenerator,
    (max_payload_bytes, schemas): (usize, &Schemas),
    loaded: &Loaded,
    handler: &mut Handler,
    request: &CommandRequest,
    at: &StateAt,
) -> Result<Verdict, AggregateError> {
    let (ty, key) = (request.ty.as_str(), request.key.as_str());
    let message = Decide {
        entity_type: request.ty.clone(),
        key: request.key.clone(),
        revision: at.revision.map_or(-1, |r| i64::try_from(r).unwrap_or(i64::MAX)),
        state: at.state.clone(),
        command: CommandMsg {
            name: request.name.clone(),
            payload: request.payload.clone(),
            content_type: "application/json".into(),
            idempotency_key: request.idempotency_key.clone(),
        },
    };
    let call = handler.decide(&message);
    for line in &call.logs {
        tracing::info!(entity_type = ty, key, level = line.level.as_str(), "aggregate: {}", line.message);
    }
    let emits = match call.result.map_err(|error| AggregateError::Aggregate { error })? {
        Decision::Reject(reason) => {
            // A rebuilt state is worth keeping: the next command starts there.
            let state = if at.folded > 0 { at.state.clone() } else { None };
            return Ok(Verdict::Reject { reason, state });
        }
        Decision::Accept(emits) => emits,
    };
    let now = crate::clock::now_nanos();
    let mut events = Vec::with_capacity(emits.len());
    for (i, emit) in emits.into_iter().enumerate() {
        let event = event(ids, request, i, emit, now, max_payload_bytes)?;
        // The topic's `[[schemas]]` entry, as for every event the log takes.
        schemas
            .check(&event.topic, event.schema_version, &event.payload)
            .map_err(|error| AggregateError::Schema { index: i, error })?;
        events.push(event);
    }
    schemas.observe(&events);
    let mut state = at.state.clone();
    for event in &events {
        let call = handler.evolve(EvolveRef { state: state.as_deref(), event });
        state = Some(call.result.map_err(|error| AggregateError::Aggregate { error })?);
    }
    let state = state.unwrap_or_default();
    if state.len() > loaded.max_state_bytes() {
        return Err(AggregateError::StateTooLarge { size: state.len(), limit: loaded.max_state_bytes() });
    }
    Ok(Verdict::Accept { events, state })
}

/// The event of the aggregate's `i`-th emit: of the entity (its type, its
/// key), with an idempotency key derived from the command's, so the same
/// command never appends twice.
fn event(
    ids: &IdGenerator,
    request: &CommandRequest,
    i: usize,
    emit: Emit,
    now: i64,
    max_payload_bytes: usize,
) -> Result<Event, AggregateError> {
    let (ty, key) = (request.ty.as_str(), request.key.as_str());
    if let Err(e) = crate::topic::validate(&emit.topic) {
        return Err(AggregateError::BadEvent(format!("event {i}: {}", e.reason)));
    }
    // Its own type's topic, below, is never in a reserved domain (config
    // refuses such an entity type): said first, and in its own words, so
    // the refusal holds whatever the configuration let through.
    if let Some(domain) = crate::ingest::reserved_topic_domain(&emit.topic) {
        return Err(AggregateError::BadEvent(format!(
            "event {i}: topic {:?} is in the domain `{domain}`, which only the host's saga coordinators may use",
            emit.topic
        )));
    }
    if entity_type(&emit.topic) != Some(ty) {
        return Err(AggregateError::BadEvent(format!(
            "event {i}: topic {:?} is not of the entity type {ty:?}",
            emit.topic
        )));
    }
    if emit.key.as_deref().is_some_and(|k| k != key) {
        return Err(AggregateError::BadEvent(format!("event {i}: key {:?} is not the entity's {key:?}", emit.key)));
    }
    if emit.payload.len() > max_payload_bytes {
        return Err(AggregateError::BadEvent(format!(
            "event {i}: payload of {} bytes, over ingest.max_payload_bytes ({max_payload_bytes})",
            emit.payload.len()
        )));
    }
    // The host's headers (`weir-command`, `weir-command-key`, …) are
    // the host's to set: an aggregate must not forge which command an
    // event came from.
    if let Some(h) = emit.headers.iter().find(|h| crate::delivery::is_reserved_header(&h.name)) {
        return Err(AggregateError::BadEvent(format!(
            "event {i}: header {:?} uses the prefix `{}`, which only the host may set",
            crate::engine::bounded_text(&h.name, 64),
            crate::ingest::RESERVED_HEADER_PREFIX
        )));
    }
    let mut headers = emit.headers;
    headers.push(Header::new(COMMAND_HEADER, request.name.clone()));
    headers.push(Header::new(COMMAND_KEY_HEADER, request.idempotency_key.clone()));
    Ok(Event {
        id: ids.next_id(),
        topic: emit.topic,
        source: format!("weir:aggregate/{ty}"),
        key: Some(request.key.clone()),
        schema_version: emit.schema_version,
        time: now,
        content_type: emit.content_type,
        headers,
        idempotency_key: format!("command:{ty}/{key}/{}#{i}", request.idempotency_key),
        correlation_id: emit.correlation_id,
        causation_id: emit.causation_id,
        payload: emit.payload,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request() -> CommandRequest {
        CommandRequest {
            ty: "orders.order".into(),
            key: "o1".into(),
            name: "place".into(),
            payload: b"{}".to_vec(),
            idempotency_key: "c1".into(),
        }
    }

    fn emit(topic: &str, headers: Vec<Header>) -> Emit {
        Emit {
            topic: topic.into(),
            key: None,
            schema_version: 1,
            content_type: "application/json".into(),
            headers,
            idempotency_key: None,
            correlation_id: None,
            causation_id: None,
            payload: b"{}".to_vec(),
        }
    }

    /// An aggregate's event on the saga coordinators' domain is refused in
    /// its own words, before (and whatever) its entity type says.
    #[test]
    fn an_event_on_a_reserved_topic_domain_is_refused() {
        let (request, ids) = (request(), IdGenerator::new());
        let err = event(&ids, &request, 0, emit("weir-saga.order.timer", Vec::new()), 0, 1024).unwrap_err();
        assert_eq!(
            err.to_string(),
            "the aggregate answered an event the host refuses: event 0: topic \"weir-saga.order.timer\" is in the domain `weir-saga`, which only the host's saga coordinators may use"
        );
        assert!(event(&ids, &request, 0, emit("orders.order.placed", Vec::new()), 0, 1024).is_ok());
    }

    /// An aggregate cannot set the host's headers (which command an event
    /// came from), in any case.
    #[test]
    fn an_event_with_a_host_header_is_refused() {
        let (request, ids) = (request(), IdGenerator::new());
        let forged = |name: &str| emit("orders.order.placed", vec![Header::new(name, "forged")]);
        for name in [COMMAND_HEADER, "Weir-Command-Key", "weir-version"] {
            let err = event(&ids, &request, 0, forged(name), 0, 1024).unwrap_err();
            assert!(err.to_string().contains("only the host may set"), "{name}: {err}");
        }
        let ok = event(&ids, &request, 0, forged("x-trace"), 0, 1024).unwrap();
        assert_eq!(ok.headers.iter().filter(|h| h.name == COMMAND_HEADER).count(), 1);
    }
}
