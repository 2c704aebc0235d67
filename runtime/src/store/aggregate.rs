//! Aggregates' table (docs/event-sourcing.md, "Aggregates and commands"):
//! each entity's snapshot, and the record of every command it was sent.
//!
//! A command's effects commit in one store command, [`Execute`], inside
//! the group commit: its events are appended to the entity's stream at the
//! revision it was decided on (the stream append of `stream.rs`, whose
//! check refuses a moved stream), with the new snapshot and the command's
//! record. So after a crash either all of it is there or none: a client
//! that retries with the same idempotency key gets the recorded result, or
//! a fresh decision when nothing was stored.
//!
//! Its records are in `entities` (`entities.rs`), beside the entity's
//! stream index: slot `s` holds the [`Snapshot`], the state after revision
//! `revision`, as the aggregate whose module has the sha256 `aggregate`
//! folded it (a snapshot of another module, or behind the stream because
//! someone appended with `POST /v1/streams`, is folded on from the stream,
//! never trusted); slots `c` + ordinal hold the [`CommandRecord`]s, the
//! audit trail, kept forever like the streams; slots `i` + idempotency key
//! the command idempotency index.

use redb::{ReadableTable, Table, TableDefinition};
use serde::{Deserialize, Serialize};
use weir_abi::Event;

use super::codec::{Encoded, Records, decode, encode};
use super::command::{Apply, Command, Failure, Fatal, Order, Reply, next_record};
use super::entities::{COMMAND, ENTITIES, EntityKey, IDEMPOTENCY, SNAPSHOT, number, slot, slot_number, slots};
use super::stream::{AppendOutcome, Decided, ExpectedRevision, StreamAppend, current};
use super::writer::Writes;
use super::{Store, StoreError, storage};

/// Format 4's tables, read once by the migration to format 5
/// (`migrate::v4_to_v5`) and then deleted: (entity type, key) → encoded
/// [`Snapshot`].
pub(super) const OLD_SNAPSHOTS: TableDefinition<'_, (&str, &str), &[u8]> = TableDefinition::new("aggregate_snapshots");
/// Format 4: (entity type, key, idempotency key) → encoded [`CommandRecord`].
pub(super) const OLD_COMMANDS: TableDefinition<'_, (&str, &str, &str), &[u8]> = TableDefinition::new("commands");
/// Format 4: (entity type, key, ordinal) → idempotency key.
pub(super) const OLD_COMMAND_LOG: TableDefinition<'_, (&str, &str, u64), &str> = TableDefinition::new("command_log");

/// The slot of the command whose idempotency key is `key`.
fn idempotency_slot(key: &str) -> Vec<u8> {
    let mut slot = Vec::with_capacity(1 + key.len());
    slot.push(IDEMPOTENCY);
    slot.extend_from_slice(key.as_bytes());
    slot
}

/// Store the encoded record of `ty`/`key`'s command number `ordinal`,
/// whose idempotency key is `idem`, and index it by that key.
pub(super) fn put_command(
    table: &mut Table<'_, EntityKey, &'static [u8]>,
    (ty, key): (&str, &str),
    ordinal: u64,
    idem: &str,
    record: &[u8],
) -> Result<(), redb::StorageError> {
    table.insert((ty, key, slot(COMMAND, ordinal).as_slice()), record)?;
    table.insert((ty, key, idempotency_slot(idem).as_slice()), ordinal.to_be_bytes().as_slice())?;
    Ok(())
}

/// Whether `ty`/`key` has a command of idempotency key `idem`.
pub(super) fn has_command(
    table: &impl ReadableTable<EntityKey, &'static [u8]>,
    (ty, key): (&str, &str),
    idem: &str,
) -> Result<bool, redb::StorageError> {
    Ok(table.get((ty, key, idempotency_slot(idem).as_slice()))?.is_some())
}

/// The record of `ty`/`key`'s command whose idempotency key is `idem`.
fn find_command(
    table: &impl ReadableTable<EntityKey, &'static [u8]>,
    ty: &str,
    key: &str,
    idem: &str,
) -> Result<Option<CommandRecord>, Failure> {
    let what = || format!("command {ty}/{key} {idem:?}");
    let Some(ordinal) = table.get((ty, key, idempotency_slot(idem).as_slice()))? else { return Ok(None) };
    let ordinal = number(ordinal.value(), what)?;
    let Some(bytes) = table.get((ty, key, slot(COMMAND, ordinal).as_slice()))? else {
        return Err(Failure::Refused(StoreError::RecordCorrupt {
            record: what(),
            reason: format!("indexed as command {ordinal}, which is not recorded"),
        }));
    };
    Ok(Some(decode(bytes.value(), what)?))
}

/// The ordinal `ty`/`key`'s next command gets.
fn next_ordinal(table: &impl ReadableTable<EntityKey, &'static [u8]>, ty: &str, key: &str) -> Result<u64, Failure> {
    let (low, high) = slots(COMMAND, 0, u64::MAX);
    let last = table.range((ty, key, low.as_slice())..=(ty, key, high.as_slice()))?.next_back().transpose()?;
    match last {
        None => Ok(0),
        Some((k, _)) => Ok(slot_number(k.value().2, || format!("command slot of {ty}/{key}"))? + 1),
    }
}

/// The snapshot of `ty`/`key` and its stream's current revision.
fn state_in(
    table: &impl ReadableTable<EntityKey, &'static [u8]>,
    ty: &str,
    key: &str,
) -> Result<(Option<Snapshot>, Option<u64>), StoreError> {
    Ok((find_snapshot(table, ty, key).map_err(Failure::into_error)?, current(table, ty, key)?))
}

/// The snapshot of `ty`/`key`, if any.
fn find_snapshot(
    table: &impl ReadableTable<EntityKey, &'static [u8]>,
    ty: &str,
    key: &str,
) -> Result<Option<Snapshot>, Failure> {
    match table.get((ty, key, SNAPSHOT))? {
        Some(bytes) => Ok(Some(decode(bytes.value(), || format!("snapshot of {ty}/{key}"))?)),
        None => Ok(None),
    }
}

/// An entity's state after one revision of its stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Snapshot {
    /// The revision of the last event folded in (`None`: no event).
    pub(crate) revision: Option<u64>,
    /// Hex sha256 of the aggregate module that folded it.
    pub(crate) aggregate: String,
    /// The state, as the aggregate's `weir_evolve` answered it.
    pub(crate) state: Vec<u8>,
}

/// One event a command appended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct CommandEvent {
    pub(crate) id: u128,
    pub(crate) seq: u64,
    pub(crate) revision: u64,
}

/// What a command came to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum CommandResult {
    /// Accepted: these events were appended (maybe none), and the stream
    /// was at `revision` after them.
    Accepted { events: Vec<CommandEvent>, revision: Option<u64> },
    /// Rejected by the aggregate, with its reason: nothing appended.
    Rejected { reason: String },
}

/// One command as recorded: the audit trail, and the answer a retry gets.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct CommandRecord {
    /// Its place among the entity's commands, from 0.
    pub(crate) ordinal: u64,
    pub(crate) idempotency_key: String,
    /// When it was decided, ms since the Unix epoch.
    pub(crate) time_ms: u64,
    pub(crate) name: String,
    pub(crate) payload: Vec<u8>,
    pub(crate) content_type: String,
    /// Hex sha256 of the aggregate that decided it.
    pub(crate) aggregate: String,
    /// The revision the decision was made on (`None`: no event).
    pub(crate) decided_at: Option<u64>,
    /// Events folded through `weir_evolve` to load the state it was decided
    /// on (0: the snapshot was current).
    pub(crate) folded: u64,
    pub(crate) result: CommandResult,
}

/// How [`Store::execute_command_blocking`] ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ExecuteOutcome {
    /// Stored now: the events, the snapshot and the record.
    Done(CommandRecord),
    /// The idempotency key was recorded before: its record, nothing stored.
    Replayed(CommandRecord),
    /// The stream moved since the decision (`actual` is its revision):
    /// nothing stored; decide again.
    Conflict { actual: Option<u64> },
}

/// A decided command, as the runtime hands it to the store.
#[derive(Debug)]
pub(crate) struct DecidedCommand {
    pub(crate) ty: String,
    pub(crate) key: String,
    pub(crate) idempotency_key: String,
    pub(crate) name: String,
    pub(crate) payload: Vec<u8>,
    pub(crate) content_type: String,
    pub(crate) aggregate: String,
    /// The revision the decision was made on.
    pub(crate) decided_at: Option<u64>,
    /// Events folded to load the state.
    pub(crate) folded: u64,
    pub(crate) verdict: Verdict,
}

/// The aggregate's decision, ready to store.
#[derive(Debug)]
pub(crate) enum Verdict {
    /// Append `events`; `state` is the state after them.
    Accept { events: Vec<Event>, state: Vec<u8> },
    /// Record the rejection; `state` is a snapshot at `decided_at` worth
    /// keeping (it was rebuilt), if any.
    Reject { reason: String, state: Option<Vec<u8>> },
}

/// The store command of one decided command.
pub(super) struct Execute {
    command: Box<DecidedCommand>,
    /// The stream append of an accept with events, and how many.
    append: Option<Box<StreamAppend>>,
    events: u64,
    /// The snapshot to store, if any.
    state: Option<Vec<u8>>,
    reason: Option<String>,
}

/// What the check of an [`Execute`] found.
pub(super) enum Checked {
    Replay(CommandRecord),
    Conflict(Option<u64>),
    /// Store it: the append's decision (`None`: nothing to append), the
    /// command's ordinal, whether a snapshot record was encoded first.
    Store {
        append: Option<Decided>,
        ordinal: u64,
        snapshot: bool,
    },
}

impl Apply for Execute {
    type Answer = ExecuteOutcome;
    type Checked = Checked;

    fn check(&self, w: &Writes<'_>, encoded: &mut Encoded) -> Result<Checked, Failure> {
        let c = &self.command;
        let (ty, key) = (c.ty.as_str(), c.key.as_str());
        if let Some(record) = find_command(&w.entities, ty, key, &c.idempotency_key)? {
            return Ok(Checked::Replay(record));
        }
        let ordinal = next_ordinal(&w.entities, ty, key)?;
        let now = w.streams.current(&w.entities, ty, key)?;
        let snapshot = match &self.state {
            Some(state) => {
                // Before the append's records: the write takes it first. The
                // append happens only at the revision decided on, so the
                // revision it reaches is known now.
                let revision = match self.events {
                    0 => c.decided_at,
                    n => Some(c.decided_at.map_or(0, |r| r + 1) + n - 1),
                };
                encoded.push(&Snapshot { revision, aggregate: c.aggregate.clone(), state: state.clone() })?;
                true
            }
            None => false,
        };
        let Some(append) = &self.append else {
            if now != c.decided_at {
                return Ok(Checked::Conflict(now));
            }
            return Ok(Checked::Store { append: None, ordinal, snapshot });
        };
        match append.check_at(w, encoded, Some(now))? {
            Decided::Append(first) => Ok(Checked::Store { append: Some(Decided::Append(first)), ordinal, snapshot }),
            Decided::Answer(AppendOutcome::WrongExpectedRevision { actual }) => Ok(Checked::Conflict(actual)),
            Decided::Answer(other) => Err(Failure::Refused(StoreError::Storage(format!(
                "command {ty}/{key} {:?}: its events could not be appended ({other:?}; a bug in Weir)",
                c.idempotency_key
            )))),
        }
    }

    fn write(self, checked: Checked, w: &mut Writes<'_>, mut records: Records<'_>) -> Result<ExecuteOutcome, Fatal> {
        let (decided, ordinal, has_snapshot) = match checked {
            Checked::Replay(record) => return Ok(ExecuteOutcome::Replayed(record)),
            Checked::Conflict(actual) => return Ok(ExecuteOutcome::Conflict { actual }),
            Checked::Store { append, ordinal, snapshot } => (append, ordinal, snapshot),
        };
        let c = *self.command;
        let (ty, key) = (c.ty.as_str(), c.key.as_str());
        let snapshot = if has_snapshot { Some(next_record(&mut records)?) } else { None };
        let result = match (self.append, decided, self.reason) {
            (Some(append), Some(decided), _) => match (*append).write_checked(decided, w, records)? {
                AppendOutcome::Appended { events, revision } => CommandResult::Accepted {
                    events: events
                        .iter()
                        .map(|p| CommandEvent {
                            id: p.id.as_u128(),
                            seq: p.seq,
                            revision: p.revision.unwrap_or(revision),
                        })
                        .collect(),
                    revision: Some(revision),
                },
                other => {
                    return Err(Fatal(StoreError::Storage(format!(
                        "a command's append checked as an append answered {other:?} (a bug in Weir)"
                    ))));
                }
            },
            (_, _, Some(reason)) => CommandResult::Rejected { reason },
            _ => CommandResult::Accepted { events: Vec::new(), revision: c.decided_at },
        };
        if let Some(bytes) = snapshot {
            w.entities.insert((ty, key, SNAPSHOT), bytes)?;
        }
        let record = CommandRecord {
            ordinal,
            idempotency_key: c.idempotency_key,
            time_ms: w.now,
            name: c.name,
            payload: c.payload,
            content_type: c.content_type,
            aggregate: c.aggregate,
            decided_at: c.decided_at,
            folded: c.folded,
            result,
        };
        let bytes = encode(&record).map_err(Fatal)?;
        put_command(&mut w.entities, (ty, key), ordinal, &record.idempotency_key, &bytes)?;
        Ok(ExecuteOutcome::Done(record))
    }
}

impl Store {
    /// Store a decided command in one commit: its events at the revision
    /// it was decided on, the snapshot and its record; or answer the
    /// record of its idempotency key, or the conflict when the stream
    /// moved. `reply` runs after the commit, with the commit's error, or
    /// [`StoreError::Overloaded`] at once when the writer's queue is full.
    pub(crate) fn execute_command(&self, command: DecidedCommand, reply: Reply<ExecuteOutcome>) {
        let events_len = match &command.verdict {
            Verdict::Accept { events, .. } => events.len() as u64,
            Verdict::Reject { .. } => 0,
        };
        let (append, state, reason) = match &command.verdict {
            Verdict::Accept { events, state } if events.is_empty() => (None, Some(state.clone()), None),
            Verdict::Accept { events, state } => {
                let admitted = match self.admit(events) {
                    Ok(admitted) => admitted,
                    Err(refused) => return reply(Err(refused)),
                };
                let expected = match command.decided_at {
                    None => ExpectedRevision::NoStream,
                    Some(r) => ExpectedRevision::Exactly(r),
                };
                let append = Box::new(StreamAppend::new(
                    command.ty.clone(),
                    command.key.clone(),
                    expected,
                    events.clone(),
                    admitted,
                ));
                (Some(append), Some(state.clone()), None)
            }
            Verdict::Reject { reason, state } => (None, state.clone(), Some(reason.clone())),
        };
        let execute = Execute { command: Box::new(command), append, events: events_len, state, reason };
        self.send(Command::Execute(Order::new(execute, reply)));
    }

    /// The snapshot of `ty`/`key` and the stream's current revision, read
    /// together.
    ///
    /// # Errors
    ///
    /// Storage errors; a damaged snapshot as [`StoreError::RecordCorrupt`].
    pub(crate) fn snapshot(&self, ty: &str, key: &str) -> Result<(Option<Snapshot>, Option<u64>), StoreError> {
        let read = self.shared.begin_read()?;
        state_in(&read.open_table(ENTITIES).map_err(storage)?, ty, key)
    }

    /// What a command finds before it is decided, in one read: the record
    /// of its idempotency key if it was recorded (a retry), else the
    /// entity's snapshot and its stream's current revision.
    ///
    /// # Errors
    ///
    /// Storage errors; a damaged record as [`StoreError::RecordCorrupt`].
    pub(crate) fn before_command(&self, ty: &str, key: &str, idempotency_key: &str) -> Result<Before, StoreError> {
        let read = self.shared.begin_read()?;
        let entities = read.open_table(ENTITIES).map_err(storage)?;
        if let Some(record) = find_command(&entities, ty, key, idempotency_key).map_err(Failure::into_error)? {
            return Ok(Before::Recorded(record));
        }
        let (snapshot, revision) = state_in(&entities, ty, key)?;
        Ok(Before::Decide(snapshot, revision))
    }

    /// The record of the command `idempotency_key` sent to `ty`/`key`.
    ///
    /// # Errors
    ///
    /// Storage errors; a damaged record as [`StoreError::RecordCorrupt`].
    pub(crate) fn command_record(
        &self,
        ty: &str,
        key: &str,
        idempotency_key: &str,
    ) -> Result<Option<CommandRecord>, StoreError> {
        let read = self.shared.begin_read()?;
        let entities = read.open_table(ENTITIES).map_err(storage)?;
        find_command(&entities, ty, key, idempotency_key).map_err(Failure::into_error)
    }

    /// Up to `limit` commands of `ty`/`key` from ordinal `from` on, in the
    /// order they were decided.
    ///
    /// # Errors
    ///
    /// Storage errors; a damaged record as [`StoreError::RecordCorrupt`].
    pub(crate) fn command_page(
        &self,
        ty: &str,
        key: &str,
        from: u64,
        limit: usize,
    ) -> Result<Vec<CommandRecord>, StoreError> {
        let read = self.shared.begin_read()?;
        let entities = read.open_table(ENTITIES).map_err(storage)?;
        let (low, high) = slots(COMMAND, from, u64::MAX);
        let mut out = Vec::new();
        for entry in
            entities.range((ty, key, low.as_slice())..=(ty, key, high.as_slice())).map_err(storage)?.take(limit)
        {
            let (k, bytes) = entry.map_err(storage)?;
            let (_, _, slot) = k.value();
            out.push(decode(bytes.value(), || format!("command {ty}/{key} slot {slot:?}"))?);
        }
        Ok(out)
    }
}

/// What [`Store::before_command`] found.
#[derive(Debug)]
pub(crate) enum Before {
    /// The command was recorded before: answer its record.
    Recorded(CommandRecord),
    /// Decide it: the entity's snapshot, and its stream's current revision.
    Decide(Option<Snapshot>, Option<u64>),
}
