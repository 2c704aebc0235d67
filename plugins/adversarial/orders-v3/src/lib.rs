//! A handler that accepts orders v3 only (the chain tests): it emits
//! `orders.order.seen` with the version, the part and the key it saw. The
//! part named in an order's `retry` fails its first attempt.

use serde_json::{Value, json};
use weir_sdk::prelude::*;

/// Record the v3 order it was given.
#[weir_sdk::handler(topics = ["orders.order.created"], schema_versions = [3])]
pub fn handle(event: &Event, ctx: &mut Context) -> Result<Vec<Emit>, HandlerError> {
    let order: Value = event.json()?;
    if order["part"].is_null() || !order["amount"].is_object() {
        return Err(HandlerError::reject(format!("not a v3 order: {order}")));
    }
    // A part named in `retry` fails its first attempt: the event is retried,
    // and the parts handled before it must not be handled again.
    if order["retry"].as_str() == order["part"].as_str() && ctx.attempt() == 1 {
        return Err(HandlerError::retry("retry this part once"));
    }
    let seen = json!({
        "id": order["id"],
        "version": event.schema_version,
        "part": order["part"],
        "idempotency_key": event.idempotency_key,
        "event_id": event.id.to_string(),
    });
    Ok(vec![event.emit("orders.order.seen").json(&seen)?])
}
