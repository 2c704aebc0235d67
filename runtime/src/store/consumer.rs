//! Durable consumers' tables and commands: each consumer's settings and
//! cursor, and its pending deliveries. Every change (a fetch's deliveries
//! and attempt bumps, an ack, a nak, a term, a move to the DLQ, a redrive)
//! is one store command, so it commits atomically and is fsynced before
//! its caller is answered. The state machine itself is
//! [`crate::consumer::state`]; these commands load what it needs, run it,
//! and write what it changed.
//!
//! A store written before consumers existed simply has these tables empty:
//! they are created at open.

use std::collections::{BTreeMap, HashMap};

use redb::{ReadableTable, ReadableTableMetadata, TableDefinition};
use serde::{Deserialize, Serialize};
use weir_abi::Event;

use super::codec::{Encoded, Records, decode};
use super::command::{Apply, Command, Failure, Fatal, Order, Reply, next_record};
use super::writer::Writes;
use super::{DlqEntry, Store, StoreError, storage};
use crate::consumer::ConsumerError;
use crate::consumer::state::{
    AckAction, AckEffect, Consumer, ConsumerSpec, DeadLetter, Pending, Scanned, Stale, Token,
};
use crate::topic::Pattern;

/// name → encoded [`ConsumerRecord`].
pub(super) const CONSUMERS: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("consumers");
/// (consumer, seq) → encoded [`Pending`].
pub(super) const CONSUMER_PENDING: TableDefinition<'_, (&str, u64), &[u8]> = TableDefinition::new("consumer_pending");

/// The DLQ's subscription name of consumer `name`: `consumers/<name>`.
pub(crate) fn dlq_subscription(name: &str) -> String {
    format!("{}{name}", crate::consumer::DLQ_PREFIX)
}

/// A consumer as stored: its settings, where it started, and its cursor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct ConsumerRecord {
    pub(crate) spec: ConsumerSpec,
    /// The start position as given (`beginning`, `end`, a seq, a time).
    pub(crate) from: String,
    /// The next log seq not looked at yet.
    pub(crate) cursor: u64,
    pub(crate) created_at_ms: u64,
}

/// Where a consumer starts (or is reset to).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum StartAt {
    Beginning,
    End,
    Seq(u64),
    /// The first event appended at or after this time (ms since the Unix
    /// epoch, to the second).
    Time(u64),
}

/// The first seq of `start` in the log as this group sees it. A time
/// names the first event appended at or after it (to the second), through
/// the log's time index, as a handler's `from` does.
fn resolve(w: &Writes<'_>, start: &StartAt) -> Result<u64, Failure> {
    Ok(match start {
        StartAt::Beginning => 0,
        StartAt::End => w.head,
        StartAt::Seq(seq) => *seq,
        StartAt::Time(ms) => {
            let index = w.txn.open_table(super::retention::LOG_TIME)?;
            let first = index.range((ms / 1000)..)?.next().transpose()?.map(|(_, seq)| seq.value());
            first.unwrap_or(w.head)
        }
    })
}

fn load(w: &Writes<'_>, name: &str) -> Result<Option<ConsumerRecord>, Failure> {
    let table = w.txn.open_table(CONSUMERS)?;
    let Some(bytes) = table.get(name)? else { return Ok(None) };
    Ok(Some(decode(bytes.value(), || format!("consumer {name}"))?))
}

fn pending_seqs(w: &Writes<'_>, name: &str) -> Result<Vec<u64>, Failure> {
    let table = w.txn.open_table(CONSUMER_PENDING)?;
    let mut out = Vec::new();
    for entry in table.range((name, 0)..=(name, u64::MAX))? {
        out.push(entry?.0.value().1);
    }
    Ok(out)
}

fn event_at(w: &Writes<'_>, seq: u64) -> Result<Event, Failure> {
    let Some(bytes) = w.log.get(seq)? else {
        return Err(Failure::Refused(StoreError::Decode(format!("log seq {seq} is gone"))));
    };
    Ok(decode(bytes.value(), || format!("log seq {seq}"))?)
}

/// What a DLQ entry holds for a log record that does not decode: the
/// topic `weir.record.corrupt`, no payload (as a handler's quarantine).
fn stand_in(name: &str, seq: u64) -> Event {
    Event {
        id: weir_abi::EventId([0; 16]),
        topic: "weir.record.corrupt".into(),
        source: format!("weir://{}", dlq_subscription(name)),
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

fn dlq_entry(name: &str, dead: &DeadLetter, event: Event, now: u64) -> DlqEntry {
    DlqEntry {
        subscription: dlq_subscription(name),
        seq: dead.pending.seq,
        event,
        plugin: "consumer".into(),
        plugin_version: String::new(),
        code: dead.code.into(),
        message: dead.message.clone(),
        attempts: dead.pending.attempts,
        first_failure_ms: dead.pending.first_delivered_ms.unwrap_or(now),
        last_failure_ms: now,
    }
}

/// Create a consumer, or change an existing one's settings (its cursor
/// and pending deliveries stay; `from` only applies at creation).
pub(super) struct Put {
    pub(super) name: String,
    pub(super) spec: ConsumerSpec,
    pub(super) from: (String, StartAt),
    pub(super) max_consumers: usize,
}

impl Apply for Put {
    /// Whether it was created, and the record.
    type Answer = Result<(bool, ConsumerRecord), ConsumerError>;
    type Checked = Result<(bool, ConsumerRecord), ConsumerError>;

    fn check(&self, w: &Writes<'_>, encoded: &mut Encoded) -> Result<Self::Checked, Failure> {
        let (created, record) = match load(w, &self.name)? {
            Some(existing) => (false, ConsumerRecord { spec: self.spec.clone(), ..existing }),
            None => {
                let count = w.txn.open_table(CONSUMERS)?.len()?;
                if count >= self.max_consumers as u64 {
                    return Ok(Err(ConsumerError::TooMany { limit: self.max_consumers }));
                }
                let cursor = resolve(w, &self.from.1)?;
                (
                    true,
                    ConsumerRecord { spec: self.spec.clone(), from: self.from.0.clone(), cursor, created_at_ms: w.now },
                )
            }
        };
        encoded.push(&record)?;
        Ok(Ok((created, record)))
    }

    fn write(
        self,
        checked: Self::Checked,
        w: &mut Writes<'_>,
        mut records: Records<'_>,
    ) -> Result<Self::Answer, Fatal> {
        if checked.is_ok() {
            w.txn.open_table(CONSUMERS)?.insert(self.name.as_str(), next_record(&mut records)?)?;
        }
        Ok(checked)
    }
}

/// Delete a consumer: its record, its pending deliveries and its DLQ
/// entries.
pub(super) struct Delete {
    pub(super) name: String,
}

impl Apply for Delete {
    /// Whether it existed.
    type Answer = bool;
    type Checked = Option<(Vec<u64>, Vec<u64>)>;

    fn check(&self, w: &Writes<'_>, _: &mut Encoded) -> Result<Self::Checked, Failure> {
        if w.txn.open_table(CONSUMERS)?.get(self.name.as_str())?.is_none() {
            return Ok(None);
        }
        let sub = dlq_subscription(&self.name);
        let mut dead = Vec::new();
        for entry in w.dlq.range((sub.as_str(), 0)..=(sub.as_str(), u64::MAX))? {
            dead.push(entry?.0.value().1);
        }
        Ok(Some((pending_seqs(w, &self.name)?, dead)))
    }

    fn write(self, checked: Self::Checked, w: &mut Writes<'_>, _: Records<'_>) -> Result<bool, Fatal> {
        let Some((pending, dead)) = checked else { return Ok(false) };
        let name = self.name.as_str();
        let mut table = w.txn.open_table(CONSUMER_PENDING)?;
        for seq in pending {
            table.remove((name, seq))?;
        }
        let sub = dlq_subscription(name);
        for seq in dead {
            w.dlq.remove((sub.as_str(), seq))?;
        }
        w.txn.open_table(CONSUMERS)?.remove(name)?;
        Ok(true)
    }
}

/// Move a consumer's cursor to a start position and forget its pending
/// deliveries (their tokens are refused from then on).
pub(super) struct Reset {
    pub(super) name: String,
    pub(super) from: (String, StartAt),
}

impl Apply for Reset {
    type Answer = Result<ConsumerRecord, ConsumerError>;
    type Checked = Result<(ConsumerRecord, Vec<u64>), ConsumerError>;

    fn check(&self, w: &Writes<'_>, encoded: &mut Encoded) -> Result<Self::Checked, Failure> {
        let Some(mut record) = load(w, &self.name)? else {
            return Ok(Err(ConsumerError::NotFound(self.name.clone())));
        };
        record.cursor = resolve(w, &self.from.1)?;
        record.from.clone_from(&self.from.0);
        encoded.push(&record)?;
        Ok(Ok((record, pending_seqs(w, &self.name)?)))
    }

    fn write(
        self,
        checked: Self::Checked,
        w: &mut Writes<'_>,
        mut records: Records<'_>,
    ) -> Result<Self::Answer, Fatal> {
        let (record, pending) = match checked {
            Ok(c) => c,
            Err(e) => return Ok(Err(e)),
        };
        let name = self.name.as_str();
        let mut table = w.txn.open_table(CONSUMER_PENDING)?;
        for seq in pending {
            table.remove((name, seq))?;
        }
        w.txn.open_table(CONSUMERS)?.insert(name, next_record(&mut records)?)?;
        Ok(Ok(record))
    }
}

/// One delivery a fetch hands out.
#[derive(Debug, Clone)]
pub(crate) struct Delivery {
    pub(crate) token: Token,
    pub(crate) event: Event,
}

/// What a fetch answers.
#[derive(Debug, Clone, Default)]
pub(crate) struct FetchAnswer {
    pub(crate) deliveries: Vec<Delivery>,
    /// Moved to the DLQ by this fetch.
    pub(crate) dead_lettered: usize,
    /// When the next pending entry falls due (ms since the Unix epoch).
    pub(crate) next_due_ms: Option<u64>,
    /// The oldest seq the consumer still needs (its first pending entry,
    /// else its cursor): what the log's retention must keep.
    pub(crate) low_water: u64,
}

/// Most log records one fetch looks at for new events.
pub(crate) const FETCH_SCAN_LIMIT: usize = 4096;

/// Deliver up to `max` events (see [`Consumer::fetch`]).
pub(super) struct Fetch {
    pub(super) name: String,
    pub(super) max: usize,
}

/// What a fetch's check decided.
pub(super) struct Fetching {
    answer: FetchAnswer,
    upsert: Vec<u64>,
    removed: Vec<u64>,
    dead: Vec<u64>,
    cursor_moved: bool,
}

impl Apply for Fetch {
    type Answer = Result<FetchAnswer, ConsumerError>;
    type Checked = Result<Fetching, ConsumerError>;

    fn check(&self, w: &Writes<'_>, encoded: &mut Encoded) -> Result<Self::Checked, Failure> {
        let name = self.name.as_str();
        let Some(mut record) = load(w, name)? else {
            return Ok(Err(ConsumerError::NotFound(self.name.clone())));
        };
        let patterns: Vec<Pattern> = record.spec.topics.iter().filter_map(|t| Pattern::parse(t).ok()).collect();
        let mut pending = BTreeMap::new();
        {
            let table = w.txn.open_table(CONSUMER_PENDING)?;
            for entry in table.range((name, 0)..=(name, u64::MAX))? {
                let (k, v) = entry?;
                let seq = k.value().1;
                pending.insert(seq, decode::<Pending>(v.value(), || format!("consumer {name} pending seq {seq}"))?);
            }
        }
        let before: Vec<u64> = pending.keys().copied().collect();
        let mut consumer = Consumer { spec: record.spec.clone(), cursor: record.cursor, pending };
        let mut failed: Option<Failure> = None;
        // Records that do not decode: quarantined in the DLQ
        // (`record_corrupt`), so the consumer goes on past them.
        let mut corrupt: Vec<(u64, String)> = Vec::new();
        let mut scan = |from: u64, limit: usize| -> Vec<Scanned> {
            let mut out = Vec::new();
            let range = match w.log.range(from..) {
                Ok(range) => range,
                Err(e) => {
                    failed = Some(e.into());
                    return out;
                }
            };
            for entry in range.take(limit) {
                let (k, v) = match entry {
                    Ok(kv) => kv,
                    Err(e) => {
                        failed = Some(e.into());
                        break;
                    }
                };
                let seq = k.value();
                match decode::<Event>(v.value(), || format!("log seq {seq}")) {
                    Ok(event) => out.push(Scanned {
                        seq,
                        matches: patterns.iter().any(|p| p.matches(&event.topic)),
                        key: event.key,
                    }),
                    Err(e) => {
                        corrupt.push((seq, e.to_string()));
                        out.push(Scanned { seq, matches: false, key: None });
                    }
                }
            }
            out
        };
        let fetched = consumer.fetch(w.now, self.max, &mut scan, &mut || rand::random::<[u8; 16]>(), FETCH_SCAN_LIMIT);
        if let Some(failure) = failed {
            return Err(failure);
        }
        let mut deliveries = Vec::with_capacity(fetched.delivered.len());
        for token in &fetched.delivered {
            match event_at(w, token.seq) {
                Ok(event) => deliveries.push(Delivery { token: *token, event }),
                // Damaged since it was scanned: quarantined, not delivered.
                Err(Failure::Refused(e)) => {
                    consumer.pending.remove(&token.seq);
                    corrupt.push((token.seq, e.to_string()));
                }
                Err(fatal) => return Err(fatal),
            }
        }
        let upsert: Vec<u64> = fetched.upsert.into_iter().filter(|seq| consumer.pending.contains_key(seq)).collect();
        for seq in &upsert {
            if let Some(entry) = consumer.pending.get(seq) {
                encoded.push(entry)?;
            }
        }
        for dead in &fetched.dead {
            let event = match event_at(w, dead.pending.seq) {
                Ok(event) => event,
                Err(Failure::Refused(_)) => stand_in(name, dead.pending.seq),
                Err(fatal) => return Err(fatal),
            };
            encoded.push(&dlq_entry(name, dead, event, w.now))?;
        }
        for (seq, error) in &corrupt {
            tracing::error!(consumer = name, seq, error = %error, "quarantined an undecodable log record");
            let letter =
                DeadLetter { pending: Pending::new(*seq, None), code: "record_corrupt", message: error.clone() };
            encoded.push(&dlq_entry(name, &letter, stand_in(name, *seq), w.now))?;
        }
        record.cursor = consumer.cursor;
        if fetched.cursor_moved {
            encoded.push(&record)?;
        }
        let removed = before.into_iter().filter(|seq| !consumer.pending.contains_key(seq)).collect();
        Ok(Ok(Fetching {
            answer: FetchAnswer {
                deliveries,
                dead_lettered: fetched.dead.len() + corrupt.len(),
                next_due_ms: fetched.next_due_ms,
                low_water: consumer.pending.keys().next().copied().unwrap_or(consumer.cursor).min(consumer.cursor),
            },
            upsert,
            removed,
            dead: fetched.dead.iter().map(|d| d.pending.seq).chain(corrupt.iter().map(|(seq, _)| *seq)).collect(),
            cursor_moved: fetched.cursor_moved,
        }))
    }

    fn write(
        self,
        checked: Self::Checked,
        w: &mut Writes<'_>,
        mut records: Records<'_>,
    ) -> Result<Self::Answer, Fatal> {
        let fetching = match checked {
            Ok(f) => f,
            Err(e) => return Ok(Err(e)),
        };
        let name = self.name.as_str();
        {
            let mut table = w.txn.open_table(CONSUMER_PENDING)?;
            for seq in &fetching.upsert {
                table.insert((name, *seq), next_record(&mut records)?)?;
            }
            for seq in &fetching.removed {
                table.remove((name, *seq))?;
            }
        }
        let sub = dlq_subscription(name);
        for seq in &fetching.dead {
            w.dlq.insert((sub.as_str(), *seq), next_record(&mut records)?)?;
        }
        if fetching.cursor_moved {
            w.txn.open_table(CONSUMERS)?.insert(name, next_record(&mut records)?)?;
        }
        Ok(Ok(fetching.answer))
    }
}

/// What one ack did: its action, or why it was refused.
pub(crate) type AckResult = Result<AckDone, Stale>;

/// What an accepted ack did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AckDone {
    Acked,
    Naked,
    /// To the DLQ (a term, or a nak after the last delivery).
    DeadLettered,
}

/// Acks, naks and terms of one consumer, applied in order.
pub(super) struct Ack {
    pub(super) name: String,
    pub(super) items: Vec<(Token, AckAction)>,
}

/// What an ack's check decided, per seq touched: the entry to write, or
/// none (removed), and whether it goes to the DLQ.
pub(super) struct Acking {
    results: Vec<AckResult>,
    touched: Vec<(u64, bool, bool)>,
}

impl Apply for Ack {
    type Answer = Result<Vec<AckResult>, ConsumerError>;
    type Checked = Result<Acking, ConsumerError>;

    fn check(&self, w: &Writes<'_>, encoded: &mut Encoded) -> Result<Self::Checked, Failure> {
        let name = self.name.as_str();
        let Some(record) = load(w, name)? else {
            return Ok(Err(ConsumerError::NotFound(self.name.clone())));
        };
        let table = w.txn.open_table(CONSUMER_PENDING)?;
        // The entries as this batch leaves them: a second ack of the same
        // token in one batch sees the first one's effect.
        let mut state: HashMap<u64, Option<Pending>> = HashMap::new();
        let mut dead: HashMap<u64, DeadLetter> = HashMap::new();
        let mut results = Vec::with_capacity(self.items.len());
        for (token, action) in &self.items {
            let seq = token.seq;
            if let std::collections::hash_map::Entry::Vacant(slot) = state.entry(seq) {
                let stored = match table.get((name, seq))? {
                    Some(v) => Some(decode::<Pending>(v.value(), || format!("consumer {name} pending seq {seq}"))?),
                    None => None,
                };
                slot.insert(stored);
            }
            let current = state.get(&seq).and_then(Option::as_ref);
            let result = match crate::consumer::state::ack(&record.spec, current, token, action.clone(), w.now) {
                Ok(AckEffect::Acked) => {
                    state.insert(seq, None);
                    Ok(AckDone::Acked)
                }
                Ok(AckEffect::Redeliver(next)) => {
                    state.insert(seq, Some(next));
                    Ok(AckDone::Naked)
                }
                Ok(AckEffect::Dead(letter)) => {
                    state.insert(seq, None);
                    dead.insert(seq, letter);
                    Ok(AckDone::DeadLettered)
                }
                Err(stale) => Err(stale),
            };
            results.push(result);
        }
        let mut touched = Vec::new();
        let mut seqs: Vec<u64> = state.keys().copied().collect();
        seqs.sort_unstable();
        for seq in seqs {
            // Only entries an accepted ack changed are written.
            let changed =
                self.items.iter().zip(&results).any(|((token, _), result)| token.seq == seq && result.is_ok());
            if !changed {
                continue;
            }
            let entry = state.get(&seq).and_then(Option::as_ref);
            if let Some(entry) = entry {
                encoded.push(entry)?;
            }
            let letter = dead.get(&seq).filter(|_| entry.is_none());
            if let Some(letter) = letter {
                encoded.push(&dlq_entry(name, letter, event_at(w, seq)?, w.now))?;
            }
            touched.push((seq, entry.is_some(), letter.is_some()));
        }
        Ok(Ok(Acking { results, touched }))
    }

    fn write(
        self,
        checked: Self::Checked,
        w: &mut Writes<'_>,
        mut records: Records<'_>,
    ) -> Result<Self::Answer, Fatal> {
        let acking = match checked {
            Ok(a) => a,
            Err(e) => return Ok(Err(e)),
        };
        let name = self.name.as_str();
        let sub = dlq_subscription(name);
        let mut table = w.txn.open_table(CONSUMER_PENDING)?;
        for (seq, kept, dead) in &acking.touched {
            if *kept {
                table.insert((name, *seq), next_record(&mut records)?)?;
            } else {
                table.remove((name, *seq))?;
            }
            if *dead {
                w.dlq.insert((sub.as_str(), *seq), next_record(&mut records)?)?;
            }
        }
        Ok(Ok(acking.results))
    }
}

/// DLQ entries of a consumer back to its pending deliveries, as new
/// (their delivery count starts again).
pub(super) struct Redrive {
    pub(super) name: String,
    pub(super) seqs: Vec<u64>,
}

impl Apply for Redrive {
    /// How many were there and moved.
    type Answer = Result<usize, ConsumerError>;
    type Checked = Result<Vec<u64>, ConsumerError>;

    fn check(&self, w: &Writes<'_>, encoded: &mut Encoded) -> Result<Self::Checked, Failure> {
        if load(w, &self.name)?.is_none() {
            return Ok(Err(ConsumerError::NotFound(self.name.clone())));
        }
        let sub = dlq_subscription(&self.name);
        let mut moved = Vec::new();
        for seq in &self.seqs {
            let Some(bytes) = w.dlq.get((sub.as_str(), *seq))? else { continue };
            let key = match decode::<DlqEntry>(bytes.value(), || super::subscription::dlq_record((&sub, *seq))) {
                Ok(entry) => entry.event.key,
                // A damaged entry still comes back; the event is read from
                // the log when it is delivered.
                Err(_) => match event_at(w, *seq) {
                    Ok(event) => event.key,
                    // Damaged there too: it is quarantined again when fetched.
                    Err(Failure::Refused(_)) => None,
                    Err(fatal) => return Err(fatal),
                },
            };
            encoded.push(&Pending::new(*seq, key))?;
            moved.push(*seq);
        }
        Ok(Ok(moved))
    }

    fn write(
        self,
        checked: Self::Checked,
        w: &mut Writes<'_>,
        mut records: Records<'_>,
    ) -> Result<Self::Answer, Fatal> {
        let moved = match checked {
            Ok(m) => m,
            Err(e) => return Ok(Err(e)),
        };
        let name = self.name.as_str();
        let sub = dlq_subscription(name);
        let mut table = w.txn.open_table(CONSUMER_PENDING)?;
        for seq in &moved {
            w.dlq.remove((sub.as_str(), *seq))?;
            table.insert((name, *seq), next_record(&mut records)?)?;
        }
        Ok(Ok(moved.len()))
    }
}

/// A consumer's stored state as reads see it.
#[derive(Debug, Clone)]
pub(crate) struct ConsumerView {
    pub(crate) name: String,
    pub(crate) record: ConsumerRecord,
    /// Pending deliveries (in flight, waiting, held behind a key).
    pub(crate) pending: u64,
}

impl Store {
    pub(crate) fn consumer_put(
        &self,
        name: String,
        spec: ConsumerSpec,
        from: (String, StartAt),
        max_consumers: usize,
        reply: Reply<Result<(bool, ConsumerRecord), ConsumerError>>,
    ) {
        self.send(Command::ConsumerPut(Order::new(Put { name, spec, from, max_consumers }, reply)));
    }

    pub(crate) fn consumer_delete(&self, name: String, reply: Reply<bool>) {
        self.send(Command::ConsumerDelete(Order::new(Delete { name }, reply)));
    }

    pub(crate) fn consumer_reset(
        &self,
        name: String,
        from: (String, StartAt),
        reply: Reply<Result<ConsumerRecord, ConsumerError>>,
    ) {
        self.send(Command::ConsumerReset(Order::new(Reset { name, from }, reply)));
    }

    pub(crate) fn consumer_fetch(&self, name: String, max: usize, reply: Reply<Result<FetchAnswer, ConsumerError>>) {
        self.send(Command::ConsumerFetch(Order::new(Fetch { name, max }, reply)));
    }

    pub(crate) fn consumer_ack(
        &self,
        name: String,
        items: Vec<(Token, AckAction)>,
        reply: Reply<Result<Vec<AckResult>, ConsumerError>>,
    ) {
        self.send(Command::ConsumerAck(Order::new(Ack { name, items }, reply)));
    }

    pub(crate) fn consumer_redrive(&self, name: String, seqs: Vec<u64>, reply: Reply<Result<usize, ConsumerError>>) {
        self.send(Command::ConsumerRedrive(Order::new(Redrive { name, seqs }, reply)));
    }

    /// Every consumer, by name, with its count of pending deliveries
    /// (counted from the keys, nothing decoded).
    ///
    /// # Errors
    ///
    /// Storage or decoding errors.
    pub(crate) fn consumers(&self) -> Result<Vec<ConsumerView>, StoreError> {
        let read = self.shared.begin_read()?;
        let table = read.open_table(CONSUMERS).map_err(storage)?;
        let pending = read.open_table(CONSUMER_PENDING).map_err(storage)?;
        let mut out = Vec::new();
        for entry in table.iter().map_err(storage)? {
            let (k, v) = entry.map_err(storage)?;
            let name = k.value().to_owned();
            let record: ConsumerRecord = decode(v.value(), || format!("consumer {name}"))?;
            let count = pending.range((name.as_str(), 0)..=(name.as_str(), u64::MAX)).map_err(storage)?.count() as u64;
            out.push(ConsumerView { name, record, pending: count });
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{event, temp_store};
    use super::*;
    use crate::consumer::ConsumerError;

    fn ask<T: Send + 'static>(send: impl FnOnce(Reply<T>)) -> Result<T, StoreError> {
        let (tx, rx) = std::sync::mpsc::channel();
        send(Box::new(move |r| drop(tx.send(r))));
        rx.recv().unwrap()
    }

    fn spec(max_deliveries: u32) -> ConsumerSpec {
        ConsumerSpec {
            topics: vec!["orders.>".into()],
            ack_wait_ms: 60_000,
            max_deliveries,
            backoff_ms: Vec::new(),
            per_key_ordering: false,
            max_in_flight: 100,
        }
    }

    #[test]
    fn an_ack_batch_applies_each_token_once_and_a_term_dead_letters_in_the_same_commit() {
        let (_dir, store) = temp_store();
        store.publish_blocking(vec![event("a"), event("b")]).unwrap();
        let from = ("beginning".to_owned(), StartAt::Beginning);
        let (created, record) = ask(|r| store.consumer_put("c".into(), spec(5), from.clone(), 1, r)).unwrap().unwrap();
        assert!(created);
        assert_eq!(record.cursor, 0);
        // The server's bound: a second consumer is refused, a change is not.
        let refused = ask(|r| store.consumer_put("d".into(), spec(5), from.clone(), 1, r)).unwrap();
        assert!(matches!(refused, Err(ConsumerError::TooMany { limit: 1 })));
        assert!(!ask(|r| store.consumer_put("c".into(), spec(5), from.clone(), 1, r)).unwrap().unwrap().0);

        let fetched = ask(|r| store.consumer_fetch("c".into(), 10, r)).unwrap().unwrap();
        let tokens: Vec<Token> = fetched.deliveries.iter().map(|d| d.token).collect();
        assert_eq!(tokens.iter().map(|t| (t.seq, t.attempt)).collect::<Vec<_>>(), [(0, 1), (1, 1)]);
        assert_eq!(fetched.low_water, 0);
        let items = vec![
            (tokens[0], AckAction::Ack),
            (tokens[0], AckAction::Ack),
            (tokens[1], AckAction::Term { reason: "no".into() }),
        ];
        let results = ask(|r| store.consumer_ack("c".into(), items, r)).unwrap().unwrap();
        assert_eq!(results, [Ok(AckDone::Acked), Err(Stale::Unknown), Ok(AckDone::DeadLettered)]);
        let views = store.consumers().unwrap();
        assert_eq!((views[0].record.cursor, views[0].pending), (2, 0));
        let dead = store.dlq_entry("consumers/c", 1).unwrap().unwrap();
        assert_eq!((dead.code.as_str(), dead.message.as_str(), dead.attempts), ("consumer_term", "no", 1));

        // Redrive: back as a first delivery; a delete removes it all.
        assert_eq!(ask(|r| store.consumer_redrive("c".into(), vec![1, 7], r)).unwrap().unwrap(), 1);
        assert!(store.dlq_entry("consumers/c", 1).unwrap().is_none());
        let again = ask(|r| store.consumer_fetch("c".into(), 10, r)).unwrap().unwrap();
        assert_eq!(again.deliveries.iter().map(|d| (d.token.seq, d.token.attempt)).collect::<Vec<_>>(), [(1, 1)]);
        assert!(ask(|r| store.consumer_delete("c".into(), r)).unwrap());
        assert!(store.consumers().unwrap().is_empty());
        assert!(!ask(|r| store.consumer_delete("c".into(), r)).unwrap());
        let gone = ask(|r| store.consumer_fetch("c".into(), 10, r)).unwrap();
        assert!(matches!(gone, Err(ConsumerError::NotFound(_))));
    }

    #[test]
    fn an_undecodable_log_record_is_quarantined_and_the_consumer_goes_on() {
        use super::super::testing::write_at;
        let (_dir, store) = temp_store();
        store.publish_blocking(vec![event("a"), event("b"), event("c")]).unwrap();
        write_at(&store, 0, |w| {
            w.log.insert(1, b"not a record".as_slice())?;
            Ok(())
        });
        let from = ("beginning".to_owned(), StartAt::Beginning);
        ask(|r| store.consumer_put("c".into(), spec(5), from, 64, r)).unwrap().unwrap();
        let fetched = ask(|r| store.consumer_fetch("c".into(), 10, r)).unwrap().unwrap();
        assert_eq!(fetched.deliveries.iter().map(|d| d.token.seq).collect::<Vec<_>>(), [0, 2]);
        assert_eq!(fetched.dead_lettered, 1);
        let entry = store.dlq_entry("consumers/c", 1).unwrap().unwrap();
        assert_eq!((entry.code.as_str(), entry.event.topic.as_str()), ("record_corrupt", "weir.record.corrupt"));
        assert_eq!(store.consumers().unwrap()[0].record.cursor, 3);
    }
}
