//! Orders v2 → v3 for the chain tests: v3 adds `part` (`"i/n"`). An order
//! with `"split": n` becomes n orders (one-to-many), one with
//! `"drop": true` becomes none; any other becomes one.

use serde_json::{Value, json};
use weir_sdk::prelude::*;

/// Split, drop or pass one v2 order.
#[weir_sdk::upcaster(topic = "orders.order.created", from = 2, to = 3)]
pub fn upcast(event: &Event) -> Result<Vec<Upcast>, String> {
    let order: Value = serde_json::from_slice(&event.payload).map_err(|e| e.to_string())?;
    if order["drop"].as_bool() == Some(true) {
        return Ok(Vec::new());
    }
    let parts = order["split"].as_u64().unwrap_or(1).max(1);
    (0..parts)
        .map(|i| {
            let mut part = order.clone();
            part["part"] = json!(format!("{}/{parts}", i + 1));
            Upcast::json(event, &part)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use weir_sdk::testing::event;

    use super::*;

    #[test]
    fn splits_and_drops() {
        let mut e = event("orders.order.created").json(&json!({ "split": 3 })).build();
        e.schema_version = 2;
        let out = weir_sdk::testing::upcast(upcast, 2, 3, &e).unwrap();
        assert_eq!(out.len(), 3);
        assert_ne!(out[0].idempotency_key, out[1].idempotency_key);
        e.payload = br#"{"drop":true}"#.to_vec();
        assert!(weir_sdk::testing::upcast(upcast, 2, 3, &e).unwrap().is_empty());
    }
}
