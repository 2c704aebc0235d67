//! The encoding of ABI v1: serde + bincode 2.0.1 with the standard
//! configuration (little-endian, variable-length integers).
//!
//! This is the only module that names bincode, so the encoding can change
//! with the ABI version without touching anything else.

use core::cell::Cell;
use core::fmt;

use serde::Serialize;
use serde::de::DeserializeOwned;

/// The largest message [`decode`] accepts. It is a guard against a hostile
/// length prefix, not part of the wire format: the limit does not change the
/// bytes.
pub const DECODE_LIMIT: usize = 64 * 1024 * 1024;

fn config() -> bincode::config::Configuration {
    bincode::config::standard()
}

fn limited() -> bincode::config::Configuration<
    bincode::config::LittleEndian,
    bincode::config::Varint,
    bincode::config::Limit<DECODE_LIMIT>,
> {
    bincode::config::standard().with_limit::<DECODE_LIMIT>()
}

/// A value could not be encoded (a serde error, e.g. a map with a key type
/// bincode cannot write).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncodeError(String);

impl fmt::Display for EncodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "cannot encode: {}", self.0)
    }
}

impl std::error::Error for EncodeError {}

/// Bytes could not be decoded as the expected type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeError(String);

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "cannot decode: {}", self.0)
    }
}

impl std::error::Error for DecodeError {}

impl DecodeError {
    pub(crate) fn new(reason: String) -> Self {
        Self(reason)
    }
}

pub use crate::delivery::{
    decode_delivery, decode_event, encode_delivery_hiding, encode_delivery_into, encode_event_into, event_topic,
    event_topic_and_key,
};

/// Encode `value` into a new buffer.
///
/// # Errors
///
/// [`EncodeError`] if serde reports an error.
pub fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, EncodeError> {
    let mut buf = Vec::new();
    encode_into(value, &mut buf)?;
    Ok(buf)
}

/// Encode `value`, appending to `buf` — lets a caller reuse one buffer across
/// many messages.
///
/// # Errors
///
/// [`EncodeError`] if serde reports an error.
pub fn encode_into<T: Serialize + ?Sized>(value: &T, buf: &mut Vec<u8>) -> Result<usize, EncodeError> {
    bincode::serde::encode_into_std_write(value, buf, config()).map_err(|e| EncodeError(e.to_string()))
}

/// Decode a `T` that must fill `bytes` exactly.
///
/// # Errors
///
/// [`DecodeError`] on malformed input, trailing bytes, or a message longer
/// than [`DECODE_LIMIT`].
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, DecodeError> {
    let (value, read) = bincode::serde::decode_from_slice(bytes, limited()).map_err(|e| DecodeError(e.to_string()))?;
    if read != bytes.len() {
        return Err(DecodeError(format!("{} trailing bytes after the message", bytes.len() - read)));
    }
    Ok(value)
}

/// The decode budget of [`decode_with_budget`] ran out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BudgetExceeded;

impl fmt::Display for BudgetExceeded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the decoded message would take more memory than its decode budget")
    }
}

impl std::error::Error for BudgetExceeded {}

std::thread_local! {
    /// What is left of the budget of the [`decode_with_budget`] running on
    /// this thread; `None` outside one (nothing is charged).
    static BUDGET: Cell<Option<usize>> = const { Cell::new(None) };
}

/// Charge `bytes` of in-memory overhead to the running decode's budget.
pub(crate) fn charge(bytes: usize) -> Result<(), BudgetExceeded> {
    BUDGET.with(|budget| match budget.get() {
        None => Ok(()),
        Some(left) if left >= bytes => {
            budget.set(Some(left - bytes));
            Ok(())
        }
        Some(_) => Err(BudgetExceeded),
    })
}

/// Resets the budget when the decode ends, even by a panic.
struct BudgetGuard(Option<usize>);

impl Drop for BudgetGuard {
    fn drop(&mut self) {
        BUDGET.with(|budget| budget.set(self.0));
    }
}

/// [`decode`], with the in-memory overhead of the decoded structures
/// bounded: every [`Header`](crate::Header) and [`Emit`](crate::Emit)
/// decoded charges its size (`size_of`, 48 and 184 bytes on 64-bit hosts) to
/// `budget`, and the decode fails as soon as it is spent. String and payload
/// bytes are not charged: they are no larger than the message itself. So a
/// message of `n` bytes decodes into at most about `n + budget` bytes of
/// memory, where without a budget an emit with a million empty headers (two
/// bytes each on the wire) would take 24 times its size.
///
/// The host decodes guest output with a budget equal to the output cap.
///
/// # Errors
///
/// As [`decode`], and [`DecodeError`] naming the budget when it runs out.
pub fn decode_with_budget<T: DeserializeOwned>(bytes: &[u8], budget: usize) -> Result<T, DecodeError> {
    let previous = BUDGET.with(|b| b.replace(Some(budget)));
    let _guard = BudgetGuard(previous);
    decode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Emit, EventId, Outcome};

    #[test]
    fn payload_is_encoded_as_one_byte_string() {
        let emit = Emit {
            topic: "a.b.c".into(),
            key: None,
            schema_version: 1,
            content_type: String::new(),
            headers: vec![],
            idempotency_key: None,
            correlation_id: None,
            causation_id: None,
            payload: vec![200; 300],
        };
        let bytes = encode(&emit).unwrap();
        // topic(1+5) key(1) schema(1) content_type(1) headers(1) idem(1)
        // corr(1) caus(1) payload len (3: 251, u16) + 300 raw bytes.
        assert_eq!(bytes.len(), 6 + 7 + 3 + 300);
        assert_eq!(&bytes[13..16], &[251, 0x2c, 0x01]);
    }

    #[test]
    fn trailing_bytes_are_refused() {
        let mut bytes = encode(&Outcome::Retry("x".into())).unwrap();
        bytes.push(0);
        assert!(decode::<Outcome>(&bytes).is_err());
    }

    #[test]
    fn a_budget_bounds_the_decoded_overhead() {
        use crate::Header;
        let mut emit = Emit {
            topic: "a.b.c".into(),
            key: None,
            schema_version: 1,
            content_type: String::new(),
            headers: vec![Header::new("", ""); 10_000],
            idempotency_key: None,
            correlation_id: None,
            causation_id: None,
            payload: vec![],
        };
        let bytes = encode(&Outcome::Ok(vec![emit.clone()])).unwrap();
        assert!(bytes.len() < 20_100, "two bytes per empty header on the wire");
        let err = decode_with_budget::<Outcome>(&bytes, 100_000).unwrap_err();
        assert!(err.to_string().contains("decode budget"), "{err}");
        assert!(decode_with_budget::<Outcome>(&bytes, 1_000_000).is_ok());
        // Outside a budgeted decode nothing is charged.
        assert!(decode::<Outcome>(&bytes).is_ok());
        emit.headers.truncate(1);
        let small = encode(&Outcome::Ok(vec![emit])).unwrap();
        assert!(decode_with_budget::<Outcome>(&small, 1_000).is_ok());
    }

    #[cfg(target_pointer_width = "64")]
    #[test]
    fn the_charged_sizes_are_the_documented_ones() {
        assert_eq!(core::mem::size_of::<crate::Header>(), 48);
        assert_eq!(core::mem::size_of::<Emit>(), 184);
    }

    #[test]
    fn event_id_is_sixteen_raw_bytes() {
        let bytes = encode(&EventId::from_u128(u128::MAX)).unwrap();
        assert_eq!(bytes, vec![0xff; 16]);
    }
}
