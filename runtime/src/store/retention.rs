//! Log retention and the log's time index.
//!
//! # The time index
//!
//! `log_time` maps a Unix second to the first seq appended (committed) in
//! it: one entry per second in which anything was appended, written by the
//! group that appended first in that second. Append times are the writer's,
//! forced not to go backwards, so the index is ordered both ways and "the
//! first event appended at or after time T" is one range lookup
//! ([`Store::seq_at_time`]), never a scan of the log. The resolution is one
//! second: a start at T includes what was appended earlier in T's second.
//! Producer-given event times play no part. Events appended before the
//! index existed (a store from an earlier build) count as appended before
//! any time.
//!
//! # Retention
//!
//! A pass runs in the writer between groups, with garbage collection (see
//! `gc.rs`), in transactions of its own, each reading at most
//! [`SCAN_BATCH`] records to account and examining at most
//! [`SWEEP_BATCH`] for removal, so publishes never wait long behind it.
//!
//! - The scan reads each appended record once (from the `scanned` mark on)
//!   and adds its stored bytes to the total of the rule its topic falls
//!   under (`retention_bytes`), and, for compacted rules, records the latest
//!   seq per (topic, key) (`compact_latest`). When the rules change, the
//!   totals are rebuilt by scanning the log again.
//! - The sweep walks the scanned log in seq order, from where it stopped,
//!   wrapping to the start. An event its rule lets go (older than a
//!   duration rule by append time; its rule's bytes over a size rule; or a
//!   later event with its topic and key under a compacted rule) is removed
//!   only if no subscription that may read it still needs it: every reader
//!   whose patterns match its topic has a low-water mark past it. A
//!   reader's mark is the least of its cursor, its first parked seq and its
//!   first DLQ seq: a parked event is re-read from the log, and a redriven
//!   DLQ entry comes back parked and is re-read from the log too, so both
//!   count as unprocessed. A subscription with a cursor that no one
//!   registered (an orphan, or a kind of reader that did not register its
//!   patterns) is taken to match every topic, so it holds everything
//!   behind its mark until `weir subscription delete` removes it.
//!   A removed event's entries in the id and causation indexes go with it.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use redb::{ReadableTable as _, ReadableTableMetadata as _, TableDefinition, WriteTransaction};

use super::codec::decode_event;
use super::command::Fatal;
use super::writer::Writes;
use super::{Store, StoreError, storage};
use crate::topic::Pattern;

/// Unix second → first seq appended in it.
pub(super) const LOG_TIME: TableDefinition<'_, u64, u64> = TableDefinition::new("log_time");
/// Marks of the pass: `fingerprint` (of the rules the totals were counted
/// under), `scanned` (next seq to account), `sweep` (next seq to examine).
pub(super) const RETENTION_STATE: TableDefinition<'_, &str, u64> = TableDefinition::new("retention_state");
/// Rule index (the default is `u64::MAX`) → stored bytes of the scanned
/// events it covers.
pub(super) const RETENTION_BYTES: TableDefinition<'_, u64, u64> = TableDefinition::new("retention_bytes");
/// (topic, key) → the latest seq with them, for compacted rules.
pub(super) const COMPACT_LATEST: TableDefinition<'_, (&str, &str), u64> = TableDefinition::new("compact_latest");

/// Most log records one transaction of the pass accounts.
pub(super) const SCAN_BATCH: usize = 4096;
/// Most log records one transaction of the pass examines for removal.
pub(super) const SWEEP_BATCH: usize = 4096;

/// The index of the default rule in `retention_bytes`.
const DEFAULT_RULE: u64 = u64::MAX;

/// How much of the log a rule keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Keep {
    /// Everything (the default).
    #[default]
    Forever,
    /// Events appended within this long.
    For(Duration),
    /// The newest events up to this many stored bytes.
    Bytes(u64),
}

impl Keep {
    /// Parse `"forever"`, a duration (`"7d"`, `"12h"`) or a size (`"10GiB"`,
    /// `"500MB"`, `"4096B"`).
    ///
    /// # Errors
    ///
    /// What the text should look like.
    pub fn parse(text: &str) -> Result<Self, String> {
        let t = text.trim();
        if t == "forever" {
            return Ok(Self::Forever);
        }
        if let Some(bytes) = parse_size(t) {
            return if bytes == 0 {
                Err(format!("{text:?}: a size must be more than 0"))
            } else {
                Ok(Self::Bytes(bytes))
            };
        }
        match humantime::parse_duration(t) {
            Ok(d) if !d.is_zero() => Ok(Self::For(d)),
            _ => Err(format!(
                "{text:?} is not \"forever\", a duration like \"7d\" or \"12h\", or a size like \"10GiB\" or \"500MB\""
            )),
        }
    }
}

/// `<number><unit>` with unit B, KB, MB, GB, TB (powers of 1000) or KiB,
/// MiB, GiB, TiB (powers of 1024).
fn parse_size(text: &str) -> Option<u64> {
    let digits = text.find(|c: char| !c.is_ascii_digit())?;
    let (number, unit) = text.split_at(digits);
    let number: u64 = number.parse().ok()?;
    let factor: u64 = match unit.trim() {
        "B" => 1,
        "KB" => 1000,
        "MB" => 1000u64.pow(2),
        "GB" => 1000u64.pow(3),
        "TB" => 1000u64.pow(4),
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "TiB" => 1 << 40,
        _ => return None,
    };
    number.checked_mul(factor)
}

/// One `[[retention.topics]]` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetentionRule {
    /// The topics it covers.
    pub pattern: Pattern,
    /// How much of them is kept.
    pub keep: Keep,
    /// Whether only the latest event per key is kept (events without a key
    /// are kept).
    pub compact: bool,
}

/// The log's retention: the first rule whose pattern matches an event's
/// topic decides; events no rule matches fall under `default`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RetentionPolicy {
    /// The rules, in order.
    pub rules: Vec<RetentionRule>,
    /// For the rest. By default [`Keep::Forever`].
    pub default: Keep,
}

impl RetentionPolicy {
    /// Whether it keeps everything (nothing to sweep).
    #[must_use]
    pub fn keeps_all(&self) -> bool {
        self.default == Keep::Forever && self.rules.iter().all(|r| r.keep == Keep::Forever && !r.compact)
    }

    /// The rule index for `topic` ([`DEFAULT_RULE`] for the default).
    fn rule_of(&self, topic: &str) -> u64 {
        self.rules.iter().position(|r| r.pattern.matches(topic)).map_or(DEFAULT_RULE, |i| i as u64)
    }

    fn rule(&self, index: u64) -> (Keep, bool) {
        usize::try_from(index)
            .ok()
            .and_then(|i| self.rules.get(i))
            .map_or((self.default, false), |r| (r.keep, r.compact))
    }

    /// Changes whenever the accounting must start again (FNV-1a of the
    /// rules' patterns and compaction; the kept amounts do not matter).
    fn fingerprint(&self) -> u64 {
        let mut text = String::new();
        if !self.keeps_all() {
            for r in &self.rules {
                text.push_str(&format!("{}|{};", r.pattern, r.compact));
            }
        }
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        for byte in text.bytes() {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
        hash
    }
}

/// Someone who reads the log and must not lose what it has not read: a
/// subscription's patterns, and optionally a position kept outside the
/// `cursors` table.
#[derive(Debug, Clone, Default)]
pub struct RetentionReader {
    /// The topics it reads; `None` for all of them.
    pub patterns: Option<Vec<Pattern>>,
    /// Its position, when it is not (only) in the `cursors` table: events
    /// at or after it are kept.
    pub position: Option<Arc<AtomicU64>>,
}

/// A subscription that kept events the policy would have removed, in the
/// last complete sweep.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HeldBack {
    /// How many events it kept.
    pub events: u64,
    /// Its low-water mark (the oldest seq it still needs).
    pub since_seq: u64,
}

/// What the pass needs and what it reports, shared with the store's handles.
#[derive(Debug, Default)]
pub(super) struct RetentionState {
    inner: Mutex<Inner>,
    /// Stored bytes of the accounted log, as of the last pass.
    log_bytes: AtomicU64,
}

#[derive(Debug, Default)]
struct Inner {
    policy: Arc<RetentionPolicy>,
    readers: BTreeMap<String, RetentionReader>,
    /// Of the last complete sweep.
    held: BTreeMap<String, HeldBack>,
    /// Of the sweep under way.
    holding: BTreeMap<String, HeldBack>,
}

impl RetentionState {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Record the second of this group's first append, if it is the first of
/// its second (see the time index above).
pub(super) fn index_time(txn: &WriteTransaction, first_seq: u64, head: u64, now_ms: u64) -> Result<(), Fatal> {
    if head == first_seq {
        return Ok(());
    }
    let second = now_ms / 1000;
    let mut table = txn.open_table(LOG_TIME)?;
    let last = table.last()?.map(|(k, _)| k.value());
    if last.is_none_or(|last| last < second) {
        table.insert(second, first_seq)?;
    }
    Ok(())
}

/// One transaction's share of the retention pass. Answers whether the pass
/// is done for now (the scan caught up and the sweep wrapped).
pub(super) fn sweep(w: &mut Writes<'_>, state: &RetentionState) -> Result<bool, Fatal> {
    let policy = Arc::clone(&state.lock().policy);
    let mut marks = w.txn.open_table(RETENTION_STATE)?;
    let mut bytes = w.txn.open_table(RETENTION_BYTES)?;
    let fingerprint = policy.fingerprint();
    if marks.get("fingerprint")?.map(|v| v.value()) != Some(fingerprint) {
        // New rules: count again from the start of the log.
        bytes.retain(|_, _| false)?;
        w.txn.open_table(COMPACT_LATEST)?.retain(|_, _| false)?;
        marks.insert("fingerprint", fingerprint)?;
        marks.insert("scanned", 0)?;
        marks.insert("sweep", 0)?;
    }
    let mut scanned = marks.get("scanned")?.map_or(0, |v| v.value());
    let mut sweep = marks.get("sweep")?.map_or(0, |v| v.value());

    // Scan: account what was appended since the last pass.
    let mut totals: BTreeMap<u64, u64> = BTreeMap::new();
    for entry in bytes.iter()? {
        let (k, v) = entry?;
        totals.insert(k.value(), v.value());
    }
    let mut read = 0;
    {
        let mut latest = w.txn.open_table(COMPACT_LATEST)?;
        for entry in w.log.range(scanned..)?.take(SCAN_BATCH) {
            let (k, v) = entry?;
            let (seq, record) = (k.value(), v.value());
            read += 1;
            scanned = seq + 1;
            let rule = if policy.keeps_all() {
                DEFAULT_RULE
            } else {
                match decode_event(record, || format!("log seq {seq}")) {
                    Ok(event) => {
                        let rule = policy.rule_of(&event.topic);
                        if policy.rule(rule).1
                            && let Some(key) = &event.key
                        {
                            latest.insert((event.topic.as_str(), key.as_str()), seq)?;
                        }
                        rule
                    }
                    Err(_) => DEFAULT_RULE,
                }
            };
            *totals.entry(rule).or_default() += record.len() as u64;
        }
    }
    let scan_done = read < SCAN_BATCH;

    // Sweep: remove what the rules let go and no reader still needs.
    let mut swept_to_end = true;
    let mut removed = 0u64;
    if !policy.keeps_all() {
        let marks_of = low_water_marks(w, state)?;
        let boundaries: BTreeMap<u64, u64> = (0..policy.rules.len() as u64)
            .chain([DEFAULT_RULE])
            .filter_map(|i| match policy.rule(i).0 {
                Keep::For(d) => {
                    let cut = w.now.saturating_sub(u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
                    Some((i, seq_at_time_in(w.txn, cut, w.head)))
                }
                _ => None,
            })
            .map(|(i, r)| r.map(|s| (i, s)))
            .collect::<Result<_, _>>()?;
        let mut doomed: Vec<Doomed> = Vec::new();
        let mut examined = 0;
        let mut holding: BTreeMap<String, HeldBack> = BTreeMap::new();
        {
            let latest = w.txn.open_table(COMPACT_LATEST)?;
            for entry in w.log.range(sweep..scanned)?.take(SWEEP_BATCH) {
                let (k, v) = entry?;
                let (seq, record) = (k.value(), v.value());
                examined += 1;
                sweep = seq + 1;
                // An event that does not decode is kept: its readers
                // quarantine it, and no rule can be told for it.
                let Ok(event) = decode_event(record, || format!("log seq {seq}")) else { continue };
                let rule = policy.rule_of(&event.topic);
                let (keep, compact) = policy.rule(rule);
                let total = totals.get(&rule).copied().unwrap_or(0);
                let expired = match keep {
                    Keep::Forever => false,
                    Keep::For(_) => boundaries.get(&rule).is_some_and(|cut| seq < *cut),
                    Keep::Bytes(limit) => total > limit,
                };
                let superseded = compact
                    && event.key.as_deref().is_some_and(|key| {
                        latest.get((event.topic.as_str(), key)).ok().flatten().is_some_and(|v| v.value() > seq)
                    });
                if !expired && !superseded {
                    continue;
                }
                let mut held = false;
                for (name, (mark, patterns)) in &marks_of {
                    let reads = patterns.as_ref().is_none_or(|ps| ps.iter().any(|p| p.matches(&event.topic)));
                    if reads && seq >= *mark {
                        held = true;
                        let h = holding.entry(name.clone()).or_insert(HeldBack { events: 0, since_seq: *mark });
                        h.events += 1;
                    }
                }
                if !held {
                    doomed.push(Doomed {
                        seq,
                        id: event.id.as_u128(),
                        cause: event.causation_id.map(|c| c.as_u128()),
                        compacted: event.key.filter(|_| compact).map(|key| (event.topic, key)),
                    });
                    if let Some(t) = totals.get_mut(&rule) {
                        *t = t.saturating_sub(record.len() as u64);
                    }
                }
            }
        }
        // The event's entries in the id and causation indexes go with it
        // (the id's only if it names this seq: a later copy keeps its own).
        // So does compaction's entry for its topic and key when it was the
        // last one (a duration or size rule removed it).
        let mut latest = w.txn.open_table(COMPACT_LATEST)?;
        for d in &doomed {
            w.log.remove(d.seq)?;
            if w.event_ids.get(d.id)?.is_some_and(|v| v.value() == d.seq) {
                w.event_ids.remove(d.id)?;
            }
            if let Some(cause) = d.cause {
                w.caused.remove((cause, d.seq))?;
            }
            if let Some((topic, key)) = &d.compacted
                && latest.get((topic.as_str(), key.as_str()))?.is_some_and(|v| v.value() == d.seq)
            {
                latest.remove((topic.as_str(), key.as_str()))?;
            }
            removed += 1;
        }
        swept_to_end = examined < SWEEP_BATCH;
        let mut inner = state.lock();
        for (name, h) in holding {
            let entry = inner.holding.entry(name).or_insert(HeldBack { events: 0, since_seq: h.since_seq });
            entry.events += h.events;
            entry.since_seq = h.since_seq;
        }
        if swept_to_end {
            inner.held = std::mem::take(&mut inner.holding);
        }
    } else {
        state.lock().held.clear();
    }
    if swept_to_end {
        sweep = 0;
        prune_time_index(w)?;
    }
    for (rule, total) in &totals {
        bytes.insert(*rule, *total)?;
    }
    marks.insert("scanned", scanned)?;
    marks.insert("sweep", sweep)?;
    state.log_bytes.store(totals.values().sum(), Ordering::Relaxed);
    if removed > 0 {
        tracing::debug!(removed, "retention removed log events");
    }
    Ok(scan_done && swept_to_end)
}

/// An event the sweep removes, and its entries in the indexes.
struct Doomed {
    seq: u64,
    id: u128,
    cause: Option<u128>,
    /// (topic, key) when its rule compacts.
    compacted: Option<(String, String)>,
}

/// Each reader's low-water mark (the least of its cursor, first parked
/// and first DLQ seq) and patterns: registered readers, and every
/// subscription with a cursor, parked or DLQ entries (taken to read every
/// topic unless registered).
type Marks = BTreeMap<String, (u64, Option<Vec<Pattern>>)>;

fn low_water_marks(w: &Writes<'_>, state: &RetentionState) -> Result<Marks, Fatal> {
    let readers = state.lock().readers.clone();
    let mut names: Vec<String> = readers.keys().cloned().collect();
    for entry in w.cursors.iter()? {
        names.push(entry?.0.value().to_owned());
    }
    names.extend(super::lifecycle::names_in(&w.parked)?);
    names.extend(super::lifecycle::names_in(&w.dlq)?);
    // A source's DLQ entries are keyed by stream position, not log seq,
    // and hold no log event.
    names.retain(|n| !n.starts_with(crate::config::SOURCE_PREFIX));
    names.sort();
    names.dedup();
    let mut marks = Marks::new();
    for name in names {
        let n = name.as_str();
        let mut mark = w.cursors.get(n)?.map_or(0, |v| v.value());
        if let Some((k, _)) = w.parked.range((n, 0)..=(n, u64::MAX))?.next().transpose()? {
            mark = mark.min(k.value().1);
        }
        if let Some((k, _)) = w.dlq.range((n, 0)..=(n, u64::MAX))?.next().transpose()? {
            mark = mark.min(k.value().1);
        }
        let reader = readers.get(&name);
        if let Some(position) = reader.and_then(|r| r.position.as_ref()) {
            mark = mark.min(position.load(Ordering::Acquire));
        }
        marks.insert(name, (mark, reader.and_then(|r| r.patterns.clone())));
    }
    Ok(marks)
}

/// The first seq appended at or after `ms` (to the second), or `head`.
fn seq_at_time_in(txn: &WriteTransaction, ms: u64, head: u64) -> Result<u64, Fatal> {
    let table = txn.open_table(LOG_TIME)?;
    Ok(table.range((ms / 1000)..)?.next().transpose()?.map_or(head, |(_, v)| v.value()))
}

/// Time index entries wholly before the log's first event go.
fn prune_time_index(w: &mut Writes<'_>) -> Result<(), Fatal> {
    let Some(first) = w.log.first()?.map(|(k, _)| k.value()) else { return Ok(()) };
    let mut table = w.txn.open_table(LOG_TIME)?;
    let mut doomed = Vec::new();
    let mut previous: Option<u64> = None;
    for entry in table.iter()?.take(SWEEP_BATCH) {
        let (k, v) = entry?;
        if v.value() > first {
            break;
        }
        // The entry before one that starts at or before `first` covers
        // only removed events.
        if let Some(p) = previous.replace(k.value()) {
            doomed.push(p);
        }
    }
    for second in doomed {
        table.remove(second)?;
    }
    Ok(())
}

/// Where a new subscription starts reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StartPosition {
    /// The start of the log (the default).
    #[default]
    Beginning,
    /// The head when the subscription is first started: only what is
    /// appended afterwards.
    End,
    /// This sequence number.
    Seq(u64),
    /// The first event appended at or after this time (ms since the Unix
    /// epoch, to the second), by append time, not by the events' own
    /// `time`.
    Time(u64),
}

impl StartPosition {
    /// Parse `"beginning"`, `"end"`, a sequence number or an RFC 3339 time.
    ///
    /// # Errors
    ///
    /// What the text should look like.
    pub fn parse(text: &str) -> Result<Self, String> {
        match text.trim() {
            "beginning" => Ok(Self::Beginning),
            "end" => Ok(Self::End),
            t if !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()) => {
                t.parse().map(Self::Seq).map_err(|e| format!("{text:?}: {e}"))
            }
            t => {
                let time = time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339).map_err(|e| {
                    format!(
                        "{text:?} is not \"beginning\", \"end\", a sequence number or an RFC 3339 time like \"2026-01-31T12:00:00Z\" ({e})"
                    )
                })?;
                let ms = time.unix_timestamp_nanos() / 1_000_000;
                Ok(Self::Time(u64::try_from(ms).unwrap_or(0)))
            }
        }
    }
}

impl Store {
    /// The first seq appended at or after `ms` (ms since the Unix epoch, to
    /// the second); the head when nothing was appended since. One range
    /// lookup in the time index.
    ///
    /// # Errors
    ///
    /// Storage errors.
    pub fn seq_at_time(&self, ms: u64) -> Result<u64, StoreError> {
        let read = self.shared.begin_read()?;
        let table = read.open_table(LOG_TIME).map_err(storage)?;
        let found = table.range((ms / 1000)..).map_err(storage)?.next().transpose().map_err(storage)?;
        Ok(found.map_or_else(|| self.head(), |(_, v)| v.value()))
    }

    /// The seq `from` names now.
    ///
    /// # Errors
    ///
    /// Storage errors.
    pub fn resolve_start(&self, from: StartPosition) -> Result<u64, StoreError> {
        Ok(match from {
            StartPosition::Beginning => 0,
            StartPosition::End => self.head(),
            StartPosition::Seq(seq) => seq,
            StartPosition::Time(ms) => self.seq_at_time(ms)?,
        })
    }

    /// Set the log's retention policy; the next pass applies it.
    pub fn set_retention(&self, policy: RetentionPolicy) {
        self.shared.retention.lock().policy = Arc::new(policy);
    }

    /// Register a reader retention must wait for (a subscription of any
    /// kind). Without it, a subscription with a row in the cursor table is
    /// taken to read every topic; with it, only events matching its
    /// patterns wait for it, and `position` (if given) holds back events
    /// from there on as well.
    pub fn register_reader(&self, name: &str, reader: RetentionReader) {
        self.shared.retention.lock().readers.insert(name.to_owned(), reader);
    }

    /// Forget a registered reader (its stored cursor, if any, still holds
    /// retention back until the subscription is deleted).
    pub fn unregister_reader(&self, name: &str) {
        self.shared.retention.lock().readers.remove(name);
    }

    /// The names of the registered readers: every running subscription of
    /// any kind (handlers, sinks, durable consumers).
    #[must_use]
    pub fn reader_names(&self) -> Vec<String> {
        self.shared.retention.lock().readers.keys().cloned().collect()
    }

    /// The subscriptions that kept events the policy would have removed,
    /// in the last complete sweep.
    #[must_use]
    pub fn retention_held(&self) -> BTreeMap<String, HeldBack> {
        self.shared.retention.lock().held.clone()
    }

    /// Stored bytes of the log's records, as of the last retention pass.
    #[must_use]
    pub fn log_bytes(&self) -> u64 {
        self.shared.retention.log_bytes.load(Ordering::Relaxed)
    }

    /// Entries in the time index (for tests and `/metrics`).
    ///
    /// # Errors
    ///
    /// Storage errors.
    pub fn time_index_len(&self) -> Result<u64, StoreError> {
        let read = self.shared.begin_read()?;
        read.open_table(LOG_TIME).map_err(storage)?.len().map_err(storage)
    }
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod sweep_tests;
