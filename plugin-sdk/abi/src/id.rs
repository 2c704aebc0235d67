use core::fmt;
use core::str::FromStr;

use serde::{Deserialize, Serialize};

/// A 128-bit event identifier, sortable by creation time.
///
/// The host assigns ids as ULIDs: 48 bits of milliseconds since the Unix epoch
/// followed by 80 random (monotonic within a millisecond) bits, stored
/// big-endian so that byte order is time order. On the wire it is 16 raw bytes;
/// as text it is the 26-character Crockford base32 form.
///
/// # Examples
///
/// ```
/// use weir_abi::EventId;
/// let id: EventId = "01ARZ3NDEKTSV4RRFFQ69G5FAV".parse().unwrap();
/// assert_eq!(id.to_string(), "01ARZ3NDEKTSV4RRFFQ69G5FAV");
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default, Serialize, Deserialize)]
pub struct EventId(pub [u8; 16]);

const CROCKFORD: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";

impl EventId {
    /// The id as a `u128` (big-endian interpretation of the bytes).
    #[must_use]
    pub const fn as_u128(&self) -> u128 {
        u128::from_be_bytes(self.0)
    }

    /// Build an id from a `u128`.
    #[must_use]
    pub const fn from_u128(value: u128) -> Self {
        Self(value.to_be_bytes())
    }

    /// The millisecond timestamp held in the first 48 bits.
    #[must_use]
    pub const fn timestamp_ms(&self) -> u64 {
        (self.as_u128() >> 80) as u64
    }
}

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut value = self.as_u128();
        let mut out = [0u8; 26];
        for slot in out.iter_mut().rev() {
            *slot = CROCKFORD[(value & 0x1f) as usize];
            value >>= 5;
        }
        // Every byte comes from CROCKFORD, which is ASCII.
        f.write_str(core::str::from_utf8(&out).map_err(|_| fmt::Error)?)
    }
}

impl fmt::Debug for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "EventId({self})")
    }
}

/// Why a string is not an [`EventId`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseEventIdError {
    reason: &'static str,
}

impl fmt::Display for ParseEventIdError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid event id: {} (expected 26 Crockford base32 characters, a ULID)", self.reason)
    }
}

impl std::error::Error for ParseEventIdError {}

impl FromStr for EventId {
    type Err = ParseEventIdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bytes = s.as_bytes();
        if bytes.len() != 26 {
            return Err(ParseEventIdError { reason: "wrong length" });
        }
        // 26 * 5 = 130 bits: the first character may only carry 3 bits.
        if decode_char(bytes[0]).is_some_and(|v| v > 7) {
            return Err(ParseEventIdError { reason: "value exceeds 128 bits" });
        }
        let mut value: u128 = 0;
        for &c in bytes {
            let digit = decode_char(c)
                .ok_or(ParseEventIdError { reason: "character outside the Crockford base32 alphabet" })?;
            value = (value << 5) | u128::from(digit);
        }
        Ok(Self::from_u128(value))
    }
}

fn decode_char(c: u8) -> Option<u8> {
    let c = c.to_ascii_uppercase();
    let value = match c {
        b'0'..=b'9' => c - b'0',
        // Crockford: I and L read as 1, O as 0.
        b'O' => 0,
        b'I' | b'L' => 1,
        _ => CROCKFORD.iter().position(|&x| x == c)? as u8,
    };
    Some(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_round_trip_keeps_order() {
        let a = EventId::from_u128(1);
        let b = EventId::from_u128(u128::MAX);
        let (ta, tb) = (a.to_string(), b.to_string());
        assert!(ta < tb);
        assert_eq!(ta.parse::<EventId>(), Ok(a));
        assert_eq!(tb.parse::<EventId>(), Ok(b));
        assert_eq!(tb, "7ZZZZZZZZZZZZZZZZZZZZZZZZZ");
    }

    #[test]
    fn rejects_bad_text() {
        assert!("".parse::<EventId>().is_err());
        assert!("8ZZZZZZZZZZZZZZZZZZZZZZZZZ".parse::<EventId>().is_err());
        assert!("01ARZ3NDEKTSV4RRFFQ69G5FA!".parse::<EventId>().is_err());
        assert!("01arz3ndektsv4rrffq69g5fav".parse::<EventId>().is_ok());
    }
}
