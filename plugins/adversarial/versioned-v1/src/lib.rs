//! A plugin in two versions for the hot-swap tests, built from this one file
//! by two packages: `versioned-v1` rejects events whose key starts with
//! `bad`; `versioned-v2` (the fix) accepts every event. Both emit
//! `swap.event.handled` with `{ "version": N, "event_id": … }`.

use weir_sdk::prelude::*;

/// 1 or 2, from the package name.
pub const VERSION: u32 =
    if env!("CARGO_PKG_NAME").as_bytes()[env!("CARGO_PKG_NAME").len() - 1] == b'2' { 2 } else { 1 };

/// Handle one event.
#[weir_sdk::handler]
pub fn handle(event: &Event, _ctx: &mut Context) -> Result<Vec<Emit>, HandlerError> {
    if VERSION == 1 && event.key.as_deref().is_some_and(|k| k.starts_with("bad")) {
        return Err(HandlerError::reject("version 1 cannot handle keys starting with `bad`"));
    }
    Ok(vec![
        event
            .emit("swap.event.handled")
            .json(&serde_json::json!({ "version": VERSION, "event_id": event.id.to_string() }))?,
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn behaviour_follows_the_version() {
        let bad = weir_sdk::testing::event("a.b.c").key("bad-1").build();
        let result = handle(&bad, &mut Context::new("s", 1));
        assert_eq!(result.is_err(), VERSION == 1);
    }
}
