//! Counter: a stateful handler. For every event it adds one to the count
//! of the event's key (in the key's state) and to the total of the
//! subscription (in the shared state), and emits `counter.key.counted`
//! with both. The state and the emitted event commit together, so the
//! counts it emits for a key are 1, 2, 3 … with no gap and no repeat,
//! whatever crashes or retries happen.
//!
//! Two kinds of keys exercise the all-or-nothing rule:
//! - `reject-…`: writes the state, then rejects the event; the writes are
//!   dropped with the outcome.
//! - `retry-…`: writes the state, then asks for a retry on the first
//!   attempt; the second attempt counts once.

use serde::Serialize;
use weir_sdk::prelude::*;

/// What the handler emits.
#[derive(Debug, Serialize)]
pub struct Counted {
    /// The event's key (null for a keyless event).
    pub key: Option<String>,
    /// How many events of this key the subscription has handled, this one
    /// included.
    pub count: u64,
    /// How many events the subscription has handled in all.
    pub total: u64,
}

/// Count the event.
#[weir_sdk::handler]
pub fn handle(event: &Event, ctx: &mut Context) -> Result<Vec<Emit>, HandlerError> {
    let count = ctx.state().get::<u64>("count")?.unwrap_or(0) + 1;
    ctx.state().put("count", &count)?;
    let total = ctx.shared_state().get::<u64>("total")?.unwrap_or(0) + 1;
    ctx.shared_state().put("total", &total)?;
    let key = event.key.clone();
    if key.as_deref().is_some_and(|k| k.starts_with("reject-")) {
        return Err(HandlerError::reject("rejected after writing state"));
    }
    if key.as_deref().is_some_and(|k| k.starts_with("retry-")) && ctx.attempt() == 1 {
        return Err(HandlerError::retry("retry after writing state"));
    }
    let mut emit = event.emit("counter.key.counted").json(&Counted { key: key.clone(), count, total })?;
    if let Some(key) = key {
        emit = emit.key(key);
    }
    Ok(vec![emit])
}

#[cfg(test)]
mod tests {
    use weir_sdk::testing::event;

    use super::*;

    fn count(emits: &[Emit]) -> u64 {
        serde_json::from_slice::<serde_json::Value>(emits[0].payload()).unwrap()["count"].as_u64().unwrap()
    }

    #[test]
    fn counts_per_key_and_in_all() {
        let mut ctx = Context::new("c/counter", 1);
        let a = event("t.e.x").key("a").build();
        let b = event("t.e.x").key("b").build();
        assert_eq!(count(&ctx.handle(handle, &a).unwrap()), 1);
        assert_eq!(count(&ctx.handle(handle, &a).unwrap()), 2);
        assert_eq!(count(&ctx.handle(handle, &b).unwrap()), 1);
        assert_eq!(ctx.state_of(Some("a")).get::<u64>("count").unwrap(), Some(2));
        assert_eq!(ctx.state_of(None).get::<u64>("total").unwrap(), Some(3));
    }

    #[test]
    fn a_rejected_event_leaves_the_state_as_it_was() {
        let mut ctx = Context::new("c/counter", 1);
        let bad = event("t.e.x").key("reject-1").build();
        assert!(ctx.handle(handle, &bad).is_err());
        assert_eq!(ctx.state_of(Some("reject-1")).get::<u64>("count").unwrap(), None);
        assert_eq!(ctx.state_of(None).get::<u64>("total").unwrap(), None);
    }
}
