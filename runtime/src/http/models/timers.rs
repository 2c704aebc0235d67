//! Durable timers: `GET /v1/subscriptions/{pipeline}/{handler}/timers`.

use super::*;

/// A page of a subscription's pending timers, by key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TimersResponse {
    /// `<pipeline>/<handler>`.
    pub subscription: String,
    /// Timers pending in all (not only on this page).
    pub pending: u64,
    /// In key order.
    pub timers: Vec<TimerInfo>,
    /// The `after` that continues the listing, when there may be more.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
}

/// One pending timer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TimerInfo {
    /// The key the handler gave it.
    pub key: String,
    /// At or after this it fires (Unix ms).
    pub fire_at_ms: u64,
    /// The same, RFC 3339.
    pub fire_at: String,
    /// The topic of the event it appends.
    pub topic: String,
    /// That event's id (the same however often the timer is retried).
    pub event_id: String,
    /// The event that scheduled it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub causation_id: Option<String>,
    /// The correlation id the event carries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub correlation_id: Option<String>,
}
