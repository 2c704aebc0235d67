//! Reading the log: filtered pages by position, lookups by position and by
//! id, and an event's lineage (what caused it, what it caused). Every read
//! is bounded: a page by its `limit` and its bytes, a scan by the entries
//! and bytes it may look at, a lineage by its depth, its fan-out and its
//! bytes (and says when it was cut).

use weir_abi::{Event, EventId};

use super::Runtime;
use crate::store::{DlqEntry, ParkedEntry, ScanBounds, Seen, StoreError};
use crate::topic::Pattern;

/// Log entries one read may look at, matching or not: a sparse filter
/// answers with the position it got to (`next`) after this many, rather
/// than scan the whole log in one request.
pub const LOG_MAX_SCANNED: usize = 10_000;
/// Stored bytes one read may look at (at least one entry).
pub const LOG_MAX_SCANNED_BYTES: usize = 64 << 20;
/// Stored bytes of the events one read answers (at least one event).
pub const LOG_MAX_ANSWER_BYTES: usize = 8 << 20;
/// Topic patterns in one filter.
pub const LOG_MAX_TOPIC_PATTERNS: usize = 32;
/// Causes a lineage follows upward.
pub const LINEAGE_MAX_DEPTH: usize = 64;
/// Events caused by one event that a lineage lists.
pub const LINEAGE_MAX_CAUSED: usize = 1000;
/// Bytes of the events a lineage lists (payloads, plus
/// [`LINEAGE_EVENT_OVERHEAD`] each): 1,064 events of up to
/// `ingest.max_payload_bytes` would otherwise make one answer a gigabyte.
pub(crate) const LINEAGE_MAX_BYTES: usize = 8 << 20;
/// What a lineage counts for an event besides its payload (its envelope).
pub(crate) const LINEAGE_EVENT_OVERHEAD: usize = 256;

/// Which events a read answers: any of the topic patterns (all topics
/// when there is none) and, if given, this key.
#[derive(Debug, Clone, Default)]
pub struct LogFilter {
    /// Topic patterns (`*` one segment, `>` the rest); empty: every topic.
    pub topics: Vec<Pattern>,
    /// Only events with this key.
    pub key: Option<String>,
}

impl LogFilter {
    /// Whether `event` passes.
    #[must_use]
    pub fn matches(&self, event: &Event) -> bool {
        (self.topics.is_empty() || self.topics.iter().any(|p| p.matches(&event.topic)))
            && self.key.as_ref().is_none_or(|k| event.key.as_ref() == Some(k))
    }
}

/// One page of the log.
#[derive(Debug, Clone)]
pub struct LogPage {
    /// The matching events, by position.
    pub events: Vec<(u64, Event)>,
    /// Where the next read resumes (its `after`): the last position looked
    /// at, matching or not. `None` only when nothing was looked at and no
    /// position was given (the log is empty).
    pub next: Option<u64>,
    /// Whether the read got to the head of the log.
    pub caught_up: bool,
    /// The log's head when read: the position the next event will get.
    pub head: u64,
}

/// Where an event stands in one subscription.
#[derive(Debug, Clone)]
pub struct SubscriptionLineage {
    /// `<pipeline>/<handler>`.
    pub subscription: String,
    /// `handled`, `duplicate` (its idempotency key was handled before, at
    /// another position), `retrying`, `waiting` (behind an earlier event
    /// with its key), `dead_lettered`, `passed` (the cursor is past it, and
    /// no record says more: handled before its idempotency record expired,
    /// or before the subscription's start position) or `pending`.
    pub state: &'static str,
    /// The plugin version (sha256) that handled it, while its idempotency
    /// record is kept; else the version named by what it emitted.
    pub plugin_version: Option<String>,
    /// When it was handled (ms since the Unix epoch), while its record is
    /// kept.
    pub handled_at_ms: Option<u64>,
    /// What it emitted, by position.
    pub emitted: Vec<(u64, Event)>,
    /// Its retry state, when parked.
    pub parked: Option<ParkedEntry>,
    /// Its DLQ entry, when dead-lettered.
    pub dlq: Option<DlqEntry>,
}

/// An event's lineage: the chain of causes up to the producer's event, and
/// per subscription what became of it.
#[derive(Debug, Clone)]
pub struct Lineage {
    /// The event's position.
    pub seq: u64,
    /// The event.
    pub event: Event,
    /// Its causes, nearest first, up to [`LINEAGE_MAX_DEPTH`].
    pub causes: Vec<(u64, Event)>,
    /// Whether the chain goes on past the last cause listed (cut by
    /// [`LINEAGE_MAX_DEPTH`], or at 8 MiB of events listed): the lineage of
    /// that cause follows it further.
    pub causes_truncated: bool,
    /// Whether it caused more events than the subscriptions list (cut by
    /// [`LINEAGE_MAX_CAUSED`], or at 8 MiB of events listed; the first by
    /// position are listed).
    pub caused_truncated: bool,
    /// A cause the log does not hold (named by an emit, or removed).
    pub missing_cause: Option<EventId>,
    /// The subscriptions whose topics match it, and those that emitted
    /// something caused by it.
    pub subscriptions: Vec<SubscriptionLineage>,
}

impl Runtime {
    /// The events after `after` (from the start when `None`) that `filter`
    /// selects: up to `limit`, within the bounds of this module.
    ///
    /// # Errors
    ///
    /// Storage errors.
    pub fn read_log_page(&self, after: Option<u64>, filter: &LogFilter, limit: usize) -> Result<LogPage, StoreError> {
        let head = self.store.head();
        let bounds = ScanBounds {
            limit,
            max_answer_bytes: LOG_MAX_ANSWER_BYTES,
            max_scanned: LOG_MAX_SCANNED,
            max_scanned_bytes: LOG_MAX_SCANNED_BYTES,
        };
        let scan = self.store.scan_log(after, bounds, &|e| filter.matches(e))?;
        Ok(LogPage { events: scan.events, next: scan.last, caught_up: scan.at_head, head })
    }

    /// The event at position `seq`.
    ///
    /// # Errors
    ///
    /// Storage or decoding errors.
    pub fn log_event(&self, seq: u64) -> Result<Option<Event>, StoreError> {
        self.store.event(seq)
    }

    /// The event with this id and its position, through the id index.
    ///
    /// # Errors
    ///
    /// Storage or decoding errors.
    pub fn event_by_id(&self, id: EventId) -> Result<Option<(u64, Event)>, StoreError> {
        let Some(seq) = self.store.seq_of(id)? else { return Ok(None) };
        Ok(self.store.event(seq)?.map(|e| (seq, e)))
    }

    /// The lineage of the event with this id; `None` when the log does not
    /// hold it.
    ///
    /// # Errors
    ///
    /// Storage or decoding errors.
    pub fn lineage(&self, id: EventId) -> Result<Option<Lineage>, StoreError> {
        let Some((seq, event)) = self.event_by_id(id)? else { return Ok(None) };
        let size = |e: &Event| e.payload.len().saturating_add(LINEAGE_EVENT_OVERHEAD);
        let mut bytes = size(&event);
        // Upward: each cause through the id index.
        let mut causes = Vec::new();
        let mut missing_cause = None;
        let mut causes_truncated = false;
        let mut cause = event.causation_id;
        while let Some(cause_id) = cause {
            if causes.len() >= LINEAGE_MAX_DEPTH {
                causes_truncated = true;
                break;
            }
            match self.event_by_id(cause_id)? {
                Some((s, e)) => {
                    bytes = bytes.saturating_add(size(&e));
                    if bytes > LINEAGE_MAX_BYTES {
                        causes_truncated = true;
                        break;
                    }
                    cause = e.causation_id;
                    causes.push((s, e));
                }
                None => {
                    missing_cause = Some(cause_id);
                    break;
                }
            }
        }
        // Where each subscription of its topic stands, read before what
        // the event caused: a subscription's record and its emits commit
        // together, so one seen handled here has its emits in the reads
        // below (the other order could see the record and miss emits
        // committed in between).
        let mut probes: Vec<(String, Probe)> = Vec::new();
        for sub in self
            .subs
            .iter()
            .filter(|s| s.topics.iter().any(|t| Pattern::parse(t).is_ok_and(|p| p.matches(&event.topic))))
        {
            probes.push((sub.name.to_string(), self.probe(&sub.name, seq, &event)?));
        }
        // Downward: what it caused, by the subscription that emitted it
        // (an emit's source is `weir://<subscription>`).
        // One more than listed is asked for, to tell whether it was cut.
        let mut caused: Vec<(String, u64, Event)> = Vec::new();
        let mut caused_truncated = false;
        for (n, s) in self.store.caused_by(id, LINEAGE_MAX_CAUSED + 1)?.into_iter().enumerate() {
            if n == LINEAGE_MAX_CAUSED {
                caused_truncated = true;
                break;
            }
            if let Some(e) = self.store.event(s)? {
                bytes = bytes.saturating_add(size(&e));
                if bytes > LINEAGE_MAX_BYTES {
                    caused_truncated = true;
                    break;
                }
                let by = e.source.strip_prefix("weir://").unwrap_or("").to_owned();
                caused.push((by, s, e));
            }
        }
        for (by, _, _) in &caused {
            if !by.is_empty() && !probes.iter().any(|(name, _)| name == by) {
                probes.push((by.clone(), self.probe(by, seq, &event)?));
            }
        }
        let mut subscriptions = Vec::with_capacity(probes.len());
        for (name, probe) in probes {
            let emitted: Vec<(u64, Event)> =
                caused.iter().filter(|(by, _, _)| *by == name).map(|(_, s, e)| (*s, e.clone())).collect();
            subscriptions.push(subscription_lineage(name, seq, probe, emitted));
        }
        Ok(Some(Lineage { seq, event, causes, causes_truncated, caused_truncated, missing_cause, subscriptions }))
    }

    /// What the store says of the event at `seq` in `subscription`.
    fn probe(&self, subscription: &str, seq: u64, event: &Event) -> Result<Probe, StoreError> {
        Ok(Probe {
            dlq: self.store.dlq_entry(subscription, seq)?,
            parked: self.store.parked_entry(subscription, seq)?,
            // Every subscription probed reads the event's topic.
            seen: self.store.outcome(subscription, seq, event, &|_| true)?,
            cursor: self.store.cursor(subscription)?,
        })
    }
}

/// A subscription's entries for one event, read before its emits.
struct Probe {
    dlq: Option<crate::store::DlqEntry>,
    parked: Option<crate::store::ParkedEntry>,
    seen: Seen,
    cursor: u64,
}

/// Where the event at `seq` stands in `subscription`.
fn subscription_lineage(
    subscription: String,
    seq: u64,
    probe: Probe,
    emitted: Vec<(u64, Event)>,
) -> SubscriptionLineage {
    let Probe { dlq, parked, seen, cursor } = probe;
    let emitted_version = emitted.iter().find_map(|(_, e)| {
        e.headers.iter().find(|h| h.name == crate::delivery::VERSION_HEADER).map(|h| h.value.clone())
    });
    let mut lineage = SubscriptionLineage {
        subscription,
        state: "pending",
        plugin_version: emitted_version,
        handled_at_ms: None,
        emitted,
        parked: None,
        dlq: None,
    };
    if let Some(entry) = dlq {
        lineage.state = "dead_lettered";
        lineage.plugin_version = Some(entry.plugin_version.clone());
        lineage.dlq = Some(entry);
    } else if let Some(entry) = parked {
        lineage.state = if entry.attempts > 0 { "retrying" } else { "waiting" };
        lineage.parked = Some(entry);
    } else if let Seen::Recorded(record) = seen {
        if record.seq == seq {
            lineage.state = "handled";
            lineage.plugin_version = Some(record.plugin_version);
            lineage.handled_at_ms = Some(record.handled_at_ms);
        } else {
            lineage.state = "duplicate";
        }
    } else if let Seen::Derived(holder) = seen {
        // A record derived from the ingest claim keeps no time or version:
        // its emits, when it emitted, carry both (the version's first 16
        // digits in their header, the handling time as theirs).
        lineage.state = if holder == seq { "handled" } else { "duplicate" };
        if holder == seq {
            lineage.handled_at_ms =
                lineage.emitted.first().map(|(_, e)| u64::try_from(e.time / 1_000_000).unwrap_or_default());
        }
    } else if cursor > seq {
        // Past the cursor without a record: handled once its record
        // has expired (what it emitted says so), or never handled
        // because the subscription started after it (`from`) or read
        // it while it was not taken; the store cannot tell these apart.
        lineage.state = if lineage.emitted.is_empty() { "passed" } else { "handled" };
    }
    lineage
}
