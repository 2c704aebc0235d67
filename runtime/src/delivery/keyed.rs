//! Per-key ordering: the parked events of one subscription, and which of
//! them may run.
//!
//! An event is parked while it waits for a retry, or while an earlier event
//! with its key is pending. Every key with parked events has a queue; only
//! its head may run, and when the head leaves (handled, duplicate or
//! dead-lettered) the next one becomes due at once. An event without a key
//! has no queue: it waits only for its own retry time and never holds up
//! anything, keyed or not.
//!
//! The set mirrors the store's `parked` table: the worker changes both in
//! step (the table through staged outcomes), and rebuilds this from the
//! table at start.
//!
//! # Clocks
//!
//! The store keeps each retry's time on the wall clock (milliseconds since
//! the Unix epoch, shown to operators). This set schedules on a monotonic
//! clock instead ([`Clock::Monotonic`]): an entry's wall time becomes "so
//! many milliseconds from now" when it enters, so a step of the wall clock
//! (NTP, a VM resumed) neither stalls a retry nor fires it early. The wait
//! left is capped by the wait the entry was scheduled with, so an entry
//! restored after a restart during which the clock went back waits no
//! longer than its backoff.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::OnceLock;
use std::time::Instant;

use crate::store::{ParkedEntry, now_ms};

/// Which clock the due times of a [`Parked`] set count in.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) enum Clock {
    /// Due times are taken as given, in whatever clock the caller uses
    /// (unit tests).
    #[default]
    AsGiven,
    /// Due times are converted from the wall clock on entry, and compared
    /// with [`monotonic_ms`].
    Monotonic,
    /// As [`Clock::Monotonic`], with the two clocks fixed (tests).
    #[cfg(test)]
    Fixed { wall: u64, monotonic: u64 },
}

/// Milliseconds on a clock that never goes back, from an arbitrary start.
pub(super) fn monotonic_ms() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_millis() as u64
}

impl Clock {
    /// Now, on this clock.
    pub(super) fn now(self) -> u64 {
        match self {
            Self::AsGiven => now_ms(),
            Self::Monotonic => monotonic_ms(),
            #[cfg(test)]
            Self::Fixed { monotonic, .. } => monotonic,
        }
    }

    /// `entry` with its due time on this clock.
    fn adopt(self, mut entry: ParkedEntry) -> ParkedEntry {
        let (wall, monotonic) = match self {
            Self::AsGiven => return entry,
            Self::Monotonic => (now_ms(), monotonic_ms()),
            #[cfg(test)]
            Self::Fixed { wall, monotonic } => (wall, monotonic),
        };
        // The wait it was scheduled with: from its last failure to its due
        // time (none for an entry that only waits for its turn).
        let scheduled = entry.last_failure_ms.map_or(0, |at| entry.next_attempt_at_ms.saturating_sub(at));
        let left = entry.next_attempt_at_ms.saturating_sub(wall).min(scheduled);
        entry.next_attempt_at_ms = monotonic.saturating_add(left);
        entry
    }
}

/// The parked events of a subscription in per-key order.
///
/// Invariants: every parked event with a key is in exactly one queue, its
/// key's; every queued seq is parked; no queue is empty.
#[derive(Debug, Default)]
pub(super) struct Parked {
    /// By seq, so heads come out in log order.
    entries: BTreeMap<u64, ParkedEntry>,
    /// Per key, its parked events in the order they must run.
    queues: HashMap<String, VecDeque<u64>>,
    /// The clock of the due times in `entries`.
    clock: Clock,
}

/// What the next attempt of a parked event needs from its last one: two
/// numbers, copied, so an attempt does not clone the whole entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Prior {
    /// Failed attempts so far (0 for an event that only waited).
    pub(super) attempts: u32,
    /// When it first failed, if it did.
    pub(super) first_failure_ms: Option<u64>,
}

impl Parked {
    /// Rebuild from the store's `parked` table, read in seq order: each
    /// key's queue is its events in log order (due times as given).
    #[cfg(test)]
    pub(super) fn restore(entries: Vec<ParkedEntry>) -> Self {
        Self::restore_with(Clock::AsGiven, entries)
    }

    /// [`Parked::restore`], scheduling on `clock`.
    pub(super) fn restore_with(clock: Clock, entries: Vec<ParkedEntry>) -> Self {
        let mut parked = Self { clock, ..Self::default() };
        for entry in entries {
            parked.redrive(entry);
        }
        parked
    }

    /// Now, on the clock the due times count in: what [`Parked::due`],
    /// [`Parked::next_due_in`] and [`Parked::finish`] take.
    pub(super) fn now(&self) -> u64 {
        self.clock.now()
    }

    /// The clock the due times count in.
    pub(super) fn clock(&self) -> Clock {
        self.clock
    }

    pub(super) fn len(&self) -> usize {
        self.entries.len()
    }

    /// What the last attempt of `seq` left, if `seq` is parked.
    pub(super) fn prior(&self, seq: u64) -> Option<Prior> {
        self.entries.get(&seq).map(|e| Prior { attempts: e.attempts, first_failure_ms: e.first_failure_ms })
    }

    /// A new event from the log: if an earlier event with its key is still
    /// pending, it is parked at the back of that key's queue, and the
    /// entry to record is returned. `None`: it may run now.
    pub(super) fn wait_behind(&mut self, seq: u64, key: Option<&str>) -> Option<ParkedEntry> {
        let key = key?;
        let queue = self.queues.get_mut(key)?;
        queue.push_back(seq);
        let entry = ParkedEntry::waiting(seq, Some(key.to_owned()));
        self.entries.insert(seq, self.clock.adopt(entry.clone()));
        Some(entry)
    }

    /// An attempt failed and will be retried at `entry.next_attempt_at_ms`.
    /// A parked event keeps its place. An event that was not parked ran
    /// because its key had no queue, so it starts one, as its head: later
    /// events with its key now wait behind it.
    pub(super) fn retry(&mut self, entry: ParkedEntry) {
        if !self.entries.contains_key(&entry.seq)
            && let Some(key) = &entry.key
        {
            self.queues.entry(key.clone()).or_default().push_front(entry.seq);
        }
        self.entries.insert(entry.seq, self.clock.adopt(entry));
    }

    /// A dead-lettered event is back: it joins the back of its key's queue,
    /// behind events with its key that came later in the log.
    pub(super) fn redrive(&mut self, entry: ParkedEntry) {
        if let Some(key) = &entry.key {
            self.queues.entry(key.clone()).or_default().push_back(entry.seq);
        }
        self.entries.insert(entry.seq, self.clock.adopt(entry));
    }

    /// `seq` is done with (handled, duplicate, dead-lettered): it leaves the
    /// set and its queue, and the next event of its key may run now. The
    /// clock is read only then, which is rarely. Answers whether `seq` was
    /// parked.
    pub(super) fn finish(&mut self, seq: u64, now: impl FnOnce() -> u64) -> bool {
        let Some(entry) = self.entries.remove(&seq) else {
            return false;
        };
        if let Some(key) = entry.key
            && let Some(queue) = self.queues.get_mut(&key)
        {
            queue.retain(|s| *s != seq);
            if queue.is_empty() {
                self.queues.remove(&key);
            } else if let Some(next) = queue.front().and_then(|s| self.entries.get_mut(s)) {
                next.next_attempt_at_ms = next.next_attempt_at_ms.min(now());
            }
        }
        true
    }

    /// Up to `limit` events that may run at `now` (ms), in seq order.
    pub(super) fn due(&self, now: u64, limit: usize) -> Vec<u64> {
        self.heads().filter(|e| e.next_attempt_at_ms <= now).map(|e| e.seq).take(limit).collect()
    }

    /// How long from `now` (ms) until the first event may run, if any is
    /// parked.
    pub(super) fn next_due_in(&self, now: u64) -> Option<u64> {
        self.heads().map(|e| e.next_attempt_at_ms.saturating_sub(now)).min()
    }

    /// Parked events that may run once their time comes: each key's head,
    /// and every keyless one.
    fn heads(&self) -> impl Iterator<Item = &ParkedEntry> + '_ {
        self.entries.values().filter(|e| match &e.key {
            Some(k) => self.queues.get(k).and_then(|q| q.front()) == Some(&e.seq),
            None => true,
        })
    }

    #[cfg(test)]
    fn check_invariants(&self) {
        for (key, queue) in &self.queues {
            assert!(!queue.is_empty(), "empty queue for {key}");
            for seq in queue {
                assert_eq!(self.entries[seq].key.as_deref(), Some(key.as_str()), "seq {seq} queued under {key}");
            }
        }
        for entry in self.entries.values() {
            if let Some(key) = &entry.key {
                let n = self.queues.get(key).map_or(0, |q| q.iter().filter(|s| **s == entry.seq).count());
                assert_eq!(n, 1, "seq {} is in its key's queue {n} times", entry.seq);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use proptest::prelude::*;

    use super::*;

    fn failed(seq: u64, key: Option<&str>, attempts: u32, next_attempt_at_ms: u64) -> ParkedEntry {
        ParkedEntry {
            attempts,
            next_attempt_at_ms,
            first_failure_ms: Some(1),
            ..ParkedEntry::waiting(seq, key.map(str::to_owned))
        }
    }

    #[test]
    fn a_later_event_waits_behind_its_key() {
        let mut parked = Parked::default();
        assert_eq!(parked.wait_behind(1, Some("a")), None, "nothing pending: it runs");
        parked.retry(failed(1, Some("a"), 1, 100));
        let waiting = parked.wait_behind(2, Some("a")).expect("behind seq 1");
        assert_eq!(waiting, ParkedEntry::waiting(2, Some("a".into())));
        assert_eq!(parked.wait_behind(3, Some("b")), None, "another key goes on");
        assert_eq!(parked.due(1000, usize::MAX), vec![1], "only the head may run");
        parked.check_invariants();
    }

    #[test]
    fn finishing_a_head_makes_the_next_of_its_key_due_now() {
        let mut parked = Parked::default();
        parked.retry(failed(1, Some("a"), 1, 500));
        parked.wait_behind(2, Some("a"));
        parked.retry(failed(2, Some("a"), 1, 900));
        assert_eq!(parked.due(600, usize::MAX), vec![1]);
        assert!(parked.finish(1, || 600));
        assert_eq!(parked.due(600, usize::MAX), vec![2], "due at once, its own backoff cut short");
        assert!(parked.finish(2, || 600));
        assert!(!parked.finish(2, || unreachable!("the clock is read only for a next head")));
        assert_eq!(parked.len(), 0);
        parked.check_invariants();
    }

    #[test]
    fn a_retry_keeps_its_place_in_the_queue() {
        let mut parked = Parked::default();
        parked.retry(failed(1, Some("a"), 1, 10));
        parked.wait_behind(2, Some("a"));
        parked.retry(failed(1, Some("a"), 2, 20));
        assert_eq!(parked.prior(1), Some(Prior { attempts: 2, first_failure_ms: Some(1) }));
        assert_eq!(parked.due(15, usize::MAX), Vec::<u64>::new());
        assert_eq!(parked.due(20, usize::MAX), vec![1]);
        parked.check_invariants();
    }

    #[test]
    fn keyless_events_never_wait_and_never_block() {
        let mut parked = Parked::default();
        parked.retry(failed(1, None, 1, 100));
        assert_eq!(parked.wait_behind(2, None), None, "no key, no queue");
        parked.retry(failed(2, None, 1, 50));
        parked.retry(failed(3, Some("a"), 1, 10));
        assert_eq!(parked.due(10, usize::MAX), vec![3]);
        assert_eq!(parked.due(100, usize::MAX), vec![1, 2, 3], "all heads, in seq order");
        assert_eq!(parked.next_due_in(0), Some(10));
        parked.check_invariants();
    }

    #[test]
    fn a_redriven_event_joins_the_back_of_its_key() {
        let mut parked = Parked::default();
        parked.retry(failed(5, Some("a"), 1, 0));
        parked.redrive(ParkedEntry::waiting(2, Some("a".into())));
        assert_eq!(parked.due(0, usize::MAX), vec![5], "seq 2 came back after 5 was pending");
        parked.finish(5, || 0);
        assert_eq!(parked.due(0, usize::MAX), vec![2]);
        parked.check_invariants();
    }

    #[test]
    fn restore_rebuilds_the_queues_in_log_order() {
        let parked = Parked::restore(vec![
            failed(1, Some("a"), 3, 70),
            ParkedEntry::waiting(2, Some("b".into())),
            ParkedEntry::waiting(3, Some("a".into())),
            failed(4, None, 1, 90),
        ]);
        assert_eq!(parked.len(), 4);
        assert_eq!(parked.due(100, usize::MAX), vec![1, 2, 4]);
        assert_eq!(parked.due(100, 2), vec![1, 2], "at most the limit");
        assert_eq!(parked.next_due_in(80), Some(0));
        assert_eq!(parked.next_due_in(0), Some(0), "a waiting head is due at once");
        parked.check_invariants();
    }

    #[test]
    fn a_step_of_the_wall_clock_neither_stalls_nor_hastens_a_retry() {
        // Failed at wall time 10_000_000, retried 100 ms later; the
        // monotonic clock reads 10 then.
        let retry = ParkedEntry { last_failure_ms: Some(10_000_000), ..failed(1, Some("a"), 1, 10_000_100) };
        let mut parked = Parked::restore_with(Clock::Fixed { wall: 10_000_000, monotonic: 10 }, Vec::new());
        parked.retry(retry.clone());
        // Whatever the wall clock does now (back an hour, or forward), the
        // retry is due 100 ms later on the monotonic clock.
        assert_eq!(parked.due(109, usize::MAX), Vec::<u64>::new());
        assert_eq!(parked.due(110, usize::MAX), vec![1]);
        assert_eq!(parked.next_due_in(10), Some(100));

        // Restored while the wall clock is an hour behind the stored time:
        // it waits its backoff, not an hour more.
        let behind = Parked::restore_with(Clock::Fixed { wall: 6_400_000, monotonic: 50 }, vec![retry]);
        assert_eq!(behind.next_due_in(50), Some(100));
        // And restored after its time: due at once.
        let late = ParkedEntry { last_failure_ms: Some(10_000_000), ..failed(2, None, 1, 10_000_100) };
        let after = Parked::restore_with(Clock::Fixed { wall: 20_000_000, monotonic: 70 }, vec![late]);
        assert_eq!(after.due(70, usize::MAX), vec![2]);
    }

    #[test]
    fn nothing_parked_is_never_due() {
        let parked = Parked::default();
        assert_eq!(parked.next_due_in(0), None);
        assert!(parked.due(u64::MAX, usize::MAX).is_empty());
    }

    // The model: a FIFO per key, a set of keyless events, and each parked
    // event's due time and attempts. It states the promise directly; the
    // real thing must agree with it after every operation.

    #[derive(Debug, Clone)]
    enum Op {
        /// The next event of the log, with this key: it waits behind its
        /// key, or runs at once and is handled or fails.
        New { key: Option<u8>, fails: bool, backoff: u64 },
        /// A due event runs (`pick` chooses among the due ones): handled,
        /// or fails again.
        Run { pick: usize, fails: bool, backoff: u64 },
        /// An event handled earlier comes back from the DLQ.
        Redrive { pick: usize },
        /// Time passes.
        Advance(u64),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            3 => (prop::option::of(0u8..3), any::<bool>(), 0u64..100)
                .prop_map(|(key, fails, backoff)| Op::New { key, fails, backoff }),
            3 => (any::<usize>(), any::<bool>(), 0u64..100).prop_map(|(pick, fails, backoff)| Op::Run { pick, fails, backoff }),
            1 => any::<usize>().prop_map(|pick| Op::Redrive { pick }),
            1 => (0u64..60).prop_map(Op::Advance),
        ]
    }

    #[derive(Debug, Default)]
    struct Model {
        queues: BTreeMap<String, VecDeque<u64>>,
        keyless: BTreeSet<u64>,
        /// seq → (key, attempts, due at).
        parked: BTreeMap<u64, (Option<String>, u32, u64)>,
        /// Per key, every seq in the order it joined the key (a run without
        /// waiting joins and leaves at once), and the order they left.
        joined: BTreeMap<String, Vec<u64>>,
        left: BTreeMap<String, Vec<u64>>,
        /// Done events, for redrive.
        done: Vec<(u64, Option<String>)>,
    }

    impl Model {
        fn heads(&self) -> BTreeSet<u64> {
            self.queues.values().filter_map(|q| q.front().copied()).chain(self.keyless.iter().copied()).collect()
        }

        fn due(&self, now: u64) -> Vec<u64> {
            self.heads().into_iter().filter(|s| self.parked[s].2 <= now).collect()
        }

        fn join(&mut self, seq: u64, key: &Option<String>, attempts: u32, due: u64) {
            match key {
                Some(k) => {
                    self.queues.entry(k.clone()).or_default().push_back(seq);
                    self.joined.entry(k.clone()).or_default().push(seq);
                }
                None => {
                    self.keyless.insert(seq);
                }
            }
            self.parked.insert(seq, (key.clone(), attempts, due));
        }

        fn leave(&mut self, seq: u64, key: &Option<String>, now: u64) {
            self.parked.remove(&seq);
            match key {
                Some(k) => {
                    let queue = self.queues.get_mut(k).expect("queued");
                    assert_eq!(queue.pop_front(), Some(seq), "only a head leaves");
                    match queue.front() {
                        Some(next) => {
                            let due = &mut self.parked.get_mut(next).expect("parked").2;
                            *due = (*due).min(now);
                        }
                        None => {
                            self.queues.remove(k);
                        }
                    }
                    self.left.entry(k.clone()).or_default().push(seq);
                }
                None => {
                    self.keyless.remove(&seq);
                }
            }
            self.done.push((seq, key.clone()));
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn agrees_with_a_fifo_per_key(ops in prop::collection::vec(op(), 1..120)) {
            let mut real = Parked::default();
            let mut model = Model::default();
            let mut now = 1_000u64;
            let mut next_seq = 1u64;
            for op in ops {
                match op {
                    Op::New { key, fails, backoff } => {
                        let (seq, key) = (next_seq, key.map(|k| format!("k{k}")));
                        next_seq += 1;
                        let waits = key.as_ref().is_some_and(|k| model.queues.contains_key(k));
                        let waiting = real.wait_behind(seq, key.as_deref());
                        prop_assert_eq!(waiting.is_some(), waits);
                        if waits {
                            model.join(seq, &key, 0, 0);
                        } else if fails {
                            real.retry(failed(seq, key.as_deref(), 1, now + backoff));
                            model.join(seq, &key, 1, now + backoff);
                        } else {
                            prop_assert!(!real.finish(seq, || now), "never parked");
                            if let Some(k) = &key {
                                model.joined.entry(k.clone()).or_default().push(seq);
                                model.left.entry(k.clone()).or_default().push(seq);
                            }
                            model.done.push((seq, key));
                        }
                    }
                    Op::Run { pick, fails, backoff } => {
                        let due = real.due(now, usize::MAX);
                        if due.is_empty() {
                            continue;
                        }
                        let seq = due[pick % due.len()];
                        let (key, attempts, _) = model.parked[&seq].clone();
                        prop_assert_eq!(real.prior(seq).map(|p| p.attempts), Some(attempts));
                        if fails {
                            real.retry(failed(seq, key.as_deref(), attempts + 1, now + backoff));
                            model.parked.insert(seq, (key, attempts + 1, now + backoff));
                        } else {
                            prop_assert!(real.finish(seq, || now));
                            model.leave(seq, &key, now);
                        }
                    }
                    Op::Redrive { pick } => {
                        if model.done.is_empty() {
                            continue;
                        }
                        let (seq, key) = model.done.swap_remove(pick % model.done.len());
                        real.redrive(ParkedEntry::waiting(seq, key.clone()));
                        model.join(seq, &key, 0, 0);
                    }
                    Op::Advance(ms) => now += ms,
                }

                real.check_invariants();
                prop_assert_eq!(real.len(), model.parked.len());
                prop_assert_eq!(real.due(now, usize::MAX), model.due(now));
                let earliest = model.heads().iter().map(|s| model.parked[s].2.saturating_sub(now)).min();
                prop_assert_eq!(real.next_due_in(now), earliest);
                // Keyless events never block keyed ones: every key's head,
                // and every keyless event, is a head however the others stand.
                let heads: BTreeSet<u64> = real.heads().map(|e| e.seq).collect();
                prop_assert_eq!(&heads, &model.heads());
                for queue in model.queues.values() {
                    prop_assert!(heads.contains(&queue[0]));
                }
                // Per-key FIFO: events leave their key in the order they joined it.
                for (key, left) in &model.left {
                    let joined = &model.joined[key];
                    prop_assert_eq!(&joined[..left.len()], &left[..], "key {}", key);
                }
            }
        }
    }
}
