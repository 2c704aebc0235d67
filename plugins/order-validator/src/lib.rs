//! Order validator: checks a new order and emits `orders.order.validated`
//! with its total, or rejects it with the reason (the host dead-letters it).
//!
//! Configuration (all optional):
//! `{ "currencies": ["EUR", "USD", "GBP"], "max_total_cents": 100000000 }`.

use std::sync::{Mutex, PoisonError};

use serde::{Deserialize, Serialize};
use weir_sdk::prelude::*;

/// An order as producers publish it on `orders.order.created`.
#[derive(Debug, Deserialize)]
pub struct Order {
    /// The order's id.
    pub order_id: String,
    /// Who ordered.
    pub customer: String,
    /// Three-letter currency code.
    pub currency: String,
    /// What was ordered.
    pub items: Vec<Item>,
}

/// One line of an order.
#[derive(Debug, Deserialize)]
pub struct Item {
    /// Stock-keeping unit.
    pub sku: String,
    /// How many.
    pub qty: u32,
    /// Unit price in cents.
    pub price_cents: u64,
}

/// The payload of `orders.order.validated`: only what downstream needs.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Validated {
    /// The order's id.
    pub order_id: String,
    /// Who ordered.
    pub customer: String,
    /// Sum of qty × price.
    pub total_cents: u64,
    /// Currency code.
    pub currency: String,
    /// Number of order lines.
    pub item_count: usize,
}

/// The plugin's configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    /// Accepted currency codes.
    pub currencies: Vec<String>,
    /// Orders above this total are rejected.
    pub max_total_cents: u64,
}

impl Default for Settings {
    fn default() -> Self {
        Self { currencies: vec!["EUR".into(), "USD".into(), "GBP".into()], max_total_cents: 100_000_000 }
    }
}

static SETTINGS: Mutex<Option<Settings>> = Mutex::new(None);

fn settings() -> Settings {
    SETTINGS.lock().unwrap_or_else(PoisonError::into_inner).clone().unwrap_or_default()
}

/// Read the configuration once per instance.
#[weir_sdk::init]
pub fn init(config: &Config) -> Result<(), String> {
    let parsed: Settings = config.json()?;
    if parsed.currencies.is_empty() {
        return Err("`currencies` must name at least one currency".into());
    }
    *SETTINGS.lock().unwrap_or_else(PoisonError::into_inner) = Some(parsed);
    Ok(())
}

/// Validate one order.
#[weir_sdk::handler(topics = ["orders.order.created"], schema_versions = [1])]
pub fn handle(event: &Event, _ctx: &mut Context) -> Result<Vec<Emit>, HandlerError> {
    let order: Order = event.json()?;
    let settings = settings();
    if order.order_id.trim().is_empty() {
        return Err(HandlerError::reject("order_id is empty"));
    }
    if order.items.is_empty() {
        return Err(HandlerError::reject(format!("order {} has no items", order.order_id)));
    }
    if !settings.currencies.contains(&order.currency) {
        return Err(HandlerError::reject(format!(
            "order {}: currency {:?} is not accepted (accepted: {})",
            order.order_id,
            order.currency,
            settings.currencies.join(", ")
        )));
    }
    let mut total: u64 = 0;
    for item in &order.items {
        if item.qty == 0 {
            return Err(HandlerError::reject(format!("order {}: item {} has quantity 0", order.order_id, item.sku)));
        }
        total = u64::from(item.qty)
            .checked_mul(item.price_cents)
            .and_then(|line| total.checked_add(line))
            .ok_or_else(|| HandlerError::reject(format!("order {}: total overflows", order.order_id)))?;
    }
    if total > settings.max_total_cents {
        return Err(HandlerError::reject(format!(
            "order {}: total {total} exceeds the limit {}",
            order.order_id, settings.max_total_cents
        )));
    }
    weir_sdk::debug!("order {} valid, total {total}", order.order_id);
    let validated = Validated {
        item_count: order.items.len(),
        order_id: order.order_id,
        customer: order.customer,
        total_cents: total,
        currency: order.currency,
    };
    Ok(vec![event.emit("orders.order.validated").json(&validated)?])
}

#[cfg(test)]
mod tests {
    use serde_json::json;
    use weir_sdk::testing;

    use super::*;

    fn order(items: serde_json::Value, currency: &str) -> Event {
        testing::event("orders.order.created")
            .key("o-1")
            .json(&json!({ "order_id": "o-1", "customer": "c-9", "currency": currency, "items": items }))
            .build()
    }

    #[test]
    fn valid_order_emits_validated_with_total() {
        let event = order(
            json!([{ "sku": "a", "qty": 2, "price_cents": 150 }, { "sku": "b", "qty": 1, "price_cents": 5 }]),
            "EUR",
        );
        let out = handle(&event, &mut Context::new("orders/validator", 1)).unwrap();
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].topic(), "orders.order.validated");
        let v: Validated = out[0].payload_json().unwrap();
        assert_eq!(v.total_cents, 305);
        assert_eq!(v.item_count, 2);
        assert_eq!(out[0].as_abi().causation_id, Some(event.id));
        assert_eq!(out[0].as_abi().key.as_deref(), Some("o-1"));
    }

    #[test]
    fn empty_order_is_rejected() {
        let err = handle(&order(json!([]), "EUR"), &mut Context::new("s", 1)).unwrap_err();
        assert!(matches!(err, HandlerError::Reject(ref r) if r.contains("no items")), "{err}");
    }

    #[test]
    fn unknown_currency_and_zero_quantity_are_rejected() {
        let err = handle(&order(json!([{ "sku": "a", "qty": 1, "price_cents": 1 }]), "XXX"), &mut Context::new("s", 1));
        assert!(err.unwrap_err().reason().contains("currency"));
        let err = handle(&order(json!([{ "sku": "a", "qty": 0, "price_cents": 1 }]), "EUR"), &mut Context::new("s", 1));
        assert!(err.unwrap_err().reason().contains("quantity 0"));
    }

    #[test]
    fn malformed_payload_is_rejected_not_retried() {
        let event = testing::event("orders.order.created").bytes(b"{not json".to_vec()).build();
        let err = handle(&event, &mut Context::new("s", 1)).unwrap_err();
        assert!(!err.is_retry());
    }

    #[test]
    fn init_refuses_an_empty_currency_list() {
        let config = Config::from_json(&json!({ "currencies": [] })).unwrap();
        assert!(init(&config).is_err());
        let config = Config::from_json(&json!({ "no_such_key": 1 })).unwrap();
        assert!(init(&config).unwrap_err().contains("no_such_key"));
    }
}
