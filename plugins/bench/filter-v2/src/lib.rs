//! The benchmark suite's v2 handler (`schemas` scenario,
//! docs/benchmarks.md): the filter plugin's logic (pass on orders of at
//! least 100.00 to `orders.order.large`, payload unchanged, drop the rest)
//! on the bench orders v2, where the total is `total.cents`. It accepts v2
//! only, so v1 events reach it through plugins/bench/upcaster. The same
//! work per event as `filter`: one JSON parse into a small struct.

use serde::Deserialize;
use weir_sdk::prelude::*;

/// The threshold: the filter plugin's default.
pub const MIN_TOTAL_CENTS: u64 = 10_000;

#[derive(Deserialize)]
struct Total {
    cents: u64,
}

#[derive(Deserialize)]
struct Order {
    total: Total,
}

/// Pass or drop one v2 order.
#[weir_sdk::handler(topics = ["orders.order.created"], schema_versions = [2])]
pub fn handle(event: &Event, _ctx: &mut Context) -> Result<Vec<Emit>, HandlerError> {
    let order: Order = event.json()?;
    if order.total.cents < MIN_TOTAL_CENTS {
        return Ok(Vec::new());
    }
    Ok(vec![
        event
            .emit("orders.order.large")
            .schema_version(event.schema_version)
            .bytes(event.payload.clone(), event.content_type.clone()),
    ])
}

#[cfg(test)]
mod tests {
    use serde_json::json;
    use weir_sdk::testing;

    use super::*;

    #[test]
    fn passes_large_drops_small_and_rejects_v1() {
        let order = |cents: u64| {
            let mut e = testing::event("orders.order.created")
                .json(&json!({ "total": { "cents": cents, "currency": "EUR" } }))
                .build();
            e.schema_version = 2;
            e
        };
        assert_eq!(handle(&order(25_000), &mut Context::new("s", 1)).unwrap().len(), 1);
        assert!(handle(&order(1_500), &mut Context::new("s", 1)).unwrap().is_empty());
        let v1 = testing::event("orders.order.created").json(&json!({ "total_cents": 25_000 })).build();
        assert!(handle(&v1, &mut Context::new("s", 1)).is_err());
    }
}
