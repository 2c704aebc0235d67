//! Filter: passes on only orders whose `total_cents` is at least
//! `min_total_cents`, re-emitted on `output_topic` with the same payload; the
//! others are handled by emitting nothing.
//!
//! Configuration (optional):
//! `{ "min_total_cents": 10000, "output_topic": "orders.order.large" }`.

use std::sync::{Mutex, PoisonError};

use serde::Deserialize;
use weir_sdk::prelude::*;

/// The plugin's configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    /// The threshold.
    pub min_total_cents: u64,
    /// Where passing events go.
    pub output_topic: String,
}

impl Default for Settings {
    fn default() -> Self {
        Self { min_total_cents: 10_000, output_topic: "orders.order.large".into() }
    }
}

static SETTINGS: Mutex<Option<Settings>> = Mutex::new(None);

/// Read the threshold and output topic.
#[weir_sdk::init]
pub fn init(config: &Config) -> Result<(), String> {
    let settings: Settings = config.json()?;
    if settings.output_topic.split('.').count() != 3 {
        return Err(format!("output_topic {:?} is not <domain>.<entity>.<event>", settings.output_topic));
    }
    *SETTINGS.lock().unwrap_or_else(PoisonError::into_inner) = Some(settings);
    Ok(())
}

#[derive(Deserialize)]
struct Totalled {
    total_cents: u64,
}

/// Pass or drop one event.
#[weir_sdk::handler]
pub fn handle(event: &Event, _ctx: &mut Context) -> Result<Vec<Emit>, HandlerError> {
    let settings = SETTINGS.lock().unwrap_or_else(PoisonError::into_inner).clone().unwrap_or_default();
    let order: Totalled = event.json()?;
    if order.total_cents < settings.min_total_cents {
        return Ok(Vec::new());
    }
    Ok(vec![
        event
            .emit(settings.output_topic)
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
    fn passes_large_and_drops_small() {
        let big = testing::event("orders.order.enriched").json(&json!({ "total_cents": 10_000 })).build();
        let small = testing::event("orders.order.enriched").json(&json!({ "total_cents": 9_999 })).build();
        let out = handle(&big, &mut Context::new("s", 1)).unwrap();
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].payload(), big.payload.as_slice());
        assert!(handle(&small, &mut Context::new("s", 1)).unwrap().is_empty());
    }

    #[test]
    fn a_missing_total_is_a_rejection() {
        let event = testing::event("orders.order.enriched").json(&json!({ "id": 1 })).build();
        assert!(!handle(&event, &mut Context::new("s", 1)).unwrap_err().is_retry());
    }
}
