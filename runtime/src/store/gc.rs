//! Garbage collection: idempotency records and ingest keys whose window is
//! over, found through their expiry indexes. A pass runs every
//! `StoreOptions::gc_interval`, between two groups of writes, in
//! transactions of its own (a failure there never fails a publish): each
//! transaction collects up to [`GC_BATCHES`] expiry batches of each index,
//! and the pass goes on until nothing expired is left or its time budget
//! (`writer::GC_BUDGET`) is spent; then the next pass follows the next
//! group instead of a whole interval later, so collection keeps up with
//! any rate of writes.

use redb::ReadableTable as _;

use super::IdempotencyRecord;
use super::codec::decode;
use super::command::Fatal;
use super::writer::Writes;

/// Most expiry batches of each index collected per transaction.
pub(super) const GC_BATCHES: usize = 256;

/// Collect what expired before the transaction's `now`, up to
/// [`GC_BATCHES`] expiry batches of each index. A damaged record never
/// fails the pass.
#[cfg(test)]
pub(super) fn collect(w: &mut Writes<'_>) -> Result<(), Fatal> {
    collect_some(w).map(drop)
}

/// [`collect`], answering whether nothing expired is left.
pub(super) fn collect_some(w: &mut Writes<'_>) -> Result<bool, Fatal> {
    let (idempotency, idempotency_batches) = idempotency_records(w)?;
    let (ingest, ingest_batches) = ingest_keys(w)?;
    if idempotency > 0 || ingest > 0 {
        tracing::debug!(idempotency, ingest, "collected expired records");
    }
    Ok(idempotency_batches < GC_BATCHES && ingest_batches < GC_BATCHES)
}

/// Idempotency records past their window; answers how many, and how many
/// expiry batches it took.
fn idempotency_records(w: &mut Writes<'_>) -> Result<(usize, usize), Fatal> {
    let now = w.now;
    let mut batches: Vec<(u64, String, u64, Vec<String>)> = Vec::new();
    for entry in w.idempotency_expiry.range((0, "", 0)..(now, "", 0))?.take(GC_BATCHES) {
        let (k, v) = entry?;
        let (at, sub, batch) = k.value();
        // A damaged batch is dropped: its records then live on until a
        // later handling of the same key renews and re-indexes them.
        match decode(v.value(), || format!("idempotency expiry batch {sub} {at}/{batch}")) {
            Ok(keys) => batches.push((at, sub.to_owned(), batch, keys)),
            Err(e) => {
                tracing::error!(error = %e, "garbage collection skips a damaged record");
                batches.push((at, sub.to_owned(), batch, Vec::new()));
            }
        }
    }
    let mut collected = 0usize;
    for (at, sub, batch, keys) in &batches {
        w.idempotency_expiry.remove((*at, sub.as_str(), *batch))?;
        for key in keys {
            // Only if the record is still the expired one: a later
            // handling of the same key renewed it.
            let stale = match w.idempotency.get((sub.as_str(), key.as_str()))? {
                Some(v) => {
                    match decode::<IdempotencyRecord>(v.value(), || format!("idempotency record {sub} key {key:?}")) {
                        Ok(record) => record.expires_at_ms <= now,
                        // Its window is over by the index; a damaged
                        // record is better gone than read.
                        Err(e) => {
                            tracing::error!(error = %e, "garbage collection removes a damaged record");
                            true
                        }
                    }
                }
                None => false,
            };
            if stale {
                w.idempotency.remove((sub.as_str(), key.as_str()))?;
                collected += 1;
            }
        }
    }
    Ok((collected, batches.len()))
}

/// Ingest de-duplication keys past their window; answers how many, and
/// how many expiry batches it took.
fn ingest_keys(w: &mut Writes<'_>) -> Result<(usize, usize), Fatal> {
    let now = w.now;
    let mut ingest_batches: Vec<(u64, u64, Vec<String>)> = Vec::new();
    for entry in w.ingest_expiry.range((0, 0)..(now, 0))?.take(GC_BATCHES) {
        let (k, v) = entry?;
        let (at, batch) = k.value();
        match decode(v.value(), || format!("ingest expiry batch {at}/{batch}")) {
            Ok(keys) => ingest_batches.push((at, batch, keys)),
            Err(e) => {
                tracing::error!(error = %e, "garbage collection skips a damaged record");
                ingest_batches.push((at, batch, Vec::new()));
            }
        }
    }
    let mut collected = 0usize;
    for (at, batch, keys) in &ingest_batches {
        w.ingest_expiry.remove((*at, *batch))?;
        for key in keys {
            let stale = w.ingest.get(key.as_str())?.is_some_and(|v| v.value().2 <= now);
            if stale {
                w.ingest.remove(key.as_str())?;
                collected += 1;
            }
        }
    }
    Ok((collected, ingest_batches.len()))
}

#[cfg(test)]
mod tests {
    use redb::{ReadableTable as _, ReadableTableMetadata as _};

    use super::*;
    use crate::store::codec::encode;
    use crate::store::ingest::{INGEST, INGEST_EXPIRY};
    use crate::store::subscription::{IDEMPOTENCY, IDEMPOTENCY_EXPIRY};
    use crate::store::testing::{record, temp_store, write_at};

    const SUB: &str = "orders/audit";

    fn keys(list: &[&str]) -> Vec<u8> {
        encode(&list).unwrap()
    }

    #[test]
    fn expired_records_are_collected_renewed_ones_kept_and_damaged_ones_skipped() {
        let (_dir, store) = temp_store();
        write_at(&store, 1_000, |w| {
            for (key, expires) in [("expired", 2_000), ("renewed", 9_000), ("live", 9_000), ("stranded", 1_500)] {
                w.idempotency.insert((SUB, key), encode(&record(0, expires)).map_err(Fatal)?.as_slice())?;
            }
            w.idempotency.insert((SUB, "damaged"), b"not a record".as_slice())?;
            // "renewed" was handled again after its first batch expired;
            // "gone" has no record any more.
            let due = keys(&["expired", "renewed", "damaged", "gone"]);
            w.idempotency_expiry.insert((2_000, SUB, 1), due.as_slice())?;
            // The batch listing "stranded" is damaged.
            w.idempotency_expiry.insert((1_500, SUB, 2), b"not a record".as_slice())?;
            w.idempotency_expiry.insert((9_000, SUB, 3), keys(&["live"]).as_slice())?;

            w.ingest.insert("p-expired", ([1; 16], 0, 2_000))?;
            w.ingest.insert("p-renewed", ([2; 16], 1, 9_000))?;
            w.ingest.insert("p-live", ([3; 16], 2, 9_000))?;
            w.ingest_expiry.insert((2_000, 1), keys(&["p-expired", "p-renewed"]).as_slice())?;
            w.ingest_expiry.insert((1_500, 2), b"not a record".as_slice())?;
            w.ingest_expiry.insert((9_000, 3), keys(&["p-live"]).as_slice())?;
            Ok(())
        });

        write_at(&store, 3_000, collect);

        let read = store.shared.begin_read().unwrap();
        let records = read.open_table(IDEMPOTENCY).unwrap();
        let left: Vec<String> = records.iter().unwrap().map(|e| e.unwrap().0.value().1.to_owned()).collect();
        // "stranded" outlives its window: its damaged batch was dropped, and
        // nothing else names it until the key is handled again.
        assert_eq!(left, ["live", "renewed", "stranded"]);
        let index = read.open_table(IDEMPOTENCY_EXPIRY).unwrap();
        let left: Vec<u64> = index.iter().unwrap().map(|e| e.unwrap().0.value().2).collect();
        assert_eq!(left, [3]);
        let ingest = read.open_table(INGEST).unwrap();
        let left: Vec<String> = ingest.iter().unwrap().map(|e| e.unwrap().0.value().to_owned()).collect();
        assert_eq!(left, ["p-live", "p-renewed"]);
        let index = read.open_table(INGEST_EXPIRY).unwrap();
        let left: Vec<(u64, u64)> = index.iter().unwrap().map(|e| e.unwrap().0.value()).collect();
        assert_eq!(left, [(9_000, 3)]);
    }

    #[test]
    fn one_pass_does_a_bounded_amount_of_work() {
        let (_dir, store) = temp_store();
        let batches = GC_BATCHES as u64 + 6;
        write_at(&store, 1_000, |w| {
            for batch in 0..batches {
                let key = format!("k{batch}");
                w.idempotency.insert((SUB, key.as_str()), encode(&record(0, 2_000)).map_err(Fatal)?.as_slice())?;
                w.idempotency_expiry.insert((2_000, SUB, batch), keys(&[&key]).as_slice())?;
            }
            Ok(())
        });
        let left = |store: &crate::store::Store| {
            let read = store.shared.begin_read().unwrap();
            read.open_table(IDEMPOTENCY).unwrap().len().unwrap()
        };
        write_at(&store, 3_000, collect);
        assert_eq!(left(&store), 6);
        write_at(&store, 3_000, collect);
        assert_eq!(left(&store), 0);
    }
}
