//! Webhook sinks: a subscription whose invocation is one signed HTTP POST.
//!
//! A sink is an [`Invoke`] like a Wasm handler, so it runs on its
//! subscription's worker thread and gets everything a subscription has: a
//! cursor committed with each outcome, per-key ordering, retries with
//! backoff, parking, the DLQ and redrive, status, metrics and the
//! dashboard. What is its own is here:
//!
//! - the request, per [Standard Webhooks](https://www.standardwebhooks.com/):
//!   `webhook-id` is the event's id (the same on every attempt, so a
//!   receiver de-duplicates), `webhook-timestamp` the attempt's time in
//!   seconds, `webhook-signature` `v1,<base64 HMAC-SHA256>` (`sign.rs`);
//!   the body the event's JSON envelope or a CloudEvent;
//! - the answer's meaning as a neutral [`Failure`]: 2xx delivered; 408,
//!   429, 5xx, timeouts and connection errors retried (`Retry-After`
//!   honoured); 410 turns the sink off until the next start; any other
//!   status is final (the DLQ).
//!
//! The HTTP client (`client.rs`) is a small blocking one over `std::net`,
//! bounded in time and in bytes read; plain `http://` only.

mod client;
mod jetstream;
mod sign;

pub(crate) use jetstream::{JetStreamSink, headers as jetstream_headers};

use serde_json::{Map, Value, json};
use weir_abi::{DeliveryRef, Event};

use crate::config::{SinkConfig, SinkFormat};
use crate::delivery::{Attempt, Disabler, Failure, Invoke};
use crate::envelope::{JsonEvent, format_time};

/// Why one delivery attempt failed. The code is what the DLQ, the failure
/// metrics and the parked entry record.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub(crate) enum WebhookError {
    /// No connection could be made.
    #[error("cannot connect to {url}: {reason}")]
    Connect {
        /// The sink's URL.
        url: String,
        /// Why.
        reason: String,
    },
    /// No complete answer within the sink's timeout.
    #[error("no answer from {url} within {timeout:?}")]
    Timeout {
        /// The sink's URL.
        url: String,
        /// The sink's `timeout`.
        timeout: std::time::Duration,
    },
    /// The connection failed while sending or reading.
    #[error("{url}: {reason}")]
    Io {
        /// The sink's URL.
        url: String,
        /// Why.
        reason: String,
    },
    /// Something that is not an HTTP/1 response came back.
    #[error("{url} answered with a malformed response: {reason}")]
    BadResponse {
        /// The sink's URL.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The receiver answered with a status other than 2xx.
    #[error("{url} answered {status}{}", if .excerpt.is_empty() { String::new() } else { format!(": {}", .excerpt) })]
    Status {
        /// The sink's URL.
        url: String,
        /// The HTTP status.
        status: u16,
        /// The start of the response body, escaped and cut.
        excerpt: String,
    },
}

impl WebhookError {
    /// Stable code.
    #[must_use]
    pub(crate) fn code(&self) -> &'static str {
        match self {
            Self::Connect { .. } => "webhook_connect",
            Self::Timeout { .. } => "webhook_timeout",
            Self::Io { .. } => "webhook_io",
            Self::BadResponse { .. } => "webhook_bad_response",
            Self::Status { status: 410, .. } => "webhook_gone",
            Self::Status { status: 408 | 429 | 500..=599, .. } => "webhook_unavailable",
            Self::Status { .. } => "webhook_rejected",
        }
    }

    /// Whether another attempt may succeed: everything but a final status
    /// (4xx other than 408 and 429, 3xx, 1xx). 410 is retryable here: the
    /// event waits for the sink to be turned on again.
    #[must_use]
    pub(crate) fn retryable(&self) -> bool {
        match self {
            Self::Status { status, .. } => matches!(status, 408 | 410 | 429 | 500..=599),
            _ => true,
        }
    }
}

/// One sink: what it posts where, and how to turn itself off.
pub(crate) struct WebhookSink {
    config: SinkConfig,
    version: String,
    disabler: Option<Disabler>,
}

impl std::fmt::Debug for WebhookSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookSink").field("name", &self.config.name).field("url", &self.config.url.text).finish()
    }
}

impl WebhookSink {
    /// A sink for `config`; `disabler` turns its subscription off on a 410.
    pub(crate) fn new(config: SinkConfig, disabler: Option<Disabler>) -> Self {
        // The version recorded with each outcome says where and in which
        // form events went, so a change of URL or format shows in history.
        let format = match config.format {
            SinkFormat::Envelope => "envelope",
            SinkFormat::CloudEvent => "cloudevent",
        };
        let identity = format!("webhook\n{}\n{format}", config.url.text);
        let version = crate::engine::hex(&<sha2::Sha256 as sha2::Digest>::digest(identity.as_bytes()));
        Self { config, version, disabler }
    }

    /// POST the event; the answer as an outcome.
    fn deliver(&self, event: &Event, attempt: u32) -> Result<(), Failure> {
        let (body, content_type) = render(self.config.format, event);
        let id = event.id.to_string();
        let timestamp = crate::clock::now_ms() / 1000;
        // One signature per secret, space-separated, as the specification
        // allows for rotation.
        let signature = self
            .config
            .secret
            .keys()
            .iter()
            .map(|key| sign::signature(key, &id, timestamp, &body))
            .collect::<Vec<_>>()
            .join(" ");
        let timestamp = timestamp.to_string();
        let headers = [
            ("Content-Type", content_type),
            ("webhook-id", id.as_str()),
            ("webhook-timestamp", timestamp.as_str()),
            ("webhook-signature", signature.as_str()),
        ];
        let response = client::post(&self.config.url, &headers, &body, self.config.timeout).map_err(failure)?;
        if (200..300).contains(&response.status) {
            return Ok(());
        }
        let error = WebhookError::Status {
            url: self.config.url.text.clone(),
            status: response.status,
            excerpt: crate::engine::bounded_text(
                &String::from_utf8_lossy(&response.excerpt),
                client::MAX_BODY_EXCERPT_BYTES,
            ),
        };
        if response.status == 410
            && let Some(disabler) = &self.disabler
        {
            tracing::warn!(sink = %self.config.name, url = %self.config.url.text, "the receiver answered 410 Gone: sink disabled until the next start");
            disabler.disable(format!("{error} (410 Gone): the sink is off until the runtime starts again"));
        }
        let retry_after = response.retry_after;
        let mut failure = failure(error);
        // Retry-After is honoured, and never sooner than the sink's own
        // backoff would wait.
        if let Some(wait) = retry_after
            && failure.retryable
        {
            failure = failure.with_retry_after(wait.max(self.config.retry.base_backoff(attempt)));
        }
        Err(failure)
    }
}

fn failure(error: WebhookError) -> Failure {
    Failure::new(error.code(), error.to_string(), error.retryable())
}

impl Invoke for WebhookSink {
    fn invoke(&mut self, delivery: DeliveryRef<'_>) -> Attempt {
        Attempt::new(self.deliver(delivery.event, delivery.attempt).map(|()| Vec::new()))
    }

    fn name(&self) -> String {
        "webhook".to_owned()
    }

    fn version(&self) -> String {
        self.version.clone()
    }
}

/// The request body and its content type.
pub(crate) fn render(format: SinkFormat, event: &Event) -> (Vec<u8>, &'static str) {
    let json = JsonEvent::from_event(event);
    match format {
        SinkFormat::Envelope => (serde_json::to_vec(&json).unwrap_or_default(), "application/json"),
        SinkFormat::CloudEvent => (cloudevent(event, json).to_string().into_bytes(), "application/cloudevents+json"),
    }
}

/// The event as a structured-mode CloudEvent 1.0: `type` is the topic, the
/// key is the `partitionkey` extension, the rest under `weir*` extensions.
fn cloudevent(event: &Event, json: JsonEvent) -> Value {
    let mut ce = Map::new();
    ce.insert("specversion".into(), json!("1.0"));
    ce.insert("id".into(), json!(event.id.to_string()));
    ce.insert("source".into(), json!(event.source));
    ce.insert("type".into(), json!(event.topic));
    ce.insert("time".into(), json!(format_time(event.time)));
    if !event.content_type.is_empty() {
        ce.insert("datacontenttype".into(), json!(event.content_type));
    }
    if let Some(key) = &event.key {
        ce.insert("partitionkey".into(), json!(key));
    }
    ce.insert("weirschemaversion".into(), json!(event.schema_version));
    if let Some(id) = event.correlation_id {
        ce.insert("weircorrelationid".into(), json!(id.to_string()));
    }
    if let Some(id) = event.causation_id {
        ce.insert("weircausationid".into(), json!(id.to_string()));
    }
    if let Some(data) = json.payload {
        ce.insert("data".into(), data);
    } else if let Some(b64) = json.payload_base64 {
        ce.insert("data_base64".into(), json!(b64));
    }
    Value::Object(ce)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event() -> Event {
        JsonEvent::from_json_line(r#"{"topic":"orders.order.created","key":"k1","payload":{"n":1}}"#)
            .unwrap()
            .into_event(&crate::ids::IdGenerator::new(), "weir:test")
            .unwrap()
    }

    #[test]
    fn statuses_map_to_codes_and_retries() {
        let status = |status| WebhookError::Status { url: "u".into(), status, excerpt: String::new() };
        for (s, code, retry) in [
            (500, "webhook_unavailable", true),
            (503, "webhook_unavailable", true),
            (408, "webhook_unavailable", true),
            (429, "webhook_unavailable", true),
            (410, "webhook_gone", true),
            (400, "webhook_rejected", false),
            (404, "webhook_rejected", false),
            (302, "webhook_rejected", false),
        ] {
            assert_eq!((status(s).code(), status(s).retryable()), (code, retry), "{s}");
        }
        assert!(WebhookError::Timeout { url: "u".into(), timeout: std::time::Duration::ZERO }.retryable());
    }

    #[test]
    fn both_bodies_carry_the_event() {
        let e = event();
        let (body, ct) = render(SinkFormat::Envelope, &e);
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            (ct, v["id"].as_str(), v["payload"]["n"].as_u64()),
            ("application/json", Some(&*e.id.to_string()), Some(1))
        );
        let (body, ct) = render(SinkFormat::CloudEvent, &e);
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(ct, "application/cloudevents+json");
        assert_eq!(
            (v["type"].as_str(), v["partitionkey"].as_str(), v["data"]["n"].as_u64()),
            (Some("orders.order.created"), Some("k1"), Some(1))
        );
        assert_eq!(v["specversion"], "1.0");
    }
}
