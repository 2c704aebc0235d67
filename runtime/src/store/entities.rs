//! `entities`: (entity type, key, slot) → value. Everything the store keeps
//! per entity of a declared type sits in this one table (store format 5),
//! an entity's records side by side: its stream's index entries, its
//! aggregate's snapshot and its command records. A command on a random
//! entity then dirties one leaf page of one B-tree, where format 4's four
//! tables (`streams`, `aggregate_snapshots`, `commands`, `command_log`)
//! took a leaf in each; with random entities, those page writes were most
//! of the writer's time (docs/benchmarks.md, "One table for an entity").
//!
//! redb orders tuple keys element by element, each string by its bytes
//! with its length kept apart, so one entity's slots are one contiguous
//! range no other entity's key can fall into (`a` and `a\0` or `ab` are
//! different first elements). A slot is a tag byte, then:
//!
//! | tag | then | value | what |
//! |---|---|---|---|
//! | `r` | revision, 8 bytes big-endian | log seq, 8 bytes big-endian | the stream index (`stream.rs`) |
//! | `s` | nothing | encoded `Snapshot` | the aggregate's snapshot (`aggregate.rs`) |
//! | `c` | ordinal, 8 bytes big-endian | encoded `CommandRecord` | the audit trail, in the order the commands were decided |
//! | `i` | idempotency key, its bytes | ordinal, 8 bytes big-endian | the command idempotency index |
//!
//! Numbers are big-endian so a tag's slots sort by number: a stream's
//! current revision is the last `r` slot, the next ordinal one after the
//! last `c` slot.

use redb::TableDefinition;

use super::StoreError;

/// (entity type, key, slot) → value.
pub(super) const ENTITIES: TableDefinition<'_, (&str, &str, &[u8]), &[u8]> = TableDefinition::new("entities");

/// The table's key type, for functions over any of its handles.
pub(super) type EntityKey = (&'static str, &'static str, &'static [u8]);

/// Tag of a stream index entry.
pub(super) const REVISION: u8 = b'r';
/// Tag of a command record.
pub(super) const COMMAND: u8 = b'c';
/// Tag of an idempotency key's entry.
pub(super) const IDEMPOTENCY: u8 = b'i';
/// The snapshot's slot (a tag alone).
pub(super) const SNAPSHOT: &[u8] = b"s";

/// The slot of number `n` under `tag`: ordered by number.
pub(super) fn slot(tag: u8, n: u64) -> [u8; 9] {
    let mut slot = [tag; 9];
    slot[1..].copy_from_slice(&n.to_be_bytes());
    slot
}

/// The slots from number `from` to `to` (inclusive) under `tag`.
pub(super) fn slots(tag: u8, from: u64, to: u64) -> ([u8; 9], [u8; 9]) {
    (slot(tag, from), slot(tag, to))
}

/// The number a slot or a value holds (8 bytes, big-endian; a slot's tag
/// is skipped by the caller).
pub(super) fn number(bytes: &[u8], what: impl FnOnce() -> String) -> Result<u64, StoreError> {
    match <[u8; 8]>::try_from(bytes) {
        Ok(b) => Ok(u64::from_be_bytes(b)),
        Err(_) => Err(StoreError::RecordCorrupt {
            record: what(),
            reason: format!("a number is 8 bytes here, this one is {}", bytes.len()),
        }),
    }
}

/// The number of a slot of `tag`.
pub(super) fn slot_number(slot: &[u8], what: impl FnOnce() -> String) -> Result<u64, StoreError> {
    number(slot.get(1..).unwrap_or_default(), what)
}

/// Create the table (at open), so readers never meet a missing one.
pub(super) fn create(txn: &redb::WriteTransaction) -> Result<(), redb::TableError> {
    txn.open_table(ENTITIES)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_of_a_tag_sort_by_number_and_tags_apart() {
        let mut all: Vec<[u8; 9]> = [0, 1, 9, 10, 255, 256, u64::MAX].iter().map(|n| slot(REVISION, *n)).collect();
        let sorted = all.clone();
        all.reverse();
        all.sort();
        assert_eq!(all, sorted, "big-endian numbers sort as numbers");
        assert!(slot(COMMAND, u64::MAX).as_slice() < [IDEMPOTENCY].as_slice());
        assert!(slot(REVISION, u64::MAX).as_slice() < SNAPSHOT, "the snapshot is after every revision");
        assert_eq!(slot_number(&slot(COMMAND, 42), String::new).unwrap(), 42);
        assert_eq!(slot_number(b"c12", || "x".into()).unwrap_err().code(), "store_record_corrupt");
    }
}
