//! A JetStream message as an event: topic, key, CloudEvents attributes,
//! and the envelope fields a Weir JetStream sink writes as headers.
//!
//! | field | from, first that is there |
//! |---|---|
//! | topic | header `weir-topic`; `ce-type`; the source's `topic` template; the subject's last three tokens |
//! | key | header `weir-key`; `ce-subject`; the subject token `key_token` |
//! | id | header `weir-id` (a Weir sink's); a new id |
//! | idempotency key | header `weir-idempotency-key`; `Nats-Msg-Id`; the CloudEvent's `ce:<source>#<id>`; `nats:<stream>:<stream seq>` |
//! | source | header `weir-source`; `ce-source`; the source's `source` (`nats:<stream>`) |
//! | time | header `weir-time` or `ce-time` (RFC 3339); when JetStream stored the message |
//! | content type | header `Content-Type`; `ce-datacontenttype`; the source's `content_type` |
//! | headers | every other header, but `Nats-*` ones and the `weir-*` ones above; `ce-*` extensions without the prefix |
//!
//! A message with `ce-specversion` is a binary-mode CloudEvent and goes
//! through the same code as one posted over HTTP (so its idempotency key is
//! the same whichever way it came).

use std::collections::BTreeMap;

use async_nats::HeaderMap;
use weir_abi::Event;

use crate::config::SourceConfig;
use crate::envelope::JsonEvent;
use crate::ids::IdGenerator;

/// What identifies a message besides its headers.
pub(crate) struct Delivered<'a> {
    pub(crate) subject: &'a str,
    pub(crate) headers: Option<&'a HeaderMap>,
    pub(crate) payload: &'a [u8],
    pub(crate) stream_seq: u64,
    /// When JetStream stored it, ns since the Unix epoch.
    pub(crate) published: i64,
}

/// Headers a Weir sink writes, turned back into envelope fields.
const WEIR_FIELDS: [&str; 9] = [
    "weir-topic",
    "weir-key",
    "weir-id",
    "weir-idempotency-key",
    "weir-source",
    "weir-time",
    "weir-schema-version",
    "weir-correlation-id",
    "weir-causation-id",
];

fn header<'a>(headers: Option<&'a HeaderMap>, name: &str) -> Option<&'a str> {
    let headers = headers?;
    headers
        .iter()
        .find(|(n, _)| <async_nats::HeaderName as AsRef<str>>::as_ref(n).eq_ignore_ascii_case(name))
        .and_then(|(_, v)| v.first())
        .map(async_nats::HeaderValue::as_str)
}

/// Why a message makes no event: a stable code (`payload_too_large`,
/// `no_topic`, `no_key`, `invalid_topic`, `field_too_large`, a schema
/// check's code, …) and the reason. The message is then dead-lettered as
/// `sources/<name>` (`dlq.rs`) and terminated in JetStream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Rejection {
    pub(crate) code: &'static str,
    pub(crate) message: String,
}

impl Rejection {
    pub(crate) fn new(code: &'static str, message: impl Into<String>) -> Self {
        Self { code, message: message.into() }
    }
}

impl std::fmt::Display for Rejection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

/// The event for `message`, or why it has none (the message is then
/// terminated in JetStream and counted as rejected). The source itself uses
/// [`map_message`]; this is the same mapping with a plain-text reason.
#[allow(dead_code)]
pub(crate) fn to_event(
    config: &SourceConfig,
    ids: &IdGenerator,
    max_payload_bytes: usize,
    message: &Delivered<'_>,
) -> Result<Event, String> {
    map_message(config, ids, max_payload_bytes, message).map_err(|r| r.message)
}

/// [`to_event`] with the rejection's stable code.
pub(crate) fn map_message(
    config: &SourceConfig,
    ids: &IdGenerator,
    max_payload_bytes: usize,
    message: &Delivered<'_>,
) -> Result<Event, Rejection> {
    if message.payload.len() > max_payload_bytes {
        return Err(Rejection::new(
            "payload_too_large",
            format!(
                "payload of {} bytes exceeds the maximum of {max_payload_bytes} bytes (ingest.max_payload_bytes)",
                message.payload.len()
            ),
        ));
    }
    let h = |name: &str| header(message.headers, name);
    let mut event = if h("ce-specversion").is_some() && h("weir-topic").is_none() {
        cloudevent(config, ids, message)?
    } else {
        plain(config, ids, message)?
    };
    if let Some(key) = h("weir-key") {
        event.key = Some(key.to_owned());
    } else if let Some(n) = config.key_token
        && event.key.is_none()
    {
        match message.subject.split('.').nth(n - 1) {
            Some(token) => event.key = Some(token.to_owned()),
            None => {
                return Err(Rejection::new(
                    "no_key",
                    format!("subject {:?} has no token {n} for the key", message.subject),
                ));
            }
        }
    }
    if let Some(key) = h("weir-idempotency-key").or_else(|| h("Nats-Msg-Id")) {
        event.idempotency_key = key.to_owned();
    }
    crate::ingest::check_event(&event).map_err(|e| Rejection::new(e.code(), e.to_string()))?;
    Ok(event)
}

/// A binary-mode CloudEvent: as over HTTP, with the subject's topic when
/// `ce-type` is not a topic.
fn cloudevent(config: &SourceConfig, ids: &IdGenerator, message: &Delivered<'_>) -> Result<Event, Rejection> {
    let mut raw: Vec<(&str, &[u8])> = Vec::new();
    let mut content_type = None;
    if let Some(headers) = message.headers {
        for (name, values) in headers.iter() {
            let name: &str = <async_nats::HeaderName as AsRef<str>>::as_ref(name);
            let Some(value) = values.first() else { continue };
            if name.eq_ignore_ascii_case("content-type") {
                content_type = Some(value.as_str());
            }
            if name.len() > 3 && name[..3].eq_ignore_ascii_case("ce-") {
                raw.push((name, value.as_str().as_bytes()));
            }
        }
    }
    let ct = content_type.unwrap_or(&config.content_type);
    raw.push(("content-type", ct.as_bytes()));
    let ingest = crate::ingest::Ingest { ids, source: &config.source, max_payload_bytes: usize::MAX, schemas: None };
    let mut events = ingest
        .cloudevent_binary(&raw, message.payload.to_vec())
        .map_err(|e| Rejection::new(e.code(), e.to_string()))?;
    events.pop().ok_or_else(|| Rejection::new("invalid_cloudevent", "the CloudEvent made no event"))
}

/// Any other message: topic from the headers or the subject.
fn plain(config: &SourceConfig, ids: &IdGenerator, message: &Delivered<'_>) -> Result<Event, Rejection> {
    let h = |name: &str| header(message.headers, name);
    let topic = match h("weir-topic").or_else(|| h("ce-type")) {
        Some(topic) => topic.to_owned(),
        None => config.topic.apply(message.subject).map_err(|e| Rejection::new("no_topic", e))?,
    };
    let mut headers = BTreeMap::new();
    if let Some(map) = message.headers {
        for (name, values) in map.iter() {
            let name: &str = <async_nats::HeaderName as AsRef<str>>::as_ref(name);
            let lower = name.to_ascii_lowercase();
            if lower.starts_with("nats-") || lower == "content-type" || WEIR_FIELDS.contains(&lower.as_str()) {
                continue;
            }
            if lower.starts_with("weir-") {
                // Reserved for the host; a stray one is dropped, not stored.
                continue;
            }
            let name = lower.strip_prefix("ce-").map_or_else(|| name.to_owned(), str::to_owned);
            if let Some(value) = values.first() {
                headers.entry(name).or_insert_with(|| value.as_str().to_owned());
            }
        }
    }
    let json = JsonEvent {
        id: h("weir-id").map(str::to_owned),
        topic,
        source: h("weir-source").or_else(|| h("ce-source")).map(str::to_owned).or_else(|| Some(config.source.clone())),
        key: None,
        schema_version: h("weir-schema-version")
            .map(|v| {
                v.parse().map_err(|_| {
                    Rejection::new("invalid_schema_version", format!("weir-schema-version {v:?} is not a number"))
                })
            })
            .transpose()?,
        time: h("weir-time").or_else(|| h("ce-time")).map(str::to_owned),
        content_type: None,
        headers,
        idempotency_key: None,
        correlation_id: h("weir-correlation-id").map(str::to_owned),
        causation_id: h("weir-causation-id").map(str::to_owned),
        payload: None,
        payload_base64: None,
    };
    let mut event = json.into_event(ids, &config.source).map_err(|e| Rejection::new(e.code(), e.to_string()))?;
    if h("weir-time").is_none() && h("ce-time").is_none() && message.published > 0 {
        // The time JetStream stored it: the same on every redelivery.
        event.time = message.published;
    }
    event.content_type =
        h("content-type").or_else(|| h("ce-datacontenttype")).unwrap_or(&config.content_type).to_owned();
    event.payload = message.payload.to_vec();
    event.idempotency_key = format!("nats:{}:{}", config.stream, message.stream_seq);
    Ok(event)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{NatsAuth, NatsConnection, TopicTemplate};

    fn config() -> SourceConfig {
        SourceConfig {
            name: "s".into(),
            connection: NatsConnection { urls: vec!["nats://127.0.0.1:1".into()], auth: NatsAuth::None },
            stream: "ORDERS".into(),
            subjects: Vec::new(),
            durable: "weir-s".into(),
            topic: TopicTemplate::LastThree,
            key_token: None,
            source: "nats:ORDERS".into(),
            content_type: "application/json".into(),
            batch: 10,
            ack_wait: std::time::Duration::from_secs(30),
        }
    }

    fn map(subject: &str, headers: &[(&str, &str)], payload: &[u8]) -> Result<Event, String> {
        let mut map = HeaderMap::new();
        for (n, v) in headers {
            map.insert(*n, *v);
        }
        let message = Delivered {
            subject,
            headers: (!headers.is_empty()).then_some(&map),
            payload,
            stream_seq: 7,
            published: 1_700_000_000_000_000_000,
        };
        to_event(&config(), &IdGenerator::new(), 1 << 20, &message)
    }

    #[test]
    fn subject_headers_and_defaults() {
        let e = map("in.orders.order.created", &[], br#"{"n":1}"#).unwrap();
        assert_eq!(
            (e.topic.as_str(), e.key.as_deref(), e.source.as_str()),
            ("orders.order.created", None, "nats:ORDERS")
        );
        assert_eq!(
            (e.idempotency_key.as_str(), e.time, e.content_type.as_str()),
            ("nats:ORDERS:7", 1_700_000_000_000_000_000, "application/json")
        );
        let e = map(
            "x.y",
            &[
                ("weir-topic", "a.b.c"),
                ("weir-key", "k1"),
                ("Nats-Msg-Id", "m-1"),
                ("tenant", "acme"),
                ("weir-other", "x"),
            ],
            b"",
        )
        .unwrap();
        assert_eq!((e.topic.as_str(), e.key.as_deref(), e.idempotency_key.as_str()), ("a.b.c", Some("k1"), "m-1"));
        assert_eq!(e.header("tenant"), Some("acme"));
        assert_eq!(e.headers.len(), 1, "{:?}", e.headers);
        assert!(map("orders.created", &[], b"").unwrap_err().contains("three tokens"));
        assert!(map("a.b.C", &[], b"").is_err(), "not a topic");
    }

    #[test]
    fn binary_cloudevents_are_understood() {
        let e = map(
            "whatever.subject.here",
            &[
                ("ce-specversion", "1.0"),
                ("ce-type", "orders.order.paid"),
                ("ce-source", "/shop"),
                ("ce-id", "42"),
                ("ce-subject", "o-9"),
                ("ce-tenant", "acme"),
            ],
            br#"{"paid":true}"#,
        )
        .unwrap();
        assert_eq!(
            (e.topic.as_str(), e.key.as_deref(), e.source.as_str()),
            ("orders.order.paid", Some("o-9"), "/shop")
        );
        assert_eq!(e.idempotency_key, crate::ingest::cloudevent_key("/shop", "42"));
        assert_eq!(e.header("tenant"), Some("acme"));
        assert!(map("a.b.c", &[("ce-specversion", "1.0")], b"").unwrap_err().contains("ce-type"));
    }

    #[test]
    fn the_saga_domain_is_rejected_from_the_subject_a_header_or_a_cloudevent() {
        let code = |subject: &str, headers: &[(&str, &str)]| {
            let mut map = HeaderMap::new();
            for (n, v) in headers {
                map.insert(*n, *v);
            }
            let message = Delivered {
                subject,
                headers: (!headers.is_empty()).then_some(&map),
                payload: b"{}",
                stream_seq: 7,
                published: 1,
            };
            map_message(&config(), &IdGenerator::new(), 1 << 20, &message).map(|_| ()).map_err(|r| r.code)
        };
        assert_eq!(code("in.weir-saga.order.timer", &[]), Err("reserved_topic"));
        assert_eq!(code("x.y", &[("weir-topic", "weir-saga.order.admin")]), Err("reserved_topic"));
        let ce =
            [("ce-specversion", "1.0"), ("ce-type", "weir-saga.order.failed"), ("ce-source", "/s"), ("ce-id", "1")];
        assert_eq!(code("a.b.c", &ce), Err("reserved_topic"));
        assert_eq!(code("in.orders.order.created", &[]), Ok(()));
    }
}
