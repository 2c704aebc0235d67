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

mod ack;
mod fetch;
pub(crate) use ack::*;
pub(crate) use fetch::*;

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

/// The stand-in event of an undecodable record at `seq`.
fn stand_in(name: &str, seq: u64) -> Event {
    super::corrupt_record_stand_in(&dlq_subscription(name), seq)
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
mod tests;
