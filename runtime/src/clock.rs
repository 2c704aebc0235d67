//! The wall clock, read in one place. Event times are nanoseconds since the
//! Unix epoch (`i64`, as in the ABI's `Event::time`); the store's expiry and
//! due times are milliseconds (`u64`). A clock before 1970 reads as 0, one
//! past the range of the type as its maximum: never a panic.

use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch, now.
#[must_use]
pub(crate) fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Nanoseconds since the Unix epoch, now (an event's `time`).
#[must_use]
pub fn now_nanos() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_units_read_the_same_instant() {
        let ms = now_ms();
        let nanos = now_nanos();
        assert!(nanos > 0);
        assert!((nanos / 1_000_000).abs_diff(ms as i64) < 5_000);
    }
}
