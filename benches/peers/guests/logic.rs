//! The handler logic of `plugins/filter` and `plugins/order-validator`, line
//! for line, without Weir's SDK: the peers' guests include this file and
//! wrap it in their own PDK's entry points, so all three engines run the
//! same decision on the same payload. Keep it in step with those plugins.

use std::sync::{Mutex, PoisonError};

use serde::{Deserialize, Serialize};

/// The filter's configuration (plugins/filter `Settings`, its defaults).
#[derive(Debug, Clone)]
pub struct FilterSettings {
    pub min_total_cents: u64,
    pub output_topic: String,
}

impl Default for FilterSettings {
    fn default() -> Self {
        Self { min_total_cents: 10_000, output_topic: "orders.order.large".into() }
    }
}

static FILTER_SETTINGS: Mutex<Option<FilterSettings>> = Mutex::new(None);

#[derive(Deserialize)]
struct Totalled {
    total_cents: u64,
}

/// The filter: `Some(output topic)` when the order passes (the payload is
/// re-emitted unchanged), `None` when it is dropped, `Err` for a payload
/// that is not an order (a rejection).
pub fn filter(payload: &[u8]) -> Result<Option<String>, String> {
    let settings = FILTER_SETTINGS.lock().unwrap_or_else(PoisonError::into_inner).clone().unwrap_or_default();
    let order: Totalled = serde_json::from_slice(payload).map_err(|e| e.to_string())?;
    if order.total_cents < settings.min_total_cents {
        return Ok(None);
    }
    Ok(Some(settings.output_topic))
}

#[derive(Debug, Deserialize)]
pub struct Order {
    pub order_id: String,
    pub customer: String,
    pub currency: String,
    pub items: Vec<Item>,
}

#[derive(Debug, Deserialize)]
pub struct Item {
    pub sku: String,
    pub qty: u32,
    pub price_cents: u64,
}

#[derive(Debug, Serialize)]
pub struct Validated {
    pub order_id: String,
    pub customer: String,
    pub total_cents: u64,
    pub currency: String,
    pub item_count: usize,
}

/// The order validator's configuration (plugins/order-validator, defaults).
#[derive(Debug, Clone)]
pub struct ValidatorSettings {
    pub currencies: Vec<String>,
    pub max_total_cents: u64,
}

impl Default for ValidatorSettings {
    fn default() -> Self {
        Self { currencies: vec!["EUR".into(), "USD".into(), "GBP".into()], max_total_cents: 100_000_000 }
    }
}

static VALIDATOR_SETTINGS: Mutex<Option<ValidatorSettings>> = Mutex::new(None);

/// The order validator: the `orders.order.validated` payload (JSON) and the
/// debug line Weir's plugin logs, or the rejection's reason.
pub fn validate(payload: &[u8]) -> Result<(Vec<u8>, String), String> {
    let order: Order = serde_json::from_slice(payload).map_err(|e| e.to_string())?;
    let settings = VALIDATOR_SETTINGS.lock().unwrap_or_else(PoisonError::into_inner).clone().unwrap_or_default();
    if order.order_id.trim().is_empty() {
        return Err("order_id is empty".into());
    }
    if order.items.is_empty() {
        return Err(format!("order {} has no items", order.order_id));
    }
    if !settings.currencies.contains(&order.currency) {
        return Err(format!(
            "order {}: currency {:?} is not accepted (accepted: {})",
            order.order_id,
            order.currency,
            settings.currencies.join(", ")
        ));
    }
    let mut total: u64 = 0;
    for item in &order.items {
        if item.qty == 0 {
            return Err(format!("order {}: item {} has quantity 0", order.order_id, item.sku));
        }
        total = u64::from(item.qty)
            .checked_mul(item.price_cents)
            .and_then(|line| total.checked_add(line))
            .ok_or_else(|| format!("order {}: total overflows", order.order_id))?;
    }
    if total > settings.max_total_cents {
        return Err(format!("order {}: total {total} exceeds the limit {}", order.order_id, settings.max_total_cents));
    }
    let log = format!("order {} valid, total {total}", order.order_id);
    let validated = Validated {
        item_count: order.items.len(),
        order_id: order.order_id,
        customer: order.customer,
        total_cents: total,
        currency: order.currency,
    };
    let json = serde_json::to_vec(&validated).map_err(|e| format!("cannot encode emitted payload: {e}"))?;
    Ok((json, log))
}
