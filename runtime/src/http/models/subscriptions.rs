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
    /// Durable timers pending (absent from an older server's answer).
    #[serde(default)]
    pub timers: u64,
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

/// `GET /v1/subscriptions/{pipeline}/{handler}/state?key=…` (or `?shared`):
/// one scope of a stateful handler's committed state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StateResponse {
    /// `<pipeline>/<handler>`.
    pub subscription: String,
    /// The event key whose scope this is; null for the shared scope.
    pub key: Option<String>,
    /// In key order. A key is text (base64 in an object when it is not
    /// UTF-8); a value is the JSON it holds, or text, or base64 likewise.
    pub entries: Vec<StateEntryInfo>,
    /// The `after` that continues the listing, when there may be more.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
}

/// One entry of [`StateResponse`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StateEntryInfo {
    /// The key.
    pub key: serde_json::Value,
    /// The value.
    pub value: serde_json::Value,
}

/// `GET /v1/subscriptions/{pipeline}/{handler}/state` without a scope: the
/// scopes that hold state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateScopesResponse {
    /// `<pipeline>/<handler>`.
    pub subscription: String,
    /// Event keys with state, in order; the shared scope, when it holds
    /// anything, is `shared: true` instead.
    pub keys: Vec<String>,
    /// Whether the shared scope holds state (shown on the last page).
    pub shared: bool,
    /// The `after` that continues the listing, when there may be more.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
}
