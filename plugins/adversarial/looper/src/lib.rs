//! Adversarial: on key `evil` the handler never returns. The host must stop
//! it (deadline or fuel) and serve the next event on a fresh instance.

use weir_sdk::prelude::*;

/// Loop forever on `evil`, otherwise handle with no output.
#[weir_sdk::handler]
pub fn handle(event: &Event, _ctx: &mut Context) -> Result<Vec<Emit>, HandlerError> {
    if event.key.as_deref() == Some("evil") {
        let mut n: u64 = 0;
        loop {
            n = std::hint::black_box(n.wrapping_add(1));
        }
    }
    Ok(Vec::new())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn benign_events_pass() {
        let event = weir_sdk::testing::event("a.b.c").key("fine").build();
        assert!(handle(&event, &mut Context::new("s", 1)).unwrap().is_empty());
    }
}
