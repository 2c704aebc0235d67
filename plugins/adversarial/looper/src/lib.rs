//! Adversarial: on key `evil` the handler never returns. The host must stop
//! it (deadline or fuel) and serve the next event on a fresh instance. With
//! a configuration that mentions `loop_in_init`, `weir_init` never returns either.

use weir_sdk::prelude::*;

/// Loop forever when the configuration mentions `loop_in_init`.
#[weir_sdk::init]
pub fn init(config: &Config) -> Result<(), String> {
    if config.as_bytes().windows(12).any(|w| w == b"loop_in_init") {
        spin();
    }
    Ok(())
}

fn spin() -> ! {
    let mut n: u64 = 0;
    loop {
        n = std::hint::black_box(n.wrapping_add(1));
    }
}

/// Loop forever on `evil`, otherwise handle with no output.
#[weir_sdk::handler]
pub fn handle(event: &Event, _ctx: &mut Context) -> Result<Vec<Emit>, HandlerError> {
    if event.key.as_deref() == Some("evil") {
        spin();
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
