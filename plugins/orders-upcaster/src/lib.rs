//! Orders v1 → v2: in v1 `amount` is a number (in euros); in v2 it is
//! `{ "value": …, "currency": "EUR" }`. Applied by the host at delivery,
//! before a handler that accepts v2 only (plugins/orders-v2); the log keeps
//! the v1 events as they were published. A v1 payload without a numeric
//! `amount` cannot be converted: the upcaster fails it, and the event is
//! dead-lettered (`upcast_failed`) as stored.

use serde_json::{Value, json};
use weir_sdk::prelude::*;

/// The currency of every v1 order: v1 had only euros.
pub const V1_CURRENCY: &str = "EUR";

/// Turn one v1 order into its v2 form.
#[weir_sdk::upcaster(topic = "orders.order.created", from = 1, to = 2)]
pub fn upcast(event: &Event) -> Result<Vec<Upcast>, String> {
    let mut order: Value = serde_json::from_slice(&event.payload).map_err(|e| format!("not JSON: {e}"))?;
    let Some(amount) = order.get("amount").and_then(Value::as_f64) else {
        return Err("a v1 order needs a numeric `amount`".into());
    };
    order["amount"] = json!({ "value": amount, "currency": V1_CURRENCY });
    Ok(vec![Upcast::json(event, &order)?])
}

#[cfg(test)]
mod tests {
    use weir_sdk::testing::{event, upcast as run};

    use super::*;

    #[test]
    fn a_v1_amount_becomes_a_value_and_currency() {
        let v1 = event("orders.order.created").key("o-1").json(&json!({ "id": "o-1", "amount": 12.5 })).build();
        let v2 = run(upcast, 1, 2, &v1).unwrap();
        assert_eq!(v2.len(), 1);
        assert_eq!(v2[0].schema_version, 2);
        assert_eq!((v2[0].id, v2[0].key.as_deref()), (v1.id, Some("o-1")));
        let payload: Value = serde_json::from_slice(&v2[0].payload).unwrap();
        assert_eq!(payload, json!({ "id": "o-1", "amount": { "value": 12.5, "currency": "EUR" } }));
    }

    #[test]
    fn a_v1_order_without_amount_fails() {
        let v1 = event("orders.order.created").json(&json!({ "id": "o-2" })).build();
        assert!(run(upcast, 1, 2, &v1).unwrap_err().contains("amount"));
    }
}
