//! Flaky: asks the host to retry until attempt `succeed_on_attempt`
//! (default 3), then handles the event by emitting `flaky.event.handled`.
//! Key `always-retry` never succeeds. Used to test retries and backoff.

use std::sync::atomic::{AtomicU32, Ordering};

use serde::Deserialize;
use weir_sdk::prelude::*;

static SUCCEED_ON: AtomicU32 = AtomicU32::new(3);

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    succeed_on_attempt: Option<u32>,
}

/// Read `succeed_on_attempt`.
#[weir_sdk::init]
pub fn init(config: &Config) -> Result<(), String> {
    let settings: Settings = config.json()?;
    SUCCEED_ON.store(settings.succeed_on_attempt.unwrap_or(3), Ordering::Relaxed);
    Ok(())
}

/// Retry, then succeed.
#[weir_sdk::handler]
pub fn handle(event: &Event, ctx: &mut Context) -> Result<Vec<Emit>, HandlerError> {
    if event.key.as_deref() == Some("always-retry") || ctx.attempt() < SUCCEED_ON.load(Ordering::Relaxed) {
        return Err(HandlerError::retry(format!("dependency unavailable (attempt {})", ctx.attempt())));
    }
    Ok(vec![event.emit("flaky.event.handled").json(&serde_json::json!({ "attempt": ctx.attempt() }))?])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_then_succeeds() {
        let event = weir_sdk::testing::event("a.b.c").build();
        assert!(handle(&event, &mut Context::new("s", 1)).unwrap_err().is_retry());
        assert_eq!(handle(&event, &mut Context::new("s", 3)).unwrap().len(), 1);
        let stuck = weir_sdk::testing::event("a.b.c").key("always-retry").build();
        assert!(handle(&stuck, &mut Context::new("s", 99)).unwrap_err().is_retry());
    }
}
