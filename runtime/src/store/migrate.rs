//! Store format migrations, run by `Store::open` inside the transaction that
//! records the new format, so a crash half-way leaves the old format whole.
//!
//! Format 1 → 2:
//! - every record gets the header of [`super::codec`] (version byte and
//!   CRC-32), so damage on disk is detected when a record is read;
//! - CloudEvents get an injective idempotency key (`ce:<source>#<id>`, see
//!   `ingest::cloudevent_key`; format 1 used `<source>#<id>`, where source
//!   `/shop#1` with id `2` and source `/shop` with id `1#2` were the same
//!   key). The ingest index gains the new key of every CloudEvent still in
//!   its window, beside the old one, so a CloudEvent sent before the upgrade
//!   and again after it is still answered as a duplicate. Events already in
//!   the log keep the key they were stored with: the log is never rewritten
//!   in meaning, only re-framed.
//!
//! Format 2 → 3: the log's indexes, `event_ids` (event id → seq) and
//! `caused` (causation id, seq), built from the log. A record that does not
//! decode is left out of them (with a warning), as readers skip it.
//!
//! Format 3 → 4: the entity stream tables, `streams` and `stream_types`,
//! created empty. The streams of the declared entity types are then built
//! from the log by `stream::backfill`, which runs at every open (a type
//! declared later is indexed the same way), in bounded transactions.
//!
//! Format 4 → 5: the stream index (`streams`) and the aggregates' records
//! (`aggregate_snapshots`, `commands`, `command_log`) move into one table,
//! `entities`, where an entity's records sit side by side (`entities.rs`);
//! the four are deleted. Records are copied as they are stored, never
//! re-encoded.

use std::time::Instant;

use redb::{Key, ReadableTable, TableDefinition, WriteTransaction};
use serde::Serialize;
use serde::de::DeserializeOwned;
use weir_abi::Event;

use super::codec::{decode_event, decode_v1, encode};
use super::ingest::{INGEST, INGEST_EXPIRY, IngestEntry};
use super::log::{CAUSED, EVENT_IDS, LOG, index};
use super::registry::VERSIONS;
use super::subscription::{DLQ, IDEMPOTENCY, IDEMPOTENCY_EXPIRY, PARKED};
use super::types::{DlqEntry, IdempotencyRecord, ParkedEntry, VersionRecord};
use super::{StoreError, storage};

/// What a migration did, for the log line.
#[derive(Debug, Default)]
pub(super) struct Migrated {
    pub(super) records: u64,
    pub(super) cloudevent_keys: u64,
}

/// Migrate a format 1 store to format 2 within `txn`.
pub(super) fn v1_to_v2(txn: &WriteTransaction) -> Result<Migrated, StoreError> {
    let started = Instant::now();
    // The ingest keys first: they read events in their format 1 framing.
    let mut done = Migrated { records: 0, cloudevent_keys: cloudevent_keys(txn)? };
    done.records += reframe::<u64, Event>(txn, LOG, "log")?;
    done.records += reframe::<(&str, u64), ParkedEntry>(txn, PARKED, "parked")?;
    done.records += reframe::<(&str, u64), DlqEntry>(txn, DLQ, "dlq")?;
    done.records += reframe::<(&str, &str), IdempotencyRecord>(txn, IDEMPOTENCY, "idempotency")?;
    done.records += reframe::<(u64, &str, u64), Vec<String>>(txn, IDEMPOTENCY_EXPIRY, "idempotency_expiry")?;
    done.records += reframe::<(u64, u64), Vec<String>>(txn, INGEST_EXPIRY, "ingest_expiry")?;
    done.records += reframe::<(&str, u64), VersionRecord>(txn, VERSIONS, "versions")?;
    tracing::info!(
        records = done.records,
        cloudevent_keys = done.cloudevent_keys,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "migrated the store from format 1 to format 2"
    );
    Ok(done)
}

/// Migrate a format 2 store to format 3 within `txn`: index every event of
/// the log by id and by cause. Answers the number of events indexed.
pub(super) fn v2_to_v3(txn: &WriteTransaction) -> Result<u64, StoreError> {
    let started = Instant::now();
    let log = txn.open_table(LOG).map_err(storage)?;
    let mut ids = txn.open_table(EVENT_IDS).map_err(storage)?;
    let mut caused = txn.open_table(CAUSED).map_err(storage)?;
    let (mut indexed, mut skipped) = (0u64, 0u64);
    for entry in log.iter().map_err(storage)? {
        let (k, v) = entry.map_err(storage)?;
        let seq = k.value();
        match decode_event(v.value(), || format!("log seq {seq}")) {
            Ok(event) => {
                index(&mut ids, &mut caused, seq, &event).map_err(storage)?;
                indexed += 1;
            }
            Err(e) => {
                tracing::warn!(error = %e, "migration to format 3: a log record that does not decode is not indexed");
                skipped += 1;
            }
        }
    }
    tracing::info!(
        indexed,
        skipped,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "migrated the store from format 2 to format 3 (event id and causation indexes)"
    );
    Ok(indexed)
}

/// Migrate a format 3 store to format 4 within `txn`: create the entity
/// stream tables (their contents come from `stream::backfill`).
pub(super) fn v3_to_v4(txn: &WriteTransaction) -> Result<(), StoreError> {
    txn.open_table(super::stream::OLD_STREAMS).map_err(storage)?;
    txn.open_table(super::stream::STREAM_TYPES).map_err(storage)?;
    tracing::info!("migrated the store from format 3 to format 4 (entity stream index)");
    Ok(())
}

/// Migrate a format 4 store to format 5 within `txn`: move the stream
/// index, the aggregates' snapshots and their command records into
/// `entities`. Answers how many records it moved.
pub(super) fn v4_to_v5(txn: &WriteTransaction) -> Result<u64, StoreError> {
    use super::aggregate::{CommandRecord, OLD_COMMAND_LOG, OLD_COMMANDS, OLD_SNAPSHOTS, has_command, put_command};
    use super::entities::{ENTITIES, REVISION, SNAPSHOT, slot};
    let started = Instant::now();
    let mut moved = 0;
    {
        let mut entities = txn.open_table(ENTITIES).map_err(storage)?;
        let streams = txn.open_table(super::stream::OLD_STREAMS).map_err(storage)?;
        for entry in streams.iter().map_err(storage)? {
            let (k, seq) = entry.map_err(storage)?;
            let (ty, key, revision) = k.value();
            let at = slot(REVISION, revision);
            entities.insert((ty, key, at.as_slice()), seq.value().to_be_bytes().as_slice()).map_err(storage)?;
            moved += 1;
        }
        let snapshots = txn.open_table(OLD_SNAPSHOTS).map_err(storage)?;
        for entry in snapshots.iter().map_err(storage)? {
            let (k, v) = entry.map_err(storage)?;
            let (ty, key) = k.value();
            entities.insert((ty, key, SNAPSHOT), v.value()).map_err(storage)?;
            moved += 1;
        }
        // The command log gives each record its ordinal; a record it does
        // not name (none should exist: both were written in one commit)
        // takes the ordinal it holds itself.
        let log = txn.open_table(OLD_COMMAND_LOG).map_err(storage)?;
        let commands = txn.open_table(OLD_COMMANDS).map_err(storage)?;
        for entry in log.iter().map_err(storage)? {
            let (k, idem) = entry.map_err(storage)?;
            let ((ty, key, ordinal), idem) = (k.value(), idem.value());
            if let Some(record) = commands.get((ty, key, idem)).map_err(storage)? {
                put_command(&mut entities, (ty, key), ordinal, idem, record.value()).map_err(storage)?;
                moved += 1;
            }
        }
        for entry in commands.iter().map_err(storage)? {
            let (k, v) = entry.map_err(storage)?;
            let (ty, key, idem) = k.value();
            if has_command(&entities, (ty, key), idem).map_err(storage)? {
                continue;
            }
            match super::codec::decode::<CommandRecord>(v.value(), || format!("command {ty}/{key} {idem:?}")) {
                Ok(record) => {
                    put_command(&mut entities, (ty, key), record.ordinal, idem, v.value()).map_err(storage)?;
                    moved += 1;
                }
                Err(e) => {
                    return Err(StoreError::RecordCorrupt {
                        record: format!("command {ty}/{key} {idem:?}"),
                        reason: format!("not in the command log and its record does not decode ({e}): not migrated"),
                    });
                }
            }
        }
    }
    txn.delete_table(super::stream::OLD_STREAMS).map_err(storage)?;
    txn.delete_table(OLD_SNAPSHOTS).map_err(storage)?;
    txn.delete_table(OLD_COMMANDS).map_err(storage)?;
    txn.delete_table(OLD_COMMAND_LOG).map_err(storage)?;
    tracing::info!(
        records = moved,
        elapsed_ms = started.elapsed().as_millis(),
        "migrated the store from format 4 to format 5 (an entity's stream index and aggregate records in one table)"
    );
    Ok(moved)
}

/// Copy `table` into a new table with every value re-framed, then put the
/// copy in its place. A value that does not decode as format 1 stops the
/// migration: nothing is committed and the store stays at format 1.
fn reframe<K: Key + 'static, T: Serialize + DeserializeOwned>(
    txn: &WriteTransaction,
    table: TableDefinition<'_, K, &'static [u8]>,
    name: &str,
) -> Result<u64, StoreError> {
    let temporary_name = format!("{name}.migrating");
    let temporary = TableDefinition::<K, &[u8]>::new(&temporary_name);
    let mut count = 0;
    {
        let old = txn.open_table(table).map_err(storage)?;
        let mut new = txn.open_table(temporary).map_err(storage)?;
        for entry in old.iter().map_err(storage)? {
            let (k, v) = entry.map_err(storage)?;
            let value: T = decode_v1(v.value(), || format!("{name} record {count}"))?;
            new.insert(k.value(), encode(&value)?.as_slice()).map_err(storage)?;
            count += 1;
        }
    }
    txn.delete_table(table).map_err(storage)?;
    txn.rename_table(temporary, table).map_err(storage)?;
    Ok(count)
}

/// Index the new key of every CloudEvent the ingest index still holds.
/// Format 1 did not record which keys came from CloudEvents; a key is taken
/// for one when its event's key is `<source>#<rest>`. A JSON event whose
/// producer chose such a key gets the CloudEvent key too: for the rest of
/// its window it keeps the old behaviour, no worse than before.
fn cloudevent_keys(txn: &WriteTransaction) -> Result<u64, StoreError> {
    let mut added: Vec<(String, IngestEntry)> = Vec::new();
    {
        let ingest = txn.open_table(INGEST).map_err(storage)?;
        let log = txn.open_table(LOG).map_err(storage)?;
        for entry in ingest.iter().map_err(storage)? {
            let (k, v) = entry.map_err(storage)?;
            let key = k.value();
            let value = v.value();
            if !key.contains('#') {
                continue;
            }
            let Some(bytes) = log.get(value.1).map_err(storage)? else { continue };
            let event: Event = decode_v1(bytes.value(), || format!("log seq {}", value.1))?;
            if event.idempotency_key != key {
                continue;
            }
            if let Some(id) = key.strip_prefix(event.source.as_str()).and_then(|rest| rest.strip_prefix('#')) {
                added.push((crate::ingest::cloudevent_key(&event.source, id), value));
            }
        }
    }
    if added.is_empty() {
        return Ok(0);
    }
    let mut ingest = txn.open_table(INGEST).map_err(storage)?;
    let mut keys = Vec::with_capacity(added.len());
    let mut latest = 0;
    for (key, value) in added {
        if ingest.get(key.as_str()).map_err(storage)?.is_none() {
            ingest.insert(key.as_str(), value).map_err(storage)?;
            latest = latest.max(value.2);
            keys.push(key);
        }
    }
    let count = keys.len() as u64;
    if !keys.is_empty() {
        // One expiry batch at the latest expiry: by then every key in it has
        // expired, and the collector checks each key's own expiry anyway.
        // Batch number 0 cannot clash: live batches are named from the open
        // time in nanoseconds.
        let mut expiry = txn.open_table(INGEST_EXPIRY).map_err(storage)?;
        // Written in format 1 framing: `reframe` of the expiry table runs
        // after this and re-frames it with the rest.
        let body = bincode::serde::encode_to_vec(&keys, bincode::config::standard())
            .map_err(|e| StoreError::Decode(e.to_string()))?;
        expiry.insert((latest, 0), body.as_slice()).map_err(storage)?;
    }
    Ok(count)
}
