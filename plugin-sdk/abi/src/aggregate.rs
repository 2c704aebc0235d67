//! The messages of an aggregate (the write model of event sourcing): the
//! host asks `weir_decide` to decide a command on the entity's state, and
//! `weir_evolve` to fold one event into a state. Both exports are optional:
//! a module that has them both is an aggregate; ABI v1 handlers without
//! them load and run as before. Byte by byte in `docs/abi.md`.

use serde::{Deserialize, Serialize};

use crate::{Emit, Event};

/// A command sent to an entity: its name (`deposit`), its payload as the
/// client gave it, and the client's idempotency key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommandMsg {
    /// The command's name, e.g. `deposit`.
    pub name: String,
    /// Its payload (JSON text from the HTTP API).
    #[serde(with = "serde_bytes")]
    pub payload: Vec<u8>,
    /// Media type of the payload, `application/json` from the HTTP API.
    pub content_type: String,
    /// The client's idempotency key: a command sent again with it is
    /// answered by the host with its first result, without a new decision.
    pub idempotency_key: String,
}

/// What the host passes to `weir_decide`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Decide {
    /// The entity type, `<domain>.<entity>` (`accounts.account`).
    pub entity_type: String,
    /// The entity's key (`a-17`).
    pub key: String,
    /// The stream's current revision: the revision of its last event, -1
    /// when the stream has no event yet.
    pub revision: i64,
    /// The state after every event of the stream, as `weir_evolve` last
    /// answered it; `None` when the stream has no event.
    #[serde(with = "serde_bytes")]
    pub state: Option<Vec<u8>>,
    /// The command.
    pub command: CommandMsg,
}

/// The answer of `weir_decide`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Decision {
    /// The command is accepted: append these events (possibly none) to the
    /// entity's stream. Each must be of the entity's type; the host sets
    /// their key to the entity's.
    Accept(Vec<Emit>),
    /// The command is refused, with the reason the client is answered.
    Reject(String),
}

/// What the host passes to `weir_evolve`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Evolve {
    /// The state before the event; `None` before the stream's first event.
    #[serde(with = "serde_bytes")]
    pub state: Option<Vec<u8>>,
    /// The event to fold in.
    pub event: Event,
}

/// A borrowed [`Evolve`], encoding to the same bytes.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct EvolveRef<'a> {
    /// The state before the event.
    #[serde(with = "serde_bytes")]
    pub state: Option<&'a [u8]>,
    /// The event to fold in.
    pub event: &'a Event,
}

/// The answer of `weir_evolve`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Evolved {
    /// The state after the event.
    State(#[serde(with = "serde_bytes")] Vec<u8>),
    /// The aggregate cannot fold this event (its state or the event does
    /// not decode): a bug to fix, not a decision.
    Failed(String),
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{EventId, encoding};

    fn event() -> Event {
        Event {
            id: EventId::from_u128(7),
            topic: "accounts.account.opened".into(),
            source: "s".into(),
            key: Some("a".into()),
            schema_version: 1,
            time: 3,
            content_type: "application/json".into(),
            headers: Vec::new(),
            idempotency_key: "k".into(),
            correlation_id: None,
            causation_id: None,
            payload: b"{}".to_vec(),
        }
    }

    #[test]
    fn evolve_ref_encodes_as_evolve_and_messages_round_trip() {
        let e = event();
        let owned = Evolve { state: Some(b"{\"b\":1}".to_vec()), event: e.clone() };
        let borrowed = EvolveRef { state: Some(b"{\"b\":1}"), event: &e };
        assert_eq!(encoding::encode(&owned).unwrap(), encoding::encode(&borrowed).unwrap());
        assert_eq!(encoding::decode::<Evolve>(&encoding::encode(&owned).unwrap()).unwrap(), owned);
        let decide = Decide {
            entity_type: "accounts.account".into(),
            key: "a".into(),
            revision: -1,
            state: None,
            command: CommandMsg {
                name: "open".into(),
                payload: b"{}".to_vec(),
                content_type: "application/json".into(),
                idempotency_key: "c1".into(),
            },
        };
        assert_eq!(encoding::decode::<Decide>(&encoding::encode(&decide).unwrap()).unwrap(), decide);
        // The example of docs/abi.md 14.5, byte by byte.
        let mut expected = vec![16];
        expected.extend_from_slice(b"accounts.account");
        expected.extend_from_slice(&[1, b'a', 1, 0, 4]);
        expected.extend_from_slice(b"open");
        expected.extend_from_slice(&[2, b'{', b'}', 16]);
        expected.extend_from_slice(b"application/json");
        expected.extend_from_slice(&[2, b'c', b'1']);
        assert_eq!(encoding::encode(&decide).unwrap(), expected);
        // A state is a byte string: length, then the bytes (docs/abi.md).
        let bytes = encoding::encode(&Evolved::State(vec![1, 2])).unwrap();
        assert_eq!(bytes, [0, 2, 1, 2]);
        let rejected = encoding::encode(&Decision::Reject("no".into())).unwrap();
        assert_eq!(rejected, [1, 2, b'n', b'o']);
    }
}
