//! The store's own record format: how every value blob of the store's
//! tables (log events, parked and DLQ entries, idempotency records, deploy
//! history, expiry batches) is written and read back.
//!
//! ```text
//! byte 0      record format version (RECORD_VERSION)
//! bytes 1..5  CRC-32 (IEEE) of the body, little-endian
//! bytes 5..   body: serde + bincode 2.0.1, standard configuration
//! ```
//!
//! The format belongs to the store, not to the plugin ABI: a new ABI
//! version does not change a stored byte. The checksum is verified on every
//! read, so a record damaged on disk (an edited payload, a flipped bit in a
//! DLQ entry) is reported as [`StoreError::RecordCorrupt`] instead of being
//! served as a wrong answer. redb checks its pages when the store is opened
//! (see `Store::open`); this check covers what happens to a record after
//! that, and damage inside a page whose checksum was rewritten.

use serde::Serialize;
use serde::de::DeserializeOwned;
use weir_abi::{Event, EventId};

use super::StoreError;

/// The version of the record layout above. A record with another first byte
/// is refused as damaged.
pub(super) const RECORD_VERSION: u8 = 1;
const HEADER: usize = 5;
/// The largest body decoded: a guard against a damaged length prefix making
/// the decoder allocate without bound. Events are limited far below this
/// (`ingest.max_payload_bytes`, `max_output_bytes`).
const DECODE_LIMIT: usize = 256 * 1024 * 1024;

fn config() -> bincode::config::Configuration {
    bincode::config::standard()
}

/// Encode `value` as a record.
///
/// # Errors
///
/// [`StoreError::Decode`] if serde cannot write the value (a bug, not input).
pub(super) fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, StoreError> {
    let mut out = Vec::new();
    encode_into(&mut out, value)?;
    Ok(out)
}

/// Append `value` as a record to `out`. On error `out` is left as it was.
fn encode_into<T: Serialize + ?Sized>(out: &mut Vec<u8>, value: &T) -> Result<(), StoreError> {
    framed(out, |out| {
        bincode::serde::encode_into_std_write(value, out, config())
            .map(drop)
            .map_err(|e| StoreError::Decode(format!("cannot encode a record: {e}")))
    })
}

/// Append a record to `out`: the header, then the body `body` writes, then
/// the body's checksum into the header. On error `out` is left as it was.
fn framed(out: &mut Vec<u8>, body: impl FnOnce(&mut Vec<u8>) -> Result<(), StoreError>) -> Result<(), StoreError> {
    let start = out.len();
    out.extend_from_slice(&[RECORD_VERSION, 0, 0, 0, 0]);
    if let Err(e) = body(out) {
        out.truncate(start);
        return Err(e);
    }
    let crc = crc32fast::hash(&out[start + HEADER..]);
    out[start + 1..start + HEADER].copy_from_slice(&crc.to_le_bytes());
    Ok(())
}

/// Append `event` as a record to `out`, through the ABI crate's
/// hand-written encoder: the same bytes as [`encode_into`] writes, at a
/// fraction of serde's per-field cost (events are the per-event records).
fn encode_event_into(out: &mut Vec<u8>, event: &Event) {
    // Infallible: the hand-written encoder cannot fail.
    let _ = framed(out, |out| {
        weir_abi::encoding::encode_event_into(event, out);
        Ok(())
    });
}

/// Decode an event record, verifying its version and checksum (as
/// [`decode`] would, faster).
///
/// # Errors
///
/// As [`decode`].
pub(super) fn decode_event(bytes: &[u8], what: impl FnOnce() -> String) -> Result<Event, StoreError> {
    match verified_body(bytes) {
        Ok(body) => decode_event_body(body, what),
        Err(reason) => Err(StoreError::RecordCorrupt { record: what(), reason }),
    }
}

/// Decode an event record's body already verified by [`verify`] (as
/// [`decode_body`] would, faster).
///
/// # Errors
///
/// As [`decode_body`].
pub(super) fn decode_event_body(body: &[u8], what: impl FnOnce() -> String) -> Result<Event, StoreError> {
    weir_abi::encoding::decode_event(body).map_err(|e| StoreError::RecordCorrupt {
        record: what(),
        reason: format!("the checksum matches but the body does not decode: {e}"),
    })
}

/// An emitted event as its log record, encoded by the worker that emitted
/// it rather than by the writer: the writer, which every event of every
/// subscription passes through one at a time, only copies the bytes into
/// the log, and the event's strings are freed on the thread that made them
/// (issue 18). Carries the id and cause the log's indexes take.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct EmitRecord {
    record: Vec<u8>,
    pub(super) id: EventId,
    pub(super) causation_id: Option<EventId>,
}

impl EmitRecord {
    /// `event` as a log record.
    pub(crate) fn new(event: &Event) -> Self {
        let mut record = Vec::with_capacity(event.payload.len() + event.idempotency_key.len() + 256);
        encode_event_into(&mut record, event);
        Self { record, id: event.id, causation_id: event.causation_id }
    }

    /// The encoded event, without the record's header: the bytes
    /// `weir_abi::encoding::encode` gives for it.
    pub(crate) fn body(&self) -> &[u8] {
        &self.record[HEADER..]
    }

    /// The record's size in bytes.
    pub(crate) fn len(&self) -> usize {
        self.record.len()
    }

    /// The whole record, as the log stores it.
    pub(super) fn record(&self) -> &[u8] {
        &self.record
    }

    /// The event's topic and key, read from the record.
    pub(super) fn topic_and_key(&self) -> Result<(&str, Option<&str>), weir_abi::encoding::DecodeError> {
        weir_abi::encoding::event_topic_and_key(self.body())
    }

    /// The event, decoded back.
    #[cfg(test)]
    pub(crate) fn decode(&self) -> Result<Event, StoreError> {
        decode_event(&self.record, || "an emitted event".into())
    }
}

/// The records one store command encoded before writing any: the writer
/// encodes everything a command will store first, so a record that cannot
/// be encoded refuses the command before anything of it is written. One
/// buffer, kept by the writer from command to command, so the per-event
/// path allocates nothing for its records once the buffer has grown.
#[derive(Debug, Default)]
pub(super) struct Encoded {
    bytes: Vec<u8>,
    /// Where each record ends in `bytes`.
    ends: Vec<usize>,
}

impl Encoded {
    /// Past this many bytes the buffer is given back after a group rather
    /// than kept for the next one: one huge publish must not pin its size.
    const KEEP: usize = 16 * 1024 * 1024;

    /// Forget the records of the previous command.
    pub(super) fn clear(&mut self) {
        self.bytes.clear();
        self.ends.clear();
    }

    /// Give back memory a large command grew the buffer to.
    pub(super) fn trim(&mut self) {
        if self.bytes.capacity() > Self::KEEP {
            *self = Self::default();
        }
    }

    /// Encode `value` as the next record.
    ///
    /// # Errors
    ///
    /// As [`encode`]; the records pushed before stay.
    pub(super) fn push<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), StoreError> {
        encode_into(&mut self.bytes, value)?;
        self.ends.push(self.bytes.len());
        Ok(())
    }

    /// Encode `event` as the next record (infallible: every event encodes).
    pub(super) fn push_event(&mut self, event: &Event) {
        encode_event_into(&mut self.bytes, event);
        self.ends.push(self.bytes.len());
    }

    /// The records, in the order they were pushed.
    pub(super) fn records(&self) -> Records<'_> {
        Records { encoded: self, next: 0 }
    }
}

/// The records of an [`Encoded`] in order, as the command's write takes
/// them.
#[derive(Debug)]
pub(super) struct Records<'a> {
    encoded: &'a Encoded,
    next: usize,
}

impl<'a> Iterator for Records<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        let end = *self.encoded.ends.get(self.next)?;
        let start = match self.next {
            0 => 0,
            i => self.encoded.ends[i - 1],
        };
        self.next += 1;
        Some(&self.encoded.bytes[start..end])
    }
}

/// Decode a record, verifying its version and checksum. `what` names the
/// record for the error (`log seq 42`, `dlq orders/validator seq 7`).
///
/// # Errors
///
/// [`StoreError::RecordCorrupt`] naming the record when the version byte,
/// the checksum or the body is wrong.
pub(super) fn decode<T: DeserializeOwned>(bytes: &[u8], what: impl FnOnce() -> String) -> Result<T, StoreError> {
    match verified_body(bytes) {
        Ok(body) => decode_body(body, what),
        Err(reason) => Err(StoreError::RecordCorrupt { record: what(), reason }),
    }
}

/// Decode the leading fields of a record as `T` (a struct of the record's
/// first fields, in order), checksum verified, the rest left undecoded:
/// for a reader that needs a field or two of a record read per event.
///
/// # Errors
///
/// [`StoreError::RecordCorrupt`] naming the record when the checksum does
/// not match or the leading fields do not decode.
pub(super) fn decode_head<T: DeserializeOwned>(bytes: &[u8], what: impl FnOnce() -> String) -> Result<T, StoreError> {
    let body = match verified_body(bytes) {
        Ok(body) => body,
        Err(reason) => return Err(StoreError::RecordCorrupt { record: what(), reason }),
    };
    let limited = config().with_limit::<DECODE_LIMIT>();
    match bincode::serde::decode_from_slice::<T, _>(body, limited) {
        Ok((value, _)) => Ok(value),
        Err(e) => Err(StoreError::RecordCorrupt {
            record: what(),
            reason: format!("the checksum matches but the body does not decode: {e}"),
        }),
    }
}

/// Decode a record's body already verified by [`verify`].
///
/// # Errors
///
/// [`StoreError::RecordCorrupt`] naming the record when the body does not
/// decode, or does not end where the record ends.
pub(super) fn decode_body<T: DeserializeOwned>(body: &[u8], what: impl FnOnce() -> String) -> Result<T, StoreError> {
    let damaged = |what: String, reason: String| StoreError::RecordCorrupt { record: what, reason };
    let limited = config().with_limit::<DECODE_LIMIT>();
    match bincode::serde::decode_from_slice::<T, _>(body, limited) {
        Ok((value, used)) if used == body.len() => Ok(value),
        Ok((_, used)) => Err(damaged(what(), format!("{} trailing bytes after the record", body.len() - used))),
        Err(e) => Err(damaged(what(), format!("the checksum matches but the body does not decode: {e}"))),
    }
}

/// The topic of an event record's verified body ([`verify`]), read without
/// decoding the rest: the id (16 bytes) and the topic (a length and UTF-8
/// bytes, borrowed) lead the event's wire order, so a reader skips the
/// events of topics it does not want for a checksum and a few bytes rather
/// than a whole decode (issue 18).
///
/// # Errors
///
/// [`StoreError::RecordCorrupt`] naming the record when no topic decodes.
pub(super) fn event_topic(body: &[u8], what: impl FnOnce() -> String) -> Result<&str, StoreError> {
    weir_abi::encoding::event_topic(body).map_err(|e| StoreError::RecordCorrupt {
        record: what(),
        reason: format!("the checksum matches but the topic does not decode: {e}"),
    })
}

/// The body of a record, once its version and checksum are verified.
///
/// # Errors
///
/// [`StoreError::RecordCorrupt`] naming the record, as [`decode`].
pub(super) fn verify(bytes: &[u8], what: impl FnOnce() -> String) -> Result<&[u8], StoreError> {
    verified_body(bytes).map_err(|reason| StoreError::RecordCorrupt { record: what(), reason })
}

fn verified_body(bytes: &[u8]) -> Result<&[u8], String> {
    if bytes.len() < HEADER {
        return Err(format!("{} bytes, shorter than a record header", bytes.len()));
    }
    if bytes[0] != RECORD_VERSION {
        return Err(format!("record format {} (expected {RECORD_VERSION})", bytes[0]));
    }
    let stored = u32::from_le_bytes([bytes[1], bytes[2], bytes[3], bytes[4]]);
    let body = &bytes[HEADER..];
    let actual = crc32fast::hash(body);
    if stored != actual {
        return Err(format!("checksum mismatch (stored {stored:08x}, computed {actual:08x})"));
    }
    Ok(body)
}

/// Decode a record of store format 1, which had no header: the body alone.
/// Used only by the migration to format 2.
pub(super) fn decode_v1<T: DeserializeOwned>(bytes: &[u8], what: impl FnOnce() -> String) -> Result<T, StoreError> {
    let limited = config().with_limit::<DECODE_LIMIT>();
    bincode::serde::decode_from_slice::<T, _>(bytes, limited)
        .map(|(v, _)| v)
        .map_err(|e| StoreError::RecordCorrupt { record: what(), reason: format!("format 1 record: {e}") })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip(value: &(u64, String, Vec<u8>)) -> (u64, String, Vec<u8>) {
        decode(&encode(value).unwrap(), || "test".into()).unwrap()
    }

    #[test]
    fn round_trips() {
        let v = (42, "hello".to_owned(), vec![0, 1, 2, 255]);
        assert_eq!(roundtrip(&v), v);
    }

    #[test]
    fn every_flipped_bit_is_caught() {
        let bytes = encode(&(7_u64, "payload".to_owned(), vec![9_u8; 40])).unwrap();
        for i in 0..bytes.len() {
            for bit in 0..8 {
                let mut damaged = bytes.clone();
                damaged[i] ^= 1 << bit;
                let err = decode::<(u64, String, Vec<u8>)>(&damaged, || format!("byte {i}")).unwrap_err();
                assert_eq!(err.code(), "store_record_corrupt", "byte {i} bit {bit}");
                assert!(err.to_string().contains(&format!("byte {i}")), "{err}");
            }
        }
    }

    #[test]
    fn truncation_and_trailing_bytes_are_caught() {
        let bytes = encode(&(7_u64, "payload".to_owned())).unwrap();
        for len in 0..bytes.len() {
            assert!(decode::<(u64, String)>(&bytes[..len], || "t".into()).is_err(), "len {len}");
        }
        // Trailing garbage with a checksum recomputed over it: the body
        // decodes but does not end where the record ends.
        let mut longer = bytes.clone();
        longer.push(0);
        let crc = crc32fast::hash(&longer[HEADER..]);
        longer[1..HEADER].copy_from_slice(&crc.to_le_bytes());
        let err = decode::<(u64, String)>(&longer, || "t".into()).unwrap_err();
        assert!(err.to_string().contains("trailing"), "{err}");
    }

    #[test]
    fn encoded_records_come_back_in_order_and_match_encode() {
        let mut encoded = Encoded::default();
        encoded.push(&(1_u64, "one".to_owned())).unwrap();
        encoded.push(&vec!["a", "b"]).unwrap();
        encoded.push("three").unwrap();
        let records: Vec<&[u8]> = encoded.records().collect();
        assert_eq!(records.len(), 3);
        assert_eq!(records[0], encode(&(1_u64, "one".to_owned())).unwrap().as_slice());
        // A list of borrowed keys is stored as the `Vec<String>` the
        // collector decodes.
        assert_eq!(decode::<Vec<String>>(records[1], || "t".into()).unwrap(), ["a", "b"]);
        assert_eq!(decode::<String>(records[2], || "t".into()).unwrap(), "three");
        encoded.clear();
        assert_eq!(encoded.records().count(), 0);
    }

    #[test]
    fn the_topic_is_read_from_an_event_record_without_decoding_it_and_damage_still_shows() {
        let mut event = weir_abi::Event {
            id: weir_abi::EventId([7; 16]),
            topic: "orders.order.created".into(),
            source: "s".into(),
            key: Some("k".into()),
            schema_version: 1,
            time: 1,
            content_type: String::new(),
            headers: Vec::new(),
            idempotency_key: "k".into(),
            correlation_id: None,
            causation_id: None,
            payload: vec![1; 300],
        };
        for topic in ["a.b.c", "orders.order.created", &"x".repeat(300)] {
            event.topic = topic.to_owned();
            let bytes = encode(&event).unwrap();
            assert_eq!(event_topic(verify(&bytes, || "t".into()).unwrap(), || "t".into()).unwrap(), topic);
            assert_eq!(decode::<weir_abi::Event>(&bytes, || "t".into()).unwrap().topic, topic);
            // The hand-written encoder writes serde's record, byte for byte,
            // and its decoder reads serde's back.
            let mut encoded = Encoded::default();
            encoded.push_event(&event);
            assert_eq!(encoded.records().next(), Some(&bytes[..]));
            assert_eq!(decode_event(&bytes, || "t".into()).unwrap(), event);
            // A worker's encoding of an emit is the same record.
            let emit = EmitRecord::new(&event);
            assert_eq!(emit.record(), &bytes[..]);
            assert_eq!(emit.body(), &weir_abi::encoding::encode(&event).unwrap()[..]);
            assert_eq!(emit.topic_and_key().unwrap(), (topic, Some("k")));
            assert_eq!(emit.decode().unwrap(), event);
        }
        let bytes = encode(&event).unwrap();
        for i in 0..bytes.len() {
            let mut damaged = bytes.clone();
            damaged[i] ^= 0x10;
            let err = verify(&damaged, || format!("byte {i}")).unwrap_err();
            assert_eq!(err.code(), "store_record_corrupt", "byte {i}");
        }
        // A body that passes the checksum but is too short for a topic.
        let short = encode(&[1_u8; 3]).unwrap();
        let body = verify(&short, || "t".into()).unwrap();
        assert!(event_topic(body, || "t".into()).unwrap_err().to_string().contains("topic does not decode"));
    }

    #[test]
    fn format_1_bodies_decode_for_the_migration() {
        let body = bincode::serde::encode_to_vec(&(1_u64, "x".to_owned()), config()).unwrap();
        assert_eq!(decode_v1::<(u64, String)>(&body, || "t".into()).unwrap(), (1, "x".to_owned()));
    }
}
