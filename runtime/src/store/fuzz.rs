//! The store's record decoding, reachable by the fuzz targets in `fuzz/`
//! (through `crate::fuzzing`). Every table's value type is decoded from
//! hostile bytes twice: as given (header and checksum checked) and behind a
//! valid header, so the body decoder is reached, not only the checksum.

use weir_abi::Event;

use super::codec::{self, RECORD_VERSION};
use super::types::{DlqEntry, IdempotencyRecord, ParkedEntry, VersionRecord};

/// Decode `data` as the record kind its first byte selects. Must never
/// panic, abort or allocate without bound, whatever `data` is.
pub(crate) fn record(data: &[u8]) {
    let Some((&kind, body)) = data.split_first() else { return };
    let mut framed = Vec::with_capacity(body.len() + 5);
    framed.push(RECORD_VERSION);
    framed.extend_from_slice(&crc32fast::hash(body).to_le_bytes());
    framed.extend_from_slice(body);
    for bytes in [body, &framed[..]] {
        let what = || String::from("fuzz");
        match kind % 8 {
            // Both decoders of events: they must agree on every input.
            0 => {
                let serde = codec::decode::<Event>(bytes, what).ok();
                let fast = codec::decode_event(bytes, what).ok();
                assert_eq!(serde, fast, "the event decoders disagree");
            }
            1 => drop(codec::decode::<DlqEntry>(bytes, what)),
            2 => drop(codec::decode::<ParkedEntry>(bytes, what)),
            3 => drop(codec::decode::<IdempotencyRecord>(bytes, what)),
            4 => drop(codec::decode::<VersionRecord>(bytes, what)),
            // Expiry batches (idempotency and ingest GC).
            5 => drop(codec::decode::<Vec<String>>(bytes, what)),
            // Format 1 records, read only by the migration.
            6 => drop(codec::decode_v1::<Event>(bytes, what)),
            _ => drop(codec::decode_v1::<DlqEntry>(bytes, what)),
        }
    }
}
