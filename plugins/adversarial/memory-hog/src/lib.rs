//! Adversarial: on key `evil` the handler allocates until memory runs out.
//! The host's memory cap must refuse the growth and classify `memory_limit`.

use weir_sdk::prelude::*;

/// Allocate without bound on `evil`.
#[weir_sdk::handler]
pub fn handle(event: &Event, _ctx: &mut Context) -> Result<Vec<Emit>, HandlerError> {
    if event.key.as_deref() == Some("evil") {
        let mut hoard: Vec<Vec<u8>> = Vec::new();
        loop {
            // Touch the memory so the allocation is real.
            hoard.push(vec![1u8; 1 << 20]);
            std::hint::black_box(&hoard);
        }
    }
    Ok(Vec::new())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn benign_events_pass() {
        let event = weir_sdk::testing::event("a.b.c").build();
        assert!(handle(&event, &mut Context::new("s", 1)).unwrap().is_empty());
    }
}
