//! Aggregates: the write model of event sourcing, as a decider.
//!
//! An aggregate owns the consistency of one entity (an account, an order).
//! The host keeps its state; for each command sent to an entity it calls
//! [`Aggregate::decide`] with the entity's current state, and the events it
//! answers are appended to the entity's stream; [`Aggregate::evolve`] folds
//! each event into the state. Mark the impl with `#[weir_sdk::aggregate]`
//! and the crate is a plugin the host loads as an aggregate
//! (docs/event-sourcing.md).
//!
//! The state is stored by the host as JSON (serde_json), so it can be read
//! back at any point of the stream (`GET /v1/streams/{type}/{key}/state`).
//!
//! ```
//! use serde::{Deserialize, Serialize};
//! use weir_sdk::prelude::*;
//!
//! #[derive(Default, Serialize, Deserialize)]
//! struct Counter { value: u64 }
//!
//! #[derive(Deserialize)]
//! #[serde(rename_all = "snake_case")]
//! enum Command { Add { n: u64 } }
//!
//! struct Counters;
//!
//! #[weir_sdk::aggregate]
//! impl Aggregate for Counters {
//!     type State = Counter;
//!     type Command = Command;
//!
//!     fn decide(_: &Counter, command: &Command, ctx: &CommandContext) -> Result<Vec<Emit>, Rejection> {
//!         let Command::Add { n } = command;
//!         Ok(vec![ctx.event("added").json(&serde_json::json!({ "n": n }))?])
//!     }
//!
//!     fn evolve(mut state: Counter, event: &Event) -> Counter {
//!         if let Ok(v) = event.json::<serde_json::Value>() {
//!             state.value += v["n"].as_u64().unwrap_or(0);
//!         }
//!         state
//!     }
//! }
//! ```

use core::fmt;
use std::marker::PhantomData;

use serde::Serialize;
use serde::de::DeserializeOwned;
use weir_abi::{CommandMsg, Decide, Decision, Evolve, Evolved, Outcome, encoding};

use crate::{Emit, Event, HandlerError};

/// A decider: what commands an entity accepts, and what its events do to
/// its state.
pub trait Aggregate {
    /// The entity's state. `Default` is the state before its first event.
    type State: Serialize + DeserializeOwned + Default;
    /// The commands, decoded from `{"<name>": <payload>}`: an enum with
    /// `#[serde(rename_all = "snake_case")]` whose variants are the
    /// command names reads well.
    type Command: DeserializeOwned;

    /// Accept `command` with the events it causes, or refuse it. Called
    /// with the state after every event of the entity's stream.
    ///
    /// # Errors
    ///
    /// A [`Rejection`]: the client is answered `422 command_rejected` with
    /// its reason, and nothing is appended.
    fn decide(state: &Self::State, command: &Self::Command, ctx: &CommandContext) -> Result<Vec<Emit>, Rejection>;

    /// The state after `event`. Must be a pure function of its inputs: the
    /// host folds the stream again whenever the aggregate changes.
    fn evolve(state: Self::State, event: &Event) -> Self::State;
}

/// What a decision knows besides the state and the command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandContext {
    entity_type: String,
    key: String,
    revision: Option<u64>,
    name: String,
    idempotency_key: String,
}

impl CommandContext {
    /// A context for entity `key` of `entity_type` at `revision` (`None`:
    /// no event yet), for command `name`. The host builds it; tests may.
    pub fn new(
        entity_type: impl Into<String>,
        key: impl Into<String>,
        revision: Option<u64>,
        name: impl Into<String>,
        idempotency_key: impl Into<String>,
    ) -> Self {
        Self {
            entity_type: entity_type.into(),
            key: key.into(),
            revision,
            name: name.into(),
            idempotency_key: idempotency_key.into(),
        }
    }

    /// The entity type (`accounts.account`).
    #[must_use]
    pub fn entity_type(&self) -> &str {
        &self.entity_type
    }

    /// The entity's key.
    #[must_use]
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The revision of the stream's last event; `None` before the first.
    #[must_use]
    pub fn revision(&self) -> Option<u64> {
        self.revision
    }

    /// The command's name.
    #[must_use]
    pub fn command_name(&self) -> &str {
        &self.name
    }

    /// The command's idempotency key.
    #[must_use]
    pub fn idempotency_key(&self) -> &str {
        &self.idempotency_key
    }

    /// An event of this entity: topic `<entity type>.<name>`, its key.
    pub fn event(&self, name: &str) -> Emit {
        Emit::new(format!("{}.{name}", self.entity_type)).key(self.key.clone())
    }
}

/// Why an aggregate refused a command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection(String);

impl Rejection {
    /// Refuse with `reason` (what the client reads).
    pub fn new(reason: impl Into<String>) -> Self {
        Self(reason.into())
    }

    /// The reason.
    #[must_use]
    pub fn reason(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Rejection {}

impl From<HandlerError> for Rejection {
    fn from(e: HandlerError) -> Self {
        Self(e.reason().to_owned())
    }
}

impl From<serde_json::Error> for Rejection {
    fn from(e: serde_json::Error) -> Self {
        Self(format!("invalid JSON: {e}"))
    }
}

/// Decode a command from its name and payload: the JSON `{"<name>":
/// <payload>}`, so an externally tagged enum reads it. A payload that is
/// empty or `null` also reads as a unit variant (`"<name>"`) or a struct
/// variant whose fields all have defaults (`{"<name>": {}}`).
///
/// # Errors
///
/// A [`Rejection`] naming the command and the decoding error.
pub fn decode_command<C: DeserializeOwned>(name: &str, payload: &[u8]) -> Result<C, Rejection> {
    let quoted = serde_json::to_vec(name)?;
    let tagged = |body: &[u8]| {
        let mut text = Vec::with_capacity(body.len() + quoted.len() + 2);
        text.push(b'{');
        text.extend_from_slice(&quoted);
        text.push(b':');
        text.extend_from_slice(body);
        text.push(b'}');
        serde_json::from_slice::<C>(&text)
    };
    let trimmed = payload.trim_ascii();
    let first = if trimmed.is_empty() || trimmed == b"null" {
        if let Ok(command) = serde_json::from_slice::<C>(&quoted) {
            return Ok(command);
        }
        if let Ok(command) = tagged(b"{}") {
            return Ok(command);
        }
        tagged(b"null")
    } else {
        tagged(trimmed)
    };
    first.map_err(|e| {
        Rejection(format!("command {name:?} is not one this aggregate knows or its payload does not fit: {e}"))
    })
}

/// The state from its stored form: the default when there is none.
fn load_state<S: DeserializeOwned + Default>(state: Option<&[u8]>) -> Result<S, String> {
    match state {
        None => Ok(S::default()),
        Some(bytes) => serde_json::from_slice(bytes).map_err(|e| format!("the stored state does not decode: {e}")),
    }
}

/// Run `weir_decide` on an encoded [`Decide`] natively: the glue the
/// attribute generates calls it.
#[must_use]
pub(crate) fn decide_encoded<A: Aggregate>(input: &[u8]) -> Decision {
    let decide: Decide = match encoding::decode(input) {
        Ok(d) => d,
        Err(e) => return Decision::Reject(format!("the aggregate could not decode the command: {e}")),
    };
    let state: A::State = match load_state(decide.state.as_deref()) {
        Ok(s) => s,
        Err(e) => return Decision::Reject(e),
    };
    let CommandMsg { name, payload, idempotency_key, .. } = decide.command;
    let command: A::Command = match decode_command(&name, &payload) {
        Ok(c) => c,
        Err(r) => return Decision::Reject(r.0),
    };
    let revision = u64::try_from(decide.revision).ok();
    let ctx = CommandContext { entity_type: decide.entity_type, key: decide.key, revision, name, idempotency_key };
    match A::decide(&state, &command, &ctx) {
        Ok(emits) => Decision::Accept(emits.into_iter().map(Emit::into_abi).collect()),
        Err(r) => Decision::Reject(r.0),
    }
}

/// Run `weir_evolve` on an encoded [`Evolve`] natively.
#[must_use]
pub(crate) fn evolve_encoded<A: Aggregate>(input: &[u8]) -> Evolved {
    let evolve: Evolve = match encoding::decode(input) {
        Ok(e) => e,
        Err(e) => return Evolved::Failed(format!("the aggregate could not decode the event: {e}")),
    };
    let state: A::State = match load_state(evolve.state.as_deref()) {
        Ok(s) => s,
        Err(e) => return Evolved::Failed(e),
    };
    match serde_json::to_vec(&A::evolve(state, &evolve.event)) {
        Ok(bytes) => Evolved::State(bytes),
        Err(e) => Evolved::Failed(format!("the state does not encode as JSON: {e}")),
    }
}

/// The outcome of `weir_handle` in an aggregate: it is not a handler.
#[must_use]
pub(crate) fn not_a_handler() -> Outcome {
    Outcome::Reject("an aggregate is not a handler: send it commands (POST /v1/commands/{type}/{key})".into())
}

/// A given/when/then test of an aggregate, run natively: the state folded
/// from `events`, then a command decided on it.
///
/// ```
/// # use serde::{Deserialize, Serialize};
/// # use weir_sdk::prelude::*;
/// # #[derive(Default, Serialize, Deserialize)] struct S { n: u64 }
/// # #[derive(Deserialize)] #[serde(rename_all = "snake_case")] enum C { Add { n: u64 } }
/// # struct A;
/// # impl Aggregate for A {
/// #     type State = S; type Command = C;
/// #     fn decide(s: &S, c: &C, ctx: &CommandContext) -> Result<Vec<Emit>, Rejection> {
/// #         let C::Add { n } = c;
/// #         if s.n + n > 10 { return Err(Rejection::new("over 10")); }
/// #         Ok(vec![ctx.event("added").json(&serde_json::json!({ "n": n }))?])
/// #     }
/// #     fn evolve(mut s: S, e: &Event) -> S { s.n += e.json::<serde_json::Value>().unwrap()["n"].as_u64().unwrap(); s }
/// # }
/// use weir_sdk::testing::{event, given};
/// let added = event("t.counter.added").key("c").json(&serde_json::json!({ "n": 8 })).build();
/// given::<A>([added.clone()])
///     .when(C::Add { n: 1 })
///     .then_emits(&[("t.counter.added", serde_json::json!({ "n": 1 }))]);
/// given::<A>([added]).when(C::Add { n: 3 }).then_rejects("over 10");
/// ```
pub fn given<A: Aggregate>(events: impl IntoIterator<Item = Event>) -> Given<A> {
    let events: Vec<Event> = events.into_iter().collect();
    let first = events.first();
    let entity_type = first
        .and_then(|e| e.topic.rsplit_once('.').map(|(t, _)| t.to_owned()))
        .unwrap_or_else(|| "test.entity".to_owned());
    let key = first.and_then(|e| e.key.clone()).unwrap_or_else(|| "test".to_owned());
    let revision = events.len().checked_sub(1).map(|r| r as u64);
    let state = events.iter().fold(A::State::default(), |s, e| A::evolve(s, e));
    Given { state, entity_type, key, revision, _aggregate: PhantomData }
}

/// The entity's state after the given events: see [`given`].
pub struct Given<A: Aggregate> {
    state: A::State,
    entity_type: String,
    key: String,
    revision: Option<u64>,
    _aggregate: PhantomData<A>,
}

impl<A: Aggregate> fmt::Debug for Given<A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Given").field("entity_type", &self.entity_type).field("key", &self.key).finish_non_exhaustive()
    }
}

impl<A: Aggregate> Given<A> {
    /// Decide on another entity than the one the first event names (or
    /// `test.entity`/`test` without events).
    #[must_use]
    pub fn entity(mut self, entity_type: impl Into<String>, key: impl Into<String>) -> Self {
        self.entity_type = entity_type.into();
        self.key = key.into();
        self
    }

    /// The state folded from the given events.
    #[must_use]
    pub fn state(&self) -> &A::State {
        &self.state
    }

    /// Decide `command` (the context names it `command`, with the
    /// idempotency key `test-command`).
    #[must_use]
    pub fn when(self, command: A::Command) -> When<A> {
        let ctx = CommandContext::new(self.entity_type, self.key, self.revision, "command", "test-command");
        let result = A::decide(&self.state, &command, &ctx);
        When { state: self.state, result }
    }
}

/// A decision made in a test: see [`given`].
pub struct When<A: Aggregate> {
    state: A::State,
    result: Result<Vec<Emit>, Rejection>,
}

impl<A: Aggregate> fmt::Debug for When<A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("When").field("result", &self.result).finish_non_exhaustive()
    }
}

impl<A: Aggregate> When<A> {
    /// The decision.
    pub fn result(&self) -> &Result<Vec<Emit>, Rejection> {
        &self.result
    }

    /// Assert the command was accepted with exactly these events (topic and
    /// JSON payload, in order); answers the state after them.
    ///
    /// # Panics
    ///
    /// When it was rejected or emitted other events: the test fails.
    #[allow(clippy::panic)]
    pub fn then_emits(self, expected: &[(&str, serde_json::Value)]) -> A::State {
        let emits = match self.result {
            Ok(emits) => emits,
            Err(r) => panic!("expected events, the command was rejected: {r}"),
        };
        let got: Vec<(String, serde_json::Value)> = emits
            .iter()
            .map(|e| (e.topic().to_owned(), serde_json::from_slice(e.payload()).unwrap_or(serde_json::Value::Null)))
            .collect();
        let want: Vec<(String, serde_json::Value)> =
            expected.iter().map(|(t, v)| ((*t).to_owned(), v.clone())).collect();
        assert_eq!(got, want, "the events the command caused");
        let mut state = self.state;
        for emit in emits {
            let abi = emit.into_abi();
            let event = crate::testing::event(abi.topic).bytes(abi.payload).build();
            state = A::evolve(state, &event);
        }
        state
    }

    /// Assert the command was rejected with a reason containing `reason`.
    ///
    /// # Panics
    ///
    /// When it was accepted or rejected for another reason.
    #[allow(clippy::panic)]
    pub fn then_rejects(self, reason: &str) -> Rejection {
        match self.result {
            Ok(emits) => panic!(
                "expected a rejection ({reason:?}), the command was accepted with {:?}",
                emits.iter().map(Emit::topic).collect::<Vec<_>>()
            ),
            Err(r) => {
                assert!(
                    r.reason().contains(reason),
                    "rejected with {:?}, expected a reason with {reason:?}",
                    r.reason()
                );
                r
            }
        }
    }
}
