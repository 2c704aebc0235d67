//! Records the store keeps, besides the events themselves.

use serde::{Deserialize, Serialize};
use weir_abi::{Event, EventId};

/// The answer to one published event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Published {
    /// The event's id; for a duplicate, the id stored the first time.
    pub id: EventId,
    /// Its position in the log.
    pub seq: u64,
    /// Whether the idempotency key was seen within the retention window, in
    /// which case nothing was stored.
    pub duplicate: bool,
}

/// What a subscription remembers about an idempotency key it handled.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct IdempotencyRecord {
    /// The event that was handled.
    pub event_id: EventId,
    /// Its sequence number.
    pub seq: u64,
    /// When (ms since the Unix epoch).
    pub handled_at_ms: u64,
    /// When the record may be forgotten.
    pub expires_at_ms: u64,
    /// First 16 bytes of the sha256 of the encoded emits, hex; empty when
    /// nothing was emitted.
    pub outcome_digest: String,
    /// Number of events emitted.
    pub emitted: u32,
    /// sha256 of the plugin module that handled it.
    pub plugin_version: String,
}

/// An event of a subscription that is neither handled nor dead-lettered:
/// waiting for a retry, or waiting behind an earlier event with the same key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ParkedEntry {
    /// Sequence number of the event.
    pub seq: u64,
    /// The event's key, for per-key ordering.
    pub key: Option<String>,
    /// Failed attempts so far (0 for an event only waiting behind its key).
    pub attempts: u32,
    /// When to try next (ms since the Unix epoch).
    pub next_attempt_at_ms: u64,
    /// First failure, if any.
    pub first_failure_ms: Option<u64>,
    /// Last failure, if any.
    pub last_failure_ms: Option<u64>,
    /// Code of the last failure.
    pub last_code: Option<String>,
    /// Message of the last failure.
    pub last_message: Option<String>,
}

impl ParkedEntry {
    /// An event with no failure yet, waiting for its turn: behind an earlier
    /// event with its key, or freshly redriven.
    #[must_use]
    pub fn waiting(seq: u64, key: Option<String>) -> Self {
        Self {
            seq,
            key,
            attempts: 0,
            next_attempt_at_ms: 0,
            first_failure_ms: None,
            last_failure_ms: None,
            last_code: None,
            last_message: None,
        }
    }
}

/// A dead-lettered event with everything needed to understand and redrive it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DlqEntry {
    /// The subscription it failed in.
    pub subscription: String,
    /// Its sequence number in the log.
    pub seq: u64,
    /// The whole event.
    pub event: Event,
    /// Plugin name.
    pub plugin: String,
    /// sha256 of the plugin module that failed it.
    pub plugin_version: String,
    /// Failure code (`handler_reject`, `timeout`, …).
    pub code: String,
    /// Failure message.
    pub message: String,
    /// Attempts made.
    pub attempts: u32,
    /// First failure (ms since the Unix epoch).
    pub first_failure_ms: u64,
    /// Last failure (ms since the Unix epoch).
    pub last_failure_ms: u64,
}

/// One entry of a handler's deploy history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionRecord {
    /// sha256 of the module: the version's identity.
    pub sha256: String,
    /// Module size in bytes.
    pub size: u64,
    /// ABI version it speaks.
    pub abi_version: u32,
    /// What the plugin says about itself (name, own version, topics).
    pub description: Option<weir_abi::PluginDescription>,
    /// When it became active (ms since the Unix epoch).
    pub deployed_at_ms: u64,
    /// Who or what deployed it, as given (`config`, `watch`, a user name).
    pub deployed_by: String,
    /// `config` (the initial version), `deploy`, `rollback` or `watch`.
    pub action: String,
}

/// Which DLQ entries an operation applies to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DlqFilter {
    /// Only this subscription.
    pub subscription: Option<String>,
    /// Only this failure code.
    pub code: Option<String>,
    /// Only this sequence number.
    pub seq: Option<u64>,
}

impl DlqFilter {
    /// Whether `entry` passes.
    #[must_use]
    pub fn matches(&self, entry: &DlqEntry) -> bool {
        self.subscription.as_ref().is_none_or(|s| *s == entry.subscription)
            && self.code.as_ref().is_none_or(|c| *c == entry.code)
            && self.seq.is_none_or(|s| s == entry.seq)
    }

    /// Whether the parts of the filter that the table key holds
    /// (subscription, seq) select the entry: for entries that cannot be
    /// decoded.
    #[must_use]
    pub fn matches_key(&self, subscription: &str, seq: u64) -> bool {
        self.subscription.as_deref().is_none_or(|s| s == subscription) && self.seq.is_none_or(|s| s == seq)
    }
}

/// Counters of one subscription, kept in the store.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubscriptionStats {
    /// Events handled (`Ok`).
    pub handled: u64,
    /// Events skipped as duplicates of a recorded idempotency key.
    pub duplicates: u64,
    /// Failed attempts that were scheduled for retry.
    pub retries: u64,
    /// Events moved to the DLQ.
    pub dead_lettered: u64,
    /// Events emitted by the handler.
    pub emitted: u64,
}

/// One outcome a subscription worker hands to the writer.
#[derive(Debug, Clone)]
pub(crate) enum ResultItem {
    /// Handled: record the key, append the emits, drop any parked entry.
    Handled {
        /// Sequence number of the input.
        seq: u64,
        /// Its idempotency key.
        key: String,
        /// The record.
        record: IdempotencyRecord,
        /// Whether the record is derived from the input's ingest claim
        /// rather than written (`derived.rs`).
        derived: bool,
        /// Emitted events, complete with ids, encoded.
        emits: Vec<super::EmitRecord>,
        /// Whether the event has a parked entry to drop (the worker knows:
        /// its parked map mirrors the table). Most events were never
        /// parked, and skipping the removal saves a tree search each.
        parked: bool,
        /// The handler's state writes, in order (empty for a stateless
        /// handler).
        state: Vec<super::StateWrite>,
        /// The handler's timer operations, in order (`timer.rs`).
        timers: Vec<super::TimerWrite>,
    },
    /// Skipped as a duplicate.
    Duplicate {
        /// Sequence number.
        seq: u64,
        /// Whether it has a parked entry to drop.
        parked: bool,
    },
    /// Parked (new or updated).
    Park(ParkedEntry),
    /// Dead-lettered.
    DeadLetter(Box<DlqEntry>),
}

/// The event a DLQ entry holds for a log record that does not decode
/// (code `record_corrupt`): the topic `weir.record.corrupt`, no payload,
/// from `weir://<subscription>`. A handler's quarantine and a consumer's
/// use the same stand-in.
pub(crate) fn corrupt_record_stand_in(subscription: &str, seq: u64) -> Event {
    Event {
        id: EventId([0; 16]),
        topic: "weir.record.corrupt".into(),
        source: format!("weir://{subscription}"),
        key: None,
        schema_version: 0,
        time: 0,
        content_type: "application/octet-stream".into(),
        headers: Vec::new(),
        idempotency_key: format!("weir-corrupt-record-{seq}"),
        correlation_id: None,
        causation_id: None,
        payload: Vec::new(),
    }
}
