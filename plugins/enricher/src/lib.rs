//! Enricher: adds derived fields to a validated order — a size tier and the
//! VAT share of the total — and emits `orders.order.enriched`.
//!
//! Configuration (optional): `{ "vat_percent": 20 }`.

use std::sync::atomic::{AtomicU32, Ordering};

use serde::{Deserialize, Serialize};
use weir_sdk::prelude::*;

/// Input: the validator's output.
#[derive(Debug, Deserialize)]
pub struct Validated {
    /// The order's id.
    pub order_id: String,
    /// Who ordered.
    pub customer: String,
    /// Total in cents, VAT included.
    pub total_cents: u64,
    /// Currency code.
    pub currency: String,
}

/// Output payload.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Enriched {
    /// The order's id.
    pub order_id: String,
    /// Who ordered.
    pub customer: String,
    /// Total in cents.
    pub total_cents: u64,
    /// Currency code.
    pub currency: String,
    /// `small` (< 10.00), `medium` (< 100.00) or `large`.
    pub tier: String,
    /// The VAT included in the total, in cents, rounded down.
    pub vat_cents: u64,
}

static VAT_PERCENT: AtomicU32 = AtomicU32::new(20);

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    #[serde(default = "default_vat")]
    vat_percent: u32,
}

fn default_vat() -> u32 {
    20
}

/// Read `vat_percent`.
#[weir_sdk::init]
pub fn init(config: &Config) -> Result<(), String> {
    let settings: Settings = config.json()?;
    if settings.vat_percent > 100 {
        return Err(format!("vat_percent must be at most 100, got {}", settings.vat_percent));
    }
    VAT_PERCENT.store(settings.vat_percent, Ordering::Relaxed);
    Ok(())
}

fn tier(total_cents: u64) -> &'static str {
    match total_cents {
        0..1_000 => "small",
        1_000..10_000 => "medium",
        _ => "large",
    }
}

/// Enrich one validated order.
#[weir_sdk::handler(topics = ["orders.order.validated"])]
pub fn handle(event: &Event, _ctx: &mut Context) -> Result<Vec<Emit>, HandlerError> {
    let order: Validated = event.json()?;
    let vat = u64::from(VAT_PERCENT.load(Ordering::Relaxed));
    // total = net * (100 + vat) / 100, so the VAT share is total * vat / (100 + vat).
    let vat_cents = u128::from(order.total_cents) * u128::from(vat) / u128::from(100 + vat);
    let enriched = Enriched {
        tier: tier(order.total_cents).to_owned(),
        vat_cents: vat_cents as u64,
        order_id: order.order_id,
        customer: order.customer,
        total_cents: order.total_cents,
        currency: order.currency,
    };
    Ok(vec![event.emit("orders.order.enriched").json(&enriched)?])
}

#[cfg(test)]
mod tests {
    use serde_json::json;
    use weir_sdk::testing;

    use super::*;

    #[test]
    fn adds_tier_and_vat() {
        let event = testing::event("orders.order.validated")
            .key("o-1")
            .json(&json!({ "order_id": "o-1", "customer": "c", "total_cents": 12_000, "currency": "EUR", "item_count": 1 }))
            .build();
        let out = handle(&event, &mut Context::new("s", 1)).unwrap();
        let e: Enriched = out[0].payload_json().unwrap();
        assert_eq!(e.tier, "large");
        assert_eq!(e.vat_cents, 2_000);
        assert_eq!(out[0].topic(), "orders.order.enriched");
    }

    #[test]
    fn tiers_have_sharp_edges() {
        assert_eq!(tier(999), "small");
        assert_eq!(tier(1_000), "medium");
        assert_eq!(tier(10_000), "large");
    }

    #[test]
    fn init_checks_the_rate() {
        assert!(init(&Config::from_json(&json!({ "vat_percent": 101 })).unwrap()).is_err());
        assert!(init(&Config::default()).is_ok());
    }
}
