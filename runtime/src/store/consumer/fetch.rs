//! The fetch command: deliveries handed out, each attempt bumped and
//! committed before the client sees it.

use super::*;

/// One delivery a fetch hands out.
#[derive(Debug, Clone)]
pub(crate) struct Delivery {
    pub(crate) token: Token,
    pub(crate) event: Event,
}

/// What a fetch answers.
#[derive(Debug, Clone, Default)]
pub(crate) struct FetchAnswer {
    pub(crate) deliveries: Vec<Delivery>,
    /// Moved to the DLQ by this fetch.
    pub(crate) dead_lettered: usize,
    /// When the next pending entry falls due (ms since the Unix epoch).
    pub(crate) next_due_ms: Option<u64>,
    /// The oldest seq the consumer still needs (its first pending entry,
    /// else its cursor): what the log's retention must keep.
    pub(crate) low_water: u64,
}

/// Most log records one fetch looks at for new events.
pub(crate) const FETCH_SCAN_LIMIT: usize = 4096;

/// Deliver up to `max` events (see [`Consumer::fetch`]).
pub(in crate::store) struct Fetch {
    pub(in crate::store) name: String,
    pub(in crate::store) max: usize,
}

/// What a fetch's check decided.
pub(in crate::store) struct Fetching {
    answer: FetchAnswer,
    upsert: Vec<u64>,
    removed: Vec<u64>,
    dead: Vec<u64>,
    cursor_moved: bool,
}

impl Apply for Fetch {
    type Answer = Result<FetchAnswer, ConsumerError>;
    type Checked = Result<Fetching, ConsumerError>;

    fn check(&self, w: &Writes<'_>, encoded: &mut Encoded) -> Result<Self::Checked, Failure> {
        let name = self.name.as_str();
        let Some(mut record) = load(w, name)? else {
            return Ok(Err(ConsumerError::NotFound(self.name.clone())));
        };
        let patterns: Vec<Pattern> = record.spec.topics.iter().filter_map(|t| Pattern::parse(t).ok()).collect();
        let mut pending = BTreeMap::new();
        {
            let table = w.txn.open_table(CONSUMER_PENDING)?;
            for entry in table.range((name, 0)..=(name, u64::MAX))? {
                let (k, v) = entry?;
                let seq = k.value().1;
                pending.insert(seq, decode::<Pending>(v.value(), || format!("consumer {name} pending seq {seq}"))?);
            }
        }
        let before: Vec<u64> = pending.keys().copied().collect();
        let mut consumer = Consumer { spec: record.spec.clone(), cursor: record.cursor, pending };
        let mut failed: Option<Failure> = None;
        // Records that do not decode: quarantined in the DLQ
        // (`record_corrupt`), so the consumer goes on past them.
        let mut corrupt: Vec<(u64, String)> = Vec::new();
        let mut scan = |from: u64, limit: usize| -> Vec<Scanned> {
            let mut out = Vec::new();
            let range = match w.log.range(from..) {
                Ok(range) => range,
                Err(e) => {
                    failed = Some(e.into());
                    return out;
                }
            };
            for entry in range.take(limit) {
                let (k, v) = match entry {
                    Ok(kv) => kv,
                    Err(e) => {
                        failed = Some(e.into());
                        break;
                    }
                };
                let seq = k.value();
                match super::super::codec::decode_event(v.value(), || format!("log seq {seq}")) {
                    Ok(event) => out.push(Scanned {
                        seq,
                        matches: patterns.iter().any(|p| p.matches(&event.topic)),
                        key: event.key,
                    }),
                    Err(e) => {
                        corrupt.push((seq, e.to_string()));
                        out.push(Scanned { seq, matches: false, key: None });
                    }
                }
            }
            out
        };
        let fetched = consumer.fetch(w.now, self.max, &mut scan, &mut || rand::random::<[u8; 16]>(), FETCH_SCAN_LIMIT);
        if let Some(failure) = failed {
            return Err(failure);
        }
        let mut deliveries = Vec::with_capacity(fetched.delivered.len());
        for token in &fetched.delivered {
            match event_at(w, token.seq) {
                Ok(event) => deliveries.push(Delivery { token: *token, event }),
                // Damaged since it was scanned: quarantined, not delivered.
                Err(Failure::Refused(e)) => {
                    consumer.pending.remove(&token.seq);
                    corrupt.push((token.seq, e.to_string()));
                }
                Err(fatal) => return Err(fatal),
            }
        }
        let upsert: Vec<u64> = fetched.upsert.into_iter().filter(|seq| consumer.pending.contains_key(seq)).collect();
        for seq in &upsert {
            if let Some(entry) = consumer.pending.get(seq) {
                encoded.push(entry)?;
            }
        }
        for dead in &fetched.dead {
            let event = match event_at(w, dead.pending.seq) {
                Ok(event) => event,
                Err(Failure::Refused(_)) => stand_in(name, dead.pending.seq),
                Err(fatal) => return Err(fatal),
            };
            encoded.push(&dlq_entry(name, dead, event, w.now))?;
        }
        for (seq, error) in &corrupt {
            tracing::error!(consumer = name, seq, error = %error, "quarantined an undecodable log record");
            let letter =
                DeadLetter { pending: Pending::new(*seq, None), code: "record_corrupt", message: error.clone() };
            encoded.push(&dlq_entry(name, &letter, stand_in(name, *seq), w.now))?;
        }
        record.cursor = consumer.cursor;
        if fetched.cursor_moved {
            encoded.push(&record)?;
        }
        let removed = before.into_iter().filter(|seq| !consumer.pending.contains_key(seq)).collect();
        Ok(Ok(Fetching {
            answer: FetchAnswer {
                deliveries,
                dead_lettered: fetched.dead.len() + corrupt.len(),
                next_due_ms: fetched.next_due_ms,
                low_water: consumer.pending.keys().next().copied().unwrap_or(consumer.cursor).min(consumer.cursor),
            },
            upsert,
            removed,
            dead: fetched.dead.iter().map(|d| d.pending.seq).chain(corrupt.iter().map(|(seq, _)| *seq)).collect(),
            cursor_moved: fetched.cursor_moved,
        }))
    }

    fn write(
        self,
        checked: Self::Checked,
        w: &mut Writes<'_>,
        mut records: Records<'_>,
    ) -> Result<Self::Answer, Fatal> {
        let fetching = match checked {
            Ok(f) => f,
            Err(e) => return Ok(Err(e)),
        };
        let name = self.name.as_str();
        {
            let mut table = w.txn.open_table(CONSUMER_PENDING)?;
            for seq in &fetching.upsert {
                table.insert((name, *seq), next_record(&mut records)?)?;
            }
            for seq in &fetching.removed {
                table.remove((name, *seq))?;
            }
        }
        let sub = dlq_subscription(name);
        for seq in &fetching.dead {
            w.dlq.insert((sub.as_str(), *seq), next_record(&mut records)?)?;
        }
        if fetching.cursor_moved {
            w.txn.open_table(CONSUMERS)?.insert(name, next_record(&mut records)?)?;
        }
        Ok(Ok(fetching.answer))
    }
}
