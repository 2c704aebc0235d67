//! Adversarial: panics on key `evil` (a trap in Wasm), handles others.

use weir_sdk::prelude::*;

/// Panic on `evil`.
#[weir_sdk::handler]
pub fn handle(event: &Event, _ctx: &mut Context) -> Result<Vec<Emit>, HandlerError> {
    if event.key.as_deref() == Some("evil") {
        panic!("evil event {}", event.id);
    }
    Ok(vec![event.emit("adversarial.panicker.survived")])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[should_panic(expected = "evil event")]
    fn evil_panics() {
        let event = weir_sdk::testing::event("a.b.c").key("evil").build();
        let _ = handle(&event, &mut Context::new("s", 1));
    }

    #[test]
    fn others_pass() {
        let event = weir_sdk::testing::event("a.b.c").build();
        assert_eq!(handle(&event, &mut Context::new("s", 1)).unwrap().len(), 1);
    }
}
