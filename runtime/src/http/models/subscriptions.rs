//! The API's subscriptions bodies.

use serde::{Deserialize, Serialize};

/// `GET /v1/subscriptions`: configured subscriptions and orphans (data in
/// the store for a subscription the configuration no longer names).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubscriptionListResponse {
    /// By name.
    pub subscriptions: Vec<SubscriptionHoldings>,
}

/// One subscription and what the store holds for it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubscriptionHoldings {
    /// `<pipeline>/<handler>`.
    pub name: String,
    /// Whether the running configuration names it; `false` for an orphan.
    pub configured: bool,
    /// Its committed cursor (the next seq it reads), if it has one.
    pub cursor: Option<u64>,
    /// Parked events.
    pub parked: u64,
    /// DLQ entries.
    pub dlq: u64,
    /// Idempotency records (counted up to a cap).
    pub idempotency: u64,
    /// Whether it holds more idempotency records than counted.
    pub idempotency_capped: bool,
    /// Entries of its plugin deploy history.
    pub versions: u64,
    /// Events the retention policy would have removed but it still needs
    /// (last complete pass); absent when it holds nothing back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retention_held: Option<u64>,
    /// The oldest seq it still needs, when it holds retention back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retention_held_since: Option<u64>,
}

/// `DELETE /v1/subscriptions/{pipeline}/{handler}`: what was deleted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubscriptionDeleteResponse {
    /// The subscription as it was.
    pub deleted: SubscriptionHoldings,
}
