//! A producer bug on purpose: every input is emitted twice on
//! `dup.event.copied`, both copies with the same idempotency key
//! (`copy-of-<input id>`). Downstream subscriptions must handle it once.

use weir_sdk::prelude::*;

/// Emit two copies with one idempotency key.
#[weir_sdk::handler]
pub fn handle(event: &Event, _ctx: &mut Context) -> Result<Vec<Emit>, HandlerError> {
    let copy = || {
        event
            .emit("dup.event.copied")
            .idempotency_key(format!("copy-of-{}", event.id))
            .bytes(event.payload.clone(), event.content_type.clone())
    };
    Ok(vec![copy(), copy()])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_copies_one_key() {
        let event = weir_sdk::testing::event("a.b.c").build();
        let out = handle(&event, &mut Context::new("s", 1)).unwrap();
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].as_abi().idempotency_key, out[1].as_abi().idempotency_key);
    }
}
