//! The ack command (ack, nak, term) and the redrive of a consumer's DLQ
//! entries.

use super::*;

/// What one ack did: its action, or why it was refused.
pub(crate) type AckResult = Result<AckDone, Stale>;

/// What an accepted ack did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AckDone {
    Acked,
    Naked,
    /// To the DLQ (a term, or a nak after the last delivery).
    DeadLettered,
}

/// Acks, naks and terms of one consumer, applied in order.
pub(in crate::store) struct Ack {
    pub(in crate::store) name: String,
    pub(in crate::store) items: Vec<(Token, AckAction)>,
}

/// What an ack's check decided, per seq touched: the entry to write, or
/// none (removed), and whether it goes to the DLQ.
pub(in crate::store) struct Acking {
    results: Vec<AckResult>,
    touched: Vec<(u64, bool, bool)>,
}

impl Apply for Ack {
    type Answer = Result<Vec<AckResult>, ConsumerError>;
    type Checked = Result<Acking, ConsumerError>;

    fn check(&self, w: &Writes<'_>, encoded: &mut Encoded) -> Result<Self::Checked, Failure> {
        let name = self.name.as_str();
        let Some(record) = load(w, name)? else {
            return Ok(Err(ConsumerError::NotFound(self.name.clone())));
        };
        let table = w.txn.open_table(CONSUMER_PENDING)?;
        // The entries as this batch leaves them: a second ack of the same
        // token in one batch sees the first one's effect.
        let mut state: HashMap<u64, Option<Pending>> = HashMap::new();
        let mut dead: HashMap<u64, DeadLetter> = HashMap::new();
        let mut results = Vec::with_capacity(self.items.len());
        for (token, action) in &self.items {
            let seq = token.seq;
            if let std::collections::hash_map::Entry::Vacant(slot) = state.entry(seq) {
                let stored = match table.get((name, seq))? {
                    Some(v) => Some(decode::<Pending>(v.value(), || format!("consumer {name} pending seq {seq}"))?),
                    None => None,
                };
                slot.insert(stored);
            }
            let current = state.get(&seq).and_then(Option::as_ref);
            let result = match crate::consumer::state::ack(&record.spec, current, token, action.clone(), w.now) {
                Ok(AckEffect::Acked) => {
                    state.insert(seq, None);
                    Ok(AckDone::Acked)
                }
                Ok(AckEffect::Redeliver(next)) => {
                    state.insert(seq, Some(next));
                    Ok(AckDone::Naked)
                }
                Ok(AckEffect::Dead(letter)) => {
                    state.insert(seq, None);
                    dead.insert(seq, letter);
                    Ok(AckDone::DeadLettered)
                }
                Err(stale) => Err(stale),
            };
            results.push(result);
        }
        let mut touched = Vec::new();
        let mut seqs: Vec<u64> = state.keys().copied().collect();
        seqs.sort_unstable();
        for seq in seqs {
            // Only entries an accepted ack changed are written.
            let changed =
                self.items.iter().zip(&results).any(|((token, _), result)| token.seq == seq && result.is_ok());
            if !changed {
                continue;
            }
            let entry = state.get(&seq).and_then(Option::as_ref);
            if let Some(entry) = entry {
                encoded.push(entry)?;
            }
            let letter = dead.get(&seq).filter(|_| entry.is_none());
            if let Some(letter) = letter {
                encoded.push(&dlq_entry(name, letter, event_at(w, seq)?, w.now))?;
            }
            touched.push((seq, entry.is_some(), letter.is_some()));
        }
        Ok(Ok(Acking { results, touched }))
    }

    fn write(
        self,
        checked: Self::Checked,
        w: &mut Writes<'_>,
        mut records: Records<'_>,
    ) -> Result<Self::Answer, Fatal> {
        let acking = match checked {
            Ok(a) => a,
            Err(e) => return Ok(Err(e)),
        };
        let name = self.name.as_str();
        let sub = dlq_subscription(name);
        let mut table = w.txn.open_table(CONSUMER_PENDING)?;
        for (seq, kept, dead) in &acking.touched {
            if *kept {
                table.insert((name, *seq), next_record(&mut records)?)?;
            } else {
                table.remove((name, *seq))?;
            }
            if *dead {
                w.dlq.insert((sub.as_str(), *seq), next_record(&mut records)?)?;
            }
        }
        Ok(Ok(acking.results))
    }
}

/// DLQ entries of a consumer back to its pending deliveries, as new
/// (their delivery count starts again).
pub(in crate::store) struct Redrive {
    pub(in crate::store) name: String,
    pub(in crate::store) seqs: Vec<u64>,
}

impl Apply for Redrive {
    /// How many were there and moved.
    type Answer = Result<usize, ConsumerError>;
    type Checked = Result<Vec<u64>, ConsumerError>;

    fn check(&self, w: &Writes<'_>, encoded: &mut Encoded) -> Result<Self::Checked, Failure> {
        if load(w, &self.name)?.is_none() {
            return Ok(Err(ConsumerError::NotFound(self.name.clone())));
        }
        let sub = dlq_subscription(&self.name);
        let mut moved = Vec::new();
        for seq in &self.seqs {
            let Some(bytes) = w.dlq.get((sub.as_str(), *seq))? else { continue };
            let key = match decode::<DlqEntry>(bytes.value(), || crate::store::subscription::dlq_record((&sub, *seq))) {
                Ok(entry) => entry.event.key,
                // A damaged entry still comes back; the event is read from
                // the log when it is delivered.
                Err(_) => match event_at(w, *seq) {
                    Ok(event) => event.key,
                    // Damaged there too: it is quarantined again when fetched.
                    Err(Failure::Refused(_)) => None,
                    Err(fatal) => return Err(fatal),
                },
            };
            encoded.push(&Pending::new(*seq, key))?;
            moved.push(*seq);
        }
        Ok(Ok(moved))
    }

    fn write(
        self,
        checked: Self::Checked,
        w: &mut Writes<'_>,
        mut records: Records<'_>,
    ) -> Result<Self::Answer, Fatal> {
        let moved = match checked {
            Ok(m) => m,
            Err(e) => return Ok(Err(e)),
        };
        let name = self.name.as_str();
        let sub = dlq_subscription(name);
        let mut table = w.txn.open_table(CONSUMER_PENDING)?;
        for seq in &moved {
            w.dlq.remove((sub.as_str(), *seq))?;
            table.insert((name, *seq), next_record(&mut records)?)?;
        }
        Ok(Ok(moved.len()))
    }
}
