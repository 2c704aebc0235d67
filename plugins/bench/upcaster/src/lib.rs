//! The benchmark suite's upcaster (`schemas` scenario, docs/benchmarks.md):
//! its orders v1 carry `total_cents` and `currency` side by side; v2 has
//! `total` as `{ "cents": …, "currency": … }`. One step of the kind a real
//! upcaster does: parse the payload, move two fields, write it back.

use serde_json::{Map, Value, json};
use weir_sdk::prelude::*;

/// Turn one v1 bench order into its v2 form.
#[weir_sdk::upcaster(topic = "orders.order.created", from = 1, to = 2)]
pub fn upcast(event: &Event) -> Result<Vec<Upcast>, String> {
    let mut order: Map<String, Value> = serde_json::from_slice(&event.payload).map_err(|e| format!("not JSON: {e}"))?;
    let cents = order.remove("total_cents").and_then(|v| v.as_u64()).ok_or("a v1 order needs `total_cents`")?;
    let currency = order.remove("currency").unwrap_or_else(|| json!("EUR"));
    order.insert("total".into(), json!({ "cents": cents, "currency": currency }));
    Ok(vec![Upcast::json(event, &order)?])
}

#[cfg(test)]
mod tests {
    use weir_sdk::testing::{event, upcast as run};

    use super::*;

    #[test]
    fn total_cents_and_currency_become_a_total() {
        let v1 = event("orders.order.created")
            .json(&json!({ "order_id": "o-1", "currency": "EUR", "total_cents": 1500, "items": 3 }))
            .build();
        let v2 = run(upcast, 1, 2, &v1).unwrap();
        let payload: Value = serde_json::from_slice(&v2[0].payload).unwrap();
        assert_eq!(payload, json!({ "order_id": "o-1", "items": 3, "total": { "cents": 1500, "currency": "EUR" } }));
        assert!(run(upcast, 1, 2, &event("orders.order.created").json(&json!({})).build()).is_err());
    }
}
