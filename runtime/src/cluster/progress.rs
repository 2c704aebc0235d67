//! The published floor of each owned partition: the stream sequence up to
//! which every input has been handled by every subscription of this node
//! and everything it caused has been sent (a sink's cursor passes an event
//! only after its PubAck or its receiver's answer).
//!
//! Found in two phases from snapshots, because outputs are appended after
//! their input: at tick k the coordinator notes each owned partition's
//! position `A` and then the local log's head `H1` (every input up to `A` is
//! at or below `H1`). Once every subscription's cursor has passed `H1`
//! (with nothing parked), each of those inputs has committed its outputs,
//! all at or below the head `H2` read at that moment; once every cursor has
//! passed `H2`, those outputs are sent and `A` is the floor. A chain of
//! pipelines inside one node would need a phase per stage; the cluster's
//! pipelines take their input from the partitions (docs/scale-out.md).
//!
//! A snapshot counts only for a partition owned, without a break, from
//! before it was taken: an output held back while the partition was owned
//! elsewhere was not sent by this node.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use crate::delivery::SubscriptionCounters;

/// Snapshots waiting for the cursors; more are not taken meanwhile.
const MAX_PENDING: usize = 16;

struct Snapshot {
    h1: u64,
    h2: Option<u64>,
    /// (partition, ownership epoch, position).
    marks: Vec<(u32, u64, u64)>,
}

#[derive(Default)]
pub(super) struct Progress {
    pending: VecDeque<Snapshot>,
}

impl Progress {
    /// One tick. `owned` is each owned partition with its epoch and
    /// position, read before `head`; `epoch_of` answers a partition's
    /// current epoch (`None`: not owned). Answers the floors found.
    pub(super) fn tick(
        &mut self,
        owned: Vec<(u32, u64, u64)>,
        head: u64,
        counters: &[Arc<SubscriptionCounters>],
        epoch_of: impl Fn(u32) -> Option<u64>,
    ) -> Vec<(u32, u64)> {
        let low = low_water(counters);
        let mut floors = Vec::new();
        if let Some(low) = low {
            for snapshot in &mut self.pending {
                if snapshot.h2.is_none() && low >= snapshot.h1 {
                    // Read after the cursors: outputs of inputs up to h1 are
                    // at or below it.
                    snapshot.h2 = Some(head);
                }
            }
            while let Some(front) = self.pending.front() {
                match front.h2 {
                    Some(h2) if low >= h2 => {}
                    _ => break,
                }
                if let Some(done) = self.pending.pop_front() {
                    for (p, epoch, position) in done.marks {
                        if epoch_of(p) == Some(epoch) {
                            floors.push((p, position));
                        }
                    }
                }
            }
        }
        if self.pending.len() < MAX_PENDING && !owned.is_empty() {
            self.pending.push_back(Snapshot { h1: head, h2: None, marks: owned });
        }
        floors
    }
}

/// The position every subscription has passed, or `None` while one has
/// events parked for a retry (their outputs are not committed yet).
fn low_water(counters: &[Arc<SubscriptionCounters>]) -> Option<u64> {
    let mut low = u64::MAX;
    for c in counters {
        if c.parked.load(Ordering::Acquire) > 0 {
            return None;
        }
        low = low.min(c.cursor.load(Ordering::Acquire));
    }
    Some(low)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counters(cursors: &[u64]) -> Vec<Arc<SubscriptionCounters>> {
        cursors
            .iter()
            .map(|c| {
                let s = SubscriptionCounters::default();
                s.cursor.store(*c, Ordering::Relaxed);
                Arc::new(s)
            })
            .collect()
    }

    #[test]
    fn a_floor_needs_two_phases_and_an_unbroken_ownership() {
        let mut progress = Progress::default();
        let owned = |e| Some(e);
        // Tick 1: partition 3 at stream seq 40, the log's head at 100.
        assert!(progress.tick(vec![(3, 1, 40)], 100, &counters(&[50, 100]), |_| owned(1)).is_empty());
        // The cursors pass 100: outputs are at or below the head now, 130.
        assert!(progress.tick(vec![(3, 1, 45)], 130, &counters(&[100, 120]), |_| owned(1)).is_empty());
        // A parked event holds everything.
        let parked = counters(&[200, 200]);
        parked[0].parked.store(1, Ordering::Relaxed);
        assert!(progress.tick(vec![], 200, &parked, |_| owned(1)).is_empty());
        // Past 130: the first snapshot's position is the floor.
        assert_eq!(progress.tick(vec![], 200, &counters(&[130, 140]), |_| owned(1)), vec![(3, 40)]);
        // The partition was lost and taken again (epoch 2): the second
        // snapshot does not count.
        assert!(progress.tick(vec![], 300, &counters(&[300, 300]), |_| owned(2)).is_empty());
    }
}
