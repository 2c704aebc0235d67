//! Adversarial: panics on key `evil` (a trap in Wasm), recurses without
//! bound on key `deep` (stack overflow), handles others.

use weir_sdk::prelude::*;

/// Panic on `evil`.
#[weir_sdk::handler]
pub fn handle(event: &Event, _ctx: &mut Context) -> Result<Vec<Emit>, HandlerError> {
    if event.key.as_deref() == Some("evil") {
        panic!("evil event {}", event.id);
    }
    if event.key.as_deref() == Some("deep") {
        return Ok(vec![event.emit("adversarial.panicker.depth").header("depth", depth(0).to_string())]);
    }
    Ok(vec![event.emit("adversarial.panicker.survived")])
}

/// Recurse forever; `black_box` keeps the frames from being optimised away.
#[allow(unconditional_recursion)]
fn depth(n: u64) -> u64 {
    std::hint::black_box(depth(std::hint::black_box(n + 1))) + 1
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
