//! The ingest de-duplication index: producer idempotency key → the event
//! first published under it, with its expiry, and the expiry index the
//! collector walks.

use redb::TableDefinition;
use weir_abi::EventId;

use super::Published;
use super::codec::encode;
use super::command::Fatal;
use super::writer::Writes;

/// A value of the ingest index: (event id, seq, expires at ms).
pub(super) type IngestEntry = ([u8; 16], u64, u64);

/// producer idempotency key → (event id, seq, expires at ms).
pub(super) const INGEST: TableDefinition<'_, &str, IngestEntry> = TableDefinition::new("ingest_dedup");
/// (expires at ms, batch) → encoded `Vec<String>` of producer keys.
pub(super) const INGEST_EXPIRY: TableDefinition<'_, (u64, u64), &[u8]> = TableDefinition::new("ingest_expiry");

/// Index `key` for the event `id` about to be appended at the head of the
/// log, unless the key is a live duplicate: then answer the original
/// event, and the index is as it was.
pub(super) fn claim(w: &mut Writes<'_>, key: &str, id: EventId) -> Result<Option<Published>, Fatal> {
    // Insert first and look at what it replaced: one tree search instead of
    // a get and an insert. A live duplicate (rare) puts the old entry back.
    let old = w.ingest.insert(key, (id.0, w.head, w.expires))?.map(|v| v.value());
    if let Some(old @ (id, seq, expires_at)) = old
        && expires_at > w.now
    {
        w.ingest.insert(key, old)?;
        return Ok(Some(Published { id: EventId(id), seq, duplicate: true }));
    }
    super::derived::note_claim(w, key, w.expires)?;
    Ok(None)
}

/// Index the keys this group claimed under one expiry batch: one insert per
/// group rather than one per key.
pub(super) fn index_expiry(w: &mut Writes<'_>) -> Result<(), Fatal> {
    if w.ingested.is_empty() {
        return Ok(());
    }
    let keys = std::mem::take(&mut w.ingested);
    let batch = w.next_batch();
    w.ingest_expiry.insert((w.expires, batch), encode(&keys).map_err(Fatal)?.as_slice())?;
    Ok(())
}
