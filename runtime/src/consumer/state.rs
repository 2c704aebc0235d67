//! The consumer state machine, pure: a cursor and the pending deliveries
//! (seq → attempts, state), and what a fetch, an ack, a nak and a term do
//! to them. No I/O: the store's consumer commands run it inside the
//! writer's transaction and write what it changed, so every transition
//! commits atomically and durably.
//!
//! ```text
//!            fetch                ack
//!  log ──► Waiting ──────► InFlight ─────► gone (acked)
//!             ▲   (attempt+1,   │  nak(delay) / ack wait passed
//!             │    new token)   │
//!             └─────────────────┘
//!  term, or a nak / expiry after the last delivery ──► DLQ
//! ```

use std::collections::{BTreeMap, HashSet};

use serde::{Deserialize, Serialize};

/// A consumer's settings, as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct ConsumerSpec {
    /// Topic patterns (text; parsed when checked).
    pub(crate) topics: Vec<String>,
    /// How long a delivery waits for its ack before it comes back.
    pub(crate) ack_wait_ms: u64,
    /// Deliveries in all, the first included; after the last, the DLQ.
    pub(crate) max_deliveries: u32,
    /// Wait before a redelivery after an expired ack wait (or a nak without
    /// a delay), by delivery number; the last one repeats. Empty: none.
    pub(crate) backoff_ms: Vec<u64>,
    /// Whether events with the same key are delivered one at a time, in
    /// log order.
    pub(crate) per_key_ordering: bool,
    /// Most pending deliveries (delivered and not acked, waiting for a
    /// redelivery, or held behind their key).
    pub(crate) max_in_flight: u32,
}

impl ConsumerSpec {
    /// The wait before delivery number `attempts + 1`, after `attempts`
    /// deliveries that were not acked.
    pub(crate) fn backoff(&self, attempts: u32) -> u64 {
        let i = (attempts.max(1) - 1) as usize;
        self.backoff_ms.get(i).or(self.backoff_ms.last()).copied().unwrap_or(0)
    }
}

/// Where a delivery stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum PendingState {
    /// Not delivered now: due at `not_before_ms` (0: at once).
    Waiting { not_before_ms: u64 },
    /// Delivered as attempt `attempts` with this nonce; its ack is taken
    /// until `deadline_ms`.
    InFlight { nonce: [u8; 16], deadline_ms: u64 },
}

/// One event of the consumer that is neither acked nor dead-lettered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Pending {
    pub(crate) seq: u64,
    pub(crate) key: Option<String>,
    /// Deliveries made so far.
    pub(crate) attempts: u32,
    pub(crate) first_delivered_ms: Option<u64>,
    pub(crate) state: PendingState,
}

impl Pending {
    pub(crate) fn new(seq: u64, key: Option<String>) -> Self {
        Self { seq, key, attempts: 0, first_delivered_ms: None, state: PendingState::Waiting { not_before_ms: 0 } }
    }
}

/// Why a pending delivery goes to the DLQ.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DeadLetter {
    pub(crate) pending: Pending,
    /// `consumer_ack_timeout`, `consumer_nak` or `consumer_term`.
    pub(crate) code: &'static str,
    pub(crate) message: String,
}

/// An ack token: `<seq>.<attempt>.<32 hex digits>`, naming one delivery
/// attempt. The nonce is random per attempt, so a token cannot be guessed
/// from another, and an old attempt's token never matches a later one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Token {
    pub(crate) seq: u64,
    pub(crate) attempt: u32,
    pub(crate) nonce: [u8; 16],
}

/// Longest token text accepted: 20 + 1 + 10 + 1 + 32 characters.
pub(crate) const MAX_TOKEN_BYTES: usize = 64;

impl Token {
    pub(crate) fn parse(text: &str) -> Option<Self> {
        if text.len() > MAX_TOKEN_BYTES {
            return None;
        }
        let mut parts = text.split('.');
        let seq = parts.next()?.parse().ok()?;
        let attempt = parts.next()?.parse().ok()?;
        let hex = parts.next()?;
        if parts.next().is_some() || hex.len() != 32 {
            return None;
        }
        let mut nonce = [0; 16];
        for (i, byte) in nonce.iter_mut().enumerate() {
            *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
        }
        Some(Self { seq, attempt, nonce })
    }
}

impl std::fmt::Display for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}.", self.seq, self.attempt)?;
        self.nonce.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

/// What the client asks for a delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum AckAction {
    /// Done: forget it.
    Ack,
    /// Deliver it again, after `delay_ms` (the backoff when `None`).
    Nak { delay_ms: Option<u64> },
    /// Never deliver it again: to the DLQ with the reason.
    Term { reason: String },
}

/// What an accepted ack does to the pending entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum AckEffect {
    Acked,
    Redeliver(Pending),
    Dead(DeadLetter),
}

/// Why an ack is refused: it names no delivery that is in flight now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stale {
    /// Nothing pending at that seq (acked, dead-lettered, or never
    /// delivered).
    Unknown,
    /// Another attempt was delivered since, or this one was not delivered
    /// with this token.
    Superseded,
    /// The ack wait of this attempt has passed.
    Expired,
}

/// Apply an ack to the pending entry its token names (`None`: none).
pub(crate) fn ack(
    spec: &ConsumerSpec,
    entry: Option<&Pending>,
    token: &Token,
    action: AckAction,
    now: u64,
) -> Result<AckEffect, Stale> {
    let entry = entry.ok_or(Stale::Unknown)?;
    let PendingState::InFlight { nonce, deadline_ms } = entry.state else { return Err(Stale::Superseded) };
    if entry.attempts != token.attempt || nonce != token.nonce {
        return Err(Stale::Superseded);
    }
    if now >= deadline_ms {
        return Err(Stale::Expired);
    }
    Ok(match action {
        AckAction::Ack => AckEffect::Acked,
        AckAction::Nak { .. } if entry.attempts >= spec.max_deliveries => AckEffect::Dead(DeadLetter {
            pending: entry.clone(),
            code: "consumer_nak",
            message: format!("nak after the last of {} deliveries", spec.max_deliveries),
        }),
        AckAction::Nak { delay_ms } => {
            let mut next = entry.clone();
            let delay = delay_ms.unwrap_or_else(|| spec.backoff(entry.attempts));
            next.state = PendingState::Waiting { not_before_ms: now.saturating_add(delay) };
            AckEffect::Redeliver(next)
        }
        AckAction::Term { reason } => AckEffect::Dead(DeadLetter {
            pending: entry.clone(),
            code: "consumer_term",
            message: if reason.is_empty() { "terminated by the consumer".to_owned() } else { reason },
        }),
    })
}

/// A consumer's cursor and pending deliveries, as a fetch sees them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Consumer {
    pub(crate) spec: ConsumerSpec,
    /// The next log seq not looked at yet.
    pub(crate) cursor: u64,
    pub(crate) pending: BTreeMap<u64, Pending>,
}

/// One log entry as a fetch scans it: its seq, whether the consumer's
/// patterns match its topic, and its key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Scanned {
    pub(crate) seq: u64,
    pub(crate) matches: bool,
    pub(crate) key: Option<String>,
}

/// What a fetch changed: the entries to write, those to the DLQ, the
/// deliveries made (in seq order), and when the next one falls due.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct Fetched {
    pub(crate) upsert: Vec<u64>,
    pub(crate) dead: Vec<DeadLetter>,
    pub(crate) delivered: Vec<Token>,
    pub(crate) cursor_moved: bool,
    /// The earliest time a pending entry becomes deliverable or expires
    /// (ms), if any: a long poll wakes then.
    pub(crate) next_due_ms: Option<u64>,
}

impl Consumer {
    /// Deliver up to `max` events: expired deliveries first come back (or
    /// go to the DLQ after the last), then new events from the log fill the
    /// room left under `max_in_flight`, then the due entries are delivered
    /// in seq order (with per-key ordering: only the first pending entry of
    /// each key). `scan(from, limit)` reads log entries from `from` on;
    /// `nonce()` makes each attempt's random part.
    pub(crate) fn fetch(
        &mut self,
        now: u64,
        max: usize,
        scan: &mut dyn FnMut(u64, usize) -> Vec<Scanned>,
        nonce: &mut dyn FnMut() -> [u8; 16],
        scan_limit: usize,
    ) -> Fetched {
        let mut out = Fetched::default();
        let mut changed = std::collections::BTreeSet::new();
        // 1. Expired deliveries.
        let expired: Vec<u64> = self
            .pending
            .values()
            .filter(|p| matches!(p.state, PendingState::InFlight { deadline_ms, .. } if deadline_ms <= now))
            .map(|p| p.seq)
            .collect();
        for seq in expired {
            let Some(entry) = self.pending.get_mut(&seq) else { continue };
            let PendingState::InFlight { deadline_ms, .. } = entry.state else { continue };
            if entry.attempts >= self.spec.max_deliveries {
                if let Some(pending) = self.pending.remove(&seq) {
                    out.dead.push(DeadLetter {
                        message: format!(
                            "not acked within the ack wait of {} ms, {} deliveries made",
                            self.spec.ack_wait_ms, pending.attempts
                        ),
                        pending,
                        code: "consumer_ack_timeout",
                    });
                }
            } else {
                let wait = self.spec.backoff(entry.attempts);
                entry.state = PendingState::Waiting { not_before_ms: deadline_ms.saturating_add(wait) };
                changed.insert(seq);
            }
        }
        // 2. New events from the log, while there is room.
        let room = (self.spec.max_in_flight as usize).saturating_sub(self.pending.len());
        if room > 0 {
            let mut left = scan_limit;
            let mut added = 0;
            'scan: while left > 0 {
                let batch = scan(self.cursor, left.min(512));
                if batch.is_empty() {
                    break;
                }
                for item in batch {
                    left = left.saturating_sub(1);
                    self.cursor = item.seq + 1;
                    out.cursor_moved = true;
                    if item.matches {
                        self.pending.insert(item.seq, Pending::new(item.seq, item.key));
                        changed.insert(item.seq);
                        added += 1;
                        if added == room {
                            break 'scan;
                        }
                    }
                }
            }
        }
        // 3. Deliver what is due.
        let mut held: HashSet<&str> = HashSet::new();
        let mut due = Vec::new();
        for entry in self.pending.values() {
            let first_of_key = match (&entry.key, self.spec.per_key_ordering) {
                (Some(key), true) => held.insert(key.as_str()),
                _ => true,
            };
            if due.len() < max
                && first_of_key
                && matches!(entry.state, PendingState::Waiting { not_before_ms } if not_before_ms <= now)
            {
                due.push(entry.seq);
            }
        }
        for seq in due {
            let Some(entry) = self.pending.get_mut(&seq) else { continue };
            entry.attempts = entry.attempts.saturating_add(1);
            entry.first_delivered_ms.get_or_insert(now);
            let nonce = nonce();
            entry.state =
                PendingState::InFlight { nonce, deadline_ms: now.saturating_add(self.spec.ack_wait_ms.max(1)) };
            changed.insert(seq);
            out.delivered.push(Token { seq, attempt: entry.attempts, nonce });
        }
        // An entry held behind its key falls due only when the one before
        // it is acked (which wakes long polls) or expires (its deadline is
        // counted): it must not make a long poll spin.
        let mut held: HashSet<&str> = HashSet::new();
        out.next_due_ms = self
            .pending
            .values()
            .filter(|p| match (&p.key, self.spec.per_key_ordering) {
                (Some(key), true) => held.insert(key.as_str()),
                _ => true,
            })
            .map(|p| match p.state {
                PendingState::Waiting { not_before_ms } => not_before_ms,
                PendingState::InFlight { deadline_ms, .. } => deadline_ms,
            })
            .min();
        out.upsert = changed.into_iter().filter(|seq| self.pending.contains_key(seq)).collect();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> ConsumerSpec {
        ConsumerSpec {
            topics: vec!["a.b.c".into()],
            ack_wait_ms: 1000,
            max_deliveries: 3,
            backoff_ms: vec![100, 500],
            per_key_ordering: true,
            max_in_flight: 4,
        }
    }

    /// A log of `(matches, key)` entries, seq = index.
    fn log<'a>(entries: &'a [(bool, Option<&'a str>)]) -> impl FnMut(u64, usize) -> Vec<Scanned> + 'a {
        move |from, limit| {
            entries
                .iter()
                .enumerate()
                .skip(from as usize)
                .take(limit)
                .map(|(i, (matches, key))| Scanned { seq: i as u64, matches: *matches, key: key.map(str::to_owned) })
                .collect()
        }
    }

    fn nonces() -> impl FnMut() -> [u8; 16] {
        let mut n = 0u8;
        move || {
            n += 1;
            [n; 16]
        }
    }

    fn consumer() -> Consumer {
        Consumer { spec: spec(), cursor: 0, pending: BTreeMap::new() }
    }

    #[test]
    fn tokens_round_trip_and_bad_ones_are_refused() {
        let token = Token { seq: 42, attempt: 3, nonce: [0xab; 16] };
        let text = token.to_string();
        assert_eq!(text, format!("42.3.{}", "ab".repeat(16)));
        assert_eq!(Token::parse(&text), Some(token));
        for bad in
            ["", "42", "42.3", "42.3.ab", "x.3.abababababababababababababababab", &format!("{text}.1"), &"9".repeat(65)]
        {
            assert_eq!(Token::parse(bad), None, "{bad}");
        }
        assert_eq!(Token::parse(&format!("42.3.{}", "zz".repeat(16))), None);
    }

    #[test]
    fn fetch_skips_other_topics_bounds_in_flight_and_holds_keys_back() {
        let entries = [
            (true, Some("k1")),
            (false, None),
            (true, Some("k1")),
            (true, Some("k2")),
            (true, None),
            (true, None),
            (true, None),
        ];
        let mut c = consumer();
        let mut nonce = nonces();
        let f = c.fetch(0, 10, &mut log(&entries), &mut nonce, 1000);
        // Room for 4: seqs 0, 2, 3, 4 are pending; 2 waits behind 0 (k1).
        assert_eq!(c.pending.keys().copied().collect::<Vec<_>>(), [0, 2, 3, 4]);
        assert_eq!(f.delivered.iter().map(|t| t.seq).collect::<Vec<_>>(), [0, 3, 4]);
        assert_eq!(c.cursor, 5);
        assert!(f.delivered.iter().all(|t| t.attempt == 1));
        // Full: nothing new, nothing due.
        let f = c.fetch(10, 10, &mut log(&entries), &mut nonce, 1000);
        assert!(f.delivered.is_empty());
        assert_eq!(f.next_due_ms, Some(1000));
        // Ack seq 0: seq 2 (k1) becomes deliverable and seq 5 comes in.
        let token = Token { seq: 0, attempt: 1, nonce: [1; 16] };
        assert_eq!(ack(&c.spec, c.pending.get(&0), &token, AckAction::Ack, 20), Ok(AckEffect::Acked));
        c.pending.remove(&0);
        let f = c.fetch(30, 10, &mut log(&entries), &mut nonce, 1000);
        assert_eq!(f.delivered.iter().map(|t| t.seq).collect::<Vec<_>>(), [2, 5]);
    }

    #[test]
    fn an_expired_attempt_is_refused_redelivered_after_backoff_and_dead_lettered_after_the_last() {
        let entries = [(true, Some("k"))];
        let mut c = consumer();
        let mut nonce = nonces();
        let first = c.fetch(0, 1, &mut log(&entries), &mut nonce, 1000).delivered[0];
        // Its ack wait passes: the ack is refused, never applied later.
        assert_eq!(ack(&c.spec, c.pending.get(&0), &first, AckAction::Ack, 1000), Err(Stale::Expired));
        // Not before deadline + backoff(1) = 1100.
        assert!(c.fetch(1050, 1, &mut log(&entries), &mut nonce, 1000).delivered.is_empty());
        let second = c.fetch(1100, 1, &mut log(&entries), &mut nonce, 1000).delivered[0];
        assert_eq!((second.seq, second.attempt), (0, 2));
        // The first attempt's token does not ack the second.
        assert_eq!(ack(&c.spec, c.pending.get(&0), &first, AckAction::Ack, 1200), Err(Stale::Superseded));
        // A forged nonce neither.
        let forged = Token { nonce: [0; 16], ..second };
        assert_eq!(ack(&c.spec, c.pending.get(&0), &forged, AckAction::Ack, 1200), Err(Stale::Superseded));
        // Nak with a delay: back at once after it.
        let effect = ack(&c.spec, c.pending.get(&0), &second, AckAction::Nak { delay_ms: Some(10) }, 1200).unwrap();
        let AckEffect::Redeliver(next) = effect else { panic!("{effect:?}") };
        c.pending.insert(0, next);
        let third = c.fetch(1210, 1, &mut log(&entries), &mut nonce, 1000).delivered[0];
        assert_eq!(third.attempt, 3);
        // The third (last) attempt expires: the DLQ.
        let f = c.fetch(2210, 1, &mut log(&entries), &mut nonce, 1000);
        assert!(f.delivered.is_empty());
        assert_eq!(f.dead.len(), 1);
        assert_eq!((f.dead[0].code, f.dead[0].pending.attempts), ("consumer_ack_timeout", 3));
        assert!(c.pending.is_empty());
        assert_eq!(ack(&c.spec, c.pending.get(&0), &third, AckAction::Ack, 2211), Err(Stale::Unknown));
    }

    #[test]
    fn term_and_a_nak_after_the_last_delivery_dead_letter() {
        let mut spec = spec();
        spec.max_deliveries = 1;
        let entry = Pending {
            seq: 7,
            key: None,
            attempts: 1,
            first_delivered_ms: Some(0),
            state: PendingState::InFlight { nonce: [9; 16], deadline_ms: 100 },
        };
        let token = Token { seq: 7, attempt: 1, nonce: [9; 16] };
        let nak = ack(&spec, Some(&entry), &token, AckAction::Nak { delay_ms: None }, 50).unwrap();
        assert!(matches!(nak, AckEffect::Dead(DeadLetter { code: "consumer_nak", .. })));
        let term = ack(&spec, Some(&entry), &token, AckAction::Term { reason: "bad".into() }, 50).unwrap();
        assert!(
            matches!(term, AckEffect::Dead(DeadLetter { code: "consumer_term", ref message, .. }) if message == "bad")
        );
    }

    #[test]
    fn without_per_key_ordering_one_key_is_delivered_in_parallel() {
        let entries = [(true, Some("k")), (true, Some("k"))];
        let mut c = consumer();
        c.spec.per_key_ordering = false;
        let f = c.fetch(0, 10, &mut log(&entries), &mut nonces(), 1000);
        assert_eq!(f.delivered.len(), 2);
    }

    #[test]
    fn the_scan_is_bounded_and_resumes_from_the_cursor() {
        let entries: Vec<(bool, Option<&str>)> = (0..100).map(|i| (i == 99, None)).collect();
        let mut c = consumer();
        let f = c.fetch(0, 10, &mut log(&entries), &mut nonces(), 40);
        assert!(f.delivered.is_empty());
        assert_eq!(c.cursor, 40);
        c.fetch(0, 10, &mut log(&entries), &mut nonces(), 40);
        let f = c.fetch(0, 10, &mut log(&entries), &mut nonces(), 40);
        assert_eq!(f.delivered.iter().map(|t| t.seq).collect::<Vec<_>>(), [99]);
    }
}
