//! A buggy build of plugins/orders-upcaster, for `weir demo schemas`: it
//! reads a v1 `amount` as a whole number of euros, so every v1 order with
//! cents in its amount (`12.5`) fails to upcast, plainly, with a reason. The
//! host dead-letters those events as `upcast_failed`, keeping the v1 event as
//! stored; deploying the real upcaster and redriving them fixes it.

use serde_json::{Value, json};
use weir_sdk::prelude::*;

/// Turn one v1 order into v2 — wrongly for amounts with cents.
#[weir_sdk::upcaster(topic = "orders.order.created", from = 1, to = 2)]
pub fn upcast(event: &Event) -> Result<Vec<Upcast>, String> {
    let mut order: Value = serde_json::from_slice(&event.payload).map_err(|e| format!("not JSON: {e}"))?;
    // The bug: v1 amounts are euros, and euros have cents.
    let Some(amount) = order.get("amount").and_then(Value::as_u64) else {
        return Err(format!("amount {} is not a whole number of euros", order["amount"]));
    };
    order["amount"] = json!({ "value": amount, "currency": "EUR" });
    Ok(vec![Upcast::json(event, &order)?])
}

#[cfg(test)]
mod tests {
    use weir_sdk::testing::{event, upcast as run};

    use super::*;

    #[test]
    fn whole_amounts_pass_and_amounts_with_cents_fail() {
        let whole = event("orders.order.created").json(&json!({ "id": "a", "amount": 20 })).build();
        assert_eq!(run(upcast, 1, 2, &whole).unwrap().len(), 1);
        let cents = event("orders.order.created").json(&json!({ "id": "b", "amount": 12.5 })).build();
        assert_eq!(run(upcast, 1, 2, &cents).unwrap_err(), "amount 12.5 is not a whole number of euros");
    }
}
