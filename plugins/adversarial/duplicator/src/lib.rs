//! A producer bug on purpose: every input is emitted twice on
//! `dup.event.copied`, both copies with the same idempotency key
//! (`copy-of-<input id>`). Downstream subscriptions must handle it once.
//!
//! An input on `echo.order.created` is instead echoed once on
//! `echo.order.echoed` under the input's own idempotency key: an emit that
//! reuses a producer's key, which a subscription that handled the input
//! must skip as a duplicate.

use weir_sdk::prelude::*;

/// Emit two copies with one idempotency key (or echo, see above).
#[weir_sdk::handler]
pub fn handle(event: &Event, _ctx: &mut Context) -> Result<Vec<Emit>, HandlerError> {
    if event.topic == "echo.order.created" {
        let echo = event
            .emit("echo.order.echoed")
            .idempotency_key(event.idempotency_key.clone())
            .bytes(event.payload.clone(), event.content_type.clone());
        return Ok(vec![echo]);
    }
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

    #[test]
    fn an_echo_keeps_the_inputs_key() {
        let event = weir_sdk::testing::event("echo.order.created").build();
        let out = handle(&event, &mut Context::new("s", 1)).unwrap();
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].as_abi().topic, "echo.order.echoed");
        assert_eq!(out[0].as_abi().idempotency_key.as_deref(), Some(event.idempotency_key.as_str()));
    }
}
