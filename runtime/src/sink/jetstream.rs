//! JetStream sinks: a subscription whose invocation is one JetStream publish,
//! waited for until its PubAck.
//!
//! Like a webhook sink, it is an [`Invoke`], so its subscription gives it a
//! cursor committed after each PubAck, per-key order (a key's later events
//! wait behind one being retried), retries with backoff, the DLQ and
//! redrive, status and metrics. The subscription's cursor over the log is
//! the outbox: an event is delivered when its PubAck came, and only then is
//! the cursor committed past it.
//!
//! Every publish carries `Nats-Msg-Id` = the event's id, the same on every
//! attempt and after a restart, so JetStream's duplicate window drops a
//! resend (a PubAck lost to a crash or a timeout). The envelope travels as
//! headers: `weir-*` (read back by a Weir JetStream source) and the
//! CloudEvents binary-mode `ce-*` attributes; the payload is the body as it
//! is.
//!
//! The publish runs on the NATS runtime ([`crate::source::Nats`]) and the
//! worker thread waits for it, bounded by the sink's `timeout`.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use async_nats::HeaderMap;
use async_nats::jetstream::message::PublishMessage;
use weir_abi::{DeliveryRef, Event};

use crate::config::JetStreamSinkConfig;
use crate::delivery::{Attempt, Failure, Invoke};
use crate::envelope::format_time;

/// Why one publish failed. Every one of them is retried: the stream may be
/// created, the server may come back.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub(crate) enum JetStreamSinkError {
    /// No connection to NATS could be made.
    #[error("{0}")]
    Connect(String),
    /// The publish failed (no stream for the subject, the server refused it).
    #[error("publish to {subject:?}: {reason}")]
    Publish {
        /// The subject.
        subject: String,
        /// Why.
        reason: String,
    },
    /// No PubAck within the sink's timeout.
    #[error("no PubAck for {subject:?} within {timeout:?}")]
    Timeout {
        /// The subject.
        subject: String,
        /// The sink's `timeout`.
        timeout: std::time::Duration,
    },
}

impl JetStreamSinkError {
    /// Stable code.
    #[must_use]
    pub(crate) fn code(&self) -> &'static str {
        match self {
            Self::Connect(_) => "jetstream_connect",
            Self::Publish { .. } => "jetstream_publish",
            Self::Timeout { .. } => "jetstream_timeout",
        }
    }
}

/// One JetStream sink: where it publishes, and its connection once made.
pub(crate) struct JetStreamSink {
    config: JetStreamSinkConfig,
    runtime: tokio::runtime::Handle,
    version: String,
    context: Option<async_nats::jetstream::Context>,
    connected: Arc<AtomicBool>,
}

impl std::fmt::Debug for JetStreamSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JetStreamSink").field("name", &self.config.name).field("subject", &self.config.subject).finish()
    }
}

impl JetStreamSink {
    /// A sink for `config`, publishing on `runtime`.
    pub(crate) fn new(config: JetStreamSinkConfig, runtime: tokio::runtime::Handle) -> Self {
        // The version recorded with each outcome says where events went.
        let identity = format!("jetstream\n{}\n{}", config.connection.url_text(), config.subject);
        let version = crate::engine::hex(&<sha2::Sha256 as sha2::Digest>::digest(identity.as_bytes()));
        Self { config, runtime, version, context: None, connected: Arc::new(AtomicBool::new(false)) }
    }

    fn deliver(&mut self, event: &Event) -> Result<(), JetStreamSinkError> {
        // In the NATS runtime's context for the whole attempt: the client
        // creates and drops tokio resources (timers, tasks) outside the
        // futures this thread blocks on too.
        let _context = self.runtime.enter();
        let subject = self.config.subject_for(&event.topic);
        let timeout = self.config.timeout;
        let context = match &self.context {
            Some(context) => context.clone(),
            None => {
                let name = format!("sink {}", self.config.name);
                let connecting = crate::source::connect(&self.config.connection, &name, Arc::clone(&self.connected));
                let client = self.runtime.block_on(connecting).map_err(JetStreamSinkError::Connect)?;
                let context = async_nats::jetstream::new(client);
                self.context = Some(context.clone());
                context
            }
        };
        let publish = PublishMessage::build().payload(event.payload.clone().into()).headers(headers(event)).message_id(
            if self.config.message_id_is_key { event.idempotency_key.clone() } else { event.id.to_string() },
        );
        let failed = |reason: String| JetStreamSinkError::Publish { subject: subject.clone(), reason };
        let answer = self.runtime.block_on(async {
            tokio::time::timeout(timeout, async {
                let ack = context.send_publish(subject.clone(), publish).await.map_err(|e| failed(e.to_string()))?;
                ack.await.map_err(|e| failed(e.to_string()))
            })
            .await
        });
        match answer {
            Ok(Ok(_ack)) => Ok(()),
            Ok(Err(e)) => Err(e),
            Err(_) => {
                // Connect again next time: a client whose connection is gone
                // may not come back by itself.
                self.context = None;
                Err(JetStreamSinkError::Timeout { subject, timeout })
            }
        }
    }
}

impl Drop for JetStreamSink {
    fn drop(&mut self) {
        // The client lets go of its tokio resources in the runtime's context.
        let _context = self.runtime.enter();
        self.context = None;
    }
}

/// The envelope as headers: `weir-*` for a Weir source, `ce-*` for any
/// CloudEvents reader, the event's own headers as they are.
pub(crate) fn headers(event: &Event) -> HeaderMap {
    let mut h = HeaderMap::new();
    let id = event.id.to_string();
    let time = format_time(event.time);
    h.insert("weir-id", id.as_str());
    h.insert("weir-topic", event.topic.as_str());
    h.insert("weir-source", event.source.as_str());
    h.insert("weir-time", time.as_str());
    h.insert("weir-schema-version", event.schema_version.to_string().as_str());
    h.insert("weir-idempotency-key", event.idempotency_key.as_str());
    if let Some(key) = &event.key {
        h.insert("weir-key", key.as_str());
        h.insert("ce-subject", key.as_str());
    }
    if let Some(c) = event.correlation_id {
        h.insert("weir-correlation-id", c.to_string().as_str());
    }
    if let Some(c) = event.causation_id {
        h.insert("weir-causation-id", c.to_string().as_str());
    }
    h.insert("ce-specversion", "1.0");
    h.insert("ce-id", id.as_str());
    h.insert("ce-type", event.topic.as_str());
    h.insert("ce-source", event.source.as_str());
    h.insert("ce-time", time.as_str());
    if !event.content_type.is_empty() {
        h.insert("Content-Type", event.content_type.as_str());
    }
    for header in &event.headers {
        // The cluster's host header stays inside Weir.
        if header.name != crate::cluster::PARTITION_HEADER {
            h.insert(header.name.as_str(), header.value.as_str());
        }
    }
    h
}

impl Invoke for JetStreamSink {
    fn invoke(&mut self, delivery: DeliveryRef<'_>) -> Attempt {
        let result = self.deliver(delivery.event).map_err(|error| Failure::new(error.code(), error.to_string(), true));
        Attempt::new(result.map(|()| Vec::new()))
    }

    fn name(&self) -> String {
        "jetstream".to_owned()
    }

    fn version(&self) -> String {
        self.version.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::JsonEvent;

    #[test]
    fn the_envelope_travels_as_headers() {
        let e = JsonEvent::from_json_line(
            r#"{"topic":"orders.order.created","key":"k1","headers":{"tenant":"acme"},"payload":{"n":1}}"#,
        )
        .unwrap()
        .into_event(&crate::ids::IdGenerator::new(), "weir:test")
        .unwrap();
        let h = headers(&e);
        let get = |n: &str| h.get(n).map(|v| v.as_str().to_owned());
        assert_eq!(get("weir-id"), Some(e.id.to_string()));
        assert_eq!(get("weir-topic").as_deref(), Some("orders.order.created"));
        assert_eq!(get("weir-key").as_deref(), Some("k1"));
        assert_eq!(get("ce-type").as_deref(), Some("orders.order.created"));
        assert_eq!(get("tenant").as_deref(), Some("acme"));
        assert_eq!(get("Content-Type").as_deref(), Some("application/json"));
    }
}
