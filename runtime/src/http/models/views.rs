//! The API's view bodies (`GET /v1/views/…`).

use serde::{Deserialize, Serialize};

/// `GET /v1/views/{view}/{key}`: one key of a view.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ViewResponse {
    /// The view.
    pub view: String,
    /// The key.
    pub key: String,
    /// Its state as an object: each state key with its value (the JSON it
    /// holds, else text, else `{"base64": …}`).
    pub value: serde_json::Map<String, serde_json::Value>,
    /// Every event before this log position is reflected (handled, or
    /// dead-lettered).
    pub position: u64,
    /// Whether `value` was cut (over 1,000 entries or 8 MiB).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub truncated: bool,
}

/// `GET /v1/views/{view}`: keys of a view with their values.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ViewListResponse {
    /// The view.
    pub view: String,
    /// In key order.
    pub items: Vec<ViewItem>,
    /// The position every item reflects.
    pub position: u64,
    /// The `after` of the next page, when there may be more.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
}

/// One key of [`ViewListResponse`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ViewItem {
    /// The key.
    pub key: String,
    /// Its state, as in [`ViewResponse::value`].
    pub value: serde_json::Map<String, serde_json::Value>,
    /// Whether `value` was cut.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub truncated: bool,
}
