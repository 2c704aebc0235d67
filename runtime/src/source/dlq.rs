//! A source message that makes no event, as a DLQ entry of `sources/<name>`.
//!
//! The entry is committed in the same store transaction as the batch's
//! appends, before the message is terminated in JetStream, and it claims
//! the message's position in the ingest index as an appended message does:
//! a crash before the +TERM gets the message delivered again, and the store
//! recognises it by position and records nothing twice.
//!
//! The DLQ's record format is fixed (bincode, no room for new fields), so
//! the message is kept in the entry's event:
//!
//! | field | holds |
//! |---|---|
//! | `topic` | `weir.source.rejected` (the message has no usable one) |
//! | `idempotency_key` | the position key `src:<source>:<stream>@<created>:<stream seq>` |
//! | `time` | when JetStream stored the message |
//! | `headers` | first [`META`] (`weir-source-subject`, `-stream`, `-stream-seq`, `-payload-bytes`, `-truncated`), then the message's own headers, every value, in order |
//! | `payload` | the payload; one over `ingest.max_payload_bytes` only its first [`TRUNCATED_PAYLOAD_BYTES`] |
//!
//! The entry's `code` is `source_rejected`, its `message` the mapping's
//! code and reason (`no_topic: subject "in.bad" has fewer than three
//! tokens`). Its `seq` is the stream sequence (the next free number above
//! it if a stream of the same name, deleted and created again, left an
//! entry there).
//!
//! A redrive maps the stored message again with the source's current
//! configuration and appends the event, in one transaction that removes
//! the entry ([`Store::source_redrive`](crate::store::Store)); a message
//! that still makes no event, or whose payload or headers were truncated,
//! stays.

use async_nats::HeaderMap;
use weir_abi::{Event, Header};

use super::map::{Delivered, Rejection, map_message};
use crate::config::{SOURCE_PREFIX, SourceConfig};
use crate::ids::IdGenerator;
use crate::store::DlqEntry;

/// The topic of a rejected message's entry.
pub(crate) const REJECTED_TOPIC: &str = "weir.source.rejected";
/// The DLQ code of a rejected message.
pub(crate) const SOURCE_REJECTED: &str = "source_rejected";
/// What is kept of a payload over `ingest.max_payload_bytes`: enough to
/// recognise it, bounded whatever the stream's own limit is.
pub(crate) const TRUNCATED_PAYLOAD_BYTES: usize = 4096;
/// Most bytes of a message's own headers kept (names and values); past it
/// the rest are dropped and the entry says so. JetStream refuses more than
/// 64 KiB of headers today, but that is the server's limit, not Weir's; an
/// event's headers are held to 16 KiB (`ingest::MAX_HEADERS_BYTES`), so a
/// message past 32 KiB could hardly make an event anyway.
pub(crate) const STORED_HEADERS_BYTES: usize = 32 << 10;
/// The metadata headers, first in every entry, in this order.
pub(crate) const META: [&str; 5] = [
    "weir-source-subject",
    "weir-source-stream",
    "weir-source-stream-seq",
    "weir-source-payload-bytes",
    "weir-source-truncated",
];

/// The DLQ subscription of source `name`: `sources/<name>`.
pub(crate) fn subscription(name: &str) -> String {
    format!("{SOURCE_PREFIX}{name}")
}

/// The DLQ entry of a message `why` rejected. `position` is its position
/// key in the ingest index.
pub(crate) fn entry(
    config: &SourceConfig,
    ids: &IdGenerator,
    message: &Delivered<'_>,
    position: String,
    why: &Rejection,
    max_payload_bytes: usize,
    now_ms: u64,
) -> DlqEntry {
    let payload_truncated = message.payload.len() > max_payload_bytes;
    let payload = if payload_truncated {
        message.payload[..TRUNCATED_PAYLOAD_BYTES.min(message.payload.len())].to_vec()
    } else {
        message.payload.to_vec()
    };
    let mut own = Vec::new();
    let mut bytes = 0usize;
    let mut headers_truncated = false;
    let mut content_type = None;
    if let Some(map) = message.headers {
        'all: for (name, values) in map.iter() {
            let name: &str = <async_nats::HeaderName as AsRef<str>>::as_ref(name);
            for value in values {
                let value = value.as_str();
                bytes = bytes.saturating_add(name.len() + value.len());
                if bytes > STORED_HEADERS_BYTES {
                    headers_truncated = true;
                    break 'all;
                }
                if name.eq_ignore_ascii_case("content-type") && content_type.is_none() {
                    content_type = Some(value.to_owned());
                }
                own.push(Header { name: name.to_owned(), value: value.to_owned() });
            }
        }
    }
    let truncated = match (payload_truncated, headers_truncated) {
        (false, false) => "no",
        (true, false) => "payload",
        (false, true) => "headers",
        (true, true) => "payload,headers",
    };
    let meta = [
        message.subject.to_owned(),
        config.stream.clone(),
        message.stream_seq.to_string(),
        message.payload.len().to_string(),
        truncated.to_owned(),
    ];
    let mut headers: Vec<Header> =
        META.iter().zip(meta).map(|(name, value)| Header { name: (*name).to_owned(), value }).collect();
    headers.extend(own);
    DlqEntry {
        subscription: subscription(&config.name),
        seq: message.stream_seq,
        event: Event {
            id: ids.next_id(),
            topic: REJECTED_TOPIC.to_owned(),
            source: config.source.clone(),
            key: None,
            schema_version: 0,
            time: message.published,
            content_type: content_type.unwrap_or_else(|| config.content_type.clone()),
            headers,
            idempotency_key: position,
            correlation_id: None,
            causation_id: None,
            payload,
        },
        plugin: "jetstream".to_owned(),
        plugin_version: String::new(),
        code: SOURCE_REJECTED.to_owned(),
        message: format!("{}: {}", why.code, why.message),
        attempts: 1,
        first_failure_ms: now_ms,
        last_failure_ms: now_ms,
    }
}

/// A rejected message as its entry keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct StoredMessage {
    /// The subject it was published on.
    pub(crate) subject: String,
    /// The stream it was read from.
    pub(crate) stream: String,
    /// Its stream sequence.
    pub(crate) stream_seq: u64,
    /// Its payload's real size, in bytes.
    pub(crate) payload_bytes: u64,
    /// Whether only the first [`TRUNCATED_PAYLOAD_BYTES`] of the payload
    /// are kept.
    pub(crate) payload_truncated: bool,
    /// Whether headers past [`STORED_HEADERS_BYTES`] were dropped.
    pub(crate) headers_truncated: bool,
    /// The mapping's code (`no_topic`, `payload_too_large`, …).
    pub(crate) reason_code: String,
}

/// The message an entry of `sources/<name>` holds, if it is one.
#[must_use]
pub(crate) fn stored_message(entry: &DlqEntry) -> Option<StoredMessage> {
    if !entry.subscription.starts_with(SOURCE_PREFIX) || entry.code != SOURCE_REJECTED {
        return None;
    }
    let meta = entry.event.headers.get(..META.len())?;
    if meta.iter().zip(META).any(|(h, name)| h.name != name) {
        return None;
    }
    let truncated = meta[4].value.as_str();
    Some(StoredMessage {
        subject: meta[0].value.clone(),
        stream: meta[1].value.clone(),
        stream_seq: meta[2].value.parse().ok()?,
        payload_bytes: meta[3].value.parse().ok()?,
        payload_truncated: truncated.contains("payload"),
        headers_truncated: truncated.contains("headers"),
        reason_code: entry.message.split_once(": ").map_or("", |(code, _)| code).to_owned(),
    })
}

/// Why a stored message cannot be redriven.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum RedriveRefusal {
    /// The entry is not a source message Weir can read.
    #[error("{0} #{1} is not a stored source message")]
    NotAMessage(String, u64),
    /// Part of the message was not kept.
    #[error(
        "{0} #{1}: its {2} was truncated when it was dead-lettered, so it cannot be appended; publish it to the stream again"
    )]
    Truncated(String, u64, &'static str),
    /// It still makes no event with the current configuration.
    #[error("{0} #{1} still makes no event with the current configuration: {2}: {3}")]
    StillRejected(String, u64, &'static str, String),
}

/// Map the message `entry` holds again with `config` (the source's current
/// configuration): the event to append, or why not.
///
/// # Errors
///
/// The message was truncated, or it still makes no event.
pub(crate) fn remap(
    config: &SourceConfig,
    ids: &IdGenerator,
    max_payload_bytes: usize,
    schemas: &crate::schema::Schemas,
    entry: &DlqEntry,
) -> Result<Event, RedriveRefusal> {
    let name = || entry.subscription.clone();
    let stored = stored_message(entry).ok_or_else(|| RedriveRefusal::NotAMessage(name(), entry.seq))?;
    if stored.payload_truncated {
        return Err(RedriveRefusal::Truncated(name(), entry.seq, "payload"));
    }
    if stored.headers_truncated {
        return Err(RedriveRefusal::Truncated(name(), entry.seq, "headers"));
    }
    let own = &entry.event.headers[META.len()..];
    let mut map = HeaderMap::new();
    for h in own {
        map.append(h.name.as_str(), h.value.as_str());
    }
    let message = Delivered {
        subject: &stored.subject,
        headers: (!own.is_empty()).then_some(&map),
        payload: &entry.event.payload,
        stream_seq: stored.stream_seq,
        published: entry.event.time,
    };
    let still = |r: Rejection| RedriveRefusal::StillRejected(name(), entry.seq, r.code, r.message);
    let event = map_message(config, ids, max_payload_bytes, &message).map_err(still)?;
    schemas
        .check(&event.topic, event.schema_version, &event.payload)
        .map_err(|e| RedriveRefusal::StillRejected(name(), entry.seq, e.code(), e.to_string()))?;
    schemas.observe([&event]);
    Ok(event)
}
