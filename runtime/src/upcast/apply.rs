//! Running the chain on one event, in a subscription's worker: the worker
//! keeps its own instance of each upcaster (instances serve one call at a
//! time), started from the registry's current module and replaced when a
//! deploy bumps the registry's generation.

use std::sync::Arc;

use sha2::{Digest, Sha256};
use weir_abi::{Event, EventId, Header, UpcastEvent, UpcastRef};

use super::Upcasters;
use super::plan::{self, list};
use crate::delivery::Failure;
use crate::engine::{Handler, InstanceMode};
use crate::ingest::RESERVED_HEADER_PREFIX;

/// Most events one event may become at the end of its chain, all steps
/// together: each is one invocation of the handler.
pub(crate) const MAX_CHAIN_OUTPUTS: usize = crate::config::MAX_UPCAST_OUTPUTS;
/// Most bytes (payloads and headers) the events one event becomes may hold
/// together: a chain of fan-outs cannot multiply memory past this.
pub(crate) const MAX_CHAIN_BYTES: usize = 16 << 20;

/// Code of a dead letter whose upcaster failed.
pub(crate) const UPCAST_FAILED: &str = "upcast_failed";
/// Code of a dead letter whose version reaches no version the handler
/// accepts.
pub(crate) const UNSUPPORTED_VERSION: &str = "unsupported_version";

/// What the handler is given for one stored event.
#[derive(Debug)]
pub(crate) enum Delivered {
    /// The event as stored: no upcasting needed.
    AsStored,
    /// The events it became (none when an upcaster dropped it), each with
    /// its id and idempotency key: the input's when every step answered one
    /// event, derived from the input's and the output's index otherwise.
    Upcast(Vec<Event>),
}

/// A worker's own upcaster instances.
pub(crate) struct Local {
    shared: Arc<Upcasters>,
    generation: u64,
    instances: Vec<Option<Handler>>,
}

impl std::fmt::Debug for Local {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Local").field("generation", &self.generation).finish_non_exhaustive()
    }
}

fn is_reserved(name: &str) -> bool {
    name.get(..RESERVED_HEADER_PREFIX.len()).is_some_and(|p| p.eq_ignore_ascii_case(RESERVED_HEADER_PREFIX))
}

/// A derived id: the input's 48 bits of time (so ids still sort by time),
/// then 80 bits of sha256 over the input id, the version and the index.
fn derive_id(input: EventId, to: u32, index: usize) -> EventId {
    let mut hasher = Sha256::new();
    hasher.update(input.0);
    hasher.update(to.to_le_bytes());
    hasher.update((index as u64).to_le_bytes());
    let hash = hasher.finalize();
    let mut bytes = input.0;
    bytes[6..].copy_from_slice(&hash[..10]);
    EventId(bytes)
}

/// The event output `index` of `count` of one step becomes.
fn derive(input: &Event, out: UpcastEvent, to: u32, index: usize, count: usize) -> Event {
    let (id, idempotency_key) = if count == 1 {
        (input.id, input.idempotency_key.clone())
    } else {
        (derive_id(input.id, to, index), format!("{}~v{to}.{index}", input.idempotency_key))
    };
    // The host's headers are the host's: the input's stay, the plugin's go.
    let mut headers: Vec<Header> = out.headers.into_iter().filter(|h| !is_reserved(&h.name)).collect();
    headers.extend(input.headers.iter().filter(|h| is_reserved(&h.name)).cloned());
    Event {
        id,
        topic: input.topic.clone(),
        source: input.source.clone(),
        key: out.key,
        schema_version: to,
        time: input.time,
        content_type: out.content_type,
        headers,
        idempotency_key,
        correlation_id: input.correlation_id,
        causation_id: input.causation_id,
        payload: out.payload,
    }
}

fn event_bytes(e: &Event) -> usize {
    e.payload.len() + e.headers.iter().map(|h| h.name.len() + h.value.len()).sum::<usize>()
}

impl Local {
    pub(crate) fn new(shared: Arc<Upcasters>) -> Self {
        Self { generation: shared.generation(), instances: Vec::new(), shared }
    }

    /// What `event` is delivered as to a handler accepting `accepts`
    /// (empty: any version). A failure is final: the event is dead-lettered
    /// with the code `upcast_failed` or `unsupported_version`.
    pub(crate) fn deliver(
        &mut self,
        event: &Event,
        accepts: &[u32],
        max_payload_bytes: usize,
    ) -> Result<Delivered, Failure> {
        let route = plan::route(self.shared.edges(), &event.topic, event.schema_version, accepts).map_err(|u| {
            let chain = u.reached.iter().map(u32::to_string).collect::<Vec<_>>().join(" → ");
            Failure::new(
                UNSUPPORTED_VERSION,
                format!(
                    "version {} of {} reaches no version the handler accepts (chain {chain}; accepts {})",
                    event.schema_version,
                    event.topic,
                    list(accepts)
                ),
                false,
            )
        })?;
        if route.steps.is_empty() {
            return Ok(Delivered::AsStored);
        }
        if self.shared.generation() != self.generation {
            // A deploy: every instance is of an old module.
            self.generation = self.shared.generation();
            self.instances.clear();
        }
        let target = route.target;
        let mut current = vec![event.clone()];
        for index in route.steps {
            let mut next = Vec::new();
            let mut bytes = 0usize;
            for input in &current {
                let (to, outputs) = self.call(index, input, target)?;
                let count = outputs.len();
                for (j, out) in outputs.into_iter().enumerate() {
                    let derived = derive(input, out, to, j, count);
                    let fail = |why: String| {
                        Failure::new(UPCAST_FAILED, format!("delivered as version {target}: {why}"), false)
                    };
                    if derived.payload.len() > max_payload_bytes {
                        return Err(fail(format!(
                            "an upcast event has a payload of {} bytes, over the maximum of {max_payload_bytes}",
                            derived.payload.len()
                        )));
                    }
                    bytes = bytes.saturating_add(event_bytes(&derived));
                    next.push(derived);
                    if next.len() > MAX_CHAIN_OUTPUTS || bytes > MAX_CHAIN_BYTES {
                        return Err(fail(format!(
                            "the chain answers more than {MAX_CHAIN_OUTPUTS} events or {MAX_CHAIN_BYTES} bytes for one event"
                        )));
                    }
                }
            }
            current = next;
        }
        Ok(Delivered::Upcast(current))
    }

    /// Run upcaster `index` on `input`: answers its `to` and its outputs.
    fn call(&mut self, index: usize, input: &Event, target: u32) -> Result<(u32, Vec<UpcastEvent>), Failure> {
        let Some((config, plugin)) = self.shared.current(index) else {
            return Err(Failure::new(UPCAST_FAILED, format!("no upcaster #{index}"), false));
        };
        let (name, from, to, max_outputs) = (config.name.clone(), config.from, config.to, config.max_outputs);
        let fail = |code: &str, message: String| {
            Failure::new(
                UPCAST_FAILED,
                format!("delivered as version {target}: upcaster {name} ({from} → {to}) failed: {code}: {message}"),
                false,
            )
        };
        if self.instances.len() <= index {
            self.instances.resize_with(index + 1, || None);
        }
        let slot = &mut self.instances[index];
        if slot.is_none() {
            let started = plugin
                .handler(config.limits.clone(), Vec::new(), InstanceMode::Reuse)
                .map_err(|e| fail(e.code(), e.to_string()))?;
            *slot = Some(started);
        }
        let Some(instance) = slot.as_mut() else {
            return Err(fail("instantiate", "no instance".into()));
        };
        let call = instance.upcast(UpcastRef { from, to, event: input }, max_outputs);
        for line in &call.logs {
            tracing::debug!(target: "weir::plugin", upcaster = %name, level = line.level.as_str(), "{}", line.message);
        }
        call.result.map(|outputs| (to, outputs)).map_err(|e| fail(e.code(), e.message()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event() -> Event {
        Event {
            id: EventId::from_u128(0x0123_4567_89ab_cdef_0000_0000_0000_0001),
            topic: "o.o.c".into(),
            source: "s".into(),
            key: Some("k".into()),
            schema_version: 1,
            time: 5,
            content_type: "application/json".into(),
            headers: vec![Header::new("weir-plugin-version", "abc"), Header::new("x", "1")],
            idempotency_key: "ik".into(),
            correlation_id: None,
            causation_id: None,
            payload: b"{}".to_vec(),
        }
    }

    #[test]
    fn one_output_keeps_the_identity_and_several_derive_it() {
        let input = event();
        let out = |payload: &[u8]| UpcastEvent {
            key: Some("k2".into()),
            content_type: "application/json".into(),
            headers: vec![Header::new("WEIR-forged", "x"), Header::new("y", "2")],
            payload: payload.to_vec(),
        };
        let one = derive(&input, out(b"1"), 2, 0, 1);
        assert_eq!((one.id, one.idempotency_key.as_str(), one.schema_version), (input.id, "ik", 2));
        assert_eq!(one.headers, vec![Header::new("y", "2"), Header::new("weir-plugin-version", "abc")]);
        let a = derive(&input, out(b"a"), 2, 0, 2);
        let b = derive(&input, out(b"b"), 2, 1, 2);
        assert_eq!((a.idempotency_key.as_str(), b.idempotency_key.as_str()), ("ik~v2.0", "ik~v2.1"));
        assert_ne!(a.id, b.id);
        assert_ne!(a.id, input.id);
        assert_eq!(a.id.timestamp_ms(), input.id.timestamp_ms(), "derived ids keep the input's time");
        assert_eq!(a.id, derive(&input, out(b"other"), 2, 0, 2).id, "deterministic: the same input gives the same id");
    }
}
