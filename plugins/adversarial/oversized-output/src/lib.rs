//! Adversarial: on key `big` emits one event of 5 MiB (over the default
//! 4 MiB output cap); on key `many` emits 2,000 events (over the default cap
//! of 1,000 emits). Other events pass with one small emit.

use weir_sdk::prelude::*;

/// Size of the oversized payload.
pub const BIG: usize = 5 << 20;
/// Number of emits on `many`.
pub const MANY: usize = 2_000;

/// Misbehave by key.
#[weir_sdk::handler]
pub fn handle(event: &Event, _ctx: &mut Context) -> Result<Vec<Emit>, HandlerError> {
    match event.key.as_deref() {
        Some("big") => {
            Ok(vec![event.emit("adversarial.oversized.big").bytes(vec![7u8; BIG], "application/octet-stream")])
        }
        Some("many") => Ok((0..MANY).map(|_| event.emit("adversarial.oversized.many")).collect()),
        _ => Ok(vec![event.emit("adversarial.oversized.small")]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_are_what_the_tests_expect() {
        let big = weir_sdk::testing::event("a.b.c").key("big").build();
        assert_eq!(handle(&big, &mut Context::new("s", 1)).unwrap()[0].payload().len(), BIG);
        let many = weir_sdk::testing::event("a.b.c").key("many").build();
        assert_eq!(handle(&many, &mut Context::new("s", 1)).unwrap().len(), MANY);
    }
}
