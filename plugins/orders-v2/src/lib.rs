//! A handler written for orders v2 only (`amount` as `{value, currency}`):
//! it declares `schema_versions = [2]`, so the host upcasts v1 events
//! (plugins/orders-upcaster) before it sees them, and refuses to start it
//! when no upcaster chain reaches v2. It emits `orders.order.seen` with the
//! version and amount it saw, and rejects a payload that is not v2.

use serde_json::{Value, json};
use weir_sdk::prelude::*;

/// Record the v2 order it was given.
#[weir_sdk::handler(topics = ["orders.order.created"], schema_versions = [2])]
pub fn handle(event: &Event, _ctx: &mut Context) -> Result<Vec<Emit>, HandlerError> {
    let order: Value = event.json()?;
    let amount = &order["amount"];
    let (Some(value), Some(currency)) = (amount["value"].as_f64(), amount["currency"].as_str()) else {
        return Err(HandlerError::reject(format!("not a v2 order: amount is {amount}")));
    };
    let seen = json!({
        "id": order["id"],
        "version": event.schema_version,
        "value": value,
        "currency": currency,
        "idempotency_key": event.idempotency_key,
    });
    Ok(vec![event.emit("orders.order.seen").json(&seen)?])
}

#[cfg(test)]
mod tests {
    use weir_sdk::testing::event;

    use super::*;

    #[test]
    fn a_v2_order_is_seen_and_a_v1_order_rejected() {
        let mut v2 = event("orders.order.created")
            .json(&json!({ "id": "a", "amount": { "value": 3, "currency": "USD" } }))
            .build();
        v2.schema_version = 2;
        let emits = handle(&v2, &mut Context::new("s", 1)).unwrap();
        let seen: Value = serde_json::from_slice(emits[0].payload()).unwrap();
        assert_eq!((seen["version"].as_u64(), seen["currency"].as_str()), (Some(2), Some("USD")));
        let v1 = event("orders.order.created").json(&json!({ "id": "b", "amount": 3 })).build();
        assert!(handle(&v1, &mut Context::new("s", 1)).is_err());
    }
}
