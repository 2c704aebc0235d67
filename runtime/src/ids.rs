//! Event id generation: ULIDs, monotonic within one generator.

use std::sync::Mutex;

use weir_abi::EventId;

const RANDOM_BITS: u32 = 80;
const RANDOM_MASK: u128 = (1 << RANDOM_BITS) - 1;

/// Hands out time-sortable ids. Within one millisecond the random part
/// counts up, so ids from one generator are strictly increasing even when
/// the clock stands still or steps back.
#[derive(Debug, Default)]
pub struct IdGenerator {
    last: Mutex<u128>,
}

impl IdGenerator {
    /// A new generator.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// The next id.
    pub fn next_id(&self) -> EventId {
        let now_ms = u128::from(crate::clock::now_ms()) & ((1 << 48) - 1);
        let candidate = (now_ms << RANDOM_BITS) | (rand::random::<u128>() & RANDOM_MASK);
        let mut last = self.last.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        // Same or earlier millisecond than the last id: count up from it.
        let id = if (candidate >> RANDOM_BITS) <= (*last >> RANDOM_BITS) { last.saturating_add(1) } else { candidate };
        *last = id;
        EventId::from_u128(id)
    }
}

#[cfg(test)]
mod tests {
    use std::time::{SystemTime, UNIX_EPOCH};

    use super::*;

    #[test]
    fn ids_strictly_increase_and_carry_the_time() {
        let generator = IdGenerator::new();
        let mut previous = generator.next_id();
        for _ in 0..10_000 {
            let id = generator.next_id();
            assert!(id > previous);
            previous = id;
        }
        let now_ms = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as u64;
        assert!(now_ms.abs_diff(previous.timestamp_ms()) < 60_000);
    }
}
